//! Hostile browsers, apps and clients at the gateway, through the whole
//! server (issue 15): what the gateway's own tests (`gateway/tests/hostile.rs`)
//! cannot show, as it takes the configuration, the API and the store,
//! `ctl`, the HTTPS listener or the log.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use testkit::server::{public_session, InProcess};
use testkit::{exchange, temp_dir, Endpoints, Origin, Reply};

use crate::common::{wait_log, Sessiongate};

/// Adds the user `ann` and her public session `name` for the origin on
/// `127.0.0.1:<port>`, with `extra` fields.
async fn session(sg: &Endpoints, name: &str, port: u16, extra: Value) {
    sg.api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    let mut body = public_session(name, port);
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    let (s, v) = sg.api("POST", "/api/v1/sessions", Some(body)).await;
    assert_eq!(s, 201, "{v}");
}

/// The `Upgrade` header the app saw for a request asking to switch to
/// `h2c`, sent to `host` and `path` (the origin answers [`Reply::Json`]).
async fn upgrade_seen(sg: &Endpoints, host: &str, path: &str) -> Option<String> {
    let (s, body) = testkit::http(
        sg.gateway,
        host,
        path,
        "Connection: upgrade\r\nUpgrade: h2c\r\n",
    )
    .await;
    assert_eq!(s, 200, "{host}{path}: {body}");
    let j: Value = serde_json::from_str(&body).unwrap();
    j["headers"]["upgrade"].as_str().map(str::to_string)
}

#[tokio::test]
async fn h2_cookie_fields_reach_an_app_behind_the_https_listener_as_one_header() {
    let app = Origin::builder("app").reply(Reply::PathAndCookie).start();
    let (sg, dir, https) = crate::tls::server("hostile-h2-cookies", "").await;
    session(&sg, "nb", app.addr.port(), json!({})).await;
    let tls = crate::tls::connect(https, &dir.join("ca.crt"), "nb.sessions.test", &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // What a browser sends JupyterLab for a POST: each cookie a field.
    let req = hyper::Request::post("https://nb.sessions.test/api/contents")
        .header("cookie", "_xsrf=2|abc")
        .header("cookie", "username-nb=\"2|1:0\"")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "path=/api/contents\ncookie=_xsrf=2|abc; username-nb=\"2|1:0\"\n"
    );
}

#[tokio::test]
async fn forwarding_headers_are_kept_only_from_the_configured_trusted_proxies() {
    let app = Origin::start("app");
    let claims = "X-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\n\
                  X-Forwarded-User: admin\r\nX-Forwarded-Prefix: /admin\r\n";
    let cases = [
        // The default trusts no one: the client's claims are gone.
        ("", "127.0.0.1", None),
        (
            "[gateway]\ntrusted_proxies = [\"127.0.0.0/8\", \"::1\"]\n",
            "203.0.113.7, 127.0.0.1",
            Some("admin"),
        ),
    ];
    for (config, xff, user) in cases {
        let sg = InProcess::start(&temp_dir("hostile-forwarding"), config).await;
        session(&sg, "nb", app.addr.port(), json!({})).await;
        let (s, body) = testkit::http(sg.gateway, "nb.localhost", "/", claims).await;
        assert_eq!(s, 200, "{body}");
        let h = &serde_json::from_str::<Value>(&body).unwrap()["headers"];
        assert_eq!(h["x-forwarded-for"], xff, "{config:?}: {h}");
        assert_eq!(h["x-forwarded-user"].as_str(), user, "{config:?}: {h}");
        assert_eq!(
            h["x-real-ip"].as_str(),
            user.map(|_| "203.0.113.7"),
            "{config:?}: {h}"
        );
    }
}

#[tokio::test]
async fn a_session_passes_other_upgrades_only_with_allow_any_upgrade() {
    let app = Origin::start("app");
    let sg = InProcess::start(&temp_dir("hostile-upgrade"), "").await;
    session(&sg, "plain", app.addr.port(), json!({})).await;
    let mut any = public_session("any", app.addr.port());
    any["allow_any_upgrade"] = json!(true);
    let (s, v) = sg.api("POST", "/api/v1/sessions", Some(any)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["allow_any_upgrade"], true, "{v}");
    assert_eq!(
        upgrade_seen(&sg, "any.localhost", "/x").await.as_deref(),
        Some("h2c")
    );
    assert_eq!(upgrade_seen(&sg, "plain.localhost", "/x").await, None);
    let (_, v) = sg.api("GET", "/api/v1/sessions/plain", None).await;
    assert_eq!(v["allow_any_upgrade"], false, "{v}");

    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/sessions/any",
            Some(json!({"allow_any_upgrade": false})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(upgrade_seen(&sg, "any.localhost", "/x").await, None);
    let (_, v) = sg.api("GET", "/api/v1/sessions/any", None).await;
    assert_eq!(v["allow_any_upgrade"], false, "{v}");

    // A link session is a redirect: nothing to upgrade, and nothing stored.
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(json!({"name": "docs", "owner": "ann", "kind": "link",
                        "url": "https://docs.example/", "allow_any_upgrade": true})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("allow_any_upgrade: "), "{v}");
    let (s, _) = sg.api("GET", "/api/v1/sessions/docs", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_static_route_passes_other_upgrades_only_with_allow_any_upgrade() {
    let app = Origin::start("app");
    let config = format!(
        "[[routes]]\nslug = \"/any\"\nupstream = \"{0}\"\nallow_any_upgrade = true\n\
         [[routes]]\nslug = \"/plain\"\nupstream = \"{0}\"\n",
        app.url()
    );
    let sg = InProcess::start(&temp_dir("hostile-static-upgrade"), &config).await;
    assert_eq!(
        upgrade_seen(&sg, "localhost", "/any/x").await.as_deref(),
        Some("h2c")
    );
    assert_eq!(upgrade_seen(&sg, "localhost", "/plain/x").await, None);
}

#[tokio::test]
async fn ctl_creates_a_session_that_allows_any_upgrade() {
    let sg = InProcess::start(&temp_dir("hostile-ctl-upgrade"), "").await;
    sg.api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    crate::ctl::ctl(
        &sg,
        &[
            "sessions",
            "create",
            "vnc",
            "--owner",
            "ann",
            "--port",
            "5901",
            "--allow-any-upgrade",
        ],
    )
    .await
    .ok();
    let (_, v) = sg.api("GET", "/api/v1/sessions/vnc", None).await;
    assert_eq!(v["allow_any_upgrade"], true, "{v}");
    let shown = crate::ctl::ctl(&sg, &["sessions", "get", "vnc"]).await;
    assert!(shown.ok().contains("any protocol"), "{shown:#?}");
}

#[tokio::test]
async fn an_apps_forbidden_cookies_are_dropped_and_logged_once_per_route() {
    let app = Origin::start("app");
    let sg = Sessiongate::start(&temp_dir("hostile-cookie-log"), "", &[]).await;
    session(&sg, "nb", app.addr.port(), json!({})).await;
    for _ in 0..3 {
        let r = exchange(
            sg.gateway,
            b"GET /set-cookie HTTP/1.1\r\nHost: nb.localhost\r\nConnection: close\r\n\
              X-Set-Cookie: sessiongate=planted; Path=/\r\n\
              X-Set-Cookie: pref=1; Domain=localhost; Path=/\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.all("set-cookie"), ["pref=1; Path=/"]);
    }
    // The access-log line of a later request: every line before it is in.
    testkit::http(sg.gateway, "nb.localhost", "/after-the-cookies", "").await;
    wait_log(&sg.log, "/after-the-cookies").await;
    let warned: Vec<String> = sg
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("the app set cookies it may not"))
        .cloned()
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("session:nb"), "{}", warned[0]);
}

#[tokio::test]
async fn a_502_names_the_upstream_in_the_log_and_not_on_the_page() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sg = Sessiongate::start(&temp_dir("hostile-502"), "", &[]).await;
    session(&sg, "gone", dead.port(), json!({})).await;
    for accept in ["text/html", "application/json"] {
        let (s, body) = testkit::http(
            sg.gateway,
            "gone.localhost",
            "/",
            &format!("Accept: {accept}\r\nX-Request-Id: rid-502\r\n"),
        )
        .await;
        assert_eq!(s, 502, "{body}");
        assert!(body.contains("rid-502"), "{accept}: {body}");
        assert!(
            body.contains("could not be reached: connection refused"),
            "{accept}: {body}"
        );
        for leak in ["127.0.0.1", &dead.port().to_string()] {
            assert!(!body.contains(leak), "{accept}: {leak} in {body}");
        }
    }
    let line = wait_log(
        &sg.log,
        &format!(
            "error=upstream http://127.0.0.1:{}: connection refused",
            dead.port()
        ),
    )
    .await;
    assert!(line.contains("rid-502"), "{line}");
}
