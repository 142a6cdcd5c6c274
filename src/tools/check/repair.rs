//! The repairs `stratafs check --repair` makes: each is safe on its own
//! (nothing that can hold data is removed) and leaves what the mount shows
//! unchanged.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode};

use crate::error::describe;
use crate::format::opaque::OPAQUE_FILE;
use crate::format::upper::Formats;
use crate::sys::tree;

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
