//! A workshop session's schedule as the training portal reports it
//! (`/workshops/session/<name>/schedule/`, `extend/`, `terminate/`, and the
//! session items of the catalog, the environment status and a user's
//! sessions), and the portal's extension rule on top of our `extend`.
//!
//! The rules are the portal's `Session` model's (EP `training-portal/src/
//! project/apps/workshops/models.py`, `time_remaining`,
//! `extension_threshold`, `is_expiring`, `is_extension_permitted`):
//!
//! - `countdown`: whole seconds until `expires`, 0 once past;
//! - `expiring`: `countdown` below the extension threshold,
//!   `max(300, min(duration, 4 h) / 4)` seconds;
//! - `extendable`: the session is running and within that threshold of
//!   its end. The portal adds a `deadline` that extensions may not pass,
//!   which defaults to the duration itself, so that it never extends unless
//!   configured to; sessiongate has no deadline: the session's and its
//!   environment's `extendable` flags say whether it may be extended at all,
//!   and each extension adds the threshold (the portal's
//!   `extension_duration` when no `overtime` is set).
//!
//! A pending session (allocated, not yet activated) shows, as the portal's
//! does, the time of the request as `started` and its activation deadline
//! as `expires`, so that `countdown` is the time left to activate it; it is
//! `WAITING` and never extendable. A reserved session no one holds yet has
//! no times (`started` and `expires` null, no `countdown`).
//!
//! States: the portal's sessions are `STARTING`, `WAITING`, `RUNNING`,
//! `STOPPING` or `STOPPED`. Ours map as `pending` → `WAITING` (a backend
//! of the pool is already up, nothing starts), `running`, `paused` and
//! `evicted` → `RUNNING` (the user holds it and may open it again; the
//! real state is on `/api/v1/sessions`), `expired` and `deleted` →
//! `STOPPED`, which these endpoints answer with 404, as the portal does.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::portal::{self, RESERVE_USER};
use super::Portal;
use crate::control::sessions::transition;
use crate::error::ControlError;
use crate::session::lifecycle::{Action, SessionState};
use crate::session::model::SessionRecord;
use crate::store::{self, StoreError};
use crate::time::rfc3339_millis;
use crate::writes::WriteError;

/// The shortest extension threshold the portal uses.
const MIN_THRESHOLD_MS: u64 = 300_000;
/// Durations longer than this give the same threshold as it.
const THRESHOLD_DURATION_CAP_MS: u64 = 4 * 3_600_000;

/// The portal's extension threshold for a session of `duration_secs`, in
/// milliseconds (the portal computes it in float seconds).
pub fn extension_threshold_ms(duration_secs: Option<u64>) -> u64 {
    let d = duration_secs
        .unwrap_or(0)
        .saturating_mul(1000)
        .min(THRESHOLD_DURATION_CAP_MS);
    (d / 4).max(MIN_THRESHOLD_MS)
}

/// A session's state as the portal names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortalSessionState {
    Starting,
    Waiting,
    Running,
    Stopping,
    Stopped,
}

impl PortalSessionState {
    pub fn of(state: SessionState) -> PortalSessionState {
        match state {
            SessionState::Pending => PortalSessionState::Waiting,
            SessionState::Running | SessionState::Paused | SessionState::Evicted => {
                PortalSessionState::Running
            }
            SessionState::Expired | SessionState::Deleted => PortalSessionState::Stopped,
        }
    }
}

/// What a session's schedule is read with besides the record.
#[derive(Clone, Copy, Debug)]
pub struct ScheduleContext {
    /// When a pending session was last requested (its newest access link).
    pub requested_ms: Option<u64>,
    /// The environment's `extendable` flag now.
    pub environment_extendable: bool,
    /// `sessions.activation_deadline`: a pending session's deadline when it
    /// has none of its own.
    pub activation_deadline_ms: u64,
}

/// A session's schedule at a moment, the portal's way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub status: PortalSessionState,
    pub started_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    /// Whole seconds left; `None` when there is no `expires`.
    pub countdown: Option<u64>,
    pub expiring: bool,
    pub extendable: bool,
    /// What an extension adds, in seconds.
    pub extension_secs: u64,
}

/// `s`'s schedule at `now_ms`.
pub fn schedule(s: &SessionRecord, ctx: &ScheduleContext, now_ms: u64) -> Schedule {
    let status = PortalSessionState::of(s.state);
    let threshold = extension_threshold_ms(s.duration_secs);
    let (started_ms, expires_ms) = if s.owner == RESERVE_USER {
        (None, None)
    } else if s.state == SessionState::Pending {
        let deadline = match s.activate_by_ms {
            Some(by) if by != portal::RESERVED_DEADLINE_MS => by,
            _ => s.created_ms + ctx.activation_deadline_ms,
        };
        (
            Some(ctx.requested_ms.unwrap_or(s.created_ms)),
            Some(deadline),
        )
    } else {
        (s.activated_ms, s.expires_ms)
    };
    // Left before expiry by the session's own clock (stopped while paused).
    let remaining_ms = expires_ms.map(|e| e.saturating_sub(s.clock_ms(now_ms)));
    let countdown = remaining_ms.map(|r| r / 1000);
    let extendable = remaining_ms.is_some_and(|r| r < threshold)
        && s.state.apply(Action::Extend).is_ok()
        && s.extendable
        && ctx.environment_extendable;
    Schedule {
        status,
        started_ms,
        expires_ms,
        countdown,
        // The portal compares its whole-second countdown.
        expiring: countdown.is_some_and(|c| c * 1000 < threshold),
        extendable,
        extension_secs: threshold.div_ceil(1000),
    }
}

fn time(ms: Option<u64>) -> Option<String> {
    ms.map(rfc3339_millis)
}

/// `GET /workshops/session/<name>/schedule/`: the portal's keys in its
/// order; `countdown` and `extendable` only when there is an `expires`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleAnswer {
    pub status: PortalSessionState,
    /// RFC 3339; the request time of a pending session; null for a reserved one.
    pub started: Option<String>,
    /// RFC 3339; the activation deadline of a pending session.
    pub expires: Option<String>,
    /// Within the last `max(300, min(duration, 4 h) / 4)` seconds.
    pub expiring: bool,
    /// Whole seconds until `expires`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown: Option<u64>,
    /// `extend/` would extend it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extendable: Option<bool>,
}

impl From<&Schedule> for ScheduleAnswer {
    fn from(s: &Schedule) -> Self {
        ScheduleAnswer {
            status: s.status,
            started: time(s.started_ms),
            expires: time(s.expires_ms),
            expiring: s.expiring,
            countdown: s.countdown,
            extendable: s.countdown.map(|_| s.extendable),
        }
    }
}

/// `GET /workshops/session/<name>/extend/`: the schedule after the call,
/// and whether it extended the session (a refusal is `extended: false`,
/// not an error, as in the portal).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ExtendAnswer {
    #[serde(flatten)]
    pub schedule: ScheduleAnswer,
    pub extended: bool,
}

/// A session's times in the portal's listings (the catalog's and the
/// environment status' `sessions`, a user's sessions): `expires`,
/// `countdown` and `extendable` only with an expiry.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionTimes {
    /// RFC 3339; a pending session's request time.
    pub started: Option<String>,
    /// A pending session's activation deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extendable: Option<bool>,
}

impl From<&Schedule> for SessionTimes {
    fn from(s: &Schedule) -> Self {
        let a = ScheduleAnswer::from(s);
        SessionTimes {
            started: a.started,
            expires: a.expires,
            countdown: a.countdown,
            extendable: a.extendable,
        }
    }
}

/// `GET /workshops/session/<name>/terminate/`: only these two keys, as in
/// the portal; `expires` is when it was stopped.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TerminateAnswer {
    pub started: Option<String>,
    pub expires: Option<String>,
}

/// Why a session endpoint refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A reserved session no one holds: the portal's 400.
    #[error("session {0:?} is not currently in use (it waits in its environment's reserve)")]
    NotInUse(String),
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl From<StoreError> for ScheduleError {
    fn from(e: StoreError) -> Self {
        ScheduleError::Control(e.into())
    }
}

impl From<WriteError> for ScheduleError {
    fn from(e: WriteError) -> Self {
        ScheduleError::Control(e.into())
    }
}

impl Portal {
    /// The context `s`'s schedule is read in, from `c`.
    async fn schedule_context(
        &self,
        c: &mut crate::store::Conn,
        s: &SessionRecord,
    ) -> Result<ScheduleContext, StoreError> {
        let environment_extendable = match s.environment.as_deref() {
            Some(e) => store::environment_get(c, e)
                .await?
                .is_some_and(|e| e.extendable),
            None => false,
        };
        let requested_ms = if s.state == SessionState::Pending {
            store::newest_access_links(c, Some(&s.name))
                .await?
                .remove(&s.name)
        } else {
            None
        };
        Ok(ScheduleContext {
            requested_ms,
            environment_extendable,
            activation_deadline_ms: self.activation_deadline_ms(),
        })
    }

    pub(super) fn activation_deadline_ms(&self) -> u64 {
        self.control.settings().activation_deadline.as_millis() as u64
    }

    /// A live session of an environment, from `c`; anything else (unknown,
    /// finished, or no environment's) is not the portal's: not found.
    async fn portal_session(
        c: &mut crate::store::Conn,
        name: &str,
    ) -> Result<SessionRecord, ControlError> {
        store::session_get(c, name)
            .await?
            .filter(|s| s.environment.is_some() && s.state.is_live())
            .ok_or_else(|| ControlError::not_found("session", name))
    }

    /// `schedule/`: the session's schedule now.
    pub async fn session_schedule(&self, name: &str) -> Result<Schedule, ControlError> {
        let mut c = self.control.store().conn().await?;
        let s = Self::portal_session(&mut c, name).await?;
        let ctx = self.schedule_context(&mut c, &s).await?;
        Ok(schedule(&s, &ctx, self.control.now_ms()))
    }

    /// `extend/`: extends the session by its threshold if the schedule
    /// says it is extendable now, deciding and writing under the write
    /// lock, so that two calls at once extend it once. Returns the schedule
    /// afterwards and whether it was extended.
    pub async fn extend_session(&self, name: &str) -> Result<(Schedule, bool), ScheduleError> {
        let now = self.control.now_ms();
        let mut tx = self.control.writes().begin().await?;
        let old = Self::portal_session(&mut tx, name).await?;
        if old.owner == RESERVE_USER {
            return Err(ScheduleError::NotInUse(name.to_string()));
        }
        let ctx = self.schedule_context(&mut tx, &old).await?;
        let before = schedule(&old, &ctx, now);
        if !before.extendable {
            return Ok((before, false));
        }
        // Our extend action, with the portal's amount: the same rule the
        // control plane's `extend` applies (state, the session's flag).
        let rec = transition(&old, Action::Extend, Some(before.extension_secs), now)?;
        store::session_update_row(&mut tx, &rec).await?;
        let _lock = tx.commit().await?;
        self.control.publish(Some(&old), Some(&rec)).await?;
        tracing::info!(session = %name, expires = ?rec.expires_ms, "workshop session extended");
        Ok((schedule(&rec, &ctx, now), true))
    }

    /// `terminate/`: expires the session now (its live connections are
    /// closed, it can never be opened again) and refills the reserves.
    /// Returns its `started` and the time it stopped.
    pub async fn terminate_session(&self, name: &str) -> Result<(Option<u64>, u64), ScheduleError> {
        let now = self.control.now_ms();
        let mut tx = self.control.writes().begin().await?;
        let old = Self::portal_session(&mut tx, name).await?;
        if old.owner == RESERVE_USER {
            return Err(ScheduleError::NotInUse(name.to_string()));
        }
        let started = {
            let ctx = self.schedule_context(&mut tx, &old).await?;
            schedule(&old, &ctx, now).started_ms
        };
        let mut rec = transition(&old, Action::Expire, None, now)?;
        // As the portal's `mark_as_stopping`: it expires now.
        let stopped = old.expires_ms.map_or(now, |e| e.min(now));
        rec.expires_ms = Some(stopped);
        store::session_update_row(&mut tx, &rec).await?;
        {
            // Published under the write lock, as every write is; the lock
            // is let go before the refill takes it again.
            let _lock = tx.commit().await?;
            self.control.publish(Some(&old), Some(&rec)).await?;
        }
        tracing::info!(session = %name, "workshop session terminated");
        // The session has ended whatever the refill does; the reaper's next
        // pass refills too.
        if let Err(e) = self.refill_reserves().await {
            tracing::warn!(error = %e, "reserves not refilled after a termination");
        }
        Ok((started, stopped))
    }
}

impl ExtendAnswer {
    pub fn new(s: &Schedule, extended: bool) -> ExtendAnswer {
        ExtendAnswer {
            schedule: s.into(),
            extended,
        }
    }
}

impl TerminateAnswer {
    pub fn new(started_ms: Option<u64>, stopped_ms: u64) -> TerminateAnswer {
        TerminateAnswer {
            started: time(started_ms),
            expires: Some(rfc3339_millis(stopped_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn the_threshold_is_a_quarter_of_the_duration_within_5_min_and_1_hour() {
        for (duration, want_ms) in [
            (None, 300_000),
            (Some(60), 300_000),
            (Some(1200), 300_000),
            (Some(1800), 450_000),
            (Some(1801), 450_250),
            (Some(4 * 3600), 3_600_000),
            (Some(10 * 3600), 3_600_000),
            (Some(u64::MAX), 3_600_000),
        ] {
            assert_eq!(extension_threshold_ms(duration), want_ms, "{duration:?}");
        }
    }

    fn ctx() -> ScheduleContext {
        ScheduleContext {
            requested_ms: None,
            environment_extendable: true,
            activation_deadline_ms: MIN,
        }
    }

    /// A running session of 30 minutes, activated at `t`.
    fn running(t: u64) -> SessionRecord {
        SessionRecord {
            activated_ms: Some(t),
            expires_ms: Some(t + 30 * MIN),
            duration_secs: Some(1800),
            environment: Some("lab-w01".into()),
            ..SessionRecord::for_test("lab-w01-s001", SessionState::Running, t)
        }
    }

    /// Each case: what, the record, the context, seconds after `t`, and
    /// (status, countdown, expiring, extendable).
    #[test]
    fn schedules_follow_the_portals_rules() {
        let t = 1_000_000_000;
        let mut pending = running(t);
        pending.state = SessionState::Pending;
        pending.activated_ms = None;
        pending.expires_ms = None;
        pending.activate_by_ms = Some(t + 90_000);
        let mut reserve = pending.clone();
        reserve.owner = RESERVE_USER.into();
        reserve.activate_by_ms = Some(portal::RESERVED_DEADLINE_MS);
        let mut fixed = running(t);
        fixed.extendable = false;
        let mut paused = running(t);
        paused.state = SessionState::Paused;
        paused.paused_ms = Some(t + 26 * MIN);
        let mut evicted = running(t);
        evicted.state = SessionState::Evicted;
        let env_fixed = ScheduleContext {
            environment_extendable: false,
            ..ctx()
        };
        type Case = (
            &'static str,
            SessionRecord,
            ScheduleContext,
            u64,
            (PortalSessionState, Option<u64>, bool, bool),
        );
        use PortalSessionState::*;
        let cases: Vec<Case> = vec![
            (
                "early in a running session",
                running(t),
                ctx(),
                60,
                (Running, Some(1740), false, false),
            ),
            (
                "one second outside the threshold (450 s of 1800)",
                running(t),
                ctx(),
                1350,
                (Running, Some(450), false, false),
            ),
            (
                "within the threshold: expiring and extendable",
                running(t),
                ctx(),
                1351,
                (Running, Some(449), true, true),
            ),
            (
                "past expires: countdown 0",
                running(t),
                ctx(),
                2000,
                (Running, Some(0), true, true),
            ),
            (
                "a session created not extendable",
                fixed,
                ctx(),
                1700,
                (Running, Some(100), true, false),
            ),
            (
                "an environment made not extendable",
                running(t),
                env_fixed,
                1700,
                (Running, Some(100), true, false),
            ),
            (
                "paused: the clock stopped 4 minutes before the end",
                paused,
                ctx(),
                5000,
                (Running, Some(240), true, true),
            ),
            (
                "evicted: our extend refuses it",
                evicted,
                ctx(),
                1700,
                (Running, Some(100), true, false),
            ),
            (
                "pending: the activation deadline counts down",
                pending,
                ctx(),
                30,
                (Waiting, Some(60), true, false),
            ),
            (
                "reserved: no times",
                reserve,
                ctx(),
                30,
                (Waiting, None, false, false),
            ),
        ];
        for (what, rec, ctx, after, want) in cases {
            let s = schedule(&rec, &ctx, t + after * 1000);
            assert_eq!(
                (s.status, s.countdown, s.expiring, s.extendable),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn a_pending_session_shows_its_request_and_deadline() {
        let t = 1_000_000_000;
        let mut s = running(t);
        s.state = SessionState::Pending;
        s.activated_ms = None;
        s.expires_ms = None;
        // Taken from the reserve at t + 500 s, with a 90 s timeout.
        s.activate_by_ms = Some(t + 590_000);
        let requested = ScheduleContext {
            requested_ms: Some(t + 500_000),
            ..ctx()
        };
        let got = schedule(&s, &requested, t + 510_000);
        assert_eq!(
            (got.started_ms, got.expires_ms, got.countdown),
            (Some(t + 500_000), Some(t + 590_000), Some(80))
        );
        // Without a deadline of its own: its creation plus the configured one.
        s.activate_by_ms = None;
        let got = schedule(&s, &ctx(), t + 10_000);
        assert_eq!(
            (got.started_ms, got.expires_ms, got.countdown),
            (Some(t), Some(t + MIN), Some(50))
        );
    }

    #[test]
    fn answers_carry_countdown_and_extendable_only_with_an_expiry() {
        let s = Schedule {
            status: PortalSessionState::Waiting,
            started_ms: None,
            expires_ms: None,
            countdown: None,
            expiring: false,
            extendable: false,
            extension_secs: 300,
        };
        let v = serde_json::to_value(ScheduleAnswer::from(&s)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "WAITING", "started": null, "expires": null, "expiring": false})
        );
        let v = serde_json::to_value(ExtendAnswer::new(
            &Schedule {
                status: PortalSessionState::Running,
                started_ms: Some(0),
                expires_ms: Some(1_000),
                countdown: Some(1),
                expiring: true,
                extendable: true,
                ..s
            },
            true,
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "RUNNING", "started": "1970-01-01T00:00:00.000Z",
                "expires": "1970-01-01T00:00:01.000Z", "extended": true, "expiring": true,
                "countdown": 1, "extendable": true})
        );
    }
}
