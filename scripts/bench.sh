#!/usr/bin/env bash
# Benchmark stratafs against the kernel overlay and fuse-overlayfs.
#
# Usage: bash scripts/bench.sh [--smoke] [--runs N] [--only WORKLOAD[,WORKLOAD...]]
#                              [--harness] [--counts] [--baseline BIN]
#                              [--no-fuse-overlayfs] [--no-counts] [--no-doc] [--list]
#                              [--render-doc [--from RESULT.json ...] [--doc FILE]]
#
#   (no options)  full run: cached ~70k-entry 5-layer stack, 3 runs per
#                 workload, then one --counts pass (untimed), results
#                 written to docs/PERFORMANCE.md
#   --smoke       tiny stack, every workload once, then the --counts pass
#                 (about two minutes; for CI)
#   --runs N      repetitions per workload (median is reported)
#   --only W      only these workloads (see --list); does not touch the doc
#   --harness     also stratafs with metrics=0 and with one unrelated fault
#                 rule, without fuse-overlayfs: the cost of the test-harness
#                 mode (does not touch the doc)
#   --counts      count instead of timing: FUSE requests (stratafs's
#                 counters; fuse-overlayfs's -d log) and daemon system calls
#                 (strace -c) per operation, for untar, create, rmrf, copyup,
#                 find and lslr (or --only); a markdown table in the results
#                 dir (does not touch the doc)
#   --baseline BIN  also another stratafs binary (a build of an older commit),
#                 as stratafs-baseline; with --counts, before/after columns
#                 (does not touch the doc)
#   --no-fuse-overlayfs  leave fuse-overlayfs out
#   --no-counts   a full run or --smoke without the counts pass
#   --render-doc  rewrite docs/PERFORMANCE.md from the stored results only
#                 (the last two full runs and the counts of the newest);
#                 --from RESULT.json (repeatable) renders those stored results
#                 of any kind instead (e.g. a smoke run's, to check the
#                 rendering), --doc FILE writes to another file
#
# Needs root (kernel overlay mounts, drop_caches). The generated stack is
# cached in $STRATAFS_BENCH_DIR (default /var/tmp/stratafs-bench); results
# of every run are kept in $STRATAFS_BENCH_DIR/results/. See
# docs/PERFORMANCE.md for what each workload measures.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_DIR=${STRATAFS_BENCH_DIR:-/var/tmp/stratafs-bench}
export STRATAFS_BENCH_DIR=$BENCH_DIR

quick=0
for arg in "$@"; do
    case $arg in
    -h | --help)
        awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
        exit 0
        ;;
    --list | --render-doc) quick=1 ;;
    esac
done
if ((quick)); then
    exec python3 scripts/bench/bench.py --helper /nonexistent --dir "$BENCH_DIR" "$@"
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "bench: must run as root (kernel overlay mounts, drop_caches)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

# Unmount whatever is still mounted under our run directory (only ours),
# whatever way we exit. bench.py also cleans up after itself; this is the
# safety net for a crash or a signal.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    local mnt
    # Mount points are field 5 of mountinfo; unmount the deepest first.
    while read -r mnt; do
        [[ -n $mnt ]] || continue
        echo "bench: cleanup: unmounting $mnt" >&2
        fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
    done < <(awk -v d="$BENCH_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

echo "bench: checking dependencies"
bash scripts/install-deps.sh gcc make git tar python3 e2fsprogs strace

echo "bench: cargo build --release"
for attempt in 1 2 3 4 5 6; do
    if cargo build --release --quiet; then
        break
    fi
    if ((attempt == 6)); then
        echo "bench: cargo build --release keeps failing" >&2
        exit 1
    fi
    echo "bench: build failed (attempt $attempt); retrying in 30 s" >&2
    sleep 30
done
# Run a private copy so that a concurrent rebuild cannot swap the binary mid-run.
mkdir -p "$BENCH_DIR/bin"
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/stratafs" "$BENCH_DIR/bin/stratafs"

gcc -O2 -Wall -Werror -o "$BENCH_DIR/bin/benchhelper" scripts/bench/benchhelper.c

python3 scripts/bench/bench.py --helper "$BENCH_DIR/bin/benchhelper" \
    --stratafs "$BENCH_DIR/bin/stratafs" --dir "$BENCH_DIR" "$@"
