//! From a [`Task`] to a [`TaskResult`]: look the module up, run it on the executor, and fill in
//! who ran it, on what, and where the time went.
//!
//! The daemon (`run_then`) and `warren-worker exec` (`run_blocking`) both go through [`TaskRunner`], so the
//! local exec a module author tries is exactly what a queued task gets.

use std::sync::Arc;
use std::time::Instant;

use warren_schemas::task::unix_now_ns;
use warren_schemas::{BatchRef, Outcome, Task, TaskId, TaskResult, Timings};

use crate::executor::{run_guarded, Executor};
use crate::registry::{LoadedModule, ModuleRegistry};
use crate::sandbox::{Execution, GuestCall};

/// Runs tasks against a registry on an executor.
pub struct TaskRunner {
    registry: Arc<ModuleRegistry>,
    executor: Executor,
    /// Shared with every executor job, which copies it into its result.
    worker_id: Arc<str>,
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
    /// A runner whose executor has one thread per pool slot of the registry's sandbox.
    pub fn start(
        registry: Arc<ModuleRegistry>,
        worker_id: impl Into<String>,
    ) -> std::io::Result<Self> {
        let executor = Executor::start(registry.sandbox().clone())?;
        Ok(TaskRunner {
            registry,
            executor,
            worker_id: Arc::from(worker_id.into()),
        })
    }

    /// The registry tasks are resolved against.
    pub fn registry(&self) -> &Arc<ModuleRegistry> {
        &self.registry
    }

    /// How many tasks can run at once.
    pub fn concurrency(&self) -> usize {
        self.executor.concurrency()
    }

    /// Runs `task` (delivery attempt `attempt`, from 1) and waits for its result (for callers
    /// outside an async runtime, like `warren-worker exec`).
    pub fn run_blocking(&self, task: Task, attempt: u32) -> TaskResult {
        let (header, prepared) = self.prepare(task, attempt);
        match prepared {
            Prepared::Done(execution) => finish(&self.worker_id, header, None, execution),
            Prepared::Run(module, call) => {
                let execution = self.executor.run_blocking(module.clone(), call);
                finish(&self.worker_id, header, Some(&module), execution)
            }
        }
    }

    /// Runs `task` and hands its result to `then` on the executor thread that ran it, so what
    /// the caller does next (the daemon publishes the result) costs no hop back to the async
    /// side. A task answered without running (module not found, invalid) calls `then` at once,
    /// on the caller's thread. If the executor has stopped, `then` is never called.
    pub fn run_then(
        &self,
        task: Task,
        attempt: u32,
        then: impl FnOnce(TaskResult) + Send + 'static,
    ) {
        let (header, prepared) = self.prepare(task, attempt);
        match prepared {
            Prepared::Done(execution) => then(finish(&self.worker_id, header, None, execution)),
            Prepared::Run(module, call) => {
                let worker_id = self.worker_id.clone();
                self.executor.spawn(move |sandbox| {
                    let execution = run_guarded(sandbox, &module, call);
                    then(finish(&worker_id, header, Some(&module), execution));
                });
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
            Err(error) => {
                let outcome = Outcome::ModuleNotFound {
                    module: task.module.to_string(),
                };
                tracing::debug!(task_id = %task.id, %error, "module lookup failed");
                return (header, refuse(outcome));
            }
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
