//! The overlay's operations on real layer directories, without FUSE: each
//! test builds a small stack in a temporary directory, calls the overlay as
//! the adapter would, and looks at what the upper holds. Runs unprivileged.

use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use super::inodes::ROOT_INO;
use super::overlay::{Caller, Config, Overlay};
use crate::error::{Errno, Result};
use crate::setup::options::parse_mount_args;
use crate::setup::stack::Stack;

struct Fixture {
    dir: tempfile::TempDir,
    ov: Overlay,
}

fn io(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

/// `lower/` holds `files` (path, content); an empty upper; mounted nowhere.
fn fixture(files: &[(&str, &str)]) -> Result<Fixture> {
    let dir = tempfile::tempdir().map_err(io)?;
    let p = |s: &str| dir.path().join(s);
    for d in ["lower", "upper", "work", "mnt"] {
        std::fs::create_dir(p(d)).map_err(io)?;
    }
    for (f, data) in files {
        let path = p("lower").join(f);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(path, data).map_err(io)?;
    }
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        p("lower").display(),
        p("upper").display(),
        p("work").display()
    );
    let mnt = p("mnt").display().to_string();
    let opts = parse_mount_args(&[o], &[mnt], true, false).map_err(|_| Errno::INVAL)?;
    let stack = Stack::open(&opts).map_err(|_| Errno::INVAL)?;
    let ov = Overlay::new(stack, Config::default())?;
    Ok(Fixture { dir, ov })
}

impl Fixture {
    fn upper(&self, rel: &str) -> PathBuf {
        self.dir.path().join("upper").join(rel)
    }

    /// Look a path up from the root, one name at a time, keeping no
    /// references (as if the kernel forgot them at once).
    fn ino(&self, path: &str) -> Result<u64> {
        let mut ino = ROOT_INO;
        for name in Path::new(path).iter() {
            let e = self
                .ov
                .lookup(ino, name.as_encoded_bytes())?
                .ok_or(Errno::NOENT)?;
            ino = e.node.hand_over().ino;
        }
        Ok(ino)
    }

    fn read(&self, ino: u64) -> Result<Vec<u8>> {
        let fh = self.ov.open(ino, libc::O_RDONLY, false)?;
        let data = self.ov.read(ino, fh, 0, 1 << 16);
        self.ov.release(fh);
        data
    }
}

fn me() -> Caller {
    Caller {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    }
}

#[test]
fn write_copies_up_and_keeps_the_inode_number() -> Result<()> {
    let f = fixture(&[("d/file", "lower data")])?;
    let ino = f.ino("d/file")?;
    assert_eq!(f.read(ino)?, b"lower data");
    assert!(!f.upper("d").exists());
    let fh = f.ov.open(ino, libc::O_WRONLY, false)?;
    assert_eq!(f.ov.write(ino, fh, 0, b"UPPER", false, false)?, 5);
    f.ov.release(fh);
    assert_eq!(std::fs::read(f.upper("d/file")).map_err(io)?, b"UPPER data");
    assert_eq!(f.ov.getattr(ino, None)?.1.st_size, 10);
    assert_eq!(f.ino("d/file")?, ino, "st_ino survives copy-up");
    Ok(())
}

#[test]
fn unlink_of_a_lower_file_leaves_a_whiteout() -> Result<()> {
    let f = fixture(&[("a", "x"), ("b", "y")])?;
    f.ov.remove(ROOT_INO, b"a", false)?;
    assert!(f.ov.lookup(ROOT_INO, b"a")?.is_none());
    let char_wh = f.upper("a").symlink_metadata().is_ok();
    let file_wh = f.upper(".wh.a").exists();
    assert!(char_wh != file_wh, "exactly one whiteout form");
    let names: Vec<Vec<u8>> =
        f.ov.list_dir(&*f.ov.node(ROOT_INO)?)?
            .into_iter()
            .map(|e| e.name.to_vec())
            .collect();
    assert_eq!(names, vec![b"b".to_vec()]);
    assert_eq!(f.ov.remove(ROOT_INO, b"a", false), Err(Errno::NOENT));
    Ok(())
}

#[test]
fn mkdir_over_a_deleted_lower_directory_is_opaque() -> Result<()> {
    let f = fixture(&[("d/old", "x")])?;
    assert_eq!(f.ov.remove(ROOT_INO, b"d", true), Err(Errno::NOTEMPTY));
    f.ov.remove(f.ino("d")?, b"old", false)?;
    f.ov.remove(ROOT_INO, b"d", true)?;
    let what = super::namespace::NewNode::Dir { mode: 0o755 };
    let e = f.ov.create_node(me(), ROOT_INO, b"d", 0o022, what)?;
    assert_eq!(e.node.kind, FileType::Directory);
    let d = e.node.hand_over().ino;
    assert!(
        f.ov.list_dir(&*f.ov.node(d)?)?.is_empty(),
        "the lower entry shows"
    );
    let fd = rustix::fs::open(
        f.upper("d"),
        rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )?;
    assert!(crate::format::opaque::is_opaque(&fd)?);
    Ok(())
}

#[test]
fn rename_within_upper_and_exdev_for_lower_directories() -> Result<()> {
    let f = fixture(&[("dir/x", "1"), ("f", "2")])?;
    f.ov.rename(ROOT_INO, b"f", ROOT_INO, b"g", 0)?;
    assert!(f.ov.lookup(ROOT_INO, b"f")?.is_none());
    assert_eq!(f.read(f.ino("g")?)?, b"2");
    assert_eq!(
        f.ov.rename(ROOT_INO, b"dir", ROOT_INO, b"dir2", 0),
        Err(Errno::XDEV)
    );
    let noreplace = rustix::fs::RenameFlags::NOREPLACE.bits();
    assert_eq!(
        f.ov.rename(ROOT_INO, b"g", ROOT_INO, b"dir", noreplace),
        Err(Errno::EXIST)
    );
    Ok(())
}

#[test]
fn lookup_references_are_given_back_when_not_handed_over() -> Result<()> {
    let f = fixture(&[("a", "x")])?;
    let e = f.ov.lookup(ROOT_INO, b"a")?.ok_or(Errno::NOENT)?;
    let ino = e.node.ino;
    drop(e);
    assert!(f.ov.inodes.get(ino).is_none(), "the node is freed");
    let kept =
        f.ov.lookup(ROOT_INO, b"a")?
            .ok_or(Errno::NOENT)?
            .node
            .hand_over();
    assert_eq!(kept.ino, ino, "the same number again");
    f.ov.inodes.forget(ino, 1);
    assert!(f.ov.inodes.get(ino).is_none());
    Ok(())
}

#[test]
fn lseek_answers_only_data_and_hole() -> Result<()> {
    let f = fixture(&[("a", "some data")])?;
    let ino = f.ino("a")?;
    // Through a handle, and without one (`no_open`).
    for fh in [f.ov.open(ino, libc::O_RDONLY, false)?, 0] {
        assert_eq!(f.ov.lseek(ino, fh, 0, libc::SEEK_DATA)?, 0);
        assert_eq!(f.ov.lseek(ino, fh, 0, libc::SEEK_HOLE)?, 9);
        assert_eq!(f.ov.lseek(ino, fh, 20, libc::SEEK_DATA), Err(Errno::NXIO));
        assert_eq!(f.ov.lseek(ino, fh, 3, libc::SEEK_CUR), Err(Errno::INVAL));
        assert_eq!(f.ov.lseek(ino, fh, 3, libc::SEEK_SET), Err(Errno::INVAL));
        f.ov.release(fh);
    }
    Ok(())
}

#[test]
fn without_a_handle_reads_serve_the_lower_file_and_the_first_write_copies_up() -> Result<()> {
    let f = fixture(&[("d/file", "lower data"), ("d/other", "untouched")])?;
    let ino = f.ino("d/file")?;
    assert_eq!(f.ov.read(ino, 0, 0, 64)?, b"lower data");
    assert_eq!(f.ov.read(ino, 0, 6, 64)?, b"data");
    assert!(!f.upper("d").exists(), "reads copy nothing up");
    assert_eq!(f.ov.write(ino, 0, 0, b"UPPER", false, false)?, 5);
    assert_eq!(std::fs::read(f.upper("d/file")).map_err(io)?, b"UPPER data");
    assert_eq!(f.ov.read(ino, 0, 0, 64)?, b"UPPER data");
    assert_eq!(f.ov.write(ino, 0, 0, b"+", false, true)?, 1);
    assert_eq!(f.ov.read(ino, 0, 0, 64)?, b"UPPER data+");
    assert!(!f.upper("d/other").exists(), "only the written file");
    assert_eq!(f.ino("d/file")?, ino, "st_ino survives the copy-up");
    let dir = f.ino("d")?;
    assert_eq!(f.ov.read(dir, 0, 0, 64), Err(Errno::ISDIR));
    Ok(())
}

#[test]
fn without_a_handle_fallocate_and_copy_file_range_copy_the_target_up() -> Result<()> {
    let f = fixture(&[("src", "0123456789"), ("dst", "abcdefghij")])?;
    let (src, dst) = (f.ino("src")?, f.ino("dst")?);
    assert_eq!(f.ov.copy_file_range((src, 0), 2, (dst, 0), 0, 3)?, 3);
    assert_eq!(std::fs::read(f.upper("dst")).map_err(io)?, b"234defghij");
    assert!(!f.upper("src").exists(), "the source is only read");
    f.ov.fallocate(src, 0, 0, 20, 0)?;
    assert_eq!(std::fs::metadata(f.upper("src")).map_err(io)?.len(), 20);
    f.ov.fsync(src, 0, false)?;
    Ok(())
}

#[test]
fn a_lookup_the_name_map_answers_costs_no_allocation() -> Result<()> {
    use crate::sys::raw::counting::allocations;
    let f = fixture(&[("d/file", "x"), ("d/sub/g", "y")])?;
    let d = f.ino("d")?;
    let file = f.ino("d/file")?;
    let sub = f.ino("d/sub")?;
    // Warm: the kernel holds the entries; every further lookup of them is
    // a name map hit.
    for (name, ino) in [(&b"file"[..], file), (&b"sub"[..], sub)] {
        let before = allocations();
        for _ in 0..100 {
            let e = f.ov.lookup(d, name)?.ok_or(Errno::NOENT)?;
            assert_eq!(e.node.ino, ino);
            e.node.hand_over();
        }
        assert_eq!(
            allocations() - before,
            0,
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    Ok(())
}

#[test]
fn a_node_remembers_its_xattrs_until_they_change() -> Result<()> {
    let f = fixture(&[("a", "x")])?;
    let ino = f.ino("a")?;
    let node = f.ov.node(ino)?;
    assert!(node.known_xattrs().is_err(), "unknown at first");
    assert_eq!(f.ov.getxattr(ino, b"user.x"), Err(Errno::NODATA));
    assert_eq!(
        node.known_xattrs().ok(),
        Some(true),
        "the lower file has none"
    );
    // A listing under way while the xattrs change is not remembered.
    node.forget_xattrs();
    let seen = node.known_xattrs().err().ok_or(Errno::IO)?;
    node.forget_xattrs();
    node.note_xattrs(seen, true, false);
    assert!(node.known_xattrs().is_err());
    // What was known of the lower file says nothing of its upper copy.
    assert_eq!(f.ov.getxattr(ino, b"user.x"), Err(Errno::NODATA));
    let fh = f.ov.open(ino, libc::O_WRONLY, false)?;
    f.ov.release(fh);
    assert!(node.known_xattrs().is_err(), "copied up");
    assert_eq!(f.ov.listxattr(ino)?, b"");
    assert_eq!(node.known_xattrs().ok(), Some(true), "the copy has none");
    f.ov.setxattr(ino, b"user.x", b"1", 0)?;
    assert_eq!(f.ov.getxattr(ino, b"user.x")?, b"1");
    assert_eq!(node.known_xattrs().ok(), Some(false));
    f.ov.removexattr(ino, b"user.x")?;
    assert_eq!(f.ov.getxattr(ino, b"user.x"), Err(Errno::NODATA));
    Ok(())
}
