//! Broker connections force-closed under a running worker (what a broker restart, failover or
//! network cut looks like to a client): the worker reconnects, redeclares, resumes consuming,
//! and every task of the batch still gets its result.
//!
//! Runs on a virtual host of its own so closing "all connections" touches only this test.

use std::collections::HashMap;
use std::time::Duration;

use warren_schemas::{ModuleRef, Outcome, Task};
use warren_tests::broker::{close_all_connections, private_vhost, TestBroker};
use warren_tests::worker_process::WorkerProcess;

const VHOST: &str = "warren-test-faults";

fn sleep_task(i: usize, millis: &str) -> Task {
    let mut task = Task::new(
        "sleep".parse::<ModuleRef>().unwrap(),
        format!("task {i}").into_bytes(),
    );
    task.args = vec![millis.to_owned()];
    task
}

fn reconnects(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("warren_amqp_reconnects_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_closed_connections_mid_batch_lose_nothing() {
    let url = private_vhost(VHOST);
    let mut broker = TestBroker::new_on(url.clone()).await;
    let worker = WorkerProcess::start_on(&url, &broker.topology, 2, &[]);
    // 300 × 20 ms on 2 slots: ~3 s of work, so the close (rabbitmqctl takes a second or two to
    // start) lands mid-batch even when the machine is fast; with 5 ms tasks the whole batch
    // could finish first, and the worker had nothing to reconnect for yet.
    let tasks: Vec<Task> = (0..300).map(|i| sleep_task(i, "20")).collect();
    for t in &tasks {
        broker.publish(t).await;
    }

    // Mid-batch: some results are in, most are not.
    let mut results = broker.collect(30, Duration::from_secs(60)).await;
    close_all_connections(VHOST);
    broker
        .collect_more(&mut results, tasks.len(), Duration::from_secs(120))
        .await;

    let by_id: HashMap<_, _> = results.iter().map(|r| (r.task_id, r)).collect();
    for t in &tasks {
        let result = by_id
            .get(&t.id)
            .unwrap_or_else(|| panic!("task {} lost", t.id));
        assert_eq!(result.outcome, Outcome::Success);
        assert_eq!(result.stdout, t.input);
    }
    // Redone (at-least-once): the tasks running at the close, plus those whose result was
    // published but whose ack had not reached the broker yet. Acks follow the confirm within a
    // millisecond or so, but on a machine busy with the rest of the suite the settler can lag by
    // a few 20 ms tasks (one run saw 6); a worker that held its acks back would redo far more.
    let duplicates = results.len() - by_id.len();
    assert!(
        duplicates <= 16,
        "at most the in-flight tasks and a few awaiting their ack are redone, got {duplicates} duplicates"
    );
    assert!(reconnects(&worker.metrics()) >= 1, "the worker reconnected");

    // An idle worker notices a dead connection too, and serves the next task.
    let before = reconnects(&worker.metrics());
    close_all_connections(VHOST);
    let late = sleep_task(0, "0");
    // The test's own publishing connection was closed as well: use a fresh one.
    broker.reconnect().await;
    broker.publish(&late).await;
    let answer = broker.collect(1, Duration::from_secs(60)).await;
    assert_eq!(answer.first().map(|r| r.task_id), Some(late.id));
    assert!(reconnects(&worker.metrics()) > before);
    drop(worker);
    broker.cleanup().await;
}
