//! Listing orders other than the name-hash order (`readdir_order=`), to
//! catch programs that depend on the order of directory entries.
//!
//! Entries keep their offsets (`d_off`, the name hash of
//! `core::listing`); only the order they are returned in changes, so `.`
//! and `..` stay first and "continue after offset h" means "continue after
//! the entry whose offset is h" in the new order. A listing snapshot is
//! arranged once per directory handle and read from there, so a directory
//! read in many `getdents` calls, or with `telldir`/`seekdir`, sees every
//! entry exactly once, in one order.
//!
//! The order of a name depends only on the name (and the seed): the same
//! directory lists in the same order every time during a mount, and on
//! every mount with the same seed. An offset the handle's snapshot lacks
//! (only possible for an offset taken from another handle) continues by
//! its place in the order for `shuffle`, and ends the listing for the
//! orders by name, which cannot place a name they do not know.

use std::cmp::Ordering;
use std::sync::Arc;

use super::rules::draw;
use crate::core::listing::DirEntry;
use crate::setup::options::ListOrder;

/// Offsets up to this are `.` and `..`, always listed first.
const LAST_DOT_OFF: u64 = 2;

/// A listing snapshot and the order to return it in.
#[derive(Debug)]
pub(crate) struct Arranged {
    /// The snapshot, in offset order.
    pub(crate) src: Arc<Vec<DirEntry>>,
    /// Snapshot indices in the order to return them.
    order: Box<[u32]>,
    /// For each snapshot index, its place in `order`.
    place: Box<[u32]>,
}

fn shuffle_key(seed: u64, off: u64) -> (u64, u64) {
    if off <= LAST_DOT_OFF {
        (0, off)
    } else {
        (1 + (draw(seed, off, 0) >> 1), off)
    }
}

fn compare(how: ListOrder, a: &DirEntry, b: &DirEntry) -> Ordering {
    let dots = (a.off <= LAST_DOT_OFF, b.off <= LAST_DOT_OFF);
    match dots {
        (true, true) => return a.off.cmp(&b.off),
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        (false, false) => {}
    }
    match how {
        ListOrder::Hash => a.off.cmp(&b.off),
        ListOrder::Sorted => a.name.cmp(&b.name),
        ListOrder::Reverse => b.name.cmp(&a.name),
        ListOrder::Shuffle(seed) => shuffle_key(seed, a.off).cmp(&shuffle_key(seed, b.off)),
    }
}

/// Arrange `src` (sorted by offset) in the order `how`.
pub(crate) fn arrange(how: ListOrder, src: Arc<Vec<DirEntry>>) -> Arranged {
    let n = src.len().min(u32::MAX as usize);
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by(|a, b| match (src.get(*a as usize), src.get(*b as usize)) {
        (Some(x), Some(y)) => compare(how, x, y),
        _ => Ordering::Equal,
    });
    let mut place = vec![0u32; n];
    for (p, i) in order.iter().enumerate() {
        if let Some(slot) = place.get_mut(*i as usize) {
            *slot = p as u32;
        }
    }
    Arranged {
        src,
        order: order.into_boxed_slice(),
        place: place.into_boxed_slice(),
    }
}

impl Arranged {
    /// The place in the order of the first entry after `offset`.
    pub(crate) fn start_after(&self, how: ListOrder, offset: u64) -> usize {
        if offset == 0 {
            return 0;
        }
        if let Ok(i) = self.src.binary_search_by_key(&offset, |e| e.off) {
            return self
                .place
                .get(i)
                .map_or(self.order.len(), |p| *p as usize + 1);
        }
        match how {
            ListOrder::Shuffle(seed) => {
                let key = shuffle_key(seed, offset);
                self.order.partition_point(|i| {
                    self.src
                        .get(*i as usize)
                        .is_some_and(|e| shuffle_key(seed, e.off) <= key)
                })
            }
            ListOrder::Hash => self
                .order
                .partition_point(|i| self.src.get(*i as usize).is_some_and(|e| e.off <= offset)),
            ListOrder::Sorted | ListOrder::Reverse => self.order.len(),
        }
    }

    /// The entries from place `start` on, in order.
    pub(crate) fn from(&self, start: usize) -> InOrder<'_> {
        InOrder {
            places: self.order.get(start..).unwrap_or_default().iter(),
            src: &self.src,
        }
    }
}

/// The entries of an [`Arranged`] listing, in order.
pub(crate) struct InOrder<'a> {
    places: std::slice::Iter<'a, u32>,
    src: &'a [DirEntry],
}

impl<'a> Iterator for InOrder<'a> {
    type Item = &'a DirEntry;

    fn next(&mut self) -> Option<&'a DirEntry> {
        let src = self.src;
        self.places.find_map(|i| src.get(*i as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::listing::NO_LAYER;
    use rustix::fs::FileType;

    fn listing(names: &[&str]) -> Arc<Vec<DirEntry>> {
        let e = |name: &str, off: u64| DirEntry {
            name: Box::from(name.as_bytes()),
            ino: off,
            kind: FileType::RegularFile,
            off,
            layer: NO_LAYER,
        };
        let mut v = vec![e(".", 1), e("..", 2)];
        // Offsets as a hash would spread them: not in name order.
        for (i, n) in names.iter().enumerate() {
            v.push(e(n, 1000 + ((i as u64 * 7919) % 1009) * 10));
        }
        v.sort_by_key(|x| x.off);
        Arc::new(v)
    }

    fn names<'a>(it: impl Iterator<Item = &'a DirEntry>) -> Vec<String> {
        it.map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect()
    }

    /// Read the whole listing `chunk` entries at a time, continuing after
    /// the offset of the last entry returned, as the kernel does.
    fn read_in_chunks(how: ListOrder, a: &Arranged, chunk: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let start = a.start_after(how, offset);
            let got: Vec<&DirEntry> = a.from(start).take(chunk).collect();
            let Some(last) = got.last() else {
                return out;
            };
            offset = last.off;
            out.extend(names(got.into_iter()));
        }
    }

    #[test]
    fn orders_and_continuation() {
        let words: Vec<String> = (0..200)
            .map(|i| format!("n{:03}", (i * 37) % 200))
            .collect();
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let src = listing(&w);
        let mut sorted = words.clone();
        sorted.sort();
        for how in [
            ListOrder::Hash,
            ListOrder::Sorted,
            ListOrder::Reverse,
            ListOrder::Shuffle(1),
            ListOrder::Shuffle(2),
        ] {
            let a = arrange(how, src.clone());
            let all = names(a.from(0));
            assert_eq!(&all[..2], [".", ".."], "{how:?}");
            let mut rest = all[2..].to_vec();
            match how {
                ListOrder::Sorted => assert_eq!(rest, sorted),
                ListOrder::Reverse => {
                    rest.reverse();
                    assert_eq!(rest, sorted);
                }
                _ => {
                    rest.sort();
                    assert_eq!(rest, sorted, "{how:?}: each name once");
                }
            }
            for chunk in [1, 7, 64, 1000] {
                assert_eq!(read_in_chunks(how, &a, chunk), all, "{how:?} by {chunk}");
            }
            // The same names, arranged again: the same order.
            assert_eq!(names(arrange(how, src.clone()).from(0)), all);
        }
        let one = names(arrange(ListOrder::Shuffle(1), src.clone()).from(0));
        let two = names(arrange(ListOrder::Shuffle(2), src.clone()).from(0));
        assert_ne!(one, two, "the seed decides the order");
        assert_ne!(&one[2..], &sorted[..]);
    }

    #[test]
    fn the_order_of_a_name_does_not_depend_on_the_others() {
        let full = listing(&["a", "b", "c", "d", "e", "f"]);
        let part = listing(&["a", "c", "e"]);
        let how = ListOrder::Shuffle(9);
        let f = names(arrange(how, full).from(0));
        let p = names(arrange(how, part).from(0));
        let kept: Vec<String> = f.into_iter().filter(|n| p.contains(n)).collect();
        assert_eq!(kept, p);
    }

    #[test]
    fn unknown_offsets() {
        let src = listing(&["a", "b", "c"]);
        let a = arrange(ListOrder::Sorted, src.clone());
        assert_eq!(a.start_after(ListOrder::Sorted, 999_999), 5, "end");
        assert_eq!(a.start_after(ListOrder::Sorted, 1), 1);
        assert_eq!(a.start_after(ListOrder::Sorted, 2), 2);
        let how = ListOrder::Shuffle(3);
        let s = arrange(how, src);
        let start = s.start_after(how, 999_999);
        assert!((2..=5).contains(&start));
    }
}
