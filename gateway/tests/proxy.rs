//! End-to-end behaviour of the data plane: the real server on port 0 in front
//! of real hyper origins and a real WebSocket peer.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use gateway::{RouteSpec, RouteTarget, ServerConfig, UpstreamConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use testkit::routes::{route, settings};
use testkit::{eventually, fnv, pattern, Origin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn host_routing_accepts_case_port_and_trailing_dot() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let custom = route("custom", &[], &[], &b.url()).host("App.Customer.IO");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &a.url()), custom]).await;
    let c = client();
    for host in [
        "nb.localhost",
        "NB.LocalHost",
        "nb.localhost:8080",
        "nb.localhost.",
        "nb.localhost.:1",
        "nb.sessions.test",
        "NB.SESSIONS.TEST.",
    ] {
        let r = get(&c, &gw, host, "/x?y=1").await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
        let j = r.json();
        assert_eq!(j["origin"], "a", "{host}");
        assert_eq!(j["path"], "/x?y=1", "{host}");
        assert_eq!(j["headers"]["host"], host, "original Host is kept: {host}");
    }
    for host in ["app.customer.io", "APP.customer.io.:443"] {
        assert_eq!(
            get(&c, &gw, host, "/").await.json()["origin"],
            "b",
            "{host}"
        );
    }
    for host in [
        "other.localhost",
        "x.nb.localhost",
        "localhost",
        "customer.io",
    ] {
        assert_eq!(
            get(&c, &gw, host, "/").await.status,
            StatusCode::NOT_FOUND,
            "{host}"
        );
    }
}

#[tokio::test]
async fn slug_routes_prefer_longest_prefix_and_strip_when_asked() {
    let a = Origin::start("lab");
    let b = Origin::start("team");
    let team = route("team", &[], &["/lab/team"], &b.url()).strip_prefix(true);
    let gw = Gateway::start(vec![route("lab", &[], &["/lab"], &a.url()), team]).await;
    let c = client();
    let cases = [
        ("/lab", "lab", "/lab"),
        ("/lab/tree?x=1", "lab", "/lab/tree?x=1"),
        ("/lab/teams", "lab", "/lab/teams"),
        ("/lab/team", "team", "/"),
        ("/lab/team/", "team", "/"),
        ("/lab/team/api/k?q=2", "team", "/api/k?q=2"),
        ("/lab/team?q=3", "team", "/?q=3"),
    ];
    for (path, origin, seen) in cases {
        let j = get(&c, &gw, "Portal.Test:8080", path).await.json();
        assert_eq!(j["origin"], origin, "{path}");
        assert_eq!(j["path"], seen, "{path}");
    }
    assert_eq!(
        get(&c, &gw, "portal.test", "/laboratory").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&c, &gw, "portal.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let a = Origin::start("a");
    let rw = route("rw", &["rw"], &[], &a.url()).rewrite_host(true);
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &a.url()), rw]).await;
    let c = client();
    let r = send(
        &c,
        &gw,
        "GET",
        "nb.localhost:8080",
        "/",
        &[
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-connection", "keep-alive"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-request-id", "req-42"),
            ("cookie", "a=1"),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-request-id"], "req-42");
    let h = &r.json()["headers"];
    for gone in [
        "x-private",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_ne!(h["connection"], "keep-alive, x-private");
    assert_eq!(h["cookie"], "a=1");
    // The client is no proxy the gateway trusts: its X-Forwarded-For is
    // replaced, not appended to (issue 15, finding 11).
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "nb.localhost:8080");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;host=\"nb.localhost:8080\";proto=http"
    );
    assert_eq!(h["x-request-id"], "req-42");
    assert_eq!(h["host"], "nb.localhost:8080");

    // A generated request id is the same upstream and in the answer.
    let r = get(&c, &gw, "nb.localhost", "/").await;
    let rid = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32);
    assert_eq!(r.json()["headers"]["x-request-id"], rid.as_str());

    // rewrite_host sends the upstream's own authority.
    let r = get(&c, &gw, "rw.localhost", "/").await;
    assert_eq!(r.json()["headers"]["host"], a.addr.to_string());

    // Hop-by-hop headers in the response are stripped too.
    let r = get(&c, &gw, "nb.localhost", "/hop").await;
    assert_eq!(r.body, "hop");
    assert!(r.headers.get("keep-alive").is_none());
    assert!(r.headers.get("proxy-authenticate").is_none());
    assert_eq!(r.headers["x-kept"], "yes");
}

#[tokio::test]
async fn errors_have_the_right_status_and_shape() {
    let slow = Origin::start("slow");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let paused = route("paused", &["paused"], &[], &slow.url()).paused(true);
    // Not public and paused: the access refusal comes first.
    let private = route("private", &["private"], &[], &slow.url())
        .private(None)
        .paused(true);
    let gw = Gateway::start_with(
        vec![
            route("slow", &["slow"], &[], &slow.url()),
            route("dead", &["dead"], &[], &dead),
            paused,
            private,
        ],
        ServerConfig::default(),
        UpstreamConfig {
            response_timeout: Duration::from_millis(300),
            ..UpstreamConfig::default()
        },
    )
    .await;
    let c = client();
    let json = [("accept", "application/json")];
    let cases: &[(&str, &str, StatusCode, &str, &str)] = &[
        (
            "nope.localhost",
            "/",
            StatusCode::NOT_FOUND,
            "no_route",
            "nope.localhost",
        ),
        (
            "dead.localhost",
            "/",
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            "connection refused",
        ),
        (
            "slow.localhost",
            "/slow?ms=3000",
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "no response",
        ),
        (
            "paused.localhost",
            "/",
            StatusCode::SERVICE_UNAVAILABLE,
            "session_paused",
            "paused",
        ),
        (
            "private.localhost",
            "/",
            StatusCode::UNAUTHORIZED,
            "sign_in_required",
            "private",
        ),
        (
            "bad host!",
            "/",
            StatusCode::BAD_REQUEST,
            "invalid_host",
            "bad host!",
        ),
    ];
    for (host, path, status, code, msg) in cases {
        let r = send(&c, &gw, "GET", host, path, &json, vec![]).await;
        assert_eq!(r.status, *status, "{host}");
        let j = r.json();
        assert_eq!(j["error"]["code"], *code, "{host}: {j}");
        assert!(
            j["error"]["message"].as_str().unwrap().contains(msg),
            "{host}: {j}"
        );
        let rid = r.headers["x-request-id"].to_str().unwrap();
        assert_eq!(j["error"]["request_id"], rid);
        // The same error for a browser is a short HTML page.
        let r = send(
            &c,
            &gw,
            "GET",
            host,
            path,
            &[("accept", "text/html,*/*")],
            vec![],
        )
        .await;
        assert_eq!(r.status, *status);
        assert!(r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let page = String::from_utf8_lossy(&r.body);
        assert!(
            page.contains(&status.as_u16().to_string())
                && page.contains(r.headers["x-request-id"].to_str().unwrap()),
            "{page}"
        );
    }
}

/// Sends raw bytes and returns what came back until the server closed or `limit` passed.
async fn raw(gw: &Gateway, request: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_missing_host_and_oversized_heads_are_refused() {
    let a = Origin::start("a");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &a.url())]).await;
    let r = raw(&gw, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.0 400"), "{r}");
    assert!(r.contains("missing Host"), "{r}");
    let r = raw(
        &gw,
        b"GET / HTTP/1.1\r\nHost: nb.localhost\r\nConnection: close\r\nX-Big: "
            .iter()
            .chain(vec![b'a'; 70_000].iter())
            .chain(b"\r\n\r\n".iter())
            .copied()
            .collect::<Vec<u8>>()
            .as_slice(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(200)]);
    let r = raw(&gw, b"NOT A REQUEST\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(
        &gw,
        b"GET / HTTP/1.1\r\nHost: nb.localhost\r\nContent-Length: x\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // The server is still healthy afterwards.
    let r = raw(
        &gw,
        b"GET / HTTP/1.1\r\nHost: nb.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test]
async fn one_mib_bodies_stream_up_and_down_intact() {
    let a = Origin::start("a");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &a.url())]).await;
    let c = client();
    let data = pattern(1 << 20);
    let r = send(
        &c,
        &gw,
        "POST",
        "nb.localhost",
        "/upload",
        &[],
        data.clone(),
    )
    .await;
    let j = r.json();
    assert_eq!(j["body_len"], 1 << 20);
    assert_eq!(j["body_fnv"], fnv(&data));
    let r = send(
        &c,
        &gw,
        "POST",
        "nb.localhost",
        "/echo-body",
        &[],
        data.clone(),
    )
    .await;
    assert_eq!(r.body.len(), data.len());
    assert!(r.body == data, "echoed body differs");
    let r = get(&c, &gw, "nb.localhost", "/big?n=1048576").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == pattern(1 << 20), "downloaded body differs");
}

#[tokio::test]
async fn responses_stream_before_the_upstream_finishes() {
    let a = Origin::start("a");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &a.url())]).await;
    let c = client();
    let req = Request::get(gw.url("/stream"))
        .header("host", "nb.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let mut body: Incoming = resp.into_body();
    // The first chunk arrives while the origin still holds the rest back.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk never came");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first");
    a.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "last");
}

#[tokio::test]
async fn websocket_echo_through_host_and_slug_routes() {
    let a = Origin::start("a");
    let lab = route("lab", &[], &["/lab"], &a.url()).strip_prefix(true);
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &a.url()), lab]).await;
    for (host, path, id) in [
        ("nb.localhost", "/ws", "nb"),
        ("portal.test", "/lab/ws", "lab"),
    ] {
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{host}{path}"), stream)
            .await
            .expect("handshake");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        for i in 0..10 {
            ws.send(Message::text(format!("hello {i}"))).await.unwrap();
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(m.into_text().unwrap().as_str(), format!("hello {i}"));
        }
        let big = pattern(200_000);
        ws.send(Message::binary(big.clone())).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert!(m.into_data() == big);
        // The route tracks the live connection and can close it.
        let table = gw.routes.current();
        let state = &table.route(id).unwrap().state;
        assert_eq!(state.upgraded_count(), 1);
        assert!(state.last_activity_ms().is_some());
        assert_eq!(state.close_live(), 1);
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("tunnel was not closed");
        assert!(
            matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
            "{end:?}"
        );
        let st = state.clone();
        eventually("upgraded set to empty", Duration::from_secs(5), || {
            st.upgraded_count() == 0
        })
        .await;
    }
}

/// A raw origin that answers every request with a `101` to `protocol`,
/// whatever the request asked for, then holds the connection until the
/// gateway closes it. Returns its URL and the count of connections closed.
async fn switching_origin(protocol: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let closed = Arc::new(AtomicUsize::new(0));
    let counter = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let switch = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
                );
                if stream.write_all(switch.as_bytes()).await.is_ok() {
                    // A tunnel would keep this open; only a close ends it.
                    let _ = stream.read_to_end(&mut head).await;
                }
                counter.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, closed)
}

#[tokio::test]
async fn a_switch_to_a_protocol_the_client_did_not_ask_for_is_refused() {
    let (origin, closed) = switching_origin("h2c").await;
    let gw = Gateway::start(vec![route("odd", &["odd"], &[], &origin)]).await;
    let c = client();
    let r = send(
        &c,
        &gw,
        "GET",
        "odd.localhost",
        "/ws",
        &[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("accept", "application/json"),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let j = r.json();
    assert_eq!(j["error"]["code"], "upstream_error", "{j}");
    assert!(
        j["error"]["message"].as_str().unwrap().contains("h2c"),
        "{j}"
    );
    // No tunnel: nothing is registered with the route, and the upstream's
    // switched connection is closed rather than kept for one.
    let table = gw.routes.current();
    assert_eq!(table.route("odd").unwrap().state.upgraded_count(), 0);
    eventually(
        "the origin's connection to close",
        Duration::from_secs(5),
        || closed.load(Ordering::SeqCst) == 1,
    )
    .await;
}

#[tokio::test]
async fn h2c_prior_knowledge_routes_by_authority() {
    let a = Origin::start("a");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &a.url())]).await;
    let mut sender = h2c(&gw).await;
    let authority = format!("nb.localhost:{}", gw.addr.port());
    let req = Request::get(format!("http://{authority}/h2?x=1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2c request failed");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["origin"], "a");
    assert_eq!(j["path"], "/h2?x=1");
    // The HTTP/1.1 upstream gets the authority as its Host.
    assert_eq!(j["headers"]["host"], authority);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_swaps_under_64_concurrent_clients_drop_nothing() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let gw = Gateway::start(vec![route("nb", &["nb"], &[], &a.url())]).await;
    let c = client();
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let seen_b = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..64 {
        let (c, failures, done, seen_b) =
            (c.clone(), failures.clone(), done.clone(), seen_b.clone());
        let url = gw.url("/");
        clients.push(tokio::spawn(async move {
            for _ in 0..40 {
                let req = Request::get(&url)
                    .header("host", "nb.localhost")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match c.request(req).await {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let body = resp
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let origin = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .map(|j| j["origin"].clone());
                        if origin.is_none() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        } else if origin == Some(serde_json::json!("b")) {
                            seen_b.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Swap the table continuously while they run, alternating upstreams and
    // adding and removing an unrelated route.
    let mut swaps = 0u32;
    while done.load(Ordering::Relaxed) < 64 * 40 {
        let up = if swaps.is_multiple_of(2) {
            b.url()
        } else {
            a.url()
        };
        let mut specs = vec![route("nb", &["nb"], &[], &up)];
        if swaps.is_multiple_of(3) {
            specs.push(route(
                &format!("extra{swaps}"),
                &[&format!("extra{swaps}")],
                &[],
                &a.url(),
            ));
        }
        gw.routes.publish(&settings(), specs).unwrap();
        swaps += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for t in clients {
        t.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during {swaps} swaps"
    );
    assert!(swaps >= 10, "only {swaps} swaps happened");
    assert!(
        seen_b.load(Ordering::Relaxed) > 0,
        "no request saw a swapped-in upstream"
    );
    assert!(a.requests.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let a = Origin::start("a");
    let mut gw = Gateway::start(vec![route("nb", &["nb"], &[], &a.url())]).await;
    let c = client();
    let url = gw.url("/slow?ms=700");
    let in_flight = tokio::spawn(async move {
        let req = Request::get(url)
            .header("host", "nb.localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.expect("in-flight request failed");
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("in-flight body cut")
            .to_bytes();
        (status, body)
    });
    let reqs = a.requests.clone();
    eventually(
        "the request to reach the origin",
        Duration::from_secs(5),
        || reqs.load(Ordering::SeqCst) == 1,
    )
    .await;
    gw.shutdown();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("/slow"));
    let task = gw.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let a = Origin::start("a");
    let gw = Gateway::start_with(
        vec![route("nb", &["nb"], &[], &a.url())],
        ServerConfig {
            idle_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        },
        UpstreamConfig::default(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: nb.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Now say nothing: the server must close the connection.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection was not closed");
}

#[tokio::test]
async fn connection_limit_queues_the_next_client() {
    let a = Origin::start("a");
    let gw = Gateway::start_with(
        vec![route("nb", &["nb"], &[], &a.url())],
        ServerConfig {
            max_connections: 1,
            ..ServerConfig::default()
        },
        UpstreamConfig::default(),
    )
    .await;
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: nb.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(first.read(&mut buf).await.unwrap() > 0);
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: nb.localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Not served while the first connection holds the only slot.
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "second connection was served past the limit"
    );
    drop(first);
    let out = read_to_close(&mut second, Duration::from_secs(5), "the second connection").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn activity_is_recorded_and_survives_table_swaps() {
    let a = Origin::start("a");
    let gw = Gateway::start(vec![
        route("nb", &["nb"], &[], &a.url()),
        route("idle", &["idle"], &[], &a.url()),
    ])
    .await;
    assert!(gw
        .routes
        .current()
        .route("nb")
        .unwrap()
        .state
        .last_activity_ms()
        .is_none());
    let c = client();
    get(&c, &gw, "nb.localhost", "/").await;
    let t1 = gw.routes.current();
    let seen = t1
        .route("nb")
        .unwrap()
        .state
        .last_activity_ms()
        .expect("activity not recorded");
    assert!(t1.route("idle").unwrap().state.last_activity_ms().is_none());
    gw.routes
        .publish(
            &settings(),
            vec![route("nb", &["nb", "nb2"], &[], &a.url())],
        )
        .unwrap();
    assert_eq!(
        gw.routes
            .current()
            .route("nb")
            .unwrap()
            .state
            .last_activity_ms(),
        Some(seen)
    );
}

#[tokio::test]
async fn link_route_redirects_to_its_external_url() {
    let origin = Origin::start("unused");
    let link = RouteSpec::new(
        "docs",
        RouteTarget::Redirect("https://docs.example.com/guide?x=1".into()),
    )
    .label("docs")
    .slug("/docs");
    let gw = Gateway::start(vec![link]).await;
    let c = client();
    for (host, path) in [("docs.localhost", "/anything"), ("portal.test", "/docs/")] {
        let r = send(&c, &gw, "GET", host, path, &[], vec![]).await;
        assert_eq!(r.status, StatusCode::FOUND, "{host}{path}");
        assert_eq!(
            r.headers["location"], "https://docs.example.com/guide?x=1",
            "{host}{path}"
        );
    }
    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        0,
        "a link route never reaches an upstream"
    );
}
