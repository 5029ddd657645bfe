//! The session's decisions that need no broker: what to do with a request as it comes
//! ([`admission`]), a reply over the limit ([`fit_reply`]), and what a `basic.cancel` most
//! likely meant ([`cancel_cause`]).

use crate::error::Error;
use crate::handler::Reply;
use crate::server::redelivery::{Redeliveries, Verdict};
use rpc_client::wire::{self, ErrorCode, Patience};
use rpc_client::ReadProperties;
use std::time::Duration;

/// A request that took this long before a `basic.cancel` makes the cancel a likely consumer
/// timeout (the shortest consumer timeout RabbitMQ accepts is 1 s).
const LONG_CALL: Duration = Duration::from_secs(1);

/// What to do with a request just taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Its caller's deadline has passed (this can be a redelivery after a server died):
    /// answering would only cost work. Acked, not answered.
    Late,
    /// It has no `reply_to` (the AMQP library hands over empty properties when it cannot read them: a
    /// `correlation_id` or `content_type` that is not UTF-8). Acked, not answered.
    NoReplyTo,
    /// Its headers nest deeper than [`wire::MAX_HEADER_DEPTH`]: this many levels, at most
    /// [`rpc_client::amqp::FLATTENED_DEPTH`], where the connection cut deeper ones (see
    /// [`rpc_client::amqp::DepthGuard`]). Refused: `bad-request`.
    DeepHeaders(usize),
    /// What the redelivery rule says (see [`crate::server::redelivery`]).
    Redelivery(Verdict),
}

/// What to do with a request with `properties`, `redelivered` or not, whose caller waits
/// `patience` ([`wire::patience`]); one to handle is recorded as started in `redeliveries`.
pub(super) fn admission(
    redeliveries: &mut Redeliveries,
    redelivered: bool,
    properties: &impl ReadProperties,
    patience: Patience,
) -> Admission {
    if patience == Patience::Gone {
        return Admission::Late;
    }
    if properties.reply_to().is_none() {
        return Admission::NoReplyTo;
    }
    let depth = wire::header_depth(properties);
    if depth > wire::MAX_HEADER_DEPTH {
        return Admission::DeepHeaders(depth);
    }
    Admission::Redelivery(redeliveries.check(redelivered, properties))
}

/// The time a request's handling has, counted from when it starts: what its caller still
/// waits (see [`wire::patience`]); `None` for no deadline (and for a caller already gone,
/// which [`admission`] drops before).
pub(super) fn budget(patience: Patience) -> Option<Duration> {
    match patience {
        Patience::Left(left) => Some(left),
        Patience::Unbounded | Patience::Gone => None,
    }
}

/// `reply`, or a `too-large` error reply in its place when its body is over `max` bytes: the
/// broker would refuse it.
pub(super) fn fit_reply(reply: Reply, max: usize) -> Reply {
    if reply.body.len() <= max {
        return reply;
    }
    let message = format!(
        "the reply is {} bytes, above this server's reply limit of {max} bytes",
        reply.body.len()
    );
    log::warn!("refusing request: {message}");
    Reply::refuse(ErrorCode::TooLarge, &message)
}

/// Why the broker cancelled the consumer of `queue` (a `basic.cancel`, which carries no
/// reason), from `probed`: whether the queue still exists (or why that could not be checked).
/// Deleted, or (the queue still there, `busy` requests in hand or one that just took
/// `longest_call`, long) most likely a consumer timeout, which RabbitMQ 4.3's quorum queues
/// report this way.
pub(super) fn cancel_cause(
    probed: Result<bool, impl std::fmt::Display>,
    queue: &str,
    busy: usize,
    longest_call: Duration,
) -> Error {
    let queue = wire::printable(queue);
    match probed {
        Ok(false) => Error::ConsumerStopped(format!(
            "the broker cancelled our consumer: queue '{queue}' was deleted"
        )),
        Ok(true) if busy > 0 || longest_call >= LONG_CALL => Error::ConsumerTimeout(format!(
            "(queue '{queue}'; {busy} request(s) in hand, the longest \
             finished one took {:.1}s): most likely a consumer timeout",
            longest_call.as_secs_f64()
        )),
        Ok(true) => Error::ConsumerStopped(format!(
            "the broker cancelled our consumer, though queue '{queue}' still exists"
        )),
        Err(err) => Error::ConsumerStopped(format!(
            "the broker cancelled our consumer: was queue '{queue}' deleted? (cannot check: \
             {err})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_client::{HeaderValue, Headers, Properties};

    fn admit(
        redeliveries: &mut Redeliveries,
        redelivered: bool,
        properties: &Properties,
    ) -> Admission {
        admission(
            redeliveries,
            redelivered,
            properties,
            wire::patience(properties),
        )
    }

    fn request() -> Properties {
        Properties::default()
            .with_reply_to("callback")
            .with_correlation_id("id-1")
    }

    #[test]
    fn late_requests_and_those_without_reply_to_are_dropped() {
        let mut redeliveries = Redeliveries::default();
        let first = admit(&mut redeliveries, false, &request());
        assert_eq!(first, Admission::Redelivery(Verdict::Handle));
        // Sent at the epoch's second 1, with 1 s to live: long past.
        let late = request().with_timestamp(1).with_expiration("1000");
        assert_eq!(admit(&mut redeliveries, false, &late), Admission::Late);
        let unanswerable = Properties::default().with_correlation_id("id-2");
        assert_eq!(
            admit(&mut redeliveries, false, &unanswerable),
            Admission::NoReplyTo
        );
    }

    #[test]
    fn deep_headers_are_refused() {
        fn nested(depth: usize) -> Headers {
            let mut table = Headers::new();
            for _ in 1..depth {
                let mut outer = Headers::new();
                outer.insert("t", HeaderValue::from(table));
                table = outer;
            }
            table
        }
        let mut redeliveries = Redeliveries::default();
        let deepest = request().with_headers(nested(wire::MAX_HEADER_DEPTH));
        let verdict = admit(&mut redeliveries, false, &deepest);
        assert_eq!(verdict, Admission::Redelivery(Verdict::Handle));
        let deeper = request().with_headers(nested(wire::MAX_HEADER_DEPTH + 1));
        let verdict = admit(&mut redeliveries, false, &deeper);
        assert_eq!(verdict, Admission::DeepHeaders(wire::MAX_HEADER_DEPTH + 1));
    }

    #[test]
    fn redeliveries_follow_the_redelivery_rule() {
        let mut redeliveries = Redeliveries::default();
        let again = admit(&mut redeliveries, true, &request());
        assert_eq!(again, Admission::Redelivery(Verdict::Requeue(1)));
        let mut headers = Headers::new();
        headers.insert(crate::server::redelivery::ATTEMPTS_HEADER, 9_i64);
        let spent = request().with_headers(headers);
        assert!(matches!(
            admit(&mut redeliveries, true, &spent),
            Admission::Redelivery(Verdict::Refuse(_))
        ));
    }

    #[test]
    fn replies_over_the_limit_become_too_large_refusals() {
        let fits = fit_reply(Reply::answer(vec![b'x'; 10]), 10);
        assert_eq!((fits.error, fits.body.len()), (None, 10));
        let over = fit_reply(Reply::answer(vec![b'x'; 11]), 10);
        assert_eq!(over.error, Some(ErrorCode::TooLarge));
        assert_eq!(
            String::from_utf8_lossy(&over.body),
            "the reply is 11 bytes, above this server's reply limit of 10 bytes"
        );
    }

    #[test]
    fn a_cancel_with_the_queue_there_after_a_long_call_is_a_consumer_timeout() {
        let no_error: Result<bool, &str> = Ok(true);
        let cause = |probed, busy, took| cancel_cause(probed, "q\x1b", busy, took);
        let timeout = cause(no_error, 1, Duration::ZERO);
        assert!(timeout.consumer_timeout().is_some(), "{timeout}");
        assert!(timeout.to_string().contains("queue 'q?'"), "{timeout}");
        let after_long = cause(Ok(true), 0, LONG_CALL);
        assert!(after_long.consumer_timeout().is_some(), "{after_long}");
        for other in [
            cause(Ok(true), 0, Duration::from_millis(10)),
            cause(Ok(false), 1, LONG_CALL),
            cause(Err("no channel"), 1, LONG_CALL),
        ] {
            assert!(other.consumer_timeout().is_none(), "{other}");
        }
        let deleted = cause(Ok(false), 0, Duration::ZERO).to_string();
        assert!(deleted.contains("was deleted"), "{deleted}");
    }
}
