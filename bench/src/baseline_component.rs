//! The baselines' embedding for components: stock wasmtime with wasmtime-wasi's WASI 0.2, the
//! way a program without warren's sandbox runs a `wasi:cli/command` component. Same engine as
//! [`baseline`](crate::baseline) (on-demand allocation), same task: stdin in, stdout captured.

use std::path::Path;
use std::time::{Duration, Instant};

use warren_worker::SandboxConfig;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::bindings::sync::{Command, CommandPre};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::baseline::{load_error, program_name, succeeded, task_context, Instantiation};

/// Per-task state of a baseline store: stock WASI 0.2 and a memory cap.
struct TaskState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One command component compiled and linked for a baseline engine.
pub struct ComponentCommand {
    /// argv[0].
    name: String,
    component: Component,
    /// Used by [`Instantiation::CopyLinker`], which resolves imports on every task.
    linker: Linker<TaskState>,
    /// Used by [`Instantiation::CowPre`].
    pre: CommandPre<TaskState>,
    max_memory: usize,
    max_output: usize,
}

impl ComponentCommand {
    /// Compiles the component at `path` for `engine` and links wasmtime-wasi's WASI 0.2.
    pub fn load(engine: &Engine, path: &Path, config: &SandboxConfig) -> anyhow::Result<Self> {
        let component =
            Component::from_file(engine, path).map_err(|error| load_error(path, error))?;
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let pre = CommandPre::new(linker.instantiate_pre(&component)?)?;
        Ok(ComponentCommand {
            name: program_name(path),
            component,
            linker,
            pre,
            max_memory: usize::try_from(config.max_memory)?,
            max_output: usize::try_from(config.max_output)?,
        })
    }

    /// Runs the whole task — store + WASI context, instantiate, `wasi:cli/run`, drop — and
    /// returns the time instantiation took. A guest that does not exit 0 is an error.
    pub fn run(&self, how: Instantiation, input: &[u8]) -> anyhow::Result<Duration> {
        let (mut wasi, stdout) = task_context(&self.name, input, self.max_output);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.max_memory)
            .build();
        let state = TaskState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits,
        };
        let mut store = Store::new(self.component.engine(), state);
        store.limiter(|state| &mut state.limits);
        // No epoch ticker runs for a baseline engine: the deadline is never reached.
        store.set_epoch_deadline(u64::MAX / 2);

        let started = Instant::now();
        let command = match how {
            Instantiation::CopyLinker => {
                Command::instantiate(&mut store, &self.component, &self.linker)
            }
            Instantiation::CowPre => self.pre.instantiate(&mut store),
        }?;
        let instantiate = started.elapsed();
        let ended = command
            .wasi_cli_run()
            .call_run(&mut store)
            .and_then(|run| run.map_err(|()| wasmtime::format_err!("run returned an error")));
        succeeded(&self.name, ended)?;
        drop(store);
        std::hint::black_box(stdout.contents());
        Ok(instantiate)
    }
}
