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
