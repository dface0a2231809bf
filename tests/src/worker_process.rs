//! A real worker process on a test's (or a benchmark's) queues: start it, wait until it is
//! ready, signal it, read its metrics and its CPU time.
//!
//! [`WorkerCommand`] says how to start one — which binary (`warren-worker run`, or a binary with
//! `run`'s command line such as the crash worker or the benchmarks' null worker), which broker,
//! queues and modules — and gives it a free metrics port. The `start*` shortcuts of
//! [`WorkerProcess`] are the tests' defaults: the debug build, `modules/dist`, the shared AOT
//! cache, quiet logs, and a panic when something goes wrong.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use warren_schemas::Topology;

use crate::broker::amqp_url;
use crate::probe::free_local_addr;
pub use crate::probe::http_get;
use crate::{binary, modules_dir, shared_aot_cache};

/// How to start one worker process.
pub struct WorkerCommand {
    command: Command,
    metrics_addr: SocketAddr,
}

impl WorkerCommand {
    /// `command` (a binary, and `run` for `warren-worker`) on `topology`'s queues of the broker
    /// at `url`, serving `modules` with the AOT cache `cache`, its metrics on a free local port.
    pub fn new(
        mut command: Command,
        url: &str,
        topology: &Topology,
        modules: &Path,
        cache: &Path,
    ) -> std::io::Result<Self> {
        let metrics_addr = free_local_addr()?;
        command
            .args(["--tasks-queue", &topology.tasks])
            .args(["--dead-queue", &topology.dead])
            .args(["--results-queue", &topology.results])
            .args(["--delivery-limit", &topology.delivery_limit.to_string()])
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .arg("--modules")
            .arg(modules)
            .arg("--cache")
            .arg(cache)
            .env("AMQP_URL", url)
            .stdin(Stdio::null());
        Ok(WorkerCommand {
            command,
            metrics_addr,
        })
    }

    /// Adds command-line arguments (after the ones above).
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Sets an environment variable of the process.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.command.env(key, value);
        self
    }

    /// Where the process's stderr (its log) goes; inherited from the test by default.
    pub fn stderr(&mut self, stderr: impl Into<Stdio>) -> &mut Self {
        self.command.stderr(stderr);
        self
    }

    /// Starts the process (without waiting for it to be ready).
    pub fn spawn(&mut self) -> std::io::Result<WorkerProcess> {
        let program = self.command.get_program().to_string_lossy().into_owned();
        let child = self
            .command
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {program}: {e}")))?;
        Ok(WorkerProcess {
            child,
            metrics_addr: self.metrics_addr,
        })
    }
}

/// A running worker process, killed when dropped.
pub struct WorkerProcess {
    child: Child,
    /// Where its `/metrics`, `/healthz` and `/readyz` answer.
    pub metrics_addr: SocketAddr,
}

impl WorkerProcess {
    /// Starts a worker on `topology` with `concurrency` lanes and extra CLI `args`, and waits
    /// until `/readyz` says it consumes.
    pub fn start(topology: &Topology, concurrency: usize, args: &[&str]) -> Self {
        Self::start_on(&amqp_url(), topology, concurrency, args)
    }

    /// Like [`WorkerProcess::start`], connected to the broker (or virtual host) at `url`.
    pub fn start_on(url: &str, topology: &Topology, concurrency: usize, args: &[&str]) -> Self {
        let mut worker = Self::spawn_test("warren-worker", url, topology, concurrency, args);
        worker.wait_ready(Duration::from_secs(60));
        worker
    }

    /// Like [`WorkerProcess::start`], serving the modules in `modules` instead of the built ones.
    pub fn start_with_modules(
        topology: &Topology,
        concurrency: usize,
        modules: &Path,
        args: &[&str],
    ) -> Self {
        Self::start_with_cache(topology, concurrency, modules, &shared_aot_cache(), args)
    }

    /// Like [`WorkerProcess::start_with_modules`], with the AOT cache (and so the pulled
    /// modules) in `cache`, a test's own.
    pub fn start_with_cache(
        topology: &Topology,
        concurrency: usize,
        modules: &Path,
        cache: &Path,
        args: &[&str],
    ) -> Self {
        let mut worker = test_command(
            "warren-worker",
            &amqp_url(),
            topology,
            concurrency,
            modules,
            cache,
        )
        .args(args)
        .spawn()
        .expect("the worker starts");
        worker.wait_ready(Duration::from_secs(60));
        worker
    }

    /// Starts the test build's binary `name` (`warren-worker`, or one with `run`'s command line)
    /// without waiting for it to be ready (it may die before, on purpose).
    pub fn spawn_test(
        name: &str,
        url: &str,
        topology: &Topology,
        concurrency: usize,
        args: &[&str],
    ) -> Self {
        test_command(
            name,
            url,
            topology,
            concurrency,
            modules_dir(),
            &shared_aot_cache(),
        )
        .args(args)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` answers 200; panics when it does not within `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) {
        if let Err(error) = self.ready_by(Instant::now() + timeout) {
            panic!("{error:#}");
        }
    }

    /// Waits until `/readyz` answers 200 (connected, consuming, modules loaded); an error when
    /// the process exits first or `deadline` passes.
    pub fn ready_by(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(status) = self.try_status() {
                bail!("the worker exited before it was ready: {status}");
            }
            if http_get(self.metrics_addr, "/readyz").is_some_and(|(code, _)| code == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the worker was not ready in time");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `/metrics` exposition.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_addr, "/metrics")
            .expect("metrics endpoint answers")
            .1
    }

    /// User + system CPU time used so far (`/proc/<pid>/stat`).
    pub fn cpu_time(&self) -> Option<Duration> {
        process_cpu_time(self.pid())
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGTERM, then waits for the exit: the worker drains what it holds and exits.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("cannot run kill")?;
        Ok(self.child.wait()?)
    }

    /// The exit status if the process has ended, `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 per second on Linux.
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// The tests' worker: binary `name` of the test build (with `run` for `warren-worker`),
/// `concurrency` lanes, the AOT cache `cache`, warnings only.
pub fn test_command(
    name: &str,
    url: &str,
    topology: &Topology,
    concurrency: usize,
    modules: &Path,
    cache: &Path,
) -> WorkerCommand {
    let mut command = Command::new(binary(name));
    if name == "warren-worker" {
        command.arg("run");
    }
    let mut worker =
        WorkerCommand::new(command, url, topology, modules, cache).expect("a free local port");
    worker
        .args(["--max-concurrent-tasks", &concurrency.to_string()])
        .env("WARREN_LOG", "warn");
    worker
}

/// User + system CPU time process `pid` has used so far (`/proc/<pid>/stat`).
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / CLOCK_TICKS_PER_S,
    ))
}
