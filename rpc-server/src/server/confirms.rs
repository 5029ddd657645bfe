//! Replies the broker has not confirmed yet ([`Unconfirmed`]).
//!
//! The server publishes replies with publisher confirms on: the broker acks each reply once it
//! has routed it, or nacks it. Only then is the reply's request acked (see [`crate::server::ack`]), and
//! the reply counted as answered (or refused); only then is the request forgotten by
//! [`crate::server::redelivery::Redeliveries`]. A nacked reply's request is rejected back to the queue
//! (once: see the server); a reply the broker refuses by closing the channel (a message over
//! its `max_message_size`) is never confirmed, so its request comes back and is recognised.

use rpc_client::wire::ErrorCode;
use std::collections::VecDeque;

/// A publisher confirm from the broker, in our own terms (the session converts the AMQP
/// library's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BrokerConfirm {
    /// The publish sequence number it confirms (all up to it when `multiple`).
    pub(crate) sequence: u64,
    /// Whether it confirms every publish up to `sequence`.
    pub(crate) multiple: bool,
    /// An ack (true) or a nack (false).
    pub(crate) accepted: bool,
}

/// What a reply was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    /// A result.
    Answer,
    /// An error reply, with its code.
    Refusal(ErrorCode),
}

/// A reply the broker confirmed (`accepted`) or refused, with what it carried along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settled<T> {
    /// What the reply was.
    pub kind: ReplyKind,
    /// The broker acked it (false: nacked).
    pub accepted: bool,
    /// What the caller attached when it was sent.
    pub tag: T,
}

/// Replies published on one channel and not yet confirmed, in publish order. Each carries a
/// `T` of the caller's (the request's identity).
#[derive(Debug)]
pub(crate) struct Unconfirmed<T> {
    /// The broker's sequence number of the next publish on this channel (the first is 1).
    next: u64,
    pending: VecDeque<(u64, ReplyKind, T)>,
}

impl<T> Default for Unconfirmed<T> {
    fn default() -> Self {
        Unconfirmed {
            next: 1,
            pending: VecDeque::new(),
        }
    }
}

impl<T> Unconfirmed<T> {
    /// Records a reply just published.
    pub(crate) fn published(&mut self, kind: ReplyKind, tag: T) {
        self.pending.push_back((self.next, kind, tag));
        self.next += 1;
    }

    /// Replies still waiting for the broker's word.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether every reply was confirmed.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The replies a confirm settles (one, or all up to its tag when `multiple`).
    pub(crate) fn confirm(&mut self, confirm: BrokerConfirm) -> Vec<Settled<T>> {
        let BrokerConfirm {
            sequence,
            multiple,
            accepted,
        } = confirm;
        let mut settled = Vec::new();
        if multiple {
            while self
                .pending
                .front()
                .is_some_and(|(seq, _, _)| *seq <= sequence)
            {
                if let Some((_, kind, tag)) = self.pending.pop_front() {
                    settled.push(Settled {
                        kind,
                        accepted,
                        tag,
                    });
                }
            }
        } else if let Some(i) = self.pending.iter().position(|(seq, _, _)| *seq == sequence) {
            if let Some((_, kind, tag)) = self.pending.remove(i) {
                settled.push(Settled {
                    kind,
                    accepted,
                    tag,
                });
            }
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(sequence: u64, multiple: bool) -> BrokerConfirm {
        BrokerConfirm {
            sequence,
            multiple,
            accepted: true,
        }
    }

    #[test]
    fn single_and_multiple_confirms() {
        let mut unconfirmed = Unconfirmed::default();
        for id in ["a", "b", "c", "d"] {
            unconfirmed.published(ReplyKind::Answer, id);
        }
        fn tags(settled: Vec<Settled<&'static str>>) -> Vec<&'static str> {
            settled.into_iter().map(|s| s.tag).collect()
        }
        assert_eq!(tags(unconfirmed.confirm(ack(2, false))), ["b"]);
        assert_eq!(tags(unconfirmed.confirm(ack(3, true))), ["a", "c"]);
        assert_eq!(unconfirmed.len(), 1);
        let nacked = unconfirmed.confirm(BrokerConfirm {
            sequence: 4,
            multiple: false,
            accepted: false,
        });
        assert_eq!(nacked.len(), 1);
        assert!(!nacked[0].accepted);
        assert!(unconfirmed.is_empty());
    }

    #[test]
    fn unknown_tags_settle_nothing() {
        let mut unconfirmed = Unconfirmed::default();
        unconfirmed.published(ReplyKind::Refusal(ErrorCode::Internal), ());
        assert!(unconfirmed.confirm(ack(7, false)).is_empty());
        assert_eq!(unconfirmed.len(), 1);
    }
}
