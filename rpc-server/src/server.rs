//! The consume loop ([`run`]): take a request, compute the reply, publish it, then ack; after a
//! lost connection, reconnect and start over.
//!
//! Acking only after the reply is published means a server that dies mid-request loses
//! nothing: the broker redelivers the request to another server. A prefetch of 1 (the default)
//! hands each server one request at a time, so N servers share slow work evenly.

use crate::ack::AckBatch;
use crate::error::Error;
use crate::handler::fib_reply;
use crate::options::ServerOptions;
use crate::queue::ensure_queue;
use crate::reconnect::Reconnect;
use amiquip::{Channel, ConsumerMessage, ConsumerOptions, Delivery, Publish};
use crossbeam_channel::{select, Receiver, RecvTimeoutError};
use rpc_client::connection::connect_first;
use rpc_client::wire;

/// Most answered requests acked with one `multiple` ack.
const ACK_BATCH: usize = 64;

/// Counts of what a server did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered with a result.
    pub answered: u64,
    /// Requests answered with an error reply.
    pub refused: u64,
    /// Requests without `reply_to`, or whose caller's deadline had passed: acked, not answered.
    pub dropped: u64,
    /// Times the server lost its connection (or could not connect) and tried again.
    pub reconnects: u64,
}

/// Serves requests until `shutdown` receives a message or its sender is dropped.
///
/// Connects, makes sure the request queue exists (an existing one is used as declared, a
/// missing one is declared from `options`), sets the prefetch and consumes. When the connection
/// fails or is lost it reconnects with capped exponential backoff and starts over, until
/// `options.max_retries` consecutive failures (never, if `None`); it returns the last error
/// then. On shutdown it finishes the request in hand, cancels the consumer and closes the
/// channel, which returns prefetched requests it had not started to the queue.
pub fn run(options: &ServerOptions, shutdown: Receiver<()>) -> Result<Stats, Error> {
    wire::parse_queue_name(&options.queue).map_err(Error::Config)?;
    if options.brokers.is_empty() {
        return Err(Error::Config("no broker to connect to".into()));
    }
    let mut server = Server {
        options,
        shutdown,
        stats: Stats::default(),
        reconnect: Reconnect::new(options.max_retries, options.max_backoff),
        next_broker: 0,
    };
    loop {
        let err = match server.serve() {
            Ok(()) => return Ok(server.stats),
            Err(err) => err,
        };
        let Some(delay) = server.reconnect.failed() else {
            return Err(err);
        };
        log::warn!(
            "{err}; reconnecting in {:.1}s (attempt {})",
            delay.as_secs_f64(),
            server.reconnect.failures()
        );
        server.stats.reconnects += 1;
        match server.shutdown.recv_timeout(delay) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(server.stats),
        }
    }
}

/// A server between connections: what it was told and what it has done so far.
struct Server<'a> {
    options: &'a ServerOptions,
    shutdown: Receiver<()>,
    stats: Stats,
    reconnect: Reconnect,
    /// The broker to try first on the next connection: the one after the last one reached,
    /// so that a lost connection moves on to the next node.
    next_broker: usize,
}

impl Server<'_> {
    /// One connection's worth of serving: `Ok` on shutdown, `Err` when the connection could
    /// not be made or was lost.
    fn serve(&mut self) -> Result<(), Error> {
        let options = self.options;
        let (mut connection, reached) = connect_first(&options.brokers, self.next_broker)?;
        self.next_broker = reached + 1;
        let channel = connection
            .open_channel(None)
            .map_err(Error::broker("cannot open a channel"))?;
        ensure_queue(&mut connection, options)?;
        channel
            .qos(0, options.prefetch, false)
            .map_err(Error::broker("cannot set the prefetch"))?;
        let consumer = channel
            .basic_consume(options.queue.as_str(), ConsumerOptions::default())
            .map_err(Error::broker(format!(
                "cannot consume queue '{}'",
                options.queue
            )))?;
        // amiquip's I/O thread treats a consumer whose receiver is gone as a fatal error, and
        // it sends ClientCancelled after the cancel call has already returned: keep a receiver
        // alive until the connection is closed.
        let deliveries = consumer.receiver().clone();
        self.reconnect.succeeded();
        log::info!(
            "{} waiting for RPC requests on queue '{}' at {} (prefetch {}, max n {})",
            options.name,
            options.queue,
            options.brokers[reached],
            options.prefetch,
            options.max_n
        );
        let mut acks = AckBatch::new(ACK_BATCH);
        loop {
            select! {
                recv(deliveries) -> message => match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => {
                        // A stop request wins over requests already buffered here: those go
                        // back to the queue when the channel closes.
                        if !self.shutdown.is_empty() {
                            break;
                        }
                        let delivery = self.handle(&channel, delivery)?;
                        if let Some(newest) = acks.answered(delivery, !deliveries.is_empty()) {
                            ack(&channel, newest)?;
                        }
                    }
                    Ok(ConsumerMessage::ServerCancelled) => {
                        return Err(Error::ConsumerStopped(format!(
                            "the broker cancelled our consumer: was queue '{}' deleted?",
                            options.queue
                        )))
                    }
                    Ok(ConsumerMessage::ServerClosedChannel(err))
                    | Ok(ConsumerMessage::ServerClosedConnection(err)) => {
                        return Err(Error::broker("the broker closed the connection")(err));
                    }
                    Ok(other) => return Err(Error::ConsumerStopped(format!("{other:?}"))),
                    Err(_) => return Err(Error::ConsumerStopped("connection closed".into())),
                },
                recv(self.shutdown) -> _ => break,
            }
        }
        if let Some(newest) = acks.take() {
            ack(&channel, newest)?;
        }
        let stats = self.stats;
        log::info!(
            "shutting down: {} answered, {} refused, {} dropped, {} reconnects",
            stats.answered,
            stats.refused,
            stats.dropped,
            stats.reconnects
        );
        consumer
            .cancel()
            .map_err(Error::broker("cannot cancel the consumer"))?;
        drop(consumer);
        // Closing the channel returns prefetched, unacked requests to the queue.
        channel
            .close()
            .map_err(Error::broker("cannot close the channel"))?;
        connection
            .close()
            .map_err(Error::broker("cannot close the connection"))?;
        drop(deliveries);
        Ok(())
    }

    /// Answers one request and returns it, to be acked. Only broker failures are errors; bad
    /// input is answered.
    fn handle(&mut self, channel: &Channel, delivery: Delivery) -> Result<Delivery, Error> {
        if wire::deadline_passed(&delivery.properties) {
            // The caller has given up (this can be a redelivery after a server died):
            // answering would only cost work.
            log::info!("dropping a request whose caller's deadline has passed");
            self.stats.dropped += 1;
            return Ok(delivery);
        }
        let Some(reply_to) = delivery.properties.reply_to().clone() else {
            log::warn!(
                "dropping a request without reply_to ({} bytes)",
                delivery.body.len()
            );
            self.stats.dropped += 1;
            return Ok(delivery);
        };
        let (body, error) = fib_reply(&delivery.body, self.options.max_n);
        match error {
            None => self.stats.answered += 1,
            Some(_) => self.stats.refused += 1,
        }
        let properties = wire::reply_properties(
            delivery.properties.correlation_id().as_deref(),
            &self.options.name,
            error,
        );
        channel
            .basic_publish("", Publish::with_properties(&body, reply_to, properties))
            .map_err(Error::broker("cannot publish the reply"))?;
        Ok(delivery)
    }
}

/// Acks `newest` and every unacked request before it.
fn ack(channel: &Channel, newest: Delivery) -> Result<(), Error> {
    newest
        .ack_multiple(channel)
        .map_err(Error::broker("cannot ack"))
}
