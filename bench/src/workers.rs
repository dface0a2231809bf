//! Worker processes for the broker benchmarks (`queue`, `soak`): the tests' [`WorkerProcess`]
//! helper, started from the binaries beside `warren-bench` (so a release bench measures release
//! workers) on a benchmark's queues.
//!
//! Measuring real processes, not an in-process worker, is the point: the benchmarks see the
//! daemon exactly as users run it, CPU and memory included.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use warren::Topology;
use warren_tests::worker_process::{WorkerCommand, WorkerProcess};
use warren_worker::ModuleSource;

/// Which worker binary a benchmark starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerBinary {
    /// `warren-worker run`: the daemon.
    Worker,
    /// `warren-null-worker`: the daemon's AMQP path with a null executor.
    NullWorker,
}

/// What every benchmark worker process gets.
pub struct WorkerLaunch<'a> {
    /// Broker URL (passed as `AMQP_URL`).
    pub amqp_url: &'a str,
    /// The benchmark's queues.
    pub topology: &'a Topology,
    /// Modules directory and AOT cache.
    pub source: &'a ModuleSource,
    /// Extra `run` arguments from the user (`--worker-arg`).
    pub worker_args: &'a [String],
}

/// Starts `binary` as `launch` says, without waiting for it to be ready.
pub fn start(launch: &WorkerLaunch<'_>, binary: WorkerBinary) -> anyhow::Result<WorkerProcess> {
    let name = match binary {
        WorkerBinary::Worker => "warren-worker",
        WorkerBinary::NullWorker => "warren-null-worker",
    };
    let exe = std::env::current_exe()
        .context("cannot find my own executable")?
        .with_file_name(name);
    if !exe.is_file() {
        bail!(
            "{} is missing: build it beside warren-bench (cargo build --release -p warren-worker -p warren-bench)",
            exe.display()
        );
    }
    let mut command = Command::new(exe);
    if binary == WorkerBinary::Worker {
        command.arg("run");
    }
    let mut worker = WorkerCommand::new(
        command,
        launch.amqp_url,
        launch.topology,
        &launch.source.modules_dir,
        &launch.source.cache_dir()?,
    )?;
    Ok(worker.args(launch.worker_args).spawn()?)
}

/// Waits (off the async runtime's hands) until `worker` is ready, or `deadline`.
pub fn wait_ready(worker: &mut WorkerProcess, deadline: Instant) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| worker.ready_by(deadline))
}
