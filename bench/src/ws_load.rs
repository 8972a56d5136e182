//! The WebSocket load client: closed-loop echo traffic over C connections,
//! the same for every target.
//!
//! [`run`] opens `connections` WebSockets to `addr` (the proxy, or the origin
//! itself), each with the configured `Host` header and path, all before the
//! clock starts. Then every connection runs a closed loop: it keeps
//! `pipeline` binary messages of `message_size` bytes in flight (1: send one,
//! wait for its echo, send the next) and checks every echo byte for byte
//! against what it sent, in order. Each message carries its sequence number
//! in its first bytes, so a lost, duplicated or reordered echo is caught, not
//! only a corrupted one.
//!
//! Timeline: connect all, then `warmup` (echoes received then are counted
//! apart and their latency not recorded), then `duration`, the measured
//! window: messages/s is the echoes received inside it over its length.
//! At the end of the window a connection stops sending and waits for the
//! echoes still in flight ("drained", counted apart), then closes with a
//! close handshake. Nothing is left in flight when [`run`] returns, so with no
//! errors the origin's message delta over the run equals
//! [`WsLoadResult::echoed_total`] exactly.
//!
//! It runs on a tokio runtime of its own with `threads` threads (default 1,
//! like `wrk -t1`: a current-thread runtime on the calling thread). The
//! per-message path allocates nothing of its own: the payload is written
//! into a reused buffer (tungstenite copies it into its write buffer at once
//! and drops it, so the next payload reclaims the same memory), send times
//! wait in a ring of `pipeline` slots, latencies go into a fixed log-linear
//! histogram, and each connection is one task driving its socket by polling
//! (no futures built per message). The rest is tungstenite's: frame masking,
//! which a client must do, and its read buffer.

// Used by the WebSocket scenario, which is wired into main.rs separately;
// the tests below exercise everything meanwhile.

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Default payload size, the size of the `keepalive` scenario's bodies.
pub const DEFAULT_MESSAGE_SIZE: usize = 128;

/// TCP connect plus WebSocket handshake, per connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the window the echoes still in flight may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the close handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// tungstenite's read buffer per connection (eagerly allocated; its default
/// is 128 KiB).
const READ_BUFFER: usize = 16 * 1024;

/// What to run. [`WsLoadConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct WsLoadConfig {
    /// Where to connect: the proxy's listener, or the origin.
    pub addr: SocketAddr,
    /// The `Host` header of the upgrade requests.
    pub host: String,
    /// The request target, starting with `/` (a query may follow).
    pub path: String,
    /// WebSocket connections, all open for the whole run.
    pub connections: u32,
    /// Payload bytes per message (binary messages).
    pub message_size: usize,
    /// Messages in flight per connection; 1 waits for each echo before the
    /// next send.
    pub pipeline: usize,
    /// The measured window.
    pub duration: Duration,
    /// Unrecorded traffic on the same connections before the window.
    pub warmup: Duration,
    /// Threads of the client's runtime.
    pub threads: usize,
}

impl WsLoadConfig {
    /// Path `/`, 32 connections, 128-byte messages, pipeline 1, 5 s, no
    /// warm-up, 1 thread.
    pub fn new(addr: SocketAddr, host: impl Into<String>) -> Self {
        Self {
            addr,
            host: host.into(),
            path: "/".into(),
            connections: 32,
            message_size: DEFAULT_MESSAGE_SIZE,
            pipeline: 1,
            duration: Duration::from_secs(5),
            warmup: Duration::ZERO,
            threads: 1,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct WsLoadResult {
    /// Verified echoes received inside the measured window.
    pub messages: u64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Round-trip latency of the window's messages, send to verified echo.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// All errors; a connection stops at its first one.
    pub errors: u64,
    /// Errors by kind, sorted by kind: `connect` (TCP connect failed or
    /// timed out), `handshake` (upgrade refused or broken), `closed` (peer
    /// closed or reset mid-run), `protocol` (WebSocket protocol error),
    /// `mismatch` (an echo that differs from the message it answers),
    /// `timeout` (echoes still missing [`DRAIN_TIMEOUT`] after the window),
    /// `close` (close handshake failed or timed out).
    pub error_kinds: Vec<(String, u64)>,
    /// The first error's full text, for the log.
    pub first_error: Option<String>,
    /// Connections whose handshake succeeded.
    pub connected: u32,
    /// Verified echoes received during the warm-up.
    pub warmup_messages: u64,
    /// Verified echoes received after the window, of messages sent in it.
    pub drained_messages: u64,
}

impl WsLoadResult {
    pub fn messages_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.messages as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Every verified echo of the run, warm-up and drain included: what the
    /// origin must have echoed when `errors` is 0.
    pub fn echoed_total(&self) -> u64 {
        self.warmup_messages + self.messages + self.drained_messages
    }
}

/// Runs the load on a runtime of its own (so not from inside an async
/// context). Fails only on an invalid configuration or when the runtime
/// cannot be built; what goes wrong on the wire is counted in the result.
pub fn run(config: &WsLoadConfig) -> Result<WsLoadResult> {
    if config.connections == 0 {
        bail!("connections must be at least 1");
    }
    if config.pipeline == 0 {
        bail!("pipeline depth must be at least 1");
    }
    if !config.path.starts_with('/') {
        bail!("path {:?} must start with /", config.path);
    }
    if config.duration.is_zero() {
        bail!("duration must be more than 0");
    }
    // The request is built once here to reject a bad path or host early.
    let target = Target {
        uri: format!("ws://{}{}", config.addr, config.path),
        host: HeaderValue::from_str(&config.host)
            .with_context(|| format!("Host header value {:?}", config.host))?,
    };
    target.request()?;

    let threads = config.threads.max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("bench-ws-load")
            .enable_all()
            .build()
    }
    .context("building the WebSocket client's tokio runtime")?;
    Ok(runtime.block_on(run_async(config, target)))
}

#[derive(Clone)]
struct Target {
    uri: String,
    host: HeaderValue,
}

impl Target {
    fn request(&self) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
        let mut req = self
            .uri
            .as_str()
            .into_client_request()
            .with_context(|| format!("WebSocket request for {}", self.uri))?;
        req.headers_mut().insert(header::HOST, self.host.clone());
        Ok(req)
    }
}

/// When each phase ends.
#[derive(Clone, Copy)]
struct Clock {
    warmup_end: Instant,
    end: Instant,
}

async fn run_async(config: &WsLoadConfig, target: Target) -> WsLoadResult {
    let mut errors = Errors::default();

    let ws_config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let connects: Vec<_> = (0..config.connections)
        .map(|_| tokio::spawn(connect(target.clone(), config.addr, ws_config)))
        .collect();
    let mut streams = Vec::with_capacity(connects.len());
    for task in connects {
        match task.await {
            Ok(Ok(ws)) => streams.push(ws),
            Ok(Err((kind, text))) => errors.add(kind, text),
            Err(err) => errors.add("connect", format!("connect task: {err}")),
        }
    }
    let connected = streams.len() as u32;

    let start = Instant::now();
    let warmup_end = start + config.warmup;
    let clock = Clock {
        warmup_end,
        end: warmup_end + config.duration,
    };
    let template: Bytes = (0..config.message_size)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into();
    let drivers: Vec<_> = streams
        .into_iter()
        .map(|ws| {
            let conn = Conn::new(ws, template.clone(), config.pipeline, clock);
            tokio::spawn(conn.run())
        })
        .collect();

    let mut hist = Histogram::new();
    let mut result = WsLoadResult {
        seconds: config.duration.as_secs_f64(),
        connected,
        ..WsLoadResult::default()
    };
    for task in drivers {
        match task.await {
            Ok(stats) => {
                result.warmup_messages += stats.warmup;
                result.messages += stats.measured;
                result.drained_messages += stats.drained;
                hist.merge(&stats.hist);
                if let Some((kind, text)) = stats.error {
                    errors.add(kind, text);
                }
            }
            Err(err) => errors.add("protocol", format!("connection task: {err}")),
        }
    }
    result.p50_us = hist.quantile_ns(0.50) / 1000.0;
    result.p99_us = hist.quantile_ns(0.99) / 1000.0;
    result.max_us = hist.max_ns() / 1000.0;
    result.errors = errors.kinds.values().sum();
    result.error_kinds = errors
        .kinds
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    result.first_error = errors.first;
    result
}

type Failure = (&'static str, String);

#[derive(Default)]
struct Errors {
    kinds: BTreeMap<&'static str, u64>,
    first: Option<String>,
}

impl Errors {
    fn add(&mut self, kind: &'static str, text: String) {
        *self.kinds.entry(kind).or_default() += 1;
        if self.first.is_none() {
            self.first = Some(format!("{kind}: {text}"));
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

async fn connect(target: Target, addr: SocketAddr, config: WebSocketConfig) -> Result<Ws, Failure> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| ("connect", format!("{addr}: {err}")))?;
        // One small message at a time each way: no Nagle delays.
        let _ = stream.set_nodelay(true);
        let req = target
            .request()
            .map_err(|err| ("handshake", format!("{err:#}")))?;
        match tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await {
            Ok((ws, _)) => Ok(ws),
            Err(WsError::Http(resp)) => Err((
                "handshake",
                format!(
                    "{} answered HTTP {} instead of 101",
                    target.uri,
                    resp.status()
                ),
            )),
            Err(err) => Err(("handshake", format!("{}: {err}", target.uri))),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(res) => res,
        Err(_) => Err((
            "connect",
            format!("{addr}: no handshake within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

/// What one connection did.
struct ConnStats {
    warmup: u64,
    measured: u64,
    drained: u64,
    hist: Histogram,
    error: Option<Failure>,
}

/// One connection's closed loop.
struct Conn {
    ws: Ws,
    /// The payload, sequence-number bytes aside.
    template: Bytes,
    /// Where payloads are written; each one is split off and frozen, and its
    /// memory reclaimed for the next once tungstenite has dropped it.
    buf: BytesMut,
    depth: usize,
    /// Send times of the messages in flight, oldest first.
    sent_at: VecDeque<Instant>,
    next_send: u64,
    next_echo: u64,
    /// Written into tungstenite but not yet flushed to the socket.
    unflushed: bool,
    /// The window is over: no more sends, only the drain.
    stopping: bool,
    clock: Clock,
    stats: ConnStats,
}

impl Conn {
    fn new(ws: Ws, template: Bytes, depth: usize, clock: Clock) -> Self {
        let size = template.len();
        Self {
            ws,
            buf: BytesMut::with_capacity(size.max(8) * (depth + 1)),
            template,
            depth,
            sent_at: VecDeque::with_capacity(depth),
            next_send: 0,
            next_echo: 0,
            unflushed: false,
            stopping: false,
            clock,
            stats: ConnStats {
                warmup: 0,
                measured: 0,
                drained: 0,
                hist: Histogram::new(),
                error: None,
            },
        }
    }

    async fn run(mut self) -> ConnStats {
        let deadline = self.clock.end + DRAIN_TIMEOUT;
        let outcome = tokio::time::timeout_at(deadline, poll_fn(|cx| self.poll_loop(cx))).await;
        self.stats.error = match outcome {
            Ok(Ok(())) => self.close().await.err(),
            Ok(Err(failure)) => Some(failure),
            Err(_) => Some((
                "timeout",
                format!(
                    "{} echoes still missing {DRAIN_TIMEOUT:?} after the end",
                    self.sent_at.len()
                ),
            )),
        };
        self.stats
    }

    /// Sends while the pipeline has room, flushes, reads echoes; returns
    /// once the window is over and every echo is back, or at the first
    /// error. Write and read are polled side by side, so a deep pipeline of
    /// large messages cannot deadlock against a peer that also writes
    /// before it reads.
    fn poll_loop(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        loop {
            while !self.stopping && self.sent_at.len() < self.depth {
                match self.ws.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(classify(err))),
                    Poll::Pending => break,
                }
                let payload = self.next_payload();
                if let Err(err) = self.ws.start_send_unpin(Message::Binary(payload)) {
                    return Poll::Ready(Err(classify(err)));
                }
                self.sent_at.push_back(Instant::now());
                self.unflushed = true;
            }
            if self.unflushed {
                match self.ws.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(classify(err))),
                    Poll::Pending => {}
                }
            }
            let msg = match self.ws.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    return Poll::Ready(Err(("closed", "the connection ended".into())))
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(classify(err))),
                Poll::Ready(Some(Ok(msg))) => msg,
            };
            let now = Instant::now();
            match msg {
                Message::Binary(data) => self.on_echo(&data, now)?,
                Message::Text(_) => {
                    return Poll::Ready(Err((
                        "mismatch",
                        format!("a text message as the echo of binary #{}", self.next_echo),
                    )))
                }
                Message::Close(frame) => {
                    let why =
                        frame.map_or_else(String::new, |f| format!(": {} {}", f.code, f.reason));
                    return Poll::Ready(Err(("closed", format!("closed by the peer{why}"))));
                }
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
            if self.stopping && self.sent_at.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn next_payload(&mut self) -> Bytes {
        let size = self.template.len();
        self.buf.reserve(size);
        self.buf.extend_from_slice(&self.template);
        let n = size.min(8);
        self.buf[..n].copy_from_slice(&self.next_send.to_le_bytes()[..n]);
        self.next_send += 1;
        self.buf.split().freeze()
    }

    /// Checks an echo against the oldest message in flight and accounts it.
    fn on_echo(&mut self, data: &[u8], now: Instant) -> Result<(), Failure> {
        let seq = self.next_echo;
        let Some(sent) = self.sent_at.pop_front() else {
            return Err(("mismatch", format!("an echo (#{seq}) for nothing sent")));
        };
        let size = self.template.len();
        let n = size.min(8);
        let ok = data.len() == size
            && data[..n] == seq.to_le_bytes()[..n]
            && data[n..] == self.template[n..];
        if !ok {
            return Err((
                "mismatch",
                format!(
                    "echo #{seq}: {} bytes, {}",
                    data.len(),
                    match data
                        .iter()
                        .zip(self.expected(seq).iter())
                        .position(|(a, b)| a != b)
                    {
                        Some(at) => format!("first difference at byte {at}"),
                        None => format!("expected {size}"),
                    }
                ),
            ));
        }
        self.next_echo += 1;
        if now < self.clock.warmup_end {
            self.stats.warmup += 1;
        } else if now < self.clock.end {
            self.stats.measured += 1;
            self.stats.hist.record((now - sent).as_nanos() as u64);
        } else {
            self.stats.drained += 1;
        }
        if now >= self.clock.end {
            self.stopping = true;
        }
        Ok(())
    }

    /// The payload of message `seq` (error path only).
    fn expected(&self, seq: u64) -> Vec<u8> {
        let mut out = self.template.to_vec();
        let n = out.len().min(8);
        out[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
        out
    }

    /// Close handshake: our close, then read until the peer's answer and
    /// the end of the stream.
    async fn close(&mut self) -> Result<(), Failure> {
        let ws = &mut self.ws;
        let handshake = async {
            ws.close(None).await?;
            while let Some(msg) = ws.next().await {
                msg?;
            }
            Ok::<_, WsError>(())
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, handshake).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(("close", err.to_string())),
            Err(_) => Err(("close", format!("no close answer within {CLOSE_TIMEOUT:?}"))),
        }
    }
}

fn classify(err: WsError) -> Failure {
    let kind = match &err {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => "closed",
        WsError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            "closed"
        }
        _ => "protocol",
    };
    (kind, err.to_string())
}

/// Log-linear latency histogram in nanoseconds: exact below 128 ns, then 64
/// buckets per power of two (under 1.6% relative error), up to 2^37 ns
/// (137 s; larger values land in the last bucket). Fixed size, no
/// allocation per record.
struct Histogram {
    counts: Vec<u32>,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const MAX_SHIFT: u32 = 30;
const MAX_VALUE: u64 = (1 << (MAX_SHIFT + SUB_BITS + 1)) - 1;
const BUCKETS: usize = (MAX_SHIFT as usize) * (SUB as usize) + 2 * (SUB as usize);

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
        }
    }

    fn index(ns: u64) -> usize {
        let v = ns.min(MAX_VALUE);
        if v < 2 * SUB {
            return v as usize;
        }
        let shift = (63 - v.leading_zeros()) - SUB_BITS;
        (shift as usize) * (SUB as usize) + (v >> shift) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> f64 {
        let sub = SUB as usize;
        if i < 2 * sub {
            return i as f64;
        }
        let shift = (i / sub - 1) as u32;
        let low = ((i % sub + sub) as u64) << shift;
        low as f64 + ((1u64 << shift) - 1) as f64 / 2.0
    }

    fn record(&mut self, ns: u64) {
        let slot = &mut self.counts[Self::index(ns)];
        *slot = slot.saturating_add(1);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    /// The value at quantile `q` (0 when empty).
    fn quantile_ns(&self, q: f64) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Self::value(i);
            }
        }
        0.0
    }

    fn max_ns(&self) -> f64 {
        self.counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0.0, Self::value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::origin::Origin;
    use testkit::WsEcho;

    fn config(addr: SocketAddr) -> WsLoadConfig {
        WsLoadConfig {
            connections: 4,
            duration: Duration::from_millis(300),
            ..WsLoadConfig::new(addr, "app.localhost")
        }
    }

    fn assert_clean(result: &WsLoadResult) {
        assert_eq!(result.errors, 0, "{result:?}");
        assert!(result.error_kinds.is_empty(), "{result:?}");
        assert!(result.first_error.is_none(), "{result:?}");
    }

    #[test]
    fn echoes_through_the_origin_and_counts_match() -> Result<()> {
        let origin = WsEcho::bench(1)?;
        let before = origin.counts();
        let result = run(&config(origin.addr))?;
        let after = origin.counts();
        assert_clean(&result);
        assert_eq!(result.connected, 4);
        assert!(result.messages > 0, "{result:?}");
        assert!(result.messages_per_sec() > 0.0);
        assert!(result.p50_us > 0.0 && result.p50_us <= result.p99_us);
        assert!(result.p99_us <= result.max_us);
        assert_eq!(result.warmup_messages, 0);
        assert_eq!(after.messages - before.messages, result.echoed_total());
        assert_eq!(after.upgrades - before.upgrades, 4);
        assert_eq!(after.connections - before.connections, 4);
        Ok(())
    }

    #[test]
    fn pipelined_odd_sizes_with_warmup_on_threads() -> Result<()> {
        let origin = WsEcho::bench(2)?;
        for (size, pipeline) in [(0, 3), (5, 8), (70_000, 4)] {
            let before = origin.counts();
            let result = run(&WsLoadConfig {
                message_size: size,
                pipeline,
                warmup: Duration::from_millis(100),
                duration: Duration::from_millis(200),
                threads: 2,
                path: "/ws/echo?x=1".into(),
                ..config(origin.addr)
            })?;
            let after = origin.counts();
            assert_clean(&result);
            assert!(result.messages > 0, "size {size}: {result:?}");
            assert!(result.warmup_messages > 0, "size {size}: {result:?}");
            assert_eq!(
                after.messages - before.messages,
                result.echoed_total(),
                "size {size}: {result:?}"
            );
        }
        Ok(())
    }

    /// A server that echoes every binary message with its last byte flipped.
    fn bad_echo_server(rt: &tokio::runtime::Runtime) -> Result<SocketAddr> {
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if let Message::Binary(data) = msg {
                            let mut data = data.to_vec();
                            if let Some(last) = data.last_mut() {
                                *last ^= 1;
                            }
                            if ws.send(Message::binary(data)).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Ok(addr)
    }

    #[test]
    fn wrong_echo_bytes_are_errors() -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let addr = bad_echo_server(&rt)?;
        let result = run(&config(addr))?;
        assert_eq!(result.connected, 4);
        assert_eq!(result.messages, 0, "{result:?}");
        assert_eq!(result.errors, 4, "{result:?}");
        assert_eq!(result.error_kinds, vec![("mismatch".to_string(), 4)]);
        let first = result.first_error.unwrap_or_default();
        assert!(first.contains("first difference at byte 127"), "{first}");
        Ok(())
    }

    #[test]
    fn refused_and_non_websocket_targets_are_errors() -> Result<()> {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let result = run(&config(port))?;
        assert_eq!(result.connected, 0);
        assert_eq!(result.error_kinds, vec![("connect".to_string(), 4)]);

        // The HTTP origin answers the upgrade request with its plain 200,
        // as a proxy answering by itself would.
        let origin = Origin::bench(1)?;
        let result = run(&config(origin.addr))?;
        assert_eq!(result.connected, 0);
        assert_eq!(result.error_kinds, vec![("handshake".to_string(), 4)]);
        let first = result.first_error.unwrap_or_default();
        assert!(first.contains("HTTP 200"), "{first}");
        Ok(())
    }

    #[test]
    fn bad_configurations_are_refused() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for bad in [
            WsLoadConfig {
                connections: 0,
                ..config(addr)
            },
            WsLoadConfig {
                pipeline: 0,
                ..config(addr)
            },
            WsLoadConfig {
                host: "bad\nhost".into(),
                ..config(addr)
            },
            WsLoadConfig {
                path: "no-slash".into(),
                ..config(addr)
            },
        ] {
            assert!(run(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn histogram_buckets_and_quantiles() {
        // Every bucket's middle maps back to it, and buckets are contiguous.
        for i in 0..BUCKETS {
            assert_eq!(
                Histogram::index(Histogram::value(i) as u64),
                i,
                "bucket {i}"
            );
        }
        for v in [0u64, 1, 127, 128, 129, 1000, 123_456, 1 << 40, u64::MAX] {
            let mid = Histogram::value(Histogram::index(v));
            let v = v.min(MAX_VALUE) as f64;
            assert!((mid - v).abs() <= v / 64.0 + 0.5, "{v} -> {mid}");
        }
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile_ns(0.5);
        let p99 = h.quantile_ns(0.99);
        assert!((p50 - 500_000.0).abs() < 500_000.0 / 64.0, "{p50}");
        assert!((p99 - 990_000.0).abs() < 990_000.0 / 64.0, "{p99}");
        assert!((h.max_ns() - 1_000_000.0).abs() < 1_000_000.0 / 64.0);
        assert_eq!(Histogram::new().quantile_ns(0.5), 0.0);
    }
}
