//! Which requests to acknowledge, and when ([`Acks`]).
//!
//! A request is acked only once nothing more is owed for it: its reply is confirmed by the
//! broker (or it needed no reply). Until then it stays unacked, so a server that dies, or
//! loses its connection before the confirm, leaves it to the broker to deliver again.
//!
//! Acks go out several at a time: while more requests wait in the server's buffer, settled
//! requests are held back and acked with one `multiple` ack for the newest, covering every
//! older one (measured: 5% more calls/s at 64 in flight than acking each). That is allowed only
//! while every older request is settled too. A settled request behind an older one still being
//! handled is acked on its own at once; one behind an older reply still waiting for its
//! confirm waits for that confirm (a round trip at most).
//!
//! Holding back is for fast handlers only: an answered request whose ack is held while a
//! request of unknown length runs would be delivered again (and run again) if the server died
//! meanwhile. So before a handler with a time limit (a command) starts on the consume loop's
//! own thread, the server waits for the confirms of the replies published so far and acks
//! every settled request (`Serving::settle_all` in `crate::server`); with worker threads the
//! loop stays free and acks as soon as it has no request waiting to be taken.

use std::collections::VecDeque;

/// Where an unacked request stands.
#[derive(Debug)]
enum Slot<T> {
    /// A worker is handling it.
    InHand,
    /// Its reply is published and not confirmed yet.
    Replied,
    /// Settled: to be acked (with a `multiple` ack, see [`Acks::due`]).
    Settled(T),
}

/// The requests of one channel not acked yet, by delivery tag, and what to ack; `T` is the
/// delivery to ack.
#[derive(Debug)]
pub(crate) struct Acks<T> {
    /// Ascending delivery tags (the broker numbers deliveries in order).
    unacked: VecDeque<(u64, Slot<T>)>,
    in_hand: usize,
    limit: usize,
}

impl<T> Acks<T> {
    /// Acks at most `limit` (at least 1) settled requests with one `multiple` ack.
    pub(crate) fn new(limit: usize) -> Acks<T> {
        Acks {
            unacked: VecDeque::new(),
            in_hand: 0,
            limit: limit.max(1),
        }
    }

    /// A request just received (tags come in ascending order), in hand until
    /// [`Acks::replied`] or [`Acks::settled`].
    pub(crate) fn taken(&mut self, tag: u64) {
        self.unacked.push_back((tag, Slot::InHand));
        self.in_hand += 1;
    }

    /// The reply to request `tag` was published; it waits for the broker's confirm.
    pub(crate) fn replied(&mut self, tag: u64) {
        if let Some(slot) = self.slot(tag) {
            let was_in_hand = matches!(slot, Slot::InHand);
            *slot = Slot::Replied;
            if was_in_hand {
                self.in_hand -= 1;
            }
        }
    }

    /// Nothing more is owed for request `tag`: its reply was confirmed, or it needs none.
    /// Returns `delivery` to ack on its own now when an older request is still in hand;
    /// otherwise it is kept for [`Acks::due`].
    pub(crate) fn settled(&mut self, tag: u64, delivery: T) -> Option<T> {
        let Some(index) = self.index(tag) else {
            return Some(delivery);
        };
        if self
            .unacked
            .iter()
            .take(index)
            .any(|(_, slot)| matches!(slot, Slot::InHand))
        {
            self.remove(index);
            return Some(delivery);
        }
        if matches!(self.unacked[index].1, Slot::InHand) {
            self.in_hand -= 1;
        }
        self.unacked[index].1 = Slot::Settled(delivery);
        None
    }

    /// Request `tag` is no longer this channel's to ack (it was rejected).
    pub(crate) fn forget(&mut self, tag: u64) {
        if let Some(index) = self.index(tag) {
            self.remove(index);
        }
    }

    /// The delivery to ack now with `multiple` (covering every settled request before it), if
    /// any: the newest of the settled requests that no unsettled one precedes, once they are
    /// `limit` or `more_waiting` is false (nothing else will wake the server soon).
    pub(crate) fn due(&mut self, more_waiting: bool) -> Option<T> {
        // Called on every turn of the consume loop: answer the common cases without a scan.
        if more_waiting && self.unacked.len() < self.limit
            || !matches!(self.unacked.front(), Some((_, Slot::Settled(_))))
        {
            return None;
        }
        let settled = self
            .unacked
            .iter()
            .take(self.limit)
            .take_while(|(_, slot)| matches!(slot, Slot::Settled(_)))
            .count();
        if settled == 0 || (settled < self.limit && more_waiting) {
            return None;
        }
        let mut newest = None;
        for (_, slot) in self.unacked.drain(..settled) {
            if let Slot::Settled(delivery) = slot {
                newest = Some(delivery);
            }
        }
        newest
    }

    /// Requests received and not acked (nor rejected).
    pub(crate) fn len(&self) -> usize {
        self.unacked.len()
    }

    /// Whether every request received was acked (or rejected).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Requests a worker is handling.
    pub(crate) fn in_hand(&self) -> usize {
        self.in_hand
    }

    fn index(&self, tag: u64) -> Option<usize> {
        self.unacked.binary_search_by_key(&tag, |(t, _)| *t).ok()
    }

    fn slot(&mut self, tag: u64) -> Option<&mut Slot<T>> {
        let index = self.index(tag)?;
        Some(&mut self.unacked[index].1)
    }

    fn remove(&mut self, index: usize) {
        if let Some((_, Slot::InHand)) = self.unacked.remove(index) {
            self.in_hand -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests 1..=n taken and replied to.
    fn replied(n: u64) -> Acks<u64> {
        let mut acks = Acks::new(64);
        for tag in 1..=n {
            acks.taken(tag);
            acks.replied(tag);
        }
        acks
    }

    #[test]
    fn nothing_is_acked_before_its_confirm() {
        let mut acks = replied(2);
        assert_eq!(acks.due(false), None);
        assert_eq!(acks.settled(2, 2), None);
        // Request 1 still waits for its confirm: 2 waits with it.
        assert_eq!(acks.due(false), None);
        assert_eq!(acks.settled(1, 1), None);
        assert_eq!(acks.due(false), Some(2));
        assert!(acks.is_empty());
    }

    #[test]
    fn held_back_while_requests_wait_then_one_multiple_ack() {
        let mut acks = replied(3);
        for tag in 1..=3 {
            assert_eq!(acks.settled(tag, tag), None);
        }
        assert_eq!(acks.due(true), None);
        assert_eq!(acks.due(false), Some(3));
        assert_eq!(acks.due(false), None);
    }

    #[test]
    fn a_full_batch_is_acked_and_the_rest_waits() {
        let mut acks = Acks::new(2);
        for tag in 1..=3 {
            acks.taken(tag);
            acks.replied(tag);
            assert_eq!(acks.settled(tag, tag), None);
        }
        assert_eq!(acks.due(true), Some(2));
        assert_eq!(acks.due(true), None);
        assert_eq!(acks.due(false), Some(3));
    }

    #[test]
    fn behind_a_request_in_hand_acks_on_its_own() {
        let mut acks = Acks::new(64);
        acks.taken(1);
        acks.taken(2);
        acks.replied(2);
        assert_eq!(acks.in_hand(), 1);
        assert_eq!(acks.settled(2, 2), Some(2));
        assert_eq!(acks.len(), 1);
        acks.replied(1);
        assert_eq!(acks.in_hand(), 0);
        assert_eq!(acks.settled(1, 1), None);
        assert_eq!(acks.due(false), Some(1));
    }

    #[test]
    fn a_rejected_request_no_longer_holds_the_others_back() {
        let mut acks = replied(2);
        assert_eq!(acks.settled(2, 2), None);
        assert_eq!(acks.due(false), None);
        acks.forget(1);
        assert_eq!(acks.due(false), Some(2));
    }

    #[test]
    fn settled_without_a_reply() {
        let mut acks = Acks::new(64);
        acks.taken(1);
        assert_eq!(acks.settled(1, 1), None);
        assert_eq!(acks.in_hand(), 0);
        assert_eq!(acks.due(false), Some(1));
        // A tag this channel does not hold is acked as it is.
        assert_eq!(acks.settled(9, 9), Some(9));
    }
}
