//! Who did what to a session: the audit log the console's session page
//! shows (issue 19).
//!
//! Every store write of a session record adds a line to the `audit` table
//! in the same transaction ([`record`], called by the store's session
//! writes), so a change and its line commit together or not at all. Who
//! and what come from task-locals that the caller sets around the request
//! ([`scope`]): the API sets them from the caller's credential and the
//! endpoint, the console from its signed-in user, the reaper for its
//! passes. A write outside any scope is recorded as done by `system`.

use std::future::Future;
use std::sync::Arc;

use crate::session::model::SessionRecord;
use crate::store::{self, AuditRow, Conn, StoreError};

tokio::task_local! {
    static WHO: Who;
}

/// Who is acting, and what they asked for.
#[derive(Clone, Debug)]
pub struct Who {
    /// `token:<name>`, `user:<name>`, `reaper`.
    pub actor: Arc<str>,
    /// The action asked for (`create`, `share`, `evict`, …); a write's own
    /// kind when empty.
    pub action: Arc<str>,
}

impl Who {
    pub fn new(actor: impl Into<Arc<str>>, action: impl Into<Arc<str>>) -> Who {
        Who {
            actor: actor.into(),
            action: action.into(),
        }
    }
}

/// Runs `f` with `who` as the actor of every session write it makes.
pub async fn scope<F: Future>(who: Who, f: F) -> F::Output {
    WHO.scope(who, f).await
}

/// The actor now (`system` outside any scope).
pub fn actor() -> Arc<str> {
    WHO.try_with(|w| Arc::clone(&w.actor))
        .unwrap_or_else(|_| Arc::from("system"))
}

/// Records a write of `rec` (`created`: a new record) by the actor in
/// scope, in the transaction `c` is in.
pub async fn record(c: &mut Conn, rec: &SessionRecord, created: bool) -> Result<(), StoreError> {
    let (actor, action) = WHO
        .try_with(|w| (Arc::clone(&w.actor), Arc::clone(&w.action)))
        .unwrap_or_else(|_| (Arc::from("system"), Arc::from("")));
    let action = match (&*action, created) {
        ("", true) => "create",
        ("", false) => "update",
        (a, _) => a,
    };
    let detail = format!("state {}", rec.state);
    store::audit_insert(
        c,
        &AuditRow {
            at_ms: now_ms(),
            session: rec.name.clone(),
            action: action.to_string(),
            actor: actor.to_string(),
            detail,
        },
    )
    .await
}

/// [`record`] for each of `recs` (none created), in a few statements.
pub async fn record_many(c: &mut Conn, recs: &[&SessionRecord]) -> Result<(), StoreError> {
    let (actor, action) = WHO
        .try_with(|w| (Arc::clone(&w.actor), Arc::clone(&w.action)))
        .unwrap_or_else(|_| (Arc::from("system"), Arc::from("")));
    let action = match &*action {
        "" => "update",
        a => a,
    };
    let at_ms = now_ms();
    let rows: Vec<AuditRow> = recs
        .iter()
        .map(|rec| AuditRow {
            at_ms,
            session: rec.name.clone(),
            action: action.to_string(),
            actor: actor.to_string(),
            detail: format!("state {}", rec.state),
        })
        .collect();
    store::audit_insert_many(c, &rows).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
