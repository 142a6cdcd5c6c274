#!/bin/sh
# shellcheck disable=SC2016
# Runs inside a container of localhost/layered: changes lower files and
# directories in every way the checks in verify.sh expect.  Prints
# "op-fail NAME" for every operation that fails and exits non-zero then.
cd /data || exit 1
bad=0
op() {
    name=$1
    shift
    if ! out=$("$@" 2>&1); then
        echo "op-fail $name: $out"
        bad=1
    fi
}
op append       sh -c 'echo appended >> appendme'
op truncate     truncate -s 3 truncme
op chmod        chmod 600 chmodme
op chown        chown 1234:5678 chownme
op rename       mv renameme renamed
op rename-over  mv replacesrc replacedst
op unlink       rm deleteme
op rmdir-tree   rm -r deldir
op rename-dir   mv renamedir renameddir
op replace-dir  sh -c 'rm -r dir1 && mkdir dir1 && echo new > dir1/c'
op chmod-dir    chmod 700 dirmode
op hardlink     ln file1 hardlink
op hardlink-new sh -c 'echo new > newfile && ln newfile newhard && echo more >> newhard'
op symlink      ln -s file1 symlink
op mkfifo       mkfifo fifo
op mkdir-p      sh -c 'mkdir -p newdir/sub && echo x > newdir/sub/f'
op copy-big     cp big big2
op deep-append  sh -c 'echo deep2 >> deep/a/b/c/d/file'
op unlink-l2    rm l2file
op rmdir-l2     rm -r l1dir
op overwrite-l2 sh -c 'echo v3 > l2mod'
op open-unlinked sh -c 'exec 3< openunlink && rm openunlink && read -r x <&3 && test "$x" = still-readable'
op open-unlinked-new sh -c 'echo fresh > tmpnew && exec 3< tmpnew && rm tmpnew && read -r x <&3 && test "$x" = fresh'
op sparse       dd if=/dev/zero of=sparse bs=1 count=1 seek=8388607
op touch-mtime  touch -d '2001-02-03 04:05:06' dirmode/m
op write-middle sh -c 'printf XY | dd of=big2 bs=1 seek=1048576 conv=notrunc'
exit $bad
