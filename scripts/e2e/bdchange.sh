#!/bin/sh
# Runs in a buildah container of the redirect_dir scenario (`buildah run`,
# scripts/e2e-podman.sh): renames a lower directory with content from two
# layers, moves a subtree of it to another parent and a lower subtree into
# it, chowns the renamed tree (a hard-linked file among it, whose other
# names are outside), chowns one name of a hard-linked lower file, then
# prints the view (rdview.sh).
set -e
mv /usr/share/doc /usr/share/doc-b
mv /usr/share/doc-b/pkg-05 /srv/pkg-05
mv /srv/tree/d1 /usr/share/doc-b/d1
chown -R 4321:8765 /usr/share/doc-b
chown 1234:5678 /srv/links/pair-a
exec sh /e2e/rdview.sh
