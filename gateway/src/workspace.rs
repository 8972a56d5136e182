//! Workspace ports: raw TCP for sessions that are not HTTP (SSH, VNC, a
//! database). A route with a [`RouteSpec::workspace_port`](crate::RouteSpec)
//! gets a TCP listener on the gateway, on that port; every connection it
//! accepts is spliced to the route's upstream host and port.
//!
//! [`spawn`] follows the route table (woken by each stored version): it opens
//! the listeners of the routes that have a port and may be used, and closes
//! those of routes that are gone, paused or waiting for an access link, or
//! whose port changed. A closed listener refuses new connections at once.
//! Live connections are registered with their route like WebSockets
//! ([`crate::table::RouteState::register_live`]), so whatever closes a
//! route's WebSockets (eviction, expiry, deletion, pause, revocation)
//! closes them too, within the same second.
//!
//! TCP carries no cookie: a port is open to the clients whose address is in
//! `allowed_clients` (loopback by default), and nobody else gets past
//! `accept`. Each session has a connection cap and an idle timeout; bytes
//! each way are counted in the gateway's metrics.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::headers::TrustedProxies;
use crate::metrics::GatewayMetrics;
use crate::table::{Route, RouteTarget};
use crate::RouteHandle;

/// How workspace ports are served.
#[derive(Clone, Debug)]
pub struct WorkspaceConfig {
    /// The address every workspace listener binds.
    pub listen: IpAddr,
    /// Clients allowed to connect (CIDRs).
    pub allowed_clients: TrustedProxies,
    /// Open connections per session at most; more are closed at once.
    pub max_connections: usize,
    /// A connection on which no byte moves either way for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// How long connecting to the upstream may take.
    pub connect_timeout: Duration,
    /// `gateway.workspace_tls`: the listeners speak TLS and require a
    /// client certificate from the workspace CA, whose common name must be
    /// a user the session lets in (its owner or a member of its groups).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for WorkspaceConfig {
    fn default() -> Self {
        WorkspaceConfig {
            listen: IpAddr::from([127, 0, 0, 1]),
            allowed_clients: TrustedProxies::parse(&["127.0.0.0/8", "::1/128"]).unwrap_or_default(),
            max_connections: 64,
            idle_timeout: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// How long a workspace client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One open listener.
struct Open {
    route: Arc<str>,
    task: JoinHandle<()>,
}

/// Follows `routes`, keeping one listener per usable route with a
/// workspace port, until `stop` turns true.
pub fn spawn(
    routes: RouteHandle,
    config: WorkspaceConfig,
    metrics: Arc<GatewayMetrics>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let config = Arc::new(config);
    let mut changed = routes.subscribe();
    tokio::spawn(async move {
        let mut open: HashMap<u16, Open> = HashMap::new();
        let mut seen = None;
        loop {
            let table = routes.load();
            if seen != Some(table.version()) {
                seen = Some(table.version());
                let wanted: HashMap<u16, Arc<str>> = table
                    .routes()
                    .iter()
                    .filter(|r| !r.paused && !r.inactive)
                    .filter(|r| matches!(r.target, RouteTarget::Upstream(_)))
                    .filter_map(|r| Some((r.workspace_port?, r.id.clone())))
                    .collect();
                drop(table);
                open.retain(|port, o| {
                    let keep = wanted.get(port) == Some(&o.route);
                    if !keep {
                        o.task.abort();
                        tracing::info!(port, route = %o.route, "workspace port closed");
                    }
                    keep
                });
                for (port, route) in wanted {
                    if open.contains_key(&port) {
                        continue;
                    }
                    let addr = SocketAddr::new(config.listen, port);
                    match TcpListener::bind(addr).await {
                        Ok(listener) => {
                            tracing::info!(%addr, route = %route, "workspace port open");
                            let task = tokio::spawn(accept_loop(
                                listener,
                                route.clone(),
                                routes.clone(),
                                config.clone(),
                                metrics.clone(),
                            ));
                            open.insert(port, Open { route, task });
                        }
                        Err(e) => {
                            metrics.workspace_connection("bind_failed");
                            tracing::error!(%addr, route = %route, error = %e, "workspace port could not be opened; tried again at the next table change or in 30 s");
                        }
                    }
                }
            }
            // A port that could not be bound is tried again at the next
            // change, or after a while.
            tokio::select! {
                r = changed.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(30)) => { seen = None; }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, o) in open {
            o.task.abort();
        }
    })
}

async fn accept_loop(
    listener: TcpListener,
    route: Arc<str>,
    routes: RouteHandle,
    config: Arc<WorkspaceConfig>,
    metrics: Arc<GatewayMetrics>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(route = %route, error = %e, "workspace accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !config.allowed_clients.contains(peer.ip()) {
            metrics.workspace_connection("refused_client");
            tracing::warn!(%peer, route = %route, "workspace connection refused: the client is not in gateway.workspace_allowed_clients");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.workspace_connection("refused_limit");
            tracing::warn!(%peer, route = %route, max = config.max_connections, "workspace connection refused: the session has gateway.workspace_max_connections open");
            continue;
        };
        let Some(current) = routes.load().route(&route).cloned() else {
            continue;
        };
        let (config, metrics) = (config.clone(), metrics.clone());
        tokio::spawn(async move {
            match &config.tls {
                None => splice(client, peer, current, None, &config, &metrics).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                    let stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(client),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        _ => {
                            metrics.workspace_connection("refused_identity");
                            tracing::warn!(%peer, route = %current.id, "workspace connection refused: no TLS handshake with a client certificate from the workspace CA");
                            return;
                        }
                    };
                    let user = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| certs::dev::common_name(c));
                    let allowed = match (&user, &current.access) {
                        (Some(u), Some(list)) => list.allows(u),
                        _ => false,
                    };
                    if !allowed {
                        metrics.workspace_connection("refused_identity");
                        tracing::warn!(%peer, route = %current.id, user = ?user, "workspace connection refused: the certificate's user is neither the session's owner nor a member of a group it is shared with");
                        return;
                    }
                    let user: Option<Arc<str>> = user.map(Arc::from);
                    splice(stream, peer, current, user, &config, &metrics).await;
                }
            }
            drop(slot);
        });
    }
}

/// Connects to the route's upstream and copies bytes both ways until
/// either side closes, the route closes its live connections, or the idle
/// timeout passes.
async fn splice<C: AsyncRead + AsyncWrite + Unpin>(
    mut client: C,
    peer: SocketAddr,
    route: Arc<Route>,
    user: Option<Arc<str>>,
    config: &WorkspaceConfig,
    metrics: &GatewayMetrics,
) {
    if route.paused || route.inactive {
        metrics.workspace_connection("refused_state");
        return;
    }
    let RouteTarget::Upstream(upstream) = &route.target else {
        return;
    };
    let host = upstream
        .authority
        .host()
        .trim_matches(['[', ']'])
        .to_string();
    let port = upstream.authority.port_u16().unwrap_or(80);
    // Registered before connecting: a revocation from here on closes it
    // (of the certificate's user, on a TLS port).
    let (guard, mut close) = route.state.register_live(route.target.clone(), user);
    let connected = tokio::time::timeout(
        config.connect_timeout,
        TcpStream::connect((host.as_str(), port)),
    )
    .await;
    let mut upstream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics.workspace_connection("upstream_failed");
            tracing::warn!(%peer, route = %route.id, upstream = %format!("{host}:{port}"), error = %e, "workspace connection: the session's port refused");
            return;
        }
        Err(_) => {
            metrics.workspace_connection("upstream_failed");
            tracing::warn!(%peer, route = %route.id, upstream = %format!("{host}:{port}"), "workspace connection: the session's port did not answer in time");
            return;
        }
    };
    metrics.workspace_connection("accepted");
    metrics.workspace_open(1);
    let moved = AtomicBool::new(false);
    let mut a = Counted {
        io: &mut client,
        moved: &moved,
        state: &route,
        metrics,
        inbound: true,
    };
    let mut b = Counted {
        io: &mut upstream,
        moved: &moved,
        state: &route,
        metrics,
        inbound: false,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let mut idle = crate::tunnel::IdleCheck::new(config.idle_timeout);
    loop {
        tokio::select! {
            _ = &mut copy => break,
            _ = close.wait_for(|c| *c) => {
                tracing::debug!(%peer, route = %route.id, "workspace connection closed by the route");
                break;
            }
            _ = idle.tick() => {
                if idle.expired(&moved) {
                    tracing::debug!(%peer, route = %route.id, "workspace connection closed: idle");
                    break;
                }
            }
        }
    }
    metrics.workspace_open(-1);
    drop(guard);
}

/// One side of a splice: counts the bytes read from it (client: in,
/// upstream: out) and route activity.
struct Counted<'a, S> {
    io: &'a mut S,
    moved: &'a AtomicBool,
    state: &'a Route,
    metrics: &'a GatewayMetrics,
    inbound: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut *self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.moved.store(true, Ordering::Relaxed);
            self.state.state.touch();
            self.metrics.workspace_bytes(self.inbound, n as u64);
            self.metrics
                .workspace_session_bytes(&self.state.id, self.inbound, n as u64);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
