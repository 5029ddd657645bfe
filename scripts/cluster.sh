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
# 5681,5682,5683; one node per port) and Erlang distribution on 127.0.0.1:PORT+20000. Each
# node keeps its config, data, logs and pid file in target/cluster/<node>/; the nodes and the
# rabbitmqctl calls here share the Erlang cookie target/cluster/home/.erlang.cookie (HOME
# points there), so the main broker (rabbit@localhost, 5672) and its cookie are untouched.
# Uses the rabbitmq-server package's scripts (run scripts/broker.sh first to install it);
# needs no root. Env: CLUSTER_PORTS, CLUSTER_WAIT (seconds for up/start-node, default 120),
# CLUSTER_STOP_WAIT (seconds per stop, default 60), CLUSTER_MEMORY (memory high watermark
# per node, default 1GiB), CLUSTER_ERL_ARGS (extra VM flags, default "+S 1:1": one scheduler
# per node, to share the machine), RABBITMQ_BIN (default /usr/lib/rabbitmq/bin).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    die "usage: $PROG up | down | status | uris | stop-node I [--app] | start-node I | leader QUEUE [VHOST] | ctl I ARGS..."
}

CLUSTER_DIR=$REPO_ROOT/target/cluster
COOKIE_HOME=$CLUSTER_DIR/home
ENV_FILE=$CLUSTER_DIR/rabbitmq-env.conf
HOST=127.0.0.1

IFS=', ' read -r -a PORTS <<<"${CLUSTER_PORTS:-5681,5682,5683}"
((${#PORTS[@]} > 0)) || die "CLUSTER_PORTS is empty"
declare -A seen=()
for p in "${PORTS[@]}"; do
    if ! [[ $p =~ ^[1-9][0-9]*$ ]] || ((p > 45535)); then
        die "CLUSTER_PORTS: '$p' is not a port number up to 45535 (the distribution port is port+20000)"
    fi
    [[ -z ${seen[$p]:-} ]] || die "CLUSTER_PORTS: port $p given twice"
    seen[$p]=1
done
unset seen p
N=${#PORTS[@]}

wait_secs=${CLUSTER_WAIT:-120}
stop_secs=${CLUSTER_STOP_WAIT:-60}
[[ $wait_secs =~ ^[0-9]+$ ]] || die "CLUSTER_WAIT must be a number of seconds, got '$wait_secs'"
[[ $stop_secs =~ ^[0-9]+$ ]] || die "CLUSTER_STOP_WAIT must be a number of seconds, got '$stop_secs'"

# Node I (1-based): name, ports, directory, pid file, URI.
node() { printf 'rpc%s@localhost' "$1"; }
amqp_port() { printf '%s' "${PORTS[$1 - 1]}"; }
dist_port() { printf '%s' $((PORTS[$1 - 1] + 20000)); }
node_dir() { printf '%s/%s' "$CLUSTER_DIR" "$(node "$1")"; }
pid_file() { printf '%s/rabbitmq.pid' "$(node_dir "$1")"; }
uri() { printf 'amqp://guest:guest@%s:%s' "$HOST" "$(amqp_port "$1")"; }

find_rabbitmq_bin() {
    RMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
    # Not /usr/sbin/rabbitmqctl: Debian's wrapper there switches to the rabbitmq user when
    # run as root, and with it to that user's HOME and Erlang cookie (the main broker's).
    [[ -x $RMQ_BIN/rabbitmq-server && -x $RMQ_BIN/rabbitmqctl ]] ||
        die "no rabbitmq-server/rabbitmqctl in $RMQ_BIN; install RabbitMQ with scripts/broker.sh (Debian package) or set RABBITMQ_BIN"
    command -v erl >/dev/null 2>&1 || die "erl (Erlang) not found in PATH"
}

# The environment of every RabbitMQ command here: our HOME (cookie), no system
# rabbitmq-env.conf (it names the main broker's node), distribution on loopback.
rmq_env() {
    printf '%s\0' -u RABBITMQ_ERLANG_COOKIE -u RABBITMQ_NODENAME -u ERL_AFLAGS -u ERL_ZFLAGS \
        "HOME=$COOKIE_HOME" "RABBITMQ_CONF_ENV_FILE=$ENV_FILE" \
        ERL_EPMD_ADDRESS=127.0.0.1 'ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}' \
        LC_ALL=C.UTF-8
}
RMQ_ENV=()

# ctl SECS I ARGS...: rabbitmqctl against node I, killed after SECS seconds.
ctl() {
    local secs=$1 i=$2
    shift 2
    timeout "$secs" env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmqctl" -n "$(node "$i")" "$@" </dev/null
}

# Pid of node I's Erlang VM from its pid file, if that process is alive and is node I
# (its environment names the node: guards against a reused pid). Fails otherwise.
node_pid() {
    local f pid stat
    f=$(pid_file "$1")
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $stat == "$pid "*") "[!ZX]* ]] || return 1
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -xF "RABBITMQ_NODENAME=$(node "$1")" >/dev/null || return 1
    printf '%s\n' "$pid"
}

# Is node I's name registered with epmd (by any VM)?
epmd_has() {
    local name
    name=$(node "$1")
    name=${name%@*}
    epmd -names 2>/dev/null | grep "^name $name at port " >/dev/null
}

amqp_up() { amqp_probe "$HOST" "$(amqp_port "$1")" 2; }

# Boot state of the RabbitMQ app on node I: stopped, booting, ready or stopping.
app_state() { ctl 30 "$1" -q eval 'rabbit_boot_state:get().' 2>/dev/null; }

# cluster_json I: node I's cluster_status as JSON (one line).
cluster_json() { ctl 30 "$1" -q cluster_status --formatter json 2>/dev/null | tr -d '\n'; }

# json_nodes JSON KEY: the node names in JSON's array KEY, space-separated.
json_nodes() {
    sed -n "s/.*\"$2\":\[\([^]]*\)\].*/\1/p" <<<"$1" | tr -d '"' | tr ',' '\n' | sort | paste -sd ' ' -
}

# The log file of node I, and its last error lines.
node_log() { printf '%s/log/%s.log' "$(node_dir "$1")" "$(node "$1")"; }
show_log() {
    local f
    f=$(node_log "$1")
    for f in "$f" "$(node_dir "$1")/log/startup.log"; do
        [[ -s $f ]] || continue
        msg "--- last errors in $f:"
        { grep -E '\[(error|critical)\]' "$f" || tail -n 8 "$f"; } | tail -n 8 | sed 's/^/    /' >&2
    done
}

write_node_config() {
    local i=$1 dir
    dir=$(node_dir "$i")
    mkdir -p "$dir/log" "$dir/mnesia" "$dir/conf.d"
    cat >"$dir/rabbitmq.conf" <<EOF
# $(node "$i"), written by scripts/cluster.sh (the listener comes from RABBITMQ_NODE_IP_ADDRESS
# and RABBITMQ_NODE_PORT). Modest limits: several brokers share this machine.
vm_memory_high_watermark.absolute = ${CLUSTER_MEMORY:-1GiB}
disk_free_limit.absolute = 1GB
# Quorum queues keep their write-ahead log in memory up to this size (default 512 MB).
raft.wal_max_size_bytes = 64000000
cluster_name = rpc-cluster
log.file.level = info
EOF
    echo '[].' >"$dir/enabled_plugins"
}

# Creates target/cluster/{home/.erlang.cookie,rabbitmq-env.conf} if missing.
prepare_dir() {
    mkdir -p "$COOKIE_HOME"
    if [[ ! -s $COOKIE_HOME/.erlang.cookie ]]; then
        local cookie
        cookie=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n' | tr a-f A-F)
        (umask 077 && printf '%s' "$cookie" >"$COOKIE_HOME/.erlang.cookie")
        chmod 400 "$COOKIE_HOME/.erlang.cookie"
    fi
    [[ -f $ENV_FILE ]] || cat >"$ENV_FILE" <<'EOF'
# RABBITMQ_CONF_ENV_FILE of the nodes of scripts/cluster.sh, deliberately empty: it replaces
# /etc/rabbitmq/rabbitmq-env.conf, which configures the main broker (NODENAME=rabbit@localhost).
# The nodes' settings come from the environment scripts/cluster.sh starts them with.
EOF
}

# Dies unless node I (not running) can start: its name and ports must be free.
preflight() {
    local i=$1 port dport
    port=$(amqp_port "$i")
    dport=$(dist_port "$i")
    if epmd_has "$i"; then
        die "$(node "$i") is registered with epmd but is not the node recorded in $(node_dir "$i") (a leftover from an earlier run whose state was removed?); stop that VM first"
    fi
    if tcp_probe "$HOST" "$port" 1; then
        die "port $HOST:$port (AMQP of $(node "$i")) is in use by another process; pick other CLUSTER_PORTS"
    fi
    if tcp_probe "$HOST" "$dport" 1; then
        die "port $HOST:$dport (distribution of $(node "$i")) is in use by another process; pick other CLUSTER_PORTS"
    fi
}

# Start node I's VM detached; returns once the VM has written its pid file (early in
# boot, so that 'down' can always find it), while the node boots in the background.
start_vm() {
    local i=$1 dir port dport deadline
    dir=$(node_dir "$i")
    port=$(amqp_port "$i")
    dport=$(dist_port "$i")
    preflight "$i"
    rm -f "$(pid_file "$i")"
    env "${RMQ_ENV[@]}" \
        RABBITMQ_NODENAME="$(node "$i")" \
        RABBITMQ_NODE_IP_ADDRESS="$HOST" \
        RABBITMQ_NODE_PORT="$port" \
        RABBITMQ_DIST_PORT="$dport" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_CONFIG_FILES="$dir/conf.d/*.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_PID_FILE="$(pid_file "$i")" \
        ERL_CRASH_DUMP="$dir/log/erl_crash.dump" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${CLUSTER_ERL_ARGS-+S 1:1}" \
        "$RMQ_BIN/rabbitmq-server" -detached </dev/null >"$dir/log/startup.log" 2>&1 ||
        {
            show_log "$i"
            die "rabbitmq-server -detached failed for $(node "$i")"
        }
    deadline=$((SECONDS + 30))
    until node_pid "$i" >/dev/null; do
        if ((SECONDS >= deadline)); then
            show_log "$i"
            die "$(node "$i") wrote no pid file ($(pid_file "$i")) within 30s"
        fi
        sleep 0.2
    done
}

# wait_amqp DEADLINE I...: wait until each node I answers AMQP; dies (with its log)
# if one's VM exits or the deadline passes.
wait_amqp() {
    local deadline=$1 i started
    shift
    local -a pending=("$@")
    local -A alive=()
    started=$SECONDS
    while ((${#pending[@]} > 0)); do
        local -a still=()
        for i in "${pending[@]}"; do
            if amqp_up "$i"; then
                msg "$(node "$i") answers AMQP on $HOST:$(amqp_port "$i") (after $((SECONDS - started))s)"
                continue
            fi
            still+=("$i")
            # The VM writes its pid file early in boot; once seen alive, it must stay alive.
            if node_pid "$i" >/dev/null; then
                alive[$i]=1
            elif [[ -n ${alive[$i]:-} ]] || { ((SECONDS - started > 20)) && ! epmd_has "$i"; }; then
                show_log "$i"
                die "$(node "$i") is not running (its VM exited or never started)"
            fi
        done
        pending=("${still[@]+"${still[@]}"}")
        ((${#pending[@]} == 0)) && break
        if ((SECONDS >= deadline)); then
            for i in "${pending[@]}"; do show_log "$i"; done
            die "$(for i in "${pending[@]}"; do node "$i"; printf ' '; done)did not answer AMQP within ${wait_secs}s (raise CLUSTER_WAIT if the machine is just slow)"
        fi
        sleep 0.5
    done
}

# Node I's running cluster members as seen by node I (space-separated), or fails.
running_nodes() {
    local json
    json=$(cluster_json "$1") || return 1
    [[ -n $json ]] || return 1
    json_nodes "$json" running_nodes
}

cmd_up() {
    local i t0=$SECONDS deadline json members running
    prepare_dir
    local -a started=() to_start=()
    for ((i = 1; i <= N; i++)); do
        if node_pid "$i" >/dev/null; then
            # Running VM; start its app if it was stopped (stop-node I --app).
            if ! amqp_up "$i" && [[ $(app_state "$i") == stopped ]]; then
                msg "starting the RabbitMQ app on $(node "$i")"
                ctl "$wait_secs" "$i" -q start_app >/dev/null || die "rabbitmqctl start_app failed on $(node "$i")"
                started+=("$i")
            fi
            continue
        fi
        preflight "$i" # all checks before starting anything
        to_start+=("$i")
    done
    for i in "${to_start[@]+"${to_start[@]}"}"; do
        [[ -d $(node_dir "$i")/mnesia ]] || write_node_config "$i"
        msg "starting $(node "$i") (AMQP $HOST:$(amqp_port "$i"), distribution $HOST:$(dist_port "$i"))"
        start_vm "$i"
        started+=("$i")
    done
    deadline=$((SECONDS + wait_secs))
    local -a waiting=()
    for ((i = 1; i <= N; i++)); do amqp_up "$i" || waiting+=("$i"); done
    ((${#waiting[@]} == 0)) || wait_amqp "$deadline" "${waiting[@]}"

    # Join every other node to node 1, unless node 1 already counts it as a member.
    if ((N > 1)); then
        json=$(cluster_json 1) || json=
        [[ -n $json ]] || die "rabbitmqctl cluster_status failed on $(node 1)"
        members=" $(json_nodes "$json" disk_nodes) $(json_nodes "$json" ram_nodes) "
        for ((i = 2; i <= N; i++)); do
            [[ $members == *" $(node "$i") "* ]] && continue
            msg "joining $(node "$i") to $(node 1)"
            ctl 60 "$i" -q stop_app >/dev/null || die "rabbitmqctl stop_app failed on $(node "$i")"
            ctl 60 "$i" -q join_cluster "$(node 1)" >/dev/null ||
                die "rabbitmqctl join_cluster $(node 1) failed on $(node "$i")"
            ctl "$wait_secs" "$i" -q start_app >/dev/null || die "rabbitmqctl start_app failed on $(node "$i")"
        done
    fi

    # Wait until node 1 sees every node running.
    until running=$(running_nodes 1) && [[ $(wc -w <<<"$running") -eq $N ]]; do
        ((SECONDS < deadline)) || die "the cluster did not reach $N running nodes within ${wait_secs}s (running: ${running:-?}); see '$PROG status' and the logs in $CLUSTER_DIR/<node>/log/"
        sleep 1
    done
    if ((${#started[@]} == 0)); then
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
        printf '  %s   # %s\n' "$(uri "$i")" "$(node "$i")"
    done
    printf '  RPC_URIS=%s scripts/start-servers.sh %s -- --queue-type quorum\n' "$(cmd_uris)" "$N"
}

cmd_uris() {
    local i out=
    for ((i = 1; i <= N; i++)); do out+=${out:+,}$(uri "$i"); done
    printf '%s\n' "$out"
}

# stop_node I: rabbitmqctl stop (waits for the VM to exit), then TERM/KILL by pid file.
stop_node() {
    local i=$1 pid deadline
    pid=$(node_pid "$i") || pid=
    if [[ -z $pid ]] && ! epmd_has "$i"; then
        return 0
    fi
    if [[ -n $pid ]]; then
        ctl "$stop_secs" "$i" -q stop "$(pid_file "$i")" >/dev/null 2>&1 || true
    else
        # Registered with epmd but no pid file: try to stop it by name (ours if the cookie matches).
        ctl "$stop_secs" "$i" -q stop >/dev/null 2>&1 || true
    fi
    [[ -n $pid ]] || return 0
    node_pid "$i" >/dev/null || return 0
    warn "$(node "$i") (pid $pid) did not stop within ${stop_secs}s; sending SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while node_pid "$i" >/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if node_pid "$i" >/dev/null; then
        warn "$(node "$i") (pid $pid) still running; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while node_pid "$i" >/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    fi
    ! node_pid "$i" >/dev/null
}

cmd_down() {
    local i t0=$SECONDS failed=0
    if [[ ! -d $CLUSTER_DIR ]]; then
        msg "no cluster state in $CLUSTER_DIR; nothing to stop"
        return 0
    fi
    local -A jobs=()
    for ((i = 1; i <= N; i++)); do
        if node_pid "$i" >/dev/null || epmd_has "$i"; then
            msg "stopping $(node "$i")"
            stop_node "$i" &
            jobs[$i]=$!
        fi
    done
    for i in "${!jobs[@]}"; do
        wait "${jobs[$i]}" || {
            warn "could not stop $(node "$i")"
            failed=1
        }
    done
    ((failed == 0)) || die "some nodes are still running; not removing $CLUSTER_DIR"
    rm -rf "$CLUSTER_DIR"
    msg "cluster down in $((SECONDS - t0))s; removed $CLUSTER_DIR"
}

cmd_status() {
    local i pid ok=0 amqp running json members
    [[ -d $CLUSTER_DIR ]] || msg "no cluster state in $CLUSTER_DIR (run '$PROG up')"
    for ((i = 1; i <= N; i++)); do
        local line
        line=$(node "$i")
        if pid=$(node_pid "$i"); then
            line+=": VM running (pid $pid)"
        else
            line+=": not running"
            ok=1
            printf '%s\n' "$line"
            continue
        fi
        if amqp_up "$i"; then
            amqp="answering"
        else
            amqp="NOT answering (RabbitMQ app $(app_state "$i" || echo '?'))"
            ok=1
        fi
        line+=", AMQP $HOST:$(amqp_port "$i") $amqp"
        if json=$(cluster_json "$i") && [[ -n $json ]]; then
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

node_index() {
    if ! [[ ${1:-} =~ ^[1-9][0-9]*$ ]] || (($1 > N)); then
        die "node index must be 1..$N, got '${1:-}'"
    fi
    [[ -d $(node_dir "$1") ]] || die "$(node "$1") has no state in $CLUSTER_DIR; run '$PROG up' first"
}

cmd_stop_node() {
    local i=$1 mode=${2:-} t0=$SECONDS
    node_index "$i"
    case $mode in
        --app)
            amqp_up "$i" || node_pid "$i" >/dev/null || {
                msg "$(node "$i") is not running"
                return 0
            }
            msg "stopping the RabbitMQ app on $(node "$i") (its VM stays up)"
            ctl "$stop_secs" "$i" -q stop_app >/dev/null || die "rabbitmqctl stop_app failed on $(node "$i")"
            ;;
        '')
            node_pid "$i" >/dev/null || epmd_has "$i" || {
                msg "$(node "$i") is not running"
                return 0
            }
            msg "stopping $(node "$i")"
            stop_node "$i" || die "could not stop $(node "$i")"
            ;;
        *) usage ;;
    esac
    msg "$(node "$i") stopped in $((SECONDS - t0))s"
}

cmd_start_node() {
    local i=$1 t0=$SECONDS running
    node_index "$i"
    if amqp_up "$i"; then
        msg "$(node "$i") is already running"
        return 0
    fi
    if node_pid "$i" >/dev/null; then
        [[ $(app_state "$i") == stopped ]] ||
            die "$(node "$i") runs but does not answer AMQP and its app is not stopped (booting?); see '$PROG status'"
        msg "starting the RabbitMQ app on $(node "$i")"
        ctl "$wait_secs" "$i" -q start_app >/dev/null || die "rabbitmqctl start_app failed on $(node "$i")"
    else
        msg "starting $(node "$i")"
        start_vm "$i"
    fi
    wait_amqp $((SECONDS + wait_secs)) "$i"
    running=$(running_nodes "$i") || running='?'
    msg "$(node "$i") up in $((SECONDS - t0))s; running cluster nodes: $running"
}

cmd_leader() {
    local queue=$1 vhost=${2:-/} i rows row type leader
    for ((i = 1; i <= N; i++)); do amqp_up "$i" && break; done
    ((i <= N)) || die "no cluster node answers AMQP; run '$PROG up'"
    rows=$(ctl 30 "$i" -q list_queues -p "$vhost" --no-table-headers name type leader) ||
        die "rabbitmqctl list_queues failed on $(node "$i")"
    row=$(awk -F'\t' -v q="$queue" '$1 == q' <<<"$rows")
    [[ -n $row ]] || die "no queue '$queue' in vhost '$vhost'"
    IFS=$'\t' read -r _ type leader <<<"$row"
    [[ $type == quorum ]] || die "'$queue' is a $type queue, not a quorum queue: it has no leader"
    [[ -n $leader && $leader != '' ]] || die "quorum queue '$queue' has no leader right now (quorum lost?)"
    printf '%s\n' "$leader"
}

# rabbitmqctl ARGS against node I (killed after CLUSTER_STOP_WAIT seconds); its exit status.
cmd_ctl() {
    local i=$1
    shift
    node_index "$i"
    ctl "$stop_secs" "$i" "$@"
}

[[ $# -gt 0 ]] || usage
command=$1
shift
find_rabbitmq_bin
mapfile -d '' -t RMQ_ENV < <(rmq_env)
case $command in
    up) [[ $# -eq 0 ]] || usage; cmd_up ;;
    down) [[ $# -eq 0 ]] || usage; cmd_down ;;
    status) [[ $# -eq 0 ]] || usage; cmd_status ;;
    uris) [[ $# -eq 0 ]] || usage; cmd_uris ;;
    stop-node) [[ $# -ge 1 && $# -le 2 ]] || usage; cmd_stop_node "$@" ;;
    start-node) [[ $# -eq 1 ]] || usage; cmd_start_node "$1" ;;
    leader) [[ $# -ge 1 && $# -le 2 ]] || usage; cmd_leader "$@" ;;
    ctl) [[ $# -ge 2 ]] || usage; cmd_ctl "$@" ;;
    -h | --help | help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) usage ;;
esac
