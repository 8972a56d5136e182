//! The route stream and what gateways send back (`docs/gateway-protocol.md`),
//! on the API listener, so that `--control-plane` takes the URL `ctl
//! --server` does: one port to open and to balance.
//!
//! Only gateway tokens may use these endpoints, and they may use nothing
//! else: a missing or wrong token gets 401 (and counts towards the
//! brute-force limit), an operator's token 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use gateway::access::{Activation, ActivationError, ActivationRequest};
use gateway::sync::Message;
use serde::{Deserialize, Serialize};

use super::{ApiError, Control, ErrorBody};
use crate::auth::{bearer_token, TokenKind};
use crate::gateways::{frame, GatewayView};
use crate::limits::Guessed;

/// How often an idle stream says it is alive: often enough for proxies
/// that time out idle responses, and for a gateway to notice a dead one.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// The gateway a request comes from: its token's name and the instance
/// it says it is (several replicas may share a token), and the token, so
/// that a stream can end when the token is deleted.
struct Caller {
    name: String,
    token: String,
}

/// Checks a gateway's bearer token.
async fn gateway_caller(
    cp: &Control,
    headers: &HeaderMap,
    client: std::net::IpAddr,
    instance: Option<&str>,
) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let failures = cp.failures(Guessed::ApiToken);
    failures.check(client).map_err(ApiError::from)?;
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| bearer_token(h.as_bytes()))
    else {
        return Err(unauthorized("missing Authorization: Bearer token"));
    };
    match cp.check_token(token) {
        None => {
            failures.fail(client);
            Err(unauthorized("invalid bearer token"))
        }
        Some(TokenKind::Gateway) => {
            let name = cp
                .gateway_token_name(token)
                .ok_or_else(|| unauthorized("invalid bearer token"))?;
            let name = match instance.filter(|i| !i.is_empty()) {
                Some(i) => format!("{name}/{i}"),
                None => name.to_string(),
            };
            Ok(Caller {
                name,
                token: token.to_string(),
            })
        }
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only a gateway token may follow the route stream (sessiongate ctl tokens create NAME --kind gateway)",
        )),
    }
}

/// An instance name: what a gateway calls itself beside its token's name.
fn check_instance(instance: &str) -> Result<(), ApiError> {
    if instance.len() > 64
        || !instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("instance {instance:?}: up to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// The table version the gateway holds (0: none).
    #[serde(default)]
    pub version: u64,
    /// The epoch of that version (from its last snapshot): a version of
    /// another epoch, or none, gets a snapshot.
    #[serde(default)]
    pub epoch: u64,
    /// The change-log watermark of that version (replicas on PostgreSQL;
    /// 0: none). A gateway that held another replica's epoch resumes from
    /// it with one delta instead of a snapshot.
    #[serde(default)]
    pub watermark: u64,
    /// Which of the gateways sharing a token this is (its host name).
    #[serde(default)]
    pub instance: String,
}

#[utoipa::path(
    get, path = "/api/v1/gateway/stream", tag = "gateways",
    params(StreamQuery),
    responses(
        (status = 200, description = "Length-delimited JSON frames (4-byte big-endian length, then a message): the messages after `version`, or a snapshot, then every change as it is made, and a heartbeat every 10 s", content_type = "application/octet-stream"),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Not a gateway token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stream(
    State(cp): State<Control>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    check_instance(&q.instance)?;
    let caller = gateway_caller(&cp, &headers, peer.ip(), Some(&q.instance)).await?;
    let gateways = cp.gateways().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let same_epoch = q.epoch == gateways.epoch() && q.version > 0;
    gateways.connected(
        &caller.name,
        peer.to_string(),
        if same_epoch { q.version } else { 0 },
    );
    let (name, token) = (caller.name, caller.token);
    let control = cp.clone();
    tokio::spawn(async move {
        struct Gone(crate::gateways::Gateways, String);
        impl Drop for Gone {
            fn drop(&mut self) {
                self.0.disconnected(&self.1);
            }
        }
        let _gone = Gone(gateways.clone(), name);
        let mut news = gateways.subscribe();
        let mut closing = gateways.closing();
        let mut held = same_epoch.then_some(q.version);
        if *closing.borrow_and_update() {
            return;
        }
        if !same_epoch && q.version > 0 {
            // Moving from another replica (or from before a restart).
            if let Some((first, to)) = control.switch_delta(q.version, q.watermark).await {
                tracing::info!(gateway = %_gone.1, from_version = q.version, watermark = q.watermark, to_version = to, "gateway moved here: resumed from its watermark");
                if tx.send(first).await.is_err() {
                    return;
                }
                held = Some(to);
            }
        }
        loop {
            // A deleted token ends its streams (at the next change or
            // heartbeat); the gateway's reconnection is then refused.
            if control.gateway_token_name(&token).is_none() {
                tracing::warn!(gateway = %_gone.1, "gateway token deleted: closing its route stream");
                return;
            }
            news.borrow_and_update();
            let (frames, to) = gateways.catch_up(held);
            for f in frames {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
            held = Some(to);
            tokio::select! {
                changed = news.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(HEARTBEAT) => {
                    let version = held.unwrap_or_default();
                    if tx.send(frame(&Message::Heartbeat { version })).await.is_err() {
                        return;
                    }
                }
                _ = closing.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-sessiongate-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// An acknowledgement: the version a gateway applied.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub version: u64,
    /// The epoch of that version: an ack of another epoch (meant for
    /// another replica) is not recorded. 0: not said (older gateways).
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub instance: String,
}

#[utoipa::path(
    post, path = "/api/v1/gateway/ack", tag = "gateways",
    request_body = Ack,
    responses(
        (status = 204, description = "Recorded"),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Not a gateway token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ack(
    State(cp): State<Control>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(a): Json<Ack>,
) -> Result<StatusCode, ApiError> {
    check_instance(&a.instance)?;
    let caller = gateway_caller(&cp, &headers, peer.ip(), Some(&a.instance)).await?;
    if a.epoch == 0 || a.epoch == cp.gateways().epoch() {
        cp.gateways().ack(&caller.name, a.version);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A gateway's activity since its last report: per route id, the Unix
/// millisecond of its last request or WebSocket traffic.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityReport {
    pub routes: Vec<(String, u64)>,
    #[serde(default)]
    pub instance: String,
}

/// The most routes one report may name: a gateway sends only those that
/// moved in the last second.
const MAX_REPORT: usize = 1_000_000;

#[utoipa::path(
    post, path = "/api/v1/gateway/activity", tag = "gateways",
    request_body = ActivityReport,
    responses(
        (status = 204, description = "Merged: the latest time per route wins"),
        (status = 400, description = "Too many routes in one report", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Not a gateway token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn activity(
    State(cp): State<Control>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(r): Json<ActivityReport>,
) -> Result<StatusCode, ApiError> {
    check_instance(&r.instance)?;
    let caller = gateway_caller(&cp, &headers, peer.ip(), Some(&r.instance)).await?;
    if r.routes.len() > MAX_REPORT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "routes: {} in one report, at most {MAX_REPORT}",
                r.routes.len()
            ),
        ));
    }
    cp.gateways().activity(&caller.name, &r.routes);
    Ok(StatusCode::NO_CONTENT)
}

/// An access link opened at a gateway.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The token from the link.
    pub token: String,
    /// The session of the route it was opened on.
    pub session: String,
    /// The browser's address (the brute-force limit counts by it).
    #[schema(value_type = String)]
    pub client: std::net::IpAddr,
    /// The user of a valid cookie the browser sent with it.
    #[serde(default)]
    pub holder: Option<String>,
}

#[utoipa::path(
    post, path = "/api/v1/gateway/activate", tag = "gateways",
    request_body = ActivateRequest,
    responses(
        (status = 200, description = "The link is consumed: the cookie to set, where to send the browser"),
        (status = 422, description = "The link was refused: `refusal` says why, as the gateway's page will"),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Not a gateway token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn activate(
    State(cp): State<Control>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(r): Json<ActivateRequest>,
) -> Result<Response, ApiError> {
    gateway_caller(&cp, &headers, peer.ip(), None).await?;
    let req = ActivationRequest {
        token: r.token,
        session: r.session.into(),
        client: r.client,
        holder: r.holder.map(Into::into),
    };
    Ok(match cp.activate_link(req).await {
        Ok(a) => Json::<Activation>(a).into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, Json::<ActivationError>(e)).into_response(),
    })
}

/// Every gateway that followed this control plane since it started.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GatewaysView {
    /// The control plane's table version.
    pub version: u64,
    pub gateways: Vec<GatewayView>,
}

#[utoipa::path(
    get, path = "/api/v1/gateways", tag = "gateways",
    responses(
        (status = 200, description = "The remote gateways: name, address, version held, lag, last seen, connected", body = GatewaysView),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_gateways(State(cp): State<Control>) -> Json<GatewaysView> {
    Json(GatewaysView {
        version: cp.routes().load().version(),
        gateways: cp.gateways().list(),
    })
}
