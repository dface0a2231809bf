//! The dead-letter queue: look at what died and why, and put it back.
//!
//! Messages land there when a worker rejects them (they do not decode as a task) or when the
//! task queue's delivery limit is reached (the task keeps killing workers). The broker's `x-death`
//! header records the reason, the queue and how often; the body, when it decodes, says which task
//! it was.
//!
//! **Listing is non-destructive**: messages are fetched with `basic.get` *without* acking, then
//! the channel is closed, which returns every one of them to the queue. **Requeueing** publishes a
//! copy to the task queue, waits for the broker's confirm, and only then acks the dead letter, so
//! a crash in between duplicates a message at worst (and results are deduplicated by task id).

use std::collections::BTreeMap;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde::Serialize;
use warren_schemas::{decode, Task, DEFAULT_MAX_MESSAGE_BYTES};

use crate::error::{ProducerError, Result};
use crate::producer::Producer;

/// One dead-lettered message, as [`list`] shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Position in the dead-letter queue, from 1.
    pub position: usize,
    /// The AMQP message id (the task id for messages warren published).
    pub message_id: Option<String>,
    /// Size of the body in bytes.
    pub bytes: usize,
    /// Why the broker dead-lettered it, from the newest `x-death` entry (`rejected`,
    /// `delivery_limit`, `expired`, `maxlen`).
    pub reason: Option<String>,
    /// The queue it died in.
    pub queue: Option<String>,
    /// How many times it died for that reason in that queue.
    pub count: Option<i64>,
    /// What the body is: the task it encodes, or why it does not decode.
    pub body: DeadBody,
}

/// What a dead letter's body turned out to be.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeadBody {
    /// A task that decodes: it died of its delivery limit (or was rejected for another reason).
    Task {
        /// The task's id.
        task_id: String,
        /// The module it names.
        module: String,
        /// Its batch position, when it has one.
        batch: Option<String>,
    },
    /// Bytes that are not a task: the decode error's label and message say why.
    Undecodable {
        /// Short label (`malformed`, `empty`, `unsupported_version`, ...).
        label: &'static str,
        /// The decoder's message.
        error: String,
    },
}

/// Up to `limit` dead letters from the front of the dead-letter queue, left in place.
pub async fn list(producer: &Producer, limit: usize) -> Result<Vec<DeadLetter>> {
    let queue = producer.topology().dead.clone();
    let channel = producer.channel().await?;
    let mut letters = Vec::new();
    while letters.len() < limit {
        let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| ProducerError::broker(format!("reading {queue}"), e))?
        else {
            break;
        };
        letters.push(describe(
            letters.len() + 1,
            &message.delivery.properties,
            &message.delivery.data,
        ));
    }
    // Closing the channel returns every unacked message to the queue, in order.
    let _ = channel.close(200, "listed".into()).await;
    Ok(letters)
}

/// What [`requeue`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Requeued {
    /// Tasks put back on the task queue.
    pub requeued: usize,
    /// Messages left in the dead-letter queue because they do not decode as a task (requeueing
    /// them would only kill them again).
    pub skipped_undecodable: usize,
}

/// Moves up to `limit` decodable dead letters back to the task queue: publish (confirmed), then
/// ack. Undecodable messages stay where they are.
pub async fn requeue(producer: &Producer, limit: usize) -> Result<Requeued> {
    let topology = producer.topology().clone();
    // Look at no more messages than were there at the start: a task that dies again at once
    // must not keep this loop going.
    let available = producer.inspect_queue(&topology.dead).await?.messages as usize;
    let channel = producer.confirm_channel().await?;
    let mut report = Requeued::default();
    let mut fetched = 0;
    while report.requeued < limit && fetched < available {
        fetched += 1;
        let Some(message) = channel
            .basic_get(
                topology.dead.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| ProducerError::broker(format!("reading {}", topology.dead), e))?
        else {
            break;
        };
        let delivery = message.delivery;
        if decode::<Task>(&delivery.data, DEFAULT_MAX_MESSAGE_BYTES).is_err() {
            // Left unacked: it goes back to the dead-letter queue when the channel closes.
            report.skipped_undecodable += 1;
            continue;
        }
        let properties = without_death_headers(&delivery.properties);
        let confirm = channel
            .basic_publish(
                "".into(),
                topology.tasks.as_str().into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await
            .map_err(|e| ProducerError::broker(format!("republishing to {}", topology.tasks), e))?;
        let confirmation = confirm
            .await
            .map_err(|e| ProducerError::broker("waiting for the republish confirm", e))?;
        if !confirmation.is_ack() {
            let task_id = decode::<Task>(&delivery.data, DEFAULT_MAX_MESSAGE_BYTES)
                .map(|t| t.id)
                .unwrap_or_default();
            return Err(ProducerError::Nacked { task_id });
        }
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| ProducerError::broker("acking the requeued dead letter", e))?;
        report.requeued += 1;
    }
    let _ = channel.close(200, "requeued".into()).await;
    Ok(report)
}

fn describe(position: usize, properties: &BasicProperties, data: &[u8]) -> DeadLetter {
    let death = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
        .and_then(|v| match v {
            AMQPValue::FieldArray(deaths) => deaths.as_slice().first().cloned(),
            _ => None,
        });
    let field = |name: &str| -> Option<AMQPValue> {
        match &death {
            Some(AMQPValue::FieldTable(t)) => t.inner().get(name).cloned(),
            _ => None,
        }
    };
    let body = match decode::<Task>(data, DEFAULT_MAX_MESSAGE_BYTES) {
        Ok(task) => DeadBody::Task {
            task_id: task.id.to_string(),
            module: task.module.to_string(),
            batch: task.batch.map(|b| format!("{}#{}", b.batch_id, b.index)),
        },
        Err(error) => DeadBody::Undecodable {
            label: error.label(),
            error: error.to_string(),
        },
    };
    DeadLetter {
        position,
        message_id: properties.message_id().as_ref().map(|m| m.to_string()),
        bytes: data.len(),
        reason: field("reason").and_then(as_text),
        queue: field("queue").and_then(as_text),
        count: field("count").and_then(as_int),
        body,
    }
}

fn as_text(value: AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn as_int(value: AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        _ => None,
    }
}

/// The message's properties minus the broker's death bookkeeping, so a requeued task starts
/// with a clean record.
fn without_death_headers(properties: &BasicProperties) -> BasicProperties {
    let Some(headers) = properties.headers() else {
        return properties.clone();
    };
    let kept: BTreeMap<_, _> = headers
        .inner()
        .iter()
        .filter(|(k, _)| {
            !k.as_str().starts_with("x-death")
                && !k.as_str().starts_with("x-first-death")
                && !k.as_str().starts_with("x-last-death")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    properties.clone().with_headers(FieldTable::from(kept))
}
