//! Lanes: the threads that carry a task from the socket to its result.
//!
//! A lane takes a delivery off the session's consumer itself and does every step of the
//! per-task path on its own thread (see [`super::delivery`]), handing only the result's
//! publish to the session's settler. A delivery wakes one thread, not a consumer task plus an
//! executor thread: on a small machine the worker shares its cores with the broker, which
//! pays for every extra wake-up (BENCHMARKS.md, "Decisions").
//!
//! Who waits, and who is woken: exactly one lane at a time (the *waiter*) waits on the
//! consumer; the others, when they have nothing to do, park. lapin wakes every poller of a
//! consumer for each delivery, so lanes all waiting on it would all wake for every task. When
//! the waiter takes a delivery it gives up the role and runs the task; a lane that comes back
//! takes the role again. If lanes are parked meanwhile, the lane that just took a delivery
//! arms the consumer to wake one of them as soon as the next delivery arrives (or hands it one
//! that is already there), so a long task never holds the next delivery back while a lane
//! sleeps — and when tasks are short and deliveries sparse, one lane does all the work and the
//! others are never woken.
//!
//! Lanes are plain OS threads, never tokio workers: a guest hogging a thread (or sleeping in
//! `poll_oneoff`) must not stall the async side's I/O. There is one lane per sandbox shard and
//! a lane runs one guest at a time, so instantiation never finds a shard's pool empty. Lanes
//! outlive sessions: a lane still finishing a task of a lost connection joins the next session
//! when it is done.
//!
//! The consumer and what a lane does with a delivery are seams ([`Deliveries`], [`Carry`]):
//! the session plugs in lapin's consumer and the task path; the unit tests a queue of numbers.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Instant;

use futures_lite::{future, Stream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::error;

/// Where lanes take deliveries from: a consumer whose clones share its deliveries, each clone
/// polled by one lane.
pub trait Deliveries: Clone + Send + Sync + 'static {
    /// One message.
    type Delivery: Send + 'static;

    /// The next delivery; `None` once the consumer ended. Like a stream's `poll_next`.
    fn poll_delivery(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<lapin::Result<Self::Delivery>>>;
}

impl Deliveries for lapin::Consumer {
    type Delivery = lapin::message::Delivery;

    fn poll_delivery(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<lapin::Result<Self::Delivery>>> {
        Pin::new(self).poll_next(cx)
    }
}

/// What a lane does with a delivery it took: carry it to its result, on the lane's thread.
pub trait Carry<D>: Send + Sync + 'static {
    /// Carries `delivery` all the way; a panic here is caught and logged by the lane.
    fn carry(&self, delivery: D);
}

/// A session's work for a lane, whatever its consumer and carrier.
trait Serve: Send + Sync {
    /// Takes and carries deliveries until the session is over.
    fn serve(&self);
}

/// The lane threads of a worker.
pub struct Lanes {
    lanes: Vec<mpsc::Sender<Arc<dyn Serve>>>,
}

/// How a session's consumption ended, as the lanes saw it.
pub enum FeedEnd {
    /// The session was told to stop (the worker is stopping).
    Over,
    /// The broker cancelled the consumer or closed its stream.
    ConsumerEnded,
    /// The connection or the channel failed.
    Failed(lapin::Error),
}

/// One session's consumption, shared by every lane while the session lasts.
pub struct Feed<S: Deliveries, C> {
    consumer: S,
    carrier: C,
    /// Cancelled when the session ends: lanes stop taking deliveries.
    over: CancellationToken,
    /// Why it ended, when a lane found out first.
    end: Mutex<Option<FeedEnd>>,
    /// Lanes inside the session: a stopping session waits for 0 before draining confirms.
    inside: watch::Sender<usize>,
    /// A lane is waiting on the consumer.
    waiting: AtomicBool,
    idle: Arc<Idle<S::Delivery>>,
}

/// Lanes parked with nothing to do, and deliveries handed to them.
struct Idle<D>(Mutex<IdleLanes<D>>);

struct IdleLanes<D> {
    parked: Vec<Thread>,
    handed: VecDeque<D>,
}

impl<D> Default for Idle<D> {
    fn default() -> Self {
        Idle(Mutex::new(IdleLanes {
            parked: Vec::new(),
            handed: VecDeque::new(),
        }))
    }
}

impl Lanes {
    /// Starts `count` lanes, each with a `stack_size` stack (guests run on it: see
    /// [`crate::SandboxConfig::guest_thread_stack`]). They end when `Lanes` is dropped and their
    /// session is over.
    pub fn start(count: usize, stack_size: usize) -> std::io::Result<Lanes> {
        let lanes = (0..count.max(1))
            .map(|i| {
                let (sender, feeds) = mpsc::channel::<Arc<dyn Serve>>();
                thread::Builder::new()
                    .name(format!("warren-lane-{i}"))
                    .stack_size(stack_size)
                    .spawn(move || {
                        for feed in feeds {
                            feed.serve();
                        }
                    })
                    .map(|_| sender)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Lanes { lanes })
    }

    /// Hands a session's consumer to every lane, which carry its deliveries with `carrier`
    /// until `over` is cancelled or the consumer ends (then the feed records why and cancels
    /// `over` itself).
    pub fn feed<S: Deliveries, C: Carry<S::Delivery>>(
        &self,
        consumer: S,
        carrier: C,
        over: CancellationToken,
    ) -> Arc<Feed<S, C>> {
        let feed = Arc::new(Feed {
            consumer,
            carrier,
            over,
            end: Mutex::new(None),
            inside: watch::Sender::new(0),
            waiting: AtomicBool::new(false),
            idle: Arc::default(),
        });
        for lane in &self.lanes {
            // A lane's loop only ends with this sender, so the send cannot fail.
            let _ = lane.send(feed.clone() as Arc<dyn Serve>);
        }
        feed
    }
}

impl<S: Deliveries, C: Carry<S::Delivery>> Serve for Feed<S, C> {
    /// A lane's life in this session: take a delivery, carry it to its result, again.
    fn serve(&self) {
        self.inside.send_modify(|n| *n += 1);
        // Two views of the one consumer: one to wait on, one to watch for idle lanes.
        let (mut mine, mut watch) = (self.consumer.clone(), self.consumer.clone());
        let wake_idle = Waker::from(self.idle.clone());
        while let Some(delivery) = self.next(&mut mine) {
            self.arm_for_idle_lanes(&mut watch, &wake_idle);
            let carry = || self.carrier.carry(delivery);
            // A bug on the path must not take the lane down with it; the guest itself is
            // already guarded (its panics become trapped outcomes).
            if catch_unwind(AssertUnwindSafe(carry)).is_err() {
                error!("a task's path panicked; its delivery is left to the broker");
            }
        }
        self.inside.send_modify(|n| *n -= 1);
    }
}

impl<S: Deliveries, C> Feed<S, C> {
    /// Waits until the session is over, and says why.
    pub async fn ended(&self) -> FeedEnd {
        self.over.cancelled().await;
        self.idle.wake_all();
        self.end
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or(FeedEnd::Over)
    }

    /// Waits until no lane is taking deliveries or running a task of this session any more, or
    /// `deadline`. Call after the session is over. Returns whether they all left.
    pub async fn left(&self, deadline: Instant) -> bool {
        let mut inside = self.inside.subscribe();
        let left = tokio::time::timeout_at(deadline.into(), inside.wait_for(|n| *n == 0))
            .await
            .is_ok();
        left
    }

    /// The lane's next delivery: one handed over, or the consumer's next (waiting on it if no
    /// other lane does, else parked until there is something to do). `None` once the session
    /// is over.
    fn next(&self, mine: &mut S) -> Option<S::Delivery> {
        loop {
            if self.over.is_cancelled() {
                return None;
            }
            if let Some(delivery) = self.idle.lock().handed.pop_front() {
                return Some(delivery);
            }
            if self
                .waiting
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                let next = self.wait(mine);
                self.waiting.store(false, Ordering::SeqCst);
                return next;
            }
            self.park();
        }
    }

    /// Waits on the consumer (lapin's I/O thread wakes this thread) or the end of the session.
    fn wait(&self, mine: &mut S) -> Option<S::Delivery> {
        let mut cancelled = pin!(self.over.cancelled());
        let next = future::block_on(future::poll_fn(|cx| {
            // Deliveries first: under load one is already buffered and nothing else is touched.
            if let Poll::Ready(next) = mine.poll_delivery(cx) {
                return Poll::Ready(Some(next));
            }
            cancelled.as_mut().poll(cx).map(|()| None)
        }))?;
        self.taken(next)
    }

    /// Parks this lane until a delivery is handed to it, the consumer may have one for it, or
    /// the session ends.
    fn park(&self) {
        {
            let mut idle = self.idle.lock();
            // Checked under the lock that `arm_for_idle_lanes` and `wake_all` take, so a wake
            // meant for this lane cannot slip in between the check and the parking.
            if !idle.handed.is_empty()
                || self.over.is_cancelled()
                || !self.waiting.load(Ordering::SeqCst)
            {
                return;
            }
            idle.parked.push(thread::current());
        }
        thread::park();
        let me = thread::current().id();
        self.idle.lock().parked.retain(|lane| lane.id() != me);
    }

    /// Called by a lane that took a delivery and gave up waiting: if other lanes are parked,
    /// make sure one of them wakes when the next delivery arrives — or now, with a delivery
    /// that is already there — instead of it waiting for this task to end.
    fn arm_for_idle_lanes(&self, watch: &mut S, wake_idle: &Waker) {
        if self.idle.lock().parked.is_empty() {
            return;
        }
        let poll = watch.poll_delivery(&mut Context::from_waker(wake_idle));
        let Poll::Ready(next) = poll else {
            return; // armed: lapin wakes a parked lane with the next delivery
        };
        if let Some(delivery) = self.taken(next) {
            self.idle.lock().handed.push_back(delivery);
            wake_idle.wake_by_ref();
        }
    }

    /// A delivery, or the end of the consumer (recorded; the session is over).
    fn taken(&self, next: Option<lapin::Result<S::Delivery>>) -> Option<S::Delivery> {
        match next {
            Some(Ok(delivery)) => Some(delivery),
            Some(Err(error)) => {
                self.end(FeedEnd::Failed(error));
                None
            }
            None => {
                self.end(FeedEnd::ConsumerEnded);
                None
            }
        }
    }

    /// Records why consumption ended (the first lane to find out wins) and ends the session.
    fn end(&self, end: FeedEnd) {
        {
            let mut slot = self.end.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() && !self.over.is_cancelled() {
                *slot = Some(end);
            }
        }
        self.over.cancel();
        self.idle.wake_all();
    }
}

impl<D> Idle<D> {
    fn lock(&self) -> MutexGuard<'_, IdleLanes<D>> {
        // Every update keeps the lists consistent, so a poisoned lock is as good as any.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_all(&self) {
        for lane in self.lock().parked.drain(..) {
            lane.unpark();
        }
    }
}

/// Wakes one parked lane: the waker armed on the consumer for idle lanes.
impl<D: Send + 'static> Wake for Idle<D> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(lane) = self.lock().parked.pop() {
            lane.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
    use std::time::Duration;

    use super::*;

    /// How long a test waits for something that should happen at once.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// A consumer of numbers that behaves like lapin's: clones share the deliveries, and each
    /// delivery wakes every clone that is waiting. Counts how many clones wait at once.
    #[derive(Clone)]
    struct Queue {
        shared: Arc<Mutex<QueueState>>,
        id: usize,
    }

    #[derive(Default)]
    struct QueueState {
        items: VecDeque<u32>,
        waiting: HashMap<usize, Waker>,
        most_waiting: usize,
        ended: bool,
        clones: usize,
    }

    impl Queue {
        fn new() -> Self {
            Queue {
                shared: Arc::default(),
                id: 0,
            }
        }

        fn lock(&self) -> MutexGuard<'_, QueueState> {
            self.shared.lock().unwrap()
        }

        fn push(&self, item: u32) {
            let wakers: Vec<Waker> = {
                let mut state = self.lock();
                state.items.push_back(item);
                state.waiting.drain().map(|(_, waker)| waker).collect()
            };
            wakers.into_iter().for_each(Waker::wake);
        }

        fn end(&self) {
            let wakers: Vec<Waker> = {
                let mut state = self.lock();
                state.ended = true;
                state.waiting.drain().map(|(_, waker)| waker).collect()
            };
            wakers.into_iter().for_each(Waker::wake);
        }

        fn most_waiting(&self) -> usize {
            self.lock().most_waiting
        }
    }

    impl Deliveries for Queue {
        type Delivery = u32;

        fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<lapin::Result<u32>>> {
            let shared = self.shared.clone();
            let mut state = shared.lock().unwrap();
            if self.id == 0 {
                // A lane's clone: give it its own identity, as lapin's clones have.
                state.clones += 1;
                self.id = state.clones;
            }
            if let Some(item) = state.items.pop_front() {
                state.waiting.remove(&self.id);
                return Poll::Ready(Some(Ok(item)));
            }
            if state.ended {
                return Poll::Ready(None);
            }
            state.waiting.insert(self.id, cx.waker().clone());
            state.most_waiting = state.most_waiting.max(state.waiting.len());
            Poll::Pending
        }
    }

    /// Sends each carried number (and the carrying thread) to the test; numbers in `hold` wait
    /// for a release first.
    struct Recorder {
        carried: Mutex<Sender<(u32, thread::ThreadId)>>,
        hold: Option<Hold>,
        running: AtomicUsize,
    }

    /// A number whose carrying says it started, then waits for a release.
    type Hold = (u32, Mutex<Receiver<()>>, Mutex<Sender<()>>);

    impl Carry<u32> for Arc<Recorder> {
        fn carry(&self, item: u32) {
            self.running.fetch_add(1, Ordering::SeqCst);
            if let Some((held, release, started)) = &self.hold {
                if *held == item {
                    started.lock().unwrap().send(()).unwrap();
                    release.lock().unwrap().recv_timeout(PATIENCE).unwrap();
                }
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            let _ = self
                .carried
                .lock()
                .unwrap()
                .send((item, thread::current().id()));
        }
    }

    fn recorder() -> (Arc<Recorder>, Receiver<(u32, thread::ThreadId)>) {
        let (sender, carried) = mpsc::channel();
        let recorder = Recorder {
            carried: Mutex::new(sender),
            hold: None,
            running: AtomicUsize::new(0),
        };
        (Arc::new(recorder), carried)
    }

    fn next(carried: &Receiver<(u32, thread::ThreadId)>) -> u32 {
        match carried.recv_timeout(PATIENCE) {
            Ok((item, _)) => item,
            Err(RecvTimeoutError::Timeout) => panic!("no delivery carried within {PATIENCE:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the lanes dropped the carrier"),
        }
    }

    #[test]
    fn every_delivery_is_carried_exactly_once_by_many_lanes() {
        let lanes = Lanes::start(4, 1 << 20).unwrap();
        let queue = Queue::new();
        let (recorder, carried) = recorder();
        let over = CancellationToken::new();
        let _feed = lanes.feed(queue.clone(), recorder, over.clone());
        let count = 5_000;
        // Bursts and single deliveries, so lanes both find deliveries waiting and park.
        for item in 0..count {
            queue.push(item);
            if item % 97 == 0 {
                thread::yield_now();
            }
        }
        let mut seen: Vec<u32> = (0..count).map(|_| next(&carried)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..count).collect::<Vec<_>>());
        over.cancel();
    }

    #[test]
    fn idle_lanes_park_instead_of_all_waiting_on_the_consumer() {
        let lanes = Lanes::start(8, 1 << 20).unwrap();
        let queue = Queue::new();
        let (recorder, carried) = recorder();
        let over = CancellationToken::new();
        let _feed = lanes.feed(queue.clone(), recorder, over.clone());
        for item in 0..200 {
            queue.push(item);
            assert_eq!(next(&carried), item);
        }
        // At most the waiter, plus the watch armed for parked lanes: never one per lane.
        let most = queue.most_waiting();
        assert!(
            most <= 2,
            "{most} clones waited on the consumer at once with 8 lanes"
        );
        over.cancel();
    }

    #[test]
    fn a_long_task_does_not_hold_back_the_next_delivery() {
        let lanes = Lanes::start(2, 1 << 20).unwrap();
        let queue = Queue::new();
        let (release_tx, release_rx) = mpsc::channel();
        let (started_tx, started) = mpsc::channel();
        let (sender, carried) = mpsc::channel();
        let recorder = Arc::new(Recorder {
            carried: Mutex::new(sender),
            hold: Some((0, Mutex::new(release_rx), Mutex::new(started_tx))),
            running: AtomicUsize::new(0),
        });
        let over = CancellationToken::new();
        let feed = lanes.feed(queue.clone(), recorder.clone(), over.clone());
        // One lane waits on the consumer, the other is parked: the long task's lane must arm
        // the consumer for the parked one.
        let parked = Instant::now() + PATIENCE;
        while feed.idle.lock().parked.is_empty() {
            assert!(Instant::now() < parked, "no lane parked");
            thread::yield_now();
        }
        queue.push(0);
        started.recv_timeout(PATIENCE).unwrap();
        for item in 1..50 {
            queue.push(item);
            assert_eq!(
                next(&carried),
                item,
                "delivery {item} waited for the long task"
            );
        }
        assert_eq!(
            recorder.running.load(Ordering::SeqCst),
            1,
            "the long task still runs"
        );
        release_tx.send(()).unwrap();
        assert_eq!(next(&carried), 0);
        over.cancel();
    }

    #[tokio::test]
    async fn the_feed_reports_why_it_ended_and_every_lane_leaves() {
        let lanes = Lanes::start(3, 1 << 20).unwrap();
        let (recorder, _carried) = recorder();

        let queue = Queue::new();
        let feed = lanes.feed(queue.clone(), recorder.clone(), CancellationToken::new());
        queue.end();
        assert!(matches!(feed.ended().await, FeedEnd::ConsumerEnded));
        assert!(feed.left(Instant::now() + PATIENCE).await);

        // Lanes outlive sessions: the next feed is served by the same lanes.
        let queue = Queue::new();
        let over = CancellationToken::new();
        let feed = lanes.feed(queue.clone(), recorder, over.clone());
        over.cancel();
        assert!(matches!(feed.ended().await, FeedEnd::Over));
        assert!(feed.left(Instant::now() + PATIENCE).await);
    }
}
