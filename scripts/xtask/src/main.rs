//! `xtask`: the chores of the scripts in `scripts/` that are not OS work, in Rust beside the
//! code they serve: reading the broker's address, masking passwords, queue admin through the
//! broker, and the benchmark (`cargo xtask bench`, see [`mod@bench`]). Bash keeps apt, Erlang
//! nodes, openssl and the Python venv.
//!
//! Scripts build it once (`cargo build --release`, lib.sh) and run `target/release/xtask`;
//! by hand, `cargo xtask ...` (the alias in `.cargo/config.toml`) does both.
//! The broker comes from the flags and environment the binaries share
//! ([`rpc_client::BrokerArgs`]: `--uri` / `AMQP_URI`, a comma-separated list, the first node
//! that answers; else `AMQP_HOST`, `AMQP_PORT`, ...), with two defaults of its own: host
//! 127.0.0.1 and a 3 s connect timeout. Nothing here prints a password.

mod bench;
mod broker;

use anyhow::{bail, Context as _, Result};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use rpc_client::testing::{wait_for_consumer_count, Admin, Consumers};
use rpc_client::{BrokerArgs, BrokerOptions};
use std::io::BufRead as _;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "xtask",
    version,
    about = "Development chores of scripts/ (not installed)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print "HOST PORT amqp|amqps local|remote" (tab-separated) of the broker scripts/broker.sh
    /// checks: the first of the brokers (default 127.0.0.1:5672); local when the host is an
    /// address of this machine.
    BrokerAddr,
    /// Succeed if HOST:PORT answers the AMQP 0-9-1 protocol header with Connection.Start
    /// (with --tcp: if it accepts TCP connections), within the timeout. HOST and PORT are
    /// what is probed, whatever the broker flags and AMQP_* variables say.
    Probe {
        // Ids of their own: as "host" and "port" they were the broker flags' (global) ids,
        // so an exported AMQP_URI, which conflicts with those, refused every probe.
        #[arg(id = "probe_host", value_name = "HOST")]
        host: String,
        #[arg(id = "probe_port", value_name = "PORT")]
        port: u16,
        #[arg(long)]
        tcp: bool,
        /// Seconds for the connect and the answer, each.
        #[arg(long, value_name = "SECS", default_value_t = 3.0)]
        timeout: f64,
    },
    /// Print the broker's product, version and platform, as it announces them.
    BrokerVersion,
    /// Print each URI (the arguments, or else the lines of stdin, which keeps passwords out of
    /// `ps`) with its password masked.
    MaskUri {
        /// Fail on a URI that is not a valid amqp:// or amqps:// broker URI.
        #[arg(long)]
        check: bool,
        uris: Vec<String>,
    },
    /// Queue chores through the broker.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Run the benchmark: every row group, one markdown table (printed, and saved to
    /// target/bench/bench.md). Settings are BENCH_* environment variables (see
    /// scripts/xtask/src/bench/settings.rs); the broker is the environment's (AMQP_URI, ...),
    /// which the clients and servers it starts read too.
    Bench {
        /// The quick smoke run (as BENCH_QUICK=1).
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Declare QUEUE: classic and transient, or durable quorum with --quorum.
    Declare {
        queue: String,
        #[arg(long)]
        quorum: bool,
    },
    /// Delete each QUEUE, whatever it holds; a missing queue is fine.
    Delete {
        #[arg(required = true)]
        queues: Vec<String>,
    },
    /// Drop the ready messages of QUEUE; prints how many.
    Purge { queue: String },
    /// Wait until QUEUE has at least N consumers (exactly N with --exactly).
    WaitConsumers {
        queue: String,
        count: u32,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30.0)]
        timeout: f64,
        /// Wait for exactly N consumers (0: every consumer gone).
        #[arg(long)]
        exactly: bool,
        /// Fail at once if this process exits first (repeatable: the servers being waited for).
        #[arg(long = "pid", value_name = "PID")]
        pids: Vec<u32>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::from(if bench::interrupted() { 130 } else { 1 })
        }
    }
}

/// The command line, with xtask's defaults for the shared broker flags.
fn command() -> clap::Command {
    // The address broker.sh checks, and connect attempts short enough for the scripts' waits
    // to keep their deadlines.
    Cli::command()
        .mut_arg("host", |arg| arg.default_value("127.0.0.1"))
        .mut_arg("connect_timeout", |arg| arg.default_value("3"))
}

fn run(cli: Cli) -> Result<()> {
    let brokers = || cli.broker.to_options("xtask").context("the broker");
    match cli.command {
        Command::BrokerAddr => {
            let broker = &brokers()?[0];
            let scheme = if broker.tls { "amqps" } else { "amqp" };
            let place = if broker::is_local(&broker.host) {
                "local"
            } else {
                "remote"
            };
            println!("{}\t{}\t{scheme}\t{place}", broker.host, broker.port);
        }
        Command::Probe {
            host,
            port,
            tcp,
            timeout,
        } => broker::probe(&host, port, !tcp, seconds(timeout)?)?,
        Command::BrokerVersion => println!("{}", broker::version(&brokers()?)?),
        Command::MaskUri { check, uris } => mask_uris(check, uris)?,
        Command::Queue { action } => queue(&brokers()?, action)?,
        Command::Bench { quick } => bench::run(&brokers()?, quick)?,
    }
    Ok(())
}

fn mask_uris(check: bool, uris: Vec<String>) -> Result<()> {
    let uris = if uris.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<Vec<_>>>()
            .context("reading stdin")?
    } else {
        uris
    };
    for uri in uris {
        if check {
            BrokerOptions::from_uri(uri.trim())?;
        }
        println!("{}", rpc_client::amqp::mask_uri(&uri));
    }
    Ok(())
}

fn seconds(secs: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs < 1e6) {
        bail!("--timeout must be a positive number of seconds, got {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn queue(brokers: &[BrokerOptions], action: QueueAction) -> Result<()> {
    let admin = || Admin::connect_to(brokers).context("cannot connect to the broker");
    match action {
        QueueAction::Declare { queue, quorum } => admin()?
            .declare(&queue, quorum)
            .with_context(|| format!("declaring queue '{queue}'"))?,
        QueueAction::Delete { queues } => {
            let mut admin = admin()?;
            for queue in queues {
                admin
                    .delete(&queue)
                    .with_context(|| format!("deleting queue '{queue}'"))?;
            }
        }
        QueueAction::Purge { queue } => {
            let purged = admin()?
                .channel()
                .queue_purge(queue.as_str())
                .with_context(|| format!("purging queue '{queue}'"))?;
            println!("{purged}");
        }
        QueueAction::WaitConsumers {
            queue,
            count,
            timeout,
            exactly,
            pids,
        } => {
            let want = if exactly {
                Consumers::Exactly(count)
            } else {
                Consumers::AtLeast(count)
            };
            let exited = || {
                let pid = pids.iter().copied().find(|&pid| exited(pid))?;
                Some(format!("process {pid} exited"))
            };
            wait_for_consumer_count(brokers, &queue, want, seconds(timeout)?, exited)
                .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}

/// Has process `pid` exited (gone, or a zombie not yet reaped by its parent)?
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so look after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| matches!(state, 'Z' | 'X')),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `args` alone: without the flags' environment variables (the 4.x stage exports
    /// AMQP_URI, which conflicts with `--port`).
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let command = command().mut_args(|arg| arg.env(None::<&str>));
        Cli::from_arg_matches(&command.try_get_matches_from(args)?)
    }

    /// `probe HOST PORT` probes HOST:PORT also with broker URIs given (AMQP_URI exported, as
    /// rpc-server's README suggests for a cluster): demo.sh and cluster.sh status probe that way.
    #[test]
    fn probe_arguments_win_over_broker_uris() {
        let uri = "amqp://guest:guest@127.0.0.1:5681,amqp://guest:guest@127.0.0.1:5682";
        // After the subcommand, --uri is parsed as AMQP_URI is: among the probe's arguments.
        for args in [
            ["xtask", "--uri", uri, "probe", "10.0.0.7", "5683", "--tcp"],
            ["xtask", "probe", "10.0.0.7", "5683", "--tcp", "--uri", uri],
        ] {
            let cli = parse(&args).expect("probe with --uri parses");
            let Command::Probe {
                host, port, tcp, ..
            } = cli.command
            else {
                panic!("not parsed as probe");
            };
            assert_eq!((host.as_str(), port, tcp), ("10.0.0.7", 5683, true));
            assert_eq!(cli.broker.uri.len(), 2);
        }
        // The broker flags still conflict among themselves.
        assert!(parse(&["xtask", "--uri", uri, "--host", "h", "broker-addr"]).is_err());
        let cli = parse(&["xtask", "--port", "5999", "probe", "h", "5672"]).expect("parses");
        assert!(matches!(cli.command, Command::Probe { port: 5672, .. }));
        assert_eq!(cli.broker.port, 5999);
    }
}
