//! A session's schedule, extension and termination
//! (`/workshops/session/<name>/schedule/`, `extend/`, `terminate/`), as
//! the portal's clients call them: the Educates CLI's `cluster session
//! status|extend|terminate`, which reads a 400 or a 404 as "No session
//! found". The rules are in [`crate::workshop::schedule`].
//!
//! The portal serves all three on GET only. `extend/` and `terminate/` are
//! also served on POST here: they change the session, a client that posts
//! means it, and with the bearer token in a header (no cookie) a browser
//! cannot be made to send either cross-site.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use std::sync::Arc;

use super::{caller, need_auth, Caller};
use crate::api::server::ClientIp;
use crate::api::{ApiError, ApiPath, ErrorBody};
use crate::workshop::schedule::{ExtendAnswer, ScheduleAnswer, ScheduleError, TerminateAnswer};
use crate::workshop::Portal;

/// The caller may change sessions: any token but a read-only one.
async fn writer(
    portal: &Portal,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    what: &str,
) -> Result<(), ApiError> {
    let c = caller(portal, headers, client).await?;
    need_auth(c)?;
    if c == Caller::Reader {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("a read-only token cannot {what} sessions"),
        ));
    }
    Ok(())
}

/// A reserved session no one holds is the portal's 400; the rest are the
/// control plane's (unknown, finished, or no environment's: 404).
fn refused(e: ScheduleError) -> ApiError {
    match e {
        ScheduleError::NotInUse(_) => ApiError::bad_request(e.to_string()),
        ScheduleError::Control(e) => e.into(),
    }
}

/// `GET /workshops/session/<name>/schedule/`.
#[utoipa::path(
    get, path = "/workshops/session/{name}/schedule/", tag = "workshop",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, body = ScheduleAnswer),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such live session of an environment", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn session_schedule(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
) -> Result<Json<ScheduleAnswer>, ApiError> {
    need_auth(caller(&portal, &headers, client).await?)?;
    let s = portal.session_schedule(&name).await?;
    Ok(Json(ScheduleAnswer::from(&s)))
}

/// `GET|POST /workshops/session/<name>/extend/`: extends the session when
/// it is extendable (running, in its last `max(300, min(duration, 4 h)/4)`
/// seconds, its and its environment's `extendable` set), by that many
/// seconds; otherwise answers `extended: false`, as the portal does.
#[utoipa::path(
    method(get, post), path = "/workshops/session/{name}/extend/", tag = "workshop",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, body = ExtendAnswer),
        (status = 400, description = "A reserved session no one holds", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such live session of an environment", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn session_extend(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
) -> Result<Json<ExtendAnswer>, ApiError> {
    writer(&portal, &headers, client, "extend").await?;
    let (s, extended) = portal.extend_session(&name).await.map_err(refused)?;
    Ok(Json(ExtendAnswer::new(&s, extended)))
}

/// `GET|POST /workshops/session/<name>/terminate/`: expires the session now
/// (pending ones too), closing its connections; answers only `started` and
/// `expires` (the time it stopped), as the portal does. A session already
/// ended is a 404.
#[utoipa::path(
    method(get, post), path = "/workshops/session/{name}/terminate/", tag = "workshop",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, body = TerminateAnswer),
        (status = 400, description = "A reserved session no one holds", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "A read-only token", body = ErrorBody),
        (status = 404, description = "No such live session of an environment", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn session_terminate(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
) -> Result<Json<TerminateAnswer>, ApiError> {
    writer(&portal, &headers, client, "terminate").await?;
    let (started, stopped) = portal.terminate_session(&name).await.map_err(refused)?;
    Ok(Json(TerminateAnswer::new(started, stopped)))
}
