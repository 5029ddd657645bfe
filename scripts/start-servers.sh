#!/usr/bin/env bash
# Start N rpc-server processes in the background (default 2).
#   scripts/start-servers.sh [N] [-- EXTRA-SERVER-ARGS...]
#   e.g. scripts/start-servers.sh 3 -- --queue q1
# Server i runs with --name server-<i>; its log and pid file are
# $RPC_RUN_DIR/server-<i>.{log,pid} (default target/run). Waits until every
# server consumes from its queue. Stop them with scripts/stop-servers.sh.
# Env: RPC_BIN_DIR (default target/release), RPC_RUN_DIR, START_WAIT (default 30 s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { die "usage: $PROG [N] [-- EXTRA-SERVER-ARGS...]"; }

count=2
if [[ $# -gt 0 && $1 != -- ]]; then
    [[ $1 =~ ^[1-9][0-9]*$ ]] || usage
    count=$1
    shift
fi
if [[ $# -gt 0 ]]; then
    [[ $1 == -- ]] || usage
    shift
fi
extra=("$@")
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
    "$bin" --name "server-$i" "${extra[@]}" </dev/null >"$log" 2>&1 &
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
