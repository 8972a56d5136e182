//! The REST API through the axum router (no socket), on a real SQLite file
//! and a real PostgreSQL database (each test on both) and a real route
//! table, with a manual clock: every endpoint, good and bad input, and what
//! the gateway's table holds after each change.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use control_plane::api;
use control_plane::auth::hash_token;
use control_plane::clock::ManualClock;
use control_plane::control::{ControlPlane, Parts, Settings};
use control_plane::store::Engine;
use control_plane::workshop::{Portal, WorkshopSettings};
use gateway::{RouteHandle, RouteTarget};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use testkit::routes::{empty_table, settings_with};
use testkit::TempDir;
use tower::ServiceExt;

const ADMIN: &str = "api-test-admin-token-0123456789";

pub(crate) struct Api {
    app: Router,
    pub(crate) cp: Arc<ControlPlane>,
    pub(crate) portal: Arc<Portal>,
    pub(crate) clock: ManualClock,
    routes: RouteHandle,
    /// Declared last: removed once the store is closed.
    _dir: TempDir,
}

impl Api {
    /// On SQLite.
    pub(crate) async fn new(name: &str) -> Api {
        Api::on(Engine::Sqlite, name).await
    }

    pub(crate) async fn on(engine: Engine, name: &str) -> Api {
        let dir = TempDir::new(&format!("api-{name}"));
        let (store, _) = crate::common::store(engine, dir.path(), &format!("api-{name}")).await;
        let routes = empty_table(&settings_with(&["localhost"], Some("portal.test")));
        let clock = ManualClock::starting_now();
        let cp = Arc::new(
            ControlPlane::start(
                Parts::new(store, routes.clone(), Arc::new(clock.clone())),
                Settings::new(hash_token(ADMIN)),
            )
            .await
            .unwrap(),
        );
        let portal = Arc::new(Portal::new(cp.clone(), WorkshopSettings::default()));
        Api {
            app: api::router(api::ApiState::new(portal.clone())),
            cp,
            portal,
            clock,
            routes,
            _dir: dir,
        }
    }

    /// A request with the admin token and a JSON body.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.raw(
            method,
            path,
            Some(ADMIN),
            body.map(|b| b.to_string()),
            "application/json",
        )
        .await
    }

    pub(crate) async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(text) => b
                .header("content-type", content_type)
                .body(Body::from(text))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    pub(crate) async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    /// Asserts an error answer: status, code, and a fragment of the message.
    async fn err(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        want: (u16, &str, &str),
    ) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert_eq!(s.as_u16(), want.0, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], want.1, "{method} {path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains(want.2),
            "{method} {path}: {msg:?} lacks {:?}",
            want.2
        );
        v
    }

    /// Everything stored, as the API shows it, to prove bad input changed nothing.
    pub(crate) async fn snapshot(&self) -> Value {
        json!({
            "sessions": self.ok("GET", "/api/v1/sessions?state=pending,running,paused,evicted,expired,deleted&per_page=1000", None).await,
            "users": self.ok("GET", "/api/v1/users?per_page=1000", None).await,
            "groups": self.ok("GET", "/api/v1/groups", None).await,
            "tokens": self.ok("GET", "/api/v1/tokens", None).await,
            "environments": self.ok("GET", "/api/v1/environments", None).await,
            "table": self.routes.load().version(),
        })
    }

    pub(crate) fn route(&self, name: &str) -> Option<Arc<gateway::Route>> {
        self.routes
            .load()
            .route(&format!("session:{name}"))
            .cloned()
    }

    async fn user(&self, name: &str) {
        self.ok("POST", "/api/v1/users", Some(json!({"name": name})))
            .await;
    }
}

fn tunnel(name: &str, owner: &str, port: u16) -> Value {
    json!({"name": name, "owner": owner, "remote_port": port})
}

async fn tokens_gate_the_api_and_read_only_tokens_cannot_write(engine: Engine) {
    let api = Api::on(engine, "tokens").await;
    let (s, v) = api.raw("GET", "/api/v1/sessions", None, None, "").await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    assert!(v["error"]["message"].as_str().unwrap().contains("missing"));
    let (s, v) = api
        .raw(
            "GET",
            "/api/v1/sessions",
            Some("not-the-token-000000"),
            None,
            "",
        )
        .await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("invalid"));

    // A read-only token, created by the admin and shown once.
    let created = api
        .ok(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "grafana", "kind": "readonly"})),
        )
        .await;
    let ro = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["kind"], "readonly");
    let listed = api.ok("GET", "/api/v1/tokens", None).await;
    assert_eq!(listed[0]["name"], "grafana");
    assert!(
        !listed.to_string().contains(&ro),
        "a listing shows the token"
    );
    api.err(
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "grafana"})),
        (409, "conflict", "grafana"),
    )
    .await;

    let (s, _) = api
        .raw("GET", "/api/v1/sessions", Some(&ro), None, "")
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .raw(
            "POST",
            "/api/v1/users",
            Some(&ro),
            Some(json!({"name": "eve"}).to_string()),
            "application/json",
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "forbidden");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("POST /api/v1/users"));
    api.err("GET", "/api/v1/users/eve", None, (404, "not_found", "eve"))
        .await;

    // Revoked at once.
    let (s, _) = api.call("DELETE", "/api/v1/tokens/grafana", None).await;
    assert_eq!(s, 204);
    let (s, _) = api
        .raw("GET", "/api/v1/sessions", Some(&ro), None, "")
        .await;
    assert_eq!(s, 401);
    api.err(
        "DELETE",
        "/api/v1/tokens/grafana",
        None,
        (404, "not_found", "grafana"),
    )
    .await;

    // Open endpoints.
    for path in ["/healthz", "/readyz", "/metrics", "/api/openapi.json"] {
        let (s, _) = api.raw("GET", path, None, None, "").await;
        assert_eq!(s, 200, "{path}");
    }
    api.err(
        "GET",
        "/api/v1/nothing",
        None,
        (404, "not_found", "/api/v1/nothing"),
    )
    .await;
}

async fn gateway_tokens_get_403_on_the_admin_and_workshop_apis(engine: Engine) {
    let api = Api::on(engine, "gateway-token").await;
    let created = api
        .ok(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "gw-1", "kind": "gateway"})),
        )
        .await;
    assert_eq!(created["kind"], "gateway");
    let gw = created["token"].as_str().unwrap().to_string();
    let listed = api.ok("GET", "/api/v1/tokens", None).await;
    assert_eq!(listed[0]["kind"], "gateway", "{listed}");

    let before = api.snapshot().await;
    for (method, path, body) in [
        ("GET", "/api/v1/sessions", None),
        ("GET", "/api/v1/tokens", None),
        ("GET", "/api/v1/routes", None),
        ("POST", "/api/v1/users", Some(json!({"name": "eve"}))),
        ("POST", "/api/v1/access/keys/rotate", None),
        ("GET", "/workshops/catalog/environments/", None),
    ] {
        let (s, v) = api
            .raw(
                method,
                path,
                Some(&gw),
                body.map(|b| b.to_string()),
                "application/json",
            )
            .await;
        assert_eq!(s, 403, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "forbidden", "{method} {path}");
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a gateway token changed state"
    );
}

async fn users_and_groups_crud_with_bad_input_refused(engine: Engine) {
    let api = Api::on(engine, "users").await;
    let ann = api
        .ok(
            "POST",
            "/api/v1/users",
            Some(json!({"name": "ann", "email": "ann@example.org", "first_name": "Ann"})),
        )
        .await;
    assert!(ann["id"].as_str().unwrap().starts_with("u-"));
    assert_eq!(ann["email"], "ann@example.org");
    api.user("bob").await;

    let before = api.snapshot().await;
    api.err(
        "POST",
        "/api/v1/users",
        Some(json!({"name": "ann"})),
        (409, "conflict", "ann"),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/users",
        Some(json!({"name": "a b"})),
        (422, "invalid", "name"),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/users",
        Some(json!({"name": "cy", "nickname": "c"})),
        (400, "invalid_json", "nickname"),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/users",
        Some(json!({})),
        (400, "invalid_json", "name"),
    )
    .await;
    let (s, v) = api
        .raw(
            "POST",
            "/api/v1/users",
            Some(ADMIN),
            Some("{\"name\": ".into()),
            "application/json",
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "{v}"
    );
    let (s, v) = api
        .raw(
            "POST",
            "/api/v1/users",
            Some(ADMIN),
            Some("name=cy".into()),
            "text/plain",
        )
        .await;
    assert_eq!(s, 415, "{v}");
    api.err(
        "POST",
        "/api/v1/groups",
        Some(json!({"name": "Team"})),
        (422, "invalid", "Team"),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/groups",
        Some(json!({"name": "team", "members": ["ann", "zed"]})),
        (422, "invalid", "zed"),
    )
    .await;
    api.err(
        "GET",
        "/api/v1/users?page=0",
        None,
        (400, "bad_request", "page"),
    )
    .await;
    api.err(
        "GET",
        "/api/v1/users?sort=x",
        None,
        (400, "bad_request", "sort"),
    )
    .await;
    assert_eq!(
        api.snapshot().await,
        before,
        "bad input changed stored state"
    );

    // Groups and members.
    let g = api
        .ok(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "team", "members": ["ann"]})),
        )
        .await;
    assert_eq!(g["members"], json!(["ann"]));
    api.err(
        "POST",
        "/api/v1/groups",
        Some(json!({"name": "team"})),
        (409, "conflict", "team"),
    )
    .await;
    let g = api
        .ok(
            "POST",
            "/api/v1/groups/team/members",
            Some(json!({"user": "bob"})),
        )
        .await;
    assert_eq!(g["members"], json!(["ann", "bob"]));
    api.err(
        "POST",
        "/api/v1/groups/team/members",
        Some(json!({"user": "zed"})),
        (422, "invalid", "zed"),
    )
    .await;
    let u = api.ok("GET", "/api/v1/users/bob", None).await;
    assert_eq!(u["groups"], json!(["team"]));
    let g = api
        .ok("DELETE", "/api/v1/groups/team/members/ann", None)
        .await;
    assert_eq!(g["members"], json!(["bob"]));
    api.err(
        "DELETE",
        "/api/v1/groups/team/members/ann",
        None,
        (404, "not_found", "ann"),
    )
    .await;
    let g = api
        .ok(
            "PUT",
            "/api/v1/groups/team/members",
            Some(json!({"members": ["ann", "ann"]})),
        )
        .await;
    assert_eq!(g["members"], json!(["ann"]));
    let m = api.ok("GET", "/api/v1/groups/team/members", None).await;
    assert_eq!(m, json!({"members": ["ann"]}));
    let page = api.ok("GET", "/api/v1/users?q=EXAMPLE.org", None).await;
    assert_eq!(
        (page["total"].as_u64(), page["items"][0]["name"].as_str()),
        (Some(1), Some("ann"))
    );

    // PATCH: absent keeps, null clears.
    let u = api
        .ok(
            "PATCH",
            "/api/v1/users/ann",
            Some(json!({"last_name": "Lee", "email": null})),
        )
        .await;
    assert_eq!(
        (u["first_name"].as_str(), u["last_name"].as_str()),
        (Some("Ann"), Some("Lee"))
    );
    assert!(u["email"].is_null());

    // A user who owns a live session cannot be deleted.
    api.ok("POST", "/api/v1/sessions", Some(tunnel("lab", "ann", 9)))
        .await;
    api.err(
        "DELETE",
        "/api/v1/users/ann",
        None,
        (409, "conflict", "owns 1"),
    )
    .await;
    api.ok("DELETE", "/api/v1/sessions/lab", None).await;
    let (s, _) = api.call("DELETE", "/api/v1/users/ann", None).await;
    assert_eq!(s, 204);
    let g = api.ok("GET", "/api/v1/groups/team", None).await;
    assert_eq!(g["members"], json!([]));
    let (s, _) = api.call("DELETE", "/api/v1/groups/team", None).await;
    assert_eq!(s, 204);
    api.err(
        "GET",
        "/api/v1/groups/team",
        None,
        (404, "not_found", "team"),
    )
    .await;
}

async fn create_session_validates_and_publishes_its_route(engine: Engine) {
    let api = Api::on(engine, "create").await;
    api.user("ann").await;
    api.ok("POST", "/api/v1/groups", Some(json!({"name": "team"})))
        .await;

    let (s, v) = api
        .call(
            "POST",
            "/api/v1/sessions",
            Some(json!({
                "name": "lab", "owner": "ann", "remote_port": 8888, "slug": "/lab/",
                "custom_domain": "Lab.Example.org.", "groups": ["team"], "public": true,
                "duration": 3600, "labels": {"course": "rust-101"}, "environment": "jupyter"
            })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "running");
    assert_eq!(v["kind"], "tunnel");
    assert_eq!(v["remote_host"], "localhost");
    assert_eq!(v["slug"], "/lab");
    assert_eq!(v["custom_domain"], "lab.example.org");
    assert_eq!(v["countdown"], 3600);
    assert_eq!(v["groups"], json!(["team"]));
    let route = api.route("lab").expect("the created session is routed");
    assert_eq!(route.spec.labels, ["lab"]);
    assert_eq!(route.spec.slugs, ["/lab"]);
    assert_eq!(route.spec.hosts, ["lab.example.org"]);
    assert!(route.public && !route.paused);
    match &route.target {
        RouteTarget::Upstream(u) => assert_eq!(u.to_string(), "http://localhost:8888"),
        other => panic!("{other:?}"),
    }

    let before = api.snapshot().await;
    let bad: &[(Value, (u16, &str, &str))] = &[
        (tunnel("lab", "ann", 1), (409, "conflict", "already exists")),
        (tunnel("Lab2", "ann", 1), (422, "invalid", "DNS label")),
        (tunnel("-x", "ann", 1), (422, "invalid", "DNS label")),
        (tunnel("x", "nobody", 1), (422, "invalid", "nobody")),
        (
            json!({"name": "x", "owner": "ann"}),
            (422, "invalid", "remote_port"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 0}),
            (422, "invalid", "remote_port"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 70000}),
            (400, "invalid_json", "remote_port"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "remote_host": "a b"}),
            (422, "invalid", "remote_host"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "slug": "/lab"}),
            (409, "conflict", "/lab"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "slug": "/"}),
            (422, "invalid", "whole portal"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "custom_domain": "LAB.example.org"}),
            (409, "conflict", "lab.example.org"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "custom_domain": "y.localhost"}),
            (422, "invalid", "session named"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "groups": ["ghosts"]}),
            (422, "invalid", "ghosts"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "strip_prefix": true}),
            (422, "invalid", "strip_prefix"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "duration": 0}),
            (422, "invalid", "duration"),
        ),
        // Workspace ports exist now (issue 24): one outside the range is a
        // conflict naming it, and a link session has no port to forward.
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "workspace_port": 2222}),
            (409, "conflict", "workspace_port 2222 is outside"),
        ),
        (
            json!({"name": "x", "owner": "ann", "kind": "link", "url": "https://example.com/", "workspace_port": 0}),
            (422, "invalid", "workspace_port"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "labels": {"bad key": "v"}}),
            (422, "invalid", "bad key"),
        ),
        (
            json!({"name": "x", "owner": "ann", "kind": "link"}),
            (422, "invalid", "url"),
        ),
        (
            json!({"name": "x", "owner": "ann", "kind": "link", "url": "ftp://x/"}),
            (422, "invalid", "url"),
        ),
        (
            json!({"name": "x", "owner": "ann", "kind": "link", "url": "https://x.org", "remote_port": 1}),
            (422, "invalid", "link"),
        ),
        (
            json!({"name": "x", "owner": "ann", "kind": "vm", "remote_port": 1}),
            (400, "invalid_json", "vm"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": 1, "colour": "red"}),
            (400, "invalid_json", "colour"),
        ),
        (
            json!({"name": "x", "owner": "ann", "remote_port": "80"}),
            (400, "invalid_json", "remote_port"),
        ),
    ];
    for (body, want) in bad {
        api.err("POST", "/api/v1/sessions", Some(body.clone()), *want)
            .await;
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "bad input changed stored state"
    );

    // A link session answers with a redirect.
    api.ok(
        "POST",
        "/api/v1/sessions",
        Some(json!({"name": "docs", "owner": "ann", "kind": "link", "url": "https://docs.example.org/x", "public": true})),
    )
    .await;
    match &api.route("docs").unwrap().target {
        RouteTarget::Redirect(u) => assert_eq!(&**u, "https://docs.example.org/x"),
        other => panic!("{other:?}"),
    }

    // A pending session is routed, but only its access link is served there
    // until it is activated.
    let v = api
        .ok("POST", "/api/v1/sessions", Some(json!({"name": "later", "owner": "ann", "remote_port": 1, "pending": true, "duration": 60})))
        .await;
    assert_eq!(v["state"], "pending");
    assert!(v["expires"].is_null());
    assert!(api.route("later").unwrap().inactive);
    api.clock.advance(Duration::from_secs(10));
    let v = api
        .ok("POST", "/api/v1/sessions/later/activate", None)
        .await;
    assert_eq!(
        (v["state"].as_str(), v["countdown"].as_u64()),
        (Some("running"), Some(60))
    );
    assert!(!api.route("later").unwrap().inactive);

    // A deleted session's name, slug and domain can be used again.
    api.ok("DELETE", "/api/v1/sessions/lab", None).await;
    assert!(api.route("lab").is_none());
    let v = api
        .ok(
            "POST",
            "/api/v1/sessions",
            Some(json!({"name": "lab", "owner": "ann", "remote_port": 2, "slug": "/lab"})),
        )
        .await;
    assert_eq!(v["state"], "running");
    assert!(!api.route("lab").unwrap().public);
}

async fn lifecycle_actions_follow_the_state_machine_and_the_table(engine: Engine) {
    let api = Api::on(engine, "actions").await;
    api.user("ann").await;
    api.ok(
        "POST",
        "/api/v1/sessions",
        Some(
            json!({"name": "s", "owner": "ann", "remote_port": 9, "duration": 100, "public": true}),
        ),
    )
    .await;

    api.clock.advance(Duration::from_secs(30));
    let v = api.ok("POST", "/api/v1/sessions/s/pause", None).await;
    assert_eq!(
        (v["state"].as_str(), v["countdown"].as_u64()),
        (Some("paused"), Some(70))
    );
    assert!(
        api.route("s").unwrap().paused,
        "a paused session answers 503"
    );
    // The expiry clock is stopped while paused.
    api.clock.advance(Duration::from_secs(500));
    let v = api.ok("GET", "/api/v1/sessions/s", None).await;
    assert_eq!(v["countdown"], 70);
    let v = api
        .err(
            "POST",
            "/api/v1/sessions/s/pause",
            None,
            (
                409,
                "invalid_transition",
                "cannot pause a session that is paused",
            ),
        )
        .await;
    assert_eq!(v["error"]["state"], "paused");
    let v = api.ok("POST", "/api/v1/sessions/s/resume", None).await;
    assert_eq!(
        (v["state"].as_str(), v["countdown"].as_u64()),
        (Some("running"), Some(70))
    );
    assert!(!api.route("s").unwrap().paused);

    // keepalive: expires = now + duration; extend adds; not extendable → 409.
    api.clock.advance(Duration::from_secs(20));
    let v = api.ok("POST", "/api/v1/sessions/s/keepalive", None).await;
    assert_eq!(v["countdown"], 100);
    assert!(v["last_activity"].is_string());
    let v = api.ok("POST", "/api/v1/sessions/s/extend", None).await;
    assert_eq!(v["countdown"], 200);
    let (s, v) = api
        .raw(
            "POST",
            "/api/v1/sessions/s/extend",
            Some(ADMIN),
            Some(r#"{"seconds": 50}"#.into()),
            "application/json",
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["countdown"].as_u64()),
        (200, Some(250)),
        "{v}"
    );
    let (s, v) = api
        .raw(
            "POST",
            "/api/v1/sessions/s/extend",
            Some(ADMIN),
            Some(r#"{"seconds": "x"}"#.into()),
            "application/json",
        )
        .await;
    assert_eq!(s, 400, "{v}");
    api.ok(
        "PATCH",
        "/api/v1/sessions/s",
        Some(json!({"extendable": false})),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/sessions/s/extend",
        None,
        (409, "not_extendable", "not extendable"),
    )
    .await;

    // evict: inactive (only an access link is served), and the owner can
    // open it again.
    let v = api.ok("POST", "/api/v1/sessions/s/evict", None).await;
    assert_eq!(v["state"], "evicted");
    assert!(api.route("s").unwrap().inactive);
    api.err(
        "POST",
        "/api/v1/sessions/s/resume",
        None,
        (409, "invalid_transition", "evicted"),
    )
    .await;
    let v = api.ok("POST", "/api/v1/sessions/s/activate", None).await;
    assert_eq!(v["state"], "running");
    assert!(!api.route("s").unwrap().inactive);

    // expire: for good.
    let v = api.ok("POST", "/api/v1/sessions/s/expire", None).await;
    assert_eq!(v["state"], "expired");
    assert!(v["countdown"].is_null());
    assert!(api.route("s").is_none());
    for action in [
        "activate",
        "resume",
        "keepalive",
        "pause",
        "evict",
        "expire",
    ] {
        let v = api
            .err(
                "POST",
                &format!("/api/v1/sessions/s/{action}"),
                None,
                (409, "invalid_transition", "expired"),
            )
            .await;
        assert_eq!(v["error"]["state"], "expired");
    }
    api.err(
        "PATCH",
        "/api/v1/sessions/s",
        Some(json!({"public": false})),
        (409, "conflict", "expired"),
    )
    .await;
    let v = api.ok("DELETE", "/api/v1/sessions/s", None).await;
    assert_eq!(v["state"], "deleted");
    api.err(
        "DELETE",
        "/api/v1/sessions/s",
        None,
        (409, "invalid_transition", "deleted"),
    )
    .await;

    api.err(
        "POST",
        "/api/v1/sessions/none/pause",
        None,
        (404, "not_found", "none"),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/sessions/s/reboot",
        None,
        (404, "not_found", "reboot"),
    )
    .await;
    api.err(
        "GET",
        "/api/v1/sessions/none",
        None,
        (404, "not_found", "none"),
    )
    .await;
}

async fn patch_and_share_are_hot_swapped_and_bad_patches_change_nothing(engine: Engine) {
    let api = Api::on(engine, "patch").await;
    api.user("ann").await;
    api.ok("POST", "/api/v1/groups", Some(json!({"name": "team"})))
        .await;
    api.ok("POST", "/api/v1/sessions", Some(tunnel("s", "ann", 9)))
        .await;
    api.ok(
        "POST",
        "/api/v1/sessions",
        Some(json!({"name": "t", "owner": "ann", "remote_port": 1, "slug": "/t"})),
    )
    .await;
    let v1 = api.routes.load().version();

    let v = api
        .ok(
            "PATCH",
            "/api/v1/sessions/s",
            Some(json!({"remote_host": "127.0.0.1", "remote_port": 9001, "public": true, "slug": "/s", "strip_prefix": true, "labels": {"a": "b"}})),
        )
        .await;
    assert_eq!(v["remote_port"], 9001);
    let r = api.route("s").unwrap();
    assert!(r.public && r.strip_prefix);
    assert_eq!(r.spec.slugs, ["/s"]);
    assert!(
        matches!(&r.target, RouteTarget::Upstream(u) if u.to_string() == "http://127.0.0.1:9001")
    );
    assert!(api.routes.load().version() > v1);

    let before = api.snapshot().await;
    for (body, want) in [
        (json!({"remote_port": 0}), (422, "invalid", "remote_port")),
        (json!({"slug": "/t"}), (409, "conflict", "/t")),
        (json!({"slug": null}), (422, "invalid", "strip_prefix")),
        (json!({"name": "other"}), (400, "invalid_json", "name")),
        (json!({"url": "https://x.org"}), (422, "invalid", "url")),
    ] {
        api.err("PATCH", "/api/v1/sessions/s", Some(body), want)
            .await;
    }
    api.err(
        "PUT",
        "/api/v1/sessions/s/groups",
        Some(json!({"groups": ["nope"]})),
        (422, "invalid", "nope"),
    )
    .await;
    api.err(
        "PUT",
        "/api/v1/sessions/s/groups",
        Some(json!({"group": ["team"]})),
        (400, "invalid_json", "group"),
    )
    .await;
    assert_eq!(
        api.snapshot().await,
        before,
        "bad input changed stored state"
    );

    let v = api
        .ok(
            "PUT",
            "/api/v1/sessions/s/groups",
            Some(json!({"groups": ["team", "team"]})),
        )
        .await;
    assert_eq!(v["groups"], json!(["team"]));
    let page = api.ok("GET", "/api/v1/sessions?group=team", None).await;
    assert_eq!(page["total"], 1);
    // Deleting the group unshares it.
    api.call("DELETE", "/api/v1/groups/team", None).await;
    let v = api.ok("GET", "/api/v1/sessions/s", None).await;
    assert_eq!(v["groups"], json!([]));
}

async fn listing_filters_and_pages(engine: Engine) {
    let api = Api::on(engine, "list").await;
    for u in ["ann", "bob"] {
        api.user(u).await;
    }
    for i in 0..12 {
        let owner = if i % 3 == 0 { "bob" } else { "ann" };
        let mut body = tunnel(&format!("s{i:02}"), owner, 9);
        if i == 5 {
            body["labels"] = json!({"course": "Rust_101%"});
        }
        api.ok("POST", "/api/v1/sessions", Some(body)).await;
    }
    api.ok("POST", "/api/v1/sessions/s01/pause", None).await;
    api.ok("POST", "/api/v1/sessions/s02/evict", None).await;
    api.ok("DELETE", "/api/v1/sessions/s03", None).await;

    let all = api.ok("GET", "/api/v1/sessions", None).await;
    assert_eq!(
        (
            all["total"].as_u64(),
            all["page"].as_u64(),
            all["per_page"].as_u64()
        ),
        (Some(11), Some(1), Some(50))
    );
    let page = api
        .ok("GET", "/api/v1/sessions?per_page=5&page=3", None)
        .await;
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s11"]);
    assert_eq!(page["total"], 11);
    // s03 is deleted, so page 2 starts at s06.
    let page = api
        .ok("GET", "/api/v1/sessions?per_page=5&page=2", None)
        .await;
    assert_eq!(page["items"][0]["name"], "s06");
    let beyond = api.ok("GET", "/api/v1/sessions?page=9", None).await;
    assert_eq!(
        (
            beyond["items"].as_array().unwrap().len(),
            beyond["total"].as_u64()
        ),
        (0, Some(11))
    );

    let cases: &[(&str, &[&str])] = &[
        ("state=paused", &["s01"]),
        ("state=paused&state=evicted", &["s01", "s02"]),
        ("state=evicted,paused", &["s01", "s02"]),
        ("state=deleted", &["s03"]),
        ("owner=bob", &["s00", "s06", "s09"]),
        ("owner=bob&state=running", &["s00", "s06", "s09"]),
        ("q=S1", &["s10", "s11"]),
        ("q=BO", &["s00", "s06", "s09"]),
        ("q=rust_101%25", &["s05"]),
        ("q=%25", &["s05"]),
        ("q=nothing", &[]),
    ];
    for (query, want) in cases {
        let page = api
            .ok("GET", &format!("/api/v1/sessions?{query}"), None)
            .await;
        let got: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(&got, want, "{query}");
        assert_eq!(page["total"].as_u64(), Some(want.len() as u64), "{query}");
    }
    for (query, frag) in [
        ("state=sleeping", "sleeping"),
        ("page=0", "page"),
        ("page=x", "page"),
        ("per_page=0", "per_page"),
        ("per_page=1001", "per_page"),
        ("color=red", "color"),
    ] {
        api.err(
            "GET",
            &format!("/api/v1/sessions?{query}"),
            None,
            (400, "bad_request", frag),
        )
        .await;
    }
}

async fn bulk_applies_where_applicable_and_reports_each_name(engine: Engine) {
    let api = Api::on(engine, "bulk").await;
    api.user("ann").await;
    for n in ["a", "b", "c"] {
        api.ok("POST", "/api/v1/sessions", Some(tunnel(n, "ann", 9)))
            .await;
    }
    api.ok("POST", "/api/v1/sessions/b/pause", None).await;
    let v1 = api.routes.load().version();
    let r = api
        .ok(
            "POST",
            "/api/v1/sessions/bulk",
            Some(json!({"action": "evict", "names": ["a", "b", "zz", "c", "a"]})),
        )
        .await;
    assert_eq!(r["applied"], 2);
    let res = r["results"].as_array().unwrap();
    let summary: Vec<(String, bool, String)> = res
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_string(),
                x["ok"].as_bool().unwrap(),
                x["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a".into(), true, "".into()),
            ("b".into(), false, "invalid_transition".into()),
            ("zz".into(), false, "not_found".into()),
            ("c".into(), true, "".into()),
            ("a".into(), false, "duplicate".into()),
        ]
    );
    assert_eq!(res[1]["state"], "paused");
    assert!(api.route("a").unwrap().inactive && api.route("c").unwrap().inactive);
    assert!(api.route("b").unwrap().paused);
    // Both evictions reached the gateway in one table version.
    assert_eq!(api.routes.load().version(), v1 + 1);

    api.err(
        "POST",
        "/api/v1/sessions/bulk",
        Some(json!({"action": "explode", "names": []})),
        (400, "invalid_json", "explode"),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/sessions/bulk",
        Some(json!({"action": "evict"})),
        (400, "invalid_json", "names"),
    )
    .await;
}

/// The upstream the gateway's table holds for session `name`, as text.
fn upstream_of(api: &Api, name: &str) -> String {
    match &api
        .route(name)
        .unwrap_or_else(|| panic!("no route for {name}"))
        .target
    {
        RouteTarget::Upstream(u) => u.to_string(),
        other => panic!("{name}: not an upstream: {other:?}"),
    }
}

/// Each item's history lines for a change, from the audit log.
async fn changes_logged(api: &Api, name: &str) -> usize {
    api.cp
        .session_history(name)
        .await
        .unwrap()
        .iter()
        .filter(|row| row.action == "change")
        .count()
}

async fn batched_patch_changes_every_session_in_one_version(engine: Engine) {
    let api = Api::on(engine, "patch-batch").await;
    api.user("ann").await;
    for n in ["a", "b", "c"] {
        api.ok("POST", "/api/v1/sessions", Some(tunnel(n, "ann", 9)))
            .await;
    }
    for n in ["d", "e"] {
        api.ok(
            "POST",
            "/api/v1/sessions",
            Some(json!({"name": n, "owner": "ann", "remote_port": 9, "slug": format!("/{n}")})),
        )
        .await;
    }
    let v1 = api.routes.load().version();

    let r = api
        .ok(
            "PATCH",
            "/api/v1/sessions",
            Some(json!({"sessions": [
                {"name": "c", "remote_port": 9003},
                {"name": "a", "remote_host": "127.0.0.1", "remote_port": 9001, "public": true},
                {"name": "b", "remote_port": 9002, "labels": {"moved": "yes"}},
            ]})),
        )
        .await;
    assert_eq!(r["applied"], 3, "{r}");
    let results: Vec<(&str, &str)> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["name"].as_str().unwrap(), x["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        [("c", "running"), ("a", "running"), ("b", "running")]
    );
    // Every change is in the gateway's table, in one new version.
    assert_eq!(api.routes.load().version(), v1 + 1);
    assert_eq!(upstream_of(&api, "a"), "http://127.0.0.1:9001");
    assert_eq!(upstream_of(&api, "b"), "http://localhost:9002");
    assert_eq!(upstream_of(&api, "c"), "http://localhost:9003");
    assert!(api.route("a").unwrap().public && !api.route("b").unwrap().public);
    let b = api.ok("GET", "/api/v1/sessions/b", None).await;
    assert_eq!(
        (b["remote_port"].as_u64(), &b["labels"]),
        (Some(9002), &json!({"moved": "yes"}))
    );
    // One audit line per item, as a single patch writes.
    for n in ["a", "b", "c"] {
        assert_eq!(changes_logged(&api, n).await, 1, "{n}");
    }
    assert_eq!(changes_logged(&api, "d").await, 0);

    // Items apply in order, each seeing those before it: a slug one item
    // frees, a later one may take.
    api.ok(
        "PATCH",
        "/api/v1/sessions",
        Some(json!({"sessions": [{"name": "d", "slug": "/f"}, {"name": "e", "slug": "/d"}]})),
    )
    .await;
    assert_eq!(api.route("d").unwrap().spec.slugs, ["/f"]);
    assert_eq!(api.route("e").unwrap().spec.slugs, ["/d"]);
    // An empty batch changes nothing and is no error.
    let r = api
        .ok("PATCH", "/api/v1/sessions", Some(json!({"sessions": []})))
        .await;
    assert_eq!(
        (r["applied"].as_u64(), r["results"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
}

async fn batched_patch_with_a_bad_item_changes_nothing_and_names_it(engine: Engine) {
    let api = Api::on(engine, "patch-batch-bad").await;
    api.user("ann").await;
    for n in ["a", "b", "gone"] {
        api.ok("POST", "/api/v1/sessions", Some(tunnel(n, "ann", 9)))
            .await;
    }
    api.ok(
        "POST",
        "/api/v1/sessions",
        Some(json!({"name": "s", "owner": "ann", "remote_port": 9, "slug": "/s"})),
    )
    .await;
    api.ok("DELETE", "/api/v1/sessions/gone", None).await;
    let ok_item = json!({"name": "a", "remote_port": 9100});
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"name": "a"})).collect();

    let before = api.snapshot().await;
    // The items, and the status, code and fragments of the message.
    type Refusal<'a> = (u16, &'a str, &'a [&'a str]);
    let cases: Vec<(Value, Refusal)> = vec![
        // An invalid value: 422 as for one patch, the item and field named.
        (
            json!([ok_item, {"name": "b", "remote_port": 0}]),
            (422, "invalid", &["sessions[1]", "\"b\"", "remote_port"]),
        ),
        (
            json!([ok_item, {"name": "b", "url": "https://x.org"}]),
            (422, "invalid", &["sessions[1]", "\"b\"", "url"]),
        ),
        // What the single patch refuses as JSON.
        (
            json!([ok_item, {"name": "b", "bogus": 1}]),
            (400, "invalid_json", &["sessions[1]", "\"b\"", "bogus"]),
        ),
        (
            json!([ok_item, {"name": "b", "remote_port": "x"}]),
            (400, "invalid_json", &["sessions[1]", "remote_port"]),
        ),
        (
            json!([{"remote_port": 1}]),
            (400, "invalid_json", &["sessions[0]", "name"]),
        ),
        (
            json!([ok_item, 7]),
            (400, "invalid_json", &["sessions[1]", "object"]),
        ),
        // A session listed twice.
        (
            json!([ok_item, {"name": "b"}, {"name": "a", "remote_port": 9200}]),
            (400, "bad_request", &["sessions[2]", "sessions[0]", "\"a\""]),
        ),
        // Missing sessions: 404, each named.
        (
            json!([ok_item, {"name": "zz", "remote_port": 1}, {"name": "yy"}]),
            (
                404,
                "not_found",
                &[
                    "sessions[1] \"zz\"",
                    "sessions[2] \"yy\"",
                    "nothing changed",
                ],
            ),
        ),
        // A finished session cannot be changed.
        (
            json!([ok_item, {"name": "gone", "remote_port": 1}]),
            (409, "conflict", &["sessions[1]", "deleted"]),
        ),
        // A slug another session holds, and one two items would take.
        (
            json!([ok_item, {"name": "b", "slug": "/s"}]),
            (409, "conflict", &["sessions[1]", "/s"]),
        ),
        (
            json!([{"name": "a", "slug": "/x"}, {"name": "b", "slug": "/x"}]),
            (409, "conflict", &["sessions[1]", "/x", "\"a\""]),
        ),
        // Taken before it is freed: the order counts.
        (
            json!([{"name": "a", "slug": "/s"}, {"name": "s", "slug": "/t"}]),
            (409, "conflict", &["sessions[0]", "/s"]),
        ),
        // Over the batch limit.
        (
            Value::Array(too_many),
            (413, "payload_too_large", &["10001", "10000"]),
        ),
    ];
    for (items, (status, code, fragments)) in cases {
        let (s, v) = api
            .call(
                "PATCH",
                "/api/v1/sessions",
                Some(json!({"sessions": items})),
            )
            .await;
        assert_eq!(
            (s.as_u16(), v["error"]["code"].as_str()),
            (status, Some(code)),
            "{v}"
        );
        let msg = v["error"]["message"].as_str().unwrap_or("");
        for f in fragments {
            assert!(msg.contains(f), "{msg:?} lacks {f:?}");
        }
    }
    for body in [json!({"session": []}), json!({"sessions": {}}), json!([])] {
        let (s, v) = api.call("PATCH", "/api/v1/sessions", Some(body)).await;
        assert_eq!(
            (s.as_u16(), v["error"]["code"].as_str()),
            (400, Some("invalid_json")),
            "{v}"
        );
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused batch changed stored state"
    );
    assert_eq!(changes_logged(&api, "a").await, 0);
    assert_eq!(upstream_of(&api, "a"), "http://localhost:9");
}

async fn openapi_document_covers_every_endpoint(engine: Engine) {
    let api = Api::on(engine, "openapi").await;
    let (s, doc) = api.raw("GET", "/api/openapi.json", None, None, "").await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/sessions", &["get", "post", "patch"][..]),
        ("/api/v1/sessions/{name}", &["get", "patch", "delete"]),
        ("/api/v1/sessions/{name}/{action}", &["post"]),
        ("/api/v1/sessions/{name}/groups", &["put"]),
        ("/api/v1/sessions/bulk", &["post"]),
        ("/api/v1/users", &["get", "post"]),
        ("/api/v1/users/{name}", &["get", "patch", "delete"]),
        ("/api/v1/groups", &["get", "post"]),
        ("/api/v1/groups/{name}", &["get", "delete"]),
        ("/api/v1/groups/{name}/members", &["get", "put", "post"]),
        ("/api/v1/groups/{name}/members/{user}", &["delete"]),
        ("/api/v1/tokens", &["get", "post"]),
        ("/api/v1/tokens/{name}", &["delete"]),
        ("/api/v1/routes", &["get"]),
        ("/api/v1/gateways", &["get"]),
        ("/api/v1/gateway/stream", &["get"]),
        ("/api/v1/gateway/ack", &["post"]),
        ("/api/v1/gateway/activity", &["post"]),
        ("/api/v1/gateway/activate", &["post"]),
        ("/api/v1/sessions/{name}/access", &["post"]),
        ("/api/v1/access/keys/rotate", &["post"]),
        ("/api/v1/environments", &["get", "post"]),
        ("/api/v1/environments/{name}", &["get", "patch", "delete"]),
        ("/api/v1/environments/{name}/stop", &["post"]),
        ("/oauth2/token/", &["post"]),
        ("/oauth2/revoke-token/", &["post"]),
        ("/workshops/environment/{name}/request/", &["get", "post"]),
        ("/workshops/environment/{name}/status/", &["get"]),
        ("/workshops/session/{name}/activate/", &["get"]),
        ("/workshops/session/{name}/schedule/", &["get"]),
        ("/workshops/session/{name}/extend/", &["get", "post"]),
        ("/workshops/session/{name}/terminate/", &["get", "post"]),
        ("/workshops/user/{user}/sessions/", &["get"]),
        ("/workshops/catalog/environments/", &["get"]),
        ("/workshops/catalog/workshops/", &["get"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} missing"
            );
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in [
        "Session",
        "NewSession",
        "SessionPatch",
        "SessionState",
        "User",
        "Group",
        "BulkRequest",
        "BulkResponse",
        "PatchBatchRequest",
        "SessionPatchItem",
        "PatchBatchResponse",
        "ErrorBody",
        "AccessRequest",
        "AccessLink",
        "KeyRotation",
    ] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
    // Generated from the types: every field of the session is documented.
    let props = schemas["Session"]["properties"].as_object().unwrap();
    for f in [
        "name",
        "kind",
        "owner",
        "groups",
        "public",
        "state",
        "created",
        "expires",
        "countdown",
        "extendable",
        "environment",
        "labels",
        "slug",
        "custom_domain",
        "workspace_port",
    ] {
        assert!(props.contains_key(f), "Session.{f} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(api.cp.metrics().reaper_count("expire"), 0);
}

async fn access_links_and_key_rotation_through_the_router(engine: Engine) {
    let api = Api::on(engine, "access").await;
    for u in ["ann", "bob", "eve"] {
        api.ok("POST", "/api/v1/users", Some(json!({ "name": u })))
            .await;
    }
    api.ok(
        "POST",
        "/api/v1/groups",
        Some(json!({"name": "team", "members": ["bob"]})),
    )
    .await;
    api.ok(
        "POST",
        "/api/v1/sessions",
        Some(json!({"name": "nb", "owner": "ann", "remote_port": 1, "groups": ["team"]})),
    )
    .await;
    api.ok(
        "POST",
        "/api/v1/sessions",
        Some(json!({"name": "lab", "owner": "ann", "remote_port": 1, "slug": "/lab/ann"})),
    )
    .await;

    // The owner and a member get a link; its URL is on the session's host.
    let v = api
        .ok(
            "POST",
            "/api/v1/sessions/nb/access",
            Some(json!({"user": "ann"})),
        )
        .await;
    let url = v["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://nb.localhost/__sessiongate/activate?token="),
        "{url}"
    );
    let v = api
        .ok(
            "POST",
            "/api/v1/sessions/nb/access",
            Some(json!({"user": "bob", "path": "/lab?reset"})),
        )
        .await;
    assert!(v["expires"].as_str().unwrap().ends_with('Z'));
    // A slug session's link is on the portal host, under its slug.
    let v = api
        .ok(
            "POST",
            "/api/v1/sessions/lab/access",
            Some(json!({"user": "ann"})),
        )
        .await;
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .starts_with("http://portal.test/lab/ann/__sessiongate/activate?token="),
        "{v}"
    );

    let before = api.snapshot().await;
    // Bad input: each refused with its status and a message naming the problem.
    api.err(
        "POST",
        "/api/v1/sessions/nb/access",
        Some(json!({"user": "eve"})),
        (403, "forbidden", "eve"),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/sessions/nb/access",
        Some(json!({"user": "nobody"})),
        (422, "invalid", "nobody"),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/sessions/nb/access",
        Some(json!({"user": "no such user!"})),
        (422, "invalid", "user"),
    )
    .await;
    for path in [
        "//evil.example/",
        "https://evil.example/",
        "relative",
        "/a b",
    ] {
        api.err(
            "POST",
            "/api/v1/sessions/nb/access",
            Some(json!({"user": "ann", "path": path})),
            (422, "invalid", "path"),
        )
        .await;
    }
    api.err(
        "POST",
        "/api/v1/sessions/nb/access",
        Some(json!({"user": "ann", "admin": true})),
        (400, "invalid_json", "admin"),
    )
    .await;
    api.err(
        "POST",
        "/api/v1/sessions/nb/access",
        Some(json!({})),
        (400, "invalid_json", "user"),
    )
    .await;
    let (s, v) = api
        .raw(
            "POST",
            "/api/v1/sessions/nb/access",
            Some(ADMIN),
            Some("{\"user\": ".into()),
            "application/json",
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    api.err(
        "POST",
        "/api/v1/sessions/nope/access",
        Some(json!({"user": "ann"})),
        (404, "not_found", "nope"),
    )
    .await;
    let (s, _) = api
        .raw(
            "POST",
            "/api/v1/sessions/nb/access",
            None,
            Some(json!({"user": "ann"}).to_string()),
            "application/json",
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        api.snapshot().await,
        before,
        "bad input changed stored state"
    );
    let readonly = api
        .ok(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "dash", "kind": "readonly"})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let before_ro = api.snapshot().await;
    for path in ["/api/v1/sessions/nb/access", "/api/v1/access/keys/rotate"] {
        let (s, _) = api
            .raw(
                "POST",
                path,
                Some(&readonly),
                Some(json!({"user": "ann"}).to_string()),
                "application/json",
            )
            .await;
        assert_eq!(s, 403, "{path}");
    }
    assert_eq!(api.snapshot().await, before_ro);

    // Finished sessions give no links, and say their state.
    api.ok("POST", "/api/v1/sessions/nb/expire", None).await;
    let v = api
        .err(
            "POST",
            "/api/v1/sessions/nb/access",
            Some(json!({"user": "ann"})),
            (409, "session_finished", "expired"),
        )
        .await;
    assert_eq!(v["error"]["state"], "expired");

    // Rotation: a new current key, the old one named with its grace end.
    let first = api.ok("POST", "/api/v1/access/keys/rotate", None).await;
    let second = api.ok("POST", "/api/v1/access/keys/rotate", None).await;
    assert_eq!(second["previous"], first["current"], "{first} {second}");
    assert_ne!(second["current"], first["current"]);
    assert!(second["previous_valid_until"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(api.cp.keys().load().current_id(), second["current"]);
}

async fn environments_crud_with_bad_input_refused(engine: Engine) {
    let api = Api::on(engine, "environments").await;
    let good = json!({
        "name": "lab-w01",
        "workshop": {"title": "Lab", "description": "A lab", "authors": ["ann"], "tags": ["rust"],
                     "url": "https://github.com/example/lab"},
        "duration": 1800,
        "capacity": 2,
        "reserved": 1,
        "targets": ["http://127.0.0.1:7001", "https://127.0.0.1:7002"],
        "tls_verify": false,
    });
    let before = api.snapshot().await;
    let bad: &[(Value, (u16, &str, &str))] = &[
        (
            json!({"name": "Bad_Name", "capacity": 1, "targets": ["http://h:1"]}),
            (422, "invalid", "name"),
        ),
        (
            json!({"name": "x", "capacity": 1, "targets": []}),
            (422, "invalid", "targets"),
        ),
        (
            json!({"name": "x", "capacity": 1, "targets": ["h:1"]}),
            (422, "invalid", "targets"),
        ),
        (
            json!({"name": "x", "capacity": 1, "targets": ["http://h:1", "http://h:1"]}),
            (422, "invalid", "twice"),
        ),
        (
            json!({"name": "x", "capacity": 3, "targets": ["http://h:1"]}),
            (422, "invalid", "capacity"),
        ),
        (
            json!({"name": "x", "capacity": 1, "reserved": 2, "targets": ["http://h:1"]}),
            (422, "invalid", "reserved"),
        ),
        (
            json!({"name": "x", "capacity": 1, "duration": 0, "targets": ["http://h:1"]}),
            (422, "invalid", "duration"),
        ),
        (
            json!({"name": "x", "capacity": 1, "targets": ["http://h:1"], "colour": "red"}),
            (400, "invalid_json", "colour"),
        ),
        (
            json!({"name": "x", "capacity": 1, "targets": ["http://h:1"], "workshop": {"level": 3}}),
            (400, "invalid_json", "level"),
        ),
        (
            json!({"name": "x", "targets": ["http://h:1"]}),
            (400, "invalid_json", "capacity"),
        ),
    ];
    for (body, want) in bad {
        api.err("POST", "/api/v1/environments", Some(body.clone()), *want)
            .await;
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "bad input changed stored state"
    );

    let (s, v) = api
        .call("POST", "/api/v1/environments", Some(good.clone()))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "RUNNING");
    assert_eq!(
        v["workshop"]["name"], "lab-w01",
        "defaults to the environment's name"
    );
    assert_eq!(v["workshop"]["title"], "Lab");
    assert_eq!(
        v["targets"],
        json!(["http://127.0.0.1:7001", "https://127.0.0.1:7002"])
    );
    assert_eq!(
        (
            v["capacity"].as_u64(),
            v["reserved"].as_u64(),
            v["allocated"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    // The reserve is filled at once: one pending session on the first target.
    let reserved = api.ok("GET", "/api/v1/sessions/lab-w01-s001", None).await;
    assert_eq!(
        (
            reserved["state"].as_str(),
            reserved["environment"].as_str(),
            reserved["remote_port"].as_u64()
        ),
        (Some("pending"), Some("lab-w01"), Some(7001))
    );
    assert!(api.route("lab-w01-s001").unwrap().inactive);
    api.err(
        "POST",
        "/api/v1/environments",
        Some(good),
        (409, "conflict", "lab-w01"),
    )
    .await;

    let list = api.ok("GET", "/api/v1/environments", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let v = api
        .ok(
            "PATCH",
            "/api/v1/environments/lab-w01",
            Some(json!({"capacity": 1, "reserved": 0, "duration": null})),
        )
        .await;
    assert_eq!(
        (v["capacity"].as_u64(), v["duration"].as_u64()),
        (Some(1), None)
    );
    api.err(
        "PATCH",
        "/api/v1/environments/lab-w01",
        Some(json!({"reserved": 5})),
        (422, "invalid", "reserved"),
    )
    .await;
    api.err(
        "PATCH",
        "/api/v1/environments/nope",
        Some(json!({})),
        (404, "not_found", "nope"),
    )
    .await;
    let v = api
        .ok("POST", "/api/v1/environments/lab-w01/stop", None)
        .await;
    assert_eq!(v["state"], "STOPPING");
    // Stopping drops the reserve, which no user holds.
    assert_eq!(v["allocated"].as_u64(), Some(0));
    assert!(api.route("lab-w01-s001").is_none());
    assert_eq!(
        api.ok("GET", "/api/v1/environments/lab-w01", None).await["state"],
        "STOPPING"
    );
    let (s, _) = api
        .call("DELETE", "/api/v1/environments/lab-w01", None)
        .await;
    assert_eq!(s, 204);
    api.err(
        "GET",
        "/api/v1/environments/lab-w01",
        None,
        (404, "not_found", "lab-w01"),
    )
    .await;
}

async fn workshop_activation_deadline_on_the_manual_clock(engine: Engine) {
    let api = Api::on(engine, "workshop-deadline").await;
    api.ok(
        "POST",
        "/api/v1/environments",
        Some(json!({"name": "lab-w01", "capacity": 2, "reserved": 1,
                    "targets": ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]})),
    )
    .await;
    // The reserve waits for a user however long it takes.
    api.clock.advance(Duration::from_secs(3600));
    api.portal.reap().await.unwrap();
    let v = api.ok("GET", "/api/v1/sessions/lab-w01-s001", None).await;
    assert_eq!(v["state"], "pending");

    // A request takes it, with a 30 s deadline from now.
    let (s, r) = api
        .call(
            "GET",
            "/workshops/environment/lab-w01/request/?timeout=30&index_url=https://hub.test/",
            None,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["name"], "lab-w01-s001");
    // The reserve was refilled on the other target.
    let v = api.ok("GET", "/api/v1/sessions/lab-w01-s002", None).await;
    assert_eq!(
        (v["state"].as_str(), v["remote_port"].as_u64()),
        (Some("pending"), Some(7002))
    );

    api.clock.advance(Duration::from_secs(29));
    let report = api.portal.reap().await.unwrap();
    assert!(report.deleted_unactivated.is_empty(), "{report:?}");
    api.clock.advance(Duration::from_secs(2));
    let report = api.portal.reap().await.unwrap();
    assert_eq!(report.deleted_unactivated, ["lab-w01-s001"]);
    assert!(api.route("lab-w01-s001").is_none());
    // Its target went back to the pool: the reserve holds both again.
    let (s, r) = api
        .call(
            "GET",
            "/workshops/environment/lab-w01/request/?index_url=https://hub.test/",
            None,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["name"], "lab-w01-s002");
    let v = api.ok("GET", "/api/v1/sessions/lab-w01-s003", None).await;
    assert_eq!(
        (v["state"].as_str(), v["remote_port"].as_u64()),
        (Some("pending"), Some(7001))
    );
    // A bad timeout changes nothing.
    let before = api.snapshot().await;
    let (s, e) = api
        .call(
            "GET",
            "/workshops/environment/lab-w01/request/?timeout=soon&index_url=https://hub.test/",
            None,
        )
        .await;
    assert_eq!((s.as_u16(), e["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(api.snapshot().await, before);
}

crate::common::on_both_engines! {
    #[tokio::test]
    tokens_gate_the_api_and_read_only_tokens_cannot_write,
    gateway_tokens_get_403_on_the_admin_and_workshop_apis,
    users_and_groups_crud_with_bad_input_refused,
    create_session_validates_and_publishes_its_route,
    lifecycle_actions_follow_the_state_machine_and_the_table,
    patch_and_share_are_hot_swapped_and_bad_patches_change_nothing,
    listing_filters_and_pages,
    bulk_applies_where_applicable_and_reports_each_name,
    batched_patch_changes_every_session_in_one_version,
    batched_patch_with_a_bad_item_changes_nothing_and_names_it,
    openapi_document_covers_every_endpoint,
    access_links_and_key_rotation_through_the_router,
    environments_crud_with_bad_input_refused,
    workshop_activation_deadline_on_the_manual_clock;
}
