//! The overlay: the layer stack, the inode table, the open handles, and
//! what every operation shares: reaching a node's top object safely,
//! presenting attributes, making nodes for names, listing directories.
//!
//! The operations themselves live beside it, one concept per module:
//! `lookup`, `copyup`, `namespace` (create, link, unlink, rename), `io`
//! (open files and directories), `attrs` (attributes and xattrs), and
//! `background` (the thread that talks back to the kernel).

use std::os::fd::OwnedFd;
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use rustix::fs::{FileType, Stat};

use super::events::Events;
use super::fdbudget;
use super::handles::HandleTable;
use super::inodes::{InodeTable, LookupRef, ROOT_INO};
use super::listing::{self, DirEntry};
use super::metacopy;
use super::names::Name;
use super::node::{keep_data_lower, Node, NodeState};
use super::notify::{Invalidate, KernelCache};
use super::obj::{LayerFd, LayerObj, Obj};
use super::origin::{self, Source};
use super::resolve::{self, Found};
use crate::error::{Errno, Result};
use crate::format::idmap::Ids;
use crate::format::override_stat::{self, Override};
use crate::format::xattr_names::Ovl;
use crate::format::{nlink, opaque};
use crate::setup::stack::Stack;
use crate::sys::fd;

/// Who is asking: the credentials of the request, as ids on disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    /// User id.
    pub(crate) uid: u32,
    /// Group id.
    pub(crate) gid: u32,
}

/// Tunables of a mounted overlay.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// How long the kernel may cache entries and attributes.
    pub(crate) ttl: Duration,
    /// Ownership presentation.
    pub(crate) ids: Ids,
    /// Open descriptors to stay below (`max_fds=`; 0: from the limit).
    pub(crate) max_fds: usize,
    /// `no_open`: files are opened without a request (the kernel sends
    /// none once OPEN is answered `ENOSYS`); reads and writes come without
    /// a handle and are served by node (see `io`).
    pub(crate) no_open: bool,
    /// Directories are listed without a handle (the kernel sends no
    /// OPENDIR or RELEASEDIR once OPENDIR is answered `ENOSYS`, and keeps
    /// every listing in its cache): only where no listing can change, a
    /// read-only mount (see `io::listing_of`).
    pub(crate) no_opendir: bool,
    /// The mount is read-only (no upper layer, or `ro`): nothing is ever
    /// copied up, so an open file keeps its layer's file for good.
    pub(crate) read_only: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(86400),
            ids: Ids::default(),
            max_fds: 0,
            no_open: false,
            no_opendir: false,
            read_only: false,
        }
    }
}

/// A mounted overlay's state.
#[derive(Debug)]
pub(crate) struct Overlay {
    /// The layers.
    pub(crate) stack: Stack,
    /// Live nodes.
    pub(crate) inodes: InodeTable,
    /// Open files and directories.
    pub(crate) handles: HandleTable,
    /// Tunables.
    pub(crate) config: Config,
    /// The daemon's own uid (new objects are chowned when the caller
    /// differs).
    pub(crate) euid: u32,
    /// The daemon's own gid.
    pub(crate) egid: u32,
    /// Open descriptors to stay below (see `fdbudget`).
    pub(crate) fd_budget: usize,
    /// Work for the background thread (see `background`), once started.
    pub(crate) background: OnceLock<Sender<Invalidate>>,
    /// The kernel's caches, for what is dropped at once (see `notify`).
    pub(crate) kernel: OnceLock<Arc<dyn KernelCache>>,
    /// What the overlay did, counted (copy-ups, whiteouts, name map).
    pub(crate) events: Events,
    /// With `no_opendir`: the listings of the last few directories listed,
    /// newest last (see `io::listing_of`).
    pub(crate) listings: Mutex<Vec<(u64, Arc<Vec<DirEntry>>)>>,
}

/// An answer to lookup-like requests: the node, with the lookup reference
/// the reply hands to the kernel, and its attributes.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// The node.
    pub(crate) node: LookupRef<'a>,
    /// Its attributes.
    pub(crate) stat: Stat,
}

impl Overlay {
    /// Build the overlay over an opened stack.
    pub(crate) fn new(stack: Stack, config: Config) -> Result<Overlay> {
        let mut lowers = Vec::new();
        let mut upper = None;
        for l in &stack.layers {
            let root = Arc::new(fd::dup_path(&l.root)?);
            if stack.is_upper(l.idx) {
                upper = Some(Obj::Fd(root));
            } else {
                lowers.push(LayerObj {
                    layer: l.idx,
                    obj: Obj::Fd(root),
                    index: Some(Arc::default()),
                });
            }
        }
        // A lower root that is opaque ends the merge of the roots.
        for i in 0..lowers.len().saturating_sub(1) {
            if opaque::is_opaque(&*lowers[i].obj.fd()?)? {
                lowers.truncate(i + 1);
                break;
            }
        }
        let devs: Vec<u64> = stack.layers.iter().map(|l| l.dev).collect();
        let root = Node::new(
            ROOT_INO,
            FileType::Directory,
            NodeState::new(ROOT_INO, Name::from(&b""[..]), upper, lowers),
        );
        let fd_budget = fdbudget::budget(config.max_fds, fdbudget::nofile_limit());
        Ok(Overlay {
            inodes: InodeTable::new(root, &devs),
            stack,
            handles: HandleTable::default(),
            config,
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            fd_budget,
            background: OnceLock::new(),
            kernel: OnceLock::new(),
            events: Events::default(),
            listings: Mutex::default(),
        })
    }

    /// The node `ino`, or `ESTALE` if the kernel names one we do not know.
    pub(crate) fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.inodes.get(ino).ok_or(Errno::STALE)
    }

    /// The node `ino`, which must be a directory.
    pub(crate) fn dir_node(&self, ino: u64) -> Result<Arc<Node>> {
        let n = self.node(ino)?;
        if !n.is_dir() {
            return Err(Errno::NOTDIR);
        }
        Ok(n)
    }

    /// `EROFS` unless the mount has an upper layer.
    pub(crate) fn writable(&self) -> Result<()> {
        if self.stack.has_upper {
            Ok(())
        } else {
            Err(Errno::ROFS)
        }
    }

    /// The mount has ended: remove what the work directory holds only
    /// while mounted (the whiteout template).
    pub(crate) fn unmounted(&self) {
        self.stack.formats.drop_template();
    }

    /// Tell the kernel to drop what it cached: attributes at once, the rest
    /// through the background thread (dropped when there is none).
    pub(crate) fn invalidate(&self, what: Invalidate) {
        if let (Invalidate::Attr(ino), Some(k)) = (&what, self.kernel.get()) {
            return k.drop_attrs(*ino);
        }
        if let Some(tx) = self.background.get() {
            let _ = tx.send(what);
        }
    }

    /// Attributes of a node, as reported to clients.
    pub(crate) fn stat_node(&self, node: &Node) -> Result<Stat> {
        let mut st = self.with_top(node, |layer, obj| {
            let mut st = obj.stat()?;
            self.present_node(node, layer, obj, &mut st);
            Ok(st)
        })?;
        if let Some(data) = node.metacopy_data() {
            // As the kernel: a metadata copy's blocks are its data file's.
            st.st_blocks = data.obj.stat()?.st_blocks;
        }
        Ok(st)
    }

    /// Turn the on-disk stat of `node`'s top object into what clients see:
    /// owner/mode overrides, and the merged link count of an indexed inode.
    pub(crate) fn present_node(&self, node: &Node, layer: usize, obj: &Obj, st: &mut Stat) {
        self.present(layer, obj, st);
        if self.stack.is_upper(layer) && node.state.read().indexed() {
            self.indexed_nlink(obj, st);
        } else if self.config.no_open
            && !self.stack.is_upper(layer)
            && st.st_nlink == 1
            && !node.is_dir()
            && node.state.read().detached()
        {
            // A removed lower file still open: the kernel overlay made its
            // copy at an open for writing and reports that copy's count
            // (0); without OPEN (`no_open`) the daemon cannot tell such an
            // open from one for reading, and a file no name leads to has no
            // links.
            st.st_nlink = 0;
        }
    }

    /// The merged link count of the indexed inode `obj` (of stat `st`).
    fn indexed_nlink(&self, obj: &Obj, st: &mut Stat) {
        let t = self.stack.formats.trusted();
        if let Some(n) = obj
            .get_xattr(Ovl::Nlink.name(t))
            .or_else(|_| obj.get_xattr(Ovl::Nlink.name(!t)))
            .ok()
            .and_then(|v| nlink::merged(&v, st.st_nlink))
        {
            st.st_nlink = n;
        }
    }

    /// For a lower hard-linked object (the first of `lowers`): its copy in
    /// the index, if there is one, with the copy's attributes.
    fn indexed_copy(&self, lowers: &[LayerObj]) -> Option<(Obj, Stat)> {
        let index = self.stack.index.as_ref()?;
        let l = lowers.first()?;
        let entry = self.index_entry(l.layer, &l.obj).filter(|e| e.exists)?;
        let obj = entry.obj(index);
        let mut st = obj.stat().ok()?;
        self.present(0, &obj, &mut st);
        Some((obj, st))
    }

    /// Run `f` on the node's top object (and its layer). An upper object
    /// reached by name is used under its parent directory's read lock, so a
    /// concurrent rename or unlink cannot put another object at that name
    /// in between (those pin or move the node under the write lock).
    pub(crate) fn with_top<T>(
        &self,
        node: &Node,
        f: impl Fn(usize, &Obj) -> Result<T>,
    ) -> Result<T> {
        loop {
            let (layer, obj) = node.top_layer_obj().ok_or(Errno::STALE)?;
            let by_name_in_upper = matches!(obj, Obj::At { .. }) && self.stack.is_upper(layer);
            if !by_name_in_upper {
                return f(layer, &obj);
            }
            let (parent, _) = node.location();
            let Some(dir) = self.inodes.get(parent) else {
                return f(layer, &obj);
            };
            // Recursive: lookups already hold this lock for reading.
            let _g = dir.dir_lock.read_recursive(parent);
            if node.location().0 != parent {
                continue; // moved meanwhile: lock the new parent
            }
            let (layer, obj) = node.top_layer_obj().ok_or(Errno::STALE)?;
            return f(layer, &obj);
        }
    }

    /// The upper object of `node` held open, if it has one. Unlike
    /// `Node::upper`, an object reached by name is opened under its
    /// parent's read lock (see `with_top`), so a concurrent rename cannot
    /// make it look absent, and a failure to open it is an error, not "no
    /// upper copy".
    pub(crate) fn upper_fd(&self, node: &Node) -> Result<Option<Arc<OwnedFd>>> {
        if !node.has_upper() {
            return Ok(None);
        }
        self.with_top(node, |layer, obj| {
            if self.stack.is_upper(layer) {
                obj.fd().map(Some)
            } else {
                Ok(None)
            }
        })
    }

    /// The owner/mode override recorded on `obj` of layer `layer`, if any.
    pub(crate) fn recorded_override(&self, layer: usize, obj: &Obj, st: &Stat) -> Option<Override> {
        let name = self.stack.override_xattr(layer)?;
        if !override_stat::applies_to(st) {
            return None;
        }
        Override::parse(&obj.get_xattr(name).ok()?)
    }

    /// Turn an on-disk stat into what clients see (owner/mode overrides).
    pub(crate) fn present(&self, layer: usize, obj: &Obj, st: &mut Stat) {
        if let Some(o) = self.recorded_override(layer, obj, st) {
            o.apply(st);
        }
    }

    /// A directory node was made: now and then, check the descriptor
    /// budget (in the background).
    fn new_dir_node(&self) {
        if self
            .inodes
            .count_new_dir(fdbudget::check_every(self.fd_budget))
        {
            self.invalidate(Invalidate::FdCheck);
        }
    }

    /// Make (or find) the node for a resolved name and record the name.
    /// Fails only for a metadata copy whose data cannot be found
    /// (`core::metacopy`).
    pub(crate) fn attach(&self, parent: u64, name: &[u8], found: Found) -> Result<Entry<'_>> {
        let mut stat = found.stat;
        self.present(found.top.layer, &found.top.obj, &mut stat);
        let kind = FileType::from_raw_mode(stat.st_mode);
        let below = found.below.into_iter().map(LayerObj::from);
        let (mut upper, mut lowers): (Option<Obj>, Vec<LayerObj>) =
            if self.stack.is_upper(found.top.layer) {
                // The upper changes while mounted: no cached indexes.
                (Some(found.top.obj), below.collect())
            } else {
                (None, std::iter::once(found.top).chain(below).collect())
            };
        let is_dir = kind == FileType::Directory;
        let (source, record_ns) = match &upper {
            Some(u) => {
                let (s, ns) = self.source_of(parent, name, u, &lowers);
                (Some(s), ns)
            }
            None => (None, None),
        };
        let (mut ino, origin, mut indexed) = match (&upper, source) {
            (None, _) | (Some(_), None) => {
                let id = self.inodes.ino_for(stat.st_dev, stat.st_ino);
                (id, (!is_dir).then_some(id), false)
            }
            (Some(u), Some(source)) => match source {
                Source::Lower(l) => {
                    let id = self.inodes.ino_for(l.st_dev, l.st_ino);
                    let ino = if origin::numbered_by_copy(&self.stack, &stat) {
                        self.copy_ino(&stat, Some(id))
                    } else {
                        id
                    };
                    (ino, (!is_dir).then_some(id), !is_dir && l.st_nlink > 1)
                }
                Source::Handle(dev, ino) => {
                    let id = self.inodes.ino_for(dev, ino);
                    let ino = if origin::numbered_by_copy(&self.stack, &stat) {
                        self.copy_ino(&stat, Some(id))
                    } else {
                        id
                    };
                    (ino, (!is_dir).then_some(id), false)
                }
                Source::LegacyId(id) => (
                    self.legacy_ino(id)
                        .unwrap_or_else(|| self.inodes.ino_for(stat.st_dev, stat.st_ino)),
                    None,
                    false,
                ),
                Source::Unknown => match self.fix_dir_origin(parent, u, &lowers) {
                    // Numbered by the lower directory from now on, as after
                    // a remount.
                    Some(l) => (self.inodes.ino_for(l.st_dev, l.st_ino), None, false),
                    None => (self.inodes.ino_for(stat.st_dev, stat.st_ino), None, false),
                },
            },
        };
        // A regular file may be a metadata copy: an upper one with an
        // origin always (stratafs and the kernel write one with each); with
        // metacopy=on also an upper one without (the kernel writes none
        // where the lower layers give no file handles) and a lower one (an
        // earlier upper used as a lower layer). Its data is in the layers
        // below it.
        let candidate = match (&upper, lowers.first()) {
            (Some(u), None) if origin.is_some() || self.stack.metacopy => Some((u.clone(), 1)),
            (None, Some(top)) if self.stack.metacopy => Some((top.obj.clone(), top.layer + 1)),
            _ => None,
        };
        if let Some((obj, from)) = candidate.filter(|_| kind == FileType::RegularFile) {
            let dirs: Vec<LayerFd> = self
                .inodes
                .get(parent)
                .map(|p| p.lower_dirs())
                .unwrap_or_default()
                .into_iter()
                .filter(|d| d.layer >= from)
                .collect();
            // Without an origin record, the records are in the namespace
            // this mount writes.
            let ns = record_ns.or(Some(self.stack.formats.trusted()));
            if let Some((data_st, data)) =
                metacopy::data_of(&self.stack, &dirs, name, &obj, ns, from)?
            {
                stat.st_blocks = data_st.st_blocks;
                // After the upper copy or the lower metadata copy.
                lowers.push(data);
            }
        }
        if upper.is_none() && !is_dir && stat.st_nlink > 1 {
            // A lower hard link whose copy is in the index shows the copy.
            if let Some((obj, mut st)) = self.indexed_copy(&lowers) {
                if metacopy::is_marked(&self.stack, &obj, name)? {
                    // A metadata copy: the data is this lower file's.
                    st.st_blocks = stat.st_blocks;
                    keep_data_lower(&mut lowers);
                } else {
                    lowers.clear();
                }
                upper = Some(obj);
                stat = st;
                indexed = true;
                if origin::numbered_by_copy(&self.stack, &stat) {
                    ino = self.copy_ino(&stat, origin);
                }
            }
        }
        if indexed {
            if let Some(u) = &upper {
                self.indexed_nlink(u, &mut stat);
            }
        }
        if ino == ROOT_INO {
            ino = self.inodes.fresh_ino();
        }
        let shared = upper
            .as_ref()
            .or(lowers.first().map(|l| &l.obj))
            .map_or_else(|| Name::from(name), |o| o.shared_name(name));
        let mut state = NodeState::new(parent, shared.clone(), upper, lowers);
        state.set_indexed(indexed);
        loop {
            state.set_origin(ino, origin);
            let (node, rejected) = self.inodes.insert_or_get(Node::new(ino, kind, state));
            match rejected {
                None => {
                    if kind == FileType::Directory {
                        self.new_dir_node();
                    }
                    self.inodes.set_dentry(parent, shared, node.node());
                    return Ok(Entry { node, stat });
                }
                Some(_) if self.same_object(&node, origin, &stat, kind) => {
                    // Another name of the same inode (a hard link), or a
                    // name found again: keep the node; one whose name was
                    // removed lives here now.
                    self.inodes.move_node_if(
                        node.node(),
                        parent,
                        shared,
                        NodeState::detached,
                        |st| st.set_detached(false),
                    );
                    return Ok(Entry { node, stat });
                }
                // Taken by an unrelated object (an inode number reused after
                // a delete while the old node lives on): use a fresh id (the
                // reference on the other node is given back with `node`).
                Some(r) => state = r.into_state(),
            }
            ino = self.inodes.fresh_ino();
        }
    }

    /// The id of a copy numbered by itself (`origin::numbered_by_copy`):
    /// the live node of its lower original `lower` if there is one (it keeps
    /// its number while the kernel knows it), else the copy's own number.
    fn copy_ino(&self, copy: &Stat, lower: Option<u64>) -> u64 {
        if let Some(id) = lower {
            let live = self.inodes.get(id);
            if live.is_some_and(|n| n.state.read().origin(n.ino) == Some(id)) {
                return id;
            }
        }
        self.inodes.ino_for(copy.st_dev, copy.st_ino)
    }

    /// A node for an object just created in the upper layer.
    pub(crate) fn attach_new(&self, parent: u64, name: &[u8], obj: Obj, stat: Stat) -> Entry<'_> {
        let kind = FileType::from_raw_mode(stat.st_mode);
        let mut ino = self.inodes.ino_for(stat.st_dev, stat.st_ino);
        let shared = obj.shared_name(name);
        let mut state = NodeState::new(parent, shared.clone(), Some(obj), Vec::new());
        loop {
            let (node, rejected) = self.inodes.insert_or_get(Node::new(ino, kind, state));
            let Some(r) = rejected else {
                if kind == FileType::Directory {
                    self.new_dir_node();
                }
                self.inodes.set_dentry(parent, shared, node.node());
                return Entry { node, stat };
            };
            // The id is still held by an older node whose inode number the
            // filesystem reused: take a fresh one.
            state = r.into_state();
            ino = self.inodes.fresh_ino();
        }
    }

    /// Whether the live `node` is the object found (of stat `stat`, a copy
    /// of lower `origin` if that is known).
    fn same_object(&self, node: &Node, origin: Option<u64>, stat: &Stat, kind: FileType) -> bool {
        if node.kind != kind {
            return false;
        }
        let known = node.origin();
        if known.is_some()
            && (known == origin || known == Some(self.inodes.ino_for(stat.st_dev, stat.st_ino)))
        {
            return true;
        }
        match node.stat() {
            Ok(st) => {
                st.st_dev == stat.st_dev
                    && st.st_ino == stat.st_ino
                    && (st.st_nlink > 0 || kind == FileType::Directory)
            }
            _ => false,
        }
    }

    /// The merged entries of directory `node` (without `.` and `..`),
    /// numbered as `lookup` numbers them: a live node's id, else the
    /// recorded origin of an object copied up into a merged directory, else
    /// the topmost object's identity.
    pub(crate) fn list_dir(&self, node: &Node) -> Result<Vec<DirEntry>> {
        let layers = node.dir_layers();
        let lower: Vec<LayerFd> = layers.iter().filter(|l| l.layer != 0).cloned().collect();
        listing::merged(&layers, self.stack.has_upper, |s| {
            self.inodes.dentry_ino(node.ino, s.name).unwrap_or_else(|| {
                let own = || self.inodes.ino_for(self.stack.dev(s.layer), s.d_ino);
                if !s.upper_of_merged {
                    return own();
                }
                let Ok(dir) = s.dir.try_clone_to_owned() else {
                    return own();
                };
                let upper = Obj::At {
                    dir: Arc::new(dir),
                    name: Name::from(s.name),
                };
                let candidates = || lower_candidates(&lower, s.name);
                match origin::source(&self.stack, &upper, candidates) {
                    Source::Lower(_) | Source::Handle(..)
                        if !self.stack.open_handles
                            && upper
                                .stat()
                                .is_ok_and(|st| origin::numbered_by_copy(&self.stack, &st)) =>
                    {
                        own()
                    }
                    Source::Lower(l) => self.inodes.ino_for(l.st_dev, l.st_ino),
                    Source::Handle(dev, ino) => self.inodes.ino_for(dev, ino),
                    Source::LegacyId(id) => self.legacy_ino(id).unwrap_or_else(own),
                    Source::Unknown => own(),
                }
            })
        })
    }

    /// Where the upper object `upper` at (`parent`, `name`) came from; the
    /// candidates are the lower objects at the same name (`lowers` for a
    /// directory, else found in the parent's lower layers).
    /// Also says in which namespace the record was (see `origin::source_ns`).
    fn source_of(
        &self,
        parent: u64,
        name: &[u8],
        upper: &Obj,
        lowers: &[LayerObj],
    ) -> (Source, Option<bool>) {
        origin::source_ns(&self.stack, upper, || {
            if !lowers.is_empty() {
                return lowers.iter().map(|l| (l.layer, l.obj.clone())).collect();
            }
            self.inodes
                .get(parent)
                .map(|p| lower_candidates(&p.lower_dirs(), name))
                .unwrap_or_default()
        })
    }

    /// A merged directory whose upper part has no origin record (made by
    /// an earlier version, or by a tool) gets one, and its parent the
    /// impure mark, as the kernel overlay does when it looks one up.
    /// Returns the lower directory's attributes when the record was written.
    fn fix_dir_origin(&self, parent: u64, upper: &Obj, lowers: &[LayerObj]) -> Option<Stat> {
        let l = lowers.first()?;
        if !self.stack.has_upper || origin::recorded(&self.stack, upper).is_some() {
            return None;
        }
        let fd = upper.fd().ok()?;
        let record = origin::record_of(&self.stack, l.layer, &l.obj);
        if record.is_empty() {
            return None;
        }
        origin::write(&self.stack, &fd, false, &record);
        if let Some(pup) = self.inodes.get(parent).and_then(|p| p.upper()) {
            self.mark_impure(&pup);
        }
        l.obj.stat().ok()
    }

    /// The id this version gives an object an earlier version numbered
    /// `id`.
    fn legacy_ino(&self, id: u64) -> Option<u64> {
        let devs: Vec<u64> = self.stack.layers.iter().map(|l| l.dev).collect();
        self.inodes
            .ino_of_legacy(id, &devs)
            .filter(|i| *i != ROOT_INO)
    }

    /// Whether the directory merged from `layers` shows no entries.
    pub(crate) fn is_empty_dir(&self, layers: &[LayerFd]) -> Result<bool> {
        listing::is_empty(layers, self.stack.has_upper)
    }

    /// Full listing of directory `node` for a handle: `.`, `..`, then the
    /// entries in offset order.
    pub(crate) fn snapshot(&self, node: &Node) -> Result<Vec<DirEntry>> {
        let (parent, _) = node.location();
        let entries = self.list_dir(node)?;
        self.drop_stale_impure(node, &entries);
        Ok(listing::with_dots(node.ino, parent, entries))
    }

    /// A directory of the upper layer only that is marked impure but no
    /// longer holds an entry shown with another inode number than its own
    /// (a copy of a lower object) loses the mark, as the kernel overlay does
    /// when it reads such a directory.
    fn drop_stale_impure(&self, node: &Node, entries: &[DirEntry]) {
        if node.has_lowers() {
            return;
        }
        let Some(u) = node.upper() else {
            return;
        };
        if self.stack.formats.read_ovl(&*u, Ovl::Impure).is_none() {
            return;
        }
        let renumbered = |e: &DirEntry| {
            fd::stat_at(&*u, &e.name).map_or(true, |st| {
                e.ino != self.inodes.ino_for(st.st_dev, st.st_ino)
            })
        };
        if entries.iter().any(renumbered) {
            return;
        }
        node.state.write().set_impure_known(false);
        let _ = self.stack.formats.remove_ovl(&*u, Ovl::Impure);
    }
}

/// The object `name` resolves to in the lower directories `lower`, as an
/// origin candidate.
fn lower_candidates(lower: &[LayerFd], name: &[u8]) -> Vec<(usize, Obj)> {
    match resolve::resolve(lower, name) {
        Ok(Some(f)) => vec![(f.top.layer, f.top.obj)],
        _ => Vec::new(),
    }
}
