//! The library API: mount a layer stack from a Rust program or test, and
//! build throwaway stacks in temporary directories.
//!
//! ```
//! use stratafs::api::{Layer, TempStack};
//!
//! // Two lower layers (top first) and an empty upper, in a temporary directory.
//! let stack = TempStack::new(&[
//!     Layer::new().file("etc/motd", "hello\n").whiteout("etc/old"),
//!     Layer::new().file("etc/motd", "base\n").file("etc/old", "x").dir("var/empty"),
//! ])?;
//! let mount = stack.mount()?; // unmounted when `mount` is dropped
//! let m = mount.path();
//! assert_eq!(std::fs::read_to_string(m.join("etc/motd"))?, "hello\n");
//! assert!(!m.join("etc/old").exists()); // hidden by the whiteout
//! std::fs::write(m.join("etc/new"), "written")?;
//! drop(mount);
//! assert_eq!(std::fs::read_to_string(stack.upper().join("etc/new"))?, "written");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A mount is also a test harness: fault rules, a trace of the requests,
//! metrics, and listing orders (see docs/HARNESS.md):
//!
//! ```
//! use stratafs::api::{op, Errno, Layer, TempStack};
//!
//! let stack = TempStack::new(&[Layer::new().dir("db")])?;
//! let mount = stack.builder().record_trace().mount(stack.mountpoint())?;
//! // The third write to db/wal fails with ENOSPC.
//! mount.fail(op::Write, "db/wal", Errno::NOSPC).nth(3);
//! let mut wal = std::fs::File::create(mount.path().join("db/wal"))?;
//! use std::io::Write;
//! wal.write_all(b"one")?;
//! wal.write_all(b"two")?;
//! let err = wal.write_all(b"three").unwrap_err();
//! assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
//! let writes = mount.trace().into_iter().filter(|r| r.op == op::Write).count();
//! assert_eq!(writes, 3);
//! assert_eq!(mount.stats().requests["write"], 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Any directories can be mounted the same way:
//!
//! ```no_run
//! use stratafs::api::OverlayBuilder;
//!
//! let mount = OverlayBuilder::new()
//!     .lower("/srv/layers/app")
//!     .lower("/srv/layers/base")
//!     .upper("/srv/c1/upper")
//!     .work("/srv/c1/work")
//!     .option("uidmapping=0:100000:65536")
//!     .mount("/srv/c1/merged")?;
//! // ... run a build in /srv/c1/merged ...
//! mount.unmount()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

mod faults;

pub use crate::error::SetupError;
use crate::fuse::daemon::spawn_mount;
pub use crate::fuse::daemon::BackgroundMount;
pub use crate::harness::metrics::{prometheus, Latency, Stats};
pub use crate::harness::ops::{Op, Ops};
pub use crate::harness::rules::{Rule, RuleSpec, Source};
pub use crate::harness::trace::TraceRecord;
pub use crate::harness::RuleStatus;
pub use crate::setup::options::escape_path;
use crate::setup::options::parse_mount_args;
pub use faults::{LiveRule, ReaddirOrder};
/// An errno value (`Errno::NOSPC`, `Errno::from_raw_os_error(28)`): the
/// error type of every filesystem operation.
pub use rustix::io::Errno;

/// The operations by name, for rules: `op::Write`, `op::Fsync`, ...
pub mod op {
    pub use crate::harness::ops::Op::*;
}

/// Describes a stack to mount: lower directories (top first), an optional
/// upper and work directory, and extra `-o` options.
#[derive(Debug, Clone, Default)]
pub struct OverlayBuilder {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    options: Vec<String>,
    rules: Vec<Rule>,
    record_trace: bool,
}

impl OverlayBuilder {
    /// An empty description.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a lower directory below the ones added before.
    pub fn lower(mut self, dir: impl AsRef<Path>) -> Self {
        self.lowers.push(dir.as_ref().to_path_buf());
        self
    }

    /// The writable upper directory (without one the mount is read-only).
    pub fn upper(mut self, dir: impl AsRef<Path>) -> Self {
        self.upper = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The work directory, on the upper's filesystem.
    pub fn work(mut self, dir: impl AsRef<Path>) -> Self {
        self.work = Some(dir.as_ref().to_path_buf());
        self
    }

    /// An extra mount option, as given to `-o` (e.g. `uidmapping=0:1000:1`).
    pub fn option(mut self, opt: impl Into<String>) -> Self {
        self.options.push(opt.into());
        self
    }

    /// The `-o` argument this description stands for.
    pub fn options_string(&self) -> String {
        let lowers: Vec<String> = self.lowers.iter().map(|p| escape_path(p)).collect();
        let mut o = format!("lowerdir={}", lowers.join(":"));
        if let Some(u) = &self.upper {
            o.push_str(&format!(",upperdir={}", escape_path(u)));
        }
        if let Some(w) = &self.work {
            o.push_str(&format!(",workdir={}", escape_path(w)));
        }
        for extra in &self.options {
            o.push(',');
            o.push_str(extra);
        }
        o
    }

    /// A fault rule in force from the start (see [`Rule`]).
    pub fn fault(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Fault rules from a file (TOML, `[[rule]]` tables);
    /// [`BackgroundMount::reload_faults`] reads it again.
    pub fn faults_file(self, file: impl AsRef<Path>) -> Self {
        let o = format!("faults={}", escape_path(file.as_ref()));
        self.option(o)
    }

    /// Write a trace of every request to `file` (JSON lines).
    pub fn trace_file(self, file: impl AsRef<Path>) -> Self {
        let o = format!("trace={}", escape_path(file.as_ref()));
        self.option(o)
    }

    /// Keep a trace of every request in memory from the start
    /// ([`BackgroundMount::trace`]).
    pub fn record_trace(mut self) -> Self {
        self.record_trace = true;
        self
    }

    /// The order directory listings come in.
    pub fn readdir_order(self, order: ReaddirOrder) -> Self {
        let o = format!("readdir_order={}", order.option_value());
        self.option(o)
    }

    /// Mount at `mountpoint`, served by threads of this process; the guard
    /// unmounts when dropped, also when a test panics.
    pub fn mount(&self, mountpoint: impl AsRef<Path>) -> Result<BackgroundMount, SetupError> {
        let mnt = mountpoint.as_ref().to_string_lossy().into_owned();
        let opts = parse_mount_args(&[self.options_string()], &[mnt], true, false)?;
        for w in &opts.warnings {
            log::warn!("{w}");
        }
        let rules = self.rules.iter().map(|r| r.spec.clone()).collect();
        let mount = spawn_mount(&opts, rules)?;
        if self.record_trace {
            mount.start_trace();
        }
        Ok(mount)
    }
}

/// How a whiteout is written on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhiteoutForm {
    /// A character device 0/0 at the hidden name: the form the kernel
    /// overlay writes and reads.
    CharDevice,
    /// An empty regular file `.wh.NAME` beside the hidden name (the form of
    /// OCI layer archives), read by stratafs and fuse-overlayfs but not by
    /// the kernel overlay.
    WhFile,
}

impl WhiteoutForm {
    /// Every form, in a fixed order.
    pub const ALL: [WhiteoutForm; 2] = [WhiteoutForm::CharDevice, WhiteoutForm::WhFile];

    /// The object that stands for a whiteout of `path` in this form:
    /// `path` itself, or `.wh.NAME` beside it.
    pub fn marker_path(self, path: &Path) -> PathBuf {
        match self {
            WhiteoutForm::CharDevice => path.to_path_buf(),
            WhiteoutForm::WhFile => {
                let name = path.file_name().unwrap_or_else(|| OsStr::new(""));
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(name.as_bytes());
                path.with_file_name(OsStr::from_bytes(&wh))
            }
        }
    }

    /// Write a whiteout hiding `path` (whose parent directory must exist)
    /// in this form; it is created at [`WhiteoutForm::marker_path`].
    pub fn write(self, path: &Path) -> std::io::Result<()> {
        if path.file_name().is_none() {
            return Err(invalid_input(format!(
                "whiteout {}: no file name",
                path.display()
            )));
        }
        let marker = self.marker_path(path);
        match self {
            WhiteoutForm::CharDevice => rustix::fs::mknodat(
                rustix::fs::CWD,
                &marker,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .map_err(|e| with_path("mknod whiteout", &marker, e.into())),
            WhiteoutForm::WhFile => {
                create_file(&marker, b"")?;
                set_mode(&marker, 0o644)
            }
        }
    }
}

/// How a directory is marked opaque on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpaqueForm {
    /// The xattr `trusted.overlay.opaque=y`: what the kernel overlay reads
    /// when mounted by real root. Only writable with `CAP_SYS_ADMIN` in the
    /// initial user namespace.
    Trusted,
    /// The xattr `user.overlay.opaque=y`: what the kernel overlay reads when
    /// mounted with `userxattr` (as it is in a user namespace).
    UserOverlay,
    /// The xattr `user.fuseoverlayfs.opaque=y`, written by fuse-overlayfs.
    UserFuseOverlayfs,
    /// An empty file `.wh..wh..opq` inside the directory (the form of OCI
    /// layer archives).
    WhOpqFile,
}

impl OpaqueForm {
    /// Every form, in a fixed order.
    pub const ALL: [OpaqueForm; 4] = [
        OpaqueForm::Trusted,
        OpaqueForm::UserOverlay,
        OpaqueForm::UserFuseOverlayfs,
        OpaqueForm::WhOpqFile,
    ];

    /// The form the kernel overlay reads in this process's environment:
    /// [`OpaqueForm::Trusted`] where this process may write `trusted.*`
    /// xattrs, else [`OpaqueForm::UserOverlay`] (the kernel overlay then
    /// needs the `userxattr` mount option).
    pub fn kernel() -> OpaqueForm {
        if trusted_xattrs_writable() {
            OpaqueForm::Trusted
        } else {
            OpaqueForm::UserOverlay
        }
    }

    /// The forms this process can write, in the order of
    /// [`OpaqueForm::ALL`]: all of them where `trusted.*` xattrs are
    /// writable, else all but [`OpaqueForm::Trusted`]. stratafs reads each.
    pub fn usable() -> Vec<OpaqueForm> {
        let trusted = trusted_xattrs_writable();
        OpaqueForm::ALL
            .into_iter()
            .filter(|f| trusted || *f != OpaqueForm::Trusted)
            .collect()
    }

    /// The name of the xattr of this form (`None` for the marker file).
    pub fn xattr_name(self) -> Option<&'static str> {
        match self {
            OpaqueForm::Trusted => Some("trusted.overlay.opaque"),
            OpaqueForm::UserOverlay => Some("user.overlay.opaque"),
            OpaqueForm::UserFuseOverlayfs => Some("user.fuseoverlayfs.opaque"),
            OpaqueForm::WhOpqFile => None,
        }
    }

    /// Mark the existing directory `dir` opaque in this form.
    pub fn write(self, dir: &Path) -> std::io::Result<()> {
        match self.xattr_name() {
            Some(name) => set_xattr(dir, name, b"y"),
            None => {
                let marker = dir.join(".wh..wh..opq");
                create_file(&marker, b"")?;
                set_mode(&marker, 0o644)
            }
        }
    }
}

/// Whether this process may write `trusted.*` xattrs: it needs
/// `CAP_SYS_ADMIN` in the initial user namespace.
fn trusted_xattrs_writable() -> bool {
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let initial_ns = uid_map.split_whitespace().eq(["0", "0", "4294967295"]);
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    initial_ns && cap_eff & (1 << CAP_SYS_ADMIN) != 0
}

/// In which forms a [`TempStack`] writes whiteouts and opaque markers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Markers {
    /// Every marker in the form the kernel overlay reads here, also where a
    /// form was asked for ([`Layer::whiteout_as`], [`Layer::opaque_as`]):
    /// whiteouts as character devices 0/0, opaque directories as
    /// [`OpaqueForm::kernel`]. The stack can be mounted with the kernel
    /// overlay.
    Kernel,
    /// Forms asked for are written as asked, the others as with
    /// [`Markers::Kernel`]; except that a whiteout without a form is written
    /// as a `.wh.NAME` file where `mknod` of a character device is not
    /// permitted.
    #[default]
    AsWritten,
    /// Forms asked for are written as asked; each other marker gets a form
    /// chosen at random among [`WhiteoutForm::ALL`] or
    /// [`OpaqueForm::usable`], from this seed: the same seed and layers give
    /// the same stack.
    Mixed(u64),
}

/// What one [`Item`] of a [`Layer`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ItemKind {
    /// A regular file with this content.
    File(Vec<u8>),
    /// A directory (nothing is done if it exists already).
    Dir,
    /// A directory marked opaque, in the given form or, without one, as
    /// the [`Markers`] of the stack decide.
    Opaque(Option<OpaqueForm>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A hard link to this path of the same layer, created before.
    HardLink(String),
    /// A named pipe.
    Fifo,
    /// A character device node (creating one needs `CAP_MKNOD`).
    CharDevice {
        /// Major device number.
        major: u32,
        /// Minor device number.
        minor: u32,
    },
    /// A whiteout, in the given form or, without one, as the [`Markers`] of
    /// the stack decide.
    Whiteout(Option<WhiteoutForm>),
}

/// One entry of a [`Layer`]: a path, what is created there, and the
/// attributes set on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    path: String,
    kind: ItemKind,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    xattrs: Vec<(String, Vec<u8>)>,
    times: Option<(i64, i64)>,
}

impl Item {
    /// The path, relative to the layer root (`""` is the root itself).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is created.
    pub fn kind(&self) -> &ItemKind {
        &self.kind
    }

    /// Permission bits set with [`Layer::mode`] (or [`Layer::file_mode`]).
    pub fn mode(&self) -> Option<u32> {
        self.mode
    }

    /// Owner (uid, gid) set with [`Layer::owner`].
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// Extended attributes set with [`Layer::xattr`], in order.
    pub fn xattrs(&self) -> &[(String, Vec<u8>)] {
        &self.xattrs
    }

    /// (atime, mtime) in seconds, set with [`Layer::times`].
    pub fn times(&self) -> Option<(i64, i64)> {
        self.times
    }
}

/// A compact description of one layer's contents: items created in order,
/// each with optional attributes.
///
/// Paths are relative to the layer root (leading and trailing `/` are
/// ignored, `..` is refused); missing parent directories are created with
/// mode 0755. The attribute methods ([`Layer::mode`], [`Layer::owner`],
/// [`Layer::xattr`], [`Layer::times`]) apply to the item added last, or to
/// the layer root when there is none yet. A whiteout's or opaque
/// directory's attributes go to the object that carries the marker.
///
/// ```
/// use stratafs::api::{Layer, OpaqueForm, WhiteoutForm};
///
/// let layer = Layer::new()
///     .file("bin/tool", "#!/bin/sh\n")
///     .mode(0o755)
///     .hard_link("bin/tool2", "bin/tool")
///     .dir("var/cache")
///     .xattr("user.note", "kept")
///     .fifo("run/pipe")
///     .whiteout_as("etc/old", WhiteoutForm::WhFile)
///     .opaque_as("opt", OpaqueForm::WhOpqFile)
///     .times(1_000_000_000, 1_000_000_000);
/// assert_eq!(layer.items().len(), 6);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    items: Vec<Item>,
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, path: &str, kind: ItemKind) -> Self {
        self.items.push(Item {
            path: path.trim_matches('/').to_string(),
            kind,
            mode: None,
            owner: None,
            xattrs: Vec::new(),
            times: None,
        });
        self
    }

    /// The item the attribute methods change: the last one, or a new
    /// item for the layer root.
    fn last(&mut self) -> &mut Item {
        if self.items.is_empty() {
            *self = Layer::new().dir("");
        }
        let n = self.items.len();
        &mut self.items[n - 1]
    }

    /// A regular file (mode 0644 unless [`Layer::mode`] follows).
    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.push(path, ItemKind::File(content.as_ref().to_vec()))
    }

    /// A regular file with the given permission bits.
    pub fn file_mode(self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> Self {
        self.file(path, content).mode(mode)
    }

    /// A directory (mode 0755 when created, unless [`Layer::mode`]
    /// follows). `""` is the layer root, for attributes of the root.
    pub fn dir(self, path: &str) -> Self {
        self.push(path, ItemKind::Dir)
    }

    /// A symbolic link.
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push(path, ItemKind::Symlink(target.into()))
    }

    /// A hard link to `existing`, a path of this layer added before.
    pub fn hard_link(self, path: &str, existing: &str) -> Self {
        self.push(path, ItemKind::HardLink(existing.trim_matches('/').into()))
    }

    /// A named pipe (mode 0644 unless [`Layer::mode`] follows).
    pub fn fifo(self, path: &str) -> Self {
        self.push(path, ItemKind::Fifo)
    }

    /// A character device node (mode 0644 unless [`Layer::mode`] follows);
    /// creating one needs `CAP_MKNOD` in the initial user namespace.
    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.push(path, ItemKind::CharDevice { major, minor })
    }

    /// A whiteout: hides `path` of the layers below. Its form is chosen by
    /// the stack's [`Markers`].
    pub fn whiteout(self, path: &str) -> Self {
        self.push(path, ItemKind::Whiteout(None))
    }

    /// A whiteout in the given form (replaced by the kernel's form under
    /// [`Markers::Kernel`]).
    pub fn whiteout_as(self, path: &str, form: WhiteoutForm) -> Self {
        self.push(path, ItemKind::Whiteout(Some(form)))
    }

    /// An opaque directory: hides the contents of same-named directories
    /// below. Its form is chosen by the stack's [`Markers`].
    pub fn opaque(self, path: &str) -> Self {
        self.push(path, ItemKind::Opaque(None))
    }

    /// An opaque directory in the given form (replaced by the kernel's
    /// form under [`Markers::Kernel`]).
    pub fn opaque_as(self, path: &str, form: OpaqueForm) -> Self {
        self.push(path, ItemKind::Opaque(Some(form)))
    }

    /// Permission bits (including set-id and sticky bits) of the last item.
    /// Directory modes are set after the whole layer is written, so a
    /// directory without write permission can still be filled.
    pub fn mode(mut self, mode: u32) -> Self {
        self.last().mode = Some(mode);
        self
    }

    /// Owner of the last item (not following a symlink).
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.last().owner = Some((uid, gid));
        self
    }

    /// An extended attribute of the last item (not following a symlink).
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let value = value.as_ref().to_vec();
        self.last().xattrs.push((name.to_string(), value));
        self
    }

    /// Access and modification time (seconds since the epoch) of the last
    /// item, set after the whole layer is written (deepest paths first),
    /// so that creating later items does not change them.
    pub fn times(mut self, atime: i64, mtime: i64) -> Self {
        self.last().times = Some((atime, mtime));
        self
    }

    /// The items, in the order they are created.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Keep only the items for which `keep` returns true.
    pub fn retain(&mut self, keep: impl FnMut(&Item) -> bool) {
        self.items.retain(keep);
    }

    /// Write the layer into `dir` (created if missing), markers as with
    /// [`Markers::AsWritten`]: whiteouts are character devices 0/0 where
    /// `mknod` allows it, else `.wh.NAME` files; opaque directories carry
    /// the xattr of [`OpaqueForm::kernel`] unless a form was asked for.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| with_path("create", dir, e))?;
        self.write_with(dir, &mut MarkerChooser::new(Markers::AsWritten))
    }

    fn write_with(&self, dir: &Path, markers: &mut MarkerChooser) -> std::io::Result<()> {
        let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
        let mut times: Vec<(PathBuf, (i64, i64))> = Vec::new();
        for item in &self.items {
            let is_dir = matches!(item.kind, ItemKind::Dir | ItemKind::Opaque(_));
            if item.path.is_empty() && !is_dir {
                return Err(invalid_input(format!(
                    "{:?}: only a directory can be the layer root",
                    item.kind
                )));
            }
            let path = layer_path(dir, &item.path)?;
            make_parents(dir, &item.path)?;
            let mut default_mode = None;
            let target = match &item.kind {
                ItemKind::File(content) => {
                    create_file(&path, content)?;
                    default_mode = Some(0o644);
                    path
                }
                ItemKind::Dir => {
                    make_dir(&path)?;
                    path
                }
                ItemKind::Opaque(form) => {
                    make_dir(&path)?;
                    markers.opaque(*form).write(&path)?;
                    path
                }
                ItemKind::Symlink(target) => {
                    std::os::unix::fs::symlink(target, &path)
                        .map_err(|e| with_path("symlink", &path, e))?;
                    path
                }
                ItemKind::HardLink(existing) => {
                    let from = layer_path(dir, existing)?;
                    check_parents(dir, existing)?;
                    std::fs::hard_link(&from, &path).map_err(|e| with_path("link", &path, e))?;
                    path
                }
                ItemKind::Fifo => {
                    make_node(&path, rustix::fs::FileType::Fifo, 0)?;
                    default_mode = Some(0o644);
                    path
                }
                ItemKind::CharDevice { major, minor } => {
                    let dev = rustix::fs::makedev(*major, *minor);
                    make_node(&path, rustix::fs::FileType::CharacterDevice, dev)?;
                    default_mode = Some(0o644);
                    path
                }
                ItemKind::Whiteout(form) => {
                    let (form, may_fall_back) = markers.whiteout(*form);
                    match form.write(&path) {
                        Err(e) if may_fall_back && is_eperm(&e) => {
                            WhiteoutForm::WhFile.write(&path)?;
                            WhiteoutForm::WhFile.marker_path(&path)
                        }
                        r => r.map(|()| form.marker_path(&path))?,
                    }
                }
            };
            if let Some((uid, gid)) = item.owner {
                std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                    .map_err(|e| with_path("chown", &target, e))?;
            }
            match item.mode.or(default_mode) {
                Some(mode) if is_dir => dir_modes.push((target.clone(), mode)),
                // A symlink has no mode of its own (chmod would follow it).
                Some(mode) if !is_symlink(&target)? => set_mode(&target, mode)?,
                _ => {}
            }
            for (name, value) in &item.xattrs {
                set_xattr(&target, name, value)?;
            }
            if let Some(t) = item.times {
                times.push((target, t));
            }
        }
        for (path, mode) in dir_modes {
            set_mode(&path, mode)?;
        }
        times.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, (atime, mtime)) in times {
            let at = |secs| rustix::fs::Timespec {
                tv_sec: secs,
                tv_nsec: 0,
            };
            let stamps = rustix::fs::Timestamps {
                last_access: at(atime),
                last_modification: at(mtime),
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &path,
                &stamps,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| with_path("set times of", &path, e.into()))?;
        }
        Ok(())
    }
}

/// Chooses the form of each marker for one stack.
struct MarkerChooser {
    markers: Markers,
    opaque_kernel: OpaqueForm,
    opaque_usable: Vec<OpaqueForm>,
    rng: SplitMix64,
}

impl MarkerChooser {
    fn new(markers: Markers) -> Self {
        let seed = match markers {
            Markers::Mixed(seed) => seed,
            _ => 0,
        };
        MarkerChooser {
            markers,
            opaque_kernel: OpaqueForm::kernel(),
            opaque_usable: OpaqueForm::usable(),
            rng: SplitMix64::new(seed),
        }
    }

    /// The form to write, and whether a `.wh.` file may stand in for a
    /// device node that cannot be made.
    fn whiteout(&mut self, asked: Option<WhiteoutForm>) -> (WhiteoutForm, bool) {
        match (self.markers, asked) {
            (Markers::Kernel, _) => (WhiteoutForm::CharDevice, false),
            (_, Some(form)) => (form, false),
            (Markers::AsWritten, None) => (WhiteoutForm::CharDevice, true),
            (Markers::Mixed(_), None) => (*self.rng.pick(&WhiteoutForm::ALL), false),
        }
    }

    fn opaque(&mut self, asked: Option<OpaqueForm>) -> OpaqueForm {
        match (self.markers, asked) {
            (Markers::Kernel, _) => self.opaque_kernel,
            (_, Some(form)) => form,
            (Markers::AsWritten, None) => self.opaque_kernel,
            (Markers::Mixed(_), None) => *self.rng.pick(&self.opaque_usable),
        }
    }
}

/// splitmix64, for [`Markers::Mixed`].
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn invalid_input(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// `e` with what was done and where.
fn with_path(what: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn is_eperm(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::PermissionDenied
}

/// `rel` below the layer root `dir`; `..` components are refused.
fn layer_path(dir: &Path, rel: &str) -> std::io::Result<PathBuf> {
    let rel = Path::new(rel.trim_matches('/'));
    if rel.as_os_str().is_empty() {
        return Ok(dir.to_path_buf());
    }
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid_input(format!(
            "layer path {}: only plain names are allowed",
            rel.display()
        )));
    }
    Ok(dir.join(rel))
}

/// Calls `f` with each parent directory of `rel` below `dir`, top first.
fn for_each_parent(
    dir: &Path,
    rel: &str,
    mut f: impl FnMut(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut path = dir.to_path_buf();
    let names: Vec<&str> = rel.trim_matches('/').split('/').collect();
    for name in &names[..names.len() - 1] {
        path.push(name);
        f(&path)?;
    }
    Ok(())
}

/// Create the missing parent directories of `rel` below `dir` (mode 0755),
/// never through a symlink.
fn make_parents(dir: &Path, rel: &str) -> std::io::Result<()> {
    for_each_parent(dir, rel, make_dir)
}

/// Fails unless every parent of `rel` below `dir` is a directory (not a
/// symlink).
fn check_parents(dir: &Path, rel: &str) -> std::io::Result<()> {
    for_each_parent(dir, rel, |path| {
        let md = std::fs::symlink_metadata(path).map_err(|e| with_path("lstat", path, e))?;
        if md.is_dir() {
            Ok(())
        } else {
            Err(invalid_input(format!(
                "{}: not a directory",
                path.display()
            )))
        }
    })
}

fn is_symlink(path: &Path) -> std::io::Result<bool> {
    std::fs::symlink_metadata(path)
        .map(|md| md.file_type().is_symlink())
        .map_err(|e| with_path("lstat", path, e))
}

/// A directory at `path` (mode 0755 if created); a directory there is
/// kept, anything else is an error.
fn make_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(with_path(
            "create directory",
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(path).map_err(|e| with_path("create directory", path, e))?;
            set_mode(path, 0o755)
        }
        Err(e) => Err(with_path("lstat", path, e)),
    }
}

/// Create or truncate a regular file, never following a symlink.
fn create_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.write_all(content))
        .map_err(|e| with_path("create", path, e))
}

fn make_node(path: &Path, kind: rustix::fs::FileType, dev: u64) -> std::io::Result<()> {
    let mode = rustix::fs::Mode::from_raw_mode(0o644);
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, mode, dev)
        .map_err(|e| with_path("mknod", path, e.into()))
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| with_path("chmod", path, e))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .map_err(|e| with_path(&format!("set xattr {name} on"), path, e.into()))
}

/// Describes a [`TempStack`] to create: lower layers (top first), an upper
/// layer (empty unless given) or none, and the [`Markers`] policy.
///
/// ```
/// use stratafs::api::{Layer, Markers, TempStackBuilder};
///
/// let desc = TempStackBuilder::new()
///     .lower(Layer::new().whiteout("etc/old").opaque("var"))
///     .lower(Layer::new().file("etc/old", "x").file("var/log", "l"))
///     .upper(Layer::new().file("etc/new", "n"))
///     .markers(Markers::Kernel);
/// let stack = desc.create()?; // the kernel overlay could mount it too
/// assert_eq!(stack.lowers().len(), 2);
/// assert!(stack.upper().join("etc/new").exists());
///
/// let read_only = desc.clone().read_only().create()?;
/// assert!(read_only.upper_dir().is_none());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempStackBuilder {
    lowers: Vec<Layer>,
    upper: Option<Layer>,
    markers: Markers,
}

impl Default for TempStackBuilder {
    fn default() -> Self {
        TempStackBuilder {
            lowers: Vec::new(),
            upper: Some(Layer::new()),
            markers: Markers::default(),
        }
    }
}

impl TempStackBuilder {
    /// No lower layers yet, an empty upper layer, [`Markers::AsWritten`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a lower layer below the ones added before.
    pub fn lower(mut self, layer: Layer) -> Self {
        self.lowers.push(layer);
        self
    }

    /// Add lower layers (top first) below the ones added before.
    pub fn lowers(mut self, layers: impl IntoIterator<Item = Layer>) -> Self {
        self.lowers.extend(layers);
        self
    }

    /// The contents of the upper layer (also after [`Self::read_only`]).
    pub fn upper(mut self, layer: Layer) -> Self {
        self.upper = Some(layer);
        self
    }

    /// No upper and no work directory: the stack mounts read-only.
    pub fn read_only(mut self) -> Self {
        self.upper = None;
        self
    }

    /// The forms whiteouts and opaque markers are written in.
    pub fn markers(mut self, markers: Markers) -> Self {
        self.markers = markers;
        self
    }

    /// The lower layers, top first.
    pub fn lower_layers(&self) -> &[Layer] {
        &self.lowers
    }

    /// The upper layer, `None` for a read-only stack.
    pub fn upper_layer(&self) -> Option<&Layer> {
        self.upper.as_ref()
    }

    /// Write the stack into a new temporary directory (under `TMPDIR`):
    /// `lower0..N`, then `upper` and `work` unless read-only, and an empty
    /// mount point `merged`. The layers are written in that order; under
    /// [`Markers::Mixed`] the forms are drawn in that order too.
    pub fn create(&self) -> std::io::Result<TempStack> {
        let dir = tempfile::Builder::new()
            .prefix("stratafs-stack.")
            .tempdir()?;
        let root = dir.path().canonicalize()?;
        let mut markers = MarkerChooser::new(self.markers);
        let mut lowers = Vec::new();
        for (i, layer) in self.lowers.iter().enumerate() {
            let p = root.join(format!("lower{i}"));
            make_dir(&p)?;
            layer.write_with(&p, &mut markers)?;
            lowers.push(p);
        }
        let upper = match &self.upper {
            Some(layer) => {
                let (upper, work) = (root.join("upper"), root.join("work"));
                make_dir(&upper)?;
                make_dir(&work)?;
                layer.write_with(&upper, &mut markers)?;
                Some((upper, work))
            }
            None => None,
        };
        make_dir(&root.join("merged"))?;
        Ok(TempStack {
            _dir: dir,
            root,
            lowers,
            upper,
        })
    }
}

/// A throwaway stack in a temporary directory: `lower0..N`, `upper`,
/// `work` and `merged`, removed when dropped. Paths are canonical.
#[derive(Debug)]
pub struct TempStack {
    _dir: tempfile::TempDir,
    root: PathBuf,
    lowers: Vec<PathBuf>,
    /// Upper and work directory.
    upper: Option<(PathBuf, PathBuf)>,
}

impl TempStack {
    /// Write `layers` (top first) as lower directories, with an empty upper
    /// and work directory. See [`TempStackBuilder`] for more.
    pub fn new(layers: &[Layer]) -> std::io::Result<TempStack> {
        TempStackBuilder::new().lowers(layers.to_vec()).create()
    }

    /// The temporary directory holding everything.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lower directories, top first.
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }

    /// The upper directory (for a read-only stack, a path that does not
    /// exist; see [`TempStack::upper_dir`]).
    pub fn upper(&self) -> PathBuf {
        self.root.join("upper")
    }

    /// The work directory (for a read-only stack, a path that does not
    /// exist; see [`TempStack::work_dir`]).
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// The upper directory, `None` for a read-only stack.
    pub fn upper_dir(&self) -> Option<&Path> {
        self.upper.as_ref().map(|(u, _)| u.as_path())
    }

    /// The work directory, `None` for a read-only stack.
    pub fn work_dir(&self) -> Option<&Path> {
        self.upper.as_ref().map(|(_, w)| w.as_path())
    }

    /// The default mount point.
    pub fn mountpoint(&self) -> PathBuf {
        self.root.join("merged")
    }

    /// The description of this stack, to add options or mount elsewhere
    /// (without upper and work directory for a read-only stack).
    pub fn builder(&self) -> OverlayBuilder {
        let mut b = OverlayBuilder::new();
        for l in &self.lowers {
            b = b.lower(l);
        }
        match &self.upper {
            Some((upper, work)) => b.upper(upper).work(work),
            None => b,
        }
    }

    /// Mount at [`TempStack::mountpoint`].
    pub fn mount(&self) -> Result<BackgroundMount, SetupError> {
        self.builder().mount(self.mountpoint())
    }
}
