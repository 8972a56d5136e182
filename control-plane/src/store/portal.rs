//! The training portal's counts over sessions of environments: what its
//! session caps compare (`workshop.sessions_*`), and when a pending session
//! was requested. Sessions without an environment are not the portal's and
//! count for none of these.

use super::*;

/// Live sessions of environments, portal-wide: those users hold (pending
/// ones included) and all of them (the reserves too). The portal's
/// `allocated_sessions_count` and `active_sessions_count`.
pub async fn portal_session_counts(
    c: &mut Conn,
    reserve_user: &str,
) -> Result<(u64, u64), StoreError> {
    let row = sqlx::query(
        "SELECT COALESCE(SUM(CASE WHEN owner <> $1 THEN 1 ELSE 0 END), 0) AS allocated, \
         COUNT(*) AS active FROM sessions \
         WHERE environment IS NOT NULL AND state NOT IN ('expired', 'deleted')",
    )
    .bind(reserve_user)
    .fetch_one(&mut *c)
    .await?;
    Ok((get_u64(&row, "allocated")?, get_u64(&row, "active")?))
}

/// Live sessions of environments that `owner` holds, portal-wide: what the
/// per-user cap counts.
pub async fn portal_sessions_of_owner(c: &mut Conn, owner: &str) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM sessions WHERE environment IS NOT NULL \
         AND owner = $1 AND state NOT IN ('expired', 'deleted')",
    )
    .bind(owner)
    .fetch_one(&mut *c)
    .await?;
    Ok(get_u64(&row, "n")?)
}

/// The name of the oldest session waiting in any environment's reserve:
/// the one the portal gives up when its maximum is reached and a request
/// needs a new session.
pub async fn oldest_reserved_session(
    c: &mut Conn,
    reserve_user: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "SELECT name FROM sessions WHERE environment IS NOT NULL AND owner = $1 \
         AND state = 'pending' ORDER BY created_ms, name LIMIT 1",
    )
    .bind(reserve_user)
    .fetch_optional(&mut *c)
    .await?;
    Ok(row.map(|r| r.try_get("name")).transpose()?)
}

/// When each session (or only `session`) last had an access link made:
/// for a pending workshop session, the time of the request that allocated
/// it, since every request issues one (the portal's `started` before
/// activation). Links are deleted when taken or past their expiry.
pub async fn newest_access_links(
    c: &mut Conn,
    session: Option<&str>,
) -> Result<HashMap<String, u64>, StoreError> {
    let rows = sqlx::query(
        "SELECT session_name, MAX(created_ms) AS at FROM access_tokens \
         WHERE $1 IS NULL OR session_name = $1 GROUP BY session_name",
    )
    .bind(session)
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("session_name")?, get_u64(r, "at")?)))
        .collect()
}
