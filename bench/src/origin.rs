//! The origin every target forwards to.
//!
//! It lives inside the harness process, on its own tokio runtime, so that no
//! third-party server's quirks leak into the comparison: all targets end at
//! the very same code. It counts requests and accepted connections, which
//! lets the harness prove that a proxy really forwarded what wrk counted and
//! see how well it reuses upstream connections.
//!
//! `GET /1mib` answers [`BIG_BODY_LEN`] bytes (the `body-1mib` scenario);
//! every other path the 128-byte [`BODY`]. It listens on two ports that
//! serve alike, so that the `churn` scenario can move a session's upstream
//! to an equivalent address without changing what is served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// Size of every response body: small enough that the per-request cost of
/// the proxy dominates, not copying.
pub const BODY_LEN: usize = 128;

/// The response body. It starts with a marker so that the readiness probe can
/// tell the origin's answer apart from a proxy's own 200 page.
pub static BODY: [u8; BODY_LEN] = make_body();

/// The marker that opens [`BODY`].
pub const MARKER: &[u8] = b"sessiongate-bench-origin ";

/// The path that answers [`BIG_BODY_LEN`] bytes.
pub const BIG_PATH: &str = "/1mib";

/// Size of the large response: big enough that copying and flow control,
/// not per-request work, decide the proxy's cost.
pub const BIG_BODY_LEN: usize = 1 << 20;

const fn make_body() -> [u8; BODY_LEN] {
    let mut out = [b'x'; BODY_LEN];
    let mut i = 0;
    while i < MARKER.len() {
        out[i] = MARKER[i];
        i += 1;
    }
    out[BODY_LEN - 1] = b'\n';
    out
}

/// Monotonic counters read before and after each wrk run.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    connections: AtomicU64,
}

/// A snapshot of the origin's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct OriginCounts {
    pub requests: u64,
    pub connections: u64,
}

/// The running origin. Dropping it shuts its runtime down.
pub struct Origin {
    runtime: Runtime,
    addr: SocketAddr,
    alt_addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Origin {
    /// Binds two listeners on 127.0.0.1:0 and serves both on a runtime of
    /// `threads` workers.
    pub fn start(threads: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-origin")
            .enable_all()
            .build()
            .context("building the origin's tokio runtime")?;
        let counters = Arc::new(Counters::default());
        // One copy of the large body, shared by every response (Bytes clones
        // are reference counts).
        let big = Bytes::from(big_body());
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let listener = runtime
                .block_on(TcpListener::bind("127.0.0.1:0"))
                .context("binding the origin to 127.0.0.1:0")?;
            addrs.push(
                listener
                    .local_addr()
                    .context("reading the origin's address")?,
            );
            runtime.spawn(accept_loop(listener, Arc::clone(&counters), big.clone()));
        }
        Ok(Self {
            runtime,
            addr: addrs[0],
            alt_addr: addrs[1],
            counters,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A second address serving exactly what [`Origin::addr`] serves.
    pub fn alt_addr(&self) -> SocketAddr {
        self.alt_addr
    }

    /// The runtime, so that the harness can park its signal watcher there
    /// instead of building a second one.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn counts(&self) -> OriginCounts {
        OriginCounts {
            requests: self.counters.requests.load(Ordering::Relaxed),
            connections: self.counters.connections.load(Ordering::Relaxed),
        }
    }
}

async fn accept_loop(listener: TcpListener, counters: Arc<Counters>, big: Bytes) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Typically EMFILE under a too-large -c: back off rather than spin.
                eprintln!("origin: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small responses: Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::clone(&counters);
        let big = big.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                let body = if req.uri().path() == BIG_PATH {
                    big.clone()
                } else {
                    Bytes::from_static(&BODY)
                };
                std::future::ready(Ok::<_, Infallible>(response(body)))
            });
            // Errors here are clients resetting at the end of a wrk run: normal.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The large body: the marker, then a repeating pattern, ending in a newline.
fn big_body() -> Vec<u8> {
    let mut out: Vec<u8> = (0..BIG_BODY_LEN)
        .map(|i| b"0123456789abcdef"[i % 16])
        .collect();
    out[..MARKER.len()].copy_from_slice(MARKER);
    out[BIG_BODY_LEN - 1] = b'\n';
    out
}

fn response(body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    // hyper derives Content-Length from the exact body size; the type is set
    // so that proxies have nothing to sniff.
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_marker_and_size() {
        assert_eq!(BODY.len(), 128);
        assert!(BODY.starts_with(MARKER));
        assert_eq!(BODY[BODY_LEN - 1], b'\n');
    }

    #[test]
    fn big_body_has_marker_and_size() {
        let big = big_body();
        assert_eq!(big.len(), 1 << 20);
        assert!(big.starts_with(MARKER));
        assert_eq!(big.last(), Some(&b'\n'));
    }
}
