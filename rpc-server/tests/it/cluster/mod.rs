//! The cluster test (issues 5 and 16): scenarios on a local three-node cluster, under load.
//!
//! Needs the local three-node cluster of `scripts/cluster.sh` and its URIs, node 1 first, in
//! `CLUSTER_URIS` (comma-separated), and the release binary `target/release/rpc-client`.
//! `scripts/cluster-test.sh` builds, starts the cluster, runs this test and takes the cluster
//! down again; by hand:
//!
//! ```text
//! cargo build --release && scripts/cluster.sh up
//! CLUSTER_URIS=$(scripts/cluster.sh uris) CLUSTER_SCENARIOS=2 \
//!     cargo test --release -p rpc-server --test it cluster:: -- --ignored --nocapture
//! ```
//!
//! `CLUSTER_SCENARIOS=1,3` runs only those scenarios (default: all, in order):
//!
//! 1. [`rolling`]: each node stopped and started in turn (`scripts/cluster.sh stop-node` /
//!    `start-node`), the next one only once the queue has all its members online;
//! 2. [`kill`]: `kill -9` of the Erlang VM of the node hosting the queue's leader, started
//!    again later;
//! 3. [`kill`]: `kill -9` of a node that is not the leader's, with callers connected to it:
//!    they must move to another node and their calls be answered;
//! 4. [`partition`]: one node (the leader's) cut off from the other two for 30 s
//!    (`scripts/cluster.sh cut-node`: iptables rules on its Erlang distribution links; the
//!    nodes run with `cluster_partition_handling = pause_minority`); left out, with the
//!    reason, where this machine cannot cut a link.
//!
//! Every scenario has a queue of its own (a uuid-named quorum queue, declared through a random
//! node), three `rpc-server` processes (server `s<i>` with every URI of the cluster, starting
//! at node i) and six callers: `c1`..`c3`, threads of the rpc-client library, one
//! `FibonacciRpcClient` each for the whole scenario (it must recover by itself: a caller never
//! reconnects; any error is an error), its URIs rotated to start at node j; and `b1`..`b3`,
//! each a loop of `rpc-client --timeout T N` processes (the release binary, the rotated URIs in
//! `AMQP_URI`, every process one call). Each call ends right, error, wrong, lost (no answer in
//! its time) or hung (did not return within its timeout plus
//! [`GRACE`](crate::common::load::GRACE)); each scenario prints its rows (one per phase) and the
//! test, at the end, the table of all scenarios. Every scenario checks that every call was
//! answered right (0 errors, 0 wrong, 0 lost, 0 hung), that every caller was answered right
//! in its last phase, that every server stops cleanly, and checks of its own. A node stopped,
//! killed or cut off is started again (or healed) at the end of its scenario, also when the
//! scenario fails; the queue is deleted and every process the test started is stopped. Server
//! logs are kept in `target/tmp/cluster/<scenario>/`.
//!
//! Here: the settings, the callers' and servers' names, the scenario list and the test;
//! [`nodes`]: the cluster and what its nodes say; [`run`]: one scenario's set-up, phases,
//! checks and report.

mod kill;
mod nodes;
mod partition;
mod rolling;
mod run;

use crate::common::callers::Pace;
use crate::common::load::{print_table, Checks, Row, Tally};
use crate::common::{log_dir, secs};
use nodes::Cluster;
use rpc_client::testing;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The timeout of every call: long enough that no call's deadline passes while a node is lost
/// (a partition is noticed within 12.5 s, see `scripts/cluster.sh`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The callers' limit on the TCP connect and on the AMQP handshake, each, per node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const SERVERS: usize = 3;
/// Library callers `c1..`, then as many `rpc-client` callers `b1..`.
pub const LIBRARY_CALLERS: usize = 3;
pub const BINARY_CALLERS: usize = 3;
pub const CALLERS: usize = LIBRARY_CALLERS + BINARY_CALLERS;
/// fib(150,000) has 31,348 digits and takes a few ms in a release build.
const BASE_N: u64 = 150_000;
/// Pauses of a caller: after an answered call, to keep the machine's CPU use modest (the three
/// nodes, three servers and the callers share it with other work); after a failed call, so a
/// dead node is not hammered.
const PACE: Pace = Pace {
    right: Duration::from_millis(40),
    error: Duration::from_millis(200),
};
/// Calls before the fault (at least; every server and caller must also have been answered).
const WARM_UP: Duration = Duration::from_secs(2);
/// The last phase of every scenario, when the cluster is whole again: every caller must be
/// answered right in it.
pub const TAIL: Duration = Duration::from_secs(3);
/// How long a node may take to come back (start-node, members online).
pub const NODE_BACK: Duration = Duration::from_secs(90);

/// The n of call `k` of caller `caller`: distinct per caller, so an answer delivered to the
/// wrong caller is a wrong answer.
fn caller_n(caller: usize, k: u64) -> u64 {
    BASE_N - 2 * caller as u64 - k % 2
}

/// `c1`..`c3` (library), `b1`..`b3` (rpc-client processes).
pub fn caller_name(index: usize) -> String {
    if index < LIBRARY_CALLERS {
        format!("c{}", index + 1)
    } else {
        format!("b{}", index - LIBRARY_CALLERS + 1)
    }
}

/// The `information` client property of library caller `index`'s connections.
pub fn caller_information(index: usize) -> String {
    format!("cluster-test caller ({})", caller_name(index))
}

/// The `information` client property of the rpc-client binary's connections.
pub fn binary_information() -> String {
    format!("rpc-client {}", env!("CARGO_PKG_VERSION"))
}

/// The `information` client property of server `s<i>` (1-based).
pub fn server_information(i: usize) -> String {
    format!("rpc-server {} (s{i})", env!("CARGO_PKG_VERSION"))
}

/// `items` rotated to start at `start`.
fn rotated<T: Clone>(items: &[T], start: usize) -> Vec<T> {
    let mut items = items.to_vec();
    let len = items.len().max(1);
    items.rotate_left(start % len);
    items
}

/// A log line without its `[time LEVEL target] ` prefix.
pub fn log_message(line: &str) -> &str {
    line.split_once("] ").map_or(line, |(_, message)| message)
}

/// The release `rpc-client` binary (`target/release/rpc-client`, beside this test's target
/// directory), or `RPC_CLIENT_BIN`.
fn client_binary() -> PathBuf {
    let path = std::env::var_os("RPC_CLIENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../release/rpc-client"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no rpc-client binary at {}: run cargo build --release first (or set RPC_CLIENT_BIN)",
        path.display()
    );
    path
}

/// A scenario of the test.
struct Def {
    /// Its number, as `CLUSTER_SCENARIOS` selects it.
    number: &'static str,
    /// What it does, for the table.
    name: &'static str,
    /// Runs it: its rows (its total first) and checks, or why it was left out.
    run: fn(&Cluster, &str) -> ScenarioResult,
}

/// What a scenario did.
pub enum ScenarioResult {
    Ran(Vec<Row>, Checks),
    /// It could not run here (the message says why); not a failure.
    LeftOut(String),
}

const SCENARIOS: &[Def] = &[
    Def {
        number: "1",
        name: "rolling restart",
        run: rolling::run,
    },
    Def {
        number: "2",
        name: "kill -9 of the leader's node",
        run: kill::leaders_node,
    },
    Def {
        number: "3",
        name: "kill -9 of a caller's node",
        run: kill::callers_node,
    },
    Def {
        number: "4",
        name: "partition (30 s)",
        run: partition::run,
    },
];

/// The scenarios `CLUSTER_SCENARIOS` selects (numbers, comma-separated; default all).
fn selected() -> Vec<&'static Def> {
    let Ok(list) = std::env::var("CLUSTER_SCENARIOS") else {
        return SCENARIOS.iter().collect();
    };
    let wanted: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for number in &wanted {
        assert!(
            SCENARIOS.iter().any(|d| d.number == *number),
            "CLUSTER_SCENARIOS: no scenario {number:?} (there are 1 to {})",
            SCENARIOS.len()
        );
    }
    SCENARIOS
        .iter()
        .filter(|d| wanted.contains(&d.number))
        .collect()
}

#[test]
#[ignore = "needs scripts/cluster.sh up; run by scripts/cluster-test.sh"]
fn scenarios() {
    let test_started = Instant::now();
    // The library callers' warnings (a lost connection, a reconnect, calls sent again) on
    // stderr, with timestamps, for the record.
    testing::init_logging();
    let cluster = Cluster::from_env();
    let mut table = Vec::new();
    let mut failures = Vec::new();
    let mut left_out = Vec::new();
    let mut grand = Tally::default();
    for def in selected() {
        let title = format!("{}. {}", def.number, def.name);
        println!("\n===== cluster scenario {title}");
        let started = Instant::now();
        // A scenario that panics is a failure; the next one still runs (the guards have
        // started its node again and healed its cut).
        match catch_unwind(AssertUnwindSafe(|| (def.run)(&cluster, &title))) {
            Ok(ScenarioResult::Ran(rows, checks)) => {
                if let Some(total) = rows.first() {
                    grand.add(&total.tally);
                }
                table.extend(rows);
                failures.extend(checks.failures.iter().map(|f| format!("{title}: {f}")));
            }
            Ok(ScenarioResult::LeftOut(why)) => {
                println!("  left out: {why}");
                table.push(Row::new(
                    format!("{title}: LEFT OUT"),
                    Tally::default(),
                    None,
                ));
                left_out.push(format!("{title}: {why}"));
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                table.push(Row::new(
                    format!("{title}: PANICKED"),
                    Tally::default(),
                    None,
                ));
                failures.push(format!("{title}: panicked: {message}"));
            }
        }
        println!("===== {title}: {:.1}s", secs(started.elapsed()));
    }
    table.push(Row::new(
        "all scenarios",
        grand,
        Some(test_started.elapsed()),
    ));
    print_table(
        "cluster test: results",
        "scenario / phase (calls started)",
        &table,
    );
    for why in &left_out {
        println!("  left out: {why}");
    }
    println!("  whole test {:.1}s", secs(test_started.elapsed()));
    assert!(
        failures.is_empty(),
        "{} failed check(s):\n{}\n(server logs in {})",
        failures.len(),
        failures.join("\n"),
        log_dir("cluster").display()
    );
}
