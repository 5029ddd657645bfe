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
//!     cargo test --release -p rpc-server --test cluster -- --ignored --nocapture
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
//! [`GRACE`](common::load::GRACE)); each scenario prints its rows (one per phase) and the
//! test, at the end, the table of all scenarios. Every scenario checks that every call was
//! answered right (0 errors, 0 wrong, 0 lost, 0 hung), that every caller was answered right
//! in its last phase, that every server stops cleanly, and checks of its own. A node stopped,
//! killed or cut off is started again (or healed) at the end of its scenario, also when the
//! scenario fails; the queue is deleted and every process the test started is stopped. Server
//! logs are kept in `target/tmp/cluster/<scenario>/`.

#[path = "../common/mod.rs"]
mod common;
mod kill;
mod partition;
mod rolling;

use common::broker::{cluster_sh, Ctl, NodeGuard};
use common::callers::{Binary, Caller, CallerReport, Callers, Pace, EARLIER};
use common::load::{print_table, Call, Checks, Outcome, Row, Tally};
use common::server::{await_consumers, stop_servers, ServerProc};
use common::{expected, fresh_log_dir, log_dir, secs};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{BrokerOptions, ClientOptions, ReplyQueue};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::thread;
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

/// The index (1-based) of the node hosting `queue`'s leader, and its name.
pub fn leader(queue: &str) -> Result<(usize, String), String> {
    let node = cluster_sh(&["leader", queue])?.trim().to_string();
    Ok((node_index(&node)?, node))
}

/// `rpcI@localhost` → I.
fn node_index(node: &str) -> Result<usize, String> {
    node.strip_prefix("rpc")
        .and_then(|rest| rest.split_once('@'))
        .and_then(|(i, _)| i.parse().ok())
        .ok_or_else(|| format!("unexpected node name {node:?}"))
}

/// `rabbitmqctl list_connections port client_properties` on node `node`: (server port, client
/// properties as text) per connection in the cluster.
pub fn list_connections(node: usize) -> Result<Vec<(u16, String)>, String> {
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

/// The ports of the connections (of `connections`) whose client properties contain
/// `information` exactly (followed by the closing quote of the value).
pub fn ports_of(connections: &[(u16, String)], information: &str) -> Vec<u16> {
    let needle = format!("{information}\"");
    connections
        .iter()
        .filter(|(_, properties)| properties.contains(&needle))
        .map(|(port, _)| *port)
        .collect()
}

/// The members of quorum queue `queue` and those of them online, as node `via` sees them
/// (`rabbitmqctl list_queues name members online`).
pub fn queue_members(via: usize, queue: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let out = Ctl::cluster_node(via).run(&[
        "-q",
        "list_queues",
        "--no-table-headers",
        "name",
        "members",
        "online",
    ])?;
    let row = out
        .lines()
        .find(|line| line.split('\t').next() == Some(queue))
        .ok_or_else(|| format!("node {via} does not list queue '{queue}'"))?;
    let mut fields = row.split('\t').skip(1);
    let nodes = |field: Option<&str>| -> Vec<String> {
        field
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|n| n.trim().trim_matches('\'').trim_matches('"').to_string())
            .filter(|n| !n.is_empty())
            .collect()
    };
    let members = nodes(fields.next());
    let online = nodes(fields.next());
    Ok((members, online))
}

/// The cluster of `CLUSTER_URIS`.
pub struct Cluster {
    pub uris: Vec<String>,
    pub brokers: Vec<BrokerOptions>,
    pub ports: Vec<u16>,
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
            uris.len() == 3,
            "CLUSTER_URIS lists {} node(s); the scenarios are written for the 3 of \
             scripts/cluster.sh",
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
    pub fn without(&self, lost: usize) -> Vec<BrokerOptions> {
        let mut brokers = self.brokers.clone();
        brokers.remove(lost - 1);
        brokers
    }

    /// A node other than `node` (1-based), to ask with rabbitmqctl.
    pub fn other_than(&self, node: usize) -> usize {
        if node == 1 {
            2
        } else {
            1
        }
    }

    /// Whether node `node` (1-based) accepts an AMQP login.
    pub fn answers(&self, node: usize) -> bool {
        Admin::connect_to(&self.brokers[node - 1..node]).is_ok()
    }

    /// Waits up to `within` until the cluster is whole: every node answers AMQP and `queue`
    /// has all its members online (as a node that answered sees it). How long it waited.
    pub fn wait_whole(&self, queue: &str, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last = String::from("not asked yet");
        let every = Duration::from_millis(500); // each question starts a rabbitmqctl
        testing::poll_until("the cluster to be whole", within, every, || {
            if let Some(down) = (1..=self.brokers.len()).find(|&i| !self.answers(i)) {
                last = format!("node {down} does not answer AMQP");
                return Ok(false);
            }
            match queue_members(1, queue) {
                Ok((members, online)) => {
                    last = format!("members {members:?}, online {online:?}");
                    Ok(members.len() == self.brokers.len() && online.len() == members.len())
                }
                Err(err) => {
                    last = err;
                    Ok(false)
                }
            }
        })
        .map_err(|err| format!("{err}: {last}"))?;
        Ok(started.elapsed())
    }
}

/// A phase of a scenario: the calls started in it are tallied on its row.
struct Phase {
    label: String,
    from: Duration,
}

/// One scenario's set-up: its queue, servers and callers, its phases, its checks. Fields drop
/// in this order on a panic: callers stopped, servers killed, the node started again (or the
/// cut healed, which the scenario holds), the queue deleted (after the servers are gone, or
/// they would declare it again).
pub struct Run {
    callers: Option<Callers>,
    pub servers: Vec<ServerProc>,
    pub node: NodeGuard,
    queue: QueueGuard,
    pub checks: Checks,
    phases: Vec<Phase>,
    log_dir: PathBuf,
    started: Instant,
    /// Errors of rpc-client processes that failed to set up (exit 3 before sending their
    /// request: see [`is_setup_failure`]) are counted and shown but allowed.
    pub allow_setup_failures: bool,
}

/// An `rpc-client` process that exited 3 before its request was sent: it could not connect,
/// or its connection's set-up (channel, callback queue) got no answer within its connect
/// timeout. During a partition, until the cut-off node is noticed (up to 1.25 × net_ticktime),
/// RabbitMQ 3.10 cannot declare an exclusive queue on any node.
pub fn is_setup_failure(call: &Call) -> bool {
    let last = call.detail.split(EARLIER).next().unwrap_or_default();
    call.caller >= LIBRARY_CALLERS
        && call.outcome == Outcome::Error
        && last.starts_with("rpc-client exit 3: ")
        && !last.contains("not back in time") // a call that was sent, then lost its connection
        && (last.contains("cannot connect to")
            || last.contains("callback queue's declare and consume")
            || last.contains("to the channel open"))
}

impl Run {
    /// The scenario's queue (declared through a node picked at random: a quorum queue's
    /// leader starts on the node that declared it), three servers consuming it, and the six
    /// callers, once every server and every caller has been answered and [`WARM_UP`] has
    /// passed. Calls from then on are in phase 1, `first_phase`.
    pub fn start(cluster: &Cluster, slug: &str, first_phase: &str) -> Run {
        let started = Instant::now();
        let log_dir = fresh_log_dir(&format!("cluster/{slug}"));
        for caller in 0..CALLERS {
            expected(caller_n(caller, 0));
            expected(caller_n(caller, 1));
        }
        let queue = QueueGuard::on(cluster.brokers.clone(), &format!("cluster-{slug}"));
        let q = queue.name().to_string();
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
                ServerProc::spawn(&log_dir, &name, &q, &args, &[("AMQP_URI", uris.as_str())])
            })
            .collect();
        await_consumers(&servers, &cluster.brokers, &q, Duration::from_secs(30));
        let mut run = Run {
            callers: None,
            servers,
            node: NodeGuard::default(),
            queue,
            checks: Checks::new(format!("cluster {slug}")),
            phases: Vec::new(),
            log_dir,
            started,
            allow_setup_failures: false,
        };
        run.checks.note(format!(
            "{SERVERS} servers consume quorum queue '{q}' (declared through node {}); \
             {CALLERS} callers start",
            declare_node + 1
        ));
        let program = client_binary();
        let callers = (0..CALLERS)
            .map(|index| {
                let start = index % cluster.brokers.len();
                let name = caller_information(index);
                let brokers = rotated(&cluster.brokers, start)
                    .into_iter()
                    .map(|b| BrokerOptions {
                        client_name: name.clone(),
                        ..b
                    })
                    .collect();
                let options = ClientOptions {
                    brokers,
                    queue: q.clone(),
                    timeout: CALL_TIMEOUT,
                    reply_queue: ReplyQueue::Exclusive,
                    idempotent: true,
                };
                if index < LIBRARY_CALLERS {
                    Caller::persistent(options)
                } else {
                    let binary = Binary {
                        program: program.clone(),
                        uris: rotated(&cluster.uris, start).join(","),
                    };
                    Caller::binary(binary, options)
                }
            })
            .collect();
        let callers = Callers::start_callers(callers, caller_n, PACE);
        callers.wait(
            "every server and every caller to be answered",
            Duration::from_secs(30),
            |c| {
                let by = c.answers_by_server();
                let servers = (1..=SERVERS).all(|i| by.get(&format!("s{i}")).copied() >= Some(3));
                servers
                    && c.answers_by_caller().iter().all(|&n| n > 0)
                    && c.since_start() >= WARM_UP
            },
        );
        run.callers = Some(callers);
        run.phase(first_phase);
        run
    }

    pub fn q(&self) -> &str {
        self.queue.name()
    }

    fn callers(&self) -> &Callers {
        self.callers.as_ref().expect("the callers run")
    }

    /// Time since the callers started.
    pub fn now(&self) -> Duration {
        self.callers().since_start()
    }

    /// Right answers so far, per caller.
    pub fn answers_by_caller(&self) -> Vec<u64> {
        self.callers().answers_by_caller()
    }

    /// Starts node `node` again (phase "start-node N, until whole") and waits until the
    /// cluster is whole; notes how long that took, or records the failure. Whether it worked.
    pub fn restart_node(&mut self, cluster: &Cluster, node: usize) -> bool {
        let q = self.q().to_string();
        self.phase(format!("start-node {node}, until whole"));
        let back = self
            .node
            .start()
            .and_then(|started| Ok((started, cluster.wait_whole(&q, NODE_BACK)?)));
        match back {
            Ok((started, whole)) => {
                self.checks.note(format!(
                    "node {node} started again in {:.1}s; queue members all online {:.1}s later",
                    secs(started),
                    secs(whole)
                ));
                true
            }
            Err(err) => {
                self.checks.check(false, || format!("node {node}: {err}"));
                false
            }
        }
    }

    /// Calls started from now on are in a new phase, `label`.
    pub fn phase(&mut self, label: impl Into<String>) {
        let from = self.now();
        self.phases.push(Phase {
            label: label.into(),
            from,
        });
        // Phase 0 is the warm-up.
        let number = u8::try_from(self.phases.len()).expect("fewer than 256 phases");
        self.callers().set_phase(number);
    }

    /// Waits up to 30 s until server `s<node>` (which started on node `node`) consumes again
    /// after losing that node: it logs a reconnect and a second "waiting for RPC requests".
    /// (The queue's consumer count is no proof: a quorum queue keeps the consumer of a node
    /// that vanished, as suspected down, until the node is back.)
    pub fn await_reconsume(&mut self, node: usize, since: Duration) {
        let server = &self.servers[node - 1];
        let waited = testing::poll_until(
            &format!("{} to consume again", server.name),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                Ok(!server.log_lines("reconnecting in").is_empty()
                    && server.log_count("waiting for RPC requests") >= 2)
            },
        );
        let reconnects = server.log_lines("reconnecting in");
        let (name, tail) = (server.name.clone(), server.log_tail(15));
        match waited {
            Ok(()) => self.checks.note(format!(
                "{name} (on node {node}) consumes again {:.1}s after the fault; {} reconnect \
                 attempt(s), first: {:?}",
                secs(self.now().saturating_sub(since)),
                reconnects.len(),
                reconnects.first().map(|l| log_message(l))
            )),
            Err(err) => self.checks.check(false, || format!("{err}\n{tail}")),
        }
    }

    /// Lets the calls go on until `at` (from the callers' start): the length of a phase, not
    /// a wait for a condition.
    pub fn run_until(&self, at: Duration) {
        thread::sleep(at.saturating_sub(self.now()));
    }

    /// Who is connected where (the `information` client property of servers and library
    /// callers, rpc-client processes counted), as node `via` lists it; checks that each server
    /// and library caller has exactly one connection, none on the port `lost` (if any).
    pub fn check_placement(&mut self, cluster: &Cluster, via: usize, lost: Option<usize>) {
        let connections = match list_connections(via) {
            Ok(connections) => connections,
            Err(err) => return self.checks.check(false, || err),
        };
        let lost_port = lost.map(|node| cluster.ports[node - 1]);
        let names = (1..=SERVERS)
            .map(|i| (format!("s{i}"), server_information(i)))
            .chain((0..LIBRARY_CALLERS).map(|j| (caller_name(j), caller_information(j))));
        let mut placement = Vec::new();
        for (short, information) in names {
            let on = ports_of(&connections, &information);
            self.checks.check(
                on.len() == 1 && Some(on[0]) != lost_port && cluster.ports.contains(&on[0]),
                || {
                    format!(
                        "{short} ({information:?}) should have one connection, to a node of \
                         the cluster{}; has {} on port(s) {on:?}",
                        lost_port.map_or(String::new(), |p| format!(" but the lost one ({p})")),
                        on.len()
                    )
                },
            );
            placement.push(format!("{short}@{on:?}"));
        }
        let binaries = ports_of(&connections, &binary_information());
        if let Some(lost_port) = lost_port {
            let on_lost = binaries.iter().filter(|&&p| p == lost_port).count();
            self.checks.check(on_lost == 0, || {
                format!("{on_lost} rpc-client connection(s) on the lost node (port {lost_port})")
            });
        }
        self.checks.note(format!(
            "list_connections on node {via}: {} connection(s); {} rpc-client@{binaries:?}",
            connections.len(),
            placement.join(" ")
        ));
    }

    /// Stops the callers and reports: the scenario's rows, its errors and bad calls, and the
    /// checks every scenario makes (every call right; every caller answered right in the last
    /// phase). Then stops the servers (each must exit 0, without a panic), starts a stopped
    /// node again and deletes the queue. Returns the scenario's rows (its total first) and
    /// checks.
    pub fn finish(mut self, cluster: &Cluster, title: &str) -> (Vec<Row>, Checks) {
        let callers = self.callers.take().expect("the callers run");
        let done = callers.finish();
        let rows = self.report(title, &done);
        stop_servers(&mut self.checks, &mut self.servers, Duration::from_secs(15));
        self.servers.clear();
        if let Some(node) = self.node.stopped() {
            match self.node.start() {
                Ok(took) => self.checks.note(format!(
                    "node {node} started again at the end in {:.1}s",
                    secs(took)
                )),
                Err(err) => self.checks.check(false, || err),
            }
        }
        // The next scenario starts on a whole cluster.
        let q = self.q().to_string();
        if let Err(err) = cluster.wait_whole(&q, NODE_BACK) {
            self.checks
                .check(false, || format!("the cluster is not whole again: {err}"));
        }
        if let Err(err) = self.queue.delete() {
            self.checks
                .check(false, || format!("cannot delete queue '{q}': {err}"));
        }
        self.checks.note(format!(
            "scenario took {:.1}s (server logs in {})",
            secs(self.started.elapsed()),
            self.log_dir.display()
        ));
        (rows, std::mem::replace(&mut self.checks, Checks::new("")))
    }

    fn report(&mut self, title: &str, done: &CallerReport) -> Vec<Row> {
        let calls = &done.calls;
        let phase_calls =
            |phase: usize| calls.iter().filter(move |c| usize::from(c.phase) == phase);
        let mut rows = vec![Row::new(
            "  warm-up",
            Tally::of(phase_calls(0)),
            Some(self.phases.first().map_or(done.stopped_at, |p| p.from)),
        )];
        for (i, phase) in self.phases.iter().enumerate() {
            let to = self.phases.get(i + 1).map_or(done.stopped_at, |p| p.from);
            rows.push(Row::new(
                format!("  {}", phase.label),
                Tally::of(phase_calls(i + 1)),
                Some(to.saturating_sub(phase.from)),
            ));
        }
        let library = Tally::of(calls.iter().filter(|c| c.caller < LIBRARY_CALLERS));
        let binary = Tally::of(calls.iter().filter(|c| c.caller >= LIBRARY_CALLERS));
        rows.push(Row::new("  library callers c1-c3", library, None));
        rows.push(Row::new("  rpc-client processes b1-b3", binary, None));
        let total = Tally::of(calls);
        rows.insert(0, Row::new(title.to_string(), total, Some(done.stopped_at)));
        let mut shown: Vec<Row> = rows[1..]
            .iter()
            .map(|r| Row::new(r.label.clone(), r.tally, r.took))
            .collect();
        shown.push(Row::new("total", total, Some(done.stopped_at)));
        print_table(title, "calls started", &shown);

        // Errors by message, and the calls that went badly.
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for call in calls.iter().filter(|c| c.outcome == Outcome::Error) {
            let key = format!("{}: {}", caller_name(call.caller), call.detail);
            *errors.entry(key).or_default() += 1;
        }
        for (detail, count) in errors.iter().take(20) {
            println!("  error x{count}: {detail}");
        }
        for call in calls.iter().filter(|c| c.bad()).take(20) {
            println!("  {}", describe(call));
        }
        let mut by_server: BTreeMap<String, u64> = BTreeMap::new();
        for call in calls.iter().filter(|c| c.outcome == Outcome::Right) {
            *by_server
                .entry(call.server.clone().unwrap_or_else(|| "?".into()))
                .or_default() += 1;
        }
        let checks = &mut self.checks;
        checks.note(format!("right answers by server: {by_server:?}"));
        checks.note(format!(
            "connections made (library) / processes run (rpc-client) per caller: {}",
            done.connects
                .iter()
                .enumerate()
                .map(|(j, c)| format!("{}={c}", caller_name(j)))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let setup_failures = if self.allow_setup_failures {
            calls.iter().filter(|c| is_setup_failure(c)).count() as u64
        } else {
            0
        };
        if setup_failures > 0 {
            checks.note(format!(
                "{setup_failures} rpc-client process(es) could not set up a connection (exit 3 \
                 before sending; allowed in this scenario)"
            ));
        }
        let errors = total.errors - setup_failures;
        checks.check(errors == 0, || {
            format!("{errors} call(s) ended in an error")
        });
        checks.check(total.lost == 0, || {
            format!(
                "{} call(s) lost (no answer within their deadline)",
                total.lost
            )
        });
        checks.check(total.hung == 0, || format!("{} call(s) hung", total.hung));
        checks.check(total.wrong == 0, || {
            format!("{} call(s) answered wrong", total.wrong)
        });
        let last = self.phases.len();
        for j in 0..CALLERS {
            let right = phase_calls(last)
                .filter(|c| c.caller == j && c.outcome == Outcome::Right)
                .count();
            let label = self.phases.last().map_or("", |p| p.label.as_str());
            checks.check(right > 0, || {
                format!(
                    "caller {} got no right answer in the last phase ({label})",
                    caller_name(j)
                )
            });
        }
        rows
    }
}

/// A bad call, with its caller's name.
fn describe(call: &Call) -> String {
    format!(
        "{:?}: {} fib({}) at {:.2}s took {:.2}s (budget {:.0}s): {}",
        call.outcome,
        caller_name(call.caller),
        call.n,
        secs(call.at),
        secs(call.elapsed),
        secs(call.budget),
        call.detail
    )
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
