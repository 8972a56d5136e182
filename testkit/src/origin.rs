//! The HTTP origin: what every test route and every benchmark target
//! forwards to.
//!
//! One server, two services, chosen once per origin and never per request:
//!
//! - [`Origin::bench`], the benchmark's: `GET /1mib` answers
//!   [`BIG_BODY_LEN`] bytes (the `body-1mib` scenario), every other path the
//!   128-byte [`BODY`]. Nothing else runs per request but a counter, so that
//!   the ratios to nginx measure the proxies, not the origin. It runs on a
//!   runtime of its own, so that no third-party server's quirks leak into
//!   the comparison: all targets end at the very same code.
//! - [`Origin::start`] and [`Origin::builder`], the tests': the special
//!   paths below, and for any other path the origin's [`Reply`].
//!
//! The tests' paths:
//! - `/slow?ms=N`: waits N ms, then answers as any other path;
//! - `/big?n=N`: N bytes of [`pattern`], in 16 KiB chunks;
//! - `/echo-body`: the request body streamed back;
//! - `/stream`: sends `first`, waits for [`Origin::release`], then sends `last`
//!   (never released, it is an endless response); `/stream?sized` says
//!   `Content-Length: 9` up front, a short response that is merely slow;
//! - `/hold`: waits for [`Origin::release`] before its response head, then
//!   answers as any other path (a request the upstream is still working on);
//! - `/hop`: a response carrying hop-by-hop headers;
//! - `/set-cookie`: each `X-Set-Cookie` request header comes back as a
//!   `Set-Cookie`, in order: what an app would set, chosen by the test;
//! - `/ws`: the WebSocket echo of [`crate::ws`].
//!
//! Every origin counts requests and accepted connections, which lets the
//! benchmark prove that a proxy really forwarded what wrk counted and see
//! how well it reuses upstream connections, and lets a test see that a
//! request never reached the origin. It listens on two ports that serve
//! alike, so that the benchmark's `churn` scenario can move a session's
//! upstream to an equivalent address without changing what is served.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use crate::listen::Serving;
use crate::ws::{self, EchoCounters};

/// Size of the benchmark's response body: small enough that the per-request
/// cost of the proxy dominates, not copying.
pub const BODY_LEN: usize = 128;

/// The benchmark's response body. It starts with a marker so that the
/// readiness probe can tell the origin's answer apart from a proxy's own 200
/// page.
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

/// The test origin's body type: each path streams differently.
pub type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// 64-bit FNV-1a: a body digest both sides can compute without a crypto crate.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Deterministic test payload of `n` bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// What a test origin answers on any path that is not one of its special
/// ones. Each is what some test compares the body with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// JSON with the origin's name, the method, path and query, the headers,
    /// and the body's length and [`fnv`] digest: what the proxy changed.
    Json,
    /// The origin's name as plain text: which upstream answered.
    Name,
    /// The name and the HTTP version it was spoken to in (`good HTTP/2.0`):
    /// which upstream, and whether re-encryption negotiated HTTP/2.
    NameAndVersion,
    /// `path=<path and query>\ncookie=<Cookie headers joined by " | ", or ->\n`:
    /// what a private route let through to the app. Bytes that are not
    /// UTF-8 show as U+FFFD; UTF-8 shows as it is.
    PathAndCookie,
    /// This HTML page (`text/html`): what a browser test loads, its script
    /// talking to the origin's other paths (`/ws`, the WebSocket echo).
    Page(&'static str),
}

/// A snapshot of the origin's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct OriginCounts {
    pub requests: u64,
    pub connections: u64,
}

/// A running origin. Dropping it stops accepting; connections already
/// accepted run on until their runtime ends (the test's, at its end; the
/// benchmark's own, dropped with it).
pub struct Origin {
    pub addr: SocketAddr,
    /// A second address serving exactly what `addr` serves.
    pub alt_addr: SocketAddr,
    pub name: &'static str,
    /// Requests received, on either address.
    pub requests: Arc<AtomicU64>,
    /// Connections accepted, on either address.
    pub connections: Arc<AtomicU64>,
    /// Lets `/stream` send its last chunk, and `/hold` its answer.
    pub release: Arc<Notify>,
    serving: Serving,
}

/// How a test origin is set up; [`Origin::builder`].
pub struct OriginBuilder {
    name: &'static str,
    reply: Reply,
    tls: Option<TlsAcceptor>,
}

impl OriginBuilder {
    pub fn reply(mut self, reply: Reply) -> Self {
        self.reply = reply;
        self
    }

    /// Serves HTTPS with the PEM pair `cert` (leaf first) and `key`,
    /// offering HTTP/2 and HTTP/1.1 by ALPN, as an `https://` upstream does.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some(acceptor(cert, key));
        self
    }

    /// Starts serving on the caller's runtime. Panics if it cannot bind: a
    /// test without its origin cannot run.
    pub fn start(self) -> Origin {
        let mut serving = Serving::on_current_runtime();
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Notify::new());
        let shared = Arc::new(TestOrigin {
            name: self.name,
            reply: self.reply,
            requests: Arc::clone(&requests),
            release: Arc::clone(&release),
            websockets: Arc::default(),
        });
        let mut addrs = [None, None];
        for addr in &mut addrs {
            let (origin, tls) = (Arc::clone(&shared), self.tls.clone());
            let bound = serving.listen(Arc::clone(&connections), move |stream| {
                serve_test(Arc::clone(&origin), tls.clone(), stream)
            });
            *addr = Some(bound.expect("origin on 127.0.0.1:0"));
        }
        let [Some(addr), Some(alt_addr)] = addrs else {
            unreachable!("both listeners are bound above")
        };
        Origin {
            addr,
            alt_addr,
            name: self.name,
            requests,
            connections,
            release,
            serving,
        }
    }
}

impl Origin {
    /// A test origin answering [`Reply::Json`] on the caller's runtime.
    pub fn start(name: &'static str) -> Origin {
        Origin::builder(name).start()
    }

    /// A test origin answering the origin's name, plain text: [`Reply::Name`].
    pub fn named(name: &'static str) -> Origin {
        Origin::builder(name).reply(Reply::Name).start()
    }

    pub fn builder(name: &'static str) -> OriginBuilder {
        OriginBuilder {
            name,
            reply: Reply::Json,
            tls: None,
        }
    }

    /// The benchmark's origin: [`BODY`], or [`BIG_BODY_LEN`] bytes on
    /// [`BIG_PATH`], served on a runtime of its own with `threads` workers.
    /// Drop it outside any runtime.
    pub fn bench(threads: usize) -> io::Result<Origin> {
        let mut serving = Serving::on_own_runtime(threads, "bench-origin")?;
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        // One copy of the large body, shared by every response (Bytes clones
        // are reference counts).
        let big = Bytes::from(big_body());
        let mut addrs = Vec::with_capacity(2);
        for _ in 0..2 {
            let (requests, big) = (Arc::clone(&requests), big.clone());
            addrs.push(serving.listen(Arc::clone(&connections), move |stream| {
                serve_bench(Arc::clone(&requests), big.clone(), stream)
            })?);
        }
        Ok(Origin {
            addr: addrs[0],
            alt_addr: addrs[1],
            name: "bench",
            requests,
            connections,
            release: Arc::new(Notify::new()),
            serving,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counts(&self) -> OriginCounts {
        OriginCounts {
            requests: self.requests.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    /// The runtime the origin runs on, so that the benchmark can park its
    /// signal watcher there instead of building a second one.
    pub fn handle(&self) -> &Handle {
        self.serving.handle()
    }
}

/// One benchmark connection: a counter and a static body per request.
async fn serve_bench(requests: Arc<AtomicU64>, big: Bytes, stream: TcpStream) {
    let service = service_fn(move |req: Request<Incoming>| {
        requests.fetch_add(1, Ordering::Relaxed);
        let body = if req.uri().path() == BIG_PATH {
            big.clone()
        } else {
            Bytes::from_static(&BODY)
        };
        std::future::ready(Ok::<_, Infallible>(bench_response(body)))
    });
    // Errors here are clients resetting at the end of a wrk run: normal.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
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

fn bench_response(body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    // hyper derives Content-Length from the exact body size; the type is set
    // so that proxies have nothing to sniff.
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// What a test origin's connections share.
struct TestOrigin {
    name: &'static str,
    reply: Reply,
    requests: Arc<AtomicU64>,
    release: Arc<Notify>,
    websockets: Arc<EchoCounters>,
}

/// One test connection: HTTP/1.1 with upgrades, or over TLS whatever ALPN
/// chose.
async fn serve_test(origin: Arc<TestOrigin>, tls: Option<TlsAcceptor>, stream: TcpStream) {
    let service = service_fn(move |req| {
        origin.requests.fetch_add(1, Ordering::Relaxed);
        answer(Arc::clone(&origin), req)
    });
    match tls {
        None => {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
        Some(acceptor) => {
            if let Ok(stream) = acceptor.accept(stream).await {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            }
        }
    }
}

/// A rustls acceptor for the PEM pair, offering h2 and http/1.1.
fn acceptor(cert: &Path, key: &Path) -> TlsAcceptor {
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| panic!("{}: {e}", cert.display()))
        .map(|c| c.unwrap_or_else(|e| panic!("{}: {e}", cert.display())))
        .collect();
    let key =
        PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("a matching certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

fn full(b: impl Into<Bytes>) -> OriginBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn query_num(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn answer(
    origin: Arc<TestOrigin>,
    req: Request<Incoming>,
) -> Result<Response<OriginBody>, Infallible> {
    match req.uri().path() {
        "/ws" => return Ok(ws::upgrade(req, &origin.websockets).map(|b| b.boxed())),
        "/big" => {
            let n = query_num(&req, "n") as usize;
            let data = Bytes::from(pattern(n));
            let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..n)
                .step_by(16 * 1024)
                .map(|i| Ok(Frame::data(data.slice(i..(i + 16 * 1024).min(n)))))
                .collect();
            let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
            return Ok(Response::new(body));
        }
        "/echo-body" => {
            // Streams the request body back frame by frame, never collecting it.
            let body = req
                .into_body()
                .map_err(|_| unreachable_infallible())
                .boxed();
            return Ok(Response::new(body));
        }
        "/stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            let release = Arc::clone(&origin.release);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                release.notified().await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"last")))).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            });
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            if req.uri().query() == Some("sized") {
                // "first" + "last": hyper sends a streamed body with the
                // length it is given instead of chunking it.
                resp.headers_mut().insert(
                    header::CONTENT_LENGTH,
                    header::HeaderValue::from_static("9"),
                );
            }
            return Ok(resp);
        }
        "/hold" => origin.release.notified().await,
        "/hop" => {
            let mut resp = Response::new(full("hop"));
            let h = resp.headers_mut();
            h.insert("keep-alive", header::HeaderValue::from_static("timeout=5"));
            h.insert(
                "proxy-authenticate",
                header::HeaderValue::from_static("Basic"),
            );
            h.insert("x-kept", header::HeaderValue::from_static("yes"));
            return Ok(resp);
        }
        "/set-cookie" => {
            let mut resp = Response::new(full("set-cookie"));
            for v in req.headers().get_all("x-set-cookie") {
                resp.headers_mut().append(header::SET_COOKIE, v.clone());
            }
            return Ok(resp);
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms"))).await;
        }
        _ => {}
    }
    Ok(match origin.reply {
        Reply::Json => json_reply(origin.name, req).await,
        Reply::Name => Response::new(full(origin.name)),
        Reply::Page(html) => {
            let mut resp = Response::new(full(html));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        Reply::NameAndVersion => {
            Response::new(full(format!("{} {:?}", origin.name, req.version())))
        }
        Reply::PathAndCookie => {
            let cookie = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(" | ");
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let cookie = if cookie.is_empty() { "-" } else { &cookie };
            Response::new(full(format!("path={path}\ncookie={cookie}\n")))
        }
    })
}

async fn json_reply(name: &str, req: Request<Incoming>) -> Response<OriginBody> {
    let method = req.method().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.to_string(),
            serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
        );
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v = serde_json::json!({
        "origin": name, "method": method, "path": pq, "headers": headers,
        "body_len": body.len(), "body_fnv": fnv(&body),
    });
    let mut resp = Response::new(full(v.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn unreachable_infallible() -> Infallible {
    panic!("origin: request body error")
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
