//! Every guest behaviour ends as a typed outcome, and the worker keeps serving afterwards.
//! Limits come in obeyed/violated pairs.

use sha2::{Digest, Sha256};
use warren_schemas::{ModuleRef, Outcome, Task, TaskLimits, TaskResult};
use warren_tests::{runner, runner_with, test_config};
use warren_worker::TaskRunner;

fn task(module: &str, input: &[u8], args: &[&str]) -> Task {
    let mut task = Task::new(module.parse::<ModuleRef>().unwrap(), input.to_vec());
    task.args = args.iter().map(|a| a.to_string()).collect();
    task
}

fn run(runner: &TaskRunner, task: Task) -> TaskResult {
    let id = task.id;
    let result = runner.run_here(task, 1);
    assert_eq!(result.task_id, id, "a result answers its own task");
    result
}

/// After anything a guest did, the next ordinary task must still succeed.
fn assert_still_serving(runner: &TaskRunner) {
    let result = run(runner, task("upper", b"still here", &[]));
    assert_eq!(result.outcome, Outcome::Success);
    assert_eq!(result.stdout, b"STILL HERE");
}

/// The programs the tests run as core modules (`name`) and, built for WASI 0.2, as components
/// (`name-c`): the contract and every limit must hold for both kinds alike.
fn kinds(program: &str) -> [String; 2] {
    [program.to_owned(), format!("{program}-c")]
}

#[test]
fn useful_modules_compute_the_right_answers() {
    let runner = runner();
    for echo in kinds("echo") {
        let result = run(&runner, task(&echo, b"hello\x00world", &[]));
        assert_eq!(
            (result.outcome, result.stdout, result.exit_code),
            (Outcome::Success, b"hello\x00world".to_vec(), Some(0)),
            "{echo}"
        );
    }
    for upper in kinds("upper") {
        let result = run(&runner, task(&upper, "grüße, world".as_bytes(), &[]));
        assert_eq!(result.stdout, "GRüßE, WORLD".as_bytes(), "{upper}");
    }
    for wc in kinds("wc") {
        let result = run(&runner, task(&wc, b"one two\nthree\n\n  four", &[]));
        assert_eq!(
            String::from_utf8(result.stdout).unwrap(),
            "3 4 21\n",
            "{wc}"
        );
    }

    let input = b"the quick brown fox".repeat(1000);
    let sha = run(&runner, task("sha256", &input, &[]));
    assert_eq!(
        String::from_utf8(sha.stdout).unwrap(),
        format!("{}\n", hex::encode(Sha256::digest(&input)))
    );

    let csv = b"city,temp\n\"Oslo, NO\",3.5\nRome,18\nOslo,\n";
    let summary = run(&runner, task("csv2json", csv, &[]));
    assert_eq!(
        summary.outcome,
        Outcome::Success,
        "{}",
        String::from_utf8_lossy(&summary.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(json["rows"], 3);
    assert_eq!(json["columns"][0]["name"], "city");
    assert_eq!(json["columns"][0]["type"], "string");
    assert_eq!(json["columns"][0]["distinct"], 3);
    assert_eq!(json["columns"][1]["type"], "number");
    assert_eq!(json["columns"][1]["count"], 2);
    assert_eq!(json["columns"][1]["max"], 18.0);
    assert_eq!(json["columns"][1]["sum"], 21.5);
}

#[test]
fn malformed_csv_is_a_nonzero_exit_not_a_crash() {
    let runner = runner();
    let result = run(&runner, task("csv2json", b"a,b\n1,2,3\n", &[]));
    assert_eq!(result.outcome, Outcome::NonZeroExit { code: 2 });
    assert_eq!(result.exit_code, Some(2));
    assert!(
        !result.stderr.is_empty(),
        "the guest explains itself on stderr"
    );
    assert_still_serving(&runner);
}

#[test]
fn lookup_reads_its_large_table_consistently() {
    let runner = runner();
    let mut tables = Vec::new();
    for lookup in kinds("lookup") {
        let first = run(&runner, task(&lookup, b"1\n2\n1\n", &[]));
        assert_eq!(first.outcome, Outcome::Success, "{lookup}");
        let lines: Vec<String> = std::str::from_utf8(&first.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(lines.len(), 3, "{lookup}");
        assert!(
            lines
                .iter()
                .all(|l| l.len() == 16 && l.bytes().all(|b| b.is_ascii_hexdigit())),
            "{lookup}: {lines:?}"
        );
        assert_eq!(lines[0], lines[2], "{lookup}: same key, same entry");
        assert_ne!(
            lines[0], lines[1],
            "{lookup}: different keys, different entries"
        );
        // A second instance sees the same (copy-on-write) table.
        let again = run(&runner, task(&lookup, b"1\n", &[]));
        assert_eq!(
            again.stdout,
            format!("{}\n", lines[0]).into_bytes(),
            "{lookup}"
        );
        tables.push(lines);
    }
    assert_eq!(
        tables[0], tables[1],
        "the module and the component embed one table"
    );
}

#[test]
fn every_exit_code_is_reported_as_is() {
    let runner = runner();
    for exit in kinds("exit") {
        for code in 0..=255 {
            let result = run(&runner, task(&exit, b"", &[&code.to_string()]));
            let expected = if code == 0 {
                Outcome::Success
            } else {
                Outcome::NonZeroExit { code }
            };
            assert_eq!(result.outcome, expected, "{exit}: exit code {code}");
            assert_eq!(result.exit_code, Some(code), "{exit}");
        }
    }
}

#[test]
fn panics_and_wasm_traps_are_trap_outcomes() {
    let runner = runner();
    for trap in kinds("trap") {
        let panic = run(&runner, task(&trap, b"", &[]));
        assert!(
            matches!(panic.outcome, Outcome::Trap { .. }),
            "{trap}: {:?}",
            panic.outcome
        );
        assert!(
            String::from_utf8_lossy(&panic.stderr).contains("boom"),
            "{trap}: the panic message reaches stderr"
        );
        for (arg, needle) in [
            ("unreachable", "unreachable"),
            ("divzero", "divide by zero"),
        ] {
            let result = run(&runner, task(&trap, b"", &[arg]));
            match &result.outcome {
                Outcome::Trap { message } => {
                    assert!(message.contains(needle), "{trap} {arg}: {message}")
                }
                other => panic!("{trap} {arg}: expected a trap, got {other:?}"),
            }
        }
        assert_still_serving(&runner);
    }
}

#[test]
fn unbounded_recursion_is_a_stack_overflow_trap() {
    let runner = runner();
    for recurse in kinds("recurse") {
        let result = run(&runner, task(&recurse, b"", &[]));
        match &result.outcome {
            Outcome::Trap { message } => {
                assert!(message.contains("stack overflow"), "{recurse}: {message}")
            }
            other => panic!("{recurse}: expected a stack overflow, got {other:?}"),
        }
        assert_still_serving(&runner);
    }
}

#[test]
fn cpu_deadline_obeyed() {
    let runner = runner();
    for spin in kinds("spin") {
        let mut bounded = task(&spin, b"", &["20"]);
        bounded.limits.timeout_ms = Some(5_000);
        let result = run(&runner, bounded);
        assert_eq!(
            (result.outcome, result.stdout),
            (Outcome::Success, b"done\n".to_vec()),
            "{spin}"
        );
    }
}

#[test]
fn cpu_deadline_violated() {
    let runner = runner();
    for spin in kinds("spin") {
        let mut forever = task(&spin, b"", &[]);
        forever.limits.timeout_ms = Some(100);
        let result = run(&runner, forever);
        assert_eq!(result.outcome, Outcome::Timeout { limit_ms: 100 }, "{spin}");
        assert_still_serving(&runner);
    }
}

#[test]
fn sleeping_guest_obeys_the_deadline() {
    let runner = runner();
    for sleep in kinds("sleep") {
        let mut short = task(&sleep, b"woke", &["30"]);
        short.limits.timeout_ms = Some(5_000);
        let result = run(&runner, short);
        assert_eq!(
            (result.outcome, result.stdout),
            (Outcome::Success, b"woke".to_vec()),
            "{sleep}"
        );
        assert!(
            result.timings.run_ns >= 30_000_000,
            "{sleep}: the guest really slept"
        );
    }
}

#[test]
fn sleeping_past_the_deadline_is_a_timeout() {
    let runner = runner();
    for sleep in kinds("sleep") {
        let mut long = task(&sleep, b"", &["600000"]);
        long.limits.timeout_ms = Some(150);
        let result = run(&runner, long);
        assert_eq!(
            result.outcome,
            Outcome::Timeout { limit_ms: 150 },
            "{sleep}"
        );
        // Ten minutes asked, stopped at the deadline: the executor thread was not held hostage.
        assert!(
            result.timings.run_ns < 60_000_000_000,
            "{sleep}: run took {} ns",
            result.timings.run_ns
        );
        assert_still_serving(&runner);
    }
}

#[test]
fn memory_limit_obeyed() {
    // lookup's 24 MiB table needs a memory above 24 MiB.
    let runner = runner();
    for lookup in kinds("lookup") {
        let mut roomy = task(&lookup, b"3\n", &[]);
        roomy.limits.max_memory_bytes = Some(64 << 20);
        assert_eq!(run(&runner, roomy).outcome, Outcome::Success, "{lookup}");
    }
}

#[test]
fn memory_limit_violated_at_instantiation_and_at_runtime() {
    let runner = runner();
    for (lookup, membomb) in kinds("lookup").into_iter().zip(kinds("membomb")) {
        let mut tight = task(&lookup, b"3\n", &[]);
        tight.limits.max_memory_bytes = Some(16 << 20);
        assert_eq!(
            run(&runner, tight).outcome,
            Outcome::MemoryLimitExceeded {
                limit_bytes: 16 << 20
            },
            "{lookup}"
        );

        let mut bomb = task(&membomb, b"", &[]);
        bomb.limits.max_memory_bytes = Some(32 << 20);
        assert_eq!(
            run(&runner, bomb).outcome,
            Outcome::MemoryLimitExceeded {
                limit_bytes: 32 << 20
            },
            "{membomb}"
        );
        assert_still_serving(&runner);
    }
}

#[test]
fn memory_bomb_is_stopped_by_the_worker_cap() {
    let runner = runner_with(warren_worker::SandboxConfig {
        max_memory: 48 << 20,
        ..test_config(1)
    });
    for membomb in kinds("membomb") {
        let result = run(&runner, task(&membomb, b"", &[]));
        assert_eq!(
            result.outcome,
            Outcome::MemoryLimitExceeded {
                limit_bytes: 48 << 20
            },
            "{membomb}"
        );
    }
}

#[test]
fn output_limit_obeyed() {
    let runner = runner();
    for echo in kinds("echo") {
        let mut exact = task(&echo, &[b'x'; 1000], &[]);
        exact.limits.max_output_bytes = Some(1000);
        let result = run(&runner, exact);
        assert_eq!(
            (result.outcome, result.stdout.len()),
            (Outcome::Success, 1000),
            "{echo}"
        );
    }
}

#[test]
fn output_limit_violated() {
    let runner = runner();
    for (echo, flood) in kinds("echo").into_iter().zip(kinds("flood")) {
        let mut over = task(&echo, &[b'x'; 1001], &[]);
        over.limits.max_output_bytes = Some(1000);
        assert_eq!(
            run(&runner, over).outcome,
            Outcome::OutputLimitExceeded { limit_bytes: 1000 },
            "{echo}"
        );

        let mut flood_task = task(&flood, b"", &[]);
        flood_task.limits.max_output_bytes = Some(1 << 20);
        let result = run(&runner, flood_task);
        assert_eq!(
            result.outcome,
            Outcome::OutputLimitExceeded {
                limit_bytes: 1 << 20
            },
            "{flood}"
        );
        assert!(result.stdout.len() <= 1 << 20, "{flood}");
        assert_still_serving(&runner);
    }
}

#[test]
fn stderr_flood_is_truncated_and_ends_at_the_deadline() {
    let runner = runner();
    for flood in kinds("flood") {
        let mut flood_task = task(&flood, b"", &["stderr"]);
        flood_task.limits.timeout_ms = Some(300);
        let result = run(&runner, flood_task);
        assert_eq!(
            result.outcome,
            Outcome::Timeout { limit_ms: 300 },
            "{flood}"
        );
        assert!(result.stderr_truncated, "{flood}");
        assert_eq!(
            result.stderr.len() as u64,
            warren_worker::config::DEFAULT_MAX_STDERR,
            "{flood}"
        );
    }
}

#[test]
fn escape_attempts_fail_inside_the_sandbox() {
    let runner = runner();
    for escape in kinds("escape") {
        let mut attempt = task(&escape, b"", &["--flag", "two words"]);
        attempt.env = vec![("GREETING".into(), "hi".into())];
        let result = run(&runner, attempt);
        let report = String::from_utf8(result.stdout.clone()).unwrap();
        assert_eq!(
            result.outcome,
            Outcome::Success,
            "{escape}: something escaped:\n{report}"
        );
        assert!(report.contains("file /etc/passwd: denied"), "{report}");
        assert!(report.contains("file .: denied"), "{report}");
        assert!(report.contains("env HOME: absent"), "{report}");
        assert!(report.contains("env AMQP_URL: absent"), "{report}");
        assert!(
            report.contains("env GREETING: PRESENT=hi"),
            "explicit env reaches the guest: {report}"
        );
        assert!(
            report.contains("env count: 1"),
            "only the task's env is visible: {report}"
        );
        assert!(report.contains("socket 127.0.0.1:5672: denied"), "{report}");
        assert!(
            report.contains(&format!("args: {escape} --flag two words")),
            "argv[0] is the module name: {report}"
        );
    }
}

#[test]
fn unknown_module_and_bad_reference_are_outcomes() {
    let runner = runner();
    let missing = run(&runner, task("no-such-module", b"", &[]));
    assert_eq!(
        missing.outcome,
        Outcome::ModuleNotFound {
            module: "no-such-module".into()
        }
    );
    assert_eq!(missing.module, None);

    let mut bad = task("echo", b"", &[]);
    bad.module = ModuleRef {
        name: "../../etc/passwd".into(),
        digest_prefix: None,
    };
    assert!(matches!(
        run(&runner, bad).outcome,
        Outcome::InvalidTask { .. }
    ));

    let mut bad_env = task("echo", b"", &[]);
    bad_env.env = vec![("A=B".into(), "x".into())];
    assert!(matches!(
        run(&runner, bad_env).outcome,
        Outcome::InvalidTask { .. }
    ));
    assert_still_serving(&runner);
}

#[test]
fn results_carry_module_version_timings_and_batch() {
    let runner = runner();
    let mut t = task("echo", b"x", &[]);
    t.submitted_at_unix_ns -= 5_000_000; // submitted 5 ms ago
    t.batch = Some(warren_schemas::BatchRef {
        batch_id: uuid::Uuid::new_v4(),
        index: 41,
    });
    t.limits = TaskLimits::default();
    let batch = t.batch;
    let result = run(&runner, t);
    let module = result.module.as_ref().expect("resolved module");
    assert_eq!(module.name, "echo");
    assert_eq!(module.digest.len(), 64);
    assert_eq!(result.batch, batch);
    assert_eq!(result.worker_id, "test-worker");
    assert_eq!(result.attempt, 1);
    assert!(result.timings.queue_wait_ns >= 5_000_000);
    assert!(result.timings.instantiate_ns > 0 && result.timings.run_ns > 0);
    assert!(result.timings.total_ns >= result.timings.instantiate_ns + result.timings.run_ns);
}

#[test]
fn concurrent_tasks_each_get_their_own_sandbox() {
    let runner = runner();
    let runner = std::sync::Arc::new(runner);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let runner = runner.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|j| {
                        let input = format!("task {i}-{j}");
                        let result = runner.run_here(task("upper", input.as_bytes(), &[]), 1);
                        (input.to_uppercase().into_bytes(), result.stdout)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for handle in handles {
        for (expected, got) in handle.join().unwrap() {
            assert_eq!(got, expected, "no output leaks between tasks");
        }
    }
}

#[test]
fn stdio_follows_the_guest_when_it_moves_and_closes_descriptors() {
    let result = run_guest_with("stdio_moves.wat", b"hello world", 5_000);
    assert_eq!(
        (result.outcome, result.exit_code),
        (Outcome::NonZeroExit { code: 136 }, Some(136)),
        "136 = EBADF for the write to the vacated 2 and for the read after closing 0"
    );
    assert_eq!(
        result.stdout, b"hello world",
        "scattered read, gathered write"
    );
    assert_eq!(result.stderr, b"to-stderr", "stderr renumbered to 1");
}

#[test]
fn wasi_answers_what_a_sandboxed_command_may_and_may_not_do() {
    let result = run_guest("wasi_answers.wat", 5_000);
    assert_eq!(result.outcome, Outcome::Success);
    let (ok, badf, fault, inval, notsock, spipe, yes) = (0, 8, 21, 28, 57, 70, 1);
    #[rustfmt::skip]
    let expected = [
        ok, ok, yes,       // monotonic and realtime clocks, realtime is now-ish
        badf, inval,       // no CPU-time clocks; unknown clock id
        ok, yes,           // random bytes
        badf, badf,        // no preopened directory, so no path can be opened
        ok, yes,           // stdout is open, for writing
        spipe, notsock,    // a stream cannot seek and is not a socket
        badf,              // 5 is not a descriptor
        fault,             // a buffer past the end of memory
    ];
    assert_eq!(result.stdout, expected);
}

/// Runs a test-only WAT guest (tests/guests) once, in its own registry.
fn run_guest(file: &str, timeout_ms: u64) -> TaskResult {
    run_guest_with(file, b"", timeout_ms)
}

/// Runs a test-only WAT guest once with `input` on stdin.
fn run_guest_with(file: &str, input: &[u8], timeout_ms: u64) -> TaskResult {
    let dir = tempfile::tempdir().unwrap();
    let name = file.trim_end_matches(".wat").replace('_', "-");
    std::fs::copy(
        warren_tests::test_guest(file),
        dir.path().join(format!("{name}.wasm")),
    )
    .unwrap();
    let registry = warren_tests::registry(test_config(1), dir.path());
    let report = registry.load_dir(dir.path()).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let runner = TaskRunner::new(registry, "guest-test");
    let mut t = task(&name, input, &[]);
    t.limits.timeout_ms = Some(timeout_ms);
    run(&runner, t)
}

#[test]
fn a_sleep_of_centuries_ends_at_the_wall_clock_deadline() {
    let result = run_guest("sleep_forever.wat", 200);
    assert_eq!(result.outcome, Outcome::Timeout { limit_ms: 200 });
}

#[test]
fn an_infinite_loop_during_instantiation_is_a_timeout() {
    let result = run_guest("start_section_loop.wat", 200);
    assert_eq!(result.outcome, Outcome::Timeout { limit_ms: 200 });
}
