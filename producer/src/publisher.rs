//! [`Publisher`]: publishes many tasks with publisher confirms **pipelined**: up to
//! `max_outstanding` messages are on the wire awaiting their confirm at once, instead of one
//! round trip per task.
//!
//! The bound is the back-pressure: memory for unconfirmed messages stays bounded, and a slow or
//! blocked broker (memory alarm, flow control) slows the publisher down instead of letting it
//! queue without limit. Confirms are reported as they arrive, so a caller can record "this task
//! is safely with the broker" per task.
//!
//! [`Publisher::publish_all`] hands a burst of tasks to the connection at once: their frames are
//! queued together, so the connection's I/O thread writes them in one go and wakes the caller
//! once, instead of once per task.

use std::future::Future;
use std::pin::Pin;

use futures_lite::future::poll_once;
use futures_util::stream::{FuturesOrdered, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::Channel;
use lapin::Confirmation;
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

type Pending = Pin<Box<dyn Future<Output = (Confirmed, lapin::Result<Confirmation>)> + Send>>;

/// A pipelined, confirmed publisher on a channel of its own.
pub struct Publisher {
    /// Confirm-mode channel used only by this publisher, so confirms map to its messages.
    channel: Channel,
    /// The task queue (routing key on the default exchange).
    queue: String,
    /// Most confirms awaited at once.
    max_outstanding: usize,
    /// The confirm of each unconfirmed publish, in publishing order.
    in_flight: FuturesOrdered<Pending>,
}

impl Publisher {
    /// A publisher to the producer's task queue with at most `max_outstanding` (≥ 1) unconfirmed
    /// messages.
    pub async fn new(producer: &Producer, max_outstanding: usize) -> Result<Self> {
        Ok(Publisher {
            channel: producer.confirm_channel().await?,
            queue: producer.topology().tasks.clone(),
            max_outstanding: max_outstanding.max(1),
            in_flight: FuturesOrdered::new(),
        })
    }

    /// Publishes `task` (results to `reply_to`, else the shared results queue). When
    /// `max_outstanding` confirms are pending it first waits for one. Returns the confirms that
    /// arrived meanwhile; a nack or a lost channel is an error.
    pub async fn publish(&mut self, task: &Task, reply_to: Option<&str>) -> Result<Vec<Confirmed>> {
        self.publish_all(std::slice::from_ref(task), reply_to).await
    }

    /// Publishes `tasks` as one burst, in order, first waiting until `max_outstanding` leaves
    /// room for them (a burst larger than that bound waits for every earlier confirm). Returns
    /// the confirms that arrived meanwhile; a nack or a lost channel is an error.
    pub async fn publish_all(
        &mut self,
        tasks: &[Task],
        reply_to: Option<&str>,
    ) -> Result<Vec<Confirmed>> {
        let mut confirmed = self.ready().await?;
        let room_needed = self.max_outstanding.saturating_sub(tasks.len());
        while self.in_flight.len() > room_needed {
            match self.next_confirmed().await {
                Some(c) => confirmed.push(c?),
                None => break,
            }
        }
        let bodies: Vec<Vec<u8>> = tasks.iter().map(encode).collect();
        let mut sends: Vec<_> = tasks
            .iter()
            .zip(&bodies)
            .map(|(task, body)| {
                Box::pin(self.channel.basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    task_properties(task, reply_to),
                ))
            })
            .collect();
        // A publish takes its delivery tag and queues its frames on its first poll: poll each
        // once, in order, before waiting for any, so the burst goes out together and in order.
        let mut sent = Vec::with_capacity(sends.len());
        for send in &mut sends {
            sent.push(poll_once(send).await);
        }
        let mut results = Vec::with_capacity(sends.len());
        for (send, early) in sends.into_iter().zip(sent) {
            results.push(match early {
                Some(result) => result,
                None => send.await,
            });
        }
        let mut failed = None;
        for (task, confirm) in tasks.iter().zip(results) {
            match confirm {
                Ok(confirm) => {
                    let id = Confirmed {
                        task_id: task.id,
                        batch: task.batch,
                    };
                    self.in_flight
                        .push_back(Box::pin(async move { (id, confirm.await) }));
                }
                Err(e) if failed.is_none() => {
                    failed = Some(ProducerError::broker(
                        format!("publishing task {}", task.id),
                        e,
                    ));
                }
                Err(_) => {}
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(confirmed),
        }
    }

    /// Confirms that have already arrived, without waiting.
    pub async fn ready(&mut self) -> Result<Vec<Confirmed>> {
        let mut confirmed = Vec::new();
        while let Some(Some(settled)) = poll_once(self.in_flight.next()).await {
            confirmed.push(settle(settled)?);
        }
        Ok(confirmed)
    }

    /// Waits for the next confirm; `None` when nothing is outstanding.
    pub async fn next_confirmed(&mut self) -> Option<Result<Confirmed>> {
        self.in_flight.next().await.map(settle)
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

fn settle((confirmed, outcome): (Confirmed, lapin::Result<Confirmation>)) -> Result<Confirmed> {
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
