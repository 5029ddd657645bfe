#!/usr/bin/env bash
# The metrics endpoint with the real tools: an rpc-server with --metrics-addr on a fresh queue,
# a real Prometheus (Debian's package, installed if missing) on a private port scraping it,
# `promtool check metrics` on the exposition, the counters moved by exactly the calls made (read
# from the endpoint and from Prometheus' own query API), /healthz and /readyz. Skipped (77)
# where Prometheus cannot be installed. The probes under broker faults are fault scenario 11.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || die "usage: $PROG   (takes no arguments)"

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    apt_install prometheus || skip "prometheus is not installed and cannot be installed here (needs root)"
fi
command -v curl >/dev/null 2>&1 || apt_install curl || skip "curl is missing"
xtask --help >/dev/null # builds the binaries

# A free TCP port on 127.0.0.1 (the system's choice).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
queue=rpc-metrics-$(cat /proc/sys/kernel/random/uuid)
server_pid='' prom_pid=''
cleanup() {
    [[ -z $server_pid ]] || stop_pid "$server_pid" 10 || true
    [[ -z $prom_pid ]] || stop_pid "$prom_pid" 10 || true
    xtask queue delete "$queue" || warn "could not delete queue $queue"
    rm -rf "$work"
}
trap cleanup EXIT

maddr=127.0.0.1:$(free_port)
"$BIN_DIR/rpc-server" --queue "$queue" --metrics-addr "$maddr" --max-n 1000 -q \
    2>"$work/server.log" </dev/null 9>&- &
server_pid=$!
xtask queue wait-consumers "$queue" 1 --timeout 20 || die "the server does not consume: $(cat "$work/server.log")"

# GET PATH: the body, or fails; STATUS PATH: the status code.
get() { curl -fsS --max-time 5 "http://$maddr$1"; }
status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$maddr$1"; }

[[ $(status /healthz) == 200 ]] || die "/healthz: $(status /healthz) (want 200)"
[[ $(status /readyz) == 200 ]] || die "/readyz: $(status /readyz) (want 200) while consuming"
msg "ok: /healthz 200, /readyz 200 while consuming"

get /metrics >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt" || die "promtool check metrics failed on $work/metrics.txt"
msg "ok: promtool check metrics"

# value NAME_AND_LABELS: the sample's value from the endpoint.
value() { get /metrics | awk -v s="$1" '$1 == s { print $2 }'; }
answered='rpc_server_requests_total{outcome="answered",code=""}'
refused='rpc_server_requests_total{outcome="refused",code="too-large"}'
count='rpc_server_request_duration_seconds_count'
a0=$(value "$answered") r0=$(value "$refused") c0=$(value "$count")
out=$(timeout 60 "$BIN_DIR/rpc-client" --queue "$queue" --timeout 10 10 20 30 </dev/null)
[[ $out == $'55\n6765\n832040' ]] || die "rpc-client 10 20 30 printed '$out'"
rc=0
timeout 60 "$BIN_DIR/rpc-client" --queue "$queue" --timeout 10 5000 </dev/null 2>/dev/null || rc=$?
[[ $rc == 5 ]] || die "a call over --max-n: exit $rc (want 5, an error reply)"
a1=$(value "$answered") r1=$(value "$refused") c1=$(value "$count")
((a1 - a0 == 3 && r1 - r0 == 1 && c1 - c0 == 4)) ||
    die "after 3 answered calls and 1 refused: answered $a0 -> $a1, refused $r0 -> $r1, handled $c0 -> $c1"
msg "ok: answered +3, refused{code=too-large} +1, durations +4 for the 4 calls made"

pport=$(free_port)
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: rpc-server
    static_configs:
      - targets: ['$maddr']
EOF
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$pport" --log.level=warn 2>"$work/prometheus.log" </dev/null 9>&- &
prom_pid=$!

# query PROMQL: the first result's value, from Prometheus' API.
query() {
    curl -fsS --max-time 5 "http://127.0.0.1:$pport/api/v1/query" --data-urlencode "query=$1" |
        python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
deadline=$((SECONDS + 30))
until [[ $(query 'up{job="rpc-server"}' 2>/dev/null) == 1 ]]; do
    ((SECONDS < deadline)) || die "no successful scrape by Prometheus within 30 s: $(tail -5 "$work/prometheus.log")"
    kill -0 "$prom_pid" 2>/dev/null || die "prometheus exited: $(tail -5 "$work/prometheus.log")"
    sleep 0.5
done
msg "ok: Prometheus scraped the server (up == 1)"
got=$(query "sum(rpc_server_requests_total{job=\"rpc-server\",outcome=\"answered\"})")
[[ $got == "$a1" ]] || die "Prometheus sees answered = '$got' (the endpoint says $a1)"
info=$(query "rpc_server_build_info{job=\"rpc-server\"}")
[[ $info == 1 ]] || die "Prometheus sees rpc_server_build_info = '$info'"
msg "ok: Prometheus reads answered = $got calls and the build info"
