//! Test harness: the real gateway server on port 0 and a hyper client.
//! The origins, route specs and waiting are testkit's. Nothing here is
//! mocked.
// Each test binary (`proxy`, `hostile`, `connections`) uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gateway::metrics::GatewayMetrics;
use gateway::{Proxy, RouteHandle, RouteSpec, ServerConfig, UpstreamClient, UpstreamConfig};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use testkit::routes::settings;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The real gateway server on 127.0.0.1:0.
pub struct Gateway {
    pub addr: SocketAddr,
    pub routes: RouteHandle,
    /// What the server records: its `render` is the gateway's part of `/metrics`.
    pub metrics: Arc<GatewayMetrics>,
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
        Self::start_configured(specs, server, upstream, |p| p).await
    }

    /// As [`start`](Self::start), with the proxy set up further by
    /// `configure` (browser access, trusted proxies).
    pub async fn start_proxy(
        specs: Vec<RouteSpec>,
        configure: impl FnOnce(Proxy) -> Proxy,
    ) -> Gateway {
        Self::start_configured(
            specs,
            ServerConfig::default(),
            UpstreamConfig::default(),
            configure,
        )
        .await
    }

    async fn start_configured(
        specs: Vec<RouteSpec>,
        server: ServerConfig,
        upstream: UpstreamConfig,
        configure: impl FnOnce(Proxy) -> Proxy,
    ) -> Gateway {
        let routes = RouteHandle::new();
        routes.publish(&settings(), specs).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(GatewayMetrics::new());
        let proxy = Arc::new(configure(
            Proxy::new(routes.clone(), UpstreamClient::new(upstream), "http")
                .with_metrics(Arc::clone(&metrics)),
        ));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(gateway::run(listener, proxy, server, async {
            let _ = rx.await;
        }));
        Gateway {
            addr,
            routes,
            metrics,
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

    /// The value of the gateway's metric sample `series` (name and labels,
    /// as rendered), or `None` if it is not there.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let mut text = String::new();
        self.metrics.render(&mut text);
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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

/// An HTTP/2 connection with prior knowledge (h2c) to the gateway: what a
/// browser's HTTP/2 looks like once TLS is off.
pub async fn h2c(gw: &Gateway) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

pub async fn get(c: &TestClient, gw: &Gateway, host: &str, path: &str) -> Answer {
    send(c, gw, "GET", host, path, &[], vec![]).await
}

/// Reads `s` until the server closes it, within `limit`: everything the
/// server sent. Panics, naming `what`, if it is not closed by then.
pub async fn read_to_close(s: &mut TcpStream, limit: std::time::Duration, what: &str) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    String::from_utf8_lossy(&out).into_owned()
}

/// The signing key of the tests that need browser access: the gateway
/// verifies with it, and the tests sign their browsers' cookies with it.
pub fn keys() -> gateway::access::KeyRing {
    use gateway::access::{KeyRing, SigningKey};
    KeyRing::new(SigningKey::new("k1", &[7; 32]).unwrap(), None)
}

/// A valid cookie value for `user` on `session`, for an hour.
pub fn signed(session: &str, user: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    keys().sign(session, user, now.as_secs() + 3600).unwrap()
}
