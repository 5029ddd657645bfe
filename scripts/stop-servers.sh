#!/usr/bin/env bash
# Stop the rpc-server processes recorded in $RPC_RUN_DIR/server-*.pid
# (default target/run): SIGTERM, wait up to STOP_WAIT seconds, then SIGKILL stragglers
# and exit 1. STOP_WAIT defaults to the servers' own stop bound as start-servers.sh
# recorded it in $RPC_RUN_DIR/stop-wait: 12 s, or for servers of a command 18 s plus
# their --exec-timeout (the commands in hand may finish). Removes the pid files. Never
# kills by name.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

recorded=
[[ ! -f $RUN_DIR/stop-wait ]] || recorded=$(<"$RUN_DIR/stop-wait")
[[ $recorded =~ ^[0-9]+$ ]] || recorded=12
wait_secs=${STOP_WAIT:-$recorded}
[[ $# -eq 0 ]] || die "usage: $PROG (stops the servers recorded in $RUN_DIR)"

shopt -s nullglob
pid_files=("$RUN_DIR"/server-*.pid)
if ((${#pid_files[@]} == 0)); then
    msg "no servers recorded in $RUN_DIR"
    exit 0
fi

stopping=() stoppers=()
for f in "${pid_files[@]}"; do
    pid=$(<"$f")
    if is_our_server "$pid"; then
        stopping+=("$pid")
        ( # SIGTERM; SIGKILL (a failure: the commands it had in hand may live on) after wait_secs
            deadline=$((SECONDS + wait_secs + 1)) # SECONDS is whole seconds: wait at least wait_secs
            kill -TERM "$pid" 2>/dev/null || true
            while is_our_server "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
            rm -f "$f"
            ! is_our_server "$pid" || { warn "pid $pid still running ${wait_secs}s after SIGTERM; sending SIGKILL"; kill -KILL "$pid"; exit 1; }
        ) &
        stoppers+=($!)
    else
        rm -f "$f"
    fi
done
if ((${#stopping[@]} == 0)); then
    msg "no servers from $RUN_DIR were running"
    exit 0
fi
msg "sent SIGTERM to ${#stopping[@]} server(s): ${stopping[*]}; waiting up to ${wait_secs}s"
killed=0
for p in "${stoppers[@]}"; do wait "$p" || killed=$((killed + 1)); done
((killed == 0)) || die "$killed server(s) had to be killed (SIGKILL); see their logs in $RUN_DIR"
msg "servers stopped"
