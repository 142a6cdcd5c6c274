#!/usr/bin/env python3
"""Write a tarball of N small files for untar timings.

Usage: smalltar.py PATH N [UID]

N files of 3 bytes to 2.4 KiB (file i holds "i " repeated 1 + i % 400
times) in directories of 100 (d000/f00000.txt, ...), all with mtime
1700000000, directories 0755 and owned by 0, files 0644 and owned by UID
(user and group) when given, else by 0.
"""
import io
import sys
import tarfile


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    owner = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for d in sorted({i // 100 for i in range(n)}):
            ti = tarfile.TarInfo(f"d{d:03d}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            tf.addfile(ti)
        for i in range(n):
            data = (b"%d " % i) * (1 + i % 400)
            ti = tarfile.TarInfo(f"d{i // 100:03d}/f{i:05d}.txt")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1700000000
            ti.uid = ti.gid = owner
            tf.addfile(ti, io.BytesIO(data))


if __name__ == "__main__":
    main()
