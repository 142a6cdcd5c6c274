//! Removing whole trees beneath a directory descriptor (work-dir leftovers,
//! a failed copy-up), without following symlinks.

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::error::{Errno, Result};

/// Remove everything inside `dir` (not `dir` itself), without following
/// symlinks.
pub(crate) fn clear_dir(dir: impl AsFd) -> Result<()> {
    let dir = dir.as_fd();
    let rd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::new(rd)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((n.to_vec(), ent.file_type()));
        }
    }
    for (n, ty) in names {
        remove_tree(dir, &n, ty == rustix::fs::FileType::Directory)?;
    }
    Ok(())
}

/// Remove `name` in `parent`, recursively if it is a directory.
pub(crate) fn remove_tree(parent: impl AsFd, name: &[u8], is_dir_hint: bool) -> Result<()> {
    let parent = parent.as_fd();
    if !is_dir_hint {
        match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Err(Errno::ISDIR) | Err(Errno::PERM) => {}
            r => return r,
        }
    }
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {}
        Err(Errno::NOTDIR) => return rustix::fs::unlinkat(parent, name, AtFlags::empty()),
        r => return r,
    }
    let sub = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // The kernel's leftovers can be mode 000; make sure we may empty it.
    let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
    clear_dir(&sub)?;
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_nested_trees_but_not_symlink_targets() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let keep = dir.path().join("keep");
        std::fs::create_dir(&keep)?;
        std::fs::write(keep.join("precious"), "x")?;
        let t = dir.path().join("t");
        std::fs::create_dir_all(t.join("a/b"))?;
        std::fs::write(t.join("a/b/f"), "y")?;
        std::os::unix::fs::symlink(&keep, t.join("a/link"))?;
        let root = rustix::fs::open(dir.path(), OFlags::PATH, Mode::empty())?;
        remove_tree(&root, b"t", true)?;
        assert!(!t.exists());
        assert!(keep.join("precious").exists());
        // A plain file with a wrong hint.
        std::fs::write(dir.path().join("f"), "z")?;
        remove_tree(&root, b"f", true)?;
        assert!(!dir.path().join("f").exists());
        Ok(())
    }
}
