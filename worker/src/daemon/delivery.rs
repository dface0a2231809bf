//! The per-task path, in one place:
//! **decode → look up InstancePre → instantiate → run → publish result (confirmed) → ack**.
//!
//! A lane ([`super::lanes`]) takes a delivery off the consumer and carries it through every
//! step here on its own thread, up to the encoded result and its publish; the session's
//! [`Settler`] starts that publish with the next batch of results (one TCP send for several),
//! and acks once the broker confirmed (acks coalesced by [`super::acks`]). No task waits for
//! another's confirm, and a task crosses threads only where it must: its result to the
//! settler. If the connection dies first, the delivery is unacked and the broker redelivers it
//! (the task is simply redone: at-least-once).

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel};
use tracing::{debug, warn};
use warren_schemas::task::unix_now_ns;
use warren_schemas::{decode, encode, Task, TaskResult, CONTENT_TYPE};

use super::acks::Settle;
use super::lanes::Carry;
use super::settler::{Publishing, Settler};
use super::Execute;
use crate::metrics;

/// What every task of the worker goes through, whichever session delivered it.
pub struct TaskPath {
    /// Runs a task to its result.
    pub executor: Box<dyn Execute>,
    /// Largest task message decoded; larger ones are dead-lettered.
    pub max_message_bytes: usize,
    /// Where results go when a task names no `reply_to`.
    pub results_queue: String,
}

/// One session's end of the path: the task path, the channel results are published on and the
/// settler that acks them.
pub struct Carrier {
    path: Arc<TaskPath>,
    /// Shared, not cloned per task: a lapin `Channel` clone is a dozen reference counts.
    publisher: Arc<Channel>,
    settler: Settler,
}

impl Carrier {
    /// The carrier of a session publishing on `publisher` and settling through `settler`.
    pub fn new(path: Arc<TaskPath>, publisher: Channel, settler: Settler) -> Self {
        Carrier {
            path,
            publisher: Arc::new(publisher),
            settler,
        }
    }
}

impl Carry<Delivery> for Carrier {
    fn carry(&self, delivery: Delivery) {
        carry(&self.path, &self.publisher, &self.settler, delivery);
    }
}

/// Carries one delivery from the consumer to its published result, on the calling lane.
fn carry(path: &TaskPath, publisher: &Arc<Channel>, settler: &Settler, delivery: Delivery) {
    let tag = delivery.delivery_tag;
    settler.received();
    // 1. decode
    let task: Task = match decode(&delivery.data, path.max_message_bytes) {
        Ok(task) => task,
        Err(error) => {
            warn!(reason = error.label(), %error, bytes = delivery.data.len(), "undecodable delivery dead-lettered");
            metrics::record_rejected(error.label());
            settler.settle(tag, Settle::DeadLetter);
            return;
        }
    };
    let attempt = attempt(&delivery);
    let routing_key = delivery
        .properties
        .reply_to()
        .clone()
        .unwrap_or_else(|| path.results_queue.as_str().into());
    drop(delivery);
    // 2.–4. look up, instantiate, run: here, on this lane
    let result = path.executor.execute(task, attempt);
    metrics::record_result(&result);
    debug!(task_id = %result.task_id, outcome = result.outcome.label(), "task finished");
    // 5. publish (with the settler's next batch), 6. ack once confirmed
    let publishing = publish(publisher.clone(), routing_key, &result);
    settler.publishing(tag, result.task_id, publishing);
}

/// The publish of `result` to `routing_key` via the default exchange: its first poll (by the
/// settler) queues the frames; it resolves to whether the broker confirmed the result.
fn publish(publisher: Arc<Channel>, routing_key: ShortString, result: &TaskResult) -> Publishing {
    let id: ShortString = result.task_id.to_string().into();
    let properties = BasicProperties::default()
        .with_message_id(id.clone())
        .with_correlation_id(id)
        .with_content_type(CONTENT_TYPE.into())
        .with_timestamp(unix_now_ns() / 1_000_000_000)
        .with_delivery_mode(2);
    let payload = encode(result);
    Box::pin(async move {
        let confirm = publisher
            .basic_publish(
                "".into(),
                routing_key,
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await?;
        Ok(confirm.await?.is_ack())
    })
}

/// Delivery attempt from 1: quorum queues count earlier deliveries in `x-delivery-count`.
fn attempt(delivery: &Delivery) -> u32 {
    let earlier = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("x-delivery-count").cloned())
        .and_then(|value| match value {
            AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongUInt(n) => Some(n),
            AMQPValue::ShortInt(n) => u32::try_from(n).ok(),
            _ => None,
        });
    match earlier {
        Some(n) => n.saturating_add(1),
        None if delivery.redelivered => 2,
        None => 1,
    }
}
