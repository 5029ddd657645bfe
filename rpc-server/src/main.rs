//! `rpc-server`: answers fib(n) requests from a RabbitMQ queue until SIGINT or SIGTERM.

use clap::Parser;
use rpc_client::logging::LogArgs;
use rpc_client::{wire, BrokerArgs, BrokerOptions};
use rpc_server::config::{default_name, QueueType, DEFAULT_MAX_N};
use rpc_server::ServerOptions;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Serve Fibonacci RPC requests from a RabbitMQ queue (the tutorial-six contract).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Request queue to consume.
    #[arg(long, env = "RPC_QUEUE", default_value = wire::DEFAULT_QUEUE,
          value_parser = wire::parse_queue_name)]
    queue: String,

    /// Type of the request queue if this server has to declare it (an existing queue is used as is).
    #[arg(long, value_enum, default_value_t = QueueType::Classic)]
    queue_type: QueueType,

    /// Declare a classic request queue durable (quorum queues always are).
    #[arg(long)]
    durable: bool,

    /// Requests the broker may hand this server before it acks: 1 for slow work and fair
    /// dispatch over several servers, higher (e.g. 50) for many fast requests.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: u16,

    /// Largest n served; larger requests get an error reply.
    #[arg(long, default_value_t = DEFAULT_MAX_N)]
    max_n: u64,

    /// Name put in the x-rpc-server header of replies and in logs [default: HOSTNAME-PID].
    #[arg(long)]
    name: Option<String>,

    /// Give up after this many consecutive failed connection attempts [default: never].
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,

    /// Longest wait between two connection attempts, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10",
          value_parser = rpc_client::config::parse_seconds)]
    max_backoff: Duration,

    #[command(flatten)]
    broker: BrokerArgs,

    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // -q drops only the per-request lines; -qq leaves warnings and errors.
    let (level, requests) = match cli.log.quiet {
        1 => (log::LevelFilter::Info, log::LevelFilter::Off),
        _ => {
            let level = cli.log.level(log::LevelFilter::Info);
            (level, level)
        }
    };
    rpc_client::logging::init_levels(level, &[(rpc_server::server::REQUEST_LOG, requests)]);
    let name = cli.name.unwrap_or_else(default_name);
    let options = match cli.broker.to_options() {
        Ok(brokers) => ServerOptions {
            brokers: brokers
                .into_iter()
                .map(|broker| BrokerOptions {
                    client_name: format!("rpc-server {} ({name})", env!("CARGO_PKG_VERSION")),
                    ..broker
                })
                .collect(),
            queue: cli.queue,
            queue_type: cli.queue_type,
            durable: cli.durable,
            prefetch: cli.prefetch,
            max_n: cli.max_n,
            name,
            max_retries: cli.max_retries,
            max_backoff: cli.max_backoff,
        },
        Err(err) => {
            eprintln!("rpc-server: {err:#}");
            return ExitCode::from(2);
        }
    };
    let (stop, shutdown) = crossbeam_channel::bounded(1);
    let signals = AtomicUsize::new(0);
    let handler = move || {
        // The first signal asks for a clean stop; a second one forces the exit.
        if signals.fetch_add(1, Ordering::SeqCst) > 0 {
            eprintln!("rpc-server: second signal, exiting now");
            std::process::exit(130);
        }
        let _ = stop.try_send(());
    };
    if let Err(err) = ctrlc::set_handler(handler) {
        eprintln!("rpc-server: cannot install the signal handler: {err}");
        return ExitCode::FAILURE;
    }
    match rpc_server::run(&options, shutdown) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rpc-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}
