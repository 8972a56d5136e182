//! The session lifecycle as an explicit state machine:
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
//!
//! [`transition`] is the whole effect of an action on a stored record — the
//! state and the times it moves — as a pure function of the record, the
//! action and the clock, so that every rule is tested here with tables of
//! cases, and the operations, the reaper and the workshop API share it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::model::SessionRecord;

/// Lifecycle settings (the `[sessions]` configuration section).
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleSettings {
    /// A pending session not activated within this is deleted.
    pub activation_deadline: Duration,
    /// Expired and deleted records are purged after this.
    pub retention: Duration,
    /// An evicted session without activity for this long expires.
    pub evicted_expiry: Duration,
    /// How often the reaper runs.
    pub reaper_interval: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            activation_deadline: Duration::from_secs(60),
            retention: Duration::from_secs(86_400),
            evicted_expiry: Duration::from_secs(30 * 86_400),
            reaper_interval: Duration::from_secs(5),
        }
    }
}

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

/// Why [`transition`] refused an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The state does not allow it.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// `extend` on a session created not extendable.
    #[error("the session is not extendable")]
    NotExtendable,
    /// `extend` without seconds on a session without a duration.
    #[error("the session has no duration; say how many seconds to extend by")]
    NoDuration,
}

/// The record after `action` at `now_ms` (Unix milliseconds), or why not.
/// `extend_secs` is what `extend` adds (default: the session's duration).
///
/// - `activate` stamps the first activation and, for a pending session (or
///   one without an expiry), starts its expiry clock from now;
/// - `pause` stops the expiry clock, and `resume` moves `expires` on by the
///   time spent paused;
/// - `keepalive` moves `expires` to a full duration from the session's clock
///   (never earlier than it was), and counts as activity;
/// - `extend` adds to `expires` (from the session's clock if it had none);
/// - `evict`, `expire` and `delete` drop a pause.
///
/// The session's clock is now, or the moment of the pause while paused.
/// `state_changed_ms` moves only when the state does.
pub fn transition(
    old: &SessionRecord,
    action: Action,
    extend_secs: Option<u64>,
    now_ms: u64,
) -> Result<SessionRecord, Refusal> {
    let next = old.state.apply(action)?;
    let mut rec = old.clone();
    // The expiry clock: frozen at the pause while paused.
    let clock = match (old.state, old.paused_ms) {
        (SessionState::Paused, Some(p)) => p,
        _ => now_ms,
    };
    match action {
        Action::Activate => {
            rec.activated_ms.get_or_insert(now_ms);
            if rec.expires_ms.is_none() || old.state == SessionState::Pending {
                rec.expires_ms = rec.duration_secs.map(|d| now_ms + d * 1000);
            }
            rec.last_activity_ms = Some(now_ms);
        }
        Action::Pause => rec.paused_ms = Some(now_ms),
        Action::Resume => {
            if let (Some(p), Some(e)) = (old.paused_ms, old.expires_ms) {
                rec.expires_ms = Some(e + now_ms.saturating_sub(p));
            }
            rec.paused_ms = None;
        }
        Action::Keepalive => {
            rec.last_activity_ms = Some(now_ms);
            if let Some(d) = rec.duration_secs {
                let advanced = clock + d * 1000;
                rec.expires_ms = Some(rec.expires_ms.map_or(advanced, |e| e.max(advanced)));
            }
        }
        Action::Extend => {
            if !old.extendable {
                return Err(Refusal::NotExtendable);
            }
            let secs = extend_secs
                .or(old.duration_secs)
                .ok_or(Refusal::NoDuration)?;
            rec.expires_ms = Some(rec.expires_ms.unwrap_or(clock) + secs * 1000);
        }
        Action::Evict | Action::Expire | Action::Delete => rec.paused_ms = None,
    }
    if next != old.state {
        rec.state = next;
        rec.state_changed_ms = now_ms;
    }
    Ok(rec)
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

    /// The states [`is_live`](Self::is_live) holds for: those with a route.
    pub const LIVE: [SessionState; 4] = [
        SessionState::Pending,
        SessionState::Running,
        SessionState::Paused,
        SessionState::Evicted,
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

    /// A running session with an hour's duration, activated at 1000 s.
    fn record(state: S) -> SessionRecord {
        let t = 1_000_000;
        SessionRecord {
            activated_ms: (state != S::Pending).then_some(t),
            expires_ms: (state != S::Pending).then_some(t + 3_600_000),
            paused_ms: (state == S::Paused).then_some(t + 60_000),
            duration_secs: Some(3600),
            ..SessionRecord::for_test("lab", state, t)
        }
    }

    /// What each action does to the times, from a given record, at a given
    /// moment: `(activated, expires, last_activity, paused, state_changed)`.
    #[test]
    fn actions_move_the_clock_as_designed() {
        type Times = (Option<u64>, Option<u64>, Option<u64>, Option<u64>, u64);
        let t = 1_000_000;
        let now = t + 600_000;
        let hour = 3_600_000;
        type Case = (&'static str, SessionRecord, Action, Option<u64>, S, Times);
        let cases: Vec<Case> = vec![
            (
                "activate starts the expiry clock of a pending session",
                record(S::Pending),
                A::Activate,
                None,
                S::Running,
                (Some(now), Some(now + hour), Some(now), None, now),
            ),
            (
                "activate keeps the expiry of an evicted session",
                record(S::Evicted),
                A::Activate,
                None,
                S::Running,
                (Some(t), Some(t + hour), Some(now), None, now),
            ),
            (
                "pause stops the clock",
                record(S::Running),
                A::Pause,
                None,
                S::Paused,
                (Some(t), Some(t + hour), None, Some(now), now),
            ),
            (
                "resume moves expires on by the pause",
                record(S::Paused),
                A::Resume,
                None,
                S::Running,
                (Some(t), Some(t + hour + 540_000), None, None, now),
            ),
            (
                "keepalive gives a full duration from now",
                record(S::Running),
                A::Keepalive,
                None,
                S::Running,
                (Some(t), Some(now + hour), Some(now), None, t),
            ),
            (
                "keepalive while paused counts from the pause",
                record(S::Paused),
                A::Keepalive,
                None,
                S::Paused,
                (
                    Some(t),
                    Some(t + 60_000 + hour),
                    Some(now),
                    Some(t + 60_000),
                    t,
                ),
            ),
            (
                "extend adds the duration by default",
                record(S::Running),
                A::Extend,
                None,
                S::Running,
                (Some(t), Some(t + 2 * hour), None, None, t),
            ),
            (
                "extend adds the seconds asked for",
                record(S::Running),
                A::Extend,
                Some(60),
                S::Running,
                (Some(t), Some(t + hour + 60_000), None, None, t),
            ),
            (
                "evict drops nothing but the state",
                record(S::Running),
                A::Evict,
                None,
                S::Evicted,
                (Some(t), Some(t + hour), None, None, now),
            ),
            (
                "expire drops a pause",
                record(S::Paused),
                A::Expire,
                None,
                S::Expired,
                (Some(t), Some(t + hour), None, None, now),
            ),
            (
                "delete drops a pause",
                record(S::Paused),
                A::Delete,
                None,
                S::Deleted,
                (Some(t), Some(t + hour), None, None, now),
            ),
        ];
        for (what, old, action, secs, state, want) in cases {
            let rec = transition(&old, action, secs, now).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(rec.state, state, "{what}");
            let got = (
                rec.activated_ms,
                rec.expires_ms,
                rec.last_activity_ms,
                rec.paused_ms,
                rec.state_changed_ms,
            );
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn refusals_name_why() {
        let now = 2_000_000;
        let mut fixed = record(S::Running);
        fixed.extendable = false;
        let mut endless = record(S::Running);
        endless.duration_secs = None;
        let cases: Vec<(SessionRecord, Action, Option<u64>, Refusal)> = vec![
            (
                record(S::Paused),
                A::Pause,
                None,
                Refusal::Transition(TransitionError {
                    from: S::Paused,
                    action: A::Pause,
                }),
            ),
            (fixed, A::Extend, Some(60), Refusal::NotExtendable),
            (endless.clone(), A::Extend, None, Refusal::NoDuration),
        ];
        for (old, action, secs, want) in cases {
            assert_eq!(transition(&old, action, secs, now), Err(want));
        }
        // Without a duration, keepalive still counts as activity.
        let rec = transition(&endless, A::Keepalive, None, now).unwrap();
        assert_eq!(
            (rec.expires_ms, rec.last_activity_ms),
            (endless.expires_ms, Some(now))
        );
    }

    #[test]
    fn live_states() {
        let live: Vec<_> = S::ALL.into_iter().filter(|s| s.is_live()).collect();
        assert_eq!(live, vec![S::Pending, S::Running, S::Paused, S::Evicted]);
        assert_eq!(live, S::LIVE.to_vec());
    }
}
