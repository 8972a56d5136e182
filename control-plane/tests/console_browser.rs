//! The web console in a real headless Chromium (issue 19), driven through
//! chromedriver (WebDriver): one test, run once, that walks the flows a
//! person would, with an accessibility check (axe-core, injected into each
//! page) and screenshots of every page at 1440 and 360 pixels wide.
//!
//! Needs Debian's `chromium` and `chromium-driver`, and axe-core from npm
//! (`npm install -g axe-core`; or `AXE_CORE_JS=/path/to/axe.min.js`), which
//! `.ci/run` installs. Without them the test fails and says what is missing.
//! The screenshots go to `target/console-screenshots/`, and also to
//! `$SESSIONGATE_SCREENSHOTS` when it is set (`docs/console` refreshes the
//! README's).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use testkit::server::InProcess;
use testkit::{temp_dir, Origin};

/// Long enough for a cold Chromium on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(15);

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

async fn start_driver() -> Driver {
    let driver = which("chromedriver").unwrap_or_else(|| {
        panic!(
            "chromedriver not found: install Debian's chromium and chromium-driver (.ci/run does)"
        )
    });
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let end = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "chromedriver did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver { child, url }
}

/// A fresh browser session (its own profile: no cookies shared with
/// another).
async fn browser(driver: &Driver) -> Client {
    browser_with(driver, &[]).await
}

/// [`browser`] with more Chromium arguments.
async fn browser_with(driver: &Driver, extra: &[&str]) -> Client {
    let chromium = which("chromium")
        .or_else(|| which("chromium-browser"))
        .unwrap_or_else(|| panic!("chromium not found: install Debian's chromium (.ci/run does)"));
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,900",
        "--force-color-profile=srgb",
        "--hide-scrollbars",
    ];
    args.extend_from_slice(extra);
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium, "args": args}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("a Chromium session through chromedriver: {e}"))
}

/// Waits until `check` holds for the page, or fails naming `what`.
async fn until(c: &Client, what: &str, check: &str) {
    let end = Instant::now() + WAIT;
    loop {
        let v = c.execute(check, vec![]).await.unwrap_or(Value::Null);
        if v == Value::Bool(true) {
            return;
        }
        if Instant::now() > end {
            let html = c.source().await.unwrap_or_default();
            panic!("{what}: not within {WAIT:?}; the page:\n{html}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

/// The names in the sessions table, in order.
async fn rows(c: &Client) -> Vec<String> {
    let v = c
        .execute(
            "return [...document.querySelectorAll('#sessions-table tbody tr[id^=row-]')].map(r => r.id.slice(4));",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// axe-core's source, from `AXE_CORE_JS` or npm's global modules.
fn axe_source() -> String {
    let candidates: Vec<PathBuf> = std::env::var_os("AXE_CORE_JS")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            Command::new("npm")
                .args(["root", "-g"])
                .output()
                .ok()
                .map(|o| {
                    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                        .join("axe-core/axe.min.js")
                }),
        )
        .chain([PathBuf::from(
            "/usr/local/lib/node_modules/axe-core/axe.min.js",
        )])
        .collect();
    for p in &candidates {
        if let Ok(s) = std::fs::read_to_string(p) {
            return s;
        }
    }
    panic!("axe-core not found (tried {candidates:?}): npm install -g axe-core (.ci/run does), or set AXE_CORE_JS")
}

/// Runs axe-core on the page; fails on any serious or critical violation.
async fn accessible(c: &Client, axe: &str, page: &str) {
    let script = format!(
        "{axe}\n;const done = arguments[arguments.length - 1];\
         axe.run(document, {{resultTypes: ['violations']}}).then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical').map(v => v.id + ': ' + v.help + ' (' + v.nodes.map(n => n.target.join(' ')).join(', ') + ')'))).catch(e => done(['axe failed: ' + e]));"
    );
    let v = c.execute_async(&script, vec![]).await.unwrap();
    let found: Vec<String> = serde_json::from_value(v).unwrap();
    assert!(
        found.is_empty(),
        "{page}: serious or critical accessibility violations: {found:#?}"
    );
}

/// Screenshots of the page at 1440 and 360 pixels wide.
async fn shots(c: &Client, name: &str) {
    let mut dirs =
        vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")];
    if let Some(d) = std::env::var_os("SESSIONGATE_SCREENSHOTS") {
        dirs.push(PathBuf::from(d));
    }
    for (w, h) in [(1440, 900), (360, 800)] {
        c.set_window_size(w, h).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let png = c.screenshot().await.unwrap();
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join(format!("{name}-{w}.png")), &png).unwrap();
        }
    }
    c.set_window_size(1440, 900).await.unwrap();
}

/// Presses `key` (a WebDriver key code, or text) where the focus is.
async fn press(c: &Client, key: &str) {
    c.active_element()
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap_or_else(|e| panic!("key {key:?}: {e}"));
}

const TAB: &str = "\u{e004}";
const ENTER: &str = "\u{e007}";

/// Tabs forward until the element with `id` has the focus (at most 60).
async fn tab_to(c: &Client, id: &str) {
    for _ in 0..60 {
        press(c, TAB).await;
        let at = c
            .execute(
                "return document.activeElement && document.activeElement.id;",
                vec![],
            )
            .await
            .unwrap();
        if at == json!(id) {
            return;
        }
    }
    panic!("#{id} never reached with Tab");
}

/// Signs `c` in with `token` through the sign-in page.
async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/")).await.unwrap();
    fill(c, "#token", token).await;
    click(c, "button[type=submit]").await;
}

async fn console_link(sg: &InProcess, user: &str) -> String {
    let (s, v) = sg
        .api("POST", &format!("/api/v1/users/{user}/console-link"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["url"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium() {
    let axe = axe_source();
    let app = Origin::named("lab-app");
    let sg = InProcess::start(&temp_dir("console-browser"), "").await;
    let base = format!("http://{}", sg.api);
    for u in ["ann", "bob", "cat"] {
        let (s, v) = sg
            .api("POST", "/api/v1/users", Some(json!({"name": u})))
            .await;
        assert_eq!(s, 201, "{v}");
    }
    for (g, members) in [("team", vec!["bob"]), ("ops", vec![])] {
        let (s, v) = sg
            .api(
                "POST",
                "/api/v1/groups",
                Some(json!({"name": g, "members": members})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    for i in 1..=12 {
        let (s, v) = sg
            .api(
                "POST",
                "/api/v1/sessions",
                Some(
                    json!({"name": format!("s{i:02}"), "owner": "cat", "remote_host": "127.0.0.1",
                            "remote_port": app.addr.port(), "duration": 7200,
                            "labels": {"course": if i % 2 == 0 { "rust" } else { "go" }}}),
                ),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let driver = start_driver().await;
    let admin = browser(&driver).await;

    // Sign-in: a wrong token is refused, the right one signs in.
    admin.goto(&format!("{base}/ui/")).await.unwrap();
    accessible(&admin, &axe, "sign-in").await;
    shots(&admin, "signin").await;
    sign_in(&admin, &base, "not-the-token-0123456789").await;
    assert_eq!(
        text_of(&admin, "#signin-error").await,
        "That token is not valid."
    );
    sign_in(&admin, &base, &sg.token).await;
    until(
        &admin,
        "the sessions page",
        "return location.pathname === '/ui/sessions';",
    )
    .await;
    let cookies = admin
        .execute("return document.cookie;", vec![])
        .await
        .unwrap();
    assert_eq!(
        cookies,
        json!(""),
        "the console cookie is HttpOnly: no script reads it"
    );
    // Nothing but htmx's note of the current path is kept in the
    // browser's storage: never the token, the cookie or the CSRF token.
    let stored = admin
        .execute(
            "return JSON.stringify({...localStorage, ...sessionStorage});",
            vec![],
        )
        .await
        .unwrap();
    let stored: serde_json::Map<String, Value> =
        serde_json::from_str(stored.as_str().unwrap()).unwrap();
    assert!(
        stored.keys().all(|k| k == "htmx-current-path-for-history"),
        "{stored:?}"
    );
    assert!(!format!("{stored:?}").contains(&sg.token), "{stored:?}");
    accessible(&admin, &axe, "sessions").await;

    // Add a tunnel and a link through the form.
    admin
        .goto(&format!("{base}/ui/sessions/new"))
        .await
        .unwrap();
    accessible(&admin, &axe, "add session").await;
    shots(&admin, "add-session").await;
    fill(&admin, "#name", "lab").await;
    fill(&admin, "#remote_port", &app.addr.port().to_string()).await;
    fill(&admin, "#remote_host", "127.0.0.1").await;
    fill(&admin, "#owner", "ann").await;
    click(&admin, "#add-session").await;
    assert_eq!(text_of(&admin, "#notice").await, "Session added.");
    admin
        .goto(&format!("{base}/ui/sessions/new"))
        .await
        .unwrap();
    click(&admin, "#kind-link").await;
    fill(&admin, "#name", "docs").await;
    fill(&admin, "#url", "https://example.org/docs").await;
    fill(&admin, "#owner", "ann").await;
    click(&admin, "#add-session").await;
    assert_eq!(text_of(&admin, "#notice").await, "Session added.");
    let (s, v) = sg.api("GET", "/api/v1/sessions/docs", None).await;
    assert_eq!((s, v["kind"].as_str()), (200, Some("link")), "{v}");

    // Search narrows the table as one types (no submit).
    admin.goto(&format!("{base}/ui/sessions")).await.unwrap();
    shots(&admin, "sessions").await;
    assert_eq!(rows(&admin).await.len(), 14);
    fill(&admin, "#q", "s1").await;
    until(&admin, "search s1", "return [...document.querySelectorAll('#sessions-table tbody tr[id^=row-]')].map(r => r.id).join() === 'row-s10,row-s11,row-s12';").await;
    fill(&admin, "#q", "rust").await;
    until(
        &admin,
        "search by label",
        "return document.querySelectorAll('#sessions-table tbody tr[id^=row-]').length === 6;",
    )
    .await;

    // Paging: 10 a page, then the next.
    admin
        .goto(&format!("{base}/ui/sessions?size=10"))
        .await
        .unwrap();
    assert_eq!(
        text_of(&admin, "#page-info").await,
        "Page 1 of 2 · 14 sessions"
    );
    assert_eq!(rows(&admin).await.len(), 10);
    click(&admin, "#next-page").await;
    until(
        &admin,
        "page 2",
        "return document.getElementById('page-info').textContent.startsWith('Page 2 of 2');",
    )
    .await;
    // Page 1 holds docs, lab and s01 to s08, by name.
    assert_eq!(rows(&admin).await, ["s09", "s10", "s11", "s12"]);

    // A status changed through the API shows in the open page within 2 s.
    admin
        .goto(&format!("{base}/ui/sessions?size=50"))
        .await
        .unwrap();
    assert_eq!(text_of(&admin, "#status-s04").await, "running");
    let (s, v) = sg.api("POST", "/api/v1/sessions/s04/pause", None).await;
    assert_eq!(s, 200, "{v}");
    let changed = Instant::now();
    until(
        &admin,
        "s04 shown paused",
        "return document.getElementById('status-s04').textContent === 'paused';",
    )
    .await;
    let took = changed.elapsed();
    eprintln!("a status changed through the API reached the open page in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Mass evict of three, one of them (paused) not applicable.
    let (s, v) = sg.api("POST", "/api/v1/sessions/s03/pause", None).await;
    assert_eq!(s, 200, "{v}");
    admin.refresh().await.unwrap();
    for n in ["s01", "s02", "s03"] {
        click(&admin, &format!("#sel-{n}")).await;
    }
    assert_eq!(text_of(&admin, "#selected-count").await, "3 selected");
    admin
        .find(Locator::Css("#bulk-action"))
        .await
        .unwrap()
        .select_by_value("evict")
        .await
        .unwrap();
    click(&admin, "#bulk-apply").await;
    let summary = text_of(&admin, "#bulk-summary").await;
    assert_eq!(
        summary,
        "2 of the 3 selected sessions will be evicted; 1 will be skipped."
    );
    accessible(&admin, &axe, "mass action confirm").await;
    shots(&admin, "mass-action-confirm").await;
    click(&admin, "#bulk-confirm-button").await;
    assert!(text_of(&admin, "#result-s01").await.ends_with("evicted"));
    assert!(text_of(&admin, "#result-s02").await.ends_with("evicted"));
    let skipped = text_of(&admin, "#result-s03").await;
    assert!(
        skipped.contains("skipped") && skipped.contains("paused"),
        "{skipped}"
    );
    // The table's badges follow at once.
    assert_eq!(text_of(&admin, "#status-s01").await, "evicted");
    assert_eq!(text_of(&admin, "#status-s03").await, "paused");
    shots(&admin, "mass-action-result").await;

    // Delete, with its confirm.
    admin.goto(&format!("{base}/ui/sessions")).await.unwrap();
    click(&admin, "#delete-docs").await;
    assert_eq!(
        text_of(&admin, "#delete-question").await,
        "Are you sure you want to delete this session?"
    );
    accessible(&admin, &axe, "delete").await;
    shots(&admin, "delete").await;
    click(&admin, "#confirm-delete").await;
    assert_eq!(text_of(&admin, "#notice").await, "Session deleted.");

    // Share lab with team: bob (a member) opens it; cat cannot.
    admin
        .goto(&format!("{base}/ui/sessions/lab/share"))
        .await
        .unwrap();
    click(&admin, "#group-team").await;
    click(&admin, "#save-share").await;
    assert_eq!(
        text_of(&admin, "#notice").await,
        "Permission updated successfully."
    );
    accessible(&admin, &axe, "share").await;
    shots(&admin, "share").await;
    let bob = browser(&driver).await;
    bob.goto(&console_link(&sg, "bob").await).await.unwrap();
    until(
        &bob,
        "bob signed in",
        "return location.pathname === '/ui/sessions';",
    )
    .await;
    assert_eq!(rows(&bob).await, ["lab"]);
    let open = bob
        .find(Locator::Css("#row-lab a[href$='/open']"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    bob.goto(&format!("{base}{open}")).await.unwrap();
    until(
        &bob,
        "bob reached the app",
        "return document.body.textContent.includes('lab-app');",
    )
    .await;
    let cat = browser(&driver).await;
    cat.goto(&console_link(&sg, "cat").await).await.unwrap();
    until(
        &cat,
        "cat signed in",
        "return location.pathname === '/ui/sessions';",
    )
    .await;
    assert!(!rows(&cat).await.contains(&"lab".to_string()));
    cat.goto(&format!("{base}/ui/sessions/lab/open"))
        .await
        .unwrap();
    until(&cat, "cat refused lab", "return document.title.startsWith('Not Found') && document.body.textContent.includes('\"lab\"');").await;

    // A user by console link sees only their own and their groups'.
    let ann = browser(&driver).await;
    ann.goto(&console_link(&sg, "ann").await).await.unwrap();
    until(
        &ann,
        "ann signed in",
        "return location.pathname === '/ui/sessions';",
    )
    .await;
    assert_eq!(rows(&ann).await, ["lab"]);
    accessible(&ann, &axe, "a user's sessions").await;
    shots(&ann, "user-sessions").await;

    // By keyboard alone: the skip link first, then the search, then a row.
    admin
        .goto(&format!("{base}/ui/sessions?size=50"))
        .await
        .unwrap();
    press(&admin, TAB).await;
    let first = admin
        .execute("return document.activeElement.className;", vec![])
        .await
        .unwrap();
    assert_eq!(first, json!("skip"), "the first Tab reaches the skip link");
    press(&admin, ENTER).await;
    until(
        &admin,
        "skipped to the content",
        "return location.hash === '#main';",
    )
    .await;
    tab_to(&admin, "q").await;
    press(&admin, "s05").await;
    until(&admin, "search by keyboard", "return [...document.querySelectorAll('#sessions-table tbody tr[id^=row-]')].map(r => r.id).join() === 'row-s05';").await;
    tab_to(&admin, "sel-s05").await;
    press(&admin, " ").await;
    assert_eq!(text_of(&admin, "#selected-count").await, "1 selected");

    // Dark mode, from the browser's preference.
    let dark = browser_with(&driver, &["--blink-settings=preferredColorScheme=0"]).await;
    sign_in(&dark, &base, &sg.token).await;
    until(
        &dark,
        "signed in (dark)",
        "return location.pathname === '/ui/sessions';",
    )
    .await;
    until(
        &dark,
        "dark colours",
        "return getComputedStyle(document.body).backgroundColor === 'rgb(18, 19, 23)';",
    )
    .await;
    accessible(&dark, &axe, "sessions, dark").await;
    shots(&dark, "sessions-dark").await;
    let _ = dark.close().await;

    // The session's page, and the operators' pages.
    admin
        .goto(&format!("{base}/ui/sessions/lab"))
        .await
        .unwrap();
    assert!(text_of(&admin, "#history").await.contains("share"));
    accessible(&admin, &axe, "session detail").await;
    shots(&admin, "session-detail").await;
    for (page, name) in [
        ("environments", "environments"),
        ("users", "users"),
        ("groups", "groups"),
    ] {
        admin.goto(&format!("{base}/ui/{page}")).await.unwrap();
        accessible(&admin, &axe, name).await;
        shots(&admin, name).await;
    }

    // A read-only token: no buttons that write, and a forged POST is 403.
    let (s, v) = sg
        .api(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "dash", "kind": "readonly"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ro = browser(&driver).await;
    sign_in(&ro, &base, v["token"].as_str().unwrap()).await;
    until(
        &ro,
        "read-only signed in",
        "return location.pathname === '/ui/sessions';",
    )
    .await;
    let writes = ro
        .execute(
            "return document.querySelectorAll('#bulk-apply, [id^=delete-], [id^=share-], [id^=sel-], a[href$=\"/open\"], a[href=\"/ui/sessions/new\"]').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        writes,
        json!(0),
        "write controls shown to a read-only token"
    );
    let status = ro
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             fetch('/ui/sessions/lab/delete', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'csrf=forged'}).then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403), "a forged POST");
    let (s, v) = sg.api("GET", "/api/v1/sessions/lab", None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{v}");

    for c in [admin, bob, cat, ann, ro] {
        let _ = c.close().await;
    }
}
