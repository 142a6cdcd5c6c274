//! The inode table: FUSE node ids, what each node is backed by, lookup
//! counts, and the map of live names.
//!
//! A node's id is also its `st_ino`. It is derived from the identity of the
//! topmost object that backs it (`device index << 56 | inode number`), so it
//! is stable across remounts and unique across layers on different
//! filesystems, and `readdir` can compute the same number without a lookup.
//! A node keeps its id for as long as the kernel remembers it, even after
//! copy-up moves it to another inode of the upper layer; while alive, the
//! `dentries` map makes lookups and `readdir` of that name report it.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::error::{Errno, Result};
use crate::resolve::open_path;

/// FUSE's id for the root directory.
pub const ROOT_INO: u64 = 1;

/// An entry name, shared by a node's state, its by-name object and its
/// entry in the name map (one allocation per name).
pub type Name = Arc<[u8]>;

/// The index of a lower directory (`whiteout::DirIndex`), read at the
/// first lookup of a name it lacks. `None` inside means reading it
/// failed and lookups stat instead. Only for directories that never change
/// while mounted (not the upper's).
pub type WhCache = std::sync::OnceLock<Option<crate::whiteout::DirIndex>>;

/// A directory in one layer, held open.
#[derive(Debug, Clone)]
pub struct LayerFd {
    /// Layer index in the stack (0 = top).
    pub layer: usize,
    /// `O_PATH` descriptor of the directory in that layer.
    pub fd: Arc<OwnedFd>,
    /// Index of a lower directory.
    pub wh: Option<Arc<WhCache>>,
}

/// How a node reaches one of its backing objects.
///
/// Directories are held open (`Fd`): lookups and listings work relative to
/// them. Other objects are reached by name inside their parent's layer
/// directory (`At`), so a walk over millions of files costs no descriptor
/// per file; an object whose name is removed while the kernel still knows it
/// (a deleted open file) is pinned as an `Fd` first.
#[derive(Debug, Clone)]
pub enum Obj {
    /// An open `O_PATH` descriptor of the object.
    Fd(Arc<OwnedFd>),
    /// The entry `name` in the directory `dir`.
    At {
        /// The parent directory in the object's layer.
        dir: Arc<OwnedFd>,
        /// The entry's name.
        name: Name,
    },
}

impl Obj {
    /// The name to share with this object: its own if it is held by name
    /// (`name` then is that name), else a new one.
    pub fn shared_name(&self, name: &[u8]) -> Name {
        match self {
            Obj::At { name: n, .. } if **n == *name => n.clone(),
            _ => Name::from(name),
        }
    }

    /// An `O_PATH` descriptor of the object (opened now for `At`).
    pub fn fd(&self) -> Result<Arc<OwnedFd>> {
        match self {
            Obj::Fd(fd) => Ok(fd.clone()),
            Obj::At { dir, name } => Ok(Arc::new(open_path(&**dir, name)?)),
        }
    }

    /// `lstat` of the object.
    pub fn stat(&self) -> Result<Stat> {
        match self {
            Obj::Fd(fd) => rustix::fs::fstat(&**fd),
            Obj::At { dir, name } => rustix::fs::statat(&**dir, &**name, AtFlags::SYMLINK_NOFOLLOW),
        }
    }

    /// Open the object for I/O with `flags` (never following a symlink).
    pub fn open(&self, flags: OFlags) -> Result<OwnedFd> {
        match self {
            Obj::Fd(fd) => crate::util::reopen(&**fd, flags),
            Obj::At { dir, name } => rustix::fs::openat(
                &**dir,
                &**name,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            ),
        }
    }

    /// Read an xattr of the object (not following symlinks).
    pub fn get_xattr(&self, attr: &[u8]) -> Result<Vec<u8>> {
        match self {
            Obj::Fd(fd) => crate::xattr::get(&**fd, attr),
            Obj::At { dir, name } => crate::xattr::get_at(&**dir, name, attr),
        }
    }

    /// List the object's xattr names (not following symlinks).
    pub fn list_xattr(&self) -> Result<Vec<u8>> {
        match self {
            Obj::Fd(fd) => crate::xattr::list(&**fd),
            Obj::At { dir, name } => crate::xattr::list_at(&**dir, name),
        }
    }

    /// The same object held by descriptor, so that it stays reachable when
    /// its name goes away.
    pub fn pinned(&self) -> Result<Obj> {
        Ok(Obj::Fd(self.fd()?))
    }
}

/// An object in one layer.
#[derive(Debug, Clone)]
pub struct LayerObj {
    /// Layer index in the stack (0 = top).
    pub layer: usize,
    /// The object.
    pub obj: Obj,
    /// For a lower directory: its whiteout names, once read.
    pub wh: Option<Arc<WhCache>>,
}

impl From<LayerFd> for LayerObj {
    fn from(l: LayerFd) -> LayerObj {
        LayerObj {
            layer: l.layer,
            obj: Obj::Fd(l.fd),
            wh: l.wh,
        }
    }
}

/// The mutable part of a node.
#[derive(Debug)]
pub struct NodeState {
    /// Parent node id of the name this node was last reached by.
    pub parent: u64,
    /// That name.
    pub name: Name,
    /// The object in the upper layer, once there is one.
    pub upper: Option<Obj>,
    /// For directories: the lower directories merged below, top first.
    /// For other objects without an upper copy: the lower object itself.
    pub lowers: Vec<LayerObj>,
    /// The name was removed (unlink, rmdir, rename over it); the node lives
    /// on only for open files and kernel references.
    pub detached: bool,
    /// For a non-directory first found in a lower layer: that object's
    /// (dev, ino). Other names of the same lower inode (hard links) share
    /// this node, also after copy-up.
    pub origin: Option<(u64, u64)>,
}

/// One node of the merged tree.
#[derive(Debug)]
pub struct Node {
    /// FUSE node id and `st_ino`.
    pub ino: u64,
    /// File type; never changes for a node.
    pub kind: FileType,
    /// Kernel lookup references.
    pub lookups: AtomicU64,
    /// Backing objects and location.
    pub state: RwLock<NodeState>,
    /// Serialises copy-up of this node.
    pub copy_lock: Mutex<()>,
    /// For directories: readers resolve names, writers change entries.
    pub dir_lock: RwLock<()>,
    /// Whether the top object carries xattrs (`XATTRS_*`), known once
    /// asked; meaningful only while the node has no upper copy (lower
    /// layers never change under a mount).
    pub lower_xattrs: AtomicU8,
    /// For directories: an entry was added, removed or renamed through
    /// this mount (see `Node::change_listing`).
    pub listing_changed: AtomicBool,
    /// For directories: when the node was last used (`fdbudget::now_ms`).
    pub used: AtomicU32,
}

/// `Node::lower_xattrs`: not yet known.
pub const XATTRS_UNKNOWN: u8 = 0;
/// `Node::lower_xattrs`: the lower object has no xattrs at all.
pub const XATTRS_NONE: u8 = 1;
/// `Node::lower_xattrs`: the lower object has some.
pub const XATTRS_SOME: u8 = 2;

impl Node {
    /// A new node with no kernel references yet.
    pub fn new(ino: u64, kind: FileType, state: NodeState) -> Node {
        Node {
            ino,
            kind,
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
            copy_lock: Mutex::new(()),
            dir_lock: RwLock::new(()),
            lower_xattrs: AtomicU8::new(XATTRS_UNKNOWN),
            listing_changed: AtomicBool::new(false),
            used: AtomicU32::new(crate::fdbudget::now_ms()),
        }
    }

    /// Lock this directory for a change of its entries, and remember that
    /// its listing changed. Directories whose listing never changed may be
    /// cached by the kernel: its listing cache can be filled by a reader
    /// whose listing predates a change while it already carries the
    /// version stamp of after the change, so once a directory changes it
    /// is listed by the daemon only.
    pub fn change_listing(&self) -> parking_lot::RwLockWriteGuard<'_, ()> {
        self.listing_changed.store(true, Ordering::Release);
        self.dir_lock.write()
    }

    /// Whether the node's object is known to carry no xattrs: true only
    /// while it has no upper copy and its lower object has none. The first
    /// call lists the lower object's xattrs once.
    pub fn lower_xattr_free(&self) -> bool {
        let obj = {
            let st = self.state.read();
            if st.upper.is_some() {
                return false;
            }
            match self.lower_xattrs.load(Ordering::Relaxed) {
                XATTRS_NONE => return true,
                XATTRS_SOME => return false,
                _ => match st.lowers.first() {
                    Some(l) => l.obj.clone(),
                    None => return false,
                },
            }
        };
        match obj.list_xattr() {
            Ok(names) => {
                let known = if names.is_empty() {
                    XATTRS_NONE
                } else {
                    XATTRS_SOME
                };
                self.lower_xattrs.store(known, Ordering::Relaxed);
                names.is_empty()
            }
            Err(_) => false,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }

    /// The object that answers for this node: the upper copy if any, else
    /// the topmost lower one.
    pub fn top_obj(&self) -> Option<Obj> {
        let st = self.state.read();
        st.upper
            .clone()
            .or_else(|| st.lowers.first().map(|l| l.obj.clone()))
    }

    /// The top object and its layer.
    pub fn top_layer_obj(&self) -> Option<(usize, Obj)> {
        let st = self.state.read();
        match &st.upper {
            Some(u) => Some((0, u.clone())),
            None => st.lowers.first().map(|l| (l.layer, l.obj.clone())),
        }
    }

    /// An `O_PATH` descriptor of the top object.
    pub fn top(&self) -> Result<Arc<OwnedFd>> {
        self.top_obj().ok_or(Errno::STALE)?.fd()
    }

    /// `lstat` of the top object.
    pub fn stat(&self) -> Result<Stat> {
        self.top_obj().ok_or(Errno::STALE)?.stat()
    }

    /// The upper object, if there is one.
    pub fn upper_obj(&self) -> Option<Obj> {
        self.state.read().upper.clone()
    }

    /// An `O_PATH` descriptor of the upper object, if there is one and it
    /// can be opened. For directories (held open); for objects reached by
    /// name use `Overlay::upper_fd`, which tells the two cases apart.
    pub fn upper(&self) -> Option<Arc<OwnedFd>> {
        self.upper_obj().and_then(|o| o.fd().ok())
    }

    /// Whether the node has an upper object.
    pub fn has_upper(&self) -> bool {
        self.state.read().upper.is_some()
    }

    /// For a directory: every layer directory merged into it, top first
    /// (upper as layer 0).
    pub fn dir_layers(&self) -> Vec<LayerFd> {
        let st = self.state.read();
        let mut v = Vec::with_capacity(st.lowers.len() + 1);
        if let Some(Obj::Fd(u)) = &st.upper {
            v.push(LayerFd {
                layer: 0,
                fd: u.clone(),
                wh: None,
            });
        }
        for l in &st.lowers {
            if let Obj::Fd(fd) = &l.obj {
                v.push(LayerFd {
                    layer: l.layer,
                    fd: fd.clone(),
                    wh: l.wh.clone(),
                });
            }
        }
        v
    }

    /// For a directory: the lower directories merged into it.
    pub fn lower_dirs(&self) -> Vec<LayerFd> {
        let st = self.state.read();
        st.lowers
            .iter()
            .filter_map(|l| match &l.obj {
                Obj::Fd(fd) => Some(LayerFd {
                    layer: l.layer,
                    fd: fd.clone(),
                    wh: l.wh.clone(),
                }),
                Obj::At { .. } => None,
            })
            .collect()
    }

    /// Keep the backing objects reachable after their names go away.
    pub fn pin(&self) -> Result<()> {
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
    pub fn is_merged_dir(&self) -> bool {
        let st = self.state.read();
        self.is_dir() && (st.lowers.len() + usize::from(st.upper.is_some())) > 1
    }

    /// (parent, name) this node is known by.
    pub fn location(&self) -> (u64, Name) {
        let st = self.state.read();
        (st.parent, st.name.clone())
    }
}

/// Ids above this are handed out from a counter (objects whose identity
/// does not fit the `dev << 56 | ino` scheme, or that collide).
pub const FRESH_BASE: u64 = 0xff << 56;
const INO_BITS: u32 = 56;
const MAX_DEV_INDEX: u64 = 0xfe;
const TRIM_EVERY: u64 = 4096;
/// Freed nodes after which memory is given back once the forgets pause.
const TRIM_BATCH: u64 = 256;

/// All live nodes.
#[derive(Debug)]
pub struct InodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    dentries: DashMap<(u64, Name), u64>,
    devs: DashMap<u64, u64>,
    next_dev: Mutex<u64>,
    spilled: DashMap<(u64, u64), u64>,
    next_fresh: AtomicU64,
    freed: AtomicU64,
    trim_pending: AtomicBool,
    new_dirs: AtomicU64,
}

impl InodeTable {
    /// A table holding only `root`.
    pub fn new(root: Node) -> InodeTable {
        let t = InodeTable {
            nodes: DashMap::new(),
            dentries: DashMap::new(),
            devs: DashMap::new(),
            next_dev: Mutex::new(1),
            spilled: DashMap::new(),
            next_fresh: AtomicU64::new(FRESH_BASE),
            freed: AtomicU64::new(0),
            trim_pending: AtomicBool::new(false),
            new_dirs: AtomicU64::new(0),
        };
        root.lookups.store(1, Ordering::Relaxed);
        t.nodes.insert(ROOT_INO, Arc::new(root));
        t
    }

    /// The node with id `ino`.
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes.get(&ino).map(|n| n.clone())
    }

    /// Number of live nodes (root included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only the root is alive.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    fn dev_index(&self, dev: u64) -> Option<u64> {
        if let Some(i) = self.devs.get(&dev) {
            return Some(*i);
        }
        let mut next = self.next_dev.lock();
        if let Some(i) = self.devs.get(&dev) {
            return Some(*i);
        }
        if *next > MAX_DEV_INDEX {
            return None;
        }
        let i = *next;
        *next += 1;
        self.devs.insert(dev, i);
        Some(i)
    }

    /// A fresh id that no identity maps to.
    pub fn fresh_ino(&self) -> u64 {
        self.next_fresh.fetch_add(1, Ordering::Relaxed)
    }

    /// The id for an object with identity (`dev`, `ino`).
    pub fn ino_for(&self, dev: u64, ino: u64) -> u64 {
        if ino < (1 << INO_BITS) {
            if let Some(d) = self.dev_index(dev) {
                return (d << INO_BITS) | ino;
            }
        }
        *self
            .spilled
            .entry((dev, ino))
            .or_insert_with(|| self.next_fresh.fetch_add(1, Ordering::Relaxed))
    }

    /// The live node known at (`parent`, `name`), taking a lookup reference
    /// on it.
    pub fn lookup_dentry(&self, parent: u64, name: &[u8]) -> Option<Arc<Node>> {
        let ino = *self.dentries.get(&(parent, Name::from(name)))?;
        let n = self.nodes.get(&ino)?;
        if n.state.read().detached {
            return None;
        }
        n.lookups.fetch_add(1, Ordering::Relaxed);
        Some(n.clone())
    }

    /// The id of the live node known at (`parent`, `name`), if any.
    pub fn dentry_ino(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let ino = *self.dentries.get(&(parent, Name::from(name)))?;
        self.nodes.contains_key(&ino).then_some(ino)
    }

    /// Take a lookup reference on the node `ino` if it is alive.
    pub fn reference(&self, ino: u64) -> Option<Arc<Node>> {
        let n = self.nodes.get(&ino)?;
        n.lookups.fetch_add(1, Ordering::Relaxed);
        Some(n.clone())
    }

    /// Insert `node` unless its id is taken; returns the node now under
    /// that id with one more lookup reference, and whether it is `node`.
    pub fn insert_or_get(&self, node: Node) -> (Arc<Node>, bool) {
        let ino = node.ino;
        let mut inserted = false;
        let entry = self.nodes.entry(ino).or_insert_with(|| {
            inserted = true;
            Arc::new(node)
        });
        entry.lookups.fetch_add(1, Ordering::Relaxed);
        (entry.clone(), inserted)
    }

    /// Record that (`parent`, `name`) now shows node `ino`.
    pub fn set_dentry(&self, parent: u64, name: Name, ino: u64) {
        self.dentries.insert((parent, name), ino);
    }

    /// Forget the name (`parent`, `name`).
    pub fn remove_dentry(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.dentries
            .remove(&(parent, Name::from(name)))
            .map(|(_, v)| v)
    }

    /// Every name recorded for node `ino`.
    pub fn names_of(&self, ino: u64) -> Vec<(u64, Name)> {
        self.dentries
            .iter()
            .filter(|e| *e.value() == ino)
            .map(|e| e.key().clone())
            .collect()
    }

    /// Count a new directory node; true every `every` of them.
    pub fn count_new_dir(&self, every: u64) -> bool {
        (self.new_dirs.fetch_add(1, Ordering::Relaxed) + 1) % every.max(1) == 0
    }

    /// All live directory nodes.
    pub fn dir_nodes(&self) -> Vec<Arc<Node>> {
        self.nodes
            .iter()
            .filter(|n| n.is_dir())
            .map(|n| n.value().clone())
            .collect()
    }

    /// Whether enough nodes were freed that memory should be given back
    /// soon; true once until `give_back` runs.
    pub fn trim_due(&self) -> bool {
        self.freed.load(Ordering::Relaxed) >= TRIM_BATCH
            && !self.trim_pending.swap(true, Ordering::AcqRel)
    }

    /// Shrink the maps once most of their room is unused (their tables
    /// never shrink by themselves) and return free heap to the system.
    pub fn give_back(&self) {
        self.freed.store(0, Ordering::Relaxed);
        self.trim_pending.store(false, Ordering::Release);
        if self.nodes.len() * 4 < self.nodes.capacity() {
            self.nodes.shrink_to_fit();
        }
        if self.dentries.len() * 4 < self.dentries.capacity() {
            self.dentries.shrink_to_fit();
        }
        crate::sys::trim_heap();
        log::debug!(
            "memory given back: {} nodes, {} names left",
            self.nodes.len(),
            self.dentries.len()
        );
    }

    /// Drop `n` kernel references to `ino`; free the node when none is left.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let last = match self.nodes.get(&ino) {
            Some(node) => {
                let prev = node
                    .lookups
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                        Some(v.saturating_sub(n))
                    })
                    .unwrap_or(0);
                prev <= n
            }
            None => return,
        };
        if !last {
            return;
        }
        if let Some((_, node)) = self
            .nodes
            .remove_if(&ino, |_, node| node.lookups.load(Ordering::Acquire) == 0)
        {
            let (parent, name) = node.location();
            self.dentries.remove_if(&(parent, name), |_, v| *v == ino);
            drop(node);
            // Many nodes freed (the kernel dropped its caches): return the
            // memory, so the daemon shrinks back.
            if self.freed.fetch_add(1, Ordering::Relaxed) + 1 >= TRIM_EVERY {
                self.give_back();
            }
        }
    }
}
