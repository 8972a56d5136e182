//! ACME against a real ACME CA: Debian's pebble, with pebble-challtestsrv
//! resolving every name to `127.0.0.1`, and `sessiongate serve` as a child
//! process on ports chosen before pebble starts (pebble validates on fixed
//! ports). Pebble's own HTTPS uses a development certificate for
//! `localhost`, whose CA the gateway is given as `tls.acme.ca_file`.
//!
//! Covered: HTTP-01 issuance and a restart that serves the stored
//! certificate with pebble gone; TLS-ALPN-01 on demand for a session's
//! custom domain, and no order for a name that is not served; renewal at two
//! thirds of a short lifetime, then a refused challenge whose error names the
//! cause while the current certificate keeps serving.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::Sessiongate;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::json;
use testkit::pebble::{free_port, Pebble, PebbleConfig};
use testkit::server::public_session;
use testkit::{temp_dir, Origin, Reply, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A pebble issuing certificates valid for `validity`, validating on the
/// gateway's `http` and `https` ports; and the dev CA that signed pebble's
/// own HTTPS certificate.
fn pebble(root: &Path, http: u16, https: u16, validity: Duration) -> (Pebble, std::path::PathBuf) {
    let files = certs::dev::generate("localhost", &root.join("pebble-tls")).unwrap();
    let p = Pebble::start(
        &root.join("pebble"),
        &PebbleConfig {
            cert: files.cert,
            key: files.key,
            http_port: http,
            tls_port: https,
            validity,
        },
    );
    (p, files.ca_cert)
}

/// The gateway's configuration on fixed ports, with `[tls.acme]` = `acme`.
fn config(http: u16, https: u16, pebble: &Pebble, ca: &Path, acme: &str) -> String {
    format!(
        "[gateway]\nhttp_listen = \"127.0.0.1:{http}\"\nhttps_listen = \"127.0.0.1:{https}\"\n\
         [tls.acme]\ndirectory_url = \"{}\"\nca_file = \"{}\"\nemail = \"ops@example.com\"\n\
         check_interval_secs = 1\n{acme}",
        pebble.directory_url,
        ca.display()
    )
}

/// The chain the gateway presents for `sni`, whatever it is (verified by
/// the caller).
async fn presented(https: SocketAddr, sni: &str) -> Vec<CertificateDer<'static>> {
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(certs::AcceptAnyServerCert::new()))
        .with_no_client_auth();
    let tcp = TcpStream::connect(https).await.unwrap();
    let tls = tokio::time::timeout(
        DEADLINE,
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .unwrap_or_else(|e| panic!("handshake for {sni}: {e}"));
    tls.get_ref().1.peer_certificates().unwrap().to_vec()
}

/// Pebble's root, from its management interface (`/roots/0`).
async fn pebble_root(p: &Pebble, ca: &Path) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(p.management).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Go's server closes after the answer; a TLS close_notify may be missing.
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let pem = &text[text.find("-----BEGIN").expect("a PEM root")..];
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Whether `chain` is valid for `name` under pebble's `root`.
fn verifies(chain: &[CertificateDer<'static>], root: &CertificateDer<'static>, name: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

/// The gateway's `sessiongate_tls_acme_certificates_total{result}`.
async fn acme_count(sg: &Sessiongate, result: &str) -> u64 {
    let text = testkit::http(sg.api, "127.0.0.1", "/metrics", "").await.1;
    let series = format!("sessiongate_tls_acme_certificates_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

/// Waits until the chain served for `name` verifies under `root` and
/// differs from `not`; returns it.
async fn wait_for_chain(
    https: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
    not: Option<&CertificateDer<'static>>,
    deadline: Duration,
) -> Vec<CertificateDer<'static>> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let chain = presented(https, name).await;
        if verifies(&chain, root, name) && not != Some(&chain[0]) {
            return chain;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no new certificate from pebble for {name} within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn http01_issues_at_start_and_a_restart_serves_the_stored_certificate_without_the_ca() {
    let root = temp_dir("acme-http01");
    let (http, https) = (free_port(), free_port());
    // pebble's TLS-ALPN-01 port is one nothing listens on: only HTTP-01
    // can succeed.
    let (p, ca) = pebble(&root, http, free_port(), Duration::from_secs(86_400));
    let text = config(
        http,
        https,
        &p,
        &ca,
        "challenge = \"http-01\"\ndomains = [\"app.example.com\"]\n",
    );
    let mut sg = Sessiongate::start(&root, &text, &[]).await;
    let pebble_root = pebble_root(&p, &ca).await;
    let chain = wait_for_chain(
        sg.https.unwrap(),
        "app.example.com",
        &pebble_root,
        None,
        DEADLINE,
    )
    .await;
    assert_eq!(acme_count(&sg, "issued").await, 1);
    assert_eq!(acme_count(&sg, "failed").await, 0);
    let metrics = testkit::http(sg.api, "127.0.0.1", "/metrics", "").await.1;
    assert!(
        metrics.contains(
            "sessiongate_certificate_expiry_timestamp_seconds{name=\"acme/app.example.com\"}"
        ),
        "{metrics}"
    );
    // pebble asked the gateway's HTTP listener for the token.
    assert!(
        p.log()
            .iter()
            .any(|l| l.contains(&format!("validate w/ HTTP: http://app.example.com:{http}/"))),
        "{:#?}",
        p.log()
    );
    // The account key and the certificate's key are private.
    let acme_dir = root.join("data/acme");
    for f in ["account.json", "certs/app.example.com.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(acme_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }

    // Restarted with the CA gone: the stored certificate is served, and
    // nothing is ordered.
    drop(p);
    sg.restart().await;
    let again = presented(sg.https.unwrap(), "app.example.com").await;
    assert_eq!(again[0], chain[0]);
    assert!(verifies(&again, &pebble_root, "app.example.com"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(acme_count(&sg, "issued").await, 0);
    assert_eq!(acme_count(&sg, "failed").await, 0);
}

#[tokio::test]
async fn tls_alpn01_on_demand_for_a_custom_domain_and_nothing_for_names_not_served() {
    let root = temp_dir("acme-alpn");
    let (http, https) = (free_port(), free_port());
    // pebble's HTTP-01 port is one nothing listens on: only TLS-ALPN-01 on
    // the gateway's HTTPS listener can succeed.
    let (p, ca) = pebble(&root, free_port(), https, Duration::from_secs(86_400));
    let text = config(
        http,
        https,
        &p,
        &ca,
        "challenge = \"tls-alpn-01\"\non_demand = true\n",
    );
    let sg = Sessiongate::start(&root, &text, &[]).await;
    let pebble_root = pebble_root(&p, &ca).await;
    let backend = Origin::builder("acme-alpn")
        .reply(Reply::Page("lab"))
        .start();
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
    let mut body = public_session("lab", backend.addr.port());
    body["custom_domain"] = json!("lab.customer.example");
    let (s, v) = sg.api("POST", "/api/v1/sessions", Some(body)).await;
    assert_eq!(s, 201, "{v}");
    assert!(v.get("warnings").is_none(), "ACME will cover it: {v}");

    // The first handshake waits for the order and gets pebble's certificate.
    let chain = presented(sg.https.unwrap(), "lab.customer.example").await;
    assert!(
        verifies(&chain, &pebble_root, "lab.customer.example"),
        "the first handshake gets the ordered certificate"
    );
    assert_eq!(acme_count(&sg, "issued").await, 1);
    assert!(
        !p.log().iter().any(|l| l.contains("validate w/ HTTP")),
        "{:#?}",
        p.log()
    );

    // Names the table does not serve: the default certificate, no order.
    for name in ["evil.example.com", "other.customer.example"] {
        let chain = presented(sg.https.unwrap(), name).await;
        assert!(!verifies(&chain, &pebble_root, name), "{name}");
    }
    assert_eq!(acme_count(&sg, "issued").await, 1);
    assert_eq!(acme_count(&sg, "failed").await, 0);
    assert!(!root.join("data/acme/certs/evil.example.com.crt").exists());
    drop(p);
}

#[tokio::test]
async fn renewal_at_two_thirds_then_a_refused_challenge_keeps_the_current_certificate() {
    let root = temp_dir("acme-renew");
    let (http, https) = (free_port(), free_port());
    // Renewal is due 10 seconds after issuance.
    let (p, ca) = pebble(&root, http, https, Duration::from_secs(15));
    let text = config(
        http,
        https,
        &p,
        &ca,
        "challenge = \"http-01\"\ndomains = [\"app.example.com\"]\n",
    );
    let sg = Sessiongate::start(&root, &text, &[]).await;
    let pebble_root = pebble_root(&p, &ca).await;
    let gw = sg.https.unwrap();
    let first = wait_for_chain(gw, "app.example.com", &pebble_root, None, DEADLINE).await;
    let second = wait_for_chain(
        gw,
        "app.example.com",
        &pebble_root,
        Some(&first[0]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(acme_count(&sg, "issued").await, 2);

    // From now on pebble reaches nothing for the name: the next renewal's
    // challenge is refused.
    p.set_address("app.example.com", "127.0.0.2").await;
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while acme_count(&sg, "failed").await == 0 {
        assert!(tokio::time::Instant::now() < end, "no failed renewal");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = sg.log.lock().unwrap().join("\n");
    let line = log
        .lines()
        .find(|l| l.contains("ACME certificate not obtained"))
        .unwrap_or_else(|| panic!("no error line: {log}"));
    assert!(line.contains("app.example.com"), "{line}");
    assert!(
        line.contains("http-01") && line.contains("127.0.0.2"),
        "the error names the challenge and what the CA could not reach: {line}"
    );
    assert!(line.contains("serving_current=true"), "{line}");
    eprintln!("the refused renewal, as logged: {line}");
    // The renewed certificate is still the one served.
    assert_eq!(presented(gw, "app.example.com").await[0], second[0]);
    assert_eq!(acme_count(&sg, "issued").await, 2);
}
