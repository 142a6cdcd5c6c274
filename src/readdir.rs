//! Merged directory listings.
//!
//! A listing is the union of the directory's layer dirs, top first: each
//! name once (the topmost wins), whiteouts hide names from the layers below
//! them, markers (`.wh.*`) never show. `d_ino` is the number `lookup` would
//! give (the live node's, else the topmost object's identity).
//!
//! Offsets are not positions but a 63-bit hash of the name (`.` is 1, `..`
//! is 2), and a listing is sorted by it, the way ext4 and XFS hash-ordered
//! directories work. "Continue at offset h" then means "the entries whose
//! hash is above h" in any listing of the directory, taken at any time: a
//! directory read in several calls, or with seekdir/telldir, sees each entry
//! that exists throughout exactly once however it changes meanwhile. That
//! is what lets the kernel cache listings (`FOPEN_CACHE_DIR`): an offset it
//! got from one handle's listing means the same in another handle's.
//!
//! Each open directory handle takes a snapshot when it reads from offset 0
//! (or first reads at all); rewinddir takes a fresh one.

use std::collections::HashSet;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, RawDir};

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
    /// `d_off`: where a listing continues after this entry.
    pub off: u64,
    /// Index of the topmost layer that has the name (`NO_LAYER` for `.`
    /// and `..`): a lookup that follows the listing can start there.
    pub layer: u16,
}

/// `DirEntry::layer` when there is no hint.
pub const NO_LAYER: u16 = u16::MAX;

/// Offset of `.`.
const DOT_OFF: u64 = 1;
/// Offset of `..`; every other entry's offset is above it.
const DOTDOT_OFF: u64 = 2;

/// The offset of name: a 63-bit FNV-1a hash, moved above `..`.
fn name_off(name: &[u8]) -> u64 {
    let h = util::name_hash(name);
    // Fold the top bit in rather than dropping it; offsets are loff_t.
    let h = (h ^ (h >> 63)) & (u64::MAX >> 1);
    h.max(DOTDOT_OFF + 1)
}

/// Sorts entries by offset; two names with the same hash (astronomically
/// rare) get consecutive offsets so that every offset stays unique.
fn order_by_offset(v: &mut [DirEntry]) {
    v.sort_unstable_by(|a, b| a.off.cmp(&b.off).then_with(|| a.name.cmp(&b.name)));
    for i in 1..v.len() {
        if v[i].off <= v[i - 1].off {
            v[i].off = v[i - 1].off.saturating_add(1) & (u64::MAX >> 1);
        }
    }
}

/// Index of the first entry of a sorted listing that comes after `offset`.
pub fn start_after(entries: &[DirEntry], offset: u64) -> usize {
    entries.partition_point(|e| e.off <= offset)
}

impl Overlay {
    /// The merged entries of directory `node` (without `.` and `..`).
    pub fn list_dir(&self, node: &Node) -> Result<Vec<DirEntry>> {
        let layers = node.dir_layers();
        let n = layers.len();
        let mut seen: HashSet<Box<[u8]>> = HashSet::new();
        let mut hidden: HashSet<Box<[u8]>> = HashSet::new();
        let mut out = Vec::new();
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 32 * 1024];
        for (i, l) in layers.iter().enumerate() {
            let more_below = i + 1 < n;
            let upper_of_merged = more_below && l.layer == 0 && self.stack.has_upper;
            let dev = self.stack.layers.get(l.layer).map(|x| x.dev).unwrap_or(0);
            let dirfd = util::open_dir_read(&*l.fd)?;
            let hint = u16::try_from(l.layer).unwrap_or(NO_LAYER);
            let mut layer_wh: Vec<Box<[u8]>> = Vec::new();
            let mut entries = RawDir::new(&dirfd, &mut buf);
            while let Some(ent) = entries.next() {
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
                let off = name_off(name);
                let name: Box<[u8]> = Box::from(name);
                seen.insert(name.clone());
                out.push(DirEntry {
                    name,
                    ino,
                    kind,
                    off,
                    layer: hint,
                });
            }
            hidden.extend(layer_wh);
        }
        Ok(out)
    }

    /// Whether the merged directory shows no entries.
    pub fn dir_is_empty(&self, node: &Node) -> Result<bool> {
        Ok(self.list_dir(node)?.is_empty())
    }

    /// Full listing for a directory handle, `.` and `..` first, the rest
    /// in offset order.
    pub fn snapshot(&self, node: &Arc<Node>) -> Result<Vec<DirEntry>> {
        let (parent, _) = node.location();
        let mut rest = self.list_dir(node)?;
        order_by_offset(&mut rest);
        let mut v = Vec::with_capacity(rest.len() + 2);
        v.push(DirEntry {
            name: Box::from(&b"."[..]),
            ino: node.ino,
            kind: FileType::Directory,
            off: DOT_OFF,
            layer: NO_LAYER,
        });
        v.push(DirEntry {
            name: Box::from(&b".."[..]),
            ino: parent,
            kind: FileType::Directory,
            off: DOTDOT_OFF,
            layer: NO_LAYER,
        });
        v.extend(rest);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, off: u64) -> DirEntry {
        DirEntry {
            name: Box::from(name.as_bytes()),
            ino: 1,
            kind: FileType::RegularFile,
            off,
            layer: NO_LAYER,
        }
    }

    #[test]
    fn offsets_are_above_dotdot_and_fit_loff_t() {
        for name in ["", "a", "b", ".wh.x", "\u{ff}", &"z".repeat(255)] {
            let o = name_off(name.as_bytes());
            assert!(o > DOTDOT_OFF && o <= i64::MAX as u64, "{name}: {o}");
        }
        assert_ne!(name_off(b"a"), name_off(b"b"));
        assert_eq!(name_off(b"same"), name_off(b"same"));
    }

    #[test]
    fn colliding_hashes_get_unique_increasing_offsets() {
        let mut v = vec![entry("c", 7), entry("a", 5), entry("b", 5), entry("d", 6)];
        order_by_offset(&mut v);
        let got: Vec<(&[u8], u64)> = v.iter().map(|e| (&*e.name, e.off)).collect();
        assert_eq!(
            got,
            vec![
                (&b"a"[..], 5),
                (&b"b"[..], 6),
                (&b"d"[..], 7),
                (&b"c"[..], 8)
            ]
        );
        assert_eq!(start_after(&v, 0), 0);
        assert_eq!(start_after(&v, 5), 1);
        assert_eq!(start_after(&v, 7), 3);
        assert_eq!(start_after(&v, 8), 4);
        // An offset from another listing that this one lacks: continue at
        // the next larger one.
        let w = vec![entry("a", 5), entry("c", 9)];
        assert_eq!(start_after(&w, 7), 1);
    }
}
