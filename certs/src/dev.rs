//! Development certificates: a local CA and a wildcard certificate it signs,
//! so that `https://*.localhost` (or any test domain) works in a browser after
//! trusting one file, `ca.crt`.
//!
//! The CA is kept and reused: regenerating the leaf (a new domain, a renewal)
//! does not make browsers forget their trust. Keys are ECDSA P-256 made with
//! rcgen's *ring* backend, written with mode 0600 on unix; every file is
//! written to a temporary name and renamed, so a reloader watching the
//! directory never reads half a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use x509_parser::time::ASN1Time;

use crate::load::normalize_name;
use crate::{CertError, LoadedCert};

/// Validity of the development CA: ten years, so that trusting it is a
/// once-per-machine chore.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);

/// Validity of the leaf: 397 days, under the 398 that Apple and Chrome
/// accept for any TLS server certificate.
const LEAF_VALIDITY: Duration = Duration::from_secs(397 * 86_400);

/// Tolerance for clocks slightly behind ours (VMs, containers).
pub(crate) const BACKDATE: Duration = Duration::from_secs(3600);

/// The files [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevFiles {
    /// `out/ca.crt`: the file to trust in the browser or system store.
    pub ca_cert: PathBuf,
    /// `out/ca.key` (mode 0600).
    pub ca_key: PathBuf,
    /// `out/<domain>.crt`: the leaf, for `domain` and `*.domain`.
    pub cert: PathBuf,
    /// `out/<domain>.key` (mode 0600).
    pub key: PathBuf,
    /// Whether an existing CA was reused (false: a new one was made).
    pub ca_reused: bool,
}

/// Writes a development CA to `out/ca.crt` + `out/ca.key`, unless a usable one
/// is already there (both files parse, the key matches, it is a CA, and it
/// outlives the new leaf), and a certificate for `domain` and `*.domain`
/// signed by it to `out/<domain>.crt` + `out/<domain>.key`.
///
/// The leaf pair is named so that a [`CertDir`](crate::CertDir) over `out`
/// serves it as the pair `<domain>`; the CA pair beside it is skipped there.
pub fn generate(domain: &str, out: &Path) -> Result<DevFiles, CertError> {
    let domain = checked_domain(domain)?;
    std::fs::create_dir_all(out).map_err(|e| CertError::io(out, e))?;
    let files = DevFiles {
        ca_cert: out.join("ca.crt"),
        ca_key: out.join("ca.key"),
        cert: out.join(format!("{domain}.crt")),
        key: out.join(format!("{domain}.key")),
        ca_reused: false,
    };

    let now = ASN1Time::now().to_datetime();
    let leaf_not_after = now + LEAF_VALIDITY;

    let (issuer, ca_reused) = match reusable_ca(&files, leaf_not_after.unix_timestamp()) {
        Some(issuer) => (issuer, true),
        None => {
            let key = KeyPair::generate().map_err(generate_error("CA key"))?;
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            // The date tells apart the CAs of several machines or
            // regenerations in a trust store listing.
            params.distinguished_name.push(
                DnType::CommonName,
                format!("sessiongate development CA {}", now.date()),
            );
            params
                .distinguished_name
                .push(DnType::OrganizationName, "sessiongate (development only)");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = now - BACKDATE;
            params.not_after = now + CA_VALIDITY;
            let cert = params.self_signed(&key).map_err(generate_error("CA"))?;
            write_atomically(&files.ca_key, key.serialize_pem().as_bytes(), true)?;
            write_atomically(&files.ca_cert, cert.pem().as_bytes(), false)?;
            (Issuer::new(params, key), false)
        }
    };

    let key = KeyPair::generate().map_err(generate_error("certificate key"))?;
    let mut params = CertificateParams::new(vec![domain.clone(), format!("*.{domain}")])
        .map_err(generate_error("certificate"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, domain.clone());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = leaf_not_after;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generate_error("certificate"))?;
    // Key first: a reloader that sees the new key beside the old certificate
    // keeps serving the old pair (mismatch) until the certificate lands.
    write_atomically(&files.key, key.serialize_pem().as_bytes(), true)?;
    write_atomically(&files.cert, cert.pem().as_bytes(), false)?;

    Ok(DevFiles { ca_reused, ..files })
}

/// The CA already in `out`, if it can sign a leaf valid until
/// `leaf_not_after`; otherwise `None`, and a new CA replaces it.
fn reusable_ca(files: &DevFiles, leaf_not_after: i64) -> Option<Issuer<'static, KeyPair>> {
    if !files.ca_cert.exists() || !files.ca_key.exists() {
        return None;
    }
    let why_not = match LoadedCert::from_files("ca", &files.ca_cert, &files.ca_key) {
        Err(e) => e.to_string(),
        Ok(ca) if !ca.is_ca() => format!("{} is not a CA certificate", files.ca_cert.display()),
        Ok(ca) if ca.not_after() < leaf_not_after => {
            format!(
                "{} expires before a new certificate would",
                files.ca_cert.display()
            )
        }
        Ok(ca) => {
            let signer = std::fs::read_to_string(&files.ca_key)
                .map_err(|e| e.to_string())
                .and_then(|pem| KeyPair::from_pem(&pem).map_err(|e| e.to_string()))
                .and_then(|key| {
                    Issuer::from_ca_cert_der(&ca.certified_key().cert[0], key)
                        .map_err(|e| e.to_string())
                });
            match signer {
                Ok(issuer) => return Some(issuer),
                Err(e) => format!("{}: {e}", files.ca_key.display()),
            }
        }
    };
    tracing::warn!(reason = %why_not, "development CA not reusable; making a new one (trust the new ca.crt)");
    None
}

/// A client certificate for `common_name`, signed by the CA in `ca_cert` +
/// `ca_key` (as [`generate`] writes them), valid for `validity`: the PEM
/// certificate and its new private key, which is not kept anywhere. For
/// workspace ports over TLS, where the common name is the user.
pub fn client_certificate(
    ca_cert: &Path,
    ca_key: &Path,
    common_name: &str,
    validity: Duration,
) -> Result<(String, String), CertError> {
    let ca = LoadedCert::from_files("ca", ca_cert, ca_key)?;
    let pem = std::fs::read_to_string(ca_key).map_err(|e| CertError::io(ca_key, e))?;
    let ca_pair = KeyPair::from_pem(&pem).map_err(generate_error("client certificate CA key"))?;
    let issuer = Issuer::from_ca_cert_der(&ca.certified_key().cert[0], ca_pair)
        .map_err(generate_error("client certificate CA"))?;
    let key = KeyPair::generate().map_err(generate_error("client key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(generate_error("client certificate"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = ASN1Time::now().to_datetime();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generate_error("client certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The subject common name of a DER certificate (a client's, on a
/// workspace port), if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Lower-cases, drops a trailing dot, and refuses what cannot be a DNS name
/// (the domain also becomes a file name, so nothing path-like gets through).
pub(crate) fn checked_domain(domain: &str) -> Result<String, CertError> {
    let normalized = normalize_name(domain);
    let invalid = |reason: &str| CertError::InvalidDomain {
        domain: domain.to_string(),
        reason: reason.to_string(),
    };
    if normalized.is_empty() || normalized.len() > 253 {
        return Err(invalid("must be 1 to 253 characters"));
    }
    for label in normalized.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid(
                "each dot-separated label must be 1 to 63 characters",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(invalid(
                "labels are letters, digits and inner hyphens (no wildcard: *.domain is added)",
            ));
        }
    }
    if normalized == "ca" {
        return Err(invalid("ca.crt and ca.key are the development CA's files"));
    }
    Ok(normalized)
}

pub(crate) fn generate_error(what: &'static str) -> impl Fn(rcgen::Error) -> CertError {
    move |e| CertError::Generate {
        what,
        reason: e.to_string(),
    }
}

/// Writes `bytes` to a hidden temporary file beside `path` (created with mode
/// 0600 when `private`), then renames it over `path`: a reader never sees
/// half a file, and a key is never readable by others, not even briefly.
pub fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CertError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testutil::{handshake, leaf_names, TempDir};
    use crate::{client_config, server_config, CertDir, SniResolver};

    #[tokio::test]
    async fn leaf_chains_to_the_ca_for_the_domain_only() {
        let dir = TempDir::new("dev-chain");
        let out = dir.path();
        let files = generate("dev.test", out).unwrap();
        assert_eq!(files.cert, out.join("dev.test.crt"));
        assert!(!files.ca_reused);

        let (store, errors) = CertDir::load(out, Some("dev.test"));
        assert!(errors.is_empty(), "{errors:?}");
        // The CA pair beside it is not served.
        assert_eq!(store.len(), 1);
        let server = Arc::new(server_config(Arc::new(SniResolver::new(store))));
        let client = Arc::new(client_config(true, Some(&files.ca_cert)).unwrap());

        let (tls, _s) = handshake(&server, &client, Some("x.dev.test"))
            .await
            .unwrap();
        assert_eq!(leaf_names(&tls), ["dev.test", "*.dev.test"]);
        assert!(handshake(&server, &client, Some("dev.test")).await.is_ok());
        // Served as the default for another name, and rejected by the client.
        let err = handshake(&server, &client, Some("x.other"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
        // One label only under the wildcard.
        assert!(handshake(&server, &client, Some("a.b.dev.test"))
            .await
            .is_err());
    }

    #[test]
    fn validity_is_397_days_for_the_leaf_and_10_years_for_the_ca() {
        let dir = TempDir::new("dev-validity");
        let files = generate("dev.test", dir.path()).unwrap();
        let now = ASN1Time::now().timestamp();
        let leaf = LoadedCert::from_files("leaf", &files.cert, &files.key).unwrap();
        let ca = LoadedCert::from_files("ca", &files.ca_cert, &files.ca_key).unwrap();
        let days = |t: i64| (t - now + 43_200) / 86_400;
        assert_eq!(days(leaf.not_after()), 397);
        assert_eq!(days(ca.not_after()), 3650);
        assert!(ca.is_ca() && !leaf.is_ca());
    }

    #[tokio::test]
    async fn regenerating_reuses_the_ca() {
        let dir = TempDir::new("dev-reuse");
        let out = dir.path();
        let first = generate("dev.test", out).unwrap();
        let ca_before = std::fs::read(&first.ca_cert).unwrap();
        let leaf_before = std::fs::read(&first.cert).unwrap();

        let second = generate("Dev.Test.", out).unwrap();
        assert!(second.ca_reused);
        assert_eq!(
            second,
            DevFiles {
                ca_reused: true,
                ..first.clone()
            }
        );
        assert_eq!(std::fs::read(&second.ca_cert).unwrap(), ca_before);
        assert_ne!(std::fs::read(&second.cert).unwrap(), leaf_before);

        // The new leaf still chains to the CA the browser already trusts.
        let (store, _) = CertDir::load(out, Some("dev.test"));
        let server = Arc::new(server_config(Arc::new(SniResolver::new(store))));
        let client = Arc::new(client_config(true, Some(&first.ca_cert)).unwrap());
        assert!(handshake(&server, &client, Some("a.dev.test"))
            .await
            .is_ok());

        // A second domain from the same CA.
        let other = generate("localhost", out).unwrap();
        assert!(other.ca_reused);
        assert_eq!(other.cert, out.join("localhost.crt"));
    }

    #[test]
    fn an_unusable_ca_is_replaced() {
        let dir = TempDir::new("dev-badca");
        let out = dir.path();
        std::fs::write(out.join("ca.crt"), "garbage").unwrap();
        std::fs::write(out.join("ca.key"), "garbage").unwrap();
        let files = generate("dev.test", out).unwrap();
        assert!(!files.ca_reused);
        assert!(LoadedCert::from_files("ca", &files.ca_cert, &files.ca_key)
            .unwrap()
            .is_ca());
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("dev-mode");
        let files = generate("dev.test", dir.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&files.ca_key), 0o600);
        assert_eq!(mode(&files.cert) & 0o600, 0o600);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn domains_that_are_not_dns_names_are_refused() {
        let dir = TempDir::new("dev-domain");
        for bad in [
            "", "../etc", "a/b", "*.x.test", "-a.test", "a..test", "ca", "a b",
        ] {
            let err = generate(bad, dir.path()).unwrap_err();
            assert!(
                matches!(err, CertError::InvalidDomain { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
