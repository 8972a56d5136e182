//! Test harness: a real hyper origin, the real gateway server on port 0, and
//! small client helpers. Nothing here is mocked.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway::{
    Proxy, RouteHandle, RouteSpec, RouteTarget, ServerConfig, TableSettings, Upstream,
    UpstreamClient, UpstreamConfig,
};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

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

/// A real HTTP origin. Paths:
/// - `/slow?ms=N`: waits N ms, then echoes;
/// - `/big?n=N`: N bytes of `pattern`, in 16 KiB chunks;
/// - `/echo-body`: the request body streamed back;
/// - `/stream`: sends `first`, waits for `release`, then sends `last`;
/// - `/hop`: a response carrying hop-by-hop headers;
/// - `/ws`: a WebSocket echo peer;
/// - anything else: JSON with the origin's name, method, path, headers,
///   body length and digest.
pub struct Origin {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub requests: Arc<AtomicUsize>,
    pub release: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn start(name: &'static str) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (r2, rel2) = (requests.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r3, rel3) = (r2.clone(), rel2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        r3.fetch_add(1, Ordering::SeqCst);
                        origin_handle(name, req, rel3.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin {
            addr,
            name,
            requests,
            release,
            task,
        }
    }
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

async fn origin_handle(
    name: &'static str,
    mut req: Request<Incoming>,
    release: Arc<Notify>,
) -> Result<Response<OriginBody>, Infallible> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                return Ok(Response::builder()
                    .status(400)
                    .body(full("no key"))
                    .unwrap());
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
            return Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
                .body(full(""))
                .unwrap());
        }
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
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                release.notified().await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"last")))).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            });
            return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
        }
        "/hop" => {
            return Ok(Response::builder()
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("x-kept", "yes")
                .body(full("hop"))
                .unwrap());
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms"))).await;
        }
        _ => {}
    }
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
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(full(v.to_string()))
        .unwrap())
}

fn unreachable_infallible() -> Infallible {
    panic!("origin: request body error")
}

pub fn route(id: &str, labels: &[&str], slugs: &[&str], upstream: &str) -> RouteSpec {
    RouteSpec {
        id: id.into(),
        hosts: vec![],
        labels: labels.iter().map(|s| s.to_string()).collect(),
        slugs: slugs.iter().map(|s| s.to_string()).collect(),
        target: RouteTarget::Upstream(Upstream::parse(upstream).unwrap()),
        strip_prefix: false,
        rewrite_host: false,
        paused: false,
        public: true,
        access: None,
        inactive: false,
        tls_verify: true,
    }
}

pub fn settings() -> TableSettings {
    TableSettings {
        base_domains: vec!["localhost".into(), "sessions.test".into()],
        portal_host: Some("portal.test".into()),
    }
}

/// The real gateway server on 127.0.0.1:0.
pub struct Gateway {
    pub addr: SocketAddr,
    pub routes: RouteHandle,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Gateway {
    pub async fn start(specs: Vec<RouteSpec>) -> Gateway {
        Self::start_with(specs, ServerConfig::default(), UpstreamConfig::default()).await
    }

    pub async fn start_with(
        specs: Vec<RouteSpec>,
        server: ServerConfig,
        upstream: UpstreamConfig,
    ) -> Gateway {
        let routes = RouteHandle::new();
        routes.publish(&settings(), specs).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Arc::new(Proxy::new(
            routes.clone(),
            UpstreamClient::new(upstream),
            "http",
        ));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(gateway::run(listener, proxy, server, async {
            let _ = rx.await;
        }));
        Gateway {
            addr,
            routes,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Signals shutdown (what SIGTERM does in the binary).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends a request with an explicit Host header and collects the answer.
pub async fn send(
    c: &TestClient,
    gw: &Gateway,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut b = Request::builder()
        .method(method)
        .uri(gw.url(path))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body failed")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn get(c: &TestClient, gw: &Gateway, host: &str, path: &str) -> Answer {
    send(c, gw, "GET", host, path, &[], vec![]).await
}

/// Polls `f` until it is true or the deadline passes.
pub async fn eventually(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
