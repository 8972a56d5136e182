//! The training portal's read endpoints and per-session endpoints (issue
//! 16), against the real API server on `127.0.0.1:0` over a real SQLite
//! file and a real PostgreSQL database (each test on both), with a manual
//! clock: the catalogs of environments and workshops,
//! an environment's status, a session's schedule, extension and
//! termination, and the portal-wide session caps. Each checks what the real
//! portal's clients read, typed as they decode it (EP = educates/
//! educates-training-platform; its `client-programs/pkg/educatesrestapi/
//! types.go` for the CLI, TeraSky's Backstage plugin for the workshops
//! catalog; `training-portal/.../models.py` for the rules).
//!
//! The fixture is the control-plane listener without the gateway: these
//! endpoints never proxy, and the clock must be the test's. Sessions are
//! activated with the operators' `activate` action, which moves a pending
//! session to running as the browser's activation does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use control_plane::api::server::{serve, ApiLimits};
use control_plane::api::{router, ApiState};
use control_plane::auth::hash_token;
use control_plane::clock::{Clock, ManualClock};
use control_plane::control::{ControlPlane, Parts, Settings};
use control_plane::store::Engine;
use control_plane::time::rfc3339_millis;
use control_plane::workshop::caps::SessionCaps;
use control_plane::workshop::portal::OAuthClient;
use control_plane::workshop::{Portal, WorkshopSettings};
use serde_json::{json, Value};
use testkit::routes::{empty_table, settings_with};
use testkit::server::InProcess;
use testkit::{api_request, temp_dir, TempDir};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const ADMIN: &str = "catalog-test-admin-token-0123456789";
const MIN: Duration = Duration::from_secs(60);

/// The API server on a manual clock.
struct Fixture {
    api: SocketAddr,
    clock: ManualClock,
    portal: Arc<Portal>,
    /// The next backend port an environment gets (they are never dialled).
    next_port: AtomicU16,
    /// Dropped: the server stops.
    _stop: oneshot::Sender<()>,
    /// Declared last: removed once the server is gone.
    _dir: TempDir,
}

impl Fixture {
    async fn start(engine: Engine, name: &str, caps: SessionCaps) -> Fixture {
        let dir = TempDir::new(&format!("catalog-{name}"));
        let (store, _) = crate::common::store(engine, dir.path(), &format!("catalog-{name}")).await;
        let routes = empty_table(&settings_with(&["localhost"], Some("portal.test")));
        let clock = ManualClock::starting_now();
        let cp = Arc::new(
            ControlPlane::start(
                Parts::new(store, routes, Arc::new(clock.clone())),
                Settings::new(hash_token(ADMIN)),
            )
            .await
            .unwrap(),
        );
        let settings = WorkshopSettings {
            portal_name: "portal-test".into(),
            portal_url: "https://portal.test".into(),
            oauth: Some(OAuthClient {
                client_id: "portal-client".into(),
                client_secret: "portal-secret".into(),
                robot_username: "robot@portal".into(),
                robot_password: "robot-pass".into(),
            }),
            caps,
            ..WorkshopSettings::default()
        };
        let portal = Arc::new(Portal::new(cp, settings));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            router(ApiState::new(portal.clone())),
            ApiLimits::default(),
            async {
                let _ = stopped.await;
            },
        ));
        Fixture {
            api,
            clock,
            portal,
            next_port: AtomicU16::new(7001),
            _stop: stop,
            _dir: dir,
        }
    }

    async fn call(&self, token: Option<&str>, method: &str, path: &str) -> (u16, Value) {
        api_request(self.api, token, method, path, None)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A GET with the admin token.
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Some(ADMIN), "GET", path).await
    }

    /// An admin API call that must succeed.
    async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, v) = api_request(self.api, Some(ADMIN), method, path, Some(&body))
            .await
            .unwrap();
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    /// An environment of `workshop` with `capacity` backends.
    async fn environment(&self, name: &str, workshop: Value, capacity: u64, extra: Value) {
        let targets: Vec<String> = (0..capacity)
            .map(|_| {
                let port = self.next_port.fetch_add(1, Ordering::Relaxed);
                format!("http://127.0.0.1:{port}")
            })
            .collect();
        let mut body = json!({"name": name, "workshop": workshop, "capacity": capacity,
                              "targets": targets});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.admin("POST", "/api/v1/environments", body).await;
    }

    /// A workshop request with the admin token: the answer.
    async fn request(&self, env: &str, query: &str) -> (u16, Value) {
        self.get(&format!(
            "/workshops/environment/{env}/request/?index_url=https%3A%2F%2Fhub.test%2F&{query}"
        ))
        .await
    }

    /// A request that must succeed: (session, user).
    async fn allocate(&self, env: &str, query: &str) -> (String, String) {
        let (s, v) = self.request(env, query).await;
        assert_eq!(s, 200, "{v}");
        (
            v["name"].as_str().unwrap().to_string(),
            v["user"].as_str().unwrap().to_string(),
        )
    }

    /// Activates a pending session as the browser's activation does.
    async fn activate(&self, session: &str) {
        let path = format!("/api/v1/sessions/{session}/activate");
        let (s, v) = self.call(Some(ADMIN), "POST", &path).await;
        assert_eq!(s, 200, "{path}: {v}");
    }

    /// A running session of a new environment `lab-w01` (one backend)
    /// whose sessions last `duration` seconds, activated now.
    async fn running_session(&self, duration: u64) -> String {
        self.environment("lab-w01", workshop("lab"), 1, json!({"duration": duration}))
            .await;
        let (session, _) = self.allocate("lab-w01", "").await;
        self.activate(&session).await;
        session
    }

    async fn catalog(&self, query: &str) -> Value {
        let (s, v) = self
            .get(&format!("/workshops/catalog/environments/?{query}"))
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    fn now(&self) -> String {
        rfc3339_millis(self.clock.now_ms())
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

/// The environments' names in a catalog answer.
fn names(catalog: &Value) -> Vec<&str> {
    catalog["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect()
}

/// The environment `name` in a catalog answer.
fn env<'a>(catalog: &'a Value, name: &str) -> &'a Value {
    catalog["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no environment {name} in {catalog}"))
}

/// (allocated, available) of the environment `name` in a catalog answer.
fn held_and_idle(catalog: &Value, name: &str) -> (u64, u64) {
    let e = env(catalog, name);
    (
        e["allocated"].as_u64().unwrap(),
        e["available"].as_u64().unwrap(),
    )
}

/// The keys of a workshop in the catalogs (the portal's, with `labels`
/// and `resource`).
pub(crate) const WORKSHOP_KEYS: [&str; 12] = [
    "authors",
    "description",
    "difficulty",
    "duration",
    "labels",
    "logo",
    "name",
    "resource",
    "tags",
    "title",
    "url",
    "vendor",
];

/// The keys of an environment in the catalog and the status, without
/// `sessions`.
const ENVIRONMENT_KEYS: [&str; 8] = [
    "allocated",
    "available",
    "capacity",
    "duration",
    "name",
    "reserved",
    "state",
    "workshop",
];

fn workshop(name: &str) -> Value {
    json!({"name": name, "title": format!("{name} title")})
}

async fn catalog_reports_the_types_the_go_cli_decodes(engine: Engine) {
    let caps = SessionCaps {
        maximum: 10,
        registered: 3,
        anonymous: 2,
    };
    let f = Fixture::start(engine, "types", caps).await;
    f.environment(
        "lab-w01",
        json!({"name": "lab", "title": "Lab", "description": "A lab", "vendor": "acme",
               "authors": ["Ann"], "difficulty": "beginner", "duration": "30m",
               "tags": ["k8s"], "labels": {"level": "beginner"}, "logo": "data:image/png;base64,AA",
               "url": "https://example.test/lab"}),
        3,
        json!({"duration": 1800, "reserved": 1}),
    )
    .await;
    f.environment("open-w01", workshop("open"), 1, json!({}))
        .await;
    f.allocate("lab-w01", "timeout=60").await;

    let c = f.catalog("").await;
    assert_eq!(keys(&c), ["environments", "portal"]);
    let p = &c["portal"];
    assert_eq!(
        keys(p),
        ["generation", "labels", "name", "sessions", "uid", "url"]
    );
    assert_eq!(p["labels"], json!({}), "an object, as Backstage reads it");
    assert!(p["generation"].is_u64(), "{p}");
    assert_eq!(
        p["sessions"],
        json!({"maximum": 10, "registered": 3, "anonymous": 2, "allocated": 1}),
        "the configured caps, and the pending session counted"
    );
    let e = env(&c, "lab-w01");
    assert_eq!(keys(e), ENVIRONMENT_KEYS);
    assert_eq!(
        (
            &e["state"],
            &e["duration"],
            &e["capacity"],
            &e["reserved"],
            &e["allocated"],
            &e["available"]
        ),
        (
            &json!("RUNNING"),
            &json!(1800),
            &json!(3),
            &json!(1),
            &json!(1),
            &json!(1)
        )
    );
    let w = &e["workshop"];
    assert_eq!(keys(w), WORKSHOP_KEYS);
    assert_eq!(w["duration"], "30m", "a string, as Go decodes it");
    assert_eq!(w["authors"], json!(["Ann"]));
    assert_eq!(w["tags"], json!(["k8s"]));
    assert_eq!(w["labels"], json!({"level": "beginner"}));
    assert_eq!(w["resource"], "lab");
    // No duration: 0, never null.
    assert_eq!(env(&c, "open-w01")["duration"], json!(0));
    assert_eq!(env(&c, "open-w01")["workshop"]["authors"], json!([]));
}

async fn available_counts_idle_reserved_sessions_never_more_than_reserved(engine: Engine) {
    let f = Fixture::start(engine, "available", SessionCaps::default()).await;
    f.environment("lab-w01", workshop("lab"), 4, json!({"reserved": 2}))
        .await;
    let c = f.catalog("").await;
    assert_eq!(held_and_idle(&c, "lab-w01"), (0, 2));
    // Fewer reserved: the two already made wait on, but only one counts.
    f.admin(
        "PATCH",
        "/api/v1/environments/lab-w01",
        json!({"reserved": 1}),
    )
    .await;
    let c = f.catalog("").await;
    assert_eq!(env(&c, "lab-w01")["available"], json!(1));
    // A request takes one; the user's pending session is allocated.
    f.allocate("lab-w01", "").await;
    let c = f.catalog("").await;
    assert_eq!(held_and_idle(&c, "lab-w01"), (1, 1));
}

async fn catalog_state_filter_takes_any_case_and_every_portal_state(engine: Engine) {
    let f = Fixture::start(engine, "states", SessionCaps::default()).await;
    for (name, w) in [
        ("run-w01", "run"),
        ("drain-w01", "drain"),
        ("done-w01", "done"),
    ] {
        f.environment(name, workshop(w), 2, json!({"reserved": 1}))
            .await;
    }
    // drain-w01 stops with a user's session left: STOPPING; done-w01 with
    // none (its reserve goes at once): STOPPED.
    f.allocate("drain-w01", "").await;
    f.admin("POST", "/api/v1/environments/drain-w01/stop", json!({}))
        .await;
    f.admin("POST", "/api/v1/environments/done-w01/stop", json!({}))
        .await;

    assert_eq!(
        names(&f.catalog("").await),
        ["run-w01"],
        "RUNNING by default"
    );
    for (query, want) in [
        ("state=running", &["run-w01"][..]),
        ("state=Stopping", &["drain-w01"]),
        ("state=STOPPED", &["done-w01"]),
        ("state=STARTING", &[]),
        ("state=RUNNING&state=stopped", &["done-w01", "run-w01"]),
        (
            "state=running&state=STOPPING&state=Stopped",
            &["done-w01", "drain-w01", "run-w01"],
        ),
    ] {
        assert_eq!(names(&f.catalog(query).await), want, "{query}");
    }
    // A stopping environment takes no sessions: capacity and reserved 0,
    // as the portal's mark_as_stopping sets them.
    let c = f.catalog("state=STOPPING").await;
    let e = env(&c, "drain-w01");
    assert_eq!(
        (
            &e["state"],
            &e["capacity"],
            &e["reserved"],
            &e["allocated"],
            &e["available"]
        ),
        (
            &json!("STOPPING"),
            &json!(0),
            &json!(0),
            &json!(1),
            &json!(0)
        )
    );
}

async fn catalog_refuses_an_unknown_state_or_a_label_without_key_naming_it(engine: Engine) {
    let f = Fixture::start(engine, "bad-query", SessionCaps::default()).await;
    f.environment("lab-w01", workshop("lab"), 1, json!({}))
        .await;
    for (query, fragment) in [
        ("state=STOPED", "state \"STOPED\""),
        ("state=RUNNING&state=paused", "state \"paused\""),
        ("labels[]=x", "labels[]"),
        ("state=", "state \"\""),
    ] {
        let (s, v) = f
            .get(&format!("/workshops/catalog/environments/?{query}"))
            .await;
        assert_eq!(s, 400, "{query}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{query}: {message}");
    }
    // Unknown parameters are ignored, as by the portal.
    assert_eq!(names(&f.catalog("colour=red").await), ["lab-w01"]);
}

async fn catalog_filters_by_workshop_names_and_every_label(engine: Engine) {
    let f = Fixture::start(engine, "filters", SessionCaps::default()).await;
    for (env_name, w, labels) in [
        (
            "a-w01",
            "alpha",
            json!({"level": "beginner", "track": "k8s"}),
        ),
        ("b-w01", "beta", json!({"level": "beginner"})),
        ("c-w01", "gamma", json!({"level": "expert", "track": "k8s"})),
    ] {
        f.environment(env_name, json!({"name": w, "labels": labels}), 1, json!({}))
            .await;
    }
    for (query, want) in [
        ("name=alpha", &["a-w01"][..]),
        ("name=alpha&name=gamma", &["a-w01", "c-w01"]),
        ("name=a-w01", &[]),
        ("name=", &[]),
        ("labels[level]=beginner", &["a-w01", "b-w01"]),
        ("labels%5Blevel%5D=beginner", &["a-w01", "b-w01"]),
        ("labels[level]=beginner&labels[track]=k8s", &["a-w01"]),
        (
            "labels[level]=expert&labels[level]=beginner",
            &["a-w01", "b-w01"],
        ),
        ("labels[track]=k8s&name=gamma", &["c-w01"]),
        ("labels[colour]=red", &[]),
    ] {
        assert_eq!(names(&f.catalog(query).await), want, "{query}");
    }
}

async fn a_workshop_label_is_checked_and_a_bad_one_stores_nothing(engine: Engine) {
    let f = Fixture::start(engine, "bad-labels", SessionCaps::default()).await;
    let bad = json!({"name": "lab", "labels": {"no spaces": "x"}});
    let (s, v) = api_request(
        f.api,
        Some(ADMIN),
        "POST",
        "/api/v1/environments",
        Some(&json!({"name": "lab-w01", "workshop": bad, "capacity": 1,
                     "targets": ["http://127.0.0.1:7001"]})),
    )
    .await
    .unwrap();
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workshop.labels"),
        "{v}"
    );
    assert_eq!(names(&f.catalog("").await), Vec::<&str>::new());
    f.environment(
        "lab-w01",
        json!({"name": "lab", "labels": {"level": "beginner"}}),
        1,
        json!({}),
    )
    .await;
    let (s, v) = api_request(
        f.api,
        Some(ADMIN),
        "PATCH",
        "/api/v1/environments/lab-w01",
        Some(&json!({"workshop": bad})),
    )
    .await
    .unwrap();
    assert_eq!(s, 422, "{v}");
    let c = f.catalog("").await;
    assert_eq!(
        env(&c, "lab-w01")["workshop"]["labels"],
        json!({"level": "beginner"}),
        "unchanged"
    );
}

async fn workshops_catalog_lists_running_environments_as_backstage_reads_them(engine: Engine) {
    let f = Fixture::start(engine, "workshops", SessionCaps::default()).await;
    f.environment(
        "lab-w01",
        json!({"name": "lab", "title": "Lab", "tags": ["k8s"], "duration": "1h"}),
        2,
        json!({"duration": 3600}),
    )
    .await;
    f.environment("old-w01", workshop("old"), 1, json!({}))
        .await;
    f.admin("POST", "/api/v1/environments/old-w01/stop", json!({}))
        .await;
    f.allocate("lab-w01", "").await;
    // Anyone may read it, as the environments' catalog.
    let (s, c) = f.call(None, "GET", "/workshops/catalog/workshops/").await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(keys(&c), ["portal", "workshops"]);
    assert_eq!(c["portal"]["labels"], json!({}));
    assert_eq!(c["portal"]["sessions"]["allocated"], json!(1));
    let ws = c["workshops"].as_array().unwrap();
    assert_eq!(ws.len(), 1, "only running environments: {c}");
    let w = &ws[0];
    assert_eq!(
        keys(w),
        [
            "authors",
            "description",
            "difficulty",
            "duration",
            "environment",
            "labels",
            "logo",
            "name",
            "resource",
            "tags",
            "title",
            "url",
            "vendor"
        ]
    );
    assert_eq!(
        (&w["name"], &w["tags"], &w["duration"]),
        (&json!("lab"), &json!(["k8s"]), &json!("1h"))
    );
    assert_eq!(
        w["environment"],
        json!({"name": "lab-w01", "state": "RUNNING", "duration": 3600, "capacity": 2,
               "reserved": 0, "allocated": 1, "available": 0})
    );
    let (s, _) = f
        .call(Some("made-up"), "GET", "/workshops/catalog/workshops/")
        .await;
    assert_eq!(s, 401, "a wrong token is refused");
}

async fn environment_status_reports_any_state_and_lists_sessions_on_request(engine: Engine) {
    let f = Fixture::start(engine, "status", SessionCaps::default()).await;
    f.environment("lab-w01", workshop("lab"), 2, json!({"duration": 1800}))
        .await;
    let (session, user) = f.allocate("lab-w01", "").await;
    f.admin("POST", "/api/v1/environments/lab-w01/stop", json!({}))
        .await;
    let (s, v) = f.get("/workshops/environment/lab-w01/status/").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(keys(&v), ENVIRONMENT_KEYS);
    assert_eq!(
        (&v["state"], &v["allocated"]),
        (&json!("STOPPING"), &json!(1))
    );
    assert!(
        v["workshop"].get("resource").is_none(),
        "the status' workshop has no resource: {v}"
    );
    let (_, v) = f
        .get("/workshops/environment/lab-w01/status/?sessions=TRUE")
        .await;
    let items = v["sessions"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(
        keys(&items[0]),
        [
            "countdown",
            "expires",
            "extendable",
            "name",
            "namespace",
            "started",
            "state",
            "user"
        ]
    );
    assert_eq!(
        (&items[0]["name"], &items[0]["user"], &items[0]["state"]),
        (&json!(session), &json!(user), &json!("WAITING"))
    );
    let (_, v) = f
        .get("/workshops/environment/lab-w01/status/?sessions=no")
        .await;
    assert!(v.get("sessions").is_none(), "{v}");
    // Unknown: the portal's 403; no token: refused.
    let (s, v) = f.get("/workshops/environment/nope-w01/status/").await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("environment does not exist: \"nope-w01\""),
        "{v}"
    );
    let (s, _) = f
        .call(None, "GET", "/workshops/environment/lab-w01/status/")
        .await;
    assert_eq!(s, 401);
}

async fn a_pending_session_counts_down_to_its_activation_deadline_everywhere(engine: Engine) {
    let f = Fixture::start(engine, "pending", SessionCaps::default()).await;
    f.environment(
        "lab-w01",
        workshop("lab"),
        2,
        json!({"duration": 1800, "reserved": 1}),
    )
    .await;
    // The reserve was made now; the request takes it 5 minutes later.
    f.clock.advance(5 * MIN);
    let requested = f.now();
    let (session, user) = f.allocate("lab-w01", "timeout=120").await;
    f.clock.advance(Duration::from_secs(30));
    let deadline = rfc3339_millis(f.clock.now_ms() + 90_000);

    let (s, v) = f
        .get(&format!("/workshops/session/{session}/schedule/"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"status": "WAITING", "started": requested, "expires": deadline,
               "expiring": true, "countdown": 90, "extendable": false}),
        "started is the request, expires the activation deadline"
    );
    let c = f.catalog("sessions=true").await;
    let item = &env(&c, "lab-w01")["sessions"][0];
    assert_eq!(
        (
            &item["started"],
            &item["expires"],
            &item["countdown"],
            &item["state"]
        ),
        (
            &json!(requested),
            &json!(deadline),
            &json!(90),
            &json!("WAITING")
        )
    );
    let (s, u) = f.get(&format!("/workshops/user/{user}/sessions/")).await;
    assert_eq!(s, 200, "{u}");
    let item = &u["sessions"][0];
    assert_eq!(
        (
            &item["name"],
            &item["started"],
            &item["expires"],
            &item["countdown"]
        ),
        (
            &json!(session),
            &json!(requested),
            &json!(deadline),
            &json!(90)
        )
    );
    assert_eq!(
        keys(item),
        [
            "countdown",
            "environment",
            "expires",
            "extendable",
            "name",
            "namespace",
            "started",
            "workshop"
        ]
    );
    // Activated: started and expires are the running session's.
    f.activate(&session).await;
    let activated = f.now();
    let (_, v) = f
        .get(&format!("/workshops/session/{session}/schedule/"))
        .await;
    assert_eq!(
        (&v["status"], &v["started"], &v["countdown"], &v["expiring"]),
        (
            &json!("RUNNING"),
            &json!(activated),
            &json!(1800),
            &json!(false)
        )
    );
}

async fn a_running_session_is_extendable_only_in_its_last_quarter(engine: Engine) {
    let f = Fixture::start(engine, "extend", SessionCaps::default()).await;
    let session = f.running_session(1800).await;
    let started = f.clock.now_ms();
    let schedule = format!("/workshops/session/{session}/schedule/");
    let extend = format!("/workshops/session/{session}/extend/");

    // The threshold of 1800 s is 450 s: 451 s left is outside it.
    f.clock.advance(Duration::from_secs(1349));
    let (_, v) = f.get(&schedule).await;
    assert_eq!(
        (&v["countdown"], &v["expiring"], &v["extendable"]),
        (&json!(451), &json!(false), &json!(false))
    );
    let (s, v) = f.get(&extend).await;
    assert_eq!(s, 200, "a refusal is an answer, not an error: {v}");
    assert_eq!(
        keys(&v),
        [
            "countdown",
            "expires",
            "expiring",
            "extendable",
            "extended",
            "started",
            "status"
        ]
    );
    assert_eq!(
        (&v["extended"], &v["expires"]),
        (&json!(false), &json!(rfc3339_millis(started + 1_800_000)))
    );

    f.clock.advance(Duration::from_secs(2));
    let (_, v) = f.get(&schedule).await;
    assert_eq!(
        (&v["countdown"], &v["expiring"], &v["extendable"]),
        (&json!(449), &json!(true), &json!(true))
    );
    let (s, v) = f.get(&extend).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            &v["extended"],
            &v["expires"],
            &v["countdown"],
            &v["extendable"],
            &v["status"]
        ),
        (
            &json!(true),
            &json!(rfc3339_millis(started + 2_250_000)),
            &json!(899),
            &json!(false),
            &json!("RUNNING")
        ),
        "extended by the threshold, and out of it again"
    );
    assert!(v["countdown"].is_u64(), "an integer, as Go decodes it");
    // Our own API shows the same expiry.
    let (_, rec) = f.get(&format!("/api/v1/sessions/{session}")).await;
    assert_eq!(rec["expires"], json!(rfc3339_millis(started + 2_250_000)));
}

async fn two_extends_at_once_extend_once(engine: Engine) {
    let f = Fixture::start(engine, "extend-race", SessionCaps::default()).await;
    let session = f.running_session(1800).await;
    let started = f.clock.now_ms();
    f.clock.advance(Duration::from_secs(1500));
    let path = format!("/workshops/session/{session}/extend/");
    let (a, b) = tokio::join!(f.get(&path), f.get(&path));
    let extended: Vec<bool> = [a, b]
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 200, "{v}");
            v["extended"].as_bool().unwrap()
        })
        .collect();
    assert_eq!(extended.iter().filter(|e| **e).count(), 1, "{extended:?}");
    let (_, v) = f
        .get(&format!("/workshops/session/{session}/schedule/"))
        .await;
    assert_eq!(v["expires"], json!(rfc3339_millis(started + 2_250_000)));
}

async fn extend_respects_the_sessions_and_the_environments_extendable_flags(engine: Engine) {
    let f = Fixture::start(engine, "fixed", SessionCaps::default()).await;
    f.environment(
        "fixed-w01",
        workshop("fixed"),
        1,
        json!({"duration": 600, "extendable": false}),
    )
    .await;
    f.environment("lab-w01", workshop("lab"), 1, json!({"duration": 600}))
        .await;
    let (fixed, _) = f.allocate("fixed-w01", "").await;
    let (lab, _) = f.allocate("lab-w01", "").await;
    f.activate(&fixed).await;
    f.activate(&lab).await;
    // lab-w01 is made not extendable after its session was.
    f.admin(
        "PATCH",
        "/api/v1/environments/lab-w01",
        json!({"extendable": false}),
    )
    .await;
    f.clock.advance(Duration::from_secs(500));
    for session in [fixed, lab] {
        let (_, v) = f
            .get(&format!("/workshops/session/{session}/schedule/"))
            .await;
        assert_eq!(
            (&v["expiring"], &v["extendable"]),
            (&json!(true), &json!(false)),
            "{session}"
        );
        let (s, v) = f
            .get(&format!("/workshops/session/{session}/extend/"))
            .await;
        assert_eq!((s, &v["extended"]), (200, &json!(false)), "{session}: {v}");
    }
}

async fn terminate_ends_the_session_now_and_answers_started_and_expires(engine: Engine) {
    let f = Fixture::start(engine, "terminate", SessionCaps::default()).await;
    f.environment(
        "lab-w01",
        workshop("lab"),
        3,
        json!({"duration": 1800, "reserved": 1}),
    )
    .await;
    let (running, _) = f.allocate("lab-w01", "").await;
    f.activate(&running).await;
    let started = f.now();
    f.clock.advance(10 * MIN);
    let (s, v) = f
        .get(&format!("/workshops/session/{running}/terminate/"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"started": started, "expires": f.now()}));
    let (_, rec) = f.get(&format!("/api/v1/sessions/{running}")).await;
    assert_eq!(
        (&rec["state"], &rec["expires"]),
        (&json!("expired"), &json!(f.now()))
    );
    // Gone for the portal's endpoints.
    for action in ["schedule", "extend", "terminate"] {
        let (s, _) = f
            .get(&format!("/workshops/session/{running}/{action}/"))
            .await;
        assert_eq!(s, 404, "{action}");
    }
    // A pending session can be terminated too; its started is the request.
    let requested = f.now();
    let (pending, _) = f.allocate("lab-w01", "").await;
    f.clock.advance(Duration::from_secs(5));
    let (s, v) = f
        .get(&format!("/workshops/session/{pending}/terminate/"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"started": requested, "expires": f.now()}));
    // No user holds a session now, and the reserve is full.
    let c = f.catalog("").await;
    assert_eq!(held_and_idle(&c, "lab-w01"), (0, 1));
}

async fn session_endpoints_answer_404_for_sessions_that_are_not_the_portals(engine: Engine) {
    let f = Fixture::start(engine, "not-found", SessionCaps::default()).await;
    f.admin("POST", "/api/v1/users", json!({"name": "ann"}))
        .await;
    f.admin(
        "POST",
        "/api/v1/sessions",
        json!({"name": "plain", "owner": "ann", "remote_port": 7001}),
    )
    .await;
    for name in ["nope-w01-s001", "plain"] {
        for action in ["schedule", "extend", "terminate"] {
            let (s, v) = f.get(&format!("/workshops/session/{name}/{action}/")).await;
            assert_eq!(s, 404, "{name} {action}: {v}");
        }
    }
    let (_, rec) = f.get("/api/v1/sessions/plain").await;
    assert_eq!(rec["state"], "running", "untouched");
}

async fn a_reserved_session_no_one_holds_has_no_times_and_cannot_be_changed(engine: Engine) {
    let f = Fixture::start(engine, "reserve", SessionCaps::default()).await;
    f.environment(
        "lab-w01",
        workshop("lab"),
        1,
        json!({"duration": 1800, "reserved": 1}),
    )
    .await;
    let reserve = "lab-w01-s001";
    let (s, v) = f
        .get(&format!("/workshops/session/{reserve}/schedule/"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"status": "WAITING", "started": null, "expires": null, "expiring": false})
    );
    for action in ["extend", "terminate"] {
        let (s, v) = f
            .get(&format!("/workshops/session/{reserve}/{action}/"))
            .await;
        assert_eq!(s, 400, "{action}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not currently in use"),
            "{v}"
        );
    }
    let c = f.catalog("").await;
    assert_eq!(env(&c, "lab-w01")["available"], json!(1), "still there");
}

async fn session_endpoints_need_a_token_and_a_read_only_one_only_reads(engine: Engine) {
    let f = Fixture::start(engine, "auth", SessionCaps::default()).await;
    let session = f.running_session(600).await;
    f.clock.advance(Duration::from_secs(500));
    let readonly = f
        .admin(
            "POST",
            "/api/v1/tokens",
            json!({"name": "viewer", "kind": "readonly"}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let paths: Vec<String> = ["schedule", "extend", "terminate"]
        .iter()
        .map(|a| format!("/workshops/session/{session}/{a}/"))
        .chain(["/workshops/environment/lab-w01/status/".to_string()])
        .collect();
    for p in &paths {
        assert_eq!(f.call(None, "GET", p).await.0, 401, "{p}");
        assert_eq!(f.call(Some("made-up"), "GET", p).await.0, 401, "{p}");
    }
    let (s, _) = f.call(Some(&readonly), "GET", &paths[0]).await;
    assert_eq!(s, 200, "a read-only token reads the schedule");
    let (s, _) = f.call(Some(&readonly), "GET", &paths[3]).await;
    assert_eq!(s, 200, "and the status");
    for p in &paths[1..3] {
        let (s, v) = f.call(Some(&readonly), "GET", p).await;
        assert_eq!(s, 403, "{p}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("read-only token"),
            "{v}"
        );
    }
    let (_, v) = f.call(Some(&readonly), "GET", &paths[0]).await;
    assert_eq!(v["countdown"], json!(100), "nothing was extended");
    // The robot's OAuth2 access token may extend.
    let oauth = f
        .portal
        .oauth_password_grant(
            ("portal-client", "portal-secret"),
            "robot@portal",
            "robot-pass",
        )
        .await
        .unwrap()
        .access_token;
    let (s, v) = f.call(Some(&oauth), "GET", &paths[1]).await;
    assert_eq!((s, &v["extended"]), (200, &json!(true)), "{v}");
}

async fn extend_and_terminate_also_take_post(engine: Engine) {
    let f = Fixture::start(engine, "post", SessionCaps::default()).await;
    let session = f.running_session(600).await;
    f.clock.advance(Duration::from_secs(500));
    let (s, v) = f
        .call(
            Some(ADMIN),
            "POST",
            &format!("/workshops/session/{session}/extend/"),
        )
        .await;
    assert_eq!((s, &v["extended"]), (200, &json!(true)), "{v}");
    let (s, v) = f
        .call(
            Some(ADMIN),
            "POST",
            &format!("/workshops/session/{session}/schedule/"),
        )
        .await;
    assert_eq!(s, 405, "schedule only reads: {v}");
    let (s, v) = f
        .call(
            Some(ADMIN),
            "POST",
            &format!("/workshops/session/{session}/terminate/"),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(keys(&v), ["expires", "started"]);
}

async fn maximum_caps_the_sessions_users_hold_portal_wide(engine: Engine) {
    let caps = SessionCaps {
        maximum: 2,
        ..SessionCaps::default()
    };
    let f = Fixture::start(engine, "maximum", caps).await;
    f.environment("a-w01", workshop("alpha"), 3, json!({}))
        .await;
    f.environment("b-w01", workshop("beta"), 3, json!({})).await;
    let (first, user) = f.allocate("a-w01", "").await;
    f.allocate("b-w01", "").await;
    let (s, v) = f.request("a-w01", "").await;
    assert_eq!(s, 503, "the third session is over the maximum: {v}");
    let c = f.catalog("").await;
    assert_eq!(c["portal"]["sessions"]["allocated"], json!(2), "none made");
    // A user who holds a session gets it back whatever the caps.
    let (again, _) = f.allocate("a-w01", &format!("user={user}")).await;
    assert_eq!(again, first);
    // One ends: there is room again.
    f.get(&format!("/workshops/session/{first}/terminate/"))
        .await;
    f.allocate("a-w01", "").await;
}

async fn maximum_limits_reserves_and_gives_up_the_oldest_for_a_new_session(engine: Engine) {
    let caps = SessionCaps {
        maximum: 2,
        ..SessionCaps::default()
    };
    let f = Fixture::start(engine, "reserves", caps).await;
    f.environment("a-w01", workshop("alpha"), 2, json!({"reserved": 1}))
        .await;
    f.clock.advance(MIN);
    f.environment("b-w01", workshop("beta"), 2, json!({"reserved": 1}))
        .await;
    f.clock.advance(MIN);
    // The reserves fill the maximum: c-w01 gets none.
    f.environment("c-w01", workshop("gamma"), 2, json!({"reserved": 1}))
        .await;
    let available =
        |c: &Value| ["a-w01", "b-w01", "c-w01"].map(|e| env(c, e)["available"].as_u64().unwrap());
    assert_eq!(available(&f.catalog("").await), [1, 1, 0]);
    // A request for c-w01 needs a new session: a-w01's reserve, the
    // oldest, gives way, and is not made again while the maximum is full.
    f.allocate("c-w01", "").await;
    let c = f.catalog("").await;
    assert_eq!(available(&c), [0, 1, 0]);
    assert_eq!(env(&c, "c-w01")["allocated"], json!(1));
    let (_, rec) = f.get("/api/v1/sessions/a-w01-s001").await;
    assert_eq!(rec["state"], "deleted");
    f.portal.refill_reserves().await.unwrap();
    assert_eq!(available(&f.catalog("").await), [0, 1, 0]);
    // A request for b-w01 takes its reserve; a-w01 now has none to take and
    // the maximum is held by users: no session.
    f.allocate("b-w01", "").await;
    let (s, v) = f.request("a-w01", "").await;
    assert_eq!(s, 503, "{v}");
}

async fn anonymous_caps_the_sessions_each_user_holds(engine: Engine) {
    let caps = SessionCaps {
        anonymous: 1,
        ..SessionCaps::default()
    };
    let f = Fixture::start(engine, "anonymous", caps).await;
    f.environment("a-w01", workshop("alpha"), 2, json!({}))
        .await;
    f.environment("b-w01", workshop("beta"), 2, json!({"reserved": 1}))
        .await;
    let (first, user) = f.allocate("a-w01", "").await;
    let (s, v) = f.request("b-w01", &format!("user={user}")).await;
    assert_eq!(
        s, 503,
        "a second session for the same user, even from a reserve: {v}"
    );
    let (again, _) = f.allocate("a-w01", &format!("user={user}")).await;
    assert_eq!(again, first, "the session the user holds is still theirs");
    f.allocate("b-w01", "").await;
    let c = f.catalog("").await;
    assert_eq!(c["portal"]["sessions"]["anonymous"], json!(1));
    assert_eq!(env(&c, "b-w01")["allocated"], json!(1));
}

#[tokio::test]
async fn session_caps_from_the_configuration_reach_the_catalog() {
    let sg = InProcess::start(
        &temp_dir("catalog-config"),
        "[workshop]\nsessions_maximum = 7\nsessions_registered = 2\nsessions_anonymous = 1\n",
    )
    .await;
    let (s, c) = sg
        .api_with_token(None, "GET", "/workshops/catalog/environments/", None)
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(
        c["portal"]["sessions"],
        json!({"maximum": 7, "registered": 2, "anonymous": 1, "allocated": 0})
    );
}

async fn openapi_documents_the_new_endpoints_and_parameters(engine: Engine) {
    let f = Fixture::start(engine, "openapi", SessionCaps::default()).await;
    let (s, doc) = f.call(None, "GET", "/api/openapi.json").await;
    assert_eq!(s, 200);
    let paths = &doc["paths"];
    for (path, methods, params) in [
        (
            "/workshops/catalog/environments/",
            &["get"][..],
            &["sessions", "state", "name", "labels[key]"][..],
        ),
        ("/workshops/catalog/workshops/", &["get"], &[]),
        (
            "/workshops/environment/{name}/status/",
            &["get"],
            &["name", "sessions"],
        ),
        ("/workshops/session/{name}/schedule/", &["get"], &["name"]),
        (
            "/workshops/session/{name}/extend/",
            &["get", "post"],
            &["name"],
        ),
        (
            "/workshops/session/{name}/terminate/",
            &["get", "post"],
            &["name"],
        ),
    ] {
        for m in methods {
            let op = &paths[path][m];
            assert!(op.is_object(), "{m} {path} missing");
            let documented: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            for p in params {
                assert!(documented.contains(p), "{m} {path}: {p} in {documented:?}");
            }
        }
    }
    let schemas = &doc["components"]["schemas"];
    for s in [
        "EnvironmentsCatalog",
        "WorkshopsCatalog",
        "EnvironmentStatus",
        "ScheduleAnswer",
        "ExtendAnswer",
        "TerminateAnswer",
    ] {
        assert!(schemas[s].is_object(), "schema {s} missing");
    }
}

crate::common::on_both_engines! {
    #[tokio::test]
    catalog_reports_the_types_the_go_cli_decodes,
    available_counts_idle_reserved_sessions_never_more_than_reserved,
    catalog_state_filter_takes_any_case_and_every_portal_state,
    catalog_refuses_an_unknown_state_or_a_label_without_key_naming_it,
    catalog_filters_by_workshop_names_and_every_label,
    a_workshop_label_is_checked_and_a_bad_one_stores_nothing,
    workshops_catalog_lists_running_environments_as_backstage_reads_them,
    environment_status_reports_any_state_and_lists_sessions_on_request,
    a_pending_session_counts_down_to_its_activation_deadline_everywhere,
    a_running_session_is_extendable_only_in_its_last_quarter,
    two_extends_at_once_extend_once,
    extend_respects_the_sessions_and_the_environments_extendable_flags,
    terminate_ends_the_session_now_and_answers_started_and_expires,
    session_endpoints_answer_404_for_sessions_that_are_not_the_portals,
    a_reserved_session_no_one_holds_has_no_times_and_cannot_be_changed,
    session_endpoints_need_a_token_and_a_read_only_one_only_reads,
    extend_and_terminate_also_take_post,
    maximum_caps_the_sessions_users_hold_portal_wide,
    maximum_limits_reserves_and_gives_up_the_oldest_for_a_new_session,
    anonymous_caps_the_sessions_each_user_holds,
    openapi_documents_the_new_endpoints_and_parameters;
}
