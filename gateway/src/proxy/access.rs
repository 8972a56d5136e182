//! Browser access on the request path: the cookie check of `authorise` and
//! the access links `select_route` opens.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response};

use super::phases::redirect;
use super::Proxy;
use crate::access::{self, ActivationRequest, Verdict};
use crate::body::ProxyBody;
use crate::clock::unix_secs;
use crate::error::ProxyError;
use crate::table::Route;

impl Proxy {
    /// The user a private route lets in, from the request's cookie.
    pub(super) fn check_access(
        &self,
        route: &Route,
        headers: &HeaderMap,
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
    /// The user of a valid cookie for the session that came with the link
    /// goes with it: a link that stays valid after its first use lets in
    /// again only the browser its first use gave that cookie to.
    pub(super) async fn activate(
        &self,
        route: &Route,
        slug: Option<&str>,
        query: Option<&str>,
        headers: &HeaderMap,
        client: IpAddr,
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
        let holder = match self.check_access(route, headers, slug) {
            Ok(user) => Some(user),
            Err(AccessDenied::Forbidden(user)) => Some(user.into()),
            Err(AccessDenied::SignIn) => None,
        };
        let a = activator
            .activate(ActivationRequest {
                token,
                session: Arc::clone(&list.session),
                client,
                holder,
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

impl Proxy {
    /// With OpenID Connect, a browser's GET without a valid cookie goes to
    /// sign in, with the URL it asked for as `rd`. `None` without OIDC, or
    /// for a request a redirect cannot answer (a POST, an API client's
    /// `fetch`), which gets 401 as before.
    pub(super) fn oidc_sign_in(
        &self,
        req: &http::Request<hyper::body::Incoming>,
    ) -> Option<Response<ProxyBody>> {
        let oidc = self.access.as_ref()?.oidc.as_ref()?;
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return None;
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(header::HOST)?.to_str().ok())?;
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let rd = format!("{}://{host}{pq}", self.proto);
        let url = format!("{}?rd={}", oidc.login, crate::chp::encode_component(&rd));
        Some(redirect(&url))
    }

    /// `/__sessiongate/signout`: clears this host's cookie, then goes on to
    /// `next` if it is one of the OIDC endpoints on the callback host (the
    /// sign-out's next step), else says it is done.
    pub(super) fn sign_out(&self, slug: Option<&str>, query: Option<&str>) -> Response<ProxyBody> {
        let next = query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("next=")))
            .and_then(crate::chp::decode)
            .filter(|n| {
                self.access
                    .as_ref()
                    .and_then(|a| a.oidc.as_ref())
                    .is_some_and(|o| {
                        n.strip_prefix(&*o.origin)
                            .is_some_and(|rest| rest.starts_with(access::OIDC_PREFIX))
                    })
            });
        let mut resp = match next {
            Some(n) => redirect(&n),
            None => {
                let mut r = Response::new(ProxyBody::full("signed out\n"));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
        };
        let cookie = access::clear_cookie(self.secure(), slug);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// Why a private route refused a request.
pub(super) enum AccessDenied {
    /// No valid cookie for this session.
    SignIn,
    /// A valid cookie whose user the route does not allow.
    Forbidden(String),
}
