//! PostgreSQL restarted under load (issue 18), in a test binary of its own:
//! it restarts this process's test cluster, which no other test may share
//! meanwhile. `sessiongate serve` on PostgreSQL, 32 clients through its
//! gateway and a writer through its API: no proxied request fails, writes
//! answer 503 `database_unavailable` while the server is down and succeed
//! after, and every acknowledged write is there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::server::{public_session, InProcess, TOKEN};
use testkit::{api_request, exchange, temp_dir, Origin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_loses_no_request_and_no_acknowledged_write() {
    const CLIENTS: usize = 32;
    let origin = Origin::named("app");
    let url = testkit::postgres::database("restart").await;
    let sg = InProcess::start(
        &temp_dir("pg-restart"),
        &format!("[control_plane]\ndatabase = \"{url}\"\n"),
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
            Some(public_session("app", origin.addr.port())),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, failures, served, addr) =
            (stop.clone(), failures.clone(), served.clone(), sg.gateway);
        clients.push(tokio::spawn(async move {
            let request = b"GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n";
            while !stop.load(Ordering::SeqCst) {
                match exchange(addr, request).await {
                    Ok(r) if r.status == 200 && r.body == b"app" => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", r.status, r.text())),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    // The writer: what was acknowledged, what was refused and why.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, acknowledged, refused, api) =
            (stop.clone(), acknowledged.clone(), refused.clone(), sg.api);
        let port = origin.addr.port();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("w-{n}");
                n += 1;
                let body = public_session(&name, port);
                match api_request(api, Some(TOKEN), "POST", "/api/v1/sessions", Some(&body)).await {
                    Ok((201, _)) => acknowledged.lock().unwrap().push(name),
                    Ok((status, v)) => {
                        refused.lock().unwrap().push(format!("{status} {v}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => refused.lock().unwrap().push(format!("no answer: {e}")),
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    // Down for longer than a write waits for a connection (3 s), so that
    // writes are refused meanwhile rather than only delayed.
    let before = acknowledged.lock().unwrap().len();
    tokio::task::spawn_blocking(|| testkit::postgres::restart(Duration::from_secs(5)))
        .await
        .unwrap();
    let restarted = Instant::now();
    // Writes succeed again.
    let during = acknowledged.lock().unwrap().len();
    let end = restarted + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() <= during {
        assert!(Instant::now() < end, "no write succeeded after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = restarted.elapsed();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    writer.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "PostgreSQL restarted under load: {} proxied requests, {} failed; {} writes acknowledged ({before} before the restart), {} refused; writes back {back:?} after the server",
        served.load(Ordering::Relaxed),
        failures.len(),
        acknowledged.len(),
        refused.len()
    );
    assert!(
        failures.is_empty(),
        "{} proxied requests failed, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        !refused.is_empty(),
        "no write was refused while the server was down"
    );
    for r in &refused {
        assert!(
            r.starts_with("503 ")
                && r.contains("database_unavailable")
                && r.contains("nothing was changed"),
            "a write refused otherwise than with a clear 503: {r}"
        );
    }
    for name in &acknowledged {
        let (s, v) = sg
            .api("GET", &format!("/api/v1/sessions/{name}"), None)
            .await;
        assert_eq!(s, 200, "acknowledged {name} is missing: {v}");
    }
    assert_eq!(sg.open("app").await, (200, "app".to_string()));
}
