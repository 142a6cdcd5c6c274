#!/bin/sh
# Runs in a container of the redirect_dir scenario (scripts/e2e-podman.sh):
# renames directories with lower content (one of them into a tree it then
# chowns), chowns that lower tree (a hard-linked file in it has one more
# name outside it), renames a chowned directory, then prints the view
# (rdview.sh).
set -e
mv /usr/share/doc /usr/share/doc2
echo added > /usr/share/doc2/pkg-00/added
rm /usr/share/doc2/pkg-01/copyright
mv /usr/share/doc2/pkg-02 /srv/tree/moved
chown -R 1234:5678 /srv/tree
mv /srv/tree/d2 /srv/tree/d2-renamed
exec sh /e2e/rdview.sh
