//! Attributes and extended attributes: getattr, setattr, readlink, statfs,
//! and the xattr calls. Every change copies the object up first.

use std::os::fd::OwnedFd;
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
    /// Clear setuid and setgid (see `Overlay::drop_privileges`): a
    /// truncate by a caller without `CAP_FSETID`, or a chown.
    pub(crate) kill_suidgid: bool,
    /// The caller's user and group, as the kernel knows them.
    pub(crate) caller: (u32, u32),
}

/// The permission bits left once a write, truncate or chown takes the
/// privileges away: no setuid, no setgid where group execute is set (a
/// setgid without it marks mandatory locking and stays), as the kernel
/// does (`setattr_should_drop_sgid`, and the FUSE protocol's rule for
/// `FUSE_HANDLE_KILLPRIV_V2`).
pub(crate) fn unprivileged(perm: u32) -> u32 {
    let mut p = perm & !libc::S_ISUID;
    if p & libc::S_IXGRP != 0 {
        p &= !libc::S_ISGID;
    }
    p
}

/// The capability xattr, removed by a write, truncate or chown.
const CAPABILITY: &[u8] = b"security.capability";

/// What `Overlay::drop_privileges` did and found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dropped {
    /// Something was taken away (the kernel's cached mode may be stale).
    pub(crate) changed: bool,
    /// The file carries none of the privileges any more (as far as they
    /// are this daemon's to take away).
    pub(crate) clean: bool,
}

impl SetAttr {
    /// Whether the request sets no attribute at all: the kernel's way,
    /// with `FUSE_HANDLE_KILLPRIV_V2`, of passing on a change that only
    /// takes privileges away (`file_remove_privs` before a write,
    /// fallocate or copy_file_range of a caller without `CAP_FSETID`, or
    /// `chown(-1, -1)`). The attributes in the reply are the kernel's from
    /// then on; fallocate and copy_file_range tell nothing else.
    pub(crate) fn only_takes_privileges(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
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

    /// `setattr`: copy up, then apply owner, mode, size and times.
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
        let data = match set.size {
            Some(0) => Data::Empty,
            Some(_) => Data::All,
            None => Data::Meta,
        };
        let up = self.copy_up(&node, data)?;
        if set.mode.is_some() && node.kind == FileType::Symlink {
            return Err(Errno::OPNOTSUPP);
        }
        let chown = set.uid.is_some() || set.gid.is_some();
        if chown || set.mode.is_some() {
            self.handles.privileges_may_have_changed();
        }
        // Whether the privileges a chown or truncate takes away are left
        // to this daemon (the upper's kernel takes them away only where
        // the change reaches the upper file itself, and clears setuid and
        // setgid only for a daemon without CAP_FSETID).
        let overrides = self.stack.override_xattr(0).is_some();
        let kill = set.kill_suidgid
            || (set.only_takes_privileges() && self.may_write(&node, set.caller)?);
        let mut drop = kill || (overrides && (chown || set.size.is_some()));
        // The upper's own attributes matter only under owner/mode overrides.
        let under_override = match self.stack.override_xattr(0) {
            Some(name) if chown || set.mode.is_some() => {
                let real = rustix::fs::fstat(&*up)?;
                override_stat::applies_to(&real).then_some((name, real))
            }
            _ => None,
        };
        match under_override {
            Some((name, real)) => {
                // Owner and mode live in the xattr; the inode keeps its own.
                let mut ov = self
                    .recorded_override(0, &Obj::Fd(up.clone()), &real)
                    .unwrap_or_else(|| Override::of_stat(&real));
                ov.uid = uid.unwrap_or(ov.uid);
                ov.gid = gid.unwrap_or(ov.gid);
                if let Some(m) = set.mode {
                    ov.perm = m & 0o7777;
                }
                xattr::set(&*up, name, ov.format().as_bytes(), XattrFlags::empty())?;
                // The override may be new (and clients see it).
                node.forget_xattrs();
            }
            _ => {
                if uid.is_some() || gid.is_some() {
                    fd::set_owner(&*up, uid, gid)?;
                    // The upper's own chown cleared setuid, setgid and the
                    // capability (its kernel does so also for root).
                    drop = set.size.is_some() && (kill || overrides);
                }
                if let Some(m) = set.mode {
                    fd::set_mode(&*up, m)?;
                }
            }
        }
        if drop && node.kind == FileType::RegularFile {
            self.drop_privileges(&up, kill)?;
        }
        if let Some(len) = set.size {
            if node.is_dir() {
                return Err(Errno::ISDIR);
            }
            match set.fh.and_then(|h| self.io_fd(h).ok()) {
                Some(f) if rustix::fs::ftruncate(&*f, len).is_ok() => {}
                _ => {
                    let f = fd::reopen(&*up, OFlags::WRONLY)?;
                    rustix::fs::ftruncate(&f, len)?;
                }
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
                rustix::fs::utimensat(&*pup, &*name, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
            } else {
                fd::set_times(&*up, &ts)?;
            }
        }
        self.stat_node(&node)
    }

    /// Whether `caller` (user, group) may write `node` by its owner and
    /// permission bits (supplementary groups and ACLs are not known here;
    /// root may). An attribute-less setattr takes privileges away only
    /// for such a caller: it is then the kernel's request before a write,
    /// fallocate or copy_file_range, or the owner's `chown(-1, -1)`; from
    /// anyone else it is a `chown(-1, -1)`, which on a plain filesystem
    /// fails for a setuid file (the kernel no longer sends the mode that
    /// would fail it) and must change nothing.
    fn may_write(&self, node: &Node, caller: (u32, u32)) -> Result<bool> {
        let st = self.stat_node(node)?;
        let ids = &self.config.ids;
        let (uid, gid) = (ids.uid.show(st.st_uid), ids.gid.show(st.st_gid));
        let bits = if caller.0 == 0 || caller.0 == uid {
            return Ok(true);
        } else if caller.1 == gid {
            libc::S_IWGRP
        } else {
            libc::S_IWOTH
        };
        Ok(st.st_mode & bits != 0)
    }

    /// Whether a write, truncate or chown of `node` leaves privileges for
    /// this daemon to take away (see `drop_privileges`): setuid and setgid
    /// when the caller lacks `CAP_FSETID` (the upper's kernel clears them
    /// only where this daemon lacks it too), and anything kept in an
    /// override xattr or under another name.
    pub(crate) fn privileges_left_to_us(&self, node: &Node, kill_suidgid: bool) -> bool {
        node.kind == FileType::RegularFile
            && (kill_suidgid || self.stack.override_xattr(0).is_some())
    }

    /// What the kernel leaves to the filesystem with
    /// `FUSE_HANDLE_KILLPRIV_V2`, done on the upper copy `up` of a regular
    /// file at a write, truncate or chown: with `kill_suidgid` (a caller
    /// without `CAP_FSETID`, or a chown), setuid and setgid go as in
    /// [`unprivileged`]; the file capability goes too where the upper's
    /// kernel does not see it go (its own write, truncate or chown of the
    /// file removes `security.capability`; kept under another name in the
    /// containers override mode, it is removed here). Owner and mode kept
    /// in an override xattr change there.
    pub(crate) fn drop_privileges(&self, up: &Arc<OwnedFd>, kill_suidgid: bool) -> Result<Dropped> {
        let real = rustix::fs::fstat(&**up)?;
        let containers = self.containers_mode(0);
        let overridden = self
            .stack
            .override_xattr(0)
            .filter(|_| override_stat::applies_to(&real));
        let mut out = Dropped {
            changed: false,
            clean: true,
        };
        let perm = match overridden {
            Some(name) => {
                let obj = Obj::Fd(up.clone());
                match self.recorded_override(0, &obj, &real) {
                    Some(ov) if ov.kind.is_none_or(|(t, _)| t == libc::S_IFREG) => {
                        Some((ov.perm, Some((name, ov))))
                    }
                    // Shown as another type.
                    Some(_) => None,
                    None => Some((real.st_mode & 0o7777, None)),
                }
            }
            None => Some((real.st_mode & 0o7777, None)),
        };
        if let Some((perm, ov)) = perm {
            let left = unprivileged(perm);
            if left != perm && kill_suidgid {
                match ov {
                    Some((name, mut ov)) => {
                        ov.perm = left;
                        xattr::set(&**up, name, ov.format().as_bytes(), XattrFlags::empty())?;
                    }
                    None => fd::set_mode(&**up, left)?,
                }
                out.changed = true;
            } else if left != perm {
                out.clean = false;
            }
        }
        if containers || overridden.is_some() {
            match xattr::remove(&**up, &xattr_names::stored_name(containers, CAPABILITY)) {
                Ok(()) => out.changed = true,
                Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
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
    pub(super) fn containers_mode(&self, layer: usize) -> bool {
        self.stack.override_xattr(layer) == Some(CONTAINERS)
    }

    /// `getxattr`.
    pub(crate) fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        if xattr_names::is_private(name) {
            return Err(Errno::NODATA);
        }
        let node = self.node(ino)?;
        if self.xattr_free(&node) {
            return Err(Errno::NODATA);
        }
        self.with_top(&node, |layer, top| {
            top.get_xattr(&xattr_names::stored_name(self.containers_mode(layer), name))
        })
    }

    /// Whether `node`'s top object carries no xattr clients can see:
    /// listed once, then remembered (`Node::known_xattrs`), so the
    /// questions the kernel asks of nearly every file (`security.selinux`
    /// for `ls -l`, `security.capability` before a write or chown, the
    /// POSIX ACLs) are answered without a system call.
    fn xattr_free(&self, node: &Node) -> bool {
        let seen = match node.known_xattrs() {
            Ok(none) => return none,
            Err(seen) => seen,
        };
        let listed = self.with_top(node, |layer, top| {
            let shown = xattr_names::shown_names(self.containers_mode(layer), &top.list_xattr()?);
            Ok((shown.is_empty(), self.stack.is_upper(layer)))
        });
        match listed {
            Ok((none, upper)) => {
                node.note_xattrs(seen, none, upper);
                none
            }
            Err(_) => false,
        }
    }

    /// `listxattr`.
    pub(crate) fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if self.xattr_free(&node) {
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
        self.handles.privileges_may_have_changed();
        let stored = xattr_names::stored_name(self.containers_mode(0), name);
        if stored.len() > 255 {
            return Err(Errno::RANGE);
        }
        let r = xattr::set(
            &*up,
            &stored,
            value,
            XattrFlags::from_bits_retain(flags as _),
        );
        node.forget_xattrs();
        r
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
        let r = xattr::remove(
            &*up,
            &xattr_names::stored_name(self.containers_mode(0), name),
        );
        node.forget_xattrs();
        match r {
            // It was there before the copy-up, whose chown of the copy
            // took a capability away already.
            Err(Errno::NODATA) => Ok(()),
            r => r,
        }
    }

    /// The upper object an xattr change goes to: a node that has one (a
    /// hard-linked file's copy in the index included) is changed there, no
    /// name is linked up (as the kernel overlay does); else a copy-up.
    fn copy_up_for_xattr(&self, node: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        match self.upper_fd(node)? {
            Some(u) => Ok(u),
            None => self.copy_up(node, Data::Meta),
        }
    }
}
