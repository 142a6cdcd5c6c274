//! The layer stack: one directory fd per layer, opened once at start.
//!
//! `layers[0]` is the upper directory when there is one, followed by the
//! lower directories top to bottom. Every later access to a layer is
//! relative to these fds (or to fds opened beneath them), never by path.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};

use super::options::{MountOptions, RedirectDir};
use crate::error::{describe, Errno, SetupError};
use crate::format::origin;
use crate::format::override_stat;
use crate::format::upper::Formats;
use crate::format::xattr_names::Ovl;
use crate::sys::{raw, tree::clear_dir, xattr};

/// One layer of the stack.
#[derive(Debug)]
pub(crate) struct Layer {
    /// Position in the stack: 0 is the top.
    pub(crate) idx: usize,
    /// The layer's root directory.
    pub(crate) root: OwnedFd,
    /// Device of the root, for inode numbering.
    pub(crate) dev: u64,
    /// The path given on the command line (for messages only).
    pub(crate) path: PathBuf,
    /// The xattr holding owner/mode overrides in this layer, if it uses one.
    pub(crate) override_xattr: Option<&'static [u8]>,
    /// The uuid of the layer's filesystem (zero when it tells none), for
    /// origin records.
    pub(crate) uuid: [u8; 16],
    /// Set once cloning data from this layer into the upper was refused
    /// in a way that holds for every file (no clone is tried again).
    pub(crate) clone_refused: AtomicBool,
    /// Whether the layer's filesystem writes file handles of the generic
    /// `FILEID_INO32_GEN` kinds with the inode number first (ext2/3/4,
    /// XFS): an origin record then names its lower inode without being
    /// opened (`core::origin`).
    pub(crate) ino_handles: bool,
}

/// Whether the filesystem of `fd` writes `FILEID_INO32_GEN` handles as
/// (inode number, generation): ext2/3/4 and XFS do; others (tmpfs, btrfs,
/// ...) put other things first or use kinds of their own.
fn writes_ino_handles(fd: &OwnedFd) -> bool {
    const EXT4_SUPER_MAGIC: u64 = 0xEF53;
    const XFS_SUPER_MAGIC: u64 = 0x5846_5342;
    rustix::fs::fstatfs(fd)
        .is_ok_and(|s| matches!(s.f_type as u64, EXT4_SUPER_MAGIC | XFS_SUPER_MAGIC))
}

/// All layers, the work directory and what the upper filesystem supports.
#[derive(Debug)]
pub(crate) struct Stack {
    /// Upper (if any) first, then lowers top to bottom.
    pub(crate) layers: Vec<Layer>,
    /// Whether `layers[0]` is a writable upper.
    pub(crate) has_upper: bool,
    /// `WORKDIR/work`, where new objects are built before they are published.
    pub(crate) work: Option<Arc<OwnedFd>>,
    /// `WORKDIR/index`, where an upper copy of a lower hard-linked file is
    /// kept under the hex of its origin record (as the kernel overlay with
    /// `index=on`); `None` where the layers cannot give file handles.
    pub(crate) index: Option<Arc<OwnedFd>>,
    /// Formats the upper accepts.
    pub(crate) formats: Formats,
    /// fsync copied-up data before publishing it.
    pub(crate) fsync: bool,
    /// Whether file handles can be opened (`open_by_handle_at(2)` needs
    /// `CAP_DAC_READ_SEARCH` in the initial namespace: not rootless).
    pub(crate) open_handles: bool,
    /// `redirect_dir=`: whether redirects are followed and written.
    pub(crate) redirect: RedirectDir,
    /// `metacopy=on`: changes of metadata only copy a lower regular file's
    /// metadata up (`overlay.metacopy`), not its data.
    pub(crate) metacopy: bool,
    tmp_counter: AtomicU64,
    /// The daemon's process id, part of every temporary name (read once:
    /// each read is a system call).
    pid: u32,
    /// The owner (uid, gid) an object made in the work directory gets, as
    /// probed at mount (`None`: ask each object).
    fresh_owner: Option<(u32, u32)>,
}

/// Name of the private subdirectory of the work dir (same as the kernel's).
pub(crate) const WORK_SUBDIR: &str = "work";
/// Name of the index directory in the work dir (same as the kernel's).
pub(crate) const INDEX_SUBDIR: &str = "index";

/// Open the directory at the path `path` the user gave (following it, as
/// engines pass symlinks; nothing below it is ever followed), with a
/// one-line error naming `what` it is.
pub(crate) fn open_root(
    what: &str,
    path: &Path,
) -> Result<(OwnedFd, rustix::fs::Stat), SetupError> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .or_else(|e| {
        if e == Errno::ACCESS {
            rustix::fs::open(
                path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        } else {
            Err(e)
        }
    })
    .map_err(|e| {
        let msg = if e == Errno::NOTDIR {
            "is not a directory".to_string()
        } else if e == Errno::NOTCONN {
            format!(
                "{} (a stale FUSE mount? clear it with: fusermount3 -u {})",
                describe(e),
                path.display()
            )
        } else {
            describe(e)
        };
        SetupError::path(what, path, msg)
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| SetupError::path(what, path, describe(e)))?;
    Ok((fd, st))
}

/// (dev, ino) of `path` and of each of its ancestors, nearest first.
fn ancestry(path: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Ok(canon) = std::fs::canonicalize(path) else {
        return out;
    };
    for p in canon.ancestors() {
        if let Ok(st) = rustix::fs::stat(p) {
            out.push((st.st_dev, st.st_ino));
        }
    }
    out
}

impl Stack {
    /// Open and check every directory of `opts`; create `WORKDIR/work` and
    /// clear leftovers in it. Nothing is created or changed unless every
    /// check passes.
    pub(crate) fn open(opts: &MountOptions) -> Result<Stack, SetupError> {
        let mut layers = Vec::new();
        let mut ids = Vec::new();
        if let Some(u) = &opts.upperdir {
            let (fd, st) = open_root("upperdir", u)?;
            rustix::fs::accessat(&fd, ".", rustix::fs::Access::WRITE_OK, AtFlags::EACCESS)
                .map_err(|e| {
                    SetupError::path("upperdir", u, format!("not writable: {}", describe(e)))
                })?;
            ids.push(((st.st_dev, st.st_ino), "upperdir", u.clone()));
            let uuid = raw::fs_uuid(fd.as_fd()).unwrap_or_default();
            let ino_handles = writes_ino_handles(&fd);
            layers.push(Layer {
                idx: 0,
                root: fd,
                dev: st.st_dev,
                path: u.clone(),
                override_xattr: None,
                uuid,
                clone_refused: AtomicBool::new(false),
                ino_handles,
            });
        }
        for l in &opts.lowerdirs {
            let (fd, st) = open_root("lowerdir", l)?;
            ids.push(((st.st_dev, st.st_ino), "lowerdir", l.clone()));
            let uuid = raw::fs_uuid(fd.as_fd()).unwrap_or_default();
            layers.push(Layer {
                idx: layers.len(),
                override_xattr: override_stat::probe_root(&fd),
                uuid,
                ino_handles: writes_ino_handles(&fd),
                root: fd,
                dev: st.st_dev,
                path: l.clone(),
                clone_refused: AtomicBool::new(false),
            });
        }
        let mut work_root = None;
        if let (Some(w), Some(u)) = (&opts.workdir, &opts.upperdir) {
            let (fd, st) = open_root("workdir", w)?;
            if st.st_dev != layers[0].dev {
                return Err(SetupError::new(format!(
                    "workdir {} is not on the same filesystem as upperdir {}",
                    w.display(),
                    u.display()
                )));
            }
            let up_id = ids[0].0;
            let w_anc = ancestry(w);
            let u_anc = ancestry(u);
            if w_anc.contains(&up_id) || u_anc.first().is_some_and(|id| w_anc.contains(id)) {
                return Err(SetupError::new(format!(
                    "workdir {} and upperdir {} must be separate directories, neither inside the other",
                    w.display(),
                    u.display()
                )));
            }
            work_root = Some((fd, st, w.clone()));
        }
        // The mount point: must be a directory, not inside any layer (it
        // may be a lower dir itself: its fd is open before the mount hides it).
        let mnt = &opts.mountpoint;
        let (_, mst) = open_root("mount point", mnt)?;
        let m_anc = ancestry(mnt);
        let m_id = (mst.st_dev, mst.st_ino);
        for (id, what, path) in &ids {
            let is_lower = *what == "lowerdir";
            if m_anc.iter().skip(usize::from(is_lower)).any(|a| a == id) {
                return Err(SetupError::new(format!(
                    "mount point {} is inside {what} {}",
                    mnt.display(),
                    path.display()
                )));
            }
            if !(is_lower && *id == m_id) && ancestry(path).iter().skip(1).any(|a| *a == m_id) {
                return Err(SetupError::new(format!(
                    "{what} {} is inside the mount point {}",
                    path.display(),
                    mnt.display()
                )));
            }
        }
        if let Some((_, wst, w)) = &work_root {
            if m_anc.contains(&(wst.st_dev, wst.st_ino)) {
                return Err(SetupError::new(format!(
                    "mount point {} is inside workdir {}",
                    mnt.display(),
                    w.display()
                )));
            }
        }

        // All checks passed: prepare WORKDIR/work and the upper's overrides.
        if opts.upperdir.is_some() {
            let first_lower = layers
                .iter()
                .skip(1)
                .find_map(|l| l.override_xattr.map(|n| (n, l)));
            let name = override_stat::for_option(opts.xattr_permissions)
                .or_else(|| override_stat::probe_root(&layers[0].root))
                .or(first_lower.map(|(n, _)| n));
            if let Some(name) = name {
                if opts.xattr_permissions != 0 && xattr::get(&layers[0].root, name).is_err() {
                    // The root's own override: the first lower root's, else
                    // root-owned with the real mode.
                    let value = first_lower
                        .and_then(|(n, l)| xattr::get(&l.root, n).ok())
                        .unwrap_or_else(|| {
                            let mode = rustix::fs::fstat(&layers[0].root)
                                .map(|s| s.st_mode & 0o7777)
                                .unwrap_or(0o755);
                            format!("0:0:{mode:04o}").into_bytes()
                        });
                    xattr::set(
                        &layers[0].root,
                        name,
                        &value,
                        rustix::fs::XattrFlags::empty(),
                    )
                    .map_err(|e| {
                        SetupError::path(
                            "upperdir",
                            &layers[0].path,
                            format!(
                                "cannot set {}: {}",
                                String::from_utf8_lossy(name),
                                describe(e)
                            ),
                        )
                    })?;
                }
                layers[0].override_xattr = Some(name);
            }
        }
        let mut work = None;
        let mut index = None;
        let mut formats = Formats::none();
        let mut fresh_owner = None;
        if let Some((wfd, _, w)) = work_root {
            match rustix::fs::mkdirat(&wfd, WORK_SUBDIR, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(SetupError::path(
                        "workdir",
                        w.as_path(),
                        format!("cannot create work/: {}", describe(e)),
                    ))
                }
            }
            let wd = rustix::fs::openat(
                &wfd,
                WORK_SUBDIR,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| SetupError::path("workdir", &w.join(WORK_SUBDIR), describe(e)))?;
            clear_dir(&wd).map_err(|e| {
                SetupError::path(
                    "workdir",
                    &w.join(WORK_SUBDIR),
                    format!("cannot clear leftovers: {}", describe(e)),
                )
            })?;
            let wd = Arc::new(wd);
            formats = Formats::probe(&wd, format!("#probe.{}", std::process::id()).as_bytes());
            fresh_owner = probe_owner(&wd, format!("#owner.{}", std::process::id()).as_bytes());
            work = Some(wd);
            index = open_index(&wfd, &w, &layers, &formats)?.map(Arc::new);
        }
        let open_handles = layers.iter().any(|l| {
            raw::name_to_handle(l.root.as_fd(), b"")
                .and_then(|h| raw::open_by_handle(l.root.as_fd(), &h))
                .is_ok()
        });
        Ok(Stack {
            has_upper: opts.upperdir.is_some(),
            layers,
            work,
            index,
            formats,
            fsync: opts.fsync,
            open_handles,
            redirect: opts.redirect_dir,
            metacopy: opts.metacopy,
            tmp_counter: AtomicU64::new(0),
            pid: std::process::id(),
            fresh_owner,
        })
    }

    /// The xattr holding owner/mode overrides in layer `layer`, if it keeps
    /// them in xattrs.
    pub(crate) fn override_xattr(&self, layer: usize) -> Option<&'static [u8]> {
        self.layers.get(layer).and_then(|l| l.override_xattr)
    }

    /// The read-only lower layers, top first.
    pub(crate) fn lower_layers(&self) -> impl Iterator<Item = &Layer> {
        self.layers.iter().skip(usize::from(self.has_upper))
    }

    /// Whether layer `layer` is the writable upper.
    pub(crate) fn is_upper(&self, layer: usize) -> bool {
        self.has_upper && layer == 0
    }

    /// The work directory; `EROFS` on a read-only mount.
    pub(crate) fn work(&self) -> crate::error::Result<&OwnedFd> {
        self.work.as_deref().ok_or(Errno::ROFS)
    }

    /// The device of layer `layer` (0 if there is no such layer).
    pub(crate) fn dev(&self, layer: usize) -> u64 {
        self.layers.get(layer).map_or(0, |l| l.dev)
    }

    /// The owner of `obj`, an object just made in the work directory (and
    /// not given to anyone yet): known from the probe at mount, else asked.
    pub(crate) fn fresh_owner(&self, obj: &OwnedFd) -> crate::error::Result<(u32, u32)> {
        match self.fresh_owner {
            Some(o) => Ok(o),
            None => rustix::fs::fstat(obj).map(|st| (st.st_uid, st.st_gid)),
        }
    }

    /// A fresh, unique name for a temporary object in the work dir.
    pub(crate) fn tmp_name(&self) -> Vec<u8> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        format!("#{}.{}", self.pid, n).into_bytes()
    }
}

/// The owner an object made in the work directory `work` gets (the
/// daemon's, or the directory's group where it is setgid; whatever the
/// filesystem decides), from a probe file `tmp` made and removed.
fn probe_owner(work: &OwnedFd, tmp: &[u8]) -> Option<(u32, u32)> {
    let f = rustix::fs::openat(
        work,
        tmp,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok()?;
    let st = rustix::fs::fstat(&f);
    let _ = rustix::fs::unlinkat(work, tmp, AtFlags::empty());
    st.ok().map(|st| (st.st_uid, st.st_gid))
}

/// Prepare `WORKDIR/index` and the records the kernel overlay keeps with it
/// (as it does with `index=on`): the upper root's origin (the top lower
/// root), the upper root's `overlay.uuid` on a new upper, and the index
/// directory's `overlay.upper` (the upper root's handle). `None`, and no
/// record written, where the layers cannot give file handles: hard links
/// are then kept by name only.
fn open_index(
    wfd: &OwnedFd,
    w: &Path,
    layers: &[Layer],
    formats: &Formats,
) -> Result<Option<OwnedFd>, SetupError> {
    let (Some(upper), Some(lower)) = (layers.first(), layers.get(1)) else {
        return Ok(None);
    };
    let (Ok(up_fh), Ok(low_fh)) = (
        raw::name_to_handle(upper.root.as_fd(), b""),
        raw::name_to_handle(lower.root.as_fd(), b""),
    ) else {
        log::info!("no inode index: the layers give no file handles");
        return Ok(None);
    };
    let path = w.join(INDEX_SUBDIR);
    match rustix::fs::mkdirat(wfd, INDEX_SUBDIR, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => {
            return Err(SetupError::path(
                "workdir",
                &path,
                format!("cannot create: {}", describe(e)),
            ))
        }
    }
    let idx = rustix::fs::openat(
        wfd,
        INDEX_SUBDIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError::path("workdir", &path, describe(e)))?;
    // The kernel's temporary names (`#...`) are leftovers; entries stay.
    clear_temporaries(&idx).map_err(|e| SetupError::path("workdir", &path, describe(e)))?;
    let set = |fd: &OwnedFd, x: Ovl, v: &[u8]| {
        if formats.read_ovl(fd, x).is_none() {
            if let Err(e) = xattr::set(fd, formats.ovl(x), v, rustix::fs::XattrFlags::empty()) {
                log::debug!(
                    "{} not recorded: {e}",
                    String::from_utf8_lossy(formats.ovl(x))
                );
            }
        }
    };
    set(
        &idx,
        Ovl::Upper,
        &origin::encode(&upper.uuid, &up_fh, origin::FLAG_UPPER),
    );
    if formats.read_ovl(&upper.root, Ovl::Impure).is_none() {
        let mut uuid = [0u8; 16];
        if rustix::rand::getrandom(&mut uuid, rustix::rand::GetRandomFlags::empty()).is_ok() {
            set(&upper.root, Ovl::Uuid, &uuid);
        }
    }
    set(
        &upper.root,
        Ovl::Origin,
        &origin::encode(&lower.uuid, &low_fh, 0),
    );
    Ok(Some(idx))
}

/// Remove the entries of `dir` whose names begin with `#`.
fn clear_temporaries(dir: &OwnedFd) -> Result<(), Errno> {
    let rd = crate::sys::fd::open_dir_read(dir)?;
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::new(rd)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n.starts_with(b"#") {
            names.push((
                n.to_vec(),
                ent.file_type() == rustix::fs::FileType::Directory,
            ));
        }
    }
    for (n, is_dir) in names {
        crate::sys::tree::remove_tree(dir, &n, is_dir)?;
    }
    Ok(())
}
