//! FUSE passthrough (root only): the reads and writes of an open file
//! whose data is in the upper layer (or of any file of a read-only mount)
//! go from the kernel straight to that file, without a READ or WRITE
//! request.
//!
//! The kernel (6.9 and later) lets a daemon register an open file as the
//! backing file of a FUSE open (`FUSE_DEV_IOC_BACKING_OPEN`, which needs
//! `CAP_SYS_ADMIN` in the initial user namespace); every read, write,
//! splice and mmap through that open then goes to a file the kernel opens
//! on the backing file's path with the open's flags. Metadata requests
//! (GETATTR, SETATTR, FSYNC, ...) still reach the daemon.
//!
//! Only files whose data is in the upper layer are passed through on a
//! writable mount: a file read from a lower layer must switch to its copy
//! at a copy-up made through another descriptor (`Overlay::io_fd`), which
//! a backing file in the kernel would not do. A read-only mount copies
//! nothing up (`Overlay::final_data_fd`).
//!
//! The kernel keeps one I/O mode per inode while it is open: either every
//! open of it is passed through (to one backing file) or none is, and an
//! open of the other mode fails with `EIO`. So the mode is chosen per node
//! under its entry in `Passthrough::nodes`: while the daemon knows of open
//! handles of a node, a new open gets the mode and backing file of the
//! last; only with none open is it chosen afresh. The daemon learns of a
//! close (RELEASE) after the kernel has left the mode, so its view can only
//! lag into keeping a mode the kernel no longer holds, which any open may
//! then take.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use fuser::{BackingId, ReplyCreate, ReplyOpen};

/// The passthrough state of a mount that negotiated it.
#[derive(Debug, Default)]
pub(crate) struct Passthrough {
    /// Cleared when the kernel refused a backing file (then no later open
    /// is passed through).
    off: AtomicBool,
    /// Nodes with open handles: the mode of their opens.
    nodes: DashMap<u64, Slot>,
}

/// The opens of one node the daemon knows of.
#[derive(Debug)]
struct Slot {
    /// Handles not released yet.
    open: u64,
    /// Their backing file; `None`: they are not passed through.
    backing: Option<Arc<BackingId>>,
}

/// How an open is answered.
#[derive(Debug)]
pub(crate) enum Mode {
    /// Through the daemon (READ and WRITE requests).
    Daemon,
    /// Passed through to the backing file.
    Backing(Arc<BackingId>),
}

/// Something that can register a backing file: the reply to an OPEN or a
/// CREATE.
pub(crate) trait Registrar {
    /// Register `fd` as a backing file.
    fn register(&self, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<BackingId>;
}

impl Registrar for ReplyOpen {
    fn register(&self, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<BackingId> {
        self.open_backing(fd)
    }
}

impl Registrar for ReplyCreate {
    fn register(&self, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<BackingId> {
        self.open_backing(fd)
    }
}

impl Passthrough {
    /// The mode of a new open of node `ino`, counted as open until its
    /// `release`. `data`: the open file's descriptor if it holds the
    /// file's data for good (it is then registered as the backing file
    /// when the node has no other open).
    pub(crate) fn open<F: AsFd>(&self, ino: u64, data: Option<F>, r: &impl Registrar) -> Mode {
        let mut slot = self.nodes.entry(ino).or_insert(Slot {
            open: 0,
            backing: None,
        });
        if slot.open == 0 {
            slot.backing = match data {
                Some(fd) if !self.off.load(Ordering::Relaxed) => match r.register(fd.as_fd()) {
                    Ok(id) => Some(Arc::new(id)),
                    Err(e) => {
                        if !self.off.swap(true, Ordering::Relaxed) {
                            log::warn!(
                                "the kernel refused a backing file ({e}): \
                                 files are read and written through the daemon"
                            );
                        }
                        None
                    }
                },
                _ => None,
            };
        }
        slot.open += 1;
        match &slot.backing {
            Some(b) => Mode::Backing(b.clone()),
            None => Mode::Daemon,
        }
    }

    /// A handle of node `ino` was released.
    pub(crate) fn release(&self, ino: u64) {
        if let dashmap::Entry::Occupied(mut e) = self.nodes.entry(ino) {
            let slot = e.get_mut();
            slot.open = slot.open.saturating_sub(1);
            if slot.open == 0 {
                // Drops the backing file's registration (the kernel keeps
                // its own reference while it uses it).
                e.remove();
            }
        }
    }

    /// Whether opens are passed through (no backing file refused yet).
    #[cfg(test)]
    fn on(&self) -> bool {
        !self.off.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A registrar the kernel refuses (a `BackingId` is made only by
    /// fuser), counting the attempts.
    #[derive(Default)]
    struct Refused(Cell<u32>);

    impl Registrar for Refused {
        fn register(&self, _fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<BackingId> {
            self.0.set(self.0.get() + 1);
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        }
    }

    /// Some open file, standing for an upper file's descriptor.
    fn upper() -> Option<std::fs::File> {
        Some(std::fs::File::open("/dev/null").expect("/dev/null"))
    }

    #[test]
    fn an_open_while_others_are_open_keeps_their_mode() {
        let p = Passthrough::default();
        let r = Refused::default();
        // A lower file opened through the daemon...
        assert!(matches!(p.open(7, None::<std::fs::File>, &r), Mode::Daemon));
        // ...stays so for an open after its copy-up while that is open:
        // no backing file is asked for.
        assert!(matches!(p.open(7, upper(), &r), Mode::Daemon));
        assert_eq!(r.0.get(), 0);
        assert!(p.on());
        p.release(7);
        assert_eq!(p.nodes.get(&7).map(|s| s.open), Some(1));
        p.release(7);
        assert!(
            p.nodes.is_empty(),
            "a node with no open handle is forgotten"
        );
        // A release the daemon never counted changes nothing.
        p.release(7);
        assert!(p.nodes.is_empty());
    }

    #[test]
    fn a_refused_backing_file_turns_passthrough_off() {
        let p = Passthrough::default();
        let r = Refused::default();
        assert!(matches!(p.open(1, upper(), &r), Mode::Daemon));
        assert!(!p.on());
        p.release(1);
        assert!(matches!(p.open(2, upper(), &r), Mode::Daemon));
        assert_eq!(r.0.get(), 1, "no second attempt");
        p.release(2);
        assert!(p.nodes.is_empty());
    }
}
