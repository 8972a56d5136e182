//! `sessiongate serve` as a process, end to end: a public session created
//! over HTTP is reached through the gateway, then paused (503), resumed (200)
//! and deleted (404) — each visible at the gateway as soon as the API has
//! answered. And the crash test: `kill -9` during a stream of creates, after
//! which every acknowledged create is there on restart and serves again.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "lifecycle-admin-token-0123456789";

/// A real origin that answers every request with its name.
async fn origin(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// One HTTP/1.1 request on a fresh connection: status and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `sessiongate serve` on a data dir that outlives it.
struct Sessiongate {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    gateway: SocketAddr,
    api: SocketAddr,
}

impl Drop for Sessiongate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sessiongate {
    async fn start(dir: &Path) -> Sessiongate {
        let config = dir.join("sessiongate.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nhttp_listen = \"127.0.0.1:0\"\n\
                 [control_plane]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n",
                dir.join("data")
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env("SESSIONGATE_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let gateway = wait_addr(&log, "gateway listening on http://").await;
        let api = wait_addr(&log, "control plane listening on http://").await;
        Sessiongate {
            child,
            log,
            gateway,
            api,
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = request(self.api, method, "api", path, body.as_ref())
            .await
            .unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The gateway's answer for a session host: status and body.
    async fn open(&self, session: &str) -> (u16, String) {
        request(
            self.gateway,
            "GET",
            &format!("{session}.localhost"),
            "/",
            None,
        )
        .await
        .unwrap()
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

async fn wait_addr(log: &Arc<Mutex<Vec<String>>>, marker: &str) -> SocketAddr {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let found = log.lock().unwrap().iter().find_map(|l| {
            let rest = &l[l.find(marker)? + marker.len()..];
            rest.split_whitespace().next()?.parse().ok()
        });
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < end,
            "no {marker:?} in the log: {:#?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sg-lifecycle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn public_session_is_reached_paused_resumed_and_deleted_through_the_gateway() {
    let backend = origin("jupyter").await;
    let dir = temp_dir("e2e");
    let sg = Sessiongate::start(&dir).await;

    assert_eq!(sg.open("lab").await.0, 404);
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(json!({
                "name": "lab", "owner": "ann", "public": true,
                "remote_host": "127.0.0.1", "remote_port": backend.port()
            })),
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

    // A session that is not public is refused until browser access exists.
    sg.api(
        "POST",
        "/api/v1/sessions",
        Some(json!({"name": "private", "owner": "ann", "remote_host": "127.0.0.1", "remote_port": backend.port()})),
    )
    .await;
    assert_eq!(sg.open("private").await.0, 403);
    drop(sg);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_acknowledged_create_survives_kill_9_and_serves_after_restart() {
    let backend = origin("backend").await;
    let dir = temp_dir("crash");
    let mut sg = Sessiongate::start(&dir).await;
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
        let (acked, stop, api) = (acked.clone(), stop.clone(), sg.api);
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let name = format!("w{w}-s{i}");
                let body = json!({
                    "name": name, "owner": "ann", "public": true,
                    "remote_host": "127.0.0.1", "remote_port": backend.port()
                });
                match request(api, "POST", "api", "/api/v1/sessions", Some(&body)).await {
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
    eprintln!("{} creates acknowledged before the kill", acked.len());

    let sg = Sessiongate::start(&dir).await;
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
    drop(sg);
    let _ = std::fs::remove_dir_all(&dir);
}
