//! Route lookup cost on a large table: `cargo bench -p gateway --bench lookup`.
//!
//! No benchmark-harness dependency: it builds a table of session-like routes
//! (testkit's, as `bench table-updates` builds them), then times
//! `router::lookup` over a shuffled list of requests (label hosts, custom hosts,
//! portal slugs, misses) and prints nanoseconds per lookup for each kind. The
//! request list is far larger than the caches' sweet spot on purpose: a real
//! gateway with many sessions sees cold lookups, not one hot key.

use std::hint::black_box;
use std::time::Instant;

use gateway::names::normalize_host;
use gateway::router::lookup;
use gateway::{RouteSpec, RouteTable, RouteTarget, Upstream};
use testkit::routes::{session_route, settings_with};
use testkit::XorShift;

const BASE: &str = "sessions.example.com";
const PORTAL: &str = "portal.example.com";

/// Makes the request (host, path) that hits route `i`.
type MakeRequest = Box<dyn Fn(usize) -> (String, String)>;

/// Route `i`: a session named `s<i>` (testkit's `session_route`: a label,
/// a slug for one in three, a custom host for one in twenty).
fn spec(i: usize) -> RouteSpec {
    let upstream = format!("http://10.0.{}.{}:8888", i / 250 % 250, i % 250);
    let target = RouteTarget::Upstream(Upstream::parse(&upstream).expect("valid upstream"));
    session_route(i, &format!("s{i:06}"), target)
}

fn main() {
    let routes: usize = std::env::var("LOOKUP_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let settings = settings_with(&["localhost", BASE], Some(PORTAL));
    let started = Instant::now();
    let table = RouteTable::build(&settings, (0..routes).map(spec).collect(), None, 1)
        .expect("the generated specs are valid");
    println!(
        "built {routes} routes in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // The same requests every run.
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let kinds: [(&str, MakeRequest); 4] = [
        (
            "label host",
            Box::new(|i| (format!("s{i:06}.{BASE}"), "/lab/tree".to_string())),
        ),
        (
            "custom host",
            Box::new(|i| {
                let i = i / 20 * 20;
                (format!("s{i:06}.customer.example"), "/".to_string())
            }),
        ),
        (
            "portal slug",
            Box::new(|i| {
                let i = i / 3 * 3;
                (PORTAL.to_string(), format!("/s/s{i:06}/lab/tree/x.ipynb"))
            }),
        ),
        (
            "miss",
            Box::new(|i| (format!("gone{i}.{BASE}"), "/".to_string())),
        ),
    ];
    // Cold: any of the routes, as when many sessions are busy at once. Hot: a
    // thousand of them, so the table's parts they use stay in the caches.
    let spreads = [("cold", routes), ("hot", routes.min(1000))];
    for ((name, make), (spread, spread_n)) in kinds
        .iter()
        .flat_map(|k| spreads.iter().map(move |s| (k, s)))
    {
        let name = format!("{name} ({spread})");
        let requests: Vec<(String, String)> =
            (0..200_000).map(|_| make(rng.below(*spread_n))).collect();
        let mut best = f64::MAX;
        let mut found = 0usize;
        for _ in 0..5 {
            found = 0;
            let t = Instant::now();
            for (host, path) in &requests {
                let host = normalize_host(black_box(host)).expect("generated hosts are valid");
                if lookup(black_box(&table), &host, black_box(path)).is_some() {
                    found += 1;
                }
            }
            let ns = t.elapsed().as_nanos() as f64 / requests.len() as f64;
            best = best.min(ns);
        }
        println!(
            "{name:<20} {best:>7.1} ns/lookup (best of 5), {found}/{} found",
            requests.len()
        );
    }
}
