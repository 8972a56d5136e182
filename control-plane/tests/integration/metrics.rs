//! `/metrics` scraped from a real server (in process) and parsed with a real
//! Prometheus text-format parser (prometheus-parse), after traffic of each
//! kind went through the gateway.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prometheus_parse::{Scrape, Value};
use serde_json::json;
use testkit::server::{public_session, InProcess};
use testkit::{http, temp_dir, Endpoints, Origin, WsEcho};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const FAMILIES: &[&str] = &[
    "sessiongate_http_requests_total",
    "sessiongate_http_request_duration_seconds",
    "sessiongate_upstream_errors_total",
    "sessiongate_connections_open",
    "sessiongate_websockets_open",
    "sessiongate_connections_refused_total",
    "sessiongate_route_table_version",
    "sessiongate_route_table_routes",
    "sessiongate_route_table_swap_seconds",
    "sessiongate_sessions",
    "sessiongate_reaper_actions_total",
    "sessiongate_tls_handshakes_total",
    "sessiongate_certificate_expiry_timestamp_seconds",
];

async fn scrape(sg: &Endpoints) -> (String, Scrape) {
    let (s, text) = http(sg.api, "127.0.0.1", "/metrics", "").await;
    assert_eq!(s, 200);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(_, b)| b)
        .to_string();
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not the Prometheus text format: {e}\n{body}"));
    (body, scrape)
}

/// The value of the sample `name` with exactly these labels.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.iter().find_map(|x| {
        let want: HashMap<&str, &str> = labels.iter().copied().collect();
        let have: HashMap<&str, &str> = x
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        (x.metric == name && want == have).then(|| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
    })
}

#[tokio::test]
async fn metrics_parse_and_count_the_traffic() {
    let backend = Origin::named("backend");
    let peer = WsEcho::start();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sg = InProcess::start(&temp_dir("metrics"), "").await;
    sg.api("POST", "/api/v1/users", Some(json!({"name": "ann"})))
        .await;
    for (name, port) in [
        ("app", backend.addr.port()),
        ("ws", peer.addr.port()),
        ("down", closed),
    ] {
        let (s, v) = sg
            .api("POST", "/api/v1/sessions", Some(public_session(name, port)))
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let (_, before) = scrape(&sg).await;
    let count = |s: &Scrape, kind: &str, code: &str| {
        value(
            s,
            "sessiongate_http_requests_total",
            &[("kind", kind), ("code", code)],
        )
        .unwrap_or(-1.0)
    };
    let ok_before = count(&before, "upstream", "2xx");

    for _ in 0..3 {
        assert_eq!(sg.open("app").await.0, 200);
    }
    assert_eq!(sg.open("nope").await.0, 404);
    assert_eq!(sg.open("down").await.0, 502);
    let stream = TcpStream::connect(sg.gateway).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://ws.localhost/", stream)
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    ws.next().await.unwrap().unwrap();

    // A keep-alive connection left open to the gateway.
    let mut idle = TcpStream::connect(sg.gateway).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        idle.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }

    let (text, after) = scrape(&sg).await;
    // Every family the issue names is there, with HELP and TYPE.
    for f in FAMILIES {
        assert!(after.docs.contains_key(*f), "no HELP for {f}\n{text}");
        assert!(
            text.contains(&format!("# TYPE {f} ")),
            "no TYPE for {f}\n{text}"
        );
    }
    assert_eq!(count(&after, "upstream", "2xx") - ok_before, 4.0, "{text}");
    assert!(count(&after, "gateway", "4xx") >= 1.0, "{text}");
    assert!(count(&after, "upstream", "5xx") >= 1.0, "{text}");
    assert!(
        value(
            &after,
            "sessiongate_upstream_errors_total",
            &[("cause", "unreachable")]
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(&after, "sessiongate_websockets_open", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(
        value(&after, "sessiongate_connections_open", &[]).unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(&after, "sessiongate_route_table_routes", &[]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&after, "sessiongate_sessions", &[("state", "running")]),
        Some(3.0),
        "{text}"
    );
    // The histogram counts what the counters count.
    let hist = after
        .samples
        .iter()
        .find(|s| s.metric == "sessiongate_http_request_duration_seconds")
        .expect("the duration histogram");
    match &hist.value {
        Value::Histogram(buckets) => {
            assert!(buckets.len() >= 14, "{buckets:?}");
            assert!(
                buckets.windows(2).all(|w| w[0].count <= w[1].count),
                "cumulative"
            );
        }
        other => panic!("not a histogram: {other:?}"),
    }

    // The WebSocket gauge goes down when it closes.
    ws.close(None).await.unwrap();
    drop(ws);
    let end = std::time::Instant::now() + testkit::DEADLINE;
    loop {
        let (_, s) = scrape(&sg).await;
        if value(&s, "sessiongate_websockets_open", &[]) == Some(0.0) {
            break;
        }
        assert!(std::time::Instant::now() < end, "websockets_open stayed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_connection_past_the_per_client_limit_is_closed_and_counted() {
    use tokio::io::AsyncReadExt;
    let sg = InProcess::start(
        &temp_dir("metrics-refused"),
        "[gateway]\nmax_connections_per_ip = 1\n",
    )
    .await;
    let _held = TcpStream::connect(sg.gateway).await.unwrap();
    let mut refused = TcpStream::connect(sg.gateway).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(testkit::DEADLINE, refused.read_to_end(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a second connection with max_connections_per_ip = 1 was kept open: {read:?}"
    );
    let (text, s) = scrape(&sg).await;
    assert_eq!(
        value(
            &s,
            "sessiongate_connections_refused_total",
            &[("reason", "per_ip_limit")]
        ),
        Some(1.0),
        "{text}"
    );
}
