//! The control plane's operations: every change to users, groups, sessions,
//! tokens and access goes through [`ControlPlane`], which validates it,
//! writes it under the write lock, and then publishes the affected routes to
//! the gateway.
//!
//! Writes are serialised by one async lock (SQLite has one writer anyway), so
//! a check-then-write such as a state transition cannot race another. Input
//! is validated before the transaction starts and the transaction is rolled
//! back on any error, so bad input never changes stored state. The answer is
//! sent only after the commit and after the gateway's table shows the change.
//!
//! # Layout
//! - this file: [`ControlPlane`], what it is built from ([`Parts`],
//!   [`Settings`]), and its start: the store's tokens, keys, groups and
//!   sessions loaded, every routed session published.
//! - [`directory`]: users, groups and members.
//! - [`tokens`]: API tokens.
//! - [`sessions`]: sessions: create, change, share, lifecycle actions, bulk.
//! - [`reap`]: one pass of the lifecycle reaper (its rules are in
//!   [`crate::session::reaper`]).
//! - [`routing`]: from stored changes to route-table changes, publishing
//!   them, and closing the live connections a change ends.
//! - [`origins`]: the portal host's one browser origin: nested slugs and
//!   `shared_origin`.
//! - [`access`]: browser access: signing keys, access links, their opening.
//!
//! The workshop environments and the training portal's API are built on top
//! of this, in [`crate::workshop`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use gateway::access::KeyHandle;
use gateway::metrics::GatewayMetrics;
use gateway::sync::Follower;
use gateway::{RouteChange, RouteHandle, RoutePublisher};

use crate::access::{self as acc, AccessSettings, GroupCache};
use crate::auth::{TokenKind, TokenSet};
use crate::clock::Clock;
use crate::error::ControlError;
use crate::gateways::Gateways;
use crate::limits::{FailureLimiter, FailureLimiters, FailureLimits, Guessed};
use crate::metrics::Metrics;
use crate::publish::route_spec;
use crate::session::lifecycle::{LifecycleSettings, SessionState};
use crate::session::model::{SessionKind, SessionRecord};
use crate::session::targets::TargetPolicy;
use crate::store::{self, SessionFilter, Store};
use crate::writes::Writes;

pub mod access;
pub mod console;
pub mod directory;
pub mod origins;
pub mod reap;
pub mod replicas;
pub mod routing;
pub mod sessions;
pub mod tokens;

pub use routing::StaticKeys;
pub use sessions::{BulkOutcome, BulkRefusal, PatchBatchError, MAX_PATCH_BATCH};

/// What a control plane is made of: the store it keeps its records in, the
/// route table it publishes to, and the clock its lifecycle reads.
pub struct Parts {
    pub store: Store,
    pub routes: RouteHandle,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// The in-process gateway's request metrics, rendered on `/metrics`.
    pub gateway_metrics: Arc<GatewayMetrics>,
    /// The certificates the HTTPS listener serves, when TLS terminates here:
    /// for warnings about uncovered custom domains, and expiry metrics.
    pub certificates: Option<Arc<certs::SniResolver>>,
    /// The gateways in this process (`serve`'s one): they follow the
    /// control plane's table through the same messages as remote ones.
    pub followers: Vec<Follower>,
}

impl Parts {
    /// The parts every control plane needs; fresh metrics, no certificates.
    pub fn new(store: Store, routes: RouteHandle, clock: Arc<dyn Clock>) -> Parts {
        Parts {
            store,
            routes,
            clock,
            metrics: Metrics::new(),
            gateway_metrics: Arc::new(GatewayMetrics::new()),
            certificates: None,
            followers: Vec::new(),
        }
    }
}

/// The control plane's settings, as the configuration gives them.
#[derive(Clone, Debug)]
pub struct Settings {
    pub lifecycle: LifecycleSettings,
    pub access: AccessSettings,
    /// The SHA-256 of the admin token (see [`crate::auth`]).
    pub admin_token_hash: String,
    /// Slugs and hosts of the configuration file's static routes.
    pub static_keys: StaticKeys,
    /// Where session and environment targets may point
    /// (`sessions.allowed_targets` and sessiongate's own listeners).
    pub targets: TargetPolicy,
    /// Failed authentications allowed per client address.
    pub failures: FailureLimits,
    /// Where sessions' workspace ports may be, and on which address the
    /// gateway opens them.
    pub workspace: WorkspacePolicy,
}

/// The workspace ports a session may be given (`gateway.workspace_*`).
#[derive(Clone, Debug)]
pub struct WorkspacePolicy {
    /// The address the gateway's workspace listeners bind: a port is free
    /// when it can be bound there.
    pub listen: std::net::IpAddr,
    /// Inclusive.
    pub range: (u16, u16),
    /// The workspace CA (`ca.crt` + `ca.key`), which signs the client
    /// certificates of workspace ports over TLS; made at first need.
    pub ca_dir: std::path::PathBuf,
}

impl Default for WorkspacePolicy {
    fn default() -> Self {
        WorkspacePolicy {
            listen: std::net::IpAddr::from([127, 0, 0, 1]),
            range: (30_000, 32_767),
            ca_dir: std::path::PathBuf::from("data/workspace-ca"),
        }
    }
}

/// The CA of workspace ports over TLS in `dir`, made (with a server
/// certificate for `localhost` beside it) if it is not there yet.
pub fn workspace_ca(dir: &std::path::Path) -> Result<certs::dev::DevFiles, certs::CertError> {
    let files = certs::dev::DevFiles {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("localhost.crt"),
        key: dir.join("localhost.key"),
        ca_reused: true,
    };
    if [&files.ca_cert, &files.ca_key, &files.cert, &files.key]
        .iter()
        .all(|p| p.exists())
    {
        return Ok(files);
    }
    certs::dev::generate("localhost", dir)
}

impl Settings {
    /// Defaults for everything but the admin token.
    pub fn new(admin_token_hash: String) -> Settings {
        Settings {
            lifecycle: LifecycleSettings::default(),
            access: AccessSettings::default(),
            admin_token_hash,
            static_keys: StaticKeys::default(),
            targets: TargetPolicy::default(),
            failures: FailureLimits::default(),
            workspace: WorkspacePolicy::default(),
        }
    }
}

pub struct ControlPlane {
    store: Store,
    routes: RouteHandle,
    /// Every session change reaches the table through this one writer, the
    /// path `bench table-updates` measures.
    publisher: RoutePublisher,
    clock: Arc<dyn Clock>,
    settings: LifecycleSettings,
    access: AccessSettings,
    metrics: Metrics,
    gateway_metrics: Arc<GatewayMetrics>,
    certificates: Option<Arc<certs::SniResolver>>,
    /// The write lock; session writes share commits through it
    /// (see [`crate::writes`]).
    writes: Writes,
    /// The API tokens, swapped whole when one is created or deleted (under
    /// the write lock), read without a lock by every API request.
    tokens: ArcSwap<TokenSet>,
    /// Slugs and hosts held by the configuration file's static routes, which
    /// a session may not take; swapped when the file is reloaded.
    static_keys: ArcSwap<StaticKeys>,
    /// Every group's members, shared by the routes that need them. Swapped
    /// only under the write lock, after the commit.
    groups: ArcSwap<GroupCache>,
    /// The cookie keys this control plane signs with; replaced on
    /// rotation, and sent to the gateways then.
    keys: KeyHandle,
    /// The gateways following this control plane's table, in this process
    /// and remote: every table version, key rotation and revocation
    /// reaches them through it.
    gateways: Gateways,
    /// Where targets may point; see [`crate::session::targets`].
    targets: TargetPolicy,
    /// Failed authentications per client address, for every kind of
    /// credential a client can guess; see [`crate::limits`].
    failures: FailureLimiters,
    /// The activity time last written to the store, per session route, so
    /// the reaper writes only what changed. Only the reaper's pass, which
    /// holds the write lock, touches it.
    synced_activity: tokio::sync::Mutex<HashMap<String, u64>>,
    /// The admin token's hash, for rebuilding the token set when another
    /// replica changed the tokens.
    admin_token_hash: String,
    /// The last change-log row applied (see [`replicas`]).
    applied_change: std::sync::atomic::AtomicI64,
    /// Serialises reading the change log (the follower's task, and a
    /// gateway moving here that needs this replica caught up), with what
    /// the gateways' watermark waits for (see [`replicas`]).
    change_reader: tokio::sync::Mutex<replicas::Watermark>,
    /// Whether this replica runs the reaper (see [`replicas`]); always,
    /// alone on SQLite.
    leader: std::sync::atomic::AtomicBool,
    /// OpenID Connect sign-in, when `[oidc]` is configured.
    oidc: std::sync::OnceLock<Arc<crate::oidc::Oidc>>,
    workspace: WorkspacePolicy,
}

impl ControlPlane {
    /// Builds the control plane from what is stored: the API tokens, the
    /// cookie signing keys (the first one made on a new store), the groups,
    /// and every routed session, published to the table in one version. Call
    /// it once, before any listener serves (inside a tokio runtime: it
    /// starts the publisher task).
    pub async fn start(parts: Parts, settings: Settings) -> Result<ControlPlane, ControlError> {
        let Parts {
            store,
            routes,
            clock,
            metrics,
            gateway_metrics,
            certificates,
            followers,
        } = parts;
        let publisher = RoutePublisher::spawn(routes.clone());
        let writes = Writes::new(store.clone(), publisher.clone());
        let mut c = store.conn().await?;
        // Rows logged from here on are applied by the change follower; what
        // is read below is at least as new.
        let applied_change = store::last_change(&mut c).await?;
        let admin_token_hash = settings.admin_token_hash.clone();
        let mut tokens = TokenSet::new(settings.admin_token_hash);
        for t in store::tokens_list(&mut c).await? {
            if let Some(kind) = TokenKind::parse(&t.kind) {
                tokens.add_named(t.hash, kind, &t.name);
            }
        }
        let mut groups = GroupCache::new();
        for (name, _) in store::groups_list(&mut c).await? {
            groups.insert(name, acc::members(Vec::new()));
        }
        for (name, m) in store::group_members(&mut c, None).await? {
            groups.insert(name, acc::members(m));
        }
        drop(c);
        let ring = Arc::new(access::load_keys(&writes, &*clock, &settings.access).await?);
        let keys = KeyHandle::shared(Arc::clone(&ring));
        let gateways = Gateways::follow(routes.clone(), ring, followers, Arc::clone(&clock));
        let cp = ControlPlane {
            store,
            routes,
            publisher,
            clock,
            settings: settings.lifecycle,
            access: settings.access,
            metrics,
            gateway_metrics,
            certificates,
            writes,
            tokens: ArcSwap::from_pointee(tokens),
            static_keys: ArcSwap::from_pointee(settings.static_keys),
            groups: ArcSwap::from_pointee(groups),
            keys,
            gateways,
            targets: settings.targets,
            failures: FailureLimiters::new(settings.failures),
            synced_activity: tokio::sync::Mutex::new(HashMap::new()),
            admin_token_hash,
            applied_change: std::sync::atomic::AtomicI64::new(applied_change),
            change_reader: tokio::sync::Mutex::new(replicas::Watermark::default()),
            leader: std::sync::atomic::AtomicBool::new(true),
            oidc: std::sync::OnceLock::new(),
            workspace: settings.workspace,
        };
        let n = cp.publish_stored_sessions().await?;
        tracing::info!(sessions = n, "sessions restored from the store");
        // Everything logged up to `applied_change` was read above.
        cp.gateways.set_watermark(applied_change.max(0) as u64);
        Ok(cp)
    }

    /// Publishes every live session in the store, in one table version.
    async fn publish_stored_sessions(&self) -> Result<usize, ControlError> {
        let mut c = self.store.conn().await?;
        let sessions = store::sessions_in_states(&mut c, &SessionState::LIVE).await?;
        let groups = self.group_cache();
        let mut changes = Vec::with_capacity(sessions.len());
        for s in &sessions {
            match route_spec(s, &groups) {
                Ok(Some(spec)) => changes.push(RouteChange::Upsert(spec)),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(session = %s.name, error = %e, "stored session cannot be routed")
                }
            }
        }
        let n = changes.len();
        if n > 0 {
            self.routes
                .apply(None, changes)
                .map_err(|e| ControlError::Publish(e.to_string()))?;
        }
        Ok(n)
    }

    pub fn gateway_metrics(&self) -> &Arc<GatewayMetrics> {
        &self.gateway_metrics
    }

    /// `(pair name, notAfter)` of every certificate served, for metrics.
    /// The HTTPS listener's certificate resolver, in `serve` with one.
    pub fn certificate_resolver(&self) -> Option<&certs::SniResolver> {
        self.certificates.as_deref()
    }

    pub fn certificate_expiries(&self) -> Vec<(String, i64)> {
        self.certificates
            .as_ref()
            .map(|r| {
                r.certificates()
                    .into_iter()
                    .map(|c| (c.name, c.not_after))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Warnings about `rec` for the operator: a custom domain that no loaded
    /// certificate covers (its TLS handshakes get the default certificate).
    pub fn warnings(&self, rec: &SessionRecord) -> Vec<String> {
        let covered = |d: &str| {
            self.certificates.as_ref().is_none_or(|r| {
                r.certificates()
                    .iter()
                    .any(|c| certs::name_covers(&c.dns_names, d))
            })
        };
        let on_demand = |d: &str| self.certificates.as_ref().and_then(|r| r.on_demand_kind(d));
        match &rec.custom_domain {
            Some(d) if !covered(d) && on_demand(d) == Some("acme") => Vec::new(),
            Some(d) if !covered(d) && on_demand(d) == Some("dev") => vec![format!(
                "no certificate in the certificates directory covers custom_domain {d:?}; \
                 TLS handshakes for it get a leaf from the development CA, which only browsers \
                 that trust that CA accept, until {d}.crt and {d}.key are added or \
                 [tls.acme] on_demand orders one"
            )],
            Some(d) if !covered(d) => vec![format!(
                "no certificate in the certificates directory covers custom_domain {d:?}; \
                 TLS handshakes for it get the default certificate until {d}.crt and {d}.key are added"
            )],
            _ => Vec::new(),
        }
    }

    /// The brute-force limit on guesses at `secret`: check a client before
    /// looking at its credential, count each one that is wrong.
    pub fn failures(&self, secret: Guessed) -> &FailureLimiter {
        self.failures.of(secret)
    }

    /// Where targets may point: `sessions.allowed_targets` (or, without
    /// it, the default rule) and sessiongate's own listeners.
    pub(crate) fn target_policy(&self) -> &TargetPolicy {
        &self.targets
    }

    /// Refuses a tunnel session's target that [`Self::target_policy`] does
    /// not allow, when it is new or changed from `old`'s: a session stored
    /// before the rule changed keeps its target through other changes.
    pub(crate) fn check_session_target(
        &self,
        old: Option<&SessionRecord>,
        rec: &SessionRecord,
    ) -> Result<(), ControlError> {
        let target = |r: &SessionRecord| (r.kind, r.remote_host.clone(), r.remote_port);
        if old.is_some_and(|o| target(o) == target(rec)) {
            return Ok(());
        }
        match (rec.kind, rec.remote_host.as_deref(), rec.remote_port) {
            (SessionKind::Tunnel, Some(host), Some(port)) => self
                .targets
                .check(host, port)
                .map_err(|m| crate::session::model::invalid("remote_host", m).into()),
            _ => Ok(()),
        }
    }

    /// The keys this control plane signs cookies with.
    pub fn keys(&self) -> &KeyHandle {
        &self.keys
    }

    /// The cookie keys as they are now.
    pub fn key_ring(&self) -> Arc<gateway::access::KeyRing> {
        Arc::clone(&self.keys.load())
    }

    /// Every gateway this control plane drives.
    pub fn gateways(&self) -> &Gateways {
        &self.gateways
    }

    pub fn access_settings(&self) -> &AccessSettings {
        &self.access
    }

    pub fn routes(&self) -> &RouteHandle {
        &self.routes
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn settings(&self) -> &LifecycleSettings {
        &self.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn workspace_policy(&self) -> &WorkspacePolicy {
        &self.workspace
    }

    /// Enables OpenID Connect sign-in; once.
    pub fn set_oidc(&self, oidc: Arc<crate::oidc::Oidc>) {
        let _ = self.oidc.set(oidc);
    }

    pub fn oidc(&self) -> Option<&Arc<crate::oidc::Oidc>> {
        self.oidc.get()
    }

    /// The write lock, for the operations built on this one (the workshop).
    pub(crate) fn writes(&self) -> &Writes {
        &self.writes
    }

    /// Every group's members, as the routes hold them now.
    pub(crate) fn group_cache(&self) -> Arc<GroupCache> {
        self.groups.load_full()
    }

    /// Shared commits of session writes so far, and the writes they covered.
    pub fn commit_counts(&self) -> (u64, u64) {
        self.writes.commit_counts()
    }

    /// Commits the shared transaction if one is open (at shutdown, before
    /// the store closes).
    pub async fn flush_writes(&self) {
        self.writes.flush().await;
    }

    /// Sessions by state, for the metrics.
    pub async fn count_by_state(&self) -> Result<BTreeMap<SessionState, u64>, ControlError> {
        let mut c = self.store.conn().await?;
        let mut out = BTreeMap::new();
        for s in SessionState::ALL {
            let f = SessionFilter {
                states: vec![s],
                page: 1,
                per_page: 0,
                ..SessionFilter::default()
            };
            out.insert(s, store::sessions_list(&mut c, &f).await?.1);
        }
        Ok(out)
    }
}

/// `names`, sorted, without duplicates.
pub(crate) fn sorted_unique(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
}

/// An invalid `field` naming the `what`s that do not exist.
pub(crate) fn unknown(field: &str, what: &str, names: &[String]) -> ControlError {
    let list = names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let s = if names.len() == 1 { "" } else { "s" };
    crate::session::model::invalid(field, format!("no such {what}{s}: {list}")).into()
}
