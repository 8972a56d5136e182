//! Body types. One enum instead of a boxed trait object so that the common
//! case (an upstream body passed through) costs no allocation.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::LoggedBody;
use crate::clock::unix_millis;
use crate::table::revocation::{Admitted, Refusal, Waiting};

/// What the gateway answers with: an upstream body streamed through, or a
/// small body of its own (error pages, redirects).
#[derive(Debug)]
pub enum ProxyBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
    /// Any of the above, counted and written to the access log at its end.
    Logged(Box<LoggedBody>),
}

/// An upstream's response body on its way to the client. Every poll checks
/// it against its route's revocations (one atomic load while there are
/// none): once the route no longer lets it in (the user lost access, the
/// session stopped; for a long or endless body, also a new target), the
/// poll fails and hyper resets the stream or closes the connection. While
/// it waits for its upstream it is among the waiters a revocation wakes.
pub struct UpstreamBody {
    inner: Incoming,
    /// Declared before `admitted`, so dropped while its route's state,
    /// which keys it, is still held.
    waiting: Waiting,
    admitted: Admitted,
    /// No length, or a long one: a new target ends it too.
    live: bool,
    /// The pooled upstream connection it came on, put back once the body
    /// has been read to its end (dropped with the body otherwise, which
    /// closes it).
    reuse: Option<Box<crate::pool::PoolReturn>>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    pub(crate) fn new(
        inner: Incoming,
        admitted: Admitted,
        live: bool,
        reuse: Option<Box<crate::pool::PoolReturn>>,
    ) -> Self {
        let mut body = UpstreamBody {
            inner,
            waiting: Waiting::default(),
            admitted,
            live,
            reuse,
        };
        body.put_back_if_ended();
        body
    }

    /// Once the upstream's body has ended, its connection serves others.
    fn put_back_if_ended(&mut self) {
        if self.inner.is_end_stream() {
            if let Some(r) = self.reuse.take() {
                r.put_back();
            }
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Err(refusal) = self.admitted.check(self.live) {
            return Poll::Ready(Some(Err(Revoked(refusal).into())));
        }
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if poll.is_pending()
            && self
                .waiting
                .register(&self.admitted.route.state, cx.waker())
        {
            if let Err(refusal) = self.admitted.check(self.live) {
                return Poll::Ready(Some(Err(Revoked(refusal).into())));
            }
        }
        match &poll {
            Poll::Ready(None) => {
                if let Some(r) = self.reuse.take() {
                    r.put_back();
                }
            }
            Poll::Ready(Some(Ok(_))) => self.put_back_if_ended(),
            _ => {}
        }
        poll.map_err(BodyError::from)
    }
}

/// The error a revoked response ends with.
#[derive(Debug, thiserror::Error)]
#[error("the response was cut: {}", why(.0))]
pub struct Revoked(Refusal);

fn why(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Gone => "the route was removed".into(),
        Refusal::Paused => "the session was paused".into(),
        Refusal::Inactive => "the session stopped".into(),
        Refusal::Retargeted => "the route moved to another target".into(),
        Refusal::SignIn => "the route is no longer public".into(),
        Refusal::Forbidden(user) => format!("user {user} lost access"),
    }
}

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
            ProxyBody::Upstream(_) => None,
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
            ProxyBody::Upstream(b) => b.poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Logged(l) => Pin::new(&mut **l).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.inner.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Logged(l) => l.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.inner.size_hint(),
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
    /// `None`: no body (a request the gateway makes itself).
    inner: Option<Incoming>,
    progress: Option<Arc<AtomicU64>>,
    activity: Option<Arc<crate::table::RouteState>>,
}

impl UpstreamRequestBody {
    pub fn new(inner: Incoming, progress: Option<Arc<AtomicU64>>) -> Self {
        UpstreamRequestBody {
            inner: Some(inner),
            progress,
            activity: None,
        }
    }

    /// No body: for a request the gateway makes itself (the CHP mode's
    /// error pages).
    pub fn empty() -> Self {
        UpstreamRequestBody {
            inner: None,
            progress: None,
            activity: None,
        }
    }

    /// Counts each chunk read as activity of `route` (CHP's rule: a request
    /// body moving is activity, whatever the answer).
    pub fn with_activity(mut self, route: Arc<crate::table::RouteState>) -> Self {
        self.activity = Some(route);
        self
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
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let poll = Pin::new(inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(_))), Some(p)) = (&poll, &this.progress) {
            p.store(unix_millis(), Ordering::Relaxed);
        }
        if let (Poll::Ready(Some(Ok(_))), Some(a)) = (&poll, &this.activity) {
            a.touch();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}
