//! The `instructions` scenario: instructions per proxied request, counted
//! by callgrind, for sessiongate and for nginx (one process, `master_process
//! off`) under the same load. An instruction count does not depend on how
//! busy the machine is, so the figure and its ratio to nginx can be tracked
//! from run to run where requests per second cannot.
//!
//! Each proxy runs alone under `valgrind --tool=callgrind` (through a small
//! wrapper script that [`crate::targets`] starts as if it were the binary,
//! so the process started is the one counted), with one route to the
//! harness's origin, as in `keepalive`. Then: an unmeasured warm-up, the
//! counters zeroed (`callgrind_control -z`), a fixed number of requests
//! from wrk (a Lua script ends wrk after that many responses), the counters
//! dumped (`callgrind_control -d`) and their total read. Instructions per
//! request are that total over the responses. Without `--smoke`, the
//! counters are then dumped again after as long idle, which shows how much
//! of the figure is background work rather than requests. sessiongate's
//! profile (the functions that execute the most instructions themselves,
//! and its own functions by inclusive instructions, read from the dump) is
//! printed, not written.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::procs::check_interrupted;
use crate::report;
use crate::side_by_side::{self, markers, write_section, Bench, CommonArgs};
use crate::targets::{self, Routes, Target, TargetKind};
use crate::wrk::HOST;

/// The issue's target: at most this many instructions per proxied request.
const TARGET_IR_PER_REQUEST: f64 = 25_000.0;

/// The targets this scenario measures.
const TARGETS: [TargetKind; 2] = [TargetKind::Sessiongate, TargetKind::Nginx];

const NAME: &str = "instructions";
const TITLE: &str = "Instructions per proxied request (callgrind)";

/// The callgrind options every proxy runs with (the output file comes
/// after them).
const CALLGRIND_FLAGS: [&str; 4] = [
    "--tool=callgrind",
    "--dump-instr=no",
    "--collect-atstart=yes",
    // Every thread's instructions in one total (sessiongate is a
    // multi-threaded tokio program; callgrind runs its threads one at a
    // time).
    "--separate-threads=no",
];

/// The line the Lua script prints: successful (200) and other responses.
const RESPONSES_LINE: &str = "bench-lua responses:";

const TEXT: &str = "\
Instructions (callgrind's `Ir`: user-space instructions executed, all
threads) per proxied request, for sessiongate and for nginx under the same
load: 128-byte responses over keep-alive connections, one route (`Host:
app.localhost`) to the harness's origin, as in `keepalive`. An instruction
count does not depend on how busy the machine is: this is the figure to
track from run to run on a shared machine, where requests per second are
noise. Each proxy runs alone under callgrind (about 50 times slower than
natively, hence the light load); nginx as one process (`master_process
off`, so that the process started is the one that serves), otherwise
configured as in `keepalive`; sessiongate as it ships, its tokio runtime's
threads summed. After the warm-up the counters are zeroed, wrk sends the
requests (its Lua script ends it after that many responses), and the
counters are dumped once the origin has seen the last request: `Ir per
request` is that total over the responses. What the kernel does for each
proxy's system calls is not counted, nor is the origin or wrk. The idle
column is the same proxy's count over as long again with no load:
background work that the per-request figure includes.";

#[derive(Args, Clone, Debug)]
pub struct InstructionsArgs {
    /// Requests measured per target: wrk ends after this many responses.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Unmeasured requests through each proxy before the counters are
    /// zeroed (0: none).
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// wrk connections (-c); wrk uses one thread.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    connections: u32,
    /// The longest a measured wrk run may take; a run cut short counts the
    /// responses it got.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    max_seconds: u64,
    /// Functions of sessiongate's profile printed: the top by their own
    /// instructions, and sessiongate's own (its crates) by inclusive
    /// instructions (0: no profile).
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Also copy each target's callgrind dump into this directory
    /// (`callgrind.out.<target>`), for kcachegrind or callgrind_annotate.
    #[arg(long, value_name = "DIR")]
    keep_profiles: Option<PathBuf>,
    /// CI mode: 100 requests after 10 of warm-up, no idle measurement;
    /// fails only if a target served errors or a count is zero.
    #[arg(long, conflicts_with_all = ["requests", "warmup", "max_seconds"])]
    smoke: bool,
    /// Also write the report as the "instructions" section of this markdown
    /// file (the section is replaced, the rest of the file kept).
    #[arg(long, value_name = "PATH")]
    write: Option<PathBuf>,
    /// Targets to measure, comma-separated (sessiongate, nginx).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sessiongate,nginx"
    )]
    targets: Vec<TargetKind>,
    /// The sessiongate binary [default: the one beside this harness, built
    /// with the same profile].
    #[arg(long, value_name = "PATH")]
    sessiongate: Option<PathBuf>,
    /// The nginx binary [default: nginx from PATH or /usr/sbin].
    #[arg(long, value_name = "PATH")]
    nginx: Option<PathBuf>,
    /// The wrk binary [default: wrk from PATH].
    #[arg(long, value_name = "PATH")]
    wrk: Option<PathBuf>,
    /// The valgrind binary; callgrind_control is looked for beside it, then
    /// on PATH [default: valgrind from PATH].
    #[arg(long, value_name = "PATH")]
    valgrind: Option<PathBuf>,
}

/// The resolved run parameters (after `--smoke`).
struct Plan {
    requests: u64,
    warmup: u64,
    connections: u32,
    max_seconds: u64,
    idle: bool,
}

/// valgrind and its callgrind tools.
struct Callgrind {
    valgrind: PathBuf,
    control: PathBuf,
}

impl Callgrind {
    fn find(valgrind: Option<&Path>) -> Result<Self> {
        const INSTALL: &str = "install it with `apt-get install -y valgrind`";
        let valgrind = match valgrind {
            Some(path) if path.is_file() => side_by_side::absolute(path),
            Some(path) => bail!("valgrind not found at {}", path.display()),
            None => targets::find_program("valgrind")
                .with_context(|| format!("valgrind not found on PATH: {INSTALL}"))?,
        };
        let beside = |name: &str| -> Result<PathBuf> {
            valgrind
                .parent()
                .map(|dir| dir.join(name))
                .filter(|p| p.is_file())
                .or_else(|| targets::find_program(name))
                .with_context(|| {
                    format!(
                        "{name} (part of valgrind) not found beside {} or on PATH: {INSTALL}",
                        valgrind.display()
                    )
                })
        };
        Ok(Self {
            control: beside("callgrind_control")?,
            valgrind,
        })
    }

    /// `callgrind_control <flag> <pid>`, which must answer OK.
    fn control(&self, flag: &str, pid: u32) -> Result<()> {
        let out = Command::new(&self.control)
            .arg(flag)
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.control.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("OK") {
            bail!(
                "`callgrind_control {flag} {pid}` failed ({}):\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Zeroes the counters of `pid`.
    fn zero(&self, pid: u32) -> Result<()> {
        self.control("-z", pid)
    }

    /// Dumps the counters of `pid` (which zeroes them) and waits for the
    /// dump file, the `number`th of that process: `<out_prefix>.<pid>.<number>`.
    fn dump(&self, pid: u32, out_prefix: &Path, number: u32) -> Result<PathBuf> {
        self.control("-d", pid)?;
        let path = PathBuf::from(format!("{}.{pid}.{number}", out_prefix.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            check_interrupted()?;
            // Complete once the totals line, the last, is there.
            if let Ok(text) = fs::read_to_string(&path) {
                if text.lines().any(|l| l.starts_with("totals:")) {
                    return Ok(path);
                }
            }
            if Instant::now() > deadline {
                bail!("callgrind did not write {} within 60 s", path.display());
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// The `sh` script that runs `binary` under callgrind with its
    /// arguments, writing `<out_prefix>.<pid>.<n>` on every dump. Its `exec`
    /// keeps the pid the harness started, so that pid is the one counted.
    /// Runs with any of `passthrough` among its arguments (nginx's `-t` and
    /// `-s`) go to `binary` directly.
    fn wrapper(&self, binary: &Path, out_prefix: &Path, passthrough: &[&str]) -> String {
        let q = |p: &Path| report::shell_quote(&p.to_string_lossy());
        let mut s = String::from("#!/bin/sh\n# written by sessiongate's bench harness\n");
        if !passthrough.is_empty() {
            let _ = write!(
                s,
                "for arg in \"$@\"; do\n  case \"$arg\" in\n    {}) exec {} \"$@\" ;;\n  esac\ndone\n",
                passthrough.join("|"),
                q(binary)
            );
        }
        let _ = writeln!(
            s,
            "exec {} {} --callgrind-out-file={}.%p {} \"$@\"",
            q(&self.valgrind),
            CALLGRIND_FLAGS.join(" "),
            q(out_prefix),
            q(binary)
        );
        s
    }
}

/// One function of a profile.
#[derive(Debug, Clone, PartialEq)]
struct FunctionCost {
    /// The (demangled) name, with its object's file name where that is not
    /// the profiled program (`libc.so.6`).
    name: String,
    /// Instructions in the function itself.
    own: u64,
    /// Its own and those of every call it made (a recursive function's
    /// calls to itself count twice, as in callgrind_annotate).
    inclusive: u64,
}

/// The functions of a callgrind dump with their own and inclusive
/// instructions (the first event), unsorted.
///
/// Read here rather than with callgrind_annotate: the one of valgrind 3.19
/// counts the cost of a call still under way at the dump (`calls=0`) as the
/// caller's own, so every frame on a thread's stack (clone, the tokio
/// worker loop, …) shows the whole total as its self cost.
fn parse_profile(text: &str) -> Vec<FunctionCost> {
    use std::collections::HashMap;
    // Name compression: `fn=(12) name` defines 12, `fn=(12)` refers to it;
    // `cfn=` and `cob=` may define too.
    fn define(names: &mut HashMap<String, String>, rest: &str) -> String {
        let rest = rest.trim();
        match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, name)) => {
                let name = name.trim();
                if !name.is_empty() {
                    names.insert(id.to_owned(), name.to_owned());
                }
                id.to_owned()
            }
            None => {
                names.insert(rest.to_owned(), rest.to_owned());
                rest.to_owned()
            }
        }
    }
    let mut positions = 1;
    let mut program = String::new();
    let mut functions: HashMap<String, String> = HashMap::new();
    let mut objects: HashMap<String, String> = HashMap::new();
    // (object id, function id) -> (own, inclusive calls)
    let mut costs: HashMap<(String, String), (u64, u64)> = HashMap::new();
    let (mut object, mut function) = (String::new(), String::new());
    let mut call_cost_next = false;
    for line in text.lines() {
        let first = line.chars().next().unwrap_or(' ');
        let is_cost = first.is_ascii_digit() || matches!(first, '+' | '-' | '*');
        if call_cost_next {
            call_cost_next = false;
            if is_cost {
                let ir = cost_of(line, positions);
                costs
                    .entry((object.clone(), function.clone()))
                    .or_default()
                    .1 += ir;
                continue;
            }
        }
        if is_cost {
            let ir = cost_of(line, positions);
            costs
                .entry((object.clone(), function.clone()))
                .or_default()
                .0 += ir;
        } else if let Some(rest) = line.strip_prefix("fn=") {
            function = define(&mut functions, rest);
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            define(&mut functions, rest);
        } else if let Some(rest) = line.strip_prefix("ob=") {
            object = define(&mut objects, rest);
        } else if let Some(rest) = line.strip_prefix("cob=") {
            define(&mut objects, rest);
        } else if line.starts_with("calls=") {
            call_cost_next = true;
        } else if let Some(rest) = line.strip_prefix("positions:") {
            positions = rest.split_whitespace().count().max(1);
        } else if let Some(rest) = line.strip_prefix("cmd:") {
            program = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    }
    let file_name = |path: &str| path.rsplit('/').next().unwrap_or(path).to_owned();
    let program = file_name(&program);
    let mut merged: HashMap<String, (u64, u64)> = HashMap::new();
    for ((ob, func), (own, calls)) in costs {
        let name = functions
            .get(&func)
            .cloned()
            .unwrap_or_else(|| format!("({func})"));
        let ob = objects.get(&ob).map(|o| file_name(o)).unwrap_or_default();
        let name = if ob.is_empty() || ob == program {
            name
        } else {
            format!("{name} [{ob}]")
        };
        let entry = merged.entry(name).or_default();
        entry.0 += own;
        entry.1 += own + calls;
    }
    merged
        .into_iter()
        .map(|(name, (own, inclusive))| FunctionCost {
            name,
            own,
            inclusive,
        })
        .collect()
}

/// The first event of a cost line: the number after the position(s).
fn cost_of(line: &str, positions: usize) -> u64 {
    line.split_whitespace()
        .nth(positions)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The top `n` by own instructions, and the top `n` of sessiongate's own
/// code (its workspace crates) by inclusive instructions: what the runtime
/// and the libraries cost shows in the first, where sessiongate's request
/// path spends in the second.
fn top_functions(mut all: Vec<FunctionCost>, n: usize) -> (Vec<FunctionCost>, Vec<FunctionCost>) {
    let ours = |f: &FunctionCost| {
        ["gateway::", "control_plane::", "certs::"]
            .iter()
            .any(|c| f.name.contains(c))
    };
    all.sort_by(|a, b| {
        b.inclusive
            .cmp(&a.inclusive)
            .then_with(|| a.name.cmp(&b.name))
    });
    let inclusive: Vec<FunctionCost> = all.iter().filter(|f| ours(f)).take(n).cloned().collect();
    all.sort_by(|a, b| b.own.cmp(&a.own).then_with(|| a.name.cmp(&b.name)));
    all.truncate(n);
    (all, inclusive)
}

/// The event total of a callgrind dump: its `summary:` line, else its
/// `totals:` line.
fn dump_total(text: &str) -> Option<u64> {
    let find = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    find("summary:").or_else(|| find("totals:"))
}

/// The wrk Lua script: counts responses (200 and others) and ends wrk once
/// it has as many as its first argument (`wrk … URL -- N`), printing the
/// counts; if wrk's duration ends first, `done` prints them.
const RESPONSES_SCRIPT: &str = r#"-- written by sessiongate's bench harness
local limit = 0
ok = 0
other = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  limit = tonumber(args[1]) or 0
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
  if limit > 0 and ok + other >= limit then
    io.write(string.format("LINE %d %d\n", ok, other))
    io.flush()
    os.exit(0)
  end
end

function done(summary, latency, requests)
  local o, x = 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok")
    x = x + t:get("other")
  end
  io.write(string.format("LINE %d %d\n", o, x))
end
"#;

/// What one wrk run got.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Responses {
    ok: u64,
    other: u64,
    /// wrk's duration ended before the count was reached.
    cut_short: bool,
    /// wrk's socket errors, when it printed its report.
    socket_errors: u64,
}

impl Responses {
    fn total(&self) -> u64 {
        self.ok + self.other
    }
}

/// Reads the script's counts (and, when wrk ended by itself, its socket
/// errors) from wrk's output.
fn parse_responses(stdout: &str) -> Result<Responses> {
    let line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(RESPONSES_LINE))
        .with_context(|| format!("no {RESPONSES_LINE:?} line in wrk's output:\n{stdout}"))?;
    let mut n = line.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(ok)), Some(Ok(other))) = (n.next(), n.next()) else {
        bail!("unreadable {RESPONSES_LINE:?} line in wrk's output: {line:?}");
    };
    let cut_short = stdout.contains(" requests in ");
    let socket_errors = if cut_short {
        crate::wrk::parse(stdout).map_or(0, |r| r.socket_errors())
    } else {
        0
    };
    Ok(Responses {
        ok,
        other,
        cut_short,
        socket_errors,
    })
}

/// `wrk -t1 -c<connections> -d<max>s --latency` against `addr` until
/// `count` responses.
fn run_wrk(
    wrk: &Path,
    script: &Path,
    addr: std::net::SocketAddr,
    connections: u32,
    count: u64,
    max_seconds: u64,
) -> Result<Responses> {
    let mut child = Command::new(wrk)
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{max_seconds}s"))
        // For the report wrk prints if its duration ends first.
        .arg("--latency")
        .arg("-H")
        .arg(format!("Host: {HOST}"))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}/"))
        .arg("--")
        .arg(count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", wrk.display()))?;
    // Poll, so that an interruption ends the run promptly. The output is a
    // few hundred bytes: it cannot fill the pipe.
    let deadline = Instant::now() + Duration::from_secs(max_seconds + 30);
    loop {
        if child.try_wait().context("waiting for wrk")?.is_some() {
            break;
        }
        let interrupted = check_interrupted().is_err();
        if interrupted || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted()?;
            bail!("wrk ran past its {max_seconds}s duration by 30s; killed it");
        }
        sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().context("reading wrk's output")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}) against {addr}:\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_responses(&stdout)
}

/// Waits until the origin's request count has stayed still for a while, so
/// that a request still under way through the proxy when wrk ended is not
/// split between two measurements.
fn settle(bench: &Bench) -> Result<u64> {
    let still = Duration::from_millis(500);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = bench.origin.counts().requests;
    let mut since = Instant::now();
    while Instant::now() < deadline {
        check_interrupted()?;
        sleep(Duration::from_millis(50));
        let now = bench.origin.counts().requests;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= still {
            break;
        }
    }
    Ok(last)
}

/// What was measured on one target.
struct Measured {
    kind: TargetKind,
    responses: Responses,
    /// Requests the origin saw during the measured run.
    origin_requests: u64,
    ir: u64,
    wall: Duration,
    /// Instructions over as long again with no load.
    idle_ir: Option<u64>,
    config: Option<(String, String)>,
    /// The top functions by own instructions, and sessiongate's own by
    /// inclusive ones (sessiongate only; see [`top_functions`]).
    profile: Option<(Vec<FunctionCost>, Vec<FunctionCost>)>,
    started_in: Duration,
}

impl Measured {
    fn ir_per_request(&self) -> Option<f64> {
        (self.responses.total() > 0).then(|| self.ir as f64 / self.responses.total() as f64)
    }

    /// What makes the figures wrong: errors, zero counts, requests that
    /// never reached the origin.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let r = &self.responses;
        if r.total() == 0 {
            out.push("zero responses".into());
        }
        if self.ir == 0 {
            out.push("zero instructions counted".into());
        }
        if r.other > 0 {
            out.push(format!("{} responses other than 200", r.other));
        }
        if r.socket_errors > 0 {
            out.push(format!("{} socket errors", r.socket_errors));
        }
        if self.origin_requests < r.ok {
            out.push(format!(
                "{} responses the origin never saw",
                r.ok - self.origin_requests
            ));
        }
        out
    }
}

pub fn run(args: InstructionsArgs) -> Result<Vec<String>> {
    let targets_wanted = side_by_side::pick_targets(&args.targets, &TARGETS)?;
    let plan = if args.smoke {
        Plan {
            requests: 100,
            warmup: 10,
            connections: args.connections,
            max_seconds: 120,
            idle: false,
        }
    } else {
        Plan {
            requests: args.requests,
            warmup: args.warmup,
            connections: args.connections,
            max_seconds: args.max_seconds,
            idle: true,
        }
    };
    // Everything that can be missing is checked before anything starts.
    let callgrind = Callgrind::find(args.valgrind.as_deref())?;
    if let Some(dir) = &args.keep_profiles {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let common = CommonArgs {
        smoke: args.smoke,
        targets: Some(targets_wanted.clone()),
        sessiongate: args.sessiongate.clone(),
        nginx: args.nginx.clone(),
        wrk: args.wrk.clone(),
        write: args.write.clone(),
        origin_threads: 2,
        ..CommonArgs::default()
    };
    let bench = Bench::setup(&common, &TARGETS, &TARGETS)?;
    let script = bench.dir.path().join("responses.lua");
    fs::write(&script, RESPONSES_SCRIPT.replace("LINE", RESPONSES_LINE))
        .with_context(|| format!("writing {}", script.display()))?;

    let mut measured: Vec<Measured> = Vec::new();
    for &kind in &targets_wanted {
        check_interrupted()?;
        let m = measure(
            &bench,
            &callgrind,
            &plan,
            kind,
            &script,
            args.top,
            args.keep_profiles.as_deref(),
        )
        .with_context(|| format!("measuring {kind} under callgrind"))?;
        measured.push(m);
    }

    let nginx_ir = measured
        .iter()
        .find(|m| m.kind == TargetKind::Nginx)
        .and_then(Measured::ir_per_request);
    let table = summary_table(&measured, nginx_ir);
    let lines = summary_lines(&measured, nginx_ir);
    println!();
    print!("{table}");
    println!();
    for line in &lines {
        println!("{line}");
    }
    for m in &measured {
        if let Some((own, inclusive)) = &m.profile {
            let n = m.responses.total();
            println!(
                "\n{} profile: the top {} functions by their own instructions\n",
                m.kind, args.top
            );
            print!("{}", profile_table(own, n, m.ir, false));
            println!(
                "\n{} profile: its own functions (gateway, control_plane, certs), the top {} by \
                 inclusive instructions\n",
                m.kind, args.top
            );
            print!("{}", profile_table(inclusive, n, m.ir, true));
        }
    }

    if let Some(path) = bench.write_path() {
        let section = written_section(&bench, &callgrind, &plan, &measured, &table, &lines);
        let (begin, end) = markers(NAME);
        write_section(
            path,
            &begin,
            &end,
            &section,
            &[summary_row(&measured, nginx_ir)],
        )?;
        eprintln!("wrote the {TITLE} section of {}", path.display());
    }

    Ok(measured
        .iter()
        .flat_map(|m| {
            m.problems()
                .into_iter()
                .map(move |p| format!("{}: {p}", m.kind))
        })
        .collect())
}

/// Starts `kind` under callgrind, warms it up, measures the run (and the
/// idle time after it), reads the profile; stops it.
fn measure(
    bench: &Bench,
    callgrind: &Callgrind,
    plan: &Plan,
    kind: TargetKind,
    script: &Path,
    top: usize,
    keep: Option<&Path>,
) -> Result<Measured> {
    let dir = bench.subdir("callgrind", kind)?;
    let out_prefix = dir.join("callgrind.out");
    let (binary, passthrough): (&Option<PathBuf>, &[&str]) = match kind {
        TargetKind::Sessiongate => (&bench.tools.sessiongate, &[]),
        // `nginx -t` checks the configuration, `nginx -s quit` stops it:
        // neither is measured.
        TargetKind::Nginx => (&bench.tools.nginx, &["-t", "-s"]),
        other => bail!("{other} is not measured in this scenario"),
    };
    let binary = binary
        .as_deref()
        .with_context(|| format!("{kind}: binary not resolved"))?;
    let wrapper = dir.join(format!("{kind}-under-callgrind.sh"));
    fs::write(
        &wrapper,
        callgrind.wrapper(binary, &out_prefix, passthrough),
    )
    .with_context(|| format!("writing {}", wrapper.display()))?;
    make_executable(&wrapper)?;

    let start = Instant::now();
    let origin = bench.origin.addr;
    let routes = Routes::one();
    let mut target: Target = match kind {
        TargetKind::Sessiongate => targets::sessiongate(&wrapper, &dir, origin, &routes)?,
        _ => targets::nginx_single_process(&wrapper, &dir, origin, &routes)?,
    };
    let started_in = start.elapsed();
    let pid = target
        .proc
        .as_ref()
        .map(|p| p.pid())
        .context("a proxy without a process")?;
    eprintln!(
        "{kind} ready under callgrind at {} (pid {pid}) after {:.1} s",
        target.addr,
        started_in.as_secs_f64()
    );
    let wrk = &bench.tools.wrk;
    if plan.warmup > 0 {
        eprintln!("{kind}: warm-up, {} requests", plan.warmup);
        let r = run_wrk(
            wrk,
            script,
            target.addr,
            plan.connections,
            plan.warmup,
            plan.max_seconds,
        )
        .context("warm-up")?;
        if r.total() == 0 {
            bail!("no response during the warm-up");
        }
    }
    let before = settle(bench)?;
    callgrind.zero(pid)?;
    eprintln!(
        "{kind}: counters zeroed; {} requests, {} connections",
        plan.requests, plan.connections
    );
    let run_start = Instant::now();
    let responses = run_wrk(
        wrk,
        script,
        target.addr,
        plan.connections,
        plan.requests,
        plan.max_seconds,
    )?;
    let after = settle(bench)?;
    let wall = run_start.elapsed();
    let dump = callgrind.dump(pid, &out_prefix, 1)?;
    let text = fs::read_to_string(&dump).with_context(|| format!("reading {}", dump.display()))?;
    let ir =
        dump_total(&text).with_context(|| format!("no summary or totals in {}", dump.display()))?;
    eprintln!(
        "{kind}: {} responses ({} other than 200){} in {:.1} s, {ir} instructions, {} per request",
        responses.total(),
        responses.other,
        if responses.cut_short {
            ", cut short"
        } else {
            ""
        },
        wall.as_secs_f64(),
        fmt_ir_per(ir, responses.total())
    );
    if let Some(keep) = keep {
        // The temp dir, and the dump in it, go at the end of the run.
        let kept = keep.join(format!("callgrind.out.{}", kind.name()));
        fs::copy(&dump, &kept)
            .with_context(|| format!("copying {} to {}", dump.display(), kept.display()))?;
        eprintln!("{kind}: callgrind dump kept as {}", kept.display());
    }
    let idle_ir = if plan.idle {
        eprintln!("{kind}: idle for {:.1} s", wall.as_secs_f64());
        let until = Instant::now() + wall;
        while Instant::now() < until {
            check_interrupted()?;
            sleep(Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())));
        }
        let idle = callgrind.dump(pid, &out_prefix, 2)?;
        let text =
            fs::read_to_string(&idle).with_context(|| format!("reading {}", idle.display()))?;
        Some(
            dump_total(&text)
                .with_context(|| format!("no summary or totals in {}", idle.display()))?,
        )
    } else {
        None
    };
    let profile = (top > 0 && kind == TargetKind::Sessiongate)
        .then(|| top_functions(parse_profile(&text), top));
    if let Some(p) = target.proc.as_mut() {
        p.ensure_running()?;
    }
    Ok(Measured {
        kind,
        responses,
        origin_requests: after.saturating_sub(before),
        ir,
        wall,
        idle_ir,
        config: target.config.take(),
        profile,
        started_in,
    })
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// `ir / requests`, rounded, with thousands separators.
fn fmt_ir_per(ir: u64, requests: u64) -> String {
    if requests == 0 {
        return "–".into();
    }
    thousands((ir as f64 / requests as f64).round() as u64)
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn summary_table(measured: &[Measured], nginx_ir: Option<f64>) -> String {
    let mut t = String::from(
        "| target | requests | Ir (total) | Ir per request | idle Ir, as long again | errors |\n\
         |---|---:|---:|---:|---:|---|\n",
    );
    for m in measured {
        let per = m.ir_per_request();
        let per_cell = match (per, report::ratio(per, nginx_ir)) {
            (Some(p), Some(r)) if m.kind != TargetKind::Nginx => {
                format!("{} ({r:.2}x)", thousands(p.round() as u64))
            }
            (Some(p), _) => thousands(p.round() as u64),
            (None, _) => "–".into(),
        };
        let idle = m.idle_ir.map_or("–".into(), |i| {
            format!(
                "{} ({:.1}% of the run's)",
                thousands(i),
                i as f64 * 100.0 / m.ir.max(1) as f64
            )
        });
        let problems = m.problems();
        let errors = if problems.is_empty() {
            "0".into()
        } else {
            format!("**FLAGGED** ({})", problems.join(", "))
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {per_cell} | {idle} | {errors} |",
            m.kind,
            thousands(m.responses.total()),
            thousands(m.ir),
        );
    }
    t
}

/// The ratio and the target check.
fn summary_lines(measured: &[Measured], nginx_ir: Option<f64>) -> Vec<String> {
    let sg = measured
        .iter()
        .find(|m| m.kind == TargetKind::Sessiongate)
        .and_then(Measured::ir_per_request);
    let mut lines = Vec::new();
    if let Some(r) = report::ratio(sg, nginx_ir) {
        lines.push(format!(
            "sessiongate / nginx: instructions per request {r:.2}x (lower is better)"
        ));
    }
    lines.push(
        crate::side_by_side::Check {
            what: format!(
                "instructions: sessiongate Ir per proxied request <= {}",
                thousands(TARGET_IR_PER_REQUEST as u64)
            ),
            met: sg.map(|s| s <= TARGET_IR_PER_REQUEST),
            detail: report::fmt_opt(sg, |s| thousands(s.round() as u64)),
        }
        .line(),
    );
    for m in measured.iter().filter(|m| m.responses.cut_short) {
        lines.push(format!(
            "{}: wrk's duration ended before the requests were done; the figure is over the {} it got",
            m.kind,
            m.responses.total()
        ));
    }
    lines
}

/// The summary row: instructions per request of both, the ratio, the
/// target; a flagged sessiongate run does not meet it.
fn summary_row(measured: &[Measured], nginx_ir: Option<f64>) -> crate::results::Row {
    let sg = measured.iter().find(|m| m.kind == TargetKind::Sessiongate);
    let sg_ir = sg.and_then(Measured::ir_per_request);
    let figure = |ir: Option<f64>| {
        report::fmt_opt(ir, |i| {
            format!("{} instructions/request", thousands(i.round() as u64))
        })
    };
    let mut row = crate::results::Row::new(NAME, "");
    row.sessiongate = figure(sg_ir);
    row.peer = format!("nginx: {}", figure(nginx_ir));
    row.ratio = crate::results::times(report::ratio(sg_ir, nginx_ir));
    row.met = sg_ir.map(|s| s <= TARGET_IR_PER_REQUEST);
    if let Some(m) = sg.filter(|m| !m.problems().is_empty()) {
        row.met = Some(false);
        row.note = format!("FLAGGED: {}", m.problems().join(", "));
    }
    row
}

/// A profile's functions: own and inclusive instructions per request,
/// the share of the total of the one they are sorted by, the name
/// (shortened past [`NAME_CHARS`]).
fn profile_table(functions: &[FunctionCost], requests: u64, total: u64, inclusive: bool) -> String {
    let mut t = format!(
        "| own Ir/request | inclusive Ir/request | {} share | function |\n|---:|---:|---:|---|\n",
        if inclusive { "inclusive" } else { "own" }
    );
    for f in functions {
        let sorted_by = if inclusive { f.inclusive } else { f.own };
        let _ = writeln!(
            t,
            "| {} | {} | {:.1}% | `{}` |",
            fmt_ir_per(f.own, requests),
            fmt_ir_per(f.inclusive, requests),
            sorted_by as f64 * 100.0 / total.max(1) as f64,
            shorten(&f.name, NAME_CHARS)
        );
    }
    t
}

/// The longest function name the profile tables print.
const NAME_CHARS: usize = 160;

/// `name` cut to `max` characters, `…` marking the cut.
fn shorten(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_owned();
    }
    let mut out: String = name.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn written_section(
    bench: &Bench,
    callgrind: &Callgrind,
    plan: &Plan,
    measured: &[Measured],
    table: &str,
    lines: &[String],
) -> String {
    let command: Vec<String> = std::env::args().map(|a| report::shell_quote(&a)).collect();
    let mut r = report::section_head(TITLE, bench.load_before(), &side_by_side::load_average());
    for line in bench.tools.versions() {
        let _ = writeln!(r, "- {line}");
    }
    let valgrind = report::version_line(&callgrind.valgrind.to_string_lossy(), &["--version"])
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(
        r,
        "- valgrind: {valgrind}, each proxy run as `valgrind {} --callgrind-out-file=DIR/callgrind.out.%p PROXY ARGS`",
        CALLGRIND_FLAGS.join(" ")
    );
    if let Some(commit) =
        report::source_commit(&["bench/src", "bench/Cargo.toml", "gateway", "control-plane"])
    {
        let _ = writeln!(r, "- Source: commit {commit}");
    }
    let _ = writeln!(r, "- Command: `{}`", command.join(" "));
    let _ = writeln!(
        r,
        "- Load: `wrk -t1 -c{} --latency -H 'Host: {HOST}' -s responses.lua http://ADDR/ -- {}` (the script \
         ends wrk after {} responses), after {} unmeasured requests; one target at a time",
        plan.connections, plan.requests, plan.requests, plan.warmup
    );
    let starts: Vec<String> = measured
        .iter()
        .map(|m| {
            format!(
                "{} ready after {:.1} s, {} requests measured in {:.1} s",
                m.kind,
                m.started_in.as_secs_f64(),
                m.responses.total(),
                m.wall.as_secs_f64()
            )
        })
        .collect();
    let _ = writeln!(r, "- Under callgrind: {}", starts.join("; "));
    let _ = writeln!(r, "\n{}", TEXT.trim_end());
    let _ = writeln!(r, "\n### Summary\n");
    let _ = writeln!(r, "{table}");
    for line in lines {
        let _ = writeln!(r, "- {line}");
    }
    let _ = writeln!(
        r,
        "\nsessiongate's profile (the top functions by their own instructions, and its own \
         functions by inclusive instructions) is printed by the run, not written here; \
         `--keep-profiles DIR` keeps the callgrind dumps.\n"
    );
    let _ = writeln!(r, "### Configurations\n");
    for m in measured {
        if let Some((name, text)) = &m.config {
            let _ = writeln!(r, "{}", report::config_details(m.kind, name, text));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_of_a_dump() {
        let text = "version: 1\ncmd: nginx\nevents: Ir\nsummary: 7292245\n\nfn=(1) x\n5 10\ntotals: 7292638\n";
        assert_eq!(dump_total(text), Some(7_292_245));
        assert_eq!(dump_total("events: Ir\ntotals: 12\n"), Some(12));
        assert_eq!(dump_total("events: Ir\n"), None);
    }

    /// A dump shaped as callgrind 3.19 writes one mid-run: name
    /// compression, inlined files, a call still under way (`calls=0`).
    const DUMP: &str = "\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 7
cmd:  /x/sessiongate serve --config /t/s.toml
part: 1

positions: line
events: Ir
summary: 1000

ob=(1) /x/sessiongate
fl=(1) src/proxy.rs
fn=(1) gateway::proxy::handle
10 100
fi=(2) src/inline.rs
+2 50
fe=(1)
cfi=(3) /lib/memcpy.S
cob=(2) /usr/lib/libc.so.6
cfn=(2) memcpy
calls=3 +1
* 200
* 10

ob=(2)
fl=(3)
fn=(2)
5 200

ob=(3) /usr/lib/libc.so.6
fl=(4) clone.S
fn=(3) clone
cob=(1)
cfi=(1)
cfn=(1)
calls=0 10
100 360
totals: 560
";

    #[test]
    fn profiles_count_own_and_inclusive() {
        let mut p = parse_profile(DUMP);
        p.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            p,
            vec![
                FunctionCost {
                    name: "clone [libc.so.6]".into(),
                    own: 0,
                    inclusive: 360,
                },
                FunctionCost {
                    name: "gateway::proxy::handle".into(),
                    own: 160,
                    inclusive: 360,
                },
                FunctionCost {
                    name: "memcpy [libc.so.6]".into(),
                    own: 200,
                    inclusive: 200,
                },
            ]
        );
        let (own, ours) = top_functions(p, 2);
        assert_eq!(own[0].name, "memcpy [libc.so.6]");
        assert_eq!(own[1].name, "gateway::proxy::handle");
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].name, "gateway::proxy::handle");
        let table = profile_table(&own, 10, 560, false);
        assert!(
            table.contains("| 20 | 20 | 35.7% | `memcpy [libc.so.6]` |"),
            "{table}"
        );
    }

    #[test]
    fn long_names_are_cut() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
    }

    #[test]
    fn responses_from_wrk() -> Result<()> {
        let early = format!("Running 10m test @ http://127.0.0.1:1/\n  1 threads and 2 connections\n{RESPONSES_LINE} 5000 0\n");
        let r = parse_responses(&early)?;
        assert_eq!((r.ok, r.other, r.cut_short), (5000, 0, false));
        let late = format!(
            "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 2 connections\n\
             \x20 Latency Distribution\n     50%  1.00ms\n     99%  2.00ms\n\
             \x20 120 requests in 1.00s, 20.00KB read\n  Socket errors: connect 0, read 1, write 0, timeout 0\n\
             Requests/sec:    120.00\nTransfer/sec:     20.00KB\n{RESPONSES_LINE} 119 1\n"
        );
        let r = parse_responses(&late)?;
        assert_eq!((r.ok, r.other, r.cut_short), (119, 1, true));
        assert_eq!(r.total(), 120);
        assert!(parse_responses("Running 1s test\n").is_err());
        assert!(parse_responses(&format!("{RESPONSES_LINE} x 1\n")).is_err());
        Ok(())
    }

    #[test]
    fn the_script_prints_the_marker() {
        let lua = RESPONSES_SCRIPT.replace("LINE", RESPONSES_LINE);
        assert_eq!(lua.matches(RESPONSES_LINE).count(), 2);
        assert!(lua.contains("os.exit(0)"));
        assert!(!lua.contains("LINE"));
    }

    #[test]
    fn wrapper_scripts() {
        let cg = Callgrind {
            valgrind: "/usr/bin/valgrind".into(),
            control: "/usr/bin/callgrind_control".into(),
        };
        let s = cg.wrapper(
            Path::new("/usr/sbin/nginx"),
            Path::new("/tmp/a b/callgrind.out"),
            &["-t", "-s"],
        );
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("    -t|-s) exec /usr/sbin/nginx \"$@\" ;;\n"));
        assert!(s.ends_with(
            "exec /usr/bin/valgrind --tool=callgrind --dump-instr=no --collect-atstart=yes \
             --separate-threads=no --callgrind-out-file='/tmp/a b/callgrind.out'.%p /usr/sbin/nginx \"$@\"\n"
        ));
        let s = cg.wrapper(Path::new("/x/sessiongate"), Path::new("/t/o"), &[]);
        assert!(!s.contains("case"));
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(fmt_ir_per(50_000, 4), "12,500");
        assert_eq!(fmt_ir_per(1, 0), "–");
    }
}
