#!/usr/bin/env bash
# Stop the rpc-server processes recorded in $RPC_RUN_DIR/server-*.pid
# (default target/run): SIGTERM, wait up to STOP_WAIT (default 10) seconds,
# then SIGKILL stragglers. Removes the pid files. Never kills by name.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

wait_secs=${STOP_WAIT:-10}
[[ $# -eq 0 ]] || die "usage: $PROG (stops the servers recorded in $RUN_DIR)"

shopt -s nullglob
pid_files=("$RUN_DIR"/server-*.pid)
if ((${#pid_files[@]} == 0)); then
    msg "no servers recorded in $RUN_DIR"
    exit 0
fi

declare -A running=() # pid -> pid file
for f in "${pid_files[@]}"; do
    pid=$(<"$f")
    if is_our_server "$pid"; then
        running[$pid]=$f
        kill -TERM "$pid" 2>/dev/null || true
    else
        rm -f "$f"
    fi
done
if ((${#running[@]} == 0)); then
    msg "no servers from $RUN_DIR were running"
    exit 0
fi
msg "sent SIGTERM to ${#running[@]} server(s): ${!running[*]}"

deadline=$((SECONDS + wait_secs + 1)) # SECONDS is whole seconds: wait at least wait_secs
while :; do
    for pid in "${!running[@]}"; do
        if ! is_our_server "$pid"; then
            rm -f "${running[$pid]}"
            unset "running[$pid]"
        fi
    done
    ((${#running[@]} > 0)) || break
    if ((SECONDS >= deadline)); then
        for pid in "${!running[@]}"; do
            warn "pid $pid (${running[$pid]}) still running after ${wait_secs}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "${running[$pid]}"
        done
        break
    fi
    sleep 0.1
done
msg "servers stopped"
