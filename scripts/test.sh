#!/usr/bin/env bash
# Full check (CI runs it: .ci/run): build dependencies, broker, fmt, clippy, shellcheck,
# unit/integration tests (in release: the broker stage's build), end-to-end run of the scripts, interop with Python
# peers, TLS, cluster, a quick benchmark, and last the fault run on a throwaway node (the broker
# on 5672 is never restarted).
#   scripts/test.sh           everything, about 12-14 minutes
#   scripts/test.sh --quick   the inner loop: fmt, clippy, shellcheck and the tests that run by
#                             default (cargo test --workspace) against the running broker
#                             (AMQP_URI, default 127.0.0.1:5672); no release build, nothing
#                             started (if no broker answers, the tests say so at once and
#                             scripts/broker.sh starts one)
# Every stage runs even if an earlier one failed; exits non-zero if any failed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

quick=0
case "$#:${1:-}" in
0:) ;;
1:--quick) quick=1 ;;
*) die "usage: $PROG [--quick]" ;;
esac

passed=0 failed=0 failed_stages=() skipped_stages=() # a stage exiting $SKIP (77) counts as neither

# run_stage NAME FUNCTION: run FUNCTION in a subshell with errexit in force.
run_stage() {
    local name=$1 rc=0 start=$SECONDS
    printf '\n%s: ===== %s\n' "$PROG" "$name"
    set +e
    (set -e && "$2")
    rc=$?
    set -e
    if ((rc == 0)); then
        passed=$((passed + 1))
        msg "stage '$name' passed ($((SECONDS - start))s)"
    elif ((rc == SKIP)); then
        skipped_stages+=("$name")
        msg "stage '$name' skipped"
    else
        failed=$((failed + 1))
        failed_stages+=("$name")
        msg "stage '$name' FAILED (exit $rc)"
    fi
}

# Make sure a rustup component (rustfmt, clippy) is there if rustup can add it.
need_component() {
    local comp=$1 sub=$2
    if ! cargo "$sub" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
        msg "cargo $sub missing; running rustup component add $comp"
        rustup component add "$comp"
    fi
}

stage_build_deps() { ensure_build_deps; }
stage_broker() { scripts/broker.sh; }

stage_fmt() { need_component rustfmt fmt && cargo fmt --all -- --check; }
stage_clippy() { need_component clippy clippy && cargo clippy --workspace --all-targets -- -D warnings; }

stage_shellcheck() {
    if ! command -v shellcheck >/dev/null 2>&1; then
        if ! apt_install shellcheck; then
            warn "shellcheck is not installed and cannot be installed here (needs root): skipping"
            return "$SKIP"
        fi
    fi
    local files=(scripts/*.sh .ci/run)
    msg "shellcheck ${files[*]}"
    shellcheck -x "${files[@]}"
}

stage_test() { if ((quick)); then cargo test --workspace; else cargo test --workspace --release; fi; }

stage_build() { cargo build --release; }

# End-to-end through the scripts: start-servers.sh 2 on a fresh queue, the rpc-client binary
# against the rpc-server binaries, stop-servers.sh (no consumer left): e2e::scripts in
# rpc-server/tests/it/stages/.
stage_e2e() { stage_tests e2e::scripts; }

# The metrics endpoint with a real Prometheus (Debian's package, installed if missing; skipped,
# 77, where it cannot be): a scrape, promtool check metrics, counters moved by the calls made.
stage_metrics() { scripts/metrics-test.sh; }

stage_interop() { scripts/interop.sh; }

# TLS: a throwaway CA and node (rpctls@localhost, ports 5690/5691; 77, skipped, where none can
# run); amqps://, --tls, --tls-ca, untrusted CA, name mismatch, no password in logs.
stage_tls() { scripts/tls-test.sh; }

# The cluster test (rpc-server/tests/it/cluster/, issues 5 and 16): a local three-node cluster
# (scripts/cluster.sh, beside the main broker), each scenario once: a rolling restart, kill -9
# of the leader's node, kill -9 of a caller's node, a 30 s partition; 3 servers and 6 callers
# (library and rpc-client processes) on a quorum queue, every call answered right. Exits 77
# (skipped) when no RabbitMQ node can be run here; takes the cluster down again either way.
stage_cluster() { scripts/cluster-test.sh; }

# The benchmark in its quick mode: proves scripts/bench.sh and every bench target still
# run. It prints figures and flags; speed is judged from a full run, not asserted here.
stage_bench() { BENCH_QUICK=1 scripts/bench.sh; }

# The fault run (rpc-server/tests/it/faults/) against a throwaway node of its own
# (scripts/node.sh: rpcfault@localhost, AMQP on FAULT_PORT, default 5700), which it restarts:
# servers killed and stopped under load, a broker restart (rabbitmqctl stop_app / start_app
# on that node), malformed requests, reply floods. Skipped (77) where no node can run.
stage_faults() {
    scripts/node.sh start rpcfault "${FAULT_PORT:-5700}" || return
    trap 'scripts/node.sh stop rpcfault || exit 1' EXIT
    AMQP_URI=$(scripts/node.sh uri rpcfault) RABBITMQCTL="$REPO_ROOT/scripts/node.sh ctl rpcfault" \
        cargo test --release -p rpc-server --test it faults:: -- --ignored --nocapture --test-threads=1
}

# RabbitMQ 4.x (scripts/rabbitmq4.sh: Debian 13's package in a chroot, rpc4@localhost on
# 127.0.0.1:5710, RabbitMQ 4.3's deny settings): the integration tests, the end-to-end path and
# the interop peers against it. Its root is prepared once (about 90 s) and kept in
# /var/cache/rabbit-rpc. Skipped (77) where it cannot run (no root).
stage_rabbitmq4() {
    scripts/rabbitmq4.sh start || return
    trap 'scripts/rabbitmq4.sh stop || exit 1' EXIT
    AMQP_URI=$(scripts/rabbitmq4.sh uri)
    RABBITMQCTL="$REPO_ROOT/scripts/rabbitmq4.sh ctl"
    export AMQP_URI RABBITMQCTL
    cargo test --workspace --release
    stage_e2e
    # The original tutorial's transient classic queue is what 4.3 denies.
    INTEROP_FLAVOURS="durable quorum" scripts/interop.sh
    # --transient stops at once with exit 4 and the broker's reason; a reply over
    # --max-reply-bytes is an error reply (exit 5), not a publish the broker refuses.
    stage_tests e2e::refusals_on_4x
}

run_stage "build dependencies (C compiler, OpenSSL headers)" stage_build_deps
# --quick leaves out the broker stage: scripts/broker.sh builds the workspace in release mode.
((quick)) || run_stage "broker (scripts/broker.sh)" stage_broker
run_stage "cargo fmt --all -- --check" stage_fmt
run_stage "cargo clippy --workspace --all-targets -- -D warnings" stage_clippy
run_stage "shellcheck" stage_shellcheck
run_stage "cargo test --workspace" stage_test
if ((!quick)); then
    run_stage "cargo build --release" stage_build
    run_stage "end-to-end (start-servers.sh 2, rpc-client, stop-servers.sh)" stage_e2e
    run_stage "metrics with Prometheus (scripts/metrics-test.sh)" stage_metrics
    run_stage "interop (scripts/interop.sh)" stage_interop
    run_stage "TLS (scripts/tls-test.sh)" stage_tls
    run_stage "cluster (scripts/cluster-test.sh)" stage_cluster
    run_stage "bench smoke (BENCH_QUICK=1 scripts/bench.sh)" stage_bench
    run_stage "fault run (a throwaway node of its own)" stage_faults
    run_stage "RabbitMQ 4.x with 4.3's defaults (scripts/rabbitmq4.sh)" stage_rabbitmq4
fi

echo
((${#skipped_stages[@]} == 0)) || msg "skipped: ${skipped_stages[*]}"
((${#failed_stages[@]} == 0)) || msg "failed: $(printf '[%s] ' "${failed_stages[@]}")"
echo "$PROG${1:+ $1}: $passed passed, $failed failed ($((SECONDS / 60))m$((SECONDS % 60))s)"
((failed == 0))
