//! Making sure the request queue exists ([`ensure_queue`]).

use crate::error::Error;
use crate::options::{QueueType, ServerOptions};
use amiquip::{AmqpValue, Connection, FieldTable, QueueDeclareOptions};
use rpc_client::amqp::{LinkError, Watchdog};
use rpc_client::wire;
use std::time::Duration;

/// Uses the request queue if it exists, whatever its type; declares it otherwise.
///
/// An existing queue is used as it is: tutorial servers of other languages declare it classic
/// or quorum, and all of them share one queue. Probing and declaring happen on channels of
/// their own, because a failed passive declare (404) or a conflicting declare (406) closes the
/// channel it was sent on. Each round trip waits at most `limit`.
pub(crate) fn ensure_queue(
    connection: &mut Connection,
    watchdog: &Watchdog,
    options: &ServerOptions,
    limit: Duration,
) -> Result<(), Error> {
    let queue = options.queue.as_str();
    // For messages: the name as given may hold control characters.
    let shown = wire::printable(queue);
    let probe = watchdog.bounded("to a channel open", limit, || connection.open_channel(None))?;
    let checked = watchdog.bounded("to the request queue's check", limit, || {
        probe.queue_declare_passive(queue)
    });
    match checked.map_err(Error::from) {
        Ok(declared) => {
            log::info!(
                "using existing queue '{shown}' ({} messages waiting, {} consumers)",
                declared.declared_message_count().unwrap_or(0),
                declared.declared_consumer_count().unwrap_or(0)
            );
            drop(declared);
            watchdog.bounded("to a channel close", limit, || probe.close())?;
            return Ok(());
        }
        Err(Error::Connection(LinkError::ChannelClosed { code: 404, .. })) => {}
        Err(err) => return Err(err.context(format!("cannot check queue '{shown}'"))),
    }
    let declare = watchdog.bounded("to a channel open", limit, || connection.open_channel(None))?;
    let mut arguments = FieldTable::new();
    if options.queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".to_string(),
            AmqpValue::LongString("quorum".to_string()),
        );
    }
    let durable = !options.transient;
    let declared = watchdog.bounded("to the request queue's declare", limit, || {
        declare.queue_declare(
            queue,
            QueueDeclareOptions {
                durable,
                arguments,
                ..QueueDeclareOptions::default()
            },
        )
    });
    match declared.map_err(Error::from) {
        Ok(declared) => {
            log::info!(
                "declared queue '{shown}' ({:?}, {})",
                options.queue_type,
                if durable { "durable" } else { "transient" }
            );
            drop(declared);
            watchdog.bounded("to a channel close", limit, || declare.close())?;
            Ok(())
        }
        // Another process declared it differently between our check and our declare.
        Err(Error::Connection(LinkError::ChannelClosed { code: 406, .. })) => {
            log::info!("queue '{shown}' was just declared by someone else; using it");
            Ok(())
        }
        Err(err) => Err(err.context(format!("cannot declare queue '{shown}'"))),
    }
}
