//! Telling the kernel to drop what it cached.
//!
//! The overlay decides what the kernel must forget (a name whose target
//! changed behind the kernel's back, attributes that changed with a
//! copy-up); the FUSE adapter implements [`KernelCache`] to send it.
//!
//! Dropping a name makes the kernel lock the parent directory, which the
//! request being served may hold: those go through a channel to one
//! background thread, never from a request's own thread. Dropping only
//! attributes takes no lock a request holds (no page cache is touched), so
//! it is sent at once, before the reply of the request that changed them:
//! the next `stat` sees the change.

/// What the kernel can be told to drop.
pub(crate) trait KernelCache: Send + Sync + std::fmt::Debug + 'static {
    /// The dentry (`parent`, `name`).
    fn drop_entry(&self, parent: u64, name: &[u8]);
    /// The attributes of inode `ino` (not its page cache).
    fn drop_attrs(&self, ino: u64);
}

/// Work for the background thread.
#[derive(Debug)]
pub(crate) enum Invalidate {
    /// Drop the attributes of an inode (sent at once, see above).
    Attr(u64),
    /// Many nodes were freed: give memory back once the forgets settle.
    Trim,
    /// Many new directories: count descriptors, drop old directories from
    /// the kernel cache if over budget (see `fdbudget`).
    FdCheck,
}
