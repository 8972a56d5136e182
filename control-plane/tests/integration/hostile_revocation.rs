//! Revocation without gaps (issue 15, finding 4): `sessiongate serve` in
//! process in front of real origins, browsers with cookie jars, and changes
//! made through the API. Whatever a change takes away — a user's access,
//! the session's running state, its public access, its target — must not
//! reach the browser afterwards: not the answer to a request already with
//! the app, not the rest of a slow response, not a WebSocket.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use testkit::{eventually, Origin, WsEcho, DEADLINE};

use crate::access::{
    closed_within, create, create_shared, echo_origin, echoes, server, sign_in, stream,
};
use crate::common::jar::{Browser, Page};
use tokio::task::JoinHandle;

/// What a revocation is given to close what it ends, as the README promises.
const WITHIN: Duration = Duration::from_secs(1);

/// `browser` GETs `url`, a `/hold` that `origin` answers only when
/// released: the page to come, once the request has reached the origin.
async fn held(origin: &Origin, browser: Browser, url: String) -> JoinHandle<Page> {
    let before = origin.counts().requests;
    let page = tokio::spawn(async move { browser.get(&url).await });
    let reqs = origin.requests.clone();
    eventually("the request to reach the app", DEADLINE, || {
        reqs.load(Ordering::SeqCst) > before
    })
    .await;
    page
}

#[tokio::test]
async fn a_response_in_flight_when_its_user_loses_access_is_not_passed_on() {
    let origin = echo_origin();
    let sg = server("hostile-revoke-in-flight", "").await;
    let port = sg.gateway.port();
    create_shared(&sg, "nb", origin.addr.port()).await;
    let bob = Browser::new(sg.gateway);
    sign_in(&sg, &bob, "nb", "bob").await;

    // The app holds bob's request while his access is taken away.
    let page = held(&origin, bob, format!("http://nb.localhost:{port}/hold")).await;
    let (s, v) = sg
        .api("DELETE", "/api/v1/groups/team/members/bob", None)
        .await;
    assert_eq!(s, 200, "{v}");
    origin.release.notify_one();
    let page = page.await.unwrap();
    assert_eq!(
        page.status, 403,
        "the app's answer reached bob after his access was revoked: {}",
        page.body
    );
    assert!(!page.body.contains("path=/hold"), "{}", page.body);
}

#[tokio::test]
async fn a_response_in_flight_when_its_session_is_paused_is_not_passed_on() {
    let origin = echo_origin();
    let sg = server("hostile-pause-in-flight", "").await;
    let port = sg.gateway.port();
    create(
        &sg,
        json!({"name": "nb", "owner": "ann", "public": true,
               "remote_host": "127.0.0.1", "remote_port": origin.addr.port()}),
    )
    .await;
    let url = format!("http://nb.localhost:{port}/hold");
    let page = held(&origin, Browser::new(sg.gateway), url).await;
    let (s, v) = sg.api("POST", "/api/v1/sessions/nb/pause", None).await;
    assert_eq!(s, 200, "{v}");
    origin.release.notify_one();
    let page = page.await.unwrap();
    assert_eq!(
        page.status, 503,
        "the app's answer got through after the session was paused: {}",
        page.body
    );
}

#[tokio::test]
async fn a_slow_response_of_known_length_is_cut_when_its_user_loses_access() {
    let origin = echo_origin();
    let sg = server("hostile-revoke-sized", "").await;
    let port = sg.gateway.port();
    create_shared(&sg, "feed", origin.addr.port()).await;
    let (ann, bob) = (Browser::new(sg.gateway), Browser::new(sg.gateway));
    sign_in(&sg, &ann, "feed", "ann").await;
    sign_in(&sg, &bob, "feed", "bob").await;
    // `Content-Length: 9`, 5 bytes sent, the rest held back by the app.
    let feed = format!("feed.localhost:{port}");
    let mut ann_stream = stream(sg.gateway, &feed, "/stream?sized", &ann).await;
    let mut bob_stream = stream(sg.gateway, &feed, "/stream?sized", &bob).await;

    let (s, v) = sg
        .api("DELETE", "/api/v1/groups/team/members/bob", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        tokio::time::timeout(WITHIN, bob_stream.ended())
            .await
            .is_ok(),
        "bob's 9-byte response is still open {WITHIN:?} after his access was revoked"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ann_stream.ended())
            .await
            .is_err(),
        "the owner's response was cut too"
    );
}

#[tokio::test]
async fn turning_public_off_closes_the_websockets_and_streams_it_let_in() {
    let peer = WsEcho::start();
    let origin = echo_origin();
    let sg = server("hostile-public-off", "").await;
    let port = sg.gateway.port();
    for (name, p) in [("ide", peer.addr.port()), ("feed", origin.addr.port())] {
        create(
            &sg,
            json!({"name": name, "owner": "ann", "public": true,
                   "remote_host": "127.0.0.1", "remote_port": p}),
        )
        .await;
    }
    let anonymous = Browser::new(sg.gateway);
    let ws_url = format!("ws://ide.localhost:{port}/");
    let mut ws = anonymous
        .websocket(&ws_url)
        .await
        .expect("a public handshake");
    assert!(echoes(&mut ws, "hello").await);
    let feed = format!("feed.localhost:{port}");
    let mut feed_stream = stream(sg.gateway, &feed, "/stream", &anonymous).await;

    for name in ["ide", "feed"] {
        let (s, v) = sg
            .api(
                "PATCH",
                &format!("/api/v1/sessions/{name}"),
                Some(json!({"public": false})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    assert!(
        closed_within(&mut ws, WITHIN).await.is_some(),
        "an anonymous WebSocket is still open {WITHIN:?} after the session stopped being public"
    );
    assert!(
        tokio::time::timeout(WITHIN, feed_stream.ended())
            .await
            .is_ok(),
        "an anonymous stream is still open {WITHIN:?} after the session stopped being public"
    );
    assert_eq!(anonymous.websocket(&ws_url).await.err(), Some(401));
    // The owner gets back in with an access link.
    let ann = Browser::new(sg.gateway);
    sign_in(&sg, &ann, "ide", "ann").await;
    let mut ws = ann.websocket(&ws_url).await.expect("the owner's handshake");
    assert!(echoes(&mut ws, "back").await);
}

#[tokio::test]
async fn changing_the_target_closes_websockets_to_the_old_one() {
    let (old, new) = (WsEcho::start(), WsEcho::start());
    let sg = server("hostile-retarget", "").await;
    let port = sg.gateway.port();
    create(
        &sg,
        json!({"name": "ide", "owner": "ann", "public": true,
               "remote_host": "127.0.0.1", "remote_port": old.addr.port()}),
    )
    .await;
    let browser = Browser::new(sg.gateway);
    let ws_url = format!("ws://ide.localhost:{port}/");
    let mut ws = browser.websocket(&ws_url).await.expect("handshake");
    assert!(echoes(&mut ws, "to the old one").await);

    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/sessions/ide",
            Some(json!({"remote_port": new.addr.port()})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        closed_within(&mut ws, WITHIN).await.is_some(),
        "a WebSocket to the old target is still open {WITHIN:?} after the target changed"
    );
    let mut ws = browser.websocket(&ws_url).await.expect("handshake");
    assert!(echoes(&mut ws, "to the new one").await);
    assert_eq!(new.counts().upgrades, 1);
    assert_eq!(old.counts().upgrades, 1);
}

/// Not a gap but what must stay: moving a session to an equivalent target
/// under load (the benchmark's `churn`) fails no request. A response of
/// known length in flight finishes from the old target.
#[tokio::test]
async fn changing_the_target_lets_a_response_in_flight_finish() {
    let (old, new) = (Origin::named("old"), Origin::named("new"));
    let sg = server("hostile-retarget-in-flight", "").await;
    let port = sg.gateway.port();
    create(
        &sg,
        json!({"name": "nb", "owner": "ann", "public": true,
               "remote_host": "127.0.0.1", "remote_port": old.addr.port()}),
    )
    .await;
    let url = format!("http://nb.localhost:{port}/hold");
    let page = held(&old, Browser::new(sg.gateway), url).await;
    let (s, v) = sg
        .api(
            "PATCH",
            "/api/v1/sessions/nb",
            Some(json!({"remote_port": new.addr.port()})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    old.release.notify_one();
    let page = page.await.unwrap();
    assert_eq!((page.status, page.body.as_str()), (200, "old"));
    assert_eq!(sg.open("nb").await, (200, "new".to_string()));
}
