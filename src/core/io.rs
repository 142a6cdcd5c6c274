//! Open files and directories: open, read, write, sync, seek, listings.
//!
//! Opening for writing copies the file up first. A file opened for reading
//! on a lower layer keeps reading the lower copy until the file is copied up
//! through another handle; the next I/O then switches to the upper copy
//! (`io_fd`), so readers always see the latest data.
//!
//! With `no_open` the kernel sends no OPEN for existing files (it stops
//! after the first is answered `ENOSYS`), and their reads and writes come
//! with handle 0: they are served by node, the node's file opened for the
//! request (`request_fd`), so a write copies the file up at the first write
//! instead of at the open. Files made by CREATE get handle 0 too (the
//! kernel sends no RELEASE for them either).

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustix::fs::{FallocateFlags, FileType, OFlags, SeekFrom, Stat};

use super::attrs::unprivileged;
use super::copyup::Data;
use super::handles::OpenFile;
use super::listing::{self, DirEntry};
use super::node::Node;
use super::notify::Invalidate;
use super::overlay::Overlay;
use crate::error::{Errno, Result};
use crate::sys::fd;

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

/// What an I/O request does with the file it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Reads it (or seeks in it, or syncs it).
    Read,
    /// Writes to it; `append`: at its end, whatever the offset (`O_APPEND`).
    Write {
        /// `O_APPEND`.
        append: bool,
    },
}

impl Overlay {
    /// `open`: copy up first when the file is opened for writing. An
    /// `O_TRUNC` takes privileges away as a truncate does
    /// (`drop_privileges`; `kill_suidgid`: the caller lacks `CAP_FSETID`).
    pub(crate) fn open(&self, ino: u64, flags: i32, kill_suidgid: bool) -> Result<u64> {
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
                self.ensure_upper(&node, data)?;
            }
        }
        let (fd, on_upper) = match node.metacopy_data() {
            // A metadata copy is read from its lower data file until its
            // data is copied up (an open for writing did that above).
            Some(data) if !wants_write(flags) => (data.obj.open(flags)?, false),
            _ => self.with_top(&node, |layer, top| {
                Ok((top.open(flags)?, self.stack.is_upper(layer)))
            })?,
        };
        if flags.contains(OFlags::TRUNC) && self.privileges_left_to_us(&node, kill_suidgid) {
            if let Some(up) = self.upper_fd(&node)? {
                if self.drop_privileges(&up, kill_suidgid)?.changed {
                    // The kernel keeps the mode it had before the open.
                    self.invalidate(Invalidate::Attr(node.ino));
                }
            }
        }
        Ok(self.handles.add_file(node, fd, flags, on_upper))
    }

    /// Register the file `create` just made (attributes `st`, open as
    /// `fd`): one made without setuid and setgid has no privileges for its
    /// writes to take away.
    pub(crate) fn add_created(&self, node: Arc<Node>, fd: OwnedFd, flags: i32, st: &Stat) -> u64 {
        if self.config.no_open {
            // Once the kernel stopped sending OPEN it sends no RELEASE
            // either, also for files made by CREATE (6.18: a descriptor
            // per created file stayed open): serve them by node too.
            drop(fd);
            return 0;
        }
        let epoch = self.handles.privilege_epoch();
        let fh = self
            .handles
            .add_file(node, fd, OFlags::from_bits_retain(flags as _), true);
        let perm = st.st_mode & 0o7777;
        if unprivileged(perm) == perm {
            if let Ok(f) = self.handles.file(fh) {
                f.unprivileged_at.store(epoch, Ordering::Release);
            }
        }
        fh
    }

    /// The fd to use for I/O on handle `fh` (switched to the upper copy
    /// once there is one).
    pub(crate) fn io_fd(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        let f = self.handles.file(fh)?;
        self.file_fd(&f)
    }

    /// The descriptor of the open regular file `fh` if it holds the
    /// file's data for good: a file opened on the upper layer (not a
    /// metadata copy read from its lower data file), or any file of a
    /// read-only mount, where nothing is copied up. What FUSE passthrough
    /// may hand to the kernel.
    pub(crate) fn final_data_fd(&self, fh: u64) -> Option<Arc<OwnedFd>> {
        let f = self.handles.file(fh).ok()?;
        if f.node.kind != FileType::RegularFile
            || !(self.config.read_only || f.on_upper.load(Ordering::Acquire))
        {
            return None;
        }
        let fd = f.fd.read().clone();
        Some(fd)
    }

    /// The fd for an I/O request on node `ino` through handle `fh`: the
    /// handle's, or for handle 0 (`no_open`) the node's file opened now.
    pub(crate) fn request_fd(&self, ino: u64, fh: u64, u: Use) -> Result<Arc<OwnedFd>> {
        if fh != 0 {
            return self.io_fd(fh);
        }
        let node = self.node(ino)?;
        self.node_fd(&node, u).map(Arc::new)
    }

    /// The file of `node` opened for `u`: a write copies the file up first
    /// (what an open for writing does with handles); a metadata copy is
    /// read from its lower data file until then.
    fn node_fd(&self, node: &Arc<Node>, u: Use) -> Result<OwnedFd> {
        if node.is_dir() {
            return Err(Errno::ISDIR);
        }
        match u {
            Use::Write { append } => {
                self.writable()?;
                if node.kind == FileType::RegularFile {
                    match self.ensure_upper(node, Data::All) {
                        // Removed while it was being copied: the copy is
                        // now one no name leads to (`copy_up_orphan`).
                        Err(Errno::NOENT) if node.state.read().detached() => {
                            self.ensure_upper(node, Data::All)?
                        }
                        r => r?,
                    }
                }
                let mut flags = OFlags::WRONLY;
                if append {
                    flags |= OFlags::APPEND;
                }
                // A file created read-only, or made so while open, is
                // written through the descriptor its writer holds.
                self.with_top(node, |_, top| match top.open(flags) {
                    Err(Errno::ACCESS) => fd::reopen_writable(&*top.fd()?, flags),
                    r => r,
                })
            }
            Use::Read => match node.metacopy_data() {
                Some(data) => data.obj.open(OFlags::RDONLY),
                None => self.with_top(node, |_, top| top.open(OFlags::RDONLY)),
            },
        }
    }

    /// The fd to use for I/O on the open file `f`.
    fn file_fd(&self, f: &OpenFile) -> Result<Arc<OwnedFd>> {
        if !f.on_upper.load(Ordering::Acquire) && f.node.data_on_upper() {
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
    pub(crate) fn handle_stat(&self, fh: u64, node: &Node) -> Option<Stat> {
        let f = self.handles.file(fh).ok()?;
        if f.node.ino != node.ino || node.metacopy_data().is_some() {
            // A metadata copy's descriptor is its data file's.
            return None;
        }
        let fd = self.io_fd(fh).ok()?;
        let mut st = rustix::fs::fstat(&*fd).ok()?;
        let (layer, obj) = node.top_layer_obj()?;
        self.present(layer, &obj, &mut st);
        Some(st)
    }

    /// `read`.
    pub(crate) fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let fd = self.request_fd(ino, fh, Use::Read)?;
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

    /// `write` (`append`: the file was opened `O_APPEND`; for handle 0,
    /// whose file is opened here), after taking away the
    /// privileges a write takes away (`drop_privileges`; `kill_suidgid`:
    /// the caller lacks `CAP_FSETID`), looked at once per open file while
    /// no chmod, chown or setxattr happens (at every write without a
    /// handle).
    pub(crate) fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        append: bool,
    ) -> Result<u32> {
        let fd = if fh == 0 {
            let node = self.node(ino)?;
            let fd = Arc::new(self.node_fd(&node, Use::Write { append })?);
            if self.privileges_left_to_us(&node, kill_suidgid)
                && self.drop_privileges(&fd, kill_suidgid)?.changed
            {
                self.invalidate(Invalidate::Attr(node.ino));
            }
            fd
        } else {
            let f = self.handles.file(fh)?;
            let fd = self.file_fd(&f)?;
            if self.privileges_left_to_us(&f.node, kill_suidgid) {
                let epoch = self.handles.privilege_epoch();
                if f.unprivileged_at.load(Ordering::Acquire) != epoch {
                    let dropped = self.drop_privileges(&fd, kill_suidgid)?;
                    if dropped.changed {
                        // Only a direct-I/O write comes without the kernel's
                        // own request to drop them first (an attribute-less
                        // setattr, whose reply updates its cached mode).
                        self.invalidate(Invalidate::Attr(f.node.ino));
                    }
                    if dropped.clean {
                        f.unprivileged_at.store(epoch, Ordering::Release);
                    }
                }
            }
            fd
        };
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
    pub(crate) fn release(&self, fh: u64) {
        self.handles.remove_file(fh);
    }

    /// `fsync`.
    pub(crate) fn fsync(&self, ino: u64, fh: u64, datasync: bool) -> Result<()> {
        let fd = self.request_fd(ino, fh, Use::Read)?;
        if datasync {
            rustix::fs::fdatasync(&*fd)
        } else {
            rustix::fs::fsync(&*fd)
        }
    }

    /// `fallocate`.
    pub(crate) fn fallocate(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<()> {
        let fd = self.request_fd(ino, fh, Use::Write { append: false })?;
        rustix::fs::fallocate(
            &*fd,
            FallocateFlags::from_bits_retain(mode as _),
            offset,
            len,
        )
    }

    /// `lseek`: SEEK_DATA and SEEK_HOLE, the only kinds the kernel asks a
    /// FUSE filesystem for (it moves the file position itself for
    /// SEEK_SET, SEEK_CUR and SEEK_END).
    pub(crate) fn lseek(&self, ino: u64, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let from = u64::try_from(offset).map_err(|_| Errno::NXIO)?;
        let pos = match whence {
            libc::SEEK_DATA => SeekFrom::Data(from),
            libc::SEEK_HOLE => SeekFrom::Hole(from),
            _ => return Err(Errno::INVAL),
        };
        let fd = self.request_fd(ino, fh, Use::Read)?;
        rustix::fs::seek(&*fd, pos).map(|p| p as i64)
    }

    /// `copy_file_range` between two open files (`(node, handle)`
    /// each).
    pub(crate) fn copy_file_range(
        &self,
        (ino_in, fh_in): (u64, u64),
        off_in: u64,
        (ino_out, fh_out): (u64, u64),
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let fin = self.request_fd(ino_in, fh_in, Use::Read)?;
        let fout = self.request_fd(ino_out, fh_out, Use::Write { append: false })?;
        let (mut a, mut b) = (off_in, off_out);
        let want = len.min(u32::MAX as u64 & !0xfff) as usize;
        let n = rustix::fs::copy_file_range(&*fin, Some(&mut a), &*fout, Some(&mut b), want)?;
        Ok(n as u32)
    }

    /// `opendir`: the handle, and whether the kernel may cache the
    /// listing (see `Node::change_listing`).
    pub(crate) fn opendir(&self, ino: u64) -> Result<(u64, bool)> {
        let node = self.dir_node(ino)?;
        node.touch();
        let cacheable = node.listing_unchanged();
        Ok((self.handles.add_dir(node), cacheable))
    }

    /// The listing of an open directory and the index of its first entry
    /// after `offset`. Reading from 0 (or a first read at any offset, when
    /// the kernel served the start from its cache) takes a new snapshot.
    pub(crate) fn dir_entries(&self, fh: u64, offset: u64) -> Result<(Arc<Vec<DirEntry>>, usize)> {
        let d = self.handles.dir(fh)?;
        let mut cur = d.entries.lock();
        let e = match &*cur {
            Some(e) if offset != 0 => e.clone(),
            _ => {
                let _g = d.node.dir_lock.read(d.node.ino);
                let e = Arc::new(self.snapshot(&d.node)?);
                *cur = Some(e.clone());
                e
            }
        };
        let start = listing::start_after(&e, offset);
        Ok((e, start))
    }

    /// The listing of directory `ino` from `offset` on, without a handle
    /// (`no_opendir`, read-only mounts only): the kernel keeps each listing
    /// it reads in its cache, so a directory is listed here about once,
    /// batch by batch; the listings of the last `KEPT_LISTINGS` directories
    /// stay for their later batches. Nothing can change a listing on a
    /// read-only mount, so a kept one is never stale.
    pub(crate) fn listing_of(&self, ino: u64, offset: u64) -> Result<(Arc<Vec<DirEntry>>, usize)> {
        const KEPT_LISTINGS: usize = 8;
        let node = self.dir_node(ino)?;
        node.touch();
        let kept = {
            let l = self.listings.lock();
            l.iter().find(|(i, _)| *i == ino).map(|(_, e)| e.clone())
        };
        let e = match kept {
            Some(e) => e,
            None => {
                let e = {
                    let _g = node.dir_lock.read(ino);
                    Arc::new(self.snapshot(&node)?)
                };
                let mut l = self.listings.lock();
                l.retain(|(i, _)| *i != ino);
                if l.len() >= KEPT_LISTINGS {
                    l.remove(0);
                }
                l.push((ino, e.clone()));
                e
            }
        };
        let start = listing::start_after(&e, offset);
        Ok((e, start))
    }

    /// `releasedir`.
    pub(crate) fn releasedir(&self, fh: u64) {
        self.handles.remove_dir(fh);
    }

    /// `fsyncdir`.
    pub(crate) fn fsyncdir(&self, ino: u64) -> Result<()> {
        let node = self.node(ino)?;
        if let Some(u) = node.upper() {
            rustix::fs::fsync(fd::open_dir_read(&*u)?)?;
        }
        Ok(())
    }
}
