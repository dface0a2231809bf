//! A worker whose `/metrics` nobody scrapes must not keep every histogram sample it recorded:
//! the recorder's upkeep folds them into the buckets on its own.
//!
//! One test in its own binary: the recorder is global to the process, and what is checked is the
//! process's resident memory.

use std::time::Duration;

use warren_schemas::{ModuleRef, Outcome, Task};
use warren_tests::runner;
use warren_worker::metrics;

/// Results recorded: four histogram samples each (queue wait, total, instantiate, run), 8 bytes
/// a sample, so ~16 MiB kept if nothing folds them.
const RESULTS: usize = 500_000;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn histogram_samples_do_not_pile_up_without_a_scrape() {
    let handle = metrics::install_with_upkeep(Duration::from_millis(10)).expect("install");
    let runner = runner();
    let result = runner.run_here(Task::new(ModuleRef::latest("echo"), b"hi".to_vec()), 1);
    assert_eq!(result.outcome, Outcome::Success, "{result:?}");

    // Warm up: the allocator's arenas and the recorder's handles.
    for _ in 0..RESULTS / 10 {
        metrics::record_result(&result);
    }
    let before = resident_kib();
    for _ in 0..RESULTS {
        metrics::record_result(&result);
    }
    let grown_kib = resident_kib().saturating_sub(before);
    assert!(
        grown_kib < 4 * 1024,
        "resident memory grew {grown_kib} KiB over {RESULTS} results without a scrape"
    );

    // Every sample still counts once it is scraped.
    let count = handle
        .render()
        .lines()
        .filter(|line| line.starts_with("warren_instantiate_seconds_count"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(count as usize, RESULTS + RESULTS / 10);
}
