#!/bin/sh
# Container command for the restart check: the first run mutates /data and
# leaves a marker; every run (first or after `podman start`) verifies.
if [ ! -e /.e2e-mutated ]; then
    sh /e2e/mutate.sh || exit 1
    echo mutated > /.e2e-mutated
    echo "once: mutated"
else
    echo "once: restarted, not mutating"
fi
exec sh /e2e/verify.sh mutated
