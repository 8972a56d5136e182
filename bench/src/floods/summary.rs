//! The attack scenarios' figures: the summary of each case on each target
//! over the rounds, the goal lines, and the section `--write` puts into the
//! results file.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::{normal_load, Attack, Case, FloodSample, Started, Texts, P99_GOAL, RSS_GOAL};
use crate::report::{self, fmt_latency, fmt_mib, median};
use crate::results::Row;
use crate::side_by_side::{load_average, Bench};
use crate::targets::TargetKind;
use crate::wrk::HOST;

/// The figures of one case on one target, over the rounds.
pub(super) struct Summary {
    case: &'static str,
    target: TargetKind,
    p99_alone_us: f64,
    p99_attacked_us: f64,
    /// Median over rounds of each round's ratio.
    p99_ratio: f64,
    rps_ratio: f64,
    rss_before_kib: u64,
    rss_under_kib: u64,
    rss_after_kib: u64,
    /// The worst round's growth from before to after.
    rss_growth: f64,
    errors: u64,
    error_detail: String,
    requests: u64,
    attack: String,
}

impl Summary {
    pub(super) fn problem(&self) -> Option<String> {
        let who = format!("{} ({})", self.target.name(), self.case);
        if self.requests == 0 {
            Some(format!("{who}: the normal client completed no requests"))
        } else if self.errors > 0 {
            Some(format!(
                "{who}: the normal client got {} errors ({})",
                self.errors, self.error_detail
            ))
        } else {
            None
        }
    }
}

pub(super) fn summarise(
    cases: &[Case],
    targets: &[TargetKind],
    samples: &[FloodSample],
) -> Vec<Summary> {
    let mut out = Vec::new();
    for case in cases {
        for &target in targets {
            let mine: Vec<&FloodSample> = samples
                .iter()
                .filter(|s| s.case == case.name && s.target == target)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let pick = |f: &dyn Fn(&FloodSample) -> f64| {
                median(&mine.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            let details: Vec<String> = mine
                .iter()
                .filter(|s| s.errors() > 0)
                .map(|s| format!("round {}: {}", s.round, s.error_summary()))
                .collect();
            out.push(Summary {
                case: case.name,
                target,
                p99_alone_us: pick(&|s| s.baseline.p99_us),
                p99_attacked_us: pick(&|s| s.attacked.p99_us),
                p99_ratio: pick(&|s| s.p99_ratio()),
                rps_ratio: pick(&|s| s.attacked.req_per_sec / s.baseline.req_per_sec.max(1e-9)),
                rss_before_kib: pick(&|s| s.rss_before_kib as f64) as u64,
                rss_under_kib: mine.iter().map(|s| s.rss_under_kib).max().unwrap_or(0),
                rss_after_kib: pick(&|s| s.rss_after_kib as f64) as u64,
                rss_growth: mine
                    .iter()
                    .map(|s| s.rss_growth())
                    .fold(f64::NEG_INFINITY, f64::max),
                errors: mine.iter().map(|s| s.errors()).sum(),
                error_detail: details.join("; "),
                requests: mine
                    .iter()
                    .map(|s| s.baseline.requests.min(s.attacked.requests))
                    .min()
                    .unwrap_or(0),
                // The median round's figures (by p99 ratio) stand for all.
                attack: {
                    let mut sorted = mine.clone();
                    sorted.sort_by(|a, b| a.p99_ratio().total_cmp(&b.p99_ratio()));
                    sorted[sorted.len() / 2].figures.describe()
                },
            });
        }
    }
    out
}

pub(super) fn summary_table(summaries: &[Summary]) -> String {
    let mut t = String::from(
        "| case | target | p99 alone | p99 under attack | req/s under attack / alone | RSS before → under → after | attack (median round) | errors |\n\
         |---|---|---:|---:|---:|---|---|---|\n",
    );
    for s in summaries {
        let errors = report::errors_cell(s.requests, s.errors, &s.error_detail);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} ({:.2}x) | {:.2} | {} → {} → {} ({:+.1}%) | {} | {} |",
            s.case,
            s.target,
            fmt_latency(s.p99_alone_us),
            fmt_latency(s.p99_attacked_us),
            s.p99_ratio,
            s.rps_ratio,
            fmt_mib(s.rss_before_kib),
            fmt_mib(s.rss_under_kib),
            fmt_mib(s.rss_after_kib),
            s.rss_growth * 100.0,
            s.attack,
            errors
        );
    }
    t
}

/// For each case, the goals with sessiongate's figures and nginx's beside.
pub(super) fn goal_lines(cases: &[Case], summaries: &[Summary]) -> Vec<String> {
    let mut out = Vec::new();
    for case in cases {
        let find = |kind| {
            summaries
                .iter()
                .find(|s| s.case == case.name && s.target == kind)
        };
        let (Some(sg), nginx) = (find(TargetKind::Sessiongate), find(TargetKind::Nginx)) else {
            continue;
        };
        let beside = |f: &dyn Fn(&Summary) -> String| {
            nginx.map_or(String::new(), |n| format!("; nginx {}", f(n)))
        };
        let verdict = |met: bool| if met { "MET" } else { "MISSED" };
        out.push(format!(
            "goal {}: sessiongate's normal-client p99 under attack < {P99_GOAL}x alone: {} ({:.2}x{})",
            case.name,
            verdict(sg.p99_ratio < P99_GOAL),
            sg.p99_ratio,
            beside(&|n| format!("{:.2}x", n.p99_ratio))
        ));
        out.push(format!(
            "goal {}: sessiongate's RSS back within {:.0}% after the attack (worst round): {} ({:+.1}%{})",
            case.name,
            RSS_GOAL * 100.0,
            verdict(sg.rss_growth <= RSS_GOAL),
            sg.rss_growth * 100.0,
            beside(&|n| format!("{:+.1}%", n.rss_growth * 100.0))
        ));
    }
    out
}

/// One summary row per case: the normal client's p99 under attack over
/// alone and the RSS growth after it, sessiongate's judged on both goals,
/// nginx's beside; a flagged sessiongate run does not meet them.
pub(super) fn summary_rows(name: &str, cases: &[Case], summaries: &[Summary]) -> Vec<Row> {
    let mut out = Vec::new();
    for case in cases {
        let find = |kind| {
            summaries
                .iter()
                .find(|s| s.case == case.name && s.target == kind)
        };
        let figures = |s: &Summary| {
            format!(
                "p99 under attack {:.2}x alone, RSS {:+.1}% after",
                s.p99_ratio,
                s.rss_growth * 100.0
            )
        };
        let sg = find(TargetKind::Sessiongate);
        let mut row = Row::new(name, if cases.len() > 1 { case.name } else { "" });
        row.sessiongate = sg.map_or("not measured".into(), figures);
        row.peer = format!(
            "nginx: {}",
            find(TargetKind::Nginx).map_or("not measured".into(), figures)
        );
        row.ratio = sg.map_or("–".into(), |s| format!("p99 {:.2}x alone", s.p99_ratio));
        row.met = sg.map(|s| s.p99_ratio < P99_GOAL && s.rss_growth <= RSS_GOAL);
        if let Some(problem) = sg.and_then(Summary::problem) {
            row.met = Some(false);
            row.note = format!("FLAGGED: {problem}");
        }
        out.push(row);
    }
    out
}

/// The section `--write` puts into the results file.
pub(super) fn section(
    bench: &Bench,
    texts: &Texts,
    cases: &[Case],
    started: &[Started],
    samples: &[FloodSample],
    table: &str,
    lines: &[String],
) -> String {
    let plan = &bench.plan;
    let command: Vec<String> = std::env::args().map(|a| report::shell_quote(&a)).collect();
    let mut r = report::section_head(texts.title, bench.load_before(), &load_average());
    for line in bench.tools.versions() {
        let _ = writeln!(r, "- {line}");
    }
    for case in cases {
        let line = match &case.attack {
            Attack::Slow { program, slow } => format!(
                "{}: `slowhttptest {}` ({})",
                case.name,
                slow.args(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .join(" ")
                    .replace("127.0.0.1:0", "ADDR"),
                report::version_line(&program.to_string_lossy(), &["-h"])
                    .unwrap_or_else(|| "version unknown".into())
            ),
            Attack::Streams { program, flood } => format!(
                "{}: `h2load {}`, rerun until wrk is done ({})",
                case.name,
                flood
                    .args(SocketAddr::from(([127, 0, 0, 1], 0)), HOST)
                    .join(" ")
                    .replace("127.0.0.1:0", "H2C_ADDR"),
                report::version_line(&program.to_string_lossy(), &["--version"])
                    .unwrap_or_else(|| "version unknown".into())
            ),
            Attack::Resets {
                connections,
                resets,
            } => format!(
                "{}: the harness's rapid-reset client, {connections} connections at once, at most {resets} streams or {} s",
                case.name,
                plan.duration
            ),
        };
        let _ = writeln!(r, "- Attack, {line}");
    }
    if let Some(commit) =
        report::source_commit(&["bench/src", "bench/Cargo.toml", "gateway", "control-plane"])
    {
        let _ = writeln!(r, "- Source: commit {commit}");
    }
    let _ = writeln!(r, "- Command: `{}`", command.join(" "));
    let _ = writeln!(
        r,
        "- Normal client: `wrk -t1 -c{} -d{}s --latency {}`, alone then under attack; {} round(s), the targets' order reversed every other round",
        plan.connections,
        plan.duration,
        normal_load().describe(),
        plan.rounds
    );
    let _ = writeln!(r, "\n{}", texts.text.trim_end());
    let _ = writeln!(r, "\n### Summary\n\n{table}");
    for line in lines {
        let _ = writeln!(r, "- {line}");
    }
    let _ = writeln!(
        r,
        "\np99 figures are medians over rounds, the ratio the median of each round's \
         ratio; RSS (all the server's processes, from /proc) before the attack is \
         after the baseline run, under it right after wrk's run under attack (the \
         largest round), after it once back within 10% or when `--settle` ran out \
         (the median round; the percentage is the worst round's). The machine is \
         shared and noisy: only figures within this run compare.\n"
    );
    let _ = writeln!(r, "### Per-round raw figures\n");
    let _ = writeln!(
        r,
        "| round | case | target | req/s alone | p99 alone | req/s under attack | p99 under attack | RSS before | under | after | settled | attack | errors |\n\
         |---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
    );
    for s in samples {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            s.round,
            s.case,
            s.target,
            s.baseline.req_per_sec,
            fmt_latency(s.baseline.p99_us),
            s.attacked.req_per_sec,
            fmt_latency(s.attacked.p99_us),
            fmt_mib(s.rss_before_kib),
            fmt_mib(s.rss_under_kib),
            fmt_mib(s.rss_after_kib),
            if s.settled {
                format!("in {:.1} s", s.settle.as_secs_f64())
            } else {
                format!("not in {:.0} s", s.settle.as_secs_f64())
            },
            s.figures.describe(),
            match s.error_summary() {
                e if e.is_empty() => "0".into(),
                e => e,
            }
        );
    }
    let _ = writeln!(r, "\n### Configurations\n");
    for s in started {
        let t = &s.running.target;
        if let Some((name, text)) = &t.config {
            let _ = writeln!(r, "{}", report::config_details(t.kind, name, text));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::floods::Figures;
    use crate::rapid_reset::ResetResult;
    use crate::wrk::WrkResult;

    fn wrk(rps: f64, p99_us: f64, timeouts: u64) -> WrkResult {
        WrkResult {
            requests: 1000,
            req_per_sec: rps,
            p99_us,
            timeouts,
            ..WrkResult::default()
        }
    }

    fn sample(target: TargetKind, round: u32, p99: (f64, f64), rss: (u64, u64)) -> FloodSample {
        FloodSample {
            round,
            case: "rapid reset",
            target,
            baseline: wrk(1000.0, p99.0, 0),
            attacked: wrk(500.0, p99.1, 0),
            rss_before_kib: rss.0,
            rss_under_kib: rss.1,
            rss_after_kib: rss.1,
            settled: rss.1 <= rss.0 + rss.0 / 10,
            settle: Duration::ZERO,
            figures: Figures::Resets {
                result: ResetResult::default(),
                reached_origin: 0,
            },
        }
    }

    #[test]
    fn goals_are_judged_on_sessiongate_with_nginx_beside() {
        let cases = [Case {
            name: "rapid reset",
            attack: Attack::Resets {
                connections: 1,
                resets: 1,
            },
        }];
        let targets = [TargetKind::Sessiongate, TargetKind::Nginx];
        let mut samples = vec![
            // Ratios 1.5 and 3.0 (median 2.25); RSS +5% and +50% (worst counts).
            sample(TargetKind::Sessiongate, 1, (1000.0, 1500.0), (100, 105)),
            sample(TargetKind::Sessiongate, 2, (1000.0, 3000.0), (100, 150)),
            sample(TargetKind::Nginx, 1, (1000.0, 1200.0), (100, 100)),
            sample(TargetKind::Nginx, 2, (1000.0, 1400.0), (100, 100)),
        ];
        samples[3].attacked.timeouts = 2;
        let summaries = summarise(&cases, &targets, &samples);
        let lines = goal_lines(&cases, &summaries);
        assert_eq!(
            lines,
            [
                "goal rapid reset: sessiongate's normal-client p99 under attack < 2x alone: MISSED (2.25x; nginx 1.30x)",
                "goal rapid reset: sessiongate's RSS back within 10% after the attack (worst round): MISSED (+50.0%; nginx +0.0%)",
            ]
        );
        let problems: Vec<String> = summaries.iter().filter_map(Summary::problem).collect();
        assert_eq!(
            problems,
            ["nginx (rapid reset): the normal client got 2 errors (round 2: under attack: timeout 2)"]
        );
        assert!(summary_table(&summaries).contains("**FLAGGED: 2**"));
    }
}
