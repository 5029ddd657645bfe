#!/usr/bin/env bash
# Cluster test (issues 5 and 16): scenarios on a local three-node cluster under load.
#   scripts/cluster-test.sh
#   CLUSTER_SCENARIOS=2 scripts/cluster-test.sh     only scenario 2 (numbers, comma-separated)
# Builds the release binaries, starts the three nodes of scripts/cluster.sh (rpc1..3@localhost,
# AMQP on 127.0.0.1:5681-5683; the machine's own broker is not touched) and runs the ignored
# test rpc-server/tests/it/cluster/ (its documentation lists the scenarios and their checks).
# At exit, even after a failure or an interrupt, the cluster is taken down and target/cluster/
# removed. Server logs stay in target/tmp/cluster/<scenario>/, after a failure the nodes' logs
# in target/tmp/cluster/nodes/. Exits with the test's status; 77 (skipped) if no RabbitMQ node
# can run here. Env: CLUSTER_SCENARIOS; CLUSTER_KEEP=1 leaves the cluster up (scripts/cluster.sh
# down stops it); those of scripts/cluster.sh (CLUSTER_PORTS, CLUSTER_WAIT, RABBITMQ_BIN, ...).
set -euo pipefail
# shellcheck source=scripts/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/node.sh"

[[ $# -eq 0 ]] || die "usage: $PROG   (takes no arguments)"
node_installed # a missing RabbitMQ is a skip here, not a failure as in scripts/cluster.sh
# The partition scenario cuts links with iptables; without it (no root) that scenario is skipped.
if ! command -v iptables >/dev/null 2>&1 && ((EUID == 0)); then
    apt_install iptables || warn "iptables could not be installed (see above): the partition scenario will be left out"
fi

# One run at a time: a second run would stop the first one's nodes.
one_run cluster-test

t0=$SECONDS
cleanup() {
    local rc=$? node
    trap - EXIT INT TERM
    if ((rc != 0)) && [[ -d target/cluster ]]; then # the nodes' logs outlive a failed test
        rm -rf target/tmp/cluster/nodes && mkdir -p target/tmp/cluster/nodes
        for node in target/cluster/rpc*@localhost; do [[ ! -d $node/log ]] || cp -r "$node/log" "target/tmp/cluster/nodes/${node##*/}"; done
        msg "the nodes' logs are in target/tmp/cluster/nodes/"
    fi
    if [[ ${CLUSTER_KEEP:-} == 1 ]]; then
        msg "CLUSTER_KEEP=1: leaving the cluster up (scripts/cluster.sh down stops it)"
    elif ! scripts/cluster.sh down; then
        warn "scripts/cluster.sh down failed; see scripts/cluster.sh status"
        ((rc != 0)) || rc=1
    fi
    ((rc != 0)) || msg "passed in $((SECONDS - t0))s"
    ((rc == 0)) || msg "FAILED (exit $rc) after $((SECONDS - t0))s; server logs in target/tmp/cluster/"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The scenarios run target/release/rpc-client.
build_release
scripts/cluster.sh up
uris=$(scripts/cluster.sh uris)
msg "running the cluster test (cargo test --release -p rpc-server --test it cluster::; scenarios ${CLUSTER_SCENARIOS:-all})"
CLUSTER_URIS=$uris cargo test --release -p rpc-server --test it cluster:: -- --ignored --nocapture
