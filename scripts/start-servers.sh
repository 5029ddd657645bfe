#!/usr/bin/env bash
# Start N rpc-server processes in the background (default 2).
#   scripts/start-servers.sh [--uris URI,URI...] [N] [-- EXTRA-SERVER-ARGS...]
#   e.g. scripts/start-servers.sh 3 -- --queue q1
# Server i runs with --name server-<i>; its log and pid file are
# $RPC_RUN_DIR/server-<i>.{log,pid} (default target/run). Waits until every
# server consumes from its queue. Stop them with scripts/stop-servers.sh.
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
        --uris)
            [[ $# -ge 2 ]] || usage
            uri_list=$2
            shift 2
            ;;
        --uris=*)
            uri_list=${1#--uris=}
            shift
            ;;
        *)
            [[ -z $count_given && $1 =~ ^[1-9][0-9]*$ ]] || usage
            count=$1
            count_given=1
            shift
            ;;
    esac
done
if [[ $# -gt 0 ]]; then
    [[ $1 == -- ]] || usage
    shift
fi
extra=("$@")

# The broker URIs to spread the servers over (none: the servers' own defaults).
uris=()
if [[ -n $uri_list ]]; then
    IFS=, read -r -a list <<<"$uri_list"
    for u in "${list[@]}"; do
        u=${u#"${u%%[![:space:]]*}"} # trim blanks
        u=${u%"${u##*[![:space:]]}"}
        [[ -n $u ]] || continue
        [[ $u == amqp://* || $u == amqps://* ]] || die "not an amqp:// or amqps:// URI in RPC_URIS/--uris: '$(mask_uri "$u")'"
        uris+=("$u")
    done
    ((${#uris[@]} > 0)) || die "RPC_URIS/--uris holds no URI"
    for a in "${extra[@]}"; do
        case $a in
            --uri | --uri=* | --host | --host=* | --port | --port=* | --vhost | --vhost=* | \
                --user | --user=* | --password | --password=*)
                die "broker flag $a among the server arguments conflicts with RPC_URIS/--uris" ;;
        esac
    done
fi
wait_secs=${START_WAIT:-30}
ready_text="waiting for RPC requests on queue"

bin=$BIN_DIR/rpc-server
if [[ ! -x $bin ]]; then
    msg "$bin not found; running cargo build --release"
    cargo build --release
    [[ -x $bin ]] || die "$bin still missing after cargo build --release (RPC_BIN_DIR=$BIN_DIR)"
fi

mkdir -p "$RUN_DIR"
live=$(live_pid_files)
if [[ -n $live ]]; then
    die "servers from $RUN_DIR are still running ($(tr '\n' ' ' <<<"$live")); run scripts/stop-servers.sh first"
fi
rm -f "$RUN_DIR"/server-*.pid "$RUN_DIR"/server-*.log

pids=()
for ((i = 1; i <= count; i++)); do
    log=$RUN_DIR/server-$i.log
    if ((${#uris[@]} > 0)); then
        uri=${uris[(i - 1) % ${#uris[@]}]}
        msg "server-$i -> $(mask_uri "$uri")"
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

fail() {
    local i=$1 why=$2
    msg "server-$i (pid ${pids[i]}) $why; last lines of $RUN_DIR/server-$i.log:"
    tail -n 20 "$RUN_DIR/server-$i.log" | sed 's/^/    /' >&2
    RPC_RUN_DIR=$RUN_DIR "$REPO_ROOT/scripts/stop-servers.sh" || true
    die "starting servers failed"
}

deadline=$((SECONDS + wait_secs))
pending=$count
declare -A ready=()
while ((pending > 0)); do
    for ((i = 1; i <= count; i++)); do
        [[ -n ${ready[$i]:-} ]] && continue
        if grep -qF "$ready_text" "$RUN_DIR/server-$i.log"; then
            ready[$i]=1
            pending=$((pending - 1))
        elif ! kill -0 "${pids[i]}" 2>/dev/null; then
            status=0
            wait "${pids[i]}" || status=$?
            fail "$i" "exited (status $status) before it was ready"
        fi
    done
    ((pending == 0)) && break
    ((SECONDS < deadline)) || {
        for ((i = 1; i <= count; i++)); do
            [[ -n ${ready[$i]:-} ]] || fail "$i" "was not ready within ${wait_secs}s"
        done
    }
    sleep 0.2
done

msg "$count server(s) ready (pids ${pids[*]}); logs in $RUN_DIR/server-<i>.log"
