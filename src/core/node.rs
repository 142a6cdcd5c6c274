//! One node of the merged tree: what backs it, where it is known, and its
//! locks.
//!
//! A node's id is also its `st_ino` (see `inodes`). A node keeps its id for
//! as long as the kernel remembers it, even after copy-up moves it to
//! another inode of the upper layer.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use rustix::fs::{FileType, Stat};

use super::fdbudget::now_ms;
use super::locks::{CopyLock, DirLock, DirWrite, StateLock};
use super::names::Name;
use super::obj::{LayerFd, LayerObj, Obj};
use crate::error::{Errno, Result};

/// The mutable part of a node.
#[derive(Debug)]
pub(crate) struct NodeState {
    /// Parent node id of the name this node was last reached by.
    pub(crate) parent: u64,
    /// That name.
    pub(crate) name: Name,
    /// Other names the kernel knows this node by (hard links), each as
    /// (parent, name); kept by the inode table with its name map. A boxed
    /// slice: most nodes have none, and changes are rare.
    pub(crate) aliases: Option<Box<[(u64, Name)]>>,
    /// The object in the upper layer, once there is one.
    pub(crate) upper: Option<Obj>,
    /// For directories: the lower directories merged below, top first.
    /// For other objects without an upper copy: the lower object itself
    /// (then the data file, if that is a metadata copy); for a metadata
    /// copy (`metacopy=on`): the lower file with its data.
    pub(crate) lowers: Vec<LayerObj>,
    /// The name was removed (unlink, rmdir, rename over it); the node lives
    /// on only for open files and kernel references.
    pub(crate) detached: bool,
    /// For a non-directory first found in a lower layer: that object's
    /// (dev, ino). Other names of the same lower inode (hard links) share
    /// this node, also after copy-up.
    pub(crate) origin: Option<(u64, u64)>,
    /// For a hard-linked non-directory: the name it was last looked up by,
    /// when that is not its location (a change through a name links that
    /// name up, as the kernel overlay does).
    pub(crate) recent: Option<Box<(u64, Name)>>,
    /// The upper object is an indexed inode (a copy of a lower hard-linked
    /// file kept in the index): its link count in the merged view is kept
    /// in `overlay.nlink`.
    pub(crate) indexed: bool,
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
        origin: Option<(u64, u64)>,
    ) -> NodeState {
        NodeState {
            parent,
            name,
            aliases: None,
            upper,
            lowers,
            detached: false,
            origin,
            recent: None,
            indexed: false,
        }
    }
}

/// What a node knows of the xattrs clients can see on its top object
/// (`Node::xattrs`): the state in the low bits, a stamp above them that
/// every `forget_xattrs` moves on.
const XATTRS_UNKNOWN: u8 = 0;
const XATTRS_NONE: u8 = 1;
const XATTRS_SOME: u8 = 2;
/// Set when the state is that of the upper copy (else of the lower object).
const XATTRS_OF_UPPER: u8 = 4;
const XATTRS_STATE: u8 = 7;
const XATTRS_STAMP: u8 = 8;

/// What `Node::known_xattrs` saw, for `Node::note_xattrs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XattrsSeen(u8);

/// One node of the merged tree.
#[derive(Debug)]
pub(crate) struct Node {
    /// FUSE node id and `st_ino`.
    pub(crate) ino: u64,
    /// File type; never changes for a node.
    pub(crate) kind: FileType,
    /// Kernel lookup references (see `inodes::LookupRef`).
    pub(crate) lookups: AtomicU64,
    /// Backing objects and location. Innermost lock: nothing else is
    /// locked while it is held.
    pub(crate) state: StateLock<NodeState>,
    /// Serialises copy-up of this node (see `locks`).
    pub(crate) copy_lock: CopyLock,
    /// For directories: readers resolve names, writers change entries.
    pub(crate) dir_lock: DirLock,
    /// Whether the top object carries xattrs clients can see, known once
    /// asked (lower layers never change under a mount; the upper copy
    /// changes only through it, see `forget_xattrs`).
    xattrs: AtomicU8,
    /// For directories: an entry was added, removed or renamed through
    /// this mount (see `Node::change_listing`).
    listing_changed: AtomicBool,
    /// For directories: when the node was last used (`fdbudget::now_ms`).
    used: AtomicU32,
}

impl Node {
    /// A new node with no kernel references yet.
    pub(crate) fn new(ino: u64, kind: FileType, state: NodeState) -> Node {
        Node {
            ino,
            kind,
            lookups: AtomicU64::new(0),
            state: StateLock::new(state),
            copy_lock: CopyLock::default(),
            dir_lock: DirLock::default(),
            xattrs: AtomicU8::new(XATTRS_UNKNOWN),
            listing_changed: AtomicBool::new(false),
            used: AtomicU32::new(now_ms()),
        }
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
        self.listing_changed.store(true, Ordering::Release);
    }

    /// Whether the listing never changed through this mount.
    pub(crate) fn listing_unchanged(&self) -> bool {
        !self.listing_changed.load(Ordering::Acquire)
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
        let v = self.xattrs.load(Ordering::Acquire);
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
        let _ = self.xattrs.compare_exchange(
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
            .xattrs
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
        let st = self.state.read();
        match &st.upper {
            Some(u) => Some((0, u.clone())),
            None => st.lowers.first().map(|l| (l.layer, l.obj.clone())),
        }
    }

    /// `lstat` of the top object.
    pub(crate) fn stat(&self) -> Result<Stat> {
        self.top_layer_obj().ok_or(Errno::STALE)?.1.stat()
    }

    /// An `O_PATH` descriptor of the upper object, if there is one and it
    /// can be opened. For directories (held open); for objects reached by
    /// name use `Overlay::upper_fd`, which tells the two cases apart.
    pub(crate) fn upper(&self) -> Option<Arc<OwnedFd>> {
        let u = self.state.read().upper.clone();
        u.and_then(|o| o.fd().ok())
    }

    /// Whether the node has an upper object.
    pub(crate) fn has_upper(&self) -> bool {
        self.state.read().upper.is_some()
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
        st.lowers.get(usize::from(st.upper.is_none())).cloned()
    }

    /// Whether the node's data is in the upper layer (it has an upper copy
    /// that is not a metadata copy).
    pub(crate) fn data_on_upper(&self) -> bool {
        let st = self.state.read();
        st.upper.is_some() && (self.is_dir() || st.lowers.is_empty())
    }

    /// Whether the node is backed by lower objects (for a directory: is
    /// merged with lower directories).
    pub(crate) fn has_lowers(&self) -> bool {
        !self.state.read().lowers.is_empty()
    }

    /// For a directory: every layer directory merged into it, top first
    /// (upper as layer 0).
    pub(crate) fn dir_layers(&self) -> Vec<LayerFd> {
        let st = self.state.read();
        let mut v = Vec::with_capacity(st.lowers.len() + 1);
        if let Some(Obj::Fd(u)) = &st.upper {
            v.push(LayerFd {
                layer: 0,
                fd: u.clone(),
                index: None,
            });
        }
        v.extend(st.lowers.iter().filter_map(LayerObj::as_dir));
        v
    }

    /// For a directory: the lower directories merged into it.
    pub(crate) fn lower_dirs(&self) -> Vec<LayerFd> {
        let st = self.state.read();
        st.lowers.iter().filter_map(LayerObj::as_dir).collect()
    }

    /// Descriptors this node holds open.
    pub(crate) fn held_fds(&self) -> usize {
        let st = self.state.read();
        st.lowers.len() + usize::from(st.upper.is_some())
    }

    /// Keep the backing objects reachable after their names go away.
    pub(crate) fn pin(&self) -> Result<()> {
        let mut st = self.state.write();
        if let Some(u) = &st.upper {
            st.upper = Some(u.pinned()?);
        }
        for l in st.lowers.iter_mut() {
            l.obj = l.obj.pinned()?;
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// Every entry the kernel holds is one node (plus its name and the
    /// maps' slots): a node that grows shows in the daemon's memory per
    /// cached entry (docs/PERFORMANCE.md). With the 16 bytes of the `Arc`'s
    /// counts, a `Node` of 184 bytes is one 208-byte heap chunk; raise the
    /// bounds only knowingly.
    #[test]
    fn a_node_does_not_grow() {
        assert!(
            size_of::<Node>() <= 184,
            "Node: {} bytes",
            size_of::<Node>()
        );
        assert!(
            size_of::<NodeState>() <= 136,
            "NodeState: {} bytes",
            size_of::<NodeState>()
        );
        assert!(size_of::<Obj>() <= 24, "Obj: {} bytes", size_of::<Obj>());
        assert!(
            size_of::<LayerObj>() <= 40,
            "LayerObj (one per lower object, in a Vec): {} bytes",
            size_of::<LayerObj>()
        );
    }
}
