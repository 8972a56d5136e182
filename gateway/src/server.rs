//! The accept loop: connection limits (`limits`), HTTP/1.1 and h2c on one
//! listener (or TLS with ALPN `h2`/`http/1.1`), header-read and idle
//! timeouts, a maximum connection age, and graceful shutdown.
//!
//! The listener is handed in, so tests run on `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use crate::body::{BodyError, ProxyBody};
use crate::limits::{ConnLease, PerClient, TunnelLimits};
use crate::metrics::GatewayMetrics;
use crate::proxy::{ConnInfo, Proxy};

/// TLS termination for a listener: the rustls configuration (certificates,
/// versions, suites, ALPN, resumption), on-demand certificates and ACME
/// TLS-ALPN-01 answers come from the `certs` crate.
#[derive(Clone)]
pub struct TlsListener {
    pub acceptor: certs::Acceptor,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").finish_non_exhaustive()
    }
}

/// Where connections come from: a TCP listener, or a unix socket (the
/// configurable-http-proxy mode's `--socket`). A unix client has no address;
/// it is reported as `0.0.0.0:0`, which the proxy does not forward as
/// `X-Forwarded-For`.
pub trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn accept(
        &self,
    ) -> impl Future<Output = io::Result<(Self::Stream, std::net::SocketAddr)>> + Send;

    /// Called on each accepted stream before it is served.
    fn prepare(_stream: &Self::Stream) {}
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, std::net::SocketAddr)> {
        TcpListener::accept(self).await
    }

    fn prepare(stream: &Self::Stream) {
        let _ = stream.set_nodelay(true);
    }
}

/// The address a unix-socket client is reported as.
pub const UNIX_CLIENT: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl Listener for UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<(Self::Stream, std::net::SocketAddr)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, UNIX_CLIENT))
    }
}

/// Limits and timeouts of a listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Simultaneous client connections, upgraded ones (WebSockets) included;
    /// past it, new ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Simultaneous connections from one client: an IPv4 address, or an
    /// IPv6 /64 (one host usually holds a whole /64). Past it, a new
    /// connection from that client is closed as soon as it is accepted,
    /// and counted, so that one client cannot take the whole
    /// `max_connections` budget.
    pub max_connections_per_ip: usize,
    /// Time a client has to send a complete request head; on HTTP/1.1 it also
    /// bounds how long a keep-alive connection may wait for its next request.
    pub header_read_timeout: Duration,
    /// A connection is closed when, for this long, no request started and
    /// no byte moved while one was open. HTTP/2 PINGs on a connection with
    /// no request open do not count: they are the server's own.
    pub idle_timeout: Duration,
    /// A connection older than this is asked to close: HTTP/2 gets GOAWAY
    /// and finishes its open streams, HTTP/1.1 finishes the response in
    /// flight with `Connection: close`. Never cut mid-response.
    pub max_connection_age: Duration,
    /// An upgraded connection (WebSocket) on which no byte moves either way
    /// for this long is closed (HAProxy's `timeout tunnel`).
    pub tunnel_idle_timeout: Duration,
    /// How often HTTP/2 connections are PINGed, to find dead peers. Not a
    /// configuration key: tests set it to see that PINGs do not keep an
    /// idle connection open.
    pub h2_keep_alive_interval: Duration,
    /// Largest request head accepted (HTTP/1.1; at least 8192); larger ones get 431.
    pub max_header_bytes: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_connection_age: Duration::from_secs(3600),
            tunnel_idle_timeout: Duration::from_secs(3600),
            h2_keep_alive_interval: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// hyper's HTTP/1 parser refuses buffers below this size.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Serves `proxy` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish for up to `shutdown_grace`, and
/// returns. Upgraded connections (WebSockets) are closed when the drain
/// begins: they would not end on their own within the grace.
pub async fn run<L: Listener>(
    listener: L,
    proxy: Arc<Proxy>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_with(listener, proxy, config, None, shutdown).await
}

/// As [`run`], terminating TLS on every connection first. A handshake that
/// does not finish within `header_read_timeout` is dropped.
pub async fn run_tls<L: Listener>(
    listener: L,
    proxy: Arc<Proxy>,
    config: ServerConfig,
    tls: TlsListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_with(listener, proxy, config, Some(tls), shutdown).await
}

async fn run_with<L: Listener>(
    listener: L,
    proxy: Arc<Proxy>,
    config: ServerConfig,
    tls: Option<TlsListener>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BYTES))
        .keep_alive(true);
    builder
        .http2()
        // WebSockets over HTTP/2 (RFC 8441): browsers open them on the
        // connection they already have when the server offers it.
        .enable_connect_protocol()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(config.h2_keep_alive_interval));
    let builder = Arc::new(builder);

    let max = config.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let per_client = PerClient::new(config.max_connections_per_ip);
    let (drain_tx, drain_rx) = watch::channel(false);
    let timeouts = Timeouts {
        idle: config.idle_timeout,
        max_age: config.max_connection_age,
    };
    tokio::pin!(shutdown);

    while let Some((permit, stream, remote)) =
        accept_permitted(&listener, &permits, shutdown.as_mut(), "gateway").await
    {
        let Some(client) = per_client.acquire(remote.ip()) else {
            // Closed at once, its permit given back: left unanswered it
            // would hold a place that other clients are waiting for.
            proxy.metrics().connection_refused_per_ip();
            tracing::debug!(%remote, "connection refused: the client has max_connections_per_ip open");
            drop(stream);
            continue;
        };
        L::prepare(&stream);
        let proxy = Arc::clone(&proxy);
        let builder = Arc::clone(&builder);
        let drain = drain_rx.clone();
        let tunnel = TunnelLimits {
            idle_timeout: config.tunnel_idle_timeout,
            drain: drain_rx.clone(),
        };
        let handshake_timeout = config.header_read_timeout;
        let tls = tls.clone();
        tokio::spawn(async move {
            // Counted as open once it is served (after its TLS handshake),
            // for as long as it or the tunnel it becomes is open.
            let lease = |metrics: &Arc<GatewayMetrics>| {
                Some(Arc::new(ConnLease::new(
                    permit,
                    client,
                    Arc::clone(metrics),
                    tunnel,
                )))
            };
            match tls {
                None => {
                    let lease = lease(proxy.metrics());
                    let conn = ConnInfo {
                        remote,
                        sni: None,
                        lease,
                    };
                    serve_connection(stream, conn, proxy, &builder, drain, timeouts).await;
                }
                Some(tls) => {
                    let accepted =
                        tokio::time::timeout(handshake_timeout, tls.acceptor.accept(stream)).await;
                    match accepted {
                        Ok(Ok(certs::Accepted::Challenge)) => {
                            tracing::debug!(%remote, "ACME TLS-ALPN-01 validation answered");
                        }
                        Ok(Ok(certs::Accepted::Tls(stream))) => {
                            let sni = stream.get_ref().1.server_name().map(Arc::from);
                            proxy.count_tls_handshake(true);
                            let lease = lease(proxy.metrics());
                            let conn = ConnInfo { remote, sni, lease };
                            serve_connection(stream, conn, proxy, &builder, drain, timeouts).await;
                        }
                        Ok(Err(e)) => {
                            proxy.count_tls_handshake(false);
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            proxy.count_tls_handshake(false);
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }

    drop(listener);
    let _ = drain_tx.send(true);
    let max_u32 = u32::try_from(max).unwrap_or(u32::MAX);
    match tokio::time::timeout(config.shutdown_grace, permits.acquire_many(max_u32)).await {
        Ok(_) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            open = max - permits.available_permits(),
            grace_secs = config.shutdown_grace.as_secs(),
            "shutdown grace period over; closing remaining connections"
        ),
    }
    Ok(())
}

/// The timeouts a connection task enforces itself.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    idle: Duration,
    max_age: Duration,
}

/// A client connection as its requests see it: what the proxy is told about
/// it, and its open requests, for the idle check.
struct Conn {
    info: ConnInfo,
    requests: Requests,
}

/// A connection's requests, as the idle check counts them. A few atomic
/// operations per request on the connection's own counters.
#[derive(Default)]
struct Requests {
    /// Requests whose response has not ended (or been dropped) yet.
    open: AtomicUsize,
    /// A request started since the idle check last looked.
    started: AtomicBool,
}

impl Requests {
    /// Whether the connection did anything since the last look: a request
    /// started, or bytes moved while one was open. Bytes with no request
    /// open are the server's own HTTP/2 PINGs and their answers, and a
    /// connection that has only those is idle.
    fn busy(&self, bytes_moved: bool) -> bool {
        let started = self.started.swap(false, Ordering::Relaxed);
        started || (bytes_moved && self.open.load(Ordering::Relaxed) > 0)
    }
}

/// One open request of a connection; the count goes down when its response
/// body ends or is dropped, whichever way the request ended.
struct OpenRequest(Arc<Conn>);

impl OpenRequest {
    fn start(conn: Arc<Conn>) -> OpenRequest {
        conn.requests.open.fetch_add(1, Ordering::Relaxed);
        conn.requests.started.store(true, Ordering::Relaxed);
        OpenRequest(conn)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.requests.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body as served: the proxy's, with its request counted open
/// until the body is over.
struct ServedBody {
    body: ProxyBody,
    _open: OpenRequest,
}

impl Body for ServedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The next connection, once one of `permits` is free: past the cap,
/// connections wait unaccepted in the kernel's queue rather than take
/// memory here. `None` once `shutdown` resolves (or the permits are
/// closed). A failed accept (out of file descriptors and the like) backs
/// off rather than spins, logged with `listener` naming it, and the
/// connections already open are served on. The control plane's API
/// listener accepts the same way.
pub async fn accept_permitted<L: Listener, F: Future<Output = ()>>(
    listener: &L,
    permits: &Arc<Semaphore>,
    mut shutdown: Pin<&mut F>,
    listener_name: &str,
) -> Option<(
    tokio::sync::OwnedSemaphorePermit,
    L::Stream,
    std::net::SocketAddr,
)> {
    let permit = tokio::select! {
        p = Arc::clone(permits).acquire_owned() => p.ok()?,
        _ = &mut shutdown => return None,
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, remote)) => return Some((permit, stream, remote)),
                Err(e) => {
                    tracing::warn!(listener = listener_name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => return None,
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    conn_info: ConnInfo,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    mut drain: watch::Receiver<bool>,
    timeouts: Timeouts,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = conn_info.remote;
    let conn = Arc::new(Conn {
        info: conn_info,
        requests: Requests::default(),
    });
    let active = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(IdleTracked {
        io: stream,
        active: Arc::clone(&active),
    });
    let served = Arc::clone(&conn);
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        let open = OpenRequest::start(Arc::clone(&served));
        async move {
            let resp = proxy.handle_conn(req, &open.0.info).await;
            Ok::<_, Infallible>(resp.map(|body| ServedBody { body, _open: open }))
        }
    });
    let served = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(served);

    // The idle check ticks four times per timeout; a connection is idle once
    // four ticks in a row saw it do nothing (`Requests::busy`).
    let tick = (timeouts.idle / 4).max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    let mut quiet_ticks = 0u32;
    let aged = tokio::time::sleep(timeouts.max_age);
    tokio::pin!(aged);
    let mut old = false;
    let mut draining = *drain.borrow();
    if draining {
        served.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            res = served.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() || *drain.borrow() {
                    draining = true;
                    served.as_mut().graceful_shutdown();
                }
            }
            _ = &mut aged, if !old => {
                // GOAWAY on HTTP/2, `Connection: close` on the HTTP/1.1
                // response in flight: what is open finishes, nothing new
                // starts (nginx's `keepalive_time`, Envoy's
                // `max_connection_duration`).
                old = true;
                tracing::debug!(%remote, "connection reached its maximum age; closing once its requests are done");
                served.as_mut().graceful_shutdown();
            }
            _ = ticker.tick() => {
                if conn.requests.busy(active.swap(false, Ordering::Relaxed)) {
                    quiet_ticks = 0;
                } else {
                    quiet_ticks += 1;
                    if quiet_ticks == 4 {
                        tracing::debug!(%remote, "closing idle connection");
                        served.as_mut().graceful_shutdown();
                    } else if quiet_ticks >= 8 {
                        // It did not close gracefully within another timeout.
                        return;
                    }
                }
            }
        }
    }
}

/// A TCP stream that flags whether any byte moved since the idle check last
/// looked. The flag belongs to one connection, so setting it costs no sharing.
struct IdleTracked<S> {
    io: S,
    active: Arc<AtomicBool>,
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if poll.is_ready() {
            self.active.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if poll.is_ready() {
            self.active.store(true, Ordering::Relaxed);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if poll.is_ready() {
            self.active.store(true, Ordering::Relaxed);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
