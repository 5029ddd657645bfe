//! Declaring and consuming queues: the client's callback queue, subscriptions whose receiver
//! can live beside its channel, and rpc-server's request queue checked and declared in our own
//! words ([`Queues`], [`QueueKind`], [`QueueState`]).

use super::error::LinkError;
use super::watchdog::Watchdog;
use amiquip::{
    AmqpValue, Channel, Connection, ConsumerMessage, ConsumerOptions, FieldTable,
    QueueDeclareOptions,
};
use crossbeam_channel::Receiver;
use std::time::Duration;

/// Declares a callback queue (exclusive, auto-delete, named by the broker) and consumes it
/// without acks; returns its name and the receiver of the replies that arrive on it.
pub fn callback_queue(
    channel: &Channel,
) -> Result<(String, Receiver<ConsumerMessage>), amiquip::Error> {
    let name = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        )?
        .name()
        .to_string();
    let replies = consume(
        channel,
        &name,
        ConsumerOptions {
            no_ack: true,
            exclusive: true,
            ..ConsumerOptions::default()
        },
    )?;
    Ok((name, replies))
}

/// Starts consuming `queue` on `channel` and returns the receiver of its messages.
///
/// amiquip's `Consumer` borrows its channel and cancels itself when dropped, and amiquip's I/O
/// thread treats a consumer whose receiver is gone as a fatal connection error (it can still be
/// delivering, or sending `ClientCancelled`, after a cancel returns). So instead of a
/// `Consumer`, callers get a receiver they can keep next to the channel in one struct; the
/// subscription ends when the channel or connection closes. What stays allocated is the
/// consumer tag and a receiver handle, once per call of this function.
pub fn consume(
    channel: &Channel,
    queue: &str,
    options: ConsumerOptions,
) -> Result<Receiver<ConsumerMessage>, amiquip::Error> {
    let consumer = channel.basic_consume(queue, options)?;
    let receiver = consumer.receiver().clone();
    std::mem::forget(consumer);
    Ok(receiver)
}

/// How a queue is declared: durable or not, classic or quorum. For `rpc-server` and the test
/// support: no stability promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueKind {
    /// Survives a broker restart.
    pub durable: bool,
    /// A quorum queue (`x-queue-type: quorum`), else a classic one.
    pub quorum: bool,
}

/// What the broker said of a queue it found or declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready.
    pub messages: u32,
    /// Its consumers.
    pub consumers: u32,
}

/// The AMQP library's declare options for a queue of `kind`: the one place that writes the
/// quorum argument.
pub fn queue_options(kind: QueueKind) -> QueueDeclareOptions {
    let mut arguments = FieldTable::new();
    if kind.quorum {
        arguments.insert(
            "x-queue-type".to_string(),
            AmqpValue::LongString("quorum".to_string()),
        );
    }
    QueueDeclareOptions {
        durable: kind.durable,
        arguments,
        ..QueueDeclareOptions::default()
    }
}

/// Checks and declares queues on `connection`, each on a channel of its own (a failed passive
/// declare, 404, or a conflicting declare, 406, closes the channel it was sent on), each round
/// trip bounded by `watchdog` to `limit`. The broker's refusals come back as
/// [`AmqpError::ChannelClosed`](super::AmqpError::ChannelClosed) (in [`LinkError::Amqp`]) with their code, for the caller to decide. For `rpc-server`:
/// no stability promise.
pub struct Queues<'a> {
    connection: &'a mut Connection,
    watchdog: &'a Watchdog,
    limit: Duration,
}

impl<'a> Queues<'a> {
    /// Queues of `connection`, whose round trips `watchdog` bounds to `limit` each.
    pub fn new(connection: &'a mut Connection, watchdog: &'a Watchdog, limit: Duration) -> Self {
        Queues {
            connection,
            watchdog,
            limit,
        }
    }

    /// `queue`'s state if it exists (a passive declare); a missing queue is
    /// `ChannelClosed` with code 404.
    pub fn check(&mut self, queue: &str) -> Result<QueueState, LinkError> {
        self.on_own_channel("to the request queue's check", |channel| {
            channel.queue_declare_passive(queue)
        })
    }

    /// Declares `queue` as `kind`; one declared otherwise already is `ChannelClosed` with
    /// code 406.
    pub fn declare(&mut self, queue: &str, kind: QueueKind) -> Result<QueueState, LinkError> {
        self.on_own_channel("to the request queue's declare", |channel| {
            channel.queue_declare(queue, queue_options(kind))
        })
    }

    /// Opens a channel, runs `declare` on it (bounded as `what`) and closes it.
    fn on_own_channel(
        &mut self,
        what: &'static str,
        declare: impl FnOnce(&Channel) -> Result<amiquip::Queue<'_>, amiquip::Error>,
    ) -> Result<QueueState, LinkError> {
        let (watchdog, limit) = (self.watchdog, self.limit);
        let connection = &mut *self.connection;
        let channel =
            watchdog.bounded("to a channel open", limit, || connection.open_channel(None))?;
        let state = watchdog.bounded(what, limit, || {
            declare(&channel).map(|queue| QueueState {
                messages: queue.declared_message_count().unwrap_or(0),
                consumers: queue.declared_consumer_count().unwrap_or(0),
            })
        })?;
        watchdog.bounded("to a channel close", limit, || channel.close())?;
        Ok(state)
    }
}
