//! Several control-plane replicas on one database (issue 18): what one
//! replica learns of the others' writes, and which of them runs the reaper.
//!
//! Every write logs what it changed in the `changes` table, in the same
//! transaction ([`store::log_change`]). Each replica reads the rows after
//! the last one it applied (woken by PostgreSQL's `NOTIFY` at once, and
//! every second in any case, so a missed notification only delays), skips
//! its own (applied when they were made), and re-reads what the others'
//! name: a session's record becomes its route as it is stored now, a
//! group's members its cache entry (and the routes of the sessions shared
//! with it), the tokens and keys their sets. Re-reading makes a row applied
//! twice harmless, and sequence order is commit order (the writers' advisory
//! lock), so none is skipped. It runs under the write lock, so a local
//! write and an applied one never publish out of order.
//!
//! The reaper (and the workshop pools' refill, which runs in its pass) runs
//! on one replica at a time: the one holding a session-level advisory lock
//! on a connection of its own. If that replica dies, its connection closes,
//! the lock is free, and the next replica to try (every second) takes it.
//! The others write their gateways' activity to the store instead, where
//! the leader's pass reads it (the latest time wins).
//!
//! Gateways moving between replicas: each replica numbers its table's
//! versions its own way, but every message it sends carries the change
//! log's *watermark*, the sequence number up to which every row is in that
//! table. A gateway that moves to another replica sends the version and
//! watermark it holds; the replica answers with one delta made for it
//! ([`ControlPlane::switch_delta`]): the routes the log names after that
//! watermark, as they are in its own table, instead of a snapshot of
//! everything. The watermark is raised only after a barrier (the write
//! lock taken once, then an empty submission through the publisher's
//! queue) shows that this replica's own rows up to it are in the table
//! too; at most every [`WATERMARK_EVERY`] when only own rows came, so
//! that a busy writer does not pay a barrier per commit.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gateway::RouteChange;

use super::routing::RouteUpdate;
use super::ControlPlane;
use crate::access as acc;
use crate::auth::{TokenKind, TokenSet};
use crate::error::ControlError;
use crate::publish::{route_id, route_spec};
use crate::session::lifecycle::SessionState;
use crate::store::{self, ChangeKind};

/// Rows read in one go.
const BATCH: i64 = 10_000;

/// How often the watermark is raised when only this replica's own rows came
/// (each raise costs a barrier on the write lock).
const WATERMARK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The most rows a gateway moving here may have missed and still get a
/// delta rather than a snapshot.
const SWITCH_ROWS: i64 = 50_000;

/// Where the gateways' watermark stands (under [`ControlPlane`]'s
/// `change_reader` lock).
#[derive(Debug, Default)]
pub struct Watermark {
    /// Rows up to here are applied (others') or committed (own), not yet
    /// known to be in the table.
    pending: i64,
    /// When the last barrier ran.
    raised_at: Option<std::time::Instant>,
}

/// What [`ControlPlane::reload`] re-reads: `None` is everything of a kind.
struct Reload {
    sessions: Option<BTreeSet<String>>,
    groups: Option<BTreeSet<String>>,
    tokens: bool,
    keys: bool,
}

impl ControlPlane {
    /// The last change-log row this replica has applied.
    pub fn applied_change(&self) -> i64 {
        self.applied_change.load(Ordering::Acquire)
    }

    /// Applies what other replicas logged since the last row applied;
    /// returns how many of their rows it applied.
    pub async fn apply_changes(&self) -> Result<usize, ControlError> {
        let mut mark = self.change_reader.lock().await;
        let applied = self.apply_changes_locked().await?;
        self.raise_watermark(&mut mark, applied > 0).await?;
        Ok(applied)
    }

    /// Raises the gateways' watermark to every row read so far, once a
    /// barrier shows the table holds them: at once when `now`, else at
    /// most every [`WATERMARK_EVERY`].
    async fn raise_watermark(&self, mark: &mut Watermark, now: bool) -> Result<(), ControlError> {
        mark.pending = mark.pending.max(self.applied_change());
        let target = mark.pending.max(0) as u64;
        if target <= self.gateways.watermark() {
            return Ok(());
        }
        if !now
            && mark
                .raised_at
                .is_some_and(|t| t.elapsed() < WATERMARK_EVERY)
        {
            return Ok(());
        }
        // Own rows up to `pending` are committed; their commits queued
        // their changes to the publisher under the write lock, so once the
        // lock has been taken after them, an empty submission answers after
        // those changes are in the table.
        self.writes.flush().await;
        self.publisher
            .submit(Vec::new())
            .await
            .map_err(|e| ControlError::Publish(e.to_string()))?;
        self.gateways.set_watermark(target);
        mark.raised_at = Some(std::time::Instant::now());
        Ok(())
    }

    async fn apply_changes_locked(&self) -> Result<usize, ControlError> {
        let from = self.applied_change();
        let rows = {
            let mut c = self.store.conn().await?;
            store::changes_after(&mut c, from, BATCH).await?
        };
        let Some(last) = rows.last().map(|r| r.seq) else {
            return Ok(0);
        };
        let me = store::replica_id();
        let mut sessions = BTreeSet::new();
        let mut groups = BTreeSet::new();
        let (mut all_groups, mut tokens, mut keys) = (false, false, false);
        let mut applied = 0;
        for r in rows.iter().filter(|r| r.origin != me) {
            applied += 1;
            match ChangeKind::parse(&r.kind) {
                Some(ChangeKind::Session) => {
                    sessions.insert(r.name.clone());
                }
                Some(ChangeKind::Group) => {
                    groups.insert(r.name.clone());
                }
                Some(ChangeKind::User) => all_groups = true,
                Some(ChangeKind::Tokens) => tokens = true,
                Some(ChangeKind::Keys) => keys = true,
                None => {
                    tracing::warn!(kind = %r.kind, seq = r.seq, "change of an unknown kind (a newer replica?)")
                }
            }
        }
        if applied == 0 {
            self.applied_change.store(last, Ordering::Release);
            return Ok(0);
        }
        self.reload(Reload {
            sessions: Some(sessions),
            groups: if all_groups { None } else { Some(groups) },
            tokens,
            keys,
        })
        .await?;
        self.applied_change.store(last, Ordering::Release);
        tracing::debug!(
            from,
            to = last,
            applied,
            "changes of other replicas applied"
        );
        Ok(applied)
    }

    /// Everything again, from the store: what a replica that could not read
    /// the change log for longer than it is kept does (rows it missed may
    /// have been purged). Every session's route, every group, the tokens
    /// and the keys.
    pub async fn resync_all(&self) -> Result<(), ControlError> {
        let mut mark = self.change_reader.lock().await;
        let last = {
            let mut c = self.store.conn().await?;
            store::last_change(&mut c).await?
        };
        self.reload(Reload {
            sessions: None,
            groups: None,
            tokens: true,
            keys: true,
        })
        .await?;
        self.applied_change.store(last, Ordering::Release);
        self.raise_watermark(&mut mark, true).await?;
        tracing::info!(to = last, "reloaded everything from the store");
        Ok(())
    }

    /// The delta that moves a gateway which followed another replica here
    /// (see the module's notes), or `None` when it needs a snapshot: it
    /// holds no watermark, this is not a replica on PostgreSQL, this
    /// replica cannot catch up to its watermark, the log no longer holds
    /// every row after it, or it missed too many. Returns the frame and the
    /// version it brings the gateway to.
    pub async fn switch_delta(&self, held: u64, watermark: u64) -> Option<(bytes::Bytes, u64)> {
        if watermark == 0 || self.store.engine() != store::Engine::Postgres {
            return None;
        }
        let seq = i64::try_from(watermark).ok()?;
        // Caught up first: the gateway may have seen rows (through the
        // replica it left) that this one has not read yet, and would
        // otherwise be sent, for a moment, an older state of their routes.
        {
            let mut mark = self.change_reader.lock().await;
            let caught_up = async {
                self.apply_changes_locked().await?;
                self.raise_watermark(&mut mark, true).await
            };
            if let Err(e) = caught_up.await {
                tracing::warn!(error = %e, "a gateway moving here gets a snapshot: this replica could not catch up");
                return None;
            }
        }
        if self.gateways.watermark() < watermark {
            return None;
        }
        let rows = async {
            let mut c = self.store.conn().await?;
            if !store::changes_hold(&mut c, seq).await? {
                return Ok::<_, ControlError>(None);
            }
            Ok(Some(store::changes_after(&mut c, seq, SWITCH_ROWS).await?))
        };
        let rows = match rows.await {
            Ok(Some(rows)) if (rows.len() as i64) < SWITCH_ROWS => rows,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "a gateway moving here gets a snapshot: the change log could not be read");
                return None;
            }
        };
        let mut ids = Vec::new();
        let mut with_groups = false;
        for r in &rows {
            match ChangeKind::parse(&r.kind) {
                Some(ChangeKind::Session) => ids.push(route_id(&r.name)),
                Some(ChangeKind::Group | ChangeKind::User) => with_groups = true,
                // Not in the route table (tokens), or always sent (keys).
                Some(ChangeKind::Tokens | ChangeKind::Keys) => {}
                None => return None,
            }
        }
        Some(self.gateways.switch(held, &ids, with_groups))
    }

    /// Re-reads what `what` names and applies it.
    async fn reload(&self, what: Reload) -> Result<(), ControlError> {
        let Reload {
            sessions,
            groups,
            tokens,
            keys,
        } = what;
        let all_groups = groups.is_none();
        let groups = groups.unwrap_or_default();
        // Read and publish under the write lock: a local write either came
        // before (and its newer state is what this reads) or comes after.
        let mut tx = self.writes.begin().await?;
        if tokens {
            let mut set = TokenSet::new(self.admin_token_hash.clone());
            for t in store::tokens_list(&mut tx).await? {
                if let Some(kind) = TokenKind::parse(&t.kind) {
                    set.add_named(t.hash, kind, &t.name);
                }
            }
            self.tokens.store(Arc::new(set));
        }
        let ring = if keys {
            let rows = store::signing_keys(&mut tx).await?;
            Some(Arc::new(acc::key_ring(&rows, self.access.key_grace)?))
        } else {
            None
        };
        let mut group_updates = Vec::new();
        if all_groups {
            let now = store::group_members(&mut tx, None).await?;
            let known: Vec<String> = store::groups_list(&mut tx)
                .await?
                .into_iter()
                .map(|(g, _)| g)
                .collect();
            for g in &known {
                group_updates.push((g.clone(), Some(now.get(g).cloned().unwrap_or_default())));
            }
            for g in self.group_cache().keys() {
                if !known.contains(g) {
                    group_updates.push((g.clone(), None));
                }
            }
        } else {
            for g in &groups {
                let exists = store::group_created(&mut tx, g).await?.is_some();
                let members = store::group_members(&mut tx, Some(g))
                    .await?
                    .remove(g)
                    .unwrap_or_default();
                group_updates.push((g.clone(), exists.then_some(members)));
            }
        }
        let changed_groups: Vec<String> = group_updates.iter().map(|(g, _)| g.clone()).collect();
        let shared = super::directory::sessions_shared(&mut tx, &changed_groups).await?;
        let records: Vec<(String, Option<crate::session::model::SessionRecord>)> = match &sessions {
            Some(names) => {
                let mut out = Vec::with_capacity(names.len());
                for name in names {
                    out.push((name.clone(), store::session_get(&mut tx, name).await?));
                }
                out
            }
            None => {
                let live = store::sessions_in_states(&mut tx, &SessionState::LIVE).await?;
                let mut out: Vec<_> = live
                    .into_iter()
                    .map(|r| (r.name.clone(), Some(r)))
                    .collect();
                let known: BTreeSet<String> = out.iter().map(|(n, _)| n.clone()).collect();
                // Routes of sessions no longer live, to remove.
                for r in self.routes.current().routes().iter() {
                    if let Some(name) = crate::publish::session_name(&r.id) {
                        if !known.contains(name) {
                            out.push((name.to_string(), None));
                        }
                    }
                }
                out
            }
        };
        let _lock = tx.commit().await?;

        if let Some(ring) = ring {
            self.keys.store_shared(Arc::clone(&ring));
            self.gateways().rotate_keys(ring);
        }
        if !group_updates.is_empty() {
            self.groups_changed(group_updates, shared).await?;
        }
        let table = self.routes.current();
        let cache = self.group_cache();
        let mut changes = Vec::new();
        for (name, rec) in &records {
            match rec.as_ref().map(|r| route_spec(r, &cache)).transpose()? {
                Some(Some(spec)) => changes.push(RouteChange::Upsert(spec)),
                _ => {
                    let id = route_id(name);
                    if table.route(&id).is_some() {
                        changes.push(RouteChange::Remove(id));
                    }
                }
            }
        }
        drop(table);
        if !changes.is_empty() {
            self.apply_update(RouteUpdate { changes }).await?;
        }
        Ok(())
    }
}
