//! The async end of a session's deliveries: waits for each result's publisher confirm and
//! settles the delivery (ack, requeue or dead-letter), coalescing acks by [`super::acks`]' rules.
//!
//! Why one task does this for everybody: an executor thread publishes its task's result itself
//! (the frames are queued at once, see [`super::delivery`]) and hands the pending confirm over
//! here, instead of waking an async task per delivery to do it. One task waiting for many
//! confirms is woken once per burst of confirms, not once per task, and it is also the only
//! writer of acks, so their order is safe by construction.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::Channel;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;
use warren_schemas::TaskId;

use super::acks::{send, Event, Ledger, Settle, HELD_ACKS_LIMIT_DIVISOR};
use crate::metrics;

/// A result's publish, already on its way to the broker: resolves to whether the broker
/// confirmed it (`false`: nacked).
pub type Publishing = Pin<Box<dyn Future<Output = lapin::Result<bool>> + Send>>;

enum Message {
    Ledger(Event),
    Publishing(u64, TaskId, Publishing),
    /// Stop waiting: send what is settled and end.
    Finish,
    /// The connection is gone: end without sending anything.
    Abandon,
}

/// The sending side, cloned into whatever finishes a delivery (executor threads included).
#[derive(Clone)]
pub struct Settler {
    messages: mpsc::UnboundedSender<Message>,
    /// Registered and not settled: counted up by the sender, so a drain never misses a
    /// registration still on its way to the settling task.
    unsettled: Arc<AtomicUsize>,
}

/// The session's handle on the settling task.
pub struct Settling {
    messages: mpsc::UnboundedSender<Message>,
    unsettled: Arc<AtomicUsize>,
    /// Bumped whenever the settling task settled something.
    progress: watch::Receiver<()>,
    task: JoinHandle<()>,
}

impl Settler {
    /// Starts settling the deliveries of `channel` (the consuming channel).
    pub fn start(channel: Channel, prefetch: u16) -> (Settler, Settling) {
        let (messages, receiver) = mpsc::unbounded_channel();
        let (progress_tx, progress) = watch::channel(());
        let unsettled = Arc::new(AtomicUsize::new(0));
        let held_limit = (usize::from(prefetch) / HELD_ACKS_LIMIT_DIVISOR).max(1);
        let task = tokio::spawn(settle_loop(
            channel,
            receiver,
            (unsettled.clone(), progress_tx),
            held_limit,
        ));
        let settler = Settler {
            messages: messages.clone(),
            unsettled: unsettled.clone(),
        };
        let settling = Settling {
            messages,
            unsettled,
            progress,
            task,
        };
        (settler, settling)
    }

    /// Registers a delivery; call in arrival order, before anything can settle it.
    pub fn received(&self, delivery_tag: u64) {
        metrics::in_flight(1.0);
        self.unsettled.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .messages
            .send(Message::Ledger(Event::Received(delivery_tag)));
    }

    /// Settles a delivery now (one that needs no publish: undecodable).
    pub fn settle(&self, delivery_tag: u64, how: Settle) {
        let _ = self
            .messages
            .send(Message::Ledger(Event::Settled(delivery_tag, how)));
    }

    /// Acks the delivery once `publishing` is confirmed; requeues it if the broker nacks the
    /// result or the publish fails.
    pub fn publishing(&self, delivery_tag: u64, task_id: TaskId, publishing: Publishing) {
        let _ = self
            .messages
            .send(Message::Publishing(delivery_tag, task_id, publishing));
    }
}

impl Settling {
    /// Waits until every registered delivery is settled, or `timeout` passes. Returns how many
    /// are still running.
    pub async fn drained(&mut self, timeout: Duration) -> usize {
        let unsettled = &self.unsettled;
        let all_settled = self
            .progress
            .wait_for(|()| unsettled.load(Ordering::SeqCst) == 0);
        let _ = tokio::time::timeout(timeout, all_settled).await;
        unsettled.load(Ordering::SeqCst)
    }

    /// Sends what is settled and ends; deliveries not settled by then are left to the broker.
    pub async fn finish(self) {
        let _ = self.messages.send(Message::Finish);
        let _ = self.task.await;
    }

    /// Ends without sending anything (the connection is gone; the broker redelivers whatever
    /// was not acked). Tasks still running finish in the background and are dropped.
    pub fn abandon(self) {
        let _ = self.messages.send(Message::Abandon);
    }
}

async fn settle_loop(
    channel: Channel,
    mut messages: mpsc::UnboundedReceiver<Message>,
    (unsettled, progress): (Arc<AtomicUsize>, watch::Sender<()>),
    held_limit: usize,
) {
    let settled = |ledger: &mut Ledger, event: Event| {
        if let Event::Settled(..) = event {
            metrics::in_flight(-1.0);
            unsettled.fetch_sub(1, Ordering::SeqCst);
        }
        ledger.apply(event);
    };
    let mut ledger = Ledger::default();
    let mut confirms = FuturesUnordered::new();
    let mut warned = false;
    loop {
        tokio::select! {
            message = messages.recv() => {
                let Some(message) = message else { break };
                let mut end = None;
                // Take whatever else is already waiting into the same frames.
                let mut next = Some(message);
                while let Some(message) = next.take().or_else(|| messages.try_recv().ok()) {
                    match message {
                        Message::Ledger(event) => settled(&mut ledger, event),
                        Message::Publishing(tag, task_id, publishing) => {
                            confirms.push(async move { (tag, task_id, publishing.await) });
                        }
                        Message::Finish => end = Some(true),
                        Message::Abandon => end = Some(false),
                    }
                }
                match end {
                    Some(true) => break,
                    Some(false) => {
                        metrics::in_flight(-(ledger.running() as f64));
                        return;
                    }
                    None => {}
                }
            }
            Some((tag, task_id, confirmed)) = confirms.next(), if !confirms.is_empty() => {
                settled(&mut ledger, Event::Settled(tag, settlement(task_id, confirmed)));
                // Every confirm that is already in counts toward the same frames.
                while let Some(Some((tag, task_id, confirmed))) =
                    futures_util::FutureExt::now_or_never(confirms.next())
                {
                    settled(&mut ledger, Event::Settled(tag, settlement(task_id, confirmed)));
                }
            }
        }
        let frames = ledger.take_frames(held_limit);
        if let Err(error) = send(&channel, frames).await {
            if !warned {
                warn!(%error, "could not settle deliveries; the broker will redeliver them");
                warned = true;
            }
        }
        progress.send_replace(());
    }
    // Deliveries still running were abandoned (drain deadline); the finished ones held above
    // them still get their acks.
    metrics::in_flight(-(ledger.running() as f64));
    if let Err(error) = send(&channel, ledger.take_frames(1)).await {
        if !warned {
            warn!(%error, "could not settle deliveries; the broker will redeliver them");
        }
    }
}

/// How a delivery ends once its result's publish is resolved.
fn settlement(task_id: TaskId, confirmed: lapin::Result<bool>) -> Settle {
    match confirmed {
        Ok(true) => Settle::Ack,
        Ok(false) => {
            warn!(%task_id, "broker refused the result (nack); requeueing the task");
            Settle::Requeue
        }
        Err(error) => {
            warn!(%task_id, %error, "could not publish the result; requeueing the task");
            Settle::Requeue
        }
    }
}
