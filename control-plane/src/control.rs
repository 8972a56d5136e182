//! The control plane's operations: every change to users, groups, sessions
//! and tokens goes through [`ControlPlane`], which validates it, writes it in
//! one transaction, and then publishes the affected routes to the gateway.
//!
//! Writes are serialised by one async lock (SQLite has one writer anyway), so
//! a check-then-write such as a state transition cannot race another. Input
//! is validated before the transaction starts and the transaction is dropped
//! (rolled back) on any error, so bad input never changes stored state. The
//! answer is sent only after the commit and after the gateway's table shows
//! the change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::writes::{Joined, WriteError, Writes};
use gateway::access::{Activation, ActivationError, ActivationRequest, KeyHandle};
use gateway::{RouteChange, RouteHandle, RoutePublisher, RouteState};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteConnection;
use utoipa::ToSchema;

use crate::access::{self as acc, AccessLink, AccessSettings, GroupCache, KeyRotation};
use crate::auth::{self, TokenKind, TokenSet};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::publish::{route_id, route_spec};
use crate::session::lifecycle::{Action, SessionState, TransitionError};
use crate::session::model::{
    self, invalid, Group, Invalid, NewGroup, NewSession, NewUser, SessionKind, SessionPatch,
    SessionRecord, User, UserPatch,
};
use crate::store::{self, AccessTokenRow, SessionFilter, Store, StoreError, TokenRow, UserRow};
use crate::time::rfc3339_millis;
use crate::workshop::environment::{
    self as env, Environment, EnvironmentPatch, EnvironmentRecord, EnvironmentState, NewEnvironment,
};
use crate::workshop::portal::{
    self, Allocation, OAuthClient, OAuthError, TokenAnswer, WorkshopError, WorkshopRequest,
    WorkshopSettings,
};

/// Lifecycle settings (the `[sessions]` configuration section).
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleSettings {
    /// A pending session not activated within this is deleted.
    pub activation_deadline: Duration,
    /// Expired and deleted records are purged after this.
    pub retention: Duration,
    /// An evicted session without activity for this long expires.
    pub evicted_expiry: Duration,
    /// How often the reaper runs.
    pub reaper_interval: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            activation_deadline: Duration::from_secs(60),
            retention: Duration::from_secs(86_400),
            evicted_expiry: Duration::from_secs(30 * 86_400),
            reaper_interval: Duration::from_secs(5),
        }
    }
}

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("session {name:?}: {err}")]
    Transition { name: String, err: TransitionError },
    #[error("session {0:?} is not extendable")]
    NotExtendable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored, but the route table refused it: {0}")]
    Publish(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("session {name:?} is {state} and can no longer be opened")]
    Finished { name: String, state: SessionState },
    #[error("{0}")]
    Internal(String),
}

impl From<WriteError> for ControlError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Store(e) => ControlError::Store(e),
            WriteError::Commit(m) => ControlError::Internal(m),
            WriteError::Publish(m) => ControlError::Publish(m),
        }
    }
}

/// A stored change the route table would not take.
fn table_refused(e: gateway::PublishError) -> ControlError {
    tracing::error!(error = %e, "route table refused a stored change");
    ControlError::Publish(e.to_string())
}

impl From<sqlx::Error> for ControlError {
    fn from(e: sqlx::Error) -> Self {
        ControlError::Store(StoreError::Db(e))
    }
}

/// A ring to verify with until [`ControlPlane::start`] loads the stored
/// keys: a random key nobody holds, so nothing verifies against it.
fn placeholder_ring() -> gateway::access::KeyRing {
    let mut secret = [0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret);
    gateway::access::KeyRing::new(
        gateway::access::SigningKey::new("unset", &secret)
            .unwrap_or_else(|_| unreachable!("a valid id and a 32-byte secret")),
        None,
    )
}

fn not_found(what: &'static str, name: &str) -> ControlError {
    ControlError::NotFound {
        what,
        name: name.to_string(),
    }
}

/// One name's outcome in a bulk action.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    pub name: String,
    /// Whether the action was applied to this session.
    pub ok: bool,
    /// The session's state afterwards (absent if there is no such session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<SessionState>,
    /// Why it was not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<BulkError>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkError {
    pub code: String,
    pub message: String,
}

/// An API token as listed (never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub kind: TokenKind,
    pub created: String,
}

/// What the reaper did in one pass, by action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Pending sessions past their activation deadline.
    pub deleted_unactivated: Vec<String>,
    /// Running sessions past `expires`.
    pub expired: Vec<String>,
    /// Running sessions idle longer than their idle timeout.
    pub expired_idle: Vec<String>,
    /// Evicted sessions without activity for the evicted expiry.
    pub expired_evicted: Vec<String>,
    /// Expired and deleted records past the retention.
    pub purged: Vec<String>,
}

pub struct ControlPlane {
    store: Store,
    routes: RouteHandle,
    /// Every session change reaches the table through this one writer, the
    /// path `bench table-updates` measures.
    publisher: RoutePublisher,
    clock: Arc<dyn Clock>,
    settings: LifecycleSettings,
    metrics: Metrics,
    /// The write lock; session writes share commits through it
    /// (see [`crate::writes`]).
    writes: Writes,
    tokens: RwLock<TokenSet>,
    /// Slugs and hosts held by the configuration file's static routes, which
    /// a session may not take.
    static_keys: RwLock<StaticKeys>,
    /// The activity time last written to the store, per session route, so
    /// the reaper writes only what changed.
    synced_activity: std::sync::Mutex<HashMap<String, u64>>,
    /// The cookie keys the gateway verifies with; replaced on rotation.
    keys: KeyHandle,
    access: RwLock<AccessSettings>,
    /// Every group's members, shared by the routes that need them. Changed
    /// only under the write lock, after the commit.
    groups: RwLock<GroupCache>,
    /// The certificates the HTTPS listener serves, when TLS terminates here:
    /// for warnings about uncovered custom domains, and expiry metrics.
    certificates: RwLock<Option<Arc<certs::SniResolver>>>,
    workshop: RwLock<WorkshopSettings>,
    /// The in-process gateway's request metrics, rendered on `/metrics`.
    gateway_metrics: Arc<gateway::metrics::GatewayMetrics>,
}

#[derive(Clone, Debug, Default)]
pub struct StaticKeys {
    pub hosts: HashSet<String>,
    pub slugs: HashSet<String>,
}

impl StaticKeys {
    pub fn from_specs(specs: &[gateway::RouteSpec]) -> Self {
        let norm = |s: &String| s.trim_end_matches('.').to_ascii_lowercase();
        StaticKeys {
            hosts: specs
                .iter()
                .flat_map(|s| s.hosts.iter().map(norm))
                .collect(),
            slugs: specs
                .iter()
                .flat_map(|s| s.slugs.iter().map(|x| x.trim_end_matches('/').to_string()))
                .collect(),
        }
    }
}

/// Page size when none is asked for, and the most one page may hold.
pub const DEFAULT_PER_PAGE: u64 = 50;
pub const MAX_PER_PAGE: u64 = 1000;

impl ControlPlane {
    /// Must be called inside a tokio runtime (it starts the publisher task).
    pub fn new(
        store: Store,
        routes: RouteHandle,
        clock: Arc<dyn Clock>,
        settings: LifecycleSettings,
        admin_token_hash: String,
        metrics: Metrics,
    ) -> Self {
        let publisher = RoutePublisher::spawn(routes.clone());
        ControlPlane {
            writes: Writes::new(store.clone(), publisher.clone()),
            store,
            publisher,
            routes,
            clock,
            settings,
            metrics,
            tokens: RwLock::new(TokenSet::new(admin_token_hash)),
            static_keys: RwLock::new(StaticKeys::default()),
            synced_activity: std::sync::Mutex::new(HashMap::new()),
            keys: KeyHandle::new(placeholder_ring()),
            access: RwLock::new(AccessSettings::default()),
            groups: RwLock::new(GroupCache::new()),
            certificates: RwLock::new(None),
            gateway_metrics: Arc::new(gateway::metrics::GatewayMetrics::new()),
            workshop: RwLock::new(WorkshopSettings {
                portal_name: "sessiongate".into(),
                token_ttl_secs: 36_000,
                ..WorkshopSettings::default()
            }),
        }
    }

    pub fn gateway_metrics(&self) -> &Arc<gateway::metrics::GatewayMetrics> {
        &self.gateway_metrics
    }

    pub fn workshop_settings(&self) -> WorkshopSettings {
        self.workshop
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_workshop_settings(&self, settings: WorkshopSettings) {
        *self.workshop.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// The URL on the session's own host that opens it with `token` (what
    /// `POST …/access` answers).
    pub fn activation_url(&self, s: &SessionRecord, token: &str) -> String {
        self.link_url(s, token, &self.access_settings())
    }

    // ---- OAuth2 for the workshop API ----

    /// The password grant: client credentials and the robot account, each
    /// compared in constant time.
    pub async fn oauth_password_grant(
        &self,
        client: (&str, &str),
        username: &str,
        password: &str,
    ) -> Result<TokenAnswer, OAuthError> {
        let oauth = self.check_client(client)?;
        let user_ok = auth::constant_time_eq(username.as_bytes(), oauth.robot_username.as_bytes());
        let pass_ok = auth::constant_time_eq(password.as_bytes(), oauth.robot_password.as_bytes());
        if !(user_ok & pass_ok) {
            return Err(OAuthError::InvalidGrant);
        }
        self.issue_tokens(username).await
    }

    /// The refresh grant: the refresh token is used once.
    pub async fn oauth_refresh_grant(
        &self,
        client: (&str, &str),
        refresh_token: &str,
    ) -> Result<TokenAnswer, OAuthError> {
        self.check_client(client)?;
        let now = self.now_ms();
        let hash = auth::hash_token(refresh_token);
        let user = {
            let _w = self.writes.exclusive().await;
            let mut tx = self.store.begin().await.map_err(ControlError::from)?;
            let user = store::oauth_token_user(&mut tx, &hash, "refresh", now)
                .await
                .map_err(ControlError::from)?;
            store::oauth_token_delete(&mut tx, &hash, now)
                .await
                .map_err(ControlError::from)?;
            tx.commit().await.map_err(ControlError::from)?;
            user
        };
        match user {
            Some(u) => self.issue_tokens(&u).await,
            None => Err(OAuthError::InvalidGrant),
        }
    }

    fn check_client(&self, (id, secret): (&str, &str)) -> Result<OAuthClient, OAuthError> {
        let Some(oauth) = self.workshop_settings().oauth else {
            return Err(OAuthError::InvalidClient);
        };
        let id_ok = auth::constant_time_eq(id.as_bytes(), oauth.client_id.as_bytes());
        let secret_ok = auth::constant_time_eq(secret.as_bytes(), oauth.client_secret.as_bytes());
        if id_ok & secret_ok {
            Ok(oauth)
        } else {
            Err(OAuthError::InvalidClient)
        }
    }

    async fn issue_tokens(&self, username: &str) -> Result<TokenAnswer, OAuthError> {
        let now = self.now_ms();
        let ttl = self.workshop_settings().token_ttl_secs;
        let access = auth::random_token().map_err(|e| ControlError::Internal(e.to_string()))?;
        let refresh = auth::random_token().map_err(|e| ControlError::Internal(e.to_string()))?;
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await.map_err(ControlError::from)?;
        store::oauth_token_insert(
            &mut tx,
            &auth::hash_token(&access),
            "access",
            username,
            now + ttl * 1000,
        )
        .await
        .map_err(ControlError::from)?;
        // A refresh token outlives its access token (here: ten times over).
        store::oauth_token_insert(
            &mut tx,
            &auth::hash_token(&refresh),
            "refresh",
            username,
            now + ttl * 10_000,
        )
        .await
        .map_err(ControlError::from)?;
        tx.commit().await.map_err(ControlError::from)?;
        tracing::info!(user = %username, "workshop API token issued");
        Ok(TokenAnswer {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: ttl,
            refresh_token: refresh,
            scope: "user:info".into(),
        })
    }

    /// Whether `token` is an unexpired OAuth2 access token.
    pub async fn check_oauth_token(&self, token: &str) -> Result<bool, ControlError> {
        let mut c = self.store.conn().await?;
        Ok(
            store::oauth_token_user(&mut c, &auth::hash_token(token), "access", self.now_ms())
                .await?
                .is_some(),
        )
    }

    pub fn set_certificates(&self, resolver: Arc<certs::SniResolver>) {
        *self.certificates.write().unwrap_or_else(|e| e.into_inner()) = Some(resolver);
    }

    /// `(pair name, notAfter)` of every certificate served, for metrics.
    pub fn certificate_expiries(&self) -> Vec<(String, i64)> {
        let certs = self.certificates.read().unwrap_or_else(|e| e.into_inner());
        certs
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
        let certs = self.certificates.read().unwrap_or_else(|e| e.into_inner());
        let covered = |d: &str| {
            certs.as_ref().is_none_or(|r| {
                r.certificates()
                    .iter()
                    .any(|c| certs::name_covers(&c.dns_names, d))
            })
        };
        match &rec.custom_domain {
            Some(d) if !covered(d) => vec![format!(
                "no certificate in the certificates directory covers custom_domain {d:?}; \
                 TLS handshakes for it get the default certificate until {d}.crt and {d}.key are added"
            )],
            _ => Vec::new(),
        }
    }

    /// The keys the gateway verifies cookies with (loaded by [`Self::start`]).
    pub fn keys(&self) -> &KeyHandle {
        &self.keys
    }

    pub fn access_settings(&self) -> AccessSettings {
        self.access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_access_settings(&self, settings: AccessSettings) {
        *self.access.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    fn group_cache(&self) -> std::sync::RwLockReadGuard<'_, GroupCache> {
        self.groups.read().unwrap_or_else(|e| e.into_inner())
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

    pub fn set_static_keys(&self, keys: StaticKeys) {
        *self.static_keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Loads the API tokens from the store and publishes every routed session,
    /// in one table version. Called once before any listener accepts.
    pub async fn start(&self) -> Result<usize, ControlError> {
        let mut c = self.store.conn().await?;
        {
            let rows = store::tokens_list(&mut c).await?;
            let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
            for t in rows {
                if let Some(kind) = TokenKind::parse(&t.kind) {
                    tokens.add(t.hash, kind);
                }
            }
        }
        self.load_keys(&mut c).await?;
        {
            let all = store::group_members(&mut c, None).await?;
            let mut cache = GroupCache::new();
            for (name, _) in store::groups_list(&mut c).await? {
                cache.insert(name, acc::members(Vec::new()));
            }
            for (name, m) in all {
                cache.insert(name, acc::members(m));
            }
            *self.groups.write().unwrap_or_else(|e| e.into_inner()) = cache;
        }
        let sessions = store::sessions_in_states(
            &mut c,
            &[
                SessionState::Pending,
                SessionState::Running,
                SessionState::Paused,
                SessionState::Evicted,
            ],
        )
        .await?;
        let groups = self.group_cache().clone();
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

    // ---- tokens ----

    /// What the bearer token may do, if it is valid.
    pub fn check_token(&self, token: &str) -> Option<TokenKind> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .check(token)
    }

    /// Creates a token; the plain token is returned this once.
    pub async fn create_token(
        &self,
        name: &str,
        kind: TokenKind,
    ) -> Result<(TokenInfo, String), ControlError> {
        model::validate_name("name", name)?;
        let token = auth::random_token().map_err(|e| ControlError::Publish(e.to_string()))?;
        let row = TokenRow {
            name: name.to_string(),
            kind: kind.as_str().to_string(),
            hash: auth::hash_token(&token),
            created_ms: self.now_ms(),
        };
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        if store::tokens_list(&mut tx)
            .await?
            .iter()
            .any(|t| t.name == name)
        {
            return Err(ControlError::Conflict(format!(
                "token {name:?} already exists"
            )));
        }
        store::token_insert(&mut tx, &row).await?;
        tx.commit().await?;
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add(row.hash.clone(), kind);
        tracing::info!(token = %name, kind = kind.as_str(), "api token created");
        Ok((token_info(&row), token))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ControlError> {
        let mut c = self.store.conn().await?;
        Ok(store::tokens_list(&mut c)
            .await?
            .iter()
            .map(token_info)
            .collect())
    }

    pub async fn delete_token(&self, name: &str) -> Result<(), ControlError> {
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let rows = store::tokens_list(&mut tx).await?;
        let row = rows
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| not_found("token", name))?;
        store::token_delete(&mut tx, name).await?;
        tx.commit().await?;
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&row.hash);
        tracing::info!(token = %name, "api token deleted");
        Ok(())
    }

    // ---- users ----

    pub async fn create_user(&self, input: NewUser) -> Result<User, ControlError> {
        model::validate_user_name("name", &input.name)?;
        model::validate_optional_text("email", &input.email)?;
        model::validate_optional_text("first_name", &input.first_name)?;
        model::validate_optional_text("last_name", &input.last_name)?;
        let row = UserRow {
            id: format!(
                "u-{}",
                auth::random_hex(8).map_err(|e| ControlError::Publish(e.to_string()))?
            ),
            name: input.name,
            email: input.email,
            first_name: input.first_name,
            last_name: input.last_name,
            created_ms: self.now_ms(),
        };
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        if store::user_exists(&mut tx, &row.name).await? {
            return Err(ControlError::Conflict(format!(
                "user {:?} already exists",
                row.name
            )));
        }
        store::user_insert(&mut tx, &row).await?;
        tx.commit().await?;
        tracing::info!(user = %row.name, "user created");
        Ok(user_view(row, vec![]))
    }

    pub async fn get_user(&self, name: &str) -> Result<User, ControlError> {
        let mut c = self.store.conn().await?;
        let row = store::user_get(&mut c, name)
            .await?
            .ok_or_else(|| not_found("user", name))?;
        let mut groups = store::groups_of_users(&mut c, std::slice::from_ref(&row.name)).await?;
        let g = groups.remove(&row.name).unwrap_or_default();
        Ok(user_view(row, g))
    }

    pub async fn list_users(
        &self,
        q: Option<&str>,
        page: u64,
        per_page: u64,
    ) -> Result<(Vec<User>, u64), ControlError> {
        let mut c = self.store.conn().await?;
        let (rows, total) = store::users_list(&mut c, q, page, per_page).await?;
        let names: Vec<String> = rows.iter().map(|u| u.name.clone()).collect();
        let mut groups = store::groups_of_users(&mut c, &names).await?;
        let users = rows
            .into_iter()
            .map(|u| {
                let g = groups.remove(&u.name).unwrap_or_default();
                user_view(u, g)
            })
            .collect();
        Ok((users, total))
    }

    pub async fn update_user(&self, name: &str, patch: UserPatch) -> Result<User, ControlError> {
        for (field, v) in [
            ("email", &patch.email),
            ("first_name", &patch.first_name),
            ("last_name", &patch.last_name),
        ] {
            if let Some(v) = v {
                model::validate_optional_text(field, v)?;
            }
        }
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let mut row = store::user_get(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("user", name))?;
        if let Some(v) = patch.email {
            row.email = v;
        }
        if let Some(v) = patch.first_name {
            row.first_name = v;
        }
        if let Some(v) = patch.last_name {
            row.last_name = v;
        }
        store::user_update(&mut tx, &row).await?;
        tx.commit().await?;
        drop(_w);
        self.get_user(name).await
    }

    /// Deletes a user who owns no session that can still be used; their
    /// finished session records and group memberships go with them.
    pub async fn delete_user(&self, name: &str) -> Result<(), ControlError> {
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        if !store::user_exists(&mut tx, name).await? {
            return Err(not_found("user", name));
        }
        let live = store::user_live_sessions(&mut tx, name).await?;
        if live > 0 {
            return Err(ControlError::Conflict(format!(
                "user {name:?} owns {live} session(s) that are not expired or deleted; \
                 delete or expire them first"
            )));
        }
        let groups: Vec<String> = store::groups_of_users(&mut tx, &[name.to_string()])
            .await?
            .remove(name)
            .unwrap_or_default();
        store::user_purge_finished_sessions(&mut tx, name).await?;
        store::user_delete(&mut tx, name).await?;
        let updates = self.member_lists(&mut tx, &groups).await?;
        let shared = Self::sessions_shared(&mut tx, &groups).await?;
        tx.commit().await?;
        self.groups_changed(updates, shared).await?;
        tracing::info!(user = %name, "user deleted");
        Ok(())
    }

    // ---- groups ----

    pub async fn create_group(&self, input: NewGroup) -> Result<Group, ControlError> {
        model::validate_name("name", &input.name)?;
        let members = sorted_unique(input.members);
        for m in &members {
            model::validate_user_name("members", m)?;
        }
        let now = self.now_ms();
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        if store::group_created(&mut tx, &input.name).await?.is_some() {
            return Err(ControlError::Conflict(format!(
                "group {:?} already exists",
                input.name
            )));
        }
        let missing = store::missing_users(&mut tx, &members).await?;
        if !missing.is_empty() {
            return Err(unknown("members", "user", &missing));
        }
        store::group_insert(&mut tx, &input.name, now).await?;
        for m in &members {
            store::member_add(&mut tx, &input.name, m).await?;
        }
        tx.commit().await?;
        self.groups_changed(
            vec![(input.name.clone(), Some(members.clone()))],
            Vec::new(),
        )
        .await?;
        tracing::info!(group = %input.name, members = members.len(), "group created");
        Ok(Group {
            name: input.name,
            members,
            created: rfc3339_millis(now),
        })
    }

    pub async fn get_group(&self, name: &str) -> Result<Group, ControlError> {
        let mut c = self.store.conn().await?;
        group_view(&mut c, name).await
    }

    pub async fn list_groups(&self) -> Result<Vec<Group>, ControlError> {
        let mut c = self.store.conn().await?;
        let groups = store::groups_list(&mut c).await?;
        let mut members = store::group_members(&mut c, None).await?;
        Ok(groups
            .into_iter()
            .map(|(name, created)| Group {
                members: members.remove(&name).unwrap_or_default(),
                name,
                created: rfc3339_millis(created),
            })
            .collect())
    }

    /// Deletes a group; sessions shared with it are no longer shared with it.
    pub async fn delete_group(&self, name: &str) -> Result<(), ControlError> {
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let shared = Self::sessions_shared(&mut tx, &[name.to_string()]).await?;
        if !store::group_delete(&mut tx, name).await? {
            return Err(not_found("group", name));
        }
        tx.commit().await?;
        let shared = shared
            .into_iter()
            .map(|mut s| {
                s.groups.retain(|g| g != name);
                s
            })
            .collect();
        self.groups_changed(vec![(name.to_string(), None)], shared)
            .await?;
        tracing::info!(group = %name, "group deleted");
        Ok(())
    }

    /// Replaces the members of a group.
    pub async fn set_members(
        &self,
        group: &str,
        members: Vec<String>,
    ) -> Result<Group, ControlError> {
        let members = sorted_unique(members);
        for m in &members {
            model::validate_user_name("members", m)?;
        }
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        if store::group_created(&mut tx, group).await?.is_none() {
            return Err(not_found("group", group));
        }
        let missing = store::missing_users(&mut tx, &members).await?;
        if !missing.is_empty() {
            return Err(unknown("members", "user", &missing));
        }
        let current = store::group_members(&mut tx, Some(group))
            .await?
            .remove(group)
            .unwrap_or_default();
        for old in &current {
            if !members.contains(old) {
                store::member_remove(&mut tx, group, old).await?;
            }
        }
        for m in &members {
            store::member_add(&mut tx, group, m).await?;
        }
        let view = group_view(&mut tx, group).await?;
        let shared = Self::sessions_shared(&mut tx, &[group.to_string()]).await?;
        tx.commit().await?;
        self.groups_changed(
            vec![(group.to_string(), Some(view.members.clone()))],
            shared,
        )
        .await?;
        tracing::info!(group = %group, members = members.len(), "group members replaced");
        Ok(view)
    }

    pub async fn add_member(&self, group: &str, user: &str) -> Result<Group, ControlError> {
        model::validate_user_name("user", user)?;
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        if store::group_created(&mut tx, group).await?.is_none() {
            return Err(not_found("group", group));
        }
        if !store::user_exists(&mut tx, user).await? {
            return Err(unknown("user", "user", &[user.to_string()]));
        }
        store::member_add(&mut tx, group, user).await?;
        let view = group_view(&mut tx, group).await?;
        let shared = Self::sessions_shared(&mut tx, &[group.to_string()]).await?;
        tx.commit().await?;
        self.groups_changed(
            vec![(group.to_string(), Some(view.members.clone()))],
            shared,
        )
        .await?;
        tracing::info!(group = %group, user = %user, "group member added");
        Ok(view)
    }

    pub async fn remove_member(&self, group: &str, user: &str) -> Result<Group, ControlError> {
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        if store::group_created(&mut tx, group).await?.is_none() {
            return Err(not_found("group", group));
        }
        if !store::member_remove(&mut tx, group, user).await? {
            return Err(ControlError::NotFound {
                what: "member",
                name: format!("{user} in group {group}"),
            });
        }
        let view = group_view(&mut tx, group).await?;
        let shared = Self::sessions_shared(&mut tx, &[group.to_string()]).await?;
        tx.commit().await?;
        self.groups_changed(
            vec![(group.to_string(), Some(view.members.clone()))],
            shared,
        )
        .await?;
        tracing::info!(group = %group, user = %user, "group member removed");
        Ok(view)
    }

    // ---- sessions ----

    pub async fn get_session(&self, name: &str) -> Result<SessionRecord, ControlError> {
        let mut c = self.store.conn().await?;
        store::session_get(&mut c, name)
            .await?
            .ok_or_else(|| not_found("session", name))
    }

    pub async fn list_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<(Vec<SessionRecord>, u64), ControlError> {
        let mut c = self.store.conn().await?;
        Ok(store::sessions_list(&mut c, filter).await?)
    }

    pub async fn create_session(&self, input: NewSession) -> Result<SessionRecord, ControlError> {
        let now = self.now_ms();
        model::validate_name("name", &input.name)?;
        model::validate_user_name("owner", &input.owner)?;
        let kind = input.kind.unwrap_or(SessionKind::Tunnel);
        let groups = sorted_unique(input.groups);
        for g in &groups {
            model::validate_name("groups", g)?;
        }
        let (state, activated_ms, expires_ms) = if input.pending {
            (SessionState::Pending, None, None)
        } else {
            (
                SessionState::Running,
                Some(now),
                input.duration.map(|d| now + d * 1000),
            )
        };
        let rec = SessionRecord {
            name: input.name,
            kind,
            remote_host: match kind {
                SessionKind::Tunnel => {
                    Some(input.remote_host.unwrap_or_else(|| "localhost".into()))
                }
                SessionKind::Link => input.remote_host,
            },
            remote_port: input.remote_port,
            url: input.url,
            https: input.https,
            tls_verify: input.tls_verify.unwrap_or(true),
            slug: input
                .slug
                .as_deref()
                .map(model::normalize_slug)
                .transpose()?,
            strip_prefix: input.strip_prefix,
            rewrite_host: input.rewrite_host,
            custom_domain: input
                .custom_domain
                .as_deref()
                .map(|d| model::normalize_custom_domain(d, &self.base_domains()))
                .transpose()?,
            workspace_port: input.workspace_port,
            owner: input.owner,
            groups,
            public: input.public,
            state,
            created_ms: now,
            activated_ms,
            expires_ms,
            last_activity_ms: None,
            paused_ms: None,
            state_changed_ms: now,
            duration_secs: input.duration,
            idle_timeout_secs: input.idle_timeout,
            extendable: input.extendable.unwrap_or(true),
            environment: input.environment,
            labels: input.labels,
            activate_by_ms: None,
        };
        model::validate_target(&rec)?;
        self.check_static_keys(&rec)?;

        let mut w = self.writes.join().await?;
        let stored = async {
            let c = w.conn()?;
            if let Some(old) = store::session_get(c, &rec.name).await? {
                if old.state.is_live() {
                    return Err(ControlError::Conflict(format!(
                        "session {:?} already exists (it is {})",
                        rec.name, old.state
                    )));
                }
                // A finished record waiting for the purge gives way to the new one.
                store::session_purge(c, &rec.name).await?;
            }
            if !store::user_exists(c, &rec.owner).await? {
                return Err(unknown("owner", "user", std::slice::from_ref(&rec.owner)));
            }
            let missing = store::missing_groups(c, &rec.groups).await?;
            if !missing.is_empty() {
                return Err(unknown("groups", "group", &missing));
            }
            check_unique_keys(c, &rec).await?;
            store::session_insert(c, &rec).await?;
            Ok::<_, ControlError>(())
        }
        .await;
        if let Err(e) = stored {
            w.abort().await;
            return Err(e);
        }
        self.finish_joined(w, None, &rec).await?;
        tracing::info!(session = %rec.name, owner = %rec.owner, state = %rec.state, "session created");
        Ok(rec)
    }

    /// Changes the target or routing of a session; a routed one is swapped
    /// into the gateway at once.
    pub async fn patch_session(
        &self,
        name: &str,
        patch: SessionPatch,
    ) -> Result<SessionRecord, ControlError> {
        let slug = match &patch.slug {
            Some(Some(s)) => Some(Some(model::normalize_slug(s)?)),
            Some(None) => Some(None),
            None => None,
        };
        let custom_domain = match &patch.custom_domain {
            Some(Some(d)) => Some(Some(model::normalize_custom_domain(
                d,
                &self.base_domains(),
            )?)),
            Some(None) => Some(None),
            None => None,
        };
        let mut w = self.writes.join().await?;
        let stored = async {
            let c = w.conn()?;
            let old = store::session_get(c, name)
                .await?
                .ok_or_else(|| not_found("session", name))?;
            if !old.state.is_live() {
                return Err(ControlError::Conflict(format!(
                    "session {name:?} is {} and can no longer be changed",
                    old.state
                )));
            }
            let mut rec = old.clone();
            if let Some(v) = patch.remote_host {
                rec.remote_host = Some(v);
            }
            if let Some(v) = patch.remote_port {
                rec.remote_port = Some(v);
            }
            if let Some(v) = patch.url {
                rec.url = Some(v);
            }
            if let Some(v) = patch.https {
                rec.https = v;
            }
            if let Some(v) = patch.tls_verify {
                rec.tls_verify = v;
            }
            if let Some(v) = slug {
                rec.slug = v;
            }
            if let Some(v) = patch.strip_prefix {
                rec.strip_prefix = v;
            }
            if let Some(v) = patch.rewrite_host {
                rec.rewrite_host = v;
            }
            if let Some(v) = custom_domain {
                rec.custom_domain = v;
            }
            if let Some(v) = patch.public {
                rec.public = v;
            }
            if let Some(v) = patch.duration {
                rec.duration_secs = v;
            }
            if let Some(v) = patch.idle_timeout {
                rec.idle_timeout_secs = v;
            }
            if let Some(v) = patch.extendable {
                rec.extendable = v;
            }
            if let Some(v) = patch.labels {
                rec.labels = v;
            }
            model::validate_target(&rec)?;
            self.check_static_keys(&rec)?;
            check_unique_keys(c, &rec).await?;
            store::session_update_row(c, &rec).await?;
            Ok::<_, ControlError>((old, rec))
        }
        .await;
        let (old, rec) = match stored {
            Ok(v) => v,
            Err(e) => {
                w.abort().await;
                return Err(e);
            }
        };
        self.finish_joined(w, Some(&old), &rec).await?;
        tracing::info!(session = %name, "session changed");
        Ok(rec)
    }

    /// Replaces the groups a session is shared with.
    pub async fn set_session_groups(
        &self,
        name: &str,
        groups: Vec<String>,
    ) -> Result<SessionRecord, ControlError> {
        let groups = sorted_unique(groups);
        for g in &groups {
            model::validate_name("groups", g)?;
        }
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let old = store::session_get(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("session", name))?;
        if !old.state.is_live() {
            return Err(ControlError::Conflict(format!(
                "session {name:?} is {} and can no longer be shared",
                old.state
            )));
        }
        let missing = store::missing_groups(&mut tx, &groups).await?;
        if !missing.is_empty() {
            return Err(unknown("groups", "group", &missing));
        }
        let mut rec = old.clone();
        rec.groups = groups;
        store::session_update(&mut tx, &rec).await?;
        tx.commit().await?;
        self.publish(Some(&old), Some(&rec)).await?;
        let lost = {
            let cache = self.group_cache();
            acc::lost_users(&old, &cache, &rec, &cache)
        };
        self.close_for_users(vec![(route_id(name), lost)]);
        tracing::info!(session = %name, groups = ?rec.groups, "session sharing replaced");
        Ok(rec)
    }

    /// Applies a lifecycle action. `extend_secs` is what `extend` adds
    /// (default: the session's duration).
    pub async fn session_action(
        &self,
        name: &str,
        action: Action,
        extend_secs: Option<u64>,
    ) -> Result<SessionRecord, ControlError> {
        if let Some(s) = extend_secs {
            if s == 0 || s > model::MAX_SECS {
                return Err(
                    invalid("seconds", format!("must be 1-{} seconds", model::MAX_SECS)).into(),
                );
            }
        }
        let mut w = self.writes.join().await?;
        let stored = async {
            let c = w.conn()?;
            let old = store::session_get(c, name)
                .await?
                .ok_or_else(|| not_found("session", name))?;
            let rec = self.transition(&old, action, extend_secs)?;
            store::session_update_row(c, &rec).await?;
            Ok::<_, ControlError>((old, rec))
        }
        .await;
        let (old, rec) = match stored {
            Ok(v) => v,
            Err(e) => {
                w.abort().await;
                return Err(e);
            }
        };
        self.finish_joined(w, Some(&old), &rec).await?;
        tracing::info!(session = %name, action = ?action, from = %old.state, to = %rec.state, "session action");
        Ok(rec)
    }

    /// Applies `action` to each name where it is applicable, in one
    /// transaction and one table update, and reports per name.
    pub async fn bulk_action(
        &self,
        action: Action,
        names: Vec<String>,
    ) -> Result<Vec<BulkResult>, ControlError> {
        if names.len() > 10_000 {
            return Err(invalid("names", format!("{} names; at most 10000", names.len())).into());
        }
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let mut results = Vec::with_capacity(names.len());
        let mut changed: Vec<(SessionRecord, SessionRecord)> = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            if !seen.insert(name.clone()) {
                results.push(BulkResult {
                    name: name.clone(),
                    ok: false,
                    state: None,
                    error: Some(BulkError {
                        code: "duplicate".into(),
                        message: format!("{name:?} is listed more than once"),
                    }),
                });
                continue;
            }
            let Some(old) = store::session_get(&mut tx, &name).await? else {
                results.push(BulkResult {
                    error: Some(BulkError {
                        code: "not_found".into(),
                        message: format!("session {name:?} not found"),
                    }),
                    name,
                    ok: false,
                    state: None,
                });
                continue;
            };
            match self.transition(&old, action, None) {
                Ok(rec) => {
                    store::session_update_row(&mut tx, &rec).await?;
                    results.push(BulkResult {
                        name,
                        ok: true,
                        state: Some(rec.state),
                        error: None,
                    });
                    changed.push((old, rec));
                }
                Err(e) => results.push(BulkResult {
                    name,
                    ok: false,
                    state: Some(old.state),
                    error: Some(BulkError {
                        code: error_code(&e).into(),
                        message: e.to_string(),
                    }),
                }),
            }
        }
        tx.commit().await?;
        let mut changes = Vec::new();
        let mut closing = Vec::new();
        for (old, rec) in &changed {
            self.route_changes(old, rec, &mut changes, &mut closing)?;
        }
        self.apply_changes(changes, closing).await?;
        tracing::info!(action = ?action, applied = changed.len(), asked = results.len(), "bulk session action");
        Ok(results)
    }

    /// The record after `action`, or why not. Times move by the clock.
    fn transition(
        &self,
        old: &SessionRecord,
        action: Action,
        extend_secs: Option<u64>,
    ) -> Result<SessionRecord, ControlError> {
        let now = self.now_ms();
        let next = old
            .state
            .apply(action)
            .map_err(|err| ControlError::Transition {
                name: old.name.clone(),
                err,
            })?;
        let mut rec = old.clone();
        // The expiry clock: frozen at the pause while paused.
        let clock = match (old.state, old.paused_ms) {
            (SessionState::Paused, Some(p)) => p,
            _ => now,
        };
        match action {
            Action::Activate => {
                rec.activated_ms.get_or_insert(now);
                if rec.expires_ms.is_none() || old.state == SessionState::Pending {
                    rec.expires_ms = rec.duration_secs.map(|d| now + d * 1000);
                }
                rec.last_activity_ms = Some(now);
            }
            Action::Pause => rec.paused_ms = Some(now),
            Action::Resume => {
                if let (Some(p), Some(e)) = (old.paused_ms, old.expires_ms) {
                    rec.expires_ms = Some(e + now.saturating_sub(p));
                }
                rec.paused_ms = None;
            }
            Action::Keepalive => {
                rec.last_activity_ms = Some(now);
                if let Some(d) = rec.duration_secs {
                    let advanced = clock + d * 1000;
                    rec.expires_ms = Some(rec.expires_ms.map_or(advanced, |e| e.max(advanced)));
                }
            }
            Action::Extend => {
                if !old.extendable {
                    return Err(ControlError::NotExtendable(old.name.clone()));
                }
                let secs = extend_secs.or(old.duration_secs).ok_or_else(|| {
                    invalid(
                        "seconds",
                        "the session has no duration; say how many seconds to extend by",
                    )
                })?;
                rec.expires_ms = Some(rec.expires_ms.unwrap_or(clock) + secs * 1000);
            }
            Action::Evict | Action::Expire | Action::Delete => rec.paused_ms = None,
        }
        if next != old.state {
            rec.state = next;
            rec.state_changed_ms = now;
        }
        Ok(rec)
    }

    /// Base domains of the table the gateway holds now.
    fn base_domains(&self) -> Vec<String> {
        self.routes
            .load()
            .base_domains()
            .map(str::to_string)
            .collect()
    }

    fn check_static_keys(&self, rec: &SessionRecord) -> Result<(), ControlError> {
        let keys = self.static_keys.read().unwrap_or_else(|e| e.into_inner());
        if let Some(slug) = &rec.slug {
            if keys.slugs.contains(slug) {
                return Err(ControlError::Conflict(format!(
                    "slug {slug:?} is a static route of the configuration file"
                )));
            }
        }
        if let Some(d) = &rec.custom_domain {
            if keys.hosts.contains(d) {
                return Err(ControlError::Conflict(format!(
                    "custom_domain {d:?} is a static route of the configuration file"
                )));
            }
        }
        Ok(())
    }

    /// The table changes that take the gateway from `old` to `new`, and the
    /// routes whose live connections must close.
    fn route_changes(
        &self,
        old: &SessionRecord,
        new: &SessionRecord,
        changes: &mut Vec<RouteChange>,
        closing: &mut Vec<Arc<RouteState>>,
    ) -> Result<(), ControlError> {
        let spec = route_spec(new, &self.group_cache()).map_err(ControlError::Publish)?;
        let id = route_id(&new.name);
        // Leaving `running` for anything (pause included) ends live
        // WebSockets: the session no longer serves traffic.
        if old.state == SessionState::Running && new.state != SessionState::Running {
            if let Some(route) = self.routes.load().route(&id) {
                closing.push(Arc::clone(&route.state));
            }
        }
        match spec {
            Some(spec) => changes.push(RouteChange::Upsert(spec)),
            None if old.state.is_live() => changes.push(RouteChange::Remove(id)),
            None => {}
        }
        Ok(())
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

    /// Publishes the route change from `old` to `new`; the caller keeps the
    /// write lock until the table has it.
    async fn publish(
        &self,
        old: Option<&SessionRecord>,
        new: Option<&SessionRecord>,
    ) -> Result<(), ControlError> {
        let (changes, closing) = self.changes_between(old, new)?;
        self.apply_changes(changes, closing).await
    }

    /// Completes a write that joined the shared transaction: computes its
    /// route change under the lock, waits for the commit that covers it,
    /// then for the table (see [`crate::writes`]).
    async fn finish_joined(
        &self,
        w: Joined,
        old: Option<&SessionRecord>,
        new: &SessionRecord,
    ) -> Result<(), ControlError> {
        let (changes, closing) = match self.changes_between(old, Some(new)) {
            Ok(c) => c,
            Err(e) => {
                w.abort().await;
                return Err(e);
            }
        };
        let queued = w.finish(changes).await?;
        self.await_applied(queued, closing).await
    }

    /// The table changes that take a session from `old` to `new`, and the
    /// routes whose live connections must close once they are applied.
    fn changes_between(
        &self,
        old: Option<&SessionRecord>,
        new: Option<&SessionRecord>,
    ) -> Result<(Vec<RouteChange>, Vec<Arc<RouteState>>), ControlError> {
        let mut changes = Vec::new();
        let mut closing = Vec::new();
        match (old, new) {
            (Some(o), Some(n)) => self.route_changes(o, n, &mut changes, &mut closing)?,
            (None, Some(n)) => {
                let spec = route_spec(n, &self.group_cache()).map_err(ControlError::Publish)?;
                if let Some(spec) = spec {
                    changes.push(RouteChange::Upsert(spec));
                }
            }
            _ => {}
        }
        Ok((changes, closing))
    }

    async fn apply_changes(
        &self,
        changes: Vec<RouteChange>,
        closing: Vec<Arc<RouteState>>,
    ) -> Result<(), ControlError> {
        let queued = if changes.is_empty() {
            None
        } else {
            Some(self.publisher.queue(changes).await.map_err(table_refused)?)
        };
        self.await_applied(queued, closing).await
    }

    /// Waits until `queued` is in the table, then closes the live
    /// connections in `closing`.
    async fn await_applied(
        &self,
        queued: Option<gateway::Queued>,
        closing: Vec<Arc<RouteState>>,
    ) -> Result<(), ControlError> {
        if let Some(queued) = queued {
            let started = std::time::Instant::now();
            queued.applied().await.map_err(table_refused)?;
            self.metrics.observe_table_swap(started.elapsed());
        }
        for state in closing {
            let n = state.close_live();
            if n > 0 {
                tracing::info!(connections = n, "closed live upgraded connections");
            }
        }
        Ok(())
    }

    // ---- browser access ----

    /// Loads the cookie keys, creating the first one on a new store.
    async fn load_keys(&self, _c: &mut SqliteConnection) -> Result<(), ControlError> {
        let grace = self.access_settings().key_grace;
        let mut tx = self.store.begin().await?;
        let mut rows = store::signing_keys(&mut tx).await?;
        if rows.iter().all(|r| r.retired_ms.is_some()) {
            let key = acc::new_key(self.now_ms()).map_err(ControlError::Internal)?;
            store::signing_key_rotate(&mut tx, &key, self.now_ms()).await?;
            rows = store::signing_keys(&mut tx).await?;
            tracing::info!(key = %key.id, "cookie signing key created");
        }
        tx.commit().await?;
        self.keys
            .store(acc::key_ring(&rows, grace).map_err(ControlError::Internal)?);
        Ok(())
    }

    /// Replaces the cookie signing key. Cookies signed by the replaced key
    /// keep working for the grace period (`access.key_grace_secs`), and
    /// those signed by any older key stop at once.
    pub async fn rotate_keys(&self) -> Result<KeyRotation, ControlError> {
        let now = self.now_ms();
        let grace = self.access_settings().key_grace;
        let key = acc::new_key(now).map_err(ControlError::Internal)?;
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        store::signing_key_rotate(&mut tx, &key, now).await?;
        let rows = store::signing_keys(&mut tx).await?;
        let ring = acc::key_ring(&rows, grace).map_err(ControlError::Internal)?;
        tx.commit().await?;
        self.keys.store(ring);
        let previous = rows.iter().find(|r| r.retired_ms.is_some());
        tracing::info!(key = %key.id, previous = ?previous.map(|r| &r.id), "cookie signing key rotated");
        Ok(KeyRotation {
            current: key.id,
            previous: previous.map(|r| r.id.clone()),
            previous_valid_until: previous
                .and_then(|r| r.retired_ms)
                .map(|ms| rfc3339_millis(ms + grace.as_millis() as u64)),
        })
    }

    /// Issues a one-time access link for `user` on session `name`.
    pub async fn create_access_link(
        &self,
        name: &str,
        user: &str,
        path: Option<&str>,
    ) -> Result<AccessLink, ControlError> {
        model::validate_user_name("user", user)?;
        let path = path.unwrap_or("/");
        acc::validate_entry_path(path).map_err(|m| ControlError::Invalid(invalid("path", m)))?;
        let settings = self.access_settings();
        let now = self.now_ms();
        let token = auth::random_token().map_err(|e| ControlError::Internal(e.to_string()))?;
        let expires_ms = now + settings.link_ttl.as_millis() as u64;
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let s = store::session_get(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("session", name))?;
        if !s.state.is_live() {
            return Err(ControlError::Finished {
                name: name.to_string(),
                state: s.state,
            });
        }
        if !store::user_exists(&mut tx, user).await? {
            return Err(unknown("user", "user", &[user.to_string()]));
        }
        if !acc::allowed(&s, user, &self.group_cache()) {
            return Err(ControlError::Forbidden(format!(
                "user {user:?} is neither the owner of session {name:?} nor a member of a group it is shared with"
            )));
        }
        store::access_token_insert(
            &mut tx,
            &AccessTokenRow {
                hash: auth::hash_token(&token),
                session: s.name.clone(),
                user: user.to_string(),
                path: path.to_string(),
                created_ms: now,
                expires_ms,
            },
        )
        .await?;
        tx.commit().await?;
        tracing::info!(session = %name, user = %user, "access link issued");
        Ok(AccessLink {
            url: self.link_url(&s, &token, &settings),
            expires: rfc3339_millis(expires_ms),
        })
    }

    /// The link's URL, on the host the session is used on, since that is
    /// where the cookie will be: its custom domain if it has one, else its
    /// slug on the portal host if it has one, else `<name>.<first base
    /// domain>`.
    fn link_url(&self, s: &SessionRecord, token: &str, settings: &AccessSettings) -> String {
        let table = self.routes.load();
        let scheme = settings.link_scheme.as_str();
        let port = match (settings.link_port, scheme) {
            (None, _) | (Some(80), "http") | (Some(443), "https") => String::new(),
            (Some(p), _) => format!(":{p}"),
        };
        let path = gateway::access::ACTIVATE_PATH;
        let portal = table.portal_host().map(str::to_string);
        let base = table.base_domains().next().map(str::to_string);
        match (&s.custom_domain, &s.slug, portal, base) {
            (Some(d), _, _, _) => format!("{scheme}://{d}{port}{path}?token={token}"),
            (None, Some(slug), Some(portal), _) => {
                format!("{scheme}://{portal}{port}{slug}{path}?token={token}")
            }
            (None, _, _, Some(base)) => {
                format!("{scheme}://{}.{base}{port}{path}?token={token}", s.name)
            }
            _ => format!("{scheme}://{}{port}{path}?token={token}", s.name),
        }
    }

    /// Consumes an access link opened on `req.session`'s host: the token is
    /// deleted whatever the outcome, a pending or evicted session becomes
    /// running, and the answer carries the signed cookie.
    pub async fn activate_link(
        &self,
        req: ActivationRequest,
    ) -> Result<Activation, ActivationError> {
        let unavailable = |e: ControlError| {
            tracing::error!(error = %e, "access link: store error");
            ActivationError::Unavailable("the session store failed".into())
        };
        let now = self.now_ms();
        let settings = self.access_settings();
        let hash = auth::hash_token(&req.token);
        let _w = self.writes.exclusive().await;
        let mut tx = self
            .store
            .begin()
            .await
            .map_err(|e| unavailable(e.into()))?;
        let Some(t) = store::access_token_take(&mut tx, &hash)
            .await
            .map_err(|e| unavailable(e.into()))?
        else {
            return Err(ActivationError::InvalidToken);
        };
        // From here on the token is spent: refusals still commit its removal.
        let refused = if t.expires_ms <= now {
            Some(ActivationError::InvalidToken)
        } else if t.session != *req.session {
            Some(ActivationError::WrongSession)
        } else {
            None
        };
        let old = match refused {
            Some(_) => None,
            None => store::session_get(&mut tx, &t.session)
                .await
                .map_err(|e| unavailable(e.into()))?,
        };
        let refused = refused.or_else(|| match &old {
            None => Some(ActivationError::InvalidToken),
            Some(o) if !o.state.is_live() => Some(ActivationError::Gone {
                session: o.name.clone(),
                state: o.state.to_string(),
            }),
            Some(o) if !acc::allowed(o, &t.user, &self.group_cache()) => {
                Some(ActivationError::NotAllowed)
            }
            Some(_) => None,
        });
        if let Some(err) = refused {
            tx.commit().await.map_err(|e| unavailable(e.into()))?;
            tracing::info!(session = %req.session, user = %t.user, reason = %err, "access link refused");
            return Err(err);
        }
        let Some(old) = old else {
            return Err(ActivationError::InvalidToken);
        };
        let rec = if matches!(old.state, SessionState::Pending | SessionState::Evicted) {
            let rec = self
                .transition(&old, Action::Activate, None)
                .map_err(|e| ActivationError::Unavailable(e.to_string()))?;
            store::session_update_row(&mut tx, &rec)
                .await
                .map_err(|e| unavailable(e.into()))?;
            Some(rec)
        } else {
            None
        };
        tx.commit().await.map_err(|e| unavailable(e.into()))?;
        if let Some(rec) = &rec {
            self.publish(Some(&old), Some(rec))
                .await
                .map_err(unavailable)?;
            tracing::info!(session = %rec.name, from = %old.state, "session activated");
        }
        let ttl = settings.cookie_ttl.as_secs().max(1);
        let cookie = self
            .keys
            .load()
            .sign(&old.name, &t.user, now / 1000 + ttl)
            .map_err(ActivationError::Unavailable)?;
        Ok(Activation {
            cookie,
            max_age: ttl,
            path: t.path,
            user: t.user,
        })
    }

    /// After the members of groups changed (committed, write lock held):
    /// swaps in their member lists (`None`: the group is gone), republishes
    /// `sessions` (those shared with them), and closes the live connections
    /// of every user who lost access to one of them.
    async fn groups_changed(
        &self,
        updates: Vec<(String, Option<Vec<String>>)>,
        sessions: Vec<SessionRecord>,
    ) -> Result<(), ControlError> {
        let before = self.group_cache().clone();
        {
            let mut cache = self.groups.write().unwrap_or_else(|e| e.into_inner());
            for (g, m) in updates {
                match m {
                    Some(m) => cache.insert(g, acc::members(m)),
                    None => cache.remove(&g),
                };
            }
        }
        let after = self.group_cache().clone();
        let mut changes = Vec::new();
        let mut revoked = Vec::new();
        for s in &sessions {
            if let Some(spec) = route_spec(s, &after).map_err(ControlError::Publish)? {
                changes.push(RouteChange::Upsert(spec));
            }
            let lost = acc::lost_users(s, &before, s, &after);
            if !lost.is_empty() {
                revoked.push((route_id(&s.name), lost));
            }
        }
        self.apply_changes(changes, Vec::new()).await?;
        self.close_for_users(revoked);
        Ok(())
    }

    /// Closes the live connections of these users on these routes.
    fn close_for_users(&self, revoked: Vec<(Arc<str>, Vec<String>)>) {
        if revoked.is_empty() {
            return;
        }
        let table = self.routes.load();
        for (id, users) in revoked {
            let Some(route) = table.route(&id) else {
                continue;
            };
            for u in users {
                let n = route.state.close_live_for_user(&u);
                if n > 0 {
                    tracing::info!(route = %id, user = %u, connections = n, "access revoked: closed live connections");
                }
            }
        }
    }

    /// The member lists of `groups` as stored now (`None`: no such group).
    async fn member_lists(
        &self,
        c: &mut SqliteConnection,
        groups: &[String],
    ) -> Result<Vec<(String, Option<Vec<String>>)>, ControlError> {
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let exists = store::group_created(c, g).await?.is_some();
            let members = store::group_members(c, Some(g))
                .await?
                .remove(g)
                .unwrap_or_default();
            out.push((g.clone(), exists.then_some(members)));
        }
        Ok(out)
    }

    /// Live sessions shared with any of `groups`, as stored now.
    async fn sessions_shared(
        c: &mut SqliteConnection,
        groups: &[String],
    ) -> Result<Vec<SessionRecord>, ControlError> {
        let mut names = std::collections::BTreeSet::new();
        for g in groups {
            names.extend(store::sessions_shared_with(c, g).await?);
        }
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(s) = store::session_get(c, &n).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    // ---- workshop environments ----

    pub async fn create_environment(
        &self,
        input: NewEnvironment,
    ) -> Result<Environment, ControlError> {
        let rec = env::validate_new(input, self.now_ms())?;
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        if store::environment_get(&mut tx, &rec.name).await?.is_some() {
            return Err(ControlError::Conflict(format!(
                "environment {:?} already exists",
                rec.name
            )));
        }
        store::environment_insert(&mut tx, &rec).await?;
        tx.commit().await?;
        drop(_w);
        tracing::info!(environment = %rec.name, capacity = rec.capacity, reserved = rec.reserved, "environment created");
        self.refill_reserves().await?;
        self.get_environment(&rec.name).await
    }

    pub async fn list_environments(&self) -> Result<Vec<Environment>, ControlError> {
        let mut c = self.store.conn().await?;
        let counts = store::environment_allocations(&mut c).await?;
        Ok(store::environments_list(&mut c)
            .await?
            .iter()
            .map(|e| e.view(counts.get(&e.name).copied().unwrap_or(0)))
            .collect())
    }

    pub async fn get_environment(&self, name: &str) -> Result<Environment, ControlError> {
        let mut c = self.store.conn().await?;
        let e = store::environment_get(&mut c, name)
            .await?
            .ok_or_else(|| not_found("environment", name))?;
        let n = store::environment_allocations(&mut c)
            .await?
            .get(name)
            .copied()
            .unwrap_or(0);
        Ok(e.view(n))
    }

    /// Changes an environment. Capacity may not drop below what is allocated.
    pub async fn patch_environment(
        &self,
        name: &str,
        patch: EnvironmentPatch,
    ) -> Result<Environment, ControlError> {
        let targets = patch
            .targets
            .as_deref()
            .map(env::validate_targets)
            .transpose()?;
        if let Some(d) = patch.duration {
            env::validate_duration(d)?;
        }
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let mut e = store::environment_get(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("environment", name))?;
        if let Some(w) = patch.workshop {
            e.workshop = w;
            if e.workshop.name.is_empty() {
                e.workshop.name = e.name.clone();
            }
        }
        if let Some(d) = patch.duration {
            e.duration_secs = d;
        }
        if let Some(v) = patch.capacity {
            e.capacity = v;
        }
        if let Some(v) = patch.reserved {
            e.reserved = v;
        }
        if let Some(t) = targets {
            e.targets = t;
        }
        if let Some(v) = patch.tls_verify {
            e.tls_verify = v;
        }
        if let Some(v) = patch.extendable {
            e.extendable = v;
        }
        env::validate_counts(e.capacity, e.reserved, e.targets.len())?;
        let allocated = store::environment_allocations(&mut tx)
            .await?
            .get(name)
            .copied()
            .unwrap_or(0);
        if e.capacity < allocated {
            return Err(ControlError::Conflict(format!(
                "environment {name:?} has {allocated} sessions; capacity cannot go below that"
            )));
        }
        store::environment_update(&mut tx, &e).await?;
        tx.commit().await?;
        drop(_w);
        tracing::info!(environment = %name, "environment changed");
        self.refill_reserves().await?;
        self.get_environment(name).await
    }

    /// Stops an environment: no new sessions; those it has run to their end.
    pub async fn stop_environment(&self, name: &str) -> Result<Environment, ControlError> {
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let mut e = store::environment_get(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("environment", name))?;
        e.state = EnvironmentState::Stopping;
        store::environment_update(&mut tx, &e).await?;
        // Sessions in reserve were never anyone's: they go; the others run on.
        let mut dropped = Vec::new();
        for old in store::sessions_of_environment(&mut tx, name).await? {
            if old.owner == portal::RESERVE_USER && old.state == SessionState::Pending {
                let rec = self.transition(&old, Action::Delete, None)?;
                store::session_update(&mut tx, &rec).await?;
                dropped.push((old, rec));
            }
        }
        let allocated = store::environment_allocations(&mut tx)
            .await?
            .get(name)
            .copied()
            .unwrap_or(0);
        tx.commit().await?;
        for (old, rec) in &dropped {
            self.publish(Some(old), Some(rec)).await?;
        }
        tracing::info!(environment = %name, sessions = allocated, "environment stopping");
        Ok(e.view(allocated))
    }

    /// Deletes an environment that has no unfinished sessions.
    pub async fn delete_environment(&self, name: &str) -> Result<(), ControlError> {
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let allocated = store::environment_allocations(&mut tx)
            .await?
            .get(name)
            .copied()
            .unwrap_or(0);
        if allocated > 0 {
            return Err(ControlError::Conflict(format!(
                "environment {name:?} still has {allocated} sessions; stop it and let them finish, or expire them"
            )));
        }
        if !store::environment_delete(&mut tx, name).await? {
            return Err(not_found("environment", name));
        }
        tx.commit().await?;
        tracing::info!(environment = %name, "environment deleted");
        Ok(())
    }

    // ---- workshop allocation ----

    /// Allocates a session of environment `env_name` to a user, the way the
    /// training portal's request endpoint does: the user's live session in
    /// that environment if there is one, else a reserved session, else a new
    /// one on a free target; with a one-time activation token.
    pub async fn workshop_request(
        &self,
        env_name: &str,
        req: WorkshopRequest,
    ) -> Result<Allocation, WorkshopError> {
        for (field, v) in [
            ("email", &req.email),
            ("first_name", &req.first_name),
            ("last_name", &req.last_name),
        ] {
            model::validate_optional_text(field, v).map_err(ControlError::from)?;
        }
        let timeout = req
            .timeout
            .unwrap_or(self.settings.activation_deadline.as_secs());
        if timeout == 0 || timeout > model::MAX_SECS {
            return Err(ControlError::Invalid(invalid(
                "timeout",
                format!("must be 1-{} seconds", model::MAX_SECS),
            ))
            .into());
        }
        let now = self.now_ms();
        let token = auth::random_token().map_err(|e| ControlError::Internal(e.to_string()))?;
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await.map_err(ControlError::from)?;
        let Some(mut env) = store::environment_get(&mut tx, env_name)
            .await
            .map_err(ControlError::from)?
        else {
            return Err(WorkshopError::Invalid(env_name.to_string()));
        };

        // Decide before writing anything, so that a refusal leaves nothing
        // behind (not even a half-done transaction holding the write lock).
        let known_user = match &req.user {
            Some(u)
                if store::user_exists(&mut tx, u)
                    .await
                    .map_err(ControlError::from)? =>
            {
                Some(u.clone())
            }
            _ => None,
        };
        let sessions = store::sessions_of_environment(&mut tx, env_name)
            .await
            .map_err(ControlError::from)?;
        let has_live = known_user
            .as_ref()
            .is_some_and(|u| sessions.iter().any(|s| &s.owner == u && s.state.is_live()));
        if !has_live {
            if env.state != EnvironmentState::Running {
                return Err(WorkshopError::Invalid(env_name.to_string()));
            }
            let in_reserve = sessions
                .iter()
                .any(|s| s.owner == portal::RESERVE_USER && s.state == SessionState::Pending);
            let live = sessions.iter().filter(|s| s.state.is_live()).count() as u64;
            // capacity <= targets, so below capacity a target is free.
            if !in_reserve && live >= env.capacity {
                return Err(WorkshopError::Unavailable(env_name.to_string()));
            }
        }

        // The user: the one named if it exists, else a new portal user.
        let user = match known_user {
            Some(u) => u,
            None => {
                let id =
                    portal::new_user_id().map_err(|e| ControlError::Internal(e.to_string()))?;
                let row = UserRow {
                    id: format!(
                        "u-{}",
                        auth::random_hex(8).map_err(|e| ControlError::Internal(e.to_string()))?
                    ),
                    name: id.clone(),
                    email: req.email.clone(),
                    first_name: req.first_name.clone(),
                    last_name: req.last_name.clone(),
                    created_ms: now,
                };
                store::user_insert(&mut tx, &row)
                    .await
                    .map_err(ControlError::from)?;
                id
            }
        };

        let mut published: Vec<(Option<SessionRecord>, SessionRecord)> = Vec::new();
        let chosen = if let Some(s) = sessions
            .iter()
            .find(|s| s.owner == user && s.state.is_live())
        {
            // The same user asking again gets the same session.
            s.clone()
        } else {
            if env.state != EnvironmentState::Running {
                return Err(WorkshopError::Invalid(env_name.to_string()));
            }
            let reserved = sessions
                .iter()
                .find(|s| s.owner == portal::RESERVE_USER && s.state == SessionState::Pending);
            let rec = match reserved {
                Some(r) => {
                    let mut rec = r.clone();
                    rec.owner = user.clone();
                    rec.activate_by_ms = Some(now + timeout * 1000);
                    store::session_update(&mut tx, &rec)
                        .await
                        .map_err(ControlError::from)?;
                    published.push((Some(r.clone()), rec.clone()));
                    rec
                }
                None => {
                    let rec = self
                        .new_environment_session(&mut tx, &mut env, &sessions, &user, now)
                        .await?
                        .ok_or_else(|| WorkshopError::Unavailable(env_name.to_string()))?;
                    let mut rec = rec;
                    rec.activate_by_ms = Some(now + timeout * 1000);
                    store::session_update(&mut tx, &rec)
                        .await
                        .map_err(ControlError::from)?;
                    published.push((None, rec.clone()));
                    rec
                }
            };
            rec
        };
        store::access_token_insert(
            &mut tx,
            &AccessTokenRow {
                hash: auth::hash_token(&token),
                session: chosen.name.clone(),
                user: user.clone(),
                path: "/".into(),
                created_ms: now,
                expires_ms: now + timeout * 1000,
            },
        )
        .await
        .map_err(ControlError::from)?;
        // Keep the reserve full.
        let sessions = store::sessions_of_environment(&mut tx, env_name)
            .await
            .map_err(ControlError::from)?;
        for rec in self
            .refill_reserve(&mut tx, &mut env, &sessions, now)
            .await?
        {
            published.push((None, rec));
        }
        tx.commit().await.map_err(ControlError::from)?;
        for (old, new) in &published {
            self.publish(old.as_ref(), Some(new)).await?;
        }
        tracing::info!(environment = %env_name, session = %chosen.name, user = %user, "workshop session allocated");
        Ok(Allocation {
            session: chosen.name,
            user,
            token,
            workshop: env.workshop.name,
            environment: env.name,
        })
    }

    /// Creates, in `tx`, a pending session of `env` for `owner` on a target
    /// no live session holds, if capacity and targets allow.
    async fn new_environment_session(
        &self,
        tx: &mut SqliteConnection,
        env: &mut EnvironmentRecord,
        sessions: &[SessionRecord],
        owner: &str,
        now: u64,
    ) -> Result<Option<SessionRecord>, ControlError> {
        let live: Vec<&SessionRecord> = sessions.iter().filter(|s| s.state.is_live()).collect();
        if live.len() as u64 >= env.capacity {
            return Ok(None);
        }
        let busy = |t: &env::Target| {
            live.iter().any(|s| {
                s.https == t.https
                    && s.remote_port == Some(t.port)
                    && s.remote_host.as_deref() == Some(t.host.as_str())
            })
        };
        let Some(target) = env.targets.iter().find(|t| !busy(t)).cloned() else {
            return Ok(None);
        };
        // The next free name: <env>-s001, -s002, ...
        let name = loop {
            let n = format!("{}-s{:03}", env.name, env.next_session);
            env.next_session += 1;
            if store::session_get(tx, &n).await?.is_none() {
                break n;
            }
        };
        store::environment_update(tx, env).await?;
        let rec = SessionRecord {
            name: name.clone(),
            kind: SessionKind::Tunnel,
            remote_host: Some(target.host.clone()),
            remote_port: Some(target.port),
            url: None,
            https: target.https,
            tls_verify: env.tls_verify,
            slug: env.slug_prefix.as_ref().map(|p| format!("{p}/{name}")),
            strip_prefix: false,
            rewrite_host: false,
            custom_domain: None,
            workspace_port: None,
            owner: owner.to_string(),
            groups: Vec::new(),
            public: false,
            state: SessionState::Pending,
            created_ms: now,
            activated_ms: None,
            expires_ms: None,
            last_activity_ms: None,
            paused_ms: None,
            state_changed_ms: now,
            duration_secs: env.duration_secs,
            idle_timeout_secs: None,
            extendable: env.extendable,
            environment: Some(env.name.clone()),
            labels: BTreeMap::new(),
            activate_by_ms: Some(portal::RESERVED_DEADLINE_MS),
        };
        self.check_static_keys(&rec)?;
        check_unique_keys(tx, &rec).await?;
        store::session_insert(tx, &rec).await?;
        Ok(Some(rec))
    }

    /// Tops up `env`'s reserve of pending, unowned sessions to `reserved`,
    /// within capacity and free targets. Returns the sessions created.
    async fn refill_reserve(
        &self,
        tx: &mut SqliteConnection,
        env: &mut EnvironmentRecord,
        sessions: &[SessionRecord],
        now: u64,
    ) -> Result<Vec<SessionRecord>, ControlError> {
        if env.state != EnvironmentState::Running || env.reserved == 0 {
            return Ok(Vec::new());
        }
        if !store::user_exists(tx, portal::RESERVE_USER).await? {
            store::user_insert(
                tx,
                &UserRow {
                    id: "u-reserve".into(),
                    name: portal::RESERVE_USER.into(),
                    email: None,
                    first_name: Some("reserved sessions".into()),
                    last_name: None,
                    created_ms: now,
                },
            )
            .await?;
        }
        let mut all = sessions.to_vec();
        let mut created = Vec::new();
        loop {
            let in_reserve = all
                .iter()
                .filter(|s| s.owner == portal::RESERVE_USER && s.state == SessionState::Pending)
                .count() as u64;
            if in_reserve >= env.reserved {
                break;
            }
            match self
                .new_environment_session(tx, env, &all, portal::RESERVE_USER, now)
                .await?
            {
                Some(rec) => {
                    all.push(rec.clone());
                    created.push(rec);
                }
                None => break,
            }
        }
        Ok(created)
    }

    /// Fills every running environment's reserve (after a create or a
    /// change, and after the reaper freed targets).
    pub async fn refill_reserves(&self) -> Result<usize, ControlError> {
        let now = self.now_ms();
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;
        let mut created = Vec::new();
        for mut env in store::environments_list(&mut tx).await? {
            let sessions = store::sessions_of_environment(&mut tx, &env.name).await?;
            created.extend(
                self.refill_reserve(&mut tx, &mut env, &sessions, now)
                    .await?,
            );
        }
        tx.commit().await?;
        for rec in &created {
            self.publish(None, Some(rec)).await?;
        }
        Ok(created.len())
    }

    /// Every environment and all their sessions, for the catalog.
    pub async fn catalog(
        &self,
    ) -> Result<(Vec<EnvironmentRecord>, Vec<SessionRecord>), ControlError> {
        let mut c = self.store.conn().await?;
        let envs = store::environments_list(&mut c).await?;
        let mut sessions = Vec::new();
        for e in &envs {
            sessions.extend(store::sessions_of_environment(&mut c, &e.name).await?);
        }
        Ok((envs, sessions))
    }

    /// A stable id for this portal, in the UUID shape the portal uses.
    pub fn portal_uid(&self) -> String {
        let name = self.workshop_settings().portal_name;
        let h = auth::hash_token(&format!("sessiongate portal {name}"));
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// The live sessions of a portal user, in environments.
    pub async fn workshop_user_sessions(
        &self,
        user: &str,
    ) -> Result<Vec<(SessionRecord, String)>, ControlError> {
        let mut c = self.store.conn().await?;
        let envs: HashMap<String, String> = store::environments_list(&mut c)
            .await?
            .into_iter()
            .map(|e| (e.name, e.workshop.name))
            .collect();
        let filter = SessionFilter {
            owner: Some(user.to_string()),
            states: vec![
                SessionState::Pending,
                SessionState::Running,
                SessionState::Paused,
                SessionState::Evicted,
            ],
            page: 1,
            per_page: MAX_PER_PAGE,
            ..SessionFilter::default()
        };
        let (sessions, _) = store::sessions_list(&mut c, &filter).await?;
        Ok(sessions
            .into_iter()
            .filter_map(|s| {
                let w = envs.get(s.environment.as_deref()?)?.clone();
                Some((s, w))
            })
            .collect())
    }

    // ---- the reaper ----

    /// One pass of the lifecycle reaper: records the gateway's activity,
    /// then deletes, expires and purges what is due, in one transaction.
    pub async fn reap(&self) -> Result<ReapReport, ControlError> {
        let report = self.reap_once().await?;
        // Targets freed by deleted or expired sessions refill the reserves.
        self.refill_reserves().await?;
        Ok(report)
    }

    async fn reap_once(&self) -> Result<ReapReport, ControlError> {
        let now = self.now_ms();
        let s = &self.settings;
        let mut report = ReapReport::default();
        let _w = self.writes.exclusive().await;
        let mut tx = self.store.begin().await?;

        // The gateway's per-route activity, written when it moved.
        let activity: Vec<(String, u64)> = {
            let table = self.routes.load();
            let synced = self
                .synced_activity
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            table
                .routes()
                .iter()
                .filter_map(|r| {
                    let name = crate::publish::session_name(&r.id)?;
                    let at = r.state.last_activity_ms()?;
                    (synced.get(name) != Some(&at)).then(|| (name.to_string(), at))
                })
                .collect()
        };
        store::sessions_touch(&mut tx, &activity).await?;

        let deadline_cutoff = now.saturating_sub(s.activation_deadline.as_millis() as u64);
        let evicted_cutoff = now.saturating_sub(s.evicted_expiry.as_millis() as u64);
        let candidates = store::reap_candidates(&mut tx).await?;
        let mut changed = Vec::new();
        for old in candidates {
            let verdict = match old.state {
                SessionState::Pending
                    if old
                        .activate_by_ms
                        .map_or(old.created_ms <= deadline_cutoff, |by| by <= now) =>
                {
                    Some((
                        Action::Delete,
                        &mut report.deleted_unactivated,
                        "activation deadline passed",
                    ))
                }
                SessionState::Running if old.expires_ms.is_some_and(|e| e <= now) => {
                    Some((Action::Expire, &mut report.expired, "expires passed"))
                }
                SessionState::Running => {
                    let idle_since = old
                        .last_activity_ms
                        .unwrap_or(0)
                        .max(old.state_changed_ms)
                        .max(old.activated_ms.unwrap_or(0));
                    match old.idle_timeout_secs {
                        Some(t) if now.saturating_sub(idle_since) >= t * 1000 => {
                            Some((Action::Expire, &mut report.expired_idle, "idle timeout"))
                        }
                        _ => None,
                    }
                }
                SessionState::Evicted => {
                    let since = old.last_activity_ms.unwrap_or(0).max(old.state_changed_ms);
                    (since <= evicted_cutoff).then_some((
                        Action::Expire,
                        &mut report.expired_evicted,
                        "evicted and unused",
                    ))
                }
                _ => None,
            };
            let Some((action, list, reason)) = verdict else {
                continue;
            };
            let rec = self.transition(&old, action, None)?;
            store::session_update_row(&mut tx, &rec).await?;
            tracing::info!(session = %old.name, action = ?action, reason, "reaper");
            list.push(old.name.clone());
            changed.push((old, rec));
        }
        let retention_cutoff = now.saturating_sub(s.retention.as_millis() as u64);
        report.purged = store::sessions_purge_finished(&mut tx, retention_cutoff).await?;
        for name in &report.purged {
            tracing::info!(session = %name, action = "purge", reason = "retention passed", "reaper");
        }
        // Unused access links and expired API tokens: nothing can use them.
        store::access_tokens_purge(&mut tx, now).await?;
        store::oauth_tokens_purge(&mut tx, now).await?;
        tx.commit().await?;

        {
            let mut synced = self
                .synced_activity
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (name, at) in activity {
                synced.insert(name, at);
            }
            for (old, _) in &changed {
                synced.remove(&old.name);
            }
        }
        let mut changes = Vec::new();
        let mut closing = Vec::new();
        for (old, rec) in &changed {
            self.route_changes(old, rec, &mut changes, &mut closing)?;
        }
        self.apply_changes(changes, closing).await?;
        let m = &self.metrics;
        m.count_reaper("delete_unactivated", report.deleted_unactivated.len());
        m.count_reaper("expire", report.expired.len());
        m.count_reaper("expire_idle", report.expired_idle.len());
        m.count_reaper("expire_evicted", report.expired_evicted.len());
        m.count_reaper("purge", report.purged.len());
        Ok(report)
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

/// The API error code of a refusal, for bulk results.
pub fn error_code(e: &ControlError) -> &'static str {
    match e {
        ControlError::NotFound { .. } => "not_found",
        ControlError::Conflict(_) => "conflict",
        ControlError::Invalid(_) => "invalid",
        ControlError::Transition { .. } => "invalid_transition",
        ControlError::NotExtendable(_) => "not_extendable",
        ControlError::Forbidden(_) => "forbidden",
        ControlError::Finished { .. } => "session_finished",
        ControlError::Store(_) | ControlError::Publish(_) | ControlError::Internal(_) => "internal",
    }
}

fn unknown(field: &str, what: &str, names: &[String]) -> ControlError {
    let list = names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let s = if names.len() == 1 { "" } else { "s" };
    invalid(field, format!("no such {what}{s}: {list}")).into()
}

fn sorted_unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

async fn check_unique_keys(
    c: &mut SqliteConnection,
    rec: &SessionRecord,
) -> Result<(), ControlError> {
    if let Some(slug) = &rec.slug {
        if let Some(other) = store::live_session_with(c, "slug", slug, &rec.name).await? {
            return Err(ControlError::Conflict(format!(
                "slug {slug:?} is used by session {other:?}"
            )));
        }
    }
    if let Some(d) = &rec.custom_domain {
        if let Some(other) = store::live_session_with(c, "custom_domain", d, &rec.name).await? {
            return Err(ControlError::Conflict(format!(
                "custom_domain {d:?} is used by session {other:?}"
            )));
        }
    }
    Ok(())
}

async fn group_view(c: &mut SqliteConnection, name: &str) -> Result<Group, ControlError> {
    let created = store::group_created(c, name)
        .await?
        .ok_or_else(|| not_found("group", name))?;
    let members = store::group_members(c, Some(name))
        .await?
        .remove(name)
        .unwrap_or_default();
    Ok(Group {
        name: name.to_string(),
        members,
        created: rfc3339_millis(created),
    })
}

fn user_view(u: UserRow, groups: Vec<String>) -> User {
    User {
        id: u.id,
        name: u.name,
        email: u.email,
        first_name: u.first_name,
        last_name: u.last_name,
        created: rfc3339_millis(u.created_ms),
        groups,
    }
}

fn token_info(t: &TokenRow) -> TokenInfo {
    TokenInfo {
        name: t.name.clone(),
        kind: TokenKind::parse(&t.kind).unwrap_or(TokenKind::Readonly),
        created: rfc3339_millis(t.created_ms),
    }
}
