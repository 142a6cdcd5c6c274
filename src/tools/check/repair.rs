//! The repairs `stratafs check --repair` makes: each is safe on its own
//! (nothing that can hold data is removed) and leaves what the mount shows
//! unchanged.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode};

use crate::error::{describe, Errno};
use crate::format::opaque::OPAQUE_FILE;
use crate::format::origin::legacy;
use crate::format::upper::Formats;
use crate::format::xattr_names::Ovl;
use crate::sys::{fd, tree, xattr};

/// A repair: run with the upper's formats, says what failed.
pub(crate) type Outcome = Result<(), String>;

/// Remove the empty marker `name` in `dir`.
pub(crate) fn remove(dir: Arc<OwnedFd>, name: Vec<u8>) -> impl FnOnce(&Formats) -> Outcome {
    move |_| rustix::fs::unlinkat(&*dir, name.as_slice(), AtFlags::empty()).map_err(describe)
}

/// Remove `name` in `dir` with everything below it (work-dir leftovers).
pub(crate) fn remove_tree<'a>(
    dir: &'a OwnedFd,
    name: &'a [u8],
    is_dir: bool,
) -> impl FnOnce(&Formats) -> Outcome + 'a {
    move |_| tree::remove_tree(dir, name, is_dir).map_err(describe)
}

/// Replace the whiteout file `wh` in `dir` by a char 0/0 whiteout named
/// `target` (made first: there is always a whiteout).
pub(crate) fn wh_file_to_char(
    dir: Arc<OwnedFd>,
    wh: Vec<u8>,
    target: Vec<u8>,
) -> impl FnOnce(&Formats) -> Outcome {
    move |_| {
        rustix::fs::mknodat(
            &*dir,
            target.as_slice(),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .map_err(|e| format!("mknod: {}", describe(e)))?;
        rustix::fs::unlinkat(&*dir, wh.as_slice(), AtFlags::empty()).map_err(describe)
    }
}

/// Mark `dir` opaque by xattr, in the form the upper accepts.
pub(crate) fn add_opaque_xattr(dir: Arc<OwnedFd>) -> impl FnOnce(&Formats) -> Outcome {
    move |f| f.set_opaque(&*dir).map_err(describe)
}

/// Mark `dir` opaque by xattr, then remove its `.wh..wh..opq` file.
pub(crate) fn opaque_file_to_xattr(dir: Arc<OwnedFd>) -> impl FnOnce(&Formats) -> Outcome {
    move |f| {
        f.set_opaque(&*dir).map_err(describe)?;
        rustix::fs::unlinkat(&*dir, OPAQUE_FILE, AtFlags::empty()).map_err(describe)
    }
}

/// Remove the xattr `xname` of `name` in `dir` (of `dir` itself when
/// `None`).
pub(crate) fn remove_xattr(
    dir: Arc<OwnedFd>,
    name: Option<Vec<u8>>,
    xname: Vec<u8>,
) -> impl FnOnce(&Formats) -> Outcome {
    move |_| {
        let obj = match &name {
            Some(n) => fd::open_path(&*dir, n).map_err(describe)?,
            None => fd::dup_path(&*dir).map_err(describe)?,
        };
        xattr::remove(&obj, &xname).map_err(describe)
    }
}

/// Give `name` in `dir` the kernel origin `record` (written first), then
/// remove the records of earlier versions.
pub(crate) fn legacy_origin(
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    record: Vec<u8>,
) -> impl FnOnce(&Formats) -> Outcome {
    move |f| {
        let obj = fd::open_path(&*dir, &name).map_err(describe)?;
        f.set_ovl(&obj, Ovl::Origin, &record)
            .map_err(|e| format!("writing the origin: {}", describe(e)))?;
        // Only the names present: touching `trusted.` rootless is refused.
        for old in legacy::NAMES
            .into_iter()
            .filter(|n| xattr::get(&obj, n).is_ok())
        {
            match xattr::remove(&obj, old) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(describe(e)),
            }
        }
        Ok(())
    }
}
