//! The `rpc-client` command line: its flags ([`Cli`]) and what it does with them ([`run`]).

use crate::args::{parse_seconds, CommonArgs};
use crate::bench::{self, BenchOptions};
use crate::client::{ClientOptions, FibonacciRpcClient, ReplyQueue};
use crate::error::{exit_code, Error};
use crate::output::{ignore_broken_pipe, print_in_order, PrintError};
use crate::{logging, wire};
use clap::{CommandFactory, Subcommand};
use std::time::Duration;

/// Call fib(N) on an rpc-server through RabbitMQ and print the results, one per line.
#[derive(Debug, clap::Parser)]
#[command(name = "rpc-client", version, about,
          after_help = exit_code::help(exit_code::TABLE),
          subcommand_negates_reqs = true)]
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
}

/// Runs the command line: prints the results (or the benchmark, or what `--generate` asks
/// for) on stdout; logs go to stderr.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(printed) = cli.common.generate.print(Cli::command()) {
        return Ok(printed?);
    }
    logging::init(
        cli.common.log.level(log::LevelFilter::Warn),
        &[("rpc_client", cli.common.log.level(log::LevelFilter::Warn))],
    );
    let client_name = format!("rpc-client {}", env!("CARGO_PKG_VERSION"));
    let options = ClientOptions {
        brokers: cli.common.broker.to_options(&client_name)?,
        queue: cli.queue,
        timeout: cli.timeout,
        reply_queue: cli.reply_queue,
    };
    let mut client = FibonacciRpcClient::connect(&options)?;
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        None => print_in_order(&mut client, &cli.numbers, cli.in_flight.into(), &mut stdout)?,
        Some(Command::Bench {
            calls,
            in_flight,
            n,
            warmup,
            tsv,
        }) => {
            let options = BenchOptions {
                calls,
                in_flight: in_flight.into(),
                n,
                warmup,
                progress: true,
            };
            let report = bench::run(&mut client, &options)?;
            ignore_broken_pipe(report.write(&mut stdout, &options, cli.reply_queue, tsv))?;
            if let Some(first) = report.first_error {
                anyhow::bail!("{} of {calls} calls failed; first: {first}", report.errors);
            }
        }
    }
    // Every result is out: a close the broker cannot finish is not the calls' failure.
    if let Err(err) = client.close() {
        log::warn!("{err}");
    }
    Ok(())
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
        crate::args::check_command(Cli::command());
    }
}
