//! Reloading static routes without a restart: on SIGHUP, and when the
//! configuration file's contents change (checked every second). A file that
//! does not parse or validate is logged with the reason, and the current table
//! keeps serving.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use std::collections::HashSet;
use std::sync::Arc;

use gateway::{RouteChange, RouteHandle, RouteSpec};

use crate::config::{sha256, Config, ConfigError};

/// How often the file is compared with what was last loaded.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Called with the static routes after a successful reload.
pub type StaticRoutesHook = Arc<dyn Fn(&[RouteSpec]) + Send + Sync>;

pub struct Reloader {
    path: Option<PathBuf>,
    /// The configuration currently applied.
    current: Config,
    /// The SHA-256 of the file's bytes when last read, so that an unchanged
    /// file is not re-parsed and a bad file is reported once, not every
    /// second. A digest, not the text: a file of many routes is megabytes.
    last_digest: Option<[u8; 32]>,
    routes: RouteHandle,
    /// Told the static routes after each successful reload (the control plane
    /// keeps sessions off their slugs and hosts).
    on_routes: Option<StaticRoutesHook>,
}

impl Reloader {
    pub fn new(path: Option<PathBuf>, current: Config, routes: RouteHandle) -> Self {
        // The digest of the text `current` was loaded from: an unchanged file
        // is not parsed again, while an edit saved between start-up's read
        // and now differs from it and is applied.
        Reloader {
            path,
            last_digest: current.source.0,
            current,
            routes,
            on_routes: None,
        }
    }

    /// Calls `f` with the static routes after every successful reload.
    pub fn on_static_routes(mut self, f: StaticRoutesHook) -> Self {
        self.on_routes = Some(f);
        self
    }

    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload on file change only");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading configuration");
                    self.reload(true);
                }
                _ = tick.tick() => self.reload(false),
            }
        }
    }

    /// Re-reads the file; `forced` reloads even when its bytes did not change.
    fn reload(&mut self, forced: bool) {
        let Some(path) = self.path.clone() else {
            if forced {
                tracing::info!("no configuration file; nothing to reload");
            }
            return;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                if forced {
                    tracing::error!(path = %path.display(), error = %e, "reload failed; keeping the current routes");
                }
                return;
            }
        };
        let digest = sha256(&text);
        if !forced && self.last_digest == Some(digest) {
            return;
        }
        self.last_digest = Some(digest);
        let applied = self.apply(&text, &path);
        drop(text);
        // Parsing and compiling a large file is transient; give it back.
        crate::memory::release_freed();
        match applied {
            Ok(Some(version)) => {
                tracing::info!(version, path = %path.display(), "configuration reloaded")
            }
            Ok(None) => tracing::debug!("configuration unchanged"),
            Err(e) => tracing::error!(
                error = %e,
                "invalid configuration; keeping the current routes (version {})",
                self.routes.load().version()
            ),
        }
    }

    fn apply(&mut self, text: &str, path: &std::path::Path) -> Result<Option<u64>, ConfigError> {
        let mut next = Config::from_toml(text, Some(path), std::env::vars())?;
        if next.console.upstream.trim().is_empty() {
            // Resolved at start to the control-plane listener as bound.
            next.console.upstream = self.current.console.upstream.clone();
        }
        if next == self.current {
            return Ok(None);
        }
        let mut restart_only = next.clone();
        restart_only.routes = self.current.routes.clone();
        restart_only.gateway.base_domains = self.current.gateway.base_domains.clone();
        restart_only.gateway.portal_host = self.current.gateway.portal_host.clone();
        if restart_only != self.current {
            tracing::warn!(
                "listener, limit or timeout settings changed; they take effect on restart \
                 (routes, base_domains and portal_host are applied now)"
            );
        }
        // Only the static routes change: sessions' routes stay in the table.
        let specs = next.route_specs()?;
        let new_ids: HashSet<&str> = specs.iter().map(|s| &*s.id).collect();
        let mut changes: Vec<RouteChange> = self
            .current
            .route_specs()?
            .into_iter()
            .filter(|old| !new_ids.contains(&*old.id))
            .map(|old| RouteChange::Remove(old.id))
            .collect();
        changes.extend(specs.iter().cloned().map(RouteChange::Upsert));
        let table = self
            .routes
            .apply(Some(&next.table_settings()), changes)
            .map_err(|e| ConfigError::Invalid {
                key: "routes".into(),
                message: e.to_string(),
            })?;
        if let Some(f) = &self.on_routes {
            f(&specs);
        }
        // Only what was applied becomes current, so a later restart-only change
        // is still noticed.
        self.current.routes = next.routes;
        self.current.gateway.base_domains = next.gateway.base_domains;
        self.current.gateway.portal_host = next.gateway.portal_host;
        Ok(Some(table.version()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[gateway]\nbase_domains = [\"example.test\"]\n\n[[routes]]\nhost = \"a.example.test\"\nupstream = \"http://127.0.0.1:9\"\n";

    /// Start-up read the file once: the reloader starts from that text's
    /// digest, so an unchanged file is not parsed a second time (with many
    /// routes, a second copy of all of them for a moment), and an edit saved
    /// since start-up still differs from it.
    #[test]
    fn the_reloader_starts_from_the_digest_of_the_text_start_up_loaded() {
        let dir = std::env::temp_dir().join(format!("sg-reload-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, FILE).unwrap();
        let config = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(config.source.0, Some(sha256(FILE)));
        let reloader = Reloader::new(Some(path.clone()), config, RouteHandle::new());
        assert_eq!(reloader.last_digest, Some(sha256(FILE)));

        // Comments and spacing are not what a configuration says.
        let commented =
            Config::from_toml(&format!("# edited\n{FILE}"), Some(&path), Vec::new()).unwrap();
        assert_ne!(commented.source.0, Some(sha256(FILE)));
        assert!(commented == reloader.current);
        // The embedded defaults have no file.
        assert_eq!(Config::load(None, Vec::new()).unwrap().source.0, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
