//! Requests that keep coming back ([`Redeliveries`]): the rule that keeps a request whose
//! handling fails again and again (it kills its server, its reply is refused, it outlives the
//! broker's `consumer_timeout`) from being handled without end, on every queue type.
//!
//! A request comes back (`redelivered`) when the server holding it did not ack it: it died, its
//! connection was lost, the broker refused its reply (a nack: the server rejects the request
//! back to the queue; or a channel closed for a reply over `max_message_size`), or the
//! handling took longer than the broker's `consumer_timeout`. From the broker's side a server
//! killed by its request and a server whose node went away look the same (a lost
//! connection), so every delivery counts, and the limit, [`MAX_DELIVERIES`], is high enough
//! for the innocent cases (a rolling restart of three nodes can take one request's server
//! away three times).
//!
//! Counting. Quorum queues count earlier deliveries in the `x-delivery-count` header, classic
//! queues count nothing (and since RabbitMQ 4.3 a quorum queue no longer counts a delivery
//! lost with its consumer, only a `basic.reject`). So the servers count themselves, in the
//! request: a redelivered
//! request is **re-published** to the request queue with [`ATTEMPTS_HEADER`] = its earlier
//! deliveries so far, and the original is acked once the broker confirmed the copy
//! ([`Verdict::Requeue`]). Only redeliveries pay for this; a first delivery is handled as it
//! comes. The copy keeps every property of the request (`reply_to`, `correlation_id`,
//! `expiration`, `timestamp`, headers, ...), except a `user_id` other than the server's own
//! login (the broker would refuse it) and the broker's `x-delivery-count` (the copy's own
//! deliveries are counted anew). If the server dies between the copy's confirm and the
//! original's ack, both copies are in the queue: the request may run twice (its caller keeps
//! the first answer), and each copy still carries its count. The rule:
//!
//! - earlier deliveries = [`ATTEMPTS_HEADER`] + this copy's own (`x-delivery-count`, at least
//!   1 when `redelivered`); at [`MAX_DELIVERIES`] the request is answered with a `redelivered`
//!   error reply instead of being handled again;
//! - a server that started handling a request and lost it with its channel (closed by the
//!   broker: a reply it refused, a consumer timeout) remembers it: if the request comes back to
//!   it, it answers with the error reply at once (another server may still handle it). A
//!   request lost with the whole connection (a node stopped, killed or cut off) is not held
//!   against it by this memory ([`Redeliveries::forget_started`]); the count above still
//!   applies.
//!
//! A request that merely waited in a dead server's buffer comes back too, is re-published once
//! (one of its [`MAX_DELIVERIES`]) and answered as usual.

use rpc_client::{Properties, ReadProperties};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Header of a re-published request: how many times the request was delivered before this
/// copy was published (our own count; see the module documentation).
pub const ATTEMPTS_HEADER: &str = "x-rpc-attempts";

/// Earlier deliveries after which a request is answered with an error reply instead of being
/// handled again: a request that kills its server is run this many times. Not 2: a request
/// comes back innocently each time the connection of the server holding it is lost (a node
/// stopped or killed), and a rolling restart of three nodes can do that to one request up to
/// three times.
pub const MAX_DELIVERIES: u64 = 5;

/// Most requests remembered as started and not acked (the oldest are forgotten first).
const REMEMBERED: usize = 10_000;

/// What to do with a request just received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it (a first delivery, or a copy re-published with its count).
    Handle,
    /// Answer it with a `redelivered` error reply, for this reason, and ack it.
    Refuse(String),
    /// It came back: re-publish it with [`ATTEMPTS_HEADER`] = this count of its earlier
    /// deliveries (see [`requeued_properties`]), then ack it; do not handle it here.
    Requeue(u64),
}

/// The requests this server started and did not see acked, by correlation id and `reply_to`.
#[derive(Debug, Default)]
pub(crate) struct Redeliveries {
    /// Each request started and not finished, with its number in `order`.
    started: HashMap<Key, u64, BuildHasherDefault<KeyHasher>>,
    /// Requests in the order they were started, by number; entries of finished ones are
    /// dropped lazily from the front (most requests finish in order), so finishing one costs
    /// no scan.
    order: VecDeque<(u64, Key)>,
    next: u64,
}

impl Redeliveries {
    /// What to do with a request (see [`Verdict`]); records it as started when it is to be
    /// handled (see [`Redeliveries::finished`]).
    pub(crate) fn check(&mut self, redelivered: bool, properties: &impl ReadProperties) -> Verdict {
        let earlier = earlier_deliveries(redelivered, properties);
        if earlier >= MAX_DELIVERIES {
            return Verdict::Refuse(format!(
                "this request was delivered {earlier} times before and its handling failed \
                 each time (a server died or lost its connection, its reply was refused, or it \
                 took longer than the broker's consumer_timeout); it is not handled again"
            ));
        }
        let key = key(properties);
        if redelivered && key.as_ref().is_some_and(|k| self.started.contains_key(k)) {
            return Verdict::Refuse(
                "this server lost this request once while handling it (its channel closed: \
                 a reply the broker refused, or longer than the broker's consumer_timeout); \
                 it is not handled again"
                    .into(),
            );
        }
        if redelivered {
            return Verdict::Requeue(earlier);
        }
        if let Some(key) = key {
            if !self.started.contains_key(&key) {
                let number = self.next;
                self.next += 1;
                self.started.insert(key, number);
                self.order.push_back((number, key));
                self.trim();
            }
        }
        Verdict::Handle
    }

    /// Drops finished requests from the front of `order`, and the oldest started ones while
    /// more than [`REMEMBERED`] entries are kept.
    fn trim(&mut self) {
        while let Some((number, key)) = self.order.front() {
            let live = self.started.get(key) == Some(number);
            if live && self.order.len() <= REMEMBERED {
                break;
            }
            if let Some((number, key)) = self.order.pop_front() {
                if self.started.get(&key) == Some(&number) {
                    self.started.remove(&key);
                }
            }
        }
    }

    /// The connection was lost (not a channel closed by the broker): whatever happened to the
    /// requests in hand says nothing about them, so none of them counts as lost while handled.
    pub(crate) fn forget_started(&mut self) {
        self.started.clear();
        self.order.clear();
    }

    /// The request was answered and acked: forget it.
    pub(crate) fn finished(&mut self, properties: &impl ReadProperties) {
        if let Some(key) = key(properties) {
            if self.started.remove(&key).is_some() {
                self.trim();
            }
        }
    }
}

/// How many times a request was delivered before this delivery: the count of earlier copies
/// ([`ATTEMPTS_HEADER`]) plus this copy's own earlier deliveries (the broker's
/// `x-delivery-count`, at least 1 when `redelivered`).
pub(crate) fn earlier_deliveries(redelivered: bool, properties: &impl ReadProperties) -> u64 {
    let own = count_header(properties, "x-delivery-count")
        .unwrap_or(0)
        .max(u64::from(redelivered));
    count_header(properties, ATTEMPTS_HEADER)
        .unwrap_or(0)
        .saturating_add(own)
}

/// The properties of the copy of a redelivered request: all of `original`'s, with
/// [`ATTEMPTS_HEADER`] = `attempts`, without the broker's `x-delivery-count`, and without a
/// `user_id` other than `login` (the broker refuses a publish whose `user_id` is not the
/// publisher's login).
pub(crate) fn requeued_properties(original: &Properties, attempts: u64, login: &str) -> Properties {
    let mut headers = original.headers();
    headers.remove("x-delivery-count");
    headers.insert(ATTEMPTS_HEADER, i64::try_from(attempts).unwrap_or(i64::MAX));
    let mut copy = original.clone().with_headers(headers);
    if original.user_id().is_some_and(|user| user != login) {
        copy = copy.without_user_id();
    }
    copy
}

/// A non-negative integer header (the broker's `x-delivery-count`, our [`ATTEMPTS_HEADER`]).
/// A value of another type, or negative, counts as absent.
fn count_header(properties: &impl ReadProperties, name: &str) -> Option<u64> {
    u64::try_from(properties.header_i64(name)?).ok()
}

/// A request's identity: its correlation id and where it wants the reply.
fn key(properties: &impl ReadProperties) -> Option<Key> {
    let id = properties.correlation_id()?;
    let reply_to = properties.reply_to().unwrap_or("");
    // FNV-1a over both, with a byte no UTF-8 text holds between them: no allocation and a
    // few hundred instructions per request (a formatted String key hashed with SipHash cost
    // about 3,800 per request, 10% of the serving loop's own work).
    let fnv = |hash: u64, bytes: &[u8]| {
        bytes.iter().fold(hash, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let hash = fnv(0xcbf2_9ce4_8422_2325, id.as_bytes());
    Some(fnv(fnv(hash, &[0xff]), reply_to.as_bytes()))
}

/// A request's identity for the rule: a 64-bit hash of its correlation id and reply_to. Two
/// requests in hand at once share one with odds of about 1 in 10^15 (10,000 remembered).
type Key = u64;

/// The map's hasher: a [`Key`] is a hash already.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_client::Headers;

    fn request(id: &str) -> Properties {
        Properties::default()
            .with_correlation_id(id)
            .with_reply_to("q")
    }

    fn with_header(properties: Properties, name: &str, n: i64) -> Properties {
        let mut headers: Headers = properties.headers();
        headers.insert(name, n);
        properties.with_headers(headers)
    }

    #[test]
    fn a_first_delivery_is_handled_and_a_redelivery_requeued_with_its_count() {
        let mut seen = Redeliveries::default();
        assert_eq!(seen.check(false, &request("a")), Verdict::Handle);
        seen.forget_started();
        assert_eq!(seen.check(true, &request("a")), Verdict::Requeue(1));
        let copy = requeued_properties(&request("a"), 1, "guest");
        assert_eq!(seen.check(false, &copy), Verdict::Handle);
        seen.forget_started();
        assert_eq!(seen.check(true, &copy), Verdict::Requeue(2));
    }

    #[test]
    fn a_request_that_keeps_killing_its_servers_is_refused_at_the_limit() {
        // Each server dies (its memory with it): only the count in the request survives.
        let mut properties = request("p");
        let mut handled = 1; // the first delivery
        loop {
            match Redeliveries::default().check(true, &properties) {
                Verdict::Requeue(n) => {
                    properties = requeued_properties(&properties, n, "guest");
                    assert_eq!(
                        Redeliveries::default().check(false, &properties),
                        Verdict::Handle
                    );
                    handled += 1;
                }
                Verdict::Refuse(why) => {
                    assert!(why.contains("5 times"), "{why}");
                    break;
                }
                Verdict::Handle => panic!("a redelivery is never handled as it comes"),
            }
        }
        assert_eq!(handled, MAX_DELIVERIES);
    }

    #[test]
    fn a_request_lost_with_its_channel_is_refused_by_that_server() {
        let mut seen = Redeliveries::default();
        assert_eq!(seen.check(false, &request("a")), Verdict::Handle);
        // The channel closed before the ack: it comes back.
        assert!(matches!(
            seen.check(true, &request("a")),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn finished_requests_are_forgotten() {
        let mut seen = Redeliveries::default();
        assert_eq!(seen.check(false, &request("a")), Verdict::Handle);
        seen.finished(&request("a"));
        // A duplicate delivery after a clean ack (another server's crash) is counted, not refused.
        assert_eq!(seen.check(true, &request("a")), Verdict::Requeue(1));
    }

    #[test]
    fn the_broker_count_and_ours_add_up() {
        let mut seen = Redeliveries::default();
        let quorum = |n| with_header(request("c"), "x-delivery-count", n);
        assert_eq!(seen.check(true, &quorum(2)), Verdict::Requeue(2));
        assert!(matches!(seen.check(true, &quorum(5)), Verdict::Refuse(_)));
        let copy = with_header(quorum(1), ATTEMPTS_HEADER, 3);
        assert_eq!(seen.check(true, &copy), Verdict::Requeue(4));
        let copy = with_header(quorum(2), ATTEMPTS_HEADER, 3);
        assert!(matches!(seen.check(true, &copy), Verdict::Refuse(_)));
        // Garbage or negative counts count as absent; a redelivery still counts one.
        let bad = with_header(request("d"), ATTEMPTS_HEADER, -7);
        assert_eq!(seen.check(true, &bad), Verdict::Requeue(1));
    }

    #[test]
    fn the_copy_keeps_the_request_but_not_the_broker_count_nor_a_foreign_user() {
        let original = with_header(request("e"), "x-delivery-count", 2)
            .with_expiration("3000")
            .with_timestamp(1_700_000_000)
            .with_content_type("text/plain")
            .with_user_id("someone");
        let original = with_header(original, "x-custom", 9);
        let copy = requeued_properties(&original, 2, "guest");
        assert_eq!(copy.reply_to(), Some("q"));
        assert_eq!(copy.correlation_id(), Some("e"));
        assert_eq!(copy.expiration(), Some("3000"));
        assert_eq!(copy.timestamp(), Some(1_700_000_000));
        assert_eq!(copy.content_type(), Some("text/plain"));
        assert_eq!(copy.user_id(), None);
        assert_eq!(count_header(&copy, "x-custom"), Some(9));
        assert_eq!(count_header(&copy, ATTEMPTS_HEADER), Some(2));
        assert_eq!(count_header(&copy, "x-delivery-count"), None);
        let own = requeued_properties(&original.with_user_id("guest"), 2, "guest");
        assert_eq!(own.user_id(), Some("guest"));
    }

    #[test]
    fn memory_is_bounded() {
        let mut seen = Redeliveries::default();
        for i in 0..REMEMBERED + 10 {
            let _ = seen.check(false, &request(&i.to_string()));
        }
        assert_eq!(seen.started.len(), REMEMBERED);
        // The oldest were forgotten, the newest are remembered.
        assert_eq!(seen.check(true, &request("0")), Verdict::Requeue(1));
        assert!(matches!(
            seen.check(true, &request(&(REMEMBERED + 9).to_string())),
            Verdict::Refuse(_)
        ));
    }
}
