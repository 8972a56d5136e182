//! The sessiongate control plane.
//!
//! It keeps users, groups and sessions in a durable store, drives the
//! session lifecycle, compiles sessions into routes and swaps them into the
//! gateway's table, and serves the REST API and the operator CLI.
//!
//! # Layout
//! - [`config`]: the TOML configuration, environment overrides, validation.
//! - [`serve`]: `sessiongate serve`: start-up order, listeners, shutdown.
//! - [`control`]: every operation: validate, write in one transaction, publish.
//! - [`store`]: SQLite through sqlx, migrations, portable queries.
//! - [`session`]: the session model, its lifecycle state machine, the reaper.
//! - [`publish`]: sessions → gateway routes.
//! - [`api`]: the HTTP API handlers (axum) and the OpenAPI document.
//! - [`auth`]: API tokens, hashed at rest, checked in constant time.
//! - [`ctl`]: `sessiongate ctl`, the operator CLI over the API.
//! - [`reload`]: static-route reload on SIGHUP and on file change.
//! - [`metrics`]: the control plane's Prometheus metrics.
//! - [`clock`]: wall and manual clocks, so the lifecycle can be tested.
//! - [`time`]: RFC 3339 formatting.
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod control;
pub mod ctl;
pub mod error;
pub mod metrics;
pub mod publish;
pub mod reload;
pub mod serve;
pub mod session;
pub mod store;
pub mod time;
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
