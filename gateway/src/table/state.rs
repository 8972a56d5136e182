//! A route's runtime state, which outlives table versions: when it was
//! last used, and the connections still open on it, so that revoking access
//! or removing the route can close them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::clock::unix_millis;

/// Runtime state of a route that outlives table versions.
#[derive(Debug)]
pub struct RouteState {
    /// Unix milliseconds of the last request or upgraded-connection traffic; 0 = never.
    last_activity_ms: AtomicU64,
    /// Set once the route's app was logged for setting a cookie it may not:
    /// an app that does it does it on every response, and one line says it.
    cookie_warned: AtomicBool,
    /// Upgraded connections and streaming responses, so they can be closed
    /// on revocation. Touched only when one of them starts or ends, never
    /// for a response that finishes on its own. A `std` mutex: every
    /// critical section is one insert, remove or pass, never across `.await`.
    live: Mutex<LiveConnections>,
}

/// The connections open on a route that do not end on their own: upgraded
/// connections (WebSockets) and streaming responses.
#[derive(Debug, Default)]
struct LiveConnections {
    /// The id the next registered connection gets.
    next_id: u64,
    entries: HashMap<u64, LiveEntry>,
}

/// One live connection.
#[derive(Debug)]
struct LiveEntry {
    kind: LiveKind,
    /// The user a private route let in, for per-user revocation.
    user: Option<Arc<str>>,
    /// Set to `true` to close it.
    close: watch::Sender<bool>,
}

/// What a live connection is, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LiveKind {
    Upgraded,
    Stream,
}

/// Granularity of the activity clock. Writing the shared atomic at most once per
/// interval keeps the route's cache line from bouncing between cores under load.
const ACTIVITY_GRANULARITY_MS: u64 = 1000;

impl Default for RouteState {
    fn default() -> Self {
        RouteState {
            last_activity_ms: AtomicU64::new(0),
            cookie_warned: AtomicBool::new(false),
            live: Mutex::new(LiveConnections::default()),
        }
    }
}

impl RouteState {
    /// Records activity now.
    pub fn touch(&self) {
        self.touch_at(unix_millis());
    }

    pub(crate) fn touch_at(&self, now_ms: u64) {
        let last = self.last_activity_ms.load(Ordering::Relaxed);
        if now_ms >= last + ACTIVITY_GRANULARITY_MS || now_ms < last {
            self.last_activity_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// True the first time it is asked, for the log line about the route's
    /// app setting a cookie it may not; false ever after. Read before it is
    /// written, so that the shared line is written once, not per response.
    pub(crate) fn first_cookie_offence(&self) -> bool {
        !self.cookie_warned.load(Ordering::Relaxed)
            && !self.cookie_warned.swap(true, Ordering::Relaxed)
    }

    /// Unix milliseconds of the last activity (to within a second), or `None` if never.
    pub fn last_activity_ms(&self) -> Option<u64> {
        match self.last_activity_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }

    /// Number of live upgraded connections (WebSockets and other `Upgrade`s).
    pub fn upgraded_count(&self) -> usize {
        self.count_live(LiveKind::Upgraded)
    }

    /// Number of streaming responses in flight (no length, or a long one).
    pub fn streaming_count(&self) -> usize {
        self.count_live(LiveKind::Stream)
    }

    fn count_live(&self, kind: LiveKind) -> usize {
        self.lock_live()
            .entries
            .values()
            .filter(|e| e.kind == kind)
            .count()
    }

    /// Closes every live upgraded connection and streaming response on this
    /// route. Returns how many.
    pub fn close_live(&self) -> usize {
        self.close_live_where(|_| true)
    }

    /// Closes the live upgraded connections and streaming responses opened
    /// by `user`. Returns how many.
    pub fn close_live_for_user(&self, user: &str) -> usize {
        self.close_live_where(|u| u.is_some_and(|u| &**u == user))
    }

    fn close_live_where(&self, pred: impl Fn(Option<&Arc<str>>) -> bool) -> usize {
        let live = self.lock_live();
        let mut n = 0;
        for entry in live.entries.values() {
            if pred(entry.user.as_ref()) {
                let _ = entry.close.send(true);
                n += 1;
            }
        }
        n
    }

    /// Registers a live connection; the guard unregisters it when dropped,
    /// and the receiver turns `true` when the route closes it.
    pub(crate) fn register_live(
        self: &Arc<Self>,
        kind: LiveKind,
        user: Option<Arc<str>>,
    ) -> (LiveGuard, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let mut live = self.lock_live();
        let id = live.next_id;
        live.next_id += 1;
        live.entries.insert(
            id,
            LiveEntry {
                kind,
                user,
                close: tx,
            },
        );
        drop(live);
        (
            LiveGuard {
                state: Arc::clone(self),
                id,
            },
            rx,
        )
    }

    fn lock_live(&self) -> MutexGuard<'_, LiveConnections> {
        // A panic while holding this lock cannot leave the entries inconsistent
        // (every critical section is a single insert/remove/iterate), so a
        // poisoned lock is still safe to use.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a live connection from its route when it ends.
#[derive(Debug)]
pub(crate) struct LiveGuard {
    state: Arc<RouteState>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.state.lock_live().entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_live_for_user_closes_only_theirs() {
        let state = Arc::new(RouteState::default());
        let (g1, mut rx1) = state.register_live(LiveKind::Upgraded, Some("alice".into()));
        let (g2, rx2) = state.register_live(LiveKind::Upgraded, Some("bob".into()));
        assert_eq!(state.upgraded_count(), 2);
        assert_eq!(state.close_live_for_user("alice"), 1);
        assert!(*rx1.borrow_and_update());
        assert!(!*rx2.borrow());
        drop(g1);
        assert_eq!(state.upgraded_count(), 1);
        assert_eq!(state.close_live(), 1);
        assert!(*rx2.borrow());
        drop(g2);
        assert_eq!(state.upgraded_count(), 0);
    }
}
