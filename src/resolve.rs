//! Top-down name resolution over the layers of a merged directory.
//!
//! For a name in a directory merged from layer dirs `D0..Dn` (top first):
//! the first layer that has the name decides. A whiteout (char 0/0 there,
//! or `.wh.NAME` beside it in a layer that lacks the name) ends the search
//! with "no such entry". A non-directory hides everything below; a
//! directory merges with same-named directories below until one of them is
//! opaque or a lower layer has a non-directory or a whiteout there.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::error::{Errno, Result};
use crate::inode::LayerFd;
use crate::whiteout;

/// What a name resolves to.
#[derive(Debug)]
pub struct Found {
    /// Stat of the topmost object.
    pub stat: Stat,
    /// The topmost object.
    pub top: LayerFd,
    /// For directories: the same-named directories merged below, top first.
    pub below: Vec<LayerFd>,
}

impl Found {
    /// File type of the result.
    pub fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }
}

/// Open `name` in `dir` without following symlinks, as an `O_PATH` fd.
pub fn open_path(dir: impl AsFd, name: &[u8]) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Resolve `name` over `layers` (top first).
pub fn resolve(layers: &[LayerFd], name: &[u8]) -> Result<Option<Found>> {
    let mut found: Option<Found> = None;
    let n = layers.len();
    for (i, l) in layers.iter().enumerate() {
        let more_below = i + 1 < n;
        match open_path(&*l.fd, name) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd)?;
                if whiteout::is_whiteout(&st) {
                    break;
                }
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                let opaque = is_dir && more_below && whiteout::is_opaque(&fd)?;
                let here = LayerFd {
                    layer: l.layer,
                    fd: Arc::new(fd),
                };
                match &mut found {
                    None => {
                        found = Some(Found {
                            stat: st,
                            top: here,
                            below: Vec::new(),
                        });
                        if !is_dir {
                            break;
                        }
                    }
                    Some(f) => {
                        if !is_dir {
                            break;
                        }
                        f.below.push(here);
                    }
                }
                if opaque {
                    break;
                }
            }
            Err(Errno::NOENT) => {
                if more_below && whiteout::has_wh_file(&*l.fd, name) {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// Whether `name` is visible in `layers`, without opening anything.
pub fn exists(layers: &[LayerFd], name: &[u8]) -> Result<bool> {
    let n = layers.len();
    for (i, l) in layers.iter().enumerate() {
        match rustix::fs::statat(&*l.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => return Ok(!whiteout::is_whiteout(&st)),
            Err(Errno::NOENT) => {
                if i + 1 < n && whiteout::has_wh_file(&*l.fd, name) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}
