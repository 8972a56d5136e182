//! The messages as JSON, for the route stream and the table file: one
//! [`Message`] per frame (the stream's framing is `tokio_util`'s
//! length-delimited codec, on both ends). Decoding checks everything a
//! table would refuse anyway (upstream URLs, headers, keys), so that a bad
//! frame is an error with its reason, never a panic or a half-built route.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{Delta, Message, Snapshot};
use crate::access::{AccessList, KeyRing, Members, SigningKey};
use crate::headers::AddedHeaders;
use crate::table::{RouteSpec, RouteTarget, TableSettings, Upstream};

/// Why a frame could not be read as a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("route {route:?}: {reason}")]
    Route { route: String, reason: String },
    #[error("keys: {0}")]
    Keys(String),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum WireMessage {
    Snapshot {
        #[serde(default)]
        epoch: u64,
        version: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        watermark: u64,
        settings: WireSettings,
        /// Member lists, each once: routes name them by index.
        #[serde(default)]
        groups: Vec<Vec<String>>,
        routes: Vec<WireRoute>,
        keys: WireKeys,
    },
    Delta {
        base: u64,
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        #[serde(default, skip_serializing_if = "is_zero")]
        watermark: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settings: Option<WireSettings>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<Vec<String>>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        upserts: Vec<WireRoute>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removals: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keys: Option<WireKeys>,
    },
    Heartbeat {
        version: u64,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSettings {
    base_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    portal_host: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRoute {
    id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    slugs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redirect: Option<String>,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default)]
    rewrite_host: bool,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    public: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access: Option<WireAccess>,
    #[serde(default)]
    inactive: bool,
    #[serde(default = "yes")]
    tls_verify: bool,
    #[serde(default)]
    allow_any_upgrade: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    headers: Option<WireHeaders>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workspace_port: Option<u16>,
}

fn yes() -> bool {
    true
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAccess {
    session: String,
    owner: String,
    /// Indexes into the message's `groups`.
    #[serde(default)]
    groups: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reserved_prefix: Option<String>,
    set: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireKeys {
    current: WireKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<WireKey>,
    /// The Unix second until which `previous` verifies.
    #[serde(default)]
    previous_until: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireKey {
    id: String,
    /// Base64 (standard, padded).
    secret: String,
}

/// Member lists, each written once per message however many routes share it.
#[derive(Default)]
struct GroupsOut {
    index: HashMap<*const Members, usize>,
    lists: Vec<Vec<String>>,
}

impl GroupsOut {
    fn index_of(&mut self, m: &Arc<Members>) -> usize {
        let lists = &mut self.lists;
        *self.index.entry(Arc::as_ptr(m)).or_insert_with(|| {
            lists.push(m.iter().map(str::to_string).collect());
            lists.len() - 1
        })
    }
}

fn settings_out(s: &TableSettings) -> WireSettings {
    WireSettings {
        base_domains: s.base_domains.clone(),
        portal_host: s.portal_host.clone(),
    }
}

fn settings_in(s: WireSettings) -> TableSettings {
    TableSettings {
        base_domains: s.base_domains,
        portal_host: s.portal_host,
    }
}

fn route_out(r: &RouteSpec, groups: &mut GroupsOut) -> WireRoute {
    let (upstream, redirect) = match &r.target {
        RouteTarget::Upstream(u) => (Some(u.to_string()), None),
        RouteTarget::Redirect(url) => (None, Some(url.to_string())),
    };
    WireRoute {
        id: r.id.to_string(),
        hosts: r.hosts.clone(),
        labels: r.labels.clone(),
        slugs: r.slugs.clone(),
        upstream,
        redirect,
        strip_prefix: r.strip_prefix,
        rewrite_host: r.rewrite_host,
        paused: r.paused,
        public: r.public,
        access: r.access.as_ref().map(|a| WireAccess {
            session: a.session.to_string(),
            owner: a.owner.to_string(),
            groups: a.groups.iter().map(|m| groups.index_of(m)).collect(),
        }),
        inactive: r.inactive,
        tls_verify: r.tls_verify,
        allow_any_upgrade: r.allow_any_upgrade,
        headers: r.request_headers.as_ref().map(|h| WireHeaders {
            reserved_prefix: h.reserved_prefix().map(str::to_string),
            set: h
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        }),
        workspace_port: r.workspace_port,
    }
}

fn route_in(r: WireRoute, groups: &[Arc<Members>]) -> Result<RouteSpec, WireError> {
    let bad = |reason: String| WireError::Route {
        route: r.id.clone(),
        reason,
    };
    let target = match (&r.upstream, &r.redirect) {
        (Some(u), None) => {
            RouteTarget::Upstream(Upstream::parse(u).map_err(|e| bad(e.to_string()))?)
        }
        (None, Some(url)) => RouteTarget::Redirect(url.as_str().into()),
        _ => return Err(bad("needs exactly one of upstream and redirect".into())),
    };
    let access = match &r.access {
        None => None,
        Some(a) => Some(Arc::new(AccessList {
            session: a.session.as_str().into(),
            owner: a.owner.as_str().into(),
            groups: a
                .groups
                .iter()
                .map(|&i| {
                    groups
                        .get(i)
                        .cloned()
                        .ok_or_else(|| bad(format!("group index {i} is not in the message")))
                })
                .collect::<Result<_, _>>()?,
        })),
    };
    let request_headers = match &r.headers {
        None => None,
        Some(h) => {
            let set = h
                .set
                .iter()
                .map(|(n, v)| {
                    let name = HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| bad(format!("header name {n:?}")))?;
                    let value = HeaderValue::from_str(v)
                        .map_err(|_| bad(format!("value of header {n:?}")))?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, WireError>>()?;
            Some(Arc::new(
                AddedHeaders::new(h.reserved_prefix.as_deref(), set)
                    .map_err(|e| bad(e.to_string()))?,
            ))
        }
    };
    Ok(RouteSpec {
        id: r.id.as_str().into(),
        hosts: r.hosts,
        labels: r.labels,
        slugs: r.slugs,
        target,
        strip_prefix: r.strip_prefix,
        rewrite_host: r.rewrite_host,
        paused: r.paused,
        public: r.public,
        access,
        inactive: r.inactive,
        tls_verify: r.tls_verify,
        allow_any_upgrade: r.allow_any_upgrade,
        request_headers,
        // CHP routes (`sessiongate chp`) never travel on the route stream.
        target_path: None,
        workspace_port: r.workspace_port,
    })
}

fn keys_out(k: &KeyRing) -> WireKeys {
    let key = |k: &SigningKey| WireKey {
        id: k.id().to_string(),
        secret: STANDARD.encode(k.secret()),
    };
    WireKeys {
        current: key(k.current()),
        previous: k.previous().map(|(p, _)| key(p)),
        previous_until: k.previous().map_or(0, |(_, until)| until),
    }
}

fn keys_in(k: WireKeys) -> Result<KeyRing, WireError> {
    let key = |k: WireKey| -> Result<SigningKey, WireError> {
        let secret = STANDARD
            .decode(&k.secret)
            .map_err(|e| WireError::Keys(format!("key {:?}: {e}", k.id)))?;
        SigningKey::new(&k.id, &secret).map_err(|e| WireError::Keys(e.to_string()))
    };
    let previous = match k.previous {
        Some(p) => Some((key(p)?, k.previous_until)),
        None => None,
    };
    Ok(KeyRing::new(key(k.current)?, previous))
}

fn members_in(lists: Vec<Vec<String>>) -> Vec<Arc<Members>> {
    lists
        .into_iter()
        .map(|l| Arc::new(Members::new(l.into_iter().map(Arc::from).collect())))
        .collect()
}

/// `message` as JSON.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut groups = GroupsOut::default();
    let wire = match message {
        Message::Snapshot(s) => {
            let routes = s.routes.iter().map(|r| route_out(r, &mut groups)).collect();
            WireMessage::Snapshot {
                epoch: s.epoch,
                version: s.version,
                watermark: s.watermark,
                settings: settings_out(&s.settings),
                groups: groups.lists,
                routes,
                keys: keys_out(&s.keys),
            }
        }
        Message::Delta(d) => {
            let upserts = d
                .upserts
                .iter()
                .map(|r| route_out(r, &mut groups))
                .collect();
            WireMessage::Delta {
                base: d.base,
                version: d.version,
                epoch: d.epoch,
                watermark: d.watermark,
                settings: d.settings.as_ref().map(settings_out),
                groups: groups.lists,
                upserts,
                removals: d.removals.iter().map(|r| r.to_string()).collect(),
                keys: d.keys.as_deref().map(keys_out),
            }
        }
        Message::Heartbeat { version } => WireMessage::Heartbeat { version: *version },
    };
    // Only strings, numbers and sequences: serializing cannot fail.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// The message in `frame`.
pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
    Ok(match serde_json::from_slice::<WireMessage>(frame)? {
        WireMessage::Snapshot {
            epoch,
            version,
            watermark,
            settings,
            groups,
            routes,
            keys,
        } => {
            let groups = members_in(groups);
            Message::Snapshot(Arc::new(Snapshot {
                epoch,
                version,
                watermark,
                settings: settings_in(settings),
                routes: routes
                    .into_iter()
                    .map(|r| route_in(r, &groups))
                    .collect::<Result<_, _>>()?,
                keys: Arc::new(keys_in(keys)?),
            }))
        }
        WireMessage::Delta {
            base,
            version,
            epoch,
            watermark,
            settings,
            groups,
            upserts,
            removals,
            keys,
        } => {
            let groups = members_in(groups);
            Message::Delta(Arc::new(Delta {
                base,
                version,
                epoch,
                watermark,
                settings: settings.map(settings_in),
                upserts: upserts
                    .into_iter()
                    .map(|r| route_in(r, &groups))
                    .collect::<Result<_, _>>()?,
                removals: removals.into_iter().map(Arc::from).collect(),
                keys: keys.map(keys_in).transpose()?.map(Arc::new),
            }))
        }
        WireMessage::Heartbeat { version } => Message::Heartbeat { version },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Arc<KeyRing> {
        Arc::new(KeyRing::new(
            SigningKey::new("k2", &[9; 32]).unwrap(),
            Some((SigningKey::new("k1", &[8; 32]).unwrap(), 1234)),
        ))
    }

    #[test]
    fn a_snapshot_round_trips_with_shared_groups_written_once() {
        let team = Arc::new(Members::new(vec!["bob".into(), "carol".into()]));
        let private = |id: &str| {
            let mut s = RouteSpec::new(
                id,
                RouteTarget::Upstream(Upstream::parse("http://[::1]:8888").unwrap()),
            )
            .label(id);
            s.access = Some(Arc::new(AccessList {
                session: id.into(),
                owner: "alice".into(),
                groups: vec![Arc::clone(&team)],
            }));
            s.request_headers = Some(Arc::new(
                AddedHeaders::new(
                    Some("x-workshop-param-"),
                    vec![(
                        HeaderName::from_static("x-workshop-param-a"),
                        HeaderValue::from_static("1"),
                    )],
                )
                .unwrap(),
            ));
            s.workspace_port = (id == "a").then_some(31_000);
            s
        };
        let link =
            RouteSpec::new("l", RouteTarget::Redirect("https://example.org/x".into())).slug("/l");
        let msg = Message::Snapshot(Arc::new(Snapshot {
            epoch: 7,
            version: 42,
            watermark: 0,
            settings: TableSettings {
                base_domains: vec!["localhost".into()],
                portal_host: Some("portal.localhost".into()),
            },
            routes: vec![private("a"), private("b"), link],
            keys: ring(),
        }));
        let bytes = encode(&msg);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(text.matches("carol").count(), 1, "{text}");
        let Message::Snapshot(back) = decode(&bytes).unwrap() else {
            panic!("not a snapshot")
        };
        assert_eq!((back.epoch, back.version), (7, 42));
        assert_eq!(
            back.settings.portal_host.as_deref(),
            Some("portal.localhost")
        );
        assert_eq!(back.routes.len(), 3);
        let a = &back.routes[0];
        assert_eq!(a.target.to_string(), "http://[::1]:8888");
        // A workspace port reaches remote gateways, which open it too.
        assert_eq!(a.workspace_port, Some(31_000));
        assert_eq!(back.routes[1].workspace_port, None);
        let access = a.access.as_ref().unwrap();
        assert!(access.groups[0].contains("carol"));
        assert_eq!(
            a.request_headers.as_ref().unwrap().headers()[0].0.as_str(),
            "x-workshop-param-a"
        );
        assert_eq!(
            back.routes[2].target,
            RouteTarget::Redirect("https://example.org/x".into())
        );
        assert_eq!(back.keys.current_id(), "k2");
        assert_eq!(
            back.keys.previous().map(|(k, u)| (k.id(), u)),
            Some(("k1", 1234))
        );
        assert_eq!(back.keys.current().secret(), &[9; 32]);
    }

    #[test]
    fn bad_frames_are_errors_that_name_what_is_wrong() {
        for (frame, want) in [
            (&b"{\"type\":\"delta\""[..], "not a message"),
            (
                br#"{"type":"delta","base":1,"version":2,"upserts":[{"id":"x","labels":["x"],"upstream":"ftp://a"}]}"#,
                "route \"x\"",
            ),
            (
                br#"{"type":"delta","base":1,"version":2,"upserts":[{"id":"x","labels":["x"]}]}"#,
                "exactly one of upstream and redirect",
            ),
            (
                br#"{"type":"delta","base":1,"version":2,"upserts":[{"id":"x","labels":["x"],"upstream":"http://a:1","access":{"session":"x","owner":"o","groups":[3]}}]}"#,
                "group index 3",
            ),
            (
                br#"{"type":"delta","base":1,"version":2,"keys":{"current":{"id":"k","secret":"c2hvcnQ="}}}"#,
                "keys",
            ),
            (br#"{"type":"surprise","version":1}"#, "not a message"),
        ] {
            let err = decode(frame).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should name {want}");
        }
    }
}
