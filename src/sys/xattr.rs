//! Extended attributes of layer objects, read and written without following
//! symlinks. Which names mean what to an overlay is `format::xattr_names`.
//!
//! Layer objects are held as `O_PATH` descriptors, which the `f*xattr`
//! calls refuse; those go through `/proc/self/fd/N` instead.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::XattrFlags;

use super::raw::proc_fd_path;
use crate::error::{Errno, Result};

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

/// Read an attribute of `name` inside directory `dir` without opening it
/// or following it if it is a symlink.
pub(crate) fn get_at(dir: impl AsFd, name: &[u8], attr: &[u8]) -> Result<Vec<u8>> {
    let path = path_at(dir.as_fd(), name);
    sized(|buf| rustix::fs::lgetxattr(path.as_slice(), attr, buf))
}

/// List the attributes of `name` inside directory `dir` without opening it.
pub(crate) fn list_at(dir: impl AsFd, name: &[u8]) -> Result<Vec<u8>> {
    let path = path_at(dir.as_fd(), name);
    sized(|buf| rustix::fs::llistxattr(path.as_slice(), buf))
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
    match rustix::fs::fsetxattr(fd, name, value, flags) {
        Err(Errno::BADF) => rustix::fs::setxattr(proc_fd_path(fd).as_c_str(), name, value, flags),
        r => r,
    }
}

/// Remove an attribute.
pub(crate) fn remove(fd: impl AsFd, name: &[u8]) -> Result<()> {
    let fd = fd.as_fd();
    match rustix::fs::fremovexattr(fd, name) {
        Err(Errno::BADF) => rustix::fs::removexattr(proc_fd_path(fd).as_c_str(), name),
        r => r,
    }
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
