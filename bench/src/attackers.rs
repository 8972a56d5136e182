//! The attack tools of the `slowloris` and `h2-flood` scenarios, from
//! Debian: `slowhttptest` (slow headers, a.k.a. slowloris) and `h2load`
//! (nghttp2's HTTP/2 load generator, here a stream flood); their command
//! lines and what their reports say. The rapid-reset client is the
//! harness's own (`rapid_reset`).

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{interrupted, Proc};

/// The slow-headers attack: `connections` clients, opened at `rate` per
/// second, each sending a request head that never ends (one more header
/// line every `interval` seconds), for at most `length` seconds.
#[derive(Debug, Clone)]
pub struct Slowloris {
    pub connections: u32,
    pub rate: u32,
    pub interval: u32,
    pub length: u64,
}

impl Slowloris {
    /// The arguments after `slowhttptest`.
    pub fn args(&self, target: SocketAddr) -> Vec<String> {
        vec![
            "-H".into(),
            "-c".into(),
            self.connections.to_string(),
            "-r".into(),
            self.rate.to_string(),
            "-i".into(),
            self.interval.to_string(),
            "-l".into(),
            self.length.to_string(),
            // Short follow-up lines, so that a head takes long to grow.
            "-x".into(),
            "24".into(),
            // The probe: a normal request every second; the server counts as
            // unavailable when it takes longer than this to answer.
            "-p".into(),
            "3".into(),
            "-t".into(),
            "GET".into(),
            "-u".into(),
            format!("http://{target}/"),
        ]
    }

    /// Starts slowhttptest with its output in `log`. Dropping the returned
    /// process stops it (SIGTERM), which closes its connections.
    /// Its status comes out as it is printed only under `stdbuf -oL`
    /// (coreutils): into a file, slowhttptest's output is block-buffered,
    /// and the SIGTERM that stops it loses the buffer.
    pub fn start(&self, program: &Path, target: SocketAddr, log: &Path) -> Result<Proc> {
        let mut cmd = match crate::targets::find_program("stdbuf") {
            Some(stdbuf) => {
                let mut c = Command::new(stdbuf);
                c.arg("-oL").arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(self.args(target));
        Proc::spawn("slowhttptest", cmd, log.to_path_buf(), None)
    }
}

/// slowhttptest's last status block: how its connections stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlowStatus {
    pub connected: u64,
    pub pending: u64,
    pub closed: u64,
    pub error: u64,
    /// Whether its probe request was answered in time.
    pub service_available: Option<bool>,
}

/// Parses the last `slow HTTP test status on Nth second:` block of
/// slowhttptest's output; `None` when it has printed none yet.
pub fn parse_slow_status(log: &str) -> Option<SlowStatus> {
    let log = strip_ansi(log);
    let start = log.rfind("slow HTTP test status on")?;
    let mut out = SlowStatus::default();
    for line in log[start..].lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            break;
        };
        let value = value.trim();
        let number = || value.parse::<u64>().ok();
        match key.trim() {
            "connected" => out.connected = number()?,
            "pending" => out.pending = number()?,
            "closed" => out.closed = number()?,
            "error" => out.error = number()?,
            "service available" => out.service_available = Some(value == "YES"),
            "initializing" => {}
            _ => break,
        }
    }
    Some(out)
}

/// `text` without terminal escape sequences (`ESC [ … letter`): slowhttptest
/// colours its output even into a file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Up to and including the final letter of the sequence.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads slowhttptest's log and its last status block.
pub fn slow_status(log: &Path) -> Option<SlowStatus> {
    fs::read_to_string(log)
        .ok()
        .and_then(|text| parse_slow_status(&text))
}

/// The server side's established TCP connections on `port` (IPv4, from
/// `/proc/net/tcp`): how many slow clients the server holds open, whatever
/// the attack tool believes.
pub fn established_on(port: u16) -> Result<u64> {
    let text = fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    Ok(count_established(&text, port))
}

/// [`established_on`] over the text of `/proc/net/tcp`.
pub fn count_established(table: &str, port: u16) -> u64 {
    let wanted = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1);
            let state = fields.nth(1);
            state == Some("01")
                && local.and_then(|l| l.rsplit_once(':')).map(|(_, p)| p) == Some(&wanted)
        })
        .count() as u64
}

/// The HTTP/2 stream flood: `h2load` over h2c with prior knowledge,
/// `clients` connections with up to `streams` requests in flight on each
/// (as many as the server's SETTINGS allow), `requests` in all per run.
#[derive(Debug, Clone)]
pub struct StreamFlood {
    pub clients: u32,
    pub streams: u32,
    pub requests: u64,
}

impl StreamFlood {
    /// The arguments after `h2load`. `:authority` is the route's host.
    pub fn args(&self, target: SocketAddr, authority: &str) -> Vec<String> {
        vec![
            "-n".into(),
            self.requests.to_string(),
            "-c".into(),
            self.clients.to_string(),
            "-m".into(),
            self.streams.to_string(),
            "-H".into(),
            format!(":authority: {authority}"),
            format!("http://{target}/"),
        ]
    }
}

/// What h2load's report says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct H2loadResult {
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub status_2xx: u64,
    pub status_other: u64,
    /// The run's own duration, from "finished in".
    pub seconds: f64,
    /// Requests completed, with or without success.
    pub done: u64,
    pub errored: u64,
    pub timeout: u64,
    /// "finished in …, N req/s".
    pub req_per_sec: f64,
    /// "Application protocol: h2"; `None` when none was negotiated.
    pub protocol: Option<String>,
    /// "time for request:" mean and max, in µs (h2load reports no
    /// percentiles).
    pub mean_us: Option<f64>,
    pub max_us: Option<f64>,
}

impl H2loadResult {
    pub fn add(&mut self, other: &H2loadResult) {
        self.requests += other.requests;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.status_2xx += other.status_2xx;
        self.status_other += other.status_other;
        self.seconds += other.seconds;
        self.done += other.done;
        self.errored += other.errored;
        self.timeout += other.timeout;
    }
}

/// Parses h2load's text report.
pub fn parse_h2load(report: &str) -> Result<H2loadResult> {
    let mut out = H2loadResult::default();
    let mut seen = (false, false, false);
    for line in report.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "62.51ms, 63985.67 req/s, 5.25MB/s"
            let mut parts = rest.split(',');
            let first = parts.next().unwrap_or("");
            out.seconds = parse_seconds(first.trim())
                .with_context(|| format!("h2load's duration in {line:?}"))?;
            if let Some(rps) = parts.next().and_then(|p| p.trim().strip_suffix(" req/s")) {
                out.req_per_sec = rps
                    .parse()
                    .with_context(|| format!("h2load's req/s in {line:?}"))?;
            }
            seen.0 = true;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // "20000 total, 4396 started, 4144 done, 4000 succeeded, 16000 failed, ..."
            for (n, what) in counts(rest).with_context(|| format!("in {line:?}"))? {
                match what {
                    "total" => out.requests = n,
                    "succeeded" => out.succeeded = n,
                    "failed" => out.failed = n,
                    "done" => out.done = n,
                    "errored" => out.errored = n,
                    "timeout" => out.timeout = n,
                    _ => {}
                }
            }
            seen.1 = true;
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            // "4000 2xx, 0 3xx, 0 4xx, 0 5xx"
            for (n, class) in counts(rest).with_context(|| format!("in {line:?}"))? {
                if class == "2xx" {
                    out.status_2xx = n;
                } else {
                    out.status_other += n;
                }
            }
            seen.2 = true;
        } else if let Some(rest) = line.strip_prefix("Application protocol:") {
            out.protocol = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            // min, max, mean, sd, +/- sd
            let times: Vec<&str> = rest.split_whitespace().collect();
            let us = |i: usize| {
                times
                    .get(i)
                    .and_then(|t| parse_seconds(t).ok())
                    .map(|s| s * 1e6)
            };
            out.max_us = us(1);
            out.mean_us = us(2);
        }
    }
    if seen != (true, true, true) {
        bail!("no finished/requests/status codes lines");
    }
    Ok(out)
}

/// `"4000 2xx, 0 3xx"` → `[(4000, "2xx"), (0, "3xx")]`.
fn counts(list: &str) -> Result<Vec<(u64, &str)>> {
    list.split(',')
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .map(|(n, what)| Ok((n.parse().with_context(|| format!("{what}: {n:?}"))?, what)))
        .collect()
}

/// `"62.51ms"`, `"2.00s"`, `"950us"` in seconds.
fn parse_seconds(text: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        bail!("no unit in {text:?}");
    };
    Ok(number.parse::<f64>().with_context(|| format!("{text:?}"))? * scale)
}

/// Runs h2load with `flood` again and again until `stop` says so (each run
/// ends when its requests are done, or when the server closes its
/// connections: h2load does not reconnect), and adds up the reports.
pub fn flood_until(
    program: &Path,
    flood: &StreamFlood,
    target: SocketAddr,
    authority: &str,
    stop: &dyn Fn() -> bool,
) -> Result<(H2loadResult, u32)> {
    let mut total = H2loadResult::default();
    let mut runs = 0;
    while !stop() {
        if interrupted() {
            bail!("interrupted");
        }
        let output = Command::new(program)
            .args(flood.args(target, authority))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "h2load failed ({}):\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let r =
            parse_h2load(&stdout).with_context(|| format!("parsing h2load's report:\n{stdout}"))?;
        total.add(&r);
        runs += 1;
    }
    Ok((total, runs))
}

/// Polls `ok` every 50 ms until it holds or `limit` passes; returns whether
/// it held and how long that took.
pub fn poll_until(
    limit: Duration,
    mut ok: impl FnMut() -> Result<bool>,
) -> Result<(bool, Duration)> {
    let started = Instant::now();
    loop {
        if ok()? {
            return Ok((true, started.elapsed()));
        }
        if interrupted() {
            bail!("interrupted");
        }
        if started.elapsed() >= limit {
            return Ok((false, started.elapsed()));
        }
        sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_slowhttptest_status_counts() {
        let log = "\
slow HTTP test status on 0th second:

initializing:        0
pending:             1
connected:           0
error:               0
closed:              0
service available:   YES
Thu Dec  4 23:00:00 2025:
slow HTTP test status on 5th second:

initializing:        0
pending:             12
connected:           988
error:               0
closed:              0
service available:   NO
";
        assert_eq!(
            parse_slow_status(log),
            Some(SlowStatus {
                connected: 988,
                pending: 12,
                closed: 0,
                error: 0,
                service_available: Some(false),
            })
        );
        assert_eq!(parse_slow_status("starting"), None);
        // As it writes it: coloured, a blank line after the heading.
        let coloured = "\x1b[0mFri Dec  4 23:30:16 2026:\x1b[1;32m\nslow HTTP test status on \x1b[0;32m5\x1b[1;32mth second:\n\n\
            \x1b[1;32minitializing:\x1b[1;32m        0\n\x1b[1;32mpending:     \x1b[1;32m        0\n\
            \x1b[1;32mconnected:   \x1b[1;32m        5\n\x1b[1;32merror:       \x1b[1;32m        0\n\
            \x1b[1;32mclosed:      \x1b[1;32m        0\n\
            \x1b[1;32mservice available:\x1b[1;32m   \x1b[1;32mYES\x1b[0m\n\x1b[0mFri Dec  4 23:30:16 2026:\x1b[0;36m\nTest ended on 5th second\n";
        let status = parse_slow_status(coloured);
        assert_eq!(
            status,
            Some(SlowStatus {
                connected: 5,
                service_available: Some(true),
                ..SlowStatus::default()
            })
        );
    }

    #[test]
    fn established_server_sockets_on_a_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D432 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1
";
        // 0x1F90 = 8080: the listener (0A) and a TIME_WAIT (06) do not count,
        // nor does the client's own end (local port 0xD431).
        assert_eq!(count_established(table, 8080), 1);
        assert_eq!(count_established(table, 8081), 0);
    }

    #[test]
    fn h2load_reports_are_read() -> Result<()> {
        let report = "\
finished in 62.51ms, 63985.67 req/s, 5.25MB/s
requests: 20000 total, 4396 started, 4144 done, 4000 succeeded, 16000 failed, 16000 errored, 0 timeout
status codes: 4000 2xx, 0 3xx, 3 4xx, 1 5xx
";
        let r = parse_h2load(report)?;
        assert_eq!(r.requests, 20000);
        assert_eq!(r.succeeded, 4000);
        assert_eq!(r.failed, 16000);
        assert_eq!(r.status_2xx, 4000);
        assert_eq!(r.status_other, 4);
        assert!((r.seconds - 0.06251).abs() < 1e-9);
        assert!((r.req_per_sec - 63985.67).abs() < 1e-6);
        assert_eq!((r.done, r.errored, r.timeout), (4144, 16000, 0));
        assert_eq!(r.protocol, None);
        assert!(parse_h2load("nothing").is_err());
        let timed = "\
finished in 5.00s, 41203.20 req/s, 9.12MB/s
requests: 206016 total, 206024 started, 206016 done, 206016 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 206016 2xx, 0 3xx, 0 4xx, 0 5xx
                     min         max         mean         sd        +/- sd
time for request:      112us     14.34ms       761us       402us    87.21%
time for connect:     1.21ms      1.43ms      1.33ms        98us    75.00%
Application protocol: h2
";
        let t = parse_h2load(timed)?;
        assert_eq!(t.protocol.as_deref(), Some("h2"));
        assert_eq!(t.status_2xx, 206016);
        assert!((t.req_per_sec - 41203.2).abs() < 1e-6);
        assert_eq!(t.mean_us.map(f64::round), Some(761.0));
        assert_eq!(t.max_us.map(f64::round), Some(14340.0));
        assert!((parse_seconds("2.00s")? - 2.0).abs() < 1e-9);
        assert!((parse_seconds("950us")? - 0.00095).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn attack_command_lines() {
        let target = SocketAddr::from(([127, 0, 0, 1], 8080));
        let slow = Slowloris {
            connections: 1000,
            rate: 200,
            interval: 10,
            length: 30,
        };
        assert_eq!(
            slow.args(target).join(" "),
            "-H -c 1000 -r 200 -i 10 -l 30 -x 24 -p 3 -t GET -u http://127.0.0.1:8080/"
        );
        let flood = StreamFlood {
            clients: 8,
            streams: 100,
            requests: 8000,
        };
        assert_eq!(
            flood.args(target, "app.localhost").join(" "),
            "-n 8000 -c 8 -m 100 -H :authority: app.localhost http://127.0.0.1:8080/"
        );
    }
}
