//! Raw syscall wrappers. Every function returns `Err(errno)` on failure and
//! never follows a final symlink unless its name says so.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::errno::{cpath, cstr, cvt};

pub fn lstat(p: &Path) -> Result<libc::stat, i32> {
    let c = cpath(p);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn stat(p: &Path) -> Result<libc::stat, i32> {
    let c = cpath(p);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::stat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

/// The `f_type` of the filesystem `p` is on.
pub fn fs_type(p: &Path) -> Result<i64, i32> {
    let c = cpath(p);
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::statfs(c.as_ptr(), &mut st) })?;
    Ok(st.f_type as i64)
}

/// Whether the filesystem `p` is on writes file handles that start with the
/// inode number (ext2/3/4, XFS): stratafs reads origin records of such
/// layers without opening them (rootless).
pub fn handles_name_inodes(p: &Path) -> bool {
    matches!(fs_type(p), Ok(0xEF53) | Ok(0x5846_5342))
}

pub fn fstat(fd: &OwnedFd) -> Result<libc::stat, i32> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn open(p: &Path, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    let c = cpath(p);
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn pwrite(fd: &OwnedFd, data: &[u8], off: i64) -> Result<usize, i32> {
    let n = cvt(unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) })?;
    Ok(n as usize)
}

pub fn write(fd: &OwnedFd, data: &[u8]) -> Result<usize, i32> {
    let n = cvt(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })?;
    Ok(n as usize)
}

pub fn pread(fd: &OwnedFd, len: usize, off: i64) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    let n = cvt(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, off) })?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// Reads the whole file (follows symlinks, like open(2)).
pub fn read_all(p: &Path) -> Result<Vec<u8>, i32> {
    let fd = open(p, libc::O_RDONLY, 0)?;
    read_fd_all(&fd)
}

pub fn read_fd_all(fd: &OwnedFd) -> Result<Vec<u8>, i32> {
    let mut out = Vec::new();
    loop {
        let chunk = pread(fd, 65536, out.len() as i64)?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

/// open(O_WRONLY|O_CREAT|O_TRUNC) + write + close.
pub fn write_file(p: &Path, data: &[u8], mode: u32) -> Result<(), i32> {
    let fd = open(p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, mode)?;
    let mut done = 0;
    while done < data.len() {
        done += pwrite(&fd, &data[done..], done as i64)?;
    }
    Ok(())
}

pub fn mkdir(p: &Path, mode: u32) -> Result<(), i32> {
    let c = cpath(p);
    cvt(unsafe { libc::mkdir(c.as_ptr(), mode) }).map(drop)
}

pub fn rmdir(p: &Path) -> Result<(), i32> {
    let c = cpath(p);
    cvt(unsafe { libc::rmdir(c.as_ptr()) }).map(drop)
}

pub fn unlink(p: &Path) -> Result<(), i32> {
    let c = cpath(p);
    cvt(unsafe { libc::unlink(c.as_ptr()) }).map(drop)
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

pub fn rename2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let a = cpath(from);
    let b = cpath(to);
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    cvt(r).map(drop)
}

pub fn rename(from: &Path, to: &Path) -> Result<(), i32> {
    rename2(from, to, 0)
}

pub fn link(from: &Path, to: &Path) -> Result<(), i32> {
    let a = cpath(from);
    let b = cpath(to);
    cvt(unsafe { libc::link(a.as_ptr(), b.as_ptr()) }).map(drop)
}

pub fn symlink(target: &str, p: &Path) -> Result<(), i32> {
    let t = cstr(target);
    let c = cpath(p);
    cvt(unsafe { libc::symlink(t.as_ptr(), c.as_ptr()) }).map(drop)
}

pub fn readlink(p: &Path) -> Result<Vec<u8>, i32> {
    let c = cpath(p);
    let mut buf = vec![0u8; 8192];
    let n = cvt(unsafe { libc::readlink(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn mknod(p: &Path, mode: u32, dev: u64) -> Result<(), i32> {
    let c = cpath(p);
    cvt(unsafe { libc::mknod(c.as_ptr(), mode, dev) }).map(drop)
}

pub fn mkfifo(p: &Path, mode: u32) -> Result<(), i32> {
    mknod(p, libc::S_IFIFO | mode, 0)
}

pub fn chmod(p: &Path, mode: u32) -> Result<(), i32> {
    let c = cpath(p);
    cvt(unsafe { libc::chmod(c.as_ptr(), mode) }).map(drop)
}

pub fn lchown(p: &Path, uid: u32, gid: u32) -> Result<(), i32> {
    let c = cpath(p);
    cvt(unsafe { libc::lchown(c.as_ptr(), uid, gid) }).map(drop)
}

pub fn truncate(p: &Path, len: i64) -> Result<(), i32> {
    let c = cpath(p);
    cvt(unsafe { libc::truncate(c.as_ptr(), len) }).map(drop)
}

/// utimensat(AT_FDCWD, p, [atime, mtime], AT_SYMLINK_NOFOLLOW); times
/// are (sec, nsec).
pub fn lutimes(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<(), i32> {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn lsetxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let c = cpath(p);
    let n = cstr(name);
    cvt(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn lgetxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let c = cpath(p);
    let n = cstr(name);
    loop {
        let size =
            cvt(unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size as usize + 1];
        match cvt(unsafe {
            libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }) {
            Ok(len) => {
                buf.truncate(len as usize);
                return Ok(buf);
            }
            Err(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Raw lgetxattr with a caller-chosen buffer size (0 = size query).
pub fn lgetxattr_sized(p: &Path, name: &str, size: usize) -> Result<isize, i32> {
    let c = cpath(p);
    let n = cstr(name);
    let mut buf = vec![0u8; size.max(1)];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    cvt(unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), ptr, size) })
}

pub fn llistxattr(p: &Path) -> Result<Vec<String>, i32> {
    let c = cpath(p);
    loop {
        let size = cvt(unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size as usize + 1];
        match cvt(unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }) {
            Ok(len) => {
                buf.truncate(len as usize);
                let mut names: Vec<String> = buf
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
                names.sort();
                return Ok(names);
            }
            Err(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Raw llistxattr with a caller-chosen buffer size (0 = size query).
pub fn llistxattr_sized(p: &Path, size: usize) -> Result<isize, i32> {
    let c = cpath(p);
    let mut buf = vec![0u8; size.max(1)];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    cvt(unsafe { libc::llistxattr(c.as_ptr(), ptr, size) })
}

pub fn lremovexattr(p: &Path, name: &str) -> Result<(), i32> {
    let c = cpath(p);
    let n = cstr(name);
    cvt(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }).map(drop)
}

pub fn statvfs(p: &Path) -> Result<libc::statvfs, i32> {
    let c = cpath(p);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (major as u64, minor as u64);
    ((ma & 0xfffff000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffffff00) << 12) | (mi & 0xff)
}

pub fn major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

pub fn minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

pub fn mount(src: &str, target: &Path, fstype: &str, flags: u64, data: &str) -> Result<(), i32> {
    let s = cstr(src);
    let t = cpath(target);
    let f = cstr(fstype);
    let d = cstr(data);
    cvt(unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags as libc::c_ulong,
            d.as_ptr().cast(),
        )
    })
    .map(drop)
}

pub fn umount2(target: &Path, flags: i32) -> Result<(), i32> {
    let t = cpath(target);
    cvt(unsafe { libc::umount2(t.as_ptr(), flags) }).map(drop)
}

/// `name_to_handle_at(2)` of `p` itself (a symlink is not followed): the
/// handle type and bytes.
pub fn name_to_handle(p: &Path) -> Option<(u8, Vec<u8>)> {
    #[repr(C)]
    struct Buf {
        bytes: libc::c_uint,
        kind: libc::c_int,
        handle: [u8; 128],
    }
    let mut b = Buf {
        bytes: 128,
        kind: 0,
        handle: [0; 128],
    };
    let mut mnt: libc::c_int = 0;
    let c = cpath(p);
    // SAFETY: `b` is a file_handle with 128 bytes of room after its header.
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            (&mut b as *mut Buf).cast(),
            &mut mnt,
            0,
        )
    };
    (r == 0).then(|| (b.kind as u8, b.handle[..b.bytes as usize].to_vec()))
}

/// `CAP_FSETID` (linux/capability.h).
pub const CAP_FSETID: u32 = 4;

/// Raises (`on`) or drops capability `cap` (a `CAP_*` number below 32)
/// in the effective set of the calling thread only (capabilities are per
/// thread); the permitted set is kept, so a dropped one can be raised again.
pub fn set_effective_cap(cap: u32, on: bool) -> Result<(), i32> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version 3 header and the two data words that version uses.
    cvt(unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } as i32)?;
    if on {
        data[0].effective |= 1 << cap;
    } else {
        data[0].effective &= !(1 << cap);
    }
    // SAFETY: as above; pid 0 is the calling thread.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } as i32)?;
    Ok(())
}
