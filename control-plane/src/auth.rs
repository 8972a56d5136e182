//! API tokens.
//!
//! The admin token comes from `SESSIONGATE_ADMIN_TOKEN`, or is generated once
//! and printed once; only its SHA-256 is written to `<data_dir>/admin-token`
//! (mode 0600), like every other token, so the data dir holds no usable secret.
//! Read-only tokens for dashboards are created through the API and stored
//! hashed in the database. Checks hash the presented token and compare the
//! digests in constant time.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const ADMIN_TOKEN_ENV: &str = "SESSIONGATE_ADMIN_TOKEN";
/// The admin token's hash, in the data dir.
pub const TOKEN_FILE: &str = "admin-token";
const HASH_PREFIX: &str = "sha256:";
/// Shortest token accepted from the environment: a guessable token on a
/// control plane is worse than none.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Everything.
    Admin,
    /// `GET` only: dashboards and monitoring.
    Readonly,
    /// A gateway following this control plane: it may open the route
    /// stream and report activity, and nothing else, so that a gateway's
    /// credential, which sits on every data-plane host, reads no session.
    Gateway,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Readonly => "readonly",
            TokenKind::Gateway => "gateway",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(TokenKind::Admin),
            "readonly" => Some(TokenKind::Readonly),
            "gateway" => Some(TokenKind::Gateway),
            _ => None,
        }
    }
}

/// Where the admin token came from.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenSource {
    Env,
    /// The hash stored by an earlier start.
    File(PathBuf),
    /// Generated now; the plain token is returned once, to be printed.
    Generated(PathBuf, String),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{ADMIN_TOKEN_ENV} is {len} characters long; use at least {MIN_TOKEN_LEN}")]
    TooShort { len: usize },
    #[error("admin token file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("admin token file {0}: expected \"sha256:<64 hex digits>\"")]
    Malformed(PathBuf),
    #[error("no random numbers from the system")]
    Random,
}

/// The admin token's SHA-256 hex digest: from `env_value`, else the data
/// dir's token file, else a newly generated token whose hash is written there.
pub fn admin_token_hash(
    data_dir: &Path,
    env_value: Option<String>,
) -> Result<(String, TokenSource), TokenError> {
    if let Some(t) = env_value.filter(|t| !t.is_empty()) {
        if t.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort { len: t.len() });
        }
        return Ok((hash_token(&t), TokenSource::Env));
    }
    let path = data_dir.join(TOKEN_FILE);
    let io_err = |source| TokenError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let hash = s
                .trim()
                .strip_prefix(HASH_PREFIX)
                .filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| TokenError::Malformed(path.clone()))?;
            return Ok((hash.to_ascii_lowercase(), TokenSource::File(path)));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let token = random_token()?;
    let hash = hash_token(&token);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err)?;
    f.write_all(format!("{HASH_PREFIX}{hash}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_err)?;
    Ok((hash, TokenSource::Generated(path, token)))
}

/// A new token: 32 random bytes, hex-encoded.
pub fn random_token() -> Result<String, TokenError> {
    random_hex(32)
}

/// `n` random bytes from the system's CSPRNG, hex-encoded.
pub fn random_hex(n: usize) -> Result<String, TokenError> {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| TokenError::Random)?;
    Ok(hex(&buf))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of the token, hex. Tokens are 256 random bits, so a fast hash is
/// enough: there is nothing to brute-force.
pub fn hash_token(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// Compares in time that depends only on the lengths, never on where the
/// first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token in an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: &[u8]) -> Option<&str> {
    let rest = header
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
        .map(|_| &header[7..])?
        .trim_ascii();
    if rest.is_empty() {
        return None;
    }
    std::str::from_utf8(rest).ok()
}

/// The tokens the API accepts, as hashes.
#[derive(Clone, Debug, Default)]
pub struct TokenSet {
    /// Hash, kind, and name (the admin token from the configuration has
    /// none): a gateway is known by its token's name.
    entries: Vec<(String, TokenKind, Option<std::sync::Arc<str>>)>,
}

impl TokenSet {
    pub fn new(admin_hash: String) -> Self {
        TokenSet {
            entries: vec![(admin_hash, TokenKind::Admin, None)],
        }
    }

    pub fn add(&mut self, hash: String, kind: TokenKind) {
        self.entries.push((hash, kind, None));
    }

    /// A token made through the API, with its name.
    pub fn add_named(&mut self, hash: String, kind: TokenKind, name: &str) {
        self.entries.push((hash, kind, Some(name.into())));
    }

    pub fn remove(&mut self, hash: &str) {
        self.entries.retain(|(h, _, _)| h != hash);
    }

    /// What the presented token may do, if it is one of ours. Every entry is
    /// compared, so the time does not tell which one matched.
    pub fn check(&self, token: &str) -> Option<TokenKind> {
        self.check_named(token).map(|(kind, _)| kind)
    }

    /// The kind of the token named `name` (`None`: the configuration's admin
    /// token), if it still exists: a console signed in with a token ends
    /// when the token is deleted.
    pub fn kind_of(&self, name: Option<&str>) -> Option<TokenKind> {
        self.entries
            .iter()
            .find(|(_, _, n)| n.as_deref() == name)
            .map(|(_, kind, _)| *kind)
    }

    /// [`check`](Self::check), with the token's name.
    pub fn check_named(&self, token: &str) -> Option<(TokenKind, Option<std::sync::Arc<str>>)> {
        let presented = hash_token(token);
        let mut found = None;
        for (hash, kind, name) in &self.entries {
            if constant_time_eq(presented.as_bytes(), hash.as_bytes()) {
                found = Some((*kind, name.clone()));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_stored_hashed_with_mode_0600_then_reused() {
        let dir = std::env::temp_dir().join(format!("sg-token-{}", random_hex(6).unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let (h1, src1) = admin_token_hash(&dir, None).unwrap();
        let TokenSource::Generated(_, token) = src1 else {
            panic!("not generated: {src1:?}")
        };
        assert_eq!(token.len(), 64);
        assert_eq!(h1, hash_token(&token));
        let path = dir.join("admin-token");
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(!stored.contains(&token), "the plain token is on disk");
        assert_eq!(stored.trim(), format!("sha256:{h1}"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (h2, src2) = admin_token_hash(&dir, None).unwrap();
        assert_eq!(h1, h2);
        assert!(matches!(src2, TokenSource::File(_)));
        let (h3, src3) = admin_token_hash(&dir, Some("x".repeat(20))).unwrap();
        assert_eq!((h3, src3), (hash_token(&"x".repeat(20)), TokenSource::Env));
        assert!(admin_token_hash(&dir, Some("short".into())).is_err());
        std::fs::write(&path, "plain-token\n").unwrap();
        assert!(matches!(
            admin_token_hash(&dir, None),
            Err(TokenError::Malformed(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bearer_tokens_and_the_token_set() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bear"), None);
        let mut set = TokenSet::new(hash_token("admin-secret-value"));
        set.add(hash_token("dash-secret-value"), TokenKind::Readonly);
        assert_eq!(set.check("admin-secret-value"), Some(TokenKind::Admin));
        assert_eq!(set.check("dash-secret-value"), Some(TokenKind::Readonly));
        assert_eq!(set.check("admin-secret-valuX"), None);
        set.remove(&hash_token("dash-secret-value"));
        assert_eq!(set.check("dash-secret-value"), None);
    }
}
