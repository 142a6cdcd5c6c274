//! The per-node locks, and the order they are taken in.
//!
//! * A **copy lock** serialises the copy-up of one node. It is held for the
//!   whole data copy, so it is taken before any directory lock, never under
//!   one. Copy locks nest only from a node to its ancestors (a copy-up
//!   copies missing parents first).
//! * A **directory lock** of a directory node: readers resolve names and
//!   list the directory, writers change its entries. A thread holds at most
//!   one directory lock, except a rename, which write-locks two directories
//!   in inode order ([`lock_two`]). A read of an object's top layer through
//!   its parent (`Overlay::with_top`) may take the parent's read lock again
//!   while holding it (`read_recursive`), but no other directory's.
//!
//! * A **state lock** ([`StateLock`], `Node::state`) is innermost: no other
//!   node lock, and no second state lock, is taken while one is held.
//! * A **map lock** ([`MapLock`], one shard of the inode table's maps) is
//!   taken under node locks, one at a time, and never under a state lock;
//!   state locks may be taken under it (the name map compares and hashes
//!   names by the nodes' locations).
//!
//! Debug builds check the rules above on every acquisition (a per-thread
//! list of held locks) and panic on a violation; release builds carry no
//! bookkeeping.

use std::ops::{Deref, DerefMut};

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Serialises copy-up of one node.
#[derive(Debug, Default)]
pub(crate) struct CopyLock(Mutex<()>);

/// A directory node's entry lock.
#[derive(Debug, Default)]
pub(crate) struct DirLock(RwLock<()>);

/// A held copy lock.
pub(crate) struct CopyGuard<'a> {
    _g: MutexGuard<'a, ()>,
    _t: track::Token,
}

/// A held directory read lock.
pub(crate) struct DirRead<'a> {
    _g: RwLockReadGuard<'a, ()>,
    _t: track::Token,
}

/// A held directory write lock.
pub(crate) struct DirWrite<'a> {
    _g: RwLockWriteGuard<'a, ()>,
    _t: track::Token,
}

impl CopyLock {
    /// Lock for the copy-up of node `ino`.
    pub(crate) fn lock(&self, ino: u64) -> CopyGuard<'_> {
        let t = track::acquire(ino, track::Kind::Copy);
        CopyGuard {
            _g: self.0.lock(),
            _t: t,
        }
    }
}

impl DirLock {
    /// Read-lock directory `ino` (no other directory lock may be held).
    pub(crate) fn read(&self, ino: u64) -> DirRead<'_> {
        let t = track::acquire(ino, track::Kind::Read);
        DirRead {
            _g: self.0.read(),
            _t: t,
        }
    }

    /// Read-lock directory `ino`, also when this thread holds its read
    /// lock already.
    pub(crate) fn read_recursive(&self, ino: u64) -> DirRead<'_> {
        let t = track::acquire(ino, track::Kind::ReadAgain);
        DirRead {
            _g: self.0.read_recursive(),
            _t: t,
        }
    }

    /// Write-lock directory `ino` (no other directory lock may be held).
    pub(crate) fn write(&self, ino: u64) -> DirWrite<'_> {
        let t = track::acquire(ino, track::Kind::Write);
        DirWrite {
            _g: self.0.write(),
            _t: t,
        }
    }

    fn write_second(&self, ino: u64) -> DirWrite<'_> {
        let t = track::acquire(ino, track::Kind::WriteSecond);
        DirWrite {
            _g: self.0.write(),
            _t: t,
        }
    }
}

/// A node's state lock: innermost.
#[derive(Debug, Default)]
pub(crate) struct StateLock<T>(RwLock<T>);

/// A held state (or map shard) read lock.
pub(crate) struct StateRead<'a, T> {
    g: RwLockReadGuard<'a, T>,
    _t: track::Token,
}

/// A held state (or map shard) write lock.
pub(crate) struct StateWrite<'a, T> {
    g: RwLockWriteGuard<'a, T>,
    _t: track::Token,
}

impl<T> StateLock<T> {
    pub(crate) fn new(v: T) -> StateLock<T> {
        StateLock(RwLock::new(v))
    }

    /// The state, from a lock nobody else holds.
    pub(crate) fn into_inner(self) -> T {
        self.0.into_inner()
    }

    /// Read the state (no other state lock may be held).
    pub(crate) fn read(&self) -> StateRead<'_, T> {
        read_as(&self.0, track::Kind::State)
    }

    /// Change the state (no other state lock may be held).
    pub(crate) fn write(&self) -> StateWrite<'_, T> {
        write_as(&self.0, track::Kind::State)
    }
}

impl<T> Deref for StateRead<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<T> Deref for StateWrite<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<T> DerefMut for StateWrite<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.g
    }
}

/// One shard of a map of the inode table.
#[derive(Debug, Default)]
pub(crate) struct MapLock<T>(RwLock<T>);

impl<T> MapLock<T> {
    /// Read the shard (no state lock and no other shard may be held).
    pub(crate) fn read(&self) -> StateRead<'_, T> {
        read_as(&self.0, track::Kind::Map)
    }

    /// Change the shard (no state lock and no other shard may be held).
    pub(crate) fn write(&self) -> StateWrite<'_, T> {
        write_as(&self.0, track::Kind::Map)
    }
}

fn read_as<T>(l: &RwLock<T>, kind: track::Kind) -> StateRead<'_, T> {
    let t = track::acquire(0, kind);
    StateRead { g: l.read(), _t: t }
}

fn write_as<T>(l: &RwLock<T>, kind: track::Kind) -> StateWrite<'_, T> {
    let t = track::acquire(0, kind);
    StateWrite {
        g: l.write(),
        _t: t,
    }
}

/// Write-lock two directories (`a` with id `ia`, `b` with id `ib`) in id
/// order; one lock when they are the same directory.
pub(crate) fn lock_two<'a>(
    a: &'a DirLock,
    ia: u64,
    b: &'a DirLock,
    ib: u64,
) -> (DirWrite<'a>, Option<DirWrite<'a>>) {
    if ia == ib {
        (a.write(ia), None)
    } else if ia < ib {
        let first = a.write(ia);
        (first, Some(b.write_second(ib)))
    } else {
        let first = b.write(ib);
        (a.write_second(ia), Some(first))
    }
}

#[cfg(debug_assertions)]
mod track {
    use std::cell::RefCell;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Kind {
        Copy,
        Read,
        ReadAgain,
        Write,
        WriteSecond,
        State,
        Map,
    }

    thread_local! {
        static HELD: RefCell<Vec<(u64, Kind)>> = const { RefCell::new(Vec::new()) };
    }

    /// Removes its entry from the held list when dropped.
    pub(super) struct Token(u64, Kind);

    impl Drop for Token {
        fn drop(&mut self) {
            HELD.with(|h| {
                let mut h = h.borrow_mut();
                if let Some(i) = h.iter().rposition(|e| *e == (self.0, self.1)) {
                    h.remove(i);
                }
            });
        }
    }

    fn is_dir(k: Kind) -> bool {
        !matches!(k, Kind::Copy | Kind::State | Kind::Map)
    }

    pub(super) fn acquire(ino: u64, kind: Kind) -> Token {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            assert!(
                !h.iter().any(|e| e.1 == Kind::State),
                "lock order: {kind:?} lock of {ino} taken under a node state lock"
            );
            assert!(
                kind == Kind::State || !h.iter().any(|e| e.1 == Kind::Map),
                "lock order: {kind:?} lock of {ino} taken under a map shard"
            );
            // Checked without allocating: lock-free paths stay so in tests.
            let mut dirs = h.iter().copied().filter(|e| is_dir(e.1));
            let ok = match kind {
                Kind::Copy | Kind::Read | Kind::Write => dirs.next().is_none(),
                Kind::ReadAgain => {
                    dirs.all(|(i, k)| i == ino && matches!(k, Kind::Read | Kind::ReadAgain))
                }
                Kind::WriteSecond => {
                    matches!((dirs.next(), dirs.next()), (Some((first, Kind::Write)), None) if first < ino)
                }
                Kind::State | Kind::Map => true,
            };
            if !ok {
                let held: Vec<(u64, Kind)> = h.iter().copied().filter(|e| is_dir(e.1)).collect();
                match kind {
                    Kind::Copy => {
                        panic!("lock order: copy lock of {ino} taken under directory lock(s) {held:?}")
                    }
                    Kind::ReadAgain => panic!(
                        "lock order: directory {ino} read through a child under directory lock(s) {held:?}"
                    ),
                    Kind::WriteSecond => {
                        panic!("lock order: second directory {ino} locked under {held:?}")
                    }
                    _ => panic!(
                        "lock order: directory {ino} locked ({kind:?}) under directory lock(s) {held:?}"
                    ),
                }
            }
            h.push((ino, kind));
        });
        Token(ino, kind)
    }
}

#[cfg(not(debug_assertions))]
mod track {
    #[derive(Debug, Clone, Copy)]
    pub(super) enum Kind {
        Copy,
        Read,
        ReadAgain,
        Write,
        WriteSecond,
        State,
        Map,
    }

    pub(super) struct Token;

    #[inline(always)]
    pub(super) fn acquire(_ino: u64, _kind: Kind) -> Token {
        Token
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn allowed_orders() {
        let (a, b) = (DirLock::default(), DirLock::default());
        let (c, parent) = (CopyLock::default(), CopyLock::default());
        {
            let _c = c.lock(5);
            let _p = parent.lock(4); // an ancestor's copy lock under a child's
            let _w = a.write(1);
        }
        {
            let _r = a.read(1);
            let _again = a.read_recursive(1);
        }
        {
            let _pair = lock_two(&a, 9, &b, 3);
        }
        {
            let _one = lock_two(&a, 3, &a, 3);
        }
        let _free = b.read_recursive(2);
    }

    #[test]
    #[should_panic(expected = "copy lock of 7 taken under directory lock")]
    fn copy_under_directory_lock_panics() {
        let (d, c) = (DirLock::default(), CopyLock::default());
        let _w = d.write(1);
        let _c = c.lock(7);
    }

    #[test]
    #[should_panic(expected = "read through a child")]
    fn reading_another_directory_under_a_write_lock_panics() {
        let (a, b) = (DirLock::default(), DirLock::default());
        let _w = a.write(1);
        let _r = b.read_recursive(2);
    }

    #[test]
    #[should_panic(expected = "State lock of 0 taken under a node state lock")]
    fn a_state_lock_under_a_state_lock_panics() {
        // What a re-entrant write of the same node would deadlock on.
        let s = StateLock::new(1u8);
        let _r = s.read();
        let _w = s.write();
    }

    #[test]
    #[should_panic(expected = "Read lock of 4 taken under a node state lock")]
    fn a_directory_lock_under_a_state_lock_panics() {
        let (s, d) = (StateLock::new(1u8), DirLock::default());
        let _r = s.read();
        let _d = d.read(4);
    }

    #[test]
    #[should_panic(expected = "Map lock of 0 taken under a node state lock")]
    fn a_map_shard_under_a_state_lock_panics() {
        // A shard's rehash reads the states of its nodes.
        let (s, m) = (StateLock::new(1u8), MapLock::<u8>::default());
        let _r = s.read();
        let _m = m.write();
    }

    #[test]
    fn state_locks_under_a_map_shard_are_allowed() {
        let (s, m) = (StateLock::new(1u8), MapLock::<u8>::default());
        let _m = m.read();
        let _r = s.read();
    }

    #[test]
    #[should_panic(expected = "Map lock of 0 taken under a map shard")]
    fn two_map_shards_panic() {
        let (a, b) = (MapLock::<u8>::default(), MapLock::<u8>::default());
        let _a = a.read();
        let _b = b.write();
    }

    #[test]
    #[should_panic(expected = "locked (Write) under")]
    fn two_directories_outside_lock_two_panics() {
        let (a, b) = (DirLock::default(), DirLock::default());
        let _w = a.write(1);
        let _w2 = b.write(2);
    }
}
