#!/usr/bin/env bash
# The long variant of the concurrency stress test: >= 8 threads of mixed
# operations on one mount for SECONDS (default 1800, i.e. 30 minutes), with
# the test's own watchdog, then the consistency checks and a remount.
#
# Usage: bash scripts/stress.sh [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
export STRATAFS_STRESS_SECS=${1:-1800}
exec cargo test --release --test it stress:: -- --nocapture
