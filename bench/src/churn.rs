//! The `churn` scenario: sessiongate serving wrk's load over a stable set of
//! sessions while the control-plane REST API changes other sessions, and the
//! loaded ones' upstreams, at a fixed rate; the same load without the
//! changes, interleaved, for the ratio.
//!
//! The sessions wrk loads (`load-<i>`, public, `<name>.localhost`) are made
//! through the API before the rounds. The [`Driver`] then cycles through
//! four updates: a PATCH moving a loaded session's upstream to the origin's
//! other port (the same server, so every request must still succeed), a
//! POST creating a session `churn-<n>`, another PATCH, and a DELETE of the
//! oldest session it created. Every call's latency is kept; any answer but
//! 2xx, or none within the timeout, is a failed call and flags the run.
//!
//! Only sessiongate is measured: nginx and haproxy have no API that changes
//! routes one at a time while serving (a reload replaces their workers), and
//! chp's routes scenario already shows how its API-driven table holds up.
//!
//! With `--bulk N` every update is instead one `PATCH /api/v1/sessions`
//! (the batched route API) moving N loaded sessions' upstreams at once, in
//! one transaction and one table version, and `--rate` counts changes
//! (sessions moved) per second: the data-plane issue's route churn of at
//! least 5,000 changes/s at 100k routes while wrk loads the gateway.
//!
//! With `--gateways N` the scenario is another one, in
//! [`crate::propagation`]: the same cycle of updates through a
//! `sessiongate control-plane` that N `sessiongate gateway` processes
//! follow, and how long each change takes to reach each gateway.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hyper::Method;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::api::{Api, ApiHandle, Call, Reply};
use crate::report::{self, Summary};
use crate::results::{self, Row};
use crate::side_by_side::{Bench, Check, CommonArgs, Judged, Run, Scenario, Traffic};
use crate::targets::{self, Routes, TargetKind, ADMIN_TOKEN};

/// What the issue asks: no errors, and at least this share of the
/// throughput without churn.
const TARGET_RATIO: f64 = 0.95;

/// The data-plane issue's churn target: at least this many changes/s at
/// [`ISSUE_ROUTES`] routes under wrk load, the loaded throughput at least
/// [`ISSUE_RATIO`] of the unloaded, no errors.
const ISSUE_RATE: f64 = 5_000.0;
const ISSUE_ROUTES: usize = 100_000;
const ISSUE_RATIO: f64 = 0.9;

/// The owner of every session the scenario makes.
pub const OWNER: &str = "bench";

/// How often the driver looks for its stop between ticks.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Failed calls quoted in the report, at most.
const QUOTED_ERRORS: usize = 3;

#[derive(Args, Clone, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Sessions under load, made through the API before the rounds
    /// [default: 10000; 100 with --smoke; with --gateways: 100000; 200 with
    /// --smoke].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub routes: Option<u64>,
    /// Control-plane updates per second during the churn runs [default:
    /// 1000; 200 with --smoke].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rate: Option<u64>,
    /// API calls in flight at most; a tick that finds them all busy is
    /// skipped and counted.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub api_concurrency: u64,
    /// Instead of wrk's load through one `sessiongate serve`: one
    /// `sessiongate control-plane` and this many `sessiongate gateway`
    /// processes following it, and how long each change takes from the
    /// API's answer to being applied on each gateway (p50, p99). 2 is the
    /// issue's figure. wrk is not needed unless --load is given.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub gateways: Option<u64>,
    /// With --gateways: probe one change in this many (chosen at random,
    /// the same sequence every run) on every gateway [default: 10; 2 with
    /// --smoke].
    #[arg(long, requires = "gateways", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub probe_every: Option<u64>,
    /// With --gateways: wrk load on the first gateway during the measured
    /// runs (a random `Host` among the loaded sessions per request,
    /// --connections connections). Off by default: the propagation figures
    /// need none.
    #[arg(long, requires = "gateways")]
    pub load: bool,
    /// With --gateways: the control plane's store, and the engines compared
    /// side by side in one report: `sqlite` (one control plane), `postgres`
    /// (a throwaway PostgreSQL cluster started here, --replicas control-plane
    /// replicas on its one database, gateway i following replica i, every
    /// API change made through replica 1), or `both` (SQLite, then
    /// PostgreSQL). Without it, the one-control-plane SQLite run of issue
    /// 17. With it, --routes defaults to 10000 (200 with --smoke).
    #[arg(long, requires = "gateways", value_enum)]
    pub database: Option<crate::propagation::Databases>,
    /// With --database postgres or both: control-plane replicas on the
    /// PostgreSQL database [default: 2].
    #[arg(long, requires = "database", value_parser = clap::value_parser!(u64).range(1..=8))]
    pub replicas: Option<u64>,
    /// Batched route changes: every update is one `PATCH /api/v1/sessions`
    /// moving this many loaded sessions' upstreams (at most --routes), and
    /// --rate counts changes per second, made in --rate/N calls per second.
    /// With it --routes defaults to 100000 and --rate to 5000 (100 and 200
    /// with --smoke).
    #[arg(long, conflicts_with = "gateways", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub bulk: Option<u64>,
}

impl ChurnArgs {
    pub fn with(common: CommonArgs) -> Self {
        Self {
            common,
            routes: None,
            rate: None,
            api_concurrency: 32,
            gateways: None,
            probe_every: None,
            load: false,
            database: None,
            replicas: None,
            bulk: None,
        }
    }
}

pub const SCENARIO: Scenario = Scenario {
    name: "churn",
    unit: "req/s",
    title: "Route churn under load",
    text: "\
sessiongate only: wrk picks a random `Host` per request among the loaded
sessions (`load-<i>.localhost`, public, made through the control-plane API
before the rounds). In the `churn` case the harness makes route updates
through the REST API at the rate given while wrk runs: PATCH of a loaded
session's upstream to the origin's other port (an equivalent address: the
same in-process server), POST of a new session `churn-<n>`, PATCH again, and
DELETE of the oldest `churn-` session, in turn. The `no churn` case is the
same load without updates; the two alternate within every round. Updates/s
is successful calls over the churn run's duration; API latency is from
sending a call to the end of its answer, pooled over rounds. A failed call
(any status but 2xx, or no answer in 10 s) flags the run like a wrk error.
nginx, haproxy and chp are not run: nginx and haproxy change routes by
reloading their configuration (new workers), and chp's API-driven table is
measured by the `routes` scenario.",
};

/// `churn --bulk N`: the same load, the updates batched.
pub const SCENARIO_BULK: Scenario = Scenario {
    name: "churn-bulk",
    unit: "req/s",
    title: "Batched route churn under load",
    text: "\
sessiongate only: wrk picks a random `Host` per request among the loaded
sessions (`load-<i>.localhost`, public, made through the control-plane API
before the rounds). In the `churn` case the harness moves loaded sessions'
upstreams between the origin's two ports (the same in-process server, so
every request must still succeed) through the batched route API while wrk
runs: each call is one `PATCH /api/v1/sessions` of N sessions in turn (one
transaction, one table version), at the rate of changes given (rate / N
calls per second). The `no churn` case is the same load without updates;
the two alternate within every round. Changes/s is the sessions moved by
successful calls answered while wrk ran, over the time the calls' ticks
stand for (one period, N / rate, each); API latency is per call,
from sending it to the end of its answer, pooled over rounds. A failed call
(any status but 2xx, or no answer in 10 s) flags the run like a wrk error.",
};

/// The control-plane calls of one churn run.
#[derive(Debug, Clone, Default)]
pub struct ApiStats {
    pub requested_per_sec: f64,
    /// Calls that answered 2xx.
    pub ok: u64,
    /// Route changes made by the calls answered before the stop: one per
    /// call, N per batched call.
    pub changes: u64,
    /// When each successful call was answered, and the changes it made.
    pub answered: Vec<(Instant, u64)>,
    /// Changes per call: more than 1 for batched calls.
    pub batch: u64,
    pub failed: u64,
    /// Ticks that found every permitted call still in flight.
    pub skipped: u64,
    /// From the first tick to the stop.
    pub elapsed: Duration,
    /// Every finished call's latency, in µs.
    pub latencies_us: Vec<f64>,
    pub first_errors: Vec<String>,
}

impl ApiStats {
    pub fn achieved_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Route changes per second: [`Self::achieved_per_sec`] times the
    /// changes per call.
    pub fn changes_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.changes as f64 / secs
        } else {
            0.0
        }
    }

    pub fn describe(&self) -> String {
        if self.batch > 1 {
            return format!(
                "{:.0} changes/s of {:.0} in {:.1} calls/s, p50 {}, p99 {}, {} failed, {} skipped",
                self.changes_per_sec(),
                self.requested_per_sec,
                self.achieved_per_sec(),
                report::fmt_latency(percentile(&self.latencies_us, 0.50)),
                report::fmt_latency(percentile(&self.latencies_us, 0.99)),
                self.failed,
                self.skipped
            );
        }
        format!(
            "{:.0}/s of {:.0}, p50 {}, p99 {}, {} failed, {} skipped",
            self.achieved_per_sec(),
            self.requested_per_sec,
            report::fmt_latency(percentile(&self.latencies_us, 0.50)),
            report::fmt_latency(percentile(&self.latencies_us, 0.99)),
            self.failed,
            self.skipped
        )
    }
}

/// The `p` quantile (nearest rank) of `values`; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What the updates remember between runs.
pub struct ChurnState {
    /// The next update in the cycle.
    step: u64,
    /// The next loaded session to move, and each one's current port.
    next_loaded: usize,
    loaded_ports: Vec<u16>,
    /// `churn-<n>` sessions created and not yet deleted, oldest first.
    created: VecDeque<String>,
    next_created: u64,
    /// Sessions created that the DELETE step leaves alone (it creates
    /// another instead while fewer are there), so that a created session
    /// lives a while before it goes.
    keep_created: usize,
}

impl ChurnState {
    /// `loaded` sessions `load-<i>`, all at `port`; DELETE takes the oldest
    /// created session once more than `keep_created` are there.
    pub fn new(loaded: usize, port: u16, keep_created: usize) -> Self {
        Self {
            step: 0,
            next_loaded: 0,
            loaded_ports: vec![port; loaded],
            created: VecDeque::new(),
            next_created: 0,
            keep_created,
        }
    }
}

/// One update of the cycle and what it should do to the route table.
#[derive(Debug, Clone)]
pub struct Change {
    pub call: Call,
    /// The session a POST creates, remembered once it answered.
    pub created: Option<String>,
    /// The session the call changes.
    pub session: String,
    /// The upstream port the session has after the change; `None` when the
    /// change removes it.
    pub port: Option<u16>,
}

/// What an [`Observer`] wants to hear of one update's answer: the reply,
/// or `None` when the call failed.
pub type OnAnswer = Box<dyn FnOnce(Option<&Reply>) + Send>;

/// Hears of every update a [`Driver`] makes, on the API client's runtime:
/// it must not block.
pub trait Observer: Send + Sync {
    /// `change` is about to be sent; what this returns is called as soon
    /// as its answer is complete.
    fn sending(&self, change: &Change) -> Option<OnAnswer>;
}

/// Makes control-plane updates at a fixed rate while started.
pub struct Driver {
    api: Api,
    rate: u64,
    concurrency: usize,
    ports: (u16, u16),
    state: Arc<Mutex<ChurnState>>,
    observer: Option<Arc<dyn Observer>>,
    /// Sessions per batched `PATCH /api/v1/sessions`; `None`: the cycle of
    /// single updates.
    bulk: Option<usize>,
}

/// The updates in progress; [`Churning::stop`] ends them.
pub struct Churning<'a> {
    driver: &'a Driver,
    stop: Arc<AtomicBool>,
    task: JoinHandle<ApiStats>,
}

impl Churning<'_> {
    /// Stops the ticks, waits for the calls in flight and returns the stats.
    pub fn stop(self) -> Result<ApiStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.driver
            .api
            .runtime()
            .block_on(self.task)
            .context("the churn driver panicked")
    }
}

impl Driver {
    /// Updates through `api` at `rate` per second, at most `concurrency` in
    /// flight, moving loaded sessions between the upstream ports `ports`
    /// and creating sessions at the first; `observer` hears of each answer.
    pub fn new(
        api: Api,
        rate: u64,
        concurrency: usize,
        ports: (u16, u16),
        state: ChurnState,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        Self {
            api,
            rate,
            concurrency,
            ports,
            state: Arc::new(Mutex::new(state)),
            observer,
            bulk: None,
        }
    }

    /// Each update one `PATCH /api/v1/sessions` of `n` loaded sessions
    /// instead, and the rate in changes per second.
    pub fn with_bulk(mut self, n: usize) -> Self {
        self.bulk = Some(n.max(1));
        self
    }

    /// Starts making updates in the background.
    pub fn start(&self) -> Result<Churning<'_>> {
        let stop = Arc::new(AtomicBool::new(false));
        let pace = Pace {
            rate: self.rate,
            concurrency: self.concurrency,
            bulk: self.bulk,
        };
        let task = self.api.runtime().spawn(drive(
            self.api.handle(),
            Arc::clone(&self.state),
            pace,
            self.ports,
            self.observer.clone(),
            Arc::clone(&stop),
        ));
        Ok(Churning {
            driver: self,
            stop,
            task,
        })
    }
}

/// One update, chosen by the cycle.
#[cfg(test)]
fn next_call(state: &Mutex<ChurnState>, ports: (u16, u16)) -> (Call, Option<String>) {
    let change = next_change(state, ports);
    (change.call, change.created)
}

/// One update, chosen by the cycle, with what it changes.
fn next_change(state: &Mutex<ChurnState>, ports: (u16, u16)) -> Change {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let step = s.step;
    s.step += 1;
    match step % 4 {
        1 => create_change(&mut s, ports.0),
        3 if s.created.len() > s.keep_created => match s.created.pop_front() {
            Some(name) => Change {
                call: Call::new(Method::DELETE, format!("/api/v1/sessions/{name}"), None),
                created: None,
                session: name,
                port: None,
            },
            None => create_change(&mut s, ports.0),
        },
        3 => create_change(&mut s, ports.0),
        _ => {
            let i = s.next_loaded;
            s.next_loaded = (i + 1) % s.loaded_ports.len().max(1);
            let port = match s.loaded_ports.get_mut(i) {
                Some(p) => {
                    *p = if *p == ports.0 { ports.1 } else { ports.0 };
                    *p
                }
                None => ports.0,
            };
            let session = loaded_name(i);
            Change {
                call: Call::new(
                    Method::PATCH,
                    format!("/api/v1/sessions/{session}"),
                    Some(format!("{{\"remote_port\": {port}}}")),
                ),
                created: None,
                session,
                port: Some(port),
            }
        }
    }
}

/// One batched update: the next `n` loaded sessions in turn, each moved to
/// the other port, in one `PATCH /api/v1/sessions`.
fn bulk_change(state: &Mutex<ChurnState>, ports: (u16, u16), n: usize) -> Change {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.step += 1;
    let loaded = s.loaded_ports.len().max(1);
    let first = loaded_name(s.next_loaded);
    let mut items = Vec::with_capacity(n.min(loaded));
    for _ in 0..n.min(loaded) {
        let i = s.next_loaded;
        s.next_loaded = (i + 1) % loaded;
        let port = match s.loaded_ports.get_mut(i) {
            Some(p) => {
                *p = if *p == ports.0 { ports.1 } else { ports.0 };
                *p
            }
            None => ports.0,
        };
        items.push(format!(
            "{{\"name\": \"{}\", \"remote_port\": {port}}}",
            loaded_name(i)
        ));
    }
    Change {
        call: Call::new(
            Method::PATCH,
            "/api/v1/sessions",
            Some(format!("{{\"sessions\": [{}]}}", items.join(", "))),
        ),
        created: None,
        session: first,
        port: None,
    }
}

fn create_change(s: &mut ChurnState, port: u16) -> Change {
    let name = format!("churn-{}", s.next_created);
    s.next_created += 1;
    Change {
        call: Call::new(
            Method::POST,
            "/api/v1/sessions",
            Some(session_body(&name, port)),
        ),
        created: Some(name.clone()),
        session: name,
        port: Some(port),
    }
}

pub fn loaded_name(i: usize) -> String {
    format!("load-{i}")
}

/// A public tunnel session to `127.0.0.1:port`.
pub fn session_body(name: &str, port: u16) -> String {
    format!(
        "{{\"name\": \"{name}\", \"owner\": \"{OWNER}\", \"remote_host\": \"127.0.0.1\", \
         \"remote_port\": {port}, \"public\": true}}"
    )
}

/// How fast a [`Driver`] goes: `rate` changes per second, at most
/// `concurrency` calls in flight, `bulk` changes per batched call.
#[derive(Clone, Copy)]
struct Pace {
    rate: u64,
    concurrency: usize,
    bulk: Option<usize>,
}

/// The ticker: one update per tick, at most `concurrency` in flight.
async fn drive(
    api: ApiHandle,
    state: Arc<Mutex<ChurnState>>,
    pace: Pace,
    ports: (u16, u16),
    observer: Option<Arc<dyn Observer>>,
    stop: Arc<AtomicBool>,
) -> ApiStats {
    let Pace {
        rate,
        concurrency,
        bulk,
    } = pace;
    // `rate` counts changes: a batched call makes `bulk` of them.
    let per_call = bulk.unwrap_or(1);
    let stats = Arc::new(Mutex::new(ApiStats {
        requested_per_sec: rate as f64,
        batch: per_call as u64,
        ..ApiStats::default()
    }));
    let permits = Arc::new(Semaphore::new(concurrency));
    let period = Duration::from_secs_f64(per_call as f64 / rate as f64);
    // The first tick half a period in: a run of D seconds then makes about
    // D / period calls, not one more (which at one batched call a second
    // would be a fifth more changes than asked).
    let started = Instant::now();
    let mut ticker = tokio::time::interval_at((started + period / 2).into(), period);
    // Missed ticks fire at once, so the average rate holds.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut ticks = 0u32;
    loop {
        // The next tick, looking at `stop` meanwhile: a batched call's
        // period can be seconds, and nothing is sent once it is set.
        let ticked = loop {
            if stop.load(Ordering::Relaxed) {
                break false;
            }
            // (`tick` is cancel-safe.)
            if tokio::time::timeout(STOP_POLL, ticker.tick()).await.is_ok() {
                break !stop.load(Ordering::Relaxed);
            }
        };
        if !ticked {
            break;
        }
        ticks += 1;
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            lock(&stats).skipped += 1;
            continue;
        };
        let change = match bulk {
            Some(n) => bulk_change(&state, ports, n),
            None => next_change(&state, ports),
        };
        let on_answer = observer.as_ref().and_then(|o| o.sending(&change));
        let (api, stats, state) = (api.clone(), Arc::clone(&stats), Arc::clone(&state));
        tokio::spawn(async move {
            let result = api.send_ok(&change.call).await;
            if let Some(heard) = on_answer {
                heard(result.as_ref().ok());
            }
            let mut st = lock(&stats);
            match result {
                Ok(reply) => {
                    st.ok += 1;
                    st.answered.push((reply.answered, per_call as u64));
                    st.latencies_us.push(reply.latency.as_secs_f64() * 1e6);
                    if let Some(name) = change.created {
                        lock(&state).created.push_back(name);
                    }
                }
                Err(err) => {
                    st.failed += 1;
                    if st.first_errors.len() < QUOTED_ERRORS {
                        st.first_errors.push(format!("{err:#}"));
                    }
                }
            }
            drop(permit);
        });
    }
    let stopped = Instant::now();
    // Wait for the calls still in flight. They count as calls (a failure
    // among them flags the run), but changes count only when answered
    // before the stop: those answered after it were not taken under the
    // load, and would make a control plane that falls behind look as if
    // it kept up.
    let _ = permits.acquire_many(concurrency as u32).await;
    let mut out = lock(&stats).clone();
    out.elapsed = stopped - started;
    if per_call > 1 && ticks > 0 {
        // Batched calls are seconds apart: the time their ticks stand for
        // (a period each), not the run's, which is up to a period longer
        // or shorter than the calls made in it.
        out.elapsed = period * ticks;
    }
    out.changes = out
        .answered
        .iter()
        .filter(|(at, _)| *at <= stopped)
        .map(|(_, n)| n)
        .sum();
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the scenario. Returns the problems that must fail the run.
pub fn run(args: ChurnArgs) -> Result<Vec<String>> {
    if args.gateways.is_some() {
        return crate::propagation::run(args);
    }
    let bench = Bench::setup(
        &args.common,
        &[TargetKind::Sessiongate],
        &[TargetKind::Sessiongate],
    )?;
    if !bench.plan.wants(TargetKind::Sessiongate) {
        bail!("--targets: churn measures sessiongate only");
    }
    let smoke = bench.plan.smoke;
    let bulk = args
        .bulk
        .map(usize::try_from)
        .transpose()
        .context("--bulk")?;
    let (routes, rate) = match (bulk, smoke) {
        (None, true) => (100, 200),
        (None, false) => (10_000, 1000),
        (Some(_), true) => (100, 200),
        (Some(_), false) => (ISSUE_ROUTES as u64, ISSUE_RATE as u64),
    };
    let routes = args.routes.unwrap_or(routes);
    let rate = args.rate.unwrap_or(rate);
    let routes = usize::try_from(routes).context("--routes")?;
    let scenario = if bulk.is_some() {
        &SCENARIO_BULK
    } else {
        &SCENARIO
    };
    if let Some(n) = bulk {
        if n > routes {
            bail!("--bulk {n} is more than --routes {routes}: a batch lists each session once");
        }
    }

    let mut running = vec![bench.start(TargetKind::Sessiongate, &Routes::one(), "churn")?];
    let api_addr: SocketAddr = running[0]
        .target
        .api_addr
        .context("sessiongate's control-plane address")?;
    let api = Api::new(api_addr, &format!("Bearer {ADMIN_TOKEN}"))?;
    api.call_ok(Call::new(
        Method::POST,
        "/api/v1/users",
        Some(format!("{{\"name\": \"{OWNER}\"}}")),
    ))?;
    let port = bench.origin.addr.port();
    let calls: Vec<Call> = (0..routes)
        .map(|i| {
            Call::new(
                Method::POST,
                "/api/v1/sessions",
                Some(session_body(&loaded_name(i), port)),
            )
        })
        .collect();
    let took = api
        .all_ok(calls, args.api_concurrency as usize)
        .context("creating the loaded sessions")?;
    let setup_line = format!(
        "set-up: {routes} sessions created through the API in {:.1} s ({:.0}/s, {} in flight)",
        took.as_secs_f64(),
        routes as f64 / took.as_secs_f64().max(1e-9),
        args.api_concurrency
    );
    eprintln!("{setup_line}");
    let loaded = Routes {
        hosts: (0..routes)
            .map(|i| format!("{}.localhost", loaded_name(i)))
            .collect(),
        lookup: true,
    };
    let addr = running[0].target.addr;
    targets::wait_until_ready(
        "sessiongate sessions",
        addr,
        running[0].target.proc.as_mut(),
        |addr| targets::routes_ready(addr, &loaded),
    )?;

    let load = bench.random_host_load("churn-hosts", &loaded)?;
    let mut driver = Driver::new(
        api,
        rate,
        args.api_concurrency as usize,
        (port, bench.origin.alt_addr.port()),
        ChurnState::new(routes, port, 0),
        None,
    );
    if let Some(n) = bulk {
        driver = driver.with_bulk(n);
    }
    let driver = Arc::new(driver);
    let runs = vec![
        Run {
            case: "no churn".into(),
            target: 0,
            load: Traffic::Http(load.clone()),
            churn: None,
        },
        Run {
            case: "churn".into(),
            target: 0,
            load: Traffic::Http(load),
            churn: Some(Arc::clone(&driver)),
        },
    ];
    let samples = bench.rounds(&mut running, &runs)?;

    let api_samples: Vec<&ApiStats> = samples.iter().filter_map(|s| s.api.as_ref()).collect();
    let pooled: Vec<f64> = api_samples
        .iter()
        .flat_map(|a| a.latencies_us.iter().copied())
        .collect();
    // Changes per second: calls per second, but for batched calls.
    let achieved = report::median(
        &api_samples
            .iter()
            .map(|a| a.changes_per_sec())
            .collect::<Vec<_>>(),
    );
    let failed: u64 = api_samples.iter().map(|a| a.failed).sum();
    let skipped: u64 = api_samples.iter().map(|a| a.skipped).sum();
    let mut notes = vec![setup_line];
    notes.push(match bulk {
        Some(n) => format!(
            "batched route changes during the churn runs: {achieved:.0} changes/s achieved \
             (median over rounds) of {rate}/s asked, in PATCH /api/v1/sessions calls of {n} \
             sessions ({:.1} calls/s asked), latency per call p50 {}, p99 {} ({} calls pooled), \
             {failed} failed, {skipped} ticks skipped with {} calls already in flight",
            rate as f64 / n as f64,
            report::fmt_latency(percentile(&pooled, 0.50)),
            report::fmt_latency(percentile(&pooled, 0.99)),
            pooled.len(),
            args.api_concurrency
        ),
        None => format!(
            "control-plane updates during the churn runs: {achieved:.0}/s achieved (median over \
             rounds) of {rate}/s asked, API latency p50 {}, p99 {} ({} calls pooled), {failed} \
             failed, {skipped} ticks skipped with {} calls already in flight",
            report::fmt_latency(percentile(&pooled, 0.50)),
            report::fmt_latency(percentile(&pooled, 0.99)),
            pooled.len(),
            args.api_concurrency
        ),
    });
    for a in &api_samples {
        for e in &a.first_errors {
            notes.push(format!("failed API call: {e}"));
        }
    }
    notes.push("nginx, haproxy and chp are not run in this scenario (see the text above)".into());
    let rate_f = rate as f64;
    let checks = |summaries: &[Summary]| -> Vec<String> {
        let (quiet, churn, ratio, errors) = churn_figures(summaries);
        [
            Check {
                what: "churn: 0 errors".into(),
                met: Some(errors == 0),
                detail: format!("{errors} (wrk errors and failed API calls, both cases)"),
            },
            Check {
                what: format!("churn: req/s >= {TARGET_RATIO}x without churn"),
                met: ratio.map(|r| r >= TARGET_RATIO),
                detail: format!(
                    "{} ({} vs {} req/s)",
                    report::fmt_opt(ratio, |r| format!("{r:.3}x")),
                    report::fmt_opt(churn.map(|s| s.rps), |r| format!("{r:.0}")),
                    report::fmt_opt(quiet.map(|s| s.rps), |r| format!("{r:.0}"))
                ),
            },
            Check {
                what: format!("churn: {rate} updates/s sustained"),
                met: Some(achieved >= rate_f * TARGET_RATIO),
                detail: format!("{achieved:.0}/s achieved"),
            },
            issue_check(summaries, achieved, routes),
        ]
        .into_iter()
        .chain(
            bulk.map(|n| bulk_checks(summaries, achieved, routes, n))
                .into_iter()
                .flatten(),
        )
        .map(|c| c.line())
        .collect()
    };
    let row = |summaries: &[Summary]| {
        let (quiet, _, ratio, errors) = churn_figures(summaries);
        let mut row = Row::new(scenario.name, "");
        row.sessiongate = format!(
            "{} changes/s ({rate}/s asked) at {} routes; req/s under churn {} of without; \
             {errors} errors",
            results::count(achieved),
            results::count(routes as f64),
            results::times(ratio),
        );
        row.peer = format!(
            "without churn: {} req/s",
            report::fmt_opt(quiet.map(|s| s.rps), results::count)
        );
        row.ratio = results::times(ratio);
        row.met = issue_check(summaries, achieved, routes).met;
        vec![row]
    };
    let judge = |s: &[Summary]| Judged {
        lines: checks(s),
        rows: row(s),
    };
    let problems = bench.finish(scenario, &mut running, &runs, &samples, judge, &notes)?;
    drop(runs);
    drop(driver);
    drop(running);
    Ok(problems)
}

/// `--bulk`'s own lines for the data-plane issue's target, one figure
/// each: `achieved` changes/s at `routes` routes in calls of `n`, under
/// wrk's load; wrk's req/s with the changes over without; no errors.
fn bulk_checks(summaries: &[Summary], achieved: f64, routes: usize, n: usize) -> Vec<Check> {
    let (quiet, churn, ratio, errors) = churn_figures(summaries);
    vec![
        Check {
            what: format!(
                "churn --bulk: >= {ISSUE_RATE:.0} changes/s at >= {ISSUE_ROUTES} routes under wrk load"
            ),
            met: Some(achieved >= ISSUE_RATE && routes >= ISSUE_ROUTES),
            detail: format!("{achieved:.0} changes/s at {routes} routes, {n} per PATCH call"),
        },
        Check {
            what: format!("churn --bulk: req/s under the changes >= {ISSUE_RATIO}x without"),
            met: ratio.map(|r| r >= ISSUE_RATIO),
            detail: format!(
                "{} ({} vs {} req/s)",
                report::fmt_opt(ratio, |r| format!("{r:.3}x")),
                report::fmt_opt(churn.map(|s| s.rps), |r| format!("{r:.0}")),
                report::fmt_opt(quiet.map(|s| s.rps), |r| format!("{r:.0}"))
            ),
        },
        Check {
            what: "churn --bulk: 0 errors".into(),
            met: Some(errors == 0),
            detail: format!("{errors} (wrk errors and failed API calls, both cases)"),
        },
    ]
}

/// The runs without and with churn, req/s with over without, and the
/// errors of both (wrk's and failed API calls).
fn churn_figures(summaries: &[Summary]) -> (Option<&Summary>, Option<&Summary>, Option<f64>, u64) {
    let find = |case: &str| summaries.iter().find(|s| s.case == case);
    let (quiet, churn) = (find("no churn"), find("churn"));
    let ratio = report::ratio(churn.map(|s| s.rps), quiet.map(|s| s.rps));
    let errors = churn.map(|s| s.errors).unwrap_or(0) + quiet.map(|s| s.errors).unwrap_or(0);
    (quiet, churn, ratio, errors)
}

/// The data-plane issue's target, judged on this run: `achieved` changes/s
/// at `routes` routes.
fn issue_check(summaries: &[Summary], achieved: f64, routes: usize) -> Check {
    let (_, _, ratio, errors) = churn_figures(summaries);
    Check {
        what: format!(
            "churn: >= {ISSUE_RATE:.0} changes/s at >= {ISSUE_ROUTES} routes, req/s >= \
             {ISSUE_RATIO}x without churn, 0 errors"
        ),
        met: ratio.map(|r| {
            achieved >= ISSUE_RATE && routes >= ISSUE_ROUTES && r >= ISSUE_RATIO && errors == 0
        }),
        detail: format!(
            "{achieved:.0}/s at {routes} routes, {}, {errors} errors",
            results::times(ratio)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(loaded: usize) -> Mutex<ChurnState> {
        Mutex::new(ChurnState::new(loaded, 1, 0))
    }

    #[test]
    fn the_cycle_patches_creates_and_deletes() {
        let s = state(2);
        let (patch, _) = next_call(&s, (1, 2));
        assert_eq!(patch.method, Method::PATCH);
        assert_eq!(patch.path, "/api/v1/sessions/load-0");
        assert_eq!(patch.body.as_deref(), Some("{\"remote_port\": 2}"));
        let (create, name) = next_call(&s, (1, 2));
        assert_eq!(create.method, Method::POST);
        assert_eq!(name.as_deref(), Some("churn-0"));
        let (patch, _) = next_call(&s, (1, 2));
        assert_eq!(patch.path, "/api/v1/sessions/load-1");
        // Nothing created has been confirmed yet: create rather than delete.
        let (instead, name) = next_call(&s, (1, 2));
        assert_eq!(instead.method, Method::POST);
        assert_eq!(name.as_deref(), Some("churn-1"));
        lock(&s).created.push_back("churn-0".into());
        let (patch, _) = next_call(&s, (1, 2));
        // Back to load-0, which moves back to the first port.
        assert_eq!(patch.path, "/api/v1/sessions/load-0");
        assert_eq!(patch.body.as_deref(), Some("{\"remote_port\": 1}"));
        next_call(&s, (1, 2));
        next_call(&s, (1, 2));
        let (delete, _) = next_call(&s, (1, 2));
        assert_eq!(delete.method, Method::DELETE);
        assert_eq!(delete.path, "/api/v1/sessions/churn-0");
    }

    #[test]
    fn created_sessions_live_a_while_when_asked() {
        let s = Mutex::new(ChurnState::new(1, 1, 2));
        let changes: Vec<Change> = (0..8)
            .map(|_| {
                let c = next_change(&s, (1, 2));
                if let Some(name) = &c.created {
                    lock(&s).created.push_back(name.clone());
                }
                c
            })
            .collect();
        assert_eq!(changes[0].call.method, Method::PATCH);
        assert_eq!(changes[0].session, "load-0");
        assert_eq!(changes[0].port, Some(2));
        assert_eq!(changes[2].port, Some(1));
        // Only one created so far, two to keep: another create.
        assert_eq!(changes[3].call.method, Method::POST);
        assert_eq!(changes[3].session, "churn-1");
        assert_eq!(changes[3].port, Some(1));
        // Three now: the oldest goes.
        assert_eq!(changes[7].call.method, Method::DELETE);
        assert_eq!(changes[7].session, "churn-0");
        assert_eq!(changes[7].port, None);
    }

    #[test]
    fn a_batch_moves_the_next_sessions_in_turn() {
        let s = state(3);
        let first = bulk_change(&s, (1, 2), 2);
        assert_eq!(first.call.method, Method::PATCH);
        assert_eq!(first.call.path, "/api/v1/sessions");
        assert_eq!(first.session, "load-0");
        assert_eq!(
            first.call.body.as_deref(),
            Some(
                "{\"sessions\": [{\"name\": \"load-0\", \"remote_port\": 2}, \
                 {\"name\": \"load-1\", \"remote_port\": 2}]}"
            )
        );
        // On from load-2, round the loaded sessions, each back and forth.
        let next = bulk_change(&s, (1, 2), 2);
        assert_eq!(
            next.call.body.as_deref(),
            Some(
                "{\"sessions\": [{\"name\": \"load-2\", \"remote_port\": 2}, \
                 {\"name\": \"load-0\", \"remote_port\": 1}]}"
            )
        );
        // Never more items than sessions: each is listed once.
        let all = bulk_change(&s, (1, 2), 10);
        let body = all.call.body.unwrap_or_default();
        assert_eq!(body.matches("\"name\"").count(), 3, "{body}");
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&[5.0], 0.99), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn session_bodies_are_json() {
        let body = session_body("load-3", 8080);
        assert!(body.contains("\"name\": \"load-3\""));
        assert!(body.contains("\"remote_port\": 8080"));
        assert!(body.contains("\"public\": true"));
    }
}
