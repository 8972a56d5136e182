//! A browser-like HTTP/1.1 client with a real RFC 6265 cookie jar.
//!
//! The gateway serves many virtual hosts (`nb.localhost`, `portal.localhost`,
//! ...) on one loopback port. A [`Browser`] behaves like a browser that
//! resolves every name to that port: it always connects to the gateway
//! address it was made with, while the URL's host goes into the `Host` header
//! and decides which cookies are sent and where received ones are stored.
//!
//! Cookie rules (domain and host-only matching, paths, `Secure`, `HttpOnly`,
//! `Max-Age` and `Expires`) are those of the `cookie_store` crate, the store
//! reqwest and ureq use; nothing here re-implements them. Note that
//! `cookie_store` counts `http://localhost` and loopback IP addresses as
//! secure origins, but not `http://<name>.localhost`.
//!
//! A URL whose host is an IPv4 address goes to that address instead (the
//! OpenID Connect provider of the tests).
//!
//! Plain HTTP only, one new TCP connection per request, `GET` only. Every
//! request panics, naming its URL, if it is not answered within
//! [`super::DEADLINE`].

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use cookie_store::{CookieError, CookieStore};
use http::header::{HeaderName, HeaderValue, COOKIE, SET_COOKIE};
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use url::{Position, Url};

/// The redirects [`Browser::follow`] takes before it gives up.
pub const MAX_REDIRECTS: usize = 10;

/// A cookie jar and the gateway address every request goes to.
pub struct Browser {
    jar: Mutex<CookieStore>,
    gateway: SocketAddr,
}

/// One response.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body, invalid UTF-8 replaced.
    pub body: String,
    /// The URL that answered (for [`Browser::follow`], the last one).
    pub url: Url,
}

impl Page {
    /// The first value of header `name` (any case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The raw `Set-Cookie` values of this response, in order.
    pub fn set_cookies(&self) -> Vec<String> {
        set_cookie_values(&self.headers)
    }
}

impl Browser {
    /// An empty jar; every request goes to `gateway`.
    pub fn new(gateway: SocketAddr) -> Self {
        Browser {
            jar: Mutex::new(CookieStore::new()),
            gateway,
        }
    }

    /// GETs one absolute `http://` URL without following redirects: sends the
    /// jar's cookies for the URL in one `Cookie` header and stores every
    /// `Set-Cookie` of the response, scoped to the URL (ones the jar refuses,
    /// as a browser would, are dropped).
    pub async fn get(&self, url: &str) -> Page {
        self.get_with(url, &[]).await
    }

    /// [`Browser::get`], following `301`, `302`, `303`, `307` and `308` (at
    /// most [`MAX_REDIRECTS`] of them) with a `GET` to `Location`, resolved
    /// against the current URL. Cookies are stored at every hop and sent on
    /// every hop as they stand then. Returns the first response that is not a
    /// redirect (or one without `Location`); `Page::url` is its URL.
    pub async fn follow(&self, url: &str) -> Page {
        let mut chain = vec![url.to_string()];
        let mut page = self.get(url).await;
        loop {
            if !matches!(page.status, 301 | 302 | 303 | 307 | 308) {
                return page;
            }
            let Some(location) = page.header("location") else {
                return page;
            };
            let next = page
                .url
                .join(location)
                .unwrap_or_else(|e| panic!("{}: bad Location {location:?}: {e}", page.url));
            if chain.len() > MAX_REDIRECTS {
                panic!("more than {MAX_REDIRECTS} redirects: {chain:?} -> {next}");
            }
            chain.push(next.to_string());
            page = self.request(next, &[]).await;
        }
    }

    /// [`Browser::get`] with extra request headers. One named like a default
    /// (`Host`, `Accept`, `User-Agent`, or `Cookie`, the jar's) replaces it.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Page {
        self.request(parse(url), headers).await
    }

    /// The `Cookie` header the jar would send to `url` now, or `None` when no
    /// cookie matches. Longer paths come first (RFC 6265 section 5.4), then
    /// names in order, so the value is deterministic.
    pub fn cookie_header(&self, url: &str) -> Option<String> {
        self.cookie_header_for(&parse(url))
    }

    /// Every unexpired cookie in the jar as `(name, value, domain, path)`,
    /// where `domain` is the `Domain` attribute or, for a host-only cookie, the
    /// host that set it. Sorted by domain, path and name.
    pub fn cookies(&self) -> Vec<(String, String, String, String)> {
        let jar = self.jar.lock().unwrap();
        let mut all: Vec<_> = jar
            .iter_unexpired()
            .map(|c| {
                (
                    c.name().to_string(),
                    c.value().to_string(),
                    c.domain.as_cow().unwrap_or_default().into_owned(),
                    String::from(&c.path),
                )
            })
            .collect();
        all.sort_by(|a, b| (&a.2, &a.3, &a.0).cmp(&(&b.2, &b.3, &b.0)));
        all
    }

    /// Replaces the value of the unexpired cookie `name` whose domain and path
    /// match `url` (the one with the longest path if several do), keeping its
    /// domain, path, expiry and flags. Panics if there is none.
    pub fn set_value(&self, url: &str, name: &str, value: &str) {
        let url = parse(url);
        let mut jar = self.jar.lock().unwrap();
        let old = jar
            .iter_unexpired()
            .filter(|c| c.name() == name && c.domain.matches(&url) && c.path.matches(&url))
            .max_by_key(|c| c.path.len())
            .unwrap_or_else(|| panic!("no cookie {name:?} in the jar for {url}"))
            .clone();
        let mut raw = (*old).clone();
        raw.set_value(value.to_string());
        let mut new = cookie_store::Cookie::try_from_raw_cookie(&raw, &url)
            .unwrap_or_else(|e| panic!("cookie {name:?} for {url}: {e}"));
        new.domain = old.domain.clone();
        new.path = old.path.clone();
        new.expires = old.expires.clone();
        jar.insert(new, &url)
            .unwrap_or_else(|e| panic!("cookie {name:?} for {url}: {e}"));
    }

    /// Stores `set_cookie` (a `Set-Cookie` value) as if `url` had answered
    /// it. Panics if the jar refuses it (bad syntax, a `Domain` that `url` is
    /// not in), except that an expired cookie simply removes its match.
    pub fn plant(&self, url: &str, set_cookie: &str) {
        let url = parse(url);
        match self.jar.lock().unwrap().parse(set_cookie, &url) {
            Ok(_) | Err(CookieError::Expired) => {}
            Err(e) => panic!("{url} cannot set {set_cookie:?}: {e}"),
        }
    }

    /// Opens a WebSocket to a `ws://` URL over a new connection to the
    /// gateway, sending the jar's cookies for the equivalent `http://` URL.
    /// `Set-Cookie` headers of the handshake response are stored. A refused
    /// handshake gives its HTTP status.
    pub async fn websocket(
        &self,
        url: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, u16> {
        let ws_url = Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            ws_url.scheme(),
            "ws",
            "{url}: only ws:// URLs are supported"
        );
        let mut http_url = ws_url.clone();
        http_url.set_scheme("http").unwrap();

        let mut request = ws_url
            .as_str()
            .into_client_request()
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let headers = request.headers_mut();
        headers.insert("user-agent", HeaderValue::from_static(USER_AGENT));
        if let Some(cookies) = self.cookie_header_for(&http_url) {
            headers.insert(COOKIE, HeaderValue::from_str(&cookies).unwrap());
        }

        let handshake = async {
            let stream = TcpStream::connect(self.gateway)
                .await
                .unwrap_or_else(|e| panic!("{url}: connecting to {}: {e}", self.gateway));
            tokio_tungstenite::client_async(request, stream).await
        };
        let result = tokio::time::timeout(super::DEADLINE, handshake)
            .await
            .unwrap_or_else(|_| panic!("{url}: no handshake answer within {:?}", super::DEADLINE));
        match result {
            Ok((ws, response)) => {
                self.store(response.headers(), &http_url);
                Ok(ws)
            }
            Err(tungstenite::Error::Http(response)) => {
                self.store(response.headers(), &http_url);
                Err(response.status().as_u16())
            }
            Err(e) => panic!("{url}: WebSocket handshake failed: {e}"),
        }
    }

    /// One GET on a fresh connection, cookies sent and stored.
    async fn request(&self, url: Url, extra: &[(&str, &str)]) -> Page {
        assert_eq!(
            url.scheme(),
            "http",
            "{url}: only http:// URLs are supported"
        );
        // host[:port] as the URL has it (the url crate drops a default port).
        let host = &url[Position::BeforeHost..Position::AfterPort];
        let target = &url[Position::BeforePath..Position::AfterQuery];
        let mut request = hyper::Request::get(target)
            .header("host", host)
            .header("accept", "text/html")
            .header("user-agent", USER_AGENT)
            .body(Empty::<Bytes>::new())
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        if let Some(cookies) = self.cookie_header_for(&url) {
            let value = HeaderValue::from_str(&cookies).unwrap();
            request.headers_mut().insert(COOKIE, value);
        }
        // An extra header replaces a default one of the same name; several
        // extras of one name are all sent.
        let extra: Vec<(HeaderName, HeaderValue)> = extra
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .unwrap_or_else(|e| panic!("{url}: header name {k:?}: {e}"));
                let value = HeaderValue::from_str(v)
                    .unwrap_or_else(|e| panic!("{url}: header {k}: {v:?}: {e}"));
                (name, value)
            })
            .collect();
        for (name, _) in &extra {
            request.headers_mut().remove(name);
        }
        for (name, value) in extra {
            request.headers_mut().append(name, value);
        }

        // Every name reaches the gateway; an IP address (the test's OpenID
        // Connect provider on 127.0.0.1) is itself.
        let gateway = match (url.host(), url.port_or_known_default()) {
            (Some(url::Host::Ipv4(ip)), Some(port)) => SocketAddr::from((ip, port)),
            _ => self.gateway,
        };
        let exchange = async {
            let stream = TcpStream::connect(gateway)
                .await
                .unwrap_or_else(|e| panic!("{url}: connecting to {gateway}: {e}"));
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            tokio::spawn(conn);
            let response = sender
                .send_request(request)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{url}: reading the body: {e}"))
                .to_bytes();
            (parts, body)
        };
        let (parts, body) = tokio::time::timeout(super::DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("GET {url}: no answer within {:?}", super::DEADLINE));

        self.store(&parts.headers, &url);
        Page {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            url,
        }
    }

    fn cookie_header_for(&self, url: &Url) -> Option<String> {
        let jar = self.jar.lock().unwrap();
        let mut matching = jar.matches(url);
        if matching.is_empty() {
            return None;
        }
        matching.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then_with(|| a.name().cmp(b.name()))
        });
        let pairs: Vec<String> = matching
            .iter()
            .map(|c| format!("{}={}", c.name(), c.value()))
            .collect();
        Some(pairs.join("; "))
    }

    /// Stores every `Set-Cookie` in `headers` as received from `url`; the
    /// ones the jar refuses are dropped, as a browser drops them.
    fn store(&self, headers: &HeaderMap, url: &Url) {
        let mut jar = self.jar.lock().unwrap();
        for value in set_cookie_values(headers) {
            let _ = jar.parse(&value, url);
        }
    }
}

const USER_AGENT: &str = "sessiongate-tests";

fn parse(url: &str) -> Url {
    Url::parse(url).unwrap_or_else(|e| panic!("{url:?}: {e}"))
}

fn set_cookie_values(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}
