//! A caller: the library's client, reconnected by the caller after a connection error or kept
//! for the whole run, or an `rpc-client` process per call; each call recorded as a [`Call`].
//! [`super::callers`] runs threads of them.

use super::expected;
use super::load::{Call, Outcome, BEFORE, GRACE};
use rpc_client::{BrokerOptions, ClientOptions, Error, FibonacciRpcClient};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The connect part of a call's budget: every broker a TCP connect and a handshake, each with
/// its own limit.
fn connect_budget(brokers: &[BrokerOptions]) -> Duration {
    brokers.iter().map(|b| 2 * b.connect_timeout).sum()
}

/// The `rpc-client` binary, run once per call: `rpc-client --timeout T --connect-timeout C
/// --queue Q -v N`, the brokers in `AMQP_URI` (never on the command line, which `ps` shows).
#[derive(Debug, Clone)]
pub struct Binary {
    /// The binary.
    pub program: PathBuf,
    /// Comma-separated URIs, passed as `AMQP_URI`.
    pub uris: String,
}

/// A caller. By default one client, replaced by a new connection after a connection error,
/// which starts at the next broker of its list; [`Caller::persistent`], one client for the
/// whole run (a client that recovers by itself); [`Caller::binary`], a process per call.
pub struct Caller {
    options: ClientOptions,
    client: Option<FibonacciRpcClient>,
    /// Replace the client after a connection error (else keep it: every error is the
    /// client's).
    reconnect: bool,
    /// Calls are made by `rpc-client` processes instead.
    binary: Option<Binary>,
    /// Connections made (processes started, for a binary caller).
    pub connects: u64,
    /// Its index among the callers of a [`Callers`] (0 for a lone caller).
    pub index: usize,
    /// Calls record when they started from here.
    pub(super) t0: Instant,
}

impl Caller {
    /// A caller that connects on its first call.
    pub fn new(options: ClientOptions) -> Caller {
        Caller {
            options,
            client: None,
            reconnect: true,
            binary: None,
            connects: 0,
            index: 0,
            t0: Instant::now(),
        }
    }

    /// A caller that connects on its first call and keeps that client for good: after an
    /// error it calls again on the same client (it connects again only if the first connect
    /// failed).
    pub fn persistent(options: ClientOptions) -> Caller {
        Caller {
            reconnect: false,
            ..Caller::new(options)
        }
    }

    /// A caller that runs `binary` once per call, with the queue, timeout and connect timeout
    /// (of its first broker) of `options`.
    pub fn binary(binary: Binary, options: ClientOptions) -> Caller {
        Caller {
            binary: Some(binary),
            ..Caller::new(options)
        }
    }

    /// The longest a call may take before it is hung: its timeout and [`GRACE`], plus a
    /// connect to every broker when it may connect (plus the consumer-count probe after a
    /// timeout, 1 s, and the start of the process, 1 s, for a binary caller).
    pub fn budget(&self) -> Duration {
        let connect = if self.binary.is_some() || self.client.is_none() || self.reconnect {
            connect_budget(&self.options.brokers)
        } else {
            Duration::ZERO
        };
        let process = if self.binary.is_some() {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        };
        self.options.timeout + GRACE + connect + process
    }

    /// A caller connected now (rather than on the first call).
    pub fn connected(options: ClientOptions) -> Caller {
        let mut caller = Caller::new(options);
        caller.client = Some(FibonacciRpcClient::connect(&caller.options).expect("connect"));
        caller.connects = 1;
        caller
    }

    /// Its client's callback queue, while connected.
    pub fn reply_queue(&self) -> Option<&str> {
        self.client.as_ref().map(FibonacciRpcClient::reply_queue)
    }

    /// Its client, while connected.
    pub fn client(&mut self) -> Option<&mut FibonacciRpcClient> {
        self.client.as_mut()
    }

    /// Calls fib(n), connecting first if needed. A timeout is a lost call; an error reply or a
    /// bad reply to this valid request is wrong; other errors are errors.
    pub fn call(&mut self, n: u64) -> Call {
        if let Some(binary) = self.binary.clone() {
            return self.call_binary(&binary, n);
        }
        let started = Instant::now();
        let mut budget = self.options.timeout + GRACE;
        let result = match self.client.as_mut() {
            Some(client) => client.call_reply(n),
            None => {
                budget += connect_budget(&self.options.brokers);
                self.connects += 1;
                match FibonacciRpcClient::connect(&self.options) {
                    Ok(client) => self.client.insert(client).call_reply(n),
                    Err(err) => Err(err),
                }
            }
        };
        let elapsed = started.elapsed();
        let (outcome, detail, server) = match result {
            Ok(reply) => {
                let want = expected(n);
                if reply.value == *want {
                    (Outcome::Right, String::new(), reply.server)
                } else {
                    let shown = &reply.value[..reply.value.len().min(12)];
                    let detail = format!(
                        "got {} digits starting {shown:?}, want {} digits",
                        reply.value.len(),
                        want.len()
                    );
                    (Outcome::Wrong, detail, reply.server)
                }
            }
            Err(err @ Error::Timeout { .. }) => (Outcome::Lost, err.to_string(), None),
            Err(err @ (Error::Server { .. } | Error::BadReply(_))) => {
                (Outcome::Wrong, err.to_string(), None)
            }
            Err(err) => {
                // Connection trouble (or an AMQP error, which may have closed the channel):
                // the next call starts on a new connection, at the next broker.
                if self.reconnect
                    && matches!(
                        err,
                        Error::Connect { .. }
                            | Error::ConnectionLost(_)
                            | Error::Stalled(_)
                            | Error::Blocked(_)
                            | Error::Amqp(_)
                    )
                {
                    self.client = None;
                    self.options.brokers.rotate_left(1);
                }
                (Outcome::Error, err.to_string(), None)
            }
        };
        Call {
            caller: self.index,
            n,
            phase: BEFORE,
            at: started - self.t0,
            elapsed,
            budget,
            outcome,
            detail,
            server,
        }
    }

    /// One call of fib(n) as an `rpc-client` process, killed past [`Caller::budget`]. Exit
    /// 0 with fib(n) on stdout is right; exit 0 with anything else, 5 (an error reply) or 1 (a
    /// bad reply) is wrong; 4 (no reply in time) is lost; any other exit is an error.
    fn call_binary(&mut self, binary: &Binary, n: u64) -> Call {
        let budget = self.budget();
        let started = Instant::now();
        let broker = self.options.brokers.first();
        let connect_timeout = broker.map_or(Duration::from_secs(10), |b| b.connect_timeout);
        let mut command = Command::new(&binary.program);
        command
            .args([
                "--timeout",
                &format!("{}", self.options.timeout.as_secs_f64()),
            ])
            .args([
                "--connect-timeout",
                &format!("{}", connect_timeout.as_secs_f64()),
            ])
            .args(["--queue", &self.options.queue, "-v", &n.to_string()]);
        for variable in super::server::INHERITED {
            command.env_remove(variable);
        }
        command.env("AMQP_URI", &binary.uris);
        self.connects += 1;
        let (outcome, detail, server) = match run_client(command, budget + Duration::from_secs(1)) {
            Err(err) => (Outcome::Error, err, None),
            Ok(None) => (
                Outcome::Lost,
                format!(
                    "rpc-client never returned; killed after {:.1}s",
                    budget.as_secs_f64() + 1.0
                ),
                None,
            ),
            Ok(Some((code, stdout, stderr))) => {
                let server = stderr
                    .lines()
                    .find_map(|l| l.split_once(" answered by ")?.1.rsplit_once(" in "))
                    .map(|(server, _)| server.to_string());
                // The last line says how it ended; the lines before it, what the client went
                // through (reconnects, refusals, re-sends), shown after EARLIER.
                let lines: Vec<&str> = stderr.lines().collect();
                let (last, before) = lines.split_last().unwrap_or((&"", &[]));
                let before = &before[before.len().saturating_sub(STDERR_KEPT)..];
                let last = if before.is_empty() {
                    last.to_string()
                } else {
                    format!("{last}{EARLIER}{}]", before.join(" | "))
                };
                match code {
                    Some(0) => {
                        let want = expected(n);
                        if stdout.trim_end() == want.as_str() {
                            (Outcome::Right, String::new(), server)
                        } else {
                            let shown = &stdout[..stdout.len().min(12)];
                            let detail = format!(
                                "rpc-client printed {} bytes starting {shown:?}, want {} digits",
                                stdout.len(),
                                want.len()
                            );
                            (Outcome::Wrong, detail, server)
                        }
                    }
                    Some(4) => (Outcome::Lost, format!("rpc-client exit 4: {last}"), None),
                    Some(code @ (1 | 5)) => (
                        Outcome::Wrong,
                        format!("rpc-client exit {code}: {last}"),
                        None,
                    ),
                    Some(code) => (
                        Outcome::Error,
                        format!("rpc-client exit {code}: {last}"),
                        None,
                    ),
                    None => (
                        Outcome::Error,
                        format!("rpc-client killed by a signal: {last}"),
                        None,
                    ),
                }
            }
        };
        Call {
            caller: self.index,
            n,
            phase: BEFORE,
            at: started - self.t0,
            elapsed: started.elapsed(),
            budget,
            outcome,
            detail,
            server,
        }
    }
}

/// Lines of an `rpc-client` process's stderr kept, before its last one, in a call's detail.
const STDERR_KEPT: usize = 8;

/// Where a call's detail goes on from an `rpc-client` process's last stderr line to the lines
/// before it.
pub const EARLIER: &str = " [earlier: ";

/// Runs `command` (stdin closed) for at most `within`: its exit code (None for a signal),
/// stdout and stderr; `Ok(None)` if it was killed at the deadline.
#[allow(clippy::type_complexity)]
fn run_client(
    mut command: Command,
    within: Duration,
) -> Result<Option<(Option<i32>, String, String)>, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {}: {e}",
                command.get_program().to_string_lossy()
            )
        })?;
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = read_all(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read_all(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => break None,
            Err(err) => return Err(format!("cannot wait for rpc-client: {err}")),
        }
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(status.map(|status| (status.code(), stdout, stderr)))
}
