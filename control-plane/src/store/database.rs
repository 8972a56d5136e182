//! `control_plane.database`: which engine, and where, as a URL whose
//! password never reaches a log line or an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

/// The database file's name in the data dir, when `control_plane.database`
/// names none.
pub const DB_FILE: &str = "sessiongate.db";

/// The two engines the store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// A file on this machine: one control plane, no server to run.
    Sqlite,
    /// A server several control planes can share.
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// Where the store lives, as `control_plane.database` (or `--database`,
/// or `SESSIONGATE_CONTROL_PLANE_DATABASE`) says:
///
/// - empty: SQLite at `<control_plane.data_dir>/sessiongate.db`;
/// - `sqlite://PATH` (or `sqlite:PATH`): SQLite at PATH, relative to the
///   working directory unless absolute (`sqlite:///var/lib/sg.db`);
/// - `postgres://USER:PASSWORD@HOST:PORT/DATABASE?OPTIONS` (or
///   `postgresql://`): PostgreSQL, with libpq's URL options
///   (`sslmode`, `sslrootcert`, `host=/run/postgresql` for a socket…).
///
/// `Display` and `Debug` write the URL with its password replaced by
/// `***`: use them in every message.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    /// Reads `raw` (the configuration's value); `data_dir` places the
    /// default file. The error says what is wrong, naming the URL only
    /// redacted.
    pub fn parse(raw: &str, data_dir: &Path) -> Result<DatabaseUrl, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(DatabaseUrl::Sqlite(data_dir.join(DB_FILE)));
        }
        let scheme = raw.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => {
                let rest = &raw["sqlite:".len()..];
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    return Err(format!("{raw:?} names no file (sqlite://PATH)"));
                }
                if path.contains('?') || path.contains('#') || path.starts_with(":memory:") {
                    return Err(format!(
                        "{raw:?}: only a file path, without options: sessiongate sets \
                         SQLite's (WAL, synchronous commits) itself"
                    ));
                }
                Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
            }
            Some("postgres" | "postgresql") => {
                let shown = redact(raw);
                let url = url::Url::parse(raw).map_err(|e| format!("{shown} is not a URL: {e}"))?;
                if url.host_str().is_none_or(str::is_empty)
                    && !url.query_pairs().any(|(k, _)| k == "host")
                {
                    return Err(format!(
                        "{shown} names no host (postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
                    ));
                }
                PgConnectOptions::from_str(raw)
                    .map_err(|e| format!("{shown}: {}", redact(&e.to_string())))?;
                Ok(DatabaseUrl::Postgres(raw.to_string()))
            }
            // Shown whole only when it cannot hold a password.
            other => Err(format!(
                "{} is neither sqlite://PATH nor postgres://USER:PASSWORD@HOST/DATABASE \
                 (empty: SQLite in the data dir)",
                match other {
                    Some(scheme) if raw.contains('@') || raw.contains("://") => {
                        format!("a URL of scheme {scheme:?}")
                    }
                    Some(_) => "the value".to_string(),
                    None => format!("{raw:?}"),
                }
            )),
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            DatabaseUrl::Sqlite(_) => Engine::Sqlite,
            DatabaseUrl::Postgres(_) => Engine::Postgres,
        }
    }

    /// The SQLite file, for SQLite.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            DatabaseUrl::Sqlite(p) => Some(p),
            DatabaseUrl::Postgres(_) => None,
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// `text` with the password of every URL in it replaced by `***`: the
/// `:PASSWORD@` of the authority, and `password=` options. Everything
/// between `://` and the last `@` before the next whitespace counts as the
/// user and password, so a password with `/` or `@` in it (not
/// percent-encoded) is hidden too; a URL with an `@` further on loses more
/// than its password, never less.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let url = &after[..end];
        match url.rfind('@') {
            Some(at) => {
                let userinfo = &url[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    redact_password_options(&out)
}

/// `password=…` (a URL option, or a libpq keyword) up to the next `&`,
/// space or quote becomes `password=***`.
fn redact_password_options(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = find_ascii_ci(rest, "password=") {
        let start = i + "password=".len();
        out.push_str(&rest[..start]);
        out.push_str("***");
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| matches!(c, '&' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn find_ascii_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_the_file_in_the_data_dir() {
        let d = DatabaseUrl::parse("  ", Path::new("/srv/sg")).unwrap();
        assert_eq!(
            d,
            DatabaseUrl::Sqlite(PathBuf::from("/srv/sg/sessiongate.db"))
        );
        assert_eq!(d.engine(), Engine::Sqlite);
    }

    #[test]
    fn sqlite_urls_name_a_file() {
        let dir = Path::new("data");
        for (raw, path) in [
            ("sqlite://data/x.db", "data/x.db"),
            ("sqlite:///var/lib/sg.db", "/var/lib/sg.db"),
            ("sqlite:rel.db", "rel.db"),
            ("SQLITE://a b.db", "a b.db"),
        ] {
            assert_eq!(
                DatabaseUrl::parse(raw, dir).unwrap(),
                DatabaseUrl::Sqlite(PathBuf::from(path)),
                "{raw}"
            );
        }
        for bad in [
            "sqlite://",
            "sqlite:",
            "sqlite://x.db?mode=ro",
            "sqlite::memory:",
        ] {
            assert!(DatabaseUrl::parse(bad, dir).is_err(), "{bad}");
        }
    }

    #[test]
    fn postgres_urls_are_checked_and_shown_without_their_password() {
        let dir = Path::new("data");
        for raw in [
            "postgres://sg:s3cret@db.example:5432/sessiongate",
            "postgresql://sg:s3cret@localhost/sessiongate?sslmode=require",
            "postgres://sg@10.0.0.5/sg",
        ] {
            let d = DatabaseUrl::parse(raw, dir).unwrap();
            assert_eq!(d.engine(), Engine::Postgres);
            let shown = format!("{d} {d:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        let d = DatabaseUrl::parse("postgres://sg:s3cret@db:5432/x", dir).unwrap();
        assert_eq!(d.to_string(), "postgres://sg:***@db:5432/x");
        for bad in [
            "postgres://sg:s3cret@:5432/x",
            "postgres://sg:s3cret@db:notaport/x",
            "mysql://sg:s3cret@db/x",
            "sg:s3cret@db/x",
        ] {
            let e = DatabaseUrl::parse(bad, dir).unwrap_err();
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
    }

    #[test]
    fn redaction_covers_userinfo_and_password_options() {
        assert_eq!(
            redact("connecting to postgres://u:p@h/d failed; postgres://v:q@h2/e"),
            "connecting to postgres://u:***@h/d failed; postgres://v:***@h2/e"
        );
        assert_eq!(
            redact("postgres://u@h/d?password=p&sslmode=require"),
            "postgres://u@h/d?password=***&sslmode=require"
        );
        assert_eq!(
            redact("user=u PASSWORD=p host=h"),
            "user=u PASSWORD=*** host=h"
        );
        assert_eq!(redact("postgres://u:p:x@y@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact("postgres://u:pa/ss@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact("no url here"), "no url here");
    }
}
