//! The only module with `unsafe` code: process-level system calls that have
//! no safe wrapper in `rustix` (fork, signal masks, stdio redirection, heap
//! trimming), and in test builds an allocator that counts allocations. Each
//! call is wrapped in a safe function with a `SAFETY` note.
//!
//! Everything the filesystem does on layers goes through `rustix`, which
//! already offers safe, fd-based wrappers (see the sibling modules).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

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
