//! `/api/v1/environments`: workshop environments.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use std::sync::Arc;

use super::{ApiError, ApiJson, ApiPath, ErrorBody};
use crate::workshop::environment::{Environment, EnvironmentPatch, NewEnvironment};
use crate::workshop::Portal;

#[utoipa::path(
    get, path = "/api/v1/environments", tag = "environments",
    responses((status = 200, description = "Every environment, by name", body = Vec<Environment>)),
    security(("bearer" = []))
)]
pub async fn list_environments(
    State(portal): State<Arc<Portal>>,
) -> Result<Json<Vec<Environment>>, ApiError> {
    Ok(Json(portal.list_environments().await?))
}

#[utoipa::path(
    post, path = "/api/v1/environments", tag = "environments",
    request_body = NewEnvironment,
    responses(
        (status = 201, description = "Created, RUNNING", body = Environment),
        (status = 400, description = "Malformed JSON or an unknown field", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 422, description = "An invalid value: name, targets, capacity, reserved, duration, slug_prefix", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_environment(
    State(portal): State<Arc<Portal>>,
    ApiJson(input): ApiJson<NewEnvironment>,
) -> Result<Response, ApiError> {
    let e = portal.create_environment(input).await?;
    let location = format!("/api/v1/environments/{}", e.name);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(e)).into_response())
}

#[utoipa::path(
    get, path = "/api/v1/environments/{name}", tag = "environments",
    params(("name" = String, Path, description = "Environment name")),
    responses((status = 200, body = Environment), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_environment(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Environment>, ApiError> {
    Ok(Json(portal.get_environment(&name).await?))
}

#[utoipa::path(
    patch, path = "/api/v1/environments/{name}", tag = "environments",
    params(("name" = String, Path, description = "Environment name")),
    request_body = EnvironmentPatch,
    responses(
        (status = 200, body = Environment),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Capacity below the sessions it has", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch_environment(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<EnvironmentPatch>,
) -> Result<Json<Environment>, ApiError> {
    Ok(Json(portal.patch_environment(&name, patch).await?))
}

#[utoipa::path(
    post, path = "/api/v1/environments/{name}/stop", tag = "environments",
    params(("name" = String, Path, description = "Environment name")),
    responses(
        (status = 200, description = "STOPPING: no new sessions; those it has run to their end", body = Environment),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stop_environment(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Environment>, ApiError> {
    Ok(Json(portal.stop_environment(&name).await?))
}

#[utoipa::path(
    delete, path = "/api/v1/environments/{name}", tag = "environments",
    params(("name" = String, Path, description = "Environment name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "It still has unfinished sessions", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_environment(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    portal.delete_environment(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
