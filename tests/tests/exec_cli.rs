//! `warren-worker exec`, the way a module author uses it: real process, real files.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use warren_tests::{binary, modules_dir, repo_root, test_guest};

fn exec(args: &[&str], stdin: &[u8]) -> Output {
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary("warren-worker"))
        .arg("exec")
        .arg("--modules")
        .arg(modules_dir())
        .arg("--cache")
        .arg(cache.path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren-worker starts");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn runs_a_module_on_a_file_and_reports_on_stderr() {
    let input = repo_root().join("README.md");
    let output = exec(&["wc", "--input", input.to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = std::fs::read(&input).unwrap();
    let lines = text.iter().filter(|&&b| b == b'\n').count();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(stdout.starts_with(&format!("{lines} ")), "{stdout}");
    assert!(
        stdout.trim_end().ends_with(&format!(" {}", text.len())),
        "{stdout}"
    );
    let report = stderr(&output);
    assert!(report.contains("warren: success | module wc@"), "{report}");
    assert!(report.contains("instantiate"), "{report}");
}

#[test]
fn reads_stdin_with_dash_and_passes_args_and_env() {
    let output = exec(&["upper", "--input", "-"], b"shout");
    assert_eq!(
        (output.status.code(), output.stdout.as_slice()),
        (Some(0), &b"SHOUT"[..])
    );

    let output = exec(&["escape", "--env", "GREETING=hello", "--", "a", "b"], b"");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("env GREETING: PRESENT=hello"), "{stdout}");
    assert!(stdout.contains("args: escape a b"), "{stdout}");
}

#[test]
fn exits_with_the_guest_exit_code() {
    for code in [1, 7, 200, 255] {
        let output = exec(&["exit", "--", &code.to_string()], b"");
        assert_eq!(output.status.code(), Some(code), "{}", stderr(&output));
    }
}

#[test]
fn outcomes_without_an_exit_code_map_to_documented_codes() {
    let timeout = exec(&["spin", "--timeout", "100ms"], b"");
    assert_eq!(timeout.status.code(), Some(124), "{}", stderr(&timeout));
    assert!(stderr(&timeout).contains("timed out after 100 ms"));

    let memory = exec(&["membomb", "--max-memory", "32MiB"], b"");
    assert_eq!(memory.status.code(), Some(125), "{}", stderr(&memory));

    let output = exec(&["flood", "--max-output", "64KiB"], b"");
    assert_eq!(output.status.code(), Some(126), "{}", stderr(&output));

    let missing = exec(&["no-such-module"], b"");
    assert_eq!(missing.status.code(), Some(127));
    assert!(
        stderr(&missing).contains("modules available in"),
        "{}",
        stderr(&missing)
    );

    let trap = exec(&["trap"], b"");
    assert_eq!(trap.status.code(), Some(128));
}

#[test]
fn runs_a_wasm_file_by_path() {
    let path = modules_dir().join("upper.wasm");
    let output = exec(&[path.to_str().unwrap(), "--input", "-"], b"by path");
    assert_eq!(output.stdout, b"BY PATH", "{}", stderr(&output));
}

#[test]
fn bad_arguments_get_clear_errors() {
    let output = exec(&["echo", "--input", "/definitely/not/here"], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot read input file /definitely/not/here"),
        "{}",
        stderr(&output)
    );

    let output = exec(&["echo", "--max-memory", "lots"], b"");
    assert_eq!(output.status.code(), Some(2), "clap usage error");
    assert!(stderr(&output).contains("lots"), "{}", stderr(&output));

    let output = exec(&["echo", "--env", "NOEQUALS"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("KEY=VALUE"), "{}", stderr(&output));
}

#[test]
fn an_impossible_pool_fails_startup_naming_the_knob() {
    // 200 000 slots × (4 GiB + 32 MiB) is far beyond a 47-bit address space.
    let output = exec(&["echo", "--max-concurrent-tasks", "200000"], b"");
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("--max-concurrent-tasks"), "{message}");
    assert!(message.contains("--memory-reservation"), "{message}");

    // A pool must hold one component's memories: 100 000 slots of 4 GiB is as far out.
    let output = exec(&["echo-c", "--max-memories-per-component", "100000"], b"");
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("--max-memories-per-component"),
        "{message}"
    );
}

/// A guest may use all the call stack `--max-wasm-stack` grants, and that stack is the host
/// thread's own: with a cap far above a default thread stack (2 MiB), unbounded recursion must
/// still end as a stack-overflow trap, not overflow the host thread and kill the process. The
/// daemon's lanes are sized by the same rule (`SandboxConfig::guest_thread_stack`).
#[test]
fn a_wasm_stack_cap_above_the_thread_default_traps_instead_of_crashing() {
    let guest = test_guest("deep_native_recursion.wat");
    let output = exec(&["--max-wasm-stack", "16MiB", guest.to_str().unwrap()], b"");
    let stderr = stderr(&output);
    assert!(
        output.status.code().is_some(),
        "the worker was killed: {:?}\n{stderr}",
        output.status
    );
    assert!(stderr.contains("stack overflow"), "{stderr}");
}

#[test]
fn runs_components_like_modules() {
    let output = exec(&["upper-c", "--input", "-"], b"shout");
    assert_eq!(
        (output.status.code(), output.stdout.as_slice()),
        (Some(0), &b"SHOUT"[..]),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("module upper-c@"),
        "{}",
        stderr(&output)
    );

    let output = exec(
        &["escape-c", "--env", "GREETING=hello", "--", "a", "b"],
        b"",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("env GREETING: PRESENT=hello"), "{stdout}");
    assert!(stdout.contains("args: escape-c a b"), "{stdout}");

    let exit = exec(&["exit-c", "--", "7"], b"");
    assert_eq!(exit.status.code(), Some(7), "{}", stderr(&exit));
    let timeout = exec(&["spin-c", "--timeout", "100ms"], b"");
    assert_eq!(timeout.status.code(), Some(124), "{}", stderr(&timeout));

    let path = modules_dir().join("wc-c.wasm");
    let by_path = exec(&[path.to_str().unwrap(), "--input", "-"], b"a b\n");
    assert_eq!(by_path.stdout, b"1 2 4\n", "{}", stderr(&by_path));
}

#[test]
fn exec_compiles_only_the_module_it_runs() {
    let modules = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    for name in ["upper", "lookup", "echo-c"] {
        std::fs::copy(
            modules_dir().join(format!("{name}.wasm")),
            modules.path().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let run = |module: &str| {
        let mut child = Command::new(binary("warren-worker"))
            .args(["exec", module, "--input", "-", "--modules"])
            .arg(modules.path())
            .arg("--cache")
            .arg(cache.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("warren-worker starts");
        child.stdin.take().unwrap().write_all(b"abc").unwrap();
        child.wait_with_output().unwrap()
    };
    let compiled = || {
        std::fs::read_dir(cache.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".cwasm")
            })
            .count()
    };

    let output = run("upper");
    assert_eq!(output.stdout, b"ABC", "{}", stderr(&output));
    assert_eq!(
        compiled(),
        1,
        "lookup (24 MiB) and echo-c were not compiled"
    );

    let missing = run("nothing-here");
    assert_eq!(missing.status.code(), Some(127));
    assert!(
        stderr(&missing).contains("echo-c, lookup, upper"),
        "the modules of the directory are listed: {}",
        stderr(&missing)
    );
    assert_eq!(compiled(), 1, "nothing more compiled to say so");
}
