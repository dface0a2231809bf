//! `warren batch --local` and `warren submit --local`: the tasks run in the `warren` process, no
//! broker, and the output directory holds what a batch through the queue writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};
use warren_tests::broker::TestBroker;
use warren_tests::producer_cli::{delete_queue, results, results_queue, text, WarrenCli};
use warren_tests::worker_process::WorkerProcess;
use warren_tests::{binary, module_path, modules_dir, shared_aot_cache};

/// One batch of the comparison: a module, its JSONL inputs and extra flags.
struct Batch {
    module: &'static str,
    lines: &'static str,
    flags: &'static [&'static str],
}

/// A batch of every outcome kind, module by module (a batch runs one module).
const BATCHES: &[Batch] = &[
    Batch {
        module: "upper",
        lines: "{\"name\": \"a\", \"input\": \"hello\"}\n{\"name\": \"b\", \"input\": \"\"}\n",
        flags: &[],
    },
    Batch {
        module: "exit",
        lines:
            "{\"name\": \"zero\", \"args\": [\"0\"]}\n{\"name\": \"three\", \"args\": [\"3\"]}\n",
        flags: &[],
    },
    Batch {
        module: "spin",
        lines: "{\"name\": \"forever\"}\n",
        flags: &["--timeout", "200ms"],
    },
    Batch {
        module: "membomb",
        lines: "{\"name\": \"bomb\"}\n",
        flags: &["--max-memory", "32MiB"],
    },
    Batch {
        module: "flood",
        lines: "{\"name\": \"flood\"}\n",
        flags: &["--max-output", "64KiB"],
    },
    Batch {
        module: "trap",
        lines: "{\"name\": \"panic\"}\n{\"name\": \"divzero\", \"args\": [\"divzero\"]}\n",
        flags: &[],
    },
    Batch {
        module: "no-such-module",
        lines: "{\"name\": \"missing\"}\n",
        flags: &[],
    },
];

/// Fields that differ between two runs of the same task (ids, where and when it ran).
const RUN_FIELDS: &[&str] = &[
    "task_id",
    "worker",
    "attempt",
    "queue_wait_us",
    "instantiate_us",
    "run_us",
    "total_us",
];

/// The output directory as users read it: every output file's bytes, and `results.jsonl`'s
/// records by input name without the fields of [`RUN_FIELDS`].
fn contents(
    out: &Path,
) -> (
    BTreeMap<String, Vec<u8>>,
    BTreeMap<String, serde_json::Value>,
) {
    let files = std::fs::read_dir(out)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".out") || name.ends_with(".err"))
        .map(|name| {
            let bytes = std::fs::read(out.join(&name)).unwrap();
            (name, bytes)
        })
        .collect();
    let records = results(out)
        .into_iter()
        .map(|mut record| {
            let object = record.as_object_mut().unwrap();
            for field in RUN_FIELDS {
                object.remove(*field);
            }
            (object["name"].as_str().unwrap().to_owned(), record)
        })
        .collect();
    (files, records)
}

/// `warren <args> --local` (the flags before a `--`) with the tests' modules and AOT cache and
/// a broker URL nothing listens on.
fn local(args: &[&str]) -> Output {
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    Command::new(binary("warren"))
        .args(&args[..split])
        .arg("--local")
        .arg("--modules")
        .arg(modules_dir())
        .arg("--cache")
        .arg(shared_aot_cache())
        .args(&args[split..])
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("WARREN_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("warren runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_batch_writes_what_a_batch_through_the_broker_writes() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let warren = WarrenCli::new(&broker.topology);
    let dir = tempfile::tempdir().unwrap();
    for batch in BATCHES {
        let inputs = dir.path().join(format!("{}.jsonl", batch.module));
        std::fs::write(&inputs, batch.lines).unwrap();
        let queued = dir.path().join(format!("{}-queued", batch.module));
        let here = dir.path().join(format!("{}-local", batch.module));
        let args = |out: &Path| -> Vec<String> {
            let mut args: Vec<String> = ["batch", batch.module, "--inputs"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.push(inputs.to_str().unwrap().to_owned());
            args.push("--out".into());
            args.push(out.to_str().unwrap().to_owned());
            args.extend(batch.flags.iter().map(|s| s.to_string()));
            args
        };
        let queued_args = args(&queued);
        let queued_args: Vec<&str> = queued_args.iter().map(String::as_str).collect();
        let through_broker = tokio::task::block_in_place(|| warren.run(&queued_args));
        let local_args = args(&here);
        let local_args: Vec<&str> = local_args.iter().map(String::as_str).collect();
        let in_process = tokio::task::block_in_place(|| local(&local_args));

        let context = format!(
            "{}: broker {:?}\nlocal {:?}",
            batch.module,
            text(&through_broker),
            text(&in_process)
        );
        assert_eq!(
            through_broker.status.code(),
            in_process.status.code(),
            "{context}"
        );
        let (queued_files, queued_records) = contents(&queued);
        let (local_files, local_records) = contents(&here);
        assert_eq!(queued_files, local_files, "{context}");
        assert_eq!(queued_records, local_records, "{context}");
        assert_eq!(
            local_records.len(),
            batch.lines.lines().count(),
            "{context}"
        );
        delete_queue(&results_queue(&queued)).await;
    }
    drop(worker);
    broker.cleanup().await;
}

#[test]
fn a_local_batch_needs_no_broker_and_judges_exit_codes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.jsonl");
    std::fs::write(&inputs, "{\"args\": [\"10\"]}\n{\"args\": [\"20\"]}\n").unwrap();
    let out = dir.path().join("out");
    let output = local(&[
        "batch",
        "exit",
        "--ok-exit-codes",
        "0,10,20",
        "--concurrency",
        "2",
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("results     2 (success 2)"), "{stdout}");
    let mut codes: Vec<i64> = results(&out)
        .iter()
        .map(|r| r["exit_code"].as_i64().unwrap())
        .collect();
    codes.sort();
    assert_eq!(codes, [10, 20]);

    let submit = local(&["submit", "exit", "--ok-exit-codes", "10", "--", "10"]);
    assert_eq!(submit.status.code(), Some(0), "{:?}", text(&submit));
    assert!(text(&submit).1.contains("exited with code 10 (success by"));
    let submit = local(&["submit", "exit", "--", "4"]);
    assert_eq!(submit.status.code(), Some(4), "{:?}", text(&submit));

    // The same output directory twice is refused, naming it.
    let again = local(&[
        "batch",
        "exit",
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1), "{:?}", text(&again));
    assert!(
        text(&again).1.contains("already holds"),
        "{:?}",
        text(&again)
    );
}

#[test]
fn a_local_batch_compiles_only_the_module_it_runs() {
    let modules = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    for name in ["upper", "lookup"] {
        std::fs::copy(
            module_path(name),
            modules.path().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let inputs = tempfile::tempdir().unwrap();
    std::fs::write(inputs.path().join("one.txt"), "quiet").unwrap();
    let out = inputs.path().join("out");
    let output = Command::new(binary("warren"))
        .args(["batch", "upper", "--local", "--modules"])
        .arg(modules.path())
        .arg("--cache")
        .arg(cache.path())
        .arg("--inputs")
        .arg(inputs.path().join("one.txt").parent().unwrap())
        .arg("--out")
        .arg(&out)
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", text(&output));
    assert_eq!(std::fs::read(out.join("one.txt.out")).unwrap(), b"QUIET");
    let digest =
        |name: &str| hex::encode(Sha256::digest(std::fs::read(module_path(name)).unwrap()));
    let cached: Vec<String> = walk(cache.path());
    assert!(
        cached.iter().any(|file| file.contains(&digest("upper"))),
        "upper compiled into the cache: {cached:?}"
    );
    assert!(
        !cached.iter().any(|file| file.contains(&digest("lookup"))),
        "lookup is not used and not compiled: {cached:?}"
    );
}

/// Every file name under `dir`, recursively.
fn walk(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            names.extend(walk(&entry.path()));
        } else {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names
}
