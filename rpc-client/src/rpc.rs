//! [`RpcClient`]: raw request/reply calls (bytes, content type, headers) to whichever server
//! consumes the request queue. [`crate::client::FibonacciRpcClient`] is a thin layer on top.
//!
//! One connection, one channel and one callback queue per client (not per call): an exclusive,
//! auto-delete, server-named queue, or RabbitMQ's direct reply-to pseudo-queue. Each call
//! publishes a request (mandatory, with `expiration` and `timestamp` for its deadline) with a
//! fresh uuid v4 `correlation_id` and waits, up to the timeout, for the reply carrying that id.
//! Replies with any other id (a late reply to a call that timed out, a second reply after a
//! server crashed between replying and acking, someone else's message) are discarded.
//! [`RpcClient::call_many`] keeps several calls in flight and matches replies to calls by
//! their ids.
//!
//! ```no_run
//! use rpc_client::{ClientOptions, RpcClient, RpcRequest};
//! let options = ClientOptions {
//!     queue: "echo".into(),
//!     ..ClientOptions::default()
//! };
//! let mut client = RpcClient::connect(&options)?;
//! let request = RpcRequest::new("hello")
//!     .with_content_type("text/plain")
//!     .with_header("lang", "en");
//! let reply = client.call(&request)?;
//! println!(
//!     "{} bytes of {:?} from {:?} in {:?}",
//!     reply.body.len(),
//!     reply.content_type(),
//!     reply.server,
//!     reply.elapsed
//! );
//! client.close()?;
//! # Ok::<(), rpc_client::Error>(())
//! ```

use crate::connection::Link;
use crate::error::Error;
use crate::uri::BrokerOptions;
use crate::wire;
use crate::{connection, consume};
use amiquip::{
    AmqpProperties, AmqpValue, Channel, ConnectionBlockedNotification, ConsumerMessage,
    ConsumerOptions, Delivery, FieldTable, Publish, Return,
};
use crossbeam_channel::{select, Receiver};
use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The longest a call waits past its timeout: for the consumer-count probe that says whether
/// any server consumes the queue. A probe that takes longer abandons the connection.
pub const PROBE_LIMIT: Duration = Duration::from_secs(1);

/// The longest closing the connection may take; a close that cannot finish abandons the
/// connection instead (an answered call stays answered).
pub const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// The longest header name and content type AMQP can carry (a short string), in bytes.
pub const MAX_SHORT_STRING: usize = 255;

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
    /// The procedure may run twice for one call (it is idempotent): after a lost connection,
    /// re-send even the requests the broker may already have handed to a server
    /// (at-least-once). Off (the default), such a call fails instead, saying that it may or
    /// may not have run (at-most-once); requests the broker never took are re-sent either way.
    /// [`crate::FibonacciRpcClient`] always sets it: fib(n) is pure.
    pub idempotent: bool,
}

impl Default for ClientOptions {
    /// Local broker, `rpc_queue`, 30 s timeout, exclusive callback queue, at-most-once.
    fn default() -> Self {
        ClientOptions {
            brokers: vec![BrokerOptions::default()],
            queue: wire::DEFAULT_QUEUE.to_string(),
            timeout: Duration::from_secs(30),
            reply_queue: ReplyQueue::Exclusive,
            idempotent: false,
        }
    }
}

/// A request: its body and, optionally, a content type and string headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcRequest {
    /// The message body, sent as is.
    pub body: Vec<u8>,
    /// The `content_type` property (at most [`MAX_SHORT_STRING`] bytes).
    pub content_type: Option<String>,
    /// Headers, sent as AMQP long strings; names are at most [`MAX_SHORT_STRING`] bytes and
    /// not empty. Of two headers with the same name, the last one is sent.
    pub headers: Vec<(String, String)>,
}

impl RpcRequest {
    /// A request with `body` and no properties of its own.
    pub fn new(body: impl Into<Vec<u8>>) -> RpcRequest {
        RpcRequest {
            body: body.into(),
            ..RpcRequest::default()
        }
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> RpcRequest {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> RpcRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Checks what AMQP cannot carry: an empty header name, or a header name or content type
    /// over [`MAX_SHORT_STRING`] bytes ([`Error::Config`]). Calls check it too.
    pub fn check(&self) -> Result<(), Error> {
        if let Some(content_type) = &self.content_type {
            if content_type.len() > MAX_SHORT_STRING {
                return Err(Error::Config(format!(
                    "the content type is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
                    content_type.len()
                )));
            }
        }
        for (name, _) in &self.headers {
            if name.is_empty() {
                return Err(Error::Config("a header name is empty".into()));
            }
            if name.len() > MAX_SHORT_STRING {
                return Err(Error::Config(format!(
                    "header name '{}' is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
                    wire::printable(name),
                    name.len()
                )));
            }
        }
        Ok(())
    }

    /// The AMQP properties of this request, on top of `properties` (where to reply, which call).
    fn properties(&self, mut properties: AmqpProperties) -> AmqpProperties {
        if let Some(content_type) = &self.content_type {
            properties = properties.with_content_type(content_type.clone());
        }
        if !self.headers.is_empty() {
            let headers: FieldTable = self
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), AmqpValue::LongString(value.clone())))
                .collect();
            properties = properties.with_headers(headers);
        }
        properties
    }
}

/// A reply, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcReply {
    /// The message body, as received.
    pub body: Vec<u8>,
    /// The message properties, as received (content type, headers, correlation id, …).
    pub properties: AmqpProperties,
    /// The `x-rpc-server` header made printable, if the server sent one (ours do).
    pub server: Option<String>,
    /// From publishing the request to receiving the reply.
    pub elapsed: Duration,
}

/// The headers of a message without any.
static NO_HEADERS: FieldTable = FieldTable::new();

impl RpcReply {
    /// The `content_type` property, as received (not made printable).
    pub fn content_type(&self) -> Option<&str> {
        self.properties.content_type().as_deref()
    }

    /// The headers, as received (values of any AMQP type; see [`wire::header_text`] to show
    /// one). Empty when the reply had none.
    pub fn headers(&self) -> &FieldTable {
        self.properties.headers().as_ref().unwrap_or(&NO_HEADERS)
    }

    /// A header whose value is a string, as received.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.properties, name)
    }

    /// [`Error::Server`] if this is an error reply (it carries `x-rpc-error`), code and message
    /// made printable.
    pub fn error(&self) -> Option<Error> {
        wire::error_reply(&self.properties, &self.body)
    }

    /// `Err` with [`RpcReply::error`] for an error reply, else the reply.
    pub fn into_result(self) -> Result<RpcReply, Error> {
        match self.error() {
            Some(err) => Err(err),
            None => Ok(self),
        }
    }
}

/// A connection to the broker that makes raw calls: bytes in, bytes out.
pub struct RpcClient {
    // Field order is drop order: the channel closes before its connection, the receivers
    // outlive both (amiquip's I/O thread must never find them gone), and the link's watchdog
    // bounds the closes (see `Drop`).
    channel: Channel,
    link: Option<Link>,
    replies: Receiver<ConsumerMessage>,
    returns: Receiver<Return>,
    blocked: Receiver<ConnectionBlockedNotification>,
    /// The broker's reason while it blocks our publishers (a resource alarm).
    blocked_by: Option<String>,
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

/// A call of [`RpcClient::call_many_tagged`] waiting for its reply.
struct Pending<T> {
    index: usize,
    tag: T,
    started: Instant,
}

/// How [`RpcClient::call`] names a request in messages.
fn describe_one(request: &RpcRequest) -> String {
    format!("request ({} bytes)", request.body.len())
}

/// How [`RpcClient::call_many`] names a request in messages: by its position, from 1.
fn describe_nth(index: usize, bytes: &usize) -> String {
    format!("request {} ({bytes} bytes)", index + 1)
}

impl RpcClient {
    /// Connects to the first broker that answers, sets up the callback queue and starts
    /// consuming it.
    pub fn connect(options: &ClientOptions) -> Result<RpcClient, Error> {
        wire::parse_queue_name(&options.queue).map_err(Error::Config)?;
        if options.brokers.is_empty() {
            return Err(Error::Config("no broker to connect to".into()));
        }
        let (mut link, _) = connection::open_first(&options.brokers, 0)?;
        let setup_limit = options
            .brokers
            .iter()
            .map(|broker| broker.connect_timeout)
            .max()
            .unwrap_or(Duration::from_secs(10));
        let set_up = Self::set_up(&mut link, options.reply_queue, setup_limit);
        let (channel, reply_queue, replies, returns, blocked) = match set_up {
            Ok(parts) => parts,
            Err(err) => {
                link.bound_close(CLOSE_LIMIT);
                return Err(err);
            }
        };
        log::debug!("callback queue {reply_queue}");
        Ok(RpcClient {
            channel,
            link: Some(link),
            replies,
            returns,
            blocked,
            blocked_by: None,
            reply_queue,
            queue: options.queue.clone(),
            timeout: options.timeout,
        })
    }

    /// Opens the channel, the callback queue and the listeners, each round trip bounded.
    #[allow(clippy::type_complexity)]
    fn set_up(
        link: &mut Link,
        reply_queue: ReplyQueue,
        limit: Duration,
    ) -> Result<
        (
            Channel,
            String,
            Receiver<ConsumerMessage>,
            Receiver<Return>,
            Receiver<ConnectionBlockedNotification>,
        ),
        Error,
    > {
        let Link {
            connection,
            watchdog,
        } = link;
        let blocked = watchdog.bounded("to the blocked-notification listener", limit, || {
            connection.listen_for_connection_blocked()
        })?;
        let channel = watchdog.bounded("to the channel open", limit, || {
            connection.open_channel(None)
        })?;
        let (reply_queue, replies) = match reply_queue {
            ReplyQueue::Exclusive => {
                watchdog.bounded("to the callback queue's declare and consume", limit, || {
                    consume::callback_queue(&channel)
                })?
            }
            // Direct reply-to requires no-ack consuming on the channel that publishes.
            ReplyQueue::Direct => (
                DIRECT_REPLY_TO.to_string(),
                watchdog.bounded("to the direct reply-to consume", limit, || {
                    consume::consume(
                        &channel,
                        DIRECT_REPLY_TO,
                        ConsumerOptions {
                            no_ack: true,
                            ..ConsumerOptions::default()
                        },
                    )
                })?,
            ),
        };
        // Requests are published mandatory: the broker returns them at once when no queue of
        // that name exists, instead of dropping them while we wait out the timeout.
        let returns = watchdog.bounded("to the return listener", limit, || {
            channel.listen_for_returns()
        })?;
        Ok((channel, reply_queue, replies, returns, blocked))
    }

    /// Sends `request` and returns the reply.
    ///
    /// Ends within the timeout with the reply, the server's error reply as [`Error::Server`],
    /// or a local error: [`Error::NoRoute`] at once if the request queue does not exist,
    /// [`Error::Timeout`] (saying whether the queue has consumers), or a connection error.
    pub fn call(&mut self, request: &RpcRequest) -> Result<RpcReply, Error> {
        self.call_tagged(request, || describe_one(request))?
            .into_result()
    }

    /// Sends every request of `requests`, with up to `in_flight` calls outstanding at once
    /// over this one connection.
    ///
    /// `on_reply(index, result)` is called once per request as its outcome is known: in the
    /// order replies arrive, not the order of `requests` (`index` tells which, from 0). Error
    /// replies are [`Error::Server`]; messages name request `index + 1`. Each call has the
    /// full timeout from the moment it is sent. Returning `ControlFlow::Break` from
    /// `on_reply` stops sending; replies to calls still outstanding are then discarded. Only
    /// a lost connection (or a request [`RpcRequest::check`] refuses) ends the batch with
    /// `Err`.
    pub fn call_many<I, F>(
        &mut self,
        requests: I,
        in_flight: usize,
        mut on_reply: F,
    ) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Borrow<RpcRequest>,
        F: FnMut(usize, Result<RpcReply, Error>) -> ControlFlow<()>,
    {
        self.call_many_raw(requests, in_flight, |index, result| {
            on_reply(index, result.and_then(RpcReply::into_result))
        })
    }

    /// [`RpcClient::call_many`], except that error replies are passed on as replies, for
    /// callers that show them with their server and time: [`RpcReply::error`] tells them.
    pub fn call_many_raw<I, F>(
        &mut self,
        requests: I,
        in_flight: usize,
        mut on_reply: F,
    ) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Borrow<RpcRequest>,
        F: FnMut(usize, Result<RpcReply, Error>) -> ControlFlow<()>,
    {
        let requests = requests.into_iter().map(|request| {
            let bytes = request.borrow().body.len();
            (bytes, request)
        });
        self.call_many_tagged(requests, in_flight, describe_nth, |index, _, result| {
            on_reply(index, result)
        })
    }

    /// Sends `request`; the reply comes back as received (an error reply too). `describe`
    /// names the call in messages.
    pub(crate) fn call_tagged(
        &mut self,
        request: &RpcRequest,
        describe: impl Fn() -> String,
    ) -> Result<RpcReply, Error> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let correlation_id = self.publish(request)?;
        loop {
            match self.next_event(deadline)? {
                Event::Reply(delivery) => {
                    if delivery.properties.correlation_id().as_deref() == Some(&correlation_id) {
                        return Ok(self.finish(delivery, started, describe));
                    }
                    discard(&delivery);
                }
                Event::Returned(returned) => {
                    if returned.properties.correlation_id().as_deref() == Some(&correlation_id) {
                        return Err(self.no_route(returned));
                    }
                    // The return of an earlier call that timed out.
                }
                Event::TimedOut => return Err(self.timed_out(&describe(), started)),
            }
        }
    }

    /// Sends every `(tag, request)` of `requests` with up to `in_flight` outstanding;
    /// `on_reply(index, tag, result)` gets each outcome with replies as received (error
    /// replies too). `describe(index, tag)` names a call in messages.
    pub(crate) fn call_many_tagged<T, R, I, F>(
        &mut self,
        requests: I,
        in_flight: usize,
        describe: impl Fn(usize, &T) -> String,
        mut on_reply: F,
    ) -> Result<(), Error>
    where
        R: Borrow<RpcRequest>,
        I: IntoIterator<Item = (T, R)>,
        F: FnMut(usize, T, Result<RpcReply, Error>) -> ControlFlow<()>,
    {
        let in_flight = in_flight.max(1);
        let mut requests = requests.into_iter().enumerate();
        let mut pending: HashMap<String, Pending<T>> = HashMap::with_capacity(in_flight);
        // Calls in the order they were sent, which is also the order of their deadlines.
        let mut sent: VecDeque<(Instant, String)> = VecDeque::with_capacity(in_flight);
        let mut sending = true;
        loop {
            while sending && pending.len() < in_flight {
                let Some((index, (tag, request))) = requests.next() else {
                    sending = false;
                    break;
                };
                let started = Instant::now();
                let id = self.publish(request.borrow())?;
                sent.push_back((started + self.timeout, id.clone()));
                pending.insert(
                    id,
                    Pending {
                        index,
                        tag,
                        started,
                    },
                );
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
                    let reply =
                        self.finish(delivery, call.started, || describe(call.index, &call.tag));
                    (call, Ok(reply))
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
                    let err = self.timed_out(&describe(call.index, &call.tag), call.started);
                    (call, Err(err))
                }
            };
            if on_reply(call.index, call.tag, result).is_break() {
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

    /// Closes the channel and the connection, reporting any error (dropping closes too). Takes
    /// at most [`CLOSE_LIMIT`]: a close the broker does not answer in time abandons the
    /// connection and reports [`Error::Stalled`].
    pub fn close(mut self) -> Result<(), Error> {
        let Some(Link {
            connection,
            watchdog,
        }) = self.link.take()
        else {
            return Ok(());
        };
        // Closing the connection closes its channel on the broker too: one round trip
        // instead of two. The channel handle then only finds its I/O loop gone.
        watchdog.bounded("to the connection close", CLOSE_LIMIT, || {
            connection.close()
        })
    }

    /// Publishes `request` and returns its correlation id. Fails at once while the broker
    /// blocks our publishers.
    fn publish(&mut self, request: &RpcRequest) -> Result<String, Error> {
        request.check()?;
        self.check_blocked()?;
        let correlation_id = Uuid::new_v4().to_string();
        let properties = request.properties(wire::request_properties_with_deadline(
            &self.reply_queue,
            &correlation_id,
            self.timeout,
        ));
        let mut publish = Publish::with_properties(&request.body, self.queue.as_str(), properties);
        publish.mandatory = true;
        let channel = &self.channel;
        self.link()?
            .watchdog
            .bounded("to the request's publish", self.timeout, || {
                channel.basic_publish("", publish)
            })?;
        Ok(correlation_id)
    }

    /// The open link, or [`Error::ConnectionLost`] after a close.
    fn link(&self) -> Result<&Link, Error> {
        self.link
            .as_ref()
            .ok_or_else(|| Error::ConnectionLost("the client was closed".into()))
    }

    /// Takes the blocked/unblocked notifications that arrived, and fails while blocked.
    fn check_blocked(&mut self) -> Result<(), Error> {
        while let Ok(note) = self.blocked.try_recv() {
            self.note_blocked(note);
        }
        match &self.blocked_by {
            Some(reason) => Err(Error::Blocked(reason.clone())),
            None => Ok(()),
        }
    }

    fn note_blocked(&mut self, note: ConnectionBlockedNotification) {
        match note {
            ConnectionBlockedNotification::Blocked(reason) => {
                let reason = wire::printable(&reason);
                log::warn!("the broker blocks this connection: {reason}");
                self.blocked_by = Some(reason);
            }
            ConnectionBlockedNotification::Unblocked => {
                log::info!("the broker unblocked this connection");
                self.blocked_by = None;
            }
        }
    }

    /// Waits until `deadline` for a reply or a returned request; fails at once when the
    /// broker blocks our publishers (our requests would wait in its buffers).
    fn next_event(&mut self, deadline: Instant) -> Result<Event, Error> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let note = select! {
                recv(self.replies) -> message => return match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => Ok(Event::Reply(delivery)),
                    Ok(ConsumerMessage::ServerClosedChannel(err))
                    | Ok(ConsumerMessage::ServerClosedConnection(err)) => Err(err.into()),
                    Ok(other) => Err(Error::ConnectionLost(format!(
                        "reply consumer stopped: {other:?}"
                    ))),
                    Err(_) => Err(self.lost("reply consumer closed")),
                },
                recv(self.returns) -> returned => return match returned {
                    Ok(returned) => Ok(Event::Returned(returned)),
                    Err(_) => Err(self.lost("channel closed")),
                },
                recv(self.blocked) -> note => match note {
                    Ok(note) => note,
                    Err(_) => return Err(self.lost("connection closed")),
                },
                default(remaining) => return Ok(Event::TimedOut),
            };
            self.note_blocked(note);
            self.check_blocked()?;
        }
    }

    /// A lost connection: [`Error::Stalled`] if our watchdog abandoned it, with its reason.
    fn lost(&self, what: &str) -> Error {
        match self.link.as_ref().and_then(|link| link.watchdog.fired()) {
            Some(why) => Error::Stalled(why),
            None => Error::ConnectionLost(what.to_string()),
        }
    }

    /// Turns the reply to our call into an [`RpcReply`], taking its body and properties as
    /// they are. `describe` names the call in the log.
    fn finish(
        &self,
        delivery: Delivery,
        started: Instant,
        describe: impl FnOnce() -> String,
    ) -> RpcReply {
        let elapsed = started.elapsed();
        let server = wire::header(&delivery.properties, wire::SERVER_HEADER).map(wire::printable);
        log::info!(
            "{} answered by {} in {:.2} ms",
            describe(),
            server.as_deref().unwrap_or("a server without a name"),
            elapsed.as_secs_f64() * 1e3
        );
        RpcReply {
            body: delivery.body,
            properties: delivery.properties,
            server,
            elapsed,
        }
    }

    fn no_route(&self, returned: Return) -> Error {
        Error::NoRoute {
            queue: self.queue.clone(),
            reason: wire::printable(&returned.reply_text),
        }
    }

    /// The error of `call` that got no reply in time: a timeout saying whether the queue has
    /// consumers, or [`Error::Stalled`] if even that question got no answer in
    /// [`PROBE_LIMIT`].
    fn timed_out(&mut self, call: &str, started: Instant) -> Error {
        let waited = started.elapsed();
        match self.consumer_count() {
            Ok(consumers) => Error::Timeout {
                call: call.to_string(),
                waited,
                queue: self.queue.clone(),
                consumers,
            },
            Err(Error::Stalled(why)) => Error::Stalled(format!(
                "no reply for {call} within {:.1}s, then {why}",
                waited.as_secs_f64()
            )),
            Err(err) => err,
        }
    }

    /// Consumers of the request queue, for the timeout message; `None` if it can't be told,
    /// an error only if the broker did not answer within [`PROBE_LIMIT`].
    fn consumer_count(&mut self) -> Result<Option<u32>, Error> {
        let link = self
            .link
            .as_mut()
            .ok_or_else(|| Error::ConnectionLost("closed".into()))?;
        let Link {
            connection,
            watchdog,
        } = link;
        let queue = self.queue.as_str();
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let probe = watchdog.bounded("to the consumer-count probe", PROBE_LIMIT, || {
            let probe = connection.open_channel(None)?;
            let count = probe
                .queue_declare_passive(queue)?
                .declared_consumer_count();
            probe.close()?;
            Ok(count)
        });
        match probe {
            Ok(count) => Ok(count),
            Err(Error::Stalled(why)) => Err(Error::Stalled(why)),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for RpcClient {
    /// Bounds the closes amiquip makes when the channel and the connection are dropped.
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            link.bound_close(CLOSE_LIMIT);
        }
    }
}

fn discard(delivery: &Delivery) {
    log::debug!(
        "discarding reply with unknown correlation id {:?}",
        delivery.properties.correlation_id()
    );
}
