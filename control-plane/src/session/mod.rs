//! Sessions: the model and its lifecycle.
//!
//! - [`lifecycle`]: the state machine every change goes through.
pub mod lifecycle;

pub use lifecycle::{Action, SessionState, TransitionError};
