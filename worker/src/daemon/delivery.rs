//! The per-task path, in one place:
//! **decode → look up InstancePre → instantiate → run → publish result (confirmed) → ack**.
//!
//! Each delivery runs in its own tokio task, so many results wait for their publisher confirms
//! at once (confirms are pipelined; no task waits for another's confirm). The delivery is acked
//! only after the broker confirmed its result (acks are coalesced by [`super::acks`]); if the
//! connection dies first, the delivery is unacked and the broker redelivers it (the task is
//! simply redone: at-least-once).

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel};
use tracing::{debug, warn};
use warren_schemas::task::unix_now_ns;
use warren_schemas::{decode, encode, Task, TaskResult, CONTENT_TYPE};

use super::acks::{Acks, Settle};
use super::Worker;
use crate::metrics;

/// Handles one delivery from start to ack (or dead-letter).
pub async fn handle(worker: Arc<Worker>, publisher: Channel, acks: Acks, delivery: Delivery) {
    let tag = delivery.delivery_tag;
    metrics::in_flight(1.0);
    // 1. decode
    let task: Task = match decode(&delivery.data, worker.max_message_bytes) {
        Ok(task) => task,
        Err(error) => {
            warn!(reason = error.label(), %error, bytes = delivery.data.len(), "undecodable delivery dead-lettered");
            metrics::record_rejected(error.label());
            acks.settle(tag, Settle::DeadLetter);
            metrics::in_flight(-1.0);
            return;
        }
    };
    let task_id = task.id;
    let reply_to = delivery.properties.reply_to().clone();
    // 2.–4. look up, instantiate, run (on the executor's threads)
    let result = worker.execute(task, attempt(&delivery)).await;
    metrics::record_result(&result);
    debug!(%task_id, outcome = result.outcome.label(), "task finished");
    // 5. publish, confirmed; 6. ack
    match publish_confirmed(&worker, &publisher, reply_to, &result).await {
        Ok(true) => acks.settle(tag, Settle::Ack),
        Ok(false) => {
            warn!(%task_id, "broker refused the result (nack); requeueing the task");
            acks.settle(tag, Settle::Requeue);
        }
        Err(error) => {
            warn!(%task_id, %error, "could not publish the result; requeueing the task");
            acks.settle(tag, Settle::Requeue);
        }
    }
    metrics::in_flight(-1.0);
}

/// Publishes `result` to `reply_to` (or the results queue) and waits for the broker's confirm.
/// `Ok(false)` when the broker nacked it.
async fn publish_confirmed(
    worker: &Worker,
    publisher: &Channel,
    reply_to: Option<ShortString>,
    result: &TaskResult,
) -> lapin::Result<bool> {
    let routing_key = reply_to.unwrap_or_else(|| worker.topology.results.as_str().into());
    let id: ShortString = result.task_id.to_string().into();
    let properties = BasicProperties::default()
        .with_message_id(id.clone())
        .with_correlation_id(id)
        .with_content_type(CONTENT_TYPE.into())
        .with_timestamp(unix_now_ns() / 1_000_000_000)
        .with_delivery_mode(2);
    let confirm = publisher
        .basic_publish(
            "".into(),
            routing_key,
            BasicPublishOptions::default(),
            &encode(result),
            properties,
        )
        .await?;
    Ok(confirm.await?.is_ack())
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
