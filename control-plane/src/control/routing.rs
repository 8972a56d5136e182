//! From stored changes to the control plane's table: the route changes a
//! session change calls for, published through the one publisher, and
//! waited for. Each version reaches the gateways as a message
//! ([`crate::gateways`]), and a gateway applying a changed route closes
//! what the route as it is now would not let through: the answers still
//! with the app, the responses still streaming and the WebSockets of a
//! session that left `running`, stopped being public, moved to another
//! target, or of users who lost access through a group.
//!
//! Also the keys sessions may not take: slugs and hosts of the configuration
//! file's static routes, and those of other live sessions.

use std::collections::HashSet;
use std::sync::Arc;

use crate::store::Conn;
use gateway::{names, RouteChange, RouteSpec};

use super::ControlPlane;
use crate::access::{self as acc, GroupCache};
use crate::error::ControlError;
use crate::publish::{route_id, route_spec, route_target};
use crate::session::lifecycle::SessionState;
use crate::session::model::SessionRecord;
use crate::store;

/// Slugs and hosts held by the configuration file's static routes, in the
/// forms the table files them under.
#[derive(Clone, Debug, Default)]
pub struct StaticKeys {
    pub hosts: HashSet<String>,
    pub slugs: HashSet<String>,
}

impl StaticKeys {
    /// The keys of `specs`, in the canonical forms of [`gateway::names`]
    /// (the table has already refused any that have none).
    pub fn from_specs(specs: &[RouteSpec]) -> Self {
        StaticKeys {
            hosts: specs
                .iter()
                .flat_map(|s| s.hosts.iter().map(|h| names::normalize_name(h)))
                .collect(),
            slugs: specs
                .iter()
                .flat_map(|s| s.slugs.iter())
                .filter_map(|slug| names::normalize_slug(slug).ok().map(str::to_string))
                .collect(),
        }
    }
}

/// The route changes a session write publishes.
#[derive(Default)]
pub(crate) struct RouteUpdate {
    pub changes: Vec<RouteChange>,
}

/// Whether going from `old` to `new` takes something away from what the
/// route let in before: leaving `running` (pause included), no longer
/// being public (whoever came in anonymously), or a new target (the
/// WebSockets and streams to the old one). The gateways close what it
/// ends when they apply the change; this names it in the log.
fn takes_away(old: &SessionRecord, new: &SessionRecord) -> bool {
    (old.state == SessionState::Running && new.state != SessionState::Running)
        || (old.public && !new.public)
        || route_target(old).ok() != route_target(new).ok()
}

/// A stored change the route table would not take.
fn table_refused(e: gateway::PublishError) -> ControlError {
    tracing::error!(error = %e, "route table refused a stored change");
    ControlError::Publish(e.to_string())
}

impl ControlPlane {
    /// The configuration file's static routes changed (on reload): their
    /// slugs and hosts are the ones sessions may not take from now on.
    pub fn static_routes_changed(&self, specs: &[RouteSpec]) {
        self.static_keys
            .store(Arc::new(StaticKeys::from_specs(specs)));
    }

    /// Refuses a session that would take a static route's slug or host.
    pub(crate) fn check_static_keys(&self, rec: &SessionRecord) -> Result<(), ControlError> {
        let keys = self.static_keys.load();
        if let Some(slug) = &rec.slug {
            if keys.slugs.contains(slug) {
                return Err(ControlError::Conflict(format!(
                    "slug {slug:?} is a static route of the configuration file"
                )));
            }
        }
        if let Some(d) = &rec.custom_domain {
            if keys.hosts.contains(d) {
                return Err(ControlError::Conflict(format!(
                    "custom_domain {d:?} is a static route of the configuration file"
                )));
            }
        }
        Ok(())
    }

    /// Base domains of the table the gateway holds now.
    pub fn base_domains(&self) -> Vec<String> {
        self.routes
            .load()
            .base_domains()
            .map(str::to_string)
            .collect()
    }

    /// The table changes that take a session from `old` to `new` (either
    /// absent: created, or not changed), and the live connections to close
    /// once they are applied.
    pub(crate) fn route_update(
        &self,
        old: Option<&SessionRecord>,
        new: Option<&SessionRecord>,
    ) -> Result<RouteUpdate, ControlError> {
        let mut update = RouteUpdate::default();
        if let Some(new) = new {
            self.add_route_change(old, new, &mut update)?;
        }
        Ok(update)
    }

    /// Adds the change from `old` to `new` to `update`.
    pub(crate) fn add_route_change(
        &self,
        old: Option<&SessionRecord>,
        new: &SessionRecord,
        update: &mut RouteUpdate,
    ) -> Result<(), ControlError> {
        if self.push_route_change(old, new, &self.group_cache(), update)? {
            tracing::info!(session = %new.name, "closing what the session's change no longer admits");
        }
        Ok(())
    }

    /// [`Self::add_route_change`] for each `(old, new)` of a batch, with
    /// one log line for them all rather than one per session.
    pub(crate) fn add_route_changes<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a SessionRecord, &'a SessionRecord)>,
        update: &mut RouteUpdate,
    ) -> Result<(), ControlError> {
        let groups = self.group_cache();
        let mut closing = 0usize;
        for (old, new) in changes {
            if self.push_route_change(Some(old), new, &groups, update)? {
                closing += 1;
            }
        }
        if closing > 0 {
            tracing::info!(
                sessions = closing,
                "closing what the sessions' changes no longer admit"
            );
        }
        Ok(())
    }

    /// Adds the change from `old` to `new` to `update`; whether it takes
    /// something away from what the route let in (see [`takes_away`]).
    fn push_route_change(
        &self,
        old: Option<&SessionRecord>,
        new: &SessionRecord,
        groups: &GroupCache,
        update: &mut RouteUpdate,
    ) -> Result<bool, ControlError> {
        let spec = route_spec(new, groups)?;
        let Some(old) = old else {
            update.changes.extend(spec.map(RouteChange::Upsert));
            return Ok(false);
        };
        let id = route_id(&new.name);
        match spec {
            Some(spec) => update.changes.push(RouteChange::Upsert(spec)),
            None if old.state.is_live() => update.changes.push(RouteChange::Remove(id)),
            None => {}
        }
        Ok(takes_away(old, new))
    }

    /// Publishes the route change from `old` to `new` and waits for the
    /// table to show it; the caller keeps the write lock until then.
    pub(crate) async fn publish(
        &self,
        old: Option<&SessionRecord>,
        new: Option<&SessionRecord>,
    ) -> Result<(), ControlError> {
        let update = self.route_update(old, new)?;
        self.apply_update(update).await
    }

    /// Queues `update`'s changes to the publisher and waits until the table
    /// (and every gateway in this process) has them.
    pub(crate) async fn apply_update(&self, update: RouteUpdate) -> Result<(), ControlError> {
        let queued = if update.changes.is_empty() {
            None
        } else {
            Some(
                self.publisher
                    .queue(update.changes)
                    .await
                    .map_err(table_refused)?,
            )
        };
        self.await_applied(queued).await
    }

    /// Waits until `queued` is in the table.
    pub(crate) async fn await_applied(
        &self,
        queued: Option<gateway::Queued>,
    ) -> Result<(), ControlError> {
        if let Some(queued) = queued {
            let started = std::time::Instant::now();
            queued.applied().await.map_err(table_refused)?;
            self.metrics.observe_table_swap(started.elapsed());
        }
        Ok(())
    }

    /// After the members of groups changed (committed, write lock held):
    /// swaps in their member lists (`None`: the group is gone), republishes
    /// `sessions` (those shared with them), and closes the live connections
    /// of every user who lost access to one of them.
    pub(crate) async fn groups_changed(
        &self,
        updates: Vec<(String, Option<Vec<String>>)>,
        sessions: Vec<SessionRecord>,
    ) -> Result<(), ControlError> {
        let before = self.group_cache();
        let mut after = GroupCache::clone(&before);
        for (g, m) in updates {
            match m {
                Some(m) => after.insert(g, acc::members(m)),
                None => after.remove(&g),
            };
        }
        let after = Arc::new(after);
        self.groups.store(Arc::clone(&after));
        let mut changes = Vec::new();
        for s in &sessions {
            if let Some(spec) = route_spec(s, &after)? {
                changes.push(RouteChange::Upsert(spec));
            }
            let lost = acc::lost_users(s, &before, s, &after);
            if !lost.is_empty() {
                // The gateways close their connections as they apply the
                // session's new access list.
                tracing::info!(session = %s.name, users = ?lost, "access revoked");
            }
        }
        self.apply_update(RouteUpdate { changes }).await
    }
}

/// Gives `rec` the workspace port it asks for, or a free one in the range
/// for 0, or refuses (409) a port outside the range, another live
/// session's, or one something else holds on the gateway's host. `old`:
/// the record before a change (its own port is not a conflict).
pub(crate) async fn assign_workspace_port(
    c: &mut Conn,
    rec: &mut SessionRecord,
    old: Option<&SessionRecord>,
    policy: &super::WorkspacePolicy,
) -> Result<(), ControlError> {
    let Some(asked) = rec.workspace_port else {
        return Ok(());
    };
    let (low, high) = policy.range;
    let taken = store::live_workspace_ports(c, &rec.name).await?;
    let bindable = |port: u16| std::net::TcpListener::bind((policy.listen, port)).is_ok();
    if asked != 0 {
        if !(low..=high).contains(&asked) {
            return Err(ControlError::Conflict(format!(
                "workspace_port {asked} is outside gateway.workspace_port_range {low}-{high}"
            )));
        }
        if let Some((_, other)) = taken.iter().find(|(p, _)| *p == asked) {
            return Err(ControlError::Conflict(format!(
                "workspace_port {asked} is used by session {other:?}"
            )));
        }
        let own = old.and_then(|o| o.workspace_port) == Some(asked);
        if !own && !bindable(asked) {
            return Err(ControlError::Conflict(format!(
                "workspace_port {asked} is in use on the gateway's host ({})",
                policy.listen
            )));
        }
        return Ok(());
    }
    // 0: keep the port it has, else a free one, from a random place in
    // the range so that ports are not handed out in order.
    if let Some(p) = old.and_then(|o| o.workspace_port) {
        rec.workspace_port = Some(p);
        return Ok(());
    }
    let span = u32::from(high - low) + 1;
    let start = crate::auth::random_hex(4)
        .ok()
        .and_then(|h| u32::from_str_radix(&h, 16).ok())
        .unwrap_or(0)
        % span;
    for i in 0..span {
        let port = low + u16::try_from((start + i) % span).unwrap_or(0);
        if taken.iter().any(|(p, _)| *p == port) || !bindable(port) {
            continue;
        }
        rec.workspace_port = Some(port);
        return Ok(());
    }
    Err(ControlError::Conflict(format!(
        "no free workspace port in gateway.workspace_port_range {low}-{high}"
    )))
}

/// Refuses a session whose slug or custom domain another live session has.
pub(crate) async fn check_unique_keys(
    c: &mut Conn,
    rec: &SessionRecord,
) -> Result<(), ControlError> {
    if let Some(slug) = &rec.slug {
        if let Some(other) = store::live_session_with(c, "slug", slug, &rec.name).await? {
            return Err(ControlError::Conflict(format!(
                "slug {slug:?} is used by session {other:?}"
            )));
        }
    }
    if let Some(d) = &rec.custom_domain {
        if let Some(other) = store::live_session_with(c, "custom_domain", d, &rec.name).await? {
            return Err(ControlError::Conflict(format!(
                "custom_domain {d:?} is used by session {other:?}"
            )));
        }
    }
    Ok(())
}
