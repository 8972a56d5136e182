//! The gateways this control plane drives, and the one way to reach them
//! (`docs/gateway-protocol.md`): every key rotation and revocation is a
//! [`Message`] sent through [`Gateways::send`], never a write into a
//! gateway's memory.
//!
//! `serve` has one gateway, in this process ([`LocalGateway`]), which
//! applies each message before `send` returns, so an API answer still comes
//! after the gateway shows the change. Remote gateways following the route
//! stream will be reached through the same `send`.

use gateway::sync::{Applied, LocalGateway, Message};

/// The data planes that follow this control plane.
#[derive(Clone, Debug)]
pub struct Gateways {
    local: Vec<LocalGateway>,
}

impl Gateways {
    /// The gateways of `serve`: those in this process.
    pub fn local(gateways: Vec<LocalGateway>) -> Self {
        Gateways { local: gateways }
    }

    /// Delivers `message` to every gateway and returns once each has applied
    /// it, with what each did, in the order the gateways were given.
    pub fn send(&self, message: Message) -> Vec<Applied> {
        self.local
            .iter()
            .map(|g| g.apply(message.clone()))
            .collect()
    }
}
