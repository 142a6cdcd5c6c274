//! Test-harness mode on real mounts: every fault action and trigger, seeded
//! runs that repeat, the trace of a known sequence, faults that leave the
//! layers alone, listing orders, metrics, and the control socket (who may
//! use it, what it can do, SIGHUP).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stratafs::api::{
    op, BackgroundMount, Errno, Layer, Op, ReaddirOrder, Rule, TempStack, TraceRecord,
};

use crate::common::*;

// ------------------------------------------------------------------ helpers

/// Wait until the control socket of the mount at `mnt` answers (a `-f`
/// daemon starts it just after the mount goes live).
fn wait_control(mnt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ctl(mnt, &["info"]) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("control socket of {mnt:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A stack with `lower` under an empty upper, mounted by the daemon with
/// the extra options `extra`.
fn daemon_no_wait(lower: Layer, extra: &str) -> (Mount, Stack) {
    let st = stack(vec![lower], Layer::new()).build(Markers::Kernel);
    let opts = if extra.is_empty() {
        st.overlay_opts()
    } else {
        format!("{},{extra}", st.overlay_opts())
    };
    let m = try_mount_stratafs(&opts, &st.mnt).unwrap_or_else(|e| panic!("{e}"));
    (m, st)
}

/// [`daemon_no_wait`], once the control socket answers.
fn daemon(lower: Layer, extra: &str) -> (Mount, Stack) {
    let (m, st) = daemon_no_wait(lower, extra);
    wait_control(&st.mnt);
    (m, st)
}

/// An in-process mount of `stack` with `rules` and the in-memory trace.
fn library(stack: &TempStack, rules: Vec<Rule>) -> BackgroundMount {
    let mut b = stack.builder().record_trace();
    for r in rules {
        b = b.fault(r);
    }
    b.mount(stack.mountpoint()).unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// The calling thread's id, as FUSE reports the caller.
fn tid() -> u32 {
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// `n` opens of `p` for reading: which failed, with what.
fn open_results(p: &Path, n: usize) -> Vec<Option<i32>> {
    (0..n).map(|_| errno_of(fs::File::open(p))).collect()
}

/// The numbers (1-based) of the failed attempts.
fn failed(results: &[Option<i32>]) -> Vec<usize> {
    results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|_| i + 1))
        .collect()
}

/// Everything about a tree that a fault could change: type, mode, owner,
/// size, mtime, device, content, link target and xattrs of every object.
fn tree_digest(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let st = sys::lstat(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let kind = st.st_mode & libc::S_IFMT;
        let content = match kind {
            libc::S_IFREG => fnv1a(&fs::read(&p).unwrap()),
            libc::S_IFLNK => fnv1a(&sys::readlink(&p).unwrap()),
            _ => 0,
        };
        let mut xattrs: Vec<String> = sys::llistxattr(&p)
            .unwrap_or_default()
            .into_iter()
            .map(|n| {
                let v = sys::lgetxattr(&p, &n).unwrap_or_default();
                format!("{n}={}", fnv1a(&v))
            })
            .collect();
        xattrs.sort();
        out.push(format!(
            "{rel} mode={:o} uid={} gid={} size={} mtime={}.{} rdev={} data={content:x} xattrs={xattrs:?}",
            st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime, st.st_mtime_nsec, st.st_rdev
        ));
        if kind == libc::S_IFDIR {
            for e in fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// Digests of the upper and every lower layer of a stack.
fn layers_digest(s: &TempStack) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = s.lowers().iter().map(|l| tree_digest(l)).collect();
    v.push(tree_digest(&s.upper()));
    v
}

/// What a test compares of a trace record: op, path, path2, result, fault.
type Shape = (String, String, Option<String>, String, Option<u64>);

fn shape(records: &[TraceRecord]) -> Vec<Shape> {
    records
        .iter()
        .map(|r| {
            (
                r.op.name().to_string(),
                r.path.clone(),
                r.path2.clone(),
                r.result.clone(),
                r.fault,
            )
        })
        .collect()
}

// ------------------------------------------------------------------ actions

#[test]
fn the_documented_faults_file_third_write_fails() {
    let tmp = tempdir();
    let faults = faults_file(
        tmp.path(),
        "faults.toml",
        "[[rule]]\nop = \"write\"\npath = \"db/wal\"\nerrno = \"ENOSPC\"\nnth = 3\n",
    );
    let (m, st) = daemon(
        Layer::new().dir("db"),
        &format!("faults={}", faults.display()),
    );
    let mut f = fs::File::create(st.m("db/wal")).unwrap();
    let results: Vec<Option<i32>> = (0..5).map(|_| errno_of(f.write(b"0123456789"))).collect();
    assert_eq!(
        results,
        vec![None, None, Some(libc::ENOSPC), None, None],
        "each write(2) is one request"
    );
    drop(f);
    let stats: serde_json::Value =
        serde_json::from_str(&ctl(&st.mnt, &["stats", "--json"]).unwrap()).unwrap();
    assert_eq!(stats["requests"]["write"], 5);
    assert_eq!(stats["errors"]["write"], 1);
    assert_eq!(stats["faults_injected"], 1);
    drop(m);
    assert_eq!(fs::metadata(st.u("db/wal")).unwrap().len(), 40);
}

#[test]
fn fail_refuses_before_anything_happens() {
    let s = TempStack::new(&[Layer::new().file("d/f", "lower").dir("e")]).unwrap();
    let m = library(
        &s,
        vec![
            Rule::fail(op::Open, "d/f", Errno::IO),
            Rule::fail(op::Mkdir, "e/*", Errno::DQUOT),
            Rule::fail(op::Rename, "d/**", Errno::XDEV),
            Rule::fail(op::Unlink, "d/f", Errno::PERM),
        ],
    );
    let p = m.path();
    assert_eq!(errno_of(fs::File::open(p.join("d/f"))), Some(libc::EIO));
    assert_eq!(
        errno_of(fs::create_dir(p.join("e/sub"))),
        Some(libc::EDQUOT)
    );
    assert_eq!(
        errno_of(fs::rename(p.join("d/f"), p.join("d/g"))),
        Some(libc::EXDEV)
    );
    assert_eq!(errno_of(fs::remove_file(p.join("d/f"))), Some(libc::EPERM));
    // Other paths and operations are untouched.
    fs::create_dir(p.join("sub")).unwrap();
    assert_eq!(fs::metadata(p.join("d/f")).unwrap().len(), 5);
    drop(m);
    assert!(!s.upper().join("d").exists(), "nothing was copied up");
    assert!(s.upper().join("sub").is_dir());
}

#[test]
fn delay_fixed_and_range() {
    let s = TempStack::new(&[Layer::new().file("slow", "s").file("fast", "f")]).unwrap();
    let m = library(
        &s,
        vec![Rule::delay(op::Open, "slow", Duration::from_millis(150))],
    );
    let took = |p: &Path| {
        let t = Instant::now();
        fs::File::open(p).unwrap();
        t.elapsed()
    };
    assert!(took(&m.path().join("slow")) >= Duration::from_millis(150));
    assert!(took(&m.path().join("fast")) < Duration::from_millis(150));
    m.clear_rules();
    m.delay(op::Open, "fast", Duration::from_millis(60))
        .with_delay(Duration::from_millis(60), Duration::from_millis(120))
        .seed(3);
    for _ in 0..4 {
        let d = took(&m.path().join("fast"));
        assert!(d >= Duration::from_millis(60), "{d:?}");
    }
    let lat = &m.stats().latency["open"];
    assert!(
        lat.max_us >= 150_000,
        "the delay is part of the latency: {lat:?}"
    );
}

#[test]
fn short_reads_and_writes() {
    let s = TempStack::new(&[Layer::new().file("r", "abcdefgh")]).unwrap();
    let m = library(
        &s,
        vec![
            Rule::short(op::Read, "r", 3),
            Rule::short(op::Write, "w", 4),
        ],
    );
    let mut f = fs::File::open(m.path().join("r")).unwrap();
    let mut buf = [0u8; 100];
    assert_eq!(f.read(&mut buf).unwrap(), 3, "one read(2), at most 3 bytes");
    assert_eq!(&buf[..3], b"abc");
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"defgh", "the program gets the rest by reading on");
    let fd = sys::open(&m.path().join("w"), libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
    assert_eq!(sys::write(&fd, b"0123456789").unwrap(), 4);
    drop((fd, f));
    drop(m);
    assert_eq!(fs::read(s.upper().join("w")).unwrap(), b"0123");
}

#[test]
fn corrupt_reads_change_only_what_the_caller_gets() {
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let s = TempStack::new(&[Layer::new().file("blob", &data)]).unwrap();
    let m = library(&s, vec![Rule::corrupt("blob", 2).seed(9)]);
    let read = |m: &BackgroundMount| fs::read(m.path().join("blob")).unwrap();
    let got = read(&m);
    assert_eq!(got.len(), data.len());
    let diff = got.iter().zip(&data).filter(|(a, b)| a != b).count();
    assert!((1..=2).contains(&diff), "{diff} bytes differ");
    drop(m);
    assert_eq!(fs::read(s.lowers()[0].join("blob")).unwrap(), data);
    assert!(!s.upper().join("blob").exists());
    // The same seed, the same corruption on the next mount.
    let m = library(&s, vec![Rule::corrupt("blob", 2).seed(9)]);
    assert_eq!(read(&m), got);
}

#[test]
fn lying_attributes_and_the_truth_afterwards() {
    let s = TempStack::new(&[Layer::new().file_mode("f", "0123456789", 0o644)]).unwrap();
    let m = library(&s, vec![]);
    let p = m.path().join("f");
    let id = m
        .lie([op::Getattr, op::Lookup], "f")
        .size(3)
        .mode(0o600)
        .mtime(1_000_000)
        .add()
        .unwrap();
    let st = sys::stat(&p).unwrap();
    assert_eq!(
        (st.st_size, st.st_mode & 0o7777, st.st_mtime),
        (3, 0o600, 1_000_000)
    );
    assert!(m.remove_rule(id));
    let st = sys::stat(&p).unwrap();
    assert_eq!((st.st_size, st.st_mode & 0o7777), (10, 0o644), "not cached");
    drop(m);
    let on_disk = sys::lstat(&s.lowers()[0].join("f")).unwrap();
    assert_eq!((on_disk.st_size, on_disk.st_mode & 0o7777), (10, 0o644));
}

#[test]
fn noop_answers_success_without_doing_it() {
    let s = TempStack::new(&[Layer::new().file("keep", "k")]).unwrap();
    let m = library(
        &s,
        vec![Rule::noop(op::Unlink, "keep"), Rule::noop(op::Fsync, "**")],
    );
    fs::remove_file(m.path().join("keep")).unwrap();
    assert!(m.path().join("keep").exists(), "unlink was not done");
    let f = fs::File::create(m.path().join("new")).unwrap();
    f.sync_all().unwrap();
    let rules = m.rules();
    assert_eq!((rules[0].fired, rules[1].fired), (1, 1), "{rules:?}");
    drop(f);
    drop(m);
    assert!(
        !s.upper().join("keep").exists(),
        "no whiteout in the upper layer"
    );
}

#[test]
fn a_rule_on_close_fails_close() {
    let s = TempStack::new(&[Layer::new().file("f", "x")]).unwrap();
    let m = library(&s, vec![Rule::fail(op::Flush, "f", Errno::IO)]);
    let fd = sys::open(&m.path().join("f"), libc::O_RDONLY, 0).unwrap();
    let r = unsafe { libc::close(fd.into_raw_fd()) };
    assert_eq!((r, errno()), (-1, libc::EIO));
    let fd = sys::open(&m.path().join("f"), libc::O_RDONLY, 0).unwrap();
    m.clear_rules();
    assert_eq!(unsafe { libc::close(fd.into_raw_fd()) }, 0);
}

// ------------------------------------------------------------------ triggers

#[test]
fn every_trigger() {
    let s = TempStack::new(&[Layer::new().file("t", "t")]).unwrap();
    let m = library(&s, vec![]);
    let p = m.path().join("t");
    let check = |rule: Rule, want: Vec<usize>| {
        let spec = format!("{:?}", rule.spec());
        let id = m.add_rule(rule).unwrap();
        assert_eq!(failed(&open_results(&p, 10)), want, "{spec}");
        assert!(m.remove_rule(id));
    };
    let eio = || Rule::fail(op::Open, "t", Errno::IO);
    check(eio(), (1..=10).collect());
    check(eio().nth(3), vec![3]);
    check(eio().after(7), vec![8, 9, 10]);
    check(eio().times(2), vec![1, 2]);
    check(eio().after(2).times(3), vec![3, 4, 5]);
    check(eio().pid(tid()), (1..=10).collect());
    check(eio().pid(1), vec![]);
    let uid = unsafe { libc::geteuid() };
    check(eio().uid(uid), (1..=10).collect());
    check(eio().uid(uid + 1), vec![]);
    check(eio().probability(0.0), vec![]);
    // A seeded probability: the same pattern every time.
    let pattern = |seed: u64| {
        let id = m.add_rule(eio().probability(0.4).seed(seed)).unwrap();
        let f = failed(&open_results(&p, 40));
        m.remove_rule(id);
        f
    };
    let a = pattern(5);
    assert!(!a.is_empty() && a.len() < 40, "{a:?}");
    assert_eq!(a, pattern(5));
    assert_ne!(a, pattern(6));
    // Another process is not this thread.
    let id = m.add_rule(eio().pid(tid())).unwrap();
    let st = Command::new("cat")
        .arg(&p)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "the rule is about this thread only");
    m.remove_rule(id);
}

#[test]
fn each_read_call_meets_a_read_rule() {
    // A rule on reads makes the file bypass the page cache: every read(2)
    // is one request, also when the data was read before.
    let s = TempStack::new(&[Layer::new().file("f", "0123456789")]).unwrap();
    let m = library(&s, vec![]);
    assert_eq!(fs::read(m.path().join("f")).unwrap(), b"0123456789");
    m.fail(op::Read, "f", Errno::IO).nth(2);
    let mut f = fs::File::open(m.path().join("f")).unwrap();
    let mut b = [0u8; 2];
    let got: Vec<Option<i32>> = (0..4).map(|_| errno_of(f.read_exact(&mut b))).collect();
    assert_eq!(got, vec![None, Some(libc::EIO), None, None]);
}

#[test]
fn a_seeded_rule_set_gives_the_same_faults_twice() {
    let tmp = tempdir();
    let rules = "seed = 42\n\
        [[rule]]\nop = \"open\"\npath = \"data/*\"\nerrno = \"EACCES\"\nprobability = 0.2\n\
        [[rule]]\nop = \"write\"\npath = \"data/*\"\nerrno = \"EIO\"\nprobability = 0.3\nseed = 7\n\
        [[rule]]\nop = \"read\"\npath = \"data/f1\"\nshort = 1\nprobability = 0.5\n";
    let run = |text: &str| {
        let faults = faults_file(tmp.path(), "seeded.toml", text);
        let (m, st) = daemon(
            Layer::new().file("data/f1", "one").dir("data"),
            &format!("faults={}", faults.display()),
        );
        let mut seen = Vec::new();
        for i in 0..60 {
            let p = st.m(&format!("data/f{}", i % 3));
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&p);
            match f {
                Err(e) => seen.push(format!("{i} open {e}")),
                Ok(mut f) => {
                    seen.push(format!("{i} write {:?}", errno_of(f.write(b"ab"))));
                    let mut b = [0u8; 8];
                    seen.push(format!(
                        "{i} read {:?}",
                        f.read(&mut b).map_err(|e| e.kind())
                    ));
                }
            }
        }
        drop(m);
        seen
    };
    let first = run(rules);
    assert!(first.iter().any(|l| l.contains("open")), "{first:?}");
    assert!(first.iter().any(|l| l.contains("Some(5)")), "{first:?}");
    assert_eq!(first, run(rules), "same seed, same faults");
    assert_ne!(first, run(&rules.replace("seed = 42", "seed = 43")));
}

// ------------------------------------------------------------------ trace

#[test]
fn trace_of_a_known_sequence() {
    let tmp = tempdir();
    let trace = tmp.path().join("trace.jsonl");
    let faults = faults_file(
        tmp.path(),
        "f.toml",
        "[[rule]]\nop = \"rename\"\npath = \"d/b\"\nerrno = \"EXDEV\"\nnth = 2\n",
    );
    let ops = "mkdir:create:write:fsync:symlink:link:rename:unlink:rmdir";
    let (m, st) = daemon(
        Layer::new().file("low", "x"),
        &format!(
            "trace={},trace_ops={ops},faults={}",
            trace.display(),
            faults.display()
        ),
    );
    fs::create_dir(st.m("d")).unwrap();
    let mut f = fs::File::create(st.m("d/a")).unwrap();
    f.write_all(b"hello").unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::os::unix::fs::symlink("a", st.m("d/s")).unwrap();
    fs::hard_link(st.m("d/a"), st.m("d/h")).unwrap();
    fs::rename(st.m("d/a"), st.m("d/b")).unwrap();
    assert_eq!(
        errno_of(fs::rename(st.m("d/b"), st.m("d/c"))),
        Some(libc::EXDEV)
    );
    for n in ["d/h", "d/s", "d/b"] {
        fs::remove_file(st.m(n)).unwrap();
    }
    fs::remove_dir(st.m("d")).unwrap();
    let status = m.unmount().expect("the daemon exits");
    assert!(status.success());
    let records: Vec<TraceRecord> = fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let s = |x: &str| x.to_string();
    let ok = || s("ok");
    assert_eq!(
        shape(&records),
        vec![
            (s("mkdir"), s("d"), None, ok(), None),
            (s("create"), s("d/a"), None, ok(), None),
            (s("write"), s("d/a"), None, ok(), None),
            (s("fsync"), s("d/a"), None, ok(), None),
            (s("symlink"), s("d/s"), None, ok(), None),
            (s("link"), s("d/a"), Some(s("d/h")), ok(), None),
            (s("rename"), s("d/a"), Some(s("d/b")), ok(), None),
            (s("rename"), s("d/b"), Some(s("d/c")), s("EXDEV"), Some(1)),
            (s("unlink"), s("d/h"), None, ok(), None),
            (s("unlink"), s("d/s"), None, ok(), None),
            (s("unlink"), s("d/b"), None, ok(), None),
            (s("rmdir"), s("d"), None, ok(), None),
        ]
    );
    let w = &records[2];
    assert_eq!((w.offset, w.size, w.bytes), (Some(0), Some(5), Some(5)));
    assert_eq!(records[1].layer.as_deref(), Some("upper"));
    assert!(records.iter().all(|r| r.pid > 0 && r.time > 1e9));
}

#[test]
fn trace_in_memory_layers_and_copy_ups() {
    let s = TempStack::new(&[
        Layer::new().file("top", "t"),
        Layer::new().file("dir/low", "l"),
    ])
    .unwrap();
    let m = library(&s, vec![]);
    fs::read(m.path().join("dir/low")).unwrap();
    fs::read(m.path().join("top")).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(m.path().join("dir/low"))
        .unwrap();
    let t = m.take_trace();
    let find = |op: Op, path: &str| {
        t.iter()
            .find(|r| r.op == op && r.path == path)
            .unwrap_or_else(|| panic!("no {op} {path} in {t:#?}"))
    };
    assert_eq!(find(op::Lookup, "dir/low").layer.as_deref(), Some("lower1"));
    assert_eq!(find(op::Lookup, "top").layer.as_deref(), Some("lower0"));
    let opens: Vec<&TraceRecord> = t
        .iter()
        .filter(|r| r.op == op::Open && r.path == "dir/low")
        .collect();
    assert_eq!(opens.len(), 2);
    assert!(!opens[0].copy_up && opens[1].copy_up, "{opens:#?}");
    assert_eq!(opens[1].layer.as_deref(), Some("upper"));
    // Taken: what is recorded from now on is new. The kernel sends the
    // RELEASE of a closed file (and its FORGETs) after `close` has returned, so
    // those may still arrive; nothing else may.
    let late = m.trace();
    assert!(
        late.iter()
            .all(|r| matches!(r.op, op::Release | op::Forget)),
        "taken: {late:#?}"
    );
    m.stop_trace();
    // A late RELEASE or FORGET may have come between the look above and
    // the stop: it is kept, and is not what the stop is about.
    let before_stop = m.take_trace();
    assert!(
        before_stop
            .iter()
            .all(|r| matches!(r.op, op::Release | op::Forget)),
        "before the stop: {before_stop:#?}"
    );
    fs::read(m.path().join("top")).unwrap();
    assert!(m.trace().is_empty(), "stopped");
}

// ------------------------------------------------------------------ layers intact

#[test]
fn faults_never_change_the_upper_or_the_layers() {
    let s = TempStack::new(&[
        Layer::new()
            .file("a/file", "lower data")
            .dir("a/empty")
            .symlink("a/link", "file"),
        Layer::new().file("a/below", "below").file("b/x", "x"),
    ])
    .unwrap();
    fs::write(s.upper().join("up"), "upper data").unwrap();
    // The first mount records the kernel's upper-root records (the lower
    // root's origin, the overlay's uuid) and the index directory: taken
    // as the starting point.
    drop(library(&s, Vec::new()));
    let before = layers_digest(&s);
    let refuse = [
        op::Create,
        op::Mkdir,
        op::Mknod,
        op::Symlink,
        op::Link,
        op::Unlink,
        op::Rmdir,
        op::Rename,
        op::Setattr,
        op::Setxattr,
        op::Removexattr,
        op::Open,
    ];
    let m = library(&s, vec![Rule::fail(refuse, "**", Errno::IO)]);
    let p = m.path();
    let tries: Vec<(&str, Option<i32>)> = vec![
        ("create", errno_of(fs::write(p.join("a/new"), "n"))),
        ("write lower", errno_of(fs::write(p.join("a/file"), "w"))),
        ("write upper", errno_of(fs::write(p.join("up"), "w"))),
        ("mkdir", errno_of(fs::create_dir(p.join("a/d")))),
        ("rmdir", errno_of(fs::remove_dir(p.join("a/empty")))),
        ("unlink", errno_of(fs::remove_file(p.join("a/below")))),
        ("rename", errno_of(fs::rename(p.join("b/x"), p.join("b/y")))),
        (
            "link",
            errno_of(fs::hard_link(p.join("b/x"), p.join("b/z"))),
        ),
        (
            "symlink",
            errno_of(std::os::unix::fs::symlink("x", p.join("b/s"))),
        ),
        ("chmod", sys::chmod(&p.join("a/file"), 0o600).err()),
        ("truncate", sys::truncate(&p.join("a/file"), 0).err()),
        (
            "setxattr",
            sys::lsetxattr(&p.join("a/file"), "user.k", b"v", 0).err(),
        ),
        ("mkfifo", sys::mkfifo(&p.join("a/fifo"), 0o644).err()),
    ];
    for (what, e) in &tries {
        assert!(e.is_some(), "{what} was not refused");
    }
    m.clear_rules();
    // Data changed on its way to the caller only.
    m.corrupt("**", 3);
    m.short(op::Read, "a/below", 2);
    m.lie([op::Getattr, op::Lookup], "**").size(1).mode(0o777);
    m.delay(op::Getattr, "**", Duration::from_millis(1));
    assert_ne!(fs::read(p.join("a/file")).unwrap(), b"lower data");
    let _ = fs::read(p.join("a/below"));
    let _ = fs::read(p.join("up"));
    let _ = fs::read_link(p.join("a/link"));
    let _ = list_dir(&p.join("a"));
    let _ = fs::metadata(p.join("b/x"));
    drop(m);
    assert_eq!(layers_digest(&s), before);
}

// ------------------------------------------------------------------ listings

fn listing_names(p: &Path, bufsize: usize) -> Vec<String> {
    let (ents, calls) = getdents_all(p, bufsize).unwrap();
    if bufsize < 4096 {
        assert!(calls > 3, "read in several getdents calls ({calls})");
    }
    ents.into_iter()
        .map(|e| e.name)
        .filter(|n| n != "." && n != "..")
        .collect()
}

#[test]
fn readdir_orders() {
    let mut layer = Layer::new();
    let mut names: Vec<String> = (0..300)
        .map(|i| format!("entry-{:03}-{}", (i * 7) % 300, "x".repeat(i % 13)))
        .collect();
    for n in &names[..200] {
        layer = layer.file(&format!("d/{n}"), "");
    }
    let st = stack(vec![layer], Layer::new()).build(Markers::Kernel);
    {
        // Names in the upper layer and in the lower one merge into one
        // order.
        fs::create_dir_all(st.u("d")).unwrap();
        for n in &names[200..] {
            fs::write(st.u(&format!("d/{n}")), "").unwrap();
        }
    }
    names.sort();
    let mut orders = Vec::new();
    for (opt, want) in [
        ("sorted", Some(names.clone())),
        ("reverse", Some(names.iter().rev().cloned().collect())),
        ("shuffle:7", None),
        ("shuffle:7", None),
        ("shuffle:8", None),
    ] {
        let m = st.mount_strata_with(&format!("readdir_order={opt}"));
        let got = listing_names(&st.m("d"), 512);
        let mut each_once = got.clone();
        each_once.sort();
        assert_eq!(each_once, names, "{opt}: every entry exactly once");
        if let Some(w) = want {
            assert_eq!(got, w, "{opt}");
        }
        assert_eq!(listing_names(&st.m("d"), 32768), got, "{opt}: stable");
        assert_eq!(list_order_std(&st.m("d")), got, "{opt}: readdirplus");
        // telldir/seekdir: back to a position in the middle.
        let mut d = LibcDir::open(&st.m("d")).unwrap();
        for _ in 0..120 {
            d.next_entry().unwrap();
        }
        let pos = d.tell();
        let next: Vec<String> = (0..50)
            .map(|_| d.next_entry().unwrap().unwrap().name)
            .collect();
        d.seek(pos);
        let again: Vec<String> = (0..50)
            .map(|_| d.next_entry().unwrap().unwrap().name)
            .collect();
        assert_eq!(next, again, "{opt}: seekdir");
        drop(d);
        drop(m);
        orders.push(got);
    }
    assert_eq!(orders[2], orders[3], "the same seed on another mount");
    assert_ne!(orders[2], orders[4], "another seed");
    assert_ne!(orders[2], orders[0]);

    // The same from the Rust API.
    let s =
        TempStack::new(&[Layer::new().file("d/b", "").file("d/a", "").file("d/c", "")]).unwrap();
    let m = s
        .builder()
        .readdir_order(ReaddirOrder::Reverse)
        .mount(s.mountpoint())
        .unwrap();
    assert_eq!(list_order_std(&m.path().join("d")), vec!["c", "b", "a"]);
}

/// Names in the order `std::fs::read_dir` returns them.
fn list_order_std(p: &Path) -> Vec<String> {
    fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let _ = e.metadata();
            e.file_name().to_string_lossy().into_owned()
        })
        .collect()
}

// ------------------------------------------------------------------ metrics

#[test]
fn stats_json_and_prometheus() {
    let (m, st) = daemon(
        Layer::new()
            .file("big", vec![7u8; 10_000])
            .file("gone", "g"),
        "",
    );
    fs::OpenOptions::new()
        .append(true)
        .open(st.m("big"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    fs::remove_file(st.m("gone")).unwrap();
    let _ = fs::metadata(st.m("missing"));
    let out = Command::new(stratafs_bin())
        .args(["stats"])
        .arg(&st.mnt)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for op in Op::ALL {
        assert!(v["requests"][op.name()].is_u64(), "requests.{}", op.name());
    }
    assert!(v["requests"]["lookup"].as_u64().unwrap() >= 3);
    assert_eq!(v["copy_ups"], 1);
    assert_eq!(v["copy_up_bytes"], 10_000);
    assert_eq!(v["whiteouts"], 1);
    assert!(v["lookup_cache_misses"].as_u64().unwrap() >= 3);
    assert!(v["rss_bytes"].as_u64().unwrap() > 0);
    assert!(v["fds"].as_u64().unwrap() > 0);
    assert!(v["latency"]["lookup"]["count"].as_u64().unwrap() >= 3);
    let prom = ctl(&st.mnt, &["stats", "--prometheus"]).unwrap();
    assert!(
        prom.contains("# TYPE stratafs_requests_total counter\n"),
        "{prom}"
    );
    assert!(
        prom.contains("stratafs_requests_total{op=\"unlink\"} 1\n"),
        "{prom}"
    );
    assert!(prom.contains("stratafs_copy_ups_total 1\n"), "{prom}");
    assert!(prom.contains("stratafs_request_duration_seconds_bucket{op=\"lookup\",le=\"+Inf\"}"));
    drop(m);
}

#[test]
fn metrics_off() {
    let (m, st) = daemon(Layer::new().file("f", "x"), "metrics=0");
    fs::read(st.m("f")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ctl(&st.mnt, &["stats"]).unwrap()).unwrap();
    assert_eq!(v["metrics"], false);
    assert!(v["requests"].as_object().unwrap().is_empty());
    drop(m);
}

// ------------------------------------------------------------------ control

#[test]
fn ctl_rules_and_trace_while_mounted() {
    if no_open_everywhere() {
        return skip(
            "ctl_rules_and_trace_while_mounted",
            "its rule is on open, which no_open never sends",
        );
    }
    let tmp = tempdir();
    let (m, st) = daemon(Layer::new().file("c", "c"), "");
    let added = ctl(
        &st.mnt,
        &["add", "--op", "open", "--path", "c", "--errno", "EPERM"],
    )
    .unwrap();
    assert_eq!(added.trim(), "rule 1 added");
    assert_eq!(errno_of(fs::File::open(st.m("c"))), Some(libc::EPERM));
    let rules: serde_json::Value =
        serde_json::from_str(&ctl(&st.mnt, &["rules", "--json"]).unwrap()).unwrap();
    assert_eq!(rules[0]["id"], 1);
    assert_eq!(rules[0]["source"], "control");
    assert_eq!(rules[0]["fired"], 1);
    assert!(ctl(&st.mnt, &["rules"]).unwrap().contains("EPERM"));
    assert!(ctl(&st.mnt, &["remove", "9"]).is_err());
    ctl(&st.mnt, &["remove", "1"]).unwrap();
    fs::File::open(st.m("c")).unwrap();
    assert!(ctl(&st.mnt, &["add", "--op", "bogus", "--errno", "EIO"]).is_err());
    assert!(ctl(&st.mnt, &["reload"]).is_err(), "no faults file");

    // A trace file started and stopped while mounted.
    let trace = tmp.path().join("t.jsonl");
    ctl(
        &st.mnt,
        &["trace", "start", trace.to_str().unwrap(), "--ops", "open"],
    )
    .unwrap();
    fs::File::open(st.m("c")).unwrap();
    ctl(&st.mnt, &["trace", "stop"]).unwrap();
    fs::File::open(st.m("c")).unwrap();
    let text = fs::read_to_string(&trace).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    // Not into the mount it traces.
    let inside = st.m("t.jsonl");
    let e = ctl(&st.mnt, &["trace", "start", inside.to_str().unwrap()]).unwrap_err();
    assert!(e.contains("into the mount it traces"), "{e}");
    assert!(!inside.exists());
    assert!(text.contains("\"op\":\"open\",\"path\":\"c\""), "{text}");

    // Records streamed to a follower.
    let mut follower = Command::new(stratafs_bin())
        .arg("ctl")
        .arg(&st.mnt)
        .args(["trace", "follow", "--ops", "open"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            if tx.send(l.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        fs::File::open(st.m("c")).unwrap();
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            break l;
        }
        assert!(Instant::now() < deadline, "no record reached the follower");
    };
    assert!(line.contains("\"op\":\"open\""), "{line}");
    follower.kill().unwrap();
    follower.wait().unwrap();
    drop(m);
}

#[test]
fn sighup_rereads_the_faults_file() {
    let tmp = tempdir();
    let faults = faults_file(
        tmp.path(),
        "f.toml",
        "[[rule]]\nop = \"open\"\npath = \"a\"\nerrno = \"EIO\"\n",
    );
    let (mut m, st) = daemon(
        Layer::new().file("a", "a").file("b", "b"),
        &format!("faults={}", faults.display()),
    );
    assert_eq!(errno_of(fs::File::open(st.m("a"))), Some(libc::EIO));
    let pid = m.daemon_pid().unwrap() as i32;
    fs::write(
        &faults,
        "[[rule]]\nop = \"open\"\npath = \"b\"\nerrno = \"EACCES\"\n",
    )
    .unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::File::open(st.m("b")).is_ok() {
        assert!(Instant::now() < deadline, "the new rule never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(errno_of(fs::File::open(st.m("b"))), Some(libc::EACCES));
    fs::File::open(st.m("a")).unwrap();
    // A broken file changes nothing, and the mount stays.
    fs::write(&faults, "[[rule]]\nop = \"nonsense\"\n").unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(200));
    assert!(mount_at(&st.mnt).is_some(), "still mounted");
    assert_eq!(errno_of(fs::File::open(st.m("b"))), Some(libc::EACCES));
    assert!(m.wait_daemon(Duration::from_millis(10)).is_none());
    drop(m);
}

#[test]
fn only_the_mounting_user_may_use_the_control_socket() {
    if is_rootless() {
        skip(
            "only_the_mounting_user_may_use_the_control_socket",
            "needs a second user id (root)",
        );
        return;
    }
    let (m, st) = daemon(Layer::new().file("f", "x"), "");
    let socket = ctl(&st.mnt, &["socket"]).unwrap().trim().to_string();
    let abstract_name = socket
        .strip_prefix('@')
        .expect("an abstract name")
        .as_bytes();
    // A child that becomes another user and talks to the socket directly
    // (past the client's own check). Everything it needs is prepared
    // before the fork: the child only makes system calls.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (i, b) in abstract_name.iter().enumerate() {
        addr.sun_path[i + 1] = *b as libc::c_char;
    }
    let addr_len =
        (std::mem::size_of::<libc::sa_family_t>() + 1 + abstract_name.len()) as libc::socklen_t;
    let request = b"{\"cmd\":\"info\"}\n";
    let mut answer = [0u8; 512];
    let mut pipe_fds = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(pipe_fds.as_mut_ptr()) }, 0);
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(2);
            }
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if libc::connect(s, &addr as *const _ as *const libc::sockaddr, addr_len) != 0 {
                libc::_exit(3);
            }
            libc::write(s, request.as_ptr() as *const libc::c_void, request.len());
            let n = libc::read(s, answer.as_mut_ptr() as *mut libc::c_void, answer.len());
            if n > 0 {
                libc::write(
                    pipe_fds[1],
                    answer.as_ptr() as *const libc::c_void,
                    n as usize,
                );
            }
            libc::_exit(0);
        }
    }
    unsafe { libc::close(pipe_fds[1]) };
    let mut got = String::new();
    let mut r = unsafe { fs::File::from_raw_fd(pipe_fds[0]) };
    r.read_to_string(&mut got).unwrap();
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(libc::WEXITSTATUS(status), 0, "child status {status}");
    assert!(got.contains("\"ok\":false"), "{got}");
    assert!(got.contains("permission denied"), "{got}");
    // The command itself, run as another user, refuses to talk to a
    // daemon of someone else.
    let bin = stratafs_bin();
    let reachable = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "test",
            "-x",
        ])
        .arg(&bin)
        .status()
        .is_ok_and(|s| s.success());
    if reachable {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["ctl", &socket, "info"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not by this user"), "{err}");
    }
    // The owner may.
    assert!(ctl(&st.mnt, &["info"]).unwrap().contains("\"pid\""));
    drop(m);
}

#[test]
fn control_off_and_a_socket_file() {
    let tmp = tempdir();
    let (m, st) = daemon_no_wait(Layer::new().file("f", "x"), "control=off");
    assert!(ctl(&st.mnt, &["info"]).is_err());
    drop(m);
    let sock = tmp.path().join("ctl.sock");
    let (m, st) = daemon_no_wait(
        Layer::new().file("f", "x"),
        &format!("control={}", sock.display()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctl(&sock, &["info"]).is_err() {
        assert!(Instant::now() < deadline, "no socket at {sock:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    fs::read(st.m("f")).unwrap();
    assert!(ctl(&sock, &["stats"]).unwrap().contains("\"read\""));
    drop(m);
}
