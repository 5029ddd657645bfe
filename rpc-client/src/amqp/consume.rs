//! Consuming queues: the client's callback queue, and subscriptions whose receiver can live
//! beside its channel.

use amiquip::{Channel, ConsumerMessage, ConsumerOptions, QueueDeclareOptions};
use crossbeam_channel::Receiver;

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
