//! The portal-wide session caps (`workshop.sessions_maximum`,
//! `sessions_registered`, `sessions_anonymous`), enforced on allocation the
//! way the training portal's `retrieve_session_for_user` and
//! `create_session_for_user` do (EP `training-portal/.../manager/sessions.py`
//! and `models.py` `session_permitted_for_user`):
//!
//! - a user who already holds a live session of the environment gets it
//!   back whatever the caps (the caller never asks us then);
//! - a user of the request endpoint holding `anonymous` live sessions of
//!   environments gets none: the portal puts every user its REST API makes
//!   in the `anonymous` group;
//! - a session taken from the environment's reserve is already counted, so
//!   only the per-user cap applies to it;
//! - a new session needs fewer than `maximum` sessions held by users
//!   portal-wide; if the reserves fill the rest of `maximum`, the oldest
//!   reserved session (of any environment) gives way to it;
//! - reserves are only topped up while all live sessions, reserves
//!   included, stay below `maximum`.
//!
//! `registered` is reported in the catalog as configured, but holds no one
//! to it: sessiongate has no registration of its own, every user of the
//! workshop API is a REST user. 0 means no limit, as in the portal.
//!
//! A refusal is [`WorkshopError::Unavailable`], which the request endpoint
//! answers as the portal does: 503 `No session available`.

use crate::store::Conn;

use super::portal::{self, WorkshopError};
use super::Portal;
use crate::control::sessions::transition;
use crate::error::ControlError;
use crate::session::lifecycle::{Action, SessionState};
use crate::session::model::SessionRecord;
use crate::store;

/// The largest value a cap may be configured to: well above any portal's
/// sessions (an environment holds at most 10,000), low enough to be a
/// number someone meant.
pub const MAX_SESSIONS_CAP: u64 = 1_000_000;

/// The configured caps; 0 is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCaps {
    pub maximum: u64,
    pub registered: u64,
    pub anonymous: u64,
}

/// Whether a request may have a new session (one not from a reserve).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewSession {
    Allowed,
    /// Only if the oldest reserved session gives way to it.
    AfterGivingUpReserve,
    Refused,
}

impl SessionCaps {
    /// Whether a user of the request endpoint who holds `held` live
    /// sessions of environments may have another.
    pub fn admits_user(&self, held: u64) -> bool {
        self.anonymous == 0 || held < self.anonymous
    }

    /// Whether a new session may be made, with `allocated` sessions held by
    /// users and `active` live sessions in all (reserves included).
    pub fn new_session(&self, allocated: u64, active: u64) -> NewSession {
        if self.maximum == 0 {
            NewSession::Allowed
        } else if allocated >= self.maximum {
            NewSession::Refused
        } else if active < self.maximum {
            NewSession::Allowed
        } else {
            NewSession::AfterGivingUpReserve
        }
    }

    /// Whether another reserved session may be made with `active` live
    /// sessions in all.
    pub fn reserve_room(&self, active: u64) -> bool {
        self.maximum == 0 || active < self.maximum
    }
}

impl Portal {
    /// The caps' part of a request for `env_name` (whose sessions are
    /// `sessions`) by `user` (an existing user, or `None` for one the
    /// request makes). Called in the request's transaction, once the
    /// environment has been found to take it. Nothing to do when the user
    /// holds a live session there (it is theirs again). Returns the
    /// reserved sessions it gave up (deleted, to be published after the
    /// commit), or `Unavailable`.
    pub(super) async fn apply_session_caps(
        &self,
        tx: &mut Conn,
        env_name: &str,
        user: Option<&str>,
        sessions: &[SessionRecord],
        now: u64,
    ) -> Result<Vec<(SessionRecord, SessionRecord)>, WorkshopError> {
        let caps = self.settings.caps;
        let holds_one = |u: &str| sessions.iter().any(|s| s.owner == u && s.state.is_live());
        if user.is_some_and(holds_one) {
            return Ok(Vec::new());
        }
        let unavailable = || WorkshopError::Unavailable(env_name.to_string());
        if let Some(u) = user.filter(|_| caps.anonymous > 0) {
            if !caps.admits_user(store::portal_sessions_of_owner(tx, u).await?) {
                return Err(unavailable());
            }
        }
        let from_reserve = sessions
            .iter()
            .any(|s| s.owner == portal::RESERVE_USER && s.state == SessionState::Pending);
        if from_reserve || caps.maximum == 0 {
            return Ok(Vec::new());
        }
        let (allocated, active) = store::portal_session_counts(tx, portal::RESERVE_USER).await?;
        match caps.new_session(allocated, active) {
            NewSession::Allowed => Ok(Vec::new()),
            NewSession::Refused => Err(unavailable()),
            NewSession::AfterGivingUpReserve => {
                let Some(name) = store::oldest_reserved_session(tx, portal::RESERVE_USER).await?
                else {
                    // Nothing to give up: the sessions over the maximum are
                    // users' (the maximum was lowered); refuse.
                    return Err(unavailable());
                };
                let Some(old) = store::session_get(tx, &name).await? else {
                    return Err(unavailable());
                };
                let rec = transition(&old, Action::Delete, None, now)?;
                store::session_update_row(tx, &rec).await?;
                tracing::info!(session = %name, environment = %env_name, "reserved session given up: workshop.sessions_maximum reached");
                Ok(vec![(old, rec)])
            }
        }
    }

    /// Whether a reserve may grow by one under `workshop.sessions_maximum`.
    pub(super) async fn reserve_has_room(&self, tx: &mut Conn) -> Result<bool, ControlError> {
        let caps = self.settings.caps;
        if caps.maximum == 0 {
            return Ok(true);
        }
        let (_, active) = store::portal_session_counts(tx, portal::RESERVE_USER).await?;
        Ok(caps.reserve_room(active))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portal's rules, case by case.
    #[test]
    fn caps_decide_as_the_portal_does() {
        let none = SessionCaps::default();
        assert!(none.admits_user(1_000));
        assert_eq!(none.new_session(1_000, 1_000), NewSession::Allowed);
        assert!(none.reserve_room(1_000));

        let caps = SessionCaps {
            maximum: 3,
            registered: 0,
            anonymous: 2,
        };
        assert!(caps.admits_user(1));
        assert!(!caps.admits_user(2), "the cap counts what the user holds");
        assert_eq!(caps.new_session(2, 2), NewSession::Allowed);
        assert_eq!(
            caps.new_session(2, 3),
            NewSession::AfterGivingUpReserve,
            "reserves fill the rest: one gives way"
        );
        assert_eq!(caps.new_session(3, 3), NewSession::Refused);
        assert_eq!(caps.new_session(4, 4), NewSession::Refused);
        assert!(caps.reserve_room(2));
        assert!(!caps.reserve_room(3));
    }
}
