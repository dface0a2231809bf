//! Settling deliveries, coalesced: many finished tasks become one `basic.ack` with
//! `multiple = true`, so the broker (which shares the worker's cores on small machines) handles
//! one frame per burst instead of one per task.
//!
//! Every delivery is registered in arrival order ([`Event::Received`]) before its task starts,
//! and settled when it is done ([`Event::Settled`]). One task per session
//! ([`super::settler`]) owns this [`Ledger`] and is the only one that writes acks, rejects and
//! nacks to the channel, so they reach the broker in a safe order:
//!
//! - rejects and requeues are sent individually, before any ack that could cover their tag;
//! - the acks below the lowest still-running delivery go out as one `multiple` ack;
//! - acks above it (a slow task holds the bottom) wait, but never more than
//!   [`HELD_ACKS_LIMIT_DIVISOR`]th of the prefetch window: then they are sent one by one, so a long
//!   task cannot starve the consumer of deliveries.
//!
//! A multiple ack never covers a delivery that is still running: that delivery is what holds the
//! bottom. When the connection is gone, nothing more is sent and the broker redelivers whatever
//! was not acked (at-least-once).

use std::collections::BTreeSet;

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

/// What happened to a delivery.
#[derive(Debug)]
pub enum Event {
    /// It arrived (in arrival order).
    Received(u64),
    /// It ended so.
    Settled(u64, Settle),
}

/// What to send next, computed from the events seen so far. Kept apart from the channel so the
/// ordering rules are unit-tested.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Registered and not settled yet.
    running: BTreeSet<u64>,
    /// Settled as [`Settle::Ack`], not sent yet.
    done: BTreeSet<u64>,
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
    /// Records `event`.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Received(tag) => {
                self.running.insert(tag);
            }
            Event::Settled(tag, how) => {
                self.running.remove(&tag);
                match how {
                    Settle::Ack => {
                        self.done.insert(tag);
                    }
                    refusal => self.refusals.push((tag, refusal)),
                }
            }
        }
    }

    /// Deliveries registered and not settled yet.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// What to send now; acks held above a running delivery go out singly once there are
    /// `held_limit` of them.
    pub fn take_frames(&mut self, held_limit: usize) -> Frames {
        let refusals = std::mem::take(&mut self.refusals);
        let floor = self.running.first().copied().unwrap_or(u64::MAX);
        let held = self.done.split_off(&floor);
        let ack_up_to = self.done.last().copied();
        self.done = held;
        let single_acks = if self.done.len() >= held_limit {
            std::mem::take(&mut self.done).into_iter().collect()
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

/// Sends `frames` in their order.
pub async fn send(channel: &Channel, frames: Frames) -> lapin::Result<()> {
    for (tag, how) in frames.refusals {
        match how {
            Settle::DeadLetter => {
                channel
                    .basic_reject(tag, BasicRejectOptions { requeue: false })
                    .await?
            }
            Settle::Requeue => {
                channel
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        },
                    )
                    .await?
            }
            Settle::Ack => unreachable!("acks are never refusals"),
        }
    }
    if let Some(tag) = frames.ack_up_to {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
    }
    for tag in frames.single_acks {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: false })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(received: impl IntoIterator<Item = u64>) -> Ledger {
        let mut ledger = Ledger::default();
        for tag in received {
            ledger.apply(Event::Received(tag));
        }
        ledger
    }

    #[test]
    fn finished_deliveries_below_every_running_one_are_acked_in_one_frame() {
        let mut ledger = ledger(1..=5);
        for tag in [2, 1, 3] {
            ledger.apply(Event::Settled(tag, Settle::Ack));
        }
        let frames = ledger.take_frames(16);
        assert_eq!(frames.ack_up_to, Some(3));
        assert!(frames.single_acks.is_empty());
        assert!(
            ledger.take_frames(16) == Frames::default(),
            "nothing sent twice"
        );
    }

    #[test]
    fn a_multiple_ack_never_covers_a_running_delivery() {
        let mut ledger = ledger(1..=5);
        for tag in [1, 3, 4] {
            ledger.apply(Event::Settled(tag, Settle::Ack));
        }
        let frames = ledger.take_frames(16);
        assert_eq!(frames.ack_up_to, Some(1), "2 still runs: 3 and 4 wait");
        ledger.apply(Event::Settled(2, Settle::Ack));
        assert_eq!(ledger.take_frames(16).ack_up_to, Some(4));
    }

    #[test]
    fn acks_held_behind_a_slow_delivery_are_sent_singly_at_the_limit() {
        let mut ledger = ledger(1..=6);
        for tag in [2, 3] {
            ledger.apply(Event::Settled(tag, Settle::Ack));
        }
        assert_eq!(
            ledger.take_frames(3),
            Frames::default(),
            "below the limit: held"
        );
        ledger.apply(Event::Settled(4, Settle::Ack));
        let frames = ledger.take_frames(3);
        assert_eq!(frames.ack_up_to, None, "1 still runs");
        assert_eq!(frames.single_acks, vec![2, 3, 4]);
    }

    #[test]
    fn refusals_go_out_first_and_are_never_acked() {
        let mut ledger = ledger(1..=4);
        ledger.apply(Event::Settled(2, Settle::DeadLetter));
        ledger.apply(Event::Settled(3, Settle::Requeue));
        ledger.apply(Event::Settled(1, Settle::Ack));
        ledger.apply(Event::Settled(4, Settle::Ack));
        let frames = ledger.take_frames(16);
        assert_eq!(
            frames.refusals,
            vec![(2, Settle::DeadLetter), (3, Settle::Requeue)]
        );
        assert_eq!(frames.ack_up_to, Some(4));
    }
}
