//! Workshop environments and the training-portal-compatible API.
//!
//! An environment is a workshop (its catalog metadata) served by a pool of
//! backends, each serving one session at a time. Sessions made from it are
//! ordinary sessions (see `session`) with `environment` set and the backend
//! they hold as their target; capacity, reserved sessions and allocation are
//! worked out from the sessions table, so there is one source of truth.

pub mod environment;
pub mod portal;
