//! Attributes and extended attributes: getattr, setattr, readlink, statfs,
//! and the xattr calls. Every change copies the object up first.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{FileType, OFlags, Stat, Timespec, Timestamps, XattrFlags};

use super::copyup::Data;
use super::node::Node;
use super::obj::Obj;
use super::overlay::Overlay;
use crate::error::{Errno, Result};
use crate::format::override_stat::{self, Override, CONTAINERS};
use crate::format::xattr_names;
use crate::sys::{fd, xattr};

/// A time to set.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SetTime {
    /// The current time.
    Now,
    /// This time.
    At(Timespec),
}

/// What a `setattr` changes; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub(crate) struct SetAttr {
    /// Permission bits.
    pub(crate) mode: Option<u32>,
    /// Owner, as shown to clients.
    pub(crate) uid: Option<u32>,
    /// Group, as shown to clients.
    pub(crate) gid: Option<u32>,
    /// Size (truncate).
    pub(crate) size: Option<u64>,
    /// Access time.
    pub(crate) atime: Option<SetTime>,
    /// Modification time.
    pub(crate) mtime: Option<SetTime>,
    /// The open file the change comes through (ftruncate, futimens).
    pub(crate) fh: Option<u64>,
}

/// An upper object a `setattr` changes: a descriptor of it, or its name in
/// its parent directory.
#[derive(Clone, Copy)]
enum Upper<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a [u8]),
}

impl Upper<'_> {
    fn set_owner_and_mode(
        self,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> Result<()> {
        if uid.is_some() || gid.is_some() {
            match self {
                Upper::Fd(f) => fd::set_owner(f, uid, gid)?,
                Upper::At(d, n) => fd::set_owner_at(d, n, uid, gid)?,
            }
        }
        if let Some(m) = mode {
            match self {
                Upper::Fd(f) => fd::set_mode(f, m)?,
                Upper::At(d, n) => fd::set_mode_at(d, n, m)?,
            }
        }
        Ok(())
    }

    fn truncate(self, len: u64) -> Result<()> {
        let f = match self {
            Upper::Fd(f) => fd::reopen(f, OFlags::WRONLY)?,
            Upper::At(d, n) => rustix::fs::openat(
                d,
                n,
                OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
                rustix::fs::Mode::empty(),
            )?,
        };
        rustix::fs::ftruncate(&f, len)
    }

    fn set_times(self, ts: &Timestamps) -> Result<()> {
        match self {
            Upper::Fd(f) => fd::set_times(f, ts),
            Upper::At(d, n) => fd::set_times_at(d, n, ts),
        }
    }
}

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(t)) => t,
    }
}

impl Overlay {
    /// Attributes for `getattr`.
    pub(crate) fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<(Arc<Node>, Stat)> {
        let node = self.node(ino)?;
        // fstat(2) of an open file: ask the open file itself.
        if let Some(st) = fh.and_then(|h| self.handle_stat(h, &node)) {
            return Ok((node, st));
        }
        let st = self.stat_node(&node)?;
        Ok((node, st))
    }

    /// `setattr`: copy up, then apply owner, mode, size and times: through
    /// the open file the change comes with (`fchown`, `futimens`, ...),
    /// else by name in the upper parent. The attributes returned are read
    /// the same way.
    pub(crate) fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Stat> {
        self.writable()?;
        let node = self.node(ino)?;
        let ids = &self.config.ids;
        let uid = match set.uid {
            Some(u) => ids.uid.chown_to_disk(u)?,
            None => None,
        };
        let gid = match set.gid {
            Some(g) => ids.gid.chown_to_disk(g)?,
            None => None,
        };
        let data = if set.size == Some(0) {
            Data::Empty
        } else {
            Data::All
        };
        self.ensure_upper(&node, data)?;
        if set.mode.is_some() && node.kind == FileType::Symlink {
            return Err(Errno::OPNOTSUPP);
        }
        let file = set.fh.and_then(|h| self.file_of(h, &node));
        let file = file.as_deref();
        let owner_or_mode = uid.is_some() || gid.is_some() || set.mode.is_some();
        match self.stack.override_xattr(0).filter(|_| owner_or_mode) {
            Some(name) => {
                let up = self.upper_fd(&node)?.ok_or(Errno::IO)?;
                let real = rustix::fs::fstat(&*up)?;
                if override_stat::applies_to(&real) {
                    // Owner and mode live in the xattr; the inode keeps its
                    // own.
                    let mut ov = self
                        .recorded_override(0, &Obj::Fd(up.clone()), &real)
                        .unwrap_or_else(|| Override::of_stat(&real));
                    ov.uid = uid.unwrap_or(ov.uid);
                    ov.gid = gid.unwrap_or(ov.gid);
                    if let Some(m) = set.mode {
                        ov.perm = m & 0o7777;
                    }
                    xattr::set(&*up, name, ov.format().as_bytes(), XattrFlags::empty())?;
                } else {
                    self.on_upper(&node, file, |u| u.set_owner_and_mode(uid, gid, set.mode))?;
                }
            }
            None if owner_or_mode => {
                self.on_upper(&node, file, |u| u.set_owner_and_mode(uid, gid, set.mode))?;
            }
            None => {}
        }
        if let Some(len) = set.size {
            if node.is_dir() {
                return Err(Errno::ISDIR);
            }
            match file {
                Some(f) if rustix::fs::ftruncate(f, len).is_ok() => {}
                _ => self.on_upper(&node, None, |u| u.truncate(len))?,
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            if node.kind == FileType::Symlink {
                let (parent, name) = node.location();
                let pup = self.node(parent)?.upper().ok_or(Errno::IO)?;
                fd::set_times_at(&*pup, &name, &ts)?;
            } else {
                self.on_upper(&node, file, |u| u.set_times(&ts))?;
            }
        }
        match file {
            Some(f) => {
                let mut st = rustix::fs::fstat(f)?;
                let (layer, obj) = node.top_layer_obj().ok_or(Errno::STALE)?;
                self.present_node(&node, layer, &obj, &mut st);
                Ok(st)
            }
            None => self.stat_node(&node),
        }
    }

    /// The descriptor of open file `fh` if it is a file of `node` (after a
    /// copy-up, the upper copy's).
    fn file_of(&self, fh: u64, node: &Node) -> Option<Arc<OwnedFd>> {
        let f = self.handles.file(fh).ok()?;
        if f.node.ino != node.ino {
            return None;
        }
        self.io_fd(fh).ok()
    }

    /// Run `f` on `node`'s upper object: through `file` where given, else
    /// by name in its upper parent (under that directory's read lock, see
    /// `with_top`) or through the descriptor the node holds.
    fn on_upper<T>(
        &self,
        node: &Node,
        file: Option<&OwnedFd>,
        f: impl Fn(Upper<'_>) -> Result<T>,
    ) -> Result<T> {
        if let Some(fd) = file {
            return f(Upper::Fd(fd.as_fd()));
        }
        self.with_top(node, |layer, obj| {
            if !self.stack.is_upper(layer) {
                return Err(Errno::IO);
            }
            match obj {
                Obj::Fd(fd) => f(Upper::Fd(fd.as_fd())),
                Obj::At { dir, name } => f(Upper::At(dir.as_fd(), name)),
            }
        })
    }

    /// Target of a symlink.
    pub(crate) fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.kind != FileType::Symlink {
            return Err(Errno::INVAL);
        }
        self.with_top(&node, |_, obj| {
            let target = match obj {
                Obj::Fd(fd) => rustix::fs::readlinkat(&**fd, "", Vec::new()),
                Obj::At { dir, name } => rustix::fs::readlinkat(&**dir, &**name, Vec::new()),
            };
            match target {
                Ok(t) => Ok(t.into_bytes()),
                // A symlink kept as a regular file whose override says
                // `symlink`: the target is the file's content.
                Err(Errno::INVAL) => {
                    let fd = obj.open(OFlags::RDONLY)?;
                    let mut buf = vec![0u8; 4096];
                    let n = rustix::io::read(&fd, &mut buf[..])?;
                    buf.truncate(n);
                    Ok(buf)
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Filesystem statistics of the upper layer (or the top lower).
    pub(crate) fn statfs(&self) -> Result<rustix::fs::StatVfs> {
        let l = self.stack.layers.first().ok_or(Errno::IO)?;
        rustix::fs::fstatvfs(&l.root)
    }

    /// Whether layer `layer` keeps `security.*` in the containers override
    /// names (see `format::xattr_names`).
    fn containers_mode(&self, layer: usize) -> bool {
        self.stack.override_xattr(layer) == Some(CONTAINERS)
    }

    /// `getxattr`.
    pub(crate) fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        if xattr_names::is_private(name) {
            return Err(Errno::NODATA);
        }
        let node = self.node(ino)?;
        if node.lower_xattr_free() {
            return Err(Errno::NODATA);
        }
        self.with_top(&node, |layer, top| {
            top.get_xattr(&xattr_names::stored_name(self.containers_mode(layer), name))
        })
    }

    /// `listxattr`.
    pub(crate) fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.lower_xattr_free() {
            return Ok(Vec::new());
        }
        match self.with_top(&node, |layer, top| {
            Ok((self.containers_mode(layer), top.list_xattr()?))
        }) {
            Ok((containers, all)) => Ok(xattr_names::shown_names(containers, &all)),
            Err(Errno::NOTSUP) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// `setxattr`: copy up, then set.
    pub(crate) fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if xattr_names::is_private(name) {
            return Err(Errno::PERM);
        }
        self.writable()?;
        let node = self.node(ino)?;
        let up = self.copy_up_for_xattr(&node)?;
        let stored = xattr_names::stored_name(self.containers_mode(0), name);
        if stored.len() > 255 {
            return Err(Errno::RANGE);
        }
        xattr::set(
            &*up,
            &stored,
            value,
            XattrFlags::from_bits_retain(flags as _),
        )
    }

    /// `removexattr`: copy up, then remove.
    pub(crate) fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        if xattr_names::is_private(name) {
            return Err(Errno::NODATA);
        }
        self.writable()?;
        let node = self.node(ino)?;
        // Removing an absent attribute must not copy anything up.
        self.with_top(&node, |layer, top| {
            top.get_xattr(&xattr_names::stored_name(self.containers_mode(layer), name))
        })?;
        let up = self.copy_up_for_xattr(&node)?;
        xattr::remove(
            &*up,
            &xattr_names::stored_name(self.containers_mode(0), name),
        )
    }

    /// The upper object an xattr change goes to: a node that has one (a
    /// hard-linked file's copy in the index included) is changed there, no
    /// name is linked up (as the kernel overlay does); else a copy-up.
    fn copy_up_for_xattr(&self, node: &Arc<Node>) -> Result<Arc<std::os::fd::OwnedFd>> {
        match self.upper_fd(node)? {
            Some(u) => Ok(u),
            None => self.copy_up(node, Data::All),
        }
    }
}
