//! The `tls-handshakes` scenario: new TLS connections per second against
//! sessiongate's HTTPS listener and nginx's, side by side in one run, with
//! the same certificate, full and resumed, TLS 1.3 and TLS 1.2.
//!
//! A certificate pair is made once per run with `sessiongate certs dev`; both
//! servers load that very pair. The load generator is `openssl s_time`
//! (see [`crate::openssl`]), several clients in parallel, the same command
//! for both servers. Every connection is TCP connect, TLS handshake, one
//! `GET / HTTP/1.0` that the server answers itself, and close: `s_time` only
//! takes a TLS 1.3 session ticket from the server when it reads after the
//! handshake, so without the request TLS 1.3 sessions are never resumed.
//! The server's CPU (utime + stime from /proc, whole process tree) is read
//! around every run, which gives CPU per handshake.

use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::openssl::{self, ClientRun, Negotiated};
use crate::procs::{check_interrupted, TempDir};
use crate::report::{self, median, Machine};
use crate::targets::{self, CertPair, Target, TargetKind};

/// The name the certificate is made for. Nothing resolves it: clients
/// connect to 127.0.0.1 and `s_time` sends no SNI, so both servers answer
/// with their default (and only) certificate.
pub const DOMAIN: &str = "bench.test";

/// What the issue asks: at least nginx's handshakes/s, full and resumed.
const TARGET_RATIO: f64 = 1.0;

/// Markers around the section `--write` replaces in a results file.
const BEGIN: &str =
    "<!-- tls-handshakes:begin (written by `bench tls-handshakes --write`; replaced on every run) -->";
const END: &str = "<!-- tls-handshakes:end -->";

/// A kind of handshake, measured as its own run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TLS 1.3, a new session every connection (`s_time -new`).
    Tls13Full,
    /// TLS 1.3, the session of a first connection resumed (`s_time -reuse`).
    Tls13Resumed,
    /// TLS 1.2, a new session every connection.
    Tls12Full,
    /// TLS 1.2, resumed (with the session ticket the server issued).
    Tls12Resumed,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tls13Full => "tls13-full",
            Self::Tls13Resumed => "tls13-resumed",
            Self::Tls12Full => "tls12-full",
            Self::Tls12Resumed => "tls12-resumed",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Tls13Full => "TLS 1.3 full",
            Self::Tls13Resumed => "TLS 1.3 resumed",
            Self::Tls12Full => "TLS 1.2 full",
            Self::Tls12Resumed => "TLS 1.2 resumed",
        }
    }

    pub fn resumed(self) -> bool {
        matches!(self, Self::Tls13Resumed | Self::Tls12Resumed)
    }

    pub fn version(self) -> Version {
        match self {
            Self::Tls13Full | Self::Tls13Resumed => Version::Tls13,
            Self::Tls12Full | Self::Tls12Resumed => Version::Tls12,
        }
    }

    /// The arguments after `openssl s_time`.
    pub fn s_time_args(self, connect: &str, secs: u64) -> Vec<String> {
        [
            "-connect",
            connect,
            if self.resumed() { "-reuse" } else { "-new" },
            self.version().flag(),
            "-www",
            "/",
            "-time",
            &secs.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls13,
    Tls12,
}

impl Version {
    /// The `openssl` flag that forces it.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Tls13 => "-tls1_3",
            Self::Tls12 => "-tls1_2",
        }
    }

    /// How `s_client` names it.
    pub fn openssl_name(self) -> &'static str {
        match self {
            Self::Tls13 => "TLSv1.3",
            Self::Tls12 => "TLSv1.2",
        }
    }
}

#[derive(Args)]
pub struct TlsHandshakesArgs {
    /// Rounds; each round runs every mode against every target, the targets
    /// back to back (in alternating order) so that noise spreads evenly.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Seconds per s_time run (s_time's -time).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Parallel s_time clients per run; each opens one connection at a time.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,
    /// Unrecorded warm-up seconds per target (TLS 1.3 full handshakes)
    /// before the first round (0: none).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Handshake kinds to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tls13-full,tls13-resumed,tls12-full,tls12-resumed"
    )]
    modes: Vec<Mode>,
    /// Targets to measure, comma-separated (sessiongate, nginx).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sessiongate,nginx"
    )]
    targets: Vec<TargetKind>,
    /// CI mode: 1 round of 1 s per mode and target, no warm-up; fails on any
    /// client error, a resumed run that did not resume or a full run that
    /// did, never on speed.
    #[arg(long, conflicts_with_all = ["rounds", "seconds", "warmup"])]
    smoke: bool,
    /// Also write the report as the "TLS handshakes" section of this
    /// markdown file (the section is replaced, the rest of the file kept).
    #[arg(long, value_name = "PATH")]
    write: Option<PathBuf>,
    /// The sessiongate binary, which also makes the certificate [default:
    /// the one beside this harness, built with the same profile].
    #[arg(long, value_name = "PATH")]
    sessiongate: Option<PathBuf>,
    /// The nginx binary [default: nginx from PATH or /usr/sbin].
    #[arg(long, value_name = "PATH")]
    nginx: Option<PathBuf>,
    /// The openssl binary, for s_time and s_client [default: openssl from PATH].
    #[arg(long, value_name = "PATH")]
    openssl: Option<PathBuf>,
}

/// The resolved run parameters (after `--smoke`).
struct Plan {
    rounds: u32,
    seconds: u64,
    clients: u32,
    warmup: u64,
    modes: Vec<Mode>,
    targets: Vec<TargetKind>,
}

/// One run: one mode against one target, all clients together.
#[derive(Debug, Clone)]
struct Sample {
    round: u32,
    mode: Mode,
    target: TargetKind,
    clients: Vec<ClientRun>,
    /// Server CPU (utime + stime, all its processes) during the run.
    cpu_ticks: u64,
}

impl Sample {
    /// Connections per second: each client's count over its own wall time,
    /// summed.
    fn per_sec(&self) -> f64 {
        self.clients.iter().map(ClientRun::per_sec).sum()
    }

    fn connections(&self) -> u64 {
        self.clients.iter().map(|c| c.output.connections).sum()
    }

    fn reused(&self) -> u64 {
        self.clients.iter().map(|c| c.output.reused).sum()
    }

    fn fresh(&self) -> u64 {
        self.clients.iter().map(|c| c.output.fresh).sum()
    }

    fn bytes_read(&self) -> u64 {
        self.clients.iter().map(|c| c.output.bytes_read).sum()
    }

    fn wall(&self) -> Duration {
        self.clients
            .iter()
            .map(|c| c.wall)
            .max()
            .unwrap_or_default()
    }

    fn cpu_us_per_handshake(&self, clk_tck: u64) -> Option<f64> {
        cpu_us_per(self.cpu_ticks, self.connections(), clk_tck)
    }

    /// Cores the server kept busy, on average over the run.
    fn server_cores(&self, clk_tck: u64) -> f64 {
        let wall = self.wall().as_secs_f64();
        if wall > 0.0 && clk_tck > 0 {
            self.cpu_ticks as f64 / clk_tck as f64 / wall
        } else {
            0.0
        }
    }

    /// What makes this run's figures wrong or not comparable.
    fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .clients
            .iter()
            .filter_map(|c| c.failure.clone())
            .collect();
        if self.connections() == 0 {
            out.push("no connections".into());
        } else if self.mode.resumed() && self.fresh() > 0 {
            out.push(format!(
                "{} of {} handshakes were full, not resumed",
                self.fresh(),
                self.connections()
            ));
        } else if !self.mode.resumed() && self.reused() > 0 {
            out.push(format!(
                "{} of {} handshakes were resumed, not full",
                self.reused(),
                self.connections()
            ));
        }
        if self.connections() > 0 && self.bytes_read() == 0 {
            out.push("no response read".into());
        }
        out
    }
}

fn cpu_us_per(ticks: u64, count: u64, clk_tck: u64) -> Option<f64> {
    if count == 0 || clk_tck == 0 {
        return None;
    }
    Some(ticks as f64 * 1e6 / clk_tck as f64 / count as f64)
}

/// The figures of one mode and target over all rounds.
#[derive(Debug, Clone)]
struct Summary {
    mode: Mode,
    target: TargetKind,
    /// Median over rounds.
    per_sec: f64,
    vs_nginx: Option<f64>,
    /// Total server CPU over total handshakes of all rounds: clock ticks are
    /// 10 ms coarse, so pooling beats a median of per-round quotients.
    cpu_us: Option<f64>,
    /// Median over rounds.
    cores: f64,
    connections: u64,
    reused: u64,
    problems: Vec<String>,
}

fn summarise(plan: &Plan, samples: &[Sample], clk_tck: u64) -> Vec<Summary> {
    let mut out = Vec::new();
    for &mode in &plan.modes {
        let first = out.len();
        for &target in &plan.targets {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.mode == mode && s.target == target)
                .collect();
            let connections = mine.iter().map(|s| s.connections()).sum();
            let ticks = mine.iter().map(|s| s.cpu_ticks).sum();
            out.push(Summary {
                mode,
                target,
                per_sec: median(&mine.iter().map(|s| s.per_sec()).collect::<Vec<_>>()),
                vs_nginx: None,
                cpu_us: cpu_us_per(ticks, connections, clk_tck),
                cores: median(
                    &mine
                        .iter()
                        .map(|s| s.server_cores(clk_tck))
                        .collect::<Vec<_>>(),
                ),
                connections,
                reused: mine.iter().map(|s| s.reused()).sum(),
                problems: mine
                    .iter()
                    .flat_map(|s| {
                        s.problems()
                            .into_iter()
                            .map(move |p| format!("round {}: {p}", s.round))
                    })
                    .collect(),
            });
        }
        let nginx = out[first..]
            .iter()
            .find(|s| s.target == TargetKind::Nginx)
            .map(|s| s.per_sec)
            .filter(|r| *r > 0.0);
        if let Some(nginx) = nginx {
            for s in &mut out[first..] {
                s.vs_nginx = Some(s.per_sec / nginx);
            }
        }
    }
    out
}

fn summary_table(summaries: &[Summary]) -> String {
    let mut t = String::from(
        "| mode | target | handshakes/s (median) | vs nginx | server CPU µs/handshake | server CPU (cores) | resumed | errors |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for s in summaries {
        let resumed = if s.connections > 0 {
            format!("{:.0}%", s.reused as f64 * 100.0 / s.connections as f64)
        } else {
            "–".into()
        };
        let errors = if s.problems.is_empty() {
            "0".to_owned()
        } else {
            format!("**FLAGGED** ({})", s.problems.join("; "))
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {} | {} | {:.2} | {} | {} |",
            s.mode.label(),
            s.target,
            s.per_sec,
            report::fmt_opt(s.vs_nginx, |r| format!("{r:.2}x")),
            report::fmt_opt(s.cpu_us, |c| format!("{c:.0}")),
            s.cores,
            resumed,
            errors,
        );
    }
    t
}

/// One line per mode with sessiongate over nginx, then whether the issue's
/// target was met; empty unless both ran.
fn headlines(summaries: &[Summary]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut missed = Vec::new();
    let mut modes = Vec::new();
    for sg in summaries
        .iter()
        .filter(|s| s.target == TargetKind::Sessiongate)
    {
        let Some(nginx) = summaries
            .iter()
            .find(|s| s.mode == sg.mode && s.target == TargetKind::Nginx)
        else {
            continue;
        };
        let rate = if nginx.per_sec > 0.0 {
            sg.per_sec / nginx.per_sec
        } else {
            f64::NAN
        };
        let cpu = match (sg.cpu_us, nginx.cpu_us) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "n/a".into(),
        };
        lines.push(format!(
            "sessiongate / nginx, {}: handshakes/s {rate:.2}x, CPU per handshake {cpu} (lower is better)",
            sg.mode.label()
        ));
        modes.push(sg.mode.label());
        if rate.is_nan() || rate < TARGET_RATIO {
            missed.push(format!("{} {rate:.2}x", sg.mode.label()));
        }
    }
    if !modes.is_empty() {
        lines.push(if missed.is_empty() {
            format!(
                "target (>= {TARGET_RATIO:.1}x nginx's handshakes/s, full and resumed): met in every mode measured"
            )
        } else {
            format!(
                "target (>= {TARGET_RATIO:.1}x nginx's handshakes/s, full and resumed): NOT met ({})",
                missed.join(", ")
            )
        });
    }
    lines
}

fn raw_table(samples: &[Sample], clk_tck: u64) -> String {
    let mut t = String::from(
        "| round | mode | target | handshakes/s | connections | resumed | bytes read/conn | wall | server CPU µs/handshake | server CPU (cores) | errors |\n\
         |---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for s in samples {
        let problems = s.problems();
        let n = s.connections();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.2} s | {} | {:.2} | {} |",
            s.round,
            s.mode.name(),
            s.target,
            s.per_sec(),
            n,
            s.reused(),
            s.bytes_read().checked_div(n).unwrap_or(0),
            s.wall().as_secs_f64(),
            report::fmt_opt(s.cpu_us_per_handshake(clk_tck), |c| format!("{c:.0}")),
            s.server_cores(clk_tck),
            if problems.is_empty() {
                "0".into()
            } else {
                problems.join("; ")
            },
        );
    }
    t
}

/// Runs the scenario. Returns the problems that must fail the run (client
/// errors, handshakes of the wrong kind, no connections); empty when clean.
pub fn run(args: TlsHandshakesArgs) -> Result<Vec<String>> {
    let targets_wanted = crate::side_by_side::pick_targets(
        &args.targets,
        &[TargetKind::Sessiongate, TargetKind::Nginx],
    )?;
    let mut modes: Vec<Mode> = Vec::new();
    for &m in &args.modes {
        if !modes.contains(&m) {
            modes.push(m);
        }
    }
    let plan = if args.smoke {
        Plan {
            rounds: 1,
            seconds: 1,
            clients: args.clients,
            warmup: 0,
            modes,
            targets: targets_wanted,
        }
    } else {
        Plan {
            rounds: args.rounds,
            seconds: args.seconds,
            clients: args.clients,
            warmup: args.warmup,
            modes,
            targets: targets_wanted,
        }
    };
    let wants = |kind| plan.targets.contains(&kind);

    // Everything that can be missing is checked before anything starts.
    let openssl = match args.openssl {
        Some(path) => path,
        None => targets::find_program("openssl")
            .context("openssl not found on PATH: install it with `apt-get install -y openssl`")?,
    };
    let nginx = if wants(TargetKind::Nginx) {
        Some(match args.nginx {
            Some(path) => path,
            None => targets::find_program("nginx").context(
                "nginx not found on PATH or in /usr/sbin: install it with \
                 `apt-get install -y nginx`, or leave it out with --targets sessiongate",
            )?,
        })
    } else {
        None
    };
    // Needed even without the sessiongate target: it makes the certificate.
    // Absolute: sessiongate starts in its own directory.
    let sessiongate = crate::side_by_side::absolute(
        &args
            .sessiongate
            .unwrap_or_else(crate::default_sessiongate_path),
    );
    if !sessiongate.is_file() {
        bail!(
            "sessiongate binary not found at {}: build it first with \
             `cargo build --profile dist -p control-plane` or point at it with --sessiongate PATH \
             (it also makes the certificate both servers use)",
            sessiongate.display()
        );
    }
    let clk_tck = crate::clock_ticks()?;
    let load_before = crate::side_by_side::load_average();

    // The signal watcher needs a runtime; this scenario has no origin.
    let signals = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-signals")
        .enable_all()
        .build()
        .context("starting the signal watcher's runtime")?;
    signals.spawn(crate::watch_signals());

    // Declared before the targets, so dropped after them: processes stop
    // before their directory goes.
    let dir = TempDir::new("sessiongate-bench-tls")?;
    let certs = make_certificate(&sessiongate, dir.path())?;
    let ca = certs.dir.join("ca.crt");
    let expected_leaf = {
        let pem = std::fs::read_to_string(certs.cert())
            .with_context(|| format!("reading {}", certs.cert().display()))?;
        openssl::first_pem_body(&pem)
            .with_context(|| format!("no certificate in {}", certs.cert().display()))?
    };
    eprintln!(
        "certificate {} (CA {}); work dir {}",
        certs.cert().display(),
        ca.display(),
        dir.path().display()
    );
    // Ready means: a TLS 1.3 handshake without SNI verifies against the CA
    // for DOMAIN and shows the very certificate that was made.
    let ready = |addr| -> Result<()> {
        let n = openssl::probe(&openssl, addr, &ca, DOMAIN, Version::Tls13.flag())?;
        if n.leaf != expected_leaf {
            bail!("served a certificate other than {}", certs.cert().display());
        }
        Ok(())
    };

    let mut running: Vec<Target> = Vec::new();
    for &kind in &plan.targets {
        check_interrupted()?;
        let sub = dir.path().join(kind.name());
        std::fs::create_dir(&sub).with_context(|| format!("creating {}", sub.display()))?;
        let target = match kind {
            TargetKind::Sessiongate => targets::sessiongate_tls(
                &sessiongate,
                &sub,
                &dir.path().join("sg-data"),
                &certs,
                ready,
            )?,
            TargetKind::Nginx => {
                let binary = nginx.as_deref().context("nginx path not resolved")?;
                targets::nginx_tls(binary, &sub, &certs, ready)?
            }
            other => bail!("{other} is not measured in this scenario"),
        };
        let pid = target.proc.as_ref().map(|p| p.pid()).unwrap_or_default();
        eprintln!("{kind} ready at https://{} (pid {pid})", target.addr);
        running.push(target);
    }

    // What each server negotiates with the same client, per version.
    let mut versions: Vec<Version> = Vec::new();
    for m in &plan.modes {
        if !versions.contains(&m.version()) {
            versions.push(m.version());
        }
    }
    let mut negotiated: Vec<(TargetKind, Version, Negotiated)> = Vec::new();
    for target in &running {
        for &v in &versions {
            let n = openssl::probe(&openssl, target.addr, &ca, DOMAIN, v.flag())
                .with_context(|| format!("{} with {}", target.kind, v.openssl_name()))?;
            if n.protocol != v.openssl_name() {
                bail!(
                    "{} negotiated {} when {} was asked for",
                    target.kind,
                    n.protocol,
                    v.openssl_name()
                );
            }
            eprintln!("{:<11} {}", target.kind, n.describe());
            negotiated.push((target.kind, v, n));
        }
    }
    let mut differences = Vec::new();
    for &v in &versions {
        let mut seen: Vec<String> = negotiated
            .iter()
            .filter(|(_, nv, _)| *nv == v)
            .map(|(_, _, n)| n.describe())
            .collect();
        seen.dedup();
        if seen.len() > 1 {
            let line = format!(
                "note: the servers negotiate different parameters with {}: {}",
                v.openssl_name(),
                seen.join(" / ")
            );
            eprintln!("{line}");
            differences.push(line);
        }
    }

    let client_dir = dir.path().join("clients");
    std::fs::create_dir(&client_dir)
        .with_context(|| format!("creating {}", client_dir.display()))?;
    if plan.warmup > 0 {
        let mode = plan.modes.first().copied().unwrap_or(Mode::Tls13Full);
        for target in &mut running {
            check_interrupted()?;
            eprintln!("warm-up {} ({mode}, {}s)", target.kind, plan.warmup);
            let args = mode.s_time_args(&target.addr.to_string(), plan.warmup);
            openssl::run_clients(&openssl, &args, plan.clients, plan.warmup, &client_dir)
                .with_context(|| format!("warming up {}", target.kind))?;
        }
    }

    let mut samples: Vec<Sample> = Vec::new();
    for round in 1..=plan.rounds {
        for &mode in &plan.modes {
            // Alternate which target goes first, so neither always runs
            // right after the other's load.
            let order: Vec<usize> = if round % 2 == 1 {
                (0..running.len()).collect()
            } else {
                (0..running.len()).rev().collect()
            };
            for i in order {
                check_interrupted()?;
                let target = &mut running[i];
                let sample = measure(target, mode, round, &plan, &openssl, &client_dir)
                    .with_context(|| format!("round {round}, {mode}, {}", target.kind))?;
                eprintln!(
                    "round {round}/{} {mode:<13} {:<11} {:>7.0} handshakes/s  {:>5} µs CPU/handshake  {}/{} resumed{}",
                    plan.rounds,
                    target.kind,
                    sample.per_sec(),
                    report::fmt_opt(sample.cpu_us_per_handshake(clk_tck), |c| format!("{c:.0}")),
                    sample.reused(),
                    sample.connections(),
                    match sample.problems() {
                        p if p.is_empty() => String::new(),
                        p => format!("  ERRORS: {}", p.join("; ")),
                    }
                );
                samples.push(sample);
            }
        }
    }

    let mut rss = Vec::new();
    for target in &mut running {
        if let Some(p) = target.proc.as_mut() {
            rss.push((target.kind, p.rss_kib()?));
        }
    }
    let load_after = crate::side_by_side::load_average();

    let summaries = summarise(&plan, &samples, clk_tck);
    let table = summary_table(&summaries);
    let lines = headlines(&summaries);
    println!();
    print!("{table}");
    println!();
    for line in &lines {
        println!("{line}");
    }
    println!("{}", rss_line(&rss));

    if let Some(path) = &args.write {
        let section = written_section(&Written {
            plan: &plan,
            running: &running,
            samples: &samples,
            table: &table,
            headlines: &lines,
            rss: &rss,
            negotiated: &negotiated,
            differences: &differences,
            clk_tck,
            nginx: nginx.as_deref(),
            openssl: &openssl,
            sessiongate: &sessiongate,
            load: (&load_before, &load_after),
        });
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let text = report::replace_section(&existing, BEGIN, END, &section);
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote the TLS handshakes section of {}", path.display());
    }

    drop(running);
    drop(dir);

    Ok(summaries
        .iter()
        .filter(|s| !s.problems.is_empty())
        .map(|s| format!("{} {}: {}", s.mode, s.target, s.problems.join("; ")))
        .collect())
}

/// `sessiongate certs dev --domain DOMAIN --out DIR/certs`: a development CA
/// and an ECDSA P-256 certificate for DOMAIN signed by it.
fn make_certificate(sessiongate: &Path, dir: &Path) -> Result<CertPair> {
    let out = dir.join("certs");
    let result = Command::new(sessiongate)
        .args(["certs", "dev", "--domain", DOMAIN, "--out"])
        .arg(&out)
        .output()
        .with_context(|| format!("running {} certs dev", sessiongate.display()))?;
    if !result.status.success() {
        bail!(
            "`{} certs dev` failed ({}): {}",
            sessiongate.display(),
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    let pair = CertPair {
        dir: out,
        name: DOMAIN.into(),
    };
    for file in [pair.cert(), pair.key(), pair.dir.join("ca.crt")] {
        if !file.is_file() {
            bail!("`sessiongate certs dev` did not write {}", file.display());
        }
    }
    Ok(pair)
}

/// One run of `mode` against `target`, with the server's CPU read around it.
fn measure(
    target: &mut Target,
    mode: Mode,
    round: u32,
    plan: &Plan,
    openssl: &Path,
    client_dir: &Path,
) -> Result<Sample> {
    let addr = target.addr.to_string();
    let proc = target
        .proc
        .as_mut()
        .context("a TLS target without a process")?;
    let before = proc.cpu_ticks()?;
    let args = mode.s_time_args(&addr, plan.seconds);
    let clients = openssl::run_clients(openssl, &args, plan.clients, plan.seconds, client_dir)?;
    let after = proc.cpu_ticks()?;
    Ok(Sample {
        round,
        mode,
        target: target.kind,
        clients,
        cpu_ticks: after.saturating_sub(before),
    })
}

fn rss_line(rss: &[(TargetKind, u64)]) -> String {
    let parts: Vec<String> = rss
        .iter()
        .map(|(t, kib)| format!("{t} {:.1} MiB", *kib as f64 / 1024.0))
        .collect();
    format!(
        "server RSS after the last round (all processes): {}",
        parts.join(", ")
    )
}

/// What the written section is made from.
struct Written<'a> {
    plan: &'a Plan,
    running: &'a [Target],
    samples: &'a [Sample],
    table: &'a str,
    headlines: &'a [String],
    rss: &'a [(TargetKind, u64)],
    negotiated: &'a [(TargetKind, Version, Negotiated)],
    differences: &'a [String],
    clk_tck: u64,
    nginx: Option<&'a Path>,
    openssl: &'a Path,
    sessiongate: &'a Path,
    load: (&'a str, &'a str),
}

/// What the section's figures are; see also bench/README.md.
const SECTION_TEXT: &str = "\
Every connection is a new TCP connection, a TLS handshake, one `GET / HTTP/1.0`
that the server answers itself (nginx `return 200`, sessiongate its own 400 page
for a request without `Host`) and a close by the server. The request is there
because `s_time` takes the TLS 1.3 session tickets, which servers send after
the handshake, only when it reads: without it no TLS 1.3 session is ever
resumed. Full runs use `s_time -new` (a new session every connection);
resumed runs `-reuse` (the session of a first, uncounted connection, resumed
with its ticket every time, which both servers accept). Every handshake's kind
is checked from `s_time`'s progress marks. Handshakes/s is each client's
connections over its own wall time, summed over the parallel clients; the
median over rounds is shown. Server CPU is utime + stime of all the server's
processes (nginx: master + worker) from /proc over all handshakes of all
rounds; server CPU (cores) is that CPU over the run's wall time, the median
over rounds. The clients run on the same machine: where the servers use less
than the machine's cores, the clients are what limits handshakes/s, and CPU
per handshake is the figure that compares the servers.
";

fn written_section(w: &Written<'_>) -> String {
    let machine = Machine::collect();
    let unknown = || "unknown".to_owned();
    let command: Vec<String> = std::env::args().map(|a| report::shell_quote(&a)).collect();
    let mut r = String::new();
    let _ = writeln!(r, "## TLS handshakes\n");
    let _ = writeln!(r, "- Date: {}", machine.date);
    let _ = writeln!(
        r,
        "- Machine: {} CPUs (`nproc`), {}, kernel {}; load average (1, 5, 15 min) {} before the run, {} after",
        machine.nproc, machine.cpu_model, machine.kernel, w.load.0, w.load.1
    );
    if let Some(nginx) = w.nginx {
        let v = report::version_line(&nginx.to_string_lossy(), &["-v"]);
        let _ = writeln!(r, "- nginx: {}", v.unwrap_or_else(unknown));
    }
    let openssl_version = report::command_line_output(&w.openssl.to_string_lossy(), &["version"]);
    let _ = writeln!(
        r,
        "- Client: `{}` ({})",
        w.openssl.display(),
        openssl_version.unwrap_or_else(unknown)
    );
    let sg_version = report::command_line_output(&w.sessiongate.to_string_lossy(), &["--version"]);
    let _ = writeln!(
        r,
        "- sessiongate: `{}` ({})",
        w.sessiongate.display(),
        sg_version.unwrap_or_else(unknown)
    );
    if let Some(commit) = report::source_commit(&[]) {
        let _ = writeln!(r, "- Source: commit {commit}");
    }
    let _ = writeln!(r, "- Command: `{}`", command.join(" "));
    let _ = writeln!(
        r,
        "- Servers: sessiongate with its default tokio multi-thread runtime (one worker \
         thread per CPU), nginx master + 1 worker (`worker_processes 1`); both serve the \
         same ECDSA P-256 certificate for `{DOMAIN}` from `sessiongate certs dev`, TLS 1.2 \
         and 1.3, Mozilla intermediate suites, session tickets and a session cache \
         (configurations below)"
    );
    let _ = writeln!(
        r,
        "- Load: {} parallel `openssl s_time` clients per run, {} s each, {} round(s); \
         within a round every mode runs against both targets back to back, the target \
         order alternating between rounds; {} s unrecorded warm-up per target",
        w.plan.clients, w.plan.seconds, w.plan.rounds, w.plan.warmup
    );
    let _ = writeln!(r, "- Client commands (PORT: the server's HTTPS port):");
    for mode in &w.plan.modes {
        let args = mode.s_time_args("127.0.0.1:PORT", w.plan.seconds);
        let _ = writeln!(
            r,
            "  - {}: `openssl s_time {}`",
            mode.label(),
            args.join(" ")
        );
    }
    let _ = writeln!(
        r,
        "- Negotiated (`openssl s_client -noservername`, same flags):"
    );
    for (target, version, n) in w.negotiated {
        let _ = writeln!(
            r,
            "  - {target} with {}: {}; certificate verified for {DOMAIN}, the one made for this run",
            version.flag(),
            n.describe()
        );
    }
    for line in w.differences {
        let _ = writeln!(r, "- {line}");
    }
    let _ = writeln!(r, "\n### Summary\n");
    let _ = writeln!(r, "{}", w.table);
    for line in w.headlines {
        let _ = writeln!(r, "**{line}**\n");
    }
    let _ = writeln!(r, "{}\n", rss_line(w.rss));
    let _ = writeln!(r, "{SECTION_TEXT}");
    let _ = writeln!(r, "### Per-round raw figures\n");
    let _ = writeln!(r, "{}", raw_table(w.samples, w.clk_tck));
    let _ = writeln!(r, "### Configurations\n");
    for target in w.running {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openssl::STimeOutput;

    fn client(connections: u64, reused: u64, secs: f64) -> ClientRun {
        ClientRun {
            output: STimeOutput {
                connections,
                reused,
                fresh: connections - reused,
                bytes_read: connections * 100,
            },
            wall: Duration::from_secs_f64(secs),
            failure: None,
        }
    }

    fn sample(mode: Mode, target: TargetKind, clients: Vec<ClientRun>, ticks: u64) -> Sample {
        Sample {
            round: 1,
            mode,
            target,
            clients,
            cpu_ticks: ticks,
        }
    }

    #[test]
    fn s_time_arguments() {
        assert_eq!(
            Mode::Tls13Resumed.s_time_args("127.0.0.1:1", 5).join(" "),
            "-connect 127.0.0.1:1 -reuse -tls1_3 -www / -time 5"
        );
        assert_eq!(
            Mode::Tls12Full.s_time_args("127.0.0.1:1", 2).join(" "),
            "-connect 127.0.0.1:1 -new -tls1_2 -www / -time 2"
        );
    }

    #[test]
    fn rates_sum_over_clients_and_cpu_per_handshake() {
        let s = sample(
            Mode::Tls13Full,
            TargetKind::Sessiongate,
            vec![client(1000, 0, 5.0), client(1500, 0, 5.0)],
            50,
        );
        assert!((s.per_sec() - 500.0).abs() < 1e-9);
        // 50 ticks of 10 ms = 0.5 s over 2500 handshakes.
        assert_eq!(s.cpu_us_per_handshake(100), Some(200.0));
        assert!((s.server_cores(100) - 0.1).abs() < 1e-9);
        assert!(s.problems().is_empty());
    }

    #[test]
    fn wrong_handshake_kinds_are_flagged() {
        let not_resumed = sample(
            Mode::Tls13Resumed,
            TargetKind::Nginx,
            vec![client(10, 7, 1.0)],
            1,
        );
        assert_eq!(
            not_resumed.problems(),
            vec!["3 of 10 handshakes were full, not resumed".to_owned()]
        );
        let resumed = sample(
            Mode::Tls12Full,
            TargetKind::Nginx,
            vec![client(10, 1, 1.0)],
            1,
        );
        assert_eq!(resumed.problems().len(), 1);
        let mut failed = client(0, 0, 1.0);
        failed.failure = Some("s_time exited with 1".into());
        let none = sample(Mode::Tls12Full, TargetKind::Nginx, vec![failed], 0);
        assert_eq!(none.problems().len(), 2);
    }

    #[test]
    fn summary_ratios_and_target() {
        let plan = Plan {
            rounds: 1,
            seconds: 1,
            clients: 1,
            warmup: 0,
            modes: vec![Mode::Tls13Full, Mode::Tls13Resumed],
            targets: vec![TargetKind::Sessiongate, TargetKind::Nginx],
        };
        let samples = vec![
            sample(
                Mode::Tls13Full,
                TargetKind::Sessiongate,
                vec![client(1200, 0, 1.0)],
                30,
            ),
            sample(
                Mode::Tls13Full,
                TargetKind::Nginx,
                vec![client(1000, 0, 1.0)],
                40,
            ),
            sample(
                Mode::Tls13Resumed,
                TargetKind::Sessiongate,
                vec![client(1800, 1800, 1.0)],
                20,
            ),
            sample(
                Mode::Tls13Resumed,
                TargetKind::Nginx,
                vec![client(2000, 2000, 1.0)],
                20,
            ),
        ];
        let s = summarise(&plan, &samples, 100);
        assert_eq!(s.len(), 4);
        assert!((s[0].vs_nginx.unwrap() - 1.2).abs() < 1e-9);
        assert!((s[2].vs_nginx.unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(s[0].cpu_us, Some(250.0));
        let table = summary_table(&s);
        assert!(
            table.contains("| TLS 1.3 full | sessiongate | 1200 | 1.20x | 250 | 0.30 | 0% | 0 |")
        );
        assert!(
            table.contains("| TLS 1.3 resumed | nginx | 2000 | 1.00x | 100 | 0.20 | 100% | 0 |")
        );
        let lines = headlines(&s);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("TLS 1.3 full: handshakes/s 1.20x, CPU per handshake 0.62x"));
        assert!(lines[2].contains("NOT met (TLS 1.3 resumed 0.90x)"));
    }
}
