//! What every wrk scenario shares: the common options, finding the tools,
//! the origin and the temp dir, starting the targets, the warm-up and the
//! interleaved rounds, the summary with its ratios to nginx and its target
//! checks, and the section `--write` puts into a results file.
//!
//! A scenario is a list of [`Run`]s, each a case (a route count, churn or
//! not, …) on one target with one wrk load; every round runs all of them
//! once, in alternating order, so that slow phases of a noisy machine hit
//! every run alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::churn::Driver;
use crate::h2load::H2Load;
use crate::peers;
use crate::procs::{check_interrupted, TempDir};
use crate::report::{self, Rss, Sample, Summary};
use crate::results;
use crate::targets::{self, Routes, Target, TargetKind};
use crate::wrk::{self, Load, Script, WrkResult};
use crate::ws_load::{self, WsLoadConfig};
use testkit::origin::{self, Origin};
use testkit::WsEcho;

/// Options every wrk scenario takes.
#[derive(Args, Clone, Debug, Default)]
pub struct CommonArgs {
    /// Rounds; each round runs every case against every target once,
    /// interleaved so that noise spreads evenly.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,
    /// wrk connections (-c); wrk uses one thread.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Unrecorded warm-up seconds per case and target before the first
    /// round (0: none).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// CI mode: 1 round of 1 s with 4 connections, no warm-up, and the
    /// scenario's small sizes; fails if any target served errors or no
    /// requests, never on speed.
    #[arg(long, conflicts_with_all = ["rounds", "duration", "connections", "warmup"])]
    pub smoke: bool,
    /// Also write the report as this scenario's section of this markdown
    /// file (the section is replaced, the rest of the file kept).
    #[arg(long, value_name = "PATH")]
    pub write: Option<PathBuf>,
    /// Targets to measure, comma-separated: direct, sessiongate, nginx,
    /// haproxy, chp [default: all of them; churn: sessiongate].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub targets: Option<Vec<TargetKind>>,
    /// The sessiongate binary [default: the one beside this harness, built
    /// with the same profile].
    #[arg(long, value_name = "PATH")]
    pub sessiongate: Option<PathBuf>,
    /// The nginx binary [default: nginx from PATH or /usr/sbin].
    #[arg(long, value_name = "PATH")]
    pub nginx: Option<PathBuf>,
    /// The haproxy binary [default: haproxy from PATH or /usr/sbin].
    #[arg(long, value_name = "PATH")]
    pub haproxy: Option<PathBuf>,
    /// The configurable-http-proxy command [default: from PATH].
    #[arg(long, value_name = "PATH")]
    pub chp: Option<PathBuf>,
    /// The wrk binary [default: wrk from PATH].
    #[arg(long, value_name = "PATH")]
    pub wrk: Option<PathBuf>,
    /// Worker threads of the in-process origin.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub origin_threads: u64,
}

/// All the targets, in the order they run within a round.
pub const ALL_TARGETS: [TargetKind; 6] = [
    TargetKind::Direct,
    TargetKind::Sessiongate,
    TargetKind::Nginx,
    TargetKind::Haproxy,
    TargetKind::Chp,
    TargetKind::SessiongateChp,
];

/// The resolved run parameters (after `--smoke`).
#[derive(Debug, Clone)]
pub struct Plan {
    pub rounds: u32,
    pub duration: u64,
    pub connections: u32,
    pub warmup: u64,
    pub targets: Vec<TargetKind>,
    pub smoke: bool,
}

impl Plan {
    pub fn wants(&self, kind: TargetKind) -> bool {
        self.targets.contains(&kind)
    }
}

/// The programs a run needs, all found before anything starts.
pub struct Tools {
    pub wrk: PathBuf,
    pub sessiongate: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub chp: Option<PathBuf>,
}

/// `path` made absolute: the proxies start in their own directories.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn find(given: &Option<PathBuf>, name: &str, install: &str) -> Result<PathBuf> {
    match given {
        Some(path) if path.is_file() => Ok(absolute(path)),
        Some(path) => bail!("{name} not found at {}", path.display()),
        None => targets::find_program(name).with_context(|| {
            format!("{name} not found on PATH or in /usr/sbin: install it with `{install}`, or leave it out with --targets")
        }),
    }
}

impl Tools {
    fn find(args: &CommonArgs, plan: &Plan) -> Result<Self> {
        let wrk = find(&args.wrk, "wrk", "apt-get install -y wrk")?;
        let nginx = plan
            .wants(TargetKind::Nginx)
            .then(|| find(&args.nginx, "nginx", "apt-get install -y nginx"))
            .transpose()?;
        let haproxy = plan
            .wants(TargetKind::Haproxy)
            .then(|| find(&args.haproxy, "haproxy", "apt-get install -y haproxy"))
            .transpose()?;
        let chp = plan
            .wants(TargetKind::Chp)
            .then(|| {
                find(
                    &args.chp,
                    "configurable-http-proxy",
                    "npm install -g configurable-http-proxy",
                )
            })
            .transpose()?;
        let sessiongate = if plan.wants(TargetKind::Sessiongate)
            || plan.wants(TargetKind::SessiongateChp)
        {
            let path = args
                .sessiongate
                .clone()
                .unwrap_or_else(crate::default_sessiongate_path);
            if !path.is_file() {
                bail!(
                    "sessiongate binary not found at {}: build it first with \
                     `cargo build --profile dist -p control-plane`, point at it with --sessiongate PATH, \
                     or leave it out with --targets",
                    path.display()
                );
            }
            Some(absolute(&path))
        } else {
            None
        };
        Ok(Self {
            wrk,
            sessiongate,
            nginx,
            haproxy,
            chp,
        })
    }

    /// One line per tool with its version, for the written report.
    pub(crate) fn versions(&self) -> Vec<String> {
        let unknown = || "unknown".to_owned();
        let version = |path: &Path, args: &[&str]| {
            report::version_line(&path.to_string_lossy(), args).unwrap_or_else(unknown)
        };
        let mut out = vec![format!("wrk: {}", version(&self.wrk, &["-v"]))];
        if let Some(p) = &self.nginx {
            out.push(format!("nginx: {}", version(p, &["-v"])));
        }
        if let Some(p) = &self.haproxy {
            out.push(format!("haproxy: {}", version(p, &["-v"])));
        }
        if let Some(p) = &self.chp {
            let node = report::version_line("node", &["--version"]).unwrap_or_else(unknown);
            out.push(format!(
                "configurable-http-proxy: {} (Node {node})",
                version(p, &["--version"])
            ));
        }
        if let Some(p) = &self.sessiongate {
            out.push(format!(
                "sessiongate: `{}` ({})",
                p.display(),
                version(p, &["--version"])
            ));
        }
        out
    }
}

/// A started target and its memory right after start and route set-up.
pub struct Running {
    pub target: Target,
    pub idle_rss_kib: Option<u64>,
}

/// What a run sends.
#[derive(Debug, Clone)]
pub enum Traffic {
    /// HTTP requests from wrk.
    Http(Load),
    /// WebSocket echo messages from [`ws_load`] (128-byte binary messages,
    /// one in flight per connection) through to the [`WsEcho`] origin.
    WsEcho,
    /// h2 requests over TLS from h2load (`https`).
    H2(H2Load),
}

impl Traffic {
    /// The load generator's command or settings, for the written report.
    fn describe(&self, plan: &Plan) -> String {
        match self {
            Self::Http(load) => format!(
                "`wrk -t1 -c{} -d{}s --latency {}`",
                plan.connections,
                plan.duration,
                load.describe()
            ),
            Self::H2(h2) => format!("`{}`", h2.describe(plan.duration)),
            Self::WsEcho => format!(
                "the harness's WebSocket client (`ws_load`, one thread): {} connections to \
                 `ws://ADDR/` with `Host: {}`, {}-byte binary messages, one in flight per \
                 connection, every echo checked byte for byte, {} s",
                plan.connections,
                crate::wrk::HOST,
                ws_load::DEFAULT_MESSAGE_SIZE,
                plan.duration
            ),
        }
    }
}

/// One case on one target: what a round runs once.
pub struct Run {
    pub case: String,
    /// Index into the scenario's [`Running`] targets.
    pub target: usize,
    pub load: Traffic,
    /// Control-plane updates made while wrk runs (`churn`).
    pub churn: Option<Arc<Driver>>,
}

/// A target check from the issue, met or missed; a missed one is reported,
/// never an error exit.
pub struct Check {
    pub what: String,
    /// `None`: not measured in this run (a target left out).
    pub met: Option<bool>,
    pub detail: String,
}

impl Check {
    pub fn line(&self) -> String {
        let verdict = match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "not measured",
        };
        format!("target {}: {verdict} ({})", self.what, self.detail)
    }
}

/// A scenario's judgement of its summaries: the target lines printed under
/// the table (and written), and the rows of the results file's summary.
pub struct Judged {
    pub lines: Vec<String>,
    pub rows: Vec<results::Row>,
}

/// sessiongate's throughput at least `min` times nginx's in `case`: the
/// check, judged on the medians of the run.
pub fn vs_nginx_check(scenario: &Scenario, case: &str, summaries: &[Summary], min: f64) -> Check {
    let sg = summaries
        .iter()
        .find(|s| s.case == case && s.target == TargetKind::Sessiongate);
    let ratio = sg.and_then(|s| s.vs_nginx.rps);
    let label = if case.is_empty() {
        scenario.name.to_owned()
    } else {
        format!("{} {case}", scenario.name)
    };
    Check {
        what: format!("{label}: sessiongate {} >= {min:.1}x nginx", scenario.unit),
        met: ratio.map(|r| r >= min),
        detail: match ratio {
            Some(r) => format!("{r:.2}x"),
            None => "needs sessiongate and nginx".into(),
        },
    }
}

/// The summary row of [`vs_nginx_check`]: sessiongate's and nginx's
/// throughput (and p99, where there is one) in `case`, the ratio, the
/// verdict; a run in which sessiongate was flagged does not meet it.
pub fn vs_nginx_row(
    scenario: &Scenario,
    case: &str,
    summaries: &[Summary],
    min: f64,
) -> results::Row {
    let find = |kind| {
        summaries
            .iter()
            .find(|s| s.case == case && s.target == kind)
    };
    let figures = |s: &Summary| {
        let mut f = format!("{} {}", results::count(s.rps), scenario.unit);
        if s.p99_us.is_finite() {
            f.push_str(&format!(", p99 {}", report::fmt_latency(s.p99_us)));
        }
        f
    };
    let check = vs_nginx_check(scenario, case, summaries, min);
    let sg = find(TargetKind::Sessiongate);
    let mut row = results::Row::new(scenario.name, case);
    row.sessiongate = sg.map_or("not measured".into(), figures);
    row.peer = format!(
        "nginx: {}",
        find(TargetKind::Nginx).map_or("not measured".into(), figures)
    );
    row.ratio = results::times(sg.and_then(|s| s.vs_nginx.rps));
    row.met = check.met;
    if let Some(problem) = sg.and_then(Summary::problem) {
        row.met = Some(false);
        row.note = format!("FLAGGED: {problem}");
    }
    row
}

/// A scenario's fixed texts.
pub struct Scenario {
    /// The subcommand, also the name in the section markers.
    pub name: &'static str,
    /// What the throughput counts: "req/s" or "messages/s".
    pub unit: &'static str,
    /// The section's heading.
    pub title: &'static str,
    /// What the figures are, for the written section.
    pub text: &'static str,
}

/// The running context of one scenario: its plan, tools, origin and temp
/// dir. Targets are kept by the scenario and must be dropped before this
/// (the processes stop before their directory goes).
pub struct Bench {
    pub plan: Plan,
    pub tools: Tools,
    pub clk_tck: u64,
    pub origin: Origin,
    pub dir: TempDir,
    /// The WebSocket echo origin, for `ws-echo` only.
    pub ws_origin: Option<WsEcho>,
    origin_threads: usize,
    write: Option<PathBuf>,
    load_before: String,
}

impl Bench {
    /// Resolves the plan (with `defaults` for the targets; any target not in
    /// `allowed` is refused), finds the tools, starts the origin and makes
    /// the temp dir.
    pub fn setup(
        args: &CommonArgs,
        defaults: &[TargetKind],
        allowed: &[TargetKind],
    ) -> Result<Self> {
        let targets = pick_targets(args.targets.as_deref().unwrap_or(defaults), allowed)?;
        let plan = if args.smoke {
            Plan {
                rounds: 1,
                duration: 1,
                connections: 4,
                warmup: 0,
                targets,
                smoke: true,
            }
        } else {
            Plan {
                rounds: args.rounds,
                duration: args.duration,
                connections: args.connections,
                warmup: args.warmup,
                targets,
                smoke: false,
            }
        };
        let tools = Tools::find(args, &plan)?;
        let clk_tck = crate::clock_ticks()?;
        if cfg!(debug_assertions) && !plan.smoke {
            eprintln!(
                "warning: this is a debug build of the harness; the in-process origin will be slow. \
                 Use `cargo run -p bench --profile dist`."
            );
        }
        let load_before = load_average();
        let origin_threads = usize::try_from(args.origin_threads).unwrap_or(2);
        let origin = Origin::bench(origin_threads).context("starting the in-process origin")?;
        origin.handle().spawn(crate::watch_signals());
        let dir = TempDir::new("sessiongate-bench")?;
        eprintln!(
            "origin on {} and {} ({} threads); work dir {}",
            origin.addr,
            origin.alt_addr,
            args.origin_threads,
            dir.path().display()
        );
        Ok(Self {
            plan,
            tools,
            clk_tck,
            origin,
            dir,
            ws_origin: None,
            origin_threads,
            write: args.write.clone(),
            load_before,
        })
    }

    /// A fresh directory `<label>-<kind>` in the temp dir.
    pub(crate) fn subdir(&self, label: &str, kind: TargetKind) -> Result<PathBuf> {
        let sub = self.dir.path().join(format!("{label}-{}", kind.name()));
        std::fs::create_dir(&sub).with_context(|| format!("creating {}", sub.display()))?;
        Ok(sub)
    }

    /// Where `--write` puts the report, if anywhere.
    pub fn write_path(&self) -> Option<&Path> {
        self.write.as_deref()
    }

    /// The load average when the scenario started, for the written report.
    pub fn load_before(&self) -> &str {
        &self.load_before
    }

    /// Starts the WebSocket echo origin (as many threads as the HTTP one).
    pub fn start_ws_origin(&mut self) -> Result<std::net::SocketAddr> {
        let ws =
            WsEcho::bench(self.origin_threads).context("starting the WebSocket echo origin")?;
        let addr = ws.addr;
        eprintln!("WebSocket echo origin on {addr}");
        self.ws_origin = Some(ws);
        Ok(addr)
    }

    /// Starts `kind` with `routes` to the HTTP origin and waits until it is
    /// ready, then reads its idle RSS.
    pub fn start(&self, kind: TargetKind, routes: &Routes, label: &str) -> Result<Running> {
        self.start_to(kind, routes, label, self.origin.addr)
    }

    /// [`Bench::start`] with `origin` as every route's upstream.
    pub fn start_to(
        &self,
        kind: TargetKind,
        routes: &Routes,
        label: &str,
        origin: std::net::SocketAddr,
    ) -> Result<Running> {
        check_interrupted()?;
        type Start = fn(&Path, &Path, std::net::SocketAddr, &Routes) -> Result<Target>;
        let (binary, start): (&Option<PathBuf>, Start) = match kind {
            TargetKind::Direct => (&None, |_, _, _, _| bail!("direct has no process")),
            TargetKind::Sessiongate => (&self.tools.sessiongate, targets::sessiongate),
            TargetKind::Nginx => (&self.tools.nginx, targets::nginx),
            TargetKind::Haproxy => (&self.tools.haproxy, peers::haproxy),
            TargetKind::Chp => (&self.tools.chp, peers::chp),
            TargetKind::SessiongateChp => (&self.tools.sessiongate, peers::sessiongate_chp),
        };
        let mut target = match kind {
            TargetKind::Direct => targets::direct(origin)?,
            _ => {
                let binary = binary
                    .as_deref()
                    .with_context(|| format!("{kind}: binary not resolved"))?;
                start(binary, &self.subdir(label, kind)?, origin, routes)?
            }
        };
        let idle_rss_kib = match target.proc.as_mut() {
            Some(p) => Some(p.rss_kib()?),
            None => None,
        };
        let pid = target
            .proc
            .as_ref()
            .map(|p| format!(" (pid {})", p.pid()))
            .unwrap_or_default();
        let label = if label.is_empty() {
            String::new()
        } else {
            format!(" [{label}]")
        };
        eprintln!(
            "{kind}{label} ready at {}{pid}{}",
            target.addr,
            idle_rss_kib
                .map(|k| format!(", idle RSS {}", report::fmt_mib(k)))
                .unwrap_or_default()
        );
        Ok(Running {
            target,
            idle_rss_kib,
        })
    }

    /// Writes a wrk Lua script into the temp dir.
    pub fn script(&self, name: &str, script: &Script) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, script.text())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Small responses with a random `Host` among `routes` per request:
    /// writes `<name>.txt` (the hosts) and `<name>.lua` into the temp dir.
    pub fn random_host_load(&self, name: &str, routes: &Routes) -> Result<Load> {
        let hosts = self.dir.path().join(format!("{name}.txt"));
        routes.write_lines(&hosts, "", "")?;
        let script = self.script(
            &format!("{name}.lua"),
            &Script {
                hosts_file: Some(hosts),
                check_close: false,
            },
        )?;
        Ok(Load {
            script: Some(script),
            random_host: true,
            body_len: origin::BODY_LEN,
            ..Load::default()
        })
    }

    /// The WebSocket load of one run against `addr`.
    fn ws_config(&self, addr: std::net::SocketAddr, secs: u64) -> WsLoadConfig {
        let mut config = WsLoadConfig::new(addr, crate::wrk::HOST);
        config.connections = self.plan.connections;
        config.duration = std::time::Duration::from_secs(secs);
        config
    }

    /// The warm-up and the interleaved rounds of `runs`.
    pub fn rounds(&self, running: &mut [Running], runs: &[Run]) -> Result<Vec<Sample>> {
        let plan = &self.plan;
        if plan.warmup > 0 {
            for run in runs {
                check_interrupted()?;
                let target = &mut running[run.target].target;
                if let Some(p) = target.proc.as_mut() {
                    p.ensure_running()?;
                }
                eprintln!("warm-up {} {} ({}s)", run.case, target.kind, plan.warmup);
                match &run.load {
                    Traffic::Http(load) => wrk::run(
                        &self.tools.wrk,
                        &load.base(target.addr),
                        load,
                        plan.connections,
                        plan.warmup,
                    )
                    .map(drop),
                    Traffic::H2(h2) => h2.run(target.addr, plan.warmup).map(drop),
                    Traffic::WsEcho => {
                        ws_load::run(&self.ws_config(target.addr, plan.warmup)).map(drop)
                    }
                }
                .with_context(|| format!("warming up {} ({})", target.kind, run.case))?;
            }
        }
        let mut samples = Vec::new();
        for round in 1..=plan.rounds {
            // Alternate the order, so that no run always follows the same one.
            let order: Vec<&Run> = if round % 2 == 1 {
                runs.iter().collect()
            } else {
                runs.iter().rev().collect()
            };
            for run in order {
                check_interrupted()?;
                let target = &mut running[run.target].target;
                let sample = self
                    .measure(target, run, round)
                    .with_context(|| format!("round {round}, {} {}", run.case, target.kind))?;
                eprintln!(
                    "round {round}/{} {:<12} {:<11} {:>9.0} {}  p50 {:>9}  p99 {:>9}{}{}",
                    plan.rounds,
                    run.case,
                    target.kind,
                    sample.wrk.req_per_sec,
                    match run.load {
                        Traffic::Http(_) | Traffic::H2(_) => "req/s",
                        Traffic::WsEcho => "msg/s",
                    },
                    report::fmt_latency(sample.wrk.p50_us),
                    report::fmt_latency(sample.wrk.p99_us),
                    sample
                        .api
                        .as_ref()
                        .map(|a| format!("  API {}", a.describe()))
                        .unwrap_or_default(),
                    match sample.error_summary() {
                        e if e.is_empty() => String::new(),
                        e => format!("  ERRORS: {e}"),
                    }
                );
                samples.push(sample);
            }
        }
        Ok(samples)
    }

    /// One wrk run with the proxy's CPU, the origin's counters and, for
    /// churn, the control-plane updates around it; then the load's own
    /// checks.
    fn measure(&self, target: &mut Target, run: &Run, round: u32) -> Result<Sample> {
        let cpu_before = match target.proc.as_mut() {
            Some(p) => Some(p.cpu_ticks()?),
            None => None,
        };
        let (result, origin, mut extra, api) = match &run.load {
            Traffic::Http(load) => {
                let origin_before = self.origin.counts();
                let churn = run.churn.as_ref().map(|d| d.start()).transpose()?;
                let result = wrk::run(
                    &self.tools.wrk,
                    &load.base(target.addr),
                    load,
                    self.plan.connections,
                    self.plan.duration,
                );
                // Stop the updates even when wrk failed.
                let api = churn.map(|c| c.stop()).transpose()?;
                let result = result?;
                let after = self.origin.counts();
                let origin = origin::OriginCounts {
                    requests: after.requests - origin_before.requests,
                    connections: after.connections - origin_before.connections,
                };
                let extra = load_problems(load, target.kind, &result, &origin);
                (result, origin, extra, api)
            }
            Traffic::H2(h2) => {
                let before = self.origin.counts();
                let r = h2.run(target.addr, self.plan.duration)?;
                let after = self.origin.counts();
                // Responses count as requests, as wrk counts them; h2load
                // has no percentiles (NaN: shown as "–").
                let result = WrkResult {
                    requests: r.status_2xx + r.status_other,
                    req_per_sec: r.req_per_sec,
                    p50_us: f64::NAN,
                    p99_us: f64::NAN,
                    non_2xx: r.status_other,
                    ..WrkResult::default()
                };
                let origin = origin::OriginCounts {
                    requests: after.requests - before.requests,
                    connections: after.connections - before.connections,
                };
                let not_h2 = u64::from(r.protocol.as_deref() != Some("h2"));
                let extra = vec![
                    ("h2load failed requests".into(), r.failed),
                    ("h2load runs not on h2".into(), not_h2),
                ];
                (result, origin, extra, None)
            }
            Traffic::WsEcho => {
                let ws = self
                    .ws_origin
                    .as_ref()
                    .context("the WebSocket origin is not running")?;
                let before = ws.counts();
                let r = ws_load::run(&self.ws_config(target.addr, self.plan.duration))?;
                let after = ws.counts();
                if let Some(first) = &r.first_error {
                    eprintln!("{}: first WebSocket error: {first}", target.kind);
                }
                // Echoes count as requests: the origin's message count then
                // catches a proxy that answered by itself, as for HTTP.
                let result = WrkResult {
                    requests: r.messages,
                    req_per_sec: r.messages_per_sec(),
                    p50_us: r.p50_us,
                    p99_us: r.p99_us,
                    ..WrkResult::default()
                };
                let origin = origin::OriginCounts {
                    requests: after.messages - before.messages,
                    connections: after.connections - before.connections,
                };
                let mut extra: Vec<(String, u64)> = r
                    .error_kinds
                    .iter()
                    .map(|(kind, n)| (format!("WebSocket {kind} errors"), *n))
                    .collect();
                if r.connected < self.plan.connections {
                    eprintln!(
                        "{}: {} of {} WebSockets opened",
                        target.kind, r.connected, self.plan.connections
                    );
                }
                // Without errors every echo the client verified (warm-up and
                // drain included) passed through the origin, exactly.
                if r.errors == 0 && r.echoed_total() != origin.requests {
                    extra.push((
                        "echoes not matching the origin's count".into(),
                        r.echoed_total().abs_diff(origin.requests),
                    ));
                }
                (result, origin, extra, None)
            }
        };
        if let Some(api) = &api {
            extra.push(("failed API calls".into(), api.failed));
        }
        let cpu_ticks = match (target.proc.as_mut(), cpu_before) {
            (Some(p), Some(before)) => Some(p.cpu_ticks()?.saturating_sub(before)),
            _ => None,
        };
        Ok(Sample {
            round,
            case: run.case.clone(),
            target: target.kind,
            wrk: result,
            cpu_ticks,
            origin,
            extra,
            api,
        })
    }

    /// RSS after the rounds, the summaries, the table and lines on stdout,
    /// the written section; returns the problems that must fail the run.
    pub fn finish(
        &self,
        scenario: &Scenario,
        running: &mut [Running],
        runs: &[Run],
        samples: &[Sample],
        judge: impl FnOnce(&[Summary]) -> Judged,
        notes: &[String],
    ) -> Result<Vec<String>> {
        let mut rss: Vec<(String, TargetKind, Rss)> = Vec::new();
        for run in runs {
            let r = &mut running[run.target];
            if let (Some(p), Some(idle)) = (r.target.proc.as_mut(), r.idle_rss_kib) {
                rss.push((
                    run.case.clone(),
                    r.target.kind,
                    Rss {
                        idle_kib: idle,
                        loaded_kib: p.rss_kib()?,
                    },
                ));
            }
        }
        let keys: Vec<(String, TargetKind)> = runs
            .iter()
            .map(|r| (r.case.clone(), running[r.target].target.kind))
            .collect();
        let summaries = report::summarise(&keys, samples, &rss, self.clk_tck);
        let table = report::summary_table(&summaries, scenario.unit);
        let headlines = report::headlines(&summaries, scenario.unit);
        let Judged {
            lines: checks,
            rows,
        } = judge(&summaries);
        println!();
        print!("{table}");
        println!();
        for line in headlines.iter().chain(&checks).chain(notes) {
            println!("{line}");
        }
        if let Some(path) = &self.write {
            let section = self.section(&Written {
                scenario,
                running,
                runs,
                samples,
                table: &table,
                lines: &[headlines, checks, notes.to_vec()].concat(),
            });
            let (begin, end) = markers(scenario.name);
            write_section(path, &begin, &end, &section, &rows)?;
            eprintln!("wrote the {} section of {}", scenario.title, path.display());
        }
        Ok(summaries.iter().filter_map(Summary::problem).collect())
    }
}

/// `given` without repeats, in order; a target not in `allowed` is an error.
pub fn pick_targets(given: &[TargetKind], allowed: &[TargetKind]) -> Result<Vec<TargetKind>> {
    let mut targets: Vec<TargetKind> = Vec::new();
    for &t in given {
        if !allowed.contains(&t) {
            bail!(
                "--targets: {t} is not measured in this scenario (allowed: {})",
                allowed
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    Ok(targets)
}

/// The problems a load's own checks find in one run: responses that did
/// not close their connection when every one should have, bodies shorter
/// than the origin sends, and, direct to the origin, requests that shared a
/// connection when each should have had its own.
fn load_problems(
    load: &Load,
    kind: TargetKind,
    result: &wrk::WrkResult,
    origin: &origin::OriginCounts,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Some(kept) = result.kept_alive {
        out.push(("responses without Connection: close".into(), kept));
    }
    if load.body_len > 0 {
        // wrk's byte count has three significant digits; headers only add.
        let expected = result.requests as f64 * load.body_len as f64 * 0.99;
        if result.bytes_read < expected {
            let missing = ((expected - result.bytes_read) / load.body_len as f64).ceil();
            out.push(("responses short of the body".into(), missing as u64));
        }
    }
    if load.new_connections && kind == TargetKind::Direct {
        // Every request its own connection: the origin accepts one per
        // request (wrk's last, unanswered ones included).
        let shared = result.requests.saturating_sub(origin.connections);
        out.push(("requests on a reused connection".into(), shared));
    }
    out
}

mod written;

use written::Written;
pub use written::{load_average, markers, update_file, write_section};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wrk::WrkResult;
    use testkit::origin::OriginCounts;

    #[test]
    fn targets_are_deduplicated_and_checked() -> Result<()> {
        let t = pick_targets(
            &[
                TargetKind::Nginx,
                TargetKind::Sessiongate,
                TargetKind::Nginx,
            ],
            &ALL_TARGETS,
        )?;
        assert_eq!(t, vec![TargetKind::Nginx, TargetKind::Sessiongate]);
        let err = pick_targets(&[TargetKind::Chp], &[TargetKind::Sessiongate])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("chp is not measured"), "{err}");
        Ok(())
    }

    fn result(requests: u64, bytes_read: f64, kept_alive: Option<u64>) -> WrkResult {
        WrkResult {
            requests,
            bytes_read,
            kept_alive,
            ..WrkResult::default()
        }
    }

    fn count(problems: &[(String, u64)], what: &str) -> u64 {
        problems
            .iter()
            .find(|(w, _)| w.starts_with(what))
            .map_or(0, |p| p.1)
    }

    #[test]
    fn loads_check_what_they_promise() {
        let origin = OriginCounts {
            requests: 100,
            connections: 90,
        };
        let big = Load {
            body_len: 1 << 20,
            ..Load::default()
        };
        let full = result(100, 100.5 * 1048576.0, None);
        assert_eq!(
            count(
                &load_problems(&big, TargetKind::Nginx, &full, &origin),
                "responses short"
            ),
            0
        );
        let short = result(100, 50.0 * 1048576.0, None);
        let p = load_problems(&big, TargetKind::Nginx, &short, &origin);
        assert_eq!(count(&p, "responses short"), 49);

        let close = Load {
            new_connections: true,
            ..Load::default()
        };
        let kept = result(100, 0.0, Some(2));
        let p = load_problems(&close, TargetKind::Direct, &kept, &origin);
        assert_eq!(count(&p, "responses without"), 2);
        assert_eq!(count(&p, "requests on a reused"), 10);
        // Through a proxy the origin's connections say nothing of the client's.
        let p = load_problems(&close, TargetKind::Haproxy, &kept, &origin);
        assert_eq!(count(&p, "requests on a reused"), 0);
    }
}
