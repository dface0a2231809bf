//! The warren worker: runs each task in a fresh WebAssembly sandbox, instantiated in
//! microseconds from a warm registry of pre-linked modules.
//!
//! # Layout
//! - [`config`]: every sandbox knob in one struct, with defaults, units and costs.
//! - [`engine`]: wasmtime engine setup (pooling allocator, copy-on-write images, epochs).
//! - [`sandbox`]: one task in one fresh store — warren's own WASI preview 1, limits, outcome mapping.
//! - [`registry`]: modules by name and digest, AOT-compiled and cached, hot-reloadable.
//! - [`watch`]: rescans the modules directory when it changes.
//! - [`runner`]: `Task` → `TaskResult` through the registry, on the calling thread.
//! - [`daemon`]: `warren-worker run`, the queue worker (consume, run, publish confirmed, ack).
//! - [`metrics`], [`http`]: Prometheus metrics and the health endpoints; [`probe`] reads them.
//! - [`exec`]: `warren-worker exec`, the local, broker-less way to run one task.
//! - [`bench`]: `warren-worker bench instantiate|executor|queue|soak`: numbers, side by side.
#![deny(missing_docs)]

pub mod bench;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod exec;
pub mod http;
pub mod metrics;
pub mod probe;
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

    /// AOT cache directory (compiled modules, keyed by digest and engine). Must be writable
    /// only by the worker. Default: `warren-aot-cache` in the system temp directory.
    #[arg(long = "cache", env = "WARREN_CACHE")]
    pub cache_dir: Option<std::path::PathBuf>,
}

impl ModuleSource {
    /// The cache directory to use.
    pub fn cache_dir(&self) -> std::path::PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("warren-aot-cache"))
    }
}
