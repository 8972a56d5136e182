//! The `https` scenario: keep-alive small responses over HTTPS, through
//! sessiongate and nginx side by side, over HTTP/1.1 (wrk) and over h2
//! (h2load), as browsers speak it.
//!
//! Both proxies terminate TLS with the same certificate (made once per run
//! with `sessiongate certs dev`, as in `tls-handshakes`) and proxy to the
//! same plain HTTP/1.1 origin, the harness's, over keep-alive connections.
//! A target is ready once a request over TLS (`openssl s_client`, the chain
//! verified against the run's CA) comes back with the origin's body, and
//! once h2load gets h2 from it. Then the rounds run as in `keepalive`:
//! interleaved, the proxy's CPU read around every run; the h2 runs count
//! as requests the responses h2load got, checked against the origin's
//! count as for wrk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::floods::tool;
use crate::h2load::H2Load;
use crate::openssl;
use crate::report::{self, Summary};
use crate::side_by_side::{
    absolute, vs_nginx_check, vs_nginx_row, Bench, CommonArgs, Judged, Run, Running, Scenario,
    Traffic,
};
use crate::targets::{self, CertPair, TargetKind};
use crate::tls_handshakes::{make_certificate, DOMAIN};
use crate::wrk::Load;
use testkit::origin::{self, MARKER};

/// The route both proxies serve, under the certificate's domain.
pub const HOST: &str = "app.bench.test";

/// The data-plane issue's target: at least nginx's req/s, each protocol.
const VS_NGINX: f64 = 1.0;

/// The targets this scenario measures.
const TARGETS: [TargetKind; 2] = [TargetKind::Sessiongate, TargetKind::Nginx];

/// The cases: one per protocol.
pub const H1: &str = "HTTP/1.1";
pub const H2: &str = "h2";

pub const HTTPS: Scenario = Scenario {
    name: "https",
    unit: "req/s",
    title: "HTTPS keep-alive, small responses",
    text: "\
128-byte responses over keep-alive HTTPS connections, one route
(`app.bench.test`), through sessiongate and nginx side by side. Both
terminate TLS with the same certificate (an ECDSA P-256 certificate for
`bench.test` and `*.bench.test` from `sessiongate certs dev`, as in
`tls-handshakes`; TLS 1.2 and 1.3, Mozilla intermediate settings, ALPN h2
and http/1.1) and proxy to the same plain HTTP/1.1 origin over kept-alive
connections. `HTTP/1.1` is wrk over TLS (no ALPN, so HTTP/1.1, `Host:
app.bench.test`); `h2` is h2load (ALPN h2, `:authority: app.bench.test`),
one thread, with as many requests in flight in all as wrk has. The clients
send no SNI for an address, so both servers answer with their only
certificate. nginx runs as in `keepalive` (one worker, upstream keepalive
64, streaming) with `listen ... ssl http2` and `keepalive_requests` raised
to 1,000,000: h2load does not reconnect when a server closes a connection
after nginx's default 1,000 requests, and wrk's reconnects would add TLS
handshakes to a keep-alive figure. h2load reports no latency percentiles
(`–`); its req/s is the responses over its run's time.",
};

#[derive(Args, Clone, Debug)]
pub struct HttpsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// h2load connections (-c) [default: 4; 2 with --smoke]; --connections
    /// is wrk's.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub h2_clients: Option<u32>,
    /// Requests in flight per h2 connection (-m) [default: --connections
    /// over --h2-clients, so that as many requests are in flight as over
    /// HTTP/1.1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub h2_streams: Option<u32>,
    /// The h2load binary [default: h2load from PATH].
    #[arg(long, value_name = "PATH")]
    pub h2load: Option<PathBuf>,
    /// The openssl binary, for the readiness probe [default: openssl from
    /// PATH].
    #[arg(long, value_name = "PATH")]
    pub openssl: Option<PathBuf>,
}

impl HttpsArgs {
    /// The scenario's defaults with `common` (for `all`).
    pub fn with(common: CommonArgs) -> Self {
        Self {
            common,
            h2_clients: None,
            h2_streams: None,
            h2load: None,
            openssl: None,
        }
    }
}

/// h2load's connections and streams: `clients` connections (at most the
/// requests in flight) and enough streams on each to have `in_flight`
/// requests in flight in all.
fn h2_shape(in_flight: u32, clients: Option<u32>, streams: Option<u32>, smoke: bool) -> (u32, u32) {
    let clients = clients.unwrap_or(if smoke { 2 } else { 4 });
    let streams = streams.unwrap_or_else(|| (in_flight / clients.max(1)).max(1));
    (clients, streams)
}

/// Ready: a request over TLS, verified for `HOST` against the run's CA,
/// answered with 200 and the origin's body.
fn https_ready(openssl: &Path, addr: SocketAddr, ca: &Path) -> Result<()> {
    let response = openssl::https_get(openssl, addr, ca, HOST, "/")?;
    let status = response
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .unwrap_or_default();
    let ok = status.split_whitespace().nth(1) == Some("200");
    if !ok || !response.windows(MARKER.len()).any(|w| w == MARKER) {
        bail!("answered {status:?} over TLS for {HOST}, not the origin's body");
    }
    Ok(())
}

/// A few h2 requests, which must be answered over h2 with 2xx.
fn h2_ready(h2: &H2Load, kind: TargetKind, addr: SocketAddr) -> Result<()> {
    let probe = H2Load {
        clients: 1,
        streams: 1,
        ..h2.clone()
    };
    let r = probe
        .run(addr, 1)
        .with_context(|| format!("{kind}: h2 probe"))?;
    if r.protocol.as_deref() != Some("h2") {
        bail!(
            "{kind} did not negotiate h2 with h2load (application protocol {:?})",
            r.protocol
        );
    }
    if r.status_2xx == 0 || r.status_other > 0 || r.failed > 0 {
        bail!(
            "{kind}: h2 probe got {} 2xx, {} other, {} failed",
            r.status_2xx,
            r.status_other,
            r.failed
        );
    }
    Ok(())
}

/// Starts `kind` on HTTPS with `certs`, routing [`HOST`] to `origin`, and
/// waits until it is ready over HTTP/1.1 and h2.
fn start(
    bench: &Bench,
    kind: TargetKind,
    sessiongate: &Path,
    certs: &CertPair,
    openssl: &Path,
    h2: &H2Load,
) -> Result<Running> {
    let ca = certs.dir.join("ca.crt");
    let ready = |addr| https_ready(openssl, addr, &ca);
    let dir = bench.subdir("https", kind)?;
    let origin = bench.origin.addr;
    let mut target = match kind {
        TargetKind::Sessiongate => {
            targets::sessiongate_https(sessiongate, &dir, origin, certs, HOST, ready)?
        }
        TargetKind::Nginx => {
            let binary = bench
                .tools
                .nginx
                .as_deref()
                .context("nginx: binary not resolved")?;
            targets::nginx_https(binary, &dir, origin, certs, ready)?
        }
        other => bail!("{other} is not measured in this scenario"),
    };
    h2_ready(h2, kind, target.addr)?;
    let idle_rss_kib = match target.proc.as_mut() {
        Some(p) => Some(p.rss_kib()?),
        None => None,
    };
    eprintln!(
        "{kind} ready at https://{} (HTTP/1.1 and h2){}",
        target.addr,
        idle_rss_kib
            .map(|k| format!(", idle RSS {}", report::fmt_mib(k)))
            .unwrap_or_default()
    );
    Ok(Running {
        target,
        idle_rss_kib,
    })
}

/// Runs the scenario. Returns the problems that must fail the run.
pub fn run(args: HttpsArgs) -> Result<Vec<String>> {
    let bench = Bench::setup(&args.common, &TARGETS, &TARGETS)?;
    let h2load = tool(&args.h2load, "h2load", "apt-get install -y nghttp2-client")?;
    let openssl = tool(&args.openssl, "openssl", "apt-get install -y openssl")?;
    // Needed even without the sessiongate target: it makes the certificate.
    let sessiongate = absolute(
        &args
            .common
            .sessiongate
            .clone()
            .unwrap_or_else(crate::default_sessiongate_path),
    );
    if !sessiongate.is_file() {
        bail!(
            "sessiongate binary not found at {}: build it first with \
             `cargo build --profile dist -p control-plane` or point at it with --sessiongate PATH \
             (it also makes the certificate both servers use)",
            sessiongate.display()
        );
    }
    let certs = make_certificate(&sessiongate, bench.dir.path())?;
    eprintln!(
        "certificate {} for {DOMAIN} and *.{DOMAIN}",
        certs.cert().display()
    );
    let (clients, streams) = h2_shape(
        bench.plan.connections,
        args.h2_clients,
        args.h2_streams,
        bench.plan.smoke,
    );
    let h2 = H2Load {
        program: h2load,
        clients,
        streams,
        authority: HOST.into(),
    };

    let mut running: Vec<Running> = Vec::new();
    for &kind in &bench.plan.targets {
        running.push(start(&bench, kind, &sessiongate, &certs, &openssl, &h2)?);
    }
    let h1 = Traffic::Http(Load {
        host: Some(HOST.into()),
        https: true,
        body_len: origin::BODY_LEN,
        ..Load::default()
    });
    let mut runs: Vec<Run> = Vec::new();
    for (case, traffic) in [(H1, h1), (H2, Traffic::H2(h2))] {
        for target in 0..running.len() {
            runs.push(Run {
                case: case.into(),
                target,
                load: traffic.clone(),
                churn: None,
            });
        }
    }
    let samples = bench.rounds(&mut running, &runs)?;
    let judge = |s: &[Summary]| Judged {
        lines: [H1, H2]
            .iter()
            .map(|case| vs_nginx_check(&HTTPS, case, s, VS_NGINX).line())
            .collect(),
        rows: [H1, H2]
            .iter()
            .map(|case| {
                let mut row = vs_nginx_row(&HTTPS, case, s, VS_NGINX);
                row.target = format!("req/s ≥ {VS_NGINX:.1}x nginx");
                row
            })
            .collect(),
    };
    let problems = bench.finish(&HTTPS, &mut running, &runs, &samples, judge, &[])?;
    drop(running);
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_keeps_as_many_requests_in_flight_as_wrk() {
        assert_eq!(h2_shape(32, None, None, false), (4, 8));
        assert_eq!(h2_shape(4, None, None, true), (2, 2));
        assert_eq!(h2_shape(2, Some(4), None, false), (4, 1));
        assert_eq!(h2_shape(32, Some(1), Some(100), false), (1, 100));
    }
}
