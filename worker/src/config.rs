//! The sandbox's knobs, in one struct, with their defaults, units and costs.
//!
//! Everything the engines, their pools and the daemon's lanes need is derived from this struct,
//! so the invariant "never more tasks running than the pools hold" is true by construction: there
//! are exactly [`SandboxConfig::max_concurrent_tasks`] shards (one engine and pool each, see
//! `crate::sandbox`) and the daemon has exactly that many lane threads, each running one task at
//! a time on its own shard.
//!
//! # Memory cost
//! Each shard's pool has `max(warm_modules, max_memories_per_component)` memory slots and
//! reserves, up front, *virtual* address space of `memory_reservation + memory_guard` per slot:
//! in all `max_concurrent_tasks × max(warm_modules, max_memories_per_component) ×
//! (memory_reservation + memory_guard)` (default on a 2-core machine: 2 × 4 × (4 GiB + 32 MiB) ≈
//! 32 GiB virtual, nothing resident). Resident memory
//! grows only with what guests touch, up to `max_concurrent_tasks × max_memory` for running
//! tasks plus up to `keep_resident` per idle warm slot. If the reservation fails (`ulimit -v`,
//! `vm.overcommit_memory=2`), lower `--warm-modules`, `--max-concurrent-tasks` or
//! `--memory-reservation`.

use std::time::Duration;

use warren_schemas::args::{parse_bytes, parse_duration, parse_positive};

/// Default per-task cap on linear memory: 256 MiB.
pub const DEFAULT_MAX_MEMORY: u64 = 256 << 20;
/// Default per-task CPU deadline: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default per-task cap on stdout: 8 MiB (the result must fit in one broker message).
pub const DEFAULT_MAX_OUTPUT: u64 = 8 << 20;
/// Default per-task cap on stderr: 64 KiB; stderr beyond it is dropped, not fatal.
pub const DEFAULT_MAX_STDERR: u64 = 64 << 10;
/// Default virtual reservation per linear memory: 4 GiB, which lets compiled code skip bounds
/// checks on 32-bit memories.
pub const DEFAULT_MEMORY_RESERVATION: u64 = 4 << 30;
/// Default guard region after each linear memory: 32 MiB.
pub const DEFAULT_MEMORY_GUARD: u64 = 32 << 20;
/// Default cap on table elements per table: 20 000 (8 bytes each when resident).
pub const DEFAULT_TABLE_ELEMENTS: usize = 20_000;
/// Default cap on an instance's runtime state (`VMContext`): 1 MiB.
pub const DEFAULT_MAX_CORE_INSTANCE_SIZE: u64 = 1 << 20;
/// Default cap on the core instances one component creates: 32 (its modules, and the shims and
/// adapters its toolchain adds).
pub const DEFAULT_MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Default cap on linear memories per component: 2 (one for the program, one for an adapter).
pub const DEFAULT_MAX_MEMORIES_PER_COMPONENT: u32 = 2;
/// Default cap on tables per component: 8 (a shim table per lowered import group, plus the
/// program's).
pub const DEFAULT_MAX_TABLES_PER_COMPONENT: u32 = 8;
/// Default cap on a component instance's runtime state (`VMComponentContext`): 1 MiB.
pub const DEFAULT_MAX_COMPONENT_INSTANCE_SIZE: u64 = 1 << 20;
/// Default guest call-stack cap: 512 KiB (deeper recursion traps as a stack overflow).
pub const DEFAULT_MAX_WASM_STACK: u64 = 512 << 10;
/// Host stack a guest-running thread has beyond `--max-wasm-stack`: the host frames below and
/// around the guest's (WASI calls, trap handling). Guests run on the thread's own stack.
pub const HOST_STACK_HEADROOM: u64 = 1 << 20;
/// Default dirty memory reset in place per freed slot: 64 KiB (see `keep_resident`).
pub const DEFAULT_KEEP_RESIDENT: u64 = 64 << 10;
/// Default modules a lane keeps warm: 4.
pub const DEFAULT_WARM_MODULES: usize = 4;
/// Default epoch tick: 10 ms. Deadlines are rounded up to whole ticks.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine, pool and concurrency configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxConfig {
    /// Tasks run at the same time: lane threads, each with its own engine and pool. Default: one
    /// per CPU core. Each costs `warm_modules × (memory_reservation + memory_guard)` of virtual
    /// memory.
    #[arg(long, env = "WARREN_MAX_CONCURRENT_TASKS", value_parser = parse_positive)]
    pub max_concurrent_tasks: Option<usize>,

    /// Largest linear memory a task may grow to (cap; a task can only ask for less).
    #[arg(long = "max-memory", env = "WARREN_MAX_MEMORY", default_value = "256MiB", value_parser = parse_bytes)]
    pub max_memory: u64,

    /// CPU deadline per task (cap; a task can only ask for less). E.g. `30s`, `250ms`.
    #[arg(long = "timeout", env = "WARREN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Largest stdout a task may write (cap); more ends the task as "output limit exceeded".
    #[arg(long = "max-output", env = "WARREN_MAX_OUTPUT", default_value = "8MiB", value_parser = parse_bytes)]
    pub max_output: u64,

    /// Stderr kept per task; the rest is dropped and the result marked truncated.
    #[arg(long = "max-stderr", env = "WARREN_MAX_STDERR", default_value = "64KiB", value_parser = parse_bytes)]
    pub max_stderr: u64,

    /// Virtual address space reserved per linear memory. 4 GiB lets compiled code elide bounds
    /// checks; smaller saves address space at the cost of explicit checks. Must be ≥ max-memory.
    #[arg(long, env = "WARREN_MEMORY_RESERVATION", default_value = "4GiB", value_parser = parse_bytes)]
    pub memory_reservation: u64,

    /// Guard region after each linear memory (catches out-of-bounds accesses without checks).
    #[arg(long, env = "WARREN_MEMORY_GUARD", default_value = "32MiB", value_parser = parse_bytes)]
    pub memory_guard: u64,

    /// Elements per table (function pointers for indirect calls).
    #[arg(long, env = "WARREN_TABLE_ELEMENTS", default_value_t = DEFAULT_TABLE_ELEMENTS)]
    pub table_elements: usize,

    /// Largest runtime state (`VMContext`) of one instance; modules needing more fail to load.
    #[arg(long, env = "WARREN_MAX_CORE_INSTANCE_SIZE", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_core_instance_size: u64,

    /// Core instances one component task may create (its modules, shims and adapters); a
    /// component needing more fails to load. Each lane's pool holds this many instance states
    /// of `max-core-instance-size` (virtual memory).
    #[arg(long, env = "WARREN_MAX_CORE_INSTANCES_PER_COMPONENT", default_value_t = DEFAULT_MAX_CORE_INSTANCES_PER_COMPONENT, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_core_instances_per_component: u32,

    /// Linear memories one component may define; a component needing more fails to load. Each
    /// lane's pool has at least this many memory slots (`max(warm-modules, this)`), each costing
    /// `memory-reservation + memory-guard` of virtual memory. The memory limit applies to their
    /// sum.
    #[arg(long, env = "WARREN_MAX_MEMORIES_PER_COMPONENT", default_value_t = DEFAULT_MAX_MEMORIES_PER_COMPONENT, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_memories_per_component: u32,

    /// Tables one component may define; a component needing more fails to load. Each lane's
    /// pool has this many table slots of `table-elements × 8` bytes (virtual memory).
    #[arg(long, env = "WARREN_MAX_TABLES_PER_COMPONENT", default_value_t = DEFAULT_MAX_TABLES_PER_COMPONENT, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tables_per_component: u32,

    /// Largest runtime state (`VMComponentContext`) of one component instance; components
    /// needing more fail to load.
    #[arg(long, env = "WARREN_MAX_COMPONENT_INSTANCE_SIZE", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_component_instance_size: u64,

    /// Guest call-stack size; deeper recursion ends the task as a stack-overflow trap.
    #[arg(long, env = "WARREN_MAX_WASM_STACK", default_value = "512KiB", value_parser = parse_bytes)]
    pub max_wasm_stack: u64,

    /// Modules each lane keeps warm: its pool has this many memory slots (at least
    /// `max-memories-per-component`), and a slot freed by a module keeps that module's memory
    /// image mapped for its next task on the lane (a component's memories take a slot each).
    /// Tasks alternating between more modules than this remap a slot (tens of µs) instead of
    /// reusing one (~1 µs). Each slot costs `memory_reservation + memory_guard` of virtual
    /// memory.
    #[arg(long, env = "WARREN_WARM_MODULES", default_value_t = DEFAULT_WARM_MODULES, value_parser = parse_positive)]
    pub warm_modules: usize,

    /// Dirty memory a freed slot resets in place (memset / copy from the image) instead of
    /// returning it to the kernel. With Linux ≥ 6.7 only resident pages are touched
    /// (PAGEMAP_SCAN finds them). Keeps pages resident — up to this much per slot — and saves
    /// the page faults and TLB-shootdown IPIs of `madvise` on every task. 0 = always `madvise`.
    #[arg(long, env = "WARREN_KEEP_RESIDENT", default_value = "64KiB", value_parser = parse_bytes)]
    pub keep_resident: u64,

    /// How often the epoch ticker advances; CPU deadlines are measured in these ticks.
    #[arg(long, env = "WARREN_EPOCH_TICK", default_value = "10ms", value_parser = parse_duration)]
    pub epoch_tick: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_concurrent_tasks: None,
            max_memory: DEFAULT_MAX_MEMORY,
            timeout: DEFAULT_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
            max_stderr: DEFAULT_MAX_STDERR,
            memory_reservation: DEFAULT_MEMORY_RESERVATION,
            memory_guard: DEFAULT_MEMORY_GUARD,
            table_elements: DEFAULT_TABLE_ELEMENTS,
            max_core_instance_size: DEFAULT_MAX_CORE_INSTANCE_SIZE,
            max_core_instances_per_component: DEFAULT_MAX_CORE_INSTANCES_PER_COMPONENT,
            max_memories_per_component: DEFAULT_MAX_MEMORIES_PER_COMPONENT,
            max_tables_per_component: DEFAULT_MAX_TABLES_PER_COMPONENT,
            max_component_instance_size: DEFAULT_MAX_COMPONENT_INSTANCE_SIZE,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            warm_modules: DEFAULT_WARM_MODULES,
            keep_resident: DEFAULT_KEEP_RESIDENT,
            epoch_tick: DEFAULT_EPOCH_TICK,
        }
    }
}

impl SandboxConfig {
    /// Tasks that run at once: the configured value, or the number of CPU cores.
    pub fn concurrency(&self) -> usize {
        self.max_concurrent_tasks
            .unwrap_or_else(num_cpus::get)
            .max(1)
    }

    /// Stack size for a thread that runs guests: `--max-wasm-stack` plus the host's headroom,
    /// so a guest that uses its whole cap traps as a stack overflow instead of overflowing
    /// the thread (which would kill the process).
    pub fn guest_thread_stack(&self) -> usize {
        usize::try_from(self.max_wasm_stack.saturating_add(HOST_STACK_HEADROOM))
            .unwrap_or(usize::MAX)
    }
}
