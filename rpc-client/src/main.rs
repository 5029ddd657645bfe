//! `rpc-client N...`: prints fib(N) for each argument, one per line, computed by an rpc-server.
//! `rpc-client bench`: measures calls/s and latency.

use clap::{Parser, Subcommand};
use rpc_client::bench::{self, BenchOptions};
use rpc_client::error::exit_code;
use rpc_client::logging::LogArgs;
use rpc_client::{BrokerArgs, ClientOptions, Error, FibonacciRpcClient, ReplyQueue};
use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Duration;

/// Call fib(N) on an rpc-server through RabbitMQ and print the results, one per line.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES,
          subcommand_negates_reqs = true)]
struct Cli {
    /// The n of each fib(n) to compute; results are printed in this order.
    #[arg(required = true, value_name = "N", allow_negative_numbers = true)]
    numbers: Vec<u64>,

    /// Calls sent before waiting for replies (results are still printed in order).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    in_flight: u16,

    /// Request queue the servers consume.
    #[arg(long, env = "RPC_QUEUE", default_value = rpc_client::wire::DEFAULT_QUEUE, global = true,
          value_parser = rpc_client::wire::parse_queue_name)]
    queue: String,

    /// Seconds to wait for each reply.
    #[arg(long, value_name = "SECS", default_value = "30", global = true,
          value_parser = rpc_client::config::parse_seconds)]
    timeout: Duration,

    /// Where replies come back: an exclusive callback queue, or RabbitMQ's direct reply-to.
    #[arg(long, value_enum, default_value_t = ReplyQueue::Exclusive, global = true)]
    reply_queue: ReplyQueue,

    #[command(flatten)]
    broker: BrokerArgs,

    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
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

const EXIT_CODES: &str = "Exit codes: 0 all answered, 1 other error, 2 bad arguments, \
3 broker unreachable / login refused / connection lost, 4 timeout, 5 error reply from the server, \
6 no such request queue (no server has declared it).";

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init(log::LevelFilter::Warn);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rpc-client: {err:#}");
            let code = err
                .downcast_ref::<Error>()
                .map_or(exit_code::OTHER, Error::exit_code);
            ExitCode::from(code)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut brokers = cli
        .broker
        .to_options()
        .map_err(|e| Error::Config(format!("{e:#}")))?;
    for broker in &mut brokers {
        broker.client_name = format!("rpc-client {}", env!("CARGO_PKG_VERSION"));
    }
    let options = ClientOptions {
        brokers,
        queue: cli.queue.clone(),
        timeout: cli.timeout,
        reply_queue: cli.reply_queue,
    };
    let mut client = FibonacciRpcClient::connect(&options)?;
    match cli.command {
        None => print_results(&mut client, &cli.numbers, cli.in_flight.into())?,
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
            print_bench(&options, cli.reply_queue, &report, tsv)?;
            if let Some(first) = report.first_error {
                anyhow::bail!("{} of {calls} calls failed; first: {first}", report.errors);
            }
        }
    }
    client.close()?;
    Ok(())
}

/// Calls fib(n) for every n, printing results in argument order as they become available.
/// Stops at the first failure in that order, after printing everything before it.
fn print_results(
    client: &mut FibonacciRpcClient,
    numbers: &[u64],
    in_flight: usize,
) -> anyhow::Result<()> {
    let mut results: Vec<Option<Result<String, Error>>> = Vec::new();
    results.resize_with(numbers.len(), || None);
    let mut next = 0;
    let mut failure: Option<anyhow::Error> = None;
    let mut stdout = std::io::stdout().lock();
    client.call_many(numbers.iter().copied(), in_flight, |index, _, result| {
        results[index] = Some(result.map(|reply| reply.value));
        while let Some(done) = results.get_mut(next).and_then(Option::take) {
            next += 1;
            let printed = match done {
                Ok(value) => writeln!(stdout, "{value}"),
                Err(err) => {
                    failure = Some(err.into());
                    return ControlFlow::Break(());
                }
            };
            if let Err(err) = printed {
                // A closed pipe (`| head`) is the reader's choice, not our failure.
                if err.kind() != std::io::ErrorKind::BrokenPipe {
                    failure = Some(err.into());
                }
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    stdout.flush().or_else(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e),
    })?;
    failure.map_or(Ok(()), Err)
}

fn print_bench(
    options: &BenchOptions,
    reply_queue: ReplyQueue,
    report: &bench::BenchReport,
    tsv: bool,
) -> std::io::Result<()> {
    let reply_queue = match reply_queue {
        ReplyQueue::Exclusive => "exclusive",
        ReplyQueue::Direct => "direct",
    };
    let mut out = std::io::stdout().lock();
    if tsv {
        writeln!(
            out,
            "calls\tin_flight\treply_queue\tn\tseconds\tcalls_per_s\tp50_ms\tp90_ms\tp99_ms\tmax_ms\terrors"
        )?;
        writeln!(
            out,
            "{}\t{}\t{reply_queue}\t{}\t{:.3}\t{:.0}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{}",
            report.calls,
            options.in_flight,
            options.n,
            report.elapsed.as_secs_f64(),
            report.rate(),
            report.latency_ms(0.5),
            report.latency_ms(0.9),
            report.latency_ms(0.99),
            report.max_ms(),
            report.errors
        )
    } else {
        writeln!(
            out,
            "bench: {} calls of fib({}), {} in flight, {reply_queue} reply queue",
            report.calls, options.n, options.in_flight
        )?;
        writeln!(
            out,
            "bench: {:.0} calls/s ({:.3} s); latency ms p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}; errors {}",
            report.rate(),
            report.elapsed.as_secs_f64(),
            report.latency_ms(0.5),
            report.latency_ms(0.9),
            report.latency_ms(0.99),
            report.max_ms(),
            report.errors
        )
    }
}
