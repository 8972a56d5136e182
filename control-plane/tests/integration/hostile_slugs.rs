//! Issue 15, findings 10 and 13: slugs on the portal host, the one browser
//! origin every slug session shares. A slug may not be the gateway's own
//! path nor nest with another user's (the longer one would take the
//! other's paths and access links); a slug beside another user's needs
//! `shared_origin: true`; workshop environments give each session a host
//! of its own unless the operator gives them a `slug_prefix`. Against
//! `sessiongate serve` in process.

use serde_json::{json, Value};
use testkit::server::InProcess;
use testkit::temp_dir;

async fn server(name: &str) -> InProcess {
    let sg = InProcess::start(&temp_dir(name), "").await;
    for user in ["ann", "bob"] {
        let (s, v) = sg
            .api("POST", "/api/v1/users", Some(json!({"name": user})))
            .await;
        assert_eq!(s, 201, "{v}");
    }
    sg
}

/// `POST /api/v1/sessions` for a session of `owner` with `extra` fields.
async fn create(sg: &InProcess, name: &str, owner: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"name": name, "owner": owner, "remote_host": "127.0.0.1",
                          "remote_port": 9});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    sg.api("POST", "/api/v1/sessions", Some(body)).await
}

/// `POST /api/v1/environments` for an environment `name` of one backend
/// whose sessions get slugs under `slug_prefix`.
async fn create_environment(sg: &InProcess, name: &str, slug_prefix: &str) -> (u16, Value) {
    let body = json!({"name": name, "capacity": 1, "targets": ["http://127.0.0.1:9"],
                      "slug_prefix": slug_prefix});
    sg.api("POST", "/api/v1/environments", Some(body)).await
}

/// Asserts a 422 naming `field` whose message contains `words`.
fn refused(what: &str, (status, v): (u16, Value), field: &str, words: &str) {
    assert_eq!(status, 422, "{what}: {v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(m.starts_with(&format!("{field}: ")), "{what}: {m}");
    assert!(m.contains(words), "{what}: {m}");
}

async fn exists(sg: &InProcess, name: &str) -> bool {
    sg.api("GET", &format!("/api/v1/sessions/{name}"), None)
        .await
        .0
        == 200
}

#[tokio::test]
async fn a_slug_with_the_gateways_own_segment_is_refused() {
    let sg = server("hostile-slugs-segment").await;
    for slug in [
        "/lab/__sessiongate",
        "/lab/__SessionGate/",
        "/__sessiongate/x",
    ] {
        refused(
            slug,
            create(&sg, "x", "ann", json!({"slug": slug})).await,
            "slug",
            "__sessiongate",
        );
    }
    assert!(!exists(&sg, "x").await);
    let (s, v) = create(&sg, "lab", "ann", json!({"slug": "/lab"})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/sessions/lab",
            Some(json!({"slug": "/lab/__sessiongate"})),
        )
        .await;
    refused("patch", (s, v), "slug", "__sessiongate");
    let answer = create_environment(&sg, "w", "/w/__sessiongate").await;
    refused("environment", answer, "slug_prefix", "__sessiongate");
}

#[tokio::test]
async fn a_slug_under_or_above_another_owners_slug_is_refused() {
    let sg = server("hostile-slugs-nested").await;
    let (s, v) = create(&sg, "a", "ann", json!({"slug": "/a"})).await;
    assert_eq!(s, 201, "{v}");

    // Under ann's slug, bob's app would answer ann's paths below it
    // (shared_origin or not).
    let alone = json!({"slug": "/a/b"});
    refused(
        "under",
        create(&sg, "b", "bob", alone).await,
        "slug",
        "\"/a\"",
    );
    let shared = json!({"slug": "/a/b", "shared_origin": true});
    refused(
        "under",
        create(&sg, "b", "bob", shared).await,
        "slug",
        "\"/a\"",
    );
    assert!(!exists(&sg, "b").await);
    let (s, v) = create(
        &sg,
        "c",
        "bob",
        json!({"slug": "/c", "shared_origin": true}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sg
        .api("PATCH", "/api/v1/sessions/c", Some(json!({"slug": "/a/c"})))
        .await;
    refused("patch under", (s, v), "slug", "\"/a\"");
    let (_, v) = sg.api("GET", "/api/v1/sessions/c", None).await;
    assert_eq!(v["slug"], "/c", "a refused patch changed the slug");

    // Above bob's slug, ann's app would take in bob's.
    let (s, v) = create(
        &sg,
        "z",
        "bob",
        json!({"slug": "/z/y", "shared_origin": true}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let above = json!({"slug": "/z", "shared_origin": true});
    refused(
        "above",
        create(&sg, "z2", "ann", above).await,
        "slug",
        "\"/z/y\"",
    );

    // One owner's own slugs may nest.
    let own = json!({"slug": "/a/mine", "shared_origin": true});
    let (s, v) = create(&sg, "a2", "ann", own).await;
    assert_eq!(s, 201, "{v}");

    // An environment's sessions would be other users' under ann's slug.
    let answer = create_environment(&sg, "w", "/a/labs").await;
    refused("environment", answer, "slug_prefix", "\"/a\"");
}

#[tokio::test]
async fn a_slug_beside_another_owners_needs_shared_origin() {
    let sg = server("hostile-slugs-shared").await;
    // Alone on the portal host: no question to ask.
    let (s, v) = create(&sg, "a", "ann", json!({"slug": "/a"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["shared_origin"], false, "{v}");

    refused(
        "create",
        create(&sg, "b", "bob", json!({"slug": "/b"})).await,
        "shared_origin",
        "\"a\"",
    );
    assert!(!exists(&sg, "b").await, "a refused create stored a session");
    let (s, v) = create(
        &sg,
        "b",
        "bob",
        json!({"slug": "/b", "shared_origin": true}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["shared_origin"], true, "{v}");
    let (_, v) = sg.api("GET", "/api/v1/sessions/b", None).await;
    assert_eq!(v["shared_origin"], true, "stored and shown: {v}");

    // A patch that gives a session a slug asks the same.
    let (s, v) = create(&sg, "c", "bob", json!({})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sg
        .api("PATCH", "/api/v1/sessions/c", Some(json!({"slug": "/c"})))
        .await;
    refused("patch", (s, v), "shared_origin", "\"a\"");
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/sessions/c",
            Some(json!({"slug": "/c", "shared_origin": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["slug"].as_str(), v["shared_origin"].as_bool()),
        (Some("/c"), Some(true))
    );

    // A change that leaves the slug as it is asks nothing.
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/sessions/a",
            Some(json!({"remote_port": 10})),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // The field is in the API's schema.
    let (_, doc) = sg.api("GET", "/api/openapi.json", None).await;
    for schema in ["NewSession", "Session", "SessionPatch"] {
        assert!(
            doc["components"]["schemas"][schema]["properties"]["shared_origin"].is_object(),
            "{schema} has no shared_origin"
        );
    }
}

#[tokio::test]
async fn workshop_sessions_get_a_host_each_unless_the_environment_has_a_slug_prefix() {
    let sg = server("hostile-slugs-workshop").await;
    let (s, v) = create(&sg, "a", "ann", json!({"slug": "/a"})).await;
    assert_eq!(s, 201, "{v}");
    for (env, prefix, port) in [("hosts", None, 9001), ("slugs", Some("/labs"), 9002)] {
        let mut body = json!({"name": env, "capacity": 1, "reserved": 1,
                              "targets": [format!("http://127.0.0.1:{port}")]});
        if let Some(p) = prefix {
            body["slug_prefix"] = json!(p);
        }
        let (s, v) = sg.api("POST", "/api/v1/environments", Some(body)).await;
        assert_eq!(s, 201, "{v}");
    }
    let (_, v) = sg.api("GET", "/api/v1/sessions?q=hosts-s", None).await;
    let own_host = &v["items"][0];
    assert_eq!(own_host["environment"], "hosts", "{v}");
    assert!(own_host["slug"].is_null(), "{own_host}");
    assert_eq!(own_host["shared_origin"], false, "{own_host}");

    // The operator chose slugs: its sessions share the origin, though ann
    // has a slug there, without anyone being asked.
    let (_, v) = sg.api("GET", "/api/v1/sessions?q=slugs-s", None).await;
    let slugged = &v["items"][0];
    assert_eq!(slugged["slug"], "/labs/slugs-s001", "{v}");
    assert_eq!(slugged["shared_origin"], true, "{slugged}");

    // ann may not put a slug above the environment's sessions.
    let above = json!({"slug": "/labs", "shared_origin": true});
    refused(
        "above",
        create(&sg, "l", "ann", above).await,
        "slug",
        "\"/labs",
    );
}
