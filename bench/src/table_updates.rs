//! The `table-updates` scenario: single-route changes published into a large
//! route table while a reader keeps looking routes up.
//!
//! It builds a table of session-like routes (each a label, some a slug, some a
//! custom host), then has several submitter tasks send single-route updates
//! (pause toggles, upstream changes, removals, new names) through
//! [`RoutePublisher::submit`]. For each update it measures the time from
//! submit to visible (`submit` answers only after the new table is stored) and
//! checks that the table a reader then loads shows the change. A reader thread
//! looks up the routes nobody changes for the whole run; any miss fails it.
//! Everything runs in this process: no sockets, no origin.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use gateway::router::lookup;
use gateway::{
    RouteChange, RouteHandle, RoutePublisher, RouteSpec, RouteTable, RouteTarget, TableSettings,
    Upstream,
};

use testkit::{routes, XorShift};

use crate::report;

const BASE_DOMAIN: &str = "sessions.example.com";
const PORTAL: &str = "portal.example.com";

/// What the issue asks of this scenario.
const TARGET_UPDATES_PER_SEC: f64 = 10_000.0;
const TARGET_P99: Duration = Duration::from_millis(5);

/// Changes per `apply` when timing a change within a batch.
const BATCH_PROBE: usize = 64;

/// Markers around the section `--write` maintains in a results file.
const BEGIN: &str = "<!-- table-updates:begin (written by `bench table-updates --write`) -->";
const END: &str = "<!-- table-updates:end -->";

#[derive(Args)]
pub struct TableUpdatesArgs {
    /// Routes in the table before the updates start.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    routes: u64,
    /// Single-route updates to publish.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    updates: u64,
    /// Concurrent submitter tasks; each owns its own routes, so no two
    /// updates to one route are in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    submitters: u64,
    /// Tokio worker threads for the submitters and the publisher (the reader
    /// is a thread of its own).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    workers: u64,
    /// CI mode: 2000 routes, 500 updates, 4 submitters; fails on any lookup
    /// or visibility error, never on speed.
    #[arg(long, conflicts_with_all = ["routes", "updates", "submitters"])]
    smoke: bool,
    /// Add this run to the "Route table updates" section of this markdown
    /// file (created or appended to; the rest of the file is kept).
    #[arg(long, value_name = "PATH")]
    write: Option<std::path::PathBuf>,
}

/// The resolved parameters (after `--smoke`).
#[derive(Clone, Copy, Debug)]
struct Plan {
    routes: usize,
    updates: usize,
    submitters: usize,
    workers: usize,
    /// How long the reader runs before the updates start.
    quiet: Duration,
}

/// Figures of one run.
#[derive(Debug, Default)]
struct Outcome {
    rebuild: Duration,
    apply_one_p50: Duration,
    apply_one_p99: Duration,
    apply_batch_p50: Duration,
    apply_all: Duration,
    wall: Duration,
    latencies: Vec<Duration>,
    batches: usize,
    largest_batch: usize,
    reader_lookups: u64,
    reader_secs: f64,
    quiet_lookups: u64,
    quiet_secs: f64,
    reader_failures: u64,
    not_visible: u64,
    problems: Vec<String>,
}

impl Outcome {
    fn updates_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn percentile(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }

    fn mean_batch(&self) -> f64 {
        self.latencies.len() as f64 / self.batches.max(1) as f64
    }

    fn reader_per_sec(&self) -> f64 {
        self.reader_lookups as f64 / self.reader_secs.max(1e-9)
    }

    fn quiet_per_sec(&self) -> f64 {
        self.quiet_lookups as f64 / self.quiet_secs.max(1e-9)
    }

    fn target_met(&self) -> bool {
        self.updates_per_sec() >= TARGET_UPDATES_PER_SEC && self.percentile(0.99) < TARGET_P99
    }
}

/// `sorted` must be sorted; nearest-rank percentile.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the scenario. Returns the problems that must fail the run (lookups
/// that failed, updates not visible when `submit` returned); empty when clean.
pub fn run(args: TableUpdatesArgs) -> Result<Vec<String>> {
    let plan = if args.smoke {
        Plan {
            routes: 2000,
            updates: 500,
            submitters: 4,
            workers: usize::try_from(args.workers)?,
            quiet: Duration::from_millis(50),
        }
    } else {
        Plan {
            routes: usize::try_from(args.routes)?,
            updates: usize::try_from(args.updates)?,
            submitters: usize::try_from(args.submitters)?,
            workers: usize::try_from(args.workers)?,
            quiet: Duration::from_millis(500),
        }
    };
    if plan.submitters * 2 > plan.routes {
        bail!(
            "--submitters {} needs at least {} routes (each submitter owns routes of its own)",
            plan.submitters,
            plan.submitters * 2
        );
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build of the harness; figures mean little. \
             Use `cargo run -p bench --profile dist`."
        );
    }
    let outcome = measure(plan)?;
    let text = human_report(&plan, &outcome);
    print!("{text}");
    if let Some(path) = &args.write {
        write_section(path, &plan, &outcome)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(outcome.problems)
}

fn settings() -> TableSettings {
    routes::settings_with(&[BASE_DOMAIN], Some(PORTAL))
}

/// A session-like route (`testkit::routes::session_route`: a label, a slug
/// for one in three, a custom host for one in twenty) to upstream number
/// `upstream`.
fn session_spec(i: usize, name: &str, upstream: u32, paused: bool) -> Result<RouteSpec> {
    let url = upstream_url(upstream);
    let target = RouteTarget::Upstream(Upstream::parse(&url).map_err(anyhow::Error::msg)?);
    Ok(routes::session_route(i, name, target).paused(paused))
}

/// `http://10.a.b.c:8888` from the low three bytes of `n`.
fn upstream_url(n: u32) -> String {
    let [_, a, b, c] = n.to_be_bytes();
    format!("http://10.{a}.{b}.{c}:8888")
}

fn base_name(i: usize) -> String {
    format!("s{i:07}")
}

/// Which of the routes the updates may change: the even ones. The odd ones
/// are the reader's, and must answer throughout.
fn is_churned(i: usize) -> bool {
    i % 2 == 0
}

fn measure(plan: Plan) -> Result<Outcome> {
    let settings = settings();
    let specs = (0..plan.routes)
        .map(|i| session_spec(i, &base_name(i), i as u32, false))
        .collect::<Result<Vec<RouteSpec>>>()?;

    // The cost the old apply paid for every change: a full build.
    let mut rebuilds = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let table = RouteTable::build(&settings, specs.clone(), None, 1)
            .context("building the generated table")?;
        rebuilds.push(started.elapsed());
        drop(table);
    }
    rebuilds.sort();
    let rebuild = rebuilds[1];
    let start_specs = specs.clone();

    let handle = RouteHandle::new();
    handle
        .publish(&settings, specs)
        .context("publishing the generated table")?;

    let phase = Arc::new(AtomicU8::new(QUIET));
    let reader = {
        let handle = handle.clone();
        let phase = Arc::clone(&phase);
        let routes = plan.routes;
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || read_until_stopped(&handle, routes, &phase))
            .context("starting the reader thread")?
    };
    // The reader's rate on a table nobody changes, for comparison.
    std::thread::sleep(plan.quiet);
    phase.store(UPDATING, Ordering::Relaxed);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.workers)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let submitted = runtime.block_on(submit_all(handle.clone(), plan));
    phase.store(STOP, Ordering::Relaxed);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    drop(runtime);
    let submitted = submitted?;

    let mut outcome = Outcome {
        rebuild,
        wall: submitted.wall,
        latencies: submitted.latencies,
        reader_lookups: read.lookups,
        reader_secs: read.secs,
        quiet_lookups: read.quiet_lookups,
        quiet_secs: read.quiet_secs,
        reader_failures: read.failures.len() as u64,
        not_visible: submitted.not_visible.len() as u64,
        ..Outcome::default()
    };
    outcome.latencies.sort();
    let mut per_version: HashMap<u64, usize> = HashMap::new();
    for v in &submitted.versions {
        *per_version.entry(*v).or_default() += 1;
    }
    outcome.batches = per_version.len();
    outcome.largest_batch = per_version.values().copied().max().unwrap_or(0);

    // One change per version, one after the other, straight through
    // RouteHandle::apply: the cost of a change on its own.
    let (p50, p99) = apply_in_groups(&handle, plan, 1, plan.updates.clamp(1, 2000))?;
    outcome.apply_one_p50 = p50;
    outcome.apply_one_p99 = p99;
    // And a publisher-sized batch, for the cost of a change within one.
    let (p50, _) = apply_in_groups(&handle, plan, BATCH_PROBE, 50)?;
    outcome.apply_batch_p50 = p50;
    outcome.apply_all = apply_all_at_once(&settings, start_specs)?;

    if let Some(first) = read.failures.first() {
        outcome.problems.push(format!(
            "{} reader lookups of unchanged routes failed (first: {first})",
            read.failures.len()
        ));
    }
    if let Some(first) = submitted.not_visible.first() {
        outcome.problems.push(format!(
            "{} updates were not visible when submit returned (first: {first})",
            submitted.not_visible.len()
        ));
    }
    if read.lookups == 0 {
        outcome.problems.push("the reader made no lookups".into());
    }
    Ok(outcome)
}

/// The reader's phases: before the updates, during them, done.
const QUIET: u8 = 0;
const UPDATING: u8 = 1;
const STOP: u8 = 2;

/// What the reader thread saw.
struct Read {
    quiet_lookups: u64,
    quiet_secs: f64,
    /// During the updates.
    lookups: u64,
    secs: f64,
    failures: Vec<String>,
}

/// Looks up random unchanged routes, by label and (for those that have one)
/// by slug, one table load per lookup as a request does, counting the
/// lookups of each phase, until told to stop.
fn read_until_stopped(handle: &RouteHandle, routes: usize, phase: &AtomicU8) -> Read {
    let mut rng = XorShift(0x0dd_c0ffee);
    // Precomputed, so the loop measures lookups rather than formatting.
    let stable: Vec<usize> = (0..routes).filter(|&i| !is_churned(i)).collect();
    let requests: Vec<(String, String, String)> = stable
        .iter()
        .map(|&i| {
            let name = base_name(i);
            if i % 3 == 0 {
                (
                    PORTAL.to_string(),
                    format!("/s/{name}/lab/tree"),
                    format!("session:{name}"),
                )
            } else {
                (
                    format!("{name}.{BASE_DOMAIN}"),
                    "/lab/tree".to_string(),
                    format!("session:{name}"),
                )
            }
        })
        .collect();
    let mut failures = Vec::new();
    let mut lookups = 0u64;
    let mut started = Instant::now();
    let (mut quiet_lookups, mut quiet_secs) = (0, 0.0);
    let mut current = QUIET;
    loop {
        let now = phase.load(Ordering::Relaxed);
        if now != current {
            if current == QUIET {
                quiet_lookups = lookups;
                quiet_secs = started.elapsed().as_secs_f64();
                lookups = 0;
                started = Instant::now();
            }
            current = now;
        }
        if current == STOP {
            break;
        }
        for _ in 0..256 {
            let (host, path, id) = &requests[rng.below(requests.len())];
            let table = handle.load();
            match lookup(&table, host, path) {
                Some(m) if *m.route.id == **id => {}
                other => {
                    if failures.len() < 10 {
                        failures.push(format!(
                            "{host}{path} in version {}: {:?}",
                            table.version(),
                            other.map(|m| m.route.id.to_string())
                        ));
                    }
                }
            }
            lookups += 1;
        }
    }
    Read {
        quiet_lookups,
        quiet_secs,
        lookups,
        secs: started.elapsed().as_secs_f64(),
        failures,
    }
}

/// What the submitters measured.
struct Submitted {
    wall: Duration,
    latencies: Vec<Duration>,
    versions: Vec<u64>,
    not_visible: Vec<String>,
}

/// One route a submitter owns, as it last published it.
struct Owned {
    index: usize,
    generation: u32,
    upstream: u32,
    paused: bool,
    present: bool,
}

impl Owned {
    fn name(&self) -> String {
        if self.generation == 0 {
            base_name(self.index)
        } else {
            format!("{}-v{}", base_name(self.index), self.generation)
        }
    }

    fn spec(&self) -> Result<RouteSpec> {
        session_spec(self.index, &self.name(), self.upstream, self.paused)
    }
}

/// Runs the submitters and collects their figures.
async fn submit_all(handle: RouteHandle, plan: Plan) -> Result<Submitted> {
    let publisher = RoutePublisher::spawn(handle.clone());
    let mut tasks = Vec::new();
    let started = Instant::now();
    for s in 0..plan.submitters {
        let owned: Vec<Owned> = (0..plan.routes)
            .filter(|&i| is_churned(i) && (i / 2) % plan.submitters == s)
            .map(|index| Owned {
                index,
                generation: 0,
                upstream: index as u32,
                paused: false,
                present: true,
            })
            .collect();
        let updates =
            plan.updates / plan.submitters + usize::from(s < plan.updates % plan.submitters);
        tasks.push(tokio::spawn(submitter(
            publisher.clone(),
            handle.clone(),
            owned,
            updates,
            0x5eed_0000 + s as u64,
        )));
    }
    let mut out = Submitted {
        wall: Duration::ZERO,
        latencies: Vec::with_capacity(plan.updates),
        versions: Vec::with_capacity(plan.updates),
        not_visible: Vec::new(),
    };
    // Nothing large is allocated or freed until every submitter is done: with
    // glibc's malloc, a large allocation or free makes the arena consolidate
    // its backlog of freed small blocks (here the old routes the publisher
    // frees), which took 10 ms on the publisher's thread at the end of a run.
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("a submitter task failed")?);
    }
    out.wall = started.elapsed();
    for result in results {
        let done = result?;
        out.latencies.extend(done.latencies);
        out.versions.extend(done.versions);
        out.not_visible.extend(done.not_visible);
    }
    Ok(out)
}

/// What one submitter measured.
struct SubmitterDone {
    latencies: Vec<Duration>,
    versions: Vec<u64>,
    not_visible: Vec<String>,
    /// Handed back rather than freed when the task ends (see `submit_all`).
    _owned: Vec<Owned>,
}

/// One submitter: `updates` single-route changes to its own routes, one at a
/// time, each timed from submit to answer and then checked in a fresh load.
async fn submitter(
    publisher: RoutePublisher,
    handle: RouteHandle,
    mut owned: Vec<Owned>,
    updates: usize,
    seed: u64,
) -> Result<SubmitterDone> {
    let mut rng = XorShift(seed);
    let mut latencies = Vec::with_capacity(updates);
    let mut versions = Vec::with_capacity(updates);
    let mut not_visible = Vec::new();
    if owned.is_empty() {
        bail!("a submitter owns no routes");
    }
    for _ in 0..updates {
        let pick = rng.below(owned.len());
        let route = &mut owned[pick];
        let change = if !route.present {
            // Back under a new name.
            route.generation += 1;
            route.present = true;
            RouteChange::Upsert(route.spec()?)
        } else {
            match rng.below(10) {
                0..=3 => {
                    route.paused = !route.paused;
                    RouteChange::Upsert(route.spec()?)
                }
                4..=7 => {
                    route.upstream = route.upstream.wrapping_add(1 << 20);
                    RouteChange::Upsert(route.spec()?)
                }
                _ => {
                    route.present = false;
                    RouteChange::Remove(format!("session:{}", route.name()).into())
                }
            }
        };
        let started = Instant::now();
        let version = publisher
            .submit(vec![change])
            .await
            .with_context(|| format!("updating route {}", route.name()))?;
        latencies.push(started.elapsed());
        versions.push(version);
        if let Err(problem) = check_visible(&handle, route, version) {
            if not_visible.len() < 10 {
                not_visible.push(problem);
            }
        }
    }
    Ok(SubmitterDone {
        latencies,
        versions,
        not_visible,
        _owned: owned,
    })
}

/// The table a reader loads now shows `route` as it was just published.
fn check_visible(
    handle: &RouteHandle,
    route: &Owned,
    version: u64,
) -> std::result::Result<(), String> {
    let table = handle.load();
    let name = route.name();
    if table.version() < version {
        return Err(format!(
            "{name}: table version {} after submit answered {version}",
            table.version()
        ));
    }
    let host = format!("{name}.{BASE_DOMAIN}");
    let found = lookup(&table, &host, "/");
    match (found, route.present) {
        (None, false) => Ok(()),
        (Some(m), true)
            if m.route.paused == route.paused
                && m.route.target.to_string() == upstream_url(route.upstream) =>
        {
            Ok(())
        }
        (found, _) => Err(format!(
            "{name} in version {}: want present={} paused={}, found {:?}",
            table.version(),
            route.present,
            route.paused,
            found.map(|m| (m.route.id.to_string(), m.route.paused))
        )),
    }
}

/// Median and p99 of `RouteHandle::apply` with `group` pause toggles per
/// call, on the table the run left (no reader, no publisher).
fn apply_in_groups(
    handle: &RouteHandle,
    plan: Plan,
    group: usize,
    calls: usize,
) -> Result<(Duration, Duration)> {
    let mut rng = XorShift(0xa991_1e55 ^ group as u64);
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let current = handle.current();
        let mut changes = Vec::with_capacity(group);
        for _ in 0..group {
            // An unchanged (odd) route, so it is certainly there.
            let i = (rng.below(plan.routes / 2) * 2 + 1).min(plan.routes - 1);
            let Some(route) = current.route(&format!("session:{}", base_name(i))) else {
                bail!("route {} missing before the timed applies", base_name(i));
            };
            let mut spec = route.spec.clone();
            spec.paused = !spec.paused;
            changes.push(RouteChange::Upsert(spec));
        }
        drop(current);
        let started = Instant::now();
        handle.apply(None, changes).context("timed apply")?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// Every route added to an empty table in one `apply`, as the control plane
/// does at start-up.
fn apply_all_at_once(settings: &TableSettings, specs: Vec<RouteSpec>) -> Result<Duration> {
    let handle = RouteHandle::new();
    handle
        .publish(settings, vec![])
        .context("publishing an empty table")?;
    let changes = specs.into_iter().map(RouteChange::Upsert).collect();
    let started = Instant::now();
    handle
        .apply(None, changes)
        .context("applying every route at once")?;
    Ok(started.elapsed())
}

fn ms(d: Duration) -> String {
    report::fmt_latency(d.as_secs_f64() * 1e6)
}

fn human_report(plan: &Plan, o: &Outcome) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\ntable-updates: {} routes, {} single-route updates from {} submitters \
         ({} runtime worker(s), 1 reader thread)",
        plan.routes, plan.updates, plan.submitters, plan.workers
    );
    let _ = writeln!(
        r,
        "  full build of {} routes:       {} (what every change cost before)",
        plan.routes,
        ms(o.rebuild)
    );
    let _ = writeln!(
        r,
        "  one change per version (apply): median {}, p99 {}",
        ms(o.apply_one_p50),
        ms(o.apply_one_p99)
    );
    let _ = writeln!(
        r,
        "  {BATCH_PROBE} changes per version (apply): median {} ({} per change)",
        ms(o.apply_batch_p50),
        ms(o.apply_batch_p50 / BATCH_PROBE as u32)
    );
    let _ = writeln!(
        r,
        "  all {} routes in one apply:     {} (start-up)",
        plan.routes,
        ms(o.apply_all)
    );
    let _ = writeln!(
        r,
        "  through RoutePublisher:         {:.0} updates/s; submit to visible p50 {}, p99 {}, max {}",
        o.updates_per_sec(),
        ms(o.percentile(0.5)),
        ms(o.percentile(0.99)),
        ms(o.latencies.last().copied().unwrap_or_default()),
    );
    let _ = writeln!(
        r,
        "  batches:                        {} versions, mean {:.1} updates each, largest {}",
        o.batches,
        o.mean_batch(),
        o.largest_batch
    );
    let _ = writeln!(
        r,
        "  reader:                         {:.2} M lookups/s during updates ({:.2} M before), {} failed; \
         {} updates not visible on return",
        o.reader_per_sec() / 1e6,
        o.quiet_per_sec() / 1e6,
        o.reader_failures,
        o.not_visible
    );
    let _ = writeln!(
        r,
        "  target (>= {:.0} updates/s, p99 < {}): {}",
        TARGET_UPDATES_PER_SEC,
        ms(TARGET_P99),
        if o.target_met() { "met" } else { "NOT met" }
    );
    r
}

/// The table header of the section's runs.
const TABLE_HEAD: &str = "| date (UTC) | commit | machine | routes, updates, submitters, workers | updates/s | p50 | p99 | max | versions (mean batch) | apply 1 change: p50 / p99 | apply 64 changes: p50 | build / start-up apply, all routes | reader lookups/s: during (before) | errors |\n\
|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

/// Adds this run as a row to the section between [`BEGIN`] and [`END`] in
/// `path`, keeping the rows already there and everything outside the markers
/// (such as a hand-written reading of the figures). Creates the section, or
/// the file, when missing.
fn write_section(path: &Path, plan: &Plan, o: &Outcome) -> Result<()> {
    let machine = report::Machine::collect();
    let row = format!(
        "| {} | {} | {} CPUs, {} | {}, {}, {}, {} | {:.0} | {} | {} | {} | {} ({:.1}) | {} / {} | {} | {} / {} | {:.2} M ({:.2} M) | {} |",
        machine.date,
        report::source_commit(&["gateway", "bench/src", "bench/Cargo.toml"])
            .unwrap_or_else(|| "unknown".into()),
        machine.nproc,
        machine.cpu_model,
        plan.routes,
        plan.updates,
        plan.submitters,
        plan.workers,
        o.updates_per_sec(),
        ms(o.percentile(0.5)),
        ms(o.percentile(0.99)),
        ms(o.latencies.last().copied().unwrap_or_default()),
        o.batches,
        o.mean_batch(),
        ms(o.apply_one_p50),
        ms(o.apply_one_p99),
        ms(o.apply_batch_p50),
        ms(o.rebuild),
        ms(o.apply_all),
        o.reader_per_sec() / 1e6,
        o.quiet_per_sec() / 1e6,
        if o.problems.is_empty() {
            "0".to_string()
        } else {
            format!("**{}**", o.problems.join("; "))
        },
    );
    let command: Vec<String> = std::env::args().map(|a| report::shell_quote(&a)).collect();
    let summary = crate::results::lines(&[summary_row(plan, o)])?;
    crate::side_by_side::update_file(path, |existing| {
        Ok(update_section(existing, &row, &command.join(" "), &summary))
    })
}

/// The summary row of this run: updates/s and p99 submit to visible,
/// judged as [`Outcome::target_met`]; a run with problems does not meet it.
fn summary_row(plan: &Plan, o: &Outcome) -> crate::results::Row {
    let mut row = crate::results::Row::new("table-updates", "");
    row.sessiongate = format!(
        "{} updates/s, p99 {} (max {}) at {} routes, {} submitters",
        crate::results::count(o.updates_per_sec()),
        ms(o.percentile(0.99)),
        ms(o.latencies.last().copied().unwrap_or_default()),
        crate::results::count(plan.routes as f64),
        plan.submitters
    );
    row.peer = "–".into();
    row.ratio = format!(
        "{:.1}x the updates/s asked",
        o.updates_per_sec() / TARGET_UPDATES_PER_SEC
    );
    row.met = Some(o.target_met() && o.problems.is_empty());
    if !o.problems.is_empty() {
        row.note = format!("FLAGGED: {}", o.problems.join("; "));
    }
    row
}

/// `existing` with this run's row added to its section (see
/// [`write_section`]), and `summary` (this run's summary lines) at its end.
fn update_section(existing: &str, row: &str, command: &str, summary: &str) -> String {
    let (before, rows, after) = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if b < e => {
            let inside = &existing[b + BEGIN.len()..e];
            let rows: Vec<&str> = inside
                .lines()
                .skip_while(|l| !l.starts_with("|---"))
                .skip(1)
                .take_while(|l| l.starts_with('|'))
                .collect();
            (&existing[..b], rows, &existing[e + END.len()..])
        }
        _ => {
            let sep = if existing.is_empty() || existing.ends_with("\n\n") {
                ""
            } else if existing.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            return format!(
                "{existing}{sep}{}\n",
                section(&[row], command, summary).trim_end()
            );
        }
    };
    let mut all = rows;
    all.push(row);
    format!(
        "{before}{}{after}",
        section(&all, command, summary).trim_end()
    )
}

/// What the section's figures are; see also bench/README.md.
const SECTION_TEXT: &str = "\
Single-route changes published into a table of session-like routes (a label
each, a slug for one in three, a custom host for one in twenty) through
`gateway::RoutePublisher::submit` by concurrent submitter tasks, each on routes
of its own: 40% pause toggles, 40% upstream changes, 20% removals, and a
removed route comes back under a new name. Submit to visible (p50, p99, max) is
the time from `submit` to its answer, which comes after the new table is
stored; each answer is then checked in a fresh load of the table. Versions are
the table versions the updates made (one per batch). A reader thread looks up
routes that no update touches, one table load per lookup, alone for 0.5 s
(\"before\") and then during the updates; a failed lookup is an error. For
comparison: `RouteHandle::apply` with 1 and with 64 changes per version, one
call after the other; `RouteTable::build` of all the routes, which is what every
change cost before the table was sharded; and all the routes added to an empty
table in one `apply`, as the control plane does at start-up. Target: >= 10k
updates/s with p99 < 5 ms. In-process, no sockets; the machine is shared and
noisy.
";

fn section(rows: &[&str], command: &str, summary: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}");
    let _ = writeln!(s, "## Route table updates\n");
    let _ = writeln!(s, "{SECTION_TEXT}");
    let _ = writeln!(s, "Last command: `{command}`\n");
    let _ = writeln!(s, "{TABLE_HEAD}");
    for row in rows {
        let _ = writeln!(s, "{row}");
    }
    if !summary.is_empty() {
        let _ = write!(s, "\n{summary}");
    }
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn section_is_appended_then_grows_by_rows() {
        let doc = "# results\n\nkeep-alive figures\n";
        let once = update_section(doc, "| run 1 |", "bench table-updates", "");
        assert!(once.starts_with(doc));
        assert!(once.contains("## Route table updates"));
        let mut twice = update_section(
            &once,
            "| run 2 |",
            "bench table-updates --smoke",
            "<!-- summary: run 2 -->\n",
        );
        assert!(twice.contains(
            "| run 1 |\n| run 2 |\n\n<!-- summary: run 2 -->\n<!-- table-updates:end -->"
        ));
        assert!(twice.contains("Last command: `bench table-updates --smoke`"));
        assert_eq!(twice.matches("## Route table updates").count(), 1);
        // Text after the section (a hand-written reading) is kept.
        twice.push_str("\nReading: fine.\n");
        let thrice = update_section(&twice, "| run 3 |", "x", "");
        assert!(thrice.ends_with("<!-- table-updates:end -->\n\nReading: fine.\n"));
        assert!(thrice.contains("| run 2 |\n| run 3 |"));
        assert!(thrice.starts_with(doc));
    }

    #[test]
    fn smoke_run_is_clean() {
        let plan = Plan {
            routes: 400,
            updates: 200,
            submitters: 4,
            workers: 1,
            quiet: Duration::from_millis(10),
        };
        let outcome = measure(plan).unwrap();
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert_eq!(outcome.latencies.len(), 200);
        assert!(outcome.batches >= 1);
    }
}
