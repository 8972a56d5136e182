//! What a gateway does with what its control plane sends it
//! (`docs/gateway-protocol.md`): the messages, and [`LocalGateway`], which
//! applies them to the table, keys and live connections it serves.
//!
//! The control plane never reaches into a gateway's memory: it sends a
//! [`Message`] and gets back the version the gateway holds once it is
//! applied. `serve` delivers them in memory; a remote gateway will receive
//! the same messages over the route stream.
//!
//! Built so far: key rotation ([`Message::Keys`]) and revocation of users
//! ([`Message::Revoke`]). Route changes still reach the table through
//! [`crate::RoutePublisher`] on a table the control plane shares with the
//! in-process gateway.

use std::sync::Arc;

use crate::access::{KeyHandle, KeyRing};
use crate::table::RouteHandle;

/// One thing the control plane tells a gateway.
#[derive(Clone, Debug)]
pub enum Message {
    /// The cookie signing keys after a rotation: the gateway verifies with
    /// these from now on.
    Keys { ring: Arc<KeyRing> },
    /// Live connections to close, after the route changes that call for
    /// them are in the table.
    Revoke { revocations: Vec<Revocation> },
}

/// Close what a route let in that it no longer admits: "the live
/// connections of these users on route R" (they lost access through a
/// group), or "of route R" (`users` empty: whoever it no longer lets in).
/// Either way the gateway judges each connection against the route as its
/// table holds it now, so a revocation never closes what the route still
/// admits; `users` names who it is for, in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub route: Arc<str>,
    pub users: Vec<Arc<str>>,
}

/// What applying a message did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The table version the gateway holds after it: its acknowledgement.
    pub version: u64,
    /// Upgraded connections (WebSockets) it closed.
    pub closed: usize,
}

/// A gateway in this process: the table its proxies read and the keys they
/// verify cookies with.
#[derive(Clone, Debug)]
pub struct LocalGateway {
    routes: RouteHandle,
    keys: KeyHandle,
}

impl LocalGateway {
    pub fn new(routes: RouteHandle, keys: KeyHandle) -> Self {
        LocalGateway { routes, keys }
    }

    /// The keys its proxies verify cookies with.
    pub fn keys(&self) -> &KeyHandle {
        &self.keys
    }

    /// Applies `message` and answers once its effect is visible to every
    /// request that starts after this returns.
    pub fn apply(&self, message: Message) -> Applied {
        match message {
            Message::Keys { ring } => {
                self.keys.store_shared(ring);
                Applied {
                    version: self.routes.load().version(),
                    closed: 0,
                }
            }
            Message::Revoke { revocations } => self.revoke(&revocations),
        }
    }

    fn revoke(&self, revocations: &[Revocation]) -> Applied {
        let table = self.routes.load();
        let mut applied = Applied {
            version: table.version(),
            closed: 0,
        };
        for r in revocations {
            // A route that is gone has nothing left to close here: removal
            // is revoked where the table change is made.
            let Some(route) = table.route(&r.route) else {
                continue;
            };
            let n = route.state.revoke(Some(&route.spec));
            applied.closed += n;
            tracing::info!(route = %r.route, users = ?r.users, connections = n, "access revoked");
        }
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::SigningKey;
    use crate::table::{RouteSpec, RouteTarget, TableSettings, Upstream};

    fn ring(id: &str) -> KeyRing {
        KeyRing::new(SigningKey::new(id, &[7; 32]).unwrap(), None)
    }

    fn gateway() -> LocalGateway {
        let routes = RouteHandle::new();
        let upstream = Upstream::parse("http://127.0.0.1:1").unwrap();
        let settings = TableSettings {
            base_domains: vec!["example.test".into()],
            portal_host: None,
        };
        let spec = RouteSpec::new("a", RouteTarget::Upstream(upstream)).label("a");
        routes.publish(&settings, vec![spec]).unwrap();
        LocalGateway::new(routes, KeyHandle::new(ring("k1")))
    }

    #[test]
    fn keys_message_replaces_the_ring_and_acknowledges_the_version_held() {
        let gw = gateway();
        let held = gw.routes.load().version();
        let applied = gw.apply(Message::Keys {
            ring: Arc::new(ring("k2")),
        });
        assert_eq!(applied.version, held);
        assert_eq!(gw.keys.load().current_id(), "k2");
    }

    #[test]
    fn revoking_a_route_that_is_gone_closes_nothing() {
        let gw = gateway();
        let applied = gw.apply(Message::Revoke {
            revocations: vec![
                Revocation {
                    route: "a".into(),
                    users: vec!["u1".into()],
                },
                Revocation {
                    route: "missing".into(),
                    users: vec![],
                },
            ],
        });
        assert_eq!(applied.closed, 0);
        assert_eq!(applied.version, gw.routes.load().version());
    }
}
