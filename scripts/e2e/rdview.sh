#!/bin/sh
# The view of the trees the redirect_dir scenario changes (rdchange.sh,
# bdchange.sh): type and mode, owner, path, size of files, symlink targets,
# contents, and for files with more than one name their link count and the
# first name (in path order) of the same inode.  Directory sizes and link
# counts and inode numbers are file-system specific: left out.
cd / || exit 1
{
    find usr/share srv -type f -exec stat -c '%A %u:%g %n %s' {} \;
    find usr/share srv -type d -exec stat -c '%A %u:%g %n' {} \;
    find usr/share srv -type l -exec stat -c '%A %u:%g %N' {} \;
    find usr/share srv -type f -exec md5sum {} \;
    find usr/share srv -type f -links +1 -exec stat -c '%i %h %n' {} \; | LC_ALL=C sort -k 3 |
        awk '{ if (!($1 in first)) first[$1] = $3; print "links " $2 " " $3 " = " first[$1] }'
} | LC_ALL=C sort
