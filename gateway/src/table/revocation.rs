//! How a change to a route reaches what the route let in before it: the
//! answers still with their upstream, the bodies still streaming, the
//! tunnels still open.
//!
//! The control plane changes the table first, then calls
//! [`RouteState::revoke`](super::RouteState::revoke) with the route as the
//! table now holds it. A revocation records what the route admits now
//! ([`Admission`]) and the time of the revocation on a process-wide clock.
//!
//! A request reads that clock before it loads the table: one atomic load,
//! its `since`. Everything it goes on to hold — its response head, its body,
//! its tunnel ([`Admitted`]) — compares the route's last revocation with
//! `since` (one atomic load) and looks at the [`Admission`] only when the
//! route was revoked since. A revocation therefore reaches every request
//! that loaded the table before the change, whenever its upstream answers:
//! there is no window between the table load and a registration.
//!
//! A body waiting for its upstream is not polled, so it could not notice a
//! revocation by itself. It puts its waker among the waiters while it
//! waits, and a revocation wakes the waiters of its route. The waiters are
//! sharded by thread and touched only by bodies that wait: no lock shared by
//! the requests of a route, as the route's own registry was, and none at
//! all for a response that is there when asked.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use super::{Route, RouteSpec, RouteState, RouteTarget};
use crate::access::AccessList;

/// The revocation clock: one tick per revocation, in the whole process.
/// Only compared with itself, so every gateway in a process may share it.
static CLOCK: AtomicU64 = AtomicU64::new(0);

/// The clock now: a request's `since`, read before it loads the table.
/// Sequentially consistent, with the tick, so that a request that loaded a
/// table older than a change reads an older time than its revocation.
pub(crate) fn now() -> u64 {
    CLOCK.load(Ordering::SeqCst)
}

/// The time of a new revocation.
pub(super) fn tick() -> u64 {
    CLOCK.fetch_add(1, Ordering::SeqCst) + 1
}

/// What a route admits, as its last revocation left it.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Removed from the table.
    Gone,
    Paused,
    /// Waiting for an access link (pending, evicted).
    Inactive,
    Open {
        target: RouteTarget,
        public: bool,
        access: Option<Arc<AccessList>>,
    },
}

/// Why something a route let in may not go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Gone,
    Paused,
    Inactive,
    /// The route sends its traffic elsewhere now.
    Retargeted,
    /// The route is private now, and this came in without a user.
    SignIn,
    /// The route no longer lets this user in.
    Forbidden(Arc<str>),
}

impl Admission {
    /// What `route` (as the table holds it now; `None`: removed) admits.
    pub(crate) fn of(route: Option<&RouteSpec>) -> Admission {
        match route {
            None => Admission::Gone,
            Some(r) if r.inactive => Admission::Inactive,
            Some(r) if r.paused => Admission::Paused,
            Some(r) => Admission::Open {
                target: r.target.clone(),
                public: r.public,
                access: r.access.clone(),
            },
        }
    }

    /// Whether what was let in to `target` for `user` may go on. `live`:
    /// a tunnel or a streaming response (no length, or a long one), which a
    /// new target ends too; a short response in flight finishes from the
    /// old one, so that moving a session to an equivalent target under load
    /// fails no request.
    pub(crate) fn admits(
        &self,
        target: &RouteTarget,
        user: Option<&Arc<str>>,
        live: bool,
    ) -> Result<(), Refusal> {
        let (now, public, access) = match self {
            Admission::Gone => return Err(Refusal::Gone),
            Admission::Paused => return Err(Refusal::Paused),
            Admission::Inactive => return Err(Refusal::Inactive),
            Admission::Open {
                target,
                public,
                access,
            } => (target, *public, access),
        };
        if live && now != target {
            return Err(Refusal::Retargeted);
        }
        if public {
            return Ok(());
        }
        match (user, access) {
            (Some(u), Some(list)) if list.allows(u) => Ok(()),
            (Some(u), _) => Err(Refusal::Forbidden(Arc::clone(u))),
            // Let in while the route was public: nobody knows who it was.
            (None, _) => Err(Refusal::SignIn),
        }
    }
}

/// A request as its route let it in: the route (the version it matched),
/// the user, and the revocation clock before the table was loaded. Its
/// response head, body and tunnel check it against later revocations.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) route: Arc<Route>,
    pub(crate) user: Option<Arc<str>>,
    since: u64,
}

impl Admitted {
    pub(crate) fn new(route: Arc<Route>, user: Option<Arc<str>>, since: u64) -> Admitted {
        Admitted { route, user, since }
    }

    /// `Ok` while no revocation of the route since it was let in ends it:
    /// one atomic load, and the route's admission looked at only when it
    /// was revoked since. Still admitted, it counts from that revocation.
    pub(crate) fn check(&mut self, live: bool) -> Result<(), Refusal> {
        let at = self.route.state.revoked_at();
        if at <= self.since {
            return Ok(());
        }
        self.route
            .state
            .admits(&self.route.target, self.user.as_ref(), live)?;
        self.since = at;
        Ok(())
    }
}

/// Shards of the waiters; a body takes its thread's.
const SHARDS: usize = 16;

/// Bodies waiting for their upstream, as (route state by address, waker).
/// The address is a key only: a body holds its route's state for as long
/// as it is registered, so no other state can have that address meanwhile.
struct Waiters {
    slots: Vec<Option<(usize, Waker)>>,
    free: Vec<usize>,
}

static WAITERS: [Mutex<Waiters>; SHARDS] = [const {
    Mutex::new(Waiters {
        slots: Vec::new(),
        free: Vec::new(),
    })
}; SHARDS];

fn lock(shard: usize) -> MutexGuard<'static, Waiters> {
    // Every critical section is one store or one pass over the slots, so a
    // poisoned lock leaves nothing half-done.
    WAITERS[shard].lock().unwrap_or_else(|e| e.into_inner())
}

/// This thread's shard: bodies polled on one thread share one, so their
/// locks are seldom contended.
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

fn key(state: &RouteState) -> usize {
    std::ptr::from_ref(state) as usize
}

/// A body's place among the waiters, from the first time it waits for its
/// upstream until it is dropped.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    /// Shard and slot.
    at: Option<(usize, usize)>,
    /// The waker registered there, to see without a lock whether the next
    /// one is the same.
    waker: Option<Waker>,
}

impl Waiting {
    /// Makes sure that a revocation of `state` wakes `waker`. Returns
    /// `true` when that took a registration: the caller then checks its
    /// admission again, as a revocation that looked at the waiters just
    /// before has already moved the route's clock.
    pub(crate) fn register(&mut self, state: &RouteState, waker: &Waker) -> bool {
        if self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return false;
        }
        let entry = Some((key(state), waker.clone()));
        match self.at {
            Some((shard, slot)) => lock(shard).slots[slot] = entry,
            None => {
                let shard = thread_shard();
                let mut waiters = lock(shard);
                let slot = match waiters.free.pop() {
                    Some(slot) => {
                        waiters.slots[slot] = entry;
                        slot
                    }
                    None => {
                        waiters.slots.push(entry);
                        waiters.slots.len() - 1
                    }
                };
                self.at = Some((shard, slot));
            }
        }
        self.waker = Some(waker.clone());
        true
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some((shard, slot)) = self.at {
            let mut waiters = lock(shard);
            waiters.slots[slot] = None;
            waiters.free.push(slot);
        }
    }
}

/// Wakes every body waiting on a route whose state is `state`. Returns how
/// many.
pub(super) fn wake(state: &RouteState) -> usize {
    let key = key(state);
    let mut woken = 0;
    for shard in 0..SHARDS {
        for (k, waker) in lock(shard).slots.iter().flatten() {
            if *k == key {
                waker.wake_by_ref();
                woken += 1;
            }
        }
    }
    woken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Members;
    use crate::table::Upstream;

    fn target(port: u16) -> RouteTarget {
        RouteTarget::Upstream(Upstream::parse(&format!("http://127.0.0.1:{port}")).unwrap())
    }

    #[test]
    fn admission_refuses_what_the_route_no_longer_lets_in() {
        let list = Arc::new(AccessList {
            session: "nb".into(),
            owner: "ann".into(),
            groups: vec![Arc::new(Members::new(vec!["bob".into()]))],
        });
        let open = |public| Admission::Open {
            target: target(1),
            public,
            access: Some(Arc::clone(&list)),
        };
        // Let in to the target on `port` as `user`, a tunnel or stream if `live`.
        let admits = |a: &Admission, port, user: Option<&str>, live| {
            a.admits(&target(port), user.map(Arc::from).as_ref(), live)
        };
        use Refusal::*;
        assert_eq!(admits(&Admission::Gone, 1, Some("ann"), false), Err(Gone));
        assert_eq!(admits(&Admission::Paused, 1, None, false), Err(Paused));
        assert_eq!(
            admits(&Admission::Inactive, 1, Some("ann"), true),
            Err(Inactive)
        );
        assert_eq!(
            admits(&open(false), 1, Some("ann"), true),
            Ok(()),
            "the owner"
        );
        assert_eq!(
            admits(&open(false), 1, Some("bob"), true),
            Ok(()),
            "a member"
        );
        assert_eq!(
            admits(&open(false), 1, Some("eve"), false),
            Err(Forbidden("eve".into()))
        );
        assert_eq!(
            admits(&open(false), 1, None, false),
            Err(SignIn),
            "let in while public"
        );
        assert_eq!(admits(&open(true), 1, None, true), Ok(()));
        assert_eq!(
            admits(&open(true), 2, None, true),
            Err(Retargeted),
            "a tunnel to the old target"
        );
        assert_eq!(
            admits(&open(true), 2, None, false),
            Ok(()),
            "a short answer from the old target"
        );
    }

    #[test]
    fn admitted_looks_only_after_a_revocation_and_counts_from_it() {
        let route = crate::table::RouteTable::build(
            &Default::default(),
            vec![RouteSpec::new("nb", target(1)).label("nb").private(None)],
            None,
            1,
        )
        .unwrap()
        .route("nb")
        .cloned()
        .unwrap();
        let state = Arc::clone(&route.state);
        let mut admitted = Admitted::new(Arc::clone(&route), Some("ann".into()), now());
        assert_eq!(admitted.check(true), Ok(()), "nothing revoked yet");
        // A revocation by a route that is now public: still in, from now on.
        state.revoke(Some(&RouteSpec::new("nb", target(1)).label("nb")));
        assert_eq!(admitted.check(true), Ok(()));
        assert_eq!(admitted.since, state.revoked_at());
        state.revoke(Some(&route.spec));
        assert_eq!(
            admitted.check(false),
            Err(Refusal::Forbidden("ann".into())),
            "a private route with no access list lets nobody in"
        );
    }

    #[test]
    fn a_revocation_wakes_the_bodies_waiting_on_its_route_only() {
        use std::sync::atomic::AtomicBool;
        use std::task::Wake;

        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let (a, b) = (RouteState::default(), RouteState::default());
        let (fa, fb) = (
            Arc::new(Flag(AtomicBool::new(false))),
            Arc::new(Flag(AtomicBool::new(false))),
        );
        let (wa, wb) = (Waker::from(Arc::clone(&fa)), Waker::from(Arc::clone(&fb)));
        let (mut on_a, mut on_b) = (Waiting::default(), Waiting::default());
        assert!(on_a.register(&a, &wa));
        assert!(
            !on_a.register(&a, &wa),
            "the same waker again takes no lock"
        );
        assert!(on_b.register(&b, &wb));
        assert_eq!(wake(&a), 1);
        assert!(fa.0.load(Ordering::SeqCst) && !fb.0.load(Ordering::SeqCst));
        drop(on_a);
        assert_eq!(wake(&a), 0, "a dropped body is no longer woken");
        drop(on_b);
    }
}
