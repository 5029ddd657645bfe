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

use crate::error::Error;
use crate::reconnect::Reconnect;
use crate::session::{Event, Session, CONFIRM_PATIENCE};
use crate::trace::TraceContext;
use crate::uri::BrokerOptions;
use crate::wire;
use amiquip::{AmqpProperties, AmqpValue, Delivery, FieldTable, Return};
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
    /// The parent trace context: each call is sent as a new span of it (a child, with the
    /// parent's trace id, flags and `tracestate`), or, without one, as the root of a new
    /// trace. Its `traceparent` (and `tracestate`) replace any given in `headers`.
    pub trace: Option<TraceContext>,
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

    /// Sets the parent trace context (see [`RpcRequest::trace`]).
    pub fn with_parent(mut self, parent: Option<TraceContext>) -> RpcRequest {
        self.trace = parent;
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

    /// The AMQP properties of this request sent as the span `trace`, on top of `properties`
    /// (where to reply, which call).
    pub(crate) fn properties(
        &self,
        mut properties: AmqpProperties,
        trace: &TraceContext,
    ) -> AmqpProperties {
        if let Some(content_type) = &self.content_type {
            properties = properties.with_content_type(content_type.clone());
        }
        let mut headers: FieldTable = self
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), AmqpValue::LongString(value.clone())))
            .collect();
        wire::insert_trace(&mut headers, trace);
        properties.with_headers(headers)
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
    /// The trace context the request was sent with (the call's span): its trace id is the
    /// one the server logs and puts on its reply.
    pub trace: TraceContext,
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

/// A connection to the broker that makes raw calls: bytes in, bytes out. It recovers from a
/// lost connection by itself (see [`RpcClient::call_many`]).
pub struct RpcClient {
    /// The current connection; `None` while lost (the next call reconnects) or after a close.
    session: Option<Session>,
    brokers: Vec<BrokerOptions>,
    /// The broker to try first on the next connection: the one after the last one reached.
    next_broker: usize,
    reply_kind: ReplyQueue,
    /// The callback queue of the last connection.
    reply_queue: String,
    queue: String,
    timeout: Duration,
    idempotent: bool,
    /// The bound on each set-up round trip of a connection.
    setup_limit: Duration,
    closed: bool,
}

/// A call waiting for its reply.
struct Pending<T, R> {
    index: usize,
    tag: T,
    request: R,
    started: Instant,
    deadline: Instant,
    /// Its publish sequence number on the current connection; `None` while it is to be
    /// (re-)sent.
    seq: Option<u64>,
    /// How often the broker refused (nacked) it.
    nacks: u32,
    /// How often it went unconfirmed for [`CONFIRM_PATIENCE`] and was sent again.
    overdue: u32,
    /// Its span: the same on every sending.
    trace: TraceContext,
}

/// The first wait before re-sending a request the broker refused; it doubles per refusal of
/// the same request, up to [`NACK_BACKOFF_MAX`].
const NACK_BACKOFF: Duration = Duration::from_millis(100);
const NACK_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Refusals of one request after which an idempotent client replaces its connection (and so
/// its channel): each further multiple of it does so again.
const STUCK_NACKS: u32 = 3;

/// Times a request of an idempotent client goes unconfirmed for [`CONFIRM_PATIENCE`] before
/// the client replaces its connection.
const STUCK_OVERDUE: u32 = 2;

/// The longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
        let setup_limit = options
            .brokers
            .iter()
            .map(|broker| broker.connect_timeout)
            .max()
            .unwrap_or(Duration::from_secs(10));
        let session = Session::open(&options.brokers, 0, options.reply_queue, setup_limit, None)?;
        Ok(RpcClient {
            next_broker: session.broker() + 1,
            reply_queue: session.reply_queue().to_string(),
            session: Some(session),
            brokers: options.brokers.clone(),
            reply_kind: options.reply_queue,
            queue: options.queue.clone(),
            timeout: options.timeout,
            idempotent: options.idempotent,
            setup_limit,
            closed: false,
        })
    }

    /// Sends `request` and returns the reply.
    ///
    /// Ends within the timeout with the reply, the server's error reply as [`Error::Server`],
    /// or a local error: [`Error::NoRoute`] at once if the request queue does not exist,
    /// [`Error::Timeout`] (saying whether the queue has consumers), or a connection error.
    /// A lost connection is recovered as [`RpcClient::call_many`] says.
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
    /// full timeout from the moment it is first sent. Returning `ControlFlow::Break` from
    /// `on_reply` stops sending; replies to calls still outstanding are then discarded.
    ///
    /// Requests are published with publisher confirms. One the broker refuses (nacks) never
    /// reached the queue and is sent again, after 0.1 s doubling per refusal. When the
    /// connection is lost, the client connects to the next broker (0.1 s doubling between
    /// rounds over all of them, with jitter), opens a new callback queue, and sends the
    /// unanswered requests again with their correlation ids and original deadlines: all of
    /// them when the options say the procedure is `idempotent` (at-least-once); otherwise
    /// only those the broker never took, while each call whose request was sent fails with
    /// [`Error::MaybeRan`] (at-most-once). A call whose deadline passes before the
    /// connection is back fails with [`Error::ConnectionLost`]. Only a refused login, a
    /// request [`RpcRequest::check`] refuses, a blocked connection or a channel the broker
    /// closed ends the batch with `Err`.
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
        let mut outcome = None;
        self.call_many_tagged(
            std::iter::once(((), request)),
            1,
            |_, _| describe(),
            |_, _, result| {
                outcome = Some(result);
                ControlFlow::Break(())
            },
        )?;
        outcome.unwrap_or_else(|| {
            Err(Error::ConnectionLost(
                "the call ended without an outcome".into(),
            ))
        })
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
        if self.closed {
            return Err(Error::ConnectionLost("the client was closed".into()));
        }
        let in_flight = in_flight.max(1);
        let mut requests = requests.into_iter().enumerate();
        let mut calls: HashMap<String, Pending<T, R>> = HashMap::with_capacity(in_flight);
        // Calls in the order they were first sent, which is also the order of their deadlines.
        let mut order: VecDeque<(Instant, String)> = VecDeque::with_capacity(in_flight);
        // Calls to send now (new, or again after a lost connection), in this order.
        let mut to_send: VecDeque<String> = VecDeque::new();
        // Calls the broker refused, to send again from the given time.
        let mut refused: Vec<(Instant, String)> = Vec::new();
        let mut backoff = Reconnect::new(None, MAX_BACKOFF);
        // Why the connection was lost, while it is, and why the last attempt to reconnect
        // failed.
        let mut lost_by: Option<String> = None;
        let mut last_attempt: Option<String> = None;
        // The connection to give up, and why: lost, or one the broker keeps refusing.
        let mut drop_session: Option<String> = None;
        let mut sending = true;
        loop {
            if let Some(cause) = drop_session.take() {
                for (call, err) in self.lose(&mut calls, &mut to_send, &cause, &describe) {
                    if on_reply(call.index, call.tag, Err(err)).is_break() {
                        return Ok(());
                    }
                }
                lost_by = Some(cause);
            }
            while sending && calls.len() < in_flight {
                let Some((index, (tag, request))) = requests.next() else {
                    sending = false;
                    break;
                };
                request.borrow().check()?;
                let started = Instant::now();
                let id = Uuid::new_v4().to_string();
                let trace = TraceContext::child_of(request.borrow().trace.as_ref());
                order.push_back((started + self.timeout, id.clone()));
                to_send.push_back(id.clone());
                calls.insert(
                    id,
                    Pending {
                        index,
                        tag,
                        request,
                        started,
                        deadline: started + self.timeout,
                        seq: None,
                        nacks: 0,
                        overdue: 0,
                        trace,
                    },
                );
            }
            // Forget answered calls at the front; the first one left times out first.
            while order.front().is_some_and(|(_, id)| !calls.contains_key(id)) {
                order.pop_front();
            }
            let Some(&(deadline, _)) = order.front() else {
                return Ok(()); // nothing outstanding and nothing more to send
            };
            let now = Instant::now();
            refused.retain(|(due, id)| {
                let due = *due <= now;
                if due {
                    to_send.push_back(id.clone());
                }
                !due
            });

            if self.session.is_none() && deadline > now {
                // Lost: one round over every broker, else wait and expire what is due.
                match self.reopen(deadline) {
                    Ok(()) => {
                        backoff.succeeded();
                        last_attempt = None;
                        if let Some(cause) = lost_by.take() {
                            log::warn!(
                                "reconnected to {} after the connection was lost ({cause}); \
                                 sending {} call(s) again",
                                self.brokers[self.next_broker - 1],
                                to_send.len()
                            );
                        }
                    }
                    Err(err) if err.is_refusal() => return Err(err),
                    Err(err) => {
                        let delay = backoff.failed().unwrap_or(MAX_BACKOFF);
                        log::warn!(
                            "cannot reconnect ({err}); trying again in {:.1}s",
                            delay.as_secs_f64()
                        );
                        last_attempt = Some(err.to_string());
                        let left = deadline.saturating_duration_since(Instant::now());
                        std::thread::sleep(delay.min(left));
                        continue;
                    }
                }
            }
            let Some(session) = self.session.as_mut() else {
                // The connection is lost and the first call's deadline has passed.
                let Some((_, id)) = order.pop_front() else {
                    continue;
                };
                let Some(call) = calls.remove(&id) else {
                    continue;
                };
                let err = Error::ConnectionLost(format!(
                    "{} got no reply within {:.1}s and the connection was not back in time \
                     (lost: {}{})",
                    describe(call.index, &call.tag),
                    call.started.elapsed().as_secs_f64(),
                    lost_by.as_deref().unwrap_or("closed"),
                    last_attempt
                        .as_deref()
                        .map(|why| format!("; last attempt: {why}"))
                        .unwrap_or_default()
                ));
                if on_reply(call.index, call.tag, Err(err)).is_break() {
                    return Ok(());
                }
                continue;
            };
            // Send what is due, each with what is left of its own deadline.
            let mut lost = None;
            while let Some(id) = to_send.pop_front() {
                let Some(call) = calls.get_mut(&id) else {
                    continue;
                };
                let remaining = call.deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    continue; // it times out below
                }
                match session.publish(
                    &self.queue,
                    call.request.borrow(),
                    &call.trace,
                    &id,
                    remaining,
                ) {
                    Ok(seq) => call.seq = Some(seq),
                    Err(err) if err.is_connection_loss() => {
                        to_send.push_front(id);
                        lost = Some(err);
                        break;
                    }
                    Err(err) => return Err(err),
                }
            }
            let event = match lost {
                Some(err) => Err(err),
                None => {
                    let wake = refused
                        .iter()
                        .map(|(due, _)| *due)
                        .fold(deadline, Instant::min);
                    session.next_event(wake)
                }
            };
            let (call, result) = match event {
                Ok(Event::Reply(delivery)) => {
                    let id = delivery
                        .properties
                        .correlation_id()
                        .as_deref()
                        .unwrap_or("");
                    let Some(call) = calls.remove(id) else {
                        discard(&delivery);
                        continue;
                    };
                    if let Some(seq) = call.seq {
                        session.answered(seq);
                    }
                    let trace = call.trace.clone();
                    let reply = finish(delivery, call.started, trace, || {
                        describe(call.index, &call.tag)
                    });
                    (call, Ok(reply))
                }
                Ok(Event::Returned(returned)) => {
                    let id = returned
                        .properties
                        .correlation_id()
                        .as_deref()
                        .unwrap_or("");
                    let Some(call) = calls.remove(id) else {
                        continue;
                    };
                    (call, Err(self.no_route(returned)))
                }
                Ok(Event::Unconfirmed(ids)) => {
                    // Unconfirmed for long: maybe dropped without a nack. Only a call that may
                    // run twice can be sent again (the broker may have taken it after all).
                    let mut stuck = false;
                    for id in ids {
                        let Some(call) = calls.get_mut(&id) else {
                            continue;
                        };
                        if !self.idempotent {
                            log::info!(
                                "no confirm for {} within {:.0}s; waiting for its reply",
                                describe(call.index, &call.tag),
                                CONFIRM_PATIENCE.as_secs_f64()
                            );
                            continue;
                        }
                        log::warn!(
                            "no confirm for {} within {:.0}s; sending it again",
                            describe(call.index, &call.tag),
                            CONFIRM_PATIENCE.as_secs_f64()
                        );
                        call.seq = None;
                        call.overdue += 1;
                        stuck |= call.overdue % STUCK_OVERDUE == 0;
                        to_send.push_back(id);
                    }
                    if stuck {
                        let cause = format!(
                            "the broker confirmed none of {STUCK_OVERDUE} sendings of a request \
                             on this connection"
                        );
                        // Seen on RabbitMQ 3.10 around a quorum queue's leader change: a channel
                        // opened meanwhile stays refused or ignored. A new connection clears it.
                        log::warn!("{cause}; connecting again");
                        drop_session = Some(cause);
                    }
                    continue;
                }
                Ok(Event::Nacked(ids)) => {
                    let mut stuck = false;
                    for id in ids {
                        let Some(call) = calls.get_mut(&id) else {
                            continue;
                        };
                        call.seq = None;
                        call.nacks += 1;
                        stuck |= self.idempotent && call.nacks % STUCK_NACKS == 0;
                        let wait = NACK_BACKOFF
                            .saturating_mul(1 << (call.nacks - 1).min(5))
                            .min(NACK_BACKOFF_MAX);
                        log::warn!(
                            "the broker refused (nacked) {}; sending it again in {:.1}s",
                            describe(call.index, &call.tag),
                            wait.as_secs_f64()
                        );
                        refused.push((Instant::now() + wait, id));
                    }
                    if stuck {
                        let cause = format!(
                            "the broker refused a request {STUCK_NACKS} times on this connection"
                        );
                        // Seen on RabbitMQ 3.10 around a quorum queue's leader change: a channel
                        // opened meanwhile stays refused or ignored. A new connection clears it.
                        log::warn!("{cause}; connecting again");
                        drop_session = Some(cause);
                    }
                    continue;
                }
                Ok(Event::TimedOut) => {
                    if Instant::now() < deadline {
                        continue; // a refused request is due again
                    }
                    let Some((_, id)) = order.pop_front() else {
                        continue;
                    };
                    let Some(call) = calls.remove(&id) else {
                        continue;
                    };
                    let mut what = describe(call.index, &call.tag);
                    if call.nacks > 0 {
                        // Refused to the end: it never reached the queue.
                        what.push_str(&format!(" (refused by the broker {} times)", call.nacks));
                    }
                    let err = self.timed_out(&what, call.started);
                    (call, Err(err))
                }
                Err(err) if err.is_connection_loss() => {
                    let cause = err.to_string();
                    let cause = cause
                        .strip_prefix("connection to the broker lost: ")
                        .unwrap_or(&cause)
                        .to_string();
                    log::warn!(
                        "connection to the broker lost ({cause}) with {} call(s) in flight",
                        calls.len()
                    );
                    drop_session = Some(cause);
                    continue;
                }
                Err(err) => return Err(err),
            };
            if on_reply(call.index, call.tag, result).is_break() {
                return Ok(());
            }
        }
    }

    /// Connects again, starting at the broker after the last one reached; the whole round
    /// over the brokers and the set-up end by `deadline`.
    fn reopen(&mut self, deadline: Instant) -> Result<(), Error> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Each broker's connect gets its share of the time left.
        let count = u32::try_from(self.brokers.len()).unwrap_or(u32::MAX).max(1);
        let share = remaining / count;
        let brokers: Vec<BrokerOptions> = self
            .brokers
            .iter()
            .map(|broker| BrokerOptions {
                connect_timeout: broker
                    .connect_timeout
                    .min(share)
                    .max(Duration::from_millis(1)),
                ..broker.clone()
            })
            .collect();
        let start = self.next_broker % self.brokers.len();
        let session = Session::open(
            &brokers,
            start,
            self.reply_kind,
            self.setup_limit,
            Some(deadline),
        )?;
        self.next_broker = session.broker() + 1;
        self.reply_queue = session.reply_queue().to_string();
        self.session = Some(session);
        Ok(())
    }

    /// The connection is lost: drops it and sorts the calls in flight. Those whose requests
    /// the broker never took are queued to be sent again, and so are the others when the
    /// procedure is idempotent; otherwise those fail with [`Error::MaybeRan`] and are
    /// returned.
    fn lose<T, R>(
        &mut self,
        calls: &mut HashMap<String, Pending<T, R>>,
        to_send: &mut VecDeque<String>,
        cause: &str,
        describe: &impl Fn(usize, &T) -> String,
    ) -> Vec<(Pending<T, R>, Error)> {
        let Some(mut session) = self.session.take() else {
            return Vec::new();
        };
        let nacked = session.take_confirms();
        // Sent ones in the order they were first sent; to_send keeps what was queued.
        let mut sent: Vec<(&String, &Pending<T, R>)> = calls
            .iter()
            .filter(|(id, call)| call.seq.is_some() && !nacked.contains(id))
            .collect();
        sent.sort_by_key(|(_, call)| call.index);
        let sent: Vec<(String, bool)> = sent
            .into_iter()
            .map(|(id, call)| {
                (
                    id.clone(),
                    call.seq.is_some_and(|seq| session.confirmed(seq)),
                )
            })
            .collect();
        drop(session); // bounded by CLOSE_LIMIT
        let mut failed = Vec::new();
        let mut again: VecDeque<String> = VecDeque::new();
        for (id, confirmed) in sent {
            if self.idempotent {
                again.push_back(id);
                continue;
            }
            let Some(call) = calls.remove(&id) else {
                continue;
            };
            let err = Error::MaybeRan {
                call: describe(call.index, &call.tag),
                cause: cause.to_string(),
                confirmed,
            };
            failed.push((call, err));
        }
        for id in nacked {
            if calls.contains_key(&id) && !to_send.contains(&id) {
                again.push_back(id);
            }
        }
        for call in calls.values_mut() {
            call.seq = None;
        }
        again.extend(to_send.drain(..));
        *to_send = again;
        failed
    }

    /// Changes how long each following call waits for its reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The name of this client's callback queue (the `reply_to` of its requests); a new one
    /// after each reconnect.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Closes the channel and the connection, reporting any error (dropping closes too). Takes
    /// at most [`CLOSE_LIMIT`]: a close the broker does not answer in time abandons the
    /// connection and reports [`Error::Stalled`].
    pub fn close(mut self) -> Result<(), Error> {
        self.closed = true;
        match self.session.take() {
            Some(session) => session.close(),
            None => Ok(()),
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
        let Some(session) = self.session.as_mut() else {
            return Error::ConnectionLost(format!("no reply for {call}; the connection is gone"));
        };
        match session.consumer_count(&self.queue) {
            Ok(consumers) => Error::Timeout {
                call: call.to_string(),
                waited,
                queue: self.queue.clone(),
                consumers,
            },
            // The link is abandoned: the next wait on it fails, and the calls still in flight
            // are recovered then.
            Err(Error::Stalled(why)) => Error::Stalled(format!(
                "no reply for {call} within {:.1}s, then {why}",
                waited.as_secs_f64()
            )),
            Err(err) => err,
        }
    }
}

/// Turns the reply to our call into an [`RpcReply`], taking its body and properties as they
/// are. `describe` names the call in the log.
fn finish(
    delivery: Delivery,
    started: Instant,
    trace: TraceContext,
    describe: impl FnOnce() -> String,
) -> RpcReply {
    let elapsed = started.elapsed();
    let server = wire::header(&delivery.properties, wire::SERVER_HEADER).map(wire::printable);
    log::info!(
        trace_id:display = trace.trace_id,
        duration_ms = elapsed.as_secs_f64() * 1e3;
        "{} answered by {} in {:.2} ms, trace {}",
        describe(),
        server.as_deref().unwrap_or("a server without a name"),
        elapsed.as_secs_f64() * 1e3,
        trace.trace_id
    );
    RpcReply {
        body: delivery.body,
        properties: delivery.properties,
        server,
        elapsed,
        trace,
    }
}

fn discard(delivery: &Delivery) {
    log::debug!(
        "discarding reply with unknown correlation id {:?}",
        delivery.properties.correlation_id()
    );
}
