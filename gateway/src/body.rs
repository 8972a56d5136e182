//! Body types. One enum instead of a boxed trait object so that the common
//! case (an upstream body passed through) costs no allocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use tokio::sync::watch;

use crate::access_log::LoggedBody;
use crate::clock::unix_millis;
use crate::table::LiveGuard;

/// What the gateway answers with: an upstream body streamed through, or a
/// small body of its own (error pages, redirects).
#[derive(Debug)]
pub enum ProxyBody {
    Upstream(Incoming),
    /// A streaming upstream body the route can cut off (revocation).
    Revocable(Box<RevocableBody>),
    Full(Option<Bytes>),
    /// Any of the above, counted and written to the access log at its end.
    Logged(Box<LoggedBody>),
}

/// An upstream body registered with its route's live connections: when the
/// route closes them (the user lost access, or the session stopped), the
/// next poll fails, and hyper resets the stream or closes the connection.
pub struct RevocableBody {
    inner: Incoming,
    closed: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    _guard: LiveGuard,
}

impl std::fmt::Debug for RevocableBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocableBody").finish_non_exhaustive()
    }
}

impl RevocableBody {
    pub(crate) fn new(inner: Incoming, guard: LiveGuard, mut close: watch::Receiver<bool>) -> Self {
        RevocableBody {
            inner,
            closed: Box::pin(async move {
                // An error means the route state is gone: nothing will close it.
                if close.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }),
            _guard: guard,
        }
    }
}

/// The error a revoked streaming response ends with.
#[derive(Debug, thiserror::Error)]
#[error("the response was closed: access to the route was revoked or the session stopped")]
pub struct Revoked;

/// Errors of a [`ProxyBody`]: the upstream's, or a revocation.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
    #[error(transparent)]
    Revoked(#[from] Revoked),
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    /// The bytes of a `Full` body (tests and small local answers).
    pub fn into_full_bytes(self) -> Option<Bytes> {
        match self {
            ProxyBody::Full(b) => Some(b.unwrap_or_default()),
            ProxyBody::Logged(l) => l.into_inner().into_full_bytes(),
            ProxyBody::Upstream(_) | ProxyBody::Revocable(_) => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            ProxyBody::Revocable(r) => {
                if r.closed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Revoked.into())));
                }
                Pin::new(&mut r.inner)
                    .poll_frame(cx)
                    .map_err(BodyError::from)
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Logged(l) => Pin::new(&mut **l).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Revocable(r) => r.inner.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Logged(l) => l.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Revocable(r) => r.inner.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Logged(l) => l.size_hint(),
        }
    }
}

/// The client's request body on its way upstream. While it is still being
/// sent, each frame records progress, so that the response timeout counts
/// from the last byte uploaded rather than from the start of a slow upload.
#[derive(Debug)]
pub struct UpstreamRequestBody {
    inner: Incoming,
    progress: Option<Arc<AtomicU64>>,
}

impl UpstreamRequestBody {
    pub fn new(inner: Incoming, progress: Option<Arc<AtomicU64>>) -> Self {
        UpstreamRequestBody { inner, progress }
    }
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(_))), Some(p)) = (&poll, &this.progress) {
            p.store(unix_millis(), Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
