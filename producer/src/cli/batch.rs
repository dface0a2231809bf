//! `warren batch` and `warren collect`: check everything, run, then print the summary and how to
//! resume when the run did not finish.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::args::{parse_rate, LocalArgs, OkArgs, QueueArgs, TaskArgs};
use super::progress::Bars;
use super::resume::Resume;
use super::EXIT_INTERRUPTED;
use crate::batch::{
    self, inputs, BatchOptions, BatchReport, BatchSpec, OutputFormat, DEFAULT_RESULTS_TTL,
};
use crate::producer::Producer;
use crate::publisher::DEFAULT_MAX_OUTSTANDING;
use warren_schemas::args::{parse_nonzero_duration, parse_positive};
use warren_schemas::BrokerNodes;

/// Arguments of `warren batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// The module, its arguments, environment and limits (for every task).
    #[command(flatten)]
    pub task: TaskArgs,

    /// Which exit codes count as success.
    #[command(flatten)]
    pub ok: OkArgs,

    /// The inputs: a directory (one task per file in it, not recursive, hidden files skipped)
    /// or a .jsonl file (one task per line; see docs/producer.md for the line format).
    #[arg(long, value_name = "DIR|FILE.jsonl")]
    pub inputs: PathBuf,

    /// Where results go: `<name>.out` (stdout) and `<name>.err` (stderr, if any) per input,
    /// `results.jsonl`, and the batch's manifest. Default: ./warren-batch-<batch id>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Where each task's stdout and stderr go: `files` (`<name>.out`, `<name>.err`) or `inline`
    /// (`stdout`/`stderr` fields of its `results.jsonl` line, base64 when not UTF-8: no file
    /// per task, for batches of many small outputs).
    #[arg(long, value_name = "files|inline", default_value_t = OutputFormat::Files)]
    pub output_format: OutputFormat,

    /// Publish and exit without collecting; `warren collect` fetches the results later.
    #[arg(long, conflicts_with = "local")]
    pub no_wait: bool,

    /// `--local`: run the batch in this process instead.
    #[command(flatten)]
    pub local: LocalArgs,

    /// Most tasks published per unit of time: 100, 100/s, 600/m, 1000/h. Default: unlimited.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Flow options.
    #[command(flatten)]
    pub flow: FlowArgs,

    /// How long the batch's results queue lives after its last use (no consumer, no
    /// declare). Results waiting in it when it expires are lost with it; results that come
    /// after go to the unroutable-results queue, where `warren collect` finds them.
    #[arg(long, default_value = "24h", value_parser = parse_nonzero_duration)]
    pub results_ttl: Duration,

    /// Queue names.
    #[command(flatten)]
    pub queues: QueueArgs,
}

/// Options shared by `batch` and `collect`.
#[derive(Debug, Clone, Args)]
pub struct FlowArgs {
    /// Most publishes awaiting the broker's confirm at once (memory and redo bound).
    #[arg(long, default_value_t = DEFAULT_MAX_OUTSTANDING, value_parser = parse_positive)]
    pub max_outstanding: usize,
}

/// Arguments of `warren collect`.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// The batch's id (printed by `warren batch`, and in `<out>/.warren-batch.json`).
    pub batch_id: Uuid,

    /// The batch's output directory. Default: ./warren-batch-<batch id>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Also publish the inputs an interrupted `warren batch` never sent, so the batch finishes.
    #[arg(long)]
    pub publish_rest: bool,

    /// Most tasks published per unit of time (with --publish-rest).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Flow options.
    #[command(flatten)]
    pub flow: FlowArgs,

    /// Queue names.
    #[command(flatten)]
    pub queues: QueueArgs,
}

/// Runs `warren batch`.
pub async fn run_batch(
    nodes: &BrokerNodes,
    args: BatchArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<i32> {
    // Everything is read and checked before connecting: a bad input sends nothing.
    let inputs = inputs::load(&args.inputs)?;
    if let Some(out) = &args.out {
        check_out_dir(out)?;
    }
    let spec = BatchSpec {
        module: args.task.module.clone(),
        args: args.task.guest_args(),
        env: args.task.env.clone(),
        limits: args.task.limits(),
        ok_exit_codes: args.ok.ok_exit_codes.clone(),
    };
    let batch_id = Uuid::new_v4();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| batch::default_out(batch_id));
    let options = BatchOptions {
        out: Some(out.clone()),
        output_format: args.output_format,
        max_outstanding: args.flow.max_outstanding,
        rate: args.rate,
        wait: !args.no_wait,
        results_ttl: args.results_ttl,
    };
    if args.local.local {
        return run_local(&args, spec, inputs, batch_id, &options, &shutdown);
    }
    let topology = args.queues.topology;
    let producer = Producer::connect_to(nodes, topology.clone(), None).await?;
    let bars = Bars::new(options.wait);
    bars.println(&format!(
        "warren: batch of {} tasks running {}{}",
        inputs.len(),
        spec.module,
        counting(&spec)
    ));
    let outcome = batch::run(
        &producer,
        batch_id,
        spec,
        inputs,
        &args.inputs,
        &options,
        &bars,
        &shutdown,
    )
    .await;
    let producer_node = producer.node();
    producer.close().await;
    let outcome = Resume {
        nodes,
        node: producer_node,
        topology: &topology,
        batch_id,
        out: &out,
        publish_rest: true,
        options: &options,
        observer: &bars,
        shutdown: &shutdown,
    }
    .after(outcome)
    .await;
    bars.finish();
    let report = outcome?;
    if !options.wait {
        eprintln!(
            "warren: published {} tasks; results in queue {}. Collect them with:\n  warren collect {} --out {}",
            report.published,
            report.results_queue,
            report.batch_id,
            report.out.display()
        );
        println!("{}", report.batch_id);
        return Ok(0);
    }
    Ok(conclude(&report))
}

/// Runs `warren batch --local`: the lanes in this process, no broker.
fn run_local(
    args: &BatchArgs,
    spec: BatchSpec,
    inputs: Vec<inputs::BatchInput>,
    batch_id: Uuid,
    options: &BatchOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<i32> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runner = args.local.runner(&spec.module.name, cpus)?;
    let bars = Bars::new(true);
    bars.println(&format!(
        "warren: local batch of {} tasks running {}{}",
        inputs.len(),
        spec.module,
        counting(&spec)
    ));
    let report = tokio::task::block_in_place(|| {
        batch::local::run(
            &runner,
            batch_id,
            spec,
            inputs,
            &args.inputs,
            options,
            &bars,
            shutdown,
        )
    });
    bars.finish();
    let report = report?;
    if report.interrupted {
        eprintln!(
            "warren: interrupted: {} of {} tasks ran, their results are in {}. A local batch cannot be resumed: run it again with another --out",
            report.results,
            report.inputs,
            report.out.display()
        );
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(conclude(&report))
}

/// " (exit codes … count as success)" when `--ok-exit-codes` lists more than 0.
fn counting(spec: &BatchSpec) -> String {
    if spec.ok_exit_codes.is_default() {
        String::new()
    } else {
        format!(" (exit codes {} count as success)", spec.ok_exit_codes)
    }
}

/// Runs `warren collect`.
pub async fn run_collect(
    nodes: &BrokerNodes,
    args: CollectArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<i32> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| batch::default_out(args.batch_id));
    let options = BatchOptions {
        out: Some(out.clone()),
        // The batch's own, from its manifest.
        output_format: OutputFormat::default(),
        max_outstanding: args.flow.max_outstanding,
        rate: args.rate,
        wait: true,
        results_ttl: DEFAULT_RESULTS_TTL,
    };
    // Fail on a wrong directory before connecting.
    let manifest = batch::manifest::Manifest::load(&out)?;
    anyhow::ensure!(
        manifest.batch_id == args.batch_id,
        "{} holds batch {}, not {}",
        out.display(),
        manifest.batch_id,
        args.batch_id
    );
    let topology = args.queues.topology;
    let producer = Producer::connect_to(nodes, topology.clone(), None).await?;
    let bars = Bars::new(true);
    let outcome = batch::collect(
        &producer,
        args.batch_id,
        &out,
        args.publish_rest,
        &options,
        &bars,
        &shutdown,
    )
    .await;
    let producer_node = producer.node();
    producer.close().await;
    let outcome = Resume {
        nodes,
        node: producer_node,
        topology: &topology,
        batch_id: args.batch_id,
        out: &out,
        publish_rest: args.publish_rest,
        options: &options,
        observer: &bars,
        shutdown: &shutdown,
    }
    .after(outcome)
    .await;
    bars.finish();
    let report = outcome?;
    Ok(conclude(&report))
}

/// `--out` must be a directory (or not exist yet).
fn check_out_dir(out: &std::path::Path) -> anyhow::Result<()> {
    if out.exists() && !out.is_dir() {
        anyhow::bail!("--out {}: exists and is not a directory", out.display());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        std::fs::metadata(parent)
            .with_context(|| format!("--out {}: cannot use its parent directory", out.display()))?;
    }
    Ok(())
}

/// Prints the summary (stdout) and what to do next (stderr); returns the exit code.
fn conclude(report: &BatchReport) -> i32 {
    println!("batch       {}", report.batch_id);
    println!("out         {}", report.out.display());
    print!("{}", report.summary);
    println!(
        "collected   {} results in {:.2} s ({:.1} tasks/s){}",
        report.collected_now,
        report.elapsed.as_secs_f64(),
        report.rate(),
        if report.duplicates > 0 {
            format!(", {} duplicate results dropped", report.duplicates)
        } else {
            String::new()
        }
    );
    let resume = format!(
        "warren collect {} --out {}",
        report.batch_id,
        report.out.display()
    );
    if report.interrupted {
        eprintln!(
            "warren: interrupted: {} of {} inputs published, {} results on disk. Resume with:\n  {resume}{}",
            report.published,
            report.inputs,
            report.results,
            if report.unpublished() > 0 { "    (add --publish-rest to also send the inputs not yet published)" } else { "" }
        );
        return EXIT_INTERRUPTED;
    }
    if report.unpublished() > 0 {
        eprintln!(
            "warren: {} of {} inputs were never published; send them with:\n  {resume} --publish-rest",
            report.unpublished(),
            report.inputs
        );
        return 1;
    }
    if report.missing() > 0 {
        eprintln!(
            "warren: {} results still missing; resume with:\n  {resume}",
            report.missing()
        );
        return 1;
    }
    let failures = report.summary.failures();
    if failures > 0 {
        eprintln!(
            "warren: {failures} of {} tasks did not succeed; see {}",
            report.inputs,
            report.out.join(batch::sink::RESULTS_FILE).display()
        );
        return 1;
    }
    0
}
