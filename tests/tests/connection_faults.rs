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
    drop(broker); // deletes its queues
}

/// `AMQP_URL` names a live node and one that refuses connections. The worker connects to the
/// live one; when that connection is force-closed, the reconnect tries the other node first
/// (the node just lost goes last), counts its refusal per node, and comes back to the live
/// one. `warren status` given the same list works too, and given only dead nodes it names each
/// of them — never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_in_amqp_url_is_tried_counted_and_skipped() {
    const FAILOVER_VHOST: &str = "warren-test-failover";
    let live = private_vhost(FAILOVER_VHOST);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let dead = format!("127.0.0.1:{dead_port}");
    let url = format!("{live},{dead}");
    let broker = TestBroker::new_on(live.clone()).await;
    let worker = WorkerProcess::start_on(&url, &broker.topology, 1, &[]);
    let live_node = live
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host, _)| host.to_owned())
        .expect("the test broker URL has user@host:port/vhost");
    let sample = |metrics: &str, name: &str, node: &str| -> u64 {
        let prefix = format!("{name}{{node=\"{node}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix}in\n{metrics}")) as u64
    };
    let metrics = worker.metrics();
    assert_eq!(
        sample(&metrics, "warren_amqp_node_connected", &live_node),
        1
    );
    assert_eq!(sample(&metrics, "warren_amqp_node_connected", &dead), 0);
    let failures_before = sample(&metrics, "warren_amqp_node_connect_failures_total", &dead);

    close_all_connections(FAILOVER_VHOST);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = worker.metrics();
        if reconnects(&metrics) >= 1
            && sample(&metrics, "warren_amqp_node_connected", &live_node) == 1
        {
            let failures = sample(&metrics, "warren_amqp_node_connect_failures_total", &dead);
            assert_eq!(
                failures,
                failures_before + 1,
                "the reconnect tried the dead node first, once"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnect within 60 s:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let cli = warren_tests::producer_cli::WarrenCli::new_on(&url, &broker.topology);
    let status = cli.run(&["status"]);
    assert!(
        status.status.success(),
        "{:?}",
        warren_tests::producer_cli::text(&status)
    );

    let secret_url = format!("amqp://guest:hunter2@{dead},127.0.0.1:1");
    let refused = warren_tests::producer_cli::WarrenCli::new_on(&secret_url, &broker.topology)
        .run(&["status"]);
    let (_, stderr) = warren_tests::producer_cli::text(&refused);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&dead) && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    drop(worker);
}
