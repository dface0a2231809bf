//! `warren-bench executor`: warren's whole task path without a broker, on all cores, next
//! to the smallest loop raw wasmtime allows on the same engines and module — fresh store,
//! instantiate from an `InstancePre`, call `_start`, drop — measured in the same run. Each raw
//! thread uses its own shard's engine, as each of warren's lanes does, so the ratio is warren's
//! per-task work alone.
//!
//! The ratio says what warren's per-task work costs over the bare minimum: decoding the task
//! message, the look-up and task → call translation, the guest's WASI state with captured stdio,
//! limits, deadline and outcome classification, and the encoded result — everything a daemon
//! lane does per task except talking to the broker.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use warren_schemas::args::{parse_bytes, parse_duration};
use warren_schemas::{decode, encode, ModuleRef, Task};
use warren_worker::sandbox::Sandbox;
use warren_worker::{ModuleRegistry, ModuleSource, SandboxConfig, TaskRunner};
use wasmtime::{Engine, InstancePre, Linker, Module, Store};
use wasmtime_wasi::p1::{add_to_linker_sync, WasiP1Ctx};
use wasmtime_wasi::WasiCtxBuilder;

/// Arguments of `warren-bench executor`.
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
    #[arg(long, default_value = "64KiB", value_parser = parse_bytes)]
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
    /// warren (a daemon lane's task path minus the broker): tasks per second.
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
    let sandbox = Arc::new(Sandbox::new(config)?);
    let registry = Arc::new(ModuleRegistry::new(
        sandbox.clone(),
        &args.source.cache_dir()?,
    )?);
    let path = args
        .source
        .modules_dir
        .join(format!("{}.wasm", args.module));
    registry.load_file(&path).with_context(|| {
        format!(
            "cannot load {} (run modules/build.sh first)",
            path.display()
        )
    })?;

    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let raw_shards = raw_shards(&sandbox, &path)?;
    let runner = TaskRunner::new(registry, "bench");
    let (mut raws, mut warrens) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        raws.push(raw_loop(&raw_shards, threads, args.duration)?);
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

/// The raw loop's per-shard set-up: each of warren's engines with the module at `path` linked to
/// wasmtime-wasi, so each raw thread uses its own engine as each of warren's lanes does. The
/// module is compiled once and mapped from a file, as warren maps it from its AOT cache, so
/// both sides instantiate from the same kind of image.
type RawShards<'a> = Vec<(&'a Engine, InstancePre<WasiP1Ctx>)>;

fn raw_shards<'a>(sandbox: &'a Sandbox, path: &Path) -> anyhow::Result<RawShards<'a>> {
    let compiled = sandbox.engine().precompile_module(&std::fs::read(path)?)?;
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(&compiled)?;
    sandbox
        .engines()
        .map(|engine| {
            // SAFETY: the file holds `precompile_module` output of shard 0's engine, written
            // just above to a private temporary file nothing else changes; every shard's engine
            // has the same configuration.
            let module = unsafe { Module::deserialize_file(engine, file.path())? };
            let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
            add_to_linker_sync(&mut linker, |ctx| ctx)?;
            Ok((engine, linker.instantiate_pre(&module)?))
        })
        .collect()
}

/// The bare minimum on `threads` threads: fresh store with an empty wasmtime-wasi context (the
/// stock way to give a command its imports), instantiate from a pre-linked module, call
/// `_start`, drop. Thread `i` uses shard `i`.
fn raw_loop(shards: &RawShards<'_>, threads: usize, duration: Duration) -> anyhow::Result<f64> {
    tasks_per_second(threads, duration, "raw loop", |thread| {
        let (engine, pre) = &shards[thread % shards.len()];
        let mut store = Store::new(engine, WasiCtxBuilder::new().build_p1());
        // The engine interrupts on epochs; this store must not be interrupted.
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = pre.instantiate(&mut store)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call(&mut store, ())?;
        Ok(())
    })
}

/// warren's path as a daemon lane takes it, on `threads` threads: decode the task message,
/// [`TaskRunner::run_here`] (look-up, task → call, WASI state with captured stdio, limits,
/// deadline, outcome, result), encode the result for publishing.
fn warren_loop(
    runner: &TaskRunner,
    module: &str,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let message = encode(&Task::new(module.parse::<ModuleRef>()?, Vec::new()));
    tasks_per_second(threads, duration, "warren loop", |_| {
        let task: Task = decode(&message, message.len())?;
        let result = runner.run_here(task, 1);
        if !result.outcome.is_success() {
            bail!("benchmark task did not succeed: {}", result.outcome);
        }
        std::hint::black_box(encode(&result));
        Ok(())
    })
}

/// Runs `task` (given the thread's index) over and over on `threads` threads for `duration`;
/// tasks per second, all threads together. `side` names the loop in errors.
fn tasks_per_second(
    threads: usize,
    duration: Duration,
    side: &str,
    task: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let counts = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let task = &task;
                scope.spawn(move || -> anyhow::Result<u64> {
                    let mut done = 0;
                    while started.elapsed() < duration {
                        task(thread)?;
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("{side} thread panicked")))
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}
