//! `warren-worker run` against the real RabbitMQ: round trips, bad messages, drain on SIGTERM,
//! metrics. Each test uses its own uniquely named queues.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use warren_schemas::{ModuleRef, Outcome, Task};
use warren_tests::broker::{consumer_prefetch, unacked, TestBroker};
use warren_tests::worker_process::WorkerProcess;

fn task(module: &str, input: &[u8], args: &[&str]) -> Task {
    let mut task = Task::new(module.parse::<ModuleRef>().unwrap(), input.to_vec());
    task.args = args.iter().map(|a| a.to_string()).collect();
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_round_trip_and_bad_messages_are_dead_lettered() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &["--timeout", "2s"]);

    let mut timeout = task("spin", b"", &[]);
    timeout.limits.timeout_ms = Some(100);
    let tasks = vec![
        (task("upper", b"hello", &[]), Outcome::Success),
        (task("exit", b"", &["3"]), Outcome::NonZeroExit { code: 3 }),
        (timeout, Outcome::Timeout { limit_ms: 100 }),
        (
            task("nope", b"", &[]),
            Outcome::ModuleNotFound {
                module: "nope".into(),
            },
        ),
    ];
    // Garbage first: the worker must dead-letter it and keep serving.
    broker.publish_raw(b"definitely not a task").await; // 'd' is no wire version we know
    broker.publish_raw(b"\x01\xff\xff\xff\xff\xff").await; // right version, garbage body
    broker.publish_raw(b"").await;
    for (t, _) in &tasks {
        broker.publish(t).await;
    }
    let results = broker.collect(tasks.len(), Duration::from_secs(60)).await;
    let by_id: HashMap<_, _> = results.iter().map(|r| (r.task_id, r)).collect();
    for (t, expected) in &tasks {
        let result = by_id
            .get(&t.id)
            .unwrap_or_else(|| panic!("no result for {}", t.module));
        assert_eq!(&result.outcome, expected, "{}", t.module);
    }
    assert_eq!(by_id[&tasks[0].0.id].stdout, b"HELLO");
    assert_eq!(
        broker.depth(&broker.topology.dead).await,
        3,
        "every bad message dead-lettered"
    );

    let metrics = worker.metrics();
    assert!(
        metrics.contains("warren_instantiate_seconds_bucket{"),
        "real histogram buckets:\n{metrics}"
    );
    assert!(
        metrics.contains("warren_tasks_total{module=\"upper\",outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warren_deliveries_rejected_total{reason=\"malformed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warren_deliveries_rejected_total{reason=\"empty\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warren_deliveries_rejected_total{reason=\"unsupported_version\"} 1"),
        "{metrics}"
    );
    promtool_accepts(&metrics);
    drop(worker);
    drop(broker); // deletes its queues
}

/// `promtool check metrics` (Prometheus's own linter) accepts the exposition.
fn promtool_accepts(exposition: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/ensure-prometheus installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write exposition");
    let output = promtool.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_tasks_and_exits_cleanly() {
    let broker = TestBroker::new().await;
    let mut worker = WorkerProcess::start(&broker.topology, 2, &["--drain-timeout", "20s"]);
    let tasks: Vec<Task> = (0..20)
        .map(|i| task("sleep", format!("{i}").as_bytes(), &["150"]))
        .collect();
    for t in &tasks {
        broker.publish(t).await;
    }
    // Some finished: then ask the worker to stop in the middle of the batch.
    let early = broker.collect(2, Duration::from_secs(60)).await;
    assert!(early.len() >= 2);
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "worker exits 0 after draining: {status}");
    let after = broker.collect(tasks.len(), Duration::from_secs(2)).await;
    let left = broker.depth(&broker.topology.tasks).await as usize;
    let finished: std::collections::HashSet<_> =
        early.iter().chain(&after).map(|r| r.task_id).collect();
    assert_eq!(
        finished.len(),
        early.len() + after.len(),
        "no finished task was run twice"
    );
    assert_eq!(
        finished.len() + left,
        tasks.len(),
        "every task is either finished or back in the queue"
    );

    // A new worker finishes the rest; still nothing runs twice.
    let _next = WorkerProcess::start(&broker.topology, 2, &[]);
    let rest = broker.collect(left, Duration::from_secs(60)).await;
    for r in &rest {
        assert!(
            !finished.contains(&r.task_id),
            "task {} finished before shutdown was redone",
            r.task_id
        );
    }
    assert_eq!(finished.len() + rest.len(), tasks.len());
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_tasks_are_each_answered_exactly_once() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 4, &[]);
    let tasks: Vec<Task> = (0..600)
        .map(|i| task("echo", format!("payload {i}").as_bytes(), &[]))
        .collect();
    for t in &tasks {
        broker.publish(t).await;
    }
    let results = broker.collect(tasks.len(), Duration::from_secs(120)).await;
    let by_id: HashMap<_, _> = results.iter().map(|r| (r.task_id, r)).collect();
    assert_eq!(
        results.len(),
        tasks.len(),
        "one result per task, no duplicates without faults"
    );
    for t in &tasks {
        let result = by_id.get(&t.id).expect("every task answered");
        assert_eq!(result.outcome, Outcome::Success);
        assert_eq!(result.stdout, t.input, "result matched to its own task");
    }
    let metrics = worker.metrics();
    assert!(
        metrics.contains("warren_tasks_total{module=\"echo\",outcome=\"success\"} 600"),
        "{metrics}"
    );
    assert!(metrics.contains("warren_tasks_in_flight 0"), "{metrics}");
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_unacknowledged_deliveries() {
    let broker = TestBroker::new().await;
    // Four pool slots, but only two deliveries may be outstanding.
    let _worker = WorkerProcess::start(&broker.topology, 4, &["--prefetch", "2"]);
    assert_eq!(
        consumer_prefetch("/", &broker.topology.tasks),
        vec![2],
        "one consumer, prefetch 2, as the broker sees it"
    );
    // 7 s of work at two at a time: longer than the broker's 5 s statistics interval.
    let tasks: Vec<Task> = (0..14)
        .map(|i| task("sleep", format!("{i}").as_bytes(), &["1000"]))
        .collect();
    for t in &tasks {
        broker.publish(t).await;
    }
    // Sample the broker's own unacked count while the batch runs.
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicU32::new(0));
    let sampler = {
        let (done, most, queue) = (done.clone(), most.clone(), broker.topology.tasks.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(unacked("/", &queue), Ordering::Relaxed);
            }
        })
    };
    let results = broker.collect(tasks.len(), Duration::from_secs(60)).await;
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert_eq!(results.len(), tasks.len());
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= 2,
        "broker saw {most} unacked deliveries with prefetch 2"
    );
    assert!(most >= 1, "the sampler saw the batch in flight");
    let ids: HashSet<_> = results.iter().map(|r| r.task_id).collect();
    assert_eq!(ids.len(), tasks.len());
    drop(broker); // deletes its queues
}

/// Lanes take turns waiting on the consumer; a lane busy with a long task must never hold the
/// next delivery back while another lane is free. Shown with the worker's own timings: the
/// runs of two slow tasks on a two-slot worker overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_task_does_not_hold_back_the_next_delivery() {
    let broker = TestBroker::new().await;
    let _worker = WorkerProcess::start(&broker.topology, 2, &[]);
    for round in 0..3 {
        let tasks: Vec<Task> = (0..2)
            .map(|i| task("sleep", format!("{round}-{i}").as_bytes(), &["800"]))
            .collect();
        for t in &tasks {
            broker.publish(t).await;
        }
        let results = broker.collect(2, Duration::from_secs(30)).await;
        assert_eq!(results.len(), 2);
        let runs: Vec<(u64, u64)> = results
            .iter()
            .map(|r| {
                assert_eq!(r.outcome, Outcome::Success, "{r:?}");
                let submitted = tasks
                    .iter()
                    .find(|t| t.id == r.task_id)
                    .expect("a result for a task of this round")
                    .submitted_at_unix_ns;
                let started = submitted + r.timings.queue_wait_ns;
                (started, started + r.timings.total_ns)
            })
            .collect();
        let latest_start = runs.iter().map(|r| r.0).max().unwrap();
        let earliest_end = runs.iter().map(|r| r.1).min().unwrap();
        assert!(
            latest_start < earliest_end,
            "round {round}: the two tasks ran one after the other: {runs:?}"
        );
    }
    drop(broker); // deletes its queues
}

/// An older warren declared `warren.results` (and the dead-letter queue) as classic queues; a
/// queue's type cannot change in place. The worker says so, pointing at the migration steps,
/// and keeps retrying; `warren` refuses with the same words; once the operator deletes the
/// classic queue, the waiting worker starts by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_results_queue_from_an_older_warren_is_refused_with_the_migration_hint() {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties};
    use warren_schemas::topology::MIGRATION_DOC;
    use warren_schemas::Topology;
    use warren_tests::producer_cli::{text, WarrenCli};
    use warren_tests::worker_process::test_command;

    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let topology = Topology::with_suffix(&suffix[..12]);
    let url = warren_tests::broker::amqp_url();
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let classic = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            topology.results.as_str().into(),
            classic,
            FieldTable::default(),
        )
        .await
        .expect("what an older warren declared");

    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut worker = test_command(
        "warren-worker",
        &url,
        &topology,
        1,
        warren_tests::modules_dir(),
        &warren_tests::shared_aot_cache(),
    )
    .stderr(log.reopen().expect("log file"))
    .spawn()
    .expect("worker starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let logged = std::fs::read_to_string(log.path()).unwrap_or_default();
        if logged.contains(MIGRATION_DOC) {
            break logged;
        }
        assert!(worker.try_status().is_none(), "the worker exited: {logged}");
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged in 60 s: {logged}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.contains("ERROR"), "logged as an error: {refused}");
    assert!(
        refused.contains("x-queue-type"),
        "names the argument: {refused}"
    );
    assert!(
        refused.contains(&topology.results),
        "names the queue: {refused}"
    );
    assert!(
        worker.ready_by(std::time::Instant::now()).is_err(),
        "not ready while refused"
    );

    let status = WarrenCli::new(&topology).run(&["status"]);
    let (_, stderr) = text(&status);
    assert!(!status.status.success(), "warren status refused: {stderr}");
    assert!(stderr.contains(MIGRATION_DOC), "{stderr}");
    assert!(stderr.contains(&topology.results), "{stderr}");

    // The migration's last step: the classic queue goes, the worker declares a quorum one.
    channel
        .queue_delete(
            topology.results.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the classic queue");
    worker.wait_ready(Duration::from_secs(30));
    drop(worker);
    for queue in [&topology.tasks, &topology.dead, &topology.results] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}
