//! The overlay itself: nodes, name resolution, listings, copy-up and every
//! filesystem operation, in terms of the layers and plain results
//! (`Result<T, Errno>`). Nothing here knows FUSE: the adapter in `fuse`
//! decodes requests into these calls and implements [`notify::KernelCache`]
//! for what the overlay needs to tell the kernel.
//!
//! Modules, bottom up: `names`, `dirindex`, `obj` (how layer objects are
//! held), `resolve` and `listing` (pure functions over layer directories),
//! `fdbudget` (descriptor budget decisions), `events` (counters for metrics), `locks` (lock order), `node`,
//! `inodes` (the inode table and lookup references), `handles`, `notify`,
//! `overlay` (the shared state), `metacopy` (where a metadata copy's data is),
//! then the operations: `copyup`, `lookup`,
//! `namespace`, `io`, `attrs`, and `background`.
pub(crate) mod attrs;
pub(crate) mod background;
pub(crate) mod copyup;
pub(crate) mod dirindex;
pub(crate) mod events;
pub(crate) mod fdbudget;
pub(crate) mod handles;
pub(crate) mod index;
pub(crate) mod inodes;
pub(crate) mod io;
pub(crate) mod listing;
pub(crate) mod locks;
pub(crate) mod lookup;
pub(crate) mod metacopy;
pub(crate) mod names;
pub(crate) mod namespace;
pub(crate) mod node;
pub(crate) mod notify;
pub(crate) mod obj;
pub(crate) mod origin;
pub(crate) mod overlay;
pub(crate) mod resolve;

#[cfg(test)]
mod tests;
