//! A real `warren-worker run` process on a test's queues: start it, wait until it is ready,
//! signal it, read its metrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use warren_worker::daemon::Topology;

use crate::broker::amqp_url;
use crate::{binary, modules_dir};

/// A running worker process.
pub struct WorkerProcess {
    child: Child,
    /// Where its `/metrics`, `/healthz` and `/readyz` answer.
    pub metrics_addr: SocketAddr,
    _cache: tempfile::TempDir,
}

impl WorkerProcess {
    /// Starts a worker on `topology` with `concurrency` slots and extra CLI `args`, and waits
    /// until `/readyz` says it consumes.
    pub fn start(topology: &Topology, concurrency: usize, args: &[&str]) -> Self {
        let cache = tempfile::tempdir().expect("cache dir");
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
            .args(["--max-concurrent-tasks", &concurrency.to_string()])
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .arg("--modules")
            .arg(modules_dir())
            .arg("--cache")
            .arg(cache.path())
            .args(args)
            .env("AMQP_URL", amqp_url())
            .env("WARREN_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("warren-worker starts");
        let mut worker = WorkerProcess {
            child,
            metrics_addr,
            _cache: cache,
        };
        worker.wait_ready(Duration::from_secs(60));
        worker
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
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A minimal HTTP/1.0 GET: (status code, body), or None when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}
