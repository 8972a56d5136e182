//! Workspace ports: raw TCP from a port on the gateway to a session's
//! `remote_host:remote_port`. The peer is a line echo server on
//! `127.0.0.1:0`, and once a real client: `psql` against the tests'
//! PostgreSQL cluster through the workspace port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::server::InProcess;
use testkit::temp_dir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::common::Sessiongate;

/// A TCP server that echoes every line back.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

const RANGE: &str = "[gateway]\nworkspace_port_range = \"41000-41999\"\n";

/// Creates ann's session `name` to `echo` asking for workspace port
/// `port`; the answer.
async fn session(
    sg: &InProcess,
    name: &str,
    echo: SocketAddr,
    port: u16,
) -> (u16, serde_json::Value) {
    sg.api(
        "POST",
        "/api/v1/sessions",
        Some(
            json!({"name": name, "owner": "ann", "remote_host": "127.0.0.1",
                    "remote_port": echo.port(), "workspace_port": port}),
        ),
    )
    .await
}

async fn ann(sg: &InProcess) {
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
}

/// Connects to the workspace port, retrying while its listener opens.
async fn connect(port: u16) -> TcpStream {
    let end = Instant::now() + testkit::DEADLINE;
    loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < end,
                    "workspace port {port} never opened: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Sends a line and reads one back.
async fn line(s: &mut TcpStream, text: &str) -> String {
    s.write_all(format!("{text}\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(testkit::DEADLINE, async {
        loop {
            let n = s.read(&mut byte).await.unwrap();
            if n == 0 || byte[0] == b'\n' {
                break;
            }
            buf.push(byte[0]);
        }
    })
    .await
    .expect("an answer in time");
    String::from_utf8(buf).unwrap()
}

/// Waits until connecting to `port` is refused (its listener closed).
async fn refused(port: u16) {
    let end = Instant::now() + testkit::DEADLINE;
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        assert!(Instant::now() < end, "workspace port {port} still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn port_of(v: &serde_json::Value) -> u16 {
    v["workspace_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no workspace_port in {v}"))
}

#[tokio::test]
async fn port_0_gets_a_free_port_in_the_range_and_tcp_is_spliced_to_the_session() {
    let root = temp_dir("ws-port-random");
    let sg = InProcess::start(&root, &format!("{RANGE}workspace_session_metrics = true\n")).await;
    ann(&sg).await;
    let echo = echo_server().await;
    let (s, v) = session(&sg, "db", echo, 0).await;
    assert_eq!(s, 201, "{v}");
    let port = port_of(&v);
    assert!((41000..=41999).contains(&port), "{port}");
    assert_eq!(v["remote_port"], echo.port());
    let mut c = connect(port).await;
    assert_eq!(line(&mut c, "hello").await, "hello");
    assert_eq!(line(&mut c, "over raw tcp").await, "over raw tcp");
    // The port is stored: GET shows it.
    let (_, got) = sg.api("GET", "/api/v1/sessions/db", None).await;
    assert_eq!(port_of(&got), port);
    let metrics = testkit::http(sg.api, "127.0.0.1", "/metrics", "").await.1;
    assert!(
        metrics.contains("sessiongate_workspace_connections_total{result=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sessiongate_workspace_bytes_total{direction=\"in\"} 19"),
        "{metrics}"
    );
    // Per session, as workspace_session_metrics asks: 19 bytes each way.
    for direction in ["in", "out"] {
        let series = format!(
            "sessiongate_workspace_session_bytes_total{{session=\"db\",direction=\"{direction}\"}} 19"
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[tokio::test]
async fn a_taken_or_out_of_range_port_is_a_409_naming_it() {
    let root = temp_dir("ws-port-conflict");
    let sg = InProcess::start(&root, RANGE).await;
    ann(&sg).await;
    let echo = echo_server().await;
    let (s, v) = session(&sg, "a", echo, 0).await;
    assert_eq!(s, 201, "{v}");
    let port = port_of(&v);
    let (s, v) = session(&sg, "b", echo, port).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v.to_string().contains(&format!(
            "workspace_port {port} is used by session \\\"a\\\""
        )),
        "{v}"
    );
    let (s, v) = session(&sg, "c", echo, 5432).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v.to_string()
            .contains("5432 is outside gateway.workspace_port_range 41000-41999"),
        "{v}"
    );
    // Held by another program on the gateway's host.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().port();
    let root2 = temp_dir("ws-port-held");
    let sg2 = InProcess::start(
        &root2,
        &format!("[gateway]\nworkspace_port_range = \"{held}-{held}\"\n"),
    )
    .await;
    ann(&sg2).await;
    let (s, v) = session(&sg2, "d", echo, held).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v.to_string()
            .contains(&format!("workspace_port {held} is in use")),
        "{v}"
    );
    let (s, v) = session(&sg2, "e", echo, 0).await;
    assert_eq!(s, 409, "{v}");
    assert!(v.to_string().contains("no free workspace port"), "{v}");
    // Nothing was stored for the refused ones.
    for name in ["b", "c"] {
        let (s, _) = sg
            .api("GET", &format!("/api/v1/sessions/{name}"), None)
            .await;
        assert_eq!(s, 404);
    }
}

#[tokio::test]
async fn pause_refuses_new_connections_and_evict_closes_a_live_one_within_a_second() {
    let root = temp_dir("ws-port-lifecycle");
    let sg = InProcess::start(&root, RANGE).await;
    ann(&sg).await;
    let echo = echo_server().await;
    let (_, v) = session(&sg, "vnc", echo, 0).await;
    let port = port_of(&v);
    let mut live = connect(port).await;
    assert_eq!(line(&mut live, "before").await, "before");

    let (s, v) = sg.api("POST", "/api/v1/sessions/vnc/pause", None).await;
    assert_eq!(s, 200, "{v}");
    refused(port).await;
    let (s, v) = sg.api("POST", "/api/v1/sessions/vnc/resume", None).await;
    assert_eq!(s, 200, "{v}");
    let mut live = connect(port).await;
    assert_eq!(line(&mut live, "again").await, "again");

    let (s, v) = sg.api("POST", "/api/v1/sessions/vnc/evict", None).await;
    let evicted = Instant::now();
    assert_eq!(s, 200, "{v}");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(1), live.read(&mut buf))
        .await
        .expect("closed within 1 s of the eviction")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    assert!(evicted.elapsed() < Duration::from_secs(1));
    refused(port).await;
}

#[tokio::test]
async fn a_client_outside_the_allowed_networks_is_refused() {
    let root = temp_dir("ws-port-clients");
    let sg = InProcess::start(
        &root,
        "[gateway]\nworkspace_port_range = \"41000-41999\"\nworkspace_allowed_clients = [\"127.0.0.1/32\"]\n",
    )
    .await;
    ann(&sg).await;
    let echo = echo_server().await;
    let (_, v) = session(&sg, "ssh", echo, 0).await;
    let port = port_of(&v);
    let mut ok = connect(port).await;
    assert_eq!(line(&mut ok, "allowed").await, "allowed");
    // From 127.0.0.2: accepted by the kernel, closed by the gateway.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let _ = other.write_all(b"let me in\n").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(testkit::DEADLINE, other.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "no echo for a client outside the networks");
    let metrics = testkit::http(sg.api, "127.0.0.1", "/metrics", "").await.1;
    assert!(
        metrics.contains("sessiongate_workspace_connections_total{result=\"refused_client\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_restart_reopens_every_workspace_port() {
    let root = temp_dir("ws-port-restart");
    let echo = echo_server().await;
    let mut sg = Sessiongate::start(&root, RANGE, &[]).await;
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
    let mut ports = Vec::new();
    for name in ["one", "two"] {
        let (s, v) = sg
            .api(
                "POST",
                "/api/v1/sessions",
                Some(
                    json!({"name": name, "owner": "ann", "remote_host": "127.0.0.1",
                            "remote_port": echo.port(), "workspace_port": 0}),
                ),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        ports.push(port_of(&v));
    }
    sg.restart().await;
    for port in ports {
        let mut c = connect(port).await;
        assert_eq!(line(&mut c, "after restart").await, "after restart");
    }
}

#[tokio::test]
async fn psql_reaches_postgresql_through_a_workspace_port() {
    let url = testkit::postgres::database("workspace").await;
    let parsed = url::Url::parse(&url).unwrap();
    let pg_port = parsed.port().unwrap();
    let root = temp_dir("ws-port-psql");
    let sg = InProcess::start(&root, RANGE).await;
    ann(&sg).await;
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(
                json!({"name": "pg", "owner": "ann", "remote_host": "127.0.0.1",
                        "remote_port": pg_port, "workspace_port": 0}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let port = port_of(&v);
    drop(connect(port).await);
    let mut through = parsed.clone();
    through.set_port(Some(port)).unwrap();
    let out = tokio::process::Command::new("psql")
        .arg(through.as_str())
        .args(["-tAc", "select 'through the workspace port ' || 6*7"])
        .output()
        .await
        .expect("psql runs (Debian's postgresql-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "through the workspace port 42"
    );
}

/// A TLS client with `cert`'s chain and key (PEM, as the API gives them),
/// trusting `ca`; `None` sends no certificate.
fn tls_client(ca: &str, cert: Option<&serde_json::Value>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match cert {
        Some(v) => {
            let chain =
                CertificateDer::pem_slice_iter(v["certificate"].as_str().unwrap().as_bytes())
                    .map(|c| c.unwrap())
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(v["key"].as_str().unwrap().as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Connects over TLS and sends a line: the line echoed, or `None` when
/// the gateway closed the connection instead.
async fn tls_line(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    text: &str,
) -> (
    Option<String>,
    Option<tokio_rustls::client::TlsStream<TcpStream>>,
) {
    let tcp = connect(port).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("TLS to workspace port {port}: {e}");
            return (None, None);
        }
    };
    if tls.write_all(format!("{text}\n").as_bytes()).await.is_err() {
        return (None, None);
    }
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(testkit::DEADLINE, async {
        loop {
            match tls.read(&mut byte).await {
                Ok(1) if byte[0] != b'\n' => buf.push(byte[0]),
                Ok(1) => return true,
                _ => return false,
            }
        }
    })
    .await
    .expect("an answer or a close in time");
    if read {
        (Some(String::from_utf8(buf).unwrap()), Some(tls))
    } else {
        (None, None)
    }
}

#[tokio::test]
async fn over_tls_a_members_certificate_gets_in_and_a_non_members_does_not() {
    let root = temp_dir("ws-port-tls");
    let sg = InProcess::start(
        &root,
        "[gateway]\nworkspace_port_range = \"41000-41999\"\nworkspace_tls = true\n",
    )
    .await;
    for u in ["ann", "bob", "eve"] {
        let (s, v) = sg
            .api("POST", "/api/v1/users", Some(json!({"name": u})))
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "team", "members": ["bob"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let echo = echo_server().await;
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(
                json!({"name": "db", "owner": "ann", "groups": ["team"], "remote_host": "127.0.0.1",
                        "remote_port": echo.port(), "workspace_port": 0}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let port = port_of(&v);
    // eve owns a session of her own, so she can get a certificate at all.
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(
                json!({"name": "eves", "owner": "eve", "remote_host": "127.0.0.1",
                        "remote_port": echo.port(), "workspace_port": 0}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let (s, bob) = sg
        .api(
            "POST",
            "/api/v1/sessions/db/client-cert",
            Some(json!({"user": "bob"})),
        )
        .await;
    assert_eq!(s, 200, "{bob}");
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions/db/client-cert",
            Some(json!({"user": "eve"})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, eve) = sg
        .api(
            "POST",
            "/api/v1/sessions/eves/client-cert",
            Some(json!({"user": "eve"})),
        )
        .await;
    assert_eq!(s, 200, "{eve}");
    let ca = bob["ca"].as_str().unwrap().to_string();

    // bob, a member: in.
    let (answer, live) = tls_line(&tls_client(&ca, Some(&bob)), port, "bob here").await;
    assert_eq!(answer.as_deref(), Some("bob here"));
    // eve's certificate (a valid one, from the same CA): refused.
    let (answer, _) = tls_line(&tls_client(&ca, Some(&eve)), port, "eve here").await;
    assert_eq!(answer, None, "a non-member's certificate is refused");
    // No certificate at all: refused.
    let (answer, _) = tls_line(&tls_client(&ca, None), port, "anyone").await;
    assert_eq!(answer, None);

    // Unsharing the session revokes bob: his live connection closes
    // within a second.
    let mut live = live.unwrap();
    let (s, v) = sg
        .api(
            "PUT",
            "/api/v1/sessions/db/groups",
            Some(json!({"groups": []})),
        )
        .await;
    assert!(s == 200 || s == 204, "{s} {v}");
    let unshared = Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(1), live.read(&mut buf))
        .await
        .expect("closed within 1 s of the unshare")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(unshared.elapsed() < Duration::from_secs(1));
    let metrics = testkit::http(sg.api, "127.0.0.1", "/metrics", "").await.1;
    assert!(
        metrics.contains("sessiongate_workspace_connections_total{result=\"refused_identity\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_connection_cap_and_the_idle_timeout_close_what_is_over() {
    let root = temp_dir("ws-port-limits");
    let sg = InProcess::start(
        &root,
        "[gateway]\nworkspace_port_range = \"41000-41999\"\nworkspace_max_connections = 1\n\
         workspace_idle_timeout_secs = 1\n",
    )
    .await;
    ann(&sg).await;
    let echo = echo_server().await;
    let (_, v) = session(&sg, "cap", echo, 0).await;
    let port = port_of(&v);
    let mut first = connect(port).await;
    assert_eq!(line(&mut first, "one").await, "one");
    // A second while the first is open: closed at once.
    let mut second = connect(port).await;
    let _ = second.write_all(b"two\n").await;
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(testkit::DEADLINE, second.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "over workspace_max_connections");
    // The first, silent, closes after the 1 s idle timeout (and not long
    // after: four ticks of 250 ms).
    let quiet = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("closed when idle")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = quiet.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    let metrics = testkit::http(sg.api, "127.0.0.1", "/metrics", "").await.1;
    assert!(
        metrics.contains("sessiongate_workspace_connections_total{result=\"refused_limit\"} 1"),
        "{metrics}"
    );
    // The slot is free again.
    let mut third = connect(port).await;
    assert_eq!(line(&mut third, "three").await, "three");
}
