//! The targets: the origin itself, sessiongate and nginx (haproxy and
//! configurable-http-proxy are in [`crate::peers`]), how to start each one
//! with a set of routes and know it is ready; and the HTTPS-only variants of
//! sessiongate and nginx that the `tls-handshakes` scenario measures.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::procs::{check_interrupted, running_as_root, Proc};
use crate::wrk::HOST;
use testkit::origin::MARKER;

/// The admin token sessiongate is started with (at least 16 characters, as
/// sessiongate wants); the `churn` scenario drives the API with it.
pub const ADMIN_TOKEN: &str = "bench-token-not-a-secret";

/// How long a proxy gets to answer its first request through to the origin.
const READY_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    Direct,
    Sessiongate,
    Nginx,
    Haproxy,
    /// configurable-http-proxy (JupyterHub's proxy).
    Chp,
    /// `sessiongate chp`: sessiongate behind chp's command line and API.
    SessiongateChp,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Sessiongate => "sessiongate",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
            Self::Chp => "chp",
            Self::SessiongateChp => "sessiongate-chp",
        }
    }
}

/// The hosts every proxy routes, each its own route in every proxy.
pub struct Routes {
    pub hosts: Vec<String>,
    /// Whether nginx and haproxy look the `Host` up in a map (the `routes`
    /// scenario) rather than sending everything to the origin from one
    /// catch-all block (the others: the simplest, fastest configuration
    /// those two have). sessiongate and chp always route by host.
    pub lookup: bool,
}

impl Routes {
    /// The single route `{HOST}` of the keep-alive style scenarios.
    pub fn one() -> Self {
        Self {
            hosts: vec![HOST.to_owned()],
            lookup: false,
        }
    }

    /// `n` routes `r0.routes.test` … looked up by host in every proxy.
    pub fn many(n: usize) -> Self {
        Self {
            hosts: (0..n).map(|i| format!("r{i}.routes.test")).collect(),
            lookup: true,
        }
    }

    /// The hosts the readiness probe asks for: the first and the last, so
    /// that a proxy still loading its routes is not taken as ready.
    pub fn probe_hosts(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.hosts.first().map(String::as_str).into_iter().collect();
        if let Some(last) = self.hosts.last().filter(|_| self.hosts.len() > 1) {
            out.push(last);
        }
        out
    }

    /// Writes `path` with one `<host> <value><end>` line per host: the map
    /// files of nginx (`end` = ";") and haproxy, and wrk's host list.
    pub fn write_lines(&self, path: &Path, value: &str, end: &str) -> Result<()> {
        let mut text = String::with_capacity(self.hosts.len() * 32);
        for host in &self.hosts {
            text.push_str(host);
            if !value.is_empty() {
                text.push(' ');
                text.push_str(value);
            }
            text.push_str(end);
            text.push('\n');
        }
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str: the progress lines align on width.
        f.pad(self.name())
    }
}

/// A target ready to take load.
pub struct Target {
    pub kind: TargetKind,
    pub addr: SocketAddr,
    /// The proxy process; `None` for `direct`.
    pub proc: Option<Proc>,
    /// The configuration file it was started with, for the written report.
    pub config: Option<(String, String)>,
    /// Where its configuration API listens (sessiongate's control plane,
    /// chp's `--api-port`).
    pub api_addr: Option<SocketAddr>,
}

impl Target {
    /// `http://host:port`, no path.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A port that was free a moment ago. There is a window in which someone
/// else can take it; the readiness check would then fail loudly.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading a bound port")?
        .port())
}

pub fn direct(origin: SocketAddr) -> Result<Target> {
    wait_until_ready("direct", origin, None, |addr| origin_ready(addr, HOST))?;
    Ok(Target {
        kind: TargetKind::Direct,
        addr: origin,
        proc: None,
        config: None,
        api_addr: None,
    })
}

#[derive(Serialize)]
struct SgConfig {
    gateway: SgGateway,
    control_plane: SgControlPlane,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<SgTls>,
    log: SgLog,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<SgRoute>,
}

#[derive(Serialize)]
struct SgGateway {
    http_listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    https_listen: Option<String>,
    base_domains: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    portal_host: Option<String>,
    /// Every benchmark client, wrk and attackers alike, connects from
    /// 127.0.0.1, which here stands for many clients: the per-address cap
    /// (256 by default) would otherwise count wrk's connections with an
    /// attack's and refuse them. Set to `max_connections`, as the README
    /// advises behind a proxy that connects from one address.
    max_connections_per_ip: u32,
}

/// `gateway.max_connections_per_ip` in every benchmark configuration: the
/// default `max_connections`.
const PER_IP: u32 = 10_000;

#[derive(Serialize)]
struct SgTls {
    certs_dir: String,
    default_certificate: String,
    generate_dev_certificate: bool,
}

#[derive(Serialize)]
struct SgControlPlane {
    listen: String,
    data_dir: String,
}

/// Request logging off, as for every peer (nginx `access_log off`, haproxy
/// without `log`, chp `--log-level error`).
#[derive(Serialize)]
struct SgLog {
    access_log: bool,
}

const NO_ACCESS_LOG: SgLog = SgLog { access_log: false };

#[derive(Serialize)]
struct SgRoute {
    host: String,
    upstream: String,
}

/// Starts `sessiongate serve` with a static route (`[[routes]]`) to the
/// origin for each host of `routes`, and no HTTPS listener (its default
/// would be a fixed port, 8443, with a generated certificate).
pub fn sessiongate(
    binary: &Path,
    dir: &Path,
    origin: SocketAddr,
    routes: &Routes,
) -> Result<Target> {
    let port = free_port()?;
    let data_dir = dir.join("data");
    fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let config = SgConfig {
        gateway: SgGateway {
            http_listen: format!("127.0.0.1:{port}"),
            https_listen: Some(String::new()),
            base_domains: vec!["localhost".into()],
            portal_host: Some("localhost".into()),
            max_connections_per_ip: PER_IP,
        },
        control_plane: SgControlPlane {
            listen: format!("127.0.0.1:{}", free_port()?),
            data_dir: data_dir.to_string_lossy().into_owned(),
        },
        tls: None,
        log: NO_ACCESS_LOG,
        routes: routes
            .hosts
            .iter()
            .map(|host| SgRoute {
                host: host.clone(),
                upstream: format!("http://{origin}"),
            })
            .collect(),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut target = start_sessiongate(binary, dir, &config, addr, |addr| {
        routes_ready(addr, routes)
    })?;
    if routes.hosts.len() > 1 {
        // The whole file would swamp the written report.
        if let Some((_, text)) = &mut target.config {
            *text = abridge_routes(text, routes.hosts.len());
        }
    }
    Ok(target)
}

/// `text` up to and including its first `[[routes]]` entry, then a comment
/// saying how many alike follow.
fn abridge_routes(text: &str, count: usize) -> String {
    let Some(first) = text.find("[[routes]]") else {
        return text.to_owned();
    };
    let cut = text[first + 1..]
        .find("[[routes]]")
        .map_or(text.len(), |i| first + 1 + i);
    format!(
        "{}# ... {} more [[routes]] like it, one per host\n",
        &text[..cut],
        count.saturating_sub(1)
    )
}

/// The certificate pair a TLS target serves: `DIR/NAME.crt` and
/// `DIR/NAME.key`, the layout of `sessiongate certs dev` and of
/// sessiongate's `tls.certs_dir`.
pub struct CertPair {
    pub dir: PathBuf,
    pub name: String,
}

impl CertPair {
    pub fn cert(&self) -> PathBuf {
        self.dir.join(format!("{}.crt", self.name))
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.name))
    }
}

/// Starts `sessiongate serve` with an HTTPS listener that serves `certs` as
/// its default certificate, and no routes: the handshake is what is
/// measured. `ready` is asked until it succeeds (a TLS probe, say).
pub fn sessiongate_tls(
    binary: &Path,
    dir: &Path,
    data_dir: &Path,
    certs: &CertPair,
    ready: impl FnMut(SocketAddr) -> Result<()>,
) -> Result<Target> {
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let port = free_port()?;
    let config = SgConfig {
        gateway: SgGateway {
            http_listen: format!("127.0.0.1:{}", free_port()?),
            https_listen: Some(format!("127.0.0.1:{port}")),
            base_domains: vec![certs.name.clone()],
            portal_host: None,
            max_connections_per_ip: PER_IP,
        },
        control_plane: SgControlPlane {
            listen: format!("127.0.0.1:{}", free_port()?),
            data_dir: data_dir.to_string_lossy().into_owned(),
        },
        tls: Some(SgTls {
            certs_dir: certs.dir.to_string_lossy().into_owned(),
            default_certificate: certs.name.clone(),
            // A missing pair must fail the start, not be replaced.
            generate_dev_certificate: false,
        }),
        log: NO_ACCESS_LOG,
        routes: Vec::new(),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    start_sessiongate(binary, dir, &config, addr, ready)
}

/// Starts `sessiongate serve` with an HTTPS listener that serves `certs` as
/// its default certificate and one route, `host` to `origin` (the `https`
/// scenario); `ready` is asked until it succeeds (a request over TLS that
/// reaches the origin, say).
pub fn sessiongate_https(
    binary: &Path,
    dir: &Path,
    origin: SocketAddr,
    certs: &CertPair,
    host: &str,
    ready: impl FnMut(SocketAddr) -> Result<()>,
) -> Result<Target> {
    let data_dir = dir.join("data");
    fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let port = free_port()?;
    let config = SgConfig {
        gateway: SgGateway {
            http_listen: format!("127.0.0.1:{}", free_port()?),
            https_listen: Some(format!("127.0.0.1:{port}")),
            base_domains: vec![certs.name.clone()],
            portal_host: None,
            max_connections_per_ip: PER_IP,
        },
        control_plane: SgControlPlane {
            listen: format!("127.0.0.1:{}", free_port()?),
            data_dir: data_dir.to_string_lossy().into_owned(),
        },
        tls: Some(SgTls {
            certs_dir: certs.dir.to_string_lossy().into_owned(),
            default_certificate: certs.name.clone(),
            generate_dev_certificate: false,
        }),
        log: NO_ACCESS_LOG,
        routes: vec![SgRoute {
            host: host.to_owned(),
            upstream: format!("http://{origin}"),
        }],
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    start_sessiongate(binary, dir, &config, addr, ready)
}

/// Writes `config` to `dir/sessiongate.toml`, starts `sessiongate serve` on
/// it and waits until `ready(addr)` succeeds.
fn start_sessiongate(
    binary: &Path,
    dir: &Path,
    config: &SgConfig,
    addr: SocketAddr,
    ready: impl FnMut(SocketAddr) -> Result<()>,
) -> Result<Target> {
    let text = toml::to_string(config).context("serialising sessiongate.toml")?;
    let api_addr = config.control_plane.listen.parse().ok();
    let path = dir.join("sessiongate.toml");
    fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;

    let mut cmd = Command::new(binary);
    // Any SESSIONGATE_* variable overrides a config key: inherited ones would
    // silently change what is measured.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("SESSIONGATE_") {
            cmd.env_remove(var);
        }
    }
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .current_dir(dir)
        .env("SESSIONGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn");
    let mut proc = Proc::spawn("sessiongate", cmd, dir.join("sessiongate.log"), None)?;
    wait_until_ready("sessiongate", addr, Some(&mut proc), ready)?;
    Ok(Target {
        kind: TargetKind::Sessiongate,
        addr,
        proc: Some(proc),
        config: Some(("sessiongate.toml".into(), text)),
        api_addr,
    })
}

/// How nginx runs: a master process and one worker (every scenario but
/// one), or a single process that serves requests itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NginxProcesses {
    MasterAndWorker,
    /// `master_process off`: no master, no fork, so the process started is
    /// the one that serves, as `bench instructions` needs under callgrind.
    Single,
}

/// The start of every nginx configuration here: one worker, everything
/// (pid, logs, temp paths) inside `dir` so that no system state is touched,
/// no access log; it leaves the `http` block open.
fn nginx_preamble(dir: &Path, as_root: bool, processes: NginxProcesses) -> String {
    let d = dir.display();
    // As root, the compiled-in worker user is nobody:nobody, and Debian has
    // no group "nobody".
    let user = if as_root {
        "user nobody nogroup;\n"
    } else {
        ""
    };
    let master = match processes {
        NginxProcesses::MasterAndWorker => "",
        NginxProcesses::Single => "master_process off;\n",
    };
    format!(
        r#"{user}worker_processes 1;
{master}daemon off;
pid "{d}/nginx.pid";
error_log "{d}/error.log" warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path "{d}/client_body";
    proxy_temp_path "{d}/proxy";
    fastcgi_temp_path "{d}/fastcgi";
    uwsgi_temp_path "{d}/uwsgi";
    scgi_temp_path "{d}/scgi";
"#
    )
}

/// The nginx configuration: one worker, upstream keep-alive, WebSocket
/// upgrades passed through (`Connection: upgrade` only when the client asked
/// for one, so that plain requests keep the upstream connection alive),
/// responses streamed rather than buffered (as sessiongate, haproxy and chp
/// do), everything (pid, logs, temp paths) inside `dir` so that no system
/// state is touched. With `map_file` (lines `<host> origin;`), the host is
/// looked up in a `map` and unknown hosts answer 404. With `h2c_port`, the
/// same server also listens there for HTTP/2 with prior knowledge (nginx
/// speaks only HTTP/2 on a `listen ... http2` port without TLS).
/// `processes` says whether a master runs.
pub fn nginx_config(
    dir: &Path,
    port: u16,
    origin: SocketAddr,
    map_file: Option<(&Path, usize)>,
    h2c_port: Option<u16>,
    as_root: bool,
    processes: NginxProcesses,
) -> String {
    let preamble = nginx_preamble(dir, as_root, processes);
    let (route_map, check, pass) = match map_file {
        Some((file, count)) => (
            format!(
                r#"
    # One entry per route; the hash must hold them all (set before any map).
    map_hash_max_size {};
    map_hash_bucket_size 128;
    map $host $route {{
        default "";
        include "{}";
    }}
"#,
                (count * 2).max(2048),
                file.display()
            ),
            "if ($route = \"\") {\n                return 404;\n            }\n            ",
            "$route",
        ),
        None => (String::new(), "", "origin"),
    };
    let h2c = h2c_port.map_or(String::new(), |p| {
        format!("\n        listen 127.0.0.1:{p} http2;")
    });
    format!(
        r#"{preamble}{route_map}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}

    upstream origin {{
        server {origin};
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port};{h2c}
        server_name {HOST};

        location / {{
            {check}proxy_pass http://{pass};
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#
    )
}

/// Mozilla's "intermediate" TLS 1.2 cipher list (v5.7), the profile
/// sessiongate's listener implements; TLS 1.3 suites are OpenSSL's defaults,
/// which are the same three as sessiongate's.
pub const MOZILLA_INTERMEDIATE_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:\
ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:\
DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305";

/// The TLS lines of both nginx HTTPS configurations: `certs`, TLS 1.2 and
/// 1.3 with Mozilla's intermediate settings (the groups sessiongate offers,
/// in its order), a shared session cache and session tickets.
fn nginx_tls_lines(certs: &CertPair) -> String {
    let (cert, key) = (certs.cert(), certs.key());
    let (cert, key) = (cert.display(), key.display());
    format!(
        r#"        ssl_certificate "{cert}";
        ssl_certificate_key "{key}";
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {MOZILLA_INTERMEDIATE_CIPHERS};
        ssl_prefer_server_ciphers off;
        ssl_ecdh_curve X25519:prime256v1:secp384r1;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        ssl_session_timeout 1d;
"#
    )
}

/// The nginx configuration of the `https` scenario: [`nginx_config`]'s
/// proxy (one worker, upstream keep-alive, streamed responses, the same
/// forwarding headers, plus `X-Forwarded-Proto`) behind an HTTPS listener
/// with `certs` that speaks HTTP/1.1 and h2 (ALPN), as sessiongate's does.
/// `keepalive_requests` is raised from 1000: h2load does not reconnect when
/// nginx closes a connection after that many requests, and wrk's reconnects
/// would add TLS handshakes to a keep-alive figure.
pub fn nginx_https_config(
    dir: &Path,
    port: u16,
    origin: SocketAddr,
    certs: &CertPair,
    as_root: bool,
) -> String {
    let preamble = nginx_preamble(dir, as_root, NginxProcesses::MasterAndWorker);
    let tls = nginx_tls_lines(certs);
    let name = &certs.name;
    format!(
        r#"{preamble}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}

    upstream origin {{
        server {origin};
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name {name} *.{name};
        keepalive_requests 1000000;

{tls}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"#
    )
}

/// The nginx configuration of the TLS scenario: one worker, an HTTPS
/// listener with `certs`, TLS 1.2 and 1.3 with Mozilla's intermediate
/// settings (the groups sessiongate offers, in its order), a shared session
/// cache and session tickets, and `return 200` for every request.
pub fn nginx_tls_config(dir: &Path, port: u16, certs: &CertPair, as_root: bool) -> String {
    let preamble = nginx_preamble(dir, as_root, NginxProcesses::MasterAndWorker);
    let tls = nginx_tls_lines(certs);
    let name = &certs.name;
    format!(
        r#"{preamble}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {name};

{tls}
        location / {{
            return 200 "ok\n";
        }}
    }}
}}
"#
    )
}

/// Starts nginx (master + one worker) in the foreground with `routes`.
pub fn nginx(binary: &Path, dir: &Path, origin: SocketAddr, routes: &Routes) -> Result<Target> {
    nginx_with(binary, dir, origin, routes, NginxProcesses::MasterAndWorker)
}

/// [`nginx`] as a single process (`master_process off`): the pid started
/// is the one that serves.
pub fn nginx_single_process(
    binary: &Path,
    dir: &Path,
    origin: SocketAddr,
    routes: &Routes,
) -> Result<Target> {
    nginx_with(binary, dir, origin, routes, NginxProcesses::Single)
}

fn nginx_with(
    binary: &Path,
    dir: &Path,
    origin: SocketAddr,
    routes: &Routes,
    processes: NginxProcesses,
) -> Result<Target> {
    let port = free_port()?;
    let map = dir.join("routes.map");
    if routes.lookup {
        routes.write_lines(&map, "origin", ";")?;
    }
    let map_file = routes.lookup.then_some((map.as_path(), routes.hosts.len()));
    let text = nginx_config(
        dir,
        port,
        origin,
        map_file,
        None,
        running_as_root(),
        processes,
    );
    start_nginx(binary, dir, text, port, |addr| routes_ready(addr, routes))
}

/// [`nginx`] with one route and, besides its HTTP/1.1 port, a port for
/// HTTP/2 with prior knowledge (h2c), in the same server block: the
/// HTTP/2 floods' target. Returns the h2c address too.
pub fn nginx_h2c(binary: &Path, dir: &Path, origin: SocketAddr) -> Result<(Target, SocketAddr)> {
    let (port, h2c) = (free_port()?, free_port()?);
    let routes = Routes::one();
    let text = nginx_config(
        dir,
        port,
        origin,
        None,
        Some(h2c),
        running_as_root(),
        NginxProcesses::MasterAndWorker,
    );
    let target = start_nginx(binary, dir, text, port, |addr| routes_ready(addr, &routes))?;
    Ok((target, SocketAddr::from(([127, 0, 0, 1], h2c))))
}

/// Starts nginx (master + one worker) with an HTTPS listener serving
/// `certs`; `ready` is asked until it succeeds.
pub fn nginx_tls(
    binary: &Path,
    dir: &Path,
    certs: &CertPair,
    ready: impl FnMut(SocketAddr) -> Result<()>,
) -> Result<Target> {
    let port = free_port()?;
    let text = nginx_tls_config(dir, port, certs, running_as_root());
    start_nginx(binary, dir, text, port, ready)
}

/// Starts nginx (master + one worker) with an HTTPS listener serving
/// `certs` that proxies to `origin` (the `https` scenario); `ready` is asked
/// until it succeeds.
pub fn nginx_https(
    binary: &Path,
    dir: &Path,
    origin: SocketAddr,
    certs: &CertPair,
    ready: impl FnMut(SocketAddr) -> Result<()>,
) -> Result<Target> {
    let port = free_port()?;
    let text = nginx_https_config(dir, port, origin, certs, running_as_root());
    start_nginx(binary, dir, text, port, ready)
}

/// Writes `text` to `dir/nginx.conf`, has nginx check it, starts nginx in
/// the foreground and waits until `ready` succeeds on `127.0.0.1:port`.
fn start_nginx(
    binary: &Path,
    dir: &Path,
    text: String,
    port: u16,
    ready: impl FnMut(SocketAddr) -> Result<()>,
) -> Result<Target> {
    let conf = dir.join("nginx.conf");
    fs::write(&conf, &text).with_context(|| format!("writing {}", conf.display()))?;
    let args = |cmd: &mut Command| {
        // -e: nginx opens its error log before reading the config; without it
        // that is /var/log/nginx/error.log.
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"));
    };
    let mut test = Command::new(binary);
    args(&mut test);
    let check = test
        .arg("-t")
        .output()
        .with_context(|| format!("running {} -t", binary.display()))?;
    if !check.status.success() {
        bail!(
            "nginx rejected {}:\n{}",
            conf.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let mut cmd = Command::new(binary);
    args(&mut cmd);
    let mut stop = Command::new(binary);
    args(&mut stop);
    stop.args(["-s", "quit"]);
    let mut proc = Proc::spawn("nginx", cmd, dir.join("nginx.log"), Some(stop))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until_ready("nginx", addr, Some(&mut proc), ready)
        .with_context(|| format!("see also {}/error.log", dir.display()))?;
    Ok(Target {
        kind: TargetKind::Nginx,
        addr,
        proc: Some(proc),
        config: Some(("nginx.conf".into(), text)),
        api_addr: None,
    })
}

/// [`origin_ready`] for the probe hosts of `routes`.
pub fn routes_ready(addr: SocketAddr, routes: &Routes) -> Result<()> {
    routes
        .probe_hosts()
        .iter()
        .try_for_each(|host| origin_ready(addr, host))
}

/// One probe: `GET /` with `Host: host` answered with 200 and the origin's
/// body; a 200 of the proxy's own (a portal page, say) does not count.
pub fn origin_ready(addr: SocketAddr, host: &str) -> Result<()> {
    match probe(addr, host)? {
        Probe::Ready => Ok(()),
        Probe::NotOrigin(status) => {
            bail!("answered {status:?} for {host}, not the origin's body")
        }
    }
}

/// Polls `ready(addr)` until it succeeds, failing after [`READY_DEADLINE`]
/// with its last error and the end of the process's log, or as soon as the
/// process exits.
pub fn wait_until_ready(
    name: &str,
    addr: SocketAddr,
    mut proc: Option<&mut Proc>,
    mut ready: impl FnMut(SocketAddr) -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        check_interrupted()?;
        if let Some(p) = proc.as_deref_mut() {
            p.ensure_running()?;
        }
        let last = match ready(addr) {
            Ok(()) => return Ok(()),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
            let tail = proc.map(|p| p.log_tail()).unwrap_or_default();
            bail!(
                "{name} at {addr} not ready after {READY_DEADLINE:?}; last attempt: {last}\n{tail}"
            );
        }
        sleep(Duration::from_millis(50));
    }
}

enum Probe {
    Ready,
    NotOrigin(String),
}

/// One request on a fresh connection with `Connection: close`, read to EOF.
fn probe(addr: SocketAddr, host: &str) -> Result<Probe> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sessiongate-bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(1 << 20).read_to_end(&mut response)?;
    let status_line = response
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .unwrap_or_default();
    let ok = status_line.split_whitespace().nth(1) == Some("200");
    let from_origin = response.windows(MARKER.len()).any(|w| w == MARKER);
    Ok(if ok && from_origin {
        Probe::Ready
    } else {
        Probe::NotOrigin(status_line)
    })
}

/// Finds `name` on PATH, then in the sbin directories that a non-root PATH
/// usually lacks (Debian installs nginx in /usr/sbin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_config_keeps_everything_in_dir() {
        let origin = SocketAddr::from(([127, 0, 0, 1], 9));
        let m = NginxProcesses::MasterAndWorker;
        let text = nginx_config(Path::new("/tmp/x y"), 8080, origin, None, None, true, m);
        assert!(text.starts_with("user nobody nogroup;"));
        assert!(text.contains("pid \"/tmp/x y/nginx.pid\";"));
        assert!(text.contains("keepalive 64;"));
        assert!(text.contains("server 127.0.0.1:9;"));
        assert!(text.contains("listen 127.0.0.1:8080;"));
        assert!(text.contains("proxy_pass http://origin;"));
        assert!(text.contains("proxy_set_header Connection $connection_upgrade;"));
        assert!(!text.contains("map $host"));
        assert!(!nginx_config(Path::new("/t"), 1, origin, None, None, false, m).contains("user "));
        assert!(!text.contains("master_process"));
        assert!(!text.contains("http2"));
        let h2 = nginx_config(Path::new("/t"), 1, origin, None, Some(2), false, m);
        assert!(h2.contains("listen 127.0.0.1:1;\n        listen 127.0.0.1:2 http2;"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn nginx_config_as_a_single_process() {
        let origin = SocketAddr::from(([127, 0, 0, 1], 9));
        let text = nginx_config(
            Path::new("/t"),
            1,
            origin,
            None,
            None,
            false,
            NginxProcesses::Single,
        );
        assert!(text.starts_with("worker_processes 1;\nmaster_process off;\ndaemon off;\n"));
        assert!(text.contains("proxy_pass http://origin;"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn nginx_config_with_a_route_map() {
        let origin = SocketAddr::from(([127, 0, 0, 1], 9));
        let map = Path::new("/tmp/w/routes.map");
        let text = nginx_config(
            Path::new("/tmp/w"),
            1,
            origin,
            Some((map, 100_000)),
            None,
            false,
            NginxProcesses::MasterAndWorker,
        );
        assert!(text.contains("map_hash_max_size 200000;"));
        assert!(text.contains("include \"/tmp/w/routes.map\";"));
        assert!(text.contains("return 404;"));
        assert!(text.contains("proxy_pass http://$route;"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn routes_files_and_probes() -> Result<()> {
        let many = Routes::many(3);
        assert_eq!(many.hosts[2], "r2.routes.test");
        assert_eq!(many.probe_hosts(), vec!["r0.routes.test", "r2.routes.test"]);
        assert_eq!(Routes::one().probe_hosts(), vec![HOST]);
        let dir = crate::procs::TempDir::new("bench-test-routes")?;
        let path = dir.path().join("routes.map");
        many.write_lines(&path, "origin", ";")?;
        assert_eq!(
            fs::read_to_string(&path)?,
            "r0.routes.test origin;\nr1.routes.test origin;\nr2.routes.test origin;\n"
        );
        Ok(())
    }

    #[test]
    fn abridged_routes_keep_the_first_entry() {
        let text = "[gateway]\nx = 1\n\n[[routes]]\nhost = \"a\"\n\n[[routes]]\nhost = \"b\"\n";
        let short = abridge_routes(text, 2);
        assert!(short.contains("host = \"a\""));
        assert!(!short.contains("host = \"b\""));
        assert!(short.ends_with("# ... 1 more [[routes]] like it, one per host\n"));
    }

    #[test]
    fn nginx_tls_config_serves_the_pair() {
        let certs = CertPair {
            dir: PathBuf::from("/tmp/w/certs"),
            name: "bench.test".into(),
        };
        let text = nginx_tls_config(Path::new("/tmp/w/nginx"), 8443, &certs, false);
        assert!(text.starts_with("worker_processes 1;"));
        assert!(text.contains("listen 127.0.0.1:8443 ssl;"));
        assert!(text.contains("ssl_certificate \"/tmp/w/certs/bench.test.crt\";"));
        assert!(text.contains("ssl_certificate_key \"/tmp/w/certs/bench.test.key\";"));
        assert!(text.contains("ssl_protocols TLSv1.2 TLSv1.3;"));
        assert!(text.contains("ssl_session_tickets on;"));
        assert!(text.contains(&format!("ssl_ciphers {MOZILLA_INTERMEDIATE_CIPHERS};")));
        assert!(!MOZILLA_INTERMEDIATE_CIPHERS.contains(char::is_whitespace));
        // Balanced braces: the preamble leaves `http {` open for the caller.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn nginx_https_config_proxies_over_tls() {
        let certs = CertPair {
            dir: PathBuf::from("/tmp/w/certs"),
            name: "bench.test".into(),
        };
        let origin = SocketAddr::from(([127, 0, 0, 1], 9));
        let text = nginx_https_config(Path::new("/tmp/w/nginx"), 8443, origin, &certs, false);
        assert!(text.contains("listen 127.0.0.1:8443 ssl http2;"));
        assert!(text.contains("server_name bench.test *.bench.test;"));
        assert!(text.contains("ssl_certificate \"/tmp/w/certs/bench.test.crt\";"));
        assert!(text.contains(&format!("ssl_ciphers {MOZILLA_INTERMEDIATE_CIPHERS};")));
        assert!(text.contains("keepalive_requests 1000000;"));
        assert!(text.contains("server 127.0.0.1:9;\n        keepalive 64;"));
        assert!(text.contains("proxy_pass http://origin;"));
        assert!(text.contains("proxy_set_header X-Forwarded-Proto $scheme;"));
        assert!(!text.contains("return 200"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn sessiongate_config_shape() -> Result<()> {
        let config = SgConfig {
            gateway: SgGateway {
                http_listen: "127.0.0.1:1".into(),
                https_listen: Some(String::new()),
                base_domains: vec!["localhost".into()],
                portal_host: Some("localhost".into()),
                max_connections_per_ip: PER_IP,
            },
            control_plane: SgControlPlane {
                listen: "127.0.0.1:2".into(),
                data_dir: "/tmp/a \"b\"/data".into(),
            },
            tls: None,
            log: NO_ACCESS_LOG,
            routes: vec![SgRoute {
                host: HOST.into(),
                upstream: "http://127.0.0.1:3".into(),
            }],
        };
        let text = toml::to_string(&config)?;
        assert!(text.contains("[gateway]"));
        assert!(text.contains("[control_plane]"));
        assert!(text.contains("[[routes]]"));
        assert!(text.contains("host = \"app.localhost\""));
        assert!(text.contains("[log]\naccess_log = false"));
        assert!(text.contains("https_listen = \"\""));
        assert!(text.contains("max_connections_per_ip = 10000"));
        assert!(!text.contains("[tls]"));
        Ok(())
    }

    #[test]
    fn sessiongate_tls_config_shape() -> Result<()> {
        let config = SgConfig {
            gateway: SgGateway {
                http_listen: "127.0.0.1:1".into(),
                https_listen: Some("127.0.0.1:2".into()),
                base_domains: vec!["bench.test".into()],
                portal_host: None,
                max_connections_per_ip: PER_IP,
            },
            control_plane: SgControlPlane {
                listen: "127.0.0.1:3".into(),
                data_dir: "/tmp/w/sg-data".into(),
            },
            tls: Some(SgTls {
                certs_dir: "/tmp/w/certs".into(),
                default_certificate: "bench.test".into(),
                generate_dev_certificate: false,
            }),
            log: NO_ACCESS_LOG,
            routes: Vec::new(),
        };
        let text = toml::to_string(&config)?;
        assert!(text.contains("https_listen = \"127.0.0.1:2\""));
        assert!(text.contains("[tls]"));
        assert!(text.contains("generate_dev_certificate = false"));
        assert!(!text.contains("portal_host"));
        assert!(!text.contains("routes"));
        Ok(())
    }
}
