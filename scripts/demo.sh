#!/usr/bin/env bash
# Demo: make sure RabbitMQ runs, build, start N servers (default 2), send a
# few Fibonacci requests, show which server answered, stop the servers.
#   scripts/demo.sh [N]
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

count=${1:-2}
[[ $count =~ ^[1-9][0-9]*$ && $# -le 1 ]] || die "usage: $PROG [N]   (N servers, default 2)"
client=$BIN_DIR/rpc-client

step() { printf '\n%s: === %s\n' "$PROG" "$*"; }

step "Debian packages"
mapfile -t missing < <(missing_packages build rabbitmq)
if ((${#missing[@]} == 0)); then
    msg "the build's and RabbitMQ's packages are installed"
else
    apt_install "${missing[@]}" || die "cannot go on without ${missing[*]} (see above)"
fi

step "cargo build --release"
build_release

step "broker"
scripts/broker.sh

step "starting $count server(s)"
scripts/start-servers.sh "$count"
trap 'step "stopping servers"; scripts/stop-servers.sh' EXIT

step "$client 30"
result=$("$client" 30)
printf '%s\n' "$result"
[[ $result == 832040 ]] || die "expected 832040, got '$result'"

args=(1 2 10 20 30 40 50 60 70 80 90 100)
step "$client ${args[*]}"
"$client" "${args[@]}" | paste -d' ' <(printf 'fib(%s) =\n' "${args[@]}") -

step "requests answered per server (\" [.] fib(\" lines in $RUN_DIR/server-<i>.log)"
for ((i = 1; i <= count; i++)); do
    n=$(grep -cF ' [.] fib(' "$RUN_DIR/server-$i.log" || true)
    printf '  server-%s: %s\n' "$i" "$n"
done
