//! The sessiongate control plane.
//!
//! It keeps users, groups and sessions in a durable store, drives the
//! session lifecycle, compiles sessions into routes and swaps them into the
//! gateway's table, and serves the REST API, the training portal's API and
//! the operator CLI.
//!
//! # Layout
//! Where a change goes:
//! - [`config`]: the TOML configuration, environment overrides, validation.
//! - [`serve`]: `sessiongate serve`: start-up order, listeners, shutdown.
//! - [`datadir`]: the data dir and key material: created private, checked
//!   at start.
//! - [`control`]: the operations, one file per domain (directory, tokens,
//!   sessions, routing, access, the reaper's pass) on [`control::ControlPlane`].
//! - [`session`]: the session model and validation, the lifecycle state
//!   machine and what an action does to a record, the reaper's rules.
//! - [`workshop`]: workshop environments and the training portal's
//!   operations (OAuth2, allocation, reserves), on top of `control`.
//! - [`error`]: [`error::ControlError`], with the status and code of each kind.
//! - [`writes`]: the write lock: [`writes::WriteGuard`] and joined writes
//!   sharing a commit.
//! - [`store`]: SQLite or PostgreSQL through sqlx (`Any`), migrations per
//!   engine, one file per table family.
//! - [`publish`]: a session record → its gateway route.
//! - [`gateways`]: the gateways this control plane drives, reached only by
//!   the messages of `docs/gateway-protocol.md`.
//! - [`access`]: browser access, the control plane's half: links, keys,
//!   the redirect allow-list, who may open a session.
//! - [`console`]: the web console under `/ui/`: server-rendered pages,
//!   sign-in, CSRF.
//! - [`api`]: the HTTP API handlers (axum), their view types, the
//!   OpenAPI document, and the listener that serves them with its limits.
//! - [`auth`]: API tokens, hashed at rest, checked in constant time.
//! - [`permissions`]: who may do what: the one set of rules the API and the
//!   console both apply.
//! - [`audit`]: each session's history (who did what, when), written with
//!   the change it records.
//! - [`limits`]: the brute-force limit: failed authentications per client
//!   address.
//! - [`ctl`]: `sessiongate ctl`, the operator CLI over the API.
//! - [`chp`]: `sessiongate chp`, configurable-http-proxy's command line and
//!   REST API on the gateway's table and proxy, for JupyterHub.
//! - [`reload`]: static-route reload on SIGHUP and on file change.
//! - [`metrics`]: the control plane's Prometheus metrics.
//! - [`clock`]: wall and manual clocks, so the lifecycle can be tested.
//! - [`time`]: RFC 3339 formatting.
//! - [`memory`]: giving freed memory back after large transient work.
// Deny, not forbid: `memory::release_freed` (one call to glibc's
// `malloc_trim`) is the one audited exception.
#![deny(unsafe_code)]

pub mod access;
pub mod api;
pub mod audit;
pub mod auth;
pub mod chp;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod ctl;
pub mod datadir;
pub mod error;
pub mod follow;
pub mod gateways;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod oidc;
pub mod permissions;
pub mod publish;
pub mod reload;
pub mod replicas;
pub mod serve;
pub mod session;
pub mod store;
pub mod time;
pub mod trust;
pub mod workshop;
pub mod writes;

/// `sessiongate certs dev`: writes the files and says what was written.
pub fn certs_dev(domain: &str, out: &std::path::Path) -> Result<String, certs::CertError> {
    let f = certs::dev::generate(domain, out)?;
    Ok(format!(
        "{} CA:   {} (key {})\ncertificate for {domain} and *.{domain}: {} (key {})\n\
         trust the CA: curl --cacert {} https://{domain}/\n",
        if f.ca_reused { "reused" } else { "new" },
        f.ca_cert.display(),
        f.ca_key.display(),
        f.cert.display(),
        f.key.display(),
        f.ca_cert.display(),
    ))
}
