//! Waiting without sleeping to synchronise: poll a condition until it holds
//! or a deadline passes, and fail naming what never happened.

use std::time::Duration;

/// How long a server may take to start, or a request to be answered. Generous
/// because CI runs debug builds on two cores.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `f` every 5 ms until it is true; panics, naming `what`, if
/// `deadline` passes first.
pub async fn eventually(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
