//! Keep-alive connections to plain `http://` upstreams, on hyper's
//! `client::conn::http1`: the pool hyper-util's legacy client gave, for
//! less work per request.
//!
//! - **Per worker thread, no lock.** Each thread keeps its own connections
//!   (a thread-local map), so a checkout is a `RefCell` borrow, not a shared
//!   mutex; a request finds its thread's connections, and its upstream's
//!   sockets stay warm in that thread's cache.
//! - **Nothing spawned per request.** A connection is put back as soon as
//!   its request is sent, busy; a checkout takes one that hyper says is
//!   ready (its last response read to the end). The legacy client spawned a
//!   task per request to wait for that readiness before putting it back.
//!   One task per *connection* drives it, as before.
//! - **Keyed without hashing strings each time**: by the client and a hash of
//!   the upstream's authority made with a few multiplications, the
//!   authority itself compared on a hit.
//!
//! A request that hyper did not send (the connection closed under it, as an
//! upstream's keep-alive timeout does) is sent again on a new connection, as
//! the legacy client retried canceled requests.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::uri::Authority;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::body::UpstreamRequestBody;

/// A multiply-and-rotate hasher for keys that are already `u64`s: the map's
/// keys are made by [`key`], so hashing them again would be wasted work.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Idle = HashMap<u64, Vec<Pooled>, BuildHasherDefault<KeyHasher>>;

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// A connection in a thread's pool: busy (its response still being read)
/// or ready for the next request.
struct Pooled {
    sender: SendRequest<UpstreamRequestBody>,
    authority: Authority,
    /// When its last request was sent.
    used: Instant,
}

/// Which pool a client's connections are in: clients (one per gateway, or
/// per CHP-mode proxy) do not share connections.
static NEXT_POOL: AtomicU32 = AtomicU32::new(1);

/// Connections to plain `http://` upstreams for one upstream client.
#[derive(Clone, Debug)]
pub(crate) struct Http1Pool {
    id: u32,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Connections kept per upstream and thread, busy ones included.
    max_per_upstream: usize,
}

/// The pool key of `authority` for pool `id`.
fn key(id: u32, authority: &Authority) -> u64 {
    let mut h = KeyHasher(u64::from(id));
    h.write(authority.as_str().as_bytes());
    h.0
}

/// Why a request got no response from the upstream.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made.
    Connect(io::Error),
    /// The connection failed while the request was sent or answered.
    Http(hyper::Error),
}

impl Http1Pool {
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_per_upstream: usize,
    ) -> Self {
        Http1Pool {
            id: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            connect_timeout,
            idle_timeout,
            max_per_upstream: max_per_upstream.max(1),
        }
    }

    /// Sends `req` (an origin-form URI, its `Host` set) to `authority` on a
    /// pooled connection or a new one. An upgrade request's connection is
    /// not pooled: it becomes the tunnel.
    pub(crate) async fn send(
        &self,
        authority: &Authority,
        req: Request<UpstreamRequestBody>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, SendError> {
        let key = key(self.id, authority);
        let mut req = req;
        // A pooled connection first; a request it did not send (closed
        // under it) goes once more, on a new connection.
        let mut fresh = false;
        loop {
            let mut sender = match self.checkout(key, authority) {
                Some(s) if !fresh => s,
                _ => {
                    fresh = true;
                    self.connect(authority).await?
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    if !upgrade {
                        self.put_back(key, authority, sender);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        req = unsent;
                        fresh = true;
                    }
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// A ready connection of this thread's to `authority`, dropping closed
    /// and idle-expired ones on the way.
    fn checkout(
        &self,
        key: u64,
        authority: &Authority,
    ) -> Option<SendRequest<UpstreamRequestBody>> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.get_mut(&key)?;
            let now = Instant::now();
            let mut i = list.len();
            while i > 0 {
                i -= 1;
                let p = &list[i];
                if p.sender.is_closed() {
                    list.swap_remove(i);
                    continue;
                }
                if !p.sender.is_ready() {
                    continue;
                }
                if now.saturating_duration_since(p.used) > self.idle_timeout {
                    list.swap_remove(i);
                    continue;
                }
                if p.authority == *authority {
                    return Some(list.swap_remove(i).sender);
                }
            }
            None
        })
    }

    /// Keeps `sender`, now busy with its request, for a later checkout. A
    /// full list drops a closed or the oldest connection (a dropped busy
    /// connection still finishes its response, then closes).
    fn put_back(&self, key: u64, authority: &Authority, sender: SendRequest<UpstreamRequestBody>) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(key).or_default();
            if list.len() >= self.max_per_upstream {
                let evict = list.iter().position(|p| p.sender.is_closed()).or_else(|| {
                    list.iter()
                        .enumerate()
                        .min_by_key(|(_, p)| p.used)
                        .map(|(i, _)| i)
                });
                if let Some(i) = evict {
                    list.swap_remove(i);
                }
            }
            list.push(Pooled {
                sender,
                authority: authority.clone(),
                used: Instant::now(),
            });
        });
    }

    /// A new connection: the authority resolved (an IP literal as it is),
    /// each address tried in turn within the connect timeout, and hyper's
    /// HTTP/1.1 client on it, driven by a task of its own.
    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<SendRequest<UpstreamRequestBody>, SendError> {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_matches(['[', ']']);
        let deadline = Instant::now() + self.connect_timeout;
        let timed_out = || {
            SendError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ))
        };
        let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| timed_out())?
                .map_err(SendError::Connect)?
                .collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
        for addr in addrs {
            match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
                Err(_) => return Err(timed_out()),
                Ok(Err(e)) => last = e,
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let (sender, conn) = http1::Builder::new()
                        .handshake(TokioIo::new(stream))
                        .await
                        .map_err(SendError::Http)?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.with_upgrades().await {
                            tracing::debug!(error = %e, "upstream connection ended with an error");
                        }
                    });
                    return Ok(sender);
                }
            }
        }
        Err(SendError::Connect(last))
    }
}
