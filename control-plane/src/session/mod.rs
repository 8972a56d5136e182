//! Sessions: the model, its lifecycle, and the reaper.
//!
//! - [`lifecycle`]: the state machine every change goes through.
//! - [`model`]: the records, the API shapes, and input validation.
//! - [`reaper`]: the background task that expires, deletes and purges.
pub mod lifecycle;
pub mod model;
pub mod reaper;

pub use lifecycle::{Action, SessionState, TransitionError};
