//! Requests that keep coming back ([`Redeliveries`]): the rule that keeps a request whose
//! handling fails again and again from being computed without end.
//!
//! A request comes back (`redelivered`) when the server holding it did not ack it: it died, its
//! connection was lost, the broker refused its reply (a nack: the server rejects the request
//! back to the queue; or a channel closed for a reply over `max_message_size`), or the
//! handling took longer than the broker's `consumer_timeout`. The first two heal by themselves; the others
//! fail the same way every time. The rule:
//!
//! - On a quorum queue the broker counts earlier deliveries in the `x-delivery-count` header: a
//!   request delivered [`MAX_DELIVERIES`] times before is answered with a `redelivered` error
//!   reply instead of being handled again.
//! - On any queue, a server that started handling a request and lost it with its channel
//!   (closed by the broker: a reply it refused, a consumer timeout) remembers it: if the
//!   request comes back to it, it answers with the error reply. (Another server may still
//!   handle it once; each server at most once more.) A request lost with the whole connection
//!   (a node stopped, killed or cut off) is not held against it: [`Redeliveries::forget_started`].
//!
//! A request that merely waited in a dead server's buffer comes back once and is answered as
//! usual.

use amiquip::{AmqpProperties, AmqpValue};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Earlier deliveries (`x-delivery-count`) after which a request is answered with an error
/// reply instead of being handled again. Not 2: a request comes back innocently each time the
/// connection of the server holding it is lost (a node stopped or killed), and a rolling
/// restart of three nodes can do that to one request up to three times.
pub const MAX_DELIVERIES: u64 = 5;

/// Most requests remembered as started and not acked (the oldest are forgotten first).
const REMEMBERED: usize = 10_000;

/// The requests this server started and did not see acked, by correlation id and `reply_to`.
#[derive(Debug, Default)]
pub struct Redeliveries {
    /// Each request started and not finished, with its number in `order`.
    started: HashMap<Key, u64, BuildHasherDefault<KeyHasher>>,
    /// Requests in the order they were started, by number; entries of finished ones are
    /// dropped lazily from the front (most requests finish in order), so finishing one costs
    /// no scan.
    order: VecDeque<(u64, Key)>,
    next: u64,
}

impl Redeliveries {
    /// Whether a request must not be handled again: why, for the error reply, if so.
    /// Otherwise records it as started (see [`Redeliveries::finished`]).
    pub fn check(&mut self, redelivered: bool, properties: &AmqpProperties) -> Option<String> {
        if let Some(count) = delivery_count(properties) {
            if count >= MAX_DELIVERIES {
                return Some(format!(
                    "this request was delivered {count} times before and its handling failed \
                     each time (a server died, its reply was refused, or it took longer than \
                     the broker's consumer_timeout); it is not handled again"
                ));
            }
        }
        let key = key(properties)?;
        if redelivered && self.started.contains_key(&key) {
            return Some(
                "this server lost this request once while handling it (its channel closed: \
                 a reply the broker refused, or longer than the broker's consumer_timeout); \
                 it is not handled again"
                    .into(),
            );
        }
        if !self.started.contains_key(&key) {
            let number = self.next;
            self.next += 1;
            self.started.insert(key, number);
            self.order.push_back((number, key));
            self.trim();
        }
        None
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
    pub fn forget_started(&mut self) {
        self.started.clear();
        self.order.clear();
    }

    /// The request was answered and acked: forget it.
    pub fn finished(&mut self, properties: &AmqpProperties) {
        if let Some(key) = key(properties) {
            if self.started.remove(&key).is_some() {
                self.trim();
            }
        }
    }
}

/// `x-delivery-count`: how often the broker delivered the request before (quorum queues).
fn delivery_count(properties: &AmqpProperties) -> Option<u64> {
    match properties.headers().as_ref()?.get("x-delivery-count")? {
        AmqpValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AmqpValue::LongInt(n) => u64::try_from(*n).ok(),
        AmqpValue::LongUInt(n) => Some(u64::from(*n)),
        AmqpValue::ShortInt(n) => u64::try_from(*n).ok(),
        AmqpValue::ShortUInt(n) => Some(u64::from(*n)),
        AmqpValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AmqpValue::ShortShortUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

/// A request's identity: its correlation id and where it wants the reply.
fn key(properties: &AmqpProperties) -> Option<Key> {
    let id = properties.correlation_id().as_deref()?;
    let reply_to = properties.reply_to().as_deref().unwrap_or("");
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
    use amiquip::FieldTable;

    fn request(id: &str) -> AmqpProperties {
        AmqpProperties::default()
            .with_correlation_id(id.into())
            .with_reply_to("q".into())
    }

    #[test]
    fn a_request_lost_while_handling_is_not_handled_again() {
        let mut seen = Redeliveries::default();
        assert_eq!(seen.check(false, &request("a")), None);
        // The channel closed before the ack: it comes back.
        assert!(seen.check(true, &request("a")).is_some());
    }

    #[test]
    fn finished_requests_are_forgotten() {
        let mut seen = Redeliveries::default();
        assert_eq!(seen.check(false, &request("a")), None);
        seen.finished(&request("a"));
        // A duplicate delivery after a clean ack (another server's crash) is answered.
        assert_eq!(seen.check(true, &request("a")), None);
    }

    #[test]
    fn a_redelivery_from_another_server_is_handled_once() {
        let mut seen = Redeliveries::default();
        assert_eq!(seen.check(true, &request("b")), None);
    }

    #[test]
    fn quorum_delivery_count_limits_every_server() {
        let mut seen = Redeliveries::default();
        let counted = |n: i64| {
            let mut headers = FieldTable::new();
            headers.insert("x-delivery-count".into(), AmqpValue::LongLongInt(n));
            request("c").with_headers(headers)
        };
        assert_eq!(seen.check(true, &counted(4)), None);
        seen.finished(&counted(4));
        assert!(seen.check(true, &counted(5)).is_some());
    }

    #[test]
    fn a_request_lost_with_the_connection_is_handled_again() {
        let mut seen = Redeliveries::default();
        assert_eq!(seen.check(false, &request("d")), None);
        seen.forget_started();
        assert_eq!(seen.check(true, &request("d")), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut seen = Redeliveries::default();
        for i in 0..REMEMBERED + 10 {
            let _ = seen.check(false, &request(&i.to_string()));
        }
        assert_eq!(seen.started.len(), REMEMBERED);
        // The oldest were forgotten, the newest are remembered.
        assert_eq!(seen.check(true, &request("0")), None);
        assert!(seen
            .check(true, &request(&(REMEMBERED + 9).to_string()))
            .is_some());
    }
}
