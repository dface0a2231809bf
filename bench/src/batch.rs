//! `warren-bench batch`: a batch as users type it (`warren batch upper --inputs DIR`), the
//! producer's CPU per task, and its end-to-end rate next to `queue`'s trivial drain rate
//! measured in the same round.
//!
//! Each round first drains a full queue of trivial tasks with one worker (`queue`'s `trivial`
//! case: what the workers can do), then runs every variant: a fresh worker on fresh queues and
//! one `warren batch` process over the same inputs, timed from its start to its exit. The
//! producer's CPU and context switches come from the kernel's accounting of that child process
//! (`wait4`). Variants are producer binaries and flags (`--variant LABEL=PATH [FLAGS]`), so an
//! old and a new binary alternate within one run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use warren_schemas::args::BrokerArgs;
use warren_worker::ModuleSource;

use crate::broker::{local_broker_cpu, BenchQueues};
use crate::queue::{drain_rate, Case, DrainRate, QueueBenchArgs};
use crate::workers::{self, WorkerBinary, WorkerLaunch};

/// One producer to measure: a label, the `warren` binary and extra `batch` flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Name in the table.
    pub label: String,
    /// The `warren` binary (a bare `warren`: the one beside `warren-bench`).
    pub binary: PathBuf,
    /// Extra arguments for `warren batch`.
    pub flags: Vec<String>,
}

impl std::str::FromStr for Variant {
    type Err = String;

    /// `LABEL=PATH [FLAG...]`, e.g. `inline=warren --output-format inline`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (label, rest) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected LABEL=PATH [FLAGS], e.g. inline=warren --output-format inline")
        })?;
        let mut words = rest.split_whitespace();
        let binary = words
            .next()
            .ok_or_else(|| format!("{s:?}: no binary after {label}="))?;
        Ok(Variant {
            label: label.trim().to_owned(),
            binary: PathBuf::from(binary),
            flags: words.map(str::to_owned).collect(),
        })
    }
}

/// Arguments of `warren-bench batch`.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchBenchArgs {
    /// Where the broker is.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Inputs in the batch (and trivial tasks drained for the comparison).
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,

    /// Rounds; each variant reports its median round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,

    /// A producer to measure, `LABEL=PATH [FLAGS]`; repeat to compare (they alternate within
    /// each round). Default: the `warren` beside this binary, with per-input files and with
    /// `--output-format inline`.
    #[arg(long = "variant")]
    pub variants: Vec<Variant>,

    /// Directory for the inputs and the output directories. Default: /dev/shm when it exists
    /// (so the disk does not dominate), else the system's temporary directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,

    /// Extra arguments for every worker process, e.g. `--worker-arg=--prefetch=64`.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,

    /// Where the workers load modules from.
    #[command(flatten)]
    pub source: ModuleSource,

    /// Print one JSON object per variant (one per line) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One variant's median round.
#[derive(Debug, Clone, Serialize)]
pub struct BatchBenchRow {
    /// The variant.
    pub variant: String,
    /// Inputs in the batch.
    pub tasks: usize,
    /// Tasks per second, from starting `warren batch` to its exit.
    pub tasks_per_s: f64,
    /// Tasks/s over the trivial drain rate of the same round (median over the rounds).
    pub ratio_to_trivial: f64,
    /// The trivial drain rate of the median round.
    pub trivial_per_s: f64,
    /// Producer user + system CPU per task, in microseconds.
    pub cpu_us_per_task: f64,
    /// Producer user CPU per task, in microseconds.
    pub user_us_per_task: f64,
    /// Producer system CPU per task, in microseconds.
    pub system_us_per_task: f64,
    /// Voluntary context switches of the producer per task.
    pub voluntary_switches_per_task: f64,
    /// Involuntary context switches of the producer per task.
    pub involuntary_switches_per_task: f64,
    /// Worker CPU per task during the batch.
    pub worker_cpu_us_per_task: f64,
    /// Local broker CPU per task during the batch (none if the broker is elsewhere).
    pub broker_cpu_us_per_task: Option<f64>,
    /// Worker CPU per task while draining the trivial queue (same round).
    pub trivial_worker_cpu_us_per_task: f64,
    /// Local broker CPU per task while draining the trivial queue (same round).
    pub trivial_broker_cpu_us_per_task: Option<f64>,
    /// Rounds run.
    pub rounds: usize,
}

/// Runs the benchmark and prints the table (or JSON lines); returns the rows.
pub fn run_batch_bench(args: &BatchBenchArgs) -> anyhow::Result<Vec<BatchBenchRow>> {
    if args.tasks < 2 || args.rounds == 0 {
        bail!("--tasks must be at least 2 and --rounds at least 1");
    }
    let variants = resolve_variants(&args.variants)?;
    let work = match &args.work_dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None if Path::new("/dev/shm").is_dir() => tempfile::tempdir_in("/dev/shm")?,
        None => tempfile::tempdir()?,
    };
    let inputs = work.path().join("inputs");
    write_inputs(&inputs, args.tasks)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let queue_args = QueueBenchArgs {
        broker: args.broker.clone(),
        tasks: args.tasks,
        latency_tasks: None,
        latency_load: 0.5,
        cases: vec![Case::Trivial],
        rounds: 1,
        worker_args: args.worker_args.clone(),
        source: args.source.clone(),
        json: false,
    };
    let mut rounds: Vec<Vec<BatchBenchRow>> = vec![Vec::new(); variants.len()];
    for round in 1..=args.rounds {
        let trivial = runtime.block_on(drain_rate(&queue_args, Case::Trivial))?;
        eprintln!(
            "[round {round}] trivial drain: {:.0} tasks/s",
            trivial.tasks_per_s
        );
        for (variant, runs) in variants.iter().zip(&mut rounds) {
            let out = work.path().join(format!("out-{round}-{}", variant.label));
            let run = runtime.block_on(run_variant(args, variant, &inputs, &out))?;
            let row = run.row(variant, args.tasks, &trivial);
            eprintln!(
                "[round {round}] {}: {:.0} tasks/s ({:.2} of trivial), {:.1} µs producer CPU per task",
                variant.label, row.tasks_per_s, row.ratio_to_trivial, row.cpu_us_per_task
            );
            runs.push(row);
            std::fs::remove_dir_all(&out).ok();
        }
    }
    let rows: Vec<BatchBenchRow> = rounds.into_iter().filter_map(median_round).collect();
    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        print_table(&rows);
    }
    Ok(rows)
}

/// The default variants, or the given ones with a bare `warren` made the sibling binary.
fn resolve_variants(given: &[Variant]) -> anyhow::Result<Vec<Variant>> {
    let sibling = std::env::current_exe()
        .context("cannot find my own executable")?
        .with_file_name("warren");
    let variants = if given.is_empty() {
        vec![
            Variant {
                label: "files".into(),
                binary: sibling.clone(),
                flags: Vec::new(),
            },
            Variant {
                label: "inline".into(),
                binary: sibling.clone(),
                flags: vec!["--output-format".into(), "inline".into()],
            },
        ]
    } else {
        given
            .iter()
            .map(|v| Variant {
                binary: if v.binary == Path::new("warren") {
                    sibling.clone()
                } else {
                    v.binary.clone()
                },
                ..v.clone()
            })
            .collect()
    };
    for variant in &variants {
        if !variant.binary.is_file() {
            bail!(
                "{}: {} is missing (build it: cargo build --release -p warren)",
                variant.label,
                variant.binary.display()
            );
        }
    }
    Ok(variants)
}

/// `count` one-line inputs, as many small files as a batch of short tasks has.
fn write_inputs(dir: &Path, count: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..count {
        std::fs::write(
            dir.join(format!("{i:07}.txt")),
            format!("input number {i}\n"),
        )?;
    }
    Ok(())
}

/// What the kernel accounted for one `warren batch` process, and for the worker and the
/// broker meanwhile.
struct Run {
    elapsed: Duration,
    user: Duration,
    system: Duration,
    voluntary: u64,
    involuntary: u64,
    worker: Duration,
    broker: Option<Duration>,
}

impl Run {
    fn row(&self, variant: &Variant, tasks: usize, trivial: &DrainRate) -> BatchBenchRow {
        let n = tasks as f64;
        let per_task = |d: Duration| d.as_secs_f64() * 1e6 / n;
        let tasks_per_s = n / self.elapsed.as_secs_f64().max(1e-9);
        BatchBenchRow {
            variant: variant.label.clone(),
            tasks,
            tasks_per_s,
            ratio_to_trivial: tasks_per_s / trivial.tasks_per_s.max(1e-9),
            trivial_per_s: trivial.tasks_per_s,
            cpu_us_per_task: per_task(self.user + self.system),
            user_us_per_task: per_task(self.user),
            system_us_per_task: per_task(self.system),
            voluntary_switches_per_task: self.voluntary as f64 / n,
            involuntary_switches_per_task: self.involuntary as f64 / n,
            worker_cpu_us_per_task: per_task(self.worker),
            broker_cpu_us_per_task: self.broker.map(per_task),
            trivial_worker_cpu_us_per_task: trivial.worker_cpu_us_per_task,
            trivial_broker_cpu_us_per_task: trivial.broker_cpu_us_per_task,
            rounds: 1,
        }
    }
}

/// One `warren batch upper` over `inputs` into `out`, with a fresh worker on fresh queues.
async fn run_variant(
    args: &BatchBenchArgs,
    variant: &Variant,
    inputs: &Path,
    out: &Path,
) -> anyhow::Result<Run> {
    let queues = BenchQueues::declare(&args.broker.amqp_url.join(","), "batch").await?;
    let topology = queues.topology().clone();
    let launch = WorkerLaunch {
        amqp_url: &args.broker.amqp_url.join(","),
        topology: &topology,
        source: &args.source,
        worker_args: &args.worker_args,
    };
    let mut worker = workers::start(&launch, WorkerBinary::Worker)?;
    workers::wait_ready(&mut worker, Instant::now() + Duration::from_secs(120))?;
    let mut command = Command::new(&variant.binary);
    command
        .arg("batch")
        .arg("upper")
        .arg("--inputs")
        .arg(inputs)
        .arg("--out")
        .arg(out)
        .args(["--tasks-queue", &topology.tasks])
        .args(["--dead-queue", &topology.dead])
        .args(["--results-queue", &topology.results])
        .args(&variant.flags)
        .env("AMQP_URL", args.broker.amqp_url.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (worker_before, broker_before) = (worker.cpu_time(), local_broker_cpu());
    let run = tokio::task::block_in_place(|| run_accounted(command));
    let (worker_after, broker_after) = (worker.cpu_time(), local_broker_cpu());
    worker.stop()?;
    queues.delete().await;
    let (mut run, stderr) = run?;
    run.worker = worker_after
        .zip(worker_before)
        .map_or(Duration::ZERO, |(after, before)| {
            after.saturating_sub(before)
        });
    run.broker = broker_after
        .zip(broker_before)
        .map(|(after, before)| after.saturating_sub(before));
    let written = std::fs::read_to_string(out.join("results.jsonl"))
        .map(|text| text.lines().count())
        .unwrap_or(0);
    if written != args.tasks {
        bail!(
            "{}: results.jsonl holds {written} results, not {}; its stderr:\n{stderr}",
            variant.label,
            args.tasks
        );
    }
    Ok(run)
}

/// Runs `command` to its end and returns the kernel's accounting of it, and its stderr; fails
/// unless it exits 0.
fn run_accounted(mut command: Command) -> anyhow::Result<(Run, String)> {
    use std::io::Read;
    let started = Instant::now();
    let mut child = command.spawn().context("starting warren batch")?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)?;
    }
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child; `status` and `usage` are valid for writes.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    if waited != pid {
        bail!(
            "waiting for warren batch: {}",
            std::io::Error::last_os_error()
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("warren batch failed (wait status {status}):\n{stderr}");
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok((
        Run {
            elapsed,
            user: time(usage.ru_utime),
            system: time(usage.ru_stime),
            voluntary: u64::try_from(usage.ru_nvcsw).unwrap_or(0),
            involuntary: u64::try_from(usage.ru_nivcsw).unwrap_or(0),
            worker: Duration::ZERO,
            broker: None,
        },
        stderr,
    ))
}

/// The round with the median tasks/s, carrying the median of the per-round ratios.
fn median_round(mut runs: Vec<BatchBenchRow>) -> Option<BatchBenchRow> {
    let count = runs.len();
    let mut ratios: Vec<f64> = runs.iter().map(|r| r.ratio_to_trivial).collect();
    ratios.sort_by(f64::total_cmp);
    runs.sort_by(|a, b| a.tasks_per_s.total_cmp(&b.tasks_per_s));
    let mut row = runs.get(count / 2)?.clone();
    row.ratio_to_trivial = ratios[count / 2];
    row.rounds = count;
    Some(row)
}

fn print_table(rows: &[BatchBenchRow]) {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "{:<10} {:>7} {:>8} {:>9} {:>6} {:>9} {:>8} {:>8} {:>7} {:>7} | {:>8} {:>8} | {:>8} {:>8}",
        "variant",
        "tasks",
        "tasks/s",
        "trivial/s",
        "ratio",
        "producer",
        "user",
        "sys",
        "vcsw/t",
        "ivcsw/t",
        "worker",
        "broker",
        "trivial:",
        "broker"
    );
    println!(
        "{:<10} {:>7} {:>8} {:>9} {:>6} {:>9} {:>8} {:>8} {:>7} {:>7} | {:>8} {:>8} | {:>8} {:>8}",
        "",
        "",
        "",
        "",
        "",
        "µs/task",
        "µs",
        "µs",
        "",
        "",
        "µs/task",
        "µs/task",
        "worker",
        "µs/task"
    );
    for r in rows {
        println!(
            "{:<10} {:>7} {:>8.0} {:>9.0} {:>6.2} {:>9.1} {:>8.1} {:>8.1} {:>7.2} {:>7.2} | {:>8.1} {:>8} | {:>8.1} {:>8}",
            r.variant,
            r.tasks,
            r.tasks_per_s,
            r.trivial_per_s,
            r.ratio_to_trivial,
            r.cpu_us_per_task,
            r.user_us_per_task,
            r.system_us_per_task,
            r.voluntary_switches_per_task,
            r.involuntary_switches_per_task,
            r.worker_cpu_us_per_task,
            opt(r.broker_cpu_us_per_task),
            r.trivial_worker_cpu_us_per_task,
            opt(r.trivial_broker_cpu_us_per_task)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_label_binary_and_flags() {
        let v: Variant = "inline=warren --output-format inline".parse().unwrap();
        assert_eq!(v.label, "inline");
        assert_eq!(v.binary, PathBuf::from("warren"));
        assert_eq!(v.flags, ["--output-format", "inline"]);
        assert!("no-equals-sign".parse::<Variant>().is_err());
        assert!("empty=".parse::<Variant>().is_err());
    }
}
