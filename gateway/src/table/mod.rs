//! The routing table the data plane reads, and the handle that swaps it.
//!
//! A [`RouteTable`] is immutable once built. The control plane (or the static
//! configuration loader) compiles a list of [`RouteSpec`]s into a new table and
//! [`RouteHandle::publish`]es it; every request does exactly one atomic load of
//! the current table. Per-route runtime state — the last-activity clock, the
//! revocations and the live upgraded connections — lives in [`RouteState`],
//! which is carried from one table version to the next by route id, so activity
//! and revocation keep working across swaps. A table is a few sharded
//! copy-on-write maps, so a new version costs its changes, not the table (see
//! the storage notes in `map`).
//!
//! - `route`: [`Upstream`], [`RouteTarget`], [`RouteSpec`] and its builder, [`Route`].
//! - `state`: [`RouteState`], the live connections of a route and its
//!   revocations.
//! - `revocation`: how a revocation reaches what a route let in before it:
//!   the clock, a route's admission, what a request holds, and the bodies
//!   waiting for their upstream.
//! - `map`: `RouteMap`, the sharded copy-on-write map, and [`Routes`], the
//!   view that iterates one.
//! - here: [`RouteTable`], built whole ([`RouteTable::build`]) or changed
//!   ([`RouteChange`]), its [`TableSettings`] and [`TableError`].
//! - `handle`: [`RouteHandle`], the `ArcSwap` every reader loads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::names::{self, normalize_name};

mod handle;
mod map;
pub(crate) mod revocation;
mod route;
mod state;

pub use handle::{FollowError, RouteHandle, TableChange, TableObserver};
pub(crate) use map::RouteMap;
pub use map::{RouteIter, Routes, SHARDS};
use route::RouteKeys;
pub use route::{
    is_redirect_url, unix_path_of, Route, RouteSpec, RouteTarget, Upstream, UpstreamError,
};
pub use state::RouteState;

/// Kept here for the callers that found it with the table's validation.
pub use crate::names::is_dns_label;

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
        self.routes.routes()
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
            let (route, keys) = compiled.into_route(state);
            for (what, map, keys) in [
                ("host", &mut table.hosts, &keys.hosts),
                ("label", &mut table.labels, &keys.labels),
                ("slug", &mut table.slugs, &keys.slugs),
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
            let (route, keys) = c.into_route(state);
            for (map, keys) in [
                (&mut self.hosts, &keys.hosts),
                (&mut self.labels, &keys.labels),
                (&mut self.slugs, &keys.slugs),
            ] {
                for key in keys {
                    map.insert(Arc::clone(key), Arc::clone(&route));
                }
            }
            self.routes.insert(Arc::clone(&route.id), route);
        }
        Ok(())
    }

    /// Removes the keys `route` is filed under: its spec's, normalised
    /// again (the same pure functions that filed it, so the same keys).
    fn unfile(&mut self, route: &Route) {
        let keys = RouteKeys::of(&route.spec);
        for (map, keys) in [
            (&mut self.hosts, &keys.hosts),
            (&mut self.labels, &keys.labels),
            (&mut self.slugs, &keys.slugs),
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
            if !names::is_dns_label(&key) {
                return Err(invalid(&spec.id, "label", label, "not a DNS label"));
            }
            keys.labels.push(key.into());
        }
        for slug in &spec.slugs {
            let key = names::normalize_slug(slug).map_err(|_| {
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

    /// The route, and the keys to file it under.
    fn into_route(self, state: Arc<RouteState>) -> (Arc<Route>, RouteKeys) {
        (
            Arc::new(Route {
                spec: self.spec,
                state,
            }),
            self.keys,
        )
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

fn valid_hostname(id: &str, what: &'static str, host: &str) -> Result<String, TableError> {
    let key = normalize_name(host);
    if !names::is_hostname(&key) {
        return Err(invalid(id, what, host, "not a valid hostname"));
    }
    Ok(key)
}

/// A public route `id`, matched by the label `id`, to an upstream nobody
/// listens on: what most unit tests start from.
#[cfg(test)]
pub(crate) fn test_spec(id: &str) -> RouteSpec {
    let upstream = Upstream::parse("http://127.0.0.1:1").unwrap();
    RouteSpec::new(id, RouteTarget::Upstream(upstream)).label(id)
}

#[cfg(test)]
mod tests {
    use testkit::XorShift;

    use super::*;
    use crate::table::test_spec as spec;

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

    /// A route keeps no copy of its normalised keys: removing or replacing
    /// one normalises its spec's names again, and must free exactly the keys
    /// it was filed under, whatever case and trailing dots or slashes the
    /// spec spelled them with.
    #[test]
    fn removing_a_route_frees_its_keys_as_normalised_from_the_spec() {
        let handle = RouteHandle::new();
        let mut odd = spec("odd");
        odd.hosts = vec!["App.Example.TEST.".into()];
        odd.labels = vec!["Odd".into()];
        odd.slugs = vec!["/Lab/".into()];
        let t = handle
            .publish(&TableSettings::default(), vec![odd, spec("other")])
            .unwrap();
        assert_eq!(&*t.hosts.get("app.example.test").unwrap().id, "odd");
        assert_eq!(&*t.labels.get("odd").unwrap().id, "odd");
        assert_eq!(&*t.slugs.get("/Lab").unwrap().id, "odd");

        let t = handle
            .apply(None, vec![RouteChange::Remove("odd".into())])
            .unwrap();
        assert!(t.hosts.get("app.example.test").is_none());
        assert!(t.labels.get("odd").is_none());
        assert!(t.slugs.get("/Lab").is_none());
        assert_eq!((t.hosts.len(), t.labels.len(), t.slugs.len()), (0, 1, 0));

        // Free, so another route may take every one of them.
        let mut taker = spec("taker");
        taker.hosts = vec!["app.example.test".into()];
        taker.labels = vec!["odd".into()];
        taker.slugs = vec!["/Lab".into()];
        let t = handle
            .apply(None, vec![RouteChange::Upsert(taker)])
            .unwrap();
        assert_eq!(&*t.hosts.get("app.example.test").unwrap().id, "taker");
        assert_eq!(&*t.labels.get("odd").unwrap().id, "taker");
        assert_eq!(&*t.slugs.get("/Lab").unwrap().id, "taker");
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
