//! The wrk scenarios against every target: `keepalive`, `new-connection`,
//! `body-1mib` (one route, one load each) and `routes` (1, 10k and 100k
//! routes with a random `Host` per request). Each is a list of runs for
//! [`Bench`]; what they check beyond errors is here.

use anyhow::{Context, Result};
use clap::Args;

use crate::report::{self, Summary};
use crate::results::{self, Row};
use crate::side_by_side::{
    vs_nginx_check, vs_nginx_row, Bench, Check, CommonArgs, Judged, Run, Running, Scenario,
    Traffic, ALL_TARGETS,
};
use crate::targets::{Routes, TargetKind};
use crate::wrk::{Load, Script};
use testkit::origin;

/// Issue 7's keep-alive targets: sessiongate's req/s at least this many
/// times nginx's (with a p99 no worse) and chp's.
const KEEPALIVE_VS_NGINX: f64 = 1.2;
const KEEPALIVE_VS_CHP: f64 = 10.0;
/// The data-plane issue's keep-alive target: sessiongate's CPU per request
/// at most this many times nginx's.
const KEEPALIVE_CPU_VS_NGINX: f64 = 0.9;
/// new-connection, body-1mib and ws-echo: at least nginx's throughput.
const VS_NGINX: f64 = 1.0;
/// sessiongate's RSS after start with one route, before load: 15 MB.
const IDLE_RSS_BYTES: u64 = 15_000_000;
/// The routes target: throughput at the largest table over one route.
const ROUTES_RATIO: f64 = 0.95;
/// The routes target's memory: sessiongate's idle RSS per route, in bytes.
const ROUTES_BYTES_PER_ROUTE: f64 = 300.0;
/// The table size the routes target is stated at.
const ROUTES_TARGET_SIZE: usize = 1_000_000;

/// Options of the scenarios with nothing of their own.
#[derive(Args, Clone, Debug)]
pub struct WrkArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Clone, Debug)]
pub struct RoutesArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Route-table sizes, comma-separated [default: 1,10000,100000; 1,1000
    /// with --smoke]. The ratio is the largest over the smallest.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub sizes: Option<Vec<u64>>,
}

pub const KEEPALIVE: Scenario = Scenario {
    name: "keepalive",
    unit: "req/s",
    title: "Keep-alive, small responses",
    text: "\
128-byte responses (with `Content-Length`) over keep-alive connections, one
route (`Host: app.localhost`): the per-request cost of each proxy. Every
proxy keeps its connections to the origin alive; `direct` is wrk straight at
the origin (the ceiling). sessiongate has one `[[routes]]` entry, chp one
host route added through its API, nginx and haproxy send everything to the
origin from one catch-all block.",
};

pub const NEW_CONNECTION: Scenario = Scenario {
    name: "new-connection",
    unit: "req/s",
    title: "A new connection per request",
    text: "\
Every request carries `Connection: close`: each proxy answers with
`Connection: close` and closes, and wrk opens a new connection for the next
request. A Lua script counts the responses without `Connection: close`
(any flags the run), and direct to the origin the origin's accepted
connections are checked against the requests. Proxies still keep their
origin connections alive. 128-byte responses, one route.",
};

pub const BODY_1MIB: Scenario = Scenario {
    name: "body-1mib",
    unit: "req/s",
    title: "1 MiB responses",
    text: "\
`GET /1mib` answered with a 1 MiB body (with `Content-Length`) over
keep-alive connections, one route: copying and flow control rather than
per-request work. nginx streams (`proxy_buffering off`), as sessiongate,
haproxy and chp do. A run that read fewer bytes than its requests times
1 MiB is flagged.",
};

pub const WS_ECHO: Scenario = Scenario {
    name: "ws-echo",
    unit: "messages/s",
    title: "WebSocket echo",
    text: "\
WebSocket echo messages/s: C WebSockets (`Host: app.localhost`, one route)
through each proxy to the harness's WebSocket echo origin, opened before the
clock starts; each keeps one 128-byte binary message in flight (send, wait
for its echo, send the next), and every echo is checked byte for byte and in
order. Messages/s counts the verified echoes inside the window; p50/p99 are
round trips. The origin counts the messages it echoed, so a proxy that
answered by itself would be flagged. Any WebSocket error (connect,
handshake, closed, protocol, mismatch, timeout, close) flags the run. Proxy
CPU per message includes the connections' set-up and close. nginx passes the
upgrade with `Upgrade $http_upgrade` / `Connection $connection_upgrade`,
haproxy and chp natively, sessiongate natively.",
};

pub const ROUTES: Scenario = Scenario {
    name: "routes",
    unit: "req/s",
    title: "Route-table size, random host",
    text: "\
128-byte responses over keep-alive; every request carries a random `Host`
among N routes (a wrk Lua script with a fixed seed, so every target sees the
same sequence; the requests are formatted once at start). Each host is its
own route in every proxy: sessiongate a `[[routes]]` entry, nginx an entry
of a `map $host` (unknown hosts 404), haproxy a line of a map file looked up
with `req.hdr(host),lower,map()` (unknown hosts 404), chp a host route added
through its REST API (`--host-routing`). All sizes run side by side,
interleaved in every round. `direct` runs the same script at the origin,
which ignores the host: the load generator's own ceiling at that size.",
};

/// A scenario of one case: one route, one load, every target; with
/// `Traffic::WsEcho` the routes lead to the WebSocket echo origin.
fn single(
    scenario: &Scenario,
    args: WrkArgs,
    traffic: impl FnOnce(&Bench) -> Result<Traffic>,
) -> Result<Vec<String>> {
    let mut bench = Bench::setup(&args.common, &ALL_TARGETS, &ALL_TARGETS)?;
    let traffic = traffic(&bench)?;
    let upstream = match traffic {
        Traffic::WsEcho => bench.start_ws_origin()?,
        Traffic::Http(_) | Traffic::H2(_) => bench.origin.addr,
    };
    let routes = Routes::one();
    let mut running: Vec<Running> = Vec::new();
    for &kind in &bench.plan.targets {
        running.push(bench.start_to(kind, &routes, "", upstream)?);
    }
    let runs: Vec<Run> = (0..running.len())
        .map(|target| Run {
            case: String::new(),
            target,
            load: traffic.clone(),
            churn: None,
        })
        .collect();
    let samples = bench.rounds(&mut running, &runs)?;
    let keepalive = scenario.name == KEEPALIVE.name;
    let problems = bench.finish(
        scenario,
        &mut running,
        &runs,
        &samples,
        |s| {
            if keepalive {
                Judged {
                    lines: keepalive_checks(s).iter().map(Check::line).collect(),
                    rows: vec![keepalive_row(s)],
                }
            } else {
                Judged {
                    lines: vec![vs_nginx_check(scenario, "", s, VS_NGINX).line()],
                    rows: vec![vs_nginx_row(scenario, "", s, VS_NGINX)],
                }
            }
        },
        &[],
    )?;
    drop(running);
    Ok(problems)
}

pub fn keepalive(args: WrkArgs) -> Result<Vec<String>> {
    single(&KEEPALIVE, args, |_| {
        Ok(Traffic::Http(Load {
            body_len: origin::BODY_LEN,
            ..Load::default()
        }))
    })
}

pub fn new_connection(args: WrkArgs) -> Result<Vec<String>> {
    single(&NEW_CONNECTION, args, |bench| {
        let script = bench.script(
            "new-connection.lua",
            &Script {
                hosts_file: None,
                check_close: true,
            },
        )?;
        Ok(Traffic::Http(Load {
            headers: vec!["Connection: close".into()],
            script: Some(script),
            body_len: origin::BODY_LEN,
            new_connections: true,
            ..Load::default()
        }))
    })
}

pub fn body_1mib(args: WrkArgs) -> Result<Vec<String>> {
    single(&BODY_1MIB, args, |_| {
        Ok(Traffic::Http(Load {
            path: origin::BIG_PATH.into(),
            body_len: origin::BIG_BODY_LEN,
            ..Load::default()
        }))
    })
}

pub fn ws_echo(args: WrkArgs) -> Result<Vec<String>> {
    single(&WS_ECHO, args, |_| Ok(Traffic::WsEcho))
}

fn find<'a>(summaries: &'a [Summary], case: &str, kind: TargetKind) -> Option<&'a Summary> {
    summaries
        .iter()
        .find(|s| s.case == case && s.target == kind)
}

fn keepalive_checks(summaries: &[Summary]) -> Vec<Check> {
    let sg = find(summaries, "", TargetKind::Sessiongate);
    let chp = find(summaries, "", TargetKind::Chp);
    let vs_nginx = sg.and_then(|s| s.vs_nginx.rps.zip(s.vs_nginx.p99));
    let vs_chp = report::ratio(sg.map(|s| s.rps), chp.map(|s| s.rps));
    let cpu = sg.and_then(|s| s.vs_nginx.cpu);
    let idle = sg.and_then(|s| s.rss).map(|r| r.idle_kib * 1024);
    vec![
        Check {
            what: format!(
                "keepalive: sessiongate req/s >= {KEEPALIVE_VS_NGINX}x nginx with p99 <= nginx's"
            ),
            met: vs_nginx.map(|(rps, p99)| rps >= KEEPALIVE_VS_NGINX && p99 <= 1.0),
            detail: match vs_nginx {
                Some((rps, p99)) => format!("req/s {rps:.2}x, p99 {p99:.2}x"),
                None => "needs sessiongate and nginx".into(),
            },
        },
        Check {
            what: format!(
                "keepalive: sessiongate CPU per request <= {KEEPALIVE_CPU_VS_NGINX}x nginx's"
            ),
            met: cpu.map(|c| c <= KEEPALIVE_CPU_VS_NGINX),
            detail: match cpu {
                Some(c) => format!("{c:.2}x"),
                None => "needs sessiongate and nginx, with CPU figures".into(),
            },
        },
        Check {
            what: format!("keepalive: sessiongate req/s >= {KEEPALIVE_VS_CHP}x chp"),
            met: vs_chp.map(|r| r >= KEEPALIVE_VS_CHP),
            detail: report::fmt_opt(vs_chp, |r| format!("{r:.1}x")),
        },
        Check {
            what: "sessiongate idle RSS <= 15 MB (one route, after start, before load)".into(),
            met: idle.map(|b| b <= IDLE_RSS_BYTES),
            detail: match idle {
                Some(b) => format!("{:.1} MB ({:.1} MiB)", b as f64 / 1e6, b as f64 / 1048576.0),
                None => "needs sessiongate".into(),
            },
        },
    ]
}

/// The keep-alive row of the summary: req/s, p99 and CPU per request of
/// sessiongate and nginx, judged on the first two checks of
/// [`keepalive_checks`] (req/s with p99, CPU per request).
fn keepalive_row(summaries: &[Summary]) -> Row {
    let checks = keepalive_checks(summaries);
    let figures = |s: &Summary| {
        format!(
            "{} req/s, p99 {}, CPU {} µs/req",
            results::count(s.rps),
            report::fmt_latency(s.p99_us),
            report::fmt_opt(s.cpu_us_per_req, |c| format!("{c:.1}"))
        )
    };
    let sg = find(summaries, "", TargetKind::Sessiongate);
    let mut row = Row::new(KEEPALIVE.name, "");
    row.sessiongate = sg.map_or("not measured".into(), figures);
    row.peer = format!(
        "nginx: {}",
        find(summaries, "", TargetKind::Nginx).map_or("not measured".into(), figures)
    );
    let vs = sg.map(|s| s.vs_nginx).unwrap_or_default();
    row.ratio = format!(
        "req/s {}, p99 {}, CPU {}",
        results::times(vs.rps),
        results::times(vs.p99),
        results::times(vs.cpu)
    );
    row.met = results::all_met(&[checks[0].met, checks[1].met]);
    if let Some(problem) = sg.and_then(Summary::problem) {
        row.met = Some(false);
        row.note = format!("FLAGGED: {problem}");
    }
    row
}

/// The routes row of the summary: sessiongate's req/s at the largest table
/// over one route's, and its idle RSS per route (what the largest table
/// adds over the smallest, per route added; `serve` holds the routes of its
/// control plane and of its gateway). Judged only when the largest table
/// has the target's million routes.
fn routes_row(summaries: &[Summary], sizes: &[usize]) -> Row {
    let mut row = Row::new(ROUTES.name, "");
    let (Some(&small), Some(&large)) = (sizes.first(), sizes.last()) else {
        row.sessiongate = "no sizes".into();
        return row;
    };
    let (sc, lc) = (size_case(small), size_case(large));
    let ratio = |kind| {
        report::ratio(
            find(summaries, &lc, kind).map(|s| s.rps),
            find(summaries, &sc, kind).map(|s| s.rps),
        )
    };
    let sg_ratio = ratio(TargetKind::Sessiongate).filter(|_| large > small);
    let idle = |case: &str| {
        find(summaries, case, TargetKind::Sessiongate)
            .and_then(|s| s.rss)
            .map(|r| r.idle_kib as f64 * 1024.0)
    };
    let per_route = match (idle(&lc), idle(&sc)) {
        (Some(l), Some(s)) if large > small => Some((l - s) / (large - small) as f64),
        _ => None,
    };
    row.sessiongate = format!(
        "{} req/s at {lc}, {} of {sc}; idle RSS {} bytes per route",
        find(summaries, &lc, TargetKind::Sessiongate)
            .map_or("–".into(), |s| results::count(s.rps)),
        results::times(sg_ratio),
        report::fmt_opt(per_route, results::count)
    );
    row.peer = format!(
        "nginx: {} of {sc}",
        results::times(ratio(TargetKind::Nginx).filter(|_| large > small))
    );
    row.ratio = format!("{} of {sc}", results::times(sg_ratio));
    let met = results::all_met(&[
        sg_ratio.map(|r| r >= ROUTES_RATIO),
        per_route.map(|b| b <= ROUTES_BYTES_PER_ROUTE),
    ]);
    if large >= ROUTES_TARGET_SIZE {
        row.met = met;
    } else {
        row.note = format!(
            "not judged: the target is at 1M routes, this run's largest table {lc} \
             (`--sizes 1,1000000`)"
        );
    }
    if let Some(problem) = summaries
        .iter()
        .filter(|s| s.target == TargetKind::Sessiongate)
        .find_map(Summary::problem)
    {
        row.met = Some(false);
        row.note = format!("FLAGGED: {problem}");
    }
    row
}

/// The case name of a route-table size.
fn size_case(n: usize) -> String {
    match n {
        1 => "1 route".into(),
        n if n % 1_000_000 == 0 => format!("{}M routes", n / 1_000_000),
        n if n % 1000 == 0 => format!("{}k routes", n / 1000),
        n => format!("{n} routes"),
    }
}

pub fn routes(args: RoutesArgs) -> Result<Vec<String>> {
    let bench = Bench::setup(&args.common, &ALL_TARGETS, &ALL_TARGETS)?;
    let mut sizes: Vec<usize> = match &args.sizes {
        Some(s) => s
            .iter()
            .map(|&n| usize::try_from(n).context("--sizes"))
            .collect::<Result<_>>()?,
        None if bench.plan.smoke => vec![1, 1000],
        None => vec![1, 10_000, 100_000],
    };
    sizes.sort_unstable();
    sizes.dedup();
    let mut running: Vec<Running> = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    for &n in &sizes {
        let routes = Routes::many(n);
        let case = size_case(n);
        let load = bench.random_host_load(&format!("routes-{n}"), &routes)?;
        for &kind in &bench.plan.targets {
            running.push(bench.start(kind, &routes, &format!("{n}"))?);
            runs.push(Run {
                case: case.clone(),
                target: running.len() - 1,
                load: Traffic::Http(load.clone()),
                churn: None,
            });
        }
    }
    let samples = bench.rounds(&mut running, &runs)?;
    let (small, large) = match (sizes.first(), sizes.last()) {
        (Some(&a), Some(&b)) => (size_case(a), size_case(b)),
        _ => (String::new(), String::new()),
    };
    let targets = bench.plan.targets.clone();
    let checks = |summaries: &[Summary]| -> Vec<String> {
        if small == large {
            return vec!["routes: one size only, no ratio".into()];
        }
        targets
            .iter()
            .map(|&kind| {
                let r = report::ratio(
                    find(summaries, &large, kind).map(|s| s.rps),
                    find(summaries, &small, kind).map(|s| s.rps),
                );
                let figure = report::fmt_opt(r, |r| format!("{r:.3}x"));
                if kind == TargetKind::Sessiongate {
                    Check {
                        what: format!(
                            "routes: sessiongate req/s at {large} >= {ROUTES_RATIO}x {small}"
                        ),
                        met: r.map(|r| r >= ROUTES_RATIO),
                        detail: figure,
                    }
                    .line()
                } else {
                    format!("routes: {kind} req/s at {large} over {small}: {figure}")
                }
            })
            .collect()
    };
    let judge = |s: &[Summary]| Judged {
        lines: checks(s),
        rows: vec![routes_row(s, &sizes)],
    };
    let problems = bench.finish(&ROUTES, &mut running, &runs, &samples, judge, &[])?;
    drop(running);
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_cases() {
        assert_eq!(size_case(1), "1 route");
        assert_eq!(size_case(10_000), "10k routes");
        assert_eq!(size_case(1500), "1500 routes");
        assert_eq!(size_case(1_000_000), "1M routes");
    }
}
