//! Helpers for objects held as descriptors.
//!
//! Layer objects are reached relative to a directory descriptor, one name
//! at a time, never following a symlink. Objects held as `O_PATH`
//! descriptors are reached by calls that only take paths (reopen for I/O,
//! chmod, utimes) through `/proc/self/fd/N`, which names exactly that object.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Stat, Timestamps};

use super::raw::proc_fd_path;
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

/// Set times on the object behind `fd` (any type but symlinks).
pub(crate) fn set_times(fd: impl AsFd, times: &Timestamps) -> Result<()> {
    let p = proc_fd_path(fd.as_fd());
    rustix::fs::utimensat(rustix::fs::CWD, p.as_c_str(), times, AtFlags::empty())
}

/// chmod the object behind `fd` (not for symlinks).
pub(crate) fn set_mode(fd: impl AsFd, mode: u32) -> Result<()> {
    let p = proc_fd_path(fd.as_fd());
    rustix::fs::chmodat(
        rustix::fs::CWD,
        p.as_c_str(),
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
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
}
