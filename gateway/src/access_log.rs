//! The access log: one line per request, written when its response is over.
//!
//! A line is written when the response body has been sent (or dropped,
//! when the client went away or a stream was revoked), like nginx's, so that
//! `bytes` and `duration` describe what the client really got. It is a
//! `tracing` event with target [`TARGET`] at INFO, so it follows the chosen
//! log format (text or JSON) and can be filtered like any other target
//! (`RUST_LOG=info,access=off`); the gateway's `access_log` switch turns it
//! off without a wrapper or an event per request.
//!
//! The query string is never logged: access links carry their one-time token
//! there, and apps put secrets in queries too.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http::{HeaderValue, Method, Uri};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BodyError, ProxyBody};

/// The `tracing` target of access-log events.
pub const TARGET: &str = "access";

/// What is known about a request when its response head is ready.
#[derive(Debug)]
pub struct AccessEntry {
    pub method: Method,
    /// The Host (or HTTP/2 authority) as the client sent it.
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub status: u16,
    /// The upstream the request went to, if it was proxied.
    pub upstream: Option<Arc<str>>,
    /// The user a private route let in.
    pub user: Option<Arc<str>>,
    pub request_id: HeaderValue,
    pub remote: SocketAddr,
    pub started: Instant,
}

impl AccessEntry {
    /// Writes the line.
    fn emit(&self, bytes: u64, complete: bool) {
        let host = match (&self.host, self.uri.authority()) {
            (Some(h), _) => h.to_str().unwrap_or("(not ASCII)"),
            (None, Some(a)) => a.as_str(),
            (None, None) => "-",
        };
        let duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            target: TARGET,
            method = %self.method,
            host,
            path = self.uri.path(),
            status = self.status,
            bytes,
            duration_ms = (duration_ms * 1e3).round() / 1e3,
            upstream = self.upstream.as_deref().unwrap_or("-"),
            user = self.user.as_deref().unwrap_or("-"),
            remote = %self.remote,
            request_id = self.request_id.to_str().unwrap_or("-"),
            complete,
            "request"
        );
    }
}

/// A response body that counts the bytes it passes on and writes the
/// access-log line at its end.
#[derive(Debug)]
pub struct LoggedBody {
    inner: ProxyBody,
    entry: AccessEntry,
    bytes: u64,
    /// The body ended normally (not dropped early or failed).
    complete: bool,
    logged: bool,
}

impl LoggedBody {
    pub fn new(inner: ProxyBody, entry: AccessEntry) -> Self {
        LoggedBody {
            inner,
            entry,
            bytes: 0,
            complete: false,
            logged: false,
        }
    }

    /// The wrapped body, without a log line (tests look at gateway pages).
    pub fn into_inner(mut self: Box<Self>) -> ProxyBody {
        self.logged = true;
        std::mem::replace(&mut self.inner, ProxyBody::empty())
    }

    fn finish(&mut self) {
        if !self.logged {
            self.logged = true;
            self.entry.emit(self.bytes, self.complete);
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // hyper never polls a body that is empty from the start.
        if self.inner.is_end_stream() {
            self.complete = true;
        }
        self.finish();
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.remaining() as u64;
                }
                if this.inner.is_end_stream() {
                    this.complete = true;
                    this.finish();
                }
            }
            Poll::Ready(None) => {
                this.complete = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
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
