//! Shared helpers for warren's integration tests: build the guest modules and the binaries once,
//! and hand out sandboxes and registries configured for tests.
//!
//! Every test goes through these helpers so that "how to start warren for a test" is written
//! once; the benchmarks (`warren-bench`) start their worker processes through them too.
//!
//! # Layout
//! - this file: the repository, built modules and binaries, sandboxes and runners for tests.
//! - [`worker_process`]: a worker process on given queues: start, wait until ready, signal, read.
//! - [`probe`]: GET `/readyz` and `/metrics` of a worker started that way.
//! - [`broker`]: a test's own queues on the real RabbitMQ, publishing and collecting.
//! - [`oci_registry`]: the shared OCI registry, and private ones a test stops or tampers with.
//! - [`producer_cli`]: the `warren` CLI run as a user runs it.
//! - [`observability`]: Prometheus and the dashboard against a real worker.
//! - [`swap`]: a swapfile for the isolation-under-swap tests.
//! - `bin/warren-crash-worker`: the daemon with a fault injected (aborts on one module).

pub mod broker;
pub mod cluster;
pub mod observability;
pub mod oci_registry;
pub mod probe;
pub mod producer_cli;
pub mod swap;
pub mod worker_process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use warren_worker::{ModuleRegistry, Sandbox, SandboxConfig, TaskRunner};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `modules/dist`, with every guest module built, the language runners too (once per test
/// process), and compiled into the [`shared_aot_cache`] before any test loads them: a language
/// runner takes seconds to compile, so tests load it from the cache instead of each compiling it.
pub fn modules_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root();
        let status = Command::new("bash")
            .arg(root.join("modules/build.sh"))
            .arg("--languages=yes")
            .status()
            .expect("cannot run modules/build.sh");
        assert!(status.success(), "modules/build.sh failed");
        let dist = root.join("modules/dist");
        let report = registry(test_config(1), &shared_aot_cache())
            .load_dir(&dist)
            .expect("modules dir readable");
        assert!(
            report.failed.is_empty(),
            "built modules must load: {:?}",
            report.failed
        );
        dist
    })
}

/// Path of the built module `name`.
pub fn module_path(name: &str) -> PathBuf {
    modules_dir().join(format!("{name}.wasm"))
}

/// Path of a guest used only by tests (`tests/guests/<file>`).
pub fn test_guest(file: &str) -> PathBuf {
    repo_root().join("tests/guests").join(file)
}

/// `target/debug/<name>` (or the profile the tests were built with), built once per process.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            // Same package set and targets as `cargo test --workspace`, so features unify the
            // same way and the test build's artifacts are reused instead of rebuilt.
            .args(["build", "--workspace", "--all-targets", "--locked"])
            .current_dir(repo_root())
            .status()
            .expect("cannot run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    target_dir().join("debug").join(name)
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// An AOT cache shared by every worker process the tests start, so each compiles the modules
/// at most once per engine configuration (cache writes are atomic renames, safe to share). The
/// worker refuses it unless the target directory and its parents are owned by root or the
/// user running the tests and not writable by group or others.
pub fn shared_aot_cache() -> PathBuf {
    target_dir().join("warren-test-aot-cache")
}

/// A sandbox config for tests: `slots` concurrent tasks, small caps so limit tests are quick.
pub fn test_config(slots: usize) -> SandboxConfig {
    SandboxConfig {
        max_concurrent_tasks: Some(slots),
        timeout: std::time::Duration::from_secs(10),
        ..SandboxConfig::default()
    }
}

/// A registry over a fresh sandbox built from `config`, with its AOT cache in `cache`.
pub fn registry(config: SandboxConfig, cache: &Path) -> Arc<ModuleRegistry> {
    let sandbox = Arc::new(Sandbox::new(config).expect("sandbox"));
    Arc::new(ModuleRegistry::new(sandbox, cache).unwrap_or_else(|error| panic!("{error}")))
}

/// A runner over every built module, with the given config, compiled modules from the
/// [`shared_aot_cache`].
pub fn runner_with(config: SandboxConfig) -> TaskRunner {
    let dist = modules_dir();
    let registry = registry(config, &shared_aot_cache());
    let report = registry.load_dir(dist).expect("modules dir readable");
    assert!(
        report.failed.is_empty(),
        "built modules must load: {:?}",
        report.failed
    );
    TaskRunner::new(registry, "test-worker")
}

/// A runner with [`test_config`] and two slots.
pub fn runner() -> TaskRunner {
    runner_with(test_config(2))
}
