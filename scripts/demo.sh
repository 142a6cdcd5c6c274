#!/usr/bin/env bash
# stratafs demo: build, mount a 3-layer stack, look at it, write to it, and
# show what the writes did to the upper directory.
#
# Usage: bash scripts/demo.sh
#   STRATAFS_BIN=/path/to/stratafs   use this binary instead of building one
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

section() { printf '\n=== %s ===\n' "$*"; }
die() {
    echo "demo: FAILED: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- setup
section "Installing dependencies"
bash scripts/install-deps.sh
echo "ok"

if [[ -z "${STRATAFS_BIN:-}" ]]; then
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    section "Building (cargo build --release)"
    cargo build --release
    STRATAFS_BIN="$repo/target/release/stratafs"
fi
[[ -x "$STRATAFS_BIN" ]] || die "no executable at $STRATAFS_BIN"

work=$(mktemp -d "${TMPDIR:-/tmp}/stratafs-demo.XXXXXX")
mnt="$work/merged"
upper="$work/upper"
daemon_pids=()

is_mounted() {
    # Field 5 of mountinfo is the mount point. (Temp paths have no spaces.)
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# PIDs of processes whose command line names our (unique) mount point.
find_daemon_pids() {
    local d cmd
    for d in /proc/[0-9]*; do
        [[ "${d#/proc/}" == "$$" || "${d#/proc/}" == "$BASHPID" ]] && continue
        cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
        [[ "$cmd" == *"$mnt"* ]] && echo "${d#/proc/}"
    done
}

cleanup() {
    local rc=$?
    set +e
    if is_mounted "$mnt"; then
        echo "demo: cleaning up: unmounting $mnt" >&2
        fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
    local pid
    for pid in "${daemon_pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "demo: cleaning up: stopping daemon $pid" >&2
            kill "$pid" 2>/dev/null
            sleep 1
            kill -9 "$pid" 2>/dev/null
        fi
    done
    rm -rf "$work"
    if ((rc != 0)); then
        echo "demo: exit status $rc" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- layers
# Three read-only layers; the leftmost in lowerdir= is the top one.
#
#   layer1 (top)     etc/app.conf     overrides layer3's copy
#                    home/notes.txt
#   layer2 (middle)  data/            opaque: hides everything layer3 has there
#                    docs/.wh.old.txt AUFS-style whiteout: hides layer3's docs/old.txt
#   layer3 (bottom)  the base: etc/, data/, docs/, srv/
section "Creating a 3-layer stack in $work"
l1="$work/layer1" l2="$work/layer2" l3="$work/layer3"
mkdir -p "$l1" "$l2" "$l3" "$upper" "$work/work" "$mnt"

mkdir -p "$l3/etc" "$l3/data/cache" "$l3/docs" "$l3/srv/www"
echo "mode=base   (from layer3)" >"$l3/etc/app.conf"
echo "Welcome     (from layer3)" >"$l3/etc/motd"
echo "cached blob (from layer3)" >"$l3/data/cache/blob"
echo "base data   (from layer3)" >"$l3/data/base.db"
echo "keep me     (from layer3)" >"$l3/docs/guide.txt"
echo "outdated    (from layer3)" >"$l3/docs/old.txt"
echo "<h1>old site (from layer3)</h1>" >"$l3/srv/www/index.html"

mkdir -p "$l2/data" "$l2/docs"
echo "fresh data  (from layer2)" >"$l2/data/current.db"
if setfattr -n trusted.overlay.opaque -v y "$l2/data" 2>/dev/null; then
    opaque_how="trusted.overlay.opaque=y on ./data"
else # trusted.* needs root; the AUFS marker works for everyone
    : >"$l2/data/.wh..wh..opq"
    opaque_how="./data/.wh..wh..opq marks ./data opaque"
fi
: >"$l2/docs/.wh.old.txt"

mkdir -p "$l1/etc" "$l1/home"
echo "mode=prod   (from layer1)" >"$l1/etc/app.conf"
echo "first note  (from layer1)" >"$l1/home/notes.txt"

echo "layer1 (top):    $(cd "$l1" && find . -mindepth 1 | sort | tr '\n' ' ')"
echo "layer2 (middle): $(cd "$l2" && find . -mindepth 1 | sort | tr '\n' ' ')"
echo "                 + $opaque_how"
echo "layer3 (bottom): $(cd "$l3" && find . -mindepth 1 | sort | tr '\n' ' ')"

# ---------------------------------------------------------------- mount
section "Mounting"
opts="lowerdir=$l1:$l2:$l3,upperdir=$upper,workdir=$work/work"
echo "\$ stratafs -o $opts $mnt"
"$STRATAFS_BIN" -o "$opts" "$mnt" || die "stratafs exited with status $?"
is_mounted "$mnt" || die "stratafs returned but $mnt is not mounted"
mapfile -t daemon_pids < <(find_daemon_pids)
((${#daemon_pids[@]} > 0)) || die "mounted, but found no daemon process for $mnt"
echo "mounted; daemon pid ${daemon_pids[*]}"
grep -F " $mnt " /proc/self/mountinfo | awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { print "type " $(i+1) ", source " $(i+2); exit } }'

# ---------------------------------------------------------------- look
section "Merged tree"
(cd "$mnt" && find . | sort)

section "ls -l of the merged root and etc/"
ls -l "$mnt" "$mnt/etc"

section "What the layers resolve to"
echo "etc/app.conf: $(cat "$mnt/etc/app.conf")"
echo "etc/motd:     $(cat "$mnt/etc/motd")"
[[ "$(cat "$mnt/etc/app.conf")" == *"from layer1"* ]] || die "etc/app.conf should come from layer1"
[[ ! -e "$mnt/data/cache" && ! -e "$mnt/data/base.db" ]] ||
    die "data/ is opaque in layer2, layer3's entries should be hidden"
[[ -e "$mnt/data/current.db" ]] || die "data/current.db from layer2 is missing"
echo "data/:        $(cd "$mnt/data" && find . -mindepth 1 -maxdepth 1 -printf '%P ')(layer3's cache/ and base.db hidden by the opaque dir)"
[[ ! -e "$mnt/docs/old.txt" ]] || die "docs/old.txt should be hidden by layer2's whiteout"
[[ -e "$mnt/docs/guide.txt" ]] || die "docs/guide.txt is missing"
echo "docs/:        $(cd "$mnt/docs" && find . -mindepth 1 -maxdepth 1 -printf '%P ')(old.txt hidden by layer2's .wh.old.txt)"

# ---------------------------------------------------------------- write
section "Writing through the mount"
notes_before=$(cat "$l1/home/notes.txt")
echo "\$ echo 'second note' >> home/notes.txt   # append to a lower file: copy-up"
echo "second note (written via the mount)" >>"$mnt/home/notes.txt"
echo "\$ rm etc/motd                            # delete a lower file: whiteout"
rm "$mnt/etc/motd"
echo "\$ rm -r docs                             # remove a lower directory: whiteout"
rm -r "$mnt/docs"
echo "\$ rm -r srv && mkdir srv                 # replace a lower directory: opaque dir"
rm -r "$mnt/srv"
mkdir "$mnt/srv"
echo "<h1>new site</h1>" >"$mnt/srv/index.html"
echo "\$ echo hello > hello.txt                 # a brand-new file"
echo "hello" >"$mnt/hello.txt"

section "Merged view after the writes"
(cd "$mnt" && find . | sort)
echo
echo "home/notes.txt:"
sed 's/^/  /' "$mnt/home/notes.txt"
[[ ! -e "$mnt/etc/motd" && ! -e "$mnt/docs" && ! -e "$mnt/srv/www" ]] ||
    die "deleted entries are still visible"

# ---------------------------------------------------------------- upper
section "What landed in the upper directory"
while IFS= read -r rel; do
    path="$upper/$rel"
    if [[ -c "$path" ]] && [[ "$(stat -c '%t:%T' "$path")" == "0:0" ]]; then
        kind="whiteout (char device 0/0)"
    elif [[ "$(basename "$rel")" == .wh..wh..opq ]]; then
        kind="opaque marker (.wh..wh..opq)"
    elif [[ "$(basename "$rel")" == .wh.* ]]; then
        kind="whiteout (.wh. file)"
    elif [[ -d "$path" ]]; then
        kind="dir"
    elif [[ -f "$path" ]]; then
        kind="file, $(stat -c %s "$path") bytes"
    else
        kind=$(stat -c %F "$path")
    fi
    xattrs=$(getfattr --absolute-names --only-values -n trusted.overlay.opaque "$path" 2>/dev/null || true)
    [[ -n "$xattrs" ]] || xattrs=$(getfattr --absolute-names --only-values -n user.overlay.opaque "$path" 2>/dev/null || true)
    if [[ "$xattrs" == y ]]; then
        kind="$kind, opaque"
    fi
    printf '  %-22s %s\n' "$rel" "$kind"
done < <(cd "$upper" && find . -mindepth 1 | sed 's|^\./||' | sort)

echo
echo "overlay xattrs in the upper directory (getfattr -R -d -m '^(trusted|user)\\.overlay\\.'):"
(cd "$upper" && getfattr -R -d -m '^(trusted|user)\.overlay\.' . 2>/dev/null | sed '/^$/d; s/^/  /') || true

section "The lower layers are untouched"
echo "layer1/home/notes.txt: $(cat "$l1/home/notes.txt")"
[[ "$(cat "$l1/home/notes.txt")" == "$notes_before" ]] || die "layer1/home/notes.txt changed"
[[ -f "$l3/etc/motd" && -d "$l3/docs" && -f "$l3/srv/www/index.html" ]] || die "layer3 changed"
echo "layer3/etc/motd, layer3/docs/, layer3/srv/www/ still present"

# ---------------------------------------------------------------- unmount
section "Unmounting"
echo "\$ fusermount3 -u $mnt"
fusermount3 -u "$mnt"
is_mounted "$mnt" && die "$mnt is still mounted"
for _ in $(seq 50); do
    alive=0
    for pid in "${daemon_pids[@]}"; do
        kill -0 "$pid" 2>/dev/null && alive=1
    done
    ((alive == 0)) && break
    sleep 0.1
done
((alive == 0)) || die "daemon ${daemon_pids[*]} still running 5s after unmount"
echo "unmounted; daemon exited"

section "Demo finished OK"
