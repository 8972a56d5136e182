//! What `ctl` prints for people: tables, `key: value` details and one-line
//! summaries, each from the API's typed answer, and the re-indented JSON for
//! `--output json`. Pure functions into a `String`: no I/O, so each can be
//! checked against a literal.
//!
//! Conventions, the same in every table: an absent value is `-`, a list is
//! comma-separated (`-` when empty), an enum is the word the API uses for it.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};

use serde::Serialize;

use crate::access::{AccessLink, KeyRotation};
use crate::api::directory::CreatedToken;
use crate::api::directory::TokenInfo;
use crate::api::gateway::GatewaysView;
use crate::api::routes::RoutesView;
use crate::api::sessions::{BulkResponse, Page};
use crate::session::lifecycle::SessionState;
use crate::session::model::{Group, Session, SessionKind, User};
use crate::workshop::environment::Environment;

/// A page's table, and a footer when the page is not everything.
pub(super) fn page<T>(p: &Page<T>, what: &str, rows: fn(&[T], &mut String), out: &mut String) {
    if p.total == 0 {
        let _ = writeln!(out, "no {what}");
        return;
    }
    if !p.items.is_empty() {
        rows(&p.items, out);
    }
    if p.items.len() as u64 != p.total {
        let _ = writeln!(
            out,
            "{} of {} {what} (page {}, {} per page)",
            p.items.len(),
            p.total,
            p.page,
            p.per_page,
        );
    }
}

pub(super) fn sessions_table(items: &[Session], out: &mut String) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                wire(&s.state),
                s.owner.clone(),
                wire(&s.kind),
                target(s),
                countdown(s),
                access(s),
                labels(&s.labels),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "OWNER",
            "KIND",
            "TARGET",
            "EXPIRES IN",
            "GROUPS",
            "LABELS",
        ],
        &rows,
        out,
    );
}

pub(super) fn session_details(s: &Session, out: &mut String) {
    let secs = |v: Option<u64>| match v {
        Some(n) => format!("{n}s ({})", human_secs(n)),
        None => "-".into(),
    };
    let mut pairs = vec![
        ("name", s.name.clone()),
        ("state", wire(&s.state)),
        ("owner", s.owner.clone()),
        ("kind", wire(&s.kind)),
        ("target", target(s)),
    ];
    if s.kind != SessionKind::Link {
        pairs.push(("tls verify", s.tls_verify.to_string()));
        pairs.push(("rewrite host", s.rewrite_host.to_string()));
        if s.allow_any_upgrade {
            pairs.push(("upgrades", "any protocol".to_string()));
        }
    }
    if let Some(port) = s.workspace_port {
        // As the seed's table has them: the gateway's port, the app's.
        pairs.push(("local port", port.to_string()));
        pairs.push(("remote port", cell(s.remote_port)));
    }
    pairs.push(("slug", cell(s.slug.as_deref())));
    if s.shared_origin {
        pairs.push(("shared origin", "true".into()));
    }
    pairs.extend([
        ("strip prefix", s.strip_prefix.to_string()),
        ("custom domain", cell(s.custom_domain.as_deref())),
        ("public", s.public.to_string()),
        ("groups", list(&s.groups)),
        ("created", s.created.clone()),
        ("activated", cell(s.activated.as_deref())),
        ("expires", cell(s.expires.as_deref())),
        ("expires in", countdown(s)),
        ("last activity", cell(s.last_activity.as_deref())),
        ("duration", secs(s.duration)),
        ("idle timeout", secs(s.idle_timeout)),
        ("extendable", s.extendable.to_string()),
        ("environment", cell(s.environment.as_deref())),
        ("labels", labels(&s.labels)),
    ]);
    details(&pairs, out);
}

/// After an action: the session's name, state and time left.
pub(super) fn session_line(s: &Session, out: &mut String) {
    let _ = write!(out, "{}: {}", s.name, wire(&s.state));
    match (s.countdown, countdown(s).as_str()) {
        (Some(secs), _) if s.state == SessionState::Paused => {
            let _ = write!(out, ", {} left when resumed", human_secs(secs));
        }
        (_, "-") => {}
        (_, "never") => out.push_str(", no expiry"),
        (_, c) => {
            let _ = write!(out, ", expires in {c}");
        }
    }
    if s.public {
        out.push_str(", public");
    }
    if !s.groups.is_empty() {
        let _ = write!(out, ", shared with {}", list(&s.groups));
    }
    out.push('\n');
}

/// Where the session goes: the link's URL, or the tunnel's app.
fn target(s: &Session) -> String {
    if s.kind == SessionKind::Link {
        return cell(s.url.as_deref());
    }
    let scheme = if s.https { "https" } else { "http" };
    format!(
        "{scheme}://{}:{}",
        s.remote_host.as_deref().unwrap_or("localhost"),
        cell(s.remote_port)
    )
}

/// Time left, frozen while paused; `never` without an expiry.
fn countdown(s: &Session) -> String {
    use SessionState::{Evicted, Paused, Running};
    match s.countdown {
        Some(secs) if s.state == Paused => format!("{} (paused)", human_secs(secs)),
        Some(secs) => human_secs(secs),
        // Pending: the clock starts at activation.
        None if s.expires.is_none() && matches!(s.state, Running | Paused | Evicted) => {
            "never".into()
        }
        None => "-".into(),
    }
}

/// Who may open it: `(public)`, the groups, or both.
fn access(s: &Session) -> String {
    match (s.public, list(&s.groups)) {
        (true, g) if g == "-" => "(public)".into(),
        (true, g) => format!("(public) {g}"),
        (false, g) => g,
    }
}

pub(super) fn bulk_table(b: &BulkResponse, out: &mut String) {
    let rows: Vec<Vec<String>> = b
        .results
        .iter()
        .map(|r| {
            let error = match (&r.error, r.ok) {
                (_, true) => String::new(),
                (Some(e), false) => format!("{}: {}", e.code, e.message),
                (None, false) => "-: -".into(),
            };
            vec![
                r.name.clone(),
                if r.ok { "ok".into() } else { "failed".into() },
                r.state.as_ref().map_or_else(|| "-".into(), wire),
                error,
            ]
        })
        .collect();
    table(&["NAME", "RESULT", "STATE", "ERROR"], &rows, out);
    let _ = writeln!(
        out,
        "{}: applied to {} of {}",
        wire(&b.action),
        b.applied,
        b.results.len()
    );
}

pub(super) fn users_table(items: &[User], out: &mut String) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                cell(u.email.as_deref()),
                full_name(u),
                list(&u.groups),
                u.created.clone(),
            ]
        })
        .collect();
    table(
        &["NAME", "EMAIL", "FULL NAME", "GROUPS", "CREATED"],
        &rows,
        out,
    );
}

fn full_name(u: &User) -> String {
    let parts: Vec<&str> = [u.first_name.as_deref(), u.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

pub(super) fn user_details(u: &User, out: &mut String) {
    details(
        &[
            ("name", u.name.clone()),
            ("id", u.id.clone()),
            ("email", cell(u.email.as_deref())),
            ("first name", cell(u.first_name.as_deref())),
            ("last name", cell(u.last_name.as_deref())),
            ("groups", list(&u.groups)),
            ("created", u.created.clone()),
        ],
        out,
    );
}

pub(super) fn groups_table(groups: &[Group], out: &mut String) {
    if groups.is_empty() {
        out.push_str("no groups\n");
        return;
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![g.name.clone(), list(&g.members), g.created.clone()])
        .collect();
    table(&["NAME", "MEMBERS", "CREATED"], &rows, out);
}

pub(super) fn group_details(g: &Group, out: &mut String) {
    details(
        &[
            ("name", g.name.clone()),
            ("members", list(&g.members)),
            ("created", g.created.clone()),
        ],
        out,
    );
}

pub(super) fn tokens_table(tokens: &[TokenInfo], out: &mut String) {
    if tokens.is_empty() {
        out.push_str("no tokens (besides the admin token)\n");
        return;
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| vec![t.name.clone(), wire(&t.kind), t.created.clone()])
        .collect();
    table(&["NAME", "KIND", "CREATED"], &rows, out);
}

/// The token last, alone on its line, so `| tail -n 1` takes it.
pub(super) fn token_created(t: &CreatedToken, out: &mut String) {
    let _ = writeln!(
        out,
        "{} token {:?} created; it is shown this once, only its hash is kept:",
        wire(&t.kind),
        t.name,
    );
    let _ = writeln!(out, "{}", t.token);
}

pub(super) fn environments_table(envs: &[Environment], out: &mut String) {
    let rows: Vec<Vec<String>> = envs
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                wire(&e.state),
                e.workshop.title.clone(),
                e.capacity.to_string(),
                e.reserved.to_string(),
                e.allocated.to_string(),
                e.targets.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "TITLE",
            "CAPACITY",
            "RESERVED",
            "ALLOCATED",
            "TARGETS",
        ],
        &rows,
        out,
    );
}

pub(super) fn environment_details(e: &Environment, out: &mut String) {
    for (k, val) in [
        ("name", e.name.clone()),
        ("state", wire(&e.state)),
        ("workshop", e.workshop.name.clone()),
        ("title", e.workshop.title.clone()),
        ("duration", cell(e.duration)),
        ("capacity", e.capacity.to_string()),
        ("reserved", e.reserved.to_string()),
        ("allocated", e.allocated.to_string()),
        ("targets", e.targets.join(", ")),
        ("tls_verify", e.tls_verify.to_string()),
        ("created", e.created.clone()),
    ] {
        let _ = writeln!(out, "{k:<11} {val}");
    }
}

pub(super) fn environment_stopped(e: &Environment, out: &mut String) {
    let _ = writeln!(
        out,
        "environment {} is {}; {} sessions run to their end",
        e.name,
        wire(&e.state),
        e.allocated
    );
}

pub(super) fn routes_table(v: &RoutesView, out: &mut String) {
    let _ = writeln!(
        out,
        "route table version {}, {} routes, base domains {}",
        v.version,
        v.routes.len(),
        list(&v.base_domains)
    );
    if v.routes.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = v
        .routes
        .iter()
        .map(|r| {
            let addresses: Vec<&str> = [&r.hosts, &r.labels, &r.slugs]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            let target = match &r.upstream {
                None => format!("redirect {}", cell(r.redirect.as_deref())),
                Some(u) => u.clone(),
            };
            let flags: Vec<&str> = [
                (r.paused, "paused"),
                (r.public, "public"),
                (r.strip_prefix, "strip-prefix"),
                (r.rewrite_host, "rewrite-host"),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name)
            .collect();
            vec![
                r.id.clone(),
                list(&addresses),
                target,
                list(&flags),
                cell(r.last_activity.as_deref()),
                r.upgraded_connections.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "MATCHES",
            "TARGET",
            "FLAGS",
            "LAST ACTIVITY",
            "UPGRADED",
        ],
        &rows,
        out,
    );
}

pub(super) fn gateways_table(v: &GatewaysView, out: &mut String) {
    let connected = v.gateways.iter().filter(|g| g.connected).count();
    let _ = writeln!(
        out,
        "route table version {}, {} gateways connected",
        v.version, connected
    );
    if v.gateways.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = v
        .gateways
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.instance.clone(),
                g.address.clone(),
                g.version.to_string(),
                g.lag.to_string(),
                g.last_seen.clone(),
                if g.connected { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "INSTANCE",
            "ADDRESS",
            "VERSION",
            "LAG",
            "LAST SEEN",
            "CONNECTED",
        ],
        &rows,
        out,
    );
}

pub(super) fn access_link(l: &AccessLink, out: &mut String) {
    let _ = write!(out, "{}\n(one use, until {})\n", l.url, l.expires);
}

pub(super) fn key_rotation(k: &KeyRotation, out: &mut String) {
    let _ = write!(out, "signing key {}", k.current);
    if let Some(p) = &k.previous {
        let until = k.previous_valid_until.as_deref().unwrap_or("?");
        let _ = write!(out, "; {p} verifies until {until}");
    }
    out.push('\n');
}

/// An optional value as a cell: `-` when absent.
fn cell(v: Option<impl Display>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A list as a cell: comma-separated, `-` when empty.
fn list(items: &[impl AsRef<str>]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    items.join(",")
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    list(&pairs)
}

/// An enum as the API spells it (`running`, `link`, `STOPPING`), so that a
/// table shows the word `--output json` shows.
fn wire(value: &impl Serialize) -> String {
    let json = serde_json::to_string(value).unwrap_or_default();
    json.trim_matches('"').to_string()
}

/// Aligned columns, two spaces apart, no trailing blanks.
fn table(header: &[&str], rows: &[Vec<String>], out: &mut String) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `key: value` lines with the values aligned.
fn details(pairs: &[(&str, String)], out: &mut String) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        let _ = writeln!(out, "{:width$}  {v}", format!("{k}:"), width = width + 1);
    }
}

/// `1h 02m`, `3d 4h`: what a person reads at a glance.
fn human_secs(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Re-indents JSON text the way `serde_json::to_string_pretty` does, but
/// keeps the server's key order (a `serde_json::Value` sorts its keys), so
/// `--output json` shows fields in the order the API documents them.
/// `raw` has already been checked to be valid JSON.
pub(super) fn pretty(raw: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    }
    let mut out = String::with_capacity(raw.len() * 2);
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::{json, Value};

    use super::*;

    fn from<T: DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rendered<T: DeserializeOwned>(v: Value, render: fn(&T, &mut String)) -> String {
        let mut out = String::new();
        render(&from(v), &mut out);
        out
    }

    /// A running tunnel session as the API shows it, with `changes` applied.
    fn session(changes: Value) -> Session {
        let s = json!({
            "name": "lab", "kind": "tunnel", "remote_host": "127.0.0.1", "remote_port": 9001,
            "url": null, "https": false, "tls_verify": true, "slug": null,
            "strip_prefix": false, "rewrite_host": false, "custom_domain": null,
            "workspace_port": null, "owner": "ann", "groups": [], "public": false,
            "state": "running", "created": "2024-01-02T03:04:05.678Z",
            "activated": "2024-01-02T03:04:05.678Z", "expires": "2024-01-02T04:04:05.678Z",
            "last_activity": null, "countdown": 3599, "extendable": true, "duration": 3600,
            "idle_timeout": null, "environment": null, "labels": {},
        });
        from(merged(s, changes))
    }

    /// `base` with the fields of `changes` added or replaced.
    fn merged(mut base: Value, changes: Value) -> Value {
        if let (Some(base), Value::Object(changes)) = (base.as_object_mut(), changes) {
            base.extend(changes);
        }
        base
    }

    #[test]
    fn pretty_json_matches_serde_json_and_keeps_key_order() {
        let v = json!({
            "a": {"z": 1, "b": [1, 2.5, null, true], "e": {}, "f": []},
            "s": "x, {y}: [\"q\\\"] \\",
            "u": "é",
        });
        assert_eq!(
            pretty(&v.to_string()),
            serde_json::to_string_pretty(&v).unwrap()
        );
        assert_eq!(
            pretty("{\"z\": 1, \"a\": [ ], \"m\": { \"k\": \"v\" }}"),
            "{\n  \"z\": 1,\n  \"a\": [],\n  \"m\": {\n    \"k\": \"v\"\n  }\n}"
        );
    }

    #[test]
    fn tables_align_columns_without_trailing_blanks() {
        let mut out = String::new();
        table(
            &["NAME", "STATE"],
            &[
                vec!["a-long-name".into(), "running".into()],
                vec!["b".into(), "".into()],
            ],
            &mut out,
        );
        assert_eq!(out, "NAME         STATE\na-long-name  running\nb\n");
    }

    #[test]
    fn durations_read_at_a_glance() {
        for (secs, want) in [
            (0, "0s"),
            (59, "59s"),
            (61, "1m 01s"),
            (3600 + 120, "1h 02m"),
            (3 * 86_400 + 4 * 3600 + 59, "3d 4h"),
        ] {
            assert_eq!(human_secs(secs), want, "{secs}");
        }
    }

    /// The `EXPIRES IN` cell and the line after an action, by state: the
    /// clock is frozen while paused, absent before activation and after the
    /// end, and `never` for a live session without an expiry.
    #[test]
    fn time_left_reads_by_state() {
        let cases = [
            (json!({}), "59m 59s", "lab: running, expires in 59m 59s"),
            (
                json!({"state": "paused", "countdown": 90, "public": true, "groups": ["a", "b"]}),
                "1m 30s (paused)",
                "lab: paused, 1m 30s left when resumed, public, shared with a,b",
            ),
            (
                json!({"state": "paused", "countdown": null, "expires": null}),
                "never",
                "lab: paused, no expiry",
            ),
            (
                json!({"countdown": null, "expires": null}),
                "never",
                "lab: running, no expiry",
            ),
            (
                json!({"state": "evicted", "countdown": null, "expires": null}),
                "never",
                "lab: evicted, no expiry",
            ),
            (
                json!({"state": "pending", "countdown": null, "expires": null}),
                "-",
                "lab: pending",
            ),
            (
                json!({"state": "expired", "countdown": null}),
                "-",
                "lab: expired",
            ),
        ];
        for (changes, cell, line) in cases {
            let s = session(changes.clone());
            assert_eq!(countdown(&s), cell, "{changes}");
            let mut out = String::new();
            session_line(&s, &mut out);
            assert_eq!(out, format!("{line}\n"), "{changes}");
        }
    }

    #[test]
    fn a_page_that_is_not_everything_says_so() {
        let s = session(json!({
            "name": "a", "remote_host": null, "remote_port": 8888, "countdown": null,
            "expires": null, "groups": ["g"], "public": true, "labels": {"course": "rust"},
        }));
        let p = Page {
            items: vec![s],
            total: 3,
            page: 2,
            per_page: 1,
        };
        let mut out = String::new();
        page(&p, "sessions", sessions_table, &mut out);
        assert_eq!(
            out,
            "NAME  STATE    OWNER  KIND    TARGET                 EXPIRES IN  GROUPS      LABELS\n\
             a     running  ann    tunnel  http://localhost:8888  never       (public) g  course=rust\n\
             1 of 3 sessions (page 2, 1 per page)\n"
        );
        let empty: Page<Session> = Page {
            items: vec![],
            total: 0,
            page: 1,
            per_page: 50,
        };
        let mut out = String::new();
        page(&empty, "sessions", sessions_table, &mut out);
        assert_eq!(out, "no sessions\n");
    }

    #[test]
    fn a_link_shows_its_url_and_no_tunnel_settings() {
        let s = session(json!({
            "name": "docs", "kind": "link", "remote_host": null, "remote_port": null,
            "url": "https://example.org/docs", "owner": "bob", "groups": ["staff", "ops"],
            "public": true, "extendable": false, "countdown": null, "expires": null,
            "duration": null, "labels": {"course": "rust", "b": "x=y"},
            "environment": "lab-w01", "slug": "/docs", "custom_domain": "docs.example.org",
            "idle_timeout": 600, "last_activity": "2024-01-02T03:05:00.000Z",
        }));
        let mut out = String::new();
        session_details(&s, &mut out);
        assert_eq!(
            out,
            "name:           docs\n\
             state:          running\n\
             owner:          bob\n\
             kind:           link\n\
             target:         https://example.org/docs\n\
             slug:           /docs\n\
             strip prefix:   false\n\
             custom domain:  docs.example.org\n\
             public:         true\n\
             groups:         staff,ops\n\
             created:        2024-01-02T03:04:05.678Z\n\
             activated:      2024-01-02T03:04:05.678Z\n\
             expires:        -\n\
             expires in:     never\n\
             last activity:  2024-01-02T03:05:00.000Z\n\
             duration:       -\n\
             idle timeout:   600s (10m 00s)\n\
             extendable:     false\n\
             environment:    lab-w01\n\
             labels:         b=x=y,course=rust\n"
        );
    }

    #[test]
    fn routes_show_what_they_match_where_they_go_and_their_flags() {
        let route = |id: &str, changes: Value| {
            let r = json!({
                "id": id, "hosts": [], "labels": [], "slugs": [], "upstream": null,
                "redirect": null, "strip_prefix": false, "rewrite_host": false,
                "paused": false, "public": false, "last_activity": null,
                "upgraded_connections": 0,
            });
            merged(r, changes)
        };
        let view = json!({
            "version": 7, "base_domains": ["localhost", "example.org"], "portal_host": null,
            "routes": [
                route("session:docs", json!({"labels": ["docs"], "slugs": ["/docs"],
                    "redirect": "https://example.org/docs", "public": true})),
                route("session:lab", json!({"hosts": ["lab.example.com"], "labels": ["lab"],
                    "upstream": "http://127.0.0.1:9001", "strip_prefix": true,
                    "rewrite_host": true, "paused": true,
                    "last_activity": "2024-01-01T00:00:00Z", "upgraded_connections": 3})),
                route("static:x", json!({"upstream": "http://10.0.0.1:80"})),
            ],
        });
        assert_eq!(
            rendered(view, routes_table),
            "route table version 7, 3 routes, base domains localhost,example.org\n\
             ID            MATCHES              TARGET                             FLAGS                             LAST ACTIVITY         UPGRADED\n\
             session:docs  docs,/docs           redirect https://example.org/docs  public                            -                     0\n\
             session:lab   lab.example.com,lab  http://127.0.0.1:9001              paused,strip-prefix,rewrite-host  2024-01-01T00:00:00Z  3\n\
             static:x      -                    http://10.0.0.1:80                 -                                 -                     0\n"
        );
        let empty = json!({"version": 1, "base_domains": [], "portal_host": null, "routes": []});
        assert_eq!(
            rendered(empty, routes_table),
            "route table version 1, 0 routes, base domains -\n"
        );
    }

    #[test]
    fn bulk_results_name_each_session_and_why_it_failed() {
        let bulk = json!({"action": "pause", "applied": 1, "results": [
            {"name": "s1", "ok": true, "state": "paused"},
            {"name": "nosuch", "ok": false,
             "error": {"code": "not_found", "message": "no session \"nosuch\""}},
        ]});
        assert_eq!(
            rendered(bulk, bulk_table),
            "NAME    RESULT  STATE   ERROR\n\
             s1      ok      paused\n\
             nosuch  failed  -       not_found: no session \"nosuch\"\n\
             pause: applied to 1 of 2\n"
        );
    }

    /// Answers printed as a line or two rather than a table.
    #[test]
    fn single_answers_read_as_sentences() {
        let cases = [
            (
                rendered(
                    json!({"current": "k2", "previous": "k1",
                           "previous_valid_until": "2024-01-02T00:00:00.000Z"}),
                    key_rotation,
                ),
                "signing key k2; k1 verifies until 2024-01-02T00:00:00.000Z\n",
            ),
            (
                rendered(json!({"current": "k1"}), key_rotation),
                "signing key k1\n",
            ),
            (
                rendered(
                    json!({"url": "http://lab.localhost:8080/a?t=x",
                           "expires": "2024-01-01T00:01:00.000Z"}),
                    access_link,
                ),
                "http://lab.localhost:8080/a?t=x\n(one use, until 2024-01-01T00:01:00.000Z)\n",
            ),
            (
                rendered(
                    json!({"name": "ops", "kind": "admin", "created": "x", "token": "sgt_a"}),
                    token_created,
                ),
                "admin token \"ops\" created; it is shown this once, only its hash is kept:\nsgt_a\n",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn gateways_show_where_each_stands() {
        let view = GatewaysView {
            version: 12,
            gateways: vec![
                crate::gateways::GatewayView {
                    name: "gw1".into(),
                    instance: "edge-a-7".into(),
                    address: "10.0.0.5:41000".into(),
                    version: 12,
                    lag: 0,
                    last_seen: "2026-12-05T03:00:00.000Z".into(),
                    connected: true,
                },
                crate::gateways::GatewayView {
                    name: "gw2".into(),
                    instance: "edge-b-9".into(),
                    address: "10.0.0.6:41000".into(),
                    version: 9,
                    lag: 3,
                    last_seen: "2026-12-05T02:59:00.000Z".into(),
                    connected: false,
                },
            ],
        };
        let mut out = String::new();
        gateways_table(&view, &mut out);
        assert!(
            out.starts_with("route table version 12, 1 gateways connected\n"),
            "{out}"
        );
        let gw2 = out.lines().find(|l| l.starts_with("gw2")).unwrap();
        for cell in ["edge-b-9", "10.0.0.6:41000", " 9 ", " 3 ", " no"] {
            assert!(gw2.contains(cell), "{cell:?} in {gw2:?}");
        }
    }
}
