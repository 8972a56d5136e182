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
use crate::side_by_side::{Bench, Check, CommonArgs, Run, Scenario, Traffic};
use crate::targets::{self, Routes, TargetKind, ADMIN_TOKEN};

/// What the issue asks: no errors, and at least this share of the
/// throughput without churn.
const TARGET_RATIO: f64 = 0.95;

/// The owner of every session the scenario makes.
pub const OWNER: &str = "bench";

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

/// The control-plane calls of one churn run.
#[derive(Debug, Clone, Default)]
pub struct ApiStats {
    pub requested_per_sec: f64,
    /// Calls that answered 2xx.
    pub ok: u64,
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

    pub fn describe(&self) -> String {
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
        }
    }

    /// Starts making updates in the background.
    pub fn start(&self) -> Result<Churning<'_>> {
        let stop = Arc::new(AtomicBool::new(false));
        let task = self.api.runtime().spawn(drive(
            self.api.handle(),
            Arc::clone(&self.state),
            self.rate,
            self.concurrency,
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

/// The ticker: one update per tick, at most `concurrency` in flight.
async fn drive(
    api: ApiHandle,
    state: Arc<Mutex<ChurnState>>,
    rate: u64,
    concurrency: usize,
    ports: (u16, u16),
    observer: Option<Arc<dyn Observer>>,
    stop: Arc<AtomicBool>,
) -> ApiStats {
    let stats = Arc::new(Mutex::new(ApiStats {
        requested_per_sec: rate as f64,
        ..ApiStats::default()
    }));
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    // Missed ticks fire at once, so the average rate holds.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            lock(&stats).skipped += 1;
            continue;
        };
        let change = next_change(&state, ports);
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
    let elapsed = started.elapsed();
    // Wait for the calls still in flight.
    let _ = permits.acquire_many(concurrency as u32).await;
    let mut out = lock(&stats).clone();
    out.elapsed = elapsed;
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
    let routes = args.routes.unwrap_or(if smoke { 100 } else { 10_000 });
    let rate = args.rate.unwrap_or(if smoke { 200 } else { 1000 });
    let routes = usize::try_from(routes).context("--routes")?;

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
    let driver = Arc::new(Driver::new(
        api,
        rate,
        args.api_concurrency as usize,
        (port, bench.origin.alt_addr.port()),
        ChurnState::new(routes, port, 0),
        None,
    ));
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
    let achieved = report::median(
        &api_samples
            .iter()
            .map(|a| a.achieved_per_sec())
            .collect::<Vec<_>>(),
    );
    let failed: u64 = api_samples.iter().map(|a| a.failed).sum();
    let skipped: u64 = api_samples.iter().map(|a| a.skipped).sum();
    let mut notes = vec![
        setup_line,
        format!(
            "control-plane updates during the churn runs: {achieved:.0}/s achieved (median over \
             rounds) of {rate}/s asked, API latency p50 {}, p99 {} ({} calls pooled), {failed} \
             failed, {skipped} ticks skipped with {} calls already in flight",
            report::fmt_latency(percentile(&pooled, 0.50)),
            report::fmt_latency(percentile(&pooled, 0.99)),
            pooled.len(),
            args.api_concurrency
        ),
    ];
    for a in &api_samples {
        for e in &a.first_errors {
            notes.push(format!("failed API call: {e}"));
        }
    }
    notes.push("nginx, haproxy and chp are not run in this scenario (see the text above)".into());
    let rate_f = rate as f64;
    let checks = |summaries: &[Summary]| -> Vec<String> {
        let find = |case: &str| summaries.iter().find(|s| s.case == case);
        let (quiet, churn) = (find("no churn"), find("churn"));
        let ratio = report::ratio(churn.map(|s| s.rps), quiet.map(|s| s.rps));
        let errors = churn.map(|s| s.errors).unwrap_or(0) + quiet.map(|s| s.errors).unwrap_or(0);
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
        ]
        .iter()
        .map(Check::line)
        .collect()
    };
    let problems = bench.finish(&SCENARIO, &mut running, &runs, &samples, checks, &notes)?;
    drop(runs);
    drop(driver);
    drop(running);
    Ok(problems)
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
