//! The baselines' embedding for components: stock wasmtime with wasmtime-wasi's WASI 0.2, the
//! way a program without warren's sandbox runs a `wasi:cli/command` component. Same engine as
//! [`baseline`](crate::baseline) (on-demand allocation), same task: stdin in, stdout captured.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use warren_worker::SandboxConfig;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::bindings::sync::{Command, CommandPre};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

use crate::baseline::Instantiation;

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
        let component = Component::from_file(engine, path).map_err(|error| {
            anyhow::anyhow!(
                "cannot load {} (run modules/build.sh first): {error:#}",
                path.display()
            )
        })?;
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let pre = CommandPre::new(linker.instantiate_pre(&component)?)?;
        let name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(ComponentCommand {
            name,
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
        let stdout = MemoryOutputPipe::new(self.max_output);
        let wasi = WasiCtx::builder()
            .arg(&self.name)
            .stdin(MemoryInputPipe::new(input.to_vec()))
            .stdout(stdout.clone())
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.max_memory)
            .build();
        let state = TaskState {
            wasi,
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
        match command.wasi_cli_run().call_run(&mut store) {
            Ok(Ok(())) => {}
            Ok(Err(())) => bail!("{} returned an error from run", self.name),
            Err(error) => match error.downcast_ref::<I32Exit>() {
                Some(I32Exit(0)) => {}
                Some(I32Exit(code)) => bail!("{} exited with {code}", self.name),
                None => return Err(error.into()),
            },
        }
        drop(store);
        std::hint::black_box(stdout.contents());
        Ok(instantiate)
    }
}
