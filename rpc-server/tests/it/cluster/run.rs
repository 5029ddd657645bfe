//! [`Run`]: one scenario's queue, servers and callers, its phases and checks, and its report.

use super::nodes::{list_connections, ports_of, Cluster};
use super::{
    binary_information, caller_information, caller_n, caller_name, client_binary, log_message,
    rotated, server_information, CALLERS, CALL_TIMEOUT, LIBRARY_CALLERS, NODE_BACK, PACE, SERVERS,
    WARM_UP,
};
use crate::common::broker::NodeGuard;
use crate::common::caller::{Binary, Caller, EARLIER};
use crate::common::callers::{CallerReport, Callers};
use crate::common::load::{print_table, Call, Checks, Outcome, Row, Tally};
use crate::common::server::{await_consumers, stop_servers, ServerProc};
use crate::common::{expected, fresh_log_dir, secs};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{BrokerOptions, ClientOptions, ReplyQueue};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

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

    /// Prints the scenario's table (a row per phase and per kind of caller, and the total), its
    /// errors and bad calls; notes where the answers came from and checks the calls. Its rows,
    /// the total first.
    fn report(&mut self, title: &str, done: &CallerReport) -> Vec<Row> {
        let mut rows = self.phase_rows(done);
        let calls = &done.calls;
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
        print_errors(calls);
        self.note_spread(done);
        self.check_calls(calls, total);
        rows
    }

    /// A row per phase, the warm-up first.
    fn phase_rows(&self, done: &CallerReport) -> Vec<Row> {
        let calls = &done.calls;
        let mut rows = vec![Row::new(
            "  warm-up",
            Tally::of(in_phase(calls, 0)),
            Some(self.phases.first().map_or(done.stopped_at, |p| p.from)),
        )];
        for (i, phase) in self.phases.iter().enumerate() {
            let to = self.phases.get(i + 1).map_or(done.stopped_at, |p| p.from);
            rows.push(Row::new(
                format!("  {}", phase.label),
                Tally::of(in_phase(calls, i + 1)),
                Some(to.saturating_sub(phase.from)),
            ));
        }
        rows
    }

    /// Notes the right answers by server and the connections made per caller.
    fn note_spread(&mut self, done: &CallerReport) {
        let mut by_server: BTreeMap<String, u64> = BTreeMap::new();
        for call in done.calls.iter().filter(|c| c.outcome == Outcome::Right) {
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
    }

    /// The checks every scenario makes: no call ended in an error (set-up failures of
    /// rpc-client processes aside where allowed), none lost, hung or wrong; every caller was
    /// answered right in the last phase.
    fn check_calls(&mut self, calls: &[Call], total: Tally) {
        let setup_failures = if self.allow_setup_failures {
            calls.iter().filter(|c| is_setup_failure(c)).count() as u64
        } else {
            0
        };
        let checks = &mut self.checks;
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
            let right = in_phase(calls, last)
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
    }
}

/// The calls that started in phase `phase` (0: the warm-up).
fn in_phase(calls: &[Call], phase: usize) -> impl Iterator<Item = &Call> {
    calls.iter().filter(move |c| usize::from(c.phase) == phase)
}

/// Prints the errors by caller and message (the first 20), then the calls that went badly
/// (the first 20).
fn print_errors(calls: &[Call]) {
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
