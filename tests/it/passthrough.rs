//! FUSE passthrough (option `passthrough`, root only): the reads and writes
//! of files whose data is in the upper layer go from the kernel to the
//! upper file without a request; files read from a lower layer are served
//! by the daemon, so that a copy-up through another descriptor reaches
//! them. What programs see and what lands in the upper is the kernel
//! overlay's either way.

use crate::common::*;
use crate::no_open::{mmap_write, strata_stats};
use std::os::fd::OwnedFd;
use std::path::Path;

/// Whether this run can use passthrough; records the skip if not.
fn passthrough_here(test: &str) -> bool {
    if is_rootless() {
        skip(
            test,
            "passthrough needs root in the initial user namespace (the kernel \
             registers backing files only for CAP_SYS_ADMIN there)",
        );
        return false;
    }
    if no_open_everywhere() {
        skip(
            test,
            "this pass mounts with no_open, which passthrough cannot go with",
        );
        return false;
    }
    true
}

/// Stratafs with `passthrough` and the kernel overlay over `layers()`;
/// `None` (the skip recorded) where this run cannot use passthrough.
fn passthrough_pair(test: &str) -> Option<Pair> {
    passthrough_here(test).then(|| Pair::with_strata_options(&layers(), "passthrough"))
}

fn layers() -> TempStackBuilder {
    stack(
        vec![Layer::new()
            .file("dir/low", "lower data\n")
            .file("dir/big", "b".repeat(200_000))],
        Layer::new().file("up", "upper data\n"),
    )
}

/// The I/O of the first test: a new file written in many small writes and
/// read back, an upper file read, a lower file read and then appended to
/// (a copy-up) and read again.
fn small_io(m: &Path) -> Vec<Result<Vec<u8>, i32>> {
    let mut out = Vec::new();
    let fd = sys::open(&m.join("dir/new"), libc::O_CREAT | libc::O_WRONLY, 0o644);
    out.push(fd.and_then(|fd| {
        for i in 0..64 {
            sys::write(&fd, format!("line {i:03}\n").as_bytes())?;
        }
        Ok(Vec::new())
    }));
    out.push(sys::read_all(&m.join("dir/new")));
    out.push(sys::read_all(&m.join("up")));
    out.push(sys::read_all(&m.join("dir/low")));
    let fd = sys::open(&m.join("dir/low"), libc::O_WRONLY | libc::O_APPEND, 0);
    out.push(fd.and_then(|fd| sys::write(&fd, b"appended\n").map(|_| Vec::new())));
    out.push(sys::read_all(&m.join("dir/low")));
    out
}

#[test]
fn upper_files_are_read_and_written_without_requests() {
    let Some(p) = passthrough_pair("upper_files_are_read_and_written_without_requests") else {
        return;
    };
    let s = p.same("small I/O", small_io);
    assert_eq!(s[5].as_deref(), Ok(&b"lower data\nappended\n"[..]));
    let stats = strata_stats(&p.s.mnt);
    let req = &stats["requests"];
    assert_eq!(req["write"], 0, "every write passed through: {req}");
    // The one READ is the lower file's, read before its copy-up.
    assert_eq!(req["read"], 1, "{req}");
    p.assert_same_view();
    p.assert_same_upper();
    // What was written survives a remount.
    let Pair { sm, s: st, .. } = p;
    drop(sm);
    let _m = st.mount_strata_with("passthrough");
    assert_eq!(read_string(&st.m("dir/low")), "lower data\nappended\n");
    assert_eq!(read_string(&st.m("dir/new")).lines().count(), 64);
    // Without the option, the same I/O is served by the daemon.
    let st = layers().build(Markers::AsWritten);
    let _m = st.mount_strata_with("passthrough=0");
    small_io(&st.mnt);
    let stats = strata_stats(&st.mnt);
    assert_eq!(stats["requests"]["write"], 65, "{}", stats["requests"]);
}

/// Descriptors of one file open at once across its copy-up, then across
/// reopens once it is in the upper: every open succeeds (the kernel keeps
/// one I/O mode per open inode and fails an open of the other with EIO)
/// and every descriptor reads the latest data.
fn overlapping_opens(m: &Path) -> Vec<Result<Vec<u8>, i32>> {
    let f = m.join("dir/big");
    let mut out = Vec::new();
    let open = |flags| sys::open(&f, flags, 0);
    let read = |fd: &Result<OwnedFd, i32>| fd.clone_ok().and_then(|fd| sys::pread(&fd, 16, 0));
    let write = |fd: &Result<OwnedFd, i32>, data: &[u8], off| {
        fd.clone_ok()
            .and_then(|fd| sys::pwrite(&fd, data, off))
            .map(|_| Vec::new())
    };
    // A reader of the lower file, then a writer that copies it up.
    let r = open(libc::O_RDONLY);
    out.push(read(&r));
    let w = open(libc::O_WRONLY);
    out.push(write(&w, b"AAAA", 0));
    out.push(read(&r));
    drop(r);
    // Opens while the writer is still open, then after every close.
    let r2 = open(libc::O_RDONLY);
    out.push(read(&r2));
    drop(w);
    drop(r2);
    let a = open(libc::O_RDONLY);
    let b = open(libc::O_RDWR);
    out.push(write(&b, b"BB", 1));
    out.push(read(&a));
    out.push(
        b.clone_ok()
            .and_then(|b| mmap_write(&b, 3, b"CC"))
            .map(|_| Vec::new()),
    );
    out.push(read(&a));
    out.push(
        a.clone_ok()
            .and_then(|a| sys::fstat(&a))
            .map(|st| st.st_size.to_le_bytes().to_vec()),
    );
    out
}

/// `Result<OwnedFd, i32>` duplicated for one more use.
trait CloneOk {
    fn clone_ok(&self) -> Result<OwnedFd, i32>;
}

impl CloneOk for Result<OwnedFd, i32> {
    fn clone_ok(&self) -> Result<OwnedFd, i32> {
        match self {
            Ok(fd) => fd
                .try_clone()
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
            Err(e) => Err(*e),
        }
    }
}

#[test]
fn descriptors_open_across_a_copy_up_and_reopens_all_see_the_latest_data() {
    let Some(p) =
        passthrough_pair("descriptors_open_across_a_copy_up_and_reopens_all_see_the_latest_data")
    else {
        return;
    };
    let s = p.same("overlapping opens", overlapping_opens);
    assert!(s.iter().all(|r| r.is_ok()), "{s:?}");
    assert_eq!(s[7].as_deref(), Ok(&b"ABBCCbbbbbbbbbbb"[..]));
    p.assert_same_view();
    p.assert_same_upper();
}

#[test]
fn passthrough_where_the_mount_cannot_have_it_is_ignored_with_a_warning() {
    // Rootless the kernel would refuse the backing files; as root, with
    // `no_open` there are no opens to hand them over in.
    let opts = if is_rootless() {
        "passthrough"
    } else {
        "passthrough,no_open"
    };
    let st = layers().build(Markers::AsWritten);
    let m = st.mount_strata_with(opts);
    sys::write_file(&st.m("dir/new"), b"through the daemon", 0o644).expect("write");
    assert_eq!(read_string(&st.m("dir/new")), "through the daemon");
    let stats = strata_stats(&st.mnt);
    assert_eq!(stats["requests"]["write"], 1, "{}", stats["requests"]);
    let (_, stderr) = m.unmount_with_stderr();
    assert!(
        stderr.contains("option passthrough ignored"),
        "daemon stderr: {stderr}"
    );
    assert_eq!(
        std::fs::read(st.u("dir/new")).expect("upper file"),
        b"through the daemon"
    );
}

#[test]
fn a_read_only_mount_passes_every_file_through() {
    if !passthrough_here("a_read_only_mount_passes_every_file_through") {
        return;
    }
    // Nothing is copied up on a read-only mount, so lower files are
    // passed through too, where the mount has opens: with `no_open=0`
    // (its default `no_open` stays otherwise, without a warning).
    let lower = Layer::new()
        .file("dir/low", "lower data\n")
        .file("dir/big", "b".repeat(300_000));
    let spec = read_only_stack(vec![
        Layer::new()
            .file("dir/low", "top data\n")
            .whiteout("dir/gone"),
        lower.file("dir/gone", "hidden"),
    ]);
    let p = Pair::with_strata_options(&spec, "passthrough,no_open=0");
    let read = |m: &Path| {
        ["dir/low", "dir/big", "dir/gone"]
            .iter()
            .map(|n| sys::read_all(&m.join(n)))
            .collect::<Vec<_>>()
    };
    let (s, k) = p.both(read);
    assert_eq!(s, k, "stratafs (left), kernel overlay (right)");
    assert_eq!(s[0].as_deref(), Ok(&b"top data\n"[..]));
    assert_eq!(s[1].as_ref().map(Vec::len), Ok(300_000));
    let stats = strata_stats(&p.s.mnt);
    let req = &stats["requests"];
    assert_eq!(req["read"], 0, "every read passed through: {req}");
    assert_eq!(req["open"], 2, "{req}");
    p.assert_same_view();
    drop(p);
    let st = spec.build(Markers::Kernel);
    let m = st.mount_strata_with("passthrough");
    assert_eq!(read(&st.mnt), s);
    let stats = strata_stats(&st.mnt);
    let req = &stats["requests"];
    assert_eq!(req["open"], 1, "one OPEN, answered ENOSYS: {req}");
    assert!(
        req["read"].as_u64() > Some(0),
        "served by the daemon: {req}"
    );
    let (_, stderr) = m.unmount_with_stderr();
    assert!(!stderr.contains("passthrough"), "daemon stderr: {stderr}");
}
