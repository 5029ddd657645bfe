//! Making sure the request queue exists ([`ensure_queue`]).

use crate::error::Error;
use crate::options::{QueueType, ServerOptions};
use rpc_client::amqp::{LinkError, QueueKind, Queues};
use rpc_client::wire;
use rpc_client::AmqpError;

/// Uses the request queue if it exists, whatever its type; declares it otherwise.
///
/// An existing queue is used as it is: tutorial servers of other languages declare it classic
/// or quorum, and all of them share one queue. Probing and declaring happen on channels of
/// their own (see [`Queues`]), each round trip bounded.
pub(crate) fn ensure_queue(queues: &mut Queues<'_>, options: &ServerOptions) -> Result<(), Error> {
    let queue = options.queue.as_str();
    // For messages: the name as given may hold control characters.
    let shown = wire::printable(queue);
    match queues.check(queue).map_err(Error::from) {
        Ok(found) => {
            log::info!(
                "using existing queue '{shown}' ({} messages waiting, {} consumers)",
                found.messages,
                found.consumers
            );
            return Ok(());
        }
        Err(Error::Connection(LinkError::Amqp(AmqpError::ChannelClosed { code: 404, .. }))) => {}
        Err(err) => return Err(err.context(format!("cannot check queue '{shown}'"))),
    }
    let kind = QueueKind {
        durable: !options.transient,
        quorum: options.queue_type == QueueType::Quorum,
    };
    match queues.declare(queue, kind).map_err(Error::from) {
        Ok(_) => {
            log::info!(
                "declared queue '{shown}' ({:?}, {})",
                options.queue_type,
                if kind.durable { "durable" } else { "transient" }
            );
            Ok(())
        }
        // Another process declared it differently between our check and our declare.
        Err(Error::Connection(LinkError::Amqp(AmqpError::ChannelClosed { code: 406, .. }))) => {
            log::info!("queue '{shown}' was just declared by someone else; using it");
            Ok(())
        }
        Err(err) => Err(err.context(format!("cannot declare queue '{shown}'"))),
    }
}
