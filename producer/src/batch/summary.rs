//! The numbers printed at the end of a batch: how many tasks ended how, how long they took
//! (p50/p99 of instantiation, worker total and queue wait) and the collection rate.
//!
//! Computed from `results.jsonl` records, so a resumed batch reports on the whole batch, not only
//! on the part the last run collected. Percentiles are exact (sorted samples; a batch's samples
//! fit in memory anyway since its records do).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::sink::Record;

/// Percentiles of one latency, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of `samples` (nearest-rank).
    pub fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[i - 1]
        };
        Latency {
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            max_us: samples[samples.len() - 1],
        }
    }
}

/// A batch in numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Tasks with a result on disk.
    pub results: usize,
    /// Results per outcome label.
    pub outcomes: BTreeMap<String, usize>,
    /// Instantiation time on the worker.
    pub instantiate: Latency,
    /// The worker's whole handling of a task.
    pub total: Latency,
    /// Submitted → started on a worker.
    pub queue_wait: Latency,
}

impl Summary {
    /// The summary of `records`.
    pub fn of(records: &[Record]) -> Self {
        let mut outcomes = BTreeMap::new();
        for record in records {
            *outcomes.entry(record.outcome.clone()).or_insert(0) += 1;
        }
        let pick = |f: fn(&Record) -> f64| Latency::of(records.iter().map(f).collect());
        Summary {
            results: records.len(),
            outcomes,
            instantiate: pick(|r| r.instantiate_us),
            total: pick(|r| r.total_us),
            queue_wait: pick(|r| r.queue_wait_us),
        }
    }

    /// Results that are not successes.
    pub fn failures(&self) -> usize {
        self.results - self.outcomes.get("success").copied().unwrap_or(0)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(label, n)| format!("{label} {n}"))
            .collect();
        writeln!(f, "results     {} ({})", self.results, outcomes.join(", "))?;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, l: &Latency| {
            writeln!(
                f,
                "{name:<11} p50 {}  p99 {}  max {}",
                micros(l.p50_us),
                micros(l.p99_us),
                micros(l.max_us)
            )
        };
        line(f, "instantiate", &self.instantiate)?;
        line(f, "total", &self.total)?;
        line(f, "queue wait", &self.queue_wait)
    }
}

/// A duration given in microseconds, in the unit that reads best.
pub fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!((l.p50_us, l.p99_us, l.max_us), (50.0, 99.0, 100.0));
        assert_eq!(Latency::of(vec![7.0]).p99_us, 7.0);
        assert_eq!(Latency::of(Vec::new()), Latency::default());
    }
}
