//! Scenarios 2 and 3: `kill -9` of a node's Erlang VM under load (`scripts/cluster.sh
//! kill-node`: no clean close, the node's sockets reset by the kernel), started again later.
//!
//! 2. The node hosting the queue's leader: a new leader is elected on a surviving node, the
//!    server on the lost node reconnects to another node, the callers on it move too; every
//!    call is answered right (a call whose own deadline passed during the loss would be lost:
//!    there must be none).
//! 3. A node that is not the leader's, with callers connected to it (caller `c<i>` and
//!    `b<i>` start at node i): library caller `c<i>` must be connected to a surviving node
//!    afterwards (its client recovered by itself: `list_connections` shows its client
//!    properties) and its calls, re-sent, answered right.

use super::nodes::{leader, list_connections, ports_of, Cluster};
use super::run::Run;
use super::{caller_information, caller_name, ScenarioResult, TAIL};
use crate::common::secs;
use rpc_client::testing;
use std::time::Duration;

/// Calls go on this long after the kill before the node is started again.
const AFTER_KILL: Duration = Duration::from_secs(5);

pub fn leaders_node(cluster: &Cluster, title: &str) -> ScenarioResult {
    let mut run = Run::start(cluster, "kill-leader", "kill -9 of the leader's node");
    let (node, name) = leader(run.q()).unwrap_or_else(|e| panic!("{e}"));
    let moved = Vec::new();
    after_kill(cluster, &mut run, node, &name, true, &moved);
    let (rows, checks) = run.finish(cluster, title);
    ScenarioResult::Ran(rows, checks)
}

pub fn callers_node(cluster: &Cluster, title: &str) -> ScenarioResult {
    let mut run = Run::start(cluster, "kill-callers-node", "kill -9 of c<i>'s node");
    let (leader_node, _) = leader(run.q()).unwrap_or_else(|e| panic!("{e}"));
    // The node after the leader's: not the leader's, and callers c<i> and b<i> start there.
    let node = leader_node % cluster.brokers.len() + 1;
    let name = format!("rpc{node}@localhost");
    // The library callers connected to it now (c<node>, unless its client moved before).
    let port = cluster.ports[node - 1];
    let connections = list_connections(node).unwrap_or_else(|e| panic!("{e}"));
    let on_node: Vec<usize> = (0..super::LIBRARY_CALLERS)
        .filter(|&j| ports_of(&connections, &caller_information(j)) == [port])
        .collect();
    run.checks.check(!on_node.is_empty(), || {
        format!("no library caller is connected to node {node} (port {port}) before the kill")
    });
    run.checks.note(format!(
        "library callers on node {node} ({name}) before the kill: {}; rpc-client connections \
         there: {}",
        on_node
            .iter()
            .map(|&j| caller_name(j))
            .collect::<Vec<_>>()
            .join(" "),
        ports_of(&connections, &super::binary_information())
            .iter()
            .filter(|&&p| p == port)
            .count()
    ));
    after_kill(cluster, &mut run, node, &name, false, &on_node);
    let (rows, checks) = run.finish(cluster, title);
    ScenarioResult::Ran(rows, checks)
}

/// Kills node `node` (in the current phase), then checks: 3 consumers again, a new leader
/// (when `was_leader`), the library callers of `moved` each answered right after the kill,
/// everyone on a surviving node; starts the node again and ends with [`TAIL`] on the whole
/// cluster.
fn after_kill(
    cluster: &Cluster,
    run: &mut Run,
    node: usize,
    name: &str,
    was_leader: bool,
    moved: &[usize],
) {
    let q = run.q().to_string();
    let before = run.answers_by_caller();
    let kill_at = run.now();
    match run.node.kill(node) {
        Ok(took) => run.checks.note(format!(
            "killed node {node} ({name}{}) at {:.1}s in {:.1}s",
            if was_leader {
                ", the queue's leader"
            } else {
                ""
            },
            secs(kill_at),
            secs(took)
        )),
        Err(err) => panic!("{err}"),
    }
    run.phase(format!("after the kill of node {node}"));
    run.await_reconsume(node, kill_at);
    if was_leader {
        let mut new_leader = Err(String::from("not asked yet"));
        let every = Duration::from_millis(500); // each question starts a rabbitmqctl
        let _ = testing::poll_until("a new leader", Duration::from_secs(20), every, || {
            new_leader = leader(&q);
            Ok(matches!(new_leader, Ok((i, _)) if i != node))
        });
        match new_leader {
            Ok((i, name)) if i != node => run.checks.note(format!("new leader: {name}")),
            Ok((_, name)) => run
                .checks
                .check(false, || format!("the leader is still {name}")),
            Err(err) => run.checks.check(false, || format!("no new leader: {err}")),
        }
    }
    // Every caller, those that were on the lost node too, is answered right again.
    let waited = testing::wait_until(
        "every caller to be answered right after the kill",
        Duration::from_secs(30),
        || {
            let now = run.answers_by_caller();
            Ok(now.iter().zip(&before).all(|(now, before)| now > before))
        },
    );
    match waited {
        Ok(_) => {
            let after = run.now().saturating_sub(kill_at);
            run.checks.note(format!(
                "every caller answered right again {:.1}s after the kill",
                secs(after)
            ));
        }
        Err(err) => {
            let now = run.answers_by_caller();
            run.checks.check(false, || {
                format!("{err}: right answers per caller before the kill {before:?}, now {now:?}")
            });
        }
    }
    run.run_until(kill_at + AFTER_KILL);
    let via = cluster.other_than(node);
    run.check_placement(cluster, via, Some(node));
    for &j in moved {
        run.checks.note(format!(
            "{} was on node {node}; recovered, see its placement above",
            caller_name(j)
        ));
    }
    run.restart_node(cluster, node);
    run.phase("after the restart");
    let end = run.now() + TAIL;
    run.run_until(end);
}
