//! [`Publisher`]: publishes many tasks with publisher confirms **pipelined**: up to
//! `max_outstanding` messages are on the wire awaiting their confirm at once, instead of one
//! round trip per task.
//!
//! The bound is the back-pressure: memory for unconfirmed messages stays bounded, and a slow or
//! blocked broker (memory alarm, flow control) slows the publisher down instead of letting it
//! queue without limit. Confirms are reported as they arrive, so a caller can record "this task
//! is safely with the broker" per task.

use lapin::options::BasicPublishOptions;
use lapin::Channel;
use lapin::Confirmation;
use tokio::task::JoinSet;
use warren_schemas::{encode, BatchRef, Task, TaskId};

use crate::error::{ProducerError, Result};
use crate::producer::{task_properties, Producer};

/// Default bound on unconfirmed publishes: enough to hide a LAN round trip at tens of
/// thousands of small tasks per second, small enough that a failure redoes little.
pub const DEFAULT_MAX_OUTSTANDING: usize = 256;

/// A task the broker confirmed it has stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// The task's id.
    pub task_id: TaskId,
    /// Its place in a batch, when it has one.
    pub batch: Option<BatchRef>,
}

type Pending = (Confirmed, lapin::Result<Confirmation>);

/// A pipelined, confirmed publisher on a channel of its own.
pub struct Publisher {
    /// Confirm-mode channel used only by this publisher, so confirms map to its messages.
    channel: Channel,
    /// The task queue (routing key on the default exchange).
    queue: String,
    /// Most confirms awaited at once.
    max_outstanding: usize,
    /// One task per unconfirmed publish, resolving to its confirmation.
    in_flight: JoinSet<Pending>,
}

impl Publisher {
    /// A publisher to the producer's task queue with at most `max_outstanding` (≥ 1) unconfirmed
    /// messages.
    pub async fn new(producer: &Producer, max_outstanding: usize) -> Result<Self> {
        Ok(Publisher {
            channel: producer.confirm_channel().await?,
            queue: producer.topology().tasks.clone(),
            max_outstanding: max_outstanding.max(1),
            in_flight: JoinSet::new(),
        })
    }

    /// Publishes `task` (results to `reply_to`, else the shared results queue). When
    /// `max_outstanding` confirms are pending it first waits for one. Returns the confirms that
    /// arrived meanwhile; a nack or a lost channel is an error.
    pub async fn publish(&mut self, task: &Task, reply_to: Option<&str>) -> Result<Vec<Confirmed>> {
        let mut confirmed = self.ready()?;
        while self.in_flight.len() >= self.max_outstanding {
            match self.next_confirmed().await {
                Some(c) => confirmed.push(c?),
                None => break,
            }
        }
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                &encode(task),
                task_properties(task, reply_to),
            )
            .await
            .map_err(|e| ProducerError::broker(format!("publishing task {}", task.id), e))?;
        let id = Confirmed {
            task_id: task.id,
            batch: task.batch,
        };
        self.in_flight.spawn(async move { (id, confirm.await) });
        Ok(confirmed)
    }

    /// Confirms that have already arrived, without waiting.
    pub fn ready(&mut self) -> Result<Vec<Confirmed>> {
        let mut confirmed = Vec::new();
        while let Some(joined) = self.in_flight.try_join_next() {
            confirmed.push(settle(joined)?);
        }
        Ok(confirmed)
    }

    /// Waits for the next confirm; `None` when nothing is outstanding.
    pub async fn next_confirmed(&mut self) -> Option<Result<Confirmed>> {
        self.in_flight.join_next().await.map(settle)
    }

    /// Waits for every outstanding confirm.
    pub async fn finish(&mut self) -> Result<Vec<Confirmed>> {
        let mut confirmed = Vec::new();
        while let Some(c) = self.next_confirmed().await {
            confirmed.push(c?);
        }
        Ok(confirmed)
    }

    /// Publishes not yet confirmed.
    pub fn outstanding(&self) -> usize {
        self.in_flight.len()
    }

    /// Closes the publisher's channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, "published".into()).await;
    }
}

fn settle(joined: Result<Pending, tokio::task::JoinError>) -> Result<Confirmed> {
    let (confirmed, outcome) =
        joined.map_err(|e| ProducerError::Internal(format!("confirm waiter failed: {e}")))?;
    match outcome {
        Ok(c) if c.is_ack() => Ok(confirmed),
        Ok(_) => Err(ProducerError::Nacked {
            task_id: confirmed.task_id,
        }),
        Err(e) => Err(ProducerError::broker(
            format!("waiting for the confirm of task {}", confirmed.task_id),
            e,
        )),
    }
}
