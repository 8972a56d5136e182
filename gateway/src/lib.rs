//! The sessiongate data plane.
//!
//! It knows routes, not sessions: the control plane compiles sessions into a
//! [`RouteTable`] and publishes it through a [`RouteHandle`]; every request does
//! one atomic load of the current table and never waits on the control plane.
//!
//! # Layout
//! - [`table`]: `RouteTable`, `Route`, per-route runtime state that survives
//!   table swaps (activity, live upgraded connections), the `ArcSwap` handle.
//!   Tables are sharded copy-on-write maps, so a change costs the change.
//! - [`publish`]: `RoutePublisher`, one task that applies queued changes in
//!   batches, one table version per batch.
//! - [`router`]: the pure lookup from host and path to a route.
//! - [`proxy`]: the request path as phases, from early checks to the response.
//! - [`headers`]: hop-by-hop removal, forwarding headers, request ids.
//! - [`upstream`]: the pooled upstream client and its error classification.
//! - [`tunnel`]: copying upgraded connections (WebSocket) both ways.
//! - [`server`]: the accept loop, limits, timeouts, graceful shutdown.
//! - [`error`]: every failure, its status, and its HTML/JSON rendering.
//! - [`body`]: the body types, without boxing.
//! - [`access_log`]: the line per request, written when its response ends.
#![forbid(unsafe_code)]

pub mod access;
pub mod access_log;
pub mod body;
mod clock;
pub mod error;
pub mod headers;
pub mod metrics;
pub mod names;
pub mod proxy;
pub mod publish;
pub mod router;
pub mod server;
pub mod table;
mod tunnel;
pub mod upstream;

pub use proxy::{ConnInfo, HostCoverage, PortalService, Proxy};
pub use publish::{PublishError, Queued, RoutePublisher};
pub use server::{run, run_tls, ServerConfig, TlsListener};
pub use table::{
    Route, RouteChange, RouteHandle, RouteSpec, RouteState, RouteTable, RouteTarget, Routes,
    TableError, TableSettings, Upstream, UpstreamError,
};
pub use upstream::{UpstreamClient, UpstreamConfig};
