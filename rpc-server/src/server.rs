//! The consume loop: take a request, compute fib(n), publish the reply, then ack.
//!
//! Acking only after the reply is published means a server that dies mid-request loses
//! nothing: the broker redelivers the request to another server. A prefetch of 1 (the default)
//! hands each server one request at a time, so N servers share slow work evenly.

use crate::config::{QueueType, ServerOptions};
use crate::fib;
use amiquip::{
    AmqpValue, Channel, Connection, ConsumerMessage, ConsumerOptions, Delivery, FieldTable,
    Publish, QueueDeclareOptions,
};
use anyhow::{bail, Context as _};
use crossbeam_channel::{select, Receiver, RecvTimeoutError};
use rpc_client::wire::{self, ErrorCode};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Most answered requests acked with one `multiple` ack.
const ACK_BATCH: usize = 64;

/// Log target of the one line per request (` [.] fib(30)`), so it can be turned off alone:
/// at high request rates writing it is a large share of the server's own CPU time.
pub const REQUEST_LOG: &str = "rpc_server::request";

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
pub fn run(options: &ServerOptions, shutdown: Receiver<()>) -> anyhow::Result<Stats> {
    wire::parse_queue_name(&options.queue).map_err(anyhow::Error::msg)?;
    if options.brokers.is_empty() {
        bail!("no broker to connect to");
    }
    let mut stats = Stats::default();
    let mut failures: u32 = 0;
    let mut next_broker = 0;
    loop {
        let mut consumed = false;
        let err = match serve(
            options,
            &shutdown,
            &mut stats,
            &mut next_broker,
            &mut consumed,
        ) {
            Ok(()) => return Ok(stats),
            Err(err) => err,
        };
        if consumed {
            failures = 0; // the connection worked: start the backoff again from the bottom
        }
        failures += 1;
        if options.max_retries.is_some_and(|max| failures > max) {
            return Err(err);
        }
        let delay = backoff(failures, options.max_backoff);
        log::warn!(
            "{err:#}; reconnecting in {:.1}s (attempt {failures})",
            delay.as_secs_f64()
        );
        stats.reconnects += 1;
        match shutdown.recv_timeout(delay) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(stats),
        }
    }
}

/// 0.1 s doubled per consecutive failure, capped at `max`, with ±25% jitter so that many
/// servers losing one broker do not all come back in the same instant.
fn backoff(failures: u32, max: Duration) -> Duration {
    let base =
        Duration::from_millis(100).saturating_mul(1 << failures.clamp(1, 16).saturating_sub(1));
    let capped = base.min(max);
    let random = RandomState::new().build_hasher().finish();
    let factor = 0.75 + (random % 1000) as f64 / 2000.0;
    capped.mul_f64(factor)
}

/// One connection's worth of serving: returns `Ok` on shutdown, `Err` when the connection
/// could not be made or was lost. Tries the brokers from `next_broker` on, and leaves it at
/// the one after the broker it reached, so a lost connection moves on to the next node.
/// Sets `consumed` once it consumes the queue.
fn serve(
    options: &ServerOptions,
    shutdown: &Receiver<()>,
    stats: &mut Stats,
    next_broker: &mut usize,
    consumed: &mut bool,
) -> anyhow::Result<()> {
    let (mut connection, reached) =
        rpc_client::connection::connect_first(&options.brokers, *next_broker)?;
    *next_broker = reached + 1;
    let broker = &options.brokers[reached];
    let channel = connection.open_channel(None)?;
    ensure_queue(&mut connection, options)?;
    channel
        .qos(0, options.prefetch, false)
        .context("cannot set the prefetch")?;
    let consumer = channel
        .basic_consume(options.queue.as_str(), ConsumerOptions::default())
        .with_context(|| format!("cannot consume queue '{}'", options.queue))?;
    // amiquip's I/O thread treats a consumer whose receiver is gone as a fatal error, and it
    // sends ClientCancelled after the cancel call has already returned: keep a receiver alive
    // until the connection is closed.
    let deliveries = consumer.receiver().clone();
    *consumed = true;
    log::info!(
        "{} waiting for RPC requests on queue '{}' at {} (prefetch {}, max n {})",
        options.name,
        options.queue,
        broker,
        options.prefetch,
        options.max_n
    );
    // Answered requests not acked yet: while more requests wait in our buffer, acks are
    // sent for several at once (`multiple`), which saves the broker work at high rates.
    // With nothing waiting, or ACK_BATCH answered, the newest one is acked with all before it.
    let mut unacked: Option<Delivery> = None;
    let mut batch = 0;
    let flush = |unacked: &mut Option<Delivery>, batch: &mut usize| -> anyhow::Result<()> {
        *batch = 0;
        match unacked.take() {
            Some(delivery) => delivery.ack_multiple(&channel).context("cannot ack"),
            None => Ok(()),
        }
    };
    loop {
        select! {
            recv(deliveries) -> message => match message {
                Ok(ConsumerMessage::Delivery(delivery)) => {
                    // A stop request wins over requests already buffered here: those go back
                    // to the queue when the channel closes.
                    if !shutdown.is_empty() {
                        break;
                    }
                    unacked = Some(handle(&channel, delivery, options, stats)?);
                    batch += 1;
                    if batch >= ACK_BATCH || deliveries.is_empty() {
                        flush(&mut unacked, &mut batch)?;
                    }
                }
                Ok(ConsumerMessage::ServerCancelled) => bail!(
                    "the broker cancelled our consumer: was queue '{}' deleted?",
                    options.queue
                ),
                Ok(ConsumerMessage::ServerClosedChannel(err))
                | Ok(ConsumerMessage::ServerClosedConnection(err)) => {
                    return Err(err).context("the broker closed the connection");
                }
                Ok(other) => bail!("consumer stopped: {other:?}"),
                Err(_) => bail!("consumer stopped: connection closed"),
            },
            recv(shutdown) -> _ => break,
        }
    }
    flush(&mut unacked, &mut batch)?;
    log::info!(
        "shutting down: {} answered, {} refused, {} dropped, {} reconnects",
        stats.answered,
        stats.refused,
        stats.dropped,
        stats.reconnects
    );
    consumer.cancel().context("cannot cancel the consumer")?;
    drop(consumer);
    // Closing the channel returns prefetched, unacked requests to the queue.
    channel.close().context("cannot close the channel")?;
    connection.close().context("cannot close the connection")?;
    drop(deliveries);
    Ok(())
}

/// Uses the request queue if it exists, whatever its type; declares it otherwise.
///
/// Probing and declaring happen on a channel of their own, because a failed passive declare
/// (404) or a conflicting declare (406) closes the channel it was sent on.
fn ensure_queue(connection: &mut Connection, options: &ServerOptions) -> anyhow::Result<()> {
    let probe = connection.open_channel(None)?;
    match probe.queue_declare_passive(options.queue.as_str()) {
        Ok(queue) => {
            log::info!(
                "using existing queue '{}' ({} messages waiting, {} consumers)",
                options.queue,
                queue.declared_message_count().unwrap_or(0),
                queue.declared_consumer_count().unwrap_or(0)
            );
            drop(queue);
            probe.close()?;
            return Ok(());
        }
        Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {}
        Err(err) => {
            return Err(err).with_context(|| format!("cannot check queue '{}'", options.queue))
        }
    }
    let declare = connection.open_channel(None)?;
    let mut arguments = FieldTable::new();
    if options.queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".to_string(),
            AmqpValue::LongString("quorum".to_string()),
        );
    }
    let durable = options.durable || options.queue_type == QueueType::Quorum;
    let declared = declare.queue_declare(
        options.queue.as_str(),
        QueueDeclareOptions {
            durable,
            arguments,
            ..QueueDeclareOptions::default()
        },
    );
    match declared {
        Ok(queue) => {
            log::info!(
                "declared queue '{}' ({:?}, {})",
                options.queue,
                options.queue_type,
                if durable { "durable" } else { "transient" }
            );
            drop(queue);
            declare.close()?;
            Ok(())
        }
        // Another process declared it differently between our check and our declare.
        Err(amiquip::Error::ServerClosedChannel { code: 406, .. }) => {
            log::info!(
                "queue '{}' was just declared by someone else; using it",
                options.queue
            );
            Ok(())
        }
        Err(err) => Err(err).with_context(|| format!("cannot declare queue '{}'", options.queue)),
    }
}

/// Answers one request and returns it, to be acked by the caller. Only broker failures are
/// errors; bad input is answered.
fn handle(
    channel: &Channel,
    delivery: Delivery,
    options: &ServerOptions,
    stats: &mut Stats,
) -> anyhow::Result<Delivery> {
    if wire::deadline_passed(&delivery.properties) {
        // The caller has given up (this can be a redelivery after a server died): answering
        // would only cost work.
        log::info!("dropping a request whose caller's deadline has passed");
        stats.dropped += 1;
        return Ok(delivery);
    }
    let Some(reply_to) = delivery.properties.reply_to().clone() else {
        log::warn!(
            "dropping a request without reply_to ({} bytes)",
            delivery.body.len()
        );
        stats.dropped += 1;
        return Ok(delivery);
    };
    let (body, error) = match wire::parse_request(&delivery.body, options.max_n) {
        Ok(n) => {
            log::info!(target: REQUEST_LOG, " [.] fib({n})");
            match std::panic::catch_unwind(|| fib::fib_decimal(n)) {
                Ok(value) => (value.into_bytes(), None),
                Err(_) => (
                    format!("computing fib({n}) failed").into_bytes(),
                    Some(ErrorCode::Internal),
                ),
            }
        }
        Err(err) => {
            log::warn!("refusing request: {err}");
            (err.message.into_bytes(), Some(err.code))
        }
    };
    match error {
        None => stats.answered += 1,
        Some(_) => stats.refused += 1,
    }
    let properties = wire::reply_properties(
        delivery.properties.correlation_id().as_deref(),
        &options.name,
        error,
    );
    channel
        .basic_publish("", Publish::with_properties(&body, reply_to, properties))
        .context("cannot publish the reply")?;
    Ok(delivery)
}
