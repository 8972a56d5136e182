//! The section `--write` puts into a results file: the date, the machine,
//! the command, the summary table and the lines below it, how to read the
//! columns, the raw figures per round and the targets' configurations.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::{Bench, Run, Running, Scenario};
use crate::report::{self, Sample};
use crate::results;
use crate::targets::TargetKind;

impl Bench {
    /// The section `--write` puts into the results file.
    pub(super) fn section(&self, w: &Written<'_>) -> String {
        let command: Vec<String> = std::env::args().map(|a| report::shell_quote(&a)).collect();
        let plan = &self.plan;
        let mut r = report::section_head(w.scenario.title, &self.load_before, &load_average());
        for line in self.tools.versions() {
            let _ = writeln!(r, "- {line}");
        }
        // Not the whole tree: the results file this run writes is in it.
        if let Some(commit) =
            report::source_commit(&["bench/src", "bench/Cargo.toml", "gateway", "control-plane"])
        {
            let _ = writeln!(r, "- Source: commit {commit}");
        }
        let _ = writeln!(r, "- Command: `{}`", command.join(" "));
        let mut loads: Vec<String> = Vec::new();
        for run in w.runs {
            let line = run.load.describe(plan);
            if !loads.contains(&line) {
                loads.push(line);
            }
        }
        let _ = writeln!(
            r,
            "- Load: {}; {} round(s), every case and target once per round, the order \
             reversed every other round; {} s unrecorded warm-up per case and target",
            loads.join(", "),
            plan.rounds,
            plan.warmup
        );
        let _ = writeln!(r, "\n{}", w.scenario.text.trim_end());
        let _ = writeln!(r, "\n### Summary\n");
        let _ = writeln!(r, "{}", w.table);
        for line in w.lines {
            let _ = writeln!(r, "- {line}");
        }
        let _ = writeln!(r, "\n{COLUMNS_TEXT}");
        let _ = writeln!(r, "### Per-round raw figures\n");
        let _ = writeln!(
            r,
            "{}",
            report::raw_table(w.samples, self.clk_tck, w.scenario.unit)
        );
        let _ = writeln!(r, "### Configurations\n");
        // One per kind: the last one started (the largest route set).
        let mut shown: Vec<TargetKind> = Vec::new();
        for running in w.running.iter().rev() {
            let t = &running.target;
            let Some((name, text)) = &t.config else {
                continue;
            };
            if shown.contains(&t.kind) {
                continue;
            }
            shown.push(t.kind);
            let _ = writeln!(r, "{}", report::config_details(t.kind, name, text));
        }
        r
    }
}

/// What the written section is made from.
pub(super) struct Written<'a> {
    pub(super) scenario: &'a Scenario,
    pub(super) running: &'a [Running],
    pub(super) runs: &'a [Run],
    pub(super) samples: &'a [Sample],
    pub(super) table: &'a str,
    pub(super) lines: &'a [String],
}

/// How to read the summary table's columns.
const COLUMNS_TEXT: &str = "\
Req/s and latency are medians over rounds; each figure in parentheses is the \
ratio to nginx in the same case (lower is better for all but req/s). Proxy \
CPU is utime + stime of all the proxy's processes (nginx: master + worker) \
from /proc over all requests of all rounds. RSS idle is read after start and \
route set-up, before any load; RSS loaded after the last round (all \
processes). Upstream conns/run is the connections the origin accepted during \
one wrk run. The machine is shared and noisy: only ratios within this run \
mean anything.";

/// The begin and end markers of a scenario's section.
pub fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- {name}:begin (written by `bench {name} --write`; replaced on every run) -->"),
        format!("<!-- {name}:end -->"),
    )
}

/// Replaces (or appends) the section between `begin` and `end` in `path`,
/// keeping the rest of the file, with the summary lines of `rows` at its
/// end; then makes the file's summary table again ([`results::regenerate`]).
pub fn write_section(
    path: &Path,
    begin: &str,
    end: &str,
    section: &str,
    rows: &[results::Row],
) -> Result<()> {
    update_file(path, |existing| {
        let body = format!(
            "{}

{}",
            section.trim_end(),
            results::lines(rows)?
        );
        Ok(report::replace_section(existing, begin, end, &body))
    })
}

/// Reads `path` (empty when missing), changes it with `change`, makes its
/// summary table again and writes it back.
pub fn update_file(path: &Path, change: impl FnOnce(&str) -> Result<String>) -> Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let text = results::regenerate(&change(&existing)?)
        .with_context(|| format!("making the summary of {}", path.display()))?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The 1, 5 and 15 minute load averages, for the record of how busy the
/// machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}
