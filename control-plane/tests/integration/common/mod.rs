//! What the integration tests share beyond testkit: the process harness,
//! `sessiongate serve` as a real child process on `127.0.0.1:0` with its log
//! captured line by line, for the tests that need a process of their own (a
//! crash and restart, the log, signals, flags, the environment, exit codes);
//! the browser with a cookie jar ([`jar`]); [`add_user`] for tests that
//! drive a `ControlPlane` directly; and [`store`] and [`on_both_engines`],
//! for tests that run on SQLite and on PostgreSQL. Origins, the raw
//! HTTP/1.1 client, the in-process server and the PostgreSQL cluster are
//! testkit's.
//!
//! Every wait polls with a deadline; nothing sleeps to synchronise. Ports
//! are never fixed: the addresses come from the server's own log lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::server::{config_text, TOKEN};
use testkit::{Endpoints, DEADLINE};

pub mod jar;

/// The server's output, stdout and stderr interleaved, one entry per line.
pub type Log = Arc<Mutex<Vec<String>>>;

/// Adds a user with only a name, for tests that drive a `ControlPlane`
/// directly.
pub async fn add_user(cp: &control_plane::control::ControlPlane, name: &str) {
    cp.create_user(control_plane::session::model::NewUser {
        name: name.into(),
        email: None,
        first_name: None,
        last_name: None,
    })
    .await
    .unwrap();
}

/// A fresh, migrated store on `engine` (SQLite: `dir/sessiongate.db`;
/// PostgreSQL: a new database named after `name` on the test process's
/// cluster), and the URL another connection reaches it at.
pub async fn store(
    engine: control_plane::store::Engine,
    dir: &Path,
    name: &str,
) -> (control_plane::store::Store, String) {
    use control_plane::store::{Engine, Store};
    match engine {
        Engine::Sqlite => {
            let db = dir.join("sessiongate.db");
            let store = Store::open(&db).await.unwrap();
            (store, format!("sqlite://{}", db.display()))
        }
        Engine::Postgres => {
            let url = testkit::postgres::database(name).await;
            (Store::open_postgres(&url).await.unwrap(), url)
        }
    }
}

/// Makes `sqlite::<test>` and `postgres::<test>` of each `async fn
/// <test>(engine: Engine)` named, each group of names after the test
/// attribute they run under:
/// `on_both_engines! { #[tokio::test] a, b; #[tokio::test(flavor = "multi_thread")] c }`.
// `workshop_clients` shares this module and runs on SQLite only.
#[allow(unused_macros)]
macro_rules! on_both_engines {
    ($(#[$test:meta] $($name:ident),+ $(,)?);+ $(;)?) => {
        mod sqlite {
            $($(
                #[$test]
                async fn $name() {
                    super::$name(control_plane::store::Engine::Sqlite).await
                }
            )+)+
        }
        mod postgres {
            $($(
                #[$test]
                async fn $name() {
                    super::$name(control_plane::store::Engine::Postgres).await
                }
            )+)+
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_engines;

/// Starts `sessiongate serve --config <config> <args>` in `dir` and
/// captures its output. The child sees none of the caller's `SESSIONGATE_*`
/// variables, only `env`, so a developer's shell cannot change a test.
/// With `umask`, it runs under that umask (set by `sh`, which then execs it).
fn spawn(
    config: &Path,
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    umask: Option<&str>,
) -> (Child, Log) {
    let bin = env!("CARGO_BIN_EXE_sessiongate");
    let mut cmd = match umask {
        None => Command::new(bin),
        Some(mask) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("umask {mask}; exec \"$0\" \"$@\""))
                .arg(bin);
            sh
        }
    };
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(dir);
    run_logged(cmd, env.iter().map(|(k, v)| (*k, *v)))
}

/// Starts `cmd` with `RUST_LOG=info`, none of the caller's `SESSIONGATE_*`
/// variables but `env`, and its stdout and stderr read line by line into
/// the returned log.
fn run_logged<'a>(
    mut cmd: Command,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (Child, Log) {
    cmd.env("RUST_LOG", "info");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SESSIONGATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::default();
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    (child, log)
}

/// The first log line containing `needle`, waiting for it up to [`DEADLINE`].
pub async fn wait_log(log: &Log, needle: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(l) = log.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        assert!(
            Instant::now() < end,
            "no log line with {needle:?}; log: {:#?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address that follows `marker` in a log line, such as
/// `gateway listening on http://127.0.0.1:41234/`.
pub fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    // Up to the first character that cannot be part of an address: a space
    // in text logs, the closing quote in JSON ones.
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

const GATEWAY_MARKER: &str = "gateway listening on http://";
const HTTPS_MARKER: &str = "gateway listening on https://";
const API_MARKER: &str = "control plane listening on http://";

/// Waits for the gateway's and the API's listening lines (the HTTPS one,
/// when there is a listener, comes before them); fails at once, with the
/// log, if the child exits first.
async fn wait_listening(child: &mut Child, log: &Log, token: &str) -> Endpoints {
    let end = Instant::now() + DEADLINE;
    let mut exited_at = None;
    loop {
        let found = |marker: &str| {
            log.lock()
                .unwrap()
                .iter()
                .find_map(|l| addr_after(l, marker))
        };
        if let (Some(gateway), Some(api)) = (found(GATEWAY_MARKER), found(API_MARKER)) {
            return Endpoints {
                gateway,
                api,
                https: found(HTTPS_MARKER),
                token: token.to_string(),
            };
        }
        if let Some(status) = child.try_wait().unwrap() {
            // The reader threads see the end of the pipes at once; give them
            // a moment to store the last lines, which say why.
            let exited = *exited_at.get_or_insert_with(Instant::now);
            if exited.elapsed() > Duration::from_millis(500) {
                panic!(
                    "sessiongate serve exited with {status} before listening; log: {:#?}",
                    log.lock().unwrap()
                );
            }
        }
        assert!(
            Instant::now() < end,
            "sessiongate serve is not listening after {DEADLINE:?}; log: {:#?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `sessiongate serve` as a child process, killed when dropped. Dereferences
/// to its [`Endpoints`], as testkit's in-process server does, so that helpers
/// taking `&Endpoints` serve both.
pub struct Sessiongate {
    pub child: Child,
    pub log: Log,
    /// Where it listens, and the admin token (empty when the server
    /// generated its own).
    endpoints: Endpoints,
    /// The working directory; the data lives in `dir/data` and survives restarts.
    pub dir: PathBuf,
    /// The configuration file, so that a restart reads the same one.
    pub config: PathBuf,
    /// The environment it was started with, for the same reason.
    env: Vec<(String, String)>,
    /// Arguments after `serve --config <config>`, for the same reason.
    args: Vec<String>,
    /// The umask it runs under, when a test chose one.
    umask: Option<String>,
}

impl Deref for Sessiongate {
    type Target = Endpoints;

    fn deref(&self) -> &Endpoints {
        &self.endpoints
    }
}

impl Drop for Sessiongate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test drops its server while unwinding: what the server
        // said is the first thing to read.
        if std::thread::panicking() {
            if let Ok(log) = self.log.lock() {
                eprintln!("sessiongate log:\n{}", log.join("\n"));
            }
        }
    }
}

impl Sessiongate {
    /// Starts a server in `dir` on testkit's test configuration
    /// ([`config_text`]: every listener on `127.0.0.1:0`, the data in
    /// `dir/data`, `extra_config` merged over it) with the admin token
    /// [`TOKEN`]. `env` is set last and may override the token. Starting
    /// again on the same `dir` is a restart.
    pub async fn start(dir: &Path, extra_config: &str, env: &[(&str, &str)]) -> Sessiongate {
        Sessiongate::start_with_args(dir, extra_config, env, &[]).await
    }

    /// As [`start`](Self::start), with more arguments after
    /// `serve --config <config>` (flags such as `--log-format json`).
    pub async fn start_with_args(
        dir: &Path,
        extra_config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Sessiongate {
        let path = dir.join("sessiongate.toml");
        std::fs::write(&path, config_text(dir, extra_config)).unwrap();
        let mut all_env = vec![("SESSIONGATE_ADMIN_TOKEN", TOKEN)];
        all_env.extend_from_slice(env);
        Sessiongate::launch(dir, &path, &all_env, args, None).await
    }

    /// Starts a server on testkit's test configuration and `extra_config`,
    /// under `umask` (such as `"000"`), with `env` as its whole
    /// `SESSIONGATE_*` environment.
    pub async fn start_with_umask(
        dir: &Path,
        extra_config: &str,
        env: &[(&str, &str)],
        umask: &str,
    ) -> Sessiongate {
        let path = dir.join("sessiongate.toml");
        std::fs::write(&path, config_text(dir, extra_config)).unwrap();
        Sessiongate::launch(dir, &path, env, &[], Some(umask)).await
    }

    /// Starts a server on a configuration file written by the caller, which
    /// must listen on port 0 and log its addresses. `env` is the whole
    /// `SESSIONGATE_*` environment: without `SESSIONGATE_ADMIN_TOKEN` the
    /// server generates a token and `token` is empty.
    pub async fn start_with_config(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Sessiongate {
        Sessiongate::launch(dir, config, env, &[], None).await
    }

    async fn launch(
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
        args: &[&str],
        umask: Option<&str>,
    ) -> Sessiongate {
        let (mut child, log) = spawn(config, dir, env, args, umask);
        let token = env
            .iter()
            .rev()
            .find(|(k, _)| *k == "SESSIONGATE_ADMIN_TOKEN")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        let endpoints = wait_listening(&mut child, &log, &token).await;
        Sessiongate {
            child,
            log,
            endpoints,
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
            umask: umask.map(str::to_string),
        }
    }

    /// SIGKILL, as in a crash: no shutdown code runs. Waits for the exit.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the server again on the same directory, configuration and
    /// environment (after [`kill9`](Self::kill9), or killing it first). The
    /// listeners are on new ports; the endpoints are updated.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (mut child, log) = spawn(&self.config, &self.dir, &env, &args, self.umask.as_deref());
        self.endpoints = wait_listening(&mut child, &log, &self.endpoints.token).await;
        self.child = child;
        self.log = log;
    }
}

/// Starts `sessiongate <args>` in `dir` and captures its output, as
/// [`spawn`] does for `serve`, for the subcommands that run a part of
/// sessiongate on its own (`control-plane`, `gateway`). The child sees
/// none of the caller's `SESSIONGATE_*` variables, only `env`.
fn spawn_sessiongate(args: &[String], dir: &Path, env: &[(String, String)]) -> (Child, Log) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiongate"));
    cmd.args(args).current_dir(dir);
    run_logged(cmd, env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// A `sessiongate` child process of any subcommand, for the tests that run
/// several of them side by side (a control plane and its gateways): its log,
/// a restart on the same arguments and environment, and SIGKILL when
/// dropped. Unlike [`Sessiongate`], which knows `serve`'s two listening
/// lines, it waits for no particular line: the caller names the address
/// lines it needs ([`Process::addr`]), since each subcommand has its own.
pub struct Process {
    /// What the log dump of a failing test calls it (`gateway gw1`), as
    /// several logs are dumped one after the other.
    pub name: String,
    pub child: Child,
    pub log: Log,
    /// The working directory, the arguments after `sessiongate` and the
    /// whole `SESSIONGATE_*` environment, kept for [`Process::respawn`].
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(log) = self.log.lock() {
                eprintln!("{} log:\n{}", self.name, log.join("\n"));
            }
        }
    }
}

impl Process {
    /// Starts `sessiongate <args>` in `dir` with `env` as its whole
    /// `SESSIONGATE_*` environment; `name` labels its log.
    pub fn spawn(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, log) = spawn_sessiongate(&args, dir, &env);
        Process {
            name: name.to_string(),
            child,
            log,
            dir: dir.to_path_buf(),
            args,
            env,
        }
    }

    /// The address after `marker` in the log so far, if a line has it.
    pub fn find_addr(&self, marker: &str) -> Option<SocketAddr> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| addr_after(l, marker))
    }

    /// The address after `marker` (such as `gateway listening on
    /// http://`), waiting for its log line up to [`DEADLINE`]; fails at
    /// once, with the log, if the process exits first.
    pub async fn addr(&mut self, marker: &str) -> SocketAddr {
        let end = Instant::now() + DEADLINE;
        let mut exited_at = None;
        loop {
            if let Some(addr) = self.find_addr(marker) {
                return addr;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // As in `wait_listening`: the last lines say why.
                let exited = *exited_at.get_or_insert_with(Instant::now);
                if exited.elapsed() > Duration::from_millis(500) {
                    panic!(
                        "{} exited with {status} before logging {marker:?}; log: {:#?}",
                        self.name,
                        self.log.lock().unwrap()
                    );
                }
            }
            assert!(
                Instant::now() < end,
                "{} logged no {marker:?} within {DEADLINE:?}; log: {:#?}",
                self.name,
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its exit status once it has exited, waiting up to `limit` (zero:
    /// only a look); `None` if it is still running.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as in a crash: no shutdown code runs. Waits for the exit.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }

    /// Starts it again (killing it first if it still runs) in the same
    /// directory, with the same arguments and environment, and a new log:
    /// the caller reads the new addresses with [`Process::addr`].
    pub fn respawn(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, log) = spawn_sessiongate(&self.args, &self.dir, &self.env);
        self.child = child;
        self.log = log;
    }
}
