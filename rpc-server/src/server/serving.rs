//! One connection's serving ([`Serving`]): the consume loop, and what it does with each
//! request (admit it, have it handled, reply, ack) and each confirm.

use super::owed::Owed;
use super::requeue::{self, Requeue};
use super::rules::{admission, budget, cancel_cause, fit_reply, Admission};
use super::{broker_confirm, lost, stop_failed, Server, STOP_LIMIT};
use crate::error::Error;
use crate::handler::Reply;
use crate::server::confirms::ReplyKind;
use crate::server::redelivery::{self, Verdict, MAX_DELIVERIES};
use crate::server::workers::{server_span, Done};
use amiquip::{
    Channel, Confirm, Connection, ConnectionBlockedNotification, ConsumerMessage, Delivery, Publish,
};
use crossbeam_channel::{select, Receiver, RecvError, RecvTimeoutError};
use rpc_client::amqp::Watchdog;
use rpc_client::wire::{self, ErrorCode};
use rpc_client::{Properties, TraceContext};
use std::time::{Duration, Instant};

/// One connection's broker handles, as a [`Serving`] uses them.
pub(super) struct Handles<'c> {
    pub(super) watchdog: &'c Watchdog,
    /// The channel requests come on and replies go out on.
    pub(super) channel: &'c Channel,
    /// The confirms of `channel` (with `confirm_replies`; else a channel that never delivers).
    pub(super) confirms: &'c Receiver<Confirm>,
    pub(super) connection: &'c mut Connection,
    /// The user the server logged in as.
    pub(super) login: &'c str,
    /// Each broker round trip's bound.
    pub(super) limit: Duration,
}

/// One connection's serving: its broker handles, what it owes ([`Owed`]), and the server it
/// serves for (its handler's workers, counts, the redelivery rule, the stop).
pub(super) struct Serving<'c, 's> {
    pub(super) server: &'c mut Server<'s>,
    pub(super) broker: Handles<'c>,
    /// The channel re-queued requests are published on, with publisher confirms: opened when
    /// the first redelivered request comes.
    pub(super) requeue: Option<Requeue>,
    owed: Owed<Delivery>,
    /// During the clean stop: the watchdog is armed for the whole stop, until then.
    stop_deadline: Option<Instant>,
}

impl<'c, 's> Serving<'c, 's> {
    /// A session of `server` on `broker`, whose channel has a prefetch of `window`.
    pub(super) fn new(
        server: &'c mut Server<'s>,
        broker: Handles<'c>,
        window: usize,
    ) -> Serving<'c, 's> {
        Serving {
            server,
            broker,
            requeue: None,
            owed: Owed::new(window),
            stop_deadline: None,
        }
    }

    /// Takes requests, has them handled, publishes the replies and acks the requests as their
    /// replies are confirmed, until a stop was asked for and no request is in hand (`Ok`).
    pub(super) fn consume(
        &mut self,
        deliveries: &Receiver<ConsumerMessage>,
        mut blocked: Receiver<ConnectionBlockedNotification>,
    ) -> Result<(), Error> {
        let confirms = self.broker.confirms;
        let no_deliveries = crossbeam_channel::never();
        let no_stop = crossbeam_channel::never();
        let no_confirms = crossbeam_channel::never();
        // Confirms waited for ACK_DELAY without anything else waking the loop.
        let mut confirms_due = false;
        loop {
            let stopping = self.server.stopping;
            if stopping && self.owed.in_hand() == 0 {
                return Ok(());
            }
            // New requests only while a worker is free and no stop was asked for; the ones
            // waiting meanwhile stay with amiquip (and go back to the queue on a stop).
            let intake = if !stopping && self.server.workers.has_room() {
                deliveries
            } else {
                &no_deliveries
            };
            let stop = if stopping {
                &no_stop
            } else {
                &self.server.shutdown
            };
            let urgent = self.owed.confirms_urgent(confirms_due, stopping);
            let confirm_wait = if urgent { confirms } else { &no_confirms };
            let patience = self.owed.patience(urgent);
            select! {
                recv(intake) -> message => {
                    if !self.take(message)? {
                        continue;
                    }
                }
                recv(self.server.workers.done()) -> done => {
                    let Ok(done) = done else {
                        return Err(Error::ConsumerStopped("the worker threads are gone".into()));
                    };
                    self.server.workers.finished();
                    self.finish(done)?;
                }
                recv(confirm_wait) -> confirm => match confirm {
                    Ok(confirm) => self.confirmed(confirm)?,
                    Err(_) => return Err(lost(self.broker.watchdog, "connection closed")),
                },
                recv(blocked) -> note => {
                    if !self.blocked(note) {
                        blocked = crossbeam_channel::never();
                    }
                }
                recv(stop) -> _ => self.server.stop_asked(),
                default(patience) => confirms_due = true,
            }
            if self.awake(deliveries)? {
                confirms_due = false;
            }
        }
    }

    /// A turn of the consume loop ends: takes in the confirms that came meanwhile and sends
    /// the ack that is due. `true` when every reply is confirmed.
    fn awake(&mut self, deliveries: &Receiver<ConsumerMessage>) -> Result<bool, Error> {
        while let Ok(confirm) = self.broker.confirms.try_recv() {
            self.confirmed(confirm)?;
        }
        let all_confirmed = self.owed.all_confirmed();
        // Acks wait for more answers only while the next request can be taken at once.
        let server = &*self.server;
        let more_waiting = !deliveries.is_empty() && server.workers.has_room() && !server.stopping;
        self.flush(more_waiting)?;
        let server = &*self.server;
        server.meter.load(
            self.owed.unacked(),
            server.workers.busy(),
            self.owed.awaiting(),
        );
        Ok(all_confirmed)
    }

    /// What came from the consumer: a request is taken in (`Ok(true)`), unless a stop was
    /// asked for meanwhile (`Ok(false)`); anything else ends the connection.
    fn take(&mut self, message: Result<ConsumerMessage, RecvError>) -> Result<bool, Error> {
        match message {
            Ok(ConsumerMessage::Delivery(delivery)) => {
                // A stop request wins over requests already buffered here: those go back to
                // the queue when the channel closes.
                if !self.server.shutdown.is_empty() {
                    self.server.stop_asked();
                    return Ok(false);
                }
                self.owed.taken(delivery.delivery_tag());
                self.admit(delivery)?;
                Ok(true)
            }
            Ok(ConsumerMessage::ServerCancelled) => Err(self.cancelled()),
            Ok(ConsumerMessage::ServerClosedChannel(err))
            | Ok(ConsumerMessage::ServerClosedConnection(err)) => {
                Err(Error::broker("the broker closed the connection")(err))
            }
            Ok(other) => Err(Error::ConsumerStopped(format!("{other:?}"))),
            Err(_) => Err(lost(self.broker.watchdog, "connection closed")),
        }
    }

    /// A blocked or unblocked notification: `false` once they end (the connection is going
    /// away; the deliveries say why).
    fn blocked(&mut self, note: Result<ConnectionBlockedNotification, RecvError>) -> bool {
        match note {
            Ok(ConnectionBlockedNotification::Blocked(reason)) => {
                self.server.meter.blocked(true);
                log::warn!(
                    "the broker blocks this connection's publishers (resource alarm): {}",
                    wire::printable(&reason)
                );
                true
            }
            Ok(ConnectionBlockedNotification::Unblocked) => {
                self.server.meter.blocked(false);
                log::info!("the broker unblocked this connection");
                true
            }
            Err(_) => false,
        }
    }

    /// Why the broker cancelled our consumer (see [`cancel_cause`]); asks the broker whether
    /// the queue exists, within the round-trip bound.
    fn cancelled(&mut self) -> Error {
        let connection = &mut *self.broker.connection;
        let name = self.server.options.queue.as_str();
        let probed =
            self.broker
                .watchdog
                .bounded("to the request queue's check", self.broker.limit, || {
                    let probe = connection.open_channel(None)?;
                    match probe.queue_declare_passive(name) {
                        Ok(_) => {
                            probe.close()?;
                            Ok(true)
                        }
                        Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => Ok(false),
                        Err(err) => Err(err),
                    }
                });
        let busy = self.server.workers.busy();
        cancel_cause(probed, name, busy, self.owed.longest_call())
    }

    /// Takes in one request (already [`Owed::taken`]): drops it, refuses it, or hands it to a
    /// worker. Only broker failures are errors; bad input is answered.
    pub(super) fn admit(&mut self, delivery: Delivery) -> Result<(), Error> {
        let redeliveries = &mut self.server.redeliveries;
        // The one clock read per request of a caller with a deadline (`timestamp`).
        let patience = wire::patience(&delivery.properties);
        let properties = &delivery.properties;
        match admission(redeliveries, delivery.redelivered, properties, patience) {
            Admission::Late => {
                log::info!("dropping a request whose caller's deadline has passed");
                self.dropped(delivery)
            }
            Admission::NoReplyTo => {
                log::warn!(
                    "dropping a request without reply_to ({} bytes): nowhere to answer. If its \
                     sender set one, a property that is not UTF-8 hid it: amiquip then cannot \
                     read any property of the message (the Erlang tutorial client's binary \
                     correlation_id does this; its caller waits for ever)",
                    delivery.body.len()
                );
                self.dropped(delivery)
            }
            Admission::DeepHeaders(_) => {
                let message = format!(
                    "the request's headers nest more than {} levels deep (tables or arrays in \
                     tables, the headers table counting as one)",
                    wire::MAX_HEADER_DEPTH
                );
                log::warn!("refusing request: {message}");
                let reply = Reply::refuse(wire::ErrorCode::BadRequest, &message);
                let trace = self.span(&delivery);
                self.reply(delivery, reply, trace, false)
            }
            Admission::Redelivery(Verdict::Handle) => self.handle(delivery, budget(patience)),
            Admission::Redelivery(Verdict::Refuse(why)) => self.refuse_redelivered(delivery, &why),
            Admission::Redelivery(Verdict::Requeue(attempts)) => self.requeue(delivery, attempts),
        }
    }

    /// A request acked and not answered.
    fn dropped(&mut self, delivery: Delivery) -> Result<(), Error> {
        self.server.stats.dropped += 1;
        self.server.meter.dropped();
        self.ack(delivery)
    }

    /// Has a request handled within `budget` (its caller's deadline, counted from when its
    /// handling starts; see [`budget`]): by a worker thread, or here and now (then its reply
    /// is published before this returns).
    pub(super) fn handle(
        &mut self,
        delivery: Delivery,
        budget: Option<Duration>,
    ) -> Result<(), Error> {
        if self.server.long_calls && self.server.workers.inline() {
            // The call blocks this loop for as long as it runs: ack what is answered first, so
            // that a server killed during the call leaves no answered request to run again.
            self.settle_all()?;
        }
        let generation = self.server.generation;
        match self.server.workers.submit(generation, delivery, budget) {
            Some(done) => self.finish(done),
            None => Ok(()),
        }
    }

    /// A request handled (by a worker thread, or inline): its reply is published, unless it
    /// came on an earlier connection.
    fn finish(&mut self, done: Done<Delivery>) -> Result<(), Error> {
        let Done {
            generation,
            delivery,
            reply,
            took,
            trace,
            abandoned,
        } = done;
        self.owed.handled(took);
        self.server.meter.handled(took);
        if generation != self.server.generation {
            log::info!(
                "dropping the reply to a request of a lost connection (the broker hands the \
                 request out again)"
            );
            return Ok(());
        }
        if abandoned {
            return self.abandoned(delivery, took);
        }
        self.reply(delivery, reply, trace, true)
    }

    /// The server's span of a request answered without the handler ([`server_span`]).
    pub(super) fn span(&self, delivery: &Delivery) -> Option<TraceContext> {
        server_span(&delivery.properties, self.server.options.start_traces)
    }

    /// A request whose caller's deadline passed while it was handled (the work was ended
    /// then, see [`crate::server::workers::Done::abandoned`]): acked without a reply, nobody waits
    /// for one; logged and counted.
    fn abandoned(&mut self, delivery: Delivery, took: Duration) -> Result<(), Error> {
        log::info!(
            "abandoned a request after {:.1}s: its caller's deadline passed (the work was \
             ended); acked, not answered",
            took.as_secs_f64()
        );
        let server = &mut *self.server;
        server.stats.abandoned += 1;
        server.meter.abandoned();
        server.redeliveries.finished(&delivery.properties);
        self.ack(delivery)
    }

    /// Waits (a round trip at most) for the confirms of the replies published so far, and
    /// acks every settled request.
    fn settle_all(&mut self) -> Result<(), Error> {
        if !self.owed.all_confirmed() {
            let deadline = Instant::now() + self.broker.limit;
            while !self.owed.all_confirmed() {
                match self.broker.confirms.recv_deadline(deadline) {
                    Ok(confirm) => self.confirmed(confirm)?,
                    Err(RecvTimeoutError::Timeout) => {
                        self.broker
                            .watchdog
                            .abandon("no answer within the round-trip bound to a reply's confirm");
                        return Err(lost(self.broker.watchdog, "confirm timed out"));
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(lost(self.broker.watchdog, "connection closed"))
                    }
                }
            }
        }
        self.flush(false)
    }

    /// Publishes `reply` to the request `delivery` with the `traceparent` of the server's
    /// span `trace` when the request is traced ([`Serving::span`]), which is acked once the broker confirms
    /// the reply. If the broker refuses (nacks) it, the request goes back to the queue when
    /// `requeue_on_nack`, else it is acked all the same. A reply over the server's limit
    /// becomes a `too-large` error reply: the broker would refuse it.
    pub(super) fn reply(
        &mut self,
        delivery: Delivery,
        reply: Reply,
        trace: Option<TraceContext>,
        requeue_on_nack: bool,
    ) -> Result<(), Error> {
        let Some(reply_to) = delivery.properties.reply_to().as_deref() else {
            return self.ack(delivery);
        };
        let options = self.server.options;
        let reply = fit_reply(reply, options.max_reply_bytes);
        if let Some(code) = reply.error {
            if !wire::takes_error_replies(&delivery.properties) {
                return self.unanswered(delivery, code);
            }
        }
        let mut properties = wire::traced_reply_properties(
            delivery.properties.correlation_id().as_deref(),
            &options.name,
            reply.error,
            trace.as_ref(),
        );
        if let Some(content_type) = reply.content_type {
            properties = properties.with_content_type(content_type);
        }
        let properties = properties.into_amqp();
        let body = reply.body;
        let channel = self.broker.channel;
        self.broker
            .watchdog
            .bounded("to the reply's publish", self.broker.limit, || {
                channel.basic_publish("", Publish::with_properties(&body, reply_to, properties))
            })
            .map_err(|e| Error::from(e).context("cannot publish the reply"))?;
        let kind = match reply.error {
            None => ReplyKind::Answer,
            Some(code) => ReplyKind::Refusal(code),
        };
        self.owed.replied(delivery.delivery_tag());
        if !options.confirm_replies {
            // Published is as far as the server follows a reply.
            self.count(kind, &delivery);
            return self.ack(delivery);
        }
        self.owed.awaiting_confirm(kind, delivery, requeue_on_nack);
        Ok(())
    }

    /// A request refused with `code` whose caller did not ask for error replies: acked without
    /// a reply, as a tutorial server would leave it (a tutorial client would read the error
    /// message as its result), logged and counted.
    fn unanswered(&mut self, delivery: Delivery, code: ErrorCode) -> Result<(), Error> {
        log::warn!(
            "not replying ({code}): the request does not ask for error replies (AMQP type \
             '{}'), so its caller would read the message as a result; acked",
            wire::ERROR_REPLIES_TYPE
        );
        let server = &mut *self.server;
        server.stats.unanswered += 1;
        server.meter.unanswered(code);
        server.redeliveries.finished(&delivery.properties);
        self.ack(delivery)
    }

    /// Counts a reply the server is done with (confirmed, or published without confirms) and
    /// forgets its request for the redelivery rule.
    fn count(&mut self, kind: ReplyKind, delivery: &Delivery) {
        let server = &mut *self.server;
        match kind {
            ReplyKind::Answer => {
                server.stats.answered += 1;
                server.meter.answered();
            }
            ReplyKind::Refusal(code) => {
                server.stats.refused += 1;
                server.meter.refused(code);
            }
        }
        server.redeliveries.finished(&delivery.properties);
    }

    /// Counts the replies a confirm settles and settles their requests: acked once confirmed;
    /// after a nack, rejected back to the queue (or acked, for a last-word reply).
    fn confirmed(&mut self, confirm: Confirm) -> Result<(), Error> {
        for reply in self.owed.confirm(broker_confirm(confirm)) {
            let delivery = reply.tag.delivery;
            if reply.accepted {
                self.count(reply.kind, &delivery);
            } else {
                self.server.stats.unconfirmed += 1;
                self.server.meter.unconfirmed(1);
                if reply.tag.requeue_on_nack {
                    log::warn!(
                        "the broker refused (nacked) a reply; its request goes back to the queue"
                    );
                    self.owed.rejected(delivery.delivery_tag());
                    let channel = self.broker.channel;
                    self.call("to a reject", "cannot reject", || {
                        delivery.reject(channel, true)
                    })?;
                    continue;
                }
                log::warn!(
                    "the broker refused (nacked) the error reply to a redelivered request; the \
                     request is dropped"
                );
            }
            self.ack(delivery)?;
        }
        Ok(())
    }

    /// Runs `call`, one broker operation, within the round-trip bound (or, during the clean
    /// stop, within the stop's).
    pub(super) fn call(
        &self,
        what: &'static str,
        doing: &str,
        call: impl FnOnce() -> Result<(), amiquip::Error>,
    ) -> Result<(), Error> {
        if self.stop_deadline.is_some() {
            return call().map_err(|e| stop_failed(self.broker.watchdog, doing, e));
        }
        Ok(self
            .broker
            .watchdog
            .bounded(what, self.broker.limit, call)?)
    }

    /// Nothing more is owed for `delivery`: acks it now or later (see [`Owed::settled`]).
    pub(super) fn ack(&mut self, delivery: Delivery) -> Result<(), Error> {
        let tag = delivery.delivery_tag();
        if let Some(delivery) = self.owed.settled(tag, delivery) {
            let channel = self.broker.channel;
            self.call("to an ack", "cannot ack", || delivery.ack(channel))?;
        }
        Ok(())
    }

    /// Sends the `multiple` ack that is due, if one is (see [`Owed::ack_due`]).
    fn flush(&mut self, more_waiting: bool) -> Result<(), Error> {
        if let Some(newest) = self.owed.ack_due(more_waiting) {
            let channel = self.broker.channel;
            self.call("to an ack", "cannot ack", || newest.ack_multiple(channel))?;
        }
        Ok(())
    }

    /// Counts the replies still unconfirmed as such (the connection is going away: the broker
    /// delivers their requests again).
    pub(super) fn count_unconfirmed(&mut self) {
        let awaiting = self.owed.awaiting();
        self.server.stats.unconfirmed += awaiting as u64;
        self.server.meter.unconfirmed(awaiting);
    }

    /// The clean stop, once no request is in hand, within [`STOP_LIMIT`] for this and (in
    /// the caller) the channel and connection closes, whatever fails: the last confirms and
    /// acks, and the re-queue channel closed.
    pub(super) fn stop(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + STOP_LIMIT;
        let watchdog = self.broker.watchdog;
        watchdog.arm(deadline, "to the clean stop");
        self.stop_deadline = Some(deadline);
        // The last confirms, so that their requests are acked and the counts are final.
        while !self.owed.all_confirmed() {
            match self.broker.confirms.recv_deadline(deadline) {
                Ok(confirm) => self.confirmed(confirm)?,
                Err(_) => break,
            }
        }
        self.flush(false)?;
        self.count_unconfirmed();
        if let Some(requeue) = self.requeue.take() {
            requeue
                .channel
                .close()
                .map_err(|e| stop_failed(watchdog, "cannot close the channel", e))?;
        }
        let stats = self.server.stats;
        log::info!(
            "shutting down: {} answered, {} refused, {} unanswered, {} dropped, {} abandoned, \
             {} unconfirmed, {} reconnects",
            stats.answered,
            stats.refused,
            stats.unanswered,
            stats.dropped,
            stats.abandoned,
            stats.unconfirmed,
            stats.reconnects
        );
        Ok(())
    }
}

/// Requests that came back (see [`crate::server::redelivery`]).
impl Serving<'_, '_> {
    /// Answers a request that must not be handled again with a `redelivered` error reply: the
    /// last word, acked whatever the broker says to the reply.
    pub(super) fn refuse_redelivered(
        &mut self,
        delivery: Delivery,
        why: &str,
    ) -> Result<(), Error> {
        log::warn!("refusing a redelivered request: {why}");
        let reply = Reply::refuse(ErrorCode::Redelivered, why);
        let trace = self.span(&delivery);
        self.reply(delivery, reply, trace, false)
    }

    /// A request came back (see [`crate::server::redelivery`]): publishes a copy with its count of
    /// earlier deliveries to the request queue, waits for the broker's confirm, then acks the
    /// original. A copy the broker refuses (a nack, or a closed channel) leaves the request
    /// handled here instead, so that nothing loops.
    pub(super) fn requeue(&mut self, mut delivery: Delivery, attempts: u64) -> Result<(), Error> {
        let login = self.broker.login;
        let properties = Properties::lend(&mut delivery.properties, |p| {
            redelivery::requeued_properties(p, attempts, login)
        });
        let queue = self.server.options.queue.as_str();
        // Should it be handled here after all: its caller's deadline, counted from now.
        let budget = budget(wire::patience(&delivery.properties));
        let broker = requeue::Broker {
            connection: &mut *self.broker.connection,
            watchdog: self.broker.watchdog,
            limit: self.broker.limit,
        };
        match Requeue::publish_confirmed(
            &mut self.requeue,
            broker,
            queue,
            &delivery.body,
            properties,
        ) {
            Ok(true) => {
                log::info!(
                    "a request came back (delivered {attempts} time(s) before; at \
                     {MAX_DELIVERIES} it is refused): re-queued with {}={attempts}",
                    redelivery::ATTEMPTS_HEADER
                );
                self.server.meter.requeued();
                self.ack(delivery)
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
}
