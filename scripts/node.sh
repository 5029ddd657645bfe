#!/usr/bin/env bash
# A throwaway RabbitMQ node beside the machine's own broker (rabbit@localhost on 5672, never
# touched): the one lifecycle of cluster.sh, tls-test.sh, rabbitmq4.sh and the fault stage.
#   scripts/node.sh start NAME PORT   start NAME@localhost (AMQP 127.0.0.1:PORT, Erlang
#                                     distribution 127.0.0.1:PORT+20000) and wait until it
#                                     answers AMQP; state in target/nodes/NAME@localhost/
#   scripts/node.sh stop NAME         stop it and remove its state
#   scripts/node.sh ctl NAME ARGS...  rabbitmqctl ARGS against it (its exit status; killed
#                                     after NODE_WAIT seconds): a RABBITMQCTL command prefix
#   scripts/node.sh uri NAME          its AMQP URI
# Exits 77 (skipped) where no node can run (RabbitMQ or Erlang not installed). Needs no root.
# Sourced (cluster.sh), it defines the node_* functions for a node chosen with node_select NAME
# PORT BASE: state in BASE/NAME@localhost/, the Erlang cookie in BASE/home/.erlang.cookie
# (HOME points there, so the main broker's cookie is untouched).
# Env: NODE_WAIT (seconds to boot, default 120), NODE_STOP_WAIT (seconds per stop, default
# 60), NODE_CONF (start: more rabbitmq.conf lines, one a line), NODE_MORE_PORTS (start: ports
# those lines listen on, checked free first), NODE_ERL_ARGS (extra VM flags, default "+S 1:1":
# one scheduler, to share the machine), RABBITMQ_BIN (default /usr/lib/rabbitmq/bin), NODE_BASE
# (default target/nodes). With NODE_ROOT (a Debian root, see rabbitmq4.sh) the node runs
# chrooted there: BASE and RABBITMQ_BIN are paths inside it; NODE_EPMD_PORT: an epmd of its own.
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODE_HOST=127.0.0.1
NODE_WAIT=${NODE_WAIT:-120}
NODE_STOP_WAIT=${NODE_STOP_WAIT:-60}
[[ $NODE_WAIT =~ ^[0-9]+$ ]] || die "NODE_WAIT must be a number of seconds, got '$NODE_WAIT'"
[[ $NODE_STOP_WAIT =~ ^[0-9]+$ ]] || die "NODE_STOP_WAIT must be a number of seconds, got '$NODE_STOP_WAIT'"
# Not /usr/sbin/rabbitmqctl: Debian's wrapper there switches to the rabbitmq user when run as
# root, and with it to that user's HOME and Erlang cookie (the main broker's).
RMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
NODE_ROOT=${NODE_ROOT:-}
NODE_RUN=()
[[ -z $NODE_ROOT ]] || NODE_RUN=(chroot "$NODE_ROOT")

# node_installed: skip (exit 77) unless a RabbitMQ node can run here.
node_installed() {
    [[ -x $NODE_ROOT$RMQ_BIN/rabbitmq-server && -x $NODE_ROOT$RMQ_BIN/rabbitmqctl ]] ||
        skip "no rabbitmq-server/rabbitmqctl in $RMQ_BIN: cannot run a RabbitMQ node (scripts/broker.sh installs Debian's package as root; or set RABBITMQ_BIN)"
    { command -v erl && command -v epmd; } >/dev/null 2>&1 || skip "erl/epmd (Erlang) not found in PATH: cannot run a RabbitMQ node"
}

# node_select NAME PORT BASE: the node the node_* functions act on.
node_select() {
    NODE=$1@localhost NODE_PORT=$2 NODE_BASE=$3
    { [[ $NODE_PORT =~ ^[1-9][0-9]*$ ]] && ((NODE_PORT <= 45535)); } ||
        die "$NODE: '$NODE_PORT' is not a port number up to 45535 (the distribution port is port+20000)"
    NODE_DIST=$((NODE_PORT + 20000))
    NODE_DIR=$NODE_BASE/$NODE
    NODE_PID_FILE=$NODE_DIR/rabbitmq.pid
    NODE_LOG=$NODE_DIR/log/$NODE.log
    # Every RabbitMQ command: our HOME (cookie), no system rabbitmq-env.conf (it names the main
    # broker's node), distribution on loopback only.
    NODE_ENV=(-u RABBITMQ_ERLANG_COOKIE -u RABBITMQ_NODENAME -u ERL_AFLAGS -u ERL_ZFLAGS
        "HOME=$NODE_BASE/home" "RABBITMQ_CONF_ENV_FILE=$NODE_BASE/rabbitmq-env.conf"
        ERL_EPMD_ADDRESS=127.0.0.1 'ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}'
        LC_ALL=C.UTF-8 ${NODE_EPMD_PORT:+"ERL_EPMD_PORT=$NODE_EPMD_PORT"})
    NODE_EPMD=(${NODE_EPMD_PORT:+"ERL_EPMD_PORT=$NODE_EPMD_PORT"})
    NODE_INETRC=$NODE_BASE/home/inetrc
    [[ ! -s $NODE_ROOT$NODE_INETRC ]] || NODE_ENV+=("ERL_INETRC=$NODE_INETRC")
    # Where the host sees the node's files.
    NODE_HOST_DIR=$NODE_ROOT$NODE_DIR
}

node_uri() { printf 'amqp://guest:guest@%s:%s' "$NODE_HOST" "$NODE_PORT"; }

# node_ctl SECS ARGS...: rabbitmqctl against the node, killed after SECS seconds.
node_ctl() { timeout "$1" "${NODE_RUN[@]}" env "${NODE_ENV[@]}" "$RMQ_BIN/rabbitmqctl" -n "$NODE" "${@:2}" </dev/null 9>&-; }

# Pid of the node's VM from its pid file, if that process is alive and is this node (its
# environment names the node: guards against a reused pid). Fails otherwise.
node_pid() {
    local pid stat
    [[ -r $NODE_ROOT$NODE_PID_FILE ]] || return 1
    pid=$(<"$NODE_ROOT$NODE_PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] && stat=$(cat "/proc/$pid/stat" 2>/dev/null) && [[ $stat == "$pid "*") "[!ZX]* ]] || return 1
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "RABBITMQ_NODENAME=$NODE" || return 1
    printf '%s\n' "$pid"
}

# Is the node's name registered with epmd (by any VM)?
node_epmd_has() { env "${NODE_EPMD[@]}" epmd -names 2>/dev/null | grep -q "^name ${NODE%@*} at port "; }

node_amqp_up() { xtask probe "$NODE_HOST" "$NODE_PORT" --timeout 2 2>/dev/null; }

# Boot state of the RabbitMQ app: stopped, booting, ready or stopping.
node_app_state() { node_ctl 30 -q eval 'rabbit_boot_state:get().' 2>/dev/null; }

# The node's last error lines.
node_show_log() {
    local f
    for f in "$NODE_ROOT$NODE_LOG" "$NODE_HOST_DIR/log/startup.log"; do
        [[ -s $f ]] || continue
        msg "--- last errors in $f:"
        { grep -E '\[(error|critical)\]' "$f" || tail -n 8 "$f"; } | tail -n 8 | sed 's/^/    /' >&2
    done
}

# node_write_inetrc: the Erlang resolver's settings of the nodes and of rabbitmqctl: this
# machine's name is 127.0.0.1. rabbitmqctl's own node is rabbitmqcli-N-rabbit@<hostname>, and a
# command that asks every node of a cluster (list_queues, list_connections) has each node send
# its rows to it; the nodes reach it by that name. Debian maps the hostname to 127.0.1.1 in
# /etc/hosts, where neither rabbitmqctl's distribution port nor epmd listens (both on
# 127.0.0.1 only): without this, such commands wait for those rows until they time out.
node_write_inetrc() {
    local host
    host=$(uname -n)
    mkdir -p "$NODE_ROOT$NODE_BASE/home"
    {
        printf '%% Written by scripts/%s: see node_write_inetrc in scripts/node.sh.\n' "$PROG"
        printf '{host, {127,0,0,1}, ["%s"%s]}.\n' "$host" "$([[ $host == *.* ]] && printf ', "%s"' "${host%%.*}")"
        printf '{lookup, [file, native]}.\n'
    } >"$NODE_ROOT$NODE_INETRC"
    [[ " ${NODE_ENV[*]} " == *" ERL_INETRC="* ]] || NODE_ENV+=("ERL_INETRC=$NODE_INETRC")
}

# node_write_config CONF-LINE...: a fresh node directory and cookie (kept if there), and the
# node's rabbitmq.conf with these lines.
node_write_config() {
    local dir=$NODE_HOST_DIR home=$NODE_ROOT$NODE_BASE/home
    mkdir -p "$dir/log" "$dir/mnesia" "$dir/conf.d" "$home"
    [[ -s $home/.erlang.cookie ]] || (umask 277 && od -An -tx1 -N20 /dev/urandom | tr -d ' \n' | tr a-f A-F >"$home/.erlang.cookie")
    # Deliberately empty: it replaces /etc/rabbitmq/rabbitmq-env.conf (the main broker's).
    : >"$NODE_ROOT$NODE_BASE/rabbitmq-env.conf"
    {
        printf '# %s, written by scripts/%s (the AMQP listener comes from the environment).\n' "$NODE" "$PROG"
        printf '%s\n' "log.file.level = info" "$@"
    } >"$dir/rabbitmq.conf"
    echo '[].' >"$dir/enabled_plugins"
}

# node_preflight: dies unless the node (not running) can start: its name, its AMQP and
# distribution ports and those in NODE_MORE_PORTS (say, a TLS listener's) must be free.
read -r -a NODE_MORE_PORTS <<<"${NODE_MORE_PORTS:-}"
node_preflight() {
    local port
    node_epmd_has && die "$NODE is registered with epmd but is not the node recorded in $NODE_DIR (a leftover whose state was removed?); stop that VM first"
    for port in "$NODE_PORT" "$NODE_DIST" "${NODE_MORE_PORTS[@]+"${NODE_MORE_PORTS[@]}"}"; do
        ! xtask probe "$NODE_HOST" "$port" --tcp --timeout 1 2>/dev/null ||
            die "port $NODE_HOST:$port (of $NODE) is in use by another process; pick another port"
    done
}

# node_start: start the VM detached (after node_preflight); returns once the VM has written
# its pid file (early in boot, so a stop can always find it).
node_start() {
    local deadline
    node_preflight
    node_write_inetrc
    rm -f "$NODE_ROOT$NODE_PID_FILE"
    msg "starting $NODE (AMQP $NODE_HOST:$NODE_PORT, distribution $NODE_HOST:$NODE_DIST)"
    "${NODE_RUN[@]}" env "${NODE_ENV[@]}" \
        RABBITMQ_NODENAME="$NODE" \
        RABBITMQ_NODE_IP_ADDRESS="$NODE_HOST" \
        RABBITMQ_NODE_PORT="$NODE_PORT" \
        RABBITMQ_DIST_PORT="$NODE_DIST" \
        RABBITMQ_MNESIA_BASE="$NODE_DIR/mnesia" \
        RABBITMQ_LOG_BASE="$NODE_DIR/log" \
        RABBITMQ_CONFIG_FILE="$NODE_DIR/rabbitmq.conf" \
        RABBITMQ_CONFIG_FILES="$NODE_DIR/conf.d/*.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$NODE_DIR/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$NODE_DIR/enabled_plugins" \
        RABBITMQ_PID_FILE="$NODE_PID_FILE" \
        ERL_CRASH_DUMP="$NODE_DIR/log/erl_crash.dump" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${NODE_ERL_ARGS-+S 1:1}" \
        "$RMQ_BIN/rabbitmq-server" -detached </dev/null 9>&- >"$NODE_HOST_DIR/log/startup.log" 2>&1 || {
        node_show_log
        die "rabbitmq-server -detached failed for $NODE"
    }
    deadline=$((SECONDS + 30))
    until node_pid >/dev/null; do
        ((SECONDS < deadline)) || { node_show_log; die "$NODE wrote no pid file ($NODE_PID_FILE) within 30s"; }
        sleep 0.2
    done
}

# node_wait DEADLINE: wait until the node answers AMQP; dies, with its log, if its VM exits or
# SECONDS passes DEADLINE.
node_wait() {
    local deadline=$1 t0=$SECONDS
    until node_amqp_up; do
        # The VM writes its pid file early in boot; it must stay alive.
        node_pid >/dev/null || { node_show_log; die "$NODE is not running (its VM exited or never started)"; }
        ((SECONDS < deadline)) || { node_show_log; die "$NODE did not come up within ${NODE_WAIT}s (raise NODE_WAIT if the machine is just slow)"; }
        sleep 0.5
    done
    msg "$NODE answers on $NODE_HOST:$NODE_PORT (after $((SECONDS - t0))s)"
}

# node_stop: rabbitmqctl stop (waits for the VM to exit), then TERM/KILL by pid file.
# Fails if the node still runs.
node_stop() {
    local pid deadline sig
    # Registered with epmd but no pid file: stop it by name (ours if the cookie matches).
    pid=$(node_pid) || { ! node_epmd_has || node_ctl "$NODE_STOP_WAIT" -q stop >/dev/null 2>&1 || true; return 0; }
    node_ctl "$NODE_STOP_WAIT" -q stop "$NODE_PID_FILE" >/dev/null 2>&1 || true
    for sig in TERM KILL; do
        node_pid >/dev/null || return 0
        warn "$NODE (pid $pid) still running; sending SIG$sig"
        kill "-$sig" "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while node_pid >/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    done
    ! node_pid >/dev/null
}

# ---- the command line -------------------------------------------------------------------------

[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0
set -euo pipefail

usage() { die "usage: $PROG start NAME PORT | stop NAME | ctl NAME ARGS... | uri NAME"; }
[[ $# -ge 2 && $2 =~ ^[a-z][a-z0-9_-]*$ ]] || usage
command=$1 name=$2
shift 2
BASE=${NODE_BASE:-$REPO_ROOT/target/nodes} # with NODE_ROOT, a path inside the root
port_file=$NODE_ROOT$BASE/$name@localhost/port
if [[ $command == start ]]; then
    [[ $# -eq 1 ]] || usage
    port=$1
else
    [[ -r $port_file ]] || die "no node $name@localhost in $BASE (start it with '$PROG start $name PORT')"
    port=$(<"$port_file")
fi
node_installed
node_select "$name" "$port" "$BASE"
case $command in
    start)
        if node_pid >/dev/null; then
            node_wait $((SECONDS + NODE_WAIT))
            exit 0
        fi
        rm -rf "$NODE_HOST_DIR" # a fresh node: no queues or users from an earlier run
        mapfile -t conf <<<"${NODE_CONF:-}"
        node_write_config "vm_memory_high_watermark.absolute = 512MiB" "disk_free_limit.absolute = 100MB" "${conf[@]}"
        printf '%s\n' "$port" >"$port_file"
        node_start
        node_wait $((SECONDS + NODE_WAIT))
        ;;
    stop)
        [[ $# -eq 0 ]] || usage
        node_stop || die "could not stop $NODE; not removing $NODE_DIR"
        rm -rf "$NODE_HOST_DIR"
        msg "$NODE stopped; removed $NODE_DIR"
        ;;
    ctl) node_ctl "$NODE_WAIT" "$@" ;;
    uri) [[ $# -eq 0 ]] || usage; node_uri; echo ;;
    *) usage ;;
esac
