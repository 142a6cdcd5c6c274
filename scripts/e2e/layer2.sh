#!/bin/sh
# Runs inside `podman build` (RUN step) on top of the busybox base image:
# makes a second image layer that deletes, replaces and adds lower entries.
set -e
rm /data/l1gone
rm -r /data/l1dir
mkdir /data/l1dir
echo new1 > /data/l1dir/new1
echo l2 > /data/l2file
echo v2 > /data/l2mod
