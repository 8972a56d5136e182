//! Sessions: create, read, change, share, lifecycle actions and bulk
//! actions.
//!
//! The frequent writes (create, patch, a lifecycle action) are joined
//! writes: they share a commit with the writes queued behind them (see
//! [`crate::writes`]). Each computes its route change under the lock, from
//! the record it saw, and is answered once the commit covers it and the
//! table shows it.

use std::collections::{HashMap, HashSet};

use super::origins::check_portal_slug;
use super::routing::{assign_workspace_port, check_unique_keys, RouteUpdate};
use super::{sorted_unique, unknown, ControlPlane};
use crate::access as acc;
use crate::error::ControlError;
use crate::session::lifecycle::{self, Action, Refusal, SessionState};
use crate::session::model::{self, invalid, NewSession, SessionKind, SessionPatch, SessionRecord};
use crate::store::{self, SessionFilter};

/// One name's outcome in a bulk action.
#[derive(Debug)]
pub struct BulkOutcome {
    pub name: String,
    /// The session's state afterwards (absent if there is no such session).
    pub state: Option<SessionState>,
    /// Why it was not applied; `None`: applied.
    pub refused: Option<BulkRefusal>,
}

/// Why a bulk action was not applied to a name.
#[derive(Debug)]
pub enum BulkRefusal {
    /// The name is listed more than once; the first one counts.
    Duplicate,
    /// Refused as the single action would have been.
    Refused(ControlError),
}

/// The most items one [`ControlPlane::patch_sessions`] takes.
pub const MAX_PATCH_BATCH: usize = 10_000;

/// Why a batch of patches changed nothing.
#[derive(Debug)]
pub enum PatchBatchError {
    /// More items than [`MAX_PATCH_BATCH`].
    TooMany(usize),
    /// The same session twice, at these places.
    Duplicate {
        name: String,
        first: usize,
        again: usize,
    },
    /// These sessions (place, name) do not exist.
    Missing(Vec<(usize, String)>),
    /// The item at `index` was refused, as a single patch would have been.
    Item {
        index: usize,
        name: String,
        error: ControlError,
    },
    /// The server's own failure (the store, the route table).
    Failed(ControlError),
}

impl From<ControlError> for PatchBatchError {
    fn from(e: ControlError) -> Self {
        PatchBatchError::Failed(e)
    }
}

/// A session write that is committed, waiting for the table.
struct Changed {
    /// The state the write saw.
    old_state: SessionState,
    rec: SessionRecord,
    queued: Option<gateway::Queued>,
}

impl Changed {
    /// Waits until the table (and so every gateway in this process) shows
    /// the change, which closes the connections it ends.
    async fn finish(self, cp: &ControlPlane) -> Result<SessionRecord, ControlError> {
        cp.await_applied(self.queued).await?;
        Ok(self.rec)
    }
}

/// The record after `action`, or why not, as the API reports it.
pub(crate) fn transition(
    old: &SessionRecord,
    action: Action,
    extend_secs: Option<u64>,
    now_ms: u64,
) -> Result<SessionRecord, ControlError> {
    lifecycle::transition(old, action, extend_secs, now_ms).map_err(|r| match r {
        Refusal::Transition(err) => ControlError::Transition {
            name: old.name.clone(),
            err,
        },
        Refusal::NotExtendable => ControlError::NotExtendable(old.name.clone()),
        Refusal::NoDuration => invalid("seconds", r.to_string()).into(),
    })
}

impl ControlPlane {
    pub async fn get_session(&self, name: &str) -> Result<SessionRecord, ControlError> {
        let mut c = self.store.conn().await?;
        store::session_get(&mut c, name)
            .await?
            .ok_or_else(|| ControlError::not_found("session", name))
    }

    pub async fn list_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<(Vec<SessionRecord>, u64), ControlError> {
        let mut c = self.store.conn().await?;
        Ok(store::sessions_list(&mut c, filter).await?)
    }

    pub async fn create_session(&self, input: NewSession) -> Result<SessionRecord, ControlError> {
        let rec = Self::new_record(input, self.now_ms(), &self.base_domains())?;
        model::validate_target(&rec)?;
        self.check_session_target(None, &rec)?;
        self.check_static_keys(&rec)?;
        let (rec, queued) = self
            .writes
            .joined(self, move |cp, c| {
                Box::pin(async move {
                    if let Some(old) = store::session_get(c, &rec.name).await? {
                        if old.state.is_live() {
                            return Err(ControlError::Conflict(format!(
                                "session {:?} already exists (it is {})",
                                rec.name, old.state
                            )));
                        }
                        // A finished record waiting for the purge gives way to the new one.
                        store::session_purge(c, &rec.name).await?;
                    }
                    if !store::user_exists(c, &rec.owner).await? {
                        return Err(unknown("owner", "user", std::slice::from_ref(&rec.owner)));
                    }
                    let missing = store::missing_groups(c, &rec.groups).await?;
                    if !missing.is_empty() {
                        return Err(unknown("groups", "group", &missing));
                    }
                    check_unique_keys(c, &rec).await?;
                    check_portal_slug(c, &rec, None).await?;
                    let mut rec = rec;
                    assign_workspace_port(c, &mut rec, None, cp.workspace_policy()).await?;
                    store::session_insert(c, &rec).await?;
                    let update = cp.route_update(None, Some(&rec))?;
                    Ok::<_, ControlError>((rec, update.changes))
                })
            })
            .await?;
        self.await_applied(queued).await?;
        tracing::info!(session = %rec.name, owner = %rec.owner, state = %rec.state, "session created");
        Ok(rec)
    }

    /// The record a create makes of `input` at `now` (Unix milliseconds),
    /// validated field by field; `base_domains` are the gateway's (a custom
    /// domain may not take a session's address). No I/O, so that the fuzz
    /// target `session_json` runs it as the API does.
    pub fn new_record(
        input: NewSession,
        now: u64,
        base_domains: &[String],
    ) -> Result<SessionRecord, ControlError> {
        model::validate_name("name", &input.name)?;
        model::validate_user_name("owner", &input.owner)?;
        let kind = input.kind.unwrap_or(SessionKind::Tunnel);
        let groups = sorted_unique(input.groups);
        for g in &groups {
            model::validate_name("groups", g)?;
        }
        let (state, activated_ms, expires_ms) = if input.pending {
            (SessionState::Pending, None, None)
        } else {
            (
                SessionState::Running,
                Some(now),
                // Saturating: a duration too long for milliseconds is
                // refused by `validate_target`, after this has run.
                input
                    .duration
                    .map(|d| now.saturating_add(d.saturating_mul(1000))),
            )
        };
        Ok(SessionRecord {
            name: input.name,
            kind,
            remote_host: match kind {
                SessionKind::Tunnel => {
                    Some(input.remote_host.unwrap_or_else(|| "localhost".into()))
                }
                SessionKind::Link => input.remote_host,
            },
            remote_port: input.remote_port,
            url: input.url,
            https: input.https,
            tls_verify: input.tls_verify.unwrap_or(true),
            slug: input
                .slug
                .as_deref()
                .map(model::normalize_slug)
                .transpose()?,
            shared_origin: input.shared_origin,
            strip_prefix: input.strip_prefix,
            rewrite_host: input.rewrite_host,
            allow_any_upgrade: input.allow_any_upgrade,
            custom_domain: input
                .custom_domain
                .as_deref()
                .map(|d| model::normalize_custom_domain(d, base_domains))
                .transpose()?,
            workspace_port: input.workspace_port,
            owner: input.owner,
            groups,
            public: input.public,
            state,
            created_ms: now,
            activated_ms,
            expires_ms,
            last_activity_ms: None,
            paused_ms: None,
            state_changed_ms: now,
            duration_secs: input.duration,
            idle_timeout_secs: input.idle_timeout,
            extendable: input.extendable.unwrap_or(true),
            environment: input.environment,
            labels: input.labels,
            activate_by_ms: None,
            analytics_url: None,
            parameters: Vec::new(),
            parameter_headers: false,
        })
    }

    /// Changes the target or routing of a session; a routed one is swapped
    /// into the gateway at once.
    pub async fn patch_session(
        &self,
        name: &str,
        patch: SessionPatch,
    ) -> Result<SessionRecord, ControlError> {
        let patch = self.normalize_patch(patch, &self.base_domains())?;
        let changed = self
            .joined_change(name, true, move |cp, old| cp.patched(old, patch))
            .await?;
        let rec = changed.finish(self).await?;
        tracing::info!(session = %name, "session changed");
        Ok(rec)
    }

    /// A patch's slug and custom domain in the forms they are stored in
    /// (`base_domains`: the gateway's), or why not: the checks of a patch
    /// that need no stored record.
    fn normalize_patch(
        &self,
        mut patch: SessionPatch,
        base_domains: &[String],
    ) -> Result<SessionPatch, ControlError> {
        if let Some(Some(s)) = &patch.slug {
            patch.slug = Some(Some(model::normalize_slug(s)?));
        }
        if let Some(Some(d)) = &patch.custom_domain {
            let d = model::normalize_custom_domain(d, base_domains)?;
            patch.custom_domain = Some(Some(d));
        }
        Ok(patch)
    }

    /// The record `patch` (normalised) makes of `old`, checked: the session
    /// must be live, and the result a valid target that the target policy
    /// and the static routes allow. (Its slug and custom domain against
    /// the other sessions are checked in the transaction.)
    fn patched(
        &self,
        old: &SessionRecord,
        patch: SessionPatch,
    ) -> Result<SessionRecord, ControlError> {
        if !old.state.is_live() {
            return Err(ControlError::Conflict(format!(
                "session {:?} is {} and can no longer be changed",
                old.name, old.state
            )));
        }
        let mut rec = old.clone();
        patch.apply(&mut rec);
        model::validate_target(&rec)?;
        self.check_session_target(Some(old), &rec)?;
        self.check_static_keys(&rec)?;
        Ok(rec)
    }

    /// Applies many patches, all or nothing: each item is checked as
    /// [`Self::patch_session`] checks one, in the order given, and every
    /// change is written in one transaction (one commit, its change-log
    /// rows and audit lines with it) and published as one route-table
    /// update. A refusal names the item by its place in `items`; nothing
    /// is changed unless every item is accepted.
    pub async fn patch_sessions(
        &self,
        items: Vec<(String, SessionPatch)>,
    ) -> Result<Vec<SessionRecord>, PatchBatchError> {
        if items.len() > MAX_PATCH_BATCH {
            return Err(PatchBatchError::TooMany(items.len()));
        }
        let refused = |index: usize, name: &str, error: ControlError| PatchBatchError::Item {
            index,
            name: name.to_string(),
            error,
        };
        // The checks that need no stored record, before any lock is taken.
        let base_domains = self.base_domains();
        let mut first_at: HashMap<&str, usize> = HashMap::with_capacity(items.len());
        for (index, (name, _)) in items.iter().enumerate() {
            if let Some(first) = first_at.insert(name.as_str(), index) {
                return Err(PatchBatchError::Duplicate {
                    name: name.clone(),
                    first,
                    again: index,
                });
            }
        }
        drop(first_at);
        let mut patches = Vec::with_capacity(items.len());
        for (index, (name, patch)) in items.into_iter().enumerate() {
            match self.normalize_patch(patch, &base_domains) {
                Ok(patch) => patches.push((name, patch)),
                Err(e) => return Err(refused(index, &name, e)),
            }
        }
        if patches.is_empty() {
            return Ok(Vec::new());
        }

        let mut tx = self.writes.begin().await.map_err(ControlError::from)?;
        let names: Vec<String> = patches.iter().map(|(name, _)| name.clone()).collect();
        let mut stored = store::sessions_get_many(&mut tx, &names)
            .await
            .map_err(ControlError::from)?;
        drop(names);
        let mut olds = Vec::with_capacity(patches.len());
        let mut missing = Vec::new();
        for (index, (name, _)) in patches.iter().enumerate() {
            match stored.remove(name) {
                Some(old) => olds.push(old),
                None => missing.push((index, name.clone())),
            }
        }
        if !missing.is_empty() {
            // Dropping the transaction rolls it back (it wrote nothing).
            return Err(PatchBatchError::Missing(missing));
        }
        let mut changed = Vec::with_capacity(olds.len());
        for (index, ((name, patch), old)) in patches.into_iter().zip(olds).enumerate() {
            match self.patched(&old, patch) {
                Ok(rec) => changed.push((old, rec)),
                Err(e) => return Err(refused(index, &name, e)),
            }
        }
        if let Err(e) = Self::write_patched(&mut tx, &changed).await {
            // Some rows may be written: rolled back before the lock goes.
            if let Err(rollback) = tx.rollback().await {
                tracing::error!(error = %rollback, "rolling back a refused batch of patches");
            }
            return Err(e);
        }
        let _lock = tx.commit().await.map_err(ControlError::from)?;
        let mut update = RouteUpdate::default();
        self.add_route_changes(changed.iter().map(|(old, rec)| (old, rec)), &mut update)?;
        self.apply_update(update).await?;
        tracing::info!(sessions = changed.len(), "sessions changed in one batch");
        Ok(changed.into_iter().map(|(_, rec)| rec).collect())
    }

    /// Writes each `(old, new)` of a batch of patches in `tx`, in order,
    /// each item's new slug or custom domain checked against the other
    /// live sessions as the items before it left them (as single patches
    /// one after the other would be): two items cannot take the same slug,
    /// and a swap needs a free slug in between. The rows are written in
    /// batches, each before the next check that reads them. (A slug or
    /// custom domain an item keeps needs no check: it held it alone, and an
    /// item before it that took it was refused.)
    async fn write_patched(
        tx: &mut store::Conn,
        changed: &[(SessionRecord, SessionRecord)],
    ) -> Result<(), PatchBatchError> {
        let mut unwritten: Vec<(&SessionRecord, &SessionRecord)> = Vec::new();
        for (index, (old, rec)) in changed.iter().enumerate() {
            if rec.workspace_port != old.workspace_port {
                return Err(PatchBatchError::Item {
                    index,
                    name: rec.name.clone(),
                    error: ControlError::Invalid(crate::session::model::Invalid {
                        field: "workspace_port".into(),
                        message: "is changed by a single session's PATCH, not in a batch".into(),
                    }),
                });
            }
            let new_key = (rec.slug.is_some() && rec.slug != old.slug)
                || (rec.custom_domain.is_some() && rec.custom_domain != old.custom_domain);
            if new_key {
                store::sessions_update_rows(tx, &unwritten)
                    .await
                    .map_err(ControlError::from)?;
                unwritten.clear();
                let checked = async {
                    check_unique_keys(tx, rec).await?;
                    check_portal_slug(tx, rec, old.slug.as_deref()).await
                };
                if let Err(error) = checked.await {
                    return Err(PatchBatchError::Item {
                        index,
                        name: rec.name.clone(),
                        error,
                    });
                }
            }
            unwritten.push((old, rec));
        }
        store::sessions_update_rows(tx, &unwritten)
            .await
            .map_err(ControlError::from)?;
        Ok(())
    }

    /// Replaces the groups a session is shared with.
    pub async fn set_session_groups(
        &self,
        name: &str,
        groups: Vec<String>,
    ) -> Result<SessionRecord, ControlError> {
        let groups = sorted_unique(groups);
        for g in &groups {
            model::validate_name("groups", g)?;
        }
        let mut tx = self.writes.begin().await?;
        let old = store::session_get(&mut tx, name)
            .await?
            .ok_or_else(|| ControlError::not_found("session", name))?;
        if !old.state.is_live() {
            return Err(ControlError::Conflict(format!(
                "session {name:?} is {} and can no longer be shared",
                old.state
            )));
        }
        let missing = store::missing_groups(&mut tx, &groups).await?;
        if !missing.is_empty() {
            return Err(unknown("groups", "group", &missing));
        }
        let mut rec = old.clone();
        rec.groups = groups;
        store::session_update(&mut tx, &rec).await?;
        let _lock = tx.commit().await?;
        self.publish(Some(&old), Some(&rec)).await?;
        let lost = {
            let cache = self.group_cache();
            acc::lost_users(&old, &cache, &rec, &cache)
        };
        if !lost.is_empty() {
            // Closed by the gateways as they applied the new access list.
            tracing::info!(session = %name, users = ?lost, "access revoked");
        }
        tracing::info!(session = %name, groups = ?rec.groups, "session sharing replaced");
        Ok(rec)
    }

    /// Applies a lifecycle action. `extend_secs` is what `extend` adds
    /// (default: the session's duration).
    pub async fn session_action(
        &self,
        name: &str,
        action: Action,
        extend_secs: Option<u64>,
    ) -> Result<SessionRecord, ControlError> {
        if let Some(s) = extend_secs {
            if s == 0 || s > model::MAX_SECS {
                return Err(
                    invalid("seconds", format!("must be 1-{} seconds", model::MAX_SECS)).into(),
                );
            }
        }
        let changed = self
            .joined_change(name, false, move |cp, old| {
                transition(old, action, extend_secs, cp.now_ms())
            })
            .await?;
        let from = changed.old_state;
        let rec = changed.finish(self).await?;
        tracing::info!(session = %name, action = ?action, from = %from, to = %rec.state, "session action");
        Ok(rec)
    }

    /// A joined write that reads session `name`, makes the new record with
    /// `change` (which may refuse), checks its slug and custom domain
    /// against the other live sessions when `check_keys`, and stores it.
    async fn joined_change<F>(
        &self,
        name: &str,
        check_keys: bool,
        change: F,
    ) -> Result<Changed, ControlError>
    where
        F: FnOnce(&ControlPlane, &SessionRecord) -> Result<SessionRecord, ControlError>
            + Send
            + 'static,
    {
        let name = name.to_string();
        let ((old_state, rec), queued) = self
            .writes
            .joined(self, move |cp, c| {
                Box::pin(async move {
                    let old = store::session_get(c, &name)
                        .await?
                        .ok_or_else(|| ControlError::not_found("session", &name))?;
                    let mut rec = change(cp, &old)?;
                    if check_keys {
                        check_unique_keys(c, &rec).await?;
                        check_portal_slug(c, &rec, old.slug.as_deref()).await?;
                    }
                    if rec.workspace_port != old.workspace_port {
                        assign_workspace_port(c, &mut rec, Some(&old), cp.workspace_policy())
                            .await?;
                    }
                    store::session_update_row(c, &rec).await?;
                    let update = cp.route_update(Some(&old), Some(&rec))?;
                    Ok::<_, ControlError>(((old.state, rec), update.changes))
                })
            })
            .await?;
        Ok(Changed {
            old_state,
            rec,
            queued,
        })
    }

    /// Applies `action` to each name where it is applicable, in one
    /// transaction and one table update, and reports per name.
    pub async fn bulk_action(
        &self,
        action: Action,
        names: Vec<String>,
    ) -> Result<Vec<BulkOutcome>, ControlError> {
        if names.len() > 10_000 {
            return Err(invalid("names", format!("{} names; at most 10000", names.len())).into());
        }
        let now = self.now_ms();
        let mut tx = self.writes.begin().await?;
        let mut outcomes = Vec::with_capacity(names.len());
        let mut changed: Vec<(SessionRecord, SessionRecord)> = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            if !seen.insert(name.clone()) {
                outcomes.push(BulkOutcome {
                    name,
                    state: None,
                    refused: Some(BulkRefusal::Duplicate),
                });
                continue;
            }
            let Some(old) = store::session_get(&mut tx, &name).await? else {
                let e = ControlError::not_found("session", &name);
                outcomes.push(BulkOutcome {
                    name,
                    state: None,
                    refused: Some(BulkRefusal::Refused(e)),
                });
                continue;
            };
            match transition(&old, action, None, now) {
                Ok(rec) => {
                    store::session_update_row(&mut tx, &rec).await?;
                    outcomes.push(BulkOutcome {
                        name,
                        state: Some(rec.state),
                        refused: None,
                    });
                    changed.push((old, rec));
                }
                Err(e) => outcomes.push(BulkOutcome {
                    name,
                    state: Some(old.state),
                    refused: Some(BulkRefusal::Refused(e)),
                }),
            }
        }
        let _lock = tx.commit().await?;
        let mut update = RouteUpdate::default();
        for (old, rec) in &changed {
            self.add_route_change(Some(old), rec, &mut update)?;
        }
        self.apply_update(update).await?;
        tracing::info!(action = ?action, applied = changed.len(), asked = outcomes.len(), "bulk session action");
        Ok(outcomes)
    }
}
