//! `/api/v1/users`, `/api/v1/groups` and `/api/v1/tokens`.

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::sessions::{paging, query_pairs, Page};
use super::{ApiError, ApiJson, ApiPath, Control, ErrorBody};
use crate::auth::TokenKind;
use crate::control::directory::UserRecord;
use crate::session::model::{Group, NewGroup, NewUser, User, UserPatch};
use crate::store::TokenRow;
use crate::time::rfc3339_millis;

/// A user as the API shows it.
fn user_view(u: UserRecord) -> User {
    let UserRecord { row, groups } = u;
    User {
        id: row.id,
        name: row.name,
        email: row.email,
        first_name: row.first_name,
        last_name: row.last_name,
        created: rfc3339_millis(row.created_ms),
        groups,
    }
}

/// An API token as listed (never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub kind: TokenKind,
    pub created: String,
}

impl From<&TokenRow> for TokenInfo {
    fn from(t: &TokenRow) -> Self {
        TokenInfo {
            name: t.name.clone(),
            kind: TokenKind::parse(&t.kind).unwrap_or(TokenKind::Readonly),
            created: rfc3339_millis(t.created_ms),
        }
    }
}

/// The user listing's query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct UserQuery {
    /// Case-insensitive substring of the name, e-mail or full name.
    q: Option<String>,
    page: Option<u64>,
    per_page: Option<u64>,
}

#[utoipa::path(
    get, path = "/api/v1/users", tag = "users",
    params(UserQuery),
    responses((status = 200, body = Page<User>), (status = 400, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_users(
    State(cp): State<Control>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<User>>, ApiError> {
    let (mut q, mut page, mut per_page) = (None, None, None);
    for (k, v) in query_pairs(raw)? {
        match k.as_str() {
            "q" => q = Some(v).filter(|v| !v.is_empty()),
            "page" => page = Some(v),
            "per_page" => per_page = Some(v),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected q, page, per_page)"
                )))
            }
        }
    }
    let (page, per_page) = paging(page.as_deref(), per_page.as_deref())?;
    let (users, total) = cp.list_users(q.as_deref(), page, per_page).await?;
    Ok(Json(Page {
        items: users.into_iter().map(user_view).collect(),
        total,
        page,
        per_page,
    }))
}

#[utoipa::path(
    post, path = "/api/v1/users", tag = "users",
    request_body = NewUser,
    responses(
        (status = 201, body = User),
        (status = 400, body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_user(
    State(cp): State<Control>,
    ApiJson(input): ApiJson<NewUser>,
) -> Result<Response, ApiError> {
    let user = user_view(cp.create_user(input).await?);
    let location = format!("/api/v1/users/{}", user.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(user),
    )
        .into_response())
}

#[utoipa::path(
    get, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_user(
    State(cp): State<Control>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(user_view(cp.get_user(&name).await?)))
}

#[utoipa::path(
    patch, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path)),
    request_body = UserPatch,
    responses((status = 200, body = User), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn update_user(
    State(cp): State<Control>,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(user_view(cp.update_user(&name, patch).await?)))
}

#[utoipa::path(
    post, path = "/api/v1/users/{name}/console-link", tag = "users",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "A one-time link that signs the user in to the web console (`/ui/`), valid 5 minutes; the URL is on the host this request was sent to", body = crate::access::AccessLink),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn console_link(
    State(cp): State<Control>,
    headers: axum::http::HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<crate::access::AccessLink>, ApiError> {
    let (token, expires_ms) = cp.create_console_link(&name).await?;
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    Ok(Json(crate::access::AccessLink {
        url: cp.console_link_url(host, &token),
        expires: crate::time::rfc3339_millis(expires_ms),
    }))
}

#[utoipa::path(
    delete, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Deleted, with their group memberships"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The user still owns sessions", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_user(
    State(cp): State<Control>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    cp.delete_user(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = Vec<Group>)),
    security(("bearer" = []))
)]
pub async fn list_groups(State(cp): State<Control>) -> Result<Json<Vec<Group>>, ApiError> {
    Ok(Json(cp.list_groups().await?))
}

#[utoipa::path(
    post, path = "/api/v1/groups", tag = "groups",
    request_body = NewGroup,
    responses(
        (status = 201, body = Group),
        (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 422, description = "An invalid name or an unknown member", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_group(
    State(cp): State<Control>,
    ApiJson(input): ApiJson<NewGroup>,
) -> Result<Response, ApiError> {
    let group = cp.create_group(input).await?;
    let location = format!("/api/v1/groups/{}", group.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(group),
    )
        .into_response())
}

#[utoipa::path(
    get, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_group(
    State(cp): State<Control>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(cp.get_group(&name).await?))
}

#[utoipa::path(
    delete, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Deleted; sessions shared with it no longer are"),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_group(
    State(cp): State<Control>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    cp.delete_group(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersBody {
    pub members: Vec<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    pub user: String,
}

#[utoipa::path(
    get, path = "/api/v1/groups/{name}/members", tag = "groups",
    params(("name" = String, Path)),
    responses((status = 200, body = MembersBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_members(
    State(cp): State<Control>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<MembersBody>, ApiError> {
    let g = cp.get_group(&name).await?;
    Ok(Json(MembersBody { members: g.members }))
}

#[utoipa::path(
    put, path = "/api/v1/groups/{name}/members", tag = "groups",
    params(("name" = String, Path)),
    request_body = MembersBody,
    responses((status = 200, body = Group), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn set_members(
    State(cp): State<Control>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<MembersBody>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(cp.set_members(&name, body.members).await?))
}

#[utoipa::path(
    post, path = "/api/v1/groups/{name}/members", tag = "groups",
    params(("name" = String, Path)),
    request_body = MemberBody,
    responses((status = 200, body = Group), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn add_member(
    State(cp): State<Control>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<MemberBody>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(cp.add_member(&name, &body.user).await?))
}

#[utoipa::path(
    delete, path = "/api/v1/groups/{name}/members/{user}", tag = "groups",
    params(("name" = String, Path), ("user" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn remove_member(
    State(cp): State<Control>,
    ApiPath((name, user)): ApiPath<(String, String)>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(cp.remove_member(&name, &user).await?))
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A DNS label naming what uses it, such as `grafana`.
    pub name: String,
    /// `readonly` (default) or `admin`.
    #[serde(default)]
    pub kind: Option<TokenKind>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub name: String,
    pub kind: TokenKind,
    pub created: String,
    /// The token itself, shown this once; only its hash is stored.
    pub token: String,
}

#[utoipa::path(
    get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenInfo>)),
    security(("bearer" = []))
)]
pub async fn list_tokens(State(cp): State<Control>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(
        cp.list_tokens()
            .await?
            .iter()
            .map(TokenInfo::from)
            .collect(),
    ))
}

#[utoipa::path(
    post, path = "/api/v1/tokens", tag = "tokens",
    request_body = NewToken,
    responses(
        (status = 201, body = CreatedToken),
        (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_token(
    State(cp): State<Control>,
    ApiJson(input): ApiJson<NewToken>,
) -> Result<Response, ApiError> {
    let (row, token) = cp
        .create_token(&input.name, input.kind.unwrap_or(TokenKind::Readonly))
        .await?;
    let info = TokenInfo::from(&row);
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name: info.name,
            kind: info.kind,
            created: info.created,
            token,
        }),
    )
        .into_response())
}

#[utoipa::path(
    delete, path = "/api/v1/tokens/{name}", tag = "tokens",
    params(("name" = String, Path)),
    responses((status = 204, description = "Revoked at once"), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn delete_token(
    State(cp): State<Control>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    cp.delete_token(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
