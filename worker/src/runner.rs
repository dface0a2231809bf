//! From a [`Task`] to a [`TaskResult`]: look the module up, run it on the calling thread, and
//! fill in who ran it, on what, and where the time went.
//!
//! The daemon's lanes and `warren-worker exec` both go through [`TaskRunner::run_here`], so the
//! local exec a module author tries is exactly what a queued task gets.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tracing::error;
use warren_schemas::task::unix_now_ns;
use warren_schemas::{BatchRef, ModuleRef, Outcome, Task, TaskId, TaskResult, Timings};

use crate::pull::ModulePuller;
use crate::registry::{LoadedModule, ModuleRegistry};
use crate::sandbox::{Execution, GuestCall, Sandbox};

/// Runs tasks against a registry.
pub struct TaskRunner {
    registry: Arc<ModuleRegistry>,
    /// Copied into every result.
    worker_id: String,
    shards: FreeShards,
    /// Where modules the registry lacks come from (`--registry`), if anywhere.
    puller: Option<Arc<ModulePuller>>,
}

/// The sandbox's shards free for callers of [`TaskRunner::run_here`] (a shard runs one task at
/// a time): a caller beyond the shard count waits for one instead of sharing a shard. The
/// daemon's lanes never wait (there are as many lanes as shards); the gate is for every other
/// caller. A thread gets the shard it used last when that one is free, so each lane keeps its
/// own engine, warm slots and pages.
struct FreeShards {
    state: Mutex<ShardState>,
    freed: Condvar,
}

struct ShardState {
    /// Per shard: is a caller running on it.
    busy: Vec<bool>,
    /// Callers waiting for a shard: a freed shard signals the condvar only when there is one, so
    /// the lanes (which never wait) pay an uncontended lock per task, not a futex wake.
    waiting: usize,
}

thread_local! {
    /// The shard this thread ran on last.
    static LAST_SHARD: Cell<usize> = const { Cell::new(0) };
}

impl FreeShards {
    fn new(count: usize) -> Self {
        FreeShards {
            state: Mutex::new(ShardState {
                busy: vec![false; count.max(1)],
                waiting: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ShardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> ShardGuard<'_> {
        let mut state = self.lock();
        loop {
            let last = LAST_SHARD.with(Cell::get);
            let free = match state.busy.get(last) {
                Some(false) => Some(last),
                _ => state.busy.iter().position(|busy| !busy),
            };
            if let Some(shard) = free {
                state.busy[shard] = true;
                LAST_SHARD.with(|cell| cell.set(shard));
                return ShardGuard {
                    shards: self,
                    shard,
                };
            }
            state.waiting += 1;
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
        }
    }
}

struct ShardGuard<'a> {
    shards: &'a FreeShards,
    shard: usize,
}

impl Drop for ShardGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.shards.lock();
        state.busy[self.shard] = false;
        if state.waiting > 0 {
            self.shards.freed.notify_one();
        }
    }
}

/// What the result needs from the task once its input has moved into the sandbox.
struct Header {
    id: TaskId,
    batch: Option<BatchRef>,
    submitted_at_unix_ns: u64,
    attempt: u32,
    received: Instant,
    received_unix_ns: u64,
}

/// A task looked up: already answered (module not found, invalid) or ready to run.
enum Prepared {
    Done(Execution),
    Run(Arc<LoadedModule>, GuestCall),
}

impl TaskRunner {
    /// A runner for `registry`'s modules, naming itself `worker_id` in results.
    pub fn new(registry: Arc<ModuleRegistry>, worker_id: impl Into<String>) -> Self {
        let shards = FreeShards::new(registry.sandbox().shard_count());
        TaskRunner {
            registry,
            worker_id: worker_id.into(),
            shards,
            puller: None,
        }
    }

    /// This runner, pulling the modules its registry lacks with `puller`.
    pub fn with_puller(mut self, puller: Option<Arc<ModulePuller>>) -> Self {
        self.puller = puller;
        self
    }

    /// The name this runner reports in results (`--worker-id`).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The registry tasks are resolved against.
    pub fn registry(&self) -> &Arc<ModuleRegistry> {
        &self.registry
    }

    /// How many tasks can run at once: one per shard.
    pub fn concurrency(&self) -> usize {
        self.registry.sandbox().config().concurrency()
    }

    /// Runs `task` (delivery attempt `attempt`, from 1) on the calling thread and returns its
    /// result.
    ///
    /// The thread should not be a tokio worker: the guest runs (or sleeps) on it for up to its
    /// deadline. At most [`concurrency`](Self::concurrency) tasks run at once, one shard
    /// each; more callers wait for a shard (the daemon has exactly as many lanes as shards).
    pub fn run_here(&self, task: Task, attempt: u32) -> TaskResult {
        let (header, prepared) = self.prepare(task, attempt);
        match prepared {
            Prepared::Done(execution) => finish(&self.worker_id, header, None, execution),
            Prepared::Run(module, call) => {
                let shard = self.shards.take();
                let execution = run_guarded(self.registry.sandbox(), shard.shard, &module, call);
                drop(shard);
                finish(&self.worker_id, header, Some(&module), execution)
            }
        }
    }

    fn prepare(&self, task: Task, attempt: u32) -> (Header, Prepared) {
        let header = Header {
            id: task.id,
            batch: task.batch,
            submitted_at_unix_ns: task.submitted_at_unix_ns,
            attempt,
            received: Instant::now(),
            received_unix_ns: unix_now_ns(),
        };
        let refuse = |outcome| Prepared::Done(Execution::refused(outcome));
        if let Err(error) = task.module.validate() {
            return (
                header,
                refuse(Outcome::InvalidTask {
                    reason: error.to_string(),
                }),
            );
        }
        let module = match self.registry.resolve(&task.module) {
            Ok(module) => module,
            Err(error) => match self.pull(&task.module) {
                Ok(module) => module,
                Err(reason) => {
                    tracing::debug!(task_id = %task.id, %error, reason = reason.as_deref().unwrap_or("-"), "module lookup failed");
                    return (header, Prepared::Done(not_found(&task.module, reason)));
                }
            },
        };
        let call = GuestCall {
            program: module.name.clone(),
            input: task.input,
            args: task.args,
            env: task.env,
            limits: task.limits,
        };
        (header, Prepared::Run(module, call))
    }
}

impl TaskRunner {
    /// A module the registry lacks, from the puller; without one, or when the pull fails, the
    /// reason (if there is more to say than "not found").
    fn pull(&self, wanted: &ModuleRef) -> Result<Arc<LoadedModule>, Option<String>> {
        let Some(puller) = &self.puller else {
            return Err(None);
        };
        match catch_unwind(AssertUnwindSafe(|| puller.resolve(wanted))) {
            Ok(Ok(module)) => Ok(module),
            Ok(Err(error)) => Err(Some(format!(
                "not in the modules directory, and pulling it from the registry failed: {error}"
            ))),
            Err(_) => {
                error!(module = %wanted, "module pull panicked; task reported as module not found");
                Err(Some(
                    "internal error in the worker while pulling the module".into(),
                ))
            }
        }
    }
}

/// A module-not-found answer; `reason`, when given, goes to the result's stderr (there is no
/// guest to write any).
fn not_found(wanted: &ModuleRef, reason: Option<String>) -> Execution {
    let mut execution = Execution::refused(Outcome::ModuleNotFound {
        module: wanted.to_string(),
    });
    if let Some(reason) = reason {
        execution.stderr = format!("warren: module {wanted}: {reason}\n").into_bytes();
    }
    execution
}

/// Runs `call` on `module` in `sandbox`'s `shard`, turning a panic into a trapped outcome.
fn run_guarded(
    sandbox: &Sandbox,
    shard: usize,
    module: &LoadedModule,
    call: GuestCall,
) -> Execution {
    // The sandbox maps every guest behaviour to an outcome; a panic here would be a bug in
    // warren or wasmtime, and it still must not take the thread (and the slot) with it.
    catch_unwind(AssertUnwindSafe(|| sandbox.run(shard, &module.warm, call))).unwrap_or_else(|panic| {
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

/// The task's result from its execution.
fn finish(
    worker_id: &str,
    header: Header,
    module: Option<&LoadedModule>,
    execution: Execution,
) -> TaskResult {
    let Execution {
        outcome,
        exit_code,
        stdout,
        stderr,
        stderr_truncated,
        instantiate,
        run,
    } = execution;
    TaskResult {
        task_id: header.id,
        batch: header.batch,
        module: module.map(LoadedModule::resolved),
        outcome,
        stdout,
        stderr,
        stderr_truncated,
        exit_code,
        timings: Timings {
            queue_wait_ns: header
                .received_unix_ns
                .saturating_sub(header.submitted_at_unix_ns),
            instantiate_ns: nanos(instantiate),
            run_ns: nanos(run),
            total_ns: nanos(header.received.elapsed()),
        },
        worker_id: worker_id.to_owned(),
        attempt: header.attempt,
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The default worker id: `<hostname>-<pid>`.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_at_once_get_distinct_shards_and_a_thread_gets_its_own_back() {
        let shards = FreeShards::new(2);
        let mine = shards.take();
        let first = mine.shard;
        let (other, other_again) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let other = shards.take().shard;
                    // Freed and taken again by the same thread: the same shard.
                    (other, shards.take().shard)
                })
                .join()
                .unwrap()
        });
        assert_ne!(first, other, "two callers at once shared a shard");
        assert_eq!(other, other_again);
        drop(mine);
        assert_eq!(shards.take().shard, first);
    }

    #[test]
    fn a_caller_beyond_the_shards_waits_for_one() {
        let shards = FreeShards::new(1);
        let held = shards.take();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| shards.take().shard);
            // The waiter can only finish once the shard is given back.
            while shards.lock().waiting == 0 {
                std::thread::yield_now();
            }
            drop(held);
            assert_eq!(waiter.join().unwrap(), 0);
        });
    }
}
