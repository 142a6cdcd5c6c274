//! errno values: from raw calls and `io::Error`s, their names, and
//! assertions on `Result<T, errno>`.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::sys;

/// errno of the last failed call of this thread.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Converts a `-1`-on-error return value into `Result<_, errno>`.
pub fn cvt<T: PartialEq + From<i8>>(ret: T) -> Result<T, i32> {
    if ret == T::from(-1) {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// Converts an `io::Result` into `Result<_, errno>`.
pub fn io_errno<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Human name of an errno value, for messages.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::ENXIO => "ENXIO",
        libc::ETXTBSY => "ETXTBSY",
        libc::E2BIG => "E2BIG",
        _ => "",
    };
    if name.is_empty() {
        format!("errno {e}")
    } else {
        format!("{name}({e})")
    }
}

/// `p` as a C string.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// `s` as a C string.
pub fn cstr(s: &str) -> CString {
    CString::new(s).expect("string without NUL")
}

/// Asserts that `r` failed with errno `e`.
#[track_caller]
pub fn assert_errno<T: fmt::Debug>(r: Result<T, i32>, e: i32, what: &str) {
    match r {
        Err(got) if got == e => {}
        Err(got) => panic!(
            "{what}: expected {}, got {}",
            errno_name(e),
            errno_name(got)
        ),
        Ok(v) => panic!("{what}: expected {}, got success ({v:?})", errno_name(e)),
    }
}

/// Asserts that `r` succeeded and returns the value.
#[track_caller]
pub fn assert_ok<T>(r: Result<T, i32>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: expected success, got {}", errno_name(e)),
    }
}

/// The file's content, panicking with the errno on failure.
#[track_caller]
pub fn read_string(p: &Path) -> String {
    match sys::read_all(p) {
        Ok(v) => String::from_utf8_lossy(&v).into_owned(),
        Err(e) => panic!("read {p:?}: {}", errno_name(e)),
    }
}
