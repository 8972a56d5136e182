//! Turning samples into the summary table and the written report.

use std::fmt::Write as _;
use std::process::Command;

use crate::churn::ApiStats;
use crate::targets::TargetKind;
use crate::wrk::WrkResult;
use testkit::origin::OriginCounts;

/// One wrk run against one target in one case of a scenario.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round: u32,
    /// The scenario's case ("1 route", "churn", …); one per scenario for most.
    pub case: String,
    pub target: TargetKind,
    pub wrk: WrkResult,
    /// Proxy CPU (utime + stime, all its processes) spent during the run.
    pub cpu_ticks: Option<u64>,
    /// What the origin saw during the run.
    pub origin: OriginCounts,
    /// Problems the scenario's own checks found, with a count each
    /// (responses that kept the connection open, short bodies, failed API
    /// calls); any of them flags the run.
    pub extra: Vec<(String, u64)>,
    /// The control-plane calls made during the run (`churn`).
    pub api: Option<ApiStats>,
}

impl Sample {
    /// Successful responses wrk counted that never reached the origin: a
    /// proxy answering on its own would otherwise look very fast.
    pub fn bypassed(&self) -> u64 {
        let ok = self.wrk.requests.saturating_sub(self.wrk.non_2xx);
        ok.saturating_sub(self.origin.requests)
    }

    pub fn errors(&self) -> u64 {
        self.wrk.non_2xx
            + self.wrk.socket_errors()
            + self.bypassed()
            + self.extra.iter().map(|(_, n)| n).sum::<u64>()
    }

    pub fn error_summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let wrk = self.wrk.error_summary();
        if !wrk.is_empty() {
            parts.push(wrk);
        }
        if self.bypassed() > 0 {
            parts.push(format!("{} not seen by origin", self.bypassed()));
        }
        parts.extend(
            self.extra
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(what, n)| format!("{what} {n}")),
        );
        parts.join(", ")
    }

    pub fn cpu_us_per_request(&self, clk_tck: u64) -> Option<f64> {
        cpu_us_per_request(self.cpu_ticks?, self.wrk.requests, clk_tck)
    }
}

fn cpu_us_per_request(ticks: u64, requests: u64, clk_tck: u64) -> Option<f64> {
    if requests == 0 || clk_tck == 0 {
        return None;
    }
    Some(ticks as f64 * 1e6 / clk_tck as f64 / requests as f64)
}

/// A proxy's memory: after start and route set-up but before any load, and
/// after the last round.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub idle_kib: u64,
    pub loaded_kib: u64,
}

/// Ratios to nginx in the same case (lower is better for all but req/s).
#[derive(Debug, Clone, Copy, Default)]
pub struct VsNginx {
    pub rps: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub cpu: Option<f64>,
    pub rss: Option<f64>,
}

/// The per-target figures of the summary table.
#[derive(Debug, Clone)]
pub struct Summary {
    pub case: String,
    pub target: TargetKind,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Total proxy CPU over total requests across all rounds: clock ticks are
    /// 10 ms coarse, so pooling beats a median of per-round quotients.
    pub cpu_us_per_req: Option<f64>,
    pub rss: Option<Rss>,
    pub upstream_conns: f64,
    pub requests: u64,
    pub errors: u64,
    pub error_detail: String,
    pub vs_nginx: VsNginx,
}

impl Summary {
    pub fn flagged(&self) -> bool {
        self.errors > 0 || self.requests == 0
    }

    /// The problem that must fail the run, if any.
    pub fn problem(&self) -> Option<String> {
        let who = if self.case.is_empty() {
            self.target.name().to_owned()
        } else {
            format!("{} ({})", self.target.name(), self.case)
        };
        if !self.flagged() {
            None
        } else if self.requests == 0 {
            Some(format!("{who} served zero requests"))
        } else {
            Some(format!(
                "{who} served {} errors ({})",
                self.errors, self.error_detail
            ))
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// `a / b`, when both are there and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Summaries for every `(case, target)` pair in `runs`, in that order;
/// `rss` gives each proxy's memory.
pub fn summarise(
    runs: &[(String, TargetKind)],
    samples: &[Sample],
    rss: &[(String, TargetKind, Rss)],
    clk_tck: u64,
) -> Vec<Summary> {
    let mut out: Vec<Summary> = runs
        .iter()
        .map(|(case, target)| {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.target == *target && s.case == *case)
                .collect();
            let pick =
                |f: fn(&Sample) -> f64| median(&mine.iter().map(|s| f(s)).collect::<Vec<_>>());
            let requests = mine.iter().map(|s| s.wrk.requests).sum();
            let cpu_us_per_req = mine
                .iter()
                .map(|s| s.cpu_ticks)
                .sum::<Option<u64>>()
                .and_then(|ticks| cpu_us_per_request(ticks, requests, clk_tck));
            let details: Vec<String> = mine
                .iter()
                .filter(|s| s.errors() > 0)
                .map(|s| format!("round {}: {}", s.round, s.error_summary()))
                .collect();
            Summary {
                case: case.clone(),
                target: *target,
                rps: pick(|s| s.wrk.req_per_sec),
                p50_us: pick(|s| s.wrk.p50_us),
                p99_us: pick(|s| s.wrk.p99_us),
                cpu_us_per_req,
                rss: rss
                    .iter()
                    .find(|(c, t, _)| c == case && t == target)
                    .map(|r| r.2),
                upstream_conns: pick(|s| s.origin.connections as f64),
                requests,
                errors: mine.iter().map(|s| s.errors()).sum(),
                error_detail: details.join("; "),
                vs_nginx: VsNginx::default(),
            }
        })
        .collect();
    let nginx: Vec<Summary> = out
        .iter()
        .filter(|s| s.target == TargetKind::Nginx)
        .cloned()
        .collect();
    for s in &mut out {
        let Some(n) = nginx.iter().find(|n| n.case == s.case) else {
            continue;
        };
        let loaded = |s: &Summary| s.rss.map(|r| r.loaded_kib as f64);
        s.vs_nginx = VsNginx {
            rps: ratio(Some(s.rps), Some(n.rps)),
            p50: ratio(Some(s.p50_us), Some(n.p50_us)),
            p99: ratio(Some(s.p99_us), Some(n.p99_us)),
            cpu: ratio(s.cpu_us_per_req, n.cpu_us_per_req),
            rss: ratio(loaded(s), loaded(n)),
        };
    }
    out
}

/// A latency in µs, ms or s; `–` when there is none (h2load reports no
/// percentiles).
pub fn fmt_latency(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us < 1e3 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

pub fn fmt_opt(value: Option<f64>, f: impl Fn(f64) -> String) -> String {
    value.map(f).unwrap_or_else(|| "–".into())
}

pub fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `text`, followed by ` (0.81x)` when there is a ratio.
fn with_ratio(text: String, ratio: Option<f64>) -> String {
    match ratio {
        Some(r) => format!("{text} ({r:.2}x)"),
        None => text,
    }
}

/// The summary table; a `case` column only when there is more than one case.
pub fn summary_table(summaries: &[Summary], unit: &str) -> String {
    let mut cases: Vec<&str> = summaries.iter().map(|s| s.case.as_str()).collect();
    cases.dedup();
    let with_case = cases.len() > 1;
    let mut t = String::new();
    if with_case {
        t.push_str("| case ");
    }
    let _ = writeln!(
        t,
        "| target | {unit} (median) | p50 | p99 | proxy CPU µs/{} | RSS idle | RSS loaded | upstream conns/run | errors |",
        per(unit)
    );
    if with_case {
        t.push_str("|---");
    }
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for s in summaries {
        let errors = errors_cell(s.requests, s.errors, &s.error_detail);
        if with_case {
            let _ = write!(t, "| {} ", s.case);
        }
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
            s.target,
            with_ratio(format!("{:.0}", s.rps), s.vs_nginx.rps),
            with_ratio(fmt_latency(s.p50_us), s.vs_nginx.p50),
            with_ratio(fmt_latency(s.p99_us), s.vs_nginx.p99),
            with_ratio(
                fmt_opt(s.cpu_us_per_req, |c| format!("{c:.1}")),
                s.vs_nginx.cpu
            ),
            s.rss.map_or("–".into(), |r| fmt_mib(r.idle_kib)),
            with_ratio(
                s.rss.map_or("–".into(), |r| fmt_mib(r.loaded_kib)),
                s.vs_nginx.rss
            ),
            s.upstream_conns,
            errors,
        );
    }
    t
}

/// The sessiongate-against-nginx line of each case where both ran.
pub fn headlines(summaries: &[Summary], unit: &str) -> Vec<String> {
    summaries
        .iter()
        .filter(|s| s.target == TargetKind::Sessiongate)
        .filter(|s| s.vs_nginx.rps.is_some())
        .map(|sg| {
            let r = |v: Option<f64>| fmt_opt(v, |x| format!("{x:.2}x"));
            let case = if sg.case.is_empty() {
                String::new()
            } else {
                format!(" ({})", sg.case)
            };
            format!(
                "sessiongate / nginx{case}: {unit} {}, p50 {}, p99 {}, CPU per {} {}, RSS {} \
                 (lower is better for all but {unit})",
                r(sg.vs_nginx.rps),
                r(sg.vs_nginx.p50),
                r(sg.vs_nginx.p99),
                if per(unit) == "req" {
                    "request"
                } else {
                    "message"
                },
                r(sg.vs_nginx.cpu),
                r(sg.vs_nginx.rss),
            )
        })
        .collect()
}

/// "req" for req/s, "msg" for messages/s: what CPU is counted per.
fn per(unit: &str) -> &'static str {
    if unit.starts_with("messages") {
        "msg"
    } else {
        "req"
    }
}

pub fn raw_table(samples: &[Sample], clk_tck: u64, unit: &str) -> String {
    let mut cases: Vec<&str> = samples.iter().map(|s| s.case.as_str()).collect();
    cases.sort_unstable();
    cases.dedup();
    let with_case = cases.len() > 1;
    let mut t = String::from("| round ");
    if with_case {
        t.push_str("| case ");
    }
    let _ =
        write!(
        t,
        "| target | {unit} | p50 | p99 | {}s | proxy CPU µs/{} | upstream conns | errors |\n|---:",
        if per(unit) == "req" { "request" } else { "message" },
        per(unit)
    );
    if with_case {
        t.push_str("|---");
    }
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for s in samples {
        let errors = s.error_summary();
        let _ = write!(t, "| {} ", s.round);
        if with_case {
            let _ = write!(t, "| {} ", s.case);
        }
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            s.target,
            s.wrk.req_per_sec,
            fmt_latency(s.wrk.p50_us),
            fmt_latency(s.wrk.p99_us),
            s.wrk.requests,
            fmt_opt(s.cpu_us_per_request(clk_tck), |c| format!("{c:.1}")),
            s.origin.connections,
            if errors.is_empty() {
                "0".into()
            } else {
                errors
            },
        );
    }
    t
}

/// The first line of a successful command's output, stdout or (for
/// `nginx -v`) stderr.
pub fn command_line_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    first_line(out.stdout, out.stderr)
}

/// As [`command_line_output`] whatever the exit status: `wrk -v` prints its
/// version with the usage text and exits 1.
pub fn version_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    first_line(out.stdout, out.stderr)
}

fn first_line(stdout: Vec<u8>, stderr: Vec<u8>) -> Option<String> {
    let text = if stdout.iter().any(|b| !b.is_ascii_whitespace()) {
        stdout
    } else {
        stderr
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The short commit of the harness's source tree, marked when `paths` (all
/// of the tree when empty) have uncommitted changes.
pub fn source_commit(paths: &[&str]) -> Option<String> {
    let repo = env!("CARGO_MANIFEST_DIR");
    let commit = command_line_output("git", &["-C", repo, "rev-parse", "--short", "HEAD"])?;
    // `git -C bench` takes paths from bench/; `:/` makes them repository-relative.
    let pathspecs: Vec<String> = paths.iter().map(|p| format!(":/{p}")).collect();
    let mut args = vec!["-C", repo, "status", "--porcelain", "--"];
    args.extend(pathspecs.iter().map(String::as_str));
    let dirty = command_line_output("git", &args).is_some();
    Some(if dirty {
        format!("{commit} with uncommitted changes")
    } else {
        commit
    })
}

/// `date -u`, `nproc`, the CPU model and the kernel, for the report header.
pub struct Machine {
    pub date: String,
    pub nproc: String,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn collect() -> Self {
        let unknown = || "unknown".to_owned();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(unknown);
        Self {
            date: command_line_output("date", &["-u"]).unwrap_or_else(unknown),
            nproc: command_line_output("nproc", &[]).unwrap_or_else(unknown),
            cpu_model,
            kernel: command_line_output("uname", &["-r"]).unwrap_or_else(unknown),
        }
    }
}

/// The head of a written section: its title, the date, and the machine
/// with its load average before and after the run.
pub fn section_head(title: &str, load_before: &str, load_after: &str) -> String {
    let machine = Machine::collect();
    format!(
        "## {title}\n\n- Date: {}\n- Machine: {} CPUs (`nproc`), {}, kernel {}; load average \
         (1, 5, 15 min) {load_before} before the run, {load_after} after\n",
        machine.date, machine.nproc, machine.cpu_model, machine.kernel
    )
}

/// A target's configuration file, folded, for a written section.
pub fn config_details(kind: TargetKind, name: &str, text: &str) -> String {
    let lang = match name {
        n if n.ends_with(".toml") => "toml",
        "nginx.conf" => "nginx",
        _ => "text",
    };
    format!("<details><summary>{kind} ({name})</summary>\n\n```{lang}\n{text}```\n\n</details>\n")
}

/// The errors cell of a summary table: flagged when a target served no
/// requests or any error.
pub fn errors_cell(requests: u64, errors: u64, detail: &str) -> String {
    if requests == 0 {
        "**FLAGGED: zero requests**".to_owned()
    } else if errors > 0 {
        format!("**FLAGGED: {errors}** ({detail})")
    } else {
        "0".to_owned()
    }
}

/// `existing` with the text between the lines `begin` and `end` replaced by
/// `body` (markers kept), or with the marked section appended when it is not
/// there yet. Everything outside the markers, such as a hand-written reading
/// of the figures after `end`, is kept.
pub fn replace_section(existing: &str, begin: &str, end: &str, body: &str) -> String {
    let body = body.trim_end();
    if let (Some(b), Some(e)) = (existing.find(begin), existing.find(end)) {
        if b < e {
            let before = &existing[..b];
            let after = &existing[e + end.len()..];
            return format!("{before}{begin}\n{body}\n{end}{after}");
        }
    }
    let sep = if existing.is_empty() || existing.ends_with("\n\n") {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    format!("{existing}{sep}{begin}\n{body}\n{end}\n")
}

/// Quotes `arg` for a POSIX shell when it needs it, so the recorded command
/// can be pasted back.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./,=:@%+".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(target: TargetKind, round: u32, rps: f64, requests: u64, origin: u64) -> Sample {
        Sample {
            round,
            case: String::new(),
            target,
            wrk: WrkResult {
                requests,
                req_per_sec: rps,
                p50_us: 100.0,
                p99_us: 1000.0,
                ..WrkResult::default()
            },
            cpu_ticks: (target != TargetKind::Direct).then_some(100),
            origin: OriginCounts {
                requests: origin,
                connections: 32,
            },
            extra: Vec::new(),
            api: None,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn summary_ratios_and_flags() {
        let samples = vec![
            sample(TargetKind::Direct, 1, 100.0, 1000, 1000),
            sample(TargetKind::Sessiongate, 1, 50.0, 1000, 1000),
            sample(TargetKind::Nginx, 1, 40.0, 1000, 990),
        ];
        let runs: Vec<(String, TargetKind)> = [
            TargetKind::Direct,
            TargetKind::Sessiongate,
            TargetKind::Nginx,
        ]
        .map(|t| (String::new(), t))
        .to_vec();
        let rss = |kib| Rss {
            idle_kib: 1024,
            loaded_kib: kib,
        };
        let s = summarise(
            &runs,
            &samples,
            &[
                (String::new(), TargetKind::Nginx, rss(2048)),
                (String::new(), TargetKind::Sessiongate, rss(1024)),
            ],
            100,
        );
        assert_eq!(s[1].vs_nginx.rps, Some(1.25));
        assert_eq!(s[1].vs_nginx.rss, Some(0.5));
        // 100 ticks = 1 s over 1000 requests.
        assert_eq!(s[1].cpu_us_per_req, Some(1000.0));
        assert_eq!(s[0].cpu_us_per_req, None);
        assert!(!s[1].flagged());
        assert!(s[2].flagged(), "10 responses never reached the origin");
        assert!(s[2]
            .problem()
            .is_some_and(|p| p.contains("nginx served 10 errors")));
        assert_eq!(s[2].rss.map(|r| r.loaded_kib), Some(2048));
        let table = summary_table(&s, "req/s");
        assert!(table.contains("| sessiongate | 50 (1.25x) |"), "{table}");
        assert!(!table.contains("| case "));
        assert!(table.contains("10 not seen by origin"));
        let lines = headlines(&s, "req/s");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("req/s 1.25x"));
        assert!(lines[0].contains("RSS 0.50x"));
    }

    #[test]
    fn ratios_stay_within_a_case() {
        let mut samples = Vec::new();
        for (case, sg, nginx) in [("a", 100.0, 50.0), ("b", 30.0, 60.0)] {
            let mut s = sample(TargetKind::Sessiongate, 1, sg, 10, 10);
            s.case = case.into();
            let mut n = sample(TargetKind::Nginx, 1, nginx, 10, 10);
            n.case = case.into();
            samples.extend([s, n]);
        }
        let runs: Vec<(String, TargetKind)> = ["a", "b"]
            .iter()
            .flat_map(|c| [TargetKind::Sessiongate, TargetKind::Nginx].map(|t| (c.to_string(), t)))
            .collect();
        let s = summarise(&runs, &samples, &[], 100);
        assert_eq!(s[0].vs_nginx.rps, Some(2.0));
        assert_eq!(s[2].vs_nginx.rps, Some(0.5));
        assert!(summary_table(&s, "req/s").starts_with("| case | target |"));
        assert_eq!(headlines(&s, "req/s").len(), 2);
        assert!(summary_table(&s, "messages/s").contains("| messages/s (median) |"));
        assert!(summary_table(&s, "messages/s").contains("proxy CPU µs/msg"));
        assert!(headlines(&s, "messages/s")[0].contains("CPU per message"));
    }

    #[test]
    fn extra_problems_flag_a_sample() {
        let mut s = sample(TargetKind::Chp, 2, 10.0, 10, 10);
        assert_eq!(s.errors(), 0);
        s.extra.push(("kept-alive responses".into(), 3));
        assert_eq!(s.errors(), 3);
        assert_eq!(s.error_summary(), "kept-alive responses 3");
    }

    #[test]
    fn latency_formatting() {
        assert_eq!(fmt_latency(812.0), "812 µs");
        assert_eq!(fmt_latency(1234.0), "1.23 ms");
        assert_eq!(fmt_latency(2.5e6), "2.50 s");
        assert_eq!(fmt_latency(f64::NAN), "–");
    }

    #[test]
    fn section_is_appended_then_replaced() {
        let (b, e) = ("<!-- x:begin -->", "<!-- x:end -->");
        let doc = "# results\n\nkeep-alive figures\n";
        let once = replace_section(doc, b, e, "run 1\n");
        assert_eq!(
            once,
            "# results\n\nkeep-alive figures\n\n<!-- x:begin -->\nrun 1\n<!-- x:end -->\n"
        );
        let mut read = once.clone();
        read.push_str("\nReading: fine.\n");
        let twice = replace_section(&read, b, e, "run 2");
        assert!(twice.starts_with(doc));
        assert!(!twice.contains("run 1"));
        assert!(twice.ends_with("<!-- x:begin -->\nrun 2\n<!-- x:end -->\n\nReading: fine.\n"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--targets"), "--targets");
        assert_eq!(shell_quote("direct,nginx"), "direct,nginx");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
