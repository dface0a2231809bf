//! What a worker answers for a task: the outcome, the guest's output and where the time went.
//!
//! Guest behaviour is data, not an error: a module that exits 1, traps or runs out of time still
//! produces a [`TaskResult`] that is published and acknowledged like any other.

use serde::{Deserialize, Serialize};

use crate::task::{BatchRef, TaskId};

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The guest returned from `_start` or exited with code 0.
    Success,
    /// The guest exited with a non-zero code. A result, not a crash: `grep` exits 1 when nothing
    /// matches.
    NonZeroExit {
        /// The exit code passed to `proc_exit`.
        code: i32,
    },
    /// The guest trapped (panic, `unreachable`, division by zero, stack overflow, ...).
    Trap {
        /// What the trap was, as wasmtime describes it.
        message: String,
    },
    /// The guest used up its CPU deadline.
    Timeout {
        /// The deadline that applied, in milliseconds.
        limit_ms: u64,
    },
    /// The guest tried to grow its memory past its limit.
    MemoryLimitExceeded {
        /// The limit that applied, in bytes.
        limit_bytes: u64,
    },
    /// The guest wrote more to stdout than allowed.
    OutputLimitExceeded {
        /// The limit that applied, in bytes.
        limit_bytes: u64,
    },
    /// No module with that name (and digest) is loaded on the worker.
    ModuleNotFound {
        /// The reference the task gave.
        module: String,
    },
    /// The task itself is unusable (bad module reference, bad env name, ...).
    InvalidTask {
        /// What is wrong with it.
        reason: String,
    },
    /// The task ran, but its result could not be published as it was: larger than the worker
    /// publishes (`--max-result`), or refused by the broker (nack). This small result takes its
    /// place (stdout and stderr dropped) so the task still gets an answer. Last among the
    /// variants, so every earlier one keeps its encoding.
    ResultRefused {
        /// Why the real result was not published, and what the task's outcome had been.
        reason: String,
    },
}

impl Outcome {
    /// Process exit code for this outcome, shared by every CLI that reports one: the guest's own
    /// code when it exited, otherwise 124 timeout (as `timeout(1)`), 125 memory limit, 126 output
    /// limit, 127 module not found (as a shell), 128 trap, 2 invalid task, 74 result refused
    /// (`EX_IOERR`: the answer was lost on the way, not the guest's doing).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Success => 0,
            Outcome::NonZeroExit { code } => *code,
            Outcome::Timeout { .. } => 124,
            Outcome::MemoryLimitExceeded { .. } => 125,
            Outcome::OutputLimitExceeded { .. } => 126,
            Outcome::ModuleNotFound { .. } => 127,
            Outcome::Trap { .. } => 128,
            Outcome::InvalidTask { .. } => 2,
            Outcome::ResultRefused { .. } => 74,
        }
    }

    /// Every label [`Outcome::label`] can return, for pre-registering metrics.
    pub const LABELS: [&'static str; 9] = [
        "success",
        "nonzero_exit",
        "trap",
        "timeout",
        "memory_limit",
        "output_limit",
        "module_not_found",
        "invalid_task",
        "result_refused",
    ];

    /// A short, bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::NonZeroExit { .. } => "nonzero_exit",
            Outcome::Trap { .. } => "trap",
            Outcome::Timeout { .. } => "timeout",
            Outcome::MemoryLimitExceeded { .. } => "memory_limit",
            Outcome::OutputLimitExceeded { .. } => "output_limit",
            Outcome::ModuleNotFound { .. } => "module_not_found",
            Outcome::InvalidTask { .. } => "invalid_task",
            Outcome::ResultRefused { .. } => "result_refused",
        }
    }

    /// True only for [`Outcome::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Success => f.write_str("success"),
            Outcome::NonZeroExit { code } => write!(f, "exited with code {code}"),
            Outcome::Trap { message } => write!(f, "trapped: {message}"),
            Outcome::Timeout { limit_ms } => write!(f, "timed out after {limit_ms} ms"),
            Outcome::MemoryLimitExceeded { limit_bytes } => {
                write!(f, "memory limit of {limit_bytes} bytes exceeded")
            }
            Outcome::OutputLimitExceeded { limit_bytes } => {
                write!(f, "output limit of {limit_bytes} bytes exceeded")
            }
            Outcome::ModuleNotFound { module } => write!(f, "module {module:?} not found"),
            Outcome::InvalidTask { reason } => write!(f, "invalid task: {reason}"),
            Outcome::ResultRefused { reason } => write!(f, "result not published: {reason}"),
        }
    }
}

/// The exact module version a task ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedModule {
    /// Module name.
    pub name: String,
    /// Lowercase hex sha256 of the module's bytes.
    pub digest: String,
}

/// Where a task's time went, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// From the producer's submitted-at time to the worker starting the task.
    pub queue_wait_ns: u64,
    /// Creating the instance from the warm `InstancePre`.
    pub instantiate_ns: u64,
    /// Running `_start` until the guest returned, exited or was stopped.
    pub run_ns: u64,
    /// The worker's whole handling of the task, from decode to the result being ready.
    pub total_ns: u64,
}

/// The answer to one [`crate::Task`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task this answers.
    pub task_id: TaskId,
    /// The task's batch position, copied from the task.
    pub batch: Option<BatchRef>,
    /// The module version that ran, when one was found.
    pub module: Option<ResolvedModule>,
    /// How the task ended.
    pub outcome: Outcome,
    /// Everything the guest wrote to stdout (up to the output limit).
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// What the guest wrote to stderr, truncated at the worker's stderr cap.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// True when stderr was cut at the cap.
    pub stderr_truncated: bool,
    /// The guest's exit code, when it exited (0 on success).
    pub exit_code: Option<i32>,
    /// Where the time went.
    pub timings: Timings,
    /// Which worker ran it (host name and process id by default).
    pub worker_id: String,
    /// Which delivery attempt this was, from 1.
    pub attempt: u32,
}
