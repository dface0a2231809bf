//! `--local`: a batch run in this process, with no broker, on the worker's own sandbox, registry
//! and task runner — the same limits and outcomes, and the same output directory
//! (`<name>.out`, `<name>.err`, `results.jsonl`) as a batch through the queue. Like Celery's
//! eager mode: for trying warren, for CI pipelines and for one-machine jobs.
//!
//! `lanes` threads (each with the stack a daemon lane has) take the next input in turn, read it,
//! run its task and send the result to the calling thread, which writes it and reports progress. Only the module the
//! batch names is loaded (from the AOT cache when it is there). A local batch is not resumable
//! with `warren collect` (nothing was queued): an interrupted one is run again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren_schemas::{Task, TaskResult};
use warren_worker::runner::default_worker_id;
use warren_worker::{ModuleSource, SandboxConfig, TaskRunner};

use super::drive::build_task;
use super::inputs::BatchInput;
use super::manifest::Manifest;
use super::sink::{Sink, RESULTS_FILE};
use super::summary::Summary;
use super::{default_out, BatchOptions, BatchReport, BatchSpec, Observer};
use crate::error::{ProducerError, Result};

/// Runs tasks in this process: a registry holding only the module they name, and the lanes.
pub struct LocalRunner {
    runner: TaskRunner,
    lanes: usize,
    guest_stack: usize,
}

impl LocalRunner {
    /// Opens the registry of `source` over a sandbox of `config` with `lanes` shards, and loads
    /// only `module`.
    pub fn open(
        source: &ModuleSource,
        config: SandboxConfig,
        lanes: usize,
        module: &str,
    ) -> anyhow::Result<Self> {
        let config = SandboxConfig {
            max_concurrent_tasks: Some(lanes),
            ..config
        };
        let guest_stack = config.guest_thread_stack();
        let registry = source.open_registry(config)?;
        source.load_named(&registry, module)?;
        Ok(LocalRunner {
            runner: TaskRunner::new(registry, default_worker_id()),
            lanes,
            guest_stack,
        })
    }

    /// Runs one task on a lane's thread and returns its result.
    pub fn run_one(&self, task: Task) -> Result<TaskResult> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("warren-local-0".into())
                .stack_size(self.guest_stack)
                .spawn_scoped(scope, || self.runner.run_here(task, 1))
                .map_err(|e| ProducerError::Internal(format!("cannot start a lane: {e}")))?
                .join()
                .map_err(|_| ProducerError::Internal("the lane running the task panicked".into()))
        })
    }

    /// Runs tasks `0..count` on the lanes, each built by `task(i)` on the lane that runs it (so
    /// inputs are read as they run, not all held at once), handing the results to `on_results`
    /// on the calling thread as they come — every result that is ready at once together, so
    /// the caller can write them with one `write`. Stops taking new tasks once `stop` is
    /// cancelled, or after an error; returns whether `stop` was cancelled.
    pub fn run_all(
        &self,
        count: usize,
        task: impl Fn(usize) -> Result<(u64, Task)> + Sync,
        stop: &CancellationToken,
        mut on_results: impl FnMut(&[(u64, TaskResult)]) -> Result<()>,
    ) -> Result<bool> {
        let lanes_stop = stop.child_token();
        let next = AtomicUsize::new(0);
        let (sender, results) = mpsc::sync_channel::<Result<(u64, TaskResult)>>(self.lanes * 2);
        std::thread::scope(|scope| -> Result<()> {
            for lane in 0..self.lanes {
                let (task, next, sender, lanes_stop) = (&task, &next, sender.clone(), &lanes_stop);
                std::thread::Builder::new()
                    .name(format!("warren-local-{lane}"))
                    .stack_size(self.guest_stack)
                    .spawn_scoped(scope, move || {
                        while !lanes_stop.is_cancelled() {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= count {
                                break;
                            }
                            let ran =
                                task(i).map(|(index, task)| (index, self.runner.run_here(task, 1)));
                            if sender.send(ran).is_err() {
                                break;
                            }
                        }
                    })
                    .map_err(|e| ProducerError::Internal(format!("cannot start a lane: {e}")))?;
            }
            drop(sender);
            let mut outcome = Ok(());
            while let Ok(first) = results.recv() {
                if outcome.is_err() {
                    // Let the lanes finish what they hold.
                    continue;
                }
                outcome = std::iter::once(first)
                    .chain(results.try_iter())
                    .collect::<Result<Vec<_>>>()
                    .and_then(|burst| on_results(&burst));
                if outcome.is_err() {
                    lanes_stop.cancel();
                }
            }
            outcome
        })?;
        Ok(stop.is_cancelled())
    }
}

/// Runs batch `batch_id` over `inputs` (already loaded and checked from `inputs_path`) on
/// `runner`, writing the output directory as a batch through the queue does.
#[allow(clippy::too_many_arguments)]
pub fn run(
    runner: &LocalRunner,
    batch_id: Uuid,
    spec: BatchSpec,
    inputs: Vec<BatchInput>,
    inputs_path: &std::path::Path,
    options: &BatchOptions,
    observer: &dyn Observer,
    shutdown: &CancellationToken,
) -> Result<BatchReport> {
    let started = Instant::now();
    let out = options.out.clone().unwrap_or_else(|| default_out(batch_id));
    if out.join(RESULTS_FILE).exists() {
        return Err(ProducerError::OutDir(format!(
            "{} already holds a {RESULTS_FILE}; choose another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(&out).map_err(|e| ProducerError::io(&out, e))?;
    // The batch's description, as a queued batch stores it; here it only names tasks and feeds
    // the progress report (nothing is queued, so there is nothing for `collect` to resume).
    let manifest = Manifest {
        output_format: options.output_format,
        ..Manifest::new(batch_id, spec, &inputs, inputs_path)
    };
    let mut sink = Sink::open(&out, manifest.ok_exit_codes.clone(), manifest.output_format)?;
    let count = inputs.len() as u64;
    observer.started(&manifest, count, count, 0);
    let task = |i: usize| {
        let index = i as u64;
        Ok((index, build_task(&manifest, index, &inputs[i])?))
    };
    let interrupted = runner.run_all(inputs.len(), task, shutdown, |ready| {
        observer.confirmed(ready.len() as u64);
        let burst = ready
            .iter()
            .map(|(index, result)| {
                let entry = manifest.task(*index).ok_or_else(|| {
                    ProducerError::Internal(format!("task {index} is not in the batch"))
                })?;
                Ok((result, *index, entry.name.as_str()))
            })
            .collect::<Result<Vec<_>>>()?;
        for record in sink.write_all(burst)? {
            observer.completed(record);
        }
        Ok(())
    })?;
    let results = sink.records().len() as u64;
    Ok(BatchReport {
        batch_id,
        out,
        results_queue: String::new(),
        inputs: count,
        published: if interrupted { results } else { count },
        results,
        collected_now: results,
        duplicates: 0,
        summary: Summary::of(sink.records()),
        elapsed: started.elapsed().max(Duration::from_nanos(1)),
        interrupted,
        waited: true,
        late: None,
    })
}
