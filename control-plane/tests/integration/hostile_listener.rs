//! Issue 15, finding 8: the control-plane listener has the gateway's kind
//! of limits. Half-sent request heads are closed by the header-read
//! timeout, connections past the cap wait unserved, and an over-limit body
//! is answered 413 with the API's JSON error and changes nothing. Each
//! runs `sessiongate serve` in process with small limits.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::server::InProcess;
use testkit::{exchange, temp_dir, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or resets it); the bytes
/// it sent first, and how long that took. Panics after [`DEADLINE`].
async fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection is still open after {DEADLINE:?}; it sent {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn half_sent_request_heads_are_closed_by_the_header_timeout() {
    let dir = temp_dir("hostile-listener-timeout");
    let sg = InProcess::start(&dir, "[control_plane]\nheader_read_timeout_secs = 1\n").await;

    // Half a head, a head without its last line, and nothing at all.
    let partial: &[&[u8]] = &[
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Len",
        b"",
    ];
    let mut conns = Vec::new();
    for p in partial.iter().cycle().take(30) {
        let mut s = TcpStream::connect(sg.api).await.unwrap();
        s.write_all(p).await.unwrap();
        conns.push(s);
    }
    for s in &mut conns {
        let (sent, took) = until_closed(s).await;
        // hyper closes a timed-out head without an answer, or with a 408.
        let text = String::from_utf8_lossy(&sent);
        assert!(
            sent.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
        assert!(took < Duration::from_secs(10), "closed only after {took:?}");
    }

    // The listener still serves whole requests.
    let (s, _) = sg.api("GET", "/api/v1/users", None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn connections_past_the_cap_are_not_served_until_one_closes() {
    let dir = temp_dir("hostile-listener-cap");
    let sg = InProcess::start(
        &dir,
        "[control_plane]\nmax_connections = 2\nheader_read_timeout_secs = 60\n",
    )
    .await;
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    // Two keep-alive connections, each answered once and then held open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(sg.api).await.unwrap();
        s.write_all(healthz).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("an answer within the cap")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        held.push(s);
    }

    // A third connects (the kernel accepts it) but is not served...
    let mut third = TcpStream::connect(sg.api).await.unwrap();
    third.write_all(healthz).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(1500), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served past max_connections = 2: {:?}",
        early.map(|r| r.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()))
    );

    // ...until one of the two closes.
    drop(held.pop());
    let n = tokio::time::timeout(DEADLINE, third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
}

#[tokio::test]
async fn an_over_limit_body_gets_413_with_the_json_error_and_changes_nothing() {
    let dir = temp_dir("hostile-listener-body");
    let sg = InProcess::start(&dir, "[control_plane]\nmax_body_bytes = 1024\n").await;
    let big =
        json!({"name": "ann", "email": format!("{}@example.org", "a".repeat(2000))}).to_string();
    let post = |path: &str, content_type: &str, framing: String, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {content_type}\r\n{framing}\r\n{body}",
            sg.token
        )
    };

    let declared = post(
        "/api/v1/users",
        "application/json",
        format!("Content-Length: {}\r\n", big.len()),
        &big,
    );
    let chunked = post(
        "/api/v1/users",
        "application/json",
        "Transfer-Encoding: chunked\r\n".into(),
        &format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()),
    );
    let form = format!(
        "grant_type=password&username=robot&password={}",
        "p".repeat(2000)
    );
    let token_form = post(
        "/oauth2/token/",
        "application/x-www-form-urlencoded",
        format!("Content-Length: {}\r\n", form.len()),
        &form,
    );
    for (what, req) in [
        ("Content-Length", declared),
        ("chunked", chunked),
        ("/oauth2/token/", token_form),
    ] {
        let resp = exchange(sg.api, req.as_bytes()).await.unwrap();
        assert_eq!(resp.status, 413, "{what}: {}", resp.text());
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large", "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("control_plane.max_body_bytes"),
            "{what}: {message}"
        );
    }
    let (s, v) = sg.api("GET", "/api/v1/users/ann", None).await;
    assert_eq!(s, 404, "an over-limit create made a user: {v}");

    // Under the limit, the same request is served.
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
}
