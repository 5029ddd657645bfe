//! [`FibonacciRpcClient`]: calls fib(n) on whichever rpc-server consumes the request queue.
//!
//! One connection, one channel and one exclusive, auto-delete, server-named callback queue per
//! client (not per call). Each call publishes a request with a fresh uuid v4 `correlation_id`
//! and waits, up to the timeout, for the reply carrying that id. Replies with any other id (a
//! late reply to a call that timed out, a second reply after a server crashed between replying
//! and acking, someone else's message) are discarded.

use crate::config::BrokerOptions;
use crate::connection;
use crate::error::Error;
use crate::wire;
use amiquip::{
    Channel, Connection, ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions, Return,
};
use crossbeam_channel::{select, Receiver};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What a client needs to know: the broker, the request queue and how long to wait.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Where the broker is.
    pub broker: BrokerOptions,
    /// The request queue servers consume (`rpc_queue`).
    pub queue: String,
    /// How long one call waits for its reply.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    /// Local broker, `rpc_queue`, 30 s timeout.
    fn default() -> Self {
        ClientOptions {
            broker: BrokerOptions::default(),
            queue: wire::DEFAULT_QUEUE.to_string(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// fib(n) in decimal.
    pub value: String,
    /// The `x-rpc-server` header, if the server sent one (ours do; tutorial servers don't).
    pub server: Option<String>,
}

/// A connection to the broker that can call fib(n) remotely, one call at a time.
pub struct FibonacciRpcClient {
    // Field order is drop order: the channel closes before its connection.
    channel: Channel,
    connection: Connection,
    replies: Receiver<ConsumerMessage>,
    returns: Receiver<Return>,
    reply_queue: String,
    queue: String,
    timeout: Duration,
}

impl FibonacciRpcClient {
    /// Connects, declares the callback queue and starts consuming it.
    pub fn connect(options: &ClientOptions) -> Result<FibonacciRpcClient, Error> {
        let mut connection = connection::connect(&options.broker)?;
        let channel = connection.open_channel(None)?;
        let (reply_queue, replies) = {
            let queue = channel.queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
            )?;
            let replies = connection::consume(
                &channel,
                queue.name(),
                ConsumerOptions {
                    no_ack: true,
                    exclusive: true,
                    ..ConsumerOptions::default()
                },
            )?;
            (queue.name().to_string(), replies)
        };
        // Requests are published mandatory: the broker returns them at once when no queue of
        // that name exists, instead of dropping them while we wait out the timeout.
        let returns = channel.listen_for_returns()?;
        log::debug!("callback queue {reply_queue}");
        Ok(FibonacciRpcClient {
            channel,
            connection,
            replies,
            returns,
            reply_queue,
            queue: options.queue.clone(),
            timeout: options.timeout,
        })
    }

    /// Calls fib(`n`) and returns it in decimal.
    pub fn call(&mut self, n: u64) -> Result<String, Error> {
        self.call_reply(n).map(|reply| reply.value)
    }

    /// Calls fib(`n`) and returns the reply with the name of the server that answered.
    ///
    /// Ends within the timeout with the result, the server's error reply, or a local error:
    /// [`Error::NoRoute`] at once if the request queue does not exist, [`Error::Timeout`]
    /// (saying whether the queue has consumers), or a connection error.
    pub fn call_reply(&mut self, n: u64) -> Result<Reply, Error> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let correlation_id = Uuid::new_v4().to_string();
        let body = wire::encode_request(n);
        let mut publish = Publish::with_properties(
            &body,
            self.queue.as_str(),
            wire::request_properties_with_deadline(
                &self.reply_queue,
                &correlation_id,
                self.timeout,
            ),
        );
        publish.mandatory = true;
        self.channel.basic_publish("", publish)?;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let delivery = select! {
                recv(self.replies) -> message => match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => delivery,
                    Ok(ConsumerMessage::ServerClosedChannel(err))
                    | Ok(ConsumerMessage::ServerClosedConnection(err)) => return Err(err.into()),
                    Ok(other) => {
                        return Err(Error::ConnectionLost(format!(
                            "reply consumer stopped: {other:?}"
                        )))
                    }
                    Err(_) => return Err(Error::ConnectionLost("reply consumer closed".into())),
                },
                recv(self.returns) -> returned => match returned {
                    Ok(returned) => {
                        if returned.properties.correlation_id().as_deref()
                            == Some(correlation_id.as_str())
                        {
                            return Err(Error::NoRoute {
                                queue: self.queue.clone(),
                                reason: returned.reply_text,
                            });
                        }
                        continue; // the return of an earlier call that timed out
                    }
                    Err(_) => return Err(Error::ConnectionLost("channel closed".into())),
                },
                default(remaining) => {
                    return Err(Error::Timeout {
                        n,
                        waited: started.elapsed(),
                        queue: self.queue.clone(),
                        consumers: self.consumer_count(),
                    })
                }
            };
            if delivery.properties.correlation_id().as_deref() != Some(correlation_id.as_str()) {
                log::debug!(
                    "discarding reply with unknown correlation id {:?}",
                    delivery.properties.correlation_id()
                );
                continue;
            }
            let value = wire::parse_reply(&delivery.properties, &delivery.body)?;
            let server = wire::header(&delivery.properties, wire::SERVER_HEADER).map(String::from);
            log::info!(
                "fib({n}) answered by {} in {:.2} ms",
                server.as_deref().unwrap_or("a server without a name"),
                started.elapsed().as_secs_f64() * 1e3
            );
            return Ok(Reply { value, server });
        }
    }

    /// Consumers of the request queue, for the timeout message; `None` if it can't be told.
    fn consumer_count(&mut self) -> Option<u32> {
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let probe = self.connection.open_channel(None).ok()?;
        let count = probe
            .queue_declare_passive(self.queue.as_str())
            .ok()?
            .declared_consumer_count();
        let _ = probe.close();
        count
    }

    /// Changes how long each following call waits for its reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The name of this client's callback queue (the `reply_to` of its requests).
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Closes the channel and the connection, reporting any error (dropping closes too).
    pub fn close(self) -> Result<(), Error> {
        let FibonacciRpcClient {
            channel,
            connection,
            ..
        } = self;
        channel.close()?;
        connection.close()?;
        Ok(())
    }
}
