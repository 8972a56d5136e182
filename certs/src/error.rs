//! The one error type of the crate.
//!
//! Every variant names the file (or the domain) it is about, because the
//! reader of these messages is an operator looking at a directory of PEM files
//! and wanting to know which one to fix.

use std::io;
use std::path::PathBuf;

/// What went wrong with TLS material, and in which file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A PEM file is not well-formed (a section without its end line, bad
    /// base64, ...).
    #[error("{}: malformed PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },

    /// A certificate file holds no `CERTIFICATE` section.
    #[error("{}: no certificate in it (expected a -----BEGIN CERTIFICATE----- section)", path.display())]
    NoCertificate { path: PathBuf },

    /// A `CERTIFICATE` section that does not parse as X.509.
    #[error("{}: certificate #{index} is not a valid X.509 certificate: {reason}", path.display())]
    BadCertificate {
        path: PathBuf,
        /// Position in the file, from 1.
        index: usize,
        reason: String,
    },

    /// A key file holds no private key section.
    #[error("{}: no private key in it (expected a PKCS#8, PKCS#1 or SEC1 PEM section)", path.display())]
    NoKey { path: PathBuf },

    /// A private key that rustls cannot use (unsupported algorithm or curve,
    /// corrupt encoding).
    #[error("{}: private key unusable: {reason}", path.display())]
    UnusableKey { path: PathBuf, reason: String },

    /// The private key is not the one the certificate was issued for.
    #[error("{}: private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    /// One half of a `NAME.crt` + `NAME.key` pair is missing.
    #[error("{}: no {} beside it (certificates come in NAME.crt + NAME.key pairs)", present.display(), missing.display())]
    IncompletePair { present: PathBuf, missing: PathBuf },

    /// A CA bundle for upstream verification that adds no usable root.
    #[error("{}: no usable CA certificate in it: {reason}", path.display())]
    CaBundle { path: PathBuf, reason: String },

    /// A domain that cannot name a development certificate.
    #[error("{domain:?} is not a domain name for a development certificate: {reason}")]
    InvalidDomain { domain: String, reason: String },

    /// rcgen refused to build a development certificate.
    #[error("generating the development {what}: {reason}")]
    Generate { what: &'static str, reason: String },

    /// An ACME order, or the account it needs, failed; `reason` names the
    /// cause as the ACME server or the network gave it.
    #[error("ACME certificate for {name}: {reason}")]
    Acme { name: String, reason: String },
}

impl CertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        CertError::Io {
            path: path.into(),
            source,
        }
    }
}
