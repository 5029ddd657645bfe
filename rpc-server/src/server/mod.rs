//! The consume loop ([`serve`], and [`run`] for Fibonacci): take a request, have a worker
//! compute the reply, publish it, ack the request once the broker confirms the reply; after a
//! lost connection, reconnect and start over.
//!
//! Acking only after the reply is confirmed means that neither a server that dies mid-request
//! nor a broker that refuses or loses a reply loses the request: the broker delivers it again
//! (see [`crate::server::ack`] and [`crate::server::confirms`]). A prefetch of 1 (the default)
//! hands each server one request at a time, so N servers share slow work evenly; with
//! `workers` N the prefetch is at least N, and each request is acked after its own reply.
//!
//! A request that comes back (`redelivered`: its server died or lost it) is not handled as
//! it comes: it is re-published with its count of deliveries and acked, or, at the limit,
//! answered with a `redelivered` error reply (see [`crate::server::redelivery`]), so that a request
//! that kills its server every time stops after a few, on every queue type.
//!
//! The parts: here, the server across connections (connecting, consuming, the clean stop,
//! reconnecting); `serving`, one connection's serving (admit a request, reply, ack, the
//! confirms); `owed`, its bookkeeping, and `rules`, its decisions, both without a broker;
//! `requeue`, re-queuing a request that came back.

mod ack;
mod confirms;
mod owed;
mod queue;
pub(crate) mod redelivery;
mod requeue;
mod rules;
mod serving;
pub(crate) mod workers;

use crate::error::Error;
use crate::handler::{Fibonacci, Handler};
use crate::metrics::Meter;
use crate::options::{QueueType, ServerOptions};
use crate::server::confirms::BrokerConfirm;
use crate::server::queue::ensure_queue;
use crate::server::redelivery::Redeliveries;
use crate::server::workers::{Delivered, Workers};
use amiquip::{
    Channel, Confirm, ConnectionBlockedNotification, ConsumerMessage, ConsumerOptions, Delivery,
};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rpc_client::amqp::{consume, open_first, Link, LinkError, Queues, Reconnect, Watchdog};
use rpc_client::{wire, Properties};
use serving::{Handles, Serving};
use std::sync::Arc;
use std::time::Duration;

/// Counts of what a server did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered with a result: published, or with
    /// [`ServerOptions::confirm_replies`] confirmed by the broker.
    pub answered: u64,
    /// Requests answered with an error reply (published, or confirmed likewise).
    pub refused: u64,
    /// Requests refused without a reply, acked: their callers did not ask for error replies
    /// (see [`rpc_client::wire::takes_error_replies`]).
    pub unanswered: u64,
    /// With [`ServerOptions::confirm_replies`]: replies the broker refused (nacked), or that
    /// were not confirmed before the connection closed.
    pub unconfirmed: u64,
    /// Requests without `reply_to`, or whose caller's deadline had passed: acked, not answered.
    pub dropped: u64,
    /// Requests whose caller's deadline passed while they were handled: the work was ended,
    /// the request acked, not answered.
    pub abandoned: u64,
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
    let workers = Workers::start(handler, options.workers, options.start_traces)
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
        server.lost(&err);
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
    workers: Workers<Delivery>,
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

/// What consuming on a connection set up.
struct Subscription {
    /// The connection's blocked and unblocked notifications.
    blocked: Receiver<ConnectionBlockedNotification>,
    /// The channel requests come on and replies go out on.
    channel: Channel,
    /// Its publisher confirms (with `confirm_replies`; else a channel that never delivers).
    confirms: Receiver<Confirm>,
    /// The requests.
    deliveries: Receiver<ConsumerMessage>,
    /// The prefetch set.
    prefetch: u16,
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
            return Err(LinkError::Stalled(why).into());
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
        let Subscription {
            blocked,
            channel,
            confirms,
            deliveries,
            prefetch,
        } = subscribe(link, options, limit)?;
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
        let Link {
            connection,
            watchdog,
        } = link;
        let handles = Handles {
            watchdog,
            channel: &channel,
            confirms: &confirms,
            connection,
            login: &options.brokers[reached].user,
            limit,
        };
        let mut session = Serving::new(self, handles, usize::from(prefetch));
        let served = session.consume(&deliveries, blocked);
        if served.is_err() {
            // Lost with the connection: the broker delivers their requests again.
            session.count_unconfirmed();
        }
        served?;
        session.stop()?;
        // Closing the channel returns prefetched, unacked requests to the queue.
        channel
            .close()
            .map_err(|e| stop_failed(watchdog, "cannot close the channel", e))
    }

    /// What follows the loss of a connection (or a failed attempt) `err`, before trying again.
    fn lost(&mut self, err: &Error) {
        let consumer_timeout = err.consumer_timeout();
        if !err.channel_closed() && consumer_timeout.is_none() {
            // Lost with the connection (a node down, a cut link): not the requests' doing.
            self.redeliveries.forget_started();
        }
        if let Some(words) = consumer_timeout {
            let knob = if self.long_calls {
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
}

/// Sets up consuming the request queue on `link`, each step within `limit`: the blocked
/// notifications, a channel (with publisher confirms if `options.confirm_replies`), the queue
/// (declared if missing), the prefetch, the consumer.
fn subscribe(
    link: &mut Link,
    options: &ServerOptions,
    limit: Duration,
) -> Result<Subscription, Error> {
    let Link {
        connection,
        watchdog,
    } = link;
    let blocked = watchdog.bounded("to the blocked-notification listener", limit, || {
        connection.listen_for_connection_blocked()
    })?;
    let channel = watchdog.bounded("to a channel open", limit, || connection.open_channel(None))?;
    // With confirm_replies, requests are acked once their replies are confirmed (see
    // crate::server::ack, crate::server::confirms); without, once they are published.
    let confirms = if options.confirm_replies {
        watchdog.bounded("to enabling publisher confirms", limit, || {
            let confirms = channel.listen_for_publisher_confirms()?;
            channel.enable_publisher_confirms()?;
            Ok::<_, amiquip::Error>(confirms)
        })?
    } else {
        crossbeam_channel::never()
    };
    ensure_queue(&mut Queues::new(connection, watchdog, limit), options)?;
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
    Ok(Subscription {
        blocked,
        channel,
        confirms,
        deliveries,
        prefetch,
    })
}

/// The connection went away: abandoned by our watchdog (with its reason), or lost.
fn lost(watchdog: &Watchdog, what: &str) -> Error {
    match watchdog.fired() {
        Some(why) => LinkError::Stalled(why).into(),
        None => Error::ConsumerStopped(what.to_string()),
    }
}

/// A step of the clean stop failed: because the stop deadline passed, or for `err`.
fn stop_failed(watchdog: &Watchdog, doing: &str, err: amiquip::Error) -> Error {
    match watchdog.fired() {
        Some(why) => LinkError::Stalled(why).into(),
        None => Error::broker(doing)(err),
    }
}

/// The AMQP library's publisher confirm in our own terms, for the
/// bookkeeping and the re-queue channel.
pub(super) fn broker_confirm(confirm: Confirm) -> BrokerConfirm {
    let (payload, accepted) = match confirm {
        Confirm::Ack(payload) => (payload, true),
        Confirm::Nack(payload) => (payload, false),
    };
    BrokerConfirm {
        sequence: payload.delivery_tag,
        multiple: payload.multiple,
        accepted,
    }
}

/// The AMQP library's delivery, as the workers see it: its body, and its properties as ours.
impl Delivered for Delivery {
    fn lend<R>(&mut self, f: impl FnOnce(&[u8], &Properties) -> R) -> R {
        let body = &self.body;
        Properties::lend(&mut self.properties, |properties| f(body, properties))
    }
}

/// The AMQP library's errors, as the sessions get them: the server's errors through the link's
/// (the one conversion, [`LinkError`]'s). Not part of the documented API.
#[doc(hidden)]
impl From<amiquip::Error> for Error {
    fn from(err: amiquip::Error) -> Self {
        LinkError::from(err).into()
    }
}
