//! The admin token: from `SESSIONGATE_ADMIN_TOKEN`, or generated once into
//! `<data_dir>/admin-token` (mode 0600) and printed once; and the
//! constant-time check of `Authorization: Bearer` against it.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const ADMIN_TOKEN_ENV: &str = "SESSIONGATE_ADMIN_TOKEN";
const TOKEN_FILE: &str = "admin-token";
/// Shortest admin token accepted from the environment: a guessable token on a
/// control plane is worse than none.
const MIN_TOKEN_LEN: usize = 16;

/// Where the admin token came from.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenSource {
    Env,
    File(PathBuf),
    Generated(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{ADMIN_TOKEN_ENV} is {len} characters long; use at least {MIN_TOKEN_LEN}")]
    TooShort { len: usize },
    #[error("admin token file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("admin token file {0} is empty")]
    Empty(PathBuf),
}

/// The admin token, from `env_value`, else the data dir's token file, else a
/// newly generated one written there.
pub fn admin_token(
    data_dir: &Path,
    env_value: Option<String>,
) -> Result<(String, TokenSource), TokenError> {
    if let Some(t) = env_value.filter(|t| !t.is_empty()) {
        if t.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort { len: t.len() });
        }
        return Ok((t, TokenSource::Env));
    }
    let path = data_dir.join(TOKEN_FILE);
    let io_err = |source| TokenError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let t = s.trim().to_string();
            if t.is_empty() {
                return Err(TokenError::Empty(path));
            }
            return Ok((t, TokenSource::File(path)));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let token = random_hex(32).map_err(io_err)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err)?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_err)?;
    Ok((token, TokenSource::Generated(path)))
}

/// `n` random bytes from the kernel, hex-encoded.
pub fn random_hex(n: usize) -> io::Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares in time that depends only on the lengths, never on where the
/// first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `Authorization` header value carries `token` as a bearer token.
pub fn bearer_matches(header: Option<&[u8]>, token: &str) -> bool {
    let Some(h) = header else { return false };
    let Some(rest) = h
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
        .map(|_| &h[7..])
    else {
        return false;
    };
    constant_time_eq(rest.trim_ascii(), token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_with_mode_0600_then_reused() {
        let dir = std::env::temp_dir().join(format!("sg-token-{}", random_hex(6).unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let (t1, src1) = admin_token(&dir, None).unwrap();
        assert!(matches!(src1, TokenSource::Generated(_)));
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(dir.join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (t2, src2) = admin_token(&dir, None).unwrap();
        assert_eq!(t1, t2);
        assert!(matches!(src2, TokenSource::File(_)));
        let (t3, src3) = admin_token(&dir, Some("x".repeat(20))).unwrap();
        assert_eq!(
            (t3.as_str(), src3),
            ("xxxxxxxxxxxxxxxxxxxx", TokenSource::Env)
        );
        assert!(admin_token(&dir, Some("short".into())).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bearer_checks() {
        let t = "s3cret-token-value";
        assert!(bearer_matches(Some(b"Bearer s3cret-token-value"), t));
        assert!(bearer_matches(Some(b"bearer s3cret-token-value"), t));
        assert!(!bearer_matches(Some(b"Bearer s3cret-token-valuX"), t));
        assert!(!bearer_matches(Some(b"Bearer "), t));
        assert!(!bearer_matches(Some(b"Basic s3cret-token-value"), t));
        assert!(!bearer_matches(Some(b"Bear"), t));
        assert!(!bearer_matches(None, t));
    }
}
