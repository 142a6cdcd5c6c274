//! Helpers for objects held as descriptors.
//!
//! Layer objects are reached relative to a directory descriptor, one name
//! at a time, never following a symlink. Objects held as `O_PATH`
//! descriptors are reached by calls that only take paths (reopen for I/O,
//! and on kernels without `AT_EMPTY_PATH` forms of them chmod and utimes)
//! through `/proc/self/fd/N`, which names exactly that object.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, Stat, Timestamps};

use super::raw::{fchmod_empty_path, proc_fd_path};
use crate::error::{Errno, Result};

/// Open `name` in `dir` without following symlinks, as an `O_PATH` fd.
pub(crate) fn open_path(dir: impl AsFd, name: &[u8]) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Open the directory `name` in `dir` as an `O_PATH` fd; `ENOTDIR` for
/// anything else, a symlink included.
pub(crate) fn open_dir_path(dir: impl AsFd, name: &[u8]) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `lstat` of `name` in `dir`.
pub(crate) fn stat_at(dir: impl AsFd, name: &[u8]) -> Result<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// A second `O_PATH` descriptor for the same directory.
pub(crate) fn dup_path(fd: impl AsFd) -> Result<OwnedFd> {
    rustix::fs::openat(
        fd,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Open the object behind an `O_PATH` descriptor for real I/O.
pub(crate) fn reopen(fd: impl AsFd, flags: OFlags) -> Result<OwnedFd> {
    let p = proc_fd_path(fd.as_fd());
    rustix::fs::open(
        p.as_c_str(),
        flags | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
}

/// `reopen` for writing (`flags`), also where the mode says the owner may
/// not write: then with owner write permission added for the open and the
/// mode put back at once (the descriptor keeps its access). The owner of a
/// file may write it whatever its mode through a descriptor it had open,
/// which a request without a handle (`no_open`) or a copy of data into a
/// metadata copy has to reopen.
pub(crate) fn reopen_writable(fd: impl AsFd, flags: OFlags) -> Result<OwnedFd> {
    let fd = fd.as_fd();
    match reopen(fd, flags) {
        Err(Errno::ACCESS) => {
            let mode = rustix::fs::fstat(fd)?.st_mode & 0o7777;
            set_mode(fd, mode | 0o200)?;
            let opened = reopen(fd, flags);
            set_mode(fd, mode)?;
            opened
        }
        r => r,
    }
}

/// A readable fd on a directory held as `O_PATH`.
pub(crate) fn open_dir_read(fd: impl AsFd) -> Result<OwnedFd> {
    rustix::fs::openat(
        fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Link the object behind `src` (any descriptor, `O_PATH` included) as
/// `name` in `dir`.
pub(crate) fn link_fd(src: impl AsFd, dir: impl AsFd, name: &[u8]) -> Result<()> {
    let p = proc_fd_path(src.as_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        p.as_c_str(),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )
}

/// atime and mtime of a stat result.
pub(crate) fn times_of(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Set once the kernel refused `utimensat` with `AT_EMPTY_PATH` (before
/// Linux 5.8): from then on times are set through `/proc/self/fd/N`.
static TIMES_BY_PATH: AtomicBool = AtomicBool::new(false);
/// Set once the kernel lacks `fchmodat2` (before Linux 6.6, or a seccomp
/// filter refuses it with `ENOSYS` or `EPERM`): from then on modes are set
/// through `/proc/self/fd/N`.
static MODE_BY_PATH: AtomicBool = AtomicBool::new(false);

/// Try the descriptor form `direct` of a call unless `by_path` says the
/// kernel refused it before, else (or if refused now with one of
/// `refusals`) the `/proc/self/fd/N` form `fallback`. A refusal is
/// remembered only when the path form then does not fail the same way, so
/// that an `EINVAL` or `EPERM` of the arguments themselves does not switch
/// the form. Also used for the xattr reads of `xattr.rs`.
pub(super) fn direct_or_proc<T>(
    by_path: &AtomicBool,
    refusals: &[Errno],
    direct: impl FnOnce() -> Result<T>,
    fallback: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if by_path.load(Ordering::Relaxed) {
        return fallback();
    }
    match direct() {
        Err(refused) if refusals.contains(&refused) => {
            let r = fallback();
            if !matches!(r, Err(e) if e == refused) {
                by_path.store(true, Ordering::Relaxed);
            }
            r
        }
        r => r,
    }
}

/// Set times on the object behind `fd` (any type but symlinks).
pub(crate) fn set_times(fd: impl AsFd, times: &Timestamps) -> Result<()> {
    let fd = fd.as_fd();
    direct_or_proc(
        &TIMES_BY_PATH,
        &[Errno::INVAL],
        || rustix::fs::utimensat(fd, c"", times, AtFlags::EMPTY_PATH),
        || {
            let p = proc_fd_path(fd);
            rustix::fs::utimensat(rustix::fs::CWD, p.as_c_str(), times, AtFlags::empty())
        },
    )
}

/// chmod the object behind `fd` (not for symlinks).
pub(crate) fn set_mode(fd: impl AsFd, mode: u32) -> Result<()> {
    let fd = fd.as_fd();
    direct_or_proc(
        &MODE_BY_PATH,
        &[Errno::NOSYS, Errno::INVAL, Errno::PERM],
        || fchmod_empty_path(fd, mode & 0o7777),
        || {
            let p = proc_fd_path(fd);
            rustix::fs::chmodat(
                rustix::fs::CWD,
                p.as_c_str(),
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
        },
    )
}

/// chown the object behind `fd` (any type, symlinks included).
pub(crate) fn set_owner(fd: impl AsFd, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    rustix::fs::chownat(
        fd,
        "",
        uid.filter(|u| *u != u32::MAX)
            .map(rustix::fs::Uid::from_raw),
        gid.filter(|g| *g != u32::MAX)
            .map(rustix::fs::Gid::from_raw),
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// Give a new object (owned by `now`, uid and gid) the caller's ownership,
/// as far as we are permitted. Without privilege (rootless) the object
/// simply stays ours.
pub(crate) fn give_to(fd: impl AsFd, uid: u32, gid: u32, now: (u32, u32)) -> Result<()> {
    if now == (uid, gid) {
        return Ok(());
    }
    match set_owner(fd, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(Errno::PERM) | Err(Errno::INVAL) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_path_never_follows_symlinks() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|_| Errno::IO)?;
        std::fs::create_dir(dir.path().join("d")).map_err(|_| Errno::IO)?;
        std::os::unix::fs::symlink("d", dir.path().join("link")).map_err(|_| Errno::IO)?;
        let root = rustix::fs::open(dir.path(), OFlags::PATH, Mode::empty())?;
        let link = open_path(&root, b"link")?;
        let st = rustix::fs::fstat(&link)?;
        assert_eq!(
            rustix::fs::FileType::from_raw_mode(st.st_mode),
            rustix::fs::FileType::Symlink
        );
        assert_eq!(open_dir_path(&root, b"link").err(), Some(Errno::NOTDIR));
        assert!(open_dir_path(&root, b"d").is_ok());
        Ok(())
    }

    #[test]
    fn the_path_form_is_taken_only_where_the_direct_call_is_refused() {
        let calls = std::cell::Cell::new(0);
        let flag = AtomicBool::new(false);
        // Direct call works: the path form is never tried.
        let r = direct_or_proc(&flag, &[Errno::INVAL], || Ok(()), || Err(Errno::IO));
        assert_eq!(r, Ok(()));
        assert!(!flag.load(Ordering::Relaxed));
        // Direct call fails otherwise: that is the answer.
        let r = direct_or_proc(&flag, &[Errno::INVAL], || Err(Errno::PERM), || Ok(()));
        assert_eq!(r, Err(Errno::PERM));
        assert!(!flag.load(Ordering::Relaxed));
        // Refused, and the path form fails the same way: the arguments are
        // wrong, not the form; nothing is remembered.
        let r = direct_or_proc::<()>(
            &flag,
            &[Errno::INVAL],
            || Err(Errno::INVAL),
            || Err(Errno::INVAL),
        );
        assert_eq!(r, Err(Errno::INVAL));
        assert!(!flag.load(Ordering::Relaxed));
        // Refused, and the path form works: remembered, and from then on
        // only the path form runs.
        let r = direct_or_proc(&flag, &[Errno::INVAL], || Err(Errno::INVAL), || Ok(()));
        assert_eq!(r, Ok(()));
        assert!(flag.load(Ordering::Relaxed));
        let r = direct_or_proc(
            &flag,
            &[Errno::INVAL],
            || {
                calls.set(calls.get() + 1);
                Ok(())
            },
            || Err(Errno::ACCESS),
        );
        assert_eq!((r, calls.get()), (Err(Errno::ACCESS), 0));
    }

    #[test]
    fn times_and_modes_reach_the_object_behind_an_o_path_descriptor() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|_| Errno::IO)?;
        std::fs::write(dir.path().join("f"), b"x").map_err(|_| Errno::IO)?;
        let root = rustix::fs::open(dir.path(), OFlags::PATH, Mode::empty())?;
        let f = open_path(&root, b"f")?;
        let ts = |s| rustix::fs::Timespec {
            tv_sec: s,
            tv_nsec: 5,
        };
        set_times(
            &f,
            &Timestamps {
                last_access: ts(1_000),
                last_modification: ts(2_000),
            },
        )?;
        set_mode(&f, 0o4751)?;
        let st = rustix::fs::fstat(&f)?;
        assert_eq!((st.st_atime, st.st_atime_nsec), (1_000, 5));
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (2_000, 5));
        assert_eq!(st.st_mode & 0o7777, 0o4751);
        Ok(())
    }
}
