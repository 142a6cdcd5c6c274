//! On-disk markers of deletion and opacity, read in every format the kernel
//! overlay and fuse-overlayfs write, written in the kernel's format where
//! permitted:
//!
//! * whiteout: a character device 0/0 named like the deleted entry, or an
//!   empty file `.wh.NAME` beside it (AUFS / OCI layer format);
//! * opaque directory: xattr `trusted.overlay.opaque`, `user.overlay.opaque`
//!   or `user.fuseoverlayfs.opaque` equal to `y`, or a `.wh..wh..opq` file
//!   inside.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, XattrFlags};

use crate::error::{Errno, Result};
use crate::xattr;

/// Prefix of AUFS-style whiteout names.
pub const WH_PREFIX: &[u8] = b".wh.";
/// Name of the AUFS-style opaque marker file.
pub const OPAQUE_FILE: &[u8] = b".wh..wh..opq";
/// Opaque xattr written when trusted xattrs are permitted.
pub const OPAQUE_TRUSTED: &[u8] = b"trusted.overlay.opaque";
/// Opaque xattr written otherwise (kernel `userxattr` format).
pub const OPAQUE_USER: &[u8] = b"user.overlay.opaque";
/// Opaque xattr of fuse-overlayfs (read only).
pub const OPAQUE_FO: &[u8] = b"user.fuseoverlayfs.opaque";

/// Whether a stat result is a kernel-format whiteout (char device 0/0).
pub fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Whether `name` is a marker name (any `.wh.` name) that never shows.
pub fn is_marker_name(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// The AUFS whiteout name for `name`, if it fits in NAME_MAX.
pub fn wh_name(name: &[u8]) -> Option<Vec<u8>> {
    if name.len() + WH_PREFIX.len() > 255 {
        return None;
    }
    let mut v = Vec::with_capacity(name.len() + WH_PREFIX.len());
    v.extend_from_slice(WH_PREFIX);
    v.extend_from_slice(name);
    Some(v)
}

/// Whether `dir` holds an AUFS whiteout for `name`.
pub fn has_wh_file(dir: impl AsFd, name: &[u8]) -> bool {
    match wh_name(name) {
        Some(w) => rustix::fs::statat(dir, w.as_slice(), AtFlags::SYMLINK_NOFOLLOW).is_ok(),
        None => false,
    }
}

/// What a lower directory holds, read once with one listing: the names its
/// AUFS whiteouts (`.wh.NAME` files) hide, and a hash of every name in it,
/// so that lookups skip the `stat` of names it lacks. Only for directories
/// that never change while mounted (not the upper's).
#[derive(Debug, Default)]
pub struct DirIndex {
    hidden: std::collections::HashSet<Box<[u8]>>,
    hashes: Box<[u64]>,
}

impl DirIndex {
    /// Read `dir`'s entries.
    pub fn read(dir: impl AsFd) -> Result<DirIndex> {
        let rd = crate::util::open_dir_read(dir)?;
        let mut hidden = std::collections::HashSet::new();
        let mut hashes = Vec::new();
        for ent in rustix::fs::Dir::new(rd)? {
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            hashes.push(crate::util::name_hash(name));
            if let Some(target) = name.strip_prefix(WH_PREFIX) {
                if name != OPAQUE_FILE && !target.is_empty() {
                    hidden.insert(Box::from(target));
                }
            }
        }
        hashes.sort_unstable();
        hashes.dedup();
        Ok(DirIndex {
            hidden,
            hashes: hashes.into_boxed_slice(),
        })
    }

    /// Whether a `.wh.` file in this directory hides `name`.
    pub fn hides(&self, name: &[u8]) -> bool {
        self.hidden.contains(name)
    }

    /// Whether the directory certainly has no entry `name`.
    pub fn lacks(&self, name: &[u8]) -> bool {
        self.hashes
            .binary_search(&crate::util::name_hash(name))
            .is_err()
    }
}

/// Whether the directory `dir` is opaque (hides same-named dirs below).
pub fn is_opaque(dir: impl AsFd) -> Result<bool> {
    let dir = dir.as_fd();
    match xattr::list(dir) {
        Ok(list) => {
            for n in xattr::names(&list) {
                if n == OPAQUE_TRUSTED || n == OPAQUE_USER || n == OPAQUE_FO {
                    match xattr::get(dir, n) {
                        // Exactly "y", as the kernel requires.
                        Ok(v) if v == b"y" => return Ok(true),
                        Ok(v) => log::debug!(
                            "opaque xattr {} has value {:?}: not opaque",
                            String::from_utf8_lossy(n),
                            String::from_utf8_lossy(&v)
                        ),
                        Err(Errno::NODATA) | Err(Errno::PERM) | Err(Errno::ACCESS) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(Errno::NOTSUP) | Err(Errno::PERM) | Err(Errno::ACCESS) => {}
        Err(e) => return Err(e),
    }
    Ok(rustix::fs::statat(dir, OPAQUE_FILE, AtFlags::SYMLINK_NOFOLLOW).is_ok())
}

/// What the upper filesystem lets us write, probed once at start.
#[derive(Debug)]
pub struct Formats {
    /// `mknod c 0 0` works; else `.wh.NAME` files are written.
    pub char_whiteout: AtomicBool,
    /// `trusted.*` xattrs can be set; else `user.overlay.opaque` is used.
    pub trusted_xattr: AtomicBool,
}

impl Formats {
    /// Probe in the work directory: try the kernel formats and remove the
    /// probes again.
    pub fn probe(work: impl AsFd, tmp: &[u8]) -> Formats {
        let work = work.as_fd();
        let char_whiteout =
            match rustix::fs::mknodat(work, tmp, FileType::CharacterDevice, Mode::empty(), 0) {
                Ok(()) => {
                    let _ = rustix::fs::unlinkat(work, tmp, AtFlags::empty());
                    true
                }
                Err(e) => {
                    log::info!(
                        "whiteouts as .wh. files: mknod refused ({})",
                        crate::error::describe(e)
                    );
                    false
                }
            };
        let trusted_xattr = match rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                let ok = match rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => xattr::set(&fd, OPAQUE_TRUSTED, b"y", XattrFlags::empty()).is_ok(),
                    Err(_) => false,
                };
                let _ = rustix::fs::unlinkat(work, tmp, AtFlags::REMOVEDIR);
                ok
            }
            Err(_) => false,
        };
        Formats {
            char_whiteout: AtomicBool::new(char_whiteout),
            trusted_xattr: AtomicBool::new(trusted_xattr),
        }
    }

    /// Formats for a read-only mount (nothing is ever written).
    pub fn none() -> Formats {
        Formats {
            char_whiteout: AtomicBool::new(false),
            trusted_xattr: AtomicBool::new(false),
        }
    }

    /// The xattr holding a copied-up object's original inode number.
    pub fn origin_xattr(&self) -> &'static [u8] {
        if self.trusted_xattr.load(Ordering::Relaxed) {
            b"trusted.stratafs.origin"
        } else {
            b"user.stratafs.origin"
        }
    }

    /// Mark directory `dir` opaque.
    pub fn set_opaque(&self, dir: impl AsFd) -> Result<()> {
        let dir = dir.as_fd();
        if self.trusted_xattr.load(Ordering::Relaxed) {
            match xattr::set(dir, OPAQUE_TRUSTED, b"y", XattrFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(Errno::PERM) | Err(Errno::NOTSUP) => {
                    self.trusted_xattr.store(false, Ordering::Relaxed)
                }
                Err(e) => return Err(e),
            }
        }
        xattr::set(dir, OPAQUE_USER, b"y", XattrFlags::empty())
    }

    /// Create a whiteout for `name` in `dir`, where nothing exists yet.
    pub fn make_whiteout(&self, dir: impl AsFd, name: &[u8]) -> Result<()> {
        let dir = dir.as_fd();
        match self.make_char_whiteout(dir, name) {
            Err(Errno::NOTSUP) => Self::make_wh_file(dir, name),
            r => r,
        }
    }

    /// Write the char 0/0 form of a whiteout; `NOTSUP` when the upper does
    /// not allow it (remembered for the rest of the mount).
    pub fn make_char_whiteout(&self, dir: impl AsFd, name: &[u8]) -> Result<()> {
        if self.char_whiteout.load(Ordering::Relaxed) {
            match rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0) {
                Ok(()) => return Ok(()),
                Err(Errno::PERM) | Err(Errno::NOTSUP) | Err(Errno::ACCESS) => {
                    self.char_whiteout.store(false, Ordering::Relaxed)
                }
                Err(e) => return Err(e),
            }
        }
        Err(Errno::NOTSUP)
    }

    /// Write the AUFS form of a whiteout, `.wh.NAME`. Beside a real `NAME`
    /// in the same directory it hides only the layers below, so it can be
    /// made before `NAME` goes away.
    pub fn make_wh_file(dir: impl AsFd, name: &[u8]) -> Result<()> {
        let w = wh_name(name).ok_or(Errno::NAMETOOLONG)?;
        let fd = rustix::fs::openat(
            dir,
            w.as_slice(),
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o700),
        )?;
        drop(fd);
        Ok(())
    }

    /// Remove an AUFS whiteout of `name` from `dir` if there is one.
    pub fn remove_wh_file(dir: impl AsFd, name: &[u8]) -> Result<()> {
        let Some(w) = wh_name(name) else {
            return Ok(());
        };
        match rustix::fs::unlinkat(dir, w.as_slice(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
