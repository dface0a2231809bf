//! The AOT cache's trust: compiled code is loaded only from a directory no other user can write,
//! only from files the worker's own user owns, and only when a file matches the integrity record
//! the worker wrote for that module. Refusals are start-up errors for `exec`, `run` and the
//! library; an untrusted file is recompiled and replaced, never run.
//!
//! Tests that chown to `nobody` need root. CI runs as root: there, lacking it fails the test;
//! elsewhere such a test says loudly that it was skipped.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use warren_schemas::{ModuleRef, Task};
use warren_tests::{binary, module_path, registry, test_config};
use warren_worker::{ModuleRegistry, Sandbox, TaskRunner};

/// uid of `nobody`: the "another local user" of these tests.
const NOBODY: u32 = 65534;

/// A scratch directory with a modules directory holding `echo` and `upper`.
struct Scratch {
    root: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("modules")).unwrap();
        for name in ["echo", "upper"] {
            fs::copy(
                module_path(name),
                root.path().join(format!("modules/{name}.wasm")),
            )
            .unwrap();
        }
        Scratch { root }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn modules(&self) -> PathBuf {
        self.path("modules")
    }

    /// `warren-worker exec <module>` with `input` on stdin and this cache (`None`: the default,
    /// placed by `env`: each variable set, or removed when `None`).
    fn exec(
        &self,
        cache: Option<&Path>,
        module: &str,
        input: &[u8],
        env: &[(&str, Option<&Path>)],
    ) -> Output {
        let mut command = Command::new(binary("warren-worker"));
        command
            .arg("exec")
            .arg("--modules")
            .arg(self.modules())
            .args(
                cache
                    .map(|c| ["--cache".as_ref(), c.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .args([module, "--input", "-"])
            .env_remove("WARREN_CACHE")
            .env("WARREN_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command.spawn().expect("warren-worker starts");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `upper` on "shout" and asserts its own code ran.
fn assert_upper_runs(scratch: &Scratch, cache: &Path) -> String {
    let output = scratch.exec(Some(cache), "upper", b"shout", &[]);
    assert_eq!(
        (output.status.code(), output.stdout.as_slice()),
        (Some(0), &b"SHOUT"[..]),
        "upper's own code must run: {}",
        stderr(&output)
    );
    stderr(&output)
}

/// Runs echo once, so that the cache holds its entry too (`exec` compiles only what it runs).
fn cache_echo(scratch: &Scratch, cache: &Path) {
    let output = scratch.exec(Some(cache), "echo", b"x", &[]);
    assert_eq!(output.stdout, b"x", "{}", stderr(&output));
}

/// The cache entry compiled from module `name` (there is one engine configuration here).
fn entry(cache: &Path, name: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(fs::read(module_path(name)).unwrap()));
    let mut found = fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let file = p.file_name().unwrap().to_str().unwrap();
            file.starts_with(&digest) && file.ends_with(".cwasm")
        });
    let path = found
        .next()
        .unwrap_or_else(|| panic!("no cache entry for {name}"));
    assert!(found.next().is_none(), "one entry per module");
    path
}

fn record(entry: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", entry.display()))
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The uid this test runs as (the owner of what it creates).
fn my_uid(scratch: &Scratch) -> u32 {
    fs::metadata(scratch.root.path()).unwrap().uid()
}

/// Gives `path` to `nobody`. False (after saying so loudly) when this process may not, outside
/// CI; in CI, which runs as root, that is a failure.
fn chown_to_nobody(path: &Path, test: &str) -> bool {
    match std::os::unix::fs::chown(path, Some(NOBODY), None) {
        Ok(()) => true,
        Err(error) if std::env::var_os("CI").is_some() => {
            panic!("{test} needs root to chown to uid {NOBODY}, and CI runs as root: {error}")
        }
        Err(error) => {
            eprintln!(
                "\n!!! SKIPPED {test}: it needs root to chown to uid {NOBODY} ({error}); \
                 run the tests as root (CI does) to cover it\n"
            );
            false
        }
    }
}

/// The library entry point's answer for `cache`.
fn library_refusal(cache: &Path) -> String {
    let sandbox = Arc::new(Sandbox::new(test_config(1)).unwrap());
    match ModuleRegistry::new(sandbox, cache) {
        Ok(_) => panic!("ModuleRegistry::new accepted {}", cache.display()),
        Err(error) => error.to_string(),
    }
}

/// `warren-worker run` on `cache` must exit at start-up, non-zero; returns its stderr.
fn run_refusal(scratch: &Scratch, cache: &Path) -> String {
    let mut child = Command::new(binary("warren-worker"))
        .arg("run")
        .arg("--modules")
        .arg(scratch.modules())
        .arg("--cache")
        .arg(cache)
        .args(["--metrics-addr", "127.0.0.1:0"])
        // Never reached: the cache is refused first.
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren-worker starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!(
                "warren-worker run started on the untrusted cache {}",
                cache.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    stderr(&output)
}

/// Asserts a refusal names the path, what was found and how to fix it.
fn assert_refusal(message: &str, path: &Path, found: &[&str], fix: &str) {
    assert!(message.contains("refusing the AOT cache"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    for found in found {
        assert!(message.contains(found), "{found:?} missing: {message}");
    }
    assert!(message.contains(fix), "fix {fix:?} missing: {message}");
    assert!(message.contains("--cache"), "{message}");
}

#[test]
fn a_private_cache_directory_is_used_and_its_files_are_private() {
    let scratch = Scratch::new();
    let cache = scratch.path("cache");
    assert_upper_runs(&scratch, &cache);
    assert_eq!(mode(&cache), 0o700, "created private");
    let upper = entry(&cache, "upper");
    assert_eq!(mode(&upper), 0o600);
    assert_eq!(mode(&record(&upper)), 0o600);
    let stderr = assert_upper_runs(&scratch, &cache);
    assert!(
        !stderr.contains("WARN"),
        "a warm, trusted cache is silent: {stderr}"
    );
}

#[test]
fn a_world_writable_cache_directory_is_refused_by_exec_run_and_the_library() {
    let scratch = Scratch::new();
    let cache = scratch.path("cache");
    fs::create_dir(&cache).unwrap();
    chmod(&cache, 0o777);
    let found = ["mode 0777", "writable by group or others"];
    let fix = &format!("chmod 0700 {}", cache.display());

    let output = scratch.exec(Some(&cache), "upper", b"shout", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(output.stdout.is_empty());
    assert_refusal(&stderr(&output), &cache, &found, fix);
    assert_refusal(&run_refusal(&scratch, &cache), &cache, &found, fix);
    assert_refusal(&library_refusal(&cache), &cache, &found, fix);
}

#[test]
fn a_cache_directory_owned_by_another_user_is_refused() {
    let scratch = Scratch::new();
    let cache = scratch.path("cache");
    fs::create_dir(&cache).unwrap();
    chmod(&cache, 0o700);
    if !chown_to_nobody(&cache, "a_cache_directory_owned_by_another_user_is_refused") {
        return;
    }
    let found = [
        "owner uid 65534",
        "mode 0700",
        "not owned by this worker's user",
    ];
    let fix = &format!("chown {} {}", my_uid(&scratch), cache.display());

    let output = scratch.exec(Some(&cache), "upper", b"shout", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_refusal(&stderr(&output), &cache, &found, fix);
    assert_refusal(&library_refusal(&cache), &cache, &found, fix);
}

#[test]
fn a_writable_parent_without_the_sticky_bit_is_refused() {
    let scratch = Scratch::new();
    let parent = scratch.path("shared");
    fs::create_dir(&parent).unwrap();
    chmod(&parent, 0o777);
    let cache = parent.join("cache");
    let output = scratch.exec(Some(&cache), "upper", b"shout", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert_refusal(
        &message,
        &cache,
        &[
            &format!("parent directory {}", parent.display()),
            "mode 0777",
        ],
        &format!("chmod go-w {}", parent.display()),
    );

    chmod(&parent, 0o775);
    assert_refusal(
        &library_refusal(&cache),
        &cache,
        &["mode 0775"],
        "chmod go-w",
    );
}

#[test]
fn a_sticky_world_writable_parent_is_accepted_for_our_own_entry() {
    let scratch = Scratch::new();
    let parent = scratch.path("tmp-like");
    fs::create_dir(&parent).unwrap();
    chmod(&parent, 0o1777);
    assert_upper_runs(&scratch, &parent.join("cache"));
}

#[test]
fn the_default_cache_is_private_to_the_user() {
    let scratch = Scratch::new();
    let xdg = scratch.path("xdg");
    let output = scratch.exec(None, "upper", b"shout", &[("XDG_CACHE_HOME", Some(&xdg))]);
    assert_eq!(output.stdout, b"SHOUT", "{}", stderr(&output));
    assert_eq!(mode(&xdg.join("warren")), 0o700);
    entry(&xdg.join("warren"), "upper");

    let home = scratch.path("home");
    let env = [("XDG_CACHE_HOME", None), ("HOME", Some(home.as_path()))];
    let output = scratch.exec(None, "upper", b"shout", &env);
    assert_eq!(output.stdout, b"SHOUT", "{}", stderr(&output));
    assert_eq!(mode(&home.join(".cache/warren")), 0o700);
    entry(&home.join(".cache/warren"), "upper");

    let output = scratch.exec(
        None,
        "upper",
        b"shout",
        &[("XDG_CACHE_HOME", None), ("HOME", None)],
    );
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("--cache") && message.contains("WARREN_CACHE"),
        "{message}"
    );
}

#[test]
fn a_cache_file_owned_by_another_user_is_recompiled_and_replaced() {
    let scratch = Scratch::new();
    let cache = scratch.path("cache");
    assert_upper_runs(&scratch, &cache);
    let upper = entry(&cache, "upper");
    if !chown_to_nobody(
        &upper,
        "a_cache_file_owned_by_another_user_is_recompiled_and_replaced",
    ) {
        return;
    }
    let stderr = assert_upper_runs(&scratch, &cache);
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(stderr.contains(&upper.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("not owned by this worker's user"),
        "{stderr}"
    );
    assert!(stderr.contains("owner uid 65534"), "{stderr}");
    let meta = fs::metadata(&upper).unwrap();
    assert_eq!(meta.uid(), my_uid(&scratch), "replaced by the worker's own");
}

#[test]
fn a_writable_or_symlinked_cache_file_is_recompiled_and_replaced() {
    let scratch = Scratch::new();
    let cache = scratch.path("cache");
    assert_upper_runs(&scratch, &cache);
    let upper = entry(&cache, "upper");
    chmod(&upper, 0o666);
    let stderr = assert_upper_runs(&scratch, &cache);
    assert!(stderr.contains(&upper.display().to_string()), "{stderr}");
    assert!(stderr.contains("writable by group or others"), "{stderr}");
    assert!(stderr.contains("mode 0666"), "{stderr}");
    assert_eq!(mode(&upper), 0o600, "replaced by the worker's own");

    // A symlink to echo's entry is not followed.
    cache_echo(&scratch, &cache);
    let echo = entry(&cache, "echo");
    fs::remove_file(&upper).unwrap();
    std::os::unix::fs::symlink(&echo, &upper).unwrap();
    let stderr = assert_upper_runs(&scratch, &cache);
    assert!(stderr.contains("not a regular file"), "{stderr}");
    assert!(fs::symlink_metadata(&upper).unwrap().is_file(), "replaced");
}

#[test]
fn a_compiled_file_copied_under_another_modules_name_is_rejected() {
    let scratch = Scratch::new();
    let cache = scratch.path("cache");
    assert_upper_runs(&scratch, &cache);
    cache_echo(&scratch, &cache);
    let (echo, upper) = (entry(&cache, "echo"), entry(&cache, "upper"));

    // echo's code under upper's name: ownership and mode are the worker's own, only the
    // integrity record tells.
    fs::copy(&echo, &upper).unwrap();
    let stderr = assert_upper_runs(&scratch, &cache);
    assert!(
        stderr.contains("does not match its integrity record"),
        "{stderr}"
    );
    assert!(stderr.contains(&upper.display().to_string()), "{stderr}");

    // Its record too: the record names echo's module, not upper's.
    fs::copy(&echo, &upper).unwrap();
    fs::copy(record(&echo), record(&upper)).unwrap();
    let stderr = assert_upper_runs(&scratch, &cache);
    assert!(
        stderr.contains("does not match its integrity record"),
        "{stderr}"
    );

    // The library: upper is recompiled (echo still comes from the cache) and runs as itself.
    fs::copy(&echo, &upper).unwrap();
    let registry = registry(test_config(1), &cache);
    let report = registry.load_dir(&scratch.modules()).unwrap();
    assert_eq!((report.loaded.len(), report.from_cache), (2, 1));
    let runner = TaskRunner::new(registry, "aot-cache-test");
    let result = runner.run_here(Task::new(ModuleRef::latest("upper"), b"shout".to_vec()), 1);
    assert_eq!(result.stdout, b"SHOUT");

    // An entry without a record is not trusted either.
    fs::remove_file(record(&upper)).unwrap();
    let stderr = assert_upper_runs(&scratch, &cache);
    assert!(stderr.contains("has no integrity record"), "{stderr}");
    assert!(record(&upper).is_file(), "written again");
}
