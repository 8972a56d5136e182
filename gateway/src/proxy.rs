//! The request path, as fixed phases:
//!
//! 1. early checks: request id, Host;
//! 2. pick the route (one table load) — 404 / 503 here;
//! 3. rewrite the request for the upstream (hop-by-hop, forwarding headers,
//!    Host, path);
//! 4. forward, with connect and response timeouts — 502 / 504 here;
//! 5. rewrite the response (hop-by-hop, request id), and for a `101` start the
//!    tunnel that copies the upgraded bytes both ways.
//!
//! Every failure goes through [`ProxyError`] and one renderer.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tracing::Instrument as _;

use crate::access::{self, AccessConfig, ActivationRequest, Verdict, ACTIVATE_PATH};
use crate::access_log::{AccessEntry, LoggedBody};
use crate::body::{ProxyBody, RevocableBody, UpstreamRequestBody};
use crate::clock::{unix_millis, unix_secs};
use crate::error::{error_response, wants_json, ProxyError};
use crate::headers::{self, ClientInfo, X_REQUEST_ID};
use crate::metrics::{GatewayMetrics, RequestKind, UpstreamCause};
use crate::names::normalize_host;
use crate::router::lookup;
use crate::table::{LiveKind, Route, RouteHandle, RouteTarget};
use crate::tunnel;
use crate::upstream::UpstreamClient;

/// What the proxy knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The TLS server name the client asked for (SNI), on TLS listeners.
    pub sni: Option<Arc<str>>,
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
    fn call(
        &self,
        req: Request<Incoming>,
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
    metrics: Arc<GatewayMetrics>,
    /// Write an access-log line per request.
    access_log: bool,
}

/// What [`Proxy::forward`] found out besides the response, for metrics and
/// the access log.
struct Outcome {
    kind: RequestKind,
    /// An access-log line will be written: collect what it needs.
    log: bool,
    /// The upstream, when the access log wants it.
    upstream: Option<Arc<str>>,
    /// The user a private route let in.
    user: Option<Arc<str>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("proto", &self.proto)
            .field("access", &self.access)
            .field("tls", &self.tls.is_some())
            .field("https_redirect", &self.https_redirect)
            .finish_non_exhaustive()
    }
}

/// A streaming response longer than this (or of unknown length) is
/// registered with its route so that revocation can cut it off; shorter ones
/// finish on their own.
const STREAMING_BYTES: u64 = 1 << 20;

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
            metrics: Arc::new(GatewayMetrics::new()),
            access_log: false,
        }
    }

    /// Writes an access-log line (target [`access_log::TARGET`]) per request.
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
    /// access links are served at [`ACTIVATE_PATH`].
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

    /// Handles one request from a plain connection.
    pub async fn handle(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<ProxyBody> {
        self.handle_conn(req, &ConnInfo { remote, sni: None }).await
    }

    /// Handles one request end to end. Never fails: errors become responses.
    pub async fn handle_conn(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let started = std::time::Instant::now();
        let request_id = headers::request_id(req.headers());
        let json = wants_json(req.headers().get(header::ACCEPT));
        // Cheap clones: the URI and header values share the request's buffer.
        // Nothing at all when the log filter drops the access target.
        let log_on = self.access_log
            && tracing::enabled!(target: crate::access_log::TARGET, tracing::Level::INFO);
        let logged = log_on.then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().get(header::HOST).cloned(),
            )
        });
        let mut outcome = Outcome {
            kind: RequestKind::Gateway,
            log: log_on,
            upstream: None,
            user: None,
        };
        let rid = request_id.to_str().unwrap_or_default();
        // Every event of the request carries its id through this span.
        let span = tracing::info_span!("request", id = %rid);
        let forwarded = self
            .forward(req, conn, &request_id, &mut outcome)
            .instrument(span.clone())
            .await;
        let mut resp = match forwarded {
            Ok(mut resp) => {
                resp.headers_mut().insert(&X_REQUEST_ID, request_id);
                resp
            }
            Err(err) => {
                if let Some(cause) = upstream_cause(&err) {
                    self.metrics.upstream_error(cause);
                }
                let _in = span.enter();
                // The id as a field as well: under `RUST_LOG=warn` the span
                // (INFO) is off, and an error line must still name its request.
                let rid = request_id.to_str().unwrap_or_default();
                if err.is_upstream() {
                    tracing::warn!(request_id = rid, error = %err, "proxy error");
                } else {
                    tracing::debug!(request_id = rid, error = %err, "request refused");
                }
                error_response(&err, json, &request_id)
            }
        };
        let status = resp.status().as_u16();
        self.metrics.record(outcome.kind, status, started.elapsed());
        if let Some((method, uri, host)) = logged {
            let entry = AccessEntry {
                method,
                host,
                uri,
                status,
                upstream: outcome.upstream,
                user: outcome.user,
                request_id: resp
                    .headers()
                    .get(&X_REQUEST_ID)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static("-")),
                remote: conn.remote,
                started,
            };
            resp = resp.map(|body| ProxyBody::Logged(Box::new(LoggedBody::new(body, entry))));
        }
        resp
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        outcome: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let remote = conn.remote;
        let client_version = req.version();
        // Phase 1: the host, from the authority (HTTP/2, absolute-form) or Host.
        let raw_host: HeaderValue = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::MissingHost)?,
            None => req
                .headers()
                .get(header::HOST)
                .cloned()
                .ok_or(ProxyError::MissingHost)?,
        };
        let raw_host_str = raw_host.to_str().map_err(|_| {
            ProxyError::InvalidHost(String::from_utf8_lossy(raw_host.as_bytes()).into())
        })?;
        let host = normalize_host(raw_host_str)
            .ok_or_else(|| ProxyError::InvalidHost(raw_host_str.to_string()))?;
        if let Some(port) = self.https_redirect {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return Ok(https_redirect(&host, port, pq));
        }
        if let Some(tls) = &self.tls {
            let sni = conn.sni.as_deref();
            if sni != Some(&*host) && !tls.covers(sni, &host) {
                return Err(ProxyError::Misdirected {
                    host: host.to_string(),
                    sni: sni.unwrap_or("").to_string(),
                });
            }
        }

        // Phase 2: the route; first, the portal's own API.
        let table = self.routes.load();
        if let Some(portal) = &self.portal {
            if table.portal_host() == Some(&*host) && portal.claims(req.uri().path()) {
                drop(table);
                outcome.kind = RequestKind::Portal;
                return Ok(portal.call(req).await);
            }
        }
        let path = req.uri().path();
        let m = lookup(&table, &host, path).ok_or_else(|| ProxyError::NoRoute {
            host: host.to_string(),
            path: path.to_string(),
        })?;
        let route = Arc::clone(m.route);
        let slug = (m.prefix_len > 0).then(|| &path[..m.prefix_len]);
        let relative = slug.map_or(path, |s| &path[s.len()..]);
        if relative == ACTIVATE_PATH && route.access.is_some() {
            let slug = slug.map(str::to_string);
            let query = req.uri().query().map(str::to_string);
            drop(table);
            return self
                .activate(&route, slug.as_deref(), query.as_deref())
                .await;
        }
        // Access before state: a stranger learns nothing about a paused session.
        let user = if route.public {
            None
        } else {
            match self.check_access(&route, req.headers(), slug) {
                Ok(user) => Some(user),
                Err(AccessDenied::SignIn) => {
                    if let Some(url) = self.access.as_ref().and_then(|a| a.login_url.as_deref()) {
                        return Ok(redirect(&access::with_notification(url, "session-invalid")));
                    }
                    return Err(ProxyError::SignInRequired(route.id.to_string()));
                }
                Err(AccessDenied::Forbidden(user)) => {
                    return Err(ProxyError::Forbidden {
                        user,
                        route: route.id.to_string(),
                    })
                }
            }
        };
        if route.inactive {
            return Err(ProxyError::Inactive(route.id.to_string()));
        }
        if route.paused {
            return Err(ProxyError::Paused(route.id.to_string()));
        }
        route.state.touch();
        let upstream = match &route.target {
            RouteTarget::Upstream(u) => u,
            RouteTarget::Redirect(url) => {
                outcome.kind = RequestKind::Redirect;
                return Ok(redirect(url));
            }
        };
        outcome.kind = RequestKind::Upstream;
        if outcome.log {
            outcome.upstream = Some(upstream.to_string().into());
            outcome.user.clone_from(&user);
        }

        // Phase 3: the upstream request.
        let upstream_pq = if route.strip_prefix && m.prefix_len > 0 {
            let rest = m.upstream_path(path);
            let pq = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            Some(PathAndQuery::try_from(pq).map_err(|_| ProxyError::NoRoute {
                host: host.to_string(),
                path: path.to_string(),
            })?)
        } else {
            None
        };
        drop(table);
        let pq = match upstream_pq {
            Some(pq) => pq,
            None => req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let uri = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::UpstreamProtocol {
                upstream: upstream.to_string(),
                reason: format!("cannot build upstream URI: {e}"),
            })?;

        let upgrade = if req.version() == Version::HTTP_11
            && headers::connection_has(req.headers(), "upgrade")
        {
            req.headers().get(header::UPGRADE).cloned()
        } else {
            None
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        headers::remove_hop_by_hop(h);
        // The gateway's cookie is its own business, never the app's.
        access::strip_own_cookies(h);
        // hyper already answered `Expect: 100-continue` on the client side.
        h.remove(header::EXPECT);
        headers::set_forwarded(
            h,
            &ClientInfo {
                ip: remote.ip(),
                proto: self.proto,
                host: raw_host_str,
            },
        );
        if route.rewrite_host {
            h.insert(
                header::HOST,
                HeaderValue::from_str(upstream.authority.as_str())
                    .unwrap_or_else(|_| raw_host.clone()),
            );
        } else {
            h.insert(header::HOST, raw_host.clone());
        }
        h.insert(&X_REQUEST_ID, request_id.clone());
        if let Some(u) = &upgrade {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, u.clone());
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let progress = if body.is_end_stream() {
            None
        } else {
            Some(Arc::new(AtomicU64::new(unix_millis())))
        };
        let upstream_req =
            Request::from_parts(parts, UpstreamRequestBody::new(body, progress.clone()));

        // Phase 4: forward.
        let mut resp = self
            .client
            .send(
                upstream,
                route.tls_verify,
                upgrade.is_some(),
                upstream_req,
                progress,
            )
            .await?;

        // Phase 5: the response.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                let proto = resp.headers().get(header::UPGRADE).cloned();
                let (mut parts, _) = resp.into_parts();
                parts.version = client_version;
                headers::remove_hop_by_hop(&mut parts.headers);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(p) = proto {
                    parts.headers.insert(header::UPGRADE, p);
                }
                tunnel::spawn(
                    Arc::clone(&route.state),
                    Arc::clone(&self.metrics),
                    user,
                    client_upgrade,
                    upstream_upgrade,
                    upstream.to_string(),
                );
                return Ok(Response::from_parts(parts, ProxyBody::empty()));
            }
            // A 101 the client did not ask for cannot be passed on.
            return Err(ProxyError::UpstreamProtocol {
                upstream: upstream.to_string(),
                reason: "switched protocols without an upgrade request".into(),
            });
        }
        let (mut parts, body) = resp.into_parts();
        // The upstream's HTTP version describes its hop, not ours.
        parts.version = client_version;
        headers::remove_hop_by_hop(&mut parts.headers);
        let streaming =
            !body.is_end_stream() && body.size_hint().exact().is_none_or(|n| n > STREAMING_BYTES);
        let body = if streaming {
            let (guard, close) = route.state.register_live(LiveKind::Stream, user);
            ProxyBody::Revocable(Box::new(RevocableBody::new(body, guard, close)))
        } else {
            ProxyBody::Upstream(body)
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The user a private route lets in, from the request's cookie.
    fn check_access(
        &self,
        route: &Route,
        headers: &http::HeaderMap,
        slug: Option<&str>,
    ) -> Result<Arc<str>, AccessDenied> {
        let (Some(cfg), Some(list)) = (&self.access, &route.access) else {
            return Err(AccessDenied::SignIn);
        };
        let (name, _) = access::cookie_name_and_path(self.secure(), slug);
        let keys = cfg.keys.load();
        match access::check(&keys, list, headers, name, unix_secs()) {
            Verdict::Allowed(user) => Ok(user.into()),
            Verdict::Forbidden(user) => Err(AccessDenied::Forbidden(user.to_string())),
            Verdict::NoCookie => Err(AccessDenied::SignIn),
        }
    }

    /// Opens an access link: the control plane consumes the token, and the
    /// browser gets its cookie and goes on to the session's entry path.
    async fn activate(
        &self,
        route: &Route,
        slug: Option<&str>,
        query: Option<&str>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (Some(cfg), Some(list)) = (&self.access, &route.access) else {
            return Err(ProxyError::Activation(
                access::ActivationError::Unavailable("browser access is not configured".into()),
            ));
        };
        let Some(activator) = &cfg.activator else {
            return Err(ProxyError::Activation(
                access::ActivationError::Unavailable(
                    "this gateway does not take access links".into(),
                ),
            ));
        };
        let token = query
            .and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("token="))
                    .map(str::to_string)
            })
            .filter(|t| !t.is_empty())
            .ok_or(ProxyError::Activation(
                access::ActivationError::InvalidToken,
            ))?;
        let a = activator
            .activate(ActivationRequest {
                token,
                session: Arc::clone(&list.session),
            })
            .await
            .map_err(ProxyError::Activation)?;
        let location = match slug {
            Some(s) => format!("{s}{}", a.path),
            None => a.path.clone(),
        };
        let mut resp = redirect(&location);
        let cookie = access::set_cookie(self.secure(), slug, &a.cookie, a.max_age);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        // The link's token must not travel on in a Referer.
        resp.headers_mut()
            .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        tracing::info!(route = %route.id, user = %a.user, "access link opened");
        Ok(resp)
    }
}

/// The `cause` of an upstream failure, for metrics.
fn upstream_cause(err: &ProxyError) -> Option<UpstreamCause> {
    Some(match err {
        ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamSchemeUnsupported(_) => {
            UpstreamCause::Unreachable
        }
        ProxyError::UpstreamConnectTimeout { .. } => UpstreamCause::ConnectTimeout,
        ProxyError::UpstreamTimeout { .. } => UpstreamCause::Timeout,
        ProxyError::UpstreamProtocol { .. } => UpstreamCause::Protocol,
        ProxyError::UpstreamTls { .. } => UpstreamCause::Tls,
        _ => return None,
    })
}

/// Why a private route refused a request.
enum AccessDenied {
    /// No valid cookie for this session.
    SignIn,
    /// A valid cookie whose user the route does not allow.
    Forbidden(String),
}

/// `308 Permanent Redirect` to the same host, path and query over HTTPS.
fn https_redirect(host: &str, port: u16, path_and_query: &str) -> Response<ProxyBody> {
    let location = if port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{port}{path_and_query}")
    };
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `302 Found` to a link session's external URL.
fn redirect(url: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
