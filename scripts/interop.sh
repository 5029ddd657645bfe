#!/usr/bin/env bash
# Interop test: our rpc-server / rpc-client against RabbitMQ tutorial-six peers
# written in Python with pika (scripts/interop/rpc_{server,client}.py).
#
# For each queue flavour on its own queue interop-<flavour>-<uuid> (classic: the original
# tutorial's non-durable queue; durable: classic and durable; quorum: today's tutorial's):
#   (a) their client -> our server (own reply queue, then direct reply-to);
#       the queue is declared first by the Python server, so ours meets it existing;
#   (b) our client -> their server.
# Plus: our rpc-server's own declaration of a fresh queue must be equivalent to a durable
# classic declaration (and with --transient, to the original tutorial's), and rpc-server must
# exit 0 on SIGTERM.
#
# Broker: $AMQP_URI if set (read by all four programs), else local guest/guest.
# INTEROP_FLAVOURS (default "classic durable quorum"): leave out classic against a broker that
# denies transient non-exclusive queues (RabbitMQ 4.3's default).
# Binaries: ${RPC_BIN_DIR:-target/release}. Runtime files: target/interop/, target/py-venv.
# Prints "interop: N passed, M failed"; exits non-zero if anything failed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # also cds to the repository root

[[ $# -eq 0 ]] || die "usage: $PROG   (takes no arguments)"
PEERS=scripts/interop
NS=(0 1 2 10 30 94)
EXPECTED=$'0\n1\n1\n55\n832040\n19740274219868223167'
CALL_TIMEOUT=15    # per-reply timeout given to the clients
READY_TIMEOUT=20   # deadline for a server to consume its queue
STOP_TIMEOUT=10    # deadline for a process to exit after SIGTERM

RUN_ID=$(cat /proc/sys/kernel/random/uuid)
LOG_DIR=target/interop/$RUN_ID

# ---- process and queue bookkeeping ---------------------------------------------

PIDS=()     # every background process we started
QUEUES=()   # every queue name we (or a peer we started) declared

delete_queues() {
  ((${#QUEUES[@]})) || return 0
  xtask queue delete "${QUEUES[@]}" || warn "could not delete queues: ${QUEUES[*]}"
}

cleanup() {
  local pid
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    ! kill -0 "$pid" 2>/dev/null || stop_pid "$pid" "$STOP_TIMEOUT" || true
  done
  delete_queues
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_server QUEUE LOGNAME CMD...: start a server on QUEUE in the background (its pid in
# LAST_PID); 0 once it is the one consumer of QUEUE, 1 if it died or the deadline passed.
LAST_PID=
start_server() {
  local q=$1 log=$2
  shift 2
  "$@" --queue "$q" >"$LOG_DIR/$log.out" 2>"$LOG_DIR/$log.err" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  xtask queue wait-consumers "$q" 1 --exactly --timeout "$READY_TIMEOUT" --pid "$LAST_PID"
}

# ---- test cases ------------------------------------------------------------------

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$1"; }
fail() {
  FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$1"
  shift
  local f
  for f in "$@"; do
    [[ -s $f ]] && { printf '  --- %s (last lines)\n' "$f"; tail -n 15 "$f" | sed 's/^/  | /'; }
  done
  return 0
}

# check NAME LOGNAME EXPECTED SERVER_LOG CMD... : run a client, compare its stdout exactly
check() {
  local name=$1 logname=$2 expected=$3 server_log=$4 rc=0 out
  shift 4
  out=$(timeout 120 "$@" 2>"$LOG_DIR/$logname.err") || rc=$?
  printf '%s\n' "$out" >"$LOG_DIR/$logname.out"
  if ((rc == 0)) && [[ $out == "$expected" ]]; then
    pass "$name"
  else
    printf 'expected:\n%s\n' "$expected" >"$LOG_DIR/$logname.expected"
    fail "$name (exit $rc, got: $(tr '\n' ' ' <"$LOG_DIR/$logname.out"))" "$LOG_DIR/$logname.err" "$server_log"
  fi
}

run_flavour() {
  local fl=$1 q="interop-$1-$RUN_ID" pid rc=0 theirs=("$PY" "$PEERS/rpc_server.py")
  QUEUES+=("$q")
  [[ $fl == classic ]] || theirs+=("--$fl")

  # (a) their client -> our server; the tutorial server declares the queue first.
  if start_server "$q" "$fl-predeclare" "${theirs[@]}"; then
    stop_pid "$LAST_PID" "$STOP_TIMEOUT" || true
  else
    fail "$fl: tutorial server declares $q" "$LOG_DIR/$fl-predeclare.err"
  fi
  local a1="$fl: their client -> our server"
  local a2="$fl: their client (direct reply-to) -> our server"
  local a3="$fl: our server exits 0 on SIGTERM"
  if start_server "$q" "$fl-our-server" "$BIN_DIR/rpc-server"; then
    pid=$LAST_PID
    check "$a1" "$fl-a-client" "$EXPECTED" "$LOG_DIR/$fl-our-server.err" \
      "$PY" "$PEERS/rpc_client.py" --queue "$q" --declare-"$fl" --timeout "$CALL_TIMEOUT" "${NS[@]}"
    check "$a2" "$fl-a-client-drt" "$EXPECTED" "$LOG_DIR/$fl-our-server.err" \
      "$PY" "$PEERS/rpc_client.py" --queue "$q" --direct-reply-to --timeout "$CALL_TIMEOUT" "${NS[@]}"
    stop_pid "$pid" "$STOP_TIMEOUT" || rc=$?
    if ((rc == 0)); then pass "$a3"; else fail "$a3 (exit $rc)" "$LOG_DIR/$fl-our-server.err"; fi
  else
    fail "$a1 (our server not ready on existing $fl queue)" "$LOG_DIR/$fl-our-server.err"
    fail "$a2 (our server not ready)"
    fail "$a3 (our server not ready)"
  fi

  # (b) our client -> their server
  if start_server "$q" "$fl-their-server" "${theirs[@]}"; then
    pid=$LAST_PID
    check "$fl: our client -> their server" "$fl-b-client" "$EXPECTED" "$LOG_DIR/$fl-their-server.err" \
      "$BIN_DIR/rpc-client" --queue "$q" --timeout "$CALL_TIMEOUT" "${NS[@]}"
    stop_pid "$pid" "$STOP_TIMEOUT" || true
  else
    fail "$fl: our client -> their server (their server not ready)" "$LOG_DIR/$fl-their-server.err"
  fi
}

# run_own_declaration FLAVOUR [SERVER-FLAGS...]: our server declares a fresh queue; a client
# declaring it as FLAVOUR must be accepted as equivalent (else the broker closes its channel
# with 406).
run_own_declaration() {
  local fl=$1 q="interop-$1-own-$RUN_ID" name="$1: our server's declaration ($*) matches the peer's"
  shift
  QUEUES+=("$q")
  if start_server "$q" "own-$fl-our-server" "$BIN_DIR/rpc-server" "$@"; then
    check "$name" "own-$fl-client" 55 "$LOG_DIR/own-$fl-our-server.err" \
      "$PY" "$PEERS/rpc_client.py" --queue "$q" --declare-"$fl" --timeout "$CALL_TIMEOUT" 10
    stop_pid "$LAST_PID" "$STOP_TIMEOUT" || true
  else
    fail "$name (our server not ready on fresh queue)" "$LOG_DIR/own-$fl-our-server.err"
  fi
}

mkdir -p "$LOG_DIR"
ensure_venv "$PEERS/requirements.txt" # lib.sh: target/py-venv ($PY) with pika
if [[ ! -x $BIN_DIR/rpc-server || ! -x $BIN_DIR/rpc-client ]]; then
  [[ $BIN_DIR == target/release ]] || die "rpc-server/rpc-client not found in RPC_BIN_DIR=$BIN_DIR"
  msg "building release binaries"
  ensure_build_deps
  cargo build --release
fi
xtask --version >/dev/null
msg "run $RUN_ID, logs in $LOG_DIR"
read -r -a flavours <<<"${INTEROP_FLAVOURS:-classic durable quorum}"
for fl in "${flavours[@]}"; do
  case $fl in
    classic | durable | quorum) run_flavour "$fl" ;;
    *) die "INTEROP_FLAVOURS: unknown flavour '$fl' (classic, durable, quorum)" ;;
  esac
done
run_own_declaration durable
[[ " ${flavours[*]} " != *" classic "* ]] || run_own_declaration classic --transient

printf 'interop: %d passed, %d failed\n' "$PASSED" "$FAILED"
((FAILED == 0))
