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
//! The kernel counts lookup references: every entry it is given carries
//! one, and it gives them back with FORGET. [`LookupRef`] is one such
//! reference in the daemon's hands: handed over with a reply, or given back
//! when dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use super::names::Name;
use super::node::Node;

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

/// All live nodes.
#[derive(Debug)]
pub(crate) struct InodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    dentries: DashMap<(u64, Name), u64>,
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

impl InodeTable {
    /// A table holding only `root` (which is never freed). `devs` are the
    /// layers' devices in stack order: numbered first, so that inode
    /// numbers are the same on every mount of the same stack.
    pub(crate) fn new(root: Node, devs: &[u64]) -> InodeTable {
        let t = InodeTable {
            nodes: DashMap::new(),
            dentries: DashMap::new(),
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
        t.nodes.insert(ROOT_INO, Arc::new(root));
        for dev in devs {
            t.dev_index(*dev);
        }
        t
    }

    /// Live nodes (the root included).
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The node with id `ino`.
    pub(crate) fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes.get(&ino).map(|n| n.clone())
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

    /// The id for an object with identity (`dev`, `ino`).
    pub(crate) fn ino_for(&self, dev: u64, ino: u64) -> u64 {
        if self.same_fs == Some(dev) && ino < FRESH_BASE {
            return ino;
        }
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

    fn counted<'t>(&'t self, node: &Arc<Node>) -> LookupRef<'t> {
        node.lookups.fetch_add(1, Ordering::Relaxed);
        LookupRef {
            node: node.clone(),
            table: self,
            handed_over: false,
        }
    }

    /// The live node known at (`parent`, `name`), with a lookup reference.
    pub(crate) fn lookup_dentry(&self, parent: u64, name: &[u8]) -> Option<LookupRef<'_>> {
        let ino = *self.dentries.get(&(parent, Name::from(name)))?;
        let n = self.get(ino)?;
        if n.state.read().detached {
            return None;
        }
        Some(self.counted(&n))
    }

    /// The id of the live node known at (`parent`, `name`), if any.
    pub(crate) fn dentry_ino(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let ino = *self.dentries.get(&(parent, Name::from(name)))?;
        self.nodes.contains_key(&ino).then_some(ino)
    }

    /// A lookup reference on the node `ino`, if it is alive.
    pub(crate) fn reference(&self, ino: u64) -> Option<LookupRef<'_>> {
        let n = self.get(ino)?;
        Some(self.counted(&n))
    }

    /// Insert `node` unless its id is taken; returns the node now under
    /// that id, with a lookup reference, and whether it is `node`.
    pub(crate) fn insert_or_get(&self, node: Node) -> (LookupRef<'_>, bool) {
        let ino = node.ino;
        let mut inserted = false;
        let n = self
            .nodes
            .entry(ino)
            .or_insert_with(|| {
                inserted = true;
                Arc::new(node)
            })
            .clone();
        (self.counted(&n), inserted)
    }

    /// Record that (`parent`, `name`) now shows `node`: in the name map and
    /// in the node's alias set when it is not the node's own location.
    pub(crate) fn set_dentry(&self, parent: u64, name: Name, node: &Node) {
        if let Some(old) = self.dentries.insert((parent, name.clone()), node.ino) {
            if old != node.ino {
                if let Some(o) = self.get(old) {
                    drop_alias(&o, parent, &name);
                }
            }
        }
        let mut st = node.state.write();
        if st.parent == parent && st.name == name {
            return;
        }
        let known = st.aliases.as_deref().unwrap_or_default();
        if !known.iter().any(|(p, n)| *p == parent && *n == name) {
            let mut v = known.to_vec();
            v.push((parent, name));
            st.aliases = Some(v.into_boxed_slice());
        }
    }

    /// Forget the name (`parent`, `name`); returns the id it showed.
    pub(crate) fn remove_dentry(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let (_, ino) = self.dentries.remove(&(parent, Name::from(name)))?;
        if let Some(n) = self.get(ino) {
            drop_alias(&n, parent, name);
        }
        Some(ino)
    }

    /// Every name the kernel knows `node` by: its location and its aliases
    /// that still show it.
    pub(crate) fn names_of(&self, node: &Node) -> Vec<(u64, Name)> {
        let st = node.state.read();
        let all = std::iter::once((st.parent, st.name.clone()))
            .chain(st.aliases.iter().flat_map(|a| a.iter().cloned()))
            .collect::<Vec<_>>();
        drop(st);
        all.into_iter()
            .filter(|(p, n)| {
                self.dentries
                    .get(&(*p, n.clone()))
                    .is_some_and(|i| *i == node.ino)
            })
            .collect()
    }

    /// Count a new directory node; true every `every` of them.
    pub(crate) fn count_new_dir(&self, every: u64) -> bool {
        (self.new_dirs.fetch_add(1, Ordering::Relaxed) + 1) % every.max(1) == 0
    }

    /// All live directory nodes.
    pub(crate) fn dir_nodes(&self) -> Vec<Arc<Node>> {
        self.nodes
            .iter()
            .filter(|n| n.is_dir())
            .map(|n| n.value().clone())
            .collect()
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
        if self.nodes.len() * 4 < self.nodes.capacity() {
            self.nodes.shrink_to_fit();
        }
        if self.dentries.len() * 4 < self.dentries.capacity() {
            self.dentries.shrink_to_fit();
        }
        crate::sys::raw::trim_heap();
        log::debug!(
            "memory given back: {} nodes, {} names left",
            self.nodes.len(),
            self.dentries.len()
        );
    }

    /// Drop `n` kernel references to `ino`; free the node, and every name
    /// it is known by, when none is left.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
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
            let names = {
                let mut st = node.state.write();
                let mut v = vec![(st.parent, st.name.clone())];
                v.extend(st.aliases.take().into_iter().flat_map(|a| a.into_vec()));
                v
            };
            for key in names {
                self.dentries.remove_if(&key, |_, v| *v == ino);
            }
            drop(node);
            // Many nodes freed (the kernel dropped its caches): return the
            // memory, so the daemon shrinks back.
            if self.freed.fetch_add(1, Ordering::Relaxed) + 1 >= TRIM_EVERY {
                self.give_back();
            }
        }
    }
}

/// Remove (`parent`, `name`) from `node`'s alias set.
fn drop_alias(node: &Node, parent: u64, name: &[u8]) {
    let mut st = node.state.write();
    let Some(a) = st.aliases.as_deref() else {
        return;
    };
    if a.iter().any(|(p, n)| *p == parent && **n == *name) {
        let rest: Vec<(u64, Name)> = a
            .iter()
            .filter(|(p, n)| !(*p == parent && **n == *name))
            .cloned()
            .collect();
        st.aliases = (!rest.is_empty()).then(|| rest.into_boxed_slice());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::node::NodeState;
    use rustix::fs::FileType;

    fn node(ino: u64, parent: u64, name: &str) -> Node {
        Node::new(
            ino,
            FileType::RegularFile,
            NodeState::new(parent, Name::from(name.as_bytes()), None, Vec::new(), None),
        )
    }

    fn table() -> InodeTable {
        let root = Node::new(
            ROOT_INO,
            FileType::Directory,
            NodeState::new(ROOT_INO, Name::from(&b""[..]), None, Vec::new(), None),
        );
        InodeTable::new(root, &[10, 20])
    }

    #[test]
    fn one_filesystem_gives_plain_inode_numbers() {
        let root = Node::new(
            ROOT_INO,
            FileType::Directory,
            NodeState::new(ROOT_INO, Name::from(&b""[..]), None, Vec::new(), None),
        );
        let t = InodeTable::new(root, &[10, 10, 10]);
        assert_eq!(t.ino_for(10, 5), 5);
        assert_eq!(t.ino_for(11, 5), (2 << 56) | 5, "an object elsewhere");
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
        let (r, inserted) = t.insert_or_get(node(7, ROOT_INO, "a"));
        assert!(inserted);
        t.set_dentry(ROOT_INO, Name::from(&b"a"[..]), &r);
        assert_eq!(t.dentry_ino(ROOT_INO, b"a"), Some(7));
        drop(r);
        assert!(t.get(7).is_none());
        assert_eq!(t.dentry_ino(ROOT_INO, b"a"), None);
        assert!(t.dentries.is_empty());
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
        let (r, _) = t.insert_or_get(node(7, ROOT_INO, "a"));
        let n = r.hand_over();
        t.set_dentry(ROOT_INO, Name::from(&b"a"[..]), &n);
        t.set_dentry(3, Name::from(&b"b"[..]), &n);
        t.set_dentry(4, Name::from(&b"c"[..]), &n);
        let mut names = t.names_of(&n);
        names.sort();
        assert_eq!(names.len(), 3);
        t.remove_dentry(3, b"b");
        assert_eq!(t.names_of(&n).len(), 2);
        // Another node takes over (4, c): no longer a name of node 7.
        let (o, _) = t.insert_or_get(node(8, 4, "c"));
        t.set_dentry(4, Name::from(&b"c"[..]), &o);
        assert_eq!(t.names_of(&n), vec![(ROOT_INO, Name::from(&b"a"[..]))]);
        drop(o);
        t.forget(7, 1);
        assert!(t.dentries.is_empty(), "{:?}", t.dentries);
    }
}
