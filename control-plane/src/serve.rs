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
use crate::store::{Store, StoreError};
use crate::workshop::Portal;

/// The database file in the data dir.
pub const DB_FILE: &str = "sessiongate.db";

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
    #[error("store {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
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
struct TlsParts {
    listener: TcpListener,
    resolver: Arc<certs::SniResolver>,
    dir: PathBuf,
    default_name: String,
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
    gateway_listener: TcpListener,
    api_listener: TcpListener,
    tls: Option<TlsParts>,
    upstream_tls: UpstreamTls,
}

impl Server {
    /// Prepares the data dir and token, publishes the static routes, binds both
    /// listeners. Nothing is served yet.
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> Result<Server, ServeError> {
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

        let db_path = data_dir.join(DB_FILE);
        datadir::create_private_file(&db_path).map_err(|source| ServeError::DataDir {
            path: db_path.clone(),
            source,
        })?;
        let store = Store::open(&db_path)
            .await
            .map_err(|source| ServeError::Store {
                path: db_path.clone(),
                source,
            })?;

        let routes = RouteHandle::new();
        let static_specs = config.route_specs()?;
        routes
            .publish(&config.table_settings(), static_specs.clone())
            .map_err(|e| ConfigError::Invalid {
                key: "routes".into(),
                message: e.to_string(),
            })?;

        // Re-encryption to https upstreams: checked now, so that a bad CA
        // bundle stops start-up with its file named.
        let ca = config.tls.upstream_ca_file.trim();
        let ca = (!ca.is_empty()).then(|| PathBuf::from(ca));
        let upstream_tls = UpstreamTls {
            verify: Arc::new(certs::client_config(true, ca.as_deref())?),
            no_verify: Arc::new(certs::client_config(false, None)?),
        };

        // Bound first, so that the control plane is built with the ports its
        // links carry; nothing is served before `run`.
        let gateway_listener = bind("gateway.http_listen", config.gateway.http_listen).await?;
        let tls = match config.https_listen() {
            Some(addr) => Some(prepare_tls(&config, addr).await?),
            None => None,
        };
        let api_listener = bind("control_plane.listen", config.control_plane.listen).await?;
        let port = gateway_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(config.gateway.http_listen.port());
        let https_port = tls
            .as_ref()
            .and_then(|t| t.listener.local_addr().ok())
            .map(|a| a.port());
        // Sessions may not target these: a loop through the gateway, or a
        // way to the API from an app's network position.
        let own_listeners = [
            ("gateway.http_listen", gateway_listener.local_addr()),
            ("control_plane.listen", api_listener.local_addr()),
        ]
        .into_iter()
        .chain(
            tls.as_ref()
                .map(|t| ("gateway.https_listen", t.listener.local_addr())),
        )
        .filter_map(|(key, addr)| addr.ok().map(|a| (key, a)))
        .collect();

        // The table is whole — static routes and every routed session — before
        // either listener serves.
        let control = Arc::new(
            ControlPlane::start(
                Parts {
                    certificates: tls.as_ref().map(|t| t.resolver.clone()),
                    ..Parts::new(store, routes.clone(), Arc::new(SystemClock))
                },
                Settings {
                    lifecycle: config.lifecycle_settings(),
                    access: config.access_settings(port, https_port),
                    admin_token_hash: token_hash,
                    static_keys: StaticKeys::from_specs(&static_specs),
                    targets: TargetPolicy::new(config.target_rules(), own_listeners),
                    failures: config.failure_limits(),
                },
            )
            .await?,
        );
        let portal = Arc::new(Portal::new(control.clone(), config.workshop_settings(port)));
        let table = routes.load();
        tracing::info!(
            version = table.version(),
            routes = table.routes().len(),
            db = %db_path.display(),
            "route table loaded"
        );
        drop(table);
        warn_exposed_key_material(&config, &db_path);
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
            gateway_listener,
            api_listener,
            tls,
            upstream_tls,
        })
    }

    /// The HTTPS listener's address, when there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|t| t.listener.local_addr().ok())
    }

    pub fn gateway_addr(&self) -> std::io::Result<SocketAddr> {
        self.gateway_listener.local_addr()
    }

    pub fn api_addr(&self) -> std::io::Result<SocketAddr> {
        self.api_listener.local_addr()
    }

    pub fn routes(&self) -> &RouteHandle {
        &self.routes
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
        let gateway_addr = self.gateway_addr()?;
        let api_addr = self.api_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let access = AccessConfig {
            keys: self.control.local_gateway().keys().clone(),
            activator: Some(Arc::new(InProcessActivator(self.control.clone()))),
            login_url: self.config.login_url().map(Arc::from),
        };
        let upstream =
            UpstreamClient::new(self.config.upstream_config()).with_tls(self.upstream_tls.clone());
        let https_addr = self.https_addr();
        let portal: Arc<dyn PortalService> = Arc::new(PortalRoutes(
            api::workshop_router().with_state(ApiState::new(self.portal.clone())),
        ));
        let mut proxy = Proxy::new(self.routes.clone(), upstream.clone(), "http")
            .with_access(access.clone())
            .with_portal(portal.clone())
            .with_metrics(self.control.gateway_metrics().clone())
            .with_access_log(self.config.log.access_log)
            .with_trusted_proxies(self.config.trusted_proxies());
        if let (true, Some(a)) = (self.config.tls.redirect_http, https_addr) {
            proxy = proxy.with_https_redirect(a.port());
        }
        let gateway_task = tokio::spawn(gateway::run(
            self.gateway_listener,
            Arc::new(proxy),
            self.config.server_config(),
            stopped(stop_rx.clone()),
        ));
        let mut reloader_task = None;
        let mut https_task = None;
        let server_config = self.config.server_config();
        if let Some(tls) = self.tls {
            let interval = Duration::from_secs(self.config.tls.reload_interval_secs);
            reloader_task = Some(certs::spawn_reloader(
                tls.dir.clone(),
                Some(tls.default_name.clone()),
                tls.resolver.clone(),
                interval,
            ));
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs::server_config(
                tls.resolver.clone(),
            )));
            let coverage = Arc::new(Coverage {
                resolver: tls.resolver.clone(),
                metrics: self.control.metrics().clone(),
            });
            let https_proxy = Proxy::new(self.routes.clone(), upstream, "https")
                .with_access(access)
                .with_tls(coverage)
                .with_portal(portal)
                .with_metrics(self.control.gateway_metrics().clone())
                .with_access_log(self.config.log.access_log)
                .with_trusted_proxies(self.config.trusted_proxies());
            let stop = stopped(stop_rx.clone());
            https_task = Some(tokio::spawn(async move {
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

        tracing::info!("gateway listening on http://{gateway_addr}");
        if let Some(a) = https_addr {
            tracing::info!("gateway listening on https://{a}");
        }
        tracing::info!("control plane listening on http://{api_addr}");
        if let Some(base) = self.config.gateway.base_domains.first() {
            tracing::info!(
                "sessions answer at http://<name>.{base}:{}/",
                gateway_addr.port()
            );
        }

        shutdown.await;
        tracing::info!(
            grace_secs = self.config.gateway.shutdown_grace_secs,
            "shutting down: no new connections, draining in-flight requests"
        );
        let _ = stop_tx.send(true);
        let _ = reload_task.await;
        if let Some(t) = reloader_task {
            t.abort();
        }
        if let Ok(Err(e)) = gateway_task.await {
            tracing::error!(error = %e, "gateway stopped with an error");
        }
        if let Some(t) = https_task {
            let _ = t.await;
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

/// Runs the control-plane API and the lifecycle reaper on a thread and
/// runtime of their own, apart from the gateway's workers. Every write makes
/// several round trips to sqlx's SQLite thread while holding the write lock;
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
fn warn_exposed_key_material(config: &Config, db_path: &std::path::Path) {
    let data_dir = &config.control_plane.data_dir;
    let mut paths = vec![data_dir.clone(), data_dir.join(auth::TOKEN_FILE)];
    paths.extend(datadir::database_files(db_path));
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
    })
}

/// The training portal's API on the portal host: the gateway hands those
/// requests to the control plane's workshop router in the same process.
struct PortalRoutes(axum::Router);

/// The most a portal answer may hold: they are small JSON documents and
/// redirects, so anything larger is a fault, not an answer to pass on.
const PORTAL_ANSWER_LIMIT: usize = 1 << 20;

impl PortalService for PortalRoutes {
    fn claims(&self, path: &str) -> bool {
        path.starts_with("/workshops/") || path.starts_with("/oauth2/")
    }

    fn call(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = hyper::Response<ProxyBody>> + Send>> {
        let router = self.0.clone();
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
