//! 9. The broker closes the connections of three clients while each has a request in a
//!    server's hands (`rabbitmqctl close_connection`): the Fibonacci client and an idempotent
//!    raw client reconnect, send the request again and are answered; a raw client of the
//!    default (at-most-once) kind fails at once with `Error::MaybeRan` (exit 3), and its
//!    request is not sent again (the server runs it once).
//!
//! The server is `rpc-server --workers 3 -- sh -c 'echo started >> FILE; (wait while HOLD
//! exists); cat'`: it echoes the body once the test has closed the connections and removed
//! HOLD (no fixed sleep: on a busy machine finding and closing the connections with rabbitmqctl
//! took 24 s once), and `5` is fib(5), so the Fibonacci client checks the echo as it checks
//! any answer. FILE counts the runs.

use super::{client_options, logs, stop_servers, Def, Scenario};
use crate::common::broker::Ctl;
use crate::common::load::{Call, Outcome, GRACE};
use crate::common::server::ServerProc;
use rpc_client::exit_code;
use rpc_client::testing::{self, QueueGuard};
use rpc_client::{BrokerOptions, ClientOptions, Error, FibonacciRpcClient, RpcClient, RpcRequest};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

pub const SCENARIO: Def = Def {
    number: "9",
    name: "connections closed mid-call",
    breaks_broker: true,
    run,
};

const TIMEOUT: Duration = Duration::from_secs(40);

/// Options of a client named `name` (rabbitmqctl shows it) on `queue`.
fn named(queue: &str, name: &str, idempotent: bool) -> ClientOptions {
    let base = client_options(queue, TIMEOUT);
    ClientOptions {
        brokers: base
            .brokers
            .iter()
            .map(|b| BrokerOptions {
                client_name: name.to_string(),
                ..b.clone()
            })
            .collect(),
        idempotent,
        ..base
    }
}

/// What a call ended with, and when (since the calls began).
type Ended = (Result<Vec<u8>, Error>, Duration);

fn run(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-recovery");
    let q = queue.name().to_string();
    let runs = logs().join("recovery-runs.txt");
    let _ = std::fs::remove_file(&runs);
    let hold = Hold(logs().join("recovery-hold"));
    std::fs::write(&hold.0, "").expect("hold file");
    let mut server = start_server(&q, &runs, &hold);

    let mut fib = FibonacciRpcClient::connect(&named(&q, "recovery-fib", false)).expect("fib");
    let mut once = RpcClient::connect(&named(&q, "recovery-once", false)).expect("once");
    let mut twice = RpcClient::connect(&named(&q, "recovery-twice", true)).expect("twice");
    let started = Instant::now();
    let timed = move |result: Result<Vec<u8>, Error>| (result, started.elapsed());
    let calls = [
        thread::spawn(move || timed(fib.call(5).map(|v| v.into_bytes()))),
        thread::spawn(move || timed(once.call(&RpcRequest::new("5")).map(|r| r.body))),
        thread::spawn(move || timed(twice.call(&RpcRequest::new("5")).map(|r| r.body))),
    ];
    // Close the three connections once the server is running all three requests.
    let in_hand = testing::wait_until("three requests in hand", Duration::from_secs(10), || {
        Ok(count_runs(&runs) >= 3)
    });
    sc.check(in_hand.is_ok(), || {
        format!("{in_hand:?}\n{}", server.log_tail(10))
    });
    close_connections(sc);
    let closed_at = started.elapsed();
    drop(hold); // the commands in hand answer now, to connections that are gone
    let results: Vec<Ended> = calls
        .into_iter()
        .map(|call| call.join().expect("caller thread"))
        .collect();
    record_results(sc, &results, started);
    // Three first runs, then the two re-sent requests: never the at-most-once one again.
    let all_runs = testing::wait_until(
        "the re-sent requests to run",
        Duration::from_secs(10),
        || Ok(count_runs(&runs) >= 5),
    );
    sc.check(all_runs.is_ok() && count_runs(&runs) == 5, || {
        format!(
            "the command ran {} times, want 5 (3 + 2 re-sent)",
            count_runs(&runs)
        )
    });
    sc.note(format!(
        "connections closed {:.1}s into the calls, the commands then let go; answers after \
         {:.1}s and {:.1}s; the \
         at-most-once call failed after {:.2}s; {} runs of the command",
        closed_at.as_secs_f64(),
        results[0].1.as_secs_f64(),
        results[2].1.as_secs_f64(),
        results[1].1.as_secs_f64(),
        count_runs(&runs)
    ));
    stop_servers(sc, std::slice::from_mut(&mut server));
}

/// The server of `queue`, once it consumes: each command adds a line to `runs`, waits while
/// `hold` exists, then echoes the body.
fn start_server(queue: &str, runs: &Path, hold: &Hold) -> ServerProc {
    let script = format!(
        "echo started >> '{}'; while [ -e '{}' ]; do sleep 0.05; done; cat",
        runs.display(),
        hold.0.display()
    );
    let server = ServerProc::on_broker(
        &logs(),
        "recovery",
        queue,
        &testing::broker(),
        &["--workers", "3", "--", "sh", "-c", &script],
    );
    testing::wait_for_consumers(&[testing::broker()], queue, 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail(10)));
    server
}

/// How many times the command started (lines in `runs`).
fn count_runs(runs: &Path) -> usize {
    std::fs::read_to_string(runs)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// The three clients' connections from one listing, then closed in parallel: each rabbitmqctl
/// run takes a second or more.
fn close_connections(sc: &mut Scenario) {
    let names = ["recovery-fib", "recovery-once", "recovery-twice"];
    let mut pids: Vec<String> = Vec::new();
    let listed = testing::wait_until("the clients' connections", Duration::from_secs(20), || {
        let listing = Ctl::from_env()
            .run(&["list_connections", "-q", "pid", "client_properties"])
            .map_err(rpc_client::Error::Config)?;
        pids = names
            .iter()
            .filter_map(|name| {
                let line = listing.lines().find(|line| line.contains(name))?;
                line.split_whitespace().next().map(String::from)
            })
            .collect();
        Ok(pids.len() == names.len())
    });
    sc.check(listed.is_ok(), || format!("{listed:?}"));
    let closes: Vec<_> = pids
        .into_iter()
        .map(|pid| {
            thread::spawn(move || {
                Ctl::from_env().run(&["close_connection", &pid, "closed by the fault run"])
            })
        })
        .collect();
    for close in closes {
        let closed = close.join().expect("close thread");
        sc.check(closed.is_ok(), || format!("close_connection: {closed:?}"));
    }
}

/// The calls of fib, once and twice (in that order): the first and last answered, the
/// at-most-once one failed with `MaybeRan` (exit 3).
fn record_results(sc: &mut Scenario, results: &[Ended], started: Instant) {
    let budget = TIMEOUT + GRACE;
    for ((result, ended), what) in results.iter().zip(["fib", "once", "twice"]) {
        let outcome = match (what, result) {
            ("once", Err(err @ Error::MaybeRan { .. })) => {
                sc.check(err.exit_code() == exit_code::CONNECTION, || err.to_string());
                sc.note(format!("at-most-once: {err}"));
                Outcome::Error
            }
            ("fib" | "twice", Ok(body)) if body == b"5" => Outcome::Right,
            _ => {
                sc.check(false, || format!("{what}: {result:?}"));
                Outcome::Wrong
            }
        };
        let mut call = Call::new(5, outcome, format!("{what}: {result:?}"), started, budget);
        call.elapsed = *ended;
        sc.record(&call);
    }
}

/// A file whose existence holds the server's commands; removed on drop (also when the test
/// fails, so no command is left waiting).
struct Hold(std::path::PathBuf);

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
