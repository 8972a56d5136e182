//! `sessiongate serve` as a process: configuration errors, the routes API,
//! reload on file change and SIGHUP, and shutdown on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{wait_log, Sessiongate};
use testkit::server::TOKEN;
use testkit::{http, temp_dir, Origin};
use tokio::net::TcpStream;

/// A configuration text, environment variables, and what the error must name.
type BadCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

/// Starts the server on a configuration text of the test's own (these tests
/// exercise the file itself: reload, static routes).
async fn start(config_text: &str, env: &[(&str, &str)]) -> (Sessiongate, PathBuf) {
    let dir = temp_dir("serve");
    let config = dir.join("sessiongate.toml");
    std::fs::write(&config, config_text).unwrap();
    let sg = Sessiongate::start_with_config(&dir, &config, env).await;
    (sg, config)
}

fn config_with(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[gateway]\nhttp_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n[control_plane]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{extra}\n[[routes]]\nhost = \"app.localhost\"\nupstream = \"http://{upstream}\"\n"
    )
}

async fn poll_body(addr: SocketAddr, host: &str, want: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http(addr, host, "/", "").await;
        if body == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "{host} still answers {body:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reload_applies_good_files_and_keeps_the_old_table_on_bad_ones() {
    let (origin_a, origin_b) = (Origin::named("origin-a"), Origin::named("origin-b"));
    let (a, b) = (origin_a.addr, origin_b.addr);
    let (sg, config) = start(&config_with(a, ""), &[("SESSIONGATE_ADMIN_TOKEN", TOKEN)]).await;
    assert_eq!(
        http(sg.gateway, "app.localhost", "/", "").await,
        (200, "origin-a".to_string())
    );

    // A changed file is picked up without a signal.
    std::fs::write(&config, config_with(b, "")).unwrap();
    poll_body(sg.gateway, "app.localhost", "origin-b").await;
    wait_log(&sg.log, "configuration reloaded").await;

    // An invalid file is refused with its reason; the table keeps serving.
    std::fs::write(
        &config,
        config_with(a, "").replace("[[routes]]", "[[routes]]\nbogus_key = 1"),
    )
    .unwrap();
    let line = wait_log(&sg.log, "invalid configuration").await;
    assert!(line.contains("bogus_key"), "{line}");
    assert_eq!(
        http(sg.gateway, "app.localhost", "/", "").await,
        (200, "origin-b".to_string())
    );

    // SIGHUP re-reads it and refuses it again; still the old table.
    let pid = sg.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_log(&sg.log, "SIGHUP: reloading configuration").await;
    let end = Instant::now() + Duration::from_secs(10);
    while sg
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("invalid configuration"))
        .count()
        < 2
    {
        assert!(Instant::now() < end, "SIGHUP did not re-read the file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        http(sg.gateway, "app.localhost", "/", "").await,
        (200, "origin-b".to_string())
    );

    // A route conflict is refused the same way.
    let conflict = config_with(a, "")
        + "[[routes]]\nhost = \"APP.localhost\"\nupstream = \"http://127.0.0.1:1\"\n";
    std::fs::write(&config, conflict).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !sg
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("claimed by both"))
    {
        assert!(Instant::now() < end, "conflicting file not reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        http(sg.gateway, "app.localhost", "/", "").await,
        (200, "origin-b".to_string())
    );

    // The API shows the table and its version: 1 at start, 2 after the one good reload.
    let (status, body) = http(
        sg.api,
        "x",
        "/api/v1/routes",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["version"], 2);
    assert_eq!(j["routes"][0]["id"], "static:host:app.localhost");
    assert_eq!(j["routes"][0]["upstream"], format!("http://{b}"));
    assert!(j["routes"][0]["last_activity"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
}

#[tokio::test]
async fn routes_api_needs_the_admin_token() {
    let a = Origin::named("a");
    let (sg, _) = start(&config_with(a.addr, ""), &[]).await;
    // No token in the environment: one was generated into the data dir and printed once.
    let printed = wait_log(&sg.log, "Generated an admin token").await;
    assert!(printed.contains("data/admin-token"), "{printed}");
    let token_line = {
        let log = sg.log.lock().unwrap();
        log.iter()
            .find(|l| l.trim().len() == 64 && l.trim().bytes().all(|b| b.is_ascii_hexdigit()))
            .cloned()
            .expect("token not printed")
    };
    let token = token_line.trim();
    let cases = [
        ("", 401),
        ("Authorization: Bearer wrong-token-000000000000\r\n", 401),
        ("Authorization: Basic Zm9vOmJhcg==\r\n", 401),
        (&*format!("Authorization: Bearer {token}\r\n"), 200),
    ];
    for (header, want) in cases {
        let (status, body) = http(sg.api, "x", "/api/v1/routes", header).await;
        assert_eq!(status, want, "{header:?}: {body}");
        if want == 401 {
            let j: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(j["error"]["code"], "unauthorized");
        }
    }
    assert_eq!(http(sg.api, "x", "/healthz", "").await.0, 200);
    let (status, body) = http(
        sg.api,
        "x",
        "/api/v1/nope",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn bad_configuration_stops_start_up_naming_the_key() {
    let dir = temp_dir("bad");
    let cases: &[BadCase] = &[
        (
            "[gateway]\nhttp_listn = \"127.0.0.1:0\"\n",
            &[],
            "http_listn",
        ),
        ("[gateway]\nmax_connections = -1\n", &[], "max_connections"),
        (
            "[[routes]]\nhost = \"a.localhost\"\nupstream = \"http://x:1/path\"\n",
            &[],
            "routes[0].upstream",
        ),
        (
            "",
            &[("SESSIONGATE_GATEWAY_HTTP_LISTEN", "not-an-address")],
            "SESSIONGATE_GATEWAY_HTTP_LISTEN",
        ),
        (
            "",
            &[("SESSIONGATE_GATEWAY_TYPO", "1")],
            "SESSIONGATE_GATEWAY_TYPO",
        ),
    ];
    for (text, env, key) in cases {
        let config = dir.join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiongate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(&dir);
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains(key), "{text:?}: {stderr}");
    }
    // A missing file is an error too, not the defaults.
    let out = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(["serve", "--config", "/nonexistent/sg.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sg.toml"));
    // A listener that cannot bind names its key.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = format!(
        "[gateway]\nhttp_listen = \"{}\"\n[control_plane]\nlisten = \"127.0.0.1:0\"\n",
        busy.local_addr().unwrap()
    );
    std::fs::write(dir.join("busy.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(["serve", "--config", "busy.toml"])
        .current_dir(&dir)
        .env("SESSIONGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gateway.http_listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sigterm_stops_serving_and_exits_cleanly() {
    let a = Origin::named("a");
    let (mut sg, _) = start(
        &config_with(a.addr, ""),
        &[("SESSIONGATE_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(http(sg.gateway, "app.localhost", "/", "").await.0, 200);
    let pid = sg.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = sg.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(sg.gateway).await.is_err());
}
