//! Namespace changes: create, mkdir, mknod, symlink, link, unlink, rmdir,
//! rename.
//!
//! Every change happens in the upper layer, inside a parent directory that
//! has been copied up first, under that directory's write lock (both
//! parents' for a rename, in id order). Copy-ups are done before any
//! directory lock is taken. Deleting a name that lower layers show leaves
//! a whiteout; a directory created where a lower one was deleted is opaque.
//! Entries that must replace a whiteout are built in the work directory and
//! published with one rename.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, XattrFlags};

use crate::copyup::Data;
use crate::error::{Errno, Result};
use crate::inode::{LayerObj, Name, Node, NodeState, Obj};
use crate::layer::remove_tree;
use crate::overlay::{Caller, Entry, Overlay};
use crate::override_stat::Override;
use crate::resolve::{self, open_path};
use crate::util;
use crate::whiteout::{self, Formats};

/// What to create.
#[derive(Debug)]
pub enum NewKind<'a> {
    /// A regular file, opened with these flags.
    File {
        /// Permission bits.
        mode: u32,
        /// open(2) flags.
        flags: i32,
    },
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A device, FIFO, socket or empty regular file.
    Special {
        /// Type and permission bits.
        mode: u32,
        /// Device number.
        rdev: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Its target.
        target: &'a [u8],
    },
}

/// What the upper directory holds at a name that is not visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpperSlot {
    Empty,
    CharWhiteout,
    WhFile,
}

/// Permission bits, type (with device number) and on-disk stand-in of a new
/// object under owner/mode overrides.
type Forced = (u32, Option<(u32, u64)>, NewKind<'static>);

/// For a new object under owner/mode overrides: the permission bits and
/// type to record, and what to create on disk instead (a fixed mode; device
/// nodes, FIFOs and sockets become empty files). `None` for symlinks, which
/// cannot carry the xattr.
fn forced_object(what: &NewKind<'_>, umask: u32, sgid_parent: bool) -> Option<Forced> {
    match what {
        NewKind::File { mode, flags } => Some((
            mode & 0o7777 & !umask,
            None,
            NewKind::File {
                mode: 0o644,
                flags: *flags,
            },
        )),
        NewKind::Dir { mode } => Some((
            (mode & 0o7777 & !umask) | if sgid_parent { libc::S_ISGID } else { 0 },
            None,
            NewKind::Dir { mode: 0o755 },
        )),
        NewKind::Special { mode, rdev } => Some((
            mode & 0o7777 & !umask,
            Some((mode & libc::S_IFMT, *rdev)).filter(|(t, _)| *t != libc::S_IFREG),
            NewKind::Special {
                mode: libc::S_IFREG | 0o644,
                rdev: 0,
            },
        )),
        NewKind::Symlink { .. } => None,
    }
}

fn check_new_name(name: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return Err(Errno::NAMETOOLONG);
    }
    if whiteout::is_marker_name(name) {
        // Such a name would read back as a whiteout.
        return Err(Errno::INVAL);
    }
    Ok(())
}

fn upper_slot(pup: &OwnedFd, name: &[u8]) -> Result<UpperSlot> {
    match rustix::fs::statat(pup, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if whiteout::is_whiteout(&st) => Ok(UpperSlot::CharWhiteout),
        Ok(_) => Err(Errno::EXIST),
        Err(Errno::NOENT) => Ok(if whiteout::has_wh_file(pup, name) {
            UpperSlot::WhFile
        } else {
            UpperSlot::Empty
        }),
        Err(e) => Err(e),
    }
}

/// Whether the upper directory has a default ACL (then the umask is not
/// applied: the ACL decides, as on any filesystem).
fn has_default_acl(dir: &OwnedFd) -> bool {
    crate::xattr::get(dir, b"system.posix_acl_default").is_ok()
}

impl Overlay {
    /// Lock one or two directories for writing, in id order.
    fn lock_pair<'a>(
        a: &'a Node,
        b: &'a Node,
    ) -> (
        parking_lot::RwLockWriteGuard<'a, ()>,
        Option<parking_lot::RwLockWriteGuard<'a, ()>>,
    ) {
        if a.ino == b.ino {
            (a.change_listing(), None)
        } else if a.ino < b.ino {
            let g1 = a.change_listing();
            (g1, Some(b.change_listing()))
        } else {
            let g2 = b.change_listing();
            (a.change_listing(), Some(g2))
        }
    }

    /// Create a new entry (`create`, `mkdir`, `mknod`, `symlink`). Returns
    /// the entry and, for `File`, the open fd.
    pub fn create_entry(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        umask: u32,
        what: NewKind<'_>,
    ) -> Result<(Entry, Option<OwnedFd>)> {
        self.writable()?;
        check_new_name(name)?;
        let dir = self.dir_node(parent)?;
        // Fail before anything is copied up, as the kernel does.
        if resolve::exists(&dir.dir_layers(), name)? {
            return Err(Errno::EXIST);
        }
        let pup = self.copy_up(&dir, Data::All)?;
        let _g = dir.change_listing();
        if resolve::exists(&dir.dir_layers(), name)? {
            return Err(Errno::EXIST);
        }
        let slot = upper_slot(&pup, name)?;
        let mut pst = rustix::fs::fstat(&*pup)?;
        self.present(0, &Obj::Fd(pup.clone()), &mut pst);
        let sgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let gid = if sgid_parent { pst.st_gid } else { caller.gid };
        let umask = if has_default_acl(&pup) { 0 } else { umask };
        let is_dir = matches!(what, NewKind::Dir { .. });
        // With owner/mode overrides the object on disk gets a fixed mode and
        // stays ours; the real owner and mode go into the xattr.
        let (forced, what, umask, uid, gid) = match self
            .override_name(0)
            .and_then(|n| forced_object(&what, umask, sgid_parent).map(|f| (n, f)))
        {
            Some((ov_name, (perm, kind, disk))) => {
                let ov = Override {
                    uid: caller.uid,
                    gid,
                    perm,
                    kind,
                };
                (Some((ov_name, ov)), disk, 0, self.euid, self.egid)
            }
            None => (None, what, umask, caller.uid, gid),
        };
        let work = self.stack.work.as_ref().ok_or(Errno::ROFS)?;
        // Build in place when nothing is in the way, else in the work dir.
        let (at, tmp): (&OwnedFd, Vec<u8>) = if slot == UpperSlot::Empty {
            (&pup, name.to_vec())
        } else {
            (work, self.stack.tmp_name())
        };
        let made = self
            .make_object(at, &tmp, &what, umask, uid, gid, sgid_parent)
            .and_then(|(obj, file)| {
                if let Some((ov_name, ov)) = &forced {
                    let set = crate::xattr::set(
                        &obj,
                        ov_name,
                        ov.format().as_bytes(),
                        XattrFlags::empty(),
                    );
                    if let Err(e) = set {
                        let _ = remove_tree(at, &tmp, is_dir);
                        return Err(e);
                    }
                }
                Ok((obj, file))
            });
        let (obj, file) = match made {
            Ok(x) => x,
            Err(e) => {
                if slot != UpperSlot::Empty {
                    let _ = remove_tree(work, &tmp, is_dir);
                }
                return Err(e);
            }
        };
        if slot != UpperSlot::Empty {
            let published = (|| {
                if is_dir {
                    self.stack.formats.set_opaque(&obj)?;
                }
                self.publish(work, &tmp, &pup, name, slot, is_dir)
            })();
            if let Err(e) = published {
                let _ = remove_tree(work, &tmp, is_dir);
                return Err(e);
            }
        }
        let mut stat = rustix::fs::fstat(&obj)?;
        let obj = if is_dir {
            Obj::Fd(Arc::new(obj))
        } else {
            Obj::At {
                dir: pup.clone(),
                name: Name::from(name),
            }
        };
        self.present(0, &obj, &mut stat);
        let entry = self.new_node(parent, name, obj, stat);
        Ok((entry, file))
    }

    /// Put the object `tmp` in `work` at `name` in `pup`, replacing the
    /// whiteout that is there.
    fn publish(
        &self,
        work: &OwnedFd,
        tmp: &[u8],
        pup: &OwnedFd,
        name: &[u8],
        slot: UpperSlot,
        is_dir: bool,
    ) -> Result<()> {
        match slot {
            UpperSlot::CharWhiteout if is_dir => {
                // A directory cannot be renamed over a device: swap them
                // and remove the whiteout that lands in the work dir.
                rustix::fs::renameat_with(work, tmp, pup, name, RenameFlags::EXCHANGE)?;
                let _ = rustix::fs::unlinkat(work, tmp, AtFlags::empty());
            }
            UpperSlot::CharWhiteout => rustix::fs::renameat(work, tmp, pup, name)?,
            UpperSlot::WhFile | UpperSlot::Empty => {
                // New object first, marker second: in between (or after a
                // crash there) the object beside its `.wh.` file is shown
                // and the marker still hides the layers below, which is the
                // state we want anyway. So a marker that cannot be removed
                // (say a directory someone put there) is left, not an error.
                rustix::fs::renameat_with(work, tmp, pup, name, RenameFlags::NOREPLACE)?;
                if let Err(e) = Formats::remove_wh_file(pup, name) {
                    log::warn!(
                        "whiteout marker for {} left in place: {e}",
                        crate::layer::display_name(name)
                    );
                }
            }
        }
        Ok(())
    }

    /// Create the object `name` in `at` with the caller's ownership.
    /// Returns its `O_PATH` fd and, for files, an open fd.
    #[allow(clippy::too_many_arguments)]
    fn make_object(
        &self,
        at: &OwnedFd,
        name: &[u8],
        what: &NewKind<'_>,
        umask: u32,
        uid: u32,
        gid: u32,
        sgid_parent: bool,
    ) -> Result<(OwnedFd, Option<OwnedFd>)> {
        let mut file = None;
        let want_mode;
        match what {
            NewKind::File { mode, flags } => {
                want_mode = mode & 0o7777 & !umask;
                let keep = OFlags::from_bits_retain(*flags as _)
                    & (OFlags::ACCMODE
                        | OFlags::APPEND
                        | OFlags::DIRECT
                        | OFlags::DSYNC
                        | OFlags::SYNC
                        | OFlags::NONBLOCK
                        | OFlags::NOATIME);
                let fd = rustix::fs::openat(
                    at,
                    name,
                    keep | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(want_mode),
                )?;
                file = Some(fd);
            }
            NewKind::Dir { mode } => {
                want_mode = (mode & 0o7777 & !umask) | if sgid_parent { libc::S_ISGID } else { 0 };
                rustix::fs::mkdirat(at, name, Mode::from_raw_mode(want_mode))?;
            }
            NewKind::Special { mode, rdev } => {
                want_mode = mode & 0o7777 & !umask;
                let kind = FileType::from_raw_mode(*mode);
                rustix::fs::mknodat(at, name, kind, Mode::from_raw_mode(want_mode), *rdev)?;
            }
            NewKind::Symlink { target } => {
                want_mode = 0o777;
                rustix::fs::symlinkat(*target, at, name)?;
            }
        }
        let finish = || -> Result<OwnedFd> {
            let obj = open_path(at, name)?;
            let before = rustix::fs::fstat(&obj)?;
            util::give_to(&obj, uid, gid, &before)?;
            if !matches!(what, NewKind::Symlink { .. }) {
                // The filesystem applied a default ACL, if any, to the mode;
                // keep that, but restore setuid/setgid bits the chown cleared.
                let after = rustix::fs::fstat(&obj)?;
                let mut mode = before.st_mode & 0o7777;
                if sgid_parent && matches!(what, NewKind::Dir { .. }) {
                    mode |= libc::S_ISGID;
                }
                mode |= want_mode & (libc::S_ISUID | libc::S_ISGID | libc::S_ISVTX);
                if after.st_mode & 0o7777 != mode {
                    util::set_mode(&obj, mode)?;
                }
            }
            Ok(obj)
        };
        match finish() {
            Ok(obj) => Ok((obj, file)),
            Err(e) => {
                let _ = remove_tree(at, name, matches!(what, NewKind::Dir { .. }));
                Err(e)
            }
        }
    }

    /// A node for a freshly created upper object.
    fn new_node(&self, parent: u64, name: &[u8], obj: Obj, stat: Stat) -> Entry {
        let kind = FileType::from_raw_mode(stat.st_mode);
        let mut ino = self.inodes.ino_for(stat.st_dev, stat.st_ino);
        let shared = obj.shared_name(name);
        loop {
            let node = Node::new(
                ino,
                kind,
                NodeState {
                    parent,
                    name: shared.clone(),
                    upper: Some(obj.clone()),
                    lowers: Vec::new(),
                    detached: false,
                    origin: None,
                },
            );
            let (n, inserted) = self.inodes.insert_or_get(node);
            if inserted {
                if kind == FileType::Directory {
                    self.new_dir_node();
                }
                self.inodes.set_dentry(parent, shared, n.ino);
                return Entry { node: n, stat };
            }
            // The id is still held by an older node whose inode number the
            // filesystem reused: take a fresh one.
            self.inodes.forget(n.ino, 1);
            ino = self.inodes.fresh_ino();
        }
    }

    /// `link`: a new name for an existing non-directory.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Entry> {
        self.writable()?;
        check_new_name(name)?;
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::PERM);
        }
        let dir = self.dir_node(parent)?;
        if resolve::exists(&dir.dir_layers(), name)? {
            return Err(Errno::EXIST);
        }
        let src = self.copy_up(&node, Data::All)?;
        let pup = self.copy_up(&dir, Data::All)?;
        let _g = dir.change_listing();
        if resolve::exists(&dir.dir_layers(), name)? {
            return Err(Errno::EXIST);
        }
        let slot = upper_slot(&pup, name)?;
        let src_path = crate::sys::proc_fd_path(src.as_fd());
        let link_at = |at: &OwnedFd, n: &[u8]| {
            rustix::fs::linkat(
                rustix::fs::CWD,
                src_path.as_c_str(),
                at,
                n,
                AtFlags::SYMLINK_FOLLOW,
            )
        };
        if slot == UpperSlot::Empty {
            link_at(&pup, name)?;
        } else {
            let work = self.stack.work.as_ref().ok_or(Errno::ROFS)?;
            let tmp = self.stack.tmp_name();
            link_at(work, &tmp)?;
            if let Err(e) = self.publish(work, &tmp, &pup, name, slot, false) {
                let _ = rustix::fs::unlinkat(work, tmp.as_slice(), AtFlags::empty());
                return Err(e);
            }
        }
        // Not stat_node: this directory's write lock is held.
        let mut stat = rustix::fs::fstat(&*src)?;
        self.present(0, &Obj::Fd(src.clone()), &mut stat);
        self.inodes.set_dentry(parent, Name::from(name), node.ino);
        let node = self.inodes.reference(node.ino).unwrap_or(node);
        Ok(Entry { node, stat })
    }

    /// `unlink` (`rmdir` when `dir` is set).
    pub fn remove(&self, parent: u64, name: &[u8], want_dir: bool) -> Result<()> {
        self.writable()?;
        if whiteout::is_marker_name(name) {
            return Err(Errno::NOENT);
        }
        let dir = self.dir_node(parent)?;
        // Check before anything is copied up, then again under the lock.
        if !dir.has_upper() {
            self.removable(&dir, name, want_dir)?;
        }
        let pup = self.copy_up(&dir, Data::All)?;
        let _g = dir.change_listing();
        let (found, in_upper, is_dir) = self.removable(&dir, name, want_dir)?;
        let lower_below = if in_upper {
            resolve::exists(&dir.lower_dirs(), name)?
        } else {
            true
        };
        drop(found);
        let work = self.stack.work.as_ref().ok_or(Errno::ROFS)?;
        if in_upper && !is_dir {
            self.pin_named(parent, name)?;
        }
        if in_upper {
            if is_dir || lower_below {
                // Move the upper object out of the way in one step, leaving
                // a whiteout behind when lower layers still show the name.
                let tmp = self.stack.tmp_name();
                self.move_out(&pup, name, work, &tmp, lower_below)?;
                let _ = remove_tree(work, &tmp, is_dir);
            } else {
                rustix::fs::unlinkat(&*pup, name, AtFlags::empty())?;
            }
        } else {
            self.stack.formats.make_whiteout(&*pup, name)?;
        }
        self.detach(parent, name);
        Ok(())
    }

    /// What `unlink`/`rmdir` of `name` in `dir` would remove, or why it
    /// cannot: (resolution, whether the top object is in the upper layer,
    /// whether it is a directory).
    fn removable(
        &self,
        dir: &Node,
        name: &[u8],
        want_dir: bool,
    ) -> Result<(resolve::Found, bool, bool)> {
        let found = resolve::resolve(&dir.dir_layers(), name)?.ok_or(Errno::NOENT)?;
        let is_dir = found.kind() == FileType::Directory;
        if want_dir && !is_dir {
            return Err(Errno::NOTDIR);
        }
        if !want_dir && is_dir {
            return Err(Errno::ISDIR);
        }
        let in_upper = self.stack.has_upper && found.top.layer == 0;
        if is_dir {
            // Emptiness of the merged view, through a temporary node.
            let probe = Node::new(
                0,
                FileType::Directory,
                NodeState {
                    parent: dir.ino,
                    name: Name::from(name),
                    upper: in_upper.then(|| found.top.obj.clone()),
                    lowers: {
                        let below = found.below.iter().cloned().map(LayerObj::from);
                        if in_upper {
                            below.collect()
                        } else {
                            std::iter::once(found.top.clone()).chain(below).collect()
                        }
                    },
                    detached: false,
                    origin: None,
                },
            );
            if !self.dir_is_empty(&probe)? {
                return Err(Errno::NOTEMPTY);
            }
        }
        Ok((found, in_upper, is_dir))
    }

    /// Rename `name` in `pup` to `tmp` in the work dir, leaving a whiteout
    /// at `name` if `whiteout`.
    fn move_out(
        &self,
        pup: &OwnedFd,
        name: &[u8],
        work: &OwnedFd,
        tmp: &[u8],
        whiteout: bool,
    ) -> Result<()> {
        if !whiteout {
            return rustix::fs::renameat(pup, name, work, tmp);
        }
        if self
            .stack
            .formats
            .char_whiteout
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            match rustix::fs::renameat_with(pup, name, work, tmp, RenameFlags::WHITEOUT) {
                Ok(()) => return Ok(()),
                Err(Errno::INVAL) | Err(Errno::PERM) | Err(Errno::NOTSUP) => {}
                Err(e) => return Err(e),
            }
        }
        rustix::fs::renameat(pup, name, work, tmp)?;
        self.stack.formats.make_whiteout(pup, name)
    }

    /// The name (`parent`, `name`) no longer shows the node it showed.
    fn detach(&self, parent: u64, name: &[u8]) {
        if let Some(ino) = self.inodes.remove_dentry(parent, name) {
            if let Some(n) = self.inodes.get(ino) {
                let mut st = n.state.write();
                if st.parent == parent && *st.name == *name {
                    st.detached = true;
                }
            }
        }
    }

    /// `rename` with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` semantics.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.writable()?;
        let flags = RenameFlags::from_bits_retain(flags);
        if !(RenameFlags::NOREPLACE | RenameFlags::EXCHANGE).contains(flags)
            || flags.contains(RenameFlags::NOREPLACE | RenameFlags::EXCHANGE)
        {
            return Err(Errno::INVAL);
        }
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        if whiteout::is_marker_name(name) {
            return Err(Errno::NOENT);
        }
        check_new_name(newname)?;
        let d1 = self.dir_node(parent)?;
        let d2 = self.dir_node(newparent)?;

        // Find both ends and copy up what has to move, before locking.
        let src = self.lookup(parent, name)?.ok_or(Errno::NOENT)?;
        let src_node = src.node.clone();
        self.inodes.forget(src_node.ino, 1);
        let dst = self.lookup(newparent, newname)?;
        let dst_node = dst.map(|e| {
            self.inodes.forget(e.node.ino, 1);
            e.node
        });
        if exchange && dst_node.is_none() {
            return Err(Errno::NOENT);
        }
        if flags.contains(RenameFlags::NOREPLACE) && dst_node.is_some() {
            return Err(Errno::EXIST);
        }
        if let Some(dn) = &dst_node {
            if dn.ino == src_node.ino {
                return Ok(()); // same file: nothing to do
            }
            if !exchange {
                match (src_node.is_dir(), dn.is_dir()) {
                    (true, false) => return Err(Errno::NOTDIR),
                    (false, true) => return Err(Errno::ISDIR),
                    _ => {}
                }
            }
        }
        // Directories with lower parts cannot move without redirects; the
        // kernel says so before it looks at the target's contents.
        let has_lower_dir = |n: &Node| n.is_dir() && !n.state.read().lowers.is_empty();
        if has_lower_dir(&src_node) || (exchange && dst_node.as_deref().is_some_and(has_lower_dir))
        {
            return Err(Errno::XDEV);
        }
        if let Some(dn) = &dst_node {
            if !exchange && dn.is_dir() && !self.dir_is_empty(dn)? {
                // The kernel marks a pure upper directory that moves into a
                // merged directory opaque before the upper rename finds a
                // non-empty pure upper target; keep the upper identical.
                let pure_upper_target = dn.state.read().lowers.is_empty();
                if pure_upper_target
                    && src_node.is_dir()
                    && src_node.upper().is_some()
                    && !d2.state.read().lowers.is_empty()
                {
                    self.make_opaque(&src_node)?;
                }
                return Err(Errno::NOTEMPTY);
            }
        }
        self.copy_up(&src_node, Data::All)?;
        if exchange {
            if let Some(dn) = &dst_node {
                self.copy_up(dn, Data::All)?;
            }
        }
        let p1 = self.copy_up(&d1, Data::All)?;
        let p2 = self.copy_up(&d2, Data::All)?;
        let (_g1, _g2) = Self::lock_pair(&d1, &d2);
        // A moved directory's `..` changes.
        for n in std::iter::once(&src_node).chain(dst_node.as_ref().filter(|_| exchange)) {
            if n.is_dir() {
                n.listing_changed
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }

        // Under the locks: the upper must hold the source now.
        let st = rustix::fs::statat(&*p1, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if whiteout::is_whiteout(&st) {
            return Err(Errno::NOENT);
        }
        let src_lower = resolve::exists(&d1.lower_dirs(), name)?;
        let d1_merged = !d1.state.read().lowers.is_empty();
        let d2_merged = !d2.state.read().lowers.is_empty();

        if exchange {
            // As the kernel does: a pure upper directory that moves into a
            // merged directory becomes opaque, so that nothing of a lower
            // directory of the same name can show through it.
            if src_node.is_dir() && d2_merged {
                self.make_opaque(&src_node)?;
            }
            if let Some(dn) = &dst_node {
                if dn.is_dir() && d1_merged {
                    self.make_opaque(dn)?;
                }
            }
            rustix::fs::renameat_with(&*p1, name, &*p2, newname, RenameFlags::EXCHANGE)?;
            self.inodes.remove_dentry(parent, name);
            self.inodes.remove_dentry(newparent, newname);
            self.relocate(&src_node, newparent, newname, &p2);
            if let Some(dn) = &dst_node {
                self.relocate(dn, parent, name, &p1);
            }
            return Ok(());
        }

        // Plain rename (maybe NOREPLACE). A replaced file may still be open.
        if dst_node.is_some() {
            self.pin_named(newparent, newname)?;
        }
        if flags.contains(RenameFlags::NOREPLACE) && resolve::exists(&d2.dir_layers(), newname)? {
            return Err(Errno::EXIST);
        }
        let dst_upper = match rustix::fs::statat(&*p2, newname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(e),
        };
        let dst_is_whiteout = dst_upper.as_ref().is_some_and(whiteout::is_whiteout);
        if let (Some(dn), Some(dst_st)) = (&dst_node, &dst_upper) {
            if dn.is_dir() && FileType::from_raw_mode(dst_st.st_mode) == FileType::Directory {
                // The target is logically empty; its upper dir may still
                // hold whiteouts, which must go before it can be replaced.
                self.empty_upper_dir(&p2, newname, dst_st)?;
            }
        }
        if src_node.is_dir() && d2_merged {
            self.make_opaque(&src_node)?;
        }
        if dst_is_whiteout && src_node.is_dir() {
            // A directory cannot replace a device node: swap them; the
            // whiteout lands at the old name, where it is wanted if lower
            // layers show that name.
            rustix::fs::renameat_with(&*p1, name, &*p2, newname, RenameFlags::EXCHANGE)?;
            if !src_lower {
                // Best effort: a whiteout with nothing below hides nothing.
                let _ = rustix::fs::unlinkat(&*p1, name, AtFlags::empty());
            }
        } else {
            // NOREPLACE was checked on the merged view; a whiteout in the
            // way is replaced.
            let mut rflags = if dst_is_whiteout {
                RenameFlags::empty()
            } else {
                flags & RenameFlags::NOREPLACE
            };
            // Where the whiteout cannot come with the rename itself, its
            // `.wh.` form is written first (it does not hide the source
            // beside it), so no moment, crash included, shows the lower
            // object again at the old name.
            let char_wh = self
                .stack
                .formats
                .char_whiteout
                .load(std::sync::atomic::Ordering::Relaxed);
            let mut marker_first = false;
            if src_lower {
                if char_wh {
                    rflags |= RenameFlags::WHITEOUT;
                } else {
                    Formats::make_wh_file(&*p1, name)?;
                    marker_first = true;
                }
            }
            let renamed = match rustix::fs::renameat_with(&*p1, name, &*p2, newname, rflags) {
                Err(Errno::INVAL) | Err(Errno::PERM) if rflags.contains(RenameFlags::WHITEOUT) => {
                    Formats::make_wh_file(&*p1, name)?;
                    marker_first = true;
                    rustix::fs::renameat_with(
                        &*p1,
                        name,
                        &*p2,
                        newname,
                        rflags & !RenameFlags::WHITEOUT,
                    )
                }
                r => r,
            };
            if let Err(e) = renamed {
                if marker_first {
                    let _ = Formats::remove_wh_file(&*p1, name);
                }
                return Err(e);
            }
            if marker_first && char_wh {
                // Also the form the kernel overlay reads, then drop the
                // marker; either alone is a whiteout.
                if self.stack.formats.make_char_whiteout(&*p1, name).is_ok() {
                    let _ = Formats::remove_wh_file(&*p1, name);
                }
            }
        }
        // The target's marker (after the rename, as in `publish`): a
        // leftover only hides what the new entry hides anyway.
        if let Err(e) = Formats::remove_wh_file(&*p2, newname) {
            log::warn!(
                "whiteout marker for {} left in place: {e}",
                crate::layer::display_name(newname)
            );
        }
        self.detach(newparent, newname);
        self.inodes.remove_dentry(parent, name);
        self.relocate(&src_node, newparent, newname, &p2);
        Ok(())
    }

    /// Make the upper directory `name` in `pup` (logically empty, but
    /// holding whiteouts) really empty, in one step: an empty opaque
    /// directory with the same owner and mode is built in the work dir and
    /// exchanged with it, and the old one is removed from the work dir. A
    /// crash at any point leaves either the old or the new directory, both
    /// showing nothing.
    fn empty_upper_dir(&self, pup: &OwnedFd, name: &[u8], st: &Stat) -> Result<()> {
        let sub = open_path(pup, name)?;
        let has_entries = rustix::fs::Dir::new(util::open_dir_read(&sub)?)?.any(|e| {
            e.map(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
                .unwrap_or(true)
        });
        if !has_entries {
            return Ok(());
        }
        let work = self.stack.work.as_ref().ok_or(Errno::ROFS)?;
        let tmp = self.stack.tmp_name();
        rustix::fs::mkdirat(work, tmp.as_slice(), Mode::from_raw_mode(0o700))?;
        let staged = (|| {
            let fresh = open_path(work, &tmp)?;
            self.stack.formats.set_opaque(&fresh)?;
            util::give_to(&fresh, st.st_uid, st.st_gid, &rustix::fs::fstat(&fresh)?)?;
            util::set_mode(&fresh, st.st_mode & 0o7777)?;
            rustix::fs::renameat_with(work, tmp.as_slice(), pup, name, RenameFlags::EXCHANGE)
        })();
        // Either the fresh directory (if the exchange failed) or the old one
        // with its whiteouts is now at `tmp`.
        let _ = remove_tree(work, &tmp, true);
        staged
    }

    /// Mark a pure upper directory opaque unless it already is.
    fn make_opaque(&self, node: &Node) -> Result<()> {
        let u = node.upper().ok_or(Errno::IO)?;
        if whiteout::is_opaque(&*u)? {
            return Ok(());
        }
        self.stack.formats.set_opaque(&*u)
    }

    /// Record that `node` now lives at (`parent`, `name`), in the upper
    /// directory `dir`.
    fn relocate(&self, node: &Node, parent: u64, name: &[u8], dir: &Arc<OwnedFd>) {
        let name = Name::from(name);
        {
            let mut st = node.state.write();
            st.parent = parent;
            st.name = name.clone();
            st.detached = false;
            if let Some(Obj::At { .. }) = st.upper {
                st.upper = Some(Obj::At {
                    dir: dir.clone(),
                    name: name.clone(),
                });
            }
        }
        self.inodes.set_dentry(parent, name, node.ino);
    }

    /// Before the upper entry (`parent`, `name`) goes away: if a node is
    /// reached through it, hold its object open instead, for as long as the
    /// kernel remembers the node. Open files keep their attributes, and the
    /// inode number cannot be reused for a new object while the kernel still
    /// knows the old one under it. The space of a deleted file is returned
    /// when the kernel forgets the inode (normally right after the unlink).
    fn pin_named(&self, parent: u64, name: &[u8]) -> Result<()> {
        let Some(node) = self
            .inodes
            .dentry_ino(parent, name)
            .and_then(|i| self.inodes.get(i))
        else {
            return Ok(());
        };
        let (p, n) = node.location();
        if p == parent && *n == *name {
            node.pin()?;
        }
        Ok(())
    }
}
