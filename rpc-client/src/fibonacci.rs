//! [`FibonacciRpcClient`]: calls fib(n) on whichever rpc-server consumes the request queue.
//!
//! A thin layer over [`crate::RpcClient`]: a request body is n in decimal,
//! a reply body fib(n) in decimal ([`wire::parse_value`]), checked to be fib(n) before it is
//! returned ([`check`]: its digit count and its residue modulo a prime, O(log n)), so that a
//! server whose arithmetic overflows gets [`Error::BadReply`] instead of a wrong number. The
//! connection, the callback queue, deadlines, correlation ids and timeouts are the
//! bytes-level client's (see [`crate::client`]).

use crate::error::Error;
use crate::request::{RpcReply, RpcRequest};
use crate::trace::{TraceContext, TraceId};
use crate::wire;
use crate::RpcClient;
use std::ops::ControlFlow;
use std::time::Duration;

use crate::request::ClientOptions;

mod check;
use check::check_fib;

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FibonacciReply {
    /// fib(n) in decimal.
    pub value: String,
    /// The `x-rpc-server` header, if the server sent one (ours do; tutorial servers don't).
    pub server: Option<String>,
    /// From publishing the request to receiving the reply.
    pub elapsed: Duration,
    /// The trace the call belongs to, if it was traced (see [`FibonacciRpcClient::set_parent`]
    /// and [`FibonacciRpcClient::set_trace`]).
    pub trace_id: Option<TraceId>,
}

/// A connection to the broker that calls fib(n) remotely.
pub struct FibonacciRpcClient {
    rpc: RpcClient,
    parent: Option<TraceContext>,
    /// Whether a reply must be fib(n) ([`check_fib`]), not only a decimal number.
    checked: bool,
}

/// How a call of fib(`n`) is named in messages (`no reply for fib(30) within …`).
fn describe(n: u64) -> String {
    format!("fib({n})")
}

/// The request for fib(`n`), a span of `parent` if there is one.
fn request(n: u64, parent: Option<&TraceContext>) -> RpcRequest {
    RpcRequest::new(wire::encode_request(n)).with_parent(parent.cloned())
}

/// The result in a reply to fib(`n`) as received: an error reply's [`Error::Server`], a body
/// that is not a decimal number, or not fib(n) ([`check_fib`]), an [`Error::BadReply`], or
/// fib(n) (the body's buffer, not a copy). Without `checked`, any decimal number passes.
fn fib_reply(n: u64, reply: RpcReply, checked: bool) -> Result<FibonacciReply, Error> {
    if let Some(err) = reply.error() {
        return Err(err);
    }
    let value = wire::parse_value(reply.body)?;
    if let Err(why) = if checked {
        check_fib(n, &value)
    } else {
        Ok(())
    } {
        let shown = &value[..value.len().min(40)];
        let more = if value.len() > 40 { "…" } else { "" };
        return Err(Error::BadReply(format!(
            "the server answered fib({n}) = {shown}{more}, which is wrong: {why}"
        )));
    }
    Ok(FibonacciReply {
        value,
        server: reply.server,
        elapsed: reply.elapsed,
        trace_id: reply.trace.map(|trace| trace.trace_id),
    })
}

impl FibonacciRpcClient {
    /// Connects to the first broker that answers, sets up the callback queue and starts
    /// consuming it. fib(n) is pure, so calls are idempotent whatever `options` says: after a
    /// lost connection every unanswered call is sent again (at-least-once).
    pub fn connect(options: &ClientOptions) -> Result<FibonacciRpcClient, Error> {
        let options = ClientOptions {
            idempotent: true,
            ..options.clone()
        };
        RpcClient::connect(&options).map(|rpc| FibonacciRpcClient {
            rpc,
            parent: None,
            checked: true,
        })
    }

    /// Whether each reply is checked to be fib(n) (the default), or only to be a decimal
    /// number. `rpc-client bench` turns the check off: it also measures servers that are no
    /// Fibonacci servers (`rpc-server -- cat` echoes n), comparing every reply with the first.
    pub fn set_checked(&mut self, checked: bool) {
        self.checked = checked;
    }

    /// Makes each following call a span of `parent` (a child of it, in its trace); `None`
    /// (the default): calls carry no trace context, unless [`FibonacciRpcClient::set_trace`]
    /// has them start a new trace each.
    pub fn set_parent(&mut self, parent: Option<TraceContext>) {
        self.parent = parent;
    }

    /// Whether calls without a parent start a new trace each ([`RpcClient::set_trace`]).
    pub fn set_trace(&mut self, start: bool) {
        self.rpc.set_trace(start);
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
    pub fn call_reply(&mut self, n: u64) -> Result<FibonacciReply, Error> {
        fib_reply(
            n,
            self.rpc
                .call_tagged(&request(n, self.parent.as_ref()), || describe(n))?,
            self.checked,
        )
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
        F: FnMut(usize, u64, Result<FibonacciReply, Error>) -> ControlFlow<()>,
    {
        let (parent, checked) = (self.parent.clone(), self.checked);
        self.rpc.call_many_tagged(
            numbers
                .into_iter()
                .map(move |n| (n, request(n, parent.as_ref()))),
            in_flight,
            |_, n| describe(*n),
            |index, n, result| {
                on_reply(
                    index,
                    n,
                    result.and_then(|reply| fib_reply(n, reply, checked)),
                )
            },
        )
    }

    /// Waits, for at most `within`, until a server consumes the request queue: see
    /// [`RpcClient::wait_for_server`].
    pub fn wait_for_server(&mut self, within: Duration) -> Result<Option<u32>, Error> {
        self.rpc.wait_for_server(within)
    }

    /// Changes how long each following call waits for its reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.rpc.set_timeout(timeout);
    }

    /// The name of this client's callback queue (the `reply_to` of its requests).
    pub fn reply_queue(&self) -> &str {
        self.rpc.reply_queue()
    }

    /// Closes the channel and the connection, reporting any error (dropping closes too). Takes
    /// at most [`CLOSE_LIMIT`](crate::CLOSE_LIMIT): a close the broker does not answer in time abandons the
    /// connection and reports [`Error::Stalled`].
    pub fn close(self) -> Result<(), Error> {
        self.rpc.close()
    }
}
