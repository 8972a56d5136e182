//! Sessions: the model, its lifecycle, and the reaper.
//!
//! - [`lifecycle`]: the state machine every change goes through.
//! - [`model`]: the records, the API shapes, and input validation.
//! - [`reaper`]: the background task that expires, deletes and purges.
//! - [`targets`]: where sessions may send traffic (`sessions.allowed_targets`).
pub mod lifecycle;
pub mod model;
pub mod reaper;
pub mod targets;

pub use lifecycle::{Action, SessionState, TransitionError};
