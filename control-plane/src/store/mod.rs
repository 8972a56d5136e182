//! The durable store: SQLite through sqlx, in the data dir.
//!
//! A write is acknowledged only after its transaction commits, and commits
//! are synchronous in WAL mode (`synchronous = FULL`), so an acknowledged
//! write survives a `kill -9` at any moment.
//!
//! The schema and most statements are plain SQL that PostgreSQL also runs:
//! numbered `$n` parameters, BIGINT milliseconds, `ON CONFLICT DO NOTHING`,
//! `LIKE … ESCAPE`, partial unique indexes. Two statements use SQLite's JSON
//! functions and must be written anew for another engine: a session's
//! groups come back with it through `json_group_array` ([`session_get`]),
//! and the reaper's activity update reads its batch with `json_each` and
//! `json_extract` ([`sessions_touch`]).
//!
//! Functions take a `&mut SqliteConnection`, so callers choose the
//! transaction: the service runs a check-then-write as one transaction,
//! under the write lock ([`crate::writes`]), the only holder of `begin`.
//!
//! # Layout
//! - this file: [`Store`] (the pool, migrations), [`StoreError`], and the
//!   helpers every table uses.
//! - `users`, `groups`: the directory.
//! - `sessions`: sessions, the listing's filter and pages, the reaper's
//!   queries.
//! - `tokens`: API tokens, access links, cookie signing keys, OAuth2
//!   tokens.
//! - `environments`: workshop environments.
//! - `portal`: the training portal's counts (its session caps, when a
//!   pending session was requested).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use crate::session::lifecycle::SessionState;
use crate::session::model::{SessionKind, SessionRecord};
use crate::workshop::environment::{EnvironmentRecord, EnvironmentState, Target};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database row {what} {key:?}: {message}")]
    Corrupt {
        what: &'static str,
        key: String,
        message: String,
    },
}

impl StoreError {
    /// Whether the database refused the write as a duplicate key.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Db(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// The connection pool. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database file and runs the migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: the WAL is synced at every commit, so an acknowledged
            // write survives a crash of the process or of the machine.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // A file on this machine does not go away the way a network peer
            // does; the default ping on every checkout was one more round trip
            // to the connection's thread for every read and write.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    /// An in-memory database, for tests that do not need the file.
    pub async fn open_in_memory() -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        // One connection: every connection to `:memory:` is its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    /// A transaction of its own. Only the write lock ([`crate::writes`])
    /// calls this: every write holds the lock, so none goes around it.
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Sqlite>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn opt_ms(v: Option<u64>) -> Option<i64> {
    v.map(ms)
}

fn get_u64(row: &SqliteRow, col: &str) -> Result<u64, sqlx::Error> {
    let v: i64 = row.try_get(col)?;
    Ok(v.max(0) as u64)
}

fn get_opt_u64(row: &SqliteRow, col: &str) -> Result<Option<u64>, sqlx::Error> {
    let v: Option<i64> = row.try_get(col)?;
    Ok(v.map(|v| v.max(0) as u64))
}

fn get_opt_port(row: &SqliteRow, col: &str) -> Result<Option<u16>, sqlx::Error> {
    let v: Option<i64> = row.try_get(col)?;
    Ok(v.and_then(|v| u16::try_from(v).ok()))
}

/// `%q%` with the LIKE wildcards in `q` escaped, lower-cased.
fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for ch in q.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

fn push_page(b: &mut QueryBuilder<Sqlite>, order: &str, page: u64, per_page: u64) {
    b.push(format!(" ORDER BY {order} LIMIT "))
        .push_bind(ms(per_page))
        .push(" OFFSET ")
        .push_bind(ms(page.saturating_sub(1).saturating_mul(per_page)));
}

mod environments;
mod groups;
mod portal;
mod sessions;
mod tokens;
mod users;

pub use environments::*;
pub use groups::*;
pub use portal::*;
pub use sessions::*;
pub use tokens::*;
pub use users::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_is_in_wal_mode_with_synchronous_commits() {
        let dir = std::env::temp_dir().join(format!("sg-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("t.db")).await.unwrap();
        let mut c = store.conn().await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1), "2 = FULL");
        drop(c);
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("Ab"), "%ab%");
        assert_eq!(like_pattern("50%_x\\"), "%50\\%\\_x\\\\%");
    }
}
