//! One connection's bookkeeping, with no broker in it ([`Owed`]): the requests in hand, the
//! acks due (see [`crate::server::ack`]), the replies waiting for a confirm (see [`crate::server::confirms`]),
//! and when the consume loop must wait for those confirms.

use crate::server::ack::Acks;
use crate::server::confirms::{BrokerConfirm, ReplyKind, Settled, Unconfirmed};
use std::time::Duration;

/// Most settled requests acked with one `multiple` ack.
const ACK_BATCH: usize = 64;

/// How long the consume loop lets confirms wait in their channel while nothing else wakes it,
/// before it waits for them (and acks their requests).
pub(super) const ACK_DELAY: Duration = Duration::from_millis(2);

/// A published reply waiting for its confirm: the request it answers.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Replied<T> {
    /// The request (to ack, or to reject).
    pub(super) delivery: T,
    /// After a nack the request goes back to the queue (else it is acked: a last word).
    pub(super) requeue_on_nack: bool,
}

/// What one channel owes the broker and its callers; `T` is a request (a delivery).
pub(super) struct Owed<T> {
    acks: Acks<T>,
    unconfirmed: Unconfirmed<Replied<T>>,
    /// The prefetch: with that many requests unacked the broker sends no more.
    window: usize,
    /// The longest a handler call of this connection took (for a `basic.cancel`'s cause).
    longest_call: Duration,
}

impl<T> Owed<T> {
    /// Nothing owed yet, on a channel with a prefetch of `window`.
    pub(super) fn new(window: usize) -> Owed<T> {
        Owed {
            acks: Acks::new(ACK_BATCH),
            unconfirmed: Unconfirmed::default(),
            window,
            longest_call: Duration::ZERO,
        }
    }

    /// Request `tag` was received: in hand (see [`Acks::taken`]).
    pub(super) fn taken(&mut self, tag: u64) {
        self.acks.taken(tag);
    }

    /// The reply to request `tag` was published (see [`Acks::replied`]).
    pub(super) fn replied(&mut self, tag: u64) {
        self.acks.replied(tag);
    }

    /// The reply (of `kind`) to `delivery`, just published, waits for its confirm.
    pub(super) fn awaiting_confirm(&mut self, kind: ReplyKind, delivery: T, requeue_on_nack: bool) {
        let replied = Replied {
            delivery,
            requeue_on_nack,
        };
        self.unconfirmed.published(kind, replied);
    }

    /// The replies `confirm` settles, in publish order (see [`Unconfirmed::confirm`]).
    pub(super) fn confirm(&mut self, confirm: BrokerConfirm) -> Vec<Settled<Replied<T>>> {
        self.unconfirmed.confirm(confirm)
    }

    /// Nothing more is owed for request `tag`: the delivery to ack on its own now, if any
    /// (see [`Acks::settled`]).
    pub(super) fn settled(&mut self, tag: u64, delivery: T) -> Option<T> {
        self.acks.settled(tag, delivery)
    }

    /// Request `tag` went back to the queue: not this channel's to ack any more.
    pub(super) fn rejected(&mut self, tag: u64) {
        self.acks.forget(tag);
    }

    /// The delivery to ack with `multiple`, if an ack is due (see [`Acks::due`]).
    pub(super) fn ack_due(&mut self, more_waiting: bool) -> Option<T> {
        self.acks.due(more_waiting)
    }

    /// A handler call took `took`.
    pub(super) fn handled(&mut self, took: Duration) {
        self.longest_call = self.longest_call.max(took);
    }

    /// The longest a handler call of this connection took.
    pub(super) fn longest_call(&self) -> Duration {
        self.longest_call
    }

    /// Requests received and not acked (nor rejected).
    pub(super) fn unacked(&self) -> usize {
        self.acks.len()
    }

    /// Requests being handled.
    pub(super) fn in_hand(&self) -> usize {
        self.acks.in_hand()
    }

    /// Replies published and not confirmed yet.
    pub(super) fn awaiting(&self) -> usize {
        self.unconfirmed.len()
    }

    /// Whether every published reply was confirmed.
    pub(super) fn all_confirmed(&self) -> bool {
        self.unconfirmed.is_empty()
    }

    /// Whether the consume loop must wake for confirms: requests wait for them and nothing
    /// else may come (the prefetch window is full, a stop is under way, or the confirms are
    /// `overdue`: [`ACK_DELAY`] passed without another event). Otherwise they are drained
    /// whenever the loop is awake anyway, which saves a thread wake-up per confirm.
    pub(super) fn confirms_urgent(&self, overdue: bool, stopping: bool) -> bool {
        !self.unconfirmed.is_empty() && (overdue || stopping || self.acks.len() >= self.window)
    }

    /// How long the consume loop may wait for other events before the confirms waiting are
    /// overdue: [`ACK_DELAY`], or for ever when none wait or they are `urgent` already.
    pub(super) fn patience(&self, urgent: bool) -> Duration {
        if !self.unconfirmed.is_empty() && !urgent {
            ACK_DELAY
        } else {
            Duration::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_client::wire::ErrorCode;

    fn ack(tag: u64) -> BrokerConfirm {
        BrokerConfirm {
            sequence: tag,
            multiple: false,
            accepted: true,
        }
    }

    /// A request taken, answered and published: its reply's confirm is number `sequence`.
    fn answered(books: &mut Owed<u64>, tag: u64) {
        books.taken(tag);
        books.replied(tag);
        books.awaiting_confirm(ReplyKind::Answer, tag, true);
    }

    #[test]
    fn a_request_is_acked_once_its_reply_is_confirmed() {
        let mut books = Owed::new(10);
        answered(&mut books, 1);
        assert_eq!(
            (books.unacked(), books.in_hand(), books.awaiting()),
            (1, 0, 1)
        );
        // Not before the confirm.
        assert_eq!(books.ack_due(false), None);
        let settled = books.confirm(ack(1));
        assert_eq!(settled.len(), 1);
        assert!(settled[0].accepted && settled[0].kind == ReplyKind::Answer);
        let replied = settled.into_iter().next().map(|s| s.tag);
        assert_eq!(
            replied,
            Some(Replied {
                delivery: 1,
                requeue_on_nack: true
            })
        );
        assert_eq!(books.settled(1, 1), None, "held for a multiple ack");
        assert!(books.all_confirmed());
        assert_eq!(
            books.ack_due(true),
            None,
            "more requests waiting: held back"
        );
        assert_eq!(books.ack_due(false), Some(1));
        assert_eq!(books.unacked(), 0);
    }

    #[test]
    fn a_settled_request_behind_one_in_hand_is_acked_alone_at_once() {
        let mut books = Owed::new(10);
        books.taken(1);
        books.taken(2);
        assert_eq!(books.in_hand(), 2);
        assert_eq!(books.settled(2, 2), Some(2));
        assert_eq!(books.in_hand(), 1);
        // A nacked reply's request is rejected: nothing left to ack.
        books.replied(1);
        books.awaiting_confirm(ReplyKind::Refusal(ErrorCode::Internal), 1, true);
        let nacked = books.confirm(BrokerConfirm {
            sequence: 1,
            multiple: true,
            accepted: false,
        });
        assert!(nacked.len() == 1 && !nacked[0].accepted && nacked[0].tag.requeue_on_nack);
        books.rejected(1);
        assert_eq!((books.unacked(), books.ack_due(false)), (0, None));
    }

    #[test]
    fn confirms_wake_the_loop_only_when_nothing_else_may() {
        let mut books = Owed::new(2);
        // Nothing waits for a confirm: no reason to wake, whatever else holds.
        assert!(!books.confirms_urgent(true, true));
        assert_eq!(books.patience(false), Duration::MAX);
        answered(&mut books, 1);
        // One reply waits, the window has room: drained when the loop wakes anyway, or after
        // ACK_DELAY.
        assert!(!books.confirms_urgent(false, false));
        assert_eq!(books.patience(false), ACK_DELAY);
        assert!(books.confirms_urgent(true, false), "overdue");
        assert!(books.confirms_urgent(false, true), "stopping");
        assert_eq!(books.patience(true), Duration::MAX);
        // The window full: the broker sends nothing more until an ack.
        answered(&mut books, 2);
        assert!(books.confirms_urgent(false, false));
    }

    #[test]
    fn the_longest_call_is_kept() {
        let mut books = Owed::<u64>::new(1);
        books.handled(Duration::from_millis(5));
        books.handled(Duration::from_millis(2));
        assert_eq!(books.longest_call(), Duration::from_millis(5));
    }
}
