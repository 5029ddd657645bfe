//! The fault run (issue 3): servers killed with SIGKILL and stopped with SIGTERM under load, a
//! broker restart, malformed requests, a flood of stray replies and unreachable brokers.
//!
//! One ignored test runs the scenarios one after another and prints, per scenario and in total,
//! how the calls ended: answered right, answered with an error (an error reply or a clear local
//! error), no reply by contract, answered wrong, lost (a call that should have been answered
//! timed out or got no answer) and hung (a call that did not return within its timeout plus
//! [`GRACE`]). Then it asserts that nothing was lost, wrong or hung, plus each scenario's own
//! checks. Servers are `rpc-server` processes (so SIGKILL is real), callers use the rpc-client
//! library from several threads.
//!
//! Scenario 3 stops and restarts the local RabbitMQ application with `rabbitmqctl` (the
//! `RABBITMQCTL` variable overrides the command, e.g. `sudo -n rabbitmqctl`), which drops every
//! connection on the broker: run it alone, as `scripts/test.sh` does in its last stage:
//!
//! ```text
//! cargo test --release -p rpc-server --test faults -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Server logs go to `target/tmp/faults/` (kept for inspection; replaced by the next run).
//! `FAULT_SCENARIOS=4,5` runs only the scenarios with those numbers.

mod common;

use amiquip::{AmqpProperties, AmqpValue, ConsumerMessage, FieldTable};
use common::{expected, lock, ServerProc};
use rpc_client::error::exit_code;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::wire::{self, ERROR_HEADER};
use rpc_client::{BrokerOptions, ClientOptions, Error, FibonacciRpcClient, ReplyQueue};
use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A call that has not returned within its timeout plus this is hung.
const GRACE: Duration = Duration::from_secs(2);
/// The timeout of the callers' calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The callers' limit on the TCP connect and on the AMQP handshake, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// fib(10⁶) (208,988 digits) takes about 35 ms in a release build: with more callers than
/// servers, every server has a request in hand at any moment.
const SLOW_N: u64 = 1_000_000;
/// How long scenario 3 keeps the broker down.
const OUTAGE: Duration = Duration::from_secs(2);

/// The n of call `k` of caller `caller` in the slow streams: distinct per caller, so an answer
/// delivered to the wrong caller is a wrong answer.
fn slow_n(caller: usize, k: u64) -> u64 {
    SLOW_N - 2 * caller as u64 - k % 2
}

// ---------------------------------------------------------------------------------------------
// Outcomes and the table
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The right result.
    Right,
    /// An error reply, or a clear local error (not a timeout where an answer was due).
    Error,
    /// No reply, as the contract says (a request without `reply_to`).
    NoReply,
    /// A result that is not fib(n), or an error reply with the wrong code.
    Wrong,
    /// Should have been answered, but timed out or got no answer.
    Lost,
}

/// One call (or raw request) and how it ended.
#[derive(Debug, Clone)]
struct Call {
    n: u64,
    outcome: Outcome,
    detail: String,
    elapsed: Duration,
    /// Timeout + grace: a call that took longer is hung.
    budget: Duration,
    server: Option<String>,
    /// Scenario-defined phase in which the call started.
    phase: u8,
}

impl Call {
    fn new(n: u64, outcome: Outcome, detail: String, started: Instant, budget: Duration) -> Call {
        Call {
            n,
            outcome,
            detail,
            elapsed: started.elapsed(),
            budget,
            server: None,
            phase: 0,
        }
    }

    fn hung(&self) -> bool {
        self.elapsed > self.budget
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: u64,
    right: u64,
    errors: u64,
    no_reply: u64,
    wrong: u64,
    lost: u64,
    hung: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.calls += other.calls;
        self.right += other.right;
        self.errors += other.errors;
        self.no_reply += other.no_reply;
        self.wrong += other.wrong;
        self.lost += other.lost;
        self.hung += other.hung;
    }

    fn count(&mut self, outcome: Outcome, hung: bool) {
        self.calls += 1;
        match outcome {
            Outcome::Right => self.right += 1,
            Outcome::Error => self.errors += 1,
            Outcome::NoReply => self.no_reply += 1,
            Outcome::Wrong => self.wrong += 1,
            Outcome::Lost => self.lost += 1,
        }
        if hung {
            self.hung += 1;
        }
    }

    fn row(&self, label: &str, took: Duration) -> String {
        format!(
            "{label:<44} {:>6} {:>6} {:>6} {:>8} {:>6} {:>5} {:>5} {:>7.1}s",
            self.calls,
            self.right,
            self.errors,
            self.no_reply,
            self.wrong,
            self.lost,
            self.hung,
            took.as_secs_f64()
        )
    }
}

/// What one scenario did: the tally, failed checks and notes for the report.
struct Scenario {
    name: &'static str,
    tally: Tally,
    failures: Vec<String>,
    notes: Vec<String>,
    /// Wrong, lost and hung calls, shown under the table (the first few).
    bad_calls: Vec<String>,
    took: Duration,
}

impl Scenario {
    fn new(name: &'static str) -> Scenario {
        Scenario {
            name,
            tally: Tally::default(),
            failures: Vec::new(),
            notes: Vec::new(),
            bad_calls: Vec::new(),
            took: Duration::ZERO,
        }
    }

    fn record(&mut self, call: &Call) {
        self.tally.count(call.outcome, call.hung());
        if matches!(call.outcome, Outcome::Wrong | Outcome::Lost) || call.hung() {
            self.bad_calls.push(format!(
                "{:?} fib({}) after {:.2}s (budget {:.0}s): {}",
                call.outcome,
                call.n,
                call.elapsed.as_secs_f64(),
                call.budget.as_secs_f64(),
                call.detail
            ));
        }
    }

    fn record_all(&mut self, calls: &[Call]) {
        for call in calls {
            self.record(call);
        }
    }

    /// Records a failed check without stopping the scenario.
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("fault run: {}: FAILED: {what}", self.name);
            self.failures.push(what);
        }
    }

    fn note(&mut self, note: String) {
        println!("fault run: {}: {note}", self.name);
        self.notes.push(note);
    }
}

/// Runs one scenario; a panic inside it is a failure of that scenario, and the next one runs.
fn run_scenario(name: &'static str, body: impl FnOnce(&mut Scenario)) -> Scenario {
    println!("fault run: ===== {name}");
    let mut scenario = Scenario::new(name);
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| body(&mut scenario)));
    if let Err(panic) = result {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        scenario.failures.push(format!("panicked: {message}"));
    }
    scenario.took = started.elapsed();
    let t = scenario.tally;
    for (count, what) in [(t.lost, "lost"), (t.hung, "hung"), (t.wrong, "wrong")] {
        scenario.check(count == 0, || {
            format!("{count} of {} call(s) {what}", t.calls)
        });
    }
    scenario
}

fn print_table(scenarios: &[Scenario], took: Duration) {
    let header = format!(
        "{:<44} {:>6} {:>6} {:>6} {:>8} {:>6} {:>5} {:>5} {:>8}",
        "scenario", "calls", "right", "error", "no-reply", "wrong", "lost", "hung", "time"
    );
    let rule = "-".repeat(header.len());
    println!("\nfault run: results\n{header}\n{rule}");
    let mut total = Tally::default();
    for scenario in scenarios {
        println!("{}", scenario.tally.row(scenario.name, scenario.took));
        total.add(&scenario.tally);
    }
    println!("{rule}\n{}\n", total.row("total", took));
    for scenario in scenarios {
        for note in &scenario.notes {
            println!("  {}: {note}", scenario.name);
        }
    }
    for scenario in scenarios {
        for call in scenario.bad_calls.iter().take(10) {
            println!("  {}: {call}", scenario.name);
        }
        for failure in &scenario.failures {
            println!("  {}: FAILED: {failure}", scenario.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server processes, callers, streams of calls, the broker application
// ---------------------------------------------------------------------------------------------

fn log_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults")
}

/// One `rpc-server` on the test broker, given as flags (the password in the environment).
fn spawn_server(queue: &str, name: &str) -> ServerProc {
    let broker = testing::broker();
    let port = broker.port.to_string();
    let args = [
        "--host",
        broker.host.as_str(),
        "--port",
        port.as_str(),
        "--vhost",
        broker.vhost.as_str(),
        "--user",
        broker.user.as_str(),
    ];
    ServerProc::spawn(
        &log_dir(),
        name,
        queue,
        &args,
        &[("AMQP_PASSWORD", broker.password.as_str())],
    )
}

/// Starts servers `<prefix>-a`, `<prefix>-b`, … on `queue` and waits until all consume it.
fn start_servers(queue: &str, prefix: &str, count: usize) -> Vec<ServerProc> {
    let mut servers: Vec<ServerProc> = (0..count)
        .map(|i| spawn_server(queue, &format!("{prefix}-{}", (b'a' + i as u8) as char)))
        .collect();
    let mut admin = Admin::connect().expect("admin connects");
    if let Err(err) = admin.wait_for_consumers(queue, count as u32) {
        let logs: Vec<String> = servers.iter_mut().map(|s| s.log_tail(10)).collect();
        panic!("{err}\n{}", logs.join("\n"));
    }
    servers
}

fn client_options(queue: &str, timeout: Duration) -> ClientOptions {
    ClientOptions {
        brokers: vec![BrokerOptions {
            connect_timeout: CONNECT_TIMEOUT,
            ..testing::broker()
        }],
        queue: queue.to_string(),
        timeout,
        // The flood scenario publishes into the callback queue: a real, exclusive one.
        reply_queue: ReplyQueue::Exclusive,
    }
}

/// A caller: one client, replaced by a new connection after a connection error.
struct Caller {
    options: ClientOptions,
    client: Option<FibonacciRpcClient>,
    connects: u64,
}

impl Caller {
    fn new(options: ClientOptions) -> Caller {
        Caller {
            options,
            client: None,
            connects: 0,
        }
    }

    /// Connects now (rather than on the first call).
    fn connected(options: ClientOptions) -> Caller {
        let mut caller = Caller::new(options);
        caller.client = Some(FibonacciRpcClient::connect(&caller.options).expect("connect"));
        caller.connects = 1;
        caller
    }

    fn reply_queue(&self) -> Option<&str> {
        self.client.as_ref().map(FibonacciRpcClient::reply_queue)
    }

    /// Calls fib(n), connecting first if needed; a timeout is a lost call.
    fn call(&mut self, n: u64) -> Call {
        let started = Instant::now();
        let mut budget = self.options.timeout + GRACE;
        let mut client = match self.client.take() {
            Some(client) => client,
            None => {
                // One address: a TCP connect and a handshake, each with its own limit.
                budget += 2 * self.options.brokers[0].connect_timeout;
                self.connects += 1;
                match FibonacciRpcClient::connect(&self.options) {
                    Ok(client) => client,
                    Err(err) => {
                        return Call::new(n, Outcome::Error, err.to_string(), started, budget)
                    }
                }
            }
        };
        let result = client.call_reply(n);
        let elapsed = started.elapsed();
        // Connection trouble (or an AMQP error, which may have closed the channel): the next
        // call starts on a new connection.
        let reconnect = matches!(
            result,
            Err(Error::Connect { .. } | Error::ConnectionLost(_) | Error::Amqp(_))
        );
        let mut call = match result {
            Ok(reply) => {
                let want = expected(n);
                let (outcome, detail) = if reply.value == *want {
                    (Outcome::Right, String::new())
                } else {
                    let shown = &reply.value[..reply.value.len().min(12)];
                    (
                        Outcome::Wrong,
                        format!(
                            "got {} digits starting {shown:?}, want {} digits",
                            reply.value.len(),
                            want.len()
                        ),
                    )
                };
                let mut call = Call::new(n, outcome, detail, started, budget);
                call.server = reply.server;
                call
            }
            Err(err @ Error::Timeout { .. }) => {
                Call::new(n, Outcome::Lost, err.to_string(), started, budget)
            }
            Err(err) => Call::new(n, Outcome::Error, err.to_string(), started, budget),
        };
        call.elapsed = elapsed;
        if !reconnect {
            self.client = Some(client);
        }
        call
    }
}

#[derive(Default)]
struct StreamState {
    stop: AtomicBool,
    phase: AtomicU8,
    answers: AtomicU64,
    by_server: Mutex<HashMap<String, u64>>,
    by_phase: [AtomicU64; 4],
}

/// Caller threads making calls back to back until stopped (joined on drop too).
struct Stream {
    state: Arc<StreamState>,
    handles: Vec<JoinHandle<(Vec<Call>, u64)>>,
}

impl Stream {
    /// `callers` threads; caller `i` calls fib(`n_of(i, k)`) for k = 0, 1, …; after a call
    /// that failed it waits `error_pace` (so a broker that is down is not hammered).
    fn start(
        queue: &str,
        callers: usize,
        n_of: fn(usize, u64) -> u64,
        error_pace: Duration,
    ) -> Stream {
        let state = Arc::new(StreamState::default());
        let handles = (0..callers)
            .map(|i| {
                let state = Arc::clone(&state);
                let mut caller = Caller::new(client_options(queue, CALL_TIMEOUT));
                thread::spawn(move || {
                    let mut calls = Vec::new();
                    let mut k = 0;
                    while !state.stop.load(Ordering::SeqCst) {
                        let phase = state.phase.load(Ordering::SeqCst);
                        let mut call = caller.call(n_of(i, k));
                        call.phase = phase;
                        if call.outcome == Outcome::Right {
                            state.answers.fetch_add(1, Ordering::SeqCst);
                            state.by_phase[usize::from(phase)].fetch_add(1, Ordering::SeqCst);
                            if let Some(server) = &call.server {
                                *lock(&state.by_server).entry(server.clone()).or_default() += 1;
                            }
                        } else {
                            thread::sleep(error_pace); // pacing, not synchronisation
                        }
                        calls.push(call);
                        k += 1;
                    }
                    (calls, caller.connects)
                })
            })
            .collect();
        Stream { state, handles }
    }

    fn answers(&self) -> u64 {
        self.state.answers.load(Ordering::SeqCst)
    }

    fn answers_by(&self, server: &str) -> u64 {
        lock(&self.state.by_server)
            .get(server)
            .copied()
            .unwrap_or(0)
    }

    fn answers_in_phase(&self, phase: u8) -> u64 {
        self.state.by_phase[usize::from(phase)].load(Ordering::SeqCst)
    }

    fn set_phase(&self, phase: u8) {
        self.state.phase.store(phase, Ordering::SeqCst);
    }

    /// Waits until `condition` holds for the stream, up to `within`.
    fn wait(&self, what: &str, within: Duration, condition: impl Fn(&Stream) -> bool) {
        testing::wait_until(what, within, || Ok(condition(self))).unwrap_or_else(|err| {
            panic!(
                "{err} (answers so far: {}, by server: {:?})",
                self.answers(),
                lock(&self.state.by_server)
            )
        });
    }

    /// Stops the callers after their current call; returns every call and the connects made.
    fn finish(mut self) -> (Vec<Call>, u64) {
        self.state.stop.store(true, Ordering::SeqCst);
        let mut calls = Vec::new();
        let mut connects = 0;
        for handle in self.handles.drain(..) {
            let (more, c) = handle.join().expect("caller thread panicked");
            calls.extend(more);
            connects += c;
        }
        (calls, connects)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Runs `rabbitmqctl` (or `$RABBITMQCTL`, split on whitespace, e.g. `sudo -n rabbitmqctl`)
/// with a 120 s limit.
fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let command = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words: Vec<String> = command.split_whitespace().map(String::from).collect();
    if words.is_empty() {
        return Err("RABBITMQCTL is empty".into());
    }
    // Debian puts it in /usr/sbin, which a non-login PATH may lack.
    let last = words.len() - 1;
    if words[last] == "rabbitmqctl" && std::path::Path::new("/usr/sbin/rabbitmqctl").exists() {
        words[last] = "/usr/sbin/rabbitmqctl".into();
    }
    let output = Command::new("timeout")
        .arg("120")
        .args(&words)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {command}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Waits until the broker accepts AMQP connections (logs in), up to `within`.
fn wait_for_broker(within: Duration) -> Result<(), String> {
    testing::wait_until("the broker to accept AMQP connections", within, || {
        Ok(Admin::connect().is_ok())
    })
}

/// The RabbitMQ application, stopped by [`BrokerApp::stop`]; started again on drop, even when
/// the scenario panics, so the broker is left running.
struct BrokerApp {
    stopped: bool,
}

impl BrokerApp {
    fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.stopped = true; // even if stop_app fails half-way, try to start it again
        rabbitmqctl(&["stop_app"]).unwrap_or_else(|e| panic!("{e}"));
        started.elapsed()
    }

    /// Starts the application and waits until it accepts AMQP connections.
    fn start(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        rabbitmqctl(&["start_app"])?;
        wait_for_broker(Duration::from_secs(60))?;
        self.stopped = false;
        Ok(started.elapsed())
    }
}

impl Drop for BrokerApp {
    fn drop(&mut self) {
        if self.stopped {
            eprintln!("fault run: starting the broker application again");
            if let Err(err) = self.start() {
                eprintln!(
                    "fault run: THE BROKER IS NOT RUNNING: {err}; run `rabbitmqctl start_app`"
                );
            }
        }
    }
}

fn broker_is_local() -> bool {
    let host = testing::broker().host;
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Waits until `queue` has `consumers` consumers, up to `within`, on a new admin connection.
fn wait_for_consumers(queue: &str, consumers: u32, within: Duration) -> Result<(), String> {
    let mut admin = None;
    testing::wait_until(
        &format!("{consumers} consumer(s) on '{queue}'"),
        within,
        || {
            if admin.is_none() {
                admin = Admin::connect().ok();
            }
            let Some(a) = admin.as_mut() else {
                return Ok(false);
            };
            match a.queue_state(queue) {
                Ok(state) => Ok(state.map(|(_, c)| c) == Some(consumers)),
                Err(_) => {
                    admin = None; // the connection broke: a new one next time
                    Ok(false)
                }
            }
        },
    )
}

/// Stops every server with SIGTERM and checks that each exits 0 within 5 s.
fn stop_servers(scenario: &mut Scenario, servers: &mut [ServerProc]) {
    for server in servers.iter_mut() {
        let result = server.stop(Duration::from_secs(5));
        scenario.check(result.is_ok(), || result.err().unwrap_or_default());
        let panics = server.log_count("panicked");
        scenario.check(panics == 0, || {
            format!("{} panicked\n{}", server.name, server.log_tail(20))
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------

/// 1. SIGKILL one of two servers while 4 callers keep slow calls in flight: its unacked request
///    goes to the other server, and every call is answered right.
fn kill_one_of_two_servers(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-kill9");
    let mut servers = start_servers(queue.name(), "kill9", 2);
    let stream = Stream::start(queue.name(), 4, slow_n, Duration::from_millis(50));
    stream.wait("both servers to answer", Duration::from_secs(30), |s| {
        s.answers_by("kill9-a") >= 3 && s.answers_by("kill9-b") >= 3
    });
    servers[0].sigkill();
    let at_kill = stream.answers();
    let killed_at = Instant::now();
    let status = servers[0].wait_exit(Duration::from_secs(5));
    sc.check(status.and_then(|s| s.signal()) == Some(9), || {
        format!("kill9-a did not die of SIGKILL: {status:?}")
    });
    wait_for_consumers(queue.name(), 1, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    let by_a_at_kill = stream.answers_by("kill9-a");
    stream.wait("30 answers after the kill", Duration::from_secs(60), |s| {
        s.answers() >= at_kill + 30
    });
    let by_a_after = stream.answers_by("kill9-a");
    let (calls, _) = stream.finish();
    sc.record_all(&calls);
    // With 4 callers and 2 servers of prefetch 1, both servers always have a request in hand:
    // the one kill9-a had is redelivered to kill9-b.
    let by_b = calls
        .iter()
        .filter(|c| c.outcome == Outcome::Right && c.server.as_deref() == Some("kill9-b"))
        .count();
    sc.note(format!(
        "killed kill9-a after {at_kill} answers; {} more by kill9-b in {:.1}s; \
         kill9-a answered {} before, {} after the kill",
        stream_total(&calls) - at_kill,
        killed_at.elapsed().as_secs_f64(),
        by_a_at_kill,
        by_a_after - by_a_at_kill
    ));
    sc.check(by_b > 0, || "kill9-b answered nothing".into());
    // Requests kill9-a started (logged) but never answered: the one in its hands when it died,
    // answered by kill9-b after the broker redelivered it. (0 when the kill fell between two
    // requests, or between a reply and its ack: then kill9-b answers it again, and the client
    // discards that second reply.)
    let started_by_a = servers[0].log_count(" [.] fib(") as u64;
    sc.note(format!(
        "kill9-a had {} request(s) in hand (started, not answered) when it died",
        started_by_a.saturating_sub(by_a_after)
    ));
    let t = sc.tally;
    sc.check(t.right == t.calls, || {
        format!(
            "{} of {} calls not answered right",
            t.calls - t.right,
            t.calls
        )
    });
    stop_servers(sc, &mut servers[1..]);
}

fn stream_total(calls: &[Call]) -> u64 {
    calls.iter().filter(|c| c.outcome == Outcome::Right).count() as u64
}

/// 2. SIGTERM one of two servers under load: it finishes the request in hand and exits 0
///    within a few seconds; every call is answered right.
fn sigterm_one_of_two_servers(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-sigterm");
    let mut servers = start_servers(queue.name(), "term", 2);
    let stream = Stream::start(queue.name(), 4, slow_n, Duration::from_millis(50));
    stream.wait("both servers to answer", Duration::from_secs(30), |s| {
        s.answers_by("term-a") >= 3 && s.answers_by("term-b") >= 3
    });
    let at_term = stream.answers();
    let stopped = servers[0].stop(Duration::from_secs(5));
    match &stopped {
        Ok(took) => sc.note(format!(
            "term-a exited 0 {:.2}s after SIGTERM, after {at_term} answers",
            took.as_secs_f64()
        )),
        Err(err) => sc.check(false, || err.clone()),
    }
    stream.wait("30 answers after the stop", Duration::from_secs(60), |s| {
        s.answers() >= at_term + 30
    });
    let (calls, _) = stream.finish();
    sc.record_all(&calls);
    // Every request term-a started, it answered: it abandoned nothing in hand.
    let started_by_a = servers[0].log_count(" [.] fib(");
    let answered_by_a = calls
        .iter()
        .filter(|c| c.server.as_deref() == Some("term-a"))
        .count();
    sc.check(started_by_a == answered_by_a, || {
        format!("term-a started {started_by_a} requests but answered {answered_by_a}")
    });
    sc.check(servers[0].log_count("shutting down") == 1, || {
        format!(
            "term-a did not log its shutdown\n{}",
            servers[0].log_tail(10)
        )
    });
    let t = sc.tally;
    sc.check(t.right == t.calls, || {
        format!(
            "{} of {} calls not answered right",
            t.calls - t.right,
            t.calls
        )
    });
    stop_servers(sc, &mut servers[1..]);
}

const BEFORE: u8 = 0;
const DURING: u8 = 1;
const AFTER: u8 = 2;

/// 3. Restart the broker application under load: calls before and after succeed, calls during
///    end with clear errors (none hangs), a client against the stopped broker fails at once
///    with a connection error, and the servers come back (re-declaring the transient queue).
fn broker_restart(sc: &mut Scenario) {
    assert!(
        broker_is_local(),
        "this scenario restarts the broker with rabbitmqctl: it needs a local broker, not {}",
        testing::broker()
    );
    let queue = QueueGuard::new("fault-restart");
    let mut servers = start_servers(queue.name(), "restart", 2);
    let mut idle = Caller::connected(client_options(queue.name(), CALL_TIMEOUT));
    let first = idle.call(30);
    sc.record(&first);
    let stream = Stream::start(queue.name(), 3, slow_n, Duration::from_millis(100));
    stream.wait("answers before the restart", Duration::from_secs(30), |s| {
        s.answers() >= 10
    });

    let mut app = BrokerApp { stopped: false };
    stream.set_phase(DURING);
    let down_at = Instant::now();
    let stop_took = app.stop();

    // A connected client: its call fails at once with a connection error.
    let call = idle.call(30);
    sc.check(call.outcome == Outcome::Error, || {
        format!("call on a connection the broker closed: {call:?}")
    });
    sc.check(call.elapsed < Duration::from_secs(2), || {
        format!("call on a closed connection took {:?}", call.elapsed)
    });
    sc.record(&call);
    // A new client against the stopped broker ("no broker"): Error::Connect, at once.
    let started = Instant::now();
    let result = FibonacciRpcClient::connect(&client_options(queue.name(), CALL_TIMEOUT));
    let elapsed = started.elapsed();
    let budget = 2 * CONNECT_TIMEOUT + GRACE;
    match result {
        Err(err @ Error::Connect { .. }) => {
            sc.check(err.exit_code() == exit_code::CONNECTION, || err.to_string());
            sc.check(elapsed < Duration::from_secs(1), || {
                format!("connecting to the stopped broker took {elapsed:?}: {err}")
            });
            sc.record(&Call::new(
                30,
                Outcome::Error,
                err.to_string(),
                started,
                budget,
            ));
            sc.note(format!("client against the stopped broker: {err}"));
        }
        other => {
            sc.check(false, || {
                format!("connect to the stopped broker: {:?}", other.err())
            });
            sc.record(&Call::new(
                30,
                Outcome::Wrong,
                "connected".into(),
                started,
                budget,
            ));
        }
    }
    // The outage itself (a fault we inject, not a wait for a condition).
    thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));
    let start_took = app.start().unwrap_or_else(|e| panic!("{e}"));
    let up_at = Instant::now();
    wait_for_consumers(queue.name(), 2, Duration::from_secs(60)).unwrap_or_else(|e| {
        let logs: Vec<String> = servers.iter().map(|s| s.log_tail(10)).collect();
        panic!("servers did not come back: {e}\n{}", logs.join("\n"))
    });
    let back_after = up_at.elapsed();
    stream.set_phase(AFTER);
    sc.note(format!(
        "broker down {:.1}s (stop_app {:.1}s, start_app {:.1}s); both servers consumed again \
         {:.1}s after the broker was up",
        (up_at - down_at).as_secs_f64(),
        stop_took.as_secs_f64(),
        start_took.as_secs_f64(),
        back_after.as_secs_f64()
    ));
    stream.wait("answers after the restart", Duration::from_secs(60), |s| {
        s.answers_in_phase(AFTER) >= 20
    });
    let (calls, connects) = stream.finish();
    sc.record_all(&calls);
    // Later calls, on a fresh client and on the old one (which reconnects).
    let mut fresh = Caller::new(client_options(queue.name(), CALL_TIMEOUT));
    let later: Vec<Call> = (0..10)
        .map(|k| fresh.call(slow_n(0, k)))
        .chain(std::iter::once(idle.call(40)))
        .map(|mut c| {
            c.phase = AFTER;
            c
        })
        .collect();
    sc.record_all(&later);

    let not_right = |phase: u8| {
        calls
            .iter()
            .chain(&later)
            .filter(|c| c.phase == phase && c.outcome != Outcome::Right)
            .map(|c| c.detail.clone())
            .collect::<Vec<_>>()
    };
    for (phase, name) in [(BEFORE, "before"), (AFTER, "after")] {
        let bad = not_right(phase);
        sc.check(bad.is_empty(), || {
            format!("{} call(s) {name} the restart failed: {:?}", bad.len(), bad)
        });
    }
    let during: Vec<&Call> = calls.iter().filter(|c| c.phase == DURING).collect();
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for call in during.iter().filter(|c| c.outcome == Outcome::Error) {
        let reason: String = call.detail.chars().take(60).collect();
        *reasons.entry(reason).or_default() += 1;
    }
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    sc.note(format!(
        "{} stream calls during the outage ({} right); {} connects by 3 callers; errors: {:?}",
        during.len(),
        during
            .iter()
            .filter(|c| c.outcome == Outcome::Right)
            .count(),
        connects,
        reasons
    ));
    for server in &mut servers {
        sc.check(server.exited().is_none(), || {
            format!("{} exited: {}", server.name, server.log_tail(10))
        });
    }
    stop_servers(sc, &mut servers);
}

/// What a raw request must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An error reply with this code, carrying the request's correlation id.
    Refused(&'static str),
    /// An error reply with this code and no correlation id (the request had none).
    RefusedWithoutId(&'static str),
    /// No reply: the request has no `reply_to`.
    Nothing,
}

struct RawRequest {
    body: Vec<u8>,
    properties: AmqpProperties,
    expect: Expect,
}

const BAD: &str = "bad-request";
const TOO_LARGE: &str = "too-large";

/// Malformed bodies and the error code each must get from a server with `--max-n 1000000`.
fn malformed_bodies() -> Vec<(Vec<u8>, &'static str)> {
    let mut bodies: Vec<(Vec<u8>, &'static str)> = Vec::new();
    let mut add = |body: Vec<u8>, code: &'static str| bodies.push((body, code));
    // Empty and blank.
    add(Vec::new(), BAD);
    for i in 0..40 {
        let blank = " ".repeat(i % 5) + &"\t".repeat(i % 3) + &"\r\n".repeat(i % 2) + "\x0c";
        add(blank.into_bytes(), BAD);
    }
    // Negative numbers.
    for i in 0..150u64 {
        add(format!("-{}", i * 7919 % 2_000_000).into_bytes(), BAD);
    }
    // Floats, exponents, other notations and junk.
    for i in 0..150u64 {
        let (a, b) = (i * 31 % 1000, i % 97);
        let text = match i % 6 {
            0 => format!("{a}.{b}"),
            1 => format!("{a}e{b}"),
            2 => format!("{a}E-{b}"),
            3 => format!(".{b}"),
            4 => format!("{a}."),
            _ => format!("{a},{b}"),
        };
        add(text.into_bytes(), BAD);
    }
    for text in [
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "1_000",
        "0x1F",
        "0b101",
        "0o17",
        "+30",
        "30 30",
        "3 0",
        "30abc",
        "thirty",
        "{\"n\":30}",
        "[30]",
        "\"30\"",
        "null",
        "true",
        "30\x00",
        "\x0030",
        "12\x0034",
        "\x00",
        "\x7f",
        "\u{663}\u{660}",
        "\u{ff13}\u{ff10}",
        "\u{969}\u{966}",
        "30\u{200b}",
        "\u{feff}30",
        "\u{a0}30",
        "3\u{2009}0",
        "½",
        "Ⅻ",
        "٣٠",
        "30;DROP TABLE",
        "$(reboot)",
        "%s%s%s",
        "\u{1b}[31m30",
    ] {
        add(text.as_bytes().to_vec(), BAD);
    }
    // Wrong encodings: UTF-16 (little and big endian, with and without a BOM) and UTF-32.
    for i in 0..60u64 {
        let digits = (i * 37).to_string();
        let units: Vec<u16> = digits.encode_utf16().collect();
        let le: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
        let be: Vec<u8> = units.iter().flat_map(|u| u.to_be_bytes()).collect();
        let le_bom = [&[0xff, 0xfe][..], &le].concat();
        let be_bom = [&[0xfe, 0xff][..], &be].concat();
        let utf32: Vec<u8> = digits
            .chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect();
        for body in [le, be, le_bom, be_bom, utf32] {
            add(body, BAD);
        }
    }
    // Not UTF-8: Latin-1 and random bytes (an LCG: reproducible), each with an 0xff somewhere.
    for i in 0..40u64 {
        let mut text = (i * 11).to_string().into_bytes();
        text.push([0xb2, 0xb3, 0xb9, 0xe9][i as usize % 4]); // ², ³, ¹, é in Latin-1
        add(text, BAD);
    }
    let mut seed: u64 = 0x5eed_f00d;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as u8
    };
    for i in 0..200usize {
        let len = 1 + i % 64;
        let mut body: Vec<u8> = (0..len).map(|_| next()).collect();
        body[i % len] = 0xff;
        add(body, BAD);
    }
    // Huge numbers: 20 to 64 digits (above u64 or above the limit).
    for len in 20..=64 {
        add("9".repeat(len).into_bytes(), TOO_LARGE);
        add(format!("1{}", "0".repeat(len - 1)).into_bytes(), TOO_LARGE);
    }
    add(u64::MAX.to_string().into_bytes(), TOO_LARGE);
    add("18446744073709551616".into(), TOO_LARGE);
    // Above --max-n (1,000,000), also with surrounding whitespace and leading zeros.
    for i in 1..=100u64 {
        add(
            (1_000_000 + i * i * 1013).to_string().into_bytes(),
            TOO_LARGE,
        );
    }
    add(b" 1000001\n".to_vec(), TOO_LARGE);
    add(b"0001000001".to_vec(), TOO_LARGE);
    // Oversized bodies: more than 64 bytes, up to 1 MB.
    for len in [
        65, 100, 1000, 4096, 65_536, 100_000, 100_000, 1_000_000, 1_000_000,
    ] {
        add("7".repeat(len).into_bytes(), BAD);
    }
    add(vec![0xff; 100_000], BAD);
    add(vec![b' '; 1_000_000], BAD);
    bodies
}

/// Every malformed body with `reply_to` and a correlation id, then variants: without a
/// correlation id, without `reply_to`, with odd properties.
fn malformed_requests(reply_to: &str) -> Vec<RawRequest> {
    let bodies = malformed_bodies();
    let mut requests = Vec::new();
    for (i, (body, code)) in bodies.iter().enumerate() {
        let mut properties = wire::request_properties(reply_to, &format!("m-{i}"));
        if i % 7 == 3 {
            // Odd properties, a stray header and a timestamp without expiration: ignored.
            let mut headers = FieldTable::new();
            headers.insert(
                "x-deadline".into(),
                AmqpValue::LongString("tomorrow".into()),
            );
            properties = properties
                .with_headers(headers)
                .with_timestamp(1_000)
                .with_content_type("application/json".into())
                .with_content_encoding("gzip".into());
        }
        requests.push(RawRequest {
            body: body.clone(),
            properties,
            expect: Expect::Refused(code),
        });
    }
    for (body, code) in bodies.iter().step_by(10) {
        requests.push(RawRequest {
            body: body.clone(),
            properties: AmqpProperties::default().with_reply_to(reply_to.to_string()),
            expect: Expect::RefusedWithoutId(code),
        });
    }
    let valid: Vec<(Vec<u8>, &str)> = vec![(b"30".to_vec(), ""); 20];
    for (i, (body, _)) in bodies.iter().step_by(8).chain(&valid).enumerate() {
        requests.push(RawRequest {
            body: body.clone(),
            properties: AmqpProperties::default().with_correlation_id(format!("x-{i}")),
            expect: Expect::Nothing,
        });
    }
    requests
}

/// 4. More than 1,000 malformed requests, published raw: the server answers each one that has
///    a `reply_to` with an error reply, drops the others, keeps running and still serves.
fn malformed_requests_scenario(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-malformed");
    let mut servers = start_servers(queue.name(), "malformed", 1);
    let mut admin = Admin::connect().expect("admin");
    let (reply_queue, replies) =
        rpc_client::consume::callback_queue(admin.channel()).expect("declare the reply queue");
    let requests = malformed_requests(&reply_queue);
    assert!(requests.len() >= 1000, "only {} requests", requests.len());
    let started = Instant::now();
    for request in &requests {
        admin
            .publish(queue.name(), &request.body, request.properties.clone())
            .expect("publish a malformed request");
    }
    // Last, a valid request: one server, prefetch 1, FIFO: its reply comes after all others.
    admin
        .publish(
            queue.name(),
            b"30",
            wire::request_properties(&reply_queue, "final"),
        )
        .expect("publish the final request");
    let published = started.elapsed();

    let mut by_id: HashMap<String, (AmqpProperties, Vec<u8>)> = HashMap::new();
    let mut without_id: Vec<(AmqpProperties, Vec<u8>)> = Vec::new();
    let mut duplicates = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut final_reply = None;
    while final_reply.is_none() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match replies.recv_timeout(remaining) {
            Ok(ConsumerMessage::Delivery(d)) => match d.properties.correlation_id().clone() {
                Some(id) if id == "final" => final_reply = Some(d.body),
                Some(id) => {
                    if by_id.insert(id, (d.properties, d.body)).is_some() {
                        duplicates += 1;
                    }
                }
                None => without_id.push((d.properties, d.body)),
            },
            other => {
                sc.check(false, || {
                    format!(
                        "waiting for replies: {other:?} after {:?}",
                        started.elapsed()
                    )
                });
                break;
            }
        }
    }
    let answered_in = started.elapsed();
    sc.check(duplicates == 0, || {
        format!("{duplicates} duplicate replies")
    });
    let final_call = Call::new(
        30,
        match final_reply.as_deref() {
            Some(b"832040") => Outcome::Right,
            Some(_) => Outcome::Wrong,
            None => Outcome::Lost,
        },
        format!("{:?}", final_reply.as_deref().map(String::from_utf8_lossy)),
        started,
        Duration::from_secs(60) + GRACE,
    );
    sc.record(&final_call);

    let raw_budget = Duration::from_secs(60) + GRACE;
    fn code_of(properties: &AmqpProperties) -> Option<&str> {
        wire::header(properties, ERROR_HEADER)
    }
    let mut wrong_codes = Vec::new();
    let mut without_id_codes: Vec<&str> =
        without_id.iter().filter_map(|(p, _)| code_of(p)).collect();
    let mut expected_refusals = 0;
    for (i, request) in requests.iter().enumerate() {
        let n = i as u64; // the request's index, for the bad-call list
        let (outcome, detail) = match request.expect {
            Expect::Refused(code) => {
                expected_refusals += 1;
                let id = request
                    .properties
                    .correlation_id()
                    .clone()
                    .expect("correlation id");
                match by_id.get(&id) {
                    None => (Outcome::Lost, format!("no reply to {id}")),
                    Some((properties, body)) if code_of(properties) == Some(code) => {
                        let message = String::from_utf8_lossy(body);
                        if message.is_empty() || message.contains('\n') || body.len() > 200 {
                            (Outcome::Wrong, format!("{id}: message {message:?}"))
                        } else {
                            (Outcome::Error, String::new())
                        }
                    }
                    Some((properties, body)) => {
                        wrong_codes.push(id.clone());
                        (
                            Outcome::Wrong,
                            format!(
                                "{id} (body {:?}): code {:?}, want {code}: {:?}",
                                String::from_utf8_lossy(
                                    &request.body[..request.body.len().min(20)]
                                ),
                                code_of(properties),
                                String::from_utf8_lossy(body)
                            ),
                        )
                    }
                }
            }
            Expect::RefusedWithoutId(code) => {
                expected_refusals += 1;
                match without_id_codes.iter().position(|c| *c == code) {
                    Some(at) => {
                        without_id_codes.swap_remove(at);
                        (Outcome::Error, String::new())
                    }
                    None => (Outcome::Lost, format!("no {code} reply without an id")),
                }
            }
            Expect::Nothing => (Outcome::NoReply, String::new()),
        };
        let mut call = Call::new(n, outcome, detail, started, raw_budget);
        call.elapsed = answered_in;
        sc.record(&call);
    }
    sc.check(without_id_codes.is_empty(), || {
        format!("unexpected replies without an id: {without_id_codes:?}")
    });
    let requested: HashSet<String> = requests
        .iter()
        .filter(|r| matches!(r.expect, Expect::Refused(_)))
        .filter_map(|r| r.properties.correlation_id().clone())
        .collect();
    let stray = by_id.keys().filter(|id| !requested.contains(*id)).count();
    sc.check(stray == 0, || format!("{stray} replies nobody asked for"));

    // The server logged each refusal and each drop, survived, and left the queue empty.
    let server = &mut servers[0];
    let refused = server.log_count("refusing request");
    let dropped = server.log_count("dropping a request without reply_to");
    let no_reply_to = requests
        .iter()
        .filter(|r| r.expect == Expect::Nothing)
        .count();
    sc.check(refused == expected_refusals, || {
        format!("server logged {refused} refusals, want {expected_refusals}")
    });
    sc.check(dropped == no_reply_to, || {
        format!("server logged {dropped} drops, want {no_reply_to}")
    });
    sc.check(server.exited().is_none(), || {
        format!("the server exited\n{}", server.log_tail(20))
    });
    admin
        .wait_for_empty(queue.name())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut caller = Caller::new(client_options(queue.name(), CALL_TIMEOUT));
    let after = caller.call(SLOW_N);
    sc.check(after.outcome == Outcome::Right, || {
        format!("valid call after the malformed ones: {after:?}")
    });
    sc.record(&after);
    sc.note(format!(
        "{} raw requests ({} with reply_to, {} without; bodies up to 1 MB) published in {:.2}s, \
         all handled in {:.2}s",
        requests.len(),
        expected_refusals,
        no_reply_to,
        published.as_secs_f64(),
        answered_in.as_secs_f64()
    ));
    stop_servers(sc, &mut servers);
}

/// n of the flood scenario's calls: a mix of fast and slower ones.
const FLOOD_NS: [u64; 6] = [1, 30, 1000, 10_000, 100_000, 300_000];
const FLOOD_REPLIES: u64 = 20_000;
const FLOOD_CALLS: u64 = 300;

/// 5. 20,000 replies with unknown correlation ids flood a client's callback queue while it
///    makes at least 300 calls: all of them are answered right.
fn stray_reply_flood(sc: &mut Scenario) {
    for n in FLOOD_NS {
        expected(n);
    }
    let queue = QueueGuard::new("fault-flood");
    let mut servers = start_servers(queue.name(), "flood", 2);
    let mut caller = Caller::connected(client_options(queue.name(), CALL_TIMEOUT));
    let reply_queue = caller.reply_queue().expect("connected").to_string();
    let published = Arc::new(AtomicU64::new(0));
    let flood_done = Arc::new(AtomicBool::new(false));
    let flood_started = Instant::now();
    let flood = {
        let (published, flood_done) = (Arc::clone(&published), Arc::clone(&flood_done));
        let reply_queue = reply_queue.clone();
        thread::spawn(move || {
            let admin = Admin::connect().expect("flood connects");
            for i in 0..FLOOD_REPLIES {
                let id = uuid::Uuid::new_v4().to_string();
                let (properties, body): (AmqpProperties, &[u8]) = match i % 5 {
                    0 => (
                        wire::reply_properties(Some(&id), "impostor", None),
                        b"12345",
                    ),
                    1 => (
                        wire::reply_properties(
                            Some(&id),
                            "impostor",
                            Some(wire::ErrorCode::Internal),
                        ),
                        b"not yours",
                    ),
                    2 => (AmqpProperties::default(), b"832040"),
                    3 => (
                        AmqpProperties::default().with_correlation_id(String::new()),
                        b"\xff\xfe",
                    ),
                    // 252 characters: a short string holds at most 255 bytes (amiquip does not
                    // check, and the broker closes the connection on a longer one).
                    _ => (
                        AmqpProperties::default().with_correlation_id(id.repeat(7)),
                        b"",
                    ),
                };
                admin
                    .publish(&reply_queue, body, properties)
                    .expect("publish a stray reply");
                published.fetch_add(1, Ordering::SeqCst);
                if i % 500 == 499 {
                    // Pacing: spread the flood over about a second of calls.
                    thread::sleep(Duration::from_millis(25));
                }
            }
            flood_done.store(true, Ordering::SeqCst);
            flood_started.elapsed()
        })
    };
    testing::wait_until("the flood to start", Duration::from_secs(30), || {
        Ok(published.load(Ordering::SeqCst) >= 1000)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // At least FLOOD_CALLS calls, and on until the flood is over: the calls after it (whose
    // replies were queued behind the last stray ones) prove the client read all of them.
    let mut during_flood = 0;
    let mut after_flood = 0;
    let mut k = 0;
    while k < FLOOD_CALLS || after_flood < 5 {
        let flooding = !flood_done.load(Ordering::SeqCst);
        let call = caller.call(FLOOD_NS[k as usize % FLOOD_NS.len()]);
        if flooding {
            during_flood += 1;
        } else {
            after_flood += 1;
        }
        sc.record(&call);
        k += 1;
    }
    let flood_took = flood.join().expect("flood thread");
    sc.check(caller.connects == 1, || {
        format!("the client reconnected ({} connects)", caller.connects)
    });
    sc.check(caller.reply_queue() == Some(reply_queue.as_str()), || {
        "the callback queue changed".into()
    });
    sc.check(during_flood >= 50, || {
        format!("only {during_flood} calls started during the flood")
    });
    let t = sc.tally;
    sc.check(t.right == t.calls, || {
        format!("{} of {} calls right", t.right, t.calls)
    });
    sc.note(format!(
        "{} stray replies published in {:.2}s; {during_flood} calls started during the flood, \
         {after_flood} after it",
        published.load(Ordering::SeqCst),
        flood_took.as_secs_f64()
    ));
    stop_servers(sc, &mut servers);
}

/// 6. The client against a closed port, a port that never speaks AMQP, wrong credentials, a
///    missing queue and a queue without consumers: each fails quickly with the right error.
fn client_against_bad_peers(sc: &mut Scenario) {
    // A password that no message may show.
    let broker = BrokerOptions {
        connect_timeout: CONNECT_TIMEOUT,
        password: "fault-run-secret-4711".into(),
        ..testing::broker()
    };
    let connect_budget = 2 * CONNECT_TIMEOUT + GRACE;

    let expect_connect_error =
        |sc: &mut Scenario, what: &str, broker: BrokerOptions, within: Duration, needle: &str| {
            let options = ClientOptions {
                brokers: vec![broker],
                ..client_options("unused", CALL_TIMEOUT)
            };
            let started = Instant::now();
            let result = FibonacciRpcClient::connect(&options);
            let elapsed = started.elapsed();
            let (outcome, detail) = match result {
                Err(err @ Error::Connect { .. }) => {
                    let text = err.to_string();
                    sc.check(err.exit_code() == exit_code::CONNECTION, || {
                        format!("{what}: exit code {}", err.exit_code())
                    });
                    sc.check(text.contains(needle), || {
                        format!("{what}: {text:?} does not mention {needle:?}")
                    });
                    sc.check(!text.contains(&options.brokers[0].password), || {
                        format!("{what}: password in {text:?}")
                    });
                    sc.check(elapsed < within, || {
                        format!("{what}: took {elapsed:?}, want under {within:?}")
                    });
                    sc.note(format!("{what}: {text} ({:.2}s)", elapsed.as_secs_f64()));
                    (Outcome::Error, text)
                }
                Err(other) => (Outcome::Wrong, format!("{what}: {other:?}")),
                Ok(_) => (Outcome::Wrong, format!("{what}: connected")),
            };
            sc.check(outcome == Outcome::Error, || detail.clone());
            sc.record(&Call::new(0, outcome, detail, started, connect_budget));
        };

    // A closed port: connection refused.
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr").port()
    };
    expect_connect_error(
        sc,
        "closed port",
        BrokerOptions {
            host: "127.0.0.1".into(),
            port: closed_port,
            ..broker.clone()
        },
        Duration::from_secs(1),
        "refused",
    );

    // A port that accepts connections but never speaks AMQP.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = listener.local_addr().expect("local addr").port();
    let (done, wait_done) = crossbeam_channel::bounded::<()>(1);
    let silent = thread::spawn(move || {
        let accepted = listener.accept();
        let _ = wait_done.recv_timeout(Duration::from_secs(30));
        drop(accepted);
    });
    expect_connect_error(
        sc,
        "silent port",
        BrokerOptions {
            host: "127.0.0.1".into(),
            port: silent_port,
            ..broker.clone()
        },
        CONNECT_TIMEOUT + Duration::from_millis(1500),
        "no AMQP handshake",
    );
    let _ = done.send(());
    silent.join().expect("silent listener");

    // Wrong credentials. RabbitMQ keeps the socket open for 3 s after refusing a login (to
    // slow down guessing) unless the client announces `authentication_failure_close`, which
    // amiquip does not: the client notices when the broker closes or its handshake timeout
    // ends, whichever comes first.
    expect_connect_error(
        sc,
        "wrong password",
        broker.clone(),
        CONNECT_TIMEOUT.min(Duration::from_secs(3)) + Duration::from_secs(1),
        "login refused",
    );

    // No server and no queue: NoRoute at once, well under the 15 s timeout.
    let missing = testing::unique_name("fault-never-declared");
    let mut caller = Caller::connected(client_options(&missing, CALL_TIMEOUT));
    let started = Instant::now();
    let result = caller.client.as_mut().expect("connected").call_reply(30);
    let elapsed = started.elapsed();
    let outcome = match &result {
        Err(err @ Error::NoRoute { .. }) => {
            sc.check(err.exit_code() == exit_code::NO_ROUTE, || err.to_string());
            sc.check(elapsed < Duration::from_secs(1), || {
                format!("NoRoute took {elapsed:?}")
            });
            sc.note(format!("no queue: {err} ({:.3}s)", elapsed.as_secs_f64()));
            Outcome::Error
        }
        other => {
            sc.check(false, || format!("no queue: {other:?}"));
            Outcome::Wrong
        }
    };
    sc.record(&Call::new(
        30,
        outcome,
        format!("{result:?}"),
        started,
        CALL_TIMEOUT + GRACE,
    ));

    // A queue without consumers: Timeout, saying so.
    let queue = QueueGuard::new("fault-no-consumer");
    Admin::connect()
        .expect("admin")
        .declare(queue.name(), false)
        .expect("declare");
    let timeout = Duration::from_secs(1);
    let mut caller = Caller::connected(client_options(queue.name(), timeout));
    let started = Instant::now();
    let result = caller.client.as_mut().expect("connected").call_reply(30);
    let elapsed = started.elapsed();
    let outcome = match &result {
        Err(err @ Error::Timeout { consumers, .. }) => {
            let text = err.to_string();
            sc.check(*consumers == Some(0), || format!("consumers {consumers:?}"));
            sc.check(text.contains("has no consumer"), || text.clone());
            sc.check(err.exit_code() == exit_code::TIMEOUT, || text.clone());
            sc.check(elapsed >= timeout && elapsed < timeout + GRACE, || {
                format!("timeout after {elapsed:?}")
            });
            sc.note(format!(
                "no consumer: {text} ({:.2}s)",
                elapsed.as_secs_f64()
            ));
            Outcome::Error
        }
        other => {
            sc.check(false, || format!("no consumer: {other:?}"));
            Outcome::Wrong
        }
    };
    sc.record(&Call::new(
        30,
        outcome,
        format!("{result:?}"),
        started,
        timeout + GRACE,
    ));
}

#[test]
#[ignore = "fault run: restarts the broker; run by scripts/test.sh in its own stage"]
fn fault_run() {
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(log_dir());
    std::fs::create_dir_all(log_dir()).expect("create the log directory");
    wait_for_broker(Duration::from_secs(30)).unwrap_or_else(|e| panic!("no broker: {e}"));
    for caller in 0..4 {
        for k in 0..2 {
            expected(slow_n(caller, k));
        }
    }
    expected(30);
    expected(40);
    expected(SLOW_N);
    type Body = fn(&mut Scenario);
    let all: [(&'static str, Body); 6] = [
        ("1 kill -9 one of two servers", kill_one_of_two_servers),
        ("2 SIGTERM one of two servers", sigterm_one_of_two_servers),
        ("3 broker restart", broker_restart),
        ("4 malformed requests (raw)", malformed_requests_scenario),
        ("5 20,000 stray replies", stray_reply_flood),
        ("6 client against bad peers", client_against_bad_peers),
    ];
    // FAULT_SCENARIOS=1,4 runs only those (while working on one); all of them by default.
    let only: Option<Vec<String>> = std::env::var("FAULT_SCENARIOS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let scenarios: Vec<Scenario> = all
        .into_iter()
        .filter(|(name, _)| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|o| name.split(' ').next() == Some(o)))
        })
        .map(|(name, body)| run_scenario(name, body))
        .collect();
    assert!(!scenarios.is_empty(), "FAULT_SCENARIOS selects no scenario");
    let took = started.elapsed();
    print_table(&scenarios, took);
    let failures: Vec<String> = scenarios
        .iter()
        .flat_map(|s| s.failures.iter().map(move |f| format!("{}: {f}", s.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed check(s):\n{}\n(server logs in {})",
        failures.len(),
        failures.join("\n"),
        log_dir().display()
    );
}
