//! `warren submit`: one task, and optionally its answer.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use warren_schemas::{BrokerNodes, Outcome, Task, TaskResult};

use super::args::{parse_input, InputArg, LocalArgs, OkArgs, QueueArgs, TaskArgs};
use super::EXIT_INTERRUPTED;
use crate::batch::summary::micros;
use crate::batch::OkExitCodes;
use crate::Producer;
use warren_schemas::args::parse_nonzero_duration;

/// Arguments of `warren submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The module, its arguments, environment and limits.
    #[command(flatten)]
    pub task: TaskArgs,

    /// Which exit codes count as success (with --wait: exit status 0 for them).
    #[command(flatten)]
    pub ok: OkArgs,

    /// Input for the guest's stdin: a file, or `-` for this process's stdin. Default: empty.
    #[arg(long, value_name = "FILE|-", value_parser = parse_input)]
    pub input: Option<InputArg>,

    /// Wait for the result: print the guest's stdout (and its stderr to stderr), report the
    /// outcome and timings on stderr, and exit with the task's exit code (124 timeout, 125
    /// memory limit, 126 output limit, 127 module not found, 128 trap, 2 invalid task).
    #[arg(long)]
    pub wait: bool,

    /// With --wait: give up after this long (exit 1). Default: wait until the result comes.
    #[arg(long, value_parser = parse_nonzero_duration, requires = "wait")]
    pub wait_timeout: Option<Duration>,

    /// Without --wait: queue the result should go to. Default: the shared results queue.
    #[arg(long, conflicts_with_all = ["wait", "local"])]
    pub reply_to: Option<String>,

    /// `--local`: run the task in this process and print its result, as --wait does.
    #[command(flatten)]
    pub local: LocalArgs,

    /// Queue names.
    #[command(flatten)]
    pub queues: QueueArgs,
}

/// Runs `warren submit`.
pub async fn run(
    nodes: &BrokerNodes,
    args: SubmitArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<i32> {
    // Read the input before connecting: a missing file must not leave anything behind.
    let input = match &args.input {
        None => Vec::new(),
        Some(InputArg::Stdin) => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            buf
        }
        Some(InputArg::File(path)) => std::fs::read(path)
            .with_context(|| format!("--input {}: cannot read", path.display()))?,
    };
    let mut task = Task::new(args.task.module.clone(), input);
    task.args = args.task.guest_args();
    task.env = args.task.env.clone();
    task.limits = args.task.limits();

    if args.local.local {
        let runner = args.local.runner(&task.module.name, 1)?;
        let result = tokio::task::block_in_place(|| runner.run_one(task))?;
        return conclude(&result, &args.ok.ok_exit_codes);
    }
    let producer = Producer::connect_to(nodes, args.queues.topology, None).await?;
    if !args.wait {
        producer.submit(&task, args.reply_to.as_deref()).await?;
        println!("{}", task.id);
        producer.close().await;
        return Ok(0);
    }
    let waited = async {
        match args.wait_timeout {
            Some(limit) => tokio::time::timeout(limit, producer.submit_and_wait(&task))
                .await
                .ok(),
            None => Some(producer.submit_and_wait(&task).await),
        }
    };
    let result = tokio::select! {
        () = shutdown.cancelled() => {
            eprintln!("warren: interrupted; task {} stays queued, its result will not be shown", task.id);
            return Ok(EXIT_INTERRUPTED);
        }
        result = waited => result,
    };
    let Some(result) = result else {
        eprintln!(
            "warren: no result for task {} within {}; it stays queued",
            task.id,
            humantime::format_duration(args.wait_timeout.unwrap_or_default())
        );
        return Ok(1);
    };
    let result = result?;
    producer.close().await;
    conclude(&result, &args.ok.ok_exit_codes)
}

/// Prints `result` and returns the exit status: the task's code, or 0 for a non-zero exit code
/// that `ok` accepts.
fn conclude(result: &TaskResult, ok: &OkExitCodes) -> anyhow::Result<i32> {
    let accepted =
        matches!(result.outcome, Outcome::NonZeroExit { .. }) && ok.accepts(&result.outcome);
    report(result, accepted.then_some(ok))?;
    Ok(if accepted {
        0
    } else {
        result.outcome.exit_code()
    })
}

/// Guest stdout to stdout, guest stderr and a report line to stderr; `accepted` is set when the
/// exit code counts as success by `--ok-exit-codes`.
fn report(result: &TaskResult, accepted: Option<&OkExitCodes>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&result.stdout)?;
    stdout.flush()?;
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(&result.stderr)?;
    if result.stderr_truncated {
        writeln!(stderr, "warren: (stderr truncated by the worker)")?;
    }
    let module = result
        .module
        .as_ref()
        .map(|m| format!("{}@{}…", m.name, m.digest.get(..8).unwrap_or(&m.digest)))
        .unwrap_or_else(|| "-".into());
    let t = &result.timings;
    let us = |ns: u64| micros(ns as f64 / 1_000.0);
    let outcome = match accepted {
        Some(ok) => format!("{} (success by --ok-exit-codes {ok})", result.outcome),
        None => result.outcome.to_string(),
    };
    writeln!(
        stderr,
        "warren: {outcome} | task {} | module {module} | worker {} (attempt {}) | queue {} | instantiate {} | run {} | total {}",
        result.task_id,
        result.worker_id,
        result.attempt,
        us(t.queue_wait_ns),
        us(t.instantiate_ns),
        us(t.run_ns),
        us(t.total_ns),
    )?;
    Ok(())
}
