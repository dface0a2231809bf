//! No result is lost silently (docs/reliability.md, "Where a result goes"), against the real
//! broker: a result whose reply queue does not exist lands in the unroutable-results queue with
//! headers saying where it was meant to go and why; a batch whose results queue expired gets its
//! late results with `warren collect`, and the other messages stay in that queue; a result too
//! large to publish, or refused by the broker, is answered by a small `result_refused` result,
//! and the worker keeps serving.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};
use warren_schemas::topology::{
    UNROUTABLE_CODE_HEADER, UNROUTABLE_REASON_HEADER, UNROUTABLE_REPLY_TO_HEADER,
};
use warren_schemas::{decode, encode, ModuleRef, Outcome, Task, TaskResult};
use warren_tests::broker::{amqp_url, TestBroker};
use warren_tests::producer_cli::{
    assert_each_result_once, delete_queue, manifest, publish_to, results_queue, text, upper_of,
    write_inputs, WarrenCli,
};
use warren_tests::worker_process::WorkerProcess;

fn task(module: &str, input: &[u8]) -> Task {
    Task::new(module.parse::<ModuleRef>().unwrap(), input.to_vec())
}

fn header(properties: &lapin::BasicProperties, name: &str) -> Option<AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).cloned())
}

/// The counter `name` (no labels, or the given label set) in a `/metrics` exposition.
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_reply_queue_is_missing_lands_in_the_unroutable_queue_once() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let missing = format!("{}.never-declared", broker.reply_queue);
    let lost = task("upper", b"late");
    broker.publish_replying_to(&lost, &missing).await;

    // Without --unroutable-results-queue, the unroutable-results queue is the results queue.
    let unroutable = broker.topology.unroutable_queue().to_owned();
    let (properties, body) = broker
        .take(&unroutable, Duration::from_secs(60))
        .await
        .expect("the result reaches the unroutable-results queue");
    let result: TaskResult = decode(&body, usize::MAX).expect("a result");
    assert_eq!(result.task_id, lost.id);
    assert_eq!(result.outcome, Outcome::Success);
    assert_eq!(result.stdout, b"LATE");
    assert_eq!(result.attempt, 1);
    assert_eq!(
        header(&properties, UNROUTABLE_REPLY_TO_HEADER),
        Some(AMQPValue::LongString(LongString::from(missing.as_str())))
    );
    assert_eq!(
        header(&properties, UNROUTABLE_CODE_HEADER),
        Some(AMQPValue::LongInt(312))
    );
    assert_eq!(
        header(&properties, UNROUTABLE_REASON_HEADER),
        Some(AMQPValue::LongString(LongString::from("NO_ROUTE")))
    );
    assert_eq!(
        properties.correlation_id().as_ref().map(|c| c.to_string()),
        Some(lost.id.to_string())
    );

    // The worker goes on as before: the next task's result reaches its (existing) reply queue.
    let next = task("upper", b"next");
    broker.publish(&next).await;
    let results = broker.collect(1, Duration::from_secs(30)).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].task_id, next.id);

    // Acked once, never redelivered: no second run, no second copy, nothing left in the queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        broker.take(&unroutable, Duration::ZERO).await.is_none(),
        "one copy only"
    );
    assert_eq!(broker.depth(&broker.topology.tasks).await, 0);
    let metrics = worker.metrics();
    assert_eq!(
        counter(&metrics, "warren_results_unroutable_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        counter(
            &metrics,
            "warren_tasks_total{module=\"upper\",outcome=\"success\"}"
        ),
        2.0,
        "each task ran once"
    );
    drop(worker);
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_takes_a_batchs_late_results_from_the_unroutable_queue_and_leaves_the_rest() {
    let broker = TestBroker::new().await;
    let warren = WarrenCli::new(&broker.topology);
    let dir = tempfile::tempdir().unwrap();
    let (inputs, out) = (dir.path().join("in"), dir.path().join("out"));
    write_inputs(&inputs, 5);

    // Published with no worker running, and a results queue that expires a second after use.
    let output = tokio::task::block_in_place(|| {
        warren.run(&[
            "batch",
            "upper",
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--no-wait",
            "--results-ttl",
            "1s",
        ])
    });
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    let id = manifest(&out)["batch_id"].as_str().unwrap().to_owned();
    let expired = results_queue(&out);
    wait_until_gone(&expired).await;

    // Someone else's message in the same queue, which collect must leave there.
    let unroutable = broker.topology.unroutable_queue().to_owned();
    let other = TaskResult {
        batch: None,
        ..decode_sample()
    };
    publish_to(&unroutable, &encode(&other), Default::default()).await;

    // Now a worker runs the batch: its results come back unroutable.
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    assert_eq!(
        broker
            .wait_depth(&unroutable, 6, Duration::from_secs(60))
            .await,
        6,
        "five late results and the other message"
    );

    let output = tokio::task::block_in_place(|| {
        warren.run(&["collect", &id, "--out", out.to_str().unwrap()])
    });
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&expired) && stderr.contains(&unroutable),
        "collect says where the late results were:\n{stderr}"
    );
    assert!(stdout.contains("results     5 (success 5)"), "{stdout}");
    assert_each_result_once(&out, upper_of(&inputs));

    // Only the other message is left, untouched.
    let (_, body) = broker
        .take(&unroutable, Duration::ZERO)
        .await
        .expect("the other message is still there");
    assert_eq!(decode::<TaskResult>(&body, usize::MAX).unwrap(), other);
    assert_eq!(broker.depth(&unroutable).await, 0);
    let metrics = worker.metrics();
    assert_eq!(
        counter(&metrics, "warren_results_unroutable_total"),
        5.0,
        "{metrics}"
    );
    delete_queue(&expired).await;
    drop(worker);
    drop(broker); // deletes its queues
}

/// A result to stand for another client's message.
fn decode_sample() -> TaskResult {
    TaskResult {
        task_id: uuid::Uuid::new_v4(),
        batch: None,
        module: None,
        outcome: Outcome::Success,
        stdout: b"someone else's".to_vec(),
        stderr: Vec::new(),
        stderr_truncated: false,
        exit_code: Some(0),
        timings: Default::default(),
        worker_id: "elsewhere".into(),
        attempt: 1,
    }
}

/// Waits until `queue` (with a 1 s `x-expires`) no longer exists, at most 30 s. Looks less often
/// than the expiry, so that looking never counts as a use.
async fn wait_until_gone(queue: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("broker");
        let channel = connection.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let exists = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .is_ok();
        let _ = connection.close(200, "checked".into()).await;
        if !exists {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queue} did not expire"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_max_result_is_answered_by_a_small_error_and_the_worker_goes_on() {
    let broker = TestBroker::new().await;
    // The guest may write 1 MiB, the worker publishes at most 64 KiB.
    let worker = WorkerProcess::start(
        &broker.topology,
        2,
        &["--max-output", "1MiB", "--max-result", "64KiB"],
    );
    let big = task("echo", &vec![b'x'; 200 * 1024]);
    let small = task("echo", b"small");
    broker.publish(&big).await;
    broker.publish(&small).await;
    let results = broker.collect(2, Duration::from_secs(60)).await;
    assert_eq!(results.len(), 2, "{results:?}");
    let refused = results.iter().find(|r| r.task_id == big.id).unwrap();
    match &refused.outcome {
        Outcome::ResultRefused { reason } => {
            assert!(
                reason.contains("--max-result") && reason.contains("65536"),
                "{reason}"
            );
        }
        other => panic!("expected result_refused, got {other:?}"),
    }
    assert!(refused.stdout.is_empty());
    assert_eq!(refused.outcome.exit_code(), 74);
    let served = results.iter().find(|r| r.task_id == small.id).unwrap();
    assert_eq!(served.outcome, Outcome::Success);
    assert_eq!(served.stdout, b"small");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.depth(&broker.topology.tasks).await, 0);
    assert_eq!(broker.depth(&broker.topology.dead).await, 0);
    let metrics = worker.metrics();
    assert_eq!(
        counter(
            &metrics,
            "warren_results_refused_total{reason=\"too_large\"}"
        ),
        1.0,
        "{metrics}"
    );
    drop(worker);
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_broker_refuses_is_answered_by_a_small_error() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    // A reply queue that refuses (nacks) any message that would take it over 4 KiB.
    let picky = format!("{}.picky", broker.reply_queue);
    declare_picky_queue(&picky, 4096).await;
    let big = task("echo", &vec![b'x'; 16 * 1024]);
    broker.publish_replying_to(&big, &picky).await;
    let (_, body) = broker
        .take(&picky, Duration::from_secs(60))
        .await
        .expect("the stand-in fits");
    let result: TaskResult = decode(&body, usize::MAX).unwrap();
    assert_eq!(result.task_id, big.id);
    match &result.outcome {
        Outcome::ResultRefused { reason } => assert!(reason.contains("nack"), "{reason}"),
        other => panic!("expected result_refused, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.depth(&broker.topology.tasks).await, 0);
    let metrics = worker.metrics();
    assert_eq!(
        counter(&metrics, "warren_results_refused_total{reason=\"nacked\"}"),
        1.0,
        "{metrics}"
    );
    delete_queue(&picky).await;
    drop(worker);
    drop(broker); // deletes its queues
}

/// A durable queue that nacks a publish taking it over `max_bytes` (`reject-publish`).
async fn declare_picky_queue(name: &str, max_bytes: i64) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-max-length-bytes"),
        AMQPValue::LongLongInt(max_bytes),
    );
    args.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare the picky queue");
    let _ = connection.close(200, "declared".into()).await;
}
