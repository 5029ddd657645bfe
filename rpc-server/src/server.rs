//! The consume loop ([`serve`], and [`run`] for Fibonacci): take a request, have a worker
//! compute the reply, publish it, ack the request once the broker confirms the reply; after a
//! lost connection, reconnect and start over.
//!
//! Acking only after the reply is confirmed means that neither a server that dies mid-request
//! nor a broker that refuses or loses a reply loses the request: the broker delivers it again
//! (see [`crate::ack`] and [`crate::confirms`]). A prefetch of 1 (the default)
//! hands each server one request at a time, so N servers share slow work evenly; with
//! `workers` N the prefetch is at least N, and each request is acked after its own reply.
//!
//! A request that comes back (`redelivered`: its server died or lost it) is not handled as
//! it comes: it is re-published with its count of deliveries and acked, or, at the limit,
//! answered with a `redelivered` error reply (see [`crate::redelivery`]), so that a request
//! that kills its server every time stops after a few, on every queue type.

use crate::ack::Acks;
use crate::confirms::{ReplyKind, Unconfirmed};
use crate::error::{Error, CONSUMER_TIMEOUT_CANCEL};
use crate::handler::{Fibonacci, Handler, Reply};
use crate::metrics::Meter;
use crate::options::{QueueType, ServerOptions};
use crate::queue::ensure_queue;
use crate::redelivery::{self, Redeliveries, Verdict, MAX_DELIVERIES};
use crate::workers::{server_span, Done, Workers};
use amiquip::{
    Channel, Confirm, Connection, ConnectionBlockedNotification, ConsumerMessage, ConsumerOptions,
    Delivery, Publish,
};
use crossbeam_channel::{select, Receiver, RecvTimeoutError};
use rpc_client::amqp::consume;
use rpc_client::amqp::Reconnect;
use rpc_client::amqp::Watchdog;
use rpc_client::amqp::{open_first, Link};
use rpc_client::wire::{self, ErrorCode};
use rpc_client::TraceContext;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most settled requests acked with one `multiple` ack.
const ACK_BATCH: usize = 64;

/// Counts of what a server did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered with a result: published, or with
    /// [`ServerOptions::confirm_replies`] confirmed by the broker.
    pub answered: u64,
    /// Requests answered with an error reply (published, or confirmed likewise).
    pub refused: u64,
    /// With [`ServerOptions::confirm_replies`]: replies the broker refused (nacked), or that
    /// were not confirmed before the connection closed.
    pub unconfirmed: u64,
    /// Requests without `reply_to`, or whose caller's deadline had passed: acked, not answered.
    pub dropped: u64,
    /// Times the server lost its connection (or could not connect) and tried again.
    pub reconnects: u64,
}

/// The longest a clean stop may take once asked for: the last acks, the channel close and the
/// connection close together. A broker that does not answer in time (a resource alarm, a
/// stalled link) has the connection abandoned; its unacked requests go back to the queue.
pub const STOP_LIMIT: Duration = Duration::from_secs(4);

/// Serves Fibonacci (the tutorial's procedure, with `options.max_n` and
/// `options.max_reply_bytes`) until `shutdown` receives a message or its sender is dropped;
/// see [`serve`].
pub fn run(options: &ServerOptions, shutdown: Receiver<()>) -> Result<Stats, Error> {
    let fibonacci = Fibonacci {
        max_n: options.max_n,
        max_reply_bytes: options.max_reply_bytes,
    };
    serve(options, Arc::new(fibonacci), shutdown)
}

/// Serves requests with `handler` until `shutdown` receives a message or its sender is
/// dropped.
///
/// Connects, makes sure the request queue exists (an existing one is used as declared, a
/// missing one is declared from `options`), sets the prefetch and consumes. Every broker round
/// trip waits at most the broker's connect timeout; a connection that does not answer in time
/// is abandoned. When the connection fails or is lost it reconnects with capped exponential
/// backoff and starts over, until `options.max_retries` consecutive failures (never, if
/// `None`); it returns the last error then. Up to `options.workers` requests are handled at
/// once, on threads of their own. On shutdown it finishes the requests in hand, replies, acks
/// them and closes the channel (which returns prefetched requests it had not started to the
/// queue) and the connection, within [`STOP_LIMIT`]. A stop is never lost: once asked for, the
/// server never reconnects; if the broker prevented the clean close it returns
/// [`Error::UncleanStop`].
pub fn serve(
    options: &ServerOptions,
    handler: Arc<dyn Handler>,
    shutdown: Receiver<()>,
) -> Result<Stats, Error> {
    wire::parse_queue_name(&options.queue).map_err(Error::Config)?;
    if options.brokers.is_empty() {
        return Err(Error::Config("no broker to connect to".into()));
    }
    if options.transient && options.queue_type == QueueType::Quorum {
        return Err(Error::Config(
            "quorum queues are always durable: --transient goes with --queue-type classic".into(),
        ));
    }
    let description = handler.describe();
    let long_calls = handler.time_limit().is_some();
    let workers = Workers::start(handler, options.workers)
        .map_err(|err| Error::Config(format!("cannot start the worker threads: {err}")))?;
    let mut server = Server {
        options,
        description,
        workers,
        long_calls,
        generation: 0,
        shutdown,
        stats: Stats::default(),
        reconnect: Reconnect::new(options.max_retries, options.max_backoff),
        next_broker: 0,
        stopping: false,
        deliveries: None,
        redeliveries: Redeliveries::default(),
        meter: Meter::new(options.metrics.clone()),
    };
    // /healthz turns 503 however this returns.
    let _stopped = server.meter.stopped_on_drop();
    loop {
        let err = match server.serve() {
            Ok(()) => return Ok(server.stats),
            Err(err) if server.stopping => return Err(Error::UncleanStop(Box::new(err))),
            Err(err) => match err.refusal() {
                Some(hint) => {
                    return Err(Error::Refused {
                        hint,
                        cause: Box::new(err),
                    })
                }
                None => err,
            },
        };
        let consumer_timeout = err.consumer_timeout();
        if !err.channel_closed() && consumer_timeout.is_none() {
            // Lost with the connection (a node down, a cut link): not the requests' doing.
            server.redeliveries.forget_started();
        }
        if let Some(words) = consumer_timeout {
            let knob = if server.long_calls {
                "--exec-timeout"
            } else {
                "--max-n"
            };
            log::error!(
                "consumer timeout ({words}): a request took longer than the broker's consumer \
                 timeout (raise consumer_timeout on the broker, or the queue's \
                 x-consumer-timeout, or lower {knob}); the request comes back and is then \
                 answered with a 'redelivered' error reply"
            );
        }
        let Some(delay) = server.reconnect.failed() else {
            return Err(err);
        };
        log::warn!(
            "{err}; reconnecting in {:.1}s (attempt {})",
            delay.as_secs_f64(),
            server.reconnect.failures()
        );
        server.stats.reconnects += 1;
        server.meter.disconnected(true);
        match server.shutdown.recv_timeout(delay) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(server.stats),
        }
    }
}

/// A server between connections: what it was told and what it has done so far.
struct Server<'a> {
    options: &'a ServerOptions,
    /// What the handler serves, for the log.
    description: String,
    workers: Workers,
    /// The handler's calls may be long (it has a time limit, e.g. a command): acks are not held
    /// back while one runs on the consume loop's thread.
    long_calls: bool,
    /// Counts connections: replies computed for requests of an earlier one are dropped (the
    /// broker gives those requests to a server again).
    generation: u64,
    shutdown: Receiver<()>,
    stats: Stats,
    reconnect: Reconnect,
    /// The broker to try first on the next connection: the one after the last one reached,
    /// so that a lost connection moves on to the next node.
    next_broker: usize,
    /// A stop was asked for: whatever happens next, the server does not reconnect.
    stopping: bool,
    /// The current connection's request receiver, kept until the connection is closed:
    /// amiquip's I/O thread treats a consumer whose receiver is gone as a fatal error.
    deliveries: Option<Receiver<ConsumerMessage>>,
    /// Requests started and not confirmed, to recognise one that keeps coming back.
    redeliveries: Redeliveries,
    /// Metrics and readiness for `--metrics-addr` (nothing without).
    meter: Meter,
}

impl Server<'_> {
    /// One connection's worth of serving: `Ok` after a clean stop, `Err` when the connection
    /// could not be made, was lost, or could not be closed cleanly.
    fn serve(&mut self) -> Result<(), Error> {
        let options = self.options;
        let (mut link, reached) = open_first(&options.brokers, self.next_broker)?;
        self.next_broker = reached + 1;
        let limit = options.brokers[reached].connect_timeout;
        let served = self.serve_link(&mut link, reached, limit);
        self.meter.disconnected(false);
        if served.is_err() {
            // Closing an unusable connection must not wait for long either.
            link.bound_close(STOP_LIMIT);
        }
        // After a stop, serve_link armed the watchdog for the rest of the stop.
        let Link {
            connection,
            watchdog,
        } = link;
        let closed = connection.close();
        self.deliveries = None;
        served?;
        if let Some(why) = watchdog.fired() {
            return Err(rpc_client::Error::Stalled(why).into());
        }
        closed.map_err(Error::broker("cannot close the connection"))
    }

    /// Sets up consuming on `link` and serves until a stop (`Ok`, with the channel closed and
    /// the watchdog armed for the connection close) or a failure.
    fn serve_link(
        &mut self,
        link: &mut Link,
        reached: usize,
        limit: Duration,
    ) -> Result<(), Error> {
        let options = self.options;
        let Link {
            connection,
            watchdog,
        } = link;
        let blocked = watchdog.bounded("to the blocked-notification listener", limit, || {
            connection.listen_for_connection_blocked()
        })?;
        let channel =
            watchdog.bounded("to a channel open", limit, || connection.open_channel(None))?;
        // With confirm_replies, requests are acked once their replies are confirmed (see
        // crate::ack, crate::confirms); without, once they are published.
        let confirms = if options.confirm_replies {
            watchdog.bounded("to enabling publisher confirms", limit, || {
                let confirms = channel.listen_for_publisher_confirms()?;
                channel.enable_publisher_confirms()?;
                Ok(confirms)
            })?
        } else {
            crossbeam_channel::never()
        };
        ensure_queue(connection, watchdog, options, limit)?;
        let prefetch = options.prefetch();
        watchdog
            .bounded("to the prefetch setting (qos)", limit, || {
                channel.qos(0, prefetch, false)
            })
            .map_err(|e| Error::from(e).context("cannot set the prefetch"))?;
        let deliveries = watchdog
            .bounded("to the consume", limit, || {
                consume(&channel, &options.queue, ConsumerOptions::default())
            })
            .map_err(|e| {
                Error::from(e).context(format!(
                    "cannot consume queue '{}'",
                    wire::printable(&options.queue)
                ))
            })?;
        self.deliveries = Some(deliveries.clone());
        self.reconnect.succeeded();
        self.meter.consuming();
        log::info!(
            "{} waiting for RPC requests on queue '{}' at {} (serving {}; prefetch {prefetch}, \
             workers {})",
            wire::printable(&options.name),
            wire::printable(&options.queue),
            options.brokers[reached],
            self.description,
            options.workers.max(1),
        );
        self.generation += 1;
        let mut conn = Conn {
            watchdog,
            channel: &channel,
            confirms: &confirms,
            connection,
            login: &options.brokers[reached].user,
            requeue: None,
            limit,
            acks: Acks::new(ACK_BATCH),
            unconfirmed: Unconfirmed::default(),
            window: usize::from(prefetch),
            longest_call: Duration::ZERO,
            stop_deadline: None,
        };
        let served = self.consume(&mut conn, &deliveries, blocked);
        if served.is_err() {
            // Lost with the connection: the broker delivers their requests again.
            self.stats.unconfirmed += conn.unconfirmed.len() as u64;
            self.meter.unconfirmed(conn.unconfirmed.len());
        }
        served?;
        // From here on the server stops, whatever fails: within STOP_LIMIT for the last
        // confirms and acks, the channel close and (in serve) the connection close together.
        let deadline = Instant::now() + STOP_LIMIT;
        watchdog.arm(deadline, "to the clean stop");
        conn.stop_deadline = Some(deadline);
        // The last confirms, so that their requests are acked and the counts are final.
        while !conn.unconfirmed.is_empty() {
            match confirms.recv_deadline(deadline) {
                Ok(confirm) => self.confirmed(&mut conn, confirm)?,
                Err(_) => break,
            }
        }
        conn.flush(false)?;
        self.stats.unconfirmed += conn.unconfirmed.len() as u64;
        self.meter.unconfirmed(conn.unconfirmed.len());
        if let Some(requeue) = conn.requeue.take() {
            requeue
                .channel
                .close()
                .map_err(|e| stop_failed(watchdog, "cannot close the channel", e))?;
        }
        let stats = self.stats;
        log::info!(
            "shutting down: {} answered, {} refused, {} dropped, {} unconfirmed, {} reconnects",
            stats.answered,
            stats.refused,
            stats.dropped,
            stats.unconfirmed,
            stats.reconnects
        );
        // Closing the channel returns prefetched, unacked requests to the queue.
        channel
            .close()
            .map_err(|e| stop_failed(watchdog, "cannot close the channel", e))
    }

    /// Takes requests, has them handled, publishes the replies and acks the requests as their
    /// replies are confirmed, until a stop was asked for and no request is in hand (`Ok`).
    fn consume(
        &mut self,
        conn: &mut Conn<'_>,
        deliveries: &Receiver<ConsumerMessage>,
        mut blocked: Receiver<ConnectionBlockedNotification>,
    ) -> Result<(), Error> {
        let confirms = conn.confirms;
        let no_deliveries = crossbeam_channel::never();
        let no_stop = crossbeam_channel::never();
        let no_confirms = crossbeam_channel::never();
        // Confirms waited for ACK_DELAY without anything else waking the loop.
        let mut confirms_due = false;
        loop {
            if self.stopping && conn.acks.in_hand() == 0 {
                return Ok(());
            }
            // New requests only while a worker is free and no stop was asked for; the ones
            // waiting meanwhile stay with amiquip (and go back to the queue on a stop).
            let intake = if !self.stopping && self.workers.has_room() {
                deliveries
            } else {
                &no_deliveries
            };
            let stop = if self.stopping {
                &no_stop
            } else {
                &self.shutdown
            };
            // Confirms wake the loop only when requests wait for them and nothing else may
            // come: the prefetch window is full, a stop is under way, or ACK_DELAY passed
            // without another event. Otherwise they are drained whenever the loop is awake
            // anyway, which saves a thread wake-up per confirm.
            let waiting = !conn.unconfirmed.is_empty();
            let urgent =
                waiting && (confirms_due || self.stopping || conn.acks.len() >= conn.window);
            let confirm_wait = if urgent { confirms } else { &no_confirms };
            let patience = if waiting && !urgent {
                ACK_DELAY
            } else {
                Duration::MAX
            };
            select! {
                recv(intake) -> message => match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => {
                        // A stop request wins over requests already buffered here: those go
                        // back to the queue when the channel closes.
                        if !self.shutdown.is_empty() {
                            self.stop_asked();
                            continue;
                        }
                        conn.acks.taken(delivery.delivery_tag());
                        self.admit(conn, delivery)?;
                    }
                    Ok(ConsumerMessage::ServerCancelled) => return Err(self.cancelled(conn)),
                    Ok(ConsumerMessage::ServerClosedChannel(err))
                    | Ok(ConsumerMessage::ServerClosedConnection(err)) => {
                        return Err(Error::broker("the broker closed the connection")(err));
                    }
                    Ok(other) => return Err(Error::ConsumerStopped(format!("{other:?}"))),
                    Err(_) => return Err(lost(conn.watchdog, "connection closed")),
                },
                recv(self.workers.done()) -> done => {
                    let Ok(done) = done else {
                        return Err(Error::ConsumerStopped("the worker threads are gone".into()));
                    };
                    self.workers.finished();
                    self.finish(conn, done)?;
                }
                recv(confirm_wait) -> confirm => match confirm {
                    Ok(confirm) => self.confirmed(conn, confirm)?,
                    Err(_) => return Err(lost(conn.watchdog, "connection closed")),
                },
                recv(blocked) -> note => match note {
                    Ok(ConnectionBlockedNotification::Blocked(reason)) => {
                        self.meter.blocked(true);
                        log::warn!(
                            "the broker blocks this connection's publishers (resource alarm): {}",
                            wire::printable(&reason)
                        )
                    }
                    Ok(ConnectionBlockedNotification::Unblocked) => {
                        self.meter.blocked(false);
                        log::info!("the broker unblocked this connection")
                    }
                    // The connection is going away; the deliveries say why.
                    Err(_) => blocked = crossbeam_channel::never(),
                },
                recv(stop) -> _ => self.stop_asked(),
                default(patience) => confirms_due = true,
            }
            // The confirms that came meanwhile.
            while let Ok(confirm) = confirms.try_recv() {
                self.confirmed(conn, confirm)?;
            }
            if conn.unconfirmed.is_empty() {
                confirms_due = false;
            }
            // Acks wait for more answers only while the next request can be taken at once.
            let more_waiting = !deliveries.is_empty() && self.workers.has_room() && !self.stopping;
            conn.flush(more_waiting)?;
            self.meter
                .load(conn.acks.len(), self.workers.busy(), conn.unconfirmed.len());
        }
    }

    /// Why the broker cancelled our consumer (a `basic.cancel`, which carries no reason): the
    /// request queue was deleted, or (the queue still there, a request in hand or one that
    /// just took long) most likely a consumer timeout, which RabbitMQ 4.3's quorum queues
    /// report this way. Asks the broker whether the queue exists, within the round-trip bound.
    fn cancelled(&self, conn: &mut Conn<'_>) -> Error {
        let queue = wire::printable(&self.options.queue);
        let connection = &mut *conn.connection;
        let name = self.options.queue.as_str();
        let probed = conn
            .watchdog
            .bounded("to the request queue's check", conn.limit, || {
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
        match probed {
            Ok(false) => Error::ConsumerStopped(format!(
                "the broker cancelled our consumer: queue '{queue}' was deleted"
            )),
            Ok(true) if self.workers.busy() > 0 || conn.longest_call >= LONG_CALL => {
                Error::ConsumerStopped(format!(
                    "{CONSUMER_TIMEOUT_CANCEL} (queue '{queue}'; {} request(s) in hand, the \
                     longest finished one took {:.1}s): most likely a consumer timeout",
                    self.workers.busy(),
                    conn.longest_call.as_secs_f64()
                ))
            }
            Ok(true) => Error::ConsumerStopped(format!(
                "the broker cancelled our consumer, though queue '{queue}' still exists"
            )),
            Err(err) => Error::ConsumerStopped(format!(
                "the broker cancelled our consumer: was queue '{queue}' deleted? (cannot \
                 check: {err})"
            )),
        }
    }

    /// A stop was asked for: no new requests; the ones in hand are finished, then the server
    /// stops, and never reconnects whatever fails from here on.
    fn stop_asked(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.meter.stopping();
            let busy = self.workers.busy();
            if busy > 0 {
                log::info!("stopping: finishing {busy} request(s) in hand");
            }
        }
    }

    /// Takes in one request (already [`Acks::taken`]): drops it, refuses it, or hands it to a
    /// worker. Only broker failures are errors; bad input is answered.
    fn admit(&mut self, conn: &mut Conn<'_>, delivery: Delivery) -> Result<(), Error> {
        if wire::deadline_passed(&delivery.properties) {
            // The caller has given up (this can be a redelivery after a server died):
            // answering would only cost work.
            log::info!("dropping a request whose caller's deadline has passed");
            self.stats.dropped += 1;
            self.meter.dropped();
            return conn.settled(delivery);
        }
        if delivery.properties.reply_to().is_none() {
            // amiquip hands over empty properties when it cannot read them (a correlation_id or
            // content_type that is not UTF-8): then there is no reply_to to answer to either.
            log::warn!(
                "dropping a request without reply_to ({} bytes; properties that are not \
                 UTF-8 cannot be read, so they count as missing)",
                delivery.body.len()
            );
            self.stats.dropped += 1;
            self.meter.dropped();
            return conn.settled(delivery);
        }
        match self
            .redeliveries
            .check(delivery.redelivered, &delivery.properties)
        {
            Verdict::Handle => {}
            Verdict::Refuse(why) => return self.refuse_redelivered(conn, delivery, &why),
            Verdict::Requeue(attempts) => return self.requeue(conn, delivery, attempts),
        }
        self.handle(conn, delivery)
    }

    /// Has a request handled: by a worker thread, or here and now (then its reply is
    /// published before this returns).
    fn handle(&mut self, conn: &mut Conn<'_>, delivery: Delivery) -> Result<(), Error> {
        if self.long_calls && self.workers.inline() {
            // The call blocks this loop for as long as it runs: ack what is answered first, so
            // that a server killed during the call leaves no answered request to run again.
            self.settle_all(conn)?;
        }
        match self.workers.submit(self.generation, delivery) {
            Some(done) => self.finish(conn, done),
            None => Ok(()),
        }
    }

    /// A request handled (by a worker thread, or inline): its reply is published, unless it
    /// came on an earlier connection.
    fn finish(&mut self, conn: &mut Conn<'_>, done: Done) -> Result<(), Error> {
        let Done {
            generation,
            delivery,
            reply,
            took,
            trace,
        } = done;
        conn.longest_call = conn.longest_call.max(took);
        self.meter.handled(took);
        if generation != self.generation {
            log::info!(
                "dropping the reply to a request of a lost connection (the broker hands the \
                 request out again)"
            );
            return Ok(());
        }
        self.reply(conn, delivery, reply, Some(trace), true)
    }

    /// Waits (a round trip at most) for the confirms of the replies published so far, and
    /// acks every settled request.
    fn settle_all(&mut self, conn: &mut Conn<'_>) -> Result<(), Error> {
        if !conn.unconfirmed.is_empty() {
            let deadline = Instant::now() + conn.limit;
            while !conn.unconfirmed.is_empty() {
                match conn.confirms.recv_deadline(deadline) {
                    Ok(confirm) => self.confirmed(conn, confirm)?,
                    Err(RecvTimeoutError::Timeout) => {
                        conn.watchdog
                            .abandon("no answer within the round-trip bound to a reply's confirm");
                        return Err(lost(conn.watchdog, "confirm timed out"));
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(lost(conn.watchdog, "connection closed"))
                    }
                }
            }
        }
        conn.flush(false)
    }

    /// Answers a request that must not be handled again with a `redelivered` error reply: the
    /// last word, acked whatever the broker says to the reply.
    fn refuse_redelivered(
        &mut self,
        conn: &mut Conn<'_>,
        delivery: Delivery,
        why: &str,
    ) -> Result<(), Error> {
        log::warn!("refusing a redelivered request: {why}");
        let reply = Reply::refuse(ErrorCode::Redelivered, why);
        self.reply(conn, delivery, reply, None, false)
    }

    /// A request came back (see [`crate::redelivery`]): publishes a copy with its count of
    /// earlier deliveries to the request queue, waits for the broker's confirm, then acks the
    /// original. A copy the broker refuses (a nack, or a closed channel) leaves the request
    /// answered with a `redelivered` error reply instead, so that nothing loops.
    fn requeue(
        &mut self,
        conn: &mut Conn<'_>,
        delivery: Delivery,
        attempts: u64,
    ) -> Result<(), Error> {
        let properties =
            redelivery::requeued_properties(&delivery.properties, attempts, conn.login);
        match conn.publish_confirmed(&self.options.queue, &delivery.body, properties) {
            Ok(true) => {
                log::info!(
                    "a request came back (delivered {attempts} time(s) before; at \
                     {MAX_DELIVERIES} it is refused): re-queued with {}={attempts}",
                    redelivery::ATTEMPTS_HEADER
                );
                self.meter.requeued();
                conn.settled(delivery)
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
                self.handle(conn, delivery)
            }
            Err(err) if err.channel_closed() => {
                log::warn!(
                    "the broker closed the channel of re-queued requests ({err}); handling the \
                     request here (delivered {attempts} time(s) before)"
                );
                conn.requeue = None;
                self.handle(conn, delivery)
            }
            Err(err) => Err(err),
        }
    }

    /// Publishes `reply` to the request `delivery` with the `traceparent` of the server's
    /// span `trace` (one is made here if not given), which is acked once the broker confirms
    /// the reply. If the broker refuses (nacks) it, the request goes back to the queue when
    /// `requeue_on_nack`, else it is acked all the same. A reply over the server's limit
    /// becomes a `too-large` error reply: the broker would refuse it.
    fn reply(
        &mut self,
        conn: &mut Conn<'_>,
        delivery: Delivery,
        mut reply: Reply,
        trace: Option<TraceContext>,
        requeue_on_nack: bool,
    ) -> Result<(), Error> {
        let Some(reply_to) = delivery.properties.reply_to().as_deref() else {
            return conn.settled(delivery);
        };
        let max = self.options.max_reply_bytes;
        if reply.body.len() > max {
            let message = format!(
                "the reply is {} bytes, above this server's reply limit of {max} bytes",
                reply.body.len()
            );
            log::warn!("refusing request: {message}");
            reply = Reply::refuse(ErrorCode::TooLarge, &message);
        }
        let trace = trace.unwrap_or_else(|| server_span(&delivery.properties));
        let mut properties = wire::traced_reply_properties(
            delivery.properties.correlation_id().as_deref(),
            &self.options.name,
            reply.error,
            Some(&trace),
        );
        if let Some(content_type) = reply.content_type {
            properties = properties.with_content_type(content_type);
        }
        let body = reply.body;
        let channel = conn.channel;
        conn.watchdog
            .bounded("to the reply's publish", conn.limit, || {
                channel.basic_publish("", Publish::with_properties(&body, reply_to, properties))
            })
            .map_err(|e| Error::from(e).context("cannot publish the reply"))?;
        let kind = match reply.error {
            None => ReplyKind::Answer,
            Some(code) => ReplyKind::Refusal(code),
        };
        conn.acks.replied(delivery.delivery_tag());
        if !self.options.confirm_replies {
            // Published is as far as the server follows a reply.
            self.count(kind, &delivery);
            return conn.settled(delivery);
        }
        conn.unconfirmed.published(
            kind,
            Replied {
                delivery,
                requeue_on_nack,
            },
        );
        Ok(())
    }

    /// Counts a reply the server is done with (confirmed, or published without confirms) and
    /// forgets its request for the redelivery rule.
    fn count(&mut self, kind: ReplyKind, delivery: &Delivery) {
        match kind {
            ReplyKind::Answer => {
                self.stats.answered += 1;
                self.meter.answered();
            }
            ReplyKind::Refusal(code) => {
                self.stats.refused += 1;
                self.meter.refused(code);
            }
        }
        self.redeliveries.finished(&delivery.properties);
    }

    /// Counts the replies a confirm settles and settles their requests: acked once confirmed;
    /// after a nack, rejected back to the queue (or acked, for a last-word reply).
    fn confirmed(&mut self, conn: &mut Conn<'_>, confirm: Confirm) -> Result<(), Error> {
        for reply in conn.unconfirmed.confirm(confirm) {
            let Replied {
                delivery,
                requeue_on_nack,
            } = reply.tag;
            if reply.accepted {
                self.count(reply.kind, &delivery);
            } else {
                self.stats.unconfirmed += 1;
                self.meter.unconfirmed(1);
                if requeue_on_nack {
                    log::warn!(
                        "the broker refused (nacked) a reply; its request goes back to the queue"
                    );
                    conn.acks.forget(delivery.delivery_tag());
                    let channel = conn.channel;
                    conn.call("to a reject", "cannot reject", || {
                        delivery.reject(channel, true)
                    })?;
                    continue;
                }
                log::warn!(
                    "the broker refused (nacked) the error reply to a redelivered request; the \
                     request is dropped"
                );
            }
            conn.settled(delivery)?;
        }
        Ok(())
    }
}

/// A request that took this long before a `basic.cancel` makes the cancel a likely consumer
/// timeout (the shortest consumer timeout RabbitMQ accepts is 1 s).
const LONG_CALL: Duration = Duration::from_secs(1);

/// How long the consume loop lets confirms wait in their channel while nothing else wakes it,
/// before it waits for them (and acks their requests).
const ACK_DELAY: Duration = Duration::from_millis(2);

/// A published reply waiting for its confirm: the request it answers.
struct Replied {
    delivery: Delivery,
    /// After a nack the request goes back to the queue (else it is acked: a last word).
    requeue_on_nack: bool,
}

/// One channel's state while serving: what to ack, and which replies wait for a confirm.
struct Conn<'c> {
    watchdog: &'c Watchdog,
    channel: &'c Channel,
    /// The confirms of `channel` (with `confirm_replies`; else a channel that never delivers).
    confirms: &'c Receiver<Confirm>,
    connection: &'c mut Connection,
    /// The user the server logged in as.
    login: &'c str,
    /// The channel re-queued requests are published on, with publisher confirms: opened when
    /// the first redelivered request comes.
    requeue: Option<Requeue>,
    /// Each broker round trip's bound.
    limit: Duration,
    acks: Acks<Delivery>,
    unconfirmed: Unconfirmed<Replied>,
    /// The prefetch: with that many requests unacked the broker sends no more.
    window: usize,
    /// The longest a handler call of this connection took (for a `basic.cancel`'s cause).
    longest_call: Duration,
    /// During the clean stop: the watchdog is armed for the whole stop, until then.
    stop_deadline: Option<Instant>,
}

/// A channel in confirm mode for re-queued requests, and its confirms.
struct Requeue {
    channel: Channel,
    confirms: Receiver<Confirm>,
    /// Messages published on it so far (the broker's sequence number of the last one).
    published: u64,
}

impl Conn<'_> {
    /// Publishes `body` with `properties` to `queue` (through the default exchange) on the
    /// re-queue channel and waits for the broker's confirm, each within the round-trip bound:
    /// `Ok(true)` once acked, `Ok(false)` if nacked.
    fn publish_confirmed(
        &mut self,
        queue: &str,
        body: &[u8],
        properties: amiquip::AmqpProperties,
    ) -> Result<bool, Error> {
        let limit = self.limit;
        if self.requeue.is_none() {
            let connection = &mut *self.connection;
            let requeue = self.watchdog.bounded(
                "to opening the channel for re-queued requests",
                limit,
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
        let Some(requeue) = self.requeue.as_mut() else {
            return Err(Error::ConsumerStopped(
                "no channel for re-queued requests".into(),
            ));
        };
        let channel = &requeue.channel;
        self.watchdog
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
                    self.watchdog.abandon(format!(
                        "no answer within {:.1}s to the re-queued request's confirm",
                        limit.as_secs_f64()
                    ));
                    return Err(lost(self.watchdog, "confirm timed out"));
                }
                // The channel or the connection went away: the channel's close says which.
                Err(RecvTimeoutError::Disconnected) => {
                    let closed = self.requeue.take().map(|r| r.channel.close());
                    return Err(match closed {
                        Some(Err(err)) => Error::broker("cannot re-queue a request")(err),
                        _ => lost(self.watchdog, "connection closed"),
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

    /// Runs `call`, one broker operation, within the round-trip bound (or, during the clean
    /// stop, within the stop's).
    fn call(
        &self,
        what: &'static str,
        doing: &str,
        call: impl FnOnce() -> Result<(), amiquip::Error>,
    ) -> Result<(), Error> {
        if self.stop_deadline.is_some() {
            return call().map_err(|e| stop_failed(self.watchdog, doing, e));
        }
        Ok(self.watchdog.bounded(what, self.limit, call)?)
    }

    /// Nothing more is owed for `delivery`: acks it now or later (see [`Acks::settled`]).
    fn settled(&mut self, delivery: Delivery) -> Result<(), Error> {
        let tag = delivery.delivery_tag();
        if let Some(delivery) = self.acks.settled(tag, delivery) {
            let channel = self.channel;
            self.call("to an ack", "cannot ack", || delivery.ack(channel))?;
        }
        Ok(())
    }

    /// Sends the `multiple` ack that is due, if one is (see [`Acks::due`]).
    fn flush(&mut self, more_waiting: bool) -> Result<(), Error> {
        if let Some(newest) = self.acks.due(more_waiting) {
            let channel = self.channel;
            self.call("to an ack", "cannot ack", || newest.ack_multiple(channel))?;
        }
        Ok(())
    }
}

/// The connection went away: abandoned by our watchdog (with its reason), or lost.
fn lost(watchdog: &Watchdog, what: &str) -> Error {
    match watchdog.fired() {
        Some(why) => rpc_client::Error::Stalled(why).into(),
        None => Error::ConsumerStopped(what.to_string()),
    }
}

/// A step of the clean stop failed: because the stop deadline passed, or for `err`.
fn stop_failed(watchdog: &Watchdog, doing: &str, err: amiquip::Error) -> Error {
    match watchdog.fired() {
        Some(why) => rpc_client::Error::Stalled(why).into(),
        None => Error::broker(doing)(err),
    }
}
