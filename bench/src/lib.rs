//! warren's benchmarks: numbers printed side by side, never timed asserts. `warren-bench`
//! runs them; `warren-null-worker` is the broker-bound ceiling `warren-bench queue` measures
//! warren against.
//!
//! The benchmarks see warren from outside, through the same public API the daemon and `exec`
//! use (the sandbox, the registry, the task runner, real worker processes); the baselines they
//! compare with are stock wasmtime, set up here.
//!
//! # Layout
//! - [`instantiate`]: instantiation strategies side by side: naive, CoW + `InstancePre`, warren's
//!   pool.
//! - [`guests`]: the Python and JavaScript runners against the preview1 CPython they replace.
//! - [`executor`]: warren's task path without a broker vs the smallest raw wasmtime loop.
//! - [`queue`]: tasks/s and latency through RabbitMQ, next to the null worker.
//! - [`batch`]: a batch as users type it: the producer's CPU per task and its rate next to
//!   `queue`'s trivial drain rate.
//! - [`soak`]: many tasks through one worker process, watching for leaks.
//! - [`queue_types`]: a quorum results queue next to a classic one: broker CPU per message.
//! - [`baseline`]: stock wasmtime + wasmtime-wasi, the embedding the baselines run.
//! - [`baseline_component`]: the same for `wasi:cli/command` components (WASI 0.2).
//! - [`broker`]: a benchmark's own queues on the broker, deleted afterwards.
//! - [`workers`]: worker processes on a benchmark's queues (the tests' helper).
//! - [`null`]: the null executor behind `warren-null-worker`.
//! - [`stats`]: nearest-rank percentiles of the samples.
//! - [`timed`]: a task in a loop on several threads for a fixed time.
#![deny(missing_docs)]

pub mod baseline;
pub mod baseline_component;
pub mod batch;
pub mod broker;
pub mod executor;
pub mod guests;
pub mod instantiate;
pub mod null;
pub mod queue;
pub mod queue_types;
pub mod soak;
pub mod stats;
pub mod timed;
pub mod workers;

pub use batch::{run_batch_bench, BatchBenchArgs};
pub use executor::{run_executor_bench, ExecutorBenchArgs};
pub use guests::{run_guests_bench, GuestsBenchArgs};
pub use instantiate::{run_instantiate_bench, InstantiateBenchArgs};
pub use queue::{run_queue_bench, QueueBenchArgs};
pub use queue_types::{run_queue_types_bench, QueueTypesBenchArgs};
pub use soak::{run_soak, SoakArgs};
