#!/usr/bin/env bash
# The full stratafs test suite: build everything, run `cargo test` as root
# (real FUSE mounts, kernel overlayfs as the oracle), run the integration
# tests again with `no_open` on every stratafs mount and again with
# `passthrough` on every one, then run the integration
# tests again as an unprivileged user in a user namespace
# (scripts/test-rootless.sh; it too a second time with `no_open`), and the
# podman/buildah end-to-end test with
# stratafs as the overlay mount_program (scripts/e2e-podman.sh).
#
# Tests that skip their checks (e.g. root-only tests in the rootless run)
# record themselves in STRATAFS_SKIP_LOG; the summary counts them as
# skipped, not passed, and lists them with their reasons.
#
# Usage: bash scripts/test.sh
#
# Environment:
#   STRATAFS_DIFF_CASES           cases for the differential test (300)
#   STRATAFS_CARGO_TEST_TIMEOUT   seconds `cargo test` may take (2400)
#   STRATAFS_TEST_TIMEOUT         seconds the rootless test binary may take (1800)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

bash scripts/install-deps.sh

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

export STRATAFS_DIFF_CASES=${STRATAFS_DIFF_CASES:-300}
# The CI variant of the stress test runs two minutes (scripts/stress.sh: 30).
export STRATAFS_STRESS_SECS=${STRATAFS_STRESS_SECS:-120}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

# The tests create their mounts under $TMPDIR; give this run its own, so that
# whatever a crashed test leaves mounted can be found and unmounted.
test_tmp=$(mktemp -d /tmp/stratafs-tests.XXXXXX)
# mktemp makes it 0700; tests that act as another user (tests/it/privileges.rs)
# must reach their mounts below it.
chmod 0755 "$test_tmp"
logs=$(mktemp -d /tmp/stratafs-test-logs.XXXXXX)

# Mount points (deepest first) of everything mounted under the given dirs.
mounts_under() {
    local prefix
    for prefix in "$@"; do
        awk -v p="$prefix/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo
    done | sort -ru
}

unmount_leftovers() {
    local m left=()
    mapfile -t left < <(mounts_under "$test_tmp" "$repo/target")
    ((${#left[@]} > 0)) || return 0
    echo "test.sh: unmounting ${#left[@]} mount(s) left behind by the tests:"
    for m in "${left[@]}"; do
        echo "    $m"
        fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"
    done
}

cleanup() {
    local rc=$?
    set +e
    unmount_leftovers
    rm -rf "$test_tmp" "$logs"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> cargo build --all-targets"
cargo build --all-targets

echo
echo "==> cargo test --no-fail-fast (as $(id -un), STRATAFS_DIFF_CASES=$STRATAFS_DIFF_CASES)"
set +e
STRATAFS_SKIP_LOG=$logs/skipped-root.log TMPDIR=$test_tmp \
    timeout -k 60 "${STRATAFS_CARGO_TEST_TIMEOUT:-2400}" \
    cargo test --no-fail-fast 2>&1 | tee "$logs/cargo-test.log"
cargo_rc=${PIPESTATUS[0]}
set -e
unmount_leftovers

# option_pass OPTS NAME: the real-mount suite again with the mount options
# OPTS on every stratafs mount (log cargo-test-NAME.log, skips
# skipped-NAME.log); sets pass_rc. Fewer differential cases and a shorter
# stress run than the first pass.
option_pass() {
    local opts=$1 name=$2
    echo
    echo "==> cargo test --test it with $opts on every stratafs mount (as $(id -un))"
    set +e
    STRATAFS_TEST_OPTS=$opts STRATAFS_DIFF_CASES=$((STRATAFS_DIFF_CASES / 3 + 1)) \
        STRATAFS_STRESS_SECS=$((STRATAFS_STRESS_SECS / 4 + 1)) \
        STRATAFS_SKIP_LOG=$logs/skipped-$name.log TMPDIR=$test_tmp \
        timeout -k 60 "${STRATAFS_CARGO_TEST_TIMEOUT:-2400}" \
        cargo test --no-fail-fast --test it 2>&1 | tee "$logs/cargo-test-$name.log"
    pass_rc=${PIPESTATUS[0]}
    set -e
    unmount_leftovers
}
# The daemon answering no OPEN (see --help): reads and writes by inode,
# copy-up at the first write.
option_pass no_open noopen
noopen_rc=$pass_rc
# Reads and writes of upper files passed through to the kernel (root only).
option_pass passthrough passthrough
pt_rc=$pass_rc

echo
echo "==> scripts/test-rootless.sh"
set +e
bash scripts/test-rootless.sh 2>&1 | tee "$logs/rootless.log"
rootless_rc=${PIPESTATUS[0]}
set -e

echo
echo "==> scripts/test-rootless.sh with no_open on every stratafs mount"
set +e
STRATAFS_TEST_OPTS=no_open STRATAFS_DIFF_CASES=$((STRATAFS_DIFF_CASES / 3 + 1)) \
    STRATAFS_STRESS_SECS=$((STRATAFS_STRESS_SECS / 4 + 1)) \
    bash scripts/test-rootless.sh 2>&1 | tee "$logs/rootless-noopen.log"
rootless_no_rc=${PIPESTATUS[0]}
set -e

echo
echo "==> scripts/e2e-podman.sh (podman and buildah with stratafs as mount_program)"
set +e
STRATAFS_TEST_BIN='' bash scripts/e2e-podman.sh 2>&1 | tee "$logs/e2e.log"
e2e_rc=${PIPESTATUS[0]}
set -e

# ---------------------------------------------------------------- summary
# count_cargo LOG SKIPLOG RC: sets c_passed, c_failed, c_skipped, c_skips
# from a `cargo test` log and the skips its tests recorded.
count_cargo() {
    local log=$1 skiplog=$2 rc=$3 line tname reason
    c_passed=0 c_failed=0 c_skipped=0 c_skips=()
    while IFS= read -r line; do
        [[ "$line" =~ ([0-9]+)\ passed ]] && c_passed=$((c_passed + BASH_REMATCH[1]))
        [[ "$line" =~ ([0-9]+)\ failed ]] && c_failed=$((c_failed + BASH_REMATCH[1]))
    done < <(grep -E '^test result: ' "$log" || true)
    if ((rc != 0 && c_failed == 0)); then
        c_failed=1 # build error, crash or timeout: no per-test failure to count
    fi
    # A test that recorded a skip and passed is skipped, not passed.
    if [[ -f "$skiplog" ]]; then
        while IFS=$'\t' read -r tname reason; do
            grep -qxF "test $tname ... ok" "$log" || continue
            c_skipped=$((c_skipped + 1))
            c_skips+=("$tname: $reason")
        done < <(sort -u -t $'\t' -k1,1 "$skiplog")
    fi
    c_passed=$((c_passed - c_skipped))
}
count_cargo "$logs/cargo-test.log" "$logs/skipped-root.log" "$cargo_rc"
root_passed=$c_passed root_failed=$c_failed root_skipped=$c_skipped root_skips=("${c_skips[@]}")
count_cargo "$logs/cargo-test-noopen.log" "$logs/skipped-noopen.log" "$noopen_rc"
no_passed=$c_passed no_failed=$c_failed no_skipped=$c_skipped no_skips=("${c_skips[@]}")
count_cargo "$logs/cargo-test-passthrough.log" "$logs/skipped-passthrough.log" "$pt_rc"
pt_passed=$c_passed pt_failed=$c_failed pt_skipped=$c_skipped pt_skips=("${c_skips[@]}")

# count_rootless LOG RC: sets r_passed, r_failed, r_skipped, r_skips from
# the summary scripts/test-rootless.sh printed.
count_rootless() {
    local log=$1 rc=$2 line
    r_passed=0 r_failed=0 r_skipped=0
    if line=$(grep -E '^rootless: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log" | tail -n 1); then
        [[ "$line" =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped ]]
        r_passed=${BASH_REMATCH[1]} r_failed=${BASH_REMATCH[2]} r_skipped=${BASH_REMATCH[3]}
    fi
    if ((rc != 0 && r_failed == 0)); then
        r_failed=1
    fi
    mapfile -t r_skips < <(sed -n 's/^rootless:   skipped: //p' "$log")
}
count_rootless "$logs/rootless.log" "$rootless_rc"
rl_passed=$r_passed rl_failed=$r_failed rl_skipped=$r_skipped rl_skips=("${r_skips[@]}")
count_rootless "$logs/rootless-noopen.log" "$rootless_no_rc"
rn_passed=$r_passed rn_failed=$r_failed rn_skipped=$r_skipped rn_skips=("${r_skips[@]}")

e2e_passed=0 e2e_failed=0 e2e_skipped=0
if line=$(grep -E '^e2e: [0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$logs/e2e.log" | tail -n 1); then
    [[ "$line" =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed(,\ ([0-9]+)\ skipped)? ]]
    e2e_passed=${BASH_REMATCH[1]} e2e_failed=${BASH_REMATCH[2]} e2e_skipped=${BASH_REMATCH[4]:-0}
fi
if ((e2e_rc != 0 && e2e_failed == 0)); then
    e2e_failed=1
fi

# The tests a run skipped, with the reasons, below its line.
list_skips() {
    local s
    for s in "$@"; do
        echo "    skipped: $s"
    done
}

echo
echo "==> summary"
printf 'cargo test (root):            %d passed, %d failed, %d skipped (exit status %d)\n' \
    "$root_passed" "$root_failed" "$root_skipped" "$cargo_rc"
list_skips "${root_skips[@]}"
printf 'integration tests (no_open):  %d passed, %d failed, %d skipped (exit status %d)\n' \
    "$no_passed" "$no_failed" "$no_skipped" "$noopen_rc"
list_skips "${no_skips[@]}"
printf 'integration tests (passthrough): %d passed, %d failed, %d skipped (exit status %d)\n' \
    "$pt_passed" "$pt_failed" "$pt_skipped" "$pt_rc"
list_skips "${pt_skips[@]}"
printf 'integration tests (rootless): %d passed, %d failed, %d skipped (exit status %d)\n' \
    "$rl_passed" "$rl_failed" "$rl_skipped" "$rootless_rc"
list_skips "${rl_skips[@]}"
printf 'integration tests (rootless, no_open): %d passed, %d failed, %d skipped (exit status %d)\n' \
    "$rn_passed" "$rn_failed" "$rn_skipped" "$rootless_no_rc"
list_skips "${rn_skips[@]}"
printf 'podman/buildah end to end:    %d passed, %d failed, %d skipped (exit status %d)\n' \
    "$e2e_passed" "$e2e_failed" "$e2e_skipped" "$e2e_rc"
echo "total: $((root_passed + no_passed + pt_passed + rl_passed + rn_passed + e2e_passed)) passed," \
    "$((root_failed + no_failed + pt_failed + rl_failed + rn_failed + e2e_failed)) failed," \
    "$((root_skipped + no_skipped + pt_skipped + rl_skipped + rn_skipped + e2e_skipped)) skipped"

((cargo_rc == 0 && noopen_rc == 0 && pt_rc == 0 && rootless_rc == 0 && rootless_no_rc == 0 && e2e_rc == 0))
