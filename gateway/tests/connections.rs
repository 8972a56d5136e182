//! Hostile and careless clients against the real server on port 0, in front
//! of testkit's real origins (issue 15): connections that idle, age, upgrade
//! or pile up from one address must not escape the listener's limits, and a
//! revocation reaches a response still waiting for its upstream.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use gateway::{ServerConfig, UpstreamConfig};
use testkit::routes::route;
use testkit::{eventually, Origin, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Longer than any of the short timeouts these tests configure, by far: a
/// connection still open after this was never going to close.
const PATIENCE: Duration = Duration::from_secs(10);

async fn gateway_with(origin: &Origin, config: ServerConfig) -> Gateway {
    Gateway::start_with(
        vec![route("nb", &["nb"], &[], &origin.url())],
        config,
        UpstreamConfig::default(),
    )
    .await
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_despite_the_servers_pings() {
    let a = Origin::start("a");
    let gw = gateway_with(
        &a,
        ServerConfig {
            idle_timeout: Duration::from_millis(400),
            h2_keep_alive_interval: Duration::from_millis(100),
            ..ServerConfig::default()
        },
    )
    .await;
    // A client that opens a connection, answers what it must, and never
    // sends a request.
    let mut h2 = RawH2::connect(gw.addr).await;
    let mut goaway = false;
    let closed = tokio::time::timeout(PATIENCE, async {
        while let Some(f) = h2.next().await {
            goaway |= f.kind == GOAWAY;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "an h2 connection with no request is still open {PATIENCE:?} into a 400 ms idle timeout; \
         the server sent {} PINGs",
        h2.pings
    );
    assert!(
        h2.pings >= 2,
        "only {} PINGs: the test proves nothing",
        h2.pings
    );
    assert!(goaway, "closed without a GOAWAY");
}

#[tokio::test]
async fn an_h2_connection_past_its_max_age_gets_goaway_and_finishes_its_request() {
    let a = Origin::start("a");
    let gw = gateway_with(
        &a,
        ServerConfig {
            max_connection_age: Duration::from_millis(300),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut h2 = RawH2::connect(gw.addr).await;
    h2.get(1, "nb.localhost", "/hold").await;
    let reqs = a.requests.clone();
    eventually("the request to reach the origin", DEADLINE, || {
        reqs.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let goaway = tokio::time::timeout(PATIENCE, async {
        loop {
            match h2.next().await {
                Some(f) if f.kind == GOAWAY => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(
        goaway,
        Ok(true),
        "no GOAWAY {PATIENCE:?} into a 300 ms maximum connection age (Err: still open; false: closed)"
    );
    // The request in flight when the connection aged out completes.
    a.release.notify_one();
    let (mut status, mut body, mut ended) = (None, 0, false);
    let closed = tokio::time::timeout(PATIENCE, async {
        while let Some(f) = h2.next().await {
            assert!(
                !(f.kind == RST_STREAM && f.stream == 1),
                "the in-flight stream was reset"
            );
            if f.stream == 1 && f.kind == HEADERS {
                // RFC 7541 static table index 8 is `:status: 200`.
                status = f.payload.first().copied();
            }
            if f.stream == 1 && f.kind == DATA {
                body += f.payload.len();
                ended |= f.flags & END_STREAM != 0;
            }
        }
    })
    .await;
    assert_eq!(status, Some(0x88), "the in-flight request got no 200");
    assert!(body > 0 && ended, "the in-flight response was not complete");
    assert!(
        closed.is_ok(),
        "the aged connection stayed open after its last stream"
    );
}

#[tokio::test]
async fn an_http1_connection_past_its_max_age_closes_after_the_response_in_flight() {
    let a = Origin::start("a");
    let gw = gateway_with(
        &a,
        ServerConfig {
            max_connection_age: Duration::from_millis(200),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // The origin answers 1 s in, long after the connection's 200 ms.
    s.write_all(b"GET /slow?ms=1000 HTTP/1.1\r\nHost: nb.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
        "the response in flight when the connection aged out did not say Connection: close:\n{text}"
    );
    assert!(text.contains("/slow"), "the body is cut: {text}");
    assert!(
        read.is_ok(),
        "the aged connection stayed open after its response"
    );
}

#[tokio::test]
async fn a_websocket_counts_towards_max_connections_and_the_open_gauge() {
    let a = Origin::start("a");
    let gw = gateway_with(
        &a,
        ServerConfig {
            max_connections: 1,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut ws = websocket(&gw).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap(), "hi");

    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: nb.localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    // Not served while the WebSocket holds the only connection.
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "a second connection was served while a WebSocket held the only one of max_connections = 1"
    );
    assert_eq!(
        gw.metric("sessiongate_connections_open"),
        Some(1.0),
        "the open WebSocket is not an open connection"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let out = read_to_close(&mut second, PATIENCE, "the second connection").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn a_websocket_with_no_traffic_for_the_tunnel_idle_timeout_is_closed() {
    let a = Origin::start("a");
    let gw = gateway_with(
        &a,
        ServerConfig {
            tunnel_idle_timeout: Duration::from_millis(300),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut ws = websocket(&gw).await;
    // Traffic every 100 ms keeps it open well past the timeout.
    let mut every = tokio::time::interval(Duration::from_millis(100));
    for i in 0..10 {
        every.tick().await;
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echo = tokio::time::timeout(DEADLINE, ws.next()).await;
        assert!(
            matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text),
            "a busy WebSocket was closed: {echo:?}"
        );
    }
    // Then silence: the gateway closes it.
    let ended = tokio::time::timeout(PATIENCE, testkit::ws::ended(&mut ws)).await;
    assert!(
        ended.is_ok(),
        "a silent WebSocket is still open {PATIENCE:?} into a 300 ms tunnel idle timeout"
    );
}

#[tokio::test]
async fn one_client_address_gets_at_most_max_connections_per_ip() {
    let a = Origin::start("a");
    let gw = gateway_with(
        &a,
        ServerConfig {
            max_connections_per_ip: 2,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        assert!(keep_alive_get(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // A third from the same address is closed at once, unanswered.
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nHost: nb.localhost\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, third.read_to_end(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection of an address with max_connections_per_ip = 2 was served: {:?} {}",
        read,
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        gw.metric("sessiongate_connections_refused_total{reason=\"per_ip_limit\"}"),
        Some(1.0)
    );
    // A freed slot is taken again.
    drop(held.pop());
    let addr = gw.addr;
    let mut served = false;
    let end = tokio::time::Instant::now() + DEADLINE;
    while !served && tokio::time::Instant::now() < end {
        let mut s = TcpStream::connect(addr).await.unwrap();
        served = keep_alive_get(&mut s).await.starts_with("HTTP/1.1 200");
    }
    assert!(served, "the freed slot was never given to a new connection");
}

#[tokio::test]
async fn a_revocation_cuts_a_slow_response_of_known_length_on_http2_too() {
    let a = Origin::start("a");
    let gw = gateway_with(&a, ServerConfig::default()).await;
    let mut sender = h2c(&gw).await;
    // `Content-Length: 9`: 5 bytes now, the rest held back by the origin.
    let req = http::Request::get(format!(
        "http://nb.localhost:{}/stream?sized",
        gw.addr.port()
    ))
    .body(http_body_util::Full::new(bytes::Bytes::new()))
    .unwrap();
    let resp = sender.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(DEADLINE, http_body_util::BodyExt::frame(&mut body))
        .await
        .expect("the first chunk");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first");

    let state = std::sync::Arc::clone(&gw.routes.current().route("nb").unwrap().state);
    state.close_live();
    let next = tokio::time::timeout(
        Duration::from_secs(1),
        http_body_util::BodyExt::frame(&mut body),
    )
    .await;
    assert!(
        matches!(next, Ok(Some(Err(_)))),
        "a revoked h2 response waiting for its upstream was not reset within 1 s: {next:?}"
    );
}

/// A WebSocket through the gateway to the origin's echo (`/ws`).
async fn websocket(gw: &Gateway) -> WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async("ws://nb.localhost/ws", stream)
        .await
        .expect("handshake");
    ws
}

/// Sends `GET /` on a keep-alive connection and reads what comes back in
/// one read: the start of the response, or nothing if the server closed it.
async fn keep_alive_get(s: &mut TcpStream) -> String {
    if s.write_all(b"GET / HTTP/1.1\r\nHost: nb.localhost\r\n\r\n")
        .await
        .is_err()
    {
        return String::new();
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}

// HTTP/2 frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame as it came off the wire.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// An HTTP/2 client with prior knowledge (h2c), by hand, so that a test sees
/// every frame the server sends: it answers SETTINGS and PING as RFC 9113
/// requires of any client, counts the PINGs, and hands back the rest.
struct RawH2 {
    s: TcpStream,
    pings: usize,
}

impl RawH2 {
    async fn connect(addr: SocketAddr) -> RawH2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut h2 = RawH2 { s, pings: 0 };
        h2.send(SETTINGS, 0, 0, &[]).await;
        h2
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        // The server may have closed already; the next read says so.
        let _ = self.s.write_all(&frame).await;
    }

    /// `GET http://<authority><path>` on `stream`, with no body.
    async fn get(&mut self, stream: u32, authority: &str, path: &str) {
        // HPACK (RFC 7541): `:method: GET` and `:scheme: http` are static
        // entries 2 and 6; `:path` (4) and `:authority` (1) are literals
        // with an indexed name, not indexed, no Huffman.
        let mut block = vec![0x82, 0x86];
        for (name, value) in [(4u8, path), (1u8, authority)] {
            block.push(name);
            block.push(u8::try_from(value.len()).unwrap());
            block.extend_from_slice(value.as_bytes());
        }
        self.send(HEADERS, END_STREAM | END_HEADERS, stream, &block)
            .await;
    }

    /// The next frame that is not SETTINGS or PING (those are answered
    /// here), or `None` once the server has closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            let mut head = [0u8; 9];
            self.s.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.s.read_exact(&mut payload).await.ok()?;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let (kind, flags) = (head[3], head[4]);
            match kind {
                SETTINGS if flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[]).await,
                SETTINGS => {}
                PING if flags & ACK == 0 => {
                    self.pings += 1;
                    self.send(PING, ACK, 0, &payload).await;
                }
                PING => {}
                _ => {
                    return Some(Frame {
                        kind,
                        flags,
                        stream,
                        payload,
                    })
                }
            }
        }
    }
}
