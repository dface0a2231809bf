//! `warren batch --local` and `warren submit --local`: the tasks run in the `warren` process, no
//! broker, and the output directory holds what a batch through the queue writes — in either
//! output format (`--output-format inline` holds the same outputs inside `results.jsonl`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};
use warren_tests::broker::TestBroker;
use warren_tests::producer_cli::{
    delete_queue, inline_stream, results, results_queue, text, WarrenCli,
};
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
        module: "echo",
        lines: "{\"name\": \"binary\", \"input_base64\": \"/wABAv4=\"}\n{\"name\": \"text\", \"input\": \"h\\u00e9\\n\"}\n",
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

/// Fields of an inline `results.jsonl` line that hold the task's output.
const OUTPUT_FIELDS: &[&str] = &["stdout", "stdout_base64", "stderr", "stderr_base64"];

/// The output directory as users read it: every output (`<name>.out` / `<name>.err` by file
/// name, taken from the files or, for `inline`, from the lines — which then must be the only
/// place they are), and `results.jsonl`'s records by input name without the fields of
/// [`RUN_FIELDS`] and [`OUTPUT_FIELDS`].
fn contents(
    out: &Path,
    inline: bool,
) -> (
    BTreeMap<String, Vec<u8>>,
    BTreeMap<String, serde_json::Value>,
) {
    let mut outputs: BTreeMap<String, Vec<u8>> = std::fs::read_dir(out)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".out") || name.ends_with(".err"))
        .map(|name| {
            let bytes = std::fs::read(out.join(&name)).unwrap();
            (name, bytes)
        })
        .collect();
    if inline {
        assert!(outputs.is_empty(), "files in an inline batch: {outputs:?}");
    }
    let records = results(out)
        .into_iter()
        .map(|mut record| {
            let name = record["name"].as_str().unwrap().to_owned();
            if inline {
                outputs.insert(format!("{name}.out"), inline_stream(&record, "stdout"));
                let stderr = inline_stream(&record, "stderr");
                if !stderr.is_empty() {
                    outputs.insert(format!("{name}.err"), stderr);
                }
            }
            let object = record.as_object_mut().unwrap();
            for field in RUN_FIELDS.iter().chain(OUTPUT_FIELDS) {
                object.remove(*field);
            }
            (name, record)
        })
        .collect();
    (outputs, records)
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
async fn a_local_batch_writes_what_a_batch_through_the_broker_writes_in_either_format() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &[]);
    let warren = WarrenCli::new(&broker.topology);
    let dir = tempfile::tempdir().unwrap();
    for batch in BATCHES {
        let inputs = dir.path().join(format!("{}.jsonl", batch.module));
        std::fs::write(&inputs, batch.lines).unwrap();
        // Each way of running it: through the broker or not, files or inline.
        let mut runs = Vec::new();
        for (queued, inline) in [(true, false), (false, false), (true, true), (false, true)] {
            let out = dir
                .path()
                .join(format!("{}-{queued}-{inline}", batch.module));
            let mut args: Vec<&str> = vec!["batch", batch.module, "--inputs"];
            args.push(inputs.to_str().unwrap());
            args.push("--out");
            args.push(out.to_str().unwrap());
            args.extend(batch.flags);
            if inline {
                args.extend(["--output-format", "inline"]);
            }
            let output = tokio::task::block_in_place(|| {
                if queued {
                    warren.run(&args)
                } else {
                    local(&args)
                }
            });
            if queued {
                delete_queue(&results_queue(&out)).await;
            }
            let label = format!(
                "{} {} {}",
                batch.module,
                if queued { "queued" } else { "local" },
                if inline { "inline" } else { "files" }
            );
            runs.push((label, output, contents(&out, inline)));
        }
        let (first_label, first_output, (first_outputs, first_records)) = &runs[0];
        assert_eq!(
            first_records.len(),
            batch.lines.lines().count(),
            "{first_label}: {:?}",
            text(first_output)
        );
        for (label, output, (outputs, records)) in &runs[1..] {
            let context = format!(
                "{first_label} {:?}\nvs {label} {:?}",
                text(first_output),
                text(output)
            );
            assert_eq!(
                first_output.status.code(),
                output.status.code(),
                "{context}"
            );
            assert_eq!(first_outputs, outputs, "{context}");
            assert_eq!(first_records, records, "{context}");
        }
    }
    drop(worker);
    drop(broker); // deletes its queues
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
