//! Reading one `NAME.crt` + `NAME.key` pair from PEM files.
//!
//! PEM parsing is rustls's own (`rustls::pki_types::pem::PemObject`), so no
//! extra PEM crate is needed; `x509-parser` reads the two facts rustls does not
//! expose: the leaf's DNS names (for SNI lookup and the 421 check) and its
//! notAfter (for the expiry gauge).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};
use x509_parser::extensions::GeneralName;

use crate::CertError;

/// A certificate chain and its key as loaded from disk, with what the resolver
/// and the expiry gauge need to know about the leaf.
///
/// Immutable once built: a reload builds new ones and swaps the whole
/// [`CertStore`](crate::CertStore), so a connection that negotiated this
/// certificate keeps using it.
#[derive(Clone, Debug)]
pub struct LoadedCert {
    name: String,
    dns_names: Vec<String>,
    not_before: i64,
    not_after: i64,
    /// A CA certificate (basicConstraints cA) is not served: the development
    /// CA that [`dev::generate`](crate::dev::generate) writes may share the
    /// certificates directory, and must not become a server certificate.
    is_ca: bool,
    key: Arc<CertifiedKey>,
}

impl LoadedCert {
    /// Reads a certificate chain (leaf first) from `cert_pem` and its private
    /// key from `key_pem`, and checks that the key belongs to the leaf.
    ///
    /// `name` is how operators and metrics refer to the pair, usually the file
    /// stem (`NAME` of `NAME.crt`).
    pub fn from_files(
        name: impl Into<String>,
        cert_pem: &Path,
        key_pem: &Path,
    ) -> Result<LoadedCert, CertError> {
        let cert_bytes = std::fs::read(cert_pem).map_err(|e| CertError::io(cert_pem, e))?;
        let key_bytes = std::fs::read(key_pem).map_err(|e| CertError::io(key_pem, e))?;
        Self::from_pem(name.into(), &cert_bytes, cert_pem, &key_bytes, key_pem)
    }

    /// Like [`from_files`](Self::from_files) with the PEM text already read;
    /// the paths only name the origin in errors.
    fn from_pem(
        name: String,
        cert_bytes: &[u8],
        cert_path: &Path,
        key_bytes: &[u8],
        key_path: &Path,
    ) -> Result<LoadedCert, CertError> {
        let chain = parse_chain(cert_bytes, cert_path)?;
        let leaf = LeafFacts::parse(&chain[0], cert_path)?;
        let key = parse_key(key_bytes, key_path)?;
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
            CertError::UnusableKey {
                path: key_path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            // `Unknown`: the key type cannot report its public half, so there
            // is nothing to compare; rustls itself accepts that case.
            Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(CertError::KeyMismatch {
                    cert: cert_path.to_path_buf(),
                    key: key_path.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(CertError::BadCertificate {
                    path: cert_path.to_path_buf(),
                    index: 1,
                    reason: e.to_string(),
                })
            }
        }
        Ok(LoadedCert {
            name,
            dns_names: leaf.dns_names,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            is_ca: leaf.is_ca,
            key: Arc::new(certified),
        })
    }

    /// The pair's name (file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The leaf's DNS names from its subjectAltName, lower-cased, without a
    /// trailing dot; wildcards kept as written (`*.example.com`).
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The leaf's notBefore, in Unix seconds: with notAfter, its lifetime,
    /// of which renewal waits out two thirds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// The leaf's notAfter, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Whether the leaf is a CA certificate (never served from a directory).
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// What rustls serves: the chain and its signing key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }
}

/// Reads a certificate chain (leaf first) from `cert_pem` and its private key
/// from `key_pem`, for rustls.
///
/// Errors name the file and what is wrong with it: unreadable, no certificate
/// in it, not X.509, no usable key, or a key that does not belong to the leaf.
pub fn load_pair(cert_pem: &Path, key_pem: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let name = cert_pem
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    LoadedCert::from_files(name, cert_pem, key_pem).map(|c| c.key)
}

/// The subject of the CA certificate in the PEM file `path` (its first
/// certificate), for `sessiongate certs trust`: an error names the file and
/// says why it is not one to trust (unreadable, no certificate, not a CA).
pub fn read_ca(path: &Path) -> Result<String, CertError> {
    let bytes = std::fs::read(path).map_err(|e| CertError::io(path, e))?;
    let chain = parse_chain(&bytes, path)?;
    let bad = |reason: String| CertError::BadCertificate {
        path: path.to_path_buf(),
        index: 1,
        reason,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| bad(e.to_string()))?;
    if !cert.is_ca() {
        return Err(bad(
            "not a CA certificate (no basicConstraints CA:TRUE)".into()
        ));
    }
    Ok(cert.subject().to_string())
}

/// Every `CERTIFICATE` section of the file, each checked to be X.509 so that
/// a corrupt intermediate is reported at load rather than at a handshake.
fn parse_chain(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(bytes) {
        let der = item.map_err(|e| pem_error(e, path))?;
        if let Err(e) = x509_parser::parse_x509_certificate(&der) {
            return Err(CertError::BadCertificate {
                path: path.to_path_buf(),
                index: chain.len() + 1,
                reason: e.to_string(),
            });
        }
        chain.push(der);
    }
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn parse_key(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            // rustls skips sections it does not know, so an encrypted key
            // would read as "no key": say what it is instead.
            if contains(bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
                Err(CertError::UnusableKey {
                    path: path.to_path_buf(),
                    reason: "the key is encrypted; store it decrypted \
                             (openssl pkey -in KEY -out KEY.plain), readable only by sessiongate"
                        .into(),
                })
            } else {
                Err(CertError::NoKey {
                    path: path.to_path_buf(),
                })
            }
        }
        Err(e) => Err(pem_error(e, path)),
    }
}

fn pem_error(e: pem::Error, path: &Path) -> CertError {
    let reason = match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a section has no {:?} line",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("bad section start {:?}", String::from_utf8_lossy(&line))
        }
        pem::Error::Base64Decode(e) => format!("bad base64 in a section: {e}"),
        other => other.to_string(),
    };
    CertError::Pem {
        path: path.to_path_buf(),
        reason,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What the resolver and the gauge need from the leaf certificate.
struct LeafFacts {
    dns_names: Vec<String>,
    not_before: i64,
    not_after: i64,
    is_ca: bool,
}

impl LeafFacts {
    fn parse(der: &CertificateDer<'_>, path: &Path) -> Result<LeafFacts, CertError> {
        let bad = |reason: String| CertError::BadCertificate {
            path: path.to_path_buf(),
            index: 1,
            reason,
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        let mut dns_names = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| bad(format!("subjectAltName: {e}")))?;
        // No fallback to the subject CN: browsers and webpki ignore it, so a
        // name found only there would be served and then rejected.
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            if let GeneralName::DNSName(n) = name {
                let n = normalize_name(n);
                if !n.is_empty() && !dns_names.contains(&n) {
                    dns_names.push(n);
                }
            }
        }
        Ok(LeafFacts {
            dns_names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
        })
    }
}

/// Lower-cases and drops a trailing dot, the forms in which certificate names
/// and SNI names compare.
pub(crate) fn normalize_name(name: &str) -> String {
    let name = name.trim();
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self_signed, write_pair, TempDir};

    #[test]
    fn load_pair_reads_names_and_not_after() {
        let dir = TempDir::new("load-names");
        let mut params =
            rcgen::CertificateParams::new(vec!["A.Example.TEST".into(), "*.w.test".into()])
                .unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let (cert, key) = crate::testutil::self_signed_with(params);
        let (c, k) = write_pair(dir.path(), "site", &cert, &key);

        let loaded = LoadedCert::from_files("site", &c, &k).unwrap();
        assert_eq!(loaded.name(), "site");
        assert_eq!(loaded.dns_names(), ["a.example.test", "*.w.test"]);
        // 2031-05-06T00:00:00Z
        assert_eq!(loaded.not_after(), 1_935_792_000);
        assert!(!loaded.is_ca());
        assert!(load_pair(&c, &k).is_ok());
    }

    #[test]
    fn garbage_certificate_names_the_file() {
        let dir = TempDir::new("load-garbage");
        let (_, key) = self_signed(&["g.test"]);
        let c = dir.path().join("g.crt");
        let k = dir.path().join("g.key");
        std::fs::write(&c, "this is not PEM at all\n").unwrap();
        std::fs::write(&k, &key).unwrap();
        let err = load_pair(&c, &k).unwrap_err();
        assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("g.crt") && msg.contains("no certificate"),
            "{msg}"
        );
    }

    #[test]
    fn corrupt_base64_is_a_pem_error() {
        let dir = TempDir::new("load-b64");
        let (_, key) = self_signed(&["g.test"]);
        let c = dir.path().join("g.crt");
        let k = dir.path().join("g.key");
        std::fs::write(
            &c,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&k, &key).unwrap();
        let msg = load_pair(&c, &k).unwrap_err().to_string();
        assert!(
            msg.contains("g.crt") && msg.contains("malformed PEM"),
            "{msg}"
        );
    }

    #[test]
    fn certificate_section_that_is_not_x509_is_rejected() {
        let dir = TempDir::new("load-notx509");
        let (_, key) = self_signed(&["g.test"]);
        let c = dir.path().join("g.crt");
        let k = dir.path().join("g.key");
        // Valid base64 of bytes that are not DER.
        std::fs::write(
            &c,
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&k, &key).unwrap();
        let err = load_pair(&c, &k).unwrap_err();
        assert!(
            matches!(err, CertError::BadCertificate { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn key_file_without_key_names_the_file() {
        let dir = TempDir::new("load-nokey");
        let (cert, _) = self_signed(&["g.test"]);
        let c = dir.path().join("g.crt");
        let k = dir.path().join("g.key");
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &cert).unwrap();
        let err = load_pair(&c, &k).unwrap_err();
        assert!(matches!(err, CertError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("g.key"), "{err}");
    }

    #[test]
    fn encrypted_key_says_so() {
        let dir = TempDir::new("load-enc");
        let (cert, _) = self_signed(&["g.test"]);
        let c = dir.path().join("g.crt");
        let k = dir.path().join("g.key");
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(
            &k,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let msg = load_pair(&c, &k).unwrap_err().to_string();
        assert!(msg.contains("g.key") && msg.contains("encrypted"), "{msg}");
    }

    #[test]
    fn key_that_does_not_match_the_certificate_is_rejected() {
        let dir = TempDir::new("load-mismatch");
        let (cert, _) = self_signed(&["m.test"]);
        let (_, other_key) = self_signed(&["m.test"]);
        let (c, k) = write_pair(dir.path(), "m", &cert, &other_key);
        let err = load_pair(&c, &k).unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("m.key") && msg.contains("m.crt"), "{msg}");
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let dir = TempDir::new("load-missing");
        let c = dir.path().join("absent.crt");
        let k = dir.path().join("absent.key");
        let err = load_pair(&c, &k).unwrap_err();
        assert!(matches!(err, CertError::Io { .. }), "{err}");
        assert!(err.to_string().contains("absent.crt"), "{err}");
    }
}
