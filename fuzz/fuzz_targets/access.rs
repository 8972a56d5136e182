//! Access links and cookie verification: the signed cookie
//! (`gateway::access::KeyRing::{sign, verify}`, `check`), and what an access
//! link sends the browser on to: its entry path
//! (`control_plane::access::validate_entry_path`) and the redirect allow-list
//! for login and index URLs (`RedirectPolicy`, `origin_of`,
//! `gateway::access::with_notification`).
//!
//! Input: lines `session`, `user`, `expires`, `now`, a cookie value, a URL,
//! an entry path, and a mutation (`position byte`); missing lines are empty.
//! Properties:
//! - a cookie the ring signs verifies to exactly its claims until it
//!   expires, and `check` finds it among other cookies;
//! - no other value verifies: one changed byte is refused, and a value
//!   from the input verifies only if it is exactly what a key signs for its
//!   claims (the fuzzer can learn such values from the harness's own
//!   signing, so they are no forgery);
//! - the replaced key verifies through its grace period, and not after;
//! - an entry path the API accepts keeps the browser on the session's host,
//!   as a browser resolves it (the `url` crate is the WHATWG URL parser);
//! - a URL the allow-list accepts is on an allowed origin as a browser
//!   parses it, and stays there with `notification=` added.
#![no_main]

use std::sync::Arc;

use control_plane::access::{origin_of, validate_entry_path, RedirectPolicy};
use gateway::access::{check, with_notification, AccessList, KeyRing, SigningKey, Verdict, COOKIE};
use http::header::{HeaderMap, HeaderValue, COOKIE as COOKIE_HEADER};
use libfuzzer_sys::fuzz_target;
use url::Url;

/// Until when (Unix seconds) the replaced key verifies.
const GRACE_UNTIL: u64 = 1_700_000_000;

const ALLOWED: [&str; 3] = [
    "https://portal.example.com",
    "http://localhost:8080",
    "http://[::1]:9000",
];

fn ring() -> KeyRing {
    let current = SigningKey::new("k2", &[2; 32]).expect("a valid key");
    let previous = SigningKey::new("k1", &[1; 32]).expect("a valid key");
    KeyRing::new(current, Some((previous, GRACE_UNTIL)))
}

fn old_ring() -> KeyRing {
    KeyRing::new(SigningKey::new("k1", &[1; 32]).expect("a valid key"), None)
}

fn check_cookie(session: &str, user: &str, expires: u64, now: u64, mutation: &str) {
    let ring = ring();
    let Ok(value) = ring.sign(session, user, expires) else {
        return;
    };
    assert!(
        HeaderValue::from_str(&format!("{COOKIE}={value}")).is_ok()
            && !value.contains([';', ',', ' ', '"', '\\']),
        "{value:?} is not a cookie value"
    );
    let got = ring.verify(&value, now);
    if now < expires {
        let claims = got.unwrap_or_else(|e| panic!("{value:?} at {now}: {e:?}"));
        assert_eq!(
            (claims.session, claims.user, claims.expires),
            (session, user, expires),
            "{value:?}: the claims changed"
        );
        let mut headers = HeaderMap::new();
        let header = format!("a=1; {COOKIE}=x; {COOKIE}={value}; b=\"2\"");
        headers.insert(
            COOKIE_HEADER,
            HeaderValue::from_str(&header).expect("a header"),
        );
        let access = AccessList {
            session: session.into(),
            owner: Arc::from(user),
            groups: vec![],
        };
        assert_eq!(
            check(&ring, &access, &headers, COOKIE, now),
            Verdict::Allowed(user),
            "{header:?}"
        );
    } else {
        assert!(
            got.is_err(),
            "{value:?} verifies at {now}, after it expired"
        );
    }

    // One byte changed.
    let mut parts = mutation.split_whitespace();
    if let (Some(Ok(at)), Some(Ok(byte))) = (
        parts.next().map(str::parse::<usize>),
        parts.next().map(str::parse::<u8>),
    ) {
        let mut bytes = value.clone().into_bytes();
        let at = at % bytes.len();
        bytes[at] = byte;
        if let Ok(changed) = String::from_utf8(bytes) {
            if changed != value {
                assert!(
                    ring.verify(&changed, now).is_err(),
                    "{changed:?}, {value:?} with one byte changed, verifies"
                );
            }
        }
    }

    // Signed by the key a rotation replaced.
    if let Ok(old) = old_ring().sign(session, user, expires) {
        let got = ring.verify(&old, now);
        if now < GRACE_UNTIL && now < expires {
            assert!(
                got.is_ok(),
                "{old:?} at {now}, in the grace period: {got:?}"
            );
        } else {
            assert!(got.is_err(), "{old:?} verifies at {now}: {got:?}");
        }
    }
}

fn check_entry_path(path: &str) {
    if validate_entry_path(path).is_err() {
        return;
    }
    let base = Url::parse("https://nb.sessions.example/").expect("a URL");
    for location in [path.to_string(), format!("/lab{path}")] {
        let to = base
            .join(&location)
            .unwrap_or_else(|e| panic!("entry path {path:?}: Location {location:?}: {e}"));
        assert_eq!(
            to.origin(),
            base.origin(),
            "entry path {path:?}: Location {location:?} leads to {to}"
        );
    }
}

fn check_redirect(url: &str, policy: &RedirectPolicy) {
    let ours = origin_of(url);
    if !policy.allows(url) {
        return;
    }
    let parsed = Url::parse(url)
        .unwrap_or_else(|e| panic!("{url:?} is allowed but no URL to a browser: {e}"));
    let browser = parsed.origin().ascii_serialization();
    assert!(
        ALLOWED.contains(&browser.as_str()),
        "{url:?} is allowed as {ours:?}, but a browser goes to {browser}"
    );
    let notified = with_notification(url, "session-invalid");
    let n = Url::parse(&notified).unwrap_or_else(|e| panic!("{notified:?}: {e}"));
    assert_eq!(
        n.origin().ascii_serialization(),
        browser,
        "{url:?} → {notified:?} changes origin"
    );
    assert!(
        n.query_pairs()
            .any(|(k, v)| k == "notification" && v == "session-invalid"),
        "{notified:?} lost the notification"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let (session, user, expires, now) = (next(), next(), next(), next());
    let (cookie, url, path, mutation) = (next(), next(), next(), next());
    let expires = expires.trim().parse::<u64>().unwrap_or(GRACE_UNTIL + 3600);
    let now = now.trim().parse::<u64>().unwrap_or(GRACE_UNTIL - 60);

    check_cookie(session, user, expires, now, mutation);
    // A value from the input verifies only if it is, byte for byte, what one
    // of the keys signs for its claims: the harness signs claims from the
    // input with keys it holds, so the fuzzer can learn such a value (it
    // did, from the comparisons in `check_cookie`), and that is no forgery.
    // Any other value that verifies (another encoding of the tag, a changed
    // claim) is one.
    if let Ok(claims) = ring().verify(cookie, now) {
        let signed_by_a_key = [ring(), old_ring()].iter().any(|r| {
            r.sign(claims.session, claims.user, claims.expires)
                .is_ok_and(|v| v == cookie)
        });
        assert!(
            signed_by_a_key,
            "{cookie:?} verifies as {claims:?} but is not what a key signs for those claims"
        );
    }
    check_entry_path(path);
    let policy = RedirectPolicy::new(&ALLOWED.map(String::from)).expect("a valid allow-list");
    check_redirect(url, &policy);
});
