//! Benchmarks that print numbers (never timed asserts): `warren-worker bench ...`.

pub mod executor;
pub mod instantiate;
pub mod queue;
pub mod soak;
mod stats;
mod worker_process;

pub use executor::{run_executor_bench, ExecutorBenchArgs};
pub use instantiate::{run_instantiate_bench, InstantiateBenchArgs};
pub use queue::{run_queue_bench, QueueBenchArgs};
pub use soak::{run_soak, SoakArgs};
pub use stats::percentile;
