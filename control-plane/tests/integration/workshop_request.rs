//! The request endpoint as the training portal's real clients use it
//! (issue 16), against a real server in process, and its activation links
//! in a real browser's cookie jar; the activation window on the manual
//! clock of the `api` harness. Each test names a behaviour of the portal's
//! code (educates-training-platform `training-portal/src/project/apps/
//! workshops/views/environment.py`, `environment_request`) or of its
//! clients (the lookup service, the `educates` CLI, the Backstage plugin).

use std::time::Duration;

use control_plane::workshop::portal::RESERVE_USER;
use gateway::access::{ActivationError, ActivationRequest};
use serde_json::{json, Value};
use testkit::server::InProcess;
use testkit::{Endpoints, Origin};

use crate::api::Api;
use crate::common::jar::Browser;
use crate::common::{wait_log, Sessiongate};
use crate::workshop::{call, keys, setup};

/// `setup`'s environment: capacity 2, one session in reserve, backends
/// answering their names (`backend-1`, `backend-2`).
const ENV: &str = "lab-markdown-sample-w01";

/// A request to `ENV`'s request endpoint with the robot's token, as a
/// client sends it: `method`, the query, extra header lines, a body.
async fn request(
    sg: &Endpoints,
    token: &str,
    method: &str,
    query: &str,
    headers: &str,
    body: &str,
) -> (u16, Value) {
    request_to(sg, token, ENV, method, query, headers, body).await
}

async fn request_to(
    sg: &Endpoints,
    token: &str,
    env: &str,
    method: &str,
    query: &str,
    headers: &str,
    body: &str,
) -> (u16, Value) {
    call(
        sg.api,
        method,
        &format!("/workshops/environment/{env}/request/?{query}"),
        &format!("Authorization: Bearer {token}\r\n{headers}"),
        body,
    )
    .await
}

/// A GET to `env` with an allowed index_url and `body`, as the lookup
/// service sends it.
async fn get_with_body(sg: &Endpoints, token: &str, env: &str, body: &str) -> (u16, Value) {
    request_to(
        sg,
        token,
        env,
        "GET",
        "index_url=https://hub.test/",
        "Content-Type: application/json\r\n",
        body,
    )
    .await
}

/// A plain GET with an allowed index_url and `extra` query parameters.
async fn get_session(sg: &Endpoints, token: &str, extra: &str) -> (u16, Value) {
    request(
        sg,
        token,
        "GET",
        &format!("index_url=https://hub.test/{extra}"),
        "",
        "",
    )
    .await
}

/// Every session and user, as the API shows them: what bad input must not
/// change.
async fn stored(sg: &Endpoints) -> Value {
    let (_, sessions) = sg
        .api(
            "GET",
            "/api/v1/sessions?state=pending,running,paused,evicted,expired,deleted&per_page=1000",
            None,
        )
        .await;
    let (_, users) = sg.api("GET", "/api/v1/users?per_page=1000", None).await;
    json!({"sessions": sessions, "users": users})
}

/// A refusal in the portal's shape: the status, the portal's `error`
/// string, our `code`, a message naming `names`, and the notification.
fn assert_refused(
    got: &(u16, Value),
    status: u16,
    error: &str,
    code: &str,
    names: &str,
    notification: Option<&str>,
) {
    let (s, e) = got;
    assert_eq!(*s, status, "{e}");
    assert_eq!(e["error"], error, "{e}");
    assert_eq!(e["code"], code, "{e}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(names),
        "{message:?} does not name {names:?}"
    );
    assert_eq!(e["notification"].as_str(), notification, "{e}");
}

async fn session_view(sg: &Endpoints, name: &str) -> Value {
    let (s, v) = sg
        .api("GET", &format!("/api/v1/sessions/{name}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn post_is_served_as_the_cli_and_backstage_send_it() {
    let (sg, token, _backends) = setup("wr-post").await;
    // `educates workshop request`: POST, sorted query, a JSON body.
    let cli = request(
        &sg,
        &token,
        "POST",
        "index_url=https%3A%2F%2Fhub.test%2F&timeout=60&user=cli-user",
        "Content-Type: application/json\r\n",
        r#"{"parameters":[{"name":"LEVEL","value":"2"}]}"#,
    )
    .await;
    assert_eq!(cli.0, 200, "{}", cli.1);
    assert_eq!(cli.1["user"], "cli-user");
    assert_eq!(
        cli.1["parameters"],
        json!([{"name": "LEVEL", "value": "2"}])
    );
    // Backstage: POST with no body and no Content-Type.
    let backstage = request(
        &sg,
        &token,
        "POST",
        "index_url=https%3A%2F%2Fbackstage.test%2Feducates",
        "",
        "",
    )
    .await;
    assert_eq!(backstage.0, 200, "{}", backstage.1);
    assert!(backstage.1.get("parameters").is_none(), "{}", backstage.1);
    assert_ne!(backstage.1["name"], cli.1["name"]);
}

#[tokio::test]
async fn a_get_with_a_json_body_and_empty_values_is_read_as_the_lookup_service_sends_it() {
    let (sg, token, _backends) = setup("wr-lookup").await;
    // All six keys, in the lookup service's order, most of them empty.
    let (s, r) = request(
        &sg,
        &token,
        "GET",
        "user=&email=&first_name=&last_name=&index_url=https://hub.test/&analytics_url=",
        "Content-Type: application/json\r\n",
        r#"{"parameters": [{"name": "LEVEL", "value": "2"}, {"name": "MODE", "value": ""}]}"#,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["user"].as_str().map(str::len), Some(36), "a new id: {r}");
    let v = session_view(&sg, r["name"].as_str().unwrap()).await;
    assert_eq!(
        v["parameters"],
        json!([{"name": "LEVEL", "value": "2"}, {"name": "MODE", "value": ""}])
    );
    assert!(v.get("analytics_url").is_none(), "empty means absent: {v}");
    let (_, u) = sg
        .api(
            "GET",
            &format!("/api/v1/users/{}", r["user"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        (u["email"].clone(), u["first_name"].clone()),
        (Value::Null, Value::Null)
    );
}

#[tokio::test]
async fn unknown_query_parameters_are_ignored() {
    let (sg, token, _backends) = setup("wr-unknown").await;
    let (s, r) = get_session(&sg, &token, "&utm_source=mail&colour=&flag").await;
    assert_eq!(s, 200, "{r}");
}

#[tokio::test]
async fn unknown_query_parameters_are_logged_at_debug() {
    let dir = testkit::temp_dir("wr-debug-log");
    let sg = Sessiongate::start(
        &dir,
        "",
        &[("RUST_LOG", "info,control_plane::api::workshop=debug")],
    )
    .await;
    let backend = Origin::named("backend");
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "lab-w01", "capacity": 1, "targets": [backend.url()]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, r) = request_to(
        &sg,
        &sg.token,
        "lab-w01",
        "GET",
        "index_url=https://hub.test/&utm_source=mail",
        "",
        "",
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let line = wait_log(&sg.log, "unknown query parameter ignored").await;
    assert!(
        line.contains("DEBUG") && line.contains("utm_source"),
        "{line}"
    );
}

#[tokio::test]
async fn analytics_url_is_kept_with_the_session() {
    let (sg, token, _backends) = setup("wr-analytics").await;
    let (s, r) = get_session(
        &sg,
        &token,
        "&analytics_url=https%3A%2F%2Fhooks.test%2Fevents%3Fsite%3D1",
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let v = session_view(&sg, r["name"].as_str().unwrap()).await;
    assert_eq!(v["analytics_url"], "https://hooks.test/events?site=1");
}

#[tokio::test]
async fn index_url_is_required_and_the_legacy_redirect_url_stands_in() {
    let (sg, token, _backends) = setup("wr-index").await;
    let before = stored(&sg).await;
    for query in ["", "index_url=", "index_url=%20&redirect_url="] {
        let got = request(&sg, &token, "GET", query, "", "").await;
        assert_refused(
            &got,
            400,
            "Need redirect URL for workshop index",
            "bad_request",
            "index_url",
            None,
        );
    }
    assert_eq!(stored(&sg).await, before, "a refusal stored something");
    let (s, r) = request(
        &sg,
        &token,
        "GET",
        "index_url=&redirect_url=https://hub.test/",
        "",
        "",
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let url = r["url"].as_str().unwrap();
    assert!(
        url.ends_with("&index_url=https%3A%2F%2Fhub.test%2F"),
        "{url}"
    );
}

#[tokio::test]
async fn legacy_firstname_and_lastname_name_a_new_user() {
    let (sg, token, _backends) = setup("wr-names").await;
    let (s, r) = get_session(&sg, &token, "&user=ada-1&firstname=Ada&lastname=Lovelace").await;
    assert_eq!(s, 200, "{r}");
    let (_, u) = sg.api("GET", "/api/v1/users/ada-1", None).await;
    assert_eq!(
        (u["first_name"].as_str(), u["last_name"].as_str()),
        (Some("Ada"), Some("Lovelace"))
    );
    // The current names win over the legacy ones.
    let (s, r) = get_session(&sg, &token, "&user=grace-1&firstname=Ada&first_name=Grace").await;
    assert_eq!(s, 200, "{r}");
    let (_, u) = sg.api("GET", "/api/v1/users/grace-1", None).await;
    assert_eq!(u["first_name"], "Grace");
}

#[tokio::test]
async fn an_unknown_user_id_is_adopted_and_gets_the_same_session_back() {
    let (sg, token, _backends) = setup("wr-adopt").await;
    let (s, first) = get_session(&sg, &token, "&user=learner-42").await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["user"], "learner-42");
    let (s, u) = sg.api("GET", "/api/v1/users/learner-42", None).await;
    assert_eq!(s, 200, "{u}");
    let (s, again) = get_session(&sg, &token, "&user=learner-42").await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        (&again["user"], &again["name"]),
        (&first["user"], &first["name"])
    );
    let (s, list) = call(
        sg.api,
        "GET",
        "/workshops/user/learner-42/sessions/",
        &format!("Authorization: Bearer {token}\r\n"),
        "",
    )
    .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["sessions"][0]["name"], first["name"]);
}

#[tokio::test]
async fn a_user_id_the_portal_could_not_route_is_refused_naming_user() {
    let (sg, token, _backends) = setup("wr-user-id").await;
    let before = stored(&sg).await;
    for bad in ["ann.lee%40x.test", "a%20b", "-lead", &"a".repeat(129)] {
        let got = get_session(&sg, &token, &format!("&user={bad}")).await;
        assert_eq!(got.0, 400, "{bad}: {}", got.1);
        assert_eq!(got.1["code"], "bad_request");
        let message = got.1["message"].as_str().unwrap();
        assert!(message.starts_with("user: "), "{message}");
    }
    assert_eq!(stored(&sg).await, before, "a refusal stored something");
    // An operator's existing user keeps working whatever its name.
    sg.api(
        "POST",
        "/api/v1/users",
        Some(json!({"name": "ops.ann@x.test"})),
    )
    .await;
    let (s, r) = get_session(&sg, &token, "&user=ops.ann%40x.test").await;
    assert_eq!(
        (s, r["user"].as_str()),
        (200, Some("ops.ann@x.test")),
        "{r}"
    );
}

#[tokio::test]
async fn an_invalid_email_is_refused_with_the_portals_message() {
    let (sg, token, _backends) = setup("wr-email").await;
    let before = stored(&sg).await;
    for bad in [
        "not-an-email",
        "ann%40",
        "ann%40example",
        "a%20b%40example.org",
    ] {
        let got = get_session(&sg, &token, &format!("&email={bad}")).await;
        assert_refused(
            &got,
            400,
            "Invalid email address provided",
            "bad_request",
            "email",
            None,
        );
    }
    assert_eq!(stored(&sg).await, before, "a refusal stored something");
    let (s, r) = get_session(&sg, &token, "&email=ann%40example.org&user=ann-1").await;
    assert_eq!(s, 200, "{r}");
    let (_, u) = sg.api("GET", "/api/v1/users/ann-1", None).await;
    assert_eq!(u["email"], "ann@example.org");
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_the_portals_messages_and_change_nothing() {
    let (sg, token, _backends) = setup("wr-body").await;
    let before = stored(&sg).await;
    let invalid = "Invalid JSON request payload";
    let malformed = "Malformed JSON request payload";
    for (body, error, names) in [
        ("{not json", invalid, "not JSON"),
        ("   ", invalid, "not JSON"),
        ("[]", malformed, "JSON object"),
        (r#"{"parameters": {}}"#, malformed, "parameters"),
        (r#"{"parameters": null}"#, malformed, "parameters"),
        (r#"{"parameters": [1]}"#, malformed, "parameters[0]"),
        (
            r#"{"parameters": [{"value": "x"}]}"#,
            malformed,
            "parameters[0].name",
        ),
        (
            r#"{"parameters": [{"name": "", "value": "x"}]}"#,
            malformed,
            "parameters[0].name",
        ),
        (
            r#"{"parameters": [{"name": 7, "value": "x"}]}"#,
            malformed,
            "parameters[0].name",
        ),
        (
            r#"{"parameters": [{"name": "A"}, {"name": "B", "value": 2}]}"#,
            malformed,
            "parameters[1].value",
        ),
        (
            r#"{"parameters": [{"name": "a b", "value": "x"}]}"#,
            "",
            "parameters[0].name",
        ),
    ] {
        for method in ["GET", "POST"] {
            let (s, e) = request(
                &sg,
                &token,
                method,
                "index_url=https://hub.test/",
                "Content-Type: text/plain\r\n",
                body,
            )
            .await;
            assert_eq!(s, 400, "{method} {body}: {e}");
            let message = e["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(names),
                "{body}: {message:?} lacks {names:?}"
            );
            if error.is_empty() {
                assert_eq!(e["error"], e["message"], "{body}: no portal string");
            } else {
                assert_eq!(e["error"], error, "{body}: {e}");
                assert!(message.contains(error), "{body}: {message:?}");
            }
        }
    }
    assert_eq!(stored(&sg).await, before, "a refusal stored something");
    // Other keys are ignored, and a name given twice keeps its last value.
    let (s, r) = get_with_body(
        &sg,
        &token,
        ENV,
        r#"{"extra": 1, "parameters": [{"name": "A", "value": "1", "x": true}, {"name": "A", "value": "2"}, {"name": "B"}]}"#,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        r["parameters"],
        json!([{"name": "A", "value": "2"}, {"name": "B", "value": ""}])
    );
}

#[tokio::test]
async fn refusals_carry_the_portals_error_string_beside_code_and_notification() {
    let (sg, token, _backends) = setup("wr-errors").await;
    for _ in 0..2 {
        assert_eq!(get_session(&sg, &token, "").await.0, 200);
    }
    let full = get_session(&sg, &token, "").await;
    assert_refused(
        &full,
        503,
        "No session available",
        "session_unavailable",
        ENV,
        Some("session-unavailable"),
    );
    assert_eq!(keys(&full.1), ["code", "error", "message", "notification"]);
    let unknown = get_with_body(&sg, &token, "nope-w01", "").await;
    assert_refused(
        &unknown,
        404,
        "Environment does not exist",
        "not_found",
        "nope-w01",
        Some("workshop-invalid"),
    );
}

#[tokio::test]
async fn session_reacquires_only_the_users_own_session() {
    let (sg, token, _backends) = setup("wr-reacquire").await;
    let (s, mine) = get_session(&sg, &token, "&user=ann-1").await;
    assert_eq!(s, 200, "{mine}");
    let name = mine["name"].as_str().unwrap();
    // The lookup service's reacquire: that session back.
    let (s, again) = get_session(&sg, &token, &format!("&user=ann-1&session={name}")).await;
    assert_eq!((s, again["name"].as_str()), (200, Some(name)), "{again}");
    let before = stored(&sg).await;
    // Another session name, or a user without a session: nothing, and
    // nothing allocated (not even the user).
    for extra in [
        "&user=ann-1&session=lab-markdown-sample-w01-s009".to_string(),
        format!("&user=bob-1&session={name}"),
        "&session=lab-markdown-sample-w01-s002".to_string(),
    ] {
        let got = get_session(&sg, &token, &extra).await;
        assert_refused(
            &got,
            503,
            "No session available",
            "not_reacquirable",
            "reacquire",
            Some("session-unavailable"),
        );
    }
    assert_eq!(stored(&sg).await, before, "a refusal stored something");
}

#[tokio::test]
async fn the_reserve_owner_cannot_be_requested_for() {
    let (sg, token, _backends) = setup("wr-reserve-user").await;
    let before = stored(&sg).await;
    let got = get_session(&sg, &token, &format!("&user={RESERVE_USER}")).await;
    assert_refused(
        &got,
        400,
        "Session requests not permitted for user",
        "bad_request",
        RESERVE_USER,
        None,
    );
    assert_eq!(stored(&sg).await, before, "a refusal stored something");
}

/// The portal URL of a request's answer, as a browser opens it, and the
/// session's own address.
fn urls(sg: &Endpoints, answer: &Value) -> (String, String) {
    let port = sg.gateway.port();
    let url = answer["url"].as_str().unwrap();
    let name = answer["name"].as_str().unwrap();
    (
        format!("http://localhost:{port}{url}"),
        format!("http://{name}.localhost:{port}/"),
    )
}

#[tokio::test]
async fn a_workshop_link_reopened_by_the_browser_it_let_in_lets_it_in_again() {
    let (sg, token, _backends) = setup("wr-reopen").await;
    let (s, r) = get_session(&sg, &token, "").await;
    assert_eq!(s, 200, "{r}");
    let (link, session) = urls(&sg, &r);
    let browser = Browser::new(sg.gateway);
    let page = browser.follow(&link).await;
    assert_eq!((page.status, page.body.as_str()), (200, "backend-1"));
    // A reload of the activation URL: let in again, as the same user.
    let page = browser.follow(&link).await;
    assert_eq!((page.status, page.body.as_str()), (200, "backend-1"));
    assert_eq!(page.url.as_str(), session);

    // Another browser with the same link is refused, and says why.
    let other = Browser::new(sg.gateway);
    let hop = other.get(&link).await;
    assert_eq!(hop.status, 302);
    let refused = other
        .get_with(
            hop.header("location").unwrap(),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("access_link_used"),
        "{}",
        refused.body
    );
    assert_eq!(other.get(&session).await.status, 401);
    // ... and the first browser still gets in.
    assert_eq!(browser.get(&session).await.status, 200);
}

#[tokio::test]
async fn an_access_link_from_the_api_stays_one_time_even_in_the_same_browser() {
    let (sg, token, _backends) = setup("wr-one-time").await;
    let (s, r) = get_session(&sg, &token, "&user=ann-1").await;
    assert_eq!(s, 200, "{r}");
    let name = r["name"].as_str().unwrap();
    let (s, link) = sg
        .api(
            "POST",
            &format!("/api/v1/sessions/{name}/access"),
            Some(json!({"user": "ann-1"})),
        )
        .await;
    assert_eq!(s, 200, "{link}");
    let url = link["url"].as_str().unwrap();
    let browser = Browser::new(sg.gateway);
    assert_eq!(browser.follow(url).await.status, 200);
    let again = browser
        .get_with(url, &[("accept", "application/json")])
        .await;
    assert_eq!(again.status, 403, "{}", again.body);
    assert!(again.body.contains("access_link_invalid"), "{}", again.body);
}

/// An environment of one backend answering JSON (its request's headers),
/// which sends request parameters as headers if `parameter_headers`.
async fn json_environment(sg: &Endpoints, name: &str, parameter_headers: bool) -> Origin {
    let backend = Origin::start("json");
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/environments",
            Some(
                json!({"name": name, "capacity": 1, "targets": [backend.url()],
                        "parameter_headers": parameter_headers}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["parameter_headers"], parameter_headers);
    backend
}

/// Requests a session of `env` with `body`'s parameters, opens it in a
/// new browser, and answers the headers its backend saw for a request
/// carrying `forged` headers.
async fn headers_seen(
    sg: &Endpoints,
    token: &str,
    env: &str,
    body: &str,
    forged: &[(&str, &str)],
) -> (Value, Value) {
    let (s, r) = request_to(
        sg,
        token,
        env,
        "POST",
        "index_url=https://hub.test/",
        "Content-Type: application/json\r\n",
        body,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let (link, session) = urls(sg, &r);
    let browser = Browser::new(sg.gateway);
    assert_eq!(browser.follow(&link).await.status, 200);
    let page = browser.get_with(&session, forged).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen: Value = serde_json::from_str(&page.body).unwrap();
    (r, seen["headers"].clone())
}

#[tokio::test]
async fn request_parameters_reach_the_backend_as_headers_only_where_the_environment_says_so() {
    let (sg, token, _backends) = setup("wr-headers").await;
    let _on = json_environment(&sg, "headers-w01", true).await;
    let _off = json_environment(&sg, "plain-w01", false).await;
    let body = r#"{"parameters": [{"name": "LEVEL", "value": "2"}, {"name": "user_name", "value": "Ann Lee"}]}"#;
    let forged = [
        ("X-Workshop-Param-LEVEL", "9"),
        ("X-Workshop-Param-Admin", "true"),
    ];

    let (r, h) = headers_seen(&sg, &token, "headers-w01", body, &forged).await;
    assert_eq!(h["x-workshop-param-level"], "2", "{h}");
    assert_eq!(h["x-workshop-param-user_name"], "Ann Lee", "{h}");
    assert!(h.get("x-workshop-param-admin").is_none(), "forged: {h}");
    let v = session_view(&sg, r["name"].as_str().unwrap()).await;
    assert_eq!(v["parameter_headers"], true);

    // Without the environment's say-so: nothing added, nothing removed.
    let (r, h) = headers_seen(&sg, &token, "plain-w01", body, &forged).await;
    assert_eq!(h["x-workshop-param-level"], "9", "{h}");
    assert_eq!(h["x-workshop-param-admin"], "true", "{h}");
    assert!(h.get("x-workshop-param-user_name").is_none(), "{h}");
    let v = session_view(&sg, r["name"].as_str().unwrap()).await;
    assert!(v.get("parameter_headers").is_none(), "{v}");
    assert_eq!(v["parameters"][1]["value"], "Ann Lee");
}

#[tokio::test]
async fn parameter_headers_is_set_on_create_and_patch() {
    let sg = InProcess::start(&testkit::temp_dir("wr-env-flag"), "").await;
    let _default = {
        let backend = Origin::start("json");
        let (s, v) = sg
            .api(
                "POST",
                "/api/v1/environments",
                Some(json!({"name": "flag-w01", "capacity": 1, "targets": [backend.url()]})),
            )
            .await;
        assert_eq!(
            (s, v["parameter_headers"].as_bool()),
            (201, Some(false)),
            "{v}"
        );
        backend
    };
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/environments/flag-w01",
            Some(json!({"parameter_headers": true})),
        )
        .await;
    assert_eq!(
        (s, v["parameter_headers"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    let (_, v) = sg.api("GET", "/api/v1/environments/flag-w01", None).await;
    assert_eq!(v["parameter_headers"], true);
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/environments/flag-w01",
            Some(json!({"parameter_headers": "yes"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (_, v) = sg.api("GET", "/api/v1/environments/flag-w01", None).await;
    assert_eq!(v["parameter_headers"], true, "a refused patch changed it");
}

#[tokio::test]
async fn a_parameter_that_cannot_be_a_header_is_refused_where_headers_are_sent() {
    let (sg, token, _backends) = setup("wr-header-values").await;
    let _on = json_environment(&sg, "headers-w01", true).await;
    let before = stored(&sg).await;
    for (body, names) in [
        (
            r#"{"parameters": [{"name": "city", "value": "Zürich"}]}"#,
            "parameters[0].value",
        ),
        (
            r#"{"parameters": [{"name": "level", "value": "1"}, {"name": "LEVEL", "value": "2"}]}"#,
            "parameters[1].name",
        ),
    ] {
        let (s, e) = get_with_body(&sg, &token, "headers-w01", body).await;
        assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")), "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(message.starts_with(names), "{message}");
    }
    assert_eq!(stored(&sg).await, before, "a refusal stored something");
    // Where they are not sent as headers, the value is kept as given.
    let (s, r) = get_with_body(
        &sg,
        &token,
        ENV,
        r#"{"parameters": [{"name": "city", "value": "Zürich"}]}"#,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["parameters"][0]["value"], "Zürich");
}

// ---- the activation window, on the manual clock ----

/// The token of a request's answer (its `url`).
fn token_of(answer: &Value) -> String {
    let url = answer["url"].as_str().unwrap();
    let (_, query) = url.split_once("token=").unwrap();
    query.split('&').next().unwrap().to_string()
}

/// Opens `token`'s link on `session`'s host, from a browser holding a
/// cookie for `holder` (or none).
async fn open(
    api: &Api,
    session: &str,
    token: &str,
    holder: Option<&str>,
) -> Result<String, ActivationError> {
    api.cp
        .activate_link(ActivationRequest {
            token: token.to_string(),
            session: session.into(),
            client: "127.0.0.1".parse().unwrap(),
            holder: holder.map(Into::into),
        })
        .await
        .map(|a| a.user)
}

async fn one_backend(api: &Api) {
    api.ok(
        "POST",
        "/api/v1/environments",
        Some(json!({"name": "lab-w01", "capacity": 1, "targets": ["http://127.0.0.1:7001"]})),
    )
    .await;
}

const REQUEST: &str = "/workshops/environment/lab-w01/request/?index_url=https://hub.test/";

#[tokio::test]
async fn a_repeated_request_for_a_pending_session_gives_the_same_url_and_restarts_its_window() {
    let api = Api::new("wr-window").await;
    one_backend(&api).await;
    let path = format!("{REQUEST}&user=ann-1&timeout=60");
    let first = api.ok("GET", &path, None).await;
    api.clock.advance(Duration::from_secs(50));
    let again = api.ok("GET", &path, None).await;
    assert_eq!(again["url"], first["url"], "the same activation URL");
    // 100 s after the first request, 50 s after the second: still pending,
    // and the link still opens.
    api.clock.advance(Duration::from_secs(50));
    let report = api.portal.reap().await.unwrap();
    assert!(report.deleted_unactivated.is_empty(), "{report:?}");
    let v = api.ok("GET", "/api/v1/sessions/lab-w01-s001", None).await;
    assert_eq!(v["state"], "pending");
    let user = open(&api, "lab-w01-s001", &token_of(&first), None).await;
    assert_eq!(user.ok().as_deref(), Some("ann-1"));
    let v = api.ok("GET", "/api/v1/sessions/lab-w01-s001", None).await;
    assert_eq!(v["state"], "running");
}

#[tokio::test]
async fn a_workshop_link_binds_to_its_first_browser_until_its_deadline() {
    let api = Api::new("wr-bind").await;
    one_backend(&api).await;
    let r = api
        .ok("GET", &format!("{REQUEST}&user=ann-1&timeout=30"), None)
        .await;
    let token = token_of(&r);
    let session = "lab-w01-s001";
    assert_eq!(
        open(&api, session, &token, None).await.ok().as_deref(),
        Some("ann-1")
    );
    // The browser it let in (its cookie names ann-1) again; any other not.
    assert_eq!(
        open(&api, session, &token, Some("ann-1"))
            .await
            .ok()
            .as_deref(),
        Some("ann-1")
    );
    for holder in [None, Some("bob")] {
        assert!(
            matches!(
                open(&api, session, &token, holder).await,
                Err(ActivationError::AlreadyUsed)
            ),
            "{holder:?}"
        );
    }
    // Past its deadline it is gone, for its own browser too.
    api.clock.advance(Duration::from_secs(31));
    assert!(matches!(
        open(&api, session, &token, Some("ann-1")).await,
        Err(ActivationError::InvalidToken)
    ));
}

#[tokio::test]
async fn after_a_key_rotation_a_repeated_request_gets_a_new_link_and_the_old_one_still_opens() {
    let api = Api::new("wr-rotation").await;
    one_backend(&api).await;
    let path = format!("{REQUEST}&user=ann-1");
    let first = api.ok("GET", &path, None).await;
    api.cp.rotate_keys().await.unwrap();
    api.clock.advance(Duration::from_millis(5));
    let again = api.ok("GET", &path, None).await;
    assert_eq!(again["name"], first["name"]);
    assert_ne!(again["url"], first["url"]);
    let user = open(&api, "lab-w01-s001", &token_of(&first), None).await;
    assert_eq!(user.ok().as_deref(), Some("ann-1"));
}

#[tokio::test]
async fn the_openapi_document_has_the_request_endpoints_methods_parameters_body_and_errors() {
    let api = Api::new("wr-openapi").await;
    let (s, doc) = api.raw("GET", "/api/openapi.json", None, None, "").await;
    assert_eq!(s, 200);
    let path = &doc["paths"]["/workshops/environment/{name}/request/"];
    for method in ["get", "post"] {
        let op = &path[method];
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{method}: no parameters"))
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for p in [
            "index_url",
            "redirect_url",
            "analytics_url",
            "session",
            "firstname",
        ] {
            assert!(
                params.iter().any(|n| n.contains(p)),
                "{method}: {p} missing from {params:?}"
            );
        }
        assert!(op["requestBody"].is_object(), "{method}: no request body");
        for status in ["200", "400", "404", "503"] {
            assert!(op["responses"][status].is_object(), "{method}: no {status}");
        }
    }
    let schemas = &doc["components"]["schemas"];
    for s in ["RequestErrorBody", "RequestPayload", "RequestParameter"] {
        assert!(schemas[s].is_object(), "schema {s} missing");
    }
    for f in ["parameters", "analytics_url", "parameter_headers"] {
        assert!(
            schemas["Session"]["properties"][f].is_object(),
            "Session.{f}"
        );
    }
    for s in ["Environment", "NewEnvironment", "EnvironmentPatch"] {
        assert!(
            schemas[s]["properties"]["parameter_headers"].is_object(),
            "{s}.parameter_headers"
        );
    }
}
