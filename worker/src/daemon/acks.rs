//! Settling deliveries, coalesced: many finished tasks become one `basic.ack` with
//! `multiple = true`, so the broker (which shares the worker's cores on small machines) handles
//! one frame per burst instead of one per task.
//!
//! The broker numbers a channel's deliveries 1, 2, 3, … Deliveries are settled as their tasks
//! end ([`Ledger::settle`]), in any order and from any lane. One task per session
//! ([`super::settler`]) owns this [`Ledger`] and is the only one that writes acks, rejects and
//! nacks to the channel, so they reach the broker in a safe order:
//!
//! - rejects and requeues are sent individually, before any ack that could cover their tag;
//! - a `multiple` ack goes up to the end of the unbroken run of settled tags: every tag up to it
//!   is settled, so it never covers a delivery that is still running — nor one a lane took but
//!   has not reported yet, which is why no arrival-order registration is needed;
//! - acks above a gap (a slow task holds it) wait, but never more than
//!   [`HELD_ACKS_LIMIT_DIVISOR`]th of the prefetch window: then they are sent one by one, so a long
//!   task cannot starve the consumer of deliveries.
//!
//! When the connection is gone, nothing more is sent and the broker redelivers whatever was not
//! acked (at-least-once).

use std::collections::BTreeSet;

use futures_util::FutureExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Channel;

/// Held acks above a slow delivery are flushed one by one once they reach
/// `prefetch / HELD_ACKS_LIMIT_DIVISOR`.
pub const HELD_ACKS_LIMIT_DIVISOR: usize = 4;

/// How a delivery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done: its result is published and confirmed.
    Ack,
    /// Undecodable: reject without requeue (the broker dead-letters it).
    DeadLetter,
    /// Could not be finished here (result refused or not publishable): put it back.
    Requeue,
}

/// What to send next, computed from the settlements seen so far. Kept apart from the channel so
/// the ordering rules are unit-tested.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every delivery up to this tag is settled and its frame sent (or covered).
    through: u64,
    /// Settled as [`Settle::Ack`] above `through`, not sent yet.
    done: BTreeSet<u64>,
    /// Above `through` with their frame already sent (refused, or acked singly): they only
    /// close the run.
    sent: BTreeSet<u64>,
    /// Rejects and requeues, in the order they were settled.
    refusals: Vec<(u64, Settle)>,
}

/// Frames to send, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Frames {
    refusals: Vec<(u64, Settle)>,
    /// One ack with `multiple = true` up to this tag.
    ack_up_to: Option<u64>,
    /// Acks with `multiple = false`.
    single_acks: Vec<u64>,
}

impl Ledger {
    /// Records that delivery `tag` ended so.
    pub fn settle(&mut self, tag: u64, how: Settle) {
        match how {
            Settle::Ack => {
                self.done.insert(tag);
            }
            refusal => self.refusals.push((tag, refusal)),
        }
    }

    /// What to send now; acks held above a gap go out singly once there are `held_limit` of
    /// them.
    pub fn take_frames(&mut self, held_limit: usize) -> Frames {
        let refusals = std::mem::take(&mut self.refusals);
        self.sent.extend(refusals.iter().map(|&(tag, _)| tag));
        // Extend the run of settled tags; the highest unsent ack in it carries the others.
        let mut ack_up_to = None;
        loop {
            let next = self.through + 1;
            if self.done.remove(&next) {
                ack_up_to = Some(next);
            } else if !self.sent.remove(&next) {
                break;
            }
            self.through = next;
        }
        let single_acks: Vec<u64> = if self.done.len() >= held_limit {
            let singles = std::mem::take(&mut self.done);
            self.sent.extend(&singles);
            singles.into_iter().collect()
        } else {
            Vec::new()
        };
        Frames {
            refusals,
            ack_up_to,
            single_acks,
        }
    }
}

#[cfg(test)]
impl Frames {
    /// The frames as (refusals, multiple ack up to, single acks), for tests elsewhere.
    pub fn parts(&self) -> (&[(u64, Settle)], Option<u64>, &[u64]) {
        (&self.refusals, self.ack_up_to, &self.single_acks)
    }
}

/// Where the settling task sends its frames: the session's consuming channel, or a recorder
/// in tests.
pub trait AckChannel: Send + 'static {
    /// Queues `frames`, in their order, without waiting for them to be written.
    fn queue(&self, frames: Frames) -> lapin::Result<()>;
}

impl AckChannel for Channel {
    fn queue(&self, frames: Frames) -> lapin::Result<()> {
        queue(self, frames)
    }
}

/// Queues `frames` on the channel, in their order, without waiting for them to be written.
///
/// lapin queues a method's frame when its future is first polled and resolves the future once
/// the frame is on the socket; waiting for that would wake the settling task a second time per
/// burst for nothing. The channel writes its frames in the order they were queued, so the
/// order rules above hold, and a frame the connection loses before writing it leaves its
/// delivery unacked, which the broker redelivers. The error is the first one lapin reports at
/// once (the channel is closed).
pub fn queue(channel: &Channel, frames: Frames) -> lapin::Result<()> {
    let mut first_error = None;
    let mut queued = |sent: Option<lapin::Result<()>>| {
        if let Some(Err(error)) = sent {
            first_error.get_or_insert(error);
        }
    };
    for (tag, how) in frames.refusals {
        let sent = match how {
            Settle::DeadLetter => channel
                .basic_reject(tag, BasicRejectOptions { requeue: false })
                .now_or_never(),
            Settle::Requeue => channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    },
                )
                .now_or_never(),
            Settle::Ack => unreachable!("acks are never refusals"),
        };
        queued(sent);
    }
    if let Some(tag) = frames.ack_up_to {
        queued(
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .now_or_never(),
        );
    }
    for tag in frames.single_acks {
        queued(
            channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .now_or_never(),
        );
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(ledger: &mut Ledger, tags: impl IntoIterator<Item = u64>) {
        for tag in tags {
            ledger.settle(tag, Settle::Ack);
        }
    }

    #[test]
    fn finished_deliveries_in_an_unbroken_run_are_acked_in_one_frame() {
        let mut ledger = Ledger::default();
        settle(&mut ledger, [2, 1, 3]);
        let frames = ledger.take_frames(16);
        assert_eq!(frames.ack_up_to, Some(3));
        assert!(frames.single_acks.is_empty());
        assert!(
            ledger.take_frames(16) == Frames::default(),
            "nothing sent twice"
        );
    }

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_not_settled_yet() {
        let mut ledger = Ledger::default();
        settle(&mut ledger, [1, 3, 4]);
        let frames = ledger.take_frames(16);
        assert_eq!(frames.ack_up_to, Some(1), "2 still runs: 3 and 4 wait");
        // 6 ends before the lane that took 5 has reported anything: 5 still holds it back.
        settle(&mut ledger, [2, 6]);
        assert_eq!(ledger.take_frames(16).ack_up_to, Some(4));
        settle(&mut ledger, [5]);
        assert_eq!(ledger.take_frames(16).ack_up_to, Some(6));
    }

    #[test]
    fn acks_held_behind_a_slow_delivery_are_sent_singly_at_the_limit() {
        let mut ledger = Ledger::default();
        settle(&mut ledger, [2, 3]);
        assert_eq!(
            ledger.take_frames(3),
            Frames::default(),
            "below the limit: held"
        );
        settle(&mut ledger, [4]);
        let frames = ledger.take_frames(3);
        assert_eq!(frames.ack_up_to, None, "1 still runs");
        assert_eq!(frames.single_acks, vec![2, 3, 4]);
        // Once 1 ends, the run goes past the tags already acked singly.
        settle(&mut ledger, [1, 5]);
        assert_eq!(ledger.take_frames(3).ack_up_to, Some(5));
    }

    #[test]
    fn refusals_go_out_first_and_are_never_acked() {
        let mut ledger = Ledger::default();
        ledger.settle(2, Settle::DeadLetter);
        ledger.settle(3, Settle::Requeue);
        settle(&mut ledger, [1, 4]);
        let frames = ledger.take_frames(16);
        assert_eq!(
            frames.refusals,
            vec![(2, Settle::DeadLetter), (3, Settle::Requeue)]
        );
        assert_eq!(frames.ack_up_to, Some(4));
        // A run that ends in a refusal acks up to its last ack, not the refused tag.
        ledger.settle(5, Settle::Ack);
        ledger.settle(6, Settle::DeadLetter);
        let frames = ledger.take_frames(16);
        assert_eq!(frames.ack_up_to, Some(5));
        assert_eq!(frames.refusals, vec![(6, Settle::DeadLetter)]);
        settle(&mut ledger, [7]);
        assert_eq!(ledger.take_frames(16).ack_up_to, Some(7));
    }
}
