//! Namespace changes: create, mkdir, mknod, symlink, link, unlink, rmdir,
//! rename.
//!
//! Every change happens in the upper layer, inside a parent directory that
//! has been copied up first, under that directory's write lock (both
//! parents' for a rename, in id order). Copy-ups are done before any
//! directory lock is taken. Deleting a name that lower layers show leaves
//! a whiteout; a directory created where a lower one was deleted is opaque.
//! Entries that must replace a whiteout are built in the work directory and
//! published with one rename. A new entry costs one `lstat` of its name in
//! the upper (lower layers answer from their indexes) and is answered with
//! the attributes read right after it was made, unless something changed it
//! since; a new regular file is handled through the descriptor it is opened
//! with.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, XattrFlags};

use super::copyup::Data;
use super::index::NameGone;
use super::inodes::ROOT_INO;
use super::locks::lock_two;
use super::names::{Name, NAME_MAX};
use super::node::Node;
use super::obj::Obj;
use super::origin;
use super::overlay::{Caller, Entry, Overlay};
use super::resolve::{self, Found};
use crate::error::{show_bytes, Errno, Result};
use crate::format::override_stat::Override;
use crate::format::redirect::{self, Redirect};
use crate::format::upper::Formats;
use crate::format::xattr_names::Ovl;
use crate::format::{opaque, whiteout};
use crate::setup::stack::Stack;
use crate::sys::{fd, tree, xattr};

/// A new node other than a regular file (`mkdir`, `mknod`, `symlink`).
#[derive(Debug)]
pub(crate) enum NewNode<'a> {
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

/// What to create on disk.
#[derive(Debug)]
enum NewKind<'a> {
    /// A regular file, opened with these flags.
    File {
        mode: u32,
        flags: i32,
    },
    Node(NewNode<'a>),
}

impl NewKind<'_> {
    fn is_dir(&self) -> bool {
        matches!(self, NewKind::Node(NewNode::Dir { .. }))
    }
}

/// What the upper directory holds at a name that is not visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpperSlot {
    Empty,
    CharWhiteout,
    WhFile,
}

/// Who owns a new object, and with which mode it is made.
struct Making {
    uid: u32,
    gid: u32,
    umask: u32,
    sgid_parent: bool,
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
        NewKind::Node(NewNode::Dir { mode }) => Some((
            (mode & 0o7777 & !umask) | if sgid_parent { libc::S_ISGID } else { 0 },
            None,
            NewKind::Node(NewNode::Dir { mode: 0o755 }),
        )),
        NewKind::Node(NewNode::Special { mode, rdev }) => Some((
            mode & 0o7777 & !umask,
            Some((mode & libc::S_IFMT, *rdev)).filter(|(t, _)| *t != libc::S_IFREG),
            NewKind::Node(NewNode::Special {
                mode: libc::S_IFREG | 0o644,
                rdev: 0,
            }),
        )),
        NewKind::Node(NewNode::Symlink { .. }) => None,
    }
}

fn check_new_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::NAMETOOLONG);
    }
    if whiteout::is_marker_name(name) {
        // Such a name would read back as a whiteout.
        return Err(Errno::INVAL);
    }
    Ok(())
}

/// What the upper directory `pup` of `dir` holds at `name`, where a new
/// entry is to go: `EEXIST` if the merged directory shows the name. One
/// `lstat` in the upper; the lower layers are asked (their indexes mostly
/// answer without a system call) and a `.wh.NAME` marker looked for only
/// where `dir` has lower layers: without any, a marker hides nothing, and
/// the new entry beside it means what it would mean alone.
fn free_slot(dir: &Node, pup: &OwnedFd, name: &[u8]) -> Result<UpperSlot> {
    match fd::stat_at(pup, name) {
        Ok(st) if whiteout::is_whiteout(&st) => return Ok(UpperSlot::CharWhiteout),
        Ok(_) => return Err(Errno::EXIST),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e),
    }
    let lowers = dir.lower_dirs();
    if lowers.is_empty() {
        return Ok(UpperSlot::Empty);
    }
    if whiteout::has_wh_file(pup, name) {
        return Ok(UpperSlot::WhFile);
    }
    if resolve::exists(&lowers, name)? {
        return Err(Errno::EXIST);
    }
    Ok(UpperSlot::Empty)
}

/// Whether the upper directory has a default ACL (then the umask is not
/// applied: the ACL decides, as on any filesystem).
fn has_default_acl(dir: &OwnedFd) -> bool {
    xattr::get(dir, b"system.posix_acl_default").is_ok()
}

impl Overlay {
    /// `create`: a new regular file, opened with `flags`.
    pub(crate) fn create_file(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        umask: u32,
        mode: u32,
        flags: i32,
    ) -> Result<(Entry<'_>, OwnedFd)> {
        let (entry, file) =
            self.create(caller, parent, name, umask, NewKind::File { mode, flags })?;
        Ok((entry, file.ok_or(Errno::IO)?))
    }

    /// `mkdir`, `mknod`, `symlink`.
    pub(crate) fn create_node(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        umask: u32,
        what: NewNode<'_>,
    ) -> Result<Entry<'_>> {
        Ok(self
            .create(caller, parent, name, umask, NewKind::Node(what))?
            .0)
    }

    /// Create a new entry; for `File`, also the open fd.
    fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        umask: u32,
        what: NewKind<'_>,
    ) -> Result<(Entry<'_>, Option<OwnedFd>)> {
        self.writable()?;
        check_new_name(name)?;
        let dir = self.dir_node(parent)?;
        // Fail before anything is copied up, as the kernel does.
        if !dir.has_upper() && resolve::exists(&dir.dir_layers(), name)? {
            return Err(Errno::EXIST);
        }
        let pup = self.copy_up(&dir, Data::All)?;
        let _g = dir.change_listing();
        let slot = free_slot(&dir, &pup, name)?;
        let mut pst = rustix::fs::fstat(&*pup)?;
        self.present(0, &Obj::Fd(pup.clone()), &mut pst);
        let sgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let gid = if sgid_parent { pst.st_gid } else { caller.gid };
        let umask = if has_default_acl(&pup) { 0 } else { umask };
        let is_dir = what.is_dir();
        // With owner/mode overrides the object on disk gets a fixed mode and
        // stays ours; the real owner and mode go into the xattr.
        let (forced, what, making) = match self
            .stack
            .override_xattr(0)
            .and_then(|n| forced_object(&what, umask, sgid_parent).map(|f| (n, f)))
        {
            Some((ov_name, (perm, kind, disk))) => {
                let ov = Override {
                    uid: caller.uid,
                    gid,
                    perm,
                    kind,
                };
                let making = Making {
                    uid: self.euid,
                    gid: self.egid,
                    umask: 0,
                    sgid_parent,
                };
                (Some((ov_name, ov)), disk, making)
            }
            None => {
                let making = Making {
                    uid: caller.uid,
                    gid,
                    umask,
                    sgid_parent,
                };
                (None, what, making)
            }
        };
        let work = self.stack.work()?;
        // Build in place when nothing is in the way, else in the work dir.
        let (at, tmp): (&OwnedFd, Vec<u8>) = if slot == UpperSlot::Empty {
            (&pup, name.to_vec())
        } else {
            (work, self.stack.tmp_name())
        };
        let made = make_object(at, &tmp, &what, &making).and_then(|mut made| {
            if let Some((ov_name, ov)) = &forced {
                let set = xattr::set(
                    made.fd()?,
                    ov_name,
                    ov.format().as_bytes(),
                    XattrFlags::empty(),
                );
                if let Err(e) = set {
                    let _ = tree::remove_tree(at, &tmp, is_dir);
                    return Err(e);
                }
                made.stat = None;
            }
            Ok(made)
        });
        let mut made = match made {
            Ok(x) => x,
            Err(e) => {
                if slot != UpperSlot::Empty {
                    let _ = tree::remove_tree(work, &tmp, is_dir);
                }
                return Err(e);
            }
        };
        if slot != UpperSlot::Empty {
            let published = (|| {
                if is_dir {
                    self.stack.formats.set_opaque(made.fd()?)?;
                }
                publish(work, &tmp, &pup, name, slot, is_dir)
            })();
            if let Err(e) = published {
                let _ = tree::remove_tree(work, &tmp, is_dir);
                return Err(e);
            }
            made.stat = None;
        } else if is_dir && dir.has_lowers() {
            // As the kernel overlay with an inode index: a new directory in
            // a merged one is opaque, so that a name added to a lower layer
            // later cannot show in it (best effort, as there).
            match self.stack.formats.set_opaque(made.fd()?) {
                Ok(()) => made.stat = None,
                Err(e) => log::debug!("new directory not marked opaque: {e}"),
            }
        }
        let mut stat = match made.stat {
            Some(st) => st,
            None => rustix::fs::fstat(made.fd()?)?,
        };
        let obj = match (is_dir, made.obj) {
            (true, Some(d)) => Obj::Fd(Arc::new(d)),
            (true, None) => return Err(Errno::IO),
            (false, _) => Obj::At {
                dir: pup.clone(),
                name: Name::from(name),
            },
        };
        self.present(0, &obj, &mut stat);
        Ok((self.attach_new(parent, name, obj, stat), made.file))
    }

    /// `link`: a new name for an existing non-directory.
    pub(crate) fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Entry<'_>> {
        self.writable()?;
        check_new_name(name)?;
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::PERM);
        }
        let dir = self.dir_node(parent)?;
        if !dir.has_upper() && resolve::exists(&dir.dir_layers(), name)? {
            return Err(Errno::EXIST);
        }
        let src = self.copy_up(&node, Data::Meta)?;
        // As the kernel: a metadata copy with several names finds its data
        // by an absolute path (written before any directory is locked).
        self.mark_moved_file(&node, true, false)?;
        let pup = self.copy_up(&dir, Data::All)?;
        let _g = dir.change_listing();
        let slot = free_slot(&dir, &pup, name)?;
        if slot == UpperSlot::Empty {
            fd::link_fd(&*src, &*pup, name)?;
        } else {
            let work = self.stack.work()?;
            let tmp = self.stack.tmp_name();
            fd::link_fd(&*src, work, &tmp)?;
            if let Err(e) = publish(work, &tmp, &pup, name, slot, false) {
                let _ = rustix::fs::unlinkat(work, tmp.as_slice(), AtFlags::empty());
                return Err(e);
            }
        }
        if node.origin().is_some() {
            self.mark_impure(&pup);
        }
        // Not stat_node: this directory's write lock is held.
        let mut stat = rustix::fs::fstat(&*src)?;
        self.present_node(&node, 0, &Obj::Fd(src.clone()), &mut stat);
        self.inodes.set_dentry(parent, Name::from(name), &node);
        let node = self.inodes.reference(node.ino).ok_or(Errno::STALE)?;
        Ok(Entry { node, stat })
    }

    /// `unlink` (`rmdir` when `want_dir` is set).
    pub(crate) fn remove(&self, parent: u64, name: &[u8], want_dir: bool) -> Result<()> {
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
        let (found, is_dir) = self.removable(&dir, name, want_dir)?;
        let in_upper = self.stack.is_upper(found.top.layer);
        let gone = self.before_name_goes(&found, &pup)?;
        drop(found);
        let lower_below = !in_upper || resolve::exists(&dir.lower_dirs(), name)?;
        let work = self.stack.work()?;
        if in_upper && !is_dir {
            self.pin_named(parent, name)?;
        }
        if in_upper {
            if is_dir || lower_below {
                // Move the upper object out of the way in one step, leaving
                // a whiteout behind when lower layers still show the name.
                let tmp = self.stack.tmp_name();
                move_out(&self.stack.formats, &pup, name, work, &tmp, lower_below)?;
                let _ = tree::remove_tree(work, &tmp, is_dir);
            } else {
                rustix::fs::unlinkat(&*pup, name, AtFlags::empty())?;
            }
        } else {
            self.stack.formats.make_whiteout(&*pup, name)?;
        }
        self.after_name_gone(gone);
        if lower_below {
            self.events.whiteout();
        }
        self.detach(parent, name);
        Ok(())
    }

    /// Whether `unlink`/`rmdir` of `name` in `dir` may remove it, and
    /// what: (what the name resolves to, whether it is a directory).
    fn removable(&self, dir: &Node, name: &[u8], want_dir: bool) -> Result<(Found, bool)> {
        let found =
            resolve::resolve_in(&dir.dir_layers(), name, Some(&self.stack))?.ok_or(Errno::NOENT)?;
        let is_dir = found.kind() == FileType::Directory;
        if want_dir && !is_dir {
            return Err(Errno::NOTDIR);
        }
        if !want_dir && is_dir {
            return Err(Errno::ISDIR);
        }
        if is_dir && !self.is_empty_dir(&found.dir_layers())? {
            return Err(Errno::NOTEMPTY);
        }
        Ok((found, is_dir))
    }

    /// The name (`parent`, `name`) no longer shows the node it showed.
    fn detach(&self, parent: u64, name: &[u8]) {
        if let Some(ino) = self.inodes.remove_dentry(parent, name) {
            if let Some(n) = self.inodes.get(ino) {
                let mut st = n.state.write();
                if st.parent() == parent && **st.name() == *name {
                    st.set_detached(true);
                }
            }
        }
    }

    /// `rename` with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` semantics.
    pub(crate) fn rename(
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

        // Find both ends and copy up what has to move, before locking. The
        // names are checked again under the locks.
        let src = self.lookup_node(parent, name)?.ok_or(Errno::NOENT)?;
        let dst = self.lookup_node(newparent, newname)?;
        let src_node = src.node().clone();
        let dst_node = dst.as_ref().map(|r| r.node().clone());
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
        let has_lower_dir = |n: &Node| n.is_dir() && n.has_lowers();
        if !self.stack.redirect.write()
            && (has_lower_dir(&src_node)
                || (exchange && dst_node.as_deref().is_some_and(has_lower_dir)))
        {
            return Err(Errno::XDEV);
        }
        if let Some(dn) = &dst_node {
            if !exchange && dn.is_dir() && !self.is_empty_dir(&dn.dir_layers())? {
                // The kernel copies the source up, marks the new parent
                // impure and the source (opaque, or its redirect) before
                // the upper rename finds a non-empty pure upper target;
                // keep the upper identical.
                if !dn.has_lowers() && src_node.is_dir() {
                    if src_node.has_lowers() {
                        self.copy_up(&src_node, Data::All)?;
                    }
                    if src_node.has_upper() {
                        let samedir = parent == newparent;
                        if !samedir {
                            let p2 = self.copy_up(&d2, Data::All)?;
                            self.impure_if_origin(&src_node, &p2);
                            // Its names do not change, but the mark must
                            // go at the next listing if nothing in it has
                            // an origin (as the kernel's next readdir
                            // drops it): the kernel may not serve that
                            // listing from its cache.
                            d2.mark_listing_changed();
                        }
                        self.mark_moved_dir(&src_node, (parent, name), samedir, &d2)?;
                    }
                }
                return Err(Errno::NOTEMPTY);
            }
        }
        self.ensure_upper(&src_node, Data::Meta)?;
        if exchange {
            if let Some(dn) = &dst_node {
                self.ensure_upper(dn, Data::Meta)?;
            }
        }
        let p1 = self.copy_up(&d1, Data::All)?;
        let p2 = self.copy_up(&d2, Data::All)?;
        d1.mark_listing_changed();
        d2.mark_listing_changed();
        let (_g1, _g2) = lock_two(&d1.dir_lock, d1.ino, &d2.dir_lock, d2.ino);
        // A moved directory's `..` changes.
        for n in std::iter::once(&src_node).chain(dst_node.as_ref().filter(|_| exchange)) {
            if n.is_dir() {
                n.mark_listing_changed();
            }
        }

        // Under the locks: the upper must hold the source now.
        let st = fd::stat_at(&*p1, name)?;
        if whiteout::is_whiteout(&st) {
            return Err(Errno::NOENT);
        }
        let src_lower = resolve::exists(&d1.lower_dirs(), name)?;

        let samedir = parent == newparent;
        if exchange {
            // As the kernel does: a directory with lower parts records
            // where they are; a pure upper directory that moves into a
            // merged directory becomes opaque, so that nothing of a lower
            // directory of the same name can show through it.
            self.mark_moved_dir(&src_node, (parent, name), samedir, &d2)?;
            if let Some(dn) = &dst_node {
                self.mark_moved_dir(dn, (newparent, newname), samedir, &d1)?;
            }
            if parent != newparent {
                self.impure_if_origin(&src_node, &p2);
                if let Some(dn) = &dst_node {
                    self.impure_if_origin(dn, &p1);
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
        let dst_upper = match fd::stat_at(&*p2, newname) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(e),
        };
        let dst_is_whiteout = dst_upper.as_ref().is_some_and(whiteout::is_whiteout);
        let d2_lowers = d2.lower_dirs();
        if flags.contains(RenameFlags::NOREPLACE) {
            // Whether the merged directory shows the name (as
            // `resolve::exists` over all of its layers, the upper's entry
            // read just now).
            let shown = match &dst_upper {
                Some(_) => !dst_is_whiteout,
                None => {
                    !d2_lowers.is_empty()
                        && !whiteout::has_wh_file(&*p2, newname)
                        && resolve::exists(&d2_lowers, newname)?
                }
            };
            if shown {
                return Err(Errno::EXIST);
            }
        }
        // A hard-linked file loses the replaced name (only the index keeps
        // track of hard links).
        let gone = match &dst_node {
            Some(_) if self.stack.index.is_some() => {
                match resolve::resolve_in(&d2.dir_layers(), newname, Some(&self.stack))? {
                    Some(f) => self.before_name_goes(&f, &p2)?,
                    None => NameGone::Nothing,
                }
            }
            _ => NameGone::Nothing,
        };
        if parent != newparent {
            self.impure_if_origin(&src_node, &p2);
        }
        if let (Some(dn), Some(dst_st)) = (&dst_node, &dst_upper) {
            if dn.is_dir() && FileType::from_raw_mode(dst_st.st_mode) == FileType::Directory {
                // The target is logically empty; its upper dir may still
                // hold whiteouts, which must go before it can be replaced.
                empty_upper_dir(&self.stack, &p2, newname, dst_st)?;
            }
        }
        self.mark_moved_dir(&src_node, (parent, name), samedir, &d2)?;
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
            let rflags = if dst_is_whiteout {
                RenameFlags::empty()
            } else {
                flags & RenameFlags::NOREPLACE
            };
            rename_leaving_whiteout(
                &self.stack.formats,
                (&p1, name),
                (&p2, newname),
                rflags,
                src_lower,
            )?;
        }
        if src_lower {
            self.events.whiteout();
        }
        // The target's marker (after the rename, as in `publish`): a
        // leftover only hides what the new entry hides anyway. Looked for
        // only where lower layers are below (as `free_slot` does): without
        // any, a marker hides nothing.
        if !d2_lowers.is_empty() {
            if let Err(e) = whiteout::remove_wh_file(&*p2, newname) {
                log::warn!(
                    "whiteout marker for {} left in place: {e}",
                    show_bytes(newname)
                );
            }
        }
        self.after_name_gone(gone);
        self.detach(newparent, newname);
        self.inodes.remove_dentry(parent, name);
        self.relocate(&src_node, newparent, newname, &p2);
        Ok(())
    }

    /// Before the directory `node` leaves (`parent`, `name`) in `from` for
    /// a name in `to`: a directory with lower parts records where they
    /// are (`overlay.redirect`); a pure upper one that moves into a merged
    /// directory becomes opaque. Nothing for non-directories.
    ///
    /// The record is written in place before the rename: it names the
    /// lower directories the old name already shows, so a crash between
    /// the two steps leaves the old state.
    fn mark_moved_dir(
        &self,
        node: &Node,
        (parent, name): (u64, &[u8]),
        samedir: bool,
        to: &Node,
    ) -> Result<()> {
        if !node.is_dir() {
            return self.mark_moved_file(node, !samedir, true);
        }
        if !node.has_lowers() {
            if to.has_lowers() {
                make_opaque(&self.stack.formats, node)?;
            }
            return Ok(());
        }
        let u = node.upper().ok_or(Errno::IO)?;
        let key = self.stack.formats.ovl(Ovl::Redirect);
        let old = xattr::get(&*u, key).ok();
        let old = old.as_deref().map(redirect::parse);
        let value = match old {
            // A relative record still holds within the same parent, and an
            // absolute one anywhere.
            Some(Ok(Redirect::Absolute(_))) => return Ok(()),
            Some(Ok(Redirect::Relative(_))) if samedir => return Ok(()),
            None if samedir => name.to_vec(),
            Some(Ok(Redirect::Relative(own))) => self.absolute_redirect(parent, &own)?,
            None => self.absolute_redirect(parent, name)?,
            Some(Err(_)) => return Err(Errno::INVAL),
        };
        if value.len() > redirect::MAX_WRITE {
            return Err(Errno::XDEV);
        }
        self.stack.formats.set_ovl(&*u, Ovl::Redirect, &value)
    }

    /// Before the metadata copy `node` moves to another directory
    /// (`absolute`) or to another name in the same one, or gets another
    /// name (`link`, also `absolute`): its data is found through a
    /// redirect, as the kernel overlay writes it: relative (the old name)
    /// within the parent for a file with one lower link, else absolute; an
    /// absolute one is kept. Nothing for other files. The caller holds the
    /// write lock of the directory the node is in (`locked`) or none.
    fn mark_moved_file(&self, node: &Node, absolute: bool, locked: bool) -> Result<()> {
        let Some(data) = node.metacopy_data() else {
            return Ok(());
        };
        let (upper, parent, own) = {
            let st = node.state.read();
            (st.upper(), st.parent(), st.name().clone())
        };
        let u = if locked {
            upper.ok_or(Errno::IO)?.fd()?
        } else {
            self.upper_fd(node)?.ok_or(Errno::IO)?
        };
        let absolute = absolute || data.obj.stat()?.st_nlink > 1;
        let key = self.stack.formats.ovl(Ovl::Redirect);
        let old = xattr::get(&*u, key).ok();
        let value = match old.as_deref().map(redirect::parse) {
            Some(Ok(Redirect::Absolute(_))) => return Ok(()),
            Some(Ok(Redirect::Relative(_))) if !absolute => return Ok(()),
            None if !absolute => own.to_vec(),
            Some(Ok(Redirect::Relative(was))) => self.absolute_redirect(parent, &was)?,
            None => self.absolute_redirect(parent, &own)?,
            Some(Err(_)) => return Err(Errno::IO),
        };
        if value.len() > redirect::MAX_WRITE {
            return Err(Errno::XDEV);
        }
        self.stack.formats.set_ovl(&*u, Ovl::Redirect, &value)
    }

    /// The absolute redirect of a directory known in its lower layers as
    /// `own`, in the directory `ino`: the path up to the root, where each
    /// ancestor with a redirect is known by it (and an absolute one ends
    /// the walk), as the kernel overlay builds it.
    fn absolute_redirect(&self, ino: u64, own: &[u8]) -> Result<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = vec![own.to_vec()];
        let key = self.stack.formats.ovl(Ovl::Redirect);
        let mut ino = ino;
        while ino != ROOT_INO {
            if parts.len() > redirect::MAX_WRITE {
                return Err(Errno::XDEV);
            }
            let node = self.node(ino)?;
            let rec = node.upper().and_then(|u| xattr::get(&*u, key).ok());
            let (up, name) = node.location();
            match rec.as_deref().map(redirect::parse) {
                Some(Ok(Redirect::Absolute(mut p))) => {
                    p.append(&mut parts);
                    parts = p;
                    break;
                }
                Some(Ok(Redirect::Relative(n))) => parts.insert(0, n),
                Some(Err(_)) => return Err(Errno::INVAL),
                None => parts.insert(0, name.to_vec()),
            }
            ino = up;
        }
        Ok(redirect::absolute(parts.iter().map(Vec::as_slice)))
    }

    /// Mark `dir` impure when `node`, moving into it from another
    /// directory, has an origin (as the kernel overlay does). Called with
    /// both directories' write locks held: the node's upper object is read
    /// directly, not through `with_top`.
    fn impure_if_origin(&self, node: &Node, dir: &OwnedFd) {
        let (origin, upper) = {
            let st = node.state.read();
            (st.origin(node.ino), st.upper())
        };
        let has_origin =
            origin.is_some() || upper.is_some_and(|u| origin::recorded(&self.stack, &u).is_some());
        if has_origin {
            self.mark_impure(dir);
        }
    }

    /// Record that `node` now lives at (`parent`, `name`), in the upper
    /// directory `dir`.
    fn relocate(&self, node: &Arc<Node>, parent: u64, name: &[u8], dir: &Arc<OwnedFd>) {
        let name = Name::from(name);
        let at = Obj::At {
            dir: dir.clone(),
            name: name.clone(),
        };
        self.inodes.move_node(node, parent, name, |st| {
            st.set_detached(false);
            if let Some(Obj::At { .. }) = st.upper() {
                st.set_upper(at);
            }
        });
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

/// Put the object `tmp` in `work` at `name` in `pup`, replacing the
/// whiteout that is there.
fn publish(
    work: &OwnedFd,
    tmp: &[u8],
    pup: &OwnedFd,
    name: &[u8],
    slot: UpperSlot,
    is_dir: bool,
) -> Result<()> {
    match slot {
        UpperSlot::CharWhiteout if is_dir => {
            // A directory cannot be renamed over a device: swap them and
            // remove the whiteout that lands in the work dir.
            rustix::fs::renameat_with(work, tmp, pup, name, RenameFlags::EXCHANGE)?;
            let _ = rustix::fs::unlinkat(work, tmp, AtFlags::empty());
        }
        UpperSlot::CharWhiteout => rustix::fs::renameat(work, tmp, pup, name)?,
        UpperSlot::WhFile | UpperSlot::Empty => {
            // New object first, marker second: in between (or after a
            // crash there) the object beside its `.wh.` file is shown and
            // the marker still hides the layers below, which is the state
            // we want anyway. So a marker that cannot be removed (say a
            // directory someone put there) is left, not an error.
            rustix::fs::renameat_with(work, tmp, pup, name, RenameFlags::NOREPLACE)?;
            if let Err(e) = whiteout::remove_wh_file(pup, name) {
                log::warn!(
                    "whiteout marker for {} left in place: {e}",
                    show_bytes(name)
                );
            }
        }
    }
    Ok(())
}

/// A new object, as `make_object` leaves it.
struct Made {
    /// An `O_PATH` descriptor of it (not for regular files).
    obj: Option<OwnedFd>,
    /// A regular file open as asked.
    file: Option<OwnedFd>,
    /// Its attributes, while nothing changed it since they were read.
    stat: Option<Stat>,
}

impl Made {
    /// A descriptor of the object (the open file for a regular file).
    fn fd(&self) -> Result<&OwnedFd> {
        self.obj.as_ref().or(self.file.as_ref()).ok_or(Errno::IO)
    }
}

/// Create the object `name` in `at` with the given ownership. A regular
/// file is reached through the descriptor it is opened with, anything else
/// through an `O_PATH` one.
fn make_object(at: &OwnedFd, name: &[u8], what: &NewKind<'_>, m: &Making) -> Result<Made> {
    let mut file = None;
    let want_mode;
    match what {
        NewKind::File { mode, flags } => {
            want_mode = mode & 0o7777 & !m.umask;
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
        NewKind::Node(NewNode::Dir { mode }) => {
            want_mode = (mode & 0o7777 & !m.umask) | if m.sgid_parent { libc::S_ISGID } else { 0 };
            rustix::fs::mkdirat(at, name, Mode::from_raw_mode(want_mode))?;
        }
        NewKind::Node(NewNode::Special { mode, rdev }) => {
            want_mode = mode & 0o7777 & !m.umask;
            let kind = FileType::from_raw_mode(*mode);
            rustix::fs::mknodat(at, name, kind, Mode::from_raw_mode(want_mode), *rdev)?;
        }
        NewKind::Node(NewNode::Symlink { target }) => {
            want_mode = 0o777;
            rustix::fs::symlinkat(*target, at, name)?;
        }
    }
    let is_symlink = matches!(what, NewKind::Node(NewNode::Symlink { .. }));
    let finish = |file: Option<OwnedFd>| -> Result<Made> {
        let obj = match file {
            Some(_) => None,
            None => Some(fd::open_path(at, name)?),
        };
        let mut made = Made {
            obj,
            file,
            stat: None,
        };
        let h = made.fd()?;
        let before = rustix::fs::fstat(h)?;
        let owner = (before.st_uid, before.st_gid);
        fd::give_to(h, m.uid, m.gid, owner)?;
        let mut after = before;
        if owner != (m.uid, m.gid) {
            after = rustix::fs::fstat(h)?;
        }
        if !is_symlink {
            // The filesystem applied a default ACL, if any, to the mode;
            // keep that, but restore setuid/setgid bits the chown cleared.
            let mut mode = before.st_mode & 0o7777;
            if m.sgid_parent && what.is_dir() {
                mode |= libc::S_ISGID;
            }
            mode |= want_mode & (libc::S_ISUID | libc::S_ISGID | libc::S_ISVTX);
            if after.st_mode & 0o7777 != mode {
                fd::set_mode(h, mode)?;
                made.stat = None;
                return Ok(made);
            }
        }
        made.stat = Some(after);
        Ok(made)
    };
    finish(file).inspect_err(|_| {
        let _ = tree::remove_tree(at, name, what.is_dir());
    })
}

/// Rename `name` in `pup` to `tmp` in the work dir, leaving a whiteout at
/// `name` if `whiteout`.
fn move_out(
    formats: &Formats,
    pup: &OwnedFd,
    name: &[u8],
    work: &OwnedFd,
    tmp: &[u8],
    whiteout: bool,
) -> Result<()> {
    if !whiteout {
        return rustix::fs::renameat(pup, name, work, tmp);
    }
    if formats.char_whiteouts() {
        match rustix::fs::renameat_with(pup, name, work, tmp, RenameFlags::WHITEOUT) {
            Ok(()) => return Ok(()),
            Err(Errno::INVAL) | Err(Errno::PERM) | Err(Errno::NOTSUP) => {}
            Err(e) => return Err(e),
        }
    }
    rustix::fs::renameat(pup, name, work, tmp)?;
    formats.make_whiteout(pup, name)
}

/// Rename (`from` dir, name) to (`to` dir, name) with `rflags`, leaving a
/// whiteout at the old name when `src_lower` (lower layers show it).
/// Where the whiteout cannot come with the rename itself, its `.wh.` form
/// is written first (it does not hide the source beside it), so no moment,
/// crash included, shows the lower object again at the old name.
fn rename_leaving_whiteout(
    formats: &Formats,
    (p1, name): (&OwnedFd, &[u8]),
    (p2, newname): (&OwnedFd, &[u8]),
    mut rflags: RenameFlags,
    src_lower: bool,
) -> Result<()> {
    let char_wh = formats.char_whiteouts();
    let mut marker_first = false;
    if src_lower {
        if char_wh {
            rflags |= RenameFlags::WHITEOUT;
        } else {
            whiteout::make_wh_file(p1, name)?;
            marker_first = true;
        }
    }
    let renamed = match rustix::fs::renameat_with(p1, name, p2, newname, rflags) {
        Err(Errno::INVAL) | Err(Errno::PERM) if rflags.contains(RenameFlags::WHITEOUT) => {
            whiteout::make_wh_file(p1, name)?;
            marker_first = true;
            rustix::fs::renameat_with(p1, name, p2, newname, rflags & !RenameFlags::WHITEOUT)
        }
        r => r,
    };
    if let Err(e) = renamed {
        if marker_first {
            let _ = whiteout::remove_wh_file(p1, name);
        }
        return Err(e);
    }
    if marker_first && char_wh {
        // Also the form the kernel overlay reads, then drop the marker;
        // either alone is a whiteout.
        if formats.make_char_whiteout(p1, name).is_ok() {
            let _ = whiteout::remove_wh_file(p1, name);
        }
    }
    Ok(())
}

/// Make the upper directory `name` in `pup` (logically empty, but holding
/// whiteouts) really empty, in one step: an empty opaque directory with the
/// same owner and mode is built in the work dir and exchanged with it, and
/// the old one is removed from the work dir. A crash at any point leaves
/// either the old or the new directory, both showing nothing.
fn empty_upper_dir(stack: &Stack, pup: &OwnedFd, name: &[u8], st: &Stat) -> Result<()> {
    let sub = fd::open_path(pup, name)?;
    let has_entries = rustix::fs::Dir::new(fd::open_dir_read(&sub)?)?.any(|e| {
        e.map(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
            .unwrap_or(true)
    });
    if !has_entries {
        return Ok(());
    }
    let work = stack.work()?;
    let tmp = stack.tmp_name();
    rustix::fs::mkdirat(work, tmp.as_slice(), Mode::from_raw_mode(0o700))?;
    let staged = (|| {
        let fresh = fd::open_path(work, &tmp)?;
        stack.formats.set_opaque(&fresh)?;
        fd::give_to(&fresh, st.st_uid, st.st_gid, stack.fresh_owner(&fresh)?)?;
        fd::set_mode(&fresh, st.st_mode & 0o7777)?;
        rustix::fs::renameat_with(work, tmp.as_slice(), pup, name, RenameFlags::EXCHANGE)
    })();
    // Either the fresh directory (if the exchange failed) or the old one
    // with its whiteouts is now at `tmp`.
    let _ = tree::remove_tree(work, &tmp, true);
    staged
}

/// Mark a pure upper directory opaque unless it already is.
fn make_opaque(formats: &Formats, node: &Node) -> Result<()> {
    let u = node.upper().ok_or(Errno::IO)?;
    if opaque::is_opaque(&*u)? {
        return Ok(());
    }
    formats.set_opaque(&*u)
}
