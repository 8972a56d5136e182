//! The training portal's REST API, path for path and
//! field for field: `/oauth2/token/`, `/workshops/environment/<name>/request/`,
//! `/workshops/session/<name>/activate/`, `/workshops/user/<user>/sessions/`
//! and `/workshops/catalog/environments/`.
//!
//! Bearer tokens are the OAuth2 access tokens from `/oauth2/token/`, or the
//! control plane's own API tokens. The activation endpoint is opened by the
//! user's browser and needs none: its one-time token is the credential.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use std::net::IpAddr;
use std::sync::Arc;

use super::server::ClientIp;
use super::sessions::query_pairs;
use super::{ApiError, ApiPath, ErrorBody};
use crate::auth::{bearer_token, TokenKind};
use crate::error::ControlError;
use crate::limits::Guessed;
use crate::session::lifecycle::SessionState;
use crate::time::rfc3339_millis;
use crate::workshop::environment::EnvironmentState;
use crate::workshop::portal::{
    OAuthError, RequestAnswer, TokenAnswer, UserSession, UserSessions, WorkshopError,
    WorkshopRequest,
};
use crate::workshop::Portal;

/// Who is calling a workshop endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// The admin token or an OAuth2 access token: may request sessions.
    Writer,
    /// A read-only API token.
    Reader,
    Anonymous,
}

/// Who presents the bearer token in `headers`, if any. A wrong token
/// counts against `client`'s brute-force limit, and a client past it is
/// answered 429 before its token is looked at.
async fn caller(portal: &Portal, headers: &HeaderMap, client: IpAddr) -> Result<Caller, ApiError> {
    let Some(h) = headers.get(header::AUTHORIZATION) else {
        return Ok(Caller::Anonymous);
    };
    let failures = portal.control().failures(Guessed::ApiToken);
    failures.check(client)?;
    let Some(token) = bearer_token(h.as_bytes()) else {
        failures.fail(client);
        return Err(unauthorized());
    };
    match portal.control().check_token(token) {
        Some(TokenKind::Admin) => return Ok(Caller::Writer),
        Some(TokenKind::Readonly) => return Ok(Caller::Reader),
        None => {}
    }
    if portal.check_oauth_token(token).await? {
        Ok(Caller::Writer)
    } else {
        failures.fail(client);
        Err(unauthorized())
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid or expired bearer token (get one from /oauth2/token/)",
    )
}

fn need_auth(c: Caller) -> Result<(), ApiError> {
    match c {
        Caller::Anonymous => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer token (get one from /oauth2/token/)",
        )),
        _ => Ok(()),
    }
}

/// `POST /oauth2/token/`: the password and refresh grants, with the client
/// in HTTP Basic (or, as RFC 6749 allows, in the form).
#[utoipa::path(
    post, path = "/oauth2/token/", tag = "workshop",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "grant_type=password&username=…&password=…, or grant_type=refresh_token&refresh_token=…; the client in HTTP Basic"),
    responses(
        (status = 200, body = TokenAnswer),
        (status = 400, description = "invalid_grant, unsupported_grant_type or invalid_request (RFC 6749 §5.2)"),
        (status = 401, description = "invalid_client"),
        (status = 429, description = "too_many_failures: past the brute-force limit; Retry-After says when to try again"),
    )
)]
pub async fn token(
    State(portal): State<Arc<Portal>>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Past the brute-force limit, the credentials are not looked at.
    let failures = portal.control().failures(Guessed::PortalCredentials);
    if let Err(t) = failures.check(client) {
        return oauth_error(OAuthError::TooManyFailures(t));
    }
    let form: Vec<(String, String)> = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => return oauth_error(OAuthError::InvalidRequest(format!("form body: {e}"))),
    };
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let (id, secret) = match &basic {
        Some(b) => match b.split_once(':') {
            Some((i, s)) => (i.to_string(), s.to_string()),
            None => return oauth_error(OAuthError::InvalidClient),
        },
        None => (
            field("client_id").unwrap_or("").to_string(),
            field("client_secret").unwrap_or("").to_string(),
        ),
    };
    let result = match field("grant_type") {
        Some("password") => {
            let (Some(u), Some(p)) = (field("username"), field("password")) else {
                return oauth_error(OAuthError::InvalidRequest(
                    "the password grant needs username and password".into(),
                ));
            };
            portal.oauth_password_grant((&id, &secret), u, p).await
        }
        Some("refresh_token") => {
            let Some(r) = field("refresh_token") else {
                return oauth_error(OAuthError::InvalidRequest(
                    "the refresh grant needs refresh_token".into(),
                ));
            };
            portal.oauth_refresh_grant((&id, &secret), r).await
        }
        Some(_) => Err(OAuthError::UnsupportedGrantType),
        None => Err(OAuthError::InvalidRequest("grant_type is missing".into())),
    };
    if matches!(
        result,
        Err(OAuthError::InvalidClient | OAuthError::InvalidGrant)
    ) {
        failures.fail(client);
    }
    match result {
        Ok(t) => {
            let mut resp = Json(t).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => oauth_error(e),
    }
}

/// RFC 6749 §5.2: `{"error": "...", "error_description": "..."}`.
fn oauth_error(e: OAuthError) -> Response {
    let (status, code, description) = match &e {
        OAuthError::InvalidClient => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong client secret".to_string(),
        ),
        OAuthError::InvalidGrant => (
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "wrong username or password, or an unknown or used refresh token".to_string(),
        ),
        OAuthError::UnsupportedGrantType => (
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be password or refresh_token".to_string(),
        ),
        OAuthError::InvalidRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request", m.clone()),
        OAuthError::TooManyFailures(t) => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            t.to_string(),
        ),
        OAuthError::Control(c) => {
            tracing::error!(error = %c, "oauth2: internal error");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error".to_string(),
            )
        }
    };
    let mut resp = (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"sessiongate\""),
        );
    }
    if let OAuthError::TooManyFailures(t) = &e {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after_secs));
    }
    resp
}

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
