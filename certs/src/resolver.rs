//! SNI resolution: which certificate a handshake gets for the name it asks
//! for, and whether that certificate also covers an HTTP `Host`.
//!
//! [`CertStore`] is an immutable snapshot (exact names, one-label wildcards,
//! an optional default); [`SniResolver`] holds the current snapshot in an
//! [`ArcSwap`], so a reload is one pointer swap and a handshake never waits on
//! it. A connection keeps the `Arc<CertifiedKey>` it negotiated, whatever
//! later reloads do.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::on_demand::{Preparing, Source};
use crate::LoadedCert;

/// One loaded certificate as the expiry gauge
/// (`sessiongate_certificate_expiry_timestamp_seconds`) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The pair's name (file stem), the gauge's `name` label.
    pub name: String,
    /// The leaf's DNS names, lower-cased.
    pub dns_names: Vec<String>,
    /// The leaf's notAfter, Unix seconds: the gauge's value.
    pub not_after: i64,
}

/// An immutable set of certificates indexed for SNI lookup.
///
/// Names come from each leaf's subjectAltName DNS names. `*.example.com`
/// matches exactly one more label (`a.example.com`), never `example.com` nor
/// `a.b.example.com`, as browsers and webpki do. When two certificates claim
/// the same name, the one that expires last wins (a renewed certificate dropped
/// beside the old one takes over at once); on a tie, the smaller pair name.
#[derive(Clone, Default)]
pub struct CertStore {
    /// Every certificate, sorted by name: the gauge's list, and `get`'s.
    certs: Vec<Arc<LoadedCert>>,
    exact: HashMap<String, Arc<LoadedCert>>,
    /// `*.sessions.example.com` is kept under `sessions.example.com`.
    wildcard: HashMap<String, Arc<LoadedCert>>,
    /// Served when nothing matches, or when the client sends no SNI.
    default: Option<Arc<LoadedCert>>,
}

impl CertStore {
    /// Indexes `certs`; the default is the one named `default_name` if it is
    /// among them. Of two certificates with the same pair name, the first is
    /// kept.
    pub fn new<C>(certs: impl IntoIterator<Item = C>, default_name: Option<&str>) -> CertStore
    where
        C: Into<Arc<LoadedCert>>,
    {
        let mut certs: Vec<Arc<LoadedCert>> = certs.into_iter().map(Into::into).collect();
        certs.sort_by(|a, b| a.name().cmp(b.name()));
        certs.dedup_by(|later, first| later.name() == first.name());

        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in &certs {
            for name in cert.dns_names() {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(suffix) if !suffix.contains('*') && !suffix.is_empty() => {
                        (&mut wildcard, suffix)
                    }
                    // Partial wildcards (`a*.example.com`) match nothing in
                    // browsers or webpki; indexing them would only mislead.
                    _ if name.contains('*') => continue,
                    _ => (&mut exact, name.as_str()),
                };
                insert_preferred(map, key, cert);
            }
        }
        let default = default_name.and_then(|d| certs.iter().find(|c| c.name() == d).cloned());
        CertStore {
            certs,
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for a handshake that asked for `sni`: an exact name
    /// first, then a wildcard, then the default.
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.lookup(sni).map(|c| c.certified_key().clone())
    }

    /// Like [`resolve`](Self::resolve), with everything known about the
    /// certificate chosen.
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Arc<LoadedCert>> {
        let found = sni.and_then(|sni| {
            let sni = normalize_lookup(sni);
            self.exact.get(&*sni).or_else(|| {
                let (label, parent) = sni.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                self.wildcard.get(parent)
            })
        });
        found.or(self.default.as_ref())
    }

    /// The certificate that covers `sni` by its exact name, or by a wildcard
    /// that browsers accept ([`crate::on_demand::browsers_accept_wildcard`]):
    /// not the default, and not `*.localhost` for `nb.localhost`.
    pub fn lookup_for_browsers(&self, sni: &str) -> Option<&Arc<LoadedCert>> {
        let sni = normalize_lookup(sni);
        self.exact.get(&*sni).or_else(|| {
            let (label, parent) = sni.split_once('.')?;
            if label.is_empty() || !crate::on_demand::browsers_accept_wildcard(parent) {
                return None;
            }
            self.wildcard.get(parent)
        })
    }

    /// The certificate of the pair named `name` (file stem).
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedCert>> {
        self.certs
            .binary_search_by(|c| c.name().cmp(name))
            .ok()
            .map(|i| &self.certs[i])
    }

    /// Every certificate, sorted by pair name.
    pub fn loaded(&self) -> &[Arc<LoadedCert>] {
        &self.certs
    }

    /// The default certificate's pair name, if there is a default.
    pub fn default_name(&self) -> Option<&str> {
        self.default.as_ref().map(|c| c.name())
    }

    /// Name, DNS names and notAfter of every certificate, for the expiry gauge.
    pub fn certificates(&self) -> Vec<CertInfo> {
        self.certs
            .iter()
            .map(|c| CertInfo {
                name: c.name().to_string(),
                dns_names: c.dns_names().to_vec(),
                not_after: c.not_after(),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field(
                "certs",
                &self.certs.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .field("default", &self.default_name())
            .finish()
    }
}

fn insert_preferred(map: &mut HashMap<String, Arc<LoadedCert>>, key: &str, cert: &Arc<LoadedCert>) {
    match map.get(key) {
        // `certs` is iterated in name order, so on equal notAfter the first
        // (smaller) name stays.
        Some(held) if held.not_after() >= cert.not_after() => {}
        _ => {
            map.insert(key.to_string(), cert.clone());
        }
    }
}

/// SNI names normally arrive lower-case without a trailing dot; allocate only
/// when one does not.
fn normalize_lookup(name: &str) -> Cow<'_, str> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Whether a certificate with these DNS names is valid for `host` (a bare host
/// name, no port): a case-insensitive exact match, or `*.parent` matching
/// exactly one label before `parent`.
///
/// The gateway answers `421 Misdirected Request` when a request's `Host` is not
/// covered by the certificate its connection negotiated (HTTP/2 connection
/// coalescing may send it another host's requests).
pub fn name_covers(pattern_names: &[String], host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return false;
    }
    pattern_names
        .iter()
        .any(|pattern| match pattern.strip_prefix("*.") {
            Some(parent) => host.split_once('.').is_some_and(|(label, rest)| {
                !label.is_empty() && rest.eq_ignore_ascii_case(parent)
            }),
            None => pattern.eq_ignore_ascii_case(host),
        })
}

/// The rustls certificate resolver of a TLS listener, reading the current
/// [`CertStore`] on every handshake.
///
/// [`replace`](Self::replace) swaps the store atomically: handshakes already
/// past certificate selection keep theirs; the next handshake sees the new
/// store.
pub struct SniResolver {
    current: ArcSwap<CertStore>,
    /// Certificates for served names that no loaded certificate covers in
    /// a way browsers accept ([`SniResolver::set_on_demand`]), asked in
    /// order.
    on_demand: std::sync::OnceLock<Box<[Arc<dyn Source>]>>,
    /// Serializes reloads (the poller and a SIGHUP) so that two of them do not
    /// each start from the same store and the slower one undo the other's
    /// keep-the-last-good decisions.
    reload_lock: Mutex<()>,
}

impl SniResolver {
    pub fn new(store: CertStore) -> SniResolver {
        SniResolver {
            current: ArcSwap::from_pointee(store),
            on_demand: std::sync::OnceLock::new(),
            reload_lock: Mutex::new(()),
        }
    }

    /// From now on, a handshake for a name that no loaded certificate
    /// covers by its exact name or by a wildcard browsers accept gets a
    /// certificate from the first of `sources` that claims the name, once
    /// [`prepare`](Self::prepare) has had it issued. Set once; a second call
    /// changes nothing and returns `false`.
    pub fn set_on_demand(&self, sources: Vec<Arc<dyn Source>>) -> bool {
        self.on_demand.set(sources.into_boxed_slice()).is_ok()
    }

    /// The on-demand sources, in the order they are asked.
    pub fn on_demand(&self) -> &[Arc<dyn Source>] {
        self.on_demand.get().map_or(&[], |s| s)
    }

    /// Which on-demand source (`dev`, `acme`) would give `name` a
    /// certificate, if no loaded one covers it.
    pub fn on_demand_kind(&self, name: &str) -> Option<&'static str> {
        let name = crate::load::normalize_name(name);
        self.on_demand()
            .iter()
            .find(|s| s.claims(&name))
            .map(|s| s.kind())
    }

    /// What a handshake for `sni` needs done before its certificate can be
    /// chosen: an on-demand certificate issued or renewed. `None` when there
    /// is nothing to wait for (a loaded certificate covers the name, or no
    /// source claims it). Awaited by [`crate::Acceptor`] between reading
    /// the ClientHello and answering it.
    pub fn prepare(&self, sni: &str) -> Option<Preparing> {
        let sources = self.on_demand.get()?;
        let name = crate::load::normalize_name(sni);
        if self.current.load().lookup_for_browsers(&name).is_some() {
            return None;
        }
        let source = sources.iter().find(|s| s.claims(&name))?;
        Some(Arc::clone(source).prepare(name))
    }

    /// The certificate a handshake for `sni` gets: a loaded one that covers
    /// it as browsers accept, else one held by an on-demand source, else
    /// the store's wildcard or default. Never issues: that is
    /// [`prepare`](Self::prepare)'s, before the handshake.
    fn choose(&self, sni: Option<&str>) -> Option<Arc<LoadedCert>> {
        let store = self.current.load();
        if let (Some(sources), Some(name)) = (self.on_demand.get(), sni) {
            if store.lookup_for_browsers(name).is_none() {
                let name = crate::load::normalize_name(name);
                if let Some(held) = sources.iter().find_map(|s| s.held(&name)) {
                    return Some(held);
                }
            }
        }
        store.lookup(sni).cloned()
    }

    /// The current store.
    pub fn store(&self) -> Arc<CertStore> {
        self.current.load_full()
    }

    /// Makes `store` the one every later handshake uses.
    pub fn replace(&self, store: CertStore) {
        self.current.store(Arc::new(store));
    }

    /// Whether the certificate that SNI name `sni` gets today also covers
    /// `host` (see [`name_covers`]); false when no certificate would be served.
    ///
    /// It asks the current store, which after a reload may differ from the one
    /// a long-lived connection negotiated: the answer is about the certificate
    /// that the client would get if it reconnected, which is what a `421`
    /// (retry on a new connection) is for.
    pub fn covers(&self, sni: Option<&str>, host: &str) -> bool {
        self.choose(sni)
            .is_some_and(|c| name_covers(c.dns_names(), host))
    }

    /// Name, DNS names and notAfter of every certificate now served: the
    /// loaded ones, and those an on-demand source keeps renewed (ACME's,
    /// named `acme/<name>`).
    pub fn certificates(&self) -> Vec<CertInfo> {
        let mut all = self.current.load().certificates();
        for source in self.on_demand() {
            all.extend(source.managed());
        }
        all
    }

    /// Held by a reload from reading the old store until storing the new one.
    pub(crate) fn reload_guard(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic in another reload leaves nothing
        // inconsistent, so a poisoned lock is still usable.
        self.reload_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("store", &*self.current.load())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(client_hello.server_name())
            .map(|c| c.certified_key().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{
        handshake, handshake_through, insecure_client, leaf_names, loaded, TempDir,
    };

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let pats = names(&["*.x.test"]);
        assert!(name_covers(&pats, "a.x.test"));
        assert!(name_covers(&pats, "A.X.Test"));
        assert!(name_covers(&pats, "a.x.test."));
        assert!(!name_covers(&pats, "x.test"));
        assert!(!name_covers(&pats, "a.b.x.test"));
        assert!(!name_covers(&pats, ".x.test"));
        assert!(!name_covers(&pats, "ax.test"));
        assert!(!name_covers(&pats, ""));
    }

    #[test]
    fn exact_names_match_case_insensitively() {
        let pats = names(&["portal.test", "*.s.test"]);
        assert!(name_covers(&pats, "Portal.Test"));
        assert!(!name_covers(&pats, "other.test"));
        assert!(name_covers(&pats, "abc.s.test"));
    }

    #[test]
    fn store_prefers_exact_then_wildcard_then_default() {
        let dir = TempDir::new("store-order");
        let store = CertStore::new(
            [
                loaded(dir.path(), "wild", &["*.x.test"]),
                loaded(dir.path(), "exact", &["a.x.test"]),
                loaded(dir.path(), "fallback", &["fallback.test"]),
            ],
            Some("fallback"),
        );
        let pick = |sni: Option<&str>| store.lookup(sni).map(|c| c.name().to_string());
        assert_eq!(pick(Some("a.x.test")).as_deref(), Some("exact"));
        assert_eq!(pick(Some("A.X.TEST.")).as_deref(), Some("exact"));
        assert_eq!(pick(Some("b.x.test")).as_deref(), Some("wild"));
        assert_eq!(pick(Some("x.test")).as_deref(), Some("fallback"));
        assert_eq!(pick(Some("a.b.x.test")).as_deref(), Some("fallback"));
        assert_eq!(pick(None).as_deref(), Some("fallback"));
        assert_eq!(store.default_name(), Some("fallback"));
        assert!(store.resolve(Some("b.x.test")).is_some());
    }

    #[test]
    fn without_default_unknown_names_get_nothing() {
        let dir = TempDir::new("store-nodefault");
        let store = CertStore::new([loaded(dir.path(), "wild", &["*.x.test"])], Some("absent"));
        assert!(store.lookup(Some("x.test")).is_none());
        assert!(store.lookup(None).is_none());
        assert_eq!(store.default_name(), None);
    }

    #[test]
    fn later_expiry_wins_a_shared_name() {
        let dir = TempDir::new("store-expiry");
        let older = crate::testutil::loaded_expiring(dir.path(), "a-old", &["s.test"], 2030);
        let newer = crate::testutil::loaded_expiring(dir.path(), "b-new", &["s.test"], 2031);
        let store = CertStore::new([older, newer], None);
        assert_eq!(store.lookup(Some("s.test")).unwrap().name(), "b-new");
    }

    #[test]
    fn certificates_lists_every_pair_for_the_gauge() {
        let dir = TempDir::new("store-gauge");
        let store = CertStore::new(
            [
                crate::testutil::loaded_expiring(dir.path(), "b", &["b.test"], 2030),
                crate::testutil::loaded_expiring(dir.path(), "a", &["*.a.test"], 2031),
            ],
            None,
        );
        let infos = store.certificates();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].name, "a");
        assert_eq!(infos[0].dns_names, ["*.a.test"]);
        assert_eq!(infos[1].name, "b");
        assert!(infos[0].not_after > infos[1].not_after);
        let resolver = SniResolver::new(store);
        assert_eq!(resolver.certificates(), infos);
    }

    #[test]
    fn resolver_covers_asks_the_certificate_chosen_for_the_sni() {
        let dir = TempDir::new("store-covers");
        let resolver = SniResolver::new(CertStore::new(
            [
                loaded(dir.path(), "wild", &["*.sessions.test", "sessions.test"]),
                loaded(dir.path(), "other", &["other.test"]),
            ],
            Some("other"),
        ));
        assert!(resolver.covers(Some("a.sessions.test"), "b.sessions.test"));
        assert!(resolver.covers(Some("a.sessions.test"), "sessions.test"));
        assert!(!resolver.covers(Some("a.sessions.test"), "other.test"));
        // No SNI: the default certificate decides.
        assert!(resolver.covers(None, "other.test"));
        assert!(!resolver.covers(None, "a.sessions.test"));
    }

    #[tokio::test]
    async fn handshake_presents_exact_wildcard_and_default_certificates() {
        let dir = TempDir::new("store-handshake");
        let resolver = Arc::new(SniResolver::new(CertStore::new(
            [
                loaded(dir.path(), "sessions", &["*.sessions.test"]),
                loaded(dir.path(), "exact", &["exact.other.test"]),
                loaded(dir.path(), "fallback", &["fallback.test"]),
            ],
            Some("fallback"),
        )));
        let server = Arc::new(crate::server_config(resolver));
        let client = insecure_client();

        let cases = [
            (Some("a.sessions.test"), "*.sessions.test"),
            (Some("exact.other.test"), "exact.other.test"),
            (Some("unknown.test"), "fallback.test"),
            (None, "fallback.test"),
        ];
        for (sni, expected) in cases {
            let (tls, _server_side) = handshake(&server, &client, sni).await.unwrap();
            assert_eq!(leaf_names(&tls), [expected], "sni {sni:?}");
        }
    }

    /// The embedded default: the development certificate for `localhost`
    /// and `*.localhost`, which browsers refuse for `nb.localhost`. A served
    /// name gets its own leaf from the same CA; a name not served gets the
    /// default and no leaf; a name the loaded certificate covers exactly
    /// keeps it.
    #[tokio::test]
    async fn served_names_under_a_single_label_wildcard_get_on_demand_leaves() {
        let dir = TempDir::new("store-on-demand");
        let files = crate::dev::generate("localhost", dir.path()).unwrap();
        let dev = LoadedCert::from_files("localhost", &files.cert, &files.key).unwrap();
        let resolver = Arc::new(SniResolver::new(CertStore::new([dev], Some("localhost"))));
        let served: crate::on_demand::Serves =
            Arc::new(|n: &str| n == "localhost" || n == "nb.localhost");
        let od = Arc::new(
            crate::on_demand::OnDemand::open(
                &files.ca_cert,
                &files.ca_key,
                &dir.path().join("on-demand"),
                served,
                crate::on_demand::OnDemandSettings::default(),
            )
            .unwrap(),
        );
        assert!(resolver.set_on_demand(vec![od.clone()]));
        // Asking what a name would be served never issues.
        resolver.covers(Some("nb.localhost"), "nb.localhost");
        assert_eq!(od.issued(), 0);
        // Neither does a handshake that skips the listener's preparation:
        // the resolver itself only takes what is held.
        let server = Arc::new(crate::server_config(resolver.clone()));
        let client = insecure_client();
        let (tls, _) = handshake(&server, &client, Some("nb.localhost"))
            .await
            .unwrap();
        assert_eq!(leaf_names(&tls), ["localhost", "*.localhost"]);
        assert_eq!(od.issued(), 0);

        let acceptor = crate::Acceptor::new(resolver.clone());
        let cases = [
            ("nb.localhost", vec!["nb.localhost"], 1),
            ("nb.localhost", vec!["nb.localhost"], 1),
            ("other.localhost", vec!["localhost", "*.localhost"], 1),
            ("localhost", vec!["localhost", "*.localhost"], 1),
        ];
        for (sni, expected, issued) in cases {
            let tls = handshake_through(&acceptor, &client, sni).await.unwrap();
            assert_eq!(leaf_names(&tls), expected, "sni {sni:?}");
            assert_eq!(od.issued(), issued, "after sni {sni:?}");
        }
        // Without SNI: the default, nothing issued.
        let (tls, _) = handshake(&server, &client, None).await.unwrap();
        assert_eq!(leaf_names(&tls), ["localhost", "*.localhost"]);
        // The 421 check sees the leaf the handshake got.
        assert!(resolver.covers(Some("nb.localhost"), "nb.localhost"));
        assert!(!resolver.covers(Some("nb.localhost"), "other.localhost"));
        // A browser-accepted wildcard is used as it is: no leaf.
        let store = resolver.store();
        assert!(store.lookup_for_browsers("nb.localhost").is_none());
        assert!(store.lookup_for_browsers("localhost").is_some());
    }

    #[tokio::test]
    async fn handshake_fails_when_nothing_matches_and_there_is_no_default() {
        let dir = TempDir::new("store-nomatch");
        let resolver = Arc::new(SniResolver::new(CertStore::new(
            [loaded(dir.path(), "only", &["only.test"])],
            None,
        )));
        let server = Arc::new(crate::server_config(resolver));
        let client = insecure_client();
        assert!(handshake(&server, &client, Some("only.test")).await.is_ok());
        assert!(handshake(&server, &client, Some("else.test"))
            .await
            .is_err());
    }
}
