#!/usr/bin/env bash
# Full check (CI runs it: .ci/run): Debian packages, the release build, broker, fmt,
# clippy, docs, shellcheck, the unit and integration tests (in release), faults, the end-to-end run of
# the scripts, metrics, interop, TLS, RabbitMQ 4.x, a bench smoke, and beside these last ones in
# the background the cluster test (each on nodes of its own: the broker on 5672 is never
# restarted). The first stage installs every Debian package the stages use.
#   scripts/test.sh           everything: on a fresh 2-core machine after demo.sh 9-12 minutes
#                             (14 on a busy one), installs included; about 7 once installed and built
#   scripts/test.sh --quick   the inner loop: fmt, clippy, docs, shellcheck and the tests that run by
#                             default (cargo test --workspace) in debug against the running
#                             broker (AMQP_URI, default 127.0.0.1:5672); nothing started
# Every stage runs even if an earlier one failed; exits non-zero if any failed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

quick=0 release=--release
case "$#:${1:-}" in
0:) ;;
1:--quick) quick=1 release= ;;
*) die "usage: $PROG [--quick]" ;;
esac

passed=0 failed=0 failed_stages=() skipped_stages=() # a stage exiting $SKIP (77) counts as neither

# run_stage NAME COMMAND...: run COMMAND in a subshell with errexit in force.
run_stage() {
    local start=$SECONDS rc
    printf '\n%s: ===== %s\n' "$PROG" "$1"
    set +e
    (set -e && "${@:2}")
    rc=$?
    set -e
    count_stage "$1" "$rc" "$start"
}

count_stage() { # NAME RC START
    if (($2 == 0)); then
        passed=$((passed + 1))
        msg "stage '$1' passed ($((SECONDS - $3))s)"
    elif (($2 == SKIP)); then
        skipped_stages+=("$1")
        msg "stage '$1' skipped"
    else
        failed=$((failed + 1))
        failed_stages+=("$1")
        msg "stage '$1' FAILED (exit $2)"
    fi
}

# start_stage NAME COMMAND...: run COMMAND in the background, in a process group of its own,
# its output kept in target/stages/ and shown by finish_stages, which counts it. For a stage
# on nodes of its own that mostly waits (the cluster's restarts) beside the ones that follow.
bg_names=() bg_pids=() bg_starts=()
start_stage() {
    mkdir -p target/stages
    set -m
    (set -e && "${@:2}") >"target/stages/${#bg_pids[@]}.log" 2>&1 9>&- &
    set +m
    bg_names+=("$1") bg_pids+=($!) bg_starts+=("$SECONDS")
    msg "stage '$1' started in the background (target/stages/$((${#bg_pids[@]} - 1)).log)"
}
finish_stages() {
    local i rc
    for i in "${!bg_pids[@]}"; do
        printf '\n%s: ===== %s (in the background since %ss)\n' "$PROG" "${bg_names[i]}" "${bg_starts[i]}"
        set +e
        wait "${bg_pids[i]}"
        rc=$?
        set -e
        cat "target/stages/$i.log"
        count_stage "${bg_names[i]}" "$rc" "${bg_starts[i]}"
        unset "bg_pids[i]"
    done
}
# Interrupted or failed: end the background stages' groups (their scripts clean up on TERM).
trap '((${#bg_pids[@]} == 0)) || kill -TERM -- "${bg_pids[@]/#/-}" 2>/dev/null' EXIT

# Make sure a rustup component (rustfmt, clippy) is there if rustup can add it.
need_component() {
    local comp=$1 sub=$2
    if ! cargo "$sub" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
        msg "cargo $sub missing; running rustup component add $comp"
        rustup component add "$comp"
    fi
}

stage_fmt() { need_component rustfmt fmt && cargo fmt --all -- --check; }
# In the dev profile, also in the full run: the docs stage then reuses the dependencies' checked
# metadata (measured on a cold target: clippy 74 s, then docs 5 s; after a release clippy the
# docs stage had to check every dependency again, 236 s on a loaded machine).
stage_clippy() { need_component clippy clippy && cargo clippy --workspace --all-targets -- -D warnings; }

# rustdoc with private items and warnings as errors: no link left stale by a rename.
stage_docs() { RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items; }

# Every Debian package a stage uses, in one apt-get run before the stages (one in the background
# must not install anything: apt-get is one at a time). Without root, what is missing is
# reported here, and the stages that need it are skipped.
stage_packages() {
    local needs=(build shellcheck node python) missing
    ((quick)) || needs+=(rabbitmq prometheus iptables openssl gnu-time hyperfine debootstrap valgrind)
    mapfile -t missing < <(missing_packages "${needs[@]}")
    ((${#missing[@]} > 0)) || { msg "all here"; return 0; }
    apt_install "${missing[@]}" && return 0
    (($? == 1)) || return 1 # apt-get failed (its log shown)
    ensure_build_deps # dies if the build cannot run
    warn "the stages that need ${missing[*]} will be skipped (as root: apt-get install ${missing[*]})"
}

stage_shellcheck() {
    if ! command -v shellcheck >/dev/null 2>&1; then
        apt_install shellcheck || { (($? == 1)) && return "$SKIP"; return 1; }
    fi
    local files=(scripts/*.sh .ci/run)
    msg "shellcheck ${files[*]}"
    shellcheck -x "${files[@]}"
}

stage_test() { cargo test --workspace ${release:+"$release"}; }

# start-servers.sh 2 on a fresh queue, rpc-client against them, stop-servers.sh: no consumer left.
stage_e2e() { stage_tests e2e::scripts; }

# rpc-server/tests/it/faults/ on a throwaway node (rpcfault@localhost on FAULT_PORT, default
# 5700) that it restarts, stalls and alarms. Skipped (77) where no node can run.
stage_faults() {
    scripts/node.sh start rpcfault "${FAULT_PORT:-5700}" || return
    trap 'scripts/node.sh stop rpcfault || exit 1' EXIT
    AMQP_URI=$(scripts/node.sh uri rpcfault) RABBITMQCTL="$REPO_ROOT/scripts/node.sh ctl rpcfault" \
        cargo test --release -p rpc-server --test it faults:: -- --ignored --nocapture --test-threads=1
}

# Debian 13's RabbitMQ 4.0.5 in a chroot (scripts/rabbitmq4.sh: rpc4@localhost on 5710, 4.3's
# deny settings): the tests, end-to-end and interop against it. Skipped (77) without root.
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

run_stage "Debian packages (build dependencies, and what the stages use)" stage_packages
if ((!quick)); then
    before=$failed
    run_stage "cargo build --release" build_release
    ((failed > before)) || export XTASK_BUILT=1 # the stages after it need not ask cargo again
    run_stage "broker (scripts/broker.sh)" scripts/broker.sh
fi
run_stage "cargo fmt --all -- --check" stage_fmt
run_stage "cargo clippy --workspace --all-targets -- -D warnings" stage_clippy
run_stage "RUSTDOCFLAGS=-D warnings cargo doc --workspace --no-deps --document-private-items" stage_docs
run_stage "shellcheck" stage_shellcheck
run_stage "cargo test --workspace" stage_test
if ((!quick)); then
    # rpc-server/tests/it/faults/ on a throwaway node (restarts, stalls, alarms): before the
    # cluster stage starts, as its checks are timed (beside the cluster's three nodes and load
    # on a fresh 2-core box, its broker's stop_app took 19.5 s: a call lost, a flood too slow;
    # alone it passed in 88 s).
    run_stage "fault run (a throwaway node of its own)" stage_faults
    # rpc-server/tests/it/cluster/ on a local three-node cluster (scripts/cluster.sh): a rolling
    # restart, kill -9 of the leader's and of a caller's node, a 30 s partition; 77 (skipped)
    # where no node can run. It mostly waits for nodes: the stages below run beside it.
    start_stage "cluster (scripts/cluster-test.sh)" scripts/cluster-test.sh
    run_stage "end-to-end (start-servers.sh 2, rpc-client, stop-servers.sh)" stage_e2e
    # A real Prometheus scrapes a test server; promtool check metrics; counters move by the calls.
    run_stage "metrics with Prometheus (scripts/metrics-test.sh)" scripts/metrics-test.sh
    run_stage "interop (scripts/interop.sh)" scripts/interop.sh
    # A throwaway CA and node (rpctls@localhost, 5690/5691): amqps://, --tls-ca, bad CA or name.
    run_stage "TLS (scripts/tls-test.sh)" scripts/tls-test.sh
    run_stage "RabbitMQ 4.x with 4.3's defaults (scripts/rabbitmq4.sh)" stage_rabbitmq4
    # Proves every bench row still runs; speed is judged from a full run, not asserted here.
    run_stage "bench smoke (BENCH_QUICK=1 scripts/bench.sh)" env BENCH_QUICK=1 scripts/bench.sh
    finish_stages
fi

echo
((${#skipped_stages[@]} == 0)) || msg "skipped: ${skipped_stages[*]}"
((${#failed_stages[@]} == 0)) || msg "failed: $(printf '[%s] ' "${failed_stages[@]}")"
echo "$PROG${1:+ $1}: $passed passed, $failed failed ($((SECONDS / 60))m$((SECONDS % 60))s)"
((failed == 0))
