//! The console's handlers and what their templates show.

// A handler's early answer is a whole `Response`, as axum's own rejections
// are: returned once per request, not worth boxing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap};

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::message;
use super::signin::{self, CSRF_HEADER, LOGIN_COOKIE};
use crate::api::Control;
use crate::audit::{self, Who};
use crate::auth::{constant_time_eq, TokenKind};
use crate::error::ControlError;
use crate::limits::Guessed;
use crate::permissions::{user_groups, Caller, SessionOp};
use crate::session::lifecycle::{Action, SessionState};
use crate::session::model::{NewGroup, NewSession, NewUser, SessionRecord};
use crate::store::SessionFilter;

/// Page sizes offered.
const SIZES: [u64; 4] = [10, 25, 50, 100];
/// The mass actions, in the menu's order.
const BULK: [&str; 6] = ["evict", "expire", "pause", "resume", "extend", "delete"];
/// The most bytes a console form may send.
const FORM_LIMIT: usize = 256 * 1024;

/// Who is signed in, and the CSRF token of their sign-in.
struct Ctx {
    caller: Caller,
    csrf: String,
}

impl Ctx {
    fn operator(&self) -> bool {
        self.caller.user().is_none()
    }

    /// Runs `f` with this caller as the actor of what it writes.
    async fn acting<F: std::future::Future>(&self, action: &str, f: F) -> F::Output {
        audit::scope(Who::new(self.caller.actor(), action.to_string()), f).await
    }
}

fn now_secs(cp: &Control) -> u64 {
    cp.now_ms() / 1000
}

/// The signed-in caller, or the answer for a browser that is not (back to
/// the sign-in page).
async fn signed(cp: &Control, headers: &HeaderMap) -> Result<Ctx, Response> {
    match signin::signed_in(cp, headers, now_secs(cp)).await {
        Some((caller, cookie)) => Ok(Ctx {
            caller,
            csrf: signin::csrf_token(cp, &cookie),
        }),
        None => Err(Redirect::to("/ui/").into_response()),
    }
}

/// A form's fields, in order (a name may repeat: checkboxes).
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(body: &[u8]) -> Result<Fields, Response> {
        serde_urlencoded::from_bytes(body).map(Fields).map_err(|e| {
            message(
                StatusCode::BAD_REQUEST,
                "Bad form",
                &format!("The form could not be read: {e}."),
            )
        })
    }

    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The form of a signed-in caller, once its CSRF token (field `csrf`, or
/// the htmx header) is checked: a forged request gets 403 and changes
/// nothing.
async fn signed_form(
    cp: &Control,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Ctx, Fields), Response> {
    let ctx = match signed(cp, headers).await {
        Ok(c) => c,
        Err(_) => {
            return Err(message(
                StatusCode::UNAUTHORIZED,
                "Signed out",
                "You are not signed in (or your sign-in ended). Sign in again.",
            ))
        }
    };
    let fields = Fields::parse(body)?;
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| fields.get("csrf"));
    if !constant_time_eq(presented.as_bytes(), ctx.csrf.as_bytes()) {
        return Err(forged());
    }
    Ok((ctx, fields))
}

fn forged() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form was out of date or not sent from this console (its CSRF token did not match). Nothing was changed.",
    )
}

/// A page for an error from the control plane.
fn failed(e: &ControlError) -> Response {
    let status = e.status();
    message(
        status,
        status.canonical_reason().unwrap_or("Error"),
        &e.to_string(),
    )
}

fn render<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "This page could not be shown.",
            )
        }
    }
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The frame every page shares.
struct Layout {
    who: String,
    role: &'static str,
    csrf: String,
    running: u64,
    nav: &'static str,
    operator: bool,
    can_write: bool,
    can_add: bool,
}

async fn layout(cp: &Control, ctx: &Ctx, nav: &'static str) -> Layout {
    let (who, role) = match &ctx.caller {
        Caller::Operator { kind, name } => (
            name.as_deref().unwrap_or("admin token").to_string(),
            match kind {
                TokenKind::Admin => "admin",
                _ => "read-only",
            },
        ),
        Caller::User { name } => (name.clone(), "user"),
    };
    Layout {
        who,
        role,
        csrf: ctx.csrf.clone(),
        running: running_count(cp, &ctx.caller).await,
        nav,
        operator: ctx.operator(),
        can_write: ctx.caller.may_write(),
        can_add: ctx.caller.may_write(),
    }
}

/// Running sessions the caller may see.
async fn running_count(cp: &Control, caller: &Caller) -> u64 {
    let f = SessionFilter {
        states: vec![SessionState::Running],
        visible_to: caller.user().map(str::to_string),
        page: 1,
        per_page: 1,
        ..SessionFilter::default()
    };
    cp.list_sessions(&f).await.map_or(0, |(_, n)| n)
}

// ---- signing in and out ----

#[derive(Template)]
#[template(path = "console/signin.html")]
struct SignIn {
    error: Option<String>,
    nonce: String,
    /// With OpenID Connect and the console on the portal host: where
    /// "Sign in with <provider>" goes, and the provider's name.
    oidc: Option<(String, String)>,
}

/// Whether the browser reached the console over HTTPS: through a gateway
/// that terminates TLS on the portal host (`console.portal`), which says so
/// in `X-Forwarded-Proto`. Then the console's cookies are `Secure`. (A
/// forged header could only make a cookie stricter.)
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.split(',').next_back().map(str::trim) == Some("https"))
}

fn sign_in_page(
    cp: &crate::control::ControlPlane,
    status: StatusCode,
    error: Option<String>,
    secure: bool,
) -> Response {
    let nonce = signin::login_nonce();
    let oidc = cp
        .oidc()
        .filter(|_| cp.access_settings().console_portal_host.is_some())
        .map(|o| {
            (
                format!("{}?console=1", o.login_url()),
                o.display_name().to_string(),
            )
        });
    let mut resp = render(
        status,
        &SignIn {
            error,
            nonce: nonce.clone(),
            oidc,
        },
    );
    resp.headers_mut()
        .append(header::SET_COOKIE, signin::login_cookie(&nonce, secure));
    resp
}

pub async fn home(State(cp): State<Control>, headers: HeaderMap) -> Response {
    if signed(&cp, &headers).await.is_ok() {
        return see_other("/ui/sessions");
    }
    sign_in_page(&cp, StatusCode::OK, None, over_https(&headers))
}

/// `POST /ui/login`: an API token for a console cookie.
pub async fn login(State(cp): State<Control>, req: Request) -> Response {
    let client = crate::api::server::client_addr(req.extensions());
    let headers = req.headers().clone();
    let secure = over_https(&headers);
    let Ok(body) = axum::body::to_bytes(req.into_body(), FORM_LIMIT).await else {
        return message(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            "The form is too large.",
        );
    };
    let fields = match Fields::parse(&body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let nonce = signin::cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if nonce.is_empty() || !constant_time_eq(nonce.as_bytes(), fields.get("csrf").as_bytes()) {
        return sign_in_page(
            &cp,
            StatusCode::FORBIDDEN,
            Some("The sign-in form was out of date. Try again.".into()),
            secure,
        );
    }
    let failures = cp.failures(Guessed::ApiToken);
    if let Err(t) = failures.check(client) {
        return sign_in_page(
            &cp,
            StatusCode::TOO_MANY_REQUESTS,
            Some(t.to_string()),
            secure,
        );
    }
    let caller = match cp.check_token_named(fields.get("token").trim()) {
        Some((kind @ (TokenKind::Admin | TokenKind::Readonly), name)) => {
            Caller::Operator { kind, name }
        }
        Some((TokenKind::Gateway, _)) => {
            return sign_in_page(
                &cp,
                StatusCode::FORBIDDEN,
                Some("A gateway token cannot sign in to the console.".into()),
                secure,
            )
        }
        None => {
            failures.fail(client);
            return sign_in_page(
                &cp,
                StatusCode::UNAUTHORIZED,
                Some("That token is not valid.".into()),
                secure,
            );
        }
    };
    signed_in_answer(&cp, &caller, secure)
}

/// The redirect to the sessions page that sets the console cookie.
fn signed_in_answer(cp: &Control, caller: &Caller, secure: bool) -> Response {
    let Some(cookie) = signin::sign_in_cookie(cp, caller, now_secs(cp), secure) else {
        return message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            "This name cannot be carried in a console cookie.",
        );
    };
    tracing::info!(who = %caller.actor(), "signed in to the console");
    let mut resp = see_other("/ui/sessions");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "sessiongate_console_login=; Path=/ui/; Max-Age=0; HttpOnly; SameSite=Strict",
        ),
    );
    resp
}

pub async fn logout(State(cp): State<Control>, headers: HeaderMap, body: Bytes) -> Response {
    // Signing out needs no valid sign-in (an ended one still clears).
    if signin::signed_in(&cp, &headers, now_secs(&cp))
        .await
        .is_some()
    {
        if let Err(r) = signed_form(&cp, &headers, &body).await {
            return r;
        }
    }
    let mut resp = see_other("/ui/");
    if let Ok(v) = HeaderValue::from_str(&signin::sign_out_cookie(over_https(&headers))) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `GET /ui/link/{token}`: a one-time console link.
pub async fn redeem_link(
    State(cp): State<Control>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    match cp.take_console_link(&token).await {
        Ok(Some(user)) => signed_in_answer(&cp, &Caller::User { name: user }, over_https(&headers)),
        Ok(None) => message(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "This console link is not valid, has expired, or was already used. Ask your portal for a new one.",
        ),
        Err(e) => failed(&e),
    }
}

// ---- assets ----

pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "htmx.min.js" => (
            include_bytes!("../../assets/console/htmx.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "console.js" => (
            include_bytes!("../../assets/console/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "console.css" => (
            include_bytes!("../../assets/console/console.css"),
            "text/css; charset=utf-8",
        ),
        "htmx-LICENSE.txt" => (
            include_bytes!("../../assets/console/htmx-LICENSE.txt"),
            "text/plain; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

// ---- sessions ----

/// One row of the sessions table.
struct Row {
    name: String,
    state: String,
    owner: String,
    kind: String,
    target: String,
    place: String,
    groups: String,
    countdown: Option<u64>,
    frozen: bool,
    expires_in: String,
    last_activity: String,
    can_open: bool,
    can_share: bool,
    can_delete: bool,
}

fn row(
    r: &SessionRecord,
    caller: &Caller,
    groups: &crate::access::GroupCache,
    now_ms: u64,
    base_domain: &str,
) -> Row {
    let may = |op| caller.check(r, op, groups).is_ok();
    let countdown = r.countdown_secs(now_ms);
    Row {
        name: r.name.clone(),
        state: r.state.to_string(),
        owner: r.owner.clone(),
        kind: r.kind.as_str().to_string(),
        target: match (&r.url, &r.remote_host, r.remote_port) {
            (Some(u), _, _) => u.clone(),
            (None, h, Some(p)) => format!("{}:{p}", h.as_deref().unwrap_or("localhost")),
            _ => String::new(),
        },
        place: match (&r.slug, &r.custom_domain) {
            (Some(s), _) => s.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => format!("{}.{base_domain}", r.name),
        },
        groups: r.groups.join(", "),
        countdown,
        frozen: r.state != SessionState::Running,
        expires_in: countdown.map_or_else(|| "never".to_string(), duration),
        last_activity: r
            .last_activity_ms
            .map_or_else(|| "never".to_string(), |t| ago(now_ms, t)),
        can_open: r.state.is_live() && may(SessionOp::Open),
        can_share: r.state.is_live() && may(SessionOp::Share(&[])) && caller.may_write(),
        can_delete: r.state != SessionState::Deleted && may(SessionOp::Delete),
    }
}

/// The first base domain: where a session's own host is.
fn base_domain(cp: &Control) -> String {
    cp.base_domains()
        .into_iter()
        .next()
        .unwrap_or_else(|| "localhost".into())
}

/// `3d 4h`, `5h 2m`, `4m 10s`, `9s`.
fn duration(s: u64) -> String {
    let (d, h, m, r) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) if r == 0 => "now".into(),
        (0, 0, 0) => format!("{r}s"),
        (0, 0, _) => format!("{m}m {r}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn ago(now_ms: u64, t: u64) -> String {
    let s = now_ms.saturating_sub(t) / 1000;
    if s < 2 {
        "just now".into()
    } else {
        format!("{} ago", duration(s))
    }
}

/// The table's query: search, status, page size, page.
struct Query {
    q: String,
    status: String,
    size: u64,
    page: u64,
}

impl Query {
    fn parse(raw: Option<String>) -> Query {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
        let get = |k: &str| {
            pairs
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let size = get("size")
            .parse()
            .ok()
            .filter(|n| SIZES.contains(n))
            .unwrap_or(25);
        Query {
            q: get("q"),
            status: get("status"),
            size,
            page: get("page").parse().unwrap_or(1).max(1),
        }
    }

    /// The store's filter: the search also matches a status by its name.
    fn filter(&self, caller: &Caller) -> SessionFilter {
        let mut f = SessionFilter {
            visible_to: caller.user().map(str::to_string),
            page: self.page,
            per_page: self.size,
            ..SessionFilter::default()
        };
        if let Ok(s) = self.status.parse::<SessionState>() {
            f.states = vec![s];
        }
        match self.q.to_ascii_lowercase().parse::<SessionState>() {
            Ok(s) if f.states.is_empty() => f.states = vec![s],
            _ => f.q = Some(self.q.clone()).filter(|q| !q.is_empty()),
        }
        f
    }

    fn link(&self) -> String {
        serde_urlencoded::to_string([
            ("q", self.q.as_str()),
            ("status", self.status.as_str()),
            ("size", &self.size.to_string()),
        ])
        .unwrap_or_default()
    }
}

/// The table, as both the page and its htmx fragment show it.
struct TableView {
    rows: Vec<Row>,
    total: u64,
    page: u64,
    pages: u64,
    q: String,
    query: String,
    csrf: String,
    can_bulk: bool,
    bulk_actions: Vec<&'static str>,
}

async fn table(cp: &Control, ctx: &Ctx, q: &Query) -> Result<TableView, ControlError> {
    let (records, total) = cp.list_sessions(&q.filter(&ctx.caller)).await?;
    let groups = cp.group_cache();
    let now = cp.now_ms();
    let operator_writes = ctx.operator() && ctx.caller.may_write();
    let base = base_domain(cp);
    Ok(TableView {
        rows: records
            .iter()
            .map(|r| row(r, &ctx.caller, &groups, now, &base))
            .collect(),
        total,
        page: q.page,
        pages: total.div_ceil(q.size).max(1),
        q: q.q.clone(),
        query: q.link(),
        csrf: ctx.csrf.clone(),
        can_bulk: ctx.caller.may_write(),
        bulk_actions: if operator_writes {
            BULK.to_vec()
        } else {
            // What an owner may do to their own sessions.
            vec!["extend", "keepalive", "delete"]
        },
    })
}

#[derive(Template)]
#[template(path = "console/sessions.html")]
struct SessionsPage {
    l: Layout,
    t: TableView,
    notice: Option<String>,
    statuses: Vec<(String, bool)>,
    sizes: Vec<(u64, bool)>,
}

pub async fn sessions(
    State(cp): State<Control>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let ctx = match signed(&cp, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let notice = notice(raw.as_deref());
    let q = Query::parse(raw);
    let t = match table(&cp, &ctx, &q).await {
        Ok(t) => t,
        Err(e) => return failed(&e),
    };
    let statuses = SessionState::ALL
        .iter()
        .map(|s| (s.to_string(), s.as_str() == q.status))
        .collect();
    let sizes = SIZES.iter().map(|&n| (n, n == q.size)).collect();
    let l = layout(&cp, &ctx, "sessions").await;
    render(
        StatusCode::OK,
        &SessionsPage {
            l,
            t,
            notice,
            statuses,
            sizes,
        },
    )
}

/// The notice a redirect asked for (`?notice=`): fixed texts only, so a
/// link cannot put words in the page.
fn notice(raw: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or("")).ok()?;
    let (_, v) = pairs.iter().find(|(k, _)| k == "notice")?;
    Some(
        match v.as_str() {
            "deleted" => "Session deleted.",
            "created" => "Session added.",
            _ => return None,
        }
        .to_string(),
    )
}

#[derive(Template)]
#[template(path = "console/sessions_table.html")]
struct TableFragment {
    t: TableView,
}

pub async fn sessions_table(
    State(cp): State<Control>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let ctx = match signed(&cp, &headers).await {
        Ok(c) => c,
        Err(_) => return (StatusCode::UNAUTHORIZED, "signed out\n").into_response(),
    };
    match table(&cp, &ctx, &Query::parse(raw)).await {
        Ok(t) => render(StatusCode::OK, &TableFragment { t }),
        Err(e) => failed(&e),
    }
}

#[derive(Template)]
#[template(path = "console/sessions_live.html")]
struct Live {
    running: u64,
    rows: Vec<Row>,
}

/// What the page polls: each shown row's status, countdown and activity,
/// and the running count, swapped in place.
pub async fn sessions_live(
    State(cp): State<Control>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let ctx = match signed(&cp, &headers).await {
        Ok(c) => c,
        Err(_) => return (StatusCode::UNAUTHORIZED, "signed out\n").into_response(),
    };
    match table(&cp, &ctx, &Query::parse(raw)).await {
        Ok(t) => render(
            StatusCode::OK,
            &Live {
                running: running_count(&cp, &ctx.caller).await,
                rows: t.rows,
            },
        ),
        Err(e) => failed(&e),
    }
}

// ---- mass actions ----

fn bulk_action(name: &str) -> Option<(Action, &'static str, &'static str)> {
    Some(match name {
        "evict" => (Action::Evict, "Evict", "evicted"),
        "expire" => (Action::Expire, "Expire", "expired"),
        "pause" => (Action::Pause, "Pause", "paused"),
        "resume" => (Action::Resume, "Resume", "resumed"),
        "extend" => (Action::Extend, "Extend", "extended"),
        "keepalive" => (Action::Keepalive, "Keep alive", "kept alive"),
        "delete" => (Action::Delete, "Delete", "deleted"),
        _ => return None,
    })
}

/// Of `names`, which `action` applies to (for this caller), and why the
/// others are skipped.
async fn applicable(
    cp: &Control,
    caller: &Caller,
    action: Action,
    verb: &str,
    names: &[String],
) -> (Vec<String>, Vec<(String, String)>) {
    let groups = cp.group_cache();
    let now = cp.now_ms();
    let (mut ok, mut skipped) = (Vec::new(), Vec::new());
    for n in names {
        let why = match cp.get_session(n).await {
            Err(e) => Some(e.to_string()),
            Ok(rec) => match caller.check(&rec, SessionOp::of_action(action, verb), &groups) {
                Err(e) => Some(e.to_string()),
                Ok(()) => crate::control::sessions::transition(&rec, action, None, now)
                    .err()
                    .map(|e| e.to_string()),
            },
        };
        match why {
            None => ok.push(n.clone()),
            Some(w) => skipped.push((n.clone(), w)),
        }
    }
    (ok, skipped)
}

#[derive(Template)]
#[template(path = "console/bulk_confirm.html")]
struct BulkConfirm {
    title: &'static str,
    past: &'static str,
    action: String,
    asked: usize,
    applicable: Vec<String>,
    skipped: Vec<(String, String)>,
    names: Vec<String>,
    csrf: String,
}

pub async fn bulk_confirm(State(cp): State<Control>, headers: HeaderMap, body: Bytes) -> Response {
    let (ctx, fields) = match signed_form(&cp, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let verb = fields.get("action").to_string();
    let Some((action, title, past)) = bulk_action(&verb) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Bad form",
            &format!("No mass action {verb:?}."),
        );
    };
    let names = fields.all("names");
    if names.is_empty() {
        return render(
            StatusCode::OK,
            &BulkConfirm {
                title,
                past,
                action: verb,
                asked: 0,
                applicable: Vec::new(),
                skipped: Vec::new(),
                names,
                csrf: ctx.csrf,
            },
        );
    }
    let (ok, skipped) = applicable(&cp, &ctx.caller, action, &verb, &names).await;
    render(
        StatusCode::OK,
        &BulkConfirm {
            title,
            past,
            action: verb,
            asked: names.len(),
            applicable: ok,
            skipped,
            names,
            csrf: ctx.csrf,
        },
    )
}

struct Outcome {
    name: String,
    ok: bool,
    message: String,
    /// The state it is in now, when the action changed it (the table's
    /// badge is updated in place).
    state: Option<String>,
}

#[derive(Template)]
#[template(path = "console/bulk_result.html")]
struct BulkResult {
    title: &'static str,
    applied: usize,
    skipped: usize,
    results: Vec<Outcome>,
}

pub async fn bulk_apply(State(cp): State<Control>, headers: HeaderMap, body: Bytes) -> Response {
    let (ctx, fields) = match signed_form(&cp, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let verb = fields.get("action").to_string();
    let Some((action, title, past)) = bulk_action(&verb) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Bad form",
            &format!("No mass action {verb:?}."),
        );
    };
    if !ctx.caller.may_write() {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "A read-only token cannot change sessions.",
        );
    }
    let names = fields.all("names");
    // What this caller may not do is skipped here; what does not apply is
    // skipped by the bulk action itself, in its one transaction.
    let groups = cp.group_cache();
    let mut allowed = Vec::new();
    let mut results = Vec::new();
    for n in &names {
        match cp.get_session(n).await {
            Ok(rec) => match ctx
                .caller
                .check(&rec, SessionOp::of_action(action, &verb), &groups)
            {
                Ok(()) => allowed.push(n.clone()),
                Err(e) => results.push(Outcome {
                    name: n.clone(),
                    ok: false,
                    message: format!("skipped: {e}"),
                    state: None,
                }),
            },
            Err(e) => results.push(Outcome {
                name: n.clone(),
                ok: false,
                message: format!("skipped: {e}"),
                state: None,
            }),
        }
    }
    if !allowed.is_empty() {
        let done = ctx.acting(&verb, cp.bulk_action(action, allowed)).await;
        match done {
            Ok(outcomes) => {
                for o in outcomes {
                    results.push(match o.refused {
                        None => Outcome {
                            ok: true,
                            message: past.to_string(),
                            state: o.state.map(|s| s.to_string()),
                            name: o.name,
                        },
                        Some(r) => Outcome {
                            ok: false,
                            message: format!(
                                "skipped: {}",
                                match r {
                                    crate::control::sessions::BulkRefusal::Duplicate =>
                                        "listed twice".to_string(),
                                    crate::control::sessions::BulkRefusal::Refused(e) =>
                                        e.to_string(),
                                }
                            ),
                            state: None,
                            name: o.name,
                        },
                    });
                }
            }
            Err(e) => return failed(&e),
        }
    }
    // In the order the rows were selected.
    let order: HashMap<&String, usize> = names.iter().enumerate().map(|(i, n)| (n, i)).collect();
    results.sort_by_key(|r| order.get(&r.name).copied().unwrap_or(usize::MAX));
    let applied = results.iter().filter(|r| r.ok).count();
    render(
        StatusCode::OK,
        &BulkResult {
            title,
            applied,
            skipped: results.len() - applied,
            results,
        },
    )
}

// ---- one session ----

/// The session `name` if the caller may do `op` to it, else the page.
async fn session_for(
    cp: &Control,
    ctx: &Ctx,
    name: &str,
    op: SessionOp<'_>,
) -> Result<SessionRecord, Response> {
    let rec = cp.get_session(name).await.map_err(|e| failed(&e))?;
    ctx.caller
        .check(&rec, op, &cp.group_cache())
        .map_err(|e| failed(&e))?;
    Ok(rec)
}

/// `GET /ui/sessions/{name}/open`: a fresh access link, followed.
pub async fn open(
    State(cp): State<Control>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let ctx = match signed(&cp, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let rec = match session_for(&cp, &ctx, &name, SessionOp::Open).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if !ctx.caller.may_write() {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "A read-only token cannot open sessions (opening one makes an access link).",
        );
    }
    // Operators open it as its owner.
    let user = ctx.caller.user().unwrap_or(&rec.owner).to_string();
    match cp.create_access_link(&name, &user, None).await {
        Ok(link) => Redirect::to(&link.url).into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Template)]
#[template(path = "console/detail.html")]
struct Detail {
    l: Layout,
    name: String,
    state: String,
    can_open: bool,
    can_share: bool,
    can_delete: bool,
    fields: Vec<(&'static str, String)>,
    connections: Vec<(&'static str, String)>,
    environment: Option<String>,
    history: Vec<(String, String, String, String)>,
}

pub async fn detail(
    State(cp): State<Control>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let ctx = match signed(&cp, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let rec = match session_for(&cp, &ctx, &name, SessionOp::View).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let now = cp.now_ms();
    let r = row(&rec, &ctx.caller, &cp.group_cache(), now, &base_domain(&cp));
    let v = rec.view(now);
    let opt = |o: Option<String>| o.unwrap_or_else(|| "—".into());
    let fields = vec![
        ("Name", v.name.clone()),
        ("Status", v.state.to_string()),
        ("Owner", v.owner.clone()),
        ("Kind", r.kind.clone()),
        ("Target", r.target.clone()),
        (
            "Application uses HTTPS",
            if v.https { "yes" } else { "no" }.into(),
        ),
        ("Slug", opt(v.slug.clone())),
        ("Custom domain", opt(v.custom_domain.clone())),
        (
            "Local port (workspace)",
            opt(v.workspace_port.map(|p| p.to_string())),
        ),
        ("Remote port", opt(v.remote_port.map(|p| p.to_string()))),
        ("Public", if v.public { "yes" } else { "no" }.into()),
        (
            "Shared with",
            if v.groups.is_empty() {
                "—".into()
            } else {
                v.groups.join(", ")
            },
        ),
        ("Created", v.created.clone()),
        ("Activated", opt(v.activated.clone())),
        ("Expires", opt(v.expires.clone())),
        ("Expires in", r.expires_in.clone()),
        ("Duration", opt(v.duration.map(|d| format!("{d} s")))),
        (
            "Idle timeout",
            opt(v.idle_timeout.map(|d| format!("{d} s"))),
        ),
        ("Extendable", if v.extendable { "yes" } else { "no" }.into()),
        ("Last activity", r.last_activity.clone()),
        (
            "Labels",
            if v.labels.is_empty() {
                "—".into()
            } else {
                v.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
    ];
    let id = crate::publish::route_id(&name);
    let websockets: usize = cp
        .gateways()
        .local()
        .iter()
        .filter_map(|f| {
            f.routes()
                .load()
                .route(&id)
                .map(|r| r.state.upgraded_count())
        })
        .sum();
    let remote = cp.gateways().list().iter().filter(|g| g.connected).count();
    let connections = vec![
        (
            "WebSockets open (this process's gateway)",
            websockets.to_string(),
        ),
        ("Remote gateways serving it", remote.to_string()),
        (
            "Routed",
            if rec.state.is_live() && rec.state != SessionState::Pending {
                "yes"
            } else {
                "no"
            }
            .into(),
        ),
    ];
    let history = match cp.session_history(&name).await {
        Ok(h) => h
            .into_iter()
            .map(|a| {
                (
                    crate::time::rfc3339_millis(a.at_ms),
                    a.action,
                    a.actor,
                    a.detail,
                )
            })
            .collect(),
        Err(e) => return failed(&e),
    };
    let l = layout(&cp, &ctx, "sessions").await;
    render(
        StatusCode::OK,
        &Detail {
            l,
            name: rec.name.clone(),
            state: rec.state.to_string(),
            can_open: r.can_open && ctx.caller.may_write(),
            can_share: r.can_share,
            can_delete: r.can_delete,
            fields,
            connections,
            environment: rec.environment.clone(),
            history,
        },
    )
}

#[derive(Template)]
#[template(path = "console/share.html")]
struct Share {
    l: Layout,
    name: String,
    groups: Vec<(String, bool)>,
    notice: Option<String>,
    error: Option<String>,
}

/// The groups the caller may share with: every group for operators, their
/// own for users.
async fn shareable(cp: &Control, caller: &Caller) -> Result<BTreeSet<String>, ControlError> {
    match caller.user() {
        Some(u) => Ok(user_groups(u, &cp.group_cache())),
        None => Ok(cp
            .list_groups()
            .await?
            .into_iter()
            .map(|g| g.name)
            .collect()),
    }
}

async fn share_page(
    cp: &Control,
    ctx: &Ctx,
    rec: &SessionRecord,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let groups = match shareable(cp, &ctx.caller).await {
        Ok(g) => g
            .into_iter()
            .map(|g| {
                let on = rec.groups.contains(&g);
                (g, on)
            })
            .collect(),
        Err(e) => return failed(&e),
    };
    let l = layout(cp, ctx, "sessions").await;
    render(
        status,
        &Share {
            l,
            name: rec.name.clone(),
            groups,
            notice,
            error,
        },
    )
}

pub async fn share(
    State(cp): State<Control>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let ctx = match signed(&cp, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match session_for(&cp, &ctx, &name, SessionOp::Share(&[])).await {
        Ok(rec) => share_page(&cp, &ctx, &rec, StatusCode::OK, None, None).await,
        Err(r) => r,
    }
}

pub async fn save_share(
    State(cp): State<Control>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (ctx, fields) = match signed_form(&cp, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let rec = match cp.get_session(&name).await {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    // The groups shown were those the caller may share with; the others
    // the session is shared with stay.
    let offered = match shareable(&cp, &ctx.caller).await {
        Ok(g) => g,
        Err(e) => return failed(&e),
    };
    let mut groups: BTreeSet<String> = rec
        .groups
        .iter()
        .filter(|g| !offered.contains(*g))
        .cloned()
        .collect();
    groups.extend(fields.all("groups"));
    let groups: Vec<String> = groups.into_iter().collect();
    if let Err(e) = ctx
        .caller
        .check(&rec, SessionOp::Share(&groups), &cp.group_cache())
    {
        return failed(&e);
    }
    match ctx
        .acting("share", cp.set_session_groups(&name, groups))
        .await
    {
        Ok(rec) => {
            share_page(
                &cp,
                &ctx,
                &rec,
                StatusCode::OK,
                Some("Permission updated successfully.".into()),
                None,
            )
            .await
        }
        Err(e) => share_page(&cp, &ctx, &rec, e.status(), None, Some(e.to_string())).await,
    }
}

#[derive(Template)]
#[template(path = "console/delete.html")]
struct ConfirmDelete {
    l: Layout,
    name: String,
}

pub async fn confirm_delete(
    State(cp): State<Control>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let ctx = match signed(&cp, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = session_for(&cp, &ctx, &name, SessionOp::Delete).await {
        return r;
    }
    let l = layout(&cp, &ctx, "sessions").await;
    render(StatusCode::OK, &ConfirmDelete { l, name })
}

pub async fn delete(
    State(cp): State<Control>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (ctx, _) = match signed_form(&cp, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(r) = session_for(&cp, &ctx, &name, SessionOp::Delete).await {
        return r;
    }
    match ctx
        .acting("delete", cp.session_action(&name, Action::Delete, None))
        .await
    {
        Ok(_) => see_other("/ui/sessions?notice=deleted"),
        Err(e) => failed(&e),
    }
}

// ---- add a session ----

#[derive(Default)]
struct SessionForm {
    kind: String,
    name: String,
    url: String,
    remote_port: String,
    owner: String,
    workspace_port: String,
    slug: String,
    remote_host: String,
    custom_domain: String,
    https: bool,
    duration: String,
    idle_timeout: String,
    labels: String,
    public: bool,
}

#[derive(Template)]
#[template(path = "console/new_session.html")]
struct NewSessionPage {
    l: Layout,
    f: SessionForm,
    errors: HashMap<String, String>,
    groups: Vec<(String, bool)>,
}

impl NewSessionPage {
    /// The error to show next to `field` (`""`: above the form).
    fn err<S: AsRef<str>>(&self, field: S) -> Option<&str> {
        self.errors.get(field.as_ref()).map(String::as_str)
    }
}

async fn new_session_page(
    cp: &Control,
    ctx: &Ctx,
    f: SessionForm,
    chosen: &[String],
    errors: HashMap<String, String>,
    status: StatusCode,
) -> Response {
    let groups = match shareable(cp, &ctx.caller).await {
        Ok(g) => g
            .into_iter()
            .map(|g| {
                let on = chosen.contains(&g);
                (g, on)
            })
            .collect(),
        Err(e) => return failed(&e),
    };
    let l = layout(cp, ctx, "new").await;
    render(
        status,
        &NewSessionPage {
            l,
            f,
            errors,
            groups,
        },
    )
}

pub async fn new_session(State(cp): State<Control>, headers: HeaderMap) -> Response {
    let ctx = match signed(&cp, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !ctx.caller.may_write() {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "A read-only token cannot add sessions.",
        );
    }
    let f = SessionForm {
        kind: "tunnel".into(),
        remote_host: String::new(),
        ..SessionForm::default()
    };
    new_session_page(&cp, &ctx, f, &[], HashMap::new(), StatusCode::OK).await
}

/// The API's create body from the form: blank fields are absent, so the
/// API's defaults and its validation apply, and its messages are shown
/// next to the fields they name.
fn new_session_json(
    f: &SessionForm,
    owner: &str,
    groups: &[String],
) -> Result<serde_json::Value, (String, String)> {
    use serde_json::{json, Map, Value};
    let mut m = Map::new();
    m.insert("name".into(), json!(f.name.trim()));
    m.insert("owner".into(), json!(owner));
    m.insert(
        "kind".into(),
        json!(if f.kind == "link" { "link" } else { "tunnel" }),
    );
    let number = |field: &str, v: &str| -> Result<Option<Value>, (String, String)> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<u64>()
            .map(|n| Some(json!(n)))
            .map_err(|_| (field.to_string(), format!("{v:?} is not a whole number")))
    };
    if f.kind == "link" {
        m.insert("url".into(), json!(f.url.trim()));
    } else {
        match number("remote_port", &f.remote_port)? {
            Some(p) => m.insert("remote_port".into(), p),
            None => return Err(("remote_port".into(), "a tunnel needs a remote port".into())),
        };
        if let Some(p) = number("workspace_port", &f.workspace_port)? {
            m.insert("workspace_port".into(), p);
        }
        for (k, v) in [
            ("slug", &f.slug),
            ("remote_host", &f.remote_host),
            ("custom_domain", &f.custom_domain),
        ] {
            if !v.trim().is_empty() {
                m.insert(k.into(), json!(v.trim()));
            }
        }
        m.insert("https".into(), json!(f.https));
    }
    for (k, v) in [("duration", &f.duration), ("idle_timeout", &f.idle_timeout)] {
        if let Some(n) = number(k, v)? {
            m.insert(k.into(), n);
        }
    }
    let mut labels = Map::new();
    for pair in f.labels.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) => {
                labels.insert(k.trim().into(), json!(v.trim()));
            }
            None => return Err(("labels".into(), format!("{pair:?}: expected key=value"))),
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    m.insert("groups".into(), json!(groups));
    m.insert("public".into(), json!(f.public));
    Ok(Value::Object(m))
}

pub async fn create_session(
    State(cp): State<Control>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (ctx, fields) = match signed_form(&cp, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !ctx.caller.may_write() {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "A read-only token cannot add sessions.",
        );
    }
    let f = SessionForm {
        kind: fields.get("kind").to_string(),
        name: fields.get("name").to_string(),
        url: fields.get("url").to_string(),
        remote_port: fields.get("remote_port").to_string(),
        owner: fields.get("owner").to_string(),
        workspace_port: fields.get("workspace_port").to_string(),
        slug: fields.get("slug").to_string(),
        remote_host: fields.get("remote_host").to_string(),
        custom_domain: fields.get("custom_domain").to_string(),
        https: fields.get("https") == "true",
        duration: fields.get("duration").to_string(),
        idle_timeout: fields.get("idle_timeout").to_string(),
        labels: fields.get("labels").to_string(),
        public: fields.get("public") == "true",
    };
    let groups = fields.all("groups");
    // A user's sessions are their own, shared only with their groups.
    let owner = match ctx.caller.user() {
        Some(u) => u.to_string(),
        None => f.owner.trim().to_string(),
    };
    let mut errors = HashMap::new();
    if let Some(u) = ctx.caller.user() {
        let mine = user_groups(u, &cp.group_cache());
        let foreign: Vec<&str> = groups
            .iter()
            .filter(|g| !mine.contains(*g))
            .map(String::as_str)
            .collect();
        if !foreign.is_empty() {
            errors.insert(
                "groups".to_string(),
                format!(
                    "you may share only with groups you are in, not {}",
                    foreign.join(", ")
                ),
            );
        }
    }
    if errors.is_empty() {
        match new_session_json(&f, &owner, &groups).and_then(|v| {
            serde_json::from_value::<NewSession>(v).map_err(|e| (String::new(), e.to_string()))
        }) {
            Err((k, v)) => {
                errors.insert(k, v);
            }
            Ok(input) => match ctx.acting("create", cp.create_session(input)).await {
                Ok(_) => return see_other("/ui/sessions?notice=created"),
                Err(ControlError::Invalid(i)) => {
                    let known = [
                        "name",
                        "url",
                        "remote_port",
                        "owner",
                        "workspace_port",
                        "slug",
                        "remote_host",
                        "custom_domain",
                        "duration",
                        "idle_timeout",
                        "labels",
                        "groups",
                    ];
                    let field = if known.contains(&i.field.as_str()) {
                        i.field.clone()
                    } else {
                        String::new()
                    };
                    errors.insert(field, i.message.clone());
                }
                Err(e) => {
                    let field = match &e {
                        ControlError::Conflict(m) if m.contains("slug") => "slug",
                        ControlError::Conflict(m) if m.contains("custom_domain") => "custom_domain",
                        ControlError::Conflict(_) => "name",
                        _ => "",
                    };
                    errors.insert(field.to_string(), e.to_string());
                }
            },
        }
    }
    new_session_page(
        &cp,
        &ctx,
        f,
        &groups,
        errors,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}

// ---- operators' pages ----

/// The caller, if an operator; else the refusal.
async fn operator(cp: &Control, headers: &HeaderMap) -> Result<Ctx, Response> {
    let ctx = signed(cp, headers).await?;
    if !ctx.operator() {
        return Err(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This page is for operators.",
        ));
    }
    Ok(ctx)
}

struct EnvView {
    name: String,
    title: String,
    state: String,
    capacity: u64,
    reserved: u64,
    allocated: u64,
    available: u64,
    sessions: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "console/environments.html")]
struct Environments {
    l: Layout,
    envs: Vec<EnvView>,
}

pub async fn environments(
    State(cp): State<Control>,
    State(portal): State<std::sync::Arc<crate::workshop::Portal>>,
    headers: HeaderMap,
) -> Response {
    let ctx = match operator(&cp, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let envs = match portal.list_environments().await {
        Ok(e) => e,
        Err(e) => return failed(&e),
    };
    let live: Vec<SessionState> = SessionState::ALL
        .into_iter()
        .filter(|s| s.is_live())
        .collect();
    let all = SessionFilter {
        states: live,
        page: 1,
        per_page: 1000,
        ..SessionFilter::default()
    };
    let sessions = match cp.list_sessions(&all).await {
        Ok((s, _)) => s,
        Err(e) => return failed(&e),
    };
    let envs = envs
        .into_iter()
        .map(|e| EnvView {
            sessions: sessions
                .iter()
                .filter(|s| s.environment.as_deref() == Some(e.name.as_str()))
                .map(|s| (s.name.clone(), s.state.to_string()))
                .collect(),
            available: e.capacity.saturating_sub(e.allocated),
            title: e.workshop.title.clone(),
            state: format!("{:?}", e.state).to_lowercase(),
            capacity: e.capacity,
            reserved: e.reserved,
            allocated: e.allocated,
            name: e.name,
        })
        .collect();
    let l = layout(&cp, &ctx, "environments").await;
    render(StatusCode::OK, &Environments { l, envs })
}

#[derive(Template)]
#[template(path = "console/users.html")]
struct Users {
    l: Layout,
    users: Vec<(String, String, String)>,
    notice: Option<String>,
    error: Option<String>,
}

async fn users_page(
    cp: &Control,
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let users = match cp.list_users(None, 1, 1000).await {
        Ok((u, _)) => u
            .into_iter()
            .map(|u| {
                (
                    u.row.name,
                    u.row.email.unwrap_or_default(),
                    u.groups.join(", "),
                )
            })
            .collect(),
        Err(e) => return failed(&e),
    };
    let l = layout(cp, ctx, "users").await;
    render(
        status,
        &Users {
            l,
            users,
            notice,
            error,
        },
    )
}

pub async fn users(State(cp): State<Control>, headers: HeaderMap) -> Response {
    match operator(&cp, &headers).await {
        Ok(ctx) => users_page(&cp, &ctx, StatusCode::OK, None, None).await,
        Err(r) => r,
    }
}

/// The operator's form, checked: signed in, CSRF, allowed to write.
async fn operator_form(
    cp: &Control,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Ctx, Fields), Response> {
    let (ctx, fields) = signed_form(cp, headers, body).await?;
    if !ctx.operator() || !ctx.caller.may_write() {
        return Err(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "Only an admin token may change users and groups.",
        ));
    }
    Ok((ctx, fields))
}

pub async fn create_user(State(cp): State<Control>, headers: HeaderMap, body: Bytes) -> Response {
    let (ctx, fields) = match operator_form(&cp, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let email = Some(fields.get("email").trim().to_string()).filter(|e| !e.is_empty());
    let input = NewUser {
        name: fields.get("name").trim().to_string(),
        email,
        first_name: None,
        last_name: None,
    };
    match ctx.acting("create user", cp.create_user(input)).await {
        Ok(u) => {
            users_page(
                &cp,
                &ctx,
                StatusCode::OK,
                Some(format!("User {} created.", u.row.name)),
                None,
            )
            .await
        }
        Err(e) => users_page(&cp, &ctx, e.status(), None, Some(e.to_string())).await,
    }
}

#[derive(Template)]
#[template(path = "console/groups.html")]
struct Groups {
    l: Layout,
    groups: Vec<(String, Vec<String>)>,
    users: Vec<String>,
    notice: Option<String>,
    error: Option<String>,
}

async fn groups_page(
    cp: &Control,
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let groups = match cp.list_groups().await {
        Ok(g) => g.into_iter().map(|g| (g.name, g.members)).collect(),
        Err(e) => return failed(&e),
    };
    let users = match cp.list_users(None, 1, 1000).await {
        Ok((u, _)) => u.into_iter().map(|u| u.row.name).collect(),
        Err(e) => return failed(&e),
    };
    let l = layout(cp, ctx, "groups").await;
    render(
        status,
        &Groups {
            l,
            groups,
            users,
            notice,
            error,
        },
    )
}

pub async fn groups(State(cp): State<Control>, headers: HeaderMap) -> Response {
    match operator(&cp, &headers).await {
        Ok(ctx) => groups_page(&cp, &ctx, StatusCode::OK, None, None).await,
        Err(r) => r,
    }
}

pub async fn create_group(State(cp): State<Control>, headers: HeaderMap, body: Bytes) -> Response {
    let (ctx, fields) = match operator_form(&cp, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let input = NewGroup {
        name: fields.get("name").trim().to_string(),
        members: Vec::new(),
    };
    match ctx.acting("create group", cp.create_group(input)).await {
        Ok(g) => {
            groups_page(
                &cp,
                &ctx,
                StatusCode::OK,
                Some(format!("Group {} created.", g.name)),
                None,
            )
            .await
        }
        Err(e) => groups_page(&cp, &ctx, e.status(), None, Some(e.to_string())).await,
    }
}

pub async fn add_member(
    State(cp): State<Control>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    change_member(&cp, &headers, &group, &body, true).await
}

pub async fn remove_member(
    State(cp): State<Control>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    change_member(&cp, &headers, &group, &body, false).await
}

/// Adds the form's user to `group`, or removes them.
async fn change_member(
    cp: &Control,
    headers: &HeaderMap,
    group: &str,
    body: &Bytes,
    add: bool,
) -> Response {
    let (ctx, fields) = match operator_form(cp, headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let user = fields.get("user").trim().to_string();
    let done = if add {
        ctx.acting("add member", cp.add_member(group, &user)).await
    } else {
        ctx.acting("remove member", cp.remove_member(group, &user))
            .await
    };
    match done {
        Ok(_) => {
            let what = if add { "added to" } else { "removed from" };
            let notice = Some(format!("{user} {what} {group}."));
            groups_page(cp, &ctx, StatusCode::OK, notice, None).await
        }
        Err(e) => groups_page(cp, &ctx, e.status(), None, Some(e.to_string())).await,
    }
}
