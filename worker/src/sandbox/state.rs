//! What a store holds for one task: the guest's WASI state, the memory limiter and the task's
//! deadline.

use std::time::Instant;

use wasmtime::{Memory, ResourceLimiter};

use super::wasi::{CommandLine, Stdio};

/// Per-task store data.
pub struct SandboxState {
    /// argv and environment.
    pub(crate) command_line: CommandLine,
    /// stdin, stdout and stderr: the guest's only descriptors.
    pub(crate) stdio: Stdio,
    /// Enforces the task's memory and table limits and remembers a refused growth.
    pub(crate) limiter: TaskLimiter,
    /// The guest's exported memory, once instantiated: host calls use it without looking the
    /// export up by name.
    pub(crate) memory: Option<Memory>,
    /// Zero of the guest's monotonic clock; absolute monotonic sleeps are relative to it.
    pub(crate) clock_origin: Instant,
    /// Wall-clock instant at which blocking host calls stop waiting and the task times out.
    pub(crate) deadline: Instant,
}

/// Caps linear memory and table growth for one task.
///
/// A refused growth is not an error to the guest: `memory.grow` returns -1 as the spec says, and
/// a guest that copes (C's `malloc` returning NULL) may go on. Most guests abort instead; the
/// `limit_hit` flag lets the sandbox report that abort as "memory limit exceeded" rather than
/// as an anonymous trap.
#[derive(Debug)]
pub struct TaskLimiter {
    /// Largest linear memory, in bytes.
    pub max_memory: usize,
    /// Largest table, in elements.
    pub max_table_elements: usize,
    /// Set once a memory growth was refused.
    pub memory_limit_hit: bool,
}

impl ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_memory;
        if !allowed {
            self.memory_limit_hit = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}
