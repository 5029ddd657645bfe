//! 3. Restart the broker application under load: calls before and after succeed; calls during
//!    the outage are answered once the broker is back (the client reconnects and sends them
//!    again), or end with a clear connection error when the outage outlasts their timeout
//!    (none hangs); a call while the broker is down ends by its deadline; a client against the
//!    stopped broker fails at once with a connection error; the servers come back; a client
//!    connected before the restart answers again without being replaced.
//!
//! Stops `AMQP_URI`'s broker with `$RABBITMQCTL stop_app`: the runner refuses to run this on
//! a shared broker.

use super::{
    client_options, slow_n, slow_stream, start_servers, stop_servers, Def, Scenario, CALL_TIMEOUT,
    CONNECT_TIMEOUT,
};
use crate::common::broker::{BrokerApp, Ctl};
use crate::common::caller::Caller;
use crate::common::callers::Callers;
use crate::common::load::{Call, Outcome, AFTER, BEFORE, DURING, GRACE};
use crate::common::server::ServerProc;
use rpc_client::exit_code;
use rpc_client::testing::{self, QueueGuard};
use rpc_client::{Error, FibonacciRpcClient};
use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

pub const SCENARIO: Def = Def {
    number: "3",
    name: "broker restart",
    breaks_broker: true,
    run,
};

/// The timeout of the call made while the broker is down.
const SHORT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(2);

fn run(sc: &mut Scenario) {
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
    // A client with a short timeout, for a call while the broker is down.
    let mut short = Caller::connected(client_options(queue.name(), SHORT_TIMEOUT));
    let stream = slow_stream(queue.name(), 3, Duration::from_millis(100));
    stream.wait("answers before the restart", Duration::from_secs(30), |s| {
        s.answers() >= 10
    });
    restart(sc, &mut short, queue.name(), &servers, &stream);
    stream.wait("answers after the restart", Duration::from_secs(60), |s| {
        s.answers_in_phase(AFTER) >= 20
    });
    let report = stream.finish();
    let calls = &report.calls;
    sc.record_all(calls);
    let later = later_calls(sc, queue.name(), &mut idle);
    check_phases(sc, calls, &later, report.total_connects());
    for server in &mut servers {
        sc.check(server.exited().is_none(), || {
            format!("{} exited: {}", server.name, server.log_tail(10))
        });
    }
    stop_servers(sc, &mut servers);
}

/// The broker application stopped (the stream's calls from now on are in phase DURING), the
/// checks while it is down ([`stopped_broker_checks`], with `short`), started again after
/// [`OUTAGE`]; returns once both servers consume again (phase AFTER).
fn restart(
    sc: &mut Scenario,
    short: &mut Caller,
    queue: &str,
    servers: &[ServerProc],
    stream: &Callers,
) {
    let mut app = BrokerApp::new(Ctl::from_env(), testing::broker());
    stream.set_phase(DURING);
    let down_at = Instant::now();
    let stop_took = app.stop().unwrap_or_else(|e| panic!("{e}"));
    stopped_broker_checks(sc, short, queue);
    // The outage itself (a fault we inject, not a wait for a condition).
    thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));
    let start_took = app.start().unwrap_or_else(|e| panic!("{e}"));
    let up_at = Instant::now();
    testing::wait_for_consumers(&[testing::broker()], queue, 2, Duration::from_secs(60))
        .unwrap_or_else(|e| {
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
}

/// Later calls, on a fresh client and on the old one (which reconnects), recorded; the
/// client connected before the restart reconnected by itself.
fn later_calls(sc: &mut Scenario, queue: &str, idle: &mut Caller) -> Vec<Call> {
    let mut fresh = Caller::new(client_options(queue, CALL_TIMEOUT));
    let later: Vec<Call> = (0..10)
        .map(|k| fresh.call(slow_n(0, k)))
        .chain(std::iter::once(idle.call(40)))
        .map(|mut c| {
            c.phase = AFTER;
            c
        })
        .collect();
    sc.record_all(&later);
    sc.check(idle.connects == 1, || {
        format!("the idle client was replaced ({} connects)", idle.connects)
    });
    later
}

/// Every call before and after the restart answered right; a note on those during it.
fn check_phases(sc: &mut Scenario, calls: &[Call], later: &[Call], connects: u64) {
    let not_right = |phase: u8| {
        calls
            .iter()
            .chain(later)
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
}

fn broker_is_local() -> bool {
    let host = testing::broker().host;
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// While the broker is down: a call on a connection it closed tries to reconnect until its
/// deadline, then fails with a connection error; a new client fails at once.
fn stopped_broker_checks(sc: &mut Scenario, short: &mut Caller, queue: &str) {
    let call = short.call(30);
    sc.check(
        call.outcome == Outcome::Error && call.detail.contains("not back in time"),
        || format!("call while the broker is down: {call:?}"),
    );
    sc.check(call.elapsed < SHORT_TIMEOUT + GRACE, || {
        format!(
            "call while the broker is down took {:?} (timeout {SHORT_TIMEOUT:?})",
            call.elapsed
        )
    });
    sc.note(format!(
        "call while the broker is down: {} ({:.2}s)",
        call.detail,
        call.elapsed.as_secs_f64()
    ));
    sc.record(&call);
    // A new client against the stopped broker ("no broker"): Error::Connect, at once.
    let started = Instant::now();
    let result = FibonacciRpcClient::connect(&client_options(queue, CALL_TIMEOUT));
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
}
