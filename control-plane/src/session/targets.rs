//! Where sessions may send traffic: `sessions.allowed_targets`, against
//! server-side request forgery. A session's target is an address the
//! gateway connects to on the creator's behalf, so an API client must not
//! be able to point one at the cloud's metadata service or at sessiongate
//! itself.
//!
//! - Without `allowed_targets`: anything but link-local addresses
//!   (169.254.0.0/16, fe80::/10, where AWS, GCP, Azure and OpenStack answer
//!   metadata requests), AWS's IPv6 metadata address (fd00:ec2::254),
//!   Alibaba's (100.100.100.200) and GCP's metadata host names.
//! - With it: an IP target must be inside one of its CIDRs, a host name
//!   must be one of its names or fall under one of its `*.example.org`
//!   entries (any name ending in `.example.org`).
//! - Either way: never one of sessiongate's own listeners. A loopback or
//!   unspecified (0.0.0.0, ::) listener matches every loopback target on its
//!   port, `localhost` and `*.localhost` included.
//!
//! Nothing is resolved: a name's addresses can change after the check (DNS
//! rebinding), so a check of today's answer would promise what it cannot
//! keep. Operators who need that guarantee list addresses, not names. Host
//! names that resolvers read as numbers (`2852039166`, `0xa9.254.169.254`,
//! `127.1`) are refused: they are addresses in disguise.

use std::net::{IpAddr, SocketAddr};

use gateway::names;

/// Addresses refused without `allowed_targets`: the networks, and what
/// answers there.
const DEFAULT_REFUSED: &[(&str, &str)] = &[
    (
        "169.254.0.0/16",
        "link-local, where cloud metadata services answer",
    ),
    (
        "fe80::/10",
        "link-local, where cloud metadata services answer",
    ),
    ("fd00:ec2::254/128", "AWS's IPv6 metadata service"),
    ("100.100.100.200/32", "Alibaba Cloud's metadata service"),
];

/// Host names refused without `allowed_targets` (GCP's metadata server).
const DEFAULT_REFUSED_NAMES: &[&str] = &["metadata.google.internal", "metadata.goog"];

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Net {
    base: IpAddr,
    prefix: u8,
}

impl Net {
    /// `a.b.c.d/n`, `x::y/n`, or a bare address (one host).
    fn parse(s: &str) -> Option<Net> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let base: IpAddr = addr.parse().ok()?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
            None => max,
        };
        (prefix <= max).then_some(Net {
            base: unmapped(base),
            prefix,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, unmapped(ip)) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(b) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(b) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// One entry of `allowed_targets`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    Net(Net),
    /// Exactly this host name.
    Host(String),
    /// `*.example.org`: any name ending in `.example.org`.
    Under(String),
}

/// `sessions.allowed_targets`, parsed; `None` until an operator sets it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetRules {
    allowed: Option<Vec<Allowed>>,
}

impl TargetRules {
    /// Parses the configured entries; an empty list is the default rule.
    /// The error names the entry.
    pub fn parse(entries: &[String]) -> Result<TargetRules, String> {
        if entries.is_empty() {
            return Ok(TargetRules::default());
        }
        let mut allowed = Vec::with_capacity(entries.len());
        for e in entries {
            let t = e.trim();
            let entry = if let Some(net) = Net::parse(t) {
                Allowed::Net(net)
            } else if let Some(suffix) = t.strip_prefix("*.") {
                let s = names::normalize_name(suffix);
                if !names::is_hostname(&s) {
                    return Err(format!("{e:?} is not *.<host name>"));
                }
                Allowed::Under(s)
            } else {
                let h = names::normalize_name(t);
                if !names::is_hostname(&h) || numeric_name(&h) {
                    return Err(format!(
                        "{e:?} is neither a CIDR (10.0.0.0/8), an IP address, a host name nor *.<host name>"
                    ));
                }
                Allowed::Host(h)
            };
            allowed.push(entry);
        }
        Ok(TargetRules {
            allowed: Some(allowed),
        })
    }
}

/// The rules and sessiongate's own listening addresses: what a target is
/// checked against.
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    rules: TargetRules,
    /// Each listener's configuration key and bound address.
    own: Vec<(&'static str, SocketAddr)>,
}

impl TargetPolicy {
    pub fn new(rules: TargetRules, own: Vec<(&'static str, SocketAddr)>) -> TargetPolicy {
        TargetPolicy { rules, own }
    }

    /// Whether a session may send traffic to `host:port`; the refusal
    /// names the rule. `host` is a host name or an IP address (an IPv6 one
    /// with or without brackets), as `remote_host` and environment targets
    /// hold them.
    pub fn check(&self, host: &str, port: u16) -> Result<(), String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = names::normalize_name(bare);
        let ip = bare.parse::<IpAddr>().ok().map(unmapped);
        if ip.is_none() && numeric_name(&name) {
            return Err(format!(
                "{host:?} is an address in a form resolvers read as a number; write it as an IP address such as 10.0.0.7"
            ));
        }
        let loopback = match ip {
            Some(ip) => ip.is_loopback() || ip.is_unspecified(),
            None => name == "localhost" || name.ends_with(".localhost"),
        };
        for (key, addr) in &self.own {
            let listener = unmapped(addr.ip());
            let any_local = listener.is_loopback() || listener.is_unspecified();
            if addr.port() == port && (ip == Some(listener) || (any_local && loopback)) {
                return Err(format!(
                    "{host}:{port} is sessiongate's own listener ({key} {addr})"
                ));
            }
        }
        match (&self.rules.allowed, ip) {
            (None, Some(ip)) => {
                for (net, what) in DEFAULT_REFUSED {
                    if Net::parse(net).is_some_and(|n| n.contains(ip)) {
                        return Err(format!(
                            "{ip} is in {net} ({what}); refused unless sessions.allowed_targets allows it"
                        ));
                    }
                }
                Ok(())
            }
            (None, None) => {
                if DEFAULT_REFUSED_NAMES.contains(&name.as_str()) {
                    return Err(format!(
                        "{name} is a cloud metadata service; refused unless sessions.allowed_targets allows it"
                    ));
                }
                Ok(())
            }
            (Some(allowed), Some(ip)) => {
                if allowed
                    .iter()
                    .any(|a| matches!(a, Allowed::Net(n) if n.contains(ip)))
                {
                    Ok(())
                } else {
                    Err(format!("{ip} is in no network of sessions.allowed_targets"))
                }
            }
            (Some(allowed), None) => {
                let listed = allowed.iter().any(|a| match a {
                    Allowed::Host(h) => *h == name,
                    Allowed::Under(s) => name
                        .strip_suffix(s.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
                    Allowed::Net(_) => false,
                });
                if listed {
                    Ok(())
                } else {
                    Err(format!(
                        "{name} is not a host name sessions.allowed_targets lists"
                    ))
                }
            }
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it reaches.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a resolver would read `name` as an IPv4 address (inet_aton's
/// forms: one to four parts, each decimal, octal or `0x` hex).
fn numeric_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 4
        && parts.iter().all(|p| {
            let hex = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"));
            match hex {
                Some(h) => h.bytes().all(|b| b.is_ascii_hexdigit()),
                None => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> TargetPolicy {
        let rules =
            TargetRules::parse(&allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        TargetPolicy::new(
            rules,
            vec![
                ("gateway.http_listen", "0.0.0.0:8080".parse().unwrap()),
                ("gateway.https_listen", "10.1.1.1:8443".parse().unwrap()),
                ("control_plane.listen", "127.0.0.1:9090".parse().unwrap()),
            ],
        )
    }

    #[test]
    fn the_default_rule_refuses_metadata_and_own_listeners_only() {
        let p = policy(&[]);
        let cases: &[(&str, u16, Option<&str>)] = &[
            ("169.254.169.254", 80, Some("169.254.0.0/16")),
            ("169.254.0.1", 8888, Some("169.254.0.0/16")),
            ("::ffff:169.254.169.254", 80, Some("169.254.0.0/16")),
            ("fe80::1", 80, Some("fe80::/10")),
            ("[fe80::a:1]", 80, Some("fe80::/10")),
            ("fd00:ec2::254", 80, Some("AWS")),
            ("100.100.100.200", 80, Some("Alibaba")),
            ("metadata.google.internal", 80, Some("metadata")),
            ("Metadata.Google.Internal.", 80, Some("metadata")),
            ("2852039166", 80, Some("as a number")),
            ("0xa9.0xfe.0xa9.0xfe", 80, Some("as a number")),
            ("127.1", 80, Some("as a number")),
            ("127.0.0.1", 9090, Some("control_plane.listen")),
            ("localhost", 9090, Some("control_plane.listen")),
            ("lab.localhost", 8080, Some("gateway.http_listen")),
            ("127.0.0.5", 8080, Some("gateway.http_listen")),
            ("0.0.0.0", 8080, Some("gateway.http_listen")),
            ("::1", 8080, Some("gateway.http_listen")),
            ("10.1.1.1", 8443, Some("gateway.https_listen")),
            ("127.0.0.1", 8888, None),
            ("localhost", 8443, None),
            ("10.1.1.1", 8080, None),
            ("10.0.0.7", 9090, None),
            ("169.253.255.255", 80, None),
            ("db.example.org", 5432, None),
            ("8ball", 80, None),
            ("2001:db8::1", 80, None),
        ];
        for (host, port, want) in cases {
            let got = p.check(host, *port);
            match want {
                None => assert!(got.is_ok(), "{host}:{port}: {got:?}"),
                Some(w) => {
                    let e = got.expect_err(&format!("{host}:{port} allowed"));
                    assert!(e.contains(w), "{host}:{port}: {e}");
                }
            }
        }
    }

    #[test]
    fn allowed_targets_decide_once_set() {
        let p = policy(&[
            "10.0.0.0/8",
            "2001:db8::/32",
            "169.254.169.254",
            "app.example.org",
            "*.lab.example.org",
        ]);
        let cases: &[(&str, u16, bool)] = &[
            ("10.2.3.4", 80, true),
            ("::ffff:10.2.3.4", 80, true),
            ("11.0.0.1", 80, false),
            ("169.254.169.254", 80, true),
            ("169.254.169.253", 80, false),
            ("2001:db8:5::1", 80, true),
            ("2001:db9::1", 80, false),
            ("app.example.org", 80, true),
            ("APP.example.org.", 80, true),
            ("other.example.org", 80, false),
            ("a.lab.example.org", 80, true),
            ("a.b.lab.example.org", 80, true),
            ("lab.example.org", 80, false),
            ("xlab.example.org", 80, false),
            ("localhost", 8888, false),
            // Its own listeners stay refused, even inside an allowed network.
            ("10.1.1.1", 8443, false),
        ];
        for (host, port, ok) in cases {
            assert_eq!(p.check(host, *port).is_ok(), *ok, "{host}:{port}");
        }
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "*.",
            "a b",
            "::/129",
            "127.1",
            "*.a..b",
        ] {
            let e = TargetRules::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(TargetRules::parse(&["192.0.2.1".into(), "2001:db8::1".into()]).is_ok());
    }
}
