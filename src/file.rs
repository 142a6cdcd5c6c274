//! Open files and directories, data I/O, attribute and xattr changes.
//!
//! A file opened for reading on a lower layer keeps reading the lower copy
//! until the file is copied up through another handle; the next read then
//! switches to the upper copy, so readers always see the latest data.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use rustix::fs::{
    FallocateFlags, FileType, OFlags, SeekFrom, Stat, Timespec, Timestamps, XattrFlags,
};

use crate::copyup::Data;
use crate::error::{Errno, Result};
use crate::inode::{Node, Obj};
use crate::overlay::Overlay;
use crate::override_stat::{self, Override};
use crate::readdir::DirEntry;
use crate::util;
use crate::xattr;

/// Prefix of `security.*` xattrs kept by the containers override mode.
const OVERRIDE_PREFIX: &[u8] = b"user.containers.override_";

/// An open regular file (or other non-directory).
#[derive(Debug)]
pub struct OpenFile {
    /// The node.
    pub node: Arc<Node>,
    fd: RwLock<Arc<OwnedFd>>,
    on_upper: std::sync::atomic::AtomicBool,
    flags: OFlags,
}

/// An open directory: its listing snapshot.
#[derive(Debug)]
pub struct OpenDir {
    /// The node.
    pub node: Arc<Node>,
    entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

/// All open handles.
#[derive(Debug, Default)]
pub struct HandleTable {
    files: DashMap<u64, Arc<OpenFile>>,
    dirs: DashMap<u64, Arc<OpenDir>>,
    next: AtomicU64,
}

impl HandleTable {
    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of open handles (files and directories).
    pub fn len(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    /// Whether nothing is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Flags that are meaningful when reopening an existing file.
fn reopen_flags(flags: i32) -> OFlags {
    let f = OFlags::from_bits_retain(flags as _);
    let keep = OFlags::ACCMODE
        | OFlags::APPEND
        | OFlags::NONBLOCK
        | OFlags::DIRECT
        | OFlags::DSYNC
        | OFlags::SYNC
        | OFlags::NOATIME
        | OFlags::TRUNC;
    f & keep
}

fn wants_write(flags: OFlags) -> bool {
    let acc = flags & OFlags::ACCMODE;
    acc == OFlags::WRONLY || acc == OFlags::RDWR || flags.contains(OFlags::TRUNC)
}

impl Overlay {
    /// Register an open file; returns the handle id.
    pub fn add_file(&self, node: Arc<Node>, fd: OwnedFd, flags: OFlags, on_upper: bool) -> u64 {
        let id = self.handles.id();
        self.handles.files.insert(
            id,
            Arc::new(OpenFile {
                node,
                fd: RwLock::new(Arc::new(fd)),
                on_upper: std::sync::atomic::AtomicBool::new(on_upper),
                flags,
            }),
        );
        id
    }

    /// `open`: copy up first when the file is opened for writing.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::ISDIR);
        }
        let flags = reopen_flags(flags);
        if wants_write(flags) {
            self.writable()?;
            if node.kind == FileType::RegularFile {
                let data = if flags.contains(OFlags::TRUNC) {
                    Data::Empty
                } else {
                    Data::All
                };
                self.copy_up(&node, data)?;
            }
        }
        let (fd, on_upper) = self.with_top(&node, |layer, top| {
            Ok((top.open(flags)?, self.stack.has_upper && layer == 0))
        })?;
        Ok(self.add_file(node, fd, flags & !OFlags::TRUNC, on_upper))
    }

    fn file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        self.handles
            .files
            .get(&fh)
            .map(|f| f.clone())
            .ok_or(Errno::BADF)
    }

    /// The fd to use for I/O on handle `fh` (switched to the upper copy
    /// once there is one).
    fn io_fd(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        let f = self.file(fh)?;
        if !f.on_upper.load(Ordering::Acquire) && f.node.has_upper() {
            let mut cur = f.fd.write();
            if !f.on_upper.load(Ordering::Acquire) {
                *cur = Arc::new(self.with_top(&f.node, |_, up| up.open(f.flags))?);
                f.on_upper.store(true, Ordering::Release);
            }
        }
        let fd = f.fd.read().clone();
        Ok(fd)
    }

    /// Attributes of the object open as `fh`, if `fh` is an open file of
    /// `node`.
    pub fn handle_stat(&self, fh: u64, node: &Node) -> Option<Stat> {
        let f = self.file(fh).ok()?;
        if f.node.ino != node.ino {
            return None;
        }
        let fd = self.io_fd(fh).ok()?;
        let mut st = rustix::fs::fstat(&*fd).ok()?;
        let (layer, obj) = node.top_layer_obj()?;
        self.present(layer, &obj, &mut st);
        Some(st)
    }

    /// `read`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let fd = self.io_fd(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(&*fd, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// `write`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let fd = self.io_fd(fh)?;
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(&*fd, &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) if done > 0 => {
                    log::debug!("short write: {e}");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done as u32)
    }

    /// `release`.
    pub fn release(&self, fh: u64) {
        self.handles.files.remove(&fh);
    }

    /// `fsync`.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let fd = self.io_fd(fh)?;
        if datasync {
            rustix::fs::fdatasync(&*fd)
        } else {
            rustix::fs::fsync(&*fd)
        }
    }

    /// `fallocate`.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let fd = self.io_fd(fh)?;
        rustix::fs::fallocate(
            &*fd,
            FallocateFlags::from_bits_retain(mode as _),
            offset,
            len,
        )
    }

    /// `lseek` (SEEK_DATA / SEEK_HOLE; the kernel handles the others).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let fd = self.io_fd(fh)?;
        let pos = match whence {
            libc::SEEK_DATA => SeekFrom::Data(offset.max(0) as u64),
            libc::SEEK_HOLE => SeekFrom::Hole(offset.max(0) as u64),
            libc::SEEK_SET => SeekFrom::Start(offset.max(0) as u64),
            libc::SEEK_END => SeekFrom::End(offset),
            libc::SEEK_CUR => SeekFrom::Start(offset.max(0) as u64),
            _ => return Err(Errno::INVAL),
        };
        rustix::fs::seek(&*fd, pos).map(|p| p as i64)
    }

    /// `copy_file_range` between two open files.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let fin = self.io_fd(fh_in)?;
        let fout = self.io_fd(fh_out)?;
        let (mut a, mut b) = (off_in, off_out);
        let want = len.min(u32::MAX as u64 & !0xfff) as usize;
        let n = rustix::fs::copy_file_range(&*fin, Some(&mut a), &*fout, Some(&mut b), want)?;
        Ok(n as u32)
    }

    /// `opendir`: the handle, and whether the kernel may cache the
    /// listing (see `Node::change_listing`).
    pub fn opendir(&self, ino: u64) -> Result<(u64, bool)> {
        let node = self.dir_node(ino)?;
        node.used
            .store(crate::fdbudget::now_ms(), Ordering::Relaxed);
        let cacheable = !node
            .listing_changed
            .load(std::sync::atomic::Ordering::Acquire);
        let id = self.handles.id();
        self.handles.dirs.insert(
            id,
            Arc::new(OpenDir {
                node,
                entries: Mutex::new(None),
            }),
        );
        Ok((id, cacheable))
    }

    /// The listing of an open directory and the index of its first entry
    /// after `offset`. Reading from 0 (or a first read at any offset, when
    /// the kernel served the start from its cache) takes a new snapshot.
    pub fn dir_entries(&self, fh: u64, offset: u64) -> Result<(Arc<Vec<DirEntry>>, usize)> {
        let d = self
            .handles
            .dirs
            .get(&fh)
            .map(|d| d.clone())
            .ok_or(Errno::BADF)?;
        let mut cur = d.entries.lock();
        let e = match &*cur {
            Some(e) if offset != 0 => e.clone(),
            _ => {
                let _g = d.node.dir_lock.read();
                let e = Arc::new(self.snapshot(&d.node)?);
                *cur = Some(e.clone());
                e
            }
        };
        let start = crate::readdir::start_after(&e, offset);
        Ok((e, start))
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        self.handles.dirs.remove(&fh);
    }

    /// `fsyncdir`.
    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let node = self.node(ino)?;
        if let Some(u) = node.upper() {
            let fd = util::open_dir_read(&*u)?;
            rustix::fs::fsync(&fd)?;
        }
        Ok(())
    }

    /// `setattr`: copy up, then apply owner, mode, size and times.
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Option<Timespec>>,
        mtime: Option<Option<Timespec>>,
        fh: Option<u64>,
    ) -> Result<Stat> {
        self.writable()?;
        let node = self.node(ino)?;
        let ids = &self.config.ids;
        let uid = match uid {
            Some(u) => ids.uid.chown_to_disk(u)?,
            None => None,
        };
        let gid = match gid {
            Some(g) => ids.gid.chown_to_disk(g)?,
            None => None,
        };
        let data = if size == Some(0) {
            Data::Empty
        } else {
            Data::All
        };
        let up = self.copy_up(&node, data)?;
        if mode.is_some() && node.kind == FileType::Symlink {
            return Err(Errno::OPNOTSUPP);
        }
        let real = rustix::fs::fstat(&*up)?;
        let up_obj = Obj::Fd(up.clone());
        match self
            .override_name(0)
            .filter(|_| override_stat::applies_to(&real))
        {
            Some(name) if uid.is_some() || gid.is_some() || mode.is_some() => {
                // Owner and mode live in the xattr; the inode keeps its own.
                let mut ov = self
                    .recorded_override(0, &up_obj, &real)
                    .unwrap_or_else(|| Override::of_stat(&real));
                ov.uid = uid.unwrap_or(ov.uid);
                ov.gid = gid.unwrap_or(ov.gid);
                if let Some(m) = mode {
                    ov.perm = m & 0o7777;
                }
                xattr::set(&*up, name, ov.format().as_bytes(), XattrFlags::empty())?;
            }
            _ => {
                if uid.is_some() || gid.is_some() {
                    util::set_owner(&*up, uid, gid)?;
                }
                if let Some(m) = mode {
                    util::set_mode(&*up, m)?;
                }
            }
        }
        if let Some(len) = size {
            if node.is_dir() {
                return Err(Errno::ISDIR);
            }
            match fh.and_then(|h| self.io_fd(h).ok()) {
                Some(fd) if rustix::fs::ftruncate(&*fd, len).is_ok() => {}
                _ => {
                    let fd = util::reopen(&*up, OFlags::WRONLY)?;
                    rustix::fs::ftruncate(&fd, len)?;
                }
            }
        }
        if atime.is_some() || mtime.is_some() {
            let omit = Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            };
            let now = Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            };
            let pick = |t: Option<Option<Timespec>>| match t {
                None => omit,
                Some(None) => now,
                Some(Some(t)) => t,
            };
            let ts = Timestamps {
                last_access: pick(atime),
                last_modification: pick(mtime),
            };
            if node.kind == FileType::Symlink {
                let (parent, name) = node.location();
                let pup = self.node(parent)?.upper().ok_or(Errno::IO)?;
                rustix::fs::utimensat(&*pup, &*name, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
            } else {
                util::set_times(&*up, &ts)?;
            }
        }
        self.stat_node(&node)
    }

    /// `getxattr`.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        if xattr::is_private(name) {
            return Err(Errno::NODATA);
        }
        let node = self.node(ino)?;
        if node.lower_xattr_free() {
            return Err(Errno::NODATA);
        }
        self.with_top(&node, |layer, top| {
            top.get_xattr(&self.stored_xattr_name(layer, name))
        })
    }

    /// Where an xattr named `name` is kept in layer `layer`: in the
    /// containers override mode (`xattr_permissions=2`), `security.*`
    /// (file capabilities, SELinux labels the engine sets) live in
    /// `user.containers.override_security.*`, which the owner can write.
    fn stored_xattr_name(&self, layer: usize, name: &[u8]) -> Vec<u8> {
        if self.override_name(layer) == Some(override_stat::CONTAINERS)
            && name.starts_with(b"security.")
        {
            let mut v = OVERRIDE_PREFIX.to_vec();
            v.extend_from_slice(name);
            v
        } else {
            name.to_vec()
        }
    }

    /// `listxattr`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.lower_xattr_free() {
            return Ok(Vec::new());
        }
        let containers = |layer| self.override_name(layer) == Some(override_stat::CONTAINERS);
        match self.with_top(&node, |layer, top| {
            Ok((containers(layer), top.list_xattr()?))
        }) {
            Ok((false, all)) => Ok(xattr::public_names(&all)),
            Ok((true, all)) => {
                // Stored security.* show under their own names; real ones
                // on disk do not show.
                let mut out = Vec::new();
                for n in xattr::names(&all) {
                    let shown = match n.strip_prefix(OVERRIDE_PREFIX) {
                        Some(sec) if sec.starts_with(b"security.") => sec,
                        _ if n.starts_with(b"security.") => continue,
                        _ => n,
                    };
                    if !xattr::is_private(shown) {
                        out.extend_from_slice(shown);
                        out.push(0);
                    }
                }
                Ok(out)
            }
            Err(Errno::NOTSUP) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// `setxattr`: copy up, then set.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if xattr::is_private(name) {
            return Err(Errno::PERM);
        }
        self.writable()?;
        let node = self.node(ino)?;
        let up = self.copy_up(&node, Data::All)?;
        let stored = self.stored_xattr_name(0, name);
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
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        if xattr::is_private(name) {
            return Err(Errno::NODATA);
        }
        self.writable()?;
        let node = self.node(ino)?;
        // Removing an absent attribute must not copy anything up.
        self.with_top(&node, |layer, top| {
            top.get_xattr(&self.stored_xattr_name(layer, name))
        })?;
        let up = self.copy_up(&node, Data::All)?;
        xattr::remove(&*up, &self.stored_xattr_name(0, name))
    }
}
