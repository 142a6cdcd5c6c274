//! stratafs: a rootless userspace overlay filesystem on FUSE.
//!
//! It stacks read-only lower directories under one writable upper directory
//! and shows the merged view at a mount point, with the visible behaviour of
//! the kernel's overlayfs and the on-disk formats of both the kernel and
//! fuse-overlayfs. See `docs/ARCHITECTURE.md` for the design.
//!
//! The library side ([`api`]) lets a program or a test mount a stack in the
//! background, with a guard that unmounts on drop, and build throwaway layer
//! stacks from a compact description. See `docs/LIBRARY.md`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod check;
pub mod copyup;
pub mod daemon;
pub mod error;
pub mod fdbudget;
pub mod file;
pub mod fuse;
pub mod idmap;
pub mod inode;
pub mod inspect;
pub mod layer;
pub mod ops;
pub mod options;
pub mod overlay;
pub mod override_stat;
pub mod readdir;
pub mod resolve;
pub mod store;
pub mod sys;
pub mod util;
pub mod whiteout;
pub mod xattr;

use std::sync::Arc;

use error::SetupError;

/// A mount served by background threads of this process; unmounted when
/// dropped (also when a test panics).
#[derive(Debug)]
pub struct BackgroundMount {
    session: Option<fuser::BackgroundSession>,
    mountpoint: std::path::PathBuf,
}

impl BackgroundMount {
    /// Where the overlay is mounted.
    pub fn mountpoint(&self) -> &std::path::Path {
        &self.mountpoint
    }

    /// Where the overlay is mounted (short form).
    pub fn path(&self) -> &std::path::Path {
        &self.mountpoint
    }

    /// Unmount now and wait for the serving threads.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                log::warn!("unmount of {} failed: {e}", self.mountpoint.display());
            }
        }
    }
}

/// Mount the stack described by `opts` in this process, served by
/// background threads.
pub fn spawn_mount(opts: &options::MountOptions) -> Result<BackgroundMount, SetupError> {
    let overlay = daemon::build(opts)?;
    let read_only = !overlay.stack.has_upper;
    let config = daemon::fuser_config(opts, read_only);
    let overlay = Arc::new(overlay);
    let fs = fuse::FuseOverlay {
        fs: overlay.clone(),
    };
    let session = fuser::spawn_mount(fs, &opts.mountpoint, &config)
        .map_err(|e| SetupError::path("cannot mount on", &opts.mountpoint, e))?;
    overlay.start_invalidator(session.notifier());
    Ok(BackgroundMount {
        session: Some(session),
        mountpoint: opts.mountpoint.clone(),
    })
}
