//! How the overlay holds the objects of the layers.
//!
//! Directories are held open (`O_PATH`): lookups and listings work relative
//! to them. Other objects are reached by name inside their parent's layer
//! directory, so a walk over millions of files costs no descriptor per
//! file; an object whose name is removed while the kernel still knows it (a
//! deleted open file) is pinned as a descriptor first.

use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};

use rustix::fs::{Mode, OFlags, Stat};

use super::dirindex::DirIndex;
use super::names::Name;
use crate::error::Result;
use crate::sys::{fd, xattr};

/// The index of a lower directory, read at the first lookup of a name it
/// lacks. `None` inside means reading it failed and lookups stat instead.
/// Only for directories that never change while mounted (not the upper's).
pub(crate) type IndexCell = OnceLock<Option<DirIndex>>;

/// A directory in one layer, held open.
#[derive(Debug, Clone)]
pub(crate) struct LayerFd {
    /// Layer index in the stack (0 = top).
    pub(crate) layer: usize,
    /// `O_PATH` descriptor of the directory in that layer.
    pub(crate) fd: Arc<OwnedFd>,
    /// Index of a lower directory (`None` for the upper's).
    pub(crate) index: Option<Arc<IndexCell>>,
}

/// How a node reaches one of its backing objects (see the module
/// documentation).
#[derive(Debug, Clone)]
pub(crate) enum Obj {
    /// An open `O_PATH` descriptor of the object.
    Fd(Arc<OwnedFd>),
    /// The entry `name` in the directory `dir`.
    At {
        /// The parent directory in the object's layer.
        dir: Arc<OwnedFd>,
        /// The entry's name.
        name: Name,
    },
}

impl Obj {
    /// The name to share with this object: its own if it is held by name
    /// (`name` then is that name), else a new one.
    pub(crate) fn shared_name(&self, name: &[u8]) -> Name {
        match self {
            Obj::At { name: n, .. } if **n == *name => n.clone(),
            _ => Name::from(name),
        }
    }

    /// An `O_PATH` descriptor of the object (opened now for `At`).
    pub(crate) fn fd(&self) -> Result<Arc<OwnedFd>> {
        match self {
            Obj::Fd(fd) => Ok(fd.clone()),
            Obj::At { dir, name } => Ok(Arc::new(fd::open_path(&**dir, name)?)),
        }
    }

    /// `lstat` of the object.
    pub(crate) fn stat(&self) -> Result<Stat> {
        match self {
            Obj::Fd(fd) => rustix::fs::fstat(&**fd),
            Obj::At { dir, name } => fd::stat_at(&**dir, name),
        }
    }

    /// Open the object for I/O with `flags` (never following a symlink).
    pub(crate) fn open(&self, flags: OFlags) -> Result<OwnedFd> {
        match self {
            Obj::Fd(f) => fd::reopen(&**f, flags),
            Obj::At { dir, name } => rustix::fs::openat(
                &**dir,
                &**name,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            ),
        }
    }

    /// Read an xattr of the object (not following symlinks).
    pub(crate) fn get_xattr(&self, attr: &[u8]) -> Result<Vec<u8>> {
        match self {
            Obj::Fd(fd) => xattr::get(&**fd, attr),
            Obj::At { dir, name } => xattr::get_at(&**dir, name, attr),
        }
    }

    /// List the object's xattr names (not following symlinks).
    pub(crate) fn list_xattr(&self) -> Result<Vec<u8>> {
        match self {
            Obj::Fd(fd) => xattr::list(&**fd),
            Obj::At { dir, name } => xattr::list_at(&**dir, name),
        }
    }

    /// The same object held by descriptor, so that it stays reachable when
    /// its name goes away.
    pub(crate) fn pinned(&self) -> Result<Obj> {
        Ok(Obj::Fd(self.fd()?))
    }
}

/// An object in one layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerObj {
    /// Layer index in the stack (0 = top).
    pub(crate) layer: usize,
    /// The object.
    pub(crate) obj: Obj,
    /// For a lower directory: its index, once read.
    pub(crate) index: Option<Arc<IndexCell>>,
}

impl From<LayerFd> for LayerObj {
    fn from(l: LayerFd) -> LayerObj {
        LayerObj {
            layer: l.layer,
            obj: Obj::Fd(l.fd),
            index: l.index,
        }
    }
}

impl LayerObj {
    /// The directory as a `LayerFd`, if it is held open.
    pub(crate) fn as_dir(&self) -> Option<LayerFd> {
        match &self.obj {
            Obj::Fd(fd) => Some(LayerFd {
                layer: self.layer,
                fd: fd.clone(),
                index: self.index.clone(),
            }),
            Obj::At { .. } => None,
        }
    }
}
