//! No task can observe what an earlier task wrote: a real worker on one lane runs a task that
//! writes a secret into a region of its sandbox, then a task that reads that region in the same
//! pool slot — in a page of the data image, a heap page, a page after `memory.grow`, a table
//! element and a global — with the default reset, with `--keep-resident 0`, and with two
//! modules alternating in one slot. Then the same while the worker is paged out to real swap in
//! the middle of the writing task (swap turned on after the worker started, and before). And the
//! same for component tasks (a data-image page, a heap page, a page after `memory.grow`), whose
//! memories the sandbox cannot see one by one.

use std::path::Path;
use std::time::Duration;

use tokio::sync::Mutex;
use warren_schemas::{ModuleRef, Outcome, Task};
use warren_tests::broker::TestBroker;
use warren_tests::swap::{PageOutLoop, Swapfile};
use warren_tests::worker_process::WorkerProcess;

const SECRET: &[u8] = b"warren-isolation-secret:7f3a9c1e5b2d8f40";

/// Swap is the whole machine's: the tests of this file take turns.
static MACHINE: Mutex<()> = Mutex::const_new(());

/// Where the probe writes, and what a fresh sandbox reads there.
#[derive(Debug, Clone, Copy)]
enum Region {
    Image,
    Heap,
    Grown,
    Table,
    Global,
}

impl Region {
    const MEMORY_AND_TABLE: [Region; 4] =
        [Region::Image, Region::Heap, Region::Grown, Region::Table];
    /// What the component probe (modules/src/bin/probe.rs) reaches.
    const MEMORY: [Region; 3] = [Region::Image, Region::Heap, Region::Grown];

    fn letter(self) -> u8 {
        match self {
            Region::Image => b'i',
            Region::Heap => b'h',
            Region::Grown => b'g',
            Region::Table => b't',
            Region::Global => b'v',
        }
    }

    fn fresh(self) -> Vec<u8> {
        match self {
            Region::Table => b"null".to_vec(),
            Region::Global => vec![0; 4],
            _ => vec![0; 64],
        }
    }
}

/// Two different modules (their data images differ) built from the probe, in a modules
/// directory for the worker.
fn probe_modules() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let wat = std::fs::read_to_string(warren_tests::test_guest("isolation_probe.wat")).unwrap();
    let other = wat.replace(
        "isolation probe: data image page",
        "isolation probe: a second module",
    );
    assert_ne!(wat, other, "the second module must differ from the first");
    std::fs::write(dir.path().join("probe-a.wasm"), wat).unwrap();
    std::fs::write(dir.path().join("probe-b.wasm"), other).unwrap();
    dir
}

/// The component probe (`probe-c`: modules/src/bin/probe.rs built for WASI 0.2), in a modules
/// directory for the worker.
fn component_probe() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        warren_tests::module_path("probe-c"),
        dir.path().join("probe-c.wasm"),
    )
    .unwrap();
    dir
}

/// A worker with one lane over the probe modules, on its own queues.
struct Bench {
    broker: TestBroker,
    worker: WorkerProcess,
}

impl Bench {
    async fn start(modules: &Path, args: &[&str]) -> Bench {
        let broker = TestBroker::new().await;
        let worker = WorkerProcess::start_with_modules(&broker.topology, 1, modules, args);
        Bench { broker, worker }
    }

    async fn run(&self, module: &str, input: Vec<u8>) -> Vec<u8> {
        let task = Task::new(module.parse::<ModuleRef>().unwrap(), input);
        self.broker.publish(&task).await;
        let results = self.broker.collect(1, Duration::from_secs(60)).await;
        let result = results
            .iter()
            .find(|r| r.task_id == task.id)
            .unwrap_or_else(|| panic!("no result for the {module} task"));
        assert_eq!(result.outcome, Outcome::Success, "{result:?}");
        result.stdout.clone()
    }

    /// `writer` writes the secret into `region` (idle for 1.5 s afterwards when `page_out`,
    /// while the worker is paged out over and over), then `reader` reads `region` back in the
    /// same slot. Returns what the reader saw and the most of the worker seen in swap (KiB).
    async fn write_then_read(
        &self,
        writer: &str,
        reader: &str,
        region: Region,
        page_out: bool,
    ) -> (Vec<u8>, u64) {
        let mut letter = region.letter();
        if page_out {
            letter = letter.to_ascii_uppercase();
        }
        let mut input = vec![letter];
        input.extend_from_slice(SECRET);
        let paging = page_out.then(|| PageOutLoop::start(self.worker.pid()));
        let written = self.run(writer, input).await;
        let swapped = paging.map_or(0, PageOutLoop::stop);
        assert!(written.is_empty(), "the writer prints nothing: {written:?}");
        (self.run(reader, vec![region.letter()]).await, swapped)
    }

    async fn assert_isolated(&self, writer: &str, reader: &str, region: Region, page_out: bool) {
        let (seen, swapped) = self.write_then_read(writer, reader, region, page_out).await;
        if page_out {
            assert!(
                swapped > 0,
                "the worker was never in swap: the probe proves nothing"
            );
        }
        assert!(
            !seen.windows(4).any(|w| SECRET.windows(4).any(|s| s == w)),
            "{reader} read what {writer} wrote into {region:?} (paged out: {page_out}): {:?}",
            String::from_utf8_lossy(&seen)
        );
        assert_eq!(
            seen,
            region.fresh(),
            "{reader} did not see a fresh {region:?} after {writer} (paged out: {page_out})"
        );
    }
}

fn scrubbed_pages(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("warren_sandbox_swap_scrubbed_pages_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

fn active_swap_devices() -> usize {
    std::fs::read_to_string("/proc/swaps")
        .map(|swaps| {
            swaps
                .lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_never_sees_what_the_previous_task_wrote() {
    let _machine = MACHINE.lock().await;
    if active_swap_devices() > 0 {
        eprintln!("*** this host has swap on: the no-swap probes run with it on ***");
    }
    let modules = probe_modules();
    let regions = [
        Region::Image,
        Region::Heap,
        Region::Grown,
        Region::Table,
        Region::Global,
    ];

    // Default reset, one slot per lane so the reader must take the writer's slot.
    let bench = Bench::start(modules.path(), &["--warm-modules", "1"]).await;
    if active_swap_devices() == 0 {
        let metrics = bench.worker.metrics();
        assert!(
            metrics.contains("warren_sandbox_reset_info{method=\"pagemap_scan\"} 1"),
            "{metrics}"
        );
    }
    for region in regions {
        bench
            .assert_isolated("probe-a", "probe-a", region, false)
            .await;
        // Two modules alternating in the one slot.
        bench
            .assert_isolated("probe-a", "probe-b", region, false)
            .await;
        bench
            .assert_isolated("probe-b", "probe-a", region, false)
            .await;
    }
    drop(bench.broker); // deletes its queues

    // Default configuration (several warm slots: the same module comes back to its slot).
    let bench = Bench::start(modules.path(), &[]).await;
    for region in regions {
        bench
            .assert_isolated("probe-a", "probe-a", region, false)
            .await;
    }
    drop(bench.broker); // deletes its queues

    // Nothing reset in place.
    let bench = Bench::start(
        modules.path(),
        &["--warm-modules", "1", "--keep-resident", "0"],
    )
    .await;
    for region in regions {
        bench
            .assert_isolated("probe-a", "probe-a", region, false)
            .await;
    }
    drop(bench.broker); // deletes its queues
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_never_sees_what_the_previous_task_wrote_when_the_worker_is_swapped_out() {
    let _machine = MACHINE.lock().await;
    let modules = probe_modules();

    // Swap turned on after the worker started.
    let bench = Bench::start(modules.path(), &["--warm-modules", "1"]).await;
    let Some(swap) = Swapfile::on_or_explain(256) else {
        return;
    };
    for region in Region::MEMORY_AND_TABLE {
        bench
            .assert_isolated("probe-a", "probe-a", region, true)
            .await;
    }
    bench
        .assert_isolated("probe-a", "probe-b", Region::Heap, true)
        .await;
    bench
        .assert_isolated("probe-b", "probe-a", Region::Grown, true)
        .await;
    let metrics = bench.worker.metrics();
    assert!(
        metrics.contains("warren_sandbox_reset_info{method=\"pagemap_scan_and_swap_scrub\"} 1"),
        "the worker did not switch to scrubbing when swap was turned on:\n{metrics}"
    );
    assert!(
        scrubbed_pages(&metrics) > 0,
        "no page was found in swap after a reset: the secret never reached swap\n{metrics}"
    );
    drop(bench.broker); // deletes its queues

    // Swap on before the worker starts; default configuration, then nothing reset in place.
    for args in [
        &[][..],
        &["--warm-modules", "1", "--keep-resident", "0"][..],
    ] {
        let bench = Bench::start(modules.path(), args).await;
        for region in [Region::Image, Region::Heap, Region::Table] {
            bench
                .assert_isolated("probe-a", "probe-a", region, true)
                .await;
        }
        drop(bench.broker); // deletes its queues
    }
    drop(swap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_task_never_sees_what_the_previous_task_wrote() {
    let _machine = MACHINE.lock().await;
    let modules = component_probe();
    for args in [
        &["--warm-modules", "1"][..],
        &[][..],
        &["--warm-modules", "1", "--keep-resident", "0"][..],
    ] {
        let bench = Bench::start(modules.path(), args).await;
        for region in Region::MEMORY {
            bench
                .assert_isolated("probe-c", "probe-c", region, false)
                .await;
        }
        drop(bench.broker); // deletes its queues
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_task_never_sees_what_the_previous_task_wrote_when_the_worker_is_swapped_out() {
    let _machine = MACHINE.lock().await;
    let modules = component_probe();
    let bench = Bench::start(modules.path(), &["--warm-modules", "1"]).await;
    let Some(swap) = Swapfile::on_or_explain(256) else {
        return;
    };
    for region in Region::MEMORY {
        bench
            .assert_isolated("probe-c", "probe-c", region, true)
            .await;
    }
    let metrics = bench.worker.metrics();
    assert!(
        scrubbed_pages(&metrics) > 0,
        "no page was found in swap after a reset: the secret never reached swap\n{metrics}"
    );
    drop(bench.broker); // deletes its queues
    drop(swap);
}
