//! Running a benchmark task in a loop on several threads for a fixed time.

use std::time::{Duration, Instant};

use anyhow::bail;

/// Runs `task` in a loop on `threads` threads for `duration` (thread `i` passes `i`, e.g. its
/// shard) and returns every sample the calls returned, with the time it took.
pub fn on_threads<T: Send>(
    threads: usize,
    duration: Duration,
    task: &(dyn Fn(usize) -> anyhow::Result<T> + Sync),
) -> anyhow::Result<(Vec<T>, Duration)> {
    let started = Instant::now();
    let per_thread = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                scope.spawn(move || -> anyhow::Result<Vec<T>> {
                    let mut samples = Vec::new();
                    while started.elapsed() < duration {
                        samples.push(task(index)?);
                    }
                    Ok(samples)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let elapsed = started.elapsed();
    let mut samples = Vec::new();
    for result in per_thread {
        match result {
            Ok(Ok(s)) => samples.extend(s),
            Ok(Err(error)) => return Err(error),
            Err(_) => bail!("benchmark thread panicked"),
        }
    }
    Ok((samples, elapsed))
}
