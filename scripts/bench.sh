#!/usr/bin/env bash
# The benchmark: `cargo xtask bench` (scripts/xtask/src/bench/; settings BENCH_*, e.g. BENCH_QUICK=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." && exec cargo xtask bench "$@"
