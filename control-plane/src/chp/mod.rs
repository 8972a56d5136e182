//! `sessiongate chp`: configurable-http-proxy's command line and REST API
//! in front of this gateway's route table and proxy, so that an unmodified
//! JupyterHub runs sessiongate in CHP's place (`CHP-COMPAT.md`).
//!
//! A different front door, not a second proxy: the routes JupyterHub posts
//! become routes of a [`gateway::RouteTable`] (filed under their canonical
//! path, [`gateway::chp`]), published by the same publisher, and requests go
//! through the same [`gateway::proxy::Proxy`] with CHP's flavour (routing by
//! decoded path on any host, upstream URLs, forwarding headers, error pages,
//! activity rules). The table starts empty and lives in memory, as CHP's
//! does and JupyterHub's tests require.
//!
//! - [`args`]: the command line.
//! - [`api`]: the REST API (`/api/routes`), and what it stores.
//! - `run` (here): the listeners, the pid file, signals.

pub mod api;
pub mod args;
pub mod listen;

use std::sync::Arc;
use std::time::Duration;

use gateway::chp::{ChpFlavor, ErrorPages};
use gateway::proxy::Proxy;
use gateway::{
    RouteHandle, RoutePublisher, ServerConfig, TableSettings, TlsListener, UpstreamConfig,
};
use listen::Bound;

pub use args::{ChpArgs, Exit};

/// The configurable-http-proxy version this mode answers to (`--version`):
/// JupyterHub compares it with the version it supports.
pub const CHP_VERSION: &str = "5.3.0";

/// Why `sessiongate chp` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ChpError {
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("--{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}

/// Refuses what rustls cannot do, naming it: encrypted private keys
/// (CHP decrypts them with these environment variables' passphrases).
fn check_supported() -> Result<(), ChpError> {
    for var in [
        "CONFIGPROXY_SSL_KEY_PASSPHRASE",
        "CONFIGPROXY_API_SSL_KEY_PASSPHRASE",
    ] {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            return Err(ChpError::Unsupported(format!(
                "{var} is set, but encrypted private keys are not supported: decrypt the key (openssl pkey -in KEY -out KEY.plain) and keep it readable only by this user"
            )));
        }
    }
    Ok(())
}

/// A certificate and its key: both, or neither.
fn pair<'a>(
    flags: (&'static str, &'static str),
    cert: Option<&'a std::path::Path>,
    key: Option<&'a std::path::Path>,
) -> Result<Option<(&'a std::path::Path, &'a std::path::Path)>, ChpError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ChpError::Invalid {
            flag: flags.0,
            message: format!("needs --{} too", flags.1),
        }),
        (None, Some(_)) => Err(ChpError::Invalid {
            flag: flags.1,
            message: format!("needs --{} too", flags.0),
        }),
    }
}

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn run(a: ChpArgs) -> Result<(), ChpError> {
    check_supported()?;
    for flag in &a.ignored {
        tracing::warn!(flag = %flag, reason = args::ignored_reason(flag), "option accepted and ignored, as configurable-http-proxy ignores it");
    }
    let token = std::env::var("CONFIGPROXY_AUTH_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if token.is_none() {
        tracing::warn!("REST API is not authenticated.");
    }
    let mut headers = Vec::new();
    for (k, v) in &a.custom_headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| ChpError::Invalid {
            flag: "custom-header",
            message: format!("{k:?}: {e}"),
        })?;
        let value = http::HeaderValue::from_str(v).map_err(|e| ChpError::Invalid {
            flag: "custom-header",
            message: format!("{v:?}: {e}"),
        })?;
        headers.push((name, value));
    }
    let flavor = Arc::new(ChpFlavor {
        host_routing: a.host_routing,
        prepend_path: a.prepend_path,
        include_prefix: a.include_prefix,
        x_forward: a.x_forward,
        headers,
        errors: match (&a.error_target, &a.error_path) {
            (Some(t), _) => ErrorPages::Target(t.clone()),
            (None, Some(d)) => ErrorPages::Dir(d.clone()),
            (None, None) => ErrorPages::Builtin,
        },
        auto_rewrite: a.auto_rewrite,
        protocol_rewrite: a.protocol_rewrite.clone(),
    });

    // TLS material is read, and the listeners bound, before anything is
    // served: a bad file or a port in use is an exit, not a proxy that keeps
    // running without it (CHP 5.3.0 keeps running when it cannot bind).
    let public_tls = match pair(
        ("ssl-cert", "ssl-key"),
        a.ssl_cert.as_deref(),
        a.ssl_key.as_deref(),
    )? {
        Some((cert, key)) => Some(listen::tls_acceptor(
            "ssl-cert",
            cert,
            key,
            a.ssl_ca.as_deref(),
            a.ssl_request_cert,
        )?),
        None => None,
    };
    let api_tls = match pair(
        ("api-ssl-cert", "api-ssl-key"),
        a.api_ssl_cert.as_deref(),
        a.api_ssl_key.as_deref(),
    )? {
        Some((cert, key)) => Some(listen::tls_acceptor(
            "api-ssl-cert",
            cert,
            key,
            a.api_ssl_ca.as_deref(),
            a.api_ssl_request_cert,
        )?),
        None => None,
    };
    let client_identity = pair(
        ("client-ssl-cert", "client-ssl-key"),
        a.client_ssl_cert.as_deref(),
        a.client_ssl_key.as_deref(),
    )?;

    let public = match &a.socket {
        Some(path) => listen::unix("--socket", path).await?,
        None => listen::tcp("--ip/--port", a.ip.as_deref(), a.port).await?,
    };
    let api_listener = match &a.api_socket {
        Some(path) => listen::unix("--api-socket", path).await?,
        None => listen::tcp("--api-ip/--api-port", Some(&a.api_ip), a.api_port).await?,
    };
    let metrics_listener = match (&a.metrics_socket, a.metrics_port) {
        (Some(path), _) => Some(listen::unix("--metrics-socket", path).await?),
        (None, Some(p)) => {
            Some(listen::tcp("--metrics-ip/--metrics-port", Some(&a.metrics_ip), p).await?)
        }
        (None, None) => None,
    };
    // HTTP to HTTPS, on every interface as CHP listens, unless the proxy
    // itself is on port 80 or on a unix socket.
    let redirect = match (a.redirect_port, public.port()) {
        (Some(from), Some(port)) if port != 80 => Some((
            listen::tcp("--redirect-port", None, from).await?,
            a.redirect_to.unwrap_or(port),
        )),
        _ => None,
    };

    let routes = RouteHandle::new();
    if let Err(e) = routes.publish(&TableSettings::default(), Vec::new()) {
        return Err(ChpError::Unsupported(e.to_string()));
    }
    let publisher = RoutePublisher::spawn(routes.clone());
    let state = Arc::new(api::ChpState::new(
        routes.clone(),
        publisher,
        token,
        a.host_routing,
        a.change_origin,
    ));
    if let Some(t) = &a.default_target {
        state
            .add_route("/", serde_json::json!({ "target": t }))
            .await
            .map_err(|e| ChpError::Invalid {
                flag: "default-target",
                message: e,
            })?;
    }

    let mut upstream = UpstreamConfig::default();
    if let Some(ms) = a.proxy_timeout_ms.filter(|ms| *ms > 0) {
        upstream.response_timeout = Duration::from_millis(ms);
    }
    // https:// targets: verified against the system's roots and
    // --client-ssl-ca, or not at all with --insecure.
    // --client-ssl-cert and -key are presented to targets that ask.
    let tls_config = |verify: bool, ca: Option<&std::path::Path>| {
        certs::client_config_with_identity(verify, ca, client_identity)
            .map(Arc::new)
            .map_err(|e| ChpError::Invalid {
                flag: if client_identity.is_some() {
                    "client-ssl-cert"
                } else {
                    "client-ssl-ca"
                },
                message: e.to_string(),
            })
    };
    let client = gateway::UpstreamClient::new(upstream).with_tls(gateway::upstream::UpstreamTls {
        verify: tls_config(!a.insecure, a.client_ssl_ca.as_deref())?,
        no_verify: tls_config(false, None)?,
    });
    let proxy = Arc::new(
        Proxy::new(
            routes.clone(),
            client,
            if public_tls.is_some() {
                "https"
            } else {
                "http"
            },
        )
        .with_chp(Arc::clone(&flavor))
        .with_access_log(matches!(a.log_level.as_str(), "debug")),
    );
    let mut server = ServerConfig::default();
    if let Some(ms) = a.timeout_ms.filter(|ms| *ms > 0) {
        server.idle_timeout = Duration::from_millis(ms);
    }
    server.header_read_timeout = Duration::from_millis(a.keep_alive_timeout_ms.max(1000));
    server.shutdown_grace = Duration::from_secs(1);
    // CHP has no per-client cap, and a hub behind a load balancer sees few
    // client addresses (one, for every unix-socket client).
    server.max_connections_per_ip = server.max_connections;

    if let Some(p) = &a.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::warn!(path = %p.display(), error = %e, "pid file not written");
        }
    }
    let scheme = |tls: bool| if tls { "https" } else { "http" };
    tracing::info!(
        "Proxying {}://{} to {}",
        scheme(public_tls.is_some()),
        public.shown(),
        a.default_target.as_deref().unwrap_or("(no default)")
    );
    tracing::info!(
        "Proxy API at {}://{}/api/routes",
        scheme(api_tls.is_some()),
        api_listener.shown()
    );
    if let Some(m) = &metrics_listener {
        tracing::info!("Serve metrics at http://{}/metrics", m.shown());
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let proxy_task = tokio::spawn(serve_proxy(
        public,
        public_tls.map(|acceptor| TlsListener {
            acceptor: certs::Acceptor::plain(acceptor.config().clone()),
        }),
        Arc::clone(&proxy),
        server,
        stopped(stop_rx.clone()),
    ));
    let mut tasks = vec![tokio::spawn(listen::serve_app(
        api_listener,
        api_tls,
        api::router(Arc::clone(&state)),
        stopped(stop_rx.clone()),
        "api",
    ))];
    if let Some(l) = metrics_listener {
        tasks.push(tokio::spawn(listen::serve_app(
            l,
            None,
            api::metrics_router(Arc::clone(&proxy), Arc::clone(&state)),
            stopped(stop_rx.clone()),
            "metrics",
        )));
    }
    if let Some((l, to)) = redirect {
        tracing::info!(
            "Added HTTP to HTTPS redirection from {} to {to}",
            l.port().unwrap_or_default()
        );
        tasks.push(tokio::spawn(listen::serve_app(
            l,
            None,
            listen::redirect_app(to),
            stopped(stop_rx.clone()),
            "redirect",
        )));
    }

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = proxy_task.await;
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    if let Some(p) = &a.pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// The public port: the gateway's accept loop on TCP or a unix socket,
/// through TLS when asked.
async fn serve_proxy(
    bound: Bound,
    tls: Option<TlsListener>,
    proxy: Arc<Proxy>,
    server: ServerConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    let served = match (bound, tls) {
        (Bound::Tcp(l), None) => gateway::server::run(l, proxy, server, stop).await,
        (Bound::Tcp(l), Some(t)) => gateway::server::run_tls(l, proxy, server, t, stop).await,
        (Bound::Unix(l, _file), None) => gateway::server::run(l, proxy, server, stop).await,
        (Bound::Unix(l, _file), Some(t)) => {
            gateway::server::run_tls(l, proxy, server, t, stop).await
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "proxy listener failed");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
