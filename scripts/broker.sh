#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers AMQP on ${AMQP_HOST:-127.0.0.1}:${AMQP_PORT:-5672}.
# For a local host, installs (Debian rabbitmq-server) and starts it if needed;
# for a remote host only checks. Idempotent.
# Env: AMQP_URI, AMQP_HOST, AMQP_PORT, BROKER_WAIT (seconds to wait for startup, default 60).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# xtask reads AMQP_URI (amqp[s]://USER:PASSWORD@HOST:PORT/VHOST; of a list, the first), else
# AMQP_HOST/AMQP_PORT, with the binaries' flags (which refuse both at once).
addr=$(xtask broker-addr) || exit 1
IFS=$'\t' read -r host port scheme place <<<"$addr"
# probe [SECS]: does the broker answer AMQP (amqps: TLS and AMQP are not checked, only that
# the port accepts connections)?
tcp=()
[[ $scheme == amqp ]] || tcp=(--tcp)
probe() { xtask probe "$host" "$port" --timeout "${1:-3}" "${tcp[@]}" 2>/dev/null; }
wait_secs=${BROKER_WAIT:-60}
[[ $wait_secs =~ ^[0-9]+$ ]] || die "BROKER_WAIT must be a number of seconds, got '$wait_secs'"

answers() { msg "RabbitMQ answers AMQP on $host:$port"; exit 0; }
if probe; then
    [[ $scheme == amqps ]] || answers
    msg "$host:$port accepts connections (amqps: TLS and AMQP not checked)"
    exit 0
fi
[[ $place == local ]] || die "nothing answers AMQP on $host:$port (remote host: not starting anything; check the broker there)"

msg "nothing answers AMQP on $host:$port"
PATH=$PATH:/usr/sbin:/sbin

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if ! find_root_cmd; then
        die "rabbitmq-server is not installed and I cannot become root (no password-less sudo); run:
    sudo apt-get update && sudo apt-get install -y rabbitmq-server
then run $0 again"
    fi
    apt_install rabbitmq-server || die "installing rabbitmq-server with apt-get failed (see above)"
    ! probe || answers # the package may have started the service already
fi

if ! find_root_cmd; then
    die "cannot start RabbitMQ without root (no password-less sudo); run:
    sudo rabbitmq-server -detached
then run $0 again"
fi

show_logs() {
    local f='' g
    for g in /var/log/rabbitmq/*.log; do # the newest readable node log
        [[ -r $g && $g != *_upgrade.log && ($f == '' || $g -nt $f) ]] && f=$g
    done
    [[ -n $f ]] || return 0
    msg "--- last errors in $f:"
    { grep -F '[error]' "$f" || tail -n 8 "$f"; } | tail -n 8 >&2
}

rabbitmqctl_() { timeout 20 "${ROOT_CMD[@]}" rabbitmqctl "$@"; }

if rabbitmqctl_ -q ping >/dev/null 2>&1; then
    # The node runs but does not (yet) answer on host:port: booting, or it
    # listens elsewhere.
    msg "the local RabbitMQ node is running; waiting up to ${wait_secs}s for it to finish booting"
    rabbitmqctl_ -q await_startup --timeout "$wait_secs" >/dev/null 2>&1 || true
    ! probe || answers
    listeners=$(rabbitmqctl_ -q status 2>/dev/null | grep -i 'protocol: amqp' || true)
    die "the local RabbitMQ node is running but does not answer AMQP on $host:$port
${listeners:-(could not list its listeners)}
check AMQP_HOST/AMQP_PORT, 'rabbitmq-diagnostics listeners' and the logs in /var/log/rabbitmq/"
fi

start_log=$(mktemp)
trap 'rm -f "$start_log"' EXIT
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    msg "starting RabbitMQ: systemctl start rabbitmq-server"
    "${ROOT_CMD[@]}" systemctl start rabbitmq-server >"$start_log" 2>&1 ||
        warn "systemctl start failed: $(tail -n 5 "$start_log")"
else
    msg "starting RabbitMQ: rabbitmq-server -detached"
    "${ROOT_CMD[@]}" rabbitmq-server -detached >"$start_log" 2>&1 ||
        warn "rabbitmq-server -detached failed: $(tail -n 5 "$start_log")"
fi

deadline=$((SECONDS + wait_secs))
until probe 2; do
    if ((SECONDS >= deadline)); then
        msg "RabbitMQ did not accept AMQP on $host:$port within ${wait_secs}s"
        show_logs
        die "see the logs in /var/log/rabbitmq/ and 'rabbitmqctl status'; raise BROKER_WAIT if the broker is just slow"
    fi
    sleep 0.5
done
msg "RabbitMQ answers AMQP on $host:$port"
