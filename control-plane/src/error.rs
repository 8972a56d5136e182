//! The control plane's one error vocabulary: every way an operation can be
//! refused or fail, and, in one place, the HTTP status and the stable code
//! each one answers with (the API, bulk results and the workshop API all
//! read them from here).

use http::StatusCode;

use crate::session::lifecycle::{SessionState, TransitionError};
use crate::session::model::Invalid;
use crate::store::StoreError;
use crate::writes::WriteError;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("session {name:?}: {err}")]
    Transition { name: String, err: TransitionError },
    #[error("session {0:?} is not extendable")]
    NotExtendable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored, but the route table refused it: {0}")]
    Publish(String),
    #[error("stored, but the route table refused it: {0}")]
    Unroutable(#[from] crate::publish::RouteSpecError),
    #[error("cookie signing keys: {0}")]
    Keys(#[from] crate::access::KeyError),
    #[error("{0}")]
    Forbidden(String),
    #[error("session {name:?} is {state} and can no longer be opened")]
    Finished { name: String, state: SessionState },
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ControlError::NotFound { .. } => StatusCode::NOT_FOUND,
            ControlError::Conflict(_)
            | ControlError::Transition { .. }
            | ControlError::NotExtendable(_)
            | ControlError::Finished { .. } => StatusCode::CONFLICT,
            ControlError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControlError::Store(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Store(_)
            | ControlError::Publish(_)
            | ControlError::Unroutable(_)
            | ControlError::Keys(_)
            | ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code (`error.code` in API answers, and
    /// in bulk results).
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::NotFound { .. } => "not_found",
            ControlError::Conflict(_) => "conflict",
            ControlError::Invalid(_) => "invalid",
            ControlError::Transition { .. } => "invalid_transition",
            ControlError::NotExtendable(_) => "not_extendable",
            ControlError::Forbidden(_) => "forbidden",
            ControlError::Finished { .. } => "session_finished",
            ControlError::Store(e) if e.is_unavailable() => "database_unavailable",
            ControlError::Store(_)
            | ControlError::Publish(_)
            | ControlError::Unroutable(_)
            | ControlError::Keys(_)
            | ControlError::Internal(_) => "internal",
        }
    }

    /// The session's current state, where the refusal depends on it (a
    /// transition the state does not allow, a finished session), so that the
    /// caller need not ask again.
    pub fn state(&self) -> Option<SessionState> {
        match self {
            ControlError::Transition { err, .. } => Some(err.from),
            ControlError::Finished { state, .. } => Some(*state),
            _ => None,
        }
    }

    /// Whether this is the server's own failure rather than a refusal of
    /// the request (logged as an error where it is answered).
    pub fn is_internal(&self) -> bool {
        matches!(
            self.status(),
            StatusCode::INTERNAL_SERVER_ERROR | StatusCode::SERVICE_UNAVAILABLE
        )
    }

    pub(crate) fn not_found(what: &'static str, name: &str) -> ControlError {
        ControlError::NotFound {
            what,
            name: name.to_string(),
        }
    }
}

impl From<WriteError> for ControlError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Store(e) => ControlError::Store(e),
            WriteError::Commit(m) => ControlError::Internal(m),
            WriteError::Publish(m) => ControlError::Publish(m),
        }
    }
}

impl From<sqlx::Error> for ControlError {
    fn from(e: sqlx::Error) -> Self {
        ControlError::Store(StoreError::Db(e))
    }
}

impl From<crate::auth::TokenError> for ControlError {
    fn from(e: crate::auth::TokenError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::lifecycle::Action;

    /// The status, code and state of every kind, as the API documents them.
    #[test]
    fn every_error_has_its_status_and_code() {
        let transition = TransitionError {
            from: SessionState::Paused,
            action: Action::Pause,
        };
        let cases: Vec<(ControlError, u16, &str, Option<SessionState>)> = vec![
            (
                ControlError::not_found("session", "x"),
                404,
                "not_found",
                None,
            ),
            (
                ControlError::Conflict("taken".into()),
                409,
                "conflict",
                None,
            ),
            (
                ControlError::Invalid(crate::session::model::invalid("name", "bad")),
                422,
                "invalid",
                None,
            ),
            (
                ControlError::Transition {
                    name: "x".into(),
                    err: transition,
                },
                409,
                "invalid_transition",
                Some(SessionState::Paused),
            ),
            (
                ControlError::NotExtendable("x".into()),
                409,
                "not_extendable",
                None,
            ),
            (ControlError::Forbidden("no".into()), 403, "forbidden", None),
            (
                ControlError::Finished {
                    name: "x".into(),
                    state: SessionState::Expired,
                },
                409,
                "session_finished",
                Some(SessionState::Expired),
            ),
            (
                ControlError::Publish("refused".into()),
                500,
                "internal",
                None,
            ),
            (
                ControlError::Unroutable(crate::publish::RouteSpecError::MissingPort),
                500,
                "internal",
                None,
            ),
            (
                ControlError::Keys(crate::access::KeyError::NoCurrent),
                500,
                "internal",
                None,
            ),
            (
                ControlError::Internal("broken".into()),
                500,
                "internal",
                None,
            ),
        ];
        for (e, status, code, state) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.code(), code, "{e}");
            assert_eq!(e.state(), state, "{e}");
            assert_eq!(e.is_internal(), status == 500, "{e}");
        }
        assert_eq!(
            ControlError::not_found("session", "lab").to_string(),
            "session \"lab\" not found"
        );
    }
}
