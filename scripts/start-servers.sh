#!/usr/bin/env bash
# Start N rpc-server processes in the background (default 2).
#   scripts/start-servers.sh [--uris URI,URI...] [N] [-- EXTRA-SERVER-ARGS...]
#   e.g. scripts/start-servers.sh 3 -- --queue q1
# The server arguments may end with a command to serve after a second `--`, passed on as is:
#   scripts/start-servers.sh 2 -- -q --queue upper -- tr a-z A-Z
# Server i runs with --name server-<i>; its log and pid file are
# $RPC_RUN_DIR/server-<i>.{log,pid} (default target/run). Waits until the broker counts
# N consumers on their queue (--queue in the server arguments, else RPC_QUEUE, else rpc_queue).
# Stop them with scripts/stop-servers.sh.
# With a list of broker URIs (--uris, or the RPC_URIS variable, which keeps the
# passwords out of ps), server i connects to URI number (i-1) mod (number of
# URIs), passed in its AMQP_URI environment variable: N servers spread over
# several brokers, e.g. the nodes of scripts/cluster.sh:
#   RPC_URIS=$(scripts/cluster.sh uris) scripts/start-servers.sh 3 -- --queue-type quorum
# Env: RPC_BIN_DIR (default target/release), RPC_RUN_DIR, START_WAIT (default 30 s), RPC_URIS.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { die "usage: $PROG [--uris URI,URI...] [N] [-- EXTRA-SERVER-ARGS...]"; }

count=2
count_given=
uri_list=${RPC_URIS:-}
while [[ $# -gt 0 && $1 != -- ]]; do
    case $1 in
        --uris) [[ $# -ge 2 ]] || usage; uri_list=$2; shift ;;
        --uris=*) uri_list=${1#--uris=} ;;
        *) [[ -z $count_given && $1 =~ ^[1-9][0-9]*$ ]] || usage; count=$1 count_given=1 ;;
    esac
    shift
done
[[ $# -eq 0 ]] || { [[ $1 == -- ]] || usage; shift; }
extra=("$@")

# The broker URIs to spread the servers over (none: the servers' own defaults).
uris=()
if [[ -n $uri_list ]]; then
    IFS=, read -r -a list <<<"$uri_list"
    for u in "${list[@]}"; do
        u=${u#"${u%%[![:space:]]*}"} # trim blanks
        u=${u%"${u##*[![:space:]]}"}
        [[ -n $u ]] || continue
        xtask mask-uri --check <<<"$u" >/dev/null || die "a URI in RPC_URIS/--uris is not valid (see above)"
        uris+=("$u")
    done
    ((${#uris[@]} > 0)) || die "RPC_URIS/--uris holds no URI"
fi
# The queue and broker of the servers, for the readiness check through the broker.
queue=${RPC_QUEUE:-rpc_queue}
check_env=()
[[ -z $uri_list ]] || check_env=("AMQP_URI=$uri_list")
exec_timeout=30 # rpc-server's default --exec-timeout
serves_command=
for ((k = 0; k < ${#extra[@]}; k++)); do
    a=${extra[k]}
    case $a in
        --) serves_command=1 && break ;; # the rest is the served command and its arguments
        --exec-timeout=*) exec_timeout=${a#*=} && continue ;;
        --exec-timeout) k=$((k + 1)) && exec_timeout=${extra[k]:-} && continue ;;
        --queue=* | --uri=* | --host=* | --port=* | --vhost=* | --user=* | --password=*) v=${a#*=} a=${a%%=*} ;;
        --queue | --uri | --host | --port | --vhost | --user | --password) k=$((k + 1)) v=${extra[k]:-} ;;
        *) continue ;;
    esac
    [[ -z $uri_list || $a == --queue ]] || die "broker flag $a among the server arguments conflicts with RPC_URIS/--uris"
    case $a in
        --queue) queue=$v ;;
        *) a=${a#--} && check_env+=("AMQP_${a^^}=$v") ;;
    esac
done
wait_secs=${START_WAIT:-30}
# How long stop-servers.sh waits after SIGTERM: rpc-server's own stop bound (10 s; plus
# --exec-timeout and 6 s for a command) and 2 s to spare.
stop_wait=12
if [[ -n $serves_command ]]; then
    [[ $exec_timeout =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--exec-timeout '$exec_timeout' is not a number of seconds"
    stop_wait=$((18 + ${exec_timeout%.*} + 1))
fi

bin=$BIN_DIR/rpc-server
[[ -x $bin ]] || { msg "$bin not found; running cargo build --release"; cargo build --release; }
[[ -x $bin ]] || die "$bin still missing after cargo build --release (RPC_BIN_DIR=$BIN_DIR)"

mkdir -p "$RUN_DIR"
live=()
for f in "$RUN_DIR"/server-*.pid; do [[ -f $f ]] && is_our_server "$(<"$f")" && live+=("$f"); done
((${#live[@]} == 0)) || die "servers from $RUN_DIR are still running (${live[*]}); run scripts/stop-servers.sh first"
rm -f "$RUN_DIR"/server-*.pid "$RUN_DIR"/server-*.log
echo "$stop_wait" >"$RUN_DIR/stop-wait"

pids=()
for ((i = 1; i <= count; i++)); do
    log=$RUN_DIR/server-$i.log
    if ((${#uris[@]} > 0)); then
        uri=${uris[(i - 1) % ${#uris[@]}]}
        msg "server-$i -> $(xtask mask-uri <<<"$uri")"
        (
            # The URI replaces these (rpc-server refuses AMQP_URI together with them).
            unset AMQP_HOST AMQP_PORT AMQP_VHOST AMQP_USER AMQP_PASSWORD
            export AMQP_URI=$uri
            exec "$bin" --name "server-$i" "${extra[@]}"
        ) </dev/null >"$log" 2>&1 &
    else
        "$bin" --name "server-$i" "${extra[@]}" </dev/null >"$log" 2>&1 &
    fi
    pids[i]=$!
    echo "${pids[i]}" >"$RUN_DIR/server-$i.pid"
done

pid_args=()
for ((i = 1; i <= count; i++)); do pid_args+=(--pid "${pids[i]}"); done
if ! (
    # As for the servers: a URI list replaces these (xtask refuses AMQP_URI together with them).
    [[ -z $uri_list ]] || unset AMQP_HOST AMQP_PORT AMQP_VHOST AMQP_USER AMQP_PASSWORD
    ((${#check_env[@]} == 0)) || export "${check_env[@]}"
    xtask queue wait-consumers "$queue" "$count" --timeout "$wait_secs" "${pid_args[@]}"
); then
    for ((i = 1; i <= count; i++)); do
        status=running
        if ! is_our_server "${pids[i]}"; then
            status=0
            wait "${pids[i]}" || status=$?
            status="exited with status $status"
        fi
        msg "server-$i (pid ${pids[i]}, $status); last lines of $RUN_DIR/server-$i.log:"
        tail -n 10 "$RUN_DIR/server-$i.log" | sed 's/^/    /' >&2
    done
    RPC_RUN_DIR=$RUN_DIR "$REPO_ROOT/scripts/stop-servers.sh" || true
    die "starting servers failed"
fi

msg "$count server(s) ready (pids ${pids[*]}, consuming '$queue'); logs in $RUN_DIR/server-<i>.log"
