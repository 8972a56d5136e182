//! Users.

use super::*;

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

const USER_COLS: &str = "id, name, email, first_name, last_name, created_ms";

fn user_row(row: &AnyRow) -> Result<UserRow, sqlx::Error> {
    Ok(UserRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        created_ms: get_u64(row, "created_ms")?,
    })
}

pub async fn user_get(c: &mut Conn, name: &str) -> Result<Option<UserRow>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE name = $1"))
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    Ok(row.as_ref().map(user_row).transpose()?)
}

pub async fn user_exists(c: &mut Conn, name: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    Ok(row.is_some())
}

/// Users whose name, e-mail or names contain `q`, a page of them, and the total.
pub async fn users_list(
    c: &mut Conn,
    q: Option<&str>,
    page: u64,
    per_page: u64,
) -> Result<(Vec<UserRow>, u64), StoreError> {
    let filter = |b: &mut Sql<'_>| {
        if let Some(q) = q {
            let pat = like_pattern(q);
            b.push(" WHERE LOWER(name) LIKE ")
                .bind(pat.clone())
                .push(" ESCAPE '\\' OR LOWER(COALESCE(email, '')) LIKE ")
                .bind(pat.clone())
                .push(
                    " ESCAPE '\\' OR LOWER(COALESCE(first_name, '') || ' ' || \
                     COALESCE(last_name, '')) LIKE ",
                )
                .bind(pat)
                .push(" ESCAPE '\\'");
        }
    };
    let mut count = Sql::new("SELECT COUNT(*) AS n FROM users");
    filter(&mut count);
    let total = get_u64(&count.fetch_one(&mut *c).await?, "n")?;
    let mut b = Sql::new(format!("SELECT {USER_COLS} FROM users"));
    filter(&mut b);
    b.page("name", page, per_page);
    let rows = b.fetch_all(&mut *c).await?;
    let users = rows.iter().map(user_row).collect::<Result<_, _>>()?;
    Ok((users, total))
}

pub async fn user_insert(c: &mut Conn, u: &UserRow) -> Result<(), StoreError> {
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

pub async fn user_update(c: &mut Conn, u: &UserRow) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET email = $1, first_name = $2, last_name = $3 WHERE name = $4")
        .bind(&u.email)
        .bind(&u.first_name)
        .bind(&u.last_name)
        .bind(&u.name)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn user_delete(c: &mut Conn, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM users WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    if r.rows_affected() > 0 {
        // Their group memberships went with them (ON DELETE CASCADE).
        log_change(c, ChangeKind::User, name).await?;
    }
    Ok(r.rows_affected() > 0)
}

/// Sessions the user owns, counted by whether they can still be used.
pub async fn user_live_sessions(c: &mut Conn, name: &str) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM sessions WHERE owner = $1 AND state NOT IN ('expired', 'deleted')",
    )
    .bind(name)
    .fetch_one(&mut *c)
    .await?;
    Ok(get_u64(&row, "n")?)
}

/// Purges the user's finished session records (so the user can be deleted).
pub async fn user_purge_finished_sessions(c: &mut Conn, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sessions WHERE owner = $1 AND state IN ('expired', 'deleted')")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// The groups of each of these users.
pub async fn groups_of_users(
    c: &mut Conn,
    users: &[String],
) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if users.is_empty() {
        return Ok(out);
    }
    let mut b = Sql::new("SELECT user_name, group_name FROM group_members WHERE user_name IN (");
    b.bind_list(users.iter().map(String::as_str))
        .push(") ORDER BY group_name");
    for row in b.fetch_all(&mut *c).await? {
        let user: String = row.try_get("user_name")?;
        out.entry(user)
            .or_default()
            .push(row.try_get("group_name")?);
    }
    Ok(out)
}
