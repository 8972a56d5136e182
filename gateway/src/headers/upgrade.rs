//! Protocol upgrades (RFC 9110 §7.8): what a client asks to switch to, and
//! whether the upstream's `101 Switching Protocols` switched to that.

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;

use super::connection_has;

/// The protocols an HTTP/1.1 request asks to switch to: its `Upgrade`, when
/// `Connection` names `upgrade` too (without it, `Upgrade` is a leftover
/// that asks for nothing). Other versions have no `Upgrade`.
pub fn requested_upgrade(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version == Version::HTTP_11 && connection_has(headers, "upgrade") {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
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
            let got = requested_upgrade(*version, headers);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                *want,
                "{version:?} {headers:?}"
            );
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
