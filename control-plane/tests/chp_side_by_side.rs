//! Side-by-side comparison of the real configurable-http-proxy (CHP) 5.3.0
//! and `sessiongate chp` (`/work/shared/CHP-COMPAT.md`).
//!
//! Both proxies are started with the same flags on free loopback ports, in
//! front of one shared set of in-process origins, and one identical sequence
//! of steps (REST API calls, proxied requests, WebSocket handshakes) is
//! replayed against each. Every step gives a normalised [`Observation`]:
//! status, the response headers that matter, the body (JSON compared as
//! JSON, `last_activity` masked), and every request the origins received
//! during the step (method, raw path and query, headers, body). The
//! proxies' own ports are masked, so are connection-management headers.
//!
//! The test prints a table of every difference, then compares the set of
//! differences with [`JUSTIFIED`]: a difference not listed there fails the
//! test, and so does a listed one that no longer differs (the list stays
//! true). `docs/chp-differences.md` explains each entry.
//!
//! ```sh
//! cargo test -p control-plane --test chp_side_by_side -- --nocapture
//! ```
//!
//! The real CHP is `configurable-http-proxy` on `PATH` (install it with
//! `npm install -g configurable-http-proxy@5.3.0`), or env
//! `CHP_REAL_COMMAND` (split on whitespace). `CHP_SIDE_BY_SIDE_VERBOSE=1`
//! also prints every observation of both proxies.
//!
//! Not compared here: unix sockets (`--socket`, `--api-socket`,
//! `http+unix://` targets) and TLS (`--ssl-*`, `--api-ssl-*`,
//! `--client-ssl-*`, `--redirect-port`); `chp_spec.rs` and `chp_tls.rs`
//! run those against either proxy.

mod chp_common;

use chp_common::{encode_uri_component, format_iso_ms, free_ports, parse_iso_ms, query_param};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse as WsErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Differences that are intended: `(step, field, why)`. The step is
/// `<configuration>: <step name>` (or `*`: every step), the field as the
/// table prints it. Keep `docs/chp-differences.md` in step with this list.
///
/// Known bugs of `sessiongate chp` are deliberately *not* listed, so that
/// the test fails until they are fixed (see `docs/chp-differences.md`).
const JUSTIFIED: &[(&str, &str, &str)] = &[
    // -- request ids ---------------------------------------------------------
    ("*", "response header x-request-id", REQUEST_ID),
    ("*", "upstream#0 header x-request-id", REQUEST_ID),
    (
        "default: HEAD through a route",
        "response header content-length",
        "the echo's JSON (whose length this is) describes the X-Request-Id header too",
    ),
    // -- REST API --------------------------------------------------------------
    ("default: PUT a route", CT, TEXT_TYPE),
    ("default: PUT without a token", CT, TEXT_TYPE),
    ("default: PATCH the table", CT, TEXT_TYPE),
    ("default: HEAD the table", CT, TEXT_TYPE),
    ("default: HEAD the table", CL, HEAD_LENGTH),
    ("default: OPTIONS the table", CT, TEXT_TYPE),
    ("default: GET /api", CT, TEXT_TYPE),
    ("default: GET / on the API port", CT, TEXT_TYPE),
    ("default: GET /api/routesx", CT, TEXT_TYPE),
    ("default: GET /api/v1/routes", CT, TEXT_TYPE),
    ("default: GET /api without a token", CT, TEXT_TYPE),
    ("default: POST a non-string target", CT, TEXT_TYPE),
    ("default: POST without a target", CT, TEXT_TYPE),
    ("default: POST invalid JSON", CT, TEXT_TYPE),
    ("default: POST invalid JSON", "body", JSON_ERROR),
    ("default: POST an empty body", CT, TEXT_TYPE),
    ("default: POST an empty body", "body", JSON_ERROR),
    ("default: POST JSON null", CT, TEXT_TYPE),
    ("default: POST a JSON array", CT, TEXT_TYPE),
    ("default: POST a JSON string", CT, TEXT_TYPE),
    ("default: GET inactive_since not a date", CT, TEXT_TYPE),
    (
        "default: POST invalid JSON without a token",
        "status",
        AUTH_FIRST,
    ),
    (
        "default: POST invalid JSON without a token",
        "body",
        AUTH_FIRST,
    ),
    ("default: GET a malformed key", "status", API_HANGS),
    ("default: GET a malformed key", "body", API_HANGS),
    ("default: GET a malformed key", CT, API_HANGS),
    ("default: DELETE without a path", "status", API_HANGS),
    ("default: DELETE without a path", "body", API_HANGS),
    (
        "default: GET inactive_since RFC 2822 date",
        "status",
        ISO_ONLY,
    ),
    (
        "default: GET inactive_since RFC 2822 date",
        "body",
        ISO_ONLY,
    ),
    ("default: GET inactive_since RFC 2822 date", CT, ISO_ONLY),
    // -- proxying ----------------------------------------------------------------
    ("default: HEAD /_chp_healthz", CL, HEAD_LENGTH),
    ("default: HEAD with no route", CL, HEAD_LENGTH),
    ("builtin-errors: HEAD with no route", CL, HEAD_LENGTH),
    ("default: GET //user/ann/x", "status", DOUBLE_SLASH),
    ("default: GET //user/ann/x", "body", DOUBLE_SLASH),
    ("default: GET //user/ann/x", CT, DOUBLE_SLASH),
    (
        "default: GET //user/ann/x",
        "response header x-origin",
        DOUBLE_SLASH,
    ),
    ("default: GET //user/ann/x", "upstream#0", DOUBLE_SLASH),
    (
        "default: DELETE through a route",
        "upstream#0 header content-length",
        NO_BODY_LENGTH,
    ),
    (
        "default: OPTIONS through a route",
        "upstream#0 header content-length",
        NO_BODY_LENGTH,
    ),
    ("default: GET with a non-WebSocket Upgrade", "status", H2C),
    ("default: GET with a non-WebSocket Upgrade", "body", H2C),
    ("default: GET with a non-WebSocket Upgrade", CT, H2C),
    (
        "default: GET with a non-WebSocket Upgrade",
        "response header x-origin",
        H2C,
    ),
    (
        "default: GET with a non-WebSocket Upgrade",
        "upstream#0",
        H2C,
    ),
    // -- WebSocket -----------------------------------------------------------------
    (
        "default: WebSocket through a route",
        "upstream#0 header x-forwarded-host",
        WS_FORWARDED_HOST,
    ),
    (
        "default: WebSocket to a plain HTTP origin",
        "upstream#0 header x-forwarded-host",
        WS_FORWARDED_HOST,
    ),
    (
        "host-routing: WebSocket by host",
        "upstream#0 header x-forwarded-host",
        WS_FORWARDED_HOST,
    ),
    (
        "default: WebSocket to a plain HTTP origin",
        "response header connection",
        "CHP's http-proxy copies the request's `Connection: Upgrade` onto a response that \
         is not an upgrade (a 200); ours sends none (RFC 9110 7.8: Upgrade only with 101)",
    ),
    (
        "default: WebSocket with no route",
        "status line",
        REASON_PHRASE,
    ),
    (
        "default: WebSocket to a dead target",
        "status line",
        REASON_PHRASE,
    ),
    (
        "builtin-errors: WebSocket with no route",
        "status line",
        REASON_PHRASE,
    ),
    (
        "builtin-errors: WebSocket to a dead target",
        "status line",
        REASON_PHRASE,
    ),
    // -- built-in error pages --------------------------------------------------------
    ("builtin-errors: GET /nowhere", "body", ERROR_PAGE),
    ("builtin-errors: GET /dead/x", "body", ERROR_PAGE),
    ("builtin-errors: GET /%", "body", ERROR_PAGE),
    ("host-routing: GET /x Host HOST.EXAMPLE", "body", ERROR_PAGE),
    (
        "host-routing: GET /x Host upper.example",
        "body",
        ERROR_PAGE,
    ),
    (
        "host-routing: GET /user/bob Host other.example",
        "body",
        ERROR_PAGE,
    ),
    (
        "host-routing: GET /x Host unknown.example",
        "body",
        ERROR_PAGE,
    ),
    (
        "host-routing: GET /host.example/x Host 127.0.0.1:{PORT}",
        "body",
        ERROR_PAGE,
    ),
    // -- a raw non-ASCII request target ----------------------------------------
    ("default: GET /user/ann/é", "status", RAW_UTF8),
    ("default: GET /user/ann/é", "body", RAW_UTF8),
    ("default: GET /user/ann/é", CT, RAW_UTF8),
    (
        "default: GET /user/ann/é",
        "response header x-origin",
        RAW_UTF8,
    ),
    ("default: GET /user/ann/é", "upstream#0", RAW_UTF8),
];

const CT: &str = "response header content-type";
const RAW_UTF8: &str = "Node's HTTP parser refuses a request line with raw non-ASCII bytes \
    (400, no body); ours reads the target as Node's URL parser would and forwards it \
    percent-encoded (`/user/ann/%C3%A9`), which is what a browser sends for that URL";
const CL: &str = "response header content-length";
const REQUEST_ID: &str = "sessiongate tags every request with an X-Request-Id (the client's when \
     sane, else a fresh one), sends it upstream and answers with it, to correlate logs; CHP has \
     none";
const TEXT_TYPE: &str = "ours labels its plain-text status bodies `text/plain; charset=utf-8`; \
     CHP sends them without a Content-Type";
const HEAD_LENGTH: &str = "to HEAD ours answers the Content-Length the GET body would have \
     (RFC 9110 8.6); CHP answers chunked, without one";
const JSON_ERROR: &str = "same 400 and `Body not valid JSON: ` prefix; the parser's own message \
     follows (V8's SyntaxError text vs serde_json's)";
const AUTH_FIRST: &str = "CHP parses a POST body before checking the token, so an \
     unauthenticated client gets 400 and the parser's message; ours checks the token first: 403, \
     empty, as for every other unauthenticated request";
const API_HANGS: &str = "CHP throws in the handler (decodeURIComponent URIError; \
     cleanPath(undefined) TypeError for DELETE /api/routes), logs it and never answers; ours \
     answers (400 `URI malformed`; 404, no route `/`)";
const ISO_ONLY: &str = "ours reads ISO 8601 only, as CHP's REST docs and its own error message \
     say; CHP's Date.parse also takes RFC 2822 and other implementation-defined forms. JupyterHub \
     never sends inactive_since";
const DOUBLE_SLASH: &str = "CHP resolves the request target against a base with WHATWG URL \
     parsing, where `//user/ann/x` is scheme-relative: host `user`, path `/ann/x` (404 here). \
     In HTTP/1.1 origin-form it is a path (RFC 9112 3.2.1); ours routes it as CHP's trie routes \
     paths (leading slashes ignored), to /user/ann, and sends the merged `/user/ann/x`";
const NO_BODY_LENGTH: &str = "http-proxy adds `Content-Length: 0` to a DELETE or OPTIONS without \
     a body; a request with neither Content-Length nor Transfer-Encoding has no body anyway (RFC \
     9112 6.3), so ours forwards the headers as they came";
const H2C: &str = "CHP hands every request with an Upgrade header to its WebSocket proxy, which \
     destroys the connection when the upgrade is not `websocket` (no answer at all); ours proxies \
     it as the plain request it also is, without the upgrade";
const WS_FORWARDED_HOST: &str = "ours sets X-Forwarded-Host (when absent) on WebSocket \
     handshakes as on every HTTP request; http-proxy's WebSocket path sets only -For, -Port and \
     -Proto. The value is the Host the origin also receives";
const REASON_PHRASE: &str = "a refused WebSocket handshake: CHP writes `HTTP/1.1 <code>` with no \
     reason phrase; ours a complete status line (same code, Content-Length: 0)";
const ERROR_PAGE: &str = "same status and text/html; ours has its own built-in page wording \
     instead of CHP's `404: Not Found` / `503: Proxy Target Missing` / `Proxy Error` pages \
     (JupyterHub always passes --error-target, which is compared byte for byte)";

/// The API token both proxies are started with (`CONFIGPROXY_AUTH_TOKEN`).
const TOKEN: &str = "secret";
/// How long a proxy may take to accept connections on both listeners.
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);
/// How long one step may take before it is observed as "no response".
const STEP_DEADLINE: Duration = Duration::from_secs(2);
/// Pause between two polls of a condition; never used as synchronisation.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The version the real proxy must report.
const CHP_VERSION: &str = "5.3.0";

/// Response headers never compared: framing, connection management, the
/// date and server identification. `content-length` is compared only where
/// there is no body to compare instead (`HEAD`, a WebSocket error head).
/// `connection` is compared through [`header_value`], which keeps only its
/// tokens other than `keep-alive` and `close` (so `Upgrade` is compared).
const IGNORED_RESPONSE_HEADERS: &[&str] = &[
    "date",
    "keep-alive",
    "transfer-encoding",
    "server",
    "x-powered-by",
    "content-length",
];
/// Request headers (as an origin received them) never compared: connection
/// management between the proxy and the origin (`connection` as above).
const IGNORED_UPSTREAM_HEADERS: &[&str] = &["keep-alive"];

// ---------------------------------------------------------------------------
// The proxies
// ---------------------------------------------------------------------------

/// The real CHP's command line without flags: env `CHP_REAL_COMMAND`, else
/// `configurable-http-proxy` from `PATH`. Panics, saying how to install it,
/// when there is none: this comparison must not pass without it.
fn real_command() -> Vec<String> {
    if let Ok(raw) = std::env::var("CHP_REAL_COMMAND") {
        let argv: Vec<String> = raw.split_whitespace().map(str::to_owned).collect();
        assert!(
            !argv.is_empty(),
            "CHP_REAL_COMMAND must name a program, got {raw:?}"
        );
        return argv;
    }
    let name = "configurable-http-proxy";
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => vec![path.display().to_string()],
        None => panic!(
            "the real configurable-http-proxy is not on PATH: this test compares sessiongate chp \
             with it. Install it with `npm install -g configurable-http-proxy@{CHP_VERSION}` \
             (CI installs it), or set CHP_REAL_COMMAND to its command line"
        ),
    }
}

/// Checks that `command --version` says [`CHP_VERSION`].
fn check_real_version(command: &[String]) {
    let out = Command::new(&command[0])
        .args(&command[1..])
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {command:?} --version: {e}; install it with \
                 `npm install -g configurable-http-proxy@{CHP_VERSION}`"
            )
        });
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        version, CHP_VERSION,
        "{command:?} --version: expected configurable-http-proxy {CHP_VERSION} (install it with \
         `npm install -g configurable-http-proxy@{CHP_VERSION}`)"
    );
}

/// A running proxy process, killed on drop.
struct Proxy {
    label: &'static str,
    child: Child,
    public: SocketAddr,
    api: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    /// Starts `command` with listen flags for free loopback ports, then
    /// `flags`, and waits until both listeners accept connections.
    async fn start(label: &'static str, command: &[String], flags: &[String], dir: &Path) -> Proxy {
        let [port, api_port] = free_ports::<2>();
        let mut argv = command.to_vec();
        for arg in [
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--api-ip",
            "127.0.0.1",
            "--api-port",
            &api_port.to_string(),
        ] {
            argv.push(arg.to_owned());
        }
        argv.extend(flags.iter().cloned());
        let log = dir.join(format!("{label}-{port}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning the log file handle");
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("CONFIGPROXY_AUTH_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {label} {argv:?}: {e}"));
        let mut proxy = Proxy {
            label,
            child,
            public: SocketAddr::from(([127, 0, 0, 1], port)),
            api: SocketAddr::from(([127, 0, 0, 1], api_port)),
            log,
        };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = proxy.child.try_wait().expect("polling the proxy process") {
                panic!(
                    "{label} {argv:?} exited with {status} before accepting connections; log:\n{}",
                    proxy.log_text()
                );
            }
            if TcpStream::connect(proxy.public).await.is_ok()
                && TcpStream::connect(proxy.api).await.is_ok()
            {
                return proxy;
            }
            assert!(
                Instant::now() < deadline,
                "{label} {argv:?} did not accept connections within {STARTUP_DEADLINE:?}; log:\n{}",
                proxy.log_text()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Masks for this proxy's own ports.
    fn masks(&self) -> Masks {
        Masks(vec![
            (self.public.port().to_string(), "{PROXY_PORT}"),
            (self.api.port().to_string(), "{API_PORT}"),
        ])
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The origins
// ---------------------------------------------------------------------------

/// A request as an origin received it.
#[derive(Clone, Debug)]
struct Received {
    origin: String,
    method: String,
    /// The request target exactly as it came over the wire.
    url: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    /// What the echo origin answers for it.
    fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            let values = headers
                .entry(name.clone())
                .or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(values) = values {
                values.push(Value::String(value.clone()));
            }
        }
        json!({
            "origin": self.origin,
            "method": self.method,
            "url": self.url,
            "headers": headers,
            "body": self.body,
        })
    }
}

/// Every request any origin received, in order; cleared before each step.
type Log = Arc<Mutex<Vec<Received>>>;

fn take_log(log: &Log) -> Vec<Received> {
    std::mem::take(&mut *log.lock().expect("origin log"))
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// 200 (or `?status=N`) JSON describing the request ([`Received::to_json`]),
    /// with `x-origin: <name>`; no body for 204 and 304.
    Echo,
    /// 302 to `http://<itself>/landing?from=<url>`, or to `/landing` when
    /// the path contains `relative`.
    Redirect,
    /// 200 `text/plain` `<code> error page for ?url=<url>`, where `<code>`
    /// is the last path segment: what `--error-target` asks.
    ErrorPage,
}

/// An in-process origin on 127.0.0.1, stopped on drop.
struct Origin {
    url: String,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_origin(name: &'static str, kind: Kind, log: Log) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding an origin");
    let addr = listener.local_addr().expect("origin address").to_string();
    let url = format!("http://{addr}");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (log, addr) = (log.clone(), addr.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (log, addr) = (log.clone(), addr.clone());
                    async move { Ok::<_, Infallible>(respond(name, kind, &addr, &log, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Origin { url, task }
}

async fn respond(
    name: &str,
    kind: Kind,
    addr: &str,
    log: &Log,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let url = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(e) => format!("(error reading the body: {e})"),
    };
    let received = Received {
        origin: name.to_owned(),
        method,
        url: url.clone(),
        headers,
        body,
    };
    log.lock().expect("origin log").push(received.clone());
    let builder = Response::builder().header("x-origin", name);
    let response = match kind {
        Kind::Echo => {
            let status = query_param(&url, "status")
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(200);
            let builder = builder.status(status);
            if status == 204 || status == 304 {
                builder.body(Full::new(Bytes::new()))
            } else {
                builder
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(received.to_json().to_string())))
            }
        }
        Kind::Redirect => {
            let location = if url.contains("relative") {
                "/landing".to_owned()
            } else {
                format!("http://{addr}/landing?from={}", encode_uri_component(&url))
            };
            builder
                .status(302)
                .header("location", location)
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(b"Found")))
        }
        Kind::ErrorPage => {
            let path = url.split('?').next().unwrap_or_default();
            let code = path.rsplit('/').next().unwrap_or_default();
            let original = query_param(&url, "url").unwrap_or_else(|| "(none)".into());
            builder
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(format!(
                    "{code} error page for ?url={original}"
                ))))
        }
    };
    response.expect("a valid origin response")
}

/// A WebSocket origin: records the handshake as [`Received`] (origin `ws`),
/// then answers each text message `m` with `echo: m`.
async fn start_ws_origin(log: Log) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the WebSocket origin");
    let url = format!("http://{}", listener.local_addr().expect("origin address"));
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                // The signature is tungstenite's handshake callback's.
                #[allow(clippy::result_large_err)]
                let record = move |req: &WsRequest, resp: WsResponse| {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect();
                    log.lock().expect("origin log").push(Received {
                        origin: "ws".into(),
                        method: req.method().to_string(),
                        url: req.uri().to_string(),
                        headers,
                        body: String::new(),
                    });
                    Ok::<WsResponse, WsErrorResponse>(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        let reply = Message::text(format!("echo: {}", text.as_str()));
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Origin { url, task }
}

/// The shared origins, and a port where nothing listens.
struct Origins {
    echo: Origin,
    echo2: Origin,
    redirect: Origin,
    errors: Origin,
    ws: Origin,
    dead: String,
    log: Log,
}

impl Origins {
    async fn start() -> Origins {
        let log = Log::default();
        let [dead_port] = free_ports::<1>();
        Origins {
            echo: start_origin("echo", Kind::Echo, log.clone()).await,
            echo2: start_origin("echo2", Kind::Echo, log.clone()).await,
            redirect: start_origin("redirect", Kind::Redirect, log.clone()).await,
            errors: start_origin("errors", Kind::ErrorPage, log.clone()).await,
            ws: start_ws_origin(log.clone()).await,
            dead: format!("http://127.0.0.1:{dead_port}"),
            log,
        }
    }
}

// ---------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Port {
    Api,
    Public,
}

#[derive(Clone, Debug)]
enum Action {
    /// One HTTP/1.1 request on a fresh connection. A `host` header in
    /// `headers` replaces the default (the proxy's address); `{PORT}` in a
    /// header value is the port the request goes to.
    Http {
        port: Port,
        method: Method,
        path: String,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A WebSocket handshake on the public port; on 101, one text message
    /// `hello` and its answer.
    Ws { path: String, host: Option<String> },
}

#[derive(Clone, Debug)]
struct Step {
    name: String,
    action: Action,
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).expect("a method")
}

/// An API request with the right token.
fn api(name: &str, m: &str, path: &str, body: &str) -> Step {
    api_as(name, Some(&format!("token {TOKEN}")), m, path, body, &[])
}

/// An API request with this `Authorization` (or none) and extra headers.
fn api_as(
    name: &str,
    auth: Option<&str>,
    m: &str,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Step {
    let mut headers = owned(extra);
    if let Some(auth) = auth {
        headers.push(("authorization".into(), auth.into()));
    }
    Step {
        name: name.into(),
        action: Action::Http {
            port: Port::Api,
            method: method(m),
            path: path.into(),
            headers,
            body: body.into(),
        },
    }
}

/// `POST /api/routes<key>` with `data`.
fn post(name: &str, key: &str, data: Value) -> Step {
    api(
        name,
        "POST",
        &format!("/api/routes{key}"),
        &data.to_string(),
    )
}

/// A request on the public port.
fn public(name: &str, m: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Step {
    Step {
        name: name.into(),
        action: Action::Http {
            port: Port::Public,
            method: method(m),
            path: path.into(),
            headers: owned(headers),
            body: body.into(),
        },
    }
}

/// `GET <path>` on the public port; the step is named after the path.
fn get(path: &str) -> Step {
    public(&format!("GET {path}"), "GET", path, &[], "")
}

/// `GET <path>` with this `Host`.
fn get_host(host: &str, path: &str) -> Step {
    public(
        &format!("GET {path} Host {host}"),
        "GET",
        path,
        &[("host", host)],
        "",
    )
}

fn ws(name: &str, path: &str, host: Option<&str>) -> Step {
    Step {
        name: name.into(),
        action: Action::Ws {
            path: path.into(),
            host: host.map(str::to_owned),
        },
    }
}

/// One set of flags, started on both proxies, and what to replay on each.
struct Config {
    name: &'static str,
    flags: Vec<String>,
    steps: Vec<Step>,
}

fn configs(o: &Origins) -> Vec<Config> {
    let echo = o.echo.url.as_str();
    let echo2 = o.echo2.url.as_str();
    let target = |t: &str| json!({ "target": t });
    let error_target = format!("{}/hub/error", o.errors.url);

    let mut default = vec![
        // -- the API on an empty table, authentication, methods, paths ------
        api("GET /api/routes, empty table", "GET", "/api/routes", ""),
        api("GET /api/routes/, empty table", "GET", "/api/routes/", ""),
        api_as("GET without a token", None, "GET", "/api/routes", "", &[]),
        api_as(
            "GET with a wrong token",
            Some("token wrong"),
            "GET",
            "/api/routes",
            "",
            &[],
        ),
        api_as(
            "GET with the Bearer scheme",
            Some("Bearer secret"),
            "GET",
            "/api/routes",
            "",
            &[],
        ),
        api_as(
            "GET with the scheme in capitals",
            Some("TOKEN secret"),
            "GET",
            "/api/routes",
            "",
            &[],
        ),
        api_as(
            "GET with spaces after 'token'",
            Some("token    secret"),
            "GET",
            "/api/routes",
            "",
            &[],
        ),
        api_as(
            "GET with a word before 'token'",
            Some("x token secret"),
            "GET",
            "/api/routes",
            "",
            &[],
        ),
        api_as(
            "GET with 'tokens token secret'",
            Some("tokens token secret"),
            "GET",
            "/api/routes",
            "",
            &[],
        ),
        api_as(
            "POST without a token",
            None,
            "POST",
            "/api/routes/user/ann",
            &target(echo).to_string(),
            &[],
        ),
        api_as(
            "POST invalid JSON without a token",
            None,
            "POST",
            "/api/routes/user/ann",
            "{oops",
            &[],
        ),
        api_as(
            "DELETE without a token",
            None,
            "DELETE",
            "/api/routes/user/ann",
            "",
            &[],
        ),
        api(
            "PUT a route",
            "PUT",
            "/api/routes/user/ann",
            &target(echo).to_string(),
        ),
        api_as(
            "PUT without a token",
            None,
            "PUT",
            "/api/routes/user/ann",
            "",
            &[],
        ),
        api("PATCH the table", "PATCH", "/api/routes", "{}"),
        api("HEAD the table", "HEAD", "/api/routes", ""),
        api("OPTIONS the table", "OPTIONS", "/api/routes", ""),
        api("GET /api", "GET", "/api", ""),
        api("GET / on the API port", "GET", "/", ""),
        api("GET /api/routesx", "GET", "/api/routesx", ""),
        api("GET /api/v1/routes", "GET", "/api/v1/routes", ""),
        api_as("GET /api without a token", None, "GET", "/api", "", &[]),
        api("GET a missing route", "GET", "/api/routes/user/ann", ""),
        api(
            "GET a missing route with a query",
            "GET",
            "/api/routes/user/ann?x=1",
            "",
        ),
        api(
            "DELETE a missing route",
            "DELETE",
            "/api/routes/user/nobody",
            "",
        ),
        // -- adding routes ------------------------------------------------------
        post("POST a good target", "/user/ann", target(echo)),
        post(
            "POST the same key, trailing slash, extra fields",
            "/user/ann/",
            json!({
                "target": echo,
                "user": "ann",
                "server_name": "",
                "jupyterhub": true,
                "nested": {"list": [1, "two", null, 3.5]},
            }),
        ),
        api("GET the route", "GET", "/api/routes/user/ann", ""),
        api(
            "GET the route with a trailing slash",
            "GET",
            "/api/routes/user/ann/",
            "",
        ),
        post("POST a neighbour /user/annie", "/user/annie", target(echo2)),
        post(
            "POST a deeper /user/ann/lab",
            "/user/ann/lab",
            target(echo2),
        ),
        post(
            "POST a target with a path",
            "/prefixed",
            target(&format!("{echo}/base")),
        ),
        post(
            "POST a target with a path and a trailing slash",
            "/slashed",
            target(&format!("{echo}/base/")),
        ),
        post(
            "POST a target with a query",
            "/query",
            target(&format!("{echo}/q?fixed=1")),
        ),
        post(
            "POST an encoded key /user/a%20b",
            "/user/a%20b",
            target(echo),
        ),
        post(
            "POST the key /%40/space%20word",
            "/%40/space%20word",
            target(echo),
        ),
        post("POST a UTF-8 key", "/%E7%A7%80%E6%A8%B9", target(echo)),
        post("POST a key with %2F", "/enc%2Fslash", target(echo)),
        post("POST a key with a double slash", "//double", target(echo)),
        api_as(
            "POST with Content-Type text/plain",
            Some("token secret"),
            "POST",
            "/api/routes/user/ct",
            &target(echo).to_string(),
            &[("content-type", "text/plain")],
        ),
        post("POST a dead target", "/dead", target(&o.dead)),
        post(
            "POST a redirecting target",
            "/redirect",
            target(&o.redirect.url),
        ),
        post("POST a WebSocket target", "/ws", target(&o.ws.url)),
        post(
            "POST a target that is not a URL",
            "/weird",
            target("not a url"),
        ),
        post("POST a route to delete", "/to-delete", target(echo)),
        post("POST a non-string target", "/bad", json!({ "target": 42 })),
        post("POST without a target", "/bad", json!({ "user": "x" })),
        api("POST invalid JSON", "POST", "/api/routes/bad", "{oops"),
        api("POST an empty body", "POST", "/api/routes/bad", ""),
        api("POST JSON null", "POST", "/api/routes/bad", "null"),
        api("POST a JSON array", "POST", "/api/routes/bad", "[]"),
        api(
            "POST a JSON string",
            "POST",
            "/api/routes/bad",
            "\"http://x\"",
        ),
        api(
            "GET the route bad bodies did not add",
            "GET",
            "/api/routes/bad",
            "",
        ),
        api(
            "GET /api/routes/user/a%20b",
            "GET",
            "/api/routes/user/a%20b",
            "",
        ),
        api(
            "GET the UTF-8 route",
            "GET",
            "/api/routes/%E7%A7%80%E6%A8%B9",
            "",
        ),
        api(
            "GET /api/routes/enc/slash",
            "GET",
            "/api/routes/enc/slash",
            "",
        ),
        api("GET a malformed key", "GET", "/api/routes/user/%ZZ", ""),
        api("GET the whole table", "GET", "/api/routes", ""),
        api(
            "GET inactive_since 2000",
            "GET",
            "/api/routes?inactive_since=2000-01-01T00:00:00.000Z",
            "",
        ),
        api(
            "GET inactive_since 2100",
            "GET",
            "/api/routes?inactive_since=2100-01-01T00:00:00.000Z",
            "",
        ),
        api(
            "GET inactiveSince 2100 (date only)",
            "GET",
            "/api/routes?inactiveSince=2100-01-01",
            "",
        ),
        api(
            "GET inactive_since not a date",
            "GET",
            "/api/routes?inactive_since=not-a-date",
            "",
        ),
        api(
            "GET inactive_since RFC 2822 date",
            "GET",
            "/api/routes?inactive_since=Fri%2C%2001%20Jan%202100%2000%3A00%3A00%20GMT",
            "",
        ),
        api(
            "GET inactive_since empty",
            "GET",
            "/api/routes?inactive_since=",
            "",
        ),
        api(
            "DELETE a route with a trailing slash",
            "DELETE",
            "/api/routes/to-delete/",
            "",
        ),
        api("DELETE it again", "DELETE", "/api/routes/to-delete", ""),
        api("DELETE without a path", "DELETE", "/api/routes", ""),
        // -- proxying -----------------------------------------------------------
        get("/_chp_healthz"),
        get("/_chp_healthz?x=1"),
        public("HEAD /_chp_healthz", "HEAD", "/_chp_healthz", &[], ""),
        get("/user/ann"),
        get("/user/ann/"),
        get("/user/ann/tree/x%20y?q=a%20b&r=%2F&s=1+2"),
        get("/user/ann/lab/x"),
        get("/user/annie/x"),
        get("/user/anna"),
        get("/user/an"),
        get("/user/a%20b/x"),
        get("/user/a%20b"),
        get("/@/space%20word/hub"),
        get("/%40/space%20word/hub"),
        get("/%E7%A7%80%E6%A8%B9/lab"),
        get("/enc%2Fslash/x"),
        get("/enc/slash/x"),
        get("/prefixed/x?y=1"),
        get("/prefixed"),
        get("/slashed/x"),
        get("/query/x?y=1"),
        get("/query/x"),
        get("/user/ann/../annie/x"),
        get("/user/ann/%2e%2e/annie/x"),
        get("/user/annie/../ann/x"),
        get("/user/./ann/x"),
        get("//user/ann/x"),
        get("/user//ann/x"),
        get("/nowhere"),
        get("/nowhere?a=b%20c&d=%2F"),
        get("/dead/x"),
        get("/%"),
        get("/user/ann/%ZZ"),
        get("/user/ann/x?bad=%zz"),
        get("/user/ann/100%25"),
        get("/double/x"),
        get("/user/ann/{x}"),
        get("/user/ann/x\"y"),
        get("/user\\ann/x"),
        get("/user/ann/x|y^z"),
        get("/user/ann/x?q='a'"),
        get("/user/ann/é"),
        get("/weird"),
        public(
            "POST a body through a route",
            "POST",
            "/user/ann/api/contents",
            &[("content-type", "text/plain")],
            "hello body",
        ),
        public(
            "PUT JSON through a route",
            "PUT",
            "/user/ann/api/x",
            &[("content-type", "application/json")],
            "{\"a\":1}",
        ),
        public(
            "DELETE through a route",
            "DELETE",
            "/user/ann/api/x",
            &[],
            "",
        ),
        public(
            "OPTIONS through a route",
            "OPTIONS",
            "/user/ann/api/x",
            &[],
            "",
        ),
        public("HEAD through a route", "HEAD", "/user/ann/x", &[], ""),
        public("HEAD with no route", "HEAD", "/nowhere", &[], ""),
        public(
            "GET with the client's X-Forwarded-*",
            "GET",
            "/user/ann/x",
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-port", "443"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "orig.example"),
            ],
            "",
        ),
        public(
            "GET with Forwarded and X-Real-IP",
            "GET",
            "/user/ann/x",
            &[("forwarded", "for=1.2.3.4"), ("x-real-ip", "1.2.3.4")],
            "",
        ),
        get_host("example.com", "/user/ann/x"),
        get_host("example.com:8443", "/user/ann/x"),
        public(
            "GET with Connection: close",
            "GET",
            "/user/ann/x",
            &[("connection", "close")],
            "",
        ),
        public(
            "GET with cookies, authorization, user agent",
            "GET",
            "/user/ann/x",
            &[
                ("cookie", "a=b; c=d"),
                ("authorization", "token abc"),
                ("user-agent", "side-by-side/1"),
                ("accept-encoding", "gzip"),
            ],
            "",
        ),
        public(
            "GET with the client's X-Request-Id",
            "GET",
            "/user/ann/x",
            &[("x-request-id", "client-chosen-id-1")],
            "",
        ),
        public(
            "GET with a non-WebSocket Upgrade",
            "GET",
            "/user/ann/x",
            &[("connection", "upgrade"), ("upgrade", "h2c")],
            "",
        ),
        get("/user/ann/x?status=404"),
        get("/user/ann/x?status=500"),
        get("/user/ann/x?status=204"),
        get("/user/ann/x?status=304"),
        get("/redirect/x?y=1"),
        get("/redirect/relative"),
        ws("WebSocket through a route", "/ws/socket?x=1", None),
        ws("WebSocket with no route", "/nowhere/socket", None),
        ws("WebSocket to a dead target", "/dead/socket", None),
        ws("WebSocket to a plain HTTP origin", "/user/ann/socket", None),
        // -- the root route -------------------------------------------------------
        api(
            "POST the root route without a path",
            "POST",
            "/api/routes",
            &target(echo2).to_string(),
        ),
        api(
            "GET the table with the root route",
            "GET",
            "/api/routes/",
            "",
        ),
        get("/"),
        public("GET /nowhere, root route", "GET", "/nowhere", &[], ""),
        public("GET /user/anna, root route", "GET", "/user/anna", &[], ""),
        api("DELETE the root route", "DELETE", "/api/routes/", ""),
        public("GET / without a root route", "GET", "/", &[], ""),
        api(
            "DELETE /user/ann/lab",
            "DELETE",
            "/api/routes/user/ann/lab",
            "",
        ),
        public(
            "GET /user/ann/lab/x after its route went",
            "GET",
            "/user/ann/lab/x",
            &[],
            "",
        ),
    ];
    default.push(api("GET the final table", "GET", "/api/routes", ""));

    let builtin_errors = vec![
        post("POST a dead target", "/dead", target(&o.dead)),
        get("/nowhere"),
        get("/dead/x"),
        get("/%"),
        public("HEAD with no route", "HEAD", "/nowhere", &[], ""),
        ws("WebSocket with no route", "/nowhere/socket", None),
        ws("WebSocket to a dead target", "/dead/socket", None),
    ];

    let error_target_down = vec![
        post("POST a dead target", "/dead", target(&o.dead)),
        get("/nowhere"),
        get("/dead/x"),
    ];

    let host_routing = vec![
        post("POST a host", "/host.example", target(echo)),
        post(
            "POST a host and path",
            "/other.example/user/ann",
            target(echo2),
        ),
        post("POST a host in capitals", "/Upper.Example", target(echo)),
        post("POST a WebSocket host", "/ws.example", target(&o.ws.url)),
        api("GET the table", "GET", "/api/routes", ""),
        api("GET one host route", "GET", "/api/routes/host.example", ""),
        get_host("host.example:{PORT}", "/x"),
        get_host("host.example", "/x?y=1"),
        get_host("HOST.EXAMPLE", "/x"),
        get_host("Upper.Example", "/x"),
        get_host("upper.example", "/x"),
        get_host("other.example", "/user/ann/tree"),
        get_host("other.example", "/user/bob"),
        get_host("unknown.example", "/x"),
        get_host("127.0.0.1:{PORT}", "/host.example/x"),
        get_host("unknown.example", "/_chp_healthz"),
        ws("WebSocket by host", "/socket", Some("ws.example")),
        api(
            "POST the root route",
            "POST",
            "/api/routes",
            &target(echo2).to_string(),
        ),
        get_host("unknown.example", "/y"),
        api(
            "GET the table with the root route",
            "GET",
            "/api/routes/",
            "",
        ),
    ];

    let no_include_prefix = vec![
        post(
            "POST a target with a path",
            "/user/ann",
            target(&format!("{echo}/base")),
        ),
        post("POST an encoded key", "/user/a%20b", target(echo)),
        post("POST the root route", "/", target(echo2)),
        get("/user/ann/x?y=1"),
        get("/user/ann"),
        get("/user/ann/"),
        get("/user/a%20b/x"),
        get("/other/x"),
        get("/"),
    ];

    let no_prepend_path = vec![
        post(
            "POST a target with a path",
            "/user/ann",
            target(&format!("{echo}/base")),
        ),
        post(
            "POST a target with a query",
            "/query",
            target(&format!("{echo}/q?fixed=1")),
        ),
        get("/user/ann/x?y=1"),
        get("/query/x?y=1"),
    ];

    let misc = vec![
        api("GET the table", "GET", "/api/routes", ""),
        public(
            "GET with client X-Forwarded-For and X-Custom",
            "GET",
            "/any/path?q=1",
            &[("x-forwarded-for", "1.2.3.4"), ("x-custom", "from-client")],
            "",
        ),
        get("/"),
    ];

    let flags = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        Config {
            name: "default",
            flags: flags(&["--error-target", &error_target]),
            steps: default,
        },
        Config {
            name: "builtin-errors",
            flags: vec![],
            steps: builtin_errors,
        },
        Config {
            name: "error-target-down",
            flags: flags(&["--error-target", &o.dead]),
            steps: error_target_down,
        },
        Config {
            name: "host-routing",
            flags: flags(&["--host-routing"]),
            steps: host_routing,
        },
        Config {
            name: "no-include-prefix",
            flags: flags(&["--no-include-prefix"]),
            steps: no_include_prefix,
        },
        Config {
            name: "no-prepend-path",
            flags: flags(&["--no-prepend-path"]),
            steps: no_prepend_path,
        },
        Config {
            name: "misc",
            flags: flags(&[
                "--default-target",
                &format!("{echo2}/dt"),
                "--no-x-forward",
                "--custom-header",
                "X-Custom: v1",
                "--custom-header",
                "X-Other:two",
            ]),
            steps: misc,
        },
    ]
}

// ---------------------------------------------------------------------------
// Observing a step
// ---------------------------------------------------------------------------

/// Field name → normalised value.
type Observation = BTreeMap<String, String>;

/// Replaces whole-number occurrences of ports with placeholders.
struct Masks(Vec<(String, &'static str)>);

impl Masks {
    fn mask(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut digits = String::new();
        let flush = |digits: &mut String, out: &mut String| {
            match self.0.iter().find(|(port, _)| port == digits) {
                Some((_, placeholder)) => out.push_str(placeholder),
                None => out.push_str(digits),
            }
            digits.clear();
        };
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
            } else {
                flush(&mut digits, &mut out);
                out.push(c);
            }
        }
        flush(&mut digits, &mut out);
        out
    }
}

/// A header's value as compared, or `None` for nothing to compare:
/// ports masked; `connection` and `upgrade` reduced to their tokens other
/// than `keep-alive` and `close`, lower-cased (tokens are case-insensitive,
/// RFC 9110 section 7.6.1); a generated `x-request-id` (32 hex digits,
/// fresh on every request) masked.
fn header_value(name: &str, value: &str, masks: &Masks) -> Option<String> {
    match name {
        "connection" | "upgrade" => {
            let tokens: Vec<String> = value
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty() && t != "keep-alive" && t != "close")
                .collect();
            (!tokens.is_empty()).then(|| tokens.join(", "))
        }
        "x-request-id" if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some("<generated request id>".into())
        }
        _ => Some(masks.mask(value)),
    }
}

async fn run_step(proxy: &Proxy, step: &Step, log: &Log) -> Observation {
    take_log(log);
    let masks = proxy.masks();
    let mut obs = Observation::new();
    let mut ws_body = None;
    let outcome = match &step.action {
        Action::Http {
            port,
            method,
            path,
            headers,
            body,
        } => {
            let addr = match port {
                Port::Api => proxy.api,
                Port::Public => proxy.public,
            };
            let exchange = http_exchange(addr, method, path, headers, body);
            match tokio::time::timeout(STEP_DEADLINE, exchange).await {
                Ok(Ok((status, headers, body))) => {
                    Some((*method == Method::HEAD, status, headers, body))
                }
                Ok(Err(e)) => {
                    obs.insert("status".into(), format!("(no response: {e})"));
                    None
                }
                Err(_) => {
                    obs.insert(
                        "status".into(),
                        format!("(no response within {STEP_DEADLINE:?})"),
                    );
                    None
                }
            }
        }
        Action::Ws { path, host } => {
            let exchange = ws_exchange(proxy.public, path, host.as_deref(), &mut obs);
            match tokio::time::timeout(STEP_DEADLINE, exchange).await {
                Ok(Ok(body)) => ws_body = body,
                Ok(Err(e)) => {
                    obs.insert("ws".into(), format!("(failed: {e})"));
                }
                Err(_) => {
                    obs.insert("ws".into(), format!("(no answer within {STEP_DEADLINE:?})"));
                }
            }
            None
        }
    };
    let received = take_log(log);
    if let Some((head, status, headers, body)) = outcome {
        obs.insert("status".into(), status.to_string());
        for (name, value) in headers {
            if IGNORED_RESPONSE_HEADERS.contains(&name.as_str())
                && !(head && name == "content-length")
            {
                continue;
            }
            if let Some(value) = header_value(&name, &value, &masks) {
                obs.insert(format!("response header {name}"), value);
            }
        }
        obs.insert("body".into(), normalise_body(&body, &received, &masks));
    }
    if let Some(body) = ws_body {
        obs.insert("body".into(), normalise_body(&body, &received, &masks));
    }
    for (i, r) in received.iter().enumerate() {
        obs.insert(
            format!("upstream#{i}"),
            masks.mask(&format!("{} {} {}", r.origin, r.method, r.url)),
        );
        let mut headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, value) in &r.headers {
            if !IGNORED_UPSTREAM_HEADERS.contains(&name.as_str()) {
                headers.entry(name).or_default().push(value);
            }
        }
        for (name, values) in headers {
            if let Some(value) = header_value(name, &values.join(" | "), &masks) {
                obs.insert(format!("upstream#{i} header {name}"), value);
            }
        }
        if !r.body.is_empty() {
            obs.insert(format!("upstream#{i} body"), masks.mask(&r.body));
        }
    }
    obs
}

/// Response headers, several values of one name joined with ` | `.
fn joined_headers(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(" | ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

type HttpOutcome = (u16, BTreeMap<String, String>, Bytes);

async fn http_exchange(
    addr: SocketAddr,
    method: &Method,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<HttpOutcome, String> {
    let port = addr.port().to_string();
    let mut builder = Request::builder().method(method.clone()).uri(path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", addr.to_string());
    }
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.replace("{PORT}", &port));
    }
    let req = builder
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap_or_else(|e| panic!("step {method} {path}: building the request: {e}"));
    let io = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    Ok((parts.status.as_u16(), joined_headers(&parts.headers), body))
}

/// A WebSocket handshake over a raw socket (so that the exact status line
/// is seen), then on 101 one message each way; otherwise the body that
/// followed the head (up to EOF, or whatever came within half a second).
async fn ws_exchange(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    obs: &mut Observation,
) -> Result<Option<Vec<u8>>, String> {
    let masks = Masks(vec![(addr.port().to_string(), "{PROXY_PORT}")]);
    let host = host.map_or_else(|| addr.to_string(), str::to_owned);
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("writing the handshake: {e}"))?;
    // Byte by byte up to the blank line, so that nothing after it is taken
    // from the WebSocket stream.
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) => received.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    obs.insert("status line".into(), masks.mask(&status_line));
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_owned();
        headers
            .entry(name)
            .and_modify(|v| {
                v.push_str(" | ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let upgraded = status_line.split(' ').nth(1) == Some("101");
    let bare = headers.get("content-length").map(String::as_str) == Some("0");
    for (name, value) in headers {
        // Content-Length is compared on a bare head (a WebSocket error),
        // where there is no body to compare.
        if IGNORED_RESPONSE_HEADERS.contains(&name.as_str()) && !(bare && name == "content-length")
        {
            continue;
        }
        if let Some(value) = header_value(&name, &value, &masks) {
            obs.insert(format!("response header {name}"), value);
        }
    }
    if upgraded {
        let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
        ws.send(Message::text("hello"))
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let reply = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => break t.as_str().to_owned(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break format!("(error: {e})"),
                None => break "(closed)".into(),
            }
        };
        obs.insert("ws reply".into(), reply);
        let _ = ws.close(None).await;
        Ok(None)
    } else {
        let mut rest = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_millis(500), stream.read_to_end(&mut rest)).await;
        Ok(Some(rest))
    }
}

/// The body: JSON in canonical form (keys sorted, ports and
/// `last_activity` masked), `<echo of upstream#i>` where it is the echo
/// origin's description of request `i`, else text.
fn normalise_body(body: &[u8], received: &[Received], masks: &Masks) -> String {
    if body.is_empty() {
        return String::new();
    }
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let value = canonical_json(&normalise_json(value, masks));
        for (i, r) in received.iter().enumerate() {
            if canonical_json(&normalise_json(r.to_json(), masks)) == value {
                return format!("<echo of upstream#{i}>");
            }
        }
        return value;
    }
    masks.mask(&String::from_utf8_lossy(body))
}

fn normalise_json(value: Value, masks: &Masks) -> Value {
    match value {
        Value::String(s) => Value::String(masks.mask(&s)),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| normalise_json(v, masks))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if k == "last_activity" {
                        Value::String(match &v {
                            Value::String(s) if parse_iso_ms(s).is_some() => {
                                "<ISO 8601 with ms>".into()
                            }
                            other => format!("<not ISO 8601 with ms: {other}>"),
                        })
                    } else {
                        normalise_json(v, masks)
                    };
                    (masks.mask(&k), v)
                })
                .collect(),
        ),
        other => other,
    }
}

/// JSON text with object keys sorted, whatever the map's order.
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            let fields: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

struct Difference {
    step: String,
    field: String,
    real: String,
    ours: String,
}

/// The differing fields of one step. Where the proxies sent a request to
/// different origins or paths (`upstream#i` differs), that one line stands
/// for the request: its headers and body are not compared field by field.
fn compare(step: &str, real: &Observation, ours: &Observation) -> Vec<Difference> {
    let fields: BTreeSet<&String> = real.keys().chain(ours.keys()).collect();
    let absent = "(absent)".to_owned();
    let differs = |field: &str| real.get(field) != ours.get(field);
    fields
        .into_iter()
        .filter(|field| differs(field))
        .filter(|field| {
            // `upstream#3 header host` belongs to `upstream#3`.
            let record = field.split(' ').next().unwrap_or_default();
            !(record.starts_with("upstream#") && record != field.as_str() && differs(record))
        })
        .map(|field| Difference {
            step: step.to_owned(),
            field: field.clone(),
            real: real.get(field).unwrap_or(&absent).clone(),
            ours: ours.get(field).unwrap_or(&absent).clone(),
        })
        .collect()
}

/// `s` as a quoted, escaped string of at most `max` characters.
fn shown(s: &str, max: usize) -> String {
    let quoted = format!("{s:?}");
    if quoted.chars().count() <= max {
        quoted
    } else {
        let cut: String = quoted.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Whether a [`JUSTIFIED`] entry covers `d`: same field, and the same step
/// or `*` (every step).
fn covers(entry: &(&str, &str, &str), d: &Difference) -> bool {
    let (step, field, _) = entry;
    (*step == "*" || *step == d.step) && *field == d.field
}

fn is_justified(d: &Difference) -> bool {
    JUSTIFIED.iter().any(|entry| covers(entry, d))
}

fn table(diffs: &[&Difference]) -> String {
    let mut out = String::new();
    for (i, d) in diffs.iter().enumerate() {
        let verdict = if is_justified(d) {
            "justified"
        } else {
            "UNEXPECTED"
        };
        out.push_str(&format!(
            "{:>3}. [{verdict}] {} | {}\n       real CHP: {}\n       ours:     {}\n",
            i + 1,
            d.step,
            d.field,
            shown(&d.real, 400),
            shown(&d.ours, 400),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chp_and_sessiongate_chp_answer_alike() {
    let real = real_command();
    check_real_version(&real);
    let ours = vec![env!("CARGO_BIN_EXE_sessiongate").to_owned(), "chp".into()];
    let verbose = std::env::var_os("CHP_SIDE_BY_SIDE_VERBOSE").is_some();
    let dir = std::env::temp_dir().join(format!("chp-side-by-side-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the log directory");

    let origins = Origins::start().await;
    let configs = configs(&origins);
    let mut diffs = Vec::new();
    let mut steps = 0;
    let mut summary = String::new();
    for config in &configs {
        let mut names = BTreeSet::new();
        for step in &config.steps {
            assert!(
                names.insert(step.name.as_str()),
                "{}: step {:?} is named twice",
                config.name,
                step.name
            );
        }
        let real_proxy = Proxy::start("chp", &real, &config.flags, &dir).await;
        let our_proxy = Proxy::start("ours", &ours, &config.flags, &dir).await;
        let mut observed = Vec::new();
        for proxy in [&real_proxy, &our_proxy] {
            let mut per_step = Vec::new();
            for step in &config.steps {
                per_step.push(run_step(proxy, step, &origins.log).await);
            }
            observed.push(per_step);
        }
        let before = diffs.len();
        for (i, step) in config.steps.iter().enumerate() {
            let id = format!("{}: {}", config.name, step.name);
            if verbose {
                for (proxy, obs) in [
                    (&real_proxy, &observed[0][i]),
                    (&our_proxy, &observed[1][i]),
                ] {
                    println!("--- {id} [{}]", proxy.label);
                    for (field, value) in obs {
                        println!("    {field} = {}", shown(value, 300));
                    }
                }
            }
            diffs.extend(compare(&id, &observed[0][i], &observed[1][i]));
        }
        steps += config.steps.len();
        let count = |f: fn(&Action) -> bool| config.steps.iter().filter(|s| f(&s.action)).count();
        summary.push_str(&format!(
            "  {:<18} {:>3} steps ({:>3} API, {:>3} HTTP, {} WebSocket), {:>3} differences; flags {:?}\n",
            config.name,
            config.steps.len(),
            count(|a| matches!(a, Action::Http { port: Port::Api, .. })),
            count(|a| matches!(a, Action::Http { port: Port::Public, .. })),
            count(|a| matches!(a, Action::Ws { .. })),
            diffs.len() - before,
            config.flags
        ));
    }

    let keys: BTreeSet<(&str, &str)> = JUSTIFIED.iter().map(|(s, f, _)| (*s, *f)).collect();
    assert_eq!(
        keys.len(),
        JUSTIFIED.len(),
        "JUSTIFIED lists a (step, field) twice"
    );
    let all: Vec<&Difference> = diffs.iter().collect();
    println!(
        "configurable-http-proxy {CHP_VERSION} vs sessiongate chp: {steps} steps in {} configurations\n{summary}",
        configs.len()
    );
    println!("{} differences:\n{}", all.len(), table(&all));

    let unexpected: Vec<&Difference> = diffs.iter().filter(|d| !is_justified(d)).collect();
    let stale: Vec<String> = JUSTIFIED
        .iter()
        .filter(|entry| !diffs.iter().any(|d| covers(entry, d)))
        .map(|(step, field, _)| format!("  {step} | {field}"))
        .collect();
    let mut failure = String::new();
    if !unexpected.is_empty() {
        failure.push_str(&format!(
            "{} differences are not in JUSTIFIED (fix sessiongate chp, or justify them there \
             and in docs/chp-differences.md):\n{}",
            unexpected.len(),
            table(&unexpected)
        ));
    }
    if !stale.is_empty() {
        failure.push_str(&format!(
            "{} JUSTIFIED entries no longer differ; remove them (and from \
             docs/chp-differences.md):\n{}\n",
            stale.len(),
            stale.join("\n")
        ));
    }
    assert!(failure.is_empty(), "{failure}proxy logs: {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Small helpers: URLs and time
// ---------------------------------------------------------------------------

#[test]
fn masks_replace_whole_port_numbers_only() {
    let masks = Masks(vec![("8000".into(), "{P}")]);
    assert_eq!(
        masks.mask("127.0.0.1:8000/x?p=80001&q=8000"),
        "127.0.0.1:{P}/x?p=80001&q={P}"
    );
    assert_eq!(
        parse_iso_ms("2026-12-05T07:23:40.065Z")
            .map(format_iso_ms)
            .as_deref(),
        Some("2026-12-05T07:23:40.065Z")
    );
    assert_eq!(parse_iso_ms("2026-12-05T07:23:40Z"), None);
}
