#!/usr/bin/env bash
# End-to-end test: stratafs as the overlay `mount_program` of
# containers-storage, driven by podman and buildah from Debian 12, as root and
# as an unprivileged user (rootless podman).
#
# Usage: bash scripts/e2e-podman.sh [--root-only | --rootless-only] [--keep]
#                                   [--timing [--update-doc] | --no-timing]
#
# Everything lives in a private temp dir: storage.conf, containers.conf,
# registries.conf and policy.json are private files handed to the engines
# through CONTAINERS_STORAGE_CONF, CONTAINERS_CONF, CONTAINERS_REGISTRIES_CONF
# and $HOME/.config/containers/policy.json.  All engine commands run in a
# private mount namespace in which /etc/containers is an empty tmpfs and
# /var/lib and /run are kernel overlays with throw-away upper dirs, so the
# host's /etc/containers and /var/lib/containers are neither used nor written
# (root podman writes /var/lib/containers/cache/blob-info-cache-v1.boltdb on
# `podman import` whatever storage.conf says).
#
# No registry is needed: the base image is imported from a busybox-static
# rootfs, a second layer is built with `podman build`.
#
# Build timings (root): each build scenario is built with podman twice, in two
# fresh stores side by side, one with stratafs as mount_program and one with
# podman's native overlay driver (the kernel overlay), and printed as a table
# with a breakdown of the build step: the same step done by hand with buildah
# (from, mount, COPY, RUN), the naive-diff walk alone (`podman diff` of the
# working container) and the commit, and for the mount program the number and
# time of its mounts (the wrapper logs when each call returns). Scenarios:
# `layered` (the RUN of the layered image), `untar` (COPY of a tarball of small
# files, RUN tar -x); with --timing also `dpkg` (a Debian base image and perl's
# .debs made from the host's installed packages by scripts/e2e/debroot.py,
# COPY of the .debs, RUN dpkg -i), more files in `untar`, and 3 runs each.
#
# redirect_dir (root, then rootless): stores with redirect_dir=on (and
# metacopy=on if the binary mounts with it) and index=on in mountopt
# (containers-storage drops metacopy=on for a mount program: the wrapper adds
# it); a podman container renames lower directories and chowns a lower tree
# with a hard-linked file in it (scripts/e2e/rdchange.sh), is committed and
# saved; then a buildah container (from, run, commit) renames a lower
# directory, moves subtrees out of and into it, chowns it and one name of a
# hard-linked lower file (scripts/e2e/bdchange.sh).  Each committed layer must
# equal the one made of the same scenario with podman's and buildah's native
# overlay driver (the kernel overlay, same options, root), hard links
# included, and the stratafs upper dir must hold redirects and metadata-only
# copies instead of copied data.
#
# The mount_program is a wrapper that logs its argv (one line per call) and
# execs stratafs; the checks also look for `fuse.stratafs` as the container's
# root file system type.
#
# Environment:
#   STRATAFS_TEST_BIN, STRATAFS_BIN
#                       stratafs binary to test (default: `cargo build
#                       --release`, then target/release/stratafs)
#   E2E_MOUNT_PROGRAM   run the same checks with another mount program, e.g.
#                       /usr/bin/fuse-overlayfs (mounts of type fuse.NAME)
#   E2E_USER            unprivileged user for the rootless part (stratafs-e2e,
#                       created if missing, with /etc/subuid and /etc/subgid
#                       ranges added if it has none)
#   E2E_TIMEOUT         seconds any single engine command may take (180)
#   E2E_STRATAFS_LOG=1  run stratafs in the foreground under the wrapper with
#                       RUST_LOG=${RUST_LOG:-debug} and its stderr in
#                       <mode>/stratafs.<wrapper pid>.log, one per mount (a
#                       daemonized stratafs sends stderr to /dev/null, so its
#                       log is otherwise lost); the wrapper exits 0 once the
#                       mount shows up.  Use with --keep.
#   E2E_KEEP=1          keep the temp dir (same as --keep)
#   E2E_TIMING          basic (default: layered and a 500-file untar, one
#                       run), full (same as --timing), 0 (same as --no-timing)
#   E2E_TIMING_RUNS     runs per scenario and driver (basic 1, full 3)
#   E2E_TIMING_FILES    files in the untar scenario (basic 500, full 10000)
#   E2E_TIMING_OUT      also write the timing tables (markdown) to this file
#   E2E_TIMING_OPTS     more mount options for the mount program in the timed
#                       builds only (e.g. no_open); the doc is then not updated
#
# --update-doc (with --timing, on an otherwise idle machine): also write the
# timing table into docs/PERFORMANCE.md, between its "E2E BUILD TIMES"
# markers, if every timed build with stratafs passed (E2E_TIMING_DOC=FILE:
# into FILE instead).
#
# Output: a PASS/FAIL/SKIP line per check and `e2e: N passed, M failed`.
# (Container-side scripts are single-quoted on purpose.)
# shellcheck disable=SC2016,SC2012
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
helpers=$repo/scripts/e2e

do_root=1
do_rootless=1
keep=${E2E_KEEP:-0}
update_doc=0
for arg in "$@"; do
    case $arg in
        --root-only) do_rootless=0 ;;
        --rootless-only) do_root=0 ;;
        --keep) keep=1 ;;
        --timing) E2E_TIMING=full ;;
        --no-timing) E2E_TIMING=0 ;;
        --update-doc) update_doc=1 ;;
        -h | --help)
            sed -n '2,/^set -uo/{/^#/p}' "${BASH_SOURCE[0]}" | sed '/on purpose\|shellcheck/d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "e2e: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

e2e_user=${E2E_USER:-stratafs-e2e}
timing=${E2E_TIMING:-basic}
case $timing in
    basic | full | 0) ;;
    *)
        echo "e2e: E2E_TIMING must be basic, full or 0" >&2
        exit 2
        ;;
esac
if ((update_doc)) && [[ $timing != full || $do_root == 0 ]]; then
    echo "e2e: --update-doc needs --timing and the root part" >&2
    exit 2
fi
cmd_timeout=${E2E_TIMEOUT:-180}
start_time=$(date +%s)

npass=0
nfail=0
nskip=0
failed_checks=()

say() { echo "e2e: $*"; }
indent() { sed -e 's/^/    | /' | head -n "${1:-40}"; }
# Seconds since the previous PASS/FAIL/SKIP line, shown on each.
last_mark=$(date +%s%N)
took=
took() {
    local now
    now=$(date +%s%N)
    took=$(printf '%d.%ds' $(((now - last_mark) / 1000000000)) $((((now - last_mark) / 100000000) % 10)))
    last_mark=$now
}
pass() {
    npass=$((npass + 1))
    took
    echo "PASS  $1 [$took]"
}
fail() {
    nfail=$((nfail + 1))
    failed_checks+=("$1")
    took
    echo "FAIL  $1 [$took]"
    if [[ -n "${2:-}" ]]; then
        printf '%s\n' "$2" | indent 60
    fi
}
skip() {
    nskip=$((nskip + 1))
    echo "SKIP  $1${2:+ -- $2}"
}
info() { echo "INFO  $*"; }
die() {
    say "ERROR: $*" >&2
    say "$npass passed, $((nfail + 1)) failed"
    exit 1
}

if [[ $(id -u) -ne 0 ]]; then
    echo "e2e: must run as root (it installs packages and creates a user)" >&2
    say "0 passed, 1 failed"
    exit 1
fi

# ------------------------------------------------------------ packages
need_pkgs=()
for pkg in podman buildah runc conmon uidmap slirp4netns busybox-static fuse3 jq; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
    say "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "${need_pkgs[@]}" >/tmp/e2e-apt.log 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq "${need_pkgs[@]}" >/tmp/e2e-apt.log 2>&1 ||
            die "apt-get install ${need_pkgs[*]} failed (see /tmp/e2e-apt.log)"
    fi
fi
for c in podman buildah runc conmon busybox jq nsenter unshare runuser fusermount3; do
    command -v "$c" >/dev/null || die "$c not found after installing packages"
done
bb=$(command -v busybox)
file "$bb" 2>/dev/null | grep -q 'dynamically linked' && die "$bb is not static (need busybox-static)"
info "$(podman --version), $(buildah --version | cut -d' ' -f1-3), runc $(runc --version | sed -n 's/^runc version //p')"

# ------------------------------------------------------------ stratafs
stratafs_src=${STRATAFS_TEST_BIN:-${STRATAFS_BIN:-}}
if [[ -z "$stratafs_src" && -z "${E2E_MOUNT_PROGRAM:-}" ]]; then
    say "building stratafs (cargo build --release)"
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    (cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"
    stratafs_src=${CARGO_TARGET_DIR:-$repo/target}/release/stratafs
fi
[[ -n "${E2E_MOUNT_PROGRAM:-}" || -x "$stratafs_src" ]] || die "stratafs binary not found: $stratafs_src"

[[ -c /dev/fuse ]] || die "/dev/fuse missing"
if [[ $(stat -c %a /dev/fuse) != 666 ]]; then
    chmod 666 /dev/fuse || die "cannot chmod 666 /dev/fuse"
fi

# ------------------------------------------------------------ temp dir
host_state() {
    # What the engines must not touch on the host.
    {
        echo "var-lib-containers: $(ls -la --time-style=+ /var/lib/containers 2>&1)"
        find /etc/containers -printf '%p %s %T@\n' 2>&1 | sort
    } | md5sum | cut -d' ' -f1
}
host_state_before=$(host_state)
# Root podman (cgroupfs manager) creates libpod_parent in each v1 hierarchy;
# removed at the end if it was not there before (only empty cgroups go).
cgroups_before=$(ls -d /sys/fs/cgroup/*/libpod_parent /sys/fs/cgroup/libpod_parent 2>/dev/null)

prog_name=stratafs
T=$(mktemp -d /tmp/stratafs-e2e.XXXXXX)
chmod 755 "$T"
NS=$T/ns
ns_ok=0

# Runs a command in the private mount namespace.
inns() { nsenter --mount="$NS/mnt" "$@"; }

# stratafs processes and mounts of this run are recognised by $T in their
# command line / mount point (other stratafs instances may run on the host).
our_daemons() { pgrep -f "^$T/bin/$prog_name " || true; }
our_mounts_ns() {
    if ((ns_ok)); then
        inns awk -v t="$T/" 'index($2, t) == 1 && $3 ~ /^fuse/ { print $2 " " $3 }' /proc/mounts
    fi
}

cleanup_done=0
cleanup() {
    ((cleanup_done)) && return
    cleanup_done=1
    set +e
    trap - INT TERM
    if ((ns_ok)); then
        if [[ -f $T/rootless/ready ]]; then
            rl_eng podman rm -a -f -t 0 >/dev/null 2>&1
            rl_eng buildah rm --all >/dev/null 2>&1
            local pp
            pp=$(cat "$T/rootless/run/libpod/tmp/pause.pid" 2>/dev/null)
            [[ -n "$pp" ]] && kill "$pp" 2>/dev/null
        fi
        local s
        for s in root tm-mp tm-k rd-mp rd-k; do
            if [[ -f $T/$s/ready ]]; then
                root_eng_in "$T/$s" podman rm -a -f -t 0 >/dev/null 2>&1
                root_eng_in "$T/$s" buildah rm --all >/dev/null 2>&1
            fi
        done
        if [[ -f $T/rl-rd/ready ]]; then
            local pp
            rl_eng_in "$T/rl-rd" podman rm -a -f -t 0 >/dev/null 2>&1
            rl_eng_in "$T/rl-rd" buildah rm --all >/dev/null 2>&1
            pp=$(cat "$T/rl-rd/run/libpod/tmp/pause.pid" 2>/dev/null)
            [[ -n "$pp" ]] && kill "$pp" 2>/dev/null
        fi
        # Whatever is still mounted under $T in the namespace, deepest first.
        inns awk -v t="$T/" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r m; do inns umount -l "$m" 2>/dev/null; done
    fi
    local pids
    pids=$(our_daemons)
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null
        sleep 1
        pids=$(our_daemons)
        # shellcheck disable=SC2086
        [[ -n "$pids" ]] && kill -9 $pids 2>/dev/null
    fi
    if ((ns_ok)); then
        umount "$NS/mnt" 2>/dev/null
    fi
    umount "$NS" 2>/dev/null
    local cg
    for cg in /sys/fs/cgroup/*/libpod_parent /sys/fs/cgroup/libpod_parent; do
        [[ -d $cg ]] || continue
        grep -qxF "$cg" <<<"$cgroups_before" && continue
        find "$cg" -depth -mindepth 0 -type d -exec rmdir {} \; 2>/dev/null
    done
    # Host mounts under $T (should be none).
    awk -v t="$T/" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null; done
    if ((keep)); then
        say "kept $T"
    else
        rm -rf --one-file-system "$T"
    fi
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------ namespace
# A persistent mount namespace bound to $NS/mnt.
mkdir -p "$NS" "$T/varlib/upper" "$T/varlib/work" "$T/run/upper" "$T/run/work"
{ mount --bind "$NS" "$NS" && mount --make-private "$NS"; } || die "cannot make $NS a private mount"
touch "$NS/mnt"
unshare --mount="$NS/mnt" --propagation private true || die "unshare --mount failed"
ns_ok=1
inns mount -t overlay overlay \
    -o "lowerdir=/var/lib,upperdir=$T/varlib/upper,workdir=$T/varlib/work" /var/lib ||
    die "cannot overlay /var/lib in the private namespace"
# runc keeps its state in /run/runc, podman may use /run/containers: same.
inns mount -t overlay overlay \
    -o "lowerdir=/run,upperdir=$T/run/upper,workdir=$T/run/work" /run ||
    die "cannot overlay /run in the private namespace"
inns mount -t tmpfs -o mode=755,size=1m tmpfs /etc/containers ||
    die "cannot hide /etc/containers in the private namespace"
# Root `podman commit` reads /etc/containers/policy.json whatever $HOME says
# (containers.conf cannot move it in this version): a private copy in the
# namespace's /etc/containers.
inns sh -c 'echo "{\"default\": [{\"type\": \"insecureAcceptAnything\"}]}" >/etc/containers/policy.json'

# ------------------------------------------------------------ shared files
mkdir -p "$T/bin"
# E2E_MOUNT_PROGRAM=/usr/bin/fuse-overlayfs runs the same checks against
# another mount program (to tell engine issues from filesystem bugs).
if [[ -n "${E2E_MOUNT_PROGRAM:-}" ]]; then
    stratafs_src=$(readlink -f "$E2E_MOUNT_PROGRAM")
    prog_name=$(basename "$E2E_MOUNT_PROGRAM")
fi
fstype=fuse.$prog_name
install -m 0755 "$stratafs_src" "$T/bin/$prog_name"
info "mount program: $stratafs_src (mounts of type $fstype)"

# The mount program: logs argv, then runs stratafs.  $1 = log directory;
# $2 = timed: instead of exec'ing stratafs, wait for it (it returns once the
# mount is live) and append "START_NS END_NS STATUS" to mount-times.log;
# $3 = mount options to add to the engine's (-o $3 before its argv).
make_wrapper() {
    local dir=$1 pre=${3:+-o $3 }
    local w=$1/mount-program run="exec $T/bin/$prog_name $pre\"\$@\""
    if [[ ${2:-} == timed ]]; then
        run="t0=\$(date +%s%N)
$T/bin/$prog_name $pre\"\$@\"
rc=\$?
echo \"\$t0 \$(date +%s%N) \$rc\" >>$dir/mount-times.log
exit \$rc"
    fi
    cat >"$w" <<EOF
#!/bin/sh
# mount_program wrapper written by scripts/e2e-podman.sh
log=$dir/mount-program.log
printf '%s uid=%s cwd=%s argv:' "\$(date +%T.%N)" "\$(id -u)" "\$PWD" >>"\$log"
for a in "\$@"; do printf " '%s'" "\$a" >>"\$log"; done
echo >>"\$log"
if [ "\${E2E_STRATAFS_LOG:-$E2E_LOG_DEFAULT}" = 1 ]; then
    mnt=
    for a in "\$@"; do mnt=\$a; done
    RUST_LOG=\${RUST_LOG:-$RUST_LOG_DEFAULT} $T/bin/$prog_name -f $pre"\$@" 2>>$dir/stratafs.\$\$.log &
    pid=\$!
    echo "  -> foreground pid \$pid, log $dir/stratafs.\$\$.log" >>"\$log"
    i=0
    while [ \$i -lt 100 ]; do
        if awk -v m="\$mnt" '\$2 == m && \$3 == "$fstype" { f = 1 } END { exit !f }' /proc/self/mounts; then
            exit 0
        fi
        kill -0 \$pid 2>/dev/null || { wait \$pid; exit 1; }
        sleep 0.1
        i=\$((i + 1))
    done
    echo "stratafs: mount did not appear within 10s" >&2
    exit 1
fi
$run
EOF
    chmod 0755 "$w"
}
E2E_LOG_DEFAULT=${E2E_STRATAFS_LOG:-0}
RUST_LOG_DEFAULT=${RUST_LOG:-debug}

# Base image rootfs: static busybox and the test tree under /data.
rootfs=$T/rootfs
mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,e2e,data}
chmod 1777 "$rootfs/tmp"
cp "$bb" "$rootfs/bin/busybox"
for a in $("$bb" --list); do
    [[ $a == busybox ]] || ln -sf busybox "$rootfs/bin/$a"
done
echo 'root:x:0:0:root:/:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"
cp "$helpers"/{mutate,verify,once,layer2,rdchange,rdview,bdchange}.sh "$rootfs/e2e/"
echo "$fstype" >"$rootfs/e2e/fstype"
(
    cd "$rootfs/data" || exit 1
    echo base-file1 >file1
    echo line1 >appendme
    echo 0123456789 >truncme
    echo c >chmodme && chmod 644 chmodme
    echo o >chownme
    echo renameme-content >renameme
    echo replacesrc-content-longer >replacesrc # other size: see verify.sh
    echo replacedst-content >replacedst
    echo d >deleteme
    mkdir -p deldir/sub renamedir dir1 dirmode l1dir deep/a/b/c/d
    echo x >deldir/x
    echo y >deldir/sub/y
    echo f1 >renamedir/f1
    echo a >dir1/a
    echo b >dir1/b
    echo m >dirmode/m
    echo deep >deep/a/b/c/d/file
    echo gone >l1gone
    echo old1 >l1dir/old1
    echo old2 >l1dir/old2
    echo v1 >l2mod
    echo still-readable >openunlink
    head -c 3145728 /dev/urandom >big
    md5sum big >big.md5
)
# The trees of the redirect_dir scenario (rdchange.sh, bdchange.sh):
# documentation to rename, a tree to chown (set-id bits, which a chown
# clears, a symlink), hard links.
(
    cd "$rootfs" || exit 1
    for i in 00 01 02 03 04 05; do
        mkdir -p "usr/share/doc/pkg-$i/examples"
        echo "copyright $i" >"usr/share/doc/pkg-$i/copyright"
        echo "changelog $i" >"usr/share/doc/pkg-$i/changelog"
        echo "example $i" >"usr/share/doc/pkg-$i/examples/ex"
    done
    mkdir -p srv/tree/d1/sub srv/tree/d2 srv/tree/bin
    echo f1 >srv/tree/d1/f1
    echo s >srv/tree/d1/sub/s
    echo f2 >srv/tree/d2/f2
    head -c 300000 /dev/urandom >srv/tree/d2/big
    printf '#!/bin/sh\necho id\n' >srv/tree/bin/suid
    cp srv/tree/bin/suid srv/tree/bin/sgid
    ln -s d1/f1 srv/tree/link
    # Hard-linked lower files: one inode with names inside the chowned tree
    # and one outside it; one with three names of which one is chowned.
    mkdir -p srv/links/sub
    echo linked >srv/tree/d1/linked
    ln srv/tree/d1/linked srv/tree/d2/linked2
    ln srv/tree/d1/linked srv/links/outside
    echo pair >srv/links/pair-a
    ln srv/links/pair-a srv/links/pair-b
    ln srv/links/pair-a srv/links/sub/pair-c
)
chown -R 0:0 "$rootfs"
chmod 4755 "$rootfs/srv/tree/bin/suid"
chmod 2755 "$rootfs/srv/tree/bin/sgid"
chmod 0640 "$rootfs/srv/tree/d1/f1"
chmod 0700 "$rootfs/srv/tree/d1/sub"
tar -C "$rootfs" -cf "$T/rootfs.tar" .
chmod 644 "$T/rootfs.tar"

mkdir -p "$T/buildctx"
cat >"$T/buildctx/Containerfile" <<'EOF'
FROM localhost/base:latest
RUN sh /e2e/layer2.sh
EOF
chmod -R a+rX "$T/buildctx"

# Per-mode configuration.  $1 = mode dir, $2 = root|rootless, $3 = timed
# (the mount program logs how long each mount took) or native (no mount
# program: podman's own overlay driver, i.e. the kernel overlay); $4 = more
# mount options (mountopt) of the store.
write_configs() {
    local d=$1 mode=$2 home=$1/home
    mkdir -p "$home/.config/containers"
    echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$home/.config/containers/policy.json"
    printf 'unqualified-search-registries = []\n' >"$d/registries.conf"
    # containers-storage drops metacopy=on from the options it gives a mount
    # program: it keeps the option only where its metacopy probe, a kernel
    # overlay mount, passed, and it runs none with a mount program.  The
    # wrapper adds it.
    local add=
    [[ ${3:-} != native && ,${4:-}, == *,metacopy=on,* ]] && add=metacopy=on
    make_wrapper "$d" "${3:-}" "$add"
    {
        echo '[storage]'
        echo 'driver = "overlay"'
        echo "graphroot = \"$d/storage\""
        echo "runroot = \"$d/runroot\""
        [[ $mode == rootless ]] && echo "rootless_storage_path = \"$d/storage\""
        echo '[storage.options.overlay]'
        if [[ ${3:-} == native ]]; then
            echo "mountopt = \"nodev${4:+,$4}\""
        else
            echo "mount_program = \"$d/mount-program\""
            echo "mountopt = \"nodev,fsync=0${4:+,$4}\""
        fi
    } >"$d/storage.conf"
    {
        echo '[containers]'
        echo 'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]'
        echo 'log_driver = "k8s-file"'
        echo '[engine]'
        echo 'runtime = "runc"'
        echo 'cgroup_manager = "cgroupfs"'
        echo 'events_logger = "file"'
        echo "events_logfile_path = \"$d/events.log\""
        echo 'lock_type = "file"'
        echo 'pull_policy = "never"'
        echo "static_dir = \"$d/storage/libpod\""
        echo "volume_path = \"$d/storage/volumes\""
        [[ $mode == root ]] && echo "tmp_dir = \"$d/tmp\""
        echo '[network]'
        echo "network_config_dir = \"$d/networks\""
    } >"$d/containers.conf"
    mkdir -p "$d/networks"
}

# Environment for the engines.  $1 = mode dir.
eng_env() {
    local d=$1
    echo "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    echo "HOME=$d/home"
    echo "CONTAINERS_STORAGE_CONF=$d/storage.conf"
    echo "CONTAINERS_CONF=$d/containers.conf"
    echo "CONTAINERS_REGISTRIES_CONF=$d/registries.conf"
    echo "TMPDIR=$d/tmp"
    echo "BUILDAH_ISOLATION=oci"
    echo "E2E_STRATAFS_LOG=$E2E_LOG_DEFAULT"
}

# root_eng_in DIR CMD...: CMD as root with the engine configuration of DIR.
root_eng_in() {
    local d=$1
    shift
    # shellcheck disable=SC2046
    (cd "$d" && timeout -k 10 "$cmd_timeout" nsenter --mount="$NS/mnt" env -i $(eng_env "$d") "$@")
}
root_eng() { root_eng_in "$T/root" "$@"; }
rl_eng() { rl_eng_in "$T/rootless" "$@"; }
# rl_eng_in DIR CMD...: CMD as the rootless user with the configuration of DIR.
rl_eng_in() {
    local d=$1
    shift
    # shellcheck disable=SC2046
    (cd "$d" && timeout -k 10 "$cmd_timeout" nsenter --mount="$NS/mnt" \
        runuser -u "$e2e_user" -- env -i $(eng_env "$d") "XDG_RUNTIME_DIR=$d/run" \
        "XDG_CONFIG_HOME=$d/home/.config" "XDG_DATA_HOME=$d/home/.local/share" "$@")
}

# ------------------------------------------------------------ checks
# Every check is run in mode $M through engine function $E.
M=
E=

# check NAME CMD... : PASS if CMD succeeds, else FAIL with its output.
check() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    if ((rc == 0)); then
        pass "$M: $name"
    else
        ((rc == 124 || rc == 137)) && out="TIMEOUT after ${cmd_timeout}s (hang?)"$'\n'"$out"
        fail "$M: $name (exit $rc)" "$out"
    fi
    return $rc
}
# check_out NAME WANT CMD... : PASS if CMD succeeds and prints WANT.
check_out() {
    local name=$1 want=$2 out rc
    shift 2
    out=$("$@" 2>&1)
    rc=$?
    if ((rc == 0)) && [[ "$out" == "$want" ]]; then
        pass "$M: $name"
    else
        ((rc == 124 || rc == 137)) && out="TIMEOUT after ${cmd_timeout}s (hang?)"$'\n'"$out"
        fail "$M: $name (exit $rc)" "want: $want"$'\n'"got:  $out"
        return 1
    fi
}

p() { "$E" podman "$@"; }
# A shell script in the engine's mount namespace (rootless: `podman unshare`).
eng_sh() {
    if [[ $M == root ]]; then
        "$E" sh -c "$1"
    else
        "$E" podman unshare sh -c "$1"
    fi
}
RUN=(run --network none --pull never)

# Mount table in which the engine's mounts live (rootless: podman's userns).
engine_mounts() {
    if [[ $M == root ]]; then
        inns cat /proc/self/mountinfo
    else
        p unshare cat /proc/self/mountinfo
    fi
}
# fstype of the mount at path $1 in the engine's mount table.
fstype_at() {
    engine_mounts | awk -v m="$1" '$5 == m { for (i = 7; i <= NF; i++) if ($i == "-") { t = $(i + 1); break } } END { print t }'
}
stratafs_mount_count() {
    engine_mounts | awk -v t="$T/" -v f="$fstype" 'index($5, t) == 1 && $0 ~ (" - " f " ") { n++ } END { print n + 0 }'
}
# Waits up to 10s for the daemon serving mount point $1 to exit.
wait_daemon_gone() {
    local i
    for i in $(seq 1 50); do
        pgrep -f "^$T/bin/$prog_name .* $1\$" >/dev/null || return 0
        sleep 0.2
    done
    pgrep -af "^$T/bin/$prog_name .* $1\$"
    return 1
}
# podman cp FILE into container $1 and /data/appendme out of it.
cp_roundtrip() {
    local a b
    p cp "$2" "$1:/cpfile" || return 1
    a=$(p exec "$1" cat /cpfile) || return 1
    p exec "$1" rm /cpfile || return 1
    b=$(p cp "$1:/data/appendme" - | tar -xO) || return 1
    echo "$a|$(tr '\n' ' ' <<<"$b" | sed 's/ $//')"
}
ctr_merged() { p inspect --format '{{.GraphDriver.Data.MergedDir}}' "$1"; }

layer_tar_checks() {
    # $1 = docker-archive of localhost/committed; checks its top layer.
    local arch=$1 x=$T/$M/save top list bad=0 want
    rm -rf "$x" && mkdir -p "$x/layer"
    tar -C "$x" -xf "$arch" || return 1
    top=$(jq -r '.[0].Layers[-1]' "$x/manifest.json") || return 1
    [[ -f "$x/$top" ]] || { echo "top layer $top not in archive"; return 1; }
    list=$(tar -tvf "$x/$top") || return 1
    tar -C "$x/layer" -xf "$x/$top" 2>/dev/null # .wh. files extract as plain files
    for want in data/.wh.deleteme data/.wh.deldir data/.wh.renameme data/.wh.renamedir \
        data/.wh.replacesrc data/.wh.l2file data/.wh.l1dir data/renamed data/renameddir/f1 \
        data/replacedst data/appendme data/truncme data/chmodme data/chownme data/hardlink \
        data/newfile data/newhard data/symlink data/fifo data/newdir/sub/f data/big2 data/sparse \
        data/dir1/c data/deep/a/b/c/d/file data/l2mod; do
        grep -qE " \.?/?$want( |$)" <<<"$list" || { echo "missing in layer: $want"; bad=1; }
    done
    # dir1 was replaced: an opaque marker, or (naive diff) a whiteout for
    # each old entry.
    grep -qE ' \.?/?data/dir1/\.wh\.\.wh\.\.opq$' <<<"$list" ||
        { grep -qE ' \.?/?data/dir1/\.wh\.a$' <<<"$list" && grep -qE ' \.?/?data/dir1/\.wh\.b$' <<<"$list"; } ||
        { echo "data/dir1: neither opaque nor whiteouts for a and b"; bad=1; }
    for unwanted in data/big data/big.md5 data/file1 data/deldir/x data/dir1/a data/l1gone data/tmpnew; do
        grep -qE " \.?/?$unwanted( |$)" <<<"$list" && { echo "unchanged/deleted path in layer: $unwanted"; bad=1; }
    done
    grep -qE ' \.?/?data/\.wh\.(\.wh\.)?(work|index)' <<<"$list" && { echo "internal entries in layer"; bad=1; }
    # Whiteouts must be AUFS files, not 0/0 char devices.
    grep -E '^c' <<<"$list" && { echo "char devices in layer (kernel-style whiteouts leaked)"; bad=1; }
    grep -qE '^p.* \.?/?data/fifo$' <<<"$list" || { echo "data/fifo is not a FIFO in the layer"; bad=1; }
    grep -qE '^l.* \.?/?data/symlink -> file1$' <<<"$list" || { echo "data/symlink is not a symlink to file1"; bad=1; }
    grep -qE '^h.* \.?/?data/newhard link to \.?/?data/newfile$|^h.* \.?/?data/newfile link to \.?/?data/newhard$' <<<"$list" ||
        { echo "newfile/newhard not stored as a hard link pair"; bad=1; }
    [[ "$(cat "$x/layer/data/appendme")" == $'line1\nappended' ]] || { echo "appendme content wrong in layer"; bad=1; }
    [[ "$(cat "$x/layer/data/truncme")" == 012 ]] || { echo "truncme content wrong in layer"; bad=1; }
    grep -qE '^-rw------- 0/0 .* \.?/?data/chmodme$' <<<"$list" || { echo "chmodme mode not 0600 in layer"; bad=1; }
    grep -qE '^-[rwx-]{9} 1234/5678 .* \.?/?data/chownme$' <<<"$list" || { echo "chownme owner not 1234/5678 in layer"; bad=1; }
    if ((bad)); then
        echo "--- top layer listing:"
        echo "$list"
        return 1
    fi
}

# tree_listing DIR: one line per entry under DIR, sorted: type, mode,
# owner, path, and the size and sha256 of regular files or the target of
# symlinks (directory sizes and link counts are file-system specific).
tree_listing() {
    inns sh -c 'cd "$1" && { find . -mindepth 1 \( -type f -printf "f %m %U:%G %p %s\n" \) \
        -o \( -type l -printf "l %m %U:%G %p -> %l\n" \) -o -printf "%y %m %U:%G %p\n" &&
        find . -type f -exec sha256sum {} + | sed "s/^\([0-9a-f]*\)  \(.*\)$/sha256 \2 \1/"; } | LC_ALL=C sort' sh "$1"
}
# store_mount_check CTR: mounts the container's storage layer with
# `stratafs mount --store <graphroot>/overlay ID --read-only` and compares
# the tree with `podman export CTR`; checks `stratafs inspect --json`.
store_mount_check() {
    local ctr=$1 d=$T/$M upper id store mnt=$T/$M/storemnt ex=$T/$M/export
    local a b out rc lower init
    upper=$(p inspect --format '{{.GraphDriver.Data.UpperDir}}' "$ctr") || { fail "$M: stratafs mount --store: podman inspect $ctr" "$upper"; return; }
    id=$(basename "$(dirname "$upper")")
    store=$(dirname "$(dirname "$upper")")
    if [[ $store != "$d/storage/overlay" || ! -d $store/$id/diff ]]; then
        fail "$M: stratafs mount --store: layer of $ctr" "UpperDir $upper"
        return
    fi
    rm -rf "$ex" && mkdir -p "$ex" "$mnt"
    if ! out=$(p export "$ctr" 2>&1 >"$d/export.tar" && tar -C "$ex" -xf "$d/export.tar" 2>&1); then
        fail "$M: podman export $ctr" "$out"
        return
    fi
    out=$(inns "$T/bin/$prog_name" mount --store "$store" --read-only "$id" "$mnt" 2>&1)
    rc=$?
    if ((rc != 0)) || [[ $(inns awk -v m="$mnt" '$2 == m { print $3 }' /proc/mounts) != "$fstype" ]]; then
        fail "$M: stratafs mount --store ... --read-only (container layer of $ctr) (exit $rc)" "$out"
        inns fusermount3 -u "$mnt" 2>/dev/null
        return
    fi
    pass "$M: stratafs mount --store ... --read-only (container layer of $ctr)"
    a=$(tree_listing "$mnt" 2>&1)
    b=$(tree_listing "$ex" 2>&1)
    if [[ -n "$a" && "$a" == "$b" ]]; then
        pass "$M: store mount of $ctr equals podman export ($(wc -l <<<"$a") entries: type, mode, owner, size, sha256)"
    else
        fail "$M: store mount of $ctr equals podman export" "$(diff <(echo "$b") <(echo "$a") | head -n 40)"
    fi
    if inns touch "$mnt/.e2e-ro" 2>/dev/null; then
        inns rm -f "$mnt/.e2e-ro"
        fail "$M: store mount is read-only"
    else
        pass "$M: store mount is read-only"
    fi
    # The chain must be the one the engine reports.  containers-storage
    # (podman 4.3) gives a container no `<ID>-init` parent (Docker does): one
    # is required, and marked init, only if the store has it.
    lower=$(p inspect --format '{{.GraphDriver.Data.LowerDir}}' "$ctr" 2>&1)
    init=false
    [[ -d $store/$id-init ]] && init=true
    out=$(inns "$T/bin/$prog_name" inspect --store "$store" "$id" --json 2>&1)
    if printf '%s' "$out" | python3 -c 'import json,sys; json.load(sys.stdin)' 2>/dev/null &&
        printf '%s' "$out" | jq -e --arg u "$id" --arg i "$id-init" --arg lower "$lower" --argjson init "$init" \
            '(.Layers[0] | .id == $u and .role == "upper" and .init == false)
             and (.Layers[1:] | all(.role == "lower"))
             and .GraphDriver.Data.LowerDir == $lower
             and ([.Layers[] | select(.init)] | map(.id) == (if $init then [$i] else [] end))' >/dev/null; then
        pass "$M: stratafs inspect --store --json parses, names $ctr's layer and the engine's chain (-init layer: $init)"
    else
        fail "$M: stratafs inspect --store --json parses, names $ctr's layer and the engine's chain" "engine LowerDir: $lower"$'\n'"$out"
    fi
    out=$(inns fusermount3 -u "$mnt" 2>&1) || { fail "$M: fusermount3 -u store mount" "$out"; inns umount -l "$mnt" 2>/dev/null; return; }
    if wait_daemon_gone "$mnt" >/dev/null && [[ -z $(inns awk -v m="$mnt" '$2 == m' /proc/mounts) ]]; then
        pass "$M: store mount unmounted, its stratafs daemon exited"
    else
        fail "$M: store mount unmounted, its stratafs daemon exited" "$(pgrep -af "^$T/bin/$prog_name .*$mnt")"
    fi
}

# run_suite MODE ENGINE_FUNC
run_suite() {
    M=$1
    E=$2
    local d=$T/$M log c merged n i ok out
    log=$d/mount-program.log
    say "==== $M ===="

    info_ok() {
        local out
        out=$(p info --format '{{.Store.GraphDriverName}} {{json .Store.GraphOptions}}') || return 1
        echo "$out"
        [[ $out == overlay\ *mount_program*"$d/mount-program"* ]]
    }
    check "podman info (overlay + mount_program)" info_ok || return 1

    tar_in() { "$E" podman import --change 'CMD ["/bin/sh"]' - localhost/base:latest <"$T/rootfs.tar"; }
    check "podman import busybox rootfs as localhost/base" tar_in || return 1

    check_out "run: read lower files, root fs is $fstype" \
        "base-file1 $fstype" \
        p "${RUN[@]}" --rm localhost/base sh -c \
        'echo "$(cat /data/file1) $(awk '\''$5 == "/" { for (i = 6; i <= NF; i++) if ($i == "-") print $(i + 1) }'\'' /proc/self/mountinfo)"'
    if [[ -s $log ]] && grep -q "lowerdir=.*upperdir=.*workdir=" "$log"; then
        pass "$M: engine called the mount_program wrapper ($(wc -l <"$log") calls so far)"
        info "$M: first mount argv: $(grep -m1 lowerdir= "$log" | sed 's/^.*argv://' | cut -c1-500)"
    else
        fail "$M: engine called the mount_program wrapper" "$(cat "$log" 2>/dev/null)"
    fi

    check_out "run as uid 1000: read lower, write /tmp" "base-file1 w" \
        p "${RUN[@]}" --rm --user 1000:1000 localhost/base sh -c \
        'echo w > /tmp/u && echo "$(cat /data/file1) $(cat /tmp/u)"'

    check "podman build: second layer (RUN deletes/replaces lower entries)" \
        p build --network none --pull=never -t localhost/layered -f "$T/buildctx/Containerfile" "$T/buildctx" ||
        return 1
    local wh
    wh=$(find "$d/storage/overlay" -mindepth 4 -maxdepth 4 -path '*/diff/data/.wh.l1gone' -type f 2>/dev/null | head -n 1)
    if [[ -n "$wh" ]]; then
        pass "$M: layered image's layer stores AUFS whiteouts on disk (diff/data/.wh.l1gone)"
    else
        fail "$M: layered image's layer stores AUFS whiteouts on disk (diff/data/.wh.l1gone)" \
            "$(find "$d/storage/overlay" -path '*/diff/data/*' -name '*l1gone*' 2>&1 | head)"
    fi
    check "layered image: pristine view (2 layers, AUFS whiteouts in lower)" \
        p "${RUN[@]}" --rm localhost/layered sh /e2e/verify.sh pristine

    # --- run, then start -a: same upper remounted
    check "run c-once: mutate lower files/dirs, verify in the same container" \
        p "${RUN[@]}" --name c-once localhost/layered sh /e2e/once.sh
    check "podman start -a c-once: view after remount" \
        p start -a c-once

    # --- a running container: exec, stop, start
    if check "run -d c-live" p "${RUN[@]}" -d --name c-live localhost/layered \
        sh -c 'trap "exit 0" TERM; while :; do sleep 1; done'; then
        merged=$(ctr_merged c-live)
        check_out "c-live merged dir is a $fstype mount" "$fstype" fstype_at "$merged"
        check "exec mutate.sh in c-live" p exec c-live sh /e2e/mutate.sh
        check "exec verify.sh in c-live" p exec c-live sh /e2e/verify.sh mutated
        echo copied-in >"$d/cpfile"
        chmod 644 "$d/cpfile"
        check_out "podman cp into and out of c-live" "copied-in|line1 appended" cp_roundtrip c-live "$d/cpfile"
        check "podman stop c-live" p stop -t 5 c-live
        check_out "c-live unmounted after stop" "" fstype_at "$merged"
        check "c-live's stratafs daemon exited after stop" wait_daemon_gone "$merged"
        check "podman start c-live" p start c-live
        check "exec verify.sh after stop/start (remount)" p exec c-live sh /e2e/verify.sh mutated
        check "podman stop c-live (again)" p stop -t 5 c-live
    fi

    # --- commit
    if check "podman commit --pause=false c-once localhost/committed" \
        p commit --pause=false c-once localhost/committed; then
        rm -f "$d/committed.tar"
        if check "podman save --format docker-archive localhost/committed" \
            p save --format docker-archive -o "$d/committed.tar" localhost/committed; then
            check "committed layer: .wh. whiteouts, opaque dir, contents, types" \
                layer_tar_checks "$d/committed.tar"
        fi
        info "$M: podman image tree localhost/committed:"
        p image tree localhost/committed 2>&1 | indent 20
        check "run committed image: view equals the mutated container" \
            p "${RUN[@]}" --rm localhost/committed sh /e2e/verify.sh committed
    fi

    # --- podman diff (naive diff through a read-only mount)
    local diffout
    diffout=$(p diff c-once 2>&1)
    if grep -qx 'D /data/deleteme' <<<"$diffout" && grep -qx 'A /data/newfile' <<<"$diffout" &&
        grep -qx 'C /data/appendme' <<<"$diffout" && grep -qx 'D /data/l1dir' <<<"$diffout"; then
        pass "$M: podman diff c-once lists A/C/D changes"
    else
        fail "$M: podman diff c-once lists A/C/D changes" "$diffout"
    fi

    # --- the container's layer mounted by id from the store (root only)
    if [[ $M == root && $prog_name == stratafs ]]; then
        store_mount_check c-once
    fi

    # --- image mount: the read-only form (lowerdir=DIFF:L1:..., no upperdir)
    local script before
    before=$(wc -l <"$log")
    # shellcheck disable=SC2016
    script='mp=$(podman image mount localhost/layered) || exit 1
        t=$(awk -v m="$mp" '\''$5 == m { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 1); break } }'\'' /proc/self/mountinfo)
        echo "$t $(cat "$mp/data/l2file") $(test -e "$mp/data/l1gone" && echo present || echo gone) $(ls "$mp/data/l1dir")"
        if touch "$mp/newfile" 2>/dev/null; then echo writable; else echo read-only; fi
        podman image unmount localhost/layered >/dev/null || echo unmount-failed'
    check_out "podman image mount: read-only $fstype view of the image" "$fstype l2 gone new1"$'\n'"read-only" \
        eng_sh "$script"
    if tail -n +"$((before + 1))" "$log" | grep -v upperdir= | grep -q "lowerdir=[^,']*/diff:"; then
        pass "$M: image mount used the read-only form (no upperdir)"
    else
        fail "$M: image mount used the read-only form (no upperdir)" "$(tail -n +"$((before + 1))" "$log")"
    fi

    # --- overlay volume -v SRC:DST:O (containers/common pkg/overlay)
    local vol=$d/vol
    mkdir -p "$vol/sub"
    echo host >"$vol/hostfile"
    echo x >"$vol/delme"
    echo s >"$vol/sub/s"
    [[ $M == rootless ]] && chown -R "$e2e_user:" "$vol"
    before=$(wc -l <"$log")
    check_out "run -v SRC:/vol:O: writes stay in the container" "host c|a-new|delme-gone|s|hostfile new sub" \
        p "${RUN[@]}" --rm -v "$vol:/vol:O" localhost/base sh -c \
        'cd /vol && echo c >> hostfile && echo a-new > new && rm delme && echo "$(cat hostfile | tr "\n" " " | sed "s/ $//")|$(cat new)|$(test -e delme && echo delme-present || echo delme-gone)|$(cat sub/s)|$(ls | tr "\n" " " | sed "s/ $//")"'
    if [[ "$(cat "$vol/hostfile") $(ls "$vol" | tr '\n' ' ')" == "host delme hostfile sub " ]]; then
        pass "$M: overlay volume source dir unchanged"
    else
        fail "$M: overlay volume source dir unchanged" "$(ls -la "$vol"; cat "$vol/hostfile")"
    fi
    if tail -n +"$((before + 1))" "$log" | grep -q "lowerdir=${vol}[,']"; then
        info "$M: :O volume mount argv: $(tail -n +"$((before + 1))" "$log" | grep "lowerdir=$vol" | sed 's/^.*argv://' | cut -c1-400)"
    else
        info "$M: the :O volume was not mounted through the mount_program (engine used something else)"
    fi

    # --- buildah from/run/commit, twice
    local b1 b2
    if b1=$("$E" buildah from --pull-never localhost/base 2>&1) && b1=$(tail -n 1 <<<"$b1"); then
        pass "$M: buildah from localhost/base ($b1)"
        check "buildah run #1 (write, delete lower)" "$E" buildah run --network none "$b1" -- \
            sh -c 'echo b1 > /b1 && rm /data/deleteme && echo b1 >> /data/appendme && mkdir /bdir && echo in > /bdir/f'
        check "buildah commit #1" "$E" buildah commit --quiet "$b1" localhost/bimg1
        if b2=$("$E" buildah from --pull-never localhost/bimg1 2>&1) && b2=$(tail -n 1 <<<"$b2"); then
            pass "$M: buildah from localhost/bimg1 ($b2)"
            check_out "buildah run #2 (sees layer 1, changes it)" "b1 line1 b1 in" "$E" buildah run --network none "$b2" -- \
                sh -c 'test ! -e /data/deleteme && echo $(cat /b1 /data/appendme /bdir/f) && rm /b1 && rm -r /bdir && echo b2 > /b2 && echo b2 >> /data/appendme'
            check "buildah commit #2" "$E" buildah commit --quiet "$b2" localhost/bimg2
            check_out "run buildah image: whiteouts across 3 layers" "gone gone b2 line1 b1 b2 gone" \
                p "${RUN[@]}" --rm localhost/bimg2 sh -c \
                'for f in /b1 /bdir; do test -e $f && echo present || echo gone; done | tr "\n" " "; echo $(cat /b2 /data/appendme) $(test -e /data/deleteme && echo present || echo gone)'
        else
            fail "$M: buildah from localhost/bimg1" "$b2"
        fi
        "$E" buildah rm --all >/dev/null 2>&1
    else
        fail "$M: buildah from localhost/base" "$b1"
    fi

    # --- 4 containers at once from one image
    ok=1
    for i in 1 2 3 4; do
        p "${RUN[@]}" -d --name "c-par$i" localhost/layered sh -c 'trap "exit 0" TERM; while :; do sleep 1; done' >"$d/par$i.out" 2>&1 &
    done
    wait
    for i in 1 2 3 4; do
        p container exists "c-par$i" || { ok=0; cat "$d/par$i.out"; }
    done >"$d/par.err" 2>&1
    if ((ok)); then
        pass "$M: 4 containers started concurrently"
        n=$(stratafs_mount_count)
        if ((n >= 4)); then pass "$M: $n $fstype mounts live"; else fail "$M: >= 4 $fstype mounts live" "found $n"; fi
        for i in 1 2 3 4; do
            p exec "c-par$i" sh -c "echo c$i > /mine-c$i && echo c$i >> /data/appendme && rm /data/file1 && mkdir /data/dir1/only-c$i" >"$d/par$i.out" 2>&1 &
        done
        wait
        ok=1
        out=
        for i in 1 2 3 4; do
            got=$(p exec "c-par$i" sh -c 'echo $(ls -d /mine-* /data/dir1/only-*) $(cat /data/appendme) $(test -e /data/file1 && echo file1 || echo nofile1)' 2>&1)
            want="/data/dir1/only-c$i /mine-c$i line1 c$i nofile1"
            [[ $got == "$want" ]] || { ok=0; out+="c-par$i: got [$got] want [$want]"$'\n'"$(cat "$d/par$i.out")"$'\n'; }
        done
        if ((ok)); then pass "$M: each parallel container sees only its own writes"; else fail "$M: each parallel container sees only its own writes" "$out"; fi
    else
        fail "$M: 4 containers started concurrently" "$(cat "$d/par.err")"
    fi
    p rm -f -t 0 c-par1 c-par2 c-par3 c-par4 >/dev/null 2>&1

    # --- --uidmap
    # containers-storage 1.43 (Debian 12) on a kernel with idmapped mounts
    # gives the mount program idmapped lower dirs *and* uidmapping=, so ids
    # are shifted twice and the container cannot write its own / (fails the
    # same way with fuse-overlayfs 1.10).  Newer containers-storage does not
    # idmap lowers for a mount program; its cached feature probe is seeded
    # here so that the engine uses the fuse-overlayfs contract (uidmapping=
    # on plain lowers).  The probe only runs for euid 0 (root podman).
    local map upper own
    if [[ $M == root ]]; then
        map=0:100000:65536
        mkdir -p "$d/runroot/overlay"
        rm -f "$d/runroot/overlay/idmapped-lower-dir-true"
        echo "idmapped lowers with a mount_program disabled by e2e-podman.sh" >"$d/runroot/overlay/idmapped-lower-dir-false"
    else
        map=0:1:60000
    fi
    before=$(wc -l <"$log")
    check_out "run --uidmap $map: owners, copy-up, chown, mutate+verify" "0 0:0 0:0 1234:5678 verify mutated ok" \
        p "${RUN[@]}" --name c-uidmap --uidmap "$map" --gidmap "$map" localhost/layered sh -c \
        'echo "$(id -u) $(stat -c %u:%g /data/file1) $(echo n > /new && stat -c %u:%g /new)" "$(sh /e2e/mutate.sh >/dev/null && stat -c %u:%g /data/chownme)" "$(sh /e2e/verify.sh mutated | tail -n 1 | sed "s/: .*, 0 failed/ ok/")"'
    local margs
    margs=$(tail -n +"$((before + 1))" "$log" | grep -o "uidmapping=[^,' ]*\|gidmapping=[^,' ]*\|squash_to_[ug]id=[^,' ]*" | sort -u | tr '\n' ' ')
    info "$M: mount_program id options for the --uidmap container: ${margs:-none (storage chowned a copy of the layers)}"
    if [[ -n "$margs" ]]; then
        # With shifting done by the mount program the upper dir keeps the
        # container's ids on disk (as fuse-overlayfs does).
        upper=$(p inspect --format '{{.GraphDriver.Data.UpperDir}}' c-uidmap 2>&1)
        if [[ $M == root ]]; then
            own=$(stat -c %u:%g "$upper/data/chownme" "$upper/new" 2>&1 | tr '\n' ' ')
        else
            own=$(p unshare stat -c %u:%g "$upper/data/chownme" "$upper/new" 2>&1 | tr '\n' ' ')
        fi
        if [[ $own == "1234:5678 0:0 " ]]; then
            pass "$M: --uidmap upper dir holds unshifted ids (chownme 1234:5678, new file 0:0)"
        else
            fail "$M: --uidmap upper dir holds unshifted ids (chownme 1234:5678, new file 0:0)" "got: $own ($upper)"
        fi
    fi
    p rm -f -t 0 c-uidmap >/dev/null 2>&1

    # --- cleanup and leftovers
    check "podman rm -a -f" p rm -a -f -t 0
    local gone=0 mounts daemons
    for i in $(seq 1 50); do
        mounts=$(engine_mounts | awk -v t="$T/" 'index($5, t) == 1 && / - fuse\./ { print $5 }')
        if [[ -z "$mounts" ]]; then gone=1; break; fi
        sleep 0.2
    done
    if ((gone)); then pass "$M: no $fstype mount left after podman rm"; else fail "$M: no $fstype mount left after podman rm" "$mounts"; fi
    gone=0
    for i in $(seq 1 50); do
        daemons=$(pgrep -af "^$T/bin/$prog_name .*$d/" || true)
        if [[ -z "$daemons" ]]; then gone=1; break; fi
        sleep 0.2
    done
    if ((gone)); then pass "$M: no stratafs daemon left"; else fail "$M: no stratafs daemon left" "$daemons"; fi
    info "$M: mount_program was called $(wc -l <"$log") times (log: $log)"
}

# ------------------------------------------------------------ redirect_dir
# A container renames directories with lower content and chowns a lower
# tree (rdchange.sh) with stratafs mounted redirect_dir=on (and metacopy=on
# if the binary takes it) through mountopt; `podman commit`; the committed
# layer (`podman save`) must equal the one podman's native overlay driver
# (the kernel overlay) makes of the same scenario with the same options, in
# file list, types, modes, owners, contents, whiteouts and hard links.  The
# same with buildah (bdchange.sh: `buildah from`, `buildah run`, `buildah
# commit`) in the same stores.  Both chown hard-linked lower files (a name
# in the chowned tree whose other names are outside it; one name of three):
# the kernel keeps such a file one inode across the copy-up only with
# index=on (the module default is off, containers-storage passes mountopt
# as it is), which is what stratafs always does, so mountopt has index=on
# too (stratafs takes it and has nothing to change).  Fair because
# containers-storage makes both layers the same way: with a mount program
# it always diffs naively (walks the mounted container against its mounted
# parent); the native driver does so too as soon as a test rename of a
# directory on a mount with the store's mountopt leaves an overlay.redirect
# record (doesSupportNativeDiff), so neither layer is read from an upper
# dir's records.  The rootless run (stratafs only: the kernel refuses
# redirect_dir with userxattr) is compared with the root kernel result.
rd_opts=redirect_dir=on,index=on
rd_ready=0
# Once: sets rd_opts to redirect_dir=on,metacopy=on,index=on if stratafs
# mounts with metacopy=on, writes the build context of the scenario's image.
rd_prepare() {
    ((rd_ready)) && return
    rd_ready=1
    local p=$T/rd-probe out
    mkdir -p "$p"/{l,u,w,m}
    if out=$(inns "$T/bin/$prog_name" -o "lowerdir=$p/l,upperdir=$p/u,workdir=$p/w,redirect_dir=on,metacopy=on" "$p/m" 2>&1); then
        inns fusermount3 -u "$p/m"
        rd_opts=redirect_dir=on,metacopy=on,index=on
    else
        info "redirect_dir: $prog_name refuses metacopy=on, the scenario runs with redirect_dir=on only: $(tail -n 1 <<<"$out")"
    fi
    rm -rf "$p"
    mkdir -p "$T/rdctx"
    printf 'FROM localhost/base:latest\nRUN %s\n' \
        'echo l2 >/usr/share/doc/pkg-03/l2file && rm /usr/share/doc/pkg-04/changelog && echo l2 >/srv/tree/d1/l2file' \
        >"$T/rdctx/Containerfile"
    chmod -R a+rX "$T/rdctx"
}
# rd_data NS PATH...: whether the regular files PATH (directories: every
# regular file below) are metadata-only copies: "N files, 0 with data, 0
# without a record" counts the files, those with data bytes (SEEK_DATA
# ranges) and those without an NS.overlay.metacopy record (NS = trusted or
# user), and names the first few of either kind.
rd_data() {
    python3 - "$@" <<'PY'
import os, sys
ns, paths = sys.argv[1], sys.argv[2:]
def data_bytes(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    n, off = 0, 0
    try:
        while True:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            off = os.lseek(fd, start, os.SEEK_HOLE)
            n += off - start
    finally:
        os.close(fd)
    return n
files = []
for p in paths:
    if os.path.isdir(p) and not os.path.islink(p):
        for d, _, names in os.walk(p):
            files += [os.path.join(d, n) for n in names]
    else:
        files.append(p)
files = sorted(f for f in files if os.path.isfile(f) and not os.path.islink(f))
with_data, no_record = [], []
for f in files:
    if data_bytes(f):
        with_data.append(f)
    try:
        os.getxattr(f, ns + ".overlay.metacopy", follow_symlinks=False)
    except OSError:
        no_record.append(f)
print(f"{len(files)} files, {len(with_data)} with data, {len(no_record)} without a record")
for f in (with_data + no_record)[:10]:
    print("  " + f)
PY
}
# rd_run DIR ENGINE_FUNC LABEL XATTR_NS: the scenario in the store of DIR;
# leaves the container's view in DIR/view.txt and the committed layer's
# listing in DIR/layer.list.
rd_run() {
    local d=$1 ns=$4 upper out f n
    M=$3
    E=$2
    rm -f "$d/view.txt" "$d/layer.list"
    check "podman import localhost/base" "$E" podman import --change 'CMD ["/bin/sh"]' - localhost/base:latest <"$T/rootfs.tar" || return
    check "podman build localhost/rd (a second layer below the trees)" \
        p build --network none --pull=never -t localhost/rd -f "$T/rdctx/Containerfile" "$T/rdctx" || return
    rd_change() { p "${RUN[@]}" --name c-rd localhost/rd sh /e2e/rdchange.sh >"$1"; }
    check "run c-rd: rename lower dirs, chown -R a lower tree ($rd_opts)" rd_change "$d/view.txt" || return
    if [[ -n ${5:-} ]]; then
        if grep -q "upperdir=.*redirect_dir=on" "$d/mount-program.log"; then
            pass "$M: the engine gave the mount program redirect_dir=on (mountopt)"
        else
            fail "$M: the engine gave the mount program redirect_dir=on (mountopt)" "$(tail -n 3 "$d/mount-program.log")"
        fi
        if [[ $rd_opts == *metacopy=on* ]] && ! grep -q "upperdir=.*metacopy=on" "$d/mount-program.log"; then
            info "$M: the engine dropped metacopy=on from mountopt (kept for the kernel overlay only); the wrapper adds it"
        fi
    fi
    # What the upper dir holds: the renamed directory with a redirect record
    # and none of its lower files; with metacopy, metadata-only copies.
    upper=$(p inspect --format '{{.GraphDriver.Data.UpperDir}}' c-rd 2>&1)
    out=$(python3 -c 'import os, sys; print(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False).decode())' \
        "$upper/usr/share/doc2" "$ns.overlay.redirect" 2>&1)
    f=$(cd "$upper" 2>/dev/null && find usr/share/doc2 -type f -size +0 | sort | tr '\n' ' ')
    if [[ $out == *doc && $f == "usr/share/doc2/pkg-00/added " ]]; then
        pass "$M: upper dir: usr/share/doc2 redirects to $out, no lower file copied"
    else
        fail "$M: upper dir: usr/share/doc2 has a redirect, no lower file copied" "redirect: $out"$'\n'"files with data: $f"
    fi
    if [[ $rd_opts == *metacopy=on* ]]; then
        # Every file of the chowned tree (big and a hard link among them),
        # as many as the view lists.
        n=$(grep -cE '^-[^ ]* [^ ]* srv/tree/' "$d/view.txt")
        out=$(rd_data "$ns" "$upper/srv/tree" 2>&1)
        if [[ $out == "$n files, 0 with data, 0 without a record" && -f $upper/srv/tree/d2-renamed/big ]]; then
            pass "$M: upper dir: the files of the chowned srv/tree are metadata-only copies ($(head -n 1 <<<"$out"))"
        else
            fail "$M: upper dir: the files of the chowned srv/tree are metadata-only copies" \
                "want: $n files, 0 with data, 0 without a record"$'\n'"got:  $out"
        fi
    fi
    check "podman commit c-rd localhost/rd-committed" p commit --pause=false c-rd localhost/rd-committed || return
    rm -f "$d/rd.tar"
    check "podman save localhost/rd-committed" p save --format docker-archive -o "$d/rd.tar" localhost/rd-committed || return
    check "list the committed layer" sh -c 'python3 "$0" "$1" >"$2"' "$helpers/layerlist.py" "$d/rd.tar" "$d/layer.list" || return
    out=$(p "${RUN[@]}" --rm localhost/rd-committed sh /e2e/rdview.sh 2>&1)
    if [[ -s $d/view.txt && $out == "$(cat "$d/view.txt")" ]]; then
        pass "$M: the committed image shows the container's view ($(wc -l <"$d/view.txt") lines)"
    else
        fail "$M: the committed image shows the container's view" "$(diff "$d/view.txt" <(echo "$out") | head -n 30)"
    fi
    p rm -f -t 0 c-rd >/dev/null 2>&1
}
# bd_run DIR ENGINE_FUNC LABEL XATTR_NS [mp]: the buildah part in the store
# of DIR, after rd_run (its image localhost/rd); leaves the container's view
# in DIR/bd-view.txt and the committed layer's listing in DIR/bd-layer.list.
bd_run() {
    local d=$1 ns=$4 upper out want n0 n b=b-rd
    M=$3
    E=$2
    rm -f "$d/bd-view.txt" "$d/bd-layer.list"
    n0=$(wc -l 2>/dev/null <"$d/mount-program.log")
    check "buildah from localhost/rd" "$E" buildah from --pull-never --name "$b" localhost/rd || return
    bd_change() { "$E" buildah run --network none "$b" -- sh /e2e/bdchange.sh >"$1"; }
    if ! check "buildah run: rename a lower dir, move subtrees, chown -R, chown a hard link ($rd_opts)" \
        bd_change "$d/bd-view.txt"; then
        "$E" buildah rm "$b" >/dev/null 2>&1
        return 1
    fi
    if [[ -n ${5:-} ]]; then
        if tail -n +"$((n0 + 1))" "$d/mount-program.log" | grep -q "upperdir=.*redirect_dir=on"; then
            pass "$M: buildah gave the mount program redirect_dir=on (mountopt)"
        else
            fail "$M: buildah gave the mount program redirect_dir=on (mountopt)" "$(tail -n 3 "$d/mount-program.log")"
        fi
    fi
    # The working container's upper dir: the one layer that has doc-b (until
    # the commit).
    upper=$(find "$d/storage/overlay" -mindepth 5 -maxdepth 5 -path '*/diff/usr/share/doc-b' -type d 2>/dev/null)
    upper=${upper%/usr/share/doc-b}
    out=$(python3 -c 'import os, sys
for p in sys.argv[3:]:
    print(p, os.getxattr(os.path.join(sys.argv[1], p), sys.argv[2], follow_symlinks=False).decode())' \
        "$upper" "$ns.overlay.redirect" usr/share/doc-b srv/pkg-05 usr/share/doc-b/d1 2>&1)
    want="usr/share/doc-b doc"$'\n'"srv/pkg-05 /usr/share/doc/pkg-05"$'\n'"usr/share/doc-b/d1 /srv/tree/d1"
    if [[ $out == "$want" ]]; then
        pass "$M: upper dir: the renamed and moved directories redirect to their lower names"
    else
        fail "$M: upper dir: the renamed and moved directories redirect to their lower names" "want: $want"$'\n'"got:  $out"
    fi
    if [[ $rd_opts == *metacopy=on* ]]; then
        # Not moved after the rename: no file in srv/pkg-05; chowned: each
        # file in doc-b (a hard link among them, as the view lists them) and
        # the one name.
        n=$(($(grep -cE '^-[^ ]* [^ ]* usr/share/doc-b/' "$d/bd-view.txt") + 1))
        out=$(rd_data "$ns" "$upper/usr/share/doc-b" "$upper/srv/links/pair-a" 2>&1)
        if [[ $out == "$n files, 0 with data, 0 without a record" && -z $(find "$upper/srv/pkg-05" -type f 2>/dev/null) ]]; then
            pass "$M: upper dir: the chowned files are metadata-only copies ($(head -n 1 <<<"$out")), none in the moved srv/pkg-05"
        else
            fail "$M: upper dir: the chowned files are metadata-only copies, none in the moved srv/pkg-05" \
                "want: $n files, 0 with data, 0 without a record"$'\n'"got:  $out"$'\n'"$(find "$upper/srv/pkg-05" -type f 2>&1)"
        fi
    fi
    check "buildah commit $b localhost/bd-committed" "$E" buildah commit --quiet "$b" localhost/bd-committed
    "$E" buildah rm "$b" >/dev/null 2>&1
    rm -f "$d/bd.tar"
    check "podman save localhost/bd-committed" p save --format docker-archive -o "$d/bd.tar" localhost/bd-committed || return
    check "list the committed layer" sh -c 'python3 "$0" "$1" >"$2"' "$helpers/layerlist.py" "$d/bd.tar" "$d/bd-layer.list" || return
    out=$(p "${RUN[@]}" --rm localhost/bd-committed sh /e2e/rdview.sh 2>&1)
    if [[ -s $d/bd-view.txt && $out == "$(cat "$d/bd-view.txt")" ]]; then
        pass "$M: the committed image shows the buildah container's view ($(wc -l <"$d/bd-view.txt") lines)"
    else
        fail "$M: the committed image shows the buildah container's view" "$(diff "$d/bd-view.txt" <(echo "$out") | head -n 30)"
    fi
}
# bd_layer_checks LIST: what the layer buildah committed must hold.
bd_layer_checks() {
    local l=$1 bad=0 want
    for want in '^f .* usr/share/\.wh\.doc ' '^f .* srv/tree/\.wh\.d1 ' \
        '^f .* 4321:8765 usr/share/doc-b/pkg-00/copyright ' '^f .* 4321:8765 usr/share/doc-b/pkg-03/l2file ' \
        '^d 0700 4321:8765 usr/share/doc-b/d1/sub$' '^f 0640 4321:8765 usr/share/doc-b/d1/f1 ' \
        '^d .* 0:0 srv/pkg-05$' '^f .* 0:0 srv/pkg-05/examples/ex '; do
        grep -qE "$want" "$l" || { echo "missing: $want"; bad=1; }
    done
    grep -qE ' usr/share/doc-b/pkg-05|usr/share/doc-b/pkg-04/changelog ' "$l" && { echo "moved or removed entries in doc-b"; bad=1; }
    hl_group "$l" 4321:8765 srv/links/outside srv/tree/d2/linked2 usr/share/doc-b/d1/linked || bad=1
    hl_group "$l" 1234:5678 srv/links/pair-a srv/links/pair-b srv/links/sub/pair-c || bad=1
    ((bad)) && cat "$l"
    return $bad
}
# rd_layer_checks LIST: what the committed layer must hold, whoever made it.
rd_layer_checks() {
    local l=$1 bad=0 want
    for want in '^f .* usr/share/\.wh\.doc ' '^f .* usr/share/doc2/pkg-00/added ' \
        '^f .* 0:0 usr/share/doc2/pkg-03/l2file ' '^f .* 0:0 usr/share/doc2/pkg-00/copyright ' \
        '^f .* srv/tree/\.wh\.d2 ' '^f 0640 1234:5678 srv/tree/d1/f1 ' '^d 0700 1234:5678 srv/tree/d1/sub$' \
        '^f 0755 1234:5678 srv/tree/bin/suid ' '^f 0755 1234:5678 srv/tree/bin/sgid ' \
        '^f .* 1234:5678 srv/tree/d2-renamed/big 300000 ' '^f .* 1234:5678 srv/tree/moved/examples/ex ' \
        '^l .* 1234:5678 srv/tree/link -> d1/f1$'; do
        grep -qE "$want" "$l" || { echo "missing: $want"; bad=1; }
    done
    grep -qE ' usr/share/doc2/pkg-01/copyright |usr/share/doc2/pkg-02/' "$l" && { echo "removed or moved entries in doc2"; bad=1; }
    # The chowned inode's name outside the tree changed with it; the other
    # hard-linked file was not touched.
    hl_group "$l" 1234:5678 srv/links/outside srv/tree/d1/linked srv/tree/d2-renamed/linked2 || bad=1
    grep -qE ' srv/links/(sub/)?pair-' "$l" && { echo "unchanged hard links in the layer"; bad=1; }
    ((bad)) && cat "$l"
    return $bad
}
# hl_group LIST OWNER FIRST NAME...: the names of one hard-linked file are
# in the layer LIST, owned by OWNER: FIRST (the first in path order, which
# the layer's writer meets first) as a file, the others as hard links to it.
hl_group() {
    local l=$1 owner=$2 first=$3 n bad=0
    shift 3
    grep -qE "^f [0-7]{4} $owner $first [0-9]+ " "$l" || { echo "missing: $first as a file of $owner"; bad=1; }
    for n in "$@"; do
        grep -qxE "h [0-7]{4} $owner $n -> $first" "$l" || { echo "missing: $n as a hard link of $owner to $first"; bad=1; }
    done
    return $bad
}
# rd_compare LIST_A LIST_B VIEW_A VIEW_B WHAT
rd_compare() {
    if [[ -s $1 && -s $2 ]] && cmp -s "$1" "$2"; then
        pass "$M: committed layer equals the kernel overlay's ($5; $(wc -l <"$1") entries: type, mode, owner, size, sha256, whiteouts, hard links)"
    else
        fail "$M: committed layer equals the kernel overlay's ($5)" "$(diff "$2" "$1" | head -n 40)"
    fi
    if [[ -s $3 ]] && cmp -s "$3" "$4"; then
        pass "$M: the container's view equals the kernel overlay's ($5)"
    else
        fail "$M: the container's view equals the kernel overlay's ($5)" "$(diff "$4" "$3" | head -n 30)"
    fi
}
rd_eng_mp() { root_eng_in "$T/rd-mp" "$@"; }
rd_eng_k() { root_eng_in "$T/rd-k" "$@"; }
rd_eng_rl() { rl_eng_in "$T/rl-rd" "$@"; }
rd_root() {
    say "==== redirect_dir: rename and chown of lower trees, commit, against the kernel overlay (root) ===="
    rd_prepare
    local s out
    for s in rd-mp rd-k; do
        mkdir -p "$T/$s"/{tmp,home,storage,runroot}
        touch "$T/$s/ready"
    done
    write_configs "$T/rd-mp" root "" "$rd_opts"
    write_configs "$T/rd-k" root native "$rd_opts"
    # Both stores diff naively (see above), or the comparison is not fair.
    M=rd-root
    for s in mp k; do
        out=$(rd_eng_$s podman info --format '{{json .Store.GraphStatus}}' 2>&1)
        if [[ $out == *'"Native Overlay Diff":"false"'* ]]; then
            pass "$M: the $s store diffs layers naively (podman info: $(tr -d '\n' <<<"$out" | cut -c1-160))"
        else
            fail "$M: the $s store diffs layers naively" "$out"
        fi
    done
    rd_run "$T/rd-mp" rd_eng_mp "rd-root-$prog_name" trusted mp
    bd_run "$T/rd-mp" rd_eng_mp "rd-root-$prog_name" trusted mp
    rd_run "$T/rd-k" rd_eng_k rd-root-kernel trusted
    bd_run "$T/rd-k" rd_eng_k rd-root-kernel trusted
    M=rd-root
    if [[ -s $T/rd-k/layer.list ]]; then
        check "the kernel overlay's committed layer holds the rename and the chown" rd_layer_checks "$T/rd-k/layer.list"
    fi
    check "$prog_name's committed layer holds the rename and the chown" rd_layer_checks "$T/rd-mp/layer.list"
    rd_compare "$T/rd-mp/layer.list" "$T/rd-k/layer.list" "$T/rd-mp/view.txt" "$T/rd-k/view.txt" "root, $rd_opts"
    M=bd-root
    if [[ -s $T/rd-k/bd-layer.list ]]; then
        check "the kernel overlay's layer committed by buildah holds the renames and the chowns" bd_layer_checks "$T/rd-k/bd-layer.list"
    fi
    check "$prog_name's layer committed by buildah holds the renames and the chowns" bd_layer_checks "$T/rd-mp/bd-layer.list"
    rd_compare "$T/rd-mp/bd-layer.list" "$T/rd-k/bd-layer.list" "$T/rd-mp/bd-view.txt" "$T/rd-k/bd-view.txt" "buildah, root, $rd_opts"
    for s in mp k; do
        rd_eng_$s podman rm -a -f -t 0 >/dev/null 2>&1
    done
}

rd_rootless() {
    say "==== redirect_dir: the same scenario rootless ===="
    local d=$T/rl-rd
    rd_prepare
    mkdir -p "$d"/{tmp,run}
    write_configs "$d" rootless "" "$rd_opts"
    chown -R "$e2e_user:" "$d"
    chmod 700 "$d/run"
    touch "$d/ready"
    rd_run "$d" rd_eng_rl "rd-rootless-$prog_name" user mp
    bd_run "$d" rd_eng_rl "rd-rootless-$prog_name" user mp
    M=rd-rootless
    check "$prog_name's committed layer holds the rename and the chown" rd_layer_checks "$d/layer.list"
    if [[ -s $T/rd-k/layer.list ]]; then
        rd_compare "$d/layer.list" "$T/rd-k/layer.list" "$d/view.txt" "$T/rd-k/view.txt" "rootless against root, $rd_opts"
    else
        skip "rd-rootless: comparison with the kernel overlay" "no root kernel result (--rootless-only or its run failed)"
    fi
    M=bd-rootless
    check "$prog_name's layer committed by buildah holds the renames and the chowns" bd_layer_checks "$d/bd-layer.list"
    if [[ -s $T/rd-k/bd-layer.list ]]; then
        rd_compare "$d/bd-layer.list" "$T/rd-k/bd-layer.list" "$d/bd-view.txt" "$T/rd-k/bd-view.txt" "buildah, rootless against root, $rd_opts"
    else
        skip "bd-rootless: comparison with the kernel overlay" "no root kernel result (--rootless-only or its run failed)"
    fi
    rd_eng_rl podman rm -a -f -t 0 >/dev/null 2>&1
    rd_eng_rl buildah rm --all >/dev/null 2>&1
    local pp
    pp=$(cat "$d/run/libpod/tmp/pause.pid" 2>/dev/null)
    [[ -n "$pp" ]] && kill "$pp" 2>/dev/null
}

# ------------------------------------------------------------ root
if ((do_root)); then
    mkdir -p "$T/root"/{tmp,home,storage,runroot}
    write_configs "$T/root" root
    touch "$T/root/ready"
    run_suite root root_eng
    [[ $prog_name == stratafs ]] && rd_root
fi

# ------------------------------------------------------------ rootless
rootless_setup() {
    # Prints the reason and returns 1 if rootless podman cannot be set up.
    if ! getent passwd "$e2e_user" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$e2e_user" || { echo "useradd $e2e_user failed"; return 1; }
    fi
    local uid gid
    uid=$(id -u "$e2e_user")
    gid=$(id -g "$e2e_user")
    for f in /etc/subuid /etc/subgid; do
        touch "$f"
        if ! grep -qE "^($e2e_user|$uid):" "$f"; then
            # The first free 65536 block above every existing range.
            local start
            start=$(awk -F: 'BEGIN { m = 165536 } { e = $2 + $3; if (e > m) m = e } END { print m }' "$f")
            start=$(((start + 65535) / 65536 * 65536))
            echo "$e2e_user:$start:65536" >>"$f"
        fi
    done
    local d=$T/rootless
    mkdir -p "$d"/{tmp,run}
    write_configs "$d" rootless
    chown -R "$uid:$gid" "$d"
    chmod 700 "$d/run"
    # Rootless podman refuses a runroot ($XDG_RUNTIME_DIR/containers) longer
    # than 50 characters when it is passed on the command line, which is how
    # conmon's exit command (`podman container cleanup`) gets it: the cleanup
    # then fails and every attached `podman run` waits 20s for it.
    if ((${#d} + 15 > 50)); then
        echo "rootless runroot $d/run/containers is longer than 50 characters (podman limit)"
        return 1
    fi
    [[ -u /usr/bin/newuidmap || -n "$(getcap /usr/bin/newuidmap 2>/dev/null)" ]] || { echo "newuidmap is neither setuid nor has file capabilities"; return 1; }
    touch "$d/ready"
    local out
    if ! out=$(rl_eng podman info --format '{{.Host.Security.Rootless}} {{.Store.GraphDriverName}}' 2>&1); then
        echo "rootless 'podman info' failed: $out"
        return 1
    fi
    [[ $(tail -n 1 <<<"$out") == "true overlay" ]] || { echo "rootless podman info: $out"; return 1; }
}
if ((do_rootless)); then
    M=rootless
    if reason=$(rootless_setup 2>&1); then
        info "rootless: user $e2e_user ($(id -u "$e2e_user")), $(grep "^$e2e_user:" /etc/subuid)"
        run_suite rootless rl_eng
        pp=$(cat "$T/rootless/run/libpod/tmp/pause.pid" 2>/dev/null)
        [[ -n "$pp" ]] && kill "$pp" 2>/dev/null
        [[ $prog_name == stratafs ]] && rd_rootless
    else
        skip "rootless: all checks" "$reason"
    fi
fi

# ------------------------------------------------------------ build timings
# Seconds (millisecond precision) since $1, a `date +%s%N`.
secs_since() {
    local now
    now=$(date +%s%N)
    printf '%d.%03d' $(((now - $1) / 1000000000)) $((((now - $1) / 1000000) % 1000))
}
# The median of the arguments, "–" if there are none.
median() {
    (($#)) || { echo "–"; return; }
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
declare -A TMV=()        # "scenario|driver|phase" -> seconds of each run
declare -A TM_FROM=() TM_COPY=() TM_RUN=() TM_CHECK=() TM_WANT=() TM_ERR=()
tm_names=()
tm_add() { TMV[$1]+="${TMV[$1]:+ }$2"; }
# tm_eng mp|k CMD...: CMD with the store of the mount program or the kernel.
tm_eng() {
    local s=$1
    shift
    root_eng_in "$T/tm-$s" "$@"
}
# tm_step KEY CMD...: runs CMD and adds its time to KEY if it succeeds;
# its output is left in $tm_out.
tm_step() {
    local key=$1 t0 rc
    shift
    t0=$(date +%s%N)
    tm_out=$("$@" 2>&1)
    rc=$?
    ((rc == 0)) && tm_add "$key" "$(secs_since "$t0")"
    return $rc
}
# A step failed: with the mount program a FAIL, with the kernel overlay the
# scenario's kernel column is dropped (that is the engine's or the
# machine's problem, not what this script tests).
tm_failed() {
    local dr=$1 sc=$2 what=$3
    if [[ $dr == mp ]]; then
        fail "timing: $sc: $what with $prog_name" "$tm_out"
    else
        info "timing: $sc: $what with the kernel overlay failed; no kernel column: $(tail -n 3 <<<"$tm_out" | tr '\n' ' ')"
    fi
    TM_ERR[$sc|$dr]=1
}
mt_lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }
# FUSE requests the daemon serving mount point $1 has answered so far (its
# own counters, `stratafs stats`); empty for another mount program or
# where they cannot be read.
tm_requests() {
    [[ $prog_name == stratafs && -n $1 ]] || return 0
    inns "$T/bin/stratafs" stats "$1" 2>/dev/null |
        python3 -c 'import json, sys; print(sum(json.load(sys.stdin)["requests"].values()))' 2>/dev/null || true
}

# tm_scenario NAME FROM COPY RUN CHECK WANT: a build step (COPY may be
# empty: "SRC DST" relative to the context $T/tm-ctx/NAME) and a command
# whose output in the built image must be WANT.
tm_scenario() {
    local ctx=$T/tm-ctx/$1
    mkdir -p "$ctx"
    tm_names+=("$1")
    TM_FROM[$1]=$2 TM_COPY[$1]=$3 TM_RUN[$1]=$4 TM_CHECK[$1]=$5 TM_WANT[$1]=$6
    {
        echo "FROM $2"
        [[ -n $3 ]] && echo "COPY $3"
        echo "RUN $4"
    } >"$ctx/Containerfile"
    chmod -R a+rX "$ctx"
}

# One podman build and its step-by-step replica with buildah, in store $2.
tm_build() {
    local sc=$1 dr=$2 r=$3 ctx=$T/tm-ctx/$1 key="$1|$2" c="tm-$1-$3" n0
    local mlog=$T/tm-mp/mount-times.log
    [[ -n ${TM_ERR[$sc|$dr]:-} ]] && return
    sync
    n0=$(mt_lines "$mlog")
    if ! tm_step "$key|build" tm_eng "$dr" podman build --no-cache --network none --pull=never \
        -t "localhost/tm-$sc" -f "$ctx/Containerfile" "$ctx"; then
        tm_failed "$dr" "$sc" "podman build"
        return
    fi
    if [[ $dr == mp ]]; then
        tm_add "$key|mounts" "$(awk -v f="$n0" 'NR > f { n++ } END { print n + 0 }' "$mlog" 2>/dev/null || echo 0)"
        tm_add "$key|mount_s" "$(awk -v f="$n0" 'NR > f { s += ($2 - $1) / 1e9 } END { printf "%.3f\n", s }' "$mlog" 2>/dev/null || echo 0)"
    fi
    sync
    tm_step "$key|from" tm_eng "$dr" buildah from --pull-never --name "$c" "${TM_FROM[$sc]}" ||
        { tm_failed "$dr" "$sc" "buildah from"; return; }
    tm_step "$key|mount" tm_eng "$dr" buildah mount "$c" ||
        { tm_failed "$dr" "$sc" "buildah mount"; tm_eng "$dr" buildah rm "$c" >/dev/null 2>&1; return; }
    local mnt rq0=""
    mnt=$(tail -n 1 <<<"$tm_out")
    if [[ -n ${TM_COPY[$sc]} ]]; then
        local src dst
        read -r src dst <<<"${TM_COPY[$sc]}"
        tm_step "$key|copy" tm_eng "$dr" buildah copy "$c" "$ctx/$src" "$dst" ||
            { tm_failed "$dr" "$sc" "buildah copy"; tm_eng "$dr" buildah rm "$c" >/dev/null 2>&1; return; }
    fi
    # The daemon's request count just before the RUN (after the COPY).
    [[ $dr == mp ]] && rq0=$(tm_requests "$mnt")
    tm_step "$key|run" tm_eng "$dr" buildah run --network none "$c" -- /bin/sh -c "${TM_RUN[$sc]}" ||
        { tm_failed "$dr" "$sc" "buildah run"; tm_eng "$dr" buildah rm "$c" >/dev/null 2>&1; return; }
    if [[ -n $rq0 ]]; then
        local rq1
        rq1=$(tm_requests "$mnt")
        [[ -n $rq1 ]] && tm_add "$key|run_req" $((rq1 - rq0))
    fi
    tm_eng "$dr" buildah umount "$c" >/dev/null 2>&1
    # The naive diff alone (mount program: both trees mounted and walked).
    tm_step "$key|diff" tm_eng "$dr" podman diff "$c" ||
        info "timing: $sc: podman diff of a buildah container failed: $(tail -n 1 <<<"$tm_out")"
    tm_step "$key|commit" tm_eng "$dr" buildah commit --quiet "$c" "localhost/tm-$sc-buildah" ||
        tm_failed "$dr" "$sc" "buildah commit"
    tm_eng "$dr" buildah rm "$c" >/dev/null 2>&1
}

tm_table() {
    local sc dr label b bk ratio cols p
    echo "| scenario | driver | podman build | × kernel | mount program calls in the build (n, s) | buildah from | mount | COPY | RUN | RUN requests (µs each) | diff walk | commit |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for sc in "${tm_names[@]}"; do
        # shellcheck disable=SC2086
        bk=$(median ${TMV[$sc|k|build]:-})
        for dr in mp k; do
            [[ $dr == mp ]] && label=$prog_name || label="kernel overlay"
            # shellcheck disable=SC2086
            b=$(median ${TMV[$sc|$dr|build]:-})
            ratio=–
            if [[ $dr == mp && $b != – && $bk != – ]]; then
                ratio=$(awk -v a="$b" -v k="$bk" 'BEGIN { if (k > 0) printf "%.2f×", a / k; else print "–" }')
            fi
            cols="| $sc | $label | $b | $ratio | "
            if [[ $dr == mp ]]; then
                # shellcheck disable=SC2086
                cols+="$(median ${TMV[$sc|mp|mounts]:-}), $(median ${TMV[$sc|mp|mount_s]:-}) |"
            else
                cols+="– |"
            fi
            for p in from mount copy run run_req diff commit; do
                # shellcheck disable=SC2086
                if [[ $p != run_req ]]; then
                    cols+=" $(median ${TMV[$sc|$dr|$p]:-}) |"
                elif [[ -n ${TMV[$sc|$dr|run_req]:-} ]]; then
                    # Requests during the RUN step, and its time divided by them.
                    local rq rt
                    rq=$(median ${TMV[$sc|$dr|run_req]})
                    rt=$(median ${TMV[$sc|$dr|run]:-})
                    cols+=" $(awk -v q="$rq" -v t="$rt" 'BEGIN { printf "%d (%.1f)", q, (q > 0 && t != "–") ? t * 1e6 / q : 0 }') |"
                else
                    cols+=" – |"
                fi
            done
            echo "$cols"
        done
    done
}

# doc_timings DOC TABLE: replaces what is between the E2E BUILD TIMES markers
# of DOC with TABLE under a line naming the date, the commit and the machine.
doc_timings() {
    local commit
    commit=$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    python3 - "$1" "$2" "$commit" "$(uname -r)" "$(podman --version 2>/dev/null)" <<'PY'
import datetime, sys
doc, table, commit, kernel, podman = sys.argv[1:6]
begin = "<!-- BEGIN E2E BUILD TIMES (generated by scripts/e2e-podman.sh --timing --update-doc) -->"
end = "<!-- END E2E BUILD TIMES -->"
with open(doc) as f:
    text = f.read()
if begin not in text or end not in text:
    sys.exit(f"{doc}: no E2E BUILD TIMES markers")
with open(table) as f:
    body = f.read().strip()
head = (f"Run of {datetime.datetime.now():%Y-%m-%d %H:%M} (`bash scripts/e2e-podman.sh --root-only --timing "
        f"--update-doc`), stratafs commit `{commit}`, kernel {kernel}, {podman}.")
a, b = text.index(begin) + len(begin), text.index(end)
with open(doc, "w") as f:
    f.write(text[:a] + "\n\n" + head + "\n\n" + body + "\n\n" + text[b:])
PY
}

timing_suite() {
    M=timing
    local nfail0=$nfail
    local runs files s sc dr r out load0 load1 t_suite
    t_suite=$(date +%s%N)
    if [[ $timing == full ]]; then
        runs=${E2E_TIMING_RUNS:-3}
        files=${E2E_TIMING_FILES:-10000}
    else
        runs=${E2E_TIMING_RUNS:-1}
        files=${E2E_TIMING_FILES:-500}
    fi
    say "==== build timings ($timing: $runs run(s); $prog_name as mount_program and podman's native overlay driver, root) ===="
    for s in tm-mp tm-k; do
        mkdir -p "$T/$s"/{tmp,home,storage,runroot}
        touch "$T/$s/ready"
    done
    write_configs "$T/tm-mp" root timed "${E2E_TIMING_OPTS:-}"
    [[ -n ${E2E_TIMING_OPTS:-} ]] && info "timing: the mount program's stores add mountopt ${E2E_TIMING_OPTS}"
    write_configs "$T/tm-k" root native
    out=$(tm_eng k podman info --format '{{.Store.GraphDriverName}} {{json .Store.GraphStatus}}' 2>&1)
    info "timing: native store: $(tr -d '\n' <<<"$out" | cut -c1-300)"
    local k_ok=1
    tm_in() { tm_eng "$1" podman import --change 'CMD ["/bin/sh"]' - localhost/base:latest <"$T/rootfs.tar"; }
    check "podman import localhost/base into the timing store ($prog_name)" tm_in mp || return
    if ! out=$(tm_in k 2>&1); then
        info "timing: podman import with the native overlay driver failed; no kernel column: $out"
        k_ok=0
    fi

    tm_scenario layered localhost/base:latest "" "sh /e2e/layer2.sh" "cat /data/l2file /data/l1dir/new1" "l2"$'\n'"new1"
    mkdir -p "$T/tm-ctx/untar"
    python3 "$helpers/smalltar.py" "$T/tm-ctx/untar/files.tar" "$files" || die "cannot write the untar scenario's tarball"
    tm_scenario untar localhost/base:latest "files.tar /tmp/files.tar" \
        "mkdir -p /usr/share/bulk && tar -xf /tmp/files.tar -C /usr/share/bulk && rm /tmp/files.tar" \
        "find /usr/share/bulk -type f | wc -l" "$files"
    if [[ $timing == full ]]; then
        mkdir -p "$T/tm-ctx/dpkg"
        if out=$(python3 "$helpers/debroot.py" "$T/tm-ctx/debroot" "$T/tm-ctx/dpkg/debs" 2>&1); then
            info "timing: Debian base image and perl's .debs from the host's packages: $out"
            tar -C "$T/tm-ctx/debroot" -cf "$T/tm-ctx/debbase.tar" . || die "cannot tar the Debian root"
            rm -rf "$T/tm-ctx/debroot"
            deb_in() { tm_eng "$1" podman import --change 'CMD ["/bin/bash"]' - localhost/debbase:latest <"$T/tm-ctx/debbase.tar"; }
            if check "podman import localhost/debbase into the timing store ($prog_name)" deb_in mp; then
                ((k_ok)) && { deb_in k >/dev/null 2>&1 || TM_ERR[dpkg|k]=1; }
                tm_scenario dpkg localhost/debbase:latest "debs /tmp/debs/" \
                    "dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs" \
                    "perl -MList::Util=sum -e 'print sum(1, 2)' && dpkg-query -W -f=' \${Status}' perl" "3 install ok installed"
            fi
        else
            skip "timing: dpkg scenario" "$out"
        fi
    fi
    ((k_ok)) || for sc in "${tm_names[@]}"; do TM_ERR[$sc|k]=1; done

    read -r load0 _ </proc/loadavg
    for ((r = 1; r <= runs; r++)); do
        for sc in "${tm_names[@]}"; do
            # The order of the two stores alternates from run to run.
            for dr in $( ((r % 2)) && echo mp k || echo k mp); do
                tm_build "$sc" "$dr" "$r"
            done
        done
    done
    read -r load1 _ </proc/loadavg
    for sc in "${tm_names[@]}"; do
        for dr in mp k; do
            [[ -n ${TM_ERR[$sc|$dr]:-} ]] && continue
            out=$(tm_eng "$dr" podman run --rm --network none --pull never "localhost/tm-$sc" /bin/sh -c "${TM_CHECK[$sc]}" 2>&1)
            if [[ $dr == mp ]]; then
                if [[ $out == "${TM_WANT[$sc]}" ]]; then
                    pass "timing: $sc: built $runs time(s) with $prog_name, image checked"
                else
                    fail "timing: $sc: image built with $prog_name" "want: ${TM_WANT[$sc]}"$'\n'"got:  $out"
                fi
            elif [[ $out != "${TM_WANT[$sc]}" ]]; then
                info "timing: $sc: image built with the kernel overlay: want ${TM_WANT[$sc]}, got $out"
            fi
        done
    done
    for s in mp k; do
        tm_eng "$s" podman rm -a -f -t 0 >/dev/null 2>&1
        tm_eng "$s" buildah rm --all >/dev/null 2>&1
    done

    {
        echo "Build times in seconds (median of $runs run(s), root, $(nproc) CPUs, 1-minute load average $load0 before, $load1 after)."
        echo "podman build: the whole build, a commit after every instruction. Then the same step by hand: buildah from,"
        echo "buildah mount, buildah copy (COPY), buildah run (RUN), with stratafs the FUSE requests its daemon answered during"
        echo "the RUN (its own counters) and the RUN's time per request, podman diff of the working container (the walk of the"
        echo "naive diff alone, both trees mounted: the mount program's way; the kernel driver reads the upper dir), buildah commit."
        echo
        tm_table
    } >"$T/timings.md"
    echo
    cat "$T/timings.md"
    echo
    if [[ -n ${E2E_TIMING_OUT:-} ]]; then
        cp "$T/timings.md" "$E2E_TIMING_OUT" || info "timing: cannot write $E2E_TIMING_OUT"
    fi
    if ((update_doc)); then
        if [[ -n ${E2E_TIMING_OPTS:-} ]]; then
            info "timing: E2E_TIMING_OPTS given; docs/PERFORMANCE.md left as it is"
        elif ((nfail > nfail0)); then
            info "timing: a timed build with $prog_name failed; docs/PERFORMANCE.md left as it is"
        elif doc_timings "${E2E_TIMING_DOC:-$repo/docs/PERFORMANCE.md}" "$T/timings.md"; then
            info "timing: table written to ${E2E_TIMING_DOC:-docs/PERFORMANCE.md}"
        else
            fail "timing: cannot write the table into ${E2E_TIMING_DOC:-docs/PERFORMANCE.md}"
        fi
    fi
    info "timing: the timings took $(secs_since "$t_suite") s"
}
if ((do_root)) && [[ $timing != 0 ]]; then
    timing_suite
fi

# ------------------------------------------------------------ host state
M=host
rm_out=$( (
    [[ -f $T/root/ready ]] && root_eng podman rm -a -f -t 0
    [[ -f $T/rootless/ready ]] && rl_eng podman rm -a -f -t 0
    true
) 2>&1)
for i in $(seq 1 50); do
    left_d=$(our_daemons)
    left_m=$(our_mounts_ns)
    [[ -z "$left_d$left_m" ]] && break
    sleep 0.2
done
if [[ -z "$left_d$left_m" ]]; then
    pass "host: no stratafs daemon or mount of this run left"
else
    fail "host: no stratafs daemon or mount of this run left" "$(ps -o pid,args -p "${left_d//$'\n'/,}" 2>/dev/null)"$'\n'"$left_m"$'\n'"$rm_out"
fi
if [[ $(host_state) == "$host_state_before" ]]; then
    pass "host: /etc/containers and /var/lib/containers untouched"
else
    fail "host: /etc/containers and /var/lib/containers untouched" "$(ls -la /var/lib/containers 2>&1)"
fi
inns_upper=$(find "$T/varlib/upper" -mindepth 1 -maxdepth 3 2>/dev/null | sed "s|$T/varlib/upper|/var/lib|"
    find "$T/run/upper" -mindepth 1 -maxdepth 1 2>/dev/null | sed "s|$T/run/upper|/run|")
[[ -n "$inns_upper" ]] && info "engines wrote (into the private /var/lib and /run overlays): $(tr '\n' ' ' <<<"$inns_upper")"

elapsed=$(($(date +%s) - start_time))
say "runtime ${elapsed}s"
((${#failed_checks[@]})) && printf 'e2e: failed: %s\n' "${failed_checks[@]}"
if ((nskip)); then
    echo "e2e: $npass passed, $nfail failed, $nskip skipped"
else
    echo "e2e: $npass passed, $nfail failed"
fi
((nfail == 0))
