//! The durable store: SQLite (a file in the data dir, the default) or
//! PostgreSQL (a server several control planes can share), through sqlx's
//! `Any` driver: one set of functions, one set of statements.
//!
//! A write is acknowledged only after its transaction commits. On SQLite,
//! commits are synchronous in WAL mode (`synchronous = FULL`), so an
//! acknowledged write survives a `kill -9` at any moment; on PostgreSQL,
//! every connection sets `synchronous_commit = on`, so an acknowledged
//! write is on the server's disk (and on its synchronous standbys, if it
//! has any).
//!
//! The statements are SQL both engines run: numbered `$n` parameters (also
//! in what [`Sql`] builds: sqlx's `QueryBuilder` writes `?` for `Any`,
//! which PostgreSQL refuses), BIGINT milliseconds, `ON CONFLICT DO
//! NOTHING`, `RETURNING`, `LIKE … ESCAPE` on `LOWER(…)` of both sides,
//! partial unique indexes. Two differences remain, each in one place:
//!
//! - Booleans. The columns are BOOLEAN on both; SQLite stores 0 and 1, and
//!   sqlx's `Any` refuses to read a column SQLite declares BOOLEAN. So a
//!   query reads each as `CAST(col AS INTEGER)` (the `*_SELECT` column
//!   lists) and [`get_bool`] turns it back; binding a `bool` works on both.
//! - JSON functions, in two statements: a session's groups come back with
//!   it as a JSON array ([`session_get`]), and the reaper's activity update
//!   reads its batch from one JSON parameter ([`sessions_touch`]). Each has
//!   a text per [`Engine`], chosen by the connection's backend.
//!
//! Migrations are kept per engine, in step: `migrations/NNNN_*.sql` for
//! SQLite and `migrations/postgres/NNNN_*.sql` for PostgreSQL, with the
//! same numbers, names, tables and columns (a test compares the migrated
//! schemas). They run at every start, before anything is served.
//!
//! Functions take a `&mut Conn`, so callers choose the transaction: the
//! service runs a check-then-write as one transaction, under the write
//! lock ([`crate::writes`]), the only holder of `begin`.
//!
//! # Layout
//! - this file: [`Store`] (the pool, migrations), [`StoreError`], [`Sql`],
//!   and the helpers every table uses.
//! - `database`: [`DatabaseUrl`] (`control_plane.database`), [`Engine`],
//!   and [`redact`], which keeps passwords out of messages.
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

use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, Arguments, ConnectOptions, Encode, Row, Type};

use crate::session::lifecycle::SessionState;
use crate::session::model::{SessionKind, SessionRecord};
use crate::workshop::environment::{EnvironmentRecord, EnvironmentState, Target};

mod database;

pub use database::{redact, DatabaseUrl, Engine, DB_FILE};

/// A connection to either engine: what every store function takes.
pub type Conn = sqlx::AnyConnection;

/// A transaction of its own (see [`crate::writes`]).
pub type Transaction = sqlx::Transaction<'static, Any>;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections in a pool. SQLite has one writer anyway; PostgreSQL's
/// default `max_connections` (100) leaves room for several control planes.
const POOL_SIZE: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", db_message(.0))]
    Db(#[from] sqlx::Error),
    #[error("database migration: {}", redact(&.0.to_string()))]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database row {what} {key:?}: {message}")]
    Corrupt {
        what: &'static str,
        key: String,
        message: String,
    },
}

/// A database error as the API and the log say it: an unreachable
/// database says so, and that nothing was changed.
fn db_message(e: &sqlx::Error) -> String {
    let text = redact(&e.to_string());
    if unavailable(e) {
        format!("the database is unavailable ({text}); nothing was changed, try again")
    } else {
        format!("database: {text}")
    }
}

/// Whether `e` means the database could not be reached or is going away:
/// down, restarting, refusing connections, or no connection free in time.
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // Connection exceptions (08…), and the server shutting down or
        // starting (57P01-57P03).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

impl StoreError {
    /// Whether the database could not be reached: the API answers 503, as
    /// the same request may succeed once it is back.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Db(e) if unavailable(e))
    }

    /// Whether the database refused the write as a duplicate key.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Db(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// The connection pool. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
}

impl Store {
    /// Connects to `database` (creating a SQLite file if needed) and runs
    /// its engine's migrations.
    pub async fn connect(database: &DatabaseUrl) -> Result<Store, StoreError> {
        match database {
            DatabaseUrl::Sqlite(path) => Store::open(path).await,
            DatabaseUrl::Postgres(url) => Store::open_postgres(url).await,
        }
    }

    /// Opens (creating if needed) the SQLite file and runs the migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        // Absolute, so that the URL has no host part to misread.
        let path = std::path::absolute(path).map_err(sqlx::Error::Io)?;
        let url = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .to_url_lossy();
        let options = AnyConnectOptions::from_url(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(POOL_SIZE)
            // A file on this machine does not go away the way a network peer
            // does; the default ping on every checkout was one more round trip
            // to the connection's thread for every read and write.
            .test_before_acquire(false)
            .after_connect(|c, _| {
                Box::pin(async move {
                    // What SqliteConnectOptions set before (the `Any`
                    // driver takes only a URL): waits up to 10 s for a lock;
                    // WAL; FULL: the WAL is synced at every commit, so an
                    // acknowledged write survives a crash of the process or
                    // of the machine; foreign keys enforced.
                    for pragma in [
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *c).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        SQLITE_MIGRATOR.run(&pool).await?;
        Ok(Store {
            pool,
            engine: Engine::Sqlite,
        })
    }

    /// Connects to the PostgreSQL database at `url` and runs the
    /// migrations (under PostgreSQL's advisory lock, so control planes
    /// starting together migrate once).
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let options = url.parse::<AnyConnectOptions>()?;
        let pool = AnyPoolOptions::new()
            .max_connections(POOL_SIZE)
            // With the server down, a request waits this long for a
            // connection, then answers 503 (not sqlx's 30 s).
            .acquire_timeout(std::time::Duration::from_secs(3))
            .after_connect(|c, _| {
                Box::pin(async move {
                    // The server's default, set here whatever the server or
                    // the role says: a commit returns only once it is
                    // durable, so nothing acknowledged is lost.
                    for setting in [
                        "SET synchronous_commit = on",
                        // `LIKE … ESCAPE '\'` means one backslash.
                        "SET standard_conforming_strings = on",
                    ] {
                        sqlx::query(setting).execute(&mut *c).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        POSTGRES_MIGRATOR.run(&pool).await?;
        Ok(Store {
            pool,
            engine: Engine::Postgres,
        })
    }

    /// An in-memory SQLite database, for tests that do not need the file.
    pub async fn open_in_memory() -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let options = "sqlite::memory:".parse::<AnyConnectOptions>()?;
        // One connection: every connection to `:memory:` is its own database.
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(|c, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA foreign_keys = ON").execute(c).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        SQLITE_MIGRATOR.run(&pool).await?;
        Ok(Store {
            pool,
            engine: Engine::Sqlite,
        })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// A transaction of its own. Only the write lock ([`crate::writes`])
    /// calls this: every write holds the lock, so none goes around it.
    pub(crate) async fn begin(&self) -> Result<Transaction, StoreError> {
        Ok(self.pool.begin().await?)
    }

    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Any>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The engine behind a connection.
fn engine_of(c: &Conn) -> Engine {
    if c.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME {
        Engine::Postgres
    } else {
        Engine::Sqlite
    }
}

/// A statement built piece by piece, binding as it goes, with `$n`
/// placeholders: what both engines read (sqlx's `QueryBuilder` writes `?`
/// for `Any`).
struct Sql<'a> {
    text: String,
    args: AnyArguments<'a>,
}

impl<'a> Sql<'a> {
    pub fn new(text: impl Into<String>) -> Sql<'a> {
        Sql {
            text: text.into(),
            args: AnyArguments::default(),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Binds `value` and writes its placeholder.
    pub fn bind<T: 'a + Encode<'a, Any> + Type<Any>>(&mut self, value: T) -> &mut Self {
        // Encoding into `Any` only records the value: it cannot fail.
        let _ = self.args.add(value);
        self.text.push('$');
        self.text.push_str(&self.args.len().to_string());
        self
    }

    /// Binds each of `values`, separated by commas (an `IN (…)` list).
    pub fn bind_list<T: 'a + Encode<'a, Any> + Type<Any>>(
        &mut self,
        values: impl IntoIterator<Item = T>,
    ) -> &mut Self {
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(v);
        }
        self
    }

    /// `ORDER BY order LIMIT … OFFSET …` for 1-based `page`.
    pub fn page(&mut self, order: &str, page: u64, per_page: u64) -> &mut Self {
        self.push(&format!(" ORDER BY {order} LIMIT "))
            .bind(ms(per_page))
            .push(" OFFSET ")
            .bind(ms(page.saturating_sub(1).saturating_mul(per_page)))
    }

    pub async fn fetch_all(self, c: &mut Conn) -> Result<Vec<AnyRow>, sqlx::Error> {
        sqlx::query_with(&self.text, self.args).fetch_all(c).await
    }

    pub async fn fetch_one(self, c: &mut Conn) -> Result<AnyRow, sqlx::Error> {
        sqlx::query_with(&self.text, self.args).fetch_one(c).await
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn opt_ms(v: Option<u64>) -> Option<i64> {
    v.map(ms)
}

fn get_u64(row: &AnyRow, col: &str) -> Result<u64, sqlx::Error> {
    let v: i64 = row.try_get(col)?;
    Ok(v.max(0) as u64)
}

fn get_opt_u64(row: &AnyRow, col: &str) -> Result<Option<u64>, sqlx::Error> {
    let v: Option<i64> = row.try_get(col)?;
    Ok(v.map(|v| v.max(0) as u64))
}

fn get_opt_port(row: &AnyRow, col: &str) -> Result<Option<u16>, sqlx::Error> {
    let v: Option<i64> = row.try_get(col)?;
    Ok(v.and_then(|v| u16::try_from(v).ok()))
}

/// A BOOLEAN column, read as `CAST(col AS INTEGER)` (see the module doc).
fn get_bool(row: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    let v: i64 = row.try_get(col)?;
    Ok(v != 0)
}

/// `cols` (a column list) with each of `booleans` read as
/// `CAST(col AS INTEGER) AS col`, for a SELECT.
#[cfg(test)]
fn select_list(cols: &str, booleans: &[&str]) -> String {
    cols.split(',')
        .map(str::trim)
        .map(|c| {
            if booleans.contains(&c) {
                format!("CAST({c} AS INTEGER) AS {c}")
            } else {
                c.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
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

mod changes;
mod console;
mod environments;
mod groups;
mod portal;
mod sessions;
mod tokens;
mod users;

pub use changes::*;
pub use console::*;
pub use environments::*;
pub use groups::*;
pub use portal::*;
pub use sessions::*;
pub use tokens::*;
pub use users::*;

#[cfg(test)]
mod suite;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("Ab"), "%ab%");
        assert_eq!(like_pattern("50%_x\\"), "%50\\%\\_x\\\\%");
    }

    #[test]
    fn built_statements_number_their_parameters() {
        let mut b = Sql::new("SELECT 1 WHERE a = ");
        b.bind("x")
            .push(" AND b IN (")
            .bind_list([1i64, 2, 3])
            .push(")");
        b.page("name", 3, 10);
        assert_eq!(
            b.text,
            "SELECT 1 WHERE a = $1 AND b IN ($2, $3, $4) ORDER BY name LIMIT $5 OFFSET $6"
        );
    }
}
