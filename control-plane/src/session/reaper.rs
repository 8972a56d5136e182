//! The lifecycle reaper: the rules that decide what is due, as pure
//! functions of a record, the clock and the settings, and the background
//! task that runs a pass every `sessions.reaper_interval_secs`.
//!
//! A pass itself (`ControlPlane::reap`) reads the control plane's
//! [`Clock`](crate::clock::Clock), so tests run passes directly on a manual
//! clock, and the rules below are tested here with tables of cases.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::lifecycle::{Action, LifecycleSettings, SessionState};
use super::model::SessionRecord;
use crate::error::ControlError;

/// Why the reaper acts on a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Pending, and not activated by its deadline: deleted.
    ActivationDeadline,
    /// Running past `expires`: expired.
    Expired,
    /// Running without activity for its idle timeout: expired.
    Idle,
    /// Evicted and unused for the evicted expiry: expired.
    EvictedUnused,
}

impl Reason {
    /// What the reaper does for this reason.
    pub fn action(self) -> Action {
        match self {
            Reason::ActivationDeadline => Action::Delete,
            Reason::Expired | Reason::Idle | Reason::EvictedUnused => Action::Expire,
        }
    }

    /// The reason as the log line says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ActivationDeadline => "activation deadline passed",
            Reason::Expired => "expires passed",
            Reason::Idle => "idle timeout",
            Reason::EvictedUnused => "evicted and unused",
        }
    }
}

/// Whether `s` is due at `now_ms`, and why. A pending session's deadline is
/// its own `activate_by` when it has one (a workshop request's timeout),
/// else its creation plus the activation deadline. Idle time counts from
/// the latest of its last activity, its activation and its last change of
/// state, so a session resumed or re-activated gets a full idle timeout.
pub fn verdict(s: &SessionRecord, now_ms: u64, settings: &LifecycleSettings) -> Option<Reason> {
    let ago = |d: Duration| now_ms.saturating_sub(d.as_millis() as u64);
    match s.state {
        SessionState::Pending => {
            let due = match s.activate_by_ms {
                Some(by) => by <= now_ms,
                None => s.created_ms <= ago(settings.activation_deadline),
            };
            due.then_some(Reason::ActivationDeadline)
        }
        SessionState::Running if s.expires_ms.is_some_and(|e| e <= now_ms) => Some(Reason::Expired),
        SessionState::Running => {
            let idle_since = s
                .last_activity_ms
                .unwrap_or(0)
                .max(s.state_changed_ms)
                .max(s.activated_ms.unwrap_or(0));
            let timeout = s.idle_timeout_secs?;
            (now_ms.saturating_sub(idle_since) >= timeout * 1000).then_some(Reason::Idle)
        }
        SessionState::Evicted => {
            let since = s.last_activity_ms.unwrap_or(0).max(s.state_changed_ms);
            (since <= ago(settings.evicted_expiry)).then_some(Reason::EvictedUnused)
        }
        SessionState::Paused | SessionState::Expired | SessionState::Deleted => None,
    }
}

/// The time before which finished records (expired, deleted) are purged.
pub fn retention_cutoff(now_ms: u64, settings: &LifecycleSettings) -> u64 {
    now_ms.saturating_sub(settings.retention.as_millis() as u64)
}

/// What the reaper did in one pass, by action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Pending sessions past their activation deadline.
    pub deleted_unactivated: Vec<String>,
    /// Running sessions past `expires`.
    pub expired: Vec<String>,
    /// Running sessions idle longer than their idle timeout.
    pub expired_idle: Vec<String>,
    /// Evicted sessions without activity for the evicted expiry.
    pub expired_evicted: Vec<String>,
    /// Expired and deleted records past the retention.
    pub purged: Vec<String>,
}

impl ReapReport {
    /// Files `name` under `reason`.
    pub fn record(&mut self, reason: Reason, name: String) {
        match reason {
            Reason::ActivationDeadline => self.deleted_unactivated.push(name),
            Reason::Expired => self.expired.push(name),
            Reason::Idle => self.expired_idle.push(name),
            Reason::EvictedUnused => self.expired_evicted.push(name),
        }
    }

    /// How many sessions the pass acted on.
    pub fn len(&self) -> usize {
        self.deleted_unactivated.len()
            + self.expired.len()
            + self.expired_idle.len()
            + self.expired_evicted.len()
            + self.purged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs `pass` every `interval` until `stop` resolves. A failed pass is
/// logged and tried again at the next interval.
pub fn spawn_reaper<P, F>(
    interval: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
    mut pass: P,
) -> JoinHandle<()>
where
    P: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<ReapReport, ControlError>> + Send,
{
    tokio::spawn(async move {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {
                    // What it changes is the reaper's doing in the sessions' history.
                    let who = crate::audit::Who::new("reaper", "reap");
                    match crate::audit::scope(who, pass()).await {
                        Ok(r) if !r.is_empty() => tracing::debug!(?r, "reaper pass"),
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "reaper pass failed; retrying next interval"),
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const T: u64 = 1_000_000_000;

    fn record(state: SessionState) -> SessionRecord {
        SessionRecord::for_test("s", state, T)
    }

    fn with(state: SessionState, f: impl FnOnce(&mut SessionRecord)) -> SessionRecord {
        let mut r = record(state);
        f(&mut r);
        r
    }

    #[test]
    fn what_is_due_and_why() {
        let settings = LifecycleSettings::default(); // deadline 60 s, evicted 30 days
        let day = 24 * 60 * MIN;
        use SessionState as S;
        let cases: Vec<(&str, SessionRecord, u64, Option<Reason>)> = vec![
            (
                "pending within the deadline",
                record(S::Pending),
                T + MIN - 1,
                None,
            ),
            (
                "pending at the deadline",
                record(S::Pending),
                T + MIN,
                Some(Reason::ActivationDeadline),
            ),
            (
                "pending with its own deadline, not yet",
                with(S::Pending, |r| r.activate_by_ms = Some(T + 10 * MIN)),
                T + 5 * MIN,
                None,
            ),
            (
                "pending past its own deadline",
                with(S::Pending, |r| r.activate_by_ms = Some(T + 10 * MIN)),
                T + 10 * MIN,
                Some(Reason::ActivationDeadline),
            ),
            (
                "running without an expiry",
                record(S::Running),
                T + 365 * day,
                None,
            ),
            (
                "running before expires",
                with(S::Running, |r| r.expires_ms = Some(T + MIN)),
                T + MIN - 1,
                None,
            ),
            (
                "running at expires",
                with(S::Running, |r| r.expires_ms = Some(T + MIN)),
                T + MIN,
                Some(Reason::Expired),
            ),
            (
                "paused past expires: the clock is stopped",
                with(S::Paused, |r| r.expires_ms = Some(T + MIN)),
                T + day,
                None,
            ),
            (
                "running, active within its idle timeout",
                with(S::Running, |r| {
                    r.idle_timeout_secs = Some(600);
                    r.last_activity_ms = Some(T + 5 * MIN);
                }),
                T + 15 * MIN - 1,
                None,
            ),
            (
                "running, idle for its idle timeout",
                with(S::Running, |r| {
                    r.idle_timeout_secs = Some(600);
                    r.last_activity_ms = Some(T + 5 * MIN);
                }),
                T + 15 * MIN,
                Some(Reason::Idle),
            ),
            (
                "idle counts from a later activation",
                with(S::Running, |r| {
                    r.idle_timeout_secs = Some(600);
                    r.activated_ms = Some(T + 20 * MIN);
                }),
                T + 25 * MIN,
                None,
            ),
            (
                "evicted, recently",
                record(S::Evicted),
                T + 30 * day - 1,
                None,
            ),
            (
                "evicted and unused for the evicted expiry",
                record(S::Evicted),
                T + 30 * day,
                Some(Reason::EvictedUnused),
            ),
            (
                "evicted, used since",
                with(S::Evicted, |r| r.last_activity_ms = Some(T + day)),
                T + 30 * day,
                None,
            ),
            (
                "expired records wait for the purge",
                record(S::Expired),
                T + 365 * day,
                None,
            ),
            (
                "deleted records wait for the purge",
                record(S::Deleted),
                T + 365 * day,
                None,
            ),
        ];
        for (what, rec, now, want) in cases {
            assert_eq!(verdict(&rec, now, &settings), want, "{what}");
        }
    }

    #[test]
    fn reasons_act_and_file_as_reported() {
        let mut report = ReapReport::default();
        for (reason, action) in [
            (Reason::ActivationDeadline, Action::Delete),
            (Reason::Expired, Action::Expire),
            (Reason::Idle, Action::Expire),
            (Reason::EvictedUnused, Action::Expire),
        ] {
            assert_eq!(reason.action(), action, "{reason:?}");
            report.record(reason, format!("{reason:?}"));
        }
        assert_eq!(report.deleted_unactivated, ["ActivationDeadline"]);
        assert_eq!(report.expired, ["Expired"]);
        assert_eq!(report.expired_idle, ["Idle"]);
        assert_eq!(report.expired_evicted, ["EvictedUnused"]);
        assert_eq!(report.len(), 4);
        assert_eq!(
            retention_cutoff(T, &LifecycleSettings::default()),
            T - 24 * 60 * MIN
        );
    }
}
