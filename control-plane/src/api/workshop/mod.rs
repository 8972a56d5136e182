//! The training portal's REST API, path for path and
//! field for field: `/oauth2/token/`, `/oauth2/revoke-token/`,
//! `/workshops/environment/<name>/request/` (GET and POST),
//! `/workshops/session/<name>/activate/`, `/workshops/user/<user>/sessions/`,
//! `/workshops/catalog/environments/` and `workshops/`,
//! `/workshops/environment/<name>/status/` and
//! `/workshops/session/<name>/{schedule,extend,terminate}/`.
//!
//! Bearer tokens are the OAuth2 access tokens from `/oauth2/token/`, or the
//! control plane's own API tokens. The activation endpoint is opened by the
//! user's browser and needs none: its token is the credential (valid until
//! its deadline, for the browser its first use let in).
//!
//! One module per part, so that each grows on its own: `oauth` (tokens and
//! their revocation), `request` (requesting and activating sessions),
//! `catalog` (the catalogs and users' sessions), `environment` (an
//! environment's status) and `session` (a session's schedule, extension and
//! termination).

mod catalog;
mod environment;
mod oauth;
mod request;
mod session;

pub use catalog::*;
pub use environment::*;
pub use oauth::*;
pub use request::*;
pub use session::*;

use axum::http::{header, HeaderMap, StatusCode};

use std::net::IpAddr;

use super::ApiError;
use crate::auth::{bearer_token, TokenKind};
use crate::limits::Guessed;
use crate::workshop::Portal;

/// Who is calling a workshop endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Caller {
    /// The admin token or an OAuth2 access token: may request sessions.
    Writer,
    /// A read-only API token.
    Reader,
    Anonymous,
}

/// Who presents the bearer token in `headers`, if any. A wrong token
/// counts against `client`'s brute-force limit, and a client past it is
/// answered 429 before its token is looked at.
pub(super) async fn caller(
    portal: &Portal,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Caller, ApiError> {
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
        Some(TokenKind::Gateway) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a gateway token may only follow the route stream",
            ))
        }
        None => {}
    }
    if portal.check_oauth_token(token).await? {
        Ok(Caller::Writer)
    } else {
        failures.fail(client);
        Err(unauthorized())
    }
}

pub(super) fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid or expired bearer token (get one from /oauth2/token/)",
    )
}

pub(super) fn need_auth(c: Caller) -> Result<(), ApiError> {
    match c {
        Caller::Anonymous => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer token (get one from /oauth2/token/)",
        )),
        _ => Ok(()),
    }
}
