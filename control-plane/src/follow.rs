//! `sessiongate gateway --control-plane URL`: a gateway that follows a
//! remote control plane over the route stream (`docs/gateway-protocol.md`).
//!
//! It serves what it holds, always: the table file at start, then each
//! message as it is applied. With the control plane away it keeps serving
//! and reconnects with backoff; back, it resumes from the version it holds.
//! What it sends up: the version it applied (acks), per-route activity
//! every second, and the access links browsers open at it (which only the
//! control plane can redeem: it holds the tokens and the lifecycle).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use gateway::access::{
    AccessConfig, Activation, ActivationError, ActivationFuture, ActivationRequest, Activator,
    KeyRing,
};
use gateway::metrics::GatewayMetrics;
use gateway::sync::activity::ActivityCollector;
use gateway::sync::file::{self, TABLE_FILE};
use gateway::sync::{wire, Follower, Message, Snapshot};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, BodyStream, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio_util::codec::FramedRead;
use tokio_util::io::StreamReader;

use crate::config::Config;
use crate::datadir;
use crate::metrics::Metrics;
use crate::serve::{bind_gateway_listeners, spawn_gateway, ProxyParts, ServeError};

/// The environment variable holding the gateway's token.
pub const GATEWAY_TOKEN_ENV: &str = "SESSIONGATE_GATEWAY_TOKEN";

/// Reconnection: the first wait, and the most it grows to. Short, because
/// a gateway must be back in step within a second of its control plane's
/// return; with equal jitter each wait is between half and all of the
/// current step, so gateways restarted together do not reconnect together.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// After a refused token: an operator has to act, and a gateway retrying
/// fast would only count towards its address's brute-force limit.
const REFUSED_WAIT: Duration = Duration::from_secs(10);

/// No frame (not even a heartbeat) for this long: the stream is dead.
const STREAM_SILENCE: Duration = Duration::from_secs(30);

/// How often activity goes up (only routes that moved), and the least time
/// between two writes of the table file.
const ACTIVITY_EVERY: Duration = Duration::from_secs(1);
const FILE_EVERY: Duration = Duration::from_millis(200);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Where the gateway reaches its control plane, and as whom. With several
/// control-plane URLs (replicas), `current` is the one whose stream it
/// follows: its acks and reports go there too, as that replica is the one
/// that knows the gateway is connected and waits for its acks.
#[derive(Clone)]
struct Upstream {
    client: HttpClient,
    bases: Arc<[String]>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    token: Arc<str>,
    instance: Arc<str>,
}

impl Upstream {
    fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Acquire);
        &self.bases[i % self.bases.len()]
    }

    /// Moves on to the next control-plane URL; true when that starts the
    /// list again (every one was tried since the last success).
    fn next_base(&self) -> bool {
        let i = self
            .current
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        i.is_multiple_of(self.bases.len())
    }

    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base()))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        b.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap_or_default()
    }

    /// POSTs `body` (JSON) to `path`; the status, or why there is none.
    async fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<(StatusCode, Bytes), String> {
        let json = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            self.client
                .request(self.request(Method::POST, path, Some(json))),
        )
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

/// Runs `sessiongate gateway` until `shutdown` resolves.
pub async fn run(
    config: Config,
    control_plane: &str,
    token: String,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let bases = control_plane_urls(control_plane).map_err(|message| {
        ServeError::Config(crate::config::ConfigError::Invalid {
            key: "gateway.control_plane_url".into(),
            message,
        })
    })?;
    let data_dir = config.gateway.data_dir.clone();
    datadir::create_private_dir(&data_dir).map_err(|source| ServeError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let table_path = data_dir.join(TABLE_FILE);
    let follower = Follower::new(KeyRing::throwaway());
    match file::load(&table_path) {
        Ok(Some(snapshot)) => match follower.restore(&snapshot) {
            Ok(a) => tracing::info!(
                version = a.version,
                routes = snapshot.routes.len(),
                path = %table_path.display(),
                "route table loaded from file"
            ),
            Err(e) => {
                tracing::warn!(path = %table_path.display(), error = %e, "table file not usable; waiting for the control plane")
            }
        },
        Ok(None) => {
            tracing::info!(path = %table_path.display(), "no table file yet; waiting for the control plane")
        }
        Err(e) => {
            tracing::warn!(error = %e, "table file not usable; waiting for the control plane")
        }
    }

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let instance = instance_name();
    let up = Upstream {
        client,
        bases: bases.clone().into(),
        current: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        token: token.into(),
        instance: instance.as_str().into(),
    };

    let listeners = bind_gateway_listeners(&config, follower.routes()).await?;
    let admin = tokio::net::TcpListener::bind(config.gateway.admin_listen)
        .await
        .map_err(|source| ServeError::Bind {
            key: "gateway.admin_listen",
            addr: config.gateway.admin_listen,
            source,
        })?;
    let admin_addr = admin.local_addr()?;
    let metrics = Arc::new(GatewayMetrics::new());
    let tls_metrics = Metrics::for_gateway();
    let (stop_tx, stop_rx) = watch::channel(false);
    let parts = ProxyParts {
        routes: follower.routes().clone(),
        access: AccessConfig {
            keys: follower.keys().clone(),
            activator: Some(Arc::new(RemoteActivator(up.clone()))),
            login_url: config.login_url().map(Arc::from),
            oidc: None,
        },
        portal: None,
        metrics: metrics.clone(),
        tls_metrics: tls_metrics.clone(),
        ready: Some(follower.ready_flag()),
    };
    let tasks = spawn_gateway(
        &config,
        listeners.listener,
        listeners.tls,
        listeners.upstream_tls,
        parts,
        stop_rx.clone(),
    )?;
    let connected = Arc::new(StreamState::default());
    let admin_task = tokio::spawn(serve_admin(
        admin,
        follower.clone(),
        metrics,
        tls_metrics,
        tasks.certificates.clone(),
        connected.clone(),
        stop_rx.clone(),
    ));
    tracing::info!("gateway admin listening on http://{admin_addr}");
    tracing::info!(control_plane = %bases.join(","), instance = %instance, "following the control plane");

    let (applied_tx, applied_rx) = watch::channel(follower.version());
    let follow_task = tokio::spawn(follow(
        up.clone(),
        follower.clone(),
        applied_tx,
        connected,
        stop_rx.clone(),
    ));
    let ack_task = tokio::spawn(send_acks(
        up.clone(),
        follower.clone(),
        applied_rx.clone(),
        stop_rx.clone(),
    ));
    let file_task = tokio::spawn(save_table(
        table_path,
        follower.clone(),
        applied_rx,
        stop_rx.clone(),
    ));
    let activity_task = tokio::spawn(send_activity(up, follower, stop_rx.clone()));

    shutdown.await;
    tracing::info!(
        grace_secs = config.gateway.shutdown_grace_secs,
        "shutting down: no new connections, draining in-flight requests"
    );
    let _ = stop_tx.send(true);
    tasks.finish().await;
    for t in [follow_task, ack_task, activity_task] {
        t.abort();
    }
    // The last table is written before the process ends.
    let _ = file_task.await;
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// The control-plane URLs in `list` (comma-separated: replicas, tried in
/// turn), each as `ctl --server` takes it.
pub fn control_plane_urls(list: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| crate::ctl::client::base_url(u).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    if urls.is_empty() {
        return Err("no control-plane URL".into());
    }
    Ok(urls)
}

/// What this gateway calls itself beside its token's name: its host name
/// (a pod's name in Kubernetes), so that replicas sharing a token are
/// listed apart.
fn instance_name() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(40)
        .collect();
    // Two gateways on one host (or none named): the process id tells them apart.
    format!(
        "{}{}{}",
        clean,
        if clean.is_empty() { "" } else { "-" },
        std::process::id()
    )
}

/// Follows the stream, reconnecting with backoff, until `stop`.
async fn follow(
    up: Upstream,
    follower: Follower,
    applied: watch::Sender<u64>,
    connected: Arc<StreamState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut step = BACKOFF_FIRST;
    // Warned once per outage, then every 30 s while it lasts.
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let outcome = tokio::select! {
            r = follow_once(&up, &follower, &applied, &connected) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        connected
            .connected
            .store(false, std::sync::atomic::Ordering::Release);
        let wait = match outcome {
            Followed::Refused(status, message) => {
                tracing::error!(status = status.as_u16(), %message, "the control plane refused this gateway's token ({GATEWAY_TOKEN_ENV}); retrying in 10 s");
                step = BACKOFF_FIRST;
                REFUSED_WAIT
            }
            Followed::Lost {
                after_frames,
                reason,
            } => {
                if after_frames {
                    step = BACKOFF_FIRST;
                    warned = None;
                }
                let from = up.base().to_string();
                if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(%reason, control_plane = %from, version = follower.version(), "route stream lost; serving the table held and reconnecting");
                    warned = Some(std::time::Instant::now());
                } else {
                    tracing::debug!(%reason, control_plane = %from, "reconnecting to the control plane");
                }
                // Another replica at once; the backoff once each was tried.
                // (After a stream that worked, straight to the next one
                // when there is another.)
                let round_done = up.next_base();
                if (!round_done && !after_frames) || (after_frames && up.bases.len() > 1) {
                    Duration::ZERO
                } else {
                    let w = jitter(step);
                    step = (step * 2).min(BACKOFF_MAX);
                    w
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Half of `step`, plus up to the other half at random.
fn jitter(step: Duration) -> Duration {
    let half = step / 2;
    let mut b = [0u8; 4];
    let r = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map(|()| u32::from_le_bytes(b))
        .unwrap_or(0);
    half + half.mul_f64(f64::from(r) / f64::from(u32::MAX))
}

enum Followed {
    /// 401 or 403: the token.
    Refused(StatusCode, String),
    /// Connection failed or ended; `after_frames` when it had worked.
    Lost { after_frames: bool, reason: String },
}

async fn follow_once(
    up: &Upstream,
    follower: &Follower,
    applied: &watch::Sender<u64>,
    connected: &StreamState,
) -> Followed {
    let lost = |after_frames, reason: String| Followed::Lost {
        after_frames,
        reason,
    };
    // After a message was refused, nothing held is trusted: a snapshot.
    let fresh = connected
        .want_snapshot
        .swap(false, std::sync::atomic::Ordering::AcqRel);
    let path = if fresh {
        format!("/api/v1/gateway/stream?instance={}", up.instance)
    } else {
        format!(
            "/api/v1/gateway/stream?version={}&epoch={}&watermark={}&instance={}",
            follower.version(),
            follower.epoch(),
            follower.watermark(),
            up.instance
        )
    };
    let resp = match tokio::time::timeout(
        Duration::from_secs(10),
        up.client.request(up.request(Method::GET, &path, None)),
    )
    .await
    {
        Err(_) => return lost(false, "no answer within 10 s".into()),
        Ok(Err(e)) => return lost(false, crate::ctl::client::client_error_reason(&e)),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Followed::Refused(status, String::from_utf8_lossy(&body).trim().to_string());
    }
    if !status.is_success() {
        return lost(false, format!("the control plane answered {status}"));
    }
    let bytes = BodyStream::new(resp.into_body()).filter_map(|f| async move {
        match f {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(std::io::Error::other(e))),
        }
    });
    let mut frames = FramedRead::new(StreamReader::new(Box::pin(bytes)), crate::gateways::codec());
    connected
        .connected
        .store(true, std::sync::atomic::Ordering::Release);
    let mut any = false;
    loop {
        let next = match tokio::time::timeout(STREAM_SILENCE, frames.next()).await {
            Err(_) => return lost(any, "no frame or heartbeat for 30 s".into()),
            Ok(None) => return lost(any, "the control plane ended the stream".into()),
            Ok(Some(Err(e))) => return lost(any, format!("stream: {e}")),
            Ok(Some(Ok(f))) => f,
        };
        any = true;
        let message = match wire::decode(&next) {
            Ok(m) => m,
            Err(e) => return lost(any, format!("a message was refused: {e}")),
        };
        if matches!(message, Message::Heartbeat { .. }) {
            continue;
        }
        let first = !follower.is_ready();
        match follower.apply(&message) {
            Ok(a) => {
                connected.count(&message);
                if first || matches!(message, Message::Snapshot(_)) {
                    tracing::info!(version = a.version, "route table received");
                }
                if let Message::Delta(d) = &message {
                    if d.epoch.is_some() {
                        tracing::info!(version = a.version, watermark = d.watermark, control_plane = %up.base(), "resumed on another control-plane replica from the change log, without a snapshot");
                    }
                }
                applied.send_replace(a.version);
            }
            // Out of order, or a change the table refuses: reconnect for a
            // snapshot (asking again for the same messages could loop).
            Err(e) => {
                connected
                    .want_snapshot
                    .store(true, std::sync::atomic::Ordering::Release);
                return lost(true, e.to_string());
            }
        }
    }
}

/// Acknowledges each applied version (the latest, when several come close
/// together).
async fn send_acks(
    up: Upstream,
    follower: Follower,
    mut applied: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = applied.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let version = *applied.borrow_and_update();
        let body = serde_json::json!({"version": version, "epoch": follower.epoch(), "instance": &*up.instance});
        if let Err(e) = up.post("/api/v1/gateway/ack", &body).await {
            tracing::debug!(error = %e, version, "ack not delivered");
        }
    }
}

/// Reports per-route activity every second, only what moved.
async fn send_activity(up: Upstream, follower: Follower, mut stop: watch::Receiver<bool>) {
    let mut collector = ActivityCollector::new();
    let mut tick = tokio::time::interval(ACTIVITY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let moved = collector.collect(&follower.routes().load());
        if moved.is_empty() {
            continue;
        }
        let routes: Vec<(&str, u64)> = moved.iter().map(|(id, ms)| (&**id, *ms)).collect();
        let body = serde_json::json!({"routes": routes, "instance": &*up.instance});
        match up.post("/api/v1/gateway/activity", &body).await {
            Ok((s, _)) if s.is_success() => {}
            // Lost with the control plane away: the next report after it
            // is back carries the latest times anyway, from a fresh start.
            Ok((s, _)) => {
                tracing::debug!(status = s.as_u16(), "activity report refused");
                collector = ActivityCollector::new();
            }
            Err(e) => {
                tracing::debug!(error = %e, "activity report not delivered");
                collector = ActivityCollector::new();
            }
        }
    }
}

/// Writes the table to its file after each change, at most every
/// [`FILE_EVERY`], and once more at shutdown. A large table under heavy
/// churn costs real time to encode and write (a 100k-route table is tens of
/// megabytes): the pause after a write is at least ten times what the
/// write took, so that the file never takes more than a tenth of a core
/// from the proxies.
async fn save_table(
    path: PathBuf,
    follower: Follower,
    mut applied: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    // (epoch, version): another replica's versions may repeat a number.
    let mut written = (0, 0);
    let mut pause = FILE_EVERY;
    loop {
        let stopping = tokio::select! {
            r = applied.changed() => r.is_err(),
            _ = stop.wait_for(|s| *s) => true,
        };
        if !stopping {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
        applied.borrow_and_update();
        if follower.is_ready() && (follower.epoch(), follower.version()) != written {
            let started = std::time::Instant::now();
            // The watermark first: the table read after it is at least at it.
            let watermark = follower.watermark();
            let snapshot = Arc::new(Snapshot {
                watermark,
                ..Snapshot::of(
                    follower.epoch(),
                    &follower.routes().load(),
                    Arc::clone(&follower.keys().load()),
                )
            });
            let version = (snapshot.epoch, snapshot.version);
            let p = path.clone();
            match tokio::task::spawn_blocking(move || file::save(&p, &snapshot)).await {
                Ok(Ok(())) => written = version,
                Ok(Err(e)) => tracing::warn!(error = %e, "table file not written"),
                Err(e) => tracing::warn!(error = %e, "table file not written"),
            }
            pause = FILE_EVERY.max(started.elapsed() * 10);
        }
        if stopping || *stop.borrow() {
            return;
        }
    }
}

/// `/healthz`, `/readyz` (503 until a table is loaded) and `/metrics`.
async fn serve_admin(
    listener: tokio::net::TcpListener,
    follower: Follower,
    metrics: Arc<GatewayMetrics>,
    tls_metrics: Metrics,
    certificates: Option<Arc<certs::SniResolver>>,
    connected: Arc<StreamState>,
    mut stop: watch::Receiver<bool>,
) {
    use axum::routing::get;
    let ready = follower.clone();
    let state = follower.clone();
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let f = ready.clone();
                async move {
                    if f.is_ready() {
                        (StatusCode::OK, "ready\n".to_string())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: no route table yet (waiting for the control plane)\n"
                                .to_string(),
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let f = state.clone();
                let m = metrics.clone();
                let t = tls_metrics.clone();
                let c = connected.clone();
                let certs = certificates.clone();
                async move {
                    if let Some(r) = &certs {
                        t.set_certificates(
                            r.certificates().into_iter().map(|c| (c.name, c.not_after)),
                        );
                    }
                    t.observe_on_demand(certs.as_deref());
                    let table = f.routes().load();
                    let mut text = t.render();
                    m.render(&mut text);
                    text.push_str(&format!(
                        "# HELP sessiongate_route_table_version Version of the route table the gateway holds.\n\
                         # TYPE sessiongate_route_table_version gauge\n\
                         sessiongate_route_table_version {}\n\
                         # HELP sessiongate_route_table_routes Routes in the gateway's table.\n\
                         # TYPE sessiongate_route_table_routes gauge\n\
                         sessiongate_route_table_routes {}\n\
                         # HELP sessiongate_gateway_stream_connected Whether the route stream to the control plane is open.\n\
                         # TYPE sessiongate_gateway_stream_connected gauge\n\
                         sessiongate_gateway_stream_connected {}\n",
                        table.version(),
                        table.routes().len(),
                        u8::from(c.connected.load(std::sync::atomic::Ordering::Acquire)),
                    ));
                    c.render(&mut text);
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        text,
                    )
                }
            }),
        );
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

/// The route stream as the admin listener reports it.
#[derive(Debug, Default)]
struct StreamState {
    /// Whether the stream is open.
    connected: std::sync::atomic::AtomicBool,
    /// Set when a message was refused: the next connection asks for a
    /// snapshot.
    want_snapshot: std::sync::atomic::AtomicBool,
    snapshots: std::sync::atomic::AtomicU64,
    deltas: std::sync::atomic::AtomicU64,
    /// Deltas that moved the gateway to another replica's epoch.
    moves: std::sync::atomic::AtomicU64,
}

impl StreamState {
    fn count(&self, message: &Message) {
        use std::sync::atomic::Ordering::Relaxed;
        match message {
            Message::Snapshot(_) => self.snapshots.fetch_add(1, Relaxed),
            Message::Delta(d) if d.epoch.is_some() => self.moves.fetch_add(1, Relaxed),
            Message::Delta(_) => self.deltas.fetch_add(1, Relaxed),
            Message::Heartbeat { .. } => 0,
        };
    }

    fn render(&self, text: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        text.push_str(
            "# HELP sessiongate_gateway_stream_messages_total Messages applied from the route stream: whole tables (snapshot), changes (delta), and deltas that moved this gateway to another control-plane replica without a snapshot (move).\n\
             # TYPE sessiongate_gateway_stream_messages_total counter\n",
        );
        for (kind, n) in [
            ("snapshot", &self.snapshots),
            ("delta", &self.deltas),
            ("move", &self.moves),
        ] {
            text.push_str(&format!(
                "sessiongate_gateway_stream_messages_total{{type=\"{kind}\"}} {}\n",
                n.load(Relaxed)
            ));
        }
    }
}

/// Access links opened at this gateway, redeemed by the control plane.
struct RemoteActivator(Upstream);

impl Activator for RemoteActivator {
    fn activate(&self, req: ActivationRequest) -> ActivationFuture {
        let up = self.0.clone();
        Box::pin(async move {
            let unavailable = |why: String| {
                tracing::warn!(reason = %why, "access link: the control plane could not be asked");
                ActivationError::Unavailable("the control plane cannot be reached".into())
            };
            let (status, body) = up
                .post("/api/v1/gateway/activate", &req)
                .await
                .map_err(unavailable)?;
            match status {
                StatusCode::OK => serde_json::from_slice::<Activation>(&body)
                    .map_err(|e| unavailable(e.to_string())),
                StatusCode::UNPROCESSABLE_ENTITY => {
                    Err(serde_json::from_slice::<ActivationError>(&body)
                        .unwrap_or_else(|e| unavailable(e.to_string())))
                }
                s => Err(unavailable(format!("the control plane answered {s}"))),
            }
        })
    }
}
