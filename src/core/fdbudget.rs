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
//!
//! The decisions are functions over plain numbers; the overlay feeds them.

use std::sync::OnceLock;
use std::time::Instant;

use super::names::Name;

/// Default budget ceiling.
const DEFAULT_MAX: usize = 65536;

/// Milliseconds since the daemon started (wrapping): the age clock of
/// directory nodes.
pub(crate) fn now_ms() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u32
}

/// Number of descriptors this process has open.
pub(crate) fn open_fds() -> usize {
    // The size of /proc/self/fd is the number of open descriptors (Linux
    // 6.2 and later); count the entries where it is not.
    match rustix::fs::stat("/proc/self/fd") {
        Ok(st) if st.st_size > 0 => st.st_size as usize,
        _ => std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
    }
}

/// The budget: `configured` if set, else three quarters of the open-file
/// limit `nofile` (at least 64, at most `DEFAULT_MAX`).
pub(crate) fn budget(configured: usize, nofile: u64) -> usize {
    if configured > 0 {
        return configured;
    }
    (nofile / 4 * 3).clamp(64, DEFAULT_MAX as u64) as usize
}

/// The current soft limit of open files.
pub(crate) fn nofile_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// How many new directory nodes to wait between two counts.
pub(crate) fn check_every(budget: usize) -> u64 {
    (budget as u64 / 16).clamp(8, 1024)
}

/// A live directory, as the budget sees it.
#[derive(Debug, Clone)]
pub(crate) struct DirUse {
    /// Where the kernel knows it: parent and name.
    pub(crate) parent: u64,
    /// See `parent`.
    pub(crate) name: Name,
    /// `now_ms` of its last use.
    pub(crate) used: u32,
    /// Descriptors it holds.
    pub(crate) fds: usize,
}

/// The directories to drop from the kernel cache (oldest use first) when
/// `open` descriptors are at three quarters of `budget` or more, until
/// about half the budget would be left; none otherwise.
pub(crate) fn to_drop(budget: usize, open: usize, now: u32, mut dirs: Vec<DirUse>) -> Vec<DirUse> {
    if open * 4 < budget * 3 {
        return Vec::new();
    }
    let mut need = open.saturating_sub(budget / 2);
    dirs.sort_by_key(|d| std::cmp::Reverse(now.wrapping_sub(d.used)));
    let mut out = Vec::new();
    for d in dirs {
        if need == 0 {
            break;
        }
        need = need.saturating_sub(d.fds);
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str, used: u32, fds: usize) -> DirUse {
        DirUse {
            parent: 1,
            name: Name::from(name.as_bytes()),
            used,
            fds,
        }
    }

    #[test]
    fn budget_from_limit() {
        assert_eq!(budget(500, 1 << 20), 500);
        assert_eq!(budget(0, 1024), 768);
        assert_eq!(budget(0, 10), 64);
        assert_eq!(budget(0, u64::MAX), DEFAULT_MAX);
        assert_eq!(check_every(100), 8);
        assert_eq!(check_every(65536), 1024);
    }

    #[test]
    fn nothing_dropped_below_three_quarters() {
        let dirs = vec![dir("a", 0, 10)];
        assert!(to_drop(100, 74, 1000, dirs.clone()).is_empty());
        assert_eq!(to_drop(100, 75, 1000, dirs).len(), 1);
    }

    #[test]
    fn oldest_first_until_half_is_left() {
        let now = 5;
        // "old" was used before the clock wrapped: it is the oldest.
        let dirs = vec![
            dir("new", 4, 10),
            dir("old", u32::MAX - 10, 10),
            dir("mid", 1, 10),
        ];
        let got: Vec<String> = to_drop(100, 80, now, dirs)
            .iter()
            .map(|d| String::from_utf8_lossy(&d.name).into_owned())
            .collect();
        // 80 open, 50 wanted: 30 descriptors, three directories of 10.
        assert_eq!(got, vec!["old", "mid", "new"]);
        let got = to_drop(100, 75, now, vec![dir("a", 1, 30), dir("b", 2, 30)]);
        assert_eq!(got.len(), 1);
    }
}
