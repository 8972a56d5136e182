//! Groups and their members.

use super::*;

pub async fn group_created(c: &mut Conn, name: &str) -> Result<Option<u64>, StoreError> {
    let row = sqlx::query("SELECT created_ms FROM user_groups WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    Ok(row.map(|r| get_u64(&r, "created_ms")).transpose()?)
}

/// Every group with its creation time, by name.
pub async fn groups_list(c: &mut Conn) -> Result<Vec<(String, u64)>, StoreError> {
    let rows = sqlx::query("SELECT name, created_ms FROM user_groups ORDER BY name")
        .fetch_all(&mut *c)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, get_u64(r, "created_ms")?)))
        .collect()
}

pub async fn group_insert(c: &mut Conn, name: &str, created_ms: u64) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO user_groups (name, created_ms) VALUES ($1, $2)")
        .bind(name)
        .bind(ms(created_ms))
        .execute(&mut *c)
        .await?;
    log_change(c, ChangeKind::Group, name).await
}

pub async fn group_delete(c: &mut Conn, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM user_groups WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    log_change(c, ChangeKind::Group, name).await?;
    Ok(r.rows_affected() > 0)
}

/// Members of every group (or of one), by group.
pub async fn group_members(
    c: &mut Conn,
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

pub async fn member_add(c: &mut Conn, group: &str, user: &str) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "INSERT INTO group_members (group_name, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(user)
    .execute(&mut *c)
    .await?;
    if r.rows_affected() > 0 {
        log_change(c, ChangeKind::Group, group).await?;
    }
    Ok(r.rows_affected() > 0)
}

pub async fn member_remove(c: &mut Conn, group: &str, user: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM group_members WHERE group_name = $1 AND user_name = $2")
        .bind(group)
        .bind(user)
        .execute(&mut *c)
        .await?;
    if r.rows_affected() > 0 {
        log_change(c, ChangeKind::Group, group).await?;
    }
    Ok(r.rows_affected() > 0)
}

/// Names among `names` that are not users, in the order given.
pub async fn missing_users(c: &mut Conn, names: &[String]) -> Result<Vec<String>, StoreError> {
    let mut missing = Vec::new();
    for n in names {
        if !user_exists(c, n).await? {
            missing.push(n.clone());
        }
    }
    Ok(missing)
}

/// Names among `names` that are not groups, in the order given.
pub async fn missing_groups(c: &mut Conn, names: &[String]) -> Result<Vec<String>, StoreError> {
    let mut missing = Vec::new();
    for n in names {
        if group_created(c, n).await?.is_none() {
            missing.push(n.clone());
        }
    }
    Ok(missing)
}
