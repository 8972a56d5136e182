//! The sessiongate data plane.
//!
//! It knows routes, not sessions: the control plane compiles sessions into a
//! [`RouteTable`] and publishes it through a [`RouteHandle`]; every request does
//! one atomic load of the current table and never waits on the control plane.
//!
//! # Layout
//! - [`table`]: `RouteTable` and its building (`mod.rs`), routes and their
//!   specs (`route.rs`), per-route state that survives table swaps
//!   (`state.rs`: activity, revocations, live upgraded connections), how a
//!   revocation reaches what a route let in before it (`revocation.rs`), the
//!   sharded copy-on-write maps (`map.rs`), the `ArcSwap` handle (`handle.rs`).
//! - [`names`]: the canonical forms of hosts, DNS labels and slugs.
//! - [`publish`]: `RoutePublisher`, one task that applies queued changes in
//!   batches, one table version per batch.
//! - [`sync`]: what the control plane sends a gateway (`Message`: table
//!   snapshots and deltas, keys), `Follower`, which applies it and closes
//!   what a change revokes, their JSON form for the route stream and the
//!   table file, and the activity reports that go back.
//! - [`router`]: the pure lookup from host and path to a route.
//! - [`chp`]: configurable-http-proxy's routing rules (decoded paths as
//!   canonical slugs, target paths joined) for `sessiongate chp`.
//! - [`proxy`]: the request path as named phases over a per-request context
//!   (`phases.rs`), and browser access on it (`access.rs`).
//! - [`headers`]: header operations, one concern per file: hop-by-hop,
//!   forwarding (and the proxies trusted to send it), request id, upgrades,
//!   the cookies an app may set, and the rewrites made of them.
//! - [`access`]: the signed cookie, access lists and access links.
//! - [`upstream`]: the pooled upstream client and its error classification.
//! - `tunnel`: copying upgraded connections (WebSocket) both ways.
//! - [`server`]: the accept loop, timeouts, graceful shutdown.
//! - `limits`: the connection limits (all, per client) and the lease by
//!   which a connection, or the tunnel it became, holds its place in them.
//! - [`error`]: every failure, its status, and its HTML/JSON rendering.
//! - [`body`]: the body types, without boxing.
//! - [`access_log`]: the line per request, written when its response ends.
//! - [`metrics`]: the Prometheus counters and gauges, sharded per thread.
//! - `clock`: wall-clock time as Unix milliseconds and seconds.
#![forbid(unsafe_code)]

pub mod access;
pub mod access_log;
pub mod body;
pub mod chp;
mod clock;
pub mod error;
pub mod headers;
mod limits;
pub mod metrics;
pub mod names;
pub mod pool;
pub mod proxy;
pub mod publish;
pub mod router;
pub mod server;
pub mod sync;
pub mod table;
mod tunnel;
pub mod upstream;
pub mod workspace;

pub use proxy::{ConnInfo, HostCoverage, PortalService, Proxy};
pub use publish::{PublishError, Queued, RoutePublisher};
pub use server::{run, run_tls, ServerConfig, TlsListener};
pub use table::{
    Route, RouteChange, RouteHandle, RouteSpec, RouteState, RouteTable, RouteTarget, Routes,
    TableChange, TableError, TableObserver, TableSettings, Upstream, UpstreamError,
};
pub use upstream::{UpstreamClient, UpstreamConfig};
