//! Running wrk and reading its text report.
//!
//! wrk is used rather than an in-process client because it is the tool
//! people compare proxies with, and because a separate process keeps the load
//! generator's CPU out of the harness's own accounting.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::interrupted;

/// The Host header every request carries: the route name in sessiongate's
/// config. nginx and the origin ignore it.
pub const HOST: &str = "app.localhost";

/// What one wrk run reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkResult {
    /// Completed requests ("N requests in").
    pub requests: u64,
    /// Response bytes read ("…, 88.51MB read"), to wrk's three significant
    /// digits.
    pub bytes_read: f64,
    /// Responses that did not say `Connection: close`, counted by the Lua
    /// script of [`Script::check_close`]; `None` without that script.
    pub kept_alive: Option<u64>,
    pub req_per_sec: f64,
    /// Latency percentiles, in microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub non_2xx: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub timeouts: u64,
}

impl WrkResult {
    pub fn socket_errors(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts
    }

    /// A short description of the errors, empty when there were none.
    pub fn error_summary(&self) -> String {
        let parts: Vec<String> = [
            ("non-2xx/3xx", self.non_2xx),
            ("connect", self.connect_errors),
            ("read", self.read_errors),
            ("write", self.write_errors),
            ("timeout", self.timeouts),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
        parts.join(", ")
    }
}

/// The Lua line that reports [`WrkResult::kept_alive`].
const KEPT_ALIVE_LINE: &str = "bench-lua kept-alive responses:";

/// What a wrk run sends, beyond the target's address.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// The request path, `/` when empty.
    pub path: String,
    /// Extra request headers (`-H`), e.g. `Connection: close`.
    pub headers: Vec<String>,
    /// A Lua script (`-s`).
    pub script: Option<std::path::PathBuf>,
    /// The script sets a random `Host` per request; otherwise every request
    /// carries `Host: {HOST}`.
    pub random_host: bool,
    /// The body length the origin answers this path with: fewer bytes read
    /// than requests times this flags the run (0: no check).
    pub body_len: usize,
    /// Every request should travel on a new connection (`Connection:
    /// close`); checked directly against the origin's connection count.
    pub new_connections: bool,
    /// The `Host` of every request when not random [default: [`HOST`]].
    pub host: Option<String>,
    /// Over TLS (`https://`).
    pub https: bool,
}

impl Load {
    /// The wrk arguments after `-t1 -cC -dDs --latency`, with `BASE` in
    /// place of the target's address: for the written reports.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if !self.random_host {
            let _ = write!(out, "-H 'Host: {}' ", self.host());
        }
        for h in &self.headers {
            let _ = write!(out, "-H '{h}' ");
        }
        if let Some(script) = &self.script {
            let name = script.file_name().map(|n| n.to_string_lossy().into_owned());
            let _ = write!(out, "-s {} ", name.unwrap_or_default());
        }
        let _ = write!(out, "{}://ADDR{}", self.scheme(), self.path_or_root());
        out
    }

    /// The `Host` of every request, when not random.
    pub fn host(&self) -> &str {
        self.host.as_deref().unwrap_or(HOST)
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// `scheme://addr`: what [`run`] takes as its base.
    pub fn base(&self, addr: std::net::SocketAddr) -> String {
        format!("{}://{addr}", self.scheme())
    }

    fn path_or_root(&self) -> &str {
        if self.path.is_empty() {
            "/"
        } else {
            &self.path
        }
    }
}

/// A Lua script for wrk, written into the run's temp dir.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// A file of host names, one a line: every request carries one of them
    /// as `Host`, picked at random (the same seeded sequence for every
    /// target). The requests are formatted once, in `init`, so that the
    /// per-request Lua work is one table index.
    pub hosts_file: Option<std::path::PathBuf>,
    /// Count the responses that do not carry `Connection: close` and print
    /// the count at the end: proof that every response ended its connection,
    /// so that wrk opened a new one for the next request.
    pub check_close: bool,
}

impl Script {
    pub fn text(&self) -> String {
        let mut lua = String::from("-- written by sessiongate's bench harness\n");
        if let Some(file) = &self.hosts_file {
            // Lua long brackets: no escaping of the path needed.
            let _ = write!(
                lua,
                r#"local hosts_file = [==[{}]==]
local requests = {{}}
local count = 0

function init(args)
  math.randomseed(42)
  for host in io.lines(hosts_file) do
    local headers = {{}}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    headers["Host"] = host
    count = count + 1
    requests[count] = wrk.format(nil, nil, headers)
  end
  if count == 0 then error("no hosts in " .. hosts_file) end
end

function request()
  return requests[math.random(count)]
end
"#,
                file.display()
            );
        }
        if self.check_close {
            let _ = write!(
                lua,
                r#"
kept = 0
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  for k, v in pairs(headers) do
    if string.lower(k) == "connection" and string.lower(v) == "close" then
      return
    end
  end
  kept = kept + 1
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("kept") end
  io.write(string.format("{KEPT_ALIVE_LINE} %d\n", total))
end
"#
            );
        }
        lua
    }
}

/// Runs `wrk -t1 -c<connections> -d<secs>s --latency` against `base`
/// (`http://host:port`) with `load`.
pub fn run(wrk: &Path, base: &str, load: &Load, connections: u32, secs: u64) -> Result<WrkResult> {
    let url = format!("{base}{}", load.path_or_root());
    let mut cmd = Command::new(wrk);
    cmd.arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency");
    if !load.random_host {
        cmd.arg("-H").arg(format!("Host: {}", load.host()));
    }
    for h in &load.headers {
        cmd.arg("-H").arg(h);
    }
    if let Some(script) = &load.script {
        cmd.arg("-s").arg(script);
    }
    let url = url.as_str();
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", wrk.display()))?;
    // Poll rather than block so that SIGTERM to the harness ends the run
    // promptly. wrk's report is a few hundred bytes: it cannot fill the pipe.
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    loop {
        if child.try_wait().context("waiting for wrk")?.is_some() {
            break;
        }
        if interrupted() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            if interrupted() {
                bail!("interrupted");
            }
            bail!("wrk ran past its {secs}s duration by 30s; killed it");
        }
        sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().context("reading wrk's output")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}) against {url}:\n{}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&stdout).with_context(|| format!("parsing wrk's report:\n{stdout}"))
}

/// Parses wrk's text report (as printed with `--latency`).
pub fn parse(report: &str) -> Result<WrkResult> {
    let mut out = WrkResult::default();
    let (mut rps, mut requests, mut p50, mut p99) = (None, None, None, None);
    for line in report.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = Some(rest.trim().parse::<f64>().context("Requests/sec")?);
        } else if let Some((count, rest)) = line.split_once(" requests in ") {
            requests = Some(count.trim().parse::<u64>().context("requests in")?);
            // "5.00s, 88.51MB read"
            let read = rest
                .split_once(", ")
                .and_then(|(_, r)| r.strip_suffix(" read"))
                .with_context(|| format!("no bytes read in {line:?}"))?;
            out.bytes_read = parse_bytes(read)?;
        } else if let Some(rest) = line.strip_prefix(KEPT_ALIVE_LINE) {
            out.kept_alive = Some(rest.trim().parse().context(KEPT_ALIVE_LINE)?);
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50 = Some(parse_duration_us(rest.trim())?);
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = Some(parse_duration_us(rest.trim())?);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            out.non_2xx = rest.trim().parse().context("Non-2xx or 3xx responses")?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 1, write 0, timeout 2"
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                    bail!("unexpected Socket errors line: {line}");
                };
                let n: u64 = n
                    .parse()
                    .with_context(|| format!("Socket errors: {kind}"))?;
                match kind {
                    "connect" => out.connect_errors = n,
                    "read" => out.read_errors = n,
                    "write" => out.write_errors = n,
                    "timeout" => out.timeouts = n,
                    other => bail!("unknown socket error kind {other:?}"),
                }
            }
        }
    }
    out.req_per_sec = rps.context("no Requests/sec line")?;
    out.requests = requests.context("no 'N requests in' line")?;
    out.p50_us = p50.context("no 50% latency line (was --latency passed?)")?;
    out.p99_us = p99.context("no 99% latency line (was --latency passed?)")?;
    Ok(out)
}

/// `"1.23ms"` → `(1.23, "ms")`; `what` names the figure in errors.
fn number_and_unit<'a>(text: &'a str, what: &str) -> Result<(f64, &'a str)> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {what} {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("bad number in {what} {text:?}"))?;
    Ok((value, unit))
}

/// Converts wrk's sizes ("88.51MB", "512.00B"; binary units) to bytes.
pub fn parse_bytes(text: &str) -> Result<f64> {
    let (value, unit) = number_and_unit(text, "size")?;
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown unit {other:?} in size {text:?}"),
    };
    Ok(value * scale)
}

/// Converts wrk's durations ("812.00us", "1.23ms", "2.00s", "1.00m") to µs.
pub fn parse_duration_us(text: &str) -> Result<f64> {
    let (value, unit) = number_and_unit(text, "duration")?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        other => bail!("unknown unit {other:?} in duration {text:?}"),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "Running 5s test @ http://127.0.0.1:40000/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.35us  120.01us   8.12ms   93.10%
    Req/Sec    77.10k     3.01k   81.50k    82.00%
  Latency Distribution
     50%  398.00us
     75%  450.00us
     90%  520.00us
     99%    1.02ms
  383512 requests in 5.00s, 88.51MB read
Requests/sec:  76702.40
Transfer/sec:     17.70MB
";

    const ERRORS: &str = "Running 1s test @ http://127.0.0.1:40000/
  1 threads and 4 connections
  Latency Distribution
     50%    1.50s
     75%    1.70s
     90%    1.90s
     99%    2.00s
  12 requests in 1.00s, 2.00KB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:     12.00
Transfer/sec:      2.00KB
";

    #[test]
    fn parses_clean_report() -> Result<()> {
        let r = parse(CLEAN)?;
        assert_eq!(r.requests, 383_512);
        assert!((r.bytes_read - 88.51 * 1024.0 * 1024.0).abs() < 1.0);
        assert_eq!(r.kept_alive, None);
        assert!((r.req_per_sec - 76_702.40).abs() < 1e-6);
        assert!((r.p50_us - 398.0).abs() < 1e-6);
        assert!((r.p99_us - 1020.0).abs() < 1e-6);
        assert_eq!(r.socket_errors() + r.non_2xx, 0);
        assert_eq!(r.error_summary(), "");
        Ok(())
    }

    #[test]
    fn parses_errors() -> Result<()> {
        let r = parse(ERRORS)?;
        assert_eq!(r.requests, 12);
        assert!((r.p50_us - 1.5e6).abs() < 1e-3);
        assert!((r.p99_us - 2.0e6).abs() < 1e-3);
        assert_eq!(
            (
                r.connect_errors,
                r.read_errors,
                r.write_errors,
                r.timeouts,
                r.non_2xx
            ),
            (1, 2, 3, 4, 5)
        );
        assert_eq!(
            r.error_summary(),
            "non-2xx/3xx 5, connect 1, read 2, write 3, timeout 4"
        );
        Ok(())
    }

    #[test]
    fn reads_the_kept_alive_count() -> Result<()> {
        let report = format!("{CLEAN}{KEPT_ALIVE_LINE} 3\n");
        assert_eq!(parse(&report)?.kept_alive, Some(3));
        assert!(parse(&format!("{CLEAN}{KEPT_ALIVE_LINE} x\n")).is_err());
        Ok(())
    }

    #[test]
    fn sizes() -> Result<()> {
        assert!((parse_bytes("512.00B")? - 512.0).abs() < 1e-9);
        assert!((parse_bytes("1.50GB")? - 1.5 * 1024.0 * 1024.0 * 1024.0).abs() < 1.0);
        assert!(parse_bytes("3").is_err());
        assert!(parse_bytes("3.0XB").is_err());
        Ok(())
    }

    #[test]
    fn scripts_hold_what_was_asked() {
        let hosts = Script {
            hosts_file: Some("/tmp/w/hosts.txt".into()),
            check_close: false,
        }
        .text();
        assert!(hosts.contains("[==[/tmp/w/hosts.txt]==]"));
        assert!(hosts.contains("function request()"));
        assert!(!hosts.contains("function response("));
        let close = Script {
            hosts_file: None,
            check_close: true,
        }
        .text();
        assert!(close.contains("function response("));
        assert!(close.contains(KEPT_ALIVE_LINE));
        assert!(!close.contains("function request()"));
    }

    #[test]
    fn load_description() {
        let load = Load {
            path: "/1mib".into(),
            headers: vec!["Connection: close".into()],
            script: Some("/tmp/w/routes.lua".into()),
            random_host: true,
            ..Load::default()
        };
        assert_eq!(
            load.describe(),
            "-H 'Connection: close' -s routes.lua http://ADDR/1mib"
        );
        assert_eq!(
            Load::default().describe(),
            format!("-H 'Host: {HOST}' http://ADDR/")
        );
        let https = Load {
            host: Some("app.bench.test".into()),
            https: true,
            ..Load::default()
        };
        assert_eq!(https.describe(), "-H 'Host: app.bench.test' https://ADDR/");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 8443));
        assert_eq!(https.base(addr), "https://127.0.0.1:8443");
        assert_eq!(Load::default().base(addr), "http://127.0.0.1:8443");
    }

    #[test]
    fn rejects_truncated_report() {
        assert!(parse("Running 1s test @ x\n").is_err());
    }

    #[test]
    fn durations() -> Result<()> {
        assert!((parse_duration_us("812.00us")? - 812.0).abs() < 1e-9);
        assert!((parse_duration_us("1.00m")? - 60e6).abs() < 1e-3);
        assert!(parse_duration_us("12").is_err());
        assert!(parse_duration_us("1.0xs").is_err());
        Ok(())
    }
}
