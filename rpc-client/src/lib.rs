//! Fibonacci RPC over RabbitMQ, client side, and the pieces both binaries share.
//!
//! # Layout
//!
//! Calling:
//! - [`rpc`]: [`RpcClient`], one connection making raw calls ([`RpcRequest`] in, [`RpcReply`]
//!   out: bytes, content type, headers) and matching replies by correlation id; its
//!   [`ClientOptions`].
//! - `session` (private): one connection's worth of calling: the channel with publisher
//!   confirms, the callback queue, requests not confirmed yet; [`RpcClient`] opens a new one
//!   after a lost connection.
//! - [`client`]: [`FibonacciRpcClient`], fib(n) calls on top of [`RpcClient`].
//! - [`wire`]: the tutorial-six wire contract (request and reply bodies, properties, error
//!   replies), used by the server crate too.
//! - [`error`]: [`Error`] and the exit codes of `rpc-client` ([`error::exit_code`]).
//! - [`text`]: text from the network made printable and bounded.
//!
//! Reaching the broker (shared with `rpc-server`):
//! - [`uri`]: [`BrokerOptions`], `amqp://` URIs and password masking.
//! - [`connection`]: opening a connection (TCP_NODELAY, connect timeout, first of several
//!   brokers).
//! - [`tls`]: CA files and the TLS connector for `amqps://`.
//! - [`watchdog`]: time limits on each broker round trip; a stalled connection is abandoned.
//! - [`consume`]: consuming a queue; the client's callback queue.
//! - [`random`]: shuffling brokers and jittering backoff.
//! - [`reconnect`]: backoff between connection attempts (0.1 s doubling, jitter), shared with
//!   the server.
//!
//! The command line (shared flags, then `rpc-client`'s own):
//! - [`args`]: broker, log and `--generate` flags of both binaries; the only module that knows
//!   flag names.
//! - [`logging`]: the stderr logger; callers name their own log targets.
//! - [`cli`]: `rpc-client`'s command line and [`cli::run`].
//! - [`output`]: results printed in argument order: values, reply bodies, or JSON lines.
//! - [`json`]: JSON strings and base64 for `rpc-client call --json`.
//! - [`bench`]: `rpc-client bench`, throughput and latency percentiles.
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

pub mod amqp;
#[cfg(feature = "cli")]
pub mod cli;
mod client;
mod error;
mod fibonacci;
mod in_flight;
mod request;
mod session;
#[cfg(feature = "test-support")]
pub mod testing;
mod text;
mod trace;
pub mod wire;

pub use amqp::BrokerOptions;
#[cfg(feature = "cli")]
pub use cli::BrokerArgs;
pub use client::RpcClient;
pub use error::{exit_code, Error};
pub use fibonacci::{FibonacciRpcClient, Reply};
pub use request::{
    ClientOptions, ReplyQueue, RpcReply, RpcRequest, CLOSE_LIMIT, DIRECT_REPLY_TO,
    MAX_SHORT_STRING, PROBE_LIMIT,
};
pub use trace::{TraceContext, TraceId};
