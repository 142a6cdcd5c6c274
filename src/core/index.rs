//! The inode index: where the upper copy of a lower hard-linked file lives,
//! as the kernel overlay keeps it with `index=on`.
//!
//! All names of a lower hard-linked file are one inode. Its upper copy is
//! made once, in `WORKDIR/index/` under the hex of its origin record; a name
//! gets an upper link to it only when something is changed through that
//! name (link-up), and the other names go on showing the copy through the
//! index. The merged link count is kept relative to the copy's own count in
//! `overlay.nlink` (`format::nlink`): it changes when a name that had no
//! upper link goes (whiteout) or gets one (link-up); when no name is left
//! the entry is removed.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, XattrFlags};

use super::names::Name;
use super::obj::Obj;
use super::origin;
use super::overlay::Overlay;
use crate::error::{show_bytes, Result};
use crate::format::nlink::{self, Base};
use crate::format::origin as record;
use crate::format::xattr_names::Ovl;
use crate::sys::{fd, xattr};

/// The index entry of one lower inode.
#[derive(Debug, Clone)]
pub(crate) struct IndexEntry {
    /// Its name in the index directory.
    pub(crate) name: Name,
    /// The lower inode's origin record.
    pub(crate) record: Vec<u8>,
    /// Whether the entry exists.
    pub(crate) exists: bool,
}

impl IndexEntry {
    /// The entry as an upper object reached by name.
    pub(crate) fn obj(&self, index: &Arc<OwnedFd>) -> Obj {
        Obj::At {
            dir: index.clone(),
            name: self.name.clone(),
        }
    }
}

impl Overlay {
    /// The index entry for the lower object `obj` of layer `layer`; `None`
    /// when there is no index or the object's filesystem gives no handle.
    pub(crate) fn index_entry(&self, layer: usize, obj: &Obj) -> Option<IndexEntry> {
        let index = self.stack.index.as_ref()?;
        let rec = origin::record_of(&self.stack, layer, obj);
        if rec.is_empty() {
            return None;
        }
        let name = Name::from(record::index_name(&rec));
        let exists = fd::stat_at(&**index, &name).is_ok();
        Some(IndexEntry {
            name,
            record: rec,
            exists,
        })
    }

    /// Whether `obj` is an index entry (not a name in the upper tree).
    pub(crate) fn in_index(&self, obj: &Obj) -> bool {
        match (obj, self.stack.index.as_ref()) {
            (Obj::At { dir, .. }, Some(index)) => Arc::ptr_eq(dir, index),
            _ => false,
        }
    }

    /// The merged link count record of the indexed inode `inode`, as the
    /// difference to its own count (0 when missing or unusable).
    fn nlink_diff(&self, inode: &OwnedFd) -> i64 {
        self.stack
            .formats
            .read_ovl(inode, Ovl::Nlink)
            .and_then(|v| nlink::decode(&v))
            .and_then(|(b, d)| (b == Base::Upper).then_some(d))
            .unwrap_or(0)
    }

    /// Write the merged link count record of `inode`: `diff` more than its
    /// own count.
    pub(crate) fn set_nlink_diff(&self, inode: &OwnedFd, diff: i64) -> Result<()> {
        let name = self.stack.formats.ovl(Ovl::Nlink);
        xattr::set(inode, name, &nlink::encode(diff), XattrFlags::empty())
    }

    /// A name of the indexed inode `inode` got an upper link (link-up): the
    /// merged count is unchanged.
    pub(crate) fn index_linked_up(&self, inode: &OwnedFd) -> Result<()> {
        let d = self.nlink_diff(inode);
        self.set_nlink_diff(inode, d - 1)
    }

    /// A name of the indexed inode `inode` went: `had_upper_link` when the
    /// name was an upper link (already removed), else it was a lower name
    /// that now shows no more. Removes the index entry `entry` when no name
    /// is left.
    pub(crate) fn index_name_gone(&self, inode: &OwnedFd, entry: &[u8], had_upper_link: bool) {
        let mut d = self.nlink_diff(inode);
        if !had_upper_link {
            d -= 1;
            if let Err(e) = self.set_nlink_diff(inode, d) {
                log::warn!(
                    "link count of index entry {} not updated: {e}",
                    show_bytes(entry)
                );
            }
        }
        let own = rustix::fs::fstat(inode).map_or(1, |st| st.st_nlink as i64);
        if own + d <= 0 {
            if let Some(index) = &self.stack.index {
                if let Err(e) = rustix::fs::unlinkat(&**index, entry, AtFlags::empty()) {
                    log::warn!("index entry {} not removed: {e}", show_bytes(entry));
                }
            }
        }
    }
}

/// What removing one name of a file means for the index.
#[derive(Debug)]
pub(crate) enum NameGone {
    /// Nothing: not a hard link kept in the index.
    Nothing,
    /// A lower name (no upper link) of a hard-linked file: its index entry
    /// (made before the name goes, so the other names keep the data) and
    /// the indexed inode.
    Lower(Name, Arc<OwnedFd>),
    /// An upper link of an indexed inode.
    Upper(Name, Arc<OwnedFd>),
}

impl Overlay {
    /// Before the name `found` resolves to goes (unlink, or a rename over
    /// it) from the upper directory `pup`: what the index needs to know
    /// afterwards. A lower name of a hard-linked file is handled as the
    /// kernel overlay does it (a link-up, then the removal): its copy goes
    /// to the index and `pup` is marked impure.
    pub(crate) fn before_name_goes(
        &self,
        found: &super::resolve::Found,
        pup: &OwnedFd,
    ) -> Result<NameGone> {
        use rustix::fs::FileType;
        if found.kind() == FileType::Directory || self.stack.index.is_none() {
            return Ok(NameGone::Nothing);
        }
        if self.stack.is_upper(found.top.layer) {
            if found.stat.st_nlink < 2 {
                return Ok(NameGone::Nothing);
            }
            let inode = found.top.obj.fd()?;
            let indexed = self.stack.formats.read_ovl(&*inode, Ovl::Nlink).is_some();
            let rec = origin::recorded(&self.stack, &found.top.obj).filter(|r| !r.is_empty());
            return Ok(match (indexed, rec) {
                (true, Some(rec)) => NameGone::Upper(Name::from(record::index_name(&rec)), inode),
                _ => NameGone::Nothing,
            });
        }
        if found.stat.st_nlink < 2 {
            return Ok(NameGone::Nothing);
        }
        let Some((entry, inode)) = self.ensure_index(
            found.top.layer,
            &found.top.obj,
            &found.stat,
            super::copyup::Data::Meta,
            None,
        )?
        else {
            return Ok(NameGone::Nothing);
        };
        self.show_index_copy(found, &entry);
        self.mark_impure(pup);
        Ok(NameGone::Lower(entry.name, inode))
    }

    /// After the name went: the merged link count changes, and the entry
    /// goes with the last name.
    pub(crate) fn after_name_gone(&self, g: NameGone) {
        match g {
            NameGone::Nothing => {}
            NameGone::Lower(entry, inode) => self.index_name_gone(&inode, &entry, false),
            NameGone::Upper(entry, inode) => self.index_name_gone(&inode, &entry, true),
        }
    }

    /// A live node of the lower hard-linked object `found` that still
    /// reads the lower object switches to its copy in the index.
    fn show_index_copy(&self, found: &super::resolve::Found, entry: &IndexEntry) {
        let (Some(index), key) = (
            self.stack.index.as_ref(),
            (found.stat.st_dev, found.stat.st_ino),
        ) else {
            return;
        };
        let id = self.inodes.ino_for(key.0, key.1);
        let Some(node) = self.inodes.get(id) else {
            return;
        };
        let copy = entry.obj(index);
        // A metadata copy keeps its lower file: the data.
        let meta = super::metacopy::is_marked(&self.stack, &copy, &entry.name).unwrap_or(false);
        let mut st = node.state.write();
        if st.origin(node.ino) == Some(id) && !st.has_upper() {
            if meta {
                st.set_upper(copy);
            } else {
                st.set_upper_only(copy);
            }
            st.set_indexed(true);
        }
    }
}
