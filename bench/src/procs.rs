//! Child processes under test, what /proc says about them, and the
//! interruption flag.
//!
//! CPU time is read from /proc rather than from `getrusage` because the
//! proxies are long-lived children that have not exited yet, and nginx's
//! worker is a grandchild.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Set by the signal watcher on SIGINT/SIGTERM. The main thread checks it at
/// every step, so that the Drop guards run and nothing is left behind.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// How long a child gets to exit after being asked before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `(ppid, utime + stime)` from the contents of /proc/<pid>/stat.
///
/// The command name (field 2) is in parentheses and may itself hold spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(contents: &str) -> Option<(u32, u64)> {
    let rest = &contents[contents.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `(pid, ppid, ticks)` of every process currently visible in /proc.
fn all_processes() -> Vec<(u32, u32, u64)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            // Processes come and go during the scan: skip the vanished ones.
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let (ppid, ticks) = parse_stat(&stat)?;
            Some((pid, ppid, ticks))
        })
        .collect()
}

/// `(pid, ticks)` for `root` and all its descendants; `root` first. Empty if
/// `root` is gone.
pub fn process_tree(root: u32) -> Vec<(u32, u64)> {
    let all = all_processes();
    let Some(&(_, _, root_ticks)) = all.iter().find(|(pid, _, _)| *pid == root) else {
        return Vec::new();
    };
    let mut tree = vec![(root, root_ticks)];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i].0;
        tree.extend(
            all.iter()
                .filter(|(_, ppid, _)| *ppid == parent)
                .map(|&(pid, _, ticks)| (pid, ticks)),
        );
        i += 1;
    }
    tree
}

/// VmRSS in KiB from the contents of /proc/<pid>/status.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the harness runs as root, read from the effective uid in
/// /proc/self/status. nginx needs to be told a worker user then.
pub fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Sends `signal` (a name such as "TERM") with kill(1): the workspace pins no
/// libc crate, and kill(1) is part of every Debian base system.
fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A proxy under test. Dropping it stops the process (and its workers), so
/// that error paths clean up as well as the happy one.
pub struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// How to ask it to stop; `None` means SIGTERM.
    stop: Option<Command>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: PathBuf,
        stop: Option<Command>,
    ) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name,
            child,
            log,
            stop,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, quoting the end of the process's log, if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        check_interrupted()?;
        if let Some(status) = self
            .child
            .try_wait()
            .with_context(|| format!("checking on {}", self.name))?
        {
            bail!(
                "{} exited unexpectedly ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// utime + stime of the process and all its descendants, in clock ticks.
    pub fn cpu_ticks(&mut self) -> Result<u64> {
        self.ensure_running()?;
        let tree = process_tree(self.pid());
        if tree.is_empty() {
            bail!("{} (pid {}) is not in /proc", self.name, self.pid());
        }
        Ok(tree.iter().map(|&(_, ticks)| ticks).sum())
    }

    /// Summed VmRSS of the process and its descendants, in KiB.
    pub fn rss_kib(&mut self) -> Result<u64> {
        self.ensure_running()?;
        let mut total = 0;
        for (pid, _) in process_tree(self.pid()) {
            let path = format!("/proc/{pid}/status");
            let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            total +=
                parse_vm_rss_kib(&status).with_context(|| format!("no VmRSS line in {path}"))?;
        }
        Ok(total)
    }

    /// The last few KiB of the log, for error messages.
    pub fn log_tail(&self) -> String {
        read_tail(&self.log, 4096)
            .unwrap_or_else(|err| format!("(cannot read {}: {err})", self.log.display()))
    }

    fn wait_exit(&mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.pid();
        let descendants: Vec<u32> = process_tree(pid)
            .into_iter()
            .skip(1)
            .map(|(p, _)| p)
            .collect();
        let asked = match self.stop.take() {
            Some(mut cmd) => cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            None => false,
        } || send_signal(pid, "TERM");
        if asked && self.wait_exit(STOP_GRACE) {
            return;
        }
        eprintln!(
            "{} did not stop within {STOP_GRACE:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its workers would otherwise be reparented and linger.
        for child in descendants {
            if Path::new(&format!("/proc/{child}")).exists() {
                send_signal(child, "KILL");
            }
        }
    }
}

fn read_tail(path: &Path, max: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A uniquely named directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        // create_dir, not create_dir_all: an existing directory must be an error.
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let stat = "1234 (a b) c)) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 4 0 \
                    100 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((77, 281)));
    }

    #[test]
    fn stat_truncated() {
        assert_eq!(parse_stat("1 (x) S 0 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn vm_rss() {
        let status = "Name:\tnginx\nVmPeak:\t  1000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss_kib(status), Some(5120));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn own_tree_is_visible() {
        let tree = process_tree(std::process::id());
        assert_eq!(tree.first().map(|t| t.0), Some(std::process::id()));
    }
}
