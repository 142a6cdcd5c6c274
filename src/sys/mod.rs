//! Access to the operating system, below every overlay rule.
//!
//! `raw` is the only module of the crate with `unsafe` code (calls that
//! have no safe wrapper in `rustix`: fork, signal masks, stdio
//! redirection, heap trimming, file handles, `fchmodat2`, `getxattrat`,
//! `listxattrat`). The others are safe helpers over `rustix`
//! for objects held as `O_PATH` descriptors: opening beneath a directory
//! without following symlinks, reopening for I/O, attributes, xattrs and
//! removing trees.
pub(crate) mod fd;
pub(crate) mod raw;
pub(crate) mod tree;
pub(crate) mod xattr;
