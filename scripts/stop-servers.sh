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

stopping=()
for f in "${pid_files[@]}"; do
    pid=$(<"$f")
    if is_our_server "$pid"; then
        stopping+=("$pid")
        { stop_pid "$pid" "$wait_secs" is_our_server || true; rm -f "$f"; } &
    else
        rm -f "$f"
    fi
done
if ((${#stopping[@]} == 0)); then
    msg "no servers from $RUN_DIR were running"
    exit 0
fi
msg "sent SIGTERM to ${#stopping[@]} server(s): ${stopping[*]}"
wait
msg "servers stopped"
