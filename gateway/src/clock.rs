//! Wall-clock time as plain Unix numbers.
//!
//! What the data plane keeps about time lives in atomics and cookies, shared
//! between threads and with the control plane: route activity and request
//! body progress in milliseconds, cookie expiry in seconds. A clock that
//! reads before 1970 reads 0 rather than failing a request.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, as cookie expiry is written.
pub(crate) fn unix_secs() -> u64 {
    unix_millis() / 1000
}
