//! The control-plane listener: the API router served over HTTP/1.1 with the
//! gateway's kind of limits — a header-read timeout, a connection cap and
//! a body limit — so that a client holding connections open, sending half a
//! request head or an endless body cannot take the API from operators.
//!
//! HTTP/1.1 only: hyper's header-read timeout runs from the moment a
//! connection waits for a head, so a connection that sends nothing at all
//! is closed too, where HTTP/2's version sniffing (before any timeout
//! applies) and idle streams would need limits of their own. The API's
//! clients (`sessiongate ctl`, portals, curl) speak HTTP/1.1.
//!
//! Every request carries its peer's address as axum's
//! [`ConnectInfo`]`<SocketAddr>`, for the brute-force limit.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::ApiError;

/// The listener's limits (`[control_plane]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Time to send a request head; also the longest a keep-alive
    /// connection waits for its next one.
    pub header_read_timeout: Duration,
    /// Simultaneous connections; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request body (413 past it).
    pub max_body_bytes: usize,
}

impl Default for ApiLimits {
    /// 10 s, 1,024 connections, 2 MiB: an operator's client sends its head
    /// at once, few connections are open at a time, and the largest bodies
    /// (bulk actions over 10,000 names) stay well below 2 MiB.
    fn default() -> Self {
        ApiLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_body_bytes: 2 << 20,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, asks open connections to close after their current request,
/// and returns once they have.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ApiLimits,
    shutdown: impl Future<Output = ()>,
) {
    let router = router
        .layer(axum::middleware::from_fn_with_state(
            limits.max_body_bytes,
            limit_body,
        ))
        // The middleware has read and bounded the body; extractors need not
        // apply their own (2 MiB) limit on top.
        .layer(axum::extract::DefaultBodyLimit::disable());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    while let Some((permit, stream, remote)) =
        gateway::server::accept_permitted(&listener, &permits, shutdown.as_mut(), "control plane")
            .await
    {
        // Answers and the route stream's frames are small: without it each
        // waits for the peer's delayed ACK (up to 40 ms on Linux), which was
        // the tail of `bench churn --gateways 2`'s propagation.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let http = Arc::clone(&http);
        let mut drain = drain_rx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(remote));
                let router = router.clone();
                async move {
                    Ok::<_, Infallible>(match tower::ServiceExt::oneshot(router, req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    })
                }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = drain.wait_for(|d| *d) => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%remote, error = %e, "control plane: connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let max_u32 = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(max_u32).await;
}

/// Refuses a body over `max` bytes with 413 and our JSON error — at once
/// from its `Content-Length`, or once a chunked body passes the limit —
/// and hands the handlers the body read whole.
async fn limit_body(State(max): State<usize>, req: Request, next: Next) -> Response {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than the {max}-byte limit (control_plane.max_body_bytes)"
            ),
        )
        .into_response()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return ApiError::bad_request(format!("the request body could not be read: {e}"))
                .into_response()
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The client's address, as an extractor (see [`client_addr`]).
pub struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_addr(&parts.extensions)))
    }
}

/// The client address a request came from, as the listener recorded it;
/// the unspecified address for a request that came on no connection (a
/// router driven in process).
pub fn client_addr(extensions: &http::Extensions) -> std::net::IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip())
}
