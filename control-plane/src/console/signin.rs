//! Who is signed in to the console: its cookie, and the CSRF token of
//! every form.
//!
//! The cookie (`sessiongate_console`) is host-only, `HttpOnly`,
//! `SameSite=Strict`, and signed like the gateway's cookies, with a key of
//! its own derived from the current cookie key (so a gateway cookie is
//! never a console cookie, and rotating the keys signs everyone out after
//! the grace period, as it does at the gateway). It names the kind of
//! caller and their name, never a token: an operator's token is exchanged
//! for it once, at sign-in, and is never kept in the browser. Each request
//! checks that the token or user still exists.
//!
//! CSRF: every form and every htmx request carries a token derived from
//! the cookie (an HMAC of its value under the console key), checked in
//! constant time, on top of `SameSite=Strict`. The sign-in form, before
//! there is a cookie, uses a double-submit cookie of its own.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gateway::access::{KeyRing, SigningKey};
use ring::hmac;

use crate::auth::{constant_time_eq, TokenKind};
use crate::control::ControlPlane;
use crate::permissions::Caller;

/// The console's cookie.
pub const COOKIE: &str = "sessiongate_console";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "sessiongate_console_login";
/// How long a sign-in lasts.
pub const SIGNED_IN_SECS: u64 = 8 * 3600;
/// The header htmx requests carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The console's key ring, derived from the cookie keys.
pub fn console_keys(ring: &KeyRing) -> KeyRing {
    let derive = |k: &SigningKey| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, k.secret());
        let tag = hmac::sign(&key, b"sessiongate console cookie key v1");
        // A valid id and a 32-byte secret: `new` cannot refuse.
        SigningKey::new(k.id(), tag.as_ref()).ok()
    };
    let Some(current) = derive(ring.current()) else {
        // Cannot happen (see above); then nothing verifies.
        return KeyRing::throwaway();
    };
    let previous = ring
        .previous()
        .and_then(|(k, until)| derive(k).map(|k| (k, until)));
    KeyRing::new(current, previous)
}

/// The cookie's two signed parts for `caller`.
fn parts(caller: &Caller) -> (&'static str, String) {
    match caller {
        Caller::Operator { kind, name } => {
            let k = match (kind, name) {
                (_, None) => "op-root",
                (TokenKind::Admin, Some(_)) => "op-admin",
                _ => "op-readonly",
            };
            (k, name.as_deref().unwrap_or("admin").to_string())
        }
        Caller::User { name } => ("user", name.clone()),
    }
}

/// A `Set-Cookie` signing `caller` in until `now + SIGNED_IN_SECS`.
pub fn sign_in_cookie(
    cp: &ControlPlane,
    caller: &Caller,
    now_secs: u64,
    secure: bool,
) -> Option<String> {
    let (kind, name) = parts(caller);
    let keys = console_keys(&cp.key_ring());
    let value = keys.sign(kind, &name, now_secs + SIGNED_IN_SECS).ok()?;
    Some(format!(
        "{COOKIE}={value}; Path=/; Max-Age={SIGNED_IN_SECS}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    ))
}

/// A `Set-Cookie` that signs out.
pub fn sign_out_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The value of cookie `name` in `headers` (every `Cookie` field, as
/// HTTP/2 sends one per cookie).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Who the console cookie in `headers` signs in, if it is valid and its
/// token or user still exists; with the cookie's value (for CSRF).
pub async fn signed_in(
    cp: &ControlPlane,
    headers: &HeaderMap,
    now_secs: u64,
) -> Option<(Caller, String)> {
    let value = cookie(headers, COOKIE)?;
    let keys = console_keys(&cp.key_ring());
    let claims = keys.verify(value, now_secs).ok()?;
    let caller = match claims.session {
        "user" => {
            let name = claims.user.to_string();
            if !cp.user_exists(&name).await.unwrap_or(false) {
                return None;
            }
            Caller::User { name }
        }
        "op-root" => Caller::Operator {
            kind: cp.token_kind_of(None)?,
            name: None,
        },
        "op-admin" | "op-readonly" => {
            let kind = cp.token_kind_of(Some(claims.user))?;
            let want = if claims.session == "op-admin" {
                TokenKind::Admin
            } else {
                TokenKind::Readonly
            };
            if kind != want {
                return None;
            }
            Caller::Operator {
                kind,
                name: Some(Arc::from(claims.user)),
            }
        }
        _ => return None,
    };
    Some((caller, value.to_string()))
}

/// The CSRF token of the sign-in whose cookie value is `cookie_value`.
pub fn csrf_token(cp: &ControlPlane, cookie_value: &str) -> String {
    let keys = console_keys(&cp.key_ring());
    keys.derive_token(&format!("console csrf {cookie_value}"))
}

/// Whether `presented` is the CSRF token of `cookie_value`.
pub fn csrf_ok(cp: &ControlPlane, cookie_value: &str, presented: &str) -> bool {
    let want = csrf_token(cp, cookie_value);
    constant_time_eq(want.as_bytes(), presented.as_bytes())
}

/// A fresh value for the sign-in form's double-submit cookie.
pub fn login_nonce() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 24];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// `Set-Cookie` for the sign-in form's nonce.
pub fn login_cookie(nonce: &str, secure: bool) -> HeaderValue {
    let v = format!(
        "{LOGIN_COOKIE}={nonce}; Path=/ui/; Max-Age=3600; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}
