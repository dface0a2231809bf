//! Wire types shared by the warren worker and producer.
//!
//! Everything that crosses the broker is defined here, once, so the two sides cannot drift apart:
//! a [`Task`] goes from the producer to a worker, a [`TaskResult`] comes back. Bytes on the wire
//! are produced and read only by [`codec`], which puts a version byte in front of a bincode body
//! and refuses oversized or malformed input with a typed error instead of panicking.
//!
//! # Layout
//! - [`task`]: what a producer asks for — module reference, input, args, env, limits, batch.
//! - [`result`]: what a worker answers — the [`Outcome`], captured output, timings.
//! - [`codec`]: the only place that turns those types into bytes and back.
//! - `topology` (feature `amqp`): the broker queues both sides declare, identically.
//! - `nodes` (feature `amqp`): the broker's node addresses and the connect that fails over.
#![deny(missing_docs)]

#[cfg(feature = "cli")]
pub mod args;
pub mod codec;
#[cfg(feature = "amqp")]
pub mod nodes;
pub mod result;
pub mod task;
#[cfg(feature = "amqp")]
pub mod topology;

pub use codec::{
    decode, encode, DecodeError, CONTENT_TYPE, DEFAULT_MAX_MESSAGE_BYTES, WIRE_VERSION,
};
#[cfg(feature = "amqp")]
pub use nodes::BrokerNodes;
pub use result::{Outcome, ResolvedModule, TaskResult, Timings};
pub use task::{BatchRef, ModuleRef, ModuleRefError, Task, TaskId, TaskLimits};
#[cfg(feature = "amqp")]
pub use topology::Topology;
