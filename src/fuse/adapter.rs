//! The FUSE adapter: decodes requests, calls the overlay, encodes replies.
//! No overlay logic lives here; this is the one place where an [`Errno`]
//! becomes a FUSE error reply, and where a lookup reference is handed to
//! the kernel (after the reply that carries it).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileAttr, FileHandle, FileType as FuseType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use rustix::fs::{FileType, Stat, Timespec};

use crate::core::attrs::{SetAttr, SetTime};
use crate::core::listing::NO_LAYER;
use crate::core::namespace::NewNode;
use crate::core::notify::{Invalidate, KernelCache};
use crate::core::overlay::{Caller, Entry, Overlay};
use crate::error::Errno;
use crate::format::idmap::Ids;

/// The overlay as a `fuser` filesystem.
#[derive(Debug)]
pub(crate) struct FuseOverlay {
    /// The overlay.
    pub(crate) fs: Arc<Overlay>,
}

/// The kernel's caches, reached through the session's notifier.
pub(crate) struct Notify(pub(crate) fuser::Notifier);

impl KernelCache for Notify {
    fn drop_entry(&self, parent: u64, name: &[u8]) {
        let _ = self.0.inval_entry(INodeNo(parent), OsStr::from_bytes(name));
    }

    fn drop_attrs(&self, ino: u64) {
        let _ = self.0.inval_inode(INodeNo(ino), -1, 0);
    }
}

fn err(e: Errno) -> fuser::Errno {
    if e == Errno::IO {
        log::warn!("I/O error returned to a client");
    }
    fuser::Errno::from_i32(e.raw_os_error())
}

fn kind_of(t: FileType) -> FuseType {
    match t {
        FileType::Directory => FuseType::Directory,
        FileType::Symlink => FuseType::Symlink,
        FileType::Fifo => FuseType::NamedPipe,
        FileType::Socket => FuseType::Socket,
        FileType::CharacterDevice => FuseType::CharDevice,
        FileType::BlockDevice => FuseType::BlockDevice,
        _ => FuseType::RegularFile,
    }
}

fn time(sec: i64, nsec: u64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec)
    }
}

fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: d.subsec_nanos() as _,
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos() as i64;
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timespec {
                tv_sec: sec,
                tv_nsec: nsec as _,
            }
        }
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(s) => SetTime::At(timespec(s)),
    })
}

/// Attributes as FUSE wants them.
fn attr(ino: u64, st: &Stat, merged_dir: bool, ids: &Ids) -> FileAttr {
    let kind = FileType::from_raw_mode(st.st_mode);
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind_of(kind),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: if merged_dir { 1 } else { st.st_nlink as u32 },
        uid: ids.uid.show(st.st_uid),
        gid: ids.gid.show(st.st_gid),
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FuseType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// The caller, with ids as they are to be written to disk.
fn caller(req: &Request, ids: &Ids) -> Caller {
    Caller {
        uid: ids.uid.owner_on_disk(req.uid()),
        gid: ids.gid.owner_on_disk(req.gid()),
    }
}

impl FuseOverlay {
    fn ttl(&self) -> Duration {
        self.fs.config.ttl
    }

    fn attr_of(&self, e: &Entry<'_>) -> FileAttr {
        attr(
            e.node.ino,
            &e.stat,
            e.node.is_merged_dir(),
            &self.fs.config.ids,
        )
    }

    /// How long the kernel may keep the name of entry `e`: not at all for a
    /// hard-linked file, so that every use of one of its names is looked up
    /// and the overlay knows which name a change goes through.
    fn entry_ttl(&self, e: &Entry<'_>) -> Duration {
        if !e.node.is_dir() && e.stat.st_nlink > 1 {
            Duration::ZERO
        } else {
            self.ttl()
        }
    }

    /// Reply with `e`, handing its lookup reference to the kernel.
    fn reply_entry(&self, e: Entry<'_>, reply: ReplyEntry) {
        reply.entry_with_ttls(
            &self.ttl(),
            &self.entry_ttl(&e),
            &self.attr_of(&e),
            Generation(0),
        );
        e.node.hand_over();
    }

    /// `create` without `O_EXCL` of a name another process created since
    /// the kernel looked it up: open what is there, as open(O_CREAT) does.
    fn create_existing(&self, parent: u64, name: &[u8], flags: i32, reply: ReplyCreate) {
        let opened = self
            .fs
            .lookup(parent, name)
            .and_then(|e| e.ok_or(Errno::NOENT))
            .and_then(|e| {
                let fh = self.fs.open(e.node.ino, flags)?;
                let stat = self.fs.stat_node(&e.node)?;
                Ok((Entry { stat, ..e }, fh))
            });
        match opened {
            Ok((e, fh)) => {
                reply.created(
                    &self.ttl(),
                    &self.attr_of(&e),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                );
                e.node.hand_over();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn new_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        umask: u32,
        what: NewNode<'_>,
        reply: ReplyEntry,
    ) {
        let caller = caller(req, &self.fs.config.ids);
        match self
            .fs
            .create_node(caller, parent.0, name.as_bytes(), umask, what)
        {
            Ok(e) => self.reply_entry(e, reply),
            Err(e) => reply.error(err(e)),
        }
    }
}

impl Filesystem for FuseOverlay {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            if config.add_capabilities(cap).is_err() {
                log::debug!("kernel lacks capability {cap:?}");
            }
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name.as_bytes()) {
            Ok(Some(e)) => self.reply_entry(e, reply),
            Ok(None) => reply.entry(&self.ttl(), &negative_attr(), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.inodes.forget(ino.0, nlookup);
        if self.fs.inodes.trim_due() {
            self.fs.invalidate(Invalidate::Trim);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0, fh.map(|h| h.0)) {
            Ok((node, st)) => reply.attr(
                &self.ttl(),
                &attr(node.ino, &st, node.is_merged_dir(), &self.fs.config.ids),
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|h| h.0),
        };
        let r = self.fs.setattr(ino.0, &set);
        match r {
            Ok(st) => {
                let merged = self
                    .fs
                    .node(ino.0)
                    .map(|n| n.is_merged_dir())
                    .unwrap_or(false);
                reply.attr(&self.ttl(), &attr(ino.0, &st, merged, &self.fs.config.ids))
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let what = NewNode::Special {
            mode,
            rdev: u64::from(rdev),
        };
        self.new_node(req, parent, name, umask, what, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.new_node(req, parent, name, umask, NewNode::Dir { mode }, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty_reply(self.fs.remove(parent.0, name.as_bytes(), false), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty_reply(self.fs.remove(parent.0, name.as_bytes(), true), reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        self.new_node(
            req,
            parent,
            link_name,
            0,
            NewNode::Symlink { target },
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty_reply(
            self.fs.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            ),
            reply,
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.fs.link(ino.0, newparent.0, newname.as_bytes()) {
            Ok(e) => self.reply_entry(e, reply),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close (no locks are kept here, writes are not
        // buffered), and ENOSYS makes the kernel stop sending FLUSH: one
        // round trip less for every close(2).
        reply.error(fuser::Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty_reply(self.fs.fsync(fh.0, datasync), reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            // Offsets are name hashes (see readdir.rs), valid across
            // handles, so the kernel may keep listings of directories that
            // have not changed in its page cache.
            Ok((fh, true)) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok((fh, false)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (entries, start) = match self.fs.dir_entries(fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(err(e)),
        };
        let ttl = self.ttl();
        for e in &entries[start..] {
            let name = OsStr::from_bytes(&e.name);
            if &*e.name == b"." || &*e.name == b".." {
                // No lookup reference for these; the kernel skips them.
                let mut a = negative_attr();
                a.ino = INodeNo(e.ino);
                a.kind = FuseType::Directory;
                if reply.add(
                    INodeNo(e.ino),
                    e.off,
                    name,
                    &Duration::ZERO,
                    &a,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let hint = (e.layer != NO_LAYER).then_some(usize::from(e.layer));
            match self.fs.lookup_hinted(ino.0, &e.name, hint) {
                Ok(Some(entry)) => {
                    let a = self.attr_of(&entry);
                    let ttl = ttl.min(self.entry_ttl(&entry));
                    if reply.add(
                        INodeNo(entry.node.ino),
                        e.off,
                        name,
                        &ttl,
                        &a,
                        Generation(0),
                    ) {
                        // The buffer is full: this entry is not sent, and
                        // its reference goes back with `entry`.
                        break;
                    }
                    entry.node.hand_over();
                }
                // Gone since the snapshot: leave it out.
                Ok(None) => continue,
                Err(e) => {
                    log::debug!("readdirplus: {e}");
                    continue;
                }
            }
        }
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (entries, start) = match self.fs.dir_entries(fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(err(e)),
        };
        for e in &entries[start..] {
            if reply.add(
                INodeNo(e.ino),
                e.off,
                kind_of(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty_reply(self.fs.fsyncdir(ino.0), reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty_reply(
            self.fs.setxattr(ino.0, name.as_bytes(), value, flags),
            reply,
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(err(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(err(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty_reply(self.fs.removexattr(ino.0, name.as_bytes()), reply)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions).
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let caller = caller(req, &self.fs.config.ids);
        let created = self
            .fs
            .create_file(caller, parent.0, name.as_bytes(), umask, mode, flags);
        match created {
            Ok((e, fd)) => {
                let of = rustix::fs::OFlags::from_bits_retain(flags as _);
                let fh = self
                    .fs
                    .handles
                    .add_file(e.node.node().clone(), fd, of, true);
                reply.created(
                    &self.ttl(),
                    &self.attr_of(&e),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                );
                e.node.hand_over();
            }
            // Another process created the name since the kernel looked it
            // up: without O_EXCL, open(O_CREAT) opens what is there.
            Err(e) if e == Errno::EXIST && flags & libc::O_EXCL == 0 => {
                self.create_existing(parent.0, name.as_bytes(), flags, reply)
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty_reply(self.fs.fallocate(fh.0, offset, length, mode), reply)
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(err(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }
}

fn empty_reply(r: Result<(), Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

fn xattr_reply(v: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(fuser::Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
