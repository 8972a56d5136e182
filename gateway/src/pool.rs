//! Keep-alive connections to plain `http://` upstreams, on hyper's
//! `client::conn::http1`: the pool hyper-util's legacy client gave, for
//! less work per request.
//!
//! - **Nothing spawned per request.** A connection goes back to the pool
//!   when its response body has been read to the end
//!   ([`crate::body::UpstreamBody`]); a checkout takes one hyper reports
//!   ready, or else the one that just went back, a moment from ready. The
//!   legacy client spawned a task per request to wait for that readiness.
//!   One task per *connection* drives it, as before.
//! - **Sharded, short locks**: the idle connections are in 16 shards by
//!   upstream, each behind its own mutex held for a few comparisons. Not per
//!   thread: under tokio's work-stealing scheduler a response often ends on
//!   another thread than the next request to that upstream starts on, and
//!   per-thread lists then opened a new connection for about one request in
//!   forty (measured: ~1,100 per 4 s of 32-connection load, against none).
//! - **Keyed without hashing strings each time**: by a hash of the
//!   upstream's authority made with a few multiplications, the authority
//!   itself compared on a hit.
//!
//! A request that hyper did not send (the connection closed under it, as an
//! upstream's keep-alive timeout does) is sent again on a new connection, as
//! the legacy client retried canceled requests.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
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

/// Shards of the idle connections, by upstream.
const SHARDS: usize = 16;

/// An idle connection: its last response was read to the end, and it is
/// ready for the next request or a moment from it.
struct Pooled {
    sender: SendRequest<UpstreamRequestBody>,
    authority: Authority,
    /// When it went back to the pool.
    used: Instant,
}

/// Connections to plain `http://` upstreams for one upstream client.
#[derive(Clone)]
pub(crate) struct Http1Pool(Arc<PoolInner>);

/// Shared by the pool's handles (one in each [`PoolReturn`]).
pub(crate) struct PoolInner {
    idle: [Mutex<Idle>; SHARDS],
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections kept per upstream.
    max_per_upstream: usize,
}

impl std::ops::Deref for Http1Pool {
    type Target = PoolInner;

    fn deref(&self) -> &PoolInner {
        &self.0
    }
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_per_upstream", &self.max_per_upstream)
            .finish_non_exhaustive()
    }
}

/// The pool key of `authority`.
fn key(authority: &Authority) -> u64 {
    let mut h = KeyHasher(0);
    h.write(authority.as_str().as_bytes());
    h.0
}

/// A pooled connection on loan to one response: put back into the pool
/// when its body ends ([`crate::body::UpstreamBody`]), or closed if the body
/// is dropped before its end.
pub struct PoolReturn {
    pool: Http1Pool,
    key: u64,
    authority: Authority,
    sender: SendRequest<UpstreamRequestBody>,
}

impl std::fmt::Debug for PoolReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolReturn")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl PoolReturn {
    /// The response is over: the connection serves the next request.
    pub fn put_back(self) {
        self.pool.put_back(self.key, &self.authority, self.sender);
    }
}

/// What a checkout found.
enum Checkout {
    Ready(SendRequest<UpstreamRequestBody>),
    /// None ready; this one's response has ended, and its connection is a
    /// moment from ready (or found closed).
    Finishing(SendRequest<UpstreamRequestBody>),
    None,
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
        Http1Pool(Arc::new(PoolInner {
            idle: std::array::from_fn(|_| Mutex::new(Idle::default())),
            connect_timeout,
            idle_timeout,
            max_per_upstream: max_per_upstream.max(1),
        }))
    }

    /// Sends `req` (an origin-form URI, its `Host` set) to `authority` on a
    /// pooled connection or a new one; the connection comes back with the
    /// response, to be put back once its body is read. An upgrade request's
    /// connection is not pooled: it becomes the tunnel.
    pub(crate) async fn send(
        &self,
        authority: &Authority,
        req: Request<UpstreamRequestBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<Box<PoolReturn>>), SendError> {
        let key = key(authority);
        let mut req = req;
        // A pooled connection first; a request it did not send (closed
        // under it) goes once more, on a new connection.
        let mut fresh = false;
        loop {
            let found = if fresh {
                Checkout::None
            } else {
                self.checkout(key, authority)
            };
            let mut sender = match found {
                Checkout::Ready(s) => s,
                // Put back when its response ended: ready as soon as its
                // task (perhaps on another thread this very moment)
                // finishes its poll, or closed.
                Checkout::Finishing(mut s) => match s.ready().await {
                    Ok(()) => s,
                    Err(_) => {
                        fresh = true;
                        self.connect(authority).await?
                    }
                },
                Checkout::None => {
                    fresh = true;
                    self.connect(authority).await?
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // Boxed: the response carrying it is moved through the
                    // proxy's phases, and a pointer moves cheaper.
                    let reuse = (!upgrade).then(|| {
                        Box::new(PoolReturn {
                            pool: self.clone(),
                            key,
                            authority: authority.clone(),
                            sender,
                        })
                    });
                    return Ok((resp, reuse));
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

    /// A ready connection to `authority`, else one that is
    /// finishing its last response; closed and idle-expired ones are
    /// dropped on the way.
    fn checkout(&self, key: u64, authority: &Authority) -> Checkout {
        {
            let mut idle = self.shard(key);
            let Some(list) = idle.get_mut(&key) else {
                return Checkout::None;
            };
            let now = Instant::now();
            let mut finishing = None;
            let mut i = list.len();
            while i > 0 {
                i -= 1;
                let p = &list[i];
                if p.sender.is_closed() || now.saturating_duration_since(p.used) > self.idle_timeout
                {
                    list.swap_remove(i);
                    continue;
                }
                if p.authority != *authority {
                    continue;
                }
                if p.sender.is_ready() {
                    return Checkout::Ready(list.swap_remove(i).sender);
                }
                finishing.get_or_insert(i);
            }
            match finishing {
                Some(i) => Checkout::Finishing(list.swap_remove(i).sender),
                None => Checkout::None,
            }
        }
    }

    /// The shard of `key`, locked. A panic while it was held leaves a list
    /// of connections, still usable.
    fn shard(&self, key: u64) -> MutexGuard<'_, Idle> {
        self.idle[(key >> 60) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `sender`, its response read to the end, for a later checkout.
    /// A full list drops a closed or the least recently used connection.
    fn put_back(&self, key: u64, authority: &Authority, sender: SendRequest<UpstreamRequestBody>) {
        {
            let mut idle = self.shard(key);
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
        }
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
