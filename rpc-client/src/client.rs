//! [`RpcClient`]: raw request/reply calls (bytes, content type, headers) to whichever server
//! consumes the request queue. [`crate::FibonacciRpcClient`] is a thin layer on top.
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

mod batch;

use crate::amqp::BrokerOptions;
use crate::error::Error;
use crate::request::{ClientOptions, ReplyQueue, RpcReply, RpcRequest};
use crate::session::{Incoming, Returned, Session};
use crate::trace::TraceContext;
use crate::wire;
use std::borrow::Borrow;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

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
    /// Whether a call without a parent trace context starts a new trace
    /// ([`RpcClient::set_trace`]).
    trace: bool,
    /// The bound on each set-up round trip of a connection.
    setup_limit: Duration,
    closed: bool,
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
            trace: false,
            setup_limit,
            closed: false,
        })
    }

    /// Whether calls without a parent trace context ([`RpcRequest::trace`]) start a new
    /// trace each, and so carry a `traceparent` (off by default: such calls carry no trace
    /// context, and none is generated). Calls with a parent are always sent as its children.
    pub fn set_trace(&mut self, start: bool) {
        self.trace = start;
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

    /// Waits, for at most `within`, until a server consumes the request queue: for a caller
    /// started together with its server (`rpc-server ... &` and at once a call), which would
    /// otherwise find no queue yet ([`Error::NoRoute`]). Asks the broker (a passive declare on
    /// a channel of its own) every 0.1 s, backing off to 1 s.
    ///
    /// Returns the consumers seen last: `Some(n)`, n ≥ 1, as soon as a server consumes; at
    /// the deadline `Some(0)` (the queue exists, no server consumes it) or `None` (no such
    /// queue, or the broker would not say). Calls are not changed by it: after `None` the next
    /// call still fails at once with [`Error::NoRoute`]. An error only if the broker stalls
    /// ([`Error::Stalled`]) or the connection cannot be opened again.
    pub fn wait_for_server(&mut self, within: Duration) -> Result<Option<u32>, Error> {
        // At most 34 years: the deadline cannot overflow.
        let deadline = Instant::now() + within.min(Duration::from_secs(1 << 30));
        let mut pause = Duration::from_millis(100);
        loop {
            if self.session.is_none() {
                self.reopen(deadline)?;
            }
            let Some(session) = self.session.as_mut() else {
                return Err(Error::ConnectionLost("closed".into()));
            };
            let seen = session.consumer_count(&self.queue)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if seen.is_some_and(|consumers| consumers > 0) || left.is_zero() {
                return Ok(seen);
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_secs(1));
        }
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
    /// at most [`CLOSE_LIMIT`](crate::CLOSE_LIMIT): a close the broker does not answer in time abandons the
    /// connection and reports [`Error::Stalled`].
    pub fn close(mut self) -> Result<(), Error> {
        self.closed = true;
        match self.session.take() {
            Some(session) => session.close(),
            None => Ok(()),
        }
    }

    fn no_route(&self, returned: Returned) -> Error {
        Error::NoRoute {
            queue: self.queue.clone(),
            reason: wire::printable(&returned.reply_text),
        }
    }

    /// The error of `call` that got no reply in time: a timeout saying whether the queue has
    /// consumers, or [`Error::Stalled`] if even that question got no answer in
    /// [`PROBE_LIMIT`](crate::PROBE_LIMIT).
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
    delivery: Incoming,
    started: Instant,
    trace: Option<TraceContext>,
    describe: impl FnOnce() -> String,
) -> RpcReply {
    let elapsed = started.elapsed();
    let properties = delivery.properties;
    let server = wire::header(&properties, wire::SERVER_HEADER).map(wire::printable);
    let by = server.as_deref().unwrap_or("a server without a name");
    let ms = elapsed.as_secs_f64() * 1e3;
    match &trace {
        Some(trace) => log::info!(
            trace_id:display = trace.trace_id,
            duration_ms = ms;
            "{} answered by {by} in {ms:.2} ms, trace {}",
            describe(),
            trace.trace_id
        ),
        None => log::info!(duration_ms = ms; "{} answered by {by} in {ms:.2} ms", describe()),
    }
    RpcReply {
        body: delivery.body,
        properties,
        server,
        elapsed,
        trace,
    }
}

fn discard(delivery: &Incoming) {
    log::debug!(
        "discarding reply with unknown correlation id {:?}",
        delivery.properties.correlation_id()
    );
}
