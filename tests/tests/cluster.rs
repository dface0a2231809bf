//! Losing a broker node loses nothing and stops nothing: a real 3-node RabbitMQ cluster
//! (`scripts/rabbit-cluster`), two workers and `warren batch` given all three addresses, and a
//! node stopped mid-batch — the one leading `warren.tasks`, the one holding the batch's results
//! queue, or each node in turn (a rolling restart). Every result reaches the output directory
//! exactly once, the producer exits 0, and the workers end up consuming from live nodes.
//!
//! Each test forms its own cluster; they run one at a time (they kill nodes and load both
//! cores). Each prints what it measured: time until results flowed again, tasks run twice,
//! duplicates the producer dropped (docs/deployment.md quotes them).

use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use warren_schemas::Topology;
use warren_tests::cluster::RabbitCluster;
use warren_tests::producer_cli::{
    assert_each_result_once, result_lines, results_queue, text, upper_of, PacedBatch, WarrenCli,
};
use warren_tests::worker_process::WorkerProcess;

/// Tasks in each batch.
const TASKS: usize = 5_000;

/// One cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_the_kill_of_the_node_leading_the_task_queue() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = ClusterRun::start("800/s");
    let leader = run.kill_the_leader_of(&run.topology.tasks);
    run.finish(
        &format!("kill -9 of node {leader} (leading the task queue)"),
        &[leader],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_the_kill_of_the_node_holding_its_results_queue() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = ClusterRun::start("800/s");
    let leader = run.kill_the_leader_of(&results_queue(&run.batch.out));
    run.finish(
        &format!("kill -9 of node {leader} (leading the batch's results queue)"),
        &[leader],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_a_rolling_restart_of_every_node() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Slow enough that the batch still runs when the third restart begins (each restart
    // takes seconds, more while the machine is busy).
    let run = ClusterRun::start("100/s");
    let started = Instant::now();
    for index in 1..=3 {
        assert!(
            run.batch_running(),
            "the batch ended before node {index} was restarted: slow it down"
        );
        run.cluster.stop(index);
        run.cluster.start_node(index);
    }
    let rolled = started.elapsed();
    run.finish(
        &format!(
            "rolling restart of nodes 1, 2, 3 ({:.1} s)",
            rolled.as_secs_f64()
        ),
        &[],
    );
}

/// A cluster, two workers on it and a paced `warren batch upper` under way.
struct ClusterRun {
    workers: Vec<WorkerProcess>,
    batch: PacedBatch,
    topology: Topology,
    /// The longest time without a new result on disk, measured from the start of the batch.
    stall: Stall,
    // Last: torn down after the workers and the batch are gone.
    cluster: RabbitCluster,
}

impl ClusterRun {
    /// Forms the cluster, starts two workers (the first declares the queues, so the task
    /// queue's leader is its node) and a batch of [`TASKS`] published at `rate`, and returns
    /// once a tenth of the results are on disk.
    fn start(rate: &str) -> ClusterRun {
        let cluster = RabbitCluster::start();
        let url = cluster.amqp_url();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let topology = Topology::with_suffix(&suffix[..12]);
        let workers = (0..2)
            .map(|_| WorkerProcess::start_on(&url, &topology, 2, &[]))
            .collect();
        let batch = tokio::task::block_in_place(|| {
            WarrenCli::new_on(&url, &topology).start_paced_upper_batch(TASKS, rate, TASKS / 10)
        });
        let stall = Stall::watch(batch.out.clone());
        ClusterRun {
            workers,
            batch,
            topology,
            stall,
            cluster,
        }
    }

    /// `kill -9` of the node leading quorum queue `queue`; returns its index once a surviving
    /// node leads the queue.
    fn kill_the_leader_of(&self, queue: &str) -> usize {
        let leader = self.cluster.leader(queue);
        self.cluster.kill(leader);
        assert_ne!(
            self.cluster.leader(queue),
            leader,
            "a surviving node leads {queue}"
        );
        leader
    }

    fn batch_running(&self) -> bool {
        result_lines(&self.batch.out) < TASKS
    }

    /// Waits for the batch, checks every result is there once and the workers consume from
    /// live nodes (not `dead`), and prints the figures.
    fn finish(self, fault: &str, dead: &[usize]) {
        let ClusterRun {
            mut workers,
            batch,
            cluster,
            stall,
            ..
        } = self;
        let PacedBatch {
            dir: _dir,
            inputs,
            out,
            child,
        } = batch;
        let output = wait_for_exit(child, Duration::from_secs(300));
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success(),
            "warren batch failed after {fault}: {}\n{stdout}\n{stderr}",
            output.status
        );
        assert_each_result_once(&out, upper_of(&inputs));
        let mut runs = 0;
        let mut reconnects = 0;
        for worker in &mut workers {
            assert!(worker.try_status().is_none(), "a worker exited");
            let metrics = worker.metrics();
            runs += sum_of(&metrics, "warren_tasks_total{");
            reconnects += sum_of(&metrics, "warren_amqp_reconnects_total");
            let on: Vec<usize> = (1..=3)
                .filter(|&i| {
                    let label = cluster.node_label(i);
                    sum_of(
                        &metrics,
                        &format!("warren_amqp_node_connected{{node=\"{label}\"}}"),
                    ) == 1
                })
                .collect();
            assert_eq!(on.len(), 1, "a worker is connected to one node:\n{metrics}");
            assert!(
                !dead.contains(&on[0]),
                "a worker is connected to killed node {}",
                on[0]
            );
        }
        let dropped = stdout
            .split(", ")
            .find_map(|part| part.strip_suffix(" duplicate results dropped\n"))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let producer_reconnects = stderr.matches("reconnected; carrying on").count();
        eprintln!(
            "{fault}: {TASKS} tasks, each result once, exit 0; longest stall without a new \
             result {:.1} s; {} tasks run twice; {dropped} duplicate results dropped by the \
             producer; {reconnects} worker and {producer_reconnects} producer reconnects",
            stall.longest().as_secs_f64(),
            runs.saturating_sub(TASKS),
        );
    }
}

/// Watches a batch's `results.jsonl` every 10 ms and keeps the longest time it did not grow.
struct Stall {
    longest_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Stall {
    fn watch(out: std::path::PathBuf) -> Stall {
        use std::sync::atomic::Ordering;
        let longest_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let longest = longest_ms.clone();
        std::thread::spawn(move || {
            let (mut lines, mut since) = (result_lines(&out), Instant::now());
            while lines < TASKS && std::sync::Arc::strong_count(&longest) > 1 {
                std::thread::sleep(Duration::from_millis(10));
                let now = result_lines(&out);
                if now > lines {
                    (lines, since) = (now, Instant::now());
                }
                longest.fetch_max(since.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        });
        Stall { longest_ms }
    }

    fn longest(&self) -> Duration {
        Duration::from_millis(self.longest_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The sum of every sample of the series starting with `prefix` in a Prometheus exposition.
fn sum_of(metrics: &str, prefix: &str) -> usize {
    metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}

/// Waits for `child` (reading its output meanwhile); kills it and panics after `timeout`.
fn wait_for_exit(child: Child, timeout: Duration) -> std::process::Output {
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match receiver.recv_timeout(timeout) {
        Ok(output) => output.expect("warren batch's output"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("warren batch did not finish within {timeout:?}");
        }
    }
}
