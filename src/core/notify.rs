//! Telling the kernel to drop what it cached.
//!
//! The overlay decides what the kernel must forget (a name whose target
//! changed behind the kernel's back, attributes that changed with a
//! copy-up); the FUSE adapter implements [`KernelCache`] to send it. The
//! notifications go through a channel to one background thread: they must
//! never be sent from the thread serving a related request, which the
//! kernel may be waiting on.

/// What the kernel can be told to drop.
pub(crate) trait KernelCache: Send + 'static {
    /// The dentry (`parent`, `name`).
    fn drop_entry(&self, parent: u64, name: &[u8]);
    /// The attributes (and page cache) of inode `ino`.
    fn drop_attrs(&self, ino: u64);
}

/// Work for the background thread.
#[derive(Debug)]
pub(crate) enum Invalidate {
    /// Drop the attributes of an inode.
    Attr(u64),
    /// Many nodes were freed: give memory back once the forgets settle.
    Trim,
    /// Many new directories: count descriptors, drop old directories from
    /// the kernel cache if over budget (see `fdbudget`).
    FdCheck,
}
