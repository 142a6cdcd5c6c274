//! The inode table: FUSE node ids, lookup references, and the map of live
//! names.
//!
//! A node's id is also its `st_ino`. It is derived from the identity of the
//! object that backs it (the lower original of a copied-up object), so it
//! is stable across remounts and a listing can compute the same number
//! without a lookup. When every layer lives on one filesystem the id is
//! that object's own inode number, as the kernel overlay reports it then;
//! otherwise `device index << 56 | inode number`, unique across layers on
//! different filesystems.
//! While a node lives, the name map makes lookups and listings of its names
//! report it; each node also keeps the names it is known by (its alias
//! set), so the names of a hard-linked node are found without a scan.
//!
//! The maps are hash tables split into shards, each behind its own lock
//! (`locks::MapLock`), and hold one pointer per entry: the node map is
//! keyed by the node's id; the name map by the node's location (parent,
//! name), read from the node itself, so a name costs no second copy. A node
//! is in the name map exactly while its state says `named`, and its
//! location changes only while it is not (`InodeTable::move_node`). Names
//! of a node other than its location (hard links) are in a third map,
//! (parent, name) → id. A name shows at most one node.
//!
//! The kernel counts lookup references: every entry it is given carries
//! one, and it gives them back with FORGET. [`LookupRef`] is one such
//! reference in the daemon's hands: handed over with a reply, or given back
//! when dropped.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use hashbrown::HashTable;
use parking_lot::Mutex;

use super::locks::{MapLock, StateWrite};
use super::names::Name;
use super::node::{Node, NodeState};

/// FUSE's id for the root directory.
pub(crate) const ROOT_INO: u64 = 1;
/// Ids above this are handed out from a counter (objects whose identity
/// does not fit the `dev << 56 | ino` scheme, or that collide).
pub(crate) const FRESH_BASE: u64 = 0xff << 56;
const INO_BITS: u32 = 56;
const MAX_DEV_INDEX: u64 = 0xfe;
const TRIM_EVERY: u64 = 4096;
/// Freed nodes after which memory is given back once the forgets pause.
const TRIM_BATCH: u64 = 256;

/// One kernel lookup reference on a node, held by the daemon until it is
/// handed to the kernel with a reply ([`LookupRef::hand_over`]); dropped
/// without that, it is given back, and the node freed if it was the last.
#[derive(Debug)]
pub(crate) struct LookupRef<'t> {
    node: Arc<Node>,
    table: &'t InodeTable,
    handed_over: bool,
}

impl LookupRef<'_> {
    /// The node.
    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The reply carrying this entry was sent: the kernel owns the
    /// reference now (it gives it back with FORGET).
    pub(crate) fn hand_over(mut self) -> Arc<Node> {
        self.handed_over = true;
        self.node.clone()
    }
}

impl std::ops::Deref for LookupRef<'_> {
    type Target = Node;
    fn deref(&self) -> &Node {
        self.node()
    }
}

impl Drop for LookupRef<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.table.forget(self.node.ino, 1);
        }
    }
}

/// A hash table split into shards, each behind its own lock.
struct Shards<T> {
    shards: Box<[MapLock<HashTable<T>>]>,
}

impl<T> Shards<T> {
    fn new() -> Shards<T> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let n = (cpus * 4).next_power_of_two();
        Shards {
            shards: (0..n).map(|_| MapLock::default()).collect(),
        }
    }

    /// The shard of an entry with hash `h` (bits the table itself uses
    /// little: it takes the low bits for the slot and the top seven as the
    /// tag).
    fn shard(&self, h: u64) -> &MapLock<HashTable<T>> {
        &self.shards[(h >> 40) as usize & (self.shards.len() - 1)]
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Shrink the shards whose room is mostly unused (tables never shrink
    /// by themselves).
    fn shrink(&self, rehash: impl Fn(&T) -> u64) {
        for s in self.shards.iter() {
            let mut t = s.write();
            if t.len() * 4 < t.capacity() {
                t.shrink_to_fit(&rehash);
            }
        }
    }
}

impl<T> std::fmt::Debug for Shards<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} entries", self.len())
    }
}

/// A name of a node that is not its location (a hard link).
#[derive(Debug)]
struct Alias {
    parent: u64,
    name: Name,
    ino: u64,
}

/// All live nodes.
#[derive(Debug)]
pub(crate) struct InodeTable {
    /// id → node.
    nodes: Shards<Arc<Node>>,
    /// (parent, name) → node, for each node's location.
    names: Shards<Arc<Node>>,
    /// (parent, name) → id, for the other names of nodes.
    aliases: Shards<Alias>,
    hasher: RandomState,
    devs: DashMap<u64, u64>,
    next_dev: Mutex<u64>,
    /// Every layer is on this one device: ids are plain inode numbers.
    same_fs: Option<u64>,
    spilled: DashMap<(u64, u64), u64>,
    next_fresh: AtomicU64,
    freed: AtomicU64,
    trim_pending: AtomicBool,
    new_dirs: AtomicU64,
}

/// Whether `st` is at (`parent`, `name`).
fn is_at(st: &NodeState, parent: u64, name: &[u8]) -> bool {
    st.parent() == parent && **st.name() == *name
}

/// The guards `InodeTable::unnamed_if` returns: the name map shard of a
/// node's old location, and the node's state.
type Unnamed<'a> = (
    StateWrite<'a, HashTable<Arc<Node>>>,
    StateWrite<'a, NodeState>,
);

impl InodeTable {
    /// A table holding only `root` (which is never freed). `devs` are the
    /// layers' devices in stack order: numbered first, so that inode
    /// numbers are the same on every mount of the same stack.
    pub(crate) fn new(root: Node, devs: &[u64]) -> InodeTable {
        let t = InodeTable {
            nodes: Shards::new(),
            names: Shards::new(),
            aliases: Shards::new(),
            hasher: RandomState::new(),
            devs: DashMap::new(),
            next_dev: Mutex::new(1),
            same_fs: devs
                .first()
                .copied()
                .filter(|d| devs.iter().all(|x| x == d)),
            spilled: DashMap::new(),
            next_fresh: AtomicU64::new(FRESH_BASE),
            freed: AtomicU64::new(0),
            trim_pending: AtomicBool::new(false),
            new_dirs: AtomicU64::new(0),
        };
        root.lookups.store(1, Ordering::Relaxed);
        let h = t.ino_hash(ROOT_INO);
        t.nodes
            .shard(h)
            .write()
            .insert_unique(h, Arc::new(root), |n| t.ino_hash(n.ino));
        for dev in devs {
            t.dev_index(*dev);
        }
        t
    }

    fn ino_hash(&self, ino: u64) -> u64 {
        self.hasher.hash_one(ino)
    }

    fn name_hash(&self, parent: u64, name: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(parent);
        h.write(name);
        h.finish()
    }

    /// The hash of a node's location (the name map's key).
    fn location_hash(&self, node: &Node) -> u64 {
        let st = node.state.read();
        self.name_hash(st.parent(), st.name())
    }

    /// Live nodes (the root included).
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The node with id `ino`.
    pub(crate) fn get(&self, ino: u64) -> Option<Arc<Node>> {
        let h = self.ino_hash(ino);
        self.nodes
            .shard(h)
            .read()
            .find(h, |n| n.ino == ino)
            .cloned()
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
    pub(crate) fn fresh_ino(&self) -> u64 {
        self.next_fresh.fetch_add(1, Ordering::Relaxed)
    }

    /// The id earlier versions gave the object behind `id` (always
    /// `device index << 56 | inode number`, devices numbered in stack
    /// order): the id this version gives it.
    pub(crate) fn ino_of_legacy(&self, id: u64, devs: &[u64]) -> Option<u64> {
        if id >= FRESH_BASE {
            return None;
        }
        let (dev, ino) = crate::format::origin::legacy::identity(id, devs)?;
        Some(self.ino_for(dev, ino))
    }

    /// The id for an object with identity (`dev`, `ino`). Distinct
    /// identities get distinct ids, so an id stands for its object (a
    /// node's origin is kept as one). Where every layer is on one
    /// filesystem, objects of other filesystems (mounts inside a layer)
    /// take ids from the counter.
    pub(crate) fn ino_for(&self, dev: u64, ino: u64) -> u64 {
        match self.same_fs {
            Some(fs) if fs == dev && ino < FRESH_BASE => return ino,
            Some(_) => {}
            None if ino < (1 << INO_BITS) => {
                if let Some(d) = self.dev_index(dev) {
                    return (d << INO_BITS) | ino;
                }
            }
            None => {}
        }
        *self
            .spilled
            .entry((dev, ino))
            .or_insert_with(|| self.next_fresh.fetch_add(1, Ordering::Relaxed))
    }

    /// A lookup reference on `node` if it is still the live node of its id
    /// (taken under the node map's lock, so that `forget` cannot free it
    /// meanwhile).
    fn counted<'t>(&'t self, node: &Arc<Node>) -> Option<LookupRef<'t>> {
        let h = self.ino_hash(node.ino);
        let shard = self.nodes.shard(h).read();
        shard.find(h, |n| Arc::ptr_eq(n, node))?;
        node.lookups.fetch_add(1, Ordering::Relaxed);
        Some(LookupRef {
            node: node.clone(),
            table: self,
            handed_over: false,
        })
    }

    /// The node whose location, or one of whose other names, is
    /// (`parent`, `name`), alive or being freed.
    fn shown(&self, parent: u64, name: &[u8]) -> Option<Arc<Node>> {
        let h = self.name_hash(parent, name);
        let named = self
            .names
            .shard(h)
            .read()
            .find(h, |n| is_at(&n.state.read(), parent, name))
            .cloned();
        if named.is_some() {
            return named;
        }
        let ino = self
            .aliases
            .shard(h)
            .read()
            .find(h, |a| a.parent == parent && *a.name == *name)
            .map(|a| a.ino)?;
        self.get(ino)
    }

    /// The live node known at (`parent`, `name`), with a lookup reference.
    pub(crate) fn lookup_dentry(&self, parent: u64, name: &[u8]) -> Option<LookupRef<'_>> {
        let n = self.shown(parent, name)?;
        if n.state.read().detached() {
            return None;
        }
        self.counted(&n)
    }

    /// The id of the live node known at (`parent`, `name`), if any.
    pub(crate) fn dentry_ino(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let n = self.shown(parent, name)?;
        let h = self.ino_hash(n.ino);
        let live = self
            .nodes
            .shard(h)
            .read()
            .find(h, |x| Arc::ptr_eq(x, &n))
            .is_some();
        live.then_some(n.ino)
    }

    /// A lookup reference on the node `ino`, if it is alive.
    pub(crate) fn reference(&self, ino: u64) -> Option<LookupRef<'_>> {
        let n = self.get(ino)?;
        self.counted(&n)
    }

    /// Insert `node` unless its id is taken; returns the node now under
    /// that id, with a lookup reference, and `node` if it was not inserted.
    pub(crate) fn insert_or_get(&self, node: Node) -> (LookupRef<'_>, Option<Node>) {
        let ino = node.ino;
        let h = self.ino_hash(ino);
        let mut shard = self.nodes.shard(h).write();
        let (n, rejected) = match shard.find(h, |n| n.ino == ino) {
            Some(n) => (n.clone(), Some(node)),
            None => {
                let n = Arc::new(node);
                shard.insert_unique(h, n.clone(), |x| self.ino_hash(x.ino));
                (n, None)
            }
        };
        n.lookups.fetch_add(1, Ordering::Relaxed);
        drop(shard);
        let r = LookupRef {
            node: n,
            table: self,
            handed_over: false,
        };
        (r, rejected)
    }

    /// Record that (`parent`, `name`) now shows `node`: in the name map
    /// when it is the node's location, else among its other names.
    /// Whatever showed the name before no longer does.
    pub(crate) fn set_dentry(&self, parent: u64, name: Name, node: &Arc<Node>) {
        let h = self.name_hash(parent, &name);
        let own = {
            let mut names = self.names.shard(h).write();
            if let Ok(e) = names.find_entry(h, |n| is_at(&n.state.read(), parent, &name)) {
                if !Arc::ptr_eq(e.get(), node) {
                    let (other, _) = e.remove();
                    other.state.write().set_named(false);
                }
            }
            let add = {
                let mut st = node.state.write();
                let own = is_at(&st, parent, &name);
                let add = own && !st.named();
                if add {
                    st.set_named(true);
                }
                (own, add)
            };
            if add.1 {
                names.insert_unique(h, node.clone(), |n| self.location_hash(n));
            }
            add.0
        };
        let old = {
            let mut aliases = self.aliases.shard(h).write();
            let old = aliases
                .find_entry(h, |a| a.parent == parent && a.name == name)
                .ok()
                .map(|e| e.remove().0.ino);
            if !own {
                aliases.insert_unique(
                    h,
                    Alias {
                        parent,
                        name: name.clone(),
                        ino: node.ino,
                    },
                    |a| self.name_hash(a.parent, &a.name),
                );
            }
            old
        };
        if let Some(o) = old.filter(|o| *o != node.ino || own) {
            if let Some(o) = self.get(o) {
                o.state.write().drop_alias(parent, &name);
            }
        }
        if !own {
            node.state.write().add_alias(parent, name);
        }
    }

    /// Lock the shard of `node`'s location, then its state; if `take`
    /// says so of the state, take the location out of the name map and
    /// return both guards. The caller may move the node while it holds
    /// them: no lookup or `set_dentry` of the old location can come
    /// between.
    fn unnamed_if<'a>(
        &'a self,
        node: &'a Arc<Node>,
        take: impl Fn(&NodeState) -> bool,
    ) -> Option<Unnamed<'a>> {
        loop {
            let h = self.location_hash(node);
            let mut names = self.names.shard(h).write();
            let mut st = node.state.write();
            if self.name_hash(st.parent(), st.name()) != h {
                continue; // moved meanwhile
            }
            if !take(&st) {
                return None;
            }
            if st.named() {
                st.set_named(false);
                let found = names
                    .find_entry(h, |n| Arc::ptr_eq(n, node))
                    .map(|e| e.remove());
                debug_assert!(found.is_ok(), "a named node is in the name map");
            }
            return Some((names, st));
        }
    }

    /// Move `node` to (`parent`, `name`), which shows it from then on;
    /// `change` updates the rest of its state in the same step. Only a
    /// node for which `when` holds (checked under the same locks) moves;
    /// another gets the name as one more of its names.
    pub(crate) fn move_node_if(
        &self,
        node: &Arc<Node>,
        parent: u64,
        name: Name,
        when: impl Fn(&NodeState) -> bool,
        change: impl FnOnce(&mut NodeState),
    ) {
        if let Some((_names, mut st)) = self.unnamed_if(node, when) {
            st.set_location(parent, name.clone());
            change(&mut st);
        }
        self.set_dentry(parent, name, node);
    }

    /// Move `node` to (`parent`, `name`), which shows it from then on;
    /// `change` updates the rest of its state in the same step.
    pub(crate) fn move_node(
        &self,
        node: &Arc<Node>,
        parent: u64,
        name: Name,
        change: impl FnOnce(&mut NodeState),
    ) {
        self.move_node_if(node, parent, name, |_| true, change);
    }

    /// Forget the name (`parent`, `name`); returns the id it showed.
    pub(crate) fn remove_dentry(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let h = self.name_hash(parent, name);
        {
            let mut names = self.names.shard(h).write();
            if let Ok(e) = names.find_entry(h, |n| is_at(&n.state.read(), parent, name)) {
                let (n, _) = e.remove();
                n.state.write().set_named(false);
                return Some(n.ino);
            }
        }
        let ino = self
            .aliases
            .shard(h)
            .write()
            .find_entry(h, |a| a.parent == parent && *a.name == *name)
            .ok()?
            .remove()
            .0
            .ino;
        if let Some(n) = self.get(ino) {
            n.state.write().drop_alias(parent, name);
        }
        Some(ino)
    }

    /// Whether the other name (`parent`, `name`) shows `ino`.
    fn alias_shows(&self, parent: u64, name: &[u8], ino: u64) -> bool {
        let h = self.name_hash(parent, name);
        self.aliases
            .shard(h)
            .read()
            .find(h, |a| a.parent == parent && *a.name == *name)
            .is_some_and(|a| a.ino == ino)
    }

    /// Every name the kernel knows `node` by: its location and its aliases
    /// that still show it.
    pub(crate) fn names_of(&self, node: &Node) -> Vec<(u64, Name)> {
        let (location, aliases) = {
            let st = node.state.read();
            let location = st.named().then(|| (st.parent(), st.name().clone()));
            (location, st.aliases().to_vec())
        };
        location
            .into_iter()
            .chain(
                aliases
                    .into_iter()
                    .filter(|(p, n)| self.alias_shows(*p, n, node.ino)),
            )
            .collect()
    }

    /// Count a new directory node; true every `every` of them.
    pub(crate) fn count_new_dir(&self, every: u64) -> bool {
        (self.new_dirs.fetch_add(1, Ordering::Relaxed) + 1) % every.max(1) == 0
    }

    /// All live directory nodes.
    pub(crate) fn dir_nodes(&self) -> Vec<Arc<Node>> {
        let mut v = Vec::new();
        for s in self.nodes.shards.iter() {
            v.extend(s.read().iter().filter(|n| n.is_dir()).cloned());
        }
        v
    }

    /// Whether enough nodes were freed that memory should be given back
    /// soon; true once until `give_back` runs.
    pub(crate) fn trim_due(&self) -> bool {
        self.freed.load(Ordering::Relaxed) >= TRIM_BATCH
            && !self.trim_pending.swap(true, Ordering::AcqRel)
    }

    /// Shrink the maps once most of their room is unused (their tables
    /// never shrink by themselves) and return free heap to the system.
    pub(crate) fn give_back(&self) {
        self.freed.store(0, Ordering::Relaxed);
        self.trim_pending.store(false, Ordering::Release);
        self.nodes.shrink(|n| self.ino_hash(n.ino));
        self.names.shrink(|n| self.location_hash(n));
        self.aliases.shrink(|a| self.name_hash(a.parent, &a.name));
        crate::sys::raw::trim_heap();
        log::debug!(
            "memory given back: {} nodes, {} names left",
            self.nodes.len(),
            self.names.len() + self.aliases.len()
        );
    }

    /// Drop `n` kernel references to `ino`; free the node, and every name
    /// it is known by, when none is left.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let h = self.ino_hash(ino);
        let last = match self.nodes.shard(h).read().find(h, |x| x.ino == ino) {
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
        let freed = {
            let mut shard = self.nodes.shard(h).write();
            match shard.find_entry(h, |x| x.ino == ino) {
                Ok(e) if e.get().lookups.load(Ordering::Acquire) == 0 => Some(e.remove().0),
                _ => None,
            }
        };
        let Some(node) = freed else {
            return;
        };
        let aliases = self
            .unnamed_if(&node, |_| true)
            .map(|(_, mut st)| st.take_aliases())
            .unwrap_or_default();
        for (p, name) in aliases {
            let h = self.name_hash(p, &name);
            let mut shard = self.aliases.shard(h).write();
            if let Ok(e) = shard.find_entry(h, |a| a.parent == p && a.name == name && a.ino == ino)
            {
                e.remove();
            }
        }
        drop(node);
        // Many nodes freed (the kernel dropped its caches): return the
        // memory, so the daemon shrinks back.
        if self.freed.fetch_add(1, Ordering::Relaxed) + 1 >= TRIM_EVERY {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::FileType;

    fn node(ino: u64, parent: u64, name: &str) -> Node {
        Node::new(
            ino,
            FileType::RegularFile,
            NodeState::new(parent, Name::from(name.as_bytes()), None, Vec::new()),
        )
    }

    /// Node `ino` at (`parent`, `name`), handed to the kernel.
    fn live_at(t: &InodeTable, ino: u64, parent: u64, name: &str) -> Arc<Node> {
        let (r, _) = t.insert_or_get(node(ino, parent, name));
        let n = r.hand_over();
        t.set_dentry(parent, Name::from(name.as_bytes()), &n);
        n
    }

    fn table() -> InodeTable {
        let root = Node::new(
            ROOT_INO,
            FileType::Directory,
            NodeState::new(ROOT_INO, Name::from(&b""[..]), None, Vec::new()),
        );
        InodeTable::new(root, &[10, 20])
    }

    #[test]
    fn one_filesystem_gives_plain_inode_numbers() {
        let root = Node::new(
            ROOT_INO,
            FileType::Directory,
            NodeState::new(ROOT_INO, Name::from(&b""[..]), None, Vec::new()),
        );
        let t = InodeTable::new(root, &[10, 10, 10]);
        assert_eq!(t.ino_for(10, 5), 5);
        assert!(t.ino_for(11, 5) >= FRESH_BASE, "an object elsewhere");
        assert_ne!(t.ino_for(11, 5), t.ino_for(10, 1 << 60));
        // Earlier versions numbered the device 1.
        assert_eq!(t.ino_of_legacy((1 << 56) | 77, &[10, 10]), Some(77));
        assert_eq!(t.ino_of_legacy((3 << 56) | 77, &[10, 10]), None);
    }

    #[test]
    fn ids_from_identity_are_stable_and_per_device() {
        let t = table();
        // Devices numbered in stack order from 1.
        assert_eq!(t.ino_for(10, 5), (1 << 56) | 5);
        assert_eq!(t.ino_for(20, 5), (2 << 56) | 5);
        assert_eq!(t.ino_for(30, 5), (3 << 56) | 5);
        // Too large for 56 bits: a fresh id, the same each time.
        let big = t.ino_for(10, 1 << 60);
        assert!(big >= FRESH_BASE);
        assert_eq!(t.ino_for(10, 1 << 60), big);
        assert_ne!(t.fresh_ino(), t.fresh_ino());
    }

    #[test]
    fn dropped_reference_frees_the_node_and_its_names() {
        let t = table();
        let (r, rejected) = t.insert_or_get(node(7, ROOT_INO, "a"));
        assert!(rejected.is_none());
        t.set_dentry(ROOT_INO, Name::from(&b"a"[..]), r.node());
        assert_eq!(t.dentry_ino(ROOT_INO, b"a"), Some(7));
        drop(r);
        assert!(t.get(7).is_none());
        assert_eq!(t.dentry_ino(ROOT_INO, b"a"), None);
        assert_eq!(t.names.len() + t.aliases.len(), 0);
    }

    #[test]
    fn handed_over_references_wait_for_forget() {
        let t = table();
        let (r, _) = t.insert_or_get(node(7, ROOT_INO, "a"));
        let n = r.hand_over();
        let again = t.reference(7).map(LookupRef::hand_over);
        assert!(again.is_some());
        assert_eq!(n.lookups.load(Ordering::Relaxed), 2);
        t.forget(7, 1);
        assert!(t.get(7).is_some());
        t.forget(7, 1);
        assert!(t.get(7).is_none());
        // Forgetting more than was given, or the root, is harmless.
        t.forget(7, 5);
        t.forget(ROOT_INO, 100);
        assert!(t.get(ROOT_INO).is_some());
    }

    #[test]
    fn aliases_follow_the_name_map() {
        let t = table();
        let n = live_at(&t, 7, ROOT_INO, "a");
        t.set_dentry(3, Name::from(&b"b"[..]), &n);
        t.set_dentry(4, Name::from(&b"c"[..]), &n);
        let mut names = t.names_of(&n);
        names.sort();
        assert_eq!(names.len(), 3);
        t.remove_dentry(3, b"b");
        assert_eq!(t.names_of(&n).len(), 2);
        // Another node takes over (4, c): no longer a name of node 7.
        let (o, _) = t.insert_or_get(node(8, 4, "c"));
        t.set_dentry(4, Name::from(&b"c"[..]), o.node());
        assert_eq!(t.names_of(&n), vec![(ROOT_INO, Name::from(&b"a"[..]))]);
        drop(o);
        t.forget(7, 1);
        assert_eq!(t.names.len() + t.aliases.len(), 0);
    }

    #[test]
    fn a_name_found_again_moves_only_a_removed_node() {
        let t = table();
        let n = live_at(&t, 7, ROOT_INO, "a");
        let found_again = |p: u64, name: &str| {
            t.move_node_if(
                &n,
                p,
                Name::from(name.as_bytes()),
                NodeState::detached,
                |st| st.set_detached(false),
            )
        };
        // Still at its name: another name is one more of its names.
        found_again(3, "b");
        assert_eq!(n.location(), (ROOT_INO, Name::from(&b"a"[..])));
        assert_eq!(t.dentry_ino(3, b"b"), Some(7));
        assert_eq!(t.dentry_ino(ROOT_INO, b"a"), Some(7));
        // Its name removed: the node lives at the name found next.
        t.remove_dentry(ROOT_INO, b"a");
        n.state.write().set_detached(true);
        found_again(4, "c");
        assert_eq!(n.location(), (4, Name::from(&b"c"[..])));
        assert!(!n.state.read().detached());
        assert_eq!(t.dentry_ino(ROOT_INO, b"a"), None);
        let mut names = t.names_of(&n);
        names.sort();
        assert_eq!(
            names,
            vec![(3, Name::from(&b"b"[..])), (4, Name::from(&b"c"[..]))]
        );
        t.forget(7, 1);
        assert_eq!(t.names.len() + t.aliases.len(), 0);
    }
}
