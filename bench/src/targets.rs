//! The three targets: the origin itself, sessiongate and nginx, and how to
//! start each one and know it is ready.

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

use crate::origin::MARKER;
use crate::procs::{check_interrupted, running_as_root, Proc};
use crate::wrk::HOST;

/// The admin token sessiongate is started with. The admin API is not used;
/// the value only has to satisfy sessiongate's minimum length (16).
const ADMIN_TOKEN: &str = "bench-token-not-a-secret";

/// How long a proxy gets to answer its first request through to the origin.
const READY_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    Direct,
    Sessiongate,
    Nginx,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Sessiongate => "sessiongate",
            Self::Nginx => "nginx",
        }
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
}

impl Target {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
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
    wait_ready("direct", origin, None)?;
    Ok(Target {
        kind: TargetKind::Direct,
        addr: origin,
        proc: None,
        config: None,
    })
}

#[derive(Serialize)]
struct SgConfig {
    gateway: SgGateway,
    control_plane: SgControlPlane,
    routes: Vec<SgRoute>,
}

#[derive(Serialize)]
struct SgGateway {
    http_listen: String,
    base_domains: Vec<String>,
    portal_host: String,
}

#[derive(Serialize)]
struct SgControlPlane {
    listen: String,
    data_dir: String,
}

#[derive(Serialize)]
struct SgRoute {
    host: String,
    upstream: String,
}

/// Starts `sessiongate serve` with one static route to the origin.
pub fn sessiongate(binary: &Path, dir: &Path, origin: SocketAddr) -> Result<Target> {
    let port = free_port()?;
    let data_dir = dir.join("data");
    fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let config = SgConfig {
        gateway: SgGateway {
            http_listen: format!("127.0.0.1:{port}"),
            base_domains: vec!["localhost".into()],
            portal_host: "localhost".into(),
        },
        control_plane: SgControlPlane {
            listen: format!("127.0.0.1:{}", free_port()?),
            data_dir: data_dir.to_string_lossy().into_owned(),
        },
        routes: vec![SgRoute {
            host: HOST.into(),
            upstream: format!("http://{origin}"),
        }],
    };
    let text = toml::to_string(&config).context("serialising sessiongate.toml")?;
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
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_ready("sessiongate", addr, Some(&mut proc))?;
    Ok(Target {
        kind: TargetKind::Sessiongate,
        addr,
        proc: Some(proc),
        config: Some(("sessiongate.toml".into(), text)),
    })
}

/// The nginx configuration: one worker, upstream keep-alive, everything
/// (pid, logs, temp paths) inside `dir` so that no system state is touched.
pub fn nginx_config(dir: &Path, port: u16, origin: SocketAddr, as_root: bool) -> String {
    let d = dir.display();
    // As root, the compiled-in worker user is nobody:nobody, and Debian has
    // no group "nobody".
    let user = if as_root {
        "user nobody nogroup;\n"
    } else {
        ""
    };
    format!(
        r#"{user}worker_processes 1;
daemon off;
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

    upstream origin {{
        server {origin};
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port};
        server_name {HOST};

        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#
    )
}

/// Starts nginx (master + one worker) in the foreground.
pub fn nginx(binary: &Path, dir: &Path, origin: SocketAddr) -> Result<Target> {
    let port = free_port()?;
    let text = nginx_config(dir, port, origin, running_as_root());
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
    wait_ready("nginx", addr, Some(&mut proc))
        .with_context(|| format!("see also {}/error.log", dir.display()))?;
    Ok(Target {
        kind: TargetKind::Nginx,
        addr,
        proc: Some(proc),
        config: Some(("nginx.conf".into(), text)),
    })
}

/// Polls until `addr` answers `GET /` with a 200 that carries the origin's
/// body: a 200 of the proxy's own (a portal page, say) does not count.
fn wait_ready(name: &str, addr: SocketAddr, mut proc: Option<&mut Proc>) -> Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        check_interrupted()?;
        if let Some(p) = proc.as_deref_mut() {
            p.ensure_running()?;
        }
        let last = match probe(addr) {
            Ok(Probe::Ready) => return Ok(()),
            Ok(Probe::NotOrigin(status)) => format!("answered {status:?}, not the origin's body"),
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
fn probe(addr: SocketAddr) -> Result<Probe> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: sessiongate-bench\r\nConnection: close\r\n\r\n"
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
        let text = nginx_config(Path::new("/tmp/x y"), 8080, origin, true);
        assert!(text.starts_with("user nobody nogroup;"));
        assert!(text.contains("pid \"/tmp/x y/nginx.pid\";"));
        assert!(text.contains("keepalive 64;"));
        assert!(text.contains("server 127.0.0.1:9;"));
        assert!(text.contains("listen 127.0.0.1:8080;"));
        assert!(!nginx_config(Path::new("/t"), 1, origin, false).contains("user "));
    }

    #[test]
    fn sessiongate_config_shape() -> Result<()> {
        let config = SgConfig {
            gateway: SgGateway {
                http_listen: "127.0.0.1:1".into(),
                base_domains: vec!["localhost".into()],
                portal_host: "localhost".into(),
            },
            control_plane: SgControlPlane {
                listen: "127.0.0.1:2".into(),
                data_dir: "/tmp/a \"b\"/data".into(),
            },
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
        Ok(())
    }
}
