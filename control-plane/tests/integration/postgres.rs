//! `sessiongate serve` on PostgreSQL (`control_plane.database`), in
//! process: users and sessions made through the API are still there, and
//! routed, after a restart; and a database that refuses the server stops
//! the start with an error that names it without its password. The store's
//! own tests run on both engines in `control_plane::store`; the API, the
//! reaper, group commit and the kill -9 test do too, in their modules.

use control_plane::config::Config;
use control_plane::serve::Server;
use serde_json::json;
use testkit::server::{config_text, public_session, InProcess};
use testkit::{temp_dir, Origin};

#[tokio::test]
async fn sessions_made_through_the_api_are_kept_and_routed_across_a_restart() {
    let backend = Origin::named("on-postgres");
    let url = testkit::postgres::database("serve-restart").await;
    let dir = temp_dir("pg-serve");
    let extra = format!("[control_plane]\ndatabase = \"{url}\"\n");
    let sg = InProcess::start(&dir, &extra).await;
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/users",
            Some(json!({"name": "ann", "email": "ann@example.org"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "labs", "members": ["ann"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    for name in ["lab-1", "lab-2"] {
        let mut body = public_session(name, backend.addr.port());
        body["groups"] = json!(["labs"]);
        let (s, v) = sg.api("POST", "/api/v1/sessions", Some(body)).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, _) = sg.api("POST", "/api/v1/sessions/lab-2/pause", None).await;
    assert_eq!(s, 200);
    assert_eq!(sg.open("lab-1").await, (200, "on-postgres".to_string()));
    sg.shutdown().await.unwrap();
    assert!(
        !dir.join("data/sessiongate.db").exists(),
        "nothing went to a SQLite file"
    );

    let sg = InProcess::start(&dir, &extra).await;
    let (s, v) = sg.api("GET", "/api/v1/sessions", None).await;
    assert_eq!(s, 200, "{v}");
    let got: Vec<(String, String, Vec<String>)> = v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
                serde_json::from_value(s["groups"].clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("lab-1".into(), "running".into(), vec!["labs".into()]),
            ("lab-2".into(), "paused".into(), vec!["labs".into()]),
        ]
    );
    // Routed from the store before the gateway served: the running one
    // answers, the paused one is 503.
    assert_eq!(sg.open("lab-1").await, (200, "on-postgres".to_string()));
    assert_eq!(sg.open("lab-2").await.0, 503);
    let (s, v) = sg.api("GET", "/api/v1/users/ann", None).await;
    assert_eq!(
        (s, v["email"].as_str()),
        (200, Some("ann@example.org")),
        "{v}"
    );
    sg.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_database_that_refuses_the_server_stops_the_start_without_showing_the_password() {
    // The test cluster, as a role it does not have: refused at once.
    let url = testkit::postgres::database("refused").await;
    let url = url.replacen("://postgres:", "://nobody_here:", 1);
    assert!(url.starts_with("postgres://nobody_here:"), "{url}");
    let dir = temp_dir("pg-refused");
    let text = config_text(&dir, &format!("[control_plane]\ndatabase = \"{url}\"\n"));
    let config = Config::from_toml(&text, None, std::iter::empty()).unwrap();
    let e = match Server::bind(config, None).await {
        Ok(_) => panic!("started on a database that refuses it"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("postgres://nobody_here:***@127.0.0.1:"), "{e}");
    assert!(e.contains("nobody_here"), "{e}");
    assert!(!e.contains(testkit::postgres::PASSWORD), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP forwarder on loopback between sessiongate and PostgreSQL that can
/// be cut (every connection closed, and the port closed: new connections
/// are refused, as with the server down) and restored on the same port:
/// PostgreSQL going away and coming back, as the server sees it.
struct Cuttable {
    addr: std::net::SocketAddr,
    to: std::net::SocketAddr,
    accept: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Cuttable {
    async fn start(to: std::net::SocketAddr) -> Cuttable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = std::sync::Arc::new(tokio::sync::watch::Sender::new(0u64));
        let c = Cuttable {
            addr,
            to,
            accept: std::sync::Mutex::new(None),
            generation,
        };
        c.serve(listener);
        c
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (to, generation) = (self.to, self.generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    fn cut(&self) {
        if let Some(t) = self.accept.lock().unwrap().take() {
            t.abort(); // drops the listener: the port refuses connections
        }
        self.generation.send_modify(|g| *g += 1);
    }

    async fn restore(&self) {
        // The listener is dropped once its task has ended.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => return self.serve(l),
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < end,
                        "rebinding {}: {e}",
                        self.addr
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// PostgreSQL away under load: the gateway keeps serving, writes answer
/// 503 with a message that says the database is unavailable and nothing
/// was changed, and once it is back writes succeed and every acknowledged
/// one is there.
#[tokio::test]
async fn with_postgresql_away_the_gateway_serves_and_writes_answer_503_until_it_is_back() {
    let backend = Origin::named("kept");
    let url = testkit::postgres::database("away").await;
    let parsed = url::Url::parse(&url).unwrap();
    let pg: std::net::SocketAddr =
        format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap())
            .parse()
            .unwrap();
    let proxy = Cuttable::start(pg).await;
    let mut via = parsed.clone();
    via.set_port(Some(proxy.addr.port())).unwrap();
    let dir = temp_dir("pg-away");
    let extra = format!("[control_plane]\ndatabase = \"{via}\"\n");
    let sg = InProcess::start(&dir, &extra).await;
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let name = format!("kept-{i}");
        let (s, v) = sg
            .api(
                "POST",
                "/api/v1/sessions",
                Some(public_session(&name, backend.addr.port())),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        acknowledged.push(name);
    }

    proxy.cut();
    // The gateway serves what it holds.
    for name in &acknowledged {
        assert_eq!(sg.open(name).await, (200, "kept".to_string()));
    }
    // A write is refused, saying why, and changes nothing.
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(public_session("lost", backend.addr.port())),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "database_unavailable", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("database is unavailable") && message.contains("nothing was changed"),
        "{message}"
    );
    assert!(!message.contains(testkit::postgres::PASSWORD), "{message}");
    assert_eq!(sg.open("kept-0").await, (200, "kept".to_string()));

    proxy.restore().await;
    // Writes succeed again (the pool reconnects), and nothing acknowledged
    // is missing; the refused one is not there.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (s, v) = sg
            .api(
                "POST",
                "/api/v1/sessions",
                Some(public_session("after", backend.addr.port())),
            )
            .await;
        if s == 201 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "writes still fail: {s} {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    acknowledged.push("after".to_string());
    for name in &acknowledged {
        let (s, v) = sg
            .api("GET", &format!("/api/v1/sessions/{name}"), None)
            .await;
        assert_eq!(s, 200, "{name}: {v}");
    }
    let (s, _) = sg.api("GET", "/api/v1/sessions/lost", None).await;
    assert_eq!(s, 404, "a refused write changed nothing");
}

/// A replica that could not read the change log for longer than it is kept
/// reloads everything from the store (`resync_all`): here a session paused
/// behind the log's back (no row logged, so nothing told the replica) is
/// paused at its gateway once the replica reloads.
#[tokio::test]
async fn a_replica_that_missed_the_log_reloads_everything_from_the_store() {
    use sqlx::Connection;
    let backend = Origin::named("reloaded");
    let url = testkit::postgres::database("resync").await;
    let dir = temp_dir("pg-resync");
    let text = config_text(&dir, &format!("[control_plane]\ndatabase = \"{url}\"\n"));
    let config = Config::from_toml(&text, None, std::iter::empty()).unwrap();
    testkit::server::write_token_hash(&config.control_plane.data_dir, testkit::server::TOKEN);
    let server = Server::bind(config, None).await.unwrap();
    let cp = server.control().clone();
    let (api, gateway) = (server.api_addr().unwrap(), server.gateway_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let token = Some(testkit::server::TOKEN);
    let (s, v) = testkit::api_request(
        api,
        token,
        "POST",
        "/api/v1/users",
        Some(&json!({"name": "ann"})),
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{v}");
    let body = public_session("lab", backend.addr.port());
    let (s, v) = testkit::api_request(api, token, "POST", "/api/v1/sessions", Some(&body))
        .await
        .unwrap();
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        testkit::http(gateway, "lab.localhost", "/", "").await.0,
        200
    );

    let mut db = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE sessions SET state = 'paused' WHERE name = 'lab'")
        .execute(&mut db)
        .await
        .unwrap();
    // Nothing was logged: the replica still routes it as running.
    assert_eq!(cp.apply_changes().await.unwrap(), 0);
    assert_eq!(
        testkit::http(gateway, "lab.localhost", "/", "").await.0,
        200
    );

    cp.resync_all().await.unwrap();
    assert_eq!(
        testkit::http(gateway, "lab.localhost", "/", "").await.0,
        503
    );

    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
