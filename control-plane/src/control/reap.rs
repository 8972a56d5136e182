//! One pass of the lifecycle reaper, under the write lock: the gateway's
//! per-route activity written to the store, then what the rules in
//! [`crate::session::reaper`] find due deleted or expired, finished records
//! purged after the retention, and spent tokens dropped — in one
//! transaction and one table update.

use std::collections::HashMap;

use super::routing::RouteUpdate;
use super::sessions::transition;
use super::ControlPlane;
use crate::error::ControlError;
use crate::session::reaper::{self, ReapReport};
use crate::store;

/// How long change-log rows are kept: a replica that has not read the log
/// for half of it reloads everything (see `replicas`).
pub const CHANGES_KEPT_MS: u64 = 3600 * 1000;

impl ControlPlane {
    /// What a replica that does not run the reaper does at each interval:
    /// writes its gateways' per-route activity to the store (the latest
    /// time wins there), where the reaper's replica reads it.
    pub async fn sync_activity(&self) -> Result<(), ControlError> {
        let mut tx = self.writes.begin().await?;
        let mut synced = self.synced_activity.lock().await;
        let activity = self.moved_activity(&synced);
        if activity.is_empty() {
            return Ok(());
        }
        store::sessions_touch(&mut tx, &activity).await?;
        let _lock = tx.commit().await?;
        for (name, at) in activity {
            synced.insert(name, at);
        }
        Ok(())
    }

    /// Per session route, the last activity the gateways reported (those
    /// in this process read now, remote ones merged as their reports
    /// came), where it moved since it was last written to the store.
    fn moved_activity(&self, synced: &HashMap<String, u64>) -> Vec<(String, u64)> {
        self.gateways.collect_local();
        let table = self.routes.load();
        table
            .routes()
            .iter()
            .filter_map(|r| {
                let name = crate::publish::session_name(&r.id)?;
                let at = r.state.last_activity_ms()?;
                (synced.get(name) != Some(&at)).then(|| (name.to_string(), at))
            })
            .collect()
    }

    /// Whether this replica runs the reaper (see `replicas`).
    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_leader(&self, on: bool) {
        self.leader.store(on, std::sync::atomic::Ordering::Release);
    }

    /// One pass of the lifecycle reaper (see the module docs).
    pub async fn reap(&self) -> Result<ReapReport, ControlError> {
        let now = self.now_ms();
        let mut report = ReapReport::default();
        let mut tx = self.writes.begin().await?;
        let mut synced = self.synced_activity.lock().await;

        // The gateways' per-route activity, written when it moved: remote
        // gateways' reports are merged as they come; the gateway in this
        // process is read now.
        let activity = self.moved_activity(&synced);
        store::sessions_touch(&mut tx, &activity).await?;

        let mut changed = Vec::new();
        for old in store::reap_candidates(&mut tx).await? {
            let Some(reason) = reaper::verdict(&old, now, &self.settings) else {
                continue;
            };
            let action = reason.action();
            let rec = transition(&old, action, None, now)?;
            store::session_update_row(&mut tx, &rec).await?;
            tracing::info!(session = %old.name, action = ?action, reason = reason.as_str(), "reaper");
            report.record(reason, old.name.clone());
            changed.push((old, rec));
        }
        let cutoff = reaper::retention_cutoff(now, &self.settings);
        report.purged = store::sessions_purge_finished(&mut tx, cutoff).await?;
        for name in &report.purged {
            tracing::info!(session = %name, action = "purge", reason = "retention passed", "reaper");
        }
        // The history of sessions purged: kept as long as they would be.
        store::audit_purge(&mut tx, cutoff).await?;
        store::console_links_purge(&mut tx, now).await?;
        // Unused access links and expired API tokens: nothing can use them.
        store::access_tokens_purge(&mut tx, now).await?;
        store::oauth_tokens_purge(&mut tx, now).await?;
        // Change-log rows every replica has long read (see `replicas`).
        store::changes_purge(&mut tx, now.saturating_sub(CHANGES_KEPT_MS)).await?;
        let _lock = tx.commit().await?;

        for (name, at) in activity {
            synced.insert(name, at);
        }
        for (old, _) in &changed {
            synced.remove(&old.name);
        }
        drop(synced);
        let mut update = RouteUpdate::default();
        for (old, rec) in &changed {
            self.add_route_change(Some(old), rec, &mut update)?;
        }
        self.apply_update(update).await?;
        let m = &self.metrics;
        m.count_reaper("delete_unactivated", report.deleted_unactivated.len());
        m.count_reaper("expire", report.expired.len());
        m.count_reaper("expire_idle", report.expired_idle.len());
        m.count_reaper("expire_evicted", report.expired_evicted.len());
        m.count_reaper("purge", report.purged.len());
        Ok(report)
    }
}
