//! The store's resource limiter: caps one task's linear memory and tables.

use wasmtime::ResourceLimiter;

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
