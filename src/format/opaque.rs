//! Opaque directories: a directory that hides same-named directories of
//! the layers below it.
//!
//! A directory is opaque when it carries `trusted.overlay.opaque` (the
//! kernel overlay as root), `user.overlay.opaque` (the kernel with
//! `userxattr`, and stratafs rootless) or `user.fuseoverlayfs.opaque` with a
//! value of exactly `y`, or holds a `.wh..wh..opq` file (AUFS / OCI layers).
//! Any other value (`x` marks a directory with xwhiteouts, which only
//! matters in a lower layer) means not opaque, as the kernel reads it.

use std::os::fd::AsFd;

use rustix::fs::AtFlags;

use crate::error::{Errno, Result};
use crate::sys::xattr;

/// Opaque xattr written when trusted xattrs are permitted.
pub(crate) const OPAQUE_TRUSTED: &[u8] = b"trusted.overlay.opaque";
/// Opaque xattr written otherwise (kernel `userxattr` format).
pub(crate) const OPAQUE_USER: &[u8] = b"user.overlay.opaque";
/// Opaque xattr of fuse-overlayfs (read only).
pub(crate) const OPAQUE_FO: &[u8] = b"user.fuseoverlayfs.opaque";
/// Every opaque xattr that is read.
const OPAQUE_XATTRS: [&[u8]; 3] = [OPAQUE_TRUSTED, OPAQUE_USER, OPAQUE_FO];
/// Name of the AUFS-style opaque marker file.
pub(crate) const OPAQUE_FILE: &[u8] = b".wh..wh..opq";

/// Whether an opaque xattr's value makes the directory opaque.
pub(crate) fn means_opaque(value: &[u8]) -> bool {
    value == b"y"
}

/// The opaque xattrs `dir` carries, with their values.
pub(crate) fn opaque_xattrs(dir: impl AsFd) -> Result<Vec<(&'static [u8], Vec<u8>)>> {
    let dir = dir.as_fd();
    let list = match xattr::list(dir) {
        Ok(l) => l,
        Err(Errno::NOTSUP) | Err(Errno::PERM) | Err(Errno::ACCESS) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for n in xattr::names(&list) {
        let Some(known) = OPAQUE_XATTRS.into_iter().find(|k| *k == n) else {
            continue;
        };
        match xattr::get(dir, known) {
            Ok(v) => out.push((known, v)),
            Err(Errno::NODATA) | Err(Errno::PERM) | Err(Errno::ACCESS) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Whether the directory `dir` is opaque.
pub(crate) fn is_opaque(dir: impl AsFd) -> Result<bool> {
    let dir = dir.as_fd();
    for (name, value) in opaque_xattrs(dir)? {
        if means_opaque(&value) {
            return Ok(true);
        }
        log::debug!(
            "opaque xattr {} has value {:?}: not opaque",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(&value)
        );
    }
    Ok(rustix::fs::statat(dir, OPAQUE_FILE, AtFlags::SYMLINK_NOFOLLOW).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags};

    #[test]
    fn only_exactly_y_is_opaque() -> std::io::Result<()> {
        assert!(means_opaque(b"y"));
        for v in [&b"yes"[..], b"Y", b"y\0", b"x", b""] {
            assert!(!means_opaque(v), "{v:?}");
        }
        let dir = tempfile::tempdir()?;
        let fd = rustix::fs::open(dir.path(), OFlags::RDONLY, Mode::empty())?;
        assert!(!is_opaque(&fd)?);
        xattr::set(&fd, OPAQUE_USER, b"yes", rustix::fs::XattrFlags::empty())?;
        assert!(!is_opaque(&fd)?);
        assert_eq!(opaque_xattrs(&fd)?, vec![(OPAQUE_USER, b"yes".to_vec())]);
        xattr::set(&fd, OPAQUE_FO, b"y", rustix::fs::XattrFlags::empty())?;
        assert!(is_opaque(&fd)?);
        Ok(())
    }

    #[test]
    fn opaque_marker_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let fd = rustix::fs::open(dir.path(), OFlags::RDONLY, Mode::empty())?;
        std::fs::write(dir.path().join(".wh..wh..opq"), "")?;
        assert!(is_opaque(&fd)?);
        Ok(())
    }
}
