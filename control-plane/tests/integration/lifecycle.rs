//! `sessiongate serve` end to end: a public session created over HTTP is
//! reached through the gateway, then paused (503), resumed (200) and deleted
//! (404) — each visible at the gateway as soon as the API has answered. And
//! the crash test, on the binary as a child process: `kill -9` during a
//! stream of creates, after which every acknowledged create is there on
//! restart and serves again, on SQLite and on PostgreSQL (`--database`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::Sessiongate;
use control_plane::store::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use testkit::server::{public_session, InProcess};
use testkit::{api_request, temp_dir, Origin, WsEcho};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn public_session_is_reached_paused_resumed_and_deleted_through_the_gateway() {
    let backend = Origin::named("jupyter");
    let dir = temp_dir("e2e");
    let sg = InProcess::start(&dir, "").await;

    assert_eq!(sg.open("lab").await.0, 404);
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(public_session("lab", backend.addr.port())),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // No polling below: each change is in the gateway's table before the
    // API answers, so the very next request sees it.
    assert_eq!(sg.open("lab").await, (200, "jupyter".to_string()));

    let (s, v) = sg.api("POST", "/api/v1/sessions/lab/pause", None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("paused")), "{v}");
    let (status, body) = sg.open("lab").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("paused"), "{body}");

    let (s, _) = sg.api("POST", "/api/v1/sessions/lab/resume", None).await;
    assert_eq!(s, 200);
    assert_eq!(sg.open("lab").await, (200, "jupyter".to_string()));

    let (s, v) = sg.api("DELETE", "/api/v1/sessions/lab", None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("deleted")), "{v}");
    assert_eq!(sg.open("lab").await.0, 404);

    // A session that is not public needs a browser signed in by an access
    // link (the `access` module); without a cookie it is 401.
    sg.api(
        "POST",
        "/api/v1/sessions",
        Some(json!({"name": "private", "owner": "ann", "remote_host": "127.0.0.1", "remote_port": backend.addr.port()})),
    )
    .await;
    assert_eq!(sg.open("private").await.0, 401);
    let _ = sg.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn every_acknowledged_create_survives_kill_9_and_serves_after_restart(engine: Engine) {
    let backend = Origin::named("backend");
    let backend_port = backend.addr.port();
    let dir = temp_dir("crash");
    let database = match engine {
        Engine::Sqlite => None,
        Engine::Postgres => Some(testkit::postgres::database("crash").await),
    };
    let args: Vec<&str> = match &database {
        Some(url) => vec!["--database", url],
        None => Vec::new(),
    };
    let mut sg = Sessiongate::start_with_args(&dir, "", &[], &args).await;
    let (s, _) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201);

    // Four writers create sessions as fast as the server acknowledges them;
    // the process is killed while they are still going.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acked, stop, api, token) = (acked.clone(), stop.clone(), sg.api, sg.token.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let name = format!("w{w}-s{i}");
                let body = public_session(&name, backend_port);
                match api_request(api, Some(&token), "POST", "/api/v1/sessions", Some(&body)).await
                {
                    Ok((201, _)) => acked.lock().unwrap().push(name),
                    // Killed mid-request: not acknowledged, so no promise made.
                    Ok((0, _)) | Err(_) => return,
                    Ok((status, text)) => panic!("create {name}: {status} {text}"),
                }
            }
        }));
    }
    let end = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 40 {
        assert!(Instant::now() < end, "creates too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sg.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40);

    sg.restart().await;
    let restored = sg
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("route table loaded"))
        .cloned()
        .unwrap();
    for name in &acked {
        let (s, v) = sg
            .api("GET", &format!("/api/v1/sessions/{name}"), None)
            .await;
        assert_eq!(
            (s, v["state"].as_str()),
            (200, Some("running")),
            "{name}: {v}"
        );
        // Routed from the store before the gateway accepted a connection.
        assert_eq!(
            sg.open(name).await,
            (200, "backend".to_string()),
            "{name} (log: {restored})"
        );
    }
    if database.is_some() {
        // The store is the server's, not a file in the data dir; its log
        // names it without the password.
        assert!(!dir.join("data/sessiongate.db").exists());
        assert!(
            restored.contains("db=postgres://postgres:***@127.0.0.1:"),
            "{restored}"
        );
        let log = sg.log.lock().unwrap().join("\n");
        assert!(!log.contains(testkit::postgres::PASSWORD), "{log}");
    }
    drop(sg);
    let _ = std::fs::remove_dir_all(&dir);
}

crate::common::on_both_engines! {
    #[tokio::test]
    every_acknowledged_create_survives_kill_9_and_serves_after_restart;
}

#[tokio::test]
async fn evict_and_pause_close_open_websockets_and_the_owner_can_reopen() {
    let peer = WsEcho::start();
    let dir = temp_dir("ws");
    let sg = InProcess::start(&dir, "").await;
    sg.api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(public_session("ide", peer.addr.port())),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    for action in ["evict", "pause"] {
        let stream = TcpStream::connect(sg.gateway).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async("ws://ide.localhost/", stream)
            .await
            .expect("handshake through the gateway");
        ws.send(Message::text("ping")).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), "ping");

        let (s, v) = sg
            .api("POST", &format!("/api/v1/sessions/ide/{action}"), None)
            .await;
        assert_eq!(s, 200, "{action}: {v}");
        // The gateway ends the tunnel: the stream closes, well before the
        // deadline that guards against a hang.
        let closed =
            tokio::time::timeout(Duration::from_secs(10), testkit::ws::ended(&mut ws)).await;
        assert!(closed.is_ok(), "{action} left the WebSocket open");

        let reopen = if action == "evict" {
            "activate"
        } else {
            "resume"
        };
        let (s, v) = sg
            .api("POST", &format!("/api/v1/sessions/ide/{reopen}"), None)
            .await;
        assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{v}");
    }
    let _ = sg.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
