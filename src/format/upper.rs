//! What the upper filesystem accepts, probed once at mount, and the writers
//! of markers that fall back to the forms it does accept: a char 0/0
//! whiteout (`mknod`, permitted rootless on kernels since 5.8 unless the
//! filesystem refuses) else a `.wh.NAME` file; `trusted.overlay.opaque`
//! where trusted xattrs are permitted (root) else `user.overlay.opaque`.
//!
//! Char 0/0 whiteouts share one inode, as the kernel overlay's do since
//! Linux 5.8: each new one is a hard link to a template device kept in the
//! work directory (`SharedWhiteout`), which costs a fraction of a `mknod`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
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
    /// The whiteout new ones are linked to (mounts with a work directory).
    shared: Option<SharedWhiteout>,
}

/// The whiteout inode that new whiteouts are hard links to, as in the
/// kernel overlay (`ovl_whiteout`): a char 0/0 device in the work
/// directory, made at the first whiteout. When the filesystem's link limit
/// is reached (`EMLINK`), or the template is gone, a fresh one replaces it;
/// where linking fails for any other reason than those, sharing is turned
/// off for the mount and every whiteout is a device of its own again.
///
/// The template is a temporary of the work directory like any other: one
/// left by a crash is cleared at the next mount (`stratafs check` reports
/// it as the kernel's are reported), the whiteouts linked to it stay
/// whiteouts on their own, and it is removed at unmount.
#[derive(Debug)]
struct SharedWhiteout {
    /// The work directory (the stack's descriptor of it).
    work: Arc<OwnedFd>,
    /// The current template, once made. Held only to read or replace it,
    /// never across a system call.
    current: Mutex<Option<Arc<Template>>>,
    /// Set when linking failed other than at the link limit.
    off: AtomicBool,
    /// Links one template takes before it counts as full, besides the
    /// filesystem's own limit (`u64::MAX` but in tests).
    link_max: u64,
    /// Makes template names unique.
    counter: AtomicU64,
    /// The daemon's process id, part of the template names (as of the
    /// other temporaries of the work directory).
    pid: u32,
}

/// One template device in the work directory.
#[derive(Debug)]
struct Template {
    name: Vec<u8>,
    /// Links made to it (for `link_max`).
    links: AtomicU64,
}

impl SharedWhiteout {
    fn new(work: Arc<OwnedFd>, link_max: u64) -> SharedWhiteout {
        SharedWhiteout {
            work,
            current: Mutex::new(None),
            off: AtomicBool::new(false),
            link_max,
            counter: AtomicU64::new(0),
            pid: std::process::id(),
        }
    }

    /// Make `name` in `dir` (where nothing is) a whiteout by linking it to
    /// the template. `NOTSUP`: not done, make a device of its own instead.
    fn link(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        // A template that fills or vanishes is replaced; a few rounds cover
        // other threads replacing it at the same time.
        for _ in 0..4 {
            if self.off.load(Ordering::Relaxed) {
                break;
            }
            let Ok(t) = self.template() else {
                // Making a device failed: the caller's `mknod` tells why.
                break;
            };
            let linked = if t.links.fetch_add(1, Ordering::Relaxed) >= self.link_max {
                Err(Errno::MLINK)
            } else {
                rustix::fs::linkat(&self.work, t.name.as_slice(), dir, name, AtFlags::empty())
            };
            match linked {
                Ok(()) => return Ok(()),
                Err(Errno::MLINK) | Err(Errno::NOENT) => self.retire(&t),
                Err(
                    e @ (Errno::PERM | Errno::ACCESS | Errno::XDEV | Errno::NOTSUP | Errno::NOSYS),
                ) => {
                    log::warn!(
                        "whiteouts no longer share an inode: linking refused ({})",
                        crate::error::describe(e)
                    );
                    self.off.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Errno::NOTSUP)
    }

    /// The current template, made now if there is none.
    fn template(&self) -> Result<Arc<Template>> {
        if let Some(t) = self.current.lock().clone() {
            return Ok(t);
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("#whiteout.{}.{n}", self.pid).into_bytes();
        rustix::fs::mknodat(
            &self.work,
            name.as_slice(),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )?;
        let made = Arc::new(Template {
            name,
            links: AtomicU64::new(0),
        });
        let mut cur = self.current.lock();
        match cur.clone() {
            Some(other) => {
                // Another thread made one meanwhile: use that.
                drop(cur);
                let _ = rustix::fs::unlinkat(&self.work, made.name.as_slice(), AtFlags::empty());
                Ok(other)
            }
            None => {
                *cur = Some(made.clone());
                Ok(made)
            }
        }
    }

    /// `t` is full or gone: the next whiteout makes a fresh template. Its
    /// name leaves the work directory; the whiteouts linked to it stay.
    fn retire(&self, t: &Arc<Template>) {
        let mut cur = self.current.lock();
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, t)) {
            *cur = None;
            drop(cur);
            let _ = rustix::fs::unlinkat(&self.work, t.name.as_slice(), AtFlags::empty());
        }
    }
}

impl SharedWhiteout {
    /// Remove the template from the work directory (at unmount).
    fn drop_template(&self) {
        let t = self.current.lock().take();
        if let Some(t) = t {
            let _ = rustix::fs::unlinkat(&self.work, t.name.as_slice(), AtFlags::empty());
        }
    }
}

impl Drop for SharedWhiteout {
    fn drop(&mut self) {
        self.drop_template();
    }
}

impl Formats {
    /// Probe in the work directory: try the kernel formats and remove the
    /// probes again.
    pub(crate) fn probe(work: &Arc<OwnedFd>, tmp: &[u8]) -> Formats {
        Formats::probe_with_link_max(work, tmp, u64::MAX)
    }

    /// `probe`, with whiteout templates that count as full after
    /// `link_max` links (tests reach the refill path so).
    fn probe_with_link_max(work_fd: &Arc<OwnedFd>, tmp: &[u8], link_max: u64) -> Formats {
        let work = work_fd.as_fd();
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
        let shared = char_whiteout.then(|| SharedWhiteout::new(work_fd.clone(), link_max));
        Formats {
            char_whiteout: AtomicBool::new(char_whiteout),
            trusted_xattr: AtomicBool::new(trusted_xattr),
            shared,
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
            shared: None,
        }
    }

    /// The mount ends: the whiteout template leaves the work directory
    /// (the whiteouts linked to it stay).
    pub(crate) fn drop_template(&self) {
        if let Some(s) = &self.shared {
            s.drop_template();
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

    /// Remove the kernel record `x` of `fd` under both `trusted.` and
    /// `user.`; a namespace that does not have it (or may not be changed)
    /// is no error. Both are tried; the first other error is returned.
    pub(crate) fn remove_ovl(&self, fd: impl AsFd, x: Ovl) -> Result<()> {
        let fd = fd.as_fd();
        let t = self.trusted();
        let mut res = Ok(());
        for ns in [t, !t] {
            match xattr::remove(fd, x.name(ns)) {
                Ok(()) | Err(Errno::NODATA) | Err(Errno::NOTSUP) | Err(Errno::PERM) => {}
                Err(e) => res = res.and(Err(e)),
            }
        }
        res
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

    /// Write the char 0/0 form of a whiteout (a link to the shared one
    /// where there is one, else a device of its own); `NOTSUP` when the
    /// upper does not allow it (remembered for the rest of the mount).
    pub(crate) fn make_char_whiteout(&self, dir: impl AsFd, name: &[u8]) -> Result<()> {
        let dir = dir.as_fd();
        if self.char_whiteouts() {
            if let Some(shared) = &self.shared {
                match shared.link(dir, name) {
                    Err(Errno::NOTSUP) => {}
                    r => return r,
                }
            }
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
        let fd = Arc::new(rustix::fs::open(dir.path(), OFlags::RDONLY, Mode::empty())?);
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

    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::Path;

    /// A work and an upper directory in a temporary directory, with the
    /// formats probed in the work directory; `None` where char 0/0
    /// whiteouts cannot be made (nothing to share then).
    fn dirs(link_max: u64) -> std::io::Result<Option<(tempfile::TempDir, Formats, OwnedFd)>> {
        let t = tempfile::tempdir()?;
        std::fs::create_dir(t.path().join("work"))?;
        std::fs::create_dir(t.path().join("upper"))?;
        let work = rustix::fs::open(t.path().join("work"), OFlags::RDONLY, Mode::empty())?;
        let f = Formats::probe_with_link_max(&Arc::new(work), b"#probe", link_max);
        if !f.char_whiteouts() {
            return Ok(None);
        }
        let upper = rustix::fs::open(t.path().join("upper"), OFlags::PATH, Mode::empty())?;
        Ok(Some((t, f, upper)))
    }

    /// (inode, link count) of a whiteout; panics on anything else.
    fn whiteout_at(p: &Path) -> (u64, u64) {
        let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        assert!(m.file_type().is_char_device() && m.rdev() == 0, "{p:?}");
        (m.ino(), m.nlink())
    }

    /// The char devices in the work directory: the templates.
    fn templates(t: &Path) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = std::fs::read_dir(t.join("work"))
            .map(|rd| rd.flatten().map(|e| whiteout_at(&e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn whiteouts_are_links_to_one_template_in_the_work_dir() -> std::io::Result<()> {
        let Some((t, f, upper)) = dirs(u64::MAX)? else {
            return Ok(());
        };
        assert!(
            templates(t.path()).is_empty(),
            "no template before a whiteout"
        );
        for n in ["a", "b", "c"] {
            f.make_whiteout(&upper, n.as_bytes())?;
        }
        let (ino, nlink) = whiteout_at(&t.path().join("upper/a"));
        assert_eq!(nlink, 4, "three whiteouts and the template");
        for n in ["b", "c"] {
            assert_eq!(whiteout_at(&t.path().join("upper").join(n)), (ino, 4));
        }
        assert_eq!(templates(t.path()), [(ino, 4)]);
        // Where the name is taken, as with mknod.
        assert_eq!(f.make_whiteout(&upper, b"a"), Err(Errno::EXIST));
        // Unmounting removes the template; the whiteouts stay.
        f.drop_template();
        assert!(templates(t.path()).is_empty(), "template left after drop");
        assert_eq!(whiteout_at(&t.path().join("upper/c")), (ino, 3));
        Ok(())
    }

    #[test]
    fn a_full_or_vanished_template_is_replaced() -> std::io::Result<()> {
        let Some((t, f, upper)) = dirs(2)? else {
            return Ok(());
        };
        for i in 0..5 {
            f.make_whiteout(&upper, format!("w{i}").as_bytes())?;
        }
        // Two links per template: w0 w1 | w2 w3 | w4.
        let ino = |i: u32| whiteout_at(&t.path().join(format!("upper/w{i}"))).0;
        assert_eq!(ino(0), ino(1));
        assert_eq!(ino(2), ino(3));
        assert!(ino(1) != ino(2) && ino(3) != ino(4) && ino(0) != ino(4));
        assert_eq!(
            whiteout_at(&t.path().join("upper/w0")).1,
            2,
            "full one left"
        );
        assert_eq!(templates(t.path()), [(ino(4), 2)], "one template at a time");
        // Someone clears the work directory (as a mount does): still fine.
        crate::sys::tree::clear_dir(rustix::fs::open(
            t.path().join("work"),
            OFlags::RDONLY,
            Mode::empty(),
        )?)?;
        f.make_whiteout(&upper, b"w5")?;
        assert_eq!(templates(t.path()), [(ino(5), 2)]);
        Ok(())
    }

    /// The filesystem's own link limit (65,000 on ext4) ends a template
    /// too. Filling one takes about a second, so only where the limit is
    /// that small; elsewhere the test checks nothing beyond the above.
    #[test]
    fn the_filesystems_link_limit_starts_a_new_template() -> std::io::Result<()> {
        let Some((t, f, upper)) = dirs(u64::MAX)? else {
            return Ok(());
        };
        f.make_whiteout(&upper, b"first")?;
        let Some(name) = std::fs::read_dir(t.path().join("work"))?
            .flatten()
            .map(|e| e.file_name())
            .next()
        else {
            panic!("no template");
        };
        let work = rustix::fs::open(t.path().join("work"), OFlags::PATH, Mode::empty())?;
        std::fs::create_dir(t.path().join("fill"))?;
        let fill = rustix::fs::open(t.path().join("fill"), OFlags::PATH, Mode::empty())?;
        let mut full = false;
        for i in 0..70_000u32 {
            let n = format!("{i}");
            match rustix::fs::linkat(&work, &name, &fill, n.as_str(), AtFlags::empty()) {
                Ok(()) => {}
                Err(Errno::MLINK) => {
                    full = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !full {
            return Ok(()); // no small link limit on this filesystem
        }
        let old = whiteout_at(&t.path().join("upper/first")).0;
        f.make_whiteout(&upper, b"second")?;
        let (new, nlink) = whiteout_at(&t.path().join("upper/second"));
        assert!(new != old, "linked to the full template");
        assert_eq!(nlink, 2);
        assert_eq!(templates(t.path()), [(new, 2)]);
        Ok(())
    }
}
