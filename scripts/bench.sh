#!/usr/bin/env bash
# Benchmarks, all in one run on one broker, printed as one markdown table (also saved to
# target/bench/bench.md; made by `xtask bench-table` from the facts the run collects in
# facts.tsv), every row with its ratio to an anchor row:
#   (a) echo floor: cargo bench --bench echo_floor (bare amiquip echo), 1/8/64 in flight;
#       a<K>-confirm the same echo with --confirm (replies published with publisher confirms,
#       each request acked after its reply's confirm: one confirmed publish per call, as
#       rpc-client's requests have, and rpc-server --confirm-replies)
#   (b) the tutorial's Python pika client, sequential calls/s (scripts/interop/bench_pika.py)
#   (c) rpc-client bench, 1 in flight, exclusive and direct reply-to   (vs a, a-confirm, b)
#   (d) rpc-client bench, 8 and 64 in flight, exclusive and direct     (vs a, a-confirm)
#   (e) one-shot wall time: rpc-client 30 vs the tutorial client rpc_client.py 30 (median)
#   (f) fib(n) + decimal, n = 10^4..10^7: cargo bench --bench fib vs gmpy2 (best of runs)
#   (g) peak RSS (VmHWM / GNU time %M) of rpc-server idle and after serving, of clients
#   (h) the cost of a process per request: rpc-client bench --n 30 against rpc-server serving
#       `-- cat` (which echoes the body 30, a valid decimal reply) vs the Fibonacci server:
#       h1-* sequential (prefetch 1), h8-* 8 in flight (prefetch 8), h8-cat-w2 with --workers 2
# The servers of (a)-(g) are ONE release rpc-server on a fresh queue bench-<uuid> (started
# with scripts/start-servers.sh in a run dir of its own), --prefetch 1 for the sequential
# rows, --prefetch $BENCH_PREFETCH for the in-flight rows; the echo floor uses the
# same prefetch as the row it anchors. Those of (h) run side by side, each on a queue
# bench-<uuid>-<row> of its own. Each calls/s row is measured BENCH_REPEAT
# times, anchor and compared rows alternating, and its best run is shown (the
# machine may be busy with other work). Queues and servers are removed on exit.
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
#   BENCH_H_CALLS=2000 [300]             calls per sequential (h) row (a process per call)
#   BENCH_H_INFLIGHT_CALLS=4000 [600]    calls per in-flight (h) row
#   BENCH_ONLY=abcdefgh                  measure only these row groups, e.g. BENCH_ONLY=h
#   BENCH_BROKER_WAIT=120                seconds to wait for the broker before a retry
# A measurement that fails (say, the broker restarted under it) is retried once after
# the broker answers again. Exits non-zero if a row could not be measured.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || die "usage: $PROG   (no arguments; settings are environment variables, see the header)"

started=$SECONDS
QUICK='' warmup='' REPEAT='' SEQ_CALLS='' INFLIGHT_CALLS='' PY_CALLS='' ONESHOT_RUNS='' PREFETCH=''
BROKER_WAIT_SECS='' DEPTHS=() FIB_NS=() H_SEQ_CALLS='' H_INFLIGHT_CALLS='' ONLY=
settings=$(xtask bench-settings) || exit 1 # checked numbers: shell assignments of the above
eval "$settings"

OUT_DIR=target/bench
RUN_ID=$(cat /proc/sys/kernel/random/uuid)
WORK=$OUT_DIR/run-$RUN_ID # raw outputs and server logs; removed after a clean run
QUEUE=bench-$RUN_ID
unset RPC_URIS # start-servers.sh: every server on the one broker of AMQP_URI
RUN_DIR=$WORK/servers # of the server on $QUEUE; those of (h) in $RUN_DIR-<row>
PEERS=scripts/interop
CLIENT=$BIN_DIR/rpc-client
mkdir -p "$WORK" "$RUN_DIR"

# ---- cleanup -----------------------------------------------------------------

SERVERS_UP=()   # run dir:queue of each server of ours now running
QUEUES_USED=()  # queues that may exist on the broker
stop_servers() {
    local s
    for s in ${SERVERS_UP[@]+"${SERVERS_UP[@]}"}; do
        RPC_RUN_DIR=${s%%:*} scripts/stop-servers.sh >>"$WORK/servers.log" 2>&1 ||
            warn "stop-servers.sh failed; see $WORK/servers.log"
    done
    SERVERS_UP=()
}
cleanup() {
    local rc=$?
    stop_servers
    if ((${#QUEUES_USED[@]})) && ! xtask queue delete "${QUEUES_USED[@]}"; then
        warn "could not delete queues ${QUEUES_USED[*]}; delete them by hand"
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

# fact KIND ID VALUE...: one line of the facts xtask bench-table makes the report of.
fact() { (IFS=$'\t' && printf '%s\n' "$*") >>"$WORK/facts.tsv"; }

# attempt ID CMD...: run CMD, stdout to $WORK/ID.out, stderr to $WORK/ID.err. If it
# fails, wait for the broker (and our server's consumer) and try once more.
FAILED_ROWS=()
attempt() {
    local id=$1 try rc s
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
        for s in ${SERVERS_UP[@]+"${SERVERS_UP[@]}"}; do
            xtask queue wait-consumers "${s#*:}" 1 --timeout 60 || break 2
        done
        msg "$id: broker back; retrying"
    done
    FAILED_ROWS+=("$id")
    return 1
}

# record_tsv ID FILE: the `--tsv` result line of one run of row ID (calls/s in column 6).
record_tsv() {
    local line
    line=$(tail -n 1 "$2")
    [[ $(cut -f 6 <<<"$line") =~ ^[0-9]+$ ]] || {
        warn "$1: no calls/s in $2"
        return 1
    }
    fact run "$1" "$line"
}
# Peak RSS in kB of a command, via GNU time (RSS_CMD is empty without it).
RSS_CMD=()
# rss ID FILE: the %M that GNU time wrote to FILE (its last line), as a fact.
rss() {
    local kb
    [[ -s $2 ]] && kb=$(tail -n 1 "$2" | tr -dc '0-9') && [[ -n $kb ]] && fact rss "$1" "$kb"
    return 0
}

server_pid() { cat "$RUN_DIR/server-1.pid" 2>/dev/null || true; }
# vmhwm ID: the peak RSS of our server on $QUEUE, as a fact.
vmhwm() {
    local kb
    kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$(server_pid)/status" 2>/dev/null) || kb=
    [[ -z $kb ]] || fact rss "$1" "$kb"
}

# start_server RUN-DIR QUEUE PREFETCH [SERVER-ARGS...]: one rpc-server on QUEUE (SERVER-ARGS
# may end with `-- CMD ARGS...`, a command to serve), its pid file in RUN-DIR.
start_server() {
    local dir=$1 queue=$2 prefetch=$3
    shift 3
    QUEUES_USED+=("$queue")
    # -q: no per-request log line, as a server run for throughput would be (README).
    RPC_RUN_DIR=$dir scripts/start-servers.sh 1 -- -q --queue "$queue" --prefetch "$prefetch" "$@" \
        >>"$WORK/servers.log" 2>&1 || {
        cat "$WORK/servers.log" >&2
        die "could not start rpc-server (queue $queue, prefetch $prefetch${*:+, $*})"
    }
    SERVERS_UP+=("$dir:$queue")
}
# want GROUPS: is any of these row groups (letters a-h) to be measured (BENCH_ONLY)?
want() { [[ $ONLY == *["$1"]* ]]; }

# ---- setup -------------------------------------------------------------------

MODE=full
((QUICK == 0)) || MODE="quick smoke"
msg "run $RUN_ID ($MODE), queue $QUEUE, raw outputs in $WORK"
scripts/broker.sh
ensure_venv "$PEERS/requirements.txt" "$PEERS/requirements-bench.txt"

# works CMD...: CMD runs and succeeds. Full runs install GNU time and hyperfine if they can.
works() { "$@" >/dev/null 2>&1; }
if works /usr/bin/time -f %M -o /dev/null true || { ((!QUICK)) && apt_install time && works /usr/bin/time -f %M -o /dev/null true; }; then
    RSS_CMD=(/usr/bin/time -f %M -o)
else
    warn "GNU time (/usr/bin/time) missing: client RSS rows will read n/a"
fi
HYPERFINE=
if works hyperfine --version || { ((!QUICK)) && apt_install hyperfine && works hyperfine --version; }; then
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
export XTASK_BUILT=1 # cargo build --release built it too (lib.sh)

mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
broker_version=$(xtask broker-version) || broker_version="unknown (see above)"
py_versions=$("$PY" -c 'import sys, pika, gmpy2
print(f"Python {sys.version.split()[0]}, pika {pika.__version__}, gmpy2 {gmpy2.version()} ({gmpy2.mp_version()})")')
MACHINE="$(nproc) cores (nproc), ${model:-unknown CPU}, $(awk -v k="$mem_kb" 'BEGIN { printf "%.1f", k / 1048576 }') GiB RAM, Linux $(uname -r)"
SOFTWARE="$broker_version; $(rustc --version); $py_versions"
msg "machine: $MACHINE"
msg "software: $SOFTWARE"
fact set machine "$MACHINE"
fact set software "$SOFTWARE"
fact set mode "$MODE"
fact set broker "$(xtask mask-uri <<<"${AMQP_URI:-amqp://guest:guest@localhost:5672}")"
for v in warmup:$warmup repeat:$REPEAT seq_calls:$SEQ_CALLS inflight_calls:$INFLIGHT_CALLS \
    py_calls:$PY_CALLS prefetch:$PREFETCH oneshot_runs:$ONESHOT_RUNS "depths:${DEPTHS[*]}" "fib_ns:${FIB_NS[*]}" \
    h_seq_calls:$H_SEQ_CALLS h_inflight_calls:$H_INFLIGHT_CALLS only:$ONLY; do
    fact set "${v%%:*}" "${v#*:}"
done

# ---- runners -----------------------------------------------------------------

# Each runner: ID RUN ... ; raw output in $WORK/ID.RUN.out, best run kept in row ID.
echo_floor() { # ID RUN IN-FLIGHT PREFETCH CALLS [--confirm]
    msg "$1 (run $2/$REPEAT): echo floor${6:+ $6}, $3 in flight, prefetch $4, $5 calls"
    attempt "$1.$2" cargo bench -q -p rpc-client --features test-support --bench echo_floor -- \
        --calls "$5" --in-flight "$3" --prefetch "$4" ${6:+"$6"} || return 0
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
client_bench() { # ID RUN IN-FLIGHT REPLY-QUEUE CALLS [QUEUE (default $QUEUE)]
    local rss=()
    ((${#RSS_CMD[@]} == 0)) || rss=("${RSS_CMD[@]}" "$WORK/$1.$2.rss")
    msg "$1 (run $2/$REPEAT): rpc-client bench, $3 in flight, $4 reply queue, $5 calls"
    attempt "$1.$2" ${rss[@]+"${rss[@]}"} "$CLIENT" --queue "${6:-$QUEUE}" --reply-queue "$4" \
        bench --calls "$5" --in-flight "$3" --n 30 --warmup "$warmup" --tsv || return 0
    record_tsv "$1" "$WORK/$1.$2.out" || true
    rss "$1" "$WORK/$1.$2.rss"
}

# ---- sequential rows on a prefetch-1 server: (a) K=1, (b), (c), (e), (g) --------------

# (e) one-shot processes: median wall time.
ONESHOT_OURS=("$CLIENT" --queue "$QUEUE" 30)
ONESHOT_DIRECT=("$CLIENT" --reply-queue direct --queue "$QUEUE" 30)
ONESHOT_PY=("$PY" "$PEERS/rpc_client.py" --queue "$QUEUE" 30)
oneshot_loop() { # ID CMD...: the wall time of ONESHOT_RUNS runs (after 2 untimed ones)
    local id=$1 i t0 t1
    shift
    for ((i = -2; i < ONESHOT_RUNS; i++)); do
        t0=${EPOCHREALTIME/[.,]/}
        "$@" >/dev/null || return 1
        t1=${EPOCHREALTIME/[.,]/}
        ((i < 0)) || fact oneshot "$id" "$(printf '%d.%06d' $(((t1 - t0) / 1000000)) $(((t1 - t0) % 1000000)))"
    done
}
oneshot_rows() {
    local name median how
    how=$([[ -n $HYPERFINE ]] && echo hyperfine || echo "shell loop")
    fact set oneshot_how "$how"
    msg "e: one-shot wall time, $ONESHOT_RUNS runs each ($how)"
    if [[ -n $HYPERFINE ]]; then
        if attempt e-hyperfine "$HYPERFINE" -N --style basic --warmup 2 --runs "$ONESHOT_RUNS" \
            --export-csv "$WORK/e.csv" -n ours "${ONESHOT_OURS[*]}" \
            -n ours-direct "${ONESHOT_DIRECT[*]}" -n python "${ONESHOT_PY[*]}"; then
            while IFS=, read -r name _ _ median _; do # command,mean,stddev,median,... in seconds
                [[ $name == command ]] || fact oneshot "e-$name" "$median"
            done <"$WORK/e.csv"
        fi
    else
        attempt e-ours oneshot_loop e-ours "${ONESHOT_OURS[@]}" || true
        attempt e-ours-direct oneshot_loop e-ours-direct "${ONESHOT_DIRECT[@]}" || true
        attempt e-python oneshot_loop e-python "${ONESHOT_PY[@]}" || true
    fi
}
# (g) the one-shot clients' peak RSS (largest of 3 runs).
oneshot_rss() {
    local who cmd i
    ((${#RSS_CMD[@]})) || return 0
    for who in ours python; do
        if [[ $who == ours ]]; then cmd=("${ONESHOT_OURS[@]}"); else cmd=("${ONESHOT_PY[@]}"); fi
        for i in 1 2 3; do
            attempt "g-$who-$i" "${RSS_CMD[@]}" "$WORK/g-$who-$i.rss" "${cmd[@]}" || continue
            rss "oneshot-$who" "$WORK/g-$who-$i.rss"
        done
    done
}

if want abceg; then
    start_server "$RUN_DIR" "$QUEUE" 1
    sleep 1 # idle a moment before reading the idle peak
    vmhwm server_idle
    for ((run = 1; run <= REPEAT; run++)); do
        if want a; then
            echo_floor a1 "$run" 1 1 "$SEQ_CALLS"
            echo_floor a1-confirm "$run" 1 1 "$SEQ_CALLS" --confirm
        fi
        for rq in exclusive direct; do
            if want b; then pika_bench "b-$rq" "$run" "$rq" "$PY_CALLS"; fi
            if want c; then client_bench "c-$rq" "$run" 1 "$rq" "$SEQ_CALLS"; fi
        done
    done
    if want e; then oneshot_rows; fi
    if want g; then oneshot_rss; fi
    vmhwm server_seq
    stop_servers
fi

# ---- (d) in-flight rows on a prefetch-$PREFETCH server -----------------------------

if want adg; then
    start_server "$RUN_DIR" "$QUEUE" "$PREFETCH"
    for ((run = 1; run <= REPEAT; run++)); do
        for k in "${DEPTHS[@]}"; do
            if want a; then
                echo_floor "a$k" "$run" "$k" "$PREFETCH" "$INFLIGHT_CALLS"
                echo_floor "a$k-confirm" "$run" "$k" "$PREFETCH" "$INFLIGHT_CALLS" --confirm
            fi
            for rq in exclusive direct; do
                if want dg; then client_bench "d$k-$rq" "$run" "$k" "$rq" "$INFLIGHT_CALLS"; fi
            done
        done
    done
    vmhwm server_inflight
    stop_servers
fi

# ---- (h) a process per request: Fibonacci vs `-- cat` servers, side by side ----------

# h_rows IN-FLIGHT CALLS ROW...: rows ROW (named h<K>-fib, h<K>-cat...) on their servers.
h_rows() {
    local k=$1 calls=$2 row run
    shift 2
    for ((run = 1; run <= REPEAT; run++)); do
        for row in "$@"; do
            client_bench "$row" "$run" "$k" exclusive "$calls" "$QUEUE-$row"
        done
    done
}
if want h; then
    start_server "$RUN_DIR-h1-fib" "$QUEUE-h1-fib" 1
    start_server "$RUN_DIR-h1-cat" "$QUEUE-h1-cat" 1 -- cat
    h_rows 1 "$H_SEQ_CALLS" h1-fib h1-cat
    stop_servers
    # 8 in flight (xtask bench-table's H_DEPTH), each server with prefetch 8.
    start_server "$RUN_DIR-h8-fib" "$QUEUE-h8-fib" 8
    start_server "$RUN_DIR-h8-cat" "$QUEUE-h8-cat" 8 -- cat
    start_server "$RUN_DIR-h8-cat-w2" "$QUEUE-h8-cat-w2" 8 --workers 2 -- cat
    h_rows 8 "$H_INFLIGHT_CALLS" h8-fib h8-cat h8-cat-w2
    stop_servers
fi

# ---- (f) fib -------------------------------------------------------------------------

if want f; then
    msg "f: fib(n) + decimal for n = ${FIB_NS[*]}: cargo bench --bench fib, then gmpy2"
    attempt f-ours cargo bench -q -p rpc-server --bench fib -- "${FIB_NS[@]}" || true
    # The optional GMP build (LGPL; off by default). Its first build compiles GMP (minutes).
    if ((!QUICK)); then
        attempt f-gmp cargo bench -q -p rpc-server --features gmp --bench fib -- "${FIB_NS[@]}" || true
    fi
    attempt f-gmpy2 "$PY" "$PEERS/fib_gmpy2.py" "${FIB_NS[@]}" || true
fi

# ---- the table -------------------------------------------------------------------------

for who in ours gmp gmpy2; do # fib: lines "n digits compute_ms decimal_ms total_ms"
    [[ ! -f $WORK/f-$who.out ]] || grep -E $'^[0-9]+\t' "$WORK/f-$who.out" | sed "s/^/fib\t$who\t/" >>"$WORK/facts.tsv" || true
done
printf 'failed\t%s\n' ${FAILED_ROWS[@]+"${FAILED_ROWS[@]}"} | grep -v $'\t$' >>"$WORK/facts.tsv" || true
fact set date "$(date -u '+%Y-%m-%d %H:%M UTC')"
elapsed=$((SECONDS - started))
fact set elapsed "$elapsed"
xtask bench-table <"$WORK/facts.tsv" >"$WORK/bench.md" || die "xtask bench-table failed (facts: $WORK/facts.tsv)"
cp "$WORK/bench.md" "$OUT_DIR/bench.md"
cat "$OUT_DIR/bench.md"
msg "table saved to $OUT_DIR/bench.md ($elapsed s)"
((${#FAILED_ROWS[@]} == 0)) || die "some rows could not be measured: ${FAILED_ROWS[*]}"
