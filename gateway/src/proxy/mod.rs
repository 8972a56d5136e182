//! The request path, as named phases over a per-request context (pingora's
//! `ProxyHttp` phases and `CTX`). [`Proxy::handle_conn`] runs them in order:
//!
//! 1. `resolve_host`: the host, from the URI's authority or `Host`; a plain
//!    listener beside an HTTPS one redirects; a TLS listener answers 421 for
//!    a host its connection's certificate does not cover;
//! 2. `select_route`: one table load; the portal's own API, the lookup
//!    (404), access links;
//! 3. `authorise`: a private route's cookie (401 or the login page, 403);
//! 4. `admit`: the route's state: inactive or paused (503), a link
//!    session's redirect;
//! 5. `upstream_request`: the URI and head for the upstream (the rewrite is
//!    [`headers::rewrite_request`](crate::headers::rewrite_request));
//! 6. `forward`: with connect and response timeouts (502, 504);
//! 7. `respond`: nothing if a revocation since the request was let in says
//!    so, else the head for the client; a `101` starts the tunnel, and the
//!    body is checked against the route's revocations as it streams;
//! 8. `finish`, however the request ended: the one renderer of errors, then
//!    metrics and the access log.
//!
//! A phase ends a request early with a `Stop`: an answer of the gateway's
//! own (a redirect, the portal's API, an access link) or a
//! [`ProxyError`](crate::error::ProxyError).
//!
//! Here: the [`Proxy`] and its settings. `phases`: the phases and the
//! request context. `access`: the cookie check and access links.

mod access;
mod phases;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::access::AccessConfig;
use crate::body::ProxyBody;
use crate::headers::TrustedProxies;
use crate::limits::ConnLease;
use crate::metrics::GatewayMetrics;
use crate::table::RouteHandle;
use crate::upstream::UpstreamClient;

/// What the proxy knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The TLS server name the client asked for (SNI), on TLS listeners.
    pub sni: Option<Arc<str>>,
    /// The connection's place in its listener's limits, which a tunnel
    /// takes over when the connection is upgraded; `None` for a request
    /// handed to [`Proxy::handle`] outside a listener.
    pub(crate) lease: Option<Arc<ConnLease>>,
}

impl ConnInfo {
    /// A connection from `remote`, outside any listener's limits.
    pub fn new(remote: SocketAddr, sni: Option<Arc<str>>) -> ConnInfo {
        ConnInfo {
            remote,
            sni,
            lease: None,
        }
    }
}

/// Whether the certificate a TLS connection was given for its SNI name also
/// covers another host, so that the connection may carry that host's
/// requests (HTTP/2 coalescing). Answered by the `certs` crate.
pub trait HostCoverage: Send + Sync + 'static {
    fn covers(&self, sni: Option<&str>, host: &str) -> bool;
    /// Counts a finished (or failed) handshake, for metrics.
    fn handshake(&self, _ok: bool) {}
}

/// Requests the portal host answers itself rather than routing: the
/// training portal's API (`/workshops/…`, `/oauth2/…`), served by the
/// control plane in the same process.
pub trait PortalService: Send + Sync + 'static {
    /// Whether `path` (on the portal host) is the service's.
    fn claims(&self, path: &str) -> bool;
    /// Whether `path` on `host`, another host than the portal's, is the
    /// service's (OpenID Connect's callback host).
    fn claims_on(&self, _host: &str, _path: &str) -> bool {
        false
    }
    /// Answers `req`, which came from `client` (for the service's
    /// brute-force limit).
    fn call(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ProxyBody>> + Send>>;
}

/// The proxy service shared by every connection of a listener.
pub struct Proxy {
    routes: RouteHandle,
    client: UpstreamClient,
    /// `http` or `https`: what the client spoke to us, for X-Forwarded-Proto.
    proto: &'static str,
    /// Browser access; without it private routes let nobody in.
    access: Option<AccessConfig>,
    /// On a TLS listener: which hosts the connection's certificate covers.
    tls: Option<Arc<dyn HostCoverage>>,
    /// On a plain listener with HTTPS beside it: answer every request with
    /// `308` to the same URL over HTTPS on this port.
    https_redirect: Option<u16>,
    portal: Option<Arc<dyn PortalService>>,
    /// ACME HTTP-01 answers, on a plain listener: checked before anything
    /// else, the HTTPS redirect included (RFC 8555 section 8.3).
    acme: Option<Arc<certs::acme::Challenges>>,
    /// A following gateway's readiness: until it holds a table every
    /// request answers 503 (`None`: always ready, as in `serve`).
    ready: Option<Arc<std::sync::atomic::AtomicBool>>,
    metrics: Arc<GatewayMetrics>,
    /// Write an access-log line per request.
    access_log: bool,
    /// Peers whose forwarding headers are kept and appended to; from any
    /// other they are replaced.
    trusted_proxies: TrustedProxies,
    /// `sessiongate chp`: configurable-http-proxy's routing, upstream URLs,
    /// errors and activity rules on this proxy ([`crate::chp`]).
    chp: Option<Arc<crate::chp::ChpFlavor>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("proto", &self.proto)
            .field("access", &self.access)
            .field("tls", &self.tls.is_some())
            .field("https_redirect", &self.https_redirect)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn new(routes: RouteHandle, client: UpstreamClient, proto: &'static str) -> Self {
        Proxy {
            routes,
            client,
            proto,
            access: None,
            tls: None,
            https_redirect: None,
            portal: None,
            acme: None,
            ready: None,
            metrics: Arc::new(GatewayMetrics::new()),
            access_log: false,
            trusted_proxies: TrustedProxies::default(),
            chp: None,
        }
    }

    /// Makes this proxy configurable-http-proxy's (`sessiongate chp`):
    /// routes by decoded path prefix on any host, CHP's upstream URLs,
    /// forwarding headers, error pages and activity rules.
    pub fn with_chp(mut self, flavor: Arc<crate::chp::ChpFlavor>) -> Self {
        self.chp = Some(flavor);
        self
    }

    /// Keeps the forwarding headers (`X-Forwarded-For`, `Forwarded`,
    /// `X-Real-IP`, ...) of requests from these proxies, and appends to
    /// them; from every other peer they are replaced or removed.
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Writes an access-log line per request (target
    /// [`access_log::TARGET`](crate::access_log::TARGET)).
    pub fn with_access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Records into `metrics` (shared by the listeners of one process).
    pub fn with_metrics(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<GatewayMetrics> {
        &self.metrics
    }

    /// Serves `service`'s paths on the portal host.
    /// Answers 503 ([`ProxyError::NoTable`]) while `ready` is false: a
    /// gateway that follows a control plane and has no table yet.
    pub fn with_ready(mut self, ready: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.ready = Some(ready);
        self
    }

    pub fn with_portal(mut self, service: Arc<dyn PortalService>) -> Self {
        self.portal = Some(service);
        self
    }

    /// Makes this the proxy of a TLS listener: `X-Forwarded-Proto: https`,
    /// Secure `__Host-` cookies, and 421 for a Host the connection's
    /// certificate does not cover.
    pub fn with_tls(mut self, coverage: Arc<dyn HostCoverage>) -> Self {
        self.proto = "https";
        self.tls = Some(coverage);
        self
    }

    /// Answers ACME HTTP-01 validations for open orders, on any host.
    pub fn with_acme_challenges(mut self, challenges: Arc<certs::acme::Challenges>) -> Self {
        self.acme = Some(challenges);
        self
    }

    /// Answers every request with a `308` to the same host, path and query
    /// over HTTPS on `port`.
    pub fn with_https_redirect(mut self, port: u16) -> Self {
        self.https_redirect = Some(port);
        self
    }

    pub(crate) fn count_tls_handshake(&self, ok: bool) {
        if let Some(t) = &self.tls {
            t.handshake(ok);
        }
    }

    /// Enables browser access: cookies are checked on private routes and
    /// access links are served at [`ACTIVATE_PATH`](crate::access::ACTIVATE_PATH).
    pub fn with_access(mut self, access: AccessConfig) -> Self {
        self.access = Some(access);
        self
    }

    fn secure(&self) -> bool {
        self.proto == "https"
    }

    pub fn routes(&self) -> &RouteHandle {
        &self.routes
    }
}
