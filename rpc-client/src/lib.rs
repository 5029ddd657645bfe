//! Fibonacci RPC over RabbitMQ, client side, and the pieces both binaries share.
//!
//! # Layout
//!
//! - [`client`]: [`FibonacciRpcClient`], one connection making calls and matching replies by
//!   correlation id.
//! - [`bench`]: `rpc-client bench`, throughput and latency percentiles of many calls.
//! - [`wire`]: the tutorial-six wire contract (request and reply bodies, properties, error
//!   replies), used by the server crate too.
//! - [`config`]: broker flags, `amqp://` URIs and password masking.
//! - [`connection`]: opening a connection with `TCP_NODELAY` and a connect timeout.
//! - [`error`]: [`Error`] and the exit codes of `rpc-client`.
//! - [`logging`]: `-v`/`-q` and the stderr logger.
//! - `testing` (feature `test-support`): helpers for tests against a real broker.
//!
//! ```no_run
//! use rpc_client::{ClientOptions, FibonacciRpcClient};
//! let mut client = FibonacciRpcClient::connect(&ClientOptions::default())?;
//! assert_eq!(client.call(30)?, "832040");
//! # Ok::<(), rpc_client::Error>(())
//! ```
#![deny(missing_docs)]

pub mod bench;
pub mod client;
pub mod config;
pub mod connection;
pub mod error;
pub mod logging;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod wire;

pub use client::{ClientOptions, FibonacciRpcClient, Reply, ReplyQueue};
pub use config::{BrokerArgs, BrokerOptions};
pub use error::Error;
