//! Requesting a session (`/workshops/environment/<name>/request/`) and
//! activating it (`/workshops/session/<name>/activate/`).

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use std::sync::Arc;

use super::{caller, need_auth, Caller};
use crate::api::server::ClientIp;
use crate::api::sessions::query_pairs;
use crate::api::{ApiError, ApiPath, ErrorBody};
use crate::error::ControlError;
use crate::session::lifecycle::SessionState;
use crate::workshop::portal::{RequestAnswer, WorkshopError, WorkshopRequest};
use crate::workshop::Portal;

/// The request endpoint's query string: the request, and the `index_url`
/// as given (the caller applies the allow-list). A 400 for a malformed
/// query, an unknown parameter or a timeout that is not a number. Apart from
/// the handler so that the fuzz target `workshop_query` can run it.
pub fn request_query(raw: Option<String>) -> Result<(WorkshopRequest, Option<String>), ApiError> {
    let mut req = WorkshopRequest::default();
    let mut index_url = None;
    for (k, v) in query_pairs(raw)? {
        let v = Some(v).filter(|v| !v.is_empty());
        match k.as_str() {
            "index_url" => index_url = v,
            "user" => req.user = v,
            "email" => req.email = v,
            "first_name" => req.first_name = v,
            "last_name" => req.last_name = v,
            "timeout" => {
                req.timeout = match v {
                    None => None,
                    Some(t) => Some(t.parse().map_err(|_| {
                        ApiError::bad_request(format!("timeout {t:?}: seconds, a whole number"))
                    })?),
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected index_url, user, email, first_name, last_name, timeout)"
                )))
            }
        }
    }
    Ok((req, index_url))
}

/// The `url` a request answers with: the activation endpoint with the
/// session's one-time token and, when allowed, where to go back to;
/// [`activate_query`] reads it back.
pub fn activation_path(session: &str, token: &str, index_url: Option<&str>) -> String {
    let mut url = format!("/workshops/session/{session}/activate/?token={token}");
    if let Some(i) = index_url {
        if let Ok(q) = serde_urlencoded::to_string([("index_url", i)]) {
            url.push('&');
            url.push_str(&q);
        }
    }
    url
}

/// `GET /workshops/environment/<name>/request/`.
#[utoipa::path(
    get, path = "/workshops/environment/{name}/request/", tag = "workshop",
    params(
        ("name" = String, Path, description = "Environment name"),
        ("index_url" = Option<String>, Query, description = "Where the user goes back to; kept only if on workshop.index_urls"),
        ("user" = Option<String>, Query, description = "A portal user id from an earlier answer"),
        ("email" = Option<String>, Query, description = "For a new user"),
        ("first_name" = Option<String>, Query, description = "For a new user"),
        ("last_name" = Option<String>, Query, description = "For a new user"),
        ("timeout" = Option<u64>, Query, description = "Activation deadline in seconds (default 60)"),
    ),
    responses(
        (status = 200, body = RequestAnswer),
        (status = 401, body = ErrorBody),
        (status = 404, description = "workshop-invalid", body = ErrorBody),
        (status = 503, description = "session-unavailable: at capacity", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn request(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let c = caller(&portal, &headers, client).await?;
    need_auth(c)?;
    if c == Caller::Reader {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a read-only token cannot request sessions",
        ));
    }
    let (req, index_url) = request_query(raw)?;
    let settings = portal.settings();
    // An index_url off the allow-list is ignored: the portal's own is used.
    let index_url = index_url.filter(|u| settings.index_policy.allows(u));
    let a = match portal.workshop_request(&name, req).await {
        Ok(a) => a,
        Err(WorkshopError::Control(e)) => return Err(e.into()),
        Err(e) => {
            let status = match e {
                WorkshopError::Invalid(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let body = json!({"error": {
                "code": e.notification(),
                "message": e.to_string(),
                "notification": e.notification(),
            }});
            return Ok((status, Json(body)).into_response());
        }
    };
    let url = activation_path(&a.session, &a.token, index_url.as_deref());
    Ok(Json(RequestAnswer {
        name: a.session.clone(),
        user: a.user,
        url,
        workshop: a.workshop,
        environment: a.environment,
        namespace: a.session.clone(),
        session: a.session,
    })
    .into_response())
}

/// The activation endpoint's query string: the token and the `index_url`,
/// each as given (the last of a repeated one); other parameters are ignored.
/// A 400 only for a malformed query.
pub fn activate_query(raw: Option<String>) -> Result<(Option<String>, Option<String>), ApiError> {
    let (mut token, mut index_url) = (None, None);
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "token" => token = Some(v),
            "index_url" => index_url = Some(v),
            _ => {}
        }
    }
    Ok((token, index_url))
}

#[utoipa::path(
    get, path = "/workshops/session/{name}/activate/", tag = "workshop",
    params(
        ("name" = String, Path, description = "Session name"),
        ("token" = String, Query, description = "The one-time token from the request's url"),
        ("index_url" = Option<String>, Query, description = "Where to go back to if the session is gone"),
    ),
    responses((status = 302, description = "On to the session's host; or back to the index with notification=session-deleted or session-invalid")),
)]
/// `GET /workshops/session/<name>/activate/?token=…&index_url=…`: on to the
/// session's own host, where the token is consumed and the cookie set; or
/// back to the index with a notification when the session is gone.
pub async fn activate(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (token, index_url) = activate_query(raw)?;
    let settings = portal.settings();
    let index = settings
        .index_policy
        .pick(index_url.as_deref(), None)
        .map(str::to_string)
        .unwrap_or_else(|| {
            if settings.index_url.is_empty() {
                "/".to_string()
            } else {
                settings.index_url.clone()
            }
        });
    let back =
        |notification: &str| found(&gateway::access::with_notification(&index, notification));
    let session = match portal.control().get_session(&name).await {
        Ok(s) => s,
        Err(ControlError::NotFound { .. }) => return Ok(back("session-invalid")),
        Err(e) => return Err(e.into()),
    };
    match session.state {
        SessionState::Deleted => return Ok(back("session-deleted")),
        SessionState::Expired => return Ok(back("session-invalid")),
        _ => {}
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(back("session-invalid"));
    };
    Ok(found(&portal.control().activation_url(&session, &token)))
}

fn found(location: &str) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}
