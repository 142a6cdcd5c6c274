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
                if more_below && has_wh(l, name) {
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
                if i + 1 < n && has_wh(l, name) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The index of the lower directory `l`, read at its first use; `None` for
/// the upper (which changes) or when it cannot be read.
fn index(l: &LayerFd) -> Option<&whiteout::DirIndex> {
    l.wh.as_ref()?
        .get_or_init(|| whiteout::DirIndex::read(&*l.fd).ok())
        .as_ref()
}

/// Whether the layer directory `l` (which lacks `name`) has an AUFS
/// whiteout for `name`.
fn has_wh(l: &LayerFd, name: &[u8]) -> bool {
    match index(l) {
        Some(index) => index.hides(name),
        None => whiteout::has_wh_file(&*l.fd, name),
    }
}

/// `lstat` of `name` in the layer directory `l`. A lower directory's index
/// is read at its first miss; from then on names it lacks cost no system
/// call.
fn stat_in(l: &LayerFd, name: &[u8]) -> Result<Stat> {
    let known = l.wh.as_ref().and_then(|c| c.get()).and_then(|i| i.as_ref());
    if known.is_some_and(|i| i.lacks(name)) {
        return Err(Errno::NOENT);
    }
    let r = rustix::fs::statat(&*l.fd, name, AtFlags::SYMLINK_NOFOLLOW);
    if matches!(r, Err(Errno::NOENT)) && known.is_none() {
        index(l);
    }
    r
}
