//! What the fuzz targets in `fuzz/` found in the gateway, each a test
//! against the real server on port 0 in front of a real origin.

// The harness of `proxy.rs`, of which this binary needs only a part
// (`common` allows what goes unused itself).
mod common;

use common::*;
use hyper::StatusCode;
use testkit::routes::route;
use testkit::Origin;

/// Found by `fuzz/fuzz_targets/host_route.rs`: the host that
/// `normalize_host` made of `nb.localhost..` (one trailing dot dropped) or
/// of `nb.localhost:1:` (the last `:` taken for the port) still had a dot
/// or a `:` to drop, so normalising it again gave another host. Neither
/// is a host (RFC 9112 §3.2: a `Host` with an invalid value is a 400), and
/// answering them as hosts is how two layers come to disagree on which host
/// a request is for.
#[tokio::test]
async fn a_host_with_a_second_port_or_a_second_trailing_dot_is_a_bad_request() {
    let app = Origin::named("app");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &app.url())]).await;
    let c = client();
    for host in [
        "nb.localhost:1:",
        "nb.localhost:80:80",
        "nb.localhost..",
        "nb.localhost..:80",
        "nb:1.localhost",
        "n]b.localhost",
        "[::1]:http",
    ] {
        let r = get(&c, &gw, host, "/").await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "Host: {host}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // The spellings that are that one host still reach it.
    for host in ["nb.localhost", "NB.localhost.:8080", "nb.localhost:"] {
        let r = get(&c, &gw, host, "/").await;
        assert_eq!(r.status, StatusCode::OK, "Host: {host}");
        assert_eq!(&r.body[..], b"app", "Host: {host}");
    }
}
