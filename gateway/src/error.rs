//! Every way a proxied request can fail, mapped to a status in one place and
//! rendered as a short HTML page for browsers or JSON for API clients.
//!
//! An error's `Display` is for the log and names everything, the
//! upstream's address and its connection's own error text included. The
//! client is told [`ProxyError::public_message`], which never names them:
//! the address of a session's app is the gateway's business, and the text
//! of a connection error can carry host names and addresses too.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::access::ActivationError;
use crate::body::ProxyBody;
use crate::headers::X_REQUEST_ID;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("missing Host header")]
    MissingHost,
    #[error("two Host headers: a request is for one host")]
    DuplicateHost,
    #[error("invalid Host header {0:?}")]
    InvalidHost(String),
    #[error("no route for {host}{path}")]
    NoRoute { host: String, path: String },
    #[error("session {0} is paused")]
    Paused(String),
    /// A gateway that follows a control plane and has no route table yet,
    /// from its file or its stream: it cannot tell a session from a typo.
    #[error("this gateway has no route table yet: it is waiting for its control plane")]
    NoTable,
    #[error("{0} needs a sign-in: open it with an access link from the portal that manages it")]
    SignInRequired(String),
    #[error("user {user} may not open {route}")]
    Forbidden { user: String, route: String },
    #[error("{0} is not active: open it with an access link from the portal that manages it")]
    Inactive(String),
    #[error(transparent)]
    Activation(crate::access::ActivationError),
    /// A revocation while the request was with its upstream: the route was
    /// removed, or (for a WebSocket) moved to another target. The answer
    /// from the old one is not passed on; a retry gets the route as it is.
    #[error("{route} {what} while the request was in flight")]
    RouteChanged { route: String, what: &'static str },
    #[error("this connection's certificate (for {sni:?}) does not cover {host}; open a new connection for it")]
    Misdirected { host: String, sni: String },
    /// No connection: `cause` in the gateway's words (`connection refused`),
    /// `reason` as the system said it, for the log.
    #[error("upstream {upstream}: {reason}")]
    UpstreamUnreachable {
        upstream: String,
        cause: &'static str,
        reason: String,
    },
    #[error("upstream {upstream}: connect timed out after {secs}s")]
    UpstreamConnectTimeout { upstream: String, secs: u64 },
    #[error("upstream {upstream}: no response within {secs}s")]
    UpstreamTimeout { upstream: String, secs: u64 },
    /// A response the gateway itself found wrong, such as a switch to a
    /// protocol the client did not ask for; `reason` is the gateway's own
    /// description and may be shown.
    #[error("upstream {upstream}: {reason}")]
    UpstreamProtocol { upstream: String, reason: String },
    /// The connection failed while the request or response was on it:
    /// `cause` in the gateway's words, `detail` the HTTP client's error
    /// text, for the log.
    #[error("upstream {upstream}: {cause} ({detail})")]
    UpstreamBroken {
        upstream: String,
        cause: &'static str,
        detail: String,
    },
    /// The TLS handshake failed: `cause` in the gateway's words (`its
    /// certificate has expired`), `reason` with the TLS library's detail.
    #[error("upstream {upstream}: TLS: {reason}")]
    UpstreamTls {
        upstream: String,
        cause: &'static str,
        reason: String,
    },
    #[error("upstream {0}: https upstreams are not supported by this build yet")]
    UpstreamSchemeUnsupported(String),
    /// A valid request whose upstream URI could not be made (its path with
    /// the slug taken off, or the whole URI). 500: no upstream was asked, so
    /// the fault is the gateway's own rewrite, not an upstream's answer
    /// (502); and there is a route, so not 404.
    #[error("cannot build the upstream URI for path {path:?}: {reason}")]
    UpstreamUri { path: String, reason: String },
}

impl ProxyError {
    /// The one mapping from error to status.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost | ProxyError::DuplicateHost | ProxyError::InvalidHost(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::SignInRequired(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Inactive(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Activation(e) => match e {
                ActivationError::InvalidToken
                | ActivationError::WrongSession
                | ActivationError::AlreadyUsed
                | ActivationError::NotAllowed => StatusCode::FORBIDDEN,
                ActivationError::Gone { .. } => StatusCode::GONE,
                ActivationError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                ActivationError::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            },
            ProxyError::Paused(_) | ProxyError::RouteChanged { .. } | ProxyError::NoTable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamBroken { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamSchemeUnsupported(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout { .. } | ProxyError::UpstreamTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::UpstreamUri { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing_host",
            ProxyError::DuplicateHost => "duplicate_host",
            ProxyError::InvalidHost(_) => "invalid_host",
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::Paused(_) => "session_paused",
            ProxyError::NoTable => "no_route_table",
            ProxyError::SignInRequired(_) => "sign_in_required",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::Misdirected { .. } => "misdirected_request",
            ProxyError::Inactive(_) => "session_inactive",
            ProxyError::RouteChanged { .. } => "route_changed",
            ProxyError::Activation(e) => match e {
                ActivationError::InvalidToken => "access_link_invalid",
                ActivationError::WrongSession => "access_link_wrong_session",
                ActivationError::AlreadyUsed => "access_link_used",
                ActivationError::NotAllowed => "forbidden",
                ActivationError::Gone { .. } => "session_gone",
                ActivationError::Unavailable(_) => "access_unavailable",
                ActivationError::TooManyFailures { .. } => "too_many_failures",
            },
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamConnectTimeout { .. } => "upstream_connect_timeout",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamProtocol { .. } | ProxyError::UpstreamBroken { .. } => {
                "upstream_error"
            }
            ProxyError::UpstreamTls { .. } => "upstream_tls",
            ProxyError::UpstreamSchemeUnsupported(_) => "upstream_unsupported",
            ProxyError::UpstreamUri { .. } => "upstream_uri",
        }
    }

    /// What the client is told: the log's message, except for an
    /// upstream's failure, which is told without the upstream's address or
    /// its connection's error text (see the module's documentation).
    pub fn public_message(&self) -> String {
        const APP: &str = "the session's app";
        match self {
            ProxyError::UpstreamUnreachable { cause, .. } => {
                format!("{APP} could not be reached: {cause}")
            }
            ProxyError::UpstreamConnectTimeout { .. } => {
                format!("{APP} did not accept a connection in time")
            }
            ProxyError::UpstreamTimeout { .. } => format!("{APP} sent no response in time"),
            ProxyError::UpstreamProtocol { reason, .. } => format!("{APP} {reason}"),
            ProxyError::UpstreamBroken { cause, .. } => format!("{APP} {cause}"),
            ProxyError::UpstreamTls { cause, .. } => format!("{APP} was refused over TLS: {cause}"),
            ProxyError::UpstreamSchemeUnsupported(_) => {
                format!("{APP} speaks https, which this build does not support")
            }
            _ => self.to_string(),
        }
    }

    /// Whether the fault is on the server side, an upstream's or the
    /// gateway's own (logged at warn), rather than the client's.
    pub fn is_upstream(&self) -> bool {
        self.status().is_server_error()
            && !matches!(
                self,
                ProxyError::Paused(_)
                    | ProxyError::Inactive(_)
                    | ProxyError::Activation(_)
                    | ProxyError::RouteChanged { .. }
            )
    }
}

/// Whether the client prefers JSON: it names `application/json` (or `+json`) in
/// `Accept` and does not name `text/html` first.
pub fn wants_json(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    for part in accept.split(',') {
        let media = part.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("text/html") {
            return false;
        }
        if media.eq_ignore_ascii_case("application/json") || media.ends_with("+json") {
            return true;
        }
    }
    false
}

/// Renders `err` for the client. `request_id` is echoed in the body and header.
pub fn error_response(
    err: &ProxyError,
    json: bool,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let status = err.status();
    let message = err.public_message();
    let rid = request_id.to_str().unwrap_or("");
    let (content_type, body) = if json {
        let v = serde_json::json!({
            "error": {"code": err.code(), "message": message, "request_id": rid}
        });
        ("application/json", v.to_string())
    } else {
        let reason = status.canonical_reason().unwrap_or("Error");
        let body = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\
             <body><h1>{code} {reason}</h1><p>{msg}</p><p><small>request id {rid} · sessiongate</small></p></body></html>\n",
            code = status.as_u16(),
            reason = reason,
            msg = html_escape(&message),
            rid = html_escape(rid),
        );
        ("text/html; charset=utf-8", body)
    };
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(&X_REQUEST_ID, request_id.clone());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    if let ProxyError::Activation(ActivationError::TooManyFailures { retry_after_secs }) = err {
        h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    resp
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wants_json_cases() {
        let cases: &[(Option<&str>, bool)] = &[
            (None, false),
            (Some("application/json"), true),
            (Some("application/problem+json"), true),
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                false,
            ),
            (Some("*/*"), false),
            (Some("application/json, text/html"), true),
        ];
        for (accept, want) in cases {
            let v = accept.map(|s| HeaderValue::from_str(s).unwrap());
            assert_eq!(wants_json(v.as_ref()), *want, "{accept:?}");
        }
    }

    #[test]
    fn an_upstream_uri_that_cannot_be_built_is_the_gateways_fault() {
        let err = ProxyError::UpstreamUri {
            path: "/lab/x".into(),
            reason: "invalid uri character".into(),
        };
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.is_upstream());
        let resp = error_response(&err, true, &HeaderValue::from_static("rid"));
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.into_body().into_full_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_uri");
        assert_eq!(
            v["error"]["message"],
            r#"cannot build the upstream URI for path "/lab/x": invalid uri character"#
        );
    }

    #[test]
    fn upstream_failures_are_told_without_the_upstream_or_its_error_text() {
        let upstream = "http://10.1.2.3:8888".to_string();
        let cases = [
            (
                ProxyError::UpstreamUnreachable {
                    upstream: upstream.clone(),
                    cause: "could not connect",
                    reason: "failed to lookup address information: app.internal".into(),
                },
                "the session's app could not be reached: could not connect",
            ),
            (
                ProxyError::UpstreamConnectTimeout {
                    upstream: upstream.clone(),
                    secs: 5,
                },
                "the session's app did not accept a connection in time",
            ),
            (
                ProxyError::UpstreamTimeout {
                    upstream: upstream.clone(),
                    secs: 60,
                },
                "the session's app sent no response in time",
            ),
            (
                ProxyError::UpstreamBroken {
                    upstream: upstream.clone(),
                    cause: "sent a response that is not valid HTTP",
                    detail: "invalid HTTP header parsed from 10.1.2.3".into(),
                },
                "the session's app sent a response that is not valid HTTP",
            ),
            (
                ProxyError::UpstreamTls {
                    upstream: upstream.clone(),
                    cause: "its certificate was refused",
                    reason: "invalid certificate: names app.internal".into(),
                },
                "the session's app was refused over TLS: its certificate was refused",
            ),
            (
                ProxyError::UpstreamSchemeUnsupported(upstream.clone()),
                "the session's app speaks https, which this build does not support",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.public_message(), want);
            // The log keeps the address.
            assert!(err.to_string().contains("10.1.2.3:8888"), "{err}");
            for json in [true, false] {
                let resp = error_response(&err, json, &HeaderValue::from_static("rid-7"));
                let body = resp.into_body().into_full_bytes().unwrap();
                let body = std::str::from_utf8(&body).unwrap();
                assert!(body.contains("rid-7"), "{body}");
                for leak in ["10.1.2.3", "8888", "app.internal"] {
                    assert!(!body.contains(leak), "{leak} in {body}");
                }
            }
        }
    }

    #[test]
    fn a_route_changed_in_flight_is_a_retry_not_an_upstream_fault() {
        let err = ProxyError::RouteChanged {
            route: "session:nb".into(),
            what: "was removed",
        };
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code(), "route_changed");
        assert!(!err.is_upstream());
        assert_eq!(
            err.to_string(),
            "session:nb was removed while the request was in flight"
        );
    }

    #[test]
    fn html_page_escapes_the_message() {
        let err = ProxyError::NoRoute {
            host: "<script>".into(),
            path: "/".into(),
        };
        let resp = error_response(&err, false, &HeaderValue::from_static("rid"));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["x-request-id"], "rid");
        let body = resp.into_body().into_full_bytes().unwrap();
        let body = std::str::from_utf8(&body).unwrap();
        assert!(body.contains("&lt;script&gt;"), "{body}");
        assert!(!body.contains("<script>"));
    }
}
