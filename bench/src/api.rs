//! A small HTTP/1.1 JSON client for the proxies' configuration APIs:
//! sessiongate's control plane (sessions for the `churn` scenario) and
//! configurable-http-proxy's REST API (its routes).
//!
//! It runs on a runtime of its own with one worker, so that calls made in
//! the background (the `churn` scenario's updates) go on while the main
//! thread waits for wrk, and so that they do not take the origin's threads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;

/// How long one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The header in which sessiongate's control plane names the route-table
/// version a write produced.
const TABLE_VERSION: &str = "sessiongate-table-version";

/// One API request.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// The path and query, such as `/api/v1/sessions`.
    pub path: String,
    /// A JSON body.
    pub body: Option<String>,
}

impl Call {
    pub fn new(method: Method, path: impl Into<String>, body: Option<String>) -> Self {
        Self {
            method,
            path: path.into(),
            body,
        }
    }
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    /// From sending the request to the end of the response body.
    pub latency: Duration,
    /// When the end of the response body came.
    pub answered: Instant,
    /// sessiongate's `Sessiongate-Table-Version`: the route-table version
    /// a write produced.
    pub table_version: Option<u64>,
}

/// What a task needs to make calls: cheap to clone (the client shares its
/// connection pool).
#[derive(Clone)]
pub struct ApiHandle {
    client: Client<HttpConnector, Full<Bytes>>,
    base: Arc<str>,
    authorization: Arc<str>,
}

impl ApiHandle {
    /// Sends `call` and reads the whole answer; a transport error or a
    /// timeout is an error, any status is a [`Reply`].
    pub async fn send(&self, call: &Call) -> Result<Reply> {
        let uri = format!("{}{}", self.base, call.path);
        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(&uri)
            .header(header::AUTHORIZATION, &*self.authorization);
        if call.body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let body = Full::new(Bytes::from(call.body.clone().unwrap_or_default()));
        let request = builder
            .body(body)
            .with_context(|| format!("building {} {uri}", call.method))?;
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let table_version = response
                .headers()
                .get(TABLE_VERSION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, table_version, bytes))
        };
        let (status, table_version, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{} {uri}: no answer within {CALL_TIMEOUT:?}", call.method))?
            .with_context(|| format!("{} {uri}", call.method))?;
        let answered = Instant::now();
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            latency: answered - started,
            answered,
            table_version,
        })
    }

    /// As [`ApiHandle::send`], with any status but 2xx an error that quotes
    /// the answer.
    pub async fn send_ok(&self, call: &Call) -> Result<Reply> {
        let reply = self.send(call).await?;
        if !reply.status.is_success() {
            bail!(
                "{} {}{} answered {}: {}",
                call.method,
                self.base,
                call.path,
                reply.status,
                reply.body.trim()
            );
        }
        Ok(reply)
    }
}

/// A client for one API, with its own runtime.
pub struct Api {
    runtime: Runtime,
    handle: ApiHandle,
}

impl Api {
    /// A client for `http://addr` that sends `Authorization: <authorization>`
    /// with every call.
    pub fn new(addr: SocketAddr, authorization: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-api")
            .enable_all()
            .build()
            .context("building the API client's runtime")?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            runtime,
            handle: ApiHandle {
                client,
                base: format!("http://{addr}").into(),
                authorization: authorization.into(),
            },
        })
    }

    pub fn handle(&self) -> ApiHandle {
        self.handle.clone()
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// One call; any status but 2xx is an error.
    pub fn call_ok(&self, call: Call) -> Result<Reply> {
        self.runtime.block_on(self.handle.send_ok(&call))
    }

    /// All of `calls`, `concurrency` at a time; the first failure (any
    /// status but 2xx) stops the rest and is the error. Returns the calls'
    /// wall time.
    pub fn all_ok(&self, calls: Vec<Call>, concurrency: usize) -> Result<Duration> {
        let calls = Arc::new(calls);
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        self.runtime.block_on(async {
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..concurrency.max(1) {
                let (calls, next, handle) = (Arc::clone(&calls), Arc::clone(&next), self.handle());
                workers.spawn(async move {
                    loop {
                        crate::procs::check_interrupted()?;
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(call) = calls.get(i) else {
                            return anyhow::Ok(());
                        };
                        if let Err(err) = handle.send_ok(call).await {
                            // Stop the other workers too.
                            next.store(calls.len(), Ordering::Relaxed);
                            return Err(err);
                        }
                    }
                });
            }
            while let Some(joined) = workers.join_next().await {
                joined.context("an API worker panicked")??;
            }
            anyhow::Ok(())
        })?;
        Ok(started.elapsed())
    }
}
