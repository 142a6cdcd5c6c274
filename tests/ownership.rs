//! Ownership shifting for container engines: `uidmapping=`/`gidmapping=`
//! and `squash_to_*` (what containers-storage passes for `--uidmap`
//! containers).

mod common;

use common::*;

fn mount_with(st: &Stack, extra: &str) -> Mount {
    let opts = format!(
        "{},{extra}",
        overlay_opts(&st.lowers, st.upper.as_deref(), st.work.as_deref())
    );
    spawn_stratafs(&["-f".to_string(), "-o".to_string(), opts], &st.mnt)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn owner(p: &std::path::Path) -> (u32, u32) {
    let s = sys::lstat(p).unwrap();
    (s.st_uid, s.st_gid)
}

#[test]
fn uidmapping_shifts_ids_both_ways() {
    if skip_if_rootless(
        "uidmapping_shifts_ids_both_ways",
        "needs lower files owned by several ids",
    ) {
        return;
    }
    let spec = StackSpec::new(
        vec![LayerSpec::new()
            .file("root-file", "r")
            .file("user-file", "u")
            .owner(1000, 1001)
            .file("unmapped", "x")
            .owner(70000, 70000)],
        LayerSpec::new(),
    );
    let st = spec.build(Format::Kernel);
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
    if skip_if_rootless(
        "squash_shows_one_owner_and_chown_is_accepted",
        "needs lower files owned by several ids",
    ) {
        return;
    }
    let spec = StackSpec::new(
        vec![LayerSpec::new().file("a", "a").owner(7, 8).dir("d")],
        LayerSpec::new(),
    );
    let st = spec.build(Format::Kernel);
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
    let spec = StackSpec::new(vec![LayerSpec::new().file("a", "a")], LayerSpec::new());
    let st = spec.build(Format::Kernel);
    {
        let _m = mount_with(&st, "squash_to_root");
        assert_eq!(owner(&st.m("a")), (0, 0));
    }
    for bad in ["uidmapping=0:1", "gidmapping=x:y:z", "squash_to_uid=abc"] {
        let opts = format!(
            "{},{bad}",
            overlay_opts(&st.lowers, st.upper.as_deref(), st.work.as_deref())
        );
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
