//! `/oauth2/token/` and `/oauth2/revoke-token/`: the OAuth2 endpoints the
//! training portal's clients use, with the client's credentials in HTTP
//! Basic or in the form body (RFC 6749 §2.3.1), as django-oauth-toolkit
//! takes them.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

use std::net::IpAddr;
use std::sync::Arc;

use crate::api::server::client_addr;
use crate::limits::Guessed;
use crate::workshop::portal::{OAuthError, TokenAnswer};
use crate::workshop::Portal;

/// `POST /oauth2/token/`: the password and refresh grants, with the client
/// in HTTP Basic or in the form.
#[utoipa::path(
    post, path = "/oauth2/token/", tag = "workshop",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "grant_type=password&username=…&password=…, or grant_type=refresh_token&refresh_token=…; \
            the client in HTTP Basic, or as client_id and client_secret in the form"),
    responses(
        (status = 200, body = TokenAnswer, description = "A new access token and refresh token; a refresh grant ends the refresh token it used and its access token"),
        (status = 400, description = "invalid_grant, unsupported_grant_type or invalid_request (RFC 6749 §5.2)"),
        (status = 401, description = "invalid_client"),
        (status = 429, description = "too_many_failures: past the brute-force limit; Retry-After says when to try again"),
    )
)]
pub async fn token(State(portal): State<Arc<Portal>>, form: OAuthForm) -> Response {
    let result = match form.field("grant_type") {
        Some("password") => match (form.field("username"), form.field("password")) {
            (Some(u), Some(p)) => portal.oauth_password_grant(form.client(), u, p).await,
            _ => Err(OAuthError::InvalidRequest(
                "the password grant needs username and password".into(),
            )),
        },
        Some("refresh_token") => match form.field("refresh_token") {
            Some(r) => portal.oauth_refresh_grant(form.client(), r).await,
            None => Err(OAuthError::InvalidRequest(
                "the refresh grant needs refresh_token".into(),
            )),
        },
        Some(_) => Err(OAuthError::UnsupportedGrantType),
        None => Err(OAuthError::InvalidRequest("grant_type is missing".into())),
    };
    // A wrong secret, password or refresh token is a guess.
    if matches!(
        result,
        Err(OAuthError::InvalidClient | OAuthError::InvalidGrant)
    ) {
        form.guessed_wrong(&portal);
    }
    match result {
        Ok(t) => no_store(Json(t).into_response()),
        Err(e) => oauth_error(e),
    }
}

/// `POST /oauth2/revoke-token/` (RFC 7009): ends an access or a refresh
/// token. Revoking a refresh token ends the access token issued with it.
#[utoipa::path(
    post, path = "/oauth2/revoke-token/", tag = "workshop",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "token=…, optionally token_type_hint=access_token|refresh_token; \
            the client in HTTP Basic, or as client_id and client_secret in the form"),
    responses(
        (status = 200, description = "An empty body: the token no longer works (also for an unknown, expired or already revoked token)"),
        (status = 400, description = "invalid_request: no token"),
        (status = 401, description = "invalid_client"),
        (status = 429, description = "too_many_failures: past the brute-force limit; Retry-After says when to try again"),
    )
)]
pub async fn revoke_token(State(portal): State<Arc<Portal>>, form: OAuthForm) -> Response {
    // oauthlib's order: a request without a token is refused before the
    // client is looked at. An empty token is none.
    let Some(token) = form.field("token").filter(|t| !t.is_empty()) else {
        return oauth_error(OAuthError::InvalidRequest(
            "the token parameter is missing".into(),
        ));
    };
    // `token_type_hint` is not read: one lookup finds either kind, and an
    // unknown hint is to be ignored (RFC 7009 §2.2; oauthlib refuses only a
    // known kind it does not support, and DOT supports both).
    match portal.oauth_revoke(form.client(), token).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => {
            if matches!(e, OAuthError::InvalidClient) {
                form.guessed_wrong(&portal);
            }
            oauth_error(e)
        }
    }
}

/// A token endpoint's request: its form and the client's credentials. As
/// an extractor it answers a client past the brute-force limit with 429
/// before anything it sent is looked at, and a form it cannot read with
/// `invalid_request`.
pub struct OAuthForm {
    fields: Vec<(String, String)>,
    /// From HTTP Basic when the request has it, else from the form's
    /// `client_id` and `client_secret` (empty where missing: a client that
    /// sends no secret is refused, see [`crate::workshop::oauth`]).
    client: (String, String),
    /// Where the request came from, for the brute-force limit.
    addr: IpAddr,
}

impl<S> FromRequest<S> for OAuthForm
where
    Arc<Portal>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let portal = Arc::<Portal>::from_ref(state);
        let addr = client_addr(req.extensions());
        portal
            .control()
            .failures(Guessed::PortalCredentials)
            .check(addr)
            .map_err(|t| oauth_error(OAuthError::TooManyFailures(t)))?;
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
            .map_err(|e| oauth_error(OAuthError::InvalidRequest(format!("form body: {e}"))))?;
        let basic = basic_credentials(&headers).map_err(oauth_error)?;
        let mut form = OAuthForm {
            fields,
            client: Default::default(),
            addr,
        };
        form.client = basic.unwrap_or_else(|| {
            let field = |k| form.field(k).unwrap_or_default().to_string();
            (field("client_id"), field("client_secret"))
        });
        Ok(form)
    }
}

impl OAuthForm {
    /// The first value of form field `name`.
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn client(&self) -> (&str, &str) {
        (&self.client.0, &self.client.1)
    }

    /// Counts a wrong credential against the sender's brute-force budget.
    fn guessed_wrong(&self, portal: &Portal) {
        portal
            .control()
            .failures(Guessed::PortalCredentials)
            .fail(self.addr);
    }
}

/// The client's id and secret from `Authorization: Basic` (the scheme in
/// any case, RFC 9110 §11.1), compared as sent: the portal's clients send
/// them without the form-encoding RFC 6749 asks for. `None` for no
/// `Authorization` header or another scheme: the Educates CLI sends its
/// access token as `Bearer` beside the form's credentials when it revokes,
/// and DOT, too, then takes the form's. A Basic header that is not base64
/// of `id:secret` is an invalid client.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.as_bytes();
    let Some(encoded) = value
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
        .and_then(|_| value.get(6..))
    else {
        return Ok(None);
    };
    let decoded = STANDARD
        .decode(encoded.trim_ascii())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or(OAuthError::InvalidClient)?;
    let (id, secret) = decoded.split_once(':').ok_or(OAuthError::InvalidClient)?;
    Ok(Some((id.to_string(), secret.to_string())))
}

/// RFC 6749 §5.1: token answers are not to be cached.
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
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
    let mut resp = no_store(
        (
            status,
            Json(json!({"error": code, "error_description": description})),
        )
            .into_response(),
    );
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
