//! Counts of what the overlay did on disk and in its caches, for the
//! metrics of a mount: copy-ups (and the bytes they copied), whiteouts
//! written, lookups answered from the name map or resolved over the layers.
//! Plain relaxed atomics; a thread also counts its own copy-ups, so that
//! the request it serves can say whether it copied something up.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    static COPY_UPS_HERE: Cell<u64> = const { Cell::new(0) };
}

/// The counters of one overlay.
#[derive(Debug, Default)]
pub(crate) struct Events {
    copy_ups: AtomicU64,
    copy_up_bytes: AtomicU64,
    whiteouts: AtomicU64,
    name_hits: AtomicU64,
    name_misses: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EventCounts {
    /// Objects copied up (directories included).
    pub(crate) copy_ups: u64,
    /// Bytes of file data copied up.
    pub(crate) copy_up_bytes: u64,
    /// Whiteouts written (unlink, rmdir, rename of a lower name).
    pub(crate) whiteouts: u64,
    /// Lookups answered from the name map.
    pub(crate) name_hits: u64,
    /// Lookups resolved over the layers.
    pub(crate) name_misses: u64,
}

impl Events {
    /// An object was copied up, with `bytes` of data.
    pub(crate) fn copied_up(&self, bytes: u64) {
        self.copy_ups.fetch_add(1, Ordering::Relaxed);
        self.copy_up_bytes.fetch_add(bytes, Ordering::Relaxed);
        COPY_UPS_HERE.with(|c| c.set(c.get() + 1));
    }

    /// A whiteout was written.
    pub(crate) fn whiteout(&self) {
        self.whiteouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A lookup was answered from the name map (`hit`) or resolved.
    pub(crate) fn lookup(&self, hit: bool) {
        let c = if hit {
            &self.name_hits
        } else {
            &self.name_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub(crate) fn counts(&self) -> EventCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EventCounts {
            copy_ups: get(&self.copy_ups),
            copy_up_bytes: get(&self.copy_up_bytes),
            whiteouts: get(&self.whiteouts),
            name_hits: get(&self.name_hits),
            name_misses: get(&self.name_misses),
        }
    }
}

/// Copy-ups done by the calling thread so far (compare two readings to
/// know whether a request copied something up).
pub(crate) fn copy_ups_by_this_thread() -> u64 {
    COPY_UPS_HERE.with(Cell::get)
}
