//! The cluster test (issue 5): the node hosting a quorum queue's leader is lost under load.
//!
//! Needs the local three-node cluster of `scripts/cluster.sh` and its URIs, node 1 first, in
//! `CLUSTER_URIS` (comma-separated). `scripts/cluster-test.sh` starts the cluster, runs this test
//! and takes the cluster down again; by hand:
//!
//! ```text
//! scripts/cluster.sh up
//! CLUSTER_URIS=$(scripts/cluster.sh uris) \
//!     cargo test --release -p rpc-server --test cluster -- --ignored --nocapture
//! ```
//!
//! Three `rpc-server` processes consume a uuid-named quorum queue, server `s<i>` with every URI
//! of the cluster starting at node i. Six caller threads (the rpc-client library, caller
//! `c<j>` with the URIs rotated so that two callers sit on each node) call fib(n) over and
//! over; a caller whose connection fails connects again, starting at the next node. After a
//! few seconds the test stops the node hosting the queue's leader (`scripts/cluster.sh
//! stop-node`), keeps calling for ten more seconds and prints how the calls ended: right,
//! error (a clear error such as a lost connection), wrong, lost (timed out) and hung (did not
//! return within its timeout plus [`GRACE`]). It checks that none was wrong, lost or hung,
//! that every call of the last [`TAIL`] was answered right by every caller, that all three
//! servers consume the queue again, and that every server and caller is connected to a
//! surviving node (`rabbitmqctl list_connections`, which shows the `information` client
//! property: `rpc-server <version> (s<i>)`, `cluster-test caller (c<j>)`). The stopped node is
//! started again at the end, also when the test fails; the queue is deleted and every process
//! the test started is stopped. Server logs are kept in `target/tmp/cluster/`.

mod common;

use common::{expected, lock, ServerProc};
use rpc_client::testing::{Admin, QueueGuard};
use rpc_client::{BrokerOptions, ClientOptions, Error, FibonacciRpcClient, ReplyQueue};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The timeout of every call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A call that has not returned within its timeout plus this (plus its connects) is hung.
const GRACE: Duration = Duration::from_secs(2);
/// The callers' limit on the TCP connect and on the AMQP handshake, each, per node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const SERVERS: usize = 3;
const CALLERS: usize = 6;
/// fib(150,000) has 31,348 digits and takes a few ms in a release build.
const BASE_N: u64 = 150_000;
/// Pause of a caller after an answered call, to keep the machine's CPU use modest (the three
/// nodes, three servers and the callers share it with other work).
const PACE: Duration = Duration::from_millis(40);
/// Pause of a caller after a failed call: a dead node is not hammered.
const ERROR_PACE: Duration = Duration::from_millis(200);
/// Calls before the node is stopped (at least; every server must also have answered some).
const WARM_UP: Duration = Duration::from_secs(4);
/// Calls after `stop-node` has returned.
const AFTER_LOSS: Duration = Duration::from_secs(10);
/// Every call started in this last stretch of the run must be answered right.
const TAIL: Duration = Duration::from_secs(5);

const BEFORE: u8 = 0;
const DURING: u8 = 1;
const AFTER: u8 = 2;

/// The n of call `k` of caller `caller`: distinct per caller, so an answer delivered to the
/// wrong caller is a wrong answer.
fn caller_n(caller: usize, k: u64) -> u64 {
    BASE_N - 2 * caller as u64 - k % 2
}

/// `items` rotated to start at `start`.
fn rotated<T: Clone>(items: &[T], start: usize) -> Vec<T> {
    let mut items = items.to_vec();
    let len = items.len().max(1);
    items.rotate_left(start % len);
    items
}

fn log_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster")
}

/// A log line without its `[time LEVEL target] ` prefix.
fn log_message(line: &str) -> &str {
    line.split_once("] ").map_or(line, |(_, message)| message)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// The cluster: scripts/cluster.sh, an admin connection, the queue
// ---------------------------------------------------------------------------------------------

/// Runs `scripts/cluster.sh ARGS`; returns its stdout, or its exit status and stderr.
fn cluster_sh(args: &[&str]) -> Result<String, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
    let output = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "scripts/cluster.sh {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The index (1-based) of the node hosting `queue`'s leader, and its name.
fn leader(queue: &str) -> Result<(usize, String), String> {
    let node = cluster_sh(&["leader", queue])?.trim().to_string();
    // rpcI@localhost
    let index = node
        .strip_prefix("rpc")
        .and_then(|rest| rest.split_once('@'))
        .and_then(|(i, _)| i.parse().ok())
        .ok_or_else(|| format!("unexpected leader node name {node:?}"))?;
    Ok((index, node))
}

/// Waits up to `within` until `queue` has `want` consumers, asking the first of `brokers` that
/// answers (a new connection after any error). Returns how long it waited.
fn wait_for_consumers(
    brokers: &[BrokerOptions],
    queue: &str,
    want: u32,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut admin: Option<Admin> = None;
    let mut last = String::from("nothing yet");
    loop {
        if admin.is_none() {
            match Admin::connect_to(brokers) {
                Ok(a) => admin = Some(a),
                Err(err) => last = format!("cannot connect: {err}"),
            }
        }
        if let Some(a) = admin.as_mut() {
            match a
                .queue_state(queue)
                .map(|state| state.map(|(_, consumers)| consumers))
            {
                Ok(Some(count)) if count == want => return Ok(started.elapsed()),
                Ok(Some(count)) => last = format!("{count} consumer(s)"),
                Ok(None) => last = "no such queue".into(),
                Err(err) => {
                    last = format!("error: {err}");
                    admin = None;
                }
            }
        }
        if started.elapsed() >= within {
            return Err(format!(
                "queue '{queue}' did not have {want} consumers within {within:?} (last seen: {last})"
            ));
        }
        thread::sleep(Duration::from_millis(100)); // polling interval
    }
}

/// The stopped node, started again on drop (even when the test panics).
struct NodeGuard {
    stopped: Option<usize>,
}

impl NodeGuard {
    fn stop(&mut self, index: usize) -> Result<Duration, String> {
        let started = Instant::now();
        self.stopped = Some(index); // even if stop-node fails half-way, start it again
        cluster_sh(&["stop-node", &index.to_string()])?;
        Ok(started.elapsed())
    }

    fn start(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        if let Some(index) = self.stopped {
            cluster_sh(&["start-node", &index.to_string()])?;
            self.stopped = None;
        }
        Ok(started.elapsed())
    }
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Some(index) = self.stopped {
            eprintln!("cluster test: starting node {index} again");
            if let Err(err) = self.start() {
                eprintln!(
                    "cluster test: NODE {index} IS STILL STOPPED: {err}; \
                     run scripts/cluster.sh start-node {index}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The right result.
    Right,
    /// A clear error: the connection was lost or could not be made, and so on.
    Error,
    /// A result that is not fib(n), or an error reply to a valid request.
    Wrong,
    /// No reply within the timeout.
    Lost,
}

/// One call and how it ended.
#[derive(Debug, Clone)]
struct CallRecord {
    caller: usize,
    n: u64,
    /// Phase of the run in which it started.
    phase: u8,
    /// When it started, from the start of the callers.
    at: Duration,
    elapsed: Duration,
    /// Timeout + grace (+ connects): a call that took longer is hung.
    budget: Duration,
    outcome: Outcome,
    detail: String,
    server: Option<String>,
}

impl CallRecord {
    fn hung(&self) -> bool {
        self.elapsed > self.budget
    }
}

struct Shared {
    t0: Instant,
    stop: AtomicBool,
    phase: AtomicU8,
    calls: Mutex<Vec<CallRecord>>,
    /// Per caller, while it is in a call: when the call started, its budget and n.
    in_call: Vec<Mutex<Option<(Instant, Duration, u64)>>>,
    /// Per caller: connections made.
    connects: Vec<AtomicU64>,
}

/// The caller threads.
struct Callers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

/// What the callers did, once stopped.
struct CallerReport {
    calls: Vec<CallRecord>,
    /// When the callers were told to stop, from their start.
    stopped_at: Duration,
    connects: Vec<u64>,
}

impl Callers {
    /// Starts caller `c<j>` for j = 1..=CALLERS, on `brokers` rotated to start at node
    /// (j - 1) mod nodes.
    fn start(brokers: &[BrokerOptions], queue: &str) -> Callers {
        let shared = Arc::new(Shared {
            t0: Instant::now(),
            stop: AtomicBool::new(false),
            phase: AtomicU8::new(BEFORE),
            calls: Mutex::new(Vec::new()),
            in_call: (0..CALLERS).map(|_| Mutex::new(None)).collect(),
            connects: (0..CALLERS).map(|_| AtomicU64::new(0)).collect(),
        });
        let handles = (0..CALLERS)
            .map(|index| {
                let name = format!("cluster-test caller (c{})", index + 1);
                let brokers: Vec<BrokerOptions> = rotated(brokers, index)
                    .into_iter()
                    .map(|b| BrokerOptions {
                        client_name: name.clone(),
                        ..b
                    })
                    .collect();
                let shared = Arc::clone(&shared);
                let queue = queue.to_string();
                thread::spawn(move || caller_loop(index, brokers, &queue, &shared))
            })
            .collect();
        Callers { shared, handles }
    }

    fn set_phase(&self, phase: u8) {
        self.shared.phase.store(phase, Ordering::SeqCst);
    }

    /// Right answers so far, per server name.
    fn answers_by_server(&self) -> BTreeMap<String, u64> {
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

    fn since_start(&self) -> Duration {
        self.shared.t0.elapsed()
    }

    /// Stops the callers after their current call. A caller still in its call when that call
    /// is over its budget (plus a second) is hung: its call is recorded as such, its thread left.
    fn finish(mut self, nodes: usize) -> CallerReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        let stopped_at = self.shared.t0.elapsed();
        let longest_budget =
            CALL_TIMEOUT + GRACE + 2 * CONNECT_TIMEOUT * nodes as u32 + Duration::from_secs(1);
        let deadline = Instant::now() + longest_budget;
        while self.handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20)); // polling interval
        }
        let mut calls = lock(&self.shared.calls).clone();
        for (index, handle) in self.handles.drain(..).enumerate() {
            if handle.is_finished() {
                let _ = handle.join();
            } else if let Some((started, budget, n)) = *lock(&self.shared.in_call[index]) {
                calls.push(CallRecord {
                    caller: index,
                    n,
                    phase: AFTER,
                    at: started - self.shared.t0,
                    elapsed: started.elapsed(),
                    budget,
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

/// One caller: calls back to back until stopped. After a connection error it drops its client
/// and connects again, starting at the next node of its list.
fn caller_loop(index: usize, mut brokers: Vec<BrokerOptions>, queue: &str, shared: &Shared) {
    let mut client: Option<FibonacciRpcClient> = None;
    let mut k = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let n = caller_n(index, k);
        k += 1;
        let phase = shared.phase.load(Ordering::SeqCst);
        let started = Instant::now();
        let mut budget = CALL_TIMEOUT + GRACE;
        if client.is_none() {
            // connect_first: each node a TCP connect and a handshake, each with its own limit.
            budget += 2 * CONNECT_TIMEOUT * brokers.len() as u32;
        }
        *lock(&shared.in_call[index]) = Some((started, budget, n));
        let result = match client.as_mut() {
            Some(c) => c.call_reply(n),
            None => {
                shared.connects[index].fetch_add(1, Ordering::SeqCst);
                let options = ClientOptions {
                    brokers: brokers.clone(),
                    queue: queue.to_string(),
                    timeout: CALL_TIMEOUT,
                    reply_queue: ReplyQueue::Exclusive,
                };
                match FibonacciRpcClient::connect(&options) {
                    Ok(c) => client.insert(c).call_reply(n),
                    Err(err) => Err(err),
                }
            }
        };
        let elapsed = started.elapsed();
        *lock(&shared.in_call[index]) = None;
        let (outcome, detail, server) = match result {
            Ok(reply) if reply.value == *expected(n) => {
                (Outcome::Right, String::new(), reply.server)
            }
            Ok(reply) => (
                Outcome::Wrong,
                format!(
                    "got {} digits, want {}",
                    reply.value.len(),
                    expected(n).len()
                ),
                reply.server,
            ),
            Err(err @ Error::Timeout { .. }) => (Outcome::Lost, err.to_string(), None),
            Err(err @ (Error::Server { .. } | Error::BadReply(_))) => {
                (Outcome::Wrong, err.to_string(), None)
            }
            Err(err) => {
                if matches!(
                    err,
                    Error::Connect { .. } | Error::ConnectionLost(_) | Error::Amqp(_)
                ) {
                    // Start over on a new connection, at the next node.
                    client = None;
                    brokers.rotate_left(1);
                }
                (Outcome::Error, err.to_string(), None)
            }
        };
        let right = outcome == Outcome::Right;
        lock(&shared.calls).push(CallRecord {
            caller: index,
            n,
            phase,
            at: started - shared.t0,
            elapsed,
            budget,
            outcome,
            detail,
            server,
        });
        // Pacing (CPU), not synchronisation.
        thread::sleep(if right { PACE } else { ERROR_PACE });
    }
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: u64,
    right: u64,
    errors: u64,
    wrong: u64,
    lost: u64,
    hung: u64,
    longest: Duration,
}

impl Tally {
    fn of<'a>(calls: impl IntoIterator<Item = &'a CallRecord>) -> Tally {
        let mut t = Tally::default();
        for call in calls {
            t.calls += 1;
            match call.outcome {
                Outcome::Right => t.right += 1,
                Outcome::Error => t.errors += 1,
                Outcome::Wrong => t.wrong += 1,
                Outcome::Lost => t.lost += 1,
            }
            if call.hung() {
                t.hung += 1;
            }
            t.longest = t.longest.max(call.elapsed);
        }
        t
    }

    fn row(&self, label: &str) -> String {
        format!(
            "{label:<34} {:>6} {:>6} {:>6} {:>6} {:>5} {:>5} {:>9.3}s",
            self.calls,
            self.right,
            self.errors,
            self.wrong,
            self.lost,
            self.hung,
            secs(self.longest)
        )
    }
}

fn print_table(rows: &[(String, Tally)]) {
    let header = format!(
        "{:<34} {:>6} {:>6} {:>6} {:>6} {:>5} {:>5} {:>10}",
        "calls started", "calls", "right", "error", "wrong", "lost", "hung", "longest"
    );
    let rule = "-".repeat(header.len());
    println!("\ncluster test: results\n{header}\n{rule}");
    for (i, (label, tally)) in rows.iter().enumerate() {
        if i + 1 == rows.len() {
            println!("{rule}");
        }
        println!("{}", tally.row(label));
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// `rabbitmqctl list_connections port client_properties` on node `node`: (server port, client
/// properties as text) per connection in the cluster.
fn list_connections(node: usize) -> Result<Vec<(u16, String)>, String> {
    let out = cluster_sh(&[
        "ctl",
        &node.to_string(),
        "-q",
        "list_connections",
        "--no-table-headers",
        "port",
        "client_properties",
    ])?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let (port, properties) = line.split_once('\t')?;
            Some((port.trim().parse().ok()?, properties.to_string()))
        })
        .collect())
}

fn cluster_uris() -> Vec<String> {
    let list = std::env::var("CLUSTER_URIS").unwrap_or_else(|_| {
        panic!(
            "CLUSTER_URIS is not set: this test needs the cluster of scripts/cluster.sh; run \
             scripts/cluster-test.sh, or scripts/cluster.sh up and then \
             CLUSTER_URIS=$(scripts/cluster.sh uris) cargo test --release -p rpc-server \
             --test cluster -- --ignored --nocapture"
        )
    });
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

#[test]
#[ignore = "needs scripts/cluster.sh up; run by scripts/cluster-test.sh"]
fn node_loss() {
    let run_started = Instant::now();
    let uris = cluster_uris();
    assert!(
        uris.len() >= 3,
        "CLUSTER_URIS lists {} node(s); losing one keeps a quorum only with 3 or more",
        uris.len()
    );
    let brokers: Vec<BrokerOptions> = uris
        .iter()
        .map(|uri| BrokerOptions {
            connect_timeout: CONNECT_TIMEOUT,
            ..BrokerOptions::from_uri(uri).unwrap_or_else(|e| panic!("CLUSTER_URIS: {e:#}"))
        })
        .collect();
    let ports: Vec<u16> = brokers.iter().map(|b| b.port).collect();
    let _ = std::fs::remove_dir_all(log_dir());
    std::fs::create_dir_all(log_dir()).expect("create the log directory");
    for caller in 0..CALLERS {
        expected(caller_n(caller, 0));
        expected(caller_n(caller, 1));
    }
    let mut failures: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            eprintln!("cluster test: FAILED: {what}");
            failures.push(what);
        }
    };

    // Declared in this order, dropped in the reverse one on a panic: callers stopped, servers
    // killed, the node started again, the queue deleted.
    // Deleted (after the servers are gone, or they would declare it again) on drop too.
    let mut queue = QueueGuard::on(brokers.clone(), "cluster-node-loss");
    let q = queue.name().to_string();
    // Declared through a node picked at random: a quorum queue's leader starts on the node
    // that declared it, so runs lose different nodes (the one the others joined, or not).
    let declare_node = usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % brokers.len();
    Admin::connect_to(&brokers[declare_node..=declare_node])
        .and_then(|admin| admin.declare(&q, true))
        .unwrap_or_else(|e| panic!("cannot declare the quorum queue '{q}': {e}"));
    let mut node = NodeGuard { stopped: None };
    let mut servers: Vec<ServerProc> = (0..SERVERS)
        .map(|i| {
            // The URIs go in the environment: ps would show their passwords.
            let uris = rotated(&uris, i).join(",");
            let name = format!("s{}", i + 1);
            let args = ["--queue-type", "quorum"];
            ServerProc::spawn(&log_dir(), &name, &q, &args, &[("AMQP_URI", uris.as_str())])
        })
        .collect();
    if let Err(err) = wait_for_consumers(&brokers, &q, SERVERS as u32, Duration::from_secs(30)) {
        let logs: Vec<String> = servers.iter().map(|s| s.log_tail(10)).collect();
        panic!("{err}\n{}", logs.join("\n"));
    }
    println!(
        "cluster test: {SERVERS} servers consume quorum queue '{q}' (declared through node {}); \
         {CALLERS} callers start",
        declare_node + 1
    );

    let callers = Callers::start(&brokers, &q);
    let warm = Instant::now() + Duration::from_secs(30);
    loop {
        let by = callers.answers_by_server();
        let all_answer = (1..=SERVERS).all(|i| by.get(&format!("s{i}")).copied() >= Some(3));
        if all_answer && callers.since_start() >= WARM_UP {
            break;
        }
        assert!(
            Instant::now() < warm,
            "not every server answered within 30 s: {by:?}"
        );
        thread::sleep(Duration::from_millis(100)); // polling interval
    }

    let (lost_node, leader_name) = leader(&q).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        lost_node >= 1 && lost_node <= brokers.len(),
        "leader {leader_name} is not one of the {} nodes of CLUSTER_URIS",
        brokers.len()
    );
    let before_by = callers.answers_by_server();
    println!(
        "cluster test: stopping node {lost_node} ({leader_name}, leader of the queue) after \
         {:.1}s of calls; answers so far by server: {before_by:?}",
        secs(callers.since_start())
    );
    callers.set_phase(DURING);
    let stop_at = callers.since_start();
    let stop_took = node.stop(lost_node).unwrap_or_else(|e| panic!("{e}"));
    callers.set_phase(AFTER);
    let after_at = callers.since_start();
    notes.push(format!(
        "stopped node {lost_node} ({leader_name}, the queue's leader) at {:.1}s; \
         stop-node took {:.1}s",
        secs(stop_at),
        secs(stop_took)
    ));
    let surviving: Vec<BrokerOptions> = brokers
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != lost_node)
        .map(|(_, b)| b.clone())
        .collect();
    let surviving_node = if lost_node == 1 { 2 } else { 1 };

    // All three servers consume again (the one on the lost node via another node).
    match wait_for_consumers(&surviving, &q, SERVERS as u32, Duration::from_secs(30)) {
        Ok(waited) => notes.push(format!(
            "{SERVERS} consumers again {:.1}s after stop-node returned (via a surviving node)",
            secs(waited)
        )),
        Err(err) => check(false, err),
    }
    // A new leader on a surviving node (the election may still be going on).
    let mut new_leader = leader(&q);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(new_leader, Ok((i, _)) if i != lost_node) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500)); // polling interval
        new_leader = leader(&q);
    }
    match new_leader {
        Ok((i, name)) if i != lost_node => notes.push(format!("new leader: {name}")),
        Ok((_, name)) => check(false, format!("the leader is still {name}")),
        Err(err) => check(false, format!("no new leader: {err}")),
    }

    // Calls go on for AFTER_LOSS after the stop (the length of the run, not a wait for a
    // condition).
    let until = after_at + AFTER_LOSS;
    thread::sleep(until.saturating_sub(callers.since_start()));

    // Who is connected where, while the callers are still connected.
    let version = env!("CARGO_PKG_VERSION");
    let lost_port = ports[lost_node - 1];
    match list_connections(surviving_node) {
        Ok(connections) => {
            let mut placement = Vec::new();
            let names = (1..=SERVERS)
                .map(|i| (format!("s{i}"), format!("rpc-server {version} (s{i})")))
                .chain(
                    (1..=CALLERS).map(|j| (format!("c{j}"), format!("cluster-test caller (c{j})"))),
                );
            for (short, information) in names {
                let on: Vec<u16> = connections
                    .iter()
                    .filter(|(_, properties)| properties.contains(&information))
                    .map(|(port, _)| *port)
                    .collect();
                check(
                    on.len() == 1 && on[0] != lost_port && ports.contains(&on[0]),
                    format!(
                        "{short} ({information:?}) should have one connection, to a surviving \
                         node; has {} on port(s) {on:?} (lost node: port {lost_port})",
                        on.len()
                    ),
                );
                placement.push(format!("{short}@{on:?}"));
            }
            notes.push(format!(
                "list_connections on node {surviving_node}: {} connection(s); {}",
                connections.len(),
                placement.join(" ")
            ));
        }
        Err(err) => check(false, err),
    }

    let report = callers.finish(brokers.len());
    let calls = &report.calls;
    let in_phase = |phase: u8| calls.iter().filter(move |c| c.phase == phase);
    let tail_from = report.stopped_at.saturating_sub(TAIL);
    let tail: Vec<&CallRecord> = calls.iter().filter(|c| c.at >= tail_from).collect();
    let total = Tally::of(calls);
    print_table(&[
        (
            format!("before the stop (0-{:.1}s)", secs(stop_at)),
            Tally::of(in_phase(BEFORE)),
        ),
        (
            format!("during stop-node ({:.1}s)", secs(stop_took)),
            Tally::of(in_phase(DURING)),
        ),
        (
            format!("after it (next {:.1}s)", secs(report.stopped_at - after_at)),
            Tally::of(in_phase(AFTER)),
        ),
        (
            format!("  of which the last {:.0}s", secs(TAIL)),
            Tally::of(tail.iter().copied()),
        ),
        ("total".into(), total),
    ]);

    // Errors by message, and the calls that went badly.
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.outcome == Outcome::Error) {
        *errors.entry(call.detail.clone()).or_default() += 1;
    }
    for (detail, count) in &errors {
        println!("  error x{count}: {detail}");
    }
    for call in calls
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Wrong | Outcome::Lost) || c.hung())
        .take(20)
    {
        println!(
            "  {:?}: c{} fib({}) at {:.2}s took {:.2}s (budget {:.0}s): {}",
            call.outcome,
            call.caller + 1,
            call.n,
            secs(call.at),
            secs(call.elapsed),
            secs(call.budget),
            call.detail
        );
    }
    let mut after_by: BTreeMap<String, u64> = BTreeMap::new();
    for call in in_phase(AFTER).filter(|c| c.outcome == Outcome::Right) {
        *after_by
            .entry(call.server.clone().unwrap_or_default())
            .or_default() += 1;
    }
    notes.push(format!(
        "right answers by server: before the stop {before_by:?}; after it {after_by:?}"
    ));
    notes.push(format!(
        "connections made per caller: {}",
        report
            .connects
            .iter()
            .enumerate()
            .map(|(j, c)| format!("c{}={c}", j + 1))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    // When each caller was answered right again after the stop.
    let recovered: Vec<String> = (0..CALLERS)
        .map(|j| {
            let first_error = calls
                .iter()
                .filter(|c| c.caller == j && c.at >= stop_at && c.outcome != Outcome::Right)
                .map(|c| c.at)
                .min();
            match first_error {
                None => format!("c{}: no failed call", j + 1),
                Some(at) => {
                    let back = calls
                        .iter()
                        .filter(|c| c.caller == j && c.at > at && c.outcome == Outcome::Right)
                        .map(|c| c.at + c.elapsed)
                        .min();
                    match back {
                        Some(back) => format!(
                            "c{}: failed at {:.2}s, right again at {:.2}s",
                            j + 1,
                            secs(at),
                            secs(back)
                        ),
                        None => {
                            format!("c{}: failed at {:.2}s, never right again", j + 1, secs(at))
                        }
                    }
                }
            }
        })
        .collect();
    notes.push(format!("callers: {}", recovered.join("; ")));

    check(
        total.lost == 0,
        format!("{} call(s) lost (timed out)", total.lost),
    );
    check(total.hung == 0, format!("{} call(s) hung", total.hung));
    check(
        total.wrong == 0,
        format!("{} call(s) answered wrong", total.wrong),
    );
    let tail_tally = Tally::of(tail.iter().copied());
    check(
        tail_tally.calls > 0 && tail_tally.right == tail_tally.calls,
        format!(
            "calls of the last {:.0}s: {} of {} right",
            secs(TAIL),
            tail_tally.right,
            tail_tally.calls
        ),
    );
    for j in 0..CALLERS {
        let right = tail
            .iter()
            .filter(|c| c.caller == j && c.outcome == Outcome::Right)
            .count();
        check(
            right > 0,
            format!(
                "caller c{} got no right answer in the last {:.0}s",
                j + 1,
                secs(TAIL)
            ),
        );
    }

    // The servers: the one on the lost node reconnected to another node; all stop cleanly.
    let lost_server = &servers[lost_node - 1];
    let reconnects = lost_server.log_lines("reconnecting in");
    let consuming = lost_server.log_lines("waiting for RPC requests");
    check(
        !reconnects.is_empty() && consuming.len() >= 2,
        format!(
            "{} (on the lost node) did not log a reconnect and a second consume\n{}",
            lost_server.name,
            lost_server.log_tail(15)
        ),
    );
    if let (Some(first), Some(last)) = (reconnects.first(), consuming.last()) {
        notes.push(format!(
            "{}: {} reconnect attempt(s), first: {:?}; now: {:?}",
            lost_server.name,
            reconnects.len(),
            log_message(first),
            log_message(last)
        ));
    }
    for server in &servers {
        if server.name != lost_server.name {
            let r = server.log_lines("reconnecting in").len();
            notes.push(format!("{}: {r} reconnect attempt(s)", server.name));
        }
    }
    for server in &mut servers {
        let stopped = server.stop(Duration::from_secs(10)).map(|_| ());
        check(stopped.is_ok(), stopped.err().unwrap_or_default());
        let panics = server.log_lines("panicked").len();
        check(
            panics == 0,
            format!("{} panicked\n{}", server.name, server.log_tail(20)),
        );
    }
    drop(servers);
    match node.start() {
        Ok(took) => notes.push(format!(
            "node {lost_node} started again in {:.1}s",
            secs(took)
        )),
        Err(err) => check(false, err),
    }
    if let Err(err) = queue.delete() {
        check(false, format!("cannot delete queue '{q}': {err}"));
    }
    notes.push(format!("whole test {:.1}s", secs(run_started.elapsed())));
    for note in &notes {
        println!("  {note}");
    }
    assert!(
        failures.is_empty(),
        "{} failed check(s):\n{}\n(server logs in {})",
        failures.len(),
        failures.join("\n"),
        log_dir().display()
    );
}
