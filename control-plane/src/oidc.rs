//! OpenID Connect sign-in (`[oidc]`): a second way into private sessions
//! and the console, beside access links, never instead of them.
//!
//! The flow, all on the callback host (`oidc.redirect_host`, served by the
//! gateway like the portal's API):
//!
//! 1. A browser without a valid cookie opens a private session; the gateway
//!    sends it to `/_sessiongate/oidc/login?rd=<the URL it asked for>`.
//! 2. `login` checks that `rd` is a private session the gateway serves,
//!    keeps a pending sign-in (`state`, `nonce`, the PKCE verifier, `rd`) in
//!    memory for ten minutes, binds it to this browser with a host-only
//!    cookie holding the state, and redirects to the provider's authorization
//!    endpoint (code flow, PKCE S256).
//! 3. `callback` takes the pending sign-in once (the state from the query
//!    must equal the cookie's), exchanges the code, and verifies the ID
//!    token: signature against the provider's JWKS (cached; fetched again
//!    when a token names a key id it does not hold), `iss`, `aud`, `exp` and
//!    the `nonce`. Nothing of the token is used before that.
//! 4. The user is created at first sign-in; with `sync_groups` their groups
//!    follow the groups claim. The browser gets a hand-off to the session's
//!    own host: a single-use access link for that session that lives 60 s,
//!    which sets the same host-only cookie as any access link. The gateway
//!    then checks owner and groups as always.
//! 5. `logout` walks the browser through `/__sessiongate/signout` on every
//!    session host it signed into in that sign-in (each clears its own
//!    cookie and sends it back), then to the provider's
//!    `end_session_endpoint`.
//!
//! State lives in this process: a sign-in started on one control-plane
//! replica must come back to it (one `serve`, as the gateway's OIDC needs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use crate::api::ApiState;
use crate::control::ControlPlane;
use crate::session::model::{NewGroup, NewUser};

/// How long a started sign-in waits for the provider.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Started sign-ins held at most: beyond, the oldest go (a flood of
/// `/login` requests cannot grow memory).
const PENDING_MAX: usize = 10_000;
/// Sign-ins remembered for sign-out, at most, and for how long.
const SIGNINS_MAX: usize = 100_000;
const SIGNIN_TTL: Duration = Duration::from_secs(12 * 3600);
/// The JWKS is fetched again for an unknown key id at most this often.
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(30);
/// Clock skew allowed on `exp` and `iat`.
const LEEWAY_SECS: u64 = 60;
/// The cookie that binds a started sign-in to its browser.
const STATE_COOKIE: &str = "sessiongate_oidc_state";
/// The cookie naming this browser's sign-in, for sign-out.
const SIGNIN_COOKIE: &str = "sessiongate_oidc";
/// Where the endpoints live on the callback host.
pub const PREFIX: &str = gateway::access::OIDC_PREFIX;

/// What `[oidc]` configures.
#[derive(Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    /// `http` or `https`, and the port, of the callback host as browsers
    /// reach it (those of access links).
    pub scheme: String,
    pub redirect_host: String,
    pub port: Option<u16>,
    pub groups_claim: String,
    pub username_claim: String,
    pub allowed_domains: Vec<String>,
    pub sync_groups: bool,
    /// A PEM bundle trusted for the provider besides Mozilla's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// The provider's display name on the console's button.
    pub display_name: String,
}

// Not derived: the client secret must not reach a log line.
impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("redirect_host", &self.redirect_host)
            .finish_non_exhaustive()
    }
}

/// The provider's discovery document, the fields used.
#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
}

/// Where a sign-in goes once done.
#[derive(Clone, Debug)]
enum Return {
    /// A private session: the URL the browser asked for.
    Session(String),
    /// The console.
    Console,
}

struct Pending {
    nonce: String,
    verifier: String,
    to: Return,
    at: Instant,
}

struct SignIn {
    /// Origins (`https://nb.example.com`) of the session hosts given a
    /// cookie in this sign-in.
    hosts: Vec<String>,
    id_token: String,
    at: Instant,
}

/// Who the provider says signed in, from a verified ID token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

/// Why a sign-in failed; each becomes a page that names it, and a
/// `sessiongate_oidc_sign_ins_total` result.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider at {issuer} is unavailable: {reason}")]
    Unavailable { issuer: String, reason: String },
    #[error("the sign-in was refused: {0}")]
    Refused(String),
    #[error("the ID token was refused: {0}")]
    InvalidToken(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
}

impl OidcError {
    fn result(&self) -> &'static str {
        match self {
            OidcError::Unavailable { .. } => "provider_unavailable",
            OidcError::Refused(_) => "refused",
            OidcError::InvalidToken(_) => "invalid_token",
            OidcError::Forbidden(_) => "forbidden",
            OidcError::BadRequest(_) => "bad_request",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            OidcError::Unavailable { .. } => StatusCode::BAD_GATEWAY,
            OidcError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// OpenID Connect sign-in (see the module).
pub struct Oidc {
    s: OidcSettings,
    http: HttpClient,
    discovery: tokio::sync::Mutex<Option<Arc<Discovery>>>,
    jwks: tokio::sync::Mutex<Option<(Arc<JwkSet>, Instant)>>,
    pending: Mutex<HashMap<String, Pending>>,
    signins: Mutex<HashMap<String, SignIn>>,
}

impl Oidc {
    pub fn new(s: OidcSettings) -> Result<Oidc, String> {
        let http = certs::https_client(s.ca_file.as_deref()).map_err(|e| e.to_string())?;
        Ok(Oidc {
            s,
            http,
            discovery: tokio::sync::Mutex::new(None),
            jwks: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            signins: Mutex::new(HashMap::new()),
        })
    }

    /// `https://portal.example.com` (with a port where it is not the
    /// scheme's).
    pub fn origin(&self) -> String {
        let port = match (self.s.port, self.s.scheme.as_str()) {
            (None, _) | (Some(80), "http") | (Some(443), "https") => String::new(),
            (Some(p), _) => format!(":{p}"),
        };
        format!("{}://{}{port}", self.s.scheme, self.s.redirect_host)
    }

    /// Where a sign-in starts (the gateway sends browsers here with `rd=`,
    /// the console's button with `console=1`).
    pub fn login_url(&self) -> String {
        format!("{}{PREFIX}login", self.origin())
    }

    /// The redirect URI registered with the provider.
    pub fn callback_url(&self) -> String {
        format!("{}{PREFIX}callback", self.origin())
    }

    pub fn redirect_host(&self) -> &str {
        &self.s.redirect_host
    }

    pub fn display_name(&self) -> &str {
        &self.s.display_name
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> OidcError {
        OidcError::Unavailable {
            issuer: self.s.issuer.clone(),
            reason: reason.to_string(),
        }
    }

    async fn fetch(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), OidcError> {
        let url = req.uri().to_string();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.http.request(req))
            .await
            .map_err(|_| self.unavailable(format!("{url} did not answer within 10 s")))?
            .map_err(|e| self.unavailable(format!("{url}: {e}")))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| self.unavailable(format!("{url}: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let req = http::Request::get(url)
            .header(header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| self.unavailable(format!("{url}: {e}")))?;
        let (status, body) = self.fetch(req).await?;
        if !status.is_success() {
            return Err(self.unavailable(format!("{url} answered {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| self.unavailable(format!("{url}: {e}")))
    }

    /// The discovery document, fetched once (and again after a failure).
    async fn discovery(&self) -> Result<Arc<Discovery>, OidcError> {
        let mut slot = self.discovery.lock().await;
        if let Some(d) = &*slot {
            return Ok(d.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.s.issuer.trim_end_matches('/')
        );
        let d: Discovery = self.get_json(&url).await?;
        if d.issuer.trim_end_matches('/') != self.s.issuer.trim_end_matches('/') {
            return Err(self.unavailable(format!(
                "its discovery document names issuer {:?}, not {:?}",
                d.issuer, self.s.issuer
            )));
        }
        let d = Arc::new(d);
        *slot = Some(d.clone());
        Ok(d)
    }

    /// The JWKS, fetched again when `kid` is not in the one held (at most
    /// every [`JWKS_REFRESH_MIN`]).
    async fn jwks(&self, kid: Option<&str>) -> Result<Arc<JwkSet>, OidcError> {
        let mut slot = self.jwks.lock().await;
        if let Some((set, at)) = &*slot {
            let known = kid.is_none_or(|k| set.find(k).is_some());
            if known || at.elapsed() < JWKS_REFRESH_MIN {
                return Ok(set.clone());
            }
        }
        let d = self.discovery().await?;
        let set: JwkSet = self.get_json(&d.jwks_uri).await?;
        let set = Arc::new(set);
        *slot = Some((set.clone(), Instant::now()));
        Ok(set)
    }

    /// Starts a sign-in: the authorization URL to send the browser to, and
    /// the state its cookie holds.
    async fn start(&self, to: Return) -> Result<(String, String), OidcError> {
        let d = self.discovery().await?;
        let random = || crate::auth::random_token().map_err(|e| self.unavailable(e));
        let (state, nonce, verifier) = (random()?, random()?, random()?);
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", &self.s.client_id),
            ("redirect_uri", &self.callback_url()),
            ("scope", &self.s.scopes.join(" ")),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .map_err(|e| self.unavailable(e))?;
        let sep = if d.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}{query}", d.authorization_endpoint);
        let mut pending = lock(&self.pending);
        make_room(&mut pending, PENDING_TTL, PENDING_MAX, |p| p.at);
        pending.insert(
            state.clone(),
            Pending {
                nonce,
                verifier,
                to,
                at: Instant::now(),
            },
        );
        Ok((url, state))
    }

    /// Finishes a sign-in: the pending one `state` names (once), the code
    /// exchanged, the ID token verified.
    async fn finish(
        &self,
        state: &str,
        code: &str,
    ) -> Result<(Identity, Return, String), OidcError> {
        let pending = lock(&self.pending)
            .remove(state)
            .filter(|p| p.at.elapsed() < PENDING_TTL)
            .ok_or_else(|| {
                OidcError::Refused(
                    "the sign-in's state is unknown, used or expired; start again".into(),
                )
            })?;
        let d = self.discovery().await?;
        let form = serde_urlencoded::to_string([
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.callback_url()),
            ("code_verifier", &pending.verifier),
        ])
        .map_err(|e| OidcError::BadRequest(e.to_string()))?;
        let basic = format!(
            "{}:{}",
            form_component(&self.s.client_id),
            form_component(&self.s.client_secret)
        );
        let req = http::Request::post(&d.token_endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(
                header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(basic)
                ),
            )
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| self.unavailable(e))?;
        let (status, body) = self.fetch(req).await?;
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if !status.is_success() {
            let error = answer["error"].as_str().unwrap_or("no error code");
            let detail = answer["error_description"].as_str().unwrap_or("");
            return Err(OidcError::Refused(format!(
                "the provider's token endpoint answered {status}: {error} {detail}"
            )));
        }
        let id_token = answer["id_token"]
            .as_str()
            .ok_or_else(|| OidcError::Refused("the token response has no id_token".into()))?
            .to_string();
        let kid = jsonwebtoken::decode_header(&id_token)
            .map_err(|e| OidcError::InvalidToken(e.to_string()))?
            .kid;
        let jwks = self.jwks(kid.as_deref()).await?;
        let claims = verify_id_token(
            &jwks,
            &id_token,
            &d.issuer,
            &self.s.client_id,
            &pending.nonce,
        )?;
        let identity = self.identity(&claims)?;
        Ok((identity, pending.to, id_token))
    }

    /// The user, email and groups of verified `claims`, with
    /// `allowed_domains` applied.
    fn identity(&self, claims: &serde_json::Value) -> Result<Identity, OidcError> {
        let username = claims[&self.s.username_claim]
            .as_str()
            .ok_or_else(|| {
                OidcError::Forbidden(format!(
                    "the ID token has no {:?} claim to name the user by (oidc.username_claim)",
                    self.s.username_claim
                ))
            })?
            .to_string();
        crate::session::model::validate_user_name("user", &username).map_err(|_| {
            OidcError::Forbidden(format!(
                "{username:?} (claim {:?}) is not a sessiongate user name: letters, digits and -_.@+",
                self.s.username_claim
            ))
        })?;
        let email = claims["email"].as_str().map(str::to_string);
        if !self.s.allowed_domains.is_empty() {
            let domain = email
                .as_deref()
                .and_then(|e| e.rsplit_once('@'))
                .map(|(_, d)| d.to_ascii_lowercase());
            let verified = claims["email_verified"].as_bool().unwrap_or(true);
            if !verified
                || !domain.as_deref().is_some_and(|d| {
                    self.s
                        .allowed_domains
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(d))
                })
            {
                return Err(OidcError::Forbidden(format!(
                    "{username}'s email {:?} is not in oidc.allowed_domains",
                    email.unwrap_or_default()
                )));
            }
        }
        let groups = match &claims[&self.s.groups_claim] {
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|g| g.as_str())
                .map(|g| g.trim_start_matches('/').to_string())
                .collect(),
            serde_json::Value::String(g) => vec![g.clone()],
            _ => Vec::new(),
        };
        Ok(Identity {
            username,
            email,
            groups,
        })
    }

    fn remember(&self, signin: Option<&str>, host: Option<String>, id_token: String) -> String {
        let mut all = lock(&self.signins);
        make_room(&mut all, SIGNIN_TTL, SIGNINS_MAX, |s| s.at);
        let id = signin
            .filter(|id| all.contains_key(*id))
            .map(str::to_string)
            .or_else(|| crate::auth::random_token().ok())
            .unwrap_or_default();
        let entry = all.entry(id.clone()).or_insert_with(|| SignIn {
            hosts: Vec::new(),
            id_token: String::new(),
            at: Instant::now(),
        });
        entry.id_token = id_token;
        if let Some(h) = host {
            if !entry.hosts.contains(&h) {
                entry.hosts.push(h);
            }
        }
        id
    }
}

/// Verifies an ID token (see the module): signature by a key of `jwks`
/// (asymmetric algorithms only), issuer, audience, expiry and nonce.
/// Returns its claims.
pub fn verify_id_token(
    jwks: &JwkSet,
    token: &str,
    issuer: &str,
    client_id: &str,
    nonce: &str,
) -> Result<serde_json::Value, OidcError> {
    use jsonwebtoken::Algorithm as A;
    let invalid = |m: String| OidcError::InvalidToken(m);
    let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
    if !matches!(
        header.alg,
        A::RS256
            | A::RS384
            | A::RS512
            | A::PS256
            | A::PS384
            | A::PS512
            | A::ES256
            | A::ES384
            | A::EdDSA
    ) {
        return Err(invalid(format!(
            "algorithm {:?} is not accepted",
            header.alg
        )));
    }
    let candidates: Vec<&jsonwebtoken::jwk::Jwk> = match &header.kid {
        Some(kid) => jwks.find(kid).into_iter().collect(),
        None => jwks.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(invalid(format!(
            "no key {:?} in the provider's JWKS",
            header.kid.unwrap_or_default()
        )));
    }
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[client_id]);
    validation.leeway = LEEWAY_SECS;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let mut last = String::from("no key verified it");
    for jwk in candidates {
        let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation) {
            Ok(data) => {
                let claims = data.claims;
                let sent = claims["nonce"].as_str().unwrap_or("");
                if !crate::auth::constant_time_eq(sent.as_bytes(), nonce.as_bytes()) {
                    return Err(invalid("its nonce is not this sign-in's".into()));
                }
                return Ok(claims);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(invalid(last))
}

/// `application/x-www-form-urlencoded` of one component (client
/// credentials in HTTP Basic, RFC 6749 section 2.3.1).
fn form_component(text: &str) -> String {
    serde_urlencoded::to_string([("", text)])
        .map(|s| s.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

/// Drops the entries older than `ttl`, then the oldest while `max` are
/// held, so that one more fits: a flood of sign-ins cannot grow memory.
fn make_room<V>(
    map: &mut HashMap<String, V>,
    ttl: Duration,
    max: usize,
    at: impl Fn(&V) -> Instant,
) {
    map.retain(|_, v| at(v).elapsed() < ttl);
    if map.len() >= max {
        if let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| at(v))
            .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one insert, removal or retain.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The endpoints, served through the gateway on the callback host.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route(&format!("{PREFIX}login"), get(login))
        .route(&format!("{PREFIX}callback"), get(callback))
        .route(&format!("{PREFIX}logout"), get(logout))
}

#[derive(Deserialize)]
struct LoginQuery {
    rd: Option<String>,
    console: Option<String>,
}

async fn login(State(st): State<ApiState>, Query(q): Query<LoginQuery>) -> Response {
    let Some(oidc) = st.control.oidc().cloned() else {
        return not_configured();
    };
    let to = match (q.console.is_some(), q.rd) {
        (true, _) => Return::Console,
        (false, Some(rd)) => match private_session(&st.control, &rd) {
            Some(_) => Return::Session(rd),
            None => {
                return failure(
                    &st.control,
                    OidcError::BadRequest(format!(
                        "rd {rd:?} is not a private session this gateway serves"
                    )),
                )
            }
        },
        (false, None) => {
            return failure(
                &st.control,
                OidcError::BadRequest("rd (the URL to return to) is missing".into()),
            )
        }
    };
    match oidc.start(to).await {
        Ok((url, state)) => {
            let mut resp = found(&url);
            let cookie = format!(
                "{STATE_COOKIE}={state}; Path={PREFIX}; Max-Age={}; HttpOnly; SameSite=Lax{}",
                PENDING_TTL.as_secs(),
                secure(&oidc)
            );
            set_cookie(&mut resp, &cookie);
            resp
        }
        Err(e) => failure(&st.control, e),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(oidc) = st.control.oidc().cloned() else {
        return not_configured();
    };
    let cp = &st.control;
    if let Some(error) = q.error {
        return failure(
            cp,
            OidcError::Refused(format!(
                "the provider answered {error}: {}",
                q.error_description.unwrap_or_default()
            )),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return failure(cp, OidcError::BadRequest("code or state is missing".into()));
    };
    let bound = crate::console::signin::cookie(&headers, STATE_COOKIE).unwrap_or("");
    if !crate::auth::constant_time_eq(bound.as_bytes(), state.as_bytes()) {
        // Taken anyway: a state shown to another browser is spent.
        lock(&oidc.pending).remove(&state);
        return failure(
            cp,
            OidcError::Refused("the state does not match the one this browser started with".into()),
        );
    }
    let (identity, to, id_token) = match oidc.finish(&state, &code).await {
        Ok(x) => x,
        Err(e) => return failure(cp, e),
    };
    if let Err(e) = sync_user(cp, &identity, oidc.s.sync_groups).await {
        return failure(
            cp,
            OidcError::Forbidden(format!("{} could not be signed in: {e}", identity.username)),
        );
    }
    let user = &identity.username;
    let signin = crate::console::signin::cookie(&headers, SIGNIN_COOKIE);
    let (location, host) = match to {
        Return::Console if cp.access_settings().console_portal_host.is_none() => {
            return failure(
                cp,
                OidcError::BadRequest(
                    "console sign-in with OpenID Connect needs the console on the portal host (console.portal = true)".into(),
                ),
            )
        }
        Return::Console => match cp.create_console_link(user).await {
            Ok((token, _)) => (cp.console_link_url(oidc.redirect_host(), &token), None),
            Err(e) => return failure(cp, OidcError::Forbidden(e.to_string())),
        },
        Return::Session(rd) => {
            let Some((session, path)) = private_session(cp, &rd) else {
                return failure(
                    cp,
                    OidcError::BadRequest(format!("{rd:?} is no longer a private session")),
                );
            };
            match cp.create_handoff_link(&session, user, &path).await {
                Ok(link) => {
                    let origin = url::Url::parse(&link.url)
                        .ok()
                        .map(|u| u.origin().ascii_serialization());
                    (link.url, origin)
                }
                Err(crate::error::ControlError::Forbidden(_)) => {
                    return failure(
                        cp,
                        OidcError::Forbidden(format!(
                            "{user} is neither the owner of session {session} nor a member of a group it is shared with"
                        )),
                    )
                }
                Err(e) => return failure(cp, OidcError::Forbidden(e.to_string())),
            }
        }
    };
    let id = oidc.remember(signin, host, id_token);
    cp.metrics().count_oidc_sign_in("ok");
    tracing::info!(user = %user, groups = ?identity.groups, "signed in with OpenID Connect");
    let mut resp = found(&location);
    set_cookie(
        &mut resp,
        &format!(
            "{STATE_COOKIE}=; Path={PREFIX}; Max-Age=0; HttpOnly; SameSite=Lax{}",
            secure(&oidc)
        ),
    );
    set_cookie(
        &mut resp,
        &format!(
            "{SIGNIN_COOKIE}={id}; Path={PREFIX}; Max-Age={}; HttpOnly; SameSite=Lax{}",
            SIGNIN_TTL.as_secs(),
            secure(&oidc)
        ),
    );
    resp.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// Sign-out: one session host per visit (each clears its cookie and sends
/// the browser back here), then the provider's end-session endpoint.
async fn logout(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let Some(oidc) = st.control.oidc().cloned() else {
        return not_configured();
    };
    let id = crate::console::signin::cookie(&headers, SIGNIN_COOKIE).unwrap_or("");
    let next = {
        let mut all = lock(&oidc.signins);
        match all.get_mut(id) {
            Some(s) => match s.hosts.pop() {
                Some(host) => Ok(host),
                None => Err(all.remove(id).map(|s| s.id_token)),
            },
            None => Err(None),
        }
    };
    match next {
        Ok(host) => {
            let back = format!("{}{PREFIX}logout", oidc.origin());
            found(&format!(
                "{host}{}?next={}",
                gateway::access::SIGNOUT_PATH,
                gateway::chp::encode_component(&back)
            ))
        }
        Err(id_token) => {
            let mut resp = match (oidc.discovery().await, id_token) {
                (Ok(d), Some(token)) if d.end_session_endpoint.is_some() => {
                    let end = d.end_session_endpoint.clone().unwrap_or_default();
                    let q = serde_urlencoded::to_string([
                        ("id_token_hint", token.as_str()),
                        ("client_id", oidc.s.client_id.as_str()),
                    ])
                    .unwrap_or_default();
                    let sep = if end.contains('?') { '&' } else { '?' };
                    found(&format!("{end}{sep}{q}"))
                }
                _ => page(
                    StatusCode::OK,
                    "Signed out",
                    "You are signed out of every session of this sign-in.",
                ),
            };
            set_cookie(
                &mut resp,
                &format!(
                    "{SIGNIN_COOKIE}=; Path={PREFIX}; Max-Age=0; HttpOnly; SameSite=Lax{}",
                    secure(&oidc)
                ),
            );
            set_cookie(
                &mut resp,
                &crate::console::signin::sign_out_cookie(oidc.s.scheme == "https"),
            );
            resp
        }
    }
}

/// The session and the path (with query) that `rd` names, if it is a
/// private session the gateway serves.
fn private_session(cp: &ControlPlane, rd: &str) -> Option<(String, String)> {
    let url = url::Url::parse(rd).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let host = url.host_str()?.to_ascii_lowercase();
    let table = cp.routes().load();
    let m = gateway::router::lookup(&table, &host, url.path())?;
    let access = m.route.access.as_ref()?;
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    // Relative to the session's root, as access links take it.
    let path = path
        .get(m.prefix_len..)
        .filter(|p| p.starts_with('/'))
        .map_or_else(|| "/".to_string(), str::to_string);
    Some((access.session.to_string(), path))
}

/// Creates the user at first sign-in; with `sync_groups`, makes their
/// groups those of the claim (creating groups that do not exist).
async fn sync_user(
    cp: &ControlPlane,
    id: &Identity,
    sync_groups: bool,
) -> Result<(), crate::error::ControlError> {
    let user = &id.username;
    if !cp.user_exists(user).await? {
        match cp
            .create_user(NewUser {
                name: user.clone(),
                email: id.email.clone(),
                first_name: None,
                last_name: None,
            })
            .await
        {
            Ok(_) | Err(crate::error::ControlError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(user = %user, "user created at first OpenID Connect sign-in");
    }
    if !sync_groups {
        return Ok(());
    }
    let current = cp.get_user(user).await?.groups;
    let mut wanted = Vec::new();
    for g in &id.groups {
        if crate::session::model::validate_name("groups", g).is_ok() {
            wanted.push(g.clone());
        } else {
            tracing::warn!(user = %user, group = %g, "group claim is not a sessiongate group name; ignored");
        }
    }
    for g in wanted.iter().filter(|g| !current.contains(g)) {
        match cp.add_member(g, user).await {
            Ok(_) => {}
            Err(crate::error::ControlError::NotFound { .. }) => {
                cp.create_group(NewGroup {
                    name: g.clone(),
                    members: vec![user.clone()],
                })
                .await?;
            }
            Err(e) => return Err(e),
        }
    }
    for g in current.iter().filter(|g| !wanted.contains(g)) {
        cp.remove_member(g, user).await?;
    }
    Ok(())
}

fn failure(cp: &ControlPlane, e: OidcError) -> Response {
    cp.metrics().count_oidc_sign_in(e.result());
    tracing::warn!(error = %e, "OpenID Connect sign-in failed");
    let mut text = e.to_string();
    if matches!(e, OidcError::Unavailable { .. }) {
        text.push_str(". An access link from your portal or operator still works.");
    }
    page(e.status(), "Sign-in failed", &text)
}

fn not_configured() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        "OpenID Connect sign-in is not configured",
    )
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{x}</p></body></html>\n",
        t = escape(title),
        x = escape(text)
    );
    let mut resp = (status, html).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn found(url: &str) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn set_cookie(resp: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn secure(oidc: &Oidc) -> &'static str {
    if oidc.s.scheme == "https" {
        "; Secure"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    const ISSUER: &str = "https://idp.example.com";
    const CLIENT: &str = "sessiongate";

    /// A P-256 key: its signing key and its JWK (kid `kid`).
    fn key(kid: &str) -> (EncodingKey, serde_json::Value) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw();
        let (x, y) = (&raw[1..33], &raw[33..65]);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        (EncodingKey::from_ec_der(&pair.serialize_der()), jwk)
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(key: &EncodingKey, kid: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn claims(nonce: &str) -> serde_json::Value {
        json!({
            "iss": ISSUER, "aud": CLIENT, "sub": "alice", "nonce": nonce,
            "iat": now(), "exp": now() + 300,
            "preferred_username": "alice", "groups": ["physics"],
        })
    }

    #[test]
    fn a_token_signed_by_the_providers_key_for_this_client_and_nonce_verifies() {
        let (k, jwk) = key("k1");
        let jwks: JwkSet = serde_json::from_value(json!({ "keys": [jwk] })).unwrap();
        let t = token(&k, "k1", claims("n-1"));
        let c = verify_id_token(&jwks, &t, ISSUER, CLIENT, "n-1").unwrap();
        assert_eq!(c["preferred_username"], "alice");
    }

    #[test]
    fn tampered_tokens_are_refused_naming_why() {
        let (k, jwk) = key("k1");
        let (other, _) = key("k1");
        let jwks: JwkSet = serde_json::from_value(json!({ "keys": [jwk] })).unwrap();
        let mut expired = claims("n");
        expired["exp"] = json!(now() - 3600);
        let mut audience = claims("n");
        audience["aud"] = json!("another-client");
        let mut issuer = claims("n");
        issuer["iss"] = json!("https://evil.example.com");
        let cases = [
            (
                "signed by another key",
                token(&other, "k1", claims("n")),
                "InvalidSignature",
            ),
            (
                "an unknown key id",
                token(&k, "k9", claims("n")),
                "no key \"k9\"",
            ),
            ("expired", token(&k, "k1", expired), "ExpiredSignature"),
            (
                "for another audience",
                token(&k, "k1", audience),
                "InvalidAudience",
            ),
            (
                "from another issuer",
                token(&k, "k1", issuer),
                "InvalidIssuer",
            ),
            (
                "another sign-in's nonce",
                token(&k, "k1", claims("other")),
                "nonce",
            ),
        ];
        for (what, t, why) in cases {
            match verify_id_token(&jwks, &t, ISSUER, CLIENT, "n") {
                Err(OidcError::InvalidToken(m)) => assert!(m.contains(why), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        // A MAC with a shared secret is no provider's signature here.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims("n"),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(matches!(
            verify_id_token(&jwks, &hs, ISSUER, CLIENT, "n"),
            Err(OidcError::InvalidToken(m)) if m.contains("HS256")
        ));
        assert!(verify_id_token(&jwks, "not.a.token", ISSUER, CLIENT, "n").is_err());
    }

    #[test]
    fn client_credentials_are_form_encoded_for_basic_auth() {
        assert_eq!(form_component("a b:c/d"), "a+b%3Ac%2Fd");
        assert_eq!(form_component("plain"), "plain");
    }
}
