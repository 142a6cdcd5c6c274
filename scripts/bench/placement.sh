#!/bin/bash
# Where the time of a synchronous FUSE workload goes: the same untar
# (GNU tar, N small files, as root: every file is created, written,
# chowned, chmodded and has its times set) into a fresh stratafs mount
# with the daemon and tar placed on CPUs three ways, and into the kernel
# overlay. Each request is a round trip: tar sleeps until the daemon
# answers, so what a request costs depends on whether the daemon's thread
# and tar run on one CPU (a switch between them) or on two (each side
# wakes the other's CPU, which may be halted, and a vCPU woken from halt
# by another vCPU costs the hypervisor's round trip).
#
# Usage: bash scripts/bench/placement.sh [FILES] [RUNS]   (as root; needs
# 2 CPUs or more; default 5000 files, 3 runs, median reported)
# Output: one line per placement: median ms, FUSE requests (the daemon's
# own counters), microseconds per request, and the kernel overlay's time.
set -euo pipefail
files=${1:-5000}
runs=${2:-3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${STRATAFS_BIN:-$repo/target/release/stratafs}
[[ -x $bin ]] || (cd "$repo" && cargo build --release --quiet)
(($(nproc) >= 2)) || { echo "placement: needs 2 CPUs" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "placement: run as root (tar restores owners, kernel overlay mount)" >&2; exit 2; }
# All layers on a tmpfs of their own: the upper filesystem's own cost
# stays small and steady (on ext4 it moves with where inodes were freed
# recently), so what differs between the rows is the FUSE round trip.
work=$(mktemp -d "${STRATAFS_BENCH_DIR:-/var/tmp}/placement.XXXXXX")
mounted=()
cleanup() {
    for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    umount "$work" 2>/dev/null || umount -l "$work" 2>/dev/null || true
    rmdir "$work"
}
trap cleanup EXIT
mount -t tmpfs -o size=1g,mode=755 placement "$work"
mkdir -p "$work/lower/usr/share"
echo "lower" >"$work/lower/usr/share/file"
python3 "$repo/scripts/e2e/smalltar.py" "$work/files.tar" "$files" 1000
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
requests() { "$bin" stats "$1" >"$work/stats.$2.json" && python3 -c 'import json, sys; print(sum(json.load(open(sys.argv[1]))["requests"].values()))' "$work/stats.$2.json"; }
# one RUN: fs (kernel|stratafs), daemon cpus, tar cpus -> "ms requests"
one() {
    local fs=$1 dcpu=$2 tcpu=$3 d t0 ms r0 r1
    d=$(mktemp -d "$work/run.XXXXXX")
    mkdir -p "$d/u" "$d/w" "$d/m"
    if [[ $fs == kernel ]]; then
        mount -t overlay overlay -o "lowerdir=$work/lower,upperdir=$d/u,workdir=$d/w" "$d/m"
    else
        taskset -c "$dcpu" "$bin" -o "lowerdir=$work/lower,upperdir=$d/u,workdir=$d/w,volatile${STRATAFS_OPTS:+,$STRATAFS_OPTS}" "$d/m"
    fi
    mounted+=("$d/m")
    mkdir -p "$d/m/usr/share/bulk"
    sync
    [[ $fs == kernel ]] || r0=$(requests "$d/m" before)
    t0=$(date +%s%N)
    taskset -c "$tcpu" tar -xf "$work/files.tar" -C "$d/m/usr/share/bulk"
    ms=$(ms_since "$t0")
    if [[ $fs == kernel ]]; then r1=0 r0=0; else r1=$(requests "$d/m" after); fi
    [[ $(find "$d/m/usr/share/bulk" -type f | wc -l) == "$files" ]] || { echo "placement: wrong file count" >&2; exit 1; }
    umount "$d/m"
    rm -rf "$d"
    echo "$ms $((r1 - r0))"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A ms req
cases=("kernel overlay|kernel|0|0-1" "stratafs, tar and daemon unpinned|stratafs|0-$(($(nproc) - 1))|0-$(($(nproc) - 1))"
    "stratafs, tar and daemon on CPU 0|stratafs|0|0" "stratafs, tar on CPU 0, daemon on CPU 1|stratafs|1|0")
for ((i = 0; i < runs; i++)); do
    for c in "${cases[@]}"; do
        IFS='|' read -r label fs dcpu tcpu <<<"$c"
        read -r m r <<<"$(one "$fs" "$dcpu" "$tcpu")"
        ms[$label]+="$m "
        req[$label]=$r
    done
done
k=$(tr ' ' '\n' <<<"${ms[kernel overlay]}" | grep . | median)
echo "untar of $files files (GNU tar as root), median of $runs, $(nproc) CPUs, kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M') UTC"
printf '| %-42s | %8s | %9s | %12s | %9s |\n' placement ms requests "us/request" "× kernel"
for c in "${cases[@]}"; do
    IFS='|' read -r label fs _ _ <<<"$c"
    m=$(tr ' ' '\n' <<<"${ms[$label]}" | grep . | median)
    r=${req[$label]}
    if [[ $fs == kernel ]]; then
        printf '| %-42s | %8s | %9s | %12s | %9s |\n' "$label" "$m" – – 1.00
    else
        printf '| %-42s | %8s | %9s | %12s | %9s |\n' "$label" "$m" "$r" \
            "$(awk -v m="$m" -v r="$r" 'BEGIN { printf "%.1f", m * 1000 / r }')" \
            "$(awk -v m="$m" -v k="$k" 'BEGIN { printf "%.2f", m / k }')"
    fi
done
# What the requests of one untar are, per file (from the last mount).
python3 - "$work/stats.before.json" "$work/stats.after.json" "$files" <<'PY'
import json, sys
b, a = (json.load(open(p))["requests"] for p in sys.argv[1:3])
n = int(sys.argv[3])
per = {k: (a[k] - b.get(k, 0)) / n for k in a if a[k] - b.get(k, 0)}
print("requests per file: " + ", ".join(f"{k.upper()} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])))
PY
