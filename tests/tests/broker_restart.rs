//! A full RabbitMQ stop and start (`rabbitmqctl stop_app` / `start_app`) in the middle of a
//! batch: the worker retries with capped backoff until the broker is back, redeclares, resumes
//! consuming, and the batch completes from the durable quorum queue. A `warren batch` running
//! at the same time reconnects too and finishes with every result exactly once. Nothing is lost.
//!
//! This stops the whole broker, so it lives alone in its own test binary (cargo runs test
//! binaries one after another) and always starts the broker again, even when it fails.

use std::collections::HashMap;
use std::time::Duration;

use warren_schemas::{ModuleRef, Outcome, Task};
use warren_tests::broker::{rabbitmqctl, TestBroker};
use warren_tests::producer_cli::{
    assert_each_result_once, delete_queue, results_queue, text, upper_of, PacedBatch, WarrenCli,
};
use warren_tests::worker_process::WorkerProcess;

/// Starts the broker application again when dropped, so a failing test leaves it running.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stop_and_start_mid_batch_loses_nothing() {
    let mut broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let tasks: Vec<Task> = (0..3_000)
        .map(|i| {
            let mut task = Task::new(
                "sleep".parse::<ModuleRef>().unwrap(),
                format!("task {i}").into_bytes(),
            );
            task.args = vec!["1".into()];
            task
        })
        .collect();
    // The producer CLI, paced so that it is still publishing and collecting when the broker
    // goes away.
    let PacedBatch {
        dir: _dir,
        inputs,
        out,
        child: cli,
    } = WarrenCli::new(&broker.topology).start_paced_upper_batch(400, "100/s", 20);
    broker.publish_many(&tasks).await;
    let mut results = broker.collect(300, Duration::from_secs(120)).await;

    {
        let _guard = RestartGuard;
        rabbitmqctl(&["stop_app"]);
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
    broker.reconnect().await;
    broker
        .collect_more(&mut results, tasks.len(), Duration::from_secs(300))
        .await;

    let output = tokio::task::block_in_place(|| cli.wait_with_output().unwrap());
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("reconnecting"),
        "the producer rode out the restart:\n{stderr}"
    );
    assert!(stdout.contains("results     400 (success 400)"), "{stdout}");
    assert_each_result_once(&out, upper_of(&inputs));

    let by_id: HashMap<_, _> = results.iter().map(|r| (r.task_id, r)).collect();
    let lost = tasks.iter().filter(|t| !by_id.contains_key(&t.id)).count();
    assert_eq!(lost, 0, "tasks lost across the broker restart");
    for t in &tasks {
        assert_eq!(by_id[&t.id].outcome, Outcome::Success);
        assert_eq!(by_id[&t.id].stdout, t.input);
    }
    let metrics = worker.metrics();
    let reconnects: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warren_amqp_reconnects_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(reconnects >= 1, "the worker reconnected:\n{metrics}");
    eprintln!(
        "broker restart mid-batch: {} tasks, 0 lost, {} duplicates, {reconnects} reconnects",
        tasks.len(),
        results.len() - by_id.len()
    );
    delete_queue(&results_queue(&out)).await;
    drop(broker); // deletes its queues
}
