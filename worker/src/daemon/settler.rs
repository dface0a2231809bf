//! The async end of a session's deliveries: publishes each task's result, waits for its
//! publisher confirm and settles the delivery (ack, requeue or dead-letter), coalescing acks by
//! [`super::acks`]' rules.
//!
//! One task does this for every lane: a lane leaves its task's result here as a publish not yet
//! started ([`super::delivery`]) and goes on to the next delivery, instead of waking an async
//! task per delivery. It is also the only writer of acks, so their order is safe by
//! construction.
//!
//! Publishes are batched, and wake-ups coalesced, like a network card's interrupts: the lanes'
//! results wait in the [`Inbox`] until `wake_every` of them are there (or the settling task is
//! idle, or its tick comes), and the task starts them together — one wake of lapin's I/O
//! thread, one TCP send for the batch (why: BENCHMARKS.md, "Decisions"). Each publish then
//! resolves twice (lapin hands out its confirm only after writing its frames, then the broker
//! confirms); those events are counted and wake the task once per `wake_every` of them, and
//! while it holds unresolved confirms a [`SETTLE_TICK`] timer picks up the rest — so at low
//! rates a result or an ack waits at most about a tick. `wake_every` is a small fraction of the
//! prefetch window.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;
use warren_schemas::TaskId;

use super::acks::{AckChannel, Ledger, Settle, HELD_ACKS_LIMIT_DIVISOR};
use crate::metrics;

/// The settling task is woken once per `prefetch / WAKE_EVERY_DIVISOR` results left or confirm
/// events.
const WAKE_EVERY_DIVISOR: usize = 8;

/// While the settling task holds unresolved confirms, it looks at them at least this often.
const SETTLE_TICK: Duration = Duration::from_millis(1);

/// A result's publish: its first poll queues the frames; it resolves to whether the broker
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
}

/// Publishes left by the lanes, and how the settling task is woken: by a lane when a batch is
/// there (or the task is idle), by the count of confirm events, or by its tick.
struct Inbox {
    state: Mutex<InboxState>,
    settling: AtomicWaker,
    /// Confirm events (a publish written, a confirm received) since the task last looked.
    events: AtomicUsize,
    /// The task is woken when `events` reaches this.
    wake_every: usize,
}

#[derive(Default)]
struct InboxState {
    publishes: Vec<(u64, TaskId, Publishing)>,
    /// The settling task holds unresolved confirms, so its tick runs: a publish left here is
    /// found within a tick without waking it.
    ticking: bool,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The waker of every pending publish and confirm: counts the event, wakes the settling task
/// on every `wake_every`th.
impl Wake for Inbox {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.events.fetch_add(1, Ordering::SeqCst) + 1 == self.wake_every {
            self.settling.wake();
        }
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
    /// Starts settling the deliveries of `channel` (the consuming channel), whose consumer has
    /// `prefetch` deliveries outstanding at most.
    pub fn start(channel: impl AckChannel, prefetch: u16) -> (Settler, Settling) {
        let (messages, receiver) = mpsc::unbounded_channel();
        let (progress_tx, progress) = watch::channel(());
        let unsettled = Arc::new(Unsettled::default());
        let held_limit = (usize::from(prefetch) / HELD_ACKS_LIMIT_DIVISOR).max(1);
        let inbox = Arc::new(Inbox {
            state: Mutex::default(),
            settling: AtomicWaker::new(),
            events: AtomicUsize::new(0),
            // Two events per task: a wake per eighth of the window settles ~1/16 of it at once.
            wake_every: (usize::from(prefetch) / WAKE_EVERY_DIVISOR).max(1),
        });
        let task = tokio::spawn(settle_loop(
            channel,
            (receiver, inbox.clone()),
            (unsettled.clone(), progress_tx),
            held_limit,
        ));
        let settler = Settler {
            messages: messages.clone(),
            unsettled: unsettled.clone(),
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

    /// Publishes the result (with the next batch) and acks the delivery once the broker
    /// confirmed it; requeues it if the broker nacks the result or the publish fails.
    pub fn publishing(&self, delivery_tag: u64, task_id: TaskId, publishing: Publishing) {
        let mut inbox = self.inbox.lock();
        inbox.publishes.push((delivery_tag, task_id, publishing));
        if inbox.publishes.len() >= self.inbox.wake_every || !inbox.ticking {
            self.inbox.settling.wake();
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
    channel: impl AckChannel,
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
    // Confirms wake the task through the inbox's count, not directly.
    let confirm_event = Waker::from(inbox.clone());
    let mut tick = pin!(tokio::time::sleep(SETTLE_TICK));
    let mut warned = false;
    loop {
        // Wait until something happened; take everything that did into the same frames.
        let end = poll_fn(|cx| {
            inbox.settling.register(cx.waker());
            let mut happened = false;
            loop {
                inbox.events.store(0, Ordering::SeqCst);
                for (tag, task_id, publishing) in inbox.lock().publishes.drain(..) {
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
                let mut events = Context::from_waker(&confirm_event);
                while let Poll::Ready(Some((tag, task_id, confirmed))) =
                    confirms.poll_next_unpin(&mut events)
                {
                    happened = true;
                    settled(&mut ledger, tag, settlement(task_id, confirmed));
                }
                // Under the lock the lanes leave publishes with: one left after the drain
                // above is looked at now, and one left later finds `ticking` telling it
                // whether it must wake the task.
                let mut state = inbox.lock();
                if state.publishes.is_empty() {
                    state.ticking = !confirms.is_empty();
                    break;
                }
            }
            if happened {
                return Poll::Ready(None);
            }
            if !confirms.is_empty() && tick.as_mut().poll(cx).is_ready() {
                // Look again at the next round; the tick is re-armed from now.
                tick.as_mut()
                    .reset(tokio::time::Instant::now() + SETTLE_TICK);
                return Poll::Ready(None);
            }
            Poll::Pending
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
        if let Err(error) = channel.queue(frames) {
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
    if let Err(error) = channel.queue(ledger.take_frames(1)) {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicBool;

    use tokio::sync::oneshot;

    use super::super::acks::Frames;
    use super::*;

    /// Records the frames the settling task sends.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Frames>>>);

    impl AckChannel for Recorder {
        fn queue(&self, frames: Frames) -> lapin::Result<()> {
            self.0.lock().unwrap().push(frames);
            Ok(())
        }
    }

    impl Recorder {
        /// Every tag acked so far, by multiple or single acks. A multiple ack covers tags refused
        /// before it (their frame went first, so the broker already settled them): those are not
        /// counted, and a multiple ack covering a tag not refused before it fails the test.
        fn acked(&self) -> BTreeSet<u64> {
            let mut acked = BTreeSet::new();
            let mut refused = BTreeSet::new();
            for frames in self.0.lock().unwrap().iter() {
                let (refusals, up_to, singles) = frames.parts();
                refused.extend(refusals.iter().map(|&(tag, _)| tag));
                for tag in 1..=up_to.unwrap_or(0) {
                    if !refused.contains(&tag) {
                        acked.insert(tag);
                    }
                }
                acked.extend(singles);
            }
            acked
        }

        fn refused(&self) -> Vec<(u64, Settle)> {
            let frames = self.0.lock().unwrap();
            frames.iter().flat_map(|f| f.parts().0.to_vec()).collect()
        }
    }

    /// A publish that notes when it is started and is confirmed (or not) when the test says.
    fn publish(started: &Arc<AtomicBool>) -> (Publishing, oneshot::Sender<bool>) {
        let (confirm, confirmed) = oneshot::channel();
        let started = started.clone();
        let publishing: Publishing = Box::pin(async move {
            started.store(true, Ordering::SeqCst);
            Ok(confirmed.await.unwrap_or(false))
        });
        (publishing, confirm)
    }

    /// Lets the settling task run whatever it was woken for (the test's task stays runnable,
    /// so the paused clock does not move).
    async fn let_run() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    fn id() -> TaskId {
        TaskId::new_v4()
    }

    #[tokio::test(start_paused = true)]
    async fn confirmed_results_are_acked_and_refused_ones_requeued() {
        let recorder = Recorder::default();
        let (settler, mut settling) = Settler::start(recorder.clone(), 8);
        let started = Arc::new(AtomicBool::new(false));
        for (tag, confirmed) in [(1, true), (2, false), (3, true)] {
            settler.received();
            let (publishing, confirm) = publish(&started);
            settler.publishing(tag, id(), publishing);
            confirm.send(confirmed).unwrap();
        }
        settler.received();
        settler.settle(4, Settle::DeadLetter);
        assert_eq!(settling.drained(Duration::from_secs(5)).await, 0);
        settling.finish().await;
        assert_eq!(recorder.acked(), BTreeSet::from([1, 3]));
        let mut refused = recorder.refused();
        refused.sort_by_key(|&(tag, _)| tag);
        assert_eq!(refused, vec![(2, Settle::Requeue), (4, Settle::DeadLetter)]);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_reports_what_is_still_unsettled_at_its_deadline() {
        let recorder = Recorder::default();
        let (settler, mut settling) = Settler::start(recorder.clone(), 8);
        let started = Arc::new(AtomicBool::new(false));
        settler.received();
        settler.received();
        let (publishing, confirm) = publish(&started);
        settler.publishing(1, id(), publishing);
        confirm.send(true).unwrap();
        // Delivery 2 never finishes.
        assert_eq!(settling.drained(Duration::from_secs(1)).await, 1);
        settling.finish().await;
        assert_eq!(recorder.acked(), BTreeSet::from([1]));
    }

    #[tokio::test(start_paused = true)]
    async fn results_wait_for_a_batch_or_the_tick_while_confirms_are_pending() {
        // prefetch 64: the lanes wake the settling task once 8 results wait.
        let (settler, settling) = Settler::start(Recorder::default(), 64);
        let mut confirms = Vec::new();
        let mut leave = |tag: u64| {
            let started = Arc::new(AtomicBool::new(false));
            let (publishing, confirm) = publish(&started);
            settler.received();
            settler.publishing(tag, id(), publishing);
            confirms.push(confirm);
            started
        };
        // An idle task is woken at once.
        let first = leave(1);
        let_run().await;
        assert!(
            first.load(Ordering::SeqCst),
            "an idle settler starts a result at once"
        );

        // It now holds a pending confirm: a few results wait for the tick…
        let few: Vec<_> = (2..5).map(&mut leave).collect();
        let_run().await;
        assert!(
            few.iter().all(|s| !s.load(Ordering::SeqCst)),
            "started before a batch or tick"
        );
        tokio::time::advance(SETTLE_TICK).await;
        let_run().await;
        assert!(
            few.iter().all(|s| s.load(Ordering::SeqCst)),
            "not started by the tick"
        );

        // …and a full batch wakes it without one.
        let batch: Vec<_> = (5..13).map(&mut leave).collect();
        let_run().await;
        assert!(
            batch.iter().all(|s| s.load(Ordering::SeqCst)),
            "a full batch waited"
        );
        drop(confirms);
        settling.abandon();
    }
}
