//! The WebSocket echo peer: the tests' and the benchmark's (`ws-echo`).
//!
//! It accepts HTTP/1.1 WebSocket upgrades on any path and echoes every text
//! and binary message back as it came (text as text, binary as binary). A
//! plain request (no upgrade) is answered 200 with [`crate::origin::BODY`],
//! which starts with [`crate::origin::MARKER`], so the benchmark's readiness
//! probe works against this peer unchanged. The HTTP origin's `/ws` path is
//! the same echo (`upgrade`).
//!
//! It counts accepted TCP connections, completed upgrades and echoed
//! messages. A message is counted when it is read, before its echo is
//! written, so once a client has received an echo the peer has already
//! counted it: after a load run that ended without errors and waited for all
//! its echoes, the peer's message delta equals the client's echo count
//! exactly, and a proxy that answered by itself shows up as a shortfall.
//!
//! # Why hyper's upgrade and not `accept_hdr_async`
//!
//! `tokio_tungstenite::accept_hdr_async` on the raw `TcpStream` cannot answer
//! a plain `GET /` with a 200: tungstenite rejects a request without upgrade
//! headers before the callback runs, and the callback may only turn the
//! handshake into an error status. Serving both would mean peeking at and
//! parsing the request head ourselves. hyper is already the origins' HTTP
//! server, answers the probe with the same code path as the HTTP origin, and
//! handles the upgrade request like any proxy-facing server would. What it
//! usually costs, a boxed `Upgraded` stream with a dynamic call on every read
//! and write, is avoided: the upgraded connection is downcast back to the
//! `TcpStream` it was built on (plus any bytes hyper had already read past
//! the request head), so the per-message path is tungstenite on the bare
//! socket, exactly what `accept_hdr_async` would give.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::listen::Serving;
use crate::origin::BODY;

/// Read buffer per WebSocket. tungstenite allocates it eagerly (128 KiB by
/// default), which adds up over thousands of connections; echo messages are
/// small, and a larger one just takes more than one read.
const READ_BUFFER: usize = 16 * 1024;

/// Upgrades and messages, shared by a peer's connections.
#[derive(Default)]
pub(crate) struct EchoCounters {
    upgrades: AtomicU64,
    messages: AtomicU64,
}

/// A snapshot of the peer's counters (monotonic; take deltas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsCounts {
    /// TCP connections accepted (WebSockets and plain requests alike).
    pub connections: u64,
    /// Completed WebSocket upgrades (101 sent and the stream taken over).
    pub upgrades: u64,
    /// Text and binary messages echoed (control frames are not counted).
    pub messages: u64,
}

/// The running peer. Dropping it stops accepting; with a runtime of its own
/// ([`WsEcho::bench`]) it also closes every connection.
pub struct WsEcho {
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    counters: Arc<EchoCounters>,
    serving: Serving,
}

impl WsEcho {
    /// Binds `127.0.0.1:0` and serves on the caller's runtime. Panics if it
    /// cannot bind: a test without its peer cannot run.
    pub fn start() -> WsEcho {
        WsEcho::serve(Serving::on_current_runtime()).expect("WebSocket echo on 127.0.0.1:0")
    }

    /// Binds `127.0.0.1:0` and serves on a runtime of its own with `threads`
    /// workers, as the benchmark needs. Drop it outside any runtime.
    pub fn bench(threads: usize) -> io::Result<WsEcho> {
        WsEcho::serve(Serving::on_own_runtime(threads, "bench-ws-origin")?)
    }

    fn serve(mut serving: Serving) -> io::Result<WsEcho> {
        let connections = Arc::new(AtomicU64::new(0));
        let counters = Arc::new(EchoCounters::default());
        let shared = Arc::clone(&counters);
        let addr = serving.listen(Arc::clone(&connections), move |stream| {
            let counters = Arc::clone(&shared);
            async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    std::future::ready(Ok::<_, Infallible>(handle(req, &counters)))
                });
                // Errors here are clients going away mid-request: nothing to do.
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            }
        })?;
        Ok(WsEcho {
            addr,
            connections,
            counters,
            serving,
        })
    }

    pub fn counts(&self) -> WsCounts {
        WsCounts {
            connections: self.connections.load(Ordering::Relaxed),
            upgrades: self.counters.upgrades.load(Ordering::Relaxed),
            messages: self.counters.messages.load(Ordering::Relaxed),
        }
    }

    /// The runtime the peer runs on.
    pub fn handle(&self) -> &Handle {
        self.serving.handle()
    }
}

/// Resolves when the other side has ended the WebSocket (a Close frame, an
/// error, or the end of the stream); messages before that are dropped.
/// Callers bound it with a timeout that says how soon it must end.
pub async fn ended<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
    while let Some(m) = ws.next().await {
        match m {
            Err(_) => return,
            Ok(m) if m.is_close() => return,
            Ok(_) => {}
        }
    }
}

/// Answers one HTTP request: a WebSocket upgrade gets its 101 and an echo
/// task, anything else the HTTP origin's 200.
fn handle(req: Request<Incoming>, counters: &Arc<EchoCounters>) -> Response<Full<Bytes>> {
    if !wants_websocket(req.headers()) {
        return plain(StatusCode::OK, Bytes::from_static(&BODY));
    }
    upgrade(req, counters)
}

/// Answers a WebSocket handshake with its 101 and echoes on the upgraded
/// connection, or refuses a broken handshake (400, 405, 426).
pub(crate) fn upgrade(
    mut req: Request<Incoming>,
    counters: &Arc<EchoCounters>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, Bytes::new());
    }
    let key = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(key) => derive_accept_key(key.as_bytes()),
        None => return plain(StatusCode::BAD_REQUEST, Bytes::new()),
    };
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut resp = plain(StatusCode::UPGRADE_REQUIRED, Bytes::new());
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            header::HeaderValue::from_static("13"),
        );
        return resp;
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    let counters = Arc::clone(counters);
    tokio::spawn(async move {
        // Fails when the client goes away before the 101 is written.
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER));
        counters.upgrades.fetch_add(1, Ordering::Relaxed);
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let stream = parts.io.into_inner();
                let ws = WebSocketStream::from_partially_read(
                    stream,
                    parts.read_buf.to_vec(),
                    Role::Server,
                    config,
                )
                .await;
                echo(ws, &counters).await;
            }
            // A connection that is not a bare TcpStream: an HTTPS origin's.
            Err(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, config)
                        .await;
                echo(ws, &counters).await;
            }
        }
    });

    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        header::HeaderValue::from_str(&key).expect("base64 is a valid header value"),
    );
    resp
}

/// `Upgrade: websocket` with `upgrade` among the `Connection` tokens.
fn wants_websocket(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

/// A `text/plain` answer.
pub(crate) fn plain(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Echoes until the client closes or the connection fails. Whatever has
/// already arrived is echoed in one flush (pipelining clients get one write
/// per batch, not per message); a lone message is flushed at once.
async fn echo<S>(mut ws: WebSocketStream<S>, counters: &EchoCounters)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(item) = ws.next().await {
        let mut pending = false;
        let mut next = Some(item);
        while let Some(item) = next.take() {
            match item {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    counters.messages.fetch_add(1, Ordering::Relaxed);
                    if ws.feed(msg).await.is_err() {
                        return;
                    }
                    pending = true;
                }
                // Pings are answered and closes acknowledged by tungstenite
                // itself, on the next read or flush.
                Ok(_) => {}
                Err(_) => return,
            }
            // Only what is readable right now: a pending read ends the batch.
            next = ws.next().now_or_never().flatten();
        }
        if pending && ws.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use anyhow::Result;

    use super::*;
    use crate::origin::MARKER;

    fn get(addr: SocketAddr, extra: &str) -> Result<String> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: app.localhost\r\n{extra}Connection: close\r\n\r\n"
        )?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn plain_get_returns_the_marker() -> Result<()> {
        let origin = WsEcho::bench(1)?;
        let resp = get(origin.addr, "")?;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            resp.contains(std::str::from_utf8(MARKER)?),
            "no marker in {resp}"
        );
        let counts = origin.counts();
        assert_eq!(counts.connections, 1);
        assert_eq!(counts.upgrades, 0);
        assert_eq!(counts.messages, 0);
        Ok(())
    }

    #[test]
    fn broken_upgrades_are_refused() -> Result<()> {
        let origin = WsEcho::bench(1)?;
        // `Upgrade: websocket` without `upgrade` among the Connection tokens
        // is no upgrade request: the plain answer.
        let resp = get(
            origin.addr,
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        )?;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

        // An upgrade request without Sec-WebSocket-Key.
        let mut stream = std::net::TcpStream::connect(origin.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf)?;
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert_eq!(origin.counts().upgrades, 0);
        Ok(())
    }

    #[test]
    fn echoes_text_and_binary_and_counts() -> Result<()> {
        let origin = WsEcho::bench(2)?;
        let addr = origin.addr;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (mut ws, resp) =
                tokio_tungstenite::connect_async(format!("ws://{addr}/any/path?q=1")).await?;
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            ws.send(Message::text("hello")).await?;
            ws.send(Message::binary(vec![0u8, 1, 2, 255])).await?;
            ws.send(Message::Ping(Bytes::from_static(b"p"))).await?;
            assert_eq!(ws.next().await.transpose()?, Some(Message::text("hello")));
            assert_eq!(
                ws.next().await.transpose()?,
                Some(Message::binary(vec![0u8, 1, 2, 255]))
            );
            assert_eq!(
                ws.next().await.transpose()?,
                Some(Message::Pong(Bytes::from_static(b"p")))
            );
            ws.close(None).await?;
            // The close is acknowledged, then the stream ends.
            while let Some(msg) = ws.next().await {
                assert!(matches!(msg?, Message::Close(_)));
            }
            anyhow::Ok(())
        })?;
        let counts = origin.counts();
        assert_eq!(counts.connections, 1);
        assert_eq!(counts.upgrades, 1);
        assert_eq!(counts.messages, 2);
        Ok(())
    }
}
