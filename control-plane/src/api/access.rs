//! Browser access: one-time access links and cookie key rotation.

use axum::extract::State;
use axum::Json;

use super::{ApiError, ApiJson, ApiPath, Control, ErrorBody};
use crate::access::{AccessLink, AccessRequest, ClientCert, ClientCertRequest, KeyRotation};

#[utoipa::path(
    post, path = "/api/v1/sessions/{name}/access", tag = "access",
    params(("name" = String, Path, description = "Session name")),
    request_body = AccessRequest,
    responses(
        (status = 200, description = "A one-time link, valid 60 s, on the session's own host", body = AccessLink),
        (status = 403, description = "The user is neither the owner nor a member of a group the session is shared with", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The session is expired or deleted (`state` says which)", body = ErrorBody),
        (status = 422, description = "An unknown user, or a path that is not a path on the session's host", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_access(
    State(cp): State<Control>,
    axum::Extension(caller): axum::Extension<crate::permissions::Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AccessRequest>,
) -> Result<Json<AccessLink>, ApiError> {
    if let Some(user) = caller.user() {
        // A user opens sessions as themselves only.
        if body.user != user {
            return Err(crate::error::ControlError::Forbidden(format!(
                "user {user:?} may make access links for themselves only, not {:?}",
                body.user
            ))
            .into());
        }
        let rec = cp.get_session(&name).await?;
        caller.check(&rec, crate::permissions::SessionOp::Open, &cp.group_cache())?;
    }
    let link = cp
        .create_access_link(&name, &body.user, body.path.as_deref())
        .await?;
    Ok(Json(link))
}

#[utoipa::path(
    post, path = "/api/v1/sessions/{name}/client-cert", tag = "access",
    params(("name" = String, Path, description = "Session name")),
    request_body = ClientCertRequest,
    responses(
        (status = 200, description = "A client certificate (common name: the user) and its key, from the workspace CA, for the session's workspace port over TLS (gateway.workspace_tls)", body = ClientCert),
        (status = 403, description = "The user is neither the owner nor a member of a group the session is shared with", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The session has no workspace_port, or is expired or deleted", body = ErrorBody),
        (status = 422, description = "An unknown user, or days outside 1-397", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_client_cert(
    State(cp): State<Control>,
    axum::Extension(caller): axum::Extension<crate::permissions::Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ClientCertRequest>,
) -> Result<Json<ClientCert>, ApiError> {
    if !caller.may_write() {
        return Err(crate::error::ControlError::Forbidden(
            "a read-only token cannot issue client certificates".into(),
        )
        .into());
    }
    if let Some(user) = caller.user() {
        // A user gets certificates for themselves only.
        if body.user != user {
            return Err(crate::error::ControlError::Forbidden(format!(
                "user {user:?} may get client certificates for themselves only, not {:?}",
                body.user
            ))
            .into());
        }
        let rec = cp.get_session(&name).await?;
        caller.check(&rec, crate::permissions::SessionOp::Open, &cp.group_cache())?;
    }
    Ok(Json(
        cp.issue_client_cert(&name, &body.user, body.days).await?,
    ))
}

#[utoipa::path(
    post, path = "/api/v1/access/keys/rotate", tag = "access",
    responses(
        (status = 200, description = "A new key signs cookies; the replaced one verifies for the grace period", body = KeyRotation),
    ),
    security(("bearer" = []))
)]
pub async fn rotate_keys(State(cp): State<Control>) -> Result<Json<KeyRotation>, ApiError> {
    Ok(Json(cp.rotate_keys().await?))
}
