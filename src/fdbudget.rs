//! The descriptor budget.
//!
//! Every directory node holds an `O_PATH` descriptor per layer it merges,
//! for as long as the kernel remembers the directory. The kernel keeps
//! inodes as long as memory allows, so a walk over a tree with more
//! directories than the open-file limit would end in `EMFILE`. Instead, the
//! daemon counts its descriptors now and then (every few new directory
//! nodes) and, above three quarters of its budget (`max_fds=`, default 3/4 of
//! the open-file limit, at most 65536), asks the kernel to drop the least
//! recently used directories from its cache until about half the budget is
//! left. The kernel then forgets them and their descriptors are closed; a
//! later access looks them up again.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Instant;

use crate::inode::{Name, ROOT_INO};
use crate::overlay::Overlay;

/// Default budget ceiling.
const DEFAULT_MAX: usize = 65536;

/// Milliseconds since the daemon started (wrapping): the age clock of
/// directory nodes.
pub fn now_ms() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u32
}

/// Number of descriptors this process has open.
pub fn open_fds() -> usize {
    // The size of /proc/self/fd is the number of open descriptors (Linux
    // 6.2 and later); count the entries where it is not.
    match rustix::fs::stat("/proc/self/fd") {
        Ok(st) if st.st_size > 0 => st.st_size as usize,
        _ => std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
    }
}

/// The budget: `configured` if set, else three quarters of the open-file limit, at most
/// `DEFAULT_MAX`.
pub fn budget(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    (lim / 4 * 3).clamp(64, DEFAULT_MAX as u64) as usize
}

impl Overlay {
    /// The descriptor budget of this mount.
    pub fn fd_budget(&self) -> usize {
        *self.fd_budget.get_or_init(|| budget(self.config.max_fds))
    }

    /// How many new directory nodes to wait between two counts.
    pub fn fd_check_every(&self) -> u64 {
        (self.fd_budget() as u64 / 16).clamp(8, 1024)
    }

    /// The directories the kernel should drop from its cache now (oldest
    /// first), or none while the descriptors are within budget.
    pub fn dirs_to_drop(&self) -> Vec<(u64, Name)> {
        let budget = self.fd_budget();
        let open = open_fds();
        if open * 4 < budget * 3 {
            return Vec::new();
        }
        let mut need = open.saturating_sub(budget / 2);
        let now = now_ms();
        let mut dirs = self.inodes.dir_nodes();
        dirs.retain(|n| n.ino != ROOT_INO);
        // Oldest use first.
        dirs.sort_by_key(|n| std::cmp::Reverse(now.wrapping_sub(n.used.load(Ordering::Relaxed))));
        let mut out = Vec::new();
        for n in dirs {
            if need == 0 {
                break;
            }
            let st = n.state.read();
            if st.detached {
                continue;
            }
            need = need.saturating_sub(st.lowers.len() + usize::from(st.upper.is_some()));
            out.push((st.parent, st.name.clone()));
        }
        log::debug!(
            "{open} descriptors open (budget {budget}): dropping {} directories from the kernel cache",
            out.len()
        );
        out
    }
}
