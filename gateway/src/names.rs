//! The canonical forms of the names a route is found by: hosts, DNS labels
//! and slugs.
//!
//! The table files routes under these forms, a request's host is looked up
//! in them, and the control plane checks the names it is given against the
//! same rules, so each name is normalised in exactly one place. The rules
//! here are the routing rules and nothing more: a caller with a stricter
//! policy (the control plane's session slugs take fewer characters and never
//! the root) checks its policy first and takes the canonical form from here.

use std::borrow::Cow;

use crate::router::MAX_SLUG_SEGMENTS;

/// Bytes besides ASCII letters and digits that a slug may hold: the
/// characters of a URL path segment (RFC 3986 `pchar`: unreserved,
/// sub-delims, `:`, `@`, and `%` of percent-encoding) and the `/` between
/// segments. A slug is compared with the request path byte for byte, so it
/// may hold anything a path may, but nothing that would end the path (`?`,
/// `#`) or that no client sends unencoded.
pub const SLUG_PATH_CHARS: &[u8] = b"/-._~!$&'()*+,;=:@%";

/// The longest hostname, in bytes (RFC 1035, without the trailing dot).
const MAX_HOSTNAME_LEN: usize = 253;

/// The longest DNS label, in bytes (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Lower-cases a hostname and drops one trailing dot, so that `App.Example.`
/// and `app.example` name one route.
pub fn normalize_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// Whether `name`, already normalised, is a hostname: 1–253 bytes of DNS
/// labels separated by dots.
pub fn is_hostname(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_HOSTNAME_LEN && name.split('.').all(is_dns_label)
}

/// RFC 1123 label: 1–63 of `a-z0-9-`, not starting or ending with `-`.
/// Lower case only: labels are compared after [`normalize_name`].
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Normalises a `Host` header value or URI authority as routes are looked
/// up: drops the port and one trailing dot, lower-cases. `None` when it is
/// not a plausible host: a name (letters, digits, `.`, `-`, `_`) that does
/// not end in a dot once one is dropped, or an IPv6 literal in brackets,
/// either with an optional port of digits. So the result is a fixed point:
/// normalising it again gives it back, and no layer that normalises a host
/// a second time (a redirect, a certificate check) can reach another one.
/// Borrows unless the host needs lower-casing, since it runs on every
/// request.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let is_port = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop any port after them.
        let end = rest.find(']')?;
        let literal = &rest[..end];
        let after = &rest[end + 1..];
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        if literal.is_empty()
            || !port_ok
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return None;
        }
        &raw[..end + 2]
    } else {
        let name = match raw.rfind(':') {
            Some(i) if is_port(&raw[i + 1..]) => &raw[..i],
            Some(_) => return None,
            None => raw,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty()
            || name.ends_with('.')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return None;
        }
        name
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// Why a slug has no canonical form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlugError {
    #[error("slug {0:?} must start with '/' and hold only URL path characters")]
    NotAPath(String),
    #[error("slug {0:?} has more than {MAX_SLUG_SEGMENTS} segments")]
    TooDeep(String),
}

/// The canonical form of a slug: without its trailing slashes, so `/lab/` →
/// `/lab` and the root `/` → `""`. It must be a path (a leading `/`, no empty
/// segment, only [`SLUG_PATH_CHARS`], letters and digits) of at most
/// [`MAX_SLUG_SEGMENTS`] segments, the deepest the router looks.
pub fn normalize_slug(slug: &str) -> Result<&str, SlugError> {
    if !slug.starts_with('/')
        || slug.contains("//")
        || !slug
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || SLUG_PATH_CHARS.contains(&c))
    {
        return Err(SlugError::NotAPath(slug.to_string()));
    }
    let trimmed = slug.trim_end_matches('/');
    if trimmed.matches('/').count() > MAX_SLUG_SEGMENTS {
        return Err(SlugError::TooDeep(slug.to_string()));
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_name_lower_cases_and_drops_one_trailing_dot() {
        let cases: &[(&str, &str)] = &[
            ("app.example", "app.example"),
            ("App.Example.", "app.example"),
            ("Sessions.Example.", "sessions.example"),
            ("a..", "a."),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_name(input), *want, "{input:?}");
        }
    }

    #[test]
    fn dns_label_cases() {
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        let cases: &[(&str, bool)] = &[
            ("nb", true),
            ("a-1", true),
            ("0", true),
            (&long, true),
            ("", false),
            (&too_long, false),
            ("-a", false),
            ("a-", false),
            ("A", false),
            ("not_a_label", false),
            ("a.b", false),
            ("a b", false),
        ];
        for (input, want) in cases {
            assert_eq!(is_dns_label(input), *want, "{input:?}");
        }
    }

    #[test]
    fn hostname_cases() {
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        let too_long = format!("{longest}e");
        let cases: &[(&str, bool)] = &[
            ("app.example.test", true),
            ("localhost", true),
            (&longest, true),
            (&too_long, false),
            ("", false),
            ("a b.example", false),
            ("a..b", false),
            ("-a.org", false),
            ("App.example", false),
        ];
        for (input, want) in cases {
            assert_eq!(is_hostname(input), *want, "{input:?}");
        }
    }

    #[test]
    fn normalize_host_cases() {
        let cases: &[(&str, Option<&str>)] = &[
            ("nb.localhost", Some("nb.localhost")),
            ("NB.LocalHost", Some("nb.localhost")),
            ("nb.localhost:8080", Some("nb.localhost")),
            ("nb.localhost.", Some("nb.localhost")),
            ("NB.localhost.:8080", Some("nb.localhost")),
            ("[::1]:8080", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("", None),
            (":8080", None),
            ("host:port", None),
            ("bad host", None),
            ("a/b", None),
            ("[::1]junk", None),
            ("[::1]:http", None),
            ("[]", None),
            ("[v1.x]", None),
            ("nb.localhost:", Some("nb.localhost")),
            ("nb.localhost:1:", None),
            ("nb.localhost:80:80", None),
            ("nb:1.localhost", None),
            ("nb.localhost..", None),
            ("nb.localhost..:80", None),
            ("n]b.localhost", None),
            (".", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_host(input).as_deref(), *want, "{input:?}");
        }
    }

    #[test]
    fn a_normalised_host_is_a_fixed_point() {
        // Found by the fuzz target `host_route`: these came out as hosts
        // that normalised again to another one.
        for raw in ["6NB.localhost.:alhost.:", "a..", "x:1:2", "[::1]", "A.b.:9"] {
            if let Some(host) = normalize_host(raw) {
                assert_eq!(normalize_host(&host).as_deref(), Some(&*host), "{raw:?}");
            }
        }
    }

    #[test]
    fn normalize_host_borrows_lower_case_hosts() {
        assert!(matches!(
            normalize_host("nb.localhost:8080"),
            Some(Cow::Borrowed("nb.localhost"))
        ));
    }

    #[test]
    fn slug_cases() {
        let deepest = "/s".repeat(MAX_SLUG_SEGMENTS);
        let too_deep = "/s".repeat(MAX_SLUG_SEGMENTS + 1);
        let cases: &[(&str, Option<&str>)] = &[
            ("/lab", Some("/lab")),
            ("/lab/", Some("/lab")),
            ("/a/", Some("/a")),
            ("/lab/team/", Some("/lab/team")),
            ("/", Some("")),
            ("/a~b/c.d/e_f-g", Some("/a~b/c.d/e_f-g")),
            ("/x!$&'()*+,;=:@%20", Some("/x!$&'()*+,;=:@%20")),
            (&deepest, Some(&deepest)),
            (&too_deep, None),
            ("lab", None),
            ("f", None),
            ("", None),
            ("//x", None),
            ("/a//b", None),
            ("/a b", None),
            ("/a?b", None),
            ("/a#b", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_slug(input).ok(), *want, "{input:?}");
        }
        assert_eq!(
            normalize_slug(&too_deep),
            Err(SlugError::TooDeep(too_deep.clone()))
        );
        assert_eq!(
            normalize_slug("lab").unwrap_err().to_string(),
            "slug \"lab\" must start with '/' and hold only URL path characters"
        );
    }
}
