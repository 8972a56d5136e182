//! The handle through which every reader loads the current table and every
//! writer swaps in the next one.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{RouteChange, RouteSpec, RouteTable, TableError, TableSettings};

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
            }),
        }
    }

    /// The current table: one atomic load.
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.inner.table.load()
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
        Ok(table)
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
        next.apply_changes(changes)?;
        let next = Arc::new(next);
        self.inner.table.store(Arc::clone(&next));
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
        let results: Vec<Result<(), TableError>> = groups
            .into_iter()
            .map(|changes| {
                let nonempty = !changes.is_empty();
                let result = next.apply_changes(changes);
                changed |= nonempty && result.is_ok();
                result
            })
            .collect();
        let version = if changed {
            let version = next.version;
            self.inner.table.store(Arc::new(next));
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
