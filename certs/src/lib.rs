//! TLS material for sessiongate.
//!
//! Certificate loading, SNI resolution (exact and wildcard names), hot reload
//! and development certificates live here. TLS termination arrives with the TLS
//! issue; until then this crate only reserves its place in the workspace so that
//! `gateway` and `control-plane` can depend on it without a later reshuffle.
#![forbid(unsafe_code)]
