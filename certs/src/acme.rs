//! Certificates from an ACME CA (RFC 8555: Let's Encrypt, ZeroSSL, a
//! private step-ca or pebble) for real names, with instant-acme.
//!
//! - **Which names.** Those listed in `domains`, obtained at start and kept;
//!   and with `on_demand`, any name the gateway serves (a base domain, a
//!   session's host or `custom_domain`) at its first handshake, unless it is
//!   one no public CA issues for (`localhost`, single-label names, IP
//!   addresses), which the development CA keeps. A wildcard for a base
//!   domain would need DNS-01, which needs the DNS provider's API: out of
//!   scope, so each session host gets its own certificate.
//! - **Challenges.** HTTP-01 is answered by the gateway's plain HTTP
//!   listener at `/.well-known/acme-challenge/<token>`, TLS-ALPN-01 by its
//!   HTTPS listener ([`crate::Acceptor`]), both from [`Challenges`], which
//!   holds an answer only while its order is open.
//! - **State.** `<dir>/account.json` (the account key, 0600) and
//!   `<dir>/certs/<name>.crt` + `.key` (0600). A restart serves what is
//!   stored without asking the CA anything.
//! - **Renewal** when two thirds of a certificate's lifetime have passed.
//!   A failure is logged with the CA's reason, counted, and retried with
//!   exponential backoff, while the current certificate keeps being served.
//! - **Bounded work.** New on-demand names are rate-limited; one order runs
//!   at a time; a name that failed waits out its backoff before the next
//!   order, whoever asks.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;

use crate::dev::{checked_domain, write_atomically};
use crate::on_demand::{lock, unix_now, Counts, Preparing, RateLimit, Serves, Source};
use crate::{CertError, LoadedCert};

/// The ALPN protocol of TLS-ALPN-01 validations (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where HTTP-01 validations ask (RFC 8555 section 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Which challenge the gateway answers for its orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    /// `http-01`, on the plain HTTP listener (port 80 for a public CA).
    Http01,
    /// `tls-alpn-01`, on the HTTPS listener (port 443 for a public CA).
    TlsAlpn01,
}

impl ChallengeKind {
    /// `http-01` or `tls-alpn-01`.
    pub fn parse(text: &str) -> Option<ChallengeKind> {
        match text {
            "http-01" => Some(ChallengeKind::Http01),
            "tls-alpn-01" => Some(ChallengeKind::TlsAlpn01),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }

    fn acme_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}

/// How [`Acme`] orders and keeps certificates.
#[derive(Clone, Debug)]
pub struct AcmeSettings {
    /// The CA's directory (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory_url: String,
    /// The account's contact; empty for none.
    pub email: String,
    /// A PEM bundle trusted for the directory besides Mozilla's roots (a
    /// private CA such as step-ca or pebble).
    pub ca_file: Option<PathBuf>,
    pub challenge: ChallengeKind,
    /// Account and certificates (see the module).
    pub dir: PathBuf,
    /// Names obtained at start and kept.
    pub domains: Vec<String>,
    /// Also names the gateway serves, at their first handshake.
    pub on_demand: bool,
    /// How often certificates are checked for renewal.
    pub check_interval: Duration,
    /// The first wait after a failed order; doubled per failure up to
    /// `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How long an order may take from its challenges to its certificate.
    pub order_timeout: Duration,
    /// New on-demand names ordered at once at most, then `per_second`.
    pub burst: u32,
    pub per_second: f64,
}

impl AcmeSettings {
    /// Defaults for a directory, keeping state in `dir`.
    pub fn new(directory_url: impl Into<String>, dir: impl Into<PathBuf>) -> AcmeSettings {
        AcmeSettings {
            directory_url: directory_url.into(),
            email: String::new(),
            ca_file: None,
            challenge: ChallengeKind::Http01,
            dir: dir.into(),
            domains: Vec::new(),
            on_demand: false,
            check_interval: Duration::from_secs(3600),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(86_400),
            order_timeout: Duration::from_secs(90),
            // Let's Encrypt allows 300 new orders per 3 hours per account.
            burst: 10,
            per_second: 0.02,
        }
    }
}

/// The answers to open challenges, read by the listeners.
#[derive(Default)]
pub struct Challenges {
    /// HTTP-01: token to key authorization.
    http: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: name to its validation certificate.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The HTTP-01 answer for a request to `path`, if it asks for an open
    /// challenge's token.
    pub fn http01(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        lock(&self.http).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, while its order is open.
    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.alpn)
            .get(&crate::load::normalize_name(name))
            .cloned()
    }
}

/// Takes back what an order published, however it ends.
struct Published<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        let mut http = lock(&self.challenges.http);
        for t in &self.tokens {
            http.remove(t);
        }
        drop(http);
        let mut alpn = lock(&self.challenges.alpn);
        for n in &self.names {
            alpn.remove(n);
        }
    }
}

/// One name's certificate and its last failure.
#[derive(Default)]
struct Entry {
    cert: Option<Arc<LoadedCert>>,
    failures: u32,
    retry_at: Option<Instant>,
    error: Option<String>,
}

/// What is kept in `account.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory_url: String,
    credentials: AccountCredentials,
}

/// Orders, holds and renews ACME certificates (see the module).
pub struct Acme {
    settings: AcmeSettings,
    serves: Serves,
    challenges: Arc<Challenges>,
    account: tokio::sync::Mutex<Option<Account>>,
    entries: Mutex<HashMap<String, Entry>>,
    /// One order at a time: orders are rare, and the CA's limits are per
    /// account.
    orders: tokio::sync::Mutex<()>,
    inflight: Mutex<HashMap<String, Shared<BoxFuture<'static, ()>>>>,
    new_names: RateLimit,
    issued: AtomicU64,
    failed: AtomicU64,
    rate_limited: AtomicU64,
}

impl Acme {
    /// Opens the state in `settings.dir` (created 0700 if missing) and
    /// reads back the certificates stored there. Asks the CA nothing.
    pub fn open(settings: AcmeSettings, serves: Serves) -> Result<Arc<Acme>, CertError> {
        let certs = settings.dir.join("certs");
        create_private_dir(&settings.dir)?;
        create_private_dir(&certs)?;
        let mut entries = HashMap::new();
        let listing = std::fs::read_dir(&certs).map_err(|e| CertError::io(&certs, e))?;
        for file in listing.flatten() {
            let path = file.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".crt"))
                .and_then(|n| checked_domain(n).ok())
            else {
                continue;
            };
            match LoadedCert::from_files(&name, &path, &path.with_extension("key")) {
                Ok(cert) => {
                    entries.insert(
                        name,
                        Entry {
                            cert: Some(Arc::new(cert)),
                            ..Entry::default()
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(name = %name, error = %e, "stored ACME certificate unusable; ordering a new one")
                }
            }
        }
        let mut settings = settings;
        settings.domains = settings
            .domains
            .iter()
            .map(|d| checked_domain(d))
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(Acme {
            new_names: RateLimit::new(settings.burst, settings.per_second),
            settings,
            serves,
            challenges: Arc::new(Challenges::default()),
            account: tokio::sync::Mutex::new(None),
            entries: Mutex::new(entries),
            orders: tokio::sync::Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }))
    }

    /// The answers the listeners give while orders are open.
    pub fn challenges(&self) -> Arc<Challenges> {
        self.challenges.clone()
    }

    /// The last failure for `name` since its last success: the cause as the
    /// CA gave it.
    pub fn last_error(&self, name: &str) -> Option<String> {
        lock(&self.entries).get(name).and_then(|e| e.error.clone())
    }

    /// Keeps `domains` and every held certificate renewed: checks at once,
    /// then every `check_interval`.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let acme = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                acme.maintain().await;
                tokio::time::sleep(acme.settings.check_interval).await;
            }
        })
    }

    /// Orders what is missing or due and not backing off.
    async fn maintain(self: &Arc<Self>) {
        let mut names: HashSet<String> = self.settings.domains.iter().cloned().collect();
        let held: Vec<String> = lock(&self.entries)
            .iter()
            .filter(|(_, e)| e.cert.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        // An on-demand name is renewed while it is served: a deleted
        // session's certificate is left to expire, not ordered forever.
        names.extend(held.into_iter().filter(|n| self.wants_on_demand(n)));
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        for name in names {
            if self.wanted(&name) {
                self.clone().order_once(name).await;
            }
        }
    }

    /// Whether `name` needs an order now: no certificate, or two thirds of
    /// its lifetime gone; and not backing off after a failure.
    fn wanted(&self, name: &str) -> bool {
        let entries = lock(&self.entries);
        let Some(entry) = entries.get(name) else {
            return true;
        };
        if entry.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        entry.cert.as_ref().is_none_or(|c| due(c, unix_now()))
    }

    /// Runs `name`'s order, or joins the one already running.
    fn order_once(self: Arc<Self>, name: String) -> Shared<BoxFuture<'static, ()>> {
        let mut inflight = lock(&self.inflight);
        if let Some(running) = inflight.get(&name) {
            return running.clone();
        }
        let acme = Arc::clone(&self);
        let key = name.clone();
        // Spawned: the order finishes even if every handshake waiting for
        // it gives up.
        let task = tokio::spawn(async move {
            let result = acme.order(&name).await;
            acme.record(&name, result);
            lock(&acme.inflight).remove(&name);
        });
        let shared = async move {
            let _ = task.await;
        }
        .boxed()
        .shared();
        inflight.insert(key, shared.clone());
        shared
    }

    fn record(&self, name: &str, result: Result<Arc<LoadedCert>, CertError>) {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(name.to_string()).or_default();
        match result {
            Ok(cert) => {
                self.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(name = %name, not_after = cert.not_after(), "ACME certificate obtained");
                *entry = Entry {
                    cert: Some(cert),
                    ..Entry::default()
                };
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                entry.failures = entry.failures.saturating_add(1);
                let wait = self
                    .settings
                    .retry_min
                    .saturating_mul(1u32 << entry.failures.saturating_sub(1).min(20))
                    .min(self.settings.retry_max);
                entry.retry_at = Some(Instant::now() + wait);
                let reason = e.to_string();
                tracing::error!(
                    name = %name,
                    error = %reason,
                    retry_in_secs = wait.as_secs(),
                    serving_current = entry.cert.is_some(),
                    "ACME certificate not obtained"
                );
                entry.error = Some(reason);
            }
        }
    }

    /// The account: from memory, from `account.json` if it is for this
    /// directory, or newly registered (and stored, 0600).
    async fn account(&self) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(account) = &*slot {
            return Ok(account.clone());
        }
        let path = self.settings.dir.join("account.json");
        if let Ok(text) = std::fs::read(&path) {
            match serde_json::from_slice::<StoredAccount>(&text) {
                Ok(stored) if stored.directory_url == self.settings.directory_url => {
                    let account = Account::builder_with_http(self.http()?)
                        .from_credentials(stored.credentials)
                        .await
                        .map_err(|e| format!("the ACME directory: {e}"))?;
                    *slot = Some(account.clone());
                    return Ok(account);
                }
                Ok(_) => {
                    tracing::info!(path = %path.display(), "stored ACME account is for another directory; registering a new one")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "stored ACME account unreadable; registering a new one")
                }
            }
        }
        let contact = format!("mailto:{}", self.settings.email);
        let contacts: Vec<&str> = if self.settings.email.is_empty() {
            Vec::new()
        } else {
            vec![contact.as_str()]
        };
        let (account, credentials) = Account::builder_with_http(self.http()?)
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory_url.clone(),
                None,
            )
            .await
            .map_err(|e| format!("registering an account: {e}"))?;
        let stored = StoredAccount {
            directory_url: self.settings.directory_url.clone(),
            credentials,
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| e.to_string())?;
        write_atomically(&path, &json, true).map_err(|e| e.to_string())?;
        tracing::info!(id = %account.id(), "ACME account registered");
        *slot = Some(account.clone());
        Ok(account)
    }

    /// The HTTP client for the directory: Mozilla's roots and `ca_file`.
    fn http(&self) -> Result<Box<dyn instant_acme::HttpClient>, String> {
        let client =
            crate::https_client(self.settings.ca_file.as_deref()).map_err(|e| e.to_string())?;
        Ok(Box::new(HttpClient(client)))
    }

    /// One order for `name`, start to finish, after which the certificate
    /// is stored and returned.
    async fn order(&self, name: &str) -> Result<Arc<LoadedCert>, CertError> {
        let fail = |reason: String| CertError::Acme {
            name: name.to_string(),
            reason,
        };
        let _one = self.orders.lock().await;
        let mut result = self.try_order(name).await;
        if let Err(reason) = &result {
            // The CA forgot the account (a reset test CA): register again.
            if reason.contains("accountDoesNotExist") {
                *self.account.lock().await = None;
                let _ = std::fs::remove_file(self.settings.dir.join("account.json"));
                result = self.try_order(name).await;
            }
        }
        let (chain, key) = result.map_err(fail)?;
        let certs = self.settings.dir.join("certs");
        let (cert_path, key_path) = (
            certs.join(format!("{name}.crt")),
            certs.join(format!("{name}.key")),
        );
        // Key first: a reader that finds the new key beside the old
        // certificate refuses the mismatch.
        write_atomically(&key_path, key.as_bytes(), true)?;
        write_atomically(&cert_path, chain.as_bytes(), true)?;
        Ok(Arc::new(LoadedCert::from_files(
            name, &cert_path, &key_path,
        )?))
    }

    /// The order's steps; the error is the cause, for [`CertError::Acme`].
    async fn try_order(&self, name: &str) -> Result<(String, String), String> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(name.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let kind = self.settings.challenge;
        let mut published = Published {
            challenges: &self.challenges,
            tokens: Vec::new(),
            names: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = authz.challenge(kind.acme_type()).ok_or_else(|| {
                format!("the CA offers no {} challenge for {name}", kind.as_str())
            })?;
            let key_auth = challenge.key_authorization();
            match kind {
                ChallengeKind::Http01 => {
                    lock(&self.challenges.http)
                        .insert(challenge.token.clone(), key_auth.as_str().to_string());
                    published.tokens.push(challenge.token.clone());
                }
                ChallengeKind::TlsAlpn01 => {
                    let cert = alpn_certificate(name, key_auth.digest().as_ref())?;
                    lock(&self.challenges.alpn).insert(name.to_string(), cert);
                    published.names.push(name.to_string());
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("{} challenge: {e}", kind.as_str()))?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(self.settings.order_timeout);
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| format!("{} challenge: {e}", kind.as_str()))?;
        if status != OrderStatus::Ready {
            // The authorization holds the reason the CA refused.
            let mut why = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut authz)) = authorizations.next().await {
                if let Ok(state) = authz.refresh().await {
                    why.extend(
                        state
                            .challenges
                            .iter()
                            .filter_map(|c| c.error.as_ref().map(|p| p.to_string())),
                    );
                }
            }
            let why = if why.is_empty() {
                format!("the order is {status:?}")
            } else {
                why.join("; ")
            };
            return Err(format!("the {} challenge failed: {why}", kind.as_str()));
        }
        drop(published);
        let key = order
            .finalize()
            .await
            .map_err(|e| format!("finalizing the order: {e}"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("downloading the certificate: {e}"))?;
        Ok((chain, key))
    }

    /// Whether `name` is ordered on demand: `on_demand` is set, and the
    /// gateway serves the name, which a public CA may issue for.
    fn wants_on_demand(&self, name: &str) -> bool {
        self.settings.on_demand && Acme::issuable(name) && (self.serves)(name)
    }

    /// Whether `name` is one an ACME CA may issue for: a DNS name of two
    /// labels or more, not `localhost` or under it.
    fn issuable(name: &str) -> bool {
        name.contains('.')
            && name != "localhost"
            && !name.ends_with(".localhost")
            && name.parse::<std::net::IpAddr>().is_err()
            && checked_domain(name).is_ok()
    }
}

impl Source for Acme {
    fn kind(&self) -> &'static str {
        "acme"
    }

    fn claims(&self, name: &str) -> bool {
        self.settings.domains.iter().any(|d| d == name)
            || lock(&self.entries).contains_key(name)
            || self.wants_on_demand(name)
    }

    fn held(&self, name: &str) -> Option<Arc<LoadedCert>> {
        lock(&self.entries).get(name).and_then(|e| e.cert.clone())
    }

    fn prepare(self: Arc<Self>, name: String) -> Preparing {
        if !self.wanted(&name) {
            return Box::pin(std::future::ready(()));
        }
        if let Some(held) = self.held(&name) {
            // A stored certificate for a name no longer listed or served
            // is served as it is until it expires, never ordered again.
            let listed = self.settings.domains.iter().any(|d| d == &name);
            if !listed && !self.wants_on_demand(&name) {
                return Box::pin(std::future::ready(()));
            }
            // Due but still valid: renewed beside the handshake, which is
            // served the current certificate. Expired: the handshake waits.
            let renewal = self.clone().order_once(name);
            if held.not_after() > unix_now() {
                return Box::pin(std::future::ready(()));
            }
            return Box::pin(renewal);
        }
        let running = lock(&self.inflight).get(&name).cloned();
        if let Some(running) = running {
            return Box::pin(running);
        }
        let listed = self.settings.domains.iter().any(|d| d == &name);
        if !listed && !self.new_names.take() {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(name = %name, "ACME on-demand order refused by the rate limit");
            return Box::pin(std::future::ready(()));
        }
        Box::pin(self.order_once(name))
    }

    fn managed(&self) -> Vec<crate::CertInfo> {
        let mut all: Vec<crate::CertInfo> = lock(&self.entries)
            .iter()
            .filter_map(|(name, e)| {
                let c = e.cert.as_ref()?;
                Some(crate::CertInfo {
                    name: format!("acme/{name}"),
                    dns_names: c.dns_names().to_vec(),
                    not_after: c.not_after(),
                })
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn counts(&self) -> Counts {
        Counts {
            issued: self.issued.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory_url", &self.settings.directory_url)
            .field("challenge", &self.settings.challenge)
            .field("held", &lock(&self.entries).len())
            .finish()
    }
}

/// Whether two thirds of `cert`'s lifetime have passed.
fn due(cert: &LoadedCert, now: i64) -> bool {
    let life = cert.not_after().saturating_sub(cert.not_before()).max(0);
    now >= cert.not_before().saturating_add(life / 3 * 2)
}

/// The TLS-ALPN-01 validation certificate (RFC 8737 section 3):
/// self-signed for `name`, with the critical acmeIdentifier extension
/// holding the SHA-256 of the key authorization.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), CertError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| CertError::io(dir, e))
}

/// instant-acme's HTTP client over hyper-util and hyper-rustls, with our
/// TLS configuration (its own default client would bring the platform
/// verifier and aws-lc).
struct HttpClient(
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
);

impl instant_acme::HttpClient for HttpClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>,
    > {
        let response = self.0.request(req);
        Box::pin(async move {
            match response.await {
                Ok(r) => Ok(BytesResponse::from(r)),
                Err(e) => Err(instant_acme::Error::Other(Box::new(e))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime() {
        let dir = crate::testutil::TempDir::new("acme-due");
        let cert = crate::testutil::loaded(dir.path(), "a", &["a.test"]);
        let (start, end) = (cert.not_before(), cert.not_after());
        let two_thirds = start + (end - start) / 3 * 2;
        assert!(!due(&cert, two_thirds - 1));
        assert!(due(&cert, two_thirds));
    }

    #[test]
    fn only_names_a_public_ca_issues_for_are_issuable() {
        for name in ["app.example.com", "nb.sessions.example.org"] {
            assert!(Acme::issuable(name), "{name}");
        }
        for name in ["localhost", "nb.localhost", "intranet", "127.0.0.1", "a..b"] {
            assert!(!Acme::issuable(name), "{name}");
        }
    }

    #[test]
    fn challenge_answers_are_found_by_token_and_name() {
        let c = Challenges::default();
        lock(&c.http).insert("tok".into(), "tok.thumb".into());
        assert_eq!(
            c.http01("/.well-known/acme-challenge/tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(c.http01("/.well-known/acme-challenge/other"), None);
        assert_eq!(c.http01("/tok"), None);
        let cert = alpn_certificate("app.example.com", &[7; 32]).unwrap();
        lock(&c.alpn).insert("app.example.com".into(), cert);
        assert!(c.tls_alpn01("APP.example.com.").is_some());
        assert!(c.tls_alpn01("other.example.com").is_none());
    }

    #[test]
    fn the_alpn_certificate_carries_the_critical_acme_identifier() {
        let digest = [0xab; 32];
        let cert = alpn_certificate("app.example.com", &digest).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&cert.cert[0]).unwrap();
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // An OCTET STRING (0x04) of 32 bytes: the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
    }
}
