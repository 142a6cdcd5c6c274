//! Layer stacks for the tests: descriptions are `stratafs::api`
//! [`TempStackBuilder`]s of [`Layer`]s, written by the library's
//! [`TempStack`]; [`Stack`] adds the mounts the tests make on one, and
//! [`Pair`] mounts one description twice, with stratafs and with the kernel
//! overlay.

use std::fmt;
use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use stratafs::api::{Layer, Markers, TempStack, TempStackBuilder};

use super::mounts::{mount_kernel_with, overlay_opts, try_mount_stratafs, Mount};
use super::snapshot::{diff_snapshots, fmt_snapshot, kind_of, snapshot_upper, snapshot_view};
use super::snapshot::{normalise_rootless_pair, normalise_upper};
use super::snapshot::{CmpOpts, Kind, Snapshot};

/// Lower layers (top first) under an upper layer with `upper`'s contents.
pub fn stack(lowers: Vec<Layer>, upper: Layer) -> TempStackBuilder {
    TempStackBuilder::new().lowers(lowers).upper(upper)
}

/// Lower layers (top first) without upper and work directory.
pub fn read_only_stack(lowers: Vec<Layer>) -> TempStackBuilder {
    TempStackBuilder::new().lowers(lowers).read_only()
}

/// Writes a description as a [`Stack`].
pub trait BuildStack {
    /// A new stack in a temporary directory, markers written as `markers`
    /// says (whatever the description itself says).
    fn build(&self, markers: Markers) -> Stack;
}

impl BuildStack for TempStackBuilder {
    fn build(&self, markers: Markers) -> Stack {
        let temp = self
            .clone()
            .markers(markers)
            .create()
            .unwrap_or_else(|e| panic!("create the stack: {e}"));
        Stack {
            mnt: temp.mountpoint(),
            temp,
        }
    }
}

/// A [`TempStack`] (`lower0..N`, `upper`, `work`, mount point `merged`;
/// removed when dropped, so drop its mounts first) with the tests' mount
/// and path helpers. Derefs to the [`TempStack`].
pub struct Stack {
    /// The mount point.
    pub mnt: PathBuf,
    temp: TempStack,
}

impl Deref for Stack {
    type Target = TempStack;

    fn deref(&self) -> &TempStack {
        &self.temp
    }
}

impl Stack {
    /// The upper directory; panics for a read-only stack.
    pub fn upper(&self) -> &Path {
        self.temp.upper_dir().expect("stack has an upper layer")
    }

    /// The work directory; panics for a read-only stack.
    pub fn work(&self) -> &Path {
        self.temp.work_dir().expect("stack has a work dir")
    }

    /// The `-o` value that mounts this stack.
    pub fn overlay_opts(&self) -> String {
        overlay_opts(self.lowers(), self.temp.upper_dir(), self.temp.work_dir())
    }

    /// Mounts stratafs (the binary under test) on [`Stack::mnt`].
    pub fn mount_strata(&self) -> Mount {
        self.try_mount_strata().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `mount_strata` with more `-o` options (`extra`, comma-separated).
    pub fn mount_strata_with(&self, extra: &str) -> Mount {
        let opts = format!("{},{extra}", self.overlay_opts());
        try_mount_stratafs(&opts, &self.mnt).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `mount_strata`, with the error (and the daemon's stderr) when the
    /// mount does not go live.
    pub fn try_mount_strata(&self) -> Result<Mount, String> {
        try_mount_stratafs(&self.overlay_opts(), &self.mnt)
    }

    /// Mounts the kernel overlay on [`Stack::mnt`].
    pub fn mount_kernel(&self) -> Mount {
        self.mount_kernel_with("")
    }

    /// `mount_kernel` with `extra` options.
    pub fn mount_kernel_with(&self, extra: &str) -> Mount {
        mount_kernel_with(
            self.lowers(),
            self.temp.upper_dir(),
            self.temp.work_dir(),
            &self.mnt,
            extra,
        )
    }

    /// Path inside the mountpoint.
    pub fn m(&self, rel: &str) -> PathBuf {
        join_rel(&self.mnt, rel)
    }

    /// Path inside the upper layer.
    pub fn u(&self, rel: &str) -> PathBuf {
        join_rel(self.upper(), rel)
    }

    /// Path inside lower layer `i`.
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        join_rel(&self.lowers()[i], rel)
    }

    /// Entries stratafs left in `W/work/` other than whiteout templates
    /// (character devices), which may stay (missing dir = none).
    pub fn work_leftovers(&self) -> Vec<(String, Kind)> {
        let wd = self.work().join("work");
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(&wd) {
            for e in rd.flatten() {
                let kind = e.metadata().map(|m| kind_of(&m)).unwrap_or(Kind::Unknown);
                if kind != Kind::CharDev {
                    out.push((e.file_name().to_string_lossy().into_owned(), kind));
                }
            }
        }
        out.sort();
        out
    }
}

/// `base/rel`, `base` itself for an empty `rel`.
pub fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// The parent of a relative path (`""` for a name at the root).
pub fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// Asserts stratafs left no private files in `W/work/` except whiteout
/// templates (char 0/0).
pub fn assert_work_clean(s: &Stack) {
    let left = s.work_leftovers();
    assert!(left.is_empty(), "stratafs left files in W/work: {left:?}");
}

/// One description mounted twice: stratafs on a stack written with the
/// markers asked for (by default [`Markers::AsWritten`]: the forms the
/// description names), the kernel overlay on one written with
/// [`Markers::Kernel`]. Fields drop in declaration order: mounts before
/// their stacks.
pub struct Pair {
    pub sm: Mount,
    pub km: Mount,
    pub s: Stack,
    pub k: Stack,
}

impl Pair {
    pub fn new(desc: &TempStackBuilder) -> Pair {
        Self::with_markers(desc, Markers::AsWritten)
    }

    /// Stratafs' stack written with `markers`.
    pub fn with_markers(desc: &TempStackBuilder, markers: Markers) -> Pair {
        Self::build(desc, markers, |_| {})
    }

    /// Like [`Pair::new`], with `prepare` run on each built stack (the
    /// kernel's first, then stratafs') before either is mounted: for
    /// contents a [`Layer`] cannot describe, such as non-UTF-8 names or
    /// objects beside the layers.
    pub fn with_prepare(desc: &TempStackBuilder, prepare: impl FnMut(&Stack)) -> Pair {
        Self::build(desc, Markers::AsWritten, prepare)
    }

    fn build(desc: &TempStackBuilder, markers: Markers, prepare: impl FnMut(&Stack)) -> Pair {
        Self::build_with(desc, markers, prepare, "", "")
    }

    /// Like [`Pair::new`], both mounted with the extra options `extra`.
    pub fn with_options(desc: &TempStackBuilder, extra: &str) -> Pair {
        Self::build_with(desc, Markers::AsWritten, |_| {}, extra, extra)
    }

    /// Like [`Pair::new`], stratafs mounted with the extra options `extra`
    /// (its own: the kernel overlay has no such options).
    pub fn with_strata_options(desc: &TempStackBuilder, extra: &str) -> Pair {
        Self::build_with(desc, Markers::AsWritten, |_| {}, "", extra)
    }

    fn build_with(
        desc: &TempStackBuilder,
        markers: Markers,
        mut prepare: impl FnMut(&Stack),
        kernel_extra: &str,
        strata_extra: &str,
    ) -> Pair {
        let k = desc.build(Markers::Kernel);
        let s = desc.build(markers);
        prepare(&k);
        prepare(&s);
        let km = k.mount_kernel_with(kernel_extra);
        let sm = if strata_extra.is_empty() {
            s.mount_strata()
        } else {
            s.mount_strata_with(strata_extra)
        };
        Pair { sm, km, s, k }
    }

    /// Runs `f` with the stratafs mountpoint and then the kernel one.
    pub fn both<T>(&self, mut f: impl FnMut(&Path) -> T) -> (T, T) {
        let a = f(&self.s.mnt);
        let b = f(&self.k.mnt);
        (a, b)
    }

    /// Runs `f` on both mounts and asserts equal results; returns stratafs'.
    pub fn same<T: PartialEq + fmt::Debug>(&self, what: &str, f: impl FnMut(&Path) -> T) -> T {
        let (a, b) = self.both(f);
        assert_eq!(
            a, b,
            "{what}: stratafs (left) differs from the kernel overlay (right)"
        );
        a
    }

    /// Asserts the merged views are equal (dir nlink included).
    pub fn assert_same_view(&self) {
        self.assert_same_view_opts(&CmpOpts::with_dir_nlink());
    }

    pub fn assert_same_view_opts(&self, opts: &CmpOpts) {
        let (s, k) = (snapshot_view(&self.s.mnt), snapshot_view(&self.k.mnt));
        assert_same("merged view", &s, &k, opts);
    }

    /// Asserts the normalised upper layers are equal.
    pub fn assert_same_upper(&self) {
        self.assert_same_upper_opts(&CmpOpts::with_dir_nlink());
    }

    pub fn assert_same_upper_opts(&self, opts: &CmpOpts) {
        let (mut s, mut k) = (
            snapshot_upper(self.s.upper()),
            snapshot_upper(self.k.upper()),
        );
        normalise_upper(&mut s, self.s.lowers());
        normalise_upper(&mut k, self.k.lowers());
        normalise_rootless_pair(&mut s, &k);
        assert_same("upper layer", &s, &k, opts);
    }

    /// Asserts stratafs left no private files in `W/work/` except
    /// whiteout templates (char 0/0).
    pub fn assert_work_clean(&self) {
        assert_work_clean(&self.s);
    }
}

#[track_caller]
fn assert_same(what: &str, s: &Snapshot, k: &Snapshot, opts: &CmpOpts) {
    let d = diff_snapshots(s, k, opts);
    assert!(
        d.is_empty(),
        "{what}: stratafs (left) vs kernel overlay (right):\n{}\n--- stratafs {what} ---\n{}--- kernel {what} ---\n{}",
        d.join("\n"),
        fmt_snapshot(s),
        fmt_snapshot(k)
    );
}
