//! The module registry: AOT cache, digest pinning, broken files, hot reload.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_schemas::{ModuleRef, Outcome, Task};
use warren_tests::{module_path, registry, test_config, test_guest};
use warren_worker::registry::{GuestKind, ResolveError};
use warren_worker::watch::watch_modules;
use warren_worker::{ModuleRegistry, TaskRunner};

fn copy_module(name: &str, dir: &Path, as_name: &str) {
    fs::copy(module_path(name), dir.join(format!("{as_name}.wasm"))).unwrap();
}

/// Waits (bounded) until `check` holds, re-checking when the watcher may have acted.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn warm_cache_restart_compiles_nothing() {
    let modules = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    // Core modules and components side by side, in one cache.
    for name in ["echo", "wc", "lookup", "echo-c", "lookup-c"] {
        copy_module(name, modules.path(), name);
    }
    let cold = registry(test_config(1), cache.path());
    let report = cold.load_dir(modules.path()).unwrap();
    assert_eq!((report.loaded.len(), report.from_cache), (5, 0));

    // A new process (new engine, same configuration) finds every module in the cache.
    let warm = registry(test_config(1), cache.path());
    let report = warm.load_dir(modules.path()).unwrap();
    assert_eq!((report.loaded.len(), report.from_cache), (5, 5));
    let files: Vec<String> = fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let count = |suffix: &str| files.iter().filter(|f| f.ends_with(suffix)).count();
    assert_eq!(
        (files.len(), count(".cwasm"), count(".cwasm.sha256")),
        (10, 5, 5),
        "one cache entry and its integrity record per module: {files:?}"
    );
    let kind = |name: &str| warm.resolve(&ModuleRef::latest(name)).unwrap().kind();
    assert_eq!(
        (kind("echo"), kind("echo-c")),
        (GuestKind::Module, GuestKind::Component)
    );
    let runner = TaskRunner::new(warm, "cache-test");
    let result = runner.run_here(Task::new(ModuleRef::latest("lookup-c"), b"7\n".to_vec()), 1);
    assert_eq!(result.outcome, Outcome::Success, "a cached component runs");
}

#[test]
fn corrupt_cache_entries_are_recompiled() {
    let modules = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    copy_module("echo", modules.path(), "echo");
    registry(test_config(1), cache.path())
        .load_dir(modules.path())
        .unwrap();
    for entry in fs::read_dir(cache.path()).unwrap() {
        fs::write(entry.unwrap().path(), b"not a compiled module").unwrap();
    }
    let again = registry(test_config(1), cache.path());
    let report = again.load_dir(modules.path()).unwrap();
    assert_eq!(
        (report.loaded.len(), report.from_cache, report.failed.len()),
        (1, 0, 0)
    );
}

#[test]
fn broken_files_are_reported_and_skipped() {
    let modules = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    copy_module("echo", modules.path(), "echo");
    fs::write(modules.path().join("empty.wasm"), b"").unwrap();
    fs::write(
        modules.path().join("garbage.wasm"),
        b"\x00asm\x01\x00\x00\x00garbage",
    )
    .unwrap();
    fs::write(modules.path().join("text.wasm"), b"hello, I am not wasm").unwrap();
    fs::copy(
        test_guest("unsupported_import.wat"),
        modules.path().join("importer.wasm"),
    )
    .unwrap();
    fs::copy(
        test_guest("not_a_command.wat"),
        modules.path().join("reactor.wasm"),
    )
    .unwrap();
    fs::write(modules.path().join("ignored.txt"), b"not a module file").unwrap();
    fs::copy(
        test_guest("component_http_import.wat"),
        modules.path().join("http-client.wasm"),
    )
    .unwrap();
    fs::copy(
        test_guest("component_not_a_command.wat"),
        modules.path().join("library.wasm"),
    )
    .unwrap();
    // A component header and nothing valid after it.
    fs::write(
        modules.path().join("cut.wasm"),
        b"\x00asm\x0d\x00\x01\x00garbage",
    )
    .unwrap();

    let registry = registry(test_config(1), cache.path());
    let report = registry.load_dir(modules.path()).unwrap();
    assert_eq!(
        report.loaded.len(),
        1,
        "only echo loads: {:?}",
        report.loaded
    );
    let reasons: Vec<String> = report.failed.iter().map(|e| e.to_string()).collect();
    assert_eq!(reasons.len(), 8, "{reasons:#?}");
    let importer = reasons
        .iter()
        .find(|r| r.contains("importer.wasm"))
        .unwrap();
    assert!(
        importer.contains("env::launch_missiles"),
        "the error names the import: {importer}"
    );
    let reactor = reasons.iter().find(|r| r.contains("reactor.wasm")).unwrap();
    assert!(reactor.contains("_start"), "{reactor}");
    let http = reasons
        .iter()
        .find(|r| r.contains("http-client.wasm"))
        .unwrap();
    assert!(
        http.contains("component") && http.contains("wasi:http/outgoing-handler@0.2.0"),
        "the error names the component's import: {http}"
    );
    let library = reasons.iter().find(|r| r.contains("library.wasm")).unwrap();
    assert!(library.contains("wasi:cli/run"), "{library}");
    assert!(registry.resolve(&ModuleRef::latest("echo")).is_ok());
}

#[test]
fn digest_pinning_finds_exact_versions() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let registry = registry(test_config(1), cache.path());
    copy_module("echo", dir.path(), "tool");
    registry.load_dir(dir.path()).unwrap();
    let v1 = registry.resolve(&ModuleRef::latest("tool")).unwrap();
    copy_module("upper", dir.path(), "tool");
    touch_later(&dir.path().join("tool.wasm"));
    registry.load_dir(dir.path()).unwrap();
    let v2 = registry.resolve(&ModuleRef::latest("tool")).unwrap();
    assert_ne!(v1.digest, v2.digest, "the newest version is the default");

    let pinned: ModuleRef = format!("tool@{}", &v1.digest[..8]).parse().unwrap();
    assert_eq!(
        registry.resolve(&pinned).unwrap().digest,
        v1.digest,
        "old version still pinnable"
    );
    let unknown: ModuleRef = "tool@0000ffff".parse().unwrap();
    assert!(matches!(
        registry.resolve(&unknown),
        Err(ResolveError::NotFound(_))
    ));
}

/// Gives `path` an mtime clearly different from before, even on coarse-timestamp filesystems.
fn touch_later(path: &Path) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(2))
        .unwrap();
}

/// A watched modules directory, its registry and a runner over it.
struct Watched {
    dir: tempfile::TempDir,
    _cache: tempfile::TempDir,
    registry: Arc<ModuleRegistry>,
    _watcher: warren_worker::watch::ModuleWatcher,
    runner: TaskRunner,
}

impl Watched {
    /// A registry watching a new directory that holds `module` as `name`.
    fn start(module: &str, name: &str) -> Watched {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let registry: Arc<ModuleRegistry> = registry(test_config(2), cache.path());
        copy_module(module, dir.path(), name);
        registry.load_dir(dir.path()).unwrap();
        let watcher = watch_modules(registry.clone(), dir.path()).unwrap();
        let runner = TaskRunner::new(registry.clone(), "reload-test");
        Watched {
            dir,
            _cache: cache,
            registry,
            _watcher: watcher,
            runner,
        }
    }

    /// Runs a task for `module` (`name` or `name@digest`).
    fn run(&self, module: &str, input: &[u8]) -> warren_schemas::TaskResult {
        let task = Task::new(module.parse().unwrap(), input.to_vec());
        self.runner.run_here(task, 1)
    }

    fn latest(&self, name: &str) -> Option<Arc<warren_worker::LoadedModule>> {
        self.registry.resolve(&ModuleRef::latest(name)).ok()
    }

    /// Adds `module` as `name` and waits until it is loaded.
    fn add(&self, module: &str, name: &str) {
        copy_module(module, self.dir.path(), name);
        eventually(&format!("{name} to load"), || self.latest(name).is_some());
    }

    /// Replaces `name`'s file atomically with `module` and waits until `loaded` holds for the
    /// newest version.
    fn replace(
        &self,
        name: &str,
        module: &str,
        loaded: impl Fn(&warren_worker::LoadedModule) -> bool,
    ) {
        let staged = self.dir.path().join(format!(".{name}.staging"));
        fs::copy(module_path(module), &staged).unwrap();
        fs::rename(&staged, self.dir.path().join(format!("{name}.wasm"))).unwrap();
        eventually(&format!("{name} to be replaced by {module}"), || {
            self.latest(name).is_some_and(|m| loaded(&m))
        });
    }

    /// Overwrites `name`'s file with `junk`: reported, and its previous version keeps serving
    /// (`input` still gives `output`).
    fn break_file(&self, name: &str, junk: &[u8], input: &[u8], output: &[u8]) {
        fs::write(self.dir.path().join(format!("{name}.wasm")), junk).unwrap();
        // A marker added after the broken write: once it is loaded, so was the broken file.
        copy_module("echo", self.dir.path(), "marker");
        eventually("marker to load after the broken write", || {
            self.latest("marker").is_some()
        });
        assert_eq!(
            self.run(name, input).stdout,
            output,
            "{name} after a broken write"
        );
    }

    /// Removes `name`'s file: it is unloaded, and its tasks find no module.
    fn remove(&self, name: &str) {
        fs::remove_file(self.dir.path().join(format!("{name}.wasm"))).unwrap();
        eventually(&format!("{name} to unload"), || self.latest(name).is_none());
        assert_eq!(
            self.run(name, b"").outcome,
            Outcome::ModuleNotFound {
                module: name.into()
            }
        );
    }
}

#[test]
fn hot_reload_adds_replaces_and_removes_modules() {
    let watched = Watched::start("echo", "job");
    assert_eq!(watched.run("job", b"abc").stdout, b"abc");

    // A task holding the old version keeps it while the file is replaced.
    let old = watched.latest("job").unwrap();

    // New module appears without restart.
    watched.add("wc", "counter");
    assert_eq!(watched.run("counter", b"a b\n").stdout, b"1 2 4\n");

    // Changed file: new version serves new tasks.
    watched.replace("job", "upper", |m| m.digest != old.digest);
    assert_eq!(watched.run("job", b"abc").stdout, b"ABC");
    let on_old = watched.registry.sandbox().run(
        0,
        &old.warm,
        warren_worker::sandbox::GuestCall {
            program: "job".into(),
            input: b"abc".to_vec(),
            ..Default::default()
        },
    );
    assert_eq!(
        on_old.stdout, b"abc",
        "the old version still runs for whoever holds it"
    );

    // A broken replacement is reported; the previous good version keeps serving.
    watched.break_file("job", b"truncated junk", b"abc", b"ABC");
    watched.remove("counter");
}

#[test]
fn components_hot_reload_and_pin_like_modules() {
    let watched = Watched::start("echo-c", "job");
    assert_eq!(watched.run("job", b"abc").stdout, b"abc");
    let first = watched.latest("job").unwrap();
    assert_eq!(first.kind(), GuestKind::Component);

    watched.add("wc-c", "counter");
    assert_eq!(watched.run("counter", b"a b\n").stdout, b"1 2 4\n");

    // Replaced by another component; the first stays pinnable.
    watched.replace("job", "upper-c", |m| m.digest != first.digest);
    assert_eq!(watched.run("job", b"abc").stdout, b"ABC");
    assert_eq!(
        watched
            .run(&format!("job@{}", &first.digest[..10]), b"abc")
            .stdout,
        b"abc",
        "the first version still runs when pinned"
    );

    // A name may change kind: the core module replaces the component.
    watched.replace("job", "wc", |m| m.kind() == GuestKind::Module);
    assert_eq!(watched.run("job", b"x y").stdout, b"0 2 3\n");

    // A component header and nothing valid after it.
    watched.break_file(
        "counter",
        b"\x00asm\x0d\x00\x01\x00cut short",
        b"a b\n",
        b"1 2 4\n",
    );
    watched.remove("counter");
}

#[test]
fn a_component_beyond_the_pool_limits_fails_to_load_naming_the_flag() {
    let modules = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    copy_module("echo-c", modules.path(), "echo-c");
    copy_module("echo", modules.path(), "echo");
    // Rust's wasm32-wasip2 components have two tables (the program's and a shim's).
    let config = warren_worker::SandboxConfig {
        max_tables_per_component: 1,
        ..test_config(1)
    };
    let registry = registry(config, cache.path());
    let report = registry.load_dir(modules.path()).unwrap();
    assert_eq!(report.loaded.len(), 1, "the module still loads");
    let reasons: Vec<String> = report.failed.iter().map(|e| e.to_string()).collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("echo-c.wasm") && reasons[0].contains("--max-tables-per-component"),
        "{}",
        reasons[0]
    );
}
