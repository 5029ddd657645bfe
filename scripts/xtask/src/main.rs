//! `xtask`: the chores of the scripts in `scripts/` that are not OS work, in Rust beside the
//! code they serve: reading the broker's address, masking passwords, queue admin through the
//! broker and the benchmark table. Bash keeps apt, Erlang nodes, openssl and processes.
//!
//! Scripts build it once (`cargo build --release -p xtask`) and run `target/release/xtask`.
//! The broker comes from the environment, as for the binaries: `AMQP_URI` (a comma-separated
//! list: the first node that answers), else `AMQP_HOST`, `AMQP_PORT`, `AMQP_VHOST`,
//! `AMQP_USER`, `AMQP_PASSWORD`. Nothing here prints a password.

mod bench_table;
mod broker;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use rpc_client::testing::Admin;
use std::io::BufRead as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "xtask",
    version,
    about = "Development chores of scripts/ (not installed)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print "HOST PORT amqp|amqps local|remote" (tab-separated) of the broker scripts/broker.sh
    /// checks: the first URI of AMQP_URI, else AMQP_HOST (default 127.0.0.1) and AMQP_PORT
    /// (5672); local when the host is an address of this machine.
    BrokerAddr,
    /// Succeed if HOST:PORT answers the AMQP 0-9-1 protocol header with Connection.Start
    /// (with --tcp: if it accepts TCP connections), within the timeout.
    Probe {
        host: String,
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
    /// Read the facts scripts/bench.sh collected (TSV, stdin), print its markdown report.
    BenchTable,
    /// Print scripts/bench.sh's settings from its BENCH_* variables, checked, as shell
    /// assignments.
    BenchSettings,
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
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::BrokerAddr => {
            let (host, port, tls) = broker::address()?;
            let scheme = if tls { "amqps" } else { "amqp" };
            let place = if broker::is_local(&host) {
                "local"
            } else {
                "remote"
            };
            println!("{host}\t{port}\t{scheme}\t{place}");
        }
        Command::Probe {
            host,
            port,
            tcp,
            timeout,
        } => broker::probe(&host, port, !tcp, seconds(timeout)?)?,
        Command::BrokerVersion => println!("{}", broker::version()?),
        Command::MaskUri { check, uris } => {
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
                    rpc_client::BrokerOptions::from_uri(uri.trim())?;
                }
                println!("{}", rpc_client::amqp::mask_uri(&uri));
            }
        }
        Command::Queue { action } => queue(action)?,
        Command::BenchTable => {
            let facts = std::io::read_to_string(std::io::stdin()).context("reading stdin")?;
            print!("{}", bench_table::render(&facts)?);
        }
        Command::BenchSettings => print!("{}", bench_table::settings(var)?),
    }
    Ok(())
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

fn seconds(secs: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs < 1e6) {
        bail!("--timeout must be a positive number of seconds, got {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn admin() -> Result<Admin> {
    let brokers = broker::from_env()?;
    Admin::connect_to(&brokers).context("cannot connect to the broker")
}

fn queue(action: QueueAction) -> Result<()> {
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
            let (mut connection, _) = rpc_client::amqp::connect_first(&broker::from_env()?, 0)
                .context("cannot connect to the broker")?;
            let purged = connection
                .open_channel(None)
                .and_then(|channel| channel.queue_purge(queue.as_str()))
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
            if !(timeout.is_finite() && timeout > 0.0) {
                bail!("--timeout must be a positive number of seconds");
            }
            wait_consumers(
                &queue,
                count,
                exactly,
                Duration::from_secs_f64(timeout),
                &pids,
            )?;
        }
    }
    Ok(())
}

/// Polls the queue's consumer count (a new connection after a failed one) until it is reached,
/// a watched process exits, or `timeout` passes.
fn wait_consumers(
    queue: &str,
    count: u32,
    exactly: bool,
    timeout: Duration,
    pids: &[u32],
) -> Result<()> {
    let brokers = broker::from_env()?;
    let want = format!(
        "{}{count} consumer(s) on '{queue}'",
        if exactly { "" } else { ">= " }
    );
    let deadline = Instant::now() + timeout;
    let mut admin: Option<Admin> = None;
    let mut seen = String::from("no answer yet");
    loop {
        if let Some(pid) = pids.iter().copied().find(|&pid| exited(pid)) {
            bail!("process {pid} exited while waiting for {want}");
        }
        if admin.is_none() {
            match Admin::connect_to(&brokers) {
                Ok(a) => admin = Some(a),
                Err(err) => seen = err.to_string(),
            }
        }
        if let Some(a) = admin.as_mut() {
            match a.queue_state(queue) {
                Ok(Some((_, consumers))) => {
                    if consumers == count || (!exactly && consumers > count) {
                        return Ok(());
                    }
                    seen = format!("{consumers} consumer(s)");
                }
                Ok(None) => seen = "no such queue".into(),
                Err(err) => {
                    seen = err.to_string();
                    admin = None; // a new connection next time
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s waiting for {want} (last: {seen})",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Has process `pid` exited (gone, or a zombie not yet reaped by its parent)?
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so look after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| matches!(state, 'Z' | 'X')),
        Err(_) => true,
    }
}
