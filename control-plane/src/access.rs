//! Browser access, the control plane's half: access links (one-time tokens,
//! stored hashed), cookie signing keys and their rotation, the redirect
//! allow-list, and who may open a session (owner plus the members of its
//! groups), compiled into each route for the gateway to check.
//!
//! The gateway's half (cookie format, verification, the check per request)
//! is `gateway::access`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use gateway::access::{AccessList, KeyRing, Members, SigningKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::session::model::SessionRecord;

/// The `[access]` settings the control plane uses.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessSettings {
    /// How long an access link is valid.
    pub link_ttl: Duration,
    /// How long a browser cookie is valid.
    pub cookie_ttl: Duration,
    /// How long the previous signing key keeps verifying after a rotation.
    pub key_grace: Duration,
    /// The scheme of access links (`http` until TLS terminates here).
    pub link_scheme: String,
    /// The port of access links; `None` leaves it out (the scheme's default).
    pub link_port: Option<u16>,
    /// With `console.portal`: the portal host, where console links point
    /// (with the scheme and port of access links).
    pub console_portal_host: Option<String>,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            link_ttl: Duration::from_secs(60),
            cookie_ttl: Duration::from_secs(12 * 3600),
            key_grace: Duration::from_secs(12 * 3600),
            link_scheme: "http".into(),
            link_port: None,
            console_portal_host: None,
        }
    }
}

/// A new access link, as the API answers it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessLink {
    /// Open this in the user's browser, within `expires`; it works once.
    pub url: String,
    /// RFC 3339 UTC.
    pub expires: String,
}

/// A client certificate for a session's workspace port over TLS.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientCert {
    /// PEM; its common name is the user.
    pub certificate: String,
    /// PEM; made for this answer and kept nowhere else.
    pub key: String,
    /// PEM: the workspace CA, to verify the gateway's side with.
    pub ca: String,
    /// RFC 3339 UTC.
    pub expires: String,
}

/// The request for a workspace client certificate.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertRequest {
    /// The user it names: the owner or a member of a group the session is
    /// shared with.
    pub user: String,
    /// Days it is valid (default 30, at most 397).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u64>,
}

/// The request for an access link.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    /// The user the link signs in: the owner or a member of a group the
    /// session is shared with.
    pub user: String,
    /// Where the browser lands, relative to the session's root (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The signing keys after a rotation.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyRotation {
    /// The id of the key that signs from now on.
    pub current: String,
    /// The id of the key it replaced, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Until when (RFC 3339 UTC) cookies signed by the previous key are accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<String>,
}

/// Checks an entry path: a path on the session's own host, so that the
/// redirect after activation cannot leave it (`//evil.example` and `/\evil`
/// are protocol-relative URLs to browsers).
pub fn validate_entry_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if path.starts_with("//") || path.starts_with("/\\") {
        return Err(format!("{path:?} would leave the session's host"));
    }
    if path.len() > 2048 {
        return Err("must be at most 2048 bytes".into());
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{path:?} must be printable ASCII without spaces (percent-encode the rest)"
        ));
    }
    Ok(())
}

/// Origins that redirects may go to: `scheme://host[:port]`, compared
/// without case and with default ports removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RedirectPolicy {
    origins: Vec<String>,
}

impl RedirectPolicy {
    /// Fails on an entry that is not an origin, naming it.
    pub fn new(origins: &[String]) -> Result<Self, String> {
        let origins = origins
            .iter()
            .map(|o| {
                let rest = o
                    .split_once("://")
                    .map_or("", |(_, r)| r.trim_end_matches('/'));
                if rest.contains(['/', '?', '#']) {
                    return Err(format!("{o:?} is not an origin: it has a path or query"));
                }
                origin_of(o).ok_or_else(|| format!("{o:?} is not an origin (scheme://host[:port])"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(RedirectPolicy { origins })
    }

    /// Whether `url` is an absolute http(s) URL on an allowed origin.
    pub fn allows(&self, url: &str) -> bool {
        match origin_of(url) {
            Some(o) => self.origins.contains(&o),
            None => false,
        }
    }

    /// `url` when it is allowed, else `default`.
    pub fn pick<'a>(&self, url: Option<&'a str>, default: Option<&'a str>) -> Option<&'a str> {
        match url {
            Some(u) if self.allows(u) => Some(u),
            _ => default,
        }
    }
}

/// The normalised origin of an absolute http(s) URL, or `None`.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') || authority.contains('\\') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']')?;
        match &authority[close + 1..] {
            "" => (&authority[..=close], None),
            after => (&authority[..=close], Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority.as_str(), None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let bracketed = host.starts_with('[');
    if host.is_empty()
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"-.".contains(&b) || (bracketed && b"[]:".contains(&b))
        })
    {
        return None;
    }
    Some(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Group members as the routes hold them, shared by every route of a
/// session shared with the group.
pub type GroupCache = HashMap<String, Arc<Members>>;

pub fn members(names: Vec<String>) -> Arc<Members> {
    Arc::new(Members::new(names.into_iter().map(Arc::from).collect()))
}

/// Who may open `s`: the owner and the members of its groups.
pub fn access_list(s: &SessionRecord, groups: &GroupCache) -> Arc<AccessList> {
    Arc::new(AccessList {
        session: s.name.as_str().into(),
        owner: s.owner.as_str().into(),
        groups: s
            .groups
            .iter()
            .filter_map(|g| groups.get(g).cloned())
            .collect(),
    })
}

/// Whether `user` may open `s` with these groups.
pub fn allowed(s: &SessionRecord, user: &str, groups: &GroupCache) -> bool {
    s.owner == user
        || s.groups
            .iter()
            .any(|g| groups.get(g).is_some_and(|m| m.contains(user)))
}

/// Every user `s` allows, for working out whose connections a change revokes.
pub fn allowed_users(s: &SessionRecord, groups: &GroupCache) -> Vec<String> {
    let mut out = vec![s.owner.clone()];
    for g in &s.groups {
        if let Some(m) = groups.get(g) {
            out.extend(m.iter().map(str::to_string));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Users `before` allowed (with `before_groups`) whom `after` no longer
/// allows: whose live connections a change must close.
pub fn lost_users(
    before: &SessionRecord,
    before_groups: &GroupCache,
    after: &SessionRecord,
    after_groups: &GroupCache,
) -> Vec<String> {
    let now_allowed = allowed_users(after, after_groups);
    allowed_users(before, before_groups)
        .into_iter()
        .filter(|u| now_allowed.binary_search(u).is_err())
        .collect()
}

/// Why the stored cookie keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {id}: {source}")]
    Decode {
        id: String,
        source: base64::DecodeError,
    },
    #[error(transparent)]
    Invalid(#[from] gateway::access::KeyError),
    #[error("no current signing key")]
    NoCurrent,
    #[error("the system's random source failed")]
    Random,
}

/// The keys as stored: `(id, secret base64, retired_ms)`, newest first.
pub fn key_ring(
    rows: &[crate::store::SigningKeyRow],
    grace: Duration,
) -> Result<KeyRing, KeyError> {
    let decode = |r: &crate::store::SigningKeyRow| -> Result<SigningKey, KeyError> {
        let secret = STANDARD
            .decode(&r.secret)
            .map_err(|source| KeyError::Decode {
                id: r.id.clone(),
                source,
            })?;
        Ok(SigningKey::new(&r.id, &secret)?)
    };
    let current = rows
        .iter()
        .find(|r| r.retired_ms.is_none())
        .ok_or(KeyError::NoCurrent)?;
    let previous = match rows.iter().find(|r| r.retired_ms.is_some()) {
        Some(r) => {
            // Rounded up: the old key verifies for at least the grace period.
            let until = (r.retired_ms.unwrap_or(0) + grace.as_millis() as u64).div_ceil(1000);
            Some((decode(r)?, until))
        }
        None => None,
    };
    Ok(KeyRing::new(decode(current)?, previous))
}

/// A fresh key: a short random id and 32 random bytes.
pub fn new_key(now_ms: u64) -> Result<crate::store::SigningKeyRow, KeyError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let rng = SystemRandom::new();
    let mut secret = [0u8; 32];
    let mut id = [0u8; 4];
    rng.fill(&mut secret)
        .and_then(|_| rng.fill(&mut id))
        .map_err(|_| KeyError::Random)?;
    Ok(crate::store::SigningKeyRow {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        secret: STANDARD.encode(secret),
        created_ms: now_ms,
        retired_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        for ok in ["/", "/lab", "/tree?x=1#y", "/a%20b"] {
            assert!(validate_entry_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "lab", "//evil.example", "/\\evil", "/a b", "https://x/"] {
            assert!(validate_entry_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "https://Portal.Example.com/x?y",
                Some("https://portal.example.com"),
            ),
            (
                "https://portal.example.com:443/",
                Some("https://portal.example.com"),
            ),
            ("http://portal:8080", Some("http://portal:8080")),
            ("http://[::1]:8080/", Some("http://[::1]:8080")),
            ("javascript:alert(1)", None),
            ("//evil.example/", None),
            ("https://user@evil.example/", None),
            ("https://evil.example\\@portal.example.com/", None),
            ("ftp://x/", None),
            ("https:///x", None),
        ];
        for (url, want) in cases {
            assert_eq!(origin_of(url).as_deref(), *want, "{url}");
        }
    }

    #[test]
    fn the_allow_list_decides() {
        let p = RedirectPolicy::new(&["https://portal.example.com".into()]).unwrap();
        assert!(p.allows("https://portal.example.com/login?next=/"));
        assert!(p.allows("https://PORTAL.example.com:443/"));
        assert!(!p.allows("https://portal.example.com.evil.example/"));
        assert!(!p.allows("http://portal.example.com/"));
        assert!(!p.allows("/relative"));
        assert_eq!(
            p.pick(
                Some("https://evil.example/"),
                Some("https://portal.example.com/")
            ),
            Some("https://portal.example.com/")
        );
        assert!(RedirectPolicy::new(&["https://portal.example.com/path".into()]).is_err());
        assert!(RedirectPolicy::new(&["portal.example.com".into()]).is_err());
    }
}
