//! OpenID Connect sign-in against a real provider: panva's oidc-provider
//! (npm, certified) run by node on a loopback port (`testkit::oidc`), its users in a JSON file the
//! tests rewrite (who signs in next, and their groups). The browser is the
//! cookie-jar [`Browser`]: every `*.localhost` name reaches the gateway, and
//! `127.0.0.1:PORT` the provider.

use std::path::PathBuf;

use serde_json::json;
use testkit::oidc::Provider;
use testkit::pebble::free_port;
use testkit::server::InProcess;
use testkit::{temp_dir, Origin, Reply};

use crate::common::jar::{Browser, Page};

use testkit::oidc::SECRET;

/// sessiongate with `[oidc]` for a provider on `port` (which may be down),
/// and the session `lab` shared with group `physics` (owned by carol), and
/// `lab2` likewise, both in front of one origin.
async fn setup(name: &str, port: u16) -> (InProcess, Origin, PathBuf) {
    setup_with(name, port, "").await
}

async fn setup_with(name: &str, port: u16, extra: &str) -> (InProcess, Origin, PathBuf) {
    let root = temp_dir(name);
    let config = format!(
        "[oidc]\nissuer = \"http://127.0.0.1:{port}\"\nclient_id = \"sessiongate\"\n\
         client_secret = \"{SECRET}\"\ndisplay_name = \"Test IdP\"\n{extra}"
    );
    let sg = InProcess::start(&root, &config).await;
    let origin = Origin::builder("oidc-origin")
        .reply(Reply::Page(
            "<!doctype html><title>lab</title><p>the lab</p>",
        ))
        .start();
    for body in [json!({"name": "carol"})] {
        let (s, v) = sg.api("POST", "/api/v1/users", Some(body)).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/groups",
            Some(json!({"name": "physics", "members": []})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    for session in ["lab", "lab2"] {
        let (s, v) = sg
            .api(
                "POST",
                "/api/v1/sessions",
                Some(
                    json!({"name": session, "owner": "carol", "groups": ["physics"],
                            "remote_host": "127.0.0.1", "remote_port": origin.addr.port()}),
                ),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    (sg, origin, root)
}

fn callback(sg: &InProcess) -> String {
    format!(
        "http://localhost:{}/_sessiongate/oidc/callback",
        sg.gateway.port()
    )
}

fn session_url(sg: &InProcess, session: &str) -> String {
    format!("http://{session}.localhost:{}/", sg.gateway.port())
}

/// Follows redirects from `url` until the next one would go to the
/// callback; returns that callback URL, not yet requested.
async fn until_callback(b: &Browser, sg: &InProcess, url: &str) -> String {
    let mut page = b.get(url).await;
    for _ in 0..10 {
        let location = page
            .header("location")
            .unwrap_or_else(|| {
                panic!(
                    "no redirect from {}: {} {}",
                    page.url, page.status, page.body
                )
            })
            .to_string();
        let next = page.url.join(&location).unwrap().to_string();
        if next.starts_with(&callback(sg)) {
            return next;
        }
        page = b.get(&next).await;
    }
    panic!("no callback reached from {url}");
}

async fn count(sg: &InProcess, result: &str) -> u64 {
    let text = testkit::http(sg.api, "127.0.0.1", "/metrics", "").await.1;
    let series = format!("sessiongate_oidc_sign_ins_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

fn assert_lab(page: &Page) {
    assert_eq!(page.status, 200, "{} {}", page.url, page.body);
    assert!(page.body.contains("the lab"), "{}", page.body);
}

#[tokio::test]
async fn group_members_get_in_others_get_403_and_access_follows_the_providers_groups() {
    let port = free_port();
    let (sg, _origin, root) = setup("oidc-groups", port).await;
    let idp = Provider::start(&root, port, &callback(&sg));

    // alice, in physics at the provider, unknown to sessiongate: created,
    // put in physics, let in; the hand-off left a host-only cookie.
    let alice = Browser::new(sg.gateway);
    let page = alice.follow(&session_url(&sg, "lab")).await;
    assert_lab(&page);
    assert_eq!(page.url.host_str(), Some("lab.localhost"));
    let cookies = alice.cookies();
    let gate: Vec<_> = cookies.iter().filter(|c| c.0 == "sessiongate").collect();
    assert_eq!(gate.len(), 1, "{cookies:?}");
    assert_eq!(
        gate[0].2, "lab.localhost",
        "host-only, never the parent domain"
    );
    let (s, v) = sg.api("GET", "/api/v1/users/alice", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["groups"], json!(["physics"]), "{v}");
    // Signed in, the next visit goes straight in.
    assert_lab(&alice.get(&session_url(&sg, "lab")).await);

    // bob, in chemistry only: 403, naming why.
    idp.set("bob", &[("alice", &["physics"]), ("bob", &["chemistry"])]);
    let bob = Browser::new(sg.gateway);
    let page = bob.follow(&session_url(&sg, "lab")).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body.contains("bob is neither the owner"),
        "{}",
        page.body
    );
    assert!(
        !bob.cookies().iter().any(|c| c.0 == "sessiongate"),
        "no gateway cookie for a refused user"
    );

    // The provider puts bob in physics and takes alice out; each signs in
    // again (a new browser each): access follows.
    idp.set("bob", &[("alice", &[]), ("bob", &["chemistry", "physics"])]);
    assert_lab(
        &Browser::new(sg.gateway)
            .follow(&session_url(&sg, "lab"))
            .await,
    );
    idp.set(
        "alice",
        &[("alice", &[]), ("bob", &["chemistry", "physics"])],
    );
    let page = Browser::new(sg.gateway)
        .follow(&session_url(&sg, "lab"))
        .await;
    assert_eq!(page.status, 403, "{}", page.body);
    let (_, v) = sg.api("GET", "/api/v1/users/alice", None).await;
    assert_eq!(v["groups"], json!([]), "{v}");
    assert_eq!(count(&sg, "ok").await, 2);
    assert_eq!(count(&sg, "forbidden").await, 2);
    drop(idp);
}

#[tokio::test]
async fn a_changed_state_and_a_replayed_code_are_refused() {
    let port = free_port();
    let (sg, _origin, root) = setup("oidc-tamper", port).await;
    let _idp = Provider::start(&root, port, &callback(&sg));
    let b = Browser::new(sg.gateway);
    let cb = until_callback(&b, &sg, &session_url(&sg, "lab")).await;
    let state = url::Url::parse(&cb)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();

    let tampered = cb.replace(&format!("state={state}"), "state=0123456789abcdef");
    let page = b.get(&tampered).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("state does not match"), "{}", page.body);

    // The real callback still works once...
    let page = b.follow(&cb).await;
    assert_lab(&page);
    // ... and never again. Replayed as it was, the browser's state cookie
    // is gone (cleared by the sign-in)...
    let page = b.get(&cb).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("state does not match"), "{}", page.body);
    // ... and with the cookie put back, the state (and with it the code)
    // is spent.
    b.plant(
        &callback(&sg),
        &format!("sessiongate_oidc_state={state}; Path=/_sessiongate/oidc/"),
    );
    let page = b.get(&cb).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(
        page.body.contains("unknown, used or expired"),
        "{}",
        page.body
    );
    assert_eq!(count(&sg, "refused").await, 3);
    assert_eq!(count(&sg, "ok").await, 1);
}

#[tokio::test]
async fn sign_out_clears_the_cookie_of_every_session_host_visited() {
    let port = free_port();
    let (sg, _origin, root) = setup("oidc-signout", port).await;
    let _idp = Provider::start(&root, port, &callback(&sg));
    let b = Browser::new(sg.gateway);
    assert_lab(&b.follow(&session_url(&sg, "lab")).await);
    assert_lab(&b.follow(&session_url(&sg, "lab2")).await);
    let hosts = |b: &Browser| {
        let mut h: Vec<String> = b
            .cookies()
            .into_iter()
            .filter(|c| c.0 == "sessiongate")
            .map(|c| c.2)
            .collect();
        h.sort();
        h
    };
    assert_eq!(hosts(&b), ["lab.localhost", "lab2.localhost"]);

    let page = b
        .follow(&format!(
            "http://localhost:{}/_sessiongate/oidc/logout",
            sg.gateway.port()
        ))
        .await;
    // Last: the provider's end-session endpoint, with the ID token as hint.
    assert_eq!(page.url.port(), Some(port), "{} {}", page.url, page.body);
    assert!(page.url.path().contains("session/end"), "{}", page.url);
    assert!(page.url.query().unwrap_or("").contains("id_token_hint="));
    assert_eq!(hosts(&b), Vec::<String>::new(), "{:?}", b.cookies());
    // Signed out: the session sends the browser to sign in again.
    let page = b.get(&session_url(&sg, "lab")).await;
    assert_eq!(page.status, 302);
    assert!(
        page.header("location")
            .unwrap_or("")
            .contains("/_sessiongate/oidc/login?rd="),
        "{:?}",
        page.headers
    );
}

#[tokio::test]
async fn with_the_provider_down_a_clear_page_and_access_links_still_work() {
    // Nothing listens on the issuer's port.
    let port = free_port();
    let (sg, _origin, _root) = setup("oidc-down", port).await;
    let b = Browser::new(sg.gateway);
    let page = b.follow(&session_url(&sg, "lab")).await;
    assert_eq!(page.status, 502, "{}", page.body);
    assert!(
        page.body.contains(&format!(
            "identity provider at http://127.0.0.1:{port} is unavailable"
        )),
        "{}",
        page.body
    );
    assert!(page.body.contains("access link"), "{}", page.body);
    assert_eq!(count(&sg, "provider_unavailable").await, 1);

    // carol's access link lets her in as ever.
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/sessions/lab/access",
            Some(json!({"user": "carol"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_lab(&b.follow(v["url"].as_str().unwrap()).await);
}

#[tokio::test]
async fn the_console_signs_in_with_the_provider_and_lists_the_groups_sessions() {
    let port = free_port();
    let (sg, _origin, root) = setup_with("oidc-console", port, "[console]\nportal = true\n").await;
    let _idp = Provider::start(&root, port, &callback(&sg));
    let b = Browser::new(sg.gateway);
    let home = format!("http://localhost:{}/ui/", sg.gateway.port());
    let page = b.get(&home).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let start = page
        .body
        .split("id=\"oidc-signin\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no Sign in with button: {}", page.body))
        .replace("&amp;", "&");
    assert!(page.body.contains("Sign in with Test IdP"), "{}", page.body);
    let page = b.follow(&start).await;
    assert_eq!(page.status, 200, "{} {}", page.url, page.body);
    assert_eq!(page.url.path(), "/ui/sessions", "{}", page.body);
    // alice is in physics, which lab and lab2 are shared with.
    assert!(page.body.contains("lab2"), "{}", page.body);
}
