//! The attack scenarios, `slowloris` and `h2-flood`: how a normal client
//! fares while sessiongate, and nginx beside it, is under attack, and
//! whether the memory an attack took comes back.
//!
//! Every run on a target is: a baseline wrk run (the normal client alone),
//! the attack started and established, the same wrk run under it, the
//! attack stopped, then RSS polled until it is back within 10% of what it
//! was before the attack (or `--settle` seconds pass). Rounds alternate the
//! targets' order, as the other scenarios do. Figures, not tests: a missed
//! goal is a line in the report, never an error exit; the normal client's
//! errors are (exit status 1), as in every scenario. The summary, the
//! goal lines and the written section are in `summary.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

mod summary;

use summary::{goal_lines, section, summarise, summary_rows, summary_table, Summary};

use crate::attackers::{
    established_on, flood_until, poll_until, slow_status, H2loadResult, SlowStatus, Slowloris,
    StreamFlood,
};
use crate::procs::check_interrupted;
use crate::rapid_reset::{self, ResetConfig, ResetResult};
use crate::report::{fmt_latency, fmt_mib};
use crate::side_by_side::{markers, write_section, Bench, CommonArgs, Running};
use crate::targets::{self, Routes, TargetKind};
use crate::wrk::{self, Load, WrkResult, HOST};
use testkit::origin;

/// The targets these scenarios compare.
const TARGETS: [TargetKind; 2] = [TargetKind::Sessiongate, TargetKind::Nginx];

/// The goals: the normal client's p99 under attack below this many times
/// its baseline, and RSS after the attack within this fraction of before.
const P99_GOAL: f64 = 2.0;
const RSS_GOAL: f64 = 0.10;

#[derive(Args, Clone, Debug)]
pub struct SlowlorisArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Slow clients held open at once (slowhttptest -c) [default: 1000; 50
    /// with --smoke].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub slow_clients: Option<u32>,
    /// New slow connections per second (slowhttptest -r).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub slow_rate: u32,
    /// Seconds between a slow client's header lines (slowhttptest -i).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub slow_interval: u32,
    /// The slowhttptest binary [default: from PATH].
    #[arg(long, value_name = "PATH")]
    pub slowhttptest: Option<PathBuf>,
    /// Seconds to wait after an attack for RSS to come back within 10%
    /// [default: 10; 2 with --smoke].
    #[arg(long)]
    pub settle: Option<u64>,
}

#[derive(Args, Clone, Debug)]
pub struct H2FloodArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// h2load connections of the stream flood (h2load -c).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub flood_clients: u32,
    /// Streams in flight per flood connection, at most (h2load -m; the
    /// server's SETTINGS_MAX_CONCURRENT_STREAMS may allow fewer).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub flood_streams: u32,
    /// Rapid-reset connections open at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub reset_connections: u32,
    /// Streams opened and reset per run, at most [default: 10000000; 2000
    /// with --smoke]; a run also stops with its wrk run.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub resets: Option<u64>,
    /// The h2load binary [default: from PATH].
    #[arg(long, value_name = "PATH")]
    pub h2load: Option<PathBuf>,
    /// Seconds to wait after an attack for RSS to come back within 10%
    /// [default: 10; 2 with --smoke].
    #[arg(long)]
    pub settle: Option<u64>,
}

/// What a case does to the target while wrk measures.
#[derive(Debug, Clone)]
enum Attack {
    Slow {
        program: PathBuf,
        slow: Slowloris,
    },
    Streams {
        program: PathBuf,
        flood: StreamFlood,
    },
    Resets {
        connections: u32,
        resets: u64,
    },
}

struct Case {
    name: &'static str,
    attack: Attack,
}

/// A scenario's fixed texts.
struct Texts {
    name: &'static str,
    title: &'static str,
    text: &'static str,
}

const SLOWLORIS: Texts = Texts {
    name: "slowloris",
    title: "Slowloris: slow clients beside a normal one",
    text: "\
A normal client (wrk, keep-alive, 128-byte responses, `Host: app.localhost`)
measured alone, then again while `slowhttptest -H` holds N slow clients
open: each sends a request head one short header line every few seconds
and never ends it. wrk starts once the server holds all N (counted from
/proc/net/tcp: the server side's established connections on its port) or
the ramp's time is up; the count when wrk starts and ends is reported, with
slowhttptest's own last status (its probe asks for a page every second and
calls the server unavailable when it takes over 3 s). Within a run the slow
clients never reach either server's header timeout (sessiongate's
`gateway.header_read_timeout_secs`, 30 s; nginx's `client_header_timeout`,
60 s), so both hold them all. Every client comes from 127.0.0.1, which
stands for many addresses here: sessiongate runs with
`gateway.max_connections_per_ip` raised to `max_connections` (10,000), as
the per-address cap (256 by default) would count wrk's connections with the
slow ones, and refuse slow clients past 256 that a real attack would send
from other addresses.
Goals: the normal client's p99 under attack below 2x its baseline; RSS
back within 10% of before the attack.",
};

const H2_FLOOD: Texts = Texts {
    name: "h2-flood",
    title: "HTTP/2 floods: a stream flood and rapid reset beside a normal client",
    text: "\
A normal client (wrk over HTTP/1.1, keep-alive, 128-byte responses,
`Host: app.localhost`) measured alone, then again under one of two HTTP/2
attacks over h2c with prior knowledge (sessiongate's HTTP listener speaks
both; nginx gets a second `listen ... http2` port in the same server
block):
- **stream flood**: h2load, `-c` connections with up to `-m` requests in
  flight on each, rerun back to back until wrk is done (h2load does not
  reconnect, and nginx closes an HTTP/2 connection after 1000 requests, so
  each run asks for 500 per connection);
- **rapid reset** (CVE-2023-44487): the harness's own client (`h2` crate,
  one thread) opens a stream with a whole `GET` and sends `RST_STREAM` at
  once, again and again, over a few connections, replacing any the server
  closes, bounded by `--resets` and by wrk's run. Reported: streams reset,
  connections the server closed and the GOAWAY reasons it gave, and the
  requests that still reached the origin (the work the resets caused).
RSS is read before the attack, right after wrk's run under it, and polled
after it until back within 10% of before (or `--settle` passes). Goals: the
normal client's p99 under attack below 2x its baseline; RSS back within
10%.",
};

/// One run: a case on a target in a round.
struct FloodSample {
    round: u32,
    case: &'static str,
    target: TargetKind,
    baseline: WrkResult,
    attacked: WrkResult,
    rss_before_kib: u64,
    rss_under_kib: u64,
    rss_after_kib: u64,
    /// Whether RSS came back within 10%, and how long it was waited for.
    settled: bool,
    settle: Duration,
    figures: Figures,
}

impl FloodSample {
    fn p99_ratio(&self) -> f64 {
        self.attacked.p99_us / self.baseline.p99_us.max(1.0)
    }

    fn rss_growth(&self) -> f64 {
        self.rss_after_kib as f64 / self.rss_before_kib.max(1) as f64 - 1.0
    }

    /// The normal client's errors, alone and under attack.
    fn errors(&self) -> u64 {
        [&self.baseline, &self.attacked]
            .iter()
            .map(|w| w.non_2xx + w.socket_errors())
            .sum()
    }

    fn error_summary(&self) -> String {
        let mut parts = Vec::new();
        for (when, w) in [("alone", &self.baseline), ("under attack", &self.attacked)] {
            let e = w.error_summary();
            if !e.is_empty() {
                parts.push(format!("{when}: {e}"));
            }
        }
        parts.join("; ")
    }
}

/// What the attacker did, by kind.
enum Figures {
    Slow {
        asked: u32,
        held_at_start: u64,
        held_at_end: u64,
        status: Option<SlowStatus>,
    },
    Streams {
        h2load: H2loadResult,
        runs: u32,
    },
    Resets {
        result: ResetResult,
        /// Requests the origin saw during the run beyond the normal client's.
        reached_origin: u64,
    },
}

impl Figures {
    fn describe(&self) -> String {
        match self {
            Figures::Slow {
                asked,
                held_at_start,
                held_at_end,
                status,
            } => {
                let probe = match status.as_ref().and_then(|s| s.service_available) {
                    Some(true) => "probe answered",
                    Some(false) => "probe NOT answered",
                    None => "no probe status",
                };
                format!("{held_at_start}/{asked} slow clients held at wrk's start, {held_at_end} at its end; {probe}")
            }
            Figures::Streams { h2load, runs } => format!(
                "{:.0} req/s flood ({} 2xx, {} other, {} failed; {runs} h2load runs)",
                h2load.requests as f64 / h2load.seconds.max(1e-9),
                h2load.status_2xx,
                h2load.status_other,
                h2load.failed
            ),
            Figures::Resets {
                result,
                reached_origin,
            } => format!(
                "{} resets ({:.0}/s) on {} connections, {} closed by the server (GOAWAY: {}), errors: {}; ~{reached_origin} requests reached the origin",
                result.resets,
                result.resets_per_sec(),
                result.connections,
                result.closed_by_server,
                result.goaway_summary(),
                result.error_summary()
            ),
        }
    }
}

/// A started target and where it takes h2c.
struct Started {
    running: Running,
    h2c: SocketAddr,
}

pub fn slowloris(args: SlowlorisArgs) -> Result<Vec<String>> {
    let bench = Bench::setup(&args.common, &TARGETS, &TARGETS)?;
    let program = tool(
        &args.slowhttptest,
        "slowhttptest",
        "apt-get install -y slowhttptest",
    )?;
    let connections = args
        .slow_clients
        .unwrap_or(if bench.plan.smoke { 50 } else { 1000 });
    let ramp = u64::from(connections.div_ceil(args.slow_rate));
    let slow = Slowloris {
        connections,
        rate: args.slow_rate,
        interval: args.slow_interval,
        // Past the ramp, its wait and the wrk run; the harness stops it
        // before then.
        length: 2 * ramp + 30 + bench.plan.duration,
    };
    let cases = [Case {
        name: "slowloris",
        attack: Attack::Slow { program, slow },
    }];
    run(
        &bench,
        &SLOWLORIS,
        &cases,
        settle(args.settle, &bench),
        false,
    )
}

pub fn h2_flood(args: H2FloodArgs) -> Result<Vec<String>> {
    let bench = Bench::setup(&args.common, &TARGETS, &TARGETS)?;
    let program = tool(&args.h2load, "h2load", "apt-get install -y nghttp2-client")?;
    let flood = StreamFlood {
        clients: args.flood_clients,
        streams: args.flood_streams,
        requests: u64::from(args.flood_clients) * 500,
    };
    let resets = args
        .resets
        .unwrap_or(if bench.plan.smoke { 2000 } else { 10_000_000 });
    let cases = [
        Case {
            name: "stream flood",
            attack: Attack::Streams { program, flood },
        },
        Case {
            name: "rapid reset",
            attack: Attack::Resets {
                connections: args.reset_connections,
                resets,
            },
        },
    ];
    run(&bench, &H2_FLOOD, &cases, settle(args.settle, &bench), true)
}

fn settle(given: Option<u64>, bench: &Bench) -> Duration {
    Duration::from_secs(given.unwrap_or(if bench.plan.smoke { 2 } else { 10 }))
}

pub(crate) fn tool(given: &Option<PathBuf>, name: &str, install: &str) -> Result<PathBuf> {
    match given {
        Some(p) if p.is_file() => Ok(crate::side_by_side::absolute(p)),
        Some(p) => bail!("{name} not found at {}", p.display()),
        None => targets::find_program(name)
            .with_context(|| format!("{name} not found on PATH: install it with `{install}`")),
    }
}

/// The normal client's load: what `keepalive` sends.
fn normal_load() -> Load {
    Load {
        body_len: origin::BODY_LEN,
        ..Load::default()
    }
}

/// Starts every target with one route; with `h2c`, nginx gets an HTTP/2
/// listener of its own.
fn start_all(bench: &Bench, h2c: bool) -> Result<Vec<Started>> {
    let mut out = Vec::new();
    for &kind in &bench.plan.targets {
        let started = if kind == TargetKind::Nginx && h2c {
            let binary = bench
                .tools
                .nginx
                .as_deref()
                .context("nginx: not resolved")?;
            let dir = bench.subdir("h2c", kind)?;
            let (mut target, h2c) = targets::nginx_h2c(binary, &dir, bench.origin.addr)?;
            let idle_rss_kib = match target.proc.as_mut() {
                Some(p) => Some(p.rss_kib()?),
                None => None,
            };
            eprintln!("nginx ready at {}, h2c at {h2c}", target.addr);
            Started {
                running: Running {
                    target,
                    idle_rss_kib,
                },
                h2c,
            }
        } else {
            let running = bench.start(kind, &Routes::one(), "")?;
            let h2c = running.target.addr;
            Started { running, h2c }
        };
        out.push(started);
    }
    Ok(out)
}

/// Starts the targets, runs every case on each of them every round (the
/// targets' order reversed every other round), prints the summary and
/// writes the section; returns the problems that fail the run.
fn run(
    bench: &Bench,
    texts: &Texts,
    cases: &[Case],
    settle: Duration,
    h2c: bool,
) -> Result<Vec<String>> {
    let mut started = start_all(bench, h2c)?;
    let plan = &bench.plan;
    if plan.warmup > 0 {
        for s in &started {
            check_interrupted()?;
            let t = &s.running.target;
            eprintln!("warm-up {} ({}s)", t.kind, plan.warmup);
            wrk::run(
                &bench.tools.wrk,
                &t.base_url(),
                &normal_load(),
                plan.connections,
                plan.warmup,
            )
            .with_context(|| format!("warming up {}", t.kind))?;
        }
    }
    let mut samples = Vec::new();
    for round in 1..=bench.plan.rounds {
        let order: Vec<usize> = if round % 2 == 1 {
            (0..started.len()).collect()
        } else {
            (0..started.len()).rev().collect()
        };
        for case in cases {
            for &i in &order {
                check_interrupted()?;
                let s = &mut started[i];
                let kind = s.running.target.kind;
                let sample = measure(bench, s, case, round, settle)
                    .with_context(|| format!("round {round}, {} {kind}", case.name))?;
                eprintln!(
                    "round {round}/{} {:<12} {:<11} p99 {:>9} alone, {:>9} under attack ({:.2}x); RSS {} → {} → {}{}; {}",
                    bench.plan.rounds,
                    case.name,
                    kind,
                    fmt_latency(sample.baseline.p99_us),
                    fmt_latency(sample.attacked.p99_us),
                    sample.p99_ratio(),
                    fmt_mib(sample.rss_before_kib),
                    fmt_mib(sample.rss_under_kib),
                    fmt_mib(sample.rss_after_kib),
                    match sample.error_summary() {
                        e if e.is_empty() => String::new(),
                        e => format!("; ERRORS: {e}"),
                    },
                    sample.figures.describe()
                );
                samples.push(sample);
            }
        }
    }
    let summaries = summarise(cases, &bench.plan.targets, &samples);
    let table = summary_table(&summaries);
    let lines = goal_lines(cases, &summaries);
    println!();
    print!("{table}");
    println!();
    for line in &lines {
        println!("{line}");
    }
    if let Some(path) = bench.write_path() {
        let section = section(bench, texts, cases, &started, &samples, &table, &lines);
        let (begin, end) = markers(texts.name);
        let rows = summary_rows(texts.name, cases, &summaries);
        write_section(path, &begin, &end, &section, &rows)?;
        eprintln!("wrote the {} section of {}", texts.title, path.display());
    }
    drop(started);
    Ok(summaries.iter().filter_map(Summary::problem).collect())
}

/// One run of `case` on a target: wrk alone, the attack established, wrk
/// under it, the attack stopped, then RSS polled for up to `settle`.
fn measure(
    bench: &Bench,
    started: &mut Started,
    case: &Case,
    round: u32,
    settle: Duration,
) -> Result<FloodSample> {
    let plan = &bench.plan;
    let target = &mut started.running.target;
    let kind = target.kind;
    let base = target.base_url();
    let addr = target.addr;
    let proc = target.proc.as_mut().context("a target without a process")?;
    proc.ensure_running()?;
    let wrk_run = || {
        wrk::run(
            &bench.tools.wrk,
            &base,
            &normal_load(),
            plan.connections,
            plan.duration,
        )
    };
    let baseline = wrk_run()?;
    let rss_before_kib = proc.rss_kib()?;
    let origin_before = bench.origin.counts();

    let (attacked, rss_under_kib, figures) = match &case.attack {
        Attack::Slow { program, slow } => {
            let log = bench
                .dir
                .path()
                .join(format!("slowhttptest-{}-{round}.log", kind.name()));
            let attacker = slow.start(program, addr, &log)?;
            let asked = u64::from(slow.connections);
            let ramp = Duration::from_secs(u64::from(slow.connections.div_ceil(slow.rate)) + 10);
            poll_until(ramp, || Ok(established_on(addr.port())? >= asked))?;
            let held_at_start = established_on(addr.port())?;
            let attacked = wrk_run()?;
            let held_at_end = established_on(addr.port())?;
            let rss_under = proc.rss_kib()?;
            let status = slow_status(&log);
            drop(attacker);
            let figures = Figures::Slow {
                asked: slow.connections,
                held_at_start,
                held_at_end,
                status,
            };
            (attacked, rss_under, figures)
        }
        Attack::Streams { program, flood } => {
            let stop = Arc::new(AtomicBool::new(false));
            let flooder = {
                let (program, flood, stop) = (program.clone(), flood.clone(), Arc::clone(&stop));
                let h2c = started.h2c;
                std::thread::spawn(move || {
                    flood_until(&program, &flood, h2c, HOST, &|| {
                        stop.load(Ordering::Relaxed)
                    })
                })
            };
            // Under way once the origin sees its requests.
            let (flowing, _) =
                poll_until(Duration::from_secs(5), || {
                    Ok(bench.origin.counts().requests > origin_before.requests
                        || flooder.is_finished())
                })?;
            let attacked = if flowing && !flooder.is_finished() {
                Some(wrk_run())
            } else {
                None
            };
            let rss_under = proc.rss_kib()?;
            stop.store(true, Ordering::Relaxed);
            let (h2load, runs) = flooder
                .join()
                .map_err(|_| anyhow::anyhow!("the h2load thread panicked"))??;
            let attacked = match attacked {
                Some(a) => a?,
                None => bail!("the stream flood did not get going: {h2load:?}"),
            };
            (attacked, rss_under, Figures::Streams { h2load, runs })
        }
        Attack::Resets {
            connections,
            resets,
        } => {
            let config = ResetConfig {
                addr: started.h2c,
                authority: HOST.into(),
                connections: *connections,
                resets: *resets,
                duration: Duration::from_secs(plan.duration) + Duration::from_millis(500),
            };
            let flooder = std::thread::spawn(move || rapid_reset::run(&config));
            let attacked = wrk_run();
            let rss_under = proc.rss_kib()?;
            let result = flooder
                .join()
                .map_err(|_| anyhow::anyhow!("the rapid-reset thread panicked"))??;
            let attacked = attacked?;
            let seen = bench.origin.counts().requests - origin_before.requests;
            let figures = Figures::Resets {
                result,
                reached_origin: seen.saturating_sub(attacked.requests),
            };
            (attacked, rss_under, figures)
        }
    };

    let limit = rss_before_kib + rss_before_kib / 10;
    let slow = matches!(case.attack, Attack::Slow { .. });
    let (settled, waited) = poll_until(settle, || {
        let closed = !slow || established_on(addr.port())? == 0;
        Ok(closed && proc.rss_kib()? <= limit)
    })?;
    let rss_after_kib = proc.rss_kib()?;
    Ok(FloodSample {
        round,
        case: case.name,
        target: kind,
        baseline,
        attacked,
        rss_before_kib,
        rss_under_kib,
        rss_after_kib,
        settled,
        settle: waited,
        figures,
    })
}
