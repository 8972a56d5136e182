//! A real PostgreSQL for tests: one cluster per test process, started on
//! first use in a temp dir on a loopback port, and a fresh database for each
//! test ([`database`]).
//!
//! The cluster is Debian's `postgresql` (any version with `initdb` and
//! `pg_ctl`): found in `SESSIONGATE_TEST_POSTGRES_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`. Without one, [`database`]
//! panics saying so: a PostgreSQL test fails, never skips.
//!
//! `initdb` and the server refuse to run as root, and CI runs as root: there
//! they run as the `postgres` user (made by the package) or else `nobody`,
//! through `runuser`, in a directory that user creates with `mktemp`.
//!
//! # No server outlives its tests
//! A static's `Drop` never runs at process exit, so the cluster cannot be
//! stopped from here. Instead a small shell, started here with its stdin on
//! a pipe, starts the server (`pg_ctl start -w`, which returns once it
//! accepts connections, then the shell says `ready`), and then reads its
//! stdin until end of file. The write end of that pipe is held in a static
//! for the life of this process, and the kernel closes it when the process
//! ends, however it ends: normally, on a panic, on `SIGKILL` from a timeout.
//! The shell then stops the server (`pg_ctl stop -m immediate`) and removes
//! its directory. It ignores SIGINT, SIGTERM and SIGHUP, so that a Ctrl-C,
//! which reaches every process of the terminal's group, cannot stop it
//! before it has cleaned up (the server itself shuts down on SIGINT).
//!
//! The server runs with `fsync = off` (nothing here must survive a crash of
//! the machine); the store still asks for synchronous commits, as it does
//! in production.
//!
//! Databases are created with the ICU locale `en-US` where the server has
//! ICU (Debian's does), the collation a production database typically has,
//! so that the tests catch SQL that relies on byte order.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use sqlx::Connection;

/// Where to look for `initdb` and `pg_ctl` first.
pub const BIN_ENV: &str = "SESSIONGATE_TEST_POSTGRES_BIN";

/// The superuser `initdb` makes; trusted on loopback, so no password.
const SUPERUSER: &str = "postgres";

/// A password in every URL handed out: the server does not ask for it
/// (trust), so it is there only for tests that check it is never shown.
pub const PASSWORD: &str = "sg-test-secret";

/// The running cluster of this process.
struct Cluster {
    port: u16,
    /// Its directory (the data in `data/`), the binaries and the user it
    /// runs as: for [`restart`].
    dir: PathBuf,
    bin: PathBuf,
    user: Option<String>,
    /// Until a database could not be made with ICU: databases get an en-US
    /// collation.
    icu: AtomicBool,
    /// Held, never written: its end of file tells the shell to stop the
    /// server (see the module doc).
    _stdin: Mutex<ChildStdin>,
    _shell: Mutex<Child>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// A fresh, empty database on this process's cluster (started on first
/// use), named after `name` and unique in the process: its URL,
/// `postgres://postgres:<PASSWORD>@127.0.0.1:<port>/t_<n>_<name>`.
/// Panics, saying why, when there is no PostgreSQL to start.
pub async fn database(name: &str) -> String {
    let cluster = match CLUSTER.get_or_init(start_cluster) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let db = format!("t_{n}_{clean}");
    let admin = url(cluster.port, "postgres");
    let mut c = sqlx::postgres::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test cluster: {e}"));
    let mut created = Err(String::new());
    if cluster.icu.load(Ordering::Relaxed) {
        created = sqlx::query(&format!(
            "CREATE DATABASE {db} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        ))
        .execute(&mut c)
        .await
        .map_err(|e| e.to_string());
        if created.is_err() {
            // Built without ICU (or an older server): the cluster's locale.
            cluster.icu.store(false, Ordering::Relaxed);
        }
    }
    if created.is_err() {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {db}: {e}"));
    }
    let _ = c.close().await;
    url(cluster.port, &db)
}

/// Stops this process's cluster (fast: open connections are ended), keeps
/// it down for `down`, and starts it again on the same port and data:
/// PostgreSQL restarting, for the tests of what a server does meanwhile.
/// Blocking; call it from `spawn_blocking`. Panics if the cluster cannot
/// be stopped or started (with its log).
pub fn restart(down: std::time::Duration) {
    let cluster = match CLUSTER.get() {
        Some(Ok(c)) => c,
        _ => panic!("no PostgreSQL cluster in this process to restart"),
    };
    let pg_ctl = |args: &[String]| {
        let mut cmd = match &cluster.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(cluster.bin.join("pg_ctl"));
                c
            }
            None => Command::new(cluster.bin.join("pg_ctl")),
        };
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("pg_ctl: {e}"));
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let data = cluster.dir.join("data").display().to_string();
    pg_ctl(&[
        "-D".into(),
        data.clone(),
        "-m".into(),
        "fast".into(),
        "-w".into(),
        "stop".into(),
    ]);
    std::thread::sleep(down);
    pg_ctl(&[
        "-D".into(),
        data,
        "-l".into(),
        cluster.dir.join("server.log").display().to_string(),
        "-w".into(),
        "-t".into(),
        "60".into(),
        "-o".into(),
        format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            cluster.dir.display(),
            cluster.port
        ),
        "start".into(),
    ]);
}

fn url(port: u16, db: &str) -> String {
    format!("postgres://{SUPERUSER}:{PASSWORD}@127.0.0.1:{port}/{db}")
}

/// The shell that runs the cluster: `$1` the binaries, `$2` the port.
/// Prints `ready` on stdout once the server accepts connections, or exits
/// with initdb's or the server's log on stderr.
const SCRIPT: &str = r#"
trap '' INT TERM HUP
bin=$1 port=$2
dir=$(mktemp -d "${TMPDIR:-/tmp}/sg-postgres-XXXXXX") || exit 1
cleanup() { "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1; rm -rf "$dir"; }
if ! "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 --no-locale \
     >"$dir/initdb.log" 2>&1; then
  cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1
fi
if ! "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
     -o "-k $dir -p $port -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" \
     start >/dev/null 2>&1; then
  cat "$dir/server.log" >&2; cleanup; exit 1
fi
echo "ready $dir"
# From here on the test process may be gone, and the pipes' read ends with
# it: nothing more to say on them.
exec >/dev/null 2>&1
cat >/dev/null
cleanup
"#;

fn start_cluster() -> Result<Cluster, String> {
    let bin = find_bin()?;
    let mut last = String::new();
    // The port is free when picked and taken by the server a moment later;
    // another process may take it in between, so try a few.
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("picking a port for PostgreSQL: {e}"))?
            .port();
        match start_on(&bin, port) {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn start_on(bin: &Path, port: u16) -> Result<Cluster, String> {
    let mut cmd = match run_as()? {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--", "sh"]);
            c
        }
        None => Command::new("sh"),
    };
    cmd.args(["-c", SCRIPT, "sh"])
        .arg(bin)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut shell = cmd
        .spawn()
        .map_err(|e| format!("starting PostgreSQL's shell: {e}"))?;
    let stdin = shell.stdin.take().ok_or("no stdin")?;
    let stdout = shell.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.next().and_then(Result::ok);
    let Some(dir) = ready.as_deref().and_then(|r| r.strip_prefix("ready ")) else {
        drop(stdin);
        let out = shell
            .wait_with_output()
            .map_err(|e| format!("waiting for PostgreSQL's shell: {e}"))?;
        return Err(format!(
            "PostgreSQL did not start (binaries {}, port {port}): {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    };
    Ok(Cluster {
        port,
        dir: PathBuf::from(dir),
        bin: bin.to_path_buf(),
        user: run_as()?,
        icu: AtomicBool::new(true),
        _stdin: Mutex::new(stdin),
        _shell: Mutex::new(shell),
    })
}

/// The user to run PostgreSQL as: `None` (this one) unless this is root.
fn run_as() -> Result<Option<String>, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("id -u: {e}"))?;
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
            return Ok(Some(user.to_string()));
        }
    }
    Err("running as root, and neither a postgres nor a nobody user to run PostgreSQL as".into())
}

/// The directory holding `initdb` and `pg_ctl`.
fn find_bin() -> Result<PathBuf, String> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os(BIN_ENV) {
        let d = PathBuf::from(d);
        return if has_tools(&d) {
            Ok(d)
        } else {
            Err(format!(
                "{BIN_ENV}={}: no initdb and pg_ctl there",
                d.display()
            ))
        };
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
    Err(format!(
        "the PostgreSQL tests need a PostgreSQL server to start (initdb and pg_ctl), \
         and none was found in {BIN_ENV}, /usr/lib/postgresql/*/bin or PATH: \
         install Debian's postgresql (apt-get install postgresql), or point {BIN_ENV} \
         at the directory that holds initdb and pg_ctl"
    ))
}
