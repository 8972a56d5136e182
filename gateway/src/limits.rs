//! A listener's connection limits, and the lease by which a connection holds
//! its place in them.
//!
//! - `max_connections`: a semaphore. A permit is taken before `accept`, so
//!   past the limit new connections wait in the kernel's accept queue.
//! - `max_connections_per_ip`: [`PerClient`], a count per client. Past it, a
//!   new connection from that client is closed as soon as it is accepted
//!   and counted in `sessiongate_connections_refused_total`, as HAProxy's
//!   `tcp-request connection reject` and Envoy's connection limits do:
//!   left in the accept queue, it would hold up every other client's
//!   connections behind it.
//! - [`ConnLease`]: the permit, the per-client slot and the connection's
//!   place in the `sessiongate_connections_open` gauge, held for as long as
//!   the connection is open — and, when it is upgraded (WebSocket), for as
//!   long as the tunnel it became is open, so that upgraded connections
//!   count towards both limits like any other.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::metrics::GatewayMetrics;

/// Whose connections count together against `max_connections_per_ip`: an
/// IPv4 address, or the /64 an IPv6 address is in. A host is usually given
/// a whole /64 and may pick any address in it at no cost, so counting
/// IPv6 addresses one by one would limit nothing. An IPv4-mapped IPv6
/// address (a dual-stack listener's IPv4 client) counts as its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    V4(Ipv4Addr),
    /// The first 64 bits of the address.
    V6(u64),
}

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4),
                None => ClientKey::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// Shards of the per-client counts: a connection's open and close take one
/// shard's lock, so connections closing on different threads seldom meet.
const SHARDS: usize = 16;

/// Open connections per client, for `max_connections_per_ip`. Touched once
/// when a connection is accepted and once when it (or its tunnel) closes,
/// never per request.
#[derive(Debug)]
pub(crate) struct PerClient {
    limit: usize,
    shards: Box<[Mutex<HashMap<ClientKey, usize>>]>,
}

impl PerClient {
    pub(crate) fn new(limit: usize) -> Arc<PerClient> {
        Arc::new(PerClient {
            limit: limit.max(1),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        })
    }

    fn shard(&self, key: &ClientKey) -> &Mutex<HashMap<ClientKey, usize>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// A slot for one more connection from `ip`, or `None` when it has
    /// `limit` open already.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = ClientKey::of(ip);
        // A panic cannot leave a count half-written, so a poisoned lock
        // is still right to use.
        let mut counts = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        let open = counts.entry(key).or_insert(0);
        if *open >= self.limit {
            return None;
        }
        *open += 1;
        Some(ClientSlot {
            table: Arc::clone(self),
            key,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let key = ClientKey::of(ip);
        let counts = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&key).copied().unwrap_or(0)
    }
}

/// One connection's place in its client's count; given back when dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    table: Arc<PerClient>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self
            .table
            .shard(&self.key)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(open) = counts.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                // Nothing is kept for a client with no connection open.
                counts.remove(&self.key);
            }
        }
    }
}

/// What an upgraded connection (WebSocket) is held to: the listener's
/// tunnel idle timeout, and its drain signal, which closes tunnels when
/// shutdown begins (a tunnel would not end on its own within the grace).
#[derive(Clone, Debug)]
pub(crate) struct TunnelLimits {
    pub(crate) idle_timeout: Duration,
    pub(crate) drain: watch::Receiver<bool>,
}

/// A client connection's place in the listener's limits: the
/// `max_connections` permit, the per-client slot, and the
/// `sessiongate_connections_open` gauge. The connection holds it, its
/// requests hold it, and an upgrade hands it to the tunnel, so it is given
/// back when the last of them ends.
#[derive(Debug)]
pub(crate) struct ConnLease {
    _permit: OwnedSemaphorePermit,
    _client: ClientSlot,
    metrics: Arc<GatewayMetrics>,
    pub(crate) tunnel: TunnelLimits,
}

impl ConnLease {
    /// Counts the connection as open until the lease is dropped.
    pub(crate) fn new(
        permit: OwnedSemaphorePermit,
        client: ClientSlot,
        metrics: Arc<GatewayMetrics>,
        tunnel: TunnelLimits,
    ) -> ConnLease {
        metrics.connection_opened();
        ConnLease {
            _permit: permit,
            _client: client,
            metrics,
            tunnel,
        }
    }
}

impl Drop for ConnLease {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_64s() {
        let key = |s: &str| ClientKey::of(s.parse().unwrap());
        let cases: &[(&str, &str, bool)] = &[
            ("192.0.2.1", "192.0.2.1", true),
            ("192.0.2.1", "192.0.2.2", false),
            ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", true),
            ("2001:db8:1:2::1", "2001:db8:1:3::1", false),
            ("::ffff:192.0.2.1", "192.0.2.1", true),
            ("::ffff:192.0.2.1", "::ffff:192.0.2.2", false),
            ("::1", "::2", true),
        ];
        for (a, b, same) in cases {
            assert_eq!(key(a) == key(b), *same, "{a} and {b}");
        }
    }

    #[test]
    fn a_client_gets_limit_slots_and_freed_ones_back() {
        let table = PerClient::new(2);
        let (ip, other) = ("2001:db8::1".parse().unwrap(), "192.0.2.9".parse().unwrap());
        let first = table.acquire(ip).expect("first");
        let second = table
            .acquire("2001:db8::2".parse().unwrap())
            .expect("second, same /64");
        assert!(table.acquire(ip).is_none(), "third from the same /64");
        assert!(
            table.acquire(other).is_some(),
            "another client is not held up"
        );
        drop(first);
        let again = table.acquire(ip).expect("a freed slot");
        drop((second, again));
        assert_eq!(table.open(ip), 0);
    }
}
