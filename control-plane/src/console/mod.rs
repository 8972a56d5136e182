//! The web console (issue 19): server-rendered pages under `/ui/` on the
//! control-plane listener, for operators (signed in with an API token) and
//! users (signed in with a one-time console link).
//!
//! Why this shape: the pages are HTML rendered here from askama templates
//! (checked and compiled with the binary, escaped by default), plus htmx
//! (vendored, 0BSD, `assets/console/`) for the live parts: the search that
//! narrows the table as one types, paging, the mass actions' confirm and
//! results, and a poll every second that updates each row's status in place
//! (out-of-band swaps, so selections and keyboard focus stay). No Node
//! toolchain, no CDN, no inline script: the Content-Security-Policy allows
//! scripts and styles from this origin only.
//!
//! Every action goes through the same [`crate::permissions`] rules as the
//! API, and every change through the same control-plane operations, so the
//! audit log names the console's user as it names an API token.
//!
//! - [`signin`]: the console cookie and CSRF tokens.
//! - [`pages`]: the handlers and the templates' data.

pub mod pages;
pub mod signin;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::ApiState;

/// The Content-Security-Policy of every console answer: nothing but this
/// origin's own scripts, styles and requests; no frames, no inline code.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, to merge into the control-plane API's router.
pub fn router(state: ApiState) -> Router<ApiState> {
    Router::new()
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::permanent("/ui/") }),
        )
        .route("/ui/", get(pages::home))
        .route("/ui/login", post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/link/{token}", get(pages::redeem_link))
        .route("/ui/assets/{file}", get(pages::asset))
        .route("/ui/sessions", get(pages::sessions))
        .route("/ui/sessions/table", get(pages::sessions_table))
        .route("/ui/sessions/live", get(pages::sessions_live))
        .route(
            "/ui/sessions/new",
            get(pages::new_session).post(pages::create_session),
        )
        .route("/ui/sessions/bulk/confirm", post(pages::bulk_confirm))
        .route("/ui/sessions/bulk", post(pages::bulk_apply))
        .route("/ui/sessions/{name}", get(pages::detail))
        .route("/ui/sessions/{name}/open", get(pages::open))
        .route(
            "/ui/sessions/{name}/share",
            get(pages::share).post(pages::save_share),
        )
        .route(
            "/ui/sessions/{name}/delete",
            get(pages::confirm_delete).post(pages::delete),
        )
        .route("/ui/environments", get(pages::environments))
        .route("/ui/users", get(pages::users).post(pages::create_user))
        .route("/ui/groups", get(pages::groups).post(pages::create_group))
        .route("/ui/groups/{name}/add", post(pages::add_member))
        .route("/ui/groups/{name}/remove", post(pages::remove_member))
        .layer(middleware::from_fn_with_state(state, security_headers))
}

/// The headers every console answer carries.
async fn security_headers(
    axum::extract::State(_): axum::extract::State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let asset = req.uri().path().starts_with("/ui/assets/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if !asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A plain page with a title and a message, at `status`.
pub fn message(status: StatusCode, title: &str, message: &str) -> Response {
    use askama::Template;
    #[derive(Template)]
    #[template(path = "console/message.html")]
    struct Message<'a> {
        title: &'a str,
        message: &'a str,
    }
    match (Message { title, message }).render() {
        Ok(html) => (status, axum::response::Html(html)).into_response(),
        Err(_) => (status, message.to_string()).into_response(),
    }
}
