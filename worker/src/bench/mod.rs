//! Benchmarks that print numbers (never timed asserts): `warren-worker bench ...`.

pub mod instantiate;
mod stats;

pub use instantiate::{run_instantiate_bench, InstantiateBenchArgs};
pub use stats::percentile;
