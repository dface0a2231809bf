//! The executor: a fixed set of dedicated OS threads that run guests.
//!
//! Guests never run on tokio worker threads — wasmtime-wasi's synchronous host calls `block_on`
//! internally and would panic there — and a guest hogging a thread must not stall the async
//! side's I/O. There are exactly as many threads as pool instance slots, so a submitted job
//! always finds a slot: a full executor is back-pressure (the job waits in the queue), never an
//! error shown to a task.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;
use tracing::error;
use warren_schemas::Outcome;

use crate::registry::LoadedModule;
use crate::sandbox::{Execution, GuestCall, Sandbox};

/// Work for an executor thread; it gets the thread's sandbox.
type Job = Box<dyn FnOnce(&Sandbox) + Send>;

/// A pool of sandbox threads.
pub struct Executor {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Executor {
    /// Starts one thread per concurrent task the sandbox's pool can hold.
    pub fn start(sandbox: Arc<Sandbox>) -> std::io::Result<Self> {
        let count = sandbox.config().concurrency();
        Self::start_with_threads(sandbox, count)
    }

    /// Starts `count` threads, at most the pool's slot count (more would only wait for slots).
    pub fn start_with_threads(sandbox: Arc<Sandbox>, count: usize) -> std::io::Result<Self> {
        let count = count.clamp(1, sandbox.config().concurrency());
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let threads = (0..count)
            .map(|i| {
                let queue = queue.clone();
                let sandbox = sandbox.clone();
                thread::Builder::new()
                    .name(format!("warren-exec-{i}"))
                    .spawn(move || serve(&sandbox, &queue))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Executor {
            jobs: Some(jobs),
            threads,
        })
    }

    /// Number of threads, i.e. tasks that can run at once.
    pub fn concurrency(&self) -> usize {
        self.threads.len()
    }

    /// Queues `call` to run on `module`; the receiver yields its [`Execution`]. Await it from
    /// async code or call `blocking_recv` from a plain thread.
    pub fn submit(
        &self,
        module: Arc<LoadedModule>,
        call: GuestCall,
    ) -> oneshot::Receiver<Execution> {
        let (reply, execution) = oneshot::channel();
        // The caller may have given up waiting (shutdown deadline); nothing else to do then.
        // If the job is never run, the dropped reply tells the caller, whose receiver errors.
        self.spawn(move |sandbox| {
            let _ = reply.send(run_guarded(sandbox, &module, call));
        });
        execution
    }

    /// Queues `job` to run on an executor thread, which then goes on with whatever `job` does
    /// next (the daemon publishes the result from there, saving a hop back to the async side).
    /// Jobs of a stopped executor are dropped.
    pub fn spawn(&self, job: impl FnOnce(&Sandbox) + Send + 'static) {
        if let Some(jobs) = &self.jobs {
            // Sending only fails when every thread is gone.
            let _ = jobs.send(Box::new(job));
        }
    }

    /// Runs `call` on `module` and waits for it (for callers outside an async runtime).
    pub fn run_blocking(&self, module: Arc<LoadedModule>, call: GuestCall) -> Execution {
        self.submit(module, call)
            .blocking_recv()
            .unwrap_or_else(|_| executor_stopped())
    }

    /// Lets queued jobs finish, then stops the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(sandbox: &Sandbox, queue: &Receiver<Job>) {
    for job in queue {
        // A job's own code must not take the thread (and its pool slot) down with it.
        if catch_unwind(AssertUnwindSafe(|| job(sandbox))).is_err() {
            error!("an executor job panicked; the thread goes on");
        }
    }
}

/// Runs `call` on `module` in `sandbox`, turning a panic into a trapped outcome.
pub fn run_guarded(sandbox: &Sandbox, module: &LoadedModule, call: GuestCall) -> Execution {
    // The sandbox maps every guest behaviour to an outcome; a panic here would be a bug in
    // warren or wasmtime, and it still must not take the thread (and the slot) with it.
    catch_unwind(AssertUnwindSafe(|| sandbox.run(&module.pre, call))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        error!(module = %module.short_ref(), %message, "sandbox panicked; task reported as trapped");
        Execution::refused(Outcome::Trap {
            message: format!("internal error in the worker: {message}"),
        })
    })
}

/// What a caller gets when the executor stopped before answering.
pub fn executor_stopped() -> Execution {
    Execution::refused(Outcome::Trap {
        message: "internal error in the worker: executor stopped".into(),
    })
}
