//! The channel that requests which came back (see [`crate::server::redelivery`]) are re-queued on,
//! with their count of deliveries: its own, in confirm mode. The session decides (re-queue,
//! or a `redelivered` error reply); this module knows nothing of the session.

use super::{broker_confirm, lost};
use crate::error::Error;
use amiquip::{Channel, Confirm, Connection, Publish};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rpc_client::amqp::Watchdog;
use rpc_client::Properties;
use std::time::{Duration, Instant};

/// A channel in confirm mode for re-queued requests, and its confirms.
pub(super) struct Requeue {
    pub(super) channel: Channel,
    confirms: Receiver<Confirm>,
    /// Messages published on it so far (the broker's sequence number of the last one).
    published: u64,
}

/// What opening the channel and publishing on it take from a session's broker handles.
pub(super) struct Broker<'b> {
    pub(super) connection: &'b mut Connection,
    pub(super) watchdog: &'b Watchdog,
    /// Each broker round trip's bound.
    pub(super) limit: Duration,
}

impl Requeue {
    /// The channel for re-queued requests, opened (in confirm mode) if it is not yet.
    fn channel<'r>(
        slot: &'r mut Option<Requeue>,
        broker: &mut Broker<'_>,
    ) -> Result<&'r mut Requeue, Error> {
        if slot.is_none() {
            let connection = &mut *broker.connection;
            let requeue = broker.watchdog.bounded(
                "to opening the channel for re-queued requests",
                broker.limit,
                || {
                    let channel = connection.open_channel(None)?;
                    let confirms = channel.listen_for_publisher_confirms()?;
                    channel.enable_publisher_confirms()?;
                    Ok::<_, amiquip::Error>(Requeue {
                        channel,
                        confirms,
                        published: 0,
                    })
                },
            )?;
            *slot = Some(requeue);
        }
        slot.as_mut()
            .ok_or_else(|| Error::ConsumerStopped("no channel for re-queued requests".into()))
    }

    /// Publishes `body` with `properties` to `queue` (through the default exchange) on the
    /// re-queue channel and waits for the broker's confirm, each within the round-trip bound:
    /// `Ok(true)` once acked, `Ok(false)` if nacked.
    /// `slot` holds the channel, opened here if it is not yet, and dropped if it went away.
    pub(super) fn publish_confirmed(
        slot: &mut Option<Requeue>,
        mut broker: Broker<'_>,
        queue: &str,
        body: &[u8],
        properties: Properties,
    ) -> Result<bool, Error> {
        let properties = properties.into_amqp();
        let limit = broker.limit;
        let watchdog = broker.watchdog;
        let requeue = Self::channel(slot, &mut broker)?;
        let channel = &requeue.channel;
        watchdog
            .bounded("to the re-queued request's publish", limit, || {
                channel.basic_publish("", Publish::with_properties(body, queue, properties))
            })
            .map_err(|e| Error::from(e).context("cannot re-queue a request"))?;
        requeue.published += 1;
        let sequence = requeue.published;
        let deadline = Instant::now() + limit;
        loop {
            let confirm = match requeue.confirms.recv_deadline(deadline) {
                Ok(confirm) => confirm,
                Err(RecvTimeoutError::Timeout) => {
                    watchdog.abandon(format!(
                        "no answer within {:.1}s to the re-queued request's confirm",
                        limit.as_secs_f64()
                    ));
                    return Err(lost(watchdog, "confirm timed out"));
                }
                // The channel or the connection went away: the channel's close says which.
                Err(RecvTimeoutError::Disconnected) => {
                    let closed = slot.take().map(|r| r.channel.close());
                    return Err(match closed {
                        Some(Err(err)) => Error::broker("cannot re-queue a request")(err),
                        _ => lost(watchdog, "connection closed"),
                    });
                }
            };
            let confirm = broker_confirm(confirm);
            // One publish at a time: the confirm for it (or a multiple one covering it).
            if confirm.sequence == sequence || (confirm.multiple && confirm.sequence >= sequence) {
                return Ok(confirm.accepted);
            }
        }
    }
}
