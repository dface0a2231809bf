//! Batches: one task per input, published with pipelined confirms, results collected into an
//! output directory while publishing goes on — and resumable after any interruption.
//!
//! # Safe to interrupt
//! A batch's results go to a durable queue of its own (`warren.results.batch.<id>`, deleted by
//! the broker [`BatchOptions::results_ttl`] after its last use). Before the first publish the
//! [manifest](manifest) (task ids, input names) is on disk; the [journal](journal) records each
//! task before and after its publish; the [sink](sink) writes each result before its message is
//! acked. So after Ctrl-C or a crash at any point, [`collect`] knows what was published, gets
//! every result that is not on disk yet from the queue, and skips those that are: nothing
//! published is lost and nothing is written twice.
//!
//! # Layout
//! - [`inputs`]: reading and checking inputs (directory or JSONL) before anything is sent.
//! - [`manifest`]: `.warren-batch.json`, the batch's description.
//! - [`journal`]: `.warren-published`, what reached the broker.
//! - [`sink`]: `results.jsonl`, and `<name>.out`, `<name>.err` or the output inline.
//! - [`output_format`]: `--output-format files|inline`.
//! - [`summary`]: counts and latency percentiles.
//! - [`ok_codes`]: which exit codes count as success (`--ok-exit-codes`).
//! - [`late`]: results that arrived after the batch's results queue expired, taken from the
//!   unroutable-results queue.
//! - `drive`: the publish and collect loops, run side by side.
//! - [`local`]: `--local`, the batch run in this process on the worker's sandbox.
//! - this file: starting a batch, resuming one.

mod drive;
pub mod inputs;
pub mod journal;
pub mod late;
pub mod local;
pub mod manifest;
pub mod ok_codes;
pub mod output_format;
pub mod sink;
pub mod summary;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;
use warren_schemas::{ModuleRef, TaskLimits};

use crate::error::{ProducerError, Result};
use crate::producer::Producer;
use drive::Run;
use inputs::BatchInput;
use journal::Journal;
use late::LateResults;
use manifest::{results_queue_name, Manifest};
pub use ok_codes::OkExitCodes;
pub use output_format::OutputFormat;
use sink::{Record, Sink};
use summary::Summary;

/// Default lifetime of an unused batch results queue.
pub const DEFAULT_RESULTS_TTL: Duration = Duration::from_secs(24 * 3600);

/// What every task of a batch runs.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    /// The module.
    pub module: ModuleRef,
    /// Arguments for every task (a JSONL line's `args` are appended).
    pub args: Vec<String>,
    /// Environment for every task (a JSONL line's `env` overrides entries of the same name).
    pub env: Vec<(String, String)>,
    /// Limits for every task.
    pub limits: TaskLimits,
    /// Exit codes that count as success in `results.jsonl`, the summary and the exit status.
    pub ok_exit_codes: OkExitCodes,
}

/// How to run a batch.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Output directory; `None` = `./warren-batch-<id>`.
    pub out: Option<PathBuf>,
    /// Where each task's stdout and stderr go (a new batch's choice; `collect` keeps the
    /// batch's).
    pub output_format: OutputFormat,
    /// Most publishes awaiting their confirm at once.
    pub max_outstanding: usize,
    /// Most tasks published per second; `None` = as fast as confirms allow.
    pub rate: Option<f64>,
    /// Collect results (else publish and return; `collect` fetches them later).
    pub wait: bool,
    /// How long the results queue outlives its last use.
    pub results_ttl: Duration,
}

/// Progress callbacks, e.g. for progress bars. Every method has an empty default.
pub trait Observer {
    /// Work is about to start: `to_publish` tasks to publish, `expected` results in all of
    /// which `done` are already on disk.
    fn started(&self, _manifest: &Manifest, _to_publish: u64, _expected: u64, _done: u64) {}
    /// The broker confirmed `count` more tasks.
    fn confirmed(&self, _count: u64) {}
    /// One more result is on disk.
    fn completed(&self, _record: &Record) {}
    /// The batch's results queue was gone; `late` says what was taken from the
    /// unroutable-results queue instead, and `missing` results are still awaited.
    fn late_results(&self, _late: &LateResults, _missing: u64) {}
}

/// An [`Observer`] that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// How a batch (or a collection) ended.
#[derive(Debug, Clone)]
pub struct BatchReport {
    /// The batch.
    pub batch_id: Uuid,
    /// Its output directory.
    pub out: PathBuf,
    /// Its results queue.
    pub results_queue: String,
    /// Inputs in the batch.
    pub inputs: u64,
    /// Tasks published so far (all runs), including ones whose confirm never came.
    pub published: u64,
    /// Results on disk (all runs).
    pub results: u64,
    /// Results this run wrote.
    pub collected_now: u64,
    /// Duplicate results dropped by this run.
    pub duplicates: u64,
    /// Summary of every result on disk.
    pub summary: Summary,
    /// Wall time of this run.
    pub elapsed: Duration,
    /// True when stopped by the shutdown signal.
    pub interrupted: bool,
    /// False for `--no-wait`: nothing was collected.
    pub waited: bool,
    /// Set when the results queue was gone and late results were looked for in the
    /// unroutable-results queue.
    pub late: Option<LateResults>,
}

impl BatchReport {
    /// Inputs never published.
    pub fn unpublished(&self) -> u64 {
        self.inputs - self.published
    }

    /// Published tasks without a result on disk.
    pub fn missing(&self) -> u64 {
        self.published.saturating_sub(self.results)
    }

    /// Every input has a result and every result is a success.
    pub fn all_succeeded(&self) -> bool {
        self.results == self.inputs && self.summary.failures() == 0
    }

    /// Results collected per second of this run.
    pub fn rate(&self) -> f64 {
        self.collected_now as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The default output directory of batch `id`.
pub fn default_out(id: Uuid) -> PathBuf {
    PathBuf::from(format!("warren-batch-{id}"))
}

/// Runs a new batch `batch_id` (e.g. `Uuid::new_v4()`) over `inputs` (already loaded and
/// checked from `inputs_path`) until every result is on disk, `shutdown` is cancelled, or
/// something fails.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    producer: &Producer,
    batch_id: Uuid,
    spec: BatchSpec,
    inputs: Vec<BatchInput>,
    inputs_path: &Path,
    options: &BatchOptions,
    observer: &dyn Observer,
    shutdown: &CancellationToken,
) -> Result<BatchReport> {
    let started = Instant::now();
    let out = options.out.clone().unwrap_or_else(|| default_out(batch_id));
    if out.join(sink::RESULTS_FILE).exists() && !Manifest::path(&out).exists() {
        return Err(ProducerError::OutDir(format!(
            "{} already holds a {} of something else; choose another --out",
            out.display(),
            sink::RESULTS_FILE
        )));
    }
    if Manifest::path(&out).exists() {
        let other = Manifest::load(&out)
            .map(|m| m.batch_id.to_string())
            .unwrap_or_else(|_| "another batch".into());
        return Err(ProducerError::OutDir(format!(
            "{} already holds batch {other}; resume it with `warren collect {other} --out {}`, or choose another --out",
            out.display(),
            out.display()
        )));
    }
    let manifest = Manifest {
        results_queue: results_queue_name(batch_id),
        results_ttl_ms: u64::try_from(options.results_ttl.as_millis()).unwrap_or(u64::MAX),
        tasks_queue: producer.topology().tasks.clone(),
        output_format: options.output_format,
        ..Manifest::new(batch_id, spec, &inputs, inputs_path)
    };
    // Manifest first: from the first publish on, `collect` must be able to find the batch.
    manifest.store(&out)?;
    producer
        .declare_results_queue(&manifest.results_queue, options.results_ttl)
        .await?;
    info!(batch_id = %batch_id, out = %out.display(), inputs = inputs.len(), "batch created");
    let (journal, _) = Journal::open(&out)?;
    let sink = Sink::open(&out, manifest.ok_exit_codes.clone(), manifest.output_format)?;
    let to_publish: Vec<(u64, BatchInput)> = (0u64..).zip(inputs).collect();
    let run = Run {
        producer,
        manifest: &manifest,
        out,
        observer,
        shutdown,
        started,
    };
    run.drive(journal, sink, to_publish, options).await
}

/// Finishes collecting batch `batch_id` whose output directory is `out`; with `publish_rest`,
/// first publishes the inputs an interrupted `batch` never sent.
pub async fn collect(
    producer: &Producer,
    batch_id: Uuid,
    out: &Path,
    publish_rest: bool,
    options: &BatchOptions,
    observer: &dyn Observer,
    shutdown: &CancellationToken,
) -> Result<BatchReport> {
    let started = Instant::now();
    let manifest = Manifest::load(out)?;
    if manifest.batch_id != batch_id {
        return Err(ProducerError::OutDir(format!(
            "{} holds batch {}, not {batch_id}",
            out.display(),
            manifest.batch_id
        )));
    }
    if manifest.tasks_queue != producer.topology().tasks {
        warn!(batch = %manifest.tasks_queue, now = %producer.topology().tasks, "the batch was published to another task queue; republishing goes to the current one");
    }
    let (journal, state) = Journal::open(out)?;
    let mut sink = Sink::open(out, manifest.ok_exit_codes.clone(), manifest.output_format)?;
    let done = |sink: &Sink| -> HashSet<u64> { sink.records().iter().map(|r| r.index).collect() };
    let on_disk = done(&sink);
    // Sent but unconfirmed: maybe lost, so sent again (same task id; duplicates are dropped).
    let mut indices: Vec<u64> = state
        .unconfirmed()
        .into_iter()
        .filter(|i| !on_disk.contains(i))
        .collect();
    if publish_rest {
        indices.extend(
            manifest
                .tasks
                .iter()
                .map(|t| t.index)
                .filter(|i| !state.sent.contains(i)),
        );
    }
    let waiting_for = state.sent.iter().filter(|i| !on_disk.contains(i)).count();
    let run = Run {
        producer,
        manifest: &manifest,
        out: out.to_owned(),
        observer,
        shutdown,
        started,
    };
    if indices.is_empty() && waiting_for == 0 {
        let report = run.report(journal.state().sent.len() as u64, &sink, 0, 0, false, true);
        if report.unpublished() == 0 {
            run.tidy_up().await;
        }
        return Ok(report);
    }
    let mut late = None;
    match producer.inspect_queue(&manifest.results_queue).await {
        Err(ProducerError::QueueNotFound { .. }) => {
            // Expired (`results_ttl` after its last use) or deleted. Results from now on go to
            // a new one; those that came back before are in the unroutable-results queue.
            let ttl = Duration::from_millis(manifest.results_ttl_ms);
            producer
                .declare_results_queue(&manifest.results_queue, ttl)
                .await?;
            if waiting_for > 0 {
                let found = late::take(producer, &manifest, &mut sink, observer).await?;
                let on_disk = done(&sink);
                let missing = state.sent.iter().filter(|i| !on_disk.contains(i)).count();
                info!(queue = %manifest.results_queue, from = %found.unroutable_queue, taken = found.taken, missing, "the batch's results queue was gone; late results taken from the unroutable-results queue");
                observer.late_results(&found, missing as u64);
                late = Some(found);
            }
        }
        other => {
            other?;
        }
    }
    let on_disk = done(&sink);
    indices.retain(|i| !on_disk.contains(i));
    let to_publish = if indices.is_empty() {
        Vec::new()
    } else {
        reload_inputs(&manifest, &indices)?
    };
    let mut report = run.drive(journal, sink, to_publish, options).await?;
    report.late = late;
    Ok(report)
}

/// Re-reads the batch's inputs for the tasks at `indices`, checking they still match.
fn reload_inputs(manifest: &Manifest, indices: &[u64]) -> Result<Vec<(u64, BatchInput)>> {
    let inputs = inputs::load(&manifest.inputs)?;
    if inputs.len() != manifest.tasks.len() {
        return Err(ProducerError::OutDir(format!(
            "{} now has {} inputs, the batch had {}; cannot republish",
            manifest.inputs.display(),
            inputs.len(),
            manifest.tasks.len()
        )));
    }
    let mut selected = Vec::with_capacity(indices.len());
    for &index in indices {
        let (Some(entry), Some(input)) = (
            manifest.task(index),
            usize::try_from(index).ok().and_then(|i| inputs.get(i)),
        ) else {
            continue;
        };
        if entry.name != input.name {
            return Err(ProducerError::OutDir(format!(
                "{}: input {index} is now {:?}, the batch had {:?}; cannot republish",
                manifest.inputs.display(),
                input.name,
                entry.name
            )));
        }
        selected.push((index, input.clone()));
    }
    Ok(selected)
}
