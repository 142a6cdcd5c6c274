//! The only module with `unsafe` code: system calls that have no safe
//! wrapper in `rustix` (fork, signal masks, stdio redirection, heap
//! trimming, file handles, the filesystem uuid, `fchmodat2`,
//! `getxattrat` and `listxattrat`), and in test builds an allocator that
//! counts allocations. Each call is wrapped in a safe
//! function with a `SAFETY` note.
//!
//! Everything the filesystem does on layers goes through `rustix`, which
//! already offers safe, fd-based wrappers (see the sibling modules).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Outcome of [`fork`].
pub(crate) enum Fork {
    /// In the parent.
    Parent,
    /// In the child.
    Child,
}

/// `fork(2)`. Must be called while the process has a single thread.
pub(crate) fn fork() -> std::io::Result<Fork> {
    // SAFETY: fork has no memory-safety preconditions of its own; callers
    // only use it before any thread is spawned, so the child is a faithful
    // single-threaded copy.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        _ => Ok(Fork::Parent),
    }
}

/// `setsid(2)`: detach from the controlling terminal.
pub(crate) fn setsid() {
    // SAFETY: plain system call without pointer arguments.
    unsafe {
        libc::setsid();
    }
}

/// Point stdin, stdout and stderr at `/dev/null`.
pub(crate) fn stdio_to_devnull() {
    let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return;
    };
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `null` stays open for
        // the duration of the call and the targets are always valid numbers.
        unsafe {
            libc::dup2(null.as_raw_fd(), target);
        }
    }
}

/// The signals that ask the daemon to unmount and exit.
const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn stop_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block the stop signals in the calling thread (and so in every thread it
/// spawns afterwards), so that only [`wait_stop_signal`] receives them.
pub(crate) fn block_stop_signals() {
    let set = stop_sigset();
    // SAFETY: `set` is initialised; the old mask is not needed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Wait until one of the stop signals arrives; returns its number.
pub(crate) fn wait_stop_signal() -> i32 {
    let set = stop_sigset();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out pointer.
    unsafe {
        libc::sigwait(&set, &mut sig);
    }
    sig
}

/// Ignore SIGPIPE so that a closed pipe is an EPIPE error, not death.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN has no memory-safety implications.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Give freed heap memory back to the system (after the kernel forgot many
/// inodes at once, e.g. on memory pressure or `drop_caches`).
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `/proc/self/fd/N` for a descriptor: the way to reach an `O_PATH`
/// descriptor with calls that only take paths (xattrs, chmod, reopen).
pub(crate) fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// `fchmodat2(fd, "", mode, AT_EMPTY_PATH)` (Linux 6.6): chmod of the
/// object behind any descriptor, `O_PATH` ones included, without the
/// `/proc/self/fd/N` path (whose lookup costs about twice the chmod).
/// `ENOSYS` on older kernels.
pub(crate) fn fchmod_empty_path(fd: BorrowedFd<'_>, mode: u32) -> Result<(), rustix::io::Errno> {
    // SAFETY: the path is a NUL-terminated static string, the other
    // arguments are plain integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode as libc::c_uint,
            libc::AT_EMPTY_PATH,
        )
    };
    syscall_result(r).map(|_| ())
}

/// The argument block of `getxattrat(2)` (`struct xattr_args`).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// `getxattrat(dir, name, AT_SYMLINK_NOFOLLOW, attr, ..)` (Linux 6.13):
/// the attribute `attr` of `name` inside `dir`, not following a symlink,
/// into `buf`; its size. `ENOSYS` on older kernels.
pub(crate) fn getxattr_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    buf: &mut [u8],
) -> Result<usize, rustix::io::Errno> {
    let args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        flags: 0,
    };
    // SAFETY: `name` and `attr` are NUL-terminated; `args` points at
    // `buf`, valid for writes of `args.size` bytes for the whole call, and
    // its own size is passed as the kernel requires.
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            attr.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    syscall_result(r)
}

/// `listxattrat(dir, name, AT_SYMLINK_NOFOLLOW, ..)` (Linux 6.13): the
/// attribute names of `name` inside `dir`, not following a symlink, into
/// `buf`; their size. `ENOSYS` on older kernels.
pub(crate) fn listxattr_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    buf: &mut [u8],
) -> Result<usize, rustix::io::Errno> {
    // SAFETY: `name` is NUL-terminated; `buf` is valid for writes of its
    // length for the whole call.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    syscall_result(r)
}

// The *xattrat calls have the same number on these architectures (the
// common system call table); libc 0.2 does not name them yet. Elsewhere
// they are reported missing (`ENOSYS`) and the callers take the
// `/proc/self/fd` path.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const SYS_GETXATTRAT: libc::c_long = 464;
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const SYS_LISTXATTRAT: libc::c_long = 465;
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
const SYS_GETXATTRAT: libc::c_long = -1;
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
const SYS_LISTXATTRAT: libc::c_long = -1;

/// A raw `syscall(2)` result: the value, or the errno it failed with.
fn syscall_result(r: libc::c_long) -> Result<usize, rustix::io::Errno> {
    if r < 0 {
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        Err(rustix::io::Errno::from_raw_os_error(e))
    } else {
        Ok(r as usize)
    }
}

/// Raise the limit of open files: to the system maximum where permitted
/// (root), else the soft limit to the hard limit.
pub(crate) fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let lim = getrlimit(Resource::Nofile);
    if let Some(n) = nr_open {
        if lim.maximum.is_some_and(|m| m < n) {
            let all = Rlimit {
                current: Some(n),
                maximum: Some(n),
            };
            if setrlimit(Resource::Nofile, all).is_ok() {
                return;
            }
        }
    }
    if lim.current != lim.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
}

/// The longest file handle the kernel hands out (`MAX_HANDLE_SZ`).
const MAX_HANDLE: usize = 128;

/// `struct file_handle` with room for the longest handle.
#[repr(C)]
struct HandleBuf {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE],
}

/// A file handle, as `name_to_handle_at(2)` gives it: the handle type and
/// the handle bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileHandle {
    /// The exportfs fid type.
    pub(crate) kind: u8,
    /// The handle bytes.
    pub(crate) bytes: Vec<u8>,
}

/// `name_to_handle_at(2)` of `name` in `dir` (the object itself, a symlink
/// is not followed; `""` for `dir` itself).
pub(crate) fn name_to_handle(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<FileHandle> {
    let name = std::ffi::CString::new(name)?;
    let mut buf = HandleBuf {
        handle_bytes: MAX_HANDLE as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE],
    };
    let mut mount_id: libc::c_int = 0;
    let flags = if name.as_bytes().is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    // SAFETY: `buf` is a file_handle with `handle_bytes` bytes of room
    // after its header; `name` is NUL-terminated; `mount_id` is a valid out
    // pointer; the kernel writes nothing beyond these.
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            name.as_ptr(),
            (&mut buf as *mut HandleBuf).cast::<libc::file_handle>(),
            &mut mount_id,
            flags,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = (buf.handle_bytes as usize).min(MAX_HANDLE);
    Ok(FileHandle {
        kind: u8::try_from(buf.handle_type)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?,
        bytes: buf.f_handle[..len].to_vec(),
    })
}

/// `open_by_handle_at(2)`: open the object `h` names on the filesystem of
/// `mount` as an `O_PATH` descriptor. Needs `CAP_DAC_READ_SEARCH` in the
/// initial user namespace (`EPERM` otherwise).
pub(crate) fn open_by_handle(mount: BorrowedFd<'_>, h: &FileHandle) -> std::io::Result<OwnedFd> {
    if h.bytes.len() > MAX_HANDLE {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = HandleBuf {
        handle_bytes: h.bytes.len() as libc::c_uint,
        handle_type: libc::c_int::from(h.kind),
        f_handle: [0; MAX_HANDLE],
    };
    buf.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: `buf` is a valid file_handle whose `handle_bytes` bytes follow
    // its header; the kernel only reads it.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut buf as *mut HandleBuf).cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct fsuuid2` of `FS_IOC_GETFSUUID`.
#[repr(C)]
struct FsUuid2 {
    len: u8,
    uuid: [u8; 16],
}

/// `_IOR(0x15, 0, struct fsuuid2)`.
const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
/// `_IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)` (1024 bytes).
const BTRFS_IOC_FS_INFO: libc::c_ulong = 0x8400_941f;
/// `BTRFS_FS_INFO_FLAG_METADATA_UUID`.
const BTRFS_FS_INFO_METADATA_UUID: u64 = 1 << 2;

/// The uuid of the filesystem `fd` (an fd opened for reading, not `O_PATH`)
/// lives on, as the kernel keeps it for the superblock (`s_uuid`): what
/// `FS_IOC_GETFSUUID` says, or for btrfs, which lacks that call, its
/// metadata uuid. `None` when the filesystem tells none.
pub(crate) fn fs_uuid(fd: BorrowedFd<'_>) -> Option<[u8; 16]> {
    let mut u = FsUuid2 {
        len: 16,
        uuid: [0; 16],
    };
    // SAFETY: FS_IOC_GETFSUUID writes one `struct fsuuid2` to the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID, &mut u as *mut FsUuid2) };
    if r == 0 && u.len as usize == u.uuid.len() {
        return Some(u.uuid);
    }
    let mut info = [0u8; 1024];
    info[48..56].copy_from_slice(&BTRFS_FS_INFO_METADATA_UUID.to_ne_bytes());
    // SAFETY: BTRFS_IOC_FS_INFO reads and writes one 1024-byte
    // `btrfs_ioctl_fs_info_args`; `info` is that large.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), BTRFS_IOC_FS_INFO, info.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    let flags = u64::from_ne_bytes(info[48..56].try_into().ok()?);
    let at = if flags & BTRFS_FS_INFO_METADATA_UUID != 0 {
        64
    } else {
        16
    };
    info[at..at + 16].try_into().ok()
}

/// Test builds count the allocations of each thread, so that tests can
/// check that a path claimed to be allocation-free is.
#[cfg(test)]
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    struct Counting;

    // SAFETY: every call is passed to the system allocator unchanged; the
    // counter is a const-initialised thread-local without destructor, so
    // touching it never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            System.alloc(layout)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Allocations the calling thread made so far.
    pub(crate) fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }
}
