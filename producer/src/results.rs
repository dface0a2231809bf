//! [`ResultStream`]: results consumed from a queue, each task id yielded **once**, acked only
//! when the caller says it has persisted the result.
//!
//! Workers deliver at least once: a worker that crashes after publishing a result but before
//! acking its task runs the task again, and a second result with the same task id arrives. The
//! stream remembers the ids it has yielded (plus any the caller already had, e.g. read back from
//! disk) and acks duplicates without yielding them. Because a yielded result is acked only by
//! [`ResultStream::ack`], a crash between receiving and persisting loses nothing: the broker
//! redelivers the unacked message to the next consumer.

use std::collections::HashSet;

use futures_lite::future::poll_once;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tracing::{debug, warn};
use warren_schemas::{decode, TaskId, TaskResult, DEFAULT_MAX_MESSAGE_BYTES};

use crate::error::{ProducerError, Result};
use crate::producer::Producer;

/// Deliveries the broker may push before acks: enough to keep a disk-writing collector busy.
pub const RESULTS_PREFETCH: u16 = 256;

/// One result, not yet acknowledged.
pub struct Received {
    /// The worker's answer.
    pub result: TaskResult,
    /// The delivery's tag on the stream's channel, to acknowledge it once the caller has
    /// persisted the result.
    tag: u64,
}

/// A consumer of results from one queue, deduplicating by task id.
pub struct ResultStream {
    /// The channel the consumer lives on; closing it returns unacked results to the queue.
    channel: Channel,
    /// The broker's push stream.
    consumer: Consumer,
    /// Ids already yielded or already persisted by the caller: later copies are acked and
    /// dropped.
    seen: HashSet<TaskId>,
    /// Messages dropped because they did not decode as a result.
    undecodable: u64,
    /// Duplicate results acked and dropped.
    duplicates: u64,
    /// The broker settled each result as it sent it ([`ResultStream::consume_settled`]): acks
    /// are not sent.
    settled_on_delivery: bool,
}

impl ResultStream {
    /// Starts consuming `queue`. `already_done` holds task ids the caller has persisted before
    /// (their results are acked and skipped).
    pub async fn consume(
        producer: &Producer,
        queue: &str,
        already_done: impl IntoIterator<Item = TaskId>,
    ) -> Result<Self> {
        Self::start(producer, queue, already_done, false).await
    }

    /// Starts consuming `queue` with results settled by the broker as it sends them (`no_ack`),
    /// for readers that only count results, such as the benchmarks: the broker does no ack
    /// bookkeeping, and a reader that dies loses the results in flight. [`ResultStream::ack`]
    /// does nothing on such a stream.
    pub async fn consume_settled(producer: &Producer, queue: &str) -> Result<Self> {
        Self::start(producer, queue, [], true).await
    }

    async fn start(
        producer: &Producer,
        queue: &str,
        already_done: impl IntoIterator<Item = TaskId>,
        settled_on_delivery: bool,
    ) -> Result<Self> {
        let channel = producer.channel().await?;
        if !settled_on_delivery {
            channel
                .basic_qos(RESULTS_PREFETCH, BasicQosOptions::default())
                .await
                .map_err(|e| ProducerError::broker("setting the results prefetch", e))?;
        }
        let options = BasicConsumeOptions {
            no_ack: settled_on_delivery,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(queue.into(), "".into(), options, FieldTable::default())
            .await
            .map_err(|e| ProducerError::broker(format!("consuming results from {queue}"), e))?;
        Ok(ResultStream {
            channel,
            consumer,
            seen: already_done.into_iter().collect(),
            undecodable: 0,
            duplicates: 0,
            settled_on_delivery,
        })
    }

    /// The next result whose task id has not been seen. `None` when the broker ended the
    /// consumer (queue deleted, connection closed).
    pub async fn next(&mut self) -> Option<Result<Received>> {
        loop {
            let delivery = self.consumer.next().await?;
            if let Some(received) = self.accept(delivery).await {
                return Some(received);
            }
        }
    }

    /// The next result already received, without waiting for one: `None` when there is none
    /// yet (or the consumer ended, which [`ResultStream::next`] then reports). For taking a
    /// burst of results at once.
    pub async fn next_ready(&mut self) -> Option<Result<Received>> {
        loop {
            let delivery = poll_once(self.consumer.next()).await??;
            if let Some(received) = self.accept(delivery).await {
                return Some(received);
            }
        }
    }

    /// Decodes and deduplicates one delivery: `None` when it was dropped (acked as a duplicate,
    /// rejected as not a result).
    async fn accept(
        &mut self,
        delivery: lapin::Result<lapin::message::Delivery>,
    ) -> Option<Result<Received>> {
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(e) => return Some(Err(ProducerError::broker("receiving results", e))),
        };
        let result: TaskResult = match decode(&delivery.data, DEFAULT_MAX_MESSAGE_BYTES) {
            Ok(result) => result,
            Err(error) => {
                self.undecodable += 1;
                warn!(reason = error.label(), %error, "dropping a message in the results queue that is not a result");
                if !self.settled_on_delivery {
                    let _ = self
                        .channel
                        .basic_reject(delivery.delivery_tag, BasicRejectOptions { requeue: false })
                        .await;
                }
                return None;
            }
        };
        if !self.seen.insert(result.task_id) {
            self.duplicates += 1;
            debug!(task_id = %result.task_id, attempt = result.attempt, "duplicate result dropped");
            if !self.settled_on_delivery {
                let acked = self
                    .channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .await;
                if let Err(e) = acked {
                    return Some(Err(ProducerError::broker("acking a duplicate result", e)));
                }
            }
            return None;
        }
        Some(Ok(Received {
            result,
            tag: delivery.delivery_tag,
        }))
    }

    /// Acknowledges `received`: call it after the result is persisted.
    pub async fn ack(&mut self, received: Received) -> Result<()> {
        self.settle(received, false).await
    }

    /// Acknowledges `last` and every result received before it, in one message to the broker:
    /// call it after all of them are persisted.
    pub async fn ack_through(&mut self, last: Received) -> Result<()> {
        self.settle(last, true).await
    }

    async fn settle(&mut self, received: Received, multiple: bool) -> Result<()> {
        if self.settled_on_delivery {
            return Ok(());
        }
        // On the channel itself, in order with the stream's other acks and rejects (lapin's
        // `Acker` would hand each to another task first).
        self.channel
            .basic_ack(received.tag, BasicAckOptions { multiple })
            .await
            .map_err(|e| {
                ProducerError::broker(
                    format!("acking the result of task {}", received.result.task_id),
                    e,
                )
            })
    }

    /// Messages dropped because they were not results.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Duplicate results dropped.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Stops consuming; unacked results return to the queue.
    pub async fn close(self) {
        let _ = self.channel.close(200, "collected".into()).await;
    }
}
