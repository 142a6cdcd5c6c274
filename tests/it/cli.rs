//! Command line contract: mounting in the foreground and as a daemon,
//! unmounting, escaped option values, and error handling.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn simple_stack() -> Stack {
    stack(
        vec![
            Layer::new().file("lower", "l"),
            Layer::new().file("below", "b"),
        ],
        Layer::new().file("upper", "u"),
    )
    .build(Markers::Kernel)
}

#[test]
fn foreground_mount_shows_fuse_stratafs_and_exits_0_after_fusermount_u() {
    let st = simple_stack();
    let m = st.mount_strata();
    let mi = mount_at(&st.mnt).expect("mountinfo entry");
    assert_eq!(
        mi.fstype,
        stratafs_fstype(),
        "fstype in /proc/self/mountinfo"
    );
    assert_eq!(list_dir(&st.mnt).unwrap(), ["below", "lower", "upper"]);
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&st.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fusermount3 -u: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = m.unmount();
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "daemon exit status after fusermount3 -u"
    );
    assert!(mount_at(&st.mnt).is_none(), "still mounted");
}

#[test]
fn foreground_mount_exits_0_after_umount() {
    let st = simple_stack();
    let m = st.mount_strata();
    assert_ok(sys::umount2(&st.mnt, 0), "umount");
    let status = m.unmount();
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "daemon exit status after umount"
    );
}

#[test]
fn daemon_mode_returns_once_the_mount_is_live() {
    let st = simple_stack();
    let r = run_with_timeout(
        Command::new(stratafs_bin())
            .arg("-o")
            .arg(st.overlay_opts())
            .arg(&st.mnt),
        Duration::from_secs(30),
    );
    let (status, _out, err) = r.expect("stratafs without -f did not return");
    // Unmount whatever happened, before asserting.
    let live = mount_at(&st.mnt);
    let listing = list_dir(&st.mnt);
    if live.is_some() {
        let _ = Command::new("fusermount3").arg("-u").arg(&st.mnt).status();
        if mount_at(&st.mnt).is_some() {
            let _ = sys::umount2(&st.mnt, libc::MNT_DETACH);
        }
    }
    assert_eq!(status.code(), Some(0), "parent exit status; stderr: {err}");
    let live = live.expect("mount not live when the parent exited");
    assert_eq!(live.fstype, stratafs_fstype());
    assert_eq!(listing.unwrap(), ["below", "lower", "upper"]);
}

#[test]
fn remount_of_the_same_dirs_shows_earlier_changes() {
    let st = simple_stack();
    {
        let _m = st.mount_strata();
        sys::write_file(&st.m("new"), b"n", 0o644).unwrap();
        sys::unlink(&st.m("lower")).unwrap();
    }
    for round in 0..3 {
        let _m = st.mount_strata();
        assert_eq!(
            list_dir(&st.mnt).unwrap(),
            ["below", "new", "upper"],
            "round {round}"
        );
    }
}

#[test]
fn paths_with_colon_comma_and_backslash_are_escaped() {
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let l1 = root.join("low:er,1\\x");
    let l2 = root.join("lower2");
    let upper = root.join("up,per");
    let work = root.join("wo:rk");
    let mnt = root.join("mnt");
    for d in [&l1, &l2, &upper, &work, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(l1.join("a"), "from l1").unwrap();
    std::fs::write(l2.join("a"), "from l2").unwrap();
    std::fs::write(l2.join("b"), "b").unwrap();
    let m = mount_stratafs(&[l1.clone(), l2.clone()], Some(&upper), Some(&work), &mnt);
    assert_eq!(read_string(&mnt.join("a")), "from l1");
    sys::write_file(&mnt.join("c"), b"c", 0o644).unwrap();
    assert_eq!(read_string(&upper.join("c")), "c");
    drop(m);
}

fn expect_mount_error(args: Vec<String>, mnt: &Path, root: &Path, must_name: &Path) {
    let before = tree_listing(root);
    let r = run_with_timeout(
        Command::new(stratafs_bin()).arg("-f").args(&args).arg(mnt),
        Duration::from_secs(20),
    );
    let mounted = mount_at(mnt).is_some();
    if mounted {
        let _ = Command::new("fusermount3").arg("-u").arg(mnt).status();
        if mount_at(mnt).is_some() {
            let _ = sys::umount2(mnt, libc::MNT_DETACH);
        }
    }
    let (status, _out, err) =
        r.unwrap_or_else(|| panic!("stratafs {args:?} did not exit (mounted: {mounted})"));
    assert!(!mounted, "stratafs {args:?} mounted despite the error");
    assert_eq!(
        status.code(),
        Some(1),
        "exit status for {args:?}; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line message, got {err:?}");
    let name = must_name.to_str().unwrap();
    assert!(
        lines[0].contains(name),
        "message {:?} does not name {name}",
        lines[0]
    );
    assert_eq!(
        tree_listing(root),
        before,
        "the failed mount created or changed files"
    );
}

fn bare_dirs() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    for d in ["l1", "l2", "upper", "work", "mnt"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    std::fs::write(root.join("l1/f"), "x").unwrap();
    (tmp, root)
}

#[test]
fn missing_lowerdir_is_an_error() {
    let (_tmp, root) = bare_dirs();
    let missing = root.join("no-such-lower");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        root.join("l1").display(),
        missing.display(),
        root.join("upper").display(),
        root.join("work").display()
    );
    expect_mount_error(vec!["-o".into(), opts], &root.join("mnt"), &root, &missing);
}

#[test]
fn workdir_on_another_filesystem_than_upperdir_is_an_error() {
    let (_tmp, root) = bare_dirs();
    let tfs = match TmpfsMount::new(&root.join("tmpfs")) {
        Ok(t) => t,
        Err(e) => {
            return skip(
                "workdir_on_another_filesystem_than_upperdir_is_an_error",
                &format!("cannot mount tmpfs: {}", errno_name(e)),
            )
        }
    };
    let work = tfs.path.join("work");
    std::fs::create_dir(&work).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        root.join("l1").display(),
        root.join("upper").display(),
        work.display()
    );
    expect_mount_error(vec!["-o".into(), opts], &root.join("mnt"), &root, &work);
}

#[test]
fn mountpoint_inside_a_layer_is_an_error() {
    let (_tmp, root) = bare_dirs();
    for (layer, opt) in [("l1", "lower"), ("upper", "upper")] {
        let mnt = root.join(layer).join(format!("mnt-in-{opt}"));
        std::fs::create_dir(&mnt).unwrap();
        let opts = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            root.join("l1").display(),
            root.join("l2").display(),
            root.join("upper").display(),
            root.join("work").display()
        );
        expect_mount_error(vec!["-o".into(), opts], &mnt, &root, &mnt);
    }
}

#[test]
fn read_only_mount_without_upperdir_creates_nothing() {
    let (_tmp, root) = bare_dirs();
    let before = tree_listing(&root);
    let m = mount_stratafs(
        &[root.join("l1"), root.join("l2")],
        None,
        None,
        &root.join("mnt"),
    );
    assert_eq!(read_string(&root.join("mnt/f")), "x");
    assert_errno(
        sys::write_file(&root.join("mnt/g"), b"", 0o644),
        libc::EROFS,
        "create",
    );
    drop(m);
    assert_eq!(tree_listing(&root), before);
}

/// Malformed command lines: exit status 1 and one line on stderr, before
/// anything is touched.
#[test]
fn binary_rejects_malformed_command_lines_with_one_line() {
    let cases: &[&[&str]] = &[
        &["-o", "lowerdir=", "/nonexistent-mnt"],
        &["-o", "upperdir=/u,workdir=/w", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a::/b", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,upperdir=/u", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,workdir=/w", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,timeout=soon", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,timeout=1\n2", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,threads=0", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,xattr_permissions=7", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,fsync=maybe", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,squash_to_uid=-1", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a,uidmapping=0:1", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a\n:\n:", "/nonexistent-mnt"],
        &["-o", "lowerdir", "/nonexistent-mnt"],
        &["-o", "lowerdir=/a", "-o", "upperdir=", "/nonexistent-mnt"],
        &["-f", "-o", "nodev,,noexec", "/nonexistent-mnt"],
    ];
    for args in cases {
        let (status, out, err) = run_with_timeout(
            Command::new(stratafs_bin()).args(*args),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("stratafs {args:?} hung"));
        assert_eq!(status.code(), Some(1), "stratafs {args:?}: stderr {err:?}");
        assert!(out.is_empty(), "stratafs {args:?}: stdout {out:?}");
        assert_eq!(
            err.lines().count(),
            1,
            "stratafs {args:?}: stderr is not one line: {err:?}"
        );
        assert!(err.starts_with("stratafs: "), "stratafs {args:?}: {err:?}");
        assert!(err.trim().len() > "stratafs:".len(), "{err:?}");
    }
}

/// Permissions are always checked by the kernel (`default_permissions`):
/// the mount carries it, and there is no option that turns it off.
#[test]
fn default_permissions_is_always_on() {
    let st = simple_stack();
    let m = st.mount_strata();
    let mi = mount_at(&st.mnt).expect("mountinfo entry");
    assert!(
        mi.super_opts.split(',').any(|o| o == "default_permissions"),
        "super options {:?}",
        mi.super_opts
    );
    drop(m);
    let (status, _, err) = run_with_timeout(
        Command::new(stratafs_bin()).args([
            "-o",
            "lowerdir=/nonexistent-lower,nodefault_permissions",
            "/nonexistent-mnt",
        ]),
        Duration::from_secs(30),
    )
    .expect("stratafs hung");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("warning: unknown option nodefault_permissions ignored"),
        "{err}"
    );
}
