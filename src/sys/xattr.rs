//! Extended attributes of layer objects, read and written without following
//! symlinks. Which names mean what to an overlay is `format::xattr_names`.
//!
//! Layer objects are held as `O_PATH` descriptors, which the `f*xattr`
//! calls may refuse (`EBADF`); those go through `/proc/self/fd/N` instead.
//! A refusal is remembered, so that no later call pays for a refused
//! attempt.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::XattrFlags;

use super::fd::direct_or_proc;
use super::raw::{getxattr_at, listxattr_at, proc_fd_path};
use crate::error::{Errno, Result};

/// Set once an `fsetxattr`/`fremovexattr` call refused a descriptor
/// (`EBADF`: an `O_PATH` one on this kernel). From then on every change
/// takes the path form at once: `/proc/self/fd/N` names exactly the
/// object behind any descriptor, so it is right for the others too, and one
/// system call instead of two for the `O_PATH` descriptors that almost
/// every caller holds.
static FD_FORM_REFUSED: AtomicBool = AtomicBool::new(false);

/// Run the descriptor form `by_fd`, or the path form `by_path` where the
/// kernel refuses the first (see `FD_FORM_REFUSED`); both get `buf`.
fn either<T>(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    by_fd: impl FnOnce(&mut [u8]) -> Result<T>,
    by_path: impl FnOnce(&CStr, &mut [u8]) -> Result<T>,
) -> Result<T> {
    if !FD_FORM_REFUSED.load(Ordering::Relaxed) {
        match by_fd(&mut *buf) {
            Err(Errno::BADF) => FD_FORM_REFUSED.store(true, Ordering::Relaxed),
            r => return r,
        }
    }
    by_path(proc_fd_path(fd).as_c_str(), buf)
}

// Reads go through `/proc/self/fd/N` directly: nearly every descriptor
// read from is an `O_PATH` one, which `fgetxattr` would refuse first (one
// system call more per read). The path works for any descriptor.

fn getx(fd: BorrowedFd<'_>, name: &[u8], buf: &mut [u8]) -> Result<usize> {
    rustix::fs::getxattr(proc_fd_path(fd).as_c_str(), name, buf)
}

fn listx(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize> {
    rustix::fs::listxattr(proc_fd_path(fd).as_c_str(), buf)
}

/// Call `f` with a growing buffer until the value fits.
fn sized(mut f: impl FnMut(&mut [u8]) -> Result<usize>) -> Result<Vec<u8>> {
    let mut size = 256usize;
    loop {
        let mut buf = vec![0u8; size];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) if size < (1 << 20) => size *= 4,
            Err(e) => return Err(e),
        }
    }
}

/// Read an attribute; `ENODATA` when absent.
pub(crate) fn get(fd: impl AsFd, name: &[u8]) -> Result<Vec<u8>> {
    let fd = fd.as_fd();
    sized(|buf| getx(fd, name, buf))
}

/// Set once the kernel lacks `getxattrat`/`listxattrat` (before Linux
/// 6.13, or a seccomp filter that refuses system calls it does not know):
/// from then on attributes of a name in a directory are read through
/// `/proc/self/fd/N/NAME`, a path lookup that costs about three times the
/// direct call.
static AT_FORM_MISSING: AtomicBool = AtomicBool::new(false);

/// `direct` (a `*xattrat` call), or where it is refused (`ENOSYS`, or the
/// `EPERM` of a seccomp filter) the same read by `/proc/self/fd/N/NAME`
/// path (`by_path`), by the rule of `fd::direct_or_proc`.
fn at_or_path(
    missing: &AtomicBool,
    dir: BorrowedFd<'_>,
    name: &[u8],
    direct: impl Fn(&CStr, &mut [u8]) -> Result<usize>,
    by_path: impl Fn(&[u8], &mut [u8]) -> Result<usize>,
) -> Result<Vec<u8>> {
    direct_or_proc(
        missing,
        &[Errno::NOSYS, Errno::PERM],
        || {
            // A name with a NUL cannot exist; the lookup fails as it would.
            let c = CString::new(name).map_err(|_| Errno::NOENT)?;
            sized(|buf| direct(&c, buf))
        },
        || sized(|buf| by_path(&path_at(dir, name), buf)),
    )
}

/// Read an attribute of `name` inside directory `dir` without opening it
/// or following it if it is a symlink.
pub(crate) fn get_at(dir: impl AsFd, name: &[u8], attr: &[u8]) -> Result<Vec<u8>> {
    let dir = dir.as_fd();
    let cattr = CString::new(attr).map_err(|_| Errno::INVAL)?;
    at_or_path(
        &AT_FORM_MISSING,
        dir,
        name,
        |c, buf| getxattr_at(dir, c, &cattr, buf),
        |p, buf| rustix::fs::lgetxattr(p, attr, buf),
    )
}

/// List the attributes of `name` inside directory `dir` without opening it.
pub(crate) fn list_at(dir: impl AsFd, name: &[u8]) -> Result<Vec<u8>> {
    let dir = dir.as_fd();
    at_or_path(
        &AT_FORM_MISSING,
        dir,
        name,
        |c, buf| listxattr_at(dir, c, buf),
        |p, buf| rustix::fs::llistxattr(p, buf),
    )
}

fn path_at(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut path = proc_fd_path(dir).into_bytes();
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

/// Set an attribute.
pub(crate) fn set(fd: impl AsFd, name: &[u8], value: &[u8], flags: XattrFlags) -> Result<()> {
    let fd = fd.as_fd();
    either(
        fd,
        &mut [],
        |_| rustix::fs::fsetxattr(fd, name, value, flags),
        |p, _| rustix::fs::setxattr(p, name, value, flags),
    )
}

/// Set an attribute of an object behind a descriptor that is open for
/// reading or writing (not `O_PATH`), such as a copy being written: by the
/// descriptor (`fsetxattr`), which spares the `/proc/self/fd/N` lookup
/// that `set` makes once any `O_PATH` descriptor was refused. Where the
/// kernel refuses the descriptor all the same, the path form.
pub(crate) fn set_open(fd: impl AsFd, name: &[u8], value: &[u8], flags: XattrFlags) -> Result<()> {
    let fd = fd.as_fd();
    match rustix::fs::fsetxattr(fd, name, value, flags) {
        Err(Errno::BADF) => rustix::fs::setxattr(proc_fd_path(fd).as_c_str(), name, value, flags),
        r => r,
    }
}

/// `set_open` for a descriptor that is open when `open`, else `set`.
pub(crate) fn set_on(
    fd: impl AsFd,
    open: bool,
    name: &[u8],
    value: &[u8],
    flags: XattrFlags,
) -> Result<()> {
    if open {
        set_open(fd, name, value, flags)
    } else {
        set(fd, name, value, flags)
    }
}

/// Remove an attribute.
pub(crate) fn remove(fd: impl AsFd, name: &[u8]) -> Result<()> {
    let fd = fd.as_fd();
    either(
        fd,
        &mut [],
        |_| rustix::fs::fremovexattr(fd, name),
        |p, _| rustix::fs::removexattr(p, name),
    )
}

/// All attribute names, as the kernel returns them (NUL-terminated list).
pub(crate) fn list(fd: impl AsFd) -> Result<Vec<u8>> {
    let fd = fd.as_fd();
    sized(|buf| listx(fd, buf))
}

/// Split a NUL-terminated name list.
pub(crate) fn names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|b| *b == 0).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::OwnedFd;

    /// A file in a new temporary directory, held by an `O_PATH` descriptor
    /// and by one opened with `how`.
    fn file_by_both(how: OFlags) -> std::io::Result<(tempfile::TempDir, OwnedFd, OwnedFd)> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("f");
        std::fs::write(&p, b"x")?;
        let path_fd = rustix::fs::open(&p, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
        let file_fd = rustix::fs::open(&p, how | OFlags::CLOEXEC, Mode::empty())?;
        Ok((dir, path_fd, file_fd))
    }

    #[test]
    fn both_descriptor_kinds_reach_the_same_attributes() -> std::io::Result<()> {
        let (_dir, path_fd, file_fd) = file_by_both(OFlags::RDONLY)?;
        match set(&path_fd, b"user.t", b"1", XattrFlags::empty()) {
            Err(Errno::NOTSUP) => return Ok(()), // no user xattrs here
            r => r?,
        }
        assert_eq!(get(&file_fd, b"user.t")?, b"1");
        set(&file_fd, b"user.u", b"2", XattrFlags::empty())?;
        assert_eq!(get(&path_fd, b"user.u")?, b"2");
        for fd in [path_fd.as_fd(), file_fd.as_fd()] {
            let all = list(fd)?;
            let mut n: Vec<&[u8]> = names(&all).collect();
            n.sort();
            assert_eq!(n, [&b"user.t"[..], b"user.u"]);
        }
        remove(&path_fd, b"user.t")?;
        remove(&file_fd, b"user.u")?;
        assert_eq!(get(&file_fd, b"user.t"), Err(Errno::NODATA));
        assert_eq!(get(&path_fd, b"user.u"), Err(Errno::NODATA));
        Ok(())
    }

    #[test]
    fn set_open_reaches_the_object_by_an_open_and_by_an_o_path_descriptor() -> std::io::Result<()> {
        let (_dir, path_fd, file_fd) = file_by_both(OFlags::WRONLY)?;
        match set_open(&file_fd, b"user.o", b"1", XattrFlags::empty()) {
            Err(Errno::NOTSUP) => return Ok(()), // no user xattrs here
            r => r?,
        }
        // Refused by descriptor (`O_PATH`), done by path.
        set_on(&path_fd, true, b"user.p", b"2", XattrFlags::empty())?;
        set_on(&path_fd, false, b"user.q", b"3", XattrFlags::empty())?;
        assert_eq!(get(&path_fd, b"user.o")?, b"1");
        assert_eq!(get(&file_fd, b"user.p")?, b"2");
        assert_eq!(get(&file_fd, b"user.q")?, b"3");
        assert_eq!(
            set_open(&file_fd, b"user.o", b"4", XattrFlags::CREATE),
            Err(Errno::EXIST)
        );
        Ok(())
    }

    #[test]
    fn names_in_a_directory_are_read_without_following_symlinks_in_both_forms(
    ) -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("f"), b"x")?;
        std::os::unix::fs::symlink("f", dir.path().join("l"))?;
        let d = rustix::fs::open(dir.path(), OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
        let f = rustix::fs::open(dir.path().join("f"), OFlags::PATH, Mode::empty())?;
        match set(&f, b"user.t", b"12", XattrFlags::empty()) {
            Err(Errno::NOTSUP) => return Ok(()), // no user xattrs here
            r => r?,
        }
        let direct_get = |name: &[u8], missing: &AtomicBool| {
            let d = d.as_fd();
            at_or_path(
                missing,
                d,
                name,
                |c, buf| getxattr_at(d, c, c"user.t", buf),
                |p, buf| rustix::fs::lgetxattr(p, &b"user.t"[..], buf),
            )
        };
        let direct_list = |name: &[u8], missing: &AtomicBool| {
            let d = d.as_fd();
            at_or_path(
                missing,
                d,
                name,
                |c, buf| listxattr_at(d, c, buf),
                |p, buf| rustix::fs::llistxattr(p, buf),
            )
        };
        // The direct calls (where this kernel has them) and the path form
        // the daemon falls back to answer alike.
        for path_form in [false, true] {
            let missing = AtomicBool::new(path_form);
            assert_eq!(direct_get(b"f", &missing)?, b"12");
            assert_eq!(direct_get(b"l", &missing), Err(Errno::NODATA));
            assert_eq!(direct_get(b"none", &missing), Err(Errno::NOENT));
            assert_eq!(direct_list(b"f", &missing)?, b"user.t\0");
            assert_eq!(direct_list(b"l", &missing)?, b"");
            assert_eq!(missing.load(Ordering::Relaxed), path_form);
        }
        // A refused direct call (no such call, or a seccomp filter's EPERM)
        // falls back to the path form, and is remembered only where the
        // path form answers otherwise.
        let d2 = d.as_fd();
        for refused in [Errno::NOSYS, Errno::PERM] {
            let missing = AtomicBool::new(false);
            let got = at_or_path(
                &missing,
                d2,
                b"f",
                |_, _| Err(refused),
                |p, buf| rustix::fs::lgetxattr(p, &b"user.t"[..], buf),
            );
            assert_eq!(
                (got, missing.load(Ordering::Relaxed)),
                (Ok(b"12".to_vec()), true)
            );
            let missing = AtomicBool::new(false);
            let got = at_or_path(&missing, d2, b"f", |_, _| Err(refused), |_, _| Err(refused));
            assert_eq!(
                (got, missing.load(Ordering::Relaxed)),
                (Err(refused), false)
            );
        }
        // The public forms too.
        assert_eq!(get_at(&d, b"f", b"user.t")?, b"12");
        assert_eq!(get_at(&d, b"l", b"user.t"), Err(Errno::NODATA));
        assert_eq!(list_at(&d, b"l")?, b"");
        Ok(())
    }
}
