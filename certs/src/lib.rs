//! TLS material for sessiongate: certificates from PEM files, SNI
//! resolution with wildcards, hot reload that keeps the last good
//! certificate, development certificates, and the rustls configurations of
//! the TLS listener and of re-encryption to `https://` upstreams.
//!
//! # Design
//!
//! Certificates live in one directory as `NAME.crt` + `NAME.key` pairs (PEM,
//! leaf first, then intermediates). [`CertDir::load`] reads them into a
//! [`CertStore`]: an immutable index of exact DNS names, one-label wildcards
//! (`*.sessions.example.com`) and an optional default, built from each leaf's
//! subjectAltName. The TLS listener's [`SniResolver`] holds the current store
//! in an `ArcSwap`: a handshake reads it without locking, and a reload builds a
//! whole new store and swaps the pointer, so connections already open keep the
//! certificate they negotiated and new ones see the new store at once.
//!
//! [`spawn_reloader`] polls the directory with `stat` only (size, mtime and
//! inode of each pair file) and re-reads it when something changed. A pair
//! whose new files are bad keeps serving its last good certificate, so a
//! half-copied renewal never takes a site down; a deleted pair goes away.
//!
//! The same resolver answers [`SniResolver::covers`]: whether the certificate
//! chosen for a connection's SNI name also covers the request's `Host`, for the
//! gateway's `421 Misdirected Request`. [`SniResolver::certificates`] lists
//! each certificate's notAfter for the
//! `sessiongate_certificate_expiry_timestamp_seconds` gauge.
//!
//! Everything uses rustls with the *ring* provider, limited to Mozilla's
//! "intermediate" profile (TLS 1.2 and 1.3, AEAD suites with forward secrecy).
//!
//! # Layout
//!
//! - `error.rs`: [`CertError`], which always names the file at fault.
//! - `load.rs`: one pair from PEM ([`load_pair`], [`LoadedCert`]).
//! - `resolver.rs`: [`CertStore`], [`SniResolver`], [`name_covers`].
//! - `reload.rs`: [`CertDir`], [`reload_now`], [`spawn_reloader`].
//! - `tls.rs`: [`server_config`], [`client_config`], [`AcceptAnyServerCert`].
//! - `dev.rs`: [`dev::generate`], a development CA and wildcard certificate.
//! - `on_demand.rs`: [`on_demand::OnDemand`], leaves for exact served names
//!   from the development CA, issued at the first handshake that asks; the
//!   [`on_demand::Source`] trait that it and ACME implement.
//! - `acme.rs`: [`acme::Acme`], certificates from an ACME CA (HTTP-01 and
//!   TLS-ALPN-01), renewed at two thirds of their lifetime.
//! - `accept.rs`: [`Acceptor`], the TLS listener's handshake: ClientHello,
//!   then the on-demand certificate or ACME answer it needs, then the rest.
#![forbid(unsafe_code)]

mod accept;
pub mod acme;
pub mod dev;
mod error;
mod load;
pub mod on_demand;
mod reload;
mod resolver;
mod tls;

#[cfg(test)]
mod testutil;

pub use accept::{Accepted, Acceptor};
pub use error::CertError;
pub use load::{load_pair, read_ca, LoadedCert};
pub use reload::{reload_now, spawn_reloader, CertDir, MIN_POLL_INTERVAL};
pub use resolver::{name_covers, CertInfo, CertStore, SniResolver};
pub use tls::{
    client_config, client_config_with_identity, https_client, server_config,
    server_config_with_client_certs, AcceptAnyServerCert, ClientCerts,
};
