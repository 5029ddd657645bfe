//! Helpers for tests against a real broker (feature `test-support`; not for production use).
//!
//! Tests use their own uuid-named queues ([`unique_name`]) so they can run in parallel, delete
//! them when done ([`QueueGuard`]) and poll conditions with a deadline ([`wait_until`])
//! instead of sleeping.

use crate::connection;
use crate::error::Error;
use crate::uri::BrokerOptions;
use amiquip::{
    AmqpProperties, AmqpValue, Channel, Connection, FieldTable, Publish, QueueDeclareOptions,
    QueueDeleteOptions,
};
use std::time::{Duration, Instant};

/// The test broker: `AMQP_URI` if set, else `amqp://guest:guest@127.0.0.1:5672`.
pub fn broker() -> BrokerOptions {
    let options = match std::env::var("AMQP_URI") {
        Ok(uri) => BrokerOptions::from_uri(&uri).unwrap_or_else(|e| panic!("AMQP_URI: {e:#}")),
        Err(_) => BrokerOptions {
            host: "127.0.0.1".into(),
            ..BrokerOptions::default()
        },
    };
    BrokerOptions {
        connect_timeout: Duration::from_secs(5),
        ..options
    }
}

/// `prefix-<uuid>`: a queue name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// Polls `condition` every 20 ms until it holds; fails with `what` after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Result<bool, Error>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match condition() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(err) => return Err(format!("while waiting for {what}: {err}")),
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain connection for arranging and inspecting broker state in tests.
pub struct Admin {
    // Field order is drop order: the channel closes before its connection.
    channel: Channel,
    connection: Connection,
}

impl Admin {
    /// Connects to [`broker`].
    pub fn connect() -> Result<Admin, Error> {
        Admin::connect_to(&[broker()])
    }

    /// Connects to the first of `brokers` that answers (the nodes of a cluster).
    pub fn connect_to(brokers: &[BrokerOptions]) -> Result<Admin, Error> {
        let (mut connection, _) = connection::connect_first(brokers, 0)?;
        let channel = connection.open_channel(None)?;
        Ok(Admin {
            channel,
            connection,
        })
    }

    /// The admin channel, for publishing and consuming directly.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Declares `queue` durable: classic (rpc-server's default), or quorum.
    pub fn declare(&self, queue: &str, quorum: bool) -> Result<(), Error> {
        let mut arguments = FieldTable::new();
        if quorum {
            arguments.insert(
                "x-queue-type".into(),
                AmqpValue::LongString("quorum".into()),
            );
        }
        self.channel.queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                arguments,
                ..QueueDeclareOptions::default()
            },
        )?;
        Ok(())
    }

    /// `(messages ready, consumers)` of `queue`, or `None` if it does not exist.
    pub fn queue_state(&mut self, queue: &str) -> Result<Option<(u32, u32)>, Error> {
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let probe = self.connection.open_channel(None)?;
        match probe.queue_declare_passive(queue) {
            Ok(q) => Ok(Some((
                q.declared_message_count().unwrap_or(0),
                q.declared_consumer_count().unwrap_or(0),
            ))),
            Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Waits until `queue` has exactly `consumers` consumers.
    pub fn wait_for_consumers(&mut self, queue: &str, consumers: u32) -> Result<(), String> {
        wait_until(
            &format!("{consumers} consumer(s) on '{queue}'"),
            Duration::from_secs(20),
            || Ok(self.queue_state(queue)?.map(|(_, c)| c) == Some(consumers)),
        )
    }

    /// Waits until `queue` holds no ready messages.
    pub fn wait_for_empty(&mut self, queue: &str) -> Result<(), String> {
        wait_until(
            &format!("queue '{queue}' to be empty"),
            Duration::from_secs(20),
            || Ok(self.queue_state(queue)?.map(|(m, _)| m) == Some(0)),
        )
    }

    /// Publishes `body` to `routing_key` on the default exchange.
    pub fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), Error> {
        self.channel
            .basic_publish("", Publish::with_properties(body, routing_key, properties))?;
        Ok(())
    }

    /// Deletes `queue` (whatever it holds); a missing queue is fine.
    pub fn delete(&mut self, queue: &str) -> Result<(), Error> {
        let channel = self.connection.open_channel(None)?;
        channel.queue_delete(queue, QueueDeleteOptions::default())?;
        Ok(())
    }
}

/// Deletes its queue when dropped, so a failing test still cleans up.
pub struct QueueGuard {
    name: String,
    brokers: Vec<BrokerOptions>,
}

impl QueueGuard {
    /// A fresh [`unique_name`] queue name on [`broker`], deleted on drop.
    pub fn new(prefix: &str) -> QueueGuard {
        QueueGuard::on(vec![broker()], prefix)
    }

    /// A fresh [`unique_name`] queue name, deleted through the first of `brokers` that answers.
    pub fn on(brokers: Vec<BrokerOptions>, prefix: &str) -> QueueGuard {
        QueueGuard {
            name: unique_name(prefix),
            brokers,
        }
    }

    /// The queue name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the queue now, reporting failure; nothing is left for drop.
    pub fn delete(&mut self) -> Result<(), Error> {
        Admin::connect_to(&self.brokers)?.delete(&self.name)?;
        self.brokers.clear();
        Ok(())
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        if !self.brokers.is_empty() {
            if let Err(err) = self.delete() {
                eprintln!("cannot delete test queue '{}': {err}", self.name);
            }
        }
    }
}
