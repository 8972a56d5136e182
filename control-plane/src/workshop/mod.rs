//! Workshop environments and the training-portal-compatible API.
//!
//! An environment is a workshop (its catalog metadata) served by a pool of
//! backends, each serving one session at a time. Sessions made from it are
//! ordinary sessions (see `session`) with `environment` set and the backend
//! they hold as their target; capacity, reserved sessions and allocation are
//! worked out from the sessions table, so there is one source of truth.
//!
//! [`Portal`] is built on the [`ControlPlane`] (it writes through the same
//! write lock, store and publisher); the control plane knows nothing of it.
//!
//! # Layout
//! - [`environment`]: the environment model and its validation.
//! - [`portal`]: the training portal's request and answer shapes, errors.
//! - [`input`]: what a request may carry (user id, e-mail, parameters).
//! - [`oauth`]: `/oauth2/token/` and `/oauth2/revoke-token/`: the password
//!   and refresh grants (which rotate), revocation.
//! - [`environments`]: creating, changing, stopping and deleting environments.
//! - [`allocation`]: requests (a user's session, a reserved one, or a new
//!   one on a free backend), reserves.
//! - [`caps`]: the portal-wide session caps, on allocation.
//! - [`catalog`]: what the read endpoints report: the catalogs, an
//!   environment's status, a user's sessions.
//! - [`schedule`]: a session's schedule, extension and termination.

use std::sync::Arc;

use crate::control::ControlPlane;
use crate::error::ControlError;
use crate::session::reaper::ReapReport;

pub mod allocation;
pub mod caps;
pub mod catalog;
pub mod environment;
pub mod environments;
pub mod input;
pub mod oauth;
pub mod portal;
pub mod schedule;

pub use portal::WorkshopSettings;

/// The training portal: workshop environments, their sessions, and the
/// portal's API, on top of the control plane.
pub struct Portal {
    control: Arc<ControlPlane>,
    settings: WorkshopSettings,
}

impl Portal {
    pub fn new(control: Arc<ControlPlane>, settings: WorkshopSettings) -> Portal {
        Portal { control, settings }
    }

    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    pub fn settings(&self) -> &WorkshopSettings {
        &self.settings
    }

    /// One pass of the lifecycle reaper, then the reserves refilled on the
    /// backends that the deleted and expired sessions freed.
    pub async fn reap(&self) -> Result<ReapReport, ControlError> {
        // Another replica runs the reaper and the refill: this one only
        // hands its gateways' activity to the store for it.
        if !self.control.is_leader() {
            self.control.sync_activity().await?;
            return Ok(ReapReport::default());
        }
        let report = self.control.reap().await?;
        self.refill_reserves().await?;
        Ok(report)
    }
}
