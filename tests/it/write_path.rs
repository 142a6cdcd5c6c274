//! Copy-up, namespace operations, attributes, xattrs/ACLs and open-unlinked
//! files. Every test checks concrete outcomes on stratafs and, where the
//! kernel overlay defines the behaviour, that it agrees on the same stack.

use crate::common::*;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

const D_TIMES: (i64, i64) = (1_000_000_000, 1_100_000_000);
const F_TIMES: (i64, i64) = (1_200_000_000, 1_300_000_000);

fn copy_up_spec() -> TempStackBuilder {
    let o = other_id();
    stack(
        vec![
            Layer::new()
                .dir("d")
                .owner(o, o)
                .mode(0o750)
                .xattr("user.d", "dir-xattr")
                .times(D_TIMES.0, D_TIMES.1)
                .file("d/f", "lower data")
                .owner(o, o)
                .mode(0o4755)
                .xattr("user.f", "file-xattr")
                .xattr("user.g", "second")
                .times(F_TIMES.0, F_TIMES.1)
                .file("d/sg", "sgid")
                .mode(0o2755)
                .times(F_TIMES.0, F_TIMES.1),
            Layer::new().file("d/other", "o"),
        ],
        Layer::new(),
    )
}

struct Trigger {
    name: &'static str,
    op: fn(&Path) -> Result<(), i32>,
    /// Expected mode / owner / extra xattr of d/f after the op.
    mode: u32,
    owner: Option<(u32, u32)>,
    changes_mtime: bool,
    xattr: Option<(&'static str, &'static str)>,
    nlink: u64,
}

#[test]
fn copy_up_keeps_owner_mode_times_xattrs_and_parent_metadata() {
    let o = other_id();
    let triggers = [
        Trigger {
            name: "open O_WRONLY",
            op: |r| sys::open(&r.join("d/f"), libc::O_WRONLY, 0).map(drop),
            mode: 0o4755,
            owner: None,
            changes_mtime: false,
            xattr: None,
            nlink: 1,
        },
        Trigger {
            name: "truncate",
            op: |r| sys::truncate(&r.join("d/f"), 5),
            // Inside a user namespace the kernel drops set-id bits on
            // truncate (no CAP_FSETID over the host filesystem), also on a
            // plain filesystem.
            mode: if is_rootless() { 0o755 } else { 0o4755 },
            owner: None,
            changes_mtime: true,
            xattr: None,
            nlink: 1,
        },
        Trigger {
            name: "chmod",
            op: |r| sys::chmod(&r.join("d/f"), 0o6750),
            mode: 0o6750,
            owner: None,
            changes_mtime: false,
            xattr: None,
            nlink: 1,
        },
        Trigger {
            name: "chown",
            op: |r| sys::lchown(&r.join("d/f"), 0, 0),
            // chown clears set-id bits on regular files, also for root.
            mode: 0o755,
            owner: Some((0, 0)),
            changes_mtime: false,
            xattr: None,
            nlink: 1,
        },
        Trigger {
            name: "utimes",
            op: |r| sys::lutimes(&r.join("d/f"), (1_400_000_000, 0), (1_400_000_001, 0)),
            mode: 0o4755,
            owner: None,
            changes_mtime: false,
            xattr: None,
            nlink: 1,
        },
        Trigger {
            name: "setxattr",
            op: |r| sys::lsetxattr(&r.join("d/f"), "user.new", b"v", 0),
            mode: 0o4755,
            owner: None,
            changes_mtime: false,
            xattr: Some(("user.new", "v")),
            nlink: 1,
        },
        Trigger {
            name: "link",
            op: |r| sys::link(&r.join("d/f"), &r.join("linked")),
            mode: 0o4755,
            owner: None,
            changes_mtime: false,
            xattr: None,
            nlink: 2,
        },
    ];
    for t in &triggers {
        if t.name == "open O_WRONLY" && no_open_everywhere() {
            // Checked on its own (no_open::an_open_for_writing_...).
            skip(
                "copy_up_keeps_owner_mode_times_xattrs_and_parent_metadata",
                "trigger open O_WRONLY: with no_open the copy is made at the first write",
            );
            continue;
        }
        let p = Pair::new(&copy_up_spec());
        let (a, b) = p.both(t.op);
        assert_eq!(a, Ok(()), "{}: stratafs", t.name);
        assert_eq!(b, Ok(()), "{}: kernel", t.name);
        let up = snapshot_upper(p.s.upper());
        let d = meta_of(&up, "d");
        assert_eq!(d.kind, Kind::Dir, "{}: upper d", t.name);
        assert_eq!(d.mode, 0o750, "{}: upper d mode", t.name);
        assert_eq!((d.uid, d.gid), (o, o), "{}: upper d owner", t.name);
        assert_eq!(
            d.xattrs.get("user.d").map(|v| v.as_slice()),
            Some(&b"dir-xattr"[..]),
            "{}: upper d xattr",
            t.name
        );
        assert_eq!(d.mtime.0, D_TIMES.1, "{}: upper d mtime", t.name);
        let f = meta_of(&up, "d/f");
        assert_eq!(f.kind, Kind::File, "{}", t.name);
        assert_eq!(f.mode, t.mode, "{}: upper d/f mode {:o}", t.name, f.mode);
        assert_eq!(
            (f.uid, f.gid),
            t.owner.unwrap_or((o, o)),
            "{}: upper d/f owner",
            t.name
        );
        assert_eq!(
            f.xattrs.get("user.f").map(|v| v.as_slice()),
            Some(&b"file-xattr"[..]),
            "{}",
            t.name
        );
        assert_eq!(
            f.xattrs.get("user.g").map(|v| v.as_slice()),
            Some(&b"second"[..]),
            "{}",
            t.name
        );
        if let Some((k, v)) = t.xattr {
            assert_eq!(
                f.xattrs.get(k).map(|x| x.as_slice()),
                Some(v.as_bytes()),
                "{}",
                t.name
            );
        }
        assert_eq!(f.nlink, t.nlink, "{}: nlink", t.name);
        let expect_content: &[u8] = if t.name == "truncate" {
            b"lower"
        } else {
            b"lower data"
        };
        assert_eq!(
            sys::read_all(&p.s.u("d/f")).unwrap(),
            expect_content,
            "{}: upper content",
            t.name
        );
        if t.name == "utimes" {
            assert_eq!(f.mtime.0, 1_400_000_001, "{}: mtime", t.name);
        } else if !t.changes_mtime {
            assert_eq!(f.mtime.0, F_TIMES.1, "{}: copy-up must keep mtime", t.name);
        }
        assert!(
            !up.contains_key("d/sg"),
            "{}: unrelated d/sg copied up",
            t.name
        );
        assert!(
            !up.contains_key("d/other"),
            "{}: unrelated d/other copied up",
            t.name
        );
        // The lower layer is never touched.
        assert_eq!(sys::read_all(&p.s.l(0, "d/f")).unwrap(), b"lower data");
        assert_eq!(
            sys::lstat(&p.s.l(0, "d/f")).unwrap().st_mode & 0o7777,
            0o4755
        );
        let mut opts = CmpOpts::with_dir_nlink();
        opts.mtime_paths.insert("d".into());
        if !t.changes_mtime {
            opts.mtime_paths.insert("d/f".into());
        }
        p.assert_same_upper_opts(&opts);
        p.assert_same_view_opts(&opts);
        p.assert_work_clean();
    }
}

#[test]
fn copy_up_of_a_large_file_copies_all_data_once() {
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let spec = stack(vec![Layer::new().file("big", &data)], Layer::new());
    let st = spec.build(Markers::Kernel);
    let m = st.mount_strata();
    let fd = sys::open(&st.m("big"), libc::O_RDWR, 0).unwrap();
    assert_eq!(sys::pwrite(&fd, b"PATCH", 1_000_000).unwrap(), 5);
    drop(fd);
    let mut want = data.clone();
    want[1_000_000..1_000_005].copy_from_slice(b"PATCH");
    assert!(
        sys::read_all(&st.m("big")).unwrap() == want,
        "merged content"
    );
    assert!(
        sys::read_all(&st.u("big")).unwrap() == want,
        "upper content"
    );
    assert!(
        sys::read_all(&st.l(0, "big")).unwrap() == data,
        "lower changed"
    );
    assert_work_clean(&st);
    drop(m);
    assert_work_clean(&st);
}

#[test]
fn deleting_lower_entries_leaves_whiteouts_and_copies_no_data() {
    let spec = stack(
        vec![
            Layer::new()
                .file("d/f", "data")
                .dir("d/empty")
                .file("top", "t")
                .symlink("d/s", "f"),
            Layer::new().file("d/g", "g"),
        ],
        Layer::new(),
    );
    let p = Pair::new(&spec);
    assert_eq!(
        p.same("unlink d/f", |r| sys::unlink(&r.join("d/f"))),
        Ok(())
    );
    assert_eq!(
        p.same("unlink d/s", |r| sys::unlink(&r.join("d/s"))),
        Ok(())
    );
    assert_eq!(
        p.same("rmdir d/empty", |r| sys::rmdir(&r.join("d/empty"))),
        Ok(())
    );
    assert_eq!(
        p.same("unlink top", |r| sys::unlink(&r.join("top"))),
        Ok(())
    );
    let up = snapshot_upper(p.s.upper());
    for w in ["d/f", "d/s", "d/empty", "top"] {
        assert_eq!(
            up.get(w),
            Some(&Entry::Whiteout),
            "{w} must be a whiteout in the upper:\n{}",
            fmt_snapshot(&up)
        );
    }
    let files: Vec<_> = up
        .iter()
        .filter(|(_, e)| e.meta().is_some_and(|m| m.kind == Kind::File))
        .collect();
    assert!(files.is_empty(), "data was copied up: {files:?}");
    assert_eq!(list_dir(&p.s.m("d")).unwrap(), ["g"]);
    assert_eq!(read_string(&p.s.l(0, "d/f")), "data", "lower changed");
    p.assert_same_upper();
    p.assert_same_view();
    p.assert_work_clean();
}

#[test]
fn rmdir_of_a_non_empty_merged_dir_fails_and_succeeds_once_emptied() {
    let spec = stack(
        vec![
            Layer::new().file("d/a", "a"),
            Layer::new().file("d/b", "b").dir("d/sub"),
        ],
        Layer::new().file("d/c", "c"),
    );
    let p = Pair::new(&spec);
    assert_eq!(
        p.same("rmdir d", |r| sys::rmdir(&r.join("d"))),
        Err(libc::ENOTEMPTY)
    );
    for e in ["d/a", "d/b", "d/c"] {
        assert_eq!(p.same(e, |r| sys::unlink(&r.join(e))), Ok(()));
    }
    assert_eq!(
        p.same("rmdir d (sub left)", |r| sys::rmdir(&r.join("d"))),
        Err(libc::ENOTEMPTY)
    );
    assert_eq!(
        p.same("rmdir d/sub", |r| sys::rmdir(&r.join("d/sub"))),
        Ok(())
    );
    assert_eq!(p.same("rmdir d", |r| sys::rmdir(&r.join("d"))), Ok(()));
    assert_errno(sys::lstat(&p.s.m("d")), libc::ENOENT, "d after rmdir");
    assert_eq!(snapshot_upper(p.s.upper()).get("d"), Some(&Entry::Whiteout));
    p.assert_same_upper();
    p.assert_same_view();
}

#[test]
fn mkdir_over_a_deleted_lower_dir_is_opaque() {
    let spec = stack(
        vec![Layer::new().file("d/x", "x").file("d/y/z", "z")],
        Layer::new(),
    );
    let p = Pair::new(&spec);
    assert_eq!(
        p.same("rm -r d", |r| {
            sys::unlink(&r.join("d/x"))?;
            sys::unlink(&r.join("d/y/z"))?;
            sys::rmdir(&r.join("d/y"))?;
            sys::rmdir(&r.join("d"))
        }),
        Ok(())
    );
    assert_eq!(
        p.same("mkdir d", |r| sys::mkdir(&r.join("d"), 0o711)),
        Ok(())
    );
    assert_eq!(list_dir(&p.s.m("d")).unwrap(), Vec::<String>::new());
    let up = snapshot_upper(p.s.upper());
    let d = meta_of(&up, "d");
    assert!(
        d.opaque,
        "new d must be opaque in the upper:\n{}",
        fmt_snapshot(&up)
    );
    assert_eq!(d.mode, 0o711 & !umask());
    p.assert_same_upper();
    p.assert_same_view();
    let Pair { sm, s, .. } = p;
    drop(sm);
    let _m = s.mount_strata();
    assert_eq!(
        list_dir(&s.m("d")).unwrap(),
        Vec::<String>::new(),
        "after remount"
    );
}

fn umask() -> u32 {
    let m = unsafe { libc::umask(0o022) };
    unsafe { libc::umask(m) };
    m
}

#[test]
fn create_over_a_deleted_lower_file_does_not_show_lower_data() {
    let spec = stack(vec![Layer::new().file("f", "old lower data")], Layer::new());
    let p = Pair::new(&spec);
    assert_eq!(p.same("unlink", |r| sys::unlink(&r.join("f"))), Ok(()));
    assert_eq!(
        p.same("create", |r| {
            let fd = sys::open(&r.join("f"), libc::O_CREAT | libc::O_WRONLY, 0o600)?;
            sys::write(&fd, b"new")
        }),
        Ok(3)
    );
    assert_eq!(read_string(&p.s.m("f")), "new");
    let up = snapshot_upper(p.s.upper());
    assert_eq!(meta_of(&up, "f").kind, Kind::File);
    assert_eq!(meta_of(&up, "f").mode, 0o600 & !umask());
    p.assert_same_upper();
    p.assert_same_view();
}

type Step = (
    &'static str,
    fn(&Path) -> Result<String, i32>,
    Result<&'static str, i32>,
);

fn ok<T>(r: Result<T, i32>) -> Result<String, i32> {
    r.map(|_| String::new())
}

fn nlink(p: &Path) -> Result<String, i32> {
    sys::lstat(p).map(|s| s.st_nlink.to_string())
}

#[test]
fn namespace_operations_match_the_kernel_overlay() {
    use sys::{RENAME_EXCHANGE as EXCHANGE, RENAME_NOREPLACE as NOREPLACE};
    let spec = stack(
        vec![
            Layer::new()
                .file("lf", "lower file")
                .file("lf2", "lower file 2")
                .file("lg", "lower g")
                .dir("ldir")
                .file("ldir/x", "x")
                .dir("lempty")
                .symlink("lsym", "lf"),
            Layer::new()
                .file("ldir/y", "y")
                .dir("merged")
                .file("merged/m", "m"),
        ],
        Layer::new()
            .file("uf", "upper file")
            .dir("udir")
            .file("udir/in", "in")
            .dir("merged"),
    );
    let steps: Vec<Step> = vec![
        (
            "create new",
            |r| ok(sys::write_file(&r.join("new"), b"n", 0o640)),
            Ok(""),
        ),
        (
            "create excl existing lower",
            |r| {
                ok(sys::open(
                    &r.join("lf"),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    0o644,
                ))
            },
            Err(libc::EEXIST),
        ),
        ("mkdir", |r| ok(sys::mkdir(&r.join("nd"), 0o750)), Ok("")),
        (
            "mkdir existing lower",
            |r| ok(sys::mkdir(&r.join("ldir"), 0o755)),
            Err(libc::EEXIST),
        ),
        (
            "mkfifo",
            |r| ok(sys::mkfifo(&r.join("fifo"), 0o600)),
            Ok(""),
        ),
        (
            "symlink",
            |r| ok(sys::symlink("lf", &r.join("sym"))),
            Ok(""),
        ),
        (
            "readlink new",
            |r| sys::readlink(&r.join("sym")).map(|t| String::from_utf8_lossy(&t).into_owned()),
            Ok("lf"),
        ),
        (
            "readlink lower",
            |r| sys::readlink(&r.join("lsym")).map(|t| String::from_utf8_lossy(&t).into_owned()),
            Ok("lf"),
        ),
        (
            "readlink on file",
            |r| ok(sys::readlink(&r.join("lf"))),
            Err(libc::EINVAL),
        ),
        (
            "link lower file",
            |r| ok(sys::link(&r.join("lf"), &r.join("lf-link"))),
            Ok(""),
        ),
        ("nlink after link", |r| nlink(&r.join("lf")), Ok("2")),
        (
            "link over existing",
            |r| ok(sys::link(&r.join("uf"), &r.join("lg"))),
            Err(libc::EEXIST),
        ),
        (
            "link a dir",
            |r| ok(sys::link(&r.join("udir"), &r.join("udir2"))),
            Err(libc::EPERM),
        ),
        (
            "unlink one link",
            |r| ok(sys::unlink(&r.join("lf-link"))),
            Ok(""),
        ),
        ("nlink after unlink", |r| nlink(&r.join("lf")), Ok("1")),
        (
            "unlink a dir",
            |r| ok(sys::unlink(&r.join("ldir"))),
            Err(libc::EISDIR),
        ),
        (
            "rmdir a file",
            |r| ok(sys::rmdir(&r.join("lf"))),
            Err(libc::ENOTDIR),
        ),
        (
            "rmdir missing",
            |r| ok(sys::rmdir(&r.join("missing"))),
            Err(libc::ENOENT),
        ),
        (
            "rmdir lower empty",
            |r| ok(sys::rmdir(&r.join("lempty"))),
            Ok(""),
        ),
        (
            "rename lower file",
            |r| ok(sys::rename(&r.join("lf2"), &r.join("moved"))),
            Ok(""),
        ),
        (
            "rename upper file over lower file",
            |r| ok(sys::rename(&r.join("uf"), &r.join("lg"))),
            Ok(""),
        ),
        (
            "read renamed",
            |r| sys::read_all(&r.join("lg")).map(|v| String::from_utf8_lossy(&v).into_owned()),
            Ok("upper file"),
        ),
        (
            "noreplace onto lower",
            |r| ok(sys::rename2(&r.join("new"), &r.join("lf"), NOREPLACE)),
            Err(libc::EEXIST),
        ),
        (
            "noreplace onto free name",
            |r| ok(sys::rename2(&r.join("new"), &r.join("new2"), NOREPLACE)),
            Ok(""),
        ),
        (
            "noreplace onto deleted lower name",
            |r| ok(sys::rename2(&r.join("new2"), &r.join("lf2"), NOREPLACE)),
            Ok(""),
        ),
        (
            "exchange lower and upper file",
            |r| ok(sys::rename2(&r.join("lf"), &r.join("lf2"), EXCHANGE)),
            Ok(""),
        ),
        (
            "read after exchange",
            |r| sys::read_all(&r.join("lf")).map(|v| String::from_utf8_lossy(&v).into_owned()),
            Ok("n"),
        ),
        (
            "exchange with missing",
            |r| ok(sys::rename2(&r.join("lf"), &r.join("nope"), EXCHANGE)),
            Err(libc::ENOENT),
        ),
        (
            "exchange file and upper dir",
            |r| ok(sys::rename2(&r.join("lf"), &r.join("nd"), EXCHANGE)),
            Ok(""),
        ),
        (
            "rename lower dir",
            |r| ok(sys::rename(&r.join("ldir"), &r.join("ldir2"))),
            Err(libc::EXDEV),
        ),
        (
            "rename merged dir",
            |r| ok(sys::rename(&r.join("merged"), &r.join("merged2"))),
            Err(libc::EXDEV),
        ),
        (
            "rename upper-only dir",
            |r| ok(sys::rename(&r.join("udir"), &r.join("udir2"))),
            Ok(""),
        ),
        (
            "read in renamed dir",
            |r| {
                sys::read_all(&r.join("udir2/in")).map(|v| String::from_utf8_lossy(&v).into_owned())
            },
            Ok("in"),
        ),
        (
            "rename dir over non-empty dir",
            |r| ok(sys::rename(&r.join("udir2"), &r.join("ldir"))),
            Err(libc::ENOTEMPTY),
        ),
        (
            "rename file over dir",
            |r| ok(sys::rename(&r.join("lg"), &r.join("udir2"))),
            Err(libc::EISDIR),
        ),
        (
            "rename dir over file",
            |r| ok(sys::rename(&r.join("udir2"), &r.join("lg"))),
            Err(libc::ENOTDIR),
        ),
        (
            "mkdir then rename over deleted lower dir",
            |r| {
                sys::mkdir(&r.join("fresh"), 0o755)?;
                ok(sys::rename(&r.join("fresh"), &r.join("lempty")))
            },
            Ok(""),
        ),
        (
            "rename to .wh-free name in subdir",
            |r| ok(sys::rename(&r.join("lsym"), &r.join("udir2/lsym"))),
            Ok(""),
        ),
    ];
    let p = Pair::new(&spec);
    for (name, op, want) in &steps {
        let (a, b) = p.both(op);
        let want = want.map(|s| s.to_string());
        assert_eq!(b, want, "{name}: kernel overlay result (test expectation)");
        assert_eq!(a, want, "{name}: stratafs result");
    }
    p.assert_same_view();
    p.assert_same_upper();
    p.assert_work_clean();
    let up = snapshot_upper(p.s.upper());
    assert!(
        meta_of(&up, "lempty").opaque,
        "dir renamed over a deleted lower dir must be opaque"
    );
    assert_eq!(up.get("ldir"), None, "failed rename must not copy up ldir");
}

#[test]
fn setattr_truncate_fallocate_copy_file_range_seek_and_fsync() {
    let spec = stack(
        vec![Layer::new()
            .file("src", "0123456789abcdef")
            .file("dst", "........................")],
        Layer::new(),
    );
    let p = Pair::new(&spec);
    let run = |r: &Path| -> Vec<Result<i64, i32>> {
        let mut out = Vec::new();
        out.push(sys::truncate(&r.join("src"), 1 << 20).map(|_| 0));
        out.push(sys::lstat(&r.join("src")).map(|s| s.st_size));
        out.push(sys::truncate(&r.join("src"), 10).map(|_| 0));
        let fd = match sys::open(&r.join("dst"), libc::O_RDWR, 0) {
            Ok(fd) => fd,
            Err(e) => return vec![Err(e)],
        };
        let raw = fd.as_raw_fd();
        out.push(cvt(unsafe { libc::fallocate(raw, 0, 0, 8192) }).map(|_| 0));
        out.push(sys::fstat(&fd).map(|s| s.st_size));
        out.push(
            cvt(unsafe {
                libc::fallocate(
                    raw,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    4,
                )
            })
            .map(|_| 0),
        );
        out.push(sys::pread(&fd, 6, 0).map(|v| v.iter().map(|b| *b as i64).sum()));
        let src = sys::open(&r.join("src"), libc::O_RDONLY, 0).unwrap();
        let mut off_in: i64 = 2;
        let mut off_out: i64 = 100;
        out.push(
            cvt(unsafe {
                libc::copy_file_range(src.as_raw_fd(), &mut off_in, raw, &mut off_out, 5, 0)
            })
            .map(|n| n as i64),
        );
        out.push(sys::pread(&fd, 5, 100).map(|v| {
            i64::from_le_bytes({
                let mut b = [0u8; 8];
                b[..5].copy_from_slice(&v);
                b
            })
        }));
        // Sparse file: data at 1 MiB only.
        let sp = sys::open(&r.join("sparse"), libc::O_RDWR | libc::O_CREAT, 0o644).unwrap();
        out.push(sys::pwrite(&sp, b"data", 1 << 20).map(|n| n as i64));
        out.push(cvt(unsafe {
            libc::lseek(sp.as_raw_fd(), 0, libc::SEEK_DATA)
        }));
        out.push(cvt(unsafe {
            libc::lseek(sp.as_raw_fd(), 0, libc::SEEK_HOLE)
        }));
        out.push(cvt(unsafe {
            libc::lseek(sp.as_raw_fd(), (1 << 20) + 10, libc::SEEK_DATA)
        }));
        out.push(cvt(unsafe { libc::fsync(raw) }).map(|_| 0));
        out.push(cvt(unsafe { libc::fdatasync(raw) }).map(|_| 0));
        out.push(cvt(unsafe { libc::fsync(sp.as_raw_fd()) }).map(|_| 0));
        out.push(sys::chmod(&r.join("dst"), 0o600).map(|_| 0));
        out.push(sys::lutimes(&r.join("dst"), (5, 0), (6, 7)).map(|_| 0));
        out.push(sys::lstat(&r.join("dst")).map(|s| s.st_mtime * 1000 + s.st_mtime_nsec));
        out
    };
    let (a, b) = p.both(run);
    assert_eq!(b[0], Ok(0));
    assert_eq!(b[1], Ok(1 << 20), "kernel size after truncate up");
    assert_eq!(b[4], Ok(8192), "kernel size after fallocate");
    assert_eq!(b[6], Ok(b'.' as i64 * 2), "punched hole reads zeros");
    assert_eq!(b[7], Ok(5), "copy_file_range copied 5 bytes");
    assert_eq!(b[10], Ok(1 << 20), "SEEK_DATA finds the data");
    assert_eq!(b[12], Err(libc::ENXIO), "SEEK_DATA past the data");
    assert_eq!(a, b, "stratafs (left) vs kernel overlay (right)");
    assert_eq!(read_string(&p.s.m("src")), "0123456789");
    let mut opts = CmpOpts::with_dir_nlink();
    opts.mtime_paths.insert("dst".into());
    p.assert_same_view_opts(&opts);
    p.assert_same_upper_opts(&opts);
}

#[test]
fn xattr_get_set_list_remove_match_the_kernel_overlay() {
    let spec = stack(
        vec![Layer::new()
            .file("f", "x")
            .xattr("user.a", "lower-a")
            .dir("d")
            .xattr("user.dd", "1")
            .file("bare", "no xattrs")
            .dir("bared")],
        Layer::new(),
    );
    let p = Pair::new(&spec);
    type XStep = (
        &'static str,
        fn(&Path) -> Result<String, i32>,
        Result<&'static str, i32>,
    );
    let steps: Vec<XStep> = vec![
        (
            "get lower",
            |r| sys::lgetxattr(&r.join("f"), "user.a").map(|v| String::from_utf8(v).unwrap()),
            Ok("lower-a"),
        ),
        (
            "size query",
            |r| sys::lgetxattr_sized(&r.join("f"), "user.a", 0).map(|n| n.to_string()),
            Ok("7"),
        ),
        (
            "small buffer",
            |r| sys::lgetxattr_sized(&r.join("f"), "user.a", 3).map(|n| n.to_string()),
            Err(libc::ERANGE),
        ),
        (
            "get missing",
            |r| sys::lgetxattr(&r.join("f"), "user.none").map(|_| String::new()),
            Err(libc::ENODATA),
        ),
        // A lower file and dir without any xattrs (remembered as such
        // until they are copied up).
        (
            "get on bare lower",
            |r| sys::lgetxattr(&r.join("bare"), "user.x").map(|_| String::new()),
            Err(libc::ENODATA),
        ),
        (
            "list bare lower",
            |r| sys::llistxattr(&r.join("bare")).map(|v| v.join(",")),
            Ok(""),
        ),
        (
            "set on bare lower",
            |r| ok(sys::lsetxattr(&r.join("bare"), "user.x", b"xv", 0)),
            Ok(""),
        ),
        (
            "get after copy-up",
            |r| sys::lgetxattr(&r.join("bare"), "user.x").map(|v| String::from_utf8(v).unwrap()),
            Ok("xv"),
        ),
        (
            "list after copy-up",
            |r| sys::llistxattr(&r.join("bare")).map(|v| v.join(",")),
            Ok("user.x"),
        ),
        (
            "get on bare lower dir",
            |r| sys::lgetxattr(&r.join("bared"), "user.y").map(|_| String::new()),
            Err(libc::ENODATA),
        ),
        (
            "set on bare lower dir",
            |r| ok(sys::lsetxattr(&r.join("bared"), "user.y", b"yv", 0)),
            Ok(""),
        ),
        (
            "get on dir after copy-up",
            |r| sys::lgetxattr(&r.join("bared"), "user.y").map(|v| String::from_utf8(v).unwrap()),
            Ok("yv"),
        ),
        // A file made through the mount: its upper copy's xattrs are
        // remembered once asked, and forgotten at every change.
        (
            "get on a new file",
            |r| {
                sys::write_file(&r.join("new"), b"n", 0o644)?;
                sys::lgetxattr(&r.join("new"), "security.capability").map(|_| String::new())
            },
            Err(libc::ENODATA),
        ),
        (
            "list a new file",
            |r| sys::llistxattr(&r.join("new")).map(|v| v.join(",")),
            Ok(""),
        ),
        (
            "set on the new file",
            |r| ok(sys::lsetxattr(&r.join("new"), "user.n", b"nv", 0)),
            Ok(""),
        ),
        (
            "get it back",
            |r| sys::lgetxattr(&r.join("new"), "user.n").map(|v| String::from_utf8(v).unwrap()),
            Ok("nv"),
        ),
        (
            "list it",
            |r| sys::llistxattr(&r.join("new")).map(|v| v.join(",")),
            Ok("user.n"),
        ),
        (
            "remove it",
            |r| ok(sys::lremovexattr(&r.join("new"), "user.n")),
            Ok(""),
        ),
        (
            "get after remove",
            |r| sys::lgetxattr(&r.join("new"), "user.n").map(|_| String::new()),
            Err(libc::ENODATA),
        ),
        (
            "set once more",
            |r| ok(sys::lsetxattr(&r.join("new"), "user.m", b"mv", 0)),
            Ok(""),
        ),
        (
            "get that",
            |r| sys::lgetxattr(&r.join("new"), "user.m").map(|v| String::from_utf8(v).unwrap()),
            Ok("mv"),
        ),
        (
            "create existing",
            |r| {
                ok(sys::lsetxattr(
                    &r.join("f"),
                    "user.a",
                    b"x",
                    libc::XATTR_CREATE,
                ))
            },
            Err(libc::EEXIST),
        ),
        (
            "replace missing",
            |r| {
                ok(sys::lsetxattr(
                    &r.join("f"),
                    "user.b",
                    b"x",
                    libc::XATTR_REPLACE,
                ))
            },
            Err(libc::ENODATA),
        ),
        (
            "set new",
            |r| {
                ok(sys::lsetxattr(
                    &r.join("f"),
                    "user.b",
                    b"bee",
                    libc::XATTR_CREATE,
                ))
            },
            Ok(""),
        ),
        (
            "replace",
            |r| {
                ok(sys::lsetxattr(
                    &r.join("f"),
                    "user.a",
                    b"upper-a",
                    libc::XATTR_REPLACE,
                ))
            },
            Ok(""),
        ),
        (
            "empty value",
            |r| ok(sys::lsetxattr(&r.join("f"), "user.empty", b"", 0)),
            Ok(""),
        ),
        (
            "list",
            |r| sys::llistxattr(&r.join("f")).map(|v| v.join(",")),
            Ok("user.a,user.b,user.empty"),
        ),
        // The kernel's size query is not filtered (it counts its private
        // names too), so only require a size that is large enough for
        // "user.a\0user.b\0user.empty\0" (25 bytes).
        (
            "list size query",
            |r| sys::llistxattr_sized(&r.join("f"), 0).map(|n| (n >= 25).to_string()),
            Ok("true"),
        ),
        (
            "list small buffer",
            |r| sys::llistxattr_sized(&r.join("f"), 5).map(|n| n.to_string()),
            Err(libc::ERANGE),
        ),
        (
            "remove",
            |r| ok(sys::lremovexattr(&r.join("f"), "user.a")),
            Ok(""),
        ),
        (
            "remove missing",
            |r| ok(sys::lremovexattr(&r.join("f"), "user.a")),
            Err(libc::ENODATA),
        ),
        (
            "remove on lower dir",
            |r| ok(sys::lremovexattr(&r.join("d"), "user.dd")),
            Ok(""),
        ),
        (
            "list dir",
            |r| sys::llistxattr(&r.join("d")).map(|v| v.join(",")),
            Ok(""),
        ),
        (
            "user xattr on fifo",
            |r| {
                sys::mkfifo(&r.join("p"), 0o644)?;
                ok(sys::lsetxattr(&r.join("p"), "user.x", b"1", 0))
            },
            Err(libc::EPERM),
        ),
        (
            "missing file",
            |r| ok(sys::lsetxattr(&r.join("nope"), "user.x", b"1", 0)),
            Err(libc::ENOENT),
        ),
    ];
    for (name, op, want) in &steps {
        let (a, b) = p.both(op);
        let want = want.map(|s| s.to_string());
        assert_eq!(b, want, "{name}: kernel overlay result (test expectation)");
        assert_eq!(a, want, "{name}: stratafs result");
    }
    let up = snapshot_upper(p.s.upper());
    assert_eq!(
        meta_of(&up, "f")
            .xattrs
            .keys()
            .filter(|n| !is_private_xattr(n))
            .cloned()
            .collect::<Vec<_>>(),
        ["user.b", "user.empty"]
    );
    p.assert_same_view();
    p.assert_same_upper();
}

#[test]
fn refuses_to_set_private_xattrs() {
    // Accepted divergence (docs/COMPAT.md): the overlay namespaces are
    // private to stratafs.
    let spec = stack(vec![Layer::new().file("f", "x").dir("d")], Layer::new());
    let st = spec.build(Markers::Kernel);
    let _m = st.mount_strata();
    for name in [
        "user.overlay.opaque",
        "user.fuseoverlayfs.opaque",
        "trusted.overlay.opaque",
    ] {
        assert!(
            sys::lsetxattr(&st.m("d"), name, b"y", 0).is_err(),
            "setxattr {name} succeeded"
        );
        assert!(
            sys::lremovexattr(&st.m("d"), name).is_err(),
            "removexattr {name} succeeded"
        );
    }
    assert_eq!(sys::llistxattr(&st.m("d")).unwrap(), Vec::<String>::new());
}

fn run_tool(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn posix_acls_via_setfacl_and_getfacl() {
    let spec = stack(
        vec![Layer::new()
            .file("d/f", "x")
            .mode(0o640)
            .dir("d")
            .mode(0o755)],
        Layer::new(),
    );
    let p = Pair::new(&spec);
    let uid = other_id().to_string();
    let mut outputs = Vec::new();
    for root in [&p.s.mnt, &p.k.mnt] {
        let f = root.join("d/f");
        let d = root.join("d");
        let (ok1, _, e1) = run_tool(
            "setfacl",
            &["-m", &format!("u:{uid}:rwx"), f.to_str().unwrap()],
        );
        assert!(ok1, "{root:?}: setfacl -m on a lower file: {e1}");
        let (ok2, _, e2) = run_tool(
            "setfacl",
            &[
                "-d",
                "-m",
                &format!("u:{uid}:r-x,g::r-x,o::-"),
                d.to_str().unwrap(),
            ],
        );
        assert!(ok2, "{root:?}: setfacl -d -m on a lower dir: {e2}");
        sys::write_file(&d.join("new"), b"n", 0o666).unwrap();
        let (ok3, acl_f, e3) = run_tool("getfacl", &["-cpn", f.to_str().unwrap()]);
        assert!(ok3, "{e3}");
        let (_, acl_d, _) = run_tool("getfacl", &["-cpn", d.to_str().unwrap()]);
        let (_, acl_new, _) = run_tool("getfacl", &["-cpn", d.join("new").to_str().unwrap()]);
        let mode_new = sys::lstat(&d.join("new")).unwrap().st_mode & 0o7777;
        outputs.push((acl_f, acl_d, acl_new, mode_new));
    }
    let (acl_f, acl_d, acl_new, _) = &outputs[0];
    assert!(
        acl_f.contains(&format!("user:{uid}:rwx")),
        "file ACL: {acl_f}"
    );
    assert!(
        acl_d.contains(&format!("default:user:{uid}:r-x")),
        "dir default ACL: {acl_d}"
    );
    assert!(
        acl_new.contains(&format!("user:{uid}:r-x")),
        "inherited ACL: {acl_new}"
    );
    assert_eq!(
        outputs[0], outputs[1],
        "stratafs (left) vs kernel overlay (right)"
    );
    // Removing the ACL again.
    for root in [&p.s.mnt, &p.k.mnt] {
        let (ok, _, e) = run_tool("setfacl", &["-b", root.join("d/f").to_str().unwrap()]);
        assert!(ok, "setfacl -b: {e}");
    }
    p.assert_same_view();
    p.assert_same_upper();
}

#[test]
fn a_file_deleted_while_open_keeps_working_until_closed() {
    let spec = stack(
        vec![Layer::new().file("lower", "lower data")],
        Layer::new().file("upper", "upper data"),
    );
    let p = Pair::new(&spec);
    let run = |r: &Path| -> Vec<Result<String, i32>> {
        let mut out = Vec::new();
        let lfd = sys::open(&r.join("lower"), libc::O_RDONLY, 0).unwrap();
        let ufd = sys::open(&r.join("upper"), libc::O_RDWR, 0).unwrap();
        out.push(ok(sys::unlink(&r.join("lower"))));
        out.push(ok(sys::unlink(&r.join("upper"))));
        out.push(ok(sys::lstat(&r.join("lower"))));
        out.push(sys::pread(&lfd, 100, 0).map(|v| String::from_utf8_lossy(&v).into_owned()));
        out.push(sys::pwrite(&ufd, b"UPPER", 0).map(|n| n.to_string()));
        out.push(sys::pread(&ufd, 100, 0).map(|v| String::from_utf8_lossy(&v).into_owned()));
        out.push(sys::fstat(&ufd).map(|s| format!("nlink={} size={}", s.st_nlink, s.st_size)));
        out.push(cvt(unsafe { libc::ftruncate(ufd.as_raw_fd(), 3) }).map(|_| String::new()));
        out.push(sys::fstat(&ufd).map(|s| format!("size={}", s.st_size)));
        // A new file under the same name is independent.
        out.push(ok(sys::write_file(&r.join("upper"), b"fresh", 0o644)));
        out.push(sys::pread(&ufd, 100, 0).map(|v| String::from_utf8_lossy(&v).into_owned()));
        drop(lfd);
        drop(ufd);
        out.push(sys::read_all(&r.join("upper")).map(|v| String::from_utf8_lossy(&v).into_owned()));
        out
    };
    let (a, b) = p.both(run);
    let want: Vec<Result<String, i32>> = vec![
        Ok("".into()),
        Ok("".into()),
        Err(libc::ENOENT),
        Ok("lower data".into()),
        Ok("5".into()),
        Ok("UPPER data".into()),
        Ok("nlink=0 size=10".into()),
        Ok("".into()),
        Ok("size=3".into()),
        Ok("".into()),
        Ok("UPP".into()),
        Ok("fresh".into()),
    ];
    assert_eq!(b, want, "kernel overlay (test expectation)");
    assert_eq!(a, want, "stratafs");
    let up = snapshot_upper(p.s.upper());
    assert_eq!(up.get("lower"), Some(&Entry::Whiteout));
    p.assert_same_upper();
    p.assert_same_view();
    let Pair { sm, s, .. } = p;
    drop(sm);
    assert_work_clean(&s);
}

#[test]
fn changes_survive_a_remount() {
    let spec = stack(
        vec![
            Layer::new()
                .file("a", "a")
                .file("d/x", "x")
                .file("d/y", "y"),
            Layer::new().file("b", "b"),
        ],
        Layer::new(),
    );
    let st = spec.build(Markers::Mixed(3));
    let before = {
        let m = st.mount_strata();
        sys::unlink(&st.m("a")).unwrap();
        sys::write_file(&st.m("d/x"), b"changed", 0o644).unwrap();
        sys::unlink(&st.m("d/y")).unwrap();
        sys::rename(&st.m("b"), &st.m("c")).unwrap();
        sys::mkdir(&st.m("n"), 0o700).unwrap();
        sys::lsetxattr(&st.m("d"), "user.x", b"1", 0).unwrap();
        let v = snapshot_view(&st.mnt);
        assert_eq!(
            m.unmount().map(|s| s.success()),
            Some(true),
            "daemon exit status"
        );
        v
    };
    let _m = st.mount_strata();
    let after = snapshot_view(&st.mnt);
    let d = diff_snapshots(&before, &after, &CmpOpts::with_dir_nlink());
    assert!(
        d.is_empty(),
        "view changed across remount:\n{}",
        d.join("\n")
    );
    assert_eq!(list_dir(&st.m("")).unwrap(), ["c", "d", "n"]);
    assert_eq!(read_string(&st.m("d/x")), "changed");
}

/// Owner, mode, times and size changed through open descriptors
/// (`fchown`, `fchmod`, `futimens`, `ftruncate`): the first copies a lower
/// file up although the descriptor was opened on the lower file; each
/// change shows through the descriptor, the name and the upper, as in the
/// kernel overlay. A second name (a hard link) sees the same.
#[test]
fn attribute_changes_through_open_descriptors() {
    let spec = stack(
        vec![Layer::new().file("low", "lower data")],
        Layer::new().file("up", "upper data"),
    );
    let p = Pair::new(&spec);
    let o = other_id();
    let shown = |s: &libc::stat| {
        format!(
            "mode={:o} owner={}:{} size={} mtime={}.{} atime={}.{} nlink={}",
            s.st_mode & 0o7777,
            s.st_uid,
            s.st_gid,
            s.st_size,
            s.st_mtime,
            s.st_mtime_nsec,
            s.st_atime,
            s.st_atime_nsec,
            s.st_nlink
        )
    };
    let run = |r: &Path| -> Vec<Result<String, i32>> {
        let mut out = Vec::new();
        for name in ["low", "up"] {
            let f = r.join(name);
            let fd = sys::open(&f, libc::O_RDONLY, 0).unwrap();
            let raw = fd.as_raw_fd();
            out.push(cvt(unsafe { libc::fchmod(raw, 0o640) }).map(|_| String::new()));
            out.push(cvt(unsafe { libc::fchown(raw, o, o) }).map(|_| String::new()));
            let ts = [
                libc::timespec {
                    tv_sec: 1_500_000_000,
                    tv_nsec: 7,
                },
                libc::timespec {
                    tv_sec: 1_600_000_000,
                    tv_nsec: 9,
                },
            ];
            out.push(cvt(unsafe { libc::futimens(raw, ts.as_ptr()) }).map(|_| String::new()));
            out.push(sys::fstat(&fd).map(|s| shown(&s)));
            let wfd = sys::open(&f, libc::O_WRONLY, 0).unwrap();
            out.push(cvt(unsafe { libc::ftruncate(wfd.as_raw_fd(), 4) }).map(|_| String::new()));
            out.push(sys::fstat(&wfd).map(|s| format!("size={}", s.st_size)));
            out.push(ok(sys::link(&f, &r.join(format!("{name}.2")))));
            out.push(cvt(unsafe { libc::fchmod(raw, 0o604) }).map(|_| String::new()));
            out.push(sys::fstat(&fd).map(|s| format!("mode={:o}", s.st_mode & 0o7777)));
            for n in [name.to_string(), format!("{name}.2")] {
                out.push(sys::lstat(&r.join(&n)).map(|s| {
                    format!(
                        "{n}: mode={:o} size={} owner={}:{} nlink={}",
                        s.st_mode & 0o7777,
                        s.st_size,
                        s.st_uid,
                        s.st_gid,
                        s.st_nlink
                    )
                }));
            }
            out.push(sys::read_all(&f).map(|v| String::from_utf8_lossy(&v).into_owned()));
        }
        out
    };
    let (a, b) = p.both(run);
    assert!(b.iter().all(Result::is_ok), "kernel overlay: {b:?}");
    assert_eq!(a, b, "stratafs (left), kernel overlay (right)");
    p.assert_same_upper();
    p.assert_same_view();
}

/// A merged directory's link count changes when its upper part is made (a
/// lower directory with subdirectories reports their count, a merged one
/// 1, as on the kernel overlay); the change is seen at once by the next
/// `stat`, also when the old count was cached a moment before.
#[test]
fn a_directory_copied_up_shows_its_new_link_count_at_once() {
    const ROUNDS: usize = 40;
    let mut lower = Layer::new();
    for i in 0..ROUNDS {
        lower = lower
            .file(&format!("d{i}/f"), "f")
            .dir(&format!("d{i}/s1"))
            .dir(&format!("d{i}/s2"));
    }
    let st = stack(vec![lower], Layer::new()).build(Markers::Kernel);
    let mut seen = Vec::new();
    for kernel in [true, false] {
        let _m = if kernel {
            st.mount_kernel()
        } else {
            st.mount_strata()
        };
        let mut counts = Vec::new();
        for i in 0..ROUNDS {
            let d = st.m(&format!("d{i}"));
            let before =
                std::os::unix::fs::MetadataExt::nlink(&std::fs::symlink_metadata(&d).unwrap());
            sys::lutimes(&d.join("f"), (1_500_000_000, 0), (1_400_000_000, 0)).unwrap();
            let after =
                std::os::unix::fs::MetadataExt::nlink(&std::fs::symlink_metadata(&d).unwrap());
            counts.push((before, after));
        }
        seen.push(counts);
        drop(_m);
        // The next mount starts from the same lower-only state.
        std::fs::remove_dir_all(st.upper()).unwrap();
        std::fs::create_dir(st.upper()).unwrap();
        std::fs::remove_dir_all(st.work()).unwrap();
        std::fs::create_dir(st.work()).unwrap();
    }
    assert_eq!(seen[1], seen[0], "stratafs (right) vs kernel (left)");
    assert!(seen[0].iter().all(|c| *c == (4, 1)), "{:?}", seen[0]);
}

/// `security.capability` of files made through the mount: absent at first,
/// present once set (a remembered absence must not outlive the set), and
/// dropped by a write and by a change of owner, as on the kernel overlay; a
/// directory made through the mount has none either.
#[test]
fn capabilities_of_new_files_follow_sets_writes_and_chown() {
    let spec = stack(vec![Layer::new().dir("d")], Layer::new());
    let p = Pair::new(&spec);
    // VFS_CAP_REVISION_2 with the effective flag, CAP_NET_RAW permitted.
    let mut caps = vec![0u8; 20];
    caps[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    caps[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    let caps = &caps;
    let run = |r: &Path| -> Vec<Result<String, i32>> {
        let f = r.join("d/new");
        let get = |p: &Path| sys::lgetxattr(p, "security.capability").map(|v| format!("{v:?}"));
        let write = |data: &[u8]| -> Result<String, i32> {
            let fd = sys::open(&f, libc::O_WRONLY | libc::O_APPEND, 0)?;
            let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
            cvt(n).map(|_| String::new())
        };
        let mut out = vec![
            ok(sys::write_file(&f, b"new file", 0o755)),
            get(&f),
            write(b" more"),
            get(&f),
            ok(sys::lsetxattr(&f, "security.capability", caps, 0)),
            get(&f),
            write(b" again"),
            get(&f),
            ok(sys::lsetxattr(&f, "security.capability", caps, 0)),
            get(&f),
            ok(sys::lchown(&f, other_id(), other_id())),
            get(&f),
        ];
        out.push(ok(sys::mkdir(&r.join("d/sub"), 0o755)));
        out.push(get(&r.join("d/sub")));
        out.push(sys::read_all(&f).map(|v| String::from_utf8_lossy(&v).into_owned()));
        out
    };
    let (a, b) = p.both(run);
    if !is_rootless() {
        assert!(
            b.iter().all(|r| r.is_ok() || *r == Err(libc::ENODATA)),
            "kernel overlay: {b:?}"
        );
        assert_eq!(b[5], Ok(format!("{caps:?}")), "kernel overlay: {b:?}");
    }
    assert_eq!(a, b, "stratafs (left), kernel overlay (right)");
    p.assert_same_upper();
    p.assert_same_view();
}

/// A stat racing with the copy-up of a lower file and with appends to it
/// that cross a page boundary sees a size from the one before an append to
/// the one after it: the upper filesystem extends a file a page at a time,
/// so part-way sizes are seen (on the kernel overlay too), but never one
/// outside that range, such as a partly copied file or the lower size
/// rounded up to a page. Each append follows a one-byte write in place, so
/// that the kernel's cached size is stale and the stat asks the daemon.
#[test]
fn a_stat_racing_with_copy_up_and_appends_sees_sizes_between_before_and_after() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    const FILES: usize = 12;
    const APPENDS: usize = 40;
    const BASE: usize = 16 * 4096 - 99;
    const TAIL: usize = 5000;
    let mut lower = Layer::new();
    for i in 0..FILES {
        lower = lower.file(&format!("f{i}"), vec![b'l'; BASE]);
    }
    let p = Pair::new(&stack(vec![lower], Layer::new()));
    let tail = vec![b't'; TAIL];
    let (s, k) = p.both(|mnt| {
        let mut outside = BTreeSet::new();
        for i in 0..FILES {
            let path = mnt.join(format!("f{i}"));
            let rd = sys::open(&path, libc::O_RDONLY, 0).expect("open for reading");
            let stop = AtomicBool::new(false);
            let seen = std::thread::scope(|sc| {
                let reader = sc.spawn(|| {
                    let mut seen = BTreeSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        seen.insert(sys::fstat(&rd).map(|st| st.st_size as usize));
                        seen.insert(sys::stat(&path).map(|st| st.st_size as usize));
                    }
                    seen
                });
                let w = sys::open(&path, libc::O_WRONLY, 0).expect("open for writing");
                let a =
                    sys::open(&path, libc::O_WRONLY | libc::O_APPEND, 0).expect("open O_APPEND");
                for _ in 0..APPENDS {
                    assert_eq!(sys::pwrite(&w, b"w", 0), Ok(1));
                    assert_eq!(sys::write(&a, &tail), Ok(TAIL));
                    assert_eq!(unsafe { libc::ftruncate(w.as_raw_fd(), BASE as i64) }, 0);
                }
                stop.store(true, Ordering::Relaxed);
                reader.join().expect("reader")
            });
            outside.extend(
                seen.into_iter()
                    .filter(|r| !matches!(r, Ok(n) if (BASE..=BASE + TAIL).contains(n))),
            );
        }
        outside
    });
    assert!(
        s.is_empty() && k.is_empty(),
        "sizes outside {BASE}..={} (stratafs, kernel): {s:?}, {k:?}",
        BASE + TAIL
    );
}
