//! What a call is made of: the client's options ([`ClientOptions`], [`ReplyQueue`]), a request
//! ([`RpcRequest`], checked against what AMQP can carry) and a reply ([`RpcReply`]).

use crate::error::Error;
use crate::properties::{Headers, Properties};
use crate::trace::TraceContext;
use crate::wire;
use crate::BrokerOptions;
use std::time::Duration;

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

/// Checks that `text` fits an AMQP short string (a header name, a content type): at most
/// [`MAX_SHORT_STRING`] bytes. The error names `what`: "`what` is N bytes; AMQP allows at most
/// 255".
pub(crate) fn check_short_string(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_SHORT_STRING {
        return Err(format!(
            "{what} is {} bytes; AMQP allows at most {MAX_SHORT_STRING}",
            text.len()
        ));
    }
    Ok(())
}

/// Where replies come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    /// parent's trace id, flags and `tracestate`). Without one the call carries no trace
    /// context, unless the client starts traces ([`crate::RpcClient::set_trace`]): then it
    /// is the root of a new trace. Its `traceparent` (and `tracestate`) replace any given in
    /// `headers`.
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
            check_short_string("the content type", content_type).map_err(Error::Config)?;
        }
        for (name, _) in &self.headers {
            if name.is_empty() {
                return Err(Error::Config("a header name is empty".into()));
            }
            check_short_string(&format!("header name '{}'", wire::printable(name)), name)
                .map_err(Error::Config)?;
        }
        Ok(())
    }

    /// The AMQP properties of this request sent as the span `trace` (if it is traced), on
    /// top of `properties` (where to reply, which call). No header table without headers or
    /// a trace.
    pub(crate) fn properties(
        &self,
        mut properties: Properties,
        trace: Option<&TraceContext>,
    ) -> Properties {
        if let Some(content_type) = &self.content_type {
            properties = properties.with_content_type(content_type.clone());
        }
        // No table at all when there is nothing in it: the AMQP library encodes an empty one too, and
        // each property of a message costs its encoding (see the README's Failure semantics).
        if self.headers.is_empty() && trace.is_none() {
            return properties;
        }
        let mut headers: Headers = self
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        if let Some(trace) = trace {
            wire::insert_trace(&mut headers, trace);
        }
        properties.with_headers(headers)
    }
}

/// A reply, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcReply {
    /// The message body, as received.
    pub body: Vec<u8>,
    /// The message properties, as received (content type, headers, correlation id, …).
    pub properties: Properties,
    /// The `x-rpc-server` header made printable, if the server sent one (ours do).
    pub server: Option<String>,
    /// From publishing the request to receiving the reply.
    pub elapsed: Duration,
    /// The trace context the request was sent with (the call's span), if it was traced: its
    /// trace id is the one the server logs and puts on its reply.
    pub trace: Option<TraceContext>,
}

impl RpcReply {
    /// The `content_type` property, as received (not made printable).
    pub fn content_type(&self) -> Option<&str> {
        self.properties.content_type()
    }

    /// The headers, as received (values of any AMQP type; see [`wire::header_text`] to show
    /// one), as a copy. Empty when the reply had none.
    pub fn headers(&self) -> Headers {
        self.properties.headers()
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
