//! `/oauth2/token/`: the OAuth2 grants the training portal's clients use.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

use std::sync::Arc;

use crate::api::server::ClientIp;
use crate::limits::Guessed;
use crate::workshop::portal::{OAuthError, TokenAnswer};
use crate::workshop::Portal;

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
