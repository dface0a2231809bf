//! The language runners (`py`, `js`) and the app-baked `csvstats`: a program on stdin runs with
//! the task's contract (argv, stdout, stderr, exit code) and every limit, through `exec` and
//! through a worker on the real broker.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use warren_schemas::{ModuleRef, Outcome, Task, TaskLimits};
use warren_tests::broker::TestBroker;
use warren_tests::worker_process::WorkerProcess;
use warren_tests::{binary, modules_dir, shared_aot_cache};

/// One program for a runner and what must come of it.
struct Case {
    name: &'static str,
    module: &'static str,
    program: &'static str,
    args: &'static [&'static str],
    limits: TaskLimits,
    outcome: Outcome,
    /// Each must appear in stdout.
    stdout: &'static [&'static str],
    /// Each must appear in stderr.
    stderr: &'static [&'static str],
    /// None may appear in stdout.
    not_in_stdout: &'static [&'static str],
}

impl Case {
    fn new(name: &'static str, module: &'static str, program: &'static str) -> Self {
        Case {
            name,
            module,
            program,
            args: &[],
            limits: TaskLimits::default(),
            outcome: Outcome::Success,
            stdout: &[],
            stderr: &[],
            not_in_stdout: &[],
        }
    }

    fn task(&self) -> Task {
        let mut task = Task::new(
            self.module.parse::<ModuleRef>().unwrap(),
            self.program.as_bytes().to_vec(),
        );
        task.args = self.args.iter().map(|a| a.to_string()).collect();
        task.limits = self.limits;
        task
    }

    /// Panics unless `outcome`, `stdout` and `stderr` are what this case expects.
    fn check(&self, how: &str, outcome: &Outcome, stdout: &[u8], stderr: &[u8]) {
        let stdout = String::from_utf8_lossy(stdout);
        let stderr = String::from_utf8_lossy(stderr);
        let context = format!(
            "{} ({how}): outcome {outcome:?}\nstdout: {stdout}\nstderr: {stderr}",
            self.name
        );
        assert_eq!(outcome, &self.outcome, "{context}");
        for want in self.stdout {
            assert!(stdout.contains(want), "stdout lacks {want:?}: {context}");
        }
        for want in self.stderr {
            assert!(stderr.contains(want), "stderr lacks {want:?}: {context}");
        }
        for unwanted in self.not_in_stdout {
            assert!(
                !stdout.contains(unwanted),
                "stdout has {unwanted:?}: {context}"
            );
        }
    }
}

const TIMEOUT: TaskLimits = TaskLimits {
    timeout_ms: Some(1_000),
    max_memory_bytes: None,
    max_output_bytes: None,
};
const MEMORY: TaskLimits = TaskLimits {
    timeout_ms: None,
    max_memory_bytes: Some(96 << 20),
    max_output_bytes: None,
};
const OUTPUT: TaskLimits = TaskLimits {
    timeout_ms: None,
    max_memory_bytes: None,
    max_output_bytes: Some(1 << 20),
};

fn python_cases() -> Vec<Case> {
    vec![
        Case {
            args: &["a", "b c"],
            stdout: &[r#"{"argv": ["py", "a", "b c"], "sum": 45}"#],
            ..Case::new(
                "argv and stdout",
                "py",
                "import json, sys\nprint(json.dumps({'argv': sys.argv, 'sum': sum(range(10))}))\n",
            )
        },
        Case {
            // sha256("abc"), the statistics, re and datetime modules of the snapshot.
            stdout: &[
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "mean 2.5",
                "words ['warren', 'runs', 'python']",
                "2026-11-30",
            ],
            ..Case::new(
                "standard library",
                "py",
                "import hashlib, statistics, re, datetime\n\
                 print(hashlib.sha256(b'abc').hexdigest())\n\
                 print('mean', statistics.mean([1, 2, 3, 4]))\n\
                 print('words', re.findall(r'[a-z]+', 'Warren runs Python!'.lower()))\n\
                 print(datetime.date(2026, 11, 30).isoformat())\n",
            )
        },
        Case {
            outcome: Outcome::NonZeroExit { code: 1 },
            stdout: &["before"],
            stderr: &[
                "Traceback (most recent call last):",
                "File \"<stdin>\", line 3, in fail",
                "ValueError: bad input",
            ],
            ..Case::new(
                "uncaught exception",
                "py",
                "print('before')\ndef fail():\n    raise ValueError('bad input')\nfail()\n",
            )
        },
        Case {
            outcome: Outcome::NonZeroExit { code: 3 },
            stdout: &["partial"],
            ..Case::new(
                "sys.exit(3)",
                "py",
                "import sys\nprint('partial')\nsys.exit(3)\n",
            )
        },
        Case {
            outcome: Outcome::NonZeroExit { code: 1 },
            stderr: &["SyntaxError"],
            ..Case::new("syntax error", "py", "def (:\n")
        },
        Case {
            limits: TIMEOUT,
            outcome: Outcome::Timeout { limit_ms: 1_000 },
            ..Case::new("infinite loop", "py", "while True:\n    pass\n")
        },
        Case {
            limits: MEMORY,
            outcome: Outcome::MemoryLimitExceeded {
                limit_bytes: 96 << 20,
            },
            ..Case::new(
                "memory bomb",
                "py",
                "chunks = []\nwhile True:\n    chunks.append(bytearray(b'x' * (1 << 20)))\n",
            )
        },
        Case {
            limits: OUTPUT,
            outcome: Outcome::OutputLimitExceeded {
                limit_bytes: 1 << 20,
            },
            ..Case::new(
                "output flood",
                "py",
                "line = 'y' * 65535\nwhile True:\n    print(line)\n",
            )
        },
        Case {
            stdout: &["file denied", "listing denied", "socket denied"],
            not_in_stdout: &["OPEN", "LISTED", "CONNECTED"],
            ..Case::new(
                "no files, no network",
                "py",
                "import os\n\
                 try:\n    open('/etc/passwd').read()\n    print('OPEN')\n\
                 except OSError as e:\n    print('file denied', type(e).__name__)\n\
                 try:\n    print('LISTED', os.listdir('/'))\n\
                 except OSError as e:\n    print('listing denied', type(e).__name__)\n\
                 try:\n    import socket\n    socket.create_connection(('127.0.0.1', 5672), timeout=1)\n    print('CONNECTED')\n\
                 except Exception as e:\n    print('socket denied', type(e).__name__)\n",
            )
        },
    ]
}

fn js_cases() -> Vec<Case> {
    vec![
        Case {
            args: &["a", "b c"],
            stdout: &[r#"{"argv":["js","a","b c"],"sum":45}"#],
            ..Case::new(
                "argv and stdout",
                "js",
                "const sum = [...Array(10).keys()].reduce((a, b) => a + b, 0);\n\
                 console.log(JSON.stringify({ argv: process.argv, sum }));\n",
            )
        },
        Case {
            outcome: Outcome::NonZeroExit { code: 1 },
            stdout: &["before"],
            stderr: &["Uncaught TypeError: bad input", "fail@"],
            ..Case::new(
                "thrown error",
                "js",
                "console.log('before');\nfunction fail() { throw new TypeError('bad input'); }\nfail();\n",
            )
        },
        Case {
            outcome: Outcome::NonZeroExit { code: 1 },
            stderr: &["Uncaught Error: late"],
            ..Case::new(
                "rejected last promise",
                "js",
                "(async () => { await null; throw new Error('late'); })()\n",
            )
        },
        Case {
            outcome: Outcome::NonZeroExit { code: 3 },
            stdout: &["partial"],
            ..Case::new(
                "process.exit(3)",
                "js",
                "console.log('partial');\nprocess.exit(3);\nconsole.log('never');\n",
            )
        },
        Case {
            outcome: Outcome::NonZeroExit { code: 1 },
            stderr: &["SyntaxError"],
            ..Case::new("syntax error", "js", "function (\n")
        },
        Case {
            limits: TIMEOUT,
            outcome: Outcome::Timeout { limit_ms: 1_000 },
            ..Case::new("infinite loop", "js", "for (;;) {}\n")
        },
        Case {
            limits: MEMORY,
            outcome: Outcome::MemoryLimitExceeded {
                limit_bytes: 96 << 20,
            },
            ..Case::new(
                "memory bomb",
                "js",
                "const chunks = [];\nfor (;;) chunks.push(new Uint8Array(1 << 20).fill(1));\n",
            )
        },
        Case {
            limits: OUTPUT,
            outcome: Outcome::OutputLimitExceeded {
                limit_bytes: 1 << 20,
            },
            ..Case::new(
                "output flood",
                "js",
                "const line = 'y'.repeat(65535);\nfor (;;) console.log(line);\n",
            )
        },
        Case {
            stdout: &["sync", "microtask", "timer 1", "timer 2", "last promise"],
            ..Case::new(
                "promises and timers run before the task ends",
                "js",
                "setTimeout(() => { console.log('timer 1'); setTimeout(() => console.log('timer 2'), 5); }, 10);\n\
                 Promise.resolve().then(() => console.log('microtask'));\n\
                 console.log('sync');\n\
                 new Promise((resolve) => setTimeout(resolve, 30)).then(() => console.log('last promise'));\n",
            )
        },
        Case {
            stdout: &[
                "fetch denied: fetch: a warren task has no network",
                "require undefined",
                "XMLHttpRequest undefined",
                "WebSocket undefined",
            ],
            not_in_stdout: &["FETCHED"],
            ..Case::new(
                "no files, no network",
                "js",
                "try { fetch('http://127.0.0.1:5672/'); console.log('FETCHED'); }\n\
                 catch (e) { console.log('fetch denied:', e.message); }\n\
                 for (const name of ['require', 'XMLHttpRequest', 'WebSocket']) console.log(name, typeof globalThis[name]);\n",
            )
        },
    ]
}

/// csvstats reports a table as csv2json does (compared as JSON values).
fn csv_case() -> (Case, &'static str) {
    let table = "city,population,note\nOslo,709037,\"capital, largest\"\nBergen,291940,\nTromsø,78745,\"arctic\"\"\"\n";
    (
        Case {
            stdout: &[r#""rows":3"#],
            ..Case::new("csvstats", "csvstats", table)
        },
        table,
    )
}

/// `warren-worker exec` of `case`, with its limits as flags, from the shared AOT cache.
fn exec(case: &Case) -> (Outcome, Vec<u8>, Vec<u8>) {
    let mut command = Command::new(binary("warren-worker"));
    command
        .arg("exec")
        .arg("--modules")
        .arg(modules_dir())
        .arg("--cache")
        .arg(shared_aot_cache());
    if let Some(ms) = case.limits.timeout_ms {
        command.args(["--timeout", &format!("{ms}ms")]);
    }
    if let Some(bytes) = case.limits.max_memory_bytes {
        command.args(["--max-memory", &bytes.to_string()]);
    }
    if let Some(bytes) = case.limits.max_output_bytes {
        command.args(["--max-output", &bytes.to_string()]);
    }
    command.arg(case.module).arg("--input").arg("-").arg("--");
    command.args(case.args);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren-worker starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(case.program.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let outcome = match output.status.code() {
        Some(0) => Outcome::Success,
        Some(124) => Outcome::Timeout {
            limit_ms: case.limits.timeout_ms.unwrap_or_default(),
        },
        Some(125) => Outcome::MemoryLimitExceeded {
            limit_bytes: case.limits.max_memory_bytes.unwrap_or_default(),
        },
        Some(126) => Outcome::OutputLimitExceeded {
            limit_bytes: case.limits.max_output_bytes.unwrap_or_default(),
        },
        Some(code) => Outcome::NonZeroExit { code },
        None => panic!("exec killed: {output:?}"),
    };
    (outcome, output.stdout, output.stderr)
}

fn all_cases() -> Vec<Case> {
    let mut cases = python_cases();
    cases.extend(js_cases());
    cases.push(csv_case().0);
    cases
}

#[test]
fn python_programs_run_through_exec() {
    for case in python_cases() {
        let (outcome, stdout, stderr) = exec(&case);
        case.check("exec", &outcome, &stdout, &stderr);
    }
}

#[test]
fn javascript_programs_run_through_exec() {
    for case in js_cases() {
        let (outcome, stdout, stderr) = exec(&case);
        case.check("exec", &outcome, &stdout, &stderr);
    }
}

#[test]
fn the_app_baked_module_reports_as_csv2json_does() {
    let (case, table) = csv_case();
    let (outcome, stdout, stderr) = exec(&case);
    case.check("exec", &outcome, &stdout, &stderr);
    let native = exec(&Case::new("csv2json", "csv2json", table));
    assert_eq!(native.0, Outcome::Success);
    let python: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    let rust: serde_json::Value = serde_json::from_slice(&native.1).unwrap();
    assert_eq!(python, rust);

    let malformed = Case {
        outcome: Outcome::NonZeroExit { code: 2 },
        stderr: &["csvstats: record 3 has 1 fields, the header has 2"],
        ..Case::new("malformed csv", "csvstats", "a,b\n1,2\n3\n")
    };
    let (outcome, stdout, stderr) = exec(&malformed);
    malformed.check("exec", &outcome, &stdout, &stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runner_case_comes_back_through_the_broker() {
    let broker = TestBroker::new().await;
    let worker = WorkerProcess::start(&broker.topology, 2, &["--timeout", "10s"]);
    let cases = all_cases();
    let tasks: Vec<Task> = cases.iter().map(Case::task).collect();
    broker.publish_many(&tasks).await;
    let results = broker.collect(tasks.len(), Duration::from_secs(120)).await;
    assert_eq!(results.len(), tasks.len(), "one result per task");
    for (case, task) in cases.iter().zip(&tasks) {
        let result = results
            .iter()
            .find(|result| result.task_id == task.id)
            .unwrap_or_else(|| panic!("no result for {}", case.name));
        case.check("broker", &result.outcome, &result.stdout, &result.stderr);
    }
    let metrics = worker.metrics();
    for module in ["py", "js", "csvstats"] {
        assert!(
            metrics.contains(&format!(
                "warren_tasks_total{{module=\"{module}\",outcome=\"success\"}}"
            )),
            "{metrics}"
        );
    }
    drop(broker); // deletes its queues
}

/// The runners are snapshots taken after start-up: each task must still draw its own random
/// numbers, not the snapshot's.
#[test]
fn each_task_draws_its_own_random_numbers() {
    let programs = [
        (
            "py",
            "import random, uuid\nprint(random.random(), uuid.uuid4())\n",
        ),
        ("js", "console.log(Math.random(), crypto.randomUUID());\n"),
    ];
    for (module, program) in programs {
        let case = Case::new("random", module, program);
        let draws: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let (outcome, stdout, stderr) = exec(&case);
                case.check("exec", &outcome, &stdout, &stderr);
                assert!(!stdout.is_empty(), "{module} printed nothing");
                stdout
            })
            .collect();
        assert_ne!(
            draws[0], draws[1],
            "{module}: two tasks drew the same numbers"
        );
    }
}
