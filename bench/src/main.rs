//! `sockeye-bench`: runs every measure side by side with its baseline, servers and loads in separate
//! processes, pinned to one core (`taskset -c 0`) and unpinned; prints one table of ratios and writes
//! `results.json`, `REPORT.md` and `plots/*.svg` into the output directory. Run it through
//! `scripts/bench.sh`, which builds the binaries and runs the criterion codec benchmark first.
//!
//! Benchmarks report; nothing here fails on a timing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use sockeye_bench::svg::{self, Reference, Series};
use sockeye_bench::{median, rss_bytes, wall_micros};

type BoxError = Box<dyn std::error::Error>;

/// The longest any one load process may run before it is killed and its measure counted as failed.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Parser)]
struct Args {
    /// A short run (under 3 minutes): fewer samples and connections, shorter windows.
    #[arg(long)]
    quick: bool,
    /// Where results.json, REPORT.md and plots/ go.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
    /// Criterion's output directory, for the codec figures.
    #[arg(long, default_value = "target/criterion")]
    criterion: PathBuf,
    /// Run only these measures (throughput, sweep, rtt, idle, storm); all when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Measure nothing: rewrite the table, plots and REPORT.md from the output directory's results.json
    /// (after bench/NOTES.md, browser.json or size.json changed).
    #[arg(long)]
    report_only: bool,
}

/// How much of everything to run.
struct Plan {
    runs: usize,
    secs: f64,
    sweep: Vec<usize>,
    sweep_secs: f64,
    rtt_samples: usize,
    idle_at: Vec<usize>,
    idle_runs: usize,
    storm_clients: usize,
    storm_procs: usize,
    storm_runs: usize,
    storm_window_ms: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                runs: 3,
                secs: 0.4,
                sweep: vec![64, 16 << 10, 1 << 20],
                sweep_secs: 0.3,
                rtt_samples: 1000,
                idle_at: vec![500, 1000, 2000],
                idle_runs: 1,
                storm_clients: 2000,
                storm_procs: 2,
                storm_runs: 1,
                storm_window_ms: 2000,
            }
        } else {
            Plan {
                runs: 3,
                secs: 2.0,
                sweep: vec![64, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20],
                sweep_secs: 1.0,
                rtt_samples: 5000,
                idle_at: vec![1000, 2500, 5000, 10_000],
                idle_runs: 3,
                storm_clients: 10_000,
                storm_procs: 2,
                storm_runs: 3,
                storm_window_ms: 5000,
            }
        }
    }
}

struct Bins {
    dir: PathBuf,
}

impl Bins {
    fn command(&self, name: &str, pinned: bool) -> Command {
        let bin = self.dir.join(name);
        let mut command = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        command.stdin(Stdio::null()).stderr(Stdio::null());
        command
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    Raw,
    Sockeye,
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(
        bins: &Bins,
        kind: ServerKind,
        pinned: bool,
        extra: &[&str],
    ) -> Result<Server, BoxError> {
        let mut command = match kind {
            ServerKind::Raw => bins.command("bench-echo-server", pinned),
            ServerKind::Sockeye => {
                let mut c = bins.command("sockeye-server", pinned);
                // The default drain window (5 s) and heartbeat stay; nothing is logged below warnings. The
                // connection cap is raised past the default (4 210, sized to 512 MB with every connection
                // busy): the idle and storm runs open up to 10 000 connections.
                c.env("RUST_LOG", "warn")
                    .args(["--max-connections", "20000"]);
                c
            }
        };
        command.args(["--addr", "127.0.0.1:0"]).args(extra);
        let mut child = command.stdout(Stdio::piped()).spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .trim_start_matches("http://")
            .to_owned();
        if !addr.contains(':') {
            let _ = child.kill();
            return Err(format!("server printed no address: {line:?}").into());
        }
        Ok(Server { child, addr })
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn rss(&self) -> f64 {
        rss_bytes(&self.pid()).unwrap_or(0) as f64
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `bench-load` talking in JSON lines.
struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Option<std::io::Lines<BufReader<ChildStdout>>>,
}

impl Load {
    fn start(bins: &Bins, pinned: bool, args: &[String]) -> Result<Load, BoxError> {
        let mut child = bins
            .command("bench-load", pinned)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(Load {
            child,
            stdin,
            lines: Some(BufReader::new(stdout).lines()),
        })
    }

    /// The next JSON line (the process is killed if it prints something else or ends).
    fn next(&mut self) -> Result<Value, BoxError> {
        match self.lines.as_mut().and_then(Iterator::next) {
            Some(line) => Ok(serde_json::from_str(&line?)?),
            None => Err("bench-load ended without a result".into()),
        }
    }

    fn tell(&mut self, line: &str) -> Result<(), BoxError> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Runs to completion (bounded by [`PROCESS_TIMEOUT`]) and returns its last line.
    fn finish(mut self) -> Result<Value, BoxError> {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = self.lines.take().ok_or("output already read")?;
        // A thread reads, so the wait for the process's last line is bounded.
        std::thread::spawn(move || {
            let _ = tx.send(lines.last());
        });
        let last = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| "bench-load timed out")?;
        let _ = self.child.wait();
        match last {
            Some(line) => Ok(serde_json::from_str(&line?)?),
            None => Err("bench-load printed nothing".into()),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load_once(
    bins: &Bins,
    server: ServerKind,
    pinned: bool,
    args: &[String],
) -> Result<Value, BoxError> {
    let server = Server::start(bins, server, pinned, &[])?;
    let mut args = args.to_vec();
    args.extend(["--url".to_owned(), server.url()]);
    Load::start(bins, pinned, &args)?.finish()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// The three contestants of a throughput measure: (label, server, client kind).
const CONTESTANTS: [(&str, ServerKind, &str); 3] = [
    ("raw", ServerKind::Raw, "raw"),
    ("sockeye", ServerKind::Sockeye, "sockeye"),
    ("server_alone", ServerKind::Sockeye, "proto"),
];

/// Median round trips/s of each contestant, runs interleaved so each run compares like with like.
fn throughput(
    bins: &Bins,
    size: usize,
    inflight: usize,
    pinned: bool,
    runs: usize,
    secs: f64,
    contestants: &[(&str, ServerKind, &str)],
) -> BTreeMap<String, Value> {
    let mut rates: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..runs {
        for &(label, server, kind) in contestants {
            let args = strings(&[
                "throughput",
                "--kind",
                kind,
                "--size",
                &size.to_string(),
                "--inflight",
                &inflight.to_string(),
                "--secs",
                &secs.to_string(),
            ]);
            let rate = match load_once(bins, server, pinned, &args) {
                Ok(v) => v["rate"].as_f64().unwrap_or(f64::NAN),
                Err(e) => {
                    eprintln!("  {label} {size} B failed: {e}");
                    f64::NAN
                }
            };
            rates.entry(label.to_owned()).or_default().push(rate);
        }
    }
    rates
        .into_iter()
        .map(|(label, runs)| (label, json!({ "median": median(&runs), "runs": runs })))
        .collect()
}

fn rtt(bins: &Bins, pinned: bool, plan: &Plan) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for _ in 0..plan.runs {
        for (label, server, kind) in [
            ("raw", ServerKind::Raw, "raw"),
            ("sockeye", ServerKind::Sockeye, "sockeye"),
        ] {
            let args = strings(&[
                "rtt",
                "--kind",
                kind,
                "--samples",
                &plan.rtt_samples.to_string(),
            ]);
            match load_once(bins, server, pinned, &args) {
                Ok(v) => out.entry(label.to_owned()).or_default().push(v),
                Err(e) => eprintln!("  rtt {label} failed: {e}"),
            }
        }
    }
    out.into_iter()
        .map(|(label, runs)| {
            let pick = |key: &str| median(&runs.iter().filter_map(|r| r[key].as_f64()).collect::<Vec<_>>());
            let summary = json!({
                "p50": pick("p50"), "p90": pick("p90"), "p99": pick("p99"), "p999": pick("p999"), "runs": runs,
            });
            (label, summary)
        })
        .collect()
}

/// Bytes per idle connection at each count, client process and server process, median of runs.
fn idle(bins: &Bins, plan: &Plan) -> Value {
    let at: Vec<String> = plan.idle_at.iter().map(ToString::to_string).collect();
    let mut result = serde_json::Map::new();
    for (label, server_kind, kind) in [
        ("raw", ServerKind::Raw, "raw"),
        ("sockeye", ServerKind::Sockeye, "sockeye"),
    ] {
        // per count: (client bytes/conn, server bytes/conn) of each run
        let mut per: BTreeMap<usize, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for _ in 0..plan.idle_runs {
            let run = || -> Result<Vec<(usize, f64, f64)>, BoxError> {
                let server = Server::start(bins, server_kind, false, &[])?;
                let args = strings(&[
                    "idle",
                    "--kind",
                    kind,
                    "--url",
                    &server.url(),
                    "--at",
                    &at.join(","),
                ]);
                let mut load = Load::start(bins, false, &args)?;
                let base = load.next()?;
                let client_base = base["rss"].as_f64().unwrap_or(0.0);
                let server_base = server.rss();
                let mut points = Vec::new();
                for _ in &plan.idle_at {
                    let point = load.next()?;
                    let n = point["n"].as_u64().unwrap_or(1).max(1) as usize;
                    let client = (point["rss"].as_f64().unwrap_or(0.0) - client_base) / n as f64;
                    let server_per = (server.rss() - server_base) / n as f64;
                    points.push((n, client, server_per));
                    load.tell("next")?;
                }
                load.finish()?;
                Ok(points)
            };
            match run() {
                Ok(points) => {
                    for (n, c, s) in points {
                        let entry = per.entry(n).or_default();
                        entry.0.push(c);
                        entry.1.push(s);
                    }
                }
                Err(e) => eprintln!("  idle {label} failed: {e}"),
            }
        }
        let points: Vec<Value> = per
            .into_iter()
            .map(|(n, (c, s))| json!({ "n": n, "client": median(&c), "server": median(&s) }))
            .collect();
        result.insert(label.to_owned(), Value::Array(points));
    }
    Value::Object(result)
}

/// Drains one server of `storm_clients` Sockeye clients; they reconnect to a second one.
fn storm(bins: &Bins, plan: &Plan) -> Result<Value, BoxError> {
    let window = plan.storm_window_ms.to_string();
    let a = Server::start(
        bins,
        ServerKind::Sockeye,
        false,
        &["--drain-window-ms", &window],
    )?;
    let b = Server::start(bins, ServerKind::Sockeye, false, &[])?;
    let per = plan.storm_clients / plan.storm_procs;
    let mut loads = Vec::new();
    for _ in 0..plan.storm_procs {
        let args = strings(&[
            "storm",
            "--a",
            &a.addr,
            "--b",
            &b.addr,
            "--n",
            &per.to_string(),
        ]);
        loads.push(Load::start(bins, false, &args)?);
    }
    for load in &mut loads {
        let ready = load.next()?;
        if ready["stage"] != "ready" {
            return Err(format!("storm clients not ready: {ready}").into());
        }
    }
    for load in &mut loads {
        load.tell("switch")?;
    }
    let start = wall_micros();
    // SAFETY: kill(2) on the pid of a child we own and have not yet waited for.
    unsafe {
        libc::kill(a.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let mut arrivals = Vec::new();
    let mut replied = 0;
    let mut failed = BTreeMap::<String, u64>::new();
    for load in loads {
        let done = load.finish()?;
        replied += done["replied"].as_u64().unwrap_or(0);
        for (why, count) in done["failed"].as_object().into_iter().flatten() {
            *failed.entry(why.clone()).or_default() += count.as_u64().unwrap_or(0);
        }
        for t in done["arrivals"].as_array().into_iter().flatten() {
            if let Some(t) = t.as_u64() {
                arrivals.push(t.saturating_sub(start) as f64 / 1000.0);
            }
        }
    }
    let clients = per * plan.storm_procs;
    let bucket_ms = 100.0;
    let buckets = ((plan.storm_window_ms as f64 + 3000.0) / bucket_ms) as usize;
    let mut histogram = vec![0u64; buckets];
    let mut later = 0;
    for ms in &arrivals {
        match histogram.get_mut((ms / bucket_ms) as usize) {
            Some(count) => *count += 1,
            None => later += 1,
        }
    }
    let ideal = clients as f64 * bucket_ms / plan.storm_window_ms as f64;
    let busiest = histogram.iter().copied().max().unwrap_or(0);
    Ok(json!({
        "clients": clients,
        "window_ms": plan.storm_window_ms,
        "bucket_ms": bucket_ms,
        "histogram": histogram,
        "arrivals": arrivals.len(),
        "after_histogram": later,
        "uniform_ideal": ideal,
        "busiest": busiest,
        "busiest_ratio": busiest as f64 / ideal,
        "queued": clients,
        "replied": replied,
        // Requests that ended with an error, by error; the rest of the unanswered never ended.
        "failed": failed,
        "lost": clients as u64 - replied.min(clients as u64),
    }))
}

/// Median ns per iteration of a criterion benchmark, from its saved estimates.
fn criterion_median(dir: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cores} vCPU ({cpu}), {memory} GiB RAM, Linux {}, load average at the start {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn ratio_row(
    table: &mut Vec<[String; 5]>,
    measure: &str,
    baseline: f64,
    ours: f64,
    goal: &str,
    unit: &str,
) {
    table.push([
        measure.to_owned(),
        format!("{} {unit}", svg::short(baseline)),
        format!("{} {unit}", svg::short(ours)),
        format!("{:.2}×", ours / baseline),
        goal.to_owned(),
    ]);
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.report_only {
        let results: Value =
            serde_json::from_str(&std::fs::read_to_string(args.out.join("results.json"))?)?;
        return report(&args.out, &results);
    }
    let plan = Plan::new(args.quick);
    let exe = std::env::current_exe()?;
    let bins = Bins {
        dir: exe.parent().ok_or("no binary directory")?.to_path_buf(),
    };
    let started = Instant::now();
    let machine = machine();
    eprintln!("machine: {machine}");
    let mut results = serde_json::Map::new();
    results.insert("quick".into(), json!(args.quick));
    results.insert("machine".into(), json!(machine));
    results.insert("unix_time".into(), json!(wall_micros() / 1_000_000));

    let runs = |measure: &str| args.only.is_empty() || args.only.iter().any(|m| m == measure);
    let mut throughputs = serde_json::Map::new();
    for (size, name) in [(64usize, "64B"), (16 << 10, "16KiB")]
        .into_iter()
        .filter(|_| runs("throughput"))
    {
        for pinned in [true, false] {
            let key = format!("{name}_{}", if pinned { "pinned" } else { "unpinned" });
            eprintln!("throughput {key} ...");
            let r = throughput(&bins, size, 64, pinned, plan.runs, plan.secs, &CONTESTANTS);
            throughputs.insert(key, json!(r));
        }
    }
    results.insert("throughput".into(), Value::Object(throughputs));

    eprintln!("size sweep (pinned) ...");
    let mut sweep = Vec::new();
    for &size in plan.sweep.iter().filter(|_| runs("sweep")) {
        // At most ~1 MiB in flight: a single-task raw client blocks in `feed` while the server blocks
        // writing replies it does not read, so more would deadlock the baseline itself.
        let inflight = ((1 << 20) / size).clamp(1, 64);
        let r = throughput(
            &bins,
            size,
            inflight,
            true,
            plan.runs,
            plan.sweep_secs,
            &CONTESTANTS[..2],
        );
        sweep.push(json!({ "size": size, "inflight": inflight, "raw": r["raw"]["median"], "sockeye": r["sockeye"]["median"] }));
    }
    results.insert("sweep".into(), json!(sweep));

    let mut rtts = serde_json::Map::new();
    for pinned in [true, false].into_iter().filter(|_| runs("rtt")) {
        eprintln!("rtt pinned={pinned} ...");
        rtts.insert(
            if pinned { "pinned" } else { "unpinned" }.into(),
            json!(rtt(&bins, pinned, &plan)),
        );
    }
    results.insert("rtt".into(), Value::Object(rtts));

    if runs("idle") {
        eprintln!("idle memory ...");
        results.insert("idle".into(), idle(&bins, &plan));
    }

    if runs("storm") {
        eprintln!("reconnect storm ...");
        // A stalled process (the machine is shared) bunches arrivals: the run with the median busiest
        // bucket is reported, with every run's ratio and the queued requests lost over all runs.
        let mut storms: Vec<Value> = (0..plan.storm_runs)
            .filter_map(|_| {
                storm(&bins, &plan)
                    .map_err(|e| eprintln!("  storm failed: {e}"))
                    .ok()
            })
            .collect();
        storms.sort_by(|a, b| f(&a["busiest_ratio"]).total_cmp(&f(&b["busiest_ratio"])));
        let ratios: Vec<f64> = storms.iter().map(|s| f(&s["busiest_ratio"])).collect();
        let lost: u64 = storms.iter().filter_map(|s| s["lost"].as_u64()).sum();
        let queued: u64 = storms.iter().filter_map(|s| s["queued"].as_u64()).sum();
        let mut storm = storms
            .get(storms.len() / 2)
            .cloned()
            .unwrap_or_else(|| json!({ "error": "every run failed" }));
        if let Some(storm) = storm.as_object_mut() {
            storm.insert("runs_busiest_ratio".into(), json!(ratios));
            storm.insert("lost".into(), json!(lost));
            storm.insert("queued".into(), json!(queued));
        }
        results.insert("storm".into(), storm);
    }

    let codec = json!({
        "sockeye_ns": criterion_median(&args.criterion, "codec/sockeye"),
        "serde_json_ns": criterion_median(&args.criterion, "codec/serde_json"),
    });
    results.insert("codec".into(), codec);
    results.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
    let results = Value::Object(results);

    std::fs::create_dir_all(args.out.join("plots"))?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    report(&args.out, &results)?;
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Prints the table and writes the plots and REPORT.md into `out`.
fn report(out: &Path, results: &Value) -> Result<(), BoxError> {
    std::fs::create_dir_all(out.join("plots"))?;
    let rendered = render_table(&table(out, results));
    println!("{rendered}");
    write_plots(out, results)?;
    write_report(out, results, &rendered)
}

/// A JSON file the browser package's own tooling wrote into `out`, if it is there.
fn read_json(out: &Path, name: &str) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(out.join(name)).ok()?).ok()
}

fn table(out: &Path, r: &Value) -> Vec<[String; 5]> {
    let mut t = Vec::new();
    let tp = &r["throughput"];
    for (key, label, goal) in [
        ("64B_pinned", "64 B, 64 in flight, pinned", "≥ 0.60×"),
        ("64B_unpinned", "64 B, 64 in flight, unpinned", "—"),
        ("16KiB_pinned", "16 KiB, 64 in flight, pinned", "≥ 0.90×"),
        ("16KiB_unpinned", "16 KiB, 64 in flight, unpinned", "—"),
    ] {
        let raw = f(&tp[key]["raw"]["median"]);
        ratio_row(
            &mut t,
            &format!("request/response {label}"),
            raw,
            f(&tp[key]["sockeye"]["median"]),
            goal,
            "/s",
        );
    }
    for (key, label, goal) in [
        ("64B_pinned", "64 B, pinned", "≥ 0.80×"),
        ("64B_unpinned", "64 B, unpinned", "—"),
        ("16KiB_pinned", "16 KiB, pinned", "≥ 0.80×"),
        ("16KiB_unpinned", "16 KiB, unpinned", "—"),
    ] {
        let raw = f(&tp[key]["raw"]["median"]);
        ratio_row(
            &mut t,
            &format!("server alone (raw client → sockeye-server), {label}"),
            raw,
            f(&tp[key]["server_alone"]["median"]),
            goal,
            "/s",
        );
    }
    for pin in ["pinned", "unpinned"] {
        let raw = &r["rtt"][pin]["raw"];
        let ours = &r["rtt"][pin]["sockeye"];
        t.push([
            format!("RTT p50 / p99, one in flight, 64 B, {pin}"),
            format!("{:.1} / {:.1} µs", f(&raw["p50"]), f(&raw["p99"])),
            format!("{:.1} / {:.1} µs", f(&ours["p50"]), f(&ours["p99"])),
            format!("p50 {:+.1} µs", f(&ours["p50"]) - f(&raw["p50"])),
            if pin == "pinned" {
                "p50 ≤ raw + 5 µs"
            } else {
                "—"
            }
            .to_owned(),
        ]);
    }
    for side in ["server", "client"] {
        let last = |who: &str| {
            r["idle"][who]
                .as_array()
                .and_then(|a| a.last())
                .cloned()
                .unwrap_or(Value::Null)
        };
        let (raw, ours) = (last("raw"), last("sockeye"));
        t.push([
            format!(
                "memory per idle ready connection, {side}, at {} connections",
                ours["n"]
            ),
            format!("{:.1} KiB", f(&raw[side]) / 1024.0),
            format!("{:.1} KiB", f(&ours[side]) / 1024.0),
            format!("{:.2}×", f(&ours[side]) / f(&raw[side])),
            "≤ 8 KiB".to_owned(),
        ]);
    }
    let storm = &r["storm"];
    t.push([
        format!(
            "reconnect storm: {} clients, {} ms drain window, busiest 100 ms bucket",
            storm["clients"], storm["window_ms"]
        ),
        format!("uniform {:.0}", f(&storm["uniform_ideal"])),
        format!(
            "{} (lost {} of {} queued{})",
            storm["busiest"],
            storm["lost"],
            storm["queued"],
            match storm["failed"].as_object() {
                Some(failed) if !failed.is_empty() =>
                    format!(": {}", Value::Object(failed.clone())),
                _ => String::new(),
            }
        ),
        format!("{:.2}×", f(&storm["busiest_ratio"])),
        "≤ 2×, 0 lost".to_owned(),
    ]);
    let (ours, json_ns) = (
        f(&r["codec"]["sockeye_ns"]),
        f(&r["codec"]["serde_json_ns"]),
    );
    t.push([
        "codec: envelope req + small typed payload, encode + decode".to_owned(),
        format!("serde_json {} /s", svg::short(1e9 / json_ns)),
        format!("{} /s", svg::short(1e9 / ours)),
        format!("{:.2}×", json_ns / ours),
        "≥ 1.0×".to_owned(),
    ]);
    let browser = read_json(out, "browser.json");
    t.push(match &browser {
        Some(b) => [
            "browser: client.request msgs/s, 64 in flight (headless Chromium)".to_owned(),
            format!(
                "plain JS on a raw WebSocket {} /s",
                svg::short(f(&b["raw_msgs_per_s"]["median"]))
            ),
            format!("{} /s", svg::short(f(&b["wasm_msgs_per_s"]["median"]))),
            format!("{:.2}×", f(&b["ratio"])),
            "≥ 0.80×".to_owned(),
        ],
        None => missing(
            "browser: client.request msgs/s, 64 in flight (headless Chromium)",
            "≥ 0.80×",
            "bench/browser/run.sh",
        ),
    });
    let package = read_json(out, "size.json");
    t.push(match package.as_ref().map(|p| &p["package"]) {
        Some(p) => [
            "npm package, .wasm + JS glue, gzip -9".to_owned(),
            "socket.io-client 14.8 KB, centrifuge 23.1 KB".to_owned(),
            format!(
                "{:.0} B ({:.1} KiB)",
                f(&p["total_gzip"]),
                f(&p["total_gzip"]) / 1024.0
            ),
            format!("{:.2} % of the goal", 100.0 * f(&p["total_gzip"]) / 46080.0),
            "≤ 45 KiB".to_owned(),
        ],
        None => missing(
            "npm package, .wasm + JS glue, gzip -9",
            "≤ 45 KiB",
            "bench/browser/size_breakdown.py",
        ),
    });
    t
}

/// A row whose figures come from a file that is not there yet, naming the command that writes it.
fn missing(measure: &str, goal: &str, command: &str) -> [String; 5] {
    [
        measure.to_owned(),
        format!("not measured: run `{command}`"),
        "—".to_owned(),
        "—".to_owned(),
        goal.to_owned(),
    ]
}

fn render_table(rows: &[[String; 5]]) -> String {
    let mut s = String::from(
        "| measure | baseline (same run) | Sockeye | ratio | goal |\n|---|---|---|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    s
}

fn write_plots(out: &Path, r: &Value) -> Result<(), BoxError> {
    let plots = out.join("plots");
    let sweep = r["sweep"].as_array().cloned().unwrap_or_default();
    let series = |key: &str, name: &str| Series {
        name: name.to_owned(),
        points: sweep
            .iter()
            .filter_map(|p| {
                Some((
                    p["size"].as_f64()?,
                    p[key].as_f64()? * p["size"].as_f64()? / 1048576.0,
                ))
            })
            .collect(),
    };
    std::fs::write(
        plots.join("throughput.svg"),
        svg::lines(
            "Echo throughput vs message size (pinned to one core)",
            "message size (≤ 1 MiB in flight, 64 at most)",
            "payload MiB/s each way",
            &[
                series("raw", "raw tungstenite"),
                series("sockeye", "Sockeye"),
            ],
            true,
            svg::bytes_label,
            None,
        ),
    )?;

    let mut categories = Vec::new();
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    for pin in ["pinned", "unpinned"] {
        for p in ["p50", "p90", "p99", "p999"] {
            categories.push(format!("{p} {pin}"));
            raw.push(f(&r["rtt"][pin]["raw"][p]));
            ours.push(f(&r["rtt"][pin]["sockeye"][p]));
        }
    }
    std::fs::write(
        plots.join("latency.svg"),
        svg::bars(
            "Round-trip time, one 64 B request in flight",
            "percentile",
            "µs",
            &categories,
            &[
                ("raw tungstenite".to_owned(), raw),
                ("Sockeye".to_owned(), ours),
            ],
            None,
        ),
    )?;

    let idle_series = |who: &str, side: &str, name: &str| Series {
        name: name.to_owned(),
        points: r["idle"][who]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["n"].as_f64()?, p[side].as_f64()? / 1024.0)))
            .collect(),
    };
    std::fs::write(
        plots.join("memory.svg"),
        svg::lines(
            "Memory per idle ready connection (RSS delta / N)",
            "connections",
            "KiB per connection",
            &[
                idle_series("raw", "server", "raw server"),
                idle_series("sockeye", "server", "sockeye-server"),
                idle_series("raw", "client", "raw clients"),
                idle_series("sockeye", "client", "sockeye::Client"),
            ],
            false,
            svg::short,
            Some(&Reference {
                name: "goal 8 KiB".into(),
                y: 8.0,
            }),
        ),
    )?;

    let storm = &r["storm"];
    let histogram: Vec<f64> = storm["histogram"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    let categories: Vec<String> = (0..histogram.len())
        .map(|i| format!("{:.1}", i as f64 * 0.1))
        .collect();
    std::fs::write(
        plots.join("storm.svg"),
        svg::bars(
            &format!(
                "Reconnect storm: arrivals at the second server ({} clients)",
                storm["clients"]
            ),
            "seconds since the drain started (100 ms buckets)",
            "connections per bucket",
            &categories,
            &[("arrivals".to_owned(), histogram)],
            Some(&Reference {
                name: "uniform ideal".into(),
                y: f(&storm["uniform_ideal"]),
            }),
        ),
    )?;
    Ok(())
}

fn write_report(out: &Path, r: &Value, table: &str) -> Result<(), BoxError> {
    let mut s = String::new();
    let _ = writeln!(s, "# Sockeye performance report\n");
    let _ = writeln!(
        s,
        "Generated by `scripts/bench.sh{}` (do not edit: the analysis below comes from `bench/NOTES.md`). \
         Raw figures: [`results.json`](results.json).\n",
        if r["quick"].as_bool() == Some(true) { " --quick" } else { "" }
    );
    let _ = writeln!(
        s,
        "**Machine:** {}.\n",
        r["machine"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "The machine is shared with other jobs (compilers of other agents were running), so absolute figures are \
         noisy and vary from run to run. What counts are the **ratios**: every measure runs side by side with its \
         baseline in the same run, interleaved run by run, each a median of several runs. Client and server are \
         separate processes; \"pinned\" puts both on core 0 with `taskset -c 0`, \"unpinned\" lets them use both \
         cores. Everything is on loopback.\n"
    );
    let _ = writeln!(s, "## Results\n\n{table}");
    let _ = writeln!(
        s,
        "The two last rows belong to the browser package and are measured by its own tooling: \
         `bench/browser/run.sh` writes `bench/browser.json` (the wasm package against a plain-JS client in the \
         same page; its date and commit are in the file) and `bench/browser/size_breakdown.py` writes \
         `bench/size.json` (see `bench/SIZE.md`); this report reads both.\n"
    );
    let _ = writeln!(s, "## Plots\n");
    for (file, caption) in [
        ("throughput", "Throughput vs message size, raw vs Sockeye"),
        ("latency", "Latency percentiles"),
        ("memory", "Memory per connection vs connection count"),
        ("storm", "Reconnect-storm arrival histogram"),
    ] {
        let _ = writeln!(s, "![{caption}](plots/{file}.svg)\n");
    }
    let _ = writeln!(s, "## What each measure is\n");
    let _ = writeln!(
        s,
        "- **request/response**: `Client::request(\"echo\", &bytes)` from 64 tasks on one `sockeye::Client` against \
         `sockeye-server`, vs a raw tokio-tungstenite client keeping 64 binary messages in flight against a raw \
         tokio-tungstenite echo server (both feed every ready frame and flush once). Buffers as Sockeye's \
         (server 4 KiB, client 8 KiB), TCP_NODELAY on.\n\
         - **server alone**: the raw client sending pre-encoded `req echo` frames to `sockeye-server`, vs the raw \
         echo server.\n\
         - **RTT**: one request at a time, 64 B; percentiles over all samples of a run, median over runs.\n\
         - **memory**: the RSS delta of each process divided by the number of idle `ready` connections \
         (`sockeye::Client`s vs raw tungstenite clients with the same buffers, each read by its own task).\n\
         - **storm**: clients reach the first server through an in-process TCP switch that sends new connections to \
         the second server once the first is told to drain (SIGTERM, its drain window); arrivals are counted \
         when the switch forwards a connection. Each client queues one `echo` request when it loses its \
         connection; \"lost\" counts those never answered, over all runs. The busiest bucket is that of the run \
         with the median busiest bucket (every run's ratio is in results.json).\n\
         - **codec**: criterion, `Envelope::Req` with a small typed payload (`Payload::encode` → `encode` → \
         `decode` → `Payload::decode`) vs serde_json encoding and decoding the same structure.\n"
    );
    if let Ok(notes) = std::fs::read_to_string(out.join("NOTES.md")) {
        let _ = writeln!(s, "{notes}");
    }
    std::fs::write(out.join("REPORT.md"), s)?;
    Ok(())
}
