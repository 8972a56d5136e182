//! The session-create JSON (`POST /api/v1/sessions`): the body as the API
//! deserialises it (`NewSession`), the record a create makes of it
//! (`ControlPlane::new_record`) and the validation of its target
//! (`session::model::validate_target`), in the API's order, then the route
//! the gateway would get (`publish::route_spec`, `RouteTable::build`).
//!
//! Input: the JSON body. Properties:
//! - it never panics: the body parses and validates, or it is refused with
//!   an error that names a field;
//! - a session that validates compiles into a route, so the gateway's table
//!   never refuses what the API accepted (a refusal there would come after
//!   the record was stored);
//! - its slug and custom domain are in canonical form, and its view and
//!   the view's JSON can be made.
#![no_main]

use control_plane::access::GroupCache;
use control_plane::control::ControlPlane;
use control_plane::error::ControlError;
use control_plane::publish::route_spec;
use control_plane::session::model::{self, NewSession};
use gateway::{RouteTable, TableSettings};
use libfuzzer_sys::fuzz_target;

/// A fixed "now" (Unix milliseconds), late 2025.
const NOW_MS: u64 = 1_765_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<NewSession>(data) else {
        return;
    };
    let bases = vec!["localhost".to_string(), "sessions.example.com".to_string()];
    let rec = match ControlPlane::new_record(input, NOW_MS, &bases) {
        Ok(rec) => rec,
        Err(ControlError::Invalid(invalid)) => {
            assert!(
                !invalid.field.is_empty(),
                "a refusal without its field: {invalid}"
            );
            return;
        }
        Err(e) => panic!("a create refused with something other than a field's error: {e}"),
    };
    if let Err(invalid) = model::validate_target(&rec) {
        assert!(
            !invalid.field.is_empty(),
            "a refusal without its field: {invalid}"
        );
        return;
    }
    if let Some(slug) = &rec.slug {
        assert_eq!(
            model::normalize_slug(slug).as_deref(),
            Ok(slug.as_str()),
            "stored slug {slug:?} is not canonical"
        );
    }
    if let Some(d) = &rec.custom_domain {
        assert_eq!(
            &gateway::names::normalize_name(d),
            d,
            "stored custom domain {d:?} is not canonical"
        );
    }
    let spec = route_spec(&rec, &GroupCache::new())
        .unwrap_or_else(|e| panic!("a validated session has no route: {e}: {rec:?}"))
        .unwrap_or_else(|| panic!("a new live session is not routed: {rec:?}"));
    let settings = TableSettings {
        base_domains: bases,
        portal_host: Some("portal.example.com".into()),
    };
    if let Err(e) = RouteTable::build(&settings, vec![spec], None, 1) {
        panic!("the gateway refuses a validated session: {e}: {rec:?}");
    }
    let view = rec.view(NOW_MS + 1_000);
    serde_json::to_string(&view).expect("a session view is JSON");
});
