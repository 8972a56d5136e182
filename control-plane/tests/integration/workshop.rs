//! The training-portal-compatible API against a real server in process:
//! every curl call of the training portal's REST API documentation, with
//! the answers checked field by field, and the browser's activation through
//! the gateway with the cookie jar.

use std::net::SocketAddr;

use crate::common::jar::Browser;
use base64::Engine as _;
use serde_json::{json, Value};
use testkit::server::InProcess;
use testkit::{exchange, temp_dir, Endpoints, Origin};

pub(crate) const CONFIG: &str = "[workshop]\nclient_id = \"portal-client\"\n\
    client_secret = \"portal-secret\"\nrobot_username = \"robot@portal\"\n\
    robot_password = \"robot-pass\"\nindex_urls = [\"https://hub.test\"]\n";

/// A request to the control-plane listener; the status and the JSON (or text).
pub(crate) async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = exchange(addr, req.as_bytes()).await.unwrap();
    let text = resp.text();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (resp.status, v)
}

pub(crate) async fn token_grant(sg: &Endpoints, client: (&str, &str), form: &str) -> (u16, Value) {
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", client.0, client.1));
    call(
        sg.api,
        "POST",
        "/oauth2/token/",
        &format!(
            "Authorization: Basic {basic}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        ),
        form,
    )
    .await
}

pub(crate) async fn get(sg: &Endpoints, token: Option<&str>, path: &str) -> (u16, Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    call(sg.api, "GET", path, &auth, "").await
}

pub(crate) fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

/// A server with the workshop API, a robot's access token, and an
/// environment of two backends (kept alive by the caller).
pub(crate) async fn setup(name: &str) -> (InProcess, String, Vec<Origin>) {
    let sg = InProcess::start(&temp_dir(name), CONFIG).await;
    let (s, t) = token_grant(
        &sg,
        ("portal-client", "portal-secret"),
        "grant_type=password&username=robot%40portal&password=robot-pass",
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let access = t["access_token"].as_str().unwrap().to_string();
    let backends = vec![Origin::named("backend-1"), Origin::named("backend-2")];
    let targets: Vec<String> = backends.iter().map(Origin::url).collect();
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/environments",
            Some(json!({
                "name": "lab-markdown-sample-w01",
                "workshop": {"name": "lab-markdown-sample", "title": "Markdown sample",
                             "description": "A sample", "url": "https://github.com/example/lab"},
                "duration": 1800, "capacity": 2, "reserved": 1, "targets": targets,
            })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    (sg, access, backends)
}

#[tokio::test]
async fn oauth2_token_endpoint_grants_refreshes_and_refuses() {
    let (sg, access, _backends) = setup("ws-oauth").await;
    let (s, t) = token_grant(
        &sg,
        ("portal-client", "portal-secret"),
        "grant_type=password&username=robot%40portal&password=robot-pass",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        keys(&t),
        [
            "access_token",
            "expires_in",
            "refresh_token",
            "scope",
            "token_type"
        ]
    );
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 36000);
    // The refresh grant gives new tokens, once per refresh token.
    let form = format!(
        "grant_type=refresh_token&refresh_token={}",
        t["refresh_token"].as_str().unwrap()
    );
    let (s, t2) = token_grant(&sg, ("portal-client", "portal-secret"), &form).await;
    assert_eq!(s, 200, "{t2}");
    assert_ne!(t2["access_token"], t["access_token"]);
    let (s, e) = token_grant(&sg, ("portal-client", "portal-secret"), &form).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
    // Wrong client secret, wrong password, unknown grant.
    let (s, e) = token_grant(
        &sg,
        ("portal-client", "wrong"),
        "grant_type=password&username=robot%40portal&password=robot-pass",
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (401, Some("invalid_client")));
    let (s, e) = token_grant(
        &sg,
        ("portal-client", "portal-secret"),
        "grant_type=password&username=robot%40portal&password=nope",
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
    let (s, e) = token_grant(
        &sg,
        ("portal-client", "portal-secret"),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );

    // The workshop endpoints take the access token, and refuse a bad one.
    let path = "/workshops/catalog/environments/";
    assert_eq!(get(&sg, Some(&access), path).await.0, 200);
    assert_eq!(
        get(&sg, Some(t2["access_token"].as_str().unwrap()), path)
            .await
            .0,
        200
    );
    assert_eq!(get(&sg, Some("made-up"), path).await.0, 401);
    let request = "/workshops/environment/lab-markdown-sample-w01/request/";
    assert_eq!(get(&sg, None, request).await.0, 401);
}

#[tokio::test]
async fn request_activate_and_list_as_the_portal_documents_them() {
    let (sg, access, _backends) = setup("ws-request").await;
    let token = Some(access.as_str());

    // curl …/workshops/environment/<name>/request/?index_url=https://hub.test/
    let (s, r) = get(
        &sg,
        token,
        "/workshops/environment/lab-markdown-sample-w01/request/?index_url=https://hub.test/",
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        keys(&r),
        [
            "environment",
            "name",
            "namespace",
            "session",
            "url",
            "user",
            "workshop"
        ]
    );
    let name = r["name"].as_str().unwrap().to_string();
    assert_eq!(
        name, "lab-markdown-sample-w01-s001",
        "the reserved session is taken first"
    );
    assert_eq!(r["session"], r["name"]);
    assert_eq!(r["namespace"], r["name"]);
    assert_eq!(r["workshop"], "lab-markdown-sample");
    assert_eq!(r["environment"], "lab-markdown-sample-w01");
    let user = r["user"].as_str().unwrap().to_string();
    assert_eq!(user.len(), 36, "a UUID-shaped user id: {user}");
    let url = r["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("/workshops/session/{name}/activate/?token=")),
        "{url}"
    );
    assert!(
        url.ends_with("&index_url=https%3A%2F%2Fhub.test%2F"),
        "{url}"
    );

    // The same user again: the same session. An unknown user id is adopted:
    // a new portal user with exactly that id, as the portal's create_user.
    let (s, again) = get(
        &sg,
        token,
        &format!("/workshops/environment/lab-markdown-sample-w01/request/?index_url=https://hub.test/&user={user}"),
    )
    .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        (again["name"].as_str(), again["user"].as_str()),
        (Some(name.as_str()), Some(user.as_str()))
    );
    // An index_url off the allow-list is left out.
    let (s, other) = get(
        &sg,
        token,
        "/workshops/environment/lab-markdown-sample-w01/request/?index_url=https://evil.example/&user=nobody&email=a@b.test&first_name=A&last_name=B",
    )
    .await;
    assert_eq!(s, 200, "{other}");
    assert_eq!(other["user"], "nobody");
    assert_ne!(other["name"], r["name"]);
    assert!(
        !other["url"].as_str().unwrap().contains("index_url"),
        "{other}"
    );

    // Capacity 2 is reached: the next one is unavailable; an unknown
    // environment is invalid.
    let (s, e) = get(
        &sg,
        token,
        "/workshops/environment/lab-markdown-sample-w01/request/?index_url=https://hub.test/",
    )
    .await;
    assert_eq!(
        (s, e["notification"].as_str()),
        (503, Some("session-unavailable")),
        "{e}"
    );
    let (s, e) = get(&sg, token, "/workshops/environment/nope-w01/request/").await;
    assert_eq!(
        (s, e["notification"].as_str()),
        (404, Some("workshop-invalid")),
        "{e}"
    );

    // The browser opens the URL on the portal host (the gateway's
    // `localhost` by default): on to the session's own host, where the token
    // is consumed and the cookie set, and then to the app.
    let port = sg.gateway.port();
    let browser = Browser::new(sg.gateway);
    let page = browser.get(&format!("http://localhost:{port}{url}")).await;
    assert_eq!(page.status, 302, "{}", page.body);
    let next = page.header("location").unwrap().to_string();
    assert!(
        next.starts_with(&format!(
            "http://{name}.localhost:{port}/__sessiongate/activate?token="
        )),
        "{next}"
    );
    let page = browser.follow(&next).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body, "backend-1");
    assert_eq!(
        page.url.as_str(),
        format!("http://{name}.localhost:{port}/")
    );
    // Once used, the link lets no other browser in.
    let again = Browser::new(sg.gateway)
        .follow(&format!("http://localhost:{port}{url}"))
        .await;
    assert_eq!(again.status, 403, "{}", again.body);

    // curl …/workshops/user/<user>/sessions/
    let (s, u) = get(&sg, token, &format!("/workshops/user/{user}/sessions/")).await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(keys(&u), ["sessions", "user"]);
    assert_eq!(u["user"], user.as_str());
    let first = &u["sessions"][0];
    assert_eq!(
        keys(first),
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
    assert_eq!(first["name"], name.as_str());
    assert_eq!(first["workshop"], "lab-markdown-sample");
    assert!(first["countdown"].as_u64().unwrap() > 1700);
    assert!(first["started"].as_str().unwrap().ends_with('Z'));

    // curl …/workshops/catalog/environments/?sessions=true
    let (s, c) = get(&sg, token, "/workshops/catalog/environments/?sessions=true").await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(keys(&c), ["environments", "portal"]);
    assert_eq!(
        keys(&c["portal"]),
        ["generation", "labels", "name", "sessions", "uid", "url"]
    );
    assert_eq!(
        keys(&c["portal"]["sessions"]),
        ["allocated", "anonymous", "maximum", "registered"]
    );
    // The configured cap (workshop.sessions_maximum), 0: none.
    assert_eq!(c["portal"]["sessions"]["maximum"], 0);
    assert_eq!(c["portal"]["sessions"]["allocated"], 2);
    let env = &c["environments"][0];
    assert_eq!(
        keys(env),
        [
            "allocated",
            "available",
            "capacity",
            "duration",
            "name",
            "reserved",
            "sessions",
            "state",
            "workshop"
        ]
    );
    assert_eq!(
        keys(&env["workshop"]),
        crate::workshop_catalog::WORKSHOP_KEYS
    );
    assert_eq!(
        (env["state"].as_str(), env["duration"].as_u64()),
        (Some("RUNNING"), Some(1800))
    );
    assert_eq!(
        (env["allocated"].as_u64(), env["available"].as_u64()),
        (Some(2), Some(0))
    );
    let session = env["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap();
    assert_eq!(
        keys(session),
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
        (session["state"].as_str(), session["user"].as_str()),
        (Some("RUNNING"), Some(user.as_str()))
    );

    // Without authentication no sessions are listed.
    let (s, anon) = get(&sg, None, "/workshops/catalog/environments/?sessions=true").await;
    assert_eq!(s, 200);
    assert!(anon["environments"][0].get("sessions").is_none(), "{anon}");

    // Stopping: listed only when STOPPING is asked for.
    sg.api(
        "POST",
        "/api/v1/environments/lab-markdown-sample-w01/stop",
        None,
    )
    .await;
    let (_, c) = get(&sg, token, "/workshops/catalog/environments/").await;
    assert_eq!(c["environments"], json!([]));
    let (_, c) = get(
        &sg,
        token,
        "/workshops/catalog/environments/?state=RUNNING&state=STOPPING",
    )
    .await;
    assert_eq!(c["environments"][0]["state"], "STOPPING");
    let (s, e) = get(
        &sg,
        token,
        "/workshops/environment/lab-markdown-sample-w01/request/?index_url=https://hub.test/",
    )
    .await;
    assert_eq!(
        (s, e["notification"].as_str()),
        (404, Some("workshop-invalid"))
    );

    // A deleted session's link goes back to the index, with a notification.
    sg.api("DELETE", &format!("/api/v1/sessions/{name}"), None)
        .await;
    let portal = Browser::new(sg.gateway);
    let page = portal.get(&format!("http://localhost:{port}{url}")).await;
    assert_eq!(page.status, 302);
    assert_eq!(
        page.header("location"),
        Some("https://hub.test/?notification=session-deleted")
    );
    let page = portal
        .get(&format!(
            "http://localhost:{port}/workshops/session/nope-s001/activate/?token=x&index_url=https://evil.example/"
        ))
        .await;
    assert_eq!(
        page.header("location"),
        Some("/?notification=session-invalid")
    );
}

#[tokio::test]
async fn fifty_concurrent_requests_for_the_last_slot_one_wins() {
    let (sg, access, _backends) = setup("ws-race").await;
    // Take one of the two slots.
    let (s, _) = get(
        &sg,
        Some(&access),
        "/workshops/environment/lab-markdown-sample-w01/request/?index_url=https://hub.test/",
    )
    .await;
    assert_eq!(s, 200);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (api, token) = (sg.api, access.clone());
        tasks.push(tokio::spawn(async move {
            call(
                api,
                "GET",
                "/workshops/environment/lab-markdown-sample-w01/request/?index_url=https://hub.test/",
                &format!("Authorization: Bearer {token}\r\n"),
                "",
            )
            .await
        }));
    }
    let mut won = Vec::new();
    let mut unavailable = 0;
    for t in tasks {
        match t.await.unwrap() {
            (200, v) => won.push(v["name"].as_str().unwrap().to_string()),
            (503, v) => {
                assert_eq!(v["notification"], "session-unavailable");
                unavailable += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(unavailable, 49);
}
