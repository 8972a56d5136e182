//! The origin every target forwards to.
//!
//! It lives inside the harness process, on its own tokio runtime, so that no
//! third-party server's quirks leak into the comparison: all three targets end
//! at the very same code. It counts requests and accepted connections, which
//! lets the harness prove that a proxy really forwarded what wrk counted and
//! see how well it reuses upstream connections.

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
    counters: Arc<Counters>,
}

impl Origin {
    /// Binds 127.0.0.1:0 and serves on a runtime of `threads` workers.
    pub fn start(threads: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-origin")
            .enable_all()
            .build()
            .context("building the origin's tokio runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("binding the origin to 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("reading the origin's address")?;
        let counters = Arc::new(Counters::default());
        runtime.spawn(accept_loop(listener, Arc::clone(&counters)));
        Ok(Self {
            runtime,
            addr,
            counters,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
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

async fn accept_loop(listener: TcpListener, counters: Arc<Counters>) {
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
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok::<_, Infallible>(response()))
            });
            // Errors here are clients resetting at the end of a wrk run: normal.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn response() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(&BODY)));
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
}
