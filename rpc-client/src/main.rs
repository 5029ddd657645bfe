//! `rpc-client N...`: prints fib(N) for each argument, one per line, computed by an rpc-server.

use clap::Parser;
use rpc_client::error::exit_code;
use rpc_client::logging::LogArgs;
use rpc_client::{BrokerArgs, ClientOptions, FibonacciRpcClient};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Call fib(N) on an rpc-server through RabbitMQ and print the results, one per line.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// The n of each fib(n) to compute, in order.
    #[arg(required = true, value_name = "N", allow_negative_numbers = true)]
    numbers: Vec<u64>,

    /// Request queue the servers consume.
    #[arg(long, env = "RPC_QUEUE", default_value = rpc_client::wire::DEFAULT_QUEUE)]
    queue: String,

    /// Seconds to wait for each reply.
    #[arg(long, value_name = "SECS", default_value = "30",
          value_parser = rpc_client::config::parse_seconds)]
    timeout: Duration,

    #[command(flatten)]
    broker: BrokerArgs,

    #[command(flatten)]
    log: LogArgs,
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
                .downcast_ref::<rpc_client::Error>()
                .map_or(exit_code::OTHER, rpc_client::Error::exit_code);
            ExitCode::from(code)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut broker = cli
        .broker
        .to_options()
        .map_err(|e| rpc_client::Error::Config(format!("{e:#}")))?;
    broker.client_name = format!("rpc-client {}", env!("CARGO_PKG_VERSION"));
    let options = ClientOptions {
        broker,
        queue: cli.queue.clone(),
        timeout: cli.timeout,
    };
    let mut client = FibonacciRpcClient::connect(&options)?;
    let mut stdout = std::io::stdout().lock();
    for &n in &cli.numbers {
        let value = client.call(n)?;
        if let Err(err) = writeln!(stdout, "{value}").and_then(|()| stdout.flush()) {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(err.into());
        }
    }
    client.close()?;
    Ok(())
}
