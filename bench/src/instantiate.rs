//! `warren-bench instantiate`: what warren's instantiation strategy buys, measured side by side
//! in one run on the same modules.
//!
//! Strategies (each runs the whole task: store + WASI state → instantiate → `_start` → drop):
//! - `a-ondemand-copy-linker`: stock wasmtime + wasmtime-wasi ([`baseline`](crate::baseline)),
//!   mmap per instance, data segments copied in, imports resolved by `Linker::instantiate` on
//!   every task — the naive embedding.
//! - `b-ondemand-cow-pre`: the same embedding with a copy-on-write memory image and an
//!   `InstancePre`.
//! - `c-warren`: warren's sandbox — pooling allocator + CoW mapped from the AOT file +
//!   `InstancePre`, dirty pages reset in place — one shard per measuring thread, as the daemon's
//!   lanes run tasks.
//!
//! A component (such as `echo-c`, the `echo` program built for WASI 0.2) runs the same
//! strategies, the baselines through wasmtime-wasi's WASI 0.2
//! ([`baseline_component`](crate::baseline_component)).
//!
//! Each is measured on one thread and on all cores for `--duration`; instantiate p50/p99 come
//! from the per-task instantiate timings, tasks/s from whole tasks.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use warren_schemas::args::parse_duration;
use warren_worker::registry::GuestKind;
use warren_worker::sandbox::{GuestCall, Sandbox};
use warren_worker::{ModuleRegistry, ModuleSource, SandboxConfig};

use crate::baseline::{self, Instantiation};
use crate::baseline_component::ComponentCommand;
use crate::stats::{human_ns, percentile};
use crate::timed;

/// Arguments of `warren-bench instantiate`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstantiateBenchArgs {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Measuring time per strategy, module and thread count.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Modules to measure (names in the modules directory).
    #[arg(long = "module", default_values_t = ["echo".to_string(), "echo-c".to_string(), "lookup".to_string()])]
    pub modules: Vec<String>,

    /// Only these strategies (`a-ondemand-copy-linker`, `b-ondemand-cow-pre`, `c-warren`);
    /// default: all three.
    #[arg(long = "strategy")]
    pub strategies: Vec<String>,

    /// Where modules come from.
    #[command(flatten)]
    pub source: ModuleSource,
}

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Module name.
    pub module: String,
    /// Strategy id (see module docs).
    pub strategy: &'static str,
    /// Threads running tasks.
    pub threads: usize,
    /// Median instantiate time.
    pub instantiate_p50_ns: u64,
    /// 99th percentile instantiate time.
    pub instantiate_p99_ns: u64,
    /// Whole tasks per second.
    pub tasks_per_s: f64,
    /// Tasks measured.
    pub samples: usize,
}

/// The strategies, in the order they are measured.
const STRATEGIES: [Strategy; 3] = [
    Strategy::Baseline("a-ondemand-copy-linker", Instantiation::CopyLinker),
    Strategy::Baseline("b-ondemand-cow-pre", Instantiation::CowPre),
    Strategy::Warren("c-warren"),
];

/// One way of running the benchmark task, named as the rows name it.
#[derive(Debug, Clone, Copy)]
enum Strategy {
    /// Stock wasmtime + wasmtime-wasi, instantiating as given.
    Baseline(&'static str, Instantiation),
    /// warren's sandbox.
    Warren(&'static str),
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Baseline(name, _) | Strategy::Warren(name) => name,
        }
    }
}

/// What a benchmark task gets on stdin.
const INPUT: &[u8] = b"42\n";

/// Runs the benchmark and prints the table (or JSON lines); returns the rows.
pub fn run_instantiate_bench(args: &InstantiateBenchArgs) -> anyhow::Result<Vec<BenchRow>> {
    let cores = num_cpus::get();
    let config = SandboxConfig {
        max_concurrent_tasks: Some(cores),
        ..SandboxConfig::default()
    };
    let thread_counts = if cores > 1 { vec![1, cores] } else { vec![1] };
    let mut rows = Vec::new();
    for name in &args.modules {
        let path = args.source.modules_dir.join(format!("{name}.wasm"));
        let component = std::fs::read(&path)
            .map(|bytes| GuestKind::of(&bytes) == GuestKind::Component)
            .unwrap_or(false);
        for strategy in STRATEGIES {
            if !args.strategies.is_empty() && !args.strategies.iter().any(|s| s == strategy.name())
            {
                continue;
            }
            let measure = |task: &(dyn Fn(usize) -> anyhow::Result<Duration> + Sync)| {
                thread_counts
                    .iter()
                    .map(|&threads| measure_threads(threads, args.duration, task))
                    .collect::<anyhow::Result<Vec<_>>>()
            };
            let measured = match strategy {
                Strategy::Baseline(_, how) if component => {
                    let engine = baseline::engine(&config, how == Instantiation::CowPre)?;
                    let command = ComponentCommand::load(&engine, &path, &config)?;
                    measure(&|_| command.run(how, INPUT))?
                }
                Strategy::Baseline(_, how) => {
                    let engine = baseline::engine(&config, how == Instantiation::CowPre)?;
                    let command = baseline::Command::load(&engine, &path, &config)?;
                    measure(&|_| command.run(how, INPUT))?
                }
                Strategy::Warren(_) => {
                    let sandbox = Arc::new(Sandbox::new(config.clone())?);
                    let registry = ModuleRegistry::new(sandbox.clone(), &args.source.cache_dir()?)?;
                    let module = registry.load_file(&path).with_context(|| {
                        format!(
                            "cannot load {} (run modules/build.sh first)",
                            path.display()
                        )
                    })?;
                    let call = GuestCall {
                        program: module.name.clone(),
                        input: INPUT.to_vec(),
                        ..GuestCall::default()
                    };
                    measure(&|shard| {
                        let execution = sandbox.run(shard, &module.warm, call.clone());
                        if !execution.outcome.is_success() {
                            bail!("benchmark task did not succeed: {}", execution.outcome);
                        }
                        Ok(execution.instantiate)
                    })?
                }
            };
            for row in measured {
                let row = BenchRow {
                    module: name.clone(),
                    strategy: strategy.name(),
                    ..row
                };
                if args.json {
                    println!("{}", serde_json::to_string(&row)?);
                }
                rows.push(row);
            }
        }
    }
    if !args.json {
        print_table(&rows);
    }
    Ok(rows)
}

/// Runs `task` in a loop on `threads` threads for `duration`; thread `i` runs on shard `i`. The
/// task returns its instantiate time.
fn measure_threads(
    threads: usize,
    duration: Duration,
    task: &(dyn Fn(usize) -> anyhow::Result<Duration> + Sync),
) -> anyhow::Result<BenchRow> {
    let (samples, elapsed) = timed::on_threads(threads, duration, &|shard| {
        task(shard).map(|instantiate| instantiate.as_nanos() as u64)
    })?;
    Ok(row_from(samples, elapsed, threads))
}

fn row_from(mut samples: Vec<u64>, elapsed: Duration, threads: usize) -> BenchRow {
    samples.sort_unstable();
    BenchRow {
        module: String::new(),
        strategy: "",
        threads,
        instantiate_p50_ns: percentile(&samples, 50.0),
        instantiate_p99_ns: percentile(&samples, 99.0),
        tasks_per_s: samples.len() as f64 / elapsed.as_secs_f64(),
        samples: samples.len(),
    }
}

fn print_table(rows: &[BenchRow]) {
    println!(
        "{:<8} {:<24} {:>7} {:>14} {:>14} {:>12} {:>8}",
        "module", "strategy", "threads", "inst p50", "inst p99", "tasks/s", "samples"
    );
    for r in rows {
        println!(
            "{:<8} {:<24} {:>7} {:>14} {:>14} {:>12.0} {:>8}",
            r.module,
            r.strategy,
            r.threads,
            human_ns(r.instantiate_p50_ns),
            human_ns(r.instantiate_p99_ns),
            r.tasks_per_s,
            r.samples
        );
    }
    for module in rows
        .iter()
        .map(|r| r.module.as_str())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let find = |strategy: &str| {
            rows.iter()
                .find(|r| r.module == module && r.strategy == strategy && r.threads == 1)
        };
        if let (Some(a), Some(c)) = (find("a-ondemand-copy-linker"), find("c-warren")) {
            println!(
                "{module}: c-warren instantiates {:.0}x faster than a (p50), {:.0}x (p99); whole tasks {:.1}x faster",
                a.instantiate_p50_ns as f64 / c.instantiate_p50_ns.max(1) as f64,
                a.instantiate_p99_ns as f64 / c.instantiate_p99_ns.max(1) as f64,
                c.tasks_per_s / a.tasks_per_s.max(f64::MIN_POSITIVE),
            );
        }
    }
}
