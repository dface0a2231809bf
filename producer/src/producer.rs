//! [`Producer`]: one broker connection, the shared topology declared on it, and one confirmed
//! channel for publishing single tasks.
//!
//! Everything that needs a channel of its own (a batch's pipelined publisher, a results
//! consumer, a passive declare that may fail) asks the producer for a fresh one, so a failing
//! operation never poisons the channel others publish on.

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tracing::{debug, warn};
use warren_schemas::nodes::{ConnectError, Connected};
use warren_schemas::task::unix_now_ns;
use warren_schemas::topology::{declare_queue, results_queue_arguments};
use warren_schemas::BrokerNodes;
use warren_schemas::{
    decode, encode, Task, TaskId, TaskResult, Topology, CONTENT_TYPE, DEFAULT_MAX_MESSAGE_BYTES,
};

use crate::error::{is_not_found, ProducerError, Result};

/// A connection to the broker on warren's queues.
pub struct Producer {
    /// Index of the node connected to, in the [`BrokerNodes`] given.
    node: usize,
    /// Kept so channels can be opened on demand and the connection closed cleanly.
    connection: Connection,
    /// A channel in confirm mode for [`Producer::submit`].
    channel: Channel,
    /// Queue names shared with the workers.
    topology: Topology,
}

impl Producer {
    /// Connects to `url` (one AMQP URL, or a cluster's nodes comma-separated as `AMQP_URL`
    /// takes them) and declares the topology exactly as the workers do (idempotent).
    pub async fn connect(url: &str, topology: Topology) -> Result<Self> {
        Self::connect_to(&url.parse()?, topology, None).await
    }

    /// Connects to the first of `nodes` that answers, trying them in a random order with
    /// `last` (the node used before, if any) last, and declares the topology.
    pub async fn connect_to(
        nodes: &BrokerNodes,
        topology: Topology,
        last: Option<usize>,
    ) -> Result<Self> {
        // Named, so the broker's connection list says who is who.
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("warren producer (pid {})", std::process::id()).into());
        let Connected {
            connection,
            node,
            skipped,
        } = nodes
            .connect(&properties, last)
            .await
            .map_err(connect_failed)?;
        for failure in &skipped {
            warn!(node = %failure.label, error = %failure.error, "cannot connect to broker node; tried the next");
        }
        debug!(
            node = nodes.nodes()[node].label(),
            "connected to the broker"
        );
        let channel = confirm_channel(&connection).await?;
        topology.declare(&channel).await?;
        Ok(Producer {
            node,
            connection,
            channel,
            topology,
        })
    }

    /// Index of the node this producer is connected to, in the [`BrokerNodes`] it was given.
    pub fn node(&self) -> usize {
        self.node
    }

    /// The queue names in use.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A new channel in confirm mode (for a publisher of its own).
    pub async fn confirm_channel(&self) -> Result<Channel> {
        confirm_channel(&self.connection).await
    }

    /// A new plain channel (for consumers and operations that may fail on their own).
    pub async fn channel(&self) -> Result<Channel> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| ProducerError::broker("opening a channel", e))
    }

    /// Enqueues `task` and waits for the broker's confirm. The result goes to `reply_to` when
    /// given, else to the shared results queue.
    pub async fn submit(&self, task: &Task, reply_to: Option<&str>) -> Result<TaskId> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.topology.tasks.as_str().into(),
                BasicPublishOptions::default(),
                &encode(task),
                task_properties(task, reply_to),
            )
            .await
            .map_err(|e| ProducerError::broker(format!("publishing task {}", task.id), e))?;
        let confirmation = confirm
            .await
            .map_err(|e| ProducerError::broker(format!("confirming task {}", task.id), e))?;
        if !confirmation.is_ack() {
            return Err(ProducerError::Nacked { task_id: task.id });
        }
        debug!(task_id = %task.id, module = %task.module, "task submitted");
        Ok(task.id)
    }

    /// Enqueues `task` with a private reply queue (exclusive to this connection, deleted when
    /// done) and waits for its result. Wrap it in a timeout if the wait must be bounded; the
    /// result of a task whose producer went away ends in the unroutable-results queue, with
    /// the gone reply queue's name in its `x-warren-reply-to` header.
    pub async fn submit_and_wait(&self, task: &Task) -> Result<TaskResult> {
        let channel = self.channel().await?;
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .map_err(|e| ProducerError::broker("declaring a private reply queue", e))?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| ProducerError::broker("consuming the reply queue", e))?;
        self.submit(task, Some(queue.name().as_str())).await?;
        while let Some(delivery) = consumer.next().await {
            let delivery =
                delivery.map_err(|e| ProducerError::broker("receiving the result", e))?;
            match decode::<TaskResult>(&delivery.data, DEFAULT_MAX_MESSAGE_BYTES) {
                Ok(result) if result.task_id == task.id => {
                    let _ = channel.close(200, "answered".into()).await;
                    return Ok(result);
                }
                Ok(other) => debug!(task_id = %other.task_id, "ignoring a result for another task"),
                Err(error) => debug!(%error, "ignoring an undecodable reply"),
            }
        }
        Err(ProducerError::Internal(format!(
            "the reply queue of task {} was closed before its result arrived",
            task.id
        )))
    }

    /// Declares a durable quorum queue for results that the broker deletes `expires` after
    /// its last use (no consumer, no declare) — a batch's results queue. Replicated like the
    /// shared queues, so results survive the loss of the node leading it.
    pub async fn declare_results_queue(
        &self,
        name: &str,
        expires: std::time::Duration,
    ) -> Result<()> {
        let channel = self.channel().await?;
        declare_queue(&channel, name, results_queue_arguments(Some(expires))).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Ready messages and consumers of `queue`, without creating it (passive declare).
    pub async fn inspect_queue(&self, queue: &str) -> Result<QueueDepth> {
        // A failed passive declare closes its channel, so it gets one of its own.
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => {
                let _ = channel.close(200, "inspected".into()).await;
                Ok(QueueDepth {
                    messages: q.message_count(),
                    consumers: q.consumer_count(),
                })
            }
            Err(e) if is_not_found(&e) => Err(ProducerError::QueueNotFound {
                queue: queue.to_owned(),
                hint: String::new(),
            }),
            Err(e) => Err(ProducerError::broker(
                format!("inspecting queue {queue}"),
                e,
            )),
        }
    }

    /// Deletes `queue` if it holds no message and has no consumer (used once a batch's
    /// results are all collected, so whatever could still arrive is a duplicate). Quorum
    /// queues refuse `if-empty` deletes, so the queue is inspected first.
    pub async fn delete_queue_if_empty(&self, queue: &str) -> Result<()> {
        let depth = match self.inspect_queue(queue).await {
            Ok(depth) => depth,
            Err(ProducerError::QueueNotFound { .. }) => return Ok(()),
            Err(error) => return Err(error),
        };
        if depth.messages > 0 || depth.consumers > 0 {
            return Ok(());
        }
        let channel = self.channel().await?;
        let outcome = channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await;
        let _ = channel.close(200, "deleted".into()).await;
        outcome
            .map(|_| ())
            .map_err(|e| ProducerError::broker(format!("deleting queue {queue}"), e))
    }

    /// Closes the connection cleanly (unacked deliveries go back to their queues).
    pub async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// Depth of one queue, as a passive declare reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// Messages ready for delivery (not counting delivered-but-unacknowledged ones).
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// The AMQP properties of a task message: persistent, message id = task id, the codec's content
/// type, and `reply_to` when the results should go somewhere else than the shared queue.
pub fn task_properties(task: &Task, reply_to: Option<&str>) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_message_id(task.id.to_string().into())
        .with_content_type(CONTENT_TYPE.into())
        .with_timestamp(unix_now_ns() / 1_000_000_000)
        .with_delivery_mode(2);
    match reply_to {
        Some(queue) => properties.with_reply_to(queue.into()),
        None => properties,
    }
}

/// No node answered: the last node's error underneath (it tells an unreachable broker from a
/// refusal), every node's in the message.
fn connect_failed(mut error: ConnectError) -> ProducerError {
    let last = error.failures.pop().expect("a failed connect tried a node");
    let mut tried: Vec<String> = error
        .failures
        .iter()
        .map(|failure| format!("{}: {}", failure.label, failure.error))
        .collect();
    tried.push(last.label);
    ProducerError::broker(
        format!("cannot connect to the broker (tried {})", tried.join("; ")),
        last.error,
    )
}

async fn confirm_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| ProducerError::broker("opening a channel", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| ProducerError::broker("enabling publisher confirms", e))?;
    Ok(channel)
}
