//! Header operations on the way up and down: hop-by-hop removal (RFC 9110
//! §7.6.1), forwarding headers, and the request id.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

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

/// What the proxy knows about the client side of a request.
pub struct ClientInfo<'a> {
    pub ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The host the client asked for, as it sent it (port included).
    pub host: &'a str,
}

/// Sets `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`
/// and `Forwarded` (appended, RFC 7239).
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientInfo<'_>) {
    let ip = client.ip.to_canonical();
    // The address is written once, without the formatting machinery, which
    // cost more than the rest of this function together.
    let mut ip_text = String::with_capacity(40);
    match ip {
        IpAddr::V4(v4) => push_ipv4(&mut ip_text, v4),
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(ip_text, "{v6}");
        }
    }
    let mut xff = list_so_far(headers, &X_FORWARDED_FOR, ip_text.len());
    xff.push_str(&ip_text);
    // The string's buffer becomes the value's: no second copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    if let Ok(v) = HeaderValue::from_str(client.host) {
        headers.insert(&X_FORWARDED_HOST, v);
    }

    let mut fwd = list_so_far(headers, &FORWARDED, 32 + ip_text.len() + client.host.len());
    match ip {
        IpAddr::V4(_) => {
            fwd.push_str("for=");
            fwd.push_str(&ip_text);
        }
        IpAddr::V6(_) => {
            fwd.push_str("for=\"[");
            fwd.push_str(&ip_text);
            fwd.push_str("]\"");
        }
    }
    // The host was validated by the router: it holds no quote or backslash.
    fwd.push_str(";host=\"");
    fwd.push_str(client.host);
    fwd.push_str("\";proto=");
    fwd.push_str(client.proto);
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(fwd)) {
        headers.insert(&FORWARDED, v);
    }
}

/// Appends `ip` in dotted-decimal form.
fn push_ipv4(out: &mut String, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// The values of a list header sent by earlier hops, each followed by `, `,
/// ready for this hop's element to be appended.
fn list_so_far(headers: &HeaderMap, name: &HeaderName, capacity: usize) -> String {
    let mut out = String::with_capacity(capacity);
    for s in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        out.push_str(s);
        out.push_str(", ");
    }
    out
}

/// The longest client-sent request id that is kept as it is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's `X-Request-Id` if it is reasonable (1–128 visible ASCII
/// characters), else a fresh random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
        {
            return v.clone();
        }
    }
    new_request_id()
}

thread_local! {
    /// Per-thread generator state: request ids need uniqueness, not secrecy, and
    /// a thread-local generator shares nothing between requests on other cores.
    static RNG: Cell<u64> = Cell::new({
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        h.finish() | 1
    });
}

fn next_u64() -> u64 {
    RNG.with(|cell| {
        // xorshift64*
        let mut x = cell.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        cell.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// 32 lower-case hex digits (128 random bits).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let words = [next_u64(), next_u64()];
    for (i, w) in words.iter().enumerate() {
        for j in 0..16 {
            out[i * 16 + j] = HEX[((w >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

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
    fn forwarded_headers_append_and_set() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        set_forwarded(
            &mut h,
            &ClientInfo {
                ip: "127.0.0.1".parse().unwrap(),
                proto: "http",
                host: "nb.localhost:8080",
            },
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "nb.localhost:8080");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9, for=127.0.0.1;host=\"nb.localhost:8080\";proto=http"
        );
        let mut h = HeaderMap::new();
        set_forwarded(
            &mut h,
            &ClientInfo {
                ip: "::1".parse().unwrap(),
                proto: "http",
                host: "a",
            },
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";host=\"a\";proto=http");
    }

    #[test]
    fn ipv4_written_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "100.9.99.101",
            "1.10.100.200",
        ] {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            let mut s = String::new();
            push_ipv4(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
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

    #[test]
    fn request_id_kept_when_sane_else_generated() {
        let h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(request_id(&h), "abc-123");
        let long = "a".repeat(200);
        let h = map(&[("x-request-id", &long)]);
        let id = request_id(&h);
        assert_eq!(id.len(), 32);
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
