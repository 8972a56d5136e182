//! `sessiongate serve`: the gateway and the control plane in one process.
//!
//! Start-up order matters: the configuration is validated, and the static
//! routes and every stored session are published, before either listener
//! serves a connection, so the first request already sees the full table.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway::access::{AccessConfig, ActivationFuture, ActivationRequest, Activator};
use gateway::body::ProxyBody;
use gateway::sync::Follower;
use gateway::upstream::UpstreamTls;
use gateway::{HostCoverage, PortalService, Proxy, RouteHandle, TlsListener, UpstreamClient};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::auth::{self, TokenSource};
use crate::clock::SystemClock;
use crate::config::{Config, ConfigError};
use crate::control::{ControlPlane, Parts, Settings, StaticKeys};
use crate::datadir;
use crate::error::ControlError;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::session::reaper::spawn_reaper;
use crate::session::targets::TargetPolicy;
use crate::store::{DatabaseUrl, Store, StoreError};
use crate::workshop::Portal;

/// The database file in the data dir, when `control_plane.database` names
/// none.
pub use crate::store::DB_FILE;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] auth::TokenError),
    /// `database` shows no password ([`DatabaseUrl`]'s `Display`).
    #[error("store {database}: {source}")]
    Store {
        database: DatabaseUrl,
        source: StoreError,
    },
    #[error("restoring sessions from the store: {0}")]
    Restore(#[from] ControlError),
    #[error("{key} = {addr}: cannot listen: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] certs::CertError),
}

/// The HTTPS side, prepared by [`Server::bind`].
pub(crate) struct TlsParts {
    listener: TcpListener,
    resolver: Arc<certs::SniResolver>,
    dir: PathBuf,
    default_name: String,
    /// `[tls.acme]`: its challenges are answered by both listeners.
    acme: Option<Arc<certs::acme::Acme>>,
}

/// The certificates' answer to "may this connection carry that Host?", and
/// the handshake counter.
struct Coverage {
    resolver: Arc<certs::SniResolver>,
    metrics: Metrics,
}

impl HostCoverage for Coverage {
    fn covers(&self, sni: Option<&str>, host: &str) -> bool {
        self.resolver.covers(sni, host)
    }

    fn handshake(&self, ok: bool) {
        self.metrics.count_tls_handshake(ok);
    }
}

/// Listeners bound and state prepared; [`Server::run`] serves until shutdown.
pub struct Server {
    config: Config,
    config_path: Option<PathBuf>,
    routes: RouteHandle,
    control: Arc<ControlPlane>,
    portal: Arc<Portal>,
    api_listener: TcpListener,
    /// `serve`'s gateway; `None` for `sessiongate control-plane`.
    gateway: Option<LocalGatewayParts>,
    /// Where the store is: on PostgreSQL, other replicas may share it.
    database: crate::store::DatabaseUrl,
}

/// The gateway of `serve`, in this process: its proxies read the control
/// plane's own table (one copy of each route), and it is told each version
/// as the control plane stores it, through the same messages a remote
/// gateway reads from its stream (the keys, and what to close).
struct LocalGatewayParts {
    follower: Follower,
    listener: TcpListener,
    tls: Option<TlsParts>,
    upstream_tls: UpstreamTls,
}

/// What [`Server::bind`] starts: `serve` (both), or `control-plane` (no
/// gateway listeners; gateways follow it over the route stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Serve,
    ControlPlane,
}

impl Server {
    /// Prepares the data dir and token, publishes the static routes, binds both
    /// listeners. Nothing is served yet.
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> Result<Server, ServeError> {
        Self::bind_mode(config, config_path, Mode::Serve).await
    }

    /// [`bind`](Self::bind) for `mode`.
    pub async fn bind_mode(
        mut config: Config,
        config_path: Option<PathBuf>,
        mode: Mode,
    ) -> Result<Server, ServeError> {
        let data_dir = config.control_plane.data_dir.clone();
        datadir::create_private_dir(&data_dir).map_err(|source| ServeError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let (token_hash, source) =
            auth::admin_token_hash(&data_dir, std::env::var(auth::ADMIN_TOKEN_ENV).ok())?;
        match &source {
            TokenSource::Env => tracing::info!("admin token from {}", auth::ADMIN_TOKEN_ENV),
            TokenSource::File(p) => {
                tracing::info!(path = %p.display(), "admin token hash from file")
            }
            TokenSource::Generated(p, token) => {
                // Printed once, on stdout, never through the logger; only its
                // hash is on disk.
                println!(
                    "Generated an admin token (only its hash is stored, in {}):\n\n    {token}\n",
                    p.display()
                );
            }
        }

        let database = config.database()?;
        if let Some(db_path) = database.sqlite_path() {
            datadir::create_private_file(db_path).map_err(|source| ServeError::DataDir {
                path: db_path.to_path_buf(),
                source,
            })?;
        }
        let store = Store::connect(&database)
            .await
            .map_err(|source| ServeError::Store {
                database: database.clone(),
                source,
            })?;

        let api_listener = bind("control_plane.listen", config.control_plane.listen).await?;
        if config.console.portal && config.console.upstream.trim().is_empty() {
            // The console's route on the portal host goes to this listener
            // as bound (its port may have been 0); kept across reloads.
            if let Ok(addr) = api_listener.local_addr() {
                config.console.upstream = format!("http://{addr}");
            }
        }
        let routes = RouteHandle::new();
        let static_specs = config.route_specs()?;
        routes
            .publish(&config.table_settings(), static_specs.clone())
            .map_err(|e| ConfigError::Invalid {
                key: "routes".into(),
                message: e.to_string(),
            })?;

        let (gateway, port, https_port, own) = match mode {
            Mode::Serve => {
                let g = bind_gateway(&config, &routes).await?;
                let port = g
                    .listener
                    .local_addr()
                    .map(|a| a.port())
                    .unwrap_or(config.gateway.http_listen.port());
                let https_port = g
                    .tls
                    .as_ref()
                    .and_then(|t| t.listener.local_addr().ok())
                    .map(|a| a.port());
                let own: Vec<(&'static str, std::io::Result<SocketAddr>)> =
                    [("gateway.http_listen", g.listener.local_addr())]
                        .into_iter()
                        .chain(
                            g.tls
                                .as_ref()
                                .map(|t| ("gateway.https_listen", t.listener.local_addr())),
                        )
                        .collect();
                (Some(g), port, https_port, own)
            }
            // Links carry the port the gateways listen on, as configured.
            Mode::ControlPlane => (
                None,
                config.gateway.http_listen.port(),
                config.https_listen().map(|a| a.port()),
                Vec::new(),
            ),
        };
        // Sessions may not target these: a loop through the gateway, or a
        // way to the API from an app's network position.
        let own_listeners = own
            .into_iter()
            .chain([("control_plane.listen", api_listener.local_addr())])
            .filter_map(|(key, addr)| addr.ok().map(|a| (key, a)))
            .collect();

        // The table is whole — static routes and every routed session — before
        // either listener serves.
        let control = Arc::new(
            ControlPlane::start(
                Parts {
                    certificates: gateway
                        .as_ref()
                        .and_then(|g| g.tls.as_ref())
                        .map(|t| t.resolver.clone()),
                    followers: gateway.iter().map(|g| g.follower.clone()).collect(),
                    ..Parts::new(store, routes.clone(), Arc::new(SystemClock))
                },
                Settings {
                    lifecycle: config.lifecycle_settings(),
                    access: config.access_settings(port, https_port),
                    admin_token_hash: token_hash,
                    static_keys: StaticKeys::from_specs(&static_specs),
                    targets: TargetPolicy::new(config.target_rules(), own_listeners),
                    failures: config.failure_limits(),
                    workspace: config.workspace_policy(),
                },
            )
            .await?,
        );
        control.gateways().set_ack_timeout(Duration::from_millis(
            config.control_plane.gateway_ack_timeout_ms,
        ));
        if let Some(settings) = config.oidc_settings(port, https_port) {
            let oidc = crate::oidc::Oidc::new(settings).map_err(|reason| {
                ServeError::Config(crate::config::ConfigError::Invalid {
                    key: "oidc.ca_file".into(),
                    message: reason,
                })
            })?;
            tracing::info!(
                issuer = %config.oidc.issuer,
                callback = %oidc.callback_url(),
                "OpenID Connect sign-in; register the callback with the provider"
            );
            control.set_oidc(Arc::new(oidc));
        }
        let portal = Arc::new(Portal::new(control.clone(), config.workshop_settings(port)));
        let table = routes.load();
        tracing::info!(
            version = table.version(),
            routes = table.routes().len(),
            db = %database,
            "route table loaded"
        );
        drop(table);
        drop(static_specs);
        // Parsing, validating and compiling the static routes (and the
        // in-process gateway's copy) peaked well above what is kept.
        crate::memory::release_freed();
        warn_exposed_key_material(&config, database.sqlite_path());
        let login = config.access.login_url.trim();
        if !login.is_empty() && config.login_url().is_none() {
            tracing::warn!(
                login_url = %login,
                "access.login_url is not on access.redirect_origins: ignored, browsers without a cookie get 401"
            );
        }
        Ok(Server {
            config,
            config_path,
            routes,
            control,
            portal,
            api_listener,
            gateway,
            database,
        })
    }

    /// The HTTPS listener's address, when there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.gateway
            .as_ref()
            .and_then(|g| g.tls.as_ref())
            .and_then(|t| t.listener.local_addr().ok())
    }

    /// The gateway's HTTP listener (`serve` only).
    pub fn gateway_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.gateway {
            Some(g) => g.listener.local_addr(),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "sessiongate control-plane has no gateway listener",
            )),
        }
    }

    pub fn api_addr(&self) -> std::io::Result<SocketAddr> {
        self.api_listener.local_addr()
    }

    /// The control plane's table (what the API shows).
    pub fn routes(&self) -> &RouteHandle {
        &self.routes
    }

    /// The in-process gateway's table (what its proxies serve), in `serve`.
    pub fn gateway_routes(&self) -> Option<&RouteHandle> {
        self.gateway.as_ref().map(|g| g.follower.routes())
    }

    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    pub fn portal(&self) -> &Arc<Portal> {
        &self.portal
    }

    /// Serves until `shutdown` resolves, then drains the gateway (up to
    /// `gateway.shutdown_grace_secs`) and stops the API.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let api_addr = self.api_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let mut gateway_tasks = None;
        if let Some(g) = self.gateway {
            let portal: Arc<dyn PortalService> = Arc::new(PortalRoutes {
                router: api::workshop_router()
                    .merge(crate::oidc::router())
                    .with_state(ApiState::new(self.portal.clone())),
                oidc_host: self.control.oidc().map(|o| o.redirect_host().to_string()),
            });
            let oidc = self.control.oidc().map(|o| {
                Arc::new(gateway::access::OidcRedirect {
                    login: o.login_url().into(),
                    origin: o.origin().into(),
                })
            });
            let parts = ProxyParts {
                routes: g.follower.routes().clone(),
                access: AccessConfig {
                    keys: g.follower.keys().clone(),
                    activator: Some(Arc::new(InProcessActivator(self.control.clone()))),
                    login_url: self.config.login_url().map(Arc::from),
                    oidc,
                },
                portal: Some(portal),
                metrics: self.control.gateway_metrics().clone(),
                tls_metrics: self.control.metrics().clone(),
                ready: None,
            };
            gateway_tasks = Some(spawn_gateway(
                &self.config,
                g.listener,
                g.tls,
                g.upstream_tls,
                parts,
                stop_rx.clone(),
            )?);
        }

        // Other replicas on the same database: their changes, and which of
        // us runs the reaper (nothing on SQLite).
        let replica_tasks =
            crate::replicas::spawn(self.control.clone(), &self.database, stop_rx.clone());

        let api_done = spawn_control_thread(
            self.api_listener.into_std()?,
            self.portal.clone(),
            self.config.api_limits(),
            self.config.lifecycle_settings().reaper_interval,
            stop_rx.clone(),
        )?;

        let cp = self.control.clone();
        let reloader = Reloader::new(
            self.config_path.clone(),
            self.config.clone(),
            self.routes.clone(),
        )
        .on_static_routes(Arc::new(move |specs| cp.static_routes_changed(specs)));
        let reload_task = tokio::spawn(reloader.run(stopped(stop_rx.clone())));

        tracing::info!("control plane listening on http://{api_addr}");
        if let (Some(base), Some(t)) = (self.config.gateway.base_domains.first(), &gateway_tasks) {
            tracing::info!("sessions answer at http://<name>.{base}:{}/", t.http_port);
        }

        shutdown.await;
        tracing::info!(
            grace_secs = self.config.gateway.shutdown_grace_secs,
            "shutting down: no new connections, draining in-flight requests"
        );
        let _ = stop_tx.send(true);
        self.control.gateways().close_streams();
        let _ = reload_task.await;
        for t in replica_tasks {
            let _ = t.await;
        }
        if let Some(t) = gateway_tasks {
            t.finish().await;
        }
        // The API's own connections get a short grace; nothing there is
        // long-lived. After it, the thread is left to end with the process.
        let _ = tokio::time::timeout(Duration::from_secs(5), api_done).await;
        // A shared transaction still open holds one of the store's connections.
        self.control.flush_writes().await;
        self.control.store().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// What a gateway's proxies are built from: in `serve`, the in-process
/// follower and the control plane beside it; in `sessiongate gateway`, the
/// follower of a remote control plane.
pub(crate) struct ProxyParts {
    pub routes: RouteHandle,
    pub access: AccessConfig,
    pub portal: Option<Arc<dyn PortalService>>,
    pub metrics: Arc<gateway::metrics::GatewayMetrics>,
    /// Where TLS handshakes are counted.
    pub tls_metrics: Metrics,
    /// A following gateway's readiness (503 until it holds a table).
    pub ready: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// The gateway's listeners, bound and prepared: what `serve` and
/// `sessiongate gateway` both run.
pub(crate) struct GatewayListeners {
    pub listener: TcpListener,
    pub tls: Option<TlsParts>,
    pub upstream_tls: UpstreamTls,
}

/// Binds the gateway's HTTP (and HTTPS) listeners and prepares the
/// certificates and upstream TLS, as the configuration says.
///
/// `routes` is the table the gateway serves: with `tls.on_demand_dev`, a name
/// it serves that no loaded certificate covers as browsers accept gets a
/// leaf of its own from the development CA ([`enable_on_demand`]).
pub(crate) async fn bind_gateway_listeners(
    config: &Config,
    routes: &RouteHandle,
) -> Result<GatewayListeners, ServeError> {
    // Re-encryption to https upstreams: checked now, so that a bad CA
    // bundle stops start-up with its file named.
    let ca = config.tls.upstream_ca_file.trim();
    let ca = (!ca.is_empty()).then(|| PathBuf::from(ca));
    let upstream_tls = UpstreamTls {
        verify: Arc::new(certs::client_config(true, ca.as_deref())?),
        no_verify: Arc::new(certs::client_config(false, None)?),
    };
    let listener = bind("gateway.http_listen", config.gateway.http_listen).await?;
    let mut tls = match config.https_listen() {
        Some(addr) => Some(prepare_tls(config, addr).await?),
        None => None,
    };
    if let Some(t) = &mut tls {
        enable_on_demand(config, t, routes.clone())?;
    }
    Ok(GatewayListeners {
        listener,
        tls,
        upstream_tls,
    })
}

/// `serve`'s gateway: its proxies read `routes`, the control plane's own
/// table, so that each route is held once in the process.
async fn bind_gateway(
    config: &Config,
    routes: &RouteHandle,
) -> Result<LocalGatewayParts, ServeError> {
    let l = bind_gateway_listeners(config, routes).await?;
    Ok(LocalGatewayParts {
        follower: Follower::sharing(routes.clone(), gateway::access::KeyRing::throwaway()),
        listener: l.listener,
        tls: l.tls,
        upstream_tls: l.upstream_tls,
    })
}

/// The running gateway listeners.
pub(crate) struct GatewayTasks {
    pub http_port: u16,
    /// The HTTPS listener's certificates, for their expiry metrics.
    pub certificates: Option<Arc<certs::SniResolver>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    https: Option<tokio::task::JoinHandle<()>>,
    reloader: Option<tokio::task::JoinHandle<()>>,
    /// ACME orders and renewals.
    acme: Option<tokio::task::JoinHandle<()>>,
    /// Sessions' workspace ports.
    workspace: tokio::task::JoinHandle<()>,
}

impl GatewayTasks {
    /// Waits for the listeners to drain (after the stop signal).
    pub async fn finish(self) {
        if let Some(t) = self.reloader {
            t.abort();
        }
        if let Some(t) = self.acme {
            t.abort();
        }
        self.workspace.abort();
        if let Ok(Err(e)) = self.http.await {
            tracing::error!(error = %e, "gateway stopped with an error");
        }
        if let Some(t) = self.https {
            let _ = t.await;
        }
    }
}

/// Serves the gateway's listeners with proxies made of `parts`, until
/// `stop` turns true.
pub(crate) fn spawn_gateway(
    config: &Config,
    listener: TcpListener,
    tls: Option<TlsParts>,
    upstream_tls: UpstreamTls,
    parts: ProxyParts,
    stop: watch::Receiver<bool>,
) -> Result<GatewayTasks, ServeError> {
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let gateway_addr = listener.local_addr()?;
    let https_addr = tls.as_ref().and_then(|t| t.listener.local_addr().ok());
    let upstream = UpstreamClient::new(config.upstream_config()).with_tls(upstream_tls);
    let build = |proxy: Proxy| {
        let mut proxy = proxy
            .with_access(parts.access.clone())
            .with_metrics(parts.metrics.clone())
            .with_access_log(config.log.access_log)
            .with_trusted_proxies(config.trusted_proxies());
        if let Some(p) = &parts.portal {
            proxy = proxy.with_portal(p.clone());
        }
        if let Some(r) = &parts.ready {
            proxy = proxy.with_ready(r.clone());
        }
        proxy
    };
    let mut proxy = build(Proxy::new(parts.routes.clone(), upstream.clone(), "http"));
    if let (true, Some(a)) = (config.tls.redirect_http, https_addr) {
        proxy = proxy.with_https_redirect(a.port());
    }
    let acme = tls.as_ref().and_then(|t| t.acme.clone());
    if let Some(acme) = &acme {
        proxy = proxy.with_acme_challenges(acme.challenges());
    }
    let http = tokio::spawn(gateway::run(
        listener,
        Arc::new(proxy),
        config.server_config(),
        stopped(stop.clone()),
    ));
    let mut workspace_config = config.workspace_config();
    if config.gateway.workspace_session_metrics {
        parts.metrics.enable_workspace_per_session();
    }
    if config.gateway.workspace_tls {
        workspace_config.tls = Some(workspace_tls(config)?);
    }
    let workspace = gateway::workspace::spawn(
        parts.routes.clone(),
        workspace_config,
        parts.metrics.clone(),
        stop.clone(),
    );
    tracing::info!("gateway listening on http://{gateway_addr}");
    let mut reloader = None;
    let mut https = None;
    let certificates = tls.as_ref().map(|t| t.resolver.clone());
    if let Some(tls) = tls {
        let interval = Duration::from_secs(config.tls.reload_interval_secs);
        reloader = Some(certs::spawn_reloader(
            tls.dir.clone(),
            Some(tls.default_name.clone()),
            tls.resolver.clone(),
            interval,
        ));
        let mut acceptor = certs::Acceptor::new(tls.resolver.clone());
        if let Some(acme) = &acme {
            acceptor = acceptor.with_challenges(acme.challenges());
        }
        let coverage = Arc::new(Coverage {
            resolver: tls.resolver.clone(),
            metrics: parts.tls_metrics.clone(),
        });
        let https_proxy =
            build(Proxy::new(parts.routes.clone(), upstream, "https").with_tls(coverage));
        let stop = stopped(stop.clone());
        let server_config = config.server_config();
        if let Some(a) = https_addr {
            tracing::info!("gateway listening on https://{a}");
        }
        https = Some(tokio::spawn(async move {
            if let Err(e) = gateway::run_tls(
                tls.listener,
                Arc::new(https_proxy),
                server_config,
                TlsListener { acceptor },
                stop,
            )
            .await
            {
                tracing::error!(error = %e, "HTTPS listener stopped with an error");
            }
        }));
    }
    Ok(GatewayTasks {
        http_port: gateway_addr.port(),
        certificates,
        http,
        https,
        reloader,
        // Started once the listeners that answer its challenges are.
        acme: acme.map(|a| a.spawn()),
        workspace,
    })
}

/// Runs the control-plane API and the lifecycle reaper on a thread and
/// runtime of their own, apart from the gateway's workers. Every write makes
/// several round trips to the database (sqlx's SQLite thread, or the
/// PostgreSQL server) while holding the write lock;
/// on the gateway's runtime each wake-up waited behind the proxied
/// connections' tasks (a saturated worker looks at its injection queue only
/// every few dozen tasks), so under proxy load writes slowed several-fold
/// (`bench churn`). Here they wait for one mostly idle thread, and a burst of
/// API calls cannot take the proxy's workers either. The answer resolves when
/// the API server has stopped (after `stop`) and the reaper with it.
fn spawn_control_thread(
    listener: std::net::TcpListener,
    portal: Arc<Portal>,
    limits: api::server::ApiLimits,
    reaper_interval: Duration,
    stop: watch::Receiver<bool>,
) -> Result<tokio::sync::oneshot::Receiver<()>, ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sessiongate-api")
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    std::thread::Builder::new()
        .name("sessiongate-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "control-plane listener");
                        return;
                    }
                };
                let reaping = portal.clone();
                let reaper = spawn_reaper(reaper_interval, stopped(stop.clone()), move || {
                    let portal = reaping.clone();
                    async move { portal.reap().await }
                });
                api::server::serve(
                    listener,
                    api::router(ApiState::new(portal)),
                    limits,
                    stopped(stop),
                )
                .await;
                let _ = reaper.await;
            });
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// Logs a warning naming each file of key material (and the data dir)
/// that other users can read: sessiongate makes what it creates private,
/// but does not change the modes of what it finds.
fn warn_exposed_key_material(config: &Config, db_path: Option<&std::path::Path>) {
    let data_dir = &config.control_plane.data_dir;
    let mut paths = vec![data_dir.clone(), data_dir.join(auth::TOKEN_FILE)];
    if let Some(db) = db_path {
        paths.extend(datadir::database_files(db));
    }
    if config.https_listen().is_some() {
        paths.extend(datadir::key_files(&config.certs_dir()));
    }
    for e in datadir::exposed(paths) {
        tracing::warn!(path = %e.path.display(), mode = %format!("{:04o}", e.mode), "{e}");
    }
}

/// Loads the certificates directory, generating a development certificate
/// first when it holds none and that is allowed, and binds the listener.
async fn prepare_tls(config: &Config, addr: SocketAddr) -> Result<TlsParts, ServeError> {
    let dir = config.certs_dir();
    datadir::create_private_dir(&dir).map_err(|source| ServeError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let default_name = config.default_certificate();
    let has_pairs = std::fs::read_dir(&dir)
        .map_err(|source| ServeError::DataDir {
            path: dir.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .any(|e| {
            let p = e.path();
            p.extension().is_some_and(|x| x == "crt") && p.file_stem().is_some_and(|s| s != "ca")
        });
    if !has_pairs && config.tls.generate_dev_certificate {
        let files = certs::dev::generate(&default_name, &dir)?;
        tracing::info!(
            ca = %files.ca_cert.display(),
            cert = %files.cert.display(),
            "generated a development certificate for {default_name} and *.{default_name}; \
             trust its CA to use it (curl --cacert {})",
            files.ca_cert.display()
        );
    }
    let (store, errors) = certs::CertDir::load(&dir, Some(&default_name));
    for e in errors {
        tracing::warn!(error = %e, "certificate not loaded");
    }
    if store.is_empty() {
        tracing::warn!(dir = %dir.display(), "no certificates: TLS handshakes will fail until a pair NAME.crt + NAME.key is added");
    }
    let resolver = Arc::new(certs::SniResolver::new(store));
    let listener = bind("gateway.https_listen", addr).await?;
    Ok(TlsParts {
        listener,
        resolver,
        dir,
        default_name,
        acme: None,
    })
}

/// On-demand certificates for names `routes` serves (a base domain, the
/// portal host, a session's host) that no loaded certificate covers by
/// exact name or by a wildcard browsers accept, asked in this order:
///
/// - with `[tls.acme]`, from the ACME CA: the names in `tls.acme.domains`,
///   and with `tls.acme.on_demand` any served name a public CA issues for;
/// - with `tls.on_demand_dev` and the development CA in the certificates
///   directory (`ca.crt` + `ca.key`, as `generate_dev_certificate` or
///   `sessiongate certs dev` leave them), a leaf of its own from that CA,
///   kept in `<certs_dir>/on-demand`. `*.localhost` is a wildcard that
///   browsers refuse, so this is what gives `https://<session>.localhost`
///   to a browser on the embedded defaults.
///
/// Names not served never get a certificate.
fn enable_on_demand(
    config: &Config,
    tls: &mut TlsParts,
    routes: RouteHandle,
) -> Result<(), ServeError> {
    let serves: certs::on_demand::Serves = Arc::new(move |name: &str| {
        let table = routes.load();
        table.base_domains().any(|b| b == name)
            || table.portal_host() == Some(name)
            || gateway::router::lookup(&table, name, "/").is_some()
    });
    let mut sources: Vec<Arc<dyn certs::on_demand::Source>> = Vec::new();
    let a = &config.tls.acme;
    if !a.directory_url.is_empty() {
        let mut settings = certs::acme::AcmeSettings::new(
            a.directory_url.clone(),
            config.control_plane.data_dir.join("acme"),
        );
        settings.email = a.email.clone();
        settings.ca_file = (!a.ca_file.trim().is_empty()).then(|| PathBuf::from(a.ca_file.trim()));
        // Checked with the configuration.
        settings.challenge = certs::acme::ChallengeKind::parse(&a.challenge)
            .unwrap_or(certs::acme::ChallengeKind::Http01);
        settings.domains = a.domains.clone();
        settings.on_demand = a.on_demand;
        settings.check_interval = Duration::from_secs(a.check_interval_secs);
        let acme = certs::acme::Acme::open(settings, serves.clone())?;
        tracing::info!(
            directory = %a.directory_url,
            challenge = %a.challenge,
            domains = ?a.domains,
            on_demand = a.on_demand,
            "certificates from the ACME CA"
        );
        sources.push(acme.clone());
        tls.acme = Some(acme);
    }
    let (ca_cert, ca_key) = (tls.dir.join("ca.crt"), tls.dir.join("ca.key"));
    if !config.tls.on_demand_dev {
    } else if !ca_cert.exists() || !ca_key.exists() {
        tracing::debug!(dir = %tls.dir.display(), "no development CA: no on-demand certificates from it");
    } else {
        match certs::on_demand::OnDemand::open(
            &ca_cert,
            &ca_key,
            &tls.dir.join("on-demand"),
            serves,
            certs::on_demand::OnDemandSettings::default(),
        ) {
            Ok(od) => {
                sources.push(Arc::new(od));
                tracing::info!(ca = %ca_cert.display(), "on-demand certificates from the development CA for served names");
            }
            Err(e) => {
                tracing::warn!(error = %e, "development CA unusable: no on-demand certificates")
            }
        }
    }
    if !sources.is_empty() {
        tls.resolver.set_on_demand(sources);
    }
    Ok(())
}

/// The TLS of workspace ports (`gateway.workspace_tls`): the workspace
/// CA's server certificate, and a client certificate required from the
/// same CA (its common name is checked against the session's users).
fn workspace_tls(config: &Config) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, ServeError> {
    let dir = config.workspace_policy().ca_dir;
    datadir::create_private_dir(&dir).map_err(|source| ServeError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let files = crate::control::workspace_ca(&dir)?;
    let leaf = certs::LoadedCert::from_files("localhost", &files.cert, &files.key)?;
    let resolver = Arc::new(certs::SniResolver::new(certs::CertStore::new(
        [leaf],
        Some("localhost"),
    )));
    let tls = certs::server_config_with_client_certs(
        resolver,
        certs::ClientCerts::Required(Some(&files.ca_cert)),
    )?;
    tracing::info!(ca = %files.ca_cert.display(), "workspace ports speak TLS with client certificates from this CA");
    Ok(Arc::new(tls))
}

/// The training portal's API on the portal host: the gateway hands those
/// requests to the control plane's workshop router in the same process.
struct PortalRoutes {
    router: axum::Router,
    /// OpenID Connect's callback host, when it is not the portal host.
    oidc_host: Option<String>,
}

/// The most a portal answer may hold: they are small JSON documents and
/// redirects, so anything larger is a fault, not an answer to pass on.
const PORTAL_ANSWER_LIMIT: usize = 1 << 20;

impl PortalService for PortalRoutes {
    fn claims(&self, path: &str) -> bool {
        path.starts_with("/workshops/")
            || path.starts_with("/oauth2/")
            || path.starts_with(crate::oidc::PREFIX)
    }

    fn claims_on(&self, host: &str, path: &str) -> bool {
        self.oidc_host.as_deref() == Some(host) && path.starts_with(crate::oidc::PREFIX)
    }

    fn call(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = hyper::Response<ProxyBody>> + Send>> {
        let router = self.router.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let mut req = req.map(axum::body::Body::new);
            // As the control-plane listener does: the brute-force limit
            // counts by the client's address.
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(client));
            let resp = match tower::ServiceExt::oneshot(router, req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let (parts, body) = resp.into_parts();
            match axum::body::to_bytes(body, PORTAL_ANSWER_LIMIT).await {
                Ok(bytes) => hyper::Response::from_parts(parts, ProxyBody::full(bytes)),
                Err(e) => {
                    tracing::error!(path = %path, status = parts.status.as_u16(), error = %e, "portal answer could not be read");
                    let mut resp = hyper::Response::new(ProxyBody::full(bytes::Bytes::from_static(
                        b"{\"error\": {\"code\": \"internal\", \"message\": \"the portal's answer could not be read\"}}",
                    )));
                    *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    resp
                }
            }
        })
    }
}

/// Access links opened at the gateway, consumed by the control plane in
/// the same process.
struct InProcessActivator(Arc<ControlPlane>);

impl Activator for InProcessActivator {
    fn activate(&self, req: ActivationRequest) -> ActivationFuture {
        let cp = self.0.clone();
        Box::pin(async move { cp.activate_link(req).await })
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { key, addr, source })
}
