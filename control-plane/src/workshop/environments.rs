//! Workshop environments: create, change, stop and delete. A change that
//! can take more sessions (a new environment, more capacity, a larger
//! reserve, more backends) fills the reserve at once.

use super::environment::{
    self as env, Environment, EnvironmentPatch, EnvironmentState, NewEnvironment,
};
use super::{portal, Portal};
use crate::control::origins::check_slug_prefix;
use crate::control::sessions::transition;
use crate::error::ControlError;
use crate::session::lifecycle::{Action, SessionState};
use crate::session::model::invalid;
use crate::store;

impl Portal {
    pub async fn create_environment(
        &self,
        input: NewEnvironment,
    ) -> Result<Environment, ControlError> {
        let rec = env::validate_new(input, self.control.now_ms())?;
        self.check_targets(&rec.targets)?;
        let mut tx = self.control.writes().begin().await?;
        if store::environment_get(&mut tx, &rec.name).await?.is_some() {
            return Err(ControlError::Conflict(format!(
                "environment {:?} already exists",
                rec.name
            )));
        }
        if let Some(prefix) = &rec.slug_prefix {
            check_slug_prefix(&mut tx, &rec.name, prefix).await?;
        }
        store::environment_insert(&mut tx, &rec).await?;
        drop(tx.commit().await?);
        tracing::info!(environment = %rec.name, capacity = rec.capacity, reserved = rec.reserved, "environment created");
        self.refill_reserves().await?;
        self.get_environment(&rec.name).await
    }

    pub async fn list_environments(&self) -> Result<Vec<Environment>, ControlError> {
        let mut c = self.control.store().conn().await?;
        let counts = store::environment_allocations(&mut c).await?;
        Ok(store::environments_list(&mut c)
            .await?
            .iter()
            .map(|e| e.view(counts.get(&e.name).copied().unwrap_or(0)))
            .collect())
    }

    pub async fn get_environment(&self, name: &str) -> Result<Environment, ControlError> {
        let mut c = self.control.store().conn().await?;
        let e = store::environment_get(&mut c, name)
            .await?
            .ok_or_else(|| ControlError::not_found("environment", name))?;
        let n = store::environment_allocations(&mut c)
            .await?
            .get(name)
            .copied()
            .unwrap_or(0);
        Ok(e.view(n))
    }

    /// Changes an environment. Capacity may not drop below what is allocated.
    pub async fn patch_environment(
        &self,
        name: &str,
        patch: EnvironmentPatch,
    ) -> Result<Environment, ControlError> {
        let targets = patch
            .targets
            .as_deref()
            .map(env::validate_targets)
            .transpose()?;
        if let Some(t) = &targets {
            self.check_targets(t)?;
        }
        if let Some(d) = patch.duration {
            env::validate_duration(d)?;
        }
        if let Some(w) = &patch.workshop {
            w.validate()?;
        }
        let mut tx = self.control.writes().begin().await?;
        let mut e = store::environment_get(&mut tx, name)
            .await?
            .ok_or_else(|| ControlError::not_found("environment", name))?;
        patch.apply(&mut e, targets);
        env::validate_counts(e.capacity, e.reserved, e.targets.len())?;
        let allocated = store::environment_allocations(&mut tx)
            .await?
            .get(name)
            .copied()
            .unwrap_or(0);
        if e.capacity < allocated {
            return Err(ControlError::Conflict(format!(
                "environment {name:?} has {allocated} sessions; capacity cannot go below that"
            )));
        }
        store::environment_update(&mut tx, &e).await?;
        drop(tx.commit().await?);
        tracing::info!(environment = %name, "environment changed");
        self.refill_reserves().await?;
        self.get_environment(name).await
    }

    /// Refuses targets that `sessions.allowed_targets` (or the default
    /// rule) does not allow: each becomes a session's target.
    fn check_targets(&self, targets: &[env::Target]) -> Result<(), ControlError> {
        for t in targets {
            self.control
                .target_policy()
                .check(&t.host, t.port)
                .map_err(|m| invalid("targets", format!("{t}: {m}")))?;
        }
        Ok(())
    }

    /// Stops an environment: no new sessions; those it has run to their end.
    pub async fn stop_environment(&self, name: &str) -> Result<Environment, ControlError> {
        let mut tx = self.control.writes().begin().await?;
        let mut e = store::environment_get(&mut tx, name)
            .await?
            .ok_or_else(|| ControlError::not_found("environment", name))?;
        e.state = EnvironmentState::Stopping;
        store::environment_update(&mut tx, &e).await?;
        // Sessions in reserve were never anyone's: they go; the others run on.
        let mut dropped = Vec::new();
        for old in store::sessions_of_environment(&mut tx, name).await? {
            if old.owner == portal::RESERVE_USER && old.state == SessionState::Pending {
                let rec = transition(&old, Action::Delete, None, self.control.now_ms())?;
                store::session_update(&mut tx, &rec).await?;
                dropped.push((old, rec));
            }
        }
        let allocated = store::environment_allocations(&mut tx)
            .await?
            .get(name)
            .copied()
            .unwrap_or(0);
        let _lock = tx.commit().await?;
        for (old, rec) in &dropped {
            self.control.publish(Some(old), Some(rec)).await?;
        }
        tracing::info!(environment = %name, sessions = allocated, "environment stopping");
        Ok(e.view(allocated))
    }

    /// Deletes an environment that has no unfinished sessions.
    pub async fn delete_environment(&self, name: &str) -> Result<(), ControlError> {
        let mut tx = self.control.writes().begin().await?;
        let allocated = store::environment_allocations(&mut tx)
            .await?
            .get(name)
            .copied()
            .unwrap_or(0);
        if allocated > 0 {
            return Err(ControlError::Conflict(format!(
                "environment {name:?} still has {allocated} sessions; stop it and let them finish, or expire them"
            )));
        }
        if !store::environment_delete(&mut tx, name).await? {
            return Err(ControlError::not_found("environment", name));
        }
        tx.commit().await?;
        tracing::info!(environment = %name, "environment deleted");
        Ok(())
    }
}
