#!/usr/bin/env bash
# A local three-node RabbitMQ cluster beside the machine's own broker, to run
# rpc-server and rpc-client against a cluster and quorum queues.
#   scripts/cluster.sh up            start the nodes, cluster them (idempotent)
#   scripts/cluster.sh down          stop the nodes, remove all cluster state
#   scripts/cluster.sh status        exit 0 if every node runs, answers AMQP and is clustered
#   scripts/cluster.sh uris          print the nodes' AMQP URIs, comma-separated (for RPC_URIS)
#   scripts/cluster.sh stop-node I [--app]   stop node I (with --app: only its RabbitMQ app)
#   scripts/cluster.sh start-node I  start node I (or its app) again
#   scripts/cluster.sh kill-node I   SIGKILL node I's Erlang VM (no clean stop), wait until gone
#   scripts/cluster.sh cut-node I    partition: cut node I's Erlang distribution links to the
#                                    other nodes (iptables rules on loopback; root, iptables and
#                                    a cgroup2 mount needed); its AMQP port stays reachable
#   scripts/cluster.sh heal          remove the cut (also done by down)
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
# per node, default 1GiB), CLUSTER_NET_TICKTIME (Erlang's net_ticktime, seconds, default 10: a
# cut-off peer is noticed within 1.25 times that), CLUSTER_ERL_ARGS (extra VM flags, default "+S 1:1": one scheduler
# per node, to share the machine), RABBITMQ_BIN (default /usr/lib/rabbitmq/bin).
set -euo pipefail
NODE_WAIT=${CLUSTER_WAIT:-120}
NODE_STOP_WAIT=${CLUSTER_STOP_WAIT:-60}
NODE_ERL_ARGS=${CLUSTER_ERL_ARGS-+S 1:1}
# shellcheck source=scripts/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/node.sh"

usage() { die "usage: $PROG up | down | status | uris | stop-node I [--app] | start-node I | kill-node I | cut-node I | heal | leader QUEUE [VHOST] | ctl I ARGS..."; }

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
json_nodes() { sed -n "s/.*\"$2\":\[\([^]]*\)\].*/\1/p" <<<"$1" | tr -d '"' | tr ',' '\n' | sort | paste -sd ' ' -; }

# The running cluster members as seen by the selected node (space-separated), or fails.
running_nodes() { local json && json=$(cluster_json) && [[ -n $json ]] && json_nodes "$json" running_nodes; }

start_app() {
    msg "starting the RabbitMQ app on $NODE"
    node_ctl "$NODE_WAIT" -q start_app >/dev/null || die "rabbitmqctl start_app failed on $NODE"
}

cmd_up() {
    local i t0=$SECONDS deadline json members running out started=
    local -a to_start=()
    for ((i = 1; i <= N; i++)); do
        sel "$i"
        if node_pid >/dev/null; then
            # Running VM; start its app if it was stopped (stop-node I --app).
            ! node_amqp_up && [[ $(node_app_state) == stopped ]] && start_app && started=1
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
                "raft.wal_max_size_bytes = 64000000" \
                "# A node cut off from the majority pauses (stops its app) until it sees it again." \
                "cluster_partition_handling = pause_minority"
        # A peer that stops answering is down after 7.5-12.5 s (the default, 60 s, would let a
        # short partition go unnoticed).
        [[ -s $NODE_HOST_DIR/advanced.config ]] ||
            printf '%s\n' "[{kernel, [{net_ticktime, ${CLUSTER_NET_TICKTIME:-10}}]}]." >"$NODE_HOST_DIR/advanced.config"
        node_start
        started=1
    done
    deadline=$((SECONDS + NODE_WAIT))
    for ((i = 1; i <= N; i++)); do sel "$i" && node_wait "$deadline"; done

    # Join every other node to node 1, unless node 1 already counts it as a member.
    if ((N > 1)); then
        sel 1
        # Each try may take 30 s on a busy machine (the first after a boot is the slowest).
        until json=$(cluster_json) && [[ -n $json ]]; do
            ((SECONDS < deadline)) || die "rabbitmqctl cluster_status failed on $NODE until the deadline (${NODE_WAIT}s)"
            sleep 1
        done
        members=" $(json_nodes "$json" disk_nodes) $(json_nodes "$json" ram_nodes) "
        for ((i = 2; i <= N; i++)); do
            sel "$i"
            [[ $members == *" $NODE "* ]] && continue
            msg "joining $NODE to $(name 1)"
            node_ctl 60 -q stop_app >/dev/null || die "rabbitmqctl stop_app failed on $NODE"
            # Its output only if it fails: a join that works logs "[error] Failed to create a
            # tracked connection table for node ...: node_not_running" (this node's app is
            # stopped while it joins; the tables are made when the app starts).
            out=$(node_ctl 60 -q join_cluster "$(name 1)" 2>&1) ||
                die "rabbitmqctl join_cluster $(name 1) failed on $NODE: $out"
            start_app
        done
    fi

    # Wait until node 1 sees every node running.
    sel 1
    until running=$(running_nodes) && [[ $(wc -w <<<"$running") -eq $N ]]; do
        ((SECONDS < deadline)) || die "the cluster did not reach $N running nodes within ${NODE_WAIT}s (running: ${running:-?}); see '$PROG status' and the logs in $CLUSTER_DIR/<node>/log/"
        sleep 1
    done
    [[ -z $started ]] || started="up in $((SECONDS - t0))s"
    msg "cluster ${started:-already up}: $N running nodes ($running)"
    print_uris
}

print_uris() {
    local i
    build_release # once here: xtask in the $(...) below would check the build per node
    msg "AMQP URIs (guest may only log in from localhost):"
    for ((i = 1; i <= N; i++)); do sel "$i" && printf '  %s   # %s\n' "$(node_uri | xtask mask-uri)" "$NODE"; done
    printf "  RPC_URIS=\"\$(scripts/cluster.sh uris)\" scripts/start-servers.sh %s -- --queue-type quorum\n" "$N"
}

cmd_uris() {
    local i out=
    for ((i = 1; i <= N; i++)); do sel "$i" && out+=${out:+,}$(node_uri); done
    printf '%s\n' "$out"
}

cmd_down() {
    local i t0=$SECONDS failed=0
    [[ ! -e $CUT_STATE ]] || cmd_heal
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
    for i in "${!jobs[@]}"; do wait "${jobs[$i]}" || { warn "could not stop $(name "$i")"; failed=1; }; done
    ((failed == 0)) || die "some nodes are still running; not removing $CLUSTER_DIR"
    rm -rf "$CLUSTER_DIR"
    msg "cluster down in $((SECONDS - t0))s; removed $CLUSTER_DIR"
}

cmd_status() {
    local i pid ok=0 line json members running
    [[ -d $CLUSTER_DIR ]] || msg "no cluster state in $CLUSTER_DIR (run '$PROG up')"
    for ((i = 1; i <= N; i++)); do
        sel "$i"
        pid=$(node_pid) || { printf '%s: not running\n' "$NODE"; ok=1; continue; }
        line="$NODE: VM running (pid $pid), AMQP $NODE_HOST:$NODE_PORT answering"
        node_amqp_up || { line="${line% answering} NOT answering (RabbitMQ app $(node_app_state || echo '?'))"; ok=1; }
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
    ((ok != 0)) || { msg "all $N nodes up and clustered"; print_uris; return 0; }
    msg "the cluster is not (fully) up"
    return 1
}

# node_index I: select node I; dies unless it is 1..N with state.
node_index() {
    { [[ ${1:-} =~ ^[1-9][0-9]*$ ]] && (($1 <= N)); } || die "node index must be 1..$N, got '${1:-}'"
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
    ! node_amqp_up || { msg "$NODE is already running"; return 0; }
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

cmd_kill_node() {
    local pid deadline
    node_index "$1"
    pid=$(node_pid) || { msg "$NODE is not running"; return 0; }
    msg "killing $NODE (SIGKILL to its VM, pid $pid)"
    kill -KILL "$pid"
    deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "$NODE (pid $pid) still runs 10s after SIGKILL"; sleep 0.1
    done
    msg "$NODE killed"
}

# A partition: the node's distribution links cut by iptables rules on loopback (all nodes share
# 127.0.0.1, so ports tell the links apart). Chain CUT_CHAIN in OUTPUT drops: everything to and
# from the node's distribution port (links it accepted, the CLI's too); the links it opened to
# the other nodes' distribution ports (their ephemeral ports, from ss); and any new link it
# opens to them: its VM is moved to a cgroup of its own, which iptables' cgroup match names
# (new sockets belong to it). Its AMQP port is not touched: clients see what the node does.
CUT_CHAIN=RABBIT_RPC_CUT
CUT_STATE=$CLUSTER_DIR/cut

# The cgroup2 hierarchy (unified, or hybrid's /sys/fs/cgroup/unified), or fails.
cgroup2_root() {
    local dir
    for dir in /sys/fs/cgroup /sys/fs/cgroup/unified; do
        [[ $(stat -fc %T "$dir" 2>/dev/null) == cgroup2fs ]] && { printf '%s\n' "$dir"; return 0; }
    done
    return 1
}

cmd_cut_node() {
    local pid root cgroup i dist others=() line local_port peer_port
    node_index "$1"
    [[ ! -e $CUT_STATE ]] || die "a cut is in place already ($(<"$CUT_STATE")); run '$PROG heal' first"
    # What this machine lacks is a skip (77), before anything is changed.
    ((EUID == 0)) || skip "cut-node needs root (iptables)"
    command -v iptables >/dev/null || skip "cut-node needs iptables (apt-get install iptables)"
    command -v ss >/dev/null || skip "cut-node needs ss (apt-get install iproute2)"
    root=$(cgroup2_root) || skip "cut-node needs a cgroup2 mount (/sys/fs/cgroup or /sys/fs/cgroup/unified)"
    iptables -S OUTPUT >/dev/null 2>&1 || skip "cut-node: iptables cannot read the OUTPUT chain here: $(iptables -S OUTPUT 2>&1 | head -n 1)"
    pid=$(node_pid) || die "$NODE is not running"
    dist=$NODE_DIST
    for ((i = 1; i <= N; i++)); do
        ((i == $1)) || others+=($((PORTS[i - 1] + 20000)))
    done
    cgroup=rabbit-rpc-cut-${NODE%@*}
    printf '%s %s %s\n' "$1" "$pid" "$root/$cgroup" >"$CUT_STATE"
    mkdir -p "$root/$cgroup"
    echo "$pid" >"$root/$cgroup/cgroup.procs" || die "cannot move $NODE (pid $pid) to cgroup $root/$cgroup"
    iptables -N "$CUT_CHAIN" 2>/dev/null || iptables -F "$CUT_CHAIN"
    iptables -A "$CUT_CHAIN" -p tcp --dport "$dist" -j DROP
    iptables -A "$CUT_CHAIN" -p tcp --sport "$dist" -j DROP
    iptables -A "$CUT_CHAIN" -p tcp -m multiport --dports "$(IFS=,; echo "${others[*]}")" \
        -m cgroup --path "$cgroup" -j DROP
    # The links it opened before the move (their sockets are in its old cgroup).
    while read -r line; do
        [[ $line == *"pid=$pid,"* ]] || continue
        read -r _ _ local_port peer_port _ <<<"$line"
        local_port=${local_port##*:} peer_port=${peer_port##*:}
        [[ " ${others[*]} " == *" $peer_port "* ]] || continue
        iptables -A "$CUT_CHAIN" -p tcp --sport "$local_port" --dport "$peer_port" -j DROP
        iptables -A "$CUT_CHAIN" -p tcp --sport "$peer_port" --dport "$local_port" -j DROP
    done < <(ss -tnpH state established)
    iptables -C OUTPUT -o lo -j "$CUT_CHAIN" 2>/dev/null || iptables -I OUTPUT -o lo -j "$CUT_CHAIN"
    msg "cut $NODE off from the other nodes ($(iptables -S "$CUT_CHAIN" | grep -c DROP) iptables rules in chain $CUT_CHAIN); '$PROG heal' removes them"
}

cmd_heal() {
    local index pid cgroup root
    [[ ! -e $CUT_STATE ]] || read -r index pid cgroup <"$CUT_STATE"
    if command -v iptables >/dev/null; then
        while iptables -D OUTPUT -o lo -j "$CUT_CHAIN" 2>/dev/null; do :; done
        if iptables -S "$CUT_CHAIN" >/dev/null 2>&1; then
            iptables -F "$CUT_CHAIN"
            iptables -X "$CUT_CHAIN"
        fi
    fi
    if [[ -n ${cgroup:-} && -d $cgroup ]]; then
        root=${cgroup%/*}
        # Back to the root cgroup (only a live process can move; an empty cgroup can go).
        if [[ -n ${pid:-} ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid" >"$root/cgroup.procs" || true; fi
        rmdir "$cgroup" 2>/dev/null || warn "could not remove cgroup $cgroup (still in use?)"
    fi
    rm -f "$CUT_STATE"
    msg "no cut in place${index:+ (healed node $index)}"
}

cmd_leader() {
    local queue=$1 vhost=${2:-/} i rows row type leader
    for ((i = 1; i <= N; i++)); do sel "$i" && node_amqp_up && break; done
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
    kill-node) [[ $# -eq 1 ]] || usage; cmd_kill_node "$1" ;;
    cut-node) [[ $# -eq 1 ]] || usage; cmd_cut_node "$1" ;;
    heal) [[ $# -eq 0 ]] || usage; cmd_heal ;;
    leader) [[ $# -ge 1 && $# -le 2 ]] || usage; cmd_leader "$@" ;;
    ctl) [[ $# -ge 2 ]] || usage; node_index "$1"; shift; node_ctl "$NODE_STOP_WAIT" "$@" ;;
    *) usage ;;
esac
