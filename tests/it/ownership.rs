//! Ownership shifting for container engines: `uidmapping=`/`gidmapping=`
//! and `squash_to_*` (what containers-storage passes for `--uidmap`
//! containers).

use crate::common::*;

fn mount_with(st: &Stack, extra: &str) -> Mount {
    st.mount_strata_with(extra)
}

fn owner(p: &std::path::Path) -> (u32, u32) {
    let s = sys::lstat(p).unwrap();
    (s.st_uid, s.st_gid)
}

#[test]
fn uidmapping_shifts_ids_both_ways() {
    if is_rootless() {
        return skip(
            "uidmapping_shifts_ids_both_ways",
            "needs lower files owned by several ids",
        );
    }
    let spec = stack(
        vec![Layer::new()
            .file("root-file", "r")
            .file("user-file", "u")
            .owner(1000, 1001)
            .file("unmapped", "x")
            .owner(70000, 70000)],
        Layer::new(),
    );
    let st = spec.build(Markers::Kernel);
    {
        let _m = mount_with(&st, "uidmapping=0:100000:65536,gidmapping=0:200000:65536");
        assert_eq!(owner(&st.m("root-file")), (100000, 200000));
        assert_eq!(owner(&st.m("user-file")), (101000, 201001));
        assert_eq!(owner(&st.m("unmapped")), (65534, 65534), "overflow id");
        // chown through the mount writes the unshifted id to the upper.
        sys::lchown(&st.m("user-file"), 100005, 200006).unwrap();
        assert_eq!(owner(&st.m("user-file")), (100005, 200006));
        assert_eq!(owner(&st.u("user-file")), (5, 6));
        // An id outside the mapping cannot be written.
        assert_errno(
            sys::lchown(&st.m("root-file"), 5, 5),
            libc::EINVAL,
            "chown to unmapped id",
        );
    }
    // A remount without mapping shows the ids on disk.
    let _m = st.mount_strata();
    assert_eq!(owner(&st.m("user-file")), (5, 6));
    assert_eq!(owner(&st.m("root-file")), (0, 0));
}

#[test]
fn squash_shows_one_owner_and_chown_is_accepted() {
    if is_rootless() {
        return skip(
            "squash_shows_one_owner_and_chown_is_accepted",
            "needs lower files owned by several ids",
        );
    }
    let spec = stack(
        vec![Layer::new().file("a", "a").owner(7, 8).dir("d")],
        Layer::new(),
    );
    let st = spec.build(Markers::Kernel);
    let _m = mount_with(&st, "squash_to_uid=42,squash_to_gid=43");
    assert_eq!(owner(&st.m("a")), (42, 43));
    assert_eq!(owner(&st.m("d")), (42, 43));
    sys::lchown(&st.m("a"), 1, 1).unwrap();
    assert_eq!(owner(&st.m("a")), (42, 43));
    assert_eq!(owner(&st.l(0, "a")), (7, 8), "lower untouched");
    let _ = std::fs::remove_dir(st.m("d"));
}

#[test]
fn squash_to_root_and_bad_mappings() {
    let spec = stack(vec![Layer::new().file("a", "a")], Layer::new());
    let st = spec.build(Markers::Kernel);
    {
        let _m = mount_with(&st, "squash_to_root");
        assert_eq!(owner(&st.m("a")), (0, 0));
    }
    for bad in ["uidmapping=0:1", "gidmapping=x:y:z", "squash_to_uid=abc"] {
        let opts = format!("{},{bad}", st.overlay_opts());
        let out = std::process::Command::new(stratafs_bin())
            .args(["-f", "-o", &opts])
            .arg(&st.mnt)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{bad}: one line: {err}");
        assert!(
            err.contains(bad.split('=').next().unwrap()),
            "{bad}: names the option: {err}"
        );
    }
}

fn getxattr_str(p: &std::path::Path, name: &str) -> String {
    String::from_utf8(sys::lgetxattr(p, name).unwrap_or_default()).unwrap_or_default()
}

#[test]
fn override_stat_is_read_from_every_layer_and_written_to_the_upper() {
    // Layers written by containers-storage with force_mask: the real owner
    // and mode are in user.containers.override_stat, starting at the root.
    // (Under `unshare -Ur` only id 0 exists, so use it there.)
    let g = if is_rootless() { 0 } else { 42 };
    let spec = stack(
        vec![Layer::new()
            .file("bin/tool", "#!/bin/sh\n")
            .mode(0o700)
            .xattr("user.containers.override_stat", "0:0:04755")
            .file("etc/shadow", "x")
            .mode(0o700)
            .xattr("user.containers.override_stat", format!("0:{g}:0640"))
            .file("dev/null", "")
            .mode(0o700)
            .xattr("user.containers.override_stat", "0:0:0666:char-1-3")
            .file("etc/plain", "p")],
        Layer::new(),
    );
    let st = spec.build(Markers::Kernel);
    sys::lsetxattr(
        &st.l(0, ""),
        "user.containers.override_stat",
        b"0:0:0755",
        0,
    )
    .unwrap();
    let _m = mount_with(&st, "xattr_permissions=2");
    let tool = sys::lstat(&st.m("bin/tool")).unwrap();
    assert_eq!(
        (tool.st_uid, tool.st_gid, tool.st_mode & 0o7777),
        (0, 0, 0o4755)
    );
    let shadow = sys::lstat(&st.m("etc/shadow")).unwrap();
    assert_eq!((shadow.st_gid, shadow.st_mode & 0o7777), (g, 0o640));
    let null = sys::lstat(&st.m("dev/null")).unwrap();
    assert_eq!(null.st_mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!((sys::major(null.st_rdev), sys::minor(null.st_rdev)), (1, 3));
    // The xattr itself is an ordinary one: visible.
    assert_eq!(
        getxattr_str(&st.m("etc/shadow"), "user.containers.override_stat"),
        format!("0:{g}:0640")
    );

    // chmod/chown of a lower file: copied up, the xattr changes, the inode
    // keeps its mode.
    sys::chmod(&st.m("etc/shadow"), 0o600).unwrap();
    if !is_rootless() {
        sys::lchown(&st.m("etc/shadow"), 7, 8).unwrap();
    }
    let s2 = sys::lstat(&st.m("etc/shadow")).unwrap();
    assert_eq!(s2.st_mode & 0o7777, 0o600);
    let want = if is_rootless() {
        "0:0:0600"
    } else {
        "7:8:0600"
    };
    assert_eq!(
        getxattr_str(&st.u("etc/shadow"), "user.containers.override_stat"),
        want
    );
    assert_eq!(
        sys::lstat(&st.u("etc/shadow")).unwrap().st_mode & 0o7777,
        0o700
    );

    // A file without an override, copied up: gets one with its real owner.
    sys::chmod(&st.m("etc/plain"), 0o600).unwrap();
    let plain = getxattr_str(&st.u("etc/plain"), "user.containers.override_stat");
    assert!(plain.ends_with(":0600"), "{plain}");

    // New objects: fixed mode on disk, the requested one in the xattr;
    // device nodes become files.
    sys::mkdir(&st.m("newdir"), 0o700).unwrap();
    assert_eq!(sys::lstat(&st.m("newdir")).unwrap().st_mode & 0o7777, 0o700);
    assert_eq!(sys::lstat(&st.u("newdir")).unwrap().st_mode & 0o7777, 0o755);
    if is_rootless() {
        // The kernel refuses mknod of devices without CAP_MKNOD before the
        // request reaches the daemon.
        assert_errno(
            sys::mknod(&st.m("dev/zero"), libc::S_IFCHR | 0o666, sys::makedev(1, 5)),
            libc::EPERM,
            "mknod rootless",
        );
        return;
    }
    sys::mknod(&st.m("dev/zero"), libc::S_IFCHR | 0o666, sys::makedev(1, 5)).unwrap();
    let z = sys::lstat(&st.m("dev/zero")).unwrap();
    assert_eq!(z.st_mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(
        sys::lstat(&st.u("dev/zero")).unwrap().st_mode & libc::S_IFMT,
        libc::S_IFREG
    );
    assert!(
        getxattr_str(&st.u("dev/zero"), "user.containers.override_stat").ends_with(":char-1-5")
    );
}

#[test]
fn containers_mode_keeps_security_xattrs_in_user_namespace() {
    let spec = stack(vec![Layer::new().file("bin/ping", "elf")], Layer::new());
    let st = spec.build(Markers::Kernel);
    let _m = mount_with(&st, "xattr_permissions=2");
    sys::lsetxattr(&st.m("bin/ping"), "security.test", b"cap-blob", 0).unwrap();
    assert_eq!(
        sys::lgetxattr(&st.m("bin/ping"), "security.test").unwrap(),
        b"cap-blob"
    );
    // Stored where an unprivileged owner can write, shown under its name.
    assert_eq!(
        sys::lgetxattr(&st.u("bin/ping"), "user.containers.override_security.test").unwrap(),
        b"cap-blob"
    );
    let names = sys::llistxattr(&st.m("bin/ping")).unwrap();
    assert!(names.iter().any(|n| n == "security.test"), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("user.containers.override_security")),
        "{names:?}"
    );
    sys::lremovexattr(&st.m("bin/ping"), "security.test").unwrap();
    assert_errno(
        sys::lgetxattr(&st.m("bin/ping"), "security.test"),
        libc::ENODATA,
        "removed",
    );
}
