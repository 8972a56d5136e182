//! What a route is: where it sends traffic ([`Upstream`], [`RouteTarget`]),
//! what the table is given for it ([`RouteSpec`], with a builder), and what
//! the table makes of it ([`Route`]).

use std::fmt;
use std::sync::Arc;

use http::uri::{Authority, Scheme};

use super::RouteState;
use crate::access::AccessList;
use crate::headers::AddedHeaders;

/// Where a route sends its traffic: `http://host:port` or `https://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Upstream {
    /// Parses `http://host:port` (or `https://`). A path other than `/`, a query,
    /// or user info is refused: a route forwards the request path unchanged.
    pub fn parse(s: &str) -> Result<Self, UpstreamError> {
        let uri: http::Uri = s.parse().map_err(|reason| UpstreamError::NotAUrl {
            input: s.to_string(),
            reason,
        })?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            Some(other) => {
                return Err(UpstreamError::UnsupportedScheme {
                    input: s.to_string(),
                    scheme: other.to_string(),
                })
            }
            None => return Err(UpstreamError::MissingScheme(s.to_string())),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::MissingHost(s.to_string()))?;
        if authority.as_str().contains('@') {
            return Err(UpstreamError::UserInfo(s.to_string()));
        }
        if authority.host().is_empty() {
            return Err(UpstreamError::MissingHost(s.to_string()));
        }
        if let Some(pq) = uri.path_and_query() {
            if pq.as_str() != "/" && !pq.as_str().is_empty() {
                return Err(UpstreamError::PathOrQuery(s.to_string()));
            }
        }
        Ok(Upstream { scheme, authority })
    }

    /// The scheme of an upstream on a unix socket: configurable-http-proxy's
    /// `http+unix://<percent-encoded socket path>` targets.
    pub const UNIX_SCHEME: &'static str = "http+unix";

    /// An upstream on the unix socket whose path is `encoded`, percent-encoded
    /// as one URL host (`%2Fvar%2Frun%2Fapp.sock`). Only the CHP mode makes
    /// these; a route file's `http+unix://` is refused by [`Upstream::parse`].
    ///
    /// A URL authority cannot hold `%`, so the path is kept hex-encoded as
    /// the authority: one pool per socket, and [`fmt::Display`] shows it as
    /// it was given.
    pub fn unix_socket(encoded: &str) -> Result<Self, UpstreamError> {
        let input = format!("{}://{encoded}", Self::UNIX_SCHEME);
        let path = match crate::chp::decode(encoded) {
            Some(p) if !p.is_empty() => p,
            _ => return Err(UpstreamError::MissingHost(input)),
        };
        let mut hex = String::with_capacity(path.len() * 2);
        for b in path.bytes() {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        let authority: Authority = hex.parse().map_err(|reason| UpstreamError::NotAUrl {
            input: input.clone(),
            reason,
        })?;
        let scheme =
            Scheme::try_from(Self::UNIX_SCHEME).map_err(|reason| UpstreamError::NotAUrl {
                input: input.clone(),
                reason,
            })?;
        Ok(Upstream { scheme, authority })
    }

    /// The socket's path, for an `http+unix://` upstream (`None` for
    /// another scheme).
    pub fn unix_path(&self) -> Option<std::path::PathBuf> {
        if self.scheme.as_str() != Self::UNIX_SCHEME {
            return None;
        }
        unix_path_of(self.authority.as_str())
    }
}

/// The socket path an `http+unix://` upstream's authority holds, hex-encoded
/// by [`Upstream::unix_socket`].
pub fn unix_path_of(authority: &str) -> Option<std::path::PathBuf> {
    let hex = authority.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = hex
        .chunks(2)
        .map(|p| Some(digit(p[0])? * 16 + digit(p[1])?))
        .collect::<Option<Vec<u8>>>()?;
    Some(std::path::PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes),
    ))
}

/// Why a string is not an upstream. Each names the string as it was given.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {input:?}: not a URL ({reason})")]
    NotAUrl {
        input: String,
        reason: http::uri::InvalidUri,
    },
    #[error("upstream {input:?}: scheme {scheme:?} is not supported (use http:// or https://)")]
    UnsupportedScheme { input: String, scheme: String },
    #[error("upstream {0:?}: missing scheme (http:// or https://)")]
    MissingScheme(String),
    #[error("upstream {0:?}: missing host")]
    MissingHost(String),
    #[error("upstream {0:?}: user info is not allowed")]
    UserInfo(String),
    #[error("upstream {0:?}: a path or query is not allowed, only scheme://host:port")]
    PathOrQuery(String),
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = self.unix_path() {
            let encoded = crate::chp::encode_component(&path.to_string_lossy());
            return write!(f, "{}://{encoded}", Self::UNIX_SCHEME);
        }
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// Where a matched request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Proxy it to this upstream.
    Upstream(Upstream),
    /// Answer `302 Found` to this absolute URL (a `link` session: the app
    /// lives elsewhere and the gateway only hands the browser over).
    Redirect(Arc<str>),
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::Upstream(u) => u.fmt(f),
            RouteTarget::Redirect(url) => write!(f, "redirect {url}"),
        }
    }
}

/// What the table builder is given for one route.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// Stable identity across table versions (a session name, or `static:<key>`).
    /// Runtime state is carried over by this id.
    pub id: Arc<str>,
    /// Exact hostnames (custom domains, static host routes).
    pub hosts: Vec<String>,
    /// DNS labels served under every base domain: `<label>.<base-domain>`.
    pub labels: Vec<String>,
    /// Path prefixes on the portal host, such as `/lab`.
    pub slugs: Vec<String>,
    pub target: RouteTarget,
    /// Remove the matched slug from the path before forwarding.
    pub strip_prefix: bool,
    /// Send the upstream's own authority as `Host` instead of the client's.
    pub rewrite_host: bool,
    /// Answer 503 instead of forwarding (a paused session).
    pub paused: bool,
    /// Anyone may use it. A route that is not public needs a browser with a
    /// valid cookie for a user its `access` list allows.
    pub public: bool,
    /// Who may use a private route. A private route without one lets nobody in.
    pub access: Option<Arc<AccessList>>,
    /// The session waits for an access link (pending, or evicted): the link
    /// is served, everything else answers 503.
    pub inactive: bool,
    /// For an `https://` upstream: verify its certificate. Off only for apps
    /// with self-signed certificates, by the session's own choice.
    pub tls_verify: bool,
    /// Pass on a request to switch to any protocol (`Upgrade: h2c`, a
    /// custom tunnel), not only to `websocket`: after a switch the gateway
    /// only copies bytes, so another protocol is for an app that needs it.
    pub allow_any_upgrade: bool,
    /// Request headers set for the upstream, the client's of those names
    /// (and under their reserved prefix) removed: what the control plane
    /// vouches for, such as a workshop session's request parameters.
    /// `None` for nearly every route, which then pays nothing for it.
    pub request_headers: Option<Arc<AddedHeaders>>,
    /// A path (and query) the upstream request's path is joined to: a CHP
    /// target's own path (`http://host:port/base`). `None` elsewhere.
    pub target_path: Option<Arc<str>>,
    /// A raw TCP port on the gateway spliced to the upstream's host and
    /// port (a session's workspace port; [`crate::workspace`]).
    pub workspace_port: Option<u16>,
}

impl RouteSpec {
    /// A public route `id` to `target`, matched by nothing yet: add hosts,
    /// labels or slugs with the builder methods below. Every other field has
    /// the value a static route from the configuration file has (no prefix
    /// stripping, the client's Host kept, certificates verified, only
    /// WebSocket upgrades).
    pub fn new(id: impl Into<Arc<str>>, target: RouteTarget) -> RouteSpec {
        RouteSpec {
            id: id.into(),
            hosts: Vec::new(),
            labels: Vec::new(),
            slugs: Vec::new(),
            target,
            strip_prefix: false,
            rewrite_host: false,
            paused: false,
            public: true,
            access: None,
            inactive: false,
            tls_verify: true,
            allow_any_upgrade: false,
            request_headers: None,
            target_path: None,
            workspace_port: None,
        }
    }

    /// Opens raw TCP port `port` on the gateway to the upstream (see
    /// [`RouteSpec::workspace_port`]).
    pub fn workspace_port(mut self, port: u16) -> Self {
        self.workspace_port = Some(port);
        self
    }

    /// Joins the upstream request's path to `path` (see
    /// [`RouteSpec::target_path`]).
    pub fn target_path(mut self, path: impl Into<Arc<str>>) -> Self {
        self.target_path = Some(path.into());
        self
    }

    /// Also matches this exact hostname.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    /// Also matches `<label>.<base-domain>` for every base domain.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.labels.push(label.into());
        self
    }

    /// Also matches this path prefix on the portal host.
    pub fn slug(mut self, slug: impl Into<String>) -> Self {
        self.slugs.push(slug.into());
        self
    }

    pub fn strip_prefix(mut self, on: bool) -> Self {
        self.strip_prefix = on;
        self
    }

    pub fn rewrite_host(mut self, on: bool) -> Self {
        self.rewrite_host = on;
        self
    }

    pub fn paused(mut self, on: bool) -> Self {
        self.paused = on;
        self
    }

    /// Makes the route private: only users `access` allows get in (nobody
    /// without a list).
    pub fn private(mut self, access: Option<Arc<AccessList>>) -> Self {
        self.public = false;
        self.access = access;
        self
    }

    pub fn inactive(mut self, on: bool) -> Self {
        self.inactive = on;
        self
    }

    pub fn tls_verify(mut self, on: bool) -> Self {
        self.tls_verify = on;
        self
    }

    pub fn allow_any_upgrade(mut self, on: bool) -> Self {
        self.allow_any_upgrade = on;
        self
    }

    /// Sets `headers` on every request for the upstream.
    pub fn request_headers(mut self, headers: AddedHeaders) -> Self {
        self.request_headers = Some(Arc::new(headers));
        self
    }
}

/// A compiled route, shared by every table version that contains it
/// unchanged: the spec it was built from (read through `Deref`, so
/// `route.paused` is the spec's) and its runtime state.
///
/// The normalised keys it is filed under are not kept: a table of a million
/// routes would hold each name twice more. Removing a route normalises its
/// spec's names again ([`RouteKeys::of`]).
#[derive(Debug)]
pub struct Route {
    /// The spec it was built from, as validated: what the proxy reads, and
    /// what `GET /api/v1/routes` shows.
    pub spec: RouteSpec,
    pub state: Arc<RouteState>,
}

impl std::ops::Deref for Route {
    type Target = RouteSpec;

    fn deref(&self) -> &RouteSpec {
        &self.spec
    }
}

/// The normalised names a route is filed under in the table's maps.
#[derive(Debug, Default)]
pub(super) struct RouteKeys {
    pub(super) hosts: Vec<Arc<str>>,
    pub(super) labels: Vec<Arc<str>>,
    pub(super) slugs: Vec<Arc<str>>,
}

impl RouteKeys {
    /// The keys of `spec`, which the table already validated: the forms
    /// [`crate::names`] normalises its names to.
    pub(super) fn of(spec: &RouteSpec) -> RouteKeys {
        use crate::names;
        RouteKeys {
            hosts: spec
                .hosts
                .iter()
                .map(|h| names::normalize_name(h).into())
                .collect(),
            labels: spec
                .labels
                .iter()
                .map(|l| names::normalize_name(l).into())
                .collect(),
            slugs: spec
                .slugs
                .iter()
                .filter_map(|s| names::normalize_slug(s).ok().map(Into::into))
                .collect(),
        }
    }
}

/// An absolute `http`/`https` URL that can be sent as a `Location` header.
pub fn is_redirect_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && http::HeaderValue::from_str(url).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_parse_accepts_scheme_host_port_only() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("http://127.0.0.1:9001", Ok("http://127.0.0.1:9001")),
            (
                "https://app.internal:8443/",
                Ok("https://app.internal:8443"),
            ),
            ("http://[::1]:80", Ok("http://[::1]:80")),
            ("ftp://x:1", Err("scheme")),
            ("127.0.0.1:9001", Err("scheme")),
            ("http://h:1/path", Err("path")),
            ("http://u:p@h:1", Err("user info")),
            ("not a url", Err("not a URL")),
        ];
        for (input, want) in cases {
            match (Upstream::parse(input), want) {
                (Ok(u), Ok(s)) => assert_eq!(u.to_string(), *s, "{input}"),
                (Err(e), Err(frag)) => assert!(e.to_string().contains(frag), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn upstream_errors_name_the_input() {
        let cases: &[(&str, &str)] = &[
            (
                "ftp://x:1",
                r#"upstream "ftp://x:1": scheme "ftp" is not supported (use http:// or https://)"#,
            ),
            (
                "/x",
                r#"upstream "/x": missing scheme (http:// or https://)"#,
            ),
            (
                "http://u:p@h:1",
                r#"upstream "http://u:p@h:1": user info is not allowed"#,
            ),
            (
                "http://h:1/path",
                r#"upstream "http://h:1/path": a path or query is not allowed, only scheme://host:port"#,
            ),
            (
                "not a url",
                r#"upstream "not a url": not a URL (invalid uri character)"#,
            ),
        ];
        for (input, want) in cases {
            let err = Upstream::parse(input).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
    }
}
