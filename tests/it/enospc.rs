//! A full upper filesystem: copy-ups and creations that do not fit fail
//! with ENOSPC and leave nothing behind (no partial file in the view or the
//! upper, nothing in WORKDIR/work); the mount keeps working and succeeds
//! again once space is freed.
//!
//! The upper and work dir live on a size-limited tmpfs mounted for the test
//! (as root, or in the rootless run's user and mount namespace).

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};

const MIB: usize = 1 << 20;

/// Non-zero data (no holes: copy-up keeps holes, which would fit).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed) | 1)
        .collect()
}

struct Env {
    // Field order is drop order: unmount stratafs before the tmpfs.
    mount: Mount,
    _tmpfs: TmpfsMount,
    upper: PathBuf,
    work: PathBuf,
    lower: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Env {
    fn m(&self, rel: &str) -> PathBuf {
        self.mount.p(rel)
    }

    /// What W/work holds besides the whiteout template (a char 0/0 device
    /// whiteouts are hard links to, kept while mounted, as the kernel
    /// overlay keeps one).
    fn work_entries(&self) -> Vec<String> {
        let wd = self.work.join("work");
        let mut v = list_dir(&wd).unwrap_or_default();
        v.retain(|n| {
            !fs::symlink_metadata(wd.join(n)).is_ok_and(|m| {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                m.file_type().is_char_device() && m.rdev() == 0
            })
        });
        v
    }

    #[track_caller]
    fn assert_clean(&self, name: &str) {
        assert!(
            sys::lstat(&self.upper.join(name)).is_err(),
            "{name} left in the upper: {:?}",
            list_dir(&self.upper)
        );
        assert_eq!(
            self.work_entries(),
            Vec::<String>::new(),
            "leftovers in W/work"
        );
    }
}

/// Lower on the normal filesystem, upper and work on a tmpfs of
/// `tmpfs_opts`; `None` when no tmpfs can be mounted (test `test` is
/// skipped).
fn setup(test: &str, tmpfs_opts: &str) -> Option<Env> {
    let tmp = tempdir();
    let root = fs::canonicalize(tmp.path()).expect("canonicalize");
    let lower = root.join("lower");
    fs::create_dir(&lower).unwrap();
    fs::write(lower.join("big"), pattern(20 * MIB, 1)).unwrap();
    fs::write(lower.join("mid"), pattern(3 * MIB, 2)).unwrap();
    fs::write(lower.join("small"), "small\n").unwrap();
    fs::create_dir(lower.join("dir")).unwrap();
    fs::write(lower.join("dir/a"), "a\n").unwrap();
    fs::write(lower.join("victim"), "v\n").unwrap();
    let t = root.join("t");
    let tmpfs = match TmpfsMount::with_options(&t, tmpfs_opts) {
        Ok(m) => m,
        Err(e) => {
            skip(test, &format!("cannot mount tmpfs: {}", errno_name(e)));
            return None;
        }
    };
    let upper = t.join("upper");
    let work = t.join("work");
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mount = mount_stratafs(
        std::slice::from_ref(&lower),
        Some(&upper),
        Some(&work),
        &mnt,
    );
    Some(Env {
        mount,
        _tmpfs: tmpfs,
        upper,
        work,
        lower,
        _tmp: tmp,
    })
}

/// Open for append (copy-up) and write; the errno of whichever fails.
fn append(p: &Path, data: &[u8]) -> Result<(), i32> {
    let fd = sys::open(p, libc::O_WRONLY | libc::O_APPEND, 0)?;
    let n = sys::write(&fd, data)?;
    assert_eq!(n, data.len(), "short write to {p:?}");
    Ok(())
}

/// Write a file through the mount until the filesystem is full.
fn fill(p: &Path) -> usize {
    let fd = sys::open(p, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644)
        .unwrap_or_else(|e| panic!("create {p:?}: {}", errno_name(e)));
    let chunk = pattern(256 * 1024, 9);
    let mut total = 0;
    loop {
        match sys::write(&fd, &chunk) {
            Ok(0) => panic!("write returned 0"),
            Ok(n) => total += n,
            Err(libc::ENOSPC) => break,
            Err(e) => panic!("filling {p:?}: unexpected {}", errno_name(e)),
        }
        assert!(total < 64 * MIB, "the tmpfs never filled up");
    }
    total
}

/// Free bytes on the upper's tmpfs.
fn free_bytes(env: &Env) -> usize {
    let st = sys::statvfs(&env.upper).unwrap();
    st.f_bavail as usize * st.f_frsize as usize
}

/// Wait (up to 5 s) until the upper has `bytes` free. A file deleted through
/// the mount frees its space only when stratafs drops the node, after the
/// kernel's FORGET (see `space_of_a_deleted_file_is_free_when_unlink_returns`).
fn wait_for_free(env: &Env, bytes: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while free_bytes(env) < bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "space not freed: {} bytes free, want {bytes}",
            free_bytes(env)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[track_caller]
fn assert_lower_content(env: &Env, name: &str) {
    let want = fs::read(env.lower.join(name)).unwrap();
    let got = sys::read_all(&env.m(name))
        .unwrap_or_else(|e| panic!("read {name} through the mount: {}", errno_name(e)));
    assert_eq!(got.len(), want.len(), "{name}: size through the mount");
    assert!(got == want, "{name}: content through the mount differs");
    let st = sys::lstat(&env.m(name)).unwrap();
    assert_eq!(st.st_size as usize, want.len(), "{name}: st_size");
}

#[test]
fn copy_up_larger_than_the_upper_fails_with_enospc_and_leaves_nothing() {
    let Some(env) = setup(
        "copy_up_larger_than_the_upper_fails_with_enospc_and_leaves_nothing",
        "size=8m,mode=0755",
    ) else {
        return;
    };
    let r = append(&env.m("big"), b"more");
    assert_errno(
        r,
        libc::ENOSPC,
        "append to a 20 MiB lower file on an 8 MiB upper",
    );
    assert_lower_content(&env, "big");
    env.assert_clean("big");
    assert_eq!(
        list_dir(&env.m("")).unwrap(),
        ["big", "dir", "mid", "small", "victim"]
    );
    // Again (nothing cached a half-done copy-up).
    assert_errno(
        append(&env.m("big"), b"more"),
        libc::ENOSPC,
        "second append",
    );
    assert_lower_content(&env, "big");
    env.assert_clean("big");
}

#[test]
fn truncating_open_of_a_big_lower_file_fits() {
    // O_TRUNC copies metadata only: it must not fail for lack of space.
    let Some(env) = setup(
        "truncating_open_of_a_big_lower_file_fits",
        "size=8m,mode=0755",
    ) else {
        return;
    };
    let fd = sys::open(&env.m("big"), libc::O_WRONLY | libc::O_TRUNC, 0)
        .unwrap_or_else(|e| panic!("open(O_TRUNC): {}", errno_name(e)));
    sys::write(&fd, b"new").unwrap();
    drop(fd);
    assert_eq!(sys::read_all(&env.m("big")).unwrap(), b"new");
    assert_eq!(env.work_entries(), Vec::<String>::new());
}

#[test]
fn small_writes_still_work_after_a_failed_copy_up() {
    let Some(env) = setup(
        "small_writes_still_work_after_a_failed_copy_up",
        "size=8m,mode=0755",
    ) else {
        return;
    };
    assert_errno(append(&env.m("big"), b"x"), libc::ENOSPC, "append to big");
    assert_ok(append(&env.m("small"), b"more\n"), "append to small");
    assert_eq!(read_string(&env.m("small")), "small\nmore\n");
    assert_ok(
        sys::write_file(&env.m("dir/new"), b"new file", 0o644),
        "create in a lower dir",
    );
    assert_eq!(read_string(&env.m("dir/new")), "new file");
    assert_eq!(read_string(&env.upper.join("dir/new")), "new file");
    assert_ok(sys::unlink(&env.m("victim")), "unlink a lower file");
    assert!(sys::lstat(&env.m("victim")).is_err());
    assert_eq!(env.work_entries(), Vec::<String>::new());
}

#[test]
fn copy_up_succeeds_once_space_is_freed() {
    let Some(env) = setup("copy_up_succeeds_once_space_is_freed", "size=8m,mode=0755") else {
        return;
    };
    let filled = fill(&env.m("filler"));
    assert!(filled > 4 * MIB, "filled only {filled} bytes");
    assert_errno(
        append(&env.m("mid"), b"tail"),
        libc::ENOSPC,
        "copy-up of 3 MiB into a full upper",
    );
    assert_lower_content(&env, "mid");
    env.assert_clean("mid");
    assert_ok(sys::unlink(&env.m("filler")), "delete the filler");
    assert!(sys::lstat(&env.upper.join("filler")).is_err());
    wait_for_free(&env, 4 * MIB);
    assert_ok(
        append(&env.m("mid"), b"tail"),
        "copy-up after freeing space",
    );
    let mut want = fs::read(env.lower.join("mid")).unwrap();
    want.extend_from_slice(b"tail");
    let got = sys::read_all(&env.m("mid")).unwrap();
    assert!(
        got == want,
        "content after copy-up (len {} vs {})",
        got.len(),
        want.len()
    );
    assert!(
        fs::read(env.upper.join("mid")).unwrap() == want,
        "upper copy"
    );
    assert_eq!(env.work_entries(), Vec::<String>::new());
}

#[test]
fn writes_into_a_full_upper_fail_with_enospc() {
    let Some(env) = setup(
        "writes_into_a_full_upper_fail_with_enospc",
        "size=8m,mode=0755",
    ) else {
        return;
    };
    fill(&env.m("filler"));
    // Data into a new file: ENOSPC from write; the (empty) file exists.
    let fd = sys::open(&env.m("new"), libc::O_WRONLY | libc::O_CREAT, 0o644)
        .unwrap_or_else(|e| panic!("create: {}", errno_name(e)));
    assert_errno(
        sys::write(&fd, &pattern(MIB, 3)),
        libc::ENOSPC,
        "write into a full upper",
    );
    drop(fd);
    assert_eq!(env.work_entries(), Vec::<String>::new());
    assert_ok(sys::unlink(&env.m("new")), "unlink");
    assert_ok(sys::unlink(&env.m("filler")), "unlink filler");
    wait_for_free(&env, MIB);
    assert_ok(append(&env.m("small"), b"ok\n"), "append after freeing");
}

/// With no inodes left, creating anything fails with ENOSPC and leaves no
/// entry, in the view, the upper or W/work.
#[test]
fn creating_when_the_upper_has_no_inodes_left_fails_and_leaves_no_entry() {
    let Some(env) = setup(
        "creating_when_the_upper_has_no_inodes_left_fails_and_leaves_no_entry",
        "size=8m,nr_inodes=48,mode=0755",
    ) else {
        return;
    };
    // Use up the inodes through the mount.
    let mut n = 0;
    loop {
        let p = env.m(&format!("f{n}"));
        match sys::write_file(&p, b"", 0o644) {
            Ok(()) => n += 1,
            Err(libc::ENOSPC) => {
                assert!(sys::lstat(&p).is_err(), "failed create left {p:?}");
                break;
            }
            Err(e) => panic!("create {p:?}: {}", errno_name(e)),
        }
        assert!(n < 1000, "inodes never ran out");
    }
    type Op = fn(&Path) -> Result<(), i32>;
    let ops: [(&str, &str, Op); 6] = [
        ("create", "newfile", |p| sys::write_file(p, b"", 0o644)),
        ("mkdir", "newdir", |p| sys::mkdir(p, 0o755)),
        ("symlink", "newlink", |p| sys::symlink("target", p)),
        ("mkfifo", "newfifo", |p| sys::mkfifo(p, 0o644)),
        // Needs the parent copied up first.
        ("create in lower dir", "dir/newfile", |p| {
            sys::write_file(p, b"", 0o644)
        }),
        // Copy-up of a small file needs an inode too.
        ("copy-up", "small", |p| append(p, b"x")),
    ];
    for (what, rel, op) in ops {
        let p = env.m(rel);
        let existed = sys::lstat(&p).is_ok();
        assert_errno(op(&p), libc::ENOSPC, what);
        assert_eq!(
            sys::lstat(&p).is_ok(),
            existed,
            "{what}: entry {rel} after ENOSPC"
        );
        if !existed {
            env.assert_clean(rel);
        } else {
            assert_eq!(env.work_entries(), Vec::<String>::new(), "{what}: W/work");
        }
    }
    assert_lower_content(&env, "small");
    // Deleting a lower file needs a whiteout (an inode): refused, still visible.
    assert_errno(
        sys::unlink(&env.m("victim")),
        libc::ENOSPC,
        "unlink needing a whiteout",
    );
    assert_eq!(read_string(&env.m("victim")), "v\n");
    assert_eq!(env.work_entries(), Vec::<String>::new());
    // Free a few inodes: everything works again. An unlinked upper file's
    // inode is released once the kernel forgets it, a moment after the
    // unlink (docs/COMPAT.md, item 5): a retry succeeds.
    for i in 0..4 {
        assert_ok(sys::unlink(&env.m(&format!("f{i}"))), "unlink");
    }
    let mut created = sys::write_file(&env.m("newfile"), b"n", 0o644);
    for _ in 0..100 {
        if created != Err(libc::ENOSPC) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        created = sys::write_file(&env.m("newfile"), b"n", 0o644);
    }
    assert_ok(created, "create after freeing");
    assert_ok(sys::unlink(&env.m("victim")), "unlink after freeing");
    assert!(sys::lstat(&env.m("victim")).is_err());
    assert_eq!(env.work_entries(), Vec::<String>::new());
}
