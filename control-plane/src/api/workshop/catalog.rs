//! The catalog (`/workshops/catalog/environments/`) and a user's sessions
//! (`/workshops/user/<user>/sessions/`).

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use std::sync::Arc;

use super::{caller, need_auth, Caller};
use crate::api::server::ClientIp;
use crate::api::sessions::query_pairs;
use crate::api::{ApiError, ApiPath, ErrorBody};
use crate::session::lifecycle::SessionState;
use crate::time::rfc3339_millis;
use crate::workshop::environment::EnvironmentState;
use crate::workshop::portal::{UserSession, UserSessions};
use crate::workshop::Portal;

/// `GET /workshops/user/<user>/sessions/`: live sessions only.
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
    let now = portal.control().now_ms();
    let sessions = portal
        .workshop_user_sessions(&user)
        .await?
        .into_iter()
        .map(|(s, workshop)| UserSession {
            workshop,
            environment: s.environment.clone().unwrap_or_default(),
            namespace: s.name.clone(),
            started: s.activated_ms.map(rfc3339_millis),
            expires: s.expires_ms.map(rfc3339_millis),
            countdown: s.countdown_secs(now),
            extendable: s.extendable,
            name: s.name,
        })
        .collect();
    Ok(Json(UserSessions { user, sessions }))
}

/// The catalog's query string: whether sessions are asked for, and the
/// environment states to list (RUNNING when none is given). A 400 for a
/// malformed query or an unknown state.
pub fn catalog_query(raw: Option<String>) -> Result<(bool, Vec<EnvironmentState>), ApiError> {
    let mut with_sessions = false;
    let mut states = Vec::new();
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "sessions" => with_sessions = matches!(v.as_str(), "true" | "1" | "yes"),
            "state" => states.push(EnvironmentState::parse(&v).ok_or_else(|| {
                ApiError::bad_request(format!("state {v:?}: RUNNING or STOPPING"))
            })?),
            _ => {}
        }
    }
    if states.is_empty() {
        states.push(EnvironmentState::Running);
    }
    Ok((with_sessions, states))
}

/// `GET /workshops/catalog/environments/?sessions=true&state=RUNNING&state=STOPPING`.
#[utoipa::path(
    get, path = "/workshops/catalog/environments/", tag = "workshop",
    params(
        ("sessions" = Option<bool>, Query, description = "List each environment's sessions (needs a token)"),
        ("state" = Option<Vec<String>>, Query, description = "RUNNING (default) and/or STOPPING; repeat it"),
    ),
    responses((status = 200, description = "{portal, environments}")),
)]
pub async fn catalog(
    State(portal): State<Arc<Portal>>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&portal, &headers, client).await?;
    let (with_sessions, states) = catalog_query(raw)?;
    // Without authentication no sessions are listed.
    let with_sessions = with_sessions && c != Caller::Anonymous;
    let now = portal.control().now_ms();
    let settings = portal.settings();
    let (envs, sessions) = portal.catalog().await?;
    let mut maximum = 0;
    let mut allocated_all = 0;
    let mut registered = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for e in envs {
        let mine: Vec<_> = sessions
            .iter()
            .filter(|s| s.environment.as_deref() == Some(&e.name) && s.state.is_live())
            .collect();
        let in_reserve = mine
            .iter()
            .filter(|s| s.owner == crate::workshop::portal::RESERVE_USER)
            .count() as u64;
        let allocated = mine.len() as u64 - in_reserve;
        maximum += e.capacity;
        allocated_all += allocated;
        for s in &mine {
            if s.owner != crate::workshop::portal::RESERVE_USER {
                registered.insert(s.owner.clone());
            }
        }
        if !states.contains(&e.state) {
            continue;
        }
        let mut v = json!({
            "name": e.name,
            "state": e.state,
            "workshop": e.workshop,
            "duration": e.duration_secs,
            "capacity": e.capacity,
            "reserved": e.reserved,
            "allocated": allocated,
            "available": e.capacity.saturating_sub(allocated),
        });
        if with_sessions {
            v["sessions"] = mine
                .iter()
                .filter(|s| s.owner != crate::workshop::portal::RESERVE_USER)
                .map(|s| {
                    json!({
                        "name": s.name,
                        "state": match s.state {
                            SessionState::Pending => "WAITING",
                            SessionState::Running => "RUNNING",
                            SessionState::Paused => "PAUSED",
                            _ => "STOPPING",
                        },
                        "namespace": s.name,
                        "user": s.owner,
                        "started": s.activated_ms.map(rfc3339_millis),
                        "expires": s.expires_ms.map(rfc3339_millis),
                        "countdown": s.countdown_secs(now),
                        "extendable": s.extendable,
                    })
                })
                .collect();
        }
        out.push(v);
    }
    Ok(Json(json!({
        "portal": {
            "name": settings.portal_name,
            "uid": portal.portal_uid(),
            "generation": portal.control().routes().load().version(),
            "url": settings.portal_url,
            "sessions": {
                "maximum": maximum,
                "registered": registered.len(),
                "anonymous": 0,
                "allocated": allocated_all,
            },
        },
        "environments": out,
    })))
}
