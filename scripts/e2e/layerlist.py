#!/usr/bin/env python3
"""Lists the top layer of a docker-archive (`podman save --format
docker-archive`), one sorted line per entry: type, mode, owner, path, and
the size and sha256 of regular files, the target of links, extended
attributes (pax records). Modification times are left out (they differ
from run to run). Usage: layerlist.py ARCHIVE"""
import hashlib
import json
import sys
import tarfile

TYPES = {tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l",
         tarfile.LNKTYPE: "h", tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p"}


def norm(name):
    """A member's path without the leading ./ or / some writers add."""
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/") or "."


def main():
    with tarfile.open(sys.argv[1]) as arch:
        manifest = json.load(arch.extractfile("manifest.json"))
        top = arch.extractfile(manifest[0]["Layers"][-1])
        lines = []
        with tarfile.open(fileobj=top) as layer:
            for m in layer:
                name = norm(m.name)
                line = f"{TYPES.get(m.type, m.type)} {m.mode & 0o7777:04o} {m.uid}:{m.gid} {name}"
                if m.isreg():
                    line += f" {m.size} {hashlib.sha256(layer.extractfile(m).read()).hexdigest()}"
                elif m.issym() or m.islnk():
                    line += f" -> {norm(m.linkname) if m.islnk() else m.linkname}"
                elif m.ischr() or m.isblk():
                    line += f" {m.devmajor},{m.devminor}"
                xattrs = sorted(k for k in m.pax_headers if k.startswith("SCHILY.xattr."))
                if xattrs:
                    line += " xattrs=" + ",".join(f"{k[13:]}={m.pax_headers[k]!r}" for k in xattrs)
                lines.append(line)
    print("\n".join(sorted(lines)))


if __name__ == "__main__":
    main()
