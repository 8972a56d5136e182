//! rustls configurations: the TLS listener's, and the client's for
//! re-encrypting to `https://` upstreams.
//!
//! Both use the *ring* provider restricted to Mozilla's "intermediate"
//! profile: TLS 1.2 and 1.3, AEAD suites with forward secrecy only, and the
//! X25519, P-256 and P-384 groups.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::cipher_suite as suite;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ServerSessionMemoryCache;
use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite,
};

use crate::{CertError, SniResolver};

/// Mozilla "intermediate" (v5.7) cipher suites, in its preference order. These
/// are all of rustls-ring's suites today; listing them keeps a future addition
/// to rustls from widening the profile unnoticed.
static INTERMEDIATE_SUITES: &[SupportedCipherSuite] = &[
    suite::TLS13_AES_128_GCM_SHA256,
    suite::TLS13_AES_256_GCM_SHA384,
    suite::TLS13_CHACHA20_POLY1305_SHA256,
    suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Server-side TLS sessions remembered for stateful (session ID) resumption.
/// An entry is a few hundred bytes, so this bounds the cache at a few MiB;
/// TLS 1.3 clients and TLS 1.2 clients with ticket support use stateless
/// tickets instead and cost nothing here.
const SERVER_SESSION_CACHE: usize = 8 * 1024;

/// ALPN: HTTP/2 preferred, HTTP/1.1 for clients (and upgrades) that need it.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: INTERMEDIATE_SUITES.to_vec(),
        kx_groups: ring::ALL_KX_GROUPS.to_vec(),
        ..ring::default_provider()
    })
}

/// The TLS listener's configuration: certificates from `resolver` (by SNI),
/// TLS 1.2 and 1.3 with the Mozilla intermediate suites, ALPN `h2` and
/// `http/1.1`, and session resumption both stateful (a bounded in-memory
/// cache) and stateless (tickets from a rotating *ring* ticketer), so that a
/// returning browser skips the full handshake.
pub fn server_config(resolver: Arc<SniResolver>) -> ServerConfig {
    finish_server(
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            // Not reachable by input: the versions and suites are constants
            // that the tests build a configuration from.
            .expect("the ring provider supports TLS 1.2 and 1.3 with these suites")
            .with_no_client_auth()
            .with_cert_resolver(resolver),
    )
}

/// The configuration that answers one TLS-ALPN-01 validation (RFC 8737):
/// `cert` (self-signed, with the acmeIdentifier extension) for every name,
/// and ALPN `acme-tls/1` only, so nothing else can be negotiated on it.
pub(crate) fn challenge_config(cert: Arc<rustls::sign::CertifiedKey>) -> ServerConfig {
    #[derive(Debug)]
    struct Always(Arc<rustls::sign::CertifiedKey>);
    impl rustls::server::ResolvesServerCert for Always {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("the ring provider supports TLS 1.2 and 1.3 with these suites")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(cert)));
    config.alpn_protocols = vec![crate::acme::ACME_TLS_ALPN.to_vec()];
    config
}

/// Whether a TLS listener asks its clients for a certificate, as Node's
/// `requestCert` and `rejectUnauthorized` say (the CHP mode's
/// `--api-ssl-request-cert` and `--api-ssl-reject-unauthorized`).
#[derive(Clone, Copy, Debug)]
pub enum ClientCerts<'a> {
    /// None asked for.
    None,
    /// Asked for; a client without one is served, one with a certificate
    /// that does not chain to the CA (the PEM bundle, else Mozilla's roots)
    /// is refused.
    Optional(Option<&'a Path>),
    /// Required, chaining to the CA (the PEM bundle, else Mozilla's roots).
    Required(Option<&'a Path>),
}

/// As [`server_config`], verifying client certificates as `clients` says.
pub fn server_config_with_client_certs(
    resolver: Arc<SniResolver>,
    clients: ClientCerts<'_>,
) -> Result<ServerConfig, CertError> {
    let (ca, optional) = match clients {
        ClientCerts::None => return Ok(server_config(resolver)),
        ClientCerts::Optional(ca) => (ca, true),
        ClientCerts::Required(ca) => (ca, false),
    };
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => add_bundle(&mut roots, path)?,
        None => roots.roots = webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
    let mut verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(|e| CertError::CaBundle {
        path: ca.map(Path::to_path_buf).unwrap_or_default(),
        reason: e.to_string(),
    })?;
    Ok(finish_server(
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .expect("the ring provider supports TLS 1.2 and 1.3 with these suites")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver),
    ))
}

fn finish_server(mut config: ServerConfig) -> ServerConfig {
    config.alpn_protocols = alpn();
    config.session_storage = ServerSessionMemoryCache::new(SERVER_SESSION_CACHE);
    match ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        // Only a failing system random generator gets here; handshakes still
        // work, just without ticket resumption.
        Err(e) => tracing::warn!(error = %e, "TLS session tickets disabled: no ticketer"),
    }
    config
}

/// The client configuration for re-encrypting to `https://` upstreams, with
/// ALPN `h2` and `http/1.1`.
///
/// With `verify`, the upstream's certificate must chain to one of Mozilla's
/// roots (`webpki-roots`) or to a certificate in the PEM bundle `extra_ca`, and
/// name the upstream host. Without it, **any certificate is accepted**: see
/// [`AcceptAnyServerCert`] for why that exists. `extra_ca` is ignored then.
///
/// Note for `hyper-rustls`: its `HttpsConnectorBuilder::with_tls_config`
/// panics on a configuration whose `alpn_protocols` is set, because it sets
/// ALPN itself from `enable_http1`/`enable_http2`; clear `alpn_protocols`
/// before handing this configuration there.
pub fn client_config(verify: bool, extra_ca: Option<&Path>) -> Result<ClientConfig, CertError> {
    client_config_with_identity(verify, extra_ca, None)
}

/// A hyper client for talking to a service (an ACME directory, an OpenID
/// Connect provider) over `https://` (and `http://` for a loopback test
/// server): certificates verified against Mozilla's roots and `extra_ca`,
/// HTTP/1.1, bodies of type `B`.
pub fn https_client<B>(
    extra_ca: Option<&Path>,
) -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        B,
    >,
    CertError,
>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut tls = client_config(true, extra_ca)?;
    // hyper-rustls sets ALPN itself (see `client_config`).
    tls.alpn_protocols.clear();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// As [`client_config`], presenting the certificate chain and key in the PEM
/// files `identity` (certificate, key) to upstreams that ask for one (the
/// CHP mode's `--client-ssl-cert` and `--client-ssl-key`).
pub fn client_config_with_identity(
    verify: bool,
    extra_ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, CertError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("the ring provider supports TLS 1.2 and 1.3 with these suites");
    let builder = if verify {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra_ca {
            add_bundle(&mut roots, path)?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new()))
    };
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let pair = crate::load_pair(cert, key)?;
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(pair)))
        }
    };
    config.alpn_protocols = alpn();
    Ok(config)
}

/// Adds every certificate of the PEM bundle at `path` to `roots`; a bundle
/// that is unreadable, holds no certificate, or has one rustls refuses as a
/// trust anchor is an error naming the file (a silently ignored CA file would
/// show up later as mysterious upstream TLS failures).
fn add_bundle(roots: &mut RootCertStore, path: &Path) -> Result<(), CertError> {
    let bytes = std::fs::read(path).map_err(|e| CertError::io(path, e))?;
    let mut added = 0;
    for (i, item) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let der = item.map_err(|e| CertError::CaBundle {
            path: path.to_path_buf(),
            reason: format!("malformed PEM: {e}"),
        })?;
        roots.add(der).map_err(|e| CertError::CaBundle {
            path: path.to_path_buf(),
            reason: format!("certificate #{}: {e}", i + 1),
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(CertError::CaBundle {
            path: path.to_path_buf(),
            reason: "expected -----BEGIN CERTIFICATE----- sections".into(),
        });
    }
    Ok(())
}

/// A server certificate verifier that accepts **every** certificate, for
/// any name, expired or not.
///
/// It exists because the applications behind sessiongate are often notebooks
/// and IDEs that serve HTTPS with a self-signed certificate made at start-up,
/// which no CA bundle can anticipate. It is used only for a route (session)
/// that explicitly sets `tls_verify = false`: the operator opts in per
/// session, knowing the hop between the gateway and that upstream is then
/// encrypted but not authenticated (an attacker on that network path could
/// impersonate the upstream).
///
/// It still verifies the handshake signatures with the provider's algorithms,
/// so the peer must hold the private key of the certificate it presented: the
/// connection is at least bound to that key, and a broken or downgraded
/// handshake still fails.
#[derive(Debug)]
pub struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyServerCert {
    pub fn new() -> Self {
        AcceptAnyServerCert {
            algorithms: ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl Default for AcceptAnyServerCert {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{handshake, insecure_client, loaded, self_signed, write_pair, TempDir};
    use crate::CertStore;
    use rustls::HandshakeKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn server_for(dir: &Path, names: &[&str]) -> Arc<ServerConfig> {
        let store = CertStore::new([loaded(dir, "site", names)], Some("site"));
        Arc::new(server_config(Arc::new(SniResolver::new(store))))
    }

    #[test]
    fn server_offers_only_the_intermediate_profile() {
        let dir = TempDir::new("tls-profile");
        let config = server_for(dir.path(), &["p.test"]);
        let suites: Vec<_> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(suites.len(), 9);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
        assert!(suites.contains(&rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256));
        assert_eq!(config.alpn_protocols, alpn());
        assert!(config.ticketer.enabled());
    }

    #[tokio::test]
    async fn no_verify_accepts_a_self_signed_certificate() {
        let dir = TempDir::new("tls-noverify");
        let server = server_for(dir.path(), &["self.test"]);
        let client = insecure_client();
        let (mut c, mut s) = handshake(&server, &client, Some("self.test"))
            .await
            .unwrap();
        // The connection carries data both ways.
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // Even for a name the certificate does not carry.
        assert!(handshake(&server, &client, Some("other.test"))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn verify_rejects_a_self_signed_certificate() {
        let dir = TempDir::new("tls-verify");
        let server = server_for(dir.path(), &["self.test"]);
        let client = Arc::new(client_config(true, None).unwrap());
        let err = handshake(&server, &client, Some("self.test"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn verify_trusts_a_certificate_from_the_extra_bundle() {
        let dir = TempDir::new("tls-bundle");
        let (cert, key) = self_signed(&["self.test"]);
        let (c, _) = write_pair(dir.path(), "site", &cert, &key);
        // A self-signed leaf as its own trust anchor: enough to show the
        // bundle is read and used.
        let store = CertStore::new(
            [crate::testutil::loaded_from(dir.path(), "site")],
            Some("site"),
        );
        let server = Arc::new(server_config(Arc::new(SniResolver::new(store))));
        let client = Arc::new(client_config(true, Some(&c)).unwrap());
        assert!(handshake(&server, &client, Some("self.test")).await.is_ok());
    }

    #[test]
    fn extra_bundle_without_certificates_names_the_file() {
        let dir = TempDir::new("tls-badbundle");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "nothing here\n").unwrap();
        let err = client_config(true, Some(&path)).unwrap_err();
        assert!(matches!(err, CertError::CaBundle { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = client_config(true, Some(&missing)).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    #[tokio::test]
    async fn alpn_negotiates_h2_when_offered() {
        let dir = TempDir::new("tls-alpn");
        let server = server_for(dir.path(), &["alpn.test"]);
        let client = insecure_client();
        let (c, s) = handshake(&server, &client, Some("alpn.test"))
            .await
            .unwrap();
        assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

        let mut h1 = (*client).clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (c, _) = handshake(&server, &Arc::new(h1), Some("alpn.test"))
            .await
            .unwrap();
        assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    }

    /// A first handshake, some data each way (TLS 1.3 tickets travel after
    /// the handshake), then a second one with the same client configuration.
    async fn second_handshake_kind(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
    ) -> Option<HandshakeKind> {
        let (mut c, mut s) = handshake(server, client, Some("r.test")).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.flush().await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        let (c2, _s2) = handshake(server, client, Some("r.test")).await.unwrap();
        c2.get_ref().1.handshake_kind()
    }

    #[tokio::test]
    async fn tls13_handshakes_resume() {
        let dir = TempDir::new("tls-resume13");
        let server = server_for(dir.path(), &["r.test"]);
        let client = insecure_client();
        assert_eq!(
            second_handshake_kind(&server, &client).await,
            Some(HandshakeKind::Resumed)
        );
    }

    #[tokio::test]
    async fn tls12_handshakes_resume() {
        let dir = TempDir::new("tls-resume12");
        let server = server_for(dir.path(), &["r.test"]);
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new()))
            .with_no_client_auth();
        client.alpn_protocols = alpn();
        let client = Arc::new(client);
        assert_eq!(
            second_handshake_kind(&server, &client).await,
            Some(HandshakeKind::Resumed)
        );
    }
}
