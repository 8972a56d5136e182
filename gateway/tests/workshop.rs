//! What the gateway does for training-portal sessions (issue 16), against
//! the real server on port 0 in front of testkit's real origins: a route's
//! added request headers (a session's request parameters, which the app
//! must be able to trust), and an access link opened again by the browser
//! it already let in.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use gateway::access::{
    AccessConfig, AccessList, Activation, ActivationFuture, ActivationRequest, Activator,
    KeyHandle, KeyRing, SigningKey, ACTIVATE_PATH,
};
use gateway::headers::AddedHeaders;
use http::header::{HeaderName, HeaderValue};
use testkit::routes::route;
use testkit::Origin;

/// A workshop session's parameters as the control plane compiles them:
/// under the reserved prefix `X-Workshop-Param-`.
fn parameters(pairs: &[(&'static str, &'static str)]) -> AddedHeaders {
    let headers = pairs
        .iter()
        .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
        .collect();
    AddedHeaders::new(Some("X-Workshop-Param-"), headers).unwrap()
}

#[tokio::test]
async fn added_headers_replace_forged_ones_and_clear_the_reserved_prefix() {
    let app = Origin::start("app");
    let lab = route("lab", &["lab"], &[], &app.url()).request_headers(parameters(&[
        ("x-workshop-param-level", "2"),
        ("x-workshop-param-name", "Ann Lee"),
    ]));
    let other = route("other", &["other"], &[], &app.url());
    let gw = Gateway::start(vec![lab, other]).await;
    let forged = [
        ("X-Workshop-Param-Level", "9"),
        ("x-workshop-param-admin", "true"),
        ("x-app", "kept"),
    ];
    let a = send(&client(), &gw, "GET", "lab.localhost", "/", &forged, vec![]).await;
    assert_eq!(a.status, 200);
    let h = &a.json()["headers"];
    assert_eq!(h["x-workshop-param-level"], "2", "{h}");
    assert_eq!(h["x-workshop-param-name"], "Ann Lee", "{h}");
    assert!(
        h.get("x-workshop-param-admin").is_none(),
        "a browser's header under the prefix reached the app: {h}"
    );
    assert_eq!(h["x-app"], "kept");

    // A route that adds nothing passes the client's headers on as they are.
    let a = send(
        &client(),
        &gw,
        "GET",
        "other.localhost",
        "/",
        &forged,
        vec![],
    )
    .await;
    let h = &a.json()["headers"];
    assert_eq!(h["x-workshop-param-level"], "9", "{h}");
    assert_eq!(h["x-workshop-param-admin"], "true", "{h}");
}

/// The control plane's part of an access link, as far as the gateway can
/// tell: it takes every token and writes down who held a cookie for the
/// session when the link was opened.
#[derive(Default)]
struct Holders {
    seen: Mutex<Vec<Option<String>>>,
}

impl Activator for Holders {
    fn activate(&self, req: ActivationRequest) -> ActivationFuture {
        self.seen
            .lock()
            .unwrap()
            .push(req.holder.as_deref().map(str::to_string));
        Box::pin(async {
            Ok(Activation {
                cookie: "signed".into(),
                max_age: 60,
                path: "/".into(),
                user: "ann".into(),
            })
        })
    }
}

#[tokio::test]
async fn an_access_link_tells_the_control_plane_whose_cookie_the_browser_holds() {
    let app = Origin::start("app");
    let nb = route("nb", &["nb"], &[], &app.url()).private(Some(Arc::new(AccessList {
        session: "nb".into(),
        owner: "ann".into(),
        groups: vec![],
    })));
    let holders = Arc::new(Holders::default());
    let activator: Arc<dyn Activator> = holders.clone();
    let gw = Gateway::start_proxy(vec![nb], |p| {
        p.with_access(AccessConfig {
            keys: KeyHandle::new(keys()),
            activator: Some(activator),
            login_url: None,
            oidc: None,
        })
    })
    .await;
    let link = format!("{ACTIVATE_PATH}?token=t1");
    let open = |cookie: Option<String>| {
        let gw = &gw;
        let link = &link;
        async move {
            let cookie = cookie.map(|c| format!("sessiongate={c}"));
            let headers: Vec<(&str, &str)> = cookie
                .as_deref()
                .map(|c| vec![("cookie", c)])
                .unwrap_or_default();
            send(&client(), gw, "GET", "nb.localhost", link, &headers, vec![]).await
        }
    };
    // A fresh browser; the browser the link let in (its cookie for this
    // session); one with a cookie for another session, or a forged one.
    assert_eq!(open(None).await.status, 302);
    assert_eq!(open(Some(signed("nb", "ann"))).await.status, 302);
    assert_eq!(open(Some(signed("other", "ann"))).await.status, 302);
    let forged = KeyRing::new(SigningKey::new("k1", &[1; 32]).unwrap(), None)
        .sign("nb", "ann", u64::MAX / 2)
        .unwrap();
    assert_eq!(open(Some(forged)).await.status, 302);
    assert_eq!(
        *holders.seen.lock().unwrap(),
        [None, Some("ann".to_string()), None, None]
    );
}
