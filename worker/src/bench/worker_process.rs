//! Worker processes for the broker benchmarks (`bench queue`, `bench soak`): this very binary
//! started as `warren-worker run` on a benchmark's own queues, with a free metrics port, waited
//! for until `/readyz` says so, and stopped with SIGTERM (or killed if the benchmark fails).
//!
//! Measuring real processes, not an in-process worker, is the point: the benchmarks see the
//! daemon exactly as users run it, CPU and memory included.

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use warren_schemas::Topology;

use crate::probe::{free_local_addr, http_get};
use crate::ModuleSource;

/// What every benchmark worker process gets.
pub struct WorkerLaunch<'a> {
    /// Broker URL (passed as `AMQP_URL`).
    pub amqp_url: &'a str,
    /// The benchmark's queues.
    pub topology: &'a Topology,
    /// Modules directory and AOT cache.
    pub source: &'a ModuleSource,
    /// Extra `warren-worker run` arguments from the user (`--worker-arg`).
    pub worker_args: &'a [String],
}

/// One running `warren-worker run` process.
pub struct BenchWorker {
    child: Child,
    metrics_addr: SocketAddr,
}

impl BenchWorker {
    /// Starts a worker; `extra` arguments go before the user's.
    pub fn start(launch: &WorkerLaunch<'_>, extra: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find my own executable")?;
        let metrics_addr = free_local_addr()?;
        let topology = launch.topology;
        let child = Command::new(exe)
            .arg("run")
            .args(["--tasks-queue", &topology.tasks])
            .args(["--dead-queue", &topology.dead])
            .args(["--results-queue", &topology.results])
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .arg("--modules")
            .arg(&launch.source.modules_dir)
            .arg("--cache")
            .arg(launch.source.cache_dir()?)
            .args(extra)
            .args(launch.worker_args)
            .env("AMQP_URL", launch.amqp_url)
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start a worker process")?;
        Ok(BenchWorker {
            child,
            metrics_addr,
        })
    }

    /// Process id, for `/proc/<pid>/…` sampling.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its `/metrics`, `/healthz` and `/readyz` answer.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits until `/readyz` answers 200 (connected, consuming, modules loaded) or `deadline`.
    pub async fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(status) = self.exited()? {
                bail!("a worker exited before it was ready: {status}");
            }
            let addr = self.metrics_addr;
            let ready = tokio::task::spawn_blocking(move || http_get(addr, "/readyz"))
                .await?
                .is_some_and(|(code, _)| code == 200);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("a worker was not ready in time");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// User + system CPU ticks used so far (`/proc/<pid>/stat`, [`CLOCK_TICKS_PER_S`] a second).
    pub fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// Sends SIGTERM: the worker drains what it holds and exits. Pair with [`wait`](Self::wait).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) {
        let _ = self.child.wait();
    }
}

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 per second on Linux.
pub const CLOCK_TICKS_PER_S: f64 = 100.0;

impl Drop for BenchWorker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
