//! The baselines' embedding: stock wasmtime with wasmtime-wasi, the way a program without
//! warren's sandbox runs a WASI command. `warren-bench instantiate` runs its naive and
//! CoW + `InstancePre` strategies on it.
//!
//! The engine is configured like warren's (epoch interruption, the same memory reservation, guard
//! and wasm stack cap) except for the instance allocator, which allocates on demand: what differs
//! from warren is how instances are made and what a task's WASI state costs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use warren_worker::SandboxConfig;
use wasmtime::{
    Config, Engine, InstancePre, Linker, Module, Store, StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::p1::{add_to_linker_sync, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

/// How a baseline makes each task's instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instantiation {
    /// Data segments copied into a fresh mmap, imports resolved by `Linker::instantiate` on
    /// every task: the naive embedding.
    CopyLinker,
    /// A copy-on-write memory image mapped into a fresh mmap, imports resolved once
    /// (`InstancePre`).
    CowPre,
}

/// An on-demand engine configured like warren's for `config`; `cow` maps memory images
/// copy-on-write instead of copying data segments in.
pub fn engine(config: &SandboxConfig, cow: bool) -> anyhow::Result<Engine> {
    let mut wasm = Config::new();
    wasm.epoch_interruption(true)
        .memory_init_cow(cow)
        .memory_reservation(config.memory_reservation)
        .memory_guard_size(config.memory_guard)
        .memory_reservation_for_growth(0)
        .max_wasm_stack(usize::try_from(config.max_wasm_stack)?)
        .async_stack_size(config.guest_thread_stack());
    Ok(Engine::new(&wasm)?)
}

/// Per-task state of a baseline store: stock WASI and a memory cap.
struct TaskState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// One WASI command compiled and linked for a baseline engine.
pub struct Command {
    /// argv[0].
    name: String,
    /// Used by [`Instantiation::CopyLinker`], which resolves imports on every task.
    linker: Linker<TaskState>,
    /// Used by [`Instantiation::CowPre`].
    pre: InstancePre<TaskState>,
    /// Largest linear memory a task may have, as warren's `--max-memory`.
    max_memory: usize,
    /// Largest stdout kept, as warren's `--max-output`.
    max_output: usize,
}

impl Command {
    /// Compiles the module at `path` for `engine` and links wasmtime-wasi's preview 1 into it.
    pub fn load(engine: &Engine, path: &Path, config: &SandboxConfig) -> anyhow::Result<Self> {
        let module = Module::from_file(engine, path).map_err(|error| load_error(path, error))?;
        let mut linker = Linker::new(engine);
        add_to_linker_sync(&mut linker, |state: &mut TaskState| &mut state.wasi)?;
        let pre = linker.instantiate_pre(&module)?;
        Ok(Command {
            name: program_name(path),
            linker,
            pre,
            max_memory: usize::try_from(config.max_memory)?,
            max_output: usize::try_from(config.max_output)?,
        })
    }

    /// Runs the whole task — store + WASI state (stdin = `input`, stdout captured), instantiate,
    /// `_start`, drop — and returns the time instantiation took. A guest that does not exit 0 is
    /// an error.
    pub fn run(&self, how: Instantiation, input: &[u8]) -> anyhow::Result<Duration> {
        let engine = self.pre.module().engine();
        let (mut wasi, stdout) = task_context(&self.name, input, self.max_output);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.max_memory)
            .build();
        let mut store = Store::new(
            engine,
            TaskState {
                wasi: wasi.build_p1(),
                limits,
            },
        );
        store.limiter(|state| &mut state.limits);
        // No epoch ticker runs for a baseline engine: the deadline is never reached.
        store.set_epoch_deadline(u64::MAX / 2);

        let started = Instant::now();
        let instance = match how {
            Instantiation::CopyLinker => self.linker.instantiate(&mut store, self.pre.module()),
            Instantiation::CowPre => self.pre.instantiate(&mut store),
        }?;
        let instantiate = started.elapsed();
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        succeeded(&self.name, start.call(&mut store, ()))?;
        drop(store);
        std::hint::black_box(stdout.contents());
        Ok(instantiate)
    }
}

/// argv[0] of the guest at `path`: its file stem, as warren names modules.
pub fn program_name(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The guest at `path` could not be compiled.
pub fn load_error(path: &Path, error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot load {} (run modules/build.sh first): {error:#}",
        path.display()
    )
}

/// A baseline task's WASI context, to be built for preview 1 or 0.2: argv[0] `name`, `input` on
/// stdin, stdout captured up to `max_output` bytes (the returned pipe).
pub fn task_context(
    name: &str,
    input: &[u8],
    max_output: usize,
) -> (WasiCtxBuilder, MemoryOutputPipe) {
    let stdout = MemoryOutputPipe::new(max_output);
    let mut wasi = WasiCtxBuilder::new();
    wasi.arg(name)
        .stdin(MemoryInputPipe::new(input.to_vec()))
        .stdout(stdout.clone());
    (wasi, stdout)
}

/// How the guest `name`'s run `ended`: success (returned, or exited 0), or an error naming the
/// exit code or the failure.
pub fn succeeded(name: &str, ended: wasmtime::Result<()>) -> anyhow::Result<()> {
    let Err(error) = ended else { return Ok(()) };
    match error.downcast_ref::<I32Exit>() {
        Some(I32Exit(0)) => Ok(()),
        Some(I32Exit(code)) => bail!("{name} exited with {code}"),
        None => Err(error.into()),
    }
}
