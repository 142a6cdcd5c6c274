//! `no_open`: the kernel opens existing files without asking the daemon
//! (no OPEN or RELEASE), and their reads and writes are served by inode. A
//! file is then copied up at its first write or truncate instead of at the
//! open for writing; everything a program sees, and what lands in the upper
//! once it wrote, is what the kernel overlay shows and writes.

use crate::common::*;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

fn lower_layer() -> Layer {
    let mut l = Layer::new();
    for n in ["a", "b", "c", "d", "e", "f", "g", "h", "k", "src"] {
        l = l.file(&format!("dir/{n}"), format!("lower {n} data"));
    }
    l.file("dir/big", "x".repeat(300_000))
        .file("dir/exe", "#!/bin/sh\necho ran\n")
        .mode(0o755)
}

fn lowers() -> TempStackBuilder {
    stack(vec![lower_layer()], Layer::new().file("up", "upper file"))
}

fn cvt(r: libc::ssize_t) -> Result<usize, i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(r as usize)
    }
}

fn copy_range(
    from: &OwnedFd,
    to: &OwnedFd,
    off_in: i64,
    off_out: i64,
    len: usize,
) -> Result<usize, i32> {
    let (mut a, mut b) = (off_in, off_out);
    // SAFETY: both descriptors are open; the offsets are local variables.
    cvt(
        unsafe { libc::copy_file_range(from.as_raw_fd(), &mut a, to.as_raw_fd(), &mut b, len, 0) }
            as libc::ssize_t,
    )
}

fn fallocate(fd: &OwnedFd, off: i64, len: i64) -> Result<(), i32> {
    // SAFETY: plain system call on an open descriptor.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), 0, off, len) } as libc::ssize_t).map(drop)
}

/// Drop the pages of the file open as `fd` from the page cache.
fn drop_cache(fd: &OwnedFd) -> Result<(), i32> {
    // SAFETY: plain system call on an open descriptor.
    match unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) } {
        0 => Ok(()),
        e => Err(e),
    }
}

/// Write `data` at `off` of the file open as `fd` through a shared mapping
/// of its first page, then sync it.
pub(crate) fn mmap_write(fd: &OwnedFd, off: usize, data: &[u8]) -> Result<(), i32> {
    // SAFETY: a fresh shared mapping of one page of an open file, written
    // inside its bounds (the files here are longer than `off + data`), then
    // synced and unmapped before return.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        std::ptr::copy_nonoverlapping(data.as_ptr(), (p as *mut u8).add(off), data.len());
        let r = libc::msync(p, 4096, libc::MS_SYNC);
        libc::munmap(p, 4096);
        cvt(r as libc::ssize_t).map(drop)
    }
}

/// What a program does to the merged tree (every step that writes writes
/// something: an open for writing alone is where `no_open` differs), with
/// what each step returned.
fn program(m: &Path) -> Vec<(&'static str, Result<Vec<u8>, i32>)> {
    let p = |r: &str| m.join(r);
    let ok = |r: Result<(), i32>| r.map(|()| Vec::new());
    let mut out = Vec::new();
    out.push(("read a", sys::read_all(&p("dir/a"))));
    out.push(("append b", {
        let r = sys::open(&p("dir/b"), libc::O_WRONLY | libc::O_APPEND, 0)
            .and_then(|fd| sys::write(&fd, b" appended"));
        r.and_then(|_| sys::read_all(&p("dir/b")))
    }));
    out.push((
        "pwrite c",
        sys::open(&p("dir/c"), libc::O_RDWR, 0).and_then(|fd| {
            sys::pwrite(&fd, b"XY", 2)?;
            // Read back through the same descriptor.
            sys::pread(&fd, 64, 0)
        }),
    ));
    out.push(("O_TRUNC d", {
        let r = sys::open(&p("dir/d"), libc::O_WRONLY | libc::O_TRUNC, 0)
            .and_then(|fd| sys::write(&fd, b"new d"));
        r.and_then(|_| sys::read_all(&p("dir/d")))
    }));
    out.push(("truncate e", ok(sys::truncate(&p("dir/e"), 3))));
    out.push(("mmap f", {
        let r = sys::open(&p("dir/f"), libc::O_RDWR, 0).and_then(|fd| mmap_write(&fd, 1, b"MM"));
        r.and_then(|()| sys::read_all(&p("dir/f")))
    }));
    out.push(("fallocate g", {
        let r = sys::open(&p("dir/g"), libc::O_RDWR, 0).and_then(|fd| fallocate(&fd, 0, 8192));
        r.and_then(|()| sys::stat(&p("dir/g")).map(|st| st.st_size.to_string().into_bytes()))
    }));
    out.push(("copy_file_range src -> h", {
        let r = sys::open(&p("dir/src"), libc::O_RDONLY, 0).and_then(|from| {
            let to = sys::open(&p("dir/h"), libc::O_WRONLY, 0)?;
            copy_range(&from, &to, 6, 0, 4)
        });
        r.and_then(|_| sys::read_all(&p("dir/h")))
    }));
    // A file read while another descriptor copies it up.
    out.push(("read big across a copy-up", {
        sys::open(&p("dir/big"), libc::O_RDONLY, 0).and_then(|rd| {
            let head = sys::pread(&rd, 4, 0)?;
            let wr = sys::open(&p("dir/big"), libc::O_WRONLY, 0)?;
            sys::pwrite(&wr, b"BIG!", 0)?;
            // Past the page cache: the read must reach the daemon, which
            // must serve it from the copy.
            drop_cache(&rd)?;
            let mut after = sys::pread(&rd, 8, 0)?;
            let mut v = head;
            v.append(&mut after);
            Ok(v)
        })
    }));
    // Upper and copied-up files removed or replaced while open stay
    // readable and writable through the descriptor.
    out.push(("unlinked upper file", {
        sys::open(&p("up"), libc::O_RDWR, 0).and_then(|fd| {
            sys::unlink(&p("up"))?;
            sys::pwrite(&fd, b"UP", 0)?;
            sys::pread(&fd, 64, 0)
        })
    }));
    out.push(("renamed over while open", {
        let r = sys::open(&p("dir/c"), libc::O_RDWR, 0).and_then(|fd| {
            sys::rename(&p("dir/a"), &p("dir/c"))?;
            sys::pwrite(&fd, b"Z", 0)?;
            sys::pread(&fd, 64, 0)
        });
        r.and_then(|mut v| {
            v.extend(b" / now ");
            v.extend(sys::read_all(&p("dir/c"))?);
            Ok(v)
        })
    }));
    out.push(("unlinked lower file", {
        sys::open(&p("dir/k"), libc::O_RDONLY, 0).and_then(|fd| {
            sys::unlink(&p("dir/k"))?;
            sys::pread(&fd, 64, 0)
        })
    }));
    // A file created read-only and written through its descriptor (git's
    // objects), and one made read-only while open.
    out.push(("created read-only", {
        sys::open(
            &p("dir/ro"),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o444,
        )
        .and_then(|fd| {
            sys::write(&fd, b"object")?;
            sys::chmod(&p("dir/ro"), 0o400)?;
            sys::write(&fd, b" more")?;
            sys::pread(&fd, 64, 0)
        })
    }));
    // A lower file open for writing, removed, then written: the kernel
    // overlay copied it at the open; here the first write makes a copy no
    // name leads to.
    out.push(("written after its removal", {
        sys::open(&p("dir/src"), libc::O_RDWR, 0).and_then(|fd| {
            sys::unlink(&p("dir/src"))?;
            sys::pwrite(&fd, b"SRC", 0)?;
            let mut v = sys::pread(&fd, 64, 0)?;
            v.extend(format!(" nlink {}", sys::fstat(&fd)?.st_nlink).into_bytes());
            Ok(v)
        })
    }));
    out.push(("exec", {
        Command::new(p("dir/exe"))
            .stdin(Stdio::null())
            .output()
            .map(|o| o.stdout)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }));
    out.push(("read a again", sys::read_all(&p("dir/a"))));
    out
}

#[test]
fn reads_writes_and_copy_ups_without_opens_match_the_kernel_overlay() {
    let desc = lowers();
    let pair = Pair::with_strata_options(&desc, "no_open");
    let (s, k) = pair.both(program);
    for ((what, a), (_, b)) in s.iter().zip(&k) {
        assert_eq!(
            a, b,
            "{what}: stratafs with no_open (left), kernel overlay (right)"
        );
    }
    pair.assert_same_view();
    pair.assert_same_upper();
    let stats = strata_stats(&pair.s.mnt);
    assert_eq!(
        stats["requests"]["open"], 1,
        "one OPEN, answered ENOSYS: {}",
        stats["requests"]
    );
    drop(pair.sm);
    assert_eq!(read_string(&pair.s.u("dir/b")), "lower b data appended");
    assert_eq!(read_string(&pair.s.u("dir/d")), "new d");
    assert_eq!(read_string(&pair.s.u("dir/c")), "lower a data");
}

#[test]
fn an_open_for_writing_copies_up_at_the_first_write_with_no_open() {
    let s = lowers().build(Markers::AsWritten);
    let m = s.mount_strata_with("no_open");
    let fd = assert_ok(sys::open(&s.m("dir/a"), libc::O_RDWR, 0), "open");
    // The kernel overlay copies up here; without OPEN the daemon does not
    // know of the open.
    assert!(!s.u("dir/a").exists(), "no copy before the first write");
    assert_eq!(assert_ok(sys::pread(&fd, 64, 0), "read"), b"lower a data");
    assert_ok(sys::pwrite(&fd, b"A", 0), "write");
    assert_eq!(read_string(&s.u("dir/a")), "Aower a data");
    drop(fd);
    // Without the option the copy is made at the open, as on the kernel.
    drop(m);
    if no_open_everywhere() {
        return skip(
            "an_open_for_writing_copies_up_at_the_first_write_with_no_open",
            "the mount without no_open: every mount of this run has it",
        );
    }
    let _m = s.mount_strata();
    drop(assert_ok(
        sys::open(&s.m("dir/b"), libc::O_WRONLY, 0),
        "open",
    ));
    assert_eq!(read_string(&s.u("dir/b")), "lower b data");
}

#[test]
fn no_open_survives_a_remount_and_serves_files_made_by_create() {
    let s = lowers().build(Markers::AsWritten);
    {
        let _m = s.mount_strata_with("no_open");
        assert_ok(
            sys::write_file(&s.m("dir/new"), b"created", 0o644),
            "create",
        );
        let fd = assert_ok(
            sys::open(&s.m("dir/new"), libc::O_RDWR | libc::O_APPEND, 0),
            "open",
        );
        assert_ok(sys::write(&fd, b" and appended"), "append");
        let fd2 = assert_ok(
            sys::open(&s.m("dir/g"), libc::O_WRONLY | libc::O_APPEND, 0),
            "open g",
        );
        assert_ok(sys::write(&fd2, b"!"), "append g");
    }
    let _m = s.mount_strata_with("no_open");
    assert_eq!(read_string(&s.m("dir/new")), "created and appended");
    assert_eq!(read_string(&s.m("dir/g")), "lower g data!");
}

#[test]
fn no_open_is_ignored_with_fault_rules() {
    let s = lowers().build(Markers::AsWritten);
    let tmp = tempdir();
    let rules = faults_file(
        tmp.path(),
        "faults.toml",
        "[[rule]]\nop = \"read\"\npath = \"/nothing/*\"\nerrno = \"EIO\"\n",
    );
    let m = s.mount_strata_with(&format!("no_open,faults={}", rules.display()));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(read_string(&s.m("dir/a")), "lower a data");
    let stats = strata_stats(&s.mnt);
    assert_eq!(stats["requests"]["open"], 1, "the open was asked for");
    let (_, stderr) = m.unmount_with_stderr();
    assert!(stderr.contains("no_open ignored"), "{stderr}");
}

/// Read `names` under `m`, each through its own open, and once through a
/// shared read-only mapping; what each read gave.
fn read_each(m: &Path, names: &[&str]) -> Vec<Result<Vec<u8>, i32>> {
    let mut out = Vec::new();
    for n in names {
        out.push(
            sys::open(&m.join(n), libc::O_RDONLY, 0).and_then(|fd| sys::pread(&fd, 1 << 20, 0)),
        );
    }
    out.push(std::fs::read(m.join(names[0])).map_err(|e| e.raw_os_error().unwrap_or(0)));
    out
}

#[test]
fn a_read_only_mount_opens_files_without_open_unless_told_not_to() {
    let names = ["dir/a", "dir/big", "dir/exe", "dir/src"];
    let spec = read_only_stack(vec![lower_layer(), Layer::new()]);
    let p = Pair::new(&spec);
    let (s, k) = p.both(|m| read_each(m, &names));
    assert_eq!(s, k, "reads: stratafs (left), kernel overlay (right)");
    assert_eq!(s[1].as_ref().map(Vec::len), Ok(300_000));
    // Opens for writing are refused by the read-only mount itself.
    let (s, k) = p.both(|m| sys::open(&m.join("dir/a"), libc::O_RDWR, 0).map(drop));
    assert_eq!((s, k), (Err(libc::EROFS), Err(libc::EROFS)));
    let stats = strata_stats(&p.s.mnt);
    assert_eq!(
        stats["requests"]["open"],
        1,
        "one OPEN, answered ENOSYS, for {} opens: {}",
        names.len() + 1,
        stats["requests"]
    );
    assert_eq!(stats["requests"]["release"], 0, "{}", stats["requests"]);
    p.assert_same_view();
    drop(p);
    // `no_open=0` keeps the opens; `ro` with an upper dir is read-only too.
    let st = spec.build(Markers::Kernel);
    let m = st.mount_strata_with("no_open=0");
    let got = read_each(&st.mnt, &names);
    assert!(got.iter().all(|r| r.is_ok()), "{got:?}");
    let stats = strata_stats(&st.mnt);
    assert_eq!(
        stats["requests"]["open"],
        names.len() + 1,
        "{}",
        stats["requests"]
    );
    drop(m);
    let rw = lowers().build(Markers::AsWritten);
    let _m = rw.mount_strata_with("ro");
    assert_eq!(read_string(&rw.m("dir/a")), "lower a data");
    assert_eq!(read_string(&rw.m("up")), "upper file");
    let stats = strata_stats(&rw.mnt);
    assert_eq!(stats["requests"]["open"], 1, "{}", stats["requests"]);
    assert_eq!(
        sys::open(&rw.m("dir/a"), libc::O_WRONLY, 0).map(drop),
        Err(libc::EROFS)
    );
}

/// Every name under `dir` (relative), listed by `readdir`, sorted.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{d:?}: {e}")) {
            let e = e.expect("entry");
            let p = e.path();
            out.push(
                p.strip_prefix(dir)
                    .expect("under dir")
                    .display()
                    .to_string(),
            );
            if e.file_type().expect("type").is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_read_only_mount_lists_directories_without_handles() {
    // A directory of many READDIR batches merged from two layers, with
    // whiteouts and an opaque directory.
    let mut top = Layer::new()
        .whiteout("big/n0007")
        .whiteout("big/n0300")
        .opaque("op")
        .file("op/new", "n");
    let mut bottom = Layer::new().file("op/old", "o").dir("empty");
    for i in 0..600 {
        let name = format!("big/n{i:04}-with-a-longer-name-to-fill-the-batches");
        if i % 2 == 0 {
            top = top.file(&name, "t");
        } else {
            bottom = bottom.file(&name, "b");
        }
        bottom = bottom.file(&format!("big/n{i:04}"), "b");
    }
    let spec = read_only_stack(vec![top, bottom]);
    let p = Pair::new(&spec);
    let (s1, k) = p.both(walk_names);
    assert_eq!(s1, k, "names: stratafs (left), kernel overlay (right)");
    assert_eq!(s1.iter().filter(|n| n.starts_with("big/")).count(), 1198);
    assert!(!s1.contains(&"op/old".to_string()));
    // Again: from the kernel's cache of the listings.
    assert_eq!(walk_names(&p.s.mnt), s1);
    p.assert_same_view();
    let stats = strata_stats(&p.s.mnt);
    let r = &stats["requests"];
    assert_eq!(r["opendir"], 1, "one OPENDIR, answered ENOSYS: {r}");
    assert_eq!(r["releasedir"], 0, "{r}");
    // Each directory listed once, however often it was walked.
    let dirs = 1 + s1
        .iter()
        .filter(|n| ["big", "op", "empty"].contains(&n.as_str()))
        .count();
    let reads = r["readdir"].as_u64().unwrap_or(0) + r["readdirplus"].as_u64().unwrap_or(0);
    assert!(reads > dirs as u64, "several batches for big/: {r}");
    drop(p);
    // A harness listing order needs handles: the opens stay.
    let st = spec.build(Markers::Kernel);
    let _m = st.mount_strata_with("readdir_order=sorted");
    let names = walk_names(&st.mnt);
    assert_eq!(names, s1);
    // RELEASEDIR comes after the close, asynchronously: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = strata_stats(&st.mnt)["requests"].clone();
        if r["opendir"] == r["releasedir"] || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(r["opendir"].as_u64().unwrap_or(0) >= 4, "{r}");
    assert_eq!(r["opendir"], r["releasedir"], "{r}");
}

/// The mount's request counters (`stratafs ctl MNT stats --json`).
pub(crate) fn strata_stats(mnt: &Path) -> serde_json::Value {
    let out = ctl(mnt, &["stats", "--json"]).unwrap_or_else(|e| panic!("stratafs ctl: {e}"));
    serde_json::from_str(&out).expect("stats JSON")
}
