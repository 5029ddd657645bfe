//! The cluster of `CLUSTER_URIS` ([`Cluster`]) and what its nodes say: the queue's leader and
//! members, the connections by port.

use super::CONNECT_TIMEOUT;
use crate::common::broker::{cluster_sh, Ctl};
use rpc_client::testing::{self, Admin};
use rpc_client::BrokerOptions;
use std::time::{Duration, Instant};

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
    pub fn from_env() -> Cluster {
        let list = std::env::var("CLUSTER_URIS").unwrap_or_else(|_| {
            panic!(
                "CLUSTER_URIS is not set: this test needs the cluster of scripts/cluster.sh; run \
                 scripts/cluster-test.sh, or scripts/cluster.sh up and then \
                 CLUSTER_URIS=$(scripts/cluster.sh uris) cargo test --release -p rpc-server \
                 --test it cluster:: -- --ignored --nocapture"
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
