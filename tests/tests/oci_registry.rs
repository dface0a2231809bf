//! Modules from an OCI registry, against a real one (Debian's `docker-registry`, the CNCF
//! distribution registry 2.8): `warren module push` / `ls`, and workers with `--registry` and
//! an empty modules directory running what was pushed — by name, by digest, after the tag
//! moved — pulling once however many tasks miss a module, and ending a task as
//! `module_not_found` with the reason when the repository is missing, the blob was tampered
//! with, the module is too large or the registry is down. Each test has its own namespace on
//! the shared registry (`scripts/ensure-registry`) or a registry of its own.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use warren_schemas::{ModuleRef, Outcome, Task, TaskResult};
use warren_tests::broker::TestBroker;
use warren_tests::oci_registry::{
    manifest_json, shared_registry, unique_namespace, PrivateRegistry,
};
use warren_tests::worker_process::WorkerProcess;
use warren_tests::{binary, module_path};

/// Runs `warren` with `args`; panics with its output when it fails.
fn warren(args: &[&str]) -> Output {
    let output = Command::new(binary("warren"))
        .args(args)
        .output()
        .expect("warren runs");
    assert!(
        output.status.success(),
        "warren {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `warren module push` of the built module `file` to `reference` on `registry` (plain HTTP);
/// returns the module digest it printed, checked against the file's sha256.
fn push(file: &Path, registry: &str, reference: &str) -> String {
    let output = warren(&[
        "module",
        "push",
        file.to_str().unwrap(),
        reference,
        "--insecure-registry",
        registry,
    ]);
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let expected = hex::encode(Sha256::digest(std::fs::read(file).unwrap()));
    assert_eq!(
        printed,
        format!("sha256:{expected}"),
        "push prints the module digest"
    );
    expected
}

/// A worker on `broker`'s queues with an empty modules directory (or `modules`), its own AOT
/// cache in `cache`, pulling from `namespace` on `registry`.
fn worker(
    broker: &TestBroker,
    modules: &Path,
    cache: &Path,
    registry: &str,
    namespace: &str,
    extra: &[&str],
) -> WorkerProcess {
    let mut args = vec!["--registry", namespace, "--insecure-registry", registry];
    args.extend_from_slice(extra);
    WorkerProcess::start_with_cache(&broker.topology, 2, modules, cache, &args)
}

fn task(module: &str, input: &[u8]) -> Task {
    Task::new(module.parse::<ModuleRef>().unwrap(), input.to_vec())
}

/// Publishes `task` and returns its result.
async fn run(broker: &TestBroker, task: Task) -> TaskResult {
    broker.publish(&task).await;
    let mut results = broker.collect(1, Duration::from_secs(60)).await;
    assert_eq!(results.len(), 1, "one result for {}", task.module);
    let result = results.remove(0);
    assert_eq!(result.task_id, task.id);
    result
}

/// Asserts `result` ran module `digest` successfully with `stdout`.
fn assert_ran(result: &TaskResult, digest: &str, stdout: &[u8]) {
    assert_eq!(
        result.outcome,
        Outcome::Success,
        "stderr: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(
        result.module.as_ref().map(|m| m.digest.as_str()),
        Some(digest)
    );
    assert_eq!(result.stdout, stdout);
}

/// Asserts `result` is module-not-found with `reason` in its stderr, answered once.
fn assert_not_found(result: &TaskResult, reason: &str) {
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        matches!(result.outcome, Outcome::ModuleNotFound { .. }),
        "{:?}, stderr: {stderr}",
        result.outcome
    );
    assert!(stderr.contains(reason), "expected {reason:?} in: {stderr}");
    assert_eq!(result.attempt, 1, "not redelivered");
}

/// The value of `series` (name and labels) in a worker's `/metrics`, 0 when absent.
fn counter(worker: &WorkerProcess, series: &str) -> f64 {
    let metrics = worker.metrics();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

fn pulls(worker: &WorkerProcess, outcome: &str) -> f64 {
    counter(
        worker,
        &format!("warren_module_pulls_total{{outcome=\"{outcome}\"}}"),
    )
}

/// A directory for a test's own modules or cache, private to this user.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_module_is_listed_and_runs_by_name_and_by_digest_from_an_empty_modules_dir() {
    let registry = shared_registry();
    let namespace = unique_namespace(&registry);
    let reference = format!("{namespace}/upper");
    let digest = push(&module_path("upper"), &registry, &reference);

    // The standard Wasm OCI artifact layout, readable by any tool.
    let repository = reference.split_once('/').unwrap().1;
    let manifest = manifest_json(&registry, repository, "latest");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["layers"][0]["digest"], format!("sha256:{digest}"));

    let listed = warren(&["module", "ls", &reference, "--insecure-registry", &registry]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with("latest ") && line.contains(&digest)),
        "{listed}"
    );

    let broker = TestBroker::new().await;
    let (modules, cache) = (scratch(), scratch());
    let worker = worker(
        &broker,
        modules.path(),
        cache.path(),
        &registry,
        &namespace,
        &[],
    );
    assert_ran(
        &run(&broker, task("upper", b"by name")).await,
        &digest,
        b"BY NAME",
    );
    let pinned = format!("upper@{}", &digest[..12]);
    assert_ran(
        &run(&broker, task(&pinned, b"pinned")).await,
        &digest,
        b"PINNED",
    );
    let full = format!("upper@{digest}");
    assert_ran(&run(&broker, task(&full, b"full")).await, &digest, b"FULL");
    assert_eq!(pulls(&worker, "pulled"), 1.0, "one pull for three tasks");
    assert!(
        cache
            .path()
            .join("pulled")
            .join(&digest)
            .join("upper.wasm")
            .is_file(),
        "the pulled module is kept beside the AOT cache"
    );
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_picked_up_after_the_tag_ttl_and_not_before() {
    let registry = shared_registry();
    let namespace = unique_namespace(&registry);
    let reference = format!("{namespace}/tool");
    let echo = push(&module_path("echo"), &registry, &reference);

    let (fast_broker, slow_broker) = (TestBroker::new().await, TestBroker::new().await);
    let (modules, fast_cache, slow_cache) = (scratch(), scratch(), scratch());
    let fast = worker(
        &fast_broker,
        modules.path(),
        fast_cache.path(),
        &registry,
        &namespace,
        &["--registry-tag-ttl", "200ms"],
    );
    let slow = worker(
        &slow_broker,
        modules.path(),
        slow_cache.path(),
        &registry,
        &namespace,
        &["--registry-tag-ttl", "1h"],
    );
    assert_ran(&run(&fast_broker, task("tool", b"a")).await, &echo, b"a");
    assert_ran(&run(&slow_broker, task("tool", b"a")).await, &echo, b"a");

    let upper = push(&module_path("upper"), &registry, &reference);
    // Obeyed: within the TTL's order of magnitude the fast worker serves the new version.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = run(&fast_broker, task("tool", b"b")).await;
        if result.module.as_ref().is_some_and(|m| m.digest == upper) {
            assert_ran(&result, &upper, b"B");
            break;
        }
        assert_ran(&result, &echo, b"b");
        assert!(Instant::now() < deadline, "the moved tag was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Violated: within its hour the slow worker keeps the version it resolved.
    assert_ran(&run(&slow_broker, task("tool", b"c")).await, &echo, b"c");
    assert_eq!(pulls(&fast, "pulled"), 2.0);
    assert_eq!(pulls(&slow, "pulled"), 1.0);
    drop(fast_broker); // deletes its queues
    drop(slow_broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_a_cold_cache_pull_once_each_for_200_tasks() {
    let registry = shared_registry();
    let namespace = unique_namespace(&registry);
    let digest = push(
        &module_path("upper"),
        &registry,
        &format!("{namespace}/upper"),
    );

    let broker = TestBroker::new().await;
    let (modules, cache_a, cache_b) = (scratch(), scratch(), scratch());
    // A small prefetch, so both workers get tasks while the first pull is under way.
    let prefetch = ["--prefetch", "8"];
    let a = worker(
        &broker,
        modules.path(),
        cache_a.path(),
        &registry,
        &namespace,
        &prefetch,
    );
    let b = worker(
        &broker,
        modules.path(),
        cache_b.path(),
        &registry,
        &namespace,
        &prefetch,
    );
    let tasks: Vec<Task> = (0..200)
        .map(|i| {
            let module = if i % 2 == 0 {
                "upper".to_owned()
            } else {
                format!("upper@{digest}")
            };
            task(&module, format!("t{i}").as_bytes())
        })
        .collect();
    broker.publish_many(&tasks).await;
    let results = broker.collect(tasks.len(), Duration::from_secs(120)).await;
    let by_id: HashMap<_, _> = results.iter().map(|r| (r.task_id, r)).collect();
    assert_eq!(by_id.len(), 200);
    for (i, t) in tasks.iter().enumerate() {
        assert_ran(by_id[&t.id], &digest, format!("T{i}").as_bytes());
    }
    let workers: HashSet<&str> = results.iter().map(|r| r.worker_id.as_str()).collect();
    assert_eq!(workers.len(), 2, "both workers ran tasks");
    for worker in [&a, &b] {
        assert_eq!(pulls(worker, "pulled"), 1.0, "one pull per worker");
    }
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_repository_is_module_not_found_with_the_reason_and_the_directory_still_serves() {
    let registry = shared_registry();
    let namespace = unique_namespace(&registry);
    let broker = TestBroker::new().await;
    let (modules, cache) = (scratch(), scratch());
    // A modules directory with `upper`, beside the registry.
    std::fs::copy(module_path("upper"), modules.path().join("upper.wasm")).unwrap();
    let worker = worker(
        &broker,
        modules.path(),
        cache.path(),
        &registry,
        &namespace,
        &[],
    );
    let result = run(&broker, task("not-pushed", b"")).await;
    assert_not_found(&result, "not found in the registry");
    let local = hex::encode(Sha256::digest(std::fs::read(module_path("upper")).unwrap()));
    assert_ran(
        &run(&broker, task("upper", b"local")).await,
        &local,
        b"LOCAL",
    );
    assert_eq!(pulls(&worker, "not_found"), 1.0);
    assert_eq!(
        broker.depth(&broker.topology.dead).await,
        0,
        "nothing dead-lettered"
    );
    assert_eq!(
        broker.depth(&broker.topology.tasks).await,
        0,
        "nothing requeued"
    );
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_over_the_size_cap_is_refused_and_one_under_it_runs() {
    let registry = shared_registry();
    let namespace = unique_namespace(&registry);
    let digest = push(
        &module_path("upper"),
        &registry,
        &format!("{namespace}/upper"),
    );
    let size = std::fs::metadata(module_path("upper")).unwrap().len();
    let broker = TestBroker::new().await;
    let (modules, cache) = (scratch(), scratch());
    let small_cap = (size - 1).to_string();
    let mut capped = worker(
        &broker,
        modules.path(),
        cache.path(),
        &registry,
        &namespace,
        &["--registry-max-module-size", &small_cap],
    );
    assert_not_found(
        &run(&broker, task("upper", b"")).await,
        "larger than the limit",
    );
    let pinned = format!("upper@{digest}");
    assert_not_found(
        &run(&broker, task(&pinned, b"")).await,
        "larger than the limit",
    );
    assert_eq!(pulls(&capped, "too_large"), 2.0);
    // Stopped, not killed: its acks go out before the next worker takes the queue.
    assert!(capped.stop().unwrap().success());

    let exact_cap = size.to_string();
    let _fits = worker(
        &broker,
        modules.path(),
        cache.path(),
        &registry,
        &namespace,
        &["--registry-max-module-size", &exact_cap],
    );
    assert_ran(
        &run(&broker, task(&pinned, b"fits")).await,
        &digest,
        b"FITS",
    );
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_refused_as_a_digest_mismatch() {
    let registry = PrivateRegistry::start();
    let namespace = format!("{}/warren", registry.addr);
    let digest = push(
        &module_path("upper"),
        &registry.addr,
        &format!("{namespace}/upper"),
    );
    let blob = registry.blob_file(&digest);
    let mut bytes = std::fs::read(&blob).expect("the blob is stored where distribution keeps it");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let broker = TestBroker::new().await;
    let (modules, cache) = (scratch(), scratch());
    let worker = worker(
        &broker,
        modules.path(),
        cache.path(),
        &registry.addr,
        &namespace,
        &[],
    );
    assert_not_found(&run(&broker, task("upper", b"")).await, "digest mismatch");
    assert_eq!(pulls(&worker, "digest_mismatch"), 1.0);
    assert!(
        !cache
            .path()
            .join("pulled")
            .join(&digest)
            .join("upper.wasm")
            .exists(),
        "nothing tampered is kept"
    );
    drop(broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_fails_new_modules_and_pulled_ones_keep_serving() {
    let mut registry = PrivateRegistry::start();
    let namespace = format!("{}/warren", registry.addr);
    let digest = push(
        &module_path("upper"),
        &registry.addr,
        &format!("{namespace}/upper"),
    );
    let broker = TestBroker::new().await;
    let (modules, cache) = (scratch(), scratch());
    // A zero TTL: every task by name asks the registry again.
    let worker = worker(
        &broker,
        modules.path(),
        cache.path(),
        &registry.addr,
        &namespace,
        &["--registry-tag-ttl", "0s"],
    );
    assert_ran(&run(&broker, task("upper", b"up")).await, &digest, b"UP");

    registry.stop();
    assert_ran(
        &run(&broker, task("upper", b"down")).await,
        &digest,
        b"DOWN",
    );
    assert_not_found(
        &run(&broker, task("echo", b"")).await,
        "registry request failed",
    );
    assert!(
        pulls(&worker, "registry_error") >= 2.0,
        "the failed checks are counted"
    );
    assert_eq!(
        broker.depth(&broker.topology.dead).await,
        0,
        "nothing dead-lettered"
    );
    drop(broker); // deletes its queues
}

/// The AOT cache's compiled files: name → inode (a recompile replaces a file by a rename).
fn compiled_files(cache: &Path) -> HashMap<PathBuf, u64> {
    std::fs::read_dir(cache)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .map(|path| {
            let inode = std::fs::metadata(&path).unwrap().ino();
            (path, inode)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_compiles_nothing_and_needs_no_registry_for_a_pulled_module() {
    let mut registry = PrivateRegistry::start();
    let namespace = format!("{}/warren", registry.addr);
    let digest = push(
        &module_path("upper"),
        &registry.addr,
        &format!("{namespace}/upper"),
    );
    let broker = TestBroker::new().await;
    let (modules, cache) = (scratch(), scratch());
    let pinned = format!("upper@{}", &digest[..12]);
    let mut first = worker(
        &broker,
        modules.path(),
        cache.path(),
        &registry.addr,
        &namespace,
        &[],
    );
    assert_ran(
        &run(&broker, task(&pinned, b"first")).await,
        &digest,
        b"FIRST",
    );
    assert_eq!(pulls(&first, "pulled"), 1.0);
    assert!(first.stop().unwrap().success());
    let compiled = compiled_files(cache.path());
    assert_eq!(compiled.len(), 1, "one compiled module: {compiled:?}");

    registry.stop();
    let second = worker(
        &broker,
        modules.path(),
        cache.path(),
        &registry.addr,
        &namespace,
        &[],
    );
    assert_ran(
        &run(&broker, task(&pinned, b"again")).await,
        &digest,
        b"AGAIN",
    );
    assert_eq!(pulls(&second, "from_disk"), 1.0);
    assert_eq!(pulls(&second, "pulled"), 0.0);
    assert_eq!(
        compiled_files(cache.path()),
        compiled,
        "the restart loaded the compiled module as it was"
    );
    drop(broker); // deletes its queues
}
