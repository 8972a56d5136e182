//! The environment model and its validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::session::model::{
    invalid, normalize_slug, validate_labels, validate_name, Invalid, MAX_SECS,
};

/// Sessions are named `<environment>-s<NNN>`, which must stay a DNS label.
pub const MAX_ENVIRONMENT_NAME: usize = 50;
/// The most sessions one environment may hold at once.
pub const MAX_CAPACITY: u64 = 10_000;

/// Whether an environment takes new sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum EnvironmentState {
    /// Takes new sessions.
    Running,
    /// Takes none; its sessions run to their end.
    Stopping,
}

impl EnvironmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentState::Running => "RUNNING",
            EnvironmentState::Stopping => "STOPPING",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RUNNING" => Some(EnvironmentState::Running),
            "STOPPING" => Some(EnvironmentState::Stopping),
            _ => None,
        }
    }
}

/// The workshop's catalog entry, as the training portal shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorkshopInfo {
    pub name: String,
    pub title: String,
    pub description: String,
    pub vendor: String,
    pub authors: Vec<String>,
    pub difficulty: String,
    /// Free text, as the portal has it ("30m"); the environment's
    /// `duration` in seconds is what sessions get.
    pub duration: String,
    pub tags: Vec<String>,
    /// What the catalog's `labels[<key>]=<value>` filters match.
    pub labels: BTreeMap<String, String>,
    pub logo: String,
    pub url: String,
}

impl WorkshopInfo {
    /// Its labels are checked as a session's are: keys a `labels[<key>]`
    /// filter can name, values of bounded text.
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_labels(&self.labels).map_err(|e| invalid("workshop.labels", e.message))
    }
}

/// An environment as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Environment {
    pub name: String,
    pub workshop: WorkshopInfo,
    /// Seconds each session lasts (null: no expiry).
    pub duration: Option<u64>,
    /// The most sessions at once.
    pub capacity: u64,
    /// Sessions kept created ahead of requests.
    pub reserved: u64,
    pub state: EnvironmentState,
    /// Backends, `http(s)://host:port`, each serving one session at a time.
    pub targets: Vec<String>,
    /// Verify `https://` targets' certificates.
    pub tls_verify: bool,
    /// Sessions get the slug `<slug_prefix>/<session>` on the portal host,
    /// sharing its one browser origin (`shared_origin`); without it, each
    /// gets a host of its own (`<session>.<base domain>`), the default.
    pub slug_prefix: Option<String>,
    pub extendable: bool,
    /// A request's parameters reach the session's backend as
    /// `X-Workshop-Param-<name>` headers (and a browser's own headers under
    /// that prefix are removed).
    pub parameter_headers: bool,
    pub created: String,
    /// Sessions made from it that are not finished.
    pub allocated: u64,
}

/// `POST /api/v1/environments`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnvironment {
    pub name: String,
    #[serde(default)]
    pub workshop: WorkshopInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    pub capacity: u64,
    #[serde(default)]
    pub reserved: u64,
    pub targets: Vec<String>,
    #[serde(default = "yes")]
    pub tls_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug_prefix: Option<String>,
    #[serde(default = "yes")]
    pub extendable: bool,
    /// Send each request parameter to the session's backend as an
    /// `X-Workshop-Param-<name>` header (default false). Every header a
    /// browser sends under that prefix is removed first, so the backend can
    /// trust them. Applies to sessions requested after it is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parameter_headers: bool,
}

fn yes() -> bool {
    true
}

/// `PATCH /api/v1/environments/{name}`: each field present is changed.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentPatch {
    pub workshop: Option<WorkshopInfo>,
    /// Seconds; `null` for no expiry.
    #[serde(default, deserialize_with = "crate::session::model::nullable")]
    #[schema(value_type = Option<u64>)]
    pub duration: Option<Option<u64>>,
    pub capacity: Option<u64>,
    pub reserved: Option<u64>,
    pub targets: Option<Vec<String>>,
    pub tls_verify: Option<bool>,
    pub extendable: Option<bool>,
    /// Applies to sessions requested after the change.
    pub parameter_headers: Option<bool>,
}

impl EnvironmentPatch {
    /// Writes every field the patch has into `e`, the targets as validated
    /// by the caller. A workshop without a name takes the environment's.
    pub fn apply(self, e: &mut EnvironmentRecord, targets: Option<Vec<Target>>) {
        use crate::session::model::set_present as set;
        if let Some(w) = self.workshop {
            e.workshop = w;
            if e.workshop.name.is_empty() {
                e.workshop.name = e.name.clone();
            }
        }
        set(&mut e.duration_secs, self.duration);
        set(&mut e.capacity, self.capacity);
        set(&mut e.reserved, self.reserved);
        set(&mut e.targets, targets);
        set(&mut e.tls_verify, self.tls_verify);
        set(&mut e.extendable, self.extendable);
        set(&mut e.parameter_headers, self.parameter_headers);
    }
}

/// What the store holds.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvironmentRecord {
    pub name: String,
    pub workshop: WorkshopInfo,
    pub duration_secs: Option<u64>,
    pub capacity: u64,
    pub reserved: u64,
    pub state: EnvironmentState,
    pub targets: Vec<Target>,
    pub tls_verify: bool,
    pub slug_prefix: Option<String>,
    pub extendable: bool,
    /// See [`Environment::parameter_headers`].
    pub parameter_headers: bool,
    pub created_ms: u64,
    pub next_session: u64,
}

/// A backend of the pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses `http(s)://host:port` (an IPv6 host in brackets).
    pub fn parse(s: &str) -> Result<Target, String> {
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{s:?} must start with http:// or https://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} needs a port (http(s)://host:port)"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?}: the port must be 1-65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        {
            return Err(format!("{s:?}: not a host name or IP address"));
        }
        Ok(Target {
            https,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Checks a new environment, returning its record (the time and counter set
/// by the caller).
pub fn validate_new(input: NewEnvironment, now_ms: u64) -> Result<EnvironmentRecord, Invalid> {
    validate_name("name", &input.name)?;
    if input.name.len() > MAX_ENVIRONMENT_NAME {
        return Err(invalid(
            "name",
            format!("at most {MAX_ENVIRONMENT_NAME} characters, so that session names (<name>-s001) stay DNS labels"),
        ));
    }
    let targets = validate_targets(&input.targets)?;
    validate_counts(input.capacity, input.reserved, targets.len())?;
    validate_duration(input.duration)?;
    input.workshop.validate()?;
    let slug_prefix = input
        .slug_prefix
        .as_deref()
        .map(normalize_slug)
        .transpose()
        .map_err(|e| invalid("slug_prefix", e.message))?;
    let mut workshop = input.workshop;
    if workshop.name.is_empty() {
        workshop.name = input.name.clone();
    }
    Ok(EnvironmentRecord {
        name: input.name,
        workshop,
        duration_secs: input.duration,
        capacity: input.capacity,
        reserved: input.reserved,
        state: EnvironmentState::Running,
        targets,
        tls_verify: input.tls_verify,
        slug_prefix,
        extendable: input.extendable,
        parameter_headers: input.parameter_headers,
        created_ms: now_ms,
        next_session: 1,
    })
}

pub fn validate_targets(targets: &[String]) -> Result<Vec<Target>, Invalid> {
    if targets.is_empty() {
        return Err(invalid("targets", "at least one backend is needed"));
    }
    let mut out: Vec<Target> = Vec::with_capacity(targets.len());
    for t in targets {
        let t = Target::parse(t).map_err(|m| invalid("targets", m))?;
        if out.contains(&t) {
            return Err(invalid("targets", format!("{t} is listed twice")));
        }
        out.push(t);
    }
    Ok(out)
}

pub fn validate_counts(capacity: u64, reserved: u64, targets: usize) -> Result<(), Invalid> {
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(invalid("capacity", format!("must be 1-{MAX_CAPACITY}")));
    }
    if capacity > targets as u64 {
        return Err(invalid(
            "capacity",
            format!("{capacity} sessions need at least as many targets; there are {targets}"),
        ));
    }
    if reserved > capacity {
        return Err(invalid(
            "reserved",
            format!("{reserved} is more than the capacity ({capacity})"),
        ));
    }
    Ok(())
}

pub fn validate_duration(d: Option<u64>) -> Result<(), Invalid> {
    match d {
        Some(s) if s == 0 || s > MAX_SECS => {
            Err(invalid("duration", format!("must be 1-{MAX_SECS} seconds")))
        }
        _ => Ok(()),
    }
}

impl EnvironmentRecord {
    pub fn view(&self, allocated: u64) -> Environment {
        Environment {
            name: self.name.clone(),
            workshop: self.workshop.clone(),
            duration: self.duration_secs,
            capacity: self.capacity,
            reserved: self.reserved,
            state: self.state,
            targets: self.targets.iter().map(Target::to_string).collect(),
            tls_verify: self.tls_verify,
            slug_prefix: self.slug_prefix.clone(),
            extendable: self.extendable,
            parameter_headers: self.parameter_headers,
            created: crate::time::rfc3339_millis(self.created_ms),
            allocated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("https://10.0.0.7:8443/").unwrap();
        assert_eq!((t.https, t.host.as_str(), t.port), (true, "10.0.0.7", 8443));
        assert_eq!(t.to_string(), "https://10.0.0.7:8443");
        assert_eq!(
            Target::parse("http://[::1]:80").unwrap().to_string(),
            "http://[::1]:80"
        );
        for bad in [
            "10.0.0.7:80",
            "http://host",
            "http://host:0",
            "ftp://h:1",
            "http://a b:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_and_names() {
        assert!(validate_counts(2, 1, 2).is_ok());
        assert!(validate_counts(3, 1, 2).is_err());
        assert!(validate_counts(2, 3, 2).is_err());
        assert!(validate_counts(0, 0, 2).is_err());
        let new = |name: &str| NewEnvironment {
            name: name.into(),
            workshop: WorkshopInfo::default(),
            duration: Some(1800),
            capacity: 1,
            reserved: 0,
            targets: vec!["http://127.0.0.1:1".into()],
            tls_verify: true,
            slug_prefix: None,
            extendable: true,
            parameter_headers: false,
        };
        let rec = validate_new(new("lab-w01"), 5).unwrap();
        assert_eq!(rec.workshop.name, "lab-w01");
        assert_eq!(rec.state, EnvironmentState::Running);
        assert!(validate_new(new(&"a".repeat(51)), 5).is_err());
        assert!(validate_new(new("Bad_Name"), 5).is_err());
    }
}
