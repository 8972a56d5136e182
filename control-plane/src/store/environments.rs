//! Workshop environments.

use super::*;

const ENV_COLS: &str = "name, workshop, duration_secs, capacity, reserved, state, targets, \
    tls_verify, slug_prefix, extendable, created_ms, next_session, parameter_headers";

/// [`ENV_COLS`] for a SELECT: the BOOLEAN columns as integers (see the
/// module doc of [`super`]).
const ENV_SELECT: &str = "name, workshop, duration_secs, capacity, reserved, state, targets, \
    CAST(tls_verify AS INTEGER) AS tls_verify, slug_prefix, \
    CAST(extendable AS INTEGER) AS extendable, created_ms, next_session, \
    CAST(parameter_headers AS INTEGER) AS parameter_headers";

/// The BOOLEAN columns of `environments`.
#[cfg(test)]
const ENV_BOOLEANS: &[&str] = &["tls_verify", "extendable", "parameter_headers"];

fn environment_row(r: &AnyRow) -> Result<EnvironmentRecord, StoreError> {
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
        tls_verify: get_bool(r, "tls_verify")?,
        slug_prefix: r.try_get("slug_prefix")?,
        extendable: get_bool(r, "extendable")?,
        created_ms: get_u64(r, "created_ms")?,
        next_session: get_u64(r, "next_session")?,
        parameter_headers: get_bool(r, "parameter_headers")?,
    })
}

fn environment_json(e: &EnvironmentRecord) -> (String, String) {
    let targets: Vec<String> = e.targets.iter().map(Target::to_string).collect();
    (
        serde_json::to_string(&e.workshop).unwrap_or_else(|_| "{}".into()),
        serde_json::to_string(&targets).unwrap_or_else(|_| "[]".into()),
    )
}

/// Binds every column of [`ENV_COLS`], in its order, as `$1`..`$13`.
fn bind_environment<'q>(
    q: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    e: &'q EnvironmentRecord,
) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
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
        .bind(e.parameter_headers)
}

pub async fn environment_insert(c: &mut Conn, e: &EnvironmentRecord) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO environments ({ENV_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    );
    bind_environment(sqlx::query(&sql), e)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn environment_update(c: &mut Conn, e: &EnvironmentRecord) -> Result<(), StoreError> {
    let sql = "UPDATE environments SET workshop = $2, duration_secs = $3, capacity = $4, \
        reserved = $5, state = $6, targets = $7, tls_verify = $8, slug_prefix = $9, \
        extendable = $10, created_ms = $11, next_session = $12, parameter_headers = $13 \
        WHERE name = $1";
    bind_environment(sqlx::query(sql), e)
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub async fn environment_get(
    c: &mut Conn,
    name: &str,
) -> Result<Option<EnvironmentRecord>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {ENV_SELECT} FROM environments WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(environment_row).transpose()
}

pub async fn environments_list(c: &mut Conn) -> Result<Vec<EnvironmentRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {ENV_SELECT} FROM environments ORDER BY name"
    ))
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(environment_row).collect()
}

pub async fn environment_delete(c: &mut Conn, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM environments WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Sessions of each environment that are not finished, by environment.
pub async fn environment_allocations(c: &mut Conn) -> Result<HashMap<String, u64>, StoreError> {
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

    #[test]
    fn the_select_list_casts_exactly_the_boolean_columns() {
        assert_eq!(ENV_SELECT, select_list(ENV_COLS, ENV_BOOLEANS));
    }
}
