//! OpenID Connect sign-in in a real Chromium (Debian's `chromium`,
//! headless): one test, run once, as CI's slow suites are. Chromium opens a
//! private session under `localhost` with no cookie, goes through the
//! provider (npm's oidc-provider on 127.0.0.1, `testkit::oidc`) and back,
//! and ends on the session's page: its own redirects, cookies and
//! SameSite rules, not the test jar's.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use testkit::oidc::{Provider, SECRET};
use testkit::origin::Reply;
use testkit::pebble::free_port;
use testkit::server::InProcess;
use testkit::{temp_dir, Origin};

fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("chromium"))
                .find(|p| p.is_file())
        })
        .expect("chromium not found: .ci/run installs it (Debian's chromium)")
}

#[tokio::test]
async fn chromium_signs_in_through_the_provider_and_lands_on_the_shared_session() {
    let app = Origin::builder("oidc-page")
        .reply(Reply::Page(
            "<!doctype html><html><head><title>lab</title></head><body><p>the lab page</p></body></html>",
        ))
        .start();
    let root = temp_dir("oidc-browser");
    let port = free_port();
    let config = format!(
        "[oidc]\nissuer = \"http://127.0.0.1:{port}\"\nclient_id = \"sessiongate\"\n\
         client_secret = \"{SECRET}\"\n"
    );
    let sg = InProcess::start(&root, &config).await;
    let gw = sg.gateway.port();
    let idp = Provider::start(
        &root,
        port,
        &format!("http://localhost:{gw}/_sessiongate/oidc/callback"),
    );
    idp.set("alice", &[("alice", &["physics"])]);
    for (path, body) in [
        ("/api/v1/users", json!({"name": "carol"})),
        ("/api/v1/groups", json!({"name": "physics", "members": []})),
        (
            "/api/v1/sessions",
            json!({"name": "lab", "owner": "carol", "groups": ["physics"],
                   "remote_host": "127.0.0.1", "remote_port": app.addr.port()}),
        ),
    ] {
        let (s, v) = sg.api("POST", path, Some(body)).await;
        assert_eq!(s, 201, "{path}: {v}");
    }

    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let url = format!("http://lab.localhost:{gw}/");
    let out = tokio::task::spawn_blocking({
        let home = home.clone();
        move || {
            Command::new(chromium())
                .env("HOME", &home)
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--virtual-time-budget=10000",
                    &format!("--user-data-dir={}", home.join("profile").display()),
                    "--dump-dom",
                    &url,
                ])
                .output()
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("Chromium ends")
        .unwrap()
        .expect("Chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("the lab page"),
        "Chromium ends on the session's page; it printed:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // alice was created at her first sign-in, in the provider's group.
    let (s, v) = sg.api("GET", "/api/v1/users/alice", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["groups"], json!(["physics"]));
    drop(idp);
}
