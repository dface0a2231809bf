//! Component tasks: a WASI 0.2 `wasi:cli/command` component in a fresh store per task, from a
//! `CommandPre` resolved once per shard.
//!
//! WASI 0.2 is wasmtime-wasi's, with a context built per task to the same contract as a
//! module's (modules/README.md): stdin from the task, stdout and stderr into capped captures
//! ([`stdio`]), argv = module name + the task's args, environment only from the task, the
//! host's clocks and random, no preopened directories, sockets that every address check
//! refuses, and waits bounded by the deadline ([`poll`]). Every `wasi:cli/command` import is
//! linked; a component importing anything else (`wasi:http`, its own interfaces) fails to load,
//! naming the import.

mod poll;
mod stdio;

use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::sync::{Command, CommandPre};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

use super::output::{OutputCapture, OverflowPolicy};
use super::{GuestCall, GuestExit, Limits, TaskLimiter};
pub use stdio::CapturedStream;

/// What a component task's store holds.
pub struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Enforces the task's memory limit across all the component's memories, and its tables'.
    pub(crate) limiter: TaskLimiter,
    /// When waiting host calls give up and the task times out.
    deadline: Instant,
    /// The task's timeout, for the error that ends a wait at the deadline.
    timeout: Duration,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// WASI 0.2 for component tasks, linked for one engine.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    // With `wasi:cli/exit`'s `exit-with-code`, so a status other than 0 or 1 arrives as it is.
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    poll::bound_waits(&mut linker)?;
    Ok(linker)
}

/// Resolves `component`'s imports against `linker`. Fails, naming the import, when it needs
/// something the sandbox does not provide, and when it does not export `wasi:cli/run`.
pub fn prepare(
    linker: &Linker<ComponentState>,
    component: &Component,
) -> wasmtime::Result<CommandPre<ComponentState>> {
    let pre = linker.instantiate_pre(component)?;
    CommandPre::new(pre).map_err(|error| {
        wasmtime::format_err!("not a WASI command component (no `wasi:cli/run` export): {error:#}")
    })
}

/// The streams a run writes to, kept by the sandbox to read after the run.
pub struct Captures {
    /// The task's result, capped at its output limit.
    pub stdout: CapturedStream,
    /// Diagnostics, truncated at `--max-stderr`.
    pub stderr: CapturedStream,
}

/// A store for one run of `call` under `limits`, and the captures of its output.
pub fn new_store(
    engine: &Engine,
    call: GuestCall,
    limits: &Limits,
    max_stderr: u64,
    max_table_elements: usize,
) -> (Store<ComponentState>, Captures) {
    let captures = Captures {
        stdout: CapturedStream::new(OutputCapture::new(limits.max_output, OverflowPolicy::Fail)),
        stderr: CapturedStream::new(OutputCapture::new(max_stderr, OverflowPolicy::Truncate)),
    };
    let mut args = Vec::with_capacity(call.args.len() + 1);
    args.push(call.program);
    args.extend(call.args);
    let wasi = WasiCtx::builder()
        .stdin(MemoryInputPipe::new(call.input))
        .stdout(captures.stdout.clone())
        .stderr(captures.stderr.clone())
        .args(&args)
        .envs(&call.env)
        .build();
    let state = ComponentState {
        wasi,
        table: ResourceTable::new(),
        limiter: TaskLimiter::new(limits.max_memory, max_table_elements),
        deadline: Instant::now() + limits.timeout,
        timeout: limits.timeout,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    (store, captures)
}

/// Instantiates and runs the command; also returns when instantiation ended. The exit status
/// comes back as [`GuestExit`], as a module's `proc_exit` does.
pub fn run(
    pre: &CommandPre<ComponentState>,
    store: &mut Store<ComponentState>,
) -> (wasmtime::Result<()>, Instant) {
    let command = pre.instantiate(&mut *store);
    let instantiated = Instant::now();
    let ended = command.and_then(|command: Command| {
        command
            .wasi_cli_run()
            .call_run(&mut *store)?
            .map_err(|()| GuestExit(1).into())
    });
    let ended = ended.map_err(|error| match error.downcast_ref::<I32Exit>() {
        Some(I32Exit(code)) => GuestExit(*code).into(),
        None => error,
    });
    (ended, instantiated)
}
