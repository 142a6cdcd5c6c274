//! Merged directory listings, as functions over layer directories.
//!
//! A listing is the union of the directory's layer dirs, top first: each
//! name once (the topmost wins), whiteouts hide names from the layers below
//! them, markers (`.wh.*`) never show. `d_ino` is whatever the caller's
//! numbering says (the overlay gives the number `lookup` would give).
//!
//! Offsets are not positions but a 63-bit hash of the name (`.` is 1, `..`
//! is 2), and a listing is sorted by it, the way ext4 and XFS hash-ordered
//! directories work. "Continue at offset h" then means "the entries whose
//! hash is above h" in any listing of the directory, taken at any time: a
//! directory read in several calls, or with seekdir/telldir, sees each entry
//! that exists throughout exactly once however it changes meanwhile. That
//! is what lets the kernel cache listings (`FOPEN_CACHE_DIR`): an offset it
//! got from one handle's listing means the same in another handle's.

use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{FileType, RawDir};

use super::names::name_hash;
use super::obj::LayerFd;
use crate::error::Result;
use crate::format::whiteout::{self, marker, Marker};
use crate::sys::fd;

/// One entry of a listing.
#[derive(Debug, Clone)]
pub(crate) struct DirEntry {
    /// Name.
    pub(crate) name: Box<[u8]>,
    /// `d_ino`.
    pub(crate) ino: u64,
    /// `d_type`.
    pub(crate) kind: FileType,
    /// `d_off`: where a listing continues after this entry.
    pub(crate) off: u64,
    /// Index of the topmost layer that has the name (`NO_LAYER` for `.`
    /// and `..`): a lookup that follows the listing can start there.
    pub(crate) layer: u16,
}

/// `DirEntry::layer` when there is no hint.
pub(crate) const NO_LAYER: u16 = u16::MAX;

/// Offset of `.`.
const DOT_OFF: u64 = 1;
/// Offset of `..`; every other entry's offset is above it.
const DOTDOT_OFF: u64 = 2;

/// A visible name as the listing finds it, for the caller's numbering.
pub(crate) struct Seen<'a> {
    /// The name.
    pub(crate) name: &'a [u8],
    /// The layer (stack index) it was found in.
    pub(crate) layer: usize,
    /// That layer's directory, open for reading.
    pub(crate) dir: BorrowedFd<'a>,
    /// The inode number in that layer.
    pub(crate) d_ino: u64,
    /// The layer is the upper of a directory merged with lower ones.
    pub(crate) upper_of_merged: bool,
}

/// The offset of a name: a 63-bit FNV-1a hash, moved above `..`.
fn name_off(name: &[u8]) -> u64 {
    let h = name_hash(name);
    // Fold the top bit in rather than dropping it; offsets are loff_t.
    let h = (h ^ (h >> 63)) & (u64::MAX >> 1);
    h.max(DOTDOT_OFF + 1)
}

/// Walk the visible entries of the directory merged from `layers` (top
/// first; `upper` when layer index 0 is the upper layer), calling `f` for
/// each until it returns false.
fn walk(
    layers: &[LayerFd],
    upper: bool,
    mut f: impl FnMut(Seen<'_>, FileType) -> bool,
) -> Result<()> {
    let n = layers.len();
    let mut seen: HashSet<Box<[u8]>> = HashSet::new();
    let mut hidden: HashSet<Box<[u8]>> = HashSet::new();
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    for (i, l) in layers.iter().enumerate() {
        let more_below = i + 1 < n;
        let upper_of_merged = more_below && upper && l.layer == 0;
        let dirfd = fd::open_dir_read(&*l.fd)?;
        let mut layer_wh: Vec<Box<[u8]>> = Vec::new();
        let mut entries = RawDir::new(&dirfd, &mut buf);
        while let Some(ent) = entries.next() {
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            match marker(name) {
                Some(Marker::Hides(target)) if more_below => {
                    layer_wh.push(Box::from(target));
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            if seen.contains(name) || hidden.contains(name) {
                continue;
            }
            let mut kind = ent.file_type();
            if kind == FileType::CharacterDevice || kind == FileType::Unknown {
                match fd::stat_at(&dirfd, name) {
                    Ok(st) if whiteout::is_whiteout(&st) => {
                        hidden.insert(Box::from(name));
                        continue;
                    }
                    Ok(st) => kind = FileType::from_raw_mode(st.st_mode),
                    Err(_) => continue, // vanished meanwhile
                }
            }
            seen.insert(Box::from(name));
            let s = Seen {
                name,
                layer: l.layer,
                dir: dirfd.as_fd(),
                d_ino: ent.ino(),
                upper_of_merged,
            };
            if !f(s, kind) {
                return Ok(());
            }
        }
        hidden.extend(layer_wh);
    }
    Ok(())
}

/// The merged entries (without `.` and `..`), numbered by `ino_of`.
pub(crate) fn merged(
    layers: &[LayerFd],
    upper: bool,
    mut ino_of: impl FnMut(&Seen<'_>) -> u64,
) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    walk(layers, upper, |s, kind| {
        out.push(DirEntry {
            ino: ino_of(&s),
            name: Box::from(s.name),
            kind,
            off: name_off(s.name),
            layer: u16::try_from(s.layer).unwrap_or(NO_LAYER),
        });
        true
    })?;
    Ok(out)
}

/// Whether the merged directory shows no entries.
pub(crate) fn is_empty(layers: &[LayerFd], upper: bool) -> Result<bool> {
    let mut empty = true;
    walk(layers, upper, |_, _| {
        empty = false;
        false
    })?;
    Ok(empty)
}

/// A full listing for a directory handle: `.` (`ino`) and `..` (`parent`)
/// first, then `rest` in offset order.
pub(crate) fn with_dots(ino: u64, parent: u64, mut rest: Vec<DirEntry>) -> Vec<DirEntry> {
    order_by_offset(&mut rest);
    let dot = |name: &[u8], ino, off| DirEntry {
        name: Box::from(name),
        ino,
        kind: FileType::Directory,
        off,
        layer: NO_LAYER,
    };
    let mut v = Vec::with_capacity(rest.len() + 2);
    v.push(dot(b".", ino, DOT_OFF));
    v.push(dot(b"..", parent, DOTDOT_OFF));
    v.extend(rest);
    v
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
pub(crate) fn start_after(entries: &[DirEntry], offset: u64) -> usize {
    entries.partition_point(|e| e.off <= offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::resolve::tests::layers;

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

    fn names(v: &[DirEntry]) -> Vec<String> {
        let mut n: Vec<String> = v
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn union_top_wins_whiteouts_hide_markers_never_show() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let ls = layers(t.path(), 3, true);
        let w = |rel: &str| std::fs::write(t.path().join(rel), "");
        w("l2/a")?;
        w("l2/b")?;
        w("l2/c")?;
        w("l1/b")?;
        w("l1/.wh.c")?;
        w("l1/.wh..wh..opq")?;
        w("l0/d")?;
        w("l0/.wh.a")?;
        let v = merged(&ls, true, |s| s.layer as u64 + 100)?;
        assert_eq!(names(&v), vec!["b", "d"]);
        let b = v
            .iter()
            .find(|e| &*e.name == b"b")
            .map(|e| (e.ino, e.layer));
        assert_eq!(b, Some((101, 1)), "the topmost layer numbers b");
        assert!(!is_empty(&ls, true)?);
        let full = with_dots(7, 3, v);
        assert_eq!(
            full.iter()
                .take(2)
                .map(|e| (e.ino, e.off))
                .collect::<Vec<_>>(),
            vec![(7, DOT_OFF), (3, DOTDOT_OFF)]
        );
        assert!(full.windows(2).all(|p| p[0].off < p[1].off));
        Ok(())
    }

    #[test]
    fn emptiness_sees_through_whiteouts() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let ls = layers(t.path(), 2, true);
        std::fs::write(t.path().join("l1/x"), "")?;
        std::fs::write(t.path().join("l0/.wh.x"), "")?;
        assert!(is_empty(&ls, true)?);
        std::fs::write(t.path().join("l1/y"), "")?;
        assert!(!is_empty(&ls, true)?);
        Ok(())
    }
}
