//! A route's runtime state, which outlives table versions: when it was
//! last used, its revocations (what it admits now, and when that changed:
//! see `revocation`), and its live upgraded connections, so that revoking
//! access or removing the route can close them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::revocation::{self, Admission, Refusal};
use super::{RouteSpec, RouteTarget};
use crate::clock::unix_millis;

/// Runtime state of a route that outlives table versions.
///
/// Every route has one, in every table that holds the route (a million
/// static routes, a million of these), and nearly all are never revoked and
/// never carry a WebSocket: what only those need sits behind one pointer
/// that stays `None` until then, which keeps this at 48 bytes.
#[derive(Debug, Default)]
pub struct RouteState {
    /// Unix milliseconds of the last request or upgraded-connection traffic; 0 = never.
    last_activity_ms: AtomicU64,
    /// The revocation clock's time of the last revocation; 0 = never. Read
    /// by every response head and body poll, written only by revocations.
    revoked_at: AtomicU64,
    /// Set once the route's app was logged for setting a cookie it may not:
    /// an app that does it does it on every response, and one line says it.
    cookie_warned: AtomicBool,
    /// What the route admits since its last revocation, and its upgraded
    /// connections. A `std` mutex: every critical section is one insert,
    /// remove or pass, never across `.await`.
    rare: Mutex<Rare>,
}

/// The parts of a [`RouteState`] that only revoked routes and routes with
/// upgraded connections use.
#[derive(Debug, Default)]
struct Rare {
    /// What the route admits, as of `revoked_at`. Read only by what was let
    /// in before a revocation; `None` until the first.
    admission: Option<Box<Admission>>,
    /// Upgraded connections, so that revocations can close them; `None`
    /// while there are none.
    live: Option<Box<LiveConnections>>,
}

/// The upgraded connections (WebSockets) open on a route.
#[derive(Debug, Default)]
struct LiveConnections {
    /// The id the next registered connection gets.
    next_id: u64,
    entries: HashMap<u64, LiveEntry>,
}

/// One live connection, and what it was let in as.
#[derive(Debug)]
struct LiveEntry {
    /// The user a private route let in.
    user: Option<Arc<str>>,
    /// Where the route sent it.
    target: RouteTarget,
    /// Set to `true` to close it.
    close: watch::Sender<bool>,
}

/// Granularity of the activity clock. Writing the shared atomic at most once per
/// interval keeps the route's cache line from bouncing between cores under load.
const ACTIVITY_GRANULARITY_MS: u64 = 1000;

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

    /// Merges activity a gateway reported: the later of the two times wins
    /// (the control plane's copy of the route, fed by every gateway).
    pub fn observe_activity(&self, ms: u64) {
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
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
        self.lock_rare()
            .live
            .as_ref()
            .map_or(0, |l| l.entries.len())
    }

    /// The route changed in a way that may end some of what it let in
    /// before: `now` is the route as the table holds it now (`None`: it was
    /// removed). Call it after the table shows the change. Everything let
    /// in before that `now` would not let in ends: an answer still with
    /// its upstream is not passed on, a body is cut at its next poll (one
    /// waiting for its upstream is woken for it), and an upgraded
    /// connection is closed. Returns how many upgraded connections it
    /// closed.
    pub fn revoke(&self, now: Option<&RouteSpec>) -> usize {
        let closed = {
            // The time is taken under the lock, so that concurrent
            // revocations store their admissions and times in one order.
            let mut rare = self.lock_rare();
            let at = revocation::tick();
            self.revoked_at.store(at, Ordering::SeqCst);
            let Rare { admission, live } = &mut *rare;
            let admission = admission.insert(Box::new(Admission::of(now)));
            let mut n = 0;
            for entry in live.iter().flat_map(|l| l.entries.values()) {
                if admission
                    .admits(&entry.target, entry.user.as_ref(), true)
                    .is_err()
                {
                    let _ = entry.close.send(true);
                    n += 1;
                }
            }
            n
        };
        revocation::wake(self);
        closed
    }

    /// Closes everything the route let in, as if it had been removed.
    /// Returns how many upgraded connections it closed.
    pub fn close_live(&self) -> usize {
        self.revoke(None)
    }

    /// The revocation clock's time of the last revocation (0: never).
    pub(crate) fn revoked_at(&self) -> u64 {
        self.revoked_at.load(Ordering::Acquire)
    }

    /// Whether the last revocation lets go on what was let in to `target`
    /// for `user` ([`Admission::admits`]); anything goes before the first.
    pub(crate) fn admits(
        &self,
        target: &RouteTarget,
        user: Option<&Arc<str>>,
        live: bool,
    ) -> Result<(), Refusal> {
        match &self.lock_rare().admission {
            Some(a) => a.admits(target, user, live),
            None => Ok(()),
        }
    }

    /// Registers a live upgraded connection to `target`; the guard
    /// unregisters it when dropped, and the receiver turns `true` when a
    /// revocation closes it. The caller checks its admission after this, as
    /// a revocation that walked the connections just before has already
    /// moved the route's clock.
    pub(crate) fn register_live(
        self: &Arc<Self>,
        target: RouteTarget,
        user: Option<Arc<str>>,
    ) -> (LiveGuard, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let mut rare = self.lock_rare();
        let live = rare.live.get_or_insert_with(Box::default);
        let id = live.next_id;
        live.next_id += 1;
        live.entries.insert(
            id,
            LiveEntry {
                user,
                target,
                close: tx,
            },
        );
        drop(rare);
        (
            LiveGuard {
                state: Arc::clone(self),
                id,
            },
            rx,
        )
    }

    fn lock_rare(&self) -> MutexGuard<'_, Rare> {
        // A panic while holding this lock cannot leave it inconsistent (every
        // critical section is a single insert/remove/iterate, or an
        // admission stored whole), so a poisoned lock is still safe to use.
        self.rare.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut rare = self.state.lock_rare();
        if let Some(live) = &mut rare.live {
            live.entries.remove(&self.id);
            if live.entries.is_empty() {
                // Ids need only be unique among the live; the memory goes.
                rare.live = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::AccessList;
    use crate::table::Upstream;

    /// Every route of every table has one: what it costs per route is
    /// part of the gateway's memory per route (`bench routes`).
    #[test]
    fn route_state_stays_small_until_revoked_or_upgraded() {
        assert!(
            std::mem::size_of::<RouteState>() <= 48,
            "RouteState is {} bytes",
            std::mem::size_of::<RouteState>()
        );
        let state = RouteState::default();
        assert!(state.lock_rare().admission.is_none() && state.lock_rare().live.is_none());
    }

    #[test]
    fn live_connections_free_their_memory_when_the_last_one_ends() {
        let target = RouteTarget::Upstream(Upstream::parse("http://127.0.0.1:1").unwrap());
        let state = Arc::new(RouteState::default());
        let (g1, _rx1) = state.register_live(target.clone(), None);
        let (g2, _rx2) = state.register_live(target, None);
        drop(g1);
        assert!(state.lock_rare().live.is_some());
        assert_eq!(state.upgraded_count(), 1);
        drop(g2);
        assert!(state.lock_rare().live.is_none());
        assert_eq!(state.upgraded_count(), 0);
    }

    #[test]
    fn revoke_closes_only_the_tunnels_the_route_no_longer_lets_in() {
        let target = RouteTarget::Upstream(Upstream::parse("http://127.0.0.1:1").unwrap());
        let only_alice = RouteSpec::new("nb", target.clone()).private(Some(Arc::new(AccessList {
            session: "nb".into(),
            owner: "alice".into(),
            groups: vec![],
        })));
        let state = Arc::new(RouteState::default());
        let (g1, rx1) = state.register_live(target.clone(), Some("alice".into()));
        let (g2, mut rx2) = state.register_live(target.clone(), Some("bob".into()));
        assert_eq!(state.upgraded_count(), 2);
        assert_eq!(state.revoke(Some(&only_alice)), 1);
        assert!(*rx2.borrow_and_update());
        assert!(!*rx1.borrow());
        drop(g2);
        assert_eq!(state.upgraded_count(), 1);
        assert_eq!(state.close_live(), 1);
        assert!(*rx1.borrow());
        drop(g1);
        assert_eq!(state.upgraded_count(), 0);
    }
}
