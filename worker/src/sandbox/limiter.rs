//! The store's resource limiter: caps one task's linear memory and tables.

use wasmtime::ResourceLimiter;

/// Caps linear memory and table growth for one task.
///
/// The memory cap applies to the sum of the task's memories: a module has one, a component may
/// have several, and it must not get the cap once per memory. wasmtime asks the limiter for
/// every memory's creation (from 0 to its initial size) and growth, so the sum is exact.
///
/// A refused growth is not an error to the guest: `memory.grow` returns -1 as the spec says, and
/// a guest that copes (C's `malloc` returning NULL) may go on. Most guests abort instead; the
/// `limit_hit` flag lets the sandbox report that abort as "memory limit exceeded" rather than
/// as an anonymous trap.
#[derive(Debug)]
pub struct TaskLimiter {
    /// Largest sum of the task's linear memories, in bytes.
    max_memory: usize,
    /// Largest table, in elements.
    max_table_elements: usize,
    /// Bytes of linear memory the task holds now.
    memory_in_use: usize,
    /// Set once a memory growth was refused.
    pub memory_limit_hit: bool,
}

impl TaskLimiter {
    /// A limiter for a task of at most `max_memory` bytes of memory in all and tables of at
    /// most `max_table_elements` elements.
    pub fn new(max_memory: u64, max_table_elements: usize) -> Self {
        TaskLimiter {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            max_table_elements,
            memory_in_use: 0,
            memory_limit_hit: false,
        }
    }
}

impl TaskLimiter {
    /// Bytes of linear memory the task holds now, all memories together: no one memory of the
    /// task is larger.
    pub fn memory_in_use(&self) -> usize {
        self.memory_in_use
    }
}

impl ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let in_use = (self.memory_in_use - current.min(self.memory_in_use)).saturating_add(desired);
        let allowed = in_use <= self.max_memory;
        if allowed {
            self.memory_in_use = in_use;
        } else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_is_for_all_memories_together() {
        let mut limiter = TaskLimiter::new(10, 1);
        assert!(limiter.memory_growing(0, 4, None).unwrap());
        assert!(limiter.memory_growing(0, 4, None).unwrap());
        // The first memory grows from 4 to 6: 10 in all.
        assert!(limiter.memory_growing(4, 6, None).unwrap());
        assert!(!limiter.memory_limit_hit);
        // The second from 4 to 5 would make 11.
        assert!(!limiter.memory_growing(4, 5, None).unwrap());
        assert!(limiter.memory_limit_hit);
    }

    #[test]
    fn one_memory_may_use_the_whole_cap() {
        let mut limiter = TaskLimiter::new(10, 1);
        assert!(limiter.memory_growing(0, 1, None).unwrap());
        assert!(limiter.memory_growing(1, 10, None).unwrap());
        assert!(!limiter.memory_growing(10, 11, None).unwrap());
    }
}
