//! The one place wasmtime's engine is configured: pooling allocator, copy-on-write memory images,
//! epoch interruption, and the ticker thread that drives epochs.
//!
//! Why each setting:
//! - **Pooling allocator**: every instance slot (memory, table, instance state) is reserved once
//!   at startup, so instantiation is a slot hand-out, not mmap/munmap per task.
//! - **`memory_init_cow`**: a module's data segments become a memory image mapped copy-on-write
//!   from the AOT file, so a 24 MiB lookup table costs nothing to "copy" per task. A pooled slot
//!   reused by the same module keeps the mapping and only resets the pages the guest dirtied.
//! - **Epoch interruption**: a CPU deadline checked at function entries and loop back-edges,
//!   cheaper than fuel metering (wasmtime's documentation). A ticker thread bumps the epoch
//!   every `epoch_tick`.
//! - **No cranelift-level fuel, no async**: guests run synchronously on dedicated OS threads
//!   (a guest runs, or sleeps in `poll_oneoff`, for as long as its deadline allows; that must
//!   never stall a tokio worker).

use std::thread;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::SandboxConfig;

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A knob has a value wasmtime cannot use.
    #[error("invalid sandbox configuration: {0}")]
    InvalidConfig(String),
    /// The pool's virtual memory could not be reserved.
    #[error(
        "could not reserve the instance pool's virtual memory ({reserved_gib:.1} GiB for {slots} memory slots \
         of memory-reservation + memory-guard): {source}. Lower --max-concurrent-tasks \
         (WARREN_MAX_CONCURRENT_TASKS), --warm-modules (WARREN_WARM_MODULES), \
         --max-memories-per-component (WARREN_MAX_MEMORIES_PER_COMPONENT) or \
         --memory-reservation (WARREN_MEMORY_RESERVATION), or raise the process's virtual memory \
         limit (ulimit -v)"
    )]
    PoolReservation {
        /// Memory slots asked for.
        slots: usize,
        /// Virtual memory that reservation needs, in GiB.
        reserved_gib: f64,
        /// wasmtime's error.
        #[source]
        source: wasmtime::Error,
    },
}

/// How instances are allocated: the worker always uses `Pooled`; unit tests that need no pool
/// use `OnDemand`, so they reserve nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allocation {
    /// Pooling allocator with copy-on-write images: warren's configuration.
    Pooled,
    /// mmap per instance, with copy-on-write images.
    #[cfg(test)]
    OnDemand,
}

/// Builds an engine for `config` whose pool (for [`Allocation::Pooled`]) has `slots` instance
/// slots.
pub(crate) fn build_engine(
    config: &SandboxConfig,
    allocation: Allocation,
    slots: usize,
) -> Result<Engine, EngineError> {
    if config.max_memory > config.memory_reservation {
        return Err(EngineError::InvalidConfig(format!(
            "--max-memory ({}) must not exceed --memory-reservation ({})",
            config.max_memory, config.memory_reservation
        )));
    }
    let mut wasm = Config::new();
    wasm.epoch_interruption(true)
        .memory_init_cow(true)
        .memory_reservation(config.memory_reservation)
        .memory_guard_size(config.memory_guard)
        // Growing in place inside the reservation: no moving memories, no extra reservation.
        .memory_reservation_for_growth(0)
        .max_wasm_stack(to_usize(config.max_wasm_stack, "--max-wasm-stack")?)
        // Guests run on the caller's thread, never on async fibers, but wasmtime still refuses
        // a wasm stack larger than the (unused) fiber stack: keep the two in step.
        .async_stack_size(config.guest_thread_stack());
    // The configuration alone first (no pool, nothing reserved), so a value wasmtime refuses is
    // reported as such and not as a failed reservation.
    let unpooled = Engine::new(&wasm).map_err(|e| EngineError::InvalidConfig(format!("{e:#}")))?;
    if allocation != Allocation::Pooled {
        return Ok(unpooled);
    }
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(
        config, slots,
    )?));
    let memory_slots = PoolSize::of(config, slots)?.memories as usize;
    Engine::new(&wasm).map_err(|source| EngineError::pool_reservation(config, memory_slots, source))
}

impl EngineError {
    /// `slots` memory slots in all, of `config`'s reservation + guard, could not be reserved.
    pub fn pool_reservation(config: &SandboxConfig, slots: usize, source: wasmtime::Error) -> Self {
        let per_slot = config.memory_reservation + config.memory_guard;
        EngineError::PoolReservation {
            slots,
            reserved_gib: (slots as f64 * per_slot as f64) / (1u64 << 30) as f64,
            source,
        }
    }
}

/// How many of each thing a pool of `warm` slots holds. One task runs at a time on a pool, so it
/// needs room for one task's instances, memories and tables; beyond that, `warm` memory slots
/// keep the images of the last modules run mapped (a component's memories take one each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Component instances: one per slot.
    pub component_instances: u32,
    /// Core instances: one per slot, and at least one component's worth.
    pub core_instances: u32,
    /// Linear memories: one per slot, and at least one component's worth.
    pub memories: u32,
    /// Tables: one per slot, and at least one component's worth.
    pub tables: u32,
}

impl PoolSize {
    /// The pool of `warm` slots for `config`.
    pub fn of(config: &SandboxConfig, warm: usize) -> Result<Self, EngineError> {
        let warm = u32::try_from(warm)
            .map_err(|_| EngineError::InvalidConfig("--warm-modules is too large".into()))?;
        let memories = warm.max(config.max_memories_per_component);
        let tables = warm.max(config.max_tables_per_component);
        Ok(PoolSize {
            component_instances: warm,
            // At least one per memory and table slot too: the sandbox finds the pool's slots
            // with a probe instance in each (`table_pool`).
            core_instances: warm
                .max(config.max_core_instances_per_component)
                .max(memories)
                .max(tables),
            memories,
            tables,
        })
    }
}

/// Every pool total derives from `slots` ([`PoolSize`]).
fn pool_config(
    config: &SandboxConfig,
    slots: usize,
) -> Result<PoolingAllocationConfig, EngineError> {
    let size = PoolSize::of(config, slots)?;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(size.core_instances)
        .total_memories(size.memories)
        .total_tables(size.tables)
        .total_component_instances(size.component_instances)
        .total_stacks(0)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .max_core_instances_per_component(config.max_core_instances_per_component)
        .max_memories_per_component(config.max_memories_per_component)
        .max_tables_per_component(config.max_tables_per_component)
        .max_component_instance_size(to_usize(
            config.max_component_instance_size,
            "--max-component-instance-size",
        )?)
        .max_memory_size(to_usize(config.max_memory, "--max-memory")?)
        .table_elements(config.table_elements)
        .max_core_instance_size(to_usize(
            config.max_core_instance_size,
            "--max-core-instance-size",
        )?)
        // Reset what a task dirtied in place (only resident pages, where the kernel can tell us)
        // instead of madvise + page faults + TLB shootdowns on the next task.
        .linear_memory_keep_resident(to_usize(config.keep_resident, "--keep-resident")?)
        .table_keep_resident(to_usize(config.keep_resident, "--keep-resident")?)
        .pagemap_scan(Enabled::Auto)
        // A slot freed by module M is preferably handed to M again, keeping its CoW mapping warm.
        .max_unused_warm_slots(size.memories);
    Ok(pool)
}

fn to_usize(value: u64, flag: &str) -> Result<usize, EngineError> {
    usize::try_from(value).map_err(|_| EngineError::InvalidConfig(format!("{flag} is too large")))
}

/// Starts the thread that advances the epoch of every engine in `engines` every
/// `config.epoch_tick`.
///
/// The thread holds only weak references: it ends by itself once every clone of the engines is
/// dropped, so nobody has to remember to stop it.
pub(crate) fn start_epoch_ticker(
    engines: &[Engine],
    config: &SandboxConfig,
) -> std::io::Result<()> {
    let weak: Vec<_> = engines.iter().map(Engine::weak).collect();
    let tick = config.epoch_tick;
    thread::Builder::new()
        .name("warren-epoch".into())
        .spawn(move || loop {
            let mut alive = false;
            for engine in weak.iter().filter_map(|weak| weak.upgrade()) {
                engine.increment_epoch();
                alive = true;
            }
            if !alive {
                break;
            }
            thread::sleep(tick);
        })
        .map(|_| ())
}

/// Pool occupancy, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolOccupancy {
    /// Shards running a task's instance now (a module's, or a component's core instances).
    pub instances: u64,
    /// Linear memories currently allocated.
    pub memories: u64,
    /// Unused slots whose memory is still warm (mapped for a module's image).
    pub warm_memories: u64,
    /// Resident bytes held by unused memory slots.
    pub unused_memory_bytes_resident: u64,
}

/// Reads the occupancy of `engines`' pools, summed; `None` for engines without a pool.
pub fn pool_occupancy<'a>(engines: impl IntoIterator<Item = &'a Engine>) -> Option<PoolOccupancy> {
    let mut total: Option<PoolOccupancy> = None;
    for metrics in engines
        .into_iter()
        .filter_map(Engine::pooling_allocator_metrics)
    {
        let sum = total.get_or_insert_with(PoolOccupancy::default);
        // A shard runs one task at a time: a module's instance, or a component's several.
        sum.instances +=
            u64::from(metrics.core_instances() > 0 || metrics.component_instances() > 0);
        sum.memories += metrics.memories() as u64;
        sum.warm_memories += u64::from(metrics.unused_warm_memories());
        sum.unused_memory_bytes_resident += metrics.unused_memory_bytes_resident() as u64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_wasmtime_refuses_is_not_reported_as_a_failed_reservation() {
        let config = SandboxConfig {
            max_wasm_stack: 0,
            ..SandboxConfig::default()
        };
        for allocation in [Allocation::Pooled, Allocation::OnDemand] {
            match build_engine(&config, allocation, 1) {
                Err(EngineError::InvalidConfig(message)) => {
                    assert!(message.contains("max_wasm_stack"), "{message}");
                }
                Err(other) => panic!("{allocation:?}: wrong error: {other}"),
                Ok(_) => panic!("{allocation:?}: a zero wasm stack was accepted"),
            }
        }
    }

    #[test]
    fn a_pool_too_large_for_the_address_space_says_how_to_shrink_it() {
        // 2^20 slots of 4 GiB + guard: far beyond a 47-bit address space.
        let config = SandboxConfig {
            max_concurrent_tasks: Some(1 << 20),
            ..SandboxConfig::default()
        };
        match build_engine(&config, Allocation::Pooled, config.concurrency()) {
            Err(error @ EngineError::PoolReservation { .. }) => {
                let message = error.to_string();
                assert!(message.contains("--max-concurrent-tasks"), "{message}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a 4 PiB pool was reserved"),
        }
    }
}
