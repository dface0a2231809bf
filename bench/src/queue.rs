//! `warren-bench queue`: tasks per second and end-to-end latency through the real broker, side
//! by side with a **null worker** measured in the same run. The null worker is
//! `warren-null-worker`: the daemon's AMQP path (consume with the same prefetch, decode, publish
//! a same-sized result with confirms, ack) with a null executor instead of wasm, i.e. the
//! ceiling the broker allows on this machine. Ratios to it are what compare across machines.
//!
//! Each case gets its own queues and its own worker processes; tasks go out through the
//! producer's [`Publisher`] and results come back through its [`ResultStream`]. Throughput: the
//! task queue is filled first (publisher confirms pipelined), then the workers start and drain
//! it; tasks/s is counted between the first and the last result so start-up does not count.
//! Latency: tasks are then published at a fraction (default ½) of that peak and timed from their
//! submitted-at to their result arriving here. Instantiate percentiles come from every result's
//! own timings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use warren::{Publisher, ResultStream, Topology};
use warren_schemas::args::BrokerArgs;
use warren_schemas::task::unix_now_ns;
use warren_schemas::{BatchRef, ModuleRef, Task};
use warren_tests::worker_process::WorkerProcess;
use warren_worker::ModuleSource;

use crate::broker::{local_broker_cpu, BenchQueues};
use crate::stats::percentile;
use crate::workers::{self, WorkerBinary, WorkerLaunch};

/// What runs the tasks in one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// One `warren-null-worker`: the broker-bound ceiling.
    Null,
    /// One worker, trivial module (`echo`).
    Trivial,
    /// Two worker processes, trivial module.
    TrivialX2,
    /// One worker, the 24 MiB data module (`lookup`).
    Data,
    /// One worker, the Python runner (`py`) on a hello-world program.
    Python,
    /// Two worker processes of one lane each, the Python runner: a process per core instead of
    /// a lane per core (see BENCHMARKS.md, "Python and JavaScript").
    PythonX2,
    /// One worker, the JavaScript runner (`js`) on a hello-world program.
    Javascript,
    /// One worker, the preview1 CPython command (`warren-bench guests` fetches it) on the same
    /// program as `python`: what the runner replaces.
    CpythonP1,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Null => "null",
            Case::Trivial => "trivial",
            Case::TrivialX2 => "trivial-x2",
            Case::Data => "data-24MiB",
            Case::Python => "python",
            Case::PythonX2 => "python-x2",
            Case::Javascript => "javascript",
            Case::CpythonP1 => "cpython-p1",
        }
    }

    fn module(self) -> &'static str {
        match self {
            Case::Data => "lookup",
            Case::Python | Case::PythonX2 => "py",
            Case::Javascript => "js",
            Case::CpythonP1 => "cpython-p1",
            _ => "echo",
        }
    }

    fn processes(self) -> usize {
        match self {
            Case::TrivialX2 | Case::PythonX2 => 2,
            _ => 1,
        }
    }

    /// The echo cases' inputs are the same size, so their results are too; the language cases
    /// run a hello-world program.
    fn input(self) -> &'static [u8] {
        match self {
            Case::Data => b"4242\n",
            Case::Python | Case::PythonX2 | Case::CpythonP1 => b"print('hello, world')\n",
            Case::Javascript => b"console.log('hello, world');\n",
            _ => b"warren\n",
        }
    }
}

/// Arguments of `warren-bench queue`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueBenchArgs {
    /// Where the broker is.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Tasks per case in the throughput phase.
    #[arg(long, default_value_t = 50_000)]
    pub tasks: usize,

    /// Tasks per case in the latency phase. Default: a fifth of `--tasks`.
    #[arg(long)]
    pub latency_tasks: Option<usize>,

    /// Publishing rate of the latency phase, as a fraction of the case's peak tasks/s.
    #[arg(long, default_value_t = 0.5)]
    pub latency_load: f64,

    /// Cases, in order. With `null` among them, every case reports its ratio to it.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Case::Null, Case::Trivial, Case::TrivialX2, Case::Data]
    )]
    pub cases: Vec<Case>,

    /// Rounds: every case runs this many times, interleaved (null, trivial, …, null, trivial,
    /// …), and each case reports the round with its median tasks/s, and the median of its
    /// per-round ratios to `null` (each ratio taken within one round). On a shared machine one
    /// round can land on a noisy moment; interleaving spreads the noise over every case.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,

    /// Extra arguments for every worker process, e.g. `--worker-arg=--prefetch=8`.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,

    /// Where the workers load modules from.
    #[command(flatten)]
    pub source: ModuleSource,

    /// Print one JSON object per case (one per line) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct QueueBenchRow {
    /// Case name.
    pub case: &'static str,
    /// Worker processes.
    pub processes: usize,
    /// Tasks in the throughput phase.
    pub tasks: usize,
    /// Results per second while the queue drained.
    pub tasks_per_s: f64,
    /// Tasks/s over the null worker's in the same round, median over the rounds (when the null
    /// case ran).
    pub ratio_to_null: Option<f64>,
    /// Lowest of the per-round ratios.
    pub ratio_to_null_min: Option<f64>,
    /// Highest of the per-round ratios.
    pub ratio_to_null_max: Option<f64>,
    /// Publishing rate of the latency phase.
    pub latency_rate_per_s: f64,
    /// Median submitted-at → result received.
    pub e2e_p50_ms: f64,
    /// 99th percentile submitted-at → result received.
    pub e2e_p99_ms: f64,
    /// Median instantiate time inside the worker (none for the null worker).
    pub instantiate_p50_us: Option<f64>,
    /// 99th percentile instantiate time inside the worker.
    pub instantiate_p99_us: Option<f64>,
    /// Worker CPU time (user + system, all processes) per task in the throughput phase.
    pub worker_cpu_us_per_task: f64,
    /// Results received more than once (redeliveries); 0 without faults.
    pub duplicates: usize,
    /// Rounds this case ran; the row is the one with the median tasks/s.
    pub rounds: usize,
    /// Lowest tasks/s over the rounds.
    pub tasks_per_s_min: f64,
    /// Highest tasks/s over the rounds.
    pub tasks_per_s_max: f64,
}

/// Runs the cases and prints the table (or JSON lines); returns the rows.
pub fn run_queue_bench(args: &QueueBenchArgs) -> anyhow::Result<Vec<QueueBenchRow>> {
    if args.tasks < 2 {
        bail!("--tasks must be at least 2");
    }
    if !(args.latency_load > 0.0 && args.latency_load <= 1.0) {
        bail!("--latency-load must be in (0, 1]");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    runtime.block_on(async {
        let mut rounds: Vec<Vec<QueueBenchRow>> = vec![Vec::new(); args.cases.len()];
        for round in 1..=args.rounds {
            for (slot, &case) in args.cases.iter().enumerate() {
                if args.rounds > 1 {
                    eprintln!("[{}] round {round} of {}", case.name(), args.rounds);
                }
                let row = run_case(args, case)
                    .await
                    .with_context(|| format!("case {}", case.name()))?;
                rounds[slot].push(row);
            }
        }
        let null_slot = args.cases.iter().position(|&case| case == Case::Null);
        let null_rates: Option<Vec<f64>> =
            null_slot.map(|slot| rounds[slot].iter().map(|row| row.tasks_per_s).collect());
        let mut rows = Vec::new();
        for case_rounds in rounds {
            let rates: Vec<f64> = case_rounds.iter().map(|row| row.tasks_per_s).collect();
            let Some(mut row) = median_round(case_rounds) else {
                continue;
            };
            if let Some(ratios) = null_rates
                .as_deref()
                .map(|null| paired_ratios(&rates, null))
            {
                row.ratio_to_null = ratios.median;
                row.ratio_to_null_min = ratios.min;
                row.ratio_to_null_max = ratios.max;
            }
            if args.json {
                println!("{}", serde_json::to_string(&row)?);
            }
            rows.push(row);
        }
        if !args.json {
            print_table(&rows);
        }
        Ok(rows)
    })
}

/// Median, lowest and highest of the per-round ratios.
#[derive(Debug, PartialEq)]
struct Ratios {
    median: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
}

/// Each round's tasks/s (`rates`) over the null worker's in the same round: the two ran seconds
/// apart, so a machine that drifts (a neighbour starts, the broker compacts its log) moves both
/// alike, where the ratio of two medians could pair a fast null round with a slow one.
fn paired_ratios(rates: &[f64], null_rates: &[f64]) -> Ratios {
    let mut ratios: Vec<f64> = rates
        .iter()
        .zip(null_rates)
        .map(|(rate, null)| rate / null)
        .collect();
    ratios.sort_by(f64::total_cmp);
    Ratios {
        median: ratios.get(ratios.len() / 2).copied(),
        min: ratios.first().copied(),
        max: ratios.last().copied(),
    }
}

/// The round with the median tasks/s, carrying the spread of all rounds.
fn median_round(mut rounds: Vec<QueueBenchRow>) -> Option<QueueBenchRow> {
    rounds.sort_by(|a, b| a.tasks_per_s.total_cmp(&b.tasks_per_s));
    let min = rounds.first()?.tasks_per_s;
    let max = rounds.last()?.tasks_per_s;
    let count = rounds.len();
    let mut median = rounds.swap_remove(count / 2);
    median.rounds = count;
    median.tasks_per_s_min = min;
    median.tasks_per_s_max = max;
    Some(median)
}

async fn run_case(args: &QueueBenchArgs, case: Case) -> anyhow::Result<QueueBenchRow> {
    let queues = BenchQueues::declare(&args.broker.amqp_url.join(","), "bench").await?;
    let measured = measure(args, case, &queues).await;
    queues.delete().await;
    measured
}

/// The throughput phase of a case: `args.tasks` tasks queued first, then drained by the case's
/// workers, which are left running (with the results stream) for what comes next.
struct Drained {
    /// Results per second between the first and the last result.
    tasks_per_s: f64,
    /// Every result, in arrival order.
    arrivals: Vec<Arrival>,
    /// Worker CPU (all processes) per task while draining.
    cpu_us_per_task: f64,
    /// CPU of the RabbitMQ nodes on this machine per task while draining (none if remote).
    broker_cpu_us_per_task: Option<f64>,
    /// The case's replies.
    results: Results,
    /// The case's workers, still running.
    workers: WorkerProcesses,
}

async fn drain(args: &QueueBenchArgs, case: Case, queues: &BenchQueues) -> anyhow::Result<Drained> {
    let label = case.name();
    let n = args.tasks;
    let mut publisher = Publisher::new(&queues.producer, OUTSTANDING_CONFIRMS).await?;
    let filling = Instant::now();
    for index in 0..n {
        publisher
            .publish(&bench_task(case, index), Some(&queues.replies))
            .await?;
    }
    publisher.finish().await?;
    eprintln!(
        "[{label}] queued {n} tasks in {:.1?} ({:.0}/s publish with confirms)",
        filling.elapsed(),
        n as f64 / filling.elapsed().as_secs_f64()
    );
    let mut results = Results::consume(queues).await?;
    let mut workers = WorkerProcesses::start(args, case, queues.topology())?;
    workers.wait_ready(Duration::from_secs(120))?;
    let cpu_before = workers.cpu_time();
    let broker_before = local_broker_cpu();
    let arrivals = results.collect(n, Duration::from_secs(60)).await?;
    let cpu_after = workers.cpu_time();
    let broker_cpu_us_per_task = local_broker_cpu()
        .zip(broker_before)
        .map(|(after, before)| after.saturating_sub(before).as_secs_f64() * 1e6 / n as f64);
    let (first, last) = match (arrivals.first(), arrivals.last()) {
        (Some(first), Some(last)) => (first.at, last.at),
        _ => bail!("no results arrived"),
    };
    let tasks_per_s = (n - 1) as f64 / last.duration_since(first).as_secs_f64().max(1e-9);
    let cpu_us_per_task = cpu_after.saturating_sub(cpu_before).as_secs_f64() * 1e6 / n as f64;
    eprintln!("[{label}] drained at {tasks_per_s:.0} tasks/s");
    Ok(Drained {
        tasks_per_s,
        arrivals,
        cpu_us_per_task,
        broker_cpu_us_per_task,
        results,
        workers,
    })
}

/// What [`drain_rate`] measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrainRate {
    /// Results per second.
    pub tasks_per_s: f64,
    /// Worker CPU per task.
    pub worker_cpu_us_per_task: f64,
    /// Local broker CPU per task (none if the broker is elsewhere).
    pub broker_cpu_us_per_task: Option<f64>,
}

/// Tasks/s of `case`'s workers draining a full queue of `args.tasks` tasks, on queues of its
/// own: the throughput phase alone, for benchmarks that compare against it.
pub(crate) async fn drain_rate(args: &QueueBenchArgs, case: Case) -> anyhow::Result<DrainRate> {
    let queues = BenchQueues::declare(&args.broker.amqp_url.join(","), "bench").await?;
    let drained = drain(args, case, &queues).await;
    let rate = match drained {
        Ok(mut drained) => drained.workers.stop().map(|()| DrainRate {
            tasks_per_s: drained.tasks_per_s,
            worker_cpu_us_per_task: drained.cpu_us_per_task,
            broker_cpu_us_per_task: drained.broker_cpu_us_per_task,
        }),
        Err(e) => Err(e),
    };
    queues.delete().await;
    rate
}

async fn measure(
    args: &QueueBenchArgs,
    case: Case,
    queues: &BenchQueues,
) -> anyhow::Result<QueueBenchRow> {
    let label = case.name();
    let n = args.tasks;
    let Drained {
        tasks_per_s,
        arrivals: drained,
        cpu_us_per_task,
        mut results,
        mut workers,
        ..
    } = drain(args, case, queues).await?;
    // The null worker names a module in its results (to match their size) but instantiates none.
    let mut instantiate: Vec<u64> = match case {
        Case::Null => Vec::new(),
        _ => drained.iter().filter_map(|r| r.instantiate_ns).collect(),
    };
    instantiate.sort_unstable();

    // Latency at a fraction of that peak.
    let m = args.latency_tasks.unwrap_or(n / 5).max(1);
    let rate = tasks_per_s * args.latency_load;
    let submitted: Arc<Vec<AtomicU64>> = Arc::new((0..m).map(|_| AtomicU64::new(0)).collect());
    let paced = {
        let mut publisher = Publisher::new(&queues.producer, OUTSTANDING_CONFIRMS).await?;
        let replies = queues.replies.clone();
        let submitted = submitted.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for index in 0..m {
                let due = start + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(due).await;
                let task = bench_task(case, index);
                submitted[index].store(task.submitted_at_unix_ns, Ordering::Relaxed);
                publisher.publish(&task, Some(&replies)).await?;
            }
            publisher.finish().await
        })
    };
    let answered = results.collect(m, Duration::from_secs(60)).await?;
    paced.await??;
    let mut e2e: Vec<u64> = answered
        .iter()
        .filter_map(|r| {
            let sent = submitted.get(r.index?)?.load(Ordering::Relaxed);
            Some(r.unix_ns.saturating_sub(sent))
        })
        .collect();
    e2e.sort_unstable();
    workers.stop()?;
    let ms = |ns: u64| ns as f64 / 1e6;
    let us =
        |sorted: &[u64], p: f64| (!sorted.is_empty()).then(|| percentile(sorted, p) as f64 / 1e3);
    Ok(QueueBenchRow {
        case: label,
        processes: case.processes(),
        tasks: n,
        tasks_per_s,
        ratio_to_null: None,
        ratio_to_null_min: None,
        ratio_to_null_max: None,
        rounds: 1,
        tasks_per_s_min: tasks_per_s,
        tasks_per_s_max: tasks_per_s,
        latency_rate_per_s: rate,
        e2e_p50_ms: ms(percentile(&e2e, 50.0)),
        e2e_p99_ms: ms(percentile(&e2e, 99.0)),
        instantiate_p50_us: us(&instantiate, 50.0),
        instantiate_p99_us: us(&instantiate, 99.0),
        worker_cpu_us_per_task: cpu_us_per_task,
        duplicates: results.duplicates(),
    })
}

fn bench_task(case: Case, index: usize) -> Task {
    let module: ModuleRef = ModuleRef {
        name: case.module().to_owned(),
        digest_prefix: None,
    };
    let mut task = Task::new(module, case.input().to_vec());
    task.batch = Some(BatchRef {
        batch_id: uuid::Uuid::nil(),
        index: index as u64,
    });
    task
}

/// A modules directory holding only the preview1 CPython command, as `cpython-p1`.
fn cpython_modules(source: &ModuleSource) -> anyhow::Result<tempfile::TempDir> {
    let wasm = crate::guests::fetch_cpython(&source.cache_dir()?)?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(&wasm, dir.path().join("cpython-p1.wasm"))?;
    Ok(dir)
}

/// Unconfirmed publishes at most: enough to keep the broker busy while the queue fills.
const OUTSTANDING_CONFIRMS: usize = 2048;

/// One result as the bench saw it arrive.
struct Arrival {
    at: Instant,
    unix_ns: u64,
    index: Option<usize>,
    instantiate_ns: Option<u64>,
}

/// The case's replies, as the producer's deduplicating [`ResultStream`], settled by the broker
/// on delivery so the client costs the broker as little as it can.
struct Results {
    stream: ResultStream,
}

impl Results {
    async fn consume(queues: &BenchQueues) -> anyhow::Result<Self> {
        let stream = ResultStream::consume_settled(&queues.producer, &queues.replies).await?;
        Ok(Results { stream })
    }

    /// Results received more than once (redeliveries).
    fn duplicates(&self) -> usize {
        usize::try_from(self.stream.duplicates()).unwrap_or(usize::MAX)
    }

    /// The next `want` distinct results; fails when none arrives for `stall`.
    async fn collect(&mut self, want: usize, stall: Duration) -> anyhow::Result<Vec<Arrival>> {
        let mut arrived = Vec::with_capacity(want);
        while arrived.len() < want {
            let received = match tokio::time::timeout(stall, self.stream.next()).await {
                Ok(Some(received)) => received?,
                Ok(None) => bail!("the results consumer was cancelled"),
                Err(_) => bail!("no result for {stall:?} after {} of {want}", arrived.len()),
            };
            let at = Instant::now();
            let unix_ns = unix_now_ns();
            let result = &received.result;
            if !result.outcome.is_success() {
                bail!("task failed: {:?}", result.outcome);
            }
            arrived.push(Arrival {
                at,
                unix_ns,
                index: result.batch.and_then(|b| usize::try_from(b.index).ok()),
                instantiate_ns: result
                    .module
                    .is_some()
                    .then_some(result.timings.instantiate_ns),
            });
        }
        Ok(arrived)
    }
}

/// The worker processes of one case.
struct WorkerProcesses {
    workers: Vec<WorkerProcess>,
    /// The `cpython-p1` case's modules directory, alive while its workers are.
    _modules: Option<tempfile::TempDir>,
}

impl WorkerProcesses {
    fn start(args: &QueueBenchArgs, case: Case, topology: &Topology) -> anyhow::Result<Self> {
        let (source, modules) = match case {
            Case::CpythonP1 => {
                let modules = cpython_modules(&args.source)?;
                let source = ModuleSource {
                    modules_dir: modules.path().to_owned(),
                    cache_dir: Some(args.source.cache_dir()?),
                };
                (source, Some(modules))
            }
            _ => (args.source.clone(), None),
        };
        let mut worker_args = args.worker_args.clone();
        if case == Case::PythonX2 {
            worker_args.push("--max-concurrent-tasks=1".to_owned());
        }
        let launch = WorkerLaunch {
            amqp_url: &args.broker.amqp_url.join(","),
            topology,
            source: &source,
            worker_args: &worker_args,
        };
        let binary = match case {
            Case::Null => WorkerBinary::NullWorker,
            _ => WorkerBinary::Worker,
        };
        let workers = (0..case.processes())
            .map(|_| workers::start(&launch, binary))
            .collect::<anyhow::Result<_>>()?;
        Ok(WorkerProcesses {
            workers,
            _modules: modules,
        })
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for worker in &mut self.workers {
            workers::wait_ready(worker, deadline)?;
        }
        Ok(())
    }

    /// User + system CPU time of all the processes so far.
    fn cpu_time(&self) -> Duration {
        self.workers
            .iter()
            .filter_map(WorkerProcess::cpu_time)
            .sum()
    }

    /// SIGTERM, then wait: the workers drain (nothing is in flight by now) and exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        for worker in &mut self.workers {
            worker.stop()?;
        }
        self.workers.clear();
        Ok(())
    }
}

fn print_table(rows: &[QueueBenchRow]) {
    println!(
        "{:<12} {:>5} {:>10} {:>13} {:>7} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "case",
        "procs",
        "tasks/s",
        "range",
        "×null",
        "×null range",
        "e2e p50",
        "e2e p99",
        "inst p50",
        "inst p99",
        "cpu/task"
    );
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}µs"));
    for row in rows {
        println!(
            "{:<12} {:>5} {:>10.0} {:>13} {:>7} {:>11} {:>8.2}ms {:>8.2}ms {:>10} {:>10} {:>8.1}µs",
            row.case,
            row.processes,
            row.tasks_per_s,
            format!("{:.0}–{:.0}", row.tasks_per_s_min, row.tasks_per_s_max),
            row.ratio_to_null
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            match (row.ratio_to_null_min, row.ratio_to_null_max) {
                (Some(min), Some(max)) => format!("{min:.2}–{max:.2}"),
                _ => "-".to_owned(),
            },
            row.e2e_p50_ms,
            row.e2e_p99_ms,
            us(row.instantiate_p50_us),
            us(row.instantiate_p99_us),
            row.worker_cpu_us_per_task,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_each_round_with_its_own_null_run() {
        // The machine slowed down in round 2: per-round ratios see 0.9, 0.95, 0.8; dividing the
        // medians (20 / 25) would report 0.8.
        let ratios = paired_ratios(&[27.0, 19.0, 20.0], &[30.0, 20.0, 25.0]);
        assert_eq!(
            ratios,
            Ratios {
                median: Some(0.9),
                min: Some(0.8),
                max: Some(0.95),
            }
        );
        let none = paired_ratios(&[], &[]);
        assert_eq!(none.median, None);
    }
}
