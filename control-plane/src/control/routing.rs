//! From stored changes to the gateway's table: the route changes a session
//! change calls for, publishing them through the one publisher, waiting for
//! the table to show them, and then revoking what the change ends: the
//! answers still with the app, the responses still streaming and the
//! WebSockets that the route as it is now would not let through
//! ([`RouteState::revoke`]). A change revokes when it leaves `running`,
//! stops being public, or moves to another target; changes to groups
//! revoke for the sessions whose users lost access.
//!
//! Also the keys sessions may not take: slugs and hosts of the configuration
//! file's static routes, and those of other live sessions.

use std::collections::HashSet;
use std::sync::Arc;

use gateway::sync::{Message, Revocation};
use gateway::{names, RouteChange, RouteSpec, RouteState};
use sqlx::sqlite::SqliteConnection;

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

/// A route change and the routes to revoke once it is applied: what a
/// session write publishes.
#[derive(Default)]
pub(crate) struct RouteUpdate {
    pub changes: Vec<RouteChange>,
    pub closing: Vec<Closing>,
}

/// A route whose change takes something away from what it let in before.
pub(crate) struct Closing {
    /// The session, for the log line.
    session: String,
    id: Arc<str>,
    /// The route's state before the change (the route may be gone after it).
    state: Arc<RouteState>,
}

/// Whether going from `old` to `new` takes something away from what the
/// route let in before: leaving `running` (pause included), no longer
/// being public (whoever came in anonymously), or a new target (the
/// WebSockets and streams to the old one). Users who lose access through
/// groups are found where groups change.
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
    pub(crate) fn base_domains(&self) -> Vec<String> {
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
        let spec = route_spec(new, &self.group_cache())?;
        let Some(old) = old else {
            update.changes.extend(spec.map(RouteChange::Upsert));
            return Ok(());
        };
        let id = route_id(&new.name);
        if takes_away(old, new) {
            if let Some(route) = self.routes.load().route(&id) {
                update.closing.push(Closing {
                    session: new.name.clone(),
                    id: Arc::clone(&id),
                    state: Arc::clone(&route.state),
                });
            }
        }
        match spec {
            Some(spec) => update.changes.push(RouteChange::Upsert(spec)),
            None if old.state.is_live() => update.changes.push(RouteChange::Remove(id)),
            None => {}
        }
        Ok(())
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

    /// Queues `update`'s changes to the publisher, waits until the table has
    /// them, then closes its live connections.
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
        self.await_applied(queued, update.closing).await
    }

    /// Waits until `queued` is in the table, then revokes the routes in
    /// `closing` as the table now holds them.
    pub(crate) async fn await_applied(
        &self,
        queued: Option<gateway::Queued>,
        closing: Vec<Closing>,
    ) -> Result<(), ControlError> {
        if let Some(queued) = queued {
            let started = std::time::Instant::now();
            queued.applied().await.map_err(table_refused)?;
            self.metrics.observe_table_swap(started.elapsed());
        }
        if closing.is_empty() {
            return Ok(());
        }
        let table = self.routes.load();
        for c in closing {
            // The route as it is now, unless it was removed (or removed and
            // made again: that one let nothing in before the change).
            let now = table
                .route(&c.id)
                .filter(|r| Arc::ptr_eq(&r.state, &c.state));
            let n = c.state.revoke(now.map(|r| &r.spec));
            if n > 0 {
                tracing::info!(session = %c.session, connections = n, "closed live connections");
            }
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
        let mut revoked = Vec::new();
        for s in &sessions {
            if let Some(spec) = route_spec(s, &after)? {
                changes.push(RouteChange::Upsert(spec));
            }
            let lost = acc::lost_users(s, &before, s, &after);
            if !lost.is_empty() {
                revoked.push((s.name.as_str(), lost));
            }
        }
        self.apply_update(RouteUpdate {
            changes,
            ..RouteUpdate::default()
        })
        .await?;
        self.close_for_users(revoked);
        Ok(())
    }

    /// Revokes these sessions' routes, now that the table no longer lets
    /// these users in: their answers in flight, responses and WebSockets
    /// end, everyone else's go on.
    pub(crate) fn close_for_users(&self, revoked: Vec<(&str, Vec<String>)>) {
        if revoked.is_empty() {
            return;
        }
        let revocations = revoked
            .into_iter()
            .filter(|(_, users)| !users.is_empty())
            .map(|(session, users)| Revocation {
                route: route_id(session),
                users: users.into_iter().map(Arc::from).collect(),
            })
            .collect();
        self.gateways().send(Message::Revoke { revocations });
    }
}

/// Refuses a session whose slug or custom domain another live session has.
pub(crate) async fn check_unique_keys(
    c: &mut SqliteConnection,
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
