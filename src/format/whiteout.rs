//! Whiteouts: how a layer says "this name is deleted here".
//!
//! Two forms are read: a character device 0/0 named like the deleted entry
//! (the kernel overlay's form), and an empty file `.wh.NAME` beside it (the
//! AUFS / OCI image layer form). Every name beginning with `.wh.` is a
//! marker and never shows through the mount; `.wh..wh..opq` is the opaque
//! marker (see `opaque`).

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use super::opaque::OPAQUE_FILE;
use crate::error::{Errno, Result};

/// Prefix of AUFS-style whiteout names.
const WH_PREFIX: &[u8] = b".wh.";

/// Whether a stat result is a kernel-format whiteout (char device 0/0).
pub(crate) fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Whether `name` is a marker name (any `.wh.` name) that never shows.
pub(crate) fn is_marker_name(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// What a directory entry named with the `.wh.` prefix means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker<'a> {
    /// `.wh..wh..opq`: the directory is opaque.
    Opaque,
    /// `.wh.NAME`: hides `NAME` of the layers below.
    Hides(&'a [u8]),
    /// A `.wh.` name that names nothing (`.wh.` alone, `.wh..wh.x`).
    Stray,
}

/// Read an entry name as a marker; `None` for an ordinary name.
pub(crate) fn marker(name: &[u8]) -> Option<Marker<'_>> {
    let target = name.strip_prefix(WH_PREFIX)?;
    Some(if name == OPAQUE_FILE {
        Marker::Opaque
    } else if target.is_empty() || is_marker_name(target) {
        Marker::Stray
    } else {
        Marker::Hides(target)
    })
}

/// The AUFS whiteout name for `name`, if it fits in NAME_MAX.
fn wh_name(name: &[u8]) -> Option<Vec<u8>> {
    if name.len() + WH_PREFIX.len() > 255 {
        return None;
    }
    let mut v = Vec::with_capacity(name.len() + WH_PREFIX.len());
    v.extend_from_slice(WH_PREFIX);
    v.extend_from_slice(name);
    Some(v)
}

/// Whether `dir` holds an AUFS whiteout for `name`.
pub(crate) fn has_wh_file(dir: impl AsFd, name: &[u8]) -> bool {
    match wh_name(name) {
        Some(w) => rustix::fs::statat(dir, w.as_slice(), AtFlags::SYMLINK_NOFOLLOW).is_ok(),
        None => false,
    }
}

/// Write the AUFS form of a whiteout, `.wh.NAME`. Beside a real `NAME` in
/// the same directory it hides only the layers below, so it can be made
/// before `NAME` goes away.
pub(crate) fn make_wh_file(dir: impl AsFd, name: &[u8]) -> Result<()> {
    let w = wh_name(name).ok_or(Errno::NAMETOOLONG)?;
    let fd = rustix::fs::openat(
        dir,
        w.as_slice(),
        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o700),
    )?;
    drop(fd);
    Ok(())
}

/// Remove an AUFS whiteout of `name` from `dir` if there is one.
pub(crate) fn remove_wh_file(dir: impl AsFd, name: &[u8]) -> Result<()> {
    let Some(w) = wh_name(name) else {
        return Ok(());
    };
    match rustix::fs::unlinkat(dir, w.as_slice(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names() {
        assert_eq!(marker(b"a"), None);
        assert_eq!(marker(b".whx"), None);
        assert_eq!(marker(b".wh.a"), Some(Marker::Hides(b"a")));
        assert_eq!(marker(b".wh..wh..opq"), Some(Marker::Opaque));
        assert_eq!(marker(b".wh."), Some(Marker::Stray));
        assert_eq!(marker(b".wh..wh.x"), Some(Marker::Stray));
        assert!(is_marker_name(b".wh.."));
        assert_eq!(wh_name(b"f").as_deref(), Some(&b".wh.f"[..]));
        assert_eq!(wh_name(&[b'x'; 252]), None);
        assert!(wh_name(&[b'x'; 251]).is_some());
    }

    #[test]
    fn wh_files_are_made_and_removed() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let fd = rustix::fs::open(dir.path(), OFlags::PATH, Mode::empty())?;
        assert!(!has_wh_file(&fd, b"gone"));
        make_wh_file(&fd, b"gone")?;
        assert!(has_wh_file(&fd, b"gone"));
        assert_eq!(std::fs::metadata(dir.path().join(".wh.gone"))?.len(), 0);
        remove_wh_file(&fd, b"gone")?;
        remove_wh_file(&fd, b"gone")?; // absent: fine
        assert!(!has_wh_file(&fd, b"gone"));
        Ok(())
    }
}
