//! What a store holds for one task: the WASI context, the memory limiter and the task's deadline.

use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::HostMonotonicClock;

/// Per-task store data.
pub struct SandboxState {
    /// The guest's WASI view: in-memory stdio, explicit args and env, nothing else.
    pub(crate) wasi: WasiP1Ctx,
    /// Enforces the task's memory and table limits and remembers a refused growth.
    pub(crate) limiter: TaskLimiter,
    /// Zero of the guest's monotonic clock (see [`TaskClock`]); absolute sleeps are relative to it.
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

/// The guest's monotonic clock: nanoseconds since the task's store was created.
///
/// We supply it (rather than wasmtime-wasi's default) so that our `poll_oneoff` knows the origin
/// that absolute monotonic deadlines are measured from.
pub struct TaskClock {
    /// When the clock read zero.
    pub origin: Instant,
}

impl HostMonotonicClock for TaskClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The wall-clock guard fired: a blocking host call (a sleep) outlived the task's deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("task deadline of {0:?} reached while the guest was blocked in a host call")]
pub struct WallClockExceeded(pub Duration);
