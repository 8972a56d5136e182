//! The data plane's Prometheus metrics, recorded without a shared lock.
//!
//! Counters live in cache-line-aligned shards; each thread picks one shard
//! the first time it records, so two cores rarely touch the same line and a
//! request costs a few uncontended atomic adds. A scrape sums the shards.
//! Gauges (open connections and WebSockets) change per connection, not per
//! request, and are plain atomics; so is the count of refused connections.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What answered a request, the `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Proxied to an upstream.
    Upstream,
    /// A link session's redirect.
    Redirect,
    /// The portal's own API (workshop endpoints).
    Portal,
    /// Answered by the gateway itself: errors, access links, redirects to
    /// HTTPS or to the login page.
    Gateway,
}

const KINDS: [&str; 4] = ["upstream", "redirect", "portal", "gateway"];
const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why an upstream failed, the `cause` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamCause {
    Unreachable,
    ConnectTimeout,
    Timeout,
    Protocol,
    Tls,
}

const CAUSES: [&str; 5] = [
    "unreachable",
    "connect_timeout",
    "timeout",
    "protocol",
    "tls",
];

/// Upper bounds of the duration histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const SHARDS: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Shard {
    requests: [[AtomicU64; 5]; 4],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; 15],
    duration_sum_ns: AtomicU64,
    upstream_errors: [AtomicU64; 5],
}

/// The gateway's counters and gauges, shared by its listeners.
pub struct GatewayMetrics {
    shards: Box<[Shard]>,
    connections_open: AtomicI64,
    websockets_open: AtomicI64,
    /// Connections closed at once for `max_connections_per_ip`.
    refused_per_ip: AtomicU64,
    /// Workspace ports ([`crate::workspace`]): connections by result,
    /// open now, bytes from clients and from sessions.
    workspace_results: [AtomicU64; WORKSPACE_RESULTS.len()],
    workspace_open: AtomicI64,
    workspace_bytes_in: AtomicU64,
    workspace_bytes_out: AtomicU64,
    /// `gateway.workspace_session_metrics`: bytes per session (route id),
    /// in and out. Off by default: a label per session is a series per
    /// session in every scrape.
    workspace_per_session: std::sync::OnceLock<
        std::sync::Mutex<std::collections::BTreeMap<std::sync::Arc<str>, [u64; 2]>>,
    >,
}

/// The results `sessiongate_workspace_connections_total` counts.
const WORKSPACE_RESULTS: [&str; 7] = [
    "accepted",
    "refused_client",
    "refused_identity",
    "refused_limit",
    "refused_state",
    "upstream_failed",
    "bind_failed",
];

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl GatewayMetrics {
    pub fn new() -> Self {
        GatewayMetrics {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            connections_open: AtomicI64::new(0),
            websockets_open: AtomicI64::new(0),
            refused_per_ip: AtomicU64::new(0),
            workspace_results: Default::default(),
            workspace_open: AtomicI64::new(0),
            workspace_bytes_in: AtomicU64::new(0),
            workspace_bytes_out: AtomicU64::new(0),
            workspace_per_session: std::sync::OnceLock::new(),
        }
    }

    /// Counts workspace bytes per session too, labelled by session.
    pub fn enable_workspace_per_session(&self) {
        let _ = self.workspace_per_session.set(Default::default());
    }

    /// Bytes of session `route`'s workspace connections, when per-session
    /// counting is on.
    pub fn workspace_session_bytes(&self, route: &std::sync::Arc<str>, inbound: bool, n: u64) {
        if let Some(m) = self.workspace_per_session.get() {
            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
            let entry = m.entry(route.clone()).or_default();
            entry[usize::from(!inbound)] += n;
        }
    }

    /// Counts a workspace connection (or listener) by `result`, one of
    /// [`WORKSPACE_RESULTS`].
    pub fn workspace_connection(&self, result: &str) {
        if let Some(i) = WORKSPACE_RESULTS.iter().position(|r| *r == result) {
            self.workspace_results[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn workspace_open(&self, delta: i64) {
        self.workspace_open.fetch_add(delta, Ordering::Relaxed);
    }

    /// Bytes a workspace connection read from its client (`inbound`) or
    /// from the session.
    pub fn workspace_bytes(&self, inbound: bool, n: u64) {
        let c = if inbound {
            &self.workspace_bytes_in
        } else {
            &self.workspace_bytes_out
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// Counts one answered request: its kind, status and time to the
    /// response head.
    pub fn record(&self, kind: RequestKind, status: u16, elapsed: Duration) {
        let s = self.shard();
        let code = usize::from(status / 100).clamp(1, 5) - 1;
        s.requests[kind as usize][code].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        s.buckets[b].fetch_add(1, Ordering::Relaxed);
        s.duration_sum_ns.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn upstream_error(&self, cause: UpstreamCause) {
        self.shard().upstream_errors[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a connection closed as soon as it was accepted because its
    /// client had `max_connections_per_ip` open already.
    pub fn connection_refused_per_ip(&self) {
        self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
    }

    pub fn websocket_opened(&self) {
        self.websockets_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn websocket_closed(&self) {
        self.websockets_open.fetch_sub(1, Ordering::Relaxed);
    }

    fn sum(&self, f: impl Fn(&Shard) -> u64) -> u64 {
        self.shards.iter().map(f).sum()
    }

    /// The Prometheus text exposition of every series, HELP and TYPE first.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP sessiongate_http_requests_total Requests answered by the gateway, by route kind and status class.\n\
             # TYPE sessiongate_http_requests_total counter"
        );
        for (k, kind) in KINDS.iter().enumerate() {
            for (c, code) in CODES.iter().enumerate() {
                let n = self.sum(|s| s.requests[k][c].load(Ordering::Relaxed));
                let _ = writeln!(
                    out,
                    "sessiongate_http_requests_total{{kind=\"{kind}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sessiongate_http_request_duration_seconds Time from the request to the response head.\n\
             # TYPE sessiongate_http_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (b, le) in BUCKETS.iter().enumerate() {
            cumulative += self.sum(|s| s.buckets[b].load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "sessiongate_http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.sum(|s| s.buckets[BUCKETS.len()].load(Ordering::Relaxed));
        let sum_ns = self.sum(|s| s.duration_sum_ns.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "sessiongate_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
             sessiongate_http_request_duration_seconds_sum {}\n\
             sessiongate_http_request_duration_seconds_count {cumulative}",
            sum_ns as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "# HELP sessiongate_upstream_errors_total Upstream failures, by cause.\n\
             # TYPE sessiongate_upstream_errors_total counter"
        );
        for (c, cause) in CAUSES.iter().enumerate() {
            let n = self.sum(|s| s.upstream_errors[c].load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "sessiongate_upstream_errors_total{{cause=\"{cause}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sessiongate_connections_open Client connections open now, upgraded ones (WebSockets) included.\n\
             # TYPE sessiongate_connections_open gauge\n\
             sessiongate_connections_open {}\n\
             # HELP sessiongate_websockets_open Upgraded connections (WebSockets) open now.\n\
             # TYPE sessiongate_websockets_open gauge\n\
             sessiongate_websockets_open {}\n\
             # HELP sessiongate_connections_refused_total Client connections closed as soon as they were accepted, by reason (per_ip_limit: the client had max_connections_per_ip open).\n\
             # TYPE sessiongate_connections_refused_total counter\n\
             sessiongate_connections_refused_total{{reason=\"per_ip_limit\"}} {}",
            self.connections_open.load(Ordering::Relaxed).max(0),
            self.websockets_open.load(Ordering::Relaxed).max(0),
            self.refused_per_ip.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sessiongate_workspace_connections_total Workspace port connections by result (accepted; refused_client: not in workspace_allowed_clients; refused_identity: no client certificate of a user the session lets in, with workspace_tls; refused_limit: the session had workspace_max_connections open; refused_state: paused or waiting; upstream_failed: the session's port refused or timed out; bind_failed: a listener could not be opened).\n\
             # TYPE sessiongate_workspace_connections_total counter"
        );
        for (i, r) in WORKSPACE_RESULTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "sessiongate_workspace_connections_total{{result=\"{r}\"}} {}",
                self.workspace_results[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sessiongate_workspace_connections_open Workspace port connections open now.\n\
             # TYPE sessiongate_workspace_connections_open gauge\n\
             sessiongate_workspace_connections_open {}\n\
             # HELP sessiongate_workspace_bytes_total Bytes through workspace ports, by direction (in: from clients, out: from sessions).\n\
             # TYPE sessiongate_workspace_bytes_total counter\n\
             sessiongate_workspace_bytes_total{{direction=\"in\"}} {}\n\
             sessiongate_workspace_bytes_total{{direction=\"out\"}} {}",
            self.workspace_open.load(Ordering::Relaxed).max(0),
            self.workspace_bytes_in.load(Ordering::Relaxed),
            self.workspace_bytes_out.load(Ordering::Relaxed)
        );
        if let Some(m) = self.workspace_per_session.get() {
            let _ = writeln!(
                out,
                "# HELP sessiongate_workspace_session_bytes_total Bytes through each session's workspace port, by direction (gateway.workspace_session_metrics).\n\
                 # TYPE sessiongate_workspace_session_bytes_total counter"
            );
            let m = m.lock().unwrap_or_else(|e| e.into_inner());
            for (route, [i, o]) in m.iter() {
                // Sessions' routes are `session:<name>`; the label is the name.
                let name = route.strip_prefix("session:").unwrap_or(route);
                let session = name.replace(['\\', '"', '\n'], "_");
                let _ = writeln!(
                    out,
                    "sessiongate_workspace_session_bytes_total{{session=\"{session}\",direction=\"in\"}} {i}\n\
                     sessiongate_workspace_session_bytes_total{{session=\"{session}\",direction=\"out\"}} {o}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_across_threads() {
        let m = std::sync::Arc::new(GatewayMetrics::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.record(RequestKind::Upstream, 200, Duration::from_micros(300));
                    }
                    m.record(RequestKind::Gateway, 404, Duration::from_secs(20));
                    m.upstream_error(UpstreamCause::Tls);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("sessiongate_http_requests_total{kind=\"upstream\",code=\"2xx\"} 8000\n"),
            "{out}"
        );
        assert!(
            out.contains("sessiongate_http_requests_total{kind=\"gateway\",code=\"4xx\"} 8\n"),
            "{out}"
        );
        assert!(
            out.contains("sessiongate_http_request_duration_seconds_bucket{le=\"0.0005\"} 8000\n"),
            "{out}"
        );
        assert!(
            out.contains("sessiongate_http_request_duration_seconds_bucket{le=\"10\"} 8000\n"),
            "{out}"
        );
        assert!(
            out.contains("sessiongate_http_request_duration_seconds_bucket{le=\"+Inf\"} 8008\n"),
            "{out}"
        );
        assert!(
            out.contains("sessiongate_http_request_duration_seconds_count 8008\n"),
            "{out}"
        );
        assert!(
            out.contains("sessiongate_upstream_errors_total{cause=\"tls\"} 8\n"),
            "{out}"
        );
    }
}
