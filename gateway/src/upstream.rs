//! The upstream side: pooled keep-alive HTTP clients and the classification of
//! their failures into [`ProxyError`]s.
//!
//! Plain `http://` upstreams use one client. `https://` upstreams are
//! re-encrypted with rustls (hyper-rustls): SNI is the upstream's host name
//! (none for an IP address), ALPN offers `h2` and `http/1.1` so an upstream
//! that speaks HTTP/2 gets it, and upgrade requests (WebSocket) use clients
//! that offer only `http/1.1`, where `Upgrade` exists. Verification is per
//! route: on (system roots plus an optional CA bundle) unless the route says
//! `tls_verify = false`. Each combination has its own pool.
//!
//! Plain `http://` upstreams go through [`crate::pool`]: per-thread
//! keep-alive connections on hyper's own HTTP/1.1 client.
//!
//! `http+unix://` upstreams (the CHP mode's targets on a unix socket) have a
//! pool of their own, with a connector that decodes the socket's path from
//! the URL's host.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::body::UpstreamRequestBody;
use crate::clock::unix_millis;
use crate::error::ProxyError;
use crate::table::Upstream;

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

/// The rustls client configurations for `https://` upstreams.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// Verifies the upstream's certificate and name.
    pub verify: Arc<rustls::ClientConfig>,
    /// Accepts any certificate: for apps with self-signed certificates, only
    /// where a route says `tls_verify = false`.
    pub no_verify: Arc<rustls::ClientConfig>,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, UpstreamRequestBody>;

/// The four TLS pools: verified or not, and HTTP/2-capable or HTTP/1.1 only.
#[derive(Clone, Debug)]
struct TlsClients {
    verify: HttpsClient,
    verify_h1: HttpsClient,
    no_verify: HttpsClient,
    no_verify_h1: HttpsClient,
}

/// An upstream's response head, and the pooled connection it came on, to
/// be put back once the body has been read to its end.
#[derive(Debug)]
pub struct Upstreamed {
    pub response: Response<Incoming>,
    pub reuse: Option<Box<crate::pool::PoolReturn>>,
}

/// Connects `http+unix://` upstreams: the URL's host is the socket's path,
/// percent-encoded.
#[derive(Clone, Debug)]
struct UnixConnector {
    connect_timeout: Duration,
}

impl tower::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let host = uri.authority().map_or("", |a| a.as_str());
            let path = crate::table::unix_path_of(host).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host:?} does not name a unix socket"),
                )
            })?;
            match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(&path)).await {
                Ok(stream) => stream.map(TokioIo::new),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {} timed out", path.display()),
                )),
            }
        })
    }
}

/// A keep-alive pool per upstream authority, shared by all routes.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    http1: crate::pool::Http1Pool,
    unix: Client<UnixConnector, UpstreamRequestBody>,
    tls: Option<TlsClients>,
    config: UpstreamConfig,
}

impl UpstreamClient {
    pub fn new(config: UpstreamConfig) -> Self {
        let http1 = crate::pool::Http1Pool::new(
            config.connect_timeout,
            config.pool_idle_timeout,
            config.pool_max_idle_per_host,
        );
        let unix = Self::builder(&config).build(UnixConnector {
            connect_timeout: config.connect_timeout,
        });
        UpstreamClient {
            http1,
            unix,
            tls: None,
            config,
        }
    }

    /// Enables `https://` upstreams.
    pub fn with_tls(mut self, tls: UpstreamTls) -> Self {
        let build = |cfg: &Arc<rustls::ClientConfig>, h2: bool| {
            let mut http = Self::connector(&self.config);
            // hyper-rustls hands `https` URIs to it; it only makes TCP.
            http.enforce_http(false);
            // hyper-rustls sets ALPN itself, to match the HTTP versions the
            // pool may use.
            let mut tls_config = (**cfg).clone();
            tls_config.alpn_protocols.clear();
            let b = HttpsConnectorBuilder::new()
                .with_tls_config(tls_config)
                .https_or_http();
            let connector = if h2 {
                b.enable_http1().enable_http2().wrap_connector(http)
            } else {
                b.enable_http1().wrap_connector(http)
            };
            Self::builder(&self.config).build(connector)
        };
        self.tls = Some(TlsClients {
            verify: build(&tls.verify, true),
            verify_h1: build(&tls.verify, false),
            no_verify: build(&tls.no_verify, true),
            no_verify_h1: build(&tls.no_verify, false),
        });
        self
    }

    fn connector(config: &UpstreamConfig) -> HttpConnector {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.enforce_http(true);
        connector
    }

    fn builder(config: &UpstreamConfig) -> hyper_util::client::legacy::Builder {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The gateway sets Host itself (the client's, or the upstream's
            // with rewrite_host); the client must not replace it.
            .set_host(false);
        b
    }

    /// Sends `req` and waits for the response head. `progress` is the upload
    /// clock of the request body, if it has one. `tls_verify` applies to an
    /// `https://` upstream; `upgrade` keeps the request on HTTP/1.1.
    pub async fn send(
        &self,
        upstream: &Upstream,
        tls_verify: bool,
        upgrade: bool,
        req: Request<UpstreamRequestBody>,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<Upstreamed, ProxyError> {
        let timeout = self.config.response_timeout;
        let fut = async {
            if upstream.scheme == http::uri::Scheme::HTTP {
                let mut req = req;
                // hyper's connection writes the URI as given: origin-form.
                if let Some(pq) = req.uri().path_and_query().cloned() {
                    *req.uri_mut() = http::Uri::from(pq);
                }
                return self
                    .http1
                    .send(&upstream.authority, req, upgrade)
                    .await
                    .map(|(response, reuse)| Upstreamed { response, reuse })
                    .map_err(|e| match e {
                        crate::pool::SendError::Connect(io) => {
                            self.classify_error(upstream, &io, true)
                        }
                        crate::pool::SendError::Http(h) => self.classify_error(upstream, &h, false),
                    });
            }
            let legacy = if upstream.scheme == http::uri::Scheme::HTTPS {
                let Some(tls) = &self.tls else {
                    return Err(ProxyError::UpstreamSchemeUnsupported(upstream.to_string()));
                };
                match (tls_verify, upgrade) {
                    (true, false) => tls.verify.request(req),
                    (true, true) => tls.verify_h1.request(req),
                    (false, false) => tls.no_verify.request(req),
                    (false, true) => tls.no_verify_h1.request(req),
                }
            } else if upstream.scheme.as_str() == Upstream::UNIX_SCHEME {
                self.unix.request(req)
            } else {
                return Err(ProxyError::UpstreamSchemeUnsupported(upstream.to_string()));
            };
            legacy
                .await
                .map(|response| Upstreamed {
                    response,
                    reuse: None,
                })
                .map_err(|e| self.classify_error(upstream, &e, e.is_connect()))
        };
        tokio::pin!(fut);
        let mut deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, &mut fut).await {
                Ok(result) => return result,
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

    /// The gateway's words for `err`; `connect`: it happened while
    /// connecting (nothing was sent).
    fn classify_error(
        &self,
        upstream: &Upstream,
        err: &(dyn StdError + 'static),
        connect: bool,
    ) -> ProxyError {
        let io_err = find_source::<io::Error>(err);
        // rustls reports through an io::Error whose inner error is the
        // rustls::Error (io::Error::source skips the inner error itself).
        let tls_err = find_tls_error(err);
        if let Some(e) = tls_err {
            let (cause, reason) = describe_tls(e);
            return ProxyError::UpstreamTls {
                upstream: upstream.to_string(),
                cause,
                reason,
            };
        }
        if connect {
            if let Some(e) = io_err {
                if e.kind() == io::ErrorKind::TimedOut {
                    return ProxyError::UpstreamConnectTimeout {
                        upstream: upstream.to_string(),
                        secs: self.config.connect_timeout.as_secs(),
                    };
                }
            }
            let (cause, reason) = match io_err {
                Some(e) => describe_io(e),
                None => ("could not connect", innermost_message(err)),
            };
            return ProxyError::UpstreamUnreachable {
                upstream: upstream.to_string(),
                cause,
                reason,
            };
        }
        ProxyError::UpstreamBroken {
            upstream: upstream.to_string(),
            cause: describe_broken(find_source::<hyper::Error>(err)),
            detail: innermost_message(err),
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

/// The rustls error anywhere in the chain, including inside `io::Error`s
/// (whose `source` skips the error they wrap).
fn find_tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn StdError + 'static) = inner;
            if let Some(t) = find_tls_error(inner) {
                return Some(t);
            }
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

/// What went wrong in the upstream's TLS handshake: in the gateway's
/// words, for the client, and with the TLS library's detail where those
/// words are not the whole story, for the log (a certificate's names, for
/// one, may be internal).
fn describe_tls(e: &rustls::Error) -> (&'static str, String) {
    use rustls::CertificateError as C;
    let cause = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "its certificate is not signed by a trusted authority",
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "its certificate is not valid for this host name"
            }
            C::Expired | C::ExpiredContext { .. } => "its certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "its certificate is not valid yet",
            C::Revoked => "its certificate is revoked",
            C::BadSignature => "its certificate has a bad signature",
            other => {
                return (
                    "its certificate was refused",
                    format!("invalid certificate: {other:?}"),
                )
            }
        },
        other => {
            return (
                "the TLS handshake failed",
                format!("TLS handshake failed: {other}"),
            )
        }
    };
    (cause, cause.to_string())
}

/// `connection refused`, not `Connection refused (os error 111)`: in the
/// gateway's words, and as the system said it where those words do not
/// cover it (a failed name lookup, say), for the log.
fn describe_io(e: &io::Error) -> (&'static str, String) {
    let cause = match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        io::ErrorKind::AddrNotAvailable => "address not available",
        _ => return ("could not connect", e.to_string().to_lowercase()),
    };
    (cause, cause.to_string())
}

/// What broke on a connection that was made, in the gateway's words.
fn describe_broken(e: Option<&hyper::Error>) -> &'static str {
    match e {
        Some(e) if e.is_parse() || e.is_parse_status() => "sent a response that is not valid HTTP",
        Some(e) if e.is_incomplete_message() || e.is_closed() => {
            "closed the connection before its response was complete"
        }
        _ => "failed while answering",
    }
}
