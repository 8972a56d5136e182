//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and
//! stop at the proxy, in both directions.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one hop and must not be forwarded, whatever
/// `Connection` says. `Proxy-Connection` is non-standard but still sent by old
/// clients; `Proxy-Authorization` is meant for this proxy, not the app.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether `Connection` lists `token` (case-insensitive, comma-separated, any
/// number of `Connection` lines).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Removes hop-by-hop headers, including every header named in `Connection`,
/// and `Upgrade` (the caller re-adds it for a pass-through upgrade).
///
/// Runs twice per proxied request, and almost every message has none of
/// these headers: one pass over the names present (a handful, compared as
/// enum tags for standard names) replaces a hash lookup per hop-by-hop name.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Bit i: HOP_BY_HOP[i] is present; the bit after them: Upgrade.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if name == header::UPGRADE {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Names listed in `Connection`. `keep-alive` and `upgrade` are removed
        // below anyway and `close` names no header: the common values cost
        // no allocation.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            let Ok(s) = v.to_str() else { continue };
            for t in s.split(',').map(str::trim) {
                if t.is_empty()
                    || ["keep-alive", "close", "upgrade"]
                        .iter()
                        .any(|c| t.eq_ignore_ascii_case(c))
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                    named.push(n);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;

    #[test]
    fn hop_by_hop_headers_are_removed_including_connection_named_ones() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
            ("cookie", "a=b"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept", "cookie"]);
    }

    #[test]
    fn connection_has_is_token_based() {
        let h = map(&[("connection", "keep-alive, Upgrade")]);
        assert!(connection_has(&h, "upgrade"));
        assert!(!connection_has(&h, "close"));
        let h = map(&[("connection", "upgraded")]);
        assert!(!connection_has(&h, "upgrade"));
    }

    #[test]
    fn hop_by_hop_fast_path_keeps_end_to_end_headers() {
        let mut h = map(&[("content-length", "5"), ("x-app", "1"), ("date", "now")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3);
        let mut h = map(&[("x-app", "1"), ("upgrade", "websocket")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-app"));
    }
}
