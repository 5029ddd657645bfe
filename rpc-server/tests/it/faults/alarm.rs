//! 7. A memory alarm (`rabbitmqctl set_vm_memory_high_watermark 0.00001`): the broker blocks
//!    publishers.
//!    - A connected client's call, and one of a client that connects during the alarm, fail
//!      with "the broker is blocking publishers" (exit 3) within their timeout (plus the 1 s
//!      probe margin), not when the alarm ends.
//!    - A server that is blocked while it publishes a reply stops within 10 s of SIGTERM (the
//!      stop bound), exits 0 or 3 and leaves its unacked request to the broker.
//!    - The same with the broker closing the server's connection right after the SIGTERM: the
//!      server exits and never reconnects.

use super::{client_options, logs, start_servers, stop_servers, Def, Scenario};
use crate::common::broker::{Ctl, MemoryAlarm};
use crate::common::load::{Call, Outcome, GRACE};
use crate::common::server::ServerProc;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::PROBE_LIMIT;
use rpc_client::{wire, Error, FibonacciRpcClient};
use std::time::{Duration, Instant};

pub const SCENARIO: Def = Def {
    number: "7",
    name: "memory alarm",
    breaks_broker: true,
    run,
};

/// The callers' timeout in this scenario.
const TIMEOUT: Duration = Duration::from_secs(3);

/// After the first SIGTERM the server ends within this (rpc_server::cli::STOP_BOUND).
const STOP_BOUND: Duration = Duration::from_secs(10);

fn run(sc: &mut Scenario) {
    blocked_calls(sc);
    for close in [false, true] {
        stop_while_blocked(sc, close);
    }
}

/// A call during the alarm, of a client connected before it and of one connected during it.
fn blocked_calls(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-alarm");
    let mut servers = start_servers(queue.name(), "alarm", 1);
    let options = client_options(queue.name(), TIMEOUT);
    let mut before = FibonacciRpcClient::connect(&options).expect("connect before the alarm");
    let started = Instant::now();
    let warm = before.call(30);
    sc.record(&Call::new(
        30,
        if warm.is_ok() {
            Outcome::Right
        } else {
            Outcome::Wrong
        },
        format!("{warm:?}"),
        started,
        TIMEOUT + PROBE_LIMIT + GRACE,
    ));
    let alarm = MemoryAlarm::raise(Ctl::from_env()).expect("raise the memory alarm");
    let during = FibonacciRpcClient::connect(&options).expect("connect during the alarm");
    for (what, mut client) in [("connected before", before), ("connected during", during)] {
        let started = Instant::now();
        let result = client.call(30);
        let elapsed = started.elapsed();
        let (outcome, detail) = match &result {
            Err(err @ Error::Blocked(_)) => {
                let text = err.to_string();
                sc.check(err.exit_code() == 3, || {
                    format!("{what}: exit {}", err.exit_code())
                });
                sc.check(text.contains("blocking publishers"), || {
                    format!("{what}: {text:?}")
                });
                sc.note(format!(
                    "client {what} the alarm: {text} ({:.2}s)",
                    elapsed.as_secs_f64()
                ));
                (Outcome::Error, text)
            }
            other => (Outcome::Wrong, format!("{what}: {other:?}")),
        };
        sc.record(&Call::new(
            30,
            outcome,
            detail,
            started,
            TIMEOUT + PROBE_LIMIT + GRACE,
        ));
        let closing = Instant::now();
        let closed = client.close();
        sc.note(format!(
            "client {what}: close during the alarm took {:.2}s ({})",
            closing.elapsed().as_secs_f64(),
            closed.map_or_else(|e| e.to_string(), |()| "closed".into())
        ));
    }
    drop(alarm);
    stop_servers(sc, &mut servers);
}

/// A server blocked while it publishes a reply, then SIGTERM (and, with `close`, its
/// connection closed by the broker right after).
fn stop_while_blocked(sc: &mut Scenario, close: bool) {
    let ctl = Ctl::from_env();
    let queue = QueueGuard::new("fault-alarm-stop");
    let replies = QueueGuard::new("fault-alarm-replies");
    let mut admin = Admin::connect().expect("admin");
    admin.declare(queue.name(), false).expect("declare");
    admin
        .declare(replies.name(), false)
        .expect("declare the reply queue");
    // A request waits for a server that does not run yet.
    let properties = wire::request_properties(replies.name(), "alarm-request");
    admin
        .publish(queue.name(), b"30", properties)
        .expect("publish the request");
    let alarm = MemoryAlarm::raise(ctl.clone()).expect("raise the memory alarm");
    let name = if close { "alarm-close" } else { "alarm-term" };
    let mut server = ServerProc::on_broker(&logs(), name, queue.name(), &testing::broker(), &[]);
    // It takes the request, publishes the reply and is blocked.
    let pid = blocked_pid(&ctl, name, &server);
    server.sigterm();
    let signalled = Instant::now();
    let mut closed = "";
    if close {
        match close_connection(&ctl, &pid, name) {
            Ok(how) => closed = how,
            Err(err) => sc.check(false, || format!("{name}: {err}")),
        }
    }
    let status = server.wait_exit(STOP_BOUND + Duration::from_secs(2));
    let took = signalled.elapsed();
    let code = status.and_then(|s| s.code());
    sc.check(matches!(code, Some(0) | Some(3)), || {
        format!(
            "{name}: exit {status:?} after SIGTERM\n{}",
            server.log_tail(15)
        )
    });
    sc.check(took <= STOP_BOUND, || {
        format!("{name}: exited {:.1}s after SIGTERM", took.as_secs_f64())
    });
    sc.check(server.log_count("reconnecting") == 0, || {
        format!("{name} reconnected after SIGTERM\n{}", server.log_tail(15))
    });
    sc.note(format!(
        "{name}: blocked while publishing, exited {code:?} {:.2}s after SIGTERM{}",
        took.as_secs_f64(),
        closed
    ));
    drop(alarm);
    // Nothing is lost: once the broker reads what the server wrote before it stopped, either
    // the request is back in the queue (the ack never arrived) or it was acked after its reply
    // (which then waits in the reply queue). Which one depends on how far the broker had read
    // the blocked connection.
    let mut seen = (None, None);
    let settled = testing::wait_until(
        "the request back in the queue, or its reply delivered",
        Duration::from_secs(20),
        || {
            seen = (
                admin.queue_state(queue.name())?,
                admin.queue_state(replies.name())?,
            );
            let ready = |state: Option<(u32, u32)>| state.map(|(ready, _)| ready);
            Ok(matches!(
                (ready(seen.0), ready(seen.1)),
                (Some(1), Some(0)) | (Some(0), Some(1))
            ))
        },
    );
    sc.check(settled.is_ok(), || {
        format!(
            "{name}: {} (last seen (ready, consumers): request queue {:?}, reply queue {:?})",
            settled
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default(),
            seen.0,
            seen.1
        )
    });
    let outcome = match seen {
        (Some((1, _)), _) => "the request went back to the queue",
        _ => "the request was acked after its reply, which was delivered",
    };
    sc.note(format!("{name}: {outcome}"));
}

/// Waits until the connection of `name` is listed as blocked (the server took the request
/// and published its reply); its pid.
fn blocked_pid(ctl: &Ctl, name: &str, server: &ServerProc) -> String {
    let mut pid = None;
    testing::wait_until(
        &format!("{name} to be blocked"),
        Duration::from_secs(20),
        || {
            let rows = ctl
                .run(&[
                    "list_connections",
                    "-q",
                    "pid",
                    "client_properties",
                    "state",
                ])
                .map_err(rpc_client::Error::Config)?;
            pid = rows
                .lines()
                .find(|l| l.contains(name) && l.trim_end().ends_with("blocked"))
                .and_then(|l| l.split_whitespace().next())
                .map(String::from);
            Ok(pid.is_some())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail(10)));
    pid.expect("listed")
}

/// Closes connection `pid` (of `name`), what happened for the note. rabbitmqctl exits 69 when
/// the connection ends before its call returns (the server, stopping, may close it first):
/// that is no failure once the connection is no longer listed (polled for 5 s).
fn close_connection(ctl: &Ctl, pid: &str, name: &str) -> Result<&'static str, String> {
    let Err(err) = ctl.run(&["close_connection", pid, "closed by the fault run"]) else {
        return Ok(" and close_connection");
    };
    let gone = testing::wait_until(
        &format!("{name}'s connection to end"),
        Duration::from_secs(5),
        || {
            Ok(ctl
                .connection_pid(name)
                .map_err(rpc_client::Error::Config)?
                .is_none())
        },
    );
    match gone {
        Ok(()) => Ok(" and close_connection (the connection ended during it)"),
        Err(still) => Err(format!("{err}; {still}")),
    }
}
