//! RPC over RabbitMQ, server side: serves Fibonacci (the tutorial's procedure), a command run
//! per request, or any Rust handler.
//!
//! # Layout
//!
//! Public modules (the rest is re-exported at the root where it is public):
//!
//! - [`handler`]: [`Handler`], what a server answers to one request; [`handler::Fibonacci`].
//! - [`command`]: [`command::CommandHandler`], a command run per request (stdin = request,
//!   stdout = reply), bounded in time and size: its options, the replies to how a run ended;
//!   [`command::contain`], [`command::end_all`], [`command::guard`] re-exported from `child`.
//! - [`stream`]: [`stream::StreamHandler`], a program kept running per worker
//!   (`--protocol lines|json`), requests over its stdin and stdout.
//! - [`fib`]: exact Fibonacci numbers by fast doubling on big integers.
//! - [`metrics`]: the Prometheus registry and readiness state ([`metrics::Metrics`]), and
//!   the consume loop's one-call-per-event handle on it ([`metrics::Meter`]).
//! - [`http`]: the `--metrics-addr` endpoint: `/metrics`, `/healthz`, `/readyz`.
//! - [`options`]: [`ServerOptions`] and [`QueueType`].
//! - [`error`]: [`Error`] and the exit codes of `rpc-server`.
//! - [`cli`]: `rpc-server`'s command line and [`cli::run`] (signals, logging).
//!
//! Private modules:
//!
//! - `child`: the child-process toolkit of [`command`] and [`stream`], siblings on top of it:
//!   `program.rs` (finding the program, its environment), `process.rs` and `kill.rs` (process
//!   groups in hand, killing, reaping, orphans), `guardian.rs`, `pipes.rs` (the `poll` loop
//!   over stdin, stdout and stderr with its size and time bounds), `stderr.rs` (to the log).
//! - `server`: [`serve`], the consume loop (reply, then ack; reconnect after a loss) with a
//!   caller-supplied shutdown signal (Ctrl-C/SIGTERM in [`cli`], a channel in tests); [`run`]
//!   serves Fibonacci. `server/mod.rs` is the server across connections (connecting,
//!   consuming, the clean stop, reconnecting); `serving.rs` one connection's serving (admit
//!   a request, reply, ack, confirms); `owed.rs` its bookkeeping (requests in hand, acks
//!   due, replies awaiting a confirm) and `rules.rs` its decisions, both without a broker
//!   and unit-tested; `requeue.rs` re-queuing a request that came back.
//! - `server::workers`: the threads that run the handler, N requests at once.
//! - `server::queue`: making sure the request queue exists, declared from the options if not.
//! - `server::ack`: acking answered requests several at a time.
//! - `server::confirms`: replies counted once the broker confirms them.
//! - `server::redelivery`: the rule for requests that keep coming back ([`ATTEMPTS_HEADER`],
//!   [`MAX_DELIVERIES`]).
//! - backoff between connection attempts comes from `rpc_client::amqp::Reconnect`, shared with
//!   the recovering client.
//!
//! The wire contract, broker options and connection code live in the `rpc-client` crate
//! (`rpc_client::wire`, and `rpc_client::amqp` for broker options and connections), shared by
//! both. Connections read the broker through `rpc_client::amqp::DepthGuard`, so no message
//! crashes a program that serves with this library, however deep its headers nest (a request
//! nesting more than `rpc_client::wire::MAX_HEADER_DEPTH` levels is refused before any
//! handler sees it); no set-up is needed for it.
#![deny(missing_docs)]
// A bare `pub` only on what the crate's API exports (lapin does the same).
#![warn(unreachable_pub)]

mod child;
pub mod cli;
pub mod command;
pub mod error;
pub mod fib;
pub mod handler;
pub mod http;
pub mod metrics;
pub mod options;
mod server;
pub mod stream;

pub use command::{CommandHandler, CommandOptions};
pub use error::Error;
pub use handler::{Handler, Reply, Request};
pub use options::{QueueType, ServerOptions};
pub use server::redelivery::{ATTEMPTS_HEADER, MAX_DELIVERIES};
pub use server::{run, serve, Stats, STOP_LIMIT};
