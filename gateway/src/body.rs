//! Body types. One enum instead of a boxed trait object so that the common
//! case (an upstream body passed through) costs no allocation.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::table::unix_millis;

/// What the gateway answers with: an upstream body streamed through, or a
/// small body of its own (error pages, redirects).
#[derive(Debug)]
pub enum ProxyBody {
    Upstream(Incoming),
    Full(Option<Bytes>),
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
            ProxyBody::Upstream(_) => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
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
