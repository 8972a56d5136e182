//! Issue 16, part 1: the workshop API's tokens and paths as the training
//! portal's provider, django-oauth-toolkit 2.3.0, has them: revocation
//! (RFC 7009), refresh rotation, the client's credentials in the form body
//! as well as in HTTP Basic, and the redirect from a path without its
//! trailing slash (Django's `APPEND_SLASH`). Against `sessiongate serve` in
//! process, over real connections.

use std::net::SocketAddr;

use base64::Engine as _;
use serde_json::Value;
use testkit::server::InProcess;
use testkit::{exchange, temp_dir, RawResponse};

const WORKSHOP: &str = "[workshop]\nclient_id = \"portal-client\"\n\
    client_secret = \"portal-secret\"\nrobot_username = \"robot@portal\"\n\
    robot_password = \"robot-pass\"\nindex_urls = [\"https://hub.test\"]\n";

const PASSWORD_GRANT: &str = "grant_type=password&username=robot%40portal&password=robot-pass";

/// A protected workshop endpoint, to see whether an access token works.
const CATALOG: &str = "/workshops/catalog/environments/";

/// `Authorization: Basic` for `id:secret`, as a header line.
fn basic(id: &str, secret: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Authorization: Basic {b}\r\n")
}

fn portal_basic() -> String {
    basic("portal-client", "portal-secret")
}

/// One request on a fresh connection to `addr`, for `Host: host`, with
/// `headers` (lines ending in `\r\n`) and `body`.
async fn send(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> RawResponse {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, req.as_bytes()).await.unwrap()
}

/// A form POST to the control-plane listener.
async fn post_form(sg: &InProcess, path: &str, headers: &str, form: &str) -> RawResponse {
    let headers = format!("{headers}Content-Type: application/x-www-form-urlencoded\r\n");
    send(sg.api, "portal.test", "POST", path, &headers, form).await
}

fn json(r: &RawResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// The status and the OAuth2 error code of an answer.
fn oauth_error(r: &RawResponse) -> (u16, String) {
    (
        r.status,
        json(r)["error"].as_str().unwrap_or("").to_string(),
    )
}

/// A new access and refresh token from the password grant.
async fn password_grant(sg: &InProcess) -> (String, String) {
    let r = post_form(sg, "/oauth2/token/", &portal_basic(), PASSWORD_GRANT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = json(&r);
    (
        t["access_token"].as_str().unwrap().to_string(),
        t["refresh_token"].as_str().unwrap().to_string(),
    )
}

/// The status of a catalog GET with this bearer token.
async fn bearer_status(sg: &InProcess, token: &str) -> u16 {
    let auth = format!("Authorization: Bearer {token}\r\n");
    send(sg.api, "portal.test", "GET", CATALOG, &auth, "")
        .await
        .status
}

/// The status and error code of a refresh grant with this refresh token.
async fn refresh(sg: &InProcess, refresh_token: &str) -> RawResponse {
    let form = format!("grant_type=refresh_token&refresh_token={refresh_token}");
    post_form(sg, "/oauth2/token/", &portal_basic(), &form).await
}

async fn revoke(sg: &InProcess, headers: &str, form: &str) -> RawResponse {
    post_form(sg, "/oauth2/revoke-token/", headers, form).await
}

/// 200 with an empty body: RFC 7009 §2.2's answer.
fn revoked(r: &RawResponse) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "a body: {}", r.text());
}

#[tokio::test]
async fn revoking_an_access_token_ends_it_and_leaves_its_refresh_token_usable() {
    let sg = InProcess::start(&temp_dir("ws-revoke-access"), WORKSHOP).await;
    let (access, refresh_token) = password_grant(&sg).await;
    assert_eq!(bearer_status(&sg, &access).await, 200);

    revoked(&revoke(&sg, &portal_basic(), &format!("token={access}")).await);
    assert_eq!(bearer_status(&sg, &access).await, 401);
    // As in django-oauth-toolkit, an access token's revocation is its own:
    // the refresh token issued with it still renews.
    let r = refresh(&sg, &refresh_token).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_it_and_its_access_token() {
    let sg = InProcess::start(&temp_dir("ws-revoke-refresh"), WORKSHOP).await;
    let (access, refresh_token) = password_grant(&sg).await;
    let (other_access, _) = password_grant(&sg).await;

    let form = format!("token={refresh_token}&token_type_hint=refresh_token");
    revoked(&revoke(&sg, &portal_basic(), &form).await);
    assert_eq!(bearer_status(&sg, &access).await, 401);
    assert_eq!(
        oauth_error(&refresh(&sg, &refresh_token).await),
        (400, "invalid_grant".to_string())
    );
    // Another grant's token is not touched.
    assert_eq!(bearer_status(&sg, &other_access).await, 200);
}

#[tokio::test]
async fn revocation_finds_the_token_whatever_its_hint_says() {
    let sg = InProcess::start(&temp_dir("ws-revoke-hint"), WORKSHOP).await;
    // RFC 7009 §2.2: a wrong hint widens the search; an unknown one is
    // ignored.
    for hint in ["refresh_token", "something_else"] {
        let (access, _) = password_grant(&sg).await;
        let form = format!("token={access}&token_type_hint={hint}");
        revoked(&revoke(&sg, &portal_basic(), &form).await);
        assert_eq!(bearer_status(&sg, &access).await, 401, "hint {hint}");
    }
    let (access, refresh_token) = password_grant(&sg).await;
    let form = format!("token={refresh_token}&token_type_hint=access_token");
    revoked(&revoke(&sg, &portal_basic(), &form).await);
    assert_eq!(bearer_status(&sg, &access).await, 401);
}

#[tokio::test]
async fn revoking_an_unknown_or_already_revoked_token_is_200_with_an_empty_body() {
    let sg = InProcess::start(&temp_dir("ws-revoke-unknown"), WORKSHOP).await;
    revoked(&revoke(&sg, &portal_basic(), "token=never-issued").await);
    let (access, _) = password_grant(&sg).await;
    let form = format!("token={access}");
    revoked(&revoke(&sg, &portal_basic(), &form).await);
    revoked(&revoke(&sg, &portal_basic(), &form).await);
}

#[tokio::test]
async fn revocation_takes_the_client_in_the_form_even_beside_a_bearer_header() {
    let sg = InProcess::start(&temp_dir("ws-revoke-body"), WORKSHOP).await;
    // The lookup service: the client in the form, no Authorization.
    let (access, _) = password_grant(&sg).await;
    let form = format!("client_id=portal-client&client_secret=portal-secret&token={access}");
    revoked(&revoke(&sg, "", &form).await);
    assert_eq!(bearer_status(&sg, &access).await, 401);
    // The Educates CLI: the same form, with the token it revokes also sent
    // as a bearer token, which is no client authentication.
    let (access, _) = password_grant(&sg).await;
    let form = format!("client_id=portal-client&client_secret=portal-secret&token={access}");
    let bearer = format!("Authorization: Bearer {access}\r\n");
    revoked(&revoke(&sg, &bearer, &form).await);
    assert_eq!(bearer_status(&sg, &access).await, 401);
}

#[tokio::test]
async fn revocation_by_a_wrong_client_is_401_invalid_client_and_revokes_nothing() {
    let sg = InProcess::start(&temp_dir("ws-revoke-client"), WORKSHOP).await;
    let (access, _) = password_grant(&sg).await;
    let token = format!("token={access}");
    let with_client =
        |id: &str, secret: &str| format!("client_id={id}&client_secret={secret}&{token}");
    for (what, headers, form) in [
        (
            "wrong Basic secret",
            basic("portal-client", "wrong"),
            token.clone(),
        ),
        (
            "unknown Basic client",
            basic("someone", "portal-secret"),
            token.clone(),
        ),
        (
            "malformed Basic",
            "Authorization: Basic !!!\r\n".to_string(),
            token.clone(),
        ),
        (
            "Basic without a colon",
            "Authorization: Basic cG9ydGFs\r\n".to_string(),
            token.clone(),
        ),
        (
            "wrong form secret",
            String::new(),
            with_client("portal-client", "wrong"),
        ),
        // The client is confidential: its id alone is no authentication.
        (
            "client_id alone",
            String::new(),
            format!("client_id=portal-client&{token}"),
        ),
        ("no client", String::new(), token.clone()),
        (
            "a bearer token only",
            format!("Authorization: Bearer {access}\r\n"),
            token.clone(),
        ),
    ] {
        let r = revoke(&sg, &headers, &form).await;
        assert_eq!(
            oauth_error(&r),
            (401, "invalid_client".to_string()),
            "{what}"
        );
        assert!(r.header("www-authenticate").is_some(), "{what}");
        assert_eq!(bearer_status(&sg, &access).await, 200, "{what} revoked it");
    }
}

#[tokio::test]
async fn revocation_without_a_token_is_400_invalid_request() {
    let sg = InProcess::start(&temp_dir("ws-revoke-missing"), WORKSHOP).await;
    for form in ["", "token=", "token_type_hint=access_token"] {
        let r = revoke(&sg, &portal_basic(), form).await;
        assert_eq!(
            oauth_error(&r),
            (400, "invalid_request".to_string()),
            "{form:?}"
        );
        let description = json(&r)["error_description"].as_str().unwrap().to_string();
        assert!(description.contains("token"), "{description}");
    }
}

#[tokio::test]
async fn wrong_client_secrets_at_revocation_count_against_the_brute_force_limit() {
    let config = format!(
        "{WORKSHOP}[control_plane]\nmax_auth_failures = 3\nauth_failure_window_secs = 600\n"
    );
    let sg = InProcess::start(&temp_dir("ws-revoke-brute"), &config).await;
    let (access, _) = password_grant(&sg).await;
    let form = format!("token={access}");
    // Unknown tokens are no guesses: every answer is the same 200.
    for i in 0..5 {
        revoked(&revoke(&sg, &portal_basic(), &format!("token=guess-{i}")).await);
    }
    for _ in 0..3 {
        let r = revoke(&sg, &basic("portal-client", "guess"), &form).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // Past the limit the right secret is not looked at, here or at the
    // token endpoint: one budget for the portal's credentials.
    let r = revoke(&sg, &portal_basic(), &form).await;
    assert_eq!(oauth_error(&r), (429, "too_many_failures".to_string()));
    assert!(r.header("retry-after").is_some());
    let r = post_form(&sg, "/oauth2/token/", &portal_basic(), PASSWORD_GRANT).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(bearer_status(&sg, &access).await, 200);
}

#[tokio::test]
async fn refresh_grant_rotates_the_refresh_token_and_ends_the_old_access_token() {
    let sg = InProcess::start(&temp_dir("ws-rotate"), WORKSHOP).await;
    let (old_access, old_refresh) = password_grant(&sg).await;

    let r = refresh(&sg, &old_refresh).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = json(&r);
    let new_access = t["access_token"].as_str().unwrap();
    let new_refresh = t["refresh_token"].as_str().unwrap();
    assert_ne!(new_refresh, old_refresh);
    assert_ne!(new_access, old_access);
    assert_eq!(t["expires_in"], 36000);

    assert_eq!(bearer_status(&sg, &old_access).await, 401);
    assert_eq!(bearer_status(&sg, new_access).await, 200);
    assert_eq!(
        oauth_error(&refresh(&sg, &old_refresh).await),
        (400, "invalid_grant".to_string())
    );
    // The old refresh token's failure changed nothing: the new pair works,
    // and rotates in turn.
    assert_eq!(bearer_status(&sg, new_access).await, 200);
    let r = refresh(&sg, new_refresh).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(bearer_status(&sg, new_access).await, 401);
}

#[tokio::test]
async fn token_endpoint_takes_the_client_in_the_form_body() {
    let sg = InProcess::start(&temp_dir("ws-token-body"), WORKSHOP).await;
    let client = "client_id=portal-client&client_secret=portal-secret";
    let r = post_form(
        &sg,
        "/oauth2/token/",
        "",
        &format!("{PASSWORD_GRANT}&{client}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // RFC 6749 §5.1: not to be cached.
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let t = json(&r);
    let access = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(bearer_status(&sg, &access).await, 200);

    // A bearer header beside the form's credentials does not get in the way.
    let bearer = format!("Authorization: Bearer {access}\r\n");
    let r = post_form(
        &sg,
        "/oauth2/token/",
        &bearer,
        &format!("{PASSWORD_GRANT}&{client}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The refresh grant, as the portal's documentation sends it.
    let form = format!(
        "grant_type=refresh_token&refresh_token={}&{client}",
        t["refresh_token"].as_str().unwrap()
    );
    let r = post_form(&sg, "/oauth2/token/", "", &form).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The Basic scheme in any case.
    let lower = portal_basic().replace("Basic", "basic");
    let r = post_form(&sg, "/oauth2/token/", &lower, PASSWORD_GRANT).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn token_endpoint_refuses_a_client_id_without_its_secret() {
    let sg = InProcess::start(&temp_dir("ws-token-public"), WORKSHOP).await;
    // DOT lets a public client in on its id alone; this one is confidential.
    let form = format!("{PASSWORD_GRANT}&client_id=portal-client");
    let r = post_form(&sg, "/oauth2/token/", "", &form).await;
    assert_eq!(oauth_error(&r), (401, "invalid_client".to_string()));
    let form = format!("{PASSWORD_GRANT}&client_id=portal-client&client_secret=wrong");
    let r = post_form(&sg, "/oauth2/token/", "", &form).await;
    assert_eq!(oauth_error(&r), (401, "invalid_client".to_string()));
}

/// Every workshop route, without its trailing slash, with a query string,
/// with what each method answers.
const SLASHLESS: &[&str] = &[
    "/oauth2/token",
    "/oauth2/revoke-token",
    "/workshops/environment/lab-w01/request",
    "/workshops/session/lab-w01-s001/activate",
    "/workshops/user/someone/sessions",
    "/workshops/catalog/environments",
];

#[tokio::test]
async fn a_workshop_path_without_its_slash_answers_get_and_head_with_301_to_it() {
    let sg = InProcess::start(&temp_dir("ws-slash-get"), WORKSHOP).await;
    for path in SLASHLESS {
        for method in ["GET", "HEAD"] {
            let target = format!("{path}?index_url=https%3A%2F%2Fhub.test%2F&a=1&a=2");
            let r = send(sg.api, "portal.test", method, &target, "", "").await;
            assert_eq!(r.status, 301, "{method} {target}: {}", r.text());
            assert_eq!(
                r.header("location"),
                Some(format!("{path}/?index_url=https%3A%2F%2Fhub.test%2F&a=1&a=2").as_str()),
                "{method} {target}"
            );
        }
        // No query: none added.
        let r = send(sg.api, "portal.test", "GET", path, "", "").await;
        assert_eq!(r.header("location"), Some(format!("{path}/").as_str()));
    }
}

#[tokio::test]
async fn a_workshop_path_without_its_slash_answers_other_methods_with_308_which_keeps_the_body() {
    let sg = InProcess::start(&temp_dir("ws-slash-post"), WORKSHOP).await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = send(sg.api, "portal.test", method, "/oauth2/token?x=1", "", "").await;
        assert_eq!(r.status, 308, "{method}: {}", r.text());
        assert_eq!(r.header("location"), Some("/oauth2/token/?x=1"));
    }
    // A client that follows the 308 sends the same POST again, body and all.
    let headers = format!(
        "{}Content-Type: application/x-www-form-urlencoded\r\n",
        portal_basic()
    );
    let r = send(
        sg.api,
        "portal.test",
        "POST",
        "/oauth2/token",
        &headers,
        PASSWORD_GRANT,
    )
    .await;
    assert_eq!(r.status, 308);
    let next = r.header("location").unwrap().to_string();
    let r = send(
        sg.api,
        "portal.test",
        "POST",
        &next,
        &headers,
        PASSWORD_GRANT,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(json(&r)["access_token"].is_string());
}

#[tokio::test]
async fn a_path_whose_slash_form_is_no_workshop_route_stays_404() {
    let sg = InProcess::start(&temp_dir("ws-slash-404"), WORKSHOP).await;
    for path in [
        "/oauth2/authorize",
        "/oauth2",
        "/workshops",
        "/workshops/catalog/nothing",
        "/workshops/environment/lab-w01/nothing",
        "/workshops/environment/lab-w01",
        "/workshops/session/lab-w01-s001/activate/extra",
    ] {
        let r = send(sg.api, "portal.test", "GET", path, "", "").await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(r.header("location").is_none(), "{path}");
        // The gateway's portal host: the same.
        let r = send(sg.gateway, "localhost", "GET", path, "", "").await;
        assert_eq!(r.status, 404, "{path} on the portal host: {}", r.text());
        assert!(r.header("location").is_none(), "{path} on the portal host");
    }
}

#[tokio::test]
async fn the_portal_host_redirects_a_workshop_path_without_its_slash_too() {
    let sg = InProcess::start(&temp_dir("ws-slash-portal"), WORKSHOP).await;
    let r = send(
        sg.gateway,
        "localhost",
        "GET",
        "/workshops/catalog/environments?state=RUNNING",
        "",
        "{}",
    )
    .await;
    assert_eq!(r.status, 301, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("/workshops/catalog/environments/?state=RUNNING")
    );
    let r = send(
        sg.gateway,
        "localhost",
        "POST",
        "/oauth2/revoke-token",
        "",
        "",
    )
    .await;
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(r.header("location"), Some("/oauth2/revoke-token/"));
}
