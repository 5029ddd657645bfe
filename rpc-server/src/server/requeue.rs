//! A request that came back (see [`crate::redelivery`]): re-queued with its count of
//! deliveries on a channel of its own, in confirm mode, or answered with a `redelivered`
//! error reply.

use super::lost;
use super::rules::budget;
use super::session::Session;
use crate::error::Error;
use crate::handler::Reply;
use crate::redelivery::{self, MAX_DELIVERIES};
use amiquip::{AmqpProperties, Channel, Confirm, Delivery, Publish};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rpc_client::wire::{self, ErrorCode};
use std::time::Instant;

/// A channel in confirm mode for re-queued requests, and its confirms.
pub(super) struct Requeue {
    pub(super) channel: Channel,
    confirms: Receiver<Confirm>,
    /// Messages published on it so far (the broker's sequence number of the last one).
    published: u64,
}

impl Session<'_, '_> {
    /// Answers a request that must not be handled again with a `redelivered` error reply: the
    /// last word, acked whatever the broker says to the reply.
    pub(super) fn refuse_redelivered(
        &mut self,
        delivery: Delivery,
        why: &str,
    ) -> Result<(), Error> {
        log::warn!("refusing a redelivered request: {why}");
        let reply = Reply::refuse(ErrorCode::Redelivered, why);
        self.reply(delivery, reply, None, false)
    }

    /// A request came back (see [`crate::redelivery`]): publishes a copy with its count of
    /// earlier deliveries to the request queue, waits for the broker's confirm, then acks the
    /// original. A copy the broker refuses (a nack, or a closed channel) leaves the request
    /// handled here instead, so that nothing loops.
    pub(super) fn requeue(&mut self, delivery: Delivery, attempts: u64) -> Result<(), Error> {
        let properties =
            redelivery::requeued_properties(&delivery.properties, attempts, self.broker.login);
        let queue = self.server.options.queue.as_str();
        // Should it be handled here after all: its caller's deadline, counted from now.
        let budget = budget(wire::patience(&delivery.properties));
        match self.publish_confirmed(queue, &delivery.body, properties) {
            Ok(true) => {
                log::info!(
                    "a request came back (delivered {attempts} time(s) before; at \
                     {MAX_DELIVERIES} it is refused): re-queued with {}={attempts}",
                    redelivery::ATTEMPTS_HEADER
                );
                self.server.meter.requeued();
                self.settled(delivery)
            }
            // Refused: a quorum queue without a leader for the moment (a node lost, a
            // partition) nacks, as does a full queue with reject-publish. Neither says anything
            // about the request, which is handled here then, its count not raised this once.
            // (The cluster scenarios answered a request 'redelivered' when this refused it.)
            Ok(false) => {
                log::warn!(
                    "a request came back and the broker refused (nacked) its copy with its count \
                     of attempts; handling it here (delivered {attempts} time(s) before)"
                );
                self.handle(delivery, budget)
            }
            Err(err) if err.channel_closed() => {
                log::warn!(
                    "the broker closed the channel of re-queued requests ({err}); handling the \
                     request here (delivered {attempts} time(s) before)"
                );
                self.requeue = None;
                self.handle(delivery, budget)
            }
            Err(err) => Err(err),
        }
    }

    /// The channel for re-queued requests, opened (in confirm mode) if it is not yet.
    fn requeue_channel(&mut self) -> Result<&mut Requeue, Error> {
        if self.requeue.is_none() {
            let connection = &mut *self.broker.connection;
            let requeue = self.broker.watchdog.bounded(
                "to opening the channel for re-queued requests",
                self.broker.limit,
                || {
                    let channel = connection.open_channel(None)?;
                    let confirms = channel.listen_for_publisher_confirms()?;
                    channel.enable_publisher_confirms()?;
                    Ok(Requeue {
                        channel,
                        confirms,
                        published: 0,
                    })
                },
            )?;
            self.requeue = Some(requeue);
        }
        self.requeue
            .as_mut()
            .ok_or_else(|| Error::ConsumerStopped("no channel for re-queued requests".into()))
    }

    /// Publishes `body` with `properties` to `queue` (through the default exchange) on the
    /// re-queue channel and waits for the broker's confirm, each within the round-trip bound:
    /// `Ok(true)` once acked, `Ok(false)` if nacked.
    fn publish_confirmed(
        &mut self,
        queue: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<bool, Error> {
        let limit = self.broker.limit;
        let watchdog = self.broker.watchdog;
        let requeue = self.requeue_channel()?;
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
                    let closed = self.requeue.take().map(|r| r.channel.close());
                    return Err(match closed {
                        Some(Err(err)) => Error::broker("cannot re-queue a request")(err),
                        _ => lost(watchdog, "connection closed"),
                    });
                }
            };
            let (payload, accepted) = match confirm {
                Confirm::Ack(payload) => (payload, true),
                Confirm::Nack(payload) => (payload, false),
            };
            // One publish at a time: the confirm for it (or a multiple one covering it).
            if payload.delivery_tag == sequence
                || (payload.multiple && payload.delivery_tag >= sequence)
            {
                return Ok(accepted);
            }
        }
    }
}
