//! A throwaway PostgreSQL cluster for `churn --gateways N --database
//! postgres`: the approach of `testkit::postgres`, reduced to what the
//! benchmark needs, with the server's durability left at its defaults
//! (`fsync = on`, `full_page_writes = on`, `synchronous_commit = on`, as
//! the store asks), so that it compares with SQLite's synchronous commits
//! (`synchronous = FULL`) rather than with a server that never syncs.
//!
//! The cluster is Debian's `postgresql`: `initdb`, `pg_ctl` and `createdb`
//! found in `SESSIONGATE_TEST_POSTGRES_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`. `initdb` and the server refuse
//! to run as root: as root they run as the `postgres` user (made by the
//! package) or else `nobody`, through `runuser`, in a directory that user
//! makes with `mktemp` in the temp dir.
//!
//! A shell, started here with its stdin on a pipe, makes the cluster,
//! starts the server on a loopback port (`pg_ctl start -w`), makes the
//! database, says `ready`, and reads its stdin until end of file; then it
//! stops the server (`pg_ctl stop -m fast`) and removes its directory.
//! [`Cluster`]'s `Drop` closes the pipe and waits for that; the kernel
//! closes it too when the harness dies, however it dies. The shell ignores
//! SIGINT, SIGTERM and SIGHUP so that a Ctrl-C cannot stop it before it has
//! cleaned up.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{bail, Context, Result};

/// Where to look for the binaries first (the tests' variable).
const BIN_ENV: &str = "SESSIONGATE_TEST_POSTGRES_BIN";

/// The superuser `initdb` makes; trusted on loopback, so no password.
const SUPERUSER: &str = "postgres";

/// The database the control-plane replicas share.
const DATABASE: &str = "sessiongate";

/// The shell that runs the cluster: `$1` the binaries, `$2` the port, `$3`
/// the database to make. Prints `ready` once the server accepts
/// connections and the database is there, or exits with the failing step's
/// log on stderr.
const SCRIPT: &str = r#"
trap '' INT TERM HUP
bin=$1 port=$2 db=$3
dir=$(mktemp -d "${TMPDIR:-/tmp}/sg-bench-postgres-XXXXXX") || exit 1
cleanup() { "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1; rm -rf "$dir"; }
if ! "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
     >"$dir/initdb.log" 2>&1; then
  cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1
fi
if ! "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
     -o "-k $dir -p $port -c listen_addresses=127.0.0.1 -c max_connections=200" \
     start >/dev/null 2>&1; then
  cat "$dir/server.log" >&2; cleanup; exit 1
fi
if ! "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" >"$dir/createdb.log" 2>&1; then
  cat "$dir/createdb.log" >&2; cleanup; exit 1
fi
echo "ready $("$bin/postgres" --version)"
cat >/dev/null
cleanup
"#;

/// A running cluster with one database; stopped and removed on drop.
pub struct Cluster {
    port: u16,
    /// `postgres --version`.
    pub version: String,
    stdin: Option<ChildStdin>,
    shell: Child,
}

impl Cluster {
    /// Makes and starts a cluster on a free loopback port.
    pub fn start() -> Result<Self> {
        let bin = find_bin()?;
        let mut last = None;
        // The port is free when picked and taken by the server a moment
        // later; another process may take it in between, so try a few.
        for _ in 0..3 {
            let port = crate::targets::free_port()?;
            match start_on(&bin, port) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    /// The control plane's `database`: the superuser, no password (the
    /// server trusts loopback).
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // End of file: the shell stops the server and removes its directory.
        drop(self.stdin.take());
        let _ = self.shell.wait();
    }
}

fn start_on(bin: &Path, port: u16) -> Result<Cluster> {
    let mut cmd = match run_as()? {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--", "sh"]);
            c
        }
        None => Command::new("sh"),
    };
    cmd.args(["-c", SCRIPT, "sh"])
        .arg(bin)
        .arg(port.to_string())
        .arg(DATABASE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut shell = cmd.spawn().context("starting PostgreSQL's shell")?;
    let stdin = shell.stdin.take().context("no stdin")?;
    let stdout = shell.stdout.take().context("no stdout")?;
    let first = BufReader::new(stdout).lines().next().and_then(Result::ok);
    match first.as_deref().and_then(|l| l.strip_prefix("ready")) {
        Some(version) => Ok(Cluster {
            port,
            version: version.trim().to_owned(),
            stdin: Some(stdin),
            shell,
        }),
        None => {
            drop(stdin);
            let out = shell
                .wait_with_output()
                .context("waiting for PostgreSQL's shell")?;
            bail!(
                "PostgreSQL did not start (binaries {}, port {port}): {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }
}

/// The user to run PostgreSQL as: `None` (this one) unless this is root.
fn run_as() -> Result<Option<&'static str>> {
    let uid = Command::new("id").arg("-u").output().context("id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Ok(None);
    }
    for user in ["postgres", "nobody"] {
        let known = Command::new("id")
            .arg("-u")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if known {
            return Ok(Some(user));
        }
    }
    bail!("running as root, and neither a postgres nor a nobody user to run PostgreSQL as")
}

/// The directory holding `initdb`, `pg_ctl` and `createdb`.
fn find_bin() -> Result<PathBuf> {
    let has_tools = |d: &Path| {
        ["initdb", "pg_ctl", "createdb", "postgres"]
            .iter()
            .all(|t| d.join(t).is_file())
    };
    if let Some(d) = std::env::var_os(BIN_ENV) {
        let d = PathBuf::from(d);
        if has_tools(&d) {
            return Ok(d);
        }
        bail!(
            "{BIN_ENV}={}: no initdb, pg_ctl, createdb and postgres there",
            d.display()
        );
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .filter(|(_, d)| has_tools(d))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Ok(d);
    }
    if let Some(d) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| has_tools(d))
    {
        return Ok(d);
    }
    bail!(
        "--database postgres needs a PostgreSQL server to start (initdb, pg_ctl, createdb), \
         and none was found in {BIN_ENV}, /usr/lib/postgresql/*/bin or PATH: install \
         Debian's postgresql (apt-get install postgresql), or point {BIN_ENV} at the \
         directory that holds them"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ignored by default: initdb and the server take seconds of both
    /// cores, enough to upset the timing-sensitive smoke tests running
    /// beside it (`cargo test -p bench -- --ignored` runs it).
    #[test]
    #[ignore = "starts a PostgreSQL cluster; run with --ignored"]
    fn a_cluster_starts_answers_and_goes() -> Result<()> {
        let cluster = Cluster::start()?;
        let url = cluster.url();
        assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
        assert!(url.ends_with("/sessiongate"), "{url}");
        assert!(
            cluster.version.contains("PostgreSQL"),
            "{}",
            cluster.version
        );
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.port));
        std::net::TcpStream::connect(addr).context("connecting to the server")?;
        drop(cluster);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the server still listens after the drop"
        );
        Ok(())
    }
}
