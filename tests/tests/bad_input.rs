//! Hostile and broken input through the real queue and a real `warren-worker run` process.
//!
//! A worker sees bytes from anyone who can publish to its queue and modules from whoever fills
//! its directory. Whatever arrives, the worker must sort it without dying: bytes that are not a
//! task (garbage, empty, truncated, a future wire version, a forged length, oversized) are
//! dead-lettered and counted by reason; a task that decodes but cannot run (unknown module,
//! malformed digest) is answered with its typed outcome; a task asking for more than the caps
//! gets the caps; broken module files are skipped at start-up. After all of that, a good task
//! still succeeds on the same process.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};
use warren_schemas::Topology;
use warren_schemas::{encode, ModuleRef, Outcome, Task, TaskResult, WIRE_VERSION};
use warren_tests::broker::{amqp_url, TestBroker};
use warren_tests::worker_process::{http_get, WorkerProcess};
use warren_tests::{binary, module_path, shared_aot_cache, test_guest};

fn task(module: &str, input: &[u8], args: &[&str]) -> Task {
    let mut task = Task::new(module.parse::<ModuleRef>().unwrap(), input.to_vec());
    task.args = args.iter().map(|a| a.to_string()).collect();
    task
}

/// Polls `check` until it holds, failing after `timeout` with `what` and the last observation.
async fn eventually<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<(), T>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last:#?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A header of a dead letter as text, when it is a string.
fn header_text(delivery: &Delivery, key: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Takes every message out of `queue` (acking each).
async fn drain_queue(url: &str, queue: &str) -> Vec<Delivery> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack dead letter");
        taken.push(message.delivery);
    }
    let _ = connection.close(200, "done".into()).await;
    taken
}

/// The value of the exposition line that starts with `series` (`name{labels}`), if any.
fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// A version-1 frame for a task whose first string field (the module name) claims 4 GiB.
fn frame_claiming_gigabytes() -> Vec<u8> {
    // Version, uuid (bincode serde writes it as a length-prefixed 16-byte slice), then the module
    // name's varint length: tag 252 = a u32 follows, u32::MAX.
    let mut frame = vec![WIRE_VERSION, 16];
    frame.extend_from_slice(&[0x11; 16]);
    frame.push(252);
    frame.extend_from_slice(&u32::MAX.to_le_bytes());
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_dead_lettered_and_bad_tasks_get_typed_outcomes() {
    let broker = TestBroker::new().await;
    let mut worker = WorkerProcess::start(
        &broker.topology,
        2,
        &[
            "--max-message",
            "64KiB",
            "--timeout",
            "1s",
            "--max-memory",
            "48MiB",
            "--max-output",
            "4KiB",
        ],
    );

    // Bytes that are not a task, each with the reason label the worker should count it under.
    let valid = encode(&task("echo", b"a perfectly fine task", &[]));
    let mut future_version = valid.clone();
    future_version[0] = WIRE_VERSION + 1;
    let mut trailing = valid.clone();
    trailing.extend_from_slice(b"junk");
    let oversized = encode(&task("echo", &vec![b'x'; 100 << 10], &[]));
    assert!(oversized.len() > 64 << 10);
    let undecodable: Vec<(&str, Vec<u8>)> = vec![
        (
            "unsupported_version",
            b"\x89PNG\r\n\x1a\n not a task".to_vec(),
        ),
        ("empty", Vec::new()),
        ("malformed", valid[..valid.len() / 2].to_vec()),
        ("unsupported_version", future_version),
        ("malformed", frame_claiming_gigabytes()),
        ("too_large", oversized),
        ("trailing_bytes", trailing),
    ];
    for (_, body) in &undecodable {
        broker.publish_raw(body).await;
    }

    // Tasks that decode but cannot run as asked.
    let unknown = task("no-such-module", b"", &[]);
    let mut bad_digest = task("upper", b"x", &[]);
    bad_digest.module = ModuleRef {
        name: "upper".into(),
        digest_prefix: Some("zz".into()),
    };
    let mut long = task("spin", b"", &[]);
    long.limits.timeout_ms = Some(3_600_000);
    let mut big = task("membomb", b"", &[]);
    big.limits.max_memory_bytes = Some(u64::MAX);
    let mut loud = task("flood", b"", &[]);
    loud.limits.max_output_bytes = Some(u64::MAX);
    let bad_tasks = [&unknown, &bad_digest, &long, &big, &loud];
    for t in bad_tasks {
        broker.publish(t).await;
    }
    let results = broker
        .collect(bad_tasks.len(), Duration::from_secs(60))
        .await;
    let by_id: HashMap<_, &TaskResult> = results.iter().map(|r| (r.task_id, r)).collect();
    let outcome = |t: &Task| {
        by_id
            .get(&t.id)
            .unwrap_or_else(|| panic!("no result for {}", t.module))
            .outcome
            .clone()
    };
    assert_eq!(
        outcome(&unknown),
        Outcome::ModuleNotFound {
            module: "no-such-module".into()
        }
    );
    match outcome(&bad_digest) {
        Outcome::InvalidTask { reason } => assert!(reason.contains("\"zz\""), "{reason}"),
        other => panic!("upper@zz: expected an invalid task, got {other:?}"),
    }
    // Asking for more than the caps gets the caps, never more.
    assert_eq!(outcome(&long), Outcome::Timeout { limit_ms: 1000 });
    assert_eq!(
        outcome(&big),
        Outcome::MemoryLimitExceeded {
            limit_bytes: 48 << 20
        }
    );
    assert_eq!(
        outcome(&loud),
        Outcome::OutputLimitExceeded { limit_bytes: 4096 }
    );
    assert!(by_id[&loud.id].stdout.len() <= 4096);

    // Every undecodable message is counted under its reason...
    let mut expected: HashMap<&str, f64> = HashMap::new();
    for (reason, _) in &undecodable {
        *expected.entry(reason).or_default() += 1.0;
    }
    eventually(
        "rejections counted by reason",
        Duration::from_secs(30),
        async || {
            let exposition = worker.metrics();
            let seen: HashMap<&str, Option<f64>> = expected
                .keys()
                .map(|reason| {
                    let series = format!("warren_deliveries_rejected_total{{reason=\"{reason}\"}}");
                    (*reason, metric(&exposition, &series))
                })
                .collect();
            if seen.iter().all(|(reason, n)| *n == Some(expected[reason])) {
                Ok(())
            } else {
                Err(seen)
            }
        },
    )
    .await;
    let exposition = worker.metrics();
    for outcome in ["module_not_found", "invalid_task"] {
        let series = format!("warren_tasks_total{{module=\"-\",outcome=\"{outcome}\"}}");
        assert_eq!(metric(&exposition, &series), Some(1.0), "{series}");
    }

    // ...and lands in the dead-letter queue, byte for byte, marked as rejected from the task
    // queue. The broker's headers are all a dead letter carries: the worker's reason (empty,
    // too_large, ...) is in its log and metrics, not on the message.
    let dead = &broker.topology.dead;
    eventually(
        "every undecodable message dead-lettered",
        Duration::from_secs(30),
        async || match broker.depth(dead).await {
            n if n as usize == undecodable.len() => Ok(()),
            n => Err(n),
        },
    )
    .await;
    let letters = drain_queue(&broker.url, dead).await;
    let mut got: Vec<&[u8]> = letters.iter().map(|d| d.data.as_slice()).collect();
    let mut sent: Vec<&[u8]> = undecodable.iter().map(|(_, b)| b.as_slice()).collect();
    got.sort();
    sent.sort();
    assert!(
        got == sent,
        "the dead-letter queue holds exactly the bad bodies"
    );
    for letter in &letters {
        assert_eq!(
            header_text(letter, "x-first-death-reason").as_deref(),
            Some("rejected")
        );
        assert_eq!(
            header_text(letter, "x-first-death-queue").as_deref(),
            Some(broker.topology.tasks.as_str())
        );
    }

    // The same process keeps serving.
    let good = task("upper", b"still here", &[]);
    broker.publish(&good).await;
    let answer = broker.collect(1, Duration::from_secs(30)).await;
    assert_eq!(answer.len(), 1, "the good task was answered");
    assert_eq!(
        (
            &answer[0].task_id,
            &answer[0].outcome,
            answer[0].stdout.as_slice()
        ),
        (&good.id, &Outcome::Success, b"STILL HERE".as_slice())
    );
    assert!(worker.try_status().is_none(), "the worker is still running");
    eventually(
        "nothing left in flight",
        Duration::from_secs(10),
        async || match metric(&worker.metrics(), "warren_tasks_in_flight") {
            Some(0.0) => Ok(()),
            other => Err(other),
        },
    )
    .await;
    drop(worker);
    drop(broker); // deletes its queues
}

/// A worker process on its own modules directory ([`WorkerProcess`] always uses `modules/dist`).
struct WorkerOnDir {
    child: Child,
    metrics_addr: std::net::SocketAddr,
}

impl WorkerOnDir {
    fn start(topology: &Topology, modules: &Path) -> Self {
        let metrics_addr = warren_tests::probe::free_local_addr().expect("a free port");
        let child = Command::new(binary("warren-worker"))
            .arg("run")
            .args(["--tasks-queue", &topology.tasks])
            .args(["--dead-queue", &topology.dead])
            .args(["--results-queue", &topology.results])
            .args(["--delivery-limit", &topology.delivery_limit.to_string()])
            .args(["--max-concurrent-tasks", "1"])
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .arg("--modules")
            .arg(modules)
            .arg("--cache")
            .arg(shared_aot_cache())
            .env("AMQP_URL", amqp_url())
            .env("WARREN_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .expect("warren-worker starts");
        let mut worker = WorkerOnDir {
            child,
            metrics_addr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(metrics_addr, "/readyz").is_none_or(|(code, _)| code != 200) {
            if let Some(status) = worker.child.try_wait().expect("wait") {
                panic!("worker exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "worker not ready within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        worker
    }
}

impl Drop for WorkerOnDir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_starts_from_a_directory_with_broken_modules_and_serves_the_good_ones() {
    let modules = tempfile::tempdir().unwrap();
    for name in ["echo", "upper"] {
        std::fs::copy(
            module_path(name),
            modules.path().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    std::fs::write(modules.path().join("empty.wasm"), b"").unwrap();
    std::fs::write(modules.path().join("text.wasm"), b"hello, I am not wasm").unwrap();
    std::fs::copy(
        test_guest("unsupported_import.wat"),
        modules.path().join("importer.wasm"),
    )
    .unwrap();

    let broker = TestBroker::new().await;
    let mut worker = WorkerOnDir::start(&broker.topology, modules.path());
    let loaded = http_get(worker.metrics_addr, "/metrics")
        .map(|(_, body)| metric(&body, "warren_modules_loaded"))
        .expect("metrics answer");
    assert_eq!(loaded, Some(2.0), "only echo and upper load");

    let good = [task("echo", b"echo me", &[]), task("upper", b"shout", &[])];
    let broken = [
        task("empty", b"", &[]),
        task("text", b"", &[]),
        task("importer", b"", &[]),
    ];
    for t in good.iter().chain(&broken) {
        broker.publish(t).await;
    }
    let results = broker
        .collect(good.len() + broken.len(), Duration::from_secs(60))
        .await;
    let by_id: HashMap<_, &TaskResult> = results.iter().map(|r| (r.task_id, r)).collect();
    let result = |t: &Task| {
        *by_id
            .get(&t.id)
            .unwrap_or_else(|| panic!("no result for {}", t.module))
    };
    assert_eq!(
        (
            &result(&good[0]).outcome,
            result(&good[0]).stdout.as_slice()
        ),
        (&Outcome::Success, b"echo me".as_slice())
    );
    assert_eq!(
        (
            &result(&good[1]).outcome,
            result(&good[1]).stdout.as_slice()
        ),
        (&Outcome::Success, b"SHOUT".as_slice())
    );
    for t in &broken {
        assert_eq!(
            result(t).outcome,
            Outcome::ModuleNotFound {
                module: t.module.name.clone()
            },
            "a module that failed to load is not found"
        );
    }
    assert!(
        worker.child.try_wait().expect("wait").is_none(),
        "the worker is still running"
    );
    drop(worker);
    drop(broker); // deletes its queues
}
