//! The tasks that let several `sessiongate control-plane` (or `serve`)
//! processes share one PostgreSQL database (issue 18); the operations they
//! run are in [`crate::control::replicas`].
//!
//! - The change follower: `LISTEN`s on the change log's channel and applies
//!   what other replicas logged as soon as a commit notifies it, and every
//!   second in any case (a notification lost while the listening connection
//!   was down costs at most that second).
//! - The reaper's lock: a session-level advisory lock on a connection of
//!   its own. The replica that holds it runs the reaper and the workshop
//!   pools' refill; the others try every second. When the holder dies its
//!   connection closes and the lock is free.
//!
//! On SQLite there is one replica: neither task runs, and it leads.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener};
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::ControlPlane;
use crate::store::{DatabaseUrl, CHANNEL};

/// How often the log is read without a notification, and the lock tried.
const POLL: Duration = Duration::from_secs(1);

/// The advisory lock whose holder runs the reaper.
const REAPER_LOCK: i64 = 0x5e55_1097_0002;

/// Starts the tasks for `database` (nothing for SQLite).
pub fn spawn(
    cp: Arc<ControlPlane>,
    database: &DatabaseUrl,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let DatabaseUrl::Postgres(url) = database else {
        return Vec::new();
    };
    // Until the lock is taken, another replica may be running the reaper.
    cp.set_leader(false);
    vec![
        tokio::spawn(follow_changes(cp.clone(), url.clone(), stop.clone())),
        tokio::spawn(hold_reaper_lock(cp, url.clone(), stop)),
    ]
}

async fn follow_changes(cp: Arc<ControlPlane>, url: String, mut stop: watch::Receiver<bool>) {
    let mut listener: Option<PgListener> = None;
    // The last time the log was read: after half of its retention without
    // a read, rows this replica needs may be gone, so it reloads everything.
    let mut read_at = std::time::Instant::now();
    let stale = Duration::from_millis(crate::control::reap::CHANGES_KEPT_MS / 2);
    loop {
        if listener.is_none() {
            listener = match PgListener::connect(&url).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %crate::store::redact(&e.to_string()), "change log: LISTEN failed; reading it every second");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %crate::store::redact(&e.to_string()), "change log: no listening connection; reading it every second");
                    None
                }
            };
        }
        // Applied first, then waited: a change committed between the read
        // and the LISTEN is read at the next wake-up.
        let result = if read_at.elapsed() > stale {
            tracing::warn!("change log not read for half its retention: reloading everything");
            cp.resync_all().await.map(|()| 0)
        } else {
            cp.apply_changes().await
        };
        match result {
            Ok(_) => read_at = std::time::Instant::now(),
            Err(e) => {
                tracing::warn!(error = %e, "change log: other replicas' changes not applied yet; retrying")
            }
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.try_recv().await.map(|n| n.is_some()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(POLL) => {}
            r = notified => {
                if !matches!(r, Ok(true)) {
                    // The connection was lost: listen again on a new one.
                    listener = None;
                }
            }
        }
    }
}

async fn hold_reaper_lock(cp: Arc<ControlPlane>, url: String, mut stop: watch::Receiver<bool>) {
    let mut conn: Option<PgConnection> = None;
    loop {
        let held = match conn.as_mut() {
            None => {
                conn = PgConnection::connect(&url).await.ok();
                false
            }
            Some(c) if cp.is_leader() => {
                // Still ours while the connection lives.
                sqlx::query("SELECT 1").execute(&mut *c).await.is_ok()
            }
            Some(c) => sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(REAPER_LOCK)
                .fetch_one(&mut *c)
                .await
                .unwrap_or(false),
        };
        if held != cp.is_leader() {
            cp.set_leader(held);
            if held {
                tracing::info!(replica = %crate::store::replica_id(), "this replica runs the reaper and the workshop refill");
            } else {
                tracing::warn!(
                    "this replica no longer runs the reaper (its lock's connection was lost)"
                );
                conn = None;
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}
