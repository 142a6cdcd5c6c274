//! Copy-up: give a lower object a copy in the upper layer before it is
//! changed.
//!
//! Parents first (top-down, iteratively), then the object itself. The copy
//! is built completely in the work directory (data, xattrs, owner, mode with
//! setuid/setgid, times), fsync'ed, and published with one
//! `renameat2(RENAME_NOREPLACE)` into the upper parent, whose times are then
//! restored. No partial copy is ever visible in the upper directory. Data is
//! cloned (FICLONE) where the filesystem can, else copied in the kernel with
//! `copy_file_range` over the data segments only (holes stay holes), else
//! read and written.
//!
//! Only the node's own copy lock is held during the data copy; the parent
//! directory is locked just for the publishing rename, so lookups elsewhere
//! (and in the same directory) go on during a large copy.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, Stat};

use crate::error::{Errno, Result};
use crate::inode::{Name, Node, Obj, ROOT_INO};
use crate::overlay::{Invalidate, Overlay};
use crate::override_stat::{self, Override};
use crate::resolve::{self, open_path};
use crate::util;
use crate::xattr;

/// What to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// Metadata and the whole content.
    All,
    /// Metadata only; the copy is empty (the caller truncates anyway).
    Empty,
}

const CHUNK: usize = 1 << 20;

impl Overlay {
    /// Make sure `node` has an upper copy; returns its `O_PATH` fd.
    pub fn copy_up(&self, node: &Arc<Node>, data: Data) -> Result<Arc<OwnedFd>> {
        self.writable()?;
        if let Some(u) = self.upper_fd(node)? {
            return Ok(u);
        }
        // Collect the ancestors that lack an upper copy, nearest first.
        let mut chain = vec![node.clone()];
        loop {
            let (parent, _) = chain.last().map(|n| n.location()).ok_or(Errno::IO)?;
            if chain.last().map(|n| n.ino) == Some(ROOT_INO) {
                break;
            }
            let p = self.node(parent)?;
            if p.has_upper() {
                break;
            }
            chain.push(p);
        }
        let hard_linked = !node.is_dir()
            && node
                .state
                .read()
                .lowers
                .first()
                .and_then(|l| l.obj.stat().ok())
                .is_some_and(|st| st.st_nlink > 1);
        let mut last = None;
        for n in chain.iter().rev() {
            let d = if Arc::ptr_eq(n, node) {
                data
            } else {
                Data::All
            };
            last = Some(self.copy_up_one(n, d)?);
        }
        let up = last.ok_or(Errno::IO)?;
        if hard_linked {
            // Other names of a hard-linked lower file that the kernel knows
            // as this inode get links to the copy.
            let (parent, name) = node.location();
            for (p, n) in self.inodes.names_of(node.ino) {
                if (p, &*n) != (parent, &*name) {
                    if let Err(e) = self.link_up(node, p, &n) {
                        log::warn!(
                            "hard link {} not linked to its copy: {e}",
                            crate::layer::display_name(&n)
                        );
                    }
                }
            }
        }
        Ok(up)
    }

    /// Give (`parent`, `name`), a lower hard link of the copied-up `node`,
    /// a link to the upper copy.
    pub fn link_up(&self, node: &Arc<Node>, parent: u64, name: &[u8]) -> Result<()> {
        let origin = node.state.read().origin;
        let src = self.upper_fd(node)?.ok_or(Errno::IO)?;
        let dir = self.dir_node(parent)?;
        let pup = self.copy_up(&dir, Data::All)?;
        let _g = dir.dir_lock.write();
        // Still a lower name of the same inode?
        match resolve::resolve(&dir.dir_layers(), name)? {
            Some(f) if f.top.layer != 0 && Some((f.stat.st_dev, f.stat.st_ino)) == origin => {}
            _ => return Ok(()),
        }
        let src_path = crate::sys::proc_fd_path(src.as_fd());
        rustix::fs::linkat(
            rustix::fs::CWD,
            src_path.as_c_str(),
            &*pup,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )?;
        self.inodes.set_dentry(parent, Name::from(name), node.ino);
        self.invalidate(Invalidate::Attr(node.ino));
        Ok(())
    }

    fn copy_up_one(&self, node: &Arc<Node>, data: Data) -> Result<Arc<OwnedFd>> {
        let _g = node.copy_lock.lock();
        if let Some(u) = self.upper_fd(node)? {
            return Ok(u);
        }
        let (parent_ino, name, lower, detached) = {
            let st = node.state.read();
            let lower = st.lowers.first().map(|l| l.obj.clone());
            (st.parent, st.name.clone(), lower, st.detached)
        };
        if detached {
            // The name is gone; there is no place to copy it to.
            return Err(Errno::STALE);
        }
        let lower = lower.ok_or(Errno::IO)?.fd()?;
        let parent = self.node(parent_ino)?;
        // Normally copied up just before; but a lower hard link's node
        // moves to whichever of its names was looked up last, and that
        // directory may not have an upper copy yet.
        let pup = match parent.upper() {
            Some(u) => u,
            None => self.copy_up(&parent, Data::All)?,
        };
        let work = self.stack.work.as_ref().ok_or(Errno::ROFS)?;
        let st = rustix::fs::fstat(&*lower)?;
        let lower_layer = node.top_layer_obj().map(|(l, _)| l).unwrap_or(0);
        let tmp = self.stack.tmp_name();
        let built = self.build_copy(work, &tmp, &lower, &st, data);
        let new_fd = match built.and_then(|()| open_path(work, &tmp)) {
            Ok(fd) => {
                self.record_origin(&fd, node.ino);
                self.carry_override(lower_layer, &lower, &st, &fd)
                    .map(|()| fd)
            }
            Err(e) => Err(e),
        };
        let new_fd = match new_fd {
            Ok(fd) => fd,
            Err(e) => {
                let _ = crate::layer::remove_tree(work, &tmp, node.is_dir());
                return Err(e);
            }
        };
        let new_fd = Arc::new(new_fd);
        {
            let _dl = parent.dir_lock.write();
            if node.state.read().detached {
                // Unlinked while being copied: nothing to publish.
                let _ = crate::layer::remove_tree(work, &tmp, node.is_dir());
                return Err(Errno::NOENT);
            }
            let pst = rustix::fs::fstat(&*pup)?;
            if let Err(e) = rustix::fs::renameat_with(
                work,
                tmp.as_slice(),
                &*pup,
                &*name,
                RenameFlags::NOREPLACE,
            ) {
                let _ = crate::layer::remove_tree(work, &tmp, node.is_dir());
                return Err(e);
            }
            let _ = util::set_times(&*pup, &util::times_of(&pst));
            let mut s = node.state.write();
            s.upper = Some(if node.is_dir() {
                Obj::Fd(new_fd.clone())
            } else {
                Obj::At {
                    dir: pup.clone(),
                    name: name.clone(),
                }
            });
            if !node.is_dir() {
                s.lowers.clear();
            }
        }
        if node.is_dir() || st.st_nlink > 1 {
            // The link count the kernel cached changed: a directory is now
            // merged (nlink 1), a copied hard link has its own count.
            self.invalidate(Invalidate::Attr(node.ino));
        }
        Ok(new_fd)
    }

    /// Give a copy the owner and mode its original shows, in the upper's
    /// override xattr when the upper keeps owners in xattrs (the lower may
    /// use another xattr name, or none).
    fn carry_override(
        &self,
        lower_layer: usize,
        lower: &Arc<OwnedFd>,
        st: &Stat,
        copy: &OwnedFd,
    ) -> Result<()> {
        let Some(name) = self.override_name(0) else {
            return Ok(());
        };
        if !override_stat::applies_to(st) {
            return Ok(());
        }
        let lower_obj = Obj::Fd(lower.clone());
        let ov = self
            .recorded_override(lower_layer, &lower_obj, st)
            .unwrap_or_else(|| Override::of_stat(st));
        crate::xattr::set(
            copy,
            name,
            ov.format().as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
    }

    /// Build a copy of `lower` (stat `st`) named `tmp` in `work`.
    fn build_copy(
        &self,
        work: &OwnedFd,
        tmp: &[u8],
        lower: &OwnedFd,
        st: &Stat,
        data: Data,
    ) -> Result<()> {
        let kind = FileType::from_raw_mode(st.st_mode);
        let mode = st.st_mode & 0o7777;
        match kind {
            FileType::RegularFile => {
                let dst = rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                if data == Data::All && st.st_size > 0 {
                    let src = util::reopen(lower, OFlags::RDONLY)?;
                    copy_data(&src, &dst, st.st_size as u64)?;
                }
                self.finish_copy(&dst, lower, st, mode)?;
                if self.stack.fsync {
                    rustix::fs::fsync(&dst)?;
                }
            }
            FileType::Directory => {
                rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?;
                let d = open_path(work, tmp)?;
                self.finish_copy(&d, lower, st, mode)?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(lower, "", Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), work, tmp)?;
                let d = open_path(work, tmp)?;
                copy_xattrs_lenient(lower, &d)?;
                util::give_to(&d, st.st_uid, st.st_gid, &rustix::fs::fstat(&d)?)?;
                let _ = rustix::fs::utimensat(
                    work,
                    tmp,
                    &util::times_of(st),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            _ => {
                rustix::fs::mknodat(work, tmp, kind, Mode::from_raw_mode(0o600), st.st_rdev)?;
                let d = open_path(work, tmp)?;
                self.finish_copy(&d, lower, st, mode)?;
            }
        }
        Ok(())
    }

    /// xattrs, owner, mode (after chown, so setuid/setgid survive), times.
    fn finish_copy(&self, dst: impl AsFd, lower: &OwnedFd, st: &Stat, mode: u32) -> Result<()> {
        let dst = dst.as_fd();
        copy_xattrs_lenient(lower, dst)?;
        util::give_to(dst, st.st_uid, st.st_gid, &rustix::fs::fstat(dst)?)?;
        util::set_mode(dst, mode)?;
        util::set_times(dst, &util::times_of(st))
    }
}

fn copy_xattrs_lenient(src: &OwnedFd, dst: impl AsFd) -> Result<()> {
    match xattr::copy_all(src, dst) {
        Ok(()) | Err(Errno::NOTSUP) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copy `len` bytes of `src` to the empty file `dst`, keeping holes.
pub fn copy_data(src: &OwnedFd, dst: &OwnedFd, len: u64) -> Result<()> {
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break, // only a hole is left
            Err(Errno::INVAL) | Err(Errno::NOTSUP) => pos,
            Err(e) => return Err(e),
        };
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(e) => e.min(len),
            Err(_) => len,
        };
        copy_range(src, dst, start, end)?;
        pos = end;
    }
    rustix::fs::ftruncate(dst, len)
}

fn copy_range(src: &OwnedFd, dst: &OwnedFd, start: u64, end: u64) -> Result<()> {
    let mut off_in = start;
    let mut off_out = start;
    let mut kernel_copy = true;
    let mut buf = Vec::new();
    while off_in < end {
        let want = ((end - off_in) as usize).min(CHUNK * 8);
        if kernel_copy {
            match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want)
            {
                Ok(0) => break,
                Ok(_) => continue,
                Err(Errno::XDEV) | Err(Errno::INVAL) | Err(Errno::NOSYS) | Err(Errno::NOTSUP) => {
                    kernel_copy = false;
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        if buf.is_empty() {
            buf = vec![0u8; CHUNK];
        }
        let want = ((end - off_in) as usize).min(CHUNK);
        let n = match rustix::io::pread(src, &mut buf[..want], off_in) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        };
        let mut done = 0;
        while done < n {
            match rustix::io::pwrite(dst, &buf[done..n], off_out + done as u64) {
                Ok(w) => done += w,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        off_in += n as u64;
        off_out += n as u64;
    }
    Ok(())
}
