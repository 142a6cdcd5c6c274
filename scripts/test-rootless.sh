#!/usr/bin/env bash
# Run the integration test binary (tests/it) the way a rootless container
# engine would run stratafs: as an unprivileged user, inside a fresh user +
# mount namespace (`unshare -Urm`), with /dev/fuse open to everyone.
#
# As root, the tests run as a dedicated system user (created on first use).
# As any other user, they run as that user.
#
# Tests that skip their checks here record themselves in STRATAFS_SKIP_LOG
# (set per binary by this script); they are reported as skipped, not
# passed. The last line is `rootless: N passed, M failed, K skipped`.
#
# Started as root, it first records, as root, the kernel overlay's results
# of the differential cases with redirect_dir=on and metacopy=on (which the
# kernel refuses in a user namespace); the rootless run compares stratafs
# with them (tests/it/differential.rs, "Rootless against root results").
# Started as another user, those tests are reported skipped.
#
# Usage: bash scripts/test-rootless.sh [ARGS...]
#   ARGS are passed to every test binary (e.g. a test name filter).
#
# Environment:
#   STRATAFS_TEST_USER     user to run as when invoked as root (stratafs-test)
#   STRATAFS_TEST_TIMEOUT  seconds one test binary may take (1800; the whole
#                          suite is one binary, about 3 minutes on 2 CPUs)
#   STRATAFS_ROOTLESS_BUDGET  seconds all of them together may take (1800)
#   STRATAFS_KEEP_TMP=1    keep the per-run directory (logs, temp files)
#   RUST_TEST_THREADS      libtest threads (default: number of CPUs, as cargo)
#   STRATAFS_TEST_BIN      stratafs binary the tests mount (default: the one
#                          cargo built; copied if the test user cannot reach it)
#   STRATAFS_DIFF_SEED, STRATAFS_DIFF_CASES, STRATAFS_DIFF_ORACLE_CASES,
#   STRATAFS_DIFF_OPS      the differential cases (tests/it/differential.rs),
#                          recorded as root and compared rootless alike
#   STRATAFS_*, RUST_*, PROPTEST_* are passed through to the tests.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { echo "rootless: $*"; }
fail_early() {
    say "ERROR: $*" >&2
    say "0 passed, 1 failed, 0 skipped"
    exit 1
}

test_user=${STRATAFS_TEST_USER:-stratafs-test}
timeout_s=${STRATAFS_TEST_TIMEOUT:-1800}
budget_s=${STRATAFS_ROOTLESS_BUDGET:-1800}
threads=${RUST_TEST_THREADS:-$(nproc)}

if [[ $(id -u) -eq 0 ]]; then
    as_root=1
else
    as_root=0
    test_user=$(id -un)
fi

bash scripts/install-deps.sh

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

# ------------------------------------------------------------ test binaries
# `cargo test --no-run` builds exactly what `cargo test` runs (same profile,
# same features), so after scripts/test.sh this is a no-op build.
say "locating test binaries (cargo test --no-run)"
if ! json=$(cargo test --no-run --message-format=json-render-diagnostics); then
    fail_early "cargo test --no-run failed"
fi
mapfile -t tests < <(jq -r '
    select(.reason == "compiler-artifact" and .profile.test and .executable != null
           and (.target.kind | any(. == "test")))
    | "\(.target.name)\t\(.executable)"' <<<"$json" | sort -u)
stratafs_bin=$(jq -r '
    select(.reason == "compiler-artifact" and (.profile.test | not) and .executable != null
           and .target.name == "stratafs" and (.target.kind | any(. == "bin")))
    | .executable' <<<"$json" | tail -n 1)
# A binary chosen by the caller (the harness's STRATAFS_TEST_BIN) wins.
stratafs_bin=${STRATAFS_TEST_BIN:-${STRATAFS_BIN:-$stratafs_bin}}
[[ -n "$stratafs_bin" ]] && stratafs_bin=$(readlink -f "$stratafs_bin")
[[ -n "$stratafs_bin" && -x "$stratafs_bin" ]] || fail_early "stratafs binary not found (got '$stratafs_bin')"

if ((${#tests[@]} == 0)); then
    say "no integration test binaries (tests/it) found"
    say "0 passed, 0 failed, 0 skipped"
    exit 0
fi

# ------------------------------------------------------------ environment
if ((as_root)); then
    if ! getent passwd "$test_user" >/dev/null; then
        say "creating system user $test_user"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$test_user" ||
            getent passwd "$test_user" >/dev/null ||
            fail_early "could not create user $test_user"
    fi
    as_user=(setpriv --reuid="$test_user" --regid="$test_user" --init-groups)

    if [[ ! -e /dev/fuse ]]; then
        modprobe fuse 2>/dev/null || true
        [[ -e /dev/fuse ]] || mknod -m 0666 /dev/fuse c 10 229 ||
            fail_early "/dev/fuse does not exist and could not be created"
    fi
    # Debian's udev rule makes /dev/fuse 0666; containers and minimal VMs
    # often leave it 0600 root, which no unprivileged user can open.
    if [[ "$(stat -c %a /dev/fuse)" != 666 ]]; then
        say "chmod 0666 /dev/fuse (was $(stat -c %a /dev/fuse))"
        chmod 0666 /dev/fuse
    fi
else
    as_user=()
    [[ -r /dev/fuse && -w /dev/fuse ]] ||
        fail_early "/dev/fuse is not read/writable by $test_user (try: sudo chmod 0666 /dev/fuse)"
fi
test_uid=$(id -u "$test_user")

run=$(mktemp -d /tmp/stratafs-rootless.XXXXXX)
mkdir -p "$run/tmp" "$run/home" "$run/bin" "$run/logs"
if ((as_root)); then
    chown -R "$test_user:" "$run"
fi
chmod 0755 "$run"

# Processes left behind by the test user (e.g. a daemon whose mount was never
# unmounted keeps its private mount namespace alive). Only meaningful for the
# dedicated test user, i.e. when we run as root.
leftover_pids() {
    ((as_root)) || return 0
    local d st
    for d in /proc/[0-9]*; do
        [[ "$(stat -c %u "$d" 2>/dev/null)" == "$test_uid" ]] || continue
        st=$(cat "$d/stat" 2>/dev/null) || continue
        st=${st##*) }
        [[ "${st%% *}" == Z ]] && continue # exited, waiting to be reaped
        echo "${d#/proc/}"
    done
    return 0
}

reap_leftovers() {
    local pids pid
    # A daemon whose mount was just unmounted may still be on its way out.
    for _ in $(seq 30); do
        mapfile -t pids < <(leftover_pids)
        ((${#pids[@]} > 0)) || return 0
        sleep 0.1
    done
    say "WARNING: $1: ${#pids[@]} process(es) of $test_user still running, stopping them:"
    for pid in "${pids[@]}"; do
        echo "    $pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 1
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    set +e
    reap_leftovers "at exit"
    if [[ "${STRATAFS_KEEP_TMP:-0}" == 1 ]]; then
        say "kept $run"
    else
        rm -rf "$run"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

user_can() { "${as_user[@]}" test "$@"; }

# The test binaries have CARGO_BIN_EXE_stratafs (an absolute path under
# target/) compiled in. If the test user cannot reach target/ (a checkout
# under /root, say), run copies from $run/bin and point the tests at the copy
# through STRATAFS_TEST_BIN (and STRATAFS_BIN).
if ! user_can -x "$stratafs_bin"; then
    say "$test_user cannot execute $stratafs_bin; using a copy in $run/bin"
    cp "$stratafs_bin" "$run/bin/stratafs"
    chmod 0755 "$run/bin/stratafs"
    stratafs_bin="$run/bin/stratafs"
fi
if user_can -r "$repo" -a -x "$repo"; then
    test_cwd=$repo # cargo runs integration tests from the package root
else
    say "$test_user cannot read $repo; running the tests from $run/home"
    test_cwd=$run/home
fi

if ! err=$("${as_user[@]}" unshare -Urm true 2>&1); then
    fail_early "$test_user cannot create a user namespace (unshare -Urm): $err
    (check sysctl user.max_user_namespaces / kernel.unprivileged_userns_clone / kernel.apparmor_restrict_unprivileged_userns)"
fi

envs=()
while IFS= read -r -d '' kv; do
    case "${kv%%=*}" in
    STRATAFS_* | RUST_* | PROPTEST_* | CI | NO_COLOR | TERM) envs+=("$kv") ;;
    esac
done < <(env -0)
envs+=(
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    "HOME=$run/home"
    "TMPDIR=$run/tmp"
    "USER=$test_user"
    "LOGNAME=$test_user"
    "LANG=C.UTF-8"
    "STRATAFS_ROOTLESS=1"
    "STRATAFS_BIN=$stratafs_bin"
    "STRATAFS_TEST_BIN=$stratafs_bin"
    "CARGO_MANIFEST_DIR=$repo"
    "CARGO_BIN_EXE_stratafs=$stratafs_bin"
)

# ------------------------------------------------------------ root results
# The kernel overlay's results of the differential cases with
# redirect_dir=on / metacopy=on, recorded as root into $run/oracle
# (readable by the test user) when the arguments select those tests.
oracle_wanted() {
    local a
    for a in "$@"; do
        [[ "$a" == -* ]] && continue
        [[ "differential::oracle_redirect" == *"$a"* || "differential::oracle_metacopy" == *"$a"* ]] &&
            return 0
    done
    for a in "$@"; do
        [[ "$a" == -* ]] || return 1
    done
    return 0
}
oracle_summary=()
oracle_failed=0
if ((as_root)) && oracle_wanted "$@"; then
    it_exe=""
    for entry in "${tests[@]}"; do
        [[ "${entry%%$'\t'*}" == it ]] && it_exe=${entry#*$'\t'}
    done
    if [[ -n "$it_exe" ]]; then
        mkdir -p "$run/oracle" "$run/root-tmp"
        chmod 0755 "$run/oracle"
        say "recording the kernel overlay's results as root (differential::oracle_record_*)"
        start=$SECONDS
        set +e
        (
            cd "$repo"
            TMPDIR=$run/root-tmp STRATAFS_DIFF_ORACLE=$run/oracle \
                timeout -k 30 "$timeout_s" \
                "$it_exe" --ignored --nocapture --test-threads="$threads" differential::oracle_record_
        ) >"$run/logs/oracle-record.log" 2>&1
        rc=$?
        set -e
        grep -o 'oracle [a-z]*: recorded.*' "$run/logs/oracle-record.log" | sed 's/^/rootless: /' || true
        if ((rc == 0)); then
            oracle_summary+=("$(printf 'PASS %-28s (root, %ds)' "oracle recording" $((SECONDS - start)))")
        else
            cat "$run/logs/oracle-record.log"
            oracle_failed=1
            oracle_summary+=("$(printf 'FAIL %-28s (root, exit status %d, %ds)' "oracle recording" "$rc" $((SECONDS - start)))")
        fi
        envs+=("STRATAFS_DIFF_ORACLE=$run/oracle")
    fi
fi

say "running ${#tests[@]} test binaries as $test_user (uid $test_uid) in unshare -Urm," \
    "TMPDIR=$run/tmp, --test-threads=$threads"

# ------------------------------------------------------------ run
total_passed=0
total_failed=0
total_skipped=0
summary=()
skipped_lines=()
for entry in "${tests[@]}"; do
    name=${entry%%$'\t'*}
    exe=${entry#*$'\t'}
    if ! user_can -x "$exe"; then
        cp "$exe" "$run/bin/$(basename "$exe")"
        exe="$run/bin/$(basename "$exe")"
        chmod a+rx "$exe"
    fi
    log="$run/logs/$name.log"
    skips="$run/logs/$name.skipped"
    : >"$skips"
    if ((as_root)); then
        chown "$test_user:" "$skips"
    fi
    echo
    say "---- $name ($exe)"
    start=$SECONDS
    limit=$((budget_s - start))
    ((limit < timeout_s)) || limit=$timeout_s
    ((limit > 10)) || limit=10
    set +e
    (
        cd "$test_cwd"
        exec "${as_user[@]}" env -i "${envs[@]}" "STRATAFS_SKIP_LOG=$skips" \
            timeout -k 30 "$limit" \
            unshare -Urm -- "$exe" --test-threads="$threads" "$@"
    ) 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    secs=$((SECONDS - start))

    passed=0 failed=0 ignored=0
    if result=$(grep -E '^test result: ' "$log" | tail -n 1) && [[ -n "$result" ]]; then
        [[ "$result" =~ ([0-9]+)\ passed ]] && passed=${BASH_REMATCH[1]}
        [[ "$result" =~ ([0-9]+)\ failed ]] && failed=${BASH_REMATCH[1]}
        [[ "$result" =~ ([0-9]+)\ ignored ]] && ignored=${BASH_REMATCH[1]}
    fi
    note=""
    if ((rc != 0 && failed == 0)); then
        # Crashed, timed out or failed outside a test: count the binary once.
        failed=1
        if ((rc == 124 || rc == 137)); then
            note=", timed out after ${limit}s"
        else
            note=", exit status $rc"
        fi
    fi
    # A test that recorded a skip and passed counts as skipped.
    skipped=0
    while IFS=$'\t' read -r tname reason; do
        grep -qxF "test $tname ... ok" "$log" || continue
        skipped=$((skipped + 1))
        skipped_lines+=("$tname: $reason")
    done < <(sort -u -t $'\t' -k1,1 "$skips")
    passed=$((passed - skipped))
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
    total_skipped=$((total_skipped + skipped))
    if ((rc == 0)); then
        status=PASS
    else
        status=FAIL
    fi
    summary+=("$(printf '%s %-28s (%d passed; %d failed; %d skipped; %d ignored; %ds%s)' \
        "$status" "$name" "$passed" "$failed" "$skipped" "$ignored" "$secs" "$note")")
    reap_leftovers "after $name"
done

echo
say "summary (unprivileged user $test_user, user+mount namespace):"
total_failed=$((total_failed + oracle_failed))
for line in "${oracle_summary[@]}" "${summary[@]}"; do
    say "  $line"
done
for line in "${skipped_lines[@]}"; do
    say "  skipped: $line"
done
say "$total_passed passed, $total_failed failed, $total_skipped skipped"
((total_failed == 0))
