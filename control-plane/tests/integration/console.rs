//! The web console over HTTP (issue 19), and the users' permissions in the
//! API that it relies on: sign-in with a token and its refusal, the cookie's
//! attributes, CSRF on every form, the security headers, a read-only
//! token's pages, one-time console links, what a user may see and do
//! (tested at the API, with the console's cookie), mass actions with
//! per-row results, and each session's history. The same flows in a real
//! Chromium are in `tests/console_browser.rs`.

use std::net::SocketAddr;

use serde_json::{json, Value};
use testkit::server::{public_session, InProcess};
use testkit::{exchange, temp_dir, RawResponse};

/// A browser's view of the console: its cookies, sent on each request.
struct Browser {
    api: SocketAddr,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new(api: SocketAddr) -> Browser {
        Browser {
            api,
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        if self.cookies.is_empty() {
            return String::new();
        }
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("Cookie: {}\r\n", pairs.join("; "))
    }

    /// Keeps what `Set-Cookie` sets (and drops what it clears).
    fn take_cookies(&mut self, r: &RawResponse) {
        for c in r.all("set-cookie") {
            let first = c.split(';').next().unwrap_or("");
            let Some((k, v)) = first.split_once('=') else {
                continue;
            };
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() && !c.contains("Max-Age=0") {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
    }

    async fn send(&mut self, method: &str, path: &str, extra: &str, body: &str) -> RawResponse {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{}{extra}Content-Length: {}\r\n\r\n{body}",
            self.api,
            self.cookie_header(),
            body.len()
        );
        let r = exchange(self.api, req.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        self.take_cookies(&r);
        r
    }

    async fn get(&mut self, path: &str) -> RawResponse {
        self.send("GET", path, "", "").await
    }

    async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> RawResponse {
        let body = serde_urlencoded::to_string(fields).unwrap();
        self.send(
            "POST",
            path,
            "Content-Type: application/x-www-form-urlencoded\r\n",
            &body,
        )
        .await
    }

    /// An API call with the console's cookie (and its CSRF token, when
    /// given), as a script in the signed-in browser would make it.
    async fn api(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
        csrf: Option<&str>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut extra = String::new();
        if !body.is_empty() {
            extra.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = csrf {
            extra.push_str(&format!("X-CSRF-Token: {t}\r\n"));
        }
        let r = self.send(method, path, &extra, &body).await;
        let text = r.text();
        (
            r.status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Signs in with `token` through the sign-in form.
    async fn sign_in(&mut self, token: &str) -> RawResponse {
        let page = self.get("/ui/").await;
        assert_eq!(page.status, 200, "{}", page.text());
        let nonce = csrf_in(&page.text());
        self.post_form("/ui/login", &[("csrf", &nonce), ("token", token)])
            .await
    }

    /// The CSRF token of the page at `path`.
    async fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.text());
        csrf_in(&page.text())
    }
}

/// The value of the first `name="csrf"` field in `html`.
fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

async fn setup(name: &str) -> InProcess {
    let sg = InProcess::start(&temp_dir(name), "").await;
    for u in ["ann", "bob", "cat"] {
        let (s, v) = sg
            .api("POST", "/api/v1/users", Some(json!({"name": u})))
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "team", "members": ["ann", "bob"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sg
        .api("POST", "/api/v1/groups", Some(json!({"name": "ops"})))
        .await;
    assert_eq!(s, 201, "{v}");
    sg
}

async fn session(sg: &InProcess, name: &str, owner: &str, groups: &[&str]) {
    let mut body = public_session(name, 9);
    body["owner"] = json!(owner);
    body["public"] = json!(false);
    body["groups"] = json!(groups);
    body["duration"] = json!(3600);
    let (s, v) = sg.api("POST", "/api/v1/sessions", Some(body)).await;
    assert_eq!(s, 201, "{v}");
}

async fn state(sg: &InProcess, name: &str) -> String {
    let (s, v) = sg
        .api("GET", &format!("/api/v1/sessions/{name}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["state"].as_str().unwrap().to_string()
}

/// A console link for `user`, redeemed in a fresh browser.
async fn user_browser(sg: &InProcess, user: &str) -> Browser {
    let (s, v) = sg
        .api("POST", &format!("/api/v1/users/{user}/console-link"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let path = &url[url.find("/ui/link/").unwrap()..];
    let mut b = Browser::new(sg.api);
    let r = b.get(path).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/ui/sessions"));
    // The link works once.
    let mut again = Browser::new(sg.api);
    let r = again.get(path).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("already used"), "{}", r.text());
    b
}

#[tokio::test]
async fn a_token_signs_in_for_a_host_only_strict_cookie_and_a_wrong_one_is_refused() {
    let sg = setup("console-signin").await;
    let mut b = Browser::new(sg.api);
    // Not signed in: the sign-in page, with the security headers.
    let page = b.get("/ui/").await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page.text().contains("API token"));
    assert_eq!(b.get("/ui/sessions").await.header("location"), Some("/ui/"));

    let wrong = b.sign_in("not-the-token-at-all-0000").await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert!(
        wrong.text().contains("That token is not valid."),
        "{}",
        wrong.text()
    );
    assert!(!b.cookies.iter().any(|(k, _)| k == "sessiongate_console"));

    // A sign-in form posted from elsewhere (no nonce cookie) is refused.
    let mut forger = Browser::new(sg.api);
    let r = forger
        .post_form("/ui/login", &[("csrf", "x"), ("token", &sg.token)])
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r
        .all("set-cookie")
        .iter()
        .all(|c| !c.starts_with("sessiongate_console=")));

    let ok = b.sign_in(&sg.token).await;
    assert_eq!(ok.status, 303, "{}", ok.text());
    let cookie = ok
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("sessiongate_console="))
        .expect("the console cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        !cookie.to_ascii_lowercase().contains("domain="),
        "host-only: {cookie}"
    );
    assert!(
        !cookie.contains(&sg.token),
        "the token is not in the cookie: {cookie}"
    );
    let page = b.get("/ui/sessions").await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("Signed in as"), "{}", page.text());
    assert_eq!(page.header("cache-control"), Some("no-store"));

    // Signing out ends it.
    let csrf = csrf_in(&page.text());
    let r = b.post_form("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303);
    assert_eq!(b.get("/ui/sessions").await.header("location"), Some("/ui/"));
}

#[tokio::test]
async fn a_forged_post_is_refused_and_changes_nothing() {
    let sg = setup("console-csrf").await;
    session(&sg, "lab", "ann", &[]).await;
    let mut b = Browser::new(sg.api);
    assert_eq!(b.sign_in(&sg.token).await.status, 303);
    for csrf in ["", "forged", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let r = b
            .post_form("/ui/sessions/lab/delete", &[("csrf", csrf)])
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("CSRF"), "{}", r.text());
    }
    // The API with the console's cookie: a write needs the token too.
    let (s, v) = b.api("DELETE", "/api/v1/sessions/lab", None, None).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(state(&sg, "lab").await, "running");

    let csrf = b.csrf("/ui/sessions/lab/delete").await;
    let page = b.get("/ui/sessions/lab/delete").await;
    assert!(page
        .text()
        .contains("Are you sure you want to delete this session?"));
    let r = b
        .post_form("/ui/sessions/lab/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/ui/sessions?notice=deleted"));
    assert!(b
        .get("/ui/sessions?notice=deleted")
        .await
        .text()
        .contains("Session deleted."));
    assert_eq!(state(&sg, "lab").await, "deleted");
}

#[tokio::test]
async fn a_read_only_token_sees_the_pages_without_the_buttons_that_write() {
    let sg = setup("console-readonly").await;
    session(&sg, "lab", "ann", &[]).await;
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "dash", "kind": "readonly"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let mut b = Browser::new(sg.api);
    assert_eq!(b.sign_in(&token).await.status, 303);
    let page = b.get("/ui/sessions").await.text();
    assert!(page.contains("lab") && page.contains("read-only"), "{page}");
    for writes in [
        "Apply to selected",
        "Select all",
        "Add session",
        "/delete\"",
        "/share\"",
        "/open\"",
    ] {
        assert!(
            !page.contains(writes),
            "{writes:?} shown to a read-only token: {page}"
        );
    }
    let users = b.get("/ui/users").await.text();
    assert!(
        users.contains("ann") && !users.contains("Create user"),
        "{users}"
    );
    // A POST with its own valid CSRF token is still refused: 403.
    let csrf = csrf_in(&page);
    let r = b
        .post_form("/ui/sessions/lab/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = b
        .post_form(
            "/ui/sessions/bulk",
            &[("csrf", &csrf), ("action", "evict"), ("names", "lab")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(state(&sg, "lab").await, "running");
}

#[tokio::test]
async fn a_user_sees_and_does_only_what_the_api_lets_an_owner_or_member() {
    let sg = setup("console-users").await;
    session(&sg, "ann-private", "ann", &[]).await;
    session(&sg, "ann-shared", "ann", &["team"]).await;
    session(&sg, "bob-own", "bob", &[]).await;
    session(&sg, "cat-own", "cat", &[]).await;
    let mut bob = user_browser(&sg, "bob").await;
    let csrf = bob.csrf("/ui/sessions").await;
    let csrf = Some(csrf.as_str());

    // What bob sees: his own, and what is shared with his group.
    let (s, v) = bob.api("GET", "/api/v1/sessions", None, None).await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ann-shared", "bob-own"]);
    let page = bob.get("/ui/sessions").await.text();
    assert!(
        page.contains("ann-shared") && page.contains("bob-own"),
        "{page}"
    );
    assert!(
        !page.contains("ann-private") && !page.contains("cat-own"),
        "{page}"
    );
    assert_eq!(
        bob.api("GET", "/api/v1/sessions/ann-private", None, None)
            .await
            .0,
        404
    );
    assert_eq!(
        bob.api("GET", "/api/v1/sessions/ann-shared", None, None)
            .await
            .0,
        200
    );

    // An owner's actions on his own; not on a session only shared with him.
    let (s, v) = bob
        .api("POST", "/api/v1/sessions/bob-own/extend", None, csrf)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob
        .api("POST", "/api/v1/sessions/bob-own/keepalive", None, csrf)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob
        .api("DELETE", "/api/v1/sessions/ann-shared", None, csrf)
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only its owner"),
        "{v}"
    );
    let (s, v) = bob
        .api("POST", "/api/v1/sessions/bob-own/evict", None, csrf)
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = bob
        .api("POST", "/api/v1/sessions/bob-own/expire", None, csrf)
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = bob
        .api(
            "PATCH",
            "/api/v1/sessions/bob-own",
            Some(json!({"remote_port": 10})),
            csrf,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    // Nor in a batch: the batched patch is refused as the single one is.
    let (s, v) = bob
        .api(
            "PATCH",
            "/api/v1/sessions",
            Some(json!({"sessions": [{"name": "bob-own", "remote_port": 10}]})),
            csrf,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    // Sharing: with groups he is in only.
    let (s, v) = bob
        .api(
            "PUT",
            "/api/v1/sessions/bob-own/groups",
            Some(json!({"groups": ["team"]})),
            csrf,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob
        .api(
            "PUT",
            "/api/v1/sessions/bob-own/groups",
            Some(json!({"groups": ["ops"]})),
            csrf,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("ops"),
        "{v}"
    );
    // Creating: his own sessions only.
    let mut mine = public_session("bob-new", 9);
    mine["owner"] = json!("bob");
    let (s, v) = bob.api("POST", "/api/v1/sessions", Some(mine), csrf).await;
    assert_eq!(s, 201, "{v}");
    let mut theirs = public_session("for-ann", 9);
    theirs["owner"] = json!("ann");
    let (s, v) = bob
        .api("POST", "/api/v1/sessions", Some(theirs), csrf)
        .await;
    assert_eq!(s, 403, "{v}");
    // Opening: as himself, where he may.
    let (s, v) = bob
        .api(
            "POST",
            "/api/v1/sessions/ann-shared/access",
            Some(json!({"user": "bob"})),
            csrf,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob
        .api(
            "POST",
            "/api/v1/sessions/ann-shared/access",
            Some(json!({"user": "ann"})),
            csrf,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = bob
        .api(
            "POST",
            "/api/v1/sessions/cat-own/access",
            Some(json!({"user": "bob"})),
            csrf,
        )
        .await;
    assert_eq!(s, 404, "{v}");
    // A bulk request: what he may not do is refused per name.
    let (s, v) = bob
        .api(
            "POST",
            "/api/v1/sessions/bulk",
            Some(json!({"action": "delete", "names": ["bob-new", "ann-shared", "cat-own"]})),
            csrf,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ok: Vec<(&str, bool)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        ok,
        [("bob-new", true), ("ann-shared", false), ("cat-own", false)]
    );
    // Everything else of the API is for operators.
    for (method, path) in [
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/users"),
        ("GET", "/api/v1/tokens"),
        ("GET", "/api/v1/routes"),
        ("POST", "/api/v1/users/bob/console-link"),
    ] {
        let body = (method == "POST").then(|| json!({"name": "x"}));
        let (s, v) = bob.api(method, path, body, csrf).await;
        assert_eq!(s, 403, "{method} {path}: {v}");
    }
    assert_eq!(state(&sg, "ann-shared").await, "running");
    assert_eq!(state(&sg, "cat-own").await, "running");
    // The operators' pages are not for him either.
    assert_eq!(bob.get("/ui/users").await.status, 403);
}

#[tokio::test]
async fn a_mass_evict_says_per_row_what_was_done_and_what_was_skipped() {
    let sg = setup("console-bulk").await;
    for n in ["one", "two", "three"] {
        session(&sg, n, "ann", &[]).await;
    }
    let (s, v) = sg.api("POST", "/api/v1/sessions/three/pause", None).await;
    assert_eq!(s, 200, "{v}");
    let mut b = Browser::new(sg.api);
    assert_eq!(b.sign_in(&sg.token).await.status, 303);
    let csrf = b.csrf("/ui/sessions").await;
    let fields = [
        ("csrf", csrf.as_str()),
        ("action", "evict"),
        ("names", "one"),
        ("names", "two"),
        ("names", "three"),
    ];
    let confirm = b.post_form("/ui/sessions/bulk/confirm", &fields).await;
    assert_eq!(confirm.status, 200, "{}", confirm.text());
    let text = confirm.text();
    assert!(
        text.contains("2 of the 3 selected sessions will be evicted; 1 will be skipped"),
        "{text}"
    );
    assert!(
        text.contains("<li>three: ") && text.contains("cannot evict a session that is paused"),
        "{text}"
    );
    // Nothing happens before the confirmation.
    assert_eq!(state(&sg, "one").await, "running");
    let done = b.post_form("/ui/sessions/bulk", &fields).await;
    assert_eq!(done.status, 200, "{}", done.text());
    let text = done.text();
    assert!(text.contains("Evict: 2 done, 1 skipped"), "{text}");
    assert!(
        text.contains("one: evicted") && text.contains("two: evicted"),
        "{text}"
    );
    assert!(
        text.contains("id=\"result-three\">three: skipped: ")
            && text.contains("cannot evict a session that is paused"),
        "{text}"
    );
    assert_eq!(state(&sg, "one").await, "evicted");
    assert_eq!(state(&sg, "three").await, "paused");

    // The session's page tells its history: who did what.
    let page = b.get("/ui/sessions/one").await.text();
    let history = &page[page.find("id=\"history\"").unwrap()..];
    assert!(
        history.contains("<td>create</td><td>token:admin</td><td>state running</td>"),
        "{history}"
    );
    assert!(
        history.contains("<td>evict</td><td>token:admin</td><td>state evicted</td>"),
        "{history}"
    );
}

#[tokio::test]
async fn a_tunnel_and_a_link_are_added_through_the_form_and_errors_show_by_their_field() {
    let sg = setup("console-add").await;
    let mut ann = user_browser(&sg, "ann").await;
    let csrf = ann.csrf("/ui/sessions/new").await;
    let form = ann.get("/ui/sessions/new").await.text();
    for words in [
        "Workspace Port",
        "Slug",
        "Remote host",
        "Application uses HTTPS?",
        "Custom domain",
    ] {
        assert!(
            form.to_lowercase().contains(&words.to_lowercase()),
            "{words}: {form}"
        );
    }
    // A tunnel without a remote port: the error is next to that field.
    let r = ann
        .post_form(
            "/ui/sessions/new",
            &[("csrf", &csrf), ("kind", "tunnel"), ("name", "nb")],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("id=\"remote_port-error\""),
        "{}",
        r.text()
    );
    let r = ann
        .post_form(
            "/ui/sessions/new",
            &[
                ("csrf", &csrf),
                ("kind", "tunnel"),
                ("name", "nb"),
                ("remote_port", "8888"),
                ("groups", "team"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let r = ann
        .post_form(
            "/ui/sessions/new",
            &[
                ("csrf", &csrf),
                ("kind", "link"),
                ("name", "docs"),
                ("url", "https://example.org/docs"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let (s, v) = sg.api("GET", "/api/v1/sessions/nb", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["owner"].as_str(), v["remote_port"].as_u64()),
        (Some("ann"), Some(8888))
    );
    assert_eq!(v["groups"], json!(["team"]));
    let (s, v) = sg.api("GET", "/api/v1/sessions/docs", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["kind"], "link");
    // Sharing with a group she is not in is refused by the form too.
    let r = ann
        .post_form(
            "/ui/sessions/new",
            &[
                ("csrf", &csrf),
                ("kind", "tunnel"),
                ("name", "nb2"),
                ("remote_port", "8888"),
                ("groups", "ops"),
            ],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("not ops"), "{}", r.text());
    // And sharing afterwards says so.
    let r = ann
        .post_form("/ui/sessions/nb/share", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("Permission updated successfully."),
        "{}",
        r.text()
    );
    let (_, v) = sg.api("GET", "/api/v1/sessions/nb", None).await;
    assert_eq!(v["groups"], json!([]));
}

#[tokio::test]
async fn with_console_portal_the_console_is_on_the_portal_host_through_the_gateway() {
    let sg = InProcess::start(&temp_dir("console-portal"), "[console]\nportal = true\n").await;
    let (s, v) = sg
        .api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    assert_eq!(s, 201, "{v}");
    session(&sg, "lab", "ann", &[]).await;
    // The console link points at the portal host, on the gateway's port.
    let (s, v) = sg.api("POST", "/api/v1/users/ann/console-link", None).await;
    assert_eq!(s, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let want = format!("http://localhost:{}/ui/link/", sg.gateway.port());
    assert!(url.starts_with(&want), "{url} should start with {want}");
    // Through the gateway, with the portal host: signed in, and the pages.
    let mut b = Browser::new(sg.gateway);
    let path = &url[url.find("/ui/link/").unwrap()..];
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let r = exchange(sg.gateway, req.as_bytes()).await.unwrap();
    assert_eq!(r.status, 303, "{}", r.text());
    b.take_cookies(&r);
    assert!(
        b.cookies.iter().any(|(k, _)| k == "sessiongate_console"),
        "the console cookie came through the gateway: {:?}",
        r.headers
    );
    let req = format!(
        "GET /ui/sessions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{}\r\n",
        b.cookie_header()
    );
    let page = exchange(sg.gateway, req.as_bytes()).await.unwrap();
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("row-lab"), "{}", page.text());
    // A session may not take the console's slug.
    let mut clash = public_session("clash", 9);
    clash["slug"] = json!("/ui");
    let (s, v) = sg.api("POST", "/api/v1/sessions", Some(clash)).await;
    assert_eq!(s, 409, "{v}");
}

#[tokio::test]
async fn operators_create_users_and_groups_and_change_members_from_the_console() {
    let sg = setup("console-directory").await;
    let mut b = Browser::new(sg.api);
    assert_eq!(b.sign_in(&sg.token).await.status, 303);
    let csrf = b.csrf("/ui/users").await;
    let r = b
        .post_form(
            "/ui/users",
            &[
                ("csrf", &csrf),
                ("name", "dan"),
                ("email", "dan@example.org"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("User dan created."), "{}", r.text());
    let r = b
        .post_form("/ui/users", &[("csrf", &csrf), ("name", "dan")])
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("id=\"form-error\""), "{}", r.text());
    let r = b
        .post_form("/ui/groups", &[("csrf", &csrf), ("name", "lab-staff")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = b
        .post_form(
            "/ui/groups/lab-staff/add",
            &[("csrf", &csrf), ("user", "dan")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("dan added to lab-staff."), "{}", r.text());
    let (s, v) = sg.api("GET", "/api/v1/groups/lab-staff", None).await;
    assert_eq!((s, &v["members"]), (200, &json!(["dan"])), "{v}");
    let r = b
        .post_form(
            "/ui/groups/lab-staff/add",
            &[("csrf", &csrf), ("user", "nobody")],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let r = b
        .post_form(
            "/ui/groups/lab-staff/remove",
            &[("csrf", &csrf), ("user", "dan")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, v) = sg.api("GET", "/api/v1/groups/lab-staff", None).await;
    assert_eq!(v["members"], json!([]), "{v}");
    // A forged form changes nothing.
    let r = b
        .post_form(
            "/ui/groups/team/remove",
            &[("csrf", "forged"), ("user", "bob")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let (_, v) = sg.api("GET", "/api/v1/groups/team", None).await;
    assert_eq!(v["members"], json!(["ann", "bob"]), "{v}");
}

#[tokio::test]
async fn over_https_through_a_gateway_the_console_cookie_is_secure() {
    let sg = setup("console-secure").await;
    let (s, v) = sg.api("POST", "/api/v1/users/ann/console-link", None).await;
    assert_eq!(s, 200, "{v}");
    let url = v["url"].as_str().unwrap();
    let path = &url[url.find("/ui/link/").unwrap()..];
    let mut b = Browser::new(sg.api);
    let r = b
        .send("GET", path, "X-Forwarded-Proto: https\r\n", "")
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = r
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("sessiongate_console="))
        .expect("the console cookie");
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    // Over plain HTTP it cannot be (the browser would drop it).
    let (_, v) = sg.api("POST", "/api/v1/users/ann/console-link", None).await;
    let url = v["url"].as_str().unwrap();
    let r = Browser::new(sg.api)
        .get(&url[url.find("/ui/link/").unwrap()..])
        .await;
    assert!(
        r.all("set-cookie").iter().all(|c| !c.contains("Secure")),
        "{:?}",
        r.headers
    );
}
