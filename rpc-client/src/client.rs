//! [`FibonacciRpcClient`]: calls fib(n) on whichever rpc-server consumes the request queue.
//!
//! One connection, one channel and one callback queue per client (not per call): an exclusive,
//! auto-delete, server-named queue, or RabbitMQ's direct reply-to pseudo-queue. Each call
//! publishes a request with a fresh uuid v4 `correlation_id` and waits, up to the timeout, for
//! the reply carrying that id. Replies with any other id (a late reply to a call that timed
//! out, a second reply after a server crashed between replying and acking, someone else's
//! message) are discarded. [`FibonacciRpcClient::call_many`] keeps several calls in flight and
//! matches replies to calls by their ids.

use crate::error::Error;
use crate::uri::BrokerOptions;
use crate::wire;
use crate::{connection, consume};
use amiquip::{Channel, Connection, ConsumerMessage, ConsumerOptions, Delivery, Publish, Return};
use crossbeam_channel::{select, Receiver};
use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Where replies come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReplyQueue {
    /// An exclusive, auto-delete, server-named queue per client (the tutorial's way).
    #[default]
    Exclusive,
    /// RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`): no queue at all, replies go
    /// straight to the client's channel. Cheaper, but a reply is dropped if the client's
    /// connection goes away.
    Direct,
}

/// What a client needs to know: the broker, the request queue and how long to wait.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The brokers to try, in order (the nodes of a cluster, or just one).
    pub brokers: Vec<BrokerOptions>,
    /// The request queue servers consume (`rpc_queue`).
    pub queue: String,
    /// How long one call waits for its reply.
    pub timeout: Duration,
    /// Where replies come back.
    pub reply_queue: ReplyQueue,
}

impl Default for ClientOptions {
    /// Local broker, `rpc_queue`, 30 s timeout, exclusive callback queue.
    fn default() -> Self {
        ClientOptions {
            brokers: vec![BrokerOptions::default()],
            queue: wire::DEFAULT_QUEUE.to_string(),
            timeout: Duration::from_secs(30),
            reply_queue: ReplyQueue::Exclusive,
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
    /// From publishing the request to receiving the reply.
    pub elapsed: Duration,
}

/// A connection to the broker that calls fib(n) remotely.
pub struct FibonacciRpcClient {
    // Field order is drop order: the channel closes before its connection, and the receivers
    // outlive both (amiquip's I/O thread must never find them gone).
    channel: Channel,
    connection: Connection,
    replies: Receiver<ConsumerMessage>,
    returns: Receiver<Return>,
    reply_queue: String,
    queue: String,
    timeout: Duration,
}

/// What the broker sent us next.
enum Event {
    Reply(Delivery),
    Returned(Return),
    TimedOut,
}

/// A call of [`FibonacciRpcClient::call_many`] waiting for its reply.
struct Pending {
    index: usize,
    n: u64,
    started: Instant,
}

impl FibonacciRpcClient {
    /// Connects to the first broker that answers, sets up the callback queue and starts
    /// consuming it.
    pub fn connect(options: &ClientOptions) -> Result<FibonacciRpcClient, Error> {
        wire::parse_queue_name(&options.queue).map_err(Error::Config)?;
        if options.brokers.is_empty() {
            return Err(Error::Config("no broker to connect to".into()));
        }
        let (mut connection, _) = connection::connect_first(&options.brokers, 0)?;
        let channel = connection.open_channel(None)?;
        let (reply_queue, replies) = match options.reply_queue {
            ReplyQueue::Exclusive => consume::callback_queue(&channel)?,
            // Direct reply-to requires no-ack consuming on the channel that publishes.
            ReplyQueue::Direct => (
                DIRECT_REPLY_TO.to_string(),
                consume::consume(
                    &channel,
                    DIRECT_REPLY_TO,
                    ConsumerOptions {
                        no_ack: true,
                        ..ConsumerOptions::default()
                    },
                )?,
            ),
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
        let correlation_id = self.publish(n)?;
        loop {
            match self.next_event(deadline)? {
                Event::Reply(delivery) => {
                    if delivery.properties.correlation_id().as_deref() == Some(&correlation_id) {
                        return self.finish(n, started, &delivery);
                    }
                    discard(&delivery);
                }
                Event::Returned(returned) => {
                    if returned.properties.correlation_id().as_deref() == Some(&correlation_id) {
                        return Err(self.no_route(returned));
                    }
                    // The return of an earlier call that timed out.
                }
                Event::TimedOut => return Err(self.timed_out(n, started)),
            }
        }
    }

    /// Calls fib(n) for every n of `numbers`, with up to `in_flight` calls outstanding at
    /// once over this one connection.
    ///
    /// `on_reply(index, n, result)` is called once per call as its outcome is known: in the
    /// order replies arrive, not the order of `numbers` (`index` tells which). Each call has
    /// the full timeout from the moment it is sent. Returning `ControlFlow::Break` from
    /// `on_reply` stops sending; replies to calls still outstanding are then discarded.
    /// Only a lost connection ends the batch with `Err`.
    pub fn call_many<I, F>(
        &mut self,
        numbers: I,
        in_flight: usize,
        mut on_reply: F,
    ) -> Result<(), Error>
    where
        I: IntoIterator<Item = u64>,
        F: FnMut(usize, u64, Result<Reply, Error>) -> ControlFlow<()>,
    {
        let in_flight = in_flight.max(1);
        let mut numbers = numbers.into_iter().enumerate();
        let mut pending: HashMap<String, Pending> = HashMap::with_capacity(in_flight);
        // Calls in the order they were sent, which is also the order of their deadlines.
        let mut sent: VecDeque<(Instant, String)> = VecDeque::with_capacity(in_flight);
        let mut sending = true;
        loop {
            while sending && pending.len() < in_flight {
                let Some((index, n)) = numbers.next() else {
                    sending = false;
                    break;
                };
                let started = Instant::now();
                let id = self.publish(n)?;
                sent.push_back((started + self.timeout, id.clone()));
                pending.insert(id, Pending { index, n, started });
            }
            // Forget answered calls at the front; the first one left times out first.
            while sent
                .front()
                .is_some_and(|(_, id)| !pending.contains_key(id))
            {
                sent.pop_front();
            }
            let Some((deadline, _)) = sent.front() else {
                return Ok(()); // nothing outstanding and nothing more to send
            };
            let (call, result) = match self.next_event(*deadline)? {
                Event::Reply(delivery) => {
                    let id = delivery
                        .properties
                        .correlation_id()
                        .as_deref()
                        .unwrap_or("");
                    let Some(call) = pending.remove(id) else {
                        discard(&delivery);
                        continue;
                    };
                    let result = self.finish(call.n, call.started, &delivery);
                    (call, result)
                }
                Event::Returned(returned) => {
                    let id = returned
                        .properties
                        .correlation_id()
                        .as_deref()
                        .unwrap_or("");
                    let Some(call) = pending.remove(id) else {
                        continue;
                    };
                    (call, Err(self.no_route(returned)))
                }
                Event::TimedOut => {
                    let Some((_, id)) = sent.pop_front() else {
                        continue;
                    };
                    let Some(call) = pending.remove(&id) else {
                        continue;
                    };
                    let err = self.timed_out(call.n, call.started);
                    (call, Err(err))
                }
            };
            if on_reply(call.index, call.n, result).is_break() {
                return Ok(());
            }
        }
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
            replies,
            returns,
            ..
        } = self;
        // Closing the connection closes its channel on the broker too: one round trip
        // instead of two. The channel handle then only finds its I/O loop gone.
        connection.close()?;
        drop((channel, replies, returns));
        Ok(())
    }

    /// Publishes a request for fib(`n`) and returns its correlation id.
    fn publish(&mut self, n: u64) -> Result<String, Error> {
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
        Ok(correlation_id)
    }

    /// Waits until `deadline` for a reply or a returned request.
    fn next_event(&self, deadline: Instant) -> Result<Event, Error> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        select! {
            recv(self.replies) -> message => match message {
                Ok(ConsumerMessage::Delivery(delivery)) => Ok(Event::Reply(delivery)),
                Ok(ConsumerMessage::ServerClosedChannel(err))
                | Ok(ConsumerMessage::ServerClosedConnection(err)) => Err(err.into()),
                Ok(other) => Err(Error::ConnectionLost(format!(
                    "reply consumer stopped: {other:?}"
                ))),
                Err(_) => Err(Error::ConnectionLost("reply consumer closed".into())),
            },
            recv(self.returns) -> returned => match returned {
                Ok(returned) => Ok(Event::Returned(returned)),
                Err(_) => Err(Error::ConnectionLost("channel closed".into())),
            },
            default(remaining) => Ok(Event::TimedOut),
        }
    }

    /// Turns the reply to our call for fib(`n`) into its result.
    fn finish(&self, n: u64, started: Instant, delivery: &Delivery) -> Result<Reply, Error> {
        let value = wire::parse_reply(&delivery.properties, &delivery.body)?;
        let server = wire::header(&delivery.properties, wire::SERVER_HEADER).map(String::from);
        let elapsed = started.elapsed();
        log::info!(
            "fib({n}) answered by {} in {:.2} ms",
            server.as_deref().unwrap_or("a server without a name"),
            elapsed.as_secs_f64() * 1e3
        );
        Ok(Reply {
            value,
            server,
            elapsed,
        })
    }

    fn no_route(&self, returned: Return) -> Error {
        Error::NoRoute {
            queue: self.queue.clone(),
            reason: returned.reply_text,
        }
    }

    fn timed_out(&mut self, n: u64, started: Instant) -> Error {
        Error::Timeout {
            n,
            waited: started.elapsed(),
            queue: self.queue.clone(),
            consumers: self.consumer_count(),
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
}

fn discard(delivery: &Delivery) {
    log::debug!(
        "discarding reply with unknown correlation id {:?}",
        delivery.properties.correlation_id()
    );
}
