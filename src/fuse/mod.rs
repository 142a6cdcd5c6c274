//! FUSE: the adapter between `fuser` requests and the overlay (`adapter`),
//! the daemon lifecycle: mount, report readiness, serve, unmount
//! (`daemon`), and passthrough of upper files' I/O to the kernel
//! (`passthrough`, root only).
pub(crate) mod adapter;
pub(crate) mod daemon;
pub(crate) mod passthrough;
