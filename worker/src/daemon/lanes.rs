//! Lanes: the threads that carry a task from the socket to its result.
//!
//! A lane takes a delivery off the session's consumer itself and does every step of the
//! per-task path on its own thread — decode, look up, instantiate, run, encode the result (see
//! [`super::delivery`]) — handing only the result's publish to the session's [`Settler`], which
//! sends it with the next batch. Why not a consumer task feeding executor threads: on a small machine the worker
//! shares its cores with the broker, and every hand-off between threads is a wake-up and a
//! context switch that the broker pays for. A consumer task plus an executor woke two threads
//! per task on the way in; a lane is woken once, by lapin's I/O thread, and under load not at
//! all (deliveries are already buffered when it comes back for the next one).
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
//! `poll_oneoff`) must not stall the async side's I/O. There are exactly as many lanes as pool instance slots, and a lane runs one guest
//! at a time, so instantiation never finds the pool empty. Lanes outlive sessions: a lane still
//! finishing a task of a lost connection joins the next session when it is done, so the slot
//! count holds across reconnects.

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
use lapin::message::Delivery;
use lapin::{Channel, Consumer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::settler::Settler;
use super::{delivery, Worker};

/// The lane threads of a worker.
pub struct Lanes {
    lanes: Vec<mpsc::Sender<Arc<Feed>>>,
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
pub struct Feed {
    consumer: Consumer,
    /// Shared, not cloned per task: a lapin `Channel` clone is a dozen reference counts.
    publisher: Arc<Channel>,
    settler: Settler,
    /// Cancelled when the session ends: lanes stop taking deliveries.
    over: CancellationToken,
    /// Why it ended, when a lane found out first.
    end: Mutex<Option<FeedEnd>>,
    /// Lanes inside the session: a stopping session waits for 0 before draining confirms.
    inside: watch::Sender<usize>,
    /// A lane is waiting on the consumer.
    waiting: AtomicBool,
    idle: Arc<Idle>,
}

/// Lanes parked with nothing to do, and deliveries handed to them.
#[derive(Default)]
struct Idle(Mutex<IdleLanes>);

#[derive(Default)]
struct IdleLanes {
    parked: Vec<Thread>,
    handed: VecDeque<Delivery>,
}

impl Lanes {
    /// Starts `count` lanes for `worker`, each with a `stack_size` stack (guests run on it: see
    /// [`crate::SandboxConfig::guest_thread_stack`]).
    pub fn start(worker: &Arc<Worker>, count: usize, stack_size: usize) -> std::io::Result<Lanes> {
        let lanes = (0..count.max(1))
            .map(|i| {
                let (sender, feeds) = mpsc::channel::<Arc<Feed>>();
                let worker = worker.clone();
                thread::Builder::new()
                    .name(format!("warren-lane-{i}"))
                    .stack_size(stack_size)
                    .spawn(move || {
                        for feed in feeds {
                            feed.serve(&worker);
                        }
                    })
                    .map(|_| sender)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Lanes { lanes })
    }

    /// Hands a session's consumer to every lane. The lanes take deliveries until `over` is
    /// cancelled or the consumer ends (then the feed records why and cancels `over` itself).
    pub fn feed(
        &self,
        consumer: Consumer,
        publisher: Channel,
        settler: Settler,
        over: CancellationToken,
    ) -> Arc<Feed> {
        let feed = Arc::new(Feed {
            consumer,
            publisher: Arc::new(publisher),
            settler,
            over,
            end: Mutex::new(None),
            inside: watch::Sender::new(0),
            waiting: AtomicBool::new(false),
            idle: Arc::default(),
        });
        for lane in &self.lanes {
            // A lane's loop only ends with this sender, so the send cannot fail.
            let _ = lane.send(feed.clone());
        }
        feed
    }
}

impl Feed {
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

    /// A lane's life in this session: take a delivery, carry it to its result, again.
    fn serve(&self, worker: &Worker) {
        self.inside.send_modify(|n| *n += 1);
        // Two views of the one consumer: one to wait on, one to watch for idle lanes.
        let (mut mine, mut watch) = (self.consumer.clone(), self.consumer.clone());
        let wake_idle = Waker::from(self.idle.clone());
        while let Some(delivery) = self.next(&mut mine) {
            self.arm_for_idle_lanes(&mut watch, &wake_idle);
            let carry = || delivery::carry(worker, &self.publisher, &self.settler, delivery);
            // A bug on the path must not take the lane (and its pool slot) down with it; the
            // guest itself is already guarded (its panics become trapped outcomes).
            if catch_unwind(AssertUnwindSafe(carry)).is_err() {
                error!("a task's path panicked; its delivery is left to the broker");
            }
        }
        self.inside.send_modify(|n| *n -= 1);
    }

    /// The lane's next delivery: one handed over, or the consumer's next (waiting on it if no
    /// other lane does, else parked until there is something to do). `None` once the session
    /// is over.
    fn next(&self, mine: &mut Consumer) -> Option<Delivery> {
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
    fn wait(&self, mine: &mut Consumer) -> Option<Delivery> {
        let mut cancelled = pin!(self.over.cancelled());
        let next = future::block_on(future::poll_fn(|cx| {
            // Deliveries first: under load one is already buffered and nothing else is touched.
            if let Poll::Ready(next) = Pin::new(&mut *mine).poll_next(cx) {
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
    fn arm_for_idle_lanes(&self, watch: &mut Consumer, wake_idle: &Waker) {
        if self.idle.lock().parked.is_empty() {
            return;
        }
        let poll = Pin::new(watch).poll_next(&mut Context::from_waker(wake_idle));
        let Poll::Ready(next) = poll else {
            return; // armed: lapin wakes a parked lane with the next delivery
        };
        if let Some(delivery) = self.taken(next) {
            self.idle.lock().handed.push_back(delivery);
            wake_idle.wake_by_ref();
        }
    }

    /// A delivery, or the end of the consumer (recorded; the session is over).
    fn taken(&self, next: Option<lapin::Result<Delivery>>) -> Option<Delivery> {
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

impl Idle {
    fn lock(&self) -> MutexGuard<'_, IdleLanes> {
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
impl Wake for Idle {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(lane) = self.lock().parked.pop() {
            lane.unpark();
        }
    }
}
