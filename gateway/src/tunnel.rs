//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): once both
//! sides have switched protocols, bytes are copied both ways until either side
//! closes or the route asks for the connection to be closed (revocation).
//! Every chunk read counts as route activity.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::GatewayMetrics;
use crate::table::{LiveKind, RouteState};

/// Starts the tunnel task. `user` tags the connection for per-user revocation.
pub(crate) fn spawn(
    state: Arc<RouteState>,
    metrics: Arc<GatewayMetrics>,
    user: Option<Arc<str>>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    upstream_name: String,
) {
    // Registered before the 101 reaches the client, so a revocation that
    // follows the handshake always finds it.
    let (guard, mut close) = state.register_live(LiveKind::Upgraded, user);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(upstream = %upstream_name, error = %e, "upgrade failed");
                return;
            }
        };
        metrics.websocket_opened();
        let mut client = Activity {
            io: TokioIo::new(client),
            state: &state,
        };
        let mut upstream = Activity {
            io: TokioIo::new(upstream),
            state: &state,
        };
        tokio::select! {
            res = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(e) = res {
                    tracing::debug!(upstream = %upstream_name, error = %e, "tunnel ended");
                }
            }
            _ = close.wait_for(|closed| *closed) => {
                tracing::debug!(upstream = %upstream_name, "tunnel closed by the route");
            }
        }
        metrics.websocket_closed();
        drop(guard);
    });
}

/// Wraps one side of a tunnel and records route activity on every read.
struct Activity<'a> {
    io: TokioIo<Upgraded>,
    state: &'a RouteState,
}

impl AsyncRead for Activity<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.touch();
        }
        poll
    }
}

impl AsyncWrite for Activity<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
