//! Route tables for tests and benchmarks, on top of [`RouteSpec::new`] and
//! its builder methods, so that no test spells out every field of a spec.

use gateway::{RouteHandle, RouteSpec, RouteTarget, TableSettings, Upstream};

/// A public route `id` to the upstream URL `upstream` (`http://host:port`),
/// matched by `<label>.<base-domain>` for each label and by each slug on the
/// portal host. Panics on a bad URL: the test wrote it.
pub fn route(id: &str, labels: &[&str], slugs: &[&str], upstream: &str) -> RouteSpec {
    let target = Upstream::parse(upstream).unwrap_or_else(|e| panic!("{upstream}: {e}"));
    let spec = RouteSpec::new(id, RouteTarget::Upstream(target));
    let spec = labels.iter().fold(spec, |s, l| s.label(*l));
    slugs.iter().fold(spec, |s, p| s.slug(*p))
}

/// A session as the control plane compiles it, for tables of many routes:
/// the label `name`, the slug `/s/<name>` (prefix stripped) for one route in
/// three and the custom host `<name>.customer.example` for one in twenty,
/// by `i`.
pub fn session_route(i: usize, name: &str, target: RouteTarget) -> RouteSpec {
    let mut spec = RouteSpec::new(format!("session:{name}"), target)
        .label(name)
        .strip_prefix(true);
    if i % 20 == 0 {
        spec = spec.host(format!("{name}.customer.example"));
    }
    if i % 3 == 0 {
        spec = spec.slug(format!("/s/{name}"));
    }
    spec
}

/// Base domains `base_domains` and, if any, the portal host.
pub fn settings_with(base_domains: &[&str], portal_host: Option<&str>) -> TableSettings {
    TableSettings {
        base_domains: base_domains.iter().map(|d| d.to_string()).collect(),
        portal_host: portal_host.map(str::to_string),
    }
}

/// The gateway tests' table: `*.localhost` and `*.sessions.test`, portal
/// `portal.test`.
pub fn settings() -> TableSettings {
    settings_with(&["localhost", "sessions.test"], Some("portal.test"))
}

/// A handle holding an empty table with `settings`, for a control plane
/// driven directly rather than through `serve`.
pub fn empty_table(settings: &TableSettings) -> RouteHandle {
    let routes = RouteHandle::new();
    routes
        .publish(settings, vec![])
        .expect("an empty table is valid");
    routes
}
