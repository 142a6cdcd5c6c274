//! Lookup: a name in a directory to a node with its attributes.
//!
//! A name the kernel already knows answers from the name map; otherwise it
//! is resolved over the directory's layers (`resolve`) and given a node
//! (`Overlay::attach`). All names of a lower hard-linked file are one node;
//! its copy, once made, is in the index (`index`), and every name shows
//! it. Without an index (layers without file handles), another name of a
//! copied-up file gets a link to that copy at once.

use std::sync::Arc;

use rustix::fs::{FileType, Stat};

use super::inodes::LookupRef;
use super::names::{Name, NAME_MAX};
use super::node::Node;
use super::overlay::{Entry, Overlay};
use super::resolve::{self, Found};
use crate::error::{Errno, Result};
use crate::format::whiteout;

impl Overlay {
    /// Look `name` up in directory `parent`. `Ok(None)` means the name does
    /// not exist.
    pub(crate) fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<Entry<'_>>> {
        self.lookup_hinted(parent, name, None)
    }

    /// `lookup` of a name a listing of `parent` showed in layer `hint` (see
    /// `DirEntry::layer`): while the directory's entries never changed, the
    /// layers above it need not be searched.
    pub(crate) fn lookup_hinted(
        &self,
        parent: u64,
        name: &[u8],
        hint: Option<usize>,
    ) -> Result<Option<Entry<'_>>> {
        let Some((node, stat)) = self.lookup_inner(parent, name, hint, true)? else {
            return Ok(None);
        };
        let stat = stat.ok_or(Errno::IO)?;
        reached(&node, parent, name);
        Ok(Some(Entry { node, stat }))
    }

    /// The node `lookup` finds at `name` in `parent`, without reading the
    /// attributes of a node the name map already knows: for a change that
    /// checks the names it works on under the directory lock itself.
    pub(crate) fn lookup_node(&self, parent: u64, name: &[u8]) -> Result<Option<LookupRef<'_>>> {
        let Some((node, _)) = self.lookup_inner(parent, name, None, false)? else {
            return Ok(None);
        };
        reached(&node, parent, name);
        Ok(Some(node))
    }

    /// With `want_stat` unset, a node from the name map comes without its
    /// attributes (`None`).
    fn lookup_inner(
        &self,
        parent: u64,
        name: &[u8],
        hint: Option<usize>,
        want_stat: bool,
    ) -> Result<Option<(LookupRef<'_>, Option<Stat>)>> {
        if whiteout::is_marker_name(name) {
            return Ok(None);
        }
        if name.len() > NAME_MAX {
            return Err(Errno::NAMETOOLONG);
        }
        let dir = self.dir_node(parent)?;
        let g = dir.dir_lock.read(parent);
        if let Some(node) = self.inodes.lookup_dentry(parent, name) {
            // Not under this directory's lock: the node may live under
            // another name in another directory (a hard link), whose lock
            // `stat_node` takes; holding both could deadlock with a rename.
            drop(g);
            self.events.lookup(true);
            let stat = if want_stat {
                Some(self.stat_node(&node)?)
            } else {
                None
            };
            return Ok(Some((node, stat)));
        }
        self.events.lookup(false);
        let mut layers = dir.dir_layers();
        let start = hint
            .filter(|_| dir.listing_unchanged())
            .and_then(|h| layers.iter().position(|l| l.layer == h))
            .unwrap_or(0);
        if start > 0 {
            // Lower layers never change; the upper may have got a copy of
            // the name since the listing, so it is always searched.
            let upper = self
                .stack
                .is_upper(layers[0].layer)
                .then(|| layers[0].clone());
            layers.drain(..start);
            layers.splice(0..0, upper);
        }
        let Some(found) = resolve::resolve_in(&layers, name, Some(&self.stack))? else {
            return Ok(None);
        };
        if let Some(copy) = self
            .copied_alias(&found)
            .filter(|_| self.stack.index.is_none())
        {
            drop(g);
            self.link_up(&copy, parent, name)?;
            let node = self.inodes.reference(copy.ino).ok_or(Errno::STALE)?;
            let stat = self.stat_node(&node)?;
            return Ok(Some((node, Some(stat))));
        }
        let e = self.attach(parent, name, found)?;
        Ok(Some((e.node, Some(e.stat))))
    }

    /// Without an index: if `found` is another name of a lower hard-linked
    /// file that has already been copied up, the node of that copy.
    fn copied_alias(&self, found: &Found) -> Option<Arc<Node>> {
        let st = &found.stat;
        if self.stack.is_upper(found.top.layer) {
            return None;
        }
        if st.st_nlink < 2 || found.kind() == FileType::Directory {
            return None;
        }
        let id = self.inodes.ino_for(st.st_dev, st.st_ino);
        let node = self.inodes.get(id)?;
        let s = node.state.read();
        (s.has_upper() && s.origin(node.ino) == Some(id)).then(|| node.clone())
    }
}

/// A name led to `node`: a directory was used, a hard-linked file was
/// reached by that name.
fn reached(node: &Node, parent: u64, name: &[u8]) {
    if node.is_dir() {
        node.touch();
    } else {
        note_name(node, parent, name);
    }
}

/// Remember the name a hard-linked node was reached by last, when it is
/// not the node's location: a change that follows goes through that name.
fn note_name(node: &Node, parent: u64, name: &[u8]) {
    let hard_linked = {
        let st = node.state.read();
        !st.aliases().is_empty() || st.indexed() || st.recent().is_some()
    };
    if !hard_linked {
        return;
    }
    let mut st = node.state.write();
    let elsewhere = st.parent() != parent || **st.name() != *name;
    st.set_recent(elsewhere.then(|| (parent, Name::from(name))));
}
