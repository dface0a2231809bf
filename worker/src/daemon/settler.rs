//! The async end of a session's deliveries: waits for each result's publisher confirm and
//! settles the delivery (ack, requeue or dead-letter), coalescing acks by [`super::acks`]' rules.
//!
//! Why one task does this for everybody: a lane publishes its task's result itself (the frames
//! are queued at once, see [`super::delivery`]) and leaves the pending confirm here, instead of
//! waking an async task per delivery to do it. Leaving it wakes nobody: the lane puts it in an
//! inbox and polls it once with a waker that wakes the settling task, so the task is woken by
//! the broker's confirm itself — once per burst of confirms, not once per task. It is also the
//! only writer of acks, so their order is safe by construction.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use lapin::Channel;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;
use warren_schemas::TaskId;

use super::acks::{queue, Ledger, Settle, HELD_ACKS_LIMIT_DIVISOR};
use crate::metrics;

/// A result's publish, already on its way to the broker: resolves to whether the broker
/// confirmed it (`false`: nacked).
pub type Publishing = Pin<Box<dyn Future<Output = lapin::Result<bool>> + Send>>;

enum Message {
    Settled(u64, Settle),
    /// Stop waiting: send what is settled and end.
    Finish,
    /// The connection is gone: end without sending anything.
    Abandon,
}

/// The sending side, shared by the lanes.
pub struct Settler {
    messages: mpsc::UnboundedSender<Message>,
    unsettled: Arc<Unsettled>,
    inbox: Arc<Inbox>,
    /// Wakes the settling task (see [`Inbox`]).
    wake_settling: Waker,
}

/// Confirms left by the lanes, and the settling task's waker. A lane polls a confirm once with
/// a waker that wakes the settling task and leaves it here, both under the lock the settling
/// task takes to empty the inbox, so a confirm that resolves at once cannot wake the task
/// before it is there to be found.
#[derive(Default)]
struct Inbox {
    confirms: Mutex<Vec<(u64, TaskId, Publishing)>>,
    settling: AtomicWaker,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, TaskId, Publishing)>> {
        self.confirms.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Wake for Inbox {
    fn wake(self: Arc<Self>) {
        self.settling.wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.settling.wake();
    }
}

/// Deliveries taken and not settled yet: counted up by the lanes themselves, so a drain never
/// misses one still on its way to the settling task. Once the settling task has ended, the
/// count is closed: deliveries a lane takes after that are not counted (nor in the in-flight
/// gauge), since nobody would ever count them down.
#[derive(Default)]
struct Unsettled(AtomicUsize);

const CLOSED: usize = 1 << (usize::BITS - 1);

impl Unsettled {
    /// Counts one up, unless closed; says whether it did.
    fn add(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n & CLOSED == 0).then_some(n + 1)
            })
            .is_ok()
    }

    fn sub(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst) & !CLOSED
    }

    /// Closes the count and returns what was still counted.
    fn close(&self) -> usize {
        self.0.fetch_or(CLOSED, Ordering::SeqCst) & !CLOSED
    }
}

/// The session's handle on the settling task.
pub struct Settling {
    messages: mpsc::UnboundedSender<Message>,
    unsettled: Arc<Unsettled>,
    /// Bumped whenever the settling task settled something.
    progress: watch::Receiver<()>,
    task: JoinHandle<()>,
}

impl Settler {
    /// Starts settling the deliveries of `channel` (the consuming channel).
    pub fn start(channel: Channel, prefetch: u16) -> (Settler, Settling) {
        let (messages, receiver) = mpsc::unbounded_channel();
        let (progress_tx, progress) = watch::channel(());
        let unsettled = Arc::new(Unsettled::default());
        let held_limit = (usize::from(prefetch) / HELD_ACKS_LIMIT_DIVISOR).max(1);
        let inbox = Arc::new(Inbox::default());
        let task = tokio::spawn(settle_loop(
            channel,
            (receiver, inbox.clone()),
            (unsettled.clone(), progress_tx),
            held_limit,
        ));
        let settler = Settler {
            messages: messages.clone(),
            unsettled: unsettled.clone(),
            wake_settling: Waker::from(inbox.clone()),
            inbox,
        };
        let settling = Settling {
            messages,
            unsettled,
            progress,
            task,
        };
        (settler, settling)
    }

    /// Counts a delivery taken off the consumer; call before anything can settle it.
    pub fn received(&self) {
        if self.unsettled.add() {
            metrics::in_flight(1.0);
        }
    }

    /// Settles a delivery now (one that needs no publish: undecodable).
    pub fn settle(&self, delivery_tag: u64, how: Settle) {
        let _ = self.messages.send(Message::Settled(delivery_tag, how));
    }

    /// Acks the delivery once `publishing` is confirmed; requeues it if the broker nacks the
    /// result or the publish fails.
    /// `publishing` is polled here once, which queues its frames.
    pub fn publishing(&self, delivery_tag: u64, task_id: TaskId, mut publishing: Publishing) {
        let mut inbox = self.inbox.lock();
        let polled = publishing
            .as_mut()
            .poll(&mut Context::from_waker(&self.wake_settling));
        match polled {
            Poll::Pending => inbox.push((delivery_tag, task_id, publishing)),
            Poll::Ready(done) => {
                // Nothing will wake the settling task for this one: do it now.
                inbox.push((delivery_tag, task_id, Box::pin(std::future::ready(done))));
                self.wake_settling.wake_by_ref();
            }
        }
    }
}

impl Settling {
    /// Waits until every registered delivery is settled, or `timeout` passes. Returns how many
    /// are still running.
    pub async fn drained(&mut self, timeout: Duration) -> usize {
        let unsettled = &self.unsettled;
        let all_settled = self.progress.wait_for(|()| unsettled.count() == 0);
        let _ = tokio::time::timeout(timeout, all_settled).await;
        unsettled.count()
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
    (mut messages, inbox): (mpsc::UnboundedReceiver<Message>, Arc<Inbox>),
    (unsettled, progress): (Arc<Unsettled>, watch::Sender<()>),
    held_limit: usize,
) {
    let settled = |ledger: &mut Ledger, tag: u64, how: Settle| {
        metrics::in_flight(-1.0);
        unsettled.sub();
        ledger.settle(tag, how);
    };
    // Whatever is still counted when this task ends is given back to the broker.
    let close = || metrics::in_flight(-(unsettled.close() as f64));
    let mut ledger = Ledger::default();
    let mut confirms = FuturesUnordered::new();
    let mut warned = false;
    loop {
        // Wait until something happened; take everything that did into the same frames.
        let end = poll_fn(|cx| {
            inbox.settling.register(cx.waker());
            let mut happened = false;
            for (tag, task_id, publishing) in inbox.lock().drain(..) {
                confirms.push(async move { (tag, task_id, publishing.await) });
            }
            while let Poll::Ready(message) = messages.poll_recv(cx) {
                happened = true;
                match message {
                    Some(Message::Settled(tag, how)) => settled(&mut ledger, tag, how),
                    Some(Message::Finish) | None => return Poll::Ready(Some(true)),
                    Some(Message::Abandon) => return Poll::Ready(Some(false)),
                }
            }
            while let Poll::Ready(Some((tag, task_id, confirmed))) = confirms.poll_next_unpin(cx) {
                happened = true;
                settled(&mut ledger, tag, settlement(task_id, confirmed));
            }
            if happened {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await;
        match end {
            Some(true) => break,
            Some(false) => {
                close();
                return;
            }
            None => {}
        }
        let frames = ledger.take_frames(held_limit);
        if let Err(error) = queue(&channel, frames) {
            if !warned {
                warn!(%error, "could not settle deliveries; the broker will redeliver them");
                warned = true;
            }
        }
        progress.send_replace(());
    }
    // Deliveries still running were abandoned (drain deadline); the finished ones held above
    // them still get their acks.
    close();
    if let Err(error) = queue(&channel, ledger.take_frames(1)) {
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
