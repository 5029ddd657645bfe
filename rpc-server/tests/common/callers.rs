//! Callers: a [`Caller`] (the library's client, reconnected by the caller after a connection
//! error or kept for the whole run; or an `rpc-client` process per call), and [`Callers`],
//! threads of them making calls back to back while a fault is injected, each call recorded as
//! a [`Call`].

use super::load::{right_answers, Call, Outcome, BEFORE, GRACE};
use super::{expected, lock};
use rpc_client::{BrokerOptions, ClientOptions, Error, FibonacciRpcClient};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
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
    t0: Instant,
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

/// How long a caller of [`Callers`] pauses after each call (pacing, not synchronisation).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// After a right answer (keeps the CPU use modest).
    pub right: Duration,
    /// After anything else (a broker that is down is not hammered).
    pub error: Duration,
}

/// A call in progress.
#[derive(Clone, Copy)]
struct InCall {
    started: Instant,
    budget: Duration,
    n: u64,
    phase: u8,
}

struct Shared {
    t0: Instant,
    stop: AtomicBool,
    phase: AtomicU8,
    calls: Mutex<Vec<Call>>,
    /// Per caller, the call it is in, if any.
    in_call: Vec<Mutex<Option<InCall>>>,
    /// Per caller: connections made.
    connects: Vec<AtomicU64>,
}

/// Caller threads making calls back to back until stopped; see [`Callers::start`].
pub struct Callers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

/// What the callers did, once stopped.
pub struct CallerReport {
    pub calls: Vec<Call>,
    /// When the callers were told to stop, from their start.
    pub stopped_at: Duration,
    /// Connections made, per caller.
    pub connects: Vec<u64>,
}

impl CallerReport {
    /// Connections made by all callers.
    pub fn total_connects(&self) -> u64 {
        self.connects.iter().sum()
    }
}

impl Callers {
    /// One thread per element of `options`: caller `i` calls fib(`n_of(i, k)`) for k = 0, 1, …
    /// with those options, pausing after each call as `pace` says.
    pub fn start(options: Vec<ClientOptions>, n_of: fn(usize, u64) -> u64, pace: Pace) -> Callers {
        Callers::start_callers(options.into_iter().map(Caller::new).collect(), n_of, pace)
    }

    /// One thread per caller of `callers` (see [`Callers::start`]); caller `i` is the i-th.
    pub fn start_callers(callers: Vec<Caller>, n_of: fn(usize, u64) -> u64, pace: Pace) -> Callers {
        let count = callers.len();
        let shared = Arc::new(Shared {
            t0: Instant::now(),
            stop: AtomicBool::new(false),
            phase: AtomicU8::new(BEFORE),
            calls: Mutex::new(Vec::new()),
            in_call: (0..count).map(|_| Mutex::new(None)).collect(),
            connects: (0..count).map(|_| AtomicU64::new(0)).collect(),
        });
        let handles = callers
            .into_iter()
            .enumerate()
            .map(|(index, mut caller)| {
                caller.index = index;
                caller.t0 = shared.t0;
                let shared = Arc::clone(&shared);
                thread::spawn(move || caller_loop(caller, n_of, pace, &shared))
            })
            .collect();
        Callers { shared, handles }
    }

    /// Calls started from now on are in `phase`.
    pub fn set_phase(&self, phase: u8) {
        self.shared.phase.store(phase, Ordering::SeqCst);
    }

    /// Time since the callers started.
    pub fn since_start(&self) -> Duration {
        self.shared.t0.elapsed()
    }

    /// Right answers so far.
    pub fn answers(&self) -> u64 {
        right_answers(&lock(&self.shared.calls))
    }

    /// Right answers so far by `server`.
    pub fn answers_by(&self, server: &str) -> u64 {
        self.answers_by_server().get(server).copied().unwrap_or(0)
    }

    /// Right answers so far to calls that started in `phase`.
    pub fn answers_in_phase(&self, phase: u8) -> u64 {
        let calls = lock(&self.shared.calls);
        calls
            .iter()
            .filter(|c| c.phase == phase && c.outcome == Outcome::Right)
            .count() as u64
    }

    /// Right answers so far, per server name.
    pub fn answers_by_server(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for call in lock(&self.shared.calls).iter() {
            if call.outcome == Outcome::Right {
                if let Some(server) = &call.server {
                    *by.entry(server.clone()).or_default() += 1;
                }
            }
        }
        by
    }

    /// Right answers so far, per caller (by index).
    pub fn answers_by_caller(&self) -> Vec<u64> {
        let mut by = vec![0; self.shared.in_call.len()];
        for call in lock(&self.shared.calls).iter() {
            if call.outcome == Outcome::Right {
                if let Some(count) = by.get_mut(call.caller) {
                    *count += 1;
                }
            }
        }
        by
    }

    /// Waits up to `within` until `condition` holds for the callers; panics otherwise.
    pub fn wait(&self, what: &str, within: Duration, condition: impl Fn(&Callers) -> bool) {
        rpc_client::testing::wait_until(what, within, || Ok(condition(self))).unwrap_or_else(
            |err| {
                panic!(
                    "{err} (answers so far: {}, by server: {:?})",
                    self.answers(),
                    self.answers_by_server()
                )
            },
        );
    }

    /// Stops the callers after their current call. A caller still in its call when that call
    /// is over its budget (plus a second) is hung: its call is recorded as lost, its thread
    /// left to end on its own.
    pub fn finish(mut self) -> CallerReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        let stopped_at = self.shared.t0.elapsed();
        let longest_budget = lock(&self.shared.calls)
            .iter()
            .map(|c| c.budget)
            .chain(
                self.shared
                    .in_call
                    .iter()
                    .filter_map(|c| lock(c).map(|c| c.budget)),
            )
            .max()
            .unwrap_or(Duration::ZERO);
        let deadline = Instant::now() + longest_budget + Duration::from_secs(1);
        while self.handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20)); // polling interval
        }
        let mut calls = lock(&self.shared.calls).clone();
        for (index, handle) in self.handles.drain(..).enumerate() {
            if handle.is_finished() {
                if handle.join().is_err() {
                    panic!("caller c{} panicked", index + 1);
                }
            } else if let Some(call) = *lock(&self.shared.in_call[index]) {
                calls.push(Call {
                    caller: index,
                    n: call.n,
                    phase: call.phase,
                    at: call.started - self.shared.t0,
                    elapsed: call.started.elapsed(),
                    budget: call.budget,
                    outcome: Outcome::Lost,
                    detail: "never returned".into(),
                    server: None,
                });
            }
        }
        let connects = self
            .shared
            .connects
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect();
        CallerReport {
            calls,
            stopped_at,
            connects,
        }
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        // On a panic: stop them; threads still in a call are left to end on their own.
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// One caller of [`Callers`]: calls back to back until stopped.
fn caller_loop(mut caller: Caller, n_of: fn(usize, u64) -> u64, pace: Pace, shared: &Shared) {
    let index = caller.index;
    let mut k = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let n = n_of(index, k);
        k += 1;
        let phase = shared.phase.load(Ordering::SeqCst);
        let started = Instant::now();
        // The longest this call may take: a connect to every broker first, if needed.
        let budget = caller.budget();
        *lock(&shared.in_call[index]) = Some(InCall {
            started,
            budget,
            n,
            phase,
        });
        let mut call = caller.call(n);
        *lock(&shared.in_call[index]) = None;
        shared.connects[index].store(caller.connects, Ordering::SeqCst);
        call.phase = phase;
        let right = call.outcome == Outcome::Right;
        lock(&shared.calls).push(call);
        thread::sleep(if right { pace.right } else { pace.error });
    }
}
