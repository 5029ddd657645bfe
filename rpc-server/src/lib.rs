//! RPC over RabbitMQ, server side: serves Fibonacci (the tutorial's procedure), a command run
//! per request, or any Rust handler.
//!
//! # Layout
//!
//! - [`server`]: [`serve`], the consume loop (reply, then ack; reconnect after a loss) with a
//!   caller-supplied shutdown signal (Ctrl-C/SIGTERM in [`cli`], a channel in tests); [`run`]
//!   serves Fibonacci.
//! - [`handler`]: [`Handler`], what a server answers to one request; [`handler::Fibonacci`].
//! - [`command`]: [`command::CommandHandler`], a command run per request (stdin = request,
//!   stdout = reply), bounded in time and size.
//! - [`stream`]: [`stream::StreamHandler`], a program kept running per worker
//!   (`--protocol lines|json`), requests over its stdin and stdout.
//! - [`workers`]: the threads that run the handler, N requests at once.
//! - [`fib`]: exact Fibonacci numbers by fast doubling on big integers.
//! - [`queue`]: making sure the request queue exists, declared from the options if not.
//! - [`ack`]: acking answered requests several at a time.
//! - [`confirms`]: replies counted once the broker confirms them.
//! - [`redelivery`]: the rule for requests that keep coming back.
//! - backoff between connection attempts comes from `rpc_client::amqp::Reconnect`, shared with the
//!   recovering client.
//! - [`metrics`]: the Prometheus registry and readiness state ([`metrics::Metrics`]), and
//!   the consume loop's one-call-per-event handle on it ([`metrics::Meter`]).
//! - [`http`]: the `--metrics-addr` endpoint: `/metrics`, `/healthz`, `/readyz`.
//! - [`options`]: [`ServerOptions`] and [`QueueType`].
//! - [`error`]: [`Error`] and the exit codes of `rpc-server`.
//! - [`cli`]: `rpc-server`'s command line and [`cli::run`] (signals, logging).
//!
//! The wire contract, broker options and connection code live in the `rpc-client` crate
//! (`rpc_client::wire`, and `rpc_client::amqp` for broker options and connections), shared by
//! both.
#![deny(missing_docs)]

pub mod ack;
pub mod cli;
pub mod command;
pub mod confirms;
pub mod error;
pub mod fib;
pub mod handler;
pub mod http;
pub mod metrics;
pub mod options;
pub mod queue;
pub mod redelivery;
pub mod server;
pub mod stream;
pub mod workers;

pub use error::Error;
pub use handler::{Handler, Reply, Request};
pub use options::{QueueType, ServerOptions};
pub use server::{run, serve, Stats};
