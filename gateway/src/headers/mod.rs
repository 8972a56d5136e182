//! Header operations on the way up and down, one concern per file (as
//! rpxy's `header_ops`), so that each rule can be read and tested alone:
//!
//! - `hop`: hop-by-hop removal (RFC 9110 §7.6.1) and `Connection` tokens;
//! - `forwarding`: `X-Forwarded-For`/`-Proto`/`-Host` and `Forwarded`, and
//!   the proxies trusted to have sent them;
//! - `request_id`: `X-Request-Id`, kept when sane or made;
//! - `upgrade`: what a request asks to switch to, and whether a `101` did;
//! - `set_cookie`: what an app may set in the browser;
//! - `rewrite`: the whole rewrite of a request head for the upstream, and of
//!   a response or a switch for the client, made of the above;
//! - `added`: the headers a route sets for its upstream (a workshop
//!   session's request parameters), the client's of those names removed.

mod added;
mod forwarding;
mod hop;
mod request_id;
mod rewrite;
mod set_cookie;
mod upgrade;

pub use added::{AddedHeaderError, AddedHeaders};
pub use forwarding::{set_forwarded, ClientInfo, TrustedProxies, TrustedProxyError};
pub use hop::{connection_has, remove_hop_by_hop};
pub use request_id::{new_request_id, request_id, X_REQUEST_ID};
pub use rewrite::{rewrite_request, rewrite_response, rewrite_switch, UpstreamHead};
pub use set_cookie::{filter_set_cookies, SetCookieChanges};
pub use upgrade::{is_h2_websocket, requested_upgrade, switched_as_requested, websocket_key};

/// A header map of `pairs`, in order, repeated names appended: what the
/// header tests start from.
#[cfg(test)]
pub(crate) fn test_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}
