//! `/api/v1/sessions`: create, list, read, change (one or many), share,
//! act, bulk.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use axum::Extension;

use super::{ApiError, ApiJson, ApiPath, Control, ErrorBody};
use crate::control::{BulkOutcome, BulkRefusal, PatchBatchError, MAX_PATCH_BATCH};
use crate::error::ControlError;
use crate::permissions::{user_groups, Caller, SessionOp};
use crate::session::lifecycle::{Action, SessionState};
use crate::session::model::{NewSession, Session, SessionPatch};
use crate::store::{SessionFilter, DEFAULT_PER_PAGE, MAX_PER_PAGE};

/// A page of a listing.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// How many match in all.
    pub total: u64,
    /// 1-based.
    pub page: u64,
    pub per_page: u64,
}

/// The session listing's query. `state` may be repeated, or comma-separated.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SessionQuery {
    /// Case-insensitive substring of the name, the owner or a label.
    q: Option<String>,
    /// Only these states (default: every state but `deleted`).
    state: Option<Vec<SessionState>>,
    /// Only this owner's sessions.
    owner: Option<String>,
    /// Only sessions shared with this group.
    group: Option<String>,
    /// 1-based page (default 1).
    page: Option<u64>,
    /// Items per page (default 50, at most 1000).
    per_page: Option<u64>,
}

/// Parses `page` and `per_page`, with the same rules for every listing.
pub fn paging(page: Option<&str>, per_page: Option<&str>) -> Result<(u64, u64), ApiError> {
    let page = match page {
        None => 1,
        Some(p) => p
            .parse::<u64>()
            .ok()
            .filter(|p| (1..=1_000_000).contains(p))
            .ok_or_else(|| ApiError::bad_request(format!("page {p:?}: must be a number from 1")))?,
    };
    let per_page = match per_page {
        None => DEFAULT_PER_PAGE,
        Some(p) => p
            .parse::<u64>()
            .ok()
            .filter(|p| (1..=MAX_PER_PAGE).contains(p))
            .ok_or_else(|| {
                ApiError::bad_request(format!("per_page {p:?}: must be 1-{MAX_PER_PAGE}"))
            })?,
    };
    Ok((page, per_page))
}

/// The query string's pairs; a malformed one is a 400.
pub fn query_pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("query string: {e}")))
}

fn session_filter(pairs: Vec<(String, String)>) -> Result<SessionFilter, ApiError> {
    let mut f = SessionFilter::default();
    let (mut page, mut per_page) = (None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "q" => f.q = Some(v).filter(|v| !v.is_empty()),
            "state" => {
                for s in v.split(',').filter(|s| !s.is_empty()) {
                    let state = s.parse::<SessionState>().map_err(|_| {
                        ApiError::bad_request(format!(
                            "state {s:?}: expected one of pending, running, paused, evicted, expired, deleted"
                        ))
                    })?;
                    if !f.states.contains(&state) {
                        f.states.push(state);
                    }
                }
            }
            "owner" => f.owner = Some(v),
            "group" => f.group = Some(v),
            "page" => page = Some(v),
            "per_page" => per_page = Some(v),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected q, state, owner, group, page, per_page)"
                )))
            }
        }
    }
    (f.page, f.per_page) = paging(page.as_deref(), per_page.as_deref())?;
    Ok(f)
}

#[utoipa::path(
    get, path = "/api/v1/sessions", tag = "sessions",
    params(SessionQuery),
    responses(
        (status = 200, description = "A page of sessions, by name", body = Page<Session>),
        (status = 400, description = "A bad filter or page", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_sessions(
    State(cp): State<Control>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<Session>>, ApiError> {
    let mut f = session_filter(query_pairs(raw)?)?;
    // A user sees their own sessions and those shared with their groups.
    f.visible_to = caller.user().map(str::to_string);
    let (records, total) = cp.list_sessions(&f).await?;
    let now = cp.now_ms();
    Ok(Json(Page {
        items: records.iter().map(|r| r.view(now)).collect(),
        total,
        page: f.page,
        per_page: f.per_page,
    }))
}

#[utoipa::path(
    post, path = "/api/v1/sessions", tag = "sessions",
    request_body = NewSession,
    responses(
        (status = 201, description = "Created; routed at once unless pending", body = Session),
        (status = 400, description = "Malformed JSON or an unknown field", body = ErrorBody),
        (status = 409, description = "The name, slug or custom domain is taken", body = ErrorBody),
        (status = 422, description = "An invalid value, or an unknown owner or group", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_session(
    State(cp): State<Control>,
    Extension(caller): Extension<Caller>,
    ApiJson(input): ApiJson<NewSession>,
) -> Result<Response, ApiError> {
    if let Some(user) = caller.user() {
        // A user's sessions are their own, shared only with their groups.
        if input.owner != user {
            return Err(ControlError::Forbidden(format!(
                "user {user:?} may create sessions owned by {user:?} only, not {:?}",
                input.owner
            ))
            .into());
        }
        let mine = user_groups(user, &cp.group_cache());
        let foreign: Vec<&str> = input
            .groups
            .iter()
            .filter(|g| !mine.contains(*g))
            .map(String::as_str)
            .collect();
        if !foreign.is_empty() {
            return Err(ControlError::Forbidden(format!(
                "user {user:?} may share only with groups they are in, not {}",
                foreign.join(", ")
            ))
            .into());
        }
    }
    let rec = cp.create_session(input).await?;
    let location = format!("/api/v1/sessions/{}", rec.name);
    let mut view = rec.view(cp.now_ms());
    view.warnings = cp.warnings(&rec);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

#[utoipa::path(
    get, path = "/api/v1/sessions/{name}", tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, body = Session),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_session(
    State(cp): State<Control>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Session>, ApiError> {
    let rec = cp.get_session(&name).await?;
    caller.check(&rec, SessionOp::View, &cp.group_cache())?;
    Ok(Json(rec.view(cp.now_ms())))
}

#[utoipa::path(
    patch, path = "/api/v1/sessions/{name}", tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    request_body = SessionPatch,
    responses(
        (status = 200, description = "Changed and hot-swapped", body = Session),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch_session(
    State(cp): State<Control>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<SessionPatch>,
) -> Result<Json<Session>, ApiError> {
    authorize(&cp, &caller, &name, SessionOp::Operate("change")).await?;
    let rec = cp.patch_session(&name, patch).await?;
    let mut view = rec.view(cp.now_ms());
    view.warnings = cp.warnings(&rec);
    Ok(Json(view))
}

/// One item of `PATCH /api/v1/sessions`: the session's name and the same
/// fields `PATCH /api/v1/sessions/{name}` takes.
#[derive(Deserialize, ToSchema)]
pub struct SessionPatchItem {
    /// The session to change.
    pub name: String,
    #[serde(flatten)]
    pub patch: SessionPatch,
}

/// `PATCH /api/v1/sessions`: many sessions' targets and routing, changed
/// together or not at all.
#[derive(Deserialize, ToSchema)]
pub struct PatchBatchRequest {
    /// At most 10,000 items, each session at most once.
    pub sessions: Vec<SessionPatchItem>,
}

/// The body as it is read: each item is then read on its own, so that a
/// refusal names it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBatchBody {
    sessions: Vec<serde_json::Value>,
}

/// One session changed by a batched patch.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PatchBatchResult {
    pub name: String,
    /// The session's state (a patch does not change it).
    pub state: SessionState,
    /// As in a single patch's answer (a custom domain no certificate covers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PatchBatchResponse {
    /// How many sessions were changed: every item.
    pub applied: usize,
    /// One per item, in the order given.
    pub results: Vec<PatchBatchResult>,
}

/// Missing sessions quoted in a 404, at most.
const QUOTED_MISSING: usize = 20;

/// Item `index` of a batched patch: its name and its patch, read as
/// `PATCH /api/v1/sessions/{name}` reads its body.
fn patch_item(index: usize, item: serde_json::Value) -> Result<(String, SessionPatch), ApiError> {
    let invalid_json = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", m);
    let serde_json::Value::Object(mut fields) = item else {
        return Err(invalid_json(format!(
            "sessions[{index}]: expected an object with the session's name and the fields to change"
        )));
    };
    let name = match fields.remove("name") {
        Some(serde_json::Value::String(name)) => name,
        Some(other) => {
            return Err(invalid_json(format!(
                "sessions[{index}]: name must be a string, not {other}"
            )))
        }
        None => {
            return Err(invalid_json(format!(
                "sessions[{index}]: missing field `name` (the session to change)"
            )))
        }
    };
    let fields = serde_json::Value::Object(fields);
    match SessionPatch::deserialize(&fields) {
        Ok(patch) => Ok((name, patch)),
        Err(e) => {
            let field = field_refused(&fields)
                .map(|f| format!("{f}: "))
                .unwrap_or_default();
            Err(invalid_json(format!(
                "sessions[{index}] ({name:?}): {field}{e}"
            )))
        }
    }
}

/// The field of `fields` (a JSON object) that a patch refuses on its own,
/// to name it where serde's message does not (a value of the wrong type).
fn field_refused(fields: &serde_json::Value) -> Option<&str> {
    let serde_json::Value::Object(map) = fields else {
        return None;
    };
    map.iter().find_map(|(k, v)| {
        let alone = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
        SessionPatch::deserialize(&alone)
            .is_err()
            .then_some(k.as_str())
    })
}

impl From<PatchBatchError> for ApiError {
    fn from(e: PatchBatchError) -> Self {
        match e {
            PatchBatchError::TooMany(n) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "{n} sessions in one batch; at most {MAX_PATCH_BATCH}: split it into several"
                ),
            ),
            PatchBatchError::Duplicate { name, first, again } => ApiError::bad_request(format!(
                "sessions[{again}] ({name:?}): session {name:?} is already at sessions[{first}]; \
                 list each session once"
            )),
            PatchBatchError::Missing(missing) => {
                let mut quoted: Vec<String> = missing
                    .iter()
                    .take(QUOTED_MISSING)
                    .map(|(i, name)| format!("sessions[{i}] {name:?}"))
                    .collect();
                if missing.len() > QUOTED_MISSING {
                    quoted.push(format!("and {} more", missing.len() - QUOTED_MISSING));
                }
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "{} of the sessions not found, nothing changed: {}",
                        missing.len(),
                        quoted.join(", ")
                    ),
                )
            }
            PatchBatchError::Item { index, name, error } => {
                let mut api = ApiError::from(error);
                api.message = format!("sessions[{index}] ({name:?}): {}", api.message);
                api
            }
            PatchBatchError::Failed(e) => e.into(),
        }
    }
}

#[utoipa::path(
    patch, path = "/api/v1/sessions", tag = "sessions",
    request_body = PatchBatchRequest,
    responses(
        (status = 200, description = "Every session changed, in one transaction and one route-table update (its version in `Sessiongate-Table-Version`)", body = PatchBatchResponse),
        (status = 400, description = "Malformed JSON, an unknown field, or a session listed twice; the message names the item (`sessions[i]`) and the field. Nothing changed", body = ErrorBody),
        (status = 404, description = "Sessions that do not exist, each named; nothing changed", body = ErrorBody),
        (status = 409, description = "An item's session is finished, or its slug or custom domain is taken (the item named); nothing changed", body = ErrorBody),
        (status = 413, description = "More than 10,000 items, or a body over the API's body limit", body = ErrorBody),
        (status = 422, description = "An invalid value (the item and the field named); nothing changed", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch_sessions(
    State(cp): State<Control>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<PatchBatchBody>,
) -> Result<Json<PatchBatchResponse>, ApiError> {
    if body.sessions.len() > MAX_PATCH_BATCH {
        return Err(PatchBatchError::TooMany(body.sessions.len()).into());
    }
    let mut items = Vec::with_capacity(body.sessions.len());
    for (index, item) in body.sessions.into_iter().enumerate() {
        items.push(patch_item(index, item)?);
    }
    // The same permission as each single patch.
    if caller.user().is_some() {
        for (index, (name, _)) in items.iter().enumerate() {
            authorize(&cp, &caller, name, SessionOp::Operate("change"))
                .await
                .map_err(|error| PatchBatchError::Item {
                    index,
                    name: name.clone(),
                    error,
                })?;
        }
    }
    let recs = cp.patch_sessions(items).await?;
    Ok(Json(PatchBatchResponse {
        applied: recs.len(),
        results: recs
            .iter()
            .map(|rec| PatchBatchResult {
                name: rec.name.clone(),
                state: rec.state,
                warnings: cp.warnings(rec),
            })
            .collect(),
    }))
}

#[utoipa::path(
    delete, path = "/api/v1/sessions/{name}", tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "Deleted: the route is gone; the backend is not stopped", body = Session),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already deleted", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_session(
    State(cp): State<Control>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Session>, ApiError> {
    authorize(&cp, &caller, &name, SessionOp::Delete).await?;
    let rec = cp.session_action(&name, Action::Delete, None).await?;
    Ok(Json(rec.view(cp.now_ms())))
}

/// The actions `POST /api/v1/sessions/{name}/{action}` takes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    Activate,
    Keepalive,
    Extend,
    Pause,
    Resume,
    Evict,
    Expire,
}

/// `extend`'s optional body.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// Seconds to add (default: the session's duration).
    pub seconds: Option<u64>,
}

#[utoipa::path(
    post, path = "/api/v1/sessions/{name}/{action}", tag = "sessions",
    params(
        ("name" = String, Path, description = "Session name"),
        ("action" = ActionName, Path, description = "activate, keepalive, extend, pause, resume, evict or expire"),
    ),
    request_body(content = Option<ExtendBody>, description = "Only for extend, optional"),
    responses(
        (status = 200, description = "Applied", body = Session),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not allowed in the current state (`state` says which), or not extendable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn session_action(
    State(cp): State<Control>,
    Extension(caller): Extension<Caller>,
    ApiPath((name, action)): ApiPath<(String, String)>,
    body: Bytes,
) -> Result<Json<Session>, ApiError> {
    let verb = action.clone();
    let action = parse_action(&action).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session action {action:?} (expected activate, keepalive, extend, pause, resume, evict or expire)"),
        )
    })?;
    let mut seconds = None;
    if !body.iter().all(u8::is_ascii_whitespace) {
        if action != Action::Extend {
            return Err(ApiError::bad_request(
                format!("{action:?} takes no body").to_lowercase(),
            ));
        }
        let b: ExtendBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;
        seconds = b.seconds;
    }
    authorize(&cp, &caller, &name, SessionOp::of_action(action, &verb)).await?;
    let rec = cp.session_action(&name, action, seconds).await?;
    Ok(Json(rec.view(cp.now_ms())))
}

/// Checks that `caller` may do `op` to session `name` (operators always:
/// the middleware already kept read-only tokens to reading).
async fn authorize(
    cp: &Control,
    caller: &Caller,
    name: &str,
    op: SessionOp<'_>,
) -> Result<(), ControlError> {
    if caller.user().is_none() {
        return Ok(());
    }
    let rec = cp.get_session(name).await?;
    caller.check(&rec, op, &cp.group_cache())
}

fn parse_action(s: &str) -> Option<Action> {
    Some(match s {
        "activate" => Action::Activate,
        "keepalive" => Action::Keepalive,
        "extend" => Action::Extend,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "evict" => Action::Evict,
        "expire" => Action::Expire,
        _ => return None,
    })
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupsBody {
    pub groups: Vec<String>,
}

#[utoipa::path(
    put, path = "/api/v1/sessions/{name}/groups", tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    request_body = GroupsBody,
    responses(
        (status = 200, description = "Shared with exactly these groups", body = Session),
        (status = 404, body = ErrorBody),
        (status = 422, description = "An unknown group", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn set_groups(
    State(cp): State<Control>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<GroupsBody>,
) -> Result<Json<Session>, ApiError> {
    authorize(&cp, &caller, &name, SessionOp::Share(&body.groups)).await?;
    let rec = cp.set_session_groups(&name, body.groups).await?;
    Ok(Json(rec.view(cp.now_ms())))
}

/// The actions a bulk request may apply.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    Pause,
    Resume,
    Evict,
    Expire,
    Delete,
    Keepalive,
    Extend,
    Activate,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    pub action: BulkAction,
    pub names: Vec<String>,
}

/// One name's outcome in a bulk action.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    pub name: String,
    /// Whether the action was applied to this session.
    pub ok: bool,
    /// The session's state afterwards (absent if there is no such session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<SessionState>,
    /// Why it was not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<BulkError>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkError {
    pub code: String,
    pub message: String,
}

impl From<BulkOutcome> for BulkResult {
    fn from(o: BulkOutcome) -> Self {
        let error = o.refused.map(|r| match r {
            BulkRefusal::Duplicate => BulkError {
                code: "duplicate".into(),
                message: format!("{:?} is listed more than once", o.name),
            },
            BulkRefusal::Refused(e) => BulkError {
                code: e.code().into(),
                message: e.to_string(),
            },
        });
        BulkResult {
            ok: error.is_none(),
            name: o.name,
            state: o.state,
            error,
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BulkResponse {
    pub action: BulkAction,
    /// How many it was applied to.
    pub applied: usize,
    /// One per name, in the order given.
    pub results: Vec<BulkResult>,
}

#[utoipa::path(
    post, path = "/api/v1/sessions/bulk", tag = "sessions",
    request_body = BulkRequest,
    responses(
        (status = 200, description = "Applied where applicable; a result per name", body = BulkResponse),
        (status = 400, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn bulk_action(
    State(cp): State<Control>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<BulkRequest>,
) -> Result<Json<BulkResponse>, ApiError> {
    let action = match req.action {
        BulkAction::Pause => Action::Pause,
        BulkAction::Resume => Action::Resume,
        BulkAction::Evict => Action::Evict,
        BulkAction::Expire => Action::Expire,
        BulkAction::Delete => Action::Delete,
        BulkAction::Keepalive => Action::Keepalive,
        BulkAction::Extend => Action::Extend,
        BulkAction::Activate => Action::Activate,
    };
    // A user's names that they may not act on are refused one by one, as
    // the action itself refuses a name it does not apply to.
    let mut refused = Vec::new();
    let mut names = req.names;
    let asked = names.clone();
    if caller.user().is_some() {
        let verb = format!("{:?}", req.action).to_lowercase();
        let mut allowed = Vec::with_capacity(names.len());
        for name in names {
            match authorize(&cp, &caller, &name, SessionOp::of_action(action, &verb)).await {
                Ok(()) => allowed.push(name),
                Err(e) => refused.push(BulkOutcome {
                    name,
                    state: None,
                    refused: Some(BulkRefusal::Refused(e)),
                }),
            }
        }
        names = allowed;
    }
    let results: Vec<BulkResult> = if names.is_empty() {
        Vec::new()
    } else {
        cp.bulk_action(action, names).await?
    }
    .into_iter()
    .chain(refused)
    .map(BulkResult::from)
    .collect();
    // In the order asked (a stable sort: duplicates keep theirs).
    // (The k-th result for a name takes the k-th place that name was asked
    // at, so that a duplicate stays where it was.)
    let mut places: std::collections::HashMap<&str, std::collections::VecDeque<usize>> =
        std::collections::HashMap::with_capacity(asked.len());
    for (i, n) in asked.iter().enumerate() {
        places.entry(n.as_str()).or_default().push_back(i);
    }
    let mut placed: Vec<(usize, BulkResult)> = results
        .into_iter()
        .map(|r| {
            let at = places
                .get_mut(r.name.as_str())
                .and_then(|q| q.pop_front())
                .unwrap_or(usize::MAX);
            (at, r)
        })
        .collect();
    placed.sort_by_key(|(at, _)| *at);
    let results: Vec<BulkResult> = placed.into_iter().map(|(_, r)| r).collect();
    Ok(Json(BulkResponse {
        action: req.action,
        applied: results.iter().filter(|r| r.ok).count(),
        results,
    }))
}
