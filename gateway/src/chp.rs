//! configurable-http-proxy's routing rules, on this gateway's table and
//! proxy (`sessiongate chp`, `CHP-COMPAT.md` section 4).
//!
//! CHP routes by the longest whole-segment prefix of the *percent-decoded*
//! path (with `/<host>` in front in host-routing mode), with `/` as the
//! fallback: exactly what the table's slug map does, except that CHP's keys
//! are decoded text (`/user/has sp@ce`, `/@/space word`, `/秀樹`) where
//! slugs are URL paths. So a CHP key is filed as its *canonical path*: the
//! decoded text split on `/`, each segment percent-encoded the one same way
//! ([`canonical`]). Two paths decode to the same text exactly when their
//! canonical paths are equal, so a request's canonical path finds the key
//! CHP's trie would have found.

use std::fmt::Write as _;

/// The bytes a canonical segment keeps as they are: RFC 3986's unreserved
/// characters and the sub-delimiters, `:` and `@` (a `pchar` without `%`,
/// which is always encoded, as a decoded text may hold a literal one).
fn keeps(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// `encodeURIComponent`: every byte but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`
/// as `%XX`.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A CHP target split into its upstream and its path and query (`""`
/// when it has none). `http+unix://` (or `unix+http://`) targets name a
/// socket by its percent-encoded path, which `http::Uri` does not parse.
pub fn split_target(target: &str) -> Result<(crate::table::Upstream, String), String> {
    use crate::table::Upstream;
    let unix = ["http+unix://", "unix+http://"]
        .iter()
        .find_map(|p| target.strip_prefix(p));
    if let Some(rest) = unix {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let upstream =
            Upstream::unix_socket(&rest[..end]).map_err(|e| format!("target {target:?}: {e}"))?;
        return Ok((upstream, rest[end..].to_string()));
    }
    let uri: http::Uri = target
        .parse()
        .map_err(|e| format!("target {target:?}: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!("target {target:?}: not an absolute URL"));
    };
    let upstream = Upstream::parse(&format!("{scheme}://{authority}"))
        .map_err(|e| format!("target {target:?}: {e}"))?;
    let path = uri.path_and_query().map_or("", |p| p.as_str()).to_string();
    Ok((upstream, path))
}

/// CHP's `trimPrefix`: a leading `/`, and one trailing `/` dropped (but
/// `/` stays).
pub fn clean_key(key: &str) -> String {
    let mut k = if key.starts_with('/') {
        key.to_string()
    } else {
        format!("/{key}")
    };
    if k.len() > 1 && k.ends_with('/') {
        k.pop();
    }
    k
}

/// The canonical path of decoded `text` (a key, or a decoded request path):
/// leading and trailing slashes dropped as CHP's trie drops them, each
/// segment encoded. The root is `/`.
pub fn canonical(text: &str) -> String {
    let trimmed = text.trim_matches('/');
    if trimmed.is_empty() {
        return "/".into();
    }
    let mut out = String::with_capacity(trimmed.len() + 8);
    for segment in trimmed.split('/') {
        out.push('/');
        for &b in segment.as_bytes() {
            if keeps(b) {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Percent-decodes `raw` as JavaScript's `decodeURIComponent` does:
/// `None` for a `%` not followed by two hex digits, or bytes that are not
/// UTF-8 (CHP answers those with 500).
pub fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The slug a request is looked up by: `/<host>` (host-routing mode, the
/// `Host` without its port, as sent) and the decoded path, canonical.
/// `None` when the path does not decode.
pub fn request_slug(host: Option<&str>, raw_path: &str) -> Option<String> {
    let path = decode(raw_path)?;
    Some(match host {
        Some(h) => canonical(&format!("/{h}{path}")),
        None => canonical(&path),
    })
}

/// The slug a CHP key (decoded, as the API stores it) is filed under.
pub fn key_slug(key: &str) -> String {
    canonical(key)
}

/// Joins a target's path and the request's path (and query) as
/// http-proxy's `urlJoin` does: joined with `/`, every run of slashes in
/// the path made one, the query kept as it is.
pub fn join_paths(base: &str, rest: &str) -> String {
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let joined = [base, path]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let mut out = String::with_capacity(joined.len() + rest.len());
    for c in joined.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets_are_read_as_node_s_url_parser_reads_them() {
        for (raw, node) in [
            ("/user/ann/x?y=1", "/user/ann/x?y=1"),
            ("/user/ann/../annie/x", "/user/annie/x"),
            ("/user/ann/%2e%2E/annie/x", "/user/annie/x"),
            ("/user/ann/.%2e/annie/x", "/user/annie/x"),
            ("/user/./ann/x", "/user/ann/x"),
            ("/user\\ann/x", "/user/ann/x"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/", "/a/b/"),
            ("/a//b", "/a//b"),
            ("/a/{b}\"c`", "/a/%7Bb%7D%22c%60"),
            ("/a/x%20y", "/a/x%20y"),
            ("/a/caf\u{e9}", "/a/caf%C3%A9"),
            ("/q?x='y'&z={}", "/q?x=%27y%27&z={}"),
            ("/q/../r?a/../b", "/r?a/../b"),
            ("/file.js", "/file.js"),
            ("/.well-known/x", "/.well-known/x"),
        ] {
            assert_eq!(url_path_and_query(raw), node, "{raw:?}");
        }
    }

    #[test]
    fn unix_targets_keep_their_socket_path_and_show_as_given() {
        let (u, path) =
            split_target("http+unix://%2Ftmp%2Fa%20b.sock/base?x=1").expect("a unix target");
        assert_eq!(
            u.unix_path(),
            Some(std::path::PathBuf::from("/tmp/a b.sock"))
        );
        assert_eq!(path, "/base?x=1");
        assert_eq!(u.to_string(), "http+unix://%2Ftmp%2Fa%20b.sock");
        let (same, _) =
            split_target("unix+http://%2Ftmp%2Fa%20b.sock").expect("the other spelling");
        assert_eq!(same, u, "one pool per socket, whichever spelling");
        assert!(split_target("http+unix:///x").is_err(), "no socket path");
        let (tcp, path) = split_target("http://127.0.0.1:8888/p").expect("a TCP target");
        assert_eq!((tcp.unix_path(), path.as_str()), (None, "/p"));
    }

    #[test]
    fn keys_are_cleaned_as_chps_trim_prefix_cleans_them() {
        for (key, want) in [
            ("/", "/"),
            ("", "/"),
            ("user/ann", "/user/ann"),
            ("/user/ann/", "/user/ann"),
            ("/user/ann//", "/user/ann/"),
        ] {
            assert_eq!(clean_key(key), want, "{key:?}");
        }
    }

    #[test]
    fn paths_that_decode_alike_have_one_canonical_slug() {
        let cases = [
            ("/user/has%20sp@ce/", "/user/has sp@ce"),
            ("/%40/space%20word/x", "/@/space word/x"),
            ("/%E7%A7%80%E6%A8%B9/", "/秀樹"),
            ("/user/%7ETestJH", "/user/~TestJH"),
            ("/a%2Fb", "/a/b"),
            ("/", "/"),
            ("//x//", "/x"),
        ];
        for (raw, key) in cases {
            assert_eq!(
                request_slug(None, raw).unwrap(),
                key_slug(key),
                "{raw:?} should find {key:?}"
            );
        }
        assert_eq!(key_slug("/user/has sp@ce"), "/user/has%20sp@ce");
        assert_eq!(key_slug("/100%"), "/100%25");
        assert_eq!(
            request_slug(Some("example.com"), "/user/ann").unwrap(),
            "/example.com/user/ann"
        );
    }

    #[test]
    fn undecodable_paths_are_refused() {
        for raw in ["/%", "/%zz", "/%C3"] {
            assert!(request_slug(None, raw).is_none(), "{raw:?}");
        }
    }

    #[test]
    fn only_a_redirect_to_the_target_itself_is_rewritten() {
        let flavor = ChpFlavor {
            auto_rewrite: true,
            protocol_rewrite: Some("https".into()),
            ..ChpFlavor::default()
        };
        let host = HeaderValue::from_static("hub.example:8000");
        for (status, location, want) in [
            (
                302,
                "http://10.0.0.5:8888/x?y=1",
                "https://hub.example:8000/x?y=1",
            ),
            (301, "http://other.example/x", "http://other.example/x"),
            (200, "http://10.0.0.5:8888/x", "http://10.0.0.5:8888/x"),
            (307, "/relative", "/relative"),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::LOCATION, HeaderValue::from_static(location));
            rewrite_location(
                &flavor,
                StatusCode::from_u16(status).unwrap(),
                &mut headers,
                "10.0.0.5:8888",
                &host,
            );
            assert_eq!(headers[http::header::LOCATION], want, "{status} {location}");
        }
    }

    #[test]
    fn target_and_request_paths_join_with_one_slash() {
        for (base, rest, want) in [
            ("", "/user/ann/x%20y?q=1", "/user/ann/x%20y?q=1"),
            ("/base", "/user/ann/x%20y?q=1", "/base/user/ann/x%20y?q=1"),
            ("/base/", "/user", "/base/user"),
            ("/base", "/", "/base/"),
            ("/base", "/?q=1", "/base/?q=1"),
            ("/", "/x", "/x"),
            ("/", "//a//b?x=//", "/a/b?x=//"),
        ] {
            assert_eq!(join_paths(base, rest), want, "{base:?} + {rest:?}");
        }
    }
}

// ---- the proxy's CHP flavour ----

use std::path::PathBuf;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};

use crate::body::ProxyBody;

/// Where error pages come from (`--error-target`, `--error-path`, or the
/// built-in pages).
#[derive(Clone, Debug, Default)]
pub enum ErrorPages {
    #[default]
    Builtin,
    /// `GET <url>/<code>?url=<the request's URL>`; its `Content-Type`,
    /// `Content-Encoding` and body are answered with our status.
    Target(String),
    /// `<dir>/<code>.html`, else `<dir>/error.html`.
    Dir(PathBuf),
}

/// What `sessiongate chp` changes in the proxy: CHP's routing, upstream
/// URLs, forwarding headers, errors and activity rules.
#[derive(Clone, Debug)]
pub struct ChpFlavor {
    /// `--host-routing`: the `Host` (without its port) is the first segment.
    pub host_routing: bool,
    /// Off with `--no-prepend-path`: the target's path is not put in front.
    pub prepend_path: bool,
    /// Off with `--no-include-prefix`: the matched prefix is cut off.
    pub include_prefix: bool,
    /// Off with `--no-x-forward`: no `X-Forwarded-*` added.
    pub x_forward: bool,
    /// `--custom-header`s, set on every proxied request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub errors: ErrorPages,
    /// `--auto-rewrite`: a redirect to the target's own host points at the
    /// `Host` the client used instead.
    pub auto_rewrite: bool,
    /// `--protocol-rewrite`: such a redirect's scheme becomes this one.
    pub protocol_rewrite: Option<String>,
}

impl Default for ChpFlavor {
    fn default() -> Self {
        ChpFlavor {
            host_routing: false,
            prepend_path: true,
            include_prefix: true,
            x_forward: true,
            headers: Vec::new(),
            errors: ErrorPages::Builtin,
            auto_rewrite: false,
            protocol_rewrite: None,
        }
    }
}

/// http-proxy's `setRedirectHostRewrite`: on a 201, 301, 302, 307 or 308
/// whose absolute `Location` names the target's own host and port, the
/// host becomes the client's `Host` (`--auto-rewrite`) and the scheme
/// `--protocol-rewrite`'s. Any other `Location` is left alone.
pub fn rewrite_location(
    flavor: &ChpFlavor,
    status: StatusCode,
    headers: &mut http::HeaderMap,
    target_authority: &str,
    client_host: &HeaderValue,
) {
    if !flavor.auto_rewrite && flavor.protocol_rewrite.is_none() {
        return;
    }
    if !matches!(status.as_u16(), 201 | 301 | 302 | 307 | 308) {
        return;
    }
    let Some(location) = headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let Ok(uri) = location.parse::<http::Uri>() else {
        return;
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return;
    };
    if !authority.as_str().eq_ignore_ascii_case(target_authority) {
        return;
    }
    let host = match (flavor.auto_rewrite, client_host.to_str()) {
        (true, Ok(h)) => h,
        _ => authority.as_str(),
    };
    let scheme = flavor
        .protocol_rewrite
        .as_deref()
        .map_or(scheme, |p| p.trim_end_matches(':'));
    let rest = uri.path_and_query().map_or("", |p| p.as_str());
    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{rest}")) {
        headers.insert(http::header::LOCATION, v);
    }
}

/// The exact URL CHP answers itself, before routing.
pub const HEALTHZ: &str = "/_chp_healthz";

/// The prefix of a CHP route's id: `chp:<key>`.
pub const ROUTE_ID_PREFIX: &str = "chp:";

/// `/_chp_healthz`'s answer.
pub fn healthz() -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(bytes::Bytes::from_static(
        br#"{"status":"OK"}"#,
    )));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// CHP's status for a failure: no route 404, an upstream that failed in
/// any way 503 (where this gateway says 502 or 504), a route whose target
/// cannot be proxied to (not a URL, or a scheme other than `http`, `https`
/// and `http+unix`: the only inactive routes of this mode) 500, as CHP's
/// handler throws on it; the rest as they are.
pub fn status_of(err: &crate::error::ProxyError) -> StatusCode {
    if matches!(err, crate::error::ProxyError::Inactive(_)) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let s = err.status();
    match s {
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => StatusCode::SERVICE_UNAVAILABLE,
        _ => s,
    }
}

fn builtin(code: StatusCode) -> Response<ProxyBody> {
    let reason = code.canonical_reason().unwrap_or("Error");
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{c} {reason}</title></head>\
         <body><h1>{c}: {reason}</h1></body></html>\n",
        c = code.as_u16()
    );
    let mut resp = Response::new(ProxyBody::full(html.into_bytes()));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    resp
}

/// The page for `code`, for the request to `url` (its path and query):
/// from the error target, else the error directory, else built in; if the
/// error target fails, the plain status text, as CHP answers.
pub async fn error_page(
    flavor: &ChpFlavor,
    client: &crate::UpstreamClient,
    code: StatusCode,
    url: &str,
) -> Response<ProxyBody> {
    match &flavor.errors {
        ErrorPages::Builtin => builtin(code),
        ErrorPages::Dir(dir) => {
            for name in [format!("{}.html", code.as_u16()), "error.html".into()] {
                if let Ok(bytes) = tokio::fs::read(dir.join(&name)).await {
                    let mut resp = Response::new(ProxyBody::full(bytes));
                    *resp.status_mut() = code;
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
                    return resp;
                }
            }
            builtin(code)
        }
        ErrorPages::Target(base) => match fetch_error_page(client, base, code, url).await {
            Some(resp) => resp,
            None => {
                let text = code.canonical_reason().unwrap_or("Error");
                let mut resp = Response::new(ProxyBody::full(text.as_bytes().to_vec()));
                *resp.status_mut() = code;
                resp
            }
        },
    }
}

async fn fetch_error_page(
    client: &crate::UpstreamClient,
    base: &str,
    code: StatusCode,
    url: &str,
) -> Option<Response<ProxyBody>> {
    use http_body_util::BodyExt as _;
    let base = if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    };
    let target = format!("{base}{}?url={}", code.as_u16(), form_escape(url));
    // Through the proxy's own client: an error target may be `https://`
    // with client certificates (JupyterHub's internal_ssl) or `http+unix://`.
    let (upstream, path) = split_target(&target).ok()?;
    let uri = http::Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(path)
        .build()
        .ok()?;
    let host = if upstream.unix_path().is_some() {
        HeaderValue::from_static("localhost")
    } else {
        HeaderValue::from_str(upstream.authority.as_str()).ok()?
    };
    let req = Request::get(uri)
        .header(http::header::HOST, host)
        .body(crate::body::UpstreamRequestBody::empty())
        .ok()?;
    let fetch = async {
        let sent = client.send(&upstream, true, false, req, None).await.ok()?;
        let (parts, body) = sent.response.into_parts();
        let bytes = body.collect().await.ok()?.to_bytes();
        if let Some(r) = sent.reuse {
            r.put_back();
        }
        Some((parts, bytes))
    };
    let (parts, bytes) = tokio::time::timeout(std::time::Duration::from_secs(10), fetch)
        .await
        .ok()??;
    let mut out = Response::new(ProxyBody::full(bytes));
    *out.status_mut() = code;
    for h in [CONTENT_TYPE, CONTENT_ENCODING] {
        if let Some(v) = parts.headers.get(&h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    out.headers_mut().remove(CONTENT_LENGTH);
    Some(out)
}

/// `application/x-www-form-urlencoded` serialisation of a query value, as
/// `URLSearchParams.set` writes it.
fn form_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len() * 3);
    for &b in v.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A WebSocket's failure as CHP answers it: the status line and
/// `Content-Length: 0`, nothing else.
pub fn bare_status(code: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// The headers `--no-x-forward` leaves as the client sent them.
pub fn is_forwarding(name: &str) -> bool {
    name.starts_with("x-forwarded-") || name == "forwarded" || name == "x-real-ip"
}

/// http-proxy's `xfwd`: `X-Forwarded-For`, `-Port` and `-Proto` each the
/// client's value (if any) then `,` and ours; `X-Forwarded-Host` the
/// client's, else its `Host`. The port is the one in `Host` (80 without).
pub fn append_forwarding(
    headers: &mut http::HeaderMap,
    client: std::net::IpAddr,
    host: &str,
    proto: &str,
) {
    let port = host
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or(if proto == "https" || proto == "wss" {
            "443"
        } else {
            "80"
        });
    let ip = match client {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        v4 => v4.to_string(),
    };
    for (name, ours) in [
        ("x-forwarded-for", ip.as_str()),
        ("x-forwarded-port", port),
        ("x-forwarded-proto", proto),
    ] {
        // A unix-socket client has no address (CHP appends `undefined`).
        if name == "x-forwarded-for" && client.is_unspecified() {
            continue;
        }
        let value = match headers.get(name).and_then(|v| v.to_str().ok()) {
            Some(old) if !old.is_empty() => format!("{old},{ours}"),
            _ => ours.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    if !headers.contains_key("x-forwarded-host") {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(HeaderName::from_static("x-forwarded-host"), v);
        }
    }
}

/// A byte the WHATWG URL parser percent-encodes in a path: C0 controls,
/// space, `"`, `#`, `<`, `>`, `?`, `` ` ``, `{`, `}`, DEL and non-ASCII.
fn path_escaped(b: u8) -> bool {
    b <= 0x20 || b >= 0x7f || b"\"#<>?`{}".contains(&b)
}

/// As [`path_escaped`], for a query of a special URL: C0 controls, space,
/// `"`, `#`, `<`, `>`, `'`, DEL and non-ASCII.
fn query_escaped(b: u8) -> bool {
    b <= 0x20 || b >= 0x7f || b"\"#<>'".contains(&b)
}

fn single_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

fn double_dot(seg: &str) -> bool {
    matches!(seg.len(), 2 | 4 | 6)
        && (seg == ".."
            || seg.eq_ignore_ascii_case(".%2e")
            || seg.eq_ignore_ascii_case("%2e.")
            || seg.eq_ignore_ascii_case("%2e%2e"))
}

/// What Node's `new URL(target, base)` makes of a request target's path
/// and query (`pathname + search`), which CHP routes by and http-proxy-3
/// forwards: `\` is a `/`, `.` and `..` segments (`%2e` too) are resolved,
/// and the bytes the WHATWG URL standard escapes are percent-encoded (`%`
/// sequences already there are kept). Borrowed when nothing changes, which
/// is every ordinary request.
pub fn url_path_and_query(raw: &str) -> std::borrow::Cow<'_, str> {
    let (path, query) = match raw.find('?') {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    let plain_path = path.starts_with('/')
        && !path.bytes().any(|b| b == b'\\' || path_escaped(b))
        && !path.split('/').any(|s| single_dot(s) || double_dot(s));
    let plain_query = query.is_none_or(|q| !q.bytes().any(query_escaped));
    if plain_path && plain_query {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut segments: Vec<String> = Vec::new();
    let body = path.strip_prefix(['/', '\\']).unwrap_or(path);
    let parts: Vec<&str> = body.split(['/', '\\']).collect();
    let last = parts.len() - 1;
    for (i, seg) in parts.iter().enumerate() {
        if double_dot(seg) {
            segments.pop();
            if i == last {
                segments.push(String::new());
            }
        } else if single_dot(seg) {
            if i == last {
                segments.push(String::new());
            }
        } else {
            let mut out = String::with_capacity(seg.len());
            for &b in seg.as_bytes() {
                if path_escaped(b) {
                    let _ = write!(out, "%{b:02X}");
                } else {
                    out.push(b as char);
                }
            }
            segments.push(out);
        }
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if segments.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        for &b in q.as_bytes() {
            if query_escaped(b) {
                let _ = write!(out, "%{b:02X}");
            } else {
                out.push(b as char);
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The upstream request's path and query: the target's path joined to the
/// request's ([`join_paths`]), and the target's query in front of the
/// request's, as http-proxy-3 builds it.
pub fn upstream_path(target: &str, request: &str) -> String {
    let (tpath, tquery) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let (rpath, rquery) = match request.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (request, None),
    };
    let mut out = join_paths(tpath, rpath);
    let query = match (tquery.filter(|q| !q.is_empty()), rquery) {
        (Some(t), Some(r)) if !r.is_empty() => Some(format!("{t}&{r}")),
        (Some(t), _) => Some(t.to_string()),
        (None, Some(r)) => Some(r.to_string()),
        (None, None) => None,
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(&q);
    }
    out
}

/// The flavour, shared by the listeners of a `sessiongate chp`.
pub type SharedFlavor = Arc<ChpFlavor>;
