//! The null executor behind `warren-null-worker`: every task is answered with its input as a
//! success, without wasm. Everything else is the daemon's real path (consume, decode, publish
//! the result confirmed, ack), so `warren-bench queue` measures with it the ceiling the broker
//! allows on a machine.

use warren_schemas::task::unix_now_ns;
use warren_schemas::{Outcome, ResolvedModule, Task, TaskResult, Timings};
use warren_worker::daemon::Execute;

/// Answers every task without running it, naming itself `worker_id` in results.
pub struct NullExecutor {
    /// The worker's id (`--worker-id`, else `<hostname>-<pid>`), as a real worker reports it.
    pub worker_id: String,
}

impl Execute for NullExecutor {
    fn execute(&self, task: Task, attempt: u32) -> TaskResult {
        null_result(task, attempt, &self.worker_id)
    }
}

/// The result a trivial echo task would get, made without a sandbox — the same size as the real
/// one, so the broker and the benchmark handle the same bytes: the task's module named, with a
/// digest as long as a real one (all zeros: no module was loaded).
pub fn null_result(task: Task, attempt: u32, worker_id: &str) -> TaskResult {
    let received_unix_ns = unix_now_ns();
    TaskResult {
        task_id: task.id,
        batch: task.batch,
        module: Some(ResolvedModule {
            name: task.module.name,
            digest: NULL_DIGEST.to_owned(),
        }),
        outcome: Outcome::Success,
        stdout: task.input,
        stderr: Vec::new(),
        stderr_truncated: false,
        exit_code: Some(0),
        timings: Timings {
            queue_wait_ns: received_unix_ns.saturating_sub(task.submitted_at_unix_ns),
            ..Timings::default()
        },
        worker_id: worker_id.to_owned(),
        attempt,
    }
}

/// The digest a null result carries: hex sha256 length, all zeros.
const NULL_DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[cfg(test)]
mod tests {
    use super::*;
    use warren_schemas::{encode, ModuleRef};

    #[test]
    fn a_null_result_echoes_the_input_as_a_success() {
        let task = Task::new(ModuleRef::latest("echo"), b"warren\n".to_vec());
        let id = task.id;
        let result = null_result(task, 2, "bench-1");
        assert_eq!(result.task_id, id);
        assert_eq!(result.outcome, Outcome::Success);
        assert_eq!(result.stdout, b"warren\n");
        assert_eq!((result.attempt, result.worker_id.as_str()), (2, "bench-1"));
    }

    #[test]
    fn a_null_result_is_as_large_as_a_real_one() {
        let task = Task::new(ModuleRef::latest("echo"), b"warren\n".to_vec());
        let mut real = null_result(task.clone(), 1, "w");
        real.module = Some(ResolvedModule {
            name: "echo".to_owned(),
            digest: "ab".repeat(32),
        });
        assert_eq!(
            encode(&null_result(task, 1, "w")).len(),
            encode(&real).len()
        );
    }
}
