//! The HTTP client for the control-plane API: one base URL, one token, the
//! API's own request types out and its own response types back.
//!
//! An answer comes back as a [`Reply`], which keeps the body as the server
//! wrote it and parses it only when asked: tables need the typed answer,
//! `--output json` prints the text, so that a script sees exactly what the
//! API answered, fields this build does not know included.

use std::marker::PhantomData;
use std::time::Duration;

use axum::body::Body;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use super::CtlError;

/// The variable `sessiongate serve` reads its admin token from; accepted
/// here too so that one shell can run both.
const ADMIN_TOKEN_ENV: &str = "SESSIONGATE_ADMIN_TOKEN";

/// Long enough for a bulk action over many sessions on a busy server; short
/// enough that a wedged server does not hang a script forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Responses larger than this are refused rather than buffered: the largest
/// legitimate one is a page of 1000 sessions.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The API client: one base URL, one token, JSON in and out.
pub(super) struct ApiClient {
    client: Client<HttpConnector, Body>,
    /// `http://host:port` plus any path prefix, without a trailing `/`.
    base: String,
    token: HeaderValue,
}

/// A 2xx answer to a request whose answer the API documents as a `T`.
///
/// The type travels with the request (`api.get::<Session>(…)`), so that the
/// endpoint and what it answers are named together, but the body is parsed
/// only by [`parse`](Reply::parse): `--output json` never needs to.
pub(super) struct Reply<T> {
    /// The body as the server wrote it: empty (a 204), or valid JSON.
    raw: String,
    /// For the error naming a body that is JSON but not a `T`.
    status: StatusCode,
    server: String,
    answer: PhantomData<fn() -> T>,
}

impl<T> Reply<T> {
    /// The server's own text, for `--output json`.
    pub(super) fn raw(&self) -> &str {
        &self.raw
    }
}

impl<T: DeserializeOwned> Reply<T> {
    /// The typed answer. Fields the type does not know are ignored (a newer
    /// server may add some); a missing or mistyped one is an error naming it.
    pub(super) fn parse(&self) -> Result<T, CtlError> {
        serde_json::from_str(&self.raw).map_err(|e| CtlError::BadResponse {
            server: self.server.clone(),
            reason: format!("{}: not a {}: {e}", self.status, type_label::<T>()),
        })
    }
}

impl ApiClient {
    pub(super) fn new(server: &str, token: Option<&str>) -> Result<ApiClient, CtlError> {
        let base = base_url(server)?;
        let token = token
            .map(str::to_string)
            .or_else(|| std::env::var(ADMIN_TOKEN_ENV).ok())
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                CtlError::Setup(format!(
                    "no API token: pass --token or set SESSIONGATE_TOKEN (or {ADMIN_TOKEN_ENV})"
                ))
            })?;
        let mut token =
            HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                CtlError::Setup("the API token contains characters a header cannot carry".into())
            })?;
        token.set_sensitive(true);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ApiClient {
            client,
            base,
            token,
        })
    }

    pub(super) async fn get<T>(&self, path_and_query: &str) -> Result<Reply<T>, CtlError> {
        self.send(Method::GET, path_and_query, None).await
    }

    pub(super) async fn post<T>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Reply<T>, CtlError> {
        self.send(Method::POST, path, Some(encode(body)?)).await
    }

    /// A POST without a body: the session actions, `stop`, key rotation.
    pub(super) async fn post_empty<T>(&self, path: &str) -> Result<Reply<T>, CtlError> {
        self.send(Method::POST, path, None).await
    }

    pub(super) async fn put<T>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Reply<T>, CtlError> {
        self.send(Method::PUT, path, Some(encode(body)?)).await
    }

    pub(super) async fn delete<T>(&self, path: &str) -> Result<Reply<T>, CtlError> {
        self.send(Method::DELETE, path, None).await
    }

    /// One request: a 2xx answer, or the server's error.
    async fn send<T>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply<T>, CtlError> {
        let uri: Uri = format!("{}{path_and_query}", self.base)
            .parse()
            .map_err(|e| CtlError::Setup(format!("{}{path_and_query}: {e}", self.base)))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.token.clone())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("sessiongate-ctl/", env!("CARGO_PKG_VERSION")),
            );
        let body = match body {
            Some(json) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Body::from(json)
            }
            None => Body::empty(),
        };
        let req = req
            .body(body)
            .map_err(|e| CtlError::Setup(format!("building the request: {e}")))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let reason = client_error_reason(&e);
                if e.is_connect() {
                    self.unreachable(reason)
                } else {
                    self.bad_response(format!("no answer: {reason}"))
                }
            })?;
            let status = resp.status();
            let bytes = axum::body::to_bytes(Body::new(resp.into_body()), MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| self.bad_response(format!("reading the answer: {e}")))?;
            Ok::<_, CtlError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                self.unreachable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))
            })??;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        let raw = String::from_utf8(bytes.to_vec())
            .map_err(|_| self.bad_response(format!("{status}: not UTF-8")))?;
        // Checked here, whatever the output: `--output json` re-indents the
        // text and relies on it being JSON.
        if !raw.trim().is_empty() {
            serde_json::from_str::<IgnoredAny>(&raw)
                .map_err(|e| self.bad_response(format!("{status}: not JSON: {e}")))?;
        }
        Ok(Reply {
            raw,
            status,
            server: self.base.clone(),
            answer: PhantomData,
        })
    }

    fn unreachable(&self, reason: String) -> CtlError {
        CtlError::Unreachable {
            server: self.base.clone(),
            reason,
        }
    }

    fn bad_response(&self, reason: String) -> CtlError {
        CtlError::BadResponse {
            server: self.base.clone(),
            reason,
        }
    }
}

fn encode(body: &impl Serialize) -> Result<Vec<u8>, CtlError> {
    serde_json::to_vec(body).map_err(|e| CtlError::Setup(format!("encoding the request: {e}")))
}

/// `path?query`, without the `?` when there is no query.
pub(super) fn with_query(path: &str, query: &[(&str, String)]) -> Result<String, CtlError> {
    if query.is_empty() {
        return Ok(path.to_string());
    }
    let q = serde_urlencoded::to_string(query)
        .map_err(|e| CtlError::Setup(format!("query string: {e}")))?;
    Ok(format!("{path}?{q}"))
}

/// Percent-encodes one path segment, so that any name reaches the server
/// (which then says what is wrong with it) instead of making a bad URL.
pub(super) fn seg(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@+".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `--server` as a base URL: `http://host[:port][/prefix]`.
pub(crate) fn base_url(server: &str) -> Result<String, CtlError> {
    let bad = |why: &str| CtlError::Setup(format!("--server {server:?}: {why}"));
    let uri: Uri = server
        .parse()
        .map_err(|_| bad("not a URL such as http://127.0.0.1:9090"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported yet (TLS comes later); use an http:// address",
            ))
        }
        _ => return Err(bad("not a URL such as http://127.0.0.1:9090")),
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user information in the URL is not used; pass --token"));
    }
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!("http://{authority}{prefix}"))
}

/// The innermost reason of a client error, in lower case: `connection
/// refused`, not hyper's wrapping of it.
pub(crate) fn client_error_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::Other => lower_first(&io.to_string()),
                kind => kind.to_string(),
            };
        }
        last = s.to_string();
        source = s.source();
    }
    lower_first(&last)
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The part of the API's error body (`api::ErrorBody`) that the CLI prints.
/// Read on its own, not as `ErrorBody`, so that an error from a newer server
/// (one naming a session state this build does not know) still shows its
/// code and message rather than the raw body.
#[derive(Deserialize)]
struct ErrorReply {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    #[serde(default)]
    message: Option<String>,
}

/// The server's `{"error": {"code", "message"}}`, or, from something that
/// is not our API (a proxy in between), its status and the start of its body.
fn api_error(status: u16, body: &[u8]) -> CtlError {
    if let Ok(ErrorReply { error }) = serde_json::from_slice::<ErrorReply>(body) {
        return CtlError::Api {
            status,
            code: error.code,
            message: error.message.unwrap_or_else(|| "-".into()),
        };
    }
    let body = String::from_utf8_lossy(body);
    let first = body.lines().next().unwrap_or("").trim();
    let first: String = first.chars().take(200).collect();
    CtlError::Api {
        status,
        code: StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace(' ', "_"),
        message: if first.is_empty() {
            "no error body".into()
        } else {
            first
        },
    }
}

/// A type's name without its module paths (`Page<Session>`), for an error
/// that says what the answer should have been.
fn type_label<T>() -> String {
    std::any::type_name::<T>()
        .split_inclusive(['<', '>', ',', ' ', '(', ')', '[', ']', ';', '&'])
        .map(|part| {
            let (path, delimiter) = match part.char_indices().last() {
                Some((i, c)) if !c.is_alphanumeric() && c != '_' && c != ':' => part.split_at(i),
                _ => (part, ""),
            };
            let name = path.rsplit("::").next().unwrap_or(path);
            format!("{name}{delimiter}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sessions::Page;
    use crate::session::model::{Group, Session};

    #[test]
    fn server_urls_keep_a_prefix_and_refuse_https() {
        assert_eq!(
            base_url("http://127.0.0.1:9090/").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            base_url("http://cp.example:80/sg/").unwrap(),
            "http://cp.example:80/sg"
        );
        let e = base_url("https://cp.example").unwrap_err().to_string();
        assert!(e.contains("https is not supported yet"), "{e}");
        for bad in [
            "127.0.0.1:9090",
            "ftp://x",
            "http://",
            "http://a/?x=1",
            "http://u:p@a/",
            "not a url",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        for (name, want) in [
            ("lab-1", "lab-1"),
            ("ann.lee@example.org", "ann.lee@example.org"),
            ("a b/c?d", "a%20b%2Fc%3Fd"),
            ("é", "%C3%A9"),
        ] {
            assert_eq!(seg(name), want, "{name:?}");
        }
    }

    #[test]
    fn api_errors_read_the_error_body_or_name_the_status() {
        let cases: &[(u16, &[u8], &str)] = &[
            (
                409,
                br#"{"error":{"code":"invalid_transition","message":"session \"x\": cannot pause a session that is paused","state":"paused"}}"#,
                "409 invalid_transition: session \"x\": cannot pause a session that is paused",
            ),
            // A newer server's state does not hide the reason.
            (
                409,
                br#"{"error":{"code":"invalid_transition","message":"no","state":"hibernating"}}"#,
                "409 invalid_transition: no",
            ),
            (418, br#"{"error":{"code":"teapot"}}"#, "418 teapot: -"),
            (
                502,
                b"<html>bad gateway</html>\nmore",
                "502 bad_gateway: <html>bad gateway</html>",
            ),
            (500, b"", "500 internal_server_error: no error body"),
        ];
        for (status, body, want) in cases {
            assert_eq!(api_error(*status, body).to_string(), *want);
        }
    }

    #[test]
    fn an_answer_that_is_not_the_documented_type_names_what_is_wrong() {
        let reply = |raw: &str| Reply::<Session> {
            raw: raw.to_string(),
            status: StatusCode::OK,
            server: "http://cp".into(),
            answer: PhantomData,
        };
        let e = reply(r#"{"name": "lab"}"#).parse().unwrap_err().to_string();
        assert!(
            e.starts_with("http://cp: 200 OK: not a Session: missing field `kind`"),
            "{e}"
        );
        let e = reply("").parse().unwrap_err().to_string();
        assert!(
            e.starts_with("http://cp: 200 OK: not a Session: EOF"),
            "{e}"
        );
    }

    #[test]
    fn type_labels_drop_module_paths() {
        assert_eq!(type_label::<Session>(), "Session");
        assert_eq!(type_label::<Page<Session>>(), "Page<Session>");
        assert_eq!(type_label::<Vec<Group>>(), "Vec<Group>");
        assert_eq!(type_label::<(u8, String)>(), "(u8, String)");
    }

    #[test]
    fn queries_are_url_encoded_and_absent_when_empty() {
        assert_eq!(with_query("/p", &[]).unwrap(), "/p");
        let q = [("q", "a b".to_string()), ("state", "running,paused".into())];
        assert_eq!(
            with_query("/p", &q).unwrap(),
            "/p?q=a+b&state=running%2Cpaused"
        );
    }
}
