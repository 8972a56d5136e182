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
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

mod summary;

use crate::openssl::{self, Negotiated};
use crate::procs::{check_interrupted, TempDir};
use crate::report;
use crate::targets::{self, CertPair, Target, TargetKind};
use summary::{
    headlines, rss_line, summarise, summary_rows, summary_table, written_section, Sample, Written,
};

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
        let rows = summary_rows(&summaries);
        crate::side_by_side::write_section(path, BEGIN, END, &section, &rows)?;
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
pub(crate) fn make_certificate(sessiongate: &Path, dir: &Path) -> Result<CertPair> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
