//! The process harness the integration tests share: `sessiongate serve` as a
//! real child process on `127.0.0.1:0`, its log captured line by line, real
//! origins, and small HTTP/1.1 clients written by hand so that a test sees
//! exactly what went over the wire.
//!
//! Every wait polls with a deadline; nothing sleeps to synchronise. Ports
//! are never fixed: the addresses come from the server's own log lines.
//!
//! Each test crate uses a different part of this module, so unused items
//! are allowed here rather than in every crate that includes it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod jar;

/// The admin token [`Sessiongate::start`] gives the server.
pub const TOKEN: &str = "test-admin-token-0123456789";

/// How long a server may take to start, or a request to be answered. Generous
/// because CI runs debug builds on two cores.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The server's output, stdout and stderr interleaved, one entry per line.
pub type Log = Arc<Mutex<Vec<String>>>;

/// A fresh, empty directory, unique per process and call.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("sg-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An empty in-process route table for `*.localhost`, for tests that drive
/// a `ControlPlane` directly rather than through the binary.
pub fn route_table() -> gateway::RouteHandle {
    let routes = gateway::RouteHandle::new();
    routes
        .publish(
            &gateway::TableSettings {
                base_domains: vec!["localhost".into()],
                portal_host: None,
            },
            vec![],
        )
        .unwrap();
    routes
}

/// Adds a user with only a name, for tests that drive a `ControlPlane`
/// directly.
pub async fn add_user(cp: &control_plane::control::ControlPlane, name: &str) {
    cp.create_user(control_plane::session::model::NewUser {
        name: name.into(),
        email: None,
        first_name: None,
        last_name: None,
    })
    .await
    .unwrap();
}

/// A real origin that answers every request with its name.
pub async fn origin(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A real WebSocket peer that echoes every text and binary message.
pub async fn ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) on a fresh
/// connection and reads one response: the body by `Content-Length`, by
/// chunks, or to the end of the stream.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    tokio::time::timeout(DEADLINE, read_response(&mut s))
        .await
        .map_err(|_| std::io::Error::other(format!("{addr}: no answer within {DEADLINE:?}")))?
}

async fn read_response(s: &mut TcpStream) -> std::io::Result<RawResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed before the end of the headers"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("connection closed before the end of the body"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else {
        s.read_to_end(&mut rest).await?;
        if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            dechunk(&rest).ok_or_else(|| bad("bad chunked body"))?
        } else {
            rest
        }
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// One GET over a fresh connection, with extra header lines (each ending in
/// `\r\n`); returns status and body.
pub async fn http(addr: SocketAddr, host: &str, path: &str, extra: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    let resp = exchange(addr, req.as_bytes()).await.unwrap();
    (resp.status, resp.text())
}

/// One JSON API request; `token: None` sends no `Authorization` header. The
/// body comes back as JSON, or as a JSON string when it is not JSON, or
/// `null` when empty (204).
pub async fn api_request(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let resp = exchange(addr, req.as_bytes()).await?;
    let text = resp.text();
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((resp.status, json))
}

/// Starts `sessiongate serve --config <config>` in `dir` and captures its
/// output. The child sees none of the caller's `SESSIONGATE_*` variables, only
/// `env`, so a developer's shell cannot change a test.
pub fn spawn(config: &Path, dir: &Path, env: &[(&str, &str)]) -> (Child, Log) {
    spawn_with_args(config, dir, env, &[])
}

/// As [`spawn`], with more arguments after `serve --config <config>`.
pub fn spawn_with_args(
    config: &Path,
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Child, Log) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiongate"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SESSIONGATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::default();
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    (child, log)
}

/// The first log line containing `needle`, waiting for it up to [`DEADLINE`].
pub async fn wait_log(log: &Log, needle: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(l) = log.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        assert!(
            Instant::now() < end,
            "no log line with {needle:?}; log: {:#?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address that follows `marker` in a log line, such as
/// `gateway listening on http://127.0.0.1:41234/`.
pub fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    // Up to the first character that cannot be part of an address: a space
    // in text logs, the closing quote in JSON ones.
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

const GATEWAY_MARKER: &str = "gateway listening on http://";
const API_MARKER: &str = "control plane listening on http://";

/// Waits for both listening lines; fails at once, with the log, if the
/// child exits first.
async fn wait_listening(child: &mut Child, log: &Log) -> (SocketAddr, SocketAddr) {
    let end = Instant::now() + DEADLINE;
    let mut exited_at = None;
    loop {
        let found = |marker: &str| {
            log.lock()
                .unwrap()
                .iter()
                .find_map(|l| addr_after(l, marker))
        };
        if let (Some(g), Some(a)) = (found(GATEWAY_MARKER), found(API_MARKER)) {
            return (g, a);
        }
        if let Some(status) = child.try_wait().unwrap() {
            // The reader threads see the end of the pipes at once; give them
            // a moment to store the last lines, which say why.
            let exited = *exited_at.get_or_insert_with(Instant::now);
            if exited.elapsed() > Duration::from_millis(500) {
                panic!(
                    "sessiongate serve exited with {status} before listening; log: {:#?}",
                    log.lock().unwrap()
                );
            }
        }
        assert!(
            Instant::now() < end,
            "sessiongate serve is not listening after {DEADLINE:?}; log: {:#?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `sessiongate serve` as a child process, killed when dropped.
pub struct Sessiongate {
    pub child: Child,
    pub log: Log,
    /// The data plane.
    pub gateway: SocketAddr,
    /// The control-plane API.
    pub api: SocketAddr,
    /// The working directory; the data lives in `dir/data` and survives restarts.
    pub dir: PathBuf,
    /// The admin token, or empty when the server generated its own.
    pub token: String,
    /// The configuration file, so that a restart reads the same one.
    pub config: PathBuf,
    /// The environment it was started with, for the same reason.
    env: Vec<(String, String)>,
    /// Arguments after `serve --config <config>`, for the same reason.
    args: Vec<String>,
}

impl Drop for Sessiongate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sessiongate {
    /// Starts a server in `dir` on `127.0.0.1:0` for both listeners, with its
    /// data in `dir/data`, the admin token [`TOKEN`], and `extra_config`
    /// merged over that (so it may add keys to `[gateway]` or
    /// `[control_plane]` as well as new tables). `env` is set last and may
    /// override the token. Starting again on the same `dir` is a restart.
    pub async fn start(dir: &Path, extra_config: &str, env: &[(&str, &str)]) -> Sessiongate {
        Sessiongate::start_with_args(dir, extra_config, env, &[]).await
    }

    /// As [`start`](Self::start), with more arguments after
    /// `serve --config <config>` (flags such as `--log-format json`).
    pub async fn start_with_args(
        dir: &Path,
        extra_config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Sessiongate {
        let base = "[gateway]\nhttp_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n\
                    [control_plane]\nlisten = \"127.0.0.1:0\"\n";
        let mut config: toml::Table = base.parse().unwrap();
        let data_dir = dir.join("data");
        config["control_plane"]
            .as_table_mut()
            .unwrap()
            .insert("data_dir".into(), data_dir.to_str().unwrap().into());
        let extra: toml::Table = extra_config
            .parse()
            .unwrap_or_else(|e| panic!("extra_config is not TOML: {e}\n{extra_config}"));
        merge(&mut config, extra);
        let path = dir.join("sessiongate.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let mut all_env = vec![("SESSIONGATE_ADMIN_TOKEN", TOKEN)];
        all_env.extend_from_slice(env);
        Sessiongate::launch(dir, &path, &all_env, args).await
    }

    /// Starts a server on a configuration file written by the caller, which
    /// must listen on port 0 and log its addresses. `env` is the whole
    /// `SESSIONGATE_*` environment: without `SESSIONGATE_ADMIN_TOKEN` the
    /// server generates a token and `token` is empty.
    pub async fn start_with_config(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Sessiongate {
        Sessiongate::launch(dir, config, env, &[]).await
    }

    async fn launch(dir: &Path, config: &Path, env: &[(&str, &str)], args: &[&str]) -> Sessiongate {
        let (mut child, log) = spawn_with_args(config, dir, env, args);
        let (gateway, api) = wait_listening(&mut child, &log).await;
        let token = env
            .iter()
            .rev()
            .find(|(k, _)| *k == "SESSIONGATE_ADMIN_TOKEN")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        Sessiongate {
            child,
            log,
            gateway,
            api,
            dir: dir.to_path_buf(),
            token,
            config: config.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// SIGKILL, as in a crash: no shutdown code runs. Waits for the exit.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the server again on the same directory, configuration and
    /// environment (after [`kill9`](Self::kill9), or killing it first). The
    /// listeners are on new ports; `gateway` and `api` are updated.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (mut child, log) = spawn_with_args(&self.config, &self.dir, &env, &args);
        let (gateway, api) = wait_listening(&mut child, &log).await;
        self.child = child;
        self.log = log;
        self.gateway = gateway;
        self.api = api;
    }

    /// A request to the API with the admin token.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_with_token(Some(&self.token), method, path, body)
            .await
    }

    /// A request to the API with another token, or none.
    pub async fn api_with_token(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        api_request(self.api, token, method, path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log: {:#?}", self.log.lock()))
    }

    /// The gateway's answer for `http://<session>.localhost/`.
    pub async fn open(&self, session: &str) -> (u16, String) {
        http(self.gateway, &format!("{session}.localhost"), "/", "").await
    }

    /// The API's base URL, as `ctl --server` takes it.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }
}

/// Merges `extra` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}
