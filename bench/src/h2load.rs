//! h2load (Debian's `nghttp2-client`) as the load generator of the `https`
//! scenario's h2 runs: wrk speaks only HTTP/1.1, and browsers speak h2 over
//! TLS. Like wrk it is a separate process, one thread (`-t1`), run for a
//! fixed time (`-D`); it keeps `clients` connections with `streams` requests
//! in flight on each. Its report is read by [`crate::attackers::parse_h2load`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::attackers::{parse_h2load, H2loadResult};
use crate::procs::interrupted;

/// What an h2 run sends: `GET /` with `:authority` on every request.
#[derive(Debug, Clone)]
pub struct H2Load {
    pub program: PathBuf,
    /// Connections (`-c`).
    pub clients: u32,
    /// Requests in flight per connection (`-m`).
    pub streams: u32,
    /// The `:authority` of every request: the route's host.
    pub authority: String,
}

impl H2Load {
    /// The arguments after `h2load` for a run of `secs` against `addr`.
    pub fn args(&self, addr: SocketAddr, secs: u64) -> Vec<String> {
        vec![
            "-t1".into(),
            "-c".into(),
            self.clients.to_string(),
            "-m".into(),
            self.streams.to_string(),
            "-D".into(),
            secs.to_string(),
            "-H".into(),
            format!(":authority: {}", self.authority),
            format!("https://{addr}/"),
        ]
    }

    /// The command, with `ADDR` for the target's address, for the written
    /// report.
    pub fn describe(&self, secs: u64) -> String {
        format!(
            "h2load -t1 -c {} -m {} -D {secs} -H ':authority: {}' https://ADDR/",
            self.clients, self.streams, self.authority
        )
    }

    /// One run of `secs` against `addr`, killed 30 s past its time.
    pub fn run(&self, addr: SocketAddr, secs: u64) -> Result<H2loadResult> {
        let mut child = Command::new(&self.program)
            .args(self.args(addr, secs))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        // Poll, as for wrk, so that an interruption ends the run promptly;
        // the report is a few hundred bytes and cannot fill the pipe.
        let deadline = Instant::now() + Duration::from_secs(secs + 30);
        while child.try_wait().context("waiting for h2load")?.is_none() {
            if interrupted() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                if interrupted() {
                    bail!("interrupted");
                }
                bail!("h2load ran past its {secs}s duration by 30s; killed it");
            }
            sleep(Duration::from_millis(50));
        }
        let output = child
            .wait_with_output()
            .context("reading h2load's output")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "h2load failed ({}) against {addr}:\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse_h2load(&stdout).with_context(|| format!("parsing h2load's report:\n{stdout}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let load = H2Load {
            program: "h2load".into(),
            clients: 4,
            streams: 8,
            authority: "app.bench.test".into(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 8443));
        assert_eq!(
            load.args(addr, 5).join(" "),
            "-t1 -c 4 -m 8 -D 5 -H :authority: app.bench.test https://127.0.0.1:8443/"
        );
        assert_eq!(
            load.describe(5),
            "h2load -t1 -c 4 -m 8 -D 5 -H ':authority: app.bench.test' https://ADDR/"
        );
    }
}
