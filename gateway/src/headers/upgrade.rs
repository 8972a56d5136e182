//! Protocol upgrades (RFC 9110 §7.8): what a client asks to switch to, and
//! whether the upstream's `101 Switching Protocols` switched to that.

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;

use super::connection_has;

/// The one protocol a request may switch to on any route.
const WEBSOCKET: &str = "websocket";

/// The protocols an HTTP/1.1 request asks to switch to, of those its route
/// passes on: its `Upgrade`, when `Connection` names `upgrade` too (without
/// it, `Upgrade` is a leftover that asks for nothing). Other versions have
/// no `Upgrade`.
///
/// Unless the route allows `any` protocol, only `websocket` is asked for
/// upstream and anything else in the list is left out, as a server may
/// ignore an upgrade it does not take (RFC 9110 §7.8): another protocol
/// (`h2c`, a raw TCP tunnel) would hand the client a connection to the app
/// that no HTTP rule of the gateway looks into any more.
pub fn requested_upgrade(version: Version, headers: &HeaderMap, any: bool) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || !connection_has(headers, "upgrade") {
        return None;
    }
    let asked = headers.get(header::UPGRADE)?;
    if any {
        return Some(asked.clone());
    }
    let asked_text = asked.to_str().ok()?;
    if asked_text.trim().eq_ignore_ascii_case(WEBSOCKET) {
        // The common case: passed on as it came, no allocation.
        return Some(asked.clone());
    }
    tokens(asked_text)
        .any(|t| t.eq_ignore_ascii_case(WEBSOCKET))
        .then(|| HeaderValue::from_static(WEBSOCKET))
}

/// Whether a request is an HTTP/2 WebSocket handshake (RFC 8441): an
/// extended `CONNECT` whose `:protocol` is `websocket`. The gateway passes it
/// to the upstream as an HTTP/1.1 Upgrade, and answers the client `200`
/// once the upstream has switched.
pub fn is_h2_websocket(
    version: Version,
    method: &http::Method,
    protocol: Option<&hyper::ext::Protocol>,
) -> bool {
    version == Version::HTTP_2
        && method == http::Method::CONNECT
        && protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case(WEBSOCKET))
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes, base64) for the HTTP/1.1
/// handshake the upstream gets in place of an HTTP/2 one, which has none.
pub fn websocket_key() -> HeaderValue {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut nonce = [0u8; 16];
    // The system's random source failing leaves zeros: still a valid key
    // (it only proves the upstream speaks WebSocket, it is no secret).
    let _ = ring::rand::SystemRandom::new().fill(&mut nonce);
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key)
        .unwrap_or_else(|_| HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="))
}

/// Whether a `101 Switching Protocols` switched to what the client asked
/// for: its `Upgrade` (`switched`) names one or more protocols, each of them
/// one the request's `Upgrade` (`requested`) listed, tokens compared without
/// regard to case. A `101` without `Upgrade`, or to anything else, would hand
/// the client a connection speaking a protocol it never offered.
pub fn switched_as_requested(requested: &HeaderValue, switched: Option<&HeaderValue>) -> bool {
    let (Ok(requested), Some(Ok(switched))) = (requested.to_str(), switched.map(|v| v.to_str()))
    else {
        return false;
    };
    let mut protocols = tokens(switched).peekable();
    protocols.peek().is_some()
        && protocols.all(|p| tokens(requested).any(|r| r.eq_ignore_ascii_case(p)))
}

/// The non-empty elements of a comma-separated list.
fn tokens(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;

    #[test]
    fn an_h2_websocket_is_an_extended_connect_for_websocket_only() {
        use http::Method;
        let ws = hyper::ext::Protocol::from_static("websocket");
        let ws_upper = hyper::ext::Protocol::from_static("WebSocket");
        let other = hyper::ext::Protocol::from_static("connect-udp");
        let cases: &[(Version, Method, Option<&hyper::ext::Protocol>, bool)] = &[
            (Version::HTTP_2, Method::CONNECT, Some(&ws), true),
            (Version::HTTP_2, Method::CONNECT, Some(&ws_upper), true),
            (Version::HTTP_2, Method::CONNECT, Some(&other), false),
            (Version::HTTP_2, Method::CONNECT, None, false),
            (Version::HTTP_2, Method::GET, Some(&ws), false),
            (Version::HTTP_11, Method::CONNECT, Some(&ws), false),
        ];
        for (version, method, protocol, want) in cases {
            assert_eq!(
                is_h2_websocket(*version, method, *protocol),
                *want,
                "{version:?} {method} {protocol:?}"
            );
        }
        let key = websocket_key();
        assert_eq!(key.len(), 24, "16 bytes in base64");
        assert_ne!(key, websocket_key(), "a fresh key each time");
    }

    #[test]
    fn an_upgrade_is_requested_with_connection_upgrade_on_http_1_1() {
        let asked = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let cases: &[(Version, &HeaderMap, Option<&str>)] = &[
            (Version::HTTP_11, &asked, Some("websocket")),
            (Version::HTTP_10, &asked, None),
            (Version::HTTP_2, &asked, None),
            (Version::HTTP_11, &map(&[("upgrade", "websocket")]), None),
            (Version::HTTP_11, &map(&[("connection", "upgrade")]), None),
        ];
        for (version, headers, want) in cases {
            let got = requested_upgrade(*version, headers, false);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                *want,
                "{version:?} {headers:?}"
            );
        }
    }

    #[test]
    fn only_websocket_is_asked_for_unless_the_route_allows_any() {
        // (Upgrade, asked for by default, asked for on a route allowing any)
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("websocket", Some("websocket"), "websocket"),
            ("WebSocket", Some("WebSocket"), "WebSocket"),
            ("h2c", None, "h2c"),
            ("TLS/1.0, h2c", None, "TLS/1.0, h2c"),
            ("h2c, websocket", Some("websocket"), "h2c, websocket"),
            ("websockets", None, "websockets"),
        ];
        for (upgrade, default, any) in cases {
            let h = map(&[("connection", "upgrade"), ("upgrade", upgrade)]);
            let got = requested_upgrade(Version::HTTP_11, &h, false);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                *default,
                "{upgrade}"
            );
            let got = requested_upgrade(Version::HTTP_11, &h, true);
            assert_eq!(got.unwrap(), *any, "{upgrade}");
        }
    }

    #[test]
    fn a_switch_must_name_a_requested_protocol() {
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("websocket", Some("websocket"), true),
            ("websocket", Some("WebSocket"), true),
            ("WebSocket", Some("websocket"), true),
            ("h2c, websocket", Some("websocket"), true),
            ("websocket", Some(" websocket "), true),
            ("websocket", Some("h2c"), false),
            ("websocket", Some("websocket, h2c"), false),
            ("websocket", Some("websockets"), false),
            ("websocket", Some(""), false),
            ("websocket", Some(","), false),
            ("websocket", None, false),
        ];
        for (requested, switched, want) in cases {
            let requested = HeaderValue::from_str(requested).unwrap();
            let switched = switched.map(|s| HeaderValue::from_str(s).unwrap());
            assert_eq!(
                switched_as_requested(&requested, switched.as_ref()),
                *want,
                "{requested:?} -> {switched:?}"
            );
        }
    }
}
