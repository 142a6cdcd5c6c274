//! stratafs: a rootless userspace overlay filesystem on FUSE.
//!
//! It stacks read-only lower directories under one writable upper directory
//! and shows the merged view at a mount point, with the visible behaviour of
//! the kernel's overlayfs and the on-disk formats of both the kernel and
//! fuse-overlayfs. See `docs/ARCHITECTURE.md` for the design.
//!
//! The public surface is small: [`api`] mounts a stack inside a program or
//! test (with a guard that unmounts on drop) and builds throwaway layer
//! stacks; [`check`] checks and repairs an upper directory offline;
//! [`cli::main`] is the `stratafs` command.
//!
//! Inside, the layers of the design, each importing only those below it:
//! `cli` and `api`; `fuse` (adapter and daemon) and `tools` (check,
//! inspect); `harness` (faults, trace, metrics, listing orders, control
//! socket); `core` (the overlay); `setup` (options, layer stack, stores);
//! `format` (on-disk rules); `sys` and `error`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod cli;
mod core;
mod error;
mod format;
mod fuse;
mod harness;
mod setup;
mod sys;
mod tools;

/// Offline checking and repair of an upper and work directory (the
/// library form of `stratafs check`).
pub mod check {
    pub use crate::tools::check::{
        check, Area, CheckOptions, Finding, Kind, Outcome, Report, Severity,
    };
}
