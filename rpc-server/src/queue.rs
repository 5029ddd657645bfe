//! Making sure the request queue exists ([`ensure_queue`]).

use crate::error::Error;
use crate::options::{QueueType, ServerOptions};
use amiquip::{AmqpValue, Connection, FieldTable, QueueDeclareOptions};

/// Uses the request queue if it exists, whatever its type; declares it otherwise.
///
/// An existing queue is used as it is: tutorial servers of other languages declare it classic
/// or quorum, and all of them share one queue. Probing and declaring happen on channels of
/// their own, because a failed passive declare (404) or a conflicting declare (406) closes the
/// channel it was sent on.
pub fn ensure_queue(connection: &mut Connection, options: &ServerOptions) -> Result<(), Error> {
    let queue = options.queue.as_str();
    let probe = connection
        .open_channel(None)
        .map_err(Error::broker("cannot open a channel"))?;
    match probe.queue_declare_passive(queue) {
        Ok(declared) => {
            log::info!(
                "using existing queue '{queue}' ({} messages waiting, {} consumers)",
                declared.declared_message_count().unwrap_or(0),
                declared.declared_consumer_count().unwrap_or(0)
            );
            drop(declared);
            probe
                .close()
                .map_err(Error::broker("cannot close the probe channel"))?;
            return Ok(());
        }
        Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {}
        Err(err) => return Err(Error::broker(format!("cannot check queue '{queue}'"))(err)),
    }
    let declare = connection
        .open_channel(None)
        .map_err(Error::broker("cannot open a channel"))?;
    let mut arguments = FieldTable::new();
    if options.queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".to_string(),
            AmqpValue::LongString("quorum".to_string()),
        );
    }
    let durable = options.durable || options.queue_type == QueueType::Quorum;
    let declared = declare.queue_declare(
        queue,
        QueueDeclareOptions {
            durable,
            arguments,
            ..QueueDeclareOptions::default()
        },
    );
    match declared {
        Ok(declared) => {
            log::info!(
                "declared queue '{queue}' ({:?}, {})",
                options.queue_type,
                if durable { "durable" } else { "transient" }
            );
            drop(declared);
            declare
                .close()
                .map_err(Error::broker("cannot close the declare channel"))
        }
        // Another process declared it differently between our check and our declare.
        Err(amiquip::Error::ServerClosedChannel { code: 406, .. }) => {
            log::info!("queue '{queue}' was just declared by someone else; using it");
            Ok(())
        }
        Err(err) => Err(Error::broker(format!("cannot declare queue '{queue}'"))(
            err,
        )),
    }
}
