//! configurable-http-proxy's REST API (`CHP-COMPAT.md` section 3): the
//! routes as JupyterHub posts them, kept verbatim, each also a route of the
//! gateway's table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gateway::chp::{clean_key, decode, key_slug, ROUTE_ID_PREFIX};
use gateway::proxy::Proxy;
use gateway::{RouteChange, RouteHandle, RoutePublisher, RouteSpec, RouteTarget};
use serde_json::{Map, Value};

/// The largest route body accepted.
const BODY_LIMIT: usize = 1 << 20;

/// One route as posted.
struct Stored {
    /// The body, as posted (plus `host` in host-routing mode, as CHP adds).
    data: Map<String, Value>,
    /// When it was posted (Unix ms): its activity until traffic moves it.
    posted_ms: u64,
}

/// The routes and where they are published.
pub struct ChpState {
    routes: Mutex<BTreeMap<String, Stored>>,
    table: RouteHandle,
    publisher: RoutePublisher,
    token: Option<String>,
    host_routing: bool,
    change_origin: bool,
    /// API requests answered, by status, for `/metrics`.
    api_requests: Mutex<BTreeMap<u16, u64>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ChpState {
    pub fn new(
        table: RouteHandle,
        publisher: RoutePublisher,
        token: Option<String>,
        host_routing: bool,
        change_origin: bool,
    ) -> ChpState {
        ChpState {
            routes: Mutex::new(BTreeMap::new()),
            table,
            publisher,
            token,
            host_routing,
            change_origin,
            api_requests: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The route's spec for the table: its target's scheme and authority,
    /// and its path (and query) to join requests' paths to.
    fn spec(&self, key: &str, target: &str) -> Result<RouteSpec, String> {
        let (upstream, path) = gateway::chp::split_target(target)?;
        let mut spec = RouteSpec::new(
            format!("{ROUTE_ID_PREFIX}{key}"),
            RouteTarget::Upstream(upstream),
        )
        .slug(key_slug(key))
        .rewrite_host(self.change_origin);
        if !path.is_empty() && path != "/" {
            spec = spec.target_path(path);
        }
        Ok(spec)
    }

    /// Stores `data` (an object with a string `target`) under `path`'s key
    /// and publishes its route: the answer comes once the table has it.
    pub async fn add_route(&self, path: &str, data: Value) -> Result<(), String> {
        let key = clean_key(path);
        let Value::Object(mut data) = data else {
            return Err("Must specify 'target' as string".into());
        };
        let Some(target) = data
            .get("target")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return Err("Must specify 'target' as string".into());
        };
        if self.host_routing && key != "/" {
            let host = key.split('/').nth(1).unwrap_or("").to_string();
            data.insert("host".into(), Value::String(host));
        }
        // A target this proxy cannot reach (not a URL, `ftp://`) is kept
        // as posted (JupyterHub compares it) and its route answers 500, as
        // CHP's handler throws on it: the route is there, inactive, so that
        // no shorter prefix takes its requests.
        let spec = match self.spec(&key, &target) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::warn!(route = %key, error = %e, "route kept, but its target cannot be proxied to: it answers 500");
                self.spec(&key, "http://127.0.0.1:9")?.inactive(true)
            }
        };
        let change = RouteChange::Upsert(spec);
        self.publisher
            .submit(vec![change])
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(route = %key, target = %target, "Route added");
        self.lock().insert(
            key,
            Stored {
                data,
                posted_ms: now_ms(),
            },
        );
        Ok(())
    }

    /// Removes the route at `path`'s key; whether there was one.
    pub async fn remove_route(&self, path: &str) -> Result<bool, String> {
        let key = clean_key(path);
        if self.lock().remove(&key).is_none() {
            return Ok(false);
        }
        self.publisher
            .submit(vec![RouteChange::Remove(
                format!("{ROUTE_ID_PREFIX}{key}").into(),
            )])
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(route = %key, "Route removed");
        Ok(true)
    }

    /// Each route's data with its `last_activity` (the later of its post
    /// and the traffic CHP counts), optionally only those inactive since
    /// `before_ms`.
    fn list(&self, key: Option<&str>, before_ms: Option<u64>) -> Map<String, Value> {
        let table = self.table.load();
        let routes = self.lock();
        let mut out = Map::new();
        let selected: Box<dyn Iterator<Item = (&String, &Stored)>> = match key {
            Some(k) => Box::new(routes.get_key_value(k).into_iter()),
            None => Box::new(routes.iter()),
        };
        for (k, s) in selected {
            let traffic = table
                .route(&format!("{ROUTE_ID_PREFIX}{k}"))
                .and_then(|r| r.state.last_activity_ms())
                .unwrap_or(0);
            let last = s.posted_ms.max(traffic);
            if before_ms.is_some_and(|b| last >= b) {
                continue;
            }
            let mut data = s.data.clone();
            data.insert(
                "last_activity".into(),
                Value::String(crate::time::rfc3339_millis(last)),
            );
            out.insert(k.clone(), Value::Object(data));
        }
        out
    }

    fn count(&self, status: StatusCode) {
        *self
            .api_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status.as_u16())
            .or_default() += 1;
    }

    fn routes_len(&self) -> usize {
        self.lock().len()
    }
}

/// Serves the API on `listener` until `stop`.
/// The REST API's routes.
pub fn router(state: Arc<ChpState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

fn empty(status: StatusCode) -> Response {
    status.into_response()
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

fn json(map: Map<String, Value>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Value::Object(map).to_string(),
    )
        .into_response()
}

async fn handle(State(state): State<Arc<ChpState>>, req: Request) -> Response {
    let resp = route_request(&state, req).await;
    state.count(resp.status());
    resp
}

async fn route_request(state: &ChpState, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/api/routes") else {
        return text(StatusCode::NOT_FOUND, "Not Found");
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    let method = req.method().clone();
    if !matches!(method, Method::GET | Method::POST | Method::DELETE) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method not supported");
    }
    if let Some(token) = &state.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(token_of);
        let ok = presented
            .is_some_and(|p| crate::auth::constant_time_eq(p.as_bytes(), token.as_bytes()));
        if !ok {
            return empty(StatusCode::FORBIDDEN);
        }
    }
    // The route's path, percent-decoded as CHP decodes it.
    let route_path = if rest.is_empty() {
        None
    } else {
        match decode(rest) {
            Some(p) => Some(p),
            None => return text(StatusCode::BAD_REQUEST, format!("URI malformed: {rest}")),
        }
    };
    match method {
        Method::GET => {
            let single = route_path.as_deref().filter(|p| !p.is_empty() && *p != "/");
            if let Some(p) = single {
                let key = clean_key(p);
                let mut found = state.list(Some(&key), None);
                return match found.remove(&key) {
                    Some(Value::Object(data)) => json(data),
                    _ => empty(StatusCode::NOT_FOUND),
                };
            }
            let query = req.uri().query().unwrap_or("");
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_str(query).unwrap_or_default();
            let since = pairs
                .iter()
                .find(|(k, _)| k == "inactiveSince")
                .or_else(|| pairs.iter().find(|(k, _)| k == "inactive_since"))
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty());
            let before = match since {
                None => None,
                Some(v) => match parse_date_ms(&v) {
                    Some(ms) => Some(ms),
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("Invalid datestamp '{v}' must be ISO8601."),
                        )
                    }
                },
            };
            json(state.list(None, before))
        }
        Method::POST => {
            let body: Bytes = match axum::body::to_bytes(req.into_body(), BODY_LIMIT).await {
                Ok(b) => b,
                Err(e) => {
                    return text(StatusCode::BAD_REQUEST, format!("Body not valid JSON: {e}"))
                }
            };
            let data: Value = match serde_json::from_slice(&body) {
                // CHP: `JSON.parse(buf) || {}`.
                Ok(Value::Null | Value::Bool(false)) => Value::Object(Map::new()),
                Ok(v) => v,
                Err(e) => {
                    return text(StatusCode::BAD_REQUEST, format!("Body not valid JSON: {e}"))
                }
            };
            let path = route_path.unwrap_or_else(|| "/".into());
            match state.add_route(&path, data).await {
                Ok(()) => empty(StatusCode::CREATED),
                Err(e) if e.starts_with("Must specify") => text(StatusCode::BAD_REQUEST, e),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        _ => {
            let path = route_path.unwrap_or_else(|| "/".into());
            match state.remove_route(&path).await {
                Ok(true) => empty(StatusCode::NO_CONTENT),
                Ok(false) => empty(StatusCode::NOT_FOUND),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
    }
}

/// CHP's `/token\s+(\S+)/` on the `Authorization` header: the first
/// `token` followed by whitespace and a word (`tokens token abc` is `abc`).
fn token_of(header: &str) -> Option<&str> {
    header.match_indices("token").find_map(|(at, _)| {
        let rest = &header[at + "token".len()..];
        let trimmed = rest.trim_start();
        if trimmed.len() == rest.len() {
            return None;
        }
        trimmed.split_whitespace().next()
    })
}

/// An ISO 8601 date or date-time (what `Date.parse` reads of it): Unix ms.
/// A date-time without a zone is taken as UTC.
pub fn parse_date_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next().map_or(Some(1), |m| m.parse().ok())?;
    let da: i64 = d.next().map_or(Some(1), |m| m.parse().ok())?;
    if d.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    let (mut secs, mut offset) = (0i64, 0i64);
    let mut millis = 0i64;
    if let Some(t) = time {
        let (clock, zone) = match t.find(['Z', 'z', '+', '-']) {
            Some(i) => (&t[..i], Some(&t[i..])),
            None => (t, None),
        };
        let mut c = clock.split(':');
        let h: i64 = c.next()?.parse().ok()?;
        let mi: i64 = c.next().unwrap_or("0").parse().ok()?;
        let sec_part = c.next().unwrap_or("0");
        let (sec, frac) = sec_part.split_once('.').unwrap_or((sec_part, ""));
        let sec: i64 = sec.parse().ok()?;
        if !frac.is_empty() {
            let ms: String = frac.chars().chain("000".chars()).take(3).collect();
            millis = ms.parse().ok()?;
        }
        if h > 24 || mi > 59 || sec > 60 {
            return None;
        }
        secs = h * 3600 + mi * 60 + sec;
        match zone {
            None | Some("Z") | Some("z") => {}
            Some(z) => {
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let hm = z[1..].replace(':', "");
                if hm.len() != 4 {
                    return None;
                }
                let oh: i64 = hm[..2].parse().ok()?;
                let om: i64 = hm[2..].parse().ok()?;
                offset = sign * (oh * 3600 + om * 60);
            }
        }
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = (days * 86_400 + secs - offset) * 1000 + millis;
    u64::try_from(total).ok()
}

/// `/metrics` on the metrics listener: the gateway's series and the API's.
pub fn metrics_router(proxy: Arc<Proxy>, state: Arc<ChpState>) -> Router {
    Router::new().fallback(move |req: Request| {
        let proxy = Arc::clone(&proxy);
        let state = Arc::clone(&state);
        async move {
            if req.uri().path() != "/metrics" {
                return text(StatusCode::NOT_FOUND, "Not Found");
            }
            let mut out = String::new();
            proxy.metrics().render(&mut out);
            out.push_str(
                "# HELP sessiongate_chp_routes Routes in the proxy's table.\n\
                 # TYPE sessiongate_chp_routes gauge\n",
            );
            out.push_str(&format!("sessiongate_chp_routes {}\n", state.routes_len()));
            out.push_str(
                "# HELP sessiongate_chp_api_requests_total REST API requests, by status.\n\
                 # TYPE sessiongate_chp_api_requests_total counter\n",
            );
            for (code, n) in state
                .api_requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                out.push_str(&format!(
                    "sessiongate_chp_api_requests_total{{code=\"{code}\"}} {n}\n"
                ));
            }
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                out,
            )
                .into_response()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_as_chp_reads_it() {
        for (h, want) in [
            ("token abc", Some("abc")),
            ("token   abc  def", Some("abc")),
            ("Bearer abc", None),
            ("tokenabc", None),
            ("x token abc", Some("abc")),
            ("tokens token abc", Some("abc")),
            ("tokenabc token", None),
        ] {
            assert_eq!(token_of(h), want, "{h:?}");
        }
    }

    #[test]
    fn iso_dates_parse_to_unix_milliseconds() {
        for (s, want) in [
            ("1970-01-01T00:00:00.000Z", Some(0)),
            ("2026-12-05T07:21:13.500Z", Some(1_796_455_273_500)),
            ("2026-12-05T08:21:13.500+01:00", Some(1_796_455_273_500)),
            ("2026-12-05", Some(1_796_428_800_000)),
            ("not a date", None),
            ("2026-13-01", None),
        ] {
            assert_eq!(parse_date_ms(s), want, "{s:?}");
        }
    }
}
