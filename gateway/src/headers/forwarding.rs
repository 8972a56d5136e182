//! The forwarding headers: who asked, over what, for which host
//! (`X-Forwarded-*` and RFC 7239 `Forwarded`), each hop appending itself.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;

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
}
