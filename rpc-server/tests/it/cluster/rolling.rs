//! Scenario 1, a rolling restart: each node in turn stopped (`scripts/cluster.sh stop-node`,
//! a clean `rabbitmqctl stop`) and started again, the next one only once the cluster is whole
//! again (every node answers AMQP, the queue has all its members online). Every call must be
//! answered right: clients and servers on a stopped node move to another node, their calls
//! re-sent.

use super::nodes::Cluster;
use super::run::Run;
use super::{ScenarioResult, SERVERS, TAIL};
use crate::common::secs;
use rpc_client::testing;
use std::time::Duration;

pub fn run(cluster: &Cluster, title: &str) -> ScenarioResult {
    let nodes = cluster.brokers.len();
    let mut run = Run::start(cluster, "rolling", "stop-node 1");
    for node in 1..=nodes {
        if node > 1 {
            run.phase(format!("stop-node {node}"));
        }
        match run.node.stop(node) {
            Ok(took) => run
                .checks
                .note(format!("node {node} stopped in {:.1}s", secs(took))),
            Err(err) => {
                run.checks.check(false, || err);
                break;
            }
        }
        // The servers all consume again, through the other nodes.
        let q = run.q().to_string();
        let others = cluster.without(node);
        match testing::wait_for_consumers(&others, &q, SERVERS as u32, Duration::from_secs(30)) {
            Ok(waited) => run.checks.note(format!(
                "{SERVERS} consumers again {:.1}s after node {node} stopped",
                secs(waited)
            )),
            Err(err) => run.checks.check(false, || err.to_string()),
        }
        if !run.restart_node(cluster, node) {
            break;
        }
    }
    run.phase("after the restarts");
    let end = run.now() + TAIL;
    run.run_until(end);
    run.check_placement(cluster, 1, None);
    let (rows, checks) = run.finish(cluster, title);
    ScenarioResult::Ran(rows, checks)
}
