//! The layout of a results file (`bench/RESULTS.md`): a summary table at the
//! top, one row per scenario, made from the sections below it.
//!
//! Every section a scenario writes (`--write`) carries one summary line per
//! row, an HTML comment that renders as nothing:
//!
//! ```text
//! <!-- summary: { scenario = "https", case = "h2", sessiongate = "41,203 req/s", peer = "nginx: 38,455 req/s", ratio = "1.07x", target = "req/s ≥ 1.0x nginx", met = true, measured = "2026-12-06 10:41 UTC, commit 3f18f25", note = "" } -->
//! ```
//!
//! (a TOML inline table: the harness already speaks TOML). After every
//! write, the block between [`BEGIN`] and [`END`] is made again from all
//! the summary lines found in the file, in the order of the sections; a
//! section without one (written before this layout) gets a row saying so,
//! with its target but no figures.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::report;

/// The start of the summary block's opening marker (the rest of that line
/// is a comment for whoever reads the file).
const BEGIN_PREFIX: &str = "<!-- summary:begin";
pub const BEGIN: &str = "<!-- summary:begin (made by `bench ... --write` from the summary lines of the sections below; edits here are lost) -->";
pub const END: &str = "<!-- summary:end -->";

/// A summary line: `<!-- summary: { ... } -->`.
const LINE_PREFIX: &str = "<!-- summary: ";
const LINE_SUFFIX: &str = " -->";

/// What the row of a section that has no summary line says.
pub const NOT_RERUN: &str = "not rerun since the new layout";

/// One row of the summary table: a scenario (and a case of it, when it has
/// several targets, such as HTTP/1.1 and h2) with the figures of its last
/// run. Every figure is text, formatted by the scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The section's name (`keepalive`, `https`, …).
    pub scenario: String,
    #[serde(default)]
    pub case: String,
    /// sessiongate's figures.
    pub sessiongate: String,
    /// What sessiongate is compared with, and its figures ("nginx: …").
    #[serde(default)]
    pub peer: String,
    /// sessiongate over the peer, or the figure the target is stated in.
    #[serde(default)]
    pub ratio: String,
    pub target: String,
    /// Whether the target was met; absent when this run cannot say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    /// When and from which commit ("2026-12-06 10:41 UTC, commit 3f18f25").
    pub measured: String,
    #[serde(default)]
    pub note: String,
}

impl Row {
    /// A row of `scenario` (and `case`) stamped with the time and the
    /// commit now, its target the scenario's standing one.
    pub fn new(scenario: &str, case: &str) -> Self {
        Self {
            scenario: scenario.into(),
            case: case.into(),
            target: target_of(scenario).into(),
            measured: stamp(),
            ..Self::default()
        }
    }

    /// The summary line of this row.
    pub fn line(&self) -> Result<String> {
        let mut clean = self.clone();
        for field in [
            &mut clean.scenario,
            &mut clean.case,
            &mut clean.sessiongate,
            &mut clean.peer,
            &mut clean.ratio,
            &mut clean.target,
            &mut clean.measured,
            &mut clean.note,
        ] {
            *field = one_line(field);
        }
        let mut inline = String::new();
        clean
            .serialize(toml::ser::ValueSerializer::new(&mut inline))
            .context("serialising a summary line")?;
        Ok(format!("{LINE_PREFIX}{inline}{LINE_SUFFIX}"))
    }

    /// The row of a summary line, if `line` is one.
    pub fn parse(line: &str) -> Option<Result<Self>> {
        let inline = line
            .trim()
            .strip_prefix(LINE_PREFIX)?
            .strip_suffix(LINE_SUFFIX)?;
        Some(
            toml::de::ValueDeserializer::parse(inline)
                .and_then(Self::deserialize)
                .with_context(|| format!("reading the summary line {line:?}")),
        )
    }
}

/// `text` on one line, without anything that would end the comment early.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("-->", "->")
}

/// The summary lines of `rows`, one a line, for the end of a section.
pub fn lines(rows: &[Row]) -> Result<String> {
    let mut out = String::new();
    for row in rows {
        out.push_str(&row.line()?);
        out.push('\n');
    }
    Ok(out)
}

/// The standing target of each scenario, as the issues state it.
pub fn target_of(scenario: &str) -> &'static str {
    match scenario {
        "keepalive" => "req/s ≥ 1.2x nginx, p99 ≤ nginx, CPU per request ≤ 0.9x nginx",
        "new-connection" | "body-1mib" => "req/s ≥ 1.0x nginx",
        "https" => "req/s ≥ 1.0x nginx, over HTTP/1.1 and over h2 each",
        "ws-echo" => "messages/s ≥ 1.0x nginx",
        "instructions" => "≤ 25,000 instructions per proxied request",
        "routes" => {
            "at 1M routes: random-host req/s ≥ 0.95x one route's, ≤ 300 bytes of gateway memory \
             per route"
        }
        "churn" | "churn-bulk" => {
            "≥ 5,000 changes/s at 100k routes under wrk load, loaded req/s ≥ 0.9x unloaded, \
             0 errors"
        }
        "churn-gateways" | "churn-gateways-databases" => {
            "the changes/s asked sustained (issue 17: 1,000/s at 100k routes)"
        }
        "table-updates" => "≥ 10,000 updates/s with p99 submit to visible < 5 ms",
        "tls-handshakes" => "handshakes/s ≥ 1.0x nginx, full and resumed",
        "slowloris" | "h2-flood" => {
            "normal client's p99 under attack < 2x alone, RSS back within 10% after"
        }
        _ => "",
    }
}

/// `date -u` and the source commit, for [`Row::measured`].
pub fn stamp() -> String {
    let date = report::command_line_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_else(|| "unknown date".into());
    match report::source_commit(&["bench/src", "bench/Cargo.toml", "gateway", "control-plane"]) {
        Some(commit) => format!("{date}, commit {commit}"),
        None => date,
    }
}

/// Met when every check is, missed when any is missed, otherwise (a check
/// that could not be judged) neither.
pub fn all_met(checks: &[Option<bool>]) -> Option<bool> {
    if checks.contains(&Some(false)) {
        Some(false)
    } else if checks.iter().all(|c| *c == Some(true)) {
        Some(true)
    } else {
        None
    }
}

/// `1.23x`, or `–`.
pub fn times(ratio: Option<f64>) -> String {
    report::fmt_opt(ratio, |r| format!("{r:.2}x"))
}

/// A count with thousands separators: `46409.3` → `46,409`.
pub fn count(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < -0.5 {
        out.insert(0, '-');
    }
    out
}

/// A scenario's section as the summary sees it.
#[derive(Debug)]
pub struct Section {
    pub name: String,
    /// Its `## ` heading.
    pub title: String,
    /// Its `- Date:` line, if any: when it was last written.
    pub date: Option<String>,
    pub rows: Vec<Row>,
}

/// Whether `name` can be a section's name in a marker.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The sections of `text` (between `<!-- NAME:begin` and `<!-- NAME:end -->`),
/// in order, the summary block aside; a summary line that cannot be read is
/// an error.
pub fn sections(text: &str) -> Result<Vec<Section>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("<!-- ") {
        let start = at + found;
        let after = &text[start + "<!-- ".len()..];
        let name = after.split(":begin").next().unwrap_or("");
        if name.len() == after.len() || !is_name(name) || name == "summary" {
            at = start + 1;
            continue;
        }
        let end = format!("<!-- {name}:end -->");
        let Some(len) = text[start..].find(&end) else {
            at = start + 1;
            continue;
        };
        let body = &text[start..start + len];
        let mut rows = Vec::new();
        for line in body.lines() {
            if let Some(row) = Row::parse(line) {
                rows.push(row.with_context(|| format!("in the {name} section"))?);
            }
        }
        let title = body
            .lines()
            .find_map(|l| l.strip_prefix("## "))
            .unwrap_or(name)
            .trim()
            .to_owned();
        let date = body
            .lines()
            .find_map(|l| l.strip_prefix("- Date: "))
            .map(|d| d.trim().to_owned());
        out.push(Section {
            name: name.to_owned(),
            title,
            date,
            rows,
        });
        at = start + len + end.len();
    }
    Ok(out)
}

/// A table cell: no line breaks, no unescaped `|`.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

/// The summary block: the table and how to read it.
pub fn summary_block(sections: &[Section]) -> String {
    let mut t = String::from(
        "| scenario | sessiongate | peer | ratio | target | met? | measured |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for s in sections {
        let scenario = format!("{} (`{}`)", s.title, s.name);
        if s.rows.is_empty() {
            let _ = writeln!(
                t,
                "| {} | {NOT_RERUN} | | | {} | – | {} |",
                cell(&scenario),
                cell(target_of(&s.name)),
                cell(
                    &s.date
                        .as_deref()
                        .map_or(String::new(), |d| format!("section written {d}"))
                ),
            );
            continue;
        }
        for r in &s.rows {
            let name = if r.case.is_empty() {
                scenario.clone()
            } else {
                format!("{scenario}, {}", r.case)
            };
            let figures = if r.note.is_empty() {
                r.sessiongate.clone()
            } else {
                format!("{} ({})", r.sessiongate, r.note)
            };
            let met = match r.met {
                Some(true) => "MET",
                Some(false) => "**MISSED**",
                None => "–",
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {met} | {} |",
                cell(&name),
                cell(&figures),
                cell(&r.peer),
                cell(&r.ratio),
                cell(&r.target),
                cell(&r.measured),
            );
        }
    }
    t.push_str(
        "\nEach row is the last run of that scenario, as its section below records it (the \
         section has the command, the machine, every round and the configurations). MET or \
         MISSED judges the figures of that run against the target; `–`: that run cannot say \
         (a figure or a target size missing, see the row). The machine is shared and noisy: \
         the ratios within a run are what counts.\n",
    );
    t
}

/// `text` with its summary block made again from its sections. A file
/// without the block gets one before its first section (or at its end).
pub fn regenerate(text: &str) -> Result<String> {
    let block = summary_block(&sections(text)?);
    let begin = text.find(BEGIN_PREFIX);
    let end = text.find(END);
    if let (Some(b), Some(e)) = (begin, end) {
        if b < e {
            return Ok(format!(
                "{}{BEGIN}\n{}{END}{}",
                &text[..b],
                block,
                &text[e + END.len()..]
            ));
        }
    }
    let first = sections(text)?
        .first()
        .and_then(|s| text.find(&format!("<!-- {}:begin", s.name)));
    Ok(match first {
        Some(at) => format!("{}{BEGIN}\n{block}{END}\n\n{}", &text[..at], &text[at..]),
        None => report::replace_section(text, BEGIN, END, &block),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &str, case: &str, met: Option<bool>) -> Row {
        Row {
            scenario: scenario.into(),
            case: case.into(),
            sessiongate: "41,203 req/s".into(),
            peer: "nginx: 38,455 req/s".into(),
            ratio: "1.07x".into(),
            target: target_of(scenario).into(),
            met,
            measured: "2026-12-06 10:41 UTC, commit 3f18f25".into(),
            note: String::new(),
        }
    }

    #[test]
    fn summary_lines_round_trip() -> Result<()> {
        let mut r = row("https", "h2", Some(true));
        r.note = "a \"quoted\" | note --> ending\nhere".into();
        let line = r.line()?;
        assert!(
            line.starts_with("<!-- summary: { scenario = \"https\""),
            "{line}"
        );
        assert!(!line.contains('\n'));
        // The comment ends where it should, once.
        assert_eq!(line.matches("-->").count(), 1, "{line}");
        let back = Row::parse(&line).expect("a summary line")?;
        assert_eq!(back.note, "a \"quoted\" | note -> ending here");
        assert_eq!(back.met, Some(true));
        assert_eq!(back.case, "h2");
        let mut none = row("keepalive", "", None);
        none.peer.clear();
        let back = Row::parse(&none.line()?).expect("a summary line")?;
        assert_eq!(back, none);
        assert!(Row::parse("<!-- keepalive:end -->").is_none());
        assert!(Row::parse("<!-- summary: { scenario = -->").is_some_and(|r| r.is_err()));
        Ok(())
    }

    #[test]
    fn counts_and_verdicts() {
        assert_eq!(count(46409.3), "46,409");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(1_000_000.0), "1,000,000");
        assert_eq!(count(f64::NAN), "–");
        assert_eq!(all_met(&[Some(true), Some(true)]), Some(true));
        assert_eq!(all_met(&[Some(true), None]), None);
        assert_eq!(all_met(&[None, Some(false)]), Some(false));
        assert_eq!(times(Some(0.814)), "0.81x");
    }

    /// A results file as the harness leaves it: a summary block made from
    /// the sections below it, rows in the sections' order, one for a
    /// section written before summary lines existed; made again after
    /// a section is replaced, with everything else kept.
    #[test]
    fn summary_is_made_again_from_the_sections() -> Result<()> {
        let (kb, ke) = crate::side_by_side::markers("keepalive");
        let (hb, he) = crate::side_by_side::markers("https");
        let doc = format!(
            "# Results\n\nIntro.\n\n{BEGIN}\nstale table\n{END}\n\n\
             {kb}\n## Keep-alive, small responses\n\n- Date: Sat Dec  5 00:48:12 UTC 2026\n{ke}\n\n\
             {hb}\n## HTTPS keep-alive\n\n{}{he}\n",
            lines(&[
                row("https", "HTTP/1.1", Some(true)),
                row("https", "h2", Some(false))
            ])?
        );
        let once = regenerate(&doc)?;
        assert!(once.starts_with("# Results\n\nIntro.\n\n"));
        assert!(!once.contains("stale table"));
        let table: Vec<&str> = once
            .lines()
            .skip_while(|l| !l.starts_with(BEGIN_PREFIX))
            .take_while(|l| *l != END)
            .filter(|l| l.starts_with("| "))
            .collect();
        assert_eq!(table.len(), 4, "{once}");
        assert!(table[0].starts_with("| scenario | sessiongate | peer |"));
        assert_eq!(
            table[1],
            format!(
                "| Keep-alive, small responses (`keepalive`) | {NOT_RERUN} | | | {} | – | \
                 section written Sat Dec 5 00:48:12 UTC 2026 |",
                target_of("keepalive")
            )
        );
        assert!(table[2].starts_with("| HTTPS keep-alive (`https`), HTTP/1.1 | 41,203 req/s |"));
        assert!(table[2].contains("| MET |"));
        assert!(table[3].contains("| **MISSED** |"));
        // Stable: nothing changes when nothing did.
        assert_eq!(regenerate(&once)?, once);

        // keepalive rerun: its row comes from its new summary line.
        let mut k = row("keepalive", "", Some(false));
        k.sessiongate = "37,478 req/s".into();
        let section = format!("## Keep-alive, small responses\n\n{}", lines(&[k])?);
        let rerun = regenerate(&report::replace_section(&once, &kb, &ke, &section))?;
        assert!(rerun.contains("| Keep-alive, small responses (`keepalive`) | 37,478 req/s |"));
        assert!(!rerun.contains(NOT_RERUN));
        assert_eq!(rerun.matches(BEGIN_PREFIX).count(), 1);
        assert!(rerun.ends_with(&format!("{he}\n")));
        Ok(())
    }

    #[test]
    fn a_file_without_the_block_gets_one_before_its_first_section() -> Result<()> {
        let (b, e) = crate::side_by_side::markers("body-1mib");
        let doc = format!("# Results\n\n{b}\n## 1 MiB responses\n{e}\n");
        let text = regenerate(&doc)?;
        assert!(text.starts_with(&format!("# Results\n\n{BEGIN}\n| scenario |")));
        assert!(text.ends_with(&format!("{END}\n\n{b}\n## 1 MiB responses\n{e}\n")));
        // Nothing to summarise: the block is appended.
        let empty = regenerate("")?;
        assert!(empty.starts_with(BEGIN) && empty.ends_with(&format!("{END}\n")));
        // A summary line that cannot be read is an error, not a lost row.
        let bad = format!("{b}\n<!-- summary: {{ scenario = 1 }} -->\n{e}\n");
        assert!(regenerate(&bad).is_err());
        Ok(())
    }
}
