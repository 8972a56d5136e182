//! The catalogs (`/workshops/catalog/environments/`,
//! `/workshops/catalog/workshops/`) and a user's sessions
//! (`/workshops/user/<user>/sessions/`). What they report is worked out in
//! [`crate::workshop::catalog`].

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;

use std::sync::Arc;

use super::{caller, need_auth, Caller};
use crate::api::server::ClientIp;
use crate::api::sessions::query_pairs;
use crate::api::{ApiError, ApiPath, ErrorBody};
use crate::workshop::catalog::{
    CatalogQuery, EnvironmentsCatalog, PortalEnvironmentState, WorkshopsCatalog,
};
use crate::workshop::portal::UserSessions;
use crate::workshop::Portal;

/// `GET /workshops/user/<user>/sessions/`: the user's live sessions,
/// pending ones included; an unknown user has none.
#[utoipa::path(
    get, path = "/workshops/user/{user}/sessions/", tag = "workshop",
    params(("user" = String, Path, description = "Portal user id")),
    responses((status = 200, body = UserSessions), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn user_sessions(
    State(portal): State<Arc<Portal>>,
    ApiPath(user): ApiPath<String>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
) -> Result<Json<UserSessions>, ApiError> {
    need_auth(caller(&portal, &headers, client).await?)?;
    let sessions = portal.user_sessions(&user).await?;
    Ok(Json(UserSessions { user, sessions }))
}

/// `sessions=` as the portal reads it: `true` or `1` in any case (and
/// `yes`, which sessiongate always took) ask for the sessions; anything
/// else does not.
pub(super) fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

/// The catalog's query string. As the portal: `state` is repeatable and in
/// any case; `name` (repeatable) keeps the environments of those workshops
/// (an empty one matches none); `labels[<key>]=<value>` must all match the
/// workshop's labels (a repeated key: the last wins); other parameters are
/// ignored. Unlike the portal, an unknown state (`state=STOPED`) is a 400
/// naming it rather than silently ignored, which would list the RUNNING
/// environments as if none were stopped; and `labels[]` without a key is a
/// 400, where the portal ignores it. Apart from the handler so that the
/// fuzz target `workshop_query` can run it.
pub fn catalog_query(raw: Option<String>) -> Result<CatalogQuery, ApiError> {
    let mut q = CatalogQuery {
        states: Vec::new(),
        ..CatalogQuery::default()
    };
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "sessions" => q.sessions = truthy(&v),
            "state" => {
                let s = PortalEnvironmentState::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "state {v:?}: expected STARTING, RUNNING, STOPPING or STOPPED"
                    ))
                })?;
                if !q.states.contains(&s) {
                    q.states.push(s);
                }
            }
            "name" => q.names.get_or_insert_with(Vec::new).push(v),
            other => {
                if let Some(key) = other
                    .strip_prefix("labels[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    if key.is_empty() {
                        return Err(ApiError::bad_request(format!(
                            "{other}: a label filter needs a key, as in labels[level]=beginner"
                        )));
                    }
                    q.labels.insert(key.to_string(), v);
                }
            }
        }
    }
    if q.states.is_empty() {
        q.states.push(PortalEnvironmentState::Running);
    }
    Ok(q)
}

/// `GET /workshops/catalog/environments/?sessions=true&state=RUNNING&state=STOPPING&name=…&labels[k]=v`.
#[utoipa::path(
    get, path = "/workshops/catalog/environments/", tag = "workshop",
    params(
        ("sessions" = Option<bool>, Query, description = "List each environment's sessions (true or 1, any case; needs a token)"),
        ("state" = Option<Vec<String>>, Query, description = "STARTING, RUNNING (default), STOPPING or STOPPED, any case; repeat it. A stopping environment with no session left is STOPPED; none is ever STARTING"),
        ("name" = Option<Vec<String>>, Query, description = "Only environments of these workshops; repeat it"),
        ("labels[key]" = Option<String>, Query, description = "Only workshops whose label `key` has this value; every such filter must match"),
    ),
    responses(
        (status = 200, body = EnvironmentsCatalog),
        (status = 400, description = "An unknown state, a malformed query", body = ErrorBody),
    ),
)]
pub async fn catalog(
    State(portal): State<Arc<Portal>>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<EnvironmentsCatalog>, ApiError> {
    let c = caller(&portal, &headers, client).await?;
    let mut q = catalog_query(raw)?;
    // Without authentication no sessions are listed.
    q.sessions &= c != Caller::Anonymous;
    let snapshot = portal.snapshot().await?;
    Ok(Json(EnvironmentsCatalog {
        portal: portal.portal_info(&snapshot),
        environments: snapshot.environments(&q),
    }))
}

/// `GET /workshops/catalog/workshops/`: the workshops of the running
/// environments, each with its environment's figures (what Backstage's
/// Educates plugin reads). No filters, as in the portal.
#[utoipa::path(
    get, path = "/workshops/catalog/workshops/", tag = "workshop",
    responses((status = 200, body = WorkshopsCatalog)),
)]
pub async fn catalog_workshops(
    State(portal): State<Arc<Portal>>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
) -> Result<Json<WorkshopsCatalog>, ApiError> {
    // Anyone may read it, as the environments' catalog; a wrong token is
    // still refused.
    caller(&portal, &headers, client).await?;
    let snapshot = portal.snapshot().await?;
    Ok(Json(WorkshopsCatalog {
        portal: portal.portal_info(&snapshot),
        workshops: snapshot.workshops(),
    }))
}
