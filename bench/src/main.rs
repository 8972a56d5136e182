//! Benchmark harness: sessiongate side by side with nginx, haproxy,
//! configurable-http-proxy and a direct connection, in one run, so that the
//! figures that matter are same-run ratios rather than absolute numbers from
//! a shared, noisy machine (`keepalive`, `new-connection`, `body-1mib`,
//! `routes`, `ws-echo`, and `churn` for sessiongate alone); `https`,
//! keep-alive over HTTPS/1.1 and h2 through sessiongate and nginx;
//! `tls-handshakes`, new TLS connections against sessiongate's HTTPS
//! listener and nginx's;
//! `table-updates`, the route table under a stream of single-route changes;
//! the attacks, `slowloris` and `h2-flood`: a normal client's latency
//! and the server's memory while sessiongate and nginx are attacked; and
//! `instructions`, instructions per proxied request under callgrind for
//! sessiongate and nginx.
//!
//! # Layout
//!
//! - `main.rs`: the command line and `all`.
//! - `side_by_side.rs`: what the wrk scenarios share: options, tools, the
//!   interleaved rounds, summaries with ratios to nginx, the written section.
//! - `scenarios.rs`: `keepalive`, `new-connection`, `body-1mib`, `routes`,
//!   `ws-echo`.
//! - `churn.rs`: `churn`, route updates through the control-plane API
//!   under load; `propagation.rs`: `churn --gateways N`, the same updates
//!   through a `sessiongate control-plane` and how long each takes to reach
//!   every `sessiongate gateway` that follows it.
//! - `ws_load.rs`: the WebSocket load client (`ws-echo`). The origins, HTTP
//!   and WebSocket echo, are testkit's (`testkit::origin`, `testkit::ws`),
//!   run in process on a runtime of their own.
//! - `targets.rs`: starting sessiongate and nginx (HTTP and HTTPS) with a
//!   set of routes and knowing they are ready; `peers.rs`: haproxy and chp.
//! - `api.rs`: the JSON client for sessiongate's and chp's APIs.
//! - `procs.rs`: child processes, their CPU and RSS from /proc, temp dirs,
//!   the interruption flag.
//! - `wrk.rs`, `openssl.rs`: the load generators (wrk and its Lua scripts;
//!   `openssl s_time` and `s_client`) and their output.
//! - `report.rs`: summary tables and the written reports; `results.rs`: the
//!   results file's summary table, made from the summary line every written
//!   section carries.
//! - `tls_handshakes.rs`, `table_updates.rs`: those scenarios.
//! - `https.rs`: `https`, keep-alive over TLS through sessiongate and nginx,
//!   HTTP/1.1 (wrk) and h2 (`h2load.rs`).
//! - `floods.rs`: `slowloris` and `h2-flood`; `attackers.rs`: slowhttptest
//!   and h2load, and the connection count from /proc; `rapid_reset.rs`: the
//!   HTTP/2 rapid-reset client.
//! - `instructions.rs`: `instructions`, the proxies under callgrind.

mod api;
mod attackers;
mod churn;
mod floods;
mod h2load;
mod https;
mod instructions;
mod openssl;
mod peers;
mod postgres;
mod procs;
mod propagation;
mod rapid_reset;
mod report;
mod results;
mod scenarios;
mod side_by_side;
mod table_updates;
mod targets;
mod tls_handshakes;
mod wrk;
mod ws_load;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::procs::{interrupted, INTERRUPTED};
use crate::scenarios::{RoutesArgs, WrkArgs};
use crate::side_by_side::CommonArgs;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Load scenarios for sessiongate, measured side by side with nginx, haproxy, \
             configurable-http-proxy and a direct connection"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// 128-byte responses over keep-alive connections, driven by wrk.
    Keepalive(WrkArgs),
    /// 128-byte responses, a new TCP connection per request
    /// (`Connection: close`).
    NewConnection(WrkArgs),
    /// 1 MiB responses over keep-alive connections.
    #[command(name = "body-1mib")]
    Body1Mib(WrkArgs),
    /// 1, 10k and 100k routes, a random Host per request.
    Routes(RoutesArgs),
    /// WebSocket echo messages/s through every target.
    WsEcho(WrkArgs),
    /// 128-byte responses over keep-alive HTTPS, HTTP/1.1 (wrk) and h2
    /// (h2load), through sessiongate and nginx with the same certificate.
    Https(https::HttpsArgs),
    /// sessiongate under load while the control-plane API makes 1,000 route
    /// updates/s; the same load without them for the ratio. With
    /// --gateways N: a control plane and N gateways following it, and how
    /// long each update takes to reach each gateway.
    Churn(churn::ChurnArgs),
    /// Every side-by-side scenario in turn (keepalive, new-connection,
    /// https, body-1mib, routes, ws-echo, churn) with the same options, each
    /// writing its section.
    All(CommonArgs),
    /// Single-route updates published into a large route table while a
    /// reader looks routes up (in-process, no proxy or sockets).
    TableUpdates(table_updates::TableUpdatesArgs),
    /// Full and resumed TLS handshakes per second against sessiongate's
    /// HTTPS listener and nginx's, same certificate, driven by openssl s_time.
    TlsHandshakes(tls_handshakes::TlsHandshakesArgs),
    /// A normal client's p99 alone and while slowhttptest holds 1,000 slow
    /// clients open, against sessiongate and nginx; RSS before and after.
    Slowloris(floods::SlowlorisArgs),
    /// A normal client's p99 alone and under an HTTP/2 stream flood
    /// (h2load) and a rapid-reset flood (CVE-2023-44487), against
    /// sessiongate and nginx; RSS before and after.
    #[command(name = "h2-flood")]
    H2Flood(floods::H2FloodArgs),
    /// Instructions per proxied request under callgrind, sessiongate and
    /// nginx (one process) under the same light load; sessiongate's
    /// profile printed.
    Instructions(instructions::InstructionsArgs),
    /// Makes the summary table of a results file again from the summary
    /// lines of its sections, as every `--write` does; runs nothing.
    Summary {
        /// The results file [default: bench/RESULTS.md].
        #[arg(default_value = "bench/RESULTS.md")]
        path: PathBuf,
    },
}

/// How a scenario ended, for the exit status.
enum Outcome {
    Clean,
    /// Errors or zero requests: exit 1.
    Problems(Vec<String>),
    /// A setup failure (2) or an interruption (130).
    Failed(anyhow::Error),
}

impl From<Result<Vec<String>>> for Outcome {
    fn from(result: Result<Vec<String>>) -> Self {
        match result {
            Ok(p) if p.is_empty() => Self::Clean,
            Ok(p) => Self::Problems(p),
            Err(e) => Self::Failed(e),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome: Outcome = match cli.scenario {
        Scenario::Keepalive(args) => scenarios::keepalive(args).into(),
        Scenario::NewConnection(args) => scenarios::new_connection(args).into(),
        Scenario::Body1Mib(args) => scenarios::body_1mib(args).into(),
        Scenario::Routes(args) => scenarios::routes(args).into(),
        Scenario::WsEcho(args) => scenarios::ws_echo(args).into(),
        Scenario::Https(args) => https::run(args).into(),
        Scenario::Churn(args) => churn::run(args).into(),
        Scenario::All(common) => all(common),
        Scenario::TableUpdates(args) => table_updates::run(args).into(),
        Scenario::TlsHandshakes(args) => tls_handshakes::run(args).into(),
        Scenario::Slowloris(args) => floods::slowloris(args).into(),
        Scenario::H2Flood(args) => floods::h2_flood(args).into(),
        Scenario::Instructions(args) => instructions::run(args).into(),
        Scenario::Summary { path } => summary(&path).into(),
    };
    match outcome {
        Outcome::Clean => ExitCode::SUCCESS,
        Outcome::Problems(problems) => {
            eprintln!("FAILED: {}", problems.join("; "));
            ExitCode::from(1)
        }
        Outcome::Failed(_) if interrupted() => {
            eprintln!("interrupted; child processes stopped and temp dir removed");
            ExitCode::from(130)
        }
        Outcome::Failed(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// `bench summary PATH`: the summary table of an existing results file made
/// again from its sections.
fn summary(path: &std::path::Path) -> Result<Vec<String>> {
    if !path.is_file() {
        bail!("{} is not a file", path.display());
    }
    side_by_side::update_file(path, |text| Ok(text.to_owned()))?;
    eprintln!("made the summary of {} again", path.display());
    Ok(Vec::new())
}

/// Runs every wrk scenario with `common`, one after the other, each in its
/// own temp dir with its own origin; a scenario that fails to set up does
/// not stop the others. The worst outcome decides the exit status.
fn all(common: CommonArgs) -> Outcome {
    type Step = (&'static str, Box<dyn Fn(CommonArgs) -> Result<Vec<String>>>);
    let steps: Vec<Step> = vec![
        (
            "keepalive",
            Box::new(|c| scenarios::keepalive(WrkArgs { common: c })),
        ),
        (
            "new-connection",
            Box::new(|c| scenarios::new_connection(WrkArgs { common: c })),
        ),
        (
            "https",
            Box::new(|mut c: CommonArgs| {
                // sessiongate and nginx only, whatever the others measure.
                c.targets = None;
                https::run(https::HttpsArgs::with(c))
            }),
        ),
        (
            "body-1mib",
            Box::new(|c| scenarios::body_1mib(WrkArgs { common: c })),
        ),
        (
            "routes",
            Box::new(|c| {
                scenarios::routes(RoutesArgs {
                    common: c,
                    sizes: None,
                })
            }),
        ),
        (
            "ws-echo",
            Box::new(|c| scenarios::ws_echo(WrkArgs { common: c })),
        ),
        (
            "churn",
            Box::new(|mut c: CommonArgs| {
                // sessiongate only, whatever the others measure.
                c.targets = None;
                churn::run(churn::ChurnArgs::with(c))
            }),
        ),
    ];
    let started = std::time::Instant::now();
    let mut problems = Vec::new();
    let mut failures = Vec::new();
    for (name, step) in steps {
        if interrupted() {
            break;
        }
        eprintln!("\n=== {name} ===");
        println!("\n## {name}\n");
        match step(common.clone()).into() {
            Outcome::Clean => {}
            Outcome::Problems(p) => problems.extend(p.into_iter().map(|p| format!("{name}: {p}"))),
            Outcome::Failed(e) => {
                eprintln!("{name}: error: {e:#}");
                failures.push(e.context(name));
            }
        }
    }
    eprintln!(
        "\nall scenarios took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if interrupted() {
        return Outcome::Failed(anyhow::anyhow!("interrupted"));
    }
    match failures.into_iter().next() {
        Some(first) => {
            if !problems.is_empty() {
                eprintln!("FAILED: {}", problems.join("; "));
            }
            Outcome::Failed(first)
        }
        None if problems.is_empty() => Outcome::Clean,
        None => Outcome::Problems(problems),
    }
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

/// The sessiongate built with the same profile as this harness, beside it
/// (`<target dir>/<profile>/sessiongate`: `cargo build --profile dist -p
/// control-plane -p bench` builds both there), so CARGO_TARGET_DIR and the
/// profile are honoured.
fn default_sessiongate_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("sessiongate")))
        .unwrap_or_else(|| PathBuf::from("target/dist/sessiongate"))
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
