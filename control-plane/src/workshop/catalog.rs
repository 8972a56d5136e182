//! What the training portal's read endpoints report, worked out from the
//! environments and their sessions: the catalog of environments
//! (`/workshops/catalog/environments/`) and of workshops
//! (`/workshops/catalog/workshops/`), an environment's status
//! (`/workshops/environment/<name>/status/`) and a user's sessions
//! (`/workshops/user/<user>/sessions/`). The shapes are the portal's key
//! for key, typed as its Go CLI decodes them (EP `client-programs/pkg/
//! educatesrestapi/types.go`): counts and `duration` are integers,
//! `workshop.duration` a string, `authors` and `tags` arrays, `labels`
//! objects.
//!
//! The counts, as the portal's models count them:
//! - `allocated`: live sessions a user holds, pending ones included;
//! - `available`: reserved sessions waiting for a user, never more than
//!   `reserved`;
//! - `portal.sessions.maximum`, `registered`, `anonymous`: the configured
//!   caps (0: none), `allocated` the sum over all environments.
//!
//! Environment states. The portal's are `STARTING`, `RUNNING`, `STOPPING`
//! and `STOPPED`; ours are `running` and `stopping` (no new sessions, the
//! ones it has run to their end). A stopping environment with no live
//! session left is reported `STOPPED`, as the portal's is once its sessions
//! are gone; none is ever `STARTING`, as ours take sessions as soon as they
//! exist. A stopping or stopped one reports `capacity` and `reserved` 0, as
//! the portal's `mark_as_stopping` sets them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::environment::{EnvironmentRecord, EnvironmentState, WorkshopInfo};
use super::portal::{UserSession, RESERVE_USER};
use super::schedule::{schedule, PortalSessionState, ScheduleContext, SessionTimes};
use super::Portal;
use crate::error::ControlError;
use crate::session::lifecycle::SessionState;
use crate::session::model::SessionRecord;
use crate::store::{self, SessionFilter, MAX_PER_PAGE};

/// An environment's state as the portal names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortalEnvironmentState {
    Starting,
    Running,
    Stopping,
    Stopped,
}

impl PortalEnvironmentState {
    /// A `state=` value, in any case (the portal lower-cases them).
    pub fn parse(s: &str) -> Option<PortalEnvironmentState> {
        match s.to_ascii_uppercase().as_str() {
            "STARTING" => Some(PortalEnvironmentState::Starting),
            "RUNNING" => Some(PortalEnvironmentState::Running),
            "STOPPING" => Some(PortalEnvironmentState::Stopping),
            "STOPPED" => Some(PortalEnvironmentState::Stopped),
            _ => None,
        }
    }

    /// What an environment in `state` with `live` live sessions reports.
    pub fn of(state: EnvironmentState, live: u64) -> PortalEnvironmentState {
        match state {
            EnvironmentState::Running => PortalEnvironmentState::Running,
            EnvironmentState::Stopping if live > 0 => PortalEnvironmentState::Stopping,
            EnvironmentState::Stopping => PortalEnvironmentState::Stopped,
        }
    }
}

/// The catalog's filters (`/workshops/catalog/environments/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogQuery {
    /// List each environment's sessions (`sessions=true`).
    pub sessions: bool,
    /// Never empty: `RUNNING` when none is given.
    pub states: Vec<PortalEnvironmentState>,
    /// Workshop names (`name=`, repeatable); `None`: any. The portal reads
    /// an empty `name=` as a name, which no workshop has.
    pub names: Option<Vec<String>>,
    /// `labels[<key>]=<value>`: all must match the workshop's labels.
    pub labels: BTreeMap<String, String>,
}

impl Default for CatalogQuery {
    fn default() -> Self {
        CatalogQuery {
            sessions: false,
            states: vec![PortalEnvironmentState::Running],
            names: None,
            labels: BTreeMap::new(),
        }
    }
}

impl CatalogQuery {
    fn matches(&self, env: &EnvironmentRecord, state: PortalEnvironmentState) -> bool {
        self.states.contains(&state)
            && self
                .names
                .as_ref()
                .is_none_or(|n| n.contains(&env.workshop.name))
            && self
                .labels
                .iter()
                .all(|(k, v)| env.workshop.labels.get(k) == Some(v))
    }
}

/// The portal's own entry in the catalogs.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PortalInfo {
    pub name: String,
    /// Always an object (Backstage reads it with `Object.entries`); none are
    /// configured in sessiongate.
    pub labels: BTreeMap<String, String>,
    pub uid: String,
    /// The route table's version: it moves with every change.
    pub generation: u64,
    pub url: String,
    pub sessions: PortalSessions,
}

/// The caps (`workshop.sessions_*`, 0: none) and what users hold.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PortalSessions {
    pub maximum: u64,
    pub registered: u64,
    pub anonymous: u64,
    /// Live sessions users hold, portal-wide, pending ones included.
    pub allocated: u64,
}

/// A workshop as the catalogs show it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WorkshopEntry {
    #[serde(flatten)]
    pub workshop: WorkshopInfo,
    /// The catalogs' only (not the environment status'): the name of the
    /// workshop's definition, which is its name here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

impl WorkshopEntry {
    fn new(w: &WorkshopInfo, with_resource: bool) -> WorkshopEntry {
        WorkshopEntry {
            workshop: w.clone(),
            resource: with_resource.then(|| w.name.clone()),
        }
    }
}

/// An environment's figures, in every answer that shows one.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EnvironmentFigures {
    /// Seconds a session lasts; 0: no limit.
    pub duration: u64,
    /// 0 once stopping: it takes no more sessions.
    pub capacity: u64,
    pub reserved: u64,
    /// Live sessions users hold, pending ones included.
    pub allocated: u64,
    /// Reserved sessions waiting for a user, never more than `reserved`.
    pub available: u64,
}

/// A session in an environment's listing (`sessions=true`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SessionItem {
    pub name: String,
    pub state: PortalSessionState,
    pub namespace: String,
    pub user: String,
    #[serde(flatten)]
    pub times: SessionTimes,
}

/// An environment in `/workshops/catalog/environments/`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CatalogEnvironment {
    pub name: String,
    pub state: PortalEnvironmentState,
    pub workshop: WorkshopEntry,
    #[serde(flatten)]
    pub figures: EnvironmentFigures,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<SessionItem>>,
}

/// `GET /workshops/catalog/environments/`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EnvironmentsCatalog {
    pub portal: PortalInfo,
    pub environments: Vec<CatalogEnvironment>,
}

/// `GET /workshops/environment/<name>/status/`: the portal puts `sessions`
/// before the figures here, and no `resource` in `workshop`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EnvironmentStatus {
    pub name: String,
    pub state: PortalEnvironmentState,
    pub workshop: WorkshopEntry,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<SessionItem>>,
    #[serde(flatten)]
    pub figures: EnvironmentFigures,
}

/// A workshop's environment in `/workshops/catalog/workshops/`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EnvironmentSummary {
    pub name: String,
    pub state: PortalEnvironmentState,
    #[serde(flatten)]
    pub figures: EnvironmentFigures,
}

/// A workshop in `/workshops/catalog/workshops/`: its entry, and the
/// environment that serves it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CatalogWorkshop {
    #[serde(flatten)]
    pub workshop: WorkshopEntry,
    pub environment: EnvironmentSummary,
}

/// `GET /workshops/catalog/workshops/`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WorkshopsCatalog {
    pub portal: PortalInfo,
    pub workshops: Vec<CatalogWorkshop>,
}

/// The environments and their live sessions at one moment: what every
/// read endpoint is computed from.
pub struct Snapshot {
    environments: Vec<EnvironmentRecord>,
    /// Live sessions by environment, by name.
    sessions: HashMap<String, Vec<SessionRecord>>,
    /// When pending sessions were requested.
    requested: HashMap<String, u64>,
    now_ms: u64,
    activation_deadline_ms: u64,
}

impl Snapshot {
    fn live(&self, env: &str) -> &[SessionRecord] {
        self.sessions.get(env).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `e`'s state and figures.
    fn figures(&self, e: &EnvironmentRecord) -> (PortalEnvironmentState, EnvironmentFigures) {
        let live = self.live(&e.name);
        let in_reserve = live.iter().filter(|s| s.owner == RESERVE_USER).count() as u64;
        let state = PortalEnvironmentState::of(e.state, live.len() as u64);
        let open = state == PortalEnvironmentState::Running;
        let figures = EnvironmentFigures {
            duration: e.duration_secs.unwrap_or(0),
            capacity: if open { e.capacity } else { 0 },
            reserved: if open { e.reserved } else { 0 },
            allocated: live.len() as u64 - in_reserve,
            available: in_reserve.min(e.reserved),
        };
        (state, figures)
    }

    /// The sessions users hold in `e`, as listed with `sessions=true`.
    fn session_items(&self, e: &EnvironmentRecord) -> Vec<SessionItem> {
        self.live(&e.name)
            .iter()
            .filter(|s| s.owner != RESERVE_USER)
            .map(|s| {
                let sc = self.schedule_of(s, e.extendable);
                SessionItem {
                    name: s.name.clone(),
                    state: sc.status,
                    namespace: s.name.clone(),
                    user: s.owner.clone(),
                    times: (&sc).into(),
                }
            })
            .collect()
    }

    fn schedule_of(&self, s: &SessionRecord, env_extendable: bool) -> super::schedule::Schedule {
        let ctx = ScheduleContext {
            requested_ms: self.requested.get(&s.name).copied(),
            environment_extendable: env_extendable,
            activation_deadline_ms: self.activation_deadline_ms,
        };
        schedule(s, &ctx, self.now_ms)
    }

    /// Live sessions users hold, portal-wide.
    pub fn allocated(&self) -> u64 {
        self.environments
            .iter()
            .map(|e| self.figures(e).1.allocated)
            .sum()
    }

    pub fn environments(&self, q: &CatalogQuery) -> Vec<CatalogEnvironment> {
        self.environments
            .iter()
            .filter_map(|e| {
                let (state, figures) = self.figures(e);
                q.matches(e, state).then(|| CatalogEnvironment {
                    name: e.name.clone(),
                    state,
                    workshop: WorkshopEntry::new(&e.workshop, true),
                    figures,
                    sessions: q.sessions.then(|| self.session_items(e)),
                })
            })
            .collect()
    }

    /// `name`'s status, if there is such an environment (in any state).
    pub fn status(&self, name: &str, with_sessions: bool) -> Option<EnvironmentStatus> {
        let e = self.environments.iter().find(|e| e.name == name)?;
        let (state, figures) = self.figures(e);
        Some(EnvironmentStatus {
            name: e.name.clone(),
            state,
            workshop: WorkshopEntry::new(&e.workshop, false),
            sessions: with_sessions.then(|| self.session_items(e)),
            figures,
        })
    }

    /// The workshops of the running environments.
    pub fn workshops(&self) -> Vec<CatalogWorkshop> {
        self.environments
            .iter()
            .filter_map(|e| {
                let (state, figures) = self.figures(e);
                (state == PortalEnvironmentState::Running).then(|| CatalogWorkshop {
                    workshop: WorkshopEntry::new(&e.workshop, true),
                    environment: EnvironmentSummary {
                        name: e.name.clone(),
                        state,
                        figures,
                    },
                })
            })
            .collect()
    }
}

impl Portal {
    /// Every environment with its live sessions, read on one connection.
    pub async fn snapshot(&self) -> Result<Snapshot, ControlError> {
        let mut c = self.control.store().conn().await?;
        let environments = store::environments_list(&mut c).await?;
        let mut sessions = HashMap::new();
        for e in &environments {
            let live: Vec<SessionRecord> = store::sessions_of_environment(&mut c, &e.name)
                .await?
                .into_iter()
                .filter(|s| s.state.is_live())
                .collect();
            sessions.insert(e.name.clone(), live);
        }
        let requested = store::newest_access_links(&mut c, None).await?;
        Ok(Snapshot {
            environments,
            sessions,
            requested,
            now_ms: self.control.now_ms(),
            activation_deadline_ms: self.activation_deadline_ms(),
        })
    }

    /// The portal's entry, with `allocated` from `snapshot`.
    pub fn portal_info(&self, snapshot: &Snapshot) -> PortalInfo {
        let caps = self.settings.caps;
        PortalInfo {
            name: self.settings.portal_name.clone(),
            labels: BTreeMap::new(),
            uid: self.portal_uid(),
            generation: self.control.routes().load().version(),
            url: self.settings.portal_url.clone(),
            sessions: PortalSessions {
                maximum: caps.maximum,
                registered: caps.registered,
                anonymous: caps.anonymous,
                allocated: snapshot.allocated(),
            },
        }
    }

    /// A portal user's live sessions of environments, by name: the portal
    /// lists pending ones too. The reserve's user holds none.
    pub async fn user_sessions(&self, user: &str) -> Result<Vec<UserSession>, ControlError> {
        if user == RESERVE_USER {
            return Ok(Vec::new());
        }
        let mut c = self.control.store().conn().await?;
        let envs: HashMap<String, EnvironmentRecord> = store::environments_list(&mut c)
            .await?
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        let filter = SessionFilter {
            owner: Some(user.to_string()),
            states: SessionState::ALL
                .into_iter()
                .filter(|s| s.is_live())
                .collect(),
            page: 1,
            per_page: MAX_PER_PAGE,
            ..SessionFilter::default()
        };
        let (sessions, _) = store::sessions_list(&mut c, &filter).await?;
        let requested = store::newest_access_links(&mut c, None).await?;
        let now = self.control.now_ms();
        let mut out: Vec<UserSession> = sessions
            .into_iter()
            .filter_map(|s| {
                let e = envs.get(s.environment.as_deref()?)?;
                let ctx = ScheduleContext {
                    requested_ms: requested.get(&s.name).copied(),
                    environment_extendable: e.extendable,
                    activation_deadline_ms: self.activation_deadline_ms(),
                };
                let sc = schedule(&s, &ctx, now);
                Some(UserSession {
                    name: s.name.clone(),
                    namespace: s.name,
                    workshop: e.workshop.name.clone(),
                    environment: e.name.clone(),
                    times: (&sc).into(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_in_any_case() {
        use PortalEnvironmentState::*;
        for (raw, want) in [
            ("RUNNING", Some(Running)),
            ("running", Some(Running)),
            ("Stopping", Some(Stopping)),
            ("stopped", Some(Stopped)),
            ("STARTING", Some(Starting)),
            ("RUNNNG", None),
            ("", None),
        ] {
            assert_eq!(PortalEnvironmentState::parse(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn a_stopping_environment_is_stopped_once_its_sessions_are_gone() {
        use PortalEnvironmentState as P;
        assert_eq!(P::of(EnvironmentState::Running, 0), P::Running);
        assert_eq!(P::of(EnvironmentState::Stopping, 2), P::Stopping);
        assert_eq!(P::of(EnvironmentState::Stopping, 0), P::Stopped);
    }
}
