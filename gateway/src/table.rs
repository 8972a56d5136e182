//! The routing table the data plane reads, and the handle that swaps it.
//!
//! A [`RouteTable`] is immutable once built. The control plane (or the static
//! configuration loader) compiles a list of [`RouteSpec`]s into a new table and
//! [`RouteHandle::publish`]es it; every request does exactly one atomic load of
//! the current table. Per-route runtime state — the last-activity clock and the
//! set of live upgraded connections — lives in [`RouteState`], which is carried
//! from one table version to the next by route id, so activity and revocation
//! keep working across swaps.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// Anyone may use it. A route that is not public needs a signed-in,
    /// authorised browser; until browser access exists it answers 403.
    pub public: bool,
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
    pub state: Arc<RouteState>,
    /// The spec it was built from, for `GET /api/v1/routes`.
    pub spec: RouteSpec,
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
    user: Option<Arc<str>>,
    close: watch::Sender<bool>,
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
        self.lock_upgraded().conns.len()
    }

    /// Closes every live upgraded connection on this route. Returns how many.
    pub fn close_upgraded(&self) -> usize {
        self.close_upgraded_where(|_| true)
    }

    /// Closes the live upgraded connections opened by `user`. Returns how many.
    pub fn close_upgraded_for_user(&self, user: &str) -> usize {
        self.close_upgraded_where(|u| u.is_some_and(|u| &**u == user))
    }

    fn close_upgraded_where(&self, pred: impl Fn(Option<&Arc<str>>) -> bool) -> usize {
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

    /// Registers an upgraded connection; the guard unregisters it when dropped.
    pub(crate) fn register_upgraded(
        self: &Arc<Self>,
        user: Option<Arc<str>>,
    ) -> (UpgradedGuard, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let mut set = self.lock_upgraded();
        let id = set.next_id;
        set.next_id += 1;
        set.conns.insert(id, UpgradedEntry { user, close: tx });
        drop(set);
        (
            UpgradedGuard {
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

/// Removes an upgraded connection from its route's set when the tunnel ends.
pub(crate) struct UpgradedGuard {
    state: Arc<RouteState>,
    id: u64,
}

impl Drop for UpgradedGuard {
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
    pub(crate) hosts: HashMap<Box<str>, Arc<Route>>,
    pub(crate) labels: HashMap<Box<str>, Arc<Route>>,
    /// Slugs without a trailing slash; the root slug is `""`.
    pub(crate) slugs: HashMap<Box<str>, Arc<Route>>,
    pub(crate) routes: Vec<Arc<Route>>,
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

    /// Every route, in the order given to the builder.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route with this id, if any.
    pub fn route(&self, id: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.id == id)
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

    /// Compiles `specs` into a table. Runtime state is taken from `previous` for
    /// every route id it already has, so activity and live connections carry over.
    pub fn build(
        settings: &TableSettings,
        specs: Vec<RouteSpec>,
        previous: Option<&RouteTable>,
        version: u64,
    ) -> Result<RouteTable, TableError> {
        let prev_state: HashMap<&str, &Arc<RouteState>> = previous
            .map(|t| t.routes.iter().map(|r| (&*r.id, &r.state)).collect())
            .unwrap_or_default();

        let mut table = RouteTable {
            version,
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
            ..RouteTable::default()
        };
        let mut ids = HashMap::new();
        for spec in specs {
            if ids.insert(spec.id.clone(), ()).is_some() {
                return Err(TableError::DuplicateId(spec.id.to_string()));
            }
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
            let state = prev_state
                .get(&*spec.id)
                .map(|s| Arc::clone(s))
                .unwrap_or_default();
            let route = Arc::new(Route {
                id: spec.id.clone(),
                target: spec.target.clone(),
                strip_prefix: spec.strip_prefix,
                rewrite_host: spec.rewrite_host,
                paused: spec.paused,
                public: spec.public,
                state,
                spec,
            });
            for host in &route.spec.hosts {
                let key = valid_hostname(&route.id, "host", host)?;
                insert_unique(&mut table.hosts, "host", key, &route)?;
            }
            for label in &route.spec.labels {
                let key = normalize_name(label);
                if !is_dns_label(&key) {
                    return Err(invalid(&route.id, "label", label, "not a DNS label"));
                }
                insert_unique(&mut table.labels, "label", key, &route)?;
            }
            for slug in &route.spec.slugs {
                let key = normalize_slug(slug).ok_or_else(|| {
                    invalid(
                        &route.id,
                        "slug",
                        slug,
                        "must start with '/' and hold only URL path characters",
                    )
                })?;
                insert_unique(&mut table.slugs, "slug", key, &route)?;
            }
            table.routes.push(route);
        }
        Ok(table)
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

fn insert_unique(
    map: &mut HashMap<Box<str>, Arc<Route>>,
    what: &'static str,
    key: String,
    route: &Arc<Route>,
) -> Result<(), TableError> {
    if let Some(existing) = map.get(key.as_str()) {
        return Err(TableError::Conflict {
            what,
            value: key,
            first: existing.id.to_string(),
            second: route.id.to_string(),
        });
    }
    map.insert(key.into_boxed_str(), Arc::clone(route));
    Ok(())
}

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
    /// keeps serving untouched.
    pub fn apply(
        &self,
        settings: Option<&TableSettings>,
        changes: Vec<RouteChange>,
    ) -> Result<Arc<RouteTable>, TableError> {
        let _serial = self.inner.publish.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.inner.table.load_full();
        let mut specs: Vec<Option<RouteSpec>> = previous
            .routes
            .iter()
            .map(|r| Some(r.spec.clone()))
            .collect();
        let mut index: HashMap<Arc<str>, usize> = previous
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        for change in changes {
            match change {
                RouteChange::Upsert(spec) => match index.get(&spec.id) {
                    Some(&i) => specs[i] = Some(spec),
                    None => {
                        index.insert(spec.id.clone(), specs.len());
                        specs.push(Some(spec));
                    }
                },
                RouteChange::Remove(id) => {
                    if let Some(i) = index.remove(&id) {
                        specs[i] = None;
                    }
                }
            }
        }
        let settings = settings.unwrap_or(&previous.settings);
        let table = Arc::new(RouteTable::build(
            settings,
            specs.into_iter().flatten().collect(),
            Some(&previous),
            previous.version + 1,
        )?);
        self.inner.table.store(Arc::clone(&table));
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(id: &str) -> RouteSpec {
        RouteSpec {
            id: id.into(),
            hosts: vec![],
            labels: vec![id.to_string()],
            slugs: vec![],
            target: RouteTarget::Upstream(Upstream::parse("http://127.0.0.1:1").unwrap()),
            strip_prefix: false,
            rewrite_host: false,
            paused: false,
            public: true,
        }
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
    fn close_upgraded_for_user_closes_only_theirs() {
        let state = Arc::new(RouteState::default());
        let (g1, mut rx1) = state.register_upgraded(Some("alice".into()));
        let (g2, rx2) = state.register_upgraded(Some("bob".into()));
        assert_eq!(state.upgraded_count(), 2);
        assert_eq!(state.close_upgraded_for_user("alice"), 1);
        assert!(*rx1.borrow_and_update());
        assert!(!*rx2.borrow());
        drop(g1);
        assert_eq!(state.upgraded_count(), 1);
        assert_eq!(state.close_upgraded(), 1);
        assert!(*rx2.borrow());
        drop(g2);
        assert_eq!(state.upgraded_count(), 0);
    }
}
