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

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

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
    jobs: Arc<JobQueue>,
    threads: Vec<JoinHandle<()>>,
}

/// The jobs waiting for a thread: a lock-free queue, plus parking for idle threads. A thread with
/// nothing to do spins a few µs and parks (no `sched_yield` back-off: on a small machine the
/// broker wants that CPU), and a submit wakes a thread only when one is parked; under load
/// threads take jobs without touching the lock. Measured against crossbeam's own blocking
/// `recv` (spin, then yield, then park): +12 % tasks/s through the broker, but a lower ratio in
/// `bench executor`, whose dispatching thread is starved without the yields (BENCHMARKS.md).
/// Empty polls of the queue before an idle thread parks.
const SPINS_BEFORE_PARKING: u32 = 32;

struct JobQueue {
    sender: Sender<Job>,
    receiver: Receiver<Job>,
    parked: AtomicUsize,
    closed: AtomicBool,
    lock: Mutex<()>,
    ready: Condvar,
}

impl JobQueue {
    fn new() -> Self {
        let (sender, receiver) = crossbeam_channel::unbounded();
        JobQueue {
            sender,
            receiver,
            parked: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            lock: Mutex::new(()),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The lock guards no data, so a poisoned one is as good as any.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, job: Job) {
        if self.closed.load(Ordering::SeqCst) || self.sender.send(job).is_err() {
            return; // stopping: the job is dropped
        }
        // Pairs with the fence in `pop`: either the parking thread sees this job, or this sees
        // it parked.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) > 0 {
            // Taking the lock waits until the parking thread is inside `wait`.
            let _guard = self.lock();
            self.ready.notify_one();
        }
    }

    /// The next job; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Job> {
        loop {
            // A short spin (a few µs, no yielding) catches the next job of a burst without the
            // cost of parking and being woken.
            for _ in 0..SPINS_BEFORE_PARKING {
                if let Ok(job) = self.receiver.try_recv() {
                    return Some(job);
                }
                std::hint::spin_loop();
            }
            let guard = self.lock();
            self.parked.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let job = match self.receiver.try_recv() {
                Ok(job) => Some(job),
                // `closed` is set under the lock, so it cannot be missed here.
                Err(_) if self.closed.load(Ordering::SeqCst) => {
                    self.parked.fetch_sub(1, Ordering::SeqCst);
                    return None;
                }
                Err(_) => {
                    let guard = self
                        .ready
                        .wait(guard)
                        .unwrap_or_else(PoisonError::into_inner);
                    drop(guard);
                    None
                }
            };
            self.parked.fetch_sub(1, Ordering::SeqCst);
            if job.is_some() {
                return job;
            }
        }
    }

    /// Queued jobs still run; new ones are dropped; threads end once the queue is empty.
    fn close(&self) {
        let _guard = self.lock();
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }
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
        let jobs = Arc::new(JobQueue::new());
        let threads = (0..count)
            .map(|i| {
                let queue = jobs.clone();
                let sandbox = sandbox.clone();
                thread::Builder::new()
                    .name(format!("warren-exec-{i}"))
                    .spawn(move || serve(&sandbox, &queue))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Executor { jobs, threads })
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
        self.jobs.push(Box::new(job));
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
        self.jobs.close();
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

fn serve(sandbox: &Sandbox, queue: &JobQueue) {
    while let Some(job) = queue.pop() {
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
fn executor_stopped() -> Execution {
    Execution::refused(Outcome::Trap {
        message: "internal error in the worker: executor stopped".into(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::engine::Allocation;
    use crate::SandboxConfig;

    fn executor(threads: usize) -> Executor {
        let config = SandboxConfig {
            max_concurrent_tasks: Some(threads),
            ..SandboxConfig::default()
        };
        let sandbox = Arc::new(Sandbox::new(config, Allocation::OnDemandCow).unwrap());
        Executor::start(sandbox).unwrap()
    }

    #[test]
    fn every_job_runs_once_whether_threads_are_busy_or_parked() {
        let executor = executor(2);
        let ran = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for submitter in 0..2 {
                let (executor, ran) = (&executor, &ran);
                scope.spawn(move || {
                    for i in 0..5_000 {
                        let ran = ran.clone();
                        executor.spawn(move |_| {
                            ran.fetch_add(1, Ordering::SeqCst);
                        });
                        // Now and then let the threads run dry and park.
                        if (i + submitter) % 500 == 0 {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                });
            }
        });
        // A parked thread must still be woken for a single late job.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::sleep(Duration::from_millis(20));
        executor.spawn(move |_| done.send(()).unwrap());
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a job submitted to parked threads runs");
        executor.shutdown();
        assert_eq!(ran.load(Ordering::SeqCst), 10_000);
    }

    #[test]
    fn shutdown_runs_what_is_queued_then_ends_the_threads() {
        let executor = executor(1);
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            let ran = ran.clone();
            executor.spawn(move |_| {
                std::thread::sleep(Duration::from_micros(100));
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        executor.shutdown();
        assert_eq!(ran.load(Ordering::SeqCst), 100);
    }
}
