//! What the web console keeps (issue 19): one-time console links, and the
//! audit log of each session's lifecycle.

use super::*;

/// Stores a console link for `user` by its token's hash, valid until
/// `expires_ms`.
pub async fn console_link_insert(
    c: &mut Conn,
    hash: &str,
    user: &str,
    expires_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO console_links (token_hash, user_name, expires_ms) VALUES ($1, $2, $3)",
    )
    .bind(hash)
    .bind(user)
    .bind(ms(expires_ms))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Takes the unexpired console link with this hash: deletes it and returns
/// its user. Of two browsers racing with one link, the second gets `None`.
pub async fn console_link_take(
    c: &mut Conn,
    hash: &str,
    now_ms: u64,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "DELETE FROM console_links WHERE token_hash = $1 AND expires_ms > $2 RETURNING user_name",
    )
    .bind(hash)
    .bind(ms(now_ms))
    .fetch_optional(&mut *c)
    .await?;
    Ok(row.map(|r| r.try_get("user_name")).transpose()?)
}

/// Drops expired console links.
pub async fn console_links_purge(c: &mut Conn, now_ms: u64) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM console_links WHERE expires_ms <= $1")
        .bind(ms(now_ms))
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected())
}

/// One line of a session's history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub session: String,
    /// What was done: `create`, `patch`, `share`, `pause`, `evict`, …
    pub action: String,
    /// Who did it: `token:<name>`, `user:<name>`, or `reaper`.
    pub actor: String,
    /// What changed, briefly (for example the groups shared with).
    pub detail: String,
}

/// Records `action` on `session` by `actor`, in the transaction `c` is in.
pub async fn audit_insert(c: &mut Conn, row: &AuditRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit (at_ms, session, action, actor, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(ms(row.at_ms))
    .bind(&row.session)
    .bind(&row.action)
    .bind(&row.actor)
    .bind(&row.detail)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// [`audit_insert`] for each of `rows`, in order, in a few statements.
pub async fn audit_insert_many(c: &mut Conn, rows: &[AuditRow]) -> Result<(), StoreError> {
    let read = match engine_of(c) {
        Engine::Sqlite => {
            "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
             json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
             json_extract(value, '$[4]') FROM json_each($1) ORDER BY key"
        }
        Engine::Postgres => {
            "SELECT (v->>0)::bigint, v->>1, v->>2, v->>3, v->>4 \
             FROM json_array_elements($1::json) WITH ORDINALITY AS a (v, i) ORDER BY i"
        }
    };
    let sql = format!("INSERT INTO audit (at_ms, session, action, actor, detail) {read}");
    for chunk in rows.chunks(500) {
        let json = serde_json::Value::Array(
            chunk
                .iter()
                .map(|r| serde_json::json!([ms(r.at_ms), r.session, r.action, r.actor, r.detail]))
                .collect(),
        );
        sqlx::query(&sql)
            .bind(json.to_string())
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

/// `session`'s history, oldest first, at most `limit` lines (the newest).
pub async fn audit_list(
    c: &mut Conn,
    session: &str,
    limit: i64,
) -> Result<Vec<AuditRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT at_ms, session, action, actor, detail FROM audit WHERE session = $1 \
         ORDER BY seq DESC LIMIT $2",
    )
    .bind(session)
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(AuditRow {
                at_ms: get_u64(r, "at_ms")?,
                session: r.try_get("session")?,
                action: r.try_get("action")?,
                actor: r.try_get("actor")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.reverse();
    Ok(out)
}

/// Drops the history, older than `before_ms`, of sessions whose records are
/// gone (purged after their retention): a live session keeps all of its.
pub async fn audit_purge(c: &mut Conn, before_ms: u64) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "DELETE FROM audit WHERE at_ms < $1 AND session NOT IN (SELECT name FROM sessions)",
    )
    .bind(ms(before_ms))
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected())
}
