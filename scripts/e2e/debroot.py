#!/usr/bin/env python3
"""A Debian base image and perl's packages, made from the host's installed
packages (no network, no mirror), for the dpkg build scenario of
scripts/e2e-podman.sh.

Usage: debroot.py ROOTFS DEBS

ROOTFS  a minimal Debian root file system: the Essential packages, dpkg,
        and whatever they and perl's libraries depend on, copied from the
        host (the files `dpkg -L` names), with a dpkg database that lists
        exactly those packages.
DEBS    perl, perl-modules-X and libperlX rebuilt as .deb files from the
        host's installed files and dpkg database (control fields, maintainer
        scripts, md5sums, conffiles), so that `dpkg -i DEBS/*.deb` in the
        image installs perl as `apt-get install perl` would.

Prints one line `packages=N paths=M debs=K deb_paths=F`. Exits 3 (with the
reason on stderr) if the host cannot provide this: not a Debian system, or
perl not installed.
"""
import os
import re
import shutil
import stat
import subprocess
import sys

STATUS = "/var/lib/dpkg/status"
INFO = "/var/lib/dpkg/info"
USRMERGE = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")
CONTROL_EXTRA = ("triggers", "shlibs", "symbols", "templates")


def unavailable(msg):
    print(f"debroot: {msg}", file=sys.stderr)
    sys.exit(3)


def read_status():
    """Package name -> (raw stanza, {field: value}) of installed packages."""
    pkgs = {}
    with open(STATUS, encoding="utf-8", errors="replace") as f:
        text = f.read()
    for raw in text.split("\n\n"):
        raw = raw.strip("\n")
        if not raw:
            continue
        fields, key = {}, None
        for line in raw.split("\n"):
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, val = line.split(":", 1)
                fields[key] = val.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            pkgs[fields["Package"]] = (raw, fields)
    return pkgs


def dep_alternatives(value):
    for clause in value.split(","):
        clause = clause.strip()
        if clause:
            yield [a.strip().split(" ")[0].split(":")[0] for a in clause.split("|")]


def closure(pkgs, roots):
    provides = {}
    for name, (_, f) in pkgs.items():
        for p in dep_alternatives(f.get("Provides", "")):
            provides.setdefault(p[0], name)
    seen, todo = set(), list(roots)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        f = pkgs[n][1]
        for alts in dep_alternatives(f.get("Pre-Depends", "") + "," + f.get("Depends", "")):
            for a in alts:
                if a in pkgs:
                    todo.append(a)
                    break
                if a in provides:
                    todo.append(provides[a])
                    break
    return seen


def info_files(name, fields):
    """The package's files in /var/lib/dpkg/info (name or name:arch)."""
    out = {}
    for base in (name, f"{name}:{fields.get('Architecture', '')}"):
        for fn in os.listdir(INFO):
            if fn.startswith(base + ".") and "." not in fn[len(base) + 1:]:
                out[fn[len(base) + 1:]] = os.path.join(INFO, fn)
    return out


def canonical(path):
    """path with the symbolic links of its parent directories resolved (so
    /bin/sh lands in usr/bin when /bin is a link to usr/bin)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def copy_paths(paths, dest):
    """Copies host paths (absolute) into dest, keeping type, mode, owner and
    times; missing paths (excluded at install time) are skipped."""
    n = 0
    for p in paths:
        if p in ("/", "/.") or not os.path.lexists(p):
            continue
        if p.strip("/") in USRMERGE and os.path.islink(p):
            continue  # made up front
        st = os.lstat(p)
        d = dest + canonical(p)
        if stat.S_ISDIR(st.st_mode):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, stat.S_IMODE(st.st_mode))
        else:
            os.makedirs(os.path.dirname(d), exist_ok=True)
            if os.path.lexists(d):
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(p), d)
            elif stat.S_ISREG(st.st_mode):
                shutil.copy2(p, d)
            else:
                continue
        os.lchown(d, st.st_uid, st.st_gid)
        n += 1
    return n


def listed(name, fields):
    lst = info_files(name, fields).get("list")
    if not lst:
        return []
    with open(lst, encoding="utf-8", errors="surrogateescape") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def make_rootfs(pkgs, base, root):
    for d in USRMERGE:
        if os.path.islink("/" + d):
            os.makedirs(os.path.join(root, "usr", d), exist_ok=True)
            os.symlink(os.readlink("/" + d), os.path.join(root, d))
    paths = 0
    for name in sorted(base):
        paths += copy_paths(listed(name, pkgs[name][1]), root)
    for d in ("tmp", "root", "proc", "sys", "dev", "run", "var/log", "var/lib/dpkg/updates",
              "var/lib/dpkg/triggers", "var/lib/dpkg/alternatives", "var/lib/dpkg/info"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    db = os.path.join(root, "var/lib/dpkg")
    with open(os.path.join(db, "status"), "w") as f:
        for name in sorted(base):
            f.write(pkgs[name][0] + "\n\n")
    for name in base:
        for _, src in info_files(name, pkgs[name][1]).items():
            shutil.copy2(src, os.path.join(db, "info", os.path.basename(src)))
    for fn in ("available", "diversions", "statoverride"):
        open(os.path.join(db, fn), "w").close()
    for fn in ("arch", "info/format"):
        if os.path.exists(os.path.join("/var/lib/dpkg", fn)):
            shutil.copy2(os.path.join("/var/lib/dpkg", fn), os.path.join(db, fn))
    # File trigger interests of the packages present only.
    src = "/var/lib/dpkg/triggers/File"
    if os.path.exists(src):
        with open(src) as f, open(os.path.join(db, "triggers/File"), "w") as out:
            for line in f:
                x = line.split()
                if len(x) == 2 and x[1].split(":")[0].split("/")[0] in base:
                    out.write(line)
    subprocess.run(["ldconfig", "-r", root], check=False, stderr=subprocess.DEVNULL)
    return paths


def make_deb(pkgs, name, out_dir, work):
    raw, fields = pkgs[name]
    stage = os.path.join(work, name)
    paths = copy_paths(listed(name, fields), stage)
    ctl = os.path.join(stage, "DEBIAN")
    os.makedirs(ctl)
    drop = {"Status", "Conffiles", "Config-Version"}
    key = None
    with open(os.path.join(ctl, "control"), "w") as f:
        for line in raw.split("\n"):
            m = re.match(r"^([A-Za-z0-9-]+):", line)
            if m:
                key = m.group(1)
            if key not in drop:
                f.write(line + "\n")
    conffiles = [c.split()[0] for c in fields.get("Conffiles", "").split("\n")
                 if c.strip() and "obsolete" not in c and os.path.exists(stage + c.split()[0])]
    if conffiles:
        with open(os.path.join(ctl, "conffiles"), "w") as f:
            f.write("".join(c + "\n" for c in conffiles))
    for kind, src in info_files(name, fields).items():
        if kind in SCRIPTS:
            shutil.copy2(src, os.path.join(ctl, kind))
            os.chmod(os.path.join(ctl, kind), 0o755)
        elif kind in CONTROL_EXTRA or kind == "md5sums":
            shutil.copy2(src, os.path.join(ctl, kind))
            os.chmod(os.path.join(ctl, kind), 0o644)
    deb = os.path.join(out_dir, f"{name}_{fields['Version'].split(':')[-1]}_{fields['Architecture']}.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-z1", "--build", stage, deb],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(stage)
    return paths


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    root, debs = (os.path.abspath(a) for a in sys.argv[1:])
    if not os.path.exists(STATUS) or not shutil.which("dpkg-deb"):
        unavailable("not a Debian system (no dpkg database or dpkg-deb)")
    pkgs = read_status()
    if "perl" not in pkgs:
        unavailable("perl is not installed on the host")
    trio = {"perl"}
    for alts in dep_alternatives(pkgs["perl"][1].get("Depends", "")):
        if re.match(r"^(perl-modules-|libperl)\d", alts[0]) and alts[0] in pkgs:
            trio.add(alts[0])
    if len(trio) != 3:
        unavailable(f"perl's packages not found: {sorted(trio)}")
    roots = {n for n, (_, f) in pkgs.items() if f.get("Essential") == "yes"} | {"dpkg", "libc-bin"}
    for n in trio:
        for alts in dep_alternatives(pkgs[n][1].get("Pre-Depends", "") + "," + pkgs[n][1].get("Depends", "")):
            roots.update(a for a in alts[:1] if a in pkgs and a not in trio)
    base = closure(pkgs, roots) - trio
    if base & trio:
        unavailable("perl is needed by the base packages")
    for d in (root, debs):
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
    paths = make_rootfs(pkgs, base, root)
    work = debs + ".work"
    shutil.rmtree(work, ignore_errors=True)
    deb_paths = sum(make_deb(pkgs, n, debs, work) for n in sorted(trio))
    shutil.rmtree(work, ignore_errors=True)
    print(f"packages={len(base)} paths={paths} debs={len(trio)} deb_paths={deb_paths}")


if __name__ == "__main__":
    main()
