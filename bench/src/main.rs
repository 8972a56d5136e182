//! Benchmark harness: sessiongate next to nginx and a direct connection, in
//! one run, so that the figures that matter are same-run ratios rather than
//! absolute numbers from a shared, noisy machine; `tls-handshakes`, new TLS
//! connections against sessiongate's HTTPS listener and nginx's; and
//! `table-updates`, the route table under a stream of single-route changes.
//!
//! # Layout
//!
//! - `main.rs`: the command line and the `keepalive` scenario.
//! - `origin.rs`: the in-process HTTP origin of `keepalive`.
//! - `targets.rs`: starting sessiongate and nginx (HTTP and HTTPS) and
//!   knowing they are ready.
//! - `procs.rs`: child processes, their CPU and RSS from /proc, temp dirs,
//!   the interruption flag.
//! - `wrk.rs`, `openssl.rs`: the load generators (wrk; `openssl s_time` and
//!   `s_client`) and their output.
//! - `report.rs`: summary tables and the written reports.
//! - `tls_handshakes.rs`, `table_updates.rs`: those scenarios.

mod openssl;
mod origin;
mod procs;
mod report;
mod table_updates;
mod targets;
mod tls_handshakes;
mod wrk;
mod ws_load;
mod ws_origin;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::origin::Origin;
use crate::procs::{check_interrupted, interrupted, TempDir, INTERRUPTED};
use crate::report::{Machine, Sample};
use crate::targets::{Target, TargetKind};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Load scenarios for sessiongate, measured side by side with nginx and a direct connection"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// 128-byte responses over keep-alive connections, driven by wrk.
    Keepalive(KeepaliveArgs),
    /// Single-route updates published into a large route table while a
    /// reader looks routes up (in-process, no proxy or sockets).
    TableUpdates(table_updates::TableUpdatesArgs),
    /// Full and resumed TLS handshakes per second against sessiongate's
    /// HTTPS listener and nginx's, same certificate, driven by openssl s_time.
    TlsHandshakes(tls_handshakes::TlsHandshakesArgs),
}

#[derive(Args)]
struct KeepaliveArgs {
    /// Rounds; each round runs every target once, interleaved so that noise
    /// spreads evenly.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// wrk connections (-c); wrk uses one thread.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Unrecorded warm-up seconds per target before the first round (0: none).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// CI mode: 1 round of 1 s with 4 connections, no warm-up; fails if any
    /// target served errors or no requests.
    #[arg(long, conflicts_with_all = ["rounds", "duration", "connections", "warmup"])]
    smoke: bool,
    /// Also write a markdown report (machine, versions, raw rounds) here.
    #[arg(long, value_name = "PATH")]
    write: Option<PathBuf>,
    /// Targets to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,sessiongate,nginx"
    )]
    targets: Vec<TargetKind>,
    /// The sessiongate binary [default: target/release/sessiongate, next to
    /// this harness's target directory].
    #[arg(long, value_name = "PATH")]
    sessiongate: Option<PathBuf>,
    /// The nginx binary [default: nginx from PATH or /usr/sbin].
    #[arg(long, value_name = "PATH")]
    nginx: Option<PathBuf>,
    /// The wrk binary [default: wrk from PATH].
    #[arg(long, value_name = "PATH")]
    wrk: Option<PathBuf>,
    /// Worker threads of the in-process origin.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    origin_threads: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Keepalive(args) => keepalive(args),
        Scenario::TableUpdates(args) => table_updates::run(args),
        Scenario::TlsHandshakes(args) => tls_handshakes::run(args),
    };
    match result {
        Ok(problems) if problems.is_empty() => ExitCode::SUCCESS,
        Ok(problems) => {
            eprintln!("FAILED: {}", problems.join("; "));
            ExitCode::from(1)
        }
        Err(_) if interrupted() => {
            eprintln!("interrupted; child processes stopped and temp dir removed");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The resolved run parameters (after `--smoke`).
struct Plan {
    rounds: u32,
    duration: u64,
    connections: u32,
    warmup: u64,
    targets: Vec<TargetKind>,
}

/// Runs the keep-alive scenario. Returns the list of problems that must fail
/// the run (errors, zero requests); empty when clean.
fn keepalive(args: KeepaliveArgs) -> Result<Vec<String>> {
    let mut targets: Vec<TargetKind> = Vec::new();
    for t in &args.targets {
        if !targets.contains(t) {
            targets.push(*t);
        }
    }
    let plan = if args.smoke {
        Plan {
            rounds: 1,
            duration: 1,
            connections: 4,
            warmup: 0,
            targets,
        }
    } else {
        Plan {
            rounds: args.rounds,
            duration: args.duration,
            connections: args.connections,
            warmup: args.warmup,
            targets,
        }
    };
    let wants = |kind| plan.targets.contains(&kind);

    // Everything that can be missing is checked before anything starts.
    let wrk = match args.wrk {
        Some(path) => path,
        None => targets::find_program("wrk")
            .context("wrk not found on PATH: install it with `apt-get install -y wrk`")?,
    };
    let nginx = if wants(TargetKind::Nginx) {
        Some(match args.nginx {
            Some(path) => path,
            None => targets::find_program("nginx").context(
                "nginx not found on PATH or in /usr/sbin: install it with \
                 `apt-get install -y nginx-light` (or `nginx`), or leave it out with --targets",
            )?,
        })
    } else {
        None
    };
    let sessiongate = if wants(TargetKind::Sessiongate) {
        let path = match args.sessiongate {
            Some(path) => path,
            None => default_sessiongate_path(),
        };
        if !path.is_file() {
            bail!(
                "sessiongate binary not found at {}: build it first with \
                 `cargo build --release -p control-plane`, point at it with --sessiongate PATH, \
                 or leave it out with --targets direct,nginx",
                path.display()
            );
        }
        Some(path)
    } else {
        None
    };
    let clk_tck = clock_ticks()?;
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build of the harness; the in-process origin will be slow. \
             Use `cargo run -p bench --release`."
        );
    }

    let origin = Origin::start(usize::try_from(args.origin_threads).unwrap_or(2))?;
    origin.runtime().spawn(watch_signals());
    // Declared before the targets, so dropped after them: processes stop
    // before their directory goes.
    let dir = TempDir::new("sessiongate-bench")?;
    eprintln!(
        "origin on {} ({} threads); work dir {}",
        origin.addr(),
        args.origin_threads,
        dir.path().display()
    );

    let mut running: Vec<Target> = Vec::new();
    for &kind in &plan.targets {
        check_interrupted()?;
        let target = match kind {
            TargetKind::Direct => targets::direct(origin.addr())?,
            TargetKind::Sessiongate => {
                let binary = sessiongate
                    .as_deref()
                    .context("sessiongate path not resolved")?;
                let sub = dir.path().join("sessiongate");
                std::fs::create_dir(&sub).with_context(|| format!("creating {}", sub.display()))?;
                targets::sessiongate(binary, &sub, origin.addr())?
            }
            TargetKind::Nginx => {
                let binary = nginx.as_deref().context("nginx path not resolved")?;
                let sub = dir.path().join("nginx");
                std::fs::create_dir(&sub).with_context(|| format!("creating {}", sub.display()))?;
                targets::nginx(binary, &sub, origin.addr())?
            }
        };
        let pid = target
            .proc
            .as_ref()
            .map(|p| format!(" (pid {})", p.pid()))
            .unwrap_or_default();
        eprintln!("{kind} ready at {}{pid}", target.addr);
        running.push(target);
    }

    if plan.warmup > 0 {
        for target in &mut running {
            check_interrupted()?;
            if let Some(p) = target.proc.as_mut() {
                p.ensure_running()?;
            }
            eprintln!("warm-up {} ({}s)", target.kind, plan.warmup);
            wrk::run(&wrk, &target.url(), plan.connections, plan.warmup)
                .with_context(|| format!("warming up {}", target.kind))?;
        }
    }

    let mut samples: Vec<Sample> = Vec::new();
    for round in 1..=plan.rounds {
        for target in &mut running {
            check_interrupted()?;
            let sample = measure(&origin, target, round, &wrk, &plan)
                .with_context(|| format!("round {round}, {}", target.kind))?;
            eprintln!(
                "round {round}/{} {:<11} {:>9.0} req/s  p50 {:>9}  p99 {:>9}{}",
                plan.rounds,
                target.kind,
                sample.wrk.req_per_sec,
                report::fmt_latency(sample.wrk.p50_us),
                report::fmt_latency(sample.wrk.p99_us),
                match sample.error_summary() {
                    e if e.is_empty() => String::new(),
                    e => format!("  ERRORS: {e}"),
                }
            );
            samples.push(sample);
        }
    }

    let mut rss = Vec::new();
    for target in &mut running {
        let value = match target.proc.as_mut() {
            Some(p) => Some(p.rss_kib()?),
            None => None,
        };
        rss.push((target.kind, value));
    }

    let summaries = report::summarise(&plan.targets, &samples, &rss, clk_tck);
    let table = report::summary_table(&summaries);
    let headline = report::headline(&summaries);
    println!();
    print!("{table}");
    if let Some(line) = &headline {
        println!();
        println!("{line}");
    }

    if let Some(path) = &args.write {
        let text = written_report(
            &plan,
            &running,
            &samples,
            &table,
            headline.as_deref(),
            clk_tck,
            nginx.as_deref(),
            &wrk,
            sessiongate.as_deref(),
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }

    // Stop the proxies now, while the origin still answers.
    drop(running);
    drop(dir);

    Ok(summaries
        .iter()
        .filter(|s| s.flagged())
        .map(|s| {
            if s.requests == 0 {
                format!("{} served zero requests", s.target)
            } else {
                format!(
                    "{} served {} errors ({})",
                    s.target, s.errors, s.error_detail
                )
            }
        })
        .collect())
}

/// One wrk run with the proxy's CPU and the origin's counters read around it.
fn measure(
    origin: &Origin,
    target: &mut Target,
    round: u32,
    wrk: &Path,
    plan: &Plan,
) -> Result<Sample> {
    let cpu_before = match target.proc.as_mut() {
        Some(p) => Some(p.cpu_ticks()?),
        None => None,
    };
    let origin_before = origin.counts();
    let result = wrk::run(wrk, &target.url(), plan.connections, plan.duration)?;
    let origin_after = origin.counts();
    let cpu_ticks = match (target.proc.as_mut(), cpu_before) {
        (Some(p), Some(before)) => Some(p.cpu_ticks()?.saturating_sub(before)),
        _ => None,
    };
    Ok(Sample {
        round,
        target: target.kind,
        wrk: result,
        cpu_ticks,
        origin: origin::OriginCounts {
            requests: origin_after.requests - origin_before.requests,
            connections: origin_after.connections - origin_before.connections,
        },
    })
}

/// Sets [`INTERRUPTED`] on SIGINT or SIGTERM instead of dying on the spot, so
/// that the main thread unwinds through the Drop guards and stops the
/// proxies and removes the temp dir.
async fn watch_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    INTERRUPTED.store(true, Ordering::Relaxed);
    eprintln!("\ninterrupted: stopping the current run and cleaning up");
}

/// `<target dir>/release/sessiongate`, found from this executable's own
/// place (`<target dir>/<profile>/bench`), so CARGO_TARGET_DIR is honoured.
fn default_sessiongate_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("release").join("sessiongate")))
        .unwrap_or_else(|| PathBuf::from("target/release/sessiongate"))
}

/// Clock ticks per second, the unit of utime/stime in /proc/<pid>/stat.
fn clock_ticks() -> Result<u64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running `getconf CLK_TCK`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ticks: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("`getconf CLK_TCK` printed {text:?}"))?;
    if ticks == 0 {
        bail!("`getconf CLK_TCK` printed 0");
    }
    Ok(ticks)
}

#[allow(clippy::too_many_arguments)]
fn written_report(
    plan: &Plan,
    running: &[Target],
    samples: &[Sample],
    table: &str,
    headline: Option<&str>,
    clk_tck: u64,
    nginx: Option<&Path>,
    wrk: &Path,
    sessiongate: Option<&Path>,
) -> String {
    let machine = Machine::collect();
    let command: Vec<String> = std::env::args().map(|a| report::shell_quote(&a)).collect();
    let unknown = || "unknown".to_owned();
    let wrk_version = report::version_line(&wrk.to_string_lossy(), &["-v"]);
    let mut r = String::new();
    let _ = writeln!(r, "# sessiongate keep-alive benchmark\n");
    let _ = writeln!(r, "- Date: {}", machine.date);
    let _ = writeln!(
        r,
        "- Machine: {} CPUs (`nproc`), {}, kernel {}",
        machine.nproc, machine.cpu_model, machine.kernel
    );
    if let Some(nginx) = nginx {
        let v = report::version_line(&nginx.to_string_lossy(), &["-v"]);
        let _ = writeln!(r, "- nginx: {}", v.unwrap_or_else(unknown));
    }
    let _ = writeln!(r, "- wrk: {}", wrk_version.unwrap_or_else(unknown));
    if let Some(sg) = sessiongate {
        let version = report::command_line_output(&sg.to_string_lossy(), &["--version"]);
        let _ = writeln!(
            r,
            "- sessiongate: `{}` ({})",
            sg.display(),
            version.unwrap_or_else(unknown)
        );
    }
    if let Some(commit) = report::source_commit(&[]) {
        let _ = writeln!(r, "- Source: commit {commit}");
    }
    let _ = writeln!(r, "- Command: `{}`", command.join(" "));
    let _ = writeln!(
        r,
        "- Load: `wrk -t1 -c{} -d{}s --latency -H 'Host: {}'`, {} round(s), targets interleaved \
         within each round ({}), {} s unrecorded warm-up per target; {}-byte responses from an \
         in-process hyper origin",
        plan.connections,
        plan.duration,
        wrk::HOST,
        plan.rounds,
        plan.targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
        plan.warmup,
        origin::BODY_LEN,
    );
    let _ = writeln!(r, "\n## Summary\n");
    let _ = writeln!(r, "{table}");
    if let Some(line) = headline {
        let _ = writeln!(r, "**{line}**\n");
    }
    let _ = writeln!(
        r,
        "Medians over rounds for req/s and latency. Proxy CPU is utime+stime of all the \
         proxy's processes (nginx: master + worker) over the total requests of all rounds \
         ({clk_tck} ticks/s). RSS is read after the last round. Upstream conns/run is the \
         number of connections the origin accepted during one wrk run: close to the client \
         connection count means upstream keep-alive works. The machine is shared and noisy: \
         only ratios within this run mean anything.\n"
    );
    let _ = writeln!(r, "## Per-round raw figures\n");
    let _ = writeln!(r, "{}", report::raw_table(samples, clk_tck));
    let _ = writeln!(r, "## Configurations\n");
    for target in running {
        if let Some((name, text)) = &target.config {
            let lang = if name.ends_with(".toml") {
                "toml"
            } else {
                "nginx"
            };
            let _ = writeln!(
                r,
                "<details><summary>{} ({name})</summary>\n\n```{lang}\n{}```\n\n</details>\n",
                target.kind, text
            );
        }
    }
    r
}
