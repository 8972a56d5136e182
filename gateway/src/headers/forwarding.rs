//! The forwarding headers: who asked, over what, for which host
//! (`X-Forwarded-*` and RFC 7239 `Forwarded`), each hop appending itself,
//! and the proxies whose word on it the gateway takes ([`TrustedProxies`]).

use std::fmt;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers through which a proxy in front tells the app who the client is
/// or where it is mounted. Apps believe them (the client's address, a user
/// signed in by an authenticating proxy, the path prefix for links), so
/// only a trusted proxy may send them; from anyone else they are removed.
static FROM_PROXIES_ONLY: [HeaderName; 3] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-user"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// What the proxy knows about the client side of a request.
pub struct ClientInfo<'a> {
    pub ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The host the client asked for, as it sent it (port included).
    pub host: &'a str,
    /// The peer is a proxy in `gateway.trusted_proxies`: the forwarding
    /// headers it sent are its own and the gateway's are appended to them.
    pub trusted: bool,
}

/// Sets `X-Forwarded-For` and `Forwarded` (RFC 7239), `X-Forwarded-Proto`
/// and `X-Forwarded-Host`.
///
/// From a trusted proxy, `X-Forwarded-For` and `Forwarded` are the chain so
/// far, and this hop is appended. From anyone else they are replaced, and
/// the headers of [`FROM_PROXIES_ONLY`] removed: a client could otherwise
/// name any address, user or prefix, and the app, which cannot tell the
/// client's part of the chain from the gateway's, would believe it.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientInfo<'_>) {
    if !client.trusted {
        remove_proxy_claims(headers);
    }
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
    let mut xff = list_so_far(headers, &X_FORWARDED_FOR, client.trusted, ip_text.len());
    xff.push_str(&ip_text);
    // The string's buffer becomes the value's: no second copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    if let Ok(v) = HeaderValue::from_str(client.host) {
        headers.insert(&X_FORWARDED_HOST, v);
    }

    let capacity = 32 + ip_text.len() + client.host.len();
    let mut fwd = list_so_far(headers, &FORWARDED, client.trusted, capacity);
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

/// Removes [`FROM_PROXIES_ONLY`]. Requests almost never carry them: one
/// pass over the names present replaces a hash lookup per name.
fn remove_proxy_claims(headers: &mut HeaderMap) {
    if headers.keys().any(|k| FROM_PROXIES_ONLY.contains(k)) {
        for name in &FROM_PROXIES_ONLY {
            headers.remove(name);
        }
    }
}

/// The values of a list header sent by earlier hops, each followed by `, `,
/// ready for this hop's element to be appended; nothing unless the peer is
/// `trusted` to have sent them.
fn list_so_far(headers: &HeaderMap, name: &HeaderName, trusted: bool, capacity: usize) -> String {
    let mut out = String::with_capacity(capacity);
    if !trusted {
        return out;
    }
    for s in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        out.push_str(s);
        out.push_str(", ");
    }
    out
}

/// The proxies in front of the gateway whose forwarding headers are kept
/// and appended to (`gateway.trusted_proxies`): networks in CIDR notation.
/// Empty, the default, trusts no one: every peer is a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Box<[Network]>,
}

/// One network: an address with its low `prefix_len` bits significant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why an entry of `gateway.trusted_proxies` was refused; each names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrustedProxyError {
    #[error("{0:?} is not an IP address or a network such as 10.0.0.0/8 or fd00::/8")]
    NotANetwork(String),
    #[error("{input:?}: a prefix length of {len} is more than the address's {max} bits")]
    PrefixTooLong { input: String, len: u8, max: u8 },
    #[error("{input:?} has bits set past its prefix: the network is {network}")]
    HostBits { input: String, network: String },
}

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `fd00::/8`, or a single address (`192.0.2.7`,
    /// `::1`), each of IPv4 or IPv6. A network with bits set past its
    /// prefix (`10.0.0.1/8`) is refused rather than guessed at.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, TrustedProxyError> {
        let networks = entries
            .iter()
            .map(|e| Network::parse(e.as_ref().trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies {
            networks: networks.into(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// Whether `ip` is in one of the networks. An IPv4 address mapped into
    /// IPv6 (a dual-stack listener's `::ffff:a.b.c.d`) is its IPv4 self.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.networks.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(ip))
    }
}

impl Network {
    fn parse(input: &str) -> Result<Network, TrustedProxyError> {
        let not_a_network = || TrustedProxyError::NotANetwork(input.to_string());
        let (addr, len) = match input.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (input, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| not_a_network())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| not_a_network())?
            }
            Some(_) => return Err(not_a_network()),
        };
        if prefix_len > max {
            return Err(TrustedProxyError::PrefixTooLong {
                input: input.to_string(),
                len: prefix_len,
                max,
            });
        }
        let network = Network { addr, prefix_len };
        let masked = network.masked(addr);
        if masked != addr {
            return Err(TrustedProxyError::HostBits {
                input: input.to_string(),
                network: format!("{masked}/{prefix_len}"),
            });
        }
        Ok(network)
    }

    /// `ip` with the bits past the prefix cleared.
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.networks.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}/{}", n.addr, n.prefix_len)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;

    #[test]
    fn forwarded_headers_from_a_trusted_proxy_are_appended_to() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
        ]);
        set_forwarded(
            &mut h,
            &ClientInfo {
                ip: "127.0.0.1".parse().unwrap(),
                proto: "http",
                host: "nb.localhost:8080",
                trusted: true,
            },
        );
        assert_eq!(h["x-real-ip"], "203.0.113.9");
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
                trusted: true,
            },
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";host=\"a\";proto=http");
    }

    #[test]
    fn forwarded_headers_from_anyone_else_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=203.0.113.9;by=evil"),
            ("x-real-ip", "203.0.113.9"),
            ("x-forwarded-user", "admin"),
            ("x-forwarded-prefix", "/admin"),
            ("x-app", "kept"),
        ]);
        set_forwarded(
            &mut h,
            &ClientInfo {
                ip: "192.0.2.7".parse().unwrap(),
                proto: "https",
                host: "nb.localhost",
                trusted: false,
            },
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;host=\"nb.localhost\";proto=https"
        );
        for gone in ["x-real-ip", "x-forwarded-user", "x-forwarded-prefix"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h["x-app"], "kept");
    }

    #[test]
    fn trusted_proxies_are_networks_of_either_family() {
        let t = TrustedProxies::parse(&["10.0.0.0/8", "192.0.2.7", "fd00::/8", " ::1 "]).unwrap();
        let cases: &[(&str, bool)] = &[
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("fd12::1", true),
            ("fe80::1", false),
            ("::1", true),
            ("::ffff:10.9.9.9", true),
            ("::ffff:192.0.2.8", false),
        ];
        for (ip, want) in cases {
            assert_eq!(t.contains(ip.parse().unwrap()), *want, "{ip}");
        }
        assert_eq!(t.to_string(), "10.0.0.0/8, 192.0.2.7/32, fd00::/8, ::1/128");
        let all = TrustedProxies::parse(&["0.0.0.0/0", "::/0"]).unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        let none = TrustedProxies::default();
        assert!(!none.contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_trusted_proxies_are_refused_by_name() {
        let cases: &[(&str, &str)] = &[
            (
                "10.0.0.0/33",
                r#""10.0.0.0/33": a prefix length of 33 is more than the address's 32 bits"#,
            ),
            (
                "10.0.0.1/8",
                r#""10.0.0.1/8" has bits set past its prefix: the network is 10.0.0.0/8"#,
            ),
            (
                "fd00::1/8",
                r#""fd00::1/8" has bits set past its prefix: the network is fd00::/8"#,
            ),
            (
                "proxy.internal",
                r#""proxy.internal" is not an IP address or a network such as 10.0.0.0/8 or fd00::/8"#,
            ),
            (
                "10.0.0.0/",
                r#""10.0.0.0/" is not an IP address or a network such as 10.0.0.0/8 or fd00::/8"#,
            ),
            (
                "10.0.0.0/+8",
                r#""10.0.0.0/+8" is not an IP address or a network such as 10.0.0.0/8 or fd00::/8"#,
            ),
        ];
        for (input, want) in cases {
            let err = TrustedProxies::parse(&[input]).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
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
