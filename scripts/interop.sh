#!/usr/bin/env bash
# Interop test: our rpc-server / rpc-client against RabbitMQ tutorial-six peers
# written in Python with pika (scripts/interop/rpc_{server,client}.py).
#
# For each queue flavour on its own queue interop-<flavour>-<uuid> (classic: the original
# tutorial's non-durable queue; durable: classic and durable; quorum: today's tutorial's):
#   (a) their client -> our server (own reply queue, then direct reply-to);
#       the queue is declared first by the Python server, so ours meets it existing;
#   (b) our client -> their server;
#   (c) their client in raw mode (rpc_client.py --raw) -> our server serving a command,
#       rpc-server -- tr a-z A-Z (ASCII text and a body with spaces and UTF-8);
#   (d) our client's `call` (raw bodies) -> their Fibonacci server and -> our command server.
# Plus: a failing command's error reply (x-rpc-error: exec-failed, with its exit status and
# last stderr line) as their raw client and our client's `call` (exit 5) see it.
# Plus: W3C trace context with pika instrumented by OpenTelemetry (scripts/interop/otel_peer.py,
# opentelemetry-instrumentation-pika, spans recorded in memory): their client -> our server and
# our client -> their server, one trace id end to end (spans, reply traceparent, our logs).
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
# Raw bodies for the command server (tr a-z A-Z works on bytes: only ASCII letters change).
RAW_BODIES=(hello 'grüße aus Köln, 2 × 3')
RAW_EXPECTED=$'HELLO\nGRüßE AUS KöLN, 2 × 3'

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

# start_server QUEUE LOGNAME CMD...: start the server CMD (which must consume QUEUE) in the
# background (its pid in LAST_PID); 0 once it is the one consumer of QUEUE, 1 if it died or
# the deadline passed.
LAST_PID=
start_server() {
  local q=$1 log=$2
  shift 2
  "$@" >"$LOG_DIR/$log.out" 2>"$LOG_DIR/$log.err" &
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

# check_error NAME LOGNAME SERVER_LOG WANT_RC WANT_TEXT CMD...: run a client that must exit
# WANT_RC with WANT_TEXT in its stderr.
check_error() {
  local name=$1 logname=$2 server_log=$3 want_rc=$4 want=$5 rc=0
  shift 5
  timeout 120 "$@" >"$LOG_DIR/$logname.out" 2>"$LOG_DIR/$logname.err" || rc=$?
  if ((rc == want_rc)) && grep -qF -- "$want" "$LOG_DIR/$logname.err"; then
    pass "$name"
  else
    fail "$name (exit $rc, want $want_rc and '$want' on stderr)" "$LOG_DIR/$logname.err" "$server_log"
  fi
}

run_flavour() {
  local fl=$1 q="interop-$1-$RUN_ID" pid rc=0 theirs=("$PY" "$PEERS/rpc_server.py")
  QUEUES+=("$q")
  [[ $fl == classic ]] || theirs+=("--$fl")

  # (a) their client -> our server; the tutorial server declares the queue first.
  if start_server "$q" "$fl-predeclare" "${theirs[@]}" --queue "$q"; then
    stop_pid "$LAST_PID" "$STOP_TIMEOUT" || true
  else
    fail "$fl: tutorial server declares $q" "$LOG_DIR/$fl-predeclare.err"
  fi
  local a1="$fl: their client -> our server"
  local a2="$fl: their client (direct reply-to) -> our server"
  local a3="$fl: our server exits 0 on SIGTERM"
  if start_server "$q" "$fl-our-server" "$BIN_DIR/rpc-server" --queue "$q"; then
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

  # (b) our client -> their server, and (d) our client's `call` -> their server
  local b1="$fl: our client -> their server"
  local d1="$fl: our client (call, raw body 30) -> their server"
  if start_server "$q" "$fl-their-server" "${theirs[@]}" --queue "$q"; then
    pid=$LAST_PID
    check "$b1" "$fl-b-client" "$EXPECTED" "$LOG_DIR/$fl-their-server.err" \
      "$BIN_DIR/rpc-client" --queue "$q" --timeout "$CALL_TIMEOUT" "${NS[@]}"
    check "$d1" "$fl-d-client-call" 832040 "$LOG_DIR/$fl-their-server.err" \
      "$BIN_DIR/rpc-client" --queue "$q" --timeout "$CALL_TIMEOUT" call 30
    stop_pid "$pid" "$STOP_TIMEOUT" || true
  else
    fail "$b1 (their server not ready)" "$LOG_DIR/$fl-their-server.err"
    fail "$d1 (their server not ready)"
  fi

  # (c) their client, raw -> our command server, and (d) our client's `call` -> it
  local c1="$fl: their client (raw) -> our server -- tr a-z A-Z"
  local c2="$fl: their client (raw, direct reply-to) -> our server -- tr a-z A-Z"
  local c3="$fl: our command server exits 0 on SIGTERM"
  local d2="$fl: our client (call) -> our server -- tr a-z A-Z"
  local d3="$fl: our client (call -, body on stdin) -> our server -- tr a-z A-Z"
  local log="$LOG_DIR/$fl-our-cmd-server.err"
  if start_server "$q" "$fl-our-cmd-server" "$BIN_DIR/rpc-server" --queue "$q" -- tr a-z A-Z; then
    pid=$LAST_PID
    check "$c1" "$fl-c-client" "$RAW_EXPECTED" "$log" \
      "$PY" "$PEERS/rpc_client.py" --raw --queue "$q" --timeout "$CALL_TIMEOUT" "${RAW_BODIES[@]}"
    check "$c2" "$fl-c-client-drt" "$RAW_EXPECTED" "$log" \
      "$PY" "$PEERS/rpc_client.py" --raw --queue "$q" --direct-reply-to --timeout "$CALL_TIMEOUT" "${RAW_BODIES[@]}"
    check "$d2" "$fl-d-call" "$RAW_EXPECTED" "$log" \
      "$BIN_DIR/rpc-client" --queue "$q" --timeout "$CALL_TIMEOUT" call "${RAW_BODIES[@]}"
    check "$d3" "$fl-d-call-stdin" "${RAW_EXPECTED#*$'\n'}" "$log" \
      "$BIN_DIR/rpc-client" --queue "$q" --timeout "$CALL_TIMEOUT" call - < <(printf '%s' "${RAW_BODIES[1]}")
    rc=0
    stop_pid "$pid" "$STOP_TIMEOUT" || rc=$?
    if ((rc == 0)); then pass "$c3"; else fail "$c3 (exit $rc)" "$log"; fi
  else
    local name
    for name in "$c1" "$c2" "$c3"; do fail "$name (our command server not ready)" "$log"; done
    for name in "$d2" "$d3"; do
      fail "$name (our command server not ready)"
    done
  fi
}

# run_own_declaration FLAVOUR [SERVER-FLAGS...]: our server declares a fresh queue; a client
# declaring it as FLAVOUR must be accepted as equivalent (else the broker closes its channel
# with 406).
run_own_declaration() {
  local fl=$1 q="interop-$1-own-$RUN_ID" name="$1: our server's declaration ($*) matches the peer's"
  shift
  QUEUES+=("$q")
  if start_server "$q" "own-$fl-our-server" "$BIN_DIR/rpc-server" --queue "$q" "$@"; then
    check "$name" "own-$fl-client" 55 "$LOG_DIR/own-$fl-our-server.err" \
      "$PY" "$PEERS/rpc_client.py" --queue "$q" --declare-"$fl" --timeout "$CALL_TIMEOUT" 10
    stop_pid "$LAST_PID" "$STOP_TIMEOUT" || true
  else
    fail "$name (our server not ready on fresh queue)" "$LOG_DIR/own-$fl-our-server.err"
  fi
}

# run_error_reply: our server serving a command that fails; clients get an error reply.
run_error_reply() {
  local q="interop-error-$RUN_ID" log="$LOG_DIR/error-our-server.err"
  local e1="error reply: their client (raw) <- our server -- failing command"
  local e2="error reply: our client (call) <- our server -- failing command"
  local fails=(sh -c 'cat >/dev/null; echo "no such record" >&2; exit 3')
  QUEUES+=("$q")
  if start_server "$q" error-our-server "$BIN_DIR/rpc-server" --queue "$q" -- "${fails[@]}"; then
    check_error "$e1" error-client "$log" 5 \
      "error reply (x-rpc-error: exec-failed): the command exited with status 3: no such record" \
      "$PY" "$PEERS/rpc_client.py" --raw --queue "$q" --timeout "$CALL_TIMEOUT" x
    check_error "$e2" error-call "$log" 5 "no such record" \
      "$BIN_DIR/rpc-client" --queue "$q" --timeout "$CALL_TIMEOUT" call x
    stop_pid "$LAST_PID" "$STOP_TIMEOUT" || true
  else
    fail "$e1 (our server not ready)" "$log"
    fail "$e2 (our server not ready)"
  fi
}

# wait_exit PID SECS: the exit status of our child PID, which must end by itself within SECS
# (else it is stopped and 124 returned).
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2 + 1)) rc=0
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    stop_pid "$pid" 1 || true
    return 124
  fi
  wait "$pid" || rc=$?
  return "$rc"
}

# run_otel: trace context end to end with OpenTelemetry-instrumented pika peers.
run_otel() {
  local q="interop-otel-$RUN_ID" log="$LOG_DIR/otel-our-server.err" tid out rc
  local o1="trace context: their instrumented client -> our server, one trace"
  local o2="trace context: our client (TRACEPARENT) -> their instrumented server, one trace"
  local parent_tid=0af7651916cd43dd8448eb211c80319c
  QUEUES+=("$q")
  if start_server "$q" otel-our-server "$BIN_DIR/rpc-server" --queue "$q"; then
    # The peer checks its spans and the replies' traceparent; we check our server's log.
    rc=0
    out=$(timeout 120 "$PY" "$PEERS/otel_peer.py" client --queue "$q" --timeout "$CALL_TIMEOUT" \
      10 30 2>"$LOG_DIR/otel-client.err") || rc=$?
    stop_pid "$LAST_PID" "$STOP_TIMEOUT" || true
    tid=$(sed -n 's/^trace \([0-9a-f]\{32\}\)$/\1/p' "$LOG_DIR/otel-client.err")
    if ((rc == 0)) && [[ $out == $'55\n832040' && -n $tid ]] &&
      (($(grep -cF "(trace $tid)" "$log") == 2)); then
      pass "$o1"
    else
      fail "$o1 (exit $rc, got: ${out//$'\n'/ }, trace '$tid')" "$LOG_DIR/otel-client.err" "$log"
    fi
  else
    fail "$o1 (our server not ready)" "$log"
  fi
  if start_server "$q" otel-their-server "$PY" "$PEERS/otel_peer.py" server --queue "$q" --count 1; then
    local pid=$LAST_PID
    rc=0
    out=$(TRACEPARENT=00-$parent_tid-b7ad6b7169203331-01 timeout 120 "$BIN_DIR/rpc-client" \
      --queue "$q" --timeout "$CALL_TIMEOUT" call --json 10 2>"$LOG_DIR/otel-call.err") || rc=$?
    printf '%s\n' "$out" >"$LOG_DIR/otel-call.out"
    # Their server exits after the one request, printing the trace id its spans share.
    wait_exit "$pid" "$STOP_TIMEOUT" || rc=$?
    tid=$(cat "$LOG_DIR/otel-their-server.out")
    if ((rc == 0)) && [[ $tid == "$parent_tid" && $out == *"\"trace_id\": \"$parent_tid\""* &&
      $out == *"\"traceparent\": \"00-$parent_tid-"* && $out == *'"body": "55"'* ]]; then
      pass "$o2"
    else
      fail "$o2 (exit $rc, their trace '$tid', got: $out)" "$LOG_DIR/otel-call.err" "$LOG_DIR/otel-their-server.err"
    fi
  else
    fail "$o2 (their server not ready)" "$LOG_DIR/otel-their-server.err"
  fi
}

mkdir -p "$LOG_DIR"
# lib.sh: target/py-venv ($PY) with pika, and OpenTelemetry for run_otel
ensure_venv "$PEERS/requirements.txt" "$PEERS/requirements-otel.txt"
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
run_error_reply
run_otel
[[ " ${flavours[*]} " != *" classic "* ]] || run_own_declaration classic --transient

printf 'interop: %d passed, %d failed\n' "$PASSED" "$FAILED"
((FAILED == 0))
