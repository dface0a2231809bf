//! `warren-bench soak`: many trivial tasks through **one** worker process, watching it for
//! leaks. A fresh sandbox per task means a million tasks create a million stores, instances,
//! WASI states and output buffers; anything one of them forgets to give back shows up here, as
//! resident memory that keeps growing after warm-up, file descriptors that are never closed, or
//! an in-flight gauge that does not return to zero.
//!
//! The task queue is fed while the worker drains it, with at most `--backlog` tasks unanswered,
//! so the broker holds a bounded queue however long the run. Every `--interval` the worker's
//! `VmRSS` (`/proc/<pid>/status`) and open descriptors (`/proc/<pid>/fd`) go to a CSV, and every
//! `--scrape-interval` also `warren_tasks_in_flight` (its `/metrics`) — as seldom as Prometheus
//! scrapes by default, so memory the exporter holds between scrapes is part of what is watched.
//! The verdict compares the final sample
//! with the one taken once `--warmup` of the tasks are done (allocator arenas, pool slots, the AOT
//! image and per-thread descriptors are all set up by then): RSS may grow at most
//! `--max-rss-growth`, descriptors not at all, and nothing may be left in flight. `scripts/soak`
//! runs it on a release build and plots the CSV.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::watch;
use warren::{Publisher, ResultStream};
use warren_schemas::args::{parse_duration, BrokerArgs};
use warren_schemas::{BatchRef, ModuleRef, Task};
use warren_tests::probe::http_get;
use warren_worker::ModuleSource;

use crate::broker::BenchQueues;
use crate::workers::{self, WorkerBinary, WorkerLaunch};

/// Arguments of `warren-bench soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Where the broker is.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Trivial `echo` tasks to push through the worker.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: usize,

    /// Where the samples go (CSV: elapsed_s, tasks_done, rss_kib, fds, in_flight).
    #[arg(long, default_value = "soak.csv")]
    pub csv: PathBuf,

    /// Time between samples.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Time between reads of the worker's `/metrics` (Prometheus' default scrape interval); the
    /// CSV's in_flight is empty in the samples between.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub scrape_interval: Duration,

    /// Fraction of the tasks after which the worker counts as warm (its RSS is the baseline).
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,

    /// Largest allowed growth of RSS from the warm-up sample to the final one, in percent.
    #[arg(long, default_value_t = 10.0)]
    pub max_rss_growth: f64,

    /// Tasks published and not yet answered, at most (bounds the broker's queue).
    #[arg(long, default_value_t = 20_000)]
    pub backlog: usize,

    /// Extra arguments for the worker process, e.g. `--worker-arg=--max-concurrent-tasks=1`.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,

    /// Where the worker loads modules from.
    #[command(flatten)]
    pub source: ModuleSource,
}

/// One sample of the worker process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    elapsed_s: f64,
    done: usize,
    rss_kib: u64,
    fds: usize,
    in_flight: Option<f64>,
}

/// Runs the soak, prints the summary and returns the exit code: 0 when nothing leaked.
pub fn run_soak(args: &SoakArgs) -> anyhow::Result<i32> {
    if args.tasks < 10 {
        bail!("--tasks must be at least 10");
    }
    if !(args.warmup > 0.0 && args.warmup < 1.0) {
        bail!("--warmup must be in (0, 1)");
    }
    if args.backlog == 0 {
        bail!("--backlog must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let queues = BenchQueues::declare(&args.broker.amqp_url.join(","), "soak").await?;
        let soaked = soak(args, &queues).await;
        queues.delete().await;
        soaked
    })
}

async fn soak(args: &SoakArgs, queues: &BenchQueues) -> anyhow::Result<i32> {
    let launch = WorkerLaunch {
        amqp_url: &args.broker.amqp_url.join(","),
        topology: queues.topology(),
        source: &args.source,
        worker_args: &args.worker_args,
    };
    let mut worker = workers::start(&launch, WorkerBinary::Worker)?;
    workers::wait_ready(&mut worker, Instant::now() + Duration::from_secs(120))?;
    let pid = worker.pid();
    let metrics_addr = worker.metrics_addr;
    let mut csv = std::io::BufWriter::new(
        std::fs::File::create(&args.csv)
            .with_context(|| format!("cannot create {}", args.csv.display()))?,
    );
    writeln!(csv, "elapsed_s,tasks_done,rss_kib,fds,in_flight")?;

    let n = args.tasks;
    let (done_tx, done_rx) = watch::channel(0usize);
    let consumer = consume_results(queues, n, done_tx).await?;
    let publisher = publish_tasks(queues, n, args.backlog, done_rx.clone());

    let started = Instant::now();
    let mut samples = vec![sample(pid, Some(metrics_addr), started, 0).await?];
    let mut scraped = started;
    write_sample(&mut csv, &samples[0])?;
    let mut ticker = tokio::time::interval(args.interval);
    ticker.tick().await;
    // Both run on this task, polled by the select below between samples.
    let mut publisher = std::pin::pin!(publisher);
    let mut consumer = std::pin::pin!(consumer);
    let mut published = None;
    let answered = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let done = *done_rx.borrow();
                let scrape = scraped.elapsed() >= args.scrape_interval;
                if scrape {
                    scraped = Instant::now();
                }
                let s = sample(pid, scrape.then_some(metrics_addr), started, done).await?;
                write_sample(&mut csv, &s)?;
                samples.push(s);
                if let Some(status) = worker.try_status() {
                    bail!("the worker exited during the soak: {status}");
                }
            }
            p = &mut publisher, if published.is_none() => published = Some(p?),
            c = &mut consumer => break c?,
        }
    };
    let duration = started.elapsed();
    if published.is_none() {
        publisher.await?;
    }

    // Acks follow results by a broker round trip: give the gauge a moment to settle.
    let settle = Instant::now() + Duration::from_secs(10);
    let mut last = sample(pid, Some(metrics_addr), started, answered.distinct).await?;
    while last.in_flight != Some(0.0) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = sample(pid, Some(metrics_addr), started, answered.distinct).await?;
    }
    write_sample(&mut csv, &last)?;
    samples.push(last);
    csv.flush()?;
    // SIGTERM, then wait: nothing is in flight by now, so it drains at once and exits.
    worker.stop()?;

    Ok(report(args, &samples, &answered, duration))
}

/// Prints the summary; returns 0 when the run was clean, 1 otherwise.
fn report(args: &SoakArgs, samples: &[Sample], answered: &Answered, duration: Duration) -> i32 {
    let n = args.tasks;
    let warm_at = (n as f64 * args.warmup).ceil() as usize;
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        println!("no samples");
        return 1;
    };
    let warm = samples.iter().find(|s| s.done >= warm_at).unwrap_or(last);
    let after_warm = samples.iter().filter(|s| s.elapsed_s >= warm.elapsed_s);
    let max_rss = after_warm.map(|s| s.rss_kib).max().unwrap_or(last.rss_kib);
    let growth = |kib: u64| (kib as f64 - warm.rss_kib as f64) * 100.0 / warm.rss_kib as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let secs = duration.as_secs_f64();
    println!("soak: one worker process, {n} echo tasks");
    println!(
        "tasks         {} answered ({} failed, {} duplicates)",
        answered.distinct, answered.failed, answered.duplicates
    );
    println!("duration      {secs:.1} s");
    println!(
        "throughput    {:.0} tasks/s",
        answered.distinct as f64 / secs
    );
    println!(
        "rss           start {:.1} MiB | after warm-up ({warm_at} tasks) {:.1} MiB | max {:.1} MiB ({:+.1}%) | final {:.1} MiB ({:+.1}%)",
        mib(first.rss_kib),
        mib(warm.rss_kib),
        mib(max_rss),
        growth(max_rss),
        mib(last.rss_kib),
        growth(last.rss_kib),
    );
    println!(
        "fds           start {} | after warm-up {} | end {}",
        first.fds, warm.fds, last.fds
    );
    println!(
        "in flight     {} at the end",
        last.in_flight
            .map_or_else(|| "unknown".to_owned(), |v| v.to_string())
    );
    println!("samples       {} in {}", samples.len(), args.csv.display());

    let mut failures = Vec::new();
    if answered.distinct != n || answered.failed != 0 {
        failures.push(format!(
            "{} of {n} tasks answered, {} failed",
            answered.distinct, answered.failed
        ));
    }
    if growth(last.rss_kib) > args.max_rss_growth {
        failures.push(format!(
            "RSS grew {:.1}% after warm-up (limit {}%)",
            growth(last.rss_kib),
            args.max_rss_growth
        ));
    }
    // The first tasks open a few descriptors for good (lazily created per-thread state), so
    // like RSS, descriptors are compared with the warm-up sample.
    if last.fds > warm.fds {
        failures.push(format!(
            "open fds grew after warm-up from {} to {}",
            warm.fds, last.fds
        ));
    }
    if last.in_flight != Some(0.0) {
        failures.push(format!("in flight at the end: {:?}", last.in_flight));
    }
    if failures.is_empty() {
        println!("verdict       OK");
        0
    } else {
        println!("verdict       FAILED: {}", failures.join("; "));
        1
    }
}

fn write_sample(csv: &mut impl Write, s: &Sample) -> std::io::Result<()> {
    let in_flight = s.in_flight.map_or_else(String::new, |v| v.to_string());
    writeln!(
        csv,
        "{:.3},{},{},{},{}",
        s.elapsed_s, s.done, s.rss_kib, s.fds, in_flight
    )
}

/// Reads the worker's RSS and descriptors, then, given its metrics address (one connection,
/// closed before the next sample's descriptor count), its in-flight gauge.
async fn sample(
    pid: u32,
    metrics_addr: Option<SocketAddr>,
    started: Instant,
    done: usize,
) -> anyhow::Result<Sample> {
    let elapsed_s = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("cannot read the worker's /proc status")?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in the worker's /proc status")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .context("cannot list the worker's /proc fds")?
        .count();
    let in_flight = match metrics_addr {
        Some(addr) => tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
            .await?
            .and_then(|(_, body)| {
                body.lines().find_map(|line| {
                    line.strip_prefix("warren_tasks_in_flight ")
                        .and_then(|v| v.trim().parse().ok())
                })
            }),
        None => None,
    };
    Ok(Sample {
        elapsed_s,
        done,
        rss_kib,
        fds,
        in_flight,
    })
}

fn soak_task(index: usize) -> Task {
    let mut task = Task::new(ModuleRef::latest("echo"), b"warren\n".to_vec());
    task.batch = Some(BatchRef {
        batch_id: uuid::Uuid::nil(),
        index: index as u64,
    });
    task
}

/// Publishes `n` tasks with confirms pipelined, pausing while `backlog` are unanswered.
async fn publish_tasks(
    queues: &BenchQueues,
    n: usize,
    backlog: usize,
    mut done: watch::Receiver<usize>,
) -> anyhow::Result<()> {
    const OUTSTANDING_CONFIRMS: usize = 2048;
    let mut publisher = Publisher::new(&queues.producer, OUTSTANDING_CONFIRMS).await?;
    for index in 0..n {
        if index.saturating_sub(*done.borrow()) >= backlog {
            done.wait_for(|&d| index.saturating_sub(d) < backlog)
                .await
                .context("the results consumer stopped")?;
        }
        publisher
            .publish(&soak_task(index), Some(&queues.replies))
            .await?;
    }
    publisher.finish().await?;
    Ok(())
}

/// What came back.
#[derive(Debug, Default)]
struct Answered {
    distinct: usize,
    failed: usize,
    duplicates: usize,
}

/// Consumes results (the producer's [`ResultStream`], settled by the broker on delivery) until
/// `n` distinct tasks answered; fails when none arrives for 60 s.
async fn consume_results(
    queues: &BenchQueues,
    n: usize,
    done: watch::Sender<usize>,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<Answered>>> {
    let mut stream = ResultStream::consume_settled(&queues.producer, &queues.replies).await?;
    Ok(async move {
        let stall = Duration::from_secs(60);
        let mut answered = Answered::default();
        while answered.distinct < n {
            let received = match tokio::time::timeout(stall, stream.next()).await {
                Ok(Some(received)) => received?,
                Ok(None) => bail!("the results consumer was cancelled"),
                Err(_) => bail!("no result for {stall:?} after {} of {n}", answered.distinct),
            };
            answered.distinct += 1;
            if !received.result.outcome.is_success() {
                answered.failed += 1;
            }
            done.send_replace(answered.distinct);
        }
        answered.duplicates = usize::try_from(stream.duplicates()).unwrap_or(usize::MAX);
        Ok(answered)
    })
}
