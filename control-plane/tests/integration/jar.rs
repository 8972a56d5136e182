//! The test browser's cookie jar behaves like a browser's: these tests run
//! [`Browser`] against a small origin on `127.0.0.1:0` that sets cookies on
//! request and echoes what it received, under several `*.localhost` names
//! that all reach the same port.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::Response as WsResponse;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request as WsRequest};
use tokio_tungstenite::tungstenite::Message;

use crate::common::jar::Browser;

/// The origin. Every answer's body echoes the request, one `name: value`
/// line each: `host`, `cookie` (all `Cookie` headers joined by ` | `),
/// `cookie-headers` (how many there were), `accept`, `user-agent`, `x-test`.
///
/// `?c=<Set-Cookie>` (repeatable, URL-encoded) adds those `Set-Cookie`
/// headers; `&to=<Location>` makes the answer a `302` to it. `/hops/<n>`
/// redirects to `/hops/<n-1>` down to `/hops/0`.
async fn origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(
                        |req| async move { Ok::<_, Infallible>(answer(&req)) },
                    );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn answer<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let h = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let cookies = h("cookie");
    let mut body = format!(
        "path: {}\nhost: {}\ncookie: {}\ncookie-headers: {}\n",
        req.uri().path(),
        h("host").join(" | "),
        cookies.join(" | "),
        cookies.len(),
    );
    for name in ["accept", "user-agent", "x-test"] {
        body.push_str(&format!("{name}: {}\n", h(name).join(" | ")));
    }

    let mut resp = Response::builder();
    let query = req.uri().query().unwrap_or("");
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "c" => resp = resp.header("set-cookie", &*v),
            "to" => resp = resp.status(302).header("location", &*v),
            _ => {}
        }
    }
    if let Some(n) = req.uri().path().strip_prefix("/hops/") {
        let n: u32 = n.parse().unwrap();
        if n > 0 {
            resp = resp
                .status(302)
                .header("location", format!("/hops/{}", n - 1));
        }
    }
    resp.body(Full::new(Bytes::from(body))).unwrap()
}

/// The value of line `name:` in an echoed body.
fn field<'a>(body: &'a str, name: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {name:?} in {body:?}"))
}

/// `?c=` for one Set-Cookie value.
fn set(cookie: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("c", cookie)
        .finish()
}

/// One entry of [`Browser::cookies`].
fn jarred(name: &str, value: &str, domain: &str, path: &str) -> (String, String, String, String) {
    (name.into(), value.into(), domain.into(), path.into())
}

struct Env {
    b: Browser,
    addr: SocketAddr,
    port: u16,
}

impl Env {
    async fn new() -> Env {
        let addr = origin().await;
        Env {
            b: Browser::new(addr),
            addr,
            port: addr.port(),
        }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// What the origin received as `Cookie` on a GET of `host` `path`.
    async fn sent(&self, host: &str, path: &str) -> String {
        let page = self.b.get(&self.url(host, path)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        field(&page.body, "cookie").to_string()
    }
}

#[tokio::test]
async fn request_carries_the_url_host_and_browser_headers() {
    let e = Env::new().await;
    let page = e.b.get(&e.url("nb.localhost", "/x/y?q=1#frag")).await;
    assert_eq!(page.status, 200);
    assert_eq!(field(&page.body, "path"), "/x/y");
    assert_eq!(
        field(&page.body, "host"),
        format!("nb.localhost:{}", e.port)
    );
    assert_eq!(field(&page.body, "accept"), "text/html");
    assert_eq!(field(&page.body, "user-agent"), "sessiongate-tests");
    assert_eq!(field(&page.body, "cookie-headers"), "0");
    assert_eq!(page.url.as_str(), e.url("nb.localhost", "/x/y?q=1#frag"));

    let page =
        e.b.get_with(
            &e.url("nb.localhost", "/"),
            &[("X-Test", "1"), ("Accept", "*/*")],
        )
        .await;
    assert_eq!(field(&page.body, "x-test"), "1");
    assert_eq!(field(&page.body, "accept"), "*/*");
}

#[tokio::test]
async fn host_only_cookie_stays_on_its_host() {
    let e = Env::new().await;
    let page =
        e.b.get(&e.url("a.localhost", &format!("/set?{}", set("h=1"))))
            .await;
    assert_eq!(page.set_cookies(), ["h=1"]);
    assert_eq!(e.b.cookies(), [jarred("h", "1", "a.localhost", "/")]);

    assert_eq!(e.sent("a.localhost", "/anything").await, "h=1");
    assert_eq!(e.sent("b.localhost", "/anything").await, "");
    assert_eq!(
        e.sent("x.a.localhost", "/").await,
        "",
        "host-only: no subdomains"
    );
    assert_eq!(e.b.cookie_header(&e.url("b.localhost", "/")), None);
    // Ports do not scope cookies.
    assert_eq!(
        e.b.cookie_header("http://a.localhost:1/").as_deref(),
        Some("h=1")
    );

    // The same name with Domain= is a different cookie that subdomains get.
    e.b.get(&e.url(
        "a.localhost",
        &format!("/set?{}", set("d=2; Domain=a.localhost")),
    ))
    .await;
    assert_eq!(e.sent("x.a.localhost", "/").await, "d=2");
    assert_eq!(e.sent("b.localhost", "/").await, "");
    let a = e.sent("a.localhost", "/").await;
    assert!(a == "d=2; h=1", "{a}");
}

#[tokio::test]
async fn path_cookie_only_under_its_path() {
    let e = Env::new().await;
    e.b.get(&e.url("a.localhost", &format!("/set?{}", set("root=1"))))
        .await;
    e.b.get(&e.url("a.localhost", &format!("/set?{}", set("lab=1; Path=/lab/"))))
        .await;

    // One Cookie header, the longer path first.
    let page = e.b.get(&e.url("a.localhost", "/lab/x")).await;
    assert_eq!(field(&page.body, "cookie"), "lab=1; root=1");
    assert_eq!(field(&page.body, "cookie-headers"), "1");
    assert_eq!(e.sent("a.localhost", "/lab/").await, "lab=1; root=1");
    assert_eq!(e.sent("a.localhost", "/other").await, "root=1");
    assert_eq!(e.sent("a.localhost", "/lab").await, "root=1");
    assert_eq!(e.sent("a.localhost", "/laboratory").await, "root=1");

    // Without Path=, the default path is the request path's directory.
    e.b.get(&e.url("a.localhost", &format!("/dir/set?{}", set("dflt=1"))))
        .await;
    assert_eq!(e.sent("a.localhost", "/dir/x").await, "dflt=1; root=1");
    assert_eq!(e.sent("a.localhost", "/x").await, "root=1");
}

#[tokio::test]
async fn max_age_zero_removes_the_cookie() {
    let e = Env::new().await;
    e.b.get(&e.url("a.localhost", &format!("/set?{}", set("sid=abc; Path=/"))))
        .await;
    e.b.get(&e.url("a.localhost", &format!("/set?{}", set("keep=1; Path=/"))))
        .await;
    assert_eq!(e.sent("a.localhost", "/").await, "keep=1; sid=abc");

    e.b.get(&e.url(
        "a.localhost",
        &format!("/set?{}", set("sid=; Path=/; Max-Age=0")),
    ))
    .await;
    assert_eq!(e.sent("a.localhost", "/").await, "keep=1");
    assert!(
        e.b.cookies().iter().all(|c| c.0 != "sid"),
        "{:?}",
        e.b.cookies()
    );

    // An expired Expires removes it too.
    e.b.get(&e.url(
        "a.localhost",
        &format!(
            "/set?{}",
            set("keep=1; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        ),
    ))
    .await;
    assert_eq!(e.sent("a.localhost", "/").await, "");
    assert!(e.b.cookies().is_empty(), "{:?}", e.b.cookies());
}

#[tokio::test]
async fn secure_cookie_not_sent_over_http() {
    let e = Env::new().await;
    let page =
        e.b.get(&e.url(
            "a.localhost",
            &format!(
                "/set?{}&{}",
                set("sec=1; Secure; Path=/"),
                set("plain=1; Path=/")
            ),
        ))
        .await;
    assert_eq!(page.set_cookies().len(), 2);
    assert_eq!(e.sent("a.localhost", "/").await, "plain=1");
    // It is in the jar, only held back from http://.
    assert_eq!(e.b.cookies().len(), 2);
    assert_eq!(
        e.b.cookie_header("https://a.localhost/").as_deref(),
        Some("plain=1; sec=1")
    );
}

#[tokio::test]
async fn follow_keeps_cookies_set_on_redirects() {
    let e = Env::new().await;
    let start = e.url(
        "a.localhost",
        &format!("/start?{}&to=%2Flanding%3Fz", set("hop=1; Path=/")),
    );

    // get does not follow (a browser of its own, to start from an empty jar).
    let page = Browser::new(e.addr).get(&start).await;
    assert_eq!(page.status, 302);
    assert_eq!(page.header("location"), Some("/landing?z"));
    assert_eq!(page.header("Location"), Some("/landing?z"));
    assert_eq!(page.set_cookies(), ["hop=1; Path=/"]);

    let page = e.b.follow(&start).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.url.as_str(), e.url("a.localhost", "/landing?z"));
    assert_eq!(field(&page.body, "path"), "/landing");
    assert_eq!(field(&page.body, "cookie"), "hop=1");

    // Across hosts: each hop gets its own host's cookies, and a relative
    // Location resolves against the URL that answered it.
    let to_b = e.url("b.localhost", "/b/");
    let page =
        e.b.follow(&e.url(
            "a.localhost",
            &format!(
                "/x?{}&to={}",
                set("a2=1; Path=/"),
                url::form_urlencoded::byte_serialize(
                    format!("{to_b}next?{}&to=..%2Fend", set("b=1; Path=/")).as_bytes()
                )
                .collect::<String>()
            ),
        ))
        .await;
    assert_eq!(page.url.as_str(), e.url("b.localhost", "/end"));
    assert_eq!(field(&page.body, "host"), format!("b.localhost:{}", e.port));
    assert_eq!(field(&page.body, "cookie"), "b=1");
    assert_eq!(e.sent("a.localhost", "/").await, "a2=1; hop=1");
}

#[tokio::test]
async fn follow_takes_ten_redirects() {
    let e = Env::new().await;
    let page = e.b.follow(&e.url("a.localhost", "/hops/10")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.url.path(), "/hops/0");
}

#[tokio::test]
#[should_panic(expected = "more than 10 redirects")]
async fn follow_refuses_an_eleventh_redirect() {
    let e = Env::new().await;
    e.b.follow(&e.url("a.localhost", "/hops/11")).await;
}

#[tokio::test]
async fn tampering_and_planting() {
    let e = Env::new().await;
    e.b.get(&e.url(
        "a.localhost",
        &format!(
            "/set?{}",
            set("tok=good; Path=/lab/; Max-Age=3600; HttpOnly")
        ),
    ))
    .await;
    e.b.set_value(&e.url("a.localhost", "/lab/x"), "tok", "forged");
    assert_eq!(e.sent("a.localhost", "/lab/x").await, "tok=forged");
    assert_eq!(e.sent("a.localhost", "/").await, "", "same path as before");
    assert_eq!(
        e.b.cookies(),
        [jarred("tok", "forged", "a.localhost", "/lab/")]
    );

    // A cookie copied to another host, as if that host had set it.
    e.b.plant(&e.url("b.localhost", "/"), "tok=copied; Path=/");
    assert_eq!(e.sent("b.localhost", "/lab/x").await, "tok=copied");
    assert_eq!(e.sent("a.localhost", "/lab/x").await, "tok=forged");
    // An expired plant removes.
    e.b.plant(&e.url("b.localhost", "/"), "tok=; Path=/; Max-Age=0");
    assert_eq!(e.sent("b.localhost", "/").await, "");
}

#[test]
#[should_panic(expected = "cannot set")]
fn plant_refuses_a_foreign_domain() {
    let b = Browser::new("127.0.0.1:9".parse().unwrap());
    b.plant("http://a.localhost/", "x=1; Domain=b.localhost");
}

/// A WebSocket origin that refuses (403) a handshake without `Cookie:
/// ws=ok` and otherwise echoes one message with the Host it saw.
async fn ws_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut host = String::new();
                // The Err type is tungstenite's, not ours to box.
                #[allow(clippy::result_large_err)]
                let check = |req: &WsRequest, mut resp: WsResponse| {
                    host = req.headers()["host"].to_str().unwrap().to_string();
                    let cookie = req.headers().get("cookie").map(|v| v.to_str().unwrap());
                    if cookie != Some("ws=ok") {
                        let mut refused = ErrorResponse::new(Some("no".into()));
                        *refused.status_mut() = http::StatusCode::FORBIDDEN;
                        return Err(refused);
                    }
                    resp.headers_mut()
                        .insert("set-cookie", "seen=1; Path=/".parse().unwrap());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, check).await else {
                    return;
                };
                if let Some(Ok(Message::Text(t))) = ws.next().await {
                    let _ = ws
                        .send(Message::text(format!("{host} {}", t.as_str())))
                        .await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_sends_the_jar_cookies() {
    let addr = ws_origin().await;
    let b = Browser::new(addr);
    let port = addr.port();
    let ws = format!("ws://nb.localhost:{port}/socket");

    assert_eq!(b.websocket(&ws).await.err(), Some(403));

    b.plant(&format!("http://other.localhost:{port}/"), "ws=ok");
    assert_eq!(
        b.websocket(&ws).await.err(),
        Some(403),
        "other host's cookie"
    );

    b.plant(&format!("http://nb.localhost:{port}/"), "ws=ok");
    let mut stream = b.websocket(&ws).await.unwrap();
    stream.send(Message::text("hi")).await.unwrap();
    let reply = stream.next().await.unwrap().unwrap();
    assert_eq!(reply.to_text().unwrap(), format!("nb.localhost:{port} hi"));
    assert_eq!(
        b.cookie_header(&format!("http://nb.localhost:{port}/"))
            .as_deref(),
        Some("seen=1; ws=ok"),
        "the handshake's Set-Cookie is stored"
    );
}
