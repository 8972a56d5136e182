//! The routing table the data plane reads, and the handle that swaps it.
//!
//! A [`RouteTable`] is immutable once built. The control plane (or the static
//! configuration loader) compiles a list of [`RouteSpec`]s into a new table and
//! [`RouteHandle::publish`]es it; every request does exactly one atomic load of
//! the current table. Per-route runtime state — the last-activity clock and the
//! set of live upgraded connections — lives in [`RouteState`], which is carried
//! from one table version to the next by route id, so activity and revocation
//! keep working across swaps.
//!
//! # Storage
//!
//! Each of the table's maps (hosts, labels, slugs, and routes by id) is a
//! `RouteMap`: [`SHARDS`] shards, each an `Arc<HashMap>`. A new version shares
//! every map with the previous one and copies, on write, the shard pointers of
//! a map it changes and the shards that a change touches. One change to a table
//! of `n` routes therefore costs `O(SHARDS + n / SHARDS)` pointer copies, not a
//! rebuild of `n` routes ([`RouteHandle::apply`], and in batches
//! [`crate::RoutePublisher`]). A lookup still hashes the name once and finds it
//! behind one extra pointer; short names are stored in the entries themselves,
//! so comparing them reads no other memory.

use std::collections::hash_map::{self, RandomState};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::iter::FusedIterator;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::access::AccessList;
use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use tokio::sync::watch;

/// Where a route sends its traffic: `http://host:port` or `https://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Upstream {
    /// Parses `http://host:port` (or `https://`). A path other than `/`, a query,
    /// or user info is refused: a route forwards the request path unchanged.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("upstream {s:?}: not a URL ({e})"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            Some(other) => {
                return Err(format!(
                    "upstream {s:?}: scheme {other:?} is not supported (use http:// or https://)"
                ))
            }
            None => {
                return Err(format!(
                    "upstream {s:?}: missing scheme (http:// or https://)"
                ))
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("upstream {s:?}: missing host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("upstream {s:?}: user info is not allowed"));
        }
        if authority.host().is_empty() {
            return Err(format!("upstream {s:?}: missing host"));
        }
        if let Some(pq) = uri.path_and_query() {
            if pq.as_str() != "/" && !pq.as_str().is_empty() {
                return Err(format!(
                    "upstream {s:?}: a path or query is not allowed, only scheme://host:port"
                ));
            }
        }
        Ok(Upstream { scheme, authority })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// Where a matched request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Proxy it to this upstream.
    Upstream(Upstream),
    /// Answer `302 Found` to this absolute URL (a `link` session: the app
    /// lives elsewhere and the gateway only hands the browser over).
    Redirect(Arc<str>),
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::Upstream(u) => u.fmt(f),
            RouteTarget::Redirect(url) => write!(f, "redirect {url}"),
        }
    }
}

/// What the table builder is given for one route.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// Stable identity across table versions (a session name, or `static:<key>`).
    /// Runtime state is carried over by this id.
    pub id: Arc<str>,
    /// Exact hostnames (custom domains, static host routes).
    pub hosts: Vec<String>,
    /// DNS labels served under every base domain: `<label>.<base-domain>`.
    pub labels: Vec<String>,
    /// Path prefixes on the portal host, such as `/lab`.
    pub slugs: Vec<String>,
    pub target: RouteTarget,
    /// Remove the matched slug from the path before forwarding.
    pub strip_prefix: bool,
    /// Send the upstream's own authority as `Host` instead of the client's.
    pub rewrite_host: bool,
    /// Answer 503 instead of forwarding (a paused session).
    pub paused: bool,
    /// Anyone may use it. A route that is not public needs a browser with a
    /// valid cookie for a user its `access` list allows.
    pub public: bool,
    /// Who may use a private route. A private route without one lets nobody in.
    pub access: Option<Arc<AccessList>>,
    /// The session waits for an access link (pending, or evicted): the link
    /// is served, everything else answers 503.
    pub inactive: bool,
    /// For an `https://` upstream: verify its certificate. Off only for apps
    /// with self-signed certificates, by the session's own choice.
    pub tls_verify: bool,
}

impl RouteSpec {
    /// A public route `id` to `target`, matched by nothing yet: add hosts,
    /// labels or slugs with the builder methods below. Every other field has
    /// the value a static route from the configuration file has (no prefix
    /// stripping, the client's Host kept, certificates verified).
    pub fn new(id: impl Into<Arc<str>>, target: RouteTarget) -> RouteSpec {
        RouteSpec {
            id: id.into(),
            hosts: Vec::new(),
            labels: Vec::new(),
            slugs: Vec::new(),
            target,
            strip_prefix: false,
            rewrite_host: false,
            paused: false,
            public: true,
            access: None,
            inactive: false,
            tls_verify: true,
        }
    }

    /// Also matches this exact hostname.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    /// Also matches `<label>.<base-domain>` for every base domain.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.labels.push(label.into());
        self
    }

    /// Also matches this path prefix on the portal host.
    pub fn slug(mut self, slug: impl Into<String>) -> Self {
        self.slugs.push(slug.into());
        self
    }

    pub fn strip_prefix(mut self, on: bool) -> Self {
        self.strip_prefix = on;
        self
    }

    pub fn rewrite_host(mut self, on: bool) -> Self {
        self.rewrite_host = on;
        self
    }

    pub fn paused(mut self, on: bool) -> Self {
        self.paused = on;
        self
    }

    /// Makes the route private: only users `access` allows get in (nobody
    /// without a list).
    pub fn private(mut self, access: Option<Arc<AccessList>>) -> Self {
        self.public = false;
        self.access = access;
        self
    }

    pub fn inactive(mut self, on: bool) -> Self {
        self.inactive = on;
        self
    }

    pub fn tls_verify(mut self, on: bool) -> Self {
        self.tls_verify = on;
        self
    }
}

/// A compiled route, shared by every table version that contains it unchanged.
#[derive(Debug)]
pub struct Route {
    pub id: Arc<str>,
    pub target: RouteTarget,
    pub strip_prefix: bool,
    pub rewrite_host: bool,
    pub paused: bool,
    pub public: bool,
    pub access: Option<Arc<AccessList>>,
    pub inactive: bool,
    pub tls_verify: bool,
    pub state: Arc<RouteState>,
    /// The spec it was built from, for `GET /api/v1/routes`.
    pub spec: RouteSpec,
    /// The normalised keys it is filed under, so that replacing or removing it
    /// frees exactly those. The strings are shared with the maps' keys.
    keys: RouteKeys,
}

#[derive(Debug, Default)]
struct RouteKeys {
    hosts: Vec<Arc<str>>,
    labels: Vec<Arc<str>>,
    slugs: Vec<Arc<str>>,
}

/// Runtime state of a route that outlives table versions.
#[derive(Debug)]
pub struct RouteState {
    /// Unix milliseconds of the last request or upgraded-connection traffic; 0 = never.
    last_activity_ms: AtomicU64,
    /// Live upgraded connections, so they can be closed on revocation.
    /// Touched only when an upgrade starts or ends, never per request.
    upgraded: Mutex<UpgradedSet>,
}

#[derive(Debug, Default)]
struct UpgradedSet {
    next_id: u64,
    conns: HashMap<u64, UpgradedEntry>,
}

#[derive(Debug)]
struct UpgradedEntry {
    kind: LiveKind,
    user: Option<Arc<str>>,
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

pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for RouteState {
    fn default() -> Self {
        RouteState {
            last_activity_ms: AtomicU64::new(0),
            upgraded: Mutex::new(UpgradedSet::default()),
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
        self.lock_upgraded()
            .conns
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
        let set = self.lock_upgraded();
        let mut n = 0;
        for entry in set.conns.values() {
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
        let mut set = self.lock_upgraded();
        let id = set.next_id;
        set.next_id += 1;
        set.conns.insert(
            id,
            UpgradedEntry {
                kind,
                user,
                close: tx,
            },
        );
        drop(set);
        (
            LiveGuard {
                state: Arc::clone(self),
                id,
            },
            rx,
        )
    }

    fn lock_upgraded(&self) -> std::sync::MutexGuard<'_, UpgradedSet> {
        // A panic while holding this lock cannot leave the set inconsistent
        // (every critical section is a single insert/remove/iterate), so a
        // poisoned lock is still safe to use.
        self.upgraded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a live connection from its route's set when it ends.
#[derive(Debug)]
pub(crate) struct LiveGuard {
    state: Arc<RouteState>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.state.lock_upgraded().conns.remove(&self.id);
    }
}

/// Settings that apply to the whole table.
#[derive(Clone, Debug, Default)]
pub struct TableSettings {
    /// Base domains under which `<label>.<base>` routes by label.
    pub base_domains: Vec<String>,
    /// The host on which slug routes are served.
    pub portal_host: Option<String>,
}

/// One change to the table, for incremental publishing.
#[derive(Clone, Debug)]
pub enum RouteChange {
    /// Add the route, or replace the one with the same id.
    Upsert(RouteSpec),
    /// Remove the route with this id (nothing happens if there is none).
    Remove(Arc<str>),
}

/// An immutable routing table. Lookups are in `router`.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub(crate) version: u64,
    pub(crate) settings: TableSettings,
    /// Lower-case base domains, each with a leading dot (`.localhost`).
    pub(crate) base_suffixes: Vec<Box<str>>,
    pub(crate) portal_host: Option<Box<str>>,
    pub(crate) hosts: RouteMap,
    pub(crate) labels: RouteMap,
    /// Slugs without a trailing slash; the root slug is `""`.
    pub(crate) slugs: RouteMap,
    /// Every route by id.
    pub(crate) routes: RouteMap,
}

/// Why a set of specs could not be compiled into a table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("route {id:?}: invalid {what} {value:?}: {reason}")]
    Invalid {
        id: String,
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{what} {value:?} is claimed by both route {first:?} and route {second:?}")]
    Conflict {
        what: &'static str,
        value: String,
        first: String,
        second: String,
    },
    #[error("route id {0:?} appears twice")]
    DuplicateId(String),
    #[error("route {0:?} has no host, label or slug to match")]
    NoMatcher(String),
}

impl RouteTable {
    /// The version this table was published as (0 before the first publish).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every route, in no particular order (sort by id where order matters).
    pub fn routes(&self) -> Routes<'_> {
        Routes { map: &self.routes }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route with this id, if any: one hash lookup.
    pub fn route(&self, id: &str) -> Option<&Arc<Route>> {
        self.routes.get(id)
    }

    pub fn base_domains(&self) -> impl Iterator<Item = &str> {
        self.base_suffixes.iter().map(|s| &s[1..])
    }

    pub fn portal_host(&self) -> Option<&str> {
        self.portal_host.as_deref()
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &TableSettings {
        &self.settings
    }

    /// A table with these settings and no routes.
    fn empty(settings: &TableSettings, version: u64) -> RouteTable {
        let fresh = RouteTable::settings_only(settings);
        RouteTable {
            version,
            settings: fresh.settings,
            base_suffixes: fresh.base_suffixes,
            portal_host: fresh.portal_host,
            ..RouteTable::default()
        }
    }

    /// The settings and what lookups derive from them.
    fn settings_only(settings: &TableSettings) -> CompiledSettings {
        CompiledSettings {
            settings: settings.clone(),
            base_suffixes: settings
                .base_domains
                .iter()
                .map(|d| format!(".{}", normalize_name(d)).into_boxed_str())
                .collect(),
            portal_host: settings
                .portal_host
                .as_deref()
                .map(|h| normalize_name(h).into_boxed_str()),
        }
    }

    /// Compiles `specs` into a table. Runtime state is taken from `previous` for
    /// every route id it already has, so activity and live connections carry over.
    pub fn build(
        settings: &TableSettings,
        specs: Vec<RouteSpec>,
        previous: Option<&RouteTable>,
        version: u64,
    ) -> Result<RouteTable, TableError> {
        let mut table = RouteTable::empty(settings, version);
        for spec in specs {
            if table.routes.get(&spec.id).is_some() {
                return Err(TableError::DuplicateId(spec.id.to_string()));
            }
            let compiled = CompiledSpec::compile(spec)?;
            let state = previous
                .and_then(|t| t.route(&compiled.spec.id))
                .map(|r| Arc::clone(&r.state))
                .unwrap_or_default();
            let route = compiled.into_route(state);
            for (what, map, keys) in [
                ("host", &mut table.hosts, &route.keys.hosts),
                ("label", &mut table.labels, &route.keys.labels),
                ("slug", &mut table.slugs, &route.keys.slugs),
            ] {
                for key in keys {
                    // On a conflict the whole table is dropped, so there is
                    // no need to look before inserting.
                    if let Some(existing) = map.insert(Arc::clone(key), Arc::clone(&route)) {
                        return Err(conflict(what, key, &existing.id, &route.id));
                    }
                }
            }
            table.routes.insert(Arc::clone(&route.id), route);
        }
        Ok(table)
    }

    /// The next version of this table: the same routes (sharing every map and
    /// shard until written), and `settings` when given.
    fn successor(&self, settings: Option<&TableSettings>, version: u64) -> RouteTable {
        let (settings, base_suffixes, portal_host) = match settings {
            Some(settings) => {
                let fresh = RouteTable::settings_only(settings);
                (fresh.settings, fresh.base_suffixes, fresh.portal_host)
            }
            None => (
                self.settings.clone(),
                self.base_suffixes.clone(),
                self.portal_host.clone(),
            ),
        };
        RouteTable {
            version,
            settings,
            base_suffixes,
            portal_host,
            hosts: self.hosts.clone(),
            labels: self.labels.clone(),
            slugs: self.slugs.clone(),
            routes: self.routes.clone(),
        }
    }

    /// Applies one group of changes to this table (a draft not yet published),
    /// all or nothing: every spec is validated and every key checked for
    /// conflicts before anything is written, so on error the draft is as it
    /// was. The result is what [`RouteTable::build`] would make of the final
    /// set of specs (the last change to an id wins), at the cost of the changes
    /// only. A route that is replaced, or removed and added again, keeps its
    /// runtime state.
    fn apply_changes(&mut self, changes: Vec<RouteChange>) -> Result<(), TableError> {
        // The net effect per id, in order of first mention.
        let mut touched: Vec<Arc<str>> = Vec::with_capacity(changes.len());
        let mut net: HashMap<Arc<str>, Option<RouteSpec>> = HashMap::with_capacity(changes.len());
        for change in changes {
            let (id, spec) = match change {
                RouteChange::Upsert(spec) => (Arc::clone(&spec.id), Some(spec)),
                RouteChange::Remove(id) => (id, None),
            };
            if net.insert(Arc::clone(&id), spec).is_none() {
                touched.push(id);
            }
        }
        let mut compiled = Vec::with_capacity(touched.len());
        for id in &touched {
            if let Some(Some(spec)) = net.remove(id) {
                compiled.push(CompiledSpec::compile(spec)?);
            }
        }

        // Conflicts, against the routes that stay and among the new specs. A
        // key held by a touched route is free: that route's keys go first.
        let touched_ids: HashSet<&str> = touched.iter().map(|id| &**id).collect();
        let mut claimed: [HashMap<&str, &str>; 3] = Default::default();
        for c in &compiled {
            for (i, (what, map, keys)) in [
                ("host", &self.hosts, &c.keys.hosts),
                ("label", &self.labels, &c.keys.labels),
                ("slug", &self.slugs, &c.keys.slugs),
            ]
            .into_iter()
            .enumerate()
            {
                for key in keys {
                    if let Some(first) = claimed[i].get(&**key) {
                        return Err(conflict(what, key, first, &c.spec.id));
                    }
                    if let Some(existing) = map.get(key) {
                        if !touched_ids.contains(&*existing.id) {
                            return Err(conflict(what, key, &existing.id, &c.spec.id));
                        }
                    }
                    claimed[i].insert(key, &c.spec.id);
                }
            }
        }
        drop(touched_ids);

        // Nothing below can fail.
        let mut carried: HashMap<Arc<str>, Arc<RouteState>> = HashMap::new();
        for id in &touched {
            if let Some(old) = self.routes.remove(id) {
                self.unfile(&old);
                carried.insert(Arc::clone(&old.id), Arc::clone(&old.state));
            }
        }
        for c in compiled {
            let state = carried.remove(&c.spec.id).unwrap_or_default();
            let route = c.into_route(state);
            for (map, keys) in [
                (&mut self.hosts, &route.keys.hosts),
                (&mut self.labels, &route.keys.labels),
                (&mut self.slugs, &route.keys.slugs),
            ] {
                for key in keys {
                    map.insert(Arc::clone(key), Arc::clone(&route));
                }
            }
            self.routes.insert(Arc::clone(&route.id), route);
        }
        Ok(())
    }

    /// Removes the keys `route` is filed under.
    fn unfile(&mut self, route: &Route) {
        for (map, keys) in [
            (&mut self.hosts, &route.keys.hosts),
            (&mut self.labels, &route.keys.labels),
            (&mut self.slugs, &route.keys.slugs),
        ] {
            for key in keys {
                let removed = map.remove(key);
                debug_assert!(removed.is_some_and(|r| *r.id == *route.id));
            }
        }
    }
}

/// [`TableSettings`] with the normalised forms lookups use.
struct CompiledSettings {
    settings: TableSettings,
    base_suffixes: Vec<Box<str>>,
    portal_host: Option<Box<str>>,
}

/// A spec that passed validation, with its normalised keys, before it gets
/// its runtime state.
struct CompiledSpec {
    spec: RouteSpec,
    keys: RouteKeys,
}

impl CompiledSpec {
    /// Everything [`RouteTable::build`] checks about one spec on its own.
    fn compile(spec: RouteSpec) -> Result<CompiledSpec, TableError> {
        if spec.hosts.is_empty() && spec.labels.is_empty() && spec.slugs.is_empty() {
            return Err(TableError::NoMatcher(spec.id.to_string()));
        }
        if let RouteTarget::Redirect(url) = &spec.target {
            if !is_redirect_url(url) {
                return Err(invalid(
                    &spec.id,
                    "redirect",
                    url,
                    "must be an absolute http:// or https:// URL",
                ));
            }
        }
        let mut keys = RouteKeys::default();
        for host in &spec.hosts {
            keys.hosts
                .push(valid_hostname(&spec.id, "host", host)?.into());
        }
        for label in &spec.labels {
            let key = normalize_name(label);
            if !is_dns_label(&key) {
                return Err(invalid(&spec.id, "label", label, "not a DNS label"));
            }
            keys.labels.push(key.into());
        }
        for slug in &spec.slugs {
            let key = normalize_slug(slug).ok_or_else(|| {
                invalid(
                    &spec.id,
                    "slug",
                    slug,
                    "must start with '/' and hold only URL path characters",
                )
            })?;
            keys.slugs.push(key.into());
        }
        Ok(CompiledSpec { spec, keys })
    }

    fn into_route(self, state: Arc<RouteState>) -> Arc<Route> {
        let spec = self.spec;
        Arc::new(Route {
            id: Arc::clone(&spec.id),
            target: spec.target.clone(),
            strip_prefix: spec.strip_prefix,
            rewrite_host: spec.rewrite_host,
            paused: spec.paused,
            public: spec.public,
            access: spec.access.clone(),
            inactive: spec.inactive,
            tls_verify: spec.tls_verify,
            state,
            spec,
            keys: self.keys,
        })
    }
}

fn invalid(id: &str, what: &'static str, value: &str, reason: &'static str) -> TableError {
    TableError::Invalid {
        id: id.to_string(),
        what,
        value: value.to_string(),
        reason,
    }
}

fn conflict(what: &'static str, key: &str, first: &str, second: &str) -> TableError {
    TableError::Conflict {
        what,
        value: key.to_string(),
        first: first.to_string(),
        second: second.to_string(),
    }
}

/// log2 of [`SHARDS`].
const SHARD_BITS: u32 = 10;

/// Shards per map of a [`RouteTable`]. A table version copies this many
/// pointers for each map it changes, and each change copies the shards it
/// touches, about `routes / SHARDS` entries each: 1024 keeps a version of a
/// few changes to 100k routes at tens of microseconds (see `bench
/// table-updates`).
pub const SHARDS: usize = 1 << SHARD_BITS;

/// One shard: the full 64-bit hash of a name to that name and its route.
type Shard = Arc<HashMap<u64, (Name, Arc<Route>), BuildHasherDefault<HashIsKey>>>;

/// A name in a shard entry. Most names (labels, session ids, slugs) fit in
/// the entry itself, so comparing one during a lookup reads no other memory
/// and copying a shard touches no reference count for it.
#[derive(Clone)]
enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Shared(Arc<str>),
}

/// The longest name kept inline: the entry's name then takes no more room
/// than an `Arc<str>` and a tag.
const INLINE_NAME: usize = 22;

impl Name {
    fn new(name: Arc<str>) -> Name {
        let b = name.as_bytes();
        if b.len() > INLINE_NAME {
            return Name::Shared(name);
        }
        let mut bytes = [0u8; INLINE_NAME];
        bytes[..b.len()].copy_from_slice(b);
        Name::Inline {
            len: b.len() as u8,
            bytes,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Name::Shared(name) => name.as_bytes(),
        }
    }

    fn is(&self, key: &str) -> bool {
        self.as_bytes() == key.as_bytes()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

/// A map from a name (host, label, slug or id) to a route, split into
/// [`SHARDS`] copy-on-write shards so that a new table version shares every
/// shard it does not change with the previous one.
///
/// A lookup hashes the name once (SipHash with random keys, as `HashMap`
/// does): bits 32.. of the hash pick the shard, and the shard is keyed by the
/// whole hash, so it does not hash again. The cost over one `HashMap` lookup
/// is the pointer to the shard. Two names with the same 64-bit hash cannot
/// both sit in a shard; the second goes to `overflow`, which random keys keep
/// empty in practice but which makes a collision cost a lookup, never a route.
#[derive(Clone)]
pub(crate) struct RouteMap<S = RandomState> {
    hasher: S,
    len: usize,
    /// Shared too, so that a version that does not change this map does not
    /// copy even the shard pointers.
    shards: Arc<[Shard]>,
    /// Names whose hash is taken in its shard by another name. Invariant: the
    /// hash of every name here is in its shard.
    overflow: Arc<HashMap<Arc<str>, Arc<Route>>>,
}

impl<S: Default> Default for RouteMap<S> {
    fn default() -> Self {
        // Every slot starts as the same empty map; the first write to a slot
        // gives it its own.
        let empty: Shard = Arc::default();
        RouteMap {
            hasher: S::default(),
            len: 0,
            shards: vec![empty; SHARDS].into(),
            overflow: Arc::default(),
        }
    }
}

impl<S: BuildHasher> RouteMap<S> {
    pub(crate) fn get(&self, key: &str) -> Option<&Arc<Route>> {
        let hash = self.hasher.hash_one(key);
        match self.shards[shard_index(hash)].get(&hash) {
            Some((name, route)) if name.is(key) => Some(route),
            Some(_) => self.overflow.get(key),
            None => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts or replaces, copying the shard first if an older table shares it.
    fn insert(&mut self, key: Arc<str>, route: Arc<Route>) -> Option<Arc<Route>> {
        let hash = self.hasher.hash_one(&*key);
        let spine = Arc::make_mut(&mut self.shards);
        let shard = Arc::make_mut(&mut spine[shard_index(hash)]);
        let old = match shard.entry(hash) {
            hash_map::Entry::Vacant(slot) => {
                slot.insert((Name::new(key), route));
                None
            }
            hash_map::Entry::Occupied(mut slot) if slot.get().0.is(&key) => {
                Some(std::mem::replace(&mut slot.get_mut().1, route))
            }
            hash_map::Entry::Occupied(_) => Arc::make_mut(&mut self.overflow).insert(key, route),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Route>> {
        let hash = self.hasher.hash_one(key);
        let i = shard_index(hash);
        // Copy a shard only when there is something to remove from it.
        match self.shards[i].get(&hash) {
            None => return None,
            Some((name, _)) if !name.is(key) => {
                if !self.overflow.contains_key(key) {
                    return None;
                }
                self.len -= 1;
                return Arc::make_mut(&mut self.overflow).remove(key);
            }
            Some(_) => {}
        }
        let spine = Arc::make_mut(&mut self.shards);
        let shard = Arc::make_mut(&mut spine[i]);
        let (_, old) = shard.remove(&hash)?;
        self.len -= 1;
        // Keep the invariant: a name with this hash waiting in the overflow
        // takes the freed place.
        let waiting = self
            .overflow
            .keys()
            .find(|name| self.hasher.hash_one(&***name) == hash)
            .cloned();
        if let Some(name) = waiting {
            if let Some(route) = Arc::make_mut(&mut self.overflow).remove(&name) {
                shard.insert(hash, (Name::new(name), route));
            }
        }
        Some(old)
    }

    fn values(&self) -> RouteIter<'_> {
        RouteIter {
            shards: self.shards.iter(),
            current: None,
            overflow: self.overflow.values(),
            remaining: self.len,
        }
    }
}

/// Which shard holds a name with this hash. Not the low bits (the shard's own
/// table places entries by them) nor the top 7 (its probe filter uses them).
fn shard_index(hash: u64) -> usize {
    (hash >> 32) as usize & (SHARDS - 1)
}

/// The hasher of the shards, whose keys are already hashes.
#[derive(Clone, Copy, Default)]
struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; this keeps any other input well defined.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
}

impl<S> fmt::Debug for RouteMap<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.shards
                    .iter()
                    .flat_map(|s| s.values())
                    .map(|(name, route)| (name.clone(), &route.id))
                    .chain(
                        self.overflow
                            .iter()
                            .map(|(name, route)| (Name::Shared(Arc::clone(name)), &route.id)),
                    ),
            )
            .finish()
    }
}

/// Every route of a table, from [`RouteTable::routes`], in no particular order.
#[derive(Clone, Copy, Debug)]
pub struct Routes<'t> {
    map: &'t RouteMap,
}

impl<'t> Routes<'t> {
    pub fn iter(&self) -> RouteIter<'t> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<'t> IntoIterator for Routes<'t> {
    type Item = &'t Arc<Route>;
    type IntoIter = RouteIter<'t>;

    fn into_iter(self) -> RouteIter<'t> {
        self.iter()
    }
}

impl<'t> IntoIterator for &Routes<'t> {
    type Item = &'t Arc<Route>;
    type IntoIter = RouteIter<'t>;

    fn into_iter(self) -> RouteIter<'t> {
        self.iter()
    }
}

/// Iterator over a table's routes (see [`Routes`]).
#[derive(Debug)]
pub struct RouteIter<'t> {
    shards: std::slice::Iter<'t, Shard>,
    current: Option<hash_map::Values<'t, u64, (Name, Arc<Route>)>>,
    overflow: hash_map::Values<'t, Arc<str>, Arc<Route>>,
    /// Routes not yet returned, for an exact `size_hint`.
    remaining: usize,
}

impl<'t> Iterator for RouteIter<'t> {
    type Item = &'t Arc<Route>;

    fn next(&mut self) -> Option<&'t Arc<Route>> {
        loop {
            if let Some((_, route)) = self.current.as_mut().and_then(|c| c.next()) {
                self.remaining -= 1;
                return Some(route);
            }
            if self.remaining == 0 {
                return None;
            }
            match self.shards.next() {
                Some(shard) => self.current = Some(shard.values()),
                None => {
                    let route = self.overflow.next()?;
                    self.remaining -= 1;
                    return Some(route);
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for RouteIter<'_> {}

impl FusedIterator for RouteIter<'_> {}

/// An absolute `http`/`https` URL that can be sent as a `Location` header.
pub fn is_redirect_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && http::HeaderValue::from_str(url).is_ok()
}

/// Lower-cases a hostname and drops one trailing dot.
pub(crate) fn normalize_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

fn valid_hostname(id: &str, what: &'static str, host: &str) -> Result<String, TableError> {
    let key = normalize_name(host);
    if key.is_empty() || key.len() > 253 || !key.split('.').all(is_dns_label) {
        return Err(invalid(id, what, host, "not a valid hostname"));
    }
    Ok(key)
}

/// RFC 1123 label: 1–63 of `a-z0-9-`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// `/lab/` → `/lab`, `/` → `` (the root slug). `None` if it is not a path.
pub(crate) fn normalize_slug(slug: &str) -> Option<String> {
    if !slug.starts_with('/') || slug.contains("//") {
        return None;
    }
    let ok = slug
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%".contains(&c));
    let slug = slug.trim_end_matches('/');
    if !ok || slug.matches('/').count() > crate::router::MAX_SLUG_SEGMENTS {
        return None;
    }
    Some(slug.to_string())
}

/// The shared handle through which the data plane reads the current table and
/// the control plane publishes new ones.
#[derive(Clone, Debug)]
pub struct RouteHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    table: ArcSwap<RouteTable>,
    /// Serialises publishers so that version numbers and carried state are
    /// consistent; readers never take it.
    publish: Mutex<()>,
}

impl Default for RouteHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteHandle {
    /// A handle holding an empty table (every request answers 404).
    pub fn new() -> Self {
        RouteHandle {
            inner: Arc::new(HandleInner {
                table: ArcSwap::from_pointee(RouteTable::default()),
                publish: Mutex::new(()),
            }),
        }
    }

    /// The current table: one atomic load.
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.inner.table.load()
    }

    /// The current table as an owned `Arc` (for long-lived readers).
    pub fn current(&self) -> Arc<RouteTable> {
        self.inner.table.load_full()
    }

    /// Compiles `specs` and swaps the result in. On error the current table
    /// keeps serving and is returned untouched.
    pub fn publish(
        &self,
        settings: &TableSettings,
        specs: Vec<RouteSpec>,
    ) -> Result<Arc<RouteTable>, TableError> {
        let _serial = self.inner.publish.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.inner.table.load_full();
        let table = Arc::new(RouteTable::build(
            settings,
            specs,
            Some(&previous),
            previous.version + 1,
        )?);
        self.inner.table.store(Arc::clone(&table));
        Ok(table)
    }

    /// Applies `changes`, and `settings` when given, as one new table version.
    /// All or nothing: if one change is invalid or conflicts, the current table
    /// keeps serving untouched. The new version shares every shard the changes
    /// do not touch with the current one, so this costs the changes, not the
    /// table (see [`RouteTable`]'s storage notes).
    pub fn apply(
        &self,
        settings: Option<&TableSettings>,
        changes: Vec<RouteChange>,
    ) -> Result<Arc<RouteTable>, TableError> {
        let _serial = self.inner.publish.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.inner.table.load_full();
        let mut next = previous.successor(settings, previous.version + 1);
        next.apply_changes(changes)?;
        let next = Arc::new(next);
        self.inner.table.store(Arc::clone(&next));
        Ok(next)
    }

    /// Applies several groups of changes, in order, as one new table version,
    /// each group all or nothing on its own: a group that is invalid or
    /// conflicts (with the table as the groups before it left it) is skipped
    /// and gets its error, and the others go ahead. The new version is stored
    /// before this returns; when no group changed anything, none is made.
    pub(crate) fn apply_each(&self, groups: Vec<Vec<RouteChange>>) -> AppliedGroups {
        let _serial = self.inner.publish.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.inner.table.load_full();
        let mut next = previous.successor(None, previous.version + 1);
        let mut changed = false;
        let results: Vec<Result<(), TableError>> = groups
            .into_iter()
            .map(|changes| {
                let nonempty = !changes.is_empty();
                let result = next.apply_changes(changes);
                changed |= nonempty && result.is_ok();
                result
            })
            .collect();
        let version = if changed {
            let version = next.version;
            self.inner.table.store(Arc::new(next));
            version
        } else {
            previous.version
        };
        AppliedGroups {
            version,
            results,
            previous,
        }
    }
}

/// What [`RouteHandle::apply_each`] did.
pub(crate) struct AppliedGroups {
    /// The version at which the successful groups are visible.
    pub(crate) version: u64,
    /// One per group, in order.
    pub(crate) results: Vec<Result<(), TableError>>,
    /// The version that was current before, handed back so that the caller
    /// can answer first and free it after (the last reference to an old
    /// version costs thousands of reference-count updates to drop).
    pub(crate) previous: Arc<RouteTable>,
}

#[cfg(test)]
mod tests {
    use testkit::XorShift;

    use super::*;

    pub(crate) fn spec(id: &str) -> RouteSpec {
        let target = RouteTarget::Upstream(Upstream::parse("http://127.0.0.1:1").unwrap());
        RouteSpec::new(id, target).label(id)
    }

    #[test]
    fn upstream_parse_accepts_scheme_host_port_only() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("http://127.0.0.1:9001", Ok("http://127.0.0.1:9001")),
            (
                "https://app.internal:8443/",
                Ok("https://app.internal:8443"),
            ),
            ("http://[::1]:80", Ok("http://[::1]:80")),
            ("ftp://x:1", Err("scheme")),
            ("127.0.0.1:9001", Err("scheme")),
            ("http://h:1/path", Err("path")),
            ("http://u:p@h:1", Err("user info")),
            ("not a url", Err("not a URL")),
        ];
        for (input, want) in cases {
            match (Upstream::parse(input), want) {
                (Ok(u), Ok(s)) => assert_eq!(u.to_string(), *s, "{input}"),
                (Err(e), Err(frag)) => assert!(e.contains(frag), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn state_carries_over_by_id_across_publishes() {
        let handle = RouteHandle::new();
        let settings = TableSettings::default();
        let t1 = handle
            .publish(&settings, vec![spec("a"), spec("b")])
            .unwrap();
        t1.route("a").unwrap().state.touch();
        let before = t1.route("a").unwrap().state.last_activity_ms();
        assert!(before.is_some());
        let mut changed = spec("a");
        changed.paused = true;
        let t2 = handle.publish(&settings, vec![changed]).unwrap();
        assert_eq!(t2.version(), t1.version() + 1);
        let a = t2.route("a").unwrap();
        assert!(a.paused);
        assert!(Arc::ptr_eq(&a.state, &t1.route("a").unwrap().state));
        assert_eq!(a.state.last_activity_ms(), before);
        assert!(t2.route("b").is_none());
    }

    #[test]
    fn invalid_specs_are_refused_and_table_kept() {
        let handle = RouteHandle::new();
        let settings = TableSettings::default();
        handle.publish(&settings, vec![spec("a")]).unwrap();
        let mut dup = spec("b");
        dup.labels = vec!["a".into()];
        let err = handle.publish(&settings, vec![spec("a"), dup]).unwrap_err();
        assert!(err.to_string().contains("claimed by both"), "{err}");
        let mut bad = spec("c");
        bad.slugs = vec!["lab".into()];
        let err = handle.publish(&settings, vec![bad]).unwrap_err();
        assert!(err.to_string().contains("slug"), "{err}");
        let mut bad_host = spec("d");
        bad_host.hosts = vec!["a b.example".into()];
        assert!(handle.publish(&settings, vec![bad_host]).is_err());
        assert!(handle
            .publish(&settings, vec![spec("x"), spec("x")])
            .is_err());
        assert_eq!(handle.load().version(), 1);
        assert!(handle.load().route("a").is_some());
    }

    #[test]
    fn apply_upserts_and_removes_by_id_and_keeps_state() {
        let handle = RouteHandle::new();
        let settings = TableSettings {
            base_domains: vec!["example.test".into()],
            portal_host: None,
        };
        handle
            .publish(&settings, vec![spec("a"), spec("b")])
            .unwrap();
        let state_a = Arc::clone(&handle.load().route("a").unwrap().state);
        let mut paused = spec("a");
        paused.paused = true;
        let t = handle
            .apply(
                None,
                vec![
                    RouteChange::Upsert(paused),
                    RouteChange::Remove("b".into()),
                    RouteChange::Upsert(spec("c")),
                    RouteChange::Remove("missing".into()),
                ],
            )
            .unwrap();
        assert_eq!(t.version(), 2);
        assert!(t.route("a").unwrap().paused);
        assert!(Arc::ptr_eq(&t.route("a").unwrap().state, &state_a));
        assert!(t.route("b").is_none());
        assert!(t.route("c").is_some());
        assert_eq!(t.base_domains().collect::<Vec<_>>(), ["example.test"]);

        // A conflicting change refuses the whole call.
        let mut clash = spec("d");
        clash.labels = vec!["c".into()];
        let err = handle
            .apply(
                None,
                vec![RouteChange::Remove("a".into()), RouteChange::Upsert(clash)],
            )
            .unwrap_err();
        assert!(err.to_string().contains("claimed by both"), "{err}");
        assert_eq!(handle.load().version(), 2);
        assert!(handle.load().route("a").is_some());
    }

    #[test]
    fn redirect_targets_must_be_absolute_http_urls() {
        let handle = RouteHandle::new();
        for bad in ["/relative", "ftp://x/", "https://", "http://a b/"] {
            let mut s = spec("l");
            s.target = RouteTarget::Redirect(bad.into());
            assert!(
                handle.publish(&TableSettings::default(), vec![s]).is_err(),
                "{bad}"
            );
        }
        let mut s = spec("l");
        s.target = RouteTarget::Redirect("https://docs.example.com/x?y=1".into());
        handle.publish(&TableSettings::default(), vec![s]).unwrap();
    }

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

    #[test]
    fn apply_frees_a_removed_routes_keys_for_another_route() {
        let handle = RouteHandle::new();
        let settings = TableSettings::default();
        let mut a = spec("a");
        a.hosts = vec!["App.Example.test".into()];
        a.slugs = vec!["/a/".into()];
        handle.publish(&settings, vec![a, spec("b")]).unwrap();
        let mut taker = spec("taker");
        taker.labels = vec!["a".into()];
        taker.hosts = vec!["app.example.test".into()];
        taker.slugs = vec!["/a".into()];

        // While "a" holds them, the keys are refused, and the table stays.
        let before = handle.current();
        let err = handle
            .apply(None, vec![RouteChange::Upsert(taker.clone())])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"is claimed by both route "a" and route "taker""#),
            "{err}"
        );
        assert!(Arc::ptr_eq(&before, &handle.current()));

        // Removed, in the same call or an earlier one, they are free.
        let t = handle
            .apply(
                None,
                vec![
                    RouteChange::Upsert(taker.clone()),
                    RouteChange::Remove("a".into()),
                ],
            )
            .unwrap();
        assert!(t.route("a").is_none());
        assert_eq!(t.len(), 2);
        assert_eq!(&*t.hosts.get("app.example.test").unwrap().id, "taker");
        assert_eq!(&*t.labels.get("a").unwrap().id, "taker");
        assert_eq!(&*t.slugs.get("/a").unwrap().id, "taker");
        assert_eq!((t.hosts.len(), t.labels.len(), t.slugs.len()), (1, 2, 1));

        // Replacing a route by id frees the keys it no longer has.
        let mut moved = taker;
        moved.labels = vec!["elsewhere".into()];
        let t = handle
            .apply(None, vec![RouteChange::Upsert(moved)])
            .unwrap();
        assert!(t.labels.get("a").is_none());
        let t = handle
            .apply(None, vec![RouteChange::Upsert(spec("a"))])
            .unwrap();
        assert_eq!(&*t.labels.get("a").unwrap().id, "a");
        // The earlier versions still answer as they did.
        assert_eq!(&*before.labels.get("a").unwrap().id, "a");
        assert!(before.labels.get("elsewhere").is_none());
    }

    #[test]
    fn apply_refuses_invalid_changes_and_keeps_the_table() {
        let handle = RouteHandle::new();
        handle
            .publish(&TableSettings::default(), vec![spec("a"), spec("b")])
            .unwrap();
        let before = handle.current();
        let mut two_claims = spec("c");
        two_claims.labels = vec!["c".into(), "C".into()];
        let mut no_matcher = spec("d");
        no_matcher.labels.clear();
        let mut bad_label = spec("e");
        bad_label.labels = vec!["not_a_label".into()];
        let mut bad_slug = spec("f");
        bad_slug.slugs = vec!["f".into()];
        let mut bad_redirect = spec("g");
        bad_redirect.target = RouteTarget::Redirect("/relative".into());
        let mut clash_new = spec("h");
        clash_new.labels = vec!["shared".into()];
        let mut clash_new2 = spec("i");
        clash_new2.labels = vec!["shared".into()];
        let cases: Vec<(Vec<RouteChange>, &str)> = vec![
            (
                vec![RouteChange::Upsert(two_claims)],
                r#"label "c" is claimed by both route "c" and route "c""#,
            ),
            (
                vec![RouteChange::Upsert(no_matcher)],
                "has no host, label or slug",
            ),
            (
                vec![RouteChange::Upsert(bad_label)],
                "invalid label \"not_a_label\"",
            ),
            (vec![RouteChange::Upsert(bad_slug)], "invalid slug"),
            (vec![RouteChange::Upsert(bad_redirect)], "invalid redirect"),
            (
                vec![
                    RouteChange::Remove("a".into()),
                    RouteChange::Upsert(clash_new),
                    RouteChange::Upsert(clash_new2),
                ],
                r#"label "shared" is claimed by both route "h" and route "i""#,
            ),
        ];
        for (changes, want) in cases {
            let err = handle.apply(None, changes).unwrap_err();
            assert!(err.to_string().contains(want), "{err} (want {want})");
            assert!(Arc::ptr_eq(&before, &handle.current()));
        }
        assert_eq!(handle.load().len(), 2);
        assert!(handle.load().route("a").is_some());
    }

    #[test]
    fn apply_changes_settings_without_touching_routes() {
        let handle = RouteHandle::new();
        handle
            .publish(&TableSettings::default(), vec![spec("a")])
            .unwrap();
        let settings = TableSettings {
            base_domains: vec!["Sessions.Example.".into()],
            portal_host: Some("Portal.Example".into()),
        };
        let t = handle.apply(Some(&settings), vec![]).unwrap();
        assert_eq!(t.base_domains().collect::<Vec<_>>(), ["sessions.example"]);
        assert_eq!(t.portal_host(), Some("portal.example"));
        let m = crate::router::lookup(&t, "a.sessions.example", "/").unwrap();
        assert_eq!(&*m.route.id, "a");
        // Later changes keep the settings.
        let t = handle
            .apply(None, vec![RouteChange::Upsert(spec("b"))])
            .unwrap();
        assert_eq!(t.portal_host(), Some("portal.example"));
        assert_eq!(t.settings().base_domains, ["Sessions.Example."]);
    }

    #[test]
    fn routes_iterates_every_route_once() {
        let specs: Vec<RouteSpec> = (0..3000).map(|i| spec(&format!("r{i}"))).collect();
        let t = RouteTable::build(&TableSettings::default(), specs, None, 1).unwrap();
        assert_eq!(t.len(), 3000);
        let routes = t.routes();
        assert_eq!((routes.len(), routes.iter().len()), (3000, 3000));
        let mut ids: Vec<&str> = routes.iter().map(|r| &*r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3000);
        assert!(ids.iter().all(|id| t.route(id).is_some()));
        assert_eq!(RouteTable::default().routes().iter().count(), 0);
    }

    #[test]
    fn shards_stay_balanced_for_similar_names() {
        // Session names differ in a few characters; the shard hash must still
        // spread them, or updates would copy oversized shards.
        let mut map = RouteMap::<RandomState>::default();
        let route = RouteTable::build(&TableSettings::default(), vec![spec("x")], None, 1)
            .unwrap()
            .route("x")
            .cloned()
            .unwrap();
        let n = 100 * SHARDS;
        for i in 0..n {
            map.insert(
                format!("user{}-lab-{i:06}", i % 37).into(),
                Arc::clone(&route),
            );
        }
        let largest = map.shards.iter().map(|s| s.len()).max().unwrap();
        assert!(largest < 200, "largest shard {largest}, mean 100");
        assert_eq!(map.len(), n);
    }

    /// Hashes a name to its length: names of one length collide.
    #[derive(Default)]
    struct LengthHasher(u64);

    impl Hasher for LengthHasher {
        fn finish(&self) -> u64 {
            self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        }

        fn write(&mut self, bytes: &[u8]) {
            self.0 += bytes.len() as u64;
        }
    }

    #[test]
    fn names_with_one_hash_all_keep_their_routes() {
        let table = RouteTable::build(
            &TableSettings::default(),
            vec![spec("r1"), spec("r2"), spec("r3"), spec("r4")],
            None,
            1,
        )
        .unwrap();
        let r = |id: &str| Arc::clone(table.route(id).unwrap());
        let mut map = RouteMap::<BuildHasherDefault<LengthHasher>>::default();
        for (name, id) in [("aa", "r1"), ("bb", "r2"), ("cc", "r3"), ("ddd", "r4")] {
            assert!(map.insert(name.into(), r(id)).is_none());
        }
        assert_eq!(map.len(), 4);
        assert_eq!(map.overflow.len(), 2, "two of the three two-letter names");
        let before = map.clone();
        assert_eq!(&*map.insert("bb".into(), r("r4")).unwrap().id, "r2");
        assert_eq!(map.len(), 4);
        let ids = |m: &RouteMap<_>| {
            ["aa", "bb", "cc", "ddd", "ee"].map(|n| m.get(n).map(|r| r.id.to_string()))
        };
        assert_eq!(
            ids(&map),
            [Some("r1"), Some("r4"), Some("r3"), Some("r4"), None].map(|s| s.map(String::from))
        );
        // Whichever of them holds the shard's place, removing it lets the
        // others be found.
        for name in ["aa", "bb", "cc"] {
            assert!(map.remove(name).is_some(), "{name}");
            assert!(map.get(name).is_none(), "{name}");
            assert!(map.remove(name).is_none(), "{name}");
        }
        assert_eq!(map.len(), 1);
        assert!(map.overflow.is_empty());
        assert_eq!(&*map.get("ddd").unwrap().id, "r4");
        assert_eq!(map.values().len(), 1);
        // The copy taken before is as it was.
        assert_eq!(
            ids(&before),
            [Some("r1"), Some("r2"), Some("r3"), Some("r4"), None].map(|s| s.map(String::from))
        );
        let mut all: Vec<String> = before.values().map(|r| r.id.to_string()).collect();
        all.sort();
        assert_eq!(all, ["r1", "r2", "r3", "r4"]);
    }

    /// A random spec over small pools of names, so that conflicts and
    /// key moves between routes are frequent; now and then an invalid one.
    fn random_spec(rng: &mut XorShift, id: usize, pool: usize) -> RouteSpec {
        let mut s = spec(&format!("r{id}"));
        s.labels.clear();
        for _ in 0..rng.below(3) {
            let label = format!("l{}", rng.below(pool));
            s.labels.push(if rng.chance(20) {
                label.to_uppercase()
            } else {
                label
            });
        }
        if rng.chance(30) {
            s.hosts.push(format!("h{}.test.", rng.below(pool / 4 + 1)));
        }
        if rng.chance(30) {
            let slug = match rng.below(3) {
                0 => format!("/s{}", rng.below(pool / 2 + 1)),
                1 => format!("/s{}/x/", rng.below(pool / 2 + 1)),
                _ => "/".to_string(),
            };
            s.slugs.push(slug);
        }
        if s.labels.is_empty() && s.hosts.is_empty() && s.slugs.is_empty() && !rng.chance(5) {
            s.labels.push(format!("l{}", rng.below(pool)));
        }
        if rng.chance(2) {
            s.labels.push("bad_label".into());
        }
        s.paused = rng.chance(50);
        s.target = RouteTarget::Upstream(
            Upstream::parse(&format!("http://10.0.0.{}:80", rng.below(250))).unwrap(),
        );
        s
    }

    /// Every lookup the random specs can produce answers the same in both.
    fn assert_same_lookups(got: &RouteTable, want: &RouteTable, pool: usize) {
        assert_eq!(got.len(), want.len());
        assert_eq!(got.hosts.len(), want.hosts.len());
        assert_eq!(got.labels.len(), want.labels.len());
        assert_eq!(got.slugs.len(), want.slugs.len());
        for r in want.routes().iter().filter(|r| r.id.starts_with('r')) {
            let g = got.route(&r.id).expect("route present in both");
            assert_eq!(format!("{:?}", g.spec), format!("{:?}", r.spec));
            assert_eq!(g.paused, r.paused);
        }
        let mut requests: Vec<(String, String)> = Vec::new();
        // A sample of the untouched base routes (see apply_matches_full_build).
        for i in (0..want.len()).step_by(97) {
            requests.push((format!("b{i}.example.test"), "/".into()));
            requests.push(("portal.test".into(), format!("/b{i}/lab")));
        }
        for i in 0..pool {
            requests.push((format!("l{i}.example.test"), "/".into()));
            requests.push((format!("h{i}.test"), "/".into()));
            requests.push(("portal.test".into(), format!("/s{i}")));
            requests.push(("portal.test".into(), format!("/s{i}/x/y")));
        }
        for (host, path) in &requests {
            let g = crate::router::lookup(got, host, path).map(|m| (&*m.route.id, m.prefix_len));
            let w = crate::router::lookup(want, host, path).map(|m| (&*m.route.id, m.prefix_len));
            assert_eq!(g, w, "{host}{path}");
        }
    }

    /// Drives `RouteHandle::apply` with random changes and checks every
    /// version against a full build of the same specs, done the way `apply`
    /// used to (the last change to an id wins; a new id goes last). `base`
    /// routes that the changes leave alone fill the shards first, so that
    /// copy-on-write copies shards with content.
    fn apply_matches_full_build(seed: u64, ids: usize, pool: usize, base: usize, rounds: usize) {
        let mut rng = XorShift(seed);
        let settings = TableSettings {
            base_domains: vec!["example.test".into()],
            portal_host: Some("portal.test".into()),
        };
        let mut model: Vec<RouteSpec> = (0..base)
            .map(|i| {
                let mut s = spec(&format!("b{i}"));
                if i.is_multiple_of(7) {
                    s.slugs.push(format!("/b{i}"));
                }
                s
            })
            .collect();
        let handle = RouteHandle::new();
        handle.publish(&settings, model.clone()).unwrap();
        let mut want = RouteTable::build(&settings, model.clone(), None, 0).unwrap();
        let (mut applied, mut refused) = (0, 0);
        for round in 0..rounds {
            let n = 1 + rng.below(if round.is_multiple_of(10) { 40 } else { 4 });
            let changes: Vec<RouteChange> = (0..n)
                .map(|_| {
                    let id = rng.below(ids);
                    if rng.chance(25) {
                        RouteChange::Remove(format!("r{id}").into())
                    } else {
                        RouteChange::Upsert(random_spec(&mut rng, id, pool))
                    }
                })
                .collect();
            let mut next = model.clone();
            for change in &changes {
                match change {
                    RouteChange::Upsert(s) => match next.iter_mut().find(|m| m.id == s.id) {
                        Some(m) => *m = s.clone(),
                        None => next.push(s.clone()),
                    },
                    RouteChange::Remove(id) => next.retain(|m| m.id != *id),
                }
            }
            let before = handle.current();
            let expected = RouteTable::build(&settings, next.clone(), None, 0);
            match (handle.apply(None, changes), expected) {
                (Ok(got), Ok(expected)) => {
                    applied += 1;
                    assert_eq!(got.version(), before.version() + 1);
                    assert_same_lookups(&got, &expected, pool);
                    for r in got.routes() {
                        if let Some(old) = before.route(&r.id) {
                            assert!(Arc::ptr_eq(&r.state, &old.state), "{}", r.id);
                        }
                    }
                    // The previous version was not written to.
                    assert_same_lookups(&before, &want, pool);
                    model = next;
                    want = expected;
                }
                (Err(_), Err(_)) => {
                    refused += 1;
                    assert!(Arc::ptr_eq(&before, &handle.current()));
                }
                (got, expected) => panic!(
                    "round {round}: apply gave {:?}, a full build {:?}",
                    got.err(),
                    expected.err()
                ),
            }
        }
        // Both outcomes must have been exercised for the test to mean anything.
        assert!(applied > rounds / 10, "{applied} applied");
        assert!(refused > rounds / 10, "{refused} refused");
        assert_same_lookups(&handle.current(), &want, pool);
    }

    #[test]
    fn incremental_apply_matches_a_full_build_small_pools() {
        apply_matches_full_build(0x9e37_79b9_7f4a_7c15, 60, 80, 0, 1500);
    }

    #[test]
    fn incremental_apply_matches_a_full_build_many_routes() {
        apply_matches_full_build(0x0123_4567_89ab_cdef, 1000, 1500, 5000, 120);
    }
}
