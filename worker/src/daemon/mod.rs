//! `warren-worker run`: the queue worker daemon.
//!
//! Consumes tasks from RabbitMQ, runs each in a fresh sandbox, publishes the result with
//! publisher confirms, and only then acks — at-least-once, nothing lost. Reconnects with capped
//! backoff when the broker goes away; on shutdown stops consuming, finishes what is in flight,
//! and closes cleanly within the drain timeout.
//!
//! # Layout
//! - queue names and declarations: [`warren_schemas::topology`], shared with the producer.
//! - `session`: one connection's life — declare, QoS, consume, drain.
//! - `lanes`: the threads that take deliveries and carry each to its result.
//! - `delivery`: the per-task path (decode → run → publish confirmed → ack).
//! - `settler`: waits for a session's publisher confirms and settles deliveries.
//! - `acks`: the rules for coalescing acks safely.

mod acks;
mod delivery;
mod lanes;
mod session;
mod settler;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use warren_schemas::task::unix_now_ns;
use warren_schemas::{Outcome, ResolvedModule, Task, TaskResult, Timings};

use crate::config::{parse_bytes, parse_duration};
use crate::http::{self, HttpState};
use crate::registry::ModuleRegistry;
use crate::runner::{default_worker_id, TaskRunner};
use crate::sandbox::Sandbox;
use crate::watch::watch_modules;
use crate::{metrics, ModuleSource, SandboxConfig};
use lanes::Lanes;
pub use warren_schemas::Topology;

/// Arguments of `warren-worker run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Broker URL. Its password is never logged.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Queue names and delivery limit.
    #[command(flatten)]
    pub topology: Topology,

    /// Deliveries the broker may send before acks (per consumer). Default: 128 per lane
    /// thread, for short tasks: tasks beyond the running ones wait for a lane or for their
    /// result's confirm, which keeps the broker round trip and the confirm latency off the
    /// critical path. They hold no pool slot (instances exist only while a thread runs them),
    /// so a large prefetch cannot exhaust the pool. For tasks of seconds, set a few per lane:
    /// a worker holding many waiting tasks starves idle workers. Memory bound: prefetch ×
    /// --max-message.
    #[arg(long, env = "WARREN_PREFETCH")]
    pub prefetch: Option<u16>,

    /// Address of the metrics/health HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "WARREN_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// How long shutdown may take to finish in-flight tasks before giving them back.
    #[arg(long, env = "WARREN_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Largest task message accepted; larger ones are dead-lettered.
    #[arg(long, env = "WARREN_MAX_MESSAGE", default_value = "64MiB", value_parser = parse_bytes)]
    pub max_message: u64,

    /// Name reported in results. Default: `<hostname>-<pid>`.
    #[arg(long, env = "WARREN_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Where modules come from.
    #[command(flatten)]
    pub source: ModuleSource,

    /// Sandbox limits and pool size.
    #[command(flatten)]
    pub sandbox: SandboxConfig,

    /// Benchmark aid: answer every task with its input as a success result, without running
    /// wasm (the result names the task's module with an all-zero digest, so it is as large as a
    /// real one). Everything else (decode, publish confirmed, ack) is the real path, so `bench
    /// queue` uses it to measure the broker-bound ceiling. Never useful in production.
    #[arg(long, hide = true)]
    pub null_executor: bool,

    /// Fault injection for tests: the process aborts (as on a crash the sandbox cannot catch)
    /// when it receives a task for this module, so tests can show such a task ends in the
    /// dead-letter queue after the delivery limit instead of killing workers forever.
    #[arg(long, hide = true, env = "WARREN_TEST_CRASH_ON_MODULE")]
    pub test_crash_on_module: Option<String>,
}

/// Default deliveries outstanding per lane. The window must cover a task's whole round trip —
/// delivery, run, publish, the result's confirm (a quorum queue confirms after its log is
/// written: milliseconds), the ack — or the worker idles waiting for the broker: with 32 per
/// lane two lanes topped out at ~25 k trivial tasks/s, with 128 at ~31–34 k (`bench queue
/// --worker-arg=--prefetch=N`, BENCHMARKS.md). Long tasks want a small `--prefetch` instead,
/// so idle workers are not starved by a busy one holding the queue's tasks.
pub const PREFETCH_PER_THREAD: usize = 128;

/// Shared state of a running worker.
pub struct Worker {
    execute: Execute,
    runner_id: String,
    amqp_url: String,
    topology: Topology,
    prefetch: u16,
    drain_timeout: Duration,
    max_message_bytes: usize,
    consuming: Arc<AtomicBool>,
    crash_on_module: Option<String>,
}

/// Runs the worker until `shutdown` completes, then drains and returns.
pub async fn run(
    args: RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let concurrency = args.sandbox.concurrency();
    let prefetch = match args.prefetch {
        None => u16::try_from(concurrency.saturating_mul(PREFETCH_PER_THREAD)).unwrap_or(u16::MAX),
        Some(0) => anyhow::bail!("--prefetch must be at least 1"),
        Some(p) => p,
    };
    let lane_stack = args.sandbox.guest_thread_stack();
    let sandbox = Arc::new(Sandbox::new(args.sandbox)?);
    let registry = Arc::new(ModuleRegistry::new(sandbox, &args.source.cache_dir()?)?);
    let modules_dir = &args.source.modules_dir;
    registry.load_dir(modules_dir).with_context(|| {
        format!(
            "cannot read the modules directory {}",
            modules_dir.display()
        )
    })?;
    let _watcher = watch_modules(registry.clone(), modules_dir)
        .with_context(|| format!("cannot watch {}", modules_dir.display()))?;
    info!(modules = registry.len(), dir = %modules_dir.display(), "modules loaded");

    let stop = CancellationToken::new();
    let consuming = Arc::new(AtomicBool::new(false));
    let http_state = HttpState {
        metrics: metrics::install()?,
        registry: registry.clone(),
        consuming: consuming.clone(),
    };
    let bound = http::serve(args.metrics_addr, http_state, stop.clone())
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    info!(addr = %bound, "metrics listening");

    let runner_id = args.worker_id.unwrap_or_else(default_worker_id);
    let worker = Arc::new(Worker {
        execute: if args.null_executor {
            warn!("--null-executor: tasks are answered without running them (benchmark mode)");
            Execute::Null(runner_id.clone())
        } else {
            Execute::Sandbox(TaskRunner::new(registry, runner_id.clone()))
        },
        runner_id,
        amqp_url: args.amqp_url,
        topology: args.topology,
        prefetch,
        drain_timeout: args.drain_timeout,
        max_message_bytes: usize::try_from(args.max_message).unwrap_or(usize::MAX),
        consuming,
        crash_on_module: args.test_crash_on_module,
    });

    // One lane per pool slot: each runs one guest at a time.
    let lanes =
        Lanes::start(&worker, concurrency, lane_stack).context("cannot start the lane threads")?;

    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!("shutdown requested");
        signal.cancel();
    });
    let mut backoff = Backoff::default();
    let url = redact(&worker.amqp_url);
    loop {
        match session::serve(&worker, &lanes, &stop).await {
            Ok(session::SessionEnd::Stopped) => break,
            Ok(session::SessionEnd::ConsumerEnded) => {
                warn!(broker = %url, "consumer cancelled by the broker; registering again");
                backoff.reset();
            }
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(broker = %url, %error, retry_in = ?delay, "broker connection failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        if stop.is_cancelled() {
            break;
        }
        metrics::record_reconnect();
    }
    stop.cancel();
    info!("stopped");
    Ok(())
}

/// What answers a task: the real sandbox, or (benchmarks only) nothing at all.
enum Execute {
    Sandbox(TaskRunner),
    /// Echoes the input back as a success, worker id attached.
    Null(String),
}

impl Worker {
    /// Runs `task` (delivery attempt `attempt`) to its result on the calling lane.
    fn execute(&self, task: Task, attempt: u32) -> TaskResult {
        if self.crash_on_module.as_deref() == Some(task.module.name.as_str()) {
            tracing::error!(task_id = %task.id, "--test-crash-on-module: aborting the process");
            std::process::abort();
        }
        match &self.execute {
            Execute::Sandbox(runner) => runner.run_here(task, attempt),
            Execute::Null(worker_id) => null_result(task, attempt, worker_id),
        }
    }
}

/// The result a trivial echo task would get, made without a sandbox — the same size as the real
/// one, so the broker and the benchmark handle the same bytes: the task's module named, with a
/// digest as long as a real one (all zeros: no module was loaded).
fn null_result(task: Task, attempt: u32, worker_id: &str) -> TaskResult {
    let received_unix_ns = unix_now_ns();
    TaskResult {
        task_id: task.id,
        batch: task.batch,
        module: Some(ResolvedModule {
            name: task.module.name,
            digest: NULL_DIGEST.to_owned(),
        }),
        outcome: Outcome::Success,
        stdout: task.input,
        stderr: Vec::new(),
        stderr_truncated: false,
        exit_code: Some(0),
        timings: Timings {
            queue_wait_ns: received_unix_ns.saturating_sub(task.submitted_at_unix_ns),
            ..Timings::default()
        },
        worker_id: worker_id.to_owned(),
        attempt,
    }
}

/// The digest a null result carries: hex sha256 length, all zeros.
const NULL_DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Capped exponential backoff: 100 ms doubling to 5 s.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = Duration::from_millis(100) * 2u32.saturating_pow(self.failures.min(6));
        self.failures += 1;
        delay.min(Duration::from_secs(5))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

pub use warren_schemas::topology::redact_url as redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(5));
    }
}
