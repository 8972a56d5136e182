//! Issue 15, finding 12: a client that keeps failing to authenticate is
//! answered 429 with `Retry-After`, whatever it guesses: the robot's
//! password at `/oauth2/token/`, an API token, an access link's token at
//! the gateway. The limit is per client address (the tests connect from
//! 127.0.0.1 and from 127.0.0.2), and only failures count. Against
//! `sessiongate serve` in process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use testkit::server::InProcess;
use testkit::{exchange_from, temp_dir, Origin, RawResponse};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SOMEONE_ELSE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

const WORKSHOP: &str = "[workshop]\nclient_id = \"portal-client\"\n\
    client_secret = \"portal-secret\"\nrobot_username = \"robot@portal\"\n\
    robot_password = \"robot-pass\"\n";

fn password_form(password: &str) -> String {
    format!(
        "grant_type=password&client_id=portal-client&client_secret=portal-secret\
         &username=robot%40portal&password={password}"
    )
}

/// `POST /oauth2/token/` with `password`, on a connection of its own from
/// `from` to `to`, for `host`.
async fn token_from(from: IpAddr, to: SocketAddr, host: &str, password: &str) -> RawResponse {
    let form = password_form(password);
    let req = format!(
        "POST /oauth2/token/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    exchange_from(from, to, req.as_bytes()).await.unwrap()
}

/// A 429 with a `Retry-After` within the window.
fn limited(what: &str, r: &RawResponse, window: u64) {
    assert_eq!(r.status, 429, "{what}: {}", r.text());
    let after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no Retry-After: {:?}", r.headers));
    assert!((1..=window).contains(&after), "{what}: Retry-After {after}");
}

/// Twenty requests `guess(i)` from the attacker's address to `to`: their
/// statuses, each 429 checked for its `Retry-After`.
async fn twenty_guesses(to: SocketAddr, guess: impl Fn(usize) -> String) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = exchange_from(ATTACKER, to, guess(i).as_bytes())
            .await
            .unwrap();
        if r.status == 429 {
            limited(&format!("guess {i}"), &r, 60);
        }
        statuses.push(r.status);
    }
    statuses
}

/// One keep-alive HTTP/1.1 connection from `from` to `to`.
async fn keep_alive(
    from: IpAddr,
    to: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(to).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn three_thousand_wrong_passwords_meet_the_limit_and_the_right_one_from_elsewhere_works() {
    let config = format!(
        "{WORKSHOP}[control_plane]\nmax_auth_failures = 10\nauth_failure_window_secs = 600\n"
    );
    let sg = InProcess::start(&temp_dir("hostile-brute-oauth"), &config).await;

    let mut send = keep_alive(ATTACKER, sg.api).await;
    let (mut evaluated, mut refused) = (0u32, 0u32);
    let started = Instant::now();
    for i in 0..3000 {
        let req = http::Request::post("/oauth2/token/")
            .header("host", "api")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(password_form(&format!("guess-{i}")))))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").cloned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        match status {
            400 => evaluated += 1,
            429 => {
                refused += 1;
                assert!(retry_after.is_some(), "429 without Retry-After");
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["error"], "too_many_failures", "{v}");
            }
            other => panic!("guess {i}: {other} {}", String::from_utf8_lossy(&body)),
        }
    }
    let took = started.elapsed().as_secs_f64();
    let rate = f64::from(evaluated) / took;
    eprintln!(
        "3000 wrong passwords in {took:.2} s: {evaluated} evaluated ({rate:.1} guesses/s over the run, \
         at most 10 per 600 s from one address), {refused} answered 429"
    );
    assert!(
        evaluated <= 10,
        "{evaluated} of 3000 wrong passwords were evaluated ({rate:.0} guesses/s); the limit is 10"
    );
    assert_eq!(evaluated + refused, 3000);

    // The attacker's address gets no answer about the right password...
    let r = token_from(ATTACKER, sg.api, "api", "robot-pass").await;
    limited("the right password from the attacker's address", &r, 600);
    // ...through the gateway's portal host either: the same limit.
    let r = token_from(ATTACKER, sg.gateway, "localhost", "robot-pass").await;
    limited("through the gateway", &r, 600);

    // Another address is not affected.
    let r = token_from(SOMEONE_ELSE, sg.api, "api", "robot-pass").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["access_token"].is_string(), "{v}");
}

#[tokio::test]
async fn wrong_api_tokens_meet_the_limit_per_address() {
    let sg = InProcess::start(
        &temp_dir("hostile-brute-api"),
        &format!("{WORKSHOP}[control_plane]\nmax_auth_failures = 5\n"),
    )
    .await;
    let get = |token: &str, path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        )
    };
    let statuses =
        twenty_guesses(sg.api, |i| get(&format!("guess-{i:020}"), "/api/v1/users")).await;
    assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429; 15], "{statuses:?}");

    // Not even the admin token is looked at from there, nor a workshop token.
    let admin = get(&sg.token, "/api/v1/users");
    let r = exchange_from(ATTACKER, sg.api, admin.as_bytes())
        .await
        .unwrap();
    limited("the admin token from the attacker's address", &r, 60);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "too_many_failures", "{v}");
    let workshop = get(&sg.token, "/workshops/catalog/environments/");
    let r = exchange_from(ATTACKER, sg.api, workshop.as_bytes())
        .await
        .unwrap();
    limited("a workshop endpoint", &r, 60);

    // Elsewhere, the admin token works.
    let r = exchange_from(SOMEONE_ELSE, sg.api, admin.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn guessed_access_links_meet_the_limit_per_address() {
    let origin = Origin::named("nb");
    let sg = InProcess::start(
        &temp_dir("hostile-brute-links"),
        "[control_plane]\nmax_auth_failures = 5\n",
    )
    .await;
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(
                json!({"name": "nb", "owner": "ann", "remote_host": "127.0.0.1",
                        "remote_port": origin.addr.port()}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let open = |query: &str| {
        format!(
            "GET /__sessiongate/activate?{query} HTTP/1.1\r\nHost: nb.localhost\r\n\
             Connection: close\r\n\r\n"
        )
    };

    let statuses = twenty_guesses(sg.gateway, |i| open(&format!("token={i:064x}"))).await;
    assert_eq!(statuses[..5], [403; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429; 15], "{statuses:?}");

    // A real link is not spent from the attacker's address...
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions/nb/access",
            Some(json!({"user": "ann"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let query = url.split_once('?').unwrap().1;
    let r = exchange_from(ATTACKER, sg.gateway, open(query).as_bytes())
        .await
        .unwrap();
    limited("a real link from the attacker's address", &r, 60);
    // ...and opens from another one.
    let r = exchange_from(SOMEONE_ELSE, sg.gateway, open(query).as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.starts_with("sessiongate=")),
        "{:?}",
        r.headers
    );
}
