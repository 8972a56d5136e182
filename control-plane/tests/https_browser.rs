//! HTTPS on the embedded defaults in a real Chromium (Debian's `chromium`,
//! headless, no certificate flags): one test, run once, as CI's slow suites
//! are.
//!
//! The development CA goes into a private NSS database (libnss3-tools'
//! `certutil`; Chromium on Linux reads `$HOME/.pki/nssdb`), as `sessiongate
//! certs trust` tells users to do. Chromium then opens
//! `https://nb.localhost:PORT/` on base domain `localhost`, which only
//! works with the session's own on-demand leaf (browsers refuse the
//! `*.localhost` wildcard), over h2, and the page's script opens a WebSocket
//! to the same host. Chromium's network log must show that WebSocket as an
//! HTTP/2 extended CONNECT (`:protocol: websocket`): RFC 8441, on the page's
//! connection.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::origin::Reply;
use testkit::server::InProcess;
use testkit::{temp_dir, Origin};

/// The page: reports the WebSocket's echo in the title and the body, which
/// `--dump-dom` prints.
const PAGE: &str = r#"<!doctype html><html><head><title>waiting</title></head><body>
<p id="status">connecting</p>
<script>
const ws = new WebSocket("wss://" + location.host + "/ws");
ws.onopen = () => ws.send("hello over h2");
ws.onmessage = (e) => {
  document.getElementById("status").textContent = "echo:" + e.data + ";proto:" +
    performance.getEntriesByType("navigation")[0].nextHopProtocol;
};
ws.onerror = () => { document.getElementById("status").textContent = "websocket error"; };
</script></body></html>"#;

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{program} not found: .ci/run installs it (Debian's chromium, libnss3-tools)")
        })
}

/// A private NSS database under `home` trusting `ca` for TLS servers.
fn trust_in_nss(home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let certutil = which("certutil");
    let sql = format!("sql:{}", db.display());
    for args in [
        vec!["-d", &sql, "-N", "--empty-password"],
        vec![
            "-d",
            &sql,
            "-A",
            "-t",
            "C,,",
            "-n",
            "sessiongate development CA",
            "-i",
            ca.to_str().unwrap(),
        ],
    ] {
        let out = Command::new(&certutil).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn chromium_opens_a_session_under_localhost_over_h2_with_a_websocket_on_the_same_connection()
{
    let app = Origin::builder("page").reply(Reply::Page(PAGE)).start();
    let root = temp_dir("https-browser");
    let sg = InProcess::start(&root, "[gateway]\nbase_domains = [\"localhost\"]\n").await;
    let https = sg.https.expect("an HTTPS listener");
    sg.ann_public_session("nb", app.addr.port()).await;

    let home = root.join("home");
    trust_in_nss(&home, &root.join("data/certs/ca.crt"));
    let netlog = root.join("netlog.json");
    let url = format!("https://nb.localhost:{}/", https.port());
    let chromium = which("chromium");
    let out = tokio::task::spawn_blocking({
        let (home, netlog, url) = (home.clone(), netlog.clone(), url.clone());
        move || {
            Command::new(chromium)
                .env("HOME", &home)
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--virtual-time-budget=10000",
                    &format!("--user-data-dir={}", home.join("profile").display()),
                    &format!("--log-net-log={}", netlog.display()),
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
        dom.contains("echo:hello over h2;proto:h2"),
        "the page over h2 with its WebSocket's echo; Chromium printed:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The network log: the WebSocket was an HTTP/2 extended CONNECT.
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&netlog).unwrap()).expect("a JSON network log");
    let types = log["constants"]["logEventTypes"]
        .as_object()
        .expect("event types");
    let sent_h2_headers = types["HTTP2_SESSION_SEND_HEADERS"].as_u64().unwrap();
    let connects: Vec<Vec<String>> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64() == Some(sent_h2_headers))
        .filter_map(|e| e["params"]["headers"].as_array())
        .map(|h| {
            h.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .filter(|h| h.iter().any(|x| x == ":protocol: websocket"))
        .collect();
    assert_eq!(connects.len(), 1, "one WebSocket over HTTP/2: {connects:?}");
    assert!(connects[0].iter().any(|x| x == ":method: CONNECT"));
    assert!(connects[0].iter().any(|x| x == ":path: /ws"));
    // Its own leaf, from the development CA: and only that one.
    let leaves: Vec<String> = std::fs::read_dir(root.join("data/certs/on-demand"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".crt"))
        .collect();
    assert_eq!(leaves, ["nb.localhost.crt"]);
}
