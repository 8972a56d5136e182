//! `sessiongate chp`'s TLS and unix-socket listeners, as JupyterHub drives
//! them with `internal_ssl` (`CHP-COMPAT.md` section 2): HTTPS on the public
//! port (`--ssl-*`), mutual TLS on the API (`--api-ssl-*`), client
//! certificates towards `https://` targets (`--client-ssl-*`), the HTTP to
//! HTTPS redirect (`--redirect-port`/`--redirect-to`), and metrics on a unix
//! socket (`--metrics-socket`).
//!
//! Every test starts the real binary (or, with `CHP_COMMAND`, another proxy:
//! `CHP_COMMAND=configurable-http-proxy` runs the same cases against the real
//! CHP 5.3.0) with certificates made here by rcgen: a CA, a server
//! certificate for `localhost` and 127.0.0.1, a client certificate it signs,
//! and a client certificate from another CA.
//!
//! Against the real CHP two cases differ, where this mode follows the
//! contract: `--redirect-to 443` (CHP compares the string "443" with the
//! number 443 and writes `https://host:443/`), and a bad certificate or a
//! certificate without its key (CHP starts, or exits without naming the
//! flag). JupyterHub's own `test_internal_ssl_connections` runs in CI too.

mod chp_common;

use chp_common::free_ports;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream, UnixStream};

const TOKEN: &str = "secret";
const DEADLINE: Duration = Duration::from_secs(10);

/// The proxy command without flags: `CHP_COMMAND`, else this binary's `chp`.
fn proxy_command() -> Vec<String> {
    let raw = std::env::var("CHP_COMMAND")
        .unwrap_or_else(|_| format!("{} chp", env!("CARGO_BIN_EXE_sessiongate")));
    raw.split_whitespace().map(str::to_owned).collect()
}

fn free_port() -> u16 {
    let [port] = free_ports::<1>();
    port
}

/// A directory of its own, removed unless the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("chp-tls-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A PEM certificate and key on disk.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

/// What JupyterHub's internal_ssl makes: a CA, a server certificate, a
/// client certificate; plus a client certificate from a CA nobody trusts.
struct Pki {
    ca: PathBuf,
    server: Pair,
    client: Pair,
    rogue_client: Pair,
}

fn ca(dir: &Path, name: &str) -> (Issuer<'static, KeyPair>, PathBuf) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA certificate");
    let path = dir.join(format!("{name}.crt"));
    std::fs::write(&path, cert.pem()).expect("writing the CA");
    (Issuer::new(params, key), path)
}

fn leaf(dir: &Path, name: &str, issuer: &Issuer<'static, KeyPair>, server: bool) -> Pair {
    let key = KeyPair::generate().expect("leaf key");
    let mut params =
        CertificateParams::new(vec!["localhost".to_string()]).expect("leaf parameters");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    let pair = Pair {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pair.cert, cert.pem()).expect("writing a certificate");
    std::fs::write(&pair.key, key.serialize_pem()).expect("writing a key");
    pair
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let (issuer, ca_path) = ca(dir, "ca");
        let (rogue, _) = ca(dir, "rogue-ca");
        Pki {
            ca: ca_path,
            server: leaf(dir, "server", &issuer, true),
            client: leaf(dir, "hub", &issuer, false),
            rogue_client: leaf(dir, "rogue", &rogue, false),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("certificate file")
        .map(|c| c.expect("certificate"))
        .collect()
}

fn private_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("key file")
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in chain(ca) {
        roots.add(c).expect("CA certificate");
    }
    roots
}

/// A client trusting `ca`, presenting `identity` if given.
fn client_tls(ca: &Path, identity: Option<&Pair>) -> tokio_rustls::TlsConnector {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca));
    let config = match identity {
        Some(p) => builder
            .with_client_auth_cert(chain(&p.cert), private_key(&p.key))
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

// ---------------------------------------------------------------------------
// HTTP over whatever stream
// ---------------------------------------------------------------------------

/// What came back: status, headers, body text.
struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: String,
}

async fn exchange<S>(io: S, req: Request<Full<Bytes>>) -> Result<Reply, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `req` over HTTPS to `127.0.0.1:port`, verified against `ca`.
async fn https(
    port: u16,
    ca: &Path,
    identity: Option<&Pair>,
    req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = client_tls(ca, identity)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    exchange(tls, req).await
}

async fn http(port: u16, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    exchange(tcp, req).await
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::default())
        .expect("request")
}

fn post_route(path: &str, target: &str) -> Request<Full<Bytes>> {
    Request::post(format!("/api/routes{path}"))
        .header("host", "localhost")
        .header("authorization", format!("token {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({ "target": target }).to_string(),
        )))
        .expect("request")
}

// ---------------------------------------------------------------------------
// The proxy and the targets
// ---------------------------------------------------------------------------

struct Proxy {
    child: Child,
    port: u16,
    api_port: u16,
    log: PathBuf,
}

impl Proxy {
    /// Starts the proxy with `flags` on free ports and waits until both
    /// ports accept TCP connections.
    async fn start(scratch: &Scratch, flags: &[&str]) -> Proxy {
        let [port, api_port] = free_ports::<2>();
        let log = scratch.path("proxy.log");
        let argv: Vec<String> = proxy_command()
            .into_iter()
            .chain(
                [
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--api-ip",
                    "127.0.0.1",
                    "--api-port",
                    &api_port.to_string(),
                ]
                .map(str::to_owned),
            )
            .chain(flags.iter().map(|f| f.to_string()))
            .collect();
        let out = std::fs::File::create(&log).expect("proxy log");
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("CONFIGPROXY_AUTH_TOKEN", TOKEN)
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {argv:?}: {e}"));
        let mut proxy = Proxy {
            child,
            port,
            api_port,
            log,
        };
        let start = Instant::now();
        loop {
            let up = TcpStream::connect(("127.0.0.1", port)).await.is_ok()
                && TcpStream::connect(("127.0.0.1", api_port)).await.is_ok();
            if up {
                return proxy;
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!(
                    "the proxy exited ({status}) before listening:\n{}",
                    proxy.log()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the proxy did not listen within {DEADLINE:?}:\n{}",
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS origin that requires a client certificate chaining to
/// `client_ca`; it answers `mtls ok <path>`, which only a client that
/// passed the handshake can see.
async fn mtls_origin(server: &Pair, client_ca: &Path) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(client_ca)),
        provider(),
    )
    .build()
    .expect("client verifier");
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(&server.cert), private_key(&server.key))
        .expect("server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("origin bind");
    let addr = listener.local_addr().expect("origin addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let body = format!("mtls ok {}", req.uri());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A plain HTTP origin answering `plain <path>` and echoing
/// `X-Forwarded-Proto` in a header.
async fn plain_origin() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("origin bind");
    let addr = listener.local_addr().expect("origin addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let proto = req
                            .headers()
                            .get("x-forwarded-proto")
                            .cloned()
                            .unwrap_or(hyper::header::HeaderValue::from_static("-"));
                        let mut resp =
                            Response::new(Full::new(Bytes::from(format!("plain {}", req.uri()))));
                        resp.headers_mut().insert("x-seen-proto", proto);
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, task)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// `--ssl-key`/`--ssl-cert`: the public port speaks HTTPS, and the target
/// is told the client came over https.
#[tokio::test]
async fn public_port_serves_https() {
    let scratch = Scratch::new("public");
    let pki = Pki::new(&scratch.0);
    let (origin, _task) = plain_origin().await;
    let proxy = Proxy::start(
        &scratch,
        &[
            "--ssl-key",
            &s(&pki.server.key),
            "--ssl-cert",
            &s(&pki.server.cert),
            "--default-target",
            &format!("http://{origin}"),
        ],
    )
    .await;
    let reply = https(proxy.port, &pki.ca, None, get("/some/page?x=1"))
        .await
        .unwrap_or_else(|e| panic!("HTTPS to the public port: {e}\n{}", proxy.log()));
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.body);
    assert_eq!(reply.body, "plain /some/page?x=1");
    assert_eq!(
        reply
            .headers
            .get("x-seen-proto")
            .map(|v| v.to_str().unwrap_or("")),
        Some("https"),
        "X-Forwarded-Proto as the target saw it"
    );
    // Plain HTTP on a TLS port is not served.
    let plain = http(proxy.port, get("/some/page")).await;
    assert!(
        plain.map_or(true, |r| r.status == StatusCode::BAD_REQUEST),
        "plain HTTP on the HTTPS port must fail or be refused"
    );
}

/// `--api-ssl-*` with `--api-ssl-request-cert` (JupyterHub's internal_ssl):
/// the API answers a client with a certificate from the CA, and refuses
/// the handshake of one without a certificate or with one from another CA.
#[tokio::test]
async fn api_requires_a_client_certificate_from_its_ca() {
    let scratch = Scratch::new("api");
    let pki = Pki::new(&scratch.0);
    let (origin, _task) = plain_origin().await;
    let proxy = Proxy::start(
        &scratch,
        &[
            "--api-ssl-key",
            &s(&pki.server.key),
            "--api-ssl-cert",
            &s(&pki.server.cert),
            "--api-ssl-ca",
            &s(&pki.ca),
            "--api-ssl-request-cert",
            "--api-ssl-reject-unauthorized",
        ],
    )
    .await;
    let added = https(
        proxy.api_port,
        &pki.ca,
        Some(&pki.client),
        post_route("/user/ann", &format!("http://{origin}")),
    )
    .await
    .unwrap_or_else(|e| panic!("API over mutual TLS: {e}\n{}", proxy.log()));
    assert_eq!(added.status, StatusCode::CREATED, "body: {}", added.body);
    let listed = https(
        proxy.api_port,
        &pki.ca,
        Some(&pki.client),
        Request::get("/api/routes")
            .header("host", "localhost")
            .header("authorization", format!("token {TOKEN}"))
            .body(Full::default())
            .expect("request"),
    )
    .await
    .expect("listing routes over mutual TLS");
    let routes: serde_json::Value = serde_json::from_str(&listed.body).expect("JSON routes");
    assert_eq!(
        routes["/user/ann"]["target"],
        format!("http://{origin}"),
        "the route added over mutual TLS"
    );
    // The public port is plain HTTP here, and routes with what the API added.
    let proxied = http(proxy.port, get("/user/ann/tree"))
        .await
        .expect("proxied request");
    assert_eq!(proxied.body, "plain /user/ann/tree");

    for (who, identity) in [
        ("no client certificate", None),
        ("a certificate from another CA", Some(&pki.rogue_client)),
    ] {
        let refused = https(
            proxy.api_port,
            &pki.ca,
            identity,
            post_route("/user/eve", "http://127.0.0.1:9"),
        )
        .await;
        assert!(
            refused.is_err(),
            "the API must refuse a client with {who}, got {:?}",
            refused.map(|r| r.status)
        );
    }
    let listed = https(
        proxy.api_port,
        &pki.ca,
        Some(&pki.client),
        Request::get("/api/routes/user/eve")
            .header("host", "localhost")
            .header("authorization", format!("token {TOKEN}"))
            .body(Full::default())
            .expect("request"),
    )
    .await
    .expect("API over mutual TLS");
    assert_eq!(
        listed.status,
        StatusCode::NOT_FOUND,
        "a refused client added no route"
    );
}

/// `--client-ssl-key`/`--client-ssl-cert`/`--client-ssl-ca`: an `https://`
/// target that requires a client certificate is reached with the proxy's;
/// without them the same target fails with 503.
#[tokio::test]
async fn https_targets_get_the_proxys_client_certificate() {
    let scratch = Scratch::new("client");
    let pki = Pki::new(&scratch.0);
    let (origin, _task) = mtls_origin(&pki.server, &pki.ca).await;
    let target = format!("https://localhost:{}", origin.port());

    let with = Proxy::start(
        &scratch,
        &[
            "--client-ssl-key",
            &s(&pki.client.key),
            "--client-ssl-cert",
            &s(&pki.client.cert),
            "--client-ssl-ca",
            &s(&pki.ca),
        ],
    )
    .await;
    let added = http(with.api_port, post_route("/user/ann", &target))
        .await
        .expect("adding a route");
    assert_eq!(added.status, StatusCode::CREATED);
    let reply = http(with.port, get("/user/ann/api/status"))
        .await
        .expect("proxied request");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "mtls ok /user/ann/api/status"),
        "through the proxy's client certificate\n{}",
        with.log()
    );

    let scratch2 = Scratch::new("client-none");
    let without = Proxy::start(&scratch2, &["--client-ssl-ca", &s(&pki.ca)]).await;
    let added = http(without.api_port, post_route("/user/ann", &target))
        .await
        .expect("adding a route");
    assert_eq!(added.status, StatusCode::CREATED);
    let reply = http(without.port, get("/user/ann/api/status"))
        .await
        .expect("proxied request");
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a target that requires a client certificate, reached without one"
    );
}

/// `--redirect-port` with `--redirect-to`: plain HTTP there is sent to the
/// HTTPS port, the path and query kept; 443 is left out of the URL.
#[tokio::test]
async fn redirect_port_sends_http_to_https() {
    let scratch = Scratch::new("redirect");
    let pki = Pki::new(&scratch.0);
    for (to, path, expected) in [
        (
            "8443",
            "/hub/login?next=%2Fuser",
            "https://localhost:8443/hub/login?next=%2Fuser",
        ),
        ("443", "/", "https://localhost/"),
    ] {
        let from = free_port();
        let proxy = Proxy::start(
            &scratch,
            &[
                "--ssl-key",
                &s(&pki.server.key),
                "--ssl-cert",
                &s(&pki.server.cert),
                "--redirect-port",
                &from.to_string(),
                "--redirect-to",
                to,
            ],
        )
        .await;
        // The redirect port is bound before the public port, but poll
        // anyway: the order is not the contract.
        let start = Instant::now();
        let reply = loop {
            match http(from, get(path)).await {
                Ok(r) => break r,
                Err(e) => {
                    assert!(
                        start.elapsed() < DEADLINE,
                        "redirect port: {e}\n{}",
                        proxy.log()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(
            reply.status,
            StatusCode::MOVED_PERMANENTLY,
            "--redirect-to {to}"
        );
        assert_eq!(
            reply
                .headers
                .get("location")
                .map(|v| v.to_str().unwrap_or("")),
            Some(expected),
            "--redirect-to {to}"
        );
    }
}

/// `--metrics-socket`: `/metrics` is served on the unix socket.
#[tokio::test]
async fn metrics_on_a_unix_socket() {
    let scratch = Scratch::new("metrics");
    let socket = scratch.path("metrics.sock");
    let proxy = Proxy::start(&scratch, &["--metrics-socket", &s(&socket)]).await;
    let start = Instant::now();
    let stream = loop {
        match UnixStream::connect(&socket).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    start.elapsed() < DEADLINE,
                    "metrics socket: {e}\n{}",
                    proxy.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let reply = exchange(stream, get("/metrics")).await.expect("metrics");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.body.contains("# TYPE"),
        "Prometheus text on the metrics socket, got: {}",
        &reply.body[..reply.body.len().min(300)]
    );
}

/// A certificate whose key is not its own, or one missing its key, stops
/// the start with a message naming the flag, before anything is served.
#[tokio::test]
async fn bad_tls_material_is_an_exit_naming_the_flag() {
    let scratch = Scratch::new("bad");
    let pki = Pki::new(&scratch.0);
    let argv = proxy_command();
    for (flags, expect) in [
        (
            vec![
                "--ssl-cert",
                s(&pki.server.cert).leak(),
                "--ssl-key",
                s(&pki.client.key).leak(),
            ],
            "ssl-cert",
        ),
        (
            vec!["--api-ssl-cert", s(&pki.server.cert).leak()],
            "api-ssl-cert",
        ),
    ] {
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .args([
                "--port",
                &free_port().to_string(),
                "--api-port",
                &free_port().to_string(),
            ])
            .args(&flags)
            .output()
            .expect("running the proxy");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{flags:?} must not start: {text}");
        assert!(
            text.contains(expect),
            "{flags:?}: the message names --{expect}: {text}"
        );
    }
}
