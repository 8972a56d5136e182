//! The control-plane HTTP API (axum): thin handlers over [`ControlPlane`].
//!
//! Everything under `/api/v1/` needs `Authorization: Bearer <token>`: the
//! admin token may do everything, a read-only token only `GET`. `/healthz`,
//! `/readyz`, `/metrics` and `/api/openapi.json` are open. Errors are
//! `{"error": {"code", "message"}}` (plus `state` for a refused transition),
//! with the status and code each [`ControlError`] names for itself. A
//! client that keeps presenting wrong credentials is answered 429 with
//! `Retry-After` ([`crate::limits`]).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, FromRequest, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::audit::{self, Who};
use crate::auth::{bearer_token, TokenKind};
use crate::control::ControlPlane;
use crate::error::ControlError;
use crate::limits::{Guessed, TooManyFailures};
use crate::permissions::Caller;
use crate::session::lifecycle::SessionState;
use crate::workshop::Portal;

pub mod access;
pub mod directory;
pub mod environments;
pub mod gateway;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod workshop;

/// What the handlers share: the control plane, and the training portal
/// built on it. A handler takes the one it needs (`State<Arc<ControlPlane>>`
/// or `State<Arc<Portal>>`).
#[derive(Clone)]
pub struct ApiState {
    pub control: Arc<ControlPlane>,
    pub portal: Arc<Portal>,
}

impl ApiState {
    pub fn new(portal: Arc<Portal>) -> ApiState {
        ApiState {
            control: portal.control().clone(),
            portal,
        }
    }
}

impl FromRef<ApiState> for Arc<ControlPlane> {
    fn from_ref(s: &ApiState) -> Self {
        s.control.clone()
    }
}

impl FromRef<ApiState> for Arc<Portal> {
    fn from_ref(s: &ApiState) -> Self {
        s.portal.clone()
    }
}

/// The control plane, as the handlers that need only it take it.
pub type Control = Arc<ControlPlane>;

/// An API error: a status, a stable code and a message naming what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The session's current state, for a refused transition.
    pub state: Option<SessionState>,
    /// Seconds for `Retry-After`, for a client past the brute-force limit.
    pub retry_after: Option<u64>,
}

/// The error body, for the OpenAPI document.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, such as `not_found` or `invalid_transition`.
    pub code: String,
    /// What was wrong, naming the value.
    pub message: String,
    /// The session's current state, when a transition was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<SessionState>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            state: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// A control-plane error answers with the status, code and state it names
/// (see [`ControlError::status`]); the server's own failures are logged.
impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        if e.is_internal() {
            tracing::error!(error = %e, "api: internal error");
        }
        ApiError {
            status: e.status(),
            code: e.code(),
            message: e.to_string(),
            state: e.state(),
            retry_after: None,
        }
    }
}

/// A client past the brute-force limit: 429 with `Retry-After`.
impl From<TooManyFailures> for ApiError {
    fn from(t: TooManyFailures) -> Self {
        ApiError {
            retry_after: Some(t.retry_after_secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                t.to_string(),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                state: self.state,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sessiongate\""),
            );
        }
        resp
    }
}

/// `Json<T>` whose refusals are our JSON errors: a syntax error or an unknown
/// field is a 400 naming it, a wrong content type a 415.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `Path<T>` whose refusals (say, a name that is not UTF-8) are our JSON errors.
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(ApiError::bad_request(format!(
                "path {}: {}",
                parts.uri.path(),
                lower_first(&r.body_text())
            ))),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            lower_first(&e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            lower_first(&e.body_text()),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the 2 MiB limit",
        ),
        other => ApiError::bad_request(lower_first(&other.body_text())),
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The training portal's endpoints (no `/api/v1` prefix, their own auth).
/// Served on the control-plane listener and, through the gateway, on the
/// portal host. Each path also answers without its trailing slash, with a
/// redirect to it ([`SlashedRoutes`]).
pub fn workshop_router() -> Router<ApiState> {
    SlashedRoutes::default()
        .route("/oauth2/token/", post(workshop::token))
        .route("/oauth2/revoke-token/", post(workshop::revoke_token))
        .route(
            "/workshops/environment/{name}/request/",
            get(workshop::request).post(workshop::request),
        )
        .route(
            "/workshops/session/{name}/activate/",
            get(workshop::activate),
        )
        .route(
            "/workshops/user/{user}/sessions/",
            get(workshop::user_sessions),
        )
        .route(
            "/workshops/catalog/workshops/",
            get(workshop::catalog_workshops),
        )
        .route(
            "/workshops/environment/{name}/status/",
            get(workshop::environment_status),
        )
        .route(
            "/workshops/session/{name}/schedule/",
            get(workshop::session_schedule),
        )
        .route(
            "/workshops/session/{name}/extend/",
            get(workshop::session_extend).post(workshop::session_extend),
        )
        .route(
            "/workshops/session/{name}/terminate/",
            get(workshop::session_terminate).post(workshop::session_terminate),
        )
        .route("/workshops/catalog/environments/", get(workshop::catalog))
        .0
}

/// Routes declared with their trailing slash, as the training portal
/// (Django) declares every one, each also answering the same path without
/// it with a redirect to it, as Django's `APPEND_SLASH` does: clients rely
/// on it (the Educates CLI GETs `/workshops/catalog/environments`). Only a
/// path whose slash form is a route is redirected; any other stays a 404.
#[derive(Default)]
struct SlashedRoutes(Router<ApiState>);

impl SlashedRoutes {
    fn route(self, path: &str, methods: MethodRouter<ApiState>) -> Self {
        let router = self.0.route(path, methods);
        match path.strip_suffix('/').filter(|bare| !bare.is_empty()) {
            Some(bare) => SlashedRoutes(router.route(bare, any(append_slash))),
            None => SlashedRoutes(router),
        }
    }
}

/// The redirect to `path + "/"`, relative and with the query string, as
/// Django builds it (`get_full_path(force_append_slash=True)`): 301 for GET
/// and HEAD, which every client follows; 308 for any other method, so that
/// the client repeats it with its body (a 301 lets clients turn a POST
/// into a GET without its body, where Django's own 301 loses it).
async fn append_slash(req: Request) -> Response {
    let uri = req.uri();
    let mut location = format!("{}/", uri.path());
    if let Some(q) = uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let status = match *req.method() {
        Method::GET | Method::HEAD => StatusCode::MOVED_PERMANENTLY,
        _ => StatusCode::PERMANENT_REDIRECT,
    };
    let mut resp = status.into_response();
    // A request target's characters are all valid in a header value.
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/v1/routes", get(routes::list_routes))
        .route(
            "/api/v1/sessions",
            get(sessions::list_sessions)
                .post(sessions::create_session)
                .patch(sessions::patch_sessions),
        )
        .route("/api/v1/sessions/bulk", post(sessions::bulk_action))
        .route(
            "/api/v1/sessions/{name}",
            get(sessions::get_session)
                .patch(sessions::patch_session)
                .delete(sessions::delete_session),
        )
        .route("/api/v1/sessions/{name}/groups", put(sessions::set_groups))
        .route(
            "/api/v1/sessions/{name}/access",
            post(access::create_access),
        )
        .route(
            "/api/v1/sessions/{name}/client-cert",
            post(access::create_client_cert),
        )
        .route("/api/v1/access/keys/rotate", post(access::rotate_keys))
        .route(
            "/api/v1/environments",
            get(environments::list_environments).post(environments::create_environment),
        )
        .route(
            "/api/v1/environments/{name}",
            get(environments::get_environment)
                .patch(environments::patch_environment)
                .delete(environments::delete_environment),
        )
        .route(
            "/api/v1/environments/{name}/stop",
            post(environments::stop_environment),
        )
        .route(
            "/api/v1/sessions/{name}/{action}",
            post(sessions::session_action),
        )
        .route(
            "/api/v1/users",
            get(directory::list_users).post(directory::create_user),
        )
        .route(
            "/api/v1/users/{name}",
            get(directory::get_user)
                .patch(directory::update_user)
                .delete(directory::delete_user),
        )
        .route(
            "/api/v1/users/{name}/console-link",
            post(directory::console_link),
        )
        .route(
            "/api/v1/groups",
            get(directory::list_groups).post(directory::create_group),
        )
        .route(
            "/api/v1/groups/{name}",
            get(directory::get_group).delete(directory::delete_group),
        )
        .route(
            "/api/v1/groups/{name}/members",
            get(directory::get_members)
                .put(directory::set_members)
                .post(directory::add_member),
        )
        .route(
            "/api/v1/groups/{name}/members/{user}",
            axum::routing::delete(directory::remove_member),
        )
        .route(
            "/api/v1/tokens",
            get(directory::list_tokens).post(directory::create_token),
        )
        .route(
            "/api/v1/tokens/{name}",
            axum::routing::delete(directory::delete_token),
        )
        .route("/api/v1/gateways", get(gateway::list_gateways))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // The route stream and gateways' reports: gateway tokens only, checked
    // by each handler (they need the token's name).
    let gateways = Router::new()
        .route("/api/v1/gateway/stream", get(gateway::stream))
        .route("/api/v1/gateway/ack", post(gateway::ack))
        .route("/api/v1/gateway/activity", post(gateway::activity))
        .route("/api/v1/gateway/activate", post(gateway::activate));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi_json))
        .merge(workshop_router())
        .merge(crate::console::router(state.clone()))
        .merge(api)
        .layer(middleware::from_fn_with_state(state.clone(), table_version))
        .merge(gateways)
        .fallback(not_found)
        .with_state(state)
}

/// Every answer to a successful write says which table version it produced
/// (`Sessiongate-Table-Version`), and comes once every connected remote
/// gateway has applied that version, or after
/// `control_plane.gateway_ack_timeout_ms` with those that lag named in a
/// `Warning`. The gateways in this process applied it before the handler
/// returned.
async fn table_version(State(cp): State<Control>, req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut resp = next.run(req).await;
    // A refused write changed nothing: nothing to wait for.
    if !write || !resp.status().is_success() {
        return resp;
    }
    let version = cp.routes().load().version();
    if cp.gateways().any_remote() {
        let behind = cp
            .gateways()
            .wait_for(version, cp.gateways().ack_timeout())
            .await;
        if !behind.is_empty() {
            tracing::warn!(version, gateways = ?behind, "gateways did not apply the change in time");
            let warning = format!(
                "199 sessiongate \"gateways behind table version {version}: {}\"",
                behind.join(", ")
            );
            if let Ok(v) = header::HeaderValue::from_str(&warning) {
                resp.headers_mut().insert(header::WARNING, v);
            }
        }
    }
    resp.headers_mut().insert(
        header::HeaderName::from_static("sessiongate-table-version"),
        header::HeaderValue::from(version),
    );
    resp
}

async fn require_token(State(cp): State<Control>, mut req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let caller = match req.headers().get(header::AUTHORIZATION) {
        Some(header) => {
            // A client past the brute-force limit is not told whether its
            // token is right.
            let client = server::client_addr(req.extensions());
            let failures = cp.failures(Guessed::ApiToken);
            if let Err(t) = failures.check(client) {
                return ApiError::from(t).into_response();
            }
            match bearer_token(header.as_bytes()).and_then(|t| cp.check_token_named(t)) {
                None => {
                    failures.fail(client);
                    return ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "invalid bearer token",
                    )
                    .into_response();
                }
                Some((TokenKind::Gateway, _)) => {
                    return ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "a gateway token cannot {} {}: it may only follow the route stream",
                            req.method(),
                            req.uri().path()
                        ),
                    )
                    .into_response()
                }
                Some((kind, name)) => Caller::Operator { kind, name },
            }
        }
        None => match console_caller(&cp, req.headers(), write).await {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        },
    };
    if write && !caller.may_write() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a read-only token cannot {} {}",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    if caller.user().is_some() && !user_may_call(req.method(), req.uri().path()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a user signed in to the console cannot {} {}: only their sessions' endpoints",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    let who = Who::new(caller.actor(), action_of(req.method(), req.uri().path()));
    req.extensions_mut().insert(caller);
    audit::scope(who, next.run(req)).await
}

/// The caller a console cookie signs in (the console's pages call the API
/// with it, and so may a user's own script in that browser): a write needs
/// the console's CSRF token in `X-CSRF-Token` as well, since a forged
/// cross-site request would carry the cookie too (were it not
/// `SameSite=Strict`).
async fn console_caller(
    cp: &Control,
    headers: &axum::http::HeaderMap,
    write: bool,
) -> Result<Caller, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer token",
        )
    };
    let now = cp.now_ms() / 1000;
    let Some((caller, cookie)) = crate::console::signin::signed_in(cp, headers, now).await else {
        return Err(unauthorized());
    };
    if write {
        let presented = headers
            .get(crate::console::signin::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !crate::console::signin::csrf_ok(cp, &cookie, presented) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a write with the console's cookie needs its CSRF token in X-CSRF-Token",
            ));
        }
    }
    Ok(caller)
}

/// The endpoints a user signed in to the console may call (each then checks
/// the session itself): their sessions, and the actions an owner may take.
fn user_may_call(method: &Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1/sessions") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    matches!(
        (method.as_str(), parts.as_slice()),
        ("GET" | "HEAD" | "POST", [])
            | ("POST", ["bulk"])
            | ("GET" | "HEAD" | "DELETE", [_])
            | ("PUT", [_, "groups"])
            | ("POST", [_, "access" | "keepalive" | "extend"])
    )
}

/// What the audit log calls a request to `path`.
fn action_of(method: &Method, path: &str) -> String {
    let Some(rest) = path.strip_prefix("/api/v1/sessions") else {
        return String::new();
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", []) => "create".into(),
        ("POST", ["bulk"]) => "bulk".into(),
        ("PATCH", [] | [_]) => "change".into(),
        ("DELETE", [_]) => "delete".into(),
        ("PUT", [_, "groups"]) => "share".into(),
        ("POST", [_, "access"]) => "open".into(),
        ("POST", [_, action]) => (*action).to_string(),
        _ => String::new(),
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
}

async fn metrics(State(cp): State<Control>) -> Response {
    if let Ok(counts) = cp.count_by_state().await {
        for (state, n) in counts {
            cp.metrics().set_sessions(state.as_str(), n);
        }
    }
    cp.metrics().set_certificates(cp.certificate_expiries());
    cp.metrics().observe_on_demand(cp.certificate_resolver());
    let table = cp.routes().load();
    let mut text = cp.metrics().render();
    cp.gateway_metrics().render(&mut text);
    text.push_str(&format!(
        "# HELP sessiongate_route_table_version Version of the route table the gateway holds.\n\
         # TYPE sessiongate_route_table_version gauge\n\
         sessiongate_route_table_version {}\n\
         # HELP sessiongate_route_table_routes Routes in the gateway's table.\n\
         # TYPE sessiongate_route_table_routes gauge\n\
         sessiongate_route_table_routes {}\n",
        table.version(),
        table.routes().len()
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn openapi_json() -> Response {
    Json(openapi::ApiDoc::openapi()).into_response()
}
