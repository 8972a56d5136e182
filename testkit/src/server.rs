//! `sessiongate serve` in the test's own process, as mini-redis's
//! `tests/server.rs` runs its server: [`Server::bind`] on `127.0.0.1:0` for
//! every listener, [`Server::run`] on a task, and the addresses read from the
//! server itself rather than from its log. It starts in milliseconds where a
//! child process takes a fork, an exec and a wait for its log lines.
//!
//! It builds only on what `serve` offers (`Config`, `Server::bind`, `run`
//! and the listeners' addresses) and talks to the control plane over HTTP,
//! like any client, never through its internals.
//!
//! What needs a process of its own stays with the binary: `kill -9` and
//! restart, log output (the tracing subscriber is global to a process),
//! signals, command-line flags, environment variables, exit codes.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use control_plane::auth;
use control_plane::config::Config;
use control_plane::serve::{ServeError, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::Endpoints;

/// The admin token the servers of both harnesses are given.
pub const TOKEN: &str = "test-admin-token-0123456789";

/// The configuration a test server runs on: every listener on `127.0.0.1:0`,
/// the data in `dir/data`, and `extra` (TOML) merged over that, so that it
/// may add keys to `[gateway]` or `[control_plane]` as well as new tables.
pub fn config_text(dir: &Path, extra: &str) -> String {
    let base = "[gateway]\nhttp_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n\
                [control_plane]\nlisten = \"127.0.0.1:0\"\n";
    let mut config: toml::Table = base.parse().expect("the base configuration is TOML");
    let data_dir = dir.join("data");
    if let Some(cp) = config["control_plane"].as_table_mut() {
        cp.insert("data_dir".into(), data_dir.display().to_string().into());
    }
    let extra: toml::Table = extra
        .parse()
        .unwrap_or_else(|e| panic!("extra configuration is not TOML: {e}\n{extra}"));
    merge(&mut config, extra);
    toml::to_string(&config).expect("a TOML table serializes")
}

/// Merges `extra` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

pub use crate::client::public_session;

/// A running in-process server. Dereferences to its [`Endpoints`]
/// (`sg.gateway`, `sg.api`, `sg.https`, `sg.token`, `sg.api(…)`,
/// `sg.open(…)`). Dropping it signals shutdown, and the drain runs on as a
/// task (until the test's runtime ends); [`InProcess::shutdown`] also waits
/// for it.
pub struct InProcess {
    endpoints: Endpoints,
    /// The working directory; the data lives in `dir/data`.
    pub dir: PathBuf,
    /// Sent or dropped: `run` stops accepting and drains.
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl InProcess {
    /// Starts a server on [`config_text`]`(dir, extra_config)`, with the
    /// admin token [`TOKEN`], on the caller's runtime: the gateway's
    /// connections run there, the API on the thread `serve` gives it.
    /// Panics, with the reason, if it does not start.
    ///
    /// `SESSIONGATE_*` variables do not reach the configuration. The admin
    /// token is the exception `serve` makes: it reads
    /// `SESSIONGATE_ADMIN_TOKEN` from the process, so where that is set it
    /// is the token.
    pub async fn start(dir: &Path, extra_config: &str) -> InProcess {
        let text = config_text(dir, extra_config);
        let config = Config::from_toml(&text, None, std::iter::empty())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let token = match std::env::var(auth::ADMIN_TOKEN_ENV) {
            Ok(t) if !t.is_empty() => t,
            _ => {
                write_token_hash(&config.control_plane.data_dir, TOKEN);
                TOKEN.to_string()
            }
        };
        let server = Server::bind(config, None)
            .await
            .unwrap_or_else(|e| panic!("sessiongate did not start: {e}\n{text}"));
        let endpoints = Endpoints {
            gateway: server.gateway_addr().expect("the gateway's address"),
            api: server.api_addr().expect("the API's address"),
            https: server.https_addr(),
            token,
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(signalled(stopped)));
        InProcess {
            endpoints,
            dir: dir.to_path_buf(),
            stop,
            task,
        }
    }

    /// Signals shutdown (what SIGTERM does to the binary) and waits until
    /// the gateway has drained and the API and the store are closed.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(());
        self.task.await.expect("serve panicked")
    }
}

impl Deref for InProcess {
    type Target = Endpoints;

    fn deref(&self) -> &Endpoints {
        &self.endpoints
    }
}

/// Resolves when `stop` is sent or dropped.
async fn signalled(stop: oneshot::Receiver<()>) {
    let _ = stop.await;
}

/// Writes the hash of `token` where `serve` reads the admin token's hash
/// when the environment gives none (`<data_dir>/admin-token`, the format a
/// restart of the binary reads), so that no process-wide variable has to
/// be set.
pub fn write_token_hash(data_dir: &Path, token: &str) {
    std::fs::create_dir_all(data_dir).unwrap_or_else(|e| panic!("{}: {e}", data_dir.display()));
    let path = data_dir.join("admin-token");
    let line = format!("sha256:{}\n", auth::hash_token(token));
    std::fs::write(&path, line).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{eventually, http, temp_dir, Origin, DEADLINE};

    #[tokio::test]
    async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
        let origin = Origin::named("app");
        let sg = InProcess::start(&temp_dir("testkit-shutdown"), "").await;
        sg.ann_public_session("app", origin.addr.port()).await;

        let gateway = sg.gateway;
        let in_flight =
            tokio::spawn(async move { http(gateway, "app.localhost", "/slow?ms=500", "").await });
        eventually("the request to reach the origin", DEADLINE, || {
            origin.counts().requests == 1
        })
        .await;
        sg.shutdown().await.expect("a clean shutdown");
        assert_eq!(in_flight.await.unwrap(), (200, "app".to_string()));
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(gateway),
        )
        .await
        .expect("an answer to connect");
        assert!(refused.is_err(), "still accepting after shutdown");
    }
}
