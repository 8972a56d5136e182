//! Hostile browsers, apps and clients (issue 15): each test is a hole a
//! review found, shown closed against the real server on port 0 in front of
//! testkit's real origins.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use gateway::access::{
    AccessConfig, AccessList, Activation, ActivationFuture, ActivationRequest, Activator,
    KeyHandle, ACTIVATE_PATH,
};
use gateway::headers::TrustedProxies;
use gateway::{RouteSpec, ServerConfig, UpstreamConfig};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use testkit::routes::route;
use testkit::{exchange, Origin, RawResponse, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Browser access with [`keys`], and access links handed to `activator`.
fn access(activator: Option<Arc<dyn Activator>>) -> AccessConfig {
    AccessConfig {
        keys: KeyHandle::new(keys()),
        activator,
        login_url: None,
        oidc: None,
    }
}

/// `spec` made private to its owner `ann`, for session `session`.
fn private(spec: RouteSpec, session: &str) -> RouteSpec {
    spec.private(Some(Arc::new(AccessList {
        session: session.into(),
        owner: "ann".into(),
        groups: vec![],
    })))
}

/// The control plane's part of an access link, as far as the gateway can
/// tell: it takes every token and writes down which session and token it
/// was asked about, so that a test sees where a link went.
#[derive(Default)]
struct LinkBook {
    opened: Mutex<Vec<(String, String)>>,
}

impl Activator for LinkBook {
    fn activate(&self, req: ActivationRequest) -> ActivationFuture {
        self.opened
            .lock()
            .unwrap()
            .push((req.session.to_string(), req.token));
        Box::pin(async {
            Ok(Activation {
                cookie: "signed".into(),
                max_age: 60,
                path: "/".into(),
                user: "ann".into(),
            })
        })
    }
}

/// Sends `head` (request line and header lines, each ending in `\r\n`,
/// without the blank line) with `Connection: close`, on a fresh connection.
async fn raw(gw: &Gateway, head: &[u8]) -> RawResponse {
    let mut req = head.to_vec();
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    exchange(gw.addr, &req).await.unwrap()
}

#[tokio::test]
async fn h2_cookie_fields_reach_an_http1_app_as_one_cookie_header() {
    let app = Origin::builder("app").reply(Reply::PathAndCookie).start();
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &app.url())]).await;
    let mut sender = h2c(&gw).await;
    // A browser sends each cookie as a field of its own (RFC 9113 §8.2.3),
    // the gateway's among them.
    let req = Request::post(format!("http://nb.localhost:{}/api", gw.addr.port()))
        .header("cookie", "_xsrf=2|abc")
        .header("cookie", "sessiongate=ours")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2c request failed");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "path=/api\ncookie=_xsrf=2|abc; b=2\n",
        "the app must see one Cookie header, joined with \"; \""
    );
}

#[tokio::test]
async fn a_non_ascii_sibling_cookie_does_not_lock_the_user_out() {
    let app = Origin::builder("app").reply(Reply::PathAndCookie).start();
    let nb = private(route("nb", &["nb"], &[], &app.url()), "nb");
    let gw = Gateway::start_proxy(vec![nb], |p| p.with_access(access(None))).await;
    // A sibling subdomain's cookie with UTF-8 in its value, in the same
    // header as the gateway's valid one.
    let head = format!(
        "GET /tree HTTP/1.1\r\nHost: nb.localhost\r\nCookie: sib=caf\u{e9}; sessiongate={}; other=1\r\n",
        signed("nb", "ann")
    );
    let r = raw(&gw, head.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "path=/tree\ncookie=sib=caf\u{e9}; other=1\n");
}

#[tokio::test]
async fn the_gateways_cookie_is_stripped_beside_a_non_ascii_cookie() {
    let app = Origin::builder("app").reply(Reply::PathAndCookie).start();
    let gw = Gateway::start(vec![route("pub", &["pub"], &[], &app.url())]).await;
    let r = raw(
        &gw,
        "GET / HTTP/1.1\r\nHost: pub.localhost\r\nCookie: sib=caf\u{e9}; sessiongate=secret; __Host-sessiongate=secret2\r\n"
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "path=/\ncookie=sib=caf\u{e9}\n");
}

/// The `Set-Cookie`s a client gets through the gateway from an app on
/// `nb.localhost` that sets `set`, one each.
async fn set_through(gw: &Gateway, set: &[&str]) -> Vec<String> {
    let mut head = "GET /set-cookie HTTP/1.1\r\nHost: nb.localhost\r\n".to_string();
    for c in set {
        head.push_str(&format!("X-Set-Cookie: {c}\r\n"));
    }
    let r = raw(gw, head.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.all("set-cookie")
        .into_iter()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn an_apps_set_cookie_named_like_the_gateways_is_dropped() {
    let app = Origin::start("app");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &app.url())]).await;
    // What the app sets, one `Set-Cookie` each; every name a browser would
    // store as one of the gateway's, whatever the case, the spaces around
    // it, or a nameless cookie whose value starts with it.
    let set = [
        "sessiongate=forged; Path=/",
        "__Host-sessiongate=forged; Path=/; Secure",
        "__Secure-sessiongate=forged; Path=/lab/; Secure",
        "__host-SessionGate=forged; Path=/; Secure",
        " sessiongate =forged",
        "=sessiongate=forged",
        "sessiongate",
        "sessiongate=; Max-Age=0",
        "app=1; Path=/; HttpOnly",
        "sessiongate_app=2",
    ];
    assert_eq!(
        set_through(&gw, &set).await,
        ["app=1; Path=/; HttpOnly", "sessiongate_app=2"]
    );
}

#[tokio::test]
async fn an_apps_set_cookie_for_a_parent_domain_is_made_host_only() {
    let app = Origin::start("app");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &app.url())]).await;
    let set = [
        "wide=1; Domain=localhost; Path=/",
        "dot=2; Path=/; domain=.LOCALHOST; HttpOnly",
        "own=3; Domain=nb.localhost",
        "twice=4; Domain=nb.localhost; Domain=localhost",
        "plain=5; Path=/",
    ];
    assert_eq!(
        set_through(&gw, &set).await,
        [
            "wide=1; Path=/",
            "dot=2; Path=/; HttpOnly",
            "own=3",
            "twice=4",
            "plain=5; Path=/",
        ]
    );
}

#[tokio::test]
async fn an_activation_path_is_never_shadowed_by_a_nested_slug() {
    let session = Origin::named("session");
    let shadow = Origin::named("shadow");
    let root = Origin::named("root");
    let book = Arc::new(LinkBook::default());
    let gw = Gateway::start_proxy(
        vec![
            private(route("a", &["a"], &["/a"], &session.url()), "a"),
            // Another owner's route, nested under the first one's slug.
            route("shadow", &[], &["/a/__sessiongate"], &shadow.url()),
            route("root", &[], &["/"], &root.url()),
        ],
        |p| p.with_access(access(Some(book.clone()))),
    )
    .await;
    let r = raw(
        &gw,
        format!("GET /a{ACTIVATE_PATH}?token=t1 HTTP/1.1\r\nHost: portal.test\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("/a/"));
    // On the session's own host the path is exactly the activation path.
    let r = raw(
        &gw,
        format!("GET {ACTIVATE_PATH}?token=t2 HTTP/1.1\r\nHost: a.localhost\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.text());
    // A link under a slug no route has exactly is no other route's.
    let r = raw(
        &gw,
        format!("GET /nope{ACTIVATE_PATH}?token=t3 HTTP/1.1\r\nHost: portal.test\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        *book.opened.lock().unwrap(),
        [
            ("a".to_string(), "t1".to_string()),
            ("a".into(), "t2".into())
        ]
    );
    for origin in [&session, &shadow, &root] {
        assert_eq!(
            origin.counts().requests,
            0,
            "an access link reached {}",
            origin.name
        );
    }
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let app = Origin::start("app");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &app.url())]).await;
    let r = raw(
        &gw,
        b"GET / HTTP/1.1\r\nHost: nb.localhost:8080\r\n\
          X-Forwarded-For: 203.0.113.7\r\nForwarded: for=203.0.113.7;proto=https\r\n\
          X-Real-IP: 203.0.113.7\r\nX-Forwarded-User: admin\r\nX-Forwarded-Prefix: /admin\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.example\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let h = &j["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(
        h["forwarded"], "for=127.0.0.1;host=\"nb.localhost:8080\";proto=http",
        "{h}"
    );
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], "nb.localhost:8080", "{h}");
    for gone in ["x-real-ip", "x-forwarded-user", "x-forwarded-prefix"] {
        assert!(h.get(gone).is_none(), "{gone} reached the app: {h}");
    }
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_appended_to() {
    let app = Origin::start("app");
    let trusted = TrustedProxies::parse(&["10.0.0.0/8", "127.0.0.0/8"]).unwrap();
    let gw = Gateway::start_proxy(vec![route("nb", &["nb"], &[], &app.url())], |p| {
        p.with_trusted_proxies(trusted)
    })
    .await;
    let r = raw(
        &gw,
        b"GET / HTTP/1.1\r\nHost: nb.localhost\r\n\
          X-Forwarded-For: 203.0.113.7\r\nForwarded: for=203.0.113.7\r\n\
          X-Real-IP: 203.0.113.7\r\nX-Forwarded-User: ann\r\nX-Forwarded-Prefix: /lab\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let h = &j["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "{h}");
    assert_eq!(
        h["forwarded"], "for=203.0.113.7, for=127.0.0.1;host=\"nb.localhost\";proto=http",
        "{h}"
    );
    assert_eq!(h["x-real-ip"], "203.0.113.7", "{h}");
    assert_eq!(h["x-forwarded-user"], "ann", "{h}");
    assert_eq!(h["x-forwarded-prefix"], "/lab", "{h}");
}

#[tokio::test]
async fn only_websocket_upgrades_pass_by_default() {
    let app = Origin::start("app");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &app.url())]).await;
    for (asked, passed) in [
        ("h2c", None),
        ("TLS/1.0", None),
        ("h2c, websocket", Some("websocket")),
    ] {
        let r = raw(
            &gw,
            format!(
                "GET /x HTTP/1.1\r\nHost: nb.localhost\r\nConnection: upgrade\r\nUpgrade: {asked}\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{asked}: {}", r.text());
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            j["headers"]["upgrade"].as_str(),
            passed,
            "{asked}: {}",
            j["headers"]
        );
    }
}

#[tokio::test]
async fn a_route_that_allows_any_upgrade_passes_every_protocol_on() {
    let app = Origin::start("app");
    let any = route("any", &["any"], &[], &app.url()).allow_any_upgrade(true);
    let gw = Gateway::start(vec![any]).await;
    for asked in ["h2c", "TLS/1.0, h2c", "websocket"] {
        let r = raw(
            &gw,
            format!(
                "GET /x HTTP/1.1\r\nHost: any.localhost\r\nConnection: upgrade\r\nUpgrade: {asked}\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{asked}: {}", r.text());
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(j["headers"]["upgrade"], asked, "{}", j["headers"]);
    }
}

#[tokio::test]
async fn a_request_with_two_host_headers_is_refused() {
    let app = Origin::start("app");
    let gw = Gateway::start(vec![
        route("nb", &["nb"], &[], &app.url()),
        route("other", &["other"], &[], &app.url()),
    ])
    .await;
    let r = raw(
        &gw,
        b"GET / HTTP/1.1\r\nHost: nb.localhost\r\nHost: other.localhost\r\nAccept: application/json\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(app.counts().requests, 0);
}

/// A raw origin that answers every request with a head hyper cannot parse.
async fn garbling_origin() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n")
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn error_pages_show_the_request_id_not_the_upstream() {
    let slow = Origin::start("slow");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let garbling = garbling_origin().await;
    let gw = Gateway::start_with(
        vec![
            route("dead", &["dead"], &[], &dead),
            route("slow", &["slow"], &[], &slow.url()),
            route("garbling", &["garbling"], &[], &garbling),
        ],
        ServerConfig::default(),
        UpstreamConfig {
            response_timeout: Duration::from_millis(300),
            ..UpstreamConfig::default()
        },
    )
    .await;
    let c = client();
    let cases = [
        (
            "dead.localhost",
            "/",
            StatusCode::BAD_GATEWAY,
            "the session's app could not be reached: connection refused",
            dead,
        ),
        (
            "slow.localhost",
            "/slow?ms=3000",
            StatusCode::GATEWAY_TIMEOUT,
            "the session's app sent no response in time",
            slow.url(),
        ),
        (
            "garbling.localhost",
            "/",
            StatusCode::BAD_GATEWAY,
            "the session's app sent a response that is not valid HTTP",
            garbling,
        ),
    ];
    for (host, path, status, message, upstream) in cases {
        let port = upstream.rsplit(':').next().unwrap().to_string();
        let r = send(
            &c,
            &gw,
            "GET",
            host,
            path,
            &[("accept", "application/json"), ("x-request-id", "rid-15")],
            vec![],
        )
        .await;
        assert_eq!(r.status, status, "{host}");
        let j = r.json();
        assert_eq!(j["error"]["message"], message, "{host}: {j}");
        assert_eq!(j["error"]["request_id"], "rid-15", "{host}: {j}");
        let page = send(
            &c,
            &gw,
            "GET",
            host,
            path,
            &[("x-request-id", "rid-15")],
            vec![],
        )
        .await;
        let page = String::from_utf8_lossy(&page.body);
        let escaped = message.replace('\'', "&#39;");
        assert!(page.contains(&escaped), "{host}: {page}");
        assert!(page.contains("request id rid-15"), "{host}: {page}");
        for leak in ["127.0.0.1", port.as_str()] {
            assert!(!j.to_string().contains(leak), "{host}: {leak} in {j}");
            assert!(!page.contains(leak), "{host}: {leak} in {page}");
        }
    }
}
