//! Issue 16: the training portal's three known clients, replayed request for
//! request against `sessiongate serve` (in process, every listener on
//! `127.0.0.1:0`), with a configured OAuth2 client and robot account and a
//! workshop environment of three real backends. Each request is sent as the
//! client's source builds it: method, path, query string, headers and body,
//! over a real HTTP/1.1 client (hyper's pooled client, as each of these
//! clients pools its connections), to the portal host on the gateway.
//! Every answer is checked for its status and for each field the client
//! reads, with the JSON type the client decodes it into: the Go CLI is
//! strict (an `int` field refuses `1.0` or `"1"`, a `string` refuses a
//! number), so its answers go through serde mirrors of its Go structs that
//! refuse what Go refuses and accept what Go accepts (`null`, missing keys,
//! unknown keys).
//!
//! Sources read (the research for issue 16 gives them line by line):
//! - **EP** `educates/educates-training-platform` @
//!   `e9c6dd668f92ae2938a3b152440f8616631e3faf`:
//!   - the lookup service's portal client,
//!     `lookup-service/service/caches/portals.py` (`TrainingPortalClientSession`:
//!     `login`, `request_workshop_session`, `reacquire_workshop_session`,
//!     `logout`), and `lookup-service/service/routes/workshops.py` (84-245,
//!     where the values come from);
//!   - the CLI's REST client, `client-programs/pkg/educatesrestapi/catalog.go`
//!     (`Login`, `requestToken`, `GetWorkshopsCatalog`, `RequestWorkshop`,
//!     `GetWorkshopSession`, `ExtendWorkshopSession`,
//!     `TerminateWorkshopSession`) and `.../types.go` (the decoded shapes),
//!     called from `client-programs/pkg/cmd/cluster_workshop_request_cmd.go`
//!     and `cluster_session_{status,extend,terminate}_cmd.go` (also read at
//!     `58babafe71e5e68a191dfa11697b81681dd203a9`, where the package is
//!     `client-programs/pkg/educates/restapi/`: the same requests and types);
//!   - the portal itself, `training-portal/src/project/apps/workshops/views/`
//!     and django-oauth-toolkit 2.3.0, for the answers.
//! - **TS** `TeraSky-OSS/backstage-plugins` @
//!   `8b486fafdd69868f55a1a28ba49b3f406a71bf24`, v1.12.0 of
//!   `@terasky/backstage-plugin-educates(-backend)`:
//!   `plugins/educates-backend/src/service/router.ts` (40-215) and
//!   `EducatesService.ts` (the requests), `plugins/educates/src/components/
//!   {WorkshopCard,TrainingPortalHeader,EducatesPage}.tsx` and
//!   `plugins/educates-common/src/types.ts` (the fields read).
//!
//! The headers each HTTP library adds by itself are sent too: Go's
//! `net/http` (`User-Agent: Go-http-client/1.1`, `Accept-Encoding: gzip`,
//! and `Referer` on a followed redirect), aiohttp 3.13 (`Accept: */*`,
//! `Accept-Encoding: gzip, deflate`, `User-Agent: Python/3.12
//! aiohttp/3.13.4`), node-fetch 2 (`Accept: */*`, `Accept-Encoding:
//! gzip,deflate`, `User-Agent: node-fetch/1.0 (+https://github.com/bitinn/node-fetch)`,
//! `Connection: close`, and `Content-Length: 0` on a POST without a body).
//!
//! Deliberate differences from the portal that no client notices, and so
//! are not asserted either way: a bad bearer token is 401 here (the portal:
//! an empty 403); error bodies are JSON. Where a check below goes beyond
//! what a client reads (that a revoked token stops working), it says so.

#[path = "integration/common/mod.rs"]
#[allow(dead_code)] // the replay needs only the browser's cookie jar
mod common;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, HOST};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use testkit::server::InProcess;
use testkit::{temp_dir, Origin, DEADLINE};
use url::Url;

use common::jar::Browser;

// ---- the portal, as the clients are configured for it ----

/// The robot client and account, as the TrainingPortal's
/// `status.educates.clients.robot.{id,secret}` and
/// `status.educates.credentials.robot.{username,password}` give them.
const CLIENT_ID: &str = "educates-robot-client";
const CLIENT_SECRET: &str = "Zk3bQ9wT1xVr7LmN";
const ROBOT_USER: &str = "robot@educates";
const ROBOT_PASSWORD: &str = "pW8sR2dK5yH4";

const WORKSHOP: &str = "lab-markdown-sample";
const ENVIRONMENT: &str = "lab-markdown-sample-w01";

fn config() -> String {
    format!(
        "[workshop]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\
         robot_username = \"{ROBOT_USER}\"\nrobot_password = \"{ROBOT_PASSWORD}\"\n\
         index_urls = [\"https://hub.test\", \"https://backstage.test\"]\n"
    )
}

/// `sessiongate serve` with the workshop API, one environment of three
/// backends (one session kept in reserve), and a client for the portal host.
struct Portal {
    sg: InProcess,
    /// The portal's URL as the clients hold it (`status.educates.url`, the
    /// Backstage `url`): the gateway's portal host.
    url: String,
    http: Client<HttpConnector, Full<Bytes>>,
    _backends: Vec<Origin>,
}

/// One answer: status, headers, body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// node-fetch's `response.ok`.
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, as aiohttp's `response.json()` reads it: it also
    /// refuses any `Content-Type` but `application/json`, so that is checked
    /// too (node-fetch's `.json()` and Go's decoder look at the body only).
    fn json(&self) -> Value {
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "Content-Type {ct:?} (aiohttp's response.json() needs application/json): {}",
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body decoded as Go's `encoding/json` decodes it into `T`.
    fn go<T: DeserializeOwned>(&self, what: &str) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("Go cannot decode {what} ({e}): {}", self.text()))
    }
}

/// The HTTP library a client is built on, for the headers it adds itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Library {
    /// The lookup service's aiohttp 3.13.4.
    Aiohttp,
    /// The CLI's `net/http` `DefaultClient`.
    GoNetHttp,
    /// The Backstage backend's node-fetch 2, without an agent.
    NodeFetch,
}

impl Library {
    fn own_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Library::Aiohttp => &[
                ("Accept", "*/*"),
                ("Accept-Encoding", "gzip, deflate"),
                ("User-Agent", "Python/3.12 aiohttp/3.13.4"),
            ],
            Library::GoNetHttp => &[
                ("User-Agent", "Go-http-client/1.1"),
                ("Accept-Encoding", "gzip"),
            ],
            Library::NodeFetch => &[
                ("Accept", "*/*"),
                (
                    "User-Agent",
                    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
                ),
                ("Accept-Encoding", "gzip,deflate"),
                ("Connection", "close"),
            ],
        }
    }
}

impl Portal {
    async fn start(name: &str) -> Portal {
        let sg = InProcess::start(&temp_dir(name), &config()).await;
        let backends = vec![
            Origin::named("backend-1"),
            Origin::named("backend-2"),
            Origin::named("backend-3"),
        ];
        let targets: Vec<String> = backends.iter().map(Origin::url).collect();
        let (s, v) = sg
            .api(
                "POST",
                "/api/v1/environments",
                Some(json!({
                    "name": ENVIRONMENT,
                    "workshop": {
                        "name": WORKSHOP,
                        "title": "Markdown Sample",
                        "description": "A sample workshop using Markdown",
                        "vendor": "educates.dev",
                        "authors": ["Graham Dumpleton"],
                        "difficulty": "beginner",
                        "duration": "30m",
                        "tags": ["educates", "markdown"],
                        "logo": "data:image/png;base64,iVBORw0KGgo=",
                        "url": "https://github.com/educates/lab-markdown-sample",
                    },
                    "duration": 1800, "capacity": 3, "reserved": 1, "targets": targets,
                })),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let url = format!("http://localhost:{}", sg.gateway.port());
        let http = Client::builder(TokioExecutor::new()).build_http();
        Portal {
            sg,
            url,
            http,
            _backends: backends,
        }
    }

    /// Sends `method target` to the portal host as `client`'s HTTP library
    /// sends it: `headers`, then the library's own (and `Host`), then
    /// `Content-Length` where the library sends one: for a body, and for a
    /// POST without one from node-fetch.
    async fn send(
        &self,
        client: Library,
        method: Method,
        target: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Answer {
        let authority = self.url.trim_start_matches("http://");
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{target}", self.sg.gateway))
            .header(HOST, authority);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        for (name, value) in client.own_headers() {
            req = req.header(*name, *value);
        }
        if !body.is_empty() || (client == Library::NodeFetch && method == Method::POST) {
            req = req.header("Content-Length", body.len().to_string());
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("a valid request");
        let resp = tokio::time::timeout(DEADLINE, self.http.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {target}: no answer in {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{method} {target}: body: {e}"))
            .to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A form POST (`application/x-www-form-urlencoded`) as `client` sends
    /// it, with `headers` besides.
    async fn post_form(
        &self,
        client: Library,
        target: &str,
        headers: &[(&str, String)],
        form: &str,
    ) -> Answer {
        let mut headers = headers.to_vec();
        headers.push((
            "Content-Type",
            "application/x-www-form-urlencoded".to_string(),
        ));
        self.send(client, Method::POST, target, &headers, form.as_bytes())
            .await
    }

    /// L1, C1 and B1: the password grant, `form` as the client writes it,
    /// the client's id and secret in HTTP Basic (aiohttp's `BasicAuth`, Go's
    /// `base64.StdEncoding`, node's `Buffer.toString('base64')`: the same
    /// bytes).
    async fn password_grant(&self, client: Library, form: &str) -> Answer {
        self.post_form(
            client,
            "/oauth2/token/",
            &[("Authorization", basic_auth())],
            form,
        )
        .await
    }

    /// L3 and C7: revocation with the client's id and secret in the form,
    /// before the token (Python's dict order; Go's sorted keys), `headers`
    /// besides.
    async fn revoke(&self, client: Library, headers: &[(&str, String)], token: &str) -> Answer {
        let form = format!("client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}&token={token}");
        self.post_form(client, "/oauth2/revoke-token/", headers, &form)
            .await
    }

    /// The browser the client hands the activation URL to (the CLI's
    /// `openBrowser`, the lookup service's caller, Backstage's
    /// `window.open`): it follows the redirects to the session's own host
    /// and lands on the app.
    async fn open_in_browser(&self, activation_url: &str) -> String {
        let page = Browser::new(self.sg.gateway).follow(activation_url).await;
        assert_eq!(
            page.status, 200,
            "opening {activation_url}: {} at {}",
            page.body, page.url
        );
        page.body
    }

    /// Whether an access token still works (not a client's request: the
    /// check that a revocation took effect).
    async fn token_works(&self, access_token: &str) -> bool {
        let r = self
            .send(
                Library::GoNetHttp,
                Method::GET,
                "/workshops/catalog/environments/",
                &[("Authorization", format!("Bearer {access_token}"))],
                b"",
            )
            .await;
        match r.status {
            200 => true,
            401 | 403 => false,
            other => panic!("catalog with a token: {other} {}", r.text()),
        }
    }
}

fn basic_auth() -> String {
    let b =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    format!("Basic {b}")
}

/// An activation URL as the portal answers it: a path on the portal host,
/// which every client prefixes with the portal's URL.
fn assert_activation_path(url: &str, session: &str) {
    assert!(
        url.starts_with(&format!("/workshops/session/{session}/activate/?token=")),
        "not a relative activation path for {session}: {url}"
    );
}

// ---- the lookup service (Python, aiohttp 3.13.4) ----

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// L1, `TrainingPortalClientSession.login`: `session.post(…/oauth2/token/,
/// data={grant_type, username, password}, auth=BasicAuth(id, secret))`.
/// Reads `access_token` from `response.json()` on a 200.
async fn lookup_login(portal: &Portal) -> String {
    let r = portal
        .password_grant(
            Library::Aiohttp,
            "grant_type=password&username=robot%40educates&password=pW8sR2dK5yH4",
        )
        .await;
    assert_eq!(r.status, 200, "L1 login: {}", r.text());
    let v = r.json();
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("L1: no access_token string: {v}"))
        .to_string()
}

/// L3, `TrainingPortalClientSession.logout`: `session.post(…/oauth2/revoke-token/,
/// data={client_id, client_secret, token})`, no Authorization header. Only
/// the status is read: anything but 200 is logged as "Failed to logout".
async fn lookup_logout(portal: &Portal, access_token: &str) {
    let r = portal.revoke(Library::Aiohttp, &[], access_token).await;
    assert_eq!(r.status, 200, "L3 logout: {}", r.text());
    // Beyond the client: its logout took effect.
    assert!(
        !portal.token_works(access_token).await,
        "L3 left the token working"
    );
}

/// L2a, `reacquire_workshop_session`: a GET with `params={index_url, user,
/// session}` and no body. Reads `url` from `response.json()` on a 200;
/// anything else is logged (status and text) and the route falls through
/// to a new request.
async fn lookup_reacquire(portal: &Portal, token: &str, user: &str, session: &str) -> Answer {
    portal
        .send(
            Library::Aiohttp,
            Method::GET,
            &format!(
                "/workshops/environment/{ENVIRONMENT}/request/?index_url=https://hub.test/\
                 &user={user}&session={session}"
            ),
            &[bearer(token)],
            b"",
        )
        .await
}

/// L2b, `request_workshop_session`: a GET with `params=` (all six keys, in
/// this order, empty values kept: only the user and the index URL are
/// given here, and a first name as yarl writes it, a space as `+`; yarl
/// leaves `:` and `/` as they are) and `json={"parameters": parameters}`
/// (the client's workshopParams, default []). Reads `url` and `name` from
/// `response.json()` on a 200; anything else is logged and the next
/// environment tried.
async fn lookup_request(
    portal: &Portal,
    token: &str,
    environment: &str,
    user: &str,
    first_name: &str,
) -> Answer {
    portal
        .send(
            Library::Aiohttp,
            Method::GET,
            &format!(
                "/workshops/environment/{environment}/request/?user={user}&email=\
                 &first_name={first_name}&last_name=&index_url=https://hub.test/&analytics_url="
            ),
            &[
                bearer(token),
                ("Content-Type", "application/json".to_string()),
            ],
            br#"{"parameters": []}"#,
        )
        .await
}

#[tokio::test]
async fn lookup_service_requests_then_reacquires_a_session_logging_in_and_out_each_time() {
    let portal = Portal::start("clients-lookup").await;

    // routes/workshops.py: a client's request for a workshop the user has
    // no session of. One portal operation: login, one call, logout.
    let token = lookup_login(&portal).await;
    let r = lookup_request(&portal, &token, ENVIRONMENT, "learner-0042", "Mary+Ann").await;
    assert_eq!(r.status, 200, "L2b request: {}", r.text());
    let v = r.json();
    let url = v["url"]
        .as_str()
        .unwrap_or_else(|| panic!("L2b: no url string: {v}"));
    let session = v["name"]
        .as_str()
        .unwrap_or_else(|| panic!("L2b: no name string: {v}"))
        .to_string();
    assert_activation_path(url, &session);
    assert!(
        url.ends_with("&index_url=https%3A%2F%2Fhub.test%2F"),
        "{url}"
    );
    // Not read by the lookup service, which keeps its own user id; the
    // portal answers with the user it was asked for.
    assert_eq!(v["user"], "learner-0042", "{v}");
    lookup_logout(&portal, &token).await;

    // The same user asks again; the lookup service's cache of the cluster
    // shows the session, so it reacquires it (L2a), by name.
    let token = lookup_login(&portal).await;
    let r = lookup_reacquire(&portal, &token, "learner-0042", &session).await;
    assert_eq!(r.status, 200, "L2a reacquire: {}", r.text());
    let v = r.json();
    let again = v["url"]
        .as_str()
        .unwrap_or_else(|| panic!("L2a: no url string: {v}"));
    assert_activation_path(again, &session);
    lookup_logout(&portal, &token).await;

    // `sessionActivationUrl = portal.url + url`, opened by the user.
    let app = portal
        .open_in_browser(&format!("{}{again}", portal.url))
        .await;
    assert!(app.starts_with("backend-"), "{app}");
}

#[tokio::test]
async fn lookup_service_reacquiring_a_session_the_user_does_not_have_gets_503() {
    let portal = Portal::start("clients-lookup-503").await;
    // L2a for a session the portal never gave this user (the lookup
    // service's cache can be stale): the reacquire-only semantics of
    // `session=`. The lookup service logs the 503's text and falls through
    // to L2b.
    let token = lookup_login(&portal).await;
    let r = lookup_reacquire(
        &portal,
        &token,
        "learner-0043",
        &format!("{ENVIRONMENT}-s001"),
    )
    .await;
    assert_eq!(r.status, 503, "L2a reacquire: {}", r.text());
    let v = r.json();
    assert_eq!(v["error"], "No session available", "{v}");
    lookup_logout(&portal, &token).await;
}

#[tokio::test]
async fn lookup_service_logs_out_after_a_request_the_portal_refuses() {
    let portal = Portal::start("clients-lookup-refused").await;
    // The lookup service's cache of the cluster can name an environment
    // the portal no longer has. L2b for it is refused (the portal: 403
    // "Environment does not exist"); any answer but 200 is logged and the
    // next environment tried, and `async with` logs out all the same.
    let token = lookup_login(&portal).await;
    let r = lookup_request(&portal, &token, "lab-gone-w01", "learner-0044", "").await;
    assert_ne!(r.status, 200, "L2b for a missing environment: {}", r.text());
    lookup_logout(&portal, &token).await;
}

// ---- the Educates CLI (Go, net/http's DefaultClient) ----

/// `AuthDetails` (catalog.go).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuthDetails {
    access_token: Option<String>,
    expires_in: Option<i64>,
    token_type: Option<String>,
    scope: Option<String>,
    refresh_token: Option<String>,
}

/// `WorkshopsCatalogResponse` and what it holds (types.go). `labels` is
/// not decoded (commented out in the Go structs).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkshopsCatalogResponse {
    portal: Option<PortalDetails>,
    environments: Option<Vec<EnvironmentDetails>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PortalDetails {
    name: Option<String>,
    uid: Option<String>,
    generation: Option<i64>,
    url: Option<String>,
    sessions: Option<SessionDetails>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SessionDetails {
    maximum: Option<i64>,
    registered: Option<i64>,
    anonymous: Option<i64>,
    allocated: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EnvironmentDetails {
    name: Option<String>,
    state: Option<String>,
    duration: Option<i64>,
    capacity: Option<i64>,
    reserved: Option<i64>,
    allocated: Option<i64>,
    available: Option<i64>,
    workshop: Option<WorkshopDetails>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkshopDetails {
    name: Option<String>,
    title: Option<String>,
    description: Option<String>,
    vendor: Option<String>,
    authors: Option<Vec<String>>,
    difficulty: Option<String>,
    /// A string in Go: a number here breaks the CLI.
    duration: Option<String>,
    tags: Option<Vec<String>>,
    logo: Option<String>,
    url: Option<String>,
}

/// `RequestWorkshopResponse` (types.go).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RequestWorkshopResponse {
    name: Option<String>,
    user: Option<String>,
    url: Option<String>,
    workshop: Option<String>,
    environment: Option<String>,
    namespace: Option<String>,
}

/// `WorkshopSessionDetails` (types.go), decoded through a pointer: a JSON
/// `null` body would leave it nil, and the CLI would crash printing it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkshopSessionDetails {
    started: Option<String>,
    expires: Option<String>,
    expiring: Option<bool>,
    /// `int` in Go: a float breaks the CLI.
    countdown: Option<i64>,
    extendable: Option<bool>,
    status: Option<String>,
}

/// C1, `Login` → `requestToken`: the form from `url.Values.Encode()`
/// (keys sorted), the client in Basic (`base64.StdEncoding` of `id:secret`).
/// 503 is "Portal not ready yet", anything but 200 an error; the body is
/// `json.Unmarshal`ed into `AuthDetails`.
async fn cli_login(portal: &Portal) -> String {
    let r = portal
        .password_grant(
            Library::GoNetHttp,
            "grant_type=password&password=pW8sR2dK5yH4&username=robot%40educates",
        )
        .await;
    assert_eq!(r.status, 200, "C1 login: {}", r.text());
    let auth: AuthDetails = r.go("AuthDetails");
    assert_eq!(auth.token_type.as_deref(), Some("Bearer"), "{auth:?}");
    assert_eq!(auth.expires_in, Some(36000), "{auth:?}");
    assert_eq!(auth.scope.as_deref(), Some("user:info"), "{auth:?}");
    assert!(
        auth.refresh_token.is_some_and(|t| !t.is_empty()),
        "C1: no refresh_token"
    );
    auth.access_token
        .filter(|t| !t.is_empty())
        .expect("C1: no access_token")
}

/// C7, `Login`'s cleanup function (deferred): the form (keys sorted) with
/// the client, and the token being revoked also sent as a bearer token.
/// The answer is ignored by the CLI.
async fn cli_logout(portal: &Portal, access_token: &str) {
    let r = portal
        .revoke(Library::GoNetHttp, &[bearer(access_token)], access_token)
        .await;
    // Beyond the client, which ignores the answer: the revocation worked.
    assert_eq!(r.status, 200, "C7 logout: {}", r.text());
    assert!(r.body.is_empty(), "C7: a body: {}", r.text());
    assert!(
        !portal.token_works(access_token).await,
        "C7 left the token working"
    );
}

/// C2, `GetWorkshopsCatalog`: a GET without the trailing slash, with the
/// body "{}" and no Content-Type; `http.DefaultClient` follows the 301.
/// The final answer must be a 200 that decodes into
/// `WorkshopsCatalogResponse`.
async fn cli_catalog(portal: &Portal, token: &str) -> WorkshopsCatalogResponse {
    let first = "/workshops/catalog/environments";
    let r = portal
        .send(
            Library::GoNetHttp,
            Method::GET,
            first,
            &[bearer(token)],
            b"{}",
        )
        .await;
    assert_eq!(r.status, 301, "C2: {}", r.text());
    let location = r.header("location").expect("C2: a 301 without Location");
    // Go resolves it against the request's URL and, since the host is the
    // same, keeps Authorization; a 301 turns into a GET without the body,
    // with Referer set to the URL it came from.
    let from = Url::parse(&format!("{}{first}", portal.url)).unwrap();
    let next = from.join(location).expect("C2: a Location Go can resolve");
    assert_eq!(
        next.origin(),
        from.origin(),
        "C2: redirected off the portal"
    );
    assert_eq!(next.path(), "/workshops/catalog/environments/");
    assert_eq!(next.query(), None);
    let r = portal
        .send(
            Library::GoNetHttp,
            Method::GET,
            &next[url::Position::BeforePath..],
            &[bearer(token), ("Referer", from.to_string())],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "C2 after the redirect: {}", r.text());
    r.go("WorkshopsCatalogResponse")
}

/// What the CLI reads of C2's answer: the environment of the workshop to
/// request from, and the whole decoded catalog for `educates admin
/// diagnostics`.
fn assert_catalog(catalog: &WorkshopsCatalogResponse) {
    let p = catalog.portal.as_ref().expect("C2: no portal");
    assert!(
        p.name.as_ref().is_some_and(|n| !n.is_empty()),
        "C2: portal.name"
    );
    assert!(
        p.uid.as_ref().is_some_and(|u| !u.is_empty()),
        "C2: portal.uid"
    );
    assert!(p.generation.is_some(), "C2: portal.generation");
    assert!(
        p.url.as_ref().is_some_and(|u| !u.is_empty()),
        "C2: portal.url"
    );
    let s = p.sessions.as_ref().expect("C2: portal.sessions");
    for (k, n) in [
        ("maximum", s.maximum),
        ("registered", s.registered),
        ("anonymous", s.anonymous),
        ("allocated", s.allocated),
    ] {
        assert!(n.is_some(), "C2: portal.sessions.{k}");
    }
    // The CLI takes the last environment of the workshop that is RUNNING.
    let environments = catalog.environments.as_ref().expect("C2: no environments");
    let env = environments
        .iter()
        .rev()
        .find(|e| {
            e.workshop.as_ref().and_then(|w| w.name.as_deref()) == Some(WORKSHOP)
                && e.state.as_deref() == Some("RUNNING")
        })
        .expect("C2: no RUNNING environment of the workshop");
    assert_eq!(env.name.as_deref(), Some(ENVIRONMENT));
    assert_eq!(env.duration, Some(1800));
    assert_eq!(env.capacity, Some(3));
    assert_eq!(env.reserved, Some(1));
    assert!(
        env.allocated.is_some() && env.available.is_some(),
        "{env:?}"
    );
    // `educates admin diagnostics` writes all of it out.
    let w = env.workshop.as_ref().unwrap();
    assert_eq!(w.title.as_deref(), Some("Markdown Sample"));
    assert_eq!(
        w.description.as_deref(),
        Some("A sample workshop using Markdown")
    );
    assert_eq!(w.vendor.as_deref(), Some("educates.dev"));
    assert_eq!(w.authors, Some(vec!["Graham Dumpleton".to_string()]));
    assert_eq!(w.difficulty.as_deref(), Some("beginner"));
    assert_eq!(w.duration.as_deref(), Some("30m"));
    assert_eq!(
        w.tags,
        Some(vec!["educates".to_string(), "markdown".to_string()])
    );
    assert_eq!(
        w.logo.as_deref(),
        Some("data:image/png;base64,iVBORw0KGgo=")
    );
    assert_eq!(
        w.url.as_deref(),
        Some("https://github.com/educates/lab-markdown-sample")
    );
}

/// `educates workshop request lab-markdown-sample --user ann
/// --index-url https://hub.test/ --param WORKSHOP_USER=ann` with the default
/// `--timeout 60`: C1, C2, C3 and C7. Returns the session's name and the
/// URL the CLI opens in the browser.
async fn cli_workshop_request(portal: &Portal) -> (String, String) {
    let token = cli_login(portal).await;

    let catalog = cli_catalog(portal, &token).await;
    assert_catalog(&catalog);

    // C3, `RequestWorkshop`: a POST, the query from `url.Values.Encode()`
    // (keys sorted, values QueryEscape'd), the parameters as JSON.
    let r = portal
        .send(
            Library::GoNetHttp,
            Method::POST,
            &format!(
                "/workshops/environment/{ENVIRONMENT}/request/\
                 ?index_url=https%3A%2F%2Fhub.test%2F&timeout=60&user=ann"
            ),
            &[
                ("Content-Type", "application/json".to_string()),
                bearer(&token),
            ],
            br#"{"parameters":[{"name":"WORKSHOP_USER","value":"ann"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "C3 request: {}", r.text());
    let answer: RequestWorkshopResponse = r.go("RequestWorkshopResponse");
    let name = answer.name.clone().expect("C3: no name");
    assert_eq!(answer.user.as_deref(), Some("ann"), "{answer:?}");
    assert_eq!(answer.workshop.as_deref(), Some(WORKSHOP), "{answer:?}");
    assert_eq!(
        answer.environment.as_deref(),
        Some(ENVIRONMENT),
        "{answer:?}"
    );
    assert_eq!(
        answer.namespace.as_deref(),
        Some(name.as_str()),
        "{answer:?}"
    );
    let url = answer.url.expect("C3: no url");
    assert_activation_path(&url, &name);

    cli_logout(portal, &token).await;
    (name, format!("{}{url}", portal.url))
}

/// C4, C5 or C6: `GET /workshops/session/<name>/<action>/` with the bearer
/// token, no body.
async fn cli_session_call(portal: &Portal, token: &str, name: &str, action: &str) -> Answer {
    portal
        .send(
            Library::GoNetHttp,
            Method::GET,
            &format!("/workshops/session/{name}/{action}/"),
            &[bearer(token)],
            b"",
        )
        .await
}

/// C4, C5 or C6 answered as the CLI needs to print the session: a 200
/// (400 and 404 are "No session found.", anything else an error) whose
/// body `json.Unmarshal`s into `*WorkshopSessionDetails`.
async fn cli_session(
    portal: &Portal,
    token: &str,
    name: &str,
    action: &str,
) -> WorkshopSessionDetails {
    let r = cli_session_call(portal, token, name, action).await;
    assert_eq!(r.status, 200, "{action}: {}", r.text());
    let v: Value = r.go("a session's details");
    assert!(v.is_object(), "{action}: not an object: {v}");
    r.go("WorkshopSessionDetails")
}

/// A time as the portal writes it: ISO 8601 in UTC with `Z`.
fn assert_time(what: &str, t: &Option<String>) {
    let t = t.as_deref().unwrap_or_else(|| panic!("{what}: missing"));
    assert!(
        t.len() >= 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
        "{what}: {t:?}"
    );
}

#[tokio::test]
async fn educates_cli_requests_a_workshop_and_opens_it() {
    let portal = Portal::start("clients-cli-request").await;
    let (_, url) = cli_workshop_request(&portal).await;
    let app = portal.open_in_browser(&url).await;
    assert!(app.starts_with("backend-"), "{app}");
}

#[tokio::test]
async fn educates_cli_shows_extends_and_terminates_a_session() {
    let portal = Portal::start("clients-cli-session").await;
    let (name, url) = cli_workshop_request(&portal).await;
    portal.open_in_browser(&url).await;

    // `educates cluster session status NAME`: C1, C4, C7.
    let token = cli_login(&portal).await;
    let status = cli_session(&portal, &token, &name, "schedule").await;
    cli_logout(&portal, &token).await;
    assert_eq!(status.status.as_deref(), Some("RUNNING"), "{status:?}");
    assert_time("schedule started", &status.started);
    assert_time("schedule expires", &status.expires);
    let countdown = status.countdown.expect("schedule: countdown");
    assert!((1..=1800).contains(&countdown), "{status:?}");
    // Half an hour left: not expiring (the portal's threshold is
    // max(300, min(duration, 4 h) / 4) = 450 s).
    assert_eq!(status.expiring, Some(false), "{status:?}");
    assert!(status.extendable.is_some(), "{status:?}");

    // `educates cluster session extend NAME`: C1, C5, C7. Whether this one
    // may be extended is the portal's rule; the answer is 200 either way.
    let token = cli_login(&portal).await;
    let extended = cli_session(&portal, &token, &name, "extend").await;
    cli_logout(&portal, &token).await;
    assert_eq!(extended.status.as_deref(), Some("RUNNING"), "{extended:?}");
    assert_time("extend started", &extended.started);
    assert_time("extend expires", &extended.expires);
    assert!(extended.countdown.is_some_and(|c| c >= 1), "{extended:?}");
    assert!(extended.expiring.is_some() && extended.extendable.is_some());

    // `educates cluster session terminate NAME`: C1, C6, C7. The portal's
    // answer has only started and expires (the stop time); the CLI prints
    // zero values for the rest.
    let token = cli_login(&portal).await;
    let ended = cli_session(&portal, &token, &name, "terminate").await;
    cli_logout(&portal, &token).await;
    assert_time("terminate started", &ended.started);
    assert_time("terminate expires", &ended.expires);
}

#[tokio::test]
async fn educates_cli_diagnostics_reads_the_catalog_through_the_slashless_path() {
    let portal = Portal::start("clients-cli-diagnostics").await;
    // `educates admin diagnostics collect` (pkg/diagnostics/fetcher.go,
    // 228-262): Login, GetWorkshopsCatalog, the deferred logout: C1, C2, C7.
    let token = cli_login(&portal).await;
    let catalog = cli_catalog(&portal, &token).await;
    assert_catalog(&catalog);
    cli_logout(&portal, &token).await;
}

#[tokio::test]
async fn educates_cli_says_no_session_found_for_an_unknown_session_and_still_logs_out() {
    let portal = Portal::start("clients-cli-unknown").await;
    // `educates cluster session status lab-markdown-sample-w01-s999`: C1,
    // C4, and C7, which Go's defer runs even as the command fails.
    let token = cli_login(&portal).await;
    let r = cli_session_call(&portal, &token, &format!("{ENVIRONMENT}-s999"), "schedule").await;
    assert!(
        matches!(r.status, 400 | 404),
        "C4 for an unknown session: {} {} (the CLI says \"No session found.\" only for 400 and 404)",
        r.status,
        r.text()
    );
    cli_logout(&portal, &token).await;
}

// ---- the Backstage plugin (TeraSky, node-fetch 2) ----

/// B1, `getAccessToken`: the form written by hand with `encodeURIComponent`,
/// the client in Basic (`Buffer.from(id:secret).toString('base64')`).
/// Needs a 2xx (`response.ok`); reads `access_token`.
async fn backstage_token(portal: &Portal) -> String {
    let r = portal
        .password_grant(
            Library::NodeFetch,
            "grant_type=password&username=robot%40educates&password=pW8sR2dK5yH4",
        )
        .await;
    assert!(r.ok(), "B1 token: {} {}", r.status, r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("B1: JSON");
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("B1: no access_token string: {v}"))
        .to_string()
}

/// B2, `getWorkshops`: the catalog of workshops, passed verbatim to the
/// frontend. Checks what the backend and the frontend read of it.
async fn backstage_workshops(portal: &Portal, token: &str) {
    let r = portal
        .send(
            Library::NodeFetch,
            Method::GET,
            "/workshops/catalog/workshops/",
            &[bearer(token)],
            b"",
        )
        .await;
    assert!(r.ok(), "B2 catalog: {} {}", r.status, r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("B2: JSON");
    // TrainingPortalHeader.tsx: name, url, Object.entries(labels),
    // sessions.allocated and sessions.maximum (0 shown as "Unlimited").
    let p = &v["portal"];
    assert!(
        p["name"].is_string() && p["url"].is_string(),
        "B2 portal: {p}"
    );
    assert!(
        p["labels"].is_object(),
        "B2: portal.labels must be an object: {p}"
    );
    assert!(
        p["sessions"]["allocated"].is_u64() && p["sessions"]["maximum"].is_u64(),
        "B2 portal.sessions: {p}"
    );
    for optional in ["title", "logo"] {
        assert!(
            p.get(optional).is_none_or(|t| t.is_string() || t.is_null()),
            "B2 portal.{optional}: {p}"
        );
    }
    // router.ts finds the workshop by environment.name; WorkshopCard.tsx
    // shows the rest (tags.length: an array), available = capacity -
    // allocated.
    let workshops = v["workshops"].as_array().expect("B2: workshops array");
    let w = workshops
        .iter()
        .find(|w| w["environment"]["name"] == ENVIRONMENT)
        .unwrap_or_else(|| panic!("B2: no workshop in {ENVIRONMENT}: {v}"));
    assert_eq!(w["name"], WORKSHOP);
    assert_eq!(w["title"], "Markdown Sample");
    assert_eq!(w["description"], "A sample workshop using Markdown");
    assert_eq!(w["vendor"], "educates.dev");
    assert_eq!(w["difficulty"], "beginner");
    assert_eq!(w["duration"], "30m");
    assert_eq!(w["tags"], json!(["educates", "markdown"]));
    assert_eq!(w["environment"]["capacity"], 3);
    assert!(w["environment"]["allocated"].is_u64(), "{w}");
}

#[tokio::test]
async fn backstage_plugin_lists_workshops_and_requests_one() {
    let portal = Portal::start("clients-backstage").await;

    // GET /api/educates/workshops/:portal: B1, B2.
    let token = backstage_token(&portal).await;
    backstage_workshops(&portal, &token).await;

    // POST /api/educates/workshops/:portal/:env/request: B1, B2 (the
    // environment must be in the catalog), B4: a POST with no body and no
    // Content-Type, only index_url.
    let token = backstage_token(&portal).await;
    backstage_workshops(&portal, &token).await;
    let r = portal
        .send(
            Library::NodeFetch,
            Method::POST,
            &format!(
                "/workshops/environment/{ENVIRONMENT}/request/\
                 ?index_url=https%3A%2F%2Fbackstage.test%2Feducates"
            ),
            &[bearer(&token)],
            b"",
        )
        .await;
    assert!(r.ok(), "B4 request: {} {}", r.status, r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("B4: JSON");
    // `{...sessionData, url: portal.url + sessionData.url}` to the
    // browser, which `window.open`s the url.
    let name = v["name"]
        .as_str()
        .unwrap_or_else(|| panic!("B4: no name: {v}"));
    let url = v["url"]
        .as_str()
        .unwrap_or_else(|| panic!("B4: no url: {v}"));
    assert_activation_path(url, name);
    assert!(
        url.ends_with("&index_url=https%3A%2F%2Fbackstage.test%2Feducates"),
        "{url}"
    );
    let app = portal
        .open_in_browser(&format!("{}{url}", portal.url))
        .await;
    assert!(app.starts_with("backend-"), "{app}");
}
