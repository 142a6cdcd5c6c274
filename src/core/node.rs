//! One node of the merged tree: what backs it, where it is known, and its
//! locks.
//!
//! A node's id is also its `st_ino` (see `inodes`). A node keeps its id for
//! as long as the kernel remembers it, even after copy-up moves it to
//! another inode of the upper layer.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use rustix::fs::{FileType, Stat};

use super::fdbudget::now_ms;
use super::locks::{CopyLock, DirLock, DirWrite, StateLock};
use super::names::Name;
use super::obj::{LayerFd, LayerObj, Obj};
use crate::error::{Errno, Result};

/// The mutable part of a node. Most nodes are backed by one object (a
/// lower file, or its upper copy) reached by the node's own name, and have
/// no other names: that case costs no allocation beyond the node (see
/// `Backing`); the rest (hard links, merged directories) is boxed.
#[derive(Debug)]
pub(crate) struct NodeState {
    /// Parent node id of the name this node was last reached by.
    parent: u64,
    /// That name.
    name: Name,
    /// The objects behind the node.
    backing: Backing,
    /// What few nodes have: other names, an origin of another id.
    links: Option<Box<Links>>,
    /// The layer of a single backing object.
    layer: u16,
    /// `DETACHED`, `INDEXED`, `UPPER`, `ORIGIN`, `NAMED`, `IMPURE`.
    flags: u8,
}

/// The name was removed (unlink, rmdir, rename over it); the node lives on
/// only for open files and kernel references.
const DETACHED: u8 = 1;
/// The upper object is an indexed inode (a copy of a lower hard-linked
/// file kept in the index): its link count in the merged view is kept in
/// `overlay.nlink`.
const INDEXED: u8 = 2;
/// The single backing object is the upper one.
const UPPER: u8 = 4;
/// The node is a non-directory first found in a lower layer, and its id is
/// that lower object's: other names of the same lower inode (hard links)
/// share this node, also after copy-up.
const ORIGIN: u8 = 8;
/// The node's location is in the inode table's name map.
const NAMED: u8 = 16;
/// For a directory: its upper part is known to carry the impure mark
/// (`overlay.impure`), so a copy-up into it need not read it. Cleared
/// whenever the node's objects are set anew.
const IMPURE: u8 = 32;

/// How a node holds its objects: `Obj`, but one object reached by the
/// node's own name keeps no second copy of it.
#[derive(Debug)]
enum Backing {
    /// No object.
    None,
    /// One object, held open.
    Fd(Arc<OwnedFd>),
    /// One object: the entry named like the node in this directory.
    Here(Arc<OwnedFd>),
    /// One object reached by another name.
    At(Box<(Arc<OwnedFd>, Name)>),
    /// An upper object and lower ones, or several lower objects, or a
    /// lower directory (with its index).
    Merged(Box<Merged>),
}

#[derive(Debug)]
struct Merged {
    upper: Option<Obj>,
    /// For directories: the lower directories merged below, top first.
    /// For other objects without an upper copy: the lower object itself
    /// (then the data file, if that is a metadata copy); for a metadata
    /// copy (`metacopy=on`): the lower file with its data.
    lowers: Vec<LayerObj>,
}

/// The rare parts of a node's state.
#[derive(Debug, Default)]
struct Links {
    /// Other names the kernel knows this node by (hard links), each as
    /// (parent, name); kept by the inode table with its name map.
    aliases: Vec<(u64, Name)>,
    /// For a hard-linked non-directory: the name it was last looked up by,
    /// when that is not its location (a change through a name links that
    /// name up, as the kernel overlay does).
    recent: Option<(u64, Name)>,
    /// The id of the lower object this node came from, where that is not
    /// the node's own id (see `ORIGIN`).
    origin: Option<u64>,
}

impl Links {
    fn is_empty(&self) -> bool {
        self.aliases.is_empty() && self.recent.is_none() && self.origin.is_none()
    }
}

/// A regular file whose upper copy is a metadata copy keeps of its lower
/// objects only the last, its data file (a lower metadata copy above it
/// goes).
pub(crate) fn keep_data_lower(lowers: &mut Vec<LayerObj>) {
    let above = lowers.len().saturating_sub(1);
    lowers.drain(..above);
}

impl NodeState {
    /// A node's state at (`parent`, `name`), backed by `upper` and `lowers`.
    pub(crate) fn new(
        parent: u64,
        name: Name,
        upper: Option<Obj>,
        lowers: Vec<LayerObj>,
    ) -> NodeState {
        let mut st = NodeState {
            parent,
            name,
            backing: Backing::None,
            links: None,
            layer: 0,
            flags: 0,
        };
        st.set_objects(upper, lowers);
        st
    }

    /// Back the node by `upper` and `lowers`, in the smallest form.
    fn set_objects(&mut self, upper: Option<Obj>, mut lowers: Vec<LayerObj>) {
        self.flags &= !(UPPER | IMPURE);
        self.layer = 0;
        let single = match (upper, lowers.len()) {
            (None, 0) => None,
            (Some(u), 0) => {
                self.flags |= UPPER;
                Some(u)
            }
            (None, 1) if lowers[0].index.is_none() => match u16::try_from(lowers[0].layer) {
                Ok(layer) => {
                    self.layer = layer;
                    lowers.pop().map(|l| l.obj)
                }
                Err(_) => {
                    self.backing = Backing::Merged(Box::new(Merged {
                        upper: None,
                        lowers,
                    }));
                    return;
                }
            },
            (upper, _) => {
                self.backing = Backing::Merged(Box::new(Merged { upper, lowers }));
                return;
            }
        };
        self.backing = match single {
            None => Backing::None,
            Some(Obj::Fd(fd)) => Backing::Fd(fd),
            Some(Obj::At { dir, name }) if name == self.name => Backing::Here(dir),
            Some(Obj::At { dir, name }) => Backing::At(Box::new((dir, name))),
        };
    }

    /// The single backing object.
    fn single(&self) -> Option<Obj> {
        match &self.backing {
            Backing::Fd(fd) => Some(Obj::Fd(fd.clone())),
            Backing::Here(dir) => Some(Obj::At {
                dir: dir.clone(),
                name: self.name.clone(),
            }),
            Backing::At(b) => Some(Obj::At {
                dir: b.0.clone(),
                name: b.1.clone(),
            }),
            Backing::None | Backing::Merged(_) => None,
        }
    }

    /// Parent node id of the name this node was last reached by.
    pub(crate) fn parent(&self) -> u64 {
        self.parent
    }

    /// That name.
    pub(crate) fn name(&self) -> &Name {
        &self.name
    }

    /// Move the node to (`parent`, `name`). Only while its location is not
    /// in the name map (the inode table keeps the two in step:
    /// `InodeTable::move_node`).
    pub(crate) fn set_location(&mut self, parent: u64, name: Name) {
        debug_assert!(!self.named(), "a named node moved outside the inode table");
        if let Backing::Here(dir) = &self.backing {
            if name != self.name {
                self.backing = Backing::At(Box::new((dir.clone(), self.name.clone())));
            }
        }
        self.parent = parent;
        self.name = name;
    }

    /// The object in the upper layer, once there is one.
    pub(crate) fn upper(&self) -> Option<Obj> {
        match &self.backing {
            Backing::Merged(m) => m.upper.clone(),
            _ if self.flags & UPPER != 0 => self.single(),
            _ => None,
        }
    }

    /// Whether the node has an upper object.
    pub(crate) fn has_upper(&self) -> bool {
        match &self.backing {
            Backing::Merged(m) => m.upper.is_some(),
            Backing::None => false,
            _ => self.flags & UPPER != 0,
        }
    }

    /// Set the upper object; lower ones stay (a directory merges them).
    pub(crate) fn set_upper(&mut self, upper: Obj) {
        let lowers = self.take_lowers();
        self.set_objects(Some(upper), lowers);
    }

    /// Back the node by `upper` alone (a copied-up non-directory).
    pub(crate) fn set_upper_only(&mut self, upper: Obj) {
        self.set_objects(Some(upper), Vec::new());
    }

    /// Drop the lower objects (a metadata copy whose data was copied up).
    pub(crate) fn drop_lowers(&mut self) {
        let upper = self.upper();
        self.set_objects(upper, Vec::new());
    }

    /// Of the lower objects keep only the last (a metadata copy's data
    /// file; a lower metadata copy above it goes): `keep_data_lower`.
    pub(crate) fn keep_data_lower(&mut self) {
        let upper = self.upper();
        let mut lowers = self.take_lowers();
        keep_data_lower(&mut lowers);
        self.set_objects(upper, lowers);
    }

    /// The lower object at `i`, top first.
    pub(crate) fn lower_at(&self, i: usize) -> Option<LayerObj> {
        match &self.backing {
            Backing::Merged(m) => m.lowers.get(i).cloned(),
            _ if i == 0 => self.first_lower().map(|(layer, obj)| LayerObj {
                layer,
                obj,
                index: None,
            }),
            _ => None,
        }
    }

    fn take_lowers(&mut self) -> Vec<LayerObj> {
        match std::mem::replace(&mut self.backing, Backing::None) {
            Backing::Merged(m) => m.lowers,
            Backing::None => Vec::new(),
            other => {
                self.backing = other;
                let lower = self.flags & UPPER == 0;
                let l = lower.then(|| self.first_lower()).flatten();
                l.map(|(layer, obj)| LayerObj {
                    layer,
                    obj,
                    index: None,
                })
                .into_iter()
                .collect()
            }
        }
    }

    /// The topmost lower object and its layer.
    pub(crate) fn first_lower(&self) -> Option<(usize, Obj)> {
        match &self.backing {
            Backing::Merged(m) => m.lowers.first().map(|l| (l.layer, l.obj.clone())),
            _ if self.flags & UPPER == 0 => self.single().map(|o| (usize::from(self.layer), o)),
            _ => None,
        }
    }

    /// How many lower objects back the node.
    pub(crate) fn lower_count(&self) -> usize {
        match &self.backing {
            Backing::Merged(m) => m.lowers.len(),
            Backing::None => 0,
            _ => usize::from(self.flags & UPPER == 0),
        }
    }

    /// The lower objects held open, as directories.
    pub(crate) fn lower_dirs(&self) -> impl Iterator<Item = LayerFd> + '_ {
        let (merged, single) = match &self.backing {
            Backing::Merged(m) => (m.lowers.as_slice(), None),
            Backing::Fd(fd) if self.flags & UPPER == 0 => (
                &[][..],
                Some(LayerFd {
                    layer: usize::from(self.layer),
                    fd: fd.clone(),
                    index: None,
                }),
            ),
            _ => (&[][..], None),
        };
        merged.iter().filter_map(LayerObj::as_dir).chain(single)
    }

    /// The top object and its layer: the upper copy if any (layer 0), else
    /// the topmost lower one.
    pub(crate) fn top(&self) -> Option<(usize, Obj)> {
        match self.upper() {
            Some(u) => Some((0, u)),
            None => self.first_lower(),
        }
    }

    /// Hold every backing object open, so that it stays reachable when its
    /// name goes away.
    pub(crate) fn pin(&mut self) -> Result<()> {
        match &mut self.backing {
            Backing::Merged(m) => {
                if let Some(u) = &m.upper {
                    m.upper = Some(u.pinned()?);
                }
                for l in m.lowers.iter_mut() {
                    l.obj = l.obj.pinned()?;
                }
            }
            Backing::Here(_) | Backing::At(_) => {
                if let Some(o) = self.single() {
                    self.backing = Backing::Fd(o.fd()?);
                }
            }
            Backing::Fd(_) | Backing::None => {}
        }
        Ok(())
    }

    /// Whether the name was removed (see `DETACHED`).
    pub(crate) fn detached(&self) -> bool {
        self.flags & DETACHED != 0
    }

    /// Mark the name removed, or found again.
    pub(crate) fn set_detached(&mut self, on: bool) {
        self.set_flag(DETACHED, on);
    }

    /// Whether the upper object is an indexed inode (see `INDEXED`).
    pub(crate) fn indexed(&self) -> bool {
        self.flags & INDEXED != 0
    }

    /// Mark the upper object an indexed inode.
    pub(crate) fn set_indexed(&mut self, on: bool) {
        self.set_flag(INDEXED, on);
    }

    /// Whether the location is in the name map (see `NAMED`).
    pub(crate) fn named(&self) -> bool {
        self.flags & NAMED != 0
    }

    /// Set by the inode table as it adds the location to its name map or
    /// takes it out.
    pub(crate) fn set_named(&mut self, on: bool) {
        self.set_flag(NAMED, on);
    }

    /// Whether the upper part is known to be marked impure (`IMPURE`).
    pub(crate) fn impure_known(&self) -> bool {
        self.flags & IMPURE != 0
    }

    /// Remember that the upper part is marked impure, or that it is not
    /// known to be.
    pub(crate) fn set_impure_known(&mut self, on: bool) {
        self.set_flag(IMPURE, on);
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// For a non-directory first found in a lower layer: the id of that
    /// object (`ino` is the node's own). Other names of the same lower
    /// inode (hard links) share this node, also after copy-up.
    pub(crate) fn origin(&self, ino: u64) -> Option<u64> {
        if self.flags & ORIGIN != 0 {
            return Some(ino);
        }
        self.links.as_ref().and_then(|l| l.origin)
    }

    /// Record the origin's id (`ino` is the node's own).
    pub(crate) fn set_origin(&mut self, ino: u64, origin: Option<u64>) {
        self.set_flag(ORIGIN, origin == Some(ino));
        let other = origin.filter(|o| *o != ino);
        if other.is_some() || self.links.is_some() {
            self.links_mut().origin = other;
            self.tidy_links();
        }
    }

    fn links_mut(&mut self) -> &mut Links {
        self.links.get_or_insert_with(Box::default)
    }

    fn tidy_links(&mut self) {
        if self.links.as_ref().is_some_and(|l| l.is_empty()) {
            self.links = None;
        }
    }

    /// Other names the kernel knows this node by (hard links).
    pub(crate) fn aliases(&self) -> &[(u64, Name)] {
        self.links.as_ref().map_or(&[], |l| &l.aliases)
    }

    /// Add (`parent`, `name`) to the other names, once.
    pub(crate) fn add_alias(&mut self, parent: u64, name: Name) {
        if !self
            .aliases()
            .iter()
            .any(|(p, n)| *p == parent && *n == name)
        {
            self.links_mut().aliases.push((parent, name));
        }
    }

    /// Remove (`parent`, `name`) from the other names.
    pub(crate) fn drop_alias(&mut self, parent: u64, name: &[u8]) {
        if let Some(l) = &mut self.links {
            l.aliases.retain(|(p, n)| !(*p == parent && **n == *name));
            l.aliases.shrink_to_fit();
            self.tidy_links();
        }
    }

    /// Take every other name.
    pub(crate) fn take_aliases(&mut self) -> Vec<(u64, Name)> {
        let v = self
            .links
            .as_mut()
            .map(|l| std::mem::take(&mut l.aliases))
            .unwrap_or_default();
        self.tidy_links();
        v
    }

    /// The name a hard-linked node was last looked up by (see `Links`).
    pub(crate) fn recent(&self) -> Option<&(u64, Name)> {
        self.links.as_ref().and_then(|l| l.recent.as_ref())
    }

    /// Set (or clear) that name.
    pub(crate) fn set_recent(&mut self, recent: Option<(u64, Name)>) {
        if recent.is_some() || self.links.is_some() {
            self.links_mut().recent = recent;
            self.tidy_links();
        }
    }
}

/// What a node knows of the xattrs clients can see on its top object
/// (in `Node::marks`): the state in the low bits, a stamp in the high ones
/// that every `forget_xattrs` moves on.
const XATTRS_UNKNOWN: u8 = 0;
const XATTRS_NONE: u8 = 1;
const XATTRS_SOME: u8 = 2;
/// Set when the state is that of the upper copy (else of the lower object).
const XATTRS_OF_UPPER: u8 = 4;
const XATTRS_STATE: u8 = 7;
/// For directories: an entry was added, removed or renamed through this
/// mount (see `Node::change_listing`).
const LISTING_CHANGED: u8 = 8;
const XATTRS_STAMP: u8 = 16;

/// What `Node::known_xattrs` saw, for `Node::note_xattrs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XattrsSeen(u8);

/// One node of the merged tree.
#[derive(Debug)]
pub(crate) struct Node {
    /// FUSE node id and `st_ino`.
    pub(crate) ino: u64,
    /// Kernel lookup references (see `inodes::LookupRef`).
    pub(crate) lookups: AtomicU64,
    /// Backing objects and location. Innermost lock: nothing else is
    /// locked while it is held.
    pub(crate) state: StateLock<NodeState>,
    /// For directories: readers resolve names, writers change entries.
    pub(crate) dir_lock: DirLock,
    /// Serialises copy-up of this node (see `locks`).
    pub(crate) copy_lock: CopyLock,
    /// File type; never changes for a node.
    pub(crate) kind: FileType,
    /// Whether the top object carries xattrs clients can see, known once
    /// asked (lower layers never change under a mount; the upper copy
    /// changes only through it, see `forget_xattrs`), and
    /// `LISTING_CHANGED`: one byte for both.
    marks: AtomicU8,
    /// For directories: when the node was last used (`fdbudget::now_ms`).
    used: AtomicU32,
}

impl Node {
    /// A new node with no kernel references yet.
    pub(crate) fn new(ino: u64, kind: FileType, state: NodeState) -> Node {
        Node {
            ino,
            lookups: AtomicU64::new(0),
            state: StateLock::new(state),
            dir_lock: DirLock::default(),
            copy_lock: CopyLock::default(),
            kind,
            marks: AtomicU8::new(XATTRS_UNKNOWN),
            used: AtomicU32::new(now_ms()),
        }
    }

    /// The state of a node that was never shared.
    pub(crate) fn into_state(self) -> NodeState {
        self.state.into_inner()
    }

    /// Lock this directory for a change of its entries, and remember that
    /// its listing changed. Directories whose listing never changed may be
    /// cached by the kernel: its listing cache can be filled by a reader
    /// whose listing predates a change while it already carries the
    /// version stamp of after the change, so once a directory changes it
    /// is listed by the daemon only.
    pub(crate) fn change_listing(&self) -> DirWrite<'_> {
        self.mark_listing_changed();
        self.dir_lock.write(self.ino)
    }

    /// Remember that the listing changed (also: a moved directory's `..`).
    pub(crate) fn mark_listing_changed(&self) {
        self.marks.fetch_or(LISTING_CHANGED, Ordering::Release);
    }

    /// Whether the listing never changed through this mount.
    pub(crate) fn listing_unchanged(&self) -> bool {
        self.marks.load(Ordering::Acquire) & LISTING_CHANGED == 0
    }

    /// Note a use of this directory (for the descriptor budget).
    pub(crate) fn touch(&self) {
        self.used.store(now_ms(), Ordering::Relaxed);
    }

    /// `now_ms` of the last use.
    pub(crate) fn last_used(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the top object is known to carry no xattr clients can see
    /// (`Ok(true)`) or some (`Ok(false)`); else what to pass to
    /// `note_xattrs` once its xattrs were listed.
    pub(crate) fn known_xattrs(&self) -> std::result::Result<bool, XattrsSeen> {
        let v = self.marks.load(Ordering::Acquire);
        let of_upper = v & XATTRS_OF_UPPER != 0;
        match v & !XATTRS_OF_UPPER & XATTRS_STATE {
            XATTRS_UNKNOWN => Err(XattrsSeen(v)),
            // Known of the object that is on top now: a copy-up replaces
            // the lower object's answer.
            state if of_upper == self.has_upper() => Ok(state == XATTRS_NONE),
            _ => Err(XattrsSeen(v)),
        }
    }

    /// Remember what a listing of the top object (the upper copy when
    /// `upper`) found, unless `forget_xattrs` was called since `seen`.
    pub(crate) fn note_xattrs(&self, seen: XattrsSeen, none: bool, upper: bool) {
        let state = if none { XATTRS_NONE } else { XATTRS_SOME };
        let tag = if upper { XATTRS_OF_UPPER } else { 0 };
        let _ = self.marks.compare_exchange(
            seen.0,
            (seen.0 & !XATTRS_STATE) | state | tag,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// The upper copy's xattrs changed (or may have): forget what was
    /// known, also for listings under way.
    pub(crate) fn forget_xattrs(&self) {
        let _ = self
            .marks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some((v & !XATTRS_STATE).wrapping_add(XATTRS_STAMP))
            });
    }

    /// Whether this is a directory.
    pub(crate) fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }

    /// The top object and its layer: the upper copy if any (layer 0), else
    /// the topmost lower one.
    pub(crate) fn top_layer_obj(&self) -> Option<(usize, Obj)> {
        self.state.read().top()
    }

    /// `lstat` of the top object.
    pub(crate) fn stat(&self) -> Result<Stat> {
        self.top_layer_obj().ok_or(Errno::STALE)?.1.stat()
    }

    /// An `O_PATH` descriptor of the upper object, if there is one and it
    /// can be opened. For directories (held open); for objects reached by
    /// name use `Overlay::upper_fd`, which tells the two cases apart.
    pub(crate) fn upper(&self) -> Option<Arc<OwnedFd>> {
        let u = self.state.read().upper();
        u.and_then(|o| o.fd().ok())
    }

    /// Whether the node has an upper object.
    pub(crate) fn has_upper(&self) -> bool {
        self.state.read().has_upper()
    }

    /// For a metadata copy (`metacopy=on`): the lower file its data is in.
    /// A regular file with an upper copy keeps a lower object only then
    /// (the data); one without keeps a second lower object only when the
    /// first is a metadata copy of a lower layer (the second is the data).
    pub(crate) fn metacopy_data(&self) -> Option<LayerObj> {
        if self.is_dir() {
            return None;
        }
        let st = self.state.read();
        st.lower_at(usize::from(!st.has_upper()))
    }

    /// Whether the node's data is in the upper layer (it has an upper copy
    /// that is not a metadata copy).
    pub(crate) fn data_on_upper(&self) -> bool {
        let st = self.state.read();
        st.has_upper() && (self.is_dir() || st.lower_count() == 0)
    }

    /// Whether the node is backed by lower objects (for a directory: is
    /// merged with lower directories).
    pub(crate) fn has_lowers(&self) -> bool {
        self.state.read().lower_count() > 0
    }

    /// For a directory: every layer directory merged into it, top first
    /// (upper as layer 0).
    pub(crate) fn dir_layers(&self) -> Vec<LayerFd> {
        let st = self.state.read();
        let mut v = Vec::with_capacity(st.lower_count() + 1);
        if let Some(Obj::Fd(u)) = st.upper() {
            v.push(LayerFd {
                layer: 0,
                fd: u,
                index: None,
            });
        }
        v.extend(st.lower_dirs());
        v
    }

    /// For a directory: the lower directories merged into it.
    pub(crate) fn lower_dirs(&self) -> Vec<LayerFd> {
        self.state.read().lower_dirs().collect()
    }

    /// Descriptors this node holds open.
    pub(crate) fn held_fds(&self) -> usize {
        let st = self.state.read();
        st.lower_count() + usize::from(st.has_upper())
    }

    /// Keep the backing objects reachable after their names go away.
    pub(crate) fn pin(&self) -> Result<()> {
        self.state.write().pin()
    }

    /// Whether a directory merges an upper and lower dirs (or several lower
    /// dirs): such a directory reports `st_nlink` 1, like the kernel's.
    pub(crate) fn is_merged_dir(&self) -> bool {
        self.is_dir() && self.held_fds() > 1
    }

    /// (parent, name) this node is known by.
    pub(crate) fn location(&self) -> (u64, Name) {
        let st = self.state.read();
        (st.parent, st.name.clone())
    }

    /// The id of the lower object this node came from (see
    /// `NodeState::origin`).
    pub(crate) fn origin(&self) -> Option<u64> {
        self.state.read().origin(self.ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    fn dir() -> std::io::Result<(tempfile::TempDir, Arc<OwnedFd>)> {
        let d = tempfile::tempdir()?;
        std::fs::write(d.path().join("f"), "x")?;
        let fd = rustix::fs::open(
            d.path(),
            rustix::fs::OFlags::PATH,
            rustix::fs::Mode::empty(),
        )?;
        Ok((d, Arc::new(fd)))
    }

    /// Every entry the kernel holds is one node (plus its name and the
    /// maps' slots): a node that grows shows in the daemon's memory per
    /// cached entry (docs/PERFORMANCE.md). With the 16 bytes of the `Arc`'s
    /// counts, a `Node` of 104 bytes is one 128-byte heap chunk, and a file
    /// of one object reached by its own name needs nothing else; raise the
    /// bounds only knowingly.
    #[test]
    fn a_node_does_not_grow() {
        assert!(
            size_of::<Node>() <= 104,
            "Node: {} bytes",
            size_of::<Node>()
        );
        assert!(
            size_of::<NodeState>() <= 64,
            "NodeState: {} bytes",
            size_of::<NodeState>()
        );
        assert_eq!(size_of::<Backing>(), 16, "Backing");
        assert!(size_of::<Obj>() <= 32, "Obj: {} bytes", size_of::<Obj>());
    }

    #[test]
    fn one_object_by_the_nodes_own_name_follows_moves() -> std::io::Result<()> {
        let (_d, fd) = dir()?;
        let f = Name::from(&b"f"[..]);
        let obj = Obj::At {
            dir: fd.clone(),
            name: f.clone(),
        };
        let lower = LayerObj {
            layer: 3,
            obj,
            index: None,
        };
        let mut st = NodeState::new(1, f.clone(), None, vec![lower]);
        assert!(matches!(st.backing, Backing::Here(_)));
        assert_eq!(st.first_lower().map(|l| l.0), Some(3));
        assert!(!st.has_upper() && st.top().is_some_and(|t| t.1.stat().is_ok()));
        // Moved elsewhere, the lower object is still the one named `f`.
        st.set_location(2, Name::from(&b"g"[..]));
        assert!(matches!(st.backing, Backing::At(_)));
        assert!(st.first_lower().is_some_and(|(_, o)| o.stat().is_ok()));
        st.pin()?;
        assert!(matches!(st.backing, Backing::Fd(_)));
        // A copy-up leaves the upper object alone.
        st.set_upper_only(Obj::Fd(fd.clone()));
        assert!(st.has_upper() && st.lower_count() == 0 && st.first_lower().is_none());
        assert_eq!(st.top().map(|t| t.0), Some(0));
        Ok(())
    }

    #[test]
    fn merged_directories_keep_upper_and_lowers() -> std::io::Result<()> {
        let (_d, fd) = dir()?;
        let lower = |layer| LayerObj {
            layer,
            obj: Obj::Fd(fd.clone()),
            index: Some(Arc::default()),
        };
        let mut st = NodeState::new(1, Name::from(&b"d"[..]), None, vec![lower(1), lower(2)]);
        assert_eq!(st.lower_count(), 2);
        st.set_upper(Obj::Fd(fd.clone()));
        assert!(st.has_upper());
        assert_eq!(st.lower_dirs().map(|l| l.layer).collect::<Vec<_>>(), [1, 2]);
        assert!(st.lower_dirs().all(|l| l.index.is_some()));
        Ok(())
    }

    #[test]
    fn rare_parts_come_and_go() {
        let mut st = NodeState::new(1, Name::from(&b"a"[..]), None, Vec::new());
        st.set_origin(7, Some(7));
        assert_eq!(st.origin(7), Some(7));
        assert!(
            st.links.is_none(),
            "an origin of the node's own id is a flag"
        );
        st.set_origin(8, Some(7));
        assert_eq!(st.origin(8), Some(7));
        st.set_origin(8, None);
        assert_eq!(st.origin(8), None);
        assert!(st.links.is_none());
        st.add_alias(2, Name::from(&b"b"[..]));
        st.add_alias(2, Name::from(&b"b"[..]));
        assert_eq!(st.aliases().len(), 1);
        st.set_recent(Some((2, Name::from(&b"b"[..]))));
        st.drop_alias(2, b"b");
        assert!(st.aliases().is_empty() && st.recent().is_some());
        st.set_recent(None);
        assert!(st.links.is_none());
    }

    #[test]
    fn xattr_knowledge_and_listing_changes_share_a_byte() {
        let st = NodeState::new(1, Name::from(&b"d"[..]), None, Vec::new());
        let node = Node::new(2, FileType::Directory, st);
        let seen = node.known_xattrs().err();
        assert!(seen.is_some(), "unknown at first");
        if let Some(seen) = seen {
            node.note_xattrs(seen, true, false);
        }
        node.mark_listing_changed();
        assert_eq!(node.known_xattrs().ok(), Some(true));
        assert!(!node.listing_unchanged());
        // Many forgets (the stamp wraps) leave the listing mark alone.
        for _ in 0..40 {
            node.forget_xattrs();
            assert!(node.known_xattrs().is_err());
            assert!(!node.listing_unchanged());
        }
    }
}
