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
//! return within its timeout plus [`GRACE`](common::load::GRACE)). It checks that none was wrong, lost or hung,
//! that every call of the last [`TAIL`] was answered right by every caller, that all three
//! servers consume the queue again, and that every server and caller is connected to a
//! surviving node (`rabbitmqctl list_connections`, which shows the `information` client
//! property: `rpc-server <version> (s<i>)`, `cluster-test caller (c<j>)`). The stopped node is
//! started again at the end, also when the test fails; the queue is deleted and every process
//! the test started is stopped. Server logs are kept in `target/tmp/cluster/`.
//!
//! The test runs in phases: [`setup`], [`load_before`], [`stop_leader`], [`after_loss`],
//! [`report`] and [`teardown`]; the harness (callers, tally, table, servers, broker control)
//! is the tests' `common` module, shared with the fault run.

mod common;

use common::broker::{cluster_sh, Ctl, NodeGuard};
use common::callers::{CallerReport, Callers, Pace};
use common::load::{print_table, Call, Checks, Outcome, Row, Tally, AFTER, BEFORE, DURING};
use common::server::{await_consumers, stop_servers, ServerProc};
use common::{expected, fresh_log_dir, log_dir, secs};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{BrokerOptions, ClientOptions, ReplyQueue};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

/// The timeout of every call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The callers' limit on the TCP connect and on the AMQP handshake, each, per node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const SERVERS: usize = 3;
const CALLERS: usize = 6;
/// fib(150,000) has 31,348 digits and takes a few ms in a release build.
const BASE_N: u64 = 150_000;
/// Pauses of a caller: after an answered call, to keep the machine's CPU use modest (the three
/// nodes, three servers and the callers share it with other work); after a failed call, so a
/// dead node is not hammered.
const PACE: Pace = Pace {
    right: Duration::from_millis(40),
    error: Duration::from_millis(200),
};
/// Calls before the node is stopped (at least; every server must also have answered some).
const WARM_UP: Duration = Duration::from_secs(4);
/// Calls after `stop-node` has returned.
const AFTER_LOSS: Duration = Duration::from_secs(10);
/// Every call started in this last stretch of the run must be answered right.
const TAIL: Duration = Duration::from_secs(5);

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

fn logs() -> PathBuf {
    log_dir("cluster")
}

/// A log line without its `[time LEVEL target] ` prefix.
fn log_message(line: &str) -> &str {
    line.split_once("] ").map_or(line, |(_, message)| message)
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

/// `rabbitmqctl list_connections port client_properties` on node `node`: (server port, client
/// properties as text) per connection in the cluster.
fn list_connections(node: usize) -> Result<Vec<(u16, String)>, String> {
    let out = Ctl::cluster_node(node).run(&[
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

/// The cluster of `CLUSTER_URIS`.
struct Cluster {
    uris: Vec<String>,
    brokers: Vec<BrokerOptions>,
    ports: Vec<u16>,
}

impl Cluster {
    fn from_env() -> Cluster {
        let list = std::env::var("CLUSTER_URIS").unwrap_or_else(|_| {
            panic!(
                "CLUSTER_URIS is not set: this test needs the cluster of scripts/cluster.sh; run \
                 scripts/cluster-test.sh, or scripts/cluster.sh up and then \
                 CLUSTER_URIS=$(scripts/cluster.sh uris) cargo test --release -p rpc-server \
                 --test cluster -- --ignored --nocapture"
            )
        });
        let uris: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
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
        let ports = brokers.iter().map(|b| b.port).collect();
        Cluster {
            uris,
            brokers,
            ports,
        }
    }

    /// The brokers of every node but `lost` (1-based).
    fn without(&self, lost: usize) -> Vec<BrokerOptions> {
        let mut brokers = self.brokers.clone();
        brokers.remove(lost - 1);
        brokers
    }
}

/// What the test set up. Fields drop in this order on a panic: servers killed, the node
/// started again, the queue deleted (after the servers are gone, or they would declare it
/// again).
struct Run {
    servers: Vec<ServerProc>,
    node: NodeGuard,
    queue: QueueGuard,
    cluster: Cluster,
    checks: Checks,
}

impl Run {
    fn q(&self) -> &str {
        self.queue.name()
    }
}

/// The node lost, and when.
struct Loss {
    node: usize,
    name: String,
    /// When the node was stopped and stop-node returned, from the callers' start.
    stop_at: Duration,
    after_at: Duration,
    stop_took: Duration,
}

/// Phase 1: the quorum queue, declared through a random node, and three servers consuming it.
fn setup(cluster: Cluster) -> Run {
    fresh_log_dir("cluster");
    for caller in 0..CALLERS {
        expected(caller_n(caller, 0));
        expected(caller_n(caller, 1));
    }
    let queue = QueueGuard::on(cluster.brokers.clone(), "cluster-node-loss");
    let q = queue.name().to_string();
    // Declared through a node picked at random: a quorum queue's leader starts on the node
    // that declared it, so runs lose different nodes (the one the others joined, or not).
    let declare_node = usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % cluster.brokers.len();
    Admin::connect_to(&cluster.brokers[declare_node..=declare_node])
        .and_then(|admin| admin.declare(&q, true))
        .unwrap_or_else(|e| panic!("cannot declare the quorum queue '{q}': {e}"));
    let servers: Vec<ServerProc> = (0..SERVERS)
        .map(|i| {
            // The URIs go in the environment: ps would show their passwords.
            let uris = rotated(&cluster.uris, i).join(",");
            let name = format!("s{}", i + 1);
            let args = ["--queue-type", "quorum"];
            ServerProc::spawn(&logs(), &name, &q, &args, &[("AMQP_URI", uris.as_str())])
        })
        .collect();
    await_consumers(&servers, &cluster.brokers, &q, Duration::from_secs(30));
    println!(
        "cluster test: {SERVERS} servers consume quorum queue '{q}' (declared through node {}); \
         {CALLERS} callers start",
        declare_node + 1
    );
    Run {
        servers,
        node: NodeGuard::default(),
        queue,
        cluster,
        checks: Checks::quiet("cluster test"),
    }
}

/// Phase 2: callers `c<j>` for j = 1..=CALLERS, on the brokers rotated to start at node
/// (j - 1) mod nodes, until every server has answered and [`WARM_UP`] has passed.
fn load_before(run: &Run) -> Callers {
    let options = (0..CALLERS)
        .map(|index| {
            let name = format!("cluster-test caller (c{})", index + 1);
            let brokers = rotated(&run.cluster.brokers, index)
                .into_iter()
                .map(|b| BrokerOptions {
                    client_name: name.clone(),
                    ..b
                })
                .collect();
            ClientOptions {
                brokers,
                queue: run.q().to_string(),
                timeout: CALL_TIMEOUT,
                reply_queue: ReplyQueue::Exclusive,
                ..ClientOptions::default()
            }
        })
        .collect();
    let callers = Callers::start(options, caller_n, PACE);
    callers.wait("every server to answer", Duration::from_secs(30), |c| {
        let by = c.answers_by_server();
        let all_answer = (1..=SERVERS).all(|i| by.get(&format!("s{i}")).copied() >= Some(3));
        all_answer && c.since_start() >= WARM_UP
    });
    callers
}

/// Phase 3: stops the node hosting the queue's leader (calls started meanwhile are
/// [`DURING`]; later ones [`AFTER`]).
fn stop_leader(run: &mut Run, callers: &Callers) -> Loss {
    let (node, name) = leader(run.q()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        node >= 1 && node <= run.cluster.brokers.len(),
        "leader {name} is not one of the {} nodes of CLUSTER_URIS",
        run.cluster.brokers.len()
    );
    println!(
        "cluster test: stopping node {node} ({name}, leader of the queue) after {:.1}s of \
         calls; answers so far by server: {:?}",
        secs(callers.since_start()),
        callers.answers_by_server()
    );
    callers.set_phase(DURING);
    let stop_at = callers.since_start();
    let stop_took = run.node.stop(node).unwrap_or_else(|e| panic!("{e}"));
    callers.set_phase(AFTER);
    let after_at = callers.since_start();
    run.checks.note(format!(
        "stopped node {node} ({name}, the queue's leader) at {:.1}s; stop-node took {:.1}s",
        secs(stop_at),
        secs(stop_took)
    ));
    Loss {
        node,
        name,
        stop_at,
        after_at,
        stop_took,
    }
}

/// Phase 4: the servers consume again and a new leader is elected while the calls go on for
/// [`AFTER_LOSS`]; then everyone must be connected to a surviving node.
fn after_loss(run: &mut Run, callers: &Callers, loss: &Loss) {
    let surviving = run.cluster.without(loss.node);
    let q = run.q().to_string();
    // All three servers consume again (the one on the lost node via another node).
    match testing::wait_for_consumers(&surviving, &q, SERVERS as u32, Duration::from_secs(30)) {
        Ok(waited) => run.checks.note(format!(
            "{SERVERS} consumers again {:.1}s after stop-node returned (via a surviving node)",
            secs(waited)
        )),
        Err(err) => run.checks.check(false, || err),
    }
    // A new leader on a surviving node (the election may still be going on).
    let mut new_leader = Err(String::from("not asked yet"));
    let every = Duration::from_millis(500); // each question starts a rabbitmqctl
    let _ = testing::poll_until("a new leader", Duration::from_secs(15), every, || {
        new_leader = leader(&q);
        Ok(matches!(new_leader, Ok((i, _)) if i != loss.node))
    });
    match new_leader {
        Ok((i, name)) if i != loss.node => run.checks.note(format!("new leader: {name}")),
        Ok((_, name)) => run
            .checks
            .check(false, || format!("the leader is still {name}")),
        Err(err) => run.checks.check(false, || format!("no new leader: {err}")),
    }
    // Calls go on for AFTER_LOSS after the stop (the length of the run, not a wait for a
    // condition).
    let until = loss.after_at + AFTER_LOSS;
    thread::sleep(until.saturating_sub(callers.since_start()));
    check_placement(run, loss);
}

/// Who is connected where, while the callers are still connected: one connection per server
/// and caller, each to a surviving node.
fn check_placement(run: &mut Run, loss: &Loss) {
    let surviving_node = if loss.node == 1 { 2 } else { 1 };
    let version = env!("CARGO_PKG_VERSION");
    let ports = &run.cluster.ports;
    let lost_port = ports[loss.node - 1];
    let connections = match list_connections(surviving_node) {
        Ok(connections) => connections,
        Err(err) => return run.checks.check(false, || err),
    };
    let mut placement = Vec::new();
    let names = (1..=SERVERS)
        .map(|i| (format!("s{i}"), format!("rpc-server {version} (s{i})")))
        .chain((1..=CALLERS).map(|j| (format!("c{j}"), format!("cluster-test caller (c{j})"))));
    for (short, information) in names {
        let on: Vec<u16> = connections
            .iter()
            .filter(|(_, properties)| properties.contains(&information))
            .map(|(port, _)| *port)
            .collect();
        run.checks.check(
            on.len() == 1 && on[0] != lost_port && ports.contains(&on[0]),
            || {
                format!(
                    "{short} ({information:?}) should have one connection, to a surviving \
                     node; has {} on port(s) {on:?} (lost node: port {lost_port})",
                    on.len()
                )
            },
        );
        placement.push(format!("{short}@{on:?}"));
    }
    run.checks.note(format!(
        "list_connections on node {surviving_node}: {} connection(s); {}",
        connections.len(),
        placement.join(" ")
    ));
}

/// Phase 5: the table, the errors and bad calls, and the checks of the calls.
fn report(run: &mut Run, loss: &Loss, done: &CallerReport, before_by: &BTreeMap<String, u64>) {
    let calls = &done.calls;
    let in_phase = |phase: u8| calls.iter().filter(move |c| c.phase == phase);
    let tail_from = done.stopped_at.saturating_sub(TAIL);
    let tail: Vec<&Call> = calls.iter().filter(|c| c.at >= tail_from).collect();
    let total = Tally::of(calls);
    let tail_tally = Tally::of(tail.iter().copied());
    print_table(
        "cluster test: results",
        "calls started",
        &[
            Row::new(
                format!("before the stop (0-{:.1}s)", secs(loss.stop_at)),
                Tally::of(in_phase(BEFORE)),
                None,
            ),
            Row::new(
                format!("during stop-node ({:.1}s)", secs(loss.stop_took)),
                Tally::of(in_phase(DURING)),
                None,
            ),
            Row::new(
                format!(
                    "after it (next {:.1}s)",
                    secs(done.stopped_at - loss.after_at)
                ),
                Tally::of(in_phase(AFTER)),
                None,
            ),
            Row::new(
                format!("  of which the last {:.0}s", secs(TAIL)),
                tail_tally,
                None,
            ),
            Row::new("total", total, Some(done.stopped_at)),
        ],
    );
    // Errors by message, and the calls that went badly.
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.outcome == Outcome::Error) {
        *errors.entry(call.detail.clone()).or_default() += 1;
    }
    for (detail, count) in &errors {
        println!("  error x{count}: {detail}");
    }
    for call in calls.iter().filter(|c| c.bad()).take(20) {
        println!("  {}", call.describe());
    }
    let mut after_by: BTreeMap<String, u64> = BTreeMap::new();
    for call in in_phase(AFTER).filter(|c| c.outcome == Outcome::Right) {
        *after_by
            .entry(call.server.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let checks = &mut run.checks;
    checks.note(format!(
        "right answers by server: before the stop {before_by:?}; after it {after_by:?}"
    ));
    checks.note(format!(
        "connections made per caller: {}",
        done.connects
            .iter()
            .enumerate()
            .map(|(j, c)| format!("c{}={c}", j + 1))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    checks.note(format!(
        "callers: {}",
        recovery(calls, loss.stop_at).join("; ")
    ));

    checks.check(total.lost == 0, || {
        format!("{} call(s) lost (timed out)", total.lost)
    });
    checks.check(total.hung == 0, || format!("{} call(s) hung", total.hung));
    checks.check(total.wrong == 0, || {
        format!("{} call(s) answered wrong", total.wrong)
    });
    checks.check(
        tail_tally.calls > 0 && tail_tally.right == tail_tally.calls,
        || {
            format!(
                "calls of the last {:.0}s: {} of {} right",
                secs(TAIL),
                tail_tally.right,
                tail_tally.calls
            )
        },
    );
    for j in 0..CALLERS {
        let right = tail
            .iter()
            .filter(|c| c.caller == j && c.outcome == Outcome::Right)
            .count();
        checks.check(right > 0, || {
            format!(
                "caller c{} got no right answer in the last {:.0}s",
                j + 1,
                secs(TAIL)
            )
        });
    }
}

/// When each caller was answered right again after its first failed call after `stop_at`.
fn recovery(calls: &[Call], stop_at: Duration) -> Vec<String> {
    (0..CALLERS)
        .map(|j| {
            let first_error = calls
                .iter()
                .filter(|c| c.caller == j && c.at >= stop_at && c.outcome != Outcome::Right)
                .map(|c| c.at)
                .min();
            let Some(at) = first_error else {
                return format!("c{}: no failed call", j + 1);
            };
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
                None => format!("c{}: failed at {:.2}s, never right again", j + 1, secs(at)),
            }
        })
        .collect()
}

/// Phase 6: the server on the lost node reconnected to another node; all servers stop
/// cleanly; the node is started again and the queue deleted.
fn teardown(mut run: Run, loss: &Loss) -> Checks {
    let lost_server = &run.servers[loss.node - 1];
    let reconnects = lost_server.log_lines("reconnecting in");
    let consuming = lost_server.log_lines("waiting for RPC requests");
    run.checks
        .check(!reconnects.is_empty() && consuming.len() >= 2, || {
            format!(
                "{} (on the lost node) did not log a reconnect and a second consume\n{}",
                lost_server.name,
                lost_server.log_tail(15)
            )
        });
    if let (Some(first), Some(last)) = (reconnects.first(), consuming.last()) {
        run.checks.note(format!(
            "{}: {} reconnect attempt(s), first: {:?}; now: {:?}",
            lost_server.name,
            reconnects.len(),
            log_message(first),
            log_message(last)
        ));
    }
    for (i, server) in run.servers.iter().enumerate() {
        if i + 1 != loss.node {
            let r = server.log_lines("reconnecting in").len();
            run.checks
                .note(format!("{}: {r} reconnect attempt(s)", server.name));
        }
    }
    stop_servers(&mut run.checks, &mut run.servers, Duration::from_secs(10));
    run.servers.clear();
    match run.node.start() {
        Ok(took) => run.checks.note(format!(
            "node {} ({}) started again in {:.1}s",
            loss.node,
            loss.name,
            secs(took)
        )),
        Err(err) => run.checks.check(false, || err),
    }
    if let Err(err) = run.queue.delete() {
        let q = run.q().to_string();
        run.checks
            .check(false, || format!("cannot delete queue '{q}': {err}"));
    }
    run.checks
}

#[test]
#[ignore = "needs scripts/cluster.sh up; run by scripts/cluster-test.sh"]
fn node_loss() {
    let run_started = Instant::now();
    let mut run = setup(Cluster::from_env());
    let callers = load_before(&run);
    let before_by = callers.answers_by_server();
    let loss = stop_leader(&mut run, &callers);
    after_loss(&mut run, &callers, &loss);
    let calls = callers.finish();
    report(&mut run, &loss, &calls, &before_by);
    let mut checks = teardown(run, &loss);
    checks
        .notes
        .push(format!("whole test {:.1}s", secs(run_started.elapsed())));
    for note in &checks.notes {
        println!("  {note}");
    }
    assert!(
        checks.failures.is_empty(),
        "{} failed check(s):\n{}\n(server logs in {})",
        checks.failures.len(),
        checks.failures.join("\n"),
        logs().display()
    );
}
