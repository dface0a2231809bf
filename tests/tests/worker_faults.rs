//! Worker processes dying under load, the way production ones do: `kill -9` in the middle of a
//! big batch, and a task that crashes every worker that takes it. At-least-once delivery means
//! every task still gets a result (duplicates allowed, counted) and a poison task ends in the
//! dead-letter queue instead of crash-looping the fleet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use warren_schemas::{ModuleRef, Outcome, Task};
use warren_tests::broker::{amqp_url, TestBroker};
use warren_tests::worker_process::WorkerProcess;

fn echo_task(i: usize) -> Task {
    Task::new(
        "echo".parse::<ModuleRef>().unwrap(),
        format!("task {i}").into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_worker_mid_batch_loses_nothing() {
    let broker = TestBroker::new().await;
    let tasks: Vec<Task> = (0..20_000).map(echo_task).collect();
    broker.publish_many(&tasks).await;
    let victim = WorkerProcess::start(&broker.topology, 2, &[]);
    let mut survivor = WorkerProcess::start(&broker.topology, 2, &[]);

    let mut results = broker.collect(2_000, Duration::from_secs(120)).await;
    assert!(results.len() >= 2_000, "the batch got going");
    victim.signal("KILL");
    drop(victim);
    broker
        .collect_more(&mut results, tasks.len(), Duration::from_secs(300))
        .await;

    let by_id: HashMap<_, _> = results.iter().map(|r| (r.task_id, r)).collect();
    let lost: Vec<_> = tasks
        .iter()
        .filter(|t| !by_id.contains_key(&t.id))
        .collect();
    assert!(lost.is_empty(), "{} tasks lost", lost.len());
    for t in &tasks {
        let result = by_id[&t.id];
        assert_eq!(result.outcome, Outcome::Success);
        assert_eq!(result.stdout, t.input);
    }
    let duplicates = results.len() - by_id.len();
    eprintln!(
        "kill -9 mid-batch: {} tasks, 0 lost, {duplicates} duplicates",
        tasks.len()
    );
    assert!(
        survivor.try_status().is_none(),
        "the surviving worker is still running"
    );
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_every_worker_is_dead_lettered() {
    let broker = TestBroker::new_with_delivery_limit(amqp_url(), 2).await;
    let poison = Task::new("upper".parse::<ModuleRef>().unwrap(), b"boom".to_vec());
    broker.publish(&poison).await;

    // Each worker that takes the poison task dies; restart them as an orchestrator would,
    // until the broker gives up on the message.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut crashes = 0;
    while broker.depth(&broker.topology.dead).await == 0 {
        assert!(
            Instant::now() < deadline,
            "poison task not dead-lettered after {crashes} crashes"
        );
        let mut worker = WorkerProcess::spawn_test(
            "warren-crash-worker",
            &amqp_url(),
            &broker.topology,
            1,
            &["--crash-on-module", "upper"],
        );
        let status = worker.wait_exit(Duration::from_secs(60));
        assert!(!status.success(), "the worker crashed: {status}");
        crashes += 1;
    }
    assert!(
        crashes <= 4,
        "delivery limit 2 stops the crash loop, took {crashes}"
    );

    // The fleet is healthy again: a normal worker serves the next task and the poison one stays
    // in the dead-letter queue.
    let _worker = WorkerProcess::start(&broker.topology, 1, &[]);
    let good = Task::new("upper".parse::<ModuleRef>().unwrap(), b"fine".to_vec());
    broker.publish(&good).await;
    let results = broker.collect(1, Duration::from_secs(60)).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].task_id, good.id);
    assert_eq!(results[0].stdout, b"FINE");
    assert_eq!(broker.depth(&broker.topology.dead).await, 1);
    drop(broker); // deletes its queues
}
