//! Browser access end to end: `sessiongate serve` in process (as a child
//! where the log is read), real origins (an HTTP echo, a WebSocket echo, an
//! endless stream), and a browser-like
//! client with an RFC 6265 cookie jar (`common::jar`). Access links come
//! from the API, are opened in the browser, and the cookie they set is what
//! gets the browser through the gateway.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::jar::Browser;
use crate::common::Sessiongate;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use testkit::server::InProcess;
use testkit::{temp_dir, Endpoints, Origin, Reply, WsEcho, DEADLINE};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// An origin that answers with what it was sent: the path and query, and the
/// `Cookie` header (or `-`), one per line. `/stream` instead answers a body
/// that sends a chunk and then never ends.
pub(crate) fn echo_origin() -> Origin {
    Origin::builder("app").reply(Reply::PathAndCookie).start()
}

/// Starts a server in process with [`add_people`].
pub(crate) async fn server(name: &str, extra_config: &str) -> InProcess {
    let sg = InProcess::start(&temp_dir(name), extra_config).await;
    add_people(&sg).await;
    sg
}

/// Users ann, bob and eve, and group `team` = [bob].
pub(crate) async fn add_people(sg: &Endpoints) {
    for u in ["ann", "bob", "eve"] {
        let (s, v) = sg
            .api("POST", "/api/v1/users", Some(json!({ "name": u })))
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "team", "members": ["bob"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

pub(crate) async fn create(sg: &Endpoints, body: Value) {
    let (s, v) = sg.api("POST", "/api/v1/sessions", Some(body)).await;
    assert_eq!(s, 201, "{v}");
}

/// A private session of ann's, shared with `team`, for the origin at `port`.
pub(crate) async fn create_shared(sg: &Endpoints, name: &str, port: u16) {
    create(
        sg,
        json!({"name": name, "owner": "ann", "groups": ["team"],
               "remote_host": "127.0.0.1", "remote_port": port}),
    )
    .await;
}

/// An access link for `user` on `session`: the URL, or the API's error.
pub(crate) async fn link(
    sg: &Endpoints,
    session: &str,
    user: &str,
) -> Result<String, (u16, Value)> {
    let (s, v) = sg
        .api(
            "POST",
            &format!("/api/v1/sessions/{session}/access"),
            Some(json!({ "user": user })),
        )
        .await;
    if s == 200 {
        Ok(v["url"].as_str().unwrap().to_string())
    } else {
        Err((s, v))
    }
}

/// Opens a fresh link for `user` in `browser` and checks that it signed in.
pub(crate) async fn sign_in(sg: &Endpoints, browser: &Browser, session: &str, user: &str) {
    let url = link(sg, session, user).await.unwrap();
    let page = browser.get(&url).await;
    assert_eq!(page.status, 302, "{url}: {}", page.body);
    assert_eq!(page.set_cookies().len(), 1, "{:?}", page.headers);
}

async fn state(sg: &Endpoints, session: &str) -> String {
    let (_, v) = sg
        .api("GET", &format!("/api/v1/sessions/{session}"), None)
        .await;
    v["state"].as_str().unwrap_or("?").to_string()
}

/// Waits until the WebSocket is closed by the other side; the time it took.
pub(crate) async fn closed_within(
    ws: &mut WebSocketStream<TcpStream>,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(limit, testkit::ws::ended(ws))
        .await
        .ok()
        .map(|_| started.elapsed())
}

pub(crate) async fn echoes(ws: &mut WebSocketStream<TcpStream>, text: &str) -> bool {
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(DEADLINE, ws.next()).await,
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text
    )
}

#[tokio::test]
async fn the_owner_opens_a_link_gets_a_host_only_cookie_and_reaches_the_app() {
    let origin = echo_origin();
    let sg = server("access-owner", "").await;
    let port = sg.gateway.port();
    create(
        &sg,
        json!({"name": "nb", "owner": "ann", "pending": true,
               "remote_host": "127.0.0.1", "remote_port": origin.addr.port()}),
    )
    .await;
    let browser = Browser::new(sg.gateway);
    let home = format!("http://nb.localhost:{port}/tree?x=1");

    // No cookie: 401, and the origin never sees the request.
    let page = browser.get(&home).await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(page.body.contains("access link"), "{}", page.body);

    // The link: one-time, on the session's own host, valid 60 s.
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions/nb/access",
            Some(json!({"user": "ann", "path": "/tree?x=1"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    let prefix = format!("http://nb.localhost:{port}/__sessiongate/activate?token=");
    assert!(url.starts_with(&prefix), "{url}");
    assert!(url.len() > prefix.len() + 40, "a long random token: {url}");
    assert!(v["expires"].as_str().unwrap().ends_with('Z'), "{v}");
    assert_eq!(state(&sg, "nb").await, "pending");

    // Opening it: a redirect to the entry path with the cookie.
    let page = browser.get(&url).await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(page.header("location"), Some("/tree?x=1"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    let set = page.set_cookies();
    assert_eq!(set.len(), 1, "{set:?}");
    let c = &set[0];
    assert!(c.starts_with("sessiongate=1."), "{c}");
    for attr in ["Path=/;", "HttpOnly", "SameSite=Lax", "Max-Age="] {
        assert!(c.contains(attr), "{attr} missing: {c}");
    }
    assert!(!c.to_ascii_lowercase().contains("domain"), "host-only: {c}");
    assert!(!c.contains("Secure"), "plain HTTP: {c}");
    // A pending session becomes running on its first activation.
    assert_eq!(state(&sg, "nb").await, "running");

    // The jar scoped it to this host only.
    let cookies = browser.cookies();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0].2, "nb.localhost");
    assert!(browser
        .cookie_header(&format!("http://other.localhost:{port}/"))
        .is_none());

    // Proxied, with the gateway's cookie removed and the app's own kept.
    browser.plant(&home, "theme=dark; Path=/");
    let page = browser.get(&home).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("path=/tree?x=1\n"), "{}", page.body);
    assert!(page.body.contains("cookie=theme=dark\n"), "{}", page.body);
    assert!(!page.body.contains("sessiongate"), "{}", page.body);

    // Replay: refused with a page that says why, and no cookie.
    let other = Browser::new(sg.gateway);
    let page = other.get(&url).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("already used"), "{}", page.body);
    assert!(page.set_cookies().is_empty());
    assert_eq!(other.get(&home).await.status, 401);

    // A made-up or missing token: the same.
    for bad in ["?token=nope", "?token=", ""] {
        let page = other
            .get(&format!(
                "http://nb.localhost:{port}/__sessiongate/activate{bad}"
            ))
            .await;
        assert_eq!(page.status, 403, "{bad}: {}", page.body);
        assert!(page.set_cookies().is_empty());
    }
}

#[tokio::test]
async fn sharing_decides_who_gets_in_and_cookies_stay_on_their_session() {
    let origin = echo_origin();
    let sg = server("access-share", "").await;
    let port = sg.gateway.port();
    for name in ["nb", "other"] {
        create(
            &sg,
            json!({"name": name, "owner": "ann",
                   "remote_host": "127.0.0.1", "remote_port": origin.addr.port()}),
        )
        .await;
    }
    let nb = format!("http://nb.localhost:{port}/");

    // Not shared yet: bob is refused a link, as is eve; unknown users are 422.
    let (s, v) = link(&sg, "nb", "bob").await.unwrap_err();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    assert_eq!(link(&sg, "nb", "eve").await.unwrap_err().0, 403);
    assert_eq!(link(&sg, "nb", "nobody").await.unwrap_err().0, 422);
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions/nb/access",
            Some(json!({"user": "ann", "path": "//evil.example/"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(link(&sg, "missing", "ann").await.unwrap_err().0, 404);

    // Shared with team: bob, a member, gets in.
    let (s, v) = sg
        .api(
            "PUT",
            "/api/v1/sessions/nb/groups",
            Some(json!({"groups": ["team"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let bob = Browser::new(sg.gateway);
    sign_in(&sg, &bob, "nb", "bob").await;
    assert_eq!(bob.get(&nb).await.status, 200);
    // eve, not a member, still gets no link.
    assert_eq!(link(&sg, "nb", "eve").await.unwrap_err().0, 403);

    // A link opened on another session's host is spent and refused.
    let url = link(&sg, "nb", "ann").await.unwrap();
    let stolen = url.replace("//nb.localhost", "//other.localhost");
    let eve = Browser::new(sg.gateway);
    let page = eve.get(&stolen).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("another session"), "{}", page.body);
    assert_eq!(eve.get(&url).await.status, 403, "the token was spent");

    // bob's cookie for nb, copied onto other's host: refused there.
    let value = bob
        .cookies()
        .into_iter()
        .find(|c| c.0 == "sessiongate")
        .unwrap()
        .1;
    let other = format!("http://other.localhost:{port}/");
    eve.plant(&other, &format!("sessiongate={value}; Path=/"));
    assert_eq!(eve.get(&other).await.status, 401);
    // ann's own cookie for nb does not open other either.
    let ann = Browser::new(sg.gateway);
    sign_in(&sg, &ann, "nb", "ann").await;
    let ann_value = ann.cookies()[0].1.clone();
    ann.plant(&other, &format!("sessiongate={ann_value}; Path=/"));
    assert_eq!(ann.get(&other).await.status, 401);
    assert_eq!(ann.get(&nb).await.status, 200);

    // Tampering: another user, another expiry, a changed MAC.
    for tampered in [
        value.replace(".bob.", ".ann."),
        {
            let mut parts: Vec<&str> = value.split('.').collect();
            let later = (parts[2].parse::<u64>().unwrap() + 86_400).to_string();
            parts[2] = &later;
            parts.join(".")
        },
        {
            let last = if value.ends_with('A') { "B" } else { "A" };
            format!("{}{last}", &value[..value.len() - 1])
        },
    ] {
        assert_ne!(tampered, value);
        bob.set_value(&nb, "sessiongate", &tampered);
        assert_eq!(bob.get(&nb).await.status, 401, "{tampered}");
    }
}

#[tokio::test]
async fn expired_links_and_cookies_of_a_retired_key_are_refused() {
    let origin = echo_origin();
    let sg = server(
        "access-keys",
        "[access]\nlink_ttl_secs = 1\nkey_grace_secs = 2\n",
    )
    .await;
    let port = sg.gateway.port();
    create(
        &sg,
        json!({"name": "nb", "owner": "ann",
               "remote_host": "127.0.0.1", "remote_port": origin.addr.port()}),
    )
    .await;
    let nb = format!("http://nb.localhost:{port}/");

    // A link not opened within its 1 s is refused, with no cookie.
    let url = link(&sg, "nb", "ann").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = Browser::new(sg.gateway);
    let page = late.get(&url).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("expired"), "{}", page.body);
    assert!(page.set_cookies().is_empty());

    // A cookie signed before a rotation works through the grace period...
    let before = Browser::new(sg.gateway);
    sign_in(&sg, &before, "nb", "ann").await;
    assert_eq!(before.get(&nb).await.status, 200);
    let (s, v) = sg.api("POST", "/api/v1/access/keys/rotate", None).await;
    assert_eq!(s, 200, "{v}");
    let old_kid = before.cookies()[0].1.split('.').nth(1).unwrap().to_string();
    assert_eq!(v["previous"].as_str(), Some(old_kid.as_str()), "{v}");
    assert_ne!(v["current"].as_str(), Some(old_kid.as_str()));
    assert_eq!(before.get(&nb).await.status, 200, "within the grace period");
    let after = Browser::new(sg.gateway);
    sign_in(&sg, &after, "nb", "ann").await;
    let new_kid = after.cookies()[0].1.split('.').nth(1).unwrap().to_string();
    assert_eq!(v["current"].as_str(), Some(new_kid.as_str()));

    // ...and not after it (keys are checked to the second, so the grace
    // period may run up to a second longer than configured).
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(before.get(&nb).await.status, 401, "after the grace period");
    assert_eq!(after.get(&nb).await.status, 200);

    // A second rotation puts the second key in its grace period; the first
    // stays refused.
    let (s, _) = sg.api("POST", "/api/v1/access/keys/rotate", None).await;
    assert_eq!(s, 200);
    assert_eq!(after.get(&nb).await.status, 200, "one rotation back: grace");
    assert_eq!(before.get(&nb).await.status, 401);
}

#[tokio::test]
async fn removing_a_member_closes_their_websocket_and_stream_but_not_the_owners() {
    let peer = WsEcho::start();
    let origin = echo_origin();
    let sg = server("access-revoke", "").await;
    let port = sg.gateway.port();
    create_shared(&sg, "ide", peer.addr.port()).await;
    create_shared(&sg, "feed", origin.addr.port()).await;
    let (ann, bob) = (Browser::new(sg.gateway), Browser::new(sg.gateway));
    for (b, user) in [(&ann, "ann"), (&bob, "bob")] {
        sign_in(&sg, b, "ide", user).await;
        sign_in(&sg, b, "feed", user).await;
    }
    let ws_url = format!("ws://ide.localhost:{port}/socket");
    // Without a cookie the handshake is refused.
    assert_eq!(
        Browser::new(sg.gateway).websocket(&ws_url).await.err(),
        Some(401)
    );
    let mut ann_ws = ann.websocket(&ws_url).await.expect("ann's handshake");
    let mut bob_ws = bob.websocket(&ws_url).await.expect("bob's handshake");
    assert!(echoes(&mut ann_ws, "hello from ann").await);
    assert!(echoes(&mut bob_ws, "hello from bob").await);

    // An endless response for each, read up to its first chunk.
    let feed = format!("feed.localhost:{port}");
    let mut ann_stream = stream(sg.gateway, &feed, "/stream", &ann).await;
    let mut bob_stream = stream(sg.gateway, &feed, "/stream", &bob).await;

    let (s, v) = sg
        .api("DELETE", "/api/v1/groups/team/members/bob", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let took = closed_within(&mut bob_ws, Duration::from_secs(1)).await;
    assert!(
        took.is_some(),
        "bob's WebSocket is still open 1 s after the removal"
    );
    let ended = tokio::time::timeout(Duration::from_secs(1), bob_stream.ended()).await;
    assert!(
        ended.is_ok(),
        "bob's stream is still open 1 s after the removal"
    );

    // The owner's connections are untouched.
    assert!(echoes(&mut ann_ws, "still here").await);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ann_stream.ended())
            .await
            .is_err(),
        "ann's stream was closed too"
    );
    // bob's next request: a valid cookie, no longer allowed.
    let page = bob.get(&format!("http://ide.localhost:{port}/")).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("bob"), "{}", page.body);
    assert_eq!(bob.websocket(&ws_url).await.err(), Some(403));

    // Unsharing works the same way for a member who was let back in.
    sg.api(
        "POST",
        "/api/v1/groups/team/members",
        Some(json!({"user": "bob"})),
    )
    .await;
    let mut bob_ws = bob.websocket(&ws_url).await.expect("bob is back in");
    let (s, _) = sg
        .api(
            "PUT",
            "/api/v1/sessions/ide/groups",
            Some(json!({"groups": []})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(closed_within(&mut bob_ws, Duration::from_secs(1))
        .await
        .is_some());
    assert!(echoes(&mut ann_ws, "owner stays").await);
}

#[tokio::test]
async fn evict_closes_every_websocket_and_only_an_evicted_session_can_be_reopened() {
    let peer = WsEcho::start();
    let sg = server("access-evict", "").await;
    let port = sg.gateway.port();
    create_shared(&sg, "ide", peer.addr.port()).await;
    let (ann, bob) = (Browser::new(sg.gateway), Browser::new(sg.gateway));
    sign_in(&sg, &ann, "ide", "ann").await;
    sign_in(&sg, &bob, "ide", "bob").await;
    let ws_url = format!("ws://ide.localhost:{port}/");
    let home = format!("http://ide.localhost:{port}/");
    let mut a = ann.websocket(&ws_url).await.unwrap();
    let mut b = bob.websocket(&ws_url).await.unwrap();
    assert!(echoes(&mut a, "1").await && echoes(&mut b, "2").await);

    let (s, _) = sg.api("POST", "/api/v1/sessions/ide/evict", None).await;
    assert_eq!(s, 200);
    for ws in [&mut a, &mut b] {
        assert!(closed_within(ws, Duration::from_secs(1)).await.is_some());
    }
    // Evicted: a cookie alone does not reopen it.
    let page = ann.get(&home).await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(page.body.contains("not active"), "{}", page.body);

    // A new link re-activates it.
    sign_in(&sg, &ann, "ide", "ann").await;
    assert_eq!(state(&sg, "ide").await, "running");
    let mut a = ann.websocket(&ws_url).await.expect("reopened after evict");
    assert!(echoes(&mut a, "3").await);

    // Expired: everything closes, and no link can bring it back.
    let (s, _) = sg.api("POST", "/api/v1/sessions/ide/expire", None).await;
    assert_eq!(s, 200);
    assert!(closed_within(&mut a, Duration::from_secs(1))
        .await
        .is_some());
    let (s, v) = link(&sg, "ide", "ann").await.unwrap_err();
    assert_eq!(
        (s, v["error"]["code"].as_str(), v["error"]["state"].as_str()),
        (409, Some("session_finished"), Some("expired")),
        "{v}"
    );
    assert_eq!(ann.get(&home).await.status, 404);
    assert_eq!(ann.websocket(&ws_url).await.err(), Some(404));
}

#[tokio::test]
async fn slug_sessions_get_path_scoped_cookies_and_strangers_go_to_the_login_url() {
    let origin = echo_origin();
    let sg = server(
        "access-slug",
        "[access]\nlogin_url = \"https://portal.example.com/login?from=gw\"\n\
         redirect_origins = [\"https://portal.example.com\"]\n",
    )
    .await;
    let port = sg.gateway.port();
    create(
        &sg,
        json!({"name": "lab", "owner": "ann", "slug": "/lab/ann", "strip_prefix": true,
               "remote_host": "127.0.0.1", "remote_port": origin.addr.port()}),
    )
    .await;
    // The portal host is `localhost` in the default configuration.
    let url = link(&sg, "lab", "ann").await.unwrap();
    assert!(
        url.starts_with(&format!(
            "http://localhost:{port}/lab/ann/__sessiongate/activate?token="
        )),
        "{url}"
    );
    let ann = Browser::new(sg.gateway);
    let page = ann.get(&url).await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(page.header("location"), Some("/lab/ann/"));
    let set = page.set_cookies();
    assert!(set[0].contains("Path=/lab/ann/;"), "{set:?}");
    let page = ann
        .get(&format!("http://localhost:{port}/lab/ann/tree"))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("path=/tree\ncookie=-\n"),
        "{}",
        page.body
    );
    assert!(ann
        .cookie_header(&format!("http://localhost:{port}/lab/bob/"))
        .is_none());

    // No cookie: to the login URL, which is on the allow-list.
    let stranger = Browser::new(sg.gateway);
    let page = stranger
        .get(&format!("http://localhost:{port}/lab/ann/tree"))
        .await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(
        page.header("location"),
        Some("https://portal.example.com/login?from=gw&notification=session-invalid")
    );
}

#[tokio::test]
async fn a_login_url_off_the_allow_list_is_ignored() {
    let origin = echo_origin();
    // A child process: the warning is read from its log.
    let sg = Sessiongate::start(
        &temp_dir("access-allow"),
        "[access]\nlogin_url = \"https://evil.example/login\"\n\
         redirect_origins = [\"https://portal.example.com\"]\n",
        &[],
    )
    .await;
    add_people(&sg).await;
    create(
        &sg,
        json!({"name": "nb", "owner": "ann",
               "remote_host": "127.0.0.1", "remote_port": origin.addr.port()}),
    )
    .await;
    let page = Browser::new(sg.gateway)
        .get(&format!("http://nb.localhost:{}/", sg.gateway.port()))
        .await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(page.header("location").is_none());
    let log = sg.log.lock().unwrap().join("\n");
    assert!(log.contains("not on access.redirect_origins"), "{log}");
}

/// A slow response read through the gateway, after its first chunk.
pub(crate) struct Stream {
    conn: TcpStream,
}

impl Stream {
    /// Resolves when the gateway ends the response (connection closed).
    pub(crate) async fn ended(&mut self) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        loop {
            match self.conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

pub(crate) async fn stream(
    gateway: SocketAddr,
    host: &str,
    path: &str,
    browser: &Browser,
) -> Stream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cookie = browser
        .cookie_header(&format!("http://{host}{path}"))
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let mut conn = TcpStream::connect(gateway).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        while !String::from_utf8_lossy(&got).contains("first") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the stream's first chunk");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    Stream { conn }
}
