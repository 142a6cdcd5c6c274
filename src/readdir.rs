//! Merged directory listings.
//!
//! A listing is the union of the directory's layer dirs, top first: each
//! name once (the topmost wins), whiteouts hide names from the layers below
//! them, markers (`.wh.*`) never show. `d_ino` is the number `lookup` would
//! give (the live node's, else the topmost object's identity).
//!
//! Each open directory handle takes a snapshot at offset 0; offsets are
//! positions in that snapshot, so a directory read in several calls (or
//! with seekdir/telldir) sees each entry exactly once however it changes
//! meanwhile. Reading from offset 0 again takes a fresh snapshot, which is
//! what rewinddir promises.

use std::collections::HashSet;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType};

use crate::error::Result;
use crate::inode::Node;
use crate::overlay::Overlay;
use crate::util;
use crate::whiteout::{self, OPAQUE_FILE, WH_PREFIX};

/// One entry of a listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Name.
    pub name: Box<[u8]>,
    /// `d_ino`.
    pub ino: u64,
    /// `d_type`.
    pub kind: FileType,
}

impl Overlay {
    /// The merged entries of directory `node` (without `.` and `..`).
    pub fn list_dir(&self, node: &Node) -> Result<Vec<DirEntry>> {
        let layers = node.dir_layers();
        let n = layers.len();
        let mut seen: HashSet<Box<[u8]>> = HashSet::new();
        let mut hidden: HashSet<Box<[u8]>> = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let more_below = i + 1 < n;
            let upper_of_merged = more_below && l.layer == 0 && self.stack.has_upper;
            let dev = self.stack.layers.get(l.layer).map(|x| x.dev).unwrap_or(0);
            let fd = util::open_dir_read(&*l.fd)?;
            let dirfd = util::dup_path(&fd)?;
            let mut layer_wh: Vec<Box<[u8]>> = Vec::new();
            for ent in rustix::fs::Dir::new(fd)? {
                let ent = ent?;
                let name = ent.file_name().to_bytes();
                if name == b"." || name == b".." || name == OPAQUE_FILE {
                    continue;
                }
                if let Some(target) = name.strip_prefix(WH_PREFIX) {
                    if more_below && !target.is_empty() {
                        layer_wh.push(Box::from(target));
                    }
                    continue;
                }
                if seen.contains(name) || hidden.contains(name) {
                    continue;
                }
                let mut kind = ent.file_type();
                if kind == FileType::CharacterDevice || kind == FileType::Unknown {
                    match rustix::fs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if whiteout::is_whiteout(&st) => {
                            hidden.insert(Box::from(name));
                            continue;
                        }
                        Ok(st) => kind = FileType::from_raw_mode(st.st_mode),
                        Err(_) => continue, // vanished meanwhile
                    }
                }
                let ino = self.inodes.dentry_ino(node.ino, name).unwrap_or_else(|| {
                    // Objects copied up into a merged directory keep their
                    // lower inode number.
                    let origin = if upper_of_merged {
                        self.recorded_origin_at(&dirfd, name)
                    } else {
                        None
                    };
                    origin.unwrap_or_else(|| self.inodes.ino_for(dev, ent.ino()))
                });
                let name: Box<[u8]> = Box::from(name);
                seen.insert(name.clone());
                out.push(DirEntry { name, ino, kind });
            }
            hidden.extend(layer_wh);
        }
        Ok(out)
    }

    /// Whether the merged directory shows no entries.
    pub fn dir_is_empty(&self, node: &Node) -> Result<bool> {
        Ok(self.list_dir(node)?.is_empty())
    }

    /// Full listing for a directory handle, `.` and `..` first.
    pub fn snapshot(&self, node: &Arc<Node>) -> Result<Vec<DirEntry>> {
        let (parent, _) = node.location();
        let mut v = Vec::new();
        v.push(DirEntry {
            name: Box::from(&b"."[..]),
            ino: node.ino,
            kind: FileType::Directory,
        });
        v.push(DirEntry {
            name: Box::from(&b".."[..]),
            ino: parent,
            kind: FileType::Directory,
        });
        v.extend(self.list_dir(node)?);
        Ok(v)
    }
}
