//! The handle through which every reader loads the current table and every
//! writer swaps in the next one.

use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use super::{RouteChange, RouteSpec, RouteTable, TableError, TableSettings};

/// What a new table version changed, as [`TableObserver`] is told it.
#[derive(Debug)]
pub enum TableChange<'a> {
    /// Built whole from specs ([`RouteHandle::publish`]): anything may have
    /// changed.
    Rebuilt,
    /// These route ids were added or replaced (`upserted`) or removed, and
    /// the settings replaced when `settings` is true; nothing else changed.
    Changed {
        upserted: &'a [Arc<str>],
        removed: &'a [Arc<str>],
        settings: bool,
    },
}

/// Told of every table version a handle stores, in version order, before
/// the writer that made it gets its answer: the control plane's hook for
/// sending each change to its gateways (`docs/gateway-protocol.md`).
pub trait TableObserver: Send + Sync + 'static {
    /// `next` was stored in place of `previous`. Called with the handle's
    /// write lock held: keep it short, and never publish from it.
    fn stored(&self, previous: &RouteTable, next: &Arc<RouteTable>, change: TableChange<'_>);
}

/// The ids `changes` touch, in order, each with whether it is upserted
/// (`true`) or removed.
fn change_ids(changes: &[RouteChange], into: &mut Vec<(Arc<str>, bool)>) {
    into.extend(changes.iter().map(|c| match c {
        RouteChange::Upsert(spec) => (Arc::clone(&spec.id), true),
        RouteChange::Remove(id) => (Arc::clone(id), false),
    }));
}

/// The net effect of [`change_ids`]: each id once, by its last change.
fn net_ids(touched: Vec<(Arc<str>, bool)>) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
    let mut last: std::collections::HashMap<Arc<str>, bool> =
        std::collections::HashMap::with_capacity(touched.len());
    let mut order = Vec::with_capacity(touched.len());
    for (id, up) in touched {
        if last.insert(Arc::clone(&id), up).is_none() {
            order.push(id);
        }
    }
    order.into_iter().partition(|id| last[id])
}

/// A table version held by a follower is not the one a message applies on.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("the change applies on table version {base}, this gateway holds {held}")]
    OutOfOrder { base: u64, held: u64 },
    #[error(transparent)]
    Table(#[from] TableError),
}

/// The shared handle through which the data plane reads the current table and
/// the control plane publishes new ones.
#[derive(Clone, Debug)]
pub struct RouteHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    table: ArcSwap<RouteTable>,
    /// Serialises publishers so that version numbers and carried state are
    /// consistent; readers never take it.
    publish: Mutex<()>,
    /// Told of every stored version (the control plane's table only).
    observer: OnceLock<Arc<dyn TableObserver>>,
    /// The version last stored, for tasks that follow the table (the
    /// workspace ports) instead of looking at it on a timer.
    stored: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for dyn TableObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableObserver")
    }
}

impl Default for RouteHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteHandle {
    /// A handle holding an empty table (every request answers 404).
    pub fn new() -> Self {
        RouteHandle {
            inner: Arc::new(HandleInner {
                table: ArcSwap::from_pointee(RouteTable::default()),
                publish: Mutex::new(()),
                observer: OnceLock::new(),
                stored: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// The current table: one atomic load.
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.inner.table.load()
    }

    /// Changes whenever a table is stored (its value: the version).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.stored.subscribe()
    }

    /// The current table as an owned `Arc` (for long-lived readers).
    pub fn current(&self) -> Arc<RouteTable> {
        self.inner.table.load_full()
    }

    /// Compiles `specs` and swaps the result in. On error the current table
    /// keeps serving and is returned untouched.
    pub fn publish(
        &self,
        settings: &TableSettings,
        specs: Vec<RouteSpec>,
    ) -> Result<Arc<RouteTable>, TableError> {
        let _serial = self.inner.publish.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.inner.table.load_full();
        let table = Arc::new(RouteTable::build(
            settings,
            specs,
            Some(&previous),
            previous.version + 1,
        )?);
        self.inner.table.store(Arc::clone(&table));
        self.inner.stored.send_replace(table.version);
        self.tell(&previous, &table, TableChange::Rebuilt);
        Ok(table)
    }

    /// Sets the observer told of every version stored from now on. Once:
    /// a second observer is refused (handed back).
    pub fn observe(&self, observer: Arc<dyn TableObserver>) -> Result<(), Arc<dyn TableObserver>> {
        self.inner.observer.set(observer)
    }

    fn tell(&self, previous: &RouteTable, next: &Arc<RouteTable>, change: TableChange<'_>) {
        if let Some(o) = self.inner.observer.get() {
            o.stored(previous, next, change);
        }
    }

    /// A follower's whole table: `specs` and `settings` as version
    /// `version`, whatever it held before (a snapshot from its control
    /// plane). Routes keep their runtime state by id. Returns the table it
    /// replaced too, so that the caller can revoke against both.
    pub fn replace(
        &self,
        version: u64,
        settings: &TableSettings,
        specs: Vec<RouteSpec>,
    ) -> Result<(Arc<RouteTable>, Arc<RouteTable>), TableError> {
        let _serial = self.inner.publish.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.inner.table.load_full();
        let table = Arc::new(RouteTable::build(
            settings,
            specs,
            Some(&previous),
            version,
        )?);
        self.inner.table.store(Arc::clone(&table));
        self.inner.stored.send_replace(table.version);
        Ok((previous, table))
    }

    /// A follower's next version: `changes` (and `settings` when given)
    /// applied on `base`, which must be the version it holds, as version
    /// `version`. All or nothing, as [`apply`](Self::apply). Returns the
    /// table it replaced too.
    pub fn apply_at(
        &self,
        base: u64,
        version: u64,
        settings: Option<&TableSettings>,
        changes: Vec<RouteChange>,
    ) -> Result<(Arc<RouteTable>, Arc<RouteTable>), FollowError> {
        let _serial = self.inner.publish.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.inner.table.load_full();
        if previous.version != base {
            return Err(FollowError::OutOfOrder {
                base,
                held: previous.version,
            });
        }
        let mut next = previous.successor(settings, version);
        next.apply_changes(changes)?;
        let next = Arc::new(next);
        self.inner.table.store(Arc::clone(&next));
        self.inner.stored.send_replace(next.version);
        Ok((previous, next))
    }

    /// Applies `changes`, and `settings` when given, as one new table version.
    /// All or nothing: if one change is invalid or conflicts, the current table
    /// keeps serving untouched. The new version shares every shard the changes
    /// do not touch with the current one, so this costs the changes, not the
    /// table (see [`RouteTable`]'s storage notes).
    pub fn apply(
        &self,
        settings: Option<&TableSettings>,
        changes: Vec<RouteChange>,
    ) -> Result<Arc<RouteTable>, TableError> {
        let _serial = self.inner.publish.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.inner.table.load_full();
        let mut next = previous.successor(settings, previous.version + 1);
        let mut touched = Vec::new();
        if self.inner.observer.get().is_some() {
            change_ids(&changes, &mut touched);
        }
        next.apply_changes(changes)?;
        let (upserted, removed) = net_ids(touched);
        let next = Arc::new(next);
        self.inner.table.store(Arc::clone(&next));
        self.inner.stored.send_replace(next.version);
        self.tell(
            &previous,
            &next,
            TableChange::Changed {
                upserted: &upserted,
                removed: &removed,
                settings: settings.is_some(),
            },
        );
        Ok(next)
    }

    /// Applies several groups of changes, in order, as one new table version,
    /// each group all or nothing on its own: a group that is invalid or
    /// conflicts (with the table as the groups before it left it) is skipped
    /// and gets its error, and the others go ahead. The new version is stored
    /// before this returns; when no group changed anything, none is made.
    pub(crate) fn apply_each(&self, groups: Vec<Vec<RouteChange>>) -> AppliedGroups {
        let _serial = self.inner.publish.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.inner.table.load_full();
        let mut next = previous.successor(None, previous.version + 1);
        let mut changed = false;
        let observed = self.inner.observer.get().is_some();
        let mut touched = Vec::new();
        let results: Vec<Result<(), TableError>> = groups
            .into_iter()
            .map(|changes| {
                let nonempty = !changes.is_empty();
                let mark = touched.len();
                if observed {
                    change_ids(&changes, &mut touched);
                }
                let result = next.apply_changes(changes);
                if nonempty && result.is_ok() {
                    changed = true;
                } else {
                    touched.truncate(mark);
                }
                result
            })
            .collect();
        let version = if changed {
            let version = next.version;
            let next = Arc::new(next);
            self.inner.table.store(Arc::clone(&next));
            self.inner.stored.send_replace(next.version);
            let (upserted, removed) = net_ids(touched);
            self.tell(
                &previous,
                &next,
                TableChange::Changed {
                    upserted: &upserted,
                    removed: &removed,
                    settings: false,
                },
            );
            version
        } else {
            previous.version
        };
        AppliedGroups {
            version,
            results,
            previous,
        }
    }
}

/// What [`RouteHandle::apply_each`] did.
pub(crate) struct AppliedGroups {
    /// The version at which the successful groups are visible.
    pub(crate) version: u64,
    /// One per group, in order.
    pub(crate) results: Vec<Result<(), TableError>>,
    /// The version that was current before, handed back so that the caller
    /// can answer first and free it after (the last reference to an old
    /// version costs thousands of reference-count updates to drop).
    pub(crate) previous: Arc<RouteTable>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::test_spec as spec;

    #[test]
    fn subscribers_see_every_stored_version() {
        let handle = RouteHandle::new();
        let mut rx = handle.subscribe();
        assert_eq!(*rx.borrow_and_update(), 0);
        let settings = TableSettings::default();
        handle.publish(&settings, vec![spec("a")]).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        handle.replace(7, &settings, vec![spec("b")]).unwrap();
        assert_eq!(handle.load().version(), 7);
        assert_eq!(*rx.borrow_and_update(), 7);
        assert!(!rx.has_changed().unwrap(), "nothing stored since");
    }

    #[test]
    fn state_carries_over_by_id_across_publishes() {
        let handle = RouteHandle::new();
        let settings = TableSettings::default();
        let t1 = handle
            .publish(&settings, vec![spec("a"), spec("b")])
            .unwrap();
        t1.route("a").unwrap().state.touch();
        let before = t1.route("a").unwrap().state.last_activity_ms();
        assert!(before.is_some());
        let t2 = handle
            .publish(&settings, vec![spec("a").paused(true)])
            .unwrap();
        assert_eq!(t2.version(), t1.version() + 1);
        let a = t2.route("a").unwrap();
        assert!(a.paused);
        assert!(Arc::ptr_eq(&a.state, &t1.route("a").unwrap().state));
        assert_eq!(a.state.last_activity_ms(), before);
        assert!(t2.route("b").is_none());
    }

    #[test]
    fn invalid_specs_are_refused_and_table_kept() {
        let handle = RouteHandle::new();
        let settings = TableSettings::default();
        handle.publish(&settings, vec![spec("a")]).unwrap();
        let mut dup = spec("b");
        dup.labels = vec!["a".into()];
        let err = handle.publish(&settings, vec![spec("a"), dup]).unwrap_err();
        assert!(err.to_string().contains("claimed by both"), "{err}");
        let mut bad = spec("c");
        bad.slugs = vec!["lab".into()];
        let err = handle.publish(&settings, vec![bad]).unwrap_err();
        assert!(err.to_string().contains("slug"), "{err}");
        let mut bad_host = spec("d");
        bad_host.hosts = vec!["a b.example".into()];
        assert!(handle.publish(&settings, vec![bad_host]).is_err());
        assert!(handle
            .publish(&settings, vec![spec("x"), spec("x")])
            .is_err());
        assert_eq!(handle.load().version(), 1);
        assert!(handle.load().route("a").is_some());
    }

    #[test]
    fn apply_upserts_and_removes_by_id_and_keeps_state() {
        let handle = RouteHandle::new();
        let settings = TableSettings {
            base_domains: vec!["example.test".into()],
            portal_host: None,
        };
        handle
            .publish(&settings, vec![spec("a"), spec("b")])
            .unwrap();
        let state_a = Arc::clone(&handle.load().route("a").unwrap().state);
        let paused = spec("a").paused(true);
        let t = handle
            .apply(
                None,
                vec![
                    RouteChange::Upsert(paused),
                    RouteChange::Remove("b".into()),
                    RouteChange::Upsert(spec("c")),
                    RouteChange::Remove("missing".into()),
                ],
            )
            .unwrap();
        assert_eq!(t.version(), 2);
        assert!(t.route("a").unwrap().paused);
        assert!(Arc::ptr_eq(&t.route("a").unwrap().state, &state_a));
        assert!(t.route("b").is_none());
        assert!(t.route("c").is_some());
        assert_eq!(t.base_domains().collect::<Vec<_>>(), ["example.test"]);

        // A conflicting change refuses the whole call.
        let mut clash = spec("d");
        clash.labels = vec!["c".into()];
        let err = handle
            .apply(
                None,
                vec![RouteChange::Remove("a".into()), RouteChange::Upsert(clash)],
            )
            .unwrap_err();
        assert!(err.to_string().contains("claimed by both"), "{err}");
        assert_eq!(handle.load().version(), 2);
        assert!(handle.load().route("a").is_some());
    }

    #[test]
    fn apply_changes_settings_without_touching_routes() {
        let handle = RouteHandle::new();
        handle
            .publish(&TableSettings::default(), vec![spec("a")])
            .unwrap();
        let settings = TableSettings {
            base_domains: vec!["Sessions.Example.".into()],
            portal_host: Some("Portal.Example".into()),
        };
        let t = handle.apply(Some(&settings), vec![]).unwrap();
        assert_eq!(t.base_domains().collect::<Vec<_>>(), ["sessions.example"]);
        assert_eq!(t.portal_host(), Some("portal.example"));
        let m = crate::router::lookup(&t, "a.sessions.example", "/").unwrap();
        assert_eq!(&*m.route.id, "a");
        // Later changes keep the settings.
        let t = handle
            .apply(None, vec![RouteChange::Upsert(spec("b"))])
            .unwrap();
        assert_eq!(t.portal_host(), Some("portal.example"));
        assert_eq!(t.settings().base_domains, ["Sessions.Example."]);
    }
}
