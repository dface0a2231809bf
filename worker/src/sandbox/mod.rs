//! One task in one fresh sandbox: build the store, instantiate from a warm `InstancePre`, run
//! `_start` (a module) or `wasi:cli/run` (a component, see [`component`]), and turn whatever
//! happened into an [`Execution`].
//!
//! The guest sees exactly what the guest contract (modules/README.md) promises: stdin from the
//! task, stdout/stderr captured in memory, argv = module name + the task's args, env = the
//! task's pairs, a monotonic and a wall clock, random — and nothing else: no preopened
//! directories, no sockets, no host environment. Each task gets its own store, so nothing leaks
//! from one task to the next.
//!
//! **Shards.** A sandbox is as many engines as tasks may run at once, each with its own pool of
//! `--warm-modules` slots (a lane keeps that many modules' images mapped), and each caller runs
//! on a shard no one else is using ([`TaskRunner`](crate::runner::TaskRunner) hands them out,
//! preferring the thread's last one). So threads never take each other's pool locks, nor a slot
//! whose instance state and dirtied pages were last used on another core (BENCHMARKS.md,
//! "Decisions").

pub mod component;
mod exports;
mod limiter;
mod outcome;
mod output;
mod swap_scrub;
mod table_pool;
mod wasi;

use std::time::{Duration, Instant};

use tracing::{error, info};

use warren_schemas::{Outcome, TaskLimits};
use wasmtime::component::Component;
use wasmtime::{Engine, InstancePre, Linker, Memory, Module, Store};
use wasmtime_wasi::p2::bindings::sync::CommandPre;

use crate::config::SandboxConfig;
use crate::engine::{build_engine, start_epoch_ticker, Allocation, EngineError, PoolSize};
use component::ComponentState;

pub use exports::GuestExports;
pub use limiter::TaskLimiter;
pub use output::{OutputCapture, OutputLimitExceeded, OverflowPolicy};
pub use swap_scrub::{ResetMethod, SwapScrub};
use table_pool::PoolRegion;
use wasi::{CommandLine, Stdio};
pub use wasi::{GuestExit, WallClockExceeded};

/// What a store holds for one task: the guest's WASI state, the memory limiter and the task's
/// deadline.
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

/// The engines (one per shard), their WASI linkers and the caps every task runs under.
pub struct Sandbox {
    shards: Vec<Shard>,
    config: SandboxConfig,
    /// Discards pages of freed slots that wasmtime's reset left in swap.
    swap_scrub: SwapScrub,
}

/// One engine with its own pool, and WASI linked for it (preview 1 for modules, 0.2 for
/// components). One task runs on it at a time.
struct Shard {
    engine: Engine,
    linker: Linker<SandboxState>,
    components: wasmtime::component::Linker<ComponentState>,
    /// Where the pool's tables live, for the swap scrub.
    tables: Option<PoolRegion>,
    /// Where each memory slot of the pool starts, for the swap scrub of component tasks.
    memory_slots: Option<Vec<usize>>,
}

/// A module or component compiled for and linked into every shard: one warm `InstancePre` per
/// shard.
pub enum WarmModule {
    /// A core module, with where its entry point and memory are.
    Core(Vec<(InstancePre<SandboxState>, GuestExports)>),
    /// A `wasi:cli/command` component.
    Component(Vec<CommandPre<ComponentState>>),
}

impl WarmModule {
    /// Whether this is a component.
    pub fn is_component(&self) -> bool {
        matches!(self, WarmModule::Component(_))
    }
}

/// What a run left behind, whichever kind of guest ran.
struct Ran {
    ended: wasmtime::Result<()>,
    memory_limit_hit: bool,
    stdout: Vec<u8>,
    stderr: (Vec<u8>, bool),
    instantiate: Duration,
    run: Duration,
}

/// Address space a pool may reserve in all: a 47-bit user address space, half of it.
const MAX_POOL_BYTES: u64 = 1 << 46;

/// What a guest is given for one run.
#[derive(Debug, Clone, Default)]
pub struct GuestCall {
    /// argv[0]: the module's name.
    pub program: String,
    /// Bytes on stdin.
    pub input: Vec<u8>,
    /// argv[1..].
    pub args: Vec<String>,
    /// The only environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// What the task asked for; clamped to the worker's caps.
    pub limits: TaskLimits,
}

/// The limits that apply to one run: the task's wishes clamped to the worker's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU (epoch) and wall-clock (blocking calls) deadline.
    pub timeout: Duration,
    /// Largest linear memory, in bytes.
    pub max_memory: u64,
    /// Largest stdout, in bytes.
    pub max_output: u64,
}

/// How one run went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// How it ended.
    pub outcome: Outcome,
    /// The guest's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr, up to the cap.
    pub stderr: Vec<u8>,
    /// True when stderr was cut at the cap.
    pub stderr_truncated: bool,
    /// Time to instantiate.
    pub instantiate: Duration,
    /// Time in `_start`.
    pub run: Duration,
}

impl Execution {
    /// An execution that never started because the task was unusable.
    pub fn refused(outcome: Outcome) -> Self {
        Execution {
            outcome,
            exit_code: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stderr_truncated: false,
            instantiate: Duration::ZERO,
            run: Duration::ZERO,
        }
    }
}

impl Sandbox {
    /// Builds one engine and pool per shard (one shard per task that may run at once), starts
    /// their epoch ticker and links WASI into each.
    pub fn new(config: SandboxConfig) -> Result<Self, EngineError> {
        Self::with_allocation(config, Allocation::Pooled)
    }

    /// [`Sandbox::new`] with the given instance allocator.
    pub(crate) fn with_allocation(
        config: SandboxConfig,
        allocation: Allocation,
    ) -> Result<Self, EngineError> {
        let count = config.concurrency();
        let size = PoolSize::of(&config, config.warm_modules)?;
        let slots = count.saturating_mul(size.memories as usize);
        let per_slot = config.memory_reservation + config.memory_guard;
        // Reported for the whole sandbox (every shard's slots), not for the one shard that failed.
        let pool_error = |source| EngineError::pool_reservation(&config, slots, source);
        if allocation == Allocation::Pooled
            && (slots as u64).saturating_mul(per_slot) > MAX_POOL_BYTES
        {
            return Err(pool_error(wasmtime::Error::msg(
                "more than the 64 TiB of address space a process can reserve",
            )));
        }
        let swap_scrub = SwapScrub::start();
        let find_pools = allocation == Allocation::Pooled && swap_scrub.available();
        let find_tables = find_pools && config.table_elements > 0;
        let shards = (0..count)
            .map(|_| {
                let before = find_tables.then(table_pool::anonymous_mappings);
                let engine = match build_engine(&config, allocation, config.warm_modules) {
                    Err(EngineError::PoolReservation { source, .. }) => {
                        return Err(pool_error(source))
                    }
                    other => other?,
                };
                let tables = before.and_then(|before| {
                    let slots = size.tables as usize;
                    match table_pool::locate(&engine, slots, config.table_elements, &before) {
                        Ok(pool) => Some(pool),
                        Err(error) => {
                            error!(%error, "cannot find the pool's tables: table pages in swap are not scrubbed");
                            None
                        }
                    }
                });
                let memory_slots = find_pools
                    .then(|| table_pool::locate_memories(&engine, size.memories as usize))
                    .and_then(|found| match found {
                        Ok(pool) => Some(pool),
                        Err(error) => {
                            error!(%error, "cannot find the pool's memories: memory pages of component tasks in swap are not scrubbed");
                            None
                        }
                    });
                let link_error =
                    |e: wasmtime::Error| EngineError::InvalidConfig(format!("cannot link WASI: {e:#}"));
                let mut linker = Linker::new(&engine);
                wasi::add_to_linker(&mut linker).map_err(link_error)?;
                let components = component::linker(&engine).map_err(link_error)?;
                Ok(Shard {
                    engine,
                    linker,
                    components,
                    tables,
                    memory_slots,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let engines: Vec<Engine> = shards.iter().map(|s| s.engine.clone()).collect();
        start_epoch_ticker(&engines, &config).map_err(|e| {
            EngineError::InvalidConfig(format!("cannot start the epoch ticker thread: {e}"))
        })?;
        let method = swap_scrub.method();
        info!(
            method = method.label(),
            keep_resident = %bytesize::ByteSize::b(config.keep_resident),
            why = method.reason(),
            "slot reset"
        );
        Ok(Sandbox {
            shards,
            config,
            swap_scrub,
        })
    }

    /// How many shards (engines) there are: one per task that may run at once.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every shard's engine; a module must be compiled for each ([`Sandbox::prepare`]).
    pub fn engines(&self) -> impl ExactSizeIterator<Item = &Engine> {
        self.shards.iter().map(|shard| &shard.engine)
    }

    /// Shard 0's engine: modules are precompiled with it (all shards share one configuration,
    /// so its artifacts load into every shard).
    pub fn engine(&self) -> &Engine {
        &self.shards[0].engine
    }

    /// How freed slots are reset now.
    pub fn reset_method(&self) -> ResetMethod {
        self.swap_scrub.method()
    }

    /// Pages found in swap after wasmtime's reset and discarded, since start.
    pub fn pages_scrubbed(&self) -> u64 {
        self.swap_scrub.pages_scrubbed()
    }

    /// The configuration the sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    fn shard(&self, shard: usize) -> &Shard {
        &self.shards[shard % self.shards.len()]
    }

    /// Resolves a module's imports once per shard (`modules[i]` compiled for shard `i`'s
    /// engine, see [`Sandbox::engines`]), so each task only allocates and initialises. Fails,
    /// naming the import, when the module needs something the sandbox does not provide, and
    /// when it is not a WASI command.
    pub fn prepare(&self, modules: &[Module]) -> wasmtime::Result<WarmModule> {
        if modules.len() != self.shards.len() {
            wasmtime::bail!(
                "{} compiled copies for {} shards",
                modules.len(),
                self.shards.len()
            );
        }
        let per_shard = self
            .shards
            .iter()
            .zip(modules)
            .map(|(shard, module)| {
                let exports = GuestExports::of(module)?;
                Ok((shard.linker.instantiate_pre(module)?, exports))
            })
            .collect::<wasmtime::Result<_>>()?;
        Ok(WarmModule::Core(per_shard))
    }

    /// [`Sandbox::prepare`] for a component (`components[i]` compiled for shard `i`): fails,
    /// naming the import, when it needs something beyond `wasi:cli/command`, and when it is
    /// not a command.
    pub fn prepare_component(&self, components: &[Component]) -> wasmtime::Result<WarmModule> {
        if components.len() != self.shards.len() {
            wasmtime::bail!(
                "{} compiled copies for {} shards",
                components.len(),
                self.shards.len()
            );
        }
        let per_shard = self
            .shards
            .iter()
            .zip(components)
            .map(|(shard, component)| component::prepare(&shard.components, component))
            .collect::<wasmtime::Result<_>>()?;
        Ok(WarmModule::Component(per_shard))
    }

    /// The task's limits clamped to the worker's caps.
    pub fn limits(&self, asked: &TaskLimits) -> Limits {
        let cap = |asked: Option<u64>, cap: u64| asked.map_or(cap, |a| a.min(cap));
        Limits {
            timeout: asked
                .timeout()
                .map_or(self.config.timeout, |t| t.min(self.config.timeout)),
            max_memory: cap(asked.max_memory_bytes, self.config.max_memory),
            max_output: cap(asked.max_output_bytes, self.config.max_output),
        }
    }

    /// Runs `call` in a fresh instance of `module` on `shard`, which no other thread may be
    /// using at the same time.
    pub fn run(&self, shard: usize, module: &WarmModule, call: GuestCall) -> Execution {
        if let Err(reason) = check_call(&call) {
            return Execution::refused(Outcome::InvalidTask { reason });
        }
        let limits = self.limits(&call.limits);
        let ran = match module {
            WarmModule::Core(per_shard) => {
                let (pre, exports) = &per_shard[shard % per_shard.len()];
                self.run_module(shard, pre, exports, call, &limits)
            }
            WarmModule::Component(per_shard) => {
                let pre = &per_shard[shard % per_shard.len()];
                self.run_component(shard, pre, call, &limits)
            }
        };
        let (outcome, exit_code) = outcome::classify(ran.ended, ran.memory_limit_hit, &limits);
        Execution {
            outcome,
            exit_code,
            stdout: ran.stdout,
            stderr: ran.stderr.0,
            stderr_truncated: ran.stderr.1,
            instantiate: ran.instantiate,
            run: ran.run,
        }
    }

    fn run_module(
        &self,
        shard: usize,
        pre: &InstancePre<SandboxState>,
        exports: &GuestExports,
        call: GuestCall,
        limits: &Limits,
    ) -> Ran {
        let mut store = self.new_store(self.shard(shard), call, limits);
        let started = Instant::now();
        let instance = pre.instantiate(&mut store);
        let instantiated = Instant::now();
        let ended = instance.and_then(|instance| {
            let start = exports.bind(&mut store, instance)?;
            start.call(&mut store, ())
        });
        let finished = Instant::now();

        let memory = store
            .data()
            .memory
            .map(|memory| (memory.data_ptr(&store) as usize, memory.data_size(&store)));
        let state = store.data_mut();
        let memory_limit_hit = state.limiter.memory_limit_hit;
        let (stdout, _) = state.stdio.stdout.take();
        let stderr = state.stdio.stderr.take();
        // wasmtime resets the slot here; then whatever of it is in swap is discarded.
        drop(store);
        let tables = self.shard(shard).tables.map(|pool| (pool.start, pool.len));
        self.swap_scrub
            .after_reset(memory.into_iter().chain(tables));
        Ran {
            ended,
            memory_limit_hit,
            stdout,
            stderr,
            instantiate: instantiated - started,
            run: finished - instantiated,
        }
    }

    fn run_component(
        &self,
        shard: usize,
        pre: &CommandPre<ComponentState>,
        call: GuestCall,
        limits: &Limits,
    ) -> Ran {
        let on = self.shard(shard);
        let (mut store, captures) = component::new_store(
            &on.engine,
            call,
            limits,
            self.config.max_stderr,
            self.config.table_elements,
        );
        store.set_epoch_deadline(epoch_ticks(limits.timeout, self.config.epoch_tick));
        let started = Instant::now();
        let (ended, instantiated) = component::run(pre, &mut store);
        let finished = Instant::now();
        let limiter = &store.data().limiter;
        let (memory_limit_hit, in_use) = (limiter.memory_limit_hit, limiter.memory_in_use());
        // wasmtime resets the slots here. The component's memories are not reachable one by
        // one, so the scrub covers every memory slot of the pool, each as far as the task's
        // memories reached (none is larger than their sum).
        drop(store);
        let memories = on
            .memory_slots
            .iter()
            .flatten()
            .map(|&start| (start, in_use));
        let tables = on.tables.map(|pool| (pool.start, pool.len));
        self.swap_scrub.after_reset(memories.chain(tables));
        Ran {
            ended,
            memory_limit_hit,
            stdout: captures.stdout.take().0,
            stderr: captures.stderr.take(),
            instantiate: instantiated - started,
            run: finished - instantiated,
        }
    }

    fn new_store(&self, shard: &Shard, call: GuestCall, limits: &Limits) -> Store<SandboxState> {
        let origin = Instant::now();
        let args = std::iter::once(&call.program).chain(&call.args);
        let state = SandboxState {
            command_line: wasi::CommandLine {
                args: wasi::StringList::encode(args.map(|arg| [arg.as_str()])),
                env: wasi::StringList::encode(
                    call.env
                        .iter()
                        .map(|(key, value)| [key.as_str(), "=", value]),
                ),
            },
            stdio: wasi::Stdio::new(
                call.input,
                OutputCapture::new(limits.max_output, OverflowPolicy::Fail),
                OutputCapture::new(self.config.max_stderr, OverflowPolicy::Truncate),
            ),
            limiter: TaskLimiter::new(limits.max_memory, self.config.table_elements),
            memory: None,
            clock_origin: origin,
            deadline: origin + limits.timeout,
        };
        let mut store = Store::new(&shard.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(epoch_ticks(limits.timeout, self.config.epoch_tick));
        store
    }
}

/// Ticks for `timeout`, rounded up, plus one because the current tick is already under way.
fn epoch_ticks(timeout: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    u64::try_from(timeout.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Refuses args and env the guest could not receive intact.
fn check_call(call: &GuestCall) -> Result<(), String> {
    if let Some(arg) = call.args.iter().find(|a| a.contains('\0')) {
        return Err(format!("argument {arg:?} contains a NUL byte"));
    }
    for (key, value) in &call.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!(
                "environment variable name {key:?} is empty or contains '=' or NUL"
            ));
        }
        if value.contains('\0') {
            return Err(format!("environment variable {key} contains a NUL byte"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_ticks_round_up_and_add_the_current_tick() {
        let tick = Duration::from_millis(10);
        assert_eq!(epoch_ticks(Duration::from_millis(10), tick), 2);
        assert_eq!(epoch_ticks(Duration::from_millis(11), tick), 3);
        assert_eq!(epoch_ticks(Duration::ZERO, tick), 1);
    }

    #[test]
    fn task_limits_only_lower_the_caps() {
        let config = SandboxConfig {
            max_concurrent_tasks: Some(1),
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::with_allocation(config.clone(), Allocation::OnDemand).unwrap();
        let higher = TaskLimits {
            timeout_ms: Some(u64::MAX),
            max_memory_bytes: Some(u64::MAX),
            max_output_bytes: Some(u64::MAX),
        };
        let limits = sandbox.limits(&higher);
        assert_eq!(limits.timeout, config.timeout);
        assert_eq!(limits.max_memory, config.max_memory);
        assert_eq!(limits.max_output, config.max_output);
        let lower = TaskLimits {
            timeout_ms: Some(5),
            max_memory_bytes: Some(1 << 20),
            max_output_bytes: Some(10),
        };
        let limits = sandbox.limits(&lower);
        assert_eq!(limits.timeout, Duration::from_millis(5));
        assert_eq!((limits.max_memory, limits.max_output), (1 << 20, 10));
    }

    #[test]
    fn host_calls_reach_the_memory_before_and_after_it_is_bound() {
        // The start function writes "hi" while instantiating (memory not bound yet: looked up
        // by name); `_start` writes "!" through the memory bound at instantiation.
        const WRITER: &str = r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          ;; iovec {ptr 16, len 2} at 0, iovec {ptr 18, len 1} at 8, bytes at 16
          (data (i32.const 0) "\10\00\00\00\02\00\00\00\12\00\00\00\01\00\00\00hi!")
          (func $init (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32))))
          (start $init)
          (func (export "_start")
            (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 32)))))"#;
        let config = SandboxConfig {
            max_concurrent_tasks: Some(1),
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::with_allocation(config, Allocation::OnDemand).unwrap();
        let module = Module::new(sandbox.engine(), WRITER).unwrap();
        let warm = sandbox.prepare(&[module]).unwrap();
        let execution = sandbox.run(0, &warm, GuestCall::default());
        assert_eq!(execution.outcome, Outcome::Success, "{execution:?}");
        assert_eq!(execution.stdout, b"hi!");
    }

    #[test]
    fn args_and_env_that_cannot_reach_the_guest_are_refused() {
        let bad_env = GuestCall {
            env: vec![("A=B".into(), "c".into())],
            ..GuestCall::default()
        };
        assert!(check_call(&bad_env).is_err());
        let bad_arg = GuestCall {
            args: vec!["a\0b".into()],
            ..GuestCall::default()
        };
        assert!(check_call(&bad_arg).is_err());
        let fine = GuestCall {
            env: vec![("A".into(), "b=c".into())],
            ..GuestCall::default()
        };
        assert!(check_call(&fine).is_ok());
    }
}
