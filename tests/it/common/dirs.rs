//! Directory listings: through std, libc's `readdir` (with `telldir` and
//! `seekdir`) and raw `getdents64`.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::errno::{cpath, cvt, errno, io_errno};
use super::sys;

/// Names in a directory via std (no "." / "..").
pub fn list_dir(p: &Path) -> Result<Vec<String>, i32> {
    let rd = io_errno(fs::read_dir(p))?;
    let mut v = Vec::new();
    for e in rd {
        let e = io_errno(e)?;
        v.push(e.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

/// `opendir`/`readdir`/`telldir`/`seekdir` through libc.
pub struct LibcDir(*mut libc::DIR);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEnt {
    pub name: String,
    pub ino: u64,
    pub dtype: u8,
}

impl LibcDir {
    pub fn open(p: &Path) -> Result<LibcDir, i32> {
        let c = cpath(p);
        let d = unsafe { libc::opendir(c.as_ptr()) };
        if d.is_null() {
            Err(errno())
        } else {
            Ok(LibcDir(d))
        }
    }
    /// Next entry; `Ok(None)` at the end.
    pub fn next_entry(&mut self) -> Result<Option<DirEnt>, i32> {
        unsafe { *libc::__errno_location() = 0 };
        let e = unsafe { libc::readdir(self.0) };
        if e.is_null() {
            let err = errno();
            return if err == 0 { Ok(None) } else { Err(err) };
        }
        let e = unsafe { &*e };
        let name = unsafe { std::ffi::CStr::from_ptr(e.d_name.as_ptr()) };
        Ok(Some(DirEnt {
            name: name.to_string_lossy().into_owned(),
            ino: e.d_ino,
            dtype: e.d_type,
        }))
    }
    pub fn tell(&mut self) -> i64 {
        unsafe { libc::telldir(self.0) as i64 }
    }
    pub fn seek(&mut self, pos: i64) {
        unsafe { libc::seekdir(self.0, pos as libc::c_long) }
    }
    pub fn rewind(&mut self) {
        unsafe { libc::rewinddir(self.0) }
    }
    pub fn all(&mut self) -> Vec<DirEnt> {
        let mut v = Vec::new();
        while let Some(e) = self.next_entry().expect("readdir") {
            v.push(e);
        }
        v
    }
}

impl Drop for LibcDir {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.0) };
    }
}

/// Reads a directory with raw getdents64 calls using a buffer of `bufsize`
/// bytes; returns the names and the number of syscalls that returned data.
pub fn getdents_all(p: &Path, bufsize: usize) -> Result<(Vec<DirEnt>, usize), i32> {
    let fd = sys::open(p, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut buf = vec![0u8; bufsize];
    let mut out = Vec::new();
    let mut calls = 0;
    loop {
        let n = cvt(unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        })? as usize;
        if n == 0 {
            return Ok((out, calls));
        }
        calls += 1;
        let mut off = 0;
        while off < n {
            let ino = u64::from_ne_bytes(buf[off..off + 8].try_into().unwrap());
            let reclen = u16::from_ne_bytes(buf[off + 16..off + 18].try_into().unwrap()) as usize;
            let dtype = buf[off + 18];
            let name_bytes = &buf[off + 19..off + reclen];
            let end = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            out.push(DirEnt {
                name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
                ino,
                dtype,
            });
            off += reclen;
        }
    }
}
