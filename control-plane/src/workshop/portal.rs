//! The training portal's request and answer shapes, path for path and
//! field for field as the portal's clients send and read them, and the
//! errors its endpoints answer with.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::TokenError;
use crate::error::ControlError;
use crate::session::model::{Invalid, RequestParameter};
use crate::store::StoreError;
use crate::writes::WriteError;

/// The user that owns reserved sessions until a request takes one.
pub const RESERVE_USER: &str = "sessiongate-reserve";

/// A pending session in reserve is never reaped: its deadline starts when a
/// request takes it.
pub const RESERVED_DEADLINE_MS: u64 = i64::MAX as u64;

/// `GET|POST /workshops/environment/<name>/request/`'s parameters, each
/// absent when empty, as the portal reads them.
#[derive(Clone, Debug, Default)]
pub struct WorkshopRequest {
    /// Where the user goes back to, as given (`index_url`, else the legacy
    /// `redirect_url`): required, as the portal requires it. Whether it is
    /// used is the allow-list's business (the caller's).
    pub index_url: Option<String>,
    /// A portal user id: a known one gets their session back, an unknown
    /// one becomes a new portal user with exactly that id, none a new id.
    pub user: Option<String>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Seconds the session waits for its activation (default 60).
    pub timeout: Option<u64>,
    /// The client's analytics webhook, kept with the session.
    pub analytics_url: Option<String>,
    /// Reacquire only: the user's existing session of this name, or none.
    pub session: Option<String>,
    /// From the JSON body, kept with the session.
    pub parameters: Vec<RequestParameter>,
}

/// What a request allocated.
#[derive(Clone, Debug)]
pub struct Allocation {
    pub session: String,
    pub user: String,
    /// The activation token: valid until its deadline, stored hashed; the
    /// same again while the link is unused.
    pub token: String,
    pub workshop: String,
    pub environment: String,
    /// The session's request parameters (of the request that allocated it).
    pub parameters: Vec<RequestParameter>,
}

/// Why a request got no session; `notification` is the portal's value.
/// Bad input is [`WorkshopError::Control`] with [`ControlError::Invalid`].
#[derive(Debug, thiserror::Error)]
pub enum WorkshopError {
    #[error("no workshop environment {0:?} takes requests")]
    Invalid(String),
    #[error("environment {0:?} is stopping and takes no requests")]
    Stopping(String),
    #[error("environment {0:?} is at capacity")]
    Unavailable(String),
    /// `session` named a session the user does not have in the environment.
    #[error(
        "user {user:?} has no session {session:?} in environment {environment:?} to reacquire"
    )]
    NotReacquirable {
        environment: String,
        user: String,
        session: String,
    },
    /// The user is one sessions may not be requested for.
    #[error("sessions cannot be requested for user {0:?}")]
    UserNotPermitted(String),
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl WorkshopError {
    pub fn notification(&self) -> &'static str {
        match self {
            WorkshopError::Invalid(_) | WorkshopError::Stopping(_) => "workshop-invalid",
            WorkshopError::Unavailable(_)
            | WorkshopError::NotReacquirable { .. }
            | WorkshopError::UserNotPermitted(_)
            | WorkshopError::Control(_) => "session-unavailable",
        }
    }
}

/// The request's answer, field for field and in the order the portal's
/// code gives it (its documentation shows another order).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RequestAnswer {
    pub name: String,
    /// Deprecated: equals `name`.
    pub session: String,
    pub user: String,
    /// A path on the portal host: `/workshops/session/<name>/activate/?token=…&index_url=…`.
    pub url: String,
    pub namespace: String,
    pub workshop: String,
    pub environment: String,
    /// Not the portal's: the session's request parameters, as stored;
    /// absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<RequestParameter>,
}

/// One of a user's sessions, as the portal lists them (no `state`, no
/// `user`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UserSession {
    pub name: String,
    pub namespace: String,
    pub workshop: String,
    pub environment: String,
    #[serde(flatten)]
    pub times: super::schedule::SessionTimes,
}

/// `GET /workshops/user/<user>/sessions/`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UserSessions {
    pub user: String,
    pub sessions: Vec<UserSession>,
}

/// A portal user id, as the training portal makes them (a UUID v4 shape).
pub fn new_user_id() -> Result<String, crate::auth::TokenError> {
    let h = crate::auth::random_hex(16)?;
    Ok(format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    ))
}

/// The `[workshop]` settings the portal uses.
#[derive(Clone, Debug)]
pub struct WorkshopSettings {
    pub portal_name: String,
    pub portal_url: String,
    /// Where users go back to when no allowed `index_url` was given.
    pub index_url: String,
    pub index_policy: crate::access::RedirectPolicy,
    /// `None`: the token endpoint is off.
    pub oauth: Option<OAuthClient>,
    pub token_ttl_secs: u64,
    /// The portal-wide session caps (`workshop.sessions_*`).
    pub caps: super::caps::SessionCaps,
}

impl Default for WorkshopSettings {
    /// The configuration's defaults: the portal named `sessiongate`, no
    /// token endpoint, ten-hour access tokens.
    fn default() -> Self {
        WorkshopSettings {
            portal_name: "sessiongate".into(),
            portal_url: String::new(),
            index_url: String::new(),
            index_policy: Default::default(),
            oauth: None,
            token_ttl_secs: 36_000,
            caps: Default::default(),
        }
    }
}

/// The one OAuth2 client and its robot account.
#[derive(Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    pub robot_username: String,
    pub robot_password: String,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("robot_username", &self.robot_username)
            .finish_non_exhaustive()
    }
}

/// `POST /oauth2/token/`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenAnswer {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub scope: String,
}

/// Why the token endpoint refused (RFC 6749 §5.2 error codes).
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_client")]
    InvalidClient,
    #[error("invalid_grant")]
    InvalidGrant,
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error("invalid_request")]
    InvalidRequest(String),
    /// The client is past the brute-force limit; its credentials were not
    /// looked at.
    #[error("too_many_failures")]
    TooManyFailures(crate::limits::TooManyFailures),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The control plane's errors (and those it is made of) reach the portal's
/// answers as [`WorkshopError::Control`] and [`OAuthError::Control`].
macro_rules! via_control_error {
    ($($from:ty),*) => {$(
        impl From<$from> for WorkshopError {
            fn from(e: $from) -> Self {
                WorkshopError::Control(e.into())
            }
        }
        impl From<$from> for OAuthError {
            fn from(e: $from) -> Self {
                OAuthError::Control(e.into())
            }
        }
    )*};
}

via_control_error!(StoreError, WriteError, TokenError, Invalid);
