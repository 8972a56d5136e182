//! Turning samples into the summary table and the written report.

use std::fmt::Write as _;
use std::process::Command;

use crate::origin::OriginCounts;
use crate::targets::TargetKind;
use crate::wrk::WrkResult;

/// One wrk run against one target.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round: u32,
    pub target: TargetKind,
    pub wrk: WrkResult,
    /// Proxy CPU (utime + stime, all its processes) spent during the run.
    pub cpu_ticks: Option<u64>,
    /// What the origin saw during the run.
    pub origin: OriginCounts,
}

impl Sample {
    /// Successful responses wrk counted that never reached the origin: a
    /// proxy answering on its own would otherwise look very fast.
    pub fn bypassed(&self) -> u64 {
        let ok = self.wrk.requests.saturating_sub(self.wrk.non_2xx);
        ok.saturating_sub(self.origin.requests)
    }

    pub fn errors(&self) -> u64 {
        self.wrk.non_2xx + self.wrk.socket_errors() + self.bypassed()
    }

    pub fn error_summary(&self) -> String {
        let mut text = self.wrk.error_summary();
        if self.bypassed() > 0 {
            if !text.is_empty() {
                text.push_str(", ");
            }
            let _ = write!(text, "{} not seen by origin", self.bypassed());
        }
        text
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

/// The per-target figures of the summary table.
#[derive(Debug, Clone)]
pub struct Summary {
    pub target: TargetKind,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Total proxy CPU over total requests across all rounds: clock ticks are
    /// 10 ms coarse, so pooling beats a median of per-round quotients.
    pub cpu_us_per_req: Option<f64>,
    pub rss_kib: Option<u64>,
    pub upstream_conns: f64,
    pub requests: u64,
    pub errors: u64,
    pub error_detail: String,
    pub vs_nginx: Option<f64>,
}

impl Summary {
    pub fn flagged(&self) -> bool {
        self.errors > 0 || self.requests == 0
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

/// Summaries in the order of `targets`; `rss` gives each proxy's RSS.
pub fn summarise(
    targets: &[TargetKind],
    samples: &[Sample],
    rss: &[(TargetKind, Option<u64>)],
    clk_tck: u64,
) -> Vec<Summary> {
    let mut out: Vec<Summary> = targets
        .iter()
        .map(|&target| {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.target == target).collect();
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
                target,
                rps: pick(|s| s.wrk.req_per_sec),
                p50_us: pick(|s| s.wrk.p50_us),
                p99_us: pick(|s| s.wrk.p99_us),
                cpu_us_per_req,
                rss_kib: rss.iter().find(|(t, _)| *t == target).and_then(|r| r.1),
                upstream_conns: pick(|s| s.origin.connections as f64),
                requests,
                errors: mine.iter().map(|s| s.errors()).sum(),
                error_detail: details.join("; "),
                vs_nginx: None,
            }
        })
        .collect();
    let nginx_rps = out
        .iter()
        .find(|s| s.target == TargetKind::Nginx)
        .map(|s| s.rps);
    if let Some(nginx_rps) = nginx_rps.filter(|r| *r > 0.0) {
        for s in &mut out {
            s.vs_nginx = Some(s.rps / nginx_rps);
        }
    }
    out
}

pub fn fmt_latency(us: f64) -> String {
    if us < 1e3 {
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

pub fn summary_table(summaries: &[Summary]) -> String {
    let mut t = String::from(
        "| target | req/s (median) | vs nginx | p50 | p99 | proxy CPU µs/req | proxy RSS | upstream conns/run | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for s in summaries {
        let errors = if s.requests == 0 {
            "**FLAGGED: zero requests**".to_owned()
        } else if s.errors > 0 {
            format!("**FLAGGED: {}** ({})", s.errors, s.error_detail)
        } else {
            "0".to_owned()
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {:.0} | {} |",
            s.target,
            s.rps,
            fmt_opt(s.vs_nginx, |r| format!("{r:.2}x")),
            fmt_latency(s.p50_us),
            fmt_latency(s.p99_us),
            fmt_opt(s.cpu_us_per_req, |c| format!("{c:.1}")),
            fmt_opt(s.rss_kib.map(|k| k as f64), |k| format!(
                "{:.1} MiB",
                k / 1024.0
            )),
            s.upstream_conns,
            errors,
        );
    }
    t
}

/// The sessiongate-against-nginx line, if both ran.
pub fn headline(summaries: &[Summary]) -> Option<String> {
    let sg = summaries
        .iter()
        .find(|s| s.target == TargetKind::Sessiongate)?;
    let nginx = summaries.iter().find(|s| s.target == TargetKind::Nginx)?;
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "n/a".into()
        }
    };
    let cpu = match (sg.cpu_us_per_req, nginx.cpu_us_per_req) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => "n/a".into(),
    };
    Some(format!(
        "sessiongate / nginx: req/s {}, p50 {}, p99 {}, CPU per request {} (lower is better for all but req/s)",
        ratio(sg.rps, nginx.rps),
        ratio(sg.p50_us, nginx.p50_us),
        ratio(sg.p99_us, nginx.p99_us),
        cpu,
    ))
}

pub fn raw_table(samples: &[Sample], clk_tck: u64) -> String {
    let mut t = String::from(
        "| round | target | req/s | p50 | p99 | requests | proxy CPU µs/req | upstream conns | errors |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for s in samples {
        let errors = s.error_summary();
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            s.round,
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
        let targets = [
            TargetKind::Direct,
            TargetKind::Sessiongate,
            TargetKind::Nginx,
        ];
        let s = summarise(&targets, &samples, &[(TargetKind::Nginx, Some(2048))], 100);
        assert_eq!(s[1].vs_nginx, Some(1.25));
        // 100 ticks = 1 s over 1000 requests.
        assert_eq!(s[1].cpu_us_per_req, Some(1000.0));
        assert_eq!(s[0].cpu_us_per_req, None);
        assert!(!s[1].flagged());
        assert!(s[2].flagged(), "10 responses never reached the origin");
        assert_eq!(s[2].rss_kib, Some(2048));
        let table = summary_table(&s);
        assert!(table.contains("| sessiongate | 50 | 1.25x |"));
        assert!(table.contains("10 not seen by origin"));
        assert!(headline(&s).is_some_and(|h| h.contains("req/s 1.25x")));
    }

    #[test]
    fn latency_formatting() {
        assert_eq!(fmt_latency(812.0), "812 µs");
        assert_eq!(fmt_latency(1234.0), "1.23 ms");
        assert_eq!(fmt_latency(2.5e6), "2.50 s");
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
