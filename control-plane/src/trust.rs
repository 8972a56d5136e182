//! `sessiongate certs trust`: how to make browsers, curl and the system
//! trust the development CA, and, with `--install`, doing it for the system
//! store where this machine has a tool for it.
//!
//! Browsers each have their own idea of trust: Chromium and Firefox on Linux
//! read NSS databases, not the system bundle, so the text covers each, the way
//! mkcert and Caddy's `trust` explain theirs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The file name the CA gets in the system store.
const SYSTEM_NAME: &str = "sessiongate-development-ca.crt";

/// The instructions for trusting the CA in `ca` (checked to be a CA
/// certificate first); with `install`, also copies it into the system store
/// and runs the store's update tool, and says what it did.
pub fn certs_trust(ca: &Path, install: bool) -> Result<String, String> {
    let subject = certs::read_ca(ca).map_err(|e| e.to_string())?;
    let ca = ca
        .canonicalize()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    let c = ca.display();
    let mut text = format!(
        "Development CA: {subject}\n  {c}\n\n\
         System store (curl, Python, Go, and browsers that read it):\n  \
         Debian, Ubuntu: sudo cp {c} /usr/local/share/ca-certificates/{SYSTEM_NAME} && sudo update-ca-certificates\n  \
         Fedora, RHEL:   sudo cp {c} /etc/pki/ca-trust/source/anchors/{SYSTEM_NAME} && sudo update-ca-trust\n  \
         macOS:          sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {c}\n  \
         (or: sessiongate certs trust --install, as root, where one of the first two tools is here)\n\n\
         Chromium and Chrome on Linux (NSS, libnss3-tools' certutil):\n  \
         certutil -d sql:$HOME/.pki/nssdb -A -t \"C,,\" -n \"sessiongate development CA\" -i {c}\n\n\
         Firefox (each profile; or set security.enterprise_roots.enabled to use the system store):\n  \
         certutil -d sql:$HOME/.mozilla/firefox/PROFILE -A -t \"C,,\" -n \"sessiongate development CA\" -i {c}\n\n\
         curl, one request at a time:\n  \
         curl --cacert {c} https://nb.localhost:8443/\n"
    );
    if install {
        text.push('\n');
        text.push_str(&install_system(&ca)?);
    }
    Ok(text)
}

/// Copies `ca` into the system store this machine's tools read, and runs the
/// tool that rebuilds the bundle.
fn install_system(ca: &Path) -> Result<String, String> {
    let stores = [
        ("update-ca-certificates", "/usr/local/share/ca-certificates"),
        ("update-ca-trust", "/etc/pki/ca-trust/source/anchors"),
    ];
    let Some((tool, dir)) = stores
        .iter()
        .find(|(tool, dir)| on_path(tool).is_some() && Path::new(dir).is_dir())
    else {
        return Err(
            "--install: neither update-ca-certificates (Debian, Ubuntu, Alpine) nor \
             update-ca-trust (Fedora, RHEL) is here; trust the CA by hand as above"
                .into(),
        );
    };
    let target = Path::new(dir).join(SYSTEM_NAME);
    std::fs::copy(ca, &target).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (run as root, or with sudo)"
        } else {
            ""
        };
        format!("--install: copying to {}: {e}{hint}", target.display())
    })?;
    let out = Command::new(tool)
        .output()
        .map_err(|e| format!("--install: running {tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "--install: {tool} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(format!(
        "Installed in the system store: {} ({tool} ran). Browsers that keep their own \
         store (Chromium and Firefox on Linux) still need the certutil line above.\n",
        target.display()
    ))
}

/// `name` in one of `PATH`'s directories (and the sbin ones, where root's
/// tools live and a user's PATH may not reach).
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-trust-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_instructions_name_the_ca_and_every_store() {
        let dir = scratch("text");
        let files = certs::dev::generate("localhost", &dir).unwrap();
        let text = certs_trust(&files.ca_cert, false).unwrap();
        let ca = files.ca_cert.canonicalize().unwrap();
        assert!(text.contains("sessiongate development CA"), "{text}");
        for needle in [
            "update-ca-certificates",
            "update-ca-trust",
            "security add-trusted-cert",
            "sql:$HOME/.pki/nssdb",
            ".mozilla/firefox",
            "curl --cacert",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(
            text.matches(&*ca.display().to_string()).count() >= 6,
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_not_a_ca_certificate_is_refused_with_its_name() {
        let dir = scratch("bad");
        let files = certs::dev::generate("localhost", &dir).unwrap();
        let e = certs_trust(&files.cert, false).unwrap_err();
        assert!(e.contains("not a CA certificate"), "{e}");
        assert!(e.contains("localhost.crt"), "{e}");
        let missing = dir.join("nope.crt");
        let e = certs_trust(&missing, false).unwrap_err();
        assert!(e.contains("nope.crt"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
