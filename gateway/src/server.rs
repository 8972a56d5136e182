//! The accept loop: connection limit, HTTP/1.1 and h2c on one listener (or
//! TLS with ALPN `h2`/`http/1.1`), header-read and idle timeouts, and
//! graceful shutdown.
//!
//! The listener is handed in, so tests run on `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::proxy::{ConnInfo, Proxy};

/// TLS termination for a listener: the rustls configuration (certificates,
/// versions, suites, ALPN, resumption) comes from the `certs` crate.
#[derive(Clone)]
pub struct TlsListener {
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").finish_non_exhaustive()
    }
}

/// Limits and timeouts of a listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Simultaneous client connections; past it, new ones wait in the kernel's
    /// accept queue.
    pub max_connections: usize,
    /// Time a client has to send a complete request head; on HTTP/1.1 it also
    /// bounds how long a keep-alive connection may wait for its next request.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head accepted (HTTP/1.1; at least 8192); larger ones get 431.
    pub max_header_bytes: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// hyper's HTTP/1 parser refuses buffers below this size.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Serves `proxy` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish for up to `shutdown_grace`, and
/// returns. Upgraded connections (WebSockets) are not waited for.
pub async fn run(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_with(listener, proxy, config, None, shutdown).await
}

/// As [`run`], terminating TLS on every connection first. A handshake that
/// does not finish within `header_read_timeout` is dropped.
pub async fn run_tls(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: ServerConfig,
    tls: TlsListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_with(listener, proxy, config, Some(tls), shutdown).await
}

async fn run_with(
    listener: TcpListener,
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
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(60)));
    let builder = Arc::new(builder);

    let max = config.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of
                    // spinning, and keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = Arc::clone(&proxy);
        let builder = Arc::clone(&builder);
        let drain = drain_rx.clone();
        let idle = config.idle_timeout;
        let handshake_timeout = config.header_read_timeout;
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let conn = ConnInfo { remote, sni: None };
                    serve_connection(stream, conn, proxy, &builder, drain, idle).await;
                }
                Some(tls) => {
                    let accepted =
                        tokio::time::timeout(handshake_timeout, tls.acceptor.accept(stream)).await;
                    match accepted {
                        Ok(Ok(stream)) => {
                            let sni = stream.get_ref().1.server_name().map(Arc::from);
                            proxy.count_tls_handshake(true);
                            let conn = ConnInfo { remote, sni };
                            serve_connection(stream, conn, proxy, &builder, drain, idle).await;
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
            drop(permit);
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

async fn serve_connection<S>(
    stream: S,
    conn_info: ConnInfo,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    mut drain: watch::Receiver<bool>,
    idle_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = conn_info.remote;
    let conn_info = Arc::new(conn_info);
    let metrics = Arc::clone(proxy.metrics());
    metrics.connection_opened();
    let _open = OnDrop(move || metrics.connection_closed());
    let active = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(IdleTracked {
        io: stream,
        active: Arc::clone(&active),
    });
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        let conn_info = Arc::clone(&conn_info);
        async move { Ok::<_, Infallible>(proxy.handle_conn(req, &conn_info).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    // The idle check ticks four times per timeout; a connection is idle once
    // four ticks in a row saw no byte move.
    let tick = (idle_timeout / 4).max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    let mut quiet_ticks = 0u32;
    let mut draining = *drain.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() || *drain.borrow() {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = ticker.tick() => {
                if active.swap(false, Ordering::Relaxed) {
                    quiet_ticks = 0;
                } else {
                    quiet_ticks += 1;
                    if quiet_ticks == 4 {
                        tracing::debug!(%remote, "closing idle connection");
                        conn.as_mut().graceful_shutdown();
                    } else if quiet_ticks >= 8 {
                        // It did not close gracefully within another timeout.
                        return;
                    }
                }
            }
        }
    }
}

/// Runs a closure when dropped: the connection gauge goes down however the
/// connection ends.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
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
