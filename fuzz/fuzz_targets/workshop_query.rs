//! The training portal's query strings: the request endpoint's
//! (`request_query`), the activation endpoint's (`activate_query`) and the
//! catalog's (`catalog_query`), all in `control_plane::api::workshop`, and
//! the activation URL a request answers with (`activation_path`).
//!
//! Input: a raw query string (what follows `?`). Properties:
//! - it never panics: a query parses, or it is refused with 400;
//! - the activation URL a request answers, with the index URL from the
//!   query, reads back as the same token and index URL at the activation
//!   endpoint, whatever characters the index URL holds;
//! - an index URL that the allow-list accepts is on an allowed origin as a
//!   browser parses it.
#![no_main]

use control_plane::access::RedirectPolicy;
use control_plane::api::workshop::{activate_query, activation_path, catalog_query, request_query};
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

/// What `auth::random_token` makes: 64 hex digits.
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn refused_with_400(what: &str, raw: &str, status: StatusCode, message: &str) {
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{what} {raw:?}: {status} {message}"
    );
    assert!(
        !message.is_empty(),
        "{what} {raw:?}: a 400 without a message"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let raw_query = Some(raw.to_string());

    match request_query(raw_query.clone()) {
        Ok(req) => {
            let index_url = req.index_url;
            let path = activation_path("lab-w01-s001", TOKEN, index_url.as_deref());
            let (before, query) = path
                .split_once('?')
                .unwrap_or_else(|| panic!("{path:?} has no query"));
            assert_eq!(before, "/workshops/session/lab-w01-s001/activate/");
            let back = activate_query(Some(query.to_string()))
                .unwrap_or_else(|e| panic!("{path:?} does not parse back: {}", e.message));
            assert_eq!(
                back,
                (Some(TOKEN.to_string()), index_url.clone()),
                "{path:?} reads back otherwise"
            );
            let policy = RedirectPolicy::new(&["https://hub.example.com".into()])
                .expect("a valid allow-list");
            if let Some(u) = index_url.as_deref().filter(|u| policy.allows(u)) {
                let parsed = url::Url::parse(u)
                    .unwrap_or_else(|e| panic!("index_url {u:?} is allowed but no URL: {e}"));
                assert_eq!(
                    parsed.origin().ascii_serialization(),
                    "https://hub.example.com",
                    "index_url {u:?} is allowed"
                );
            }
        }
        Err(e) => refused_with_400("request", raw, e.status, &e.message),
    }
    if let Err(e) = activate_query(raw_query.clone()) {
        refused_with_400("activate", raw, e.status, &e.message);
    }
    match catalog_query(raw_query) {
        Ok(q) => assert!(!q.states.is_empty(), "catalog {raw:?}: no state to list"),
        Err(e) => refused_with_400("catalog", raw, e.status, &e.message),
    }
});
