//! TLS end to end: `sessiongate serve` with a certificates directory, in
//! process (as a child where the log is read), real TLS clients (rustls),
//! and real HTTPS origins.
//!
//! Certificates come from `certs::dev::generate`, which writes a CA and a
//! leaf for `D` and `*.D` signed by it; calling it again on the same
//! directory reuses the CA, so every leaf of a directory chains to one CA
//! the clients trust.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::Sessiongate;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use testkit::server::{public_session, InProcess};
use testkit::{temp_dir, Endpoints, Origin, Reply, WsEcho, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A directory of certificates: `sessions.test` (the default, with
/// `*.sessions.test`), `exact.other.test` and the custom domain
/// `app.customer.test`, all from one CA.
fn certs_dir(root: &Path) -> PathBuf {
    let dir = root.join("certs");
    for d in ["sessions.test", "exact.other.test", "app.customer.test"] {
        certs::dev::generate(d, &dir).unwrap();
    }
    dir
}

/// A temp dir with [`certs_dir`], and the configuration that serves it for
/// the base domain `sessions.test` (`extra` goes into `[tls]`).
fn tls_setup(name: &str, extra: &str) -> (PathBuf, PathBuf, String) {
    let root = temp_dir(name);
    let dir = certs_dir(&root);
    let config = format!(
        "[gateway]\nbase_domains = [\"sessions.test\"]\n\
         [tls]\ncerts_dir = \"{}\"\ndefault_certificate = \"sessions.test\"\n\
         reload_interval_secs = 1\n{extra}",
        dir.display()
    );
    (root, dir, config)
}

/// The server in process, its certificates directory, its HTTPS address.
pub(crate) async fn server(name: &str, extra: &str) -> (InProcess, PathBuf, SocketAddr) {
    let (root, dir, config) = tls_setup(name, extra);
    let sg = InProcess::start(&root, &config).await;
    let https = https_addr(&sg);
    (sg, dir, https)
}

/// As [`server`], the binary as a child process, for tests that read its log.
async fn child(name: &str, extra: &str) -> (Sessiongate, PathBuf, SocketAddr) {
    let (root, dir, config) = tls_setup(name, extra);
    let sg = Sessiongate::start(&root, &config, &[]).await;
    let https = https_addr(&sg);
    (sg, dir, https)
}

fn https_addr(sg: &Endpoints) -> SocketAddr {
    sg.https.expect("an HTTPS listener")
}

/// A client trusting `ca` (PEM file), offering `alpn`.
fn client(ca: &Path, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

pub(crate) async fn connect(
    addr: SocketAddr,
    ca: &Path,
    sni: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(
        DEADLINE,
        client(ca, alpn).connect(ServerName::try_from(sni.to_string()).unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .unwrap_or_else(|e| panic!("handshake for {sni}: {e}"))
}

/// The DER of the first certificate in a PEM file.
fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn presented(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request over `s`; the status and the body.
async fn get(s: &mut TlsStream<TcpStream>, host: &str, path: &str) -> (u16, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return;
                }
            }
        }
    })
    .await
    .expect("a response in time");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// An origin answering its name and the HTTP version it was spoken to in,
/// over TLS with the PEM pair `tls` if there is one.
fn origin(name: &'static str, tls: Option<(PathBuf, PathBuf)>) -> Origin {
    let origin = Origin::builder(name).reply(Reply::NameAndVersion);
    match tls {
        Some((cert, key)) => origin.tls(&cert, &key).start(),
        None => origin.start(),
    }
}

#[tokio::test]
async fn sni_picks_exact_wildcard_custom_and_default_certificates() {
    let backend = origin("plain", None);
    let (sg, dir, https) = server("tls-sni", "").await;
    let ca = dir.join("ca.crt");
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
    for (name, domain) in [("nb", None), ("app", Some("app.customer.test"))] {
        let mut body = public_session(name, backend.addr.port());
        if let Some(d) = domain {
            body["custom_domain"] = json!(d);
        }
        let (s, v) = sg.api("POST", "/api/v1/sessions", Some(body)).await;
        assert_eq!(s, 201, "{v}");
        assert!(v.get("warnings").is_none(), "{v}");
    }

    let cases = [
        ("nb.sessions.test", "sessions.test"),
        ("exact.other.test", "exact.other.test"),
        ("app.customer.test", "app.customer.test"),
    ];
    for (sni, pair) in cases {
        let mut s = connect(https, &ca, sni, &[b"http/1.1"]).await;
        assert_eq!(
            presented(&s),
            der(&dir.join(format!("{pair}.crt"))),
            "{sni}"
        );
        if sni != "exact.other.test" {
            assert_eq!(get(&mut s, sni, "/").await.0, 200, "{sni}");
        }
    }
    // An unknown name gets the default certificate, which does not cover
    // it, so a verifying client refuses it.
    let tcp = TcpStream::connect(https).await.unwrap();
    let refused = client(&ca, &[])
        .connect(ServerName::try_from("nope.example").unwrap(), tcp)
        .await;
    assert!(
        refused.is_err(),
        "the default certificate covers nope.example?"
    );

    // A Host the connection's certificate does not cover: 421.
    let mut s = connect(https, &ca, "exact.other.test", &[b"http/1.1"]).await;
    let (status, body) = get(&mut s, "nb.sessions.test", "/").await;
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("does not cover"), "{body}");
    // One the wildcard covers, on a wildcard connection: served.
    let mut s = connect(https, &ca, "other.sessions.test", &[b"http/1.1"]).await;
    assert_eq!(get(&mut s, "nb.sessions.test", "/").await.0, 200);

    // A custom domain without a certificate: created, with a warning.
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions",
            Some(json!({"name": "bare", "owner": "ann", "public": true,
                        "custom_domain": "bare.customer.test", "remote_port": backend.addr.port()})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let w = v["warnings"][0].as_str().unwrap_or("");
    assert!(w.contains("bare.customer.test"), "{v}");

    let metrics = reqwest_metrics(&sg).await;
    assert!(
        metrics.contains(
            "sessiongate_certificate_expiry_timestamp_seconds{name=\"exact.other.test\"}"
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("sessiongate_tls_handshakes_total{result=\"ok\"} 0"),
        "{metrics}"
    );
}

async fn reqwest_metrics(sg: &Endpoints) -> String {
    testkit::http(sg.api, "127.0.0.1", "/metrics", "").await.1
}

/// Sends `text` on `ws` and returns the text message that comes back.
async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let back = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("an echo in time")
        .expect("a message")
        .expect("not an error");
    back.into_text().unwrap().as_str().to_owned()
}

#[tokio::test]
async fn h2_by_alpn_and_websockets_over_tls() {
    let backend = origin("plain", None);
    let peer = WsEcho::start();
    let (sg, dir, https) = server("tls-h2", "").await;
    let ca = dir.join("ca.crt");
    sg.api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    for (name, port) in [("nb", backend.addr.port()), ("ws", peer.addr.port())] {
        let (s, v) = sg
            .api("POST", "/api/v1/sessions", Some(public_session(name, port)))
            .await;
        assert_eq!(s, 201, "{v}");
    }

    let s = connect(https, &ca, "nb.sessions.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("https://nb.sessions.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"plain HTTP/1.1");

    // A WebSocket on the same HTTP/2 connection (RFC 8441), as browsers
    // open one: an extended CONNECT, answered 200, then frames on the
    // stream; the upstream got an HTTP/1.1 Upgrade.
    let mut req = hyper::Request::connect("https://ws.sessions.test/")
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert!(resp.headers().get("upgrade").is_none());
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .expect("the stream is the tunnel");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    assert_eq!(echo(&mut ws, "over h2").await, "over h2");
    // The connection still serves ordinary requests beside it.
    let req = hyper::Request::get("https://nb.sessions.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let mut h2_ws = ws;

    let s = connect(https, &ca, "ws.sessions.test", &[b"http/1.1"]).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://ws.sessions.test/", s)
        .await
        .expect("WebSocket handshake over TLS");
    assert_eq!(echo(&mut ws, "over tls").await, "over tls");

    // Pausing the session closes both, the HTTP/2 one as the HTTP/1.1 one.
    let (s, v) = sg.api("POST", "/api/v1/sessions/ws/pause", None).await;
    assert_eq!(s, 200, "{v}");
    for (what, next) in [
        ("h2", tokio::time::timeout(DEADLINE, h2_ws.next()).await),
        ("http/1.1", tokio::time::timeout(DEADLINE, ws.next()).await),
    ] {
        match next.unwrap_or_else(|_| panic!("{what}: still open after the pause")) {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => {}
            Some(Ok(m)) => panic!("{what}: {m:?} after the pause"),
        }
    }
    drop(sg);
}

#[tokio::test]
async fn hot_reload_changes_the_certificate_and_keeps_open_connections() {
    let backend = origin("plain", None);
    let (sg, dir, https) = child("tls-reload", "").await;
    let ca = dir.join("ca.crt");
    sg.api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    sg.api(
        "POST",
        "/api/v1/sessions",
        Some(public_session("nb", backend.addr.port())),
    )
    .await;
    let before = der(&dir.join("sessions.test.crt"));
    let mut early = connect(https, &ca, "nb.sessions.test", &[b"http/1.1"]).await;
    assert_eq!(presented(&early), before);
    assert_eq!(get(&mut early, "nb.sessions.test", "/").await.0, 200);

    // A new leaf for the same pair: picked up without a restart.
    certs::dev::generate("sessions.test", &dir).unwrap();
    let after = der(&dir.join("sessions.test.crt"));
    assert_ne!(before, after);
    let served = wait_for_cert(https, &ca, "nb.sessions.test", &after).await;
    assert!(
        served,
        "the new certificate was not served within the deadline"
    );
    // The connection made before the reload still works.
    assert_eq!(get(&mut early, "nb.sessions.test", "/").await.0, 200);

    // Garbage over the pair: logged, and the last good certificate stays.
    std::fs::write(dir.join("sessions.test.crt"), "not a certificate").unwrap();
    let logged = crate::common::wait_log(&sg.log, "sessions.test.crt").await;
    assert!(
        logged.to_lowercase().contains("sessions.test.crt"),
        "{logged}"
    );
    let mut s = connect(https, &ca, "nb.sessions.test", &[b"http/1.1"]).await;
    assert_eq!(presented(&s), after);
    assert_eq!(get(&mut s, "nb.sessions.test", "/").await.0, 200);
}

/// Polls new handshakes until `want` is presented, or the deadline.
async fn wait_for_cert(addr: SocketAddr, ca: &Path, sni: &str, want: &[u8]) -> bool {
    let end = std::time::Instant::now() + DEADLINE;
    while std::time::Instant::now() < end {
        let s = connect(addr, ca, sni, &[b"http/1.1"]).await;
        if presented(&s) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn https_upstreams_verified_unverified_and_mismatched() {
    // The origins' certificates: one CA the gateway is told to trust, for
    // `localhost` and for `origin.test`; another it does not know.
    let root = temp_dir("tls-upstream-certs");
    let trusted = root.join("trusted");
    certs::dev::generate("localhost", &trusted).unwrap();
    certs::dev::generate("origin.test", &trusted).unwrap();
    let untrusted = root.join("untrusted");
    certs::dev::generate("localhost", &untrusted).unwrap();
    let pair = |dir: &Path, name: &str| {
        (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        )
    };
    let good_origin = origin("good", Some(pair(&trusted, "localhost")));
    let selfsigned_origin = origin("selfsigned", Some(pair(&untrusted, "localhost")));
    let misnamed_origin = origin("misnamed", Some(pair(&trusted, "origin.test")));
    let (good, selfsigned, misnamed) = (
        good_origin.addr,
        selfsigned_origin.addr,
        misnamed_origin.addr,
    );

    let (sg, _, _) = child(
        "tls-upstream",
        &format!(
            "upstream_ca_file = \"{}\"\n",
            trusted.join("ca.crt").display()
        ),
    )
    .await;
    sg.api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    let cases = [
        ("good", good, true, 200, "good HTTP/2.0"),
        ("noverify", selfsigned, false, 200, "selfsigned HTTP/2.0"),
        // Signed by a CA the gateway does not trust (with the same name as
        // the one it does, so the signature is what fails).
        ("selfsigned", selfsigned, true, 502, "TLS: its certificate"),
        (
            "misnamed",
            misnamed,
            true,
            502,
            "TLS: its certificate is not valid for this host name",
        ),
    ];
    for (name, addr, verify, _, _) in cases {
        let (s, v) = sg
            .api(
                "POST",
                "/api/v1/sessions",
                Some(
                    json!({"name": name, "owner": "ann", "public": true, "https": true,
                            "tls_verify": verify, "remote_host": "localhost",
                            "remote_port": addr.port()}),
                ),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    for (name, addr, _, status, text) in cases {
        let (s, body) = testkit::http(sg.gateway, &format!("{name}.sessions.test"), "/", "").await;
        assert_eq!(s, status, "{name}: {body}");
        assert!(body.contains(text), "{name}: {body}");
        if status == 502 {
            // The page names the cause, never the upstream (issue 15).
            let port = addr.port().to_string();
            assert!(!body.contains(&port), "{name}: {body}");
            // The log is read from the child's output by another thread:
            // wait for the line rather than race it. (The access log names
            // the upstream too; the error line is the one with `error=`.)
            let upstream = format!("error=upstream https://localhost:{}", addr.port());
            let line = crate::common::wait_log(&sg.log, &upstream).await;
            assert!(line.contains(text), "{name}: {line}");
        }
    }
}

#[tokio::test]
async fn plain_http_redirects_to_https_keeping_host_path_and_query() {
    let (sg, _, https) = server("tls-redirect", "redirect_http = true\n").await;
    let (s, body) = testkit::http(sg.gateway, "nb.sessions.test", "/a/b?c=d&e", "").await;
    assert_eq!(s, 308, "{body}");
    let raw = testkit::exchange(
        sg.gateway,
        b"GET /a/b?c=d&e HTTP/1.1\r\nHost: nb.sessions.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        raw.header("location"),
        Some(format!("https://nb.sessions.test:{}/a/b?c=d&e", https.port()).as_str())
    );
}

#[tokio::test]
async fn first_start_generates_a_development_certificate_for_the_base_domain() {
    let root = temp_dir("tls-dev");
    let sg = Sessiongate::start(&root, "[gateway]\nbase_domains = [\"dev.test\"]\n", &[]).await;
    let https = https_addr(&sg);
    let ca = root.join("data/certs/ca.crt");
    let log = sg.log.lock().unwrap().join("\n");
    assert!(
        log.contains(&ca.display().to_string()) || log.contains("ca.crt"),
        "{log}"
    );
    for sni in ["dev.test", "nb.dev.test"] {
        let s = connect(https, &ca, sni, &[b"http/1.1"]).await;
        assert_eq!(presented(&s), der(&root.join("data/certs/dev.test.crt")));
    }
}

/// The embedded default base domain, `localhost`: browsers refuse the
/// development certificate's `*.localhost` for `nb.localhost`, so a served
/// session's host gets a leaf of its own from the same CA at its first
/// handshake, and a client trusting only that CA reaches the session. A name
/// the table does not serve gets the default certificate and no leaf.
#[tokio::test]
async fn a_session_under_localhost_gets_an_on_demand_leaf_and_unserved_names_get_none() {
    let backend = origin("plain", None);
    let root = temp_dir("tls-on-demand");
    let sg = InProcess::start(&root, "[gateway]\nbase_domains = [\"localhost\"]\n").await;
    let https = https_addr(&sg);
    let certs = root.join("data/certs");
    let ca = certs.join("ca.crt");
    sg.ann_public_session("nb", backend.addr.port()).await;

    let leaves = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(certs.join("on-demand"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".crt"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    assert!(leaves().is_empty());

    let mut s = connect(https, &ca, "nb.localhost", &[b"http/1.1"]).await;
    assert_ne!(presented(&s), der(&certs.join("localhost.crt")));
    let (status, body) = get(&mut s, "nb.localhost", "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(leaves(), ["nb.localhost.crt"]);
    // The base domain itself: the development certificate names it exactly.
    let s = connect(https, &ca, "localhost", &[b"http/1.1"]).await;
    assert_eq!(presented(&s), der(&certs.join("localhost.crt")));
    // Not served: the default certificate, no new leaf.
    let tcp = TcpStream::connect(https).await.unwrap();
    let insecure =
        tokio_rustls::TlsConnector::from(Arc::new(certs::client_config(false, None).unwrap()));
    let s = insecure
        .connect(ServerName::try_from("ghost.localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(presented(&s), der(&certs.join("localhost.crt")));
    assert_eq!(leaves(), ["nb.localhost.crt"]);
    // A second handshake for the session reuses its leaf.
    let again = connect(https, &ca, "nb.localhost", &[b"http/1.1"]).await;
    assert_eq!(
        presented(&again),
        der(&certs.join("on-demand/nb.localhost.crt"))
    );
    let metrics = reqwest_metrics(&sg).await;
    assert!(
        metrics.contains("sessiongate_tls_on_demand_certificates_total{result=\"issued\"} 1"),
        "{metrics}"
    );
}
