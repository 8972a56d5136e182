//! The phases of the request path and what a request carries through them.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tracing::Instrument as _;

use super::access::AccessDenied;
use super::{ConnInfo, Proxy};
use crate::access::{self, ACTIVATE_PATH, SIGNOUT_PATH};
use crate::access_log::{self, AccessEntry, LoggedBody};
use crate::body::{ProxyBody, UpstreamBody, UpstreamRequestBody};
use crate::clock::unix_millis;
use crate::error::{error_response, wants_json, ProxyError};
use crate::headers::{self, ClientInfo, SetCookieChanges, UpstreamHead, X_REQUEST_ID};
use crate::metrics::{RequestKind, UpstreamCause};
use crate::names::normalize_host;
use crate::router::{lookup, RouteMatch};
use crate::table::revocation::{self, Admitted, Refusal};
use crate::table::{Route, RouteTarget, Upstream};
use crate::tunnel;

/// A response longer than this (or of unknown length) is live, as a tunnel
/// is: a new target for its route cuts it, where a shorter one finishes
/// from the old target.
const STREAMING_BYTES: u64 = 1 << 20;

/// The phases. A phase's `Err` carries an early answer by value: moved once
/// per request, where a box would cost an allocation on every redirect.
#[allow(clippy::result_large_err)]
impl Proxy {
    /// Handles one request from a plain connection.
    pub async fn handle(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<ProxyBody> {
        self.handle_conn(req, &ConnInfo::new(remote, None)).await
    }

    /// Handles one request end to end, phase by phase. Never fails: errors
    /// become responses.
    pub async fn handle_conn(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let mut ctx = RequestCtx::new(&req, self.access_log);
        // CHP's error pages name the URL the client asked for.
        let chp_url = self.chp.as_ref().map(|_| {
            let url = req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
            (url, req.headers().contains_key(header::UPGRADE))
        });
        // Every event of the request carries its id through this span.
        let span = tracing::info_span!("request", id = %ctx.id_str());
        let ended = async {
            let sent_host = sent_host(&req)?;
            let host = self.resolve_host(&sent_host, &req, conn)?;
            let (req, target) = self.select_route(req, &host, conn, &mut ctx).await?;
            self.authorise(&req, &target, &mut ctx)?;
            let upstream = self.admit(&target, &mut ctx)?;
            let (outbound, client) =
                self.upstream_request(req, &host, &target, upstream, conn, &ctx)?;
            let resp = self
                .forward(upstream, &target.route, outbound, client.upgrade.is_some())
                .await?;
            self.respond(resp, client, target, conn, &mut ctx)
        }
        .instrument(span.clone())
        .await;
        let ended = match (ended, &self.chp, chp_url) {
            (Err(Stop::Fail(err)), Some(chp), Some((url, upgrade))) => {
                let code = crate::chp::status_of(&err);
                // Logged and counted as any failure, answered as CHP does:
                // a WebSocket's failure is a bare status line.
                let _ = self.render(&err, false, &ctx.id, &span);
                Err(Stop::Answer(if upgrade {
                    crate::chp::bare_status(code)
                } else {
                    crate::chp::error_page(chp, &self.client, code, &url).await
                }))
            }
            (ended, _, _) => ended,
        };
        self.finish(ended, conn, ctx, &span)
    }

    /// Phase 1: the host the request is for. A plain listener beside an
    /// HTTPS one sends every request there instead; on a TLS listener the
    /// host must be covered by the certificate the connection was given
    /// (HTTP/2 may carry other hosts' requests), or the client is told to
    /// open a connection of its own for it (421).
    fn resolve_host<'a>(
        &self,
        sent: &'a HeaderValue,
        req: &Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Host<'a>, Stop> {
        let sent_str = sent.to_str().map_err(|_| {
            ProxyError::InvalidHost(String::from_utf8_lossy(sent.as_bytes()).into())
        })?;
        let name = normalize_host(sent_str)
            .ok_or_else(|| ProxyError::InvalidHost(sent_str.to_string()))?;
        if let Some(answer) = self.acme.as_ref().and_then(|c| c.http01(req.uri().path())) {
            return Err(Stop::Answer(acme_answer(answer)));
        }
        if let Some(port) = self.https_redirect {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return Err(Stop::Answer(https_redirect(&name, port, pq)));
        }
        if let Some(tls) = &self.tls {
            let sni = conn.sni.as_deref();
            if sni != Some(&*name) && !tls.covers(sni, &name) {
                return Err(ProxyError::Misdirected {
                    host: name.to_string(),
                    sni: sni.unwrap_or("").to_string(),
                }
                .into());
            }
        }
        Ok(Host {
            sent,
            sent_str,
            name,
        })
    }

    /// Phase 2: the route, with one load of the table. The portal's own API
    /// comes first, and an access link is opened here, as the gateway
    /// answers both itself; the lookup gives a link's path to the route of
    /// exactly its slug and no other ([`lookup`]). Hands the request back
    /// with its route.
    async fn select_route(
        &self,
        req: Request<Incoming>,
        host: &Host<'_>,
        conn: &ConnInfo,
        ctx: &mut RequestCtx,
    ) -> Result<(Request<Incoming>, Target), Stop> {
        // Before the table: a revocation after this reaches the request
        // whenever its upstream answers (see `table::revocation`).
        ctx.since = revocation::now();
        if let Some(ready) = &self.ready {
            if !ready.load(std::sync::atomic::Ordering::Acquire) {
                return Err(ProxyError::NoTable.into());
            }
        }
        if let Some(chp) = &self.chp {
            return self.select_chp_route(req, host, chp, ctx);
        }
        let table = self.routes.load();
        if let Some(portal) = &self.portal {
            let path = req.uri().path();
            if (table.portal_host() == Some(&*host.name) && portal.claims(path))
                || portal.claims_on(&host.name, path)
            {
                drop(table);
                ctx.kind = RequestKind::Portal;
                return Err(Stop::Answer(portal.call(req, conn.remote).await));
            }
        }
        let path = req.uri().path();
        let m = lookup(&table, &host.name, path).ok_or_else(|| ProxyError::NoRoute {
            host: host.name.to_string(),
            path: path.to_string(),
        })?;
        let target = Target {
            route: Arc::clone(m.route),
            prefix_len: m.prefix_len,
        };
        drop(table);
        if target.relative_path(path) == ACTIVATE_PATH && target.route.access.is_some() {
            let query = req.uri().query();
            let answer = self
                .activate(
                    &target.route,
                    target.slug(path),
                    query,
                    req.headers(),
                    conn.remote.ip(),
                )
                .await?;
            return Err(Stop::Answer(answer));
        }
        if target.relative_path(path) == SIGNOUT_PATH && target.route.access.is_some() {
            let slug = target.slug(path);
            return Err(Stop::Answer(self.sign_out(slug, req.uri().query())));
        }
        Ok((req, target))
    }

    /// Phase 2 for `sessiongate chp`: `/_chp_healthz` first, then the
    /// longest whole-segment prefix of the decoded path (after `/<host>` in
    /// host-routing mode) among the routes' keys, on any host.
    fn select_chp_route(
        &self,
        req: Request<Incoming>,
        host: &Host<'_>,
        chp: &crate::chp::ChpFlavor,
        ctx: &mut RequestCtx,
    ) -> Result<(Request<Incoming>, Target), Stop> {
        if req.uri().path_and_query().map(|p| p.as_str()) == Some(crate::chp::HEALTHZ) {
            ctx.kind = RequestKind::Portal;
            return Err(Stop::Answer(crate::chp::healthz()));
        }
        // Routed by the path as Node's URL parser reads it (dot segments
        // resolved, `\\` as `/`), which is also the path forwarded.
        let parsed = crate::chp::url_path_and_query(req.uri().path());
        let path = parsed.as_ref();
        // CHP keys hosts as sent, up to the first `:` (`host.split(":")[0]`).
        let bare = host.sent_str.split(':').next().unwrap_or("");
        let key =
            crate::chp::request_slug(chp.host_routing.then_some(bare), path).ok_or_else(|| {
                ProxyError::UpstreamUri {
                    path: path.to_string(),
                    reason: "the path does not percent-decode".into(),
                }
            })?;
        let table = self.routes.load();
        let m = crate::router::lookup_slug(&table, &key).ok_or_else(|| ProxyError::NoRoute {
            host: host.name.to_string(),
            path: path.to_string(),
        })?;
        // What CHP cuts off with --no-include-prefix: as many bytes of the
        // raw URL as its matched key has.
        let key_len = m
            .route
            .id
            .strip_prefix(crate::chp::ROUTE_ID_PREFIX)
            .map_or(0, |k| if k == "/" { 0 } else { k.len() });
        let target = Target {
            route: Arc::clone(m.route),
            prefix_len: key_len,
        };
        drop(table);
        Ok((req, target))
    }

    /// Phase 3: a private route lets in only a browser whose cookie names a
    /// user its access list allows. It runs before `admit`, so that a
    /// stranger learns nothing about the state of a session.
    fn authorise(
        &self,
        req: &Request<Incoming>,
        target: &Target,
        ctx: &mut RequestCtx,
    ) -> Result<(), Stop> {
        let route = &target.route;
        if route.public {
            return Ok(());
        }
        let slug = target.slug(req.uri().path());
        match self.check_access(route, req.headers(), slug) {
            Ok(user) => {
                ctx.user = Some(user);
                Ok(())
            }
            Err(AccessDenied::SignIn) => {
                if let Some(answer) = self.oidc_sign_in(req) {
                    return Err(Stop::Answer(answer));
                }
                if let Some(url) = self.access.as_ref().and_then(|a| a.login_url.as_deref()) {
                    let login = access::with_notification(url, "session-invalid");
                    return Err(Stop::Answer(redirect(&login)));
                }
                Err(ProxyError::SignInRequired(route.id.to_string()).into())
            }
            Err(AccessDenied::Forbidden(user)) => Err(ProxyError::Forbidden {
                user,
                route: route.id.to_string(),
            }
            .into()),
        }
    }

    /// Phase 4: the route's state decides whether the request goes on: an
    /// inactive or paused session answers 503, a link session redirects,
    /// and anything else counts as activity and goes to the upstream.
    fn admit<'t>(&self, target: &'t Target, ctx: &mut RequestCtx) -> Result<&'t Upstream, Stop> {
        let route = &target.route;
        if route.inactive {
            return Err(ProxyError::Inactive(route.id.to_string()).into());
        }
        if route.paused {
            return Err(ProxyError::Paused(route.id.to_string()).into());
        }
        // CHP counts activity only once data moves or an answer succeeds.
        if self.chp.is_none() {
            route.state.touch();
        }
        let upstream = match &route.target {
            RouteTarget::Upstream(u) => u,
            RouteTarget::Redirect(url) => {
                ctx.kind = RequestKind::Redirect;
                return Err(Stop::Answer(redirect(url)));
            }
        };
        ctx.kind = RequestKind::Upstream;
        if let Some(log) = &mut ctx.log {
            log.upstream = Some(upstream.to_string().into());
            log.user.clone_from(&ctx.user);
        }
        Ok(upstream)
    }

    /// Phase 5: the request for the upstream: its URI, its head rewritten
    /// by [`headers::rewrite_request`] (in HTTP/1.1, which every upstream
    /// speaks) with the route's own headers set, and its body watched for
    /// progress. Hands back what `respond` needs of the client's side.
    fn upstream_request(
        &self,
        mut req: Request<Incoming>,
        host: &Host<'_>,
        target: &Target,
        upstream: &Upstream,
        conn: &ConnInfo,
        ctx: &RequestCtx,
    ) -> Result<(Outbound, ClientSide), Stop> {
        let uri = match &self.chp {
            Some(chp) => chp_upstream_uri(req.uri(), target, upstream, chp)?,
            None => upstream_uri(req.uri(), target, upstream)?,
        };
        let version = req.version();
        let h2_websocket = headers::is_h2_websocket(
            version,
            req.method(),
            req.extensions().get::<hyper::ext::Protocol>(),
        );
        let upgrade = if h2_websocket {
            Some(HeaderValue::from_static("websocket"))
        } else {
            headers::requested_upgrade(version, req.headers(), target.route.allow_any_upgrade)
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // CHP without --no-x-forward passes the client's own forwarding
        // headers on untouched, adding none.
        let kept_forwarding: Vec<(http::HeaderName, HeaderValue)> = match &self.chp {
            Some(_) => parts
                .headers
                .iter()
                .filter(|(n, _)| crate::chp::is_forwarding(n.as_str()))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            None => Vec::new(),
        };
        let host_header = if target.route.rewrite_host {
            HeaderValue::from_str(upstream.authority.as_str()).unwrap_or_else(|_| host.sent.clone())
        } else {
            host.sent.clone()
        };
        headers::rewrite_request(
            &mut parts.headers,
            UpstreamHead {
                client: ClientInfo {
                    ip: conn.remote.ip(),
                    proto: self.proto,
                    host: host.sent_str,
                    // CHP appends to every client's forwarding headers.
                    trusted: self.chp.is_some() || self.trusted_proxies.contains(conn.remote.ip()),
                },
                host: host_header,
                request_id: ctx.id.clone(),
                upgrade: upgrade.clone(),
            },
        );
        if let Some(added) = &target.route.request_headers {
            added.apply(&mut parts.headers);
        }
        if let Some(chp) = &self.chp {
            // CHP's forwarding headers, not the gateway's: the client's own
            // kept, and (unless --no-x-forward) http-proxy's appended.
            let added: Vec<http::HeaderName> = parts
                .headers
                .keys()
                .filter(|n| crate::chp::is_forwarding(n.as_str()))
                .cloned()
                .collect();
            for n in added {
                parts.headers.remove(n);
            }
            for (n, v) in kept_forwarding {
                parts.headers.append(n, v);
            }
            if chp.x_forward {
                let proto = match (self.proto, upgrade.is_some()) {
                    ("https", true) => "wss",
                    (_, true) => "ws",
                    (p, false) => p,
                };
                crate::chp::append_forwarding(
                    &mut parts.headers,
                    conn.remote.ip(),
                    host.sent_str,
                    proto,
                );
            }
            for (name, value) in &chp.headers {
                parts.headers.insert(name.clone(), value.clone());
            }
        }
        if h2_websocket {
            // RFC 8441 to RFC 6455: the upstream gets a GET with the
            // Upgrade headers (set above) and a key of its own.
            parts.method = http::Method::GET;
            parts.extensions.remove::<hyper::ext::Protocol>();
            parts
                .headers
                .insert(header::SEC_WEBSOCKET_KEY, headers::websocket_key());
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let progress = if body.is_end_stream() {
            None
        } else {
            Some(Arc::new(AtomicU64::new(unix_millis())))
        };
        let mut body = UpstreamRequestBody::new(body, progress.clone());
        if self.chp.is_some() {
            body = body.with_activity(Arc::clone(&target.route.state));
        }
        let req = Request::from_parts(parts, body);
        Ok((
            Outbound { req, progress },
            ClientSide {
                version,
                upgrade: upgrade.zip(client_upgrade),
                host: host.sent.clone(),
            },
        ))
    }

    /// Phase 6: sends the request, within the upstream client's connect and
    /// response timeouts.
    async fn forward(
        &self,
        upstream: &Upstream,
        route: &Route,
        outbound: Outbound,
        upgrade: bool,
    ) -> Result<crate::upstream::Upstreamed, Stop> {
        let resp = self
            .client
            .send(
                upstream,
                route.tls_verify,
                upgrade,
                outbound.req,
                outbound.progress,
            )
            .await?;
        Ok(resp)
    }

    /// Phase 7: the upstream's response for the client, if the route still
    /// lets it through: a revocation since the request was let in (the user
    /// lost access, the session was paused, stopped or removed) answers
    /// instead. Then the head in the client's HTTP version, without the
    /// upstream's hop-by-hop headers and the cookies it may not set
    /// ([`headers::rewrite_response`]), and the body, which is checked against
    /// the route's revocations as it goes ([`UpstreamBody`]); one that may
    /// go on for long (no length, or more than [`STREAMING_BYTES`]) is
    /// live, and a new target ends it too.
    fn respond(
        &self,
        upstreamed: crate::upstream::Upstreamed,
        client: ClientSide,
        target: Target,
        conn: &ConnInfo,
        ctx: &mut RequestCtx,
    ) -> Result<Response<ProxyBody>, Stop> {
        let crate::upstream::Upstreamed {
            response: resp,
            reuse,
        } = upstreamed;
        let mut admitted = Admitted::new(target.route, ctx.user.take(), ctx.since);
        admitted
            .check(false)
            .map_err(|r| refused(r, &admitted.route))?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return self.switch(resp, client, admitted, conn);
        }
        // CHP: a successful answer is activity; redirects and errors are not.
        if self.chp.is_some() && resp.status().as_u16() < 300 {
            admitted.route.state.touch();
        }
        let (mut parts, body) = resp.into_parts();
        if let (Some(chp), RouteTarget::Upstream(u)) = (&self.chp, &admitted.route.target) {
            crate::chp::rewrite_location(
                chp,
                parts.status,
                &mut parts.headers,
                u.authority.as_str(),
                &client.host,
            );
        }
        // The upstream's HTTP version describes its hop, not ours.
        parts.version = client.version;
        note_set_cookies(
            &admitted.route,
            headers::rewrite_response(&mut parts.headers),
        );
        let live =
            !body.is_end_stream() && body.size_hint().exact().is_none_or(|n| n > STREAMING_BYTES);
        let body = ProxyBody::Upstream(UpstreamBody::new(body, admitted, live, reuse));
        Ok(Response::from_parts(parts, body))
    }

    /// Phase 7 for a `101 Switching Protocols`: a switch to what the client
    /// asked for is passed on, and a tunnel copies the bytes both ways once
    /// both sides have switched. A switch the client did not ask for, or to
    /// another protocol than it asked for ([`headers::switched_as_requested`]),
    /// is the upstream's protocol error: the client would be handed a
    /// connection speaking something it never offered.
    fn switch(
        &self,
        mut resp: Response<Incoming>,
        client: ClientSide,
        admitted: Admitted,
        conn: &ConnInfo,
    ) -> Result<Response<ProxyBody>, Stop> {
        let upstream = admitted.route.target.to_string();
        let Some((requested, client_upgrade)) = client.upgrade else {
            return Err(ProxyError::UpstreamProtocol {
                upstream,
                reason: "switched protocols without an upgrade request".into(),
            }
            .into());
        };
        let protocol = match resp.headers().get(header::UPGRADE) {
            Some(switched) if headers::switched_as_requested(&requested, Some(switched)) => {
                switched.clone()
            }
            switched => {
                let reason = match switched {
                    Some(switched) => {
                        format!(
                            "switched protocols to {switched:?}, not the requested {requested:?}"
                        )
                    }
                    None => format!(
                        "switched protocols without an Upgrade header ({requested:?} was requested)"
                    ),
                };
                return Err(ProxyError::UpstreamProtocol { upstream, reason }.into());
            }
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        parts.version = client.version;
        let changes = headers::rewrite_switch(&mut parts.headers, protocol);
        if client.version == Version::HTTP_2 {
            // An HTTP/2 WebSocket (RFC 8441) is accepted with a 200 on its
            // stream; HTTP/2 has no Connection or Upgrade, and the accept
            // key answered the upstream's own handshake.
            parts.status = StatusCode::OK;
            for name in [
                header::CONNECTION,
                header::UPGRADE,
                header::SEC_WEBSOCKET_ACCEPT,
            ] {
                parts.headers.remove(name);
            }
        }
        note_set_cookies(&admitted.route, changes);
        let route = Arc::clone(&admitted.route);
        tunnel::spawn(
            admitted,
            Arc::clone(&self.metrics),
            conn.lease.clone(),
            client_upgrade,
            upstream_upgrade,
            upstream,
            // CHP counts only what the client sends.
            self.chp.is_none(),
        )
        .map_err(|r| refused(r, &route))?;
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }

    /// Phase 8, however the request ended: an error becomes its response
    /// ([`Proxy::render`]), every answer carries the request id, and the
    /// request is counted and, when the access log is on, logged once its
    /// body is over.
    fn finish(
        &self,
        ended: Result<Response<ProxyBody>, Stop>,
        conn: &ConnInfo,
        ctx: RequestCtx,
        span: &tracing::Span,
    ) -> Response<ProxyBody> {
        let RequestCtx {
            id,
            started,
            wants_json,
            kind,
            log,
            ..
        } = ctx;
        let mut resp = match ended {
            Ok(mut resp) | Err(Stop::Answer(mut resp)) => {
                resp.headers_mut().insert(&X_REQUEST_ID, id);
                resp
            }
            Err(Stop::Fail(err)) => self.render(&err, wants_json, &id, span),
        };
        let status = resp.status().as_u16();
        self.metrics.record(kind, status, started.elapsed());
        if let Some(log) = log {
            let entry = AccessEntry {
                method: log.method,
                host: log.host,
                uri: log.uri,
                status,
                upstream: log.upstream,
                user: log.user,
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

    /// The one place a failure becomes a response: an upstream's failure is
    /// counted by cause, every failure is logged (at warn when the fault is
    /// on the server side), and the client gets a page or JSON.
    fn render(
        &self,
        err: &ProxyError,
        json: bool,
        request_id: &HeaderValue,
        span: &tracing::Span,
    ) -> Response<ProxyBody> {
        if let Some(cause) = upstream_cause(err) {
            self.metrics.upstream_error(cause);
        }
        let _in = span.enter();
        // The id as a field as well: under `RUST_LOG=warn` the span (INFO)
        // is off, and an error line must still name its request.
        let rid = request_id.to_str().unwrap_or_default();
        if err.is_upstream() {
            tracing::warn!(request_id = rid, error = %err, "proxy error");
        } else {
            tracing::debug!(request_id = rid, error = %err, "request refused");
        }
        error_response(err, json, request_id)
    }
}

/// What one request carries from phase to phase (pingora's `CTX`): made
/// before the first phase, read by `finish` however the request ended.
struct RequestCtx {
    /// The client's `X-Request-Id` when sane, else a fresh one: sent
    /// upstream, echoed to the client, logged.
    id: HeaderValue,
    /// When the request came in, for the duration metric and the log line.
    started: Instant,
    /// Errors go to this client as JSON rather than an HTML page.
    wants_json: bool,
    /// What answered, for metrics: the gateway itself until a phase says
    /// otherwise.
    kind: RequestKind,
    /// The user a private route let in. Its response and tunnel are checked
    /// against revocations as this user (`respond` takes it).
    user: Option<Arc<str>>,
    /// The revocation clock before the table was loaded: revocations after
    /// it reach this request.
    since: u64,
    /// What the access-log line needs from the request, collected only when
    /// a line will be written.
    log: Option<LogFields>,
}

/// The access-log fields only the request knows. The method, URI and Host
/// are cheap clones: they share the request's buffer.
struct LogFields {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    /// The upstream, once `admit` found one.
    upstream: Option<Arc<str>>,
    /// The user a private route let in, once `admit` let the request on.
    user: Option<Arc<str>>,
}

impl RequestCtx {
    /// `access_log`: the proxy writes access-log lines.
    fn new(req: &Request<Incoming>, access_log: bool) -> RequestCtx {
        let started = Instant::now();
        // Nothing at all is collected when the log filter drops the target.
        let log_on =
            access_log && tracing::enabled!(target: access_log::TARGET, tracing::Level::INFO);
        RequestCtx {
            id: headers::request_id(req.headers()),
            started,
            wants_json: wants_json(req.headers().get(header::ACCEPT)),
            kind: RequestKind::Gateway,
            user: None,
            since: 0,
            log: log_on.then(|| LogFields {
                method: req.method().clone(),
                uri: req.uri().clone(),
                host: req.headers().get(header::HOST).cloned(),
                upstream: None,
                user: None,
            }),
        }
    }

    fn id_str(&self) -> &str {
        self.id.to_str().unwrap_or_default()
    }
}

/// How a phase ends a request before its response phase.
enum Stop {
    /// The gateway answers itself: a redirect, the portal's API, an access
    /// link.
    Answer(Response<ProxyBody>),
    /// A failure, for `finish` to render.
    Fail(ProxyError),
}

impl From<ProxyError> for Stop {
    fn from(err: ProxyError) -> Stop {
        Stop::Fail(err)
    }
}

/// The host a request is for.
struct Host<'a> {
    /// As the client sent it, port included: passed on as `Host` (unless
    /// the route rewrites it) and in the forwarding headers.
    sent: &'a HeaderValue,
    /// `sent` as text.
    sent_str: &'a str,
    /// Lower-case, without port or trailing dot: what routes are filed under.
    name: Cow<'a, str>,
}

/// The route a request matched, and how much of its path the route's slug
/// took.
struct Target {
    route: Arc<Route>,
    /// Bytes of the path taken by the slug (0 for host and label routes).
    prefix_len: usize,
}

impl Target {
    /// The slug the route matched (`/lab`), which scopes its cookie and
    /// prefixes where an access link lands.
    fn slug<'p>(&self, path: &'p str) -> Option<&'p str> {
        (self.prefix_len > 0)
            .then(|| path.get(..self.prefix_len))
            .flatten()
    }

    /// The path below the slug: the session's own.
    fn relative_path<'p>(&self, path: &'p str) -> &'p str {
        path.get(self.prefix_len..).unwrap_or(path)
    }

    /// The path to send upstream: the slug removed when the route strips it.
    fn upstream_path<'p>(&self, path: &'p str) -> &'p str {
        RouteMatch {
            route: &self.route,
            prefix_len: self.prefix_len,
        }
        .upstream_path(path)
    }
}

/// The request for the upstream, as `forward` sends it.
struct Outbound {
    req: Request<UpstreamRequestBody>,
    /// When the request body last moved, for the response timeout; `None`
    /// for an empty body.
    progress: Option<Arc<AtomicU64>>,
}

/// The client's side of a request whose head went upstream: what `respond`
/// needs of it.
struct ClientSide {
    /// The client's HTTP version: the response goes back in it, whatever the
    /// upstream spoke.
    version: Version,
    /// The protocols the client asked to switch to, and its half of the
    /// switch.
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    /// The `Host` the client sent (CHP's `--auto-rewrite` puts it in a
    /// redirect's `Location`).
    host: HeaderValue,
}

/// The host as the client sent it: the URI's authority (HTTP/2, or an
/// absolute-form request line), else `Host`. Two `Host` headers are
/// refused (RFC 9112 §3.2): the gateway would route by one while the app,
/// or a proxy behind it, might read the other.
fn sent_host(req: &Request<Incoming>) -> Result<HeaderValue, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::MissingHost),
        None => first.cloned().ok_or(ProxyError::MissingHost),
    }
}

/// The upstream's URI for a request: the upstream's scheme and authority,
/// the request's path and query, the slug taken off the path when the route
/// strips it.
/// CHP's upstream URL: the target's path (unless `--no-prepend-path`)
/// joined to the raw request path and query, less the matched prefix's
/// bytes with `--no-include-prefix`.
fn chp_upstream_uri(
    uri: &Uri,
    target: &Target,
    upstream: &Upstream,
    chp: &crate::chp::ChpFlavor,
) -> Result<Uri, ProxyError> {
    let cannot_build = |reason: &dyn std::fmt::Display| ProxyError::UpstreamUri {
        path: uri.path().to_string(),
        reason: reason.to_string(),
    };
    let raw = uri.path_and_query().map_or("/", |p| p.as_str());
    let rest = if chp.include_prefix {
        raw
    } else {
        raw.get(target.prefix_len..).unwrap_or("")
    };
    let base = match (&target.route.target_path, chp.prepend_path) {
        (Some(p), true) => p.as_ref(),
        _ => "",
    };
    // http-proxy-3's getPath: what is left of the raw URL, read by Node's
    // URL parser (an empty rest, or a query alone, as it is).
    let rest = if rest.is_empty() || rest.starts_with('?') {
        std::borrow::Cow::Borrowed(rest)
    } else {
        crate::chp::url_path_and_query(rest)
    };
    let pq = crate::chp::upstream_path(base, &rest);
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(PathAndQuery::try_from(pq).map_err(|e| cannot_build(&e))?)
        .build()
        .map_err(|e| cannot_build(&e))
}

fn upstream_uri(uri: &Uri, target: &Target, upstream: &Upstream) -> Result<Uri, ProxyError> {
    let cannot_build = |reason: &dyn std::fmt::Display| ProxyError::UpstreamUri {
        path: uri.path().to_string(),
        reason: reason.to_string(),
    };
    let pq = if target.route.strip_prefix && target.prefix_len > 0 {
        let rest = target.upstream_path(uri.path());
        let pq = match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        PathAndQuery::try_from(pq).map_err(|e| cannot_build(&e))?
    } else {
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| cannot_build(&e))
}

/// Logs, once per route, that its app set cookies the gateway took out
/// ([`headers::filter_set_cookies`]): once, as an app that does it does it
/// on every response.
fn note_set_cookies(route: &Route, changes: SetCookieChanges) {
    if changes.any() && route.state.first_cookie_offence() {
        tracing::warn!(
            route = %route.id,
            dropped = changes.dropped,
            host_only = changes.host_only,
            "the app set cookies it may not: those named like the gateway's cookie are dropped, \
             Domain attributes removed (logged once per route)"
        );
    }
}

/// What a request refused by a revocation while with its upstream answers.
fn refused(refusal: Refusal, route: &Route) -> ProxyError {
    let id = route.id.to_string();
    match refusal {
        Refusal::Paused => ProxyError::Paused(id),
        Refusal::Inactive => ProxyError::Inactive(id),
        Refusal::SignIn => ProxyError::SignInRequired(id),
        Refusal::Forbidden(user) => ProxyError::Forbidden {
            user: user.to_string(),
            route: id,
        },
        Refusal::Gone => ProxyError::RouteChanged {
            route: id,
            what: "was removed",
        },
        Refusal::Retargeted => ProxyError::RouteChanged {
            route: id,
            what: "moved to another target",
        },
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
        ProxyError::UpstreamProtocol { .. } | ProxyError::UpstreamBroken { .. } => {
            UpstreamCause::Protocol
        }
        ProxyError::UpstreamTls { .. } => UpstreamCause::Tls,
        _ => return None,
    })
}

/// `308 Permanent Redirect` to the same host, path and query over HTTPS.
/// An HTTP-01 answer: the key authorization as text (RFC 8555 section 8.3).
fn acme_answer(key_authorization: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(key_authorization));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

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

/// `302 Found` to `url`: a link session's external URL, the login page, a
/// session's entry path after its access link.
pub(super) fn redirect(url: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
