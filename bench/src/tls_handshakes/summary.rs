//! The figures of a `tls-handshakes` run: one sample per run, summaries
//! per mode and target with their ratios to nginx, and the tables and the
//! results-file section made of them.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::{Mode, Plan, Version, DOMAIN, TARGET_RATIO};
use crate::openssl::{ClientRun, Negotiated};
use crate::report::{self, median};
use crate::targets::{Target, TargetKind};

/// One run: one mode against one target, all clients together.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) round: u32,
    pub(super) mode: Mode,
    pub(super) target: TargetKind,
    pub(super) clients: Vec<ClientRun>,
    /// Server CPU (utime + stime, all its processes) during the run.
    pub(super) cpu_ticks: u64,
}

impl Sample {
    /// Connections per second: each client's count over its own wall time,
    /// summed.
    pub(super) fn per_sec(&self) -> f64 {
        self.clients.iter().map(ClientRun::per_sec).sum()
    }

    pub(super) fn connections(&self) -> u64 {
        self.clients.iter().map(|c| c.output.connections).sum()
    }

    pub(super) fn reused(&self) -> u64 {
        self.clients.iter().map(|c| c.output.reused).sum()
    }

    pub(super) fn fresh(&self) -> u64 {
        self.clients.iter().map(|c| c.output.fresh).sum()
    }

    pub(super) fn bytes_read(&self) -> u64 {
        self.clients.iter().map(|c| c.output.bytes_read).sum()
    }

    pub(super) fn wall(&self) -> Duration {
        self.clients
            .iter()
            .map(|c| c.wall)
            .max()
            .unwrap_or_default()
    }

    pub(super) fn cpu_us_per_handshake(&self, clk_tck: u64) -> Option<f64> {
        cpu_us_per(self.cpu_ticks, self.connections(), clk_tck)
    }

    /// Cores the server kept busy, on average over the run.
    pub(super) fn server_cores(&self, clk_tck: u64) -> f64 {
        let wall = self.wall().as_secs_f64();
        if wall > 0.0 && clk_tck > 0 {
            self.cpu_ticks as f64 / clk_tck as f64 / wall
        } else {
            0.0
        }
    }

    /// What makes this run's figures wrong or not comparable.
    pub(super) fn problems(&self) -> Vec<String> {
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

pub(super) fn cpu_us_per(ticks: u64, count: u64, clk_tck: u64) -> Option<f64> {
    if count == 0 || clk_tck == 0 {
        return None;
    }
    Some(ticks as f64 * 1e6 / clk_tck as f64 / count as f64)
}

/// The figures of one mode and target over all rounds.
#[derive(Debug, Clone)]
pub(super) struct Summary {
    pub(super) mode: Mode,
    pub(super) target: TargetKind,
    /// Median over rounds.
    pub(super) per_sec: f64,
    pub(super) vs_nginx: Option<f64>,
    /// Total server CPU over total handshakes of all rounds: clock ticks are
    /// 10 ms coarse, so pooling beats a median of per-round quotients.
    pub(super) cpu_us: Option<f64>,
    /// Median over rounds.
    pub(super) cores: f64,
    pub(super) connections: u64,
    pub(super) reused: u64,
    pub(super) problems: Vec<String>,
}

pub(super) fn summarise(plan: &Plan, samples: &[Sample], clk_tck: u64) -> Vec<Summary> {
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

/// One summary row per mode: handshakes/s and CPU per handshake of both
/// servers, the ratio, judged against [`TARGET_RATIO`]; a flagged
/// sessiongate run does not meet it.
pub(super) fn summary_rows(summaries: &[Summary]) -> Vec<crate::results::Row> {
    let mut modes: Vec<Mode> = summaries.iter().map(|s| s.mode).collect();
    modes.dedup();
    modes
        .into_iter()
        .map(|mode| {
            let find = |kind| {
                summaries
                    .iter()
                    .find(|s| s.mode == mode && s.target == kind)
            };
            let figures = |s: &Summary| {
                format!(
                    "{} handshakes/s, {} µs CPU each",
                    crate::results::count(s.per_sec),
                    report::fmt_opt(s.cpu_us, |c| format!("{c:.0}"))
                )
            };
            let sg = find(TargetKind::Sessiongate);
            let ratio = sg.and_then(|s| s.vs_nginx);
            let mut row = crate::results::Row::new("tls-handshakes", mode.label());
            row.sessiongate = sg.map_or("not measured".into(), figures);
            row.peer = format!(
                "nginx: {}",
                find(TargetKind::Nginx).map_or("not measured".into(), figures)
            );
            row.ratio = crate::results::times(ratio);
            row.target = format!("handshakes/s ≥ {TARGET_RATIO:.1}x nginx");
            row.met = ratio.map(|r| r >= TARGET_RATIO);
            if let Some(s) = sg.filter(|s| !s.problems.is_empty()) {
                row.met = Some(false);
                row.note = format!("FLAGGED: {}", s.problems.join("; "));
            }
            row
        })
        .collect()
}

pub(super) fn summary_table(summaries: &[Summary]) -> String {
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
pub(super) fn headlines(summaries: &[Summary]) -> Vec<String> {
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

pub(super) fn raw_table(samples: &[Sample], clk_tck: u64) -> String {
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

pub(super) fn rss_line(rss: &[(TargetKind, u64)]) -> String {
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
pub(super) struct Written<'a> {
    pub(super) plan: &'a Plan,
    pub(super) running: &'a [Target],
    pub(super) samples: &'a [Sample],
    pub(super) table: &'a str,
    pub(super) headlines: &'a [String],
    pub(super) rss: &'a [(TargetKind, u64)],
    pub(super) negotiated: &'a [(TargetKind, Version, Negotiated)],
    pub(super) differences: &'a [String],
    pub(super) clk_tck: u64,
    pub(super) nginx: Option<&'a Path>,
    pub(super) openssl: &'a Path,
    pub(super) sessiongate: &'a Path,
    pub(super) load: (&'a str, &'a str),
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

pub(super) fn written_section(w: &Written<'_>) -> String {
    let unknown = || "unknown".to_owned();
    let command: Vec<String> = std::env::args().map(|a| report::shell_quote(&a)).collect();
    let mut r = report::section_head("TLS handshakes", w.load.0, w.load.1);
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
            let _ = writeln!(r, "{}", report::config_details(target.kind, name, text));
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
