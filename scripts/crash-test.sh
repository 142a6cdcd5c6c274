#!/usr/bin/env bash
# Long crash-safety run: tests/it/crash.rs with many SIGKILL rounds, in release
# mode. Each round kills the stratafs daemon at a random moment while a
# worker copies up large files, renames, deletes and creates files and
# directories, then checks a fresh mount of the same layers (every file in
# its old or its new state, fsync'ed data intact, lower layers untouched,
# WORKDIR/work cleared, the merged tree walkable).
#
# Usage: bash scripts/crash-test.sh [ROUNDS]    (default 200 kills)
#
# Environment:
#   STRATAFS_CRASH_SEED     base seed (decimal or 0x hex; default fixed)
#   STRATAFS_CRASH_KEEP=1   on failure keep the layers (path is printed)
#   STRATAFS_CRASH_TIMEOUT  seconds the whole run may take (3600)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

rounds=${1:-200}
if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash scripts/crash-test.sh [ROUNDS]" >&2
    exit 2
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

# The test mounts below $TMPDIR; give the run its own, so that whatever a
# failed run leaves mounted can be found and unmounted.
test_tmp=$(mktemp -d /tmp/stratafs-crash.XXXXXX)

cleanup() {
    local rc=$? m
    set +e
    awk -v p="$test_tmp/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo |
        sort -ru | while read -r m; do
        fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"
    done
    if [[ -n ${STRATAFS_CRASH_KEEP:-} && $rc -ne 0 ]]; then
        echo "crash-test.sh: kept $test_tmp"
    else
        rm -rf "$test_tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> cargo test --release --test it crash:: (STRATAFS_CRASH_ROUNDS=$rounds)"
STRATAFS_CRASH_ROUNDS=$rounds TMPDIR=$test_tmp RUST_BACKTRACE=${RUST_BACKTRACE:-1} \
    timeout -k 60 "${STRATAFS_CRASH_TIMEOUT:-3600}" \
    cargo test --release --test it crash:: -- --nocapture
