//! The change log (`changes`): what other control-plane replicas on the
//! same database must learn of, in commit order (see migration 0010).
//!
//! On PostgreSQL, every store function that changes what a replica holds
//! in memory (a session's route, a group's members, the API tokens, the
//! signing keys) logs a row in the same transaction, so a change is logged
//! exactly when it commits. The writer first takes a transaction-level
//! advisory lock, so rows get their sequence numbers in commit order, and
//! notifies [`CHANNEL`] (delivered at commit) so that the other replicas
//! read the log at once. On SQLite nothing is logged: one control plane
//! owns the file.

use std::sync::OnceLock;

use super::*;

/// The PostgreSQL channel a commit with changes notifies.
pub const CHANNEL: &str = "sessiongate_changes";

/// The advisory lock key that orders the change log's writers.
const ORDER_LOCK: i64 = 0x5e55_1097_0001;

/// What a change names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Session,
    Group,
    /// A user was deleted: the groups they were in changed.
    User,
    Tokens,
    Keys,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Session => "session",
            ChangeKind::Group => "group",
            ChangeKind::User => "user",
            ChangeKind::Tokens => "tokens",
            ChangeKind::Keys => "keys",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeKind> {
        Some(match s {
            "session" => ChangeKind::Session,
            "group" => ChangeKind::Group,
            "user" => ChangeKind::User,
            "tokens" => ChangeKind::Tokens,
            "keys" => ChangeKind::Keys,
            _ => return None,
        })
    }
}

/// One row of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub kind: String,
    pub name: String,
    /// The replica that made it ([`replica_id`]).
    pub origin: String,
}

static REPLICA: OnceLock<String> = OnceLock::new();

/// This process's name in the change log: random, drawn once, so that a
/// replica can tell its own changes (already applied) from others'.
pub fn replica_id() -> &'static str {
    REPLICA.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 8];
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        let pid = std::process::id();
        format!("{:016x}-{pid}", u64::from_le_bytes(b))
    })
}

/// Logs a change of `kind` to `name` in the transaction `c` is in.
/// On SQLite nothing is logged: one control plane owns the file, so no one
/// would read the log (and every write would pay for a row).
pub async fn log_change(c: &mut Conn, kind: ChangeKind, name: &str) -> Result<(), StoreError> {
    let postgres = engine_of(c) == Engine::Postgres;
    if !postgres {
        return Ok(());
    }
    // One round trip: the lock (the CTE the insert reads from, so taken
    // before the row's sequence number is drawn), the row, and the
    // notification (delivered at commit; PostgreSQL folds repeats of one
    // payload within a transaction into one). Three statements cost a
    // writer, who holds the write lock meanwhile, two more round trips.
    sqlx::query(
        "WITH ordered AS (SELECT pg_advisory_xact_lock($1) AS locked), \
              logged AS (INSERT INTO changes (kind, name, origin, at_ms) \
                         SELECT $2, $3, $4, $5 FROM ordered RETURNING seq) \
         SELECT pg_notify($6, '') FROM logged",
    )
    .bind(ORDER_LOCK)
    .bind(kind.as_str())
    .bind(name)
    .bind(replica_id())
    .bind(ms(now_ms()))
    .bind(CHANNEL)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// [`log_change`] for each of `names`, in that order, in one round trip.
pub async fn log_changes(c: &mut Conn, kind: ChangeKind, names: &[&str]) -> Result<(), StoreError> {
    if engine_of(c) != Engine::Postgres || names.is_empty() {
        return Ok(());
    }
    let names = serde_json::to_string(names).map_err(|e| StoreError::Corrupt {
        what: "change log",
        key: kind.as_str().to_string(),
        message: e.to_string(),
    })?;
    // As in `log_change`; the insert runs to its end whatever the outer
    // query reads of it, and one notification is enough.
    sqlx::query(
        "WITH ordered AS (SELECT pg_advisory_xact_lock($1) AS locked), \
              logged AS (INSERT INTO changes (kind, name, origin, at_ms) \
                         SELECT $2, n.name, $4, $5 FROM ordered, \
                         json_array_elements_text($3::json) WITH ORDINALITY AS n (name, i) \
                         ORDER BY n.i RETURNING seq) \
         SELECT pg_notify($6, '') FROM (SELECT 1 FROM logged LIMIT 1) AS one",
    )
    .bind(ORDER_LOCK)
    .bind(kind.as_str())
    .bind(names)
    .bind(replica_id())
    .bind(ms(now_ms()))
    .bind(CHANNEL)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// The rows after `seq`, oldest first, at most `limit`.
pub async fn changes_after(c: &mut Conn, seq: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, kind, name, origin FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(seq)
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Change {
                seq: r.try_get("seq")?,
                kind: r.try_get("kind")?,
                name: r.try_get("name")?,
                origin: r.try_get("origin")?,
            })
        })
        .collect()
}

/// The newest row's sequence number (0: none).
pub async fn last_change(c: &mut Conn) -> Result<i64, StoreError> {
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes")
        .fetch_one(&mut *c)
        .await?;
    Ok(v.unwrap_or(0))
}

/// Drops rows older than `before_ms`: every replica has read them (a
/// replica that was away longer reloads everything when it starts).
/// Always a prefix of the sequence, keeping the newest row it would drop
/// (writers' clocks differ, so `at_ms` is not quite in sequence order):
/// then a row at or below a sequence number still being in the log
/// means that nothing after it was dropped ([`changes_hold`]).
pub async fn changes_purge(c: &mut Conn, before_ms: u64) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "DELETE FROM changes WHERE seq < (SELECT COALESCE(MAX(seq), 0) FROM changes WHERE at_ms < $1)",
    )
    .bind(ms(before_ms))
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected())
}

/// Whether the log still holds every row after `seq`: some row at or
/// below it is still there ([`changes_purge`] drops prefixes only).
pub async fn changes_hold(c: &mut Conn, seq: i64) -> Result<bool, StoreError> {
    let v: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM changes")
        .fetch_one(&mut *c)
        .await?;
    Ok(v.is_some_and(|min| min <= seq))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
