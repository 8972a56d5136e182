//! Sessions: reads, writes, the listing's filter and pages, the reaper's
//! queries.

use super::*;

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
    /// Only sessions this user may see: their own, and those shared with a
    /// group they are in (a user signed in to the console).
    pub visible_to: Option<String>,
    /// 1-based.
    pub page: u64,
    pub per_page: u64,
}

const SESSION_COLS: &str = "name, kind, remote_host, remote_port, url, https, tls_verify, slug, \
    strip_prefix, rewrite_host, custom_domain, workspace_port, owner, public, state, created_ms, \
    activated_ms, expires_ms, last_activity_ms, paused_ms, state_changed_ms, duration_secs, \
    idle_timeout_secs, extendable, environment, labels, activate_by_ms, allow_any_upgrade, \
    shared_origin, analytics_url, parameters, parameter_headers";

/// [`SESSION_COLS`] for a SELECT: the BOOLEAN columns as integers (see the
/// module doc of [`super`]).
const SESSION_SELECT: &str = "name, kind, remote_host, remote_port, url, \
    CAST(https AS INTEGER) AS https, CAST(tls_verify AS INTEGER) AS tls_verify, slug, \
    CAST(strip_prefix AS INTEGER) AS strip_prefix, \
    CAST(rewrite_host AS INTEGER) AS rewrite_host, custom_domain, workspace_port, owner, \
    CAST(public AS INTEGER) AS public, state, created_ms, activated_ms, expires_ms, \
    last_activity_ms, paused_ms, state_changed_ms, duration_secs, idle_timeout_secs, \
    CAST(extendable AS INTEGER) AS extendable, environment, labels, activate_by_ms, \
    CAST(allow_any_upgrade AS INTEGER) AS allow_any_upgrade, \
    CAST(shared_origin AS INTEGER) AS shared_origin, analytics_url, parameters, \
    CAST(parameter_headers AS INTEGER) AS parameter_headers";

/// The BOOLEAN columns of `sessions`.
#[cfg(test)]
const SESSION_BOOLEANS: &[&str] = &[
    "https",
    "tls_verify",
    "strip_prefix",
    "rewrite_host",
    "public",
    "extendable",
    "allow_any_upgrade",
    "shared_origin",
    "parameter_headers",
];

fn session_row(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    let name: String = row.try_get("name")?;
    let corrupt = |message: String| StoreError::Corrupt {
        what: "session",
        key: name.clone(),
        message,
    };
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let labels: String = row.try_get("labels")?;
    let parameters: String = row.try_get("parameters")?;
    Ok(SessionRecord {
        kind: SessionKind::parse(&kind).ok_or_else(|| corrupt(format!("kind {kind:?}")))?,
        remote_host: row.try_get("remote_host")?,
        remote_port: get_opt_port(row, "remote_port")?,
        url: row.try_get("url")?,
        https: get_bool(row, "https")?,
        tls_verify: get_bool(row, "tls_verify")?,
        slug: row.try_get("slug")?,
        shared_origin: get_bool(row, "shared_origin")?,
        strip_prefix: get_bool(row, "strip_prefix")?,
        rewrite_host: get_bool(row, "rewrite_host")?,
        custom_domain: row.try_get("custom_domain")?,
        workspace_port: get_opt_port(row, "workspace_port")?,
        owner: row.try_get("owner")?,
        groups: Vec::new(),
        public: get_bool(row, "public")?,
        state: state.parse().map_err(corrupt)?,
        created_ms: get_u64(row, "created_ms")?,
        activated_ms: get_opt_u64(row, "activated_ms")?,
        expires_ms: get_opt_u64(row, "expires_ms")?,
        last_activity_ms: get_opt_u64(row, "last_activity_ms")?,
        paused_ms: get_opt_u64(row, "paused_ms")?,
        state_changed_ms: get_u64(row, "state_changed_ms")?,
        duration_secs: get_opt_u64(row, "duration_secs")?,
        idle_timeout_secs: get_opt_u64(row, "idle_timeout_secs")?,
        extendable: get_bool(row, "extendable")?,
        environment: row.try_get("environment")?,
        labels: serde_json::from_str(&labels).map_err(|e| corrupt(format!("labels: {e}")))?,
        activate_by_ms: get_opt_u64(row, "activate_by_ms")?,
        allow_any_upgrade: get_bool(row, "allow_any_upgrade")?,
        analytics_url: row.try_get("analytics_url")?,
        parameters: serde_json::from_str(&parameters)
            .map_err(|e| corrupt(format!("parameters: {e}")))?,
        parameter_headers: get_bool(row, "parameter_headers")?,
        name,
    })
}

/// The session records of `rows`, with their groups.
async fn records_with_groups(
    c: &mut Conn,
    rows: &[AnyRow],
) -> Result<Vec<SessionRecord>, StoreError> {
    let mut recs = rows
        .iter()
        .map(session_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_groups(c, &mut recs).await?;
    Ok(recs)
}

/// Fills in `groups` for each record, with one query.
async fn attach_groups(c: &mut Conn, records: &mut [SessionRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
    // SQLite allows 32766 parameters; chunk to stay far below.
    for chunk in records.chunks(500) {
        let mut b =
            Sql::new("SELECT session_name, group_name FROM session_groups WHERE session_name IN (");
        b.bind_list(chunk.iter().map(|r| r.name.as_str()))
            .push(") ORDER BY group_name");
        for row in b.fetch_all(&mut *c).await? {
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
pub async fn session_get(c: &mut Conn, name: &str) -> Result<Option<SessionRecord>, StoreError> {
    let groups = match engine_of(c) {
        Engine::Sqlite => {
            "(SELECT json_group_array(group_name) FROM \
             (SELECT group_name FROM session_groups WHERE session_name = $1 ORDER BY group_name))"
        }
        Engine::Postgres => {
            "(SELECT COALESCE(json_agg(group_name ORDER BY group_name), '[]')::text \
             FROM session_groups WHERE session_name = $1)"
        }
    };
    let row = sqlx::query(&format!(
        "SELECT {SESSION_SELECT}, {groups} AS group_names FROM sessions WHERE name = $1"
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

fn push_session_filter<'a>(b: &mut Sql<'a>, f: &'a SessionFilter) {
    b.push(" WHERE 1 = 1");
    if let Some(q) = &f.q {
        let pat = like_pattern(q);
        b.push(" AND (LOWER(name) LIKE ")
            .bind(pat.clone())
            .push(" ESCAPE '\\' OR LOWER(owner) LIKE ")
            .bind(pat.clone())
            .push(" ESCAPE '\\' OR LOWER(labels) LIKE ")
            .bind(pat)
            .push(" ESCAPE '\\')");
    }
    if f.states.is_empty() {
        b.push(" AND state <> 'deleted'");
    } else {
        b.push(" AND state IN (")
            .bind_list(f.states.iter().map(|s| s.as_str()))
            .push(")");
    }
    if let Some(o) = &f.owner {
        b.push(" AND owner = ").bind(o.as_str());
    }
    if let Some(g) = &f.group {
        b.push(" AND name IN (SELECT session_name FROM session_groups WHERE group_name = ")
            .bind(g.as_str())
            .push(")");
    }
    if let Some(u) = &f.visible_to {
        b.push(" AND (owner = ")
            .bind(u.as_str())
            .push(
                " OR name IN (SELECT sg.session_name FROM session_groups sg \
                 JOIN group_members gm ON gm.group_name = sg.group_name WHERE gm.user_name = ",
            )
            .bind(u.as_str())
            .push("))");
    }
}

/// A page of sessions matching `f`, by name, and how many match in all.
pub async fn sessions_list(
    c: &mut Conn,
    f: &SessionFilter,
) -> Result<(Vec<SessionRecord>, u64), StoreError> {
    let mut count = Sql::new("SELECT COUNT(*) AS n FROM sessions");
    push_session_filter(&mut count, f);
    let total = get_u64(&count.fetch_one(&mut *c).await?, "n")?;
    let mut b = Sql::new(format!("SELECT {SESSION_SELECT} FROM sessions"));
    push_session_filter(&mut b, f);
    b.page("name", f.page, f.per_page);
    let rows = b.fetch_all(&mut *c).await?;
    let mut recs = rows
        .iter()
        .map(session_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_groups(c, &mut recs).await?;
    Ok((recs, total))
}

/// Sessions in any of `states`, all of them (start-up, reaper).
pub async fn sessions_in_states(
    c: &mut Conn,
    states: &[SessionState],
) -> Result<Vec<SessionRecord>, StoreError> {
    let mut b = Sql::new(format!(
        "SELECT {SESSION_SELECT} FROM sessions WHERE state IN ("
    ));
    b.bind_list(states.iter().map(|s| s.as_str()))
        .push(") ORDER BY name");
    let rows = b.fetch_all(&mut *c).await?;
    records_with_groups(c, &rows).await
}

/// Names of sessions shared with `group` that can still be used.
pub async fn sessions_shared_with(c: &mut Conn, group: &str) -> Result<Vec<String>, StoreError> {
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

/// Binds every column of [`SESSION_COLS`], in its order, as `$1`..`$32`.
fn bind_session<'q>(
    q: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    s: &'q SessionRecord,
    labels: String,
) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
    let parameters = serde_json::to_string(&s.parameters).unwrap_or_else(|_| "[]".into());
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
        .bind(s.allow_any_upgrade)
        .bind(s.shared_origin)
        .bind(&s.analytics_url)
        .bind(parameters)
        .bind(s.parameter_headers)
}

fn labels_json(s: &SessionRecord) -> String {
    serde_json::to_string(&s.labels).unwrap_or_else(|_| "{}".into())
}

async fn set_session_groups(c: &mut Conn, s: &SessionRecord) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM session_groups WHERE session_name = $1")
        .bind(&s.name)
        .execute(&mut *c)
        .await?;
    insert_session_groups(c, s).await
}

async fn insert_session_groups(c: &mut Conn, s: &SessionRecord) -> Result<(), StoreError> {
    for g in &s.groups {
        sqlx::query("INSERT INTO session_groups (session_name, group_name) VALUES ($1, $2)")
            .bind(&s.name)
            .bind(g)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

pub async fn session_insert(c: &mut Conn, s: &SessionRecord) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO sessions ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, \
         $28, $29, $30, $31, $32)"
    );
    bind_session(sqlx::query(&sql), s, labels_json(s))
        .execute(&mut *c)
        .await?;
    // A new row has no groups yet: those of an earlier record of the same
    // name went with it (ON DELETE CASCADE).
    insert_session_groups(c, s).await?;
    crate::audit::record(c, s, true).await?;
    log_change(c, ChangeKind::Session, &s.name).await
}

/// Overwrites the stored record (and its groups) with `s`.
pub async fn session_update(c: &mut Conn, s: &SessionRecord) -> Result<(), StoreError> {
    session_update_row(c, s).await?;
    set_session_groups(c, s).await
    // (session_update_row logged it.)
}

/// Overwrites the stored record with `s` but leaves its groups as stored:
/// for changes that cannot touch them (lifecycle actions, patches), which
/// saves a delete and an insert per group on every write.
pub async fn session_update_row(c: &mut Conn, s: &SessionRecord) -> Result<(), StoreError> {
    let sql = "UPDATE sessions SET kind = $2, remote_host = $3, remote_port = $4, url = $5, \
        https = $6, tls_verify = $7, slug = $8, strip_prefix = $9, rewrite_host = $10, \
        custom_domain = $11, workspace_port = $12, owner = $13, public = $14, state = $15, \
        created_ms = $16, activated_ms = $17, expires_ms = $18, last_activity_ms = $19, \
        paused_ms = $20, state_changed_ms = $21, duration_secs = $22, idle_timeout_secs = $23, \
        extendable = $24, environment = $25, labels = $26, activate_by_ms = $27, \
        allow_any_upgrade = $28, shared_origin = $29, analytics_url = $30, parameters = $31, \
        parameter_headers = $32 WHERE name = $1";
    bind_session(sqlx::query(sql), s, labels_json(s))
        .execute(&mut *c)
        .await?;
    crate::audit::record(c, s, false).await?;
    log_change(c, ChangeKind::Session, &s.name).await
}

/// Sessions [`sessions_get_many`] reads, and [`sessions_update_rows`]
/// writes, per statement.
const MANY_CHUNK: usize = 500;

/// The stored records of those of `names` that exist, with their groups,
/// by name: two statements per [`MANY_CHUNK`] names, each chunk's names one
/// JSON parameter.
pub async fn sessions_get_many(
    c: &mut Conn,
    names: &[String],
) -> Result<HashMap<String, SessionRecord>, StoreError> {
    let listed = match engine_of(c) {
        Engine::Sqlite => "SELECT value FROM json_each($1)",
        Engine::Postgres => "SELECT json_array_elements_text($1::json)",
    };
    let rows_sql = format!("SELECT {SESSION_SELECT} FROM sessions WHERE name IN ({listed})");
    let groups_sql = format!(
        "SELECT session_name, group_name FROM session_groups WHERE session_name IN ({listed}) \
         ORDER BY group_name"
    );
    let mut records = HashMap::with_capacity(names.len());
    for chunk in names.chunks(MANY_CHUNK) {
        let json = serde_json::to_string(chunk).map_err(|e| StoreError::Corrupt {
            what: "session",
            key: String::new(),
            message: format!("names as JSON: {e}"),
        })?;
        for row in sqlx::query(&rows_sql)
            .bind(json.as_str())
            .fetch_all(&mut *c)
            .await?
        {
            let rec = session_row(&row)?;
            records.insert(rec.name.clone(), rec);
        }
        for row in sqlx::query(&groups_sql)
            .bind(json.as_str())
            .fetch_all(&mut *c)
            .await?
        {
            let name: String = row.try_get("session_name")?;
            if let Some(rec) = records.get_mut(&name) {
                rec.groups.push(row.try_get("group_name")?);
            }
        }
    }
    Ok(records)
}

/// [`session_update_row`] for many records at once, with the same effects
/// (each row overwritten but its groups, an audit line and a change-log
/// row per record), in a few statements: each chunk's rows are one JSON
/// parameter that one `UPDATE … FROM` reads. Each record comes with the
/// row as stored now (read in this transaction), and only the columns in
/// which some record differs from it are written.
pub async fn sessions_update_rows(
    c: &mut Conn,
    records: &[(&SessionRecord, &SessionRecord)],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let columns: Vec<&str> = COLUMN_DIFFERS
        .iter()
        .filter(|(_, differs)| records.iter().any(|(old, new)| differs(old, new)))
        .map(|(col, _)| *col)
        .collect();
    if !columns.is_empty() {
        let set = columns
            .iter()
            .map(|col| format!("{col} = j.{col}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = match engine_of(c) {
            Engine::Sqlite => {
                // Each row's object parsed once (JSONB, materialized), not
                // once per column read from it.
                let extracted = std::iter::once("name")
                    .chain(columns.iter().copied())
                    .map(|col| format!("json_extract(r.v, '$.{col}') AS {col}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "WITH r AS MATERIALIZED (SELECT jsonb(value) AS v FROM json_each($1)) \
                     UPDATE sessions SET {set} FROM (SELECT {extracted} FROM r) AS j \
                     WHERE sessions.name = j.name"
                )
            }
            // Typed by the table's own row type (absent keys are NULL, and
            // not written).
            Engine::Postgres => format!(
                "UPDATE sessions SET {set} \
                 FROM json_populate_recordset(NULL::sessions, $1::json) AS j \
                 WHERE sessions.name = j.name"
            ),
        };
        for chunk in records.chunks(MANY_CHUNK) {
            // Only the name and the columns written.
            let rows: Vec<serde_json::Value> = chunk
                .iter()
                .map(|(_, new)| {
                    std::iter::once("name")
                        .chain(columns.iter().copied())
                        .map(|col| (col.to_string(), column_json(new, col)))
                        .collect::<serde_json::Map<_, _>>()
                        .into()
                })
                .collect();
            sqlx::query(&sql)
                .bind(serde_json::Value::Array(rows).to_string())
                .execute(&mut *c)
                .await?;
        }
    }
    let written: Vec<&SessionRecord> = records.iter().map(|(_, new)| *new).collect();
    crate::audit::record_many(c, &written).await?;
    let names: Vec<&str> = written.iter().map(|s| s.name.as_str()).collect();
    log_changes(c, ChangeKind::Session, &names).await
}

/// Every column of [`SESSION_COLS`] of `s`, as `bind_session` binds them,
/// in a JSON object keyed by column.
/// Column `col` (of [`SESSION_COLS`]) of `s`, as `bind_session` binds it,
/// as JSON.
fn column_json(s: &SessionRecord, col: &str) -> serde_json::Value {
    use serde_json::json;
    match col {
        "name" => json!(s.name),
        "kind" => json!(s.kind.as_str()),
        "remote_host" => json!(s.remote_host),
        "remote_port" => json!(s.remote_port.map(i64::from)),
        "url" => json!(s.url),
        "https" => json!(s.https),
        "tls_verify" => json!(s.tls_verify),
        "slug" => json!(s.slug),
        "strip_prefix" => json!(s.strip_prefix),
        "rewrite_host" => json!(s.rewrite_host),
        "custom_domain" => json!(s.custom_domain),
        "workspace_port" => json!(s.workspace_port.map(i64::from)),
        "owner" => json!(s.owner),
        "public" => json!(s.public),
        "state" => json!(s.state.as_str()),
        "created_ms" => json!(ms(s.created_ms)),
        "activated_ms" => json!(opt_ms(s.activated_ms)),
        "expires_ms" => json!(opt_ms(s.expires_ms)),
        "last_activity_ms" => json!(opt_ms(s.last_activity_ms)),
        "paused_ms" => json!(opt_ms(s.paused_ms)),
        "state_changed_ms" => json!(ms(s.state_changed_ms)),
        "duration_secs" => json!(opt_ms(s.duration_secs)),
        "idle_timeout_secs" => json!(opt_ms(s.idle_timeout_secs)),
        "extendable" => json!(s.extendable),
        "environment" => json!(s.environment),
        "labels" => json!(labels_json(s)),
        "activate_by_ms" => json!(opt_ms(s.activate_by_ms)),
        "allow_any_upgrade" => json!(s.allow_any_upgrade),
        "shared_origin" => json!(s.shared_origin),
        "analytics_url" => json!(s.analytics_url),
        "parameters" => json!(serde_json::to_string(&s.parameters).unwrap_or_else(|_| "[]".into())),
        "parameter_headers" => json!(s.parameter_headers),
        _ => serde_json::Value::Null,
    }
}

/// Whether two records differ in a column, for each column but `name`.
type Differs = fn(&SessionRecord, &SessionRecord) -> bool;
const COLUMN_DIFFERS: &[(&str, Differs)] = &[
    ("kind", |o, n| o.kind != n.kind),
    ("remote_host", |o, n| o.remote_host != n.remote_host),
    ("remote_port", |o, n| o.remote_port != n.remote_port),
    ("url", |o, n| o.url != n.url),
    ("https", |o, n| o.https != n.https),
    ("tls_verify", |o, n| o.tls_verify != n.tls_verify),
    ("slug", |o, n| o.slug != n.slug),
    ("strip_prefix", |o, n| o.strip_prefix != n.strip_prefix),
    ("rewrite_host", |o, n| o.rewrite_host != n.rewrite_host),
    ("custom_domain", |o, n| o.custom_domain != n.custom_domain),
    ("workspace_port", |o, n| {
        o.workspace_port != n.workspace_port
    }),
    ("owner", |o, n| o.owner != n.owner),
    ("public", |o, n| o.public != n.public),
    ("state", |o, n| o.state != n.state),
    ("created_ms", |o, n| o.created_ms != n.created_ms),
    ("activated_ms", |o, n| o.activated_ms != n.activated_ms),
    ("expires_ms", |o, n| o.expires_ms != n.expires_ms),
    ("last_activity_ms", |o, n| {
        o.last_activity_ms != n.last_activity_ms
    }),
    ("paused_ms", |o, n| o.paused_ms != n.paused_ms),
    ("state_changed_ms", |o, n| {
        o.state_changed_ms != n.state_changed_ms
    }),
    ("duration_secs", |o, n| o.duration_secs != n.duration_secs),
    ("idle_timeout_secs", |o, n| {
        o.idle_timeout_secs != n.idle_timeout_secs
    }),
    ("extendable", |o, n| o.extendable != n.extendable),
    ("environment", |o, n| o.environment != n.environment),
    ("labels", |o, n| o.labels != n.labels),
    ("activate_by_ms", |o, n| {
        o.activate_by_ms != n.activate_by_ms
    }),
    ("allow_any_upgrade", |o, n| {
        o.allow_any_upgrade != n.allow_any_upgrade
    }),
    ("shared_origin", |o, n| o.shared_origin != n.shared_origin),
    ("analytics_url", |o, n| o.analytics_url != n.analytics_url),
    ("parameters", |o, n| o.parameters != n.parameters),
    ("parameter_headers", |o, n| {
        o.parameter_headers != n.parameter_headers
    }),
];

/// Removes the record for good (retention purge, or replacing a finished one).
pub async fn session_purge(c: &mut Conn, name: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM sessions WHERE name = $1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Purges expired and deleted records whose state is older than `cutoff_ms`.
pub async fn sessions_purge_finished(
    c: &mut Conn,
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

/// Sessions `sessions_touch` sends in one statement: one bound JSON array,
/// so no limit on bound parameters applies; chunks keep each statement
/// short for the readers waiting on the connection.
pub(super) const TOUCH_CHUNK: usize = 1000;

/// Records traffic seen by the gateway, `(name, at_ms)` per session; never
/// moves `last_activity` back. One `UPDATE … FROM` a JSON array per chunk,
/// not a statement per session: the reaper syncs every session that saw
/// traffic, which under load is all of them, while it holds the write lock.
pub async fn sessions_touch(c: &mut Conn, touches: &[(String, u64)]) -> Result<(), StoreError> {
    let batch = match engine_of(c) {
        Engine::Sqlite => {
            "SELECT json_extract(value, '$[0]') AS name, \
                    json_extract(value, '$[1]') AS at FROM json_each($1)"
        }
        Engine::Postgres => {
            "SELECT value->>0 AS name, (value->>1)::bigint AS at \
             FROM json_array_elements($1::json)"
        }
    };
    let sql = format!(
        "UPDATE sessions SET last_activity_ms = t.at FROM ({batch}) AS t \
         WHERE sessions.name = t.name \
         AND (sessions.last_activity_ms IS NULL OR sessions.last_activity_ms < t.at)"
    );
    for chunk in touches.chunks(TOUCH_CHUNK) {
        let json = serde_json::Value::Array(
            chunk
                .iter()
                .map(|(name, at)| serde_json::json!([name, ms(*at)]))
                .collect(),
        )
        .to_string();
        sqlx::query(&sql).bind(json).execute(&mut *c).await?;
    }
    Ok(())
}

/// The sessions the reaper may have to act on: pending and evicted ones, and
/// running ones with an expiry or an idle timeout. A running session with
/// neither never expires, so the reaper does not load it (with 10k sessions
/// that is most of them, every pass).
pub async fn reap_candidates(c: &mut Conn) -> Result<Vec<SessionRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SESSION_SELECT} FROM sessions WHERE state IN ($1, $2) \
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
    c: &mut Conn,
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

/// The workspace ports of live sessions other than `except`, with their
/// sessions.
pub async fn live_workspace_ports(
    c: &mut Conn,
    except: &str,
) -> Result<Vec<(u16, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, workspace_port FROM sessions WHERE workspace_port IS NOT NULL \
         AND name <> $1 AND state NOT IN ('expired', 'deleted')",
    )
    .bind(except)
    .fetch_all(&mut *c)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let port: i64 = r.try_get("workspace_port")?;
        if let Ok(p) = u16::try_from(port) {
            out.push((p, r.try_get("name")?));
        }
    }
    Ok(out)
}

/// Live sessions other than `except` whose slug is a proper ancestor of
/// `slug` (`/a` for `/a/b`) or lies under it (`/a/b/c`), as `(name,
/// owner, slug)`, by slug. The range `slug/` to `slug0` (`0` follows `/`)
/// is what lies under it, and keeps to the live-slug index.
pub async fn live_slug_neighbours(
    c: &mut Conn,
    slug: &str,
    except: &str,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut b = Sql::new(
        "SELECT name, owner, slug FROM sessions \
         WHERE state NOT IN ('expired', 'deleted') AND name <> ",
    );
    b.bind(except)
        .push(" AND ((slug >= ")
        .bind(format!("{slug}/"))
        .push(" AND slug < ")
        .bind(format!("{slug}0"))
        .push(")");
    for (i, _) in slug.match_indices('/').filter(|(i, _)| *i > 0) {
        b.push(" OR slug = ").bind(&slug[..i]);
    }
    b.push(") ORDER BY slug");
    let rows = b.fetch_all(&mut *c).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("owner")?, r.try_get("slug")?)))
        .collect()
}

/// A live session other than `except`, of an owner other than `owner`,
/// that has a slug: one that would share the portal host's origin.
pub async fn live_slug_session_of_another(
    c: &mut Conn,
    owner: &str,
    except: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "SELECT name FROM sessions WHERE slug IS NOT NULL AND owner <> $1 AND name <> $2 \
         AND state NOT IN ('expired', 'deleted') ORDER BY name LIMIT 1",
    )
    .bind(owner)
    .bind(except)
    .fetch_optional(&mut *c)
    .await?;
    Ok(row.map(|r| r.try_get("name")).transpose()?)
}

/// Every session of an environment (any state), with groups.
pub async fn sessions_of_environment(
    c: &mut Conn,
    environment: &str,
) -> Result<Vec<SessionRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {SESSION_SELECT} FROM sessions WHERE environment = $1 ORDER BY name"
    ))
    .bind(environment)
    .fetch_all(&mut *c)
    .await?;
    records_with_groups(c, &rows).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SELECT list names the INSERT list's columns, in its order, each
    /// BOOLEAN one cast.
    #[test]
    fn the_select_list_casts_exactly_the_boolean_columns() {
        assert_eq!(SESSION_SELECT, select_list(SESSION_COLS, SESSION_BOOLEANS));
    }
}
