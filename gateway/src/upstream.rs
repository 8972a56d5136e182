//! The upstream side: a pooled keep-alive HTTP client and the classification of
//! its failures into [`ProxyError`]s.

use std::error::Error as StdError;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::body::UpstreamRequestBody;
use crate::error::ProxyError;
use crate::table::{unix_millis, Upstream};

/// Timeouts and pool sizes for upstream connections.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// Time allowed from the end of the request (its last uploaded byte) to
    /// the upstream's response head.
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
        }
    }
}

/// A keep-alive pool per upstream authority, shared by all routes.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpConnector, UpstreamRequestBody>,
    config: UpstreamConfig,
}

impl UpstreamClient {
    pub fn new(config: UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The gateway sets Host itself (the client's, or the upstream's
            // with rewrite_host); the client must not replace it.
            .set_host(false)
            .build(connector);
        UpstreamClient { client, config }
    }

    /// Sends `req` and waits for the response head. `progress` is the upload
    /// clock of the request body, if it has one.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: Request<UpstreamRequestBody>,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        if upstream.scheme == http::uri::Scheme::HTTPS {
            return Err(ProxyError::UpstreamSchemeUnsupported(upstream.to_string()));
        }
        let timeout = self.config.response_timeout;
        let fut = self.client.request(req);
        tokio::pin!(fut);
        let mut deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, &mut fut).await {
                Ok(result) => return result.map_err(|e| self.classify(upstream, &e)),
                Err(_) => {
                    // Still uploading? Count the timeout from the last byte sent.
                    let last = progress.as_ref().map(|p| p.load(Ordering::Relaxed));
                    if let Some(last_ms) = last {
                        let since = Duration::from_millis(unix_millis().saturating_sub(last_ms));
                        if since < timeout {
                            deadline = Instant::now() + (timeout - since);
                            continue;
                        }
                    }
                    return Err(ProxyError::UpstreamTimeout {
                        upstream: upstream.to_string(),
                        secs: timeout.as_secs(),
                    });
                }
            }
        }
    }

    fn classify(&self, upstream: &Upstream, err: &hyper_util::client::legacy::Error) -> ProxyError {
        let io_err = find_source::<io::Error>(err);
        if err.is_connect() {
            if let Some(e) = io_err {
                if e.kind() == io::ErrorKind::TimedOut {
                    return ProxyError::UpstreamConnectTimeout {
                        upstream: upstream.to_string(),
                        secs: self.config.connect_timeout.as_secs(),
                    };
                }
            }
            return ProxyError::UpstreamUnreachable {
                upstream: upstream.to_string(),
                reason: io_err
                    .map(describe_io)
                    .unwrap_or_else(|| innermost_message(err)),
            };
        }
        ProxyError::UpstreamProtocol {
            upstream: upstream.to_string(),
            reason: innermost_message(err),
        }
    }
}

fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

fn innermost_message(err: &(dyn StdError + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `connection refused`, not `Connection refused (os error 111)`.
fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => e.to_string().to_lowercase(),
    }
}
