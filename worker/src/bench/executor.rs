//! `warren-worker bench executor`: warren's whole task path without a broker, on all cores, next
//! to the smallest loop raw wasmtime allows on the same engine and module — fresh store,
//! instantiate from an `InstancePre`, call `_start`, drop — measured in the same run.
//!
//! The ratio says what warren's per-task work costs over the bare minimum: the task → call
//! translation, the WASI context with captured stdio, limits, deadline and outcome
//! classification, the hand-off to an executor thread and back, and the result.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use warren_schemas::{encode, ModuleRef, Task};
use wasmtime::{Linker, Store};
use wasmtime_wasi::p1::{add_to_linker_sync, WasiP1Ctx};
use wasmtime_wasi::WasiCtxBuilder;

use crate::config::parse_duration;
use crate::engine::Allocation;
use crate::registry::{LoadedModule, ModuleRegistry};
use crate::runner::TaskRunner;
use crate::sandbox::Sandbox;
use crate::{ModuleSource, SandboxConfig};

/// Arguments of `warren-worker bench executor`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecutorBenchArgs {
    /// Measuring time of each side in each round.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Rounds, alternating raw and warren; each side reports its median round. Alternating
    /// spreads a shared machine's noise over both sides.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,

    /// The trivial module to run.
    #[arg(long, default_value = "echo")]
    pub module: String,

    /// Threads on each side. Default: every core.
    #[arg(long)]
    pub threads: Option<usize>,

    /// Dirty linear memory reset in place per freed slot (the worker's `--keep-resident`), to
    /// measure its effect on the task path.
    #[arg(long, default_value = "64KiB", value_parser = crate::config::parse_bytes)]
    pub keep_resident: u64,

    /// Where modules come from.
    #[command(flatten)]
    pub source: ModuleSource,

    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Both sides of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutorBenchRow {
    /// Module measured.
    pub module: String,
    /// Threads on each side.
    pub threads: usize,
    /// Raw wasmtime loop: tasks per second.
    pub raw_tasks_per_s: f64,
    /// warren (`TaskRunner::run_then`, the daemon's task path minus the broker): tasks per second.
    pub warren_tasks_per_s: f64,
    /// `warren_tasks_per_s / raw_tasks_per_s`.
    pub ratio: f64,
}

/// Runs both sides and prints the comparison.
pub fn run_executor_bench(args: &ExecutorBenchArgs) -> anyhow::Result<ExecutorBenchRow> {
    let threads = args.threads.unwrap_or_else(num_cpus::get).max(1);
    let config = SandboxConfig {
        max_concurrent_tasks: Some(threads),
        keep_resident: args.keep_resident,
        ..SandboxConfig::default()
    };
    let sandbox = Arc::new(Sandbox::new(config, Allocation::Pooled)?);
    let registry = Arc::new(ModuleRegistry::new(
        sandbox.clone(),
        args.source.cache_dir(),
    ));
    let path = args
        .source
        .modules_dir
        .join(format!("{}.wasm", args.module));
    let module = registry.load_file(&path).with_context(|| {
        format!(
            "cannot load {} (run modules/build.sh first)",
            path.display()
        )
    })?;

    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let runner = TaskRunner::start(registry, "bench")?;
    let (mut raws, mut warrens) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        raws.push(raw_loop(&sandbox, &module, threads, args.duration)?);
        warrens.push(warren_loop(&runner, &args.module, threads, args.duration)?);
    }
    let (raw, warren) = (median(&mut raws), median(&mut warrens));
    let row = ExecutorBenchRow {
        module: args.module.clone(),
        threads,
        raw_tasks_per_s: raw,
        warren_tasks_per_s: warren,
        ratio: warren / raw,
    };
    if args.json {
        println!("{}", serde_json::to_string(&row)?);
    } else {
        println!(
            "{:<8} {:>7} {:>14} {:>14} {:>7}",
            "module", "threads", "raw tasks/s", "warren tasks/s", "ratio"
        );
        println!(
            "{:<8} {:>7} {:>14.0} {:>14.0} {:>7.2}",
            row.module, row.threads, row.raw_tasks_per_s, row.warren_tasks_per_s, row.ratio
        );
    }
    Ok(row)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The bare minimum on `threads` threads: fresh store with an empty WASI context, instantiate
/// from a pre-linked module, call `_start`, drop.
fn raw_loop(
    sandbox: &Sandbox,
    module: &LoadedModule,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let engine = sandbox.engine();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
    add_to_linker_sync(&mut linker, |ctx| ctx)?;
    let pre = linker.instantiate_pre(module.pre.module())?;
    let started = Instant::now();
    let counts = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<u64> {
                    let mut done = 0;
                    while started.elapsed() < duration {
                        let mut store = Store::new(engine, WasiCtxBuilder::new().build_p1());
                        // The engine interrupts on epochs; this store must not be interrupted.
                        store.set_epoch_deadline(u64::MAX / 2);
                        let instance = pre.instantiate(&mut store)?;
                        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                        start.call(&mut store, ())?;
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("raw loop thread panicked"))
            })
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}

/// warren's path as the daemon drives it: [`TaskRunner::run_then`] from one dispatching thread
/// (the daemon's consumer), the result encoded on the executor thread and handed back over a
/// channel (the daemon's settler), with as many tasks in flight as the daemon's default
/// prefetch lets it hold (`PREFETCH_PER_THREAD × threads`), so the executor's queue never runs
/// dry, as under load from the broker.
fn warren_loop(
    runner: &TaskRunner,
    module: &str,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let module: ModuleRef = module.parse()?;
    let (finished, results) = crossbeam_channel::unbounded::<Result<usize, String>>();
    let window = threads * crate::daemon::PREFETCH_PER_THREAD;
    let started = Instant::now();
    let (mut in_flight, mut done) = (0usize, 0u64);
    loop {
        while in_flight < window && started.elapsed() < duration {
            let finished = finished.clone();
            runner.run_then(Task::new(module.clone(), Vec::new()), 1, move |result| {
                // What the daemon does with a result before it reaches the broker: encode it.
                let encoded = if result.outcome.is_success() {
                    Ok(encode(&result).len())
                } else {
                    Err(result.outcome.to_string())
                };
                let _ = finished.send(encoded);
            });
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let result = results
            .recv_timeout(STALL_LIMIT)
            .context("the executor stopped answering")?;
        in_flight -= 1;
        if let Err(outcome) = result {
            bail!("benchmark task did not succeed: {outcome}");
        }
        done += 1;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// How long the benchmark waits for any task before calling the executor stuck.
const STALL_LIMIT: Duration = Duration::from_secs(30);
