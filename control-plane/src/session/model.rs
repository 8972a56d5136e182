//! The records the control plane keeps — users, groups, sessions — and the
//! shapes the API reads and writes. Validation lives here so that the API,
//! the workshop API and `ctl` refuse bad input the same way, before anything
//! is stored.

use std::collections::BTreeMap;

use gateway::names;
use gateway::table::is_redirect_url;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::lifecycle::SessionState;
use crate::time::rfc3339_millis;

/// A person who can own sessions and be a member of groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// Generated at creation, never reused.
    pub id: String,
    /// Unique; what sessions and groups refer to.
    pub name: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub created: String,
    /// The groups the user is a member of.
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
}

/// A change to a user; absent fields stay as they are, `null` clears.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub last_name: Option<Option<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub name: String,
    pub members: Vec<String>,
    pub created: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// Forwarded to `remote_host:remote_port`.
    Tunnel,
    /// Answered with a redirect to an external `url`.
    Link,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Tunnel => "tunnel",
            SessionKind::Link => "link",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tunnel" => Some(SessionKind::Tunnel),
            "link" => Some(SessionKind::Link),
            _ => None,
        }
    }
}

/// A session as stored. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub name: String,
    pub kind: SessionKind,
    pub remote_host: Option<String>,
    pub remote_port: Option<u16>,
    pub url: Option<String>,
    pub https: bool,
    pub tls_verify: bool,
    /// Normalised: a leading `/`, no trailing `/`.
    pub slug: Option<String>,
    /// The creator accepted that its slug shares the portal host's browser
    /// origin with other users' slug sessions.
    pub shared_origin: bool,
    pub strip_prefix: bool,
    pub rewrite_host: bool,
    /// Pass on upgrades to any protocol, not only WebSocket.
    pub allow_any_upgrade: bool,
    /// Lower case, no trailing dot.
    pub custom_domain: Option<String>,
    pub workspace_port: Option<u16>,
    pub owner: String,
    /// Sorted, without duplicates.
    pub groups: Vec<String>,
    pub public: bool,
    pub state: SessionState,
    pub created_ms: u64,
    pub activated_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub last_activity_ms: Option<u64>,
    /// When it was paused; the expiry clock is stopped from then on.
    pub paused_ms: Option<u64>,
    /// When it entered its current state (eviction age, retention).
    pub state_changed_ms: u64,
    /// What `keepalive` and `extend` add to `expires`.
    pub duration_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub extendable: bool,
    pub environment: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// A pending session not activated by then is deleted; `None`: its
    /// creation plus the configured activation deadline.
    pub activate_by_ms: Option<u64>,
    /// The analytics webhook a training-portal request named, kept as the
    /// portal keeps it (sessiongate sends it no events).
    pub analytics_url: Option<String>,
    /// The training-portal request's parameters, as given.
    pub parameters: Vec<RequestParameter>,
    /// The route sends `parameters` to the backend as headers
    /// ([`parameter_header`]); from the environment, when a request took
    /// the session.
    pub parameter_headers: bool,
}

/// A training-portal request parameter (`{"parameters": [{"name", "value"}]}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestParameter {
    pub name: String,
    pub value: String,
}

/// The header prefix of request parameters sent to the backend. A route
/// that sends them removes every client header under it, so that the app
/// can trust what it reads there.
pub const PARAMETER_HEADER_PREFIX: &str = "X-Workshop-Param-";

/// The header a parameter travels in: `X-Workshop-Param-<name>` (header
/// names are case-insensitive: `name` travels as it is and reaches the app
/// in lower case over HTTP/2 or from hyper).
pub fn parameter_header(name: &str) -> String {
    format!("{PARAMETER_HEADER_PREFIX}{name}")
}

#[cfg(test)]
impl SessionRecord {
    /// A tunnel session `name` of user `ann` to `localhost:8888`, in
    /// `state` since its creation at `at_ms`, with nothing else set: what
    /// the unit tests of the lifecycle rules start from.
    pub(crate) fn for_test(name: &str, state: SessionState, at_ms: u64) -> SessionRecord {
        SessionRecord {
            name: name.into(),
            kind: SessionKind::Tunnel,
            remote_host: Some("localhost".into()),
            remote_port: Some(8888),
            url: None,
            https: false,
            tls_verify: true,
            slug: None,
            shared_origin: false,
            strip_prefix: false,
            rewrite_host: false,
            allow_any_upgrade: false,
            custom_domain: None,
            workspace_port: None,
            owner: "ann".into(),
            groups: vec![],
            public: false,
            state,
            created_ms: at_ms,
            activated_ms: None,
            expires_ms: None,
            last_activity_ms: None,
            paused_ms: None,
            state_changed_ms: at_ms,
            duration_secs: None,
            idle_timeout_secs: None,
            extendable: true,
            environment: None,
            labels: BTreeMap::new(),
            activate_by_ms: None,
            analytics_url: None,
            parameters: Vec::new(),
            parameter_headers: false,
        }
    }
}

/// A session as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub name: String,
    pub kind: SessionKind,
    pub remote_host: Option<String>,
    pub remote_port: Option<u16>,
    pub url: Option<String>,
    pub https: bool,
    pub tls_verify: bool,
    pub slug: Option<String>,
    /// Its slug shares the portal host's browser origin with other users'
    /// slug sessions, as its creator accepted (see `NewSession`).
    #[serde(default)]
    pub shared_origin: bool,
    pub strip_prefix: bool,
    pub rewrite_host: bool,
    /// Upgrades to any protocol are passed on, not only WebSocket.
    /// (Defaults to false when absent, for `ctl` against an older server.)
    #[serde(default)]
    pub allow_any_upgrade: bool,
    pub custom_domain: Option<String>,
    /// The gateway's port forwarded to the session's (the "local port" of
    /// the seed's table; `remote_port` is the other).
    pub workspace_port: Option<u16>,
    pub owner: String,
    pub groups: Vec<String>,
    pub public: bool,
    pub state: SessionState,
    /// RFC 3339 UTC.
    pub created: String,
    pub activated: Option<String>,
    pub expires: Option<String>,
    pub last_activity: Option<String>,
    /// Seconds until `expires` (frozen while paused); null without an expiry.
    pub countdown: Option<u64>,
    pub extendable: bool,
    /// Seconds that `keepalive` and `extend` add; null for no expiry.
    pub duration: Option<u64>,
    /// Seconds without traffic or keep-alive after which it expires.
    pub idle_timeout: Option<u64>,
    pub environment: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The analytics webhook of the training-portal request that allocated
    /// it; absent when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analytics_url: Option<String>,
    /// The training-portal request's parameters; absent when there were none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<RequestParameter>,
    /// The parameters reach the backend as `X-Workshop-Param-<name>`
    /// headers (from the environment's `parameter_headers`); absent when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parameter_headers: bool,
    /// Things the operator should know about the answer to a create or a
    /// change, such as a custom domain no certificate covers. Absent when
    /// there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl SessionRecord {
    /// The time the expiry clock reads: frozen at the pause while paused.
    pub fn clock_ms(&self, now_ms: u64) -> u64 {
        match (self.state, self.paused_ms) {
            (SessionState::Paused, Some(p)) => p,
            _ => now_ms,
        }
    }

    /// Seconds left before `expires`, by the session's own clock.
    pub fn countdown_secs(&self, now_ms: u64) -> Option<u64> {
        let expires = self.expires_ms?;
        Some(expires.saturating_sub(self.clock_ms(now_ms)) / 1000)
    }

    pub fn view(&self, now_ms: u64) -> Session {
        Session {
            name: self.name.clone(),
            kind: self.kind,
            remote_host: self.remote_host.clone(),
            remote_port: self.remote_port,
            url: self.url.clone(),
            https: self.https,
            tls_verify: self.tls_verify,
            slug: self.slug.clone(),
            shared_origin: self.shared_origin,
            strip_prefix: self.strip_prefix,
            rewrite_host: self.rewrite_host,
            allow_any_upgrade: self.allow_any_upgrade,
            custom_domain: self.custom_domain.clone(),
            workspace_port: self.workspace_port,
            owner: self.owner.clone(),
            groups: self.groups.clone(),
            public: self.public,
            state: self.state,
            created: rfc3339_millis(self.created_ms),
            activated: self.activated_ms.map(rfc3339_millis),
            expires: self.expires_ms.map(rfc3339_millis),
            last_activity: self.last_activity_ms.map(rfc3339_millis),
            countdown: if self.state.is_live() {
                self.countdown_secs(now_ms)
            } else {
                None
            },
            extendable: self.extendable,
            duration: self.duration_secs,
            idle_timeout: self.idle_timeout_secs,
            environment: self.environment.clone(),
            labels: self.labels.clone(),
            analytics_url: self.analytics_url.clone(),
            parameters: self.parameters.clone(),
            parameter_headers: self.parameter_headers,
            warnings: Vec::new(),
        }
    }
}

/// `POST /api/v1/sessions`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// A DNS label: 1–63 of `a-z`, `0-9` and `-`; the default subdomain.
    pub name: String,
    /// `tunnel` (default) or `link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SessionKind>,
    /// Tunnel: the app's host (default `localhost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    /// Tunnel: the app's port (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// Link: the external URL (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The app speaks HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
    /// Verify the app's certificate (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// A path on the portal host, such as `/lab`. Every slug session is
    /// the same browser origin: its app can read other slug sessions'
    /// responses and set their cookies. Not under, nor above, another
    /// user's slug; and not `__sessiongate`, the gateway's own path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// Accept a slug while other users have slug sessions, sharing one
    /// browser origin with them (default false: refused, 422).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_origin: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_prefix: bool,
    /// Send the app's own host as `Host`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rewrite_host: bool,
    /// Pass on a request to switch to any protocol (`Upgrade: h2c`, a
    /// custom tunnel), not only to WebSocket (default false): after a
    /// switch the gateway only copies bytes, so only an app that needs
    /// another protocol should have it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_any_upgrade: bool,
    /// A full hostname routed to this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_domain: Option<String>,
    /// A raw TCP port on the gateway (`gateway.workspace_listen_address`)
    /// forwarded to `remote_host:remote_port`, for apps that are not HTTP
    /// (SSH, VNC, a database); 0 picks a free one in
    /// `gateway.workspace_port_range`. A port outside the range, another
    /// session's, or held on the host answers 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_port: Option<u16>,
    /// An existing user's name.
    pub owner: String,
    /// Groups whose members may open it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Anyone may open it, signed in or not (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// Seconds until it expires; `keepalive` and `extend` add this much again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// Seconds without traffic or keep-alive after which it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    /// Whether `extend` is allowed (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extendable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Wait for activation instead of running at once; deleted if not
    /// activated within the activation deadline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// `PATCH /api/v1/sessions/{name}`: the target and routing, hot-swapped.
/// Absent fields stay as they are; `null` clears an optional one.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionPatch {
    #[serde(default)]
    pub remote_host: Option<String>,
    #[serde(default)]
    pub remote_port: Option<u16>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub https: Option<bool>,
    #[serde(default)]
    pub tls_verify: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub slug: Option<Option<String>>,
    /// Accept sharing the portal host's browser origin (see `NewSession`).
    #[serde(default)]
    pub shared_origin: Option<bool>,
    #[serde(default)]
    pub strip_prefix: Option<bool>,
    #[serde(default)]
    pub rewrite_host: Option<bool>,
    #[serde(default)]
    pub allow_any_upgrade: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub custom_domain: Option<Option<String>>,
    #[serde(default)]
    pub public: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub duration: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub idle_timeout: Option<Option<u64>>,
    #[serde(default)]
    pub extendable: Option<bool>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl SessionPatch {
    /// Writes every field the patch has into `rec`; absent ones stay.
    /// Validation is the caller's (slug and custom domain normalised first).
    pub fn apply(self, rec: &mut SessionRecord) {
        use set_present as set;
        set(&mut rec.remote_host, self.remote_host.map(Some));
        set(&mut rec.remote_port, self.remote_port.map(Some));
        set(&mut rec.url, self.url.map(Some));
        set(&mut rec.https, self.https);
        set(&mut rec.tls_verify, self.tls_verify);
        set(&mut rec.slug, self.slug);
        set(&mut rec.shared_origin, self.shared_origin);
        set(&mut rec.strip_prefix, self.strip_prefix);
        set(&mut rec.rewrite_host, self.rewrite_host);
        set(&mut rec.allow_any_upgrade, self.allow_any_upgrade);
        set(&mut rec.custom_domain, self.custom_domain);
        set(&mut rec.public, self.public);
        set(&mut rec.duration_secs, self.duration);
        set(&mut rec.idle_timeout_secs, self.idle_timeout);
        set(&mut rec.extendable, self.extendable);
        set(&mut rec.labels, self.labels);
    }
}

/// A patch's field: `field` becomes `v` when the patch has one.
pub(crate) fn set_present<T>(field: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *field = v;
    }
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Input that cannot be stored: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Longest accepted duration, idle timeout or extension: ten years. Keeps
/// millisecond arithmetic far from overflow.
pub const MAX_SECS: u64 = 10 * 365 * 86_400;
const MAX_LABELS: usize = 64;
const MAX_TEXT: usize = 256;

/// A name for a session, user or group: a DNS label, because session names
/// are subdomains and the same rule everywhere is easier to remember.
pub fn validate_name(field: &str, name: &str) -> Result<(), Invalid> {
    if gateway::table::is_dns_label(name) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{name:?} is not a DNS label (1-63 of a-z, 0-9 and '-', not starting or ending with '-')"
            ),
        ))
    }
}

/// A user name: a DNS label, or an e-mail-like name (`a.b@c`) as portals use.
pub fn validate_user_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.@+".contains(&c))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{name:?} is not a user name (1-128 of letters, digits and - _ . @ +, starting with a letter or digit)"
            ),
        ))
    }
}

fn validate_text(field: &str, value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("must be at most {MAX_TEXT} bytes without control characters"),
        ));
    }
    Ok(())
}

pub fn validate_optional_text(field: &str, value: &Option<String>) -> Result<(), Invalid> {
    value
        .as_deref()
        .map(|v| validate_text(field, v))
        .unwrap_or(Ok(()))
}

fn validate_secs(field: &str, value: Option<u64>) -> Result<(), Invalid> {
    match value {
        Some(0) => Err(invalid(field, "must be at least 1 second")),
        Some(v) if v > MAX_SECS => Err(invalid(
            field,
            format!("{v} is more than the maximum of {MAX_SECS} seconds"),
        )),
        _ => Ok(()),
    }
}

/// A hostname or IP literal for `remote_host`.
fn validate_remote_host(host: &str) -> Result<(), Invalid> {
    let ip = host.parse::<std::net::IpAddr>().is_ok();
    let name = names::is_hostname(&host.to_ascii_lowercase());
    if ip || name {
        Ok(())
    } else {
        Err(invalid(
            "remote_host",
            format!("{host:?} is not a hostname or IP address"),
        ))
    }
}

/// The path segment under which the gateway answers itself on every
/// session's host and slug (`gateway::access::ACTIVATE_PATH`).
const GATEWAY_SEGMENT: &str = "__sessiongate";

/// `/lab/` → `/lab`, in the gateway's canonical form
/// ([`gateway::names::normalize_slug`]) under a stricter policy: letters,
/// digits and `- . _ ~` only, at most 256 bytes, and never the portal root,
/// which would take the whole portal.
pub fn normalize_slug(slug: &str) -> Result<String, Invalid> {
    let not_a_path = || {
        invalid(
            "slug",
            format!("{slug:?} must be a path such as \"/lab\" (letters, digits and - . _ ~)"),
        )
    };
    let allowed = slug.len() <= 256
        && slug
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"/-._~".contains(&c));
    if !allowed {
        return Err(not_a_path());
    }
    let canonical = gateway::names::normalize_slug(slug).map_err(|e| match e {
        gateway::names::SlugError::NotAPath(_) => not_a_path(),
        gateway::names::SlugError::TooDeep(_) => invalid(
            "slug",
            format!(
                "{slug:?} has more than {} segments",
                gateway::router::MAX_SLUG_SEGMENTS
            ),
        ),
    })?;
    if canonical.is_empty() {
        return Err(invalid(
            "slug",
            "\"/\" would take the whole portal; use a path such as \"/lab\"",
        ));
    }
    // `<slug>/__sessiongate/activate` opens access links; a session whose
    // slug ends in `/__sessiongate` would be handed those of the session
    // above it.
    if canonical
        .split('/')
        .any(|seg| seg.eq_ignore_ascii_case(GATEWAY_SEGMENT))
    {
        return Err(invalid(
            "slug",
            format!("{slug:?} has the segment {GATEWAY_SEGMENT:?}, the gateway's own path"),
        ));
    }
    Ok(canonical.to_string())
}

/// Lower case, no trailing dot; refused when it is `<label>.<base domain>`,
/// which belongs to the session named `<label>`.
pub fn normalize_custom_domain(domain: &str, base_domains: &[String]) -> Result<String, Invalid> {
    let d = names::normalize_name(domain);
    if !names::is_hostname(&d) {
        return Err(invalid(
            "custom_domain",
            format!("{domain:?} is not a hostname"),
        ));
    }
    for base in base_domains {
        let base = names::normalize_name(base);
        if d == base {
            return Err(invalid(
                "custom_domain",
                format!("{domain:?} is a base domain"),
            ));
        }
        if let Some(label) = d.strip_suffix(&format!(".{base}")) {
            if !label.contains('.') {
                return Err(invalid(
                    "custom_domain",
                    format!("{domain:?} is the address of the session named {label:?}"),
                ));
            }
        }
    }
    Ok(d)
}

pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(
            "labels",
            format!("{} labels; at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c));
        if !key_ok {
            return Err(invalid(
                "labels",
                format!("key {k:?} must be 1-63 of letters, digits and - _ . /"),
            ));
        }
        validate_text(&format!("labels.{k}"), v)?;
    }
    Ok(())
}

/// The routing-relevant fields, checked together because they depend on the kind.
pub fn validate_target(s: &SessionRecord) -> Result<(), Invalid> {
    match s.kind {
        SessionKind::Tunnel => {
            if s.url.is_some() {
                return Err(invalid("url", "only a link session has a url"));
            }
            match s.remote_port {
                None => return Err(invalid("remote_port", "a tunnel session needs one")),
                Some(0) => return Err(invalid("remote_port", "must be 1-65535")),
                Some(_) => {}
            }
            validate_remote_host(s.remote_host.as_deref().unwrap_or(""))?;
        }
        SessionKind::Link => {
            if s.remote_port.is_some() || s.remote_host.is_some() {
                return Err(invalid(
                    "remote_port",
                    "a link session has a url, not remote_host or remote_port",
                ));
            }
            match &s.url {
                None => return Err(invalid("url", "a link session needs one")),
                Some(u) if !is_redirect_url(u) => {
                    return Err(invalid(
                        "url",
                        format!("{u:?} must be an absolute http:// or https:// URL"),
                    ))
                }
                Some(_) => {}
            }
            if s.https || s.strip_prefix || s.rewrite_host {
                return Err(invalid(
                    "kind",
                    "https, strip_prefix and rewrite_host apply to tunnel sessions only",
                ));
            }
            if s.allow_any_upgrade {
                return Err(invalid(
                    "allow_any_upgrade",
                    "applies to tunnel sessions only: a link session is a redirect",
                ));
            }
        }
    }
    if s.strip_prefix && s.slug.is_none() {
        return Err(invalid("strip_prefix", "only applies with a slug"));
    }
    if s.workspace_port.is_some() && s.kind != SessionKind::Tunnel {
        return Err(invalid(
            "workspace_port",
            "applies to tunnel sessions only: a link session has no port to forward to",
        ));
    }
    validate_secs("duration", s.duration_secs)?;
    validate_secs("idle_timeout", s.idle_timeout_secs)?;
    validate_labels(&s.labels)?;
    validate_optional_text("environment", &s.environment)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_normalised_and_bad_ones_named() {
        assert_eq!(normalize_slug("/lab/").unwrap(), "/lab");
        assert_eq!(normalize_slug("/a/b").unwrap(), "/a/b");
        for bad in [
            "lab",
            "/",
            "//x",
            "/a b",
            "/a?b",
            "",
            "/a/__sessiongate",
            "/a/__SessionGate/",
            "/__sessiongate/x",
        ] {
            let e = normalize_slug(bad).unwrap_err();
            assert_eq!(e.field, "slug", "{bad}");
        }
    }

    #[test]
    fn the_refused_segment_is_the_gateways_own_path() {
        assert!(gateway::access::ACTIVATE_PATH.starts_with(&format!("/{GATEWAY_SEGMENT}/")));
    }

    #[test]
    fn custom_domains_cannot_take_a_session_address() {
        let bases = vec!["localhost".to_string(), "example.com".to_string()];
        assert_eq!(
            normalize_custom_domain("Lab.Example.org.", &bases).unwrap(),
            "lab.example.org"
        );
        assert_eq!(
            normalize_custom_domain("a.b.example.com", &bases).unwrap(),
            "a.b.example.com"
        );
        for bad in ["x.localhost", "example.com", "a b.org", "", "-a.org"] {
            assert!(normalize_custom_domain(bad, &bases).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_follow_their_rules() {
        assert!(validate_name("name", "lab-1").is_ok());
        for bad in ["Lab", "-x", "x_y", "", &"a".repeat(64)] {
            assert!(validate_name("name", bad).is_err(), "{bad}");
        }
        assert!(validate_user_name("name", "ann.lee@example.org").is_ok());
        for bad in ["", ".x", "a b", "a/b"] {
            assert!(validate_user_name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn countdown_freezes_while_paused() {
        let mut s = SessionRecord {
            activated_ms: Some(0),
            expires_ms: Some(100_000),
            duration_secs: Some(100),
            ..SessionRecord::for_test("s", SessionState::Running, 0)
        };
        assert_eq!(s.countdown_secs(40_000), Some(60));
        s.state = SessionState::Paused;
        s.paused_ms = Some(40_000);
        assert_eq!(s.countdown_secs(90_000), Some(60));
    }
}
