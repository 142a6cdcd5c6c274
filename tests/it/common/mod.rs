//! Shared test harness for the stratafs integration tests.
//!
//! * [`LayerSpec`] / [`StackSpec`] describe a layer stack compactly and
//!   materialise it on disk in one of several on-disk [`Format`]s.
//! * [`Mount`] guards mount stratafs (or the kernel overlay used as the
//!   oracle) and always unmount on drop, also when a test panics.
//! * [`snapshot_view`] / [`snapshot_upper`] capture a merged tree or an
//!   upper layer normalised to overlay semantics, and [`diff_snapshots`]
//!   compares two of them.
//! * [`sys`] wraps the raw syscalls the tests need as `Result<T, errno>`.
//!
//! Environment knobs (all optional):
//! * `STRATAFS_TEST_BIN` – run the suites against another binary with the
//!   same command line (e.g. a release build).
//! * `STRATAFS_TEST_FSTYPE` – fstype to wait for in mountinfo (default
//!   `fuse.stratafs`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// True when running inside a user namespace (i.e. `/proc/self/uid_map` is
/// not the identity map of the initial namespace).
pub fn is_rootless() -> bool {
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields != ["0", "0", "4294967295"]
}

/// uids/gids a test may chown to. Under `unshare -Ur` only 0 is mapped.
pub fn test_ids() -> Vec<u32> {
    if is_rootless() {
        vec![0]
    } else {
        vec![0, 1000, 1001]
    }
}

/// An id other than 0 when one is usable, else 0.
pub fn other_id() -> u32 {
    if is_rootless() {
        0
    } else {
        1000
    }
}

/// Print a note and return true when the test cannot run rootless.
pub fn skip_if_rootless(test: &str, why: &str) -> bool {
    if is_rootless() {
        eprintln!("note: {test}: skipped when rootless: {why}");
        true
    } else {
        false
    }
}

pub fn stratafs_bin() -> PathBuf {
    match std::env::var_os("STRATAFS_TEST_BIN") {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from(env!("CARGO_BIN_EXE_stratafs")),
    }
}

pub fn stratafs_fstype() -> String {
    std::env::var("STRATAFS_TEST_FSTYPE").unwrap_or_else(|_| "fuse.stratafs".to_string())
}

/// A fresh temporary directory (honours TMPDIR).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stratafs-test.")
        .tempdir()
        .expect("create tempdir")
}

// ---------------------------------------------------------------------------
// Deterministic PRNG (splitmix64)
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let n = self.below(max_len + 1);
        (0..n).map(|_| b"abcxyz\n0"[self.below(8)]).collect()
    }
}

// ---------------------------------------------------------------------------
// errno helpers and raw syscall wrappers
// ---------------------------------------------------------------------------

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Converts a `-1`-on-error return value into `Result<_, errno>`.
pub fn cvt<T: PartialEq + From<i8>>(ret: T) -> Result<T, i32> {
    if ret == T::from(-1) {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// Converts an `io::Result` into `Result<_, errno>`.
pub fn io_errno<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Human name of an errno value, for messages.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::ENXIO => "ENXIO",
        libc::ETXTBSY => "ETXTBSY",
        libc::E2BIG => "E2BIG",
        _ => "",
    };
    if name.is_empty() {
        format!("errno {e}")
    } else {
        format!("{name}({e})")
    }
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

pub fn cstr(s: &str) -> CString {
    CString::new(s).expect("string without NUL")
}

/// Raw syscall wrappers. Every function returns `Err(errno)` on failure and
/// never follows a final symlink unless its name says so.
pub mod sys {
    use super::*;

    pub fn lstat(p: &Path) -> Result<libc::stat, i32> {
        let c = cpath(p);
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
        Ok(st)
    }

    pub fn stat(p: &Path) -> Result<libc::stat, i32> {
        let c = cpath(p);
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::stat(c.as_ptr(), &mut st) })?;
        Ok(st)
    }

    pub fn fstat(fd: &OwnedFd) -> Result<libc::stat, i32> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    pub fn open(p: &Path, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
        let c = cpath(p);
        let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn pwrite(fd: &OwnedFd, data: &[u8], off: i64) -> Result<usize, i32> {
        let n =
            cvt(unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) })?;
        Ok(n as usize)
    }

    pub fn write(fd: &OwnedFd, data: &[u8]) -> Result<usize, i32> {
        let n = cvt(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })?;
        Ok(n as usize)
    }

    pub fn pread(fd: &OwnedFd, len: usize, off: i64) -> Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; len];
        let n = cvt(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, off) })?;
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Reads the whole file (follows symlinks, like open(2)).
    pub fn read_all(p: &Path) -> Result<Vec<u8>, i32> {
        let fd = open(p, libc::O_RDONLY, 0)?;
        read_fd_all(&fd)
    }

    pub fn read_fd_all(fd: &OwnedFd) -> Result<Vec<u8>, i32> {
        let mut out = Vec::new();
        loop {
            let chunk = pread(fd, 65536, out.len() as i64)?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
        }
    }

    /// open(O_WRONLY|O_CREAT|O_TRUNC) + write + close.
    pub fn write_file(p: &Path, data: &[u8], mode: u32) -> Result<(), i32> {
        let fd = open(p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, mode)?;
        let mut done = 0;
        while done < data.len() {
            done += pwrite(&fd, &data[done..], done as i64)?;
        }
        Ok(())
    }

    pub fn mkdir(p: &Path, mode: u32) -> Result<(), i32> {
        let c = cpath(p);
        cvt(unsafe { libc::mkdir(c.as_ptr(), mode) }).map(drop)
    }

    pub fn rmdir(p: &Path) -> Result<(), i32> {
        let c = cpath(p);
        cvt(unsafe { libc::rmdir(c.as_ptr()) }).map(drop)
    }

    pub fn unlink(p: &Path) -> Result<(), i32> {
        let c = cpath(p);
        cvt(unsafe { libc::unlink(c.as_ptr()) }).map(drop)
    }

    pub const RENAME_NOREPLACE: u32 = 1;
    pub const RENAME_EXCHANGE: u32 = 2;

    pub fn rename2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
        let a = cpath(from);
        let b = cpath(to);
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                flags,
            )
        };
        cvt(r).map(drop)
    }

    pub fn rename(from: &Path, to: &Path) -> Result<(), i32> {
        rename2(from, to, 0)
    }

    pub fn link(from: &Path, to: &Path) -> Result<(), i32> {
        let a = cpath(from);
        let b = cpath(to);
        cvt(unsafe { libc::link(a.as_ptr(), b.as_ptr()) }).map(drop)
    }

    pub fn symlink(target: &str, p: &Path) -> Result<(), i32> {
        let t = cstr(target);
        let c = cpath(p);
        cvt(unsafe { libc::symlink(t.as_ptr(), c.as_ptr()) }).map(drop)
    }

    pub fn readlink(p: &Path) -> Result<Vec<u8>, i32> {
        let c = cpath(p);
        let mut buf = vec![0u8; 8192];
        let n = cvt(unsafe { libc::readlink(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
        buf.truncate(n as usize);
        Ok(buf)
    }

    pub fn mknod(p: &Path, mode: u32, dev: u64) -> Result<(), i32> {
        let c = cpath(p);
        cvt(unsafe { libc::mknod(c.as_ptr(), mode, dev) }).map(drop)
    }

    pub fn mkfifo(p: &Path, mode: u32) -> Result<(), i32> {
        mknod(p, libc::S_IFIFO | mode, 0)
    }

    pub fn chmod(p: &Path, mode: u32) -> Result<(), i32> {
        let c = cpath(p);
        cvt(unsafe { libc::chmod(c.as_ptr(), mode) }).map(drop)
    }

    pub fn lchown(p: &Path, uid: u32, gid: u32) -> Result<(), i32> {
        let c = cpath(p);
        cvt(unsafe { libc::lchown(c.as_ptr(), uid, gid) }).map(drop)
    }

    pub fn truncate(p: &Path, len: i64) -> Result<(), i32> {
        let c = cpath(p);
        cvt(unsafe { libc::truncate(c.as_ptr(), len) }).map(drop)
    }

    /// utimensat(AT_FDCWD, p, [atime, mtime], AT_SYMLINK_NOFOLLOW); times
    /// are (sec, nsec).
    pub fn lutimes(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<(), i32> {
        let c = cpath(p);
        let ts = [
            libc::timespec {
                tv_sec: atime.0,
                tv_nsec: atime.1,
            },
            libc::timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1,
            },
        ];
        cvt(unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    pub fn lsetxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
        let c = cpath(p);
        let n = cstr(name);
        cvt(unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    pub fn lgetxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
        let c = cpath(p);
        let n = cstr(name);
        loop {
            let size =
                cvt(unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) })?;
            let mut buf = vec![0u8; size as usize + 1];
            match cvt(unsafe {
                libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            }) {
                Ok(len) => {
                    buf.truncate(len as usize);
                    return Ok(buf);
                }
                Err(libc::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Raw lgetxattr with a caller-chosen buffer size (0 = size query).
    pub fn lgetxattr_sized(p: &Path, name: &str, size: usize) -> Result<isize, i32> {
        let c = cpath(p);
        let n = cstr(name);
        let mut buf = vec![0u8; size.max(1)];
        let ptr = if size == 0 {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        cvt(unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), ptr, size) })
    }

    pub fn llistxattr(p: &Path) -> Result<Vec<String>, i32> {
        let c = cpath(p);
        loop {
            let size = cvt(unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) })?;
            let mut buf = vec![0u8; size as usize + 1];
            match cvt(unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }) {
                Ok(len) => {
                    buf.truncate(len as usize);
                    let mut names: Vec<String> = buf
                        .split(|b| *b == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect();
                    names.sort();
                    return Ok(names);
                }
                Err(libc::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Raw llistxattr with a caller-chosen buffer size (0 = size query).
    pub fn llistxattr_sized(p: &Path, size: usize) -> Result<isize, i32> {
        let c = cpath(p);
        let mut buf = vec![0u8; size.max(1)];
        let ptr = if size == 0 {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        cvt(unsafe { libc::llistxattr(c.as_ptr(), ptr, size) })
    }

    pub fn lremovexattr(p: &Path, name: &str) -> Result<(), i32> {
        let c = cpath(p);
        let n = cstr(name);
        cvt(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }).map(drop)
    }

    pub fn statvfs(p: &Path) -> Result<libc::statvfs, i32> {
        let c = cpath(p);
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
        Ok(st)
    }

    pub fn statfs(p: &Path) -> Result<libc::statfs, i32> {
        let c = cpath(p);
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::statfs(c.as_ptr(), &mut st) })?;
        Ok(st)
    }

    pub fn makedev(major: u32, minor: u32) -> u64 {
        let (ma, mi) = (major as u64, minor as u64);
        ((ma & 0xfffff000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffffff00) << 12) | (mi & 0xff)
    }

    pub fn major(dev: u64) -> u32 {
        (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
    }

    pub fn minor(dev: u64) -> u32 {
        ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
    }

    pub fn mount(
        src: &str,
        target: &Path,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> Result<(), i32> {
        let s = cstr(src);
        let t = cpath(target);
        let f = cstr(fstype);
        let d = cstr(data);
        cvt(unsafe {
            libc::mount(
                s.as_ptr(),
                t.as_ptr(),
                f.as_ptr(),
                flags as libc::c_ulong,
                d.as_ptr().cast(),
            )
        })
        .map(drop)
    }

    pub fn umount2(target: &Path, flags: i32) -> Result<(), i32> {
        let t = cpath(target);
        cvt(unsafe { libc::umount2(t.as_ptr(), flags) }).map(drop)
    }
}

// ---------------------------------------------------------------------------
// Layer stack description
// ---------------------------------------------------------------------------

/// How a whiteout is written on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutForm {
    /// Character device 0/0 (kernel overlay format).
    CharDev,
    /// Empty regular file `.wh.NAME` beside the hidden name (aufs format).
    WhFile,
}

/// How an opaque directory is marked on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpaqueForm {
    /// `trusted.overlay.opaque=y` (kernel overlay as root).
    Trusted,
    /// `user.overlay.opaque=y` (kernel overlay with `userxattr`).
    UserOverlay,
    /// `user.fuseoverlayfs.opaque=y`.
    UserFuseOverlayfs,
    /// A file `.wh..wh..opq` inside the directory.
    WhOpqFile,
}

impl OpaqueForm {
    /// Every form usable in the current environment.
    pub fn all_usable() -> Vec<OpaqueForm> {
        let mut v = vec![
            OpaqueForm::UserOverlay,
            OpaqueForm::UserFuseOverlayfs,
            OpaqueForm::WhOpqFile,
        ];
        if !is_rootless() {
            v.insert(0, OpaqueForm::Trusted);
        }
        v
    }

    /// The form the kernel overlay understands in this environment.
    pub fn kernel() -> OpaqueForm {
        if is_rootless() {
            OpaqueForm::UserOverlay
        } else {
            OpaqueForm::Trusted
        }
    }
}

pub const ALL_WHITEOUT_FORMS: [WhiteoutForm; 2] = [WhiteoutForm::CharDev, WhiteoutForm::WhFile];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File(Vec<u8>),
    Dir {
        opaque: Option<Option<OpaqueForm>>,
    },
    Symlink(String),
    /// Hard link to another path of the same layer (created earlier).
    HardLink(String),
    Fifo,
    /// Device node (major, minor); only usable as real root.
    CharDev(u32, u32),
    Whiteout(Option<WhiteoutForm>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub path: String,
    pub kind: NodeKind,
    pub mode: Option<u32>,
    pub owner: Option<(u32, u32)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// (atime, mtime) in whole seconds, applied after the tree is built.
    pub times: Option<(i64, i64)>,
}

/// One layer: a list of nodes created in order. Missing parents are created
/// as plain 0755 directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerSpec {
    pub nodes: Vec<Node>,
}

impl LayerSpec {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, path: &str, kind: NodeKind) -> Self {
        self.nodes.push(Node {
            path: path.trim_matches('/').to_string(),
            kind,
            mode: None,
            owner: None,
            xattrs: Vec::new(),
            times: None,
        });
        self
    }

    fn last(&mut self) -> &mut Node {
        self.nodes.last_mut().expect("modifier without a node")
    }

    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.push(path, NodeKind::File(content.as_ref().to_vec()))
    }
    pub fn dir(self, path: &str) -> Self {
        self.push(path, NodeKind::Dir { opaque: None })
    }
    /// Opaque directory in the format's default (or random) form.
    pub fn opaque_dir(self, path: &str) -> Self {
        self.push(path, NodeKind::Dir { opaque: Some(None) })
    }
    /// Opaque directory in a specific form (honoured by `Format::AsSpecified`
    /// and `Format::Mixed`, replaced by the kernel form for `Format::Kernel`).
    pub fn opaque_dir_as(self, path: &str, form: OpaqueForm) -> Self {
        self.push(
            path,
            NodeKind::Dir {
                opaque: Some(Some(form)),
            },
        )
    }
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push(path, NodeKind::Symlink(target.to_string()))
    }
    pub fn hardlink(self, path: &str, existing: &str) -> Self {
        self.push(path, NodeKind::HardLink(existing.to_string()))
    }
    pub fn fifo(self, path: &str) -> Self {
        self.push(path, NodeKind::Fifo)
    }
    pub fn chardev(self, path: &str, major: u32, minor: u32) -> Self {
        self.push(path, NodeKind::CharDev(major, minor))
    }
    pub fn whiteout(self, path: &str) -> Self {
        self.push(path, NodeKind::Whiteout(None))
    }
    pub fn whiteout_as(self, path: &str, form: WhiteoutForm) -> Self {
        self.push(path, NodeKind::Whiteout(Some(form)))
    }
    /// Sets the permission bits of the last node.
    pub fn mode(mut self, mode: u32) -> Self {
        self.last().mode = Some(mode);
        self
    }
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.last().owner = Some((uid, gid));
        self
    }
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let v = value.as_ref().to_vec();
        self.last().xattrs.push((name.to_string(), v));
        self
    }
    /// Sets atime/mtime (seconds) of the last node.
    pub fn times(mut self, atime: i64, mtime: i64) -> Self {
        self.last().times = Some((atime, mtime));
        self
    }
}

/// A logical layer stack. `lowers[0]` is the topmost lower layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackSpec {
    pub lowers: Vec<LayerSpec>,
    /// `None` gives a read-only stack (no upperdir / workdir).
    pub upper: Option<LayerSpec>,
}

impl StackSpec {
    pub fn new(lowers: Vec<LayerSpec>, upper: LayerSpec) -> Self {
        StackSpec {
            lowers,
            upper: Some(upper),
        }
    }
    pub fn read_only(lowers: Vec<LayerSpec>) -> Self {
        StackSpec {
            lowers,
            upper: None,
        }
    }

    /// Materialises the stack in a fresh temporary directory.
    pub fn build(&self, format: Format) -> Stack {
        let tmp = tempdir();
        let root = fs::canonicalize(tmp.path()).expect("canonicalize tempdir");
        let mut rng = match format {
            Format::Mixed(seed) => Some(Rng::new(seed)),
            _ => None,
        };
        let mut lowers = Vec::new();
        for (i, layer) in self.lowers.iter().enumerate() {
            let dir = root.join(format!("lower{i}"));
            fs::create_dir(&dir).expect("create lower dir");
            materialize_layer(&dir, layer, format, rng.as_mut());
            lowers.push(dir);
        }
        let (upper, work) = match &self.upper {
            Some(layer) => {
                let u = root.join("upper");
                let w = root.join("work");
                fs::create_dir(&u).expect("create upper dir");
                fs::create_dir(&w).expect("create work dir");
                materialize_layer(&u, layer, format, rng.as_mut());
                (Some(u), Some(w))
            }
            None => (None, None),
        };
        let mnt = root.join("mnt");
        fs::create_dir(&mnt).expect("create mountpoint");
        Stack {
            root,
            lowers,
            upper,
            work,
            mnt,
            _tmp: tmp,
        }
    }
}

/// On-disk flavour of whiteouts and opaque markers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// What the kernel overlay reads: char 0/0 whiteouts and
    /// `trusted.overlay.opaque` (`user.overlay.opaque` when rootless).
    /// Explicit forms in the spec are replaced by these.
    Kernel,
    /// Explicit forms as written in the spec, kernel forms otherwise.
    AsSpecified,
    /// Every marker without an explicit form uses a random form stratafs
    /// understands (seeded).
    Mixed(u64),
}

/// Writes one layer into `dir`.
pub fn materialize_layer(dir: &Path, layer: &LayerSpec, format: Format, mut rng: Option<&mut Rng>) {
    let mut dir_fixups: Vec<(PathBuf, u32)> = Vec::new();
    let mut time_fixups: Vec<(PathBuf, (i64, i64))> = Vec::new();
    for node in &layer.nodes {
        let p = dir.join(&node.path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {parent:?}: {e}"));
        }
        match &node.kind {
            NodeKind::File(content) => {
                sys::write_file(&p, content, 0o644)
                    .unwrap_or_else(|e| panic!("create {p:?}: {}", errno_name(e)));
            }
            NodeKind::Dir { opaque } => {
                if sys::lstat(&p).is_err() {
                    sys::mkdir(&p, 0o755)
                        .unwrap_or_else(|e| panic!("mkdir {p:?}: {}", errno_name(e)));
                }
                if let Some(form) = opaque {
                    let form = match (format, form) {
                        (Format::Kernel, _) => OpaqueForm::kernel(),
                        (Format::AsSpecified, Some(f)) => *f,
                        (Format::AsSpecified, None) => OpaqueForm::kernel(),
                        (Format::Mixed(_), Some(f)) => *f,
                        (Format::Mixed(_), None) => {
                            let forms = OpaqueForm::all_usable();
                            *rng.as_deref_mut().expect("rng").pick(&forms)
                        }
                    };
                    write_opaque(&p, form);
                }
            }
            NodeKind::Symlink(target) => {
                symlink(target, &p).unwrap_or_else(|e| panic!("symlink {p:?}: {e}"));
            }
            NodeKind::HardLink(existing) => {
                fs::hard_link(dir.join(existing), &p).unwrap_or_else(|e| panic!("link {p:?}: {e}"));
            }
            NodeKind::Fifo => {
                sys::mkfifo(&p, 0o644)
                    .unwrap_or_else(|e| panic!("mkfifo {p:?}: {}", errno_name(e)));
            }
            NodeKind::CharDev(ma, mi) => {
                sys::mknod(&p, libc::S_IFCHR | 0o644, sys::makedev(*ma, *mi))
                    .unwrap_or_else(|e| panic!("mknod {p:?}: {}", errno_name(e)));
            }
            NodeKind::Whiteout(form) => {
                let form = match (format, form) {
                    (Format::Kernel, _) => WhiteoutForm::CharDev,
                    (Format::AsSpecified, Some(f)) => *f,
                    (Format::AsSpecified, None) => WhiteoutForm::CharDev,
                    (Format::Mixed(_), Some(f)) => *f,
                    (Format::Mixed(_), None) => {
                        *rng.as_deref_mut().expect("rng").pick(&ALL_WHITEOUT_FORMS)
                    }
                };
                write_whiteout(&p, form);
            }
        }
        let is_dir = matches!(node.kind, NodeKind::Dir { .. });
        let is_link = matches!(node.kind, NodeKind::Symlink(_));
        if let Some((uid, gid)) = node.owner {
            sys::lchown(&p, uid, gid).unwrap_or_else(|e| panic!("chown {p:?}: {}", errno_name(e)));
        }
        if !is_link {
            if let Some(m) = node.mode {
                if is_dir {
                    dir_fixups.push((p.clone(), m));
                } else {
                    sys::chmod(&p, m).unwrap_or_else(|e| panic!("chmod {p:?}: {}", errno_name(e)));
                }
            }
        }
        for (name, value) in &node.xattrs {
            sys::lsetxattr(&p, name, value, 0)
                .unwrap_or_else(|e| panic!("setxattr {name} on {p:?}: {}", errno_name(e)));
        }
        if let Some(t) = node.times {
            time_fixups.push((p.clone(), t));
        }
    }
    // Directory modes last so restrictive modes do not get in the way, then
    // times, deepest first, so later creations do not disturb them.
    for (p, m) in dir_fixups {
        sys::chmod(&p, m).unwrap_or_else(|e| panic!("chmod {p:?}: {}", errno_name(e)));
    }
    time_fixups.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, (a, m)) in time_fixups {
        sys::lutimes(&p, (a, 0), (m, 0))
            .unwrap_or_else(|e| panic!("utimes {p:?}: {}", errno_name(e)));
    }
}

pub fn write_whiteout(p: &Path, form: WhiteoutForm) {
    match form {
        WhiteoutForm::CharDev => sys::mknod(p, libc::S_IFCHR, 0)
            .unwrap_or_else(|e| panic!("mknod whiteout {p:?}: {}", errno_name(e))),
        WhiteoutForm::WhFile => {
            let name = p.file_name().expect("whiteout name").as_bytes();
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(name);
            let wp = p.with_file_name(OsStr::from_bytes(&wh));
            sys::write_file(&wp, b"", 0o644)
                .unwrap_or_else(|e| panic!("create {wp:?}: {}", errno_name(e)));
        }
    }
}

pub fn write_opaque(dir: &Path, form: OpaqueForm) {
    let set = |name: &str| {
        sys::lsetxattr(dir, name, b"y", 0)
            .unwrap_or_else(|e| panic!("set {name} on {dir:?}: {}", errno_name(e)))
    };
    match form {
        OpaqueForm::Trusted => set("trusted.overlay.opaque"),
        OpaqueForm::UserOverlay => set("user.overlay.opaque"),
        OpaqueForm::UserFuseOverlayfs => set("user.fuseoverlayfs.opaque"),
        OpaqueForm::WhOpqFile => sys::write_file(&dir.join(".wh..wh..opq"), b"", 0o644)
            .unwrap_or_else(|e| panic!("create .wh..wh..opq in {dir:?}: {}", errno_name(e))),
    }
}

/// A materialised stack: `root/lower{i}`, `root/upper`, `root/work`,
/// `root/mnt`. Removed when dropped; drop mounts first.
pub struct Stack {
    pub root: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mnt: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Stack {
    pub fn upper(&self) -> &Path {
        self.upper.as_deref().expect("stack has an upper layer")
    }
    pub fn work(&self) -> &Path {
        self.work.as_deref().expect("stack has a work dir")
    }
    pub fn mount_strata(&self) -> Mount {
        mount_stratafs(
            &self.lowers,
            self.upper.as_deref(),
            self.work.as_deref(),
            &self.mnt,
        )
    }
    /// `mount_strata` with more `-o` options (`extra`, comma-separated).
    pub fn mount_strata_with(&self, extra: &str) -> Mount {
        let opts = format!(
            "{},{extra}",
            overlay_opts(&self.lowers, self.upper.as_deref(), self.work.as_deref())
        );
        spawn_stratafs(&["-f".to_string(), "-o".to_string(), opts], &self.mnt)
            .unwrap_or_else(|e| panic!("{e}"))
    }
    pub fn try_mount_strata(&self) -> Result<Mount, String> {
        try_mount_stratafs(
            &self.lowers,
            self.upper.as_deref(),
            self.work.as_deref(),
            &self.mnt,
        )
    }
    pub fn mount_kernel(&self) -> Mount {
        mount_kernel(
            &self.lowers,
            self.upper.as_deref(),
            self.work.as_deref(),
            &self.mnt,
        )
    }
    /// Path inside the mountpoint.
    pub fn m(&self, rel: &str) -> PathBuf {
        join_rel(&self.mnt, rel)
    }
    /// Path inside the upper layer.
    pub fn u(&self, rel: &str) -> PathBuf {
        join_rel(self.upper(), rel)
    }
    /// Path inside lower layer `i`.
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        join_rel(&self.lowers[i], rel)
    }
    /// Entries stratafs left in `W/work/` (missing dir = none).
    pub fn strata_work_entries(&self) -> Vec<(String, Kind)> {
        let wd = self.work().join("work");
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(&wd) {
            for e in rd.flatten() {
                let kind = e.metadata().map(|m| kind_of(&m)).unwrap_or(Kind::Unknown);
                out.push((e.file_name().to_string_lossy().into_owned(), kind));
            }
        }
        out.sort();
        out
    }
}

pub fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

// ---------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub mount_opts: String,
    pub super_opts: String,
}

fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

pub fn mountinfo() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let (pre, post) = match line.split_once(" - ") {
            Some(x) => x,
            None => continue,
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 6 || post.len() < 3 {
            continue;
        }
        out.push(MountInfo {
            mount_point: PathBuf::from(unescape_mountinfo(pre[4])),
            fstype: post[0].to_string(),
            mount_opts: pre[5].to_string(),
            super_opts: post[2].to_string(),
        });
    }
    out
}

/// Number of mounts stacked on `mnt`.
pub fn mounts_at(mnt: &Path) -> usize {
    mountinfo().iter().filter(|m| m.mount_point == mnt).count()
}

/// The last (topmost) mount on `mnt`, if any.
pub fn mount_at(mnt: &Path) -> Option<MountInfo> {
    mountinfo().into_iter().rfind(|m| m.mount_point == mnt)
}

pub fn is_mounted_with(mnt: &Path, fstype: &str) -> bool {
    mount_at(mnt).is_some_and(|m| m.fstype == fstype)
}

/// Escapes `\`, `:` and `,` in a path used inside `-o` option values.
pub fn escape_opt_path(p: &Path) -> String {
    let s = p.to_str().expect("utf-8 path");
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn overlay_opts(lowers: &[PathBuf], upper: Option<&Path>, work: Option<&Path>) -> String {
    let lower: Vec<String> = lowers.iter().map(|p| escape_opt_path(p)).collect();
    let mut opts = format!("lowerdir={}", lower.join(":"));
    if let Some(u) = upper {
        opts.push_str(&format!(",upperdir={}", escape_opt_path(u)));
    }
    if let Some(w) = work {
        opts.push_str(&format!(",workdir={}", escape_opt_path(w)));
    }
    opts
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Strata,
    Kernel,
}

/// A live mount. Dropping it always unmounts (fusermount3 -u, then a lazy
/// umount) and reaps the daemon.
pub struct Mount {
    pub kind: MountKind,
    pub mnt: PathBuf,
    /// fstype shown in mountinfo once the mount went live.
    pub fstype: String,
    base_mounts: usize,
    child: Option<Child>,
    stderr: Option<fs::File>,
    done: bool,
}

pub type StrataMount = Mount;
pub type KernelMount = Mount;

impl Mount {
    pub fn path(&self) -> &Path {
        &self.mnt
    }
    /// The daemon's pid (stratafs mounts only).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// Wait for the daemon to exit by itself (after a signal or an
    /// unmount); its exit status, or `None` after `timeout`.
    pub fn wait_daemon(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    pub fn p(&self, rel: &str) -> PathBuf {
        join_rel(&self.mnt, rel)
    }

    /// What the daemon wrote to stderr so far.
    pub fn daemon_stderr(&self) -> String {
        read_captured(self.stderr.as_ref())
    }

    /// Unmounts and returns the daemon's exit status (None for kernel
    /// mounts or when the daemon had to be killed).
    pub fn unmount(mut self) -> Option<ExitStatus> {
        self.do_unmount()
    }

    fn do_unmount(&mut self) -> Option<ExitStatus> {
        if self.done {
            return None;
        }
        self.done = true;
        match self.kind {
            MountKind::Kernel => {
                if sys::umount2(&self.mnt, 0).is_err() {
                    let _ = sys::umount2(&self.mnt, libc::MNT_DETACH);
                }
                None
            }
            MountKind::Strata => {
                // Anything mounted on our private mountpoint above what was
                // there before the daemon started is ours.
                for attempt in 0..3 {
                    if mounts_at(&self.mnt) <= self.base_mounts {
                        break;
                    }
                    match attempt {
                        0 => {
                            let _ = Command::new("fusermount3")
                                .arg("-u")
                                .arg("-q")
                                .arg(&self.mnt)
                                .stdin(Stdio::null())
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .status();
                        }
                        1 => {
                            let _ = sys::umount2(&self.mnt, 0);
                        }
                        _ => {
                            let _ = sys::umount2(&self.mnt, libc::MNT_DETACH);
                        }
                    }
                }
                let mut child = self.child.take()?;
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match child.try_wait() {
                        Ok(Some(st)) => return Some(st),
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        _ => {
                            eprintln!(
                                "warning: stratafs daemon did not exit after unmount; killing it"
                            );
                            let _ = child.kill();
                            let _ = child.wait();
                            return None;
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.do_unmount();
    }
}

fn read_captured(f: Option<&fs::File>) -> String {
    let Some(f) = f else { return String::new() };
    let Ok(mut f) = f.try_clone() else {
        return String::new();
    };
    let mut s = String::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s
}

pub fn mount_stratafs(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
) -> StrataMount {
    try_mount_stratafs(lowers, upper, work, mnt).unwrap_or_else(|e| panic!("{e}"))
}

/// Spawns `stratafs -f -o ... MNT` and waits until the mount is live.
pub fn try_mount_stratafs(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
) -> Result<StrataMount, String> {
    let opts = overlay_opts(lowers, upper, work);
    spawn_stratafs(&["-f".to_string(), "-o".to_string(), opts], mnt)
}

/// Spawns the daemon with arbitrary arguments followed by `mnt` and waits
/// until mountinfo shows `mnt` with the stratafs fstype.
pub fn spawn_stratafs(args: &[String], mnt: &Path) -> Result<StrataMount, String> {
    let bin = stratafs_bin();
    let override_fstype = std::env::var("STRATAFS_TEST_FSTYPE").ok();
    let base_mounts = mounts_at(mnt);
    let stderr = tempfile::tempfile().map_err(|e| format!("stderr capture file: {e}"))?;
    let child = Command::new(&bin)
        .args(args)
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot spawn {bin:?}: {e}"))?;
    let mut m = Mount {
        kind: MountKind::Strata,
        mnt: mnt.to_path_buf(),
        fstype: String::new(),
        base_mounts,
        child: Some(child),
        stderr: Some(stderr),
        done: false,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The exact fstype (`fuse.stratafs`) is asserted by the CLI tests;
        // here any FUSE mount on the mountpoint means the daemon is up, so
        // one wrong detail does not fail every test.
        if mounts_at(mnt) > base_mounts {
            if let Some(mi) = mount_at(mnt) {
                let accepted = match &override_fstype {
                    Some(f) => &mi.fstype == f,
                    None => mi.fstype == "fuse" || mi.fstype.starts_with("fuse."),
                };
                if accepted {
                    m.fstype = mi.fstype;
                    return Ok(m);
                }
            }
        }
        if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            let err = m.daemon_stderr();
            m.child = None;
            m.done = mounts_at(mnt) <= base_mounts;
            return Err(format!(
                "stratafs exited before the mount went live ({st}); args {args:?} {mnt:?}\n--- daemon stderr ---\n{err}"
            ));
        }
        if Instant::now() > deadline {
            let err = m.daemon_stderr();
            drop(m);
            return Err(format!(
                "timed out waiting for a FUSE mount on {mnt:?} in mountinfo; args {args:?}\n--- daemon stderr ---\n{err}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Mounts the kernel overlay (the oracle) on `mnt`.
pub fn mount_kernel(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
) -> KernelMount {
    let mut opts = overlay_opts(lowers, upper, work);
    if is_rootless() {
        opts.push_str(",userxattr");
    }
    let flags = if upper.is_none() { libc::MS_RDONLY } else { 0 };
    sys::mount("overlay", mnt, "overlay", flags, &opts)
        .unwrap_or_else(|e| panic!("mount -t overlay -o {opts} {mnt:?}: {}", errno_name(e)));
    Mount {
        kind: MountKind::Kernel,
        mnt: mnt.to_path_buf(),
        fstype: "overlay".to_string(),
        base_mounts: 0,
        child: None,
        stderr: None,
        done: false,
    }
}

/// A scratch tmpfs mounted on `dir`, unmounted on drop.
pub struct TmpfsMount {
    pub path: PathBuf,
}

impl TmpfsMount {
    pub fn new(dir: &Path) -> Result<TmpfsMount, i32> {
        Self::with_options(dir, "size=64m,mode=0755")
    }

    /// A tmpfs with the given mount options (e.g. `size=8m,nr_inodes=64`).
    pub fn with_options(dir: &Path, opts: &str) -> Result<TmpfsMount, i32> {
        fs::create_dir_all(dir).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        sys::mount("tmpfs", dir, "tmpfs", 0, opts)?;
        Ok(TmpfsMount {
            path: dir.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        if sys::umount2(&self.path, 0).is_err() {
            let _ = sys::umount2(&self.path, libc::MNT_DETACH);
        }
    }
}

// ---------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
    Unknown,
}

pub fn kind_of(m: &fs::Metadata) -> Kind {
    let ft = m.file_type();
    if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        Kind::Unknown
    }
}

/// Metadata of one entry as seen through lstat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits including suid/sgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size (regular files only).
    pub size: Option<u64>,
    /// FNV-1a of the contents (regular files only).
    pub hash: Option<u64>,
    pub target: Option<String>,
    pub nlink: u64,
    /// All listed xattrs (values included).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub rdev: Option<(u32, u32)>,
    pub mtime: (i64, i64),
    /// Opaque marker (upper snapshots only).
    pub opaque: bool,
    /// (st_dev, st_ino), not compared by [`diff_snapshots`].
    pub ino: (u64, u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Whiteout,
    Node(Meta),
}

impl Entry {
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Entry::Node(m) => Some(m),
            Entry::Whiteout => None,
        }
    }
}

/// Path ("" is the root, "a/b" below it) -> entry.
pub type Snapshot = BTreeMap<String, Entry>;

pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Overlay metadata: kernel overlayfs (`origin`, `impure`, ...),
/// fuse-overlayfs, and stratafs's own (`stratafs.origin`, the inode number
/// a copied-up object keeps).
fn is_private_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name.starts_with("user.fuseoverlayfs.")
        || name.starts_with("trusted.stratafs.")
        || name.starts_with("user.stratafs.")
}

fn is_opaque_xattr(name: &str) -> bool {
    matches!(
        name,
        "trusted.overlay.opaque" | "user.overlay.opaque" | "user.fuseoverlayfs.opaque"
    )
}

fn read_meta(p: &Path, md: &fs::Metadata) -> Meta {
    let kind = kind_of(md);
    let (size, hash) = if kind == Kind::File {
        let data = sys::read_all(p).unwrap_or_else(|e| panic!("read {p:?}: {}", errno_name(e)));
        (Some(md.size()), Some(fnv1a(&data)))
    } else {
        (None, None)
    };
    let target = if kind == Kind::Symlink {
        let t = sys::readlink(p).unwrap_or_else(|e| panic!("readlink {p:?}: {}", errno_name(e)));
        Some(String::from_utf8_lossy(&t).into_owned())
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    if let Ok(names) = sys::llistxattr(p) {
        for n in names {
            if let Ok(v) = sys::lgetxattr(p, &n) {
                xattrs.insert(n, v);
            } else {
                xattrs.insert(n, b"<unreadable>".to_vec());
            }
        }
    }
    let rdev = if matches!(kind, Kind::CharDev | Kind::BlockDev) {
        Some((sys::major(md.rdev()), sys::minor(md.rdev())))
    } else {
        None
    };
    Meta {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size,
        hash,
        target,
        nlink: md.nlink(),
        xattrs,
        rdev,
        mtime: (md.mtime(), md.mtime_nsec()),
        opaque: false,
        ino: (md.dev(), md.ino()),
    }
}

fn sorted_children(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {dir:?}: {e}"))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("readdir {dir:?}: {e}"))
                .file_name()
        })
        .collect();
    names.sort();
    names
}

fn rel_join(rel: &str, name: &OsStr) -> String {
    let n = name.to_string_lossy();
    if rel.is_empty() {
        n.into_owned()
    } else {
        format!("{rel}/{n}")
    }
}

/// Walks the merged tree (lstat, no symlink following).
pub fn snapshot_view(mnt: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    walk_view(mnt, "", &mut out);
    out
}

fn walk_view(base: &Path, rel: &str, out: &mut Snapshot) {
    let p = join_rel(base, rel);
    let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
    let meta = read_meta(&p, &md);
    let is_dir = meta.kind == Kind::Dir;
    out.insert(rel.to_string(), Entry::Node(meta));
    if is_dir {
        for name in sorted_children(&p) {
            walk_view(base, &rel_join(rel, &name), out);
        }
    }
}

/// The upper layer normalised to overlay semantics: whiteouts of either form
/// become [`Entry::Whiteout`] at the hidden name, opaque markers of any form
/// set `Meta::opaque`, and overlay-private xattrs are dropped.
pub fn snapshot_upper(upper: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    walk_upper(upper, "", &mut out);
    out
}

fn walk_upper(base: &Path, rel: &str, out: &mut Snapshot) {
    let p = join_rel(base, rel);
    let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
    let mut meta = read_meta(&p, &md);
    if meta.kind == Kind::CharDev && md.rdev() == 0 {
        out.insert(rel.to_string(), Entry::Whiteout);
        return;
    }
    let is_dir = meta.kind == Kind::Dir;
    if is_dir {
        meta.opaque = meta
            .xattrs
            .iter()
            .any(|(n, v)| is_opaque_xattr(n) && v.as_slice() == b"y");
    }
    meta.xattrs.retain(|n, _| !is_private_xattr(n));
    let mut children = Vec::new();
    if is_dir {
        for name in sorted_children(&p) {
            let b = name.as_bytes();
            if b == b".wh..wh..opq" {
                meta.opaque = true;
            } else if let Some(hidden) = b.strip_prefix(b".wh.") {
                let key = rel_join(rel, OsStr::from_bytes(hidden));
                let key = if out.contains_key(&key)
                    || children.iter().any(|c: &OsString| c.as_bytes() == hidden)
                {
                    format!("{key} (+.wh. whiteout)")
                } else {
                    key
                };
                out.insert(key, Entry::Whiteout);
            } else {
                children.push(name);
            }
        }
    }
    out.insert(rel.to_string(), Entry::Node(meta));
    for name in children {
        let key = rel_join(rel, &name);
        if out.get(&key) == Some(&Entry::Whiteout) {
            // A real entry beside a `.wh.` file for the same name.
            out.remove(&key);
            out.insert(format!("{key} (+.wh. whiteout)"), Entry::Whiteout);
        }
        walk_upper(base, &key, out);
    }
}

/// What [`diff_snapshots`] compares besides the always-compared fields.
#[derive(Clone, Debug, Default)]
pub struct CmpOpts {
    /// Compare st_nlink of directories.
    pub dir_nlink: bool,
    /// Compare mtimes of exactly these paths.
    pub mtime_paths: BTreeSet<String>,
    /// Compare mtimes of every entry.
    pub all_mtimes: bool,
}

impl CmpOpts {
    pub fn with_dir_nlink() -> Self {
        CmpOpts {
            dir_nlink: true,
            ..Default::default()
        }
    }
}

fn normalized(path: &str, e: &Entry, opts: &CmpOpts) -> Entry {
    match e {
        Entry::Whiteout => Entry::Whiteout,
        Entry::Node(m) => {
            let mut m = m.clone();
            m.ino = (0, 0);
            if m.kind == Kind::Dir && !opts.dir_nlink {
                m.nlink = 0;
            }
            if !(opts.all_mtimes || opts.mtime_paths.contains(path)) {
                m.mtime = (0, 0);
            }
            Entry::Node(m)
        }
    }
}

/// Human-readable differences between two snapshots (empty = equal).
/// `a` is labelled `left`, `b` `right`.
pub fn diff_snapshots(a: &Snapshot, b: &Snapshot, opts: &CmpOpts) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(format!("{k:?}: only left: {}", fmt_entry(x))),
            (None, Some(y)) => out.push(format!("{k:?}: only right: {}", fmt_entry(y))),
            (Some(x), Some(y)) => {
                let (nx, ny) = (normalized(k, x, opts), normalized(k, y, opts));
                if nx != ny {
                    out.push(format!(
                        "{k:?}: left {} != right {}",
                        fmt_entry(&nx),
                        fmt_entry(&ny)
                    ));
                }
            }
            (None, None) => unreachable!(),
        }
    }
    out
}

pub fn fmt_entry(e: &Entry) -> String {
    match e {
        Entry::Whiteout => "WHITEOUT".to_string(),
        Entry::Node(m) => format!("{m}"),
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:04o} {}:{} nlink={}",
            self.kind, self.mode, self.uid, self.gid, self.nlink
        )?;
        if let Some(s) = self.size {
            write!(f, " size={s}")?;
        }
        if let Some(h) = self.hash {
            write!(f, " hash={h:016x}")?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {t:?}")?;
        }
        if let Some((ma, mi)) = self.rdev {
            write!(f, " rdev={ma}:{mi}")?;
        }
        if self.opaque {
            write!(f, " OPAQUE")?;
        }
        if self.mtime != (0, 0) {
            write!(f, " mtime={}.{:09}", self.mtime.0, self.mtime.1)?;
        }
        if !self.xattrs.is_empty() {
            let xs: Vec<String> = self
                .xattrs
                .iter()
                .map(|(k, v)| format!("{k}={:?}", String::from_utf8_lossy(v)))
                .collect();
            write!(f, " xattrs[{}]", xs.join(", "))?;
        }
        Ok(())
    }
}

pub fn fmt_snapshot(s: &Snapshot) -> String {
    let mut out = String::new();
    for (k, v) in s {
        out.push_str(&format!("  {:?}: {}\n", k, fmt_entry(v)));
    }
    out
}

/// Groups of paths (non-directories) that share one (st_dev, st_ino),
/// only groups with more than one member.
pub fn hardlink_groups(s: &Snapshot) -> BTreeSet<Vec<String>> {
    let mut by_ino: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for (k, e) in s {
        if let Entry::Node(m) = e {
            if m.kind != Kind::Dir {
                by_ino.entry(m.ino).or_default().push(k.clone());
            }
        }
    }
    by_ino.into_values().filter(|v| v.len() > 1).collect()
}

/// A recursive listing of a plain directory tree (names, kinds, sizes) used to
/// check that a failed command created nothing.
pub fn tree_listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(p: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(md) = fs::symlink_metadata(p) else {
            return;
        };
        out.push(format!("{rel} {:?} {}", kind_of(&md), md.len()));
        if md.is_dir() {
            for name in sorted_children(p) {
                walk(&p.join(&name), &rel_join(rel, &name), out);
            }
        }
    }
    walk(root, "", &mut out);
    out
}

// ---------------------------------------------------------------------------
// Paired stratafs / kernel overlay fixture
// ---------------------------------------------------------------------------

/// The same logical stack mounted twice: stratafs (on a stack written
/// `AsSpecified`) and the kernel overlay (on a stack written `Kernel`).
/// Fields drop in declaration order: mounts before their stacks.
pub struct Pair {
    pub sm: Mount,
    pub km: Mount,
    pub s: Stack,
    pub k: Stack,
    pub spec: StackSpec,
}

impl Pair {
    pub fn new(spec: &StackSpec) -> Pair {
        Self::with_format(spec, Format::AsSpecified)
    }

    pub fn with_format(spec: &StackSpec, strata_format: Format) -> Pair {
        let k = spec.build(Format::Kernel);
        let s = spec.build(strata_format);
        let km = k.mount_kernel();
        let sm = s.mount_strata();
        Pair {
            sm,
            km,
            s,
            k,
            spec: spec.clone(),
        }
    }

    /// Like [`Pair::new`], with `prepare` run on each built stack (the
    /// kernel's first, then stratafs') before either is mounted: for
    /// contents a [`StackSpec`] cannot describe, such as non-UTF-8 names or
    /// objects beside the layers.
    pub fn with_prepare(spec: &StackSpec, mut prepare: impl FnMut(&Stack)) -> Pair {
        let k = spec.build(Format::Kernel);
        let s = spec.build(Format::AsSpecified);
        prepare(&k);
        prepare(&s);
        let km = k.mount_kernel();
        let sm = s.mount_strata();
        Pair {
            sm,
            km,
            s,
            k,
            spec: spec.clone(),
        }
    }

    /// Runs `f` with the stratafs mountpoint and then the kernel one.
    pub fn both<T>(&self, mut f: impl FnMut(&Path) -> T) -> (T, T) {
        let a = f(&self.s.mnt);
        let b = f(&self.k.mnt);
        (a, b)
    }

    /// Runs `f` on both mounts and asserts equal results; returns stratafs'.
    pub fn same<T: PartialEq + fmt::Debug>(&self, what: &str, f: impl FnMut(&Path) -> T) -> T {
        let (a, b) = self.both(f);
        assert_eq!(
            a, b,
            "{what}: stratafs (left) differs from the kernel overlay (right)"
        );
        a
    }

    pub fn view_diff(&self, opts: &CmpOpts) -> Vec<String> {
        diff_snapshots(
            &snapshot_view(&self.s.mnt),
            &snapshot_view(&self.k.mnt),
            opts,
        )
    }

    pub fn upper_diff(&self, opts: &CmpOpts) -> Vec<String> {
        diff_snapshots(
            &snapshot_upper(self.s.upper()),
            &snapshot_upper(self.k.upper()),
            opts,
        )
    }

    /// Asserts the merged views are equal (dir nlink included).
    pub fn assert_same_view(&self) {
        self.assert_same_view_opts(&CmpOpts::with_dir_nlink());
    }

    pub fn assert_same_view_opts(&self, opts: &CmpOpts) {
        let d = self.view_diff(opts);
        assert!(
            d.is_empty(),
            "merged view: stratafs (left) vs kernel overlay (right):\n{}\n--- stratafs view ---\n{}--- kernel view ---\n{}",
            d.join("\n"),
            fmt_snapshot(&snapshot_view(&self.s.mnt)),
            fmt_snapshot(&snapshot_view(&self.k.mnt))
        );
    }

    /// Asserts the normalised upper layers are equal.
    pub fn assert_same_upper(&self) {
        self.assert_same_upper_opts(&CmpOpts::with_dir_nlink());
    }

    pub fn assert_same_upper_opts(&self, opts: &CmpOpts) {
        let d = self.upper_diff(opts);
        assert!(
            d.is_empty(),
            "upper layer: stratafs (left) vs kernel overlay (right):\n{}\n--- stratafs upper ---\n{}--- kernel upper ---\n{}",
            d.join("\n"),
            fmt_snapshot(&snapshot_upper(self.s.upper())),
            fmt_snapshot(&snapshot_upper(self.k.upper()))
        );
    }

    /// Asserts stratafs left no private files in `W/work/` except
    /// whiteout templates (char 0/0).
    pub fn assert_work_clean(&self) {
        assert_work_clean(&self.s);
    }
}

pub fn assert_work_clean(s: &Stack) {
    let left: Vec<_> = s
        .strata_work_entries()
        .into_iter()
        .filter(|(_, k)| *k != Kind::CharDev)
        .collect();
    assert!(left.is_empty(), "stratafs left files in W/work: {left:?}");
}

/// Returns `Meta` of `rel` in `snap` or panics with the snapshot.
pub fn meta_of<'a>(snap: &'a Snapshot, rel: &str) -> &'a Meta {
    match snap.get(rel) {
        Some(Entry::Node(m)) => m,
        other => panic!(
            "{rel:?}: expected a node, got {other:?}\n{}",
            fmt_snapshot(snap)
        ),
    }
}

/// Names in a directory via std (no "." / "..").
pub fn list_dir(p: &Path) -> Result<Vec<String>, i32> {
    let rd = io_errno(fs::read_dir(p))?;
    let mut v = Vec::new();
    for e in rd {
        let e = io_errno(e)?;
        v.push(e.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

/// Runs a command with a timeout; returns (status, stdout, stderr) or None
/// when it had to be killed.
pub fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Option<(ExitStatus, String, String)> {
    let out = tempfile::tempfile().expect("tempfile");
    let err = tempfile::tempfile().expect("tempfile");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return Some((st, read_captured(Some(&out)), read_captured(Some(&err))));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that `r` failed with errno `e`.
#[track_caller]
pub fn assert_errno<T: fmt::Debug>(r: Result<T, i32>, e: i32, what: &str) {
    match r {
        Err(got) if got == e => {}
        Err(got) => panic!(
            "{what}: expected {}, got {}",
            errno_name(e),
            errno_name(got)
        ),
        Ok(v) => panic!("{what}: expected {}, got success ({v:?})", errno_name(e)),
    }
}

/// Asserts that `r` succeeded and returns the value.
#[track_caller]
pub fn assert_ok<T>(r: Result<T, i32>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: expected success, got {}", errno_name(e)),
    }
}

/// The file's content, panicking with the errno on failure.
#[track_caller]
pub fn read_string(p: &Path) -> String {
    match sys::read_all(p) {
        Ok(v) => String::from_utf8_lossy(&v).into_owned(),
        Err(e) => panic!("read {p:?}: {}", errno_name(e)),
    }
}

/// `opendir`/`readdir`/`telldir`/`seekdir` through libc.
pub struct LibcDir(*mut libc::DIR);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEnt {
    pub name: String,
    pub ino: u64,
    pub dtype: u8,
}

impl LibcDir {
    pub fn open(p: &Path) -> Result<LibcDir, i32> {
        let c = cpath(p);
        let d = unsafe { libc::opendir(c.as_ptr()) };
        if d.is_null() {
            Err(errno())
        } else {
            Ok(LibcDir(d))
        }
    }
    /// Next entry; `Ok(None)` at the end.
    pub fn next_entry(&mut self) -> Result<Option<DirEnt>, i32> {
        unsafe { *libc::__errno_location() = 0 };
        let e = unsafe { libc::readdir(self.0) };
        if e.is_null() {
            let err = errno();
            return if err == 0 { Ok(None) } else { Err(err) };
        }
        let e = unsafe { &*e };
        let name = unsafe { std::ffi::CStr::from_ptr(e.d_name.as_ptr()) };
        Ok(Some(DirEnt {
            name: name.to_string_lossy().into_owned(),
            ino: e.d_ino,
            dtype: e.d_type,
        }))
    }
    pub fn tell(&mut self) -> i64 {
        unsafe { libc::telldir(self.0) as i64 }
    }
    pub fn seek(&mut self, pos: i64) {
        unsafe { libc::seekdir(self.0, pos as libc::c_long) }
    }
    pub fn rewind(&mut self) {
        unsafe { libc::rewinddir(self.0) }
    }
    pub fn all(&mut self) -> Vec<DirEnt> {
        let mut v = Vec::new();
        while let Some(e) = self.next_entry().expect("readdir") {
            v.push(e);
        }
        v
    }
}

impl Drop for LibcDir {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.0) };
    }
}

/// Reads a directory with raw getdents64 calls using a buffer of `bufsize`
/// bytes; returns the names and the number of syscalls that returned data.
pub fn getdents_all(p: &Path, bufsize: usize) -> Result<(Vec<DirEnt>, usize), i32> {
    let fd = sys::open(p, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut buf = vec![0u8; bufsize];
    let mut out = Vec::new();
    let mut calls = 0;
    loop {
        let n = cvt(unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        })? as usize;
        if n == 0 {
            return Ok((out, calls));
        }
        calls += 1;
        let mut off = 0;
        while off < n {
            let ino = u64::from_ne_bytes(buf[off..off + 8].try_into().unwrap());
            let reclen = u16::from_ne_bytes(buf[off + 16..off + 18].try_into().unwrap()) as usize;
            let dtype = buf[off + 18];
            let name_bytes = &buf[off + 19..off + reclen];
            let end = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            out.push(DirEnt {
                name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
                ino,
                dtype,
            });
            off += reclen;
        }
    }
}

/// A mount made by a daemonized `stratafs` (not a child of the test):
/// unmounted on drop, which also ends the daemon.
pub struct ExternalMount {
    mnt: PathBuf,
}

impl ExternalMount {
    pub fn new(mnt: &Path) -> Self {
        ExternalMount {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for ExternalMount {
    fn drop(&mut self) {
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        // Wait for the mount to disappear.
        for _ in 0..200 {
            if mount_at(&self.mnt).is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
