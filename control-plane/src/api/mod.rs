//! The control-plane HTTP API (axum): thin handlers over the shared state.
//!
//! Everything under `/api/` needs `Authorization: Bearer <admin token>`;
//! `/healthz` and `/readyz` do not. Errors are `{"error": {"code", "message"}}`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gateway::{RouteHandle, RouteTarget};
use serde::Serialize;

use crate::auth::bearer_matches;
use crate::time::rfc3339_millis;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub routes: RouteHandle,
    pub admin_token: Arc<str>,
}

/// An API error: a status, a stable code and a message naming what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sessiongate\""),
            );
        }
        resp
    }
}

pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/v1/routes", get(list_routes))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .merge(api)
        .fallback(not_found)
        .with_state(state)
}

async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if header.is_none() {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer token",
        )
        .into_response();
    }
    if !bearer_matches(header, &state.admin_token) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid bearer token",
        )
        .into_response();
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
}

#[derive(Serialize)]
struct RoutesView {
    version: u64,
    base_domains: Vec<String>,
    portal_host: Option<String>,
    routes: Vec<RouteView>,
}

#[derive(Serialize)]
struct RouteView {
    id: String,
    hosts: Vec<String>,
    labels: Vec<String>,
    slugs: Vec<String>,
    /// `http://host:port`, or null for a redirect.
    upstream: Option<String>,
    /// The external URL of a link route, or null.
    redirect: Option<String>,
    strip_prefix: bool,
    rewrite_host: bool,
    paused: bool,
    public: bool,
    /// RFC 3339, to within a second; null if it never served traffic.
    last_activity: Option<String>,
    upgraded_connections: usize,
}

async fn list_routes(State(state): State<ApiState>) -> Json<RoutesView> {
    let table = state.routes.current();
    Json(RoutesView {
        version: table.version(),
        base_domains: table.base_domains().map(str::to_string).collect(),
        portal_host: table.portal_host().map(str::to_string),
        routes: table
            .routes()
            .iter()
            .map(|r| RouteView {
                id: r.id.to_string(),
                hosts: r.spec.hosts.clone(),
                labels: r.spec.labels.clone(),
                slugs: r.spec.slugs.clone(),
                upstream: match &r.target {
                    RouteTarget::Upstream(u) => Some(u.to_string()),
                    RouteTarget::Redirect(_) => None,
                },
                redirect: match &r.target {
                    RouteTarget::Redirect(url) => Some(url.to_string()),
                    RouteTarget::Upstream(_) => None,
                },
                strip_prefix: r.strip_prefix,
                rewrite_host: r.rewrite_host,
                paused: r.paused,
                public: r.public,
                last_activity: r.state.last_activity_ms().map(rfc3339_millis),
                upgraded_connections: r.state.upgraded_count(),
            })
            .collect(),
    })
}
