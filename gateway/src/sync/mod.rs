//! What a gateway does with what its control plane sends it
//! (`docs/gateway-protocol.md`): the [`Message`]s, and [`Follower`], which
//! applies them to the table, keys and live connections it serves.
//!
//! The control plane never reaches into a gateway's memory. Every table
//! version it stores becomes a message: a [`Delta`] (what changed since the
//! version before) or a [`Snapshot`] (everything). `serve` hands them to
//! its in-process follower in memory; a remote gateway reads the same
//! messages, encoded by [`wire`], from the route stream. Either way the
//! follower applies them with the same code, and acknowledges the version
//! it then holds.
//!
//! A revocation travels as the route change that calls for it: applying a
//! change to a route closes whatever the route let in that its new spec
//! does not admit (a user who lost access through a group, everyone after
//! a pause or a new target), and removing a route closes everything it let
//! in. So two gateways at one version have closed the same connections.

pub mod activity;
pub mod file;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::access::{KeyHandle, KeyRing};
use crate::table::{FollowError, RouteChange, RouteHandle, RouteSpec, RouteTable, TableSettings};

/// One thing the control plane tells a gateway.
#[derive(Clone, Debug)]
pub enum Message {
    /// Everything: applies on any version.
    Snapshot(Arc<Snapshot>),
    /// What changed from `base` to `version`.
    Delta(Arc<Delta>),
    /// The stream is alive; the control plane's version (stream only).
    Heartbeat { version: u64 },
}

impl Message {
    /// The version a gateway holds after applying it.
    pub fn version(&self) -> u64 {
        match self {
            Message::Snapshot(s) => s.version,
            Message::Delta(d) => d.version,
            Message::Heartbeat { version } => *version,
        }
    }
}

/// A whole table: its version, settings, every route, and the keys.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Which run of the control plane numbered the versions: a control
    /// plane that restarts numbers them afresh, so a version means
    /// something only with its epoch. A gateway resumes with deltas only
    /// within the epoch it holds; across epochs it gets a snapshot.
    pub epoch: u64,
    pub version: u64,
    /// With control-plane replicas on PostgreSQL: the change-log sequence
    /// number up to which every row is in this table (0: none, or SQLite).
    /// Unlike a version it means the same on every replica, so a gateway
    /// that moves to another replica resumes from it ([`Delta::epoch`]).
    pub watermark: u64,
    pub settings: TableSettings,
    pub routes: Vec<RouteSpec>,
    pub keys: Arc<KeyRing>,
}

impl Snapshot {
    /// The snapshot of `table` with `keys`, in `epoch`.
    pub fn of(epoch: u64, table: &RouteTable, keys: Arc<KeyRing>) -> Snapshot {
        let mut routes: Vec<RouteSpec> = table.routes().iter().map(|r| r.spec.clone()).collect();
        routes.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot {
            epoch,
            version: table.version(),
            watermark: 0,
            settings: table.settings().clone(),
            routes,
            keys,
        }
    }
}

/// One table version's changes: applies only on `base`.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    pub base: u64,
    pub version: u64,
    /// The new settings, when they changed.
    pub settings: Option<TableSettings>,
    /// Routes added or replaced.
    pub upserts: Vec<RouteSpec>,
    /// Ids of routes removed.
    pub removals: Vec<Arc<str>>,
    /// The new keys, after a rotation.
    pub keys: Option<Arc<KeyRing>>,
    /// Set on the first message another replica sends a gateway that moved
    /// to it: its epoch, which the gateway holds from then on. That delta is
    /// made for the gateway (its `base` is the version the gateway held in
    /// its previous epoch) from the change log after the gateway's
    /// watermark, instead of a whole snapshot.
    pub epoch: Option<u64>,
    /// The change-log watermark of `version` ([`Snapshot::watermark`]).
    pub watermark: u64,
}

/// What applying a message did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The table version the gateway holds after it: its acknowledgement.
    pub version: u64,
    /// Upgraded connections (WebSockets) it closed.
    pub closed: usize,
}

/// A gateway's side of the protocol: the table its proxies read and the
/// keys they verify cookies with, changed only by [`Follower::apply`].
#[derive(Clone, Debug)]
pub struct Follower {
    routes: RouteHandle,
    keys: KeyHandle,
    /// Set once a table is loaded, from a file or a message: until then the
    /// gateway answers 503 (it would answer 404 for every session).
    ready: Arc<AtomicBool>,
    /// The epoch of the last snapshot applied (0: none).
    epoch: Arc<std::sync::atomic::AtomicU64>,
    /// The change-log watermark of the version held (0: none).
    watermark: Arc<std::sync::atomic::AtomicU64>,
    /// Its table is its leader's own (`serve`'s gateway and control plane
    /// in one process): one copy of every route, not two.
    shared: bool,
}

impl Follower {
    /// A follower with an empty table, not ready, verifying with `keys`
    /// until its first snapshot brings the control plane's.
    pub fn new(keys: KeyRing) -> Self {
        Follower {
            routes: RouteHandle::new(),
            keys: KeyHandle::new(keys),
            ready: Arc::new(AtomicBool::new(false)),
            epoch: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            watermark: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            shared: false,
        }
    }

    /// A follower whose proxies read `routes`, the table its leader (the
    /// control plane in the same process) stores its versions in, instead
    /// of a copy built from the leader's messages. The leader tells it each
    /// version through [`Follower::applied_in_place`]. Not ready until the
    /// first message.
    pub fn sharing(routes: RouteHandle, keys: KeyRing) -> Self {
        Follower {
            routes,
            shared: true,
            ..Follower::new(keys)
        }
    }

    /// Whether it [shares](Follower::sharing) its leader's table.
    pub fn shares_table(&self) -> bool {
        self.shared
    }

    /// The table its proxies read.
    pub fn routes(&self) -> &RouteHandle {
        &self.routes
    }

    /// The keys its proxies verify cookies with.
    pub fn keys(&self) -> &KeyHandle {
        &self.keys
    }

    /// Whether it holds a table (from a file or its control plane).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The flag [`is_ready`](Self::is_ready) reads, for the proxy.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
    }

    /// The epoch of the versions it holds (0: none yet).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The change-log watermark of the version it holds (0: none).
    pub fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// The version it holds (0: none yet).
    pub fn version(&self) -> u64 {
        self.routes.load().version()
    }

    /// Applies `message`, and answers once its effect is visible to every
    /// request that starts after this returns. A delta that does not apply
    /// on the version held is refused, and nothing changes: the caller
    /// resumes from the version it holds.
    ///
    /// A follower that [shares](Follower::sharing) its leader's table does
    /// not change the table (its leader stored the version already): see
    /// [`Follower::applied_in_place`].
    pub fn apply(&self, message: &Message) -> Result<Applied, FollowError> {
        if self.shared {
            let table = self.routes.current();
            return Ok(self.applied_in_place(&table, &table, message));
        }
        let (previous, next) = match message {
            Message::Heartbeat { .. } => {
                let table = self.routes.current();
                (Arc::clone(&table), table)
            }
            Message::Snapshot(s) => {
                self.routes
                    .replace(s.version, &s.settings, s.routes.clone())?
            }
            Message::Delta(d) => {
                let changes = d
                    .upserts
                    .iter()
                    .cloned()
                    .map(RouteChange::Upsert)
                    .chain(d.removals.iter().cloned().map(RouteChange::Remove))
                    .collect();
                self.routes
                    .apply_at(d.base, d.version, d.settings.as_ref(), changes)?
            }
        };
        Ok(self.applied_in_place(&previous, &next, message))
    }

    /// What follows `message` once its table is in place, `previous` the
    /// table before it and `next` the one now served: the keys, epoch and
    /// watermark it brings, and the live connections of changed and removed
    /// routes that the route as it is now no longer admits, closed.
    ///
    /// For a follower that [shares](Follower::sharing) its leader's table,
    /// this is all of applying a message: the leader calls it as it stores
    /// each version (`previous` then the version it replaced).
    pub fn applied_in_place(
        &self,
        previous: &RouteTable,
        next: &RouteTable,
        message: &Message,
    ) -> Applied {
        let same = std::ptr::eq(previous, next);
        let applied = match message {
            Message::Heartbeat { .. } => Applied {
                version: self.version(),
                closed: 0,
            },
            Message::Snapshot(s) => {
                self.keys.store_shared(Arc::clone(&s.keys));
                self.epoch.store(s.epoch, Ordering::Release);
                self.watermark.store(s.watermark, Ordering::Release);
                let mut closed = 0;
                for old in previous.routes().iter().filter(|_| !same) {
                    closed += match next.route(&old.id) {
                        Some(now) if Arc::ptr_eq(&now.state, &old.state) => {
                            now.state.revoke(Some(&now.spec))
                        }
                        _ => old.state.revoke(None),
                    };
                }
                Applied {
                    version: s.version,
                    closed,
                }
            }
            Message::Delta(d) => {
                if let Some(keys) = &d.keys {
                    self.keys.store_shared(Arc::clone(keys));
                }
                if let Some(epoch) = d.epoch {
                    self.epoch.store(epoch, Ordering::Release);
                }
                self.watermark.store(d.watermark, Ordering::Release);
                let mut closed = 0;
                for spec in d.upserts.iter().filter(|_| !same) {
                    if previous.route(&spec.id).is_some() {
                        if let Some(now) = next.route(&spec.id) {
                            closed += now.state.revoke(Some(&now.spec));
                        }
                    }
                }
                for id in d.removals.iter().filter(|_| !same) {
                    if let Some(old) = previous.route(id) {
                        closed += old.state.revoke(None);
                    }
                }
                if closed > 0 {
                    tracing::info!(
                        version = d.version,
                        connections = closed,
                        "closed live connections the change no longer admits"
                    );
                }
                Applied {
                    version: d.version,
                    closed,
                }
            }
        };
        self.ready.store(true, Ordering::Release);
        applied
    }

    /// Serves `snapshot` (read from its table file) at once, before the
    /// control plane is reached.
    pub fn restore(&self, snapshot: &Snapshot) -> Result<Applied, FollowError> {
        self.apply(&Message::Snapshot(Arc::new(snapshot.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::SigningKey;
    use crate::table::{RouteTarget, Upstream};

    fn ring(id: &str) -> KeyRing {
        KeyRing::new(SigningKey::new(id, &[7; 32]).unwrap(), None)
    }

    fn spec(id: &str, port: u16) -> RouteSpec {
        let upstream = Upstream::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        RouteSpec::new(id, RouteTarget::Upstream(upstream)).label(id)
    }

    fn settings() -> TableSettings {
        TableSettings {
            base_domains: vec!["example.test".into()],
            portal_host: None,
        }
    }

    /// `serve`: the gateway's proxies read the control plane's own table.
    /// Told a stored version, the follower copies nothing, and closes what
    /// the change ends as a follower with its own copy would.
    #[test]
    fn a_follower_sharing_its_leaders_table_copies_nothing_and_closes_what_a_change_ends() {
        let routes = RouteHandle::new();
        let f = Follower::sharing(routes.clone(), ring("boot"));
        assert!(f.shares_table() && !f.is_ready());
        let first = routes
            .publish(&settings(), vec![spec("a", 1), spec("b", 1)])
            .unwrap();
        // The leader's first snapshot: the table is left as the leader stored it.
        let applied = f.apply(&snapshot(first.version(), Vec::new())).unwrap();
        assert_eq!(applied.version, first.version());
        assert!(f.is_ready());
        assert_eq!(f.keys().load().current_id(), "k1");
        assert!(Arc::ptr_eq(&f.routes().current(), &first));
        assert_eq!(f.routes().current().routes().len(), 2);

        let a = first.route("a").unwrap();
        let (_ga, mut rx_a) = a.state.register_live(a.target.clone(), None);
        let b = first.route("b").unwrap();
        let (_gb, rx_b) = b.state.register_live(b.target.clone(), None);
        let next = routes
            .apply(None, vec![RouteChange::Upsert(spec("a", 2))])
            .unwrap();
        let delta = Message::Delta(Arc::new(Delta {
            base: first.version(),
            version: next.version(),
            upserts: vec![spec("a", 2)],
            ..Delta::default()
        }));
        let applied = f.applied_in_place(&first, &next, &delta);
        assert_eq!(applied.version, next.version());
        assert_eq!(applied.closed, 1, "a moved to another target");
        assert!(*rx_a.borrow_and_update());
        assert!(!*rx_b.borrow(), "b did not change");
        assert!(Arc::ptr_eq(&f.routes().current(), &next));
        assert!(Arc::ptr_eq(
            next.route("b").unwrap(),
            first.route("b").unwrap()
        ));
    }

    fn snapshot(version: u64, routes: Vec<RouteSpec>) -> Message {
        Message::Snapshot(Arc::new(Snapshot {
            epoch: 1,
            version,
            watermark: 0,
            settings: settings(),
            routes,
            keys: Arc::new(ring("k1")),
        }))
    }

    #[test]
    fn a_follower_is_ready_only_after_its_first_table() {
        let f = Follower::new(ring("boot"));
        assert!(!f.is_ready());
        let applied = f.apply(&snapshot(7, vec![spec("a", 1)])).unwrap();
        assert_eq!(applied.version, 7);
        assert!(f.is_ready());
        assert_eq!(f.version(), 7);
        assert_eq!(f.keys().load().current_id(), "k1");
    }

    #[test]
    fn a_delta_applies_only_on_the_version_held() {
        let f = Follower::new(ring("boot"));
        f.apply(&snapshot(7, vec![spec("a", 1)])).unwrap();
        let delta = |base, version| {
            Message::Delta(Arc::new(Delta {
                base,
                version,
                upserts: vec![spec("b", 2)],
                removals: vec!["a".into()],
                keys: Some(Arc::new(ring("k2"))),
                ..Delta::default()
            }))
        };
        let err = f.apply(&delta(6, 8)).unwrap_err();
        assert!(
            matches!(err, FollowError::OutOfOrder { base: 6, held: 7 }),
            "{err}"
        );
        assert!(
            f.routes().load().route("a").is_some(),
            "a refused delta changes nothing"
        );
        assert_eq!(f.apply(&delta(7, 9)).unwrap().version, 9);
        let table = f.routes().load();
        assert!(table.route("a").is_none());
        assert!(table.route("b").is_some());
        assert_eq!(f.keys().load().current_id(), "k2");
    }

    #[test]
    fn a_delta_from_another_replica_moves_the_follower_to_its_epoch() {
        let f = Follower::new(ring("boot"));
        f.apply(&snapshot(40, vec![spec("a", 1), spec("gone", 1)]))
            .unwrap();
        assert_eq!((f.epoch(), f.watermark()), (1, 0));
        // Another replica numbers versions its own way (here lower), and
        // names a route this follower never had among its removals.
        let moved = Message::Delta(Arc::new(Delta {
            base: 40,
            version: 12,
            epoch: Some(9),
            watermark: 77,
            upserts: vec![spec("a", 2), spec("new", 3)],
            removals: vec!["gone".into(), "never-had".into()],
            ..Delta::default()
        }));
        assert_eq!(f.apply(&moved).unwrap().version, 12);
        assert_eq!((f.epoch(), f.version(), f.watermark()), (9, 12, 77));
        let table = f.routes().load();
        assert!(table.route("gone").is_none());
        assert!(table.route("new").is_some());
        assert_eq!(
            table.route("a").unwrap().spec.target.to_string(),
            "http://127.0.0.1:2"
        );
    }

    #[test]
    fn a_snapshot_keeps_the_state_of_routes_it_keeps() {
        let f = Follower::new(ring("boot"));
        f.apply(&snapshot(1, vec![spec("a", 1), spec("b", 1)]))
            .unwrap();
        let state = Arc::clone(&f.routes().load().route("a").unwrap().state);
        f.apply(&snapshot(5, vec![spec("a", 2)])).unwrap();
        let table = f.routes().load();
        assert!(Arc::ptr_eq(&table.route("a").unwrap().state, &state));
        assert!(table.route("b").is_none());
        assert_eq!(table.version(), 5);
    }
}
