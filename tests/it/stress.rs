//! Concurrency stress test: many threads run random mixed operations on one
//! stratafs mount for a bounded time; afterwards the merged tree, the files
//! each thread owned exclusively, the files all threads raced on, the work
//! directory and a remount of the same stack are checked.
//!
//! Environment knobs (all optional):
//! * `STRATAFS_STRESS_SECS` – how long the workers run (default 20).
//! * `STRATAFS_STRESS_THREADS` – number of worker threads (default 8).
//! * `STRATAFS_STRESS_SEED` – base seed (default: from the clock; printed).
//! * `STRATAFS_STRESS_STALL_SECS` – a worker that makes no progress for this
//!   long fails the test as a hang (default 30).
//!
//! Workload, per thread (each with its own seeded RNG):
//! * shared names `dK/sN`, `dK/subN`, `dK/ldirN` and `.../fM` below them:
//!   create, write, append, truncate, chmod, chown (not rootless), setxattr,
//!   rename between directories, link, unlink, mkdir, rmdir, stat, read,
//!   readdir, and I/O through descriptors held while others delete or
//!   rename the names. Only the errnos such races allow are tolerated.
//! * owned names `dK/oT_N`: only thread T touches them (others only look
//!   them up), so their content, mode, owner, link count and xattrs are
//!   tracked exactly and checked during the run, at the end and after a
//!   remount.
//! * open-and-unlinked files: the owner keeps a descriptor, another thread
//!   unlinks the name, the owner keeps reading and writing and checks the
//!   data exactly.
//! * race rounds: all threads meet at a barrier and then write, at the same
//!   moment, to the same not yet copied-up lower files (disjoint regions,
//!   one chmod, one append, one xattr per thread), so every copy-up races
//!   with the others; nothing may be lost.

use crate::common::*;
use libc::{EEXIST, EINVAL, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY, EPERM, EXDEV};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------

/// Top-level directories; they exist in both lower layers and are never
/// removed or renamed.
const DIRS: usize = 4;
/// Shared file names per directory (`dK/s0` ..).
const SHARED_FILES: usize = 10;
/// Shared directory names per directory created by mkdir (`dK/sub0` ..).
const SHARED_SUBDIRS: usize = 3;
/// Lower directories per directory (`dK/ldir0` ..); renaming them is EXDEV.
const LOWER_DIRS: usize = 2;
/// Names below every depth-2 shared name (`dK/sN/f0` ..).
const CHILD_NAMES: usize = 3;
/// Owned names per thread and directory (`dK/oT_0` ..).
const OWN_NAMES: usize = 6;
/// Lower files per thread that are opened and then unlinked (`dK/rT_N`).
const LOWER_OPEN_FILES: usize = 2;
/// Race rounds, and files raced on per round (`raceR/deep/fJ`).
const ROUNDS: usize = 3;
const RACE_FILES: usize = 2;
const RACE_MARK_LEN: usize = 4096;
const RACE_GUARD_LEN: usize = 3000;
const MIB: usize = 1 << 20;

const FILE_MODES: [u32; 5] = [0o644, 0o600, 0o755, 0o700, 0o640];

fn race_rel(r: usize, j: usize) -> String {
    format!("race{r}/deep/f{j}")
}

/// Size of the visible (top) lower version of a race file.
fn race_size(r: usize, j: usize) -> usize {
    const SIZES: [[usize; RACE_FILES]; 3] = [
        [MIB + 123, 4 * MIB - 99],
        [3 * MIB + 77, MIB + MIB / 2],
        [2 * MIB + 5, 2 * MIB + MIB / 2],
    ];
    SIZES[r % 3][j]
}

/// Content of the visible lower version: `f0` lives in lower1 only, `f1` in
/// lower0 (hiding a small lower1 version).
fn race_orig(r: usize, j: usize) -> Vec<u8> {
    let layer = if j == 1 { 0 } else { 1 };
    pattern(&format!("race{r}f{j}L{layer}"), race_size(r, j))
}

fn race_mark_off(r: usize, j: usize, t: usize, nthreads: usize) -> usize {
    t * (race_size(r, j) / nthreads) + 1000
}

fn race_mark(r: usize, j: usize, t: usize) -> Vec<u8> {
    fill(&format!("R{r}F{j}T{t}|"), RACE_MARK_LEN)
}

fn race_tail(r: usize, j: usize) -> Vec<u8> {
    fill(&format!("tail-R{r}F{j}|"), 5000)
}

/// Thread that chmods race file (r, j), and the one that appends to it.
fn race_chmod_thread(r: usize, j: usize, n: usize) -> usize {
    (r + j) % n
}
fn race_append_thread(r: usize, j: usize, n: usize) -> usize {
    (r + j + 1) % n
}

const RACE_MODE: u32 = 0o600;

fn race_expected(r: usize, j: usize, n: usize) -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let mut data = race_orig(r, j);
    for t in 0..n {
        let off = race_mark_off(r, j, t, n);
        data[off..off + RACE_MARK_LEN].copy_from_slice(&race_mark(r, j, t));
    }
    data.extend_from_slice(&race_tail(r, j));
    let mut x = BTreeMap::new();
    x.insert(
        "user.origin".to_string(),
        format!("race{r}f{j}").into_bytes(),
    );
    for t in 0..n {
        x.insert(
            format!("user.race.t{t}"),
            format!("r{r}j{j}t{t}").into_bytes(),
        );
    }
    (data, x)
}

fn own_rel(t: usize, k: usize, n: usize) -> String {
    format!("d{k}/o{t}_{n}")
}

fn lower_open_rel(t: usize, n: usize) -> String {
    format!("d{}/r{t}_{n}", (t + n) % DIRS)
}

fn lower_open_content(t: usize, n: usize) -> Vec<u8> {
    let len = if n == 0 { 300 * 1024 + t } else { 4096 + t };
    pattern(&format!("r{t}_{n}"), len)
}

fn shared_lower1(k: usize, n: usize) -> Vec<u8> {
    let len = if n == 0 && k < 2 {
        (k + 1) * MIB + 333
    } else {
        1000 + 97 * n
    };
    pattern(&format!("d{k}/s{n}@L1"), len)
}

/// Every depth-2 shared name.
fn depth2_names() -> Vec<String> {
    let mut v = Vec::new();
    for n in 0..SHARED_FILES {
        v.push(format!("s{n}"));
    }
    for n in 0..SHARED_SUBDIRS {
        v.push(format!("sub{n}"));
    }
    for n in 0..LOWER_DIRS {
        v.push(format!("ldir{n}"));
    }
    v
}

/// The shared pool: depth-2 names and the names below them.
fn shared_pool() -> (Vec<String>, Vec<String>) {
    let mut d2 = Vec::new();
    let mut d3 = Vec::new();
    for k in 0..DIRS {
        for name in depth2_names() {
            let rel = format!("d{k}/{name}");
            for m in 0..CHILD_NAMES {
                d3.push(format!("{rel}/f{m}"));
            }
            d2.push(rel);
        }
    }
    (d2, d3)
}

/// A lower directory name (renaming it is EXDEV without redirect_dir).
fn is_lower_dir_rel(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    parts.len() == 2 && parts[1].starts_with("ldir")
}

/// 32-byte lines "TAG  OFFSET\n", so a wrong byte tells where it came from.
fn pattern(tag: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut off = 0usize;
    while out.len() < len {
        out.extend_from_slice(format!("{tag:<20.20}{off:>11}\n").as_bytes());
        off += 32;
    }
    out.truncate(len);
    out
}

fn fill(tag: &str, len: usize) -> Vec<u8> {
    tag.bytes().cycle().take(len).collect()
}

fn build_spec(n: usize) -> TempStackBuilder {
    // lower1: the bottom layer.
    let mut l1 = Layer::new();
    for k in 0..DIRS {
        l1 = l1.dir(&format!("d{k}"));
        for s in 0..6 {
            l1 = l1.file(&format!("d{k}/s{s}"), shared_lower1(k, s));
        }
        for d in 0..LOWER_DIRS {
            for f in 0..2 {
                l1 = l1.file(
                    &format!("d{k}/ldir{d}/f{f}"),
                    pattern(&format!("d{k}/ldir{d}/f{f}"), 700),
                );
            }
        }
    }
    for r in 0..ROUNDS {
        l1 = l1
            .file(&race_rel(r, 0), race_orig(r, 0))
            .xattr("user.origin", format!("race{r}f0"))
            .file(&race_rel(r, 1), pattern(&format!("race{r}f1 hidden"), 1000));
    }
    for t in 0..n {
        let big = if t % 2 == 0 { MIB + 1000 * t } else { 5000 + t };
        l1 = l1
            .file(
                &own_rel(t, t % DIRS, 0),
                pattern(&format!("o{t}_0@L1"), big),
            )
            .file(
                &own_rel(t, (t + 1) % DIRS, 1),
                pattern(&format!("o{t}_1@L1 hidden"), 3000),
            )
            .file(
                &own_rel(t, (t + 3) % DIRS, 3),
                pattern(&format!("o{t}_3@L1 hidden"), 2000),
            );
        for m in 0..LOWER_OPEN_FILES {
            l1 = l1.file(&lower_open_rel(t, m), lower_open_content(t, m));
        }
    }

    // lower0: the top lower layer.
    let mut l0 = Layer::new();
    for k in 0..DIRS {
        l0 = l0.dir(&format!("d{k}"));
        for s in 3..8 {
            l0 = l0.file(
                &format!("d{k}/s{s}"),
                pattern(&format!("d{k}/s{s}@L0"), 1500 + 13 * s),
            );
        }
        l0 = l0.file(&format!("d{k}/ldir1/f2"), pattern("ldir1/f2@L0", 900));
    }
    // An opaque lower0 directory hides d3/ldir0's lower1 content.
    l0 = l0
        .opaque("d3/ldir0")
        .file("d3/ldir0/g0", pattern("d3/ldir0/g0", 100));
    for r in 0..ROUNDS {
        l0 = l0
            .file(&race_rel(r, 1), race_orig(r, 1))
            .xattr("user.origin", format!("race{r}f1"));
    }
    for t in 0..n {
        let form = if t % 2 == 0 {
            WhiteoutForm::CharDevice
        } else {
            WhiteoutForm::WhFile
        };
        l0 = l0
            .file(
                &own_rel(t, (t + 1) % DIRS, 1),
                pattern(&format!("o{t}_1@L0"), 2500 + t),
            )
            .mode(0o640)
            .xattr("user.lower", format!("L0-{t}"))
            .file(
                &own_rel(t, (t + 2) % DIRS, 2),
                pattern(&format!("o{t}_2@L0"), 1800 + t),
            )
            .whiteout_as(&own_rel(t, (t + 3) % DIRS, 3), form);
    }

    // upper: hard links only here (d3 stays lower-only).
    let mut up = Layer::new()
        .file("d0/s8", pattern("d0/s8@U", 4000))
        .hard_link("d1/s8", "d0/s8")
        .hard_link("d2/s9", "d0/s8");
    for t in 0..n {
        let a = own_rel(t, t % 3, 4);
        let b = own_rel(t, (t + 1) % 3, 5);
        up = up
            .file(&a, pattern(&format!("o{t}_4@U"), 6000 + t))
            .hard_link(&b, &a);
    }
    stack(vec![l0, l1], up)
}

// ---------------------------------------------------------------------------
// Model of the files one thread owns
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct INode {
    data: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Debug)]
struct Owned {
    thread: usize,
    /// Slot index `k * OWN_NAMES + n` -> `dK/oT_n`.
    rels: Vec<String>,
    /// Which model inode a slot names (None: absent).
    at: Vec<Option<usize>>,
    inodes: Vec<INode>,
    /// Set after an unexpected error: the model can no longer be trusted.
    broken: bool,
}

impl Owned {
    fn initial(t: usize, uid: u32, gid: u32) -> Owned {
        let mut rels = Vec::new();
        for k in 0..DIRS {
            for n in 0..OWN_NAMES {
                rels.push(own_rel(t, k, n));
            }
        }
        let mut o = Owned {
            thread: t,
            at: vec![None; rels.len()],
            rels,
            inodes: Vec::new(),
            broken: false,
        };
        let slot = |k: usize, n: usize| k * OWN_NAMES + n;
        let big = if t % 2 == 0 { MIB + 1000 * t } else { 5000 + t };
        let file = |data: Vec<u8>, mode: u32| INode {
            data,
            mode,
            uid,
            gid,
            xattrs: BTreeMap::new(),
        };
        let i0 = o.add(file(pattern(&format!("o{t}_0@L1"), big), 0o644));
        o.at[slot(t % DIRS, 0)] = Some(i0);
        let mut n1 = file(pattern(&format!("o{t}_1@L0"), 2500 + t), 0o640);
        n1.xattrs
            .insert("user.lower".into(), format!("L0-{t}").into_bytes());
        let i1 = o.add(n1);
        o.at[slot((t + 1) % DIRS, 1)] = Some(i1);
        let i2 = o.add(file(pattern(&format!("o{t}_2@L0"), 1800 + t), 0o644));
        o.at[slot((t + 2) % DIRS, 2)] = Some(i2);
        let i4 = o.add(file(pattern(&format!("o{t}_4@U"), 6000 + t), 0o644));
        o.at[slot(t % 3, 4)] = Some(i4);
        o.at[slot((t + 1) % 3, 5)] = Some(i4);
        o
    }

    fn add(&mut self, n: INode) -> usize {
        self.inodes.push(n);
        self.inodes.len() - 1
    }

    fn nlink(&self, ino: usize) -> u64 {
        self.at.iter().filter(|a| **a == Some(ino)).count() as u64
    }
}

/// The client-visible `user.*` xattrs of a path.
fn user_xattrs(p: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let names = sys::llistxattr(p).map_err(|e| format!("llistxattr: {}", errno_name(e)))?;
    let mut out = BTreeMap::new();
    for n in names {
        if !n.starts_with("user.") {
            continue;
        }
        if is_private_xattr(&n) {
            return Err(format!("private xattr {n} is listed"));
        }
        let v = sys::lgetxattr(p, &n).map_err(|e| format!("lgetxattr {n}: {}", errno_name(e)))?;
        out.insert(n, v);
    }
    Ok(out)
}

fn snippet(d: &[u8], off: usize) -> String {
    let a = off.min(d.len());
    let b = (off + 40).min(d.len());
    format!("{:?}", String::from_utf8_lossy(&d[a..b]))
}

fn describe_diff(want: &[u8], got: &[u8]) -> String {
    let first = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    format!(
        "length expected {} got {}; first difference at offset {first}: expected {} got {}",
        want.len(),
        got.len(),
        snippet(want, first),
        snippet(got, first)
    )
}

fn mode_kind(m: u32) -> Kind {
    match m & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFCHR => Kind::CharDev,
        libc::S_IFBLK => Kind::BlockDev,
        libc::S_IFSOCK => Kind::Socket,
        _ => Kind::Unknown,
    }
}

/// Checks one owned file against the model (content, size, mode, owner,
/// link count, user xattrs). Returns its (st_dev, st_ino) when present.
fn check_inode(p: &Path, n: &INode, nlink: u64) -> Result<(u64, u64), String> {
    let st = sys::lstat(p).map_err(|e| format!("expected a file, lstat: {}", errno_name(e)))?;
    let mut errs = Vec::new();
    if mode_kind(st.st_mode) != Kind::File {
        return Err(format!("expected a regular file, mode {:o}", st.st_mode));
    }
    if st.st_mode & 0o7777 != n.mode {
        errs.push(format!(
            "mode {:o} != expected {:o}",
            st.st_mode & 0o7777,
            n.mode
        ));
    }
    if (st.st_uid, st.st_gid) != (n.uid, n.gid) {
        errs.push(format!(
            "owner {}:{} != expected {}:{}",
            st.st_uid, st.st_gid, n.uid, n.gid
        ));
    }
    if st.st_nlink != nlink {
        errs.push(format!("nlink {} != expected {nlink}", st.st_nlink));
    }
    if st.st_size as usize != n.data.len() {
        errs.push(format!(
            "st_size {} != expected {}",
            st.st_size,
            n.data.len()
        ));
    }
    match sys::read_all(p) {
        Ok(d) if d == n.data => {}
        Ok(d) => errs.push(format!("content: {}", describe_diff(&n.data, &d))),
        Err(e) => errs.push(format!("read: {}", errno_name(e))),
    }
    match user_xattrs(p) {
        Ok(x) if x == n.xattrs => {}
        Ok(x) => errs.push(format!(
            "user xattrs {:?} != expected {:?}",
            x.keys().collect::<Vec<_>>(),
            n.xattrs.keys().collect::<Vec<_>>()
        )),
        Err(e) => errs.push(e),
    }
    if errs.is_empty() {
        Ok((st.st_dev, st.st_ino))
    } else {
        Err(errs.join("; "))
    }
}

/// Checks every slot of an owned model; returns the problems found.
fn check_owned(mnt: &Path, o: &Owned) -> Vec<String> {
    let mut out = Vec::new();
    if o.broken {
        return out;
    }
    let mut inos: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let mut seen: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for (s, rel) in o.rels.iter().enumerate() {
        let p = mnt.join(rel);
        match o.at[s] {
            None => match sys::lstat(&p) {
                Err(ENOENT) => {}
                Err(e) => out.push(format!("{rel}: expected absent, lstat {}", errno_name(e))),
                Ok(st) => out.push(format!(
                    "{rel}: expected absent, found mode {:o} size {}",
                    st.st_mode, st.st_size
                )),
            },
            Some(i) => match check_inode(&p, &o.inodes[i], o.nlink(i)) {
                Ok(id) => {
                    if let Some(prev) = inos.insert(i, id) {
                        if prev != id {
                            out.push(format!(
                                "{rel}: hard link of another owned name has inode {prev:?}, this one {id:?}"
                            ));
                        }
                    }
                    if let Some(other) = seen.insert(id, i) {
                        if other != i {
                            out.push(format!(
                                "{rel}: inode number {id:?} is shared with a different file"
                            ));
                        }
                    }
                }
                Err(e) => out.push(format!("{rel}: {e}")),
            },
        }
    }
    out
}

fn check_race_files(mnt: &Path, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for r in 0..ROUNDS {
        for j in 0..RACE_FILES {
            let rel = race_rel(r, j);
            let (data, xattrs) = race_expected(r, j, n);
            let node = INode {
                data,
                mode: RACE_MODE,
                uid: unsafe { libc::geteuid() },
                gid: unsafe { libc::getegid() },
                xattrs,
            };
            if let Err(e) = check_inode(&mnt.join(&rel), &node, 1) {
                out.push(format!("race file {rel}: {e}"));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Shared state, watchdog, statistics
// ---------------------------------------------------------------------------

#[derive(Default, Clone)]
struct Stats {
    ops: BTreeMap<&'static str, u64>,
    tolerated: BTreeMap<i32, u64>,
}

/// A barrier that gives up when the run is aborted and counts waiting as
/// progress (the thread that does not arrive is the one reported).
struct Gate {
    n: usize,
    state: Mutex<(usize, usize)>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self, ctx: &Ctx, id: usize) -> bool {
        let mut g = self.state.lock().unwrap();
        let generation = g.1;
        g.0 += 1;
        if g.0 == self.n {
            g.0 = 0;
            g.1 += 1;
            self.cv.notify_all();
            return true;
        }
        loop {
            let (ng, _) = self.cv.wait_timeout(g, Duration::from_millis(100)).unwrap();
            g = ng;
            if g.1 != generation {
                return true;
            }
            if ctx.abort.load(Ordering::SeqCst) {
                return false;
            }
            ctx.touch(id);
        }
    }
}

struct UnlinkReq {
    rel: String,
    owner: usize,
    done: Arc<AtomicBool>,
}

struct Ctx {
    mnt: PathBuf,
    start: Instant,
    run_for: Duration,
    nthreads: usize,
    rootless: bool,
    uid: u32,
    gid: u32,
    abort: AtomicBool,
    failures: Mutex<BTreeMap<String, (usize, Vec<String>)>>,
    nfail: AtomicUsize,
    progress: Vec<AtomicU64>,
    current: Vec<Mutex<String>>,
    stats: Vec<Mutex<Stats>>,
    gate: Gate,
    unlink_q: Mutex<Vec<UnlinkReq>>,
    d2: Vec<String>,
    d3: Vec<String>,
}

impl Ctx {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    fn touch(&self, id: usize) {
        self.progress[id].store(self.now_ms(), Ordering::SeqCst);
    }
    fn fail(&self, msg: String) {
        self.nfail.fetch_add(1, Ordering::SeqCst);
        let mut f = self.failures.lock().unwrap();
        let e = f.entry(failure_category(&msg)).or_default();
        e.0 += 1;
        if e.1.len() < 4 {
            e.1.push(msg);
        }
    }

    /// Failures grouped by kind: count and the first few of each.
    fn failure_report(&self) -> String {
        let f = self.failures.lock().unwrap();
        let mut out = String::new();
        for (cat, (n, examples)) in f.iter() {
            out.push_str(&format!("  [{n}x] {cat}\n"));
            for e in examples {
                out.push_str(&format!("      {e}\n"));
            }
        }
        out
    }
    fn m(&self, rel: &str) -> PathBuf {
        join_rel(&self.mnt, rel)
    }
}

/// A failure message with thread, op counter, times, numbers and quoted
/// names masked, so that repeats of one problem group together.
fn failure_category(msg: &str) -> String {
    let mut out = String::new();
    let mut in_quote = false;
    let mut last_hash = false;
    for c in msg.chars() {
        if c == '"' {
            in_quote = !in_quote;
            if in_quote {
                out.push_str("\"_\"");
            }
            last_hash = false;
            continue;
        }
        if in_quote {
            continue;
        }
        if c.is_ascii_digit() {
            if !last_hash {
                out.push('#');
            }
            last_hash = true;
            continue;
        }
        last_hash = false;
        out.push(c);
        if out.len() > 90 {
            break;
        }
    }
    out
}

/// Aborts the FUSE connection (where fusectl is reachable) and detaches the
/// mount, so threads blocked in the filesystem return and the guard's
/// unmount cannot block.
fn emergency_detach(mnt: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mnt.to_string_lossy().into_owned();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 4 && f[4] == want {
            if let Some((_, minor)) = f[2].split_once(':') {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
        }
    }
    let _ = sys::umount2(mnt, libc::MNT_DETACH);
}

/// Runs `f` on a thread and waits at most `limit` for it.
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let h = thread::spawn(f);
    let deadline = Instant::now() + limit;
    while !h.is_finished() {
        if Instant::now() > deadline {
            return Err(format!("{what}: no result after {limit:?} (hung?)"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    h.join()
        .map_err(|e| format!("{what}: panicked: {}", panic_text(&e)))
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "?".to_string()
    }
}

// ---------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------

const LOOKUP: &[i32] = &[ENOENT, ENOTDIR];
const OPEN_W: &[i32] = &[ENOENT, ENOTDIR, EISDIR];
const READ: &[i32] = &[ENOENT, ENOTDIR, EISDIR];
const UNLINK: &[i32] = &[ENOENT, ENOTDIR, EISDIR];
const RMDIR: &[i32] = &[ENOENT, ENOTDIR, ENOTEMPTY];
const MKDIR: &[i32] = &[ENOENT, ENOTDIR, EEXIST];
const LINK: &[i32] = &[ENOENT, ENOTDIR, EEXIST];
const RENAME: &[i32] = &[ENOENT, ENOTDIR, EISDIR, ENOTEMPTY, EEXIST];

struct Held {
    fd: OwnedFd,
    rel: String,
}

struct OuFile {
    fd: OwnedFd,
    rel: String,
    data: Vec<u8>,
    writable: bool,
    /// Opened read-only on a lower file that was never copied up.
    lower_ro: bool,
    done: Arc<AtomicBool>,
    ios_after: u32,
}

struct Worker {
    id: usize,
    ctx: Arc<Ctx>,
    rng: Rng,
    own: Owned,
    held: Vec<Held>,
    ou: Vec<OuFile>,
    ou_counter: usize,
    lower_open_next: usize,
    ops: u64,
}

fn ftruncate(fd: &OwnedFd, len: i64) -> Result<(), i32> {
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

fn pwrite_all(fd: &OwnedFd, data: &[u8], off: usize) -> Result<(), i32> {
    let mut done = 0;
    while done < data.len() {
        let n = sys::pwrite(fd, &data[done..], (off + done) as i64)?;
        if n == 0 {
            return Err(libc::EIO);
        }
        done += n;
    }
    Ok(())
}

fn write_all(fd: &OwnedFd, data: &[u8]) -> Result<(), i32> {
    let mut done = 0;
    while done < data.len() {
        let n = sys::write(fd, &data[done..])?;
        if n == 0 {
            return Err(libc::EIO);
        }
        done += n;
    }
    Ok(())
}

fn pread_exact(fd: &OwnedFd, len: usize, off: usize) -> Result<Vec<u8>, i32> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let chunk = sys::pread(fd, len - out.len(), (off + out.len()) as i64)?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Writes `data` at `off` into a model buffer, zero-filling a gap.
fn model_write(buf: &mut Vec<u8>, off: usize, data: &[u8]) {
    if buf.len() < off + data.len() {
        buf.resize(off + data.len(), 0);
    }
    buf[off..off + data.len()].copy_from_slice(data);
}

/// Checks one readdir pass: no name twice, no `.wh.` names.
fn check_listing(ents: &[DirEnt]) -> Result<BTreeSet<String>, String> {
    let mut names = BTreeSet::new();
    for e in ents {
        if e.name.starts_with(".wh.") {
            return Err(format!("readdir returned marker name {:?}", e.name));
        }
        if !names.insert(e.name.clone()) {
            return Err(format!("readdir returned {:?} twice", e.name));
        }
    }
    Ok(names)
}

impl Worker {
    fn begin(&mut self, op: &'static str, rel: &str) {
        self.ops += 1;
        *self.ctx.current[self.id].lock().unwrap() = format!("{op} {rel}");
        *self.ctx.stats[self.id]
            .lock()
            .unwrap()
            .ops
            .entry(op)
            .or_default() += 1;
    }

    fn fail(&self, op: &str, rel: &str, msg: String) {
        self.ctx.fail(format!(
            "t{} op#{} {op} {rel}: {msg} (at {:.1}s)",
            self.id,
            self.ops,
            self.ctx.start.elapsed().as_secs_f64()
        ));
    }

    /// Accepts success and the errnos in `allowed`; anything else is a failure.
    fn check<T>(&self, op: &str, rel: &str, r: Result<T, i32>, allowed: &[i32]) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) if allowed.contains(&e) => {
                *self.ctx.stats[self.id]
                    .lock()
                    .unwrap()
                    .tolerated
                    .entry(e)
                    .or_default() += 1;
                None
            }
            Err(e) => {
                self.fail(op, rel, format!("unexpected {}", errno_name(e)));
                None
            }
        }
    }

    /// Success required.
    fn must<T>(&self, op: &str, rel: &str, r: Result<T, i32>) -> Option<T> {
        self.check(op, rel, r, &[])
    }

    fn run(mut self) -> Owned {
        let n = self.ctx.nthreads;
        let mut next_round = 0;
        loop {
            self.ctx.touch(self.id);
            while next_round < ROUNDS
                && self.ctx.start.elapsed() >= self.ctx.run_for * next_round as u32 / ROUNDS as u32
            {
                if !self.race_round(next_round, n) {
                    break;
                }
                next_round += 1;
            }
            if self.ctx.abort.load(Ordering::SeqCst) || self.ctx.start.elapsed() >= self.ctx.run_for
            {
                break;
            }
            let x = self.rng.below(100);
            if x < 8 {
                self.serve_unlink();
            } else if x < 33 {
                self.owned_op();
            } else if x < 41 {
                self.ou_op();
            } else {
                self.chaos_op();
            }
        }
        self.finish();
        self.ctx.touch(self.id);
        *self.ctx.current[self.id].lock().unwrap() = "finished".into();
        self.own
    }

    // --- race rounds -------------------------------------------------------

    fn race_round(&mut self, r: usize, n: usize) -> bool {
        self.begin("race_barrier", &format!("race{r}"));
        if !self.ctx.gate.wait(&self.ctx, self.id) {
            return false;
        }
        let me = self.id;
        let mut order: Vec<usize> = (0..RACE_FILES).collect();
        if self.rng.chance(50) {
            order.reverse();
        }
        for j in order {
            let rel = race_rel(r, j);
            let p = self.ctx.m(&rel);
            let orig = race_orig(r, j);
            let chmod_me = me == race_chmod_thread(r, j, n);
            let chmod_first = self.rng.chance(50);
            let xattr_first = self.rng.chance(50);
            let xname = format!("user.race.t{me}");
            let xval = format!("r{r}j{j}t{me}");
            // A reader racing with the copy-ups of the others.
            self.begin("race_read", &rel);
            if let Some(fd) = self.must("race_read", &rel, sys::open(&p, libc::O_RDONLY, 0)) {
                self.race_check_read(&fd, r, j, n, &orig, &rel);
            }
            if chmod_me && chmod_first {
                self.begin("race_chmod", &rel);
                self.must("race_chmod", &rel, sys::chmod(&p, RACE_MODE));
            }
            if xattr_first {
                self.begin("race_setxattr", &rel);
                self.must(
                    "race_setxattr",
                    &rel,
                    sys::lsetxattr(&p, &xname, xval.as_bytes(), 0),
                );
            }
            self.begin("race_write", &rel);
            let off = race_mark_off(r, j, me, n);
            let mark = race_mark(r, j, me);
            if let Some(fd) = self.must("race_write", &rel, sys::open(&p, libc::O_RDWR, 0)) {
                if self
                    .must("race_write", &rel, pwrite_all(&fd, &mark, off))
                    .is_some()
                {
                    match pread_exact(&fd, RACE_MARK_LEN, off) {
                        Ok(d) if d == mark => {}
                        Ok(d) => self.fail(
                            "race_write",
                            &rel,
                            format!(
                                "reading back own write at {off}: {}",
                                describe_diff(&mark, &d)
                            ),
                        ),
                        Err(e) => {
                            self.fail("race_write", &rel, format!("pread: {}", errno_name(e)))
                        }
                    }
                }
                self.race_check_read(&fd, r, j, n, &orig, &rel);
            }
            if !xattr_first {
                self.begin("race_setxattr", &rel);
                self.must(
                    "race_setxattr",
                    &rel,
                    sys::lsetxattr(&p, &xname, xval.as_bytes(), 0),
                );
            }
            if chmod_me && !chmod_first {
                self.begin("race_chmod", &rel);
                self.must("race_chmod", &rel, sys::chmod(&p, RACE_MODE));
            }
            if me == race_append_thread(r, j, n) {
                self.begin("race_append", &rel);
                if let Some(fd) = self.must(
                    "race_append",
                    &rel,
                    sys::open(&p, libc::O_WRONLY | libc::O_APPEND, 0),
                ) {
                    self.must("race_append", &rel, write_all(&fd, &race_tail(r, j)));
                }
            }
            self.ctx.touch(self.id);
        }
        true
    }

    /// Reads a race file while others may be copying it up or writing their
    /// regions: the size is from the lower size to that plus the tail (an
    /// append in progress is seen part-way: the upper filesystem extends the
    /// file a page at a time, and the kernel overlay shows that too), the
    /// guard region at the end is the lower content, and another thread's
    /// region is either the lower content or that thread's marker.
    fn race_check_read(&self, fd: &OwnedFd, r: usize, j: usize, n: usize, orig: &[u8], rel: &str) {
        let size = orig.len();
        let full = size + race_tail(r, j).len();
        match sys::fstat(fd) {
            Ok(st) => {
                let s = st.st_size as usize;
                if !(size..=full).contains(&s) {
                    self.fail(
                        "race_read",
                        rel,
                        format!("st_size {s}, expected {size} to {full}"),
                    );
                }
            }
            Err(e) => self.fail("race_read", rel, format!("fstat: {}", errno_name(e))),
        }
        let g = size - RACE_GUARD_LEN;
        match pread_exact(fd, RACE_GUARD_LEN, g) {
            Ok(d) if d == orig[g..] => {}
            Ok(d) => self.fail(
                "race_read",
                rel,
                format!("guard region at {g}: {}", describe_diff(&orig[g..], &d)),
            ),
            Err(e) => self.fail("race_read", rel, format!("pread: {}", errno_name(e))),
        }
        let t = (self.id + 1) % n;
        let off = race_mark_off(r, j, t, n);
        match pread_exact(fd, RACE_MARK_LEN, off) {
            Ok(d) if d == orig[off..off + RACE_MARK_LEN] || d == race_mark(r, j, t) => {}
            Ok(d) => self.fail(
                "race_read",
                rel,
                format!(
                    "region of t{t} at {off} is neither the lower data nor t{t}'s write: {}",
                    describe_diff(&orig[off..off + RACE_MARK_LEN], &d)
                ),
            ),
            Err(e) => self.fail("race_read", rel, format!("pread: {}", errno_name(e))),
        }
    }

    // --- owned files -------------------------------------------------------

    fn own_fail(&mut self, op: &str, rel: &str, msg: String) {
        self.fail(op, rel, format!("[owned] {msg}"));
        self.own.broken = true;
    }

    fn own_must<T>(&mut self, op: &str, rel: &str, r: Result<T, i32>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.own_fail(op, rel, format!("unexpected {}", errno_name(e)));
                None
            }
        }
    }

    fn owned_op(&mut self) {
        if self.own.broken {
            return;
        }
        let nslots = self.own.rels.len();
        let s = self.rng.below(nslots);
        let rel = self.own.rels[s].clone();
        let p = self.ctx.m(&rel);
        let mut choice = self.rng.below(14);
        if self.own.at[s].is_none() && !matches!(choice, 10 | 12) {
            choice = 0;
        }
        let cur = self.own.at[s];
        match choice {
            0 => {
                self.begin("own_write", &rel);
                let len = if self.rng.chance(5) {
                    256 * 1024
                } else {
                    self.rng.below(40_000)
                };
                let data = fill(&format!("t{}w{}|", self.id, self.ops), len);
                if self
                    .own_must("own_write", &rel, sys::write_file(&p, &data, 0o644))
                    .is_some()
                {
                    match cur {
                        Some(i) => self.own.inodes[i].data = data,
                        None => {
                            let i = self.own.add(INode {
                                data,
                                mode: 0o644,
                                uid: self.ctx.uid,
                                gid: self.ctx.gid,
                                xattrs: BTreeMap::new(),
                            });
                            self.own.at[s] = Some(i);
                        }
                    }
                }
            }
            1 => {
                let i = cur.unwrap();
                self.begin("own_append", &rel);
                let data = fill(&format!("t{}a{}|", self.id, self.ops), self.rng.below(9000));
                if let Some(fd) = self.own_must(
                    "own_append",
                    &rel,
                    sys::open(&p, libc::O_WRONLY | libc::O_APPEND, 0),
                ) {
                    if self
                        .own_must("own_append", &rel, write_all(&fd, &data))
                        .is_some()
                    {
                        self.own.inodes[i].data.extend_from_slice(&data);
                    }
                }
            }
            2 => {
                let i = cur.unwrap();
                self.begin("own_pwrite", &rel);
                let len = self.own.inodes[i].data.len();
                let off = self.rng.below(len + 4096);
                let data = fill(
                    &format!("t{}p{}|", self.id, self.ops),
                    1 + self.rng.below(9000),
                );
                if let Some(fd) =
                    self.own_must("own_pwrite", &rel, sys::open(&p, libc::O_WRONLY, 0))
                {
                    if self
                        .own_must("own_pwrite", &rel, pwrite_all(&fd, &data, off))
                        .is_some()
                    {
                        model_write(&mut self.own.inodes[i].data, off, &data);
                    }
                }
            }
            3 => {
                let i = cur.unwrap();
                self.begin("own_truncate", &rel);
                let len = self.own.inodes[i].data.len();
                let new = self.rng.below(len + 8192);
                if self
                    .own_must("own_truncate", &rel, sys::truncate(&p, new as i64))
                    .is_some()
                {
                    self.own.inodes[i].data.resize(new, 0);
                }
            }
            4 => {
                let i = cur.unwrap();
                self.begin("own_chmod", &rel);
                let mode = *self.rng.pick(&FILE_MODES);
                if self
                    .own_must("own_chmod", &rel, sys::chmod(&p, mode))
                    .is_some()
                {
                    self.own.inodes[i].mode = mode;
                }
            }
            5 if !self.ctx.rootless => {
                let i = cur.unwrap();
                self.begin("own_chown", &rel);
                let id = *self.rng.pick(&[0u32, 1000, 1001]);
                if self
                    .own_must("own_chown", &rel, sys::lchown(&p, id, id))
                    .is_some()
                {
                    self.own.inodes[i].uid = id;
                    self.own.inodes[i].gid = id;
                }
            }
            5 | 6 => {
                let i = cur.unwrap();
                self.begin("own_setxattr", &rel);
                let name = format!("user.k{}", self.rng.below(4));
                let val = format!("t{}x{}", self.id, self.ops).into_bytes();
                if self
                    .own_must("own_setxattr", &rel, sys::lsetxattr(&p, &name, &val, 0))
                    .is_some()
                {
                    self.own.inodes[i].xattrs.insert(name, val);
                }
            }
            7 => {
                let i = cur.unwrap();
                let d = self.rng.below(nslots);
                if d == s || self.own.at[d] == Some(i) {
                    return;
                }
                let drel = self.own.rels[d].clone();
                self.begin("own_rename", &format!("{rel} -> {drel}"));
                if self
                    .own_must(
                        "own_rename",
                        &format!("{rel} -> {drel}"),
                        sys::rename(&p, &self.ctx.m(&drel)),
                    )
                    .is_some()
                {
                    self.own.at[d] = Some(i);
                    self.own.at[s] = None;
                }
            }
            8 => {
                let i = cur.unwrap();
                let d = self.rng.below(nslots);
                if self.own.at[d].is_some() {
                    return;
                }
                let drel = self.own.rels[d].clone();
                self.begin("own_link", &format!("{rel} -> {drel}"));
                if self
                    .own_must(
                        "own_link",
                        &format!("{rel} -> {drel}"),
                        sys::link(&p, &self.ctx.m(&drel)),
                    )
                    .is_some()
                {
                    self.own.at[d] = Some(i);
                }
            }
            9 => {
                self.begin("own_unlink", &rel);
                if self.own_must("own_unlink", &rel, sys::unlink(&p)).is_some() {
                    self.own.at[s] = None;
                }
            }
            10 | 11 => {
                self.begin("own_verify", &rel);
                let r = match cur {
                    None => match sys::lstat(&p) {
                        Err(ENOENT) => Ok(()),
                        Err(e) => Err(format!("expected absent, lstat {}", errno_name(e))),
                        Ok(_) => Err("expected absent, but it exists".to_string()),
                    },
                    Some(i) => check_inode(&p, &self.own.inodes[i], self.own.nlink(i)).map(drop),
                };
                if let Err(e) = r {
                    self.own_fail("own_verify", &rel, e);
                }
            }
            12 => {
                let k = s / OWN_NAMES;
                let drel = format!("d{k}");
                self.begin("own_readdir", &drel);
                match getdents_all(&self.ctx.m(&drel), 1024) {
                    Ok((ents, _)) => match check_listing(&ents) {
                        Ok(names) => {
                            for n in 0..OWN_NAMES {
                                let slot = k * OWN_NAMES + n;
                                let name = format!("o{}_{n}", self.id);
                                let listed = names.contains(&name);
                                let present = self.own.at[slot].is_some();
                                if listed != present {
                                    self.own_fail(
                                        "own_readdir",
                                        &drel,
                                        format!(
                                            "{name}: listed={listed} but the file is {}",
                                            if present { "present" } else { "absent" }
                                        ),
                                    );
                                }
                            }
                        }
                        Err(e) => self.fail("own_readdir", &drel, e),
                    },
                    Err(e) => self.own_fail("own_readdir", &drel, errno_name(e)),
                }
            }
            _ => {
                // A descriptor opened before a write through another one
                // must see the new data (also across copy-up).
                let i = cur.unwrap();
                self.begin("own_reopen", &rel);
                let Some(ro) = self.own_must("own_reopen", &rel, sys::open(&p, libc::O_RDONLY, 0))
                else {
                    return;
                };
                let want = self.own.inodes[i].data.clone();
                match sys::read_fd_all(&ro) {
                    Ok(d) if d == want => {}
                    Ok(d) => {
                        return self.own_fail(
                            "own_reopen",
                            &rel,
                            format!("before write: {}", describe_diff(&want, &d)),
                        )
                    }
                    Err(e) => return self.own_fail("own_reopen", &rel, errno_name(e)),
                }
                let data = fill(
                    &format!("t{}r{}|", self.id, self.ops),
                    1 + self.rng.below(5000),
                );
                let off = self.rng.below(want.len() + 1);
                let Some(wfd) = self.own_must("own_reopen", &rel, sys::open(&p, libc::O_WRONLY, 0))
                else {
                    return;
                };
                if self
                    .own_must("own_reopen", &rel, pwrite_all(&wfd, &data, off))
                    .is_none()
                {
                    return;
                }
                model_write(&mut self.own.inodes[i].data, off, &data);
                drop(wfd);
                let want = self.own.inodes[i].data.clone();
                match sys::read_fd_all(&ro) {
                    Ok(d) if d == want => {}
                    Ok(d) => self.own_fail(
                        "own_reopen",
                        &rel,
                        format!(
                            "descriptor opened before the write: {}",
                            describe_diff(&want, &d)
                        ),
                    ),
                    Err(e) => self.own_fail("own_reopen", &rel, errno_name(e)),
                }
            }
        }
    }

    // --- open, then unlinked by another thread ----------------------------

    fn ou_op(&mut self) {
        if self.ou.len() < 2 && (self.ou.is_empty() || self.rng.chance(30)) {
            self.ou_start();
            return;
        }
        if self.ou.is_empty() {
            return;
        }
        let i = self.rng.below(self.ou.len());
        if self.ou[i].done.load(Ordering::SeqCst) {
            self.ou[i].ios_after += 1;
            if self.ou[i].ios_after > 3 {
                let f = self.ou.swap_remove(i);
                self.ou_close(f);
                return;
            }
        }
        self.ou_io(i);
    }

    fn ou_start(&mut self) {
        let (rel, fd, data, writable, lower_ro) =
            if self.lower_open_next < LOWER_OPEN_FILES && self.rng.chance(40) {
                let n = self.lower_open_next;
                self.lower_open_next += 1;
                let rel = lower_open_rel(self.id, n);
                let writable = self.rng.chance(50);
                self.begin("ou_open_lower", &rel);
                let flags = if writable {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                let Some(fd) = self.must(
                    "ou_open_lower",
                    &rel,
                    sys::open(&self.ctx.m(&rel), flags, 0),
                ) else {
                    return;
                };
                (rel, fd, lower_open_content(self.id, n), writable, !writable)
            } else {
                let rel = format!("d{}/u{}_{}", self.rng.below(DIRS), self.id, self.ou_counter);
                self.ou_counter += 1;
                self.begin("ou_create", &rel);
                let Some(fd) = self.must(
                    "ou_create",
                    &rel,
                    sys::open(
                        &self.ctx.m(&rel),
                        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                        0o644,
                    ),
                ) else {
                    return;
                };
                let data = pattern(&rel, 1000 + self.rng.below(64 * 1024));
                if self
                    .must("ou_create", &rel, pwrite_all(&fd, &data, 0))
                    .is_none()
                {
                    return;
                }
                (rel, fd, data, true, false)
            };
        let done = Arc::new(AtomicBool::new(false));
        self.ctx.unlink_q.lock().unwrap().push(UnlinkReq {
            rel: rel.clone(),
            owner: self.id,
            done: done.clone(),
        });
        self.ou.push(OuFile {
            fd,
            rel,
            data,
            writable,
            lower_ro,
            done,
            ios_after: 0,
        });
    }

    fn ou_verify(&self, f: &OuFile, op: &str) {
        match sys::read_fd_all(&f.fd) {
            Ok(d) if d == f.data => {}
            Ok(d) => self.fail(
                op,
                &f.rel,
                format!(
                    "content via the open descriptor (unlinked={}): {}",
                    f.done.load(Ordering::SeqCst),
                    describe_diff(&f.data, &d)
                ),
            ),
            Err(e) => self.fail(
                op,
                &f.rel,
                format!("read via descriptor: {}", errno_name(e)),
            ),
        }
    }

    fn ou_io(&mut self, i: usize) {
        let rel = self.ou[i].rel.clone();
        let x = self.rng.below(100);
        if self.ou[i].writable && x < 40 {
            self.begin("ou_pwrite", &rel);
            let len = self.ou[i].data.len();
            let off = self.rng.below(len + 4096);
            let data = fill(
                &format!("t{}o{}|", self.id, self.ops),
                1 + self.rng.below(8000),
            );
            if self
                .must("ou_pwrite", &rel, pwrite_all(&self.ou[i].fd, &data, off))
                .is_some()
            {
                model_write(&mut self.ou[i].data, off, &data);
            }
        } else if self.ou[i].writable && x < 55 {
            self.begin("ou_ftruncate", &rel);
            let new = self.rng.below(self.ou[i].data.len() + 4096);
            if self
                .must("ou_ftruncate", &rel, ftruncate(&self.ou[i].fd, new as i64))
                .is_some()
            {
                self.ou[i].data.resize(new, 0);
            }
        } else {
            self.begin("ou_read", &rel);
            self.ou_verify(&self.ou[i], "ou_read");
            let f = &self.ou[i];
            // Read the flag before the fstat: an unlink that completes
            // after the fstat must not be held against it.
            let unlinked = f.done.load(Ordering::SeqCst);
            match sys::fstat(&f.fd) {
                Ok(st) => {
                    if st.st_size as usize != f.data.len() {
                        self.fail(
                            "ou_fstat",
                            &rel,
                            format!("st_size {} != expected {}", st.st_size, f.data.len()),
                        );
                    }
                    if unlinked && !f.lower_ro && st.st_nlink != 0 {
                        self.fail(
                            "ou_fstat",
                            &rel,
                            format!("st_nlink {} after unlink, expected 0", st.st_nlink),
                        );
                    }
                }
                Err(e) => self.fail("ou_fstat", &rel, errno_name(e)),
            }
        }
    }

    fn ou_close(&mut self, f: OuFile) {
        self.begin("ou_close", &f.rel);
        self.ou_verify(&f, "ou_close");
        let rel = f.rel.clone();
        drop(f);
        match sys::lstat(&self.ctx.m(&rel)) {
            Err(ENOENT) => {}
            Err(e) => self.fail(
                "ou_close",
                &rel,
                format!("lstat after unlink: {}", errno_name(e)),
            ),
            Ok(_) => self.fail("ou_close", &rel, "name still exists after unlink".into()),
        }
    }

    /// Unlinks a name another thread holds open.
    fn serve_unlink(&mut self) {
        let req = {
            let mut q = self.ctx.unlink_q.lock().unwrap();
            match q.iter().position(|r| r.owner != self.id) {
                Some(i) => q.swap_remove(i),
                None => return,
            }
        };
        self.begin("unlink_open", &req.rel);
        self.must("unlink_open", &req.rel, sys::unlink(&self.ctx.m(&req.rel)));
        req.done.store(true, Ordering::SeqCst);
    }

    // --- shared names ------------------------------------------------------

    fn pick_pool(&mut self) -> String {
        if self.rng.chance(60) {
            self.rng.pick(&self.ctx.d2).clone()
        } else {
            self.rng.pick(&self.ctx.d3).clone()
        }
    }

    fn chaos_op(&mut self) {
        let rel = self.pick_pool();
        let p = self.ctx.m(&rel);
        let x = self.rng.below(100);
        match x {
            0..=9 => {
                self.begin("write", &rel);
                let Some(fd) = self.check(
                    "write",
                    &rel,
                    sys::open(&p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644),
                    OPEN_W,
                ) else {
                    return;
                };
                let data = fill(
                    &format!("t{}W{}|", self.id, self.ops),
                    self.rng.below(16_000),
                );
                self.must("write", &rel, pwrite_all(&fd, &data, 0));
            }
            10..=16 => {
                self.begin("append", &rel);
                let Some(fd) = self.check(
                    "append",
                    &rel,
                    sys::open(&p, libc::O_WRONLY | libc::O_APPEND, 0),
                    OPEN_W,
                ) else {
                    return;
                };
                let data = fill(&format!("t{}A{}|", self.id, self.ops), self.rng.below(4000));
                self.must("append", &rel, write_all(&fd, &data));
            }
            17..=21 => {
                self.begin("truncate", &rel);
                let len = self.rng.below(128 * 1024) as i64;
                self.check("truncate", &rel, sys::truncate(&p, len), OPEN_W);
            }
            22..=25 => {
                self.begin("chmod", &rel);
                let mode = *self.rng.pick(&FILE_MODES);
                self.check("chmod", &rel, sys::chmod(&p, mode), LOOKUP);
            }
            26..=27 if !self.ctx.rootless => {
                self.begin("chown", &rel);
                let id = *self.rng.pick(&[0u32, 1000, 1001]);
                self.check("chown", &rel, sys::lchown(&p, id, id), LOOKUP);
            }
            26..=31 => {
                self.begin("setxattr", &rel);
                let name = format!("user.s{}", self.rng.below(4));
                let val = format!("t{}", self.id);
                self.check(
                    "setxattr",
                    &rel,
                    sys::lsetxattr(&p, &name, val.as_bytes(), 0),
                    LOOKUP,
                );
            }
            32..=43 => {
                let dst = self.pick_pool();
                if dst.starts_with(&format!("{rel}/")) {
                    return;
                }
                let what = format!("{rel} -> {dst}");
                let noreplace = self.rng.chance(20);
                let op = if noreplace {
                    "rename_noreplace"
                } else {
                    "rename"
                };
                self.begin(op, &what);
                let flags = if noreplace { sys::RENAME_NOREPLACE } else { 0 };
                match sys::rename2(&p, &self.ctx.m(&dst), flags) {
                    Err(EXDEV) if is_lower_dir_rel(&rel) => {
                        self.check(op, &what, Err::<(), i32>(EXDEV), &[EXDEV]);
                    }
                    // EINVAL: a concurrent rename moved the target's parent
                    // below the source between the path walk and the rename
                    // lock; the VFS then refuses to put a directory inside
                    // itself (the kernel overlay does the same). The moves
                    // that cause it can leave the two paths at any depth, so
                    // what tells it apart is that the source is a directory
                    // (the VFS never answers EINVAL for a file).
                    Err(EINVAL)
                        if rel.matches('/').count() < dst.matches('/').count()
                            || sys::lstat(&p)
                                .is_ok_and(|st| mode_kind(st.st_mode) == Kind::Dir) =>
                    {
                        self.check(op, &what, Err::<(), i32>(EINVAL), &[EINVAL]);
                    }
                    r => {
                        self.check(op, &what, r, RENAME);
                    }
                }
            }
            44..=49 => {
                let dst = self.pick_pool();
                let what = format!("{rel} -> {dst}");
                self.begin("link", &what);
                match sys::link(&p, &self.ctx.m(&dst)) {
                    Err(EPERM) => {
                        // Only legitimate when a concurrent rename put a
                        // directory at the source name.
                        match sys::lstat(&p) {
                            Ok(st) if mode_kind(st.st_mode) == Kind::Dir => {
                                self.check("link", &what, Err::<(), i32>(EPERM), &[EPERM]);
                            }
                            Err(ENOENT) => {
                                self.check("link", &what, Err::<(), i32>(EPERM), &[EPERM]);
                            }
                            other => self.fail(
                                "link",
                                &what,
                                format!(
                                    "EPERM, but the source is {:?}",
                                    other.map(|st| mode_kind(st.st_mode))
                                ),
                            ),
                        }
                    }
                    r => {
                        self.check("link", &what, r, LINK);
                    }
                }
            }
            50..=57 => {
                self.begin("unlink", &rel);
                self.check("unlink", &rel, sys::unlink(&p), UNLINK);
            }
            58..=62 => {
                self.begin("mkdir", &rel);
                self.check("mkdir", &rel, sys::mkdir(&p, 0o755), MKDIR);
            }
            63..=67 => {
                self.begin("rmdir", &rel);
                self.check("rmdir", &rel, sys::rmdir(&p), RMDIR);
            }
            68..=75 => self.stat_op(),
            76..=82 => {
                self.begin("read", &rel);
                let Some(fd) = self.check("read", &rel, sys::open(&p, libc::O_RDONLY, 0), READ)
                else {
                    return;
                };
                let off = self.rng.below(8192) as i64;
                self.check("read", &rel, sys::pread(&fd, 65536, off), &[EISDIR]);
            }
            83..=91 => self.readdir_op(),
            _ => self.held_op(),
        }
    }

    fn stat_op(&mut self) {
        let x = self.rng.below(100);
        let rel = if x < 55 {
            self.pick_pool()
        } else if x < 85 {
            let t = self.rng.below(self.ctx.nthreads);
            own_rel(t, self.rng.below(DIRS), self.rng.below(OWN_NAMES))
        } else if x < 95 {
            let k = self.rng.below(DIRS);
            let name = self.rng.pick(&depth2_names()).clone();
            let t = self.rng.below(self.ctx.nthreads);
            let n = self.rng.below(OWN_NAMES);
            if self.rng.chance(50) {
                format!("d{k}/.wh.{name}")
            } else {
                format!("d{k}/.wh.o{t}_{n}")
            }
        } else {
            race_rel(self.rng.below(ROUNDS), self.rng.below(RACE_FILES))
        };
        self.begin("stat", &rel);
        let r = sys::lstat(&self.ctx.m(&rel));
        if rel.contains("/.wh.") {
            match r {
                Err(ENOENT) => {}
                Err(e) => self.fail("stat", &rel, format!("{} (expected ENOENT)", errno_name(e))),
                Ok(_) => self.fail("stat", &rel, "a .wh. name resolves to an entry".into()),
            }
        } else {
            self.check("stat", &rel, r, LOOKUP);
        }
    }

    fn readdir_op(&mut self) {
        let x = self.rng.below(100);
        let rel = if x < 5 {
            String::new()
        } else if x < 50 {
            format!("d{}", self.rng.below(DIRS))
        } else {
            self.rng.pick(&self.ctx.d2).clone()
        };
        self.begin("readdir", &rel);
        let bufsize = *self.rng.pick(&[512usize, 4096, 32768]);
        if let Some((ents, _)) = self.check(
            "readdir",
            &rel,
            getdents_all(&self.ctx.m(&rel), bufsize),
            LOOKUP,
        ) {
            if let Err(e) = check_listing(&ents) {
                self.fail("readdir", &rel, e);
            }
        }
    }

    fn held_op(&mut self) {
        if self.held.len() < 3 && (self.held.is_empty() || self.rng.chance(25)) {
            let rel = self.pick_pool();
            self.begin("fd_open", &rel);
            if let Some(fd) = self.check(
                "fd_open",
                &rel,
                sys::open(&self.ctx.m(&rel), libc::O_RDWR, 0),
                OPEN_W,
            ) {
                self.held.push(Held { fd, rel });
            }
            return;
        }
        let i = self.rng.below(self.held.len());
        let rel = self.held[i].rel.clone();
        if self.rng.chance(15) {
            self.begin("fd_close", &rel);
            self.held.swap_remove(i);
            return;
        }
        let off = self.rng.below(128 * 1024);
        match self.rng.below(4) {
            0 => {
                self.begin("fd_pwrite", &rel);
                let data = fill(
                    &format!("t{}F{}|", self.id, self.ops),
                    1 + self.rng.below(8000),
                );
                self.must("fd_pwrite", &rel, pwrite_all(&self.held[i].fd, &data, off));
            }
            1 => {
                self.begin("fd_pread", &rel);
                self.must(
                    "fd_pread",
                    &rel,
                    sys::pread(&self.held[i].fd, 65536, off as i64),
                );
            }
            2 => {
                self.begin("fd_fstat", &rel);
                if let Some(st) = self.must("fd_fstat", &rel, sys::fstat(&self.held[i].fd)) {
                    if mode_kind(st.st_mode) != Kind::File {
                        self.fail("fd_fstat", &rel, format!("mode {:o}", st.st_mode));
                    }
                }
            }
            _ => {
                self.begin("fd_ftruncate", &rel);
                self.must(
                    "fd_ftruncate",
                    &rel,
                    ftruncate(&self.held[i].fd, off as i64),
                );
            }
        }
    }

    /// Closes everything; unlinks this thread's pending open files itself.
    fn finish(&mut self) {
        self.held.clear();
        let mine: Vec<UnlinkReq> = {
            let mut q = self.ctx.unlink_q.lock().unwrap();
            let (mine, rest): (Vec<_>, Vec<_>) = q.drain(..).partition(|r| r.owner == self.id);
            *q = rest;
            mine
        };
        for req in mine {
            self.begin("unlink_open", &req.rel);
            self.must("unlink_open", &req.rel, sys::unlink(&self.ctx.m(&req.rel)));
            req.done.store(true, Ordering::SeqCst);
        }
        for f in std::mem::take(&mut self.ou) {
            self.begin("ou_wait_unlink", &f.rel);
            while !f.done.load(Ordering::SeqCst) {
                if self.ctx.abort.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
            self.ou_close(f);
        }
    }
}

// ---------------------------------------------------------------------------
// Whole-tree walk
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct WNode {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    hash: u64,
    /// Files only (0 for directories).
    nlink: u64,
    ino: (u64, u64),
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn content_hash(d: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(d);
    h.finish()
}

/// Walks the merged tree: every readdir pass without duplicates or `.wh.`
/// names, every listed name lstat-able and readable.
fn walk_tree(mnt: &Path) -> (BTreeMap<String, WNode>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut errs = Vec::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let p = join_rel(mnt, &rel);
        let ents = match getdents_all(&p, 4096) {
            Ok((e, _)) => e,
            Err(e) => {
                errs.push(format!("walk: readdir {rel:?}: {}", errno_name(e)));
                continue;
            }
        };
        if let Err(e) = check_listing(&ents) {
            errs.push(format!("walk: {rel:?}: {e}"));
        }
        let mut names: Vec<String> = ents
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let crel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let cp = mnt.join(&crel);
            let st = match sys::lstat(&cp) {
                Ok(st) => st,
                Err(e) => {
                    errs.push(format!("walk: lstat {crel:?} (listed): {}", errno_name(e)));
                    continue;
                }
            };
            let kind = mode_kind(st.st_mode);
            let (size, hash, nlink) = match kind {
                Kind::File => match sys::read_all(&cp) {
                    Ok(d) => {
                        if d.len() as i64 != st.st_size {
                            errs.push(format!(
                                "walk: {crel:?}: read {} bytes, st_size {}",
                                d.len(),
                                st.st_size
                            ));
                        }
                        (d.len() as u64, content_hash(&d), st.st_nlink)
                    }
                    Err(e) => {
                        errs.push(format!("walk: read {crel:?}: {}", errno_name(e)));
                        continue;
                    }
                },
                Kind::Dir => {
                    todo.push(crel.clone());
                    (0, 0, 0)
                }
                _ => (st.st_size as u64, 0, st.st_nlink),
            };
            let xattrs = match user_xattrs(&cp) {
                Ok(x) => x,
                Err(e) => {
                    errs.push(format!("walk: {crel:?}: {e}"));
                    BTreeMap::new()
                }
            };
            out.insert(
                crel,
                WNode {
                    kind,
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                    size,
                    hash,
                    nlink,
                    ino: (st.st_dev, st.st_ino),
                    xattrs,
                },
            );
        }
    }
    // Names sharing an inode number must be one file: same content and
    // metadata, and no more names than its link count.
    let mut groups: BTreeMap<(u64, u64), Vec<&String>> = BTreeMap::new();
    for (k, v) in &out {
        groups.entry(v.ino).or_default().push(k);
    }
    for (ino, names) in groups {
        if names.len() < 2 {
            continue;
        }
        let first = &out[names[0]];
        for n in &names[1..] {
            if out[*n] != *first {
                errs.push(format!(
                    "walk: {:?} and {n:?} share inode {ino:?} but differ: {first:?} vs {:?}",
                    names[0], out[*n]
                ));
            }
        }
        if first.kind == Kind::Dir || (names.len() as u64) > first.nlink {
            errs.push(format!(
                "walk: {} names share inode {ino:?} ({names:?}) but nlink is {}",
                names.len(),
                first.nlink
            ));
        }
    }
    (out, errs)
}

fn diff_walks(a: &BTreeMap<String, WNode>, b: &BTreeMap<String, WNode>) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(format!("{k:?}: gone after remount (was {x:?})")),
            (None, Some(y)) => out.push(format!("{k:?}: appeared after remount ({y:?})")),
            // st_dev is the mount's own device number, new for each mount;
            // st_ino must stay.
            (Some(x), Some(y))
                if x.ino.1 != y.ino.1
                    || WNode {
                        ino: y.ino,
                        ..x.clone()
                    } != *y =>
            {
                out.push(format!("{k:?}: before remount {x:?}, after {y:?}"))
            }
            _ => {}
        }
    }
    out
}

fn work_leftovers(s: &Stack) -> Vec<String> {
    s.work_leftovers()
        .into_iter()
        .map(|(n, k)| format!("W/work/{n} ({k:?})"))
        .collect()
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

fn summary(ctx: &Ctx, elapsed: Duration, failures: usize) -> String {
    let mut ops: BTreeMap<&str, u64> = BTreeMap::new();
    let mut tol: BTreeMap<i32, u64> = BTreeMap::new();
    for s in &ctx.stats {
        let s = s.lock().unwrap().clone();
        for (k, v) in s.ops {
            *ops.entry(k).or_default() += v;
        }
        for (k, v) in s.tolerated {
            *tol.entry(k).or_default() += v;
        }
    }
    let total: u64 = ops.values().sum();
    let ntol: u64 = tol.values().sum();
    let ops_s: Vec<String> = ops.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let tol_s: Vec<String> = tol
        .iter()
        .map(|(k, v)| format!("{}={v}", errno_name(*k)))
        .collect();
    format!(
        "stress: threads={} run={}s elapsed={:.1}s ops={total} [{}] tolerated={ntol} [{}] failures={failures}",
        ctx.nthreads,
        ctx.run_for.as_secs(),
        elapsed.as_secs_f64(),
        ops_s.join(" "),
        tol_s.join(" ")
    )
}

/// Ends the test on a hang: aborts the FUSE connection and detaches the
/// mount (the guard's unmount then only reaps the daemon), then panics.
fn fatal(ctx: &Ctx, mnt: &Path, seed: u64, daemon_err: &str, what: String) -> ! {
    ctx.abort.store(true, Ordering::SeqCst);
    let sum = summary(ctx, ctx.start.elapsed(), ctx.nfail.load(Ordering::SeqCst));
    emergency_detach(mnt);
    let lines: Vec<&str> = daemon_err.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    panic!(
        "{what}\nseed={seed:#x}\n{sum}\nfailures so far:\n{}--- daemon stderr (tail) ---\n{tail}",
        ctx.failure_report()
    );
}

#[test]
fn concurrent_mixed_operations_stay_consistent() {
    unsafe { libc::umask(0o022) };
    let secs = env_u64("STRATAFS_STRESS_SECS", 20);
    let nthreads = env_u64("STRATAFS_STRESS_THREADS", 8).max(3) as usize;
    let stall = Duration::from_secs(env_u64("STRATAFS_STRESS_STALL_SECS", 30));
    let seed = env_u64(
        "STRATAFS_STRESS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    let rootless = is_rootless();
    eprintln!(
        "stress: seed={seed:#x} threads={nthreads} secs={secs} rootless={rootless} (STRATAFS_STRESS_SEED reproduces the op streams)"
    );

    let spec = build_spec(nthreads);
    let stack = spec.build(Markers::AsWritten);
    let mount = stack.mount_strata();
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let (d2, d3) = shared_pool();
    let ctx = Arc::new(Ctx {
        mnt: stack.mnt.clone(),
        start: Instant::now(),
        run_for: Duration::from_secs(secs),
        nthreads,
        rootless,
        uid,
        gid,
        abort: AtomicBool::new(false),
        failures: Mutex::new(BTreeMap::new()),
        nfail: AtomicUsize::new(0),
        progress: (0..nthreads).map(|_| AtomicU64::new(0)).collect(),
        current: (0..nthreads).map(|_| Mutex::new("start".into())).collect(),
        stats: (0..nthreads)
            .map(|_| Mutex::new(Stats::default()))
            .collect(),
        gate: Gate {
            n: nthreads,
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
        },
        unlink_q: Mutex::new(Vec::new()),
        d2,
        d3,
    });

    let mut handles: Vec<Option<JoinHandle<Owned>>> = Vec::new();
    for id in 0..nthreads {
        let w = Worker {
            id,
            ctx: ctx.clone(),
            rng: Rng::new(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            own: Owned::initial(id, uid, gid),
            held: Vec::new(),
            ou: Vec::new(),
            ou_counter: 0,
            lower_open_next: 0,
            ops: 0,
        };
        let h = thread::Builder::new()
            .name(format!("stress-{id}"))
            .spawn(move || w.run())
            .expect("spawn worker");
        handles.push(Some(h));
    }

    // Watchdog: every worker must make progress; the whole run is capped too.
    let hard_cap = ctx.run_for * 2 + stall * 4 + Duration::from_secs(60);
    let mut owned: Vec<Option<Owned>> = vec![None; nthreads];
    loop {
        for (i, h) in handles.iter_mut().enumerate() {
            if h.as_ref().is_some_and(|h| h.is_finished()) {
                match h.take().unwrap().join() {
                    Ok(o) => owned[i] = Some(o),
                    Err(e) => {
                        ctx.fail(format!("worker t{i} panicked: {}", panic_text(&e)));
                        ctx.abort.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
        if handles.iter().all(|h| h.is_none()) {
            break;
        }
        let now = ctx.now_ms();
        let mut stalled = Vec::new();
        for (i, h) in handles.iter().enumerate() {
            if h.is_none() {
                continue;
            }
            let last = ctx.progress[i].load(Ordering::SeqCst);
            if now.saturating_sub(last) > stall.as_millis() as u64 {
                stalled.push(format!(
                    "t{i} stuck for {:.1}s in `{}`",
                    (now - last) as f64 / 1000.0,
                    ctx.current[i].lock().unwrap()
                ));
            }
        }
        if !stalled.is_empty() {
            fatal(
                &ctx,
                &stack.mnt,
                seed,
                &mount.daemon_stderr(),
                format!(
                "HANG: worker(s) made no progress for {stall:?} (deadlock in the daemon?):\n  {}",
                stalled.join("\n  ")
            ),
            );
        }
        if ctx.start.elapsed() > hard_cap {
            fatal(
                &ctx,
                &stack.mnt,
                seed,
                &mount.daemon_stderr(),
                format!("workers still running after {hard_cap:?}"),
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    let run_elapsed = ctx.start.elapsed();
    let owned: Arc<Vec<Owned>> = Arc::new(owned.into_iter().flatten().collect());

    // Checks on the live mount.
    let mut problems: Vec<String> = Vec::new();
    let mnt = stack.mnt.clone();
    let limit = Duration::from_secs(120);
    let (walk1, errs) = {
        let mnt = mnt.clone();
        bounded("walk of the merged tree", limit, move || walk_tree(&mnt))
            .unwrap_or_else(|e| fatal(&ctx, &stack.mnt, seed, &mount.daemon_stderr(), e))
    };
    problems.extend(errs);
    let check_models = |when: &'static str| -> Vec<String> {
        let mnt = mnt.clone();
        let owned = owned.clone();
        bounded("checking owned and race files", limit, move || {
            let mut out = Vec::new();
            for o in owned.iter() {
                for e in check_owned(&mnt, o) {
                    out.push(format!("{when}: t{} owned {e}", o.thread));
                }
            }
            for e in check_race_files(&mnt, nthreads) {
                out.push(format!("{when}: {e}"));
            }
            out
        })
        .unwrap_or_else(|e| fatal(&ctx, &stack.mnt, seed, "", e))
    };
    problems.extend(check_models("live"));
    problems.extend(
        work_leftovers(&stack)
            .into_iter()
            .map(|e| format!("live: leftover in work dir: {e}")),
    );

    // Unmount, check the work dir, remount, check again.
    let daemon_err = mount.daemon_stderr();
    match bounded("unmount", limit, move || mount.unmount())
        .unwrap_or_else(|e| fatal(&ctx, &stack.mnt, seed, &daemon_err, e))
    {
        Some(st) if st.success() => {}
        Some(st) => problems.push(format!("daemon exited with {st} after unmount")),
        None => problems.push("daemon did not exit after unmount (killed)".into()),
    }
    problems.extend(
        work_leftovers(&stack)
            .into_iter()
            .map(|e| format!("unmounted: leftover in work dir: {e}")),
    );
    let mount2 = stack.mount_strata();
    let (walk2, errs) = {
        let mnt = mnt.clone();
        bounded("walk after remount", limit, move || walk_tree(&mnt))
            .unwrap_or_else(|e| fatal(&ctx, &stack.mnt, seed, &mount2.daemon_stderr(), e))
    };
    problems.extend(errs.into_iter().map(|e| format!("remounted: {e}")));
    problems.extend(diff_walks(&walk1, &walk2));
    problems.extend(check_models("remounted"));
    problems.extend(
        work_leftovers(&stack)
            .into_iter()
            .map(|e| format!("remounted: leftover in work dir: {e}")),
    );
    let daemon_err2 = mount2.daemon_stderr();
    match bounded("second unmount", limit, move || mount2.unmount())
        .unwrap_or_else(|e| fatal(&ctx, &stack.mnt, seed, &daemon_err2, e))
    {
        Some(st) if st.success() => {}
        Some(st) => problems.push(format!("daemon exited with {st} after the second unmount")),
        None => problems.push("daemon did not exit after the second unmount".into()),
    }

    for p in problems {
        ctx.fail(p);
    }
    let nfail = ctx.nfail.load(Ordering::SeqCst);
    println!(
        "{} files={} seed={seed:#x}",
        summary(&ctx, run_elapsed, nfail),
        walk1.len()
    );
    assert!(
        nfail == 0,
        "{nfail} failure(s) (seed={seed:#x}), by kind:\n{}--- daemon stderr ---\n{daemon_err}\n--- daemon stderr (remount) ---\n{daemon_err2}",
        ctx.failure_report()
    );
}
