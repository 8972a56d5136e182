//! An environment's status (`/workshops/environment/<name>/status/`).

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use std::sync::Arc;

use super::catalog::truthy;
use super::{caller, need_auth};
use crate::api::server::ClientIp;
use crate::api::sessions::query_pairs;
use crate::api::{ApiError, ApiPath, ErrorBody};
use crate::workshop::catalog::EnvironmentStatus;
use crate::workshop::Portal;

/// `GET /workshops/environment/<name>/status/?sessions=true`: the
/// environment's state, workshop and figures, in any state, and with
/// `sessions=true` the sessions users hold. An unknown environment is a 403
/// `Environment does not exist`, as the portal answers it (and its
/// request endpoint); other parameters are ignored.
#[utoipa::path(
    get, path = "/workshops/environment/{name}/status/", tag = "workshop",
    params(
        ("name" = String, Path, description = "Environment name"),
        ("sessions" = Option<bool>, Query, description = "List the sessions users hold (true or 1, any case)"),
    ),
    responses(
        (status = 200, body = EnvironmentStatus),
        (status = 401, body = ErrorBody),
        (status = 403, description = "No such environment (the portal's answer)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn environment_status(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<EnvironmentStatus>, ApiError> {
    need_auth(caller(&portal, &headers, client).await?)?;
    let mut with_sessions = false;
    for (k, v) in query_pairs(raw)? {
        if k == "sessions" {
            with_sessions = truthy(&v);
        }
    }
    portal
        .snapshot()
        .await?
        .status(&name, with_sessions)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "environment_does_not_exist",
                format!("environment does not exist: {name:?}"),
            )
        })
}
