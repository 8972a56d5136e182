//! The peers besides nginx: haproxy (Debian's package) and
//! configurable-http-proxy (chp, JupyterHub's proxy, from npm), configured
//! like nginx is: one worker thread or process, keep-alive to the origin,
//! no request logging, WebSocket upgrades passed through, and the same
//! routes as every other target.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use hyper::Method;

use crate::api::{Api, Call};
use crate::procs::Proc;
use crate::targets::{free_port, routes_ready, wait_until_ready, Routes, Target, TargetKind};

/// The token chp's REST API is started with (`CONFIGPROXY_AUTH_TOKEN`).
const CHP_TOKEN: &str = "bench-chp-token-not-a-secret";

/// Route additions in flight at once when loading chp's routes: what
/// JupyterHub uses (its proxy client allows 10 concurrent requests).
const CHP_API_CONCURRENCY: usize = 10;

/// The haproxy configuration: `nbthread 1` (nginx runs one worker), no
/// `log` line (so no logging), keep-alive on both sides with
/// `http-reuse always` (idle origin connections are shared between client
/// connections, as nginx's `keepalive` pool does), `timeout tunnel` for
/// upgraded connections. With `map_file` (lines `<host> origin`), the
/// lower-cased `Host` picks the backend and unknown hosts answer 404.
pub fn haproxy_config(port: u16, origin: SocketAddr, map_file: Option<&Path>) -> String {
    let routing = match map_file {
        Some(file) => format!(
            "    use_backend %[req.hdr(host),lower,map({},not_found)]",
            file.display()
        ),
        None => "    default_backend origin".to_owned(),
    };
    format!(
        r#"global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 30s
    timeout http-keep-alive 75s
    timeout tunnel 1h

frontend bench
    bind 127.0.0.1:{port}
{routing}

backend origin
    server origin {origin}

backend not_found
    http-request return status 404
"#
    )
}

/// Starts haproxy in the foreground (`-db`, a single process) with `routes`.
pub fn haproxy(binary: &Path, dir: &Path, origin: SocketAddr, routes: &Routes) -> Result<Target> {
    let port = free_port()?;
    let map = dir.join("routes.map");
    if routes.lookup {
        routes.write_lines(&map, "origin", "")?;
    }
    let text = haproxy_config(port, origin, routes.lookup.then_some(map.as_path()));
    let conf = dir.join("haproxy.cfg");
    fs::write(&conf, &text).with_context(|| format!("writing {}", conf.display()))?;
    let check = Command::new(binary)
        .arg("-c")
        .arg("-f")
        .arg(&conf)
        .output()
        .with_context(|| format!("running {} -c", binary.display()))?;
    if !check.status.success() {
        bail!(
            "haproxy rejected {}:\n{}{}",
            conf.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let mut cmd = Command::new(binary);
    cmd.arg("-db").arg("-f").arg(&conf).current_dir(dir);
    let mut proc = Proc::spawn("haproxy", cmd, dir.join("haproxy.log"), None)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until_ready("haproxy", addr, Some(&mut proc), |addr| {
        routes_ready(addr, routes)
    })?;
    Ok(Target {
        kind: TargetKind::Haproxy,
        addr,
        proc: Some(proc),
        config: Some(("haproxy.cfg".into(), text)),
        api_addr: None,
    })
}

/// The arguments chp is started with: host routing (the host is the first
/// path segment of a route), errors only in its log.
pub fn chp_args(port: u16, api_port: u16) -> Vec<String> {
    [
        "--ip",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--api-ip",
        "127.0.0.1",
        "--api-port",
        &api_port.to_string(),
        "--host-routing",
        "--log-level",
        "error",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts chp (one Node process), adds a route per host of `routes` through
/// its REST API (`POST /api/routes/<host>`), and waits until the first and
/// last hosts reach the origin through it.
pub fn chp(binary: &Path, dir: &Path, origin: SocketAddr, routes: &Routes) -> Result<Target> {
    chp_like(TargetKind::Chp, binary, &[], dir, origin, routes)
}

/// [`chp`], but `sessiongate chp`: the same command line and API calls.
pub fn sessiongate_chp(
    binary: &Path,
    dir: &Path,
    origin: SocketAddr,
    routes: &Routes,
) -> Result<Target> {
    chp_like(
        TargetKind::SessiongateChp,
        binary,
        &["chp"],
        dir,
        origin,
        routes,
    )
}

fn chp_like(
    kind: TargetKind,
    binary: &Path,
    first: &[&str],
    dir: &Path,
    origin: SocketAddr,
    routes: &Routes,
) -> Result<Target> {
    let name = kind.name();
    let (port, api_port) = (free_port()?, free_port()?);
    let mut args: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    args.extend(chp_args(port, api_port));
    let mut cmd = Command::new(binary);
    cmd.args(&args)
        .current_dir(dir)
        .env("CONFIGPROXY_AUTH_TOKEN", CHP_TOKEN);
    let mut proc = Proc::spawn(name, cmd, dir.join(format!("{name}.log")), None)?;
    let api_addr = SocketAddr::from(([127, 0, 0, 1], api_port));
    let api = Api::new(api_addr, &format!("token {CHP_TOKEN}"))?;
    wait_until_ready(&format!("{name} API"), api_addr, Some(&mut proc), |_| {
        api.call_ok(Call::new(Method::GET, "/api/routes", None))
            .map(drop)
    })?;
    let body = format!("{{\"target\": \"http://{origin}\"}}");
    let calls: Vec<Call> = routes
        .hosts
        .iter()
        .map(|host| {
            Call::new(
                Method::POST,
                format!("/api/routes/{host}"),
                Some(body.clone()),
            )
        })
        .collect();
    let took = api
        .all_ok(calls, CHP_API_CONCURRENCY)
        .with_context(|| format!("adding {name}'s routes"))?;
    if routes.hosts.len() > 1 {
        eprintln!(
            "{name}: {} routes added through its API in {:.1} s ({:.0} routes/s, {CHP_API_CONCURRENCY} in flight)",
            routes.hosts.len(),
            took.as_secs_f64(),
            routes.hosts.len() as f64 / took.as_secs_f64().max(1e-9)
        );
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until_ready(name, addr, Some(&mut proc), |addr| {
        routes_ready(addr, routes)
    })?;
    let description = format!(
        "CONFIGPROXY_AUTH_TOKEN=... {} {}\n# then, for each of the {} host(s), through the API:\n\
         # POST /api/routes/<host> {body}\n",
        binary.display(),
        args.join(" "),
        routes.hosts.len()
    );
    Ok(Target {
        kind,
        addr,
        proc: Some(proc),
        config: Some(("command line".into(), description)),
        api_addr: Some(api_addr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_config_one_route() {
        let origin = SocketAddr::from(([127, 0, 0, 1], 9));
        let text = haproxy_config(8080, origin, None);
        assert!(text.contains("nbthread 1"));
        assert!(text.contains("http-reuse always"));
        assert!(text.contains("option http-keep-alive"));
        assert!(text.contains("bind 127.0.0.1:8080"));
        assert!(text.contains("default_backend origin"));
        assert!(text.contains("server origin 127.0.0.1:9"));
        assert!(!text.contains("\n    log "));
    }

    #[test]
    fn haproxy_config_with_a_route_map() {
        let origin = SocketAddr::from(([127, 0, 0, 1], 9));
        let text = haproxy_config(1, origin, Some(Path::new("/tmp/w/routes.map")));
        assert!(
            text.contains("use_backend %[req.hdr(host),lower,map(/tmp/w/routes.map,not_found)]")
        );
        assert!(!text.contains("default_backend"));
        assert!(text.contains("http-request return status 404"));
    }

    #[test]
    fn chp_routes_by_host() {
        let args = chp_args(1, 2);
        assert!(args.contains(&"--host-routing".to_owned()));
        assert_eq!(args.iter().position(|a| a == "--api-port"), Some(6));
        assert_eq!(args[7], "2");
    }
}
