//! Setuid, setgid and file capabilities taken away by a write, truncate,
//! `O_TRUNC` open, fallocate, copy_file_range or chown. With
//! `FUSE_HANDLE_KILLPRIV_V2` the daemon takes them away itself, as the
//! requests tell it; every case is compared with the kernel overlay, for a
//! caller without `CAP_FSETID` (another user as root; everyone rootless) and
//! for root.

use std::ffi::CString;
use std::path::Path;

use crate::common::*;

/// A file capability (`cap_net_bind_service+ep`, revision 2).
const CAP: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

/// The user the unprivileged caller becomes when the tests run as root.
const OTHER: u32 = 1001;

/// Files and their modes; every one writable by everybody.
const FILES: [(&str, u32); 5] = [
    ("suid", 0o4777),
    ("sgid", 0o2777),
    ("both", 0o6777),
    ("sgid-nox", 0o2767),
    ("plain", 0o0777),
];

/// Files that also carry a capability (root runs only: a rootless lower
/// layer cannot be given one that means anything to the host).
const CAP_FILES: [(&str, u32); 2] = [("cap", 0o0777), ("cap-suid", 0o4777)];

fn spec(caps: bool, files: &[(&str, u32)]) -> TempStackBuilder {
    let o = other_id();
    let mut l = Layer::new().file("src", "source data");
    for (name, mode) in files {
        l = l.file(name, "lower data").owner(o, o).mode(*mode);
    }
    if caps {
        for (name, mode) in CAP_FILES {
            l = l
                .file(name, "lower data")
                .owner(o, o)
                .mode(mode)
                .xattr("security.capability", CAP);
        }
    }
    stack(vec![l], Layer::new())
}

fn with_caps() -> bool {
    !is_rootless()
}

/// Who makes the change.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    /// Without `CAP_FSETID`: another user when running as root; rootless,
    /// the test itself (its capabilities are those of a user namespace).
    Unprivileged,
    /// Root with `CAP_FSETID` (root runs only).
    Root,
}

/// Run `op` (system calls only) in a child that is `OTHER` when `become`;
/// the child's result: 0 or an errno.
fn in_child(become_other: bool, op: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child makes system calls only (the paths were made
    // before the fork) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", errno());
    if pid == 0 {
        unsafe {
            if become_other
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(OTHER, OTHER, OTHER) != 0
                    || libc::setresuid(OTHER, OTHER, OTHER) != 0)
            {
                libc::_exit(200);
            }
            libc::_exit(op());
        }
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child status {status}");
    libc::WEXITSTATUS(status)
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// The errno of the last failed call, as a child's exit code.
fn fail() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(1) & 0x7f
}

/// An operation on one file (`dst`), with `src` a readable file beside it.
type Op = fn(&CString, &CString) -> i32;

fn write_op(dst: &CString, _: &CString) -> i32 {
    unsafe {
        let fd = libc::open(dst.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
        if fd < 0 || libc::write(fd, b"x".as_ptr().cast(), 1) != 1 {
            return fail();
        }
        libc::close(fd);
    }
    0
}

fn truncate_op(dst: &CString, _: &CString) -> i32 {
    if unsafe { libc::truncate(dst.as_ptr(), 3) } != 0 {
        return fail();
    }
    0
}

fn open_trunc_op(dst: &CString, _: &CString) -> i32 {
    unsafe {
        let fd = libc::open(dst.as_ptr(), libc::O_WRONLY | libc::O_TRUNC);
        if fd < 0 {
            return fail();
        }
        libc::close(fd);
    }
    0
}

fn fallocate_op(dst: &CString, _: &CString) -> i32 {
    unsafe {
        let fd = libc::open(dst.as_ptr(), libc::O_WRONLY);
        if fd < 0 || libc::fallocate(fd, 0, 0, 100) != 0 {
            return fail();
        }
        libc::close(fd);
    }
    0
}

fn copy_range_op(dst: &CString, src: &CString) -> i32 {
    unsafe {
        let s = libc::open(src.as_ptr(), libc::O_RDONLY);
        let d = libc::open(dst.as_ptr(), libc::O_WRONLY);
        if s < 0 || d < 0 {
            return fail();
        }
        let mut off = 0i64;
        if libc::copy_file_range(s, std::ptr::null_mut(), d, &mut off, 4, 0) != 4 {
            return fail();
        }
        libc::close(s);
        libc::close(d);
    }
    0
}

/// `chown(-1, -1)`: changes no owner, yet clears setuid (as any chown).
fn chown_same_op(dst: &CString, _: &CString) -> i32 {
    if unsafe { libc::chown(dst.as_ptr(), u32::MAX, u32::MAX) } != 0 {
        return fail();
    }
    0
}

fn chown_root_op(dst: &CString, _: &CString) -> i32 {
    if unsafe { libc::chown(dst.as_ptr(), 0, 0) } != 0 {
        return fail();
    }
    0
}

const OPS: [(&str, Op); 6] = [
    ("write", write_op),
    ("truncate", truncate_op),
    ("open O_TRUNC", open_trunc_op),
    ("fallocate", fallocate_op),
    ("copy_file_range", copy_range_op),
    // Only for the owner or root (see the test below for anyone else).
    ("chown(-1, -1)", chown_same_op),
];

fn whos() -> Vec<Who> {
    if is_rootless() {
        vec![Who::Unprivileged]
    } else {
        vec![Who::Unprivileged, Who::Root]
    }
}

/// Apply `op` to every file of `files` (and with `caps` the capability files) on both
/// mounts of `p`, as `who`; both must succeed.
fn apply(p: &Pair, files: &[(&str, u32)], caps: bool, op: Op, who: Who, what: &str) {
    let mut names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    if caps {
        names.extend(CAP_FILES.iter().map(|(n, _)| *n));
    }
    let (a, b) = p.both(|mnt| {
        let src = c(&mnt.join("src"));
        let dsts: Vec<CString> = names.iter().map(|n| c(&mnt.join(n))).collect();
        in_child(who == Who::Unprivileged && !is_rootless(), || {
            for d in &dsts {
                let r = op(d, &src);
                if r != 0 {
                    return r;
                }
            }
            0
        })
    });
    assert_eq!((a, b), (0, 0), "{what} as {who:?}: stratafs, kernel");
}

/// Mode and capability of `name` through the mount and in the upper.
fn privileges(mnt: &Path, upper: &Path, name: &str) -> (u32, u32, bool, bool) {
    let cap = |p: &Path| sys::lgetxattr(p, "security.capability").is_ok();
    (
        sys::lstat(&mnt.join(name)).unwrap().st_mode & 0o7777,
        sys::lstat(&upper.join(name)).unwrap().st_mode & 0o7777,
        cap(&mnt.join(name)),
        cap(&upper.join(name)),
    )
}

#[test]
fn writes_truncates_and_chowns_take_privileges_away_as_the_kernel_does() {
    // Setgid without group execute: the FUSE protocol keeps it for a
    // caller outside the file's group (see the test below); the other
    // files are compared for every caller.
    let files: Vec<(&str, u32)> = FILES
        .iter()
        .copied()
        .filter(|(n, _)| *n != "sgid-nox")
        .collect();
    for who in whos() {
        for (what, op) in OPS {
            if what.starts_with("chown") && who == Who::Unprivileged && !is_rootless() {
                continue;
            }
            let caps = with_caps();
            // Root changing the data of a file with setuid and a
            // capability: the kernel removes the capability (REMOVEXATTR)
            // and then sends a SETATTR that sets nothing, which the FUSE
            // protocol does not tell from root's `chown(-1, -1)`, after
            // which setuid must go. stratafs clears it there, the kernel
            // overlay keeps it for the write (docs/COMPAT.md): checked as
            // such, then set back so that the rest compares.
            let ambiguous = caps
                && who == Who::Root
                && matches!(what, "write" | "fallocate" | "copy_file_range");
            let p = Pair::new(&spec(caps, &files));
            apply(&p, &files, caps, op, who, what);
            if ambiguous {
                let cap_suid = |mnt: &Path, upper: &Path| privileges(mnt, upper, "cap-suid");
                assert_eq!(
                    (
                        cap_suid(&p.s.mnt, p.s.upper()),
                        cap_suid(&p.k.mnt, p.k.upper())
                    ),
                    ((0o777, 0o777, false, false), (0o4777, 0o4777, false, false)),
                    "{what} as root, cap-suid: stratafs, kernel"
                );
                assert_ok(
                    sys::chmod(&p.s.m("cap-suid"), 0o4777),
                    "chmod cap-suid back",
                );
            }
            let names = files.iter().map(|(n, _)| *n).chain(
                caps.then_some(CAP_FILES.map(|(n, _)| n))
                    .into_iter()
                    .flatten(),
            );
            for name in names {
                let s = privileges(&p.s.mnt, p.s.upper(), name);
                let k = privileges(&p.k.mnt, p.k.upper(), name);
                assert_eq!(
                    s, k,
                    "{what} as {who:?}, {name}: (mode shown, mode in the upper, \
                     capability shown, capability in the upper), stratafs vs kernel"
                );
            }
            p.assert_same_view();
            p.assert_same_upper();
        }
    }
}

/// A metadata change copies a file with a capability up with it, also a
/// file of another user (whose copy is chowned: a chown takes the
/// capability away, so it is set after), as on the kernel overlay.
#[test]
fn a_copy_up_keeps_the_capability_of_another_users_file() {
    if !with_caps() {
        return skip(
            "a_copy_up_keeps_the_capability_of_another_users_file",
            "rootless: a lower layer cannot carry a capability that means anything to the host",
        );
    }
    type Change = fn(&Path) -> Result<(), i32>;
    let changes: [(&str, Change); 3] = [
        ("utimes", |p| sys::lutimes(p, (1000, 0), (2000, 0))),
        ("chmod", |p| {
            let mode = sys::lstat(p)?.st_mode & 0o7777;
            sys::chmod(p, mode & !0o002)
        }),
        ("setxattr", |p| sys::lsetxattr(p, "user.k", b"v", 0)),
    ];
    for (what, change) in changes {
        let p = Pair::new(&spec(true, &[]));
        for (name, _) in CAP_FILES {
            let (a, b) = p.both(|m| change(&m.join(name)));
            assert_eq!((a, b), (Ok(()), Ok(())), "{what} {name}: stratafs, kernel");
            let s = privileges(&p.s.mnt, p.s.upper(), name);
            assert_eq!(s, privileges(&p.k.mnt, p.k.upper(), name), "{what} {name}");
            assert!(s.2 && s.3, "{what} {name}: the capability is kept: {s:?}");
        }
        p.assert_same_view();
        p.assert_same_upper();
    }
}

#[test]
fn chown_to_another_owner_takes_setuid_and_setgid_away() {
    let p = Pair::new(&spec(with_caps(), &FILES));
    apply(&p, &FILES, with_caps(), chown_root_op, Who::Root, "chown");
    for (name, _) in FILES {
        let s = privileges(&p.s.mnt, p.s.upper(), name);
        assert_eq!(s, privileges(&p.k.mnt, p.k.upper(), name), "{name}");
    }
    assert_eq!(sys::lstat(&p.s.m("both")).unwrap().st_mode & 0o7777, 0o0777);
    // Setgid without group execute marks mandatory locking: it stays.
    assert_eq!(
        sys::lstat(&p.s.m("sgid-nox")).unwrap().st_mode & 0o7777,
        0o2767
    );
    p.assert_same_view();
    p.assert_same_upper();
}

#[test]
fn setgid_without_group_execute_follows_the_fuse_rule() {
    let files = [("sgid-nox", 0o2767)];
    for who in whos() {
        let p = Pair::new(&spec(false, &files));
        apply(&p, &files, false, write_op, who, "write");
        let (s, k) = p.both(|m| sys::lstat(&m.join("sgid-nox")).unwrap().st_mode & 0o7777);
        // Setgid without group execute goes only where a caller outside
        // the file's group writes on a plain filesystem; a FUSE filesystem
        // is told to clear setgid only with group execute.
        assert_eq!(s, 0o2767, "as {who:?}");
        let outside = who == Who::Unprivileged && !is_rootless();
        assert_eq!(
            k,
            if outside { 0o0767 } else { 0o2767 },
            "kernel as {who:?}"
        );
    }
}

#[test]
fn a_direct_io_write_takes_privileges_away_too() {
    // A fault rule on writes of a file makes it direct I/O: its writes
    // bypass the kernel's own request to drop privileges.
    let tmp = tempdir();
    let faults = faults_file(
        tmp.path(),
        "faults.toml",
        "[[rule]]\nop = \"write\"\npath = \"*\"\nerrno = \"EIO\"\nnth = 1000000\n",
    );
    let files = [("suid", 0o4777), ("sgid", 0o2777), ("plain", 0o0777)];
    for who in whos() {
        let desc = spec(false, &files);
        let k = desc.build(Markers::Kernel);
        let s = desc.build(Markers::Kernel);
        let _km = k.mount_kernel();
        let _sm = s.mount_strata_with(&format!("faults={}", faults.display()));
        for st in [&s, &k] {
            let dsts: Vec<CString> = files.iter().map(|(n, _)| c(&st.m(n))).collect();
            let src = c(&st.m("src"));
            let r = in_child(who == Who::Unprivileged && !is_rootless(), || {
                dsts.iter()
                    .map(|d| write_op(d, &src))
                    .find(|r| *r != 0)
                    .unwrap_or(0)
            });
            assert_eq!(r, 0, "write as {who:?}");
        }
        for (name, _) in files {
            assert_eq!(
                privileges(&s.mnt, s.upper(), name),
                privileges(&k.mnt, k.upper(), name),
                "{name} as {who:?}"
            );
        }
    }
}

#[test]
fn chown_to_nobody_by_another_user_leaves_setuid_alone() {
    if is_rootless() {
        return skip(
            "chown_to_nobody_by_another_user_leaves_setuid_alone",
            "needs a second user",
        );
    }
    let files = [("suid", 0o4755), ("sgid", 0o2755), ("writable", 0o4777)];
    let p = Pair::new(&spec(false, &files));
    let (s, k) = p.both(|mnt| {
        let dsts: Vec<CString> = files.iter().map(|(n, _)| c(&mnt.join(n))).collect();
        let src = c(&mnt.join("src"));
        dsts.iter()
            .map(|d| in_child(true, || chown_same_op(d, &src)))
            .collect::<Vec<i32>>()
    });
    // A plain filesystem refuses it (the chown would change the mode); the
    // kernel passes it to a FUSE filesystem without the mode, and stratafs
    // changes nothing unless the caller could write the file anyway.
    assert_eq!(k, vec![libc::EPERM, libc::EPERM, libc::EPERM]);
    assert_eq!(s, vec![0, 0, 0]);
    for (name, mode) in &files[..2] {
        let (a, b) = p.both(|m| sys::lstat(&m.join(name)).unwrap().st_mode & 0o7777);
        assert_eq!((a, b), (*mode, *mode), "{name}");
    }
    // Who may write the file may take setuid away by writing it.
    let (a, b) = p.both(|m| sys::lstat(&m.join("writable")).unwrap().st_mode & 0o7777);
    assert_eq!((a, b), (0o0777, 0o4777), "writable");
}
