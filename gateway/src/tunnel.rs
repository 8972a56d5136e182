//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): once both
//! sides have switched protocols, bytes are copied both ways until either side
//! closes, the route asks for the connection to be closed (revocation), no
//! byte moves either way for the tunnel idle timeout, or the server begins
//! to shut down. Every chunk read counts as route activity. The tunnel holds
//! the client connection's lease, so it counts towards the listener's
//! connection limits and the open-connections gauge until it closes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::limits::ConnLease;
use crate::metrics::GatewayMetrics;
use crate::table::revocation::{Admitted, Refusal};
use crate::table::RouteState;

/// How long a tunnel outside any listener (no lease) may stay silent.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Starts the tunnel task, for the request `admitted` let in. `lease` is
/// the client connection's place in its listener's limits, with the
/// listener's tunnel idle timeout and drain signal. Refused, and nothing
/// started, when a revocation since the request was let in ends it.
pub(crate) fn spawn(
    mut admitted: Admitted,
    metrics: Arc<GatewayMetrics>,
    lease: Option<Arc<ConnLease>>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    upstream_name: String,
    upstream_is_activity: bool,
) -> Result<(), Refusal> {
    // Registered before the 101 reaches the client, then checked: a
    // revocation either finds it registered or has already moved the clock.
    let state = Arc::clone(&admitted.route.state);
    let (guard, mut close) =
        state.register_live(admitted.route.target.clone(), admitted.user.clone());
    admitted.check(true)?;
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(upstream = %upstream_name, error = %e, "upgrade failed");
                return;
            }
        };
        metrics.websocket_opened();
        let (idle_timeout, mut drain) = match &lease {
            Some(l) => (l.tunnel.idle_timeout, Some(l.tunnel.drain.clone())),
            None => (DEFAULT_IDLE_TIMEOUT, None),
        };
        let moved = AtomicBool::new(false);
        let mut client = Activity {
            io: TokioIo::new(client),
            state: &state,
            moved: &moved,
            counts: true,
        };
        let mut upstream = Activity {
            io: TokioIo::new(upstream),
            state: &state,
            moved: &moved,
            counts: upstream_is_activity,
        };
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let mut idle = IdleCheck::new(idle_timeout);
        loop {
            tokio::select! {
                res = &mut copy => {
                    if let Err(e) = res {
                        tracing::debug!(upstream = %upstream_name, error = %e, "tunnel ended");
                    }
                    break;
                }
                _ = close.wait_for(|closed| *closed) => {
                    tracing::debug!(upstream = %upstream_name, "tunnel closed by the route");
                    break;
                }
                _ = drained(drain.as_mut()) => {
                    tracing::debug!(upstream = %upstream_name, "tunnel closed: the server is shutting down");
                    break;
                }
                _ = idle.tick() => {
                    if idle.expired(&moved) {
                        tracing::debug!(upstream = %upstream_name, "tunnel closed: idle");
                        break;
                    }
                }
            }
        }
        metrics.websocket_closed();
        drop(guard);
        drop(lease);
    });
    Ok(())
}

/// The idle check of a byte-copying connection (a tunnel, a workspace
/// port), as the server's own: four ticks per timeout, and idle once four
/// in a row saw no byte read on either side.
pub(crate) struct IdleCheck {
    ticker: tokio::time::Interval,
    quiet: u32,
}

impl IdleCheck {
    pub(crate) fn new(timeout: Duration) -> IdleCheck {
        let tick = (timeout / 4).max(Duration::from_millis(10));
        IdleCheck {
            ticker: tokio::time::interval_at(tokio::time::Instant::now() + tick, tick),
            quiet: 0,
        }
    }

    /// The next tick.
    pub(crate) async fn tick(&mut self) {
        self.ticker.tick().await;
    }

    /// At a tick: whether the whole timeout passed with nothing `moved`
    /// (which it clears).
    pub(crate) fn expired(&mut self, moved: &AtomicBool) -> bool {
        if moved.swap(false, Ordering::Relaxed) {
            self.quiet = 0;
        } else {
            self.quiet += 1;
        }
        self.quiet >= 4
    }
}

/// Resolves when the listener begins to drain (or is gone); never without
/// a listener.
async fn drained(drain: Option<&mut watch::Receiver<bool>>) {
    match drain {
        Some(d) => {
            let _ = d.wait_for(|draining| *draining).await;
        }
        None => std::future::pending().await,
    }
}

/// Wraps one side of a tunnel and records route activity on every read,
/// and that bytes moved, for the tunnel's idle check. Every byte written to
/// one side was read from the other, so reads see both directions.
struct Activity<'a> {
    io: TokioIo<Upgraded>,
    state: &'a RouteState,
    moved: &'a AtomicBool,
    /// Whether what this side sends is route activity (CHP counts only the
    /// client's side).
    counts: bool,
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
            if self.counts {
                self.state.touch();
            }
            self.moved.store(true, Ordering::Relaxed);
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
