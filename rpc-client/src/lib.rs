//! Fibonacci RPC over RabbitMQ, client side, and the pieces both binaries share.
//!
//! # Layout
//!
//! Modules are private; what a library user needs is re-exported here, and the two layers
//! the server shares are public modules of their own ([`amqp`], [`wire`]).
//!
//! Calling (the root):
//! - `client` (with `client/batch`): [`RpcClient`], one connection making raw calls
//!   ([`RpcRequest`] in, [`RpcReply`] out: bytes, content type, headers), recovering from a
//!   lost connection, matching replies by correlation id.
//! - `request`: [`ClientOptions`], [`ReplyQueue`], [`RpcRequest`] (checked against what AMQP
//!   can carry, [`MAX_SHORT_STRING`]) and [`RpcReply`].
//! - `in_flight`: the calls of a batch awaiting replies: by correlation id, next deadline,
//!   to send again, refused; pure bookkeeping, unit-tested without a broker.
//! - `session`: one connection's worth of calling: the channel with publisher confirms, the
//!   callback queue, requests not confirmed yet; [`RpcClient`] opens a new one after a lost
//!   connection.
//! - `fibonacci`: [`FibonacciRpcClient`], fib(n) calls on top of [`RpcClient`].
//! - `error`: [`Error`] and the exit codes of `rpc-client` ([`exit_code`]).
//! - `trace`: W3C trace context ([`TraceContext`]).
//! - `text`: text from the network made printable and bounded ([`wire::printable`]).
//!
//! Shared with `rpc-server`:
//! - [`wire`]: the tutorial-six wire contract (request and reply bodies, properties, error
//!   replies, trace headers), on [`Properties`].
//! - [`amqp`]: reaching the broker: [`BrokerOptions`] and `amqp://` URIs, opening a
//!   connection (TCP_NODELAY, connect timeout, first of several brokers, TLS), reading the
//!   broker through a depth guard (no message's headers, however deep they nest, can
//!   overflow the decoder's stack: a program using the library needs no set-up for it), a
//!   watchdog bounding each round trip, consuming a queue, backoff between connection
//!   attempts; its failures are [`LinkError`]s (the calling layer reports them as [`Error`]s,
//!   with the same messages). Knows nothing of calls. Its items that hand over the AMQP library's own
//!   types are hidden: for `rpc-server`, no stability promise.
//! - `properties`: [`Properties`], [`Headers`] and [`HeaderValue`], a message's properties and
//!   headers in our own types; the one conversion from and to the AMQP library's.
//! - [`cli`] (feature `cli`, on by default): the flags both binaries share (broker, logging,
//!   `--generate`; the only module that knows flag names), the stderr logger, and
//!   `rpc-client`'s own command line ([`cli::run`]) with its output, JSON and `bench`. Without
//!   the feature (`default-features = false`) the library builds without clap, env_logger or
//!   hdrhistogram, and the `rpc-client` binary is not built.
//! - `testing` (feature `test-support`): helpers for tests against a real broker.
//!
//! Calling fib(n):
//!
//! ```no_run
//! use rpc_client::{ClientOptions, FibonacciRpcClient};
//! let mut client = FibonacciRpcClient::connect(&ClientOptions::default())?;
//! assert_eq!(client.call(30)?, "832040");
//! # Ok::<(), rpc_client::Error>(())
//! ```
//!
//! Any request, as bytes, to a server of your own on queue `echo`:
//!
//! ```no_run
//! use rpc_client::{ClientOptions, RpcClient, RpcRequest};
//! let options = ClientOptions {
//!     queue: "echo".into(),
//!     ..ClientOptions::default()
//! };
//! let mut client = RpcClient::connect(&options)?;
//! let reply = client.call(&RpcRequest::new(b"\x00\x01 any bytes".to_vec()))?;
//! println!("{:?} from {:?}", reply.body, reply.server);
//! # Ok::<(), rpc_client::Error>(())
//! ```
#![deny(missing_docs)]
// A bare `pub` only on what the crate's API exports (lapin does the same).
#![warn(unreachable_pub)]

pub mod amqp;
#[cfg(feature = "cli")]
pub mod cli;
mod client;
mod error;
mod fibonacci;
mod in_flight;
mod properties;
mod request;
mod session;
#[cfg(feature = "test-support")]
pub mod testing;
mod text;
mod trace;
pub mod wire;

pub use amqp::{AmqpError, BrokerOptions, LinkError};
#[cfg(feature = "cli")]
pub use cli::BrokerArgs;
pub use client::RpcClient;
pub use error::{exit_code, Error};
pub use fibonacci::{FibonacciReply, FibonacciRpcClient};
pub use properties::{HeaderValue, Headers, Properties, ReadProperties};
pub use request::{
    ClientOptions, ReplyQueue, RpcReply, RpcRequest, CLOSE_LIMIT, DIRECT_REPLY_TO,
    MAX_SHORT_STRING, PROBE_LIMIT,
};
pub use trace::{TraceContext, TraceId};
