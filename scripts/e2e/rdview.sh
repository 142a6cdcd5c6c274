#!/bin/sh
# The view of the trees the redirect_dir scenario changes (rdchange.sh):
# type and mode, owner, path, size of files, symlink targets, contents.
# Directory sizes and link counts are file-system specific: left out.
cd / || exit 1
{
    find usr/share srv/tree -type f -exec stat -c '%A %u:%g %n %s' {} \;
    find usr/share srv/tree -type d -exec stat -c '%A %u:%g %n' {} \;
    find usr/share srv/tree -type l -exec stat -c '%A %u:%g %N' {} \;
    find usr/share srv/tree -type f -exec md5sum {} \;
} | LC_ALL=C sort
