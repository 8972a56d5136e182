//! Requesting a session (`/workshops/environment/<name>/request/`) and
//! activating it (`/workshops/session/<name>/activate/`).
//!
//! The request endpoint answers as the training portal's code does, which
//! its real clients rely on (the Educates lookup service, its CLI, the
//! Backstage plugin): GET and POST alike; unknown query parameters ignored
//! and empty ones absent; a JSON body read whenever there is one, whatever
//! the method and `Content-Type`; and its refusals carrying the portal's
//! own strings (`{"error": "No session available"}`), with sessiongate's
//! `code`, `message` and `notification` beside them.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use std::sync::Arc;

use super::{caller, need_auth, Caller};
use crate::api::server::ClientIp;
use crate::api::sessions::query_pairs;
use crate::api::{ApiError, ApiPath, ErrorBody};
use crate::error::ControlError;
use crate::session::lifecycle::SessionState;
use crate::session::model::RequestParameter;
use crate::workshop::portal::{RequestAnswer, WorkshopError, WorkshopRequest};
use crate::workshop::Portal;

/// The portal's own strings for its refusals (`environment_request` in
/// its `views/environment.py`), which its clients log and compare.
pub const NO_SESSION: &str = "No session available";
pub const NO_ENVIRONMENT: &str = "Environment does not exist";
pub const NEED_INDEX_URL: &str = "Need redirect URL for workshop index";
pub const INVALID_EMAIL: &str = "Invalid email address provided";
pub const INVALID_JSON: &str = "Invalid JSON request payload";
pub const MALFORMED_JSON: &str = "Malformed JSON request payload";
pub const USER_NOT_PERMITTED: &str = "Session requests not permitted for user";

/// A refusal of the request endpoint. The portal answers
/// `{"error": "No session available"}` (and plain-text 400s), and its
/// clients read `error` as a string, so `error` is the portal's string for
/// the refusal where it has one, else the message; `code` and `message`
/// are sessiongate's, as everywhere else; `notification` is the value a
/// front end passes on to its index page, where one fits.
#[derive(Debug)]
pub struct RequestError {
    pub status: StatusCode,
    /// The portal's string, if it has one for this refusal.
    pub portal: Option<&'static str>,
    pub code: &'static str,
    pub message: String,
    pub notification: Option<&'static str>,
}

/// The request endpoint's error body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RequestErrorBody {
    /// The training portal's own string, such as `No session available`,
    /// where it has one; else the same as `message`.
    pub error: String,
    /// Stable and machine-readable, such as `session_unavailable`.
    pub code: String,
    /// What was wrong, naming the value.
    pub message: String,
    /// `workshop-invalid` or `session-unavailable`, for the front end's
    /// index page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<String>,
}

/// `GET|POST /workshops/environment/<name>/request/`'s JSON body, as the
/// portal reads it: other keys, at the top and in items, are ignored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RequestPayload {
    #[serde(default)]
    pub parameters: Vec<RequestParameter>,
}

impl RequestError {
    /// A 400 for bad input.
    pub fn bad_request(portal: Option<&'static str>, message: impl Into<String>) -> Self {
        RequestError {
            status: StatusCode::BAD_REQUEST,
            portal,
            code: "bad_request",
            message: message.into(),
            notification: None,
        }
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let body = RequestErrorBody {
            error: self
                .portal
                .map_or_else(|| self.message.clone(), str::to_string),
            code: self.code.to_string(),
            message: self.message,
            notification: self.notification.map(str::to_string),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<WorkshopError> for RequestError {
    fn from(e: WorkshopError) -> Self {
        let e = match e {
            WorkshopError::Control(c) if !matches!(c, ControlError::Invalid(_)) => {
                // `ApiError::from` logs the server's own failures.
                let api = ApiError::from(c);
                return RequestError {
                    status: api.status,
                    portal: None,
                    code: api.code,
                    message: api.message,
                    notification: None,
                };
            }
            e => e,
        };
        let (status, portal, code) = match &e {
            WorkshopError::Control(c) => {
                let field = match c {
                    ControlError::Invalid(inv) => inv.field.as_str(),
                    _ => "",
                };
                let portal = match field {
                    "email" => Some(INVALID_EMAIL),
                    "index_url" => Some(NEED_INDEX_URL),
                    _ => None,
                };
                return RequestError::bad_request(portal, e.to_string());
            }
            WorkshopError::UserNotPermitted(_) => {
                return RequestError::bad_request(Some(USER_NOT_PERMITTED), e.to_string())
            }
            // The portal answers 403 for an unknown environment; a 404 is
            // what it is, and every client reads any failure alike.
            WorkshopError::Invalid(_) => (StatusCode::NOT_FOUND, NO_ENVIRONMENT, "not_found"),
            WorkshopError::Stopping(_) => {
                (StatusCode::NOT_FOUND, NO_SESSION, "environment_stopping")
            }
            WorkshopError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                NO_SESSION,
                "session_unavailable",
            ),
            WorkshopError::NotReacquirable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                NO_SESSION,
                "not_reacquirable",
            ),
        };
        RequestError {
            status,
            portal: Some(portal),
            code,
            message: e.to_string(),
            notification: Some(e.notification()),
        }
    }
}

/// The request endpoint's query string, as the portal reads it: each value
/// trimmed (but `session`), an empty one absent; `redirect_url`,
/// `firstname` and `lastname` as the legacy names of `index_url`,
/// `first_name` and `last_name`; and any other parameter ignored (logged at
/// debug). A 400 only for a malformed query or a timeout that is not a
/// number (the portal fails with a 500). Apart from the handler so that the
/// fuzz target `workshop_query` can run it.
pub fn request_query(raw: Option<String>) -> Result<WorkshopRequest, RequestError> {
    let mut req = WorkshopRequest::default();
    let (mut redirect_url, mut firstname, mut lastname) = (None, None, None);
    let pairs = query_pairs(raw).map_err(|e| RequestError::bad_request(None, e.message.clone()))?;
    for (k, v) in pairs {
        if k == "session" {
            req.session = Some(v).filter(|v| !v.is_empty());
            continue;
        }
        let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        match k.as_str() {
            "index_url" => req.index_url = v,
            "redirect_url" => redirect_url = v,
            "user" => req.user = v,
            "email" => req.email = v,
            "first_name" => req.first_name = v,
            "firstname" => firstname = v,
            "last_name" => req.last_name = v,
            "lastname" => lastname = v,
            "analytics_url" => req.analytics_url = v,
            "timeout" => {
                req.timeout = match v {
                    None => None,
                    Some(t) => Some(t.parse().map_err(|_| {
                        RequestError::bad_request(
                            None,
                            format!("timeout {t:?}: seconds, a whole number"),
                        )
                    })?),
                }
            }
            other => {
                tracing::debug!(parameter = %other, "workshop request: unknown query parameter ignored");
            }
        }
    }
    req.index_url = req.index_url.or(redirect_url);
    req.first_name = req.first_name.or(firstname);
    req.last_name = req.last_name.or(lastname);
    Ok(req)
}

/// The request's body, as the portal reads it: whenever it is not empty,
/// whatever the method and `Content-Type` (the lookup service sends a GET
/// with a JSON body, the CLI a POST; Backstage sends none), a JSON object
/// whose `parameters`, if present, is a list of `{"name", "value"}`: a
/// non-empty string name, and a string value (absent: empty). Other keys
/// are ignored; a name given twice keeps its last value, as the portal's
/// dict does. Not JSON: `Invalid JSON request payload`; JSON of another
/// shape: `Malformed JSON request payload` (where the portal fails with a
/// 500 on an item that is not an object, this says so with a 400).
pub fn request_parameters(body: &[u8]) -> Result<Vec<RequestParameter>, RequestError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        RequestError::bad_request(
            Some(INVALID_JSON),
            format!("{INVALID_JSON}: the body is not JSON ({e})"),
        )
    })?;
    let malformed = |what: String| {
        RequestError::bad_request(Some(MALFORMED_JSON), format!("{MALFORMED_JSON}: {what}"))
    };
    let Value::Object(top) = json else {
        return Err(malformed(
            "the body must be a JSON object, such as {\"parameters\": []}".into(),
        ));
    };
    let items = match top.get("parameters") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(malformed(
                "parameters must be a list of {\"name\", \"value\"}".into(),
            ))
        }
    };
    let mut out: Vec<RequestParameter> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(malformed(format!(
                "parameters[{i}] must be an object {{\"name\", \"value\"}}"
            )));
        };
        let name = match item.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n,
            _ => {
                return Err(malformed(format!(
                    "parameters[{i}].name must be a non-empty string"
                )))
            }
        };
        let value = match item.get("value") {
            None => String::new(),
            Some(Value::String(v)) => v.clone(),
            Some(_) => {
                return Err(malformed(format!(
                    "parameters[{i}].value (of {name:?}) must be a string"
                )))
            }
        };
        match out.iter_mut().find(|p| p.name == *name) {
            Some(p) => p.value = value,
            None => out.push(RequestParameter {
                name: name.clone(),
                value,
            }),
        }
    }
    Ok(out)
}

/// The `url` a request answers with: the activation endpoint with the
/// session's token and, when allowed, where to go back to;
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

/// `GET|POST /workshops/environment/<name>/request/`.
#[utoipa::path(
    method(get, post), path = "/workshops/environment/{name}/request/", tag = "workshop",
    params(
        ("name" = String, Path, description = "Environment name"),
        ("index_url" = String, Query, description = "Required (else 400 `Need redirect URL for workshop index`): where the user goes back to; used only if on workshop.index_urls"),
        ("redirect_url" = Option<String>, Query, description = "Legacy name of index_url, used when index_url is absent"),
        ("user" = Option<String>, Query, description = "A portal user id: a known one gets their session back; an unknown one becomes a user with exactly that id ([-a-zA-Z0-9_], at most 128, starting with a letter or digit); absent, a new id"),
        ("email" = Option<String>, Query, description = "For a new user; checked (400 `Invalid email address provided`)"),
        ("first_name" = Option<String>, Query, description = "For a new user"),
        ("last_name" = Option<String>, Query, description = "For a new user"),
        ("firstname" = Option<String>, Query, description = "Legacy name of first_name, used when first_name is absent"),
        ("lastname" = Option<String>, Query, description = "Legacy name of last_name, used when last_name is absent"),
        ("analytics_url" = Option<String>, Query, description = "The client's analytics webhook, kept with the session"),
        ("session" = Option<String>, Query, description = "Reacquire only: the user's existing session of this name, else 503 `No session available`"),
        ("timeout" = Option<u64>, Query, description = "Activation deadline in seconds (default 60)"),
    ),
    request_body(content = RequestPayload, content_type = "application/json",
        description = "Optional, read whenever the body is not empty, for GET too and whatever the Content-Type"),
    responses(
        (status = 200, body = RequestAnswer),
        (status = 400, description = "Bad input: `error` is the portal's string where it has one", body = RequestErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "workshop-invalid: `Environment does not exist`", body = RequestErrorBody),
        (status = 503, description = "session-unavailable: `No session available`", body = RequestErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn request(
    State(portal): State<Arc<Portal>>,
    ApiPath(name): ApiPath<String>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    match request_session(&portal, &name, client, &headers, raw, &body).await {
        Ok(answer) | Err(answer) => answer,
    }
}

/// [`request`]'s work. A refusal before the request is read (the token)
/// answers as the rest of the API does; from then on, as the portal does.
async fn request_session(
    portal: &Portal,
    name: &str,
    client: std::net::IpAddr,
    headers: &HeaderMap,
    raw: Option<String>,
    body: &[u8],
) -> Result<Response, Response> {
    let c = caller(portal, headers, client)
        .await
        .map_err(IntoResponse::into_response)?;
    need_auth(c).map_err(IntoResponse::into_response)?;
    if c == Caller::Reader {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a read-only token cannot request sessions",
        )
        .into_response());
    }
    let mut req = request_query(raw).map_err(IntoResponse::into_response)?;
    req.parameters = request_parameters(body).map_err(IntoResponse::into_response)?;
    // An index_url off the allow-list is ignored: the portal's own is used.
    let index_url = req
        .index_url
        .clone()
        .filter(|u| portal.settings().index_policy.allows(u));
    let a = portal
        .workshop_request(name, req)
        .await
        .map_err(|e| RequestError::from(e).into_response())?;
    let url = activation_path(&a.session, &a.token, index_url.as_deref());
    Ok(Json(RequestAnswer {
        name: a.session.clone(),
        session: a.session.clone(),
        user: a.user,
        url,
        namespace: a.session,
        workshop: a.workshop,
        environment: a.environment,
        parameters: a.parameters,
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
