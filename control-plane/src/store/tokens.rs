//! Secrets, stored only as hashes or for this process: API tokens, access
//! links, cookie signing keys, OAuth2 tokens.

use super::*;

/// A stored API token (only its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub name: String,
    pub kind: String,
    pub hash: String,
    pub created_ms: u64,
}

pub async fn tokens_list(c: &mut Conn) -> Result<Vec<TokenRow>, StoreError> {
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

pub async fn token_insert(c: &mut Conn, t: &TokenRow) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO api_tokens (name, kind, hash, created_ms) VALUES ($1, $2, $3, $4)")
        .bind(&t.name)
        .bind(&t.kind)
        .bind(&t.hash)
        .bind(ms(t.created_ms))
        .execute(&mut *c)
        .await?;
    log_change(c, ChangeKind::Tokens, &t.name).await
}

pub async fn token_delete(c: &mut Conn, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    if r.rows_affected() > 0 {
        log_change(c, ChangeKind::Tokens, name).await?;
    }
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
    /// Valid until `expires_ms` however often it is opened (a workshop's
    /// link), rather than once; after its first use only by the browser
    /// that use let in.
    pub reusable: bool,
    /// When a reusable link was first opened.
    pub used_ms: Option<u64>,
}

const ACCESS_TOKEN_COLS: &str =
    "hash, session_name, user_name, path, created_ms, expires_ms, reusable, used_ms";

/// [`ACCESS_TOKEN_COLS`] for a SELECT: `reusable` (BOOLEAN) as an integer
/// (see the module doc of [`super`]).
const ACCESS_TOKEN_SELECT: &str = "hash, session_name, user_name, path, created_ms, expires_ms, \
    CAST(reusable AS INTEGER) AS reusable, used_ms";

fn access_token_row(r: &AnyRow) -> Result<AccessTokenRow, StoreError> {
    Ok(AccessTokenRow {
        hash: r.try_get("hash")?,
        session: r.try_get("session_name")?,
        user: r.try_get("user_name")?,
        path: r.try_get("path")?,
        created_ms: get_u64(r, "created_ms")?,
        expires_ms: get_u64(r, "expires_ms")?,
        reusable: get_bool(r, "reusable")?,
        used_ms: get_opt_u64(r, "used_ms")?,
    })
}

pub async fn access_token_insert(c: &mut Conn, t: &AccessTokenRow) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO access_tokens ({ACCESS_TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&t.hash)
    .bind(&t.session)
    .bind(&t.user)
    .bind(&t.path)
    .bind(ms(t.created_ms))
    .bind(ms(t.expires_ms))
    .bind(t.reusable)
    .bind(opt_ms(t.used_ms))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// The access link with this hash.
pub async fn access_token_get(
    c: &mut Conn,
    hash: &str,
) -> Result<Option<AccessTokenRow>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {ACCESS_TOKEN_SELECT} FROM access_tokens WHERE hash = $1"
    ))
    .bind(hash)
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(access_token_row).transpose()
}

/// The newest reusable link of `user` on `session` that was never opened,
/// expired or not (the reaper has not purged it yet).
pub async fn access_token_unused(
    c: &mut Conn,
    session: &str,
    user: &str,
) -> Result<Option<AccessTokenRow>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {ACCESS_TOKEN_SELECT} FROM access_tokens WHERE session_name = $1 \
         AND user_name = $2 AND reusable AND used_ms IS NULL \
         ORDER BY created_ms DESC, hash LIMIT 1"
    ))
    .bind(session)
    .bind(user)
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(access_token_row).transpose()
}

/// Moves a link's deadline (a workshop request repeated while its link
/// is unused restarts the window).
pub async fn access_token_set_expiry(
    c: &mut Conn,
    hash: &str,
    expires_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE access_tokens SET expires_ms = $2 WHERE hash = $1")
        .bind(hash)
        .bind(ms(expires_ms))
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Records the first use of a reusable link.
pub async fn access_token_set_used(
    c: &mut Conn,
    hash: &str,
    used_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE access_tokens SET used_ms = $2 WHERE hash = $1 AND used_ms IS NULL")
        .bind(hash)
        .bind(ms(used_ms))
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Deletes the access link with this hash (a one-time link once opened,
/// any link once past its deadline).
pub async fn access_token_delete(c: &mut Conn, hash: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM access_tokens WHERE hash = $1")
        .bind(hash)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Removes access links that expired before `now_ms` (the reaper).
pub async fn access_tokens_purge(c: &mut Conn, now_ms: u64) -> Result<u64, StoreError> {
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
pub async fn signing_keys(c: &mut Conn) -> Result<Vec<SigningKeyRow>, StoreError> {
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
    c: &mut Conn,
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
    log_change(c, ChangeKind::Keys, &new.id).await
}

// ---- oauth tokens ----

/// Stores an access token and the refresh token issued with it, which
/// names it (`access_hash`): using or revoking the refresh token ends the
/// access token too.
pub async fn oauth_pair_insert(
    c: &mut Conn,
    username: &str,
    access: (&str, u64),
    refresh: (&str, u64),
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO oauth_tokens (hash, kind, username, expires_ms, access_hash) \
         VALUES ($1, 'access', $2, $3, NULL), ($4, 'refresh', $2, $5, $1)",
    )
    .bind(access.0)
    .bind(username)
    .bind(ms(access.1))
    .bind(refresh.0)
    .bind(ms(refresh.1))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// The user of a token of `kind` with this hash, if it is unexpired at `now_ms`.
pub async fn oauth_token_user(
    c: &mut Conn,
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
pub async fn oauth_tokens_purge(c: &mut Conn, now_ms: u64) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM oauth_tokens WHERE expires_ms <= $1")
        .bind(ms(now_ms))
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected())
}

/// Takes the unexpired refresh token with this hash for the refresh grant:
/// deletes it and the access token issued with it, and returns its user.
/// `None` (nothing deleted) for an unknown, used or expired one. A token
/// is taken once: of two grants racing with it, the second finds nothing.
pub async fn oauth_refresh_take(
    c: &mut Conn,
    hash: &str,
    now_ms: u64,
) -> Result<Option<String>, StoreError> {
    let delete = sqlx::query(
        "DELETE FROM oauth_tokens WHERE hash = $1 AND kind = 'refresh' AND expires_ms > $2 \
         RETURNING username, access_hash",
    )
    .bind(hash)
    .bind(ms(now_ms));
    match oauth_delete_with_access(c, delete).await? {
        Some(row) => Ok(Some(row.try_get("username")?)),
        None => Ok(None),
    }
}

/// Revokes the token with this hash, whichever kind it is (RFC 7009): an
/// access token is deleted; a refresh token is deleted with the access
/// token issued with it. Whether there was one.
pub async fn oauth_token_revoke(c: &mut Conn, hash: &str) -> Result<bool, StoreError> {
    let delete =
        sqlx::query("DELETE FROM oauth_tokens WHERE hash = $1 RETURNING access_hash").bind(hash);
    Ok(oauth_delete_with_access(c, delete).await?.is_some())
}

/// Runs `delete` (a `DELETE … RETURNING access_hash`) and then deletes the
/// access token the deleted row names, if any: a refresh token goes with
/// its access token. Never the other way: an access token's revocation
/// leaves its refresh token usable, as in django-oauth-toolkit.
async fn oauth_delete_with_access<'q>(
    c: &mut Conn,
    delete: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
) -> Result<Option<AnyRow>, StoreError> {
    let Some(row) = delete.fetch_optional(&mut *c).await? else {
        return Ok(None);
    };
    let access: Option<String> = row.try_get("access_hash")?;
    if let Some(a) = access {
        sqlx::query("DELETE FROM oauth_tokens WHERE hash = $1 AND kind = 'access'")
            .bind(a)
            .execute(&mut *c)
            .await?;
    }
    Ok(Some(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_select_list_casts_exactly_the_boolean_columns() {
        assert_eq!(
            ACCESS_TOKEN_SELECT,
            select_list(ACCESS_TOKEN_COLS, &["reusable"])
        );
    }
}
