//! Route lookup: a pure function over a [`RouteTable`], a host and a path.
//!
//! No I/O and no allocation unless the host needs lower-casing, so it can be
//! unit-tested with tables of cases and costs a few hash lookups per request.
//!
//! Order of precedence:
//! 1. on the portal host, a path ending in [`ACTIVATE_PATH`] (an access
//!    link) belongs to the route whose slug is exactly what comes before it,
//!    or to nothing; without a slug before it, to the portal's own route
//!    (the root slug, or rules 3 and 4);
//! 2. on the portal host, the longest slug that is a whole-segment prefix of the path;
//! 3. an exact hostname (custom domains, static host routes);
//! 4. `<label>.<base-domain>` for any configured base domain.
//!
//! Rule 1 comes first because a link carries a one-time token: under the
//! longest-prefix rule, a route whose slug is `/a/__sessiongate` would be
//! handed the links of the session at `/a`. On any other host, the path of
//! a link is exactly [`ACTIVATE_PATH`], and the host alone picks the route.

use std::sync::Arc;

use crate::access::ACTIVATE_PATH;
use crate::table::{Route, RouteTable};

/// The deepest slug (in path segments) that lookups consider. Bounding it keeps a
/// request with thousands of segments from costing thousands of hash lookups.
pub const MAX_SLUG_SEGMENTS: usize = 16;

/// A successful lookup.
#[derive(Debug)]
pub struct RouteMatch<'t> {
    pub route: &'t Arc<Route>,
    /// Bytes of the path taken by the matched slug (0 for host routes).
    pub prefix_len: usize,
}

impl RouteMatch<'_> {
    /// The path to send upstream: the slug removed when the route strips it.
    pub fn upstream_path<'p>(&self, path: &'p str) -> &'p str {
        if !self.route.strip_prefix || self.prefix_len == 0 {
            return path;
        }
        match path.get(self.prefix_len..) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }
}

/// Finds the route for a normalised `host` and a request `path` (no query).
pub fn lookup<'t>(table: &'t RouteTable, host: &str, path: &str) -> Option<RouteMatch<'t>> {
    if table.portal_host.as_deref() == Some(host) {
        if let Some(slug) = path.strip_suffix(ACTIVATE_PATH) {
            if let Some(route) = table.slugs.get(slug) {
                return Some(RouteMatch {
                    route,
                    prefix_len: slug.len(),
                });
            }
            if !slug.is_empty() {
                return None;
            }
        } else if !table.slugs.is_empty() {
            if let Some(m) = lookup_slug(table, path) {
                return Some(m);
            }
        }
    }
    if let Some(route) = table.hosts.get(host) {
        return Some(RouteMatch {
            route,
            prefix_len: 0,
        });
    }
    for suffix in table.base_suffixes.iter() {
        if let Some(label) = host.strip_suffix(&**suffix) {
            if label.contains('.') || label.is_empty() {
                continue;
            }
            if let Some(route) = table.labels.get(label) {
                return Some(RouteMatch {
                    route,
                    prefix_len: 0,
                });
            }
        }
    }
    None
}

pub fn lookup_slug<'t>(table: &'t RouteTable, path: &str) -> Option<RouteMatch<'t>> {
    // Candidate prefix ends: each '/' after the first byte, then the end of the
    // path. A slug with n segments ends at the n-th of them.
    let mut ends = [0usize; MAX_SLUG_SEGMENTS];
    let mut n = 0;
    let bytes = path.as_bytes();
    if bytes.first() == Some(&b'/') {
        for (i, &b) in bytes.iter().enumerate().skip(1) {
            if n == MAX_SLUG_SEGMENTS {
                break;
            }
            if b == b'/' {
                ends[n] = i;
                n += 1;
            }
        }
        if n < MAX_SLUG_SEGMENTS && bytes.len() > 1 && bytes[bytes.len() - 1] != b'/' {
            ends[n] = bytes.len();
            n += 1;
        }
    }
    for &end in ends[..n].iter().rev() {
        if let Some(route) = table.slugs.get(&path[..end]) {
            return Some(RouteMatch {
                route,
                prefix_len: end,
            });
        }
    }
    table.slugs.get("").map(|route| RouteMatch {
        route,
        prefix_len: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{RouteSpec, RouteTarget, TableSettings, Upstream};

    fn spec(id: &str, hosts: &[&str], labels: &[&str], slugs: &[&str], strip: bool) -> RouteSpec {
        let upstream = Upstream::parse("http://127.0.0.1:1").unwrap();
        let spec = RouteSpec::new(id, RouteTarget::Upstream(upstream)).strip_prefix(strip);
        let spec = hosts.iter().fold(spec, |s, h| s.host(*h));
        let spec = labels.iter().fold(spec, |s, l| s.label(*l));
        slugs.iter().fold(spec, |s, p| s.slug(*p))
    }

    fn table() -> RouteTable {
        RouteTable::build(
            &TableSettings {
                base_domains: vec!["localhost".into(), "Sessions.Example.com.".into()],
                portal_host: Some("portal.example.com".into()),
            },
            vec![
                spec("nb", &[], &["nb"], &[], false),
                spec("custom", &["app.customer.io"], &[], &[], false),
                spec("lab", &[], &[], &["/lab"], false),
                spec("lab-deep", &[], &[], &["/lab/team/"], true),
                spec("ide", &[], &[], &["/ide"], true),
                spec("portal-home", &["portal.example.com"], &[], &[], false),
            ],
            None,
            1,
        )
        .unwrap()
    }

    #[test]
    fn lookup_cases() {
        let t = table();
        // (host, path, route id, upstream path)
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            ("nb.localhost", "/tree", Some("nb"), "/tree"),
            ("nb.sessions.example.com", "/", Some("nb"), "/"),
            ("x.nb.localhost", "/", None, ""),
            ("localhost", "/", None, ""),
            ("other.localhost", "/", None, ""),
            ("app.customer.io", "/a?b", Some("custom"), "/a?b"),
            ("portal.example.com", "/lab", Some("lab"), "/lab"),
            ("portal.example.com", "/lab/", Some("lab"), "/lab/"),
            ("portal.example.com", "/lab/x/y", Some("lab"), "/lab/x/y"),
            (
                "portal.example.com",
                "/laboratory",
                Some("portal-home"),
                "/laboratory",
            ),
            ("portal.example.com", "/lab/team", Some("lab-deep"), "/"),
            ("portal.example.com", "/lab/team/", Some("lab-deep"), "/"),
            (
                "portal.example.com",
                "/lab/team/nb/1",
                Some("lab-deep"),
                "/nb/1",
            ),
            (
                "portal.example.com",
                "/lab/teams",
                Some("lab"),
                "/lab/teams",
            ),
            ("portal.example.com", "/ide/", Some("ide"), "/"),
            ("portal.example.com", "/ide", Some("ide"), "/"),
            ("portal.example.com", "/", Some("portal-home"), "/"),
            ("nb.localhost", "/lab", Some("nb"), "/lab"),
            ("app.customer.io", "/lab", Some("custom"), "/lab"),
        ];
        for (host, path, want, want_path) in cases {
            let m = lookup(&t, host, path);
            assert_eq!(m.as_ref().map(|m| &*m.route.id), *want, "{host}{path}");
            if let Some(m) = m {
                assert_eq!(m.upstream_path(path), *want_path, "{host}{path}");
            }
        }
    }

    #[test]
    fn root_slug_catches_the_rest_of_the_portal() {
        let t = RouteTable::build(
            &TableSettings {
                base_domains: vec![],
                portal_host: Some("portal".into()),
            },
            vec![
                spec("root", &[], &[], &["/"], false),
                spec("a", &[], &[], &["/a"], true),
            ],
            None,
            1,
        )
        .unwrap();
        let cases: &[(&str, &str)] = &[
            ("/", "root"),
            ("/x", "root"),
            ("/a/b", "a"),
            ("/ab", "root"),
        ];
        for (path, want) in cases {
            assert_eq!(
                &*lookup(&t, "portal", path).unwrap().route.id,
                *want,
                "{path}"
            );
        }
    }

    #[test]
    fn an_access_link_goes_to_the_route_of_exactly_its_slug() {
        let t = RouteTable::build(
            &TableSettings {
                base_domains: vec!["localhost".into()],
                portal_host: Some("portal".into()),
            },
            vec![
                spec("a", &[], &["a"], &["/a"], false),
                spec("shadow", &[], &[], &["/a/__sessiongate"], false),
                spec("deep", &[], &[], &["/a/b/c"], true),
                spec("slug-root", &[], &[], &["/__sessiongate"], false),
                spec("portal-home", &["portal"], &[], &[], false),
            ],
            None,
            1,
        )
        .unwrap();
        // (host, path, route id, bytes of the path its slug took)
        let cases: &[(&str, &str, Option<&str>, usize)] = &[
            ("portal", "/a/__sessiongate/activate", Some("a"), 2),
            ("portal", "/a/b/c/__sessiongate/activate", Some("deep"), 6),
            ("portal", "/__sessiongate/activate", Some("portal-home"), 0),
            // Under a slug no route has exactly: no other route's.
            ("portal", "/a/b/__sessiongate/activate", None, 0),
            ("portal", "/x/__sessiongate/activate", None, 0),
            ("portal", "/a//__sessiongate/activate", None, 0),
            // Not a link: the longest prefix as ever.
            ("portal", "/a/__sessiongate/activate/", Some("shadow"), 16),
            ("portal", "/a/__sessiongate/x", Some("shadow"), 16),
            ("portal", "/__sessiongate/x", Some("slug-root"), 14),
            // A session's own host: the host alone picks the route.
            ("a.localhost", "/__sessiongate/activate", Some("a"), 0),
            ("a.localhost", "/x/__sessiongate/activate", Some("a"), 0),
        ];
        for (host, path, want, prefix_len) in cases {
            let m = lookup(&t, host, path);
            assert_eq!(m.as_ref().map(|m| &*m.route.id), *want, "{host}{path}");
            if let Some(m) = m {
                assert_eq!(m.prefix_len, *prefix_len, "{host}{path}");
            }
        }
    }

    #[test]
    fn very_deep_paths_stay_bounded() {
        let t = table();
        let deep = "/lab".to_string() + &"/x".repeat(10_000);
        let m = lookup(&t, "portal.example.com", &deep).unwrap();
        assert_eq!(&*m.route.id, "lab");
    }
}
