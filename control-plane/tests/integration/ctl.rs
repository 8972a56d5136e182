//! `sessiongate ctl` as a process against a real `sessiongate serve` (in
//! the test's process: the binary under test is ctl): every change it makes
//! is checked through the API, not only its exit status, and every failure
//! is exit 1 with one line on stderr that says why.

use std::net::SocketAddr;

use serde_json::{json, Value};
use testkit::server::{InProcess, TOKEN};
use testkit::{temp_dir, Endpoints, Origin, DEADLINE};

/// What one `ctl` run left behind.
#[derive(Debug)]
pub(crate) struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    pub(crate) fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert_eq!(self.stderr, "", "{self:#?}");
        &self.stdout
    }

    /// Exit status 1 and exactly one line on stderr, returned without the prefix.
    #[track_caller]
    fn failed(&self) -> &str {
        assert_eq!(self.code, Some(1), "{self:#?}");
        assert_eq!(self.stderr.lines().count(), 1, "{self:#?}");
        self.stderr
            .trim_end()
            .strip_prefix("sessiongate ctl: ")
            .unwrap_or_else(|| panic!("no prefix: {self:#?}"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }
}

/// Runs `sessiongate ctl` with only the `SESSIONGATE_*` variables in `env`.
async fn ctl_env(env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"));
    cmd.arg("ctl").args(args).env("NO_COLOR", "1");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SESSIONGATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("ctl {args:?} did not finish"))
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ctl` against `sg` with the admin token.
pub(crate) async fn ctl(sg: &Endpoints, args: &[&str]) -> Run {
    let server = sg.api_url();
    ctl_env(
        &[
            ("SESSIONGATE_SERVER", &server),
            ("SESSIONGATE_TOKEN", &sg.token),
        ],
        args,
    )
    .await
}

async fn state_of(sg: &Endpoints, name: &str) -> String {
    let (s, v) = sg
        .api("GET", &format!("/api/v1/sessions/{name}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["state"].as_str().unwrap().to_string()
}

fn names(v: &Value) -> Vec<&str> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

/// The data line of a table whose first cell is `name`.
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name:?} in\n{table}"))
}

#[tokio::test]
async fn ctl_manages_users_groups_and_sessions_through_the_api() {
    let app_origin = Origin::named("app");
    let app = app_origin.addr;
    let port = app.port().to_string();
    let sg = InProcess::start(&temp_dir("ctl"), "").await;

    // Users and groups.
    let out = ctl(
        &sg,
        &[
            "users",
            "create",
            "ann",
            "--email",
            "ann@example.org",
            "--first-name",
            "Ann",
        ],
    )
    .await;
    let text = out.ok();
    assert!(text.lines().any(|l| l == "name:        ann"), "{text}");
    ctl(&sg, &["users", "create", "bob"]).await.ok();
    let users = ctl(&sg, &["users", "list"]).await;
    let ann = row(users.ok(), "ann");
    assert!(
        ann.contains("ann@example.org") && ann.contains("Ann"),
        "{ann}"
    );
    let (_, v) = sg.api("GET", "/api/v1/users/ann", None).await;
    assert_eq!(v["email"], "ann@example.org");

    ctl(&sg, &["groups", "create", "staff", "--member", "ann"])
        .await
        .ok();
    ctl(&sg, &["groups", "add-member", "staff", "bob"])
        .await
        .ok();
    let (_, v) = sg.api("GET", "/api/v1/groups/staff", None).await;
    assert_eq!(v["members"], json!(["ann", "bob"]));
    ctl(&sg, &["groups", "remove-member", "staff", "ann"])
        .await
        .ok();
    let (_, v) = sg.api("GET", "/api/v1/groups/staff", None).await;
    assert_eq!(v["members"], json!(["bob"]));
    ctl(&sg, &["groups", "create", "empty"]).await.ok();
    ctl(&sg, &["groups", "set-members", "empty", "ann", "bob"])
        .await
        .ok();
    let groups = ctl(&sg, &["groups", "list"]).await;
    assert!(row(groups.ok(), "empty").contains("ann,bob"), "{groups:?}");
    ctl(&sg, &["groups", "delete", "empty"]).await.ok();
    assert_eq!(sg.api("GET", "/api/v1/groups/empty", None).await.0, 404);

    // A tunnel and a link session.
    let out = ctl(
        &sg,
        &[
            "sessions",
            "create",
            "lab",
            "--owner",
            "ann",
            "--port",
            &port,
            "--host",
            "127.0.0.1",
            "--public",
            "--duration",
            "3600",
            "--label",
            "course=rust",
        ],
    )
    .await;
    let text = out.ok();
    assert!(
        text.contains("state:") && text.contains("running"),
        "{text}"
    );
    let (_, v) = sg.api("GET", "/api/v1/sessions/lab", None).await;
    assert_eq!(v["kind"], "tunnel");
    assert_eq!(v["remote_port"], app.port());
    assert_eq!(v["labels"], json!({"course": "rust"}));
    assert_eq!(v["duration"], 3600);
    assert_eq!(sg.open("lab").await, (200, "app".to_string()));

    let docs = ctl(
        &sg,
        &[
            "-o",
            "json",
            "sessions",
            "create",
            "docs",
            "--owner",
            "bob",
            "--url",
            "https://example.org/docs",
            "--not-extendable",
        ],
    )
    .await
    .json();
    assert_eq!(docs["kind"], "link");
    assert_eq!(docs["extendable"], false);
    let (_, v) = sg.api("GET", "/api/v1/sessions/docs", None).await;
    assert_eq!(v["url"], "https://example.org/docs");

    // Listing: a table, JSON, filters, paging.
    let list = ctl(&sg, &["sessions", "list"]).await;
    let table = list.ok();
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("STATE") && header.contains("TARGET"),
        "{table}"
    );
    let lab = row(table, "lab");
    for want in [
        "running",
        "ann",
        "tunnel",
        &format!("http://127.0.0.1:{port}"),
        "course=rust",
        "(public)",
    ] {
        assert!(lab.contains(want), "{want:?} not in {lab:?}");
    }
    assert!(row(table, "docs").contains("https://example.org/docs"));
    assert_eq!(table.lines().count(), 3, "no footer when all fit: {table}");

    let all = ctl(&sg, &["sessions", "list", "-o", "json"]).await.json();
    assert_eq!(names(&all), ["docs", "lab"]);
    assert_eq!(all["total"], 2);
    let anns = ctl(&sg, &["-o", "json", "sessions", "list", "--owner", "ann"])
        .await
        .json();
    assert_eq!(names(&anns), ["lab"]);
    let page = ctl(&sg, &["sessions", "list", "--per-page", "1", "--page", "2"]).await;
    let page = page.ok();
    assert!(row(page, "lab").contains("running"), "{page}");
    assert_eq!(
        page.lines().last(),
        Some("1 of 2 sessions (page 2, 1 per page)")
    );

    let get = ctl(&sg, &["sessions", "get", "lab"]).await;
    let get = get.ok();
    assert!(get.lines().any(|l| l == "owner:          ann"), "{get}");
    assert!(get.contains("3600s (1h 00m)"), "{get}");
    let get = ctl(&sg, &["-o", "json", "sessions", "get", "docs"])
        .await
        .json();
    assert_eq!(get["owner"], "bob");

    // Lifecycle: each action's effect seen through the API and the gateway.
    let out = ctl(&sg, &["sessions", "pause", "lab"]).await;
    assert!(
        out.ok().starts_with("lab: paused, ") && out.stdout.contains(" left when resumed, public"),
        "{out:?}"
    );
    assert_eq!(state_of(&sg, "lab").await, "paused");
    assert_eq!(sg.open("lab").await.0, 503);
    let paused = ctl(
        &sg,
        &["-o", "json", "sessions", "list", "--state", "paused"],
    )
    .await
    .json();
    assert_eq!(names(&paused), ["lab"]);
    let reason = ctl(&sg, &["sessions", "pause", "lab"]).await;
    let reason = reason.failed();
    assert!(
        reason.starts_with("409 invalid_transition: ") && reason.ends_with("is paused"),
        "{reason}"
    );
    assert_eq!(state_of(&sg, "lab").await, "paused");
    ctl(&sg, &["sessions", "resume", "lab"]).await.ok();
    assert_eq!(state_of(&sg, "lab").await, "running");
    assert_eq!(sg.open("lab").await, (200, "app".to_string()));
    ctl(&sg, &["sessions", "keepalive", "lab"]).await.ok();
    let extended = ctl(
        &sg,
        &[
            "-o",
            "json",
            "sessions",
            "extend",
            "lab",
            "--seconds",
            "600",
        ],
    )
    .await
    .json();
    assert!(extended["countdown"].as_u64().unwrap() > 3600, "{extended}");
    let refused = ctl(&sg, &["sessions", "extend", "docs"]).await;
    assert!(
        refused.failed().starts_with("409 not_extendable: "),
        "{refused:?}"
    );
    ctl(&sg, &["sessions", "evict", "lab"]).await.ok();
    assert_eq!(state_of(&sg, "lab").await, "evicted");
    ctl(&sg, &["sessions", "expire", "lab"]).await.ok();
    assert_eq!(state_of(&sg, "lab").await, "expired");
    assert_ne!(sg.open("lab").await.0, 200);
    let missing = ctl(&sg, &["sessions", "get", "nosuch"]).await;
    assert!(
        missing.failed().starts_with("404 not_found: ") && missing.stderr.contains("nosuch"),
        "{missing:?}"
    );

    // Sharing replaces the groups; no groups unshares.
    let out = ctl(&sg, &["sessions", "share", "docs", "staff"]).await;
    assert!(out.ok().contains("shared with staff"), "{out:?}");
    let (_, v) = sg.api("GET", "/api/v1/sessions/docs", None).await;
    assert_eq!(v["groups"], json!(["staff"]));
    let grouped = ctl(&sg, &["-o", "json", "sessions", "list", "--group", "staff"])
        .await
        .json();
    assert_eq!(names(&grouped), ["docs"]);
    ctl(&sg, &["sessions", "share", "docs"]).await.ok();
    let (_, v) = sg.api("GET", "/api/v1/sessions/docs", None).await;
    assert_eq!(v["groups"], json!([]));

    // Bulk: several names in one request; the failures are named, exit 1.
    for name in ["s1", "s2"] {
        ctl(
            &sg,
            &[
                "sessions", "create", name, "--owner", "bob", "--port", &port,
            ],
        )
        .await
        .ok();
    }
    let bulk = ctl(&sg, &["sessions", "pause", "s1", "lab", "s2", "nosuch"]).await;
    assert_eq!(
        bulk.failed(),
        "pause: 2 of 4 sessions failed: lab (invalid_transition), nosuch (not_found)"
    );
    assert!(row(&bulk.stdout, "s1").contains("ok"), "{bulk:?}");
    assert!(row(&bulk.stdout, "lab").contains("failed"), "{bulk:?}");
    assert!(bulk.stdout.contains("pause: applied to 2 of 4"), "{bulk:?}");
    assert_eq!(state_of(&sg, "s1").await, "paused");
    assert_eq!(state_of(&sg, "s2").await, "paused");
    assert_eq!(state_of(&sg, "lab").await, "expired");
    let bulk = ctl(&sg, &["-o", "json", "sessions", "resume", "s1", "s2"]).await;
    let v = bulk.json();
    assert_eq!(v["applied"], 2);
    assert_eq!(state_of(&sg, "s1").await, "running");
    ctl(&sg, &["sessions", "delete", "s1", "s2"]).await.ok();
    let (s, v) = sg.api("GET", "/api/v1/sessions", None).await;
    assert_eq!(s, 200);
    assert_eq!(names(&v), ["docs", "lab"], "deleted ones are not listed");

    // The route table, and deleting what is left.
    let routes = ctl(&sg, &["routes"]).await;
    let routes = routes.ok();
    assert!(routes.starts_with("route table version "), "{routes}");
    assert!(row(routes, "session:docs").contains("redirect https://example.org/docs"));
    // A user who owns a live session stays; expired and deleted ones do not count.
    let in_use = ctl(&sg, &["users", "delete", "bob"]).await;
    let reason = in_use.failed();
    assert!(
        reason.starts_with("409 conflict: ") && reason.contains("bob"),
        "{reason}"
    );
    ctl(&sg, &["sessions", "delete", "docs"]).await.ok();
    for user in ["ann", "bob"] {
        let out = ctl(&sg, &["users", "delete", user]).await;
        assert_eq!(out.ok(), format!("user {user} deleted\n"));
        let path = format!("/api/v1/users/{user}");
        assert_eq!(sg.api("GET", &path, None).await.0, 404);
    }
    ctl(&sg, &["groups", "delete", "staff"]).await.ok();
    assert_eq!(sg.api("GET", "/api/v1/groups/staff", None).await.0, 404);
}

#[tokio::test]
async fn ctl_tokens_and_failures_exit_1_with_one_line_naming_the_cause() {
    let sg = InProcess::start(&temp_dir("ctl-fail"), "").await;
    let server = sg.api_url();

    // A read-only token, printed once, reads but cannot write.
    let created = ctl(&sg, &["tokens", "create", "grafana"]).await;
    let text = created.ok();
    assert!(
        text.contains("readonly token \"grafana\" created"),
        "{text}"
    );
    let readonly = text.lines().last().unwrap().trim().to_string();
    let listed = ctl(&sg, &["tokens", "list"]).await;
    assert!(
        row(listed.ok(), "grafana").contains("readonly"),
        "{listed:?}"
    );
    let as_reader = |args: &'static [&'static str]| {
        let (server, token) = (server.clone(), readonly.clone());
        async move {
            ctl_env(
                &[
                    ("SESSIONGATE_SERVER", &server),
                    ("SESSIONGATE_TOKEN", &token),
                ],
                args,
            )
            .await
        }
    };
    assert_eq!(as_reader(&["sessions", "list"]).await.ok(), "no sessions\n");
    let refused = as_reader(&["users", "create", "eve"]).await;
    assert!(
        refused.failed().starts_with("403 forbidden: "),
        "{refused:?}"
    );
    assert_eq!(sg.api("GET", "/api/v1/users/eve", None).await.0, 404);

    // An admin token from `tokens create --kind admin` may write.
    let admin = ctl(
        &sg,
        &["-o", "json", "tokens", "create", "ops", "--kind", "admin"],
    )
    .await
    .json();
    assert_eq!(admin["kind"], "admin");
    let token = admin["token"].as_str().unwrap();
    ctl_env(
        &[
            ("SESSIONGATE_SERVER", &server),
            ("SESSIONGATE_TOKEN", token),
        ],
        &["users", "create", "eve"],
    )
    .await
    .ok();
    assert_eq!(sg.api("GET", "/api/v1/users/eve", None).await.0, 200);
    ctl(&sg, &["tokens", "delete", "ops"]).await.ok();
    let revoked = ctl_env(
        &[
            ("SESSIONGATE_SERVER", &server),
            ("SESSIONGATE_TOKEN", token),
        ],
        &["users", "list"],
    )
    .await;
    assert!(revoked.failed().starts_with("401 unauthorized: "));

    // A wrong token, as a flag this time; the admin token's variable as a fallback.
    let wrong = ctl_env(
        &[],
        &[
            "--server",
            &server,
            "--token",
            "wrong-token-0000000000",
            "users",
            "list",
        ],
    )
    .await;
    assert_eq!(wrong.failed(), "401 unauthorized: invalid bearer token");
    let fallback = ctl_env(
        &[
            ("SESSIONGATE_SERVER", &server),
            ("SESSIONGATE_ADMIN_TOKEN", &sg.token),
        ],
        &["users", "list"],
    )
    .await;
    assert!(row(fallback.ok(), "eve").starts_with("eve"));

    // No token at all: say where to put one, before any request.
    let missing = ctl_env(&[("SESSIONGATE_SERVER", &server)], &["users", "list"]).await;
    let reason = missing.failed();
    assert!(
        reason.contains("--token") && reason.contains("SESSIONGATE_TOKEN"),
        "{reason}"
    );

    // A server that is not there is named.
    let gone: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let unreachable = ctl_env(
        &[("SESSIONGATE_TOKEN", TOKEN)],
        &["--server", &format!("http://{gone}"), "sessions", "list"],
    )
    .await;
    assert_eq!(
        unreachable.failed(),
        format!("cannot reach http://{gone}: connection refused")
    );
    let tls = ctl_env(
        &[("SESSIONGATE_TOKEN", TOKEN)],
        &["--server", "https://127.0.0.1:9443", "routes"],
    )
    .await;
    assert!(
        tls.failed().contains("https is not supported yet"),
        "{tls:?}"
    );

    // Bad input: the server's validation, word for word; nothing stored.
    let bad = ctl(
        &sg,
        &[
            "sessions", "create", "Bad_Name", "--owner", "eve", "--port", "1",
        ],
    )
    .await;
    let reason = bad.failed();
    assert!(
        reason.starts_with("422 invalid: ") && reason.contains("Bad_Name"),
        "{reason}"
    );
    let unknown_owner = ctl(
        &sg,
        &[
            "sessions", "create", "x", "--owner", "nobody", "--port", "1",
        ],
    )
    .await;
    assert!(
        unknown_owner.failed().contains("nobody"),
        "{unknown_owner:?}"
    );
    let bad_state = ctl(&sg, &["sessions", "list", "--state", "sleeping"]).await;
    assert!(
        bad_state.failed().starts_with("400 bad_request: ")
            && bad_state.stderr.contains("sleeping"),
        "{bad_state:?}"
    );
    let (_, v) = sg.api("GET", "/api/v1/sessions", None).await;
    assert_eq!(v["total"], 0);

    // Usage errors are clap's: exit 2, nothing sent.
    for args in [
        &["sessions", "create", "x", "--owner", "eve"][..],
        &[
            "sessions",
            "create",
            "x",
            "--owner",
            "eve",
            "--port",
            "1",
            "--url",
            "http://a/",
        ],
        &["sessions", "pause"],
        &[
            "sessions",
            "create",
            "x",
            "--owner",
            "eve",
            "--url",
            "http://a/",
            "--https",
        ],
        &["-o", "yaml", "routes"],
    ] {
        let out = ctl(&sg, args).await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:#?}");
    }
    let (_, v) = sg.api("GET", "/api/v1/sessions", None).await;
    assert_eq!(v["total"], 0);
}

#[tokio::test]
async fn ctl_manages_environments() {
    let sg = InProcess::start(&temp_dir("ctl-env"), "").await;
    let created = ctl(
        &sg,
        &[
            "environments",
            "create",
            "lab-w01",
            "--target",
            "http://127.0.0.1:7001",
            "--target",
            "http://127.0.0.1:7002",
            "--capacity",
            "2",
            "--reserved",
            "1",
            "--duration",
            "1800",
            "--title",
            "Rust lab",
        ],
    )
    .await;
    let text = created.ok();
    assert!(text.contains("title       Rust lab"), "{text}");
    assert!(
        text.contains("http://127.0.0.1:7001, http://127.0.0.1:7002"),
        "{text}"
    );
    let listed = ctl(&sg, &["environments", "list"]).await;
    let line = row(listed.ok(), "lab-w01");
    assert!(
        line.contains("RUNNING") && line.contains("Rust lab"),
        "{line}"
    );
    let v = ctl(&sg, &["-o", "json", "environments", "get", "lab-w01"])
        .await
        .json();
    assert_eq!(
        (v["capacity"].as_u64(), v["reserved"].as_u64()),
        (Some(2), Some(1))
    );

    // Refused with the server's reason on one line, and nothing created.
    let refused = ctl(
        &sg,
        &[
            "environments",
            "create",
            "lab-w02",
            "--target",
            "127.0.0.1:7003",
            "--capacity",
            "1",
        ],
    )
    .await;
    assert!(
        refused.failed().starts_with("422 invalid: targets: "),
        "{refused:?}"
    );
    let listed = ctl(&sg, &["environments", "list"]).await;
    assert!(!listed.ok().contains("lab-w02"), "{listed:?}");

    let stopped = ctl(&sg, &["environments", "stop", "lab-w01"]).await;
    assert!(stopped.ok().contains("is STOPPING"), "{stopped:?}");
    let deleted = ctl(&sg, &["environments", "delete", "lab-w01"]).await;
    assert_eq!(deleted.ok(), "environment lab-w01 deleted\n");
    let gone = ctl(&sg, &["environments", "get", "lab-w01"]).await;
    assert!(gone.failed().starts_with("404 not_found: "), "{gone:?}");
}
