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

use gateway::{Proxy, RouteHandle, UpstreamClient};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::auth::{self, TokenSource};
use crate::config::{Config, ConfigError};
use crate::reload::Reloader;

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
    admin_token: Arc<str>,
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
        let (token, source) =
            auth::admin_token(&data_dir, std::env::var(auth::ADMIN_TOKEN_ENV).ok())?;
        match &source {
            TokenSource::Env => tracing::info!("admin token from {}", auth::ADMIN_TOKEN_ENV),
            TokenSource::File(p) => tracing::info!(path = %p.display(), "admin token from file"),
            TokenSource::Generated(p) => {
                // Printed once, on stdout, never through the logger.
                println!(
                    "Generated an admin token, stored in {} (mode 0600):\n\n    {token}\n",
                    p.display()
                );
            }
        }

        let routes = RouteHandle::new();
        let table = routes
            .publish(&config.table_settings(), config.route_specs()?)
            .map_err(|e| ConfigError::Invalid {
                key: "routes".into(),
                message: e.to_string(),
            })?;
        tracing::info!(
            version = table.version(),
            routes = table.routes().len(),
            "route table loaded"
        );

        let gateway_listener = bind("gateway.http_listen", config.gateway.http_listen).await?;
        let api_listener = bind("control_plane.listen", config.control_plane.listen).await?;
        Ok(Server {
            config,
            config_path,
            routes,
            admin_token: token.into(),
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

    /// Serves until `shutdown` resolves, then drains the gateway (up to
    /// `gateway.shutdown_grace_secs`) and stops the API.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let gateway_addr = self.gateway_addr()?;
        let api_addr = self.api_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let proxy = Arc::new(Proxy::new(
            self.routes.clone(),
            UpstreamClient::new(self.config.upstream_config()),
            "http",
        ));
        let gateway_task = tokio::spawn(gateway::run(
            self.gateway_listener,
            proxy,
            self.config.server_config(),
            stopped(stop_rx.clone()),
        ));

        let app = api::router(ApiState {
            routes: self.routes.clone(),
            admin_token: self.admin_token.clone(),
        });
        let api_task = tokio::spawn(
            axum::serve(self.api_listener, app)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        );

        let reloader = Reloader::new(
            self.config_path.clone(),
            self.config.clone(),
            self.routes.clone(),
        );
        let reload_task = tokio::spawn(reloader.run(stopped(stop_rx.clone())));

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
        if let Ok(Err(e)) = gateway_task.await {
            tracing::error!(error = %e, "gateway stopped with an error");
        }
        // The API's own connections get a short grace; nothing there is long-lived.
        let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { key, addr, source })
}
