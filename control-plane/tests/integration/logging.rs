//! Logs of the real binary: the access-log line per request (text and JSON),
//! switching it off, and the request span that carries the request id into
//! every event of the request.

use crate::common::{wait_log, Sessiongate};
use serde_json::Value;
use testkit::{http, temp_dir, Origin};
use tokio::net::TcpListener;

/// A port nothing listens on (bound, then released).
async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Routes `app.localhost` to `app` (an origin answering `hello`) and
/// `dead.localhost` to a closed port; returns the configuration and both
/// upstream URLs.
async fn routes(app: &Origin) -> (String, String, String) {
    let app = app.addr;
    let dead = dead_port().await;
    let config = format!(
        "[[routes]]\nhost = \"app.localhost\"\nupstream = \"http://{app}\"\n\
         [[routes]]\nhost = \"dead.localhost\"\nupstream = \"http://127.0.0.1:{dead}\"\n"
    );
    (
        config,
        format!("http://{app}"),
        format!("http://127.0.0.1:{dead}"),
    )
}

fn json_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
}

#[tokio::test]
async fn json_access_log_line_per_request_and_request_span() {
    let app = Origin::named("hello");
    let (config, upstream, dead) = routes(&app).await;
    let dir = temp_dir("log-json");
    let sg = Sessiongate::start_with_args(&dir, &config, &[], &["--log-format", "json"]).await;

    // Every line the server wrote so far is one JSON object.
    for line in sg.log.lock().unwrap().iter() {
        json_line(line);
    }

    let (status, body) = http(
        sg.gateway,
        "app.localhost",
        "/a/b?token=SECRET-IN-QUERY",
        "X-Request-Id: rid-json-1\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "hello");
    let line = json_line(&wait_log(&sg.log, "rid-json-1").await);
    assert_eq!(line["target"], "access", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["host"], "app.localhost", "{line}");
    assert_eq!(line["path"], "/a/b", "the query is never logged: {line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["bytes"], 5, "the body's length: {line}");
    assert_eq!(line["upstream"], upstream.as_str(), "{line}");
    assert_eq!(line["request_id"], "rid-json-1", "{line}");
    assert_eq!(line["complete"], true, "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert!(line["remote"]
        .as_str()
        .is_some_and(|r| r.starts_with("127.0.0.1:")));

    // An upstream that refuses: the access line has the gateway's status and
    // page size, and the warning is inside the request's span, which
    // carries the id.
    let (status, page) = http(
        sg.gateway,
        "dead.localhost",
        "/",
        "X-Request-Id: rid-json-2\r\n",
    )
    .await;
    assert_eq!(status, 502);
    let warn = json_line(&wait_log(&sg.log, "\"proxy error\"").await);
    assert_eq!(warn["level"], "WARN", "{warn}");
    assert_eq!(warn["span"]["name"], "request", "{warn}");
    assert_eq!(warn["span"]["id"], "rid-json-2", "{warn}");
    let access = json_line(&wait_log(&sg.log, "\"status\":502").await);
    assert_eq!(access["request_id"], "rid-json-2", "{access}");
    assert_eq!(access["upstream"], dead.as_str(), "{access}");
    assert_eq!(access["bytes"], page.len() as u64, "{access}");

    let log = sg.log.lock().unwrap();
    assert!(
        !log.iter().any(|l| l.contains("SECRET-IN-QUERY")),
        "a query string reached the log: {log:#?}"
    );
}

#[tokio::test]
async fn text_access_log_by_default() {
    let app = Origin::named("hello");
    let (config, upstream, _) = routes(&app).await;
    let dir = temp_dir("log-text");
    let sg = Sessiongate::start(&dir, &config, &[]).await;
    let (status, _) = http(
        sg.gateway,
        "app.localhost",
        "/p",
        "X-Request-Id: rid-text-1\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let line = wait_log(&sg.log, "rid-text-1").await;
    for part in [
        " INFO access: request ",
        "method=GET",
        "host=\"app.localhost\"",
        "path=\"/p\"",
        "status=200",
        "bytes=5",
        &format!("upstream=\"{upstream}\""),
        "request_id=\"rid-text-1\"",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    // The span prefixes events of the request with its id.
    let (status, _) = http(
        sg.gateway,
        "dead.localhost",
        "/",
        "X-Request-Id: rid-text-2\r\n",
    )
    .await;
    assert_eq!(status, 502);
    let warn = wait_log(&sg.log, "proxy error").await;
    assert!(warn.contains("request{id=rid-text-2}"), "{warn}");
}

#[tokio::test]
async fn no_access_log_switches_the_lines_off() {
    let app = Origin::named("hello");
    let (config, _, _) = routes(&app).await;
    let dir = temp_dir("log-off");
    let sg = Sessiongate::start_with_args(&dir, &config, &[], &["--no-access-log"]).await;
    let (status, _) = http(
        sg.gateway,
        "app.localhost",
        "/",
        "X-Request-Id: rid-off-1\r\n",
    )
    .await;
    assert_eq!(status, 200);
    // The error's warning comes after the first request's access line would
    // have (a line is written before the response's last bytes are sent,
    // and the log is one pipe), so once it is there the absence is real.
    let (status, _) = http(
        sg.gateway,
        "dead.localhost",
        "/",
        "X-Request-Id: rid-off-2\r\n",
    )
    .await;
    assert_eq!(status, 502);
    wait_log(&sg.log, "rid-off-2").await;
    let log = sg.log.lock().unwrap();
    assert!(
        !log.iter().any(|l| l.contains("access: request")),
        "access lines with --no-access-log: {log:#?}"
    );
    assert!(!log.iter().any(|l| l.contains("rid-off-1")), "{log:#?}");
}
