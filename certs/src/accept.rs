//! The TLS listener's handshake: the ClientHello first, then whatever the
//! name needs (an on-demand certificate, an ACME TLS-ALPN-01 answer), then
//! the rest of the handshake.
//!
//! rustls's certificate resolver is called inside the handshake and must
//! answer at once, so it cannot wait for an ACME order (seconds, and a TLS
//! connection from the ACME server to this same listener in the middle of
//! it). [`Acceptor::accept`] therefore reads the ClientHello with
//! tokio-rustls's `LazyConfigAcceptor`, awaits [`SniResolver::prepare`] for
//! its name on the connection's own task, and only then lets the handshake
//! go on, when the resolver finds the certificate held. A listener with no
//! on-demand source and no ACME challenges takes the plain path.

use std::io;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use crate::acme::{Challenges, ACME_TLS_ALPN};
use crate::SniResolver;

/// Accepts TLS connections for a listener (see the module).
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    resolver: Option<Arc<SniResolver>>,
    challenges: Option<Arc<Challenges>>,
}

/// What [`Acceptor::accept`] made of a connection.
// Not boxed: the stream is moved once, into the connection's task, and a
// box would be one more allocation per connection.
#[allow(clippy::large_enum_variant)]
pub enum Accepted<IO> {
    /// A TLS connection to serve.
    Tls(TlsStream<IO>),
    /// An ACME server's TLS-ALPN-01 validation, answered and closed.
    Challenge,
}

impl Acceptor {
    /// The gateway's listener: certificates from `resolver`, with its
    /// on-demand sources (see [`crate::server_config`]).
    pub fn new(resolver: Arc<SniResolver>) -> Acceptor {
        Acceptor {
            config: Arc::new(crate::server_config(resolver.clone())),
            resolver: Some(resolver),
            challenges: None,
        }
    }

    /// A listener with a fixed configuration and nothing on demand (the
    /// configurable-http-proxy mode's).
    pub fn plain(config: Arc<ServerConfig>) -> Acceptor {
        Acceptor {
            config,
            resolver: None,
            challenges: None,
        }
    }

    /// Also answers ACME TLS-ALPN-01 validations with `challenges`'
    /// certificates.
    pub fn with_challenges(mut self, challenges: Arc<Challenges>) -> Acceptor {
        self.challenges = Some(challenges);
        self
    }

    /// The handshake on `io`: the ClientHello, what its name needs, the
    /// rest. Errors are the handshake's (not TLS, no certificate, ...).
    pub async fn accept<IO>(&self, io: IO) -> io::Result<Accepted<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let dynamic = self.challenges.is_some()
            || self
                .resolver
                .as_ref()
                .is_some_and(|r| !r.on_demand().is_empty());
        if !dynamic {
            let stream = TlsAcceptor::from(self.config.clone()).accept(io).await?;
            return Ok(Accepted::Tls(stream));
        }
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let hello = start.client_hello();
        let sni = hello.server_name().map(str::to_owned);
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            let cert = match (&self.challenges, &sni) {
                (Some(c), Some(name)) => c.tls_alpn01(name),
                _ => None,
            };
            let Some(cert) = cert else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "acme-tls/1 handshake for {:?}, which has no TLS-ALPN-01 challenge pending",
                        sni.unwrap_or_default()
                    ),
                ));
            };
            let config = Arc::new(crate::tls::challenge_config(cert));
            let mut stream = start.into_stream(config).await?;
            // RFC 8737: the validation is the handshake; nothing follows.
            let _ = stream.shutdown().await;
            return Ok(Accepted::Challenge);
        }
        if let (Some(resolver), Some(name)) = (&self.resolver, &sni) {
            if let Some(preparing) = resolver.prepare(name) {
                preparing.await;
            }
        }
        let stream = start.into_stream(self.config.clone()).await?;
        Ok(Accepted::Tls(stream))
    }
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("on_demand", &self.resolver.is_some())
            .field("acme_challenges", &self.challenges.is_some())
            .finish()
    }
}
