//! FUSE: the adapter between `fuser` requests and the overlay (`adapter`),
//! and the daemon lifecycle: mount, report readiness, serve, unmount
//! (`daemon`).
pub(crate) mod adapter;
pub(crate) mod daemon;
