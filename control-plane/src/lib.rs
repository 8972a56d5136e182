//! The sessiongate control plane.
//!
//! For now it serves the static routes of the configuration file, reloads them
//! on SIGHUP or when the file changes, and exposes the route table over the
//! API. Sessions, users, groups and the store arrive with the control-plane issue.
//!
//! # Layout
//! - [`config`]: the TOML configuration, environment overrides, validation.
//! - [`serve`]: `sessiongate serve`: start-up order, listeners, shutdown.
//! - [`reload`]: static-route reload on SIGHUP and on file change.
//! - [`api`]: the HTTP API handlers (axum).
//! - [`auth`]: the admin token and bearer checks.
//! - [`session`]: the session model and its lifecycle state machine.
//! - [`time`]: RFC 3339 formatting.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod reload;
pub mod serve;
pub mod session;
pub mod time;
