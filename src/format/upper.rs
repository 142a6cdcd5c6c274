//! What the upper filesystem accepts, probed once at mount, and the writers
//! of markers that fall back to the forms it does accept: a char 0/0
//! whiteout (`mknod`, permitted rootless on kernels since 5.8 unless the
//! filesystem refuses) else a `.wh.NAME` file; `trusted.overlay.opaque`
//! where trusted xattrs are permitted (root) else `user.overlay.opaque`.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, XattrFlags};

use super::opaque::{OPAQUE_TRUSTED, OPAQUE_USER};
use super::whiteout::make_wh_file;
use super::xattr_names::Ovl;
use crate::error::{Errno, Result};
use crate::sys::xattr;

/// What the upper filesystem lets us write, probed once at start.
#[derive(Debug)]
pub(crate) struct Formats {
    /// `mknod c 0 0` works; else `.wh.NAME` files are written.
    char_whiteout: AtomicBool,
    /// `trusted.*` xattrs can be set; else `user.overlay.opaque` is used.
    trusted_xattr: AtomicBool,
}

impl Formats {
    /// Probe in the work directory: try the kernel formats and remove the
    /// probes again.
    pub(crate) fn probe(work: impl AsFd, tmp: &[u8]) -> Formats {
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
    pub(crate) fn none() -> Formats {
        Formats::assume(false)
    }

    /// Try the kernel's forms first and fall back when refused (what an
    /// offline repair does: it has no work directory to probe in).
    pub(crate) fn assume(kernel_forms: bool) -> Formats {
        Formats {
            char_whiteout: AtomicBool::new(kernel_forms),
            trusted_xattr: AtomicBool::new(kernel_forms),
        }
    }

    /// Whether trusted xattrs are written (else the `user.` forms).
    pub(crate) fn trusted(&self) -> bool {
        self.trusted_xattr.load(Ordering::Relaxed)
    }

    /// Whether whiteouts are written as char 0/0 devices.
    pub(crate) fn char_whiteouts(&self) -> bool {
        self.char_whiteout.load(Ordering::Relaxed)
    }

    /// The name of the kernel record `x` in the namespace written.
    pub(crate) fn ovl(&self, x: Ovl) -> &'static [u8] {
        x.name(self.trusted())
    }

    /// Read the kernel record `x` of `fd`: the namespace written first,
    /// then the other (an upper may have been written rootless and be
    /// mounted as root, or the other way round).
    pub(crate) fn read_ovl(&self, fd: impl AsFd, x: Ovl) -> Option<Vec<u8>> {
        let fd = fd.as_fd();
        let t = self.trusted();
        xattr::get(fd, x.name(t))
            .or_else(|_| xattr::get(fd, x.name(!t)))
            .ok()
    }

    /// Mark directory `dir` opaque.
    pub(crate) fn set_opaque(&self, dir: impl AsFd) -> Result<()> {
        self.set_either(dir.as_fd(), OPAQUE_TRUSTED, OPAQUE_USER, b"y")
    }

    /// Write the kernel record `x` of `fd`: under `trusted.` where that is
    /// permitted, else under `user.`.
    pub(crate) fn set_ovl(&self, fd: impl AsFd, x: Ovl, value: &[u8]) -> Result<()> {
        self.set_either(fd.as_fd(), x.name(true), x.name(false), value)
    }

    fn set_either(&self, fd: BorrowedFd<'_>, trusted: &[u8], user: &[u8], v: &[u8]) -> Result<()> {
        if self.trusted() {
            match xattr::set(fd, trusted, v, XattrFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(Errno::PERM) | Err(Errno::NOTSUP) => {
                    self.trusted_xattr.store(false, Ordering::Relaxed)
                }
                Err(e) => return Err(e),
            }
        }
        xattr::set(fd, user, v, XattrFlags::empty())
    }

    /// Create a whiteout for `name` in `dir`, where nothing exists yet.
    pub(crate) fn make_whiteout(&self, dir: impl AsFd, name: &[u8]) -> Result<()> {
        let dir = dir.as_fd();
        match self.make_char_whiteout(dir, name) {
            Err(Errno::NOTSUP) => make_wh_file(dir, name),
            r => r,
        }
    }

    /// Write the char 0/0 form of a whiteout; `NOTSUP` when the upper does
    /// not allow it (remembered for the rest of the mount).
    pub(crate) fn make_char_whiteout(&self, dir: impl AsFd, name: &[u8]) -> Result<()> {
        if self.char_whiteouts() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_fall_back_to_the_forms_accepted() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let fd = rustix::fs::open(dir.path(), OFlags::RDONLY, Mode::empty())?;
        let f = Formats::probe(&fd, b"#probe");
        assert!(
            std::fs::read_dir(dir.path())?.next().is_none(),
            "probe left"
        );
        let root = rustix::process::geteuid().is_root();
        assert_eq!(f.trusted(), root);
        f.make_whiteout(&fd, b"gone")?;
        let wh_file = dir.path().join(".wh.gone");
        let char_wh = dir.path().join("gone");
        assert!(wh_file.exists() != f.char_whiteouts());
        assert!(char_wh.symlink_metadata().is_ok() == f.char_whiteouts());
        std::fs::create_dir(dir.path().join("d"))?;
        let d = rustix::fs::open(dir.path().join("d"), OFlags::RDONLY, Mode::empty())?;
        f.set_opaque(&d)?;
        assert!(crate::format::opaque::is_opaque(&d)?);
        Ok(())
    }
}
