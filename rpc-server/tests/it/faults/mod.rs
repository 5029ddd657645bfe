//! The fault run: servers killed with SIGKILL and stopped with SIGTERM under load, a broker
//! restart, malformed requests, a flood of stray replies, unreachable brokers, a memory alarm,
//! stalled or trickled links (every wait has a bound), and client connections closed mid-call.
//!
//! One ignored test runs the scenarios one after another and prints, per scenario and in total,
//! how the calls ended: answered right, answered with an error (an error reply or a clear local
//! error), no reply by contract, answered wrong, lost (a call that should have been answered
//! timed out or got no answer) and hung (a call that did not return within its timeout plus
//! [`GRACE`](crate::common::load::GRACE)). Then it asserts that nothing was lost, wrong or hung, plus each scenario's own
//! checks. Servers are `rpc-server` processes (so SIGKILL is real), callers use the rpc-client
//! library from several threads. The harness (callers, tally, table, servers, broker control)
//! is the tests' `common` module, shared with the cluster test.
//!
//! The broker is `AMQP_URI`'s. Scenario 3 stops and restarts that broker's application with
//! `$RABBITMQCTL` (a command prefix, e.g. `scripts/node.sh ctl rpcfault`; default `rabbitmqctl`),
//! which drops every connection on it: the run refuses to start it on a shared broker, i.e.
//! when `AMQP_URI` is unset or names port 5672. Give it a throwaway node, as `scripts/test.sh`
//! does:
//!
//! ```text
//! scripts/node.sh start rpcfault 5700 &&
//!     AMQP_URI=$(scripts/node.sh uri rpcfault) RABBITMQCTL="$PWD/scripts/node.sh ctl rpcfault" \
//!     cargo test --release -p rpc-server --test it faults:: -- --ignored --nocapture --test-threads=1
//! scripts/node.sh stop rpcfault
//! ```
//!
//! Server logs go to `target/tmp/faults/` (kept for inspection; replaced by the next run).
//! `FAULT_SCENARIOS=4,5` runs only the scenarios with those numbers (without 3, any broker
//! will do).
//!
//! Adding a scenario: write `faults/<name>.rs` with a `pub const SCENARIO: Def` (its number
//! and name, whether it breaks the broker, its function) and add one line to the
//! `SCENARIOS` list below.

use crate::common::callers::{Callers, Pace};
use crate::common::load::{print_table, Call, Checks, Row, Tally};
use crate::common::server::{self, ServerProc};
use crate::common::{expected, fresh_log_dir, log_dir};
use rpc_client::testing;
use rpc_client::{BrokerOptions, ClientOptions, ReplyQueue};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod alarm;
mod bad_peers;
mod broker_restart;
mod client_recovery;
mod consumer_timeout;
mod kill;
mod malformed;
mod probes;
mod sigterm;
mod stalls;
mod stray_replies;

/// The scenarios, in order (a module left out here leaves its `SCENARIO` unused: a warning).
const SCENARIOS: &[Def] = &[
    kill::SCENARIO,
    sigterm::SCENARIO,
    broker_restart::SCENARIO,
    malformed::SCENARIO,
    stray_replies::SCENARIO,
    bad_peers::SCENARIO,
    alarm::SCENARIO,
    stalls::SCENARIO,
    client_recovery::SCENARIO,
    consumer_timeout::SCENARIO,
    probes::SCENARIO,
];

/// A scenario of the run.
pub struct Def {
    /// Its number, as `FAULT_SCENARIOS` selects it.
    pub number: &'static str,
    /// What it does, for the table.
    pub name: &'static str,
    /// It stops the broker (or otherwise disturbs everyone on it).
    pub breaks_broker: bool,
    /// Runs it, recording its calls, checks and notes.
    pub run: fn(&mut Scenario),
}

/// The timeout of the callers' calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The callers' limit on the TCP connect and on the AMQP handshake, each.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// fib(10⁶) (208,988 digits) takes about 35 ms in a release build: with more callers than
/// servers, every server has a request in hand at any moment.
pub const SLOW_N: u64 = 1_000_000;

/// The n of call `k` of caller `caller` in the slow streams: distinct per caller, so an answer
/// delivered to the wrong caller is a wrong answer.
pub fn slow_n(caller: usize, k: u64) -> u64 {
    SLOW_N - 2 * caller as u64 - k % 2
}

/// Where the servers log.
fn logs() -> PathBuf {
    log_dir("faults")
}

/// Servers `<prefix>-a`, `<prefix>-b`, … on `queue`, once all of them consume it.
pub fn start_servers(queue: &str, prefix: &str, count: usize) -> Vec<ServerProc> {
    server::start_servers(&logs(), &testing::broker(), queue, prefix, count)
}

/// Stops every server with SIGTERM and checks that each exits 0 within 5 s, without a panic.
pub fn stop_servers(sc: &mut Scenario, servers: &mut [ServerProc]) {
    server::stop_servers(&mut sc.checks, servers, Duration::from_secs(5));
}

/// `callers` callers of slow calls ([`slow_n`]) on `queue`, pausing only after a failed call.
pub fn slow_stream(queue: &str, callers: usize, error_pace: Duration) -> Callers {
    let options = (0..callers)
        .map(|_| client_options(queue, CALL_TIMEOUT))
        .collect();
    Callers::start(
        options,
        slow_n,
        Pace {
            right: Duration::ZERO,
            error: error_pace,
        },
    )
}

/// Options of a client of `queue` on the test broker, with a short connect timeout.
pub fn client_options(queue: &str, timeout: Duration) -> ClientOptions {
    ClientOptions {
        brokers: vec![BrokerOptions {
            connect_timeout: CONNECT_TIMEOUT,
            ..testing::broker()
        }],
        queue: queue.to_string(),
        timeout,
        // The flood scenario publishes into the callback queue: a real, exclusive one.
        reply_queue: ReplyQueue::Exclusive,
        ..ClientOptions::default()
    }
}

/// What one scenario did: the tally, the wrong, lost and hung calls, checks and notes.
pub struct Scenario {
    /// Number and name, as in the table.
    pub name: String,
    pub checks: Checks,
    pub tally: Tally,
    /// Wrong, lost and hung calls, shown under the table (the first few).
    pub bad_calls: Vec<String>,
    pub took: Duration,
}

impl Scenario {
    pub fn record(&mut self, call: &Call) {
        self.tally.count(call);
        if call.bad() {
            self.bad_calls.push(call.describe());
        }
    }

    pub fn record_all(&mut self, calls: &[Call]) {
        for call in calls {
            self.record(call);
        }
    }

    /// Records a failed check without stopping the scenario.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks.check(ok, what);
    }

    pub fn note(&mut self, note: String) {
        self.checks.note(note);
    }

    /// Checks that every call so far was answered right.
    pub fn check_all_right(&mut self) {
        let t = self.tally;
        self.check(t.right == t.calls, || {
            format!(
                "{} of {} calls not answered right",
                t.calls - t.right,
                t.calls
            )
        });
    }
}

/// Runs one scenario; a panic inside it is a failure of that scenario, and the next one runs.
fn run_scenario(def: &Def) -> Scenario {
    let name = format!("{} {}", def.number, def.name);
    println!("fault run: ===== {name}");
    let mut scenario = Scenario {
        checks: Checks::new(format!("fault run: {name}")),
        name,
        tally: Tally::default(),
        bad_calls: Vec::new(),
        took: Duration::ZERO,
    };
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| (def.run)(&mut scenario)));
    if let Err(panic) = result {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        scenario
            .checks
            .failures
            .push(format!("panicked: {message}"));
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

fn print_results(scenarios: &[Scenario], took: Duration) {
    let mut total = Tally::default();
    let mut rows: Vec<Row> = scenarios
        .iter()
        .map(|s| {
            total.add(&s.tally);
            Row::new(s.name.clone(), s.tally, Some(s.took))
        })
        .collect();
    rows.push(Row::new("total", total, Some(took)));
    print_table("fault run: results", "scenario", &rows);
    for scenario in scenarios {
        for note in &scenario.checks.notes {
            println!("  {}: {note}", scenario.name);
        }
    }
    for scenario in scenarios {
        for call in scenario.bad_calls.iter().take(10) {
            println!("  {}: {call}", scenario.name);
        }
        for failure in &scenario.checks.failures {
            println!("  {}: FAILED: {failure}", scenario.name);
        }
    }
}

/// The scenarios `FAULT_SCENARIOS` selects (all by default). Panics, before anything runs, if
/// one of them breaks the broker and the broker may be shared.
fn selected() -> Vec<&'static Def> {
    let only: Option<Vec<String>> = std::env::var("FAULT_SCENARIOS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let chosen: Vec<&Def> = SCENARIOS
        .iter()
        .filter(|def| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|o| o == def.number))
        })
        .collect();
    assert!(!chosen.is_empty(), "FAULT_SCENARIOS selects no scenario");
    let shared = match std::env::var("AMQP_URI") {
        Err(_) => Some("AMQP_URI is unset (the default broker on port 5672)".to_string()),
        Ok(_) if testing::broker_options().port == 5672 => Some(format!(
            "AMQP_URI names port 5672 ({})",
            testing::broker_options()
        )),
        Ok(_) => None,
    };
    if let Some(why) = shared {
        let breaking: Vec<String> = chosen
            .iter()
            .filter(|def| def.breaks_broker)
            .map(|def| format!("{} ({})", def.number, def.name))
            .collect();
        assert!(
            breaking.is_empty(),
            "refusing to run scenario(s) {} against a broker others may share: {why}. \
             Point AMQP_URI at a throwaway node and RABBITMQCTL at its rabbitmqctl (see the \
             documentation of rpc-server/tests/it/faults/mod.rs: scripts/node.sh start \
             rpcfault 5700, AMQP_URI=$(scripts/node.sh uri rpcfault), \
             RABBITMQCTL=\"$PWD/scripts/node.sh ctl rpcfault\"), or leave them out with \
             FAULT_SCENARIOS",
            breaking.join(", ")
        );
    }
    chosen
}

#[test]
#[ignore = "fault run: restarts AMQP_URI's broker; run alone (see the module documentation)"]
fn fault_run() {
    let started = Instant::now();
    let chosen = selected();
    fresh_log_dir("faults");
    let broker = testing::broker_options();
    crate::common::broker::wait_for_broker(&broker, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("no broker at {broker}: {e}"));
    for caller in 0..4 {
        for k in 0..2 {
            expected(slow_n(caller, k));
        }
    }
    expected(30);
    expected(40);
    expected(SLOW_N);
    let scenarios: Vec<Scenario> = chosen.into_iter().map(run_scenario).collect();
    print_results(&scenarios, started.elapsed());
    let failures: Vec<String> = scenarios
        .iter()
        .flat_map(|s| {
            s.checks
                .failures
                .iter()
                .map(move |f| format!("{}: {f}", s.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed check(s):\n{}\n(server logs in {})",
        failures.len(),
        failures.join("\n"),
        logs().display()
    );
}
