//! Activity going back to the control plane: which routes were used since
//! the last report, and when. The control plane merges the reports of all
//! its gateways by keeping the latest time per route, which is what its
//! reaper and `last_activity` read.

use std::collections::HashMap;
use std::sync::Arc;

use crate::table::RouteTable;

/// Remembers what was last reported per route, so that each report holds
/// only the routes whose activity moved since.
#[derive(Debug, Default)]
pub struct ActivityCollector {
    reported: HashMap<Arc<str>, u64>,
}

impl ActivityCollector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The routes of `table` used since the last call, with the Unix
    /// millisecond of their last activity.
    pub fn collect(&mut self, table: &RouteTable) -> Vec<(Arc<str>, u64)> {
        let mut moved = Vec::new();
        for route in table.routes().iter() {
            let Some(ms) = route.state.last_activity_ms() else {
                continue;
            };
            match self.reported.get_mut(&route.id) {
                Some(last) if *last >= ms => {}
                Some(last) => {
                    *last = ms;
                    moved.push((Arc::clone(&route.id), ms));
                }
                None => {
                    self.reported.insert(Arc::clone(&route.id), ms);
                    moved.push((Arc::clone(&route.id), ms));
                }
            }
        }
        // Forget routes that are gone, now and then, not on every call.
        if self.reported.len() > 2 * table.len() + 1024 {
            self.reported.retain(|id, _| table.route(id).is_some());
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{test_spec, RouteHandle, TableSettings};

    #[test]
    fn only_routes_used_since_the_last_report_are_reported() {
        let routes = RouteHandle::new();
        routes
            .publish(
                &TableSettings::default(),
                vec![test_spec("a"), test_spec("b")],
            )
            .unwrap();
        let mut c = ActivityCollector::new();
        assert!(c.collect(&routes.load()).is_empty());
        let table = routes.load();
        table.route("a").unwrap().state.observe_activity(5_000);
        assert_eq!(c.collect(&table), vec![("a".into(), 5_000)]);
        assert!(c.collect(&table).is_empty(), "nothing moved since");
        table.route("a").unwrap().state.observe_activity(9_000);
        table.route("b").unwrap().state.observe_activity(1_000);
        let mut again = c.collect(&table);
        again.sort();
        assert_eq!(again, vec![("a".into(), 9_000), ("b".into(), 1_000)]);
    }
}
