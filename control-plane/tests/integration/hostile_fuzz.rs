//! What the fuzz targets in `fuzz/` found in the control plane, each a test
//! against `sessiongate serve` in process.

use serde_json::json;
use testkit::server::{public_session, InProcess};
use testkit::temp_dir;

/// Found by `fuzz/fuzz_targets/session_json.rs`: a create computed the
/// expiry, `now + duration * 1000` milliseconds, before validation refused
/// the duration, so a duration past `u64::MAX / 1000` overflowed: a panic
/// in the handler (debug builds, the tests'), a wrapped expiry in release
/// builds. It must be refused like any other out-of-range duration.
#[tokio::test]
async fn a_duration_too_long_for_milliseconds_is_refused_and_stores_nothing() {
    let dir = temp_dir("hostile-fuzz-duration");
    let sg = InProcess::start(&dir, "").await;
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
    for duration in [u64::MAX, u64::MAX / 1000 + 1, u64::MAX / 1000] {
        let mut body = public_session("lab", 9);
        body["duration"] = json!(duration);
        let (s, v) = sg.api("POST", "/api/v1/sessions", Some(body)).await;
        assert_eq!(s, 422, "duration {duration}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("duration: "),
            "duration {duration}: {v}"
        );
        let (s, v) = sg.api("GET", "/api/v1/sessions/lab", None).await;
        assert_eq!(s, 404, "duration {duration} stored a session: {v}");
    }
}
