#!/usr/bin/env bash
# Install the Debian packages that building, demoing and testing stratafs need.
#
# Idempotent and quiet: when every package is already installed it does
# nothing (no `apt-get update`), otherwise it refreshes the package lists and
# installs exactly what is missing.
#
# Usage: bash scripts/install-deps.sh [EXTRA_PACKAGE...]
set -euo pipefail

packages=(
    fuse3          # fusermount3, /etc/fuse.conf
    libfuse3-dev   # headers + .pc for crates that link libfuse
    pkg-config
    attr           # getfattr / setfattr
    acl            # getfacl / setfacl
    fuse-overlayfs # reference implementation, used by the tests
    util-linux     # unshare, setpriv, runuser, mountpoint
    passwd         # useradd (rootless test user)
    coreutils      # timeout, stat, mktemp
    findutils
    jq             # parsing `cargo --message-format=json`
    make           # the library test builds a C program in a mount
    gcc
    "$@"
)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${packages[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [[ "$status" != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
else
    echo "install-deps: dpkg not found; not a Debian system, assuming the tools are present" >&2
    exit 0
fi

if ((${#missing[@]} == 0)); then
    exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
else
    SUDO=()
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq >"$log" 2>&1 ||
    ! "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
    cat "$log" >&2
    echo "install-deps: apt-get failed" >&2
    exit 1
fi
