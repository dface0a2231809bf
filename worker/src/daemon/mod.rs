//! `warren-worker run`: the queue worker daemon.
//!
//! Consumes tasks from RabbitMQ, runs each in a fresh sandbox, publishes the result with
//! publisher confirms, and only then acks — at-least-once, nothing lost. Reconnects with capped
//! backoff when the broker goes away; on shutdown stops consuming, finishes what is in flight,
//! and closes cleanly within the drain timeout.
//!
//! # Layout
//! - queue names and declarations: [`warren_schemas::topology`], shared with the producer.
//! - `args`: the flags of `warren-worker run`.
//! - [`run_with`] (here): start-up, the session loop and the shutdown sequence, in order.
//! - `session`: one connection's life — connect, declare, QoS, consume; stop, drain, close.
//! - `lanes`: the threads that take deliveries and carry each to its result.
//! - `delivery`: the per-task path (decode → run → publish confirmed → ack).
//! - `result_route`: where a result goes when its reply queue is gone or the broker refuses it.
//! - `settler`: waits for a session's publisher confirms and settles deliveries.
//! - `acks`: the rules for coalescing acks safely.
//! - `backoff`: the delay between reconnects.
//!
//! # Shutdown
//! SIGTERM or SIGINT (the `shutdown` future) starts it; [`run_with`] does these steps, in this
//! order, and nothing else stops the worker:
//! 1. the lanes stop taking deliveries and `/readyz` turns unready;
//! 2. the consumer is cancelled, so the broker sends nothing more;
//! 3. drain: tasks in flight finish, their results are published and confirmed and their
//!    deliveries acked, until `--drain-timeout`; what is unfinished then stays unacked and the
//!    broker redelivers it;
//! 4. the last acks are sent, the channels and the connection closed;
//! 5. the metrics endpoint stops and the lane threads end.

mod acks;
mod args;
mod backoff;
mod delivery;
mod lanes;
mod result_route;
mod session;
mod settler;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use warren_schemas::nodes::NodeFailure;
use warren_schemas::topology::DeclareError;
use warren_schemas::{BrokerNodes, Task, TaskResult};

use crate::http::{self, HttpState};
use crate::metrics;
use crate::pull::ModulePuller;
use crate::runner::{default_worker_id, TaskRunner};
use crate::watch::watch_modules;
pub use args::{RunArgs, PREFETCH_PER_LANE};
use backoff::Backoff;
use delivery::TaskPath;
use lanes::{FeedEnd, Lanes};
pub use result_route::ResultArgs;
use result_route::ResultRoute;
use session::{OpenError, Session, SessionSettings, SetupError};

/// What turns a task into its result on a lane. The daemon runs tasks with a [`TaskRunner`];
/// benchmarks and tests inject others (an echo that measures the broker path alone, a runner
/// that crashes on purpose) through [`run_with`].
pub trait Execute: Send + Sync {
    /// Runs `task` (delivery attempt `attempt`, from 1) to its result on the calling thread.
    fn execute(&self, task: Task, attempt: u32) -> TaskResult;
}

impl Execute for TaskRunner {
    fn execute(&self, task: Task, attempt: u32) -> TaskResult {
        self.run_here(task, attempt)
    }
}

/// Runs the worker until `shutdown` completes, then drains and returns.
pub async fn run(
    args: RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(args, |runner| Box::new(runner), shutdown).await
}

/// [`run`], with tasks answered by the executor that `executor` makes from the worker's runner.
pub async fn run_with(
    args: RunArgs,
    executor: impl FnOnce(TaskRunner) -> Box<dyn Execute>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Start: modules, the metrics endpoint, the lanes.
    let prefetch = args.prefetch()?;
    let lane_count = args.sandbox.concurrency();
    let lane_stack = args.sandbox.guest_thread_stack();
    let registry = args.source.open_registry(args.sandbox)?;
    args.source.load_all(&registry)?;
    let modules_dir = &args.source.modules_dir;
    let _watcher = watch_modules(registry.clone(), modules_dir)
        .with_context(|| format!("cannot watch {}", modules_dir.display()))?;
    info!(modules = registry.len(), dir = %modules_dir.display(), "modules loaded");

    let puller = ModulePuller::new(
        &args.registry,
        registry.clone(),
        tokio::runtime::Handle::current(),
    )?
    .map(Arc::new);
    let consuming = Arc::new(AtomicBool::new(false));
    let http_stop = CancellationToken::new();
    let http_state = HttpState {
        metrics: metrics::install()?,
        registry: registry.clone(),
        consuming: consuming.clone(),
        pulls_modules: puller.is_some(),
    };
    let bound = http::serve(args.metrics_addr, http_state, http_stop.clone())
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    info!(addr = %bound, "metrics listening");

    let worker_id = args.worker_id.unwrap_or_else(default_worker_id);
    let path = Arc::new(TaskPath {
        executor: executor(TaskRunner::new(registry, worker_id.clone()).with_puller(puller)),
        max_message_bytes: usize::try_from(args.max_message).unwrap_or(usize::MAX),
        results_queue: args.topology.results.clone(),
        result_route: Arc::new(ResultRoute::new(&args.topology, &args.results, &worker_id)),
    });
    // One lane per shard: each runs one guest at a time.
    let lanes = Lanes::start(lane_count, lane_stack).context("cannot start the lanes")?;
    let settings = SessionSettings {
        nodes: args.broker.nodes()?,
        worker_id,
        topology: args.topology,
        prefetch,
    };

    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!("shutdown requested");
        signal.cancel();
    });

    // Sessions, one after another, until the worker is asked to stop.
    let nodes = &settings.nodes;
    metrics::register_nodes(nodes);
    info!(broker = %nodes, "connecting");
    let mut backoff = Backoff::default();
    let mut last_node = None;
    let stopped = loop {
        let failed =
            match Session::open(&settings, last_node, &lanes, &path, stop.child_token()).await {
                Ok(session) => {
                    report_node_failures(&session.skipped);
                    let node = nodes.nodes()[session.node].label();
                    last_node = Some(session.node);
                    backoff.reset();
                    metrics::record_node_connected(nodes, session.node);
                    consuming.store(true, Ordering::Relaxed);
                    let end = session.ended().await;
                    consuming.store(false, Ordering::Relaxed);
                    metrics::record_node_disconnected(nodes);
                    match end {
                        FeedEnd::Over => break Some(session),
                        FeedEnd::ConsumerEnded => {
                            warn!(node, "consumer cancelled by the broker; registering again");
                            session.abandon().await;
                            false
                        }
                        FeedEnd::Failed(error) => {
                            warn!(node, %error, "lost the broker connection");
                            session.abandon().await;
                            true
                        }
                    }
                }
                Err(error) => {
                    if let OpenError::Setup { node, .. } = &error {
                        last_node = Some(*node);
                    }
                    report_open_failure(nodes, &error);
                    true
                }
            };
        if failed {
            let delay = backoff.next_delay();
            warn!(retry_in = ?delay, "connecting again");
            tokio::select! {
                () = stop.cancelled() => break None,
                () = tokio::time::sleep(delay) => {}
            }
        }
        if stop.is_cancelled() {
            break None;
        }
        metrics::record_reconnect();
    };

    // Shutdown: steps 1 (lanes out, unready) are done once the session is over.
    if let Some(mut session) = stopped {
        session.stop_consuming().await; // 2
        info!(deadline = ?args.drain_timeout, "draining");
        let drained = session.drain(Instant::now() + args.drain_timeout).await; // 3
        if drained.abandoned > 0 || !drained.lanes_left {
            warn!(
                abandoned = drained.abandoned,
                "drain deadline reached; unfinished tasks will be redelivered"
            );
        }
        session.close().await; // 4
    }
    http_stop.cancel(); // 5
    drop(lanes);
    info!("stopped");
    Ok(())
}

/// Logs and counts each node that did not answer a connect.
fn report_node_failures(failures: &[NodeFailure]) {
    for failure in failures {
        metrics::record_node_connect_failure(&failure.label);
        warn!(node = %failure.label, error = %failure.error, "cannot connect to broker node");
    }
}

/// Logs why a session could not start, naming the node(s), and counts each node that refused.
fn report_open_failure(nodes: &BrokerNodes, failure: &OpenError) {
    match failure {
        OpenError::Connect(connect) => report_node_failures(&connect.failures),
        OpenError::Setup { node, source } => {
            let node = nodes.nodes()[*node].label();
            if let SetupError::Declare(inequivalent @ DeclareError::Inequivalent { .. }) = source {
                error!(node, error = %inequivalent, "the broker refused warren's queues");
            } else {
                warn!(node, error = %source, "connected, then setting up the session failed");
            }
        }
    }
}
