//! The whole rewrite of a message head as it crosses the gateway: the
//! client's request for the upstream, and the upstream's switch of
//! protocols for the client.

use http::header::{self, HeaderMap, HeaderValue};

use super::{
    filter_set_cookies, remove_hop_by_hop, set_forwarded, ClientInfo, SetCookieChanges,
    X_REQUEST_ID,
};
use crate::access;

/// What the upstream request's head gets besides the client's own headers.
pub struct UpstreamHead<'a> {
    /// Who asked, for the forwarding headers.
    pub client: ClientInfo<'a>,
    /// The `Host` to send: the client's, or the upstream's authority for a
    /// route that rewrites it.
    pub host: HeaderValue,
    /// The request's id, so that the app's logs can name it too.
    pub request_id: HeaderValue,
    /// The protocols the client asked to switch to, passed on: an upgrade is
    /// hop-by-hop, so it reaches the upstream only if the gateway asks again.
    pub upgrade: Option<HeaderValue>,
}

/// Rewrites the client's request headers for the upstream, in place:
/// hop-by-hop headers go (they describe the client's connection), and so do
/// the gateway's own cookies (its business, never the app's; the others are
/// joined into one `Cookie`) and `Expect`
/// (hyper already answered `100-continue` to the client); the forwarding
/// headers say who asked; `Host`, `X-Request-Id` and, for an upgrade,
/// `Connection` and `Upgrade` are set.
pub fn rewrite_request(headers: &mut HeaderMap, head: UpstreamHead<'_>) {
    remove_hop_by_hop(headers);
    access::forward_cookies(headers);
    headers.remove(header::EXPECT);
    set_forwarded(headers, &head.client);
    headers.insert(header::HOST, head.host);
    headers.insert(&X_REQUEST_ID, head.request_id);
    if let Some(protocols) = head.upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocols);
    }
}

/// Rewrites the head of an upstream's response for the client: its
/// hop-by-hop headers go, and so do the cookies it may not set
/// ([`filter_set_cookies`]), whose changes are returned for the log.
pub fn rewrite_response(headers: &mut HeaderMap) -> SetCookieChanges {
    remove_hop_by_hop(headers);
    filter_set_cookies(headers)
}

/// Rewrites the head of a `101 Switching Protocols` for the client as any
/// response ([`rewrite_response`]: browsers take cookies from a WebSocket
/// handshake too), and `Connection: upgrade` with the protocol switched to
/// come back, as they are what makes it a switch.
pub fn rewrite_switch(headers: &mut HeaderMap, protocol: HeaderValue) -> SetCookieChanges {
    let changes = rewrite_response(headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;

    fn client() -> ClientInfo<'static> {
        ClientInfo {
            ip: "192.0.2.7".parse().unwrap(),
            proto: "https",
            host: "NB.localhost:8443",
            trusted: false,
        }
    }

    #[test]
    fn request_head_is_rewritten_for_the_upstream() {
        let mut h = map(&[
            ("host", "NB.localhost:8443"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("expect", "100-continue"),
            ("cookie", "a=1; sessiongate=signed; b=2"),
            ("x-request-id", "from-client"),
            ("x-app", "kept"),
        ]);
        rewrite_request(
            &mut h,
            UpstreamHead {
                client: client(),
                host: HeaderValue::from_static("10.0.0.7:8888"),
                request_id: HeaderValue::from_static("rid-1"),
                upgrade: None,
            },
        );
        for gone in ["connection", "x-secret", "keep-alive", "expect", "upgrade"] {
            assert!(h.get(gone).is_none(), "{gone}: {h:?}");
        }
        assert_eq!(h["host"], "10.0.0.7:8888");
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h["x-request-id"], "rid-1");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "NB.localhost:8443");
        assert_eq!(h["x-app"], "kept");
    }

    #[test]
    fn an_upgrade_is_asked_for_again() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        rewrite_request(
            &mut h,
            UpstreamHead {
                client: client(),
                host: HeaderValue::from_static("nb.localhost"),
                request_id: HeaderValue::from_static("rid"),
                upgrade: Some(HeaderValue::from_static("websocket")),
            },
        );
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn a_switch_keeps_only_its_own_hop_headers() {
        let mut h = map(&[
            ("connection", "Upgrade, x-hop"),
            ("x-hop", "1"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-accept", "abc"),
            ("set-cookie", "sessiongate=planted"),
        ]);
        let changes = rewrite_switch(&mut h, HeaderValue::from_static("WebSocket"));
        assert_eq!(changes.dropped, 1);
        assert!(h.get("set-cookie").is_none());
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "WebSocket");
        assert_eq!(h["sec-websocket-accept"], "abc");
        assert!(h.get("x-hop").is_none());
    }
}
