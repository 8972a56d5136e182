//! What an app may set in the browser through the gateway: never the
//! gateway's own cookie, and never a cookie for more than the host it was
//! answered on.
//!
//! An app is not trusted (the security model): a `Set-Cookie` named like
//! the gateway's cookie would plant, overwrite or delete the browser's
//! access to the session, and one with a `Domain` would reach every name
//! below that domain, other sessions included.

use http::header::{self, HeaderMap, HeaderValue};

use crate::access::COOKIE_NAMES;

/// What [`filter_set_cookies`] changed in one response, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetCookieChanges {
    /// Cookies dropped for being named like the gateway's.
    pub dropped: usize,
    /// Cookies made host-only by removing their `Domain`.
    pub host_only: usize,
}

impl SetCookieChanges {
    pub fn any(&self) -> bool {
        self.dropped + self.host_only > 0
    }
}

/// What becomes of one `Set-Cookie`.
enum Verdict {
    Keep,
    Drop,
    /// Passed on without its `Domain` attributes.
    HostOnly(Vec<u8>),
}

/// Drops the response's `Set-Cookie`s named like the gateway's cookie and
/// removes the `Domain` attribute from the others.
///
/// A `Domain` is removed rather than the cookie dropped: the cookie still
/// comes back on the session's own host, which is all an app may need, so
/// an app that sets `Domain` from its own configuration keeps working
/// (nginx's `proxy_cookie_domain` rewrites the same way), while dropping
/// would sign its users out with no sign of why. It is removed even when
/// it names the session's own host, because a domain cookie also reaches
/// every name below it, and a custom domain such as `x.nb.example.com` may
/// be another session's; a host-only cookie reaches exactly one host.
///
/// A response without `Set-Cookie`, the common case, costs one lookup; one
/// whose cookies are all fine, a read of each and no allocation.
pub fn filter_set_cookies(headers: &mut HeaderMap) -> SetCookieChanges {
    let mut changes = SetCookieChanges::default();
    let values = headers.get_all(header::SET_COOKIE);
    if values
        .iter()
        .all(|v| matches!(judge(v.as_bytes()), Verdict::Keep))
    {
        return changes;
    }
    let old: Vec<HeaderValue> = values.iter().cloned().collect();
    let verdicts: Vec<Verdict> = old.iter().map(|v| judge(v.as_bytes())).collect();
    headers.remove(header::SET_COOKIE);
    for (value, verdict) in old.into_iter().zip(verdicts) {
        match verdict {
            Verdict::Keep => {
                headers.append(header::SET_COOKIE, value);
            }
            Verdict::Drop => changes.dropped += 1,
            Verdict::HostOnly(bytes) => {
                changes.host_only += 1;
                // Made of a valid value's own parts: always valid.
                if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)) {
                    headers.append(header::SET_COOKIE, v);
                }
            }
        }
    }
    changes
}

/// The verdict on one `Set-Cookie` value, read as a browser reads it
/// (RFC 6265bis §5.6): the name-value pair up to the first `;`, the name up
/// to its first `=` and trimmed, a pair without `=` a cookie with no name.
fn judge(value: &[u8]) -> Verdict {
    let mut parts = value.split(|&b| b == b';');
    let pair = parts.next().unwrap_or_default();
    if names_own_cookie(pair) {
        return Verdict::Drop;
    }
    let is_domain = |attr: &[u8]| {
        let name = attr.split(|&b| b == b'=').next().unwrap_or_default();
        name.trim_ascii().eq_ignore_ascii_case(b"domain")
    };
    if !parts.clone().any(is_domain) {
        return Verdict::Keep;
    }
    let mut out = Vec::with_capacity(value.len());
    out.extend_from_slice(pair.trim_ascii());
    for attr in parts.filter(|a| !is_domain(a)) {
        let attr = attr.trim_ascii();
        if !attr.is_empty() {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(attr);
        }
    }
    Verdict::HostOnly(out)
}

/// Whether a cookie's name-value pair would come back to the gateway under
/// one of its own names. A cookie with no name is sent back as its value
/// alone, which the gateway then reads as `name=value`, so that value's
/// name counts too. Names compare without regard to case: browsers match
/// the `__Host-` and `__Secure-` prefixes so, and no app needs a cookie
/// that differs from the gateway's only in case.
fn names_own_cookie(pair: &[u8]) -> bool {
    let pair = pair.trim_ascii();
    let name = match pair.iter().position(|&b| b == b'=') {
        Some(i) if !pair[..i].trim_ascii().is_empty() => &pair[..i],
        // No name: the value is what the browser sends.
        Some(i) => {
            let sent = &pair[i + 1..];
            sent.split(|&b| b == b'=').next().unwrap_or_default()
        }
        None => pair,
    };
    let name = name.trim_ascii();
    COOKIE_NAMES
        .iter()
        .any(|own| own.as_bytes().eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;

    fn filtered(values: &[&str]) -> (Vec<String>, SetCookieChanges) {
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("set-cookie", *v)).collect();
        let mut h = map(&pairs);
        let changes = filter_set_cookies(&mut h);
        let left = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        (left, changes)
    }

    #[test]
    fn cookies_named_like_the_gateways_are_dropped() {
        let cases: &[(&str, bool)] = &[
            ("sessiongate=x", true),
            ("__Host-sessiongate=x; Path=/; Secure", true),
            ("__Secure-sessiongate=x; Path=/lab/", true),
            ("__HOST-SESSIONGATE=x", true),
            ("  sessiongate\t=x", true),
            ("sessiongate", true),
            ("=sessiongate=x", true),
            ("= __Host-sessiongate=x", true),
            ("sessiongate=; Max-Age=0", true),
            ("sessiongate_app=x", false),
            ("my-sessiongate=x", false),
            ("app=sessiongate", false),
            ("=value", false),
        ];
        for (value, dropped) in cases {
            let (left, changes) = filtered(&[value]);
            assert_eq!(left.is_empty(), *dropped, "{value:?}: {left:?}");
            assert_eq!(changes.dropped, usize::from(*dropped), "{value:?}");
        }
    }

    #[test]
    fn domain_attributes_are_removed_and_the_rest_kept_in_order() {
        let (left, changes) = filtered(&[
            "a=1; Domain=example.com; Path=/",
            "b=2;path=/x;DOMAIN=.Example.COM;httponly",
            "c=3; Domain=",
            "d=4; Path=/; Secure",
            "e=5; Path=/; Domain=a; Domain=b",
        ]);
        assert_eq!(
            left,
            [
                "a=1; Path=/",
                "b=2; path=/x; httponly",
                "c=3",
                "d=4; Path=/; Secure",
                "e=5; Path=/"
            ]
        );
        assert_eq!(
            changes,
            SetCookieChanges {
                dropped: 0,
                host_only: 4
            }
        );
    }

    #[test]
    fn responses_without_offending_cookies_are_left_alone() {
        let mut h = map(&[("set-cookie", "a=1; Path=/"), ("x-app", "1")]);
        assert!(!filter_set_cookies(&mut h).any());
        assert_eq!(h["set-cookie"], "a=1; Path=/");
        let mut h = map(&[("x-app", "1")]);
        assert!(!filter_set_cookies(&mut h).any());
        assert_eq!(h.len(), 1);
    }
}
