//! Fibonacci RPC over RabbitMQ, server side.
//!
//! # Layout
//!
//! - [`server`]: [`run`], the consume loop (reply, then ack) with a caller-supplied shutdown
//!   signal (Ctrl-C/SIGTERM in `main`, a channel in tests).
//! - [`fib`]: exact Fibonacci numbers by fast doubling on big integers.
//! - [`config`]: [`ServerOptions`] and how the request queue is declared.
//!
//! The wire contract, broker options and connection code live in the `rpc-client` crate
//! (`rpc_client::wire`, `rpc_client::config`, `rpc_client::connection`), shared by both.
#![deny(missing_docs)]

pub mod config;
pub mod fib;
pub mod server;

pub use config::{QueueType, ServerOptions};
pub use server::{run, Stats};
