//! Cookie parsing and stripping: what the gateway reads of a request's
//! `Cookie` headers (`gateway::access::cookie_values`, `has_own_cookie`) and
//! what it forwards to the app (`forward_cookies`).
//!
//! Input: `Cookie` header values separated by `\n` (HTTP/2 may send several).
//! The oracle parses cookies as bytes, as a browser or an app does: pairs
//! split at `;`, spaces and tabs around them ignored, the name before the
//! first `=`. Properties:
//! - after stripping, no pair is named like one of the gateway's cookies;
//! - every other pair is kept byte for byte, in order, whatever its bytes;
//! - what is forwarded is one `Cookie` header at most (HTTP/1.1 apps read
//!   repeated ones as a comma-separated list, RFC 9113 §8.2.3);
//! - every value the gateway would verify comes from one of its own pairs,
//!   which stripping removes.
//!
//! The separators between pairs may change (`a=1;b=2` can become
//! `a=1; b=2`): browsers never put `;` inside a value, so no pair does.
#![no_main]

use gateway::access::{cookie_values, forward_cookies, has_own_cookie, COOKIE_NAMES};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use libfuzzer_sys::fuzz_target;

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &b[s..=e],
        _ => &[],
    }
}

/// The non-empty pairs of every `Cookie` header, in order.
fn pairs(headers: &HeaderMap) -> Vec<Vec<u8>> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(trim_ows)
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn is_own(pair: &[u8]) -> bool {
    let name = match pair.iter().position(|&b| b == b'=') {
        Some(i) => &pair[..i],
        None => pair,
    };
    let name = trim_ows(name);
    COOKIE_NAMES.iter().any(|n| n.as_bytes() == name)
}

/// A pair's value as the gateway reads it: spaces and surrounding quotes off.
fn value_of(pair: &[u8]) -> &[u8] {
    let value = pair
        .iter()
        .position(|&b| b == b'=')
        .map_or(&[][..], |i| &pair[i + 1..]);
    let value = trim_ows(value);
    let start = value.iter().position(|&b| b != b'"').unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b'"')
        .map_or(start, |e| e + 1);
    &value[start..end.max(start)]
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for value in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(COOKIE, v);
        }
    }
    let before = pairs(&headers);
    let own_before = before.iter().any(|p| is_own(p));
    if own_before {
        assert!(
            has_own_cookie(&headers),
            "has_own_cookie misses one in {before:?}"
        );
    }
    let read: Vec<String> = COOKIE_NAMES
        .iter()
        .flat_map(|name| cookie_values(&headers, name))
        .map(str::to_string)
        .collect();
    let untouched = headers.clone();

    forward_cookies(&mut headers);

    assert!(
        headers.get_all(COOKIE).iter().count() <= 1,
        "several Cookie headers reach the app: {headers:?} (request {untouched:?})"
    );
    let after = pairs(&headers);
    if let Some(p) = after.iter().find(|p| is_own(p)) {
        panic!(
            "the gateway's cookie {:?} reaches the app (request {:?})",
            String::from_utf8_lossy(p),
            untouched
        );
    }
    let others: Vec<Vec<u8>> = before.iter().filter(|p| !is_own(p)).cloned().collect();
    assert_eq!(
        after, others,
        "the app's cookies changed on the way (request {untouched:?})"
    );
    for value in &read {
        assert!(
            before
                .iter()
                .any(|p| is_own(p) && value_of(p) == value.as_bytes()),
            "the gateway verifies {value:?}, which is no cookie of its own (request {untouched:?})"
        );
    }
});
