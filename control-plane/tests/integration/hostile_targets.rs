//! Issue 15, finding 14: session targets are restricted (SSRF). Without
//! `sessions.allowed_targets`, link-local and metadata addresses and
//! sessiongate's own listeners are refused (422 naming the rule) for
//! session creates and patches and for environments' targets; with it, the
//! list decides. Against `sessiongate serve` in process.

use serde_json::{json, Value};
use testkit::server::InProcess;
use testkit::{temp_dir, Origin};

/// Creates a tunnel session `name` of ann on `host:port`.
async fn create(sg: &InProcess, name: &str, host: &str, port: u16) -> (u16, Value) {
    sg.api(
        "POST",
        "/api/v1/sessions",
        Some(json!({"name": name, "owner": "ann", "public": true,
                    "remote_host": host, "remote_port": port})),
    )
    .await
}

/// Asserts a 422 whose message names `field` and contains `rule`.
fn refused(what: &str, (status, v): (u16, Value), field: &str, rule: &str) {
    assert_eq!(status, 422, "{what}: {v}");
    assert_eq!(v["error"]["code"], "invalid", "{what}: {v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(m.starts_with(&format!("{field}: ")), "{what}: {m}");
    assert!(m.contains(rule), "{what}: {m:?} does not name {rule:?}");
}

async fn session_names(sg: &InProcess) -> Vec<String> {
    let (_, v) = sg.api("GET", "/api/v1/sessions", None).await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn metadata_addresses_and_sessiongates_own_listeners_are_refused_by_default() {
    let origin = Origin::named("app");
    let sg = InProcess::start(&temp_dir("hostile-targets-default"), "").await;
    sg.api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    let https = sg.https.expect("the test server has an HTTPS listener");
    let cases: Vec<(&str, u16, &str)> = vec![
        ("169.254.169.254", 80, "169.254.0.0/16"),
        ("169.254.170.2", 80, "169.254.0.0/16"),
        ("::ffff:169.254.169.254", 80, "169.254.0.0/16"),
        ("fe80::1", 80, "fe80::/10"),
        ("fd00:ec2::254", 80, "fd00:ec2::254"),
        ("metadata.google.internal", 80, "metadata"),
        ("2852039166", 80, "as a number"),
        ("127.0.0.1", sg.api.port(), "control_plane.listen"),
        ("localhost", sg.api.port(), "control_plane.listen"),
        ("127.0.0.1", sg.gateway.port(), "gateway.http_listen"),
        ("lab.localhost", https.port(), "gateway.https_listen"),
    ];
    for (i, (host, port, rule)) in cases.iter().enumerate() {
        let what = format!("{host}:{port}");
        refused(
            &what,
            create(&sg, &format!("s{i}"), host, *port).await,
            "remote_host",
            rule,
        );
    }
    assert!(
        session_names(&sg).await.is_empty(),
        "a refused create stored a session"
    );

    // An ordinary target is allowed, and served.
    let (s, v) = create(&sg, "app", "127.0.0.1", origin.addr.port()).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(sg.open("app").await, (200, "app".to_string()));

    // A patch may not move it there; other changes are not affected.
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/sessions/app",
            Some(json!({"remote_host": "169.254.169.254", "remote_port": 80})),
        )
        .await;
    refused("patch", (s, v), "remote_host", "169.254.0.0/16");
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/sessions/app",
            Some(json!({"remote_port": sg.api.port()})),
        )
        .await;
    refused("patch", (s, v), "remote_host", "control_plane.listen");
    assert_eq!(sg.open("app").await, (200, "app".to_string()), "unchanged");
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/sessions/app",
            Some(json!({"labels": {"a": "b"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // Environments' targets are sessions' targets.
    let env =
        |targets: Value| json!({"name": "lab", "capacity": 1, "reserved": 1, "targets": targets});
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/environments",
            Some(env(json!(["http://169.254.169.254:80"]))),
        )
        .await;
    refused("environment", (s, v), "targets", "169.254.0.0/16");
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/environments",
            Some(env(json!([format!(
                "http://127.0.0.1:{}",
                origin.addr.port()
            )]))),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/environments/lab",
            Some(json!({"targets": [format!("http://localhost:{}", sg.gateway.port())]})),
        )
        .await;
    refused(
        "environment patch",
        (s, v),
        "targets",
        "gateway.http_listen",
    );
}

#[tokio::test]
async fn allowed_targets_decide_once_an_operator_sets_them() {
    let sg = InProcess::start(
        &temp_dir("hostile-targets-allowed"),
        "[sessions]\nallowed_targets = [\"10.0.0.0/8\", \"169.254.169.254\", \"*.internal.test\"]\n",
    )
    .await;
    sg.api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    for (i, host) in ["10.1.2.3", "169.254.169.254", "db.internal.test"]
        .iter()
        .enumerate()
    {
        let (s, v) = create(&sg, &format!("ok{i}"), host, 8080).await;
        assert_eq!(s, 201, "{host}: {v}");
    }
    for (i, (host, port, rule)) in [
        ("11.0.0.1", 8080, "sessions.allowed_targets"),
        ("169.254.169.253", 80, "sessions.allowed_targets"),
        ("db.other.test", 8080, "sessions.allowed_targets"),
        ("internal.test", 8080, "sessions.allowed_targets"),
        ("localhost", 8080, "sessions.allowed_targets"),
        // sessiongate's own listeners stay refused, listed or not.
        ("127.0.0.1", sg.api.port(), "control_plane.listen"),
    ]
    .iter()
    .enumerate()
    {
        refused(
            host,
            create(&sg, &format!("no{i}"), host, *port).await,
            "remote_host",
            rule,
        );
    }
    for (target, ok) in [
        ("http://192.168.1.1:80", false),
        ("http://w1.internal.test:80", true),
    ] {
        let body = json!({"name": "lab", "capacity": 1, "targets": [target]});
        let answer = sg.api("POST", "/api/v1/environments", Some(body)).await;
        if ok {
            assert_eq!(answer.0, 201, "{target}: {}", answer.1);
        } else {
            refused(target, answer, "targets", "sessions.allowed_targets");
        }
    }
}
