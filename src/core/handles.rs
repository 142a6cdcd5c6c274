//! Open files and directories: the table behind FUSE file handles.
//!
//! A file opened on a lower layer keeps reading the lower copy until the
//! file is copied up through another handle; the next I/O then switches to
//! the upper copy (`Overlay::io_fd`), so readers always see the latest data.
//! A directory handle holds the listing snapshot it serves.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use rustix::fs::OFlags;

use super::listing::DirEntry;
use super::node::Node;
use crate::error::{Errno, Result};

/// An open regular file (or other non-directory).
#[derive(Debug)]
pub(crate) struct OpenFile {
    /// The node.
    pub(crate) node: Arc<Node>,
    /// The descriptor I/O goes to; replaced once when the node gets an
    /// upper copy. Taken before any directory lock.
    pub(crate) fd: RwLock<Arc<OwnedFd>>,
    /// Whether `fd` is the upper copy.
    pub(crate) on_upper: AtomicBool,
    /// The open flags (without `O_TRUNC`), for reopening the upper copy.
    pub(crate) flags: OFlags,
    /// The privilege epoch (`HandleTable::privilege_epoch`) at which the
    /// file was last seen without setuid, setgid-with-group-execute and
    /// file capabilities; 0: not seen yet. While the epoch stays, writes
    /// need not look again.
    pub(crate) unprivileged_at: AtomicU64,
}

/// An open directory: its listing snapshot, taken at the first read from
/// offset 0 (or at the first read at all). Its lock is taken before the
/// directory's read lock.
#[derive(Debug)]
pub(crate) struct OpenDir {
    /// The node.
    pub(crate) node: Arc<Node>,
    /// The snapshot.
    pub(crate) entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

/// All open handles.
#[derive(Debug, Default)]
pub(crate) struct HandleTable {
    files: DashMap<u64, Arc<OpenFile>>,
    dirs: DashMap<u64, Arc<OpenDir>>,
    next: AtomicU64,
    /// Counts the changes that may have given some file setuid, setgid or
    /// a capability (chmod, chown, setxattr): one for all files, changes
    /// are rare next to writes.
    privileges: AtomicU64,
}

impl HandleTable {
    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The current privilege epoch (never 0).
    pub(crate) fn privilege_epoch(&self) -> u64 {
        self.privileges.load(Ordering::Acquire) + 1
    }

    /// Some file may have gained setuid, setgid or a capability: open
    /// files are to look again at their next write.
    pub(crate) fn privileges_may_have_changed(&self) {
        self.privileges.fetch_add(1, Ordering::AcqRel);
    }

    /// Register an open file; returns its handle.
    pub(crate) fn add_file(
        &self,
        node: Arc<Node>,
        fd: OwnedFd,
        flags: OFlags,
        on_upper: bool,
    ) -> u64 {
        let id = self.id();
        let f = OpenFile {
            node,
            fd: RwLock::new(Arc::new(fd)),
            on_upper: AtomicBool::new(on_upper),
            flags: flags & !OFlags::TRUNC,
            unprivileged_at: AtomicU64::new(0),
        };
        self.files.insert(id, Arc::new(f));
        id
    }

    /// The open file `fh`.
    pub(crate) fn file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        self.files.get(&fh).map(|f| f.clone()).ok_or(Errno::BADF)
    }

    /// Close the file handle `fh`.
    pub(crate) fn remove_file(&self, fh: u64) {
        self.files.remove(&fh);
    }

    /// Register an open directory; returns its handle.
    pub(crate) fn add_dir(&self, node: Arc<Node>) -> u64 {
        let id = self.id();
        let d = OpenDir {
            node,
            entries: Mutex::new(None),
        };
        self.dirs.insert(id, Arc::new(d));
        id
    }

    /// The open directory `fh`.
    pub(crate) fn dir(&self, fh: u64) -> Result<Arc<OpenDir>> {
        self.dirs.get(&fh).map(|d| d.clone()).ok_or(Errno::BADF)
    }

    /// Close the directory handle `fh`.
    pub(crate) fn remove_dir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}
