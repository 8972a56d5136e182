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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gateway::chp::{ChpFlavor, ErrorPages};
use gateway::proxy::Proxy;
use gateway::{RouteHandle, RoutePublisher, ServerConfig, TableSettings, UpstreamConfig};
use tokio::net::TcpListener;

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

/// The address for `ip` (`''` and `*` are every interface; a name is
/// resolved) and `port`.
async fn listen_addr(ip: Option<&str>, port: u16) -> Result<SocketAddr, String> {
    match ip.unwrap_or("") {
        "" | "*" => Ok(SocketAddr::new(IpAddr::from([0u8; 16]), port)),
        ip => {
            if let Ok(a) = ip.trim_matches(['[', ']']).parse::<IpAddr>() {
                return Ok(SocketAddr::new(a, port));
            }
            tokio::net::lookup_host((ip, port))
                .await
                .map_err(|e| e.to_string())?
                .next()
                .ok_or_else(|| format!("{ip:?} resolves to no address"))
        }
    }
}

async fn bind(what: &'static str, ip: Option<&str>, port: u16) -> Result<TcpListener, ChpError> {
    let shown = format!("{}:{port}", ip.unwrap_or(""));
    let addr = listen_addr(ip, port).await.map_err(|e| ChpError::Bind {
        what,
        addr: shown.clone(),
        source: std::io::Error::other(e),
    })?;
    let socket = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()
    } else {
        tokio::net::TcpSocket::new_v4()
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        Ok(s)
    })
    .map_err(|source| ChpError::Bind {
        what,
        addr: shown.clone(),
        source,
    })?;
    socket.listen(1024).map_err(|source| ChpError::Bind {
        what,
        addr: shown,
        source,
    })
}

/// Refuses what this mode does not do yet, naming it, rather than running
/// without it.
fn check_supported(a: &ChpArgs) -> Result<(), ChpError> {
    let unsupported = [
        ("socket", a.socket.is_some()),
        ("api-socket", a.api_socket.is_some()),
        ("metrics-socket", a.metrics_socket.is_some()),
        ("ssl-key", a.ssl_key.is_some()),
        ("ssl-cert", a.ssl_cert.is_some()),
        ("api-ssl-key", a.api_ssl_key.is_some()),
        ("api-ssl-cert", a.api_ssl_cert.is_some()),
        ("client-ssl-key", a.client_ssl_key.is_some()),
        ("client-ssl-cert", a.client_ssl_cert.is_some()),
        ("redirect-port", a.redirect_port.is_some()),
    ];
    let named: Vec<&str> = unsupported
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect();
    if named.is_empty() {
        Ok(())
    } else {
        Err(ChpError::Unsupported(format!(
            "not supported yet by sessiongate chp: --{}",
            named.join(", --")
        )))
    }
}

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn run(a: ChpArgs) -> Result<(), ChpError> {
    check_supported(&a)?;
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

    // Bound before anything is served: a port in use is an exit, not a
    // proxy that keeps running without it (CHP 5.3.0 keeps running).
    let public = bind("--ip/--port", a.ip.as_deref(), a.port).await?;
    let api_listener = bind("--api-ip/--api-port", Some(&a.api_ip), a.api_port).await?;
    let metrics_listener = match a.metrics_port {
        Some(p) => Some(bind("--metrics-ip/--metrics-port", Some(&a.metrics_ip), p).await?),
        None => None,
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
    let tls_config = |verify: bool, ca: Option<&std::path::Path>| {
        certs::client_config(verify, ca)
            .map(Arc::new)
            .map_err(|e| ChpError::Invalid {
                flag: "client-ssl-ca",
                message: e.to_string(),
            })
    };
    let client = gateway::UpstreamClient::new(upstream).with_tls(gateway::upstream::UpstreamTls {
        verify: tls_config(!a.insecure, a.client_ssl_ca.as_deref())?,
        no_verify: tls_config(false, None)?,
    });
    let proxy = Arc::new(
        Proxy::new(routes.clone(), client, "http")
            .with_chp(Arc::clone(&flavor))
            .with_access_log(matches!(a.log_level.as_str(), "debug")),
    );
    let mut server = ServerConfig::default();
    if let Some(ms) = a.timeout_ms.filter(|ms| *ms > 0) {
        server.idle_timeout = Duration::from_millis(ms);
    }
    server.header_read_timeout = Duration::from_millis(a.keep_alive_timeout_ms.max(1000));
    server.shutdown_grace = Duration::from_secs(1);

    if let Some(p) = &a.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::warn!(path = %p.display(), error = %e, "pid file not written");
        }
    }
    let public_addr = public.local_addr().ok();
    let api_addr = api_listener.local_addr().ok();
    tracing::info!(
        "Proxying http://{} to {}",
        public_addr.map(|a| a.to_string()).unwrap_or_default(),
        a.default_target.as_deref().unwrap_or("(no default)")
    );
    tracing::info!(
        "Proxy API at http://{}/api/routes",
        api_addr.map(|a| a.to_string()).unwrap_or_default()
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let proxy_task = tokio::spawn(gateway::server::run(
        public,
        Arc::clone(&proxy),
        server,
        stopped(stop_rx.clone()),
    ));
    let api_task = tokio::spawn(api::serve(
        api_listener,
        Arc::clone(&state),
        stopped(stop_rx.clone()),
    ));
    let metrics_task = metrics_listener.map(|l| {
        tokio::spawn(api::serve_metrics(
            l,
            Arc::clone(&proxy),
            Arc::clone(&state),
            stopped(stop_rx.clone()),
        ))
    });

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = proxy_task.await;
        let _ = api_task.await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
    })
    .await;
    if let Some(p) = &a.pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
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
