#!/bin/sh
# shellcheck disable=SC2012
# Checks the view of /data inside a container.
#   verify.sh pristine   the localhost/layered image as built
#   verify.sh mutated    after mutate.sh (same container, or after a restart)
#   verify.sh committed  an image committed from a mutated container
# Prints "FAIL what: got ..., want ..." lines and a summary; exit 1 on failure.
mode=${1:-pristine}
cd /data || exit 1
nok=0
nbad=0
eq() {
    if [ "$2" = "$3" ]; then
        nok=$((nok + 1))
    else
        nbad=$((nbad + 1))
        echo "FAIL $1: got [$2], want [$3]"
    fi
}
yes_() { if "$@"; then echo yes; else echo no; fi; }
flat() { tr '\n' ' ' | sed 's/ $//'; }

eq root-fstype "$(awk '$5 == "/" { for (i = 6; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }' /proc/self/mountinfo)" "$(cat /e2e/fstype)"
eq file1 "$(cat file1)" base-file1
eq big-md5 "$(md5sum big | cut -d' ' -f1)" "$(cut -d' ' -f1 big.md5)"
eq deep-dir "$(ls deep/a/b/c/d)" file
eq l1gone-absent "$(yes_ test -e l1gone)" no
eq no-wh-names "$(find / -xdev -name '.wh.*' 2>/dev/null | flat)" ""

if [ "$mode" = pristine ]; then
    eq listing "$(ls -A | sort | flat)" "appendme big big.md5 chmodme chownme deep deldir deleteme dir1 dirmode file1 l1dir l2file l2mod openunlink renamedir renameme replacedst replacesrc truncme"
    eq appendme "$(cat appendme)" line1
    eq truncme "$(cat truncme)" 0123456789
    eq chmodme-mode "$(stat -c %a chmodme)" 644
    eq chownme-owner "$(stat -c %u:%g chownme)" 0:0
    eq deldir "$(find deldir | sort | flat)" "deldir deldir/sub deldir/sub/y deldir/x"
    eq dir1 "$(ls dir1 | flat)" "a b"
    eq l1dir "$(ls -A l1dir | flat)" new1
    eq l2file "$(cat l2file)" l2
    eq l2mod "$(cat l2mod)" v2
    eq deep "$(cat deep/a/b/c/d/file)" deep
    eq file1-nlink "$(stat -c %h file1)" 1
else
    eq listing "$(ls -A | sort | flat)" "appendme big big.md5 big2 chmodme chownme deep dir1 dirmode fifo file1 hardlink l2mod newdir newfile newhard renamed renameddir replacedst sparse symlink truncme"
    eq appendme "$(cat appendme)" "line1
appended"
    eq truncme "$(cat truncme)" 012
    eq truncme-size "$(stat -c %s truncme)" 3
    eq chmodme-mode "$(stat -c %a chmodme)" 600
    eq chownme-owner "$(stat -c %u:%g chownme)" 1234:5678
    eq renamed "$(cat renamed)" renameme-content
    # (replacesrc differs from replacedst in size: a commit's naive diff
    # compares size and mtime only, and the tar import left whole-second
    # mtimes, so a same-size rename-over would not reach the image.)
    eq replacedst "$(cat replacedst)" replacesrc-content-longer
    eq renameddir "$(find renameddir | sort | flat)" "renameddir renameddir/f1"
    eq renameddir-f1 "$(cat renameddir/f1)" f1
    eq dir1-opaque "$(ls -A dir1 | flat)" c
    eq dir1-c "$(cat dir1/c)" new
    eq dirmode-mode "$(stat -c %a dirmode)" 700
    eq dirmode-file "$(cat dirmode/m)" m
    eq hardlink "$(cat hardlink)" base-file1
    eq newhard "$(cat newfile)" "new
more"
    eq newhard-nlink "$(stat -c %h newfile):$(stat -c %h newhard)" 2:2
    eq newhard-ino "$(yes_ test "$(stat -c %i newfile)" = "$(stat -c %i newhard)")" yes
    if [ "$mode" = mutated ]; then
        # A commit tars each changed path on its own; file1 itself is
        # unchanged, so only the running/restarted container keeps the link.
        eq hardlink-nlink "$(stat -c %h file1):$(stat -c %h hardlink)" 2:2
        eq hardlink-ino "$(yes_ test "$(stat -c %i file1)" = "$(stat -c %i hardlink)")" yes
    fi
    eq symlink "$(readlink symlink)" file1
    eq symlink-read "$(cat symlink)" base-file1
    eq fifo-type "$(yes_ test -p fifo)" yes
    eq fifo-io "$( (echo through-fifo > fifo &) ; timeout 10 cat fifo)" through-fifo
    eq newdir "$(cat newdir/sub/f)" x
    eq big2-size "$(stat -c %s big2)" 3145728
    eq big2-middle "$(dd if=big2 bs=1 skip=1048576 count=2 2>/dev/null)" XY
    eq big2-md5 "$(md5sum big2 | cut -d' ' -f1)" \
        "$( (head -c 1048576 big; printf XY; tail -c +1048579 big) | md5sum | cut -d' ' -f1)"
    eq sparse-size "$(stat -c %s sparse)" 8388608
    eq sparse-tail "$(tail -c 1 sparse | od -An -tx1 | tr -d ' ')" 00
    eq touch-mtime "$(stat -c %Y dirmode/m)" "$(date -d '2001-02-03 04:05:06' +%s)"
    eq deep "$(cat deep/a/b/c/d/file)" "deep
deep2"
    eq l2mod "$(cat l2mod)" v3
    for gone in deleteme deldir renameme renamedir replacesrc l2file l1dir openunlink tmpnew; do
        eq "$gone-absent" "$(yes_ test -e $gone)" no
    done
    eq deleted-stat "$(stat deleteme 2>&1 >/dev/null | grep -c 'No such file')" 1
    # A deleted name can be created again.
    eq recreate "$(echo again > deleteme && cat deleteme && rm deleteme && yes_ test -e deleteme)" "again
no"
fi
echo "verify $mode: $nok ok, $nbad failed"
[ "$nbad" -eq 0 ]
