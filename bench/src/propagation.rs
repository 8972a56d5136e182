//! `churn --gateways N`: route changes made through the control-plane API,
//! and how long each takes to reach every gateway that follows the control
//! plane (issue 17: the propagation delay, from the API's answer to the
//! change being applied on each gateway, at p50 and p99, at 1,000 changes/s
//! and 100k routes).
//!
//! One `sessiongate control-plane` and N `sessiongate gateway
//! --control-plane URL` processes run on loopback, each in a directory of
//! its own in the temp dir, each gateway with a gateway token of its own
//! (`gw1`, `gw2`, …). The upstreams are two in-process origins that answer
//! with their own name ([`UPSTREAMS`]), so that which upstream a route
//! points at shows in the answer. The loaded sessions (`load-<i>`, all at
//! the first upstream) are made through the API, then the gateways are
//! waited for until they hold the table version of the last one. Then the
//! churn cycle of [`crate::churn::Driver`] runs at the rate asked: PATCH of
//! a loaded session's upstream (one upstream to the other), POST of a
//! session `churn-<n>` (first upstream), PATCH, and DELETE of the oldest
//! `churn-` session once more than [`KEEP_CREATED`] are there.
//!
//! `control_plane.gateway_ack_timeout_ms` is 0: the API answers at once
//! instead of after every connected gateway acknowledged the change (up to
//! a second), which would hide the delay inside the API's latency. One
//! change in `--probe-every`, at random, is probed: from just before its
//! API call is sent, every gateway is asked for the changed session's host
//! (`GET /`, `Host: <session>.localhost`) until it answers the new way: the
//! new upstream's name, or for a DELETE anything but an upstream's answer.
//! The gateway applied the change between the sending of the last probe
//! that saw the old state and the end of the first that saw the new one;
//! the middle of that window, counted from the end of the API's answer
//! (negative when before it), is the propagation delay. Probes go back to
//! back for the first [`BACK_TO_BACK`], then every millisecond, up to
//! [`PROBE_DEADLINE`]; a change not seen by then is an error.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{header, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use testkit::origin::{Origin, Reply as OriginReply};
use testkit::XorShift;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::api::{Api, Call, Reply};
use crate::churn::{
    self, percentile, ApiStats, Change, ChurnArgs, ChurnState, Driver, Observer, OnAnswer,
};
use crate::procs::{check_interrupted, Proc, TempDir};
use crate::report;
use crate::side_by_side::{absolute, load_average, write_section, Check};
use crate::targets::{self, free_port, Routes, TargetKind, ADMIN_TOKEN};
use crate::wrk::{self, Load, Script, WrkResult};

/// The upstreams' names: what each answers, on every path.
const UPSTREAMS: [&str; 2] = ["upstream-a", "upstream-b"];

/// The control-plane replicas' process names, with --database postgres.
const REPLICA_NAMES: [&str; 8] = [
    "replica1", "replica2", "replica3", "replica4", "replica5", "replica6", "replica7", "replica8",
];

/// `--database`: the stores compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Databases {
    Sqlite,
    Postgres,
    Both,
}

/// One control-plane store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn label(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// The gateways' token names, and their processes' names.
const GATEWAY_NAMES: [&str; 8] = ["gw1", "gw2", "gw3", "gw4", "gw5", "gw6", "gw7", "gw8"];

/// Sessions created that the DELETE step leaves alone, so that none is
/// deleted while its creation is still being probed: 4 s of creates at
/// 1,000 changes/s. 20 with `--smoke`, so that its one short run deletes
/// some.
const KEEP_CREATED: usize = 1000;
const KEEP_CREATED_SMOKE: usize = 20;

/// How long a probed change may take to show on a gateway before it counts
/// as not applied.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// Probes go back to back for this long after the API call is sent, then
/// every 1 ms.
const BACK_TO_BACK: Duration = Duration::from_millis(20);

/// One probe request's limit.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the issue asks of the API side: the rate held (as `churn` counts it).
const RATE_SHARE: f64 = 0.95;

/// Markers around the section `--write` maintains in a results file.
const BEGIN: &str = "<!-- churn-gateways:begin (written by `bench churn --gateways N --write`; replaced on every run) -->";
const END: &str = "<!-- churn-gateways:end -->";

const TITLE: &str = "Route churn across gateways: propagation";

/// The same with `--database`: the engines side by side.
const BEGIN_DB: &str = "<!-- churn-gateways-databases:begin (written by `bench churn --gateways N --database both --write`; replaced on every run) -->";
const END_DB: &str = "<!-- churn-gateways-databases:end -->";

const TITLE_DB: &str = "Route churn across gateways: SQLite and PostgreSQL replicas";

/// What `--database` adds to [`TEXT`].
const TEXT_DB: &str = "\
With `--database`: on SQLite, one control plane (its store in its data dir,
as above); on PostgreSQL, a throwaway cluster started by the harness in the
temp dir (`initdb`, `pg_ctl`, one database, the server's defaults but for
`max_connections = 200`: `fsync`, `full_page_writes` and
`synchronous_commit` on, as SQLite's `synchronous = FULL` commits are
synced) and `--replicas` control-plane replicas on that one database, each
in a directory of its own, each applying the others' changes (the change
log, `LISTEN`/`NOTIFY`). Gateway i follows replica i (round robin; its
`--control-plane` names that replica only), and every API change goes to
replica 1: the gateways on replica 1 measure the same path as on SQLite,
the others the path through the database to another replica (its
commit, the notification, the other replica's read of the change log and
its table update, then its stream to its gateways). The gateway tokens are
made through replica 1. The engines run one after the other, each with its
own processes, sessions and runs, on the same machine.";

/// What the written section's figures are.
const TEXT: &str = "\
One `sessiongate control-plane` and N `sessiongate gateway --control-plane
URL` processes on loopback, each gateway with a gateway token of its own; the
upstreams are two in-process origins that answer with their own name. The
loaded sessions (`load-<i>`, public) are made through the API before the runs
and the gateways are waited for until they hold the table version of the
last one. During each run the harness makes changes through the REST API at
the rate given, in turn: PATCH of a loaded session's upstream to the other
origin, POST of a new session `churn-<n>`, PATCH again, and DELETE of the
oldest `churn-` session (once more than 1,000 are there, 20 with `--smoke`,
so that a session lives a while). `control_plane.gateway_ack_timeout_ms = 0`:
the API answers without waiting for the gateways' acknowledgements (with the
default, 1 s, the answer would come only once every gateway applied the
change). One
change in `--probe-every`, at random, is probed on every gateway: from just
before the API call is sent, `GET /` with the session's host until the gateway
answers the new way (the new origin's name; after a DELETE, anything else);
back to back for 20 ms, then every 1 ms. The gateway applied the change
between the sending of the last probe that saw the old state and the end of
the first that saw the new one; propagation is the middle of that window,
counted from the end of the API's answer (negative: the gateway had applied
the change before the answer reached the client). A change not seen within
5 s or a failed API call (any status but 2xx, or no answer in 10 s) is an
error. A probe request that fails is retried and counted: a change that
removes or retargets a route has the gateway close that route's connections,
a probe's among them. The machine is shared and noisy, and every process
here (control plane, gateways, the harness's API client, prober and origins)
shares its cores.";

/// The resolved parameters (after `--smoke`).
#[derive(Debug, Clone)]
struct Plan {
    gateways: usize,
    routes: usize,
    rate: u64,
    rounds: u32,
    duration: u64,
    warmup: u64,
    probe_every: usize,
    concurrency: usize,
    keep_created: usize,
    /// wrk and its connections, with `--load`.
    load: Option<(PathBuf, u32)>,
    smoke: bool,
    /// With --database: the engines, in order; `None` for the one SQLite
    /// control plane of issue 17 (its own section).
    engines: Option<Vec<Engine>>,
    /// Control-plane replicas on PostgreSQL.
    replicas: usize,
}

impl Plan {
    fn resolve(args: &ChurnArgs) -> Result<Self> {
        let c = &args.common;
        if let Some(t) = &c.targets {
            if t.iter().any(|&k| k != TargetKind::Sessiongate) {
                bail!("--targets: churn --gateways measures sessiongate only");
            }
        }
        let smoke = c.smoke;
        let load = if args.load {
            let wrk = match &c.wrk {
                Some(p) if p.is_file() => absolute(p),
                Some(p) => bail!("wrk not found at {}", p.display()),
                None => targets::find_program("wrk").context(
                    "--load: wrk not found on PATH: install it with `apt-get install -y wrk`",
                )?,
            };
            Some((wrk, if smoke { 4 } else { c.connections }))
        } else {
            None
        };
        let gateways = usize::try_from(args.gateways.unwrap_or(2))?;
        let engines = args.database.map(|d| match d {
            Databases::Sqlite => vec![Engine::Sqlite],
            Databases::Postgres => vec![Engine::Postgres],
            Databases::Both => vec![Engine::Sqlite, Engine::Postgres],
        });
        let default_routes = match (smoke, engines.is_some()) {
            (true, _) => 200,
            (false, true) => 10_000,
            (false, false) => 100_000,
        };
        Ok(Self {
            gateways: gateways.clamp(1, GATEWAY_NAMES.len()),
            routes: usize::try_from(args.routes.unwrap_or(default_routes))?,
            rate: args.rate.unwrap_or(if smoke { 200 } else { 1000 }),
            rounds: if smoke { 1 } else { c.rounds },
            duration: if smoke { 1 } else { c.duration },
            warmup: if smoke { 0 } else { c.warmup },
            probe_every: usize::try_from(args.probe_every.unwrap_or(if smoke { 2 } else { 10 }))?,
            concurrency: usize::try_from(args.api_concurrency)?,
            keep_created: if smoke {
                KEEP_CREATED_SMOKE
            } else {
                KEEP_CREATED
            },
            load,
            smoke,
            engines,
            replicas: usize::try_from(args.replicas.unwrap_or(2))?.clamp(1, REPLICA_NAMES.len()),
        })
    }
}

// ---------------------------------------------------------------------------
// The processes.

#[derive(Serialize)]
struct CpConfig {
    gateway: CpGateway,
    control_plane: CpSection,
    log: LogSection,
}

/// What the control plane reads of `[gateway]`: the table settings it
/// sends its gateways.
#[derive(Serialize)]
struct CpGateway {
    base_domains: Vec<String>,
    portal_host: String,
}

#[derive(Serialize)]
struct CpSection {
    listen: String,
    data_dir: String,
    /// Empty: SQLite in `data_dir`.
    #[serde(skip_serializing_if = "String::is_empty")]
    database: String,
    gateway_ack_timeout_ms: u64,
}

#[derive(Serialize)]
struct LogSection {
    access_log: bool,
}

#[derive(Serialize)]
struct GwConfig {
    gateway: GwGateway,
    log: LogSection,
}

#[derive(Serialize)]
struct GwGateway {
    http_listen: String,
    https_listen: String,
    admin_listen: String,
    data_dir: String,
    /// The harness's probes and wrk all come from 127.0.0.1 (as in
    /// [`crate::targets`]).
    max_connections_per_ip: u32,
}

struct ControlPlane {
    name: &'static str,
    proc: Proc,
    api: SocketAddr,
    config: String,
}

struct Gateway {
    name: &'static str,
    /// The control plane (replica) it follows: an index into the control
    /// planes.
    follows: usize,
    proc: Proc,
    http: SocketAddr,
    admin: SocketAddr,
    config: String,
}

/// `binary` with no inherited `SESSIONGATE_*` variable (any would override
/// a key of the configuration written here) and `RUST_LOG`.
fn sessiongate_command(binary: &Path, dir: &Path, rust_log: &str) -> Command {
    let mut cmd = Command::new(binary);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("SESSIONGATE_") {
            cmd.env_remove(var);
        }
    }
    cmd.current_dir(dir).env("RUST_LOG", rust_log);
    cmd
}

fn write_toml(path: &Path, config: &impl Serialize) -> Result<String> {
    let text = toml::to_string(config).context("serialising a configuration")?;
    std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    Ok(text)
}

/// Starts `sessiongate control-plane` named `name` in `dir`, on `database`
/// (empty: SQLite in its data dir), and waits for its `/readyz`.
fn start_control_plane(
    binary: &Path,
    dir: &Path,
    name: &'static str,
    database: &str,
) -> Result<ControlPlane> {
    std::fs::create_dir_all(dir.join("data"))
        .with_context(|| format!("creating {}/data", dir.display()))?;
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = CpConfig {
        gateway: CpGateway {
            base_domains: vec!["localhost".into()],
            portal_host: "localhost".into(),
        },
        control_plane: CpSection {
            listen: api.to_string(),
            data_dir: dir.join("data").to_string_lossy().into_owned(),
            database: database.to_owned(),
            gateway_ack_timeout_ms: 0,
        },
        log: LogSection { access_log: false },
    };
    let path = dir.join("control-plane.toml");
    let text = write_toml(&path, &config)?;
    // With no wait for acknowledgements every write finds the gateways
    // behind and the API warns of it: one log line per change, which is
    // not what is measured.
    let mut cmd = sessiongate_command(binary, dir, "warn,control_plane::api=error");
    cmd.arg("control-plane")
        .arg("--config")
        .arg(&path)
        .env("SESSIONGATE_ADMIN_TOKEN", ADMIN_TOKEN);
    let mut proc = Proc::spawn(name, cmd, dir.join("control-plane.log"), None)?;
    targets::wait_until_ready(name, api, Some(&mut proc), |addr| {
        ok_200(addr, "localhost", "/readyz")
    })?;
    Ok(ControlPlane {
        name,
        proc,
        api,
        config: text,
    })
}

/// Starts `sessiongate gateway` number `i` in `dir`, following control
/// plane number `follows` at `cp` with `token`, and waits until its
/// `/readyz` says it holds a table.
fn start_gateway(
    binary: &Path,
    dir: &Path,
    i: usize,
    (follows, cp): (usize, SocketAddr),
    token: &str,
) -> Result<Gateway> {
    let name = GATEWAY_NAMES[i];
    std::fs::create_dir_all(dir.join("data"))
        .with_context(|| format!("creating {}/data", dir.display()))?;
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = GwConfig {
        gateway: GwGateway {
            http_listen: http.to_string(),
            https_listen: String::new(),
            admin_listen: admin.to_string(),
            data_dir: dir.join("data").to_string_lossy().into_owned(),
            max_connections_per_ip: 10_000,
        },
        log: LogSection { access_log: false },
    };
    let path = dir.join("gateway.toml");
    let text = write_toml(&path, &config)?;
    let mut cmd = sessiongate_command(binary, dir, "warn");
    cmd.arg("gateway")
        .arg("--config")
        .arg(&path)
        .arg("--control-plane")
        .arg(format!("http://{cp}"))
        .env("SESSIONGATE_GATEWAY_TOKEN", token);
    let mut proc = Proc::spawn(name, cmd, dir.join("gateway.log"), None)?;
    targets::wait_until_ready(name, admin, Some(&mut proc), |addr| {
        ok_200(addr, "localhost", "/readyz")
    })?;
    Ok(Gateway {
        name,
        follows,
        proc,
        http,
        admin,
        config: text,
    })
}

/// One blocking `GET path` with `Host: host` on a fresh connection:
/// status and body.
fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sessiongate-bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(16 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path} at {addr}: no status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn ok_200(addr: SocketAddr, host: &str, path: &str) -> Result<()> {
    match http_get(addr, host, path)? {
        (200, _) => Ok(()),
        (status, body) => bail!("{path} answered {status}: {}", body.trim()),
    }
}

/// A gauge's value in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        if n != name {
            return None;
        }
        let v: f64 = v.trim().parse().ok()?;
        Some(v as u64)
    })
}

/// What a `/metrics` says of its route table: (version, routes, stream
/// connected). The control plane's has no connected gauge (1 then).
fn table_metrics(addr: SocketAddr) -> Result<(u64, u64, bool)> {
    let (status, text) = http_get(addr, "localhost", "/metrics")?;
    if status != 200 {
        bail!("/metrics at {addr} answered {status}");
    }
    let version = metric(&text, "sessiongate_route_table_version")
        .with_context(|| format!("no sessiongate_route_table_version at {addr}/metrics"))?;
    let routes = metric(&text, "sessiongate_route_table_routes").unwrap_or(0);
    let connected = metric(&text, "sessiongate_gateway_stream_connected").is_none_or(|c| c == 1);
    Ok((version, routes, connected))
}

/// A string field of a flat JSON object (a token, say: no escapes).
fn json_string(body: &str, key: &str) -> Option<String> {
    let at = body.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = body[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// Waits until every replica holds as many routes as the first (with one
/// control plane, at once), then until every gateway is connected and
/// holds at least the version of the control plane it follows (read once
/// they agree); returns the first control plane's version and how long it
/// took. Called when no change is being made.
fn wait_in_step(
    cps: &mut [ControlPlane],
    gateways: &mut [Gateway],
    within: Duration,
) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut targets: Option<Vec<u64>> = None;
    loop {
        check_interrupted()?;
        let mut behind = Vec::new();
        for cp in cps.iter_mut() {
            cp.proc.ensure_running()?;
        }
        if targets.is_none() {
            let mut tables = Vec::new();
            for cp in cps.iter() {
                tables.push(table_metrics(cp.api)?);
            }
            let first_routes = tables[0].1;
            for (cp, t) in cps.iter().zip(&tables).skip(1) {
                if t.1 != first_routes {
                    behind.push(format!(
                        "{} at {} routes, {} at {first_routes}",
                        cp.name, t.1, cps[0].name
                    ));
                }
            }
            if behind.is_empty() {
                targets = Some(tables.iter().map(|t| t.0).collect());
            }
        }
        for g in gateways.iter_mut() {
            g.proc.ensure_running()?;
            let Some(target) = targets.as_ref().map(|t| t[g.follows]) else {
                continue;
            };
            match table_metrics(g.admin) {
                Ok((v, _, true)) if v >= target => {}
                Ok((v, _, connected)) => behind.push(format!(
                    "{} at {v}{}",
                    g.name,
                    if connected { "" } else { ", not connected" }
                )),
                Err(e) => behind.push(format!("{}: {e:#}", g.name)),
            }
        }
        if let (true, Some(t)) = (behind.is_empty(), &targets) {
            return Ok((t[0], started.elapsed()));
        }
        if started.elapsed() > within {
            bail!(
                "gateways not at their control plane's table version ({}) within {within:?}: {}",
                targets.map_or("replicas apart".into(), |t| format!("{t:?}")),
                behind.join("; ")
            );
        }
        sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The probes.

/// The kinds of change, as the API is asked for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Patch,
    Create,
    Delete,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Patch, Kind::Create, Kind::Delete];

    fn of(method: &Method) -> Self {
        match *method {
            Method::POST => Self::Create,
            Method::DELETE => Self::Delete,
            _ => Self::Patch,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Patch => "PATCH (upstream moved)",
            Self::Create => "POST (new session)",
            Self::Delete => "DELETE",
        }
    }
}

/// What a gateway answers once it applied a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// This upstream's name, with 200.
    Upstream(&'static str),
    /// Anything but an upstream's answer.
    Gone,
}

impl Expect {
    fn met(self, status: u16, body: &[u8]) -> bool {
        let from = |name: &str| status == 200 && body == name.as_bytes();
        match self {
            Self::Upstream(name) => from(name),
            Self::Gone => !UPSTREAMS.iter().any(|n| from(n)),
        }
    }
}

/// One probed change on one gateway.
#[derive(Debug, Clone)]
struct Probed {
    round: u32,
    gateway: usize,
    kind: Kind,
    /// When the gateway applied the change, from the API's answer, in µs:
    /// the middle of [`Probed::bracket_us`]; negative when before the
    /// answer. `None` when not seen within [`PROBE_DEADLINE`].
    delay_us: Option<f64>,
    /// How wide the window is in which the change was applied: from the
    /// sending of the last probe that saw the old state (or of the API
    /// call) to the end of the first that saw the new one.
    bracket_us: Option<f64>,
    /// The gateway had certainly applied it when the API's answer came:
    /// the first new answer ended before it.
    before_answer: bool,
    /// Probe requests sent.
    probes: u32,
    /// Probe requests that failed (no answer, a broken connection).
    errors: u32,
    first_error: Option<String>,
}

/// The table versions the API's answers named during the measured runs.
#[derive(Debug, Default, Clone)]
struct Versions {
    first: Option<u64>,
    last: Option<u64>,
    /// Answers without `Sessiongate-Table-Version`.
    missing: u64,
}

struct ProbeState {
    client: Client<HttpConnector, Empty<Bytes>>,
    gateways: Vec<SocketAddr>,
    /// Upstream port to upstream name.
    upstreams: [(u16, &'static str); 2],
    every: usize,
    rng: Mutex<XorShift>,
    /// The run the answers belong to; 0 during the warm-up (nothing is
    /// probed or counted then).
    round: AtomicU32,
    in_flight: AtomicUsize,
    results: Mutex<Vec<Probed>>,
    versions: Mutex<Versions>,
}

/// The [`Observer`] that probes the changes: probe tasks run on a runtime
/// of their own, so that the API client's ticks are not delayed by them.
struct Prober {
    runtime: Runtime,
    state: Arc<ProbeState>,
}

impl Prober {
    fn new(
        gateways: Vec<SocketAddr>,
        upstreams: [(u16, &'static str); 2],
        every: usize,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-probe")
            .enable_all()
            .build()
            .context("building the probes' runtime")?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            runtime,
            state: Arc::new(ProbeState {
                client,
                gateways,
                upstreams,
                every: every.max(1),
                rng: Mutex::new(XorShift(0x9a7e_3a75)),
                round: AtomicU32::new(0),
                in_flight: AtomicUsize::new(0),
                results: Mutex::new(Vec::new()),
                versions: Mutex::new(Versions::default()),
            }),
        })
    }

    fn set_round(&self, round: u32) {
        self.state.round.store(round, Ordering::SeqCst);
    }

    /// Waits until every probe started has ended (each ends by
    /// [`PROBE_DEADLINE`] after its change's answer).
    fn settle(&self) -> Result<()> {
        let deadline = Instant::now() + PROBE_DEADLINE + PROBE_TIMEOUT + Duration::from_secs(1);
        while self.state.in_flight.load(Ordering::SeqCst) > 0 {
            check_interrupted()?;
            if Instant::now() > deadline {
                bail!(
                    "{} probes still running past their deadline",
                    self.state.in_flight.load(Ordering::SeqCst)
                );
            }
            sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn results(&self) -> Vec<Probed> {
        lock(&self.state.results).clone()
    }

    fn versions(&self) -> Versions {
        lock(&self.state.versions).clone()
    }
}

impl Observer for Prober {
    fn sending(&self, change: &Change) -> Option<OnAnswer> {
        let s = &self.state;
        let round = s.round.load(Ordering::SeqCst);
        if round == 0 {
            return None;
        }
        let answer = if lock(&s.rng).below(s.every) == 0 {
            let (tx, rx) = watch::channel(Answer::Pending);
            let expect = match change.port {
                Some(port) => Expect::Upstream(
                    s.upstreams
                        .iter()
                        .find(|(p, _)| *p == port)
                        .map_or("?", |(_, n)| n),
                ),
                None => Expect::Gone,
            };
            let kind = Kind::of(&change.call.method);
            let host = format!("{}.localhost", change.session);
            let sent = Instant::now();
            for (gateway, &addr) in s.gateways.iter().enumerate() {
                s.in_flight.fetch_add(1, Ordering::SeqCst);
                let job = Job {
                    gateway,
                    addr,
                    host: host.clone(),
                    expect,
                    kind,
                    sent,
                    answer: rx.clone(),
                    round,
                };
                self.runtime.spawn(probe(Arc::clone(s), job));
            }
            Some(tx)
        } else {
            None
        };
        let state = Arc::clone(s);
        Some(Box::new(move |reply: Option<&Reply>| {
            if let Some(reply) = reply {
                let mut v = lock(&state.versions);
                match reply.table_version {
                    Some(n) => {
                        v.first = Some(v.first.map_or(n, |f| f.min(n)));
                        v.last = Some(v.last.map_or(n, |l| l.max(n)));
                    }
                    None => v.missing += 1,
                }
            }
            if let Some(tx) = answer {
                tx.send_replace(match reply {
                    Some(r) => Answer::At(r.answered),
                    None => Answer::Failed,
                });
            }
        }))
    }
}

/// A probed change's API answer, as its probes learn of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Pending,
    At(Instant),
    /// The call failed: nothing to measure (it is counted by the driver).
    Failed,
}

/// One change to watch for on one gateway.
struct Job {
    gateway: usize,
    addr: SocketAddr,
    host: String,
    expect: Expect,
    kind: Kind,
    /// Just before the API call was sent.
    sent: Instant,
    answer: watch::Receiver<Answer>,
    round: u32,
}

/// Asks `job.addr` for the changed host from before the API call is sent
/// until it answers the new way, then places the moment it applied the
/// change against the API's answer.
async fn probe(state: Arc<ProbeState>, mut job: Job) {
    let (mut probes, mut errors, mut first_error) = (0u32, 0u32, None);
    // When the last probe that saw the old state was sent.
    let mut last_old = job.sent;
    let seen = loop {
        let sent = Instant::now();
        let answer = get(&state.client, job.addr, &job.host).await;
        let end = Instant::now();
        probes += 1;
        match answer {
            Ok((status, body)) if job.expect.met(status, &body) => break Some((last_old, end)),
            Ok(_) => last_old = sent,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        let waited = end - job.sent;
        if waited >= PROBE_DEADLINE {
            break None;
        }
        if waited >= BACK_TO_BACK {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let answered = tokio::time::timeout(
        PROBE_DEADLINE,
        job.answer.wait_for(|a| *a != Answer::Pending),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|a| *a);
    if let Some(Answer::At(answered)) = answered {
        let signed_us = |t: Instant| {
            if t >= answered {
                (t - answered).as_secs_f64() * 1e6
            } else {
                -((answered - t).as_secs_f64() * 1e6)
            }
        };
        lock(&state.results).push(Probed {
            round: job.round,
            gateway: job.gateway,
            kind: job.kind,
            delay_us: seen.map(|(lo, hi)| (signed_us(lo) + signed_us(hi)) / 2.0),
            bracket_us: seen.map(|(lo, hi)| (hi - lo).as_secs_f64() * 1e6),
            before_answer: seen.is_some_and(|(_, hi)| hi <= answered),
            probes,
            errors,
            first_error,
        });
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// `GET /` with `Host: host`: status and body.
async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    host: &str,
) -> Result<(u16, Bytes)> {
    let request = Request::get(format!("http://{addr}/"))
        .header(header::HOST, host)
        .header(header::USER_AGENT, "sessiongate-bench-probe")
        .body(Empty::new())
        .context("building a probe")?;
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .with_context(|| {
            format!("GET http://{host}/ at {addr}: no answer within {PROBE_TIMEOUT:?}")
        })?
        .with_context(|| format!("GET http://{host}/ at {addr}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// The run.

/// One measured run.
struct RoundStats {
    round: u32,
    api: ApiStats,
    wrk: Option<WrkResult>,
    /// CPU ticks during the run: each control plane, then each gateway.
    cpu_ticks: Vec<u64>,
}

/// Everything measured, for the report.
struct Outcome {
    /// With --database: the engine.
    engine: Option<Engine>,
    /// The control planes' names (one, or the replicas).
    cp_names: Vec<String>,
    /// Per gateway: the control plane it follows.
    follows: Vec<usize>,
    setup_line: String,
    catch_up_line: String,
    rounds: Vec<RoundStats>,
    probes: Vec<Probed>,
    versions: Versions,
    /// After the runs: (name, version, routes, connected, RSS KiB) per
    /// gateway, and each control plane's version and RSS.
    final_gateways: Vec<(String, u64, u64, bool, u64)>,
    final_cp: Vec<(u64, u64)>,
    in_step: Result<Duration, String>,
    clk_tck: u64,
    configs: Vec<(String, String)>,
    load_before: String,
}

pub fn run(args: ChurnArgs) -> Result<Vec<String>> {
    let plan = Plan::resolve(&args)?;
    let binary = args
        .common
        .sessiongate
        .clone()
        .unwrap_or_else(crate::default_sessiongate_path);
    if !binary.is_file() {
        bail!(
            "sessiongate binary not found at {}: build it first with \
             `cargo build --profile dist -p control-plane`, or point at it with --sessiongate PATH",
            binary.display()
        );
    }
    let binary = absolute(&binary);
    if cfg!(debug_assertions) && !plan.smoke {
        eprintln!(
            "warning: this is a debug build of the harness; figures mean little. \
             Use `cargo run -p bench --profile dist`."
        );
    }
    let load_before = load_average();
    let clk_tck = crate::clock_ticks()?;
    let origins_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(args.common.origin_threads).unwrap_or(2))
        .thread_name("bench-origin")
        .enable_all()
        .build()
        .context("building the origins' runtime")?;
    origins_rt.spawn(crate::watch_signals());
    let origins: Vec<Origin> = origins_rt.block_on(async {
        UPSTREAMS
            .iter()
            .map(|&name| Origin::builder(name).reply(OriginReply::Name).start())
            .collect()
    });
    let dir = TempDir::new("sessiongate-bench-gateways")?;
    eprintln!(
        "upstreams {} on {} and {} on {}; work dir {}",
        UPSTREAMS[0],
        origins[0].addr,
        UPSTREAMS[1],
        origins[1].addr,
        dir.path().display()
    );
    let Some(engines) = plan.engines.clone() else {
        let outcome = measure(
            &plan,
            &binary,
            dir.path(),
            &origins,
            clk_tck,
            load_before,
            None,
        );
        drop(origins);
        drop(origins_rt);
        let outcome = outcome?;
        let (text, problems) = report_text(&plan, &outcome);
        print!("{text}");
        if let Some(path) = &args.common.write {
            write_section(
                path,
                BEGIN,
                END,
                &section(&plan, &binary, &outcome, &text),
                &[summary_row("churn-gateways", &plan, &outcome, &problems)],
            )?;
            eprintln!("wrote the {TITLE} section of {}", path.display());
        }
        return Ok(problems);
    };
    let mut outcomes = Vec::new();
    let mut pg_version = None;
    let measured: Result<()> = engines.iter().try_for_each(|&engine| {
        let cluster = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => {
                let c = crate::postgres::Cluster::start()?;
                eprintln!("{} at {}", c.version, c.url());
                pg_version = Some(c.version.clone());
                Some(c)
            }
        };
        let outcome = measure(
            &plan,
            &binary,
            &dir.path().join(engine.label().to_ascii_lowercase()),
            &origins,
            clk_tck,
            load_average(),
            Some((engine, cluster.as_ref().map(|c| c.url()))),
        )?;
        // The replicas stopped in measure; the cluster goes now.
        drop(cluster);
        outcomes.push(outcome);
        Ok(())
    });
    drop(origins);
    drop(origins_rt);
    measured?;
    let mut problems = Vec::new();
    let mut texts = Vec::new();
    for o in &outcomes {
        let (text, p) = report_text(&plan, o);
        let label = o.engine.map_or("", Engine::label);
        problems.extend(p.into_iter().map(|p| format!("{label}: {p}")));
        texts.push(text);
    }
    let table = comparison(&plan, &outcomes);
    for text in &texts {
        print!("{text}");
    }
    print!("\n{table}");
    if let Some(path) = &args.common.write {
        let text = section_db(
            &plan,
            &binary,
            &outcomes,
            &texts,
            &table,
            pg_version.as_deref(),
            &load_before,
        );
        let rows: Vec<crate::results::Row> = outcomes
            .iter()
            .map(|o| {
                let label = o.engine.map_or("", Engine::label);
                let mine: Vec<String> = problems
                    .iter()
                    .filter(|p| p.starts_with(&format!("{label}: ")))
                    .cloned()
                    .collect();
                summary_row("churn-gateways-databases", &plan, o, &mine)
            })
            .collect();
        write_section(path, BEGIN_DB, END_DB, &text, &rows)?;
        eprintln!("wrote the {TITLE_DB} section of {}", path.display());
    }
    Ok(problems)
}

/// One engine's processes, set-up and runs. `engine`: with --database, the
/// engine and, for PostgreSQL, its database's URL (then
/// [`Plan::replicas`] replicas).
fn measure(
    plan: &Plan,
    binary: &Path,
    dir: &Path,
    origins: &[Origin],
    clk_tck: u64,
    load_before: String,
    engine: Option<(Engine, Option<String>)>,
) -> Result<Outcome> {
    let mut cps = Vec::new();
    match &engine {
        Some((_, Some(url))) => {
            for &name in REPLICA_NAMES.iter().take(plan.replicas) {
                let cp = start_control_plane(binary, &dir.join(name), name, url)?;
                eprintln!(
                    "control-plane {name} ready at {} (pid {})",
                    cp.api,
                    cp.proc.pid()
                );
                cps.push(cp);
            }
        }
        _ => {
            let cp = start_control_plane(binary, &dir.join("control-plane"), "control-plane", "")?;
            eprintln!("control plane ready at {} (pid {})", cp.api, cp.proc.pid());
            cps.push(cp);
        }
    }
    // Every change goes to the first.
    let api = Api::new(cps[0].api, &format!("Bearer {ADMIN_TOKEN}"))?;
    let mut gateways = Vec::new();
    for (i, &name) in GATEWAY_NAMES.iter().enumerate().take(plan.gateways) {
        let reply = api
            .call_ok(Call::new(
                Method::POST,
                "/api/v1/tokens",
                Some(format!("{{\"name\": \"{name}\", \"kind\": \"gateway\"}}")),
            ))
            .with_context(|| format!("making the gateway token {name}"))?;
        let token = json_string(&reply.body, "token")
            .with_context(|| format!("no token in the answer: {}", reply.body))?;
        let follows = i % cps.len();
        let g = start_gateway(
            binary,
            &dir.join(name),
            i,
            (follows, cps[follows].api),
            &token,
        )?;
        eprintln!(
            "gateway {name} following {} ready at {} (admin {}, pid {})",
            cps[follows].name,
            g.http,
            g.admin,
            g.proc.pid()
        );
        gateways.push(g);
    }
    wait_in_step(&mut cps, &mut gateways, Duration::from_secs(20))?;

    // The loaded sessions, through the API.
    api.call_ok(Call::new(
        Method::POST,
        "/api/v1/users",
        Some(format!("{{\"name\": \"{}\"}}", churn::OWNER)),
    ))?;
    let (port_a, port_b) = (origins[0].addr.port(), origins[1].addr.port());
    let calls: Vec<Call> = (0..plan.routes)
        .map(|i| {
            Call::new(
                Method::POST,
                "/api/v1/sessions",
                Some(churn::session_body(&churn::loaded_name(i), port_a)),
            )
        })
        .collect();
    let took = api
        .all_ok(calls, plan.concurrency)
        .context("creating the loaded sessions")?;
    let setup_line = format!(
        "set-up: {} sessions created through the API in {:.1} s ({:.0}/s, {} in flight)",
        plan.routes,
        took.as_secs_f64(),
        plan.routes as f64 / took.as_secs_f64().max(1e-9),
        plan.concurrency
    );
    eprintln!("{setup_line}");
    let within = Duration::from_secs(60) + Duration::from_millis(plan.routes as u64);
    let (version, caught_up) = wait_in_step(&mut cps, &mut gateways, within)?;
    let mut routes_held = Vec::new();
    for g in &gateways {
        let (_, routes, _) = table_metrics(g.admin)?;
        routes_held.push(format!("{} {routes}", g.name));
        // The first and the last loaded session answer through every gateway.
        for i in [0, plan.routes - 1] {
            let host = format!("{}.localhost", churn::loaded_name(i));
            let (status, body) = http_get(g.http, &host, "/")?;
            if status != 200 || body != UPSTREAMS[0] {
                bail!(
                    "{} answers {status} {:?} for {host}, not {}",
                    g.name,
                    body.trim(),
                    UPSTREAMS[0]
                );
            }
        }
    }
    let catch_up_line = format!(
        "gateways at the set-up's last table version ({version}) {:.2} s after its last answer; \
         routes held: {}",
        caught_up.as_secs_f64(),
        routes_held.join(", ")
    );
    eprintln!("{catch_up_line}");

    let wrk_load = match &plan.load {
        Some((wrk, connections)) => {
            let hosts = Routes {
                hosts: (0..plan.routes)
                    .map(|i| format!("{}.localhost", churn::loaded_name(i)))
                    .collect(),
                lookup: true,
            };
            let hosts_file = dir.join("gateway-hosts.txt");
            hosts.write_lines(&hosts_file, "", "")?;
            let script = dir.join("gateway-hosts.lua");
            let text = Script {
                hosts_file: Some(hosts_file),
                check_close: false,
            }
            .text();
            std::fs::write(&script, text)
                .with_context(|| format!("writing {}", script.display()))?;
            Some((
                wrk.clone(),
                *connections,
                Load {
                    script: Some(script),
                    random_host: true,
                    ..Load::default()
                },
            ))
        }
        None => None,
    };

    let prober = Arc::new(Prober::new(
        gateways.iter().map(|g| g.http).collect(),
        [(port_a, UPSTREAMS[0]), (port_b, UPSTREAMS[1])],
        plan.probe_every,
    )?);
    let observer: Arc<dyn Observer> = prober.clone();
    let driver = Driver::new(
        api,
        plan.rate,
        plan.concurrency,
        (port_a, port_b),
        ChurnState::new(plan.routes, port_a, plan.keep_created),
        Some(observer),
    );
    let mut rounds = Vec::new();
    let first = if plan.warmup > 0 { 0 } else { 1 };
    for round in first..=plan.rounds {
        check_interrupted()?;
        let secs = if round == 0 {
            plan.warmup
        } else {
            plan.duration
        };
        if round == 0 {
            eprintln!(
                "warm-up: {secs} s of changes at {}/s, not recorded",
                plan.rate
            );
        }
        prober.set_round(round);
        let mut ticks_before = Vec::new();
        for cp in &mut cps {
            ticks_before.push(cp.proc.cpu_ticks()?);
        }
        for g in &mut gateways {
            ticks_before.push(g.proc.cpu_ticks()?);
        }
        let churning = driver.start()?;
        let wrk_result = match (&wrk_load, round) {
            (Some((wrk, connections, load)), 1..) => Some(wrk::run(
                wrk,
                &format!("http://{}", gateways[0].http),
                load,
                *connections,
                secs,
            )),
            _ => {
                let end = Instant::now() + Duration::from_secs(secs);
                let mut interrupted = Ok(());
                while Instant::now() < end {
                    if let Err(e) = check_interrupted() {
                        interrupted = Err(e);
                        break;
                    }
                    sleep(Duration::from_millis(50));
                }
                interrupted?;
                None
            }
        };
        // Stop the changes even when wrk failed.
        let api_stats = churning.stop()?;
        prober.set_round(0);
        let wrk_result = wrk_result.transpose()?;
        prober.settle()?;
        let mut ticks = Vec::new();
        for (cp, before) in cps.iter_mut().zip(&ticks_before) {
            ticks.push(cp.proc.cpu_ticks()?.saturating_sub(*before));
        }
        for (g, before) in gateways.iter_mut().zip(&ticks_before[cps.len()..]) {
            ticks.push(g.proc.cpu_ticks()?.saturating_sub(*before));
        }
        if round == 0 {
            continue;
        }
        let probes = prober.results();
        let mut line = format!(
            "{}round {round}/{}  API {}",
            engine
                .as_ref()
                .map_or(String::new(), |(e, _)| format!("{}: ", e.label())),
            plan.rounds,
            api_stats.describe()
        );
        for (i, g) in gateways.iter().enumerate() {
            let delays = delays_us(probes.iter().filter(|p| p.round == round && p.gateway == i));
            let _ = write!(
                line,
                "  {}: p50 {} p99 {} ({} probed)",
                g.name,
                lat(percentile(&delays, 0.50)),
                lat(percentile(&delays, 0.99)),
                delays.len()
            );
        }
        if let Some(w) = &wrk_result {
            let _ = write!(
                line,
                "  wrk on {}: {:.0} req/s, p99 {}{}",
                gateways[0].name,
                w.req_per_sec,
                lat(w.p99_us),
                match w.error_summary() {
                    e if e.is_empty() => String::new(),
                    e => format!(", ERRORS: {e}"),
                }
            );
        }
        eprintln!("{line}");
        rounds.push(RoundStats {
            round,
            api: api_stats,
            wrk: wrk_result,
            cpu_ticks: ticks,
        });
    }
    drop(driver);

    // Every gateway back at the control plane's version, and what each holds.
    let in_step = wait_in_step(&mut cps, &mut gateways, Duration::from_secs(10))
        .map(|(_, d)| d)
        .map_err(|e| format!("{e:#}"));
    let mut final_cp = Vec::new();
    for cp in &mut cps {
        let (cp_version, _, _) = table_metrics(cp.api)?;
        final_cp.push((cp_version, cp.proc.rss_kib()?));
    }
    let mut final_gateways = Vec::new();
    for g in &mut gateways {
        let (v, routes, connected) = table_metrics(g.admin)?;
        final_gateways.push((g.name.to_owned(), v, routes, connected, g.proc.rss_kib()?));
    }
    let mut configs = Vec::new();
    for cp in cps.iter().take(1) {
        let name = if cps.len() > 1 {
            format!("{}/control-plane.toml", cp.name)
        } else {
            "control-plane.toml".to_owned()
        };
        configs.push((name, cp.config.clone()));
    }
    if let Some(g) = gateways.first() {
        configs.push((format!("{}/gateway.toml", g.name), g.config.clone()));
    }
    let outcome = Outcome {
        engine: engine.map(|(e, _)| e),
        cp_names: cps.iter().map(|c| c.name.to_owned()).collect(),
        follows: gateways.iter().map(|g| g.follows).collect(),
        setup_line,
        catch_up_line,
        rounds,
        probes: prober.results(),
        versions: prober.versions(),
        final_gateways,
        final_cp,
        in_step,
        clk_tck,
        configs,
        load_before,
    };
    // The gateways stop before the control planes: no reconnecting noise.
    drop(gateways);
    drop(cps);
    Ok(outcome)
}

/// The summary row of one outcome: the changes/s achieved of those asked
/// and the propagation to all gateways (p50, p99), judged as the report's
/// rate check; a run with problems does not meet it.
fn summary_row(name: &str, plan: &Plan, o: &Outcome, problems: &[String]) -> crate::results::Row {
    let achieved = report::median(
        &o.rounds
            .iter()
            .map(|s| s.api.achieved_per_sec())
            .collect::<Vec<_>>(),
    );
    let delays = delays_us(o.probes.iter());
    let mut row = crate::results::Row::new(name, o.engine.map_or("", Engine::label));
    row.sessiongate = format!(
        "{} changes/s ({}/s asked) at {} routes, {} gateways{}; propagation p50 {}, p99 {}",
        crate::results::count(achieved),
        plan.rate,
        crate::results::count(plan.routes as f64),
        plan.gateways,
        if plan.load.is_some() {
            ", under wrk load"
        } else {
            ""
        },
        lat(percentile(&delays, 0.50)),
        lat(percentile(&delays, 0.99)),
    );
    row.peer = "–".into();
    row.ratio = format!(
        "{:.0}% of the rate asked",
        100.0 * achieved / plan.rate.max(1) as f64
    );
    row.target = format!(
        "{} changes/s sustained (≥ {:.0}%)",
        plan.rate,
        RATE_SHARE * 100.0
    );
    row.met = Some(achieved >= plan.rate as f64 * RATE_SHARE && problems.is_empty());
    if !problems.is_empty() {
        row.note = format!("FLAGGED: {}", problems.join("; "));
    }
    row
}

/// The delays of `probes` that were seen, in µs.
fn delays_us<'a>(probes: impl Iterator<Item = &'a Probed>) -> Vec<f64> {
    probes.filter_map(|p| p.delay_us).collect()
}

// ---------------------------------------------------------------------------
// The report.

/// The report's tables and lines (stdout and the written section alike),
/// and the problems that fail the run.
fn report_text(plan: &Plan, o: &Outcome) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let mut errors = Vec::new();
    let labels = gateway_labels(o);
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\nchurn --gateways {}{}: {} routes, {} changes/s asked, {} round(s) of {} s, one change in {} probed on every gateway\n",
        plan.gateways,
        engine_title(o).map_or(String::new(), |t| format!(" on {t}")),
        plan.routes,
        plan.rate,
        plan.rounds,
        plan.duration,
        plan.probe_every
    );
    let _ = writeln!(
        r,
        "| gateway | changes | probed | propagation p50 | p99 | max | applied before the answer | not seen in 5 s | window p50 | window p99 | failed probes |"
    );
    let _ = writeln!(r, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (gi, name) in names.iter().enumerate() {
        let rows: Vec<(&str, Option<Kind>)> = std::iter::once(("all", None))
            .chain(Kind::ALL.iter().map(|k| (k.label(), Some(*k))))
            .collect();
        for (label, kind) in rows {
            let set: Vec<&Probed> = o
                .probes
                .iter()
                .filter(|p| p.gateway == gi && kind.is_none_or(|k| p.kind == k))
                .collect();
            let delays = delays_us(set.iter().copied());
            let windows: Vec<f64> = set.iter().filter_map(|p| p.bracket_us).collect();
            let before = set.iter().filter(|p| p.before_answer).count();
            let unseen = set.iter().filter(|p| p.delay_us.is_none()).count();
            let failed: u32 = set.iter().map(|p| p.errors).sum();
            let cell = |label: &str| {
                if kind.is_none() {
                    format!("**{label}**")
                } else {
                    label.to_owned()
                }
            };
            let _ = writeln!(
                r,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(label),
                set.len(),
                cell(&lat(percentile(&delays, 0.50))),
                cell(&lat(percentile(&delays, 0.99))),
                lat(delays.iter().copied().fold(f64::NAN, f64::max)),
                if set.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.0}%", 100.0 * before as f64 / set.len() as f64)
                },
                flag(unseen as u64),
                lat(percentile(&windows, 0.50)),
                lat(percentile(&windows, 0.99)),
                failed,
            );
            if kind.is_none() {
                if unseen > 0 {
                    problems.push(format!(
                        "{name}: {unseen} probed changes not seen within 5 s"
                    ));
                }
                if let Some(first) = set.iter().find_map(|p| p.first_error.clone()) {
                    errors.push(format!(
                        "{name}: {failed} probe requests failed and were retried (first: {first})"
                    ));
                }
                if set.is_empty() {
                    problems.push(format!("{name}: no change probed"));
                }
            }
        }
    }
    let _ = writeln!(r);

    // The API side, pooled over the runs.
    let pooled: Vec<f64> = o
        .rounds
        .iter()
        .flat_map(|s| s.api.latencies_us.iter().copied())
        .collect();
    let achieved = report::median(
        &o.rounds
            .iter()
            .map(|s| s.api.achieved_per_sec())
            .collect::<Vec<_>>(),
    );
    let ok: u64 = o.rounds.iter().map(|s| s.api.ok).sum();
    let failed: u64 = o.rounds.iter().map(|s| s.api.failed).sum();
    let skipped: u64 = o.rounds.iter().map(|s| s.api.skipped).sum();
    let mut lines = vec![Check {
        what: format!("churn --gateways: {} changes/s sustained", plan.rate),
        met: Some(achieved >= plan.rate as f64 * RATE_SHARE),
        detail: format!("{achieved:.0}/s achieved, median over runs"),
    }
    .line()];
    lines.push(format!(
        "API: {achieved:.0} changes/s achieved (median over runs) of {} asked, latency p50 {}, p99 {} \
         ({} calls pooled, answers not waiting for the gateways), {failed} failed, {skipped} ticks \
         skipped with {} calls already in flight",
        plan.rate,
        lat(percentile(&pooled, 0.50)),
        lat(percentile(&pooled, 0.99)),
        pooled.len(),
        plan.concurrency
    ));
    if failed > 0 {
        problems.push(format!("{failed} API calls failed"));
    }
    for e in o.rounds.iter().flat_map(|s| &s.api.first_errors) {
        lines.push(format!("failed API call: {e}"));
    }
    if let (Some(first), Some(last)) = (o.versions.first, o.versions.last) {
        let versions = (last - first + 1).max(1);
        lines.push(format!(
            "table versions named by the answers of the measured runs: {first} to {last}, {versions} \
             for {ok} changes ({:.2} changes per version)",
            ok as f64 / versions as f64
        ));
    }
    if o.versions.missing > 0 {
        problems.push(format!(
            "{} API answers without Sessiongate-Table-Version",
            o.versions.missing
        ));
    }
    let probe_requests: u64 = o.probes.iter().map(|p| u64::from(p.probes)).sum();
    lines.push(format!(
        "probes: {probe_requests} requests to the gateways for {} probed changes and gateways \
         ({:.1} each)",
        o.probes.len(),
        probe_requests as f64 / o.probes.len().max(1) as f64
    ));
    if o.cp_names.len() > 1 {
        for (label, other) in [
            ("the replica that took the writes", false),
            ("another replica", true),
        ] {
            let delays = delays_us(o.probes.iter().filter(|p| o.on_other(p.gateway) == other));
            lines.push(format!(
                "propagation to the gateways on {label}: p50 {}, p99 {} ({} probed)",
                lat(percentile(&delays, 0.50)),
                lat(percentile(&delays, 0.99)),
                delays.len()
            ));
        }
    }
    lines.extend(errors);
    lines.push(o.setup_line.clone());
    lines.push(o.catch_up_line.clone());
    // CPU per change over the measured runs.
    let per_change = |i: usize| {
        let ticks: u64 = o
            .rounds
            .iter()
            .map(|s| s.cpu_ticks.get(i).copied().unwrap_or(0))
            .sum();
        if ok == 0 {
            f64::NAN
        } else {
            ticks as f64 * 1e6 / o.clk_tck as f64 / ok as f64
        }
    };
    let n_cps = o.cp_names.len();
    let mut cpu: Vec<String> = o
        .cp_names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("{} {:.0} µs", cp_label(name), per_change(i)))
        .collect();
    for (i, g) in o.final_gateways.iter().enumerate() {
        cpu.push(format!("{} {:.0} µs", g.0, per_change(i + n_cps)));
    }
    lines.push(format!(
        "CPU per change (utime + stime over the measured runs, all load included): {}",
        cpu.join(", ")
    ));
    let mut state: Vec<String> = o
        .cp_names
        .iter()
        .zip(&o.final_cp)
        .map(|(name, (version, rss))| {
            format!(
                "{} version {version}, RSS {}",
                cp_label(name),
                report::fmt_mib(*rss)
            )
        })
        .collect();
    for (name, version, routes, connected, rss) in &o.final_gateways {
        state.push(format!(
            "{name} version {version}, {routes} routes, {}, RSS {}",
            if *connected {
                "connected"
            } else {
                "NOT connected"
            },
            report::fmt_mib(*rss)
        ));
    }
    lines.push(format!("after the runs: {}", state.join("; ")));
    match &o.in_step {
        Ok(d) => lines.push(format!(
            "every gateway at {} version {:.2} s after the last run",
            if n_cps > 1 {
                "its replica's (every replica holding the same routes)"
            } else {
                "the control plane's"
            },
            d.as_secs_f64()
        )),
        Err(e) => {
            lines.push(format!("after the runs: {e}"));
            problems.push(format!("after the runs: {e}"));
        }
    }
    for s in &o.rounds {
        if let Some(w) = &s.wrk {
            let errors = w.error_summary();
            if !errors.is_empty() {
                problems.push(format!("round {}: wrk errors: {errors}", s.round));
            }
            if w.requests == 0 {
                problems.push(format!("round {}: wrk made no requests", s.round));
            }
        }
    }
    if o.rounds.iter().any(|s| s.wrk.is_some()) {
        let rps: Vec<f64> = o
            .rounds
            .iter()
            .filter_map(|s| s.wrk.as_ref())
            .map(|w| w.req_per_sec)
            .collect();
        lines.push(format!(
            "wrk load on {} during the runs: {:.0} req/s (median), random Host among the loaded sessions",
            names.first().copied().unwrap_or("?"),
            report::median(&rps)
        ));
    } else {
        lines.push("no proxy load: the gateways serve only the probes".into());
    }
    for line in &lines {
        let _ = writeln!(r, "- {line}");
    }
    (r, problems)
}

impl Outcome {
    /// Whether gateway `gi` follows another replica than the one the API
    /// changes go to.
    fn on_other(&self, gi: usize) -> bool {
        self.follows.get(gi).is_some_and(|&f| f != 0)
    }
}

/// `control-plane` as the report says it; a replica's name as it is.
fn cp_label(name: &str) -> &str {
    if name == "control-plane" {
        "control plane"
    } else {
        name
    }
}

/// The gateways' names, with the replica each follows when there are
/// several.
fn gateway_labels(o: &Outcome) -> Vec<String> {
    o.final_gateways
        .iter()
        .enumerate()
        .map(|(gi, g)| match o.follows.get(gi) {
            Some(&f) if o.cp_names.len() > 1 => format!("{} ({})", g.0, o.cp_names[f]),
            _ => g.0.clone(),
        })
        .collect()
}

/// "SQLite, one control plane" or "PostgreSQL, 2 replicas"; `None`
/// without --database.
fn engine_title(o: &Outcome) -> Option<String> {
    let engine = o.engine?;
    Some(match o.cp_names.len() {
        1 => format!("{}, one control plane", engine.label()),
        n => format!("{}, {n} replicas", engine.label()),
    })
}

/// The engines side by side: a row per figure, a column per engine.
fn comparison(plan: &Plan, outcomes: &[Outcome]) -> String {
    let mut r = String::from("| |");
    let mut rule = String::from("|---|");
    for o in outcomes {
        let _ = write!(r, " {} |", engine_title(o).unwrap_or_default());
        rule.push_str("---:|");
    }
    let _ = writeln!(r, "\n{rule}");
    let mut row = |label: &str, cell: &dyn Fn(&Outcome) -> String| {
        let _ = write!(r, "| {label} |");
        for o in outcomes {
            let _ = write!(r, " {} |", cell(o));
        }
        r.push('\n');
    };
    let pooled = |o: &Outcome| -> Vec<f64> {
        o.rounds
            .iter()
            .flat_map(|s| s.api.latencies_us.iter().copied())
            .collect()
    };
    row(
        &format!(
            "updates/s achieved of {} asked (median over runs)",
            plan.rate
        ),
        &|o| {
            format!(
                "{:.0}",
                report::median(
                    &o.rounds
                        .iter()
                        .map(|s| s.api.achieved_per_sec())
                        .collect::<Vec<_>>()
                )
            )
        },
    );
    row("API p50", &|o| lat(percentile(&pooled(o), 0.50)));
    row("API p99", &|o| lat(percentile(&pooled(o), 0.99)));
    row("failed API calls", &|o| {
        flag(o.rounds.iter().map(|s| s.api.failed).sum())
    });
    let gateways = outcomes
        .iter()
        .map(|o| o.final_gateways.len())
        .max()
        .unwrap_or(0);
    for (gi, name) in GATEWAY_NAMES.iter().enumerate().take(gateways) {
        row(&format!("propagation p50 / p99, {name}"), &|o| {
            if gi >= o.final_gateways.len() {
                return "-".into();
            }
            let d = delays_us(o.probes.iter().filter(|p| p.gateway == gi));
            format!(
                "{} / {}{}",
                lat(percentile(&d, 0.50)),
                lat(percentile(&d, 0.99)),
                match o.follows.get(gi) {
                    Some(&f) if o.cp_names.len() > 1 => format!(" ({})", o.cp_names[f]),
                    _ => String::new(),
                }
            )
        });
    }
    for (label, other) in [
        (
            "propagation p50 / p99, gateways on the replica that took the write",
            false,
        ),
        ("propagation p50 / p99, gateways on another replica", true),
    ] {
        row(label, &|o| {
            let d = delays_us(o.probes.iter().filter(|p| o.on_other(p.gateway) == other));
            if d.is_empty() {
                "- (one control plane)".into()
            } else {
                format!(
                    "{} / {} ({} probed)",
                    lat(percentile(&d, 0.50)),
                    lat(percentile(&d, 0.99)),
                    d.len()
                )
            }
        });
    }
    row("probed changes not seen in 5 s", &|o| {
        flag(o.probes.iter().filter(|p| p.delay_us.is_none()).count() as u64)
    });
    row("CPU per change, control plane(s)", &|o| {
        let ok: u64 = o.rounds.iter().map(|s| s.api.ok).sum();
        (0..o.cp_names.len())
            .map(|i| {
                let ticks: u64 = o
                    .rounds
                    .iter()
                    .map(|s| s.cpu_ticks.get(i).copied().unwrap_or(0))
                    .sum();
                format!(
                    "{:.0} µs",
                    ticks as f64 * 1e6 / o.clk_tck as f64 / ok.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(" + ")
    });
    r
}

/// The section `--write --database` puts into the results file.
fn section_db(
    plan: &Plan,
    binary: &Path,
    outcomes: &[Outcome],
    texts: &[String],
    table: &str,
    pg_version: Option<&str>,
    load_before: &str,
) -> String {
    let command: Vec<String> = std::env::args().map(|a| report::shell_quote(&a)).collect();
    let mut r = report::section_head(TITLE_DB, load_before, &load_average());
    let version = report::version_line(&binary.to_string_lossy(), &["--version"])
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(r, "- sessiongate: `{}` ({version})", binary.display());
    if let Some(v) = pg_version {
        let _ = writeln!(r, "- PostgreSQL: {v}");
    }
    if let Some(commit) =
        report::source_commit(&["bench/src", "bench/Cargo.toml", "gateway", "control-plane"])
    {
        let _ = writeln!(r, "- Source: commit {commit}");
    }
    let _ = writeln!(r, "- Command: `{}`", command.join(" "));
    let _ = writeln!(
        r,
        "- Runs, per engine: {} gateway(s), {} routes, {} changes/s asked, {} run(s) of {} s after \
         {} s of unrecorded changes, one change in {} probed on every gateway, at most {} API calls \
         in flight; PostgreSQL with {} replica(s)",
        plan.gateways,
        plan.routes,
        plan.rate,
        plan.rounds,
        plan.duration,
        plan.warmup,
        plan.probe_every,
        plan.concurrency,
        plan.replicas
    );
    let _ = writeln!(r, "\n{TEXT}\n\n{TEXT_DB}");
    let _ = writeln!(r, "\n### Side by side\n\n{}", table.trim_end());
    let _ = writeln!(
        r,
        "\nAPI latency is pooled over the runs; propagation as below, pooled over the runs and \
         the gateways named."
    );
    for (o, text) in outcomes.iter().zip(texts) {
        let _ = writeln!(r, "\n### {}", engine_title(o).unwrap_or_else(|| "?".into()));
        let body = text
            .trim_start()
            .split_once('\n')
            .map_or(text.as_str(), |(_, rest)| rest);
        let _ = writeln!(r, "{}", body.trim_end());
        let _ = writeln!(r, "\nPer run:\n\n{}", rounds_table(o).trim_end());
    }
    let _ = writeln!(
        r,
        "\nPropagation: when the gateway applied the change, counted from the end of the API's \
         answer (negative: before it), as the middle of the window in which it did (from the \
         sending of the last probe that saw the old state to the end of the first that saw the \
         new one; window p50 is its median width). \"Applied before the answer\" counts the \
         changes whose whole window ended before the API's answer did."
    );
    let _ = writeln!(r, "\n### Configurations\n");
    for o in outcomes {
        let label = o.engine.map_or("", Engine::label);
        for (name, text) in &o.configs {
            let _ = writeln!(
                r,
                "{}",
                report::config_details(TargetKind::Sessiongate, &format!("{label}: {name}"), text)
            );
        }
    }
    r
}

/// A latency in µs, signed, or `n/a` for none (NaN: no sample).
fn lat(us: f64) -> String {
    if us.is_nan() {
        "n/a".into()
    } else if us < 0.0 {
        format!("-{}", report::fmt_latency(-us))
    } else {
        report::fmt_latency(us)
    }
}

fn flag(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else {
        format!("**{n}**")
    }
}

/// The per-run table.
fn rounds_table(o: &Outcome) -> String {
    let labels = gateway_labels(o);
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let mut r = String::from("| run | changes/s | API p50 | API p99 | failed |");
    let mut rule = String::from("|---:|---:|---:|---:|---:|");
    for name in &names {
        let _ = write!(r, " {name} probed | {name} p50 | {name} p99 |");
        rule.push_str("---:|---:|---:|");
    }
    let with_wrk = o.rounds.iter().any(|s| s.wrk.is_some());
    if with_wrk {
        r.push_str(" wrk req/s | wrk p99 |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(r, "\n{rule}");
    for s in &o.rounds {
        let _ = write!(
            r,
            "| {} | {:.0} | {} | {} | {} |",
            s.round,
            s.api.achieved_per_sec(),
            lat(percentile(&s.api.latencies_us, 0.50)),
            lat(percentile(&s.api.latencies_us, 0.99)),
            flag(s.api.failed)
        );
        for gi in 0..names.len() {
            let set: Vec<&Probed> = o
                .probes
                .iter()
                .filter(|p| p.round == s.round && p.gateway == gi)
                .collect();
            let delays = delays_us(set.iter().copied());
            let _ = write!(
                r,
                " {} | {} | {} |",
                set.len(),
                lat(percentile(&delays, 0.50)),
                lat(percentile(&delays, 0.99))
            );
        }
        if with_wrk {
            match &s.wrk {
                Some(w) => {
                    let _ = write!(r, " {:.0} | {} |", w.req_per_sec, lat(w.p99_us));
                }
                None => r.push_str(" - | - |"),
            }
        }
        r.push('\n');
    }
    r
}

/// The section `--write` puts into the results file.
fn section(plan: &Plan, binary: &Path, o: &Outcome, report_text: &str) -> String {
    let command: Vec<String> = std::env::args().map(|a| report::shell_quote(&a)).collect();
    let mut r = report::section_head(TITLE, &o.load_before, &load_average());
    let version = report::version_line(&binary.to_string_lossy(), &["--version"])
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(r, "- sessiongate: `{}` ({version})", binary.display());
    if let Some(commit) =
        report::source_commit(&["bench/src", "bench/Cargo.toml", "gateway", "control-plane"])
    {
        let _ = writeln!(r, "- Source: commit {commit}");
    }
    let _ = writeln!(r, "- Command: `{}`", command.join(" "));
    let _ = writeln!(
        r,
        "- Runs: {} gateway(s), {} routes, {} changes/s asked, {} run(s) of {} s after {} s of \
         unrecorded changes, one change in {} probed on every gateway, at most {} API calls in flight{}",
        plan.gateways,
        plan.routes,
        plan.rate,
        plan.rounds,
        plan.duration,
        plan.warmup,
        plan.probe_every,
        plan.concurrency,
        match &plan.load {
            Some((_, c)) => format!(
                "; `wrk -t1 -c{c} -d{}s --latency -s gateway-hosts.lua http://GW1/` on the first gateway",
                plan.duration
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(r, "\n{TEXT}");
    let _ = writeln!(r, "\n### Summary");
    // The report's first line repeats the run's parameters.
    let body = report_text
        .trim_start()
        .split_once('\n')
        .map_or(report_text, |(_, rest)| rest);
    let _ = writeln!(r, "{}", body.trim_end());
    let _ = writeln!(
        r,
        "\nPropagation is pooled over the runs: when the gateway applied the change, counted from \
         the end of the API's answer (negative: before it), as the middle of the window in which it \
         did (from the sending of the last probe that saw the old state to the end of the first \
         that saw the new one; window p50 is its median width). \"Applied before the answer\" \
         counts the changes whose whole window ended before the API's answer did."
    );
    let _ = writeln!(r, "\n### Per-run figures\n");
    let _ = writeln!(r, "{}", rounds_table(o));
    let _ = writeln!(r, "### Configurations\n");
    for (name, text) in &o.configs {
        let _ = writeln!(
            r,
            "{}",
            report::config_details(TargetKind::Sessiongate, name, text)
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        assert!(Expect::Upstream(UPSTREAMS[1]).met(200, UPSTREAMS[1].as_bytes()));
        assert!(!Expect::Upstream(UPSTREAMS[1]).met(200, UPSTREAMS[0].as_bytes()));
        assert!(!Expect::Upstream(UPSTREAMS[0]).met(502, UPSTREAMS[0].as_bytes()));
        assert!(Expect::Gone.met(404, b"no such session"));
        assert!(Expect::Gone.met(200, b"a portal page"));
        assert!(!Expect::Gone.met(200, UPSTREAMS[0].as_bytes()));
    }

    #[test]
    fn metrics_and_tokens_are_read() {
        let text = "# HELP x\n# TYPE sessiongate_route_table_version gauge\n\
                    sessiongate_route_table_version 42\nsessiongate_route_table_routes 1e5\n";
        assert_eq!(metric(text, "sessiongate_route_table_version"), Some(42));
        assert_eq!(
            metric(text, "sessiongate_route_table_routes"),
            Some(100_000)
        );
        assert_eq!(metric(text, "sessiongate_gateway_stream_connected"), None);
        let body = r#"{"name":"gw1","kind":"gateway", "token" : "sgt_abc-123"}"#;
        assert_eq!(json_string(body, "token").as_deref(), Some("sgt_abc-123"));
        assert_eq!(json_string(body, "missing"), None);
    }

    #[test]
    fn configurations_have_what_each_process_reads() -> Result<()> {
        let cp = toml::to_string(&CpConfig {
            gateway: CpGateway {
                base_domains: vec!["localhost".into()],
                portal_host: "localhost".into(),
            },
            control_plane: CpSection {
                listen: "127.0.0.1:1".into(),
                data_dir: "/tmp/x/data".into(),
                database: String::new(),
                gateway_ack_timeout_ms: 0,
            },
            log: LogSection { access_log: false },
        })?;
        assert!(cp.contains("gateway_ack_timeout_ms = 0"));
        assert!(!cp.contains("http_listen"), "a gateway-only key: {cp}");
        let gw = toml::to_string(&GwConfig {
            gateway: GwGateway {
                http_listen: "127.0.0.1:2".into(),
                https_listen: String::new(),
                admin_listen: "127.0.0.1:3".into(),
                data_dir: "/tmp/x/gw1/data".into(),
                max_connections_per_ip: 10_000,
            },
            log: LogSection { access_log: false },
        })?;
        assert!(gw.contains("https_listen = \"\""));
        assert!(gw.contains("admin_listen = \"127.0.0.1:3\""));
        Ok(())
    }

    #[test]
    fn database_mode_defaults() -> Result<()> {
        let mut args = ChurnArgs::with(crate::side_by_side::CommonArgs::default());
        args.gateways = Some(2);
        let plan = Plan::resolve(&args)?;
        assert_eq!(plan.routes, 100_000);
        assert!(plan.engines.is_none());
        args.database = Some(Databases::Both);
        let plan = Plan::resolve(&args)?;
        assert_eq!(plan.routes, 10_000);
        assert_eq!(plan.engines, Some(vec![Engine::Sqlite, Engine::Postgres]));
        assert_eq!(plan.replicas, 2);
        args.replicas = Some(3);
        args.routes = Some(500);
        let plan = Plan::resolve(&args)?;
        assert_eq!((plan.routes, plan.replicas), (500, 3));
        Ok(())
    }

    #[test]
    fn kinds_follow_the_method() {
        assert_eq!(Kind::of(&Method::PATCH), Kind::Patch);
        assert_eq!(Kind::of(&Method::POST), Kind::Create);
        assert_eq!(Kind::of(&Method::DELETE), Kind::Delete);
    }
}
