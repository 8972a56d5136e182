//! The gateways this control plane drives, and the one way to reach them
//! (`docs/gateway-protocol.md`).
//!
//! The control plane's own route table is the authoritative one. Every
//! version stored in it is turned here into a [`Message`] (a delta, or a
//! snapshot after a rebuild), which is
//! - applied at once by the gateways in this process (`serve`'s), before the
//!   writer that made the version gets its answer, so that an API answer
//!   still comes after the gateway shows the change; and
//! - kept in a ring of the last [`RING`] messages, from which each route
//!   stream ([`crate::api::gateway`]) sends remote gateways what they lack:
//!   the messages after the version they hold, or a snapshot when the ring
//!   no longer reaches back that far.
//!
//! What gateways send back, acks and activity, is recorded here too: the
//! versions they hold (for the API's wait and `GET /api/v1/gateways`), and
//! the latest activity per route, merged into the control plane's table,
//! where the reaper reads it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gateway::access::KeyRing;
use gateway::sync::activity::ActivityCollector;
use gateway::sync::{wire, Delta, Follower, Message, Snapshot};
use gateway::{RouteHandle, RouteTable, TableChange, TableObserver};
use tokio::sync::{watch, Notify};
use tokio_util::codec::{Encoder, LengthDelimitedCodec};

/// Messages kept for gateways that resume.
pub const RING: usize = 4096;

/// Route changes the ring's messages may hold in all: as many as [`RING`]
/// messages of single writes batched by the publisher (64 at most) hold.
/// A batched write (`PATCH /api/v1/sessions`, up to 10,000 sessions) makes
/// one message of all its changes; without this bound a ring of them would
/// keep gigabytes. A gateway further behind gets a snapshot instead.
#[cfg(not(test))]
pub const RING_CHANGES: usize = RING * 64;
/// Small in unit tests, which fill it.
#[cfg(test)]
pub const RING_CHANGES: usize = 4096;

/// The route changes `message` carries (a snapshot: none kept apart from
/// the table it shares).
fn changes_in(message: &Message) -> usize {
    match message {
        Message::Delta(d) => d.upserts.len() + d.removals.len(),
        _ => 0,
    }
}

/// The largest frame either end accepts (a snapshot of a very large table).
pub const MAX_FRAME: usize = 256 << 20;

/// The codec both ends frame messages with.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// One message and its frame, encoded once for every stream that sends it.
struct Entry {
    message: Message,
    frame: OnceLock<Bytes>,
}

impl Entry {
    fn new(message: Message) -> Arc<Entry> {
        Arc::new(Entry {
            message,
            frame: OnceLock::new(),
        })
    }

    fn frame(&self) -> Bytes {
        self.frame.get_or_init(|| frame(&self.message)).clone()
    }
}

/// `message` as one length-delimited frame.
pub fn frame(message: &Message) -> Bytes {
    let mut buf = BytesMut::new();
    // Fails only past MAX_FRAME, which a table never reaches; an empty
    // frame would then be refused by the gateway, which resumes.
    let _ = codec().encode(Bytes::from(wire::encode(message)), &mut buf);
    buf.freeze()
}

/// A remote gateway as the control plane last saw it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GatewayView {
    /// Its token's name.
    pub name: String,
    /// Which gateway of those sharing the token: its host name and process
    /// id, as it says.
    pub instance: String,
    /// The address its stream came from.
    pub address: String,
    /// The table version it last acknowledged.
    pub version: u64,
    /// Versions it is behind the control plane's table.
    pub lag: u64,
    /// When it last acknowledged or reported (RFC 3339).
    pub last_seen: String,
    /// Whether its route stream is open.
    pub connected: bool,
}

#[derive(Debug)]
struct Remote {
    address: String,
    version: u64,
    last_seen_ms: u64,
    /// Open streams under this name (a gateway reconnecting may briefly
    /// hold two).
    streams: usize,
}

struct State {
    ring: VecDeque<Arc<Entry>>,
    /// The route changes the ring's messages hold in all.
    ring_changes: usize,
    /// The keys gateways verify with, and whether they changed since the
    /// last message (then the next one carries them).
    keys: Arc<KeyRing>,
    keys_dirty: bool,
}

struct Hub {
    routes: RouteHandle,
    /// This run's epoch: random, so that versions numbered by an earlier
    /// run (which a restarted control plane numbers afresh) are never
    /// taken for this run's.
    epoch: u64,
    state: Mutex<State>,
    local: Vec<Follower>,
    /// The version of the newest message in the ring.
    news: watch::Sender<u64>,
    remotes: Mutex<HashMap<String, Remote>>,
    acked: Notify,
    collectors: Mutex<Vec<ActivityCollector>>,
    clock: Arc<dyn crate::clock::Clock>,
    /// Set at shutdown: every stream ends, so that the API can drain.
    closing: watch::Sender<bool>,
    /// `control_plane.gateway_ack_timeout_ms`.
    ack_timeout_ms: std::sync::atomic::AtomicU64,
    /// The change-log sequence number up to which every row is in the
    /// table (replicas on PostgreSQL; 0 otherwise): raised only once the
    /// table holds those rows, so a message made at any time carries a
    /// watermark its table is at least at.
    watermark: std::sync::atomic::AtomicU64,
}

/// The data planes that follow this control plane.
#[derive(Clone)]
pub struct Gateways {
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Gateways {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateways")
            .field("local", &self.hub.local.len())
            .finish()
    }
}

struct Observer(Weak<Hub>);

impl TableObserver for Observer {
    fn stored(&self, previous: &RouteTable, next: &Arc<RouteTable>, change: TableChange<'_>) {
        if let Some(hub) = self.0.upgrade() {
            hub.stored(previous, next, change);
        }
    }
}

impl Gateways {
    /// Follows `routes` (the control plane's table, which must not have
    /// another observer): every version stored from now on reaches `local`
    /// (the gateways in this process) and the streams. `local` are brought
    /// to the table as it is now with a snapshot.
    pub fn follow(
        routes: RouteHandle,
        keys: Arc<KeyRing>,
        local: Vec<Follower>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Gateways {
        let version = routes.load().version();
        let hub = Arc::new(Hub {
            routes: routes.clone(),
            epoch: new_epoch(),
            state: Mutex::new(State {
                ring: VecDeque::new(),
                ring_changes: 0,
                keys,
                keys_dirty: false,
            }),
            local,
            news: watch::Sender::new(version),
            remotes: Mutex::new(HashMap::new()),
            acked: Notify::new(),
            collectors: Mutex::new(Vec::new()),
            clock,
            closing: watch::Sender::new(false),
            ack_timeout_ms: std::sync::atomic::AtomicU64::new(1000),
            watermark: std::sync::atomic::AtomicU64::new(0),
        });
        {
            let state = hub.lock_state();
            let snapshot = Message::Snapshot(Arc::new(Snapshot::of(
                hub.epoch,
                &routes.load(),
                Arc::clone(&state.keys),
            )));
            for f in &hub.local {
                if let Err(e) = f.apply(&snapshot) {
                    tracing::error!(error = %e, "in-process gateway refused the table");
                }
            }
        }
        *hub.collectors.lock().unwrap_or_else(|e| e.into_inner()) =
            hub.local.iter().map(|_| ActivityCollector::new()).collect();
        if routes
            .observe(Arc::new(Observer(Arc::downgrade(&hub))))
            .is_err()
        {
            tracing::error!("the route table already has an observer: gateways will not follow it");
        }
        Gateways { hub }
    }

    /// How long a write waits for remote gateways' acks.
    pub fn set_ack_timeout(&self, timeout: Duration) {
        self.hub.ack_timeout_ms.store(
            timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(
            self.hub
                .ack_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Ends every route stream (at shutdown): gateways keep serving what
    /// they hold and reconnect, to this process's successor or a replica.
    pub fn close_streams(&self) {
        self.hub.closing.send_replace(true);
    }

    /// Changes to `true` when the streams must end.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.hub.closing.subscribe()
    }

    /// The gateways in this process.
    pub fn local(&self) -> &[Follower] {
        &self.hub.local
    }

    /// New cookie keys: the next message carries them. Makes that message
    /// now, as a table version of its own, and returns once the gateways in
    /// this process verify with them.
    pub fn rotate_keys(&self, ring: Arc<KeyRing>) {
        {
            let mut state = self.hub.lock_state();
            state.keys = ring;
            state.keys_dirty = true;
        }
        if let Err(e) = self.hub.routes.apply(None, Vec::new()) {
            tracing::error!(error = %e, "key rotation: no table version made");
        }
    }

    /// The version of the newest message, and a receiver that changes with it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.hub.news.subscribe()
    }

    /// This run's epoch (see [`Snapshot::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.hub.epoch
    }

    /// The table holds every change-log row up to `seq` (see
    /// [`Snapshot::watermark`]); never lowers it.
    pub fn set_watermark(&self, seq: u64) {
        self.hub
            .watermark
            .fetch_max(seq, std::sync::atomic::Ordering::AcqRel);
    }

    /// The change-log watermark of the table as it is now.
    pub fn watermark(&self) -> u64 {
        self.hub.watermark()
    }

    /// The message that moves a gateway which followed another replica to
    /// this one without a snapshot: a delta from the version it held
    /// (`held`, of its previous epoch) to this table as it is now, in this
    /// epoch, upserting or removing the routes `ids` (those the change log
    /// names after the gateway's watermark), every route with groups when
    /// `with_groups` (a group's members changed after it), and every route
    /// that is not a session's (the configuration file's, which replicas
    /// share). The caller has checked that this table's watermark is at
    /// least the gateway's. Returns the frame and the version it brings
    /// the gateway to; the ring's messages after that version follow.
    pub fn switch(&self, held: u64, ids: &[Arc<str>], with_groups: bool) -> (Bytes, u64) {
        let state = self.hub.lock_state();
        // Read before the table: the table is at least at it.
        let watermark = self.hub.watermark();
        let current = self.hub.routes.current();
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        let mut named = std::collections::HashSet::new();
        for id in ids {
            if !named.insert(Arc::clone(id)) {
                continue;
            }
            match current.route(id) {
                Some(r) => upserts.push(r.spec.clone()),
                None => removals.push(Arc::clone(id)),
            }
        }
        for r in current.routes().iter() {
            let grouped = r.spec.access.as_ref().is_some_and(|a| !a.groups.is_empty());
            let static_route = crate::publish::session_name(&r.id).is_none();
            if (static_route || (with_groups && grouped)) && named.insert(Arc::clone(&r.id)) {
                upserts.push(r.spec.clone());
            }
        }
        let delta = Message::Delta(Arc::new(Delta {
            base: held,
            version: current.version(),
            epoch: Some(self.hub.epoch),
            watermark,
            settings: Some(current.settings().clone()),
            upserts,
            removals,
            keys: Some(Arc::clone(&state.keys)),
        }));
        drop(state);
        (frame(&delta), current.version())
    }

    /// What a gateway holding `held` (`None`: nothing of this epoch) needs
    /// next, as frames to send in order, and the version they bring it to:
    /// the ring's messages after `held`, or a snapshot of the table now
    /// when the ring does not reach back to it (or a rebuild came since).
    /// Empty when it is up to date. Never a message at or below `held`.
    pub fn catch_up(&self, held: Option<u64>) -> (Vec<Bytes>, u64) {
        let state = self.hub.lock_state();
        let watermark = self.hub.watermark();
        let current = self.hub.routes.current();
        let snapshot = |state: std::sync::MutexGuard<'_, State>| {
            let snapshot = Message::Snapshot(Arc::new(Snapshot {
                watermark,
                ..Snapshot::of(self.hub.epoch, &current, Arc::clone(&state.keys))
            }));
            drop(state);
            (vec![frame(&snapshot)], current.version())
        };
        let Some(held) = held else {
            return snapshot(state);
        };
        let newest = state.ring.back().map(|e| e.message.version());
        if newest.is_none_or(|v| v <= held) && current.version() <= held {
            return (Vec::new(), held);
        }
        // The first message after `held` must apply on it.
        let start = state.ring.iter().position(|e| e.message.version() > held);
        if let Some(i) = start {
            if let Message::Delta(d) = &state.ring[i].message {
                if d.base == held {
                    let frames: Vec<Bytes> = state.ring.iter().skip(i).map(|e| e.frame()).collect();
                    let to = state.ring.back().map_or(held, |e| e.message.version());
                    return (frames, to);
                }
            }
        }
        snapshot(state)
    }

    /// A gateway's stream opened.
    pub fn connected(&self, name: &str, address: String, held: u64) {
        let now = self.hub.clock.now_ms();
        let mut remotes = self.hub.lock_remotes();
        let r = remotes.entry(name.to_string()).or_insert(Remote {
            address: address.clone(),
            version: held,
            last_seen_ms: now,
            streams: 0,
        });
        r.address = address;
        r.version = held;
        r.last_seen_ms = now;
        r.streams += 1;
        tracing::info!(gateway = %name, address = %r.address, version = held, "gateway connected");
    }

    /// A gateway's stream closed.
    pub fn disconnected(&self, name: &str) {
        let mut remotes = self.hub.lock_remotes();
        if let Some(r) = remotes.get_mut(name) {
            r.streams = r.streams.saturating_sub(1);
            if r.streams == 0 {
                tracing::warn!(gateway = %name, version = r.version, "gateway disconnected");
            }
        }
        drop(remotes);
        self.hub.acked.notify_waiters();
    }

    /// A gateway acknowledged `version`.
    pub fn ack(&self, name: &str, version: u64) {
        let now = self.hub.clock.now_ms();
        if let Some(r) = self.hub.lock_remotes().get_mut(name) {
            // In order: one gateway's acks come one after another. Not the
            // highest ever seen: after a restart of this control plane a
            // gateway's versions start again lower.
            r.version = version;
            r.last_seen_ms = now;
        }
        self.hub.acked.notify_waiters();
    }

    /// A gateway reported activity: the latest time per route wins.
    pub fn activity(&self, name: &str, routes: &[(String, u64)]) {
        let now = self.hub.clock.now_ms();
        if let Some(r) = self.hub.lock_remotes().get_mut(name) {
            r.last_seen_ms = now;
        }
        let table = self.hub.routes.load();
        for (id, ms) in routes {
            // Never ahead of this clock: a gateway's fast clock would
            // keep a session alive forever.
            if let Some(route) = table.route(id) {
                route.state.observe_activity((*ms).min(now));
            }
        }
    }

    /// Merges the activity of the gateways in this process (what their
    /// proxies touched) into the control plane's table: for `serve`, read
    /// directly, as a remote gateway's report would bring it.
    pub fn collect_local(&self) {
        let mut collectors = self
            .hub
            .collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let table = self.hub.routes.load();
        for (f, c) in self.hub.local.iter().zip(collectors.iter_mut()) {
            if f.shares_table() {
                // Its proxies touch this table's routes themselves.
                continue;
            }
            for (id, ms) in c.collect(&f.routes().load()) {
                if let Some(route) = table.route(&id) {
                    route.state.observe_activity(ms);
                }
            }
        }
    }

    /// Waits until every connected remote gateway holds `version`, up to
    /// `timeout`; returns the names of those that still do not.
    pub async fn wait_for(&self, version: u64, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.hub.acked.notified();
            let behind: Vec<String> = self
                .hub
                .lock_remotes()
                .iter()
                .filter(|(_, r)| r.streams > 0 && r.version < version)
                .map(|(n, _)| n.clone())
                .collect();
            if behind.is_empty() {
                return behind;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                let mut behind: Vec<String> = self
                    .hub
                    .lock_remotes()
                    .iter()
                    .filter(|(_, r)| r.streams > 0 && r.version < version)
                    .map(|(n, _)| n.clone())
                    .collect();
                behind.sort();
                return behind;
            }
        }
    }

    /// Whether any remote gateway is connected (then writes wait for acks).
    pub fn any_remote(&self) -> bool {
        self.hub.lock_remotes().values().any(|r| r.streams > 0)
    }

    /// Every remote gateway seen since start, by name.
    pub fn list(&self) -> Vec<GatewayView> {
        let current = self.hub.routes.load().version();
        let mut out: Vec<GatewayView> = self
            .hub
            .lock_remotes()
            .iter()
            .map(|(key, r)| GatewayView {
                name: key
                    .split_once('/')
                    .map_or(key.as_str(), |(n, _)| n)
                    .to_string(),
                instance: key.split_once('/').map_or("", |(_, i)| i).to_string(),
                address: r.address.clone(),
                version: r.version,
                lag: current.saturating_sub(r.version),
                last_seen: crate::time::rfc3339_millis(r.last_seen_ms),
                connected: r.streams > 0,
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.instance).cmp(&(&b.name, &b.instance)));
        out
    }
}

/// A random epoch, never 0 (what a gateway holding nothing sends).
fn new_epoch() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    // Without randomness, the start time still differs between runs.
    let r = u64::from_le_bytes(b)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    r.max(1)
}

impl Hub {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_remotes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Remote>> {
        self.remotes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watermark(&self) -> u64 {
        self.watermark.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A version was stored in the control plane's table (under its write
    /// lock, so in version order): its message reaches every gateway.
    fn stored(&self, previous: &RouteTable, next: &Arc<RouteTable>, change: TableChange<'_>) {
        let mut state = self.lock_state();
        let watermark = self.watermark();
        let message = match change {
            TableChange::Rebuilt => {
                state.keys_dirty = false;
                Message::Snapshot(Arc::new(Snapshot {
                    watermark,
                    ..Snapshot::of(self.epoch, next, Arc::clone(&state.keys))
                }))
            }
            TableChange::Changed {
                upserted,
                removed,
                settings,
            } => {
                let keys = std::mem::take(&mut state.keys_dirty).then(|| Arc::clone(&state.keys));
                Message::Delta(Arc::new(Delta {
                    base: previous.version(),
                    version: next.version(),
                    settings: settings.then(|| next.settings().clone()),
                    upserts: upserted
                        .iter()
                        .filter_map(|id| next.route(id).map(|r| r.spec.clone()))
                        .collect(),
                    removals: removed.to_vec(),
                    keys,
                    epoch: None,
                    watermark,
                }))
            }
        };
        for f in &self.local {
            if f.shares_table() {
                // `next` is in its table already: it is this one.
                f.applied_in_place(previous, next, &message);
                continue;
            }
            if let Err(e) = f.apply(&message) {
                // Cannot happen (it follows nothing else); a snapshot mends it.
                tracing::error!(error = %e, "in-process gateway refused a change; sending the whole table");
                let whole = Message::Snapshot(Arc::new(Snapshot::of(
                    self.epoch,
                    next,
                    Arc::clone(&state.keys),
                )));
                if let Err(e) = f.apply(&whole) {
                    tracing::error!(error = %e, "in-process gateway refused the table");
                }
            }
        }
        if matches!(message, Message::Snapshot(_)) {
            state.ring.clear();
            state.ring_changes = 0;
        }
        let version = message.version();
        state.ring_changes += changes_in(&message);
        state.ring.push_back(Entry::new(message));
        // The newest message always stays.
        while state.ring.len() > RING || (state.ring_changes > RING_CHANGES && state.ring.len() > 1)
        {
            if let Some(old) = state.ring.pop_front() {
                state.ring_changes = state.ring_changes.saturating_sub(changes_in(&old.message));
            }
        }
        drop(state);
        self.news.send_replace(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use gateway::access::SigningKey;
    use gateway::{RouteChange, RouteSpec, RouteTarget, TableSettings, Upstream};

    fn keys() -> Arc<KeyRing> {
        Arc::new(KeyRing::new(SigningKey::new("k1", &[3; 32]).unwrap(), None))
    }

    fn spec(id: &str) -> RouteSpec {
        let upstream = Upstream::parse("http://127.0.0.1:1").unwrap();
        RouteSpec::new(id, RouteTarget::Upstream(upstream)).label(id)
    }

    fn hub(local: Vec<Follower>) -> (RouteHandle, Gateways) {
        let routes = RouteHandle::new();
        let settings = TableSettings {
            base_domains: vec!["localhost".into()],
            portal_host: None,
        };
        routes.publish(&settings, vec![spec("static")]).unwrap();
        let g = Gateways::follow(
            routes.clone(),
            keys(),
            local,
            Arc::new(crate::clock::SystemClock),
        );
        (routes, g)
    }

    /// The messages in `frames` (each a 4-byte length, then JSON).
    fn messages(frames: &[Bytes]) -> Vec<Message> {
        frames
            .iter()
            .map(|f| {
                assert_eq!(
                    u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
                    f.len() - 4
                );
                wire::decode(&f[4..]).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_gateway_resumes_from_the_ring_or_gets_a_snapshot() {
        let (routes, g) = hub(Vec::new());
        let v1 = routes.load().version();
        for id in ["a", "b", "c"] {
            routes
                .apply(None, vec![RouteChange::Upsert(spec(id))])
                .unwrap();
        }
        let now = routes.load().version();

        let (frames, to) = g.catch_up(Some(v1));
        assert_eq!(to, now);
        let got = messages(&frames);
        assert_eq!(got.len(), 3);
        let mut base = v1;
        for m in &got {
            let Message::Delta(d) = m else {
                panic!("a delta, not {m:?}")
            };
            assert_eq!(d.base, base, "each delta applies on the one before");
            base = d.version;
        }
        assert!(g.catch_up(Some(now)).0.is_empty(), "up to date: nothing");

        // No version of this epoch: the whole table.
        let (frames, to) = g.catch_up(None);
        let [Message::Snapshot(s)] = &messages(&frames)[..] else {
            panic!("one snapshot")
        };
        assert_eq!((s.version, s.epoch, to), (now, g.epoch(), now));
        assert_eq!(s.routes.len(), 4);

        // The ring no longer reaches back to v1.
        for _ in 0..RING {
            routes.apply(None, Vec::new()).unwrap();
        }
        let (frames, _) = g.catch_up(Some(v1));
        assert!(matches!(&messages(&frames)[..], [Message::Snapshot(_)]));
    }

    #[test]
    fn the_ring_keeps_a_bounded_number_of_route_changes() {
        let (routes, g) = hub(Vec::new());
        let v1 = routes.load().version();
        // Big batches: each version changes a quarter of the bound.
        let batch = RING_CHANGES / 4;
        let specs = |round: usize| -> Vec<RouteChange> {
            (0..batch)
                .map(|i| RouteChange::Upsert(spec(&format!("r{round}-{i}"))))
                .collect()
        };
        routes.apply(None, specs(0)).unwrap();
        let v2 = routes.load().version();
        for round in 1..4 {
            routes.apply(None, specs(round)).unwrap();
        }
        // Four batches fill the bound exactly: v1 still resumes.
        let (frames, _) = g.catch_up(Some(v1));
        assert_eq!(frames.len(), 4);
        assert!(matches!(&messages(&frames[..1])[..], [Message::Delta(_)]));
        // A fifth pushes the first out: v1 gets the whole table, v2 the rest.
        routes.apply(None, specs(4)).unwrap();
        let (frames, _) = g.catch_up(Some(v1));
        assert!(matches!(&messages(&frames)[..], [Message::Snapshot(_)]));
        assert_eq!(g.catch_up(Some(v2)).0.len(), 4);
        // One batch over the bound alone is kept: the newest always is.
        let v = routes.load().version();
        let huge: Vec<RouteChange> = (0..RING_CHANGES + 1)
            .map(|i| RouteChange::Upsert(spec(&format!("h{i}"))))
            .collect();
        routes.apply(None, huge).unwrap();
        assert_eq!(g.catch_up(Some(v)).0.len(), 1);
    }

    #[test]
    fn gateways_in_this_process_apply_each_version_before_the_writer_returns() {
        let f = Follower::new(KeyRing::throwaway());
        let (routes, g) = hub(vec![f.clone()]);
        assert!(f.is_ready());
        assert_eq!(f.keys().load().current_id(), "k1");
        routes
            .apply(None, vec![RouteChange::Upsert(spec("a"))])
            .unwrap();
        assert_eq!(f.version(), routes.load().version());
        assert!(f.routes().load().route("a").is_some());
        routes
            .apply(None, vec![RouteChange::Remove("a".into())])
            .unwrap();
        assert!(f.routes().load().route("a").is_none());

        // A rotation is a version of its own, and carries the keys.
        let before = routes.load().version();
        g.rotate_keys(Arc::new(KeyRing::new(
            SigningKey::new("k2", &[4; 32]).unwrap(),
            None,
        )));
        assert_eq!(routes.load().version(), before + 1);
        assert_eq!(f.keys().load().current_id(), "k2");
        assert_eq!(f.version(), before + 1);
    }

    #[tokio::test]
    async fn a_write_waits_for_connected_gateways_and_names_those_behind() {
        let (routes, g) = hub(Vec::new());
        let v = routes.load().version();
        g.connected("gw1/a", "127.0.0.1:1".into(), 0);
        g.connected("gw2/b", "127.0.0.1:2".into(), 0);
        assert!(g.any_remote());
        g.ack("gw1/a", v);
        let behind = g.wait_for(v, Duration::from_millis(20)).await;
        assert_eq!(behind, vec!["gw2/b".to_string()]);
        // An ack while waiting ends the wait.
        let waiting = {
            let g = g.clone();
            tokio::spawn(async move { g.wait_for(v, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        g.ack("gw2/b", v);
        assert!(waiting.await.unwrap().is_empty());
        // A gateway that is gone is not waited for.
        g.disconnected("gw2/b");
        assert!(g.wait_for(v + 5, Duration::from_millis(1)).await == vec!["gw1/a".to_string()]);
        let listed = g.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            (listed[1].name.as_str(), listed[1].instance.as_str()),
            ("gw2", "b")
        );
        assert!(!listed[1].connected);
    }

    #[test]
    fn activity_reports_keep_the_latest_time_and_never_a_future_one() {
        let (routes, g) = hub(Vec::new());
        let now = crate::clock::SystemClock.now_ms();
        g.activity("gw1", &[("static".into(), now - 5_000)]);
        g.activity("gw2", &[("static".into(), now - 9_000), ("nope".into(), 1)]);
        let state = Arc::clone(&routes.load().route("static").unwrap().state);
        assert_eq!(state.last_activity_ms(), Some(now - 5_000));
        g.activity("gw3", &[("static".into(), now + 3_600_000)]);
        assert!(state.last_activity_ms().unwrap() <= crate::clock::SystemClock.now_ms());
    }
}
