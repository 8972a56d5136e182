//! On-demand leaf certificates from the development CA, as Caddy's local CA
//! issues them.
//!
//! Browsers refuse a wildcard directly under a single-label name:
//! `*.localhost` does not cover `nb.localhost` (`ERR_CERT_COMMON_NAME_INVALID`),
//! so the development wildcard certificate gives sessions under the default
//! base domain no HTTPS. [`OnDemand`] issues, at the first handshake that asks
//! for it, a short-lived leaf for that exact name, signed by the development
//! CA that the user already trusts.
//!
//! Only names that the caller says are served (a base domain, a session's
//! host) get a leaf; every other name gets nothing from here, so a client
//! cannot make the gateway sign or store certificates for names of its
//! choosing. Issuance is also rate-limited. Leaves are kept in memory and on
//! disk (`<dir>/<name>.crt` + `.key`, keys 0600), reused after a restart, and
//! issued again once less than a third of their lifetime is left.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use x509_parser::time::ASN1Time;

use crate::dev::{checked_domain, generate_error, write_atomically, BACKDATE};
use crate::{CertError, LoadedCert};

/// Whether a name is one the gateway serves (a base domain, a session's
/// host): only those get a leaf.
pub type Serves = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A future that gets a certificate ready, resolving when it is held (or
/// when none will be, for now).
pub type Preparing = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What an issuer counted since start, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Certificates newly issued (renewals included; not those read back
    /// from disk).
    pub issued: u64,
    /// Issuances that failed.
    pub failed: u64,
    /// New names refused by the rate limit.
    pub rate_limited: u64,
}

/// Where the TLS listener gets a certificate for a name that no loaded
/// certificate covers as browsers accept: the development CA
/// ([`OnDemand`]) or an ACME CA ([`crate::acme::Acme`]).
///
/// The split between [`prepare`](Source::prepare) and
/// [`held`](Source::held) keeps issuance off the handshake: the listener
/// reads the ClientHello, awaits `prepare` (which may take an ACME order's
/// seconds without holding a worker thread), then the handshake's
/// certificate resolver, which must answer at once, takes what is `held`.
pub trait Source: Send + Sync + 'static {
    /// `dev` or `acme`: which metric counts it.
    fn kind(&self) -> &'static str;
    /// Whether `name` (lower case, no trailing dot) is this source's to
    /// issue for.
    fn claims(&self, name: &str) -> bool;
    /// The certificate held for `name`, issuing nothing.
    fn held(&self, name: &str) -> Option<Arc<LoadedCert>>;
    /// Gets a certificate for `name` held, unless a fresh one already is,
    /// the rate limit refuses, or the name is backing off after a failure.
    fn prepare(self: Arc<Self>, name: String) -> Preparing;
    fn counts(&self) -> Counts;
    /// The certificates it keeps renewed, for the expiry gauge. The
    /// development CA's short-lived leaves are not listed: one series per
    /// session host would say nothing an operator acts on.
    fn managed(&self) -> Vec<crate::CertInfo> {
        Vec::new()
    }
}

/// How an [`OnDemand`] issues.
#[derive(Clone, Debug)]
pub struct OnDemandSettings {
    /// Lifetime of each leaf. Short: a leaf is only ever for this machine's
    /// development CA, and it is renewed without anyone noticing.
    pub validity: Duration,
    /// Leaves issued at once at most, before the refill rate applies.
    pub burst: u32,
    /// Leaves issued per second, sustained.
    pub per_second: f64,
}

impl Default for OnDemandSettings {
    fn default() -> Self {
        OnDemandSettings {
            validity: Duration::from_secs(7 * 86_400),
            burst: 20,
            per_second: 2.0,
        }
    }
}

/// Issues and keeps leaf certificates for served names (see the module).
pub struct OnDemand {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    serves: Serves,
    settings: OnDemandSettings,
    cache: Mutex<HashMap<String, Arc<LoadedCert>>>,
    /// Held while issuing, so that two handshakes for a new name make one
    /// leaf; lookups take only `cache`.
    issuing: Mutex<()>,
    bucket: RateLimit,
    issued: AtomicU64,
    rate_limited: AtomicU64,
}

/// A token bucket: `tokens` left, refilled at `per_second` up to `burst`.
pub(crate) struct RateLimit {
    bucket: Mutex<(f64, Instant)>,
    burst: f64,
    per_second: f64,
}

impl RateLimit {
    pub(crate) fn new(burst: u32, per_second: f64) -> RateLimit {
        RateLimit {
            bucket: Mutex::new((f64::from(burst), Instant::now())),
            burst: f64::from(burst),
            per_second,
        }
    }

    /// Takes a token if one is left.
    pub(crate) fn take(&self) -> bool {
        let mut b = lock(&self.bucket);
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * self.per_second;
        b.0 = (b.0 + refill).min(self.burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

impl OnDemand {
    /// Signs with the development CA in `ca_cert` + `ca_key` (as
    /// [`crate::dev::generate`] writes them), keeping leaves in `dir`
    /// (created if missing).
    pub fn open(
        ca_cert: &Path,
        ca_key: &Path,
        dir: &Path,
        serves: Serves,
        settings: OnDemandSettings,
    ) -> Result<OnDemand, CertError> {
        let ca = LoadedCert::from_files("ca", ca_cert, ca_key)?;
        if !ca.is_ca() {
            return Err(CertError::Generate {
                what: "on-demand certificate",
                reason: format!("{} is not a CA certificate", ca_cert.display()),
            });
        }
        let pem = std::fs::read_to_string(ca_key).map_err(|e| CertError::io(ca_key, e))?;
        let key = KeyPair::from_pem(&pem).map_err(generate_error("on-demand CA key"))?;
        let issuer = Issuer::from_ca_cert_der(&ca.certified_key().cert[0], key)
            .map_err(generate_error("on-demand CA"))?;
        std::fs::create_dir_all(dir).map_err(|e| CertError::io(dir, e))?;
        Ok(OnDemand {
            issuer,
            dir: dir.to_path_buf(),
            serves,
            bucket: RateLimit::new(settings.burst, settings.per_second),
            settings,
            cache: Mutex::new(HashMap::new()),
            issuing: Mutex::new(()),
            issued: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        })
    }

    /// The leaf for `name`: from memory, from disk, or newly issued, if the
    /// name is served. `None` for a name that is not served or not a DNS
    /// name, and for a new name while issuance is rate-limited.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedCert>> {
        let name = checked_domain(name).ok()?;
        let now = unix_now();
        let held = lock(&self.cache).get(&name).cloned();
        if let Some(cert) = &held {
            if !self.due(cert, now) {
                return held;
            }
        }
        if !(self.serves)(&name) {
            return None;
        }
        let _issuing = lock(&self.issuing);
        // Another handshake may have issued it while this one waited.
        if let Some(cert) = lock(&self.cache).get(&name) {
            if !self.due(cert, now) {
                return Some(cert.clone());
            }
        }
        if let Some(cert) = self.stored(&name).filter(|c| !self.due(c, now)) {
            lock(&self.cache).insert(name, cert.clone());
            return Some(cert);
        }
        if !self.bucket.take() {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            // A leaf due for renewal is still valid: serve it meanwhile.
            return held.filter(|c| c.not_after() > now);
        }
        match self.issue(&name) {
            Ok(cert) => {
                self.issued.fetch_add(1, Ordering::Relaxed);
                lock(&self.cache).insert(name, cert.clone());
                Some(cert)
            }
            Err(e) => {
                tracing::error!(name = %name, error = %e, "on-demand certificate not issued");
                held.filter(|c| c.not_after() > now)
            }
        }
    }

    /// The leaf already held in memory for `name`, issuing nothing.
    pub fn held(&self, name: &str) -> Option<Arc<LoadedCert>> {
        let name = checked_domain(name).ok()?;
        lock(&self.cache).get(&name).cloned()
    }

    /// Leaves issued since start (not those read back from disk).
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// New leaves refused by the rate limit since start.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Whether `cert` is to be issued again: less than a third of its
    /// lifetime left.
    fn due(&self, cert: &LoadedCert, now: i64) -> bool {
        let third = i64::try_from(self.settings.validity.as_secs() / 3).unwrap_or(i64::MAX);
        cert.not_after().saturating_sub(now) < third
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    fn stored(&self, name: &str) -> Option<Arc<LoadedCert>> {
        let (cert, key) = self.paths(name);
        if !cert.exists() {
            return None;
        }
        match LoadedCert::from_files(name, &cert, &key) {
            Ok(c) if c.dns_names().iter().any(|n| n == name) => Some(Arc::new(c)),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(name = %name, error = %e, "stored on-demand certificate unusable; issuing a new one");
                None
            }
        }
    }

    fn issue(&self, name: &str) -> Result<Arc<LoadedCert>, CertError> {
        let now = ASN1Time::now().to_datetime();
        let key = KeyPair::generate().map_err(generate_error("on-demand key"))?;
        let mut params = CertificateParams::new(vec![name.to_string()])
            .map_err(generate_error("on-demand certificate"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = now + self.settings.validity;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error("on-demand certificate"))?;
        let (cert_path, key_path) = self.paths(name);
        // Key first: a reader that finds the new key beside the old
        // certificate refuses the mismatch and issues again.
        write_atomically(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_atomically(&cert_path, cert.pem().as_bytes(), false)?;
        Ok(Arc::new(LoadedCert::from_files(
            name, &cert_path, &key_path,
        )?))
    }
}

impl Source for OnDemand {
    fn kind(&self) -> &'static str {
        "dev"
    }

    fn claims(&self, name: &str) -> bool {
        (self.serves)(name)
    }

    fn held(&self, name: &str) -> Option<Arc<LoadedCert>> {
        OnDemand::held(self, name)
    }

    fn prepare(self: Arc<Self>, name: String) -> Preparing {
        if OnDemand::held(&self, &name).is_some_and(|c| !self.due(&c, unix_now())) {
            return Box::pin(std::future::ready(()));
        }
        // Key generation, signing and two file writes: a blocking thread's
        // work, not a proxy worker's.
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || self.get(&name)).await;
        })
    }

    fn counts(&self) -> Counts {
        Counts {
            issued: self.issued(),
            failed: 0,
            rate_limited: self.rate_limited(),
        }
    }
}

impl std::fmt::Debug for OnDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemand")
            .field("dir", &self.dir)
            .field("held", &lock(&self.cache).len())
            .field("issued", &self.issued())
            .finish()
    }
}

/// Whether browsers accept the wildcard `*.parent` at all: not directly
/// under a single-label name (`*.localhost`, `*.test`), which Chromium,
/// Firefox and curl refuse.
pub fn browsers_accept_wildcard(parent: &str) -> bool {
    parent.trim_end_matches('.').contains('.')
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is one lookup, insert or refill: a panic in
    // another cannot leave the data half-changed.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use rustls::client::danger::ServerCertVerifier;

    fn served(names: &'static [&'static str]) -> Serves {
        Arc::new(move |n: &str| names.contains(&n))
    }

    fn open(dir: &TempDir, serves: Serves, settings: OnDemandSettings) -> OnDemand {
        let ca = dir.path().join("ca");
        let files = crate::dev::generate("localhost", &ca).unwrap();
        OnDemand::open(
            &files.ca_cert,
            &files.ca_key,
            &dir.path().join("leaves"),
            serves,
            settings,
        )
        .unwrap()
    }

    /// Another issuer over what [`open`] left in `dir` (a restart), serving
    /// `nb.localhost`, with the default settings.
    fn reopen(dir: &TempDir) -> OnDemand {
        OnDemand::open(
            &dir.path().join("ca/ca.crt"),
            &dir.path().join("ca/ca.key"),
            &dir.path().join("leaves"),
            served(&["nb.localhost"]),
            OnDemandSettings::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_served_name_gets_one_leaf_for_itself_signed_by_the_ca() {
        let dir = TempDir::new("on-demand-served");
        let od = open(&dir, served(&["nb.localhost"]), OnDemandSettings::default());
        let leaf = od.get("NB.localhost.").expect("a leaf");
        assert_eq!(leaf.dns_names(), ["nb.localhost".to_string()]);
        assert!(!leaf.is_ca());
        let life = leaf.not_after() - unix_now();
        assert!(life > 6 * 86_400 && life <= 7 * 86_400, "{life}");
        // Held: the same leaf again, nothing issued.
        assert!(Arc::ptr_eq(&od.get("nb.localhost").unwrap(), &leaf));
        assert_eq!(od.issued(), 1);
        // The chain verifies against the CA: webpki via rustls's verifier.
        let ca_pem = std::fs::read(dir.path().join("ca/ca.crt")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile_certs(&ca_pem) {
            roots.add(c).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let end_entity = &leaf.certified_key().cert[0];
        let name = rustls::pki_types::ServerName::try_from("nb.localhost").unwrap();
        verifier
            .verify_server_cert(
                end_entity,
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("the leaf chains to the development CA");
    }

    fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .map(|c| c.unwrap())
            .collect()
    }

    #[test]
    fn names_that_are_not_served_get_no_leaf() {
        let dir = TempDir::new("on-demand-unserved");
        let od = open(&dir, served(&["nb.localhost"]), OnDemandSettings::default());
        for name in [
            "other.localhost",
            "evil.example.com",
            "../nb.localhost",
            "",
            "ca",
        ] {
            assert!(od.get(name).is_none(), "{name:?}");
        }
        assert_eq!(od.issued(), 0);
        let stored = std::fs::read_dir(dir.path().join("leaves"))
            .unwrap()
            .count();
        assert_eq!(stored, 0, "nothing written for names not served");
    }

    #[test]
    fn a_restart_reuses_the_stored_leaf_and_keys_are_private() {
        let dir = TempDir::new("on-demand-restart");
        let first = open(&dir, served(&["nb.localhost"]), OnDemandSettings::default());
        let leaf = first.get("nb.localhost").unwrap();
        let key = dir.path().join("leaves/nb.localhost.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = reopen(&dir);
        let reread = again.get("nb.localhost").unwrap();
        assert_eq!(again.issued(), 0, "read back, not issued");
        assert_eq!(reread.certified_key().cert[0], leaf.certified_key().cert[0]);
    }

    #[test]
    fn a_leaf_with_less_than_a_third_of_its_life_left_is_issued_again() {
        let dir = TempDir::new("on-demand-renew");
        // A 90-minute leaf: not due at once (a third is 30 minutes).
        let short = OnDemandSettings {
            validity: Duration::from_secs(5400),
            ..OnDemandSettings::default()
        };
        let od = open(&dir, served(&["nb.localhost"]), short);
        let first = od.get("nb.localhost").unwrap();
        assert!(Arc::ptr_eq(&od.get("nb.localhost").unwrap(), &first));
        assert!(!od.due(&first, unix_now()));
        assert!(od.due(&first, unix_now() + 3600 + 60));
        // Read back by one that issues 7-day leaves, 90 minutes is under a
        // third of the lifetime: it issues a new leaf over the stored one.
        let renewing = reopen(&dir);
        let renewed = renewing.get("nb.localhost").unwrap();
        assert_eq!(renewing.issued(), 1);
        assert!(renewed.not_after() > first.not_after() + 86_400);
        let stored = crate::testutil::loaded_from(&dir.path().join("leaves"), "nb.localhost");
        assert_eq!(stored.not_after(), renewed.not_after());
    }

    #[test]
    fn issuance_is_rate_limited_and_counted() {
        let dir = TempDir::new("on-demand-rate");
        let settings = OnDemandSettings {
            burst: 2,
            per_second: 0.0001,
            ..OnDemandSettings::default()
        };
        let od = open(
            &dir,
            served(&["a.localhost", "b.localhost", "c.localhost"]),
            settings,
        );
        assert!(od.get("a.localhost").is_some());
        assert!(od.get("b.localhost").is_some());
        assert!(od.get("c.localhost").is_none(), "over the burst");
        assert_eq!((od.issued(), od.rate_limited()), (2, 1));
        // What is held is still served.
        assert!(od.get("a.localhost").is_some());
    }

    #[test]
    fn browsers_refuse_wildcards_under_single_label_names() {
        assert!(!browsers_accept_wildcard("localhost"));
        assert!(!browsers_accept_wildcard("test."));
        assert!(browsers_accept_wildcard("sessions.example.com"));
        assert!(browsers_accept_wildcard("lab.localhost"));
    }
}
