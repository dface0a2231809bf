//! The `warren` producer CLI against the real broker and a real `warren-worker`: batches with
//! one correct output per input, interrupted batches resumed with `collect` (every result
//! exactly once, in either output format), a batch riding out force-closed broker connections, module-not-found
//! outcomes, `submit --wait`, bad arguments refused before anything is sent, and dead letters
//! listed and requeued.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use warren_schemas::{encode, ModuleRef, Task};
use warren_tests::broker::{close_all_connections, private_vhost, TestBroker};
use warren_tests::producer_cli::{
    assert_each_result_once, delete_queue, delete_queue_at, manifest, publish_to, results,
    results_queue, text, upper_of, write_inputs, PacedBatch, WarrenCli,
};
use warren_tests::worker_process::WorkerProcess;

fn batch_id(out: &Path) -> String {
    manifest(out)["batch_id"].as_str().unwrap().to_owned()
}

/// Runs `warren batch <module>` (an `upper` program) over `count` new inputs with one worker,
/// checks that it exits 0 with one upper-cased output per input, and returns the records, the
/// batch's stdout and the worker's metrics.
async fn upper_batch(
    module: &str,
    count: usize,
) -> (HashMap<String, serde_json::Value>, String, String) {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let warren = WarrenCli::new(&broker.topology);
    let dir = tempfile::tempdir().unwrap();
    let (inputs, out) = (dir.path().join("in"), dir.path().join("out"));
    write_inputs(&inputs, count);

    let output = tokio::task::block_in_place(|| {
        warren.run(&[
            "batch",
            module,
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    });
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    println!("{stdout}");
    let records = assert_each_result_once(&out, upper_of(&inputs));
    assert_eq!(broker.depth(&broker.topology.tasks).await, 0);
    let metrics = worker.metrics();
    delete_queue(&results_queue(&out)).await;
    drop(worker);
    drop(broker); // deletes its queues
    (records, stdout, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_1000_inputs_yields_one_correct_output_each() {
    let (records, stdout, _) = upper_batch("upper", 1000).await;
    for (name, record) in &records {
        assert_eq!(record["outcome"], "success", "{name}");
        assert_eq!(record["exit_code"], 0, "{name}");
        assert_eq!(record["attempt"], 1, "{name}");
        assert!(record["worker"].as_str().is_some_and(|w| !w.is_empty()));
        assert!(record["total_us"].as_f64().is_some_and(|t| t > 0.0));
    }
    assert!(
        stdout.contains("results     1000 (success 1000)"),
        "{stdout}"
    );
    assert!(stdout.contains("instantiate p50"), "{stdout}");
    assert!(stdout.contains("tasks/s"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_components_yields_one_correct_output_each() {
    // `upper-c` is `upper` built as a WASI 0.2 component: the producer needs nothing new.
    let (records, stdout, metrics) = upper_batch("upper-c", 500).await;
    for (name, record) in &records {
        assert_eq!(record["outcome"], "success", "{name}");
        assert!(
            record["module"]
                .as_str()
                .is_some_and(|m| m.starts_with("upper-c@")),
            "{name}: {record}"
        );
    }
    assert!(stdout.contains("results     500 (success 500)"), "{stdout}");
    assert!(
        metrics.contains("warren_tasks_total{module=\"upper-c\",outcome=\"success\"} 500"),
        "{metrics}"
    );
}

/// `warren batch upper` with `flags`, killed (SIGKILL) mid-way, then finished by `warren
/// collect --publish-rest`: every result exactly once; collecting again changes nothing.
async fn kill_midway_then_collect(flags: &[&str]) {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let warren = WarrenCli::new(&broker.topology);
    // Paced so that the kill lands while tasks are still being published and collected.
    let PacedBatch {
        dir: _dir,
        inputs,
        out,
        mut child,
    } = warren.start_paced_upper_batch_with(600, "400/s", 40, flags);
    child.kill().unwrap(); // SIGKILL: no chance to tidy up
    child.wait().unwrap();
    let before = results(&out).len();
    assert!(
        before < 600,
        "the kill must land mid-way ({before} results)"
    );

    let id = batch_id(&out);
    let output = tokio::task::block_in_place(|| {
        warren.run(&[
            "collect",
            &id,
            "--out",
            out.to_str().unwrap(),
            "--publish-rest",
        ])
    });
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("results     600 (success 600)"), "{stdout}");
    assert_each_result_once(&out, upper_of(&inputs));

    // Collecting a finished batch again changes nothing.
    let again = tokio::task::block_in_place(|| {
        warren.run(&["collect", &id, "--out", out.to_str().unwrap()])
    });
    assert_eq!(again.status.code(), Some(0), "{:?}", text(&again));
    assert_eq!(results(&out).len(), 600);
    delete_queue(&results_queue(&out)).await;
    drop(worker);
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_killed_midway_is_finished_by_collect_with_every_result_once() {
    kill_midway_then_collect(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_batch_killed_midway_is_finished_by_collect_in_its_format() {
    // `collect` takes the format from the manifest: no `.out` file appears, each output is in
    // its line (`assert_each_result_once` checks both).
    kill_midway_then_collect(&["--output-format", "inline"]).await;
}

/// A vhost of its own, so force-closing its connections touches only this test.
const FAULTS_VHOST: &str = "warren-test-producer-faults";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rides_out_force_closed_connections_with_every_result_once() {
    let url = private_vhost(FAULTS_VHOST);
    let broker = TestBroker::new_on(url.clone()).await;
    let worker = WorkerProcess::start_on(&url, &broker.topology, 2, &[]);
    let warren = WarrenCli::new_on(&url, &broker.topology);
    // Paced so that the connections drop while tasks are still being published and collected
    // (4 s of publishing: `rabbitmqctl` itself takes a second or two to start).
    let PacedBatch {
        dir: _dir,
        inputs,
        out,
        child,
    } = warren.start_paced_upper_batch(600, "150/s", 40);
    let before = results(&out).len();
    close_all_connections(FAULTS_VHOST); // the producer's and the worker's
    let output = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    let (stdout, stderr) = text(&output);
    assert!(
        before < 600,
        "the connections must drop mid-way ({before} results)"
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("reconnecting"),
        "the producer said it reconnected:\n{stderr}"
    );
    assert!(stdout.contains("results     600 (success 600)"), "{stdout}");
    assert_each_result_once(&out, upper_of(&inputs));

    delete_queue_at(&url, &results_queue(&out)).await;
    drop(worker);
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_publishing_and_collect_resumes_it() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let warren = WarrenCli::new(&broker.topology);
    let PacedBatch {
        dir: _dir,
        inputs,
        out,
        child,
    } = warren.start_paced_upper_batch(300, "100/s", 20);
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let interrupted = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    let (stdout, stderr) = text(&interrupted);
    assert_eq!(interrupted.status.code(), Some(130), "{stdout}\n{stderr}");
    let id = batch_id(&out);
    assert!(
        stderr.contains(&format!("warren collect {id} --out")),
        "says how to resume:\n{stderr}"
    );

    // Without --publish-rest: every published task's result, once; the rest is reported.
    let published = std::fs::read_to_string(out.join(".warren-published"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("s "))
        .count();
    assert!(published < 300, "Ctrl-C stopped publishing ({published})");
    let output = tokio::task::block_in_place(|| {
        warren.run(&["collect", &id, "--out", out.to_str().unwrap()])
    });
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("--publish-rest"), "{stderr}");
    assert_eq!(results(&out).len(), published, "{stdout}");

    let output = tokio::task::block_in_place(|| {
        warren.run(&[
            "collect",
            &id,
            "--out",
            out.to_str().unwrap(),
            "--publish-rest",
        ])
    });
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    assert_each_result_once(&out, upper_of(&inputs));
    delete_queue(&results_queue(&out)).await;
    drop(worker);
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_module_gives_module_not_found_outcomes_and_a_nonzero_exit() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let warren = WarrenCli::new(&broker.topology);
    let dir = tempfile::tempdir().unwrap();
    let (inputs, out) = (dir.path().join("in.jsonl"), dir.path().join("out"));
    std::fs::write(
        &inputs,
        "{\"name\": \"a\", \"input\": \"x\"}\n\"plain text\"\n{\"input_base64\": \"AAE=\"}\n",
    )
    .unwrap();

    let output = tokio::task::block_in_place(|| {
        warren.run(&[
            "batch",
            "no-such-module",
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    });
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("module_not_found 3"), "{stdout}");
    assert!(stderr.contains("3 of 3 tasks did not succeed"), "{stderr}");
    let records = assert_each_result_once(&out, |_| Vec::new());
    let mut names: Vec<_> = records.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["a", "line-2", "line-3"]);
    for record in records.values() {
        assert_eq!(record["outcome"], "module_not_found");
        assert_eq!(record["exit_code"], 127);
    }
    delete_queue(&results_queue(&out)).await;
    drop(worker);
    drop(broker); // deletes its queues
}

/// Programs that answer through their exit code: with `--ok-exit-codes` the listed codes are
/// successes (in `results.jsonl`, the summary and the exit status), the code itself recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_exit_codes_count_as_success_in_batches_and_submit() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let warren = WarrenCli::new(&broker.topology);
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.jsonl");
    let lines: String = [
        ("sat", "10"),
        ("unsat", "20"),
        ("zero", "0"),
        ("error", "3"),
    ]
    .iter()
    .map(|(name, code)| format!("{{\"name\": \"{name}\", \"args\": [\"{code}\"]}}\n"))
    .collect();
    std::fs::write(&inputs, lines).unwrap();
    let batch = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "batch",
            "exit",
            "--ok-exit-codes",
            "0,10,20",
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tokio::task::block_in_place(|| warren.run(&args))
    };

    let out = dir.path().join("out");
    let output = batch(&out, &[]);
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "3 exits 3: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("nonzero_exit 1, success 3"), "{stdout}");
    assert!(stderr.contains("1 of 4 tasks did not succeed"), "{stderr}");
    let by_name: HashMap<String, serde_json::Value> = results(&out)
        .into_iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r))
        .collect();
    for (name, outcome, code) in [
        ("sat", "success", 10),
        ("unsat", "success", 20),
        ("zero", "success", 0),
        ("error", "nonzero_exit", 3),
    ] {
        assert_eq!(
            (
                by_name[name]["outcome"].as_str(),
                by_name[name]["exit_code"].as_i64()
            ),
            (Some(outcome), Some(code)),
            "{name}"
        );
    }
    assert_eq!(
        manifest(&out)["ok_exit_codes"],
        serde_json::json!([0, 10, 20])
    );
    delete_queue(&results_queue(&out)).await;

    // Without the failing line, the batch succeeds.
    std::fs::write(&inputs, "{\"args\": [\"10\"]}\n{\"args\": [\"20\"]}\n").unwrap();
    let out = dir.path().join("out-ok");
    let output = batch(&out, &[]);
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    delete_queue(&results_queue(&out)).await;

    // submit --wait exits 0 for a listed code and reports the code; others pass through.
    let submit = |code: &str, ok: &str| {
        tokio::task::block_in_place(|| {
            warren.run(&[
                "submit",
                "exit",
                "--ok-exit-codes",
                ok,
                "--wait",
                "--",
                code,
            ])
        })
    };
    let output = submit("10", "0,10,20");
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    assert!(
        text(&output)
            .1
            .contains("exited with code 10 (success by --ok-exit-codes 0,10,20)"),
        "{:?}",
        text(&output)
    );
    assert_eq!(submit("3", "0,10,20").status.code(), Some(3));
    assert_eq!(submit("0", "1").status.code(), Some(0), "0 always succeeds");

    // A bad list is refused by name before anything is sent.
    let output = tokio::task::block_in_place(|| {
        warren.run(&["submit", "exit", "--ok-exit-codes", "0,x", "--wait"])
    });
    assert_eq!(output.status.code(), Some(2), "{:?}", text(&output));
    assert!(
        text(&output).1.contains("--ok-exit-codes"),
        "{:?}",
        text(&output)
    );
    drop(worker);
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_returns_the_guest_output_and_exit_code() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let warren = WarrenCli::new(&broker.topology);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "hello warren\n").unwrap();

    let output = tokio::task::block_in_place(|| {
        warren.run(&[
            "submit",
            "upper",
            "--input",
            input.to_str().unwrap(),
            "--wait",
        ])
    });
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "HELLO WARREN\n");
    assert!(stderr.contains("warren: success"), "{stderr}");
    assert!(stderr.contains("instantiate"), "{stderr}");

    let output =
        tokio::task::block_in_place(|| warren.run(&["submit", "exit", "--arg", "3", "--wait"]));
    assert_eq!(output.status.code(), Some(3), "{:?}", text(&output));
    assert!(text(&output).1.contains("exited with code 3"));

    let output =
        tokio::task::block_in_place(|| warren.run(&["submit", "nope", "--wait", "--", "x"]));
    assert_eq!(output.status.code(), Some(127), "{:?}", text(&output));

    // Without --wait: the task id, and the result lands in the shared results queue.
    let output = tokio::task::block_in_place(|| warren.run(&["submit", "upper"]));
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(uuid::Uuid::parse_str(stdout.trim()).is_ok(), "{stdout}");
    drop(worker);
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_by_name_before_anything_is_sent() {
    // No worker: anything published would stay in the task queue.
    let broker = TestBroker::new().await;
    let warren = WarrenCli::new(&broker.topology);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    write_inputs(&good, 3);
    let jsonl = dir.path().join("bad.jsonl");
    std::fs::write(
        &jsonl,
        "\"one\"\n{\"input\": \"two\"}\n{\"input\": \"three\"\n",
    )
    .unwrap();
    let typo = dir.path().join("typo.jsonl");
    std::fs::write(&typo, "{\"inptu\": \"x\"}\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = dir.path().join("missing");
    let out = dir.path().join("out");
    let (good, jsonl, typo, empty, missing, out) = (
        good.to_str().unwrap(),
        jsonl.to_str().unwrap(),
        typo.to_str().unwrap(),
        empty.to_str().unwrap(),
        missing.to_str().unwrap(),
        out.to_str().unwrap(),
    );

    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["batch", "upper", "--inputs", missing, "--out", out],
            format!("{missing}: no such file or directory"),
        ),
        (
            vec!["batch", "upper", "--inputs", jsonl, "--out", out],
            format!("{jsonl}:3: not valid JSON"),
        ),
        (
            vec!["batch", "upper", "--inputs", typo, "--out", out],
            "unknown field `inptu`".into(),
        ),
        (
            vec!["batch", "upper", "--inputs", empty, "--out", out],
            "no inputs".into(),
        ),
        (
            vec!["batch", "upper", "--inputs", good, "--env", "NOEQUALS"],
            "\"NOEQUALS\" is not KEY=VALUE".into(),
        ),
        (
            vec!["batch", "../etc/passwd", "--inputs", good],
            "invalid module name".into(),
        ),
        (
            vec!["batch", "upper", "--inputs", good, "--rate", "fast"],
            "not a positive rate".into(),
        ),
        (
            vec!["submit", "upper", "--input", missing],
            format!("--input {missing}: cannot read"),
        ),
        (
            vec!["submit", "upper", "--timeout", "soon"],
            "is not a duration".into(),
        ),
    ];
    for (args, expected) in cases {
        let output = tokio::task::block_in_place(|| warren.run(&args));
        let (stdout, stderr) = text(&output);
        assert!(!output.status.success(), "{args:?} must fail:\n{stdout}");
        assert!(
            stderr.contains(&expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        !Path::new(out).exists(),
        "nothing written for refused batches"
    );
    assert_eq!(
        broker.depth(&broker.topology.tasks).await,
        0,
        "nothing published"
    );
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_with_their_reason_and_requeued() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let warren = WarrenCli::new(&broker.topology);
    // A message the worker cannot decode: rejected, so dead-lettered with x-death.
    broker.publish_raw(b"\x01\xff\xff\xff\xff\xff").await;
    // A valid task parked in the dead-letter queue, as if it had hit its delivery limit.
    let task = Task::new(
        "upper".parse::<ModuleRef>().unwrap(),
        b"back again".to_vec(),
    );
    let properties = BasicProperties::default()
        .with_message_id(task.id.to_string().into())
        .with_reply_to(broker.reply_queue.as_str().into());
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.depth(&broker.topology.dead).await < 1 {
        assert!(Instant::now() < deadline, "garbage not dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish_to(&broker.topology.dead, &encode(&task), properties).await;

    let output = tokio::task::block_in_place(|| warren.run(&["dead", "list"]));
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains(&format!("rejected ×1 in {}", broker.topology.tasks)),
        "{stdout}"
    );
    assert!(lines[0].contains("not a task (malformed)"), "{stdout}");
    assert!(
        lines[1].contains(&format!("task {} module upper", task.id)),
        "{stdout}"
    );
    assert_eq!(
        broker.depth(&broker.topology.dead).await,
        2,
        "listing leaves them in place"
    );

    let output = tokio::task::block_in_place(|| warren.run(&["dead", "requeue"]));
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("requeued 1 tasks"), "{stdout}");
    assert!(
        stderr.contains("left 1 messages that are not tasks"),
        "{stderr}"
    );
    let results = broker.collect(1, Duration::from_secs(30)).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].task_id, task.id);
    assert_eq!(results[0].stdout, b"BACK AGAIN");
    assert_eq!(broker.depth(&broker.topology.dead).await, 1);

    let output = tokio::task::block_in_place(|| warren.run(&["status", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["dead"]["messages"], 1, "{status}");
    assert_eq!(status["tasks"]["consumers"], 1, "{status}");
    drop(worker);
    drop(broker); // deletes its queues
}
