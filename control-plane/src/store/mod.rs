//! The durable store: SQLite through sqlx, in the data dir.
//!
//! A write is acknowledged only after its transaction commits, and commits
//! are synchronous in WAL mode (`synchronous = FULL`), so an acknowledged
//! write survives a `kill -9` at any moment. The SQL is kept portable —
//! numbered `$n` parameters, BIGINT milliseconds, no engine functions — so
//! that PostgreSQL can take over for several nodes.
//!
//! Functions take a `&mut SqliteConnection`, so callers choose the
//! transaction: the service runs a check-then-write as one transaction.

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

/// A stored user row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub created_ms: u64,
}

/// A stored API token (only its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub name: String,
    pub kind: String,
    pub hash: String,
    pub created_ms: u64,
}

/// Page size when none is asked for, and the most one page may hold.
pub const DEFAULT_PER_PAGE: u64 = 50;
pub const MAX_PER_PAGE: u64 = 1000;

/// What a session listing asks for.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    /// Case-insensitive substring of the name, the owner or a label.
    pub q: Option<String>,
    /// Any of these states; empty means every state but `deleted`.
    pub states: Vec<SessionState>,
    pub owner: Option<String>,
    /// Only sessions shared with this group.
    pub group: Option<String>,
    /// 1-based.
    pub page: u64,
    pub per_page: u64,
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

// ---- users ----

const USER_COLS: &str = "id, name, email, first_name, last_name, created_ms";

fn user_row(row: &SqliteRow) -> Result<UserRow, sqlx::Error> {
    Ok(UserRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        created_ms: get_u64(row, "created_ms")?,
    })
}

pub async fn user_get(c: &mut SqliteConnection, name: &str) -> Result<Option<UserRow>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE name = $1"))
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    Ok(row.as_ref().map(user_row).transpose()?)
}

pub async fn user_exists(c: &mut SqliteConnection, name: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    Ok(row.is_some())
}

/// Users whose name, e-mail or names contain `q`, a page of them, and the total.
pub async fn users_list(
    c: &mut SqliteConnection,
    q: Option<&str>,
    page: u64,
    per_page: u64,
) -> Result<(Vec<UserRow>, u64), StoreError> {
    let filter = |b: &mut QueryBuilder<Sqlite>| {
        if let Some(q) = q {
            let pat = like_pattern(q);
            b.push(" WHERE LOWER(name) LIKE ")
                .push_bind(pat.clone())
                .push(" ESCAPE '\\' OR LOWER(COALESCE(email, '')) LIKE ")
                .push_bind(pat.clone())
                .push(" ESCAPE '\\' OR LOWER(COALESCE(first_name, '') || ' ' || COALESCE(last_name, '')) LIKE ")
                .push_bind(pat)
                .push(" ESCAPE '\\'");
        }
    };
    let mut count = QueryBuilder::new("SELECT COUNT(*) AS n FROM users");
    filter(&mut count);
    let total = get_u64(&count.build().fetch_one(&mut *c).await?, "n")?;
    let mut b = QueryBuilder::new(format!("SELECT {USER_COLS} FROM users"));
    filter(&mut b);
    push_page(&mut b, "name", page, per_page);
    let rows = b.build().fetch_all(&mut *c).await?;
    let users = rows.iter().map(user_row).collect::<Result<_, _>>()?;
    Ok((users, total))
}

pub async fn user_insert(c: &mut SqliteConnection, u: &UserRow) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(&u.id)
    .bind(&u.name)
    .bind(&u.email)
    .bind(&u.first_name)
    .bind(&u.last_name)
    .bind(ms(u.created_ms))
    .execute(&mut *c)
    .await?;
    Ok(())
}

pub async fn user_update(c: &mut SqliteConnection, u: &UserRow) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET email = $1, first_name = $2, last_name = $3 WHERE name = $4")
        .bind(&u.email)
        .bind(&u.first_name)
        .bind(&u.last_name)
        .bind(&u.name)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn user_delete(c: &mut SqliteConnection, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM users WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Sessions the user owns, counted by whether they can still be used.
pub async fn user_live_sessions(c: &mut SqliteConnection, name: &str) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM sessions WHERE owner = $1 AND state NOT IN ('expired', 'deleted')",
    )
    .bind(name)
    .fetch_one(&mut *c)
    .await?;
    Ok(get_u64(&row, "n")?)
}

/// Purges the user's finished session records (so the user can be deleted).
pub async fn user_purge_finished_sessions(
    c: &mut SqliteConnection,
    name: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sessions WHERE owner = $1 AND state IN ('expired', 'deleted')")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// The groups of each of these users.
pub async fn groups_of_users(
    c: &mut SqliteConnection,
    users: &[String],
) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if users.is_empty() {
        return Ok(out);
    }
    let mut b =
        QueryBuilder::new("SELECT user_name, group_name FROM group_members WHERE user_name IN (");
    let mut sep = b.separated(", ");
    for u in users {
        sep.push_bind(u);
    }
    b.push(") ORDER BY group_name");
    for row in b.build().fetch_all(&mut *c).await? {
        let user: String = row.try_get("user_name")?;
        out.entry(user)
            .or_default()
            .push(row.try_get("group_name")?);
    }
    Ok(out)
}

// ---- groups ----

pub async fn group_created(
    c: &mut SqliteConnection,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    let row = sqlx::query("SELECT created_ms FROM user_groups WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    Ok(row.map(|r| get_u64(&r, "created_ms")).transpose()?)
}

/// Every group with its creation time, by name.
pub async fn groups_list(c: &mut SqliteConnection) -> Result<Vec<(String, u64)>, StoreError> {
    let rows = sqlx::query("SELECT name, created_ms FROM user_groups ORDER BY name")
        .fetch_all(&mut *c)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, get_u64(r, "created_ms")?)))
        .collect()
}

pub async fn group_insert(
    c: &mut SqliteConnection,
    name: &str,
    created_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO user_groups (name, created_ms) VALUES ($1, $2)")
        .bind(name)
        .bind(ms(created_ms))
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn group_delete(c: &mut SqliteConnection, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM user_groups WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Members of every group (or of one), by group.
pub async fn group_members(
    c: &mut SqliteConnection,
    group: Option<&str>,
) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
    let rows = match group {
        Some(g) => {
            sqlx::query("SELECT group_name, user_name FROM group_members WHERE group_name = $1 ORDER BY user_name")
                .bind(g)
                .fetch_all(&mut *c)
                .await?
        }
        None => {
            sqlx::query("SELECT group_name, user_name FROM group_members ORDER BY group_name, user_name")
                .fetch_all(&mut *c)
                .await?
        }
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        out.entry(r.try_get("group_name")?)
            .or_default()
            .push(r.try_get("user_name")?);
    }
    Ok(out)
}

pub async fn member_add(
    c: &mut SqliteConnection,
    group: &str,
    user: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "INSERT INTO group_members (group_name, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(user)
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn member_remove(
    c: &mut SqliteConnection,
    group: &str,
    user: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM group_members WHERE group_name = $1 AND user_name = $2")
        .bind(group)
        .bind(user)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Names among `names` that are not users, in the order given.
pub async fn missing_users(
    c: &mut SqliteConnection,
    names: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut missing = Vec::new();
    for n in names {
        if !user_exists(c, n).await? {
            missing.push(n.clone());
        }
    }
    Ok(missing)
}

/// Names among `names` that are not groups, in the order given.
pub async fn missing_groups(
    c: &mut SqliteConnection,
    names: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut missing = Vec::new();
    for n in names {
        if group_created(c, n).await?.is_none() {
            missing.push(n.clone());
        }
    }
    Ok(missing)
}

// ---- sessions ----

const SESSION_COLS: &str = "name, kind, remote_host, remote_port, url, https, tls_verify, slug, \
    strip_prefix, rewrite_host, custom_domain, workspace_port, owner, public, state, created_ms, \
    activated_ms, expires_ms, last_activity_ms, paused_ms, state_changed_ms, duration_secs, \
    idle_timeout_secs, extendable, environment, labels, activate_by_ms";

fn session_row(row: &SqliteRow) -> Result<SessionRecord, StoreError> {
    let name: String = row.try_get("name")?;
    let corrupt = |message: String| StoreError::Corrupt {
        what: "session",
        key: name.clone(),
        message,
    };
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let labels: String = row.try_get("labels")?;
    Ok(SessionRecord {
        kind: SessionKind::parse(&kind).ok_or_else(|| corrupt(format!("kind {kind:?}")))?,
        remote_host: row.try_get("remote_host")?,
        remote_port: get_opt_port(row, "remote_port")?,
        url: row.try_get("url")?,
        https: row.try_get("https")?,
        tls_verify: row.try_get("tls_verify")?,
        slug: row.try_get("slug")?,
        strip_prefix: row.try_get("strip_prefix")?,
        rewrite_host: row.try_get("rewrite_host")?,
        custom_domain: row.try_get("custom_domain")?,
        workspace_port: get_opt_port(row, "workspace_port")?,
        owner: row.try_get("owner")?,
        groups: Vec::new(),
        public: row.try_get("public")?,
        state: state.parse().map_err(corrupt)?,
        created_ms: get_u64(row, "created_ms")?,
        activated_ms: get_opt_u64(row, "activated_ms")?,
        expires_ms: get_opt_u64(row, "expires_ms")?,
        last_activity_ms: get_opt_u64(row, "last_activity_ms")?,
        paused_ms: get_opt_u64(row, "paused_ms")?,
        state_changed_ms: get_u64(row, "state_changed_ms")?,
        duration_secs: get_opt_u64(row, "duration_secs")?,
        idle_timeout_secs: get_opt_u64(row, "idle_timeout_secs")?,
        extendable: row.try_get("extendable")?,
        environment: row.try_get("environment")?,
        labels: serde_json::from_str(&labels).map_err(|e| corrupt(format!("labels: {e}")))?,
        activate_by_ms: get_opt_u64(row, "activate_by_ms")?,
        name,
    })
}

/// The session records of `rows`, with their groups.
async fn records_with_groups(
    c: &mut SqliteConnection,
    rows: &[SqliteRow],
) -> Result<Vec<SessionRecord>, StoreError> {
    let mut recs = rows
        .iter()
        .map(session_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_groups(c, &mut recs).await?;
    Ok(recs)
}

/// Fills in `groups` for each record, with one query.
async fn attach_groups(
    c: &mut SqliteConnection,
    records: &mut [SessionRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
    // SQLite allows 32766 parameters; chunk to stay far below.
    for chunk in records.chunks(500) {
        let mut b = QueryBuilder::new(
            "SELECT session_name, group_name FROM session_groups WHERE session_name IN (",
        );
        let mut sep = b.separated(", ");
        for r in chunk {
            sep.push_bind(&r.name);
        }
        b.push(") ORDER BY group_name");
        for row in b.build().fetch_all(&mut *c).await? {
            by_name
                .entry(row.try_get("session_name")?)
                .or_default()
                .push(row.try_get("group_name")?);
        }
    }
    for r in records {
        r.groups = by_name.remove(&r.name).unwrap_or_default();
    }
    Ok(())
}

/// One session with its groups, in one query (the groups as a JSON array):
/// every session write starts with this read while holding the write lock.
pub async fn session_get(
    c: &mut SqliteConnection,
    name: &str,
) -> Result<Option<SessionRecord>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLS}, (SELECT json_group_array(group_name) FROM \
         (SELECT group_name FROM session_groups WHERE session_name = $1 ORDER BY group_name)) \
         AS group_names FROM sessions WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&mut *c)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut rec = session_row(&row)?;
    let groups: String = row.try_get("group_names")?;
    rec.groups = serde_json::from_str(&groups).map_err(|e| StoreError::Corrupt {
        what: "session",
        key: name.to_string(),
        message: format!("groups {groups:?}: {e}"),
    })?;
    Ok(Some(rec))
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

fn push_session_filter(b: &mut QueryBuilder<Sqlite>, f: &SessionFilter) {
    b.push(" WHERE 1 = 1");
    if let Some(q) = &f.q {
        let pat = like_pattern(q);
        b.push(" AND (LOWER(name) LIKE ")
            .push_bind(pat.clone())
            .push(" ESCAPE '\\' OR LOWER(owner) LIKE ")
            .push_bind(pat.clone())
            .push(" ESCAPE '\\' OR LOWER(labels) LIKE ")
            .push_bind(pat)
            .push(" ESCAPE '\\')");
    }
    if f.states.is_empty() {
        b.push(" AND state <> 'deleted'");
    } else {
        b.push(" AND state IN (");
        let mut sep = b.separated(", ");
        for s in &f.states {
            sep.push_bind(s.as_str());
        }
        b.push(")");
    }
    if let Some(o) = &f.owner {
        b.push(" AND owner = ").push_bind(o.clone());
    }
    if let Some(g) = &f.group {
        b.push(" AND name IN (SELECT session_name FROM session_groups WHERE group_name = ")
            .push_bind(g.clone())
            .push(")");
    }
}

/// A page of sessions matching `f`, by name, and how many match in all.
pub async fn sessions_list(
    c: &mut SqliteConnection,
    f: &SessionFilter,
) -> Result<(Vec<SessionRecord>, u64), StoreError> {
    let mut count = QueryBuilder::new("SELECT COUNT(*) AS n FROM sessions");
    push_session_filter(&mut count, f);
    let total = get_u64(&count.build().fetch_one(&mut *c).await?, "n")?;
    let mut b = QueryBuilder::new(format!("SELECT {SESSION_COLS} FROM sessions"));
    push_session_filter(&mut b, f);
    push_page(&mut b, "name", f.page, f.per_page);
    let rows = b.build().fetch_all(&mut *c).await?;
    let mut recs = rows
        .iter()
        .map(session_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_groups(c, &mut recs).await?;
    Ok((recs, total))
}

/// Sessions in any of `states`, all of them (start-up, reaper).
pub async fn sessions_in_states(
    c: &mut SqliteConnection,
    states: &[SessionState],
) -> Result<Vec<SessionRecord>, StoreError> {
    let mut b = QueryBuilder::new(format!(
        "SELECT {SESSION_COLS} FROM sessions WHERE state IN ("
    ));
    let mut sep = b.separated(", ");
    for s in states {
        sep.push_bind(s.as_str());
    }
    b.push(") ORDER BY name");
    let rows = b.build().fetch_all(&mut *c).await?;
    records_with_groups(c, &rows).await
}

/// Names of sessions shared with `group` that can still be used.
pub async fn sessions_shared_with(
    c: &mut SqliteConnection,
    group: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT s.name AS name FROM sessions s JOIN session_groups g ON g.session_name = s.name \
         WHERE g.group_name = $1 AND s.state NOT IN ('expired', 'deleted') ORDER BY s.name",
    )
    .bind(group)
    .fetch_all(&mut *c)
    .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get("name"))
        .collect::<Result<_, _>>()?)
}

fn bind_session<'q>(
    q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    s: &'q SessionRecord,
    labels: String,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    q.bind(&s.name)
        .bind(s.kind.as_str())
        .bind(&s.remote_host)
        .bind(s.remote_port.map(i64::from))
        .bind(&s.url)
        .bind(s.https)
        .bind(s.tls_verify)
        .bind(&s.slug)
        .bind(s.strip_prefix)
        .bind(s.rewrite_host)
        .bind(&s.custom_domain)
        .bind(s.workspace_port.map(i64::from))
        .bind(&s.owner)
        .bind(s.public)
        .bind(s.state.as_str())
        .bind(ms(s.created_ms))
        .bind(opt_ms(s.activated_ms))
        .bind(opt_ms(s.expires_ms))
        .bind(opt_ms(s.last_activity_ms))
        .bind(opt_ms(s.paused_ms))
        .bind(ms(s.state_changed_ms))
        .bind(opt_ms(s.duration_secs))
        .bind(opt_ms(s.idle_timeout_secs))
        .bind(s.extendable)
        .bind(&s.environment)
        .bind(labels)
        .bind(opt_ms(s.activate_by_ms))
}

fn labels_json(s: &SessionRecord) -> String {
    serde_json::to_string(&s.labels).unwrap_or_else(|_| "{}".into())
}

async fn set_session_groups(c: &mut SqliteConnection, s: &SessionRecord) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM session_groups WHERE session_name = $1")
        .bind(&s.name)
        .execute(&mut *c)
        .await?;
    insert_session_groups(c, s).await
}

async fn insert_session_groups(
    c: &mut SqliteConnection,
    s: &SessionRecord,
) -> Result<(), StoreError> {
    for g in &s.groups {
        sqlx::query("INSERT INTO session_groups (session_name, group_name) VALUES ($1, $2)")
            .bind(&s.name)
            .bind(g)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

pub async fn session_insert(c: &mut SqliteConnection, s: &SessionRecord) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO sessions ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)"
    );
    bind_session(sqlx::query(&sql), s, labels_json(s))
        .execute(&mut *c)
        .await?;
    // A new row has no groups yet: those of an earlier record of the same
    // name went with it (ON DELETE CASCADE).
    insert_session_groups(c, s).await
}

/// Overwrites the stored record (and its groups) with `s`.
pub async fn session_update(c: &mut SqliteConnection, s: &SessionRecord) -> Result<(), StoreError> {
    session_update_row(c, s).await?;
    set_session_groups(c, s).await
}

/// Overwrites the stored record with `s` but leaves its groups as stored:
/// for changes that cannot touch them (lifecycle actions, patches), which
/// saves a delete and an insert per group on every write.
pub async fn session_update_row(
    c: &mut SqliteConnection,
    s: &SessionRecord,
) -> Result<(), StoreError> {
    let sql = "UPDATE sessions SET kind = $2, remote_host = $3, remote_port = $4, url = $5, \
        https = $6, tls_verify = $7, slug = $8, strip_prefix = $9, rewrite_host = $10, \
        custom_domain = $11, workspace_port = $12, owner = $13, public = $14, state = $15, \
        created_ms = $16, activated_ms = $17, expires_ms = $18, last_activity_ms = $19, \
        paused_ms = $20, state_changed_ms = $21, duration_secs = $22, idle_timeout_secs = $23, \
        extendable = $24, environment = $25, labels = $26, activate_by_ms = $27 WHERE name = $1";
    bind_session(sqlx::query(sql), s, labels_json(s))
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Removes the record for good (retention purge, or replacing a finished one).
pub async fn session_purge(c: &mut SqliteConnection, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM sessions WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Purges expired and deleted records whose state is older than `cutoff_ms`.
pub async fn sessions_purge_finished(
    c: &mut SqliteConnection,
    cutoff_ms: u64,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT name FROM sessions WHERE state IN ('expired', 'deleted') AND state_changed_ms < $1",
    )
    .bind(ms(cutoff_ms))
    .fetch_all(&mut *c)
    .await?;
    let names: Vec<String> = rows
        .iter()
        .map(|r| r.try_get("name"))
        .collect::<Result<_, _>>()?;
    for n in &names {
        session_purge(c, n).await?;
    }
    Ok(names)
}

/// Sessions `sessions_touch` sends to SQLite in one statement: one bound JSON
/// array, so no limit on bound variables applies; chunks keep each statement
/// short for the readers waiting on the connection.
const TOUCH_CHUNK: usize = 1000;

/// Records traffic seen by the gateway, `(name, at_ms)` per session; never
/// moves `last_activity` back. One `UPDATE … FROM json_each` per chunk, not a
/// statement per session: the reaper syncs every session that saw traffic,
/// which under load is all of them, while it holds the write lock.
pub async fn sessions_touch(
    c: &mut SqliteConnection,
    touches: &[(String, u64)],
) -> Result<(), StoreError> {
    for chunk in touches.chunks(TOUCH_CHUNK) {
        let json = serde_json::Value::Array(
            chunk
                .iter()
                .map(|(name, at)| serde_json::json!([name, ms(*at)]))
                .collect(),
        )
        .to_string();
        sqlx::query(
            "UPDATE sessions SET last_activity_ms = t.at \
             FROM (SELECT json_extract(value, '$[0]') AS name, \
                          json_extract(value, '$[1]') AS at FROM json_each($1)) AS t \
             WHERE sessions.name = t.name \
             AND (sessions.last_activity_ms IS NULL OR sessions.last_activity_ms < t.at)",
        )
        .bind(json)
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

/// The sessions the reaper may have to act on: pending and evicted ones, and
/// running ones with an expiry or an idle timeout. A running session with
/// neither never expires, so the reaper does not load it (with 10k sessions
/// that is most of them, every pass).
pub async fn reap_candidates(c: &mut SqliteConnection) -> Result<Vec<SessionRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SESSION_COLS} FROM sessions WHERE state IN ($1, $2) \
         OR (state = $3 AND (expires_ms IS NOT NULL OR idle_timeout_secs IS NOT NULL)) \
         ORDER BY name"
    ))
    .bind(SessionState::Pending.as_str())
    .bind(SessionState::Evicted.as_str())
    .bind(SessionState::Running.as_str())
    .fetch_all(&mut *c)
    .await?;
    records_with_groups(c, &rows).await
}

/// Whether a session that can still be used holds this slug or custom domain.
pub async fn live_session_with(
    c: &mut SqliteConnection,
    column: &'static str,
    value: &str,
    except: &str,
) -> Result<Option<String>, StoreError> {
    debug_assert!(matches!(column, "slug" | "custom_domain"));
    let row = sqlx::query(&format!(
        "SELECT name FROM sessions WHERE {column} = $1 AND name <> $2 \
         AND state NOT IN ('expired', 'deleted')"
    ))
    .bind(value)
    .bind(except)
    .fetch_optional(&mut *c)
    .await?;
    Ok(row.map(|r| r.try_get("name")).transpose()?)
}

// ---- tokens ----

pub async fn tokens_list(c: &mut SqliteConnection) -> Result<Vec<TokenRow>, StoreError> {
    let rows = sqlx::query("SELECT name, kind, hash, created_ms FROM api_tokens ORDER BY name")
        .fetch_all(&mut *c)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(TokenRow {
                name: r.try_get("name")?,
                kind: r.try_get("kind")?,
                hash: r.try_get("hash")?,
                created_ms: get_u64(r, "created_ms")?,
            })
        })
        .collect()
}

pub async fn token_insert(c: &mut SqliteConnection, t: &TokenRow) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO api_tokens (name, kind, hash, created_ms) VALUES ($1, $2, $3, $4)")
        .bind(&t.name)
        .bind(&t.kind)
        .bind(&t.hash)
        .bind(ms(t.created_ms))
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn token_delete(c: &mut SqliteConnection, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() > 0)
}

// ---- access links and signing keys ----

/// A stored access link, by the hash of its token.
#[derive(Clone, Debug)]
pub struct AccessTokenRow {
    pub hash: String,
    pub session: String,
    pub user: String,
    pub path: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

pub async fn access_token_insert(
    c: &mut SqliteConnection,
    t: &AccessTokenRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO access_tokens (hash, session_name, user_name, path, created_ms, expires_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&t.hash)
    .bind(&t.session)
    .bind(&t.user)
    .bind(&t.path)
    .bind(ms(t.created_ms))
    .bind(ms(t.expires_ms))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Deletes the access link with this hash and returns it: a token can be
/// taken once, whatever happens next.
pub async fn access_token_take(
    c: &mut SqliteConnection,
    hash: &str,
) -> Result<Option<AccessTokenRow>, StoreError> {
    let row = sqlx::query(
        "DELETE FROM access_tokens WHERE hash = $1 \
         RETURNING hash, session_name, user_name, path, created_ms, expires_ms",
    )
    .bind(hash)
    .fetch_optional(&mut *c)
    .await?;
    row.map(|r| {
        Ok(AccessTokenRow {
            hash: r.try_get("hash")?,
            session: r.try_get("session_name")?,
            user: r.try_get("user_name")?,
            path: r.try_get("path")?,
            created_ms: get_u64(&r, "created_ms")?,
            expires_ms: get_u64(&r, "expires_ms")?,
        })
    })
    .transpose()
}

/// Removes access links that expired before `now_ms` (the reaper).
pub async fn access_tokens_purge(c: &mut SqliteConnection, now_ms: u64) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM access_tokens WHERE expires_ms <= $1")
        .bind(ms(now_ms))
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected())
}

/// A cookie signing key as stored.
#[derive(Clone, Debug)]
pub struct SigningKeyRow {
    pub id: String,
    /// base64 of the secret.
    pub secret: String,
    pub created_ms: u64,
    pub retired_ms: Option<u64>,
}

/// The current key and the most recently retired one, newest first.
pub async fn signing_keys(c: &mut SqliteConnection) -> Result<Vec<SigningKeyRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, secret, created_ms, retired_ms FROM signing_keys \
         ORDER BY created_ms DESC, id DESC LIMIT 2",
    )
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| {
            let retired: Option<i64> = r.try_get("retired_ms")?;
            Ok(SigningKeyRow {
                id: r.try_get("id")?,
                secret: r.try_get("secret")?,
                created_ms: get_u64(r, "created_ms")?,
                retired_ms: retired.map(|v| v.max(0) as u64),
            })
        })
        .collect()
}

/// Stores `new` as the current key: the current one is retired at `now_ms`,
/// and keys retired before it are deleted (they verify nothing any more).
pub async fn signing_key_rotate(
    c: &mut SqliteConnection,
    new: &SigningKeyRow,
    now_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM signing_keys WHERE retired_ms IS NOT NULL")
        .execute(&mut *c)
        .await?;
    sqlx::query("UPDATE signing_keys SET retired_ms = $1 WHERE retired_ms IS NULL")
        .bind(ms(now_ms))
        .execute(&mut *c)
        .await?;
    sqlx::query("INSERT INTO signing_keys (id, secret, created_ms) VALUES ($1, $2, $3)")
        .bind(&new.id)
        .bind(&new.secret)
        .bind(ms(new.created_ms))
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Every session of an environment (any state), with groups.
pub async fn sessions_of_environment(
    c: &mut SqliteConnection,
    environment: &str,
) -> Result<Vec<SessionRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SESSION_COLS} FROM sessions WHERE environment = $1 ORDER BY name"
    ))
    .bind(environment)
    .fetch_all(&mut *c)
    .await?;
    records_with_groups(c, &rows).await
}

// ---- oauth tokens ----

pub async fn oauth_token_insert(
    c: &mut SqliteConnection,
    hash: &str,
    kind: &str,
    username: &str,
    expires_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO oauth_tokens (hash, kind, username, expires_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash)
    .bind(kind)
    .bind(username)
    .bind(ms(expires_ms))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// The user of a token of `kind` with this hash, if it is unexpired at `now_ms`.
pub async fn oauth_token_user(
    c: &mut SqliteConnection,
    hash: &str,
    kind: &str,
    now_ms: u64,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "SELECT username FROM oauth_tokens WHERE hash = $1 AND kind = $2 AND expires_ms > $3",
    )
    .bind(hash)
    .bind(kind)
    .bind(ms(now_ms))
    .fetch_optional(&mut *c)
    .await?;
    Ok(row.map(|r| r.try_get("username")).transpose()?)
}

/// Deletes expired OAuth2 tokens (the reaper).
pub async fn oauth_tokens_purge(c: &mut SqliteConnection, now_ms: u64) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM oauth_tokens WHERE expires_ms <= $1")
        .bind(ms(now_ms))
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected())
}

/// Deletes one token (a refresh token is used once) and every expired one.
pub async fn oauth_token_delete(
    c: &mut SqliteConnection,
    hash: &str,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM oauth_tokens WHERE hash = $1")
        .bind(hash)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM oauth_tokens WHERE expires_ms <= $1")
        .bind(ms(now_ms))
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() > 0)
}

// ---- environments ----

const ENV_COLS: &str = "name, workshop, duration_secs, capacity, reserved, state, targets, \
    tls_verify, slug_prefix, extendable, created_ms, next_session";

fn environment_row(r: &SqliteRow) -> Result<EnvironmentRecord, StoreError> {
    let workshop: String = r.try_get("workshop")?;
    let targets: String = r.try_get("targets")?;
    let state: String = r.try_get("state")?;
    let duration: Option<i64> = r.try_get("duration_secs")?;
    let name: String = r.try_get("name")?;
    let bad = |what: &str, e: String| StoreError::Corrupt {
        what: "environment",
        key: name.clone(),
        message: format!("{what}: {e}"),
    };
    Ok(EnvironmentRecord {
        name: name.clone(),
        workshop: serde_json::from_str(&workshop).map_err(|e| bad("workshop", e.to_string()))?,
        duration_secs: duration.map(|d| d.max(0) as u64),
        capacity: get_u64(r, "capacity")?,
        reserved: get_u64(r, "reserved")?,
        state: EnvironmentState::parse(&state).ok_or_else(|| bad("state", state.clone()))?,
        targets: serde_json::from_str::<Vec<String>>(&targets)
            .map_err(|e| bad("targets", e.to_string()))?
            .iter()
            .map(|t| Target::parse(t))
            .collect::<Result<_, _>>()
            .map_err(|e| bad("targets", e))?,
        tls_verify: r.try_get("tls_verify")?,
        slug_prefix: r.try_get("slug_prefix")?,
        extendable: r.try_get("extendable")?,
        created_ms: get_u64(r, "created_ms")?,
        next_session: get_u64(r, "next_session")?,
    })
}

fn environment_json(e: &EnvironmentRecord) -> (String, String) {
    let targets: Vec<String> = e.targets.iter().map(Target::to_string).collect();
    (
        serde_json::to_string(&e.workshop).unwrap_or_else(|_| "{}".into()),
        serde_json::to_string(&targets).unwrap_or_else(|_| "[]".into()),
    )
}

/// Binds every column of [`ENV_COLS`], in its order, as `$1`..`$12`.
fn bind_environment<'q>(
    q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    e: &'q EnvironmentRecord,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let (workshop, targets) = environment_json(e);
    q.bind(&e.name)
        .bind(workshop)
        .bind(opt_ms(e.duration_secs))
        .bind(ms(e.capacity))
        .bind(ms(e.reserved))
        .bind(e.state.as_str())
        .bind(targets)
        .bind(e.tls_verify)
        .bind(&e.slug_prefix)
        .bind(e.extendable)
        .bind(ms(e.created_ms))
        .bind(ms(e.next_session))
}

pub async fn environment_insert(
    c: &mut SqliteConnection,
    e: &EnvironmentRecord,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO environments ({ENV_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    );
    bind_environment(sqlx::query(&sql), e)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn environment_update(
    c: &mut SqliteConnection,
    e: &EnvironmentRecord,
) -> Result<(), StoreError> {
    let sql = "UPDATE environments SET workshop = $2, duration_secs = $3, capacity = $4, \
        reserved = $5, state = $6, targets = $7, tls_verify = $8, slug_prefix = $9, \
        extendable = $10, created_ms = $11, next_session = $12 WHERE name = $1";
    bind_environment(sqlx::query(sql), e)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn environment_get(
    c: &mut SqliteConnection,
    name: &str,
) -> Result<Option<EnvironmentRecord>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {ENV_COLS} FROM environments WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(environment_row).transpose()
}

pub async fn environments_list(
    c: &mut SqliteConnection,
) -> Result<Vec<EnvironmentRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {ENV_COLS} FROM environments ORDER BY name"
    ))
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(environment_row).collect()
}

pub async fn environment_delete(c: &mut SqliteConnection, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM environments WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Sessions of each environment that are not finished, by environment.
pub async fn environment_allocations(
    c: &mut SqliteConnection,
) -> Result<HashMap<String, u64>, StoreError> {
    let rows = sqlx::query(
        "SELECT environment, COUNT(*) AS n FROM sessions \
         WHERE environment IS NOT NULL AND state NOT IN ('expired', 'deleted') GROUP BY environment",
    )
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("environment")?, get_u64(r, "n")?)))
        .collect()
}

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

    /// Touches span several chunks, and an older time never replaces a
    /// newer one.
    #[tokio::test]
    async fn touches_are_written_in_chunks_and_never_move_back() {
        let dir = std::env::temp_dir().join(format!("sg-touch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("t.db")).await.unwrap();
        let mut c = store.conn().await.unwrap();
        sqlx::query("INSERT INTO users (id, name, created_ms) VALUES ('u1', 'ann', 0)")
            .execute(&mut *c)
            .await
            .unwrap();
        let n = TOUCH_CHUNK * 2 + 7;
        for i in 0..n {
            sqlx::query(
                "INSERT INTO sessions (name, kind, https, tls_verify, strip_prefix, \
                 rewrite_host, owner, public, state, created_ms, state_changed_ms, extendable, \
                 labels, last_activity_ms) \
                 VALUES ($1, 'tunnel', 0, 1, 0, 0, 'ann', 0, 'running', 0, 0, 1, '{}', $2)",
            )
            .bind(format!("s{i}"))
            // Every third session already has activity at 5,000.
            .bind(i.is_multiple_of(3).then_some(5_000i64))
            .execute(&mut *c)
            .await
            .unwrap();
        }
        let touches: Vec<(String, u64)> = (0..n).map(|i| (format!("s{i}"), 4_000)).collect();
        sessions_touch(&mut c, &touches).await.unwrap();
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT name, last_activity_ms FROM sessions")
                .fetch_all(&mut *c)
                .await
                .unwrap();
        assert_eq!(rows.len(), n);
        for (name, at) in rows {
            let i: usize = name[1..].parse().unwrap();
            let want = if i.is_multiple_of(3) { 5_000 } else { 4_000 };
            assert_eq!(at, Some(want), "{name}");
        }
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
