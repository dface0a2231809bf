//! The warren producer: enqueue sandboxed WebAssembly tasks for warren workers and collect their
//! results — as a library another Rust service can call, and as the `warren` CLI built on it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), warren::ProducerError> {
//! use warren::{Producer, Topology};
//! use warren_schemas::Task;
//!
//! let producer = Producer::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Topology::with_suffix("demo")).await?;
//! let task = Task::new("upper".parse().expect("valid name"), b"hello".to_vec());
//! producer.submit(&task, None).await?; // result goes to the shared results queue
//! # Ok(()) }
//! ```
//!
//! Delivery is at least once in both directions: a task may run twice (a worker crashed after
//! publishing its result), so [`ResultStream`] drops repeated task ids, and a result is acked
//! only when the caller says it is persisted.
//!
//! # Layout
//! - [`producer`]: [`Producer`] — connection, topology, `submit`, queue inspection.
//! - [`publisher`]: [`Publisher`] — many tasks, confirms pipelined with a bound.
//! - [`results`]: [`ResultStream`] — results from a queue, deduplicated, acked after persisting.
//! - [`batch`]: batches with an output directory, resumable collection.
//! - [`status`], [`dead`]: queue depths; dead letters listed and requeued.
//! - [`module`]: modules in an OCI registry — push a `.wasm`, list a repository's tags.
//! - [`error`]: the error type, [`ProducerError`].
//! - [`cli`]: the `warren` command line (argument parsing, progress bars, output).
#![deny(missing_docs)]

pub mod batch;
pub mod cli;
pub mod dead;
pub mod error;
pub mod module;
pub mod producer;
pub mod publisher;
pub mod results;
pub mod status;

pub use error::{ProducerError, Result};
pub use producer::{Producer, QueueDepth};
pub use publisher::{Confirmed, Publisher, DEFAULT_MAX_OUTSTANDING};
pub use results::{Received, ResultStream};
pub use warren_schemas::Topology;
