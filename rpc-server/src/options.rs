//! What a server is told ([`ServerOptions`]): broker, request queue, how to declare it,
//! prefetch, limits and reconnecting.

use crate::metrics::Metrics;
use rpc_client::{wire, BrokerOptions};
use std::sync::Arc;
use std::time::Duration;

/// Default for `--max-n`: fib(1,000,000) has 208,988 digits and takes well under a second.
pub const DEFAULT_MAX_N: u64 = 1_000_000;

/// Default for `--max-reply-bytes`: 8 MiB, half of RabbitMQ 4.x's default `max_message_size`
/// (16 MiB), which refuses larger messages by closing the channel.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// How the server declares the request queue when it does not exist yet.
///
/// An existing queue is always used as it is, whatever its type: tutorial servers of other
/// languages declare it classic or quorum, and all of them share one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum QueueType {
    /// A classic queue: durable, on one node; the fastest (measured in `scripts/xtask/README.md`).
    #[default]
    Classic,
    /// A replicated quorum queue (always durable), as today's tutorials declare it.
    Quorum,
}

/// Everything a server needs to run.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The brokers to try, in order (the nodes of a cluster, or just one). After a
    /// connection loss the server tries the next one first.
    pub brokers: Vec<BrokerOptions>,
    /// The request queue to consume.
    pub queue: String,
    /// Type of the queue if we have to declare it.
    pub queue_type: QueueType,
    /// Declare a classic queue transient (non-durable), as the original tutorial did; RabbitMQ
    /// 4.3 refuses such queues by default. Quorum queues are always durable.
    pub transient: bool,
    /// Unacknowledged requests the broker may hand this server at once: 1 spreads slow work
    /// evenly over servers, a higher value raises throughput for fast work.
    pub prefetch: u16,
    /// Requests handled at once, each on a worker thread of its own (at least 1); the
    /// prefetch is raised to at least this.
    pub workers: usize,
    /// Largest n served by Fibonacci ([`crate::run`]); larger requests get a `too-large` error
    /// reply.
    pub max_n: u64,
    /// Largest reply body published; a larger result gets a `too-large` error reply.
    pub max_reply_bytes: usize,
    /// Name sent in the `x-rpc-server` reply header and used in logs.
    pub name: String,
    /// Consecutive failed connection attempts after which the server gives up; `None`
    /// retries for ever.
    pub max_retries: Option<u32>,
    /// Longest wait between two connection attempts.
    pub max_backoff: Duration,
    /// Publish replies with publisher confirms and ack each request only once the broker
    /// confirmed its reply: a reply the broker refuses (nacks) or that is unconfirmed when the
    /// connection is lost sends its request back to the queue. Off by default: it costs
    /// throughput (see the README), and without it a request is acked after its reply is
    /// published, as in the tutorial.
    pub confirm_replies: bool,
    /// Start a new trace for each request without trace context (`--trace`). Off by default:
    /// such a request is not traced (no trace id logged, no `traceparent` on its reply), as
    /// with OpenTelemetry without a configured SDK; a request that carries one always is.
    pub start_traces: bool,
    /// Where the server counts what it does and says whether it is ready (served over HTTP
    /// by [`crate::http::Endpoint`] with `--metrics-addr`); `None` counts nothing.
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            brokers: vec![BrokerOptions::default()],
            queue: wire::DEFAULT_QUEUE.to_string(),
            queue_type: QueueType::Classic,
            transient: false,
            prefetch: 1,
            workers: 1,
            max_n: DEFAULT_MAX_N,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            name: default_name(),
            max_retries: None,
            max_backoff: Duration::from_secs(10),
            confirm_replies: false,
            start_traces: false,
            metrics: None,
        }
    }
}

impl ServerOptions {
    /// The prefetch asked of the broker: `prefetch`, raised to `workers` so that every worker
    /// can have a request.
    pub fn prefetch(&self) -> u16 {
        let workers = u16::try_from(self.workers).unwrap_or(u16::MAX);
        self.prefetch.max(workers).max(1)
    }
}

/// `<hostname>-<pid>`: unique enough to tell the servers of one queue apart.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rpc-server".to_string());
    format!("{host}-{}", std::process::id())
}
