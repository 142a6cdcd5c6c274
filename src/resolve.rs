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
use crate::inode::{LayerFd, LayerObj, Name, Obj};
use crate::whiteout;

/// What a name resolves to.
#[derive(Debug)]
pub struct Found {
    /// Stat of the topmost object.
    pub stat: Stat,
    /// The topmost object (held open if it is a directory, else by name).
    pub top: LayerObj,
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
        let st = match stat_in(l, name) {
            Ok(st) => st,
            Err(Errno::NOENT) => {
                if has_wh(l, name) && more_below {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if whiteout::is_whiteout(&st) {
            break;
        }
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if !is_dir {
            if found.is_none() {
                found = Some(Found {
                    stat: st,
                    top: LayerObj {
                        layer: l.layer,
                        obj: Obj::At {
                            dir: l.fd.clone(),
                            name: Name::from(name),
                        },
                        wh: None,
                    },
                    below: Vec::new(),
                });
            }
            // A non-directory hides everything below it.
            break;
        }
        let fd = Arc::new(rustix::fs::openat(
            &*l.fd,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        let opaque = more_below && whiteout::is_opaque(&*fd)?;
        match &mut found {
            None => {
                found = Some(Found {
                    stat: st,
                    top: LayerObj {
                        layer: l.layer,
                        obj: Obj::Fd(fd),
                        wh: Some(Arc::default()),
                    },
                    below: Vec::new(),
                })
            }
            Some(f) => f.below.push(LayerFd {
                layer: l.layer,
                fd,
                wh: Some(Arc::default()),
            }),
        }
        if opaque {
            break;
        }
    }
    Ok(found)
}

/// Whether `name` is visible in `layers`, without opening anything.
pub fn exists(layers: &[LayerFd], name: &[u8]) -> Result<bool> {
    let n = layers.len();
    for (i, l) in layers.iter().enumerate() {
        match stat_in(l, name) {
            Ok(st) => return Ok(!whiteout::is_whiteout(&st)),
            Err(Errno::NOENT) => {
                if has_wh(l, name) && i + 1 < n {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Whether the layer directory `l` has an AUFS whiteout for `name`. Called
/// when `l` lacks `name`, also where no layer is below: reading the index
/// then spares later lookups of missing names their `stat`.
fn has_wh(l: &LayerFd, name: &[u8]) -> bool {
    let Some(cache) = &l.wh else {
        return whiteout::has_wh_file(&*l.fd, name);
    };
    match cache.get_or_init(|| whiteout::DirIndex::read(&*l.fd).ok()) {
        Some(index) => index.hides(name),
        None => whiteout::has_wh_file(&*l.fd, name),
    }
}

/// `lstat` of `name` in the layer directory `l`; `NOENT` without a system
/// call when the directory's index says it lacks the name.
fn stat_in(l: &LayerFd, name: &[u8]) -> Result<Stat> {
    if let Some(Some(index)) = l.wh.as_ref().and_then(|c| c.get()) {
        if index.lacks(name) {
            return Err(Errno::NOENT);
        }
    }
    rustix::fs::statat(&*l.fd, name, AtFlags::SYMLINK_NOFOLLOW)
}
