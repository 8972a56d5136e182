//! Test support for sessiongate, shared by the gateway's and the control
//! plane's tests, the gateway's benches and the `bench` harness: real
//! origins on `127.0.0.1:0`, a client that shows the bytes on the wire,
//! route tables built with [`gateway::RouteSpec::new`], and the control plane
//! in process. Nothing here is a mock: the origins are hyper servers, the
//! WebSocket peer is tungstenite, the server is `serve` itself on real
//! SQLite.
//!
//! # Layout
//! - [`origin`]: the HTTP origin: the tests' paths (`/slow`, `/big`,
//!   `/echo-body`, `/stream`, `/hold`, `/hop`, `/set-cookie`, `/ws`, a [`Reply`]
//!   for any other) and the benchmark's fast path ([`Origin::bench`]), with
//!   request and connection counters.
//! - [`ws`]: the WebSocket echo peer, with upgrade and message counters.
//! - `listen` (private): binding `127.0.0.1:0`, the accept loop, and the
//!   runtime the origins run on: the caller's, or one of their own.
//! - [`client`]: the raw HTTP/1.1 client ([`exchange`], [`exchange_from`],
//!   [`http`], [`api_request`]) and [`Endpoints`], a running sessiongate's
//!   addresses and admin token.
//! - [`routes`]: route specs, table settings and empty tables.
//! - [`wait`]: polling with a deadline ([`eventually`], [`DEADLINE`]).
//! - [`oidc`]: a real OpenID Connect provider (npm's oidc-provider under
//!   node) on a loopback port.
//! - [`pebble`]: a real ACME CA (Debian's pebble, with challtestsrv as its
//!   DNS) on loopback ports.
//! - [`fs`]: scratch directories ([`temp_dir`], [`TempDir`]).
//! - [`rng`]: a deterministic generator ([`XorShift`]).
//! - `server` (feature `control-plane`): `sessiongate serve` in process on
//!   port 0, `server::InProcess`, and the test configuration both
//!   harnesses start from.
//! - `postgres` (feature `postgres`): a real PostgreSQL cluster per test
//!   process, started on first use, and a fresh database per test
//!   (`postgres::database`).
#![forbid(unsafe_code)]

pub mod client;
pub mod fs;
mod listen;
pub mod oidc;
pub mod origin;
pub mod pebble;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod rng;
pub mod routes;
#[cfg(feature = "control-plane")]
pub mod server;
pub mod wait;
pub mod ws;

pub use client::{api_request, exchange, exchange_from, http, Endpoints, RawResponse};
pub use fs::{temp_dir, TempDir};
pub use origin::{fnv, pattern, Origin, Reply};
pub use rng::XorShift;
pub use wait::{eventually, DEADLINE};
pub use ws::WsEcho;
