//! The session lifecycle as an explicit state machine (DESIGN.md "Sessions",
//! seeds 002 and 003):
//!
//! ```text
//! pending ──activate──► running ◄──resume── paused
//!                        │  ▲  └──pause──►──┘
//!                 evict  ▼  │ activate (the owner opens it again)
//!                       evicted
//! any live state ──expire──► expired      (never opened again)
//! any state but deleted ──delete──► deleted   (the route disappears)
//! ```
//!
//! `keepalive` and `extend` do not change the state; they are only valid
//! where the expiry clock is meaningful. Every invalid action is a
//! [`TransitionError`] naming the current state, which the API answers with 409.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Allocated, waiting for its activation link.
    Pending,
    /// Reachable; its expiry clock runs.
    Running,
    /// The gateway answers 503; the expiry clock is stopped.
    Paused,
    /// Live connections were closed; the owner can open it again.
    Evicted,
    /// Closed for good.
    Expired,
    /// Gone from the routing table; the record waits for the retention purge.
    Deleted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Activate,
    Pause,
    Resume,
    Evict,
    Expire,
    Delete,
    Keepalive,
    Extend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a session that is {from}")]
pub struct TransitionError {
    pub from: SessionState,
    pub action: Action,
}

impl SessionState {
    pub const ALL: [SessionState; 6] = [
        SessionState::Pending,
        SessionState::Running,
        SessionState::Paused,
        SessionState::Evicted,
        SessionState::Expired,
        SessionState::Deleted,
    ];

    /// The state after `action`, or why it is not allowed.
    pub fn apply(self, action: Action) -> Result<SessionState, TransitionError> {
        use Action as A;
        use SessionState as S;
        let next = match (self, action) {
            (S::Pending | S::Evicted, A::Activate) => S::Running,
            (S::Running, A::Pause) => S::Paused,
            (S::Paused, A::Resume) => S::Running,
            (S::Running, A::Evict) => S::Evicted,
            (S::Pending | S::Running | S::Paused | S::Evicted, A::Expire) => S::Expired,
            (s, A::Delete) if s != S::Deleted => S::Deleted,
            // The clock only matters while the session can still be used.
            (S::Running | S::Paused, A::Keepalive | A::Extend) => self,
            _ => return Err(TransitionError { from: self, action }),
        };
        Ok(next)
    }

    /// Whether the session is still live: not expired and not deleted.
    pub fn is_live(self) -> bool {
        !matches!(self, SessionState::Expired | SessionState::Deleted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pending => "pending",
            SessionState::Running => "running",
            SessionState::Paused => "paused",
            SessionState::Evicted => "evicted",
            SessionState::Expired => "expired",
            SessionState::Deleted => "deleted",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown state {s:?} (expected pending, running, paused, evicted, expired or deleted)")
            })
    }
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::Activate,
        Action::Pause,
        Action::Resume,
        Action::Evict,
        Action::Expire,
        Action::Delete,
        Action::Keepalive,
        Action::Extend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Activate => "activate",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Evict => "evict",
            Action::Expire => "expire",
            Action::Delete => "delete",
            Action::Keepalive => "keepalive",
            Action::Extend => "extend",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown action {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::Action as A;
    use super::SessionState as S;
    use super::*;

    /// The whole table: every (state, action) pair and its outcome.
    #[test]
    fn every_transition_is_as_designed() {
        let allowed: &[(S, A, S)] = &[
            (S::Pending, A::Activate, S::Running),
            (S::Pending, A::Expire, S::Expired),
            (S::Pending, A::Delete, S::Deleted),
            (S::Running, A::Pause, S::Paused),
            (S::Running, A::Evict, S::Evicted),
            (S::Running, A::Expire, S::Expired),
            (S::Running, A::Delete, S::Deleted),
            (S::Running, A::Keepalive, S::Running),
            (S::Running, A::Extend, S::Running),
            (S::Paused, A::Resume, S::Running),
            (S::Paused, A::Expire, S::Expired),
            (S::Paused, A::Delete, S::Deleted),
            (S::Paused, A::Keepalive, S::Paused),
            (S::Paused, A::Extend, S::Paused),
            (S::Evicted, A::Activate, S::Running),
            (S::Evicted, A::Expire, S::Expired),
            (S::Evicted, A::Delete, S::Deleted),
            (S::Expired, A::Delete, S::Deleted),
        ];
        for from in S::ALL {
            for action in A::ALL {
                let want = allowed
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|(_, _, to)| *to);
                match (from.apply(action), want) {
                    (Ok(got), Some(to)) => assert_eq!(got, to, "{from} {action}"),
                    (Err(e), None) => {
                        assert_eq!(e, TransitionError { from, action });
                        assert_eq!(
                            e.to_string(),
                            format!("cannot {action} a session that is {from}")
                        );
                    }
                    (got, want) => panic!("{from} {action}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn expired_sessions_can_never_run_again() {
        for action in A::ALL {
            if let Ok(next) = S::Expired.apply(action) {
                assert_eq!(next, S::Deleted, "{action}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for a in A::ALL {
            assert_eq!(a.as_str().parse::<A>(), Ok(a));
        }
        assert!("Running"
            .parse::<S>()
            .unwrap_err()
            .contains("unknown state"));
        assert!("stop".parse::<A>().is_err());
    }

    #[test]
    fn live_states() {
        let live: Vec<_> = S::ALL.into_iter().filter(|s| s.is_live()).collect();
        assert_eq!(live, vec![S::Pending, S::Running, S::Paused, S::Evicted]);
    }
}
