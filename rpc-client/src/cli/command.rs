//! The `rpc-client` command line: its flags ([`Cli`]) and what it does with them ([`run`]).

use super::args::{parse_seconds, CommonArgs};
use super::bench::{self, BenchOptions};
use super::logging;
use super::output::{ignore_broken_pipe, print_in_order, print_replies_in_order};
use super::output::{PrintError, ReplyFormat};
use crate::error::{exit_code, Error};
use crate::request::{check_short_string, ClientOptions, ReplyQueue, RpcRequest};
use crate::trace::TraceContext;
use crate::wire;
use crate::FibonacciRpcClient;
use crate::RpcClient;
use clap::{CommandFactory, Subcommand};
use std::io::Read;
use std::time::Duration;

/// The largest body `rpc-client call -` reads from stdin: 16 MiB.
pub const MAX_STDIN_BODY: usize = 16 << 20;

/// Call fib(N) on an rpc-server through RabbitMQ and print the results, one per line.
#[derive(Debug, clap::Parser)]
#[command(name = "rpc-client", version, about,
          after_help = exit_code::help(exit_code::TABLE),
          subcommand_negates_reqs = true,
          override_usage = "rpc-client [OPTIONS] N...\n       rpc-client [OPTIONS] call [BODY]...\n       rpc-client [OPTIONS] bench")]
pub struct Cli {
    /// The n of each fib(n) to compute; results are printed in this order.
    #[arg(
        required_unless_present = "generate",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub numbers: Vec<u64>,

    /// Calls sent before waiting for replies (results are still printed in order).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub in_flight: u16,

    /// Request queue the servers consume.
    #[arg(long, env = "RPC_QUEUE", default_value = wire::DEFAULT_QUEUE, global = true,
          value_parser = wire::parse_queue_name)]
    pub queue: String,

    /// Seconds to wait for each reply.
    #[arg(long, value_name = "SECS", default_value = "30", global = true,
          value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Where replies come back: an exclusive callback queue, or RabbitMQ's direct reply-to.
    #[arg(long, value_enum, default_value_t = ReplyQueue::Exclusive, global = true)]
    pub reply_queue: ReplyQueue,

    /// Before the first call, wait up to SECS until a server consumes the queue: for a server
    /// started just before (`rpc-server ... &`). Without it a missing queue fails at once
    /// (exit 6); with it, once SECS have passed without the queue.
    #[arg(long, value_name = "SECS", global = true, value_parser = parse_seconds)]
    pub wait_for_server: Option<Duration>,

    /// Start a new W3C trace for each call and send its `traceparent`. Without it, calls
    /// carry trace context only when TRACEPARENT holds a parent (each call is then its child).
    #[arg(long, global = true)]
    pub trace: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,

    /// What to do instead of printing fib(N).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `rpc-client` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make many calls of one fib(n) and print calls/s and latency percentiles.
    Bench {
        /// Calls to time.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
        calls: u64,
        /// Calls outstanding at once (1 = sequential).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        in_flight: u16,
        /// The n of every call.
        #[arg(long, default_value_t = 30)]
        n: u64,
        /// Untimed calls made first.
        #[arg(long, default_value_t = 500)]
        warmup: u64,
        /// One tab-separated header line and one result line instead of prose.
        #[arg(long)]
        tsv: bool,
    },
    /// Send each BODY as a raw request and print each reply's body, in argument order.
    ///
    /// A reply body is printed as received, followed by a newline unless it ends with one.
    /// An error reply stops the calls (exit 5), except with --json. A call that fails here
    /// (no reply in time, no queue, connection lost) stops the calls, also with --json: its
    /// message goes to stderr and the exit code says which.
    #[command(after_help = exit_code::help(exit_code::TABLE))]
    Call {
        /// A request body: the argument's UTF-8 bytes, or `-` for all of stdin (at most
        /// 16 MiB; one `-` only). Put `--` before bodies that start with `-`.
        #[arg(required = true, value_name = "BODY")]
        bodies: Vec<String>,
        /// A request header, NAME=VALUE, split at the first `=` (repeatable).
        #[arg(long = "header", value_name = "K=V", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// The requests' content type.
        #[arg(long, value_name = "TYPE", value_parser = parse_content_type)]
        content_type: Option<String>,
        /// One JSON object per reply and line: body (UTF-8 text, or base64 with "encoding":
        /// "base64"), encoding, content_type, headers, server, trace_id, elapsed_ms; an error
        /// reply is {"error": {"code", "message"}, "server", "trace_id", "elapsed_ms"} and the
        /// calls go on (exit 5 at the end).
        #[arg(long)]
        json: bool,
        /// Calls sent before waiting for replies (replies are still printed in order).
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
        in_flight: u16,
        /// The procedure is safe to run twice: after a lost connection, send again requests
        /// that may already have run (at-least-once). Without it such a call fails with exit
        /// 3, saying it may or may not have run (at-most-once); requests the broker never
        /// took are sent again either way.
        #[arg(long)]
        idempotent: bool,
    },
}

/// Parses `--header K=V`: split at the first `=`; K not empty and at most 255 bytes.
pub(super) fn parse_header(text: &str) -> Result<(String, String), String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err("expected NAME=VALUE (no '=' in it)".into());
    };
    if name.is_empty() {
        return Err("the header name (before '=') is empty".into());
    }
    check_short_string("the header name", name)?;
    Ok((name.to_string(), value.to_string()))
}

/// Parses `--content-type`: at most 255 bytes.
pub(super) fn parse_content_type(text: &str) -> Result<String, String> {
    check_short_string("the content type", text)?;
    Ok(text.to_string())
}

/// The request bodies of `rpc-client call`: each argument's bytes, or for `-` all of `stdin`
/// (at most `limit` bytes). More than one `-`, or more than `limit` bytes on stdin, is an
/// [`Error::Config`] (exit 2).
pub(super) fn read_bodies(
    bodies: Vec<String>,
    stdin: impl Read,
    limit: usize,
) -> anyhow::Result<Vec<Vec<u8>>> {
    if bodies.iter().filter(|body| *body == "-").count() > 1 {
        return Err(Error::Config("only one BODY may be '-' (stdin)".into()).into());
    }
    let mut stdin = Some(stdin);
    let mut read_bodies = Vec::with_capacity(bodies.len());
    for body in bodies {
        let Some(input) = stdin.take_if(|_| body == "-") else {
            read_bodies.push(body.into_bytes());
            continue;
        };
        let mut read = Vec::new();
        let max = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        input
            .take(max)
            .read_to_end(&mut read)
            .map_err(|e| anyhow::anyhow!("cannot read the body from stdin: {e}"))?;
        if read.len() > limit {
            return Err(Error::Config(format!(
                "stdin holds more than {} MiB: a body read from stdin ('-') is at most that",
                limit >> 20
            ))
            .into());
        }
        read_bodies.push(read);
    }
    Ok(read_bodies)
}

/// Runs the command line: prints the results (or the benchmark, or what `--generate` asks
/// for) on stdout; logs go to stderr.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(printed) = cli.common.generate.print(Cli::command()) {
        return Ok(printed?);
    }
    logging::init(
        cli.common.log.level(log::LevelFilter::Warn),
        cli.common.log.log_format,
        &[("rpc_client", cli.common.log.level(log::LevelFilter::Warn))],
    );
    let client_name = format!("rpc-client {}", env!("CARGO_PKG_VERSION"));
    let options = ClientOptions {
        brokers: cli.common.broker.to_options(&client_name)?,
        queue: cli.queue,
        timeout: cli.timeout,
        reply_queue: cli.reply_queue,
        ..ClientOptions::default()
    };
    // Trace context only when tracing is in use: a parent in TRACEPARENT, or --trace.
    let parent = TraceContext::from_env();
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        None => {
            let mut client = FibonacciRpcClient::connect(&options)?;
            wait_for_server(cli.wait_for_server, &options.queue, |within| {
                client.wait_for_server(within)
            })?;
            client.set_parent(parent);
            client.set_trace(cli.trace);
            print_in_order(&mut client, &cli.numbers, cli.in_flight.into(), &mut stdout)?;
            close(client.close());
        }
        Some(Command::Call {
            bodies,
            headers,
            content_type,
            json,
            in_flight,
            idempotent,
        }) => {
            let requests: Vec<RpcRequest> =
                read_bodies(bodies, std::io::stdin().lock(), MAX_STDIN_BODY)?
                    .into_iter()
                    .map(|body| RpcRequest {
                        body,
                        content_type: content_type.clone(),
                        headers: headers.clone(),
                        trace: parent.clone(),
                    })
                    .collect();
            let format = if json {
                ReplyFormat::Json
            } else {
                ReplyFormat::Body
            };
            let options = ClientOptions {
                idempotent,
                ..options
            };
            let mut client = RpcClient::connect(&options)?;
            client.set_trace(cli.trace);
            wait_for_server(cli.wait_for_server, &options.queue, |within| {
                client.wait_for_server(within)
            })?;
            print_replies_in_order(
                &mut client,
                &requests,
                in_flight.into(),
                format,
                &mut stdout,
            )?;
            close(client.close());
        }
        Some(Command::Bench {
            calls,
            in_flight,
            n,
            warmup,
            tsv,
        }) => {
            let bench_options = BenchOptions {
                calls,
                in_flight: in_flight.into(),
                n,
                warmup,
                progress: true,
            };
            let mut client = FibonacciRpcClient::connect(&options)?;
            // Echo servers too: each reply is compared with the first (bench::run).
            client.set_checked(false);
            client.set_parent(parent);
            client.set_trace(cli.trace);
            wait_for_server(cli.wait_for_server, &options.queue, |within| {
                client.wait_for_server(within)
            })?;
            let report = bench::run(&mut client, &bench_options)?;
            ignore_broken_pipe(report.write(&mut stdout, &bench_options, cli.reply_queue, tsv))?;
            close(client.close());
            if let Some(first) = report.first_error {
                anyhow::bail!("{} of {calls} calls failed; first: {first}", report.errors);
            }
        }
    }
    Ok(())
}

/// `--wait-for-server`: waits `within` for a server of `queue` and says on stderr when none
/// came; the calls then fail (no queue: exit 6) or wait for their replies as they would have
/// without the wait.
fn wait_for_server(
    within: Option<Duration>,
    queue: &str,
    wait: impl FnOnce(Duration) -> Result<Option<u32>, Error>,
) -> Result<(), Error> {
    let Some(within) = within else {
        return Ok(());
    };
    let (queue, secs) = (crate::text::printable(queue), within.as_secs_f64());
    log::info!("waiting up to {secs:.1} s for a server on queue '{queue}'");
    match wait(within)? {
        None => log::warn!("waited {secs:.1} s (--wait-for-server): still no queue '{queue}'"),
        Some(0) => log::warn!(
            "waited {secs:.1} s (--wait-for-server): queue '{queue}' has no consumer; calling \
             anyway"
        ),
        Some(consumers) => log::debug!("queue '{queue}' has {consumers} consumer(s)"),
    }
    Ok(())
}

/// Every result is out: a close the broker cannot finish is not the calls' failure.
fn close(closed: Result<(), Error>) {
    if let Err(err) = closed {
        log::warn!("{err}");
    }
}

/// The exit code for an error [`run`] returned.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match (
        err.downcast_ref::<Error>(),
        err.downcast_ref::<PrintError>(),
    ) {
        (Some(err), _) | (_, Some(PrintError::Call(err))) => err.exit_code(),
        _ => exit_code::OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        super::super::args::check_command(Cli::command());
    }

    #[test]
    fn headers() {
        let ok = |text: &str| parse_header(text).expect("valid");
        assert_eq!(ok("k=v"), ("k".into(), "v".into()));
        assert_eq!(ok("k=a=b"), ("k".into(), "a=b".into()));
        assert_eq!(ok("k="), ("k".into(), String::new()));
        assert!(parse_header("k").is_err());
        assert!(parse_header("=v").is_err());
        assert!(parse_header(&format!("{}=v", "k".repeat(256))).is_err());
        assert!(parse_content_type(&"t".repeat(255)).is_ok());
        assert!(parse_content_type(&"t".repeat(256)).is_err());
    }

    #[test]
    fn bodies_from_arguments_and_stdin() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let stdin = &b"from\nstdin\xff"[..];
        let bodies = read_bodies(args(&["a", "-", ""]), stdin, 100).expect("read");
        assert_eq!(bodies, [&b"a"[..], b"from\nstdin\xff", b""]);
        // Exactly at the limit is fine; one byte over is a usage error.
        assert!(read_bodies(args(&["-"]), stdin, stdin.len()).is_ok());
        let over = read_bodies(args(&["-"]), stdin, stdin.len() - 1).expect_err("too long");
        assert!(
            matches!(over.downcast_ref(), Some(Error::Config(_))),
            "{over}"
        );
        let twice = read_bodies(args(&["-", "x", "-"]), stdin, 100).expect_err("two dashes");
        assert!(twice.to_string().contains("only one"), "{twice}");
    }
}
