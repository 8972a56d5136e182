//! The access check's cost per request: `cargo bench -p gateway --bench access`.
//!
//! Times what the gateway does for a request to a private route: find the
//! cookie among a browser's usual handful, verify its HMAC, check its
//! session and expiry, and look the user up in the route's access list
//! (owner, then the groups' sorted member lists). Then, separately, removing
//! the gateway's cookie from the headers before they go upstream. The
//! budget is 2 µs per request for the check (issue 4).
//!
//! No harness dependency: best of 5 runs over 200k requests, each with its
//! own user, so the member lookups are not one hot key.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use gateway::access::{self, AccessList, KeyRing, Members, SigningKey, Verdict};
use http::header::{HeaderMap, HeaderValue, COOKIE};

const REQUESTS: usize = 200_000;

fn main() {
    let now = 1_800_000_000;
    let keys = KeyRing::new(
        SigningKey::new("k2", &[7; 32]).expect("valid key"),
        Some((
            SigningKey::new("k1", &[9; 32]).expect("valid key"),
            now + 3600,
        )),
    );
    // A session shared with two groups: 50 and 5,000 members.
    let group = |prefix: &str, n: usize| {
        Arc::new(Members::new(
            (0..n)
                .map(|i| Arc::from(format!("{prefix}{i:05}@example.com")))
                .collect(),
        ))
    };
    let list = AccessList {
        session: "lab-0042".into(),
        owner: "owner@example.com".into(),
        groups: vec![group("team", 50), group("student", 5000)],
    };
    // Users: the owner, a small-group member, a big-group member, by turns.
    let headers: Vec<HeaderMap> = (0..REQUESTS)
        .map(|i| {
            let user = match i % 3 {
                0 => "owner@example.com".to_string(),
                1 => format!("team{:05}@example.com", i % 50),
                _ => format!("student{:05}@example.com", i % 5000),
            };
            let cookie = keys
                .sign("lab-0042", &user, now + 3600)
                .expect("valid names");
            let mut h = HeaderMap::new();
            // What a browser sends a notebook: the app's own cookies around ours.
            h.insert(
                COOKIE,
                HeaderValue::from_str(&format!(
                    "_xsrf=2|8a1b2c3d|9f8e7d6c5b4a|1700000000; username-lab-0042-localhost=\"2|1:0|10:1700000000|\"; sessiongate={cookie}; theme=dark"
                ))
                .expect("valid header"),
            );
            h
        })
        .collect();

    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut allowed = 0usize;
        let t = Instant::now();
        for h in &headers {
            if let Verdict::Allowed(_) =
                access::check(black_box(&keys), black_box(&list), h, access::COOKIE, now)
            {
                allowed += 1;
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / REQUESTS as f64;
        assert_eq!(allowed, REQUESTS, "every generated user is allowed");
        best = best.min(ns);
    }
    println!("check (cookie + HMAC + access list) {best:>8.1} ns/request (best of 5; budget 2000)");

    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut copies = headers.clone();
        let t = Instant::now();
        for h in &mut copies {
            access::forward_cookies(black_box(h));
        }
        let ns = t.elapsed().as_nanos() as f64 / REQUESTS as f64;
        assert!(copies.iter().all(|h| !access::has_own_cookie(h)));
        best = best.min(ns);
    }
    println!("strip the gateway's cookie         {best:>8.1} ns/request (best of 5)");
}
