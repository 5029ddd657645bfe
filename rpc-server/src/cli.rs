//! The `rpc-server` command line: its flags ([`Cli`]) and what it does with them ([`run`]).

use crate::command::{
    self, CommandHandler, CommandOptions, COMMAND_LOG, DEFAULT_MAX_REQUEST_BYTES,
};
use crate::error::{exit_code, Error};
use crate::handler::{Fibonacci, Handler, REQUEST_LOG};
use crate::http::Endpoint;
use crate::metrics::Metrics;
use crate::options::{
    default_name, QueueType, ServerOptions, DEFAULT_MAX_N, DEFAULT_MAX_REPLY_BYTES,
};
use crate::stream::{Protocol, StreamHandler, StreamOptions, CLOSE_GRACE};
use anyhow::Context as _;
use clap::CommandFactory;
use log::{Level, LevelFilter};
use rpc_client::cli::{init_logging, parse_seconds, stderr_line, CommonArgs};
use rpc_client::wire;
use std::ffi::OsString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default of `--heartbeat`: a dead link is noticed within about 10 s (two intervals), for
/// one 8-byte frame each way every 5 s when idle.
pub const DEFAULT_HEARTBEAT: u16 = 5;

/// After the first SIGINT/SIGTERM the process ends within this (plus the handler's time limit,
/// for a command the exec timeout, to finish the requests in hand), whatever the broker or the
/// link does: the clean stop has [`crate::server::STOP_LIMIT`] of it; past this the server exits
/// with [`exit_code::UNCLEAN_STOP`], leaving its unacked requests to the broker.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

/// How long a server that exits at once (second signal, unclean stop) spends ending the
/// commands in hand and what they started.
const END_ALL_BOUND: Duration = Duration::from_secs(1);

/// Serve RPC requests from a RabbitMQ queue (the tutorial-six contract): Fibonacci by
/// default, or the command given after `--`, run once per request with the request body on its
/// stdin and its stdout as the reply.
#[derive(Debug, clap::Parser)]
#[command(name = "rpc-server", version, about,
          override_usage = "rpc-server [OPTIONS] [-- CMD [ARGS]...]",
          after_help = rpc_client::exit_code::help(exit_code::TABLE))]
pub struct Cli {
    /// Request queue to consume.
    #[arg(long, env = "RPC_QUEUE", default_value = wire::DEFAULT_QUEUE,
          value_parser = wire::parse_queue_name)]
    pub queue: String,

    /// Type of the request queue if this server has to declare it (an existing queue is used as is).
    #[arg(long, value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,

    /// Declare a classic request queue transient, as the original tutorial did (for old peers
    /// that declare it so; RabbitMQ 4.3 refuses it by default).
    #[arg(long, conflicts_with = "durable")]
    pub transient: bool,

    /// Declare the request queue durable: the default (kept for old command lines).
    #[arg(long, hide = true)]
    pub durable: bool,

    /// Requests the broker may hand this server before it acks: 1 for slow work and fair
    /// dispatch over several servers, higher (e.g. 50) for many fast requests.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Requests handled at once in this process, each acked after its own reply (the prefetch
    /// is raised to at least this): for commands that wait on I/O, or Fibonacci on many cores.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,

    /// Ack each request only once the broker confirmed its reply (publisher confirms): a
    /// reply the broker refuses or loses sends its request back to the queue. Costs
    /// throughput; off, a request is acked once its reply is published.
    #[arg(long)]
    pub confirm_replies: bool,

    /// Start a W3C trace for each request that carries no (valid) `traceparent`: every reply
    /// then has one and every request line a trace id. Without it only requests that carry
    /// trace context are traced (their replies get the server span's `traceparent`).
    #[arg(long)]
    pub trace: bool,

    /// Largest n served by Fibonacci; larger requests get an error reply.
    #[arg(long, default_value_t = DEFAULT_MAX_N)]
    pub max_n: u64,

    /// Largest reply body published, in bytes; a larger result gets a too-large error reply
    /// (RabbitMQ 4.x refuses messages over 16 MiB by default).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_REPLY_BYTES as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_reply_bytes: u32,

    /// With -- CMD: seconds a command may run per request; past it its whole process group is
    /// killed and the request gets an exec-timeout error reply.
    #[arg(long, value_name = "SECS", requires = "command",
          default_value = "30", value_parser = parse_seconds)]
    pub exec_timeout: Duration,

    /// With -- CMD: largest request body passed to the command, in bytes; a larger one gets a
    /// too-large error reply.
    #[arg(long, value_name = "BYTES", requires = "command",
          default_value_t = DEFAULT_MAX_REQUEST_BYTES as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_request_bytes: u32,

    /// With -- CMD: content_type of the replies [default: the request's content_type].
    #[arg(long, value_name = "TYPE", requires = "command")]
    pub reply_content_type: Option<String>,

    /// With -- CMD: how requests reach it. exec: a process per request, body on stdin, stdout
    /// the reply. lines: each worker keeps one process; the body as one line on its stdin,
    /// the next line on its stdout the reply. json: the same with one JSON object per line
    /// each way ({"id", "body"} in, {"id", "body"} or {"id", "error"} out).
    #[arg(long, value_enum, requires = "command", default_value_t = Protocol::Exec)]
    pub protocol: Protocol,

    /// With --protocol lines|json: start a worker's program afresh after it answered N
    /// requests (for handlers that leak) [default: keep it].
    #[arg(long, value_name = "N", requires = "command",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests_per_process: Option<u64>,

    /// Name put in the x-rpc-server header of replies and in logs [default: HOSTNAME-PID].
    #[arg(long)]
    pub name: Option<String>,

    /// Give up after this many consecutive failed connection attempts [default: never].
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,

    /// AMQP heartbeat interval in seconds: a dead link (a cut cable, a stalled proxy) is noticed
    /// after two intervals without a frame from the broker, then the server reconnects.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_HEARTBEAT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub heartbeat: u16,

    /// Longest wait between two connection attempts, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub max_backoff: Duration,

    /// Serve Prometheus metrics (GET /metrics), liveness (GET /healthz) and readiness (GET
    /// /readyz: 200 only while consuming) over HTTP on HOST:PORT, e.g. 127.0.0.1:9464 or
    /// [::]:9464 [default: off].
    // The text is also `--help`'s, which prints it as written: `[::]` stays unescaped.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long, value_name = "HOST:PORT", env = "RPC_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,

    /// The command to serve, after `--`: run once per request, directly (never through a
    /// shell), in a process group of its own, request body on stdin, stdout as the reply.
    /// Exit status 0 is a reply, anything else an exec-failed error reply with the last line
    /// of its stderr (which goes to the log). Nothing it starts outlives it or the server.
    /// Its environment is the server's without AMQP_URI, AMQP_PASSWORD and
    /// AMQP_PASSWORD_FILE, plus RPC_CORRELATION_ID, RPC_CONTENT_TYPE, TRACEPARENT and
    /// TRACESTATE from the request.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl Cli {
    /// The server's options from the flags.
    pub fn to_options(&self) -> Result<ServerOptions, Error> {
        let name = self.name.clone().unwrap_or_else(default_name);
        let client_name = format!("rpc-server {} ({name})", env!("CARGO_PKG_VERSION"));
        let mut brokers = (self.common.broker.to_options(&client_name))
            .map_err(|err| Error::Config(err.to_string()))?;
        for broker in &mut brokers {
            broker.heartbeat = self.heartbeat;
        }
        Ok(ServerOptions {
            brokers,
            queue: self.queue.clone(),
            queue_type: self.queue_type,
            transient: self.transient,
            prefetch: self.prefetch,
            workers: self.workers.into(),
            max_n: self.max_n,
            max_reply_bytes: self.max_reply_bytes as usize,
            name,
            max_retries: self.max_retries,
            max_backoff: self.max_backoff,
            confirm_replies: self.confirm_replies,
            start_traces: self.trace,
            metrics: None,
        })
    }

    /// The handler the flags ask for: the command after `--`, or Fibonacci.
    pub fn to_handler(&self) -> Result<Arc<dyn Handler>, Error> {
        let Some((program, args)) = self.command.split_first() else {
            return Ok(Arc::new(Fibonacci {
                max_n: self.max_n,
                max_reply_bytes: self.max_reply_bytes as usize,
            }));
        };
        let options = CommandOptions {
            exec_timeout: self.exec_timeout,
            max_request_bytes: self.max_request_bytes as usize,
            max_reply_bytes: self.max_reply_bytes as usize,
            reply_content_type: self.reply_content_type.clone(),
            ..CommandOptions::new(program, args)
        };
        if self.protocol == Protocol::Exec {
            if self.max_requests_per_process.is_some() {
                return Err(Error::Config(
                    "--max-requests-per-process needs --protocol lines or json".into(),
                ));
            }
            return Ok(Arc::new(CommandHandler::new(options)?));
        }
        Ok(Arc::new(StreamHandler::new(StreamOptions {
            command: options,
            protocol: self.protocol,
            processes: self.workers.into(),
            max_requests_per_process: self.max_requests_per_process,
        })?))
    }

    /// The log level, and the level of the per-request lines: `-q` drops only those, `-qq`
    /// leaves warnings and errors.
    pub fn log_levels(&self) -> (LevelFilter, LevelFilter) {
        match self.common.log.quiet {
            1 => (LevelFilter::Info, LevelFilter::Off),
            _ => {
                let level = self.common.log.level(LevelFilter::Info);
                (level, level)
            }
        }
    }
}

/// Runs the server until SIGINT or SIGTERM (or prints what `--generate` asks for). A first
/// signal asks for a clean stop, and the process ends within [`STOP_BOUND`] whatever happens;
/// a second one exits at once with [`exit_code::FORCED`].
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(printed) = cli.common.generate.print(Cli::command()) {
        return Ok(printed?);
    }
    let (level, requests) = cli.log_levels();
    init_logging(
        level,
        cli.common.log.log_format,
        &[
            ("rpc_client", level),
            ("rpc_server", level),
            (REQUEST_LOG, requests),
            (COMMAND_LOG, level),
        ],
    );
    let mut options = cli.to_options()?;
    if cli.command.is_empty() && std::env::args_os().skip(1).any(|arg| arg == "--") {
        // A wrapper passing an empty "$@" must not start a Fibonacci server by mistake.
        return Err(Error::Config(
            "nothing after --: give the command to serve, or leave out -- to serve Fibonacci"
                .into(),
        )
        .into());
    }
    let handler = cli.to_handler()?;
    if !cli.command.is_empty() {
        // Before `contain`: a non-dumpable process's /proc/self belongs to root.
        let as_root = std::fs::metadata("/proc/self")
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
        if as_root {
            log::warn!(
                "serving a command as root: it can read every file and every process's \
                 environment, the broker password included (AMQP_PASSWORD, --password-file); \
                 run it as another user, e.g. -- setpriv --reuid=USER --regid=GROUP \
                 --clear-groups CMD"
            );
        }
        // Whatever a command starts is this process's to end, and its /proc files are closed
        // to the commands (see `command::contain`).
        command::contain()?;
    }
    if let Some(addr) = &cli.metrics_addr {
        let metrics = Arc::new(Metrics::new());
        let endpoint = Endpoint::start(addr, Arc::clone(&metrics))?;
        log::info!(
            "metrics on http://{}/metrics (probes: /healthz, /readyz)",
            endpoint.addr()
        );
        options.metrics = Some(metrics);
    }
    let stop_bound = STOP_BOUND + handler.time_limit().unwrap_or_default();
    let (stop, shutdown) = crossbeam_channel::bounded(1);
    let signals = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) > 0 {
            stderr_line(
                Level::Warn,
                "rpc-server",
                "second signal, ending the commands in hand and exiting now",
            );
            command::end_all(END_ALL_BOUND);
            std::process::exit(exit_code::FORCED.into());
        }
        let _ = stop.try_send(());
        // The clean stop is bounded by itself; this makes sure no stop is ever lost.
        let _ = std::thread::Builder::new()
            .name("stop-bound".into())
            .spawn(move || {
                std::thread::sleep(stop_bound);
                stderr_line(
                    Level::Error,
                    "rpc-server",
                    &format!(
                        "no clean stop within {}s of the signal; exiting",
                        stop_bound.as_secs()
                    ),
                );
                command::end_all(END_ALL_BOUND);
                std::process::exit(exit_code::UNCLEAN_STOP.into());
            });
    })
    .context("cannot install the signal handler")?;
    let served = crate::serve(&options, Arc::clone(&handler), shutdown);
    // Programs kept running (--protocol lines|json) are told to end, then ended.
    handler.close(CLOSE_GRACE);
    // Nothing a command started outlives the server, however it stops.
    command::end_all(END_ALL_BOUND);
    served?;
    Ok(())
}

/// The exit code for an error [`run`] returned.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<Error>() {
        Some(Error::Config(_)) => exit_code::USAGE,
        Some(Error::UncleanStop(_)) => exit_code::UNCLEAN_STOP,
        Some(Error::Refused { .. }) => exit_code::REFUSED,
        _ => exit_code::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        rpc_client::cli::check_command(Cli::command());
    }

    #[test]
    fn everything_after_the_double_dash_is_the_command() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["rpc-server", "--queue", "upper", "--", "tr", "a-z", "A-Z"])
            .expect("parses");
        assert_eq!(cli.command, ["tr", "a-z", "A-Z"]);
        assert_eq!(cli.exec_timeout, crate::command::DEFAULT_EXEC_TIMEOUT);
        assert!(cli.to_handler().is_ok());
        // Flags after -- belong to the command.
        let cli = Cli::try_parse_from(["rpc-server", "--", "sh", "-c", "exit 3", "--workers"])
            .expect("parses");
        assert_eq!(cli.command.len(), 4);
        assert_eq!(cli.workers, 1);
        // Command-only flags need a command.
        assert!(Cli::try_parse_from(["rpc-server", "--exec-timeout", "5"]).is_err());
        let missing = Cli::try_parse_from(["rpc-server", "--", "no-such-program-x"])
            .expect("parses")
            .to_handler();
        assert!(matches!(missing, Err(Error::Config(_))));
    }
}
