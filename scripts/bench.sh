#!/usr/bin/env bash
# Benchmarks, all in one run on one broker, printed as one markdown table (also
# saved to target/bench/bench.md), every row with its ratio to an anchor row:
#   (a) echo floor: cargo bench --bench echo_floor (bare amiquip echo), 1/8/64 in flight
#   (b) the tutorial's Python pika client, sequential calls/s (scripts/interop/bench_pika.py)
#   (c) rpc-client bench, 1 in flight, exclusive and direct reply-to   (vs a, b)
#   (d) rpc-client bench, 8 and 64 in flight, exclusive and direct     (vs a)
#   (e) one-shot wall time: rpc-client 30 vs the tutorial client rpc_client.py 30 (median)
#   (f) fib(n) + decimal, n = 10^4..10^7: cargo bench --bench fib vs gmpy2 (best of runs)
#   (g) peak RSS (VmHWM / GNU time %M) of rpc-server idle and after serving, of clients
# The servers are ONE release rpc-server on a fresh queue bench-<uuid> (started with
# scripts/start-servers.sh in a run dir of its own), --prefetch 1 for the sequential
# rows, --prefetch $BENCH_PREFETCH for the in-flight rows; the echo floor uses the
# same prefetch as the row it anchors. Each calls/s row is measured BENCH_REPEAT
# times, anchor and compared rows alternating, and its best run is shown (the
# machine may be busy with other work). Queue and servers are removed on exit.
#
# Env (defaults; BENCH_QUICK=1 is a ~30 s smoke run with the values in brackets):
#   BENCH_REPEAT=2 [1]                   runs of each calls/s row (best shown)
#   BENCH_CALLS=20000 [2000]             sequential calls (echo floor K=1, rpc-client)
#   BENCH_INFLIGHT_CALLS=100000 [5000]   calls per in-flight row
#   BENCH_PY_CALLS=10000 [1000]          calls per Python pika row
#   BENCH_DEPTHS="8 64"                  in-flight depths for (a) and (d)
#   BENCH_PREFETCH=100                   server and echo prefetch for the in-flight rows
#   BENCH_ONESHOT_RUNS=20 [5]            runs of each one-shot client (e)
#   BENCH_FIB_NS="10000 100000 1000000 10000000" [without 10^7]
#   BENCH_BROKER_WAIT=120                seconds to wait for the broker before a retry
# A measurement that fails (say, the broker restarted under it) is retried once after
# the broker answers again. Exits non-zero if a row could not be measured.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || die "usage: $PROG   (no arguments; settings are environment variables, see the header)"

started=$SECONDS
QUICK=${BENCH_QUICK:-0}
[[ $QUICK == 0 || $QUICK == 1 ]] || die "BENCH_QUICK must be 0 or 1, got '$QUICK'"
if ((QUICK)); then
    d_seq=2000 d_inflight=5000 d_py=1000 d_oneshot=5 d_fib="10000 100000 1000000" warmup=200 d_repeat=1
else
    d_seq=20000 d_inflight=100000 d_py=10000 d_oneshot=20 d_fib="10000 100000 1000000 10000000" warmup=500 d_repeat=3
fi
REPEAT=${BENCH_REPEAT:-$d_repeat}
SEQ_CALLS=${BENCH_CALLS:-$d_seq}
INFLIGHT_CALLS=${BENCH_INFLIGHT_CALLS:-$d_inflight}
PY_CALLS=${BENCH_PY_CALLS:-$d_py}
ONESHOT_RUNS=${BENCH_ONESHOT_RUNS:-$d_oneshot}
PREFETCH=${BENCH_PREFETCH:-100}
BROKER_WAIT_SECS=${BENCH_BROKER_WAIT:-120}
read -r -a DEPTHS <<<"${BENCH_DEPTHS:-8 64}"
read -r -a FIB_NS <<<"${BENCH_FIB_NS:-$d_fib}"
for v in REPEAT SEQ_CALLS INFLIGHT_CALLS PY_CALLS ONESHOT_RUNS PREFETCH BROKER_WAIT_SECS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
((PREFETCH <= 65535)) || die "BENCH_PREFETCH must be at most 65535"
((${#DEPTHS[@]} > 0 && ${#FIB_NS[@]} > 0)) || die "BENCH_DEPTHS and BENCH_FIB_NS must not be empty"
for v in "${DEPTHS[@]}" "${FIB_NS[@]}"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || die "BENCH_DEPTHS and BENCH_FIB_NS take positive integers, got '$v'"
done
for v in "${DEPTHS[@]}"; do
    ((v >= 2 && v <= 65535)) || die "in-flight depths must be 2..65535, got $v (1 is the sequential row)"
done

OUT_DIR=target/bench
RUN_ID=$(cat /proc/sys/kernel/random/uuid)
WORK=$OUT_DIR/run-$RUN_ID # raw outputs and server logs; removed after a clean run
QUEUE=bench-$RUN_ID
export RPC_RUN_DIR=$WORK/servers
unset RPC_URIS # start-servers.sh: every server on the one broker of AMQP_URI
RUN_DIR=$RPC_RUN_DIR
PEERS=scripts/interop
CLIENT=$BIN_DIR/rpc-client
mkdir -p "$WORK" "$RUN_DIR"

# ---- cleanup -----------------------------------------------------------------

SERVER_UP=      # a server of ours consumes $QUEUE
QUEUE_USED=     # $QUEUE may exist on the broker
stop_server() {
    [[ -n $SERVER_UP ]] || return 0
    SERVER_UP=
    scripts/stop-servers.sh >>"$WORK/servers.log" 2>&1 || warn "stop-servers.sh failed; see $WORK/servers.log"
}
cleanup() {
    local rc=$?
    stop_server
    if [[ -n $QUEUE_USED ]] && ! py_admin delete "$QUEUE" 2>>"$WORK/admin.err"; then
        warn "could not delete queue $QUEUE (see $WORK/admin.err); delete it by hand"
    fi
    if ((rc == 0)); then
        rm -rf "$WORK"
    else
        msg "raw outputs and server logs kept in $WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers -----------------------------------------------------------------

# py_admin version | delete QUEUE | wait-consumer QUEUE SECS: small broker chores in pika.
py_admin() {
    "$PY" - "$@" <<'EOF'
import os, sys, time, pika
url = os.environ.get("AMQP_URI", "amqp://guest:guest@localhost:5672/")
action = sys.argv[1]
if action == "wait-consumer":
    deadline = time.monotonic() + float(sys.argv[3])
    while True:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(url))
            try:
                q = conn.channel().queue_declare(queue=sys.argv[2], passive=True)
                if q.method.consumer_count > 0:
                    sys.exit(0)
            finally:
                if conn.is_open:
                    conn.close()
        except pika.exceptions.AMQPError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"no consumer on {sys.argv[2]} within {sys.argv[3]}s")
        time.sleep(0.2)
conn = pika.BlockingConnection(pika.URLParameters(url))
if action == "version":
    p = conn._impl.server_properties
    print(f"{p.get('product', '?')} {p.get('version', '?')} ({p.get('platform', '?')})")
elif action == "delete":
    conn.channel().queue_delete(queue=sys.argv[2])
conn.close()
EOF
}

# ratio A B -> A/B with 2 decimals, or n/a.
ratio() {
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN {
        if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'
}
# lt A B -> succeed if both are numbers and A < B.
lt() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { exit !(a != "" && b != "" && a + 0 < b + 0) }'; }
mib() { awk -v k="${1:-}" 'BEGIN { if (k == "") print "n/a"; else printf "%.1f MiB\n", k / 1024 }'; }
# col FILE N -> field N of the last line of a tab-separated file.
col() { awk -F'\t' -v n="$2" 'END { print $n }' "$1"; }

# attempt ID CMD...: run CMD, stdout to $WORK/ID.out, stderr to $WORK/ID.err. If it
# fails, wait for the broker (and our server's consumer) and try once more.
FAILED_ROWS=()
attempt() {
    local id=$1 try rc
    shift
    for try in 1 2; do
        rc=0
        "$@" >"$WORK/$id.out" 2>"$WORK/$id.err" || rc=$?
        ((rc == 0)) && return 0
        warn "$id: exit $rc; last lines of $WORK/$id.err:"
        tail -n 5 "$WORK/$id.err" | sed 's/^/    /' >&2
        ((try == 1)) || break
        msg "$id: waiting for the broker, then retrying once"
        BROKER_WAIT=$BROKER_WAIT_SECS scripts/broker.sh || break
        if [[ -n $SERVER_UP ]]; then
            py_admin wait-consumer "$QUEUE" 60 || break
        fi
        msg "$id: broker back; retrying"
    done
    FAILED_ROWS+=("$id")
    return 1
}

# Results, by row id, of its best run: rate (calls/s), p50/p99 (ms); errors of all its
# runs; RUNS, the calls/s of every run; RESULT is the display cell.
declare -A RATE=() ERRS=() RUNS=() RESULT=()
# record_tsv ID FILE: read the `rpc-client bench --tsv` columns from FILE into row ID.
record_tsv() {
    local id=$1 f=$2 rate p50 p99 errors
    rate=$(col "$f" 6) p50=$(col "$f" 7) p99=$(col "$f" 9) errors=$(col "$f" 11)
    [[ $rate =~ ^[0-9]+$ ]] || {
        warn "$id: no calls/s in $f"
        return 1
    }
    RUNS[$id]+="${RUNS[$id]:+, }$rate"
    ERRS[$id]=$((${ERRS[$id]:-0} + ${errors:-0}))
    if [[ -z ${RATE[$id]:-} ]] || ((rate > RATE[$id])); then
        RATE[$id]=$rate
        RESULT[$id]="$rate calls/s"
        [[ -z $p50 ]] || RESULT[$id]+=", p50 $p50 ms, p99 $p99 ms"
    fi
}
# result ID: the display cell of a calls/s row.
result() {
    local id=$1
    [[ -n ${RESULT[$id]:-} ]] || {
        printf 'failed'
        return 0
    }
    printf '%s' "${RESULT[$id]}"
    ((REPEAT == 1)) || printf ' (best of runs: %s)' "${RUNS[$id]}"
    ((${ERRS[$id]:-0} == 0)) || printf ', **%s failed calls**' "${ERRS[$id]}"
}

# Peak RSS in kB of a command, via GNU time (RSS_CMD is empty without it).
RSS_CMD=()
declare -A RSS=()
# rss_of ID: the %M that GNU time wrote to $WORK/ID.rss (its last line).
rss_of() {
    if [[ -s $WORK/$1.rss ]]; then tail -n 1 "$WORK/$1.rss" | tr -dc '0-9'; fi
}

server_pid() { cat "$RUN_DIR/server-1.pid" 2>/dev/null || true; }
vmhwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# start_server PREFETCH: one rpc-server on $QUEUE.
start_server() {
    QUEUE_USED=1
    # -q: no per-request log line, as a server run for throughput would be (README).
    scripts/start-servers.sh 1 -- -q --queue "$QUEUE" --prefetch "$1" >>"$WORK/servers.log" 2>&1 || {
        cat "$WORK/servers.log" >&2
        die "could not start rpc-server (prefetch $1)"
    }
    SERVER_UP=1
}

# ---- setup -------------------------------------------------------------------

MODE=full
((QUICK == 0)) || MODE="quick smoke"
msg "run $RUN_ID ($MODE), queue $QUEUE, raw outputs in $WORK"
scripts/broker.sh
ensure_venv "$PEERS/requirements.txt" "$PEERS/requirements-bench.txt"

if [[ -x /usr/bin/time ]] && /usr/bin/time -f %M -o /dev/null true 2>/dev/null; then
    RSS_CMD=(/usr/bin/time -f %M -o)
elif ((!QUICK)) && apt_install time && [[ -x /usr/bin/time ]]; then
    RSS_CMD=(/usr/bin/time -f %M -o)
else
    warn "GNU time (/usr/bin/time) missing: client RSS rows will read n/a"
fi
HYPERFINE=
if command -v hyperfine >/dev/null 2>&1; then
    HYPERFINE=hyperfine
elif ((!QUICK)) && apt_install hyperfine && command -v hyperfine >/dev/null 2>&1; then
    HYPERFINE=hyperfine
else
    msg "hyperfine not available: timing one-shot runs with a shell loop"
fi

msg "building (cargo build --release; cargo bench --no-run for echo_floor and fib)"
{
    cargo build --release &&
        cargo bench -p rpc-client --features test-support --bench echo_floor --no-run &&
        cargo bench -p rpc-server --bench fib --no-run
} >"$WORK/build.log" 2>&1 || {
    tail -n 30 "$WORK/build.log" >&2
    die "build failed (log: $WORK/build.log)"
}

mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
broker_version=$(py_admin version 2>>"$WORK/admin.err") || broker_version="unknown (see $WORK/admin.err)"
py_versions=$("$PY" -c 'import sys, pika, gmpy2
print(f"Python {sys.version.split()[0]}, pika {pika.__version__}, gmpy2 {gmpy2.version()} ({gmpy2.mp_version()})")')
MACHINE="$(nproc) cores (nproc), ${model:-unknown CPU}, $(awk -v k="$mem_kb" 'BEGIN { printf "%.1f", k / 1048576 }') GiB RAM, Linux $(uname -r)"
SOFTWARE="$broker_version; $(rustc --version); $py_versions"
msg "machine: $MACHINE"
msg "software: $SOFTWARE"

# ---- runners -----------------------------------------------------------------

# Each runner: ID RUN ... ; raw output in $WORK/ID.RUN.out, best run kept in row ID.
echo_floor() { # ID RUN IN-FLIGHT PREFETCH CALLS
    msg "$1 (run $2/$REPEAT): echo floor, $3 in flight, prefetch $4, $5 calls"
    attempt "$1.$2" cargo bench -q -p rpc-client --features test-support --bench echo_floor -- \
        --calls "$5" --in-flight "$3" --prefetch "$4" || return 0
    record_tsv "$1" "$WORK/$1.$2.out" || true
}
pika_bench() { # ID RUN REPLY-QUEUE CALLS
    local extra=()
    [[ $3 == direct ]] && extra=(--direct-reply-to)
    msg "$1 (run $2/$REPEAT): Python pika tutorial client, sequential, $3 reply queue, $4 calls"
    attempt "$1.$2" "$PY" "$PEERS/bench_pika.py" --queue "$QUEUE" --calls "$4" \
        --warmup "$warmup" ${extra[@]+"${extra[@]}"} || return 0
    record_tsv "$1" "$WORK/$1.$2.out" || true
}
client_bench() { # ID RUN IN-FLIGHT REPLY-QUEUE CALLS
    local rss=() v
    ((${#RSS_CMD[@]} == 0)) || rss=("${RSS_CMD[@]}" "$WORK/$1.$2.rss")
    msg "$1 (run $2/$REPEAT): rpc-client bench, $3 in flight, $4 reply queue, $5 calls"
    attempt "$1.$2" ${rss[@]+"${rss[@]}"} "$CLIENT" --queue "$QUEUE" --reply-queue "$4" \
        bench --calls "$5" --in-flight "$3" --n 30 --warmup "$warmup" --tsv || return 0
    record_tsv "$1" "$WORK/$1.$2.out" || true
    v=$(rss_of "$1.$2")
    if [[ -n $v ]] && { [[ -z ${RSS[$1]:-} ]] || ((v > RSS[$1])); }; then RSS[$1]=$v; fi
}

# ---- sequential rows on a prefetch-1 server: (a) K=1, (b), (c), (e) ------------------

start_server 1
sleep 1 # idle a moment before reading the idle peak
RSS[server_idle]=$(vmhwm "$(server_pid)")

for ((run = 1; run <= REPEAT; run++)); do
    echo_floor a1 "$run" 1 1 "$SEQ_CALLS"
    for rq in exclusive direct; do
        pika_bench "b-$rq" "$run" "$rq" "$PY_CALLS"
        client_bench "c-$rq" "$run" 1 "$rq" "$SEQ_CALLS"
    done
done

# (e) one-shot processes: median wall time.
ONESHOT_OURS=("$CLIENT" --queue "$QUEUE" 30)
ONESHOT_DIRECT=("$CLIENT" --reply-queue direct --queue "$QUEUE" 30)
ONESHOT_PY=("$PY" "$PEERS/rpc_client.py" --queue "$QUEUE" 30)
declare -A MEDIAN_MS=()
oneshot_loop() { # ID CMD...: median ms over ONESHOT_RUNS runs (after 2 untimed ones)
    local id=$1 i t0 t1 times=()
    shift
    for ((i = -2; i < ONESHOT_RUNS; i++)); do
        t0=$EPOCHREALTIME
        "$@" >/dev/null || return 1
        t1=$EPOCHREALTIME
        ((i < 0)) || times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) * 1000 }')")
    done
    MEDIAN_MS[$id]=$(printf '%s\n' "${times[@]}" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
}
msg "e: one-shot wall time, $ONESHOT_RUNS runs each ($([[ -n $HYPERFINE ]] && echo hyperfine || echo shell loop))"
if [[ -n $HYPERFINE ]]; then
    if attempt e-hyperfine "$HYPERFINE" -N --style basic --warmup 2 --runs "$ONESHOT_RUNS" \
        --export-json "$WORK/e.json" -n ours "${ONESHOT_OURS[*]}" \
        -n ours-direct "${ONESHOT_DIRECT[*]}" -n python "${ONESHOT_PY[*]}"; then
        while read -r name ms; do
            MEDIAN_MS[e-$name]=$ms
        done < <("$PY" -c 'import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(r["command"], "%.3f" % (r["median"] * 1e3))' "$WORK/e.json")
    fi
else
    attempt e-ours oneshot_loop e-ours "${ONESHOT_OURS[@]}" || true
    attempt e-ours-direct oneshot_loop e-ours-direct "${ONESHOT_DIRECT[@]}" || true
    attempt e-python oneshot_loop e-python "${ONESHOT_PY[@]}" || true
fi
# ... and their peak RSS (largest of 3 runs).
if ((${#RSS_CMD[@]})); then
    for who in ours python; do
        if [[ $who == ours ]]; then cmd=("${ONESHOT_OURS[@]}"); else cmd=("${ONESHOT_PY[@]}"); fi
        best=
        for i in 1 2 3; do
            attempt "g-$who-$i" "${RSS_CMD[@]}" "$WORK/g-$who-$i.rss" "${cmd[@]}" || continue
            v=$(rss_of "g-$who-$i")
            [[ -n $v ]] || continue
            if [[ -z $best ]] || ((v > best)); then best=$v; fi
        done
        RSS[oneshot-$who]=$best
    done
fi
RSS[server_seq]=$(vmhwm "$(server_pid)")
stop_server

# ---- (d) in-flight rows on a prefetch-$PREFETCH server -----------------------------

start_server "$PREFETCH"
for ((run = 1; run <= REPEAT; run++)); do
    for k in "${DEPTHS[@]}"; do
        echo_floor "a$k" "$run" "$k" "$PREFETCH" "$INFLIGHT_CALLS"
        for rq in exclusive direct; do
            client_bench "d$k-$rq" "$run" "$k" "$rq" "$INFLIGHT_CALLS"
        done
    done
done
RSS[server_inflight]=$(vmhwm "$(server_pid)")
stop_server

# ---- (f) fib -------------------------------------------------------------------------

msg "f: fib(n) + decimal for n = ${FIB_NS[*]}: cargo bench --bench fib, then gmpy2"
attempt f-ours cargo bench -q -p rpc-server --bench fib -- "${FIB_NS[@]}" || true
# The optional GMP build (LGPL; off by default). Its first build compiles GMP (minutes).
if ((!QUICK)); then
    attempt f-gmp cargo bench -q -p rpc-server --features gmp --bench fib -- "${FIB_NS[@]}" || true
fi
attempt f-gmpy2 "$PY" "$PEERS/fib_gmpy2.py" "${FIB_NS[@]}" || true

# ---- the table -------------------------------------------------------------------------

ROWS=()
FLAGS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 |"); } # ID MEASUREMENT SETUP RESULT RATIO
cell() { result "$1"; }
floor_setup() { printf 'echo thread (amiquip), prefetch %s, exclusive reply queue' "$1"; }
ours_setup() { printf 'rpc-server ×1 (release, -q), prefetch %s' "$1"; }
# below_floor ID ANCHOR: flag row ID if its calls/s are below 0.95 × ANCHOR's.
below_floor() {
    local r
    r=$(awk -v a="${RATE[$1]:-}" -v b="${RATE[$2]:-}" 'BEGIN { if (a != "" && b + 0 > 0) printf "%.3f", a / b }')
    if [[ -n $r ]] && lt "$r" 0.95; then
        FLAGS+=("$1: $r × the echo floor $2 (below 0.95)")
    fi
}
label() { case $1 in 1) echo "1 in flight (sequential)" ;; *) echo "$1 in flight" ;; esac; }

row a1 "echo floor, $(label 1), $SEQ_CALLS calls" "$(floor_setup 1)" "$(cell a1)" "anchor"
for k in "${DEPTHS[@]}"; do
    row "a$k" "echo floor, $(label "$k"), $INFLIGHT_CALLS calls" "$(floor_setup "$PREFETCH")" "$(cell "a$k")" "anchor"
done
for rq in exclusive direct; do
    row "b-$rq" "tutorial Python client (pika), sequential, $rq reply queue, $PY_CALLS calls" \
        "$(ours_setup 1)" "$(cell "b-$rq")" "$(ratio "${RATE[b-$rq]:-}" "${RATE[a1]:-}") × a1"
done
for rq in exclusive direct; do
    id=c-$rq
    row "$id" "rpc-client bench, $(label 1), $rq reply queue, $SEQ_CALLS calls" "$(ours_setup 1)" "$(cell "$id")" \
        "$(ratio "${RATE[$id]:-}" "${RATE[a1]:-}") × a1; $(ratio "${RATE[$id]:-}" "${RATE[b-$rq]:-}") × b-$rq"
    below_floor "$id" a1
    lt "${RATE[$id]:-}" "${RATE[b-$rq]:-}" && FLAGS+=("$id: slower than the Python tutorial client b-$rq")
done
for k in "${DEPTHS[@]}"; do
    for rq in exclusive direct; do
        id=d$k-$rq
        row "$id" "rpc-client bench, $(label "$k"), $rq reply queue, $INFLIGHT_CALLS calls" \
            "$(ours_setup "$PREFETCH")" "$(cell "$id")" "$(ratio "${RATE[$id]:-}" "${RATE[a$k]:-}") × a$k"
        below_floor "$id" "a$k"
    done
done
for id in "${!ERRS[@]}"; do
    ((ERRS[$id] == 0)) || FLAGS+=("$id: ${ERRS[$id]} failed calls")
done
how=$([[ -n $HYPERFINE ]] && echo "hyperfine" || echo "shell loop")
ms_cell() { [[ -n ${1:-} ]] && printf '%s ms' "$1" || printf 'failed'; }
row e-ours "one-shot \`rpc-client 30\`: median wall time of $ONESHOT_RUNS runs ($how)" "$(ours_setup 1)" \
    "$(ms_cell "${MEDIAN_MS[e-ours]:-}")" "$(ratio "${MEDIAN_MS[e-ours]:-}" "${MEDIAN_MS[e-python]:-}") × e-python (lower is better)"
row e-ours-direct "one-shot \`rpc-client --reply-queue direct 30\`: median wall time of $ONESHOT_RUNS runs ($how)" \
    "$(ours_setup 1)" "$(ms_cell "${MEDIAN_MS[e-ours-direct]:-}")" \
    "$(ratio "${MEDIAN_MS[e-ours-direct]:-}" "${MEDIAN_MS[e-python]:-}") × e-python (lower is better)"
row e-python "one-shot \`python rpc_client.py 30\` (tutorial client): median of $ONESHOT_RUNS runs" "$(ours_setup 1)" \
    "$(ms_cell "${MEDIAN_MS[e-python]:-}")" "anchor"
lt "${MEDIAN_MS[e-python]:-}" "${MEDIAN_MS[e-ours]:-}" && FLAGS+=("e-ours: slower than the Python one-shot client")

# fib: one row per n, ours beside gmpy2's.
for n in "${FIB_NS[@]}"; do
    ours=$(awk -F'\t' -v n="$n" '$1 == n' "$WORK/f-ours.out" 2>/dev/null || true)
    gmp=$(awk -F'\t' -v n="$n" '$1 == n' "$WORK/f-gmpy2.out" 2>/dev/null || true)
    if [[ -z $ours || -z $gmp ]]; then
        row "f-$n" "fib($n) + decimal" "best of runs" "failed" "n/a"
        continue
    fi
    IFS=$'\t' read -r _ digits oc od ot <<<"$ours"
    IFS=$'\t' read -r _ _ gc gd gt <<<"$gmp"
    runs="best of $(awk -v n="$n" 'BEGIN { print (n <= 100000) ? 20 : (n <= 1000000) ? 5 : 2 }') runs each"
    row "f-$n" "fib($n) + to decimal ($digits digits): ours (dashu-int, default) vs gmpy2 (GMP)" \
        "$runs" "ours $ot ms ($oc + $od); gmpy2 $gt ms ($gc + $gd)" \
        "$(ratio "$ot" "$gt") × gmpy2 (compute $(ratio "$oc" "$gc"), decimal $(ratio "$od" "$gd"); lower is better)"
    withgmp=$(awk -F'\t' -v n="$n" '$1 == n' "$WORK/f-gmp.out" 2>/dev/null || true)
    if [[ -n $withgmp ]]; then
        IFS=$'\t' read -r _ _ xc xd xt <<<"$withgmp"
        row "f-$n-gmp" "fib($n) + to decimal: ours built with --features gmp vs gmpy2" \
            "$runs" "ours $xt ms ($xc + $xd); gmpy2 $gt ms" \
            "$(ratio "$xt" "$gt") × gmpy2 (compute $(ratio "$xc" "$gc"), decimal $(ratio "$xd" "$gd"))"
    fi
done

# peak RSS
biggest=
for id in "${!RSS[@]}"; do
    [[ $id == [cd]* && -n ${RSS[$id]} ]] || continue
    if [[ -z $biggest ]] || ((RSS[$id] > RSS[$biggest])); then biggest=$id; fi
done
row g-server-idle "peak RSS (VmHWM) of rpc-server, idle after start" "$(ours_setup 1)" "$(mib "${RSS[server_idle]:-}")" "anchor"
row g-server-seq "peak RSS of that rpc-server after rows b, c, e" "$(ours_setup 1)" "$(mib "${RSS[server_seq]:-}")" \
    "$(ratio "${RSS[server_seq]:-}" "${RSS[server_idle]:-}") × g-server-idle"
row g-server-inflight "peak RSS of rpc-server after the in-flight rows d" "$(ours_setup "$PREFETCH")" \
    "$(mib "${RSS[server_inflight]:-}")" "$(ratio "${RSS[server_inflight]:-}" "${RSS[server_idle]:-}") × g-server-idle"
row g-oneshot-ours "peak RSS of one-shot \`rpc-client 30\` (GNU time %M, max of 3)" "$(ours_setup 1)" \
    "$(mib "${RSS[oneshot-ours]:-}")" "$(ratio "${RSS[oneshot-ours]:-}" "${RSS[oneshot-python]:-}") × g-oneshot-python"
row g-oneshot-python "peak RSS of one-shot \`python rpc_client.py 30\` (tutorial client)" "$(ours_setup 1)" \
    "$(mib "${RSS[oneshot-python]:-}")" "anchor"
row g-client-bench "peak RSS of the largest rpc-client bench run (${biggest:-none})" "as in ${biggest:-n/a}" \
    "$(mib "${RSS[${biggest:-none}]:-}")" "$(ratio "${RSS[${biggest:-none}]:-}" "${RSS[oneshot-ours]:-}") × g-oneshot-ours"

elapsed=$((SECONDS - started))
((${#FAILED_ROWS[@]} == 0)) || FLAGS+=("not measured (failed twice): ${FAILED_ROWS[*]}")
{
    printf '# rabbit-rpc bench (%s run), %s\n\n' "$MODE" "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf -- '- machine: %s\n' "$MACHINE"
    printf -- '- software: %s\n' "$SOFTWARE"
    printf -- '- broker: %s, one queue per run; fib(30) per call; warm-up %s calls per row\n' \
        "${AMQP_URI:+AMQP_URI (password hidden)}${AMQP_URI:-amqp://guest:****@localhost:5672}" "$warmup"
    printf -- '- ratio: this row ÷ the anchor named (calls/s: higher is better; ms, MiB: lower is better)\n\n'
    printf '| row | measurement | setup | result | ratio |\n|---|---|---|---|---|\n'
    printf '%s\n' "${ROWS[@]}"
    printf '\n'
    if ((${#FLAGS[@]})); then
        printf 'Flags:\n'
        printf -- '- %s\n' "${FLAGS[@]}"
    else
        printf 'Flags: none (every rpc-client row at least 0.95 × its echo floor, no errors).\n'
    fi
    printf '\nrun time: %d s\n' "$elapsed"
} >"$WORK/bench.md"
cp "$WORK/bench.md" "$OUT_DIR/bench.md"
cat "$OUT_DIR/bench.md"
msg "table saved to $OUT_DIR/bench.md ($elapsed s)"
((${#FAILED_ROWS[@]} == 0)) || die "some rows could not be measured: ${FAILED_ROWS[*]}"
