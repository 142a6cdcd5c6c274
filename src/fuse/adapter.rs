//! The FUSE adapter: decodes requests, calls the overlay, encodes replies.
//! No overlay logic lives here; this is the one place where an [`Errno`]
//! becomes a FUSE error reply, and where a lookup reference is handed to
//! the kernel (after the reply that carries it).
//!
//! Every request goes through the test harness as one [`Call`]: opened with
//! the operation, what it is about and the caller (`FuseOverlay::begin`),
//! asked whether a fault rule refuses it or changes what the caller gets,
//! and closed with the result before the reply is sent (metrics, trace).

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

use super::passthrough::{Mode, Passthrough, Registrar};
use crate::core::attrs::{SetAttr, SetTime};
use crate::core::listing::NO_LAYER;
use crate::core::namespace::NewNode;
use crate::core::notify::{Invalidate, KernelCache};
use crate::core::overlay::{Caller, Entry, Overlay};
use crate::error::{Errno, Result};
use crate::format::idmap::Ids;
use crate::harness::ops::Op;
use crate::harness::{Call, Harness, Target, Who};

/// The overlay as a `fuser` filesystem.
#[derive(Debug)]
pub(crate) struct FuseOverlay {
    /// The overlay.
    pub(crate) fs: Arc<Overlay>,
    /// Its test harness (faults, trace, metrics, listing order).
    pub(crate) h: Arc<Harness>,
    /// Passthrough of files' I/O, where the mount may use it (root,
    /// no `no_open`, no harness); `None` as well when the kernel does not
    /// offer it.
    pub(crate) pt: Option<Passthrough>,
}

/// The kernel's caches, reached through the session's notifier.
#[derive(Debug)]
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

/// The reply flags of an open file: the page cache is kept across opens,
/// unless a rule on reads or writes must see every call of the program.
fn open_flags(direct: bool) -> FopenFlags {
    if direct {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::FOPEN_KEEP_CACHE
    }
}

impl FuseOverlay {
    fn ttl(&self) -> Duration {
        self.fs.config.ttl
    }

    /// Open the harness call of a request.
    fn begin<'a>(&'a self, req: &Request, op: Op, target: Target<'a>) -> Call<'a> {
        let who = Who {
            pid: req.pid(),
            uid: req.uid(),
        };
        self.h.begin(op, who, target)
    }

    fn attr_of(&self, e: &Entry<'_>) -> FileAttr {
        attr(
            e.node.ino,
            &e.stat,
            e.node.is_merged_dir(),
            &self.fs.config.ids,
        )
    }

    /// How long the kernel may keep the name of entry `e`, at most `ttl`:
    /// not at all for a hard-linked file, so that every use of one of its
    /// names is looked up and the overlay knows which name a change goes
    /// through.
    fn entry_ttl(e: &Entry<'_>, ttl: Duration) -> Duration {
        if !e.node.is_dir() && e.stat.st_nlink > 1 {
            Duration::ZERO
        } else {
            ttl
        }
    }

    /// An entry, as `call` lets the caller see it.
    fn shown<'e>(call: &Call<'_>, r: Result<Entry<'e>>) -> Result<Entry<'e>> {
        r.map(|mut e| {
            call.lie(&mut e.stat);
            e
        })
    }

    /// Reply with `e` (attributes valid for `ttl`), handing its lookup
    /// reference to the kernel.
    fn reply_entry(&self, e: Entry<'_>, ttl: Duration, reply: ReplyEntry) {
        reply.entry_with_ttls(
            &ttl,
            &Self::entry_ttl(&e, ttl),
            &self.attr_of(&e),
            Generation(0),
        );
        e.node.hand_over();
    }

    /// Close `call` with `r` and reply with the entry or the error.
    fn entry_reply(&self, mut call: Call<'_>, r: Result<Entry<'_>>, reply: ReplyEntry) {
        let ttl = call.ttl(self.ttl());
        if let Ok(e) = &r {
            call.node(e.node.ino);
        }
        match call.end(r) {
            Ok(e) => self.reply_entry(e, ttl, reply),
            Err(e) => reply.error(err(e)),
        }
    }

    /// `create` without `O_EXCL` of a name another process created since
    /// the kernel looked it up: open what is there, as open(O_CREAT) does.
    fn create_existing(
        &self,
        parent: u64,
        name: &[u8],
        flags: i32,
        kill_suidgid: bool,
    ) -> Result<(Entry<'_>, u64)> {
        self.fs
            .lookup(parent, name)
            .and_then(|e| e.ok_or(Errno::NOENT))
            .and_then(|e| {
                let fh = self.fs.open(e.node.ino, flags, kill_suidgid)?;
                let stat = self.fs.stat_node(&e.node)?;
                Ok((Entry { stat, ..e }, fh))
            })
    }

    #[allow(clippy::too_many_arguments)]
    fn new_node(
        &self,
        req: &Request,
        op: Op,
        parent: INodeNo,
        name: &OsStr,
        umask: u32,
        what: NewNode<'_>,
        reply: ReplyEntry,
    ) {
        let call = self.begin(req, op, Target::Name(parent.0, name.as_bytes()));
        let caller = caller(req, &self.fs.config.ids);
        let r = call.run(|| {
            self.fs
                .create_node(caller, parent.0, name.as_bytes(), umask, what)
        });
        let r = Self::shown(&call, r);
        self.entry_reply(call, r, reply);
    }

    /// A request answered with success or an errno, that a `noop` rule
    /// may answer without doing it.
    fn empty(&self, call: Call<'_>, f: impl FnOnce() -> Result<()>, reply: ReplyEmpty) {
        let r = call.run_or_noop(|| Ok(()), f);
        empty_reply(call.end(r), reply)
    }

    /// `unlink` or `rmdir`.
    fn remove(&self, req: &Request, op: Op, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let call = self.begin(req, op, Target::Name(parent.0, name.as_bytes()));
        let dir = op == Op::Rmdir;
        self.empty(
            call,
            || self.fs.remove(parent.0, name.as_bytes(), dir),
            reply,
        )
    }

    /// How the open file `fh` of node `ino` is served, and the flags of
    /// the reply: passed through to its file where the mount uses
    /// passthrough (`Passthrough::open`), through the daemon otherwise.
    fn mode(
        &self,
        ino: u64,
        fh: u64,
        target: Target<'_>,
        r: &impl Registrar,
    ) -> (Mode, FopenFlags) {
        let Some(pt) = &self.pt else {
            return (Mode::Daemon, open_flags(self.h.direct_io(target)));
        };
        if fh == 0 {
            return (Mode::Daemon, open_flags(false));
        }
        let data = self.fs.final_data_fd(fh);
        match pt.open(ino, data.as_deref(), r) {
            // A passed-through open may carry no cache flag.
            m @ Mode::Backing(_) => (m, FopenFlags::empty()),
            // Such a file's pages in the kernel may be older than what
            // passed-through writes put in it since: not kept.
            m if data.is_some() => (m, FopenFlags::empty()),
            m => (m, open_flags(false)),
        }
    }

    /// The listing of `fh` (directory `ino`) from `offset` on, in the
    /// mount's order; without handles (`no_opendir`), of `ino`.
    fn listing(
        &self,
        call: &Call<'_>,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<crate::harness::Listing> {
        let (entries, start) = if self.fs.config.no_opendir {
            call.run(|| self.fs.listing_of(ino, offset))?
        } else {
            call.run(|| self.fs.dir_entries(fh, offset))?
        };
        Ok(self.h.listing(fh, entries, start, offset))
    }
}

impl Filesystem for FuseOverlay {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Without OPEN (`no_open`) the kernel must send the truncate of an
        // `O_TRUNC` open as a SETATTR: with atomic `O_TRUNC` it would leave
        // it to an OPEN it no longer sends.
        if !self.fs.config.no_open
            && config
                .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC)
                .is_err()
        {
            log::debug!("kernel lacks atomic O_TRUNC");
        }
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            // Shared mmap of files opened with direct I/O (files a fault
            // rule on reads or writes is about).
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            // Setuid, setgid and capabilities are taken away by the daemon
            // (`Overlay::drop_privileges`), as the requests tell it: the
            // kernel then no longer asks for `security.capability` before
            // every write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            if config.add_capabilities(cap).is_err() {
                log::debug!("kernel lacks capability {cap:?}");
            }
        }
        if self.pt.is_some() {
            // Depth 1: the backing files may not sit on a stacked
            // filesystem, and a kernel overlay may still stack on this one.
            let ok = config.set_max_stack_depth(1).is_ok()
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
            if !ok {
                log::debug!("kernel lacks passthrough");
                let _ = config.set_max_stack_depth(0);
                self.pt = None;
            }
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut call = self.begin(req, Op::Lookup, Target::Name(parent.0, name.as_bytes()));
        let r = call.run(|| self.fs.lookup(parent.0, name.as_bytes()));
        let ttl = call.ttl(self.ttl());
        match r {
            Ok(Some(mut e)) => {
                call.lie(&mut e.stat);
                call.node(e.node.ino);
                call.finish(None);
                self.reply_entry(e, ttl, reply);
            }
            Ok(None) => {
                call.finish(Some(Errno::NOENT));
                reply.entry(&ttl, &negative_attr(), Generation(0));
            }
            Err(e) => {
                call.finish(Some(e));
                reply.error(err(e));
            }
        }
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        let call = self.begin(req, Op::Forget, Target::Node(ino.0));
        self.fs.inodes.forget(ino.0, nlookup);
        if self.fs.inodes.trim_due() {
            self.fs.invalidate(Invalidate::Trim);
        }
        call.finish(None);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let call = self.begin(req, Op::Getattr, Target::Node(ino.0));
        let r = call.run(|| self.fs.getattr(ino.0, fh.map(|h| h.0)));
        let r = r.map(|(node, mut st)| {
            call.lie(&mut st);
            (node, st)
        });
        let ttl = call.ttl(self.ttl());
        match call.end(r) {
            Ok((node, st)) => reply.attr(
                &ttl,
                &attr(node.ino, &st, node.is_merged_dir(), &self.fs.config.ids),
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
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
        kill_suidgid: bool,
        reply: ReplyAttr,
    ) {
        let call = self.begin(req, Op::Setattr, Target::Node(ino.0));
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|h| h.0),
            kill_suidgid,
            caller: (req.uid(), req.gid()),
        };
        let r = call.run_or_noop(
            || self.fs.getattr(ino.0, set.fh).map(|(_, st)| st),
            || self.fs.setattr(ino.0, &set),
        );
        let r = r.map(|mut st| {
            call.lie(&mut st);
            st
        });
        let ttl = call.ttl(self.ttl());
        match call.end(r) {
            Ok(st) => {
                let merged = self
                    .fs
                    .node(ino.0)
                    .map(|n| n.is_merged_dir())
                    .unwrap_or(false);
                reply.attr(&ttl, &attr(ino.0, &st, merged, &self.fs.config.ids))
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let call = self.begin(req, Op::Readlink, Target::Node(ino.0));
        let r = call.run(|| self.fs.readlink(ino.0));
        match call.end(r) {
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
        self.new_node(req, Op::Mknod, parent, name, umask, what, reply);
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
        let what = NewNode::Dir { mode };
        self.new_node(req, Op::Mkdir, parent, name, umask, what, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(req, Op::Unlink, parent, name, reply)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(req, Op::Rmdir, parent, name, reply)
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
        let what = NewNode::Symlink { target };
        self.new_node(req, Op::Symlink, parent, link_name, 0, what, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (a, b) = (name.as_bytes(), newname.as_bytes());
        let call = self.begin(req, Op::Rename, Target::Rename(parent.0, a, newparent.0, b));
        self.empty(
            call,
            || self.fs.rename(parent.0, a, newparent.0, b, flags.bits()),
            reply,
        )
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = newname.as_bytes();
        let call = self.begin(req, Op::Link, Target::Link(ino.0, newparent.0, name));
        let r = call.run(|| self.fs.link(ino.0, newparent.0, name));
        let r = Self::shown(&call, r);
        self.entry_reply(call, r, reply);
    }

    fn open(
        &self,
        req: &Request,
        ino: INodeNo,
        flags: OpenFlags,
        kill_suidgid: bool,
        reply: ReplyOpen,
    ) {
        let target = Target::Node(ino.0);
        let call = self.begin(req, Op::Open, target);
        if self.fs.config.no_open {
            // The kernel sends no OPEN after this answer; this open and
            // every later one go on without a handle (`Overlay::request_fd`).
            call.finish(Some(Errno::NOSYS));
            return reply.error(fuser::Errno::ENOSYS);
        }
        let r = call.run(|| self.fs.open(ino.0, flags.0, kill_suidgid));
        match call.end(r) {
            Ok(fh) => match self.mode(ino.0, fh, target, &reply) {
                (Mode::Backing(b), flags) => reply.opened_passthrough(FileHandle(fh), flags, &b),
                (Mode::Daemon, flags) => reply.opened(FileHandle(fh), flags),
            },
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut call = self.begin(req, Op::Read, Target::Node(ino.0));
        call.io(offset, u64::from(size));
        let size = call
            .short()
            .map_or(size, |n| size.min(u32::try_from(n).unwrap_or(u32::MAX)));
        let r = call.run(|| self.fs.read(ino.0, fh.0, offset, size));
        let r = r.map(|mut d| {
            call.corrupt(&mut d);
            d
        });
        if let Ok(d) = &r {
            call.bytes(d.len() as u64);
        }
        match call.end(r) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut call = self.begin(req, Op::Write, Target::Node(ino.0));
        call.io(offset, data.len() as u64);
        let data = match call.short() {
            Some(n) => data
                .get(..n.min(data.len() as u64) as usize)
                .unwrap_or(data),
            None => data,
        };
        let r = call.run_or_noop(
            || Ok(data.len() as u32),
            || {
                let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
                let append = flags.0 & libc::O_APPEND != 0;
                self.fs.write(ino.0, fh.0, offset, data, kill, append)
            },
        );
        if let Ok(n) = &r {
            call.bytes(u64::from(*n));
        }
        match call.end(r) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(req, Op::Flush, Target::Node(ino.0));
        if self.h.answers_flush() {
            // Rules are about close(2): answer every FLUSH.
            return self.empty(call, || Ok(()), reply);
        }
        // Nothing to do at close (no locks are kept here, writes are not
        // buffered), and ENOSYS makes the kernel stop sending FLUSH: one
        // round trip less for every close(2).
        call.finish(Some(Errno::NOSYS));
        reply.error(fuser::Errno::ENOSYS);
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(req, Op::Release, Target::Node(ino.0));
        self.fs.release(fh.0);
        if let Some(pt) = &self.pt {
            pt.release(ino.0);
        }
        call.finish(None);
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(req, Op::Fsync, Target::Node(ino.0));
        self.empty(call, || self.fs.fsync(ino.0, fh.0, datasync), reply)
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let call = self.begin(req, Op::Opendir, Target::Node(ino.0));
        if self.fs.config.no_opendir {
            // The kernel sends no OPENDIR or RELEASEDIR after this answer;
            // listings come without a handle (`Overlay::listing_of`).
            call.finish(Some(Errno::NOSYS));
            return reply.error(fuser::Errno::ENOSYS);
        }
        let r = call.run(|| self.fs.opendir(ino.0));
        match call.end(r) {
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
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let call = self.begin(req, Op::Readdirplus, Target::Node(ino.0));
        let listing = match self.listing(&call, ino.0, fh.0, offset) {
            Ok(l) => l,
            Err(e) => {
                call.finish(Some(e));
                return reply.error(err(e));
            }
        };
        let ttl = self.ttl();
        for e in listing.entries() {
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
                    let ttl = self.h.entry_ttl(Target::Name(ino.0, &e.name), ttl);
                    let ttl = Self::entry_ttl(&entry, ttl);
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
        call.finish(None);
        reply.ok();
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let call = self.begin(req, Op::Readdir, Target::Node(ino.0));
        let listing = match self.listing(&call, ino.0, fh.0, offset) {
            Ok(l) => l,
            Err(e) => {
                call.finish(Some(e));
                return reply.error(err(e));
            }
        };
        for e in listing.entries() {
            if reply.add(
                INodeNo(e.ino),
                e.off,
                kind_of(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        call.finish(None);
        reply.ok();
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(req, Op::Releasedir, Target::Node(ino.0));
        self.fs.releasedir(fh.0);
        self.h.release_listing(fh.0);
        call.finish(None);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(req, Op::Fsyncdir, Target::Node(ino.0));
        self.empty(call, || self.fs.fsyncdir(ino.0), reply)
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let call = self.begin(req, Op::Statfs, Target::Node(ino.0));
        let r = call.run(|| self.fs.statfs());
        match call.end(r) {
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
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(req, Op::Setxattr, Target::Node(ino.0));
        self.empty(
            call,
            || self.fs.setxattr(ino.0, name.as_bytes(), value, flags),
            reply,
        )
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let call = self.begin(req, Op::Getxattr, Target::Node(ino.0));
        let r = call.run(|| self.fs.getxattr(ino.0, name.as_bytes()));
        match call.end(r) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(err(e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let call = self.begin(req, Op::Listxattr, Target::Node(ino.0));
        let r = call.run(|| self.fs.listxattr(ino.0));
        match call.end(r) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(err(e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let call = self.begin(req, Op::Removexattr, Target::Node(ino.0));
        self.empty(call, || self.fs.removexattr(ino.0, name.as_bytes()), reply)
    }

    fn access(&self, req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions).
        let call = self.begin(req, Op::Access, Target::Node(ino.0));
        self.empty(call, || Ok(()), reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        kill_suidgid: bool,
        reply: ReplyCreate,
    ) {
        let target = Target::Name(parent.0, name.as_bytes());
        let mut call = self.begin(req, Op::Create, target);
        let caller = caller(req, &self.fs.config.ids);
        let created = call.run(|| {
            match self
                .fs
                .create_file(caller, parent.0, name.as_bytes(), umask, mode, flags)
            {
                Ok((e, fd)) => {
                    let fh = self
                        .fs
                        .add_created(e.node.node().clone(), fd, flags, &e.stat);
                    Ok((e, fh))
                }
                // Another process created the name since the kernel looked
                // it up: without O_EXCL, open(O_CREAT) opens what is there.
                Err(e) if e == Errno::EXIST && flags & libc::O_EXCL == 0 => {
                    self.create_existing(parent.0, name.as_bytes(), flags, kill_suidgid)
                }
                Err(e) => Err(e),
            }
        });
        let created = created.map(|(mut e, fh)| {
            call.lie(&mut e.stat);
            (e, fh)
        });
        let ttl = call.ttl(self.ttl());
        if let Ok((e, _)) = &created {
            call.node(e.node.ino);
        }
        match call.end(created) {
            Ok((e, fh)) => {
                let attr = self.attr_of(&e);
                let fh_ = FileHandle(fh);
                match self.mode(e.node.ino, fh, target, &reply) {
                    (Mode::Backing(b), flags) => {
                        reply.created_passthrough(&ttl, &attr, Generation(0), fh_, flags, &b)
                    }
                    (Mode::Daemon, flags) => reply.created(&ttl, &attr, Generation(0), fh_, flags),
                }
                e.node.hand_over();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(req, Op::Fallocate, Target::Node(ino.0));
        self.empty(
            call,
            || self.fs.fallocate(ino.0, fh.0, offset, length, mode),
            reply,
        )
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let call = self.begin(req, Op::Lseek, Target::Node(ino.0));
        let r = call.run(|| self.fs.lseek(ino.0, fh.0, offset, whence));
        match call.end(r) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(err(e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let target = Target::Nodes(ino_in.0, ino_out.0);
        let mut call = self.begin(req, Op::CopyFileRange, target);
        call.io(offset_out, len);
        let len = call.short().map_or(len, |n| len.min(n));
        let r = call.run(|| {
            self.fs.copy_file_range(
                (ino_in.0, fh_in.0),
                offset_in,
                (ino_out.0, fh_out.0),
                offset_out,
                len,
            )
        });
        if let Ok(n) = &r {
            call.bytes(u64::from(*n));
        }
        match call.end(r) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }
}

fn empty_reply(r: Result<()>, reply: ReplyEmpty) {
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
