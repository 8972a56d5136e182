//! Running `openssl s_time` (the TLS scenario's load generator) and
//! `openssl s_client` (its readiness and negotiation probe), and reading
//! their text output.
//!
//! `s_time` is used, as wrk is for HTTP, because it is a fixed,
//! well-known client that is the same for both servers and runs in its own
//! processes, out of the servers' CPU accounting. It opens one connection at
//! a time: several run in parallel to load the server.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::interrupted;

/// How much longer than its `-time` an `s_time` client may run before it is
/// killed: it stops at the first whole second after the time is up.
const CLIENT_GRACE: Duration = Duration::from_secs(30);

/// How long one `s_client` probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one `s_time` client reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct STimeOutput {
    /// Connections completed ("N connections in").
    pub connections: u64,
    /// Of those, resumed sessions (`r` progress marks).
    pub reused: u64,
    /// Of those, full handshakes (`*`, `t` or `3` progress marks).
    pub fresh: u64,
    /// Application bytes read, all connections together (`-www` responses).
    pub bytes_read: u64,
}

/// One `s_time` client process of a run.
#[derive(Debug, Clone)]
pub struct ClientRun {
    pub output: STimeOutput,
    /// From spawn to exit, measured here: `s_time` itself counts whole
    /// seconds and runs up to one second past its `-time`.
    pub wall: Duration,
    /// Why the client failed (exit status, stderr), if it did.
    pub failure: Option<String>,
}

impl ClientRun {
    pub fn per_sec(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.output.connections as f64 / secs
        } else {
            0.0
        }
    }
}

/// Runs `clients` copies of `openssl s_time ARGS` at once, with stdout and
/// stderr in files under `dir` (a resumed run prints one progress mark per
/// connection, far more than a pipe holds), and reads their reports.
pub fn run_clients(
    openssl: &Path,
    args: &[String],
    clients: u32,
    secs: u64,
    dir: &Path,
) -> Result<Vec<ClientRun>> {
    struct Running {
        child: Child,
        started: Instant,
        ended: Option<Instant>,
        stdout: PathBuf,
        stderr: PathBuf,
    }
    let mut running: Vec<Running> = Vec::new();
    for i in 0..clients {
        let stdout = dir.join(format!("s_time-{i}.out"));
        let stderr = dir.join(format!("s_time-{i}.err"));
        let out =
            File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?;
        let err =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let spawned = Command::new(openssl)
            .arg("s_time")
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} s_time", openssl.display()));
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                kill_all(running.iter_mut().map(|r| &mut r.child));
                return Err(e);
            }
        };
        running.push(Running {
            child,
            started: Instant::now(),
            ended: None,
            stdout,
            stderr,
        });
    }
    // Poll rather than block so that SIGTERM to the harness ends the run
    // promptly.
    let deadline = Instant::now() + Duration::from_secs(secs) + CLIENT_GRACE;
    loop {
        let mut all_done = true;
        for r in running.iter_mut().filter(|r| r.ended.is_none()) {
            match r.child.try_wait() {
                Ok(Some(_)) => r.ended = Some(Instant::now()),
                Ok(None) => all_done = false,
                Err(e) => {
                    kill_all(running.iter_mut().map(|r| &mut r.child));
                    return Err(e).context("waiting for s_time");
                }
            }
        }
        if all_done {
            break;
        }
        if interrupted() || Instant::now() > deadline {
            kill_all(running.iter_mut().map(|r| &mut r.child));
            if interrupted() {
                bail!("interrupted");
            }
            bail!("s_time ran past its {secs}s by {CLIENT_GRACE:?}; killed it");
        }
        sleep(Duration::from_millis(20));
    }

    let mut runs = Vec::new();
    for mut r in running {
        let status = r.child.wait().context("waiting for s_time")?;
        let wall = r.ended.unwrap_or_else(Instant::now) - r.started;
        let stdout = fs::read_to_string(&r.stdout)
            .with_context(|| format!("reading {}", r.stdout.display()))?;
        let stderr = fs::read_to_string(&r.stderr).unwrap_or_default();
        let parsed = parse_s_time(&stdout);
        let failure = match (&parsed, status.success()) {
            (Ok(_), true) => None,
            (Ok(_), false) => Some(format!("s_time exited with {status}: {}", stderr.trim())),
            (Err(e), _) => Some(format!(
                "s_time exited with {status}, {e:#}: {}",
                stderr.trim()
            )),
        };
        // A client that failed half-way still made the connections it
        // marked; they are counted, and the run is flagged.
        let output = parsed.unwrap_or_else(|_| progress_only(&stdout));
        runs.push(ClientRun {
            output,
            wall,
            failure,
        });
    }
    Ok(runs)
}

fn kill_all<'a>(children: impl Iterator<Item = &'a mut Child>) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The progress marks `s_time` prints, one per connection: `r` for a resumed
/// session; otherwise `*` (or `t`, `3` for old protocol versions).
fn is_progress_line(line: &str) -> bool {
    !line.is_empty() && line.chars().all(|c| matches!(c, 'r' | '*' | 't' | '3'))
}

fn count_marks(stdout: &str) -> (u64, u64) {
    let (mut reused, mut fresh) = (0, 0);
    for line in stdout
        .lines()
        .map(str::trim)
        .filter(|l| is_progress_line(l))
    {
        for c in line.chars() {
            if c == 'r' {
                reused += 1;
            } else {
                fresh += 1;
            }
        }
    }
    (reused, fresh)
}

fn progress_only(stdout: &str) -> STimeOutput {
    let (reused, fresh) = count_marks(stdout);
    STimeOutput {
        connections: reused + fresh,
        reused,
        fresh,
        bytes_read: 0,
    }
}

/// Parses the report of one `s_time -new` or `s_time -reuse` run:
///
/// ```text
/// rrrrrrrr…
///
/// 6385 connections in 0.56s; 11401.79 connections/user sec, bytes read 0
/// 6385 connections in 4 real seconds, 0 bytes read per connection
/// ```
pub fn parse_s_time(stdout: &str) -> Result<STimeOutput> {
    let (reused, fresh) = count_marks(stdout);
    let summary = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.contains(" connections in ") && l.contains("connections/user sec"))
        .context("no 'N connections in …s; … connections/user sec' line")?;
    let (count, _) = summary
        .split_once(" connections in ")
        .context("no connection count")?;
    let connections: u64 = count
        .trim()
        .parse()
        .with_context(|| format!("connection count in {summary:?}"))?;
    let bytes_read: u64 = summary
        .rsplit_once("bytes read ")
        .context("no 'bytes read'")?
        .1
        .trim()
        .parse()
        .with_context(|| format!("bytes read in {summary:?}"))?;
    if reused + fresh != connections {
        bail!(
            "{} progress marks for {connections} connections",
            reused + fresh
        );
    }
    Ok(STimeOutput {
        connections,
        reused,
        fresh,
        bytes_read,
    })
}

/// What a server negotiated with `openssl s_client`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// "TLSv1.3"
    pub protocol: String,
    /// "TLS_AES_256_GCM_SHA384"
    pub cipher: String,
    /// The key exchange group, "X25519, 253 bits".
    pub group: String,
    /// "ECDSA"
    pub signature: String,
    /// The server's certificate, base64 of its DER without line breaks.
    pub leaf: String,
}

impl Negotiated {
    /// "TLSv1.3, TLS_AES_256_GCM_SHA384, X25519, ECDSA"
    pub fn describe(&self) -> String {
        let group = self.group.split(',').next().unwrap_or_default();
        format!(
            "{}, {}, {}, {}",
            self.protocol, self.cipher, group, self.signature
        )
    }
}

/// One TLS handshake with `openssl s_client`, without SNI (as `s_time`
/// sends none), verifying the chain against `ca` and the name `host`, with
/// the protocol version forced by `version` ("-tls1_3", "-tls1_2").
pub fn probe(
    openssl: &Path,
    addr: SocketAddr,
    ca: &Path,
    host: &str,
    version: &str,
) -> Result<Negotiated> {
    let mut child = Command::new(openssl)
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-noservername")
        .arg("-CAfile")
        .arg(ca)
        .arg("-verify_return_error")
        .arg("-verify_hostname")
        .arg(host)
        .arg(version)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} s_client", openssl.display()))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while child.try_wait().context("waiting for s_client")?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("s_client took more than {PROBE_TIMEOUT:?}");
        }
        sleep(Duration::from_millis(10));
    }
    let output = child
        .wait_with_output()
        .context("reading s_client's output")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .chain(stdout.lines())
            .find(|l| l.contains("error") || l.contains("refused"))
            .unwrap_or("no error line");
        bail!("s_client failed ({}): {}", output.status, reason.trim());
    }
    parse_s_client(&stdout).with_context(|| format!("reading s_client's report:\n{stdout}"))
}

/// One `GET path` for `host` over HTTP/1.1 and TLS through `openssl
/// s_client` (SNI `host`, the chain verified against `ca` for `host`),
/// read until the server closes (`Connection: close`): the raw response.
pub fn https_get(
    openssl: &Path,
    addr: SocketAddr,
    ca: &Path,
    host: &str,
    path: &str,
) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new(openssl)
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg(host)
        .arg("-CAfile")
        .arg(ca)
        .arg("-verify_return_error")
        .arg("-verify_hostname")
        .arg(host)
        .args(["-alpn", "http/1.1", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} s_client", openssl.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // -quiet implies -ign_eof: s_client reads on after stdin ends,
        // until the server closes.
        write!(
            stdin,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sessiongate-bench\r\n\
             Connection: close\r\n\r\n"
        )
        .context("writing the request to s_client")?;
    }
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while child.try_wait().context("waiting for s_client")?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("s_client took more than {PROBE_TIMEOUT:?}");
        }
        sleep(Duration::from_millis(10));
    }
    let output = child
        .wait_with_output()
        .context("reading s_client's output")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .find(|l| l.contains("error") || l.contains("refused"))
            .unwrap_or("no error line");
        bail!("s_client failed ({}): {}", output.status, reason.trim());
    }
    Ok(output.stdout)
}

/// Reads what [`probe`] needs from `s_client`'s report; fails unless the
/// chain was verified.
pub fn parse_s_client(stdout: &str) -> Result<Negotiated> {
    let mut n = Negotiated::default();
    let mut verified = false;
    for line in stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("New, ") {
            // "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384"
            let (protocol, cipher) = rest
                .split_once(", Cipher is ")
                .with_context(|| format!("unexpected line {line:?}"))?;
            n.protocol = protocol.trim().to_owned();
            n.cipher = cipher.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("Server Temp Key:") {
            n.group = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("Peer signature type:") {
            n.signature = rest.trim().to_owned();
        } else if line == "Verify return code: 0 (ok)" {
            verified = true;
        }
    }
    n.leaf = first_pem_body(stdout).context("no server certificate in the report")?;
    if n.protocol.is_empty() || n.protocol == "(NONE)" {
        bail!("no TLS session was established");
    }
    if !verified {
        bail!("the server's certificate did not verify");
    }
    Ok(n)
}

/// The base64 body of the first `CERTIFICATE` PEM block in `text`, without
/// line breaks.
pub fn first_pem_body(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let len = text[start..].find("-----END CERTIFICATE-----")?;
    Some(
        text[start..start + len]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "Collecting connection statistics for 3 seconds
*****
***

8 connections in 0.70s; 11.43 connections/user sec, bytes read 1200
8 connections in 4 real seconds, 150 bytes read per connection
";

    const REUSE: &str = "

Now timing with session id reuse.
starting
rrrrrrrrrr

10 connections in 0.56s; 17.86 connections/user sec, bytes read 0
10 connections in 4 real seconds, 0 bytes read per connection
";

    #[test]
    fn parses_new_connections() -> Result<()> {
        let r = parse_s_time(NEW)?;
        assert_eq!(
            r,
            STimeOutput {
                connections: 8,
                reused: 0,
                fresh: 8,
                bytes_read: 1200
            }
        );
        Ok(())
    }

    #[test]
    fn parses_reused_sessions() -> Result<()> {
        let r = parse_s_time(REUSE)?;
        assert_eq!((r.connections, r.reused, r.fresh), (10, 10, 0));
        Ok(())
    }

    #[test]
    fn counts_a_reuse_run_that_did_not_resume() -> Result<()> {
        let text = REUSE.replace("rrrrrrrrrr", "rrrr******");
        let r = parse_s_time(&text)?;
        assert_eq!((r.reused, r.fresh), (4, 6));
        Ok(())
    }

    #[test]
    fn rejects_mismatched_or_truncated_reports() {
        assert!(parse_s_time(&NEW.replace("***\n", "**\n")).is_err());
        assert!(parse_s_time("Collecting connection statistics for 3 seconds\n***").is_err());
        assert_eq!(progress_only("starting\nrr*\nERROR\n").connections, 3);
    }

    const S_CLIENT: &str = "CONNECTED(00000003)
---
Certificate chain
 0 s:CN = bench.test
   i:CN = sessiongate development CA
---
Server certificate
-----BEGIN CERTIFICATE-----
MIIBsDCCAVag
AwIBAgIU==
-----END CERTIFICATE-----
subject=CN = bench.test
---
Peer signing digest: SHA256
Peer signature type: ECDSA
Server Temp Key: X25519, 253 bits
---
Verification: OK
Verified peername: bench.test
---
New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384
Server public key is 256 bit
Verify return code: 0 (ok)
";

    #[test]
    fn reads_s_client_report() -> Result<()> {
        let n = parse_s_client(S_CLIENT)?;
        assert_eq!(n.protocol, "TLSv1.3");
        assert_eq!(n.cipher, "TLS_AES_256_GCM_SHA384");
        assert_eq!(n.leaf, "MIIBsDCCAVagAwIBAgIU==");
        assert_eq!(
            n.describe(),
            "TLSv1.3, TLS_AES_256_GCM_SHA384, X25519, ECDSA"
        );
        let unverified = S_CLIENT.replace("Verify return code: 0 (ok)", "");
        assert!(parse_s_client(&unverified).is_err());
        let no_session = S_CLIENT.replace(
            "TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384",
            "(NONE), Cipher is (NONE)",
        );
        assert!(parse_s_client(&no_session).is_err());
        Ok(())
    }
}
