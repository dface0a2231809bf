//! The warren worker: runs each task in a fresh WebAssembly sandbox, instantiated in
//! microseconds from a warm registry of pre-linked modules.
//!
//! # Layout
//! - [`config`]: every sandbox knob in one struct, with defaults, units and costs.
//! - [`engine`]: wasmtime engine setup (pooling allocator, copy-on-write images, epochs).
//! - [`sandbox`]: one task in one fresh store — warren's own WASI preview 1, limits, outcome mapping.
//! - [`registry`]: modules by name and digest, AOT-compiled and cached, hot-reloadable.
//! - [`aot_cache`]: which cache directory and files may be trusted as compiled code.
//! - [`watch`]: rescans the modules directory when it changes.
//! - [`runner`]: `Task` → `TaskResult` through the registry, on the calling thread.
//! - [`daemon`]: `warren-worker run`, the queue worker (consume, run, publish confirmed, ack).
//! - [`metrics`], [`http`]: Prometheus metrics and the health endpoints.
//! - [`oci`]: modules in an OCI registry: push, list, resolve a tag, pull by digest.
//! - [`pull`]: modules the directory lacks, pulled from `--registry` on a task's miss.
//! - [`exec`]: `warren-worker exec`, the local, broker-less way to run one task.
//! - [`process`]: the daemon's tokio runtime and stop signal, for every binary that runs it.
//!
//! The benchmarks live in their own crate (`bench/`, `warren-bench`) and use only this public API.
#![deny(missing_docs)]

pub mod aot_cache;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod exec;
pub mod http;
pub mod metrics;
pub mod oci;
pub mod process;
pub mod pull;
pub mod registry;
pub mod runner;
pub mod sandbox;
pub mod watch;

pub use config::SandboxConfig;
pub use registry::{LoadedModule, ModuleRegistry};
pub use runner::TaskRunner;
pub use sandbox::Sandbox;

/// Where modules come from: shared by every subcommand that loads modules.
#[derive(Debug, Clone, clap::Args)]
pub struct ModuleSource {
    /// Directory of `.wasm` modules; the file stem is the module name.
    #[arg(
        long = "modules",
        env = "WARREN_MODULES",
        default_value = "modules/dist"
    )]
    pub modules_dir: std::path::PathBuf,

    /// AOT cache directory (compiled modules, keyed by digest and engine), private to the
    /// worker's user. Default: `$XDG_CACHE_HOME/warren`, else `$HOME/.cache/warren`.
    ///
    /// Its files are native code the worker runs outside the sandbox, so the worker refuses to
    /// start if the directory is not owned by its user or is writable by group or others, or if
    /// a parent lets another user replace it (owned by someone other than root or that user, or
    /// group/world-writable without the sticky bit). Created with mode 0700 when missing. With
    /// neither `XDG_CACHE_HOME` nor `HOME` set, this flag is required.
    #[arg(long = "cache", env = "WARREN_CACHE")]
    pub cache_dir: Option<std::path::PathBuf>,
}

impl ModuleSource {
    /// A registry for these modules over a new pooled sandbox of `config`, with its trusted
    /// AOT cache; nothing is loaded yet.
    pub fn open_registry(
        &self,
        config: SandboxConfig,
    ) -> anyhow::Result<std::sync::Arc<ModuleRegistry>> {
        let sandbox = std::sync::Arc::new(Sandbox::new(config)?);
        Ok(std::sync::Arc::new(ModuleRegistry::new(
            sandbox,
            &self.cache_dir()?,
        )?))
    }

    /// Loads every module of the directory into `registry`; files that fail to load are logged
    /// by the registry and the others stay usable.
    pub fn load_all(&self, registry: &ModuleRegistry) -> anyhow::Result<()> {
        use anyhow::Context;
        registry.load_dir(&self.modules_dir).with_context(|| {
            format!(
                "cannot read the modules directory {}",
                self.modules_dir.display()
            )
        })?;
        Ok(())
    }

    /// Loads only the module `name` (`<dir>/<name>.wasm`, from the AOT cache when it is there):
    /// a directory of large modules costs nothing until one is used. A missing file is not an
    /// error here; a task naming it then ends as module not found.
    pub fn load_named(&self, registry: &ModuleRegistry, name: &str) -> anyhow::Result<()> {
        let file = self.modules_dir.join(format!("{name}.wasm"));
        if file.is_file() {
            registry.load_file(&file)?;
        }
        Ok(())
    }

    /// The cache directory to use: `--cache`, else the per-user default
    /// ([`aot_cache::default_dir`]).
    pub fn cache_dir(&self) -> Result<std::path::PathBuf, aot_cache::CacheError> {
        match &self.cache_dir {
            Some(dir) => Ok(dir.clone()),
            None => aot_cache::default_dir(),
        }
    }
}
