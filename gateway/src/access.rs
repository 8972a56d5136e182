//! Browser access at the gateway: the signed session cookie, the per-route
//! allow-list, and activation of one-time access links.
//!
//! The control plane owns the signing keys and the one-time tokens; the
//! gateway only *verifies*. It holds the keys through a [`KeyHandle`] the
//! control plane swaps on rotation, and it hands activation requests to an
//! [`Activator`] (in process for `serve`). A request to a private route costs
//! one HMAC-SHA256 over a few dozen bytes and a binary search, with no lock
//! and no allocation (see `benches/access.rs`).
//!
//! # Cookie value
//! `1.<key id>.<expires, unix seconds>.<session>.<user>.<MAC>`, where the MAC
//! is HMAC-SHA256 over everything before its dot, in unpadded base64url. Every
//! part is a cookie-octet already (a session is a DNS label, a user name is
//! letters, digits and `-_.@+`, a key id is letters and digits), so the value
//! needs no encoding, and the user is the one part that may hold dots: it is
//! what is left between the session and the MAC.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use ring::hmac;

/// The cookie's name on plain HTTP.
pub const COOKIE: &str = "sessiongate";
/// The name under HTTPS for host routes: browsers accept a `__Host-` cookie
/// only when it is Secure, has `Path=/` and no `Domain`, so it cannot be
/// planted by a sibling subdomain or over plain HTTP.
pub const COOKIE_HOST: &str = "__Host-sessiongate";
/// The name under HTTPS for slug routes, whose cookie needs `Path=/<slug>/`
/// (which `__Host-` forbids); `__Secure-` still requires Secure.
pub const COOKIE_SECURE: &str = "__Secure-sessiongate";
/// Every name the gateway sets, all removed before a request goes upstream.
pub const COOKIE_NAMES: [&str; 3] = [COOKIE, COOKIE_HOST, COOKIE_SECURE];

/// Where an access link lands, relative to the session's root.
pub const ACTIVATE_PATH: &str = "/__sessiongate/activate";

/// Where an OpenID Connect sign-out clears a session host's cookie, relative
/// to the session's root; `?next=` goes on to the sign-out's next step.
pub const SIGNOUT_PATH: &str = "/__sessiongate/signout";

/// The OpenID Connect endpoints on the callback host, relative to its root.
pub const OIDC_PREFIX: &str = "/_sessiongate/oidc/";

const FORMAT: &str = "1";
/// Bytes of an HMAC-SHA256 tag.
const MAC_LEN: usize = 32;
/// Longest cookie value considered; anything longer is not ours.
const MAX_VALUE_LEN: usize = 512;

/// What a derived token's MAC starts with ([`KeyRing::derive_token`]).
const DERIVED_TOKEN_DOMAIN: &[u8] = b"sessiongate derived token\0";

/// The shortest secret accepted: as long as the HMAC-SHA256 output, so that
/// the key is not the weak point of the MAC.
const MIN_SECRET_LEN: usize = 32;

/// A signing key: an id carried in the cookie, so that verification picks
/// the right key during a rotation, and the HMAC key itself.
pub struct SigningKey {
    id: Arc<str>,
    key: hmac::Key,
    /// Kept so that the control plane can send the key to its gateways
    /// (`sync::wire`), which sign and verify with it too.
    secret: Arc<[u8]>,
}

impl SigningKey {
    /// `id` must be 1-16 ASCII letters or digits; `secret` at least 32 bytes.
    pub fn new(id: &str, secret: &[u8]) -> Result<Self, KeyError> {
        if id.is_empty() || id.len() > 16 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeyError::InvalidId(id.to_string()));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::ShortSecret {
                id: id.to_string(),
                len: secret.len(),
            });
        }
        Ok(SigningKey {
            id: id.into(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            secret: secret.into(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret, for sending the key to a gateway. Never logged.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// Why a signing key was refused. The secret itself is never shown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key id {0:?} must be 1-16 letters or digits")]
    InvalidId(String),
    #[error("key {id:?} has {len} bytes; at least {MIN_SECRET_LEN} are needed")]
    ShortSecret { id: String, len: usize },
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

/// The keys a gateway verifies with: the current one, and the one it
/// replaced, which keeps verifying until `valid_until` so that cookies
/// issued just before a rotation keep working through the grace period.
#[derive(Debug)]
pub struct KeyRing {
    current: SigningKey,
    previous: Option<(SigningKey, u64)>,
}

/// What a valid cookie says, borrowed from the header it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims<'a> {
    pub session: &'a str,
    pub user: &'a str,
    /// Unix seconds after which the cookie is refused.
    pub expires: u64,
}

/// Why a cookie value was refused. Never shown to the client in detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieError {
    Malformed,
    UnknownKey,
    /// Signed by the previous key after its grace period.
    RetiredKey,
    BadSignature,
    Expired,
}

impl KeyRing {
    /// `previous` is the replaced key and the Unix second until which it verifies.
    pub fn new(current: SigningKey, previous: Option<(SigningKey, u64)>) -> Self {
        KeyRing { current, previous }
    }

    /// A ring of one random key that nobody else holds: what a gateway
    /// verifies with before its control plane's keys reach it, so that
    /// no cookie verifies until then.
    pub fn throwaway() -> KeyRing {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut secret = [0u8; 32];
        if SystemRandom::new().fill(&mut secret).is_err() {
            // No randomness: a key that still verifies nothing anyone signed
            // with the control plane's keys, and a different id.
            secret = [0x5a; 32];
        }
        // A valid id and a secret of the right length: `new` cannot refuse.
        match SigningKey::new("boot", &secret) {
            Ok(k) => KeyRing::new(k, None),
            Err(_) => unreachable!("a 4-letter id and a 32-byte secret are valid"),
        }
    }

    /// The key that signs.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// The replaced key and the Unix second until which it verifies.
    pub fn previous(&self) -> Option<(&SigningKey, u64)> {
        self.previous.as_ref().map(|(k, until)| (k, *until))
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// A cookie value for `user` on `session`, valid until `expires` (Unix
    /// seconds). Both names must be what the control plane validates
    /// (a DNS label; a user name); anything else is refused here too.
    pub fn sign(&self, session: &str, user: &str, expires: u64) -> Result<String, String> {
        if !is_session_part(session) || session.contains('.') {
            return Err(format!("{session:?} cannot be carried in a cookie"));
        }
        if !is_user_part(user) {
            return Err(format!("{user:?} cannot be carried in a cookie"));
        }
        let mut value = format!("{FORMAT}.{}.{expires}.{session}.{user}", self.current.id);
        let tag = hmac::sign(&self.current.key, value.as_bytes());
        value.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut value);
        Ok(value)
    }

    /// A token derived from the current key and `context`: the same
    /// context gives the same token while the key is current, and nobody
    /// without the key can make or predict one. It lets the control plane
    /// hand out the same access link again while storing only its hash
    /// (a workshop request repeated for a pending session must answer the
    /// same URL, as the training portal does). The MAC runs over a domain
    /// of its own, which no cookie's signed part (`1.<key id>…`) can start
    /// with, so a derived token is never a cookie's signature.
    pub fn derive_token(&self, context: &str) -> String {
        let mut mac = hmac::Context::with_key(&self.current.key);
        mac.update(DERIVED_TOKEN_DOMAIN);
        mac.update(context.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.sign().as_ref())
    }

    /// Checks a cookie value at `now` (Unix seconds): format, key, signature
    /// (in constant time), expiry.
    pub fn verify<'a>(&self, value: &'a str, now: u64) -> Result<Claims<'a>, CookieError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(CookieError::Malformed);
        }
        let (signed, mac) = value.rsplit_once('.').ok_or(CookieError::Malformed)?;
        let mut parts = signed.splitn(5, '.');
        let (Some(format), Some(kid), Some(exp), Some(session), Some(user)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CookieError::Malformed);
        };
        if format != FORMAT || session.is_empty() || user.is_empty() {
            return Err(CookieError::Malformed);
        }
        let expires: u64 = exp.parse().map_err(|_| CookieError::Malformed)?;
        let key = if kid == &*self.current.id {
            &self.current.key
        } else {
            match &self.previous {
                Some((k, until)) if kid == &*k.id => {
                    if now >= *until {
                        return Err(CookieError::RetiredKey);
                    }
                    &k.key
                }
                _ => return Err(CookieError::UnknownKey),
            }
        };
        let mut tag = [0u8; MAC_LEN + 2];
        match URL_SAFE_NO_PAD.decode_slice(mac, &mut tag) {
            Ok(MAC_LEN) => {}
            _ => return Err(CookieError::Malformed),
        }
        hmac::verify(key, signed.as_bytes(), &tag[..MAC_LEN])
            .map_err(|_| CookieError::BadSignature)?;
        if now >= expires {
            return Err(CookieError::Expired);
        }
        Ok(Claims {
            session,
            user,
            expires,
        })
    }
}

fn is_session_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn is_user_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
}

/// The keys as the gateway sees them now. The control plane stores a new
/// ring on rotation; readers take one atomic load per check.
#[derive(Clone, Debug)]
pub struct KeyHandle {
    inner: Arc<ArcSwap<KeyRing>>,
}

impl KeyHandle {
    pub fn new(ring: KeyRing) -> Self {
        KeyHandle {
            inner: Arc::new(ArcSwap::from_pointee(ring)),
        }
    }

    /// A handle holding a ring that others hold too (the control plane
    /// signs with the ring its gateways verify with).
    pub fn shared(ring: Arc<KeyRing>) -> Self {
        KeyHandle {
            inner: Arc::new(ArcSwap::new(ring)),
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<KeyRing>> {
        self.inner.load()
    }

    pub fn store(&self, ring: KeyRing) {
        self.inner.store(Arc::new(ring));
    }

    /// Stores a ring that others hold too: the control plane keeps signing
    /// with the ring it sends its gateways.
    pub fn store_shared(&self, ring: Arc<KeyRing>) {
        self.inner.store(ring);
    }
}

/// Who may use a private route: its session, the owner, and the members of
/// the groups it is shared with. Group member lists are shared between the
/// routes of every session shared with that group, so a large group costs
/// its size once, not once per session.
#[derive(Debug, PartialEq, Eq)]
pub struct AccessList {
    pub session: Arc<str>,
    pub owner: Arc<str>,
    pub groups: Vec<Arc<Members>>,
}

/// A group's members, sorted and unique, for a binary search.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Members {
    sorted: Box<[Arc<str>]>,
}

impl Members {
    pub fn new(mut names: Vec<Arc<str>>) -> Self {
        names.sort_unstable();
        names.dedup();
        Members {
            sorted: names.into_boxed_slice(),
        }
    }

    pub fn contains(&self, user: &str) -> bool {
        self.sorted.binary_search_by(|m| (**m).cmp(user)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.sorted.iter().map(|s| &**s)
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

impl AccessList {
    pub fn allows(&self, user: &str) -> bool {
        &*self.owner == user || self.groups.iter().any(|g| g.contains(user))
    }
}

/// The result of checking a request against a private route.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// A valid cookie for this session whose user the route allows.
    Allowed(&'a str),
    /// A valid cookie for this session, but its user is not allowed (now).
    Forbidden(&'a str),
    /// No valid cookie for this session: none, tampered, expired, retired
    /// key, or one for another session.
    NoCookie,
}

/// Checks the request's cookies named `name` against `access` at `now`.
/// Several cookies of the same name may arrive (nested slug paths); the
/// first valid one for this session decides.
pub fn check<'h>(
    keys: &KeyRing,
    access: &AccessList,
    headers: &'h HeaderMap,
    name: &'static str,
    now: u64,
) -> Verdict<'h> {
    for value in cookie_values(headers, name) {
        match keys.verify(value, now) {
            Ok(c) if c.session == &*access.session => {
                return if access.allows(c.user) {
                    Verdict::Allowed(c.user)
                } else {
                    Verdict::Forbidden(c.user)
                };
            }
            _ => continue,
        }
    }
    Verdict::NoCookie
}

/// The values of every cookie called `name` in the request's `Cookie`
/// headers (HTTP/2 may split them over several). Read as bytes, because a
/// `Cookie` header may carry any byte but `;` from a sibling subdomain's
/// cookie (browsers send UTF-8 as it is): one such cookie must neither hide
/// ours, in the same header, nor lock its user out. Ours are ASCII, so a
/// value that is not UTF-8 is not ours.
pub fn cookie_values<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| cookie_pairs(v.as_bytes()))
        .filter(move |p| p.name == name.as_bytes())
        .filter_map(|p| std::str::from_utf8(trim_quotes(p.value)).ok())
}

/// One element of a `Cookie` header, trimmed of spaces: `name=value`, or
/// just a name when it has no `=`.
struct CookiePair<'a> {
    name: &'a [u8],
    value: &'a [u8],
    /// The element as it came, for passing it on unchanged.
    whole: &'a [u8],
}

/// The non-empty elements of one `Cookie` header value, in order.
fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = CookiePair<'_>> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let whole = pair.trim_ascii();
        if whole.is_empty() {
            return None;
        }
        let (name, value) = match whole.iter().position(|&b| b == b'=') {
            Some(i) => (whole[..i].trim_ascii(), whole[i + 1..].trim_ascii()),
            None => (whole, &whole[whole.len()..]),
        };
        Some(CookiePair { name, value, whole })
    })
}

/// `value` without the double quotes a cookie value may be wrapped in.
fn trim_quotes(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|&b| b != b'"').unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b'"')
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Whether any of the gateway's own cookies is in the request.
pub fn has_own_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| mentions_own_cookie(v.as_bytes()))
}

/// Whether `header` holds the gateway's cookie name anywhere: a quick
/// test, as every name in [`COOKIE_NAMES`] contains [`COOKIE`].
fn mentions_own_cookie(header: &[u8]) -> bool {
    header.windows(COOKIE.len()).any(|w| w == COOKIE.as_bytes())
}

/// Rewrites the request's `Cookie` headers for the app: the gateway's own
/// cookies go (its business, never the app's), every other cookie stays,
/// in order, and all of them travel in one header, joined with `"; "`.
///
/// Joining is the HTTP/2 rule (RFC 9113 §8.2.3): browsers send each cookie
/// as a field of its own, and the gateway speaks HTTP/1.1 to apps, some of
/// which (Tornado, so JupyterLab) read repeated headers as one
/// comma-separated list and then find no cookie they can parse. The work is
/// on bytes, so that a cookie that is not ASCII is passed on, and ours next
/// to it still removed. A request with one `Cookie` header and none of ours
/// in it, the common case, is left as it is, with no allocation.
pub fn forward_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let Some(first) = values.next() else {
        return;
    };
    let mut len = first.len();
    let mut several = false;
    for v in values {
        several = true;
        len += 2 + v.len();
    }
    if !several && !mentions_own_cookie(first.as_bytes()) {
        return;
    }
    let mut joined = Vec::with_capacity(len);
    for v in headers.get_all(header::COOKIE) {
        for pair in cookie_pairs(v.as_bytes()) {
            if COOKIE_NAMES.iter().any(|n| n.as_bytes() == pair.name) {
                continue;
            }
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(pair.whole);
        }
    }
    // Every byte came from a valid header value, and "; " is valid: the
    // join is one too. Should it not be, the app gets no cookie rather than
    // ours.
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        Ok(v) if !v.is_empty() => {
            headers.insert(header::COOKIE, v);
        }
        _ => {
            headers.remove(header::COOKIE);
        }
    }
}

/// The cookie name and path for a route, by listener scheme and whether the
/// route was matched by a slug (`Some("/lab")`).
pub fn cookie_name_and_path(secure: bool, slug: Option<&str>) -> (&'static str, String) {
    match (secure, slug) {
        (false, None) => (COOKIE, "/".into()),
        (false, Some(s)) => (COOKIE, format!("{s}/")),
        (true, None) => (COOKIE_HOST, "/".into()),
        (true, Some(s)) => (COOKIE_SECURE, format!("{s}/")),
    }
}

/// A `Set-Cookie` value: host-only (never `Domain=`), HttpOnly, SameSite=Lax,
/// Secure under HTTPS, living `max_age` seconds.
pub fn set_cookie(secure: bool, slug: Option<&str>, value: &str, max_age: u64) -> String {
    let (name, path) = cookie_name_and_path(secure, slug);
    let mut s = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    if secure {
        s.push_str("; Secure");
    }
    s
}

/// A `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(secure: bool, slug: Option<&str>) -> String {
    set_cookie(secure, slug, "", 0)
}

/// An access link presented at the gateway.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ActivationRequest {
    /// The token from the link's query.
    pub token: String,
    /// The session of the route the link was opened on.
    pub session: Arc<str>,
    /// The address the link was opened from: guessing tokens counts
    /// against it (the control plane's brute-force limit).
    pub client: std::net::IpAddr,
    /// The user of a valid cookie for this session that the browser sent
    /// with the link: a browser the link already let in, opening it again.
    /// A link that stays valid after its first use (a workshop's) lets in
    /// again only the browser holding the cookie its first use set.
    pub holder: Option<Arc<str>>,
}

/// A consumed access link.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Activation {
    /// The signed cookie value (see [`KeyRing::sign`]).
    pub cookie: String,
    /// Seconds the cookie lives.
    pub max_age: u64,
    /// Where to send the browser, relative to the session's root (`/`, `/lab?x=1`).
    pub path: String,
    pub user: String,
}

/// Why an access link was refused. Each is a page for the browser.
#[derive(Clone, Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum ActivationError {
    #[error("this access link is not valid: it was already used, it expired, or it was never issued. Ask for a new link")]
    InvalidToken,
    #[error("this access link belongs to another session")]
    WrongSession,
    #[error("this access link was already opened in another browser. Ask for a new link")]
    AlreadyUsed,
    #[error("this access link's user no longer has access to the session")]
    NotAllowed,
    #[error("session {session} is {state} and can no longer be opened")]
    Gone { session: String, state: String },
    #[error("access links cannot be checked right now: {0}")]
    Unavailable(String),
    #[error(
        "too many invalid access links from this address; try again in {retry_after_secs} seconds"
    )]
    TooManyFailures { retry_after_secs: u64 },
}

pub type ActivationFuture =
    Pin<Box<dyn Future<Output = Result<Activation, ActivationError>> + Send + 'static>>;

/// Consumes access links: the control plane's job (it holds the tokens and
/// the session lifecycle), called by the gateway when a link is opened.
pub trait Activator: Send + Sync + 'static {
    fn activate(&self, req: ActivationRequest) -> ActivationFuture;
}

/// Everything the gateway needs for browser access.
#[derive(Clone)]
pub struct AccessConfig {
    pub keys: KeyHandle,
    pub activator: Option<Arc<dyn Activator>>,
    /// Where a browser without a valid cookie is sent, with
    /// `notification=session-invalid` added; already checked against the
    /// redirect allow-list. `None`: answer 401.
    pub login_url: Option<Arc<str>>,
    /// With OpenID Connect: where sign-in starts and sign-out continues.
    pub oidc: Option<Arc<OidcRedirect>>,
}

/// The gateway's part in OpenID Connect sign-in: a browser without a valid
/// cookie for a private session goes to `login` (with `rd=` the URL it
/// asked for), and a session host's sign-out goes on only to `origin`'s
/// OIDC endpoints (an allow-list of one, so `next=` is no open redirect).
#[derive(Clone, Debug)]
pub struct OidcRedirect {
    /// `https://portal.example.com/_sessiongate/oidc/login`.
    pub login: Arc<str>,
    /// `https://portal.example.com`.
    pub origin: Arc<str>,
}

impl fmt::Debug for AccessConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessConfig")
            .field("keys", &self.keys)
            .field("activator", &self.activator.is_some())
            .field("login_url", &self.login_url)
            .field("oidc", &self.oidc)
            .finish()
    }
}

/// `url` with `notification=<value>` added to its query.
pub fn with_notification(url: &str, value: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut out = format!("{base}{sep}notification={value}");
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, b: u8) -> SigningKey {
        SigningKey::new(id, &[b; 32]).unwrap()
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn bad_keys_are_refused_with_their_id() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 32, r#"key id "" must be 1-16 letters or digits"#),
            ("k-1", 32, r#"key id "k-1" must be 1-16 letters or digits"#),
            (
                "k12345678901234567",
                32,
                r#"key id "k12345678901234567" must be 1-16 letters or digits"#,
            ),
            ("k1", 31, r#"key "k1" has 31 bytes; at least 32 are needed"#),
        ];
        for (id, len, want) in cases {
            let err = SigningKey::new(id, &vec![1; *len]).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
        assert!(SigningKey::new("k1", &[1; 32]).is_ok());
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let ring = KeyRing::new(key("k1", 1), None);
        let v = ring.sign("nb", "alice.smith@example.com", 2000).unwrap();
        assert!(
            v.starts_with("1.k1.2000.nb.alice.smith@example.com."),
            "{v}"
        );
        assert_eq!(
            ring.verify(&v, 1000),
            Ok(Claims {
                session: "nb",
                user: "alice.smith@example.com",
                expires: 2000
            })
        );
        assert_eq!(ring.verify(&v, 2000), Err(CookieError::Expired));
    }

    #[test]
    fn tampering_is_refused() {
        let ring = KeyRing::new(key("k1", 1), None);
        let v = ring.sign("nb", "alice", 2000).unwrap();
        let cases = [
            v.replace(".alice.", ".bob."),
            v.replace(".nb.", ".other."),
            v.replace(".2000.", ".9999."),
            format!("{}A", &v[..v.len() - 1]),
        ];
        for t in &cases {
            assert_ne!(t, &v);
            assert!(ring.verify(t, 1000).is_err(), "{t}");
        }
        assert_eq!(ring.verify("", 0), Err(CookieError::Malformed));
        assert_eq!(ring.verify("garbage", 0), Err(CookieError::Malformed));
        assert_eq!(
            ring.verify("1.k1.x.nb.alice.AAAA", 0),
            Err(CookieError::Malformed)
        );
        let other = KeyRing::new(key("k1", 2), None);
        assert_eq!(other.verify(&v, 1000), Err(CookieError::BadSignature));
        let unknown = KeyRing::new(key("k9", 1), None);
        assert_eq!(unknown.verify(&v, 1000), Err(CookieError::UnknownKey));
        assert!(ring.sign("a.b", "alice", 1).is_err());
        assert!(ring.sign("nb", "al;ce", 1).is_err());
    }

    #[test]
    fn derived_tokens_are_stable_per_key_and_context_and_never_a_cookie_mac() {
        let ring = KeyRing::new(key("k1", 1), None);
        let t = ring.derive_token("lab-s001|ann|1000");
        assert_eq!(t, ring.derive_token("lab-s001|ann|1000"));
        assert_eq!(t.len(), 43, "{t}");
        assert_ne!(t, ring.derive_token("lab-s001|ann|1001"));
        let rotated = KeyRing::new(key("k2", 2), Some((key("k1", 1), u64::MAX)));
        assert_ne!(t, rotated.derive_token("lab-s001|ann|1000"));
        // Whatever the context, the token is not the MAC of a cookie.
        let cookie = ring.sign("nb", "ann", 2000).unwrap();
        let (signed, mac) = cookie.rsplit_once('.').unwrap();
        assert_ne!(ring.derive_token(signed), mac);
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_the_grace_period() {
        let old = KeyRing::new(key("k1", 1), None);
        let v = old.sign("nb", "alice", 5000).unwrap();
        let rotated = KeyRing::new(key("k2", 2), Some((key("k1", 1), 1500)));
        assert!(rotated.verify(&v, 1499).is_ok());
        assert_eq!(rotated.verify(&v, 1500), Err(CookieError::RetiredKey));
        let fresh = rotated.sign("nb", "alice", 5000).unwrap();
        assert!(fresh.starts_with("1.k2."));
        assert!(rotated.verify(&fresh, 4000).is_ok());
    }

    #[test]
    fn check_needs_this_session_and_an_allowed_user() {
        let ring = KeyRing::new(key("k1", 1), None);
        let team = Arc::new(Members::new(vec!["carol".into(), "bob".into()]));
        let access = AccessList {
            session: "nb".into(),
            owner: "alice".into(),
            groups: vec![team],
        };
        let c = |s: &str, u: &str| ring.sign(s, u, 5000).unwrap();
        let h = headers(&format!("a=1; sessiongate={}; b=2", c("nb", "bob")));
        assert_eq!(
            check(&ring, &access, &h, COOKIE, 10),
            Verdict::Allowed("bob")
        );
        let h = headers(&format!("sessiongate={}", c("nb", "mallory")));
        assert_eq!(
            check(&ring, &access, &h, COOKIE, 10),
            Verdict::Forbidden("mallory")
        );
        let h = headers(&format!("sessiongate={}", c("other", "alice")));
        assert_eq!(check(&ring, &access, &h, COOKIE, 10), Verdict::NoCookie);
        // Another session's cookie first, this one's second: the valid one wins.
        let h = headers(&format!(
            "sessiongate={}; sessiongate={}",
            c("other", "alice"),
            c("nb", "alice")
        ));
        assert_eq!(
            check(&ring, &access, &h, COOKIE, 10),
            Verdict::Allowed("alice")
        );
        // The right value under another name does not count.
        let h = headers(&format!("__Host-sessiongate={}", c("nb", "alice")));
        assert_eq!(check(&ring, &access, &h, COOKIE, 10), Verdict::NoCookie);
        assert_eq!(
            check(&ring, &access, &HeaderMap::new(), COOKIE, 10),
            Verdict::NoCookie
        );
    }

    #[test]
    fn own_cookies_are_stripped_and_the_rest_joined_into_one_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sessiongate=x; _xsrf=2|abc"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-sessiongate=y"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("sessiongate_other=z"),
        );
        forward_cookies(&mut h);
        // One header, as HTTP/2's cookie fields must become for HTTP/1.1
        // (RFC 9113 §8.2.3); two would reach a Tornado app as one garbled
        // comma-joined cookie.
        let got: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(got, ["a=1; _xsrf=2|abc; sessiongate_other=z"]);
        let mut only = headers("sessiongate=x");
        forward_cookies(&mut only);
        assert!(only.get(header::COOKIE).is_none());
        let mut none = headers("a=1;b=2");
        forward_cookies(&mut none);
        assert_eq!(none[header::COOKIE], "a=1;b=2");
        let mut split = HeaderMap::new();
        split.append(header::COOKIE, HeaderValue::from_static("a=1"));
        split.append(header::COOKIE, HeaderValue::from_static(" b = 2 ;"));
        forward_cookies(&mut split);
        assert_eq!(split[header::COOKIE], "a=1; b = 2");
    }

    #[test]
    fn cookies_that_are_not_ascii_are_read_and_kept_as_bytes() {
        let ring = KeyRing::new(key("k1", 1), None);
        let access = AccessList {
            session: "nb".into(),
            owner: "alice".into(),
            groups: vec![],
        };
        let value = ring.sign("nb", "alice", 5000).unwrap();
        let raw = format!("sib=caf\u{e9}; sessiongate={value}; x=\u{1F36A}");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_bytes(raw.as_bytes()).unwrap(),
        );
        assert_eq!(
            check(&ring, &access, &h, COOKIE, 10),
            Verdict::Allowed("alice")
        );
        forward_cookies(&mut h);
        assert_eq!(
            h[header::COOKIE].as_bytes(),
            "sib=caf\u{e9}; x=\u{1F36A}".as_bytes()
        );
        // Bytes that are not even UTF-8 are passed on as they came.
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_bytes(b"sib=\xff\xfe; sessiongate=v").unwrap(),
        );
        forward_cookies(&mut h);
        assert_eq!(h[header::COOKIE].as_bytes(), b"sib=\xff\xfe");
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(
            set_cookie(false, None, "v", 60),
            "sessiongate=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            set_cookie(true, None, "v", 60),
            "__Host-sessiongate=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(
            set_cookie(true, Some("/lab"), "v", 60),
            "__Secure-sessiongate=v; Path=/lab/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        for s in [
            set_cookie(true, None, "v", 1),
            set_cookie(false, Some("/x"), "v", 1),
        ] {
            assert!(!s.to_ascii_lowercase().contains("domain"), "{s}");
        }
    }

    #[test]
    fn notification_is_added_to_the_query() {
        assert_eq!(
            with_notification("https://p/login", "session-invalid"),
            "https://p/login?notification=session-invalid"
        );
        assert_eq!(
            with_notification("https://p/?a=1#top", "session-invalid"),
            "https://p/?a=1&notification=session-invalid#top"
        );
    }
}
