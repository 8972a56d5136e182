//! The control plane's integration tests, one module per subject, in one
//! test binary: each binary costs a link of the whole dependency tree (SQLite,
//! axum, rustls, hyper…), which was most of the time `cargo test` spent
//! building twelve of them.
//!
//! Sharing a process is safe for these tests: none sets an environment
//! variable, the working directory or a global tracing subscriber in this
//! process. What needs a process of its own runs the `sessiongate` binary
//! as a child (`common::Sessiongate`); everything else runs the server in
//! process (`testkit::server::InProcess`) or drives a `ControlPlane`
//! directly. Run one module with `cargo test -p control-plane --test
//! integration <module>::`.
//!
//! - `access`: browser access: links, cookies, sharing, revocation.
//! - `api`: the REST API through the router, on a manual clock.
//! - `console`: the web console over HTTP, and users' permissions in the
//!   API (issue 19).
//! - `ctl`: `sessiongate ctl` as a process.
//! - `gateways`: a control plane and two gateways as processes (issue
//!   17): changes, revocations and key rotations on both before the API
//!   answers, the control plane killed and back, readiness, gateway tokens,
//!   activity reaching the reaper.
//! - `group_commit`: concurrent writes sharing commits.
//! - `hostile_fuzz`: what the fuzz targets (`fuzz/`) found.
//! - `hostile_http`: hostile browsers, apps and clients at the gateway
//!   (issue 15): cookies, forwarding headers, upgrades, error pages.
//! - `hostile_revocation`: no gap between a change and the live connections
//!   and in-flight responses it ends (issue 15).
//! - `hostile_*`: issue 15's findings, one module per area, each test
//!   proving a hole closed: `hostile_listener` (the API listener's limits),
//!   `hostile_keys` (key material's modes), `hostile_targets` (SSRF),
//!   `hostile_slugs` (slugs on the portal host's one origin),
//!   `hostile_bruteforce` (failed authentications per address).
//! - `jar`: the test browser's cookie jar itself.
//! - `lifecycle`: sessions end to end, and `kill -9` durability.
//! - `logging`: the binary's access log and request spans.
//! - `metrics`: `/metrics`, parsed.
//! - `postgres`: `serve` on PostgreSQL (`control_plane.database`): kept
//!   and routed across a restart; a refusing database named without its
//!   password. Tests marked `sqlite::`/`postgres::` elsewhere run on both.
//! - `reaper`: the lifecycle reaper on a manual clock.
//! - `serve`: configuration errors, reload, SIGHUP and SIGTERM.
//! - `tls`: SNI, h2, certificate reload, re-encryption, redirects.
//! - `workshop`: the training portal's API.
//! - `workshop_catalog`: the portal's catalogs, environment status, session
//!   schedule, extension and termination, and its session caps (issue 16),
//!   on a manual clock.
//! - `workshop_oauth`: its tokens (revocation, refresh rotation, the client
//!   in the form) and its paths without their trailing slash (issue 16).
//! - `workshop_request`: the request endpoint as the portal's real clients
//!   use it, and its activation links (issue 16).

mod common;

mod access;
mod acme;
mod api;
mod console;
mod ctl;
mod gateways;
mod group_commit;
mod hostile_bruteforce;
mod hostile_fuzz;
mod hostile_http;
mod hostile_keys;
mod hostile_listener;
mod hostile_revocation;
mod hostile_slugs;
mod hostile_targets;
mod jar;
mod lifecycle;
mod logging;
mod metrics;
mod oidc;
mod postgres;
mod reaper;
mod serve;
mod tls;
mod workshop;
mod workshop_catalog;
mod workshop_oauth;
mod workshop_request;
mod workspace;
