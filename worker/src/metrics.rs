//! Prometheus metrics: names, buckets, and the recorder.
//!
//! Names follow `warren_<thing>_<unit>` in base units. Histograms get real buckets (the exporter
//! renders summaries otherwise, and Grafana's `histogram_quantile` needs `_bucket` series):
//! exponential ×2 from 1 µs to ~16 s. Labels are bounded: `module` is a loaded module's name (or
//! `-` when none was found, so a task cannot mint label values), `outcome` one of
//! [`Outcome::LABELS`], `reason` one of the decode error labels.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use warren_schemas::{BrokerNodes, Outcome, TaskResult};

use crate::engine::pool_occupancy;
use crate::registry::ModuleRegistry;
use crate::sandbox::ResetMethod;

/// Histogram of instantiation time, seconds.
pub const INSTANTIATE_SECONDS: &str = "warren_instantiate_seconds";
/// Histogram of guest run time, seconds.
pub const TASK_RUN_SECONDS: &str = "warren_task_run_seconds";
/// Histogram of time from submission to the worker starting the task, seconds.
pub const TASK_QUEUE_WAIT_SECONDS: &str = "warren_task_queue_wait_seconds";
/// Histogram of the worker's whole handling of a task, seconds.
pub const TASK_TOTAL_SECONDS: &str = "warren_task_total_seconds";
/// Counter of finished tasks by module and outcome.
pub const TASKS_TOTAL: &str = "warren_tasks_total";
/// Counter of deliveries dead-lettered without running, by reason.
pub const DELIVERIES_REJECTED_TOTAL: &str = "warren_deliveries_rejected_total";
/// Counter of broker reconnections.
pub const AMQP_RECONNECTS_TOTAL: &str = "warren_amqp_reconnects_total";
/// Gauge per broker node (`node` = `host:port` of an `AMQP_URL` address): 1 for the node the
/// worker is connected to, 0 for the others.
pub const AMQP_NODE_CONNECTED: &str = "warren_amqp_node_connected";
/// Counter of failed connects per broker node.
pub const AMQP_NODE_CONNECT_FAILURES_TOTAL: &str = "warren_amqp_node_connect_failures_total";
/// Gauge of tasks received and not yet acknowledged.
pub const TASKS_IN_FLIGHT: &str = "warren_tasks_in_flight";
/// Gauge of module names loaded.
pub const MODULES_LOADED: &str = "warren_modules_loaded";
/// Gauge of instances running a task.
pub const POOL_INSTANCES_IN_USE: &str = "warren_pool_instances_in_use";
/// Gauge of instances that can run at once (one per shard).
pub const POOL_INSTANCES_CAPACITY: &str = "warren_pool_instances_capacity";
/// Gauge of pooled memories in use.
pub const POOL_MEMORIES_IN_USE: &str = "warren_pool_memories_in_use";
/// Gauge of resident bytes held by unused pool memory slots.
pub const POOL_UNUSED_MEMORY_RESIDENT_BYTES: &str = "warren_pool_unused_memory_resident_bytes";

/// Counter of results the broker returned because their `reply_to` queue does not exist
/// (rerouted to the unroutable-results queue).
pub const RESULTS_UNROUTABLE_TOTAL: &str = "warren_results_unroutable_total";
/// Counter of results replaced by a small `result_refused` result, by reason: `too_large`
/// (over `--max-result`) or `nacked` (the broker refused it).
pub const RESULTS_REFUSED_TOTAL: &str = "warren_results_refused_total";

/// Counter of module fetches and tag checks for `--registry`, by outcome: `pulled`,
/// `from_disk` (a module pulled before, loaded from `<cache>/pulled`), or why it failed.
pub const MODULE_PULLS_TOTAL: &str = "warren_module_pulls_total";
/// Histogram of the time a module fetch took (download, store, compile), seconds.
pub const MODULE_PULL_SECONDS: &str = "warren_module_pull_seconds";

/// Info gauge: 1 for the way freed pool slots are reset now (`method` label), 0 for the others.
pub const SANDBOX_RESET_INFO: &str = "warren_sandbox_reset_info";
/// Counter of pages found in swap after wasmtime's slot reset and discarded.
pub const SANDBOX_SWAP_SCRUBBED_PAGES_TOTAL: &str = "warren_sandbox_swap_scrubbed_pages_total";

/// Bucket bounds in seconds: 1 µs × 2^k, k = 0..=24 (1 µs .. ~16.8 s).
pub fn latency_buckets() -> Vec<f64> {
    (0..=24).map(|k| 1e-6 * f64::from(1u32 << k)).collect()
}

/// How often the recorder's histogram samples are folded into their buckets without a scrape.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Installs the global recorder once per process, with its upkeep every [`UPKEEP_INTERVAL`],
/// and returns its handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    install_with_upkeep(UPKEEP_INTERVAL)
}

/// [`install`] with upkeep every `interval` (the first call in a process decides).
///
/// The exporter keeps every histogram sample until something folds them into the buckets: a
/// scrape does, and so does the upkeep this starts. Without it a worker nobody scrapes keeps
/// every sample for good, and samples piling up between scrapes grow the lanes' allocator
/// arenas, which then page-fault inside instantiation (BENCHMARKS.md, "Decisions").
pub fn install_with_upkeep(interval: Duration) -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets())?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        describe();
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("warren-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                upkeep.run_upkeep();
            })
            .context("cannot start the metrics upkeep thread")?;
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_histogram!(
        INSTANTIATE_SECONDS,
        Unit::Seconds,
        "Time to instantiate a module from its warm InstancePre."
    );
    describe_histogram!(
        TASK_RUN_SECONDS,
        Unit::Seconds,
        "Time the guest ran (_start)."
    );
    describe_histogram!(
        TASK_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time from the producer's submitted-at to the worker starting the task."
    );
    describe_histogram!(
        TASK_TOTAL_SECONDS,
        Unit::Seconds,
        "The worker's whole handling of a task, decode to result ready."
    );
    describe_counter!(TASKS_TOTAL, "Tasks finished, by module and outcome.");
    describe_counter!(
        DELIVERIES_REJECTED_TOTAL,
        "Deliveries dead-lettered without running, by reason."
    );
    describe_counter!(
        AMQP_RECONNECTS_TOTAL,
        "Reconnections to the broker after a lost connection."
    );
    describe_gauge!(TASKS_IN_FLIGHT, "Tasks received and not yet acknowledged.");
    describe_gauge!(MODULES_LOADED, "Module names loaded in the registry.");
    describe_gauge!(
        POOL_INSTANCES_IN_USE,
        "Instances running a task now (pooled core instances in use, over every shard)."
    );
    describe_gauge!(
        POOL_INSTANCES_CAPACITY,
        "Instances that can run at once: one per shard (--max-concurrent-tasks)."
    );
    describe_gauge!(
        POOL_MEMORIES_IN_USE,
        "Pooling allocator linear memories in use."
    );
    describe_gauge!(
        POOL_UNUSED_MEMORY_RESIDENT_BYTES,
        "Resident bytes held by unused pool memory slots.",
    );
    describe_gauge!(
        SANDBOX_RESET_INFO,
        "How freed pool slots are reset (1 for the method in use): pagemap_scan, \
         pagemap_scan_and_swap_scrub once swap has been seen, rewrite_then_madvise without PAGEMAP_SCAN."
    );
    describe_counter!(
        SANDBOX_SWAP_SCRUBBED_PAGES_TOTAL,
        "Pages of freed slots found in swap after wasmtime's reset and discarded."
    );
    describe_gauge!(
        AMQP_NODE_CONNECTED,
        "1 for the broker node (host:port of an AMQP_URL address) the worker is connected to, 0 for the others."
    );
    describe_counter!(
        AMQP_NODE_CONNECT_FAILURES_TOTAL,
        "Failed connects per broker node (host:port of an AMQP_URL address)."
    );
    describe_counter!(
        RESULTS_UNROUTABLE_TOTAL,
        "Results returned by the broker (no queue named by reply_to), sent to the unroutable-results queue."
    );
    describe_counter!(
        RESULTS_REFUSED_TOTAL,
        "Results replaced by a small result_refused result, by reason (too_large, nacked)."
    );
    describe_counter!(
        MODULE_PULLS_TOTAL,
        "Module fetches and tag checks for --registry, by outcome (pulled, from_disk, or why they failed)."
    );
    describe_histogram!(
        MODULE_PULL_SECONDS,
        Unit::Seconds,
        "Time a module fetch took: download, store and compile (or load from the AOT cache)."
    );
    for outcome in module_pull_outcomes() {
        counter!(MODULE_PULLS_TOTAL, "outcome" => outcome).absolute(0);
    }
    counter!(RESULTS_UNROUTABLE_TOTAL).absolute(0);
    for reason in RESULT_REFUSED_REASONS {
        counter!(RESULTS_REFUSED_TOTAL, "reason" => reason).absolute(0);
    }
    for outcome in Outcome::LABELS {
        // Pre-register so rates exist (as 0) before the first such outcome.
        counter!(TASKS_TOTAL, "module" => "-", "outcome" => outcome).absolute(0);
    }
    counter!(AMQP_RECONNECTS_TOTAL).absolute(0);
    gauge!(TASKS_IN_FLIGHT).set(0.0);
}

/// Registers every node of `AMQP_URL` (not connected, no failures yet), so each has series.
pub fn register_nodes(nodes: &BrokerNodes) {
    for node in nodes.nodes() {
        gauge!(AMQP_NODE_CONNECTED, "node" => node.label().to_owned()).set(0.0);
        counter!(AMQP_NODE_CONNECT_FAILURES_TOTAL, "node" => node.label().to_owned()).absolute(0);
    }
}

/// Records that the worker is connected to node `index` of `nodes` (and not to the others).
pub fn record_node_connected(nodes: &BrokerNodes, index: usize) {
    for (i, node) in nodes.nodes().iter().enumerate() {
        let connected = if i == index { 1.0 } else { 0.0 };
        gauge!(AMQP_NODE_CONNECTED, "node" => node.label().to_owned()).set(connected);
    }
}

/// Records that the worker is connected to no node.
pub fn record_node_disconnected(nodes: &BrokerNodes) {
    for node in nodes.nodes() {
        gauge!(AMQP_NODE_CONNECTED, "node" => node.label().to_owned()).set(0.0);
    }
}

/// Records a failed connect to node `label`.
pub fn record_node_connect_failure(label: &str) {
    counter!(AMQP_NODE_CONNECT_FAILURES_TOTAL, "node" => label.to_owned()).increment(1);
}

/// Records a finished task.
///
/// Called once per task on the lane that ran it, so the metric handles are looked up once per
/// lane, module and outcome and kept (a lookup builds the label set and hashes it: several
/// allocations per task otherwise). The set is bounded like the labels: loaded module names
/// times [`Outcome::LABELS`].
pub fn record_result(result: &TaskResult) {
    let module = result.module.as_ref().map_or("-", |m| m.name.as_str());
    let outcome = result.outcome.label();
    let t = &result.timings;
    TASK_HANDLES.with_borrow_mut(|handles| {
        let by_outcome = match handles.get_mut(module) {
            Some(by_outcome) => by_outcome,
            None => handles.entry(module.to_owned()).or_default(),
        };
        let task = by_outcome
            .entry(outcome)
            .or_insert_with(|| TaskHandles::new(module, outcome, result.module.is_some()));
        task.total.increment(1);
        task.queue_wait.record(t.queue_wait_ns as f64 * 1e-9);
        task.total_seconds.record(t.total_ns as f64 * 1e-9);
        if let Some((instantiate, run)) = &task.sandbox {
            instantiate.record(t.instantiate_ns as f64 * 1e-9);
            run.record(t.run_ns as f64 * 1e-9);
        }
    });
}

thread_local! {
    /// This thread's handles, by module name and outcome label.
    static TASK_HANDLES: RefCell<HashMap<String, HashMap<&'static str, TaskHandles>>> =
        RefCell::default();
}

/// The metrics one finished task updates.
struct TaskHandles {
    total: Counter,
    queue_wait: Histogram,
    total_seconds: Histogram,
    /// Instantiate and run time, for tasks that reached a sandbox.
    sandbox: Option<(Histogram, Histogram)>,
}

impl TaskHandles {
    fn new(module: &str, outcome: &'static str, ran: bool) -> Self {
        let module = module.to_owned();
        TaskHandles {
            total: counter!(TASKS_TOTAL, "module" => module.clone(), "outcome" => outcome),
            queue_wait: histogram!(TASK_QUEUE_WAIT_SECONDS),
            total_seconds: histogram!(TASK_TOTAL_SECONDS, "module" => module.clone(), "outcome" => outcome),
            sandbox: ran.then(|| {
                (
                    histogram!(INSTANTIATE_SECONDS, "module" => module.clone()),
                    histogram!(TASK_RUN_SECONDS, "module" => module, "outcome" => outcome),
                )
            }),
        }
    }
}

/// Records a delivery dead-lettered without running.
pub fn record_rejected(reason: &'static str) {
    counter!(DELIVERIES_REJECTED_TOTAL, "reason" => reason).increment(1);
}

/// Every `reason` label of [`RESULTS_REFUSED_TOTAL`].
pub const RESULT_REFUSED_REASONS: [&str; 2] = ["too_large", "nacked"];

/// Records a result the broker returned as unroutable.
pub fn record_result_unroutable() {
    counter!(RESULTS_UNROUTABLE_TOTAL).increment(1);
}

/// Records a result replaced because of `reason` (one of [`RESULT_REFUSED_REASONS`]).
pub fn record_result_refused(reason: &'static str) {
    counter!(RESULTS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// Every `outcome` label of [`MODULE_PULLS_TOTAL`].
pub fn module_pull_outcomes() -> impl Iterator<Item = &'static str> {
    ["pulled", "from_disk"]
        .into_iter()
        .chain(crate::oci::OciError::LABELS)
        .chain(crate::pull::PullError::LABELS)
}

/// Records a module fetch or tag check that ended with `outcome` after `elapsed`.
pub fn record_module_pull(outcome: &'static str, elapsed: Duration) {
    counter!(MODULE_PULLS_TOTAL, "outcome" => outcome).increment(1);
    if matches!(outcome, "pulled" | "from_disk") {
        histogram!(MODULE_PULL_SECONDS).record(elapsed.as_secs_f64());
    }
}

/// Records a reconnection.
pub fn record_reconnect() {
    counter!(AMQP_RECONNECTS_TOTAL).increment(1);
}

/// Updates the gauges that are read from state rather than counted (called before a scrape).
pub fn refresh_gauges(registry: &ModuleRegistry) {
    gauge!(MODULES_LOADED).set(registry.len() as f64);
    let sandbox = registry.sandbox();
    gauge!(POOL_INSTANCES_CAPACITY).set(sandbox.config().concurrency() as f64);
    let in_use = sandbox.reset_method();
    for method in ResetMethod::ALL {
        gauge!(SANDBOX_RESET_INFO, "method" => method.label()).set(if method == in_use {
            1.0
        } else {
            0.0
        });
    }
    counter!(SANDBOX_SWAP_SCRUBBED_PAGES_TOTAL).absolute(sandbox.pages_scrubbed());
    if let Some(pool) = pool_occupancy(sandbox.engines()) {
        gauge!(POOL_INSTANCES_IN_USE).set(pool.instances as f64);
        gauge!(POOL_MEMORIES_IN_USE).set(pool.memories as f64);
        gauge!(POOL_UNUSED_MEMORY_RESIDENT_BYTES).set(pool.unused_memory_bytes_resident as f64);
    }
}

/// Adjusts the in-flight gauge (twice per task: the handle is kept per thread, as
/// [`TASK_HANDLES`] are, instead of being looked up by name each time).
pub fn in_flight(delta: f64) {
    thread_local! {
        static IN_FLIGHT: Gauge = gauge!(TASKS_IN_FLIGHT);
    }
    IN_FLIGHT.with(|gauge| gauge.increment(delta));
}
