#!/usr/bin/env bash
# A local three-node RabbitMQ cluster beside the machine's own broker, to run
# rpc-server and rpc-client against a cluster and quorum queues.
#   scripts/cluster.sh up            start the nodes, cluster them (idempotent)
#   scripts/cluster.sh down          stop the nodes, remove all cluster state
#   scripts/cluster.sh status        exit 0 if every node runs, answers AMQP and is clustered
#   scripts/cluster.sh uris          print the nodes' AMQP URIs, comma-separated (for RPC_URIS)
#   scripts/cluster.sh stop-node I [--app]   stop node I (with --app: only its RabbitMQ app)
#   scripts/cluster.sh start-node I  start node I (or its app) again
#   scripts/cluster.sh leader QUEUE [VHOST]  print the node hosting the quorum queue's leader
#   scripts/cluster.sh ctl I ARGS... rabbitmqctl ARGS against node I, with the cluster's cookie
#                                    (e.g. ctl 2 list_connections port client_properties)
# Node I is rpcI@localhost with AMQP on 127.0.0.1:PORT (the I-th of CLUSTER_PORTS, default
# 5681,5682,5683; one node per port) and Erlang distribution on 127.0.0.1:PORT+20000. The
# node lifecycle is scripts/node.sh's: each node keeps its config, data, logs and pid file in
# target/cluster/<node>/, and the nodes share the Erlang cookie target/cluster/home/.erlang.cookie.
# Uses the rabbitmq-server package's scripts (run scripts/broker.sh first to install it);
# needs no root. Env: CLUSTER_PORTS, CLUSTER_WAIT (seconds for up/start-node, default 120),
# CLUSTER_STOP_WAIT (seconds per stop, default 60), CLUSTER_MEMORY (memory high watermark
# per node, default 1GiB), CLUSTER_ERL_ARGS (extra VM flags, default "+S 1:1": one scheduler
# per node, to share the machine), RABBITMQ_BIN (default /usr/lib/rabbitmq/bin).
set -euo pipefail
NODE_WAIT=${CLUSTER_WAIT:-120}
NODE_STOP_WAIT=${CLUSTER_STOP_WAIT:-60}
NODE_ERL_ARGS=${CLUSTER_ERL_ARGS-+S 1:1}
# shellcheck source=scripts/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/node.sh"

usage() {
    die "usage: $PROG up | down | status | uris | stop-node I [--app] | start-node I | leader QUEUE [VHOST] | ctl I ARGS..."
}

CLUSTER_DIR=$REPO_ROOT/target/cluster
IFS=', ' read -r -a PORTS <<<"${CLUSTER_PORTS:-5681,5682,5683}"
((${#PORTS[@]} > 0)) || die "CLUSTER_PORTS is empty"
[[ $(printf '%s\n' "${PORTS[@]}" | sort | uniq -d) == '' ]] || die "CLUSTER_PORTS: a port is given twice"
N=${#PORTS[@]}

# sel I: node I (1-based) is the one the node_* functions act on (node.sh).
sel() { node_select "rpc$1" "${PORTS[$1 - 1]}" "$CLUSTER_DIR"; }
for ((i = 1; i <= N; i++)); do sel "$i"; done # checks every port
name() { printf 'rpc%s@localhost' "$1"; }

# cluster_json: the selected node's cluster_status as JSON (one line).
cluster_json() { node_ctl 30 -q cluster_status --formatter json 2>/dev/null | tr -d '\n'; }

# json_nodes JSON KEY: the node names in JSON's array KEY, space-separated.
json_nodes() {
    sed -n "s/.*\"$2\":\[\([^]]*\)\].*/\1/p" <<<"$1" | tr -d '"' | tr ',' '\n' | sort | paste -sd ' ' -
}

# The running cluster members as seen by the selected node (space-separated), or fails.
running_nodes() {
    local json
    json=$(cluster_json) && [[ -n $json ]] || return 1
    json_nodes "$json" running_nodes
}

start_app() {
    msg "starting the RabbitMQ app on $NODE"
    node_ctl "$NODE_WAIT" -q start_app >/dev/null || die "rabbitmqctl start_app failed on $NODE"
}

cmd_up() {
    local i t0=$SECONDS deadline json members running started=
    local -a to_start=()
    for ((i = 1; i <= N; i++)); do
        sel "$i"
        if node_pid >/dev/null; then
            # Running VM; start its app if it was stopped (stop-node I --app).
            if ! node_amqp_up && [[ $(node_app_state) == stopped ]]; then
                start_app
                started=1
            fi
            continue
        fi
        node_preflight # all checks before starting anything
        to_start+=("$i")
    done
    for i in "${to_start[@]+"${to_start[@]}"}"; do
        sel "$i"
        # A node with data keeps it (and its cluster membership) across down/up of its VM.
        [[ -d $NODE_DIR/mnesia ]] ||
            node_write_config "vm_memory_high_watermark.absolute = ${CLUSTER_MEMORY:-1GiB}" \
                "disk_free_limit.absolute = 1GB" "cluster_name = rpc-cluster" \
                "# Quorum queues keep their write-ahead log in memory up to this size (default 512 MB)." \
                "raft.wal_max_size_bytes = 64000000"
        node_start
        started=1
    done
    deadline=$((SECONDS + NODE_WAIT))
    for ((i = 1; i <= N; i++)); do
        sel "$i"
        node_wait "$deadline"
    done

    # Join every other node to node 1, unless node 1 already counts it as a member.
    if ((N > 1)); then
        sel 1
        json=$(cluster_json) || json=
        [[ -n $json ]] || die "rabbitmqctl cluster_status failed on $NODE"
        members=" $(json_nodes "$json" disk_nodes) $(json_nodes "$json" ram_nodes) "
        for ((i = 2; i <= N; i++)); do
            sel "$i"
            [[ $members == *" $NODE "* ]] && continue
            msg "joining $NODE to $(name 1)"
            node_ctl 60 -q stop_app >/dev/null || die "rabbitmqctl stop_app failed on $NODE"
            node_ctl 60 -q join_cluster "$(name 1)" >/dev/null ||
                die "rabbitmqctl join_cluster $(name 1) failed on $NODE"
            start_app
        done
    fi

    # Wait until node 1 sees every node running.
    sel 1
    until running=$(running_nodes) && [[ $(wc -w <<<"$running") -eq $N ]]; do
        ((SECONDS < deadline)) || die "the cluster did not reach $N running nodes within ${NODE_WAIT}s (running: ${running:-?}); see '$PROG status' and the logs in $CLUSTER_DIR/<node>/log/"
        sleep 1
    done
    if [[ -z $started ]]; then
        msg "cluster already up: $N running nodes ($running)"
    else
        msg "cluster up in $((SECONDS - t0))s: $N running nodes ($running)"
    fi
    print_uris
}

print_uris() {
    local i
    msg "AMQP URIs (guest may only log in from localhost):"
    for ((i = 1; i <= N; i++)); do
        sel "$i"
        printf '  %s   # %s\n' "$(node_uri)" "$NODE"
    done
    printf '  RPC_URIS=%s scripts/start-servers.sh %s -- --queue-type quorum\n' "$(cmd_uris)" "$N"
}

cmd_uris() {
    local i out=
    for ((i = 1; i <= N; i++)); do
        sel "$i"
        out+=${out:+,}$(node_uri)
    done
    printf '%s\n' "$out"
}

cmd_down() {
    local i t0=$SECONDS failed=0
    if [[ ! -d $CLUSTER_DIR ]]; then
        msg "no cluster state in $CLUSTER_DIR; nothing to stop"
        return 0
    fi
    local -A jobs=()
    for ((i = 1; i <= N; i++)); do
        sel "$i"
        if node_pid >/dev/null || node_epmd_has; then
            msg "stopping $NODE"
            node_stop &
            jobs[$i]=$!
        fi
    done
    for i in "${!jobs[@]}"; do
        wait "${jobs[$i]}" || {
            warn "could not stop $(name "$i")"
            failed=1
        }
    done
    ((failed == 0)) || die "some nodes are still running; not removing $CLUSTER_DIR"
    rm -rf "$CLUSTER_DIR"
    msg "cluster down in $((SECONDS - t0))s; removed $CLUSTER_DIR"
}

cmd_status() {
    local i pid ok=0 line json members running
    [[ -d $CLUSTER_DIR ]] || msg "no cluster state in $CLUSTER_DIR (run '$PROG up')"
    for ((i = 1; i <= N; i++)); do
        sel "$i"
        line=$NODE
        if ! pid=$(node_pid); then
            printf '%s: not running\n' "$line"
            ok=1
            continue
        fi
        line+=": VM running (pid $pid), AMQP $NODE_HOST:$NODE_PORT "
        if node_amqp_up; then
            line+="answering"
        else
            line+="NOT answering (RabbitMQ app $(node_app_state || echo '?'))"
            ok=1
        fi
        if json=$(cluster_json) && [[ -n $json ]]; then
            members=$(json_nodes "$json" disk_nodes)
            running=$(json_nodes "$json" running_nodes)
            line+=", cluster members: ${members:-none}; running: ${running:-none}"
            [[ $(wc -w <<<"$members") -eq $N && $(wc -w <<<"$running") -eq $N ]] || ok=1
        else
            line+=", rabbitmqctl cluster_status failed"
            ok=1
        fi
        printf '%s\n' "$line"
    done
    if ((ok == 0)); then
        msg "all $N nodes up and clustered"
        print_uris
    else
        msg "the cluster is not (fully) up"
    fi
    return "$ok"
}

# node_index I: select node I; dies unless it is 1..N with state.
node_index() {
    if ! [[ ${1:-} =~ ^[1-9][0-9]*$ ]] || (($1 > N)); then
        die "node index must be 1..$N, got '${1:-}'"
    fi
    sel "$1"
    [[ -d $NODE_DIR ]] || die "$NODE has no state in $CLUSTER_DIR; run '$PROG up' first"
}

cmd_stop_node() {
    local mode=${2:-} t0=$SECONDS
    node_index "$1"
    [[ -z $mode || $mode == --app ]] || usage
    if ! node_pid >/dev/null && ! node_epmd_has; then
        msg "$NODE is not running"
        return 0
    elif [[ $mode == --app ]]; then
        msg "stopping the RabbitMQ app on $NODE (its VM stays up)"
        node_ctl "$NODE_STOP_WAIT" -q stop_app >/dev/null || die "rabbitmqctl stop_app failed on $NODE"
    else
        msg "stopping $NODE"
        node_stop || die "could not stop $NODE"
    fi
    msg "$NODE stopped in $((SECONDS - t0))s"
}

cmd_start_node() {
    local t0=$SECONDS running
    node_index "$1"
    if node_amqp_up; then
        msg "$NODE is already running"
        return 0
    fi
    if node_pid >/dev/null; then
        [[ $(node_app_state) == stopped ]] ||
            die "$NODE runs but does not answer AMQP and its app is not stopped (booting?); see '$PROG status'"
        start_app
    else
        node_start
    fi
    node_wait $((SECONDS + NODE_WAIT))
    running=$(running_nodes) || running='?'
    msg "$NODE up in $((SECONDS - t0))s; running cluster nodes: $running"
}

cmd_leader() {
    local queue=$1 vhost=${2:-/} i rows row type leader
    for ((i = 1; i <= N; i++)); do
        sel "$i"
        node_amqp_up && break
    done
    ((i <= N)) || die "no cluster node answers AMQP; run '$PROG up'"
    rows=$(node_ctl 30 -q list_queues -p "$vhost" --no-table-headers name type leader) ||
        die "rabbitmqctl list_queues failed on $NODE"
    row=$(awk -F'\t' -v q="$queue" '$1 == q' <<<"$rows")
    [[ -n $row ]] || die "no queue '$queue' in vhost '$vhost'"
    IFS=$'\t' read -r _ type leader <<<"$row"
    [[ $type == quorum ]] || die "'$queue' is a $type queue, not a quorum queue: it has no leader"
    [[ -n $leader ]] || die "quorum queue '$queue' has no leader right now (quorum lost?)"
    printf '%s\n' "$leader"
}

[[ $# -gt 0 ]] || usage
command=$1
shift
case $command in
    -h | --help | help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
esac
# A missing RabbitMQ is an error here (node_installed would make it a skip).
(node_installed) || die "cannot run RabbitMQ nodes here (see above)"
case $command in
    up) [[ $# -eq 0 ]] || usage; cmd_up ;;
    down) [[ $# -eq 0 ]] || usage; cmd_down ;;
    status) [[ $# -eq 0 ]] || usage; cmd_status ;;
    uris) [[ $# -eq 0 ]] || usage; cmd_uris ;;
    stop-node) [[ $# -ge 1 && $# -le 2 ]] || usage; cmd_stop_node "$@" ;;
    start-node) [[ $# -eq 1 ]] || usage; cmd_start_node "$1" ;;
    leader) [[ $# -ge 1 && $# -le 2 ]] || usage; cmd_leader "$@" ;;
    ctl) [[ $# -ge 2 ]] || usage; node_index "$1"; shift; node_ctl "$NODE_STOP_WAIT" "$@" ;;
    *) usage ;;
esac
