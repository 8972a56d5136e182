//! Test helpers: temporary directories, rcgen certificates, and real TLS
//! handshakes over an in-memory duplex pipe.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::DuplexStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::LoadedCert;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sg-certs-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `names`: (certificate PEM, key PEM).
pub fn self_signed(names: &[&str]) -> (String, String) {
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    self_signed_with(params)
}

pub fn self_signed_with(params: rcgen::CertificateParams) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes `NAME.crt` and `NAME.key` in `dir`.
pub fn write_pair(dir: &Path, name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

/// Writes a fresh self-signed pair for `names` and loads it.
pub fn loaded(dir: &Path, name: &str, names: &[&str]) -> LoadedCert {
    let (cert, key) = self_signed(names);
    let (c, k) = write_pair(dir, name, &cert, &key);
    LoadedCert::from_files(name, &c, &k).unwrap()
}

/// Like [`loaded`], expiring on 1 January of `year`.
pub fn loaded_expiring(dir: &Path, name: &str, names: &[&str], year: i32) -> LoadedCert {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let (cert, key) = self_signed_with(params);
    let (c, k) = write_pair(dir, name, &cert, &key);
    LoadedCert::from_files(name, &c, &k).unwrap()
}

/// A client that accepts any certificate, to look at what the server presents.
pub fn insecure_client() -> Arc<ClientConfig> {
    Arc::new(crate::client_config(false, None).unwrap())
}

/// A full TLS handshake between `server` and `client` over an in-memory pipe.
/// `sni: None` sends no server name. Fails if either side fails.
pub async fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    sni: Option<&str>,
) -> io::Result<(
    client::TlsStream<DuplexStream>,
    server::TlsStream<DuplexStream>,
)> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let mut client = (**client).clone();
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        None => {
            client.enable_sni = false;
            ServerName::try_from("no-sni.invalid").expect("a valid DNS name")
        }
    };
    let connector = TlsConnector::from(Arc::new(client));
    let acceptor = TlsAcceptor::from(server.clone());
    let (c, s) = tokio::join!(connector.connect(name, c), acceptor.accept(s));
    Ok((c?, s?))
}

/// As [`handshake`], the server side through the listener's
/// [`crate::Acceptor`] (on-demand certificates prepared first).
pub async fn handshake_through(
    acceptor: &crate::Acceptor,
    client: &Arc<ClientConfig>,
    sni: &str,
) -> io::Result<client::TlsStream<DuplexStream>> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let connector = TlsConnector::from(client.clone());
    let (c, s) = tokio::join!(connector.connect(name, c), acceptor.accept(s));
    match s? {
        crate::Accepted::Tls(_) => c,
        crate::Accepted::Challenge => Err(io::Error::other("answered as a challenge")),
    }
}

/// The DNS names of the leaf certificate the server presented.
pub fn leaf_names(tls: &client::TlsStream<DuplexStream>) -> Vec<String> {
    let (_, conn) = tls.get_ref();
    let leaf = &conn.peer_certificates().expect("a certificate")[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Loads the pair `NAME.crt` + `NAME.key` already in `dir`.
pub fn loaded_from(dir: &Path, name: &str) -> LoadedCert {
    LoadedCert::from_files(
        name,
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
    )
    .unwrap()
}
