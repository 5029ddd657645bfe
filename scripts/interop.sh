#!/usr/bin/env bash
# Interop test: our rpc-server / rpc-client against RabbitMQ tutorial-six peers written in
# Python with pika (scripts/interop/), and with pika and amqplib (Node) instrumented by
# OpenTelemetry (trace context). Prepares the Python venv (target/py-venv) and the Node
# modules (target/node-peers), and runs the checks,
# rpc-server/tests/it/stages/interop.rs (its documentation lists them: each way, per queue flavour,
# Fibonacci and raw bodies, error replies, trace context, our server's queue declaration):
#   cargo test --release -p rpc-server --test it stages::interop -- --ignored --nocapture --test-threads=1
# Broker: $AMQP_URI if set (read by all four programs), else local guest/guest.
# INTEROP_FLAVOURS (default "classic durable quorum"): leave out classic against a broker that
# denies transient non-exclusive queues (RabbitMQ 4.3's default). Logs in target/tmp/interop/.
# Prints "interop: N passed, M failed"; exits non-zero if anything failed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # also cds to the repository root

[[ $# -eq 0 ]] || die "usage: $PROG   (takes no arguments)"
ensure_venv scripts/interop/requirements.txt scripts/interop/requirements-otel.txt
# The amqplib peers (scripts/interop/node): Node.js and npm (Debian's if missing), then npm ci.
mapfile -t missing < <(missing_packages node)
((${#missing[@]} == 0)) || apt_install "${missing[@]}" ||
    die "the amqplib peers need Node.js and npm, which could not be installed (see above)"
lock=scripts/interop/node/package-lock.json stamp=target/node-peers/installed.json
if ! cmp -s "$lock" "$stamp"; then
    mkdir -p target/node-peers && cp scripts/interop/node/package.json "$lock" target/node-peers/
    npm ci --prefix target/node-peers --no-audit --no-fund --loglevel=error >&2 && cp "$lock" "$stamp"
fi
INTEROP_NODE_PATH=$REPO_ROOT/target/node-peers/node_modules INTEROP_PYTHON=$REPO_ROOT/$PY stage_tests interop
