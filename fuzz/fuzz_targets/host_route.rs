//! Host normalisation and route lookup: what every request's `Host` header
//! and path go through (`gateway::names::normalize_host`,
//! `gateway::router::lookup`).
//!
//! Input: `host`, then optionally `\n` and a path, then optionally `\n` and
//! a hostname that a route of its own is filed under. Properties:
//! - a normalised host is a fixed point: normalising it again changes
//!   nothing, so no two spellings of one host reach different routes;
//! - a slug match takes whole path segments, and the path sent upstream
//!   still starts with `/`;
//! - a route filed under a hostname is found by that hostname in any case,
//!   with a port and with a trailing dot.
#![no_main]

use std::sync::{Arc, OnceLock};

use gateway::names::{normalize_host, normalize_name};
use gateway::router::lookup;
use gateway::{RouteSpec, RouteTable, RouteTarget, TableSettings, Upstream};
use libfuzzer_sys::fuzz_target;

const PORTAL: &str = "portal.example.com";

fn settings() -> TableSettings {
    TableSettings {
        base_domains: vec!["localhost".into(), "Sessions.Example.com.".into()],
        portal_host: Some(PORTAL.into()),
    }
}

fn spec(id: &str) -> RouteSpec {
    let upstream = Upstream::parse("http://127.0.0.1:1").expect("a valid upstream");
    RouteSpec::new(id, RouteTarget::Upstream(upstream))
}

/// The router's unit-test table: a label, a custom host, nested slugs with
/// and without prefix stripping, and a host route on the portal itself.
fn base_specs() -> Vec<RouteSpec> {
    vec![
        spec("nb").label("nb"),
        spec("custom").host("app.customer.io"),
        spec("lab").slug("/lab"),
        spec("lab-deep").slug("/lab/team/").strip_prefix(true),
        spec("ide").slug("/ide").strip_prefix(true),
        spec("portal-home").host(PORTAL),
    ]
}

fn base_table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        RouteTable::build(&settings(), base_specs(), None, 1).expect("the base table builds")
    })
}

fn check_lookup(table: &RouteTable, host: &str, path: &str) {
    let Some(m) = lookup(table, host, path) else {
        return;
    };
    assert!(
        m.prefix_len <= path.len(),
        "{host} {path:?}: prefix past the path"
    );
    if m.prefix_len > 0 {
        let rest = path
            .get(m.prefix_len..)
            .expect("a slug ends on a char boundary");
        assert!(
            rest.is_empty() || rest.starts_with('/'),
            "{host} {path:?}: slug {:?} is not a whole segment",
            &path[..m.prefix_len]
        );
    }
    if path.starts_with('/') {
        let up = m.upstream_path(path);
        assert!(up.starts_with('/'), "{host} {path:?}: upstream path {up:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let raw_host = lines.next().unwrap_or("");
    let path = lines.next().unwrap_or("/");
    let filed = lines.next();

    if let Some(host) = normalize_host(raw_host) {
        assert!(!host.is_empty(), "{raw_host:?} normalised to nothing");
        assert!(
            !host.bytes().any(|b| b.is_ascii_uppercase()),
            "{raw_host:?} → {host:?} keeps upper case"
        );
        let again = normalize_host(&host);
        assert_eq!(
            again.as_deref(),
            Some(&*host),
            "normalising {raw_host:?} twice: {host:?}, then {again:?}"
        );
        check_lookup(base_table(), &host, path);
    }

    // A route of its own under a hostname from the input.
    let Some(filed) = filed else {
        return;
    };
    let mut specs = base_specs();
    specs.push(spec("fuzz").host(filed));
    let Ok(table) = RouteTable::build(&settings(), specs, None, 2) else {
        return;
    };
    let key = normalize_name(filed);
    if key == PORTAL {
        return;
    }
    let shouted = format!("{}.:8443", key.to_ascii_uppercase());
    for request_host in [key.clone(), shouted] {
        let host = normalize_host(&request_host)
            .unwrap_or_else(|| panic!("{request_host:?}, a route's host, is not a host"));
        let m = lookup(&table, &host, path).unwrap_or_else(|| {
            panic!("{request_host:?} does not find the route filed under {filed:?}")
        });
        assert!(
            Arc::ptr_eq(m.route, table.route("fuzz").expect("filed")),
            "{request_host:?} finds {:?}, not the route filed under {filed:?}",
            m.route.id
        );
        check_lookup(&table, &host, path);
    }
});
