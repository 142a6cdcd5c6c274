//! Small fd helpers shared by the operations.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Stat, Timestamps};

use crate::error::{Errno, Result};
use crate::sys::proc_fd_path;

/// A 64-bit FNV-1a hash of an entry name (listing offsets, directory
/// indexes).
pub fn name_hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A second `O_PATH` descriptor for the same directory.
pub fn dup_path(fd: impl AsFd) -> Result<OwnedFd> {
    rustix::fs::openat(
        fd,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Open the object behind an `O_PATH` descriptor for real I/O.
pub fn reopen(fd: impl AsFd, flags: OFlags) -> Result<OwnedFd> {
    let p = proc_fd_path(fd.as_fd());
    rustix::fs::open(
        p.as_c_str(),
        flags | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
}

/// A readable fd on a directory held as `O_PATH`.
pub fn open_dir_read(fd: impl AsFd) -> Result<OwnedFd> {
    rustix::fs::openat(
        fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// atime and mtime of a stat result.
pub fn times_of(st: &Stat) -> Timestamps {
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
pub fn set_times(fd: impl AsFd, times: &Timestamps) -> Result<()> {
    let p = proc_fd_path(fd.as_fd());
    rustix::fs::utimensat(rustix::fs::CWD, p.as_c_str(), times, AtFlags::empty())
}

/// chmod the object behind `fd` (not for symlinks).
pub fn set_mode(fd: impl AsFd, mode: u32) -> Result<()> {
    let p = proc_fd_path(fd.as_fd());
    rustix::fs::chmodat(
        rustix::fs::CWD,
        p.as_c_str(),
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )
}

/// chown the object behind `fd` (any type, symlinks included).
pub fn set_owner(fd: impl AsFd, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
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

/// Give a new object the caller's ownership, as far as we are permitted.
/// Without privilege (rootless) the object simply stays ours.
pub fn give_to(fd: impl AsFd, uid: u32, gid: u32, st: &Stat) -> Result<()> {
    if st.st_uid == uid && st.st_gid == gid {
        return Ok(());
    }
    match set_owner(fd, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(Errno::PERM) | Err(Errno::INVAL) => Ok(()),
        Err(e) => Err(e),
    }
}
