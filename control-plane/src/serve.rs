//! `sessiongate serve`: the gateway and the control plane in one process.
//!
//! Start-up order matters: the configuration is validated and the static
//! routes are published before either listener accepts a connection, so the
//! first request already sees the full table.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway::access::{AccessConfig, ActivationFuture, ActivationRequest, Activator};
use gateway::{Proxy, RouteHandle, UpstreamClient};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api;
use crate::auth::{self, TokenSource};
use crate::clock::SystemClock;
use crate::config::{Config, ConfigError};
use crate::control::{ControlError, ControlPlane, StaticKeys};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::session::reaper::spawn_reaper;
use crate::store::{Store, StoreError};

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
}

/// Listeners bound and state prepared; [`Server::run`] serves until shutdown.
pub struct Server {
    config: Config,
    config_path: Option<PathBuf>,
    routes: RouteHandle,
    control: Arc<ControlPlane>,
    gateway_listener: TcpListener,
    api_listener: TcpListener,
}

impl Server {
    /// Prepares the data dir and token, publishes the static routes, binds both
    /// listeners. Nothing is served yet.
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> Result<Server, ServeError> {
        let data_dir = config.control_plane.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| ServeError::DataDir {
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
        let control = Arc::new(ControlPlane::new(
            store,
            routes.clone(),
            Arc::new(SystemClock),
            config.lifecycle_settings(),
            token_hash,
            Metrics::new(),
        ));
        control.set_static_keys(StaticKeys::from_specs(&static_specs));
        // The link port is known only once the listener is bound; the keys'
        // grace period is needed by `start`.
        control.set_access_settings(config.access_settings(config.gateway.http_listen.port()));
        // The table is whole — static routes and every routed session — before
        // either listener exists.
        let sessions = control.start().await?;
        let table = routes.load();
        tracing::info!(
            version = table.version(),
            routes = table.routes().len(),
            sessions,
            db = %db_path.display(),
            "route table loaded"
        );
        drop(table);

        let gateway_listener = bind("gateway.http_listen", config.gateway.http_listen).await?;
        let api_listener = bind("control_plane.listen", config.control_plane.listen).await?;
        let port = gateway_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(config.gateway.http_listen.port());
        control.set_access_settings(config.access_settings(port));
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
            gateway_listener,
            api_listener,
        })
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
            keys: self.control.keys().clone(),
            activator: Some(Arc::new(InProcessActivator(self.control.clone()))),
            login_url: self.config.login_url().map(Arc::from),
        };
        let proxy = Arc::new(
            Proxy::new(
                self.routes.clone(),
                UpstreamClient::new(self.config.upstream_config()),
                "http",
            )
            .with_access(access),
        );
        let gateway_task = tokio::spawn(gateway::run(
            self.gateway_listener,
            proxy,
            self.config.server_config(),
            stopped(stop_rx.clone()),
        ));

        let app = api::router(self.control.clone());
        let api_task = tokio::spawn(
            axum::serve(self.api_listener, app)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        );

        let cp = self.control.clone();
        let reloader = Reloader::new(
            self.config_path.clone(),
            self.config.clone(),
            self.routes.clone(),
        )
        .on_static_routes(Arc::new(move |specs| {
            cp.set_static_keys(StaticKeys::from_specs(specs))
        }));
        let reload_task = tokio::spawn(reloader.run(stopped(stop_rx.clone())));
        let reaper_task = spawn_reaper(
            self.control.clone(),
            self.config.lifecycle_settings().reaper_interval,
            stopped(stop_rx.clone()),
        );

        tracing::info!("gateway listening on http://{gateway_addr}");
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
        let _ = reaper_task.await;
        if let Ok(Err(e)) = gateway_task.await {
            tracing::error!(error = %e, "gateway stopped with an error");
        }
        // The API's own connections get a short grace; nothing there is long-lived.
        let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
        self.control.store().close().await;
        tracing::info!("stopped");
        Ok(())
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
