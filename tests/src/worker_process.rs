//! A real `warren-worker run` process on a test's queues: start it, wait until it is ready,
//! signal it, read its metrics.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use warren_schemas::Topology;

use crate::broker::amqp_url;
use crate::{binary, modules_dir, shared_aot_cache};

/// A running worker process.
pub struct WorkerProcess {
    child: Child,
    /// Where its `/metrics`, `/healthz` and `/readyz` answer.
    pub metrics_addr: SocketAddr,
}

impl WorkerProcess {
    /// Starts a worker on `topology` with `concurrency` slots and extra CLI `args`, and waits
    /// until `/readyz` says it consumes.
    pub fn start(topology: &Topology, concurrency: usize, args: &[&str]) -> Self {
        Self::start_on(&amqp_url(), topology, concurrency, args)
    }

    /// Like [`WorkerProcess::start`], connected to the broker (or virtual host) at `url`.
    pub fn start_on(url: &str, topology: &Topology, concurrency: usize, args: &[&str]) -> Self {
        let mut worker = Self::spawn_on(url, topology, concurrency, args);
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
        let mut worker = Self::spawn_with(&amqp_url(), topology, concurrency, modules, args);
        worker.wait_ready(Duration::from_secs(60));
        worker
    }

    /// Starts a worker without waiting for it to be ready (it may die before, on purpose).
    pub fn spawn_on(url: &str, topology: &Topology, concurrency: usize, args: &[&str]) -> Self {
        Self::spawn_with(url, topology, concurrency, modules_dir(), args)
    }

    fn spawn_with(
        url: &str,
        topology: &Topology,
        concurrency: usize,
        modules: &Path,
        args: &[&str],
    ) -> Self {
        let metrics_addr = free_local_addr();
        let child = Command::new(binary("warren-worker"))
            .arg("run")
            .args([
                "--tasks-queue",
                &topology.tasks,
                "--dead-queue",
                &topology.dead,
            ])
            .args(["--results-queue", &topology.results])
            .args(["--delivery-limit", &topology.delivery_limit.to_string()])
            .args(["--max-concurrent-tasks", &concurrency.to_string()])
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .arg("--modules")
            .arg(modules)
            .arg("--cache")
            .arg(shared_aot_cache())
            .args(args)
            .env("AMQP_URL", url)
            .env("WARREN_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("warren-worker starts");
        WorkerProcess {
            child,
            metrics_addr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("worker exited before it was ready: {status}");
            }
            if http_get(self.metrics_addr, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker not ready within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `/metrics` exposition.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_addr, "/metrics")
            .expect("metrics endpoint answers")
            .1
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
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

fn free_local_addr() -> SocketAddr {
    warren_worker::probe::free_local_addr().expect("a free local port")
}

pub use warren_worker::probe::http_get;
