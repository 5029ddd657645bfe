#!/usr/bin/env bash
# The metrics endpoint with the real tools: installs Prometheus (Debian's package) if missing,
# then runs rpc-server/tests/it/stages/metrics.rs: an rpc-server with --metrics-addr on a fresh
# queue, a real Prometheus on a private port scraping it, `promtool check metrics` on the
# exposition, the counters moved by exactly the calls made (read from the endpoint and from
# Prometheus' own query API), /healthz and /readyz. Skipped (77) where Prometheus cannot be
# installed. The probes under broker faults are fault scenario 11.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 0 ]] || die "usage: $PROG   (takes no arguments)"
if [[ -n $(missing_packages prometheus) ]]; then
    apt_install prometheus || { (($? == 1)) && skip "prometheus is not installed, and installing it needs root"; die "installing prometheus failed (see above)"; }
fi
stage_tests metrics
