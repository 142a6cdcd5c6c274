//! Crash safety: the daemon is killed with SIGKILL at random moments while a
//! worker process copies up large files, renames, deletes and creates files
//! and removes and re-creates directories through the mount. After every
//! kill a fresh mount of the same layers must show every file in its old or
//! its new state (never partial, never under both names, never missing),
//! every operation that completed (in particular every fsync'ed file) must
//! be intact, the lower layers must be untouched, the new mount must have
//! cleared the leftovers in `WORKDIR/work`, and the merged tree must be
//! walkable without errors.
//!
//! Environment knobs (all optional):
//! * `STRATAFS_CRASH_ROUNDS` – number of kill rounds (default 40;
//!   `scripts/crash-test.sh` runs 200).
//! * `STRATAFS_CRASH_SEED` – base seed (decimal or `0x` hex; default fixed).
//! * `STRATAFS_CRASH_KEEP` – on failure, keep the layers on disk and print
//!   where they are.
//!
//! Layout (two lower layers, upper and work persist across rounds):
//! * `big/bN`: large lower files (4–32 MiB) whose content is a pattern
//!   derived from their name; `big/rN` are names they get renamed to. Ops:
//!   append a marker, overwrite 64 bytes in the middle, rename (maybe over
//!   another file), delete, rewrite with `O_TRUNC` + fsync. All but the
//!   delete copy the file up first. Between most rounds the upper's `big/`
//!   is removed while nothing is mounted, so every round has lower files
//!   left to copy up.
//! * `small/sN`, `dirs/dK/fJ`: small files spread over (and shadowed
//!   between) the lower layers. Ops: create (one write, fsync, close), create
//!   a temporary name + fsync + rename into place (maybe over a file or a
//!   whiteout), append, delete, rename across directories.
//! * `dirs/dK`: lower directories that get emptied, removed and created
//!   again (then opaque), and `dirs/xN`: new directories that get created,
//!   filled, renamed (also onto an emptied lower directory) and removed.
//! * `dirs/dw`: a lower directory of 1500 files that the upper has all
//!   deleted (1500 whiteouts), as after `rm -rf dir/*`: new directories are
//!   often renamed over it, and it gets removed and created again, so kills
//!   land while such large sets of whiteouts are handled. Its upper is
//!   rebuilt, while nothing is mounted, after every round that changed it.
//!
//! The test re-executes itself in a private mount namespace, so that no
//! other program's new mount namespace can hold a copy of a mount of ours
//! (which would keep the daemon serving after our unmount). Each round
//! mounts the stack (`stratafs -f`), re-executes this test binary as a
//! worker process (selected by an environment variable) that runs
//! operations in a loop, sleeps 5–300 ms, SIGKILLs the daemon, waits (20 s
//! at most) for the worker to stop by itself (its FUSE calls now fail with
//! ENOTCONN, ECONNABORTED or EIO; a worker that stops earlier, or hangs,
//! fails the test) and removes the dead mount. A fresh mount of the same
//! directories is then checked against a model of the merged tree, and
//! unmounted; the daemon must exit with status 0.
//!
//! The worker keeps an intent journal outside the mount: before each
//! operation an `I` record with the operation's id and, for every path it
//! touches, the old and the new state; after it completed (after the fsync,
//! where there is one) a `D` record; on an error an `E` record. Every
//! record is written with one `write` and fsync'ed before the worker goes
//! on. Completed operations must show their new state exactly. The one
//! operation in flight must show, over all its paths together, exactly its
//! old or exactly its new state; only an operation that writes data it has
//! not yet fsync'ed (create / `O_TRUNC` rewrite) may also leave a prefix of
//! its new data, as any filesystem may when a writer dies before fsync.
//! Appends and overwrites are single writes of at most 64 bytes within one
//! page, so they are all or nothing.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TEST_NAME: &str = "crash::sigkill_during_changes_never_leaves_partial_state";
/// Set (to the worker's config file) in the re-executed worker process.
const WORKER_ENV: &str = "STRATAFS_CRASH_WORKER";
/// Set in the child that runs the test in its own mount namespace.
const ISOLATED_ENV: &str = "STRATAFS_CRASH_ISOLATED";
const DEFAULT_ROUNDS: u64 = 40;
const DEFAULT_SEED: u64 = 0x5eed_c4a5;

const MIB: u64 = 1 << 20;
/// Sizes of the large lower files `big/bN`.
const BIG_MIB: [u64; 6] = [4, 8, 12, 18, 24, 32];
/// Small lower files `small/sN`.
const NSMALL: usize = 24;
/// Lower directories `dirs/dK`, each with `DIR_FILES` files.
const NDIRS: usize = 5;
const DIR_FILES: usize = 3;
/// `dirs/dw`: a lower directory with this many files, all deleted in the
/// upper (so it is empty, with as many whiteouts in its upper copy).
const WIDE: &str = "dirs/dw";
const WIDE_FILES: usize = 1500;
/// The kill comes this many milliseconds after the worker is ready.
const KILL_MIN_MS: usize = 5;
const KILL_MAX_MS: usize = 300;
/// Exit codes of the worker.
const WORKER_DAEMON_GONE: i32 = 2;
const WORKER_UNEXPECTED_ERRNO: i32 = 3;
const WORKER_SETUP_FAILED: i32 = 4;

// ---------------------------------------------------------------------------
// Content model
// ---------------------------------------------------------------------------

/// One 64-bit word of the pattern stream `seed`.
fn pat_word(seed: u64, k: u64) -> u64 {
    let mut z = seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bytes `start..start + out.len()` of the pattern stream `seed`.
fn fill_pattern(seed: u64, start: u64, out: &mut [u8]) {
    let mut pos = start;
    let mut i = 0;
    while i < out.len() {
        let w = pat_word(seed, pos >> 3).to_le_bytes();
        let k = (pos & 7) as usize;
        let n = (8 - k).min(out.len() - i);
        out[i..i + n].copy_from_slice(&w[k..k + n]);
        i += n;
        pos += n as u64;
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    /// `len` bytes of the pattern stream `seed` from offset `start`.
    Pat {
        seed: u64,
        start: u64,
        len: u64,
    },
    Lit(Vec<u8>),
}

impl Seg {
    fn len(&self) -> u64 {
        match self {
            Seg::Pat { len, .. } => *len,
            Seg::Lit(v) => v.len() as u64,
        }
    }
    fn slice(&self, a: u64, b: u64) -> Seg {
        match self {
            Seg::Pat { seed, start, .. } => Seg::Pat {
                seed: *seed,
                start: start + a,
                len: b - a,
            },
            Seg::Lit(v) => Seg::Lit(v[a as usize..b as usize].to_vec()),
        }
    }
}

/// A file's content as a list of segments (normalised: no empty segments,
/// adjacent literals and contiguous pattern pieces merged), so that large
/// files are described in a few bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Content(Vec<Seg>);

impl Content {
    fn pattern(seed: u64, len: u64) -> Content {
        let mut c = Content::default();
        c.push(Seg::Pat {
            seed,
            start: 0,
            len,
        });
        c
    }
    fn push(&mut self, s: Seg) {
        if s.len() == 0 {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            match (last, &s) {
                (Seg::Lit(a), Seg::Lit(b)) => {
                    a.extend_from_slice(b);
                    return;
                }
                (
                    Seg::Pat {
                        seed: s1,
                        start: st1,
                        len: l1,
                    },
                    Seg::Pat { seed, start, len },
                ) if *s1 == *seed && *st1 + *l1 == *start => {
                    *l1 += *len;
                    return;
                }
                _ => {}
            }
        }
        self.0.push(s);
    }
    fn len(&self) -> u64 {
        self.0.iter().map(Seg::len).sum()
    }
    fn slice(&self, from: u64, to: u64) -> Content {
        let mut out = Content::default();
        let mut pos = 0;
        for s in &self.0 {
            let l = s.len();
            let a = from.max(pos);
            let b = to.min(pos + l);
            if a < b {
                out.push(s.slice(a - pos, b - pos));
            }
            pos += l;
        }
        out
    }
    fn appended(&self, bytes: &[u8]) -> Content {
        let mut c = self.clone();
        c.push(Seg::Lit(bytes.to_vec()));
        c
    }
    fn overwritten(&self, off: u64, bytes: &[u8]) -> Content {
        let mut c = self.slice(0, off);
        c.push(Seg::Lit(bytes.to_vec()));
        for s in self.slice(off + bytes.len() as u64, self.len()).0 {
            c.push(s);
        }
        c
    }
    /// Bytes `off..off + buf.len()` (the range must lie inside).
    fn fill(&self, off: u64, buf: &mut [u8]) {
        let end = off + buf.len() as u64;
        let mut pos = 0;
        for s in &self.0 {
            let l = s.len();
            let a = off.max(pos);
            let b = end.min(pos + l);
            if a < b {
                let out = &mut buf[(a - off) as usize..(b - off) as usize];
                match s {
                    Seg::Pat { seed, start, .. } => fill_pattern(*seed, start + (a - pos), out),
                    Seg::Lit(v) => out.copy_from_slice(&v[(a - pos) as usize..(b - pos) as usize]),
                }
            }
            pos += l;
            if pos >= end {
                break;
            }
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len() as usize];
        self.fill(0, &mut v);
        v
    }
    fn encode(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|s| match s {
                Seg::Pat { seed, start, len } => format!("p{seed:x}.{start:x}.{len:x}"),
                Seg::Lit(v) => {
                    let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
                    format!("l{hex}")
                }
            })
            .collect();
        parts.join(",")
    }
    fn decode(s: &str) -> Option<Content> {
        let mut c = Content::default();
        if s.is_empty() {
            return Some(c);
        }
        for part in s.split(',') {
            if let Some(p) = part.strip_prefix('p') {
                let mut it = p.split('.').map(|x| u64::from_str_radix(x, 16));
                let seed = it.next()?.ok()?;
                let start = it.next()?.ok()?;
                let len = it.next()?.ok()?;
                c.push(Seg::Pat { seed, start, len });
            } else if let Some(h) = part.strip_prefix('l') {
                if h.len() % 2 != 0 {
                    return None;
                }
                let mut v = Vec::with_capacity(h.len() / 2);
                for i in (0..h.len()).step_by(2) {
                    v.push(u8::from_str_radix(h.get(i..i + 2)?, 16).ok()?);
                }
                c.push(Seg::Lit(v));
            } else {
                return None;
            }
        }
        Some(c)
    }
}

/// What a path shows in the merged view.
#[derive(Clone, Debug, PartialEq, Eq)]
enum St {
    Absent,
    Dir,
    File(Content),
}

impl St {
    fn encode(&self) -> String {
        match self {
            St::Absent => "-".to_string(),
            St::Dir => "d".to_string(),
            St::File(c) => format!("f:{}", c.encode()),
        }
    }
    fn decode(s: &str) -> Option<St> {
        match s {
            "-" => Some(St::Absent),
            "d" => Some(St::Dir),
            _ => Content::decode(s.strip_prefix("f:")?).map(St::File),
        }
    }
    fn summary(&self) -> String {
        match self {
            St::Absent => "absent".to_string(),
            St::Dir => "a directory".to_string(),
            St::File(c) => format!("a file of {} bytes", c.len()),
        }
    }
}

/// Relative path ("big/b0") -> expected state. Lower names stay in the
/// model when absent; other absent names are dropped after each round.
type Model = BTreeMap<String, St>;

fn state_of(model: &Model, path: &str) -> St {
    model.get(path).cloned().unwrap_or(St::Absent)
}

fn name_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(_, n)| n).unwrap_or(path)
}

/// Present children of `dir` in the model.
fn children(model: &Model, dir: &str) -> Vec<String> {
    model
        .iter()
        .filter(|(p, st)| **st != St::Absent && parent_of(p) == dir)
        .map(|(p, _)| p.clone())
        .collect()
}

// ---------------------------------------------------------------------------
// Journal
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Change {
    path: String,
    old: St,
    new: St,
}

/// One operation of the worker, as journaled.
#[derive(Clone, Debug)]
struct OpRec {
    id: u64,
    name: String,
    /// The operation writes data before its fsync: a prefix of the new
    /// content is an allowed outcome while it is in flight.
    prefix_ok: bool,
    changes: Vec<Change>,
    done: bool,
    errno: Option<i32>,
}

impl OpRec {
    fn intent_line(&self) -> String {
        let mut s = format!(
            "I {} {} {} {}",
            self.id,
            self.name,
            if self.prefix_ok { "p" } else { "x" },
            self.changes.len()
        );
        for c in &self.changes {
            s.push_str(&format!(
                " {} {} {}",
                c.path,
                c.old.encode(),
                c.new.encode()
            ));
        }
        s
    }
    fn describe(&self) -> String {
        let paths: Vec<&str> = self.changes.iter().map(|c| c.path.as_str()).collect();
        format!("op #{} {} [{}]", self.id, self.name, paths.join(", "))
    }
}

struct Journal {
    ready: bool,
    ops: Vec<OpRec>,
    errors: Vec<String>,
}

/// Complete (newline-terminated) records only: a record the worker was
/// killed in the middle of writing was never acted on.
fn parse_journal(text: &str) -> Journal {
    let mut j = Journal {
        ready: false,
        ops: Vec::new(),
        errors: Vec::new(),
    };
    for line in text.split_inclusive('\n') {
        let Some(line) = line.strip_suffix('\n') else {
            continue;
        };
        let f: Vec<&str> = line.split(' ').collect();
        let bad = |j: &mut Journal| j.errors.push(format!("bad journal record {line:?}"));
        match f.first().copied() {
            Some("R") => j.ready = true,
            Some("I") => {
                let parsed = (|| {
                    let id: u64 = f.get(1)?.parse().ok()?;
                    let name = f.get(2)?.to_string();
                    let prefix_ok = *f.get(3)? == "p";
                    let n: usize = f.get(4)?.parse().ok()?;
                    if f.len() != 5 + 3 * n {
                        return None;
                    }
                    let mut changes = Vec::new();
                    for i in 0..n {
                        let b = 5 + 3 * i;
                        changes.push(Change {
                            path: f[b].to_string(),
                            old: St::decode(f[b + 1])?,
                            new: St::decode(f[b + 2])?,
                        });
                    }
                    Some(OpRec {
                        id,
                        name,
                        prefix_ok,
                        changes,
                        done: false,
                        errno: None,
                    })
                })();
                match parsed {
                    Some(op) => j.ops.push(op),
                    None => bad(&mut j),
                }
            }
            Some("D") | Some("E") => {
                let id: Option<u64> = f.get(1).and_then(|x| x.parse().ok());
                match id.and_then(|id| j.ops.iter_mut().find(|o| o.id == id)) {
                    Some(op) if f[0] == "D" => op.done = true,
                    Some(op) => op.errno = f.get(2).and_then(|x| x.parse().ok()),
                    None => bad(&mut j),
                }
            }
            _ => bad(&mut j),
        }
    }
    j
}

// ---------------------------------------------------------------------------
// Worker process
// ---------------------------------------------------------------------------

struct WorkerCfg {
    seed: u64,
    round: u64,
    mnt: PathBuf,
    journal: PathBuf,
    model: Model,
}

fn write_worker_cfg(path: &Path, cfg: &WorkerCfg) {
    let mut s = format!(
        "seed {}\nround {}\nmnt {}\njournal {}\n",
        cfg.seed,
        cfg.round,
        cfg.mnt.display(),
        cfg.journal.display()
    );
    for (p, st) in &cfg.model {
        s.push_str(&format!("m {p} {}\n", st.encode()));
    }
    fs::write(path, s).expect("write worker config");
}

fn read_worker_cfg(path: &Path) -> Result<WorkerCfg, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{path:?}: {e}"))?;
    let mut cfg = WorkerCfg {
        seed: 0,
        round: 0,
        mnt: PathBuf::new(),
        journal: PathBuf::new(),
        model: Model::new(),
    };
    for line in text.lines() {
        let (key, rest) = line.split_once(' ').ok_or(format!("bad line {line:?}"))?;
        match key {
            "seed" => cfg.seed = rest.parse().map_err(|_| format!("bad line {line:?}"))?,
            "round" => cfg.round = rest.parse().map_err(|_| format!("bad line {line:?}"))?,
            "mnt" => cfg.mnt = PathBuf::from(rest),
            "journal" => cfg.journal = PathBuf::from(rest),
            "m" => {
                let (p, st) = rest.split_once(' ').ok_or(format!("bad line {line:?}"))?;
                let st = St::decode(st).ok_or(format!("bad line {line:?}"))?;
                cfg.model.insert(p.to_string(), st);
            }
            _ => return Err(format!("bad line {line:?}")),
        }
    }
    Ok(cfg)
}

/// What the worker does in one operation.
#[derive(Clone, Debug)]
enum Action {
    /// `open(O_APPEND)`, one `write`, maybe `fsync`.
    Append {
        path: String,
        bytes: Vec<u8>,
        fsync: bool,
    },
    /// `open(O_WRONLY)`, one `pwrite`.
    Overwrite {
        path: String,
        off: u64,
        bytes: Vec<u8>,
    },
    /// `open(O_CREAT|O_EXCL)` (or `O_TRUNC` when `!create`), the whole
    /// content in one `write`, `fsync`, `close`.
    Write {
        path: String,
        content: Content,
        create: bool,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
}

struct Worker {
    round: u64,
    mnt: PathBuf,
    journal: File,
    model: Model,
    rng: Rng,
    next_id: u64,
    /// The second half of a create-then-rename.
    pending: Option<Action>,
}

/// A marker for an append at `len`: at most 64 bytes, never crossing a
/// page boundary, so the host write is all or nothing.
fn marker(round: u64, id: u64, len: u64) -> Vec<u8> {
    let room = (4096 - len % 4096).min(64) as usize;
    let mut m = format!("<r{round}.o{id}>").into_bytes();
    m.resize(room - 1, b'.');
    m.push(b'\n');
    m
}

/// Names below `dirs` that lower layers have as directories.
fn lower_dir_names() -> Vec<String> {
    let mut v: Vec<String> = (0..NDIRS).map(|k| format!("dirs/d{k}")).collect();
    v.push(WIDE.to_string());
    v
}

/// What calls on a FUSE mount whose daemon died return: ENOTCONN, or
/// ECONNABORTED for requests that were pending, or EIO for a write or
/// fsync that was cut short. (A worker that stops while the daemon is alive
/// is a failure whatever its errno.)
fn is_dead_errno(e: i32) -> bool {
    e == libc::ENOTCONN || e == libc::ECONNABORTED || e == libc::EIO
}

impl Worker {
    fn log(&mut self, line: &str) -> std::io::Result<()> {
        let mut s = line.to_string();
        s.push('\n');
        self.journal.write_all(s.as_bytes())?;
        self.journal.sync_data()
    }

    fn m(&self, rel: &str) -> PathBuf {
        join_rel(&self.mnt, rel)
    }

    fn files(&self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        self.model
            .iter()
            .filter(|(p, st)| matches!(st, St::File(_)) && pred(p))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn content(&self, path: &str) -> Content {
        match state_of(&self.model, path) {
            St::File(c) => c,
            other => panic!("worker model: {path} is {other:?}, not a file"),
        }
    }

    /// Directories small files live in: `small` and every present `dirs/*`.
    fn file_dirs(&self) -> Vec<String> {
        let mut v = vec!["small".to_string()];
        v.extend(
            children(&self.model, "dirs")
                .into_iter()
                .filter(|p| state_of(&self.model, p) == St::Dir),
        );
        v
    }

    /// A name in `dir` that is absent now: a name the lower layers had
    /// (replacing a whiteout) or a fresh one.
    fn absent_name(&mut self, dir: &str, tag: &str, id: u64) -> String {
        let absent: Vec<String> = self
            .model
            .iter()
            .filter(|(p, st)| **st == St::Absent && parent_of(p) == dir)
            .map(|(p, _)| p.clone())
            .collect();
        if !absent.is_empty() && self.rng.chance(50) {
            return self.rng.pick(&absent).clone();
        }
        format!("{dir}/{tag}{}_{id}", self.round)
    }

    fn choose(&mut self, id: u64) -> Option<Action> {
        let big = self.files(|p| p.starts_with("big/"));
        if self.rng.chance(35) && !big.is_empty() {
            let path = self.rng.pick(&big).clone();
            let c = self.content(&path);
            let r = self.rng.below(100);
            return Some(match r {
                0..=29 => Action::Append {
                    bytes: marker(self.round, id, c.len()),
                    path,
                    fsync: self.rng.chance(50),
                },
                30..=44 if c.len() >= 8192 => {
                    let page = self.rng.below((c.len() / 4096 - 1) as usize) as u64;
                    let off = page * 4096 + 64 * self.rng.below(63) as u64;
                    let mut bytes = format!("<r{}.o{id} overwrite>", self.round).into_bytes();
                    bytes.resize(63, b'#');
                    bytes.push(b'\n');
                    Action::Overwrite { path, off, bytes }
                }
                45..=69 => {
                    let names: Vec<String> = (0..BIG_MIB.len())
                        .flat_map(|i| [format!("big/b{i}"), format!("big/r{i}")])
                        .filter(|n| *n != path)
                        .collect();
                    let to = self.rng.pick(&names).clone();
                    Action::Rename { from: path, to }
                }
                70..=84 => Action::Unlink { path },
                _ => Action::Write {
                    path,
                    content: Content::pattern(
                        self.rng.next_u64(),
                        64 * 1024 * (1 + self.rng.below(16) as u64),
                    ),
                    create: false,
                },
            });
        }
        let small = self.files(|p| !p.starts_with("big/"));
        let dirs = self.file_dirs();
        match self.rng.below(100) {
            // Create in one write + fsync.
            0..=17 => {
                let dir = self.rng.pick(&dirs).clone();
                let path = self.absent_name(&dir, "n", id);
                let len = 64 * self.rng.below(4097) as u64;
                Some(Action::Write {
                    path,
                    content: Content::pattern(self.rng.next_u64(), len),
                    create: true,
                })
            }
            // Create a temporary name + fsync, then rename it into place.
            18..=29 => {
                let dir = self.rng.pick(&dirs).clone();
                let tmp = format!("{dir}/t{}_{id}", self.round);
                let to_dir = self.rng.pick(&dirs).clone();
                let to = if !small.is_empty() && self.rng.chance(30) {
                    self.rng.pick(&small).clone()
                } else {
                    self.absent_name(&to_dir, "n", id)
                };
                self.pending = Some(Action::Rename {
                    from: tmp.clone(),
                    to,
                });
                let len = 64 * self.rng.below(4097) as u64;
                Some(Action::Write {
                    path: tmp,
                    content: Content::pattern(self.rng.next_u64(), len),
                    create: true,
                })
            }
            30..=41 if !small.is_empty() => {
                let path = self.rng.pick(&small).clone();
                let len = self.content(&path).len();
                Some(Action::Append {
                    path,
                    bytes: marker(self.round, id, len),
                    fsync: self.rng.chance(50),
                })
            }
            42..=51 if !small.is_empty() => Some(Action::Unlink {
                path: self.rng.pick(&small).clone(),
            }),
            52..=65 if !small.is_empty() => {
                let from = self.rng.pick(&small).clone();
                let to = if self.rng.chance(25) {
                    self.rng.pick(&small).clone()
                } else {
                    let d = self.rng.pick(&dirs).clone();
                    self.absent_name(&d, "n", id)
                };
                (to != from).then_some(Action::Rename { from, to })
            }
            // Empty a directory below `dirs` one file at a time, then remove it.
            66..=77 => {
                let ds: Vec<String> = dirs.into_iter().filter(|d| d != "small").collect();
                if ds.is_empty() {
                    return None;
                }
                let d = self.rng.pick(&ds).clone();
                let kids = children(&self.model, &d);
                if kids.is_empty() {
                    Some(Action::Rmdir { path: d })
                } else {
                    Some(Action::Unlink {
                        path: self.rng.pick(&kids).clone(),
                    })
                }
            }
            // Create a directory: a removed lower one (opaque) or a new one.
            78..=89 => {
                let mut names: Vec<String> = lower_dir_names()
                    .into_iter()
                    .filter(|p| state_of(&self.model, p) == St::Absent)
                    .collect();
                names.push(format!("dirs/x{}_{id}", self.round));
                Some(Action::Mkdir {
                    path: self.rng.pick(&names).clone(),
                })
            }
            // Rename a new directory (with its files), maybe over an empty
            // (lower) directory.
            _ => {
                let srcs: Vec<String> = children(&self.model, "dirs")
                    .into_iter()
                    .filter(|p| name_of(p).starts_with('x') && state_of(&self.model, p) == St::Dir)
                    .collect();
                if srcs.is_empty() {
                    return None;
                }
                let from = self.rng.pick(&srcs).clone();
                let empty = |p: &str| {
                    state_of(&self.model, p) == St::Dir && children(&self.model, p).is_empty()
                };
                // Often over the emptied wide directory, whose whiteouts
                // must not show the lower files again.
                if empty(WIDE) && self.rng.chance(50) {
                    return Some(Action::Rename {
                        from,
                        to: WIDE.to_string(),
                    });
                }
                let mut targets: Vec<String> = lower_dir_names()
                    .into_iter()
                    .chain(children(&self.model, "dirs"))
                    .filter(|p| {
                        *p != from
                            && match state_of(&self.model, p) {
                                St::Absent => true,
                                St::Dir => empty(p),
                                St::File(_) => false,
                            }
                    })
                    .collect();
                targets.sort();
                targets.dedup();
                targets.push(format!("dirs/x{}_{id}", self.round));
                let to = self.rng.pick(&targets).clone();
                Some(Action::Rename { from, to })
            }
        }
    }

    /// The journal record of `a` against the current model.
    fn record(&self, id: u64, a: &Action) -> OpRec {
        let ch = |path: &str, new: St| Change {
            path: path.to_string(),
            old: state_of(&self.model, path),
            new,
        };
        let big = |p: &str| if p.starts_with("big/") { "big-" } else { "" };
        let (name, prefix_ok, changes) = match a {
            Action::Append { path, bytes, fsync } => (
                format!("{}append{}", big(path), if *fsync { "+fsync" } else { "" }),
                false,
                vec![ch(path, St::File(self.content(path).appended(bytes)))],
            ),
            Action::Overwrite { path, off, bytes } => (
                format!("{}overwrite", big(path)),
                false,
                vec![ch(
                    path,
                    St::File(self.content(path).overwritten(*off, bytes)),
                )],
            ),
            Action::Write {
                path,
                content,
                create,
            } => (
                format!(
                    "{}{}+fsync",
                    big(path),
                    if *create { "create" } else { "trunc-rewrite" }
                ),
                true,
                vec![ch(path, St::File(content.clone()))],
            ),
            Action::Rename { from, to } => {
                let src = state_of(&self.model, from);
                let mut changes = vec![ch(from, St::Absent), ch(to, src.clone())];
                if src == St::Dir {
                    for kid in children(&self.model, from) {
                        let dst = format!("{to}/{}", name_of(&kid));
                        changes.push(ch(&kid, St::Absent));
                        changes.push(ch(&dst, state_of(&self.model, &kid)));
                    }
                }
                let what = match (&src, state_of(&self.model, to)) {
                    (St::Dir, St::Dir) => "rename-dir-over-dir",
                    (St::Dir, _) => "rename-dir",
                    (_, St::File(_)) => "rename-over",
                    _ => "rename",
                };
                (format!("{}{what}", big(from)), false, changes)
            }
            Action::Unlink { path } => (
                format!("{}unlink", big(path)),
                false,
                vec![ch(path, St::Absent)],
            ),
            Action::Mkdir { path } => ("mkdir".to_string(), false, vec![ch(path, St::Dir)]),
            Action::Rmdir { path } => ("rmdir".to_string(), false, vec![ch(path, St::Absent)]),
        };
        OpRec {
            id,
            name,
            prefix_ok,
            changes,
            done: false,
            errno: None,
        }
    }

    fn exec(&self, a: &Action) -> Result<(), i32> {
        match a {
            Action::Append { path, bytes, fsync } => {
                let fd = sys::open(&self.m(path), libc::O_WRONLY | libc::O_APPEND, 0)?;
                if sys::write(&fd, bytes)? != bytes.len() {
                    return Err(libc::EIO);
                }
                if *fsync {
                    cvt(unsafe { libc::fsync(fd.as_raw_fd()) })?;
                }
                Ok(())
            }
            Action::Overwrite { path, off, bytes } => {
                let fd = sys::open(&self.m(path), libc::O_WRONLY, 0)?;
                if sys::pwrite(&fd, bytes, *off as i64)? != bytes.len() {
                    return Err(libc::EIO);
                }
                Ok(())
            }
            Action::Write {
                path,
                content,
                create,
            } => {
                let flags = if *create {
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL
                } else {
                    libc::O_WRONLY | libc::O_TRUNC
                };
                let fd = sys::open(&self.m(path), flags, 0o644)?;
                let data = content.bytes();
                let mut done = 0;
                while done < data.len() {
                    done += sys::write(&fd, &data[done..])?;
                }
                cvt(unsafe { libc::fsync(fd.as_raw_fd()) })?;
                Ok(())
            }
            Action::Rename { from, to } => sys::rename(&self.m(from), &self.m(to)),
            Action::Unlink { path } => sys::unlink(&self.m(path)),
            Action::Mkdir { path } => sys::mkdir(&self.m(path), 0o755),
            Action::Rmdir { path } => sys::rmdir(&self.m(path)),
        }
    }

    fn run(&mut self) -> i32 {
        if let Err(e) = self.log("R") {
            eprintln!("worker: journal: {e}");
            return WORKER_SETUP_FAILED;
        }
        loop {
            let id = self.next_id;
            self.next_id += 1;
            let action = match self.pending.take() {
                Some(a) => a,
                None => match self.choose(id) {
                    Some(a) => a,
                    None => continue,
                },
            };
            let op = self.record(id, &action);
            if let Err(e) = self.log(&op.intent_line()) {
                eprintln!("worker: journal: {e}");
                return WORKER_SETUP_FAILED;
            }
            match self.exec(&action) {
                Ok(()) => {
                    if let Err(e) = self.log(&format!("D {id}")) {
                        eprintln!("worker: journal: {e}");
                        return WORKER_SETUP_FAILED;
                    }
                    for c in op.changes {
                        self.model.insert(c.path, c.new);
                    }
                }
                Err(e) => {
                    let _ = self.log(&format!("E {id} {e}"));
                    if is_dead_errno(e) {
                        return WORKER_DAEMON_GONE;
                    }
                    eprintln!("worker: {}: {}", op.describe(), errno_name(e));
                    return WORKER_UNEXPECTED_ERRNO;
                }
            }
        }
    }
}

fn worker_main(cfg_path: &Path) -> i32 {
    unsafe { libc::umask(0o022) };
    let cfg = match read_worker_cfg(cfg_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker: config: {e}");
            return WORKER_SETUP_FAILED;
        }
    };
    let journal = match OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.journal)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("worker: journal {:?}: {e}", cfg.journal);
            return WORKER_SETUP_FAILED;
        }
    };
    let mut w = Worker {
        round: cfg.round,
        mnt: cfg.mnt,
        journal,
        model: cfg.model,
        rng: Rng::new(cfg.seed ^ (cfg.round + 1).wrapping_mul(0x0100_0000_01b3)),
        next_id: 0,
        pending: None,
    };
    w.run()
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// First offset at which the file at `p` differs from `c` (a size
/// difference counts at the shorter length); `None` when identical.
fn first_diff(p: &Path, c: &Content) -> Result<Option<u64>, i32> {
    let mut f = io_errno(File::open(p))?;
    let size = io_errno(f.metadata())?.len();
    let want = c.len();
    let common = size.min(want);
    let mut buf = vec![0u8; MIB as usize];
    let mut exp = vec![0u8; MIB as usize];
    let mut off = 0u64;
    while off < common {
        let n = ((common - off) as usize).min(buf.len());
        io_errno(f.read_exact(&mut buf[..n]))?;
        c.fill(off, &mut exp[..n]);
        if buf[..n] != exp[..n] {
            let i = buf[..n].iter().zip(&exp[..n]).position(|(a, b)| a != b);
            return Ok(Some(off + i.unwrap_or(0) as u64));
        }
        off += n as u64;
    }
    Ok((size != want).then_some(common))
}

/// What `p` is, for messages.
fn observe(p: &Path) -> String {
    match sys::lstat(p) {
        Err(libc::ENOENT) => "absent".to_string(),
        Err(e) => format!("lstat failed: {}", errno_name(e)),
        Ok(st) => match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => format!("a directory (mode {:o})", st.st_mode & 0o7777),
            libc::S_IFREG => format!(
                "a file of {} bytes (mode {:o})",
                st.st_size,
                st.st_mode & 0o7777
            ),
            t => format!("an object of type {t:o}"),
        },
    }
}

/// Whether `p` shows `st`; file contents are compared completely.
fn shows(p: &Path, st: &St) -> Result<bool, String> {
    let l = match sys::lstat(p) {
        Ok(l) => Some(l),
        Err(libc::ENOENT) => None,
        Err(e) => return Err(format!("lstat {p:?}: {}", errno_name(e))),
    };
    let kind = l.map(|l| l.st_mode & libc::S_IFMT);
    Ok(match st {
        St::Absent => l.is_none(),
        St::Dir => kind == Some(libc::S_IFDIR),
        St::File(c) => {
            kind == Some(libc::S_IFREG)
                && l.map(|l| l.st_size as u64) == Some(c.len())
                && first_diff(p, c)
                    .map_err(|e| format!("read {p:?}: {}", errno_name(e)))?
                    .is_none()
        }
    })
}

/// How `p` compares with `st`, for messages.
fn compare_note(p: &Path, st: &St) -> String {
    match st {
        St::File(c) => match first_diff(p, c) {
            Ok(None) => "identical".to_string(),
            Ok(Some(off)) => format!("first difference at offset {off}"),
            Err(e) => format!("unreadable: {}", errno_name(e)),
        },
        _ => String::new(),
    }
}

#[derive(Debug)]
struct Seen {
    kind: Kind,
    size: u64,
    mode: u32,
}

/// Every entry below `root` (readdir + lstat), and every error met.
fn walk(root: &Path) -> (BTreeMap<String, Seen>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let dir = join_rel(root, &rel);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                errors.push(format!("readdir {rel:?}: {e}"));
                continue;
            }
        };
        for ent in rd {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    errors.push(format!("readdir {rel:?}: {e}"));
                    break;
                }
            };
            let name = ent.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            match fs::symlink_metadata(root.join(&path)) {
                Ok(m) => {
                    let kind = kind_of(&m);
                    if kind == Kind::Dir {
                        todo.push(path.clone());
                    }
                    out.insert(
                        path,
                        Seen {
                            kind,
                            size: m.len(),
                            mode: m.mode() & 0o7777,
                        },
                    );
                }
                Err(e) => errors.push(format!("lstat {path:?} (listed by readdir): {e}")),
            }
        }
    }
    (out, errors)
}

/// lstat fingerprint of every entry of every lower layer: any change to a
/// lower layer (data, metadata, xattrs, entries) changes a ctime or a size.
fn lower_fingerprint(lowers: &[PathBuf]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (i, l) in lowers.iter().enumerate() {
        let mut todo = vec![l.clone()];
        while let Some(d) = todo.pop() {
            let m = fs::symlink_metadata(&d).expect("lstat lower entry");
            let rel = d.strip_prefix(l).unwrap().to_string_lossy().into_owned();
            out.insert(
                format!("lower{i}/{rel}"),
                format!(
                    "mode {:o} size {} ino {} nlink {} mtime {}.{:09} ctime {}.{:09}",
                    m.mode(),
                    m.len(),
                    m.ino(),
                    m.nlink(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec()
                ),
            );
            if m.is_dir() {
                for e in fs::read_dir(&d).expect("read lower dir") {
                    todo.push(e.expect("lower dir entry").path());
                }
            }
        }
    }
    out
}

/// Threads, wait channels and kernel stacks of a process (and user-space
/// backtraces when gdb is installed), for reports of hangs.
fn process_diagnostics(pid: u32) -> String {
    let mut out = String::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let p = t.path();
            let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
            let state = read("stat")
                .rsplit_once(") ")
                .map(|(_, r)| r.chars().next().unwrap_or('?'))
                .unwrap_or('?');
            out.push_str(&format!(
                "  task {} {:?} state {state} wchan {:?}\n",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan")
            ));
            for l in read("stack").lines().take(12) {
                out.push_str(&format!("      {l}\n"));
            }
        }
    }
    let have_gdb = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut gdb = Command::new("gdb");
    gdb.args([
        "-p",
        &pid.to_string(),
        "-batch",
        "-ex",
        "thread apply all bt 15",
    ]);
    if let Some((_, bt, _)) = have_gdb
        .then(|| run_with_timeout(&mut gdb, Duration::from_secs(60)))
        .flatten()
    {
        let lines: Vec<&str> = bt
            .lines()
            .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
            .collect();
        out.push_str(&lines.join("\n"));
    }
    out
}

/// What still refers to a FUSE mount after it was unmounted: live FUSE
/// connections, processes whose mount namespace still has the mount point,
/// and descriptors or working directories below it.
fn mount_references(mnt: &Path) -> String {
    let mut out = String::new();
    if let Ok(rd) = fs::read_dir("/sys/fs/fuse/connections") {
        let conns: Vec<String> = rd
            .flatten()
            .map(|e| {
                let w = fs::read_to_string(e.path().join("waiting")).unwrap_or_default();
                format!("{}(waiting {})", e.file_name().to_string_lossy(), w.trim())
            })
            .collect();
        out.push_str(&format!("  fuse connections: {}\n", conns.join(" ")));
    }
    let m = mnt.to_string_lossy().into_owned();
    for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        let mi = fs::read_to_string(p.path().join("mountinfo")).unwrap_or_default();
        if mi.lines().any(|l| l.split(' ').nth(4) == Some(m.as_str())) {
            out.push_str(&format!(
                "  pid {pid} ({}) still sees the mount\n",
                comm.trim()
            ));
        }
        let mut refs = Vec::new();
        for link in ["cwd", "root"] {
            if let Ok(t) = fs::read_link(p.path().join(link)) {
                if t.starts_with(mnt) {
                    refs.push(format!("{link} {t:?}"));
                }
            }
        }
        for fd in fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(t) = fs::read_link(fd.path()) {
                if t.starts_with(mnt) {
                    refs.push(format!("fd {} {t:?}", fd.file_name().to_string_lossy()));
                }
            }
        }
        if !refs.is_empty() {
            out.push_str(&format!(
                "  pid {pid} ({}): {}\n",
                comm.trim(),
                refs.join(", ")
            ));
        }
    }
    out
}

/// Unmount a live mount as `fusermount3 -u` does and wait (bounded) for the
/// daemon to exit with status 0; describe what it is doing if it does not.
fn unmount_checked(mut m: Mount) -> Result<(), String> {
    let pid = m.daemon_pid();
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u").arg(m.path());
    match run_with_timeout(&mut cmd, Duration::from_secs(20)) {
        Some((st, _, _)) if st.success() => {}
        other => return Err(format!("fusermount3 -u: {other:?}")),
    }
    match m.wait_daemon(Duration::from_secs(20)) {
        Some(st) if st.success() => Ok(()),
        Some(st) => Err(format!(
            "daemon exit status after unmount: {st}\n--- daemon stderr ---\n{}",
            m.daemon_stderr()
        )),
        None => Err(format!(
            "daemon (pid {pid:?}) still running 20 s after its mount was unmounted\n{}\n{}\n--- daemon stderr ---\n{}",
            mount_references(m.path()),
            pid.map(process_diagnostics).unwrap_or_default(),
            m.daemon_stderr()
        )),
    }
}

/// A whiteout in the upper for a name the model has as absent.
fn write_whiteout_if_absent(stack: &Stack, path: &str, st: &St) {
    if *st == St::Absent {
        WhiteoutForm::CharDevice.write(&stack.u(path)).unwrap();
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    kills: u64,
    ops_done: u64,
    ops_done_fsync: u64,
    /// In-flight operation name -> (old, new, prefix) outcomes.
    in_flight: BTreeMap<String, [u64; 3]>,
    /// Completed operation name -> count.
    done_by_op: BTreeMap<String, u64>,
    rounds_with_work_leftovers: u64,
    work_leftovers: u64,
    big_resets: u64,
    wide_resets: u64,
    content_bytes_checked: u64,
    worker_ms: Vec<u64>,
}

struct Crash {
    seed: u64,
    rng: Rng,
    stack: Stack,
    /// Paths of the lower layers -> merged lower state.
    lower_model: Model,
    /// The model of the stack as built (lower layers and upper).
    initial_model: Model,
    model: Model,
    /// `dirs/dw` was changed: rebuild its upper before the next round.
    wide_dirty: bool,
    /// What happened in the current round, for failure reports.
    context: Vec<String>,
    lower_fp: BTreeMap<String, String>,
    stats: Stats,
}

impl Crash {
    fn new(seed: u64) -> Crash {
        let mut rng = Rng::new(seed);
        let seed_of = |p: &str, layer: usize| fnv1a(p.as_bytes()) ^ (layer as u64 + 1);
        let mut lower_model = Model::new();
        let mut l0 = Layer::new().dir("big").dir("small").dir("dirs");
        let mut l1 = Layer::new().dir("big").dir("small").dir("dirs");
        for name in ["big", "small", "dirs"] {
            lower_model.insert(name.to_string(), St::Dir);
        }
        // Small files: lower0 only, lower1 only, or both (lower0 wins).
        for i in 0..NSMALL {
            let p = format!("small/s{i}");
            let len = 64 * rng.below(1025) as u64;
            let c1 = Content::pattern(seed_of(&p, 1), len / 2);
            let c0 = Content::pattern(seed_of(&p, 0), len);
            match i % 3 {
                0 => l0 = l0.file(&p, c0.bytes()),
                1 => l1 = l1.file(&p, c1.bytes()),
                _ => {
                    l1 = l1.file(&p, c1.bytes());
                    l0 = l0.file(&p, c0.bytes());
                }
            }
            lower_model.insert(p, St::File(if i % 3 == 1 { c1 } else { c0 }));
        }
        // Directories merged from both lowers.
        for k in 0..NDIRS {
            let d = format!("dirs/d{k}");
            l0 = l0.dir(&d);
            l1 = l1.dir(&d);
            lower_model.insert(d.clone(), St::Dir);
            for j in 0..DIR_FILES {
                let p = format!("{d}/f{j}");
                let layer = j % 2;
                let c = Content::pattern(seed_of(&p, layer), 64 * rng.below(257) as u64);
                if layer == 0 {
                    l0 = l0.file(&p, c.bytes());
                } else {
                    l1 = l1.file(&p, c.bytes());
                }
                lower_model.insert(p, St::File(c));
            }
        }
        // The wide directory: lower files, all whiteouts in the upper.
        let mut upper = Layer::new().dir(WIDE);
        l1 = l1.dir(WIDE);
        lower_model.insert(WIDE.to_string(), St::Dir);
        for i in 0..WIDE_FILES {
            let p = format!("{WIDE}/w{i}");
            l1 = l1.file(&p, "");
            upper = upper.whiteout(&p);
            lower_model.insert(p, St::File(Content::default()));
        }
        let stack = stack(vec![l0, l1], upper).build(Markers::Kernel);
        // Large files, written directly into the bottom layer.
        let mut buf = vec![0u8; MIB as usize];
        for (i, mib) in BIG_MIB.iter().enumerate() {
            let p = format!("big/b{i}");
            let c = Content::pattern(seed_of(&p, 1), mib * MIB);
            let mut f = File::create(stack.l(1, &p)).expect("create large lower file");
            for k in 0..*mib {
                c.fill(k * MIB, &mut buf);
                f.write_all(&buf).expect("write large lower file");
            }
            lower_model.insert(p, St::File(c));
        }
        let lower_fp = lower_fingerprint(stack.lowers());
        let mut initial_model = lower_model.clone();
        for (p, st) in initial_model.iter_mut() {
            if p.starts_with(&format!("{WIDE}/")) {
                *st = St::Absent;
            }
        }
        Crash {
            seed,
            rng,
            stack,
            model: initial_model.clone(),
            initial_model,
            lower_model,
            wide_dirty: false,
            context: Vec::new(),
            lower_fp,
            stats: Stats::default(),
        }
    }

    /// While nothing is mounted: drop the upper's `big/`, so that the large
    /// files are lower-only again and the next round copies them up anew.
    fn reset_big(&mut self) {
        let ub = self.stack.u("big");
        if fs::symlink_metadata(&ub).is_ok() {
            fs::remove_dir_all(&ub).expect("remove upper big/");
        }
        self.model.retain(|p, _| !p.starts_with("big/"));
        for (p, st) in &self.lower_model {
            if p.starts_with("big/") {
                self.model.insert(p.clone(), st.clone());
            }
        }
        self.stats.big_resets += 1;
    }

    /// While nothing is mounted: give `dirs/dw` its initial upper again (a
    /// plain directory of whiteouts hiding every lower file).
    fn reset_wide(&mut self) {
        let uw = self.stack.u(WIDE);
        match fs::symlink_metadata(&uw) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&uw).expect("remove upper dirs/dw"),
            Ok(_) => fs::remove_file(&uw).expect("remove upper dirs/dw"),
            Err(_) => {}
        }
        fs::create_dir(&uw).expect("create upper dirs/dw");
        let prefix = format!("{WIDE}/");
        self.model.retain(|p, _| !p.starts_with(&prefix));
        for (p, st) in &self.initial_model {
            if p == WIDE || p.starts_with(&prefix) {
                write_whiteout_if_absent(&self.stack, p, st);
                self.model.insert(p.clone(), st.clone());
            }
        }
        self.wide_dirty = false;
        self.stats.wide_resets += 1;
    }

    fn mount(&self, what: &str) -> Mount {
        self.stack
            .try_mount_strata()
            .unwrap_or_else(|e| panic!("{}: {what}: {e}", self.ctx_seed()))
    }

    fn ctx_seed(&self) -> String {
        format!("STRATAFS_CRASH_SEED={:#x}", self.seed)
    }

    /// One round: mount, run the worker, kill the daemon, clean up, then
    /// check a fresh mount. Returns the problems found.
    fn round(&mut self, round: u64, last: bool) -> Vec<String> {
        let mut problems = Vec::new();
        self.context.clear();
        if round > 0 && round % 4 != 3 {
            self.reset_big();
        }
        if self.wide_dirty {
            self.reset_wide();
        }
        let root = self.stack.root().to_path_buf();
        let journal_path = root.join("journal");
        let cfg_path = root.join("worker.cfg");
        let log_path = root.join("worker.log");
        let _ = fs::remove_file(&journal_path);
        write_worker_cfg(
            &cfg_path,
            &WorkerCfg {
                seed: self.seed,
                round,
                mnt: self.stack.mnt.clone(),
                journal: journal_path.clone(),
                model: self.model.clone(),
            },
        );

        // --- Mount, run, kill.
        let mut m = self.mount("mount for the worker");
        let pid = m.daemon_pid().expect("daemon pid");
        let log = File::create(&log_path).expect("worker log");
        let exe = std::env::current_exe().expect("test binary path");
        let mut worker = Command::new(exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(WORKER_ENV, &cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn worker");
        let worker_log = || fs::read_to_string(&log_path).unwrap_or_default();
        let ready_deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read_to_string(&journal_path).unwrap_or_default();
            if parse_journal(&text).ready {
                break;
            }
            if let Ok(Some(st)) = worker.try_wait() {
                problems.push(format!(
                    "worker exited ({st}) before it was ready\n--- worker output ---\n{}",
                    worker_log()
                ));
                break;
            }
            if Instant::now() > ready_deadline {
                problems.push("worker not ready after 30 s".to_string());
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let delay = KILL_MIN_MS + self.rng.below(KILL_MAX_MS - KILL_MIN_MS + 1);
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(delay as u64));
        if let Ok(Some(st)) = worker.try_wait() {
            if problems.is_empty() {
                problems.push(format!(
                    "worker stopped ({st}) while the daemon was alive\n--- worker output ---\n{}",
                    worker_log()
                ));
            }
        }
        if let Some(st) = m.wait_daemon(Duration::ZERO) {
            problems.push(format!(
                "daemon exited by itself ({st}) before the kill\n--- daemon stderr ---\n{}",
                m.daemon_stderr()
            ));
        } else {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            self.stats.kills += 1;
            match m.wait_daemon(Duration::from_secs(20)) {
                Some(st) if st.code().is_none() => {}
                Some(st) => problems.push(format!("daemon exit status after SIGKILL: {st}")),
                None => problems.push("daemon did not die within 20 s of SIGKILL".to_string()),
            }
        }
        // The worker's FUSE calls now fail (ENOTCONN): it must stop by itself.
        match wait_timeout(&mut worker, Duration::from_secs(20)) {
            Some(st) => {
                let code = st.code();
                if code != Some(WORKER_DAEMON_GONE) && problems.is_empty() {
                    problems.push(format!(
                        "worker exit status {st} after the daemon was killed (expected {WORKER_DAEMON_GONE}: ENOTCONN, ECONNABORTED or EIO)\n--- worker output ---\n{}",
                        worker_log()
                    ));
                }
            }
            None => {
                let stack =
                    fs::read_to_string(format!("/proc/{}/stack", worker.id())).unwrap_or_default();
                let wchan =
                    fs::read_to_string(format!("/proc/{}/wchan", worker.id())).unwrap_or_default();
                problems.push(format!(
                    "worker hung for 20 s after the daemon was killed (wchan {wchan:?})\n{stack}"
                ));
                let _ = worker.kill();
                let _ = worker.wait();
            }
        }
        self.stats
            .worker_ms
            .push(started.elapsed().as_millis() as u64);
        drop(m); // removes the dead mount
        let gone = Instant::now() + Duration::from_secs(10);
        while mounts_at(&self.stack.mnt) > 0 {
            if Instant::now() > gone {
                problems.push("the dead mount could not be removed".to_string());
                return problems;
            }
            std::thread::sleep(Duration::from_millis(10));
        }

        // --- Fresh mount: leftovers must be gone, then the model holds.
        let before = self.stack.work_leftovers();
        if !before.is_empty() {
            self.stats.rounds_with_work_leftovers += 1;
            self.stats.work_leftovers += before.len() as u64;
        }
        let fresh = self.mount("fresh mount after the kill");
        let after = self.stack.work_leftovers();
        if !after.is_empty() {
            problems.push(format!(
                "W/work not cleared by the new mount: {after:?} (before the mount: {before:?})"
            ));
        }
        let text = fs::read_to_string(&journal_path).unwrap_or_default();
        let journal = parse_journal(&text);
        problems.extend(self.verify(&fresh, &journal, last));
        if let Err(e) = unmount_checked(fresh) {
            problems.push(e);
        }
        let fp = lower_fingerprint(self.stack.lowers());
        if fp != self.lower_fp {
            for (k, v) in &fp {
                if self.lower_fp.get(k) != Some(v) {
                    problems.push(format!(
                        "lower layer changed: {k}: {v} (was {:?})",
                        self.lower_fp.get(k)
                    ));
                }
            }
            for k in self.lower_fp.keys() {
                if !fp.contains_key(k) {
                    problems.push(format!("lower layer changed: {k} disappeared"));
                }
            }
        }
        if problems.is_empty() {
            return problems;
        }
        let mut report = std::mem::take(&mut self.context);
        report.insert(
            0,
            format!("the daemon was killed {delay} ms after the worker was ready"),
        );
        let n = problems.len();
        report.extend(problems.into_iter().take(40));
        if n > 40 {
            report.push(format!("... and {} more problems", n - 40));
        }
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        report.push(format!(
            "last journal records (newest first):\n  {}",
            tail.join("\n  ")
        ));
        let log: Vec<String> = worker_log()
            .lines()
            .filter(|l| l.starts_with("worker") || l.contains("panicked"))
            .map(str::to_string)
            .collect();
        if !log.is_empty() {
            report.push(format!("worker output:\n  {}", log.join("\n  ")));
        }
        report
    }

    /// Check the fresh mount against the model and the journal of the
    /// round; update the model to what the mount shows.
    fn verify(&mut self, mnt: &Mount, journal: &Journal, full: bool) -> Vec<String> {
        let mut problems = journal.errors.clone();
        if !journal.ready {
            problems.push("worker never became ready".to_string());
        }
        let mut touched = BTreeSet::new();
        let mut in_flight = Vec::new();
        for op in &journal.ops {
            for c in &op.changes {
                touched.insert(c.path.clone());
                if c.path == WIDE || c.path.starts_with(&format!("{WIDE}/")) {
                    self.wide_dirty = true;
                }
            }
            if !op.done {
                in_flight.push(op);
                continue;
            }
            if let Some(first) = in_flight.first() {
                problems.push(format!(
                    "journal: {} completed after the unfinished {}",
                    op.describe(),
                    first.describe()
                ));
            }
            self.stats.ops_done += 1;
            *self.stats.done_by_op.entry(op.name.clone()).or_default() += 1;
            if op.name.contains("fsync") {
                self.stats.ops_done_fsync += 1;
            }
            for c in &op.changes {
                let cur = state_of(&self.model, &c.path);
                if cur != c.old {
                    problems.push(format!(
                        "journal: {} expected {} to be {}, the model has {}",
                        op.describe(),
                        c.path,
                        c.old.summary(),
                        cur.summary()
                    ));
                }
                self.model.insert(c.path.clone(), c.new.clone());
            }
        }
        if in_flight.len() > 1 {
            problems.push(format!(
                "journal: {} unfinished operations",
                in_flight.len()
            ));
        }
        for op in in_flight {
            match self.settle_in_flight(mnt, op) {
                Ok(which) => {
                    self.stats.in_flight.entry(op.name.clone()).or_default()[which] += 1;
                    self.context.push(format!(
                        "in flight at the kill: {} ({}); the paths it names show its {} state",
                        op.describe(),
                        op.errno
                            .map(|e| format!("failed with {}", errno_name(e)))
                            .unwrap_or_else(|| "no result".to_string()),
                        ["old", "new", "partially written new"][which]
                    ));
                }
                Err(msg) => problems.push(msg),
            }
        }

        // The whole tree against the model.
        let mut unexpected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let (seen, errors) = walk(mnt.path());
        for e in errors {
            problems.push(format!("walking the merged tree: {e}"));
        }
        for (p, s) in &seen {
            if name_of(p).starts_with(".wh.") {
                problems.push(format!("{p}: whiteout marker visible"));
            }
            let want_mode = if s.kind == Kind::Dir { 0o755 } else { 0o644 };
            if s.mode != want_mode {
                problems.push(format!("{p}: mode {:o}, expected {want_mode:o}", s.mode));
            }
            match (state_of(&self.model, p), s.kind) {
                (St::Dir, Kind::Dir) => {}
                (St::File(c), Kind::File) if c.len() == s.size => {}
                (St::File(c), Kind::File) => problems.push(format!(
                    "{p}: a file of {} bytes, expected {} bytes{}",
                    s.size,
                    c.len(),
                    if touched.contains(p) {
                        " (touched this round)"
                    } else {
                        ""
                    }
                )),
                (St::Absent, _) => unexpected
                    .entry(parent_of(p).to_string())
                    .or_default()
                    .push(format!(
                        "{} ({:?}, {} bytes{})",
                        name_of(p),
                        s.kind,
                        s.size,
                        if self.lower_model.contains_key(p) {
                            ", a deleted lower name"
                        } else {
                            ""
                        }
                    )),
                (want, kind) => {
                    problems.push(format!("{p}: a {kind:?}, expected {}", want.summary()))
                }
            }
        }
        for (p, st) in &self.model {
            if *st != St::Absent && !seen.contains_key(p) {
                missing
                    .entry(parent_of(p).to_string())
                    .or_default()
                    .push(format!("{} ({})", name_of(p), st.summary()));
            }
        }
        for (what, groups) in [
            ("present but should not exist", unexpected),
            ("missing", missing),
        ] {
            for (dir, names) in groups {
                let dir = if dir.is_empty() { "/" } else { dir.as_str() };
                let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
                problems.push(format!(
                    "{dir}: {} entr{} {what}: {}{}",
                    names.len(),
                    if names.len() == 1 { "y" } else { "ies" },
                    shown.join(", "),
                    if names.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ));
            }
        }
        // Contents: everything this round touched, a few samples, or all.
        let files: Vec<String> = self
            .model
            .iter()
            .filter(|(_, st)| matches!(st, St::File(_)))
            .map(|(p, _)| p.clone())
            .collect();
        let mut check: BTreeSet<String> = touched;
        for _ in 0..3 {
            if !files.is_empty() {
                check.insert(self.rng.pick(&files).clone());
            }
        }
        if full {
            check.extend(files.iter().cloned());
        }
        for p in check {
            if let Some(St::File(c)) = self.model.get(&p) {
                if !seen.contains_key(&p) {
                    continue; // reported above
                }
                match first_diff(&mnt.p(&p), c) {
                    Ok(None) => self.stats.content_bytes_checked += c.len(),
                    Ok(Some(off)) => problems.push(format!(
                        "{p}: content differs from the expected {} at offset {off}",
                        St::File(c.clone()).summary()
                    )),
                    Err(e) => problems.push(format!("{p}: read failed: {}", errno_name(e))),
                }
            }
        }
        // Forget names that are absent and never were in a lower layer.
        let lower = &self.lower_model;
        self.model
            .retain(|p, st| *st != St::Absent || lower.contains_key(p));
        problems
    }

    /// The in-flight operation must show exactly its old or its new state
    /// over all its paths (or, for a write before its fsync, a prefix of the
    /// new data). Updates the model; returns 0 (old), 1 (new) or 2 (prefix).
    fn settle_in_flight(&mut self, mnt: &Mount, op: &OpRec) -> Result<usize, String> {
        let all = |pick: &dyn Fn(&Change) -> &St| -> Result<bool, String> {
            for c in &op.changes {
                if !shows(&mnt.p(&c.path), pick(c))? {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let mut outcome = None;
        if all(&|c| &c.old)? {
            outcome = Some(0);
        } else if all(&|c| &c.new)? {
            outcome = Some(1);
        } else if op.prefix_ok && op.changes.len() == 1 {
            let c = &op.changes[0];
            if let (St::File(new), Ok(l)) = (&c.new, sys::lstat(&mnt.p(&c.path))) {
                let size = l.st_size as u64;
                if l.st_mode & libc::S_IFMT == libc::S_IFREG && size <= new.len() {
                    let prefix = new.slice(0, size);
                    if first_diff(&mnt.p(&c.path), &prefix)
                        .map_err(|e| format!("read {}: {}", c.path, errno_name(e)))?
                        .is_none()
                    {
                        self.model.insert(c.path.clone(), St::File(prefix));
                        return Ok(2);
                    }
                }
            }
        }
        match outcome {
            Some(which) => {
                for c in &op.changes {
                    let st = if which == 0 { &c.old } else { &c.new };
                    self.model.insert(c.path.clone(), st.clone());
                }
                Ok(which)
            }
            None => {
                let mut msg = format!(
                    "{} was in flight ({}) and the fresh mount shows neither its old nor its new state{}:",
                    op.describe(),
                    op.errno
                        .map(|e| format!("it failed with {}", errno_name(e)))
                        .unwrap_or_else(|| "no result".to_string()),
                    if op.prefix_ok {
                        " nor a prefix of its new data"
                    } else {
                        ""
                    }
                );
                for c in &op.changes {
                    let p = mnt.p(&c.path);
                    msg.push_str(&format!(
                        "\n  {}: shows {}; old: {} {}; new: {} {}",
                        c.path,
                        observe(&p),
                        c.old.summary(),
                        compare_note(&p, &c.old),
                        c.new.summary(),
                        compare_note(&p, &c.new)
                    ));
                }
                Err(msg)
            }
        }
    }

    /// After the last round: every file's content, lower layers' contents.
    fn final_checks(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (p, st) in &self.lower_model {
            let St::File(c) = st else { continue };
            // The topmost lower layer holding the name has the model content.
            let top = (0..self.stack.lowers().len())
                .map(|i| self.stack.l(i, p))
                .find(|lp| fs::symlink_metadata(lp).is_ok());
            match top.map(|lp| first_diff(&lp, c)) {
                Some(Ok(None)) => {}
                other => problems.push(format!("lower file {p} changed: {other:?}")),
            }
        }
        problems
    }
}

/// Runs this test again in a child process with its own mount namespace
/// (mounts private), so that mount namespaces other programs create while
/// a mount of ours is live (container engines do so all the time) cannot
/// hold copies of it, which would keep the daemon serving after our
/// unmount. The child's output is passed on. `None` when no namespace can
/// be made.
fn run_in_private_mount_namespace() -> Option<bool> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().ok()?;
    let mut cmd = Command::new(exe);
    cmd.args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(ISOLATED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("note: crash: no private mount namespace ({e}); running in this one");
            return None;
        }
    };
    let stdout = child.stdout.take().expect("child stdout");
    let collect = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let stderr = child.stderr.take().expect("child stderr");
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        eprintln!("{line}");
    }
    let out = collect.join().unwrap_or_default();
    let status = child.wait().expect("wait for the test child");
    let ok = status.success();
    if !ok {
        for line in out {
            eprintln!("{line}");
        }
    }
    Some(ok)
}

#[test]
fn sigkill_during_changes_never_leaves_partial_state() {
    if let Some(cfg) = std::env::var_os(WORKER_ENV) {
        std::process::exit(worker_main(Path::new(&cfg)));
    }
    if std::env::var_os(ISOLATED_ENV).is_none() {
        if let Some(ok) = run_in_private_mount_namespace() {
            assert!(ok, "crash: the test failed (output above)");
            return;
        }
    }
    let rounds = env_u64("STRATAFS_CRASH_ROUNDS", DEFAULT_ROUNDS);
    let seed = env_u64("STRATAFS_CRASH_SEED", DEFAULT_SEED);
    let t0 = Instant::now();
    let mut c = Crash::new(seed);
    eprintln!(
        "crash: seed {seed:#x}, {rounds} rounds, layers in {:?} (built in {:.1} s)",
        c.stack.root(),
        t0.elapsed().as_secs_f64()
    );
    for round in 0..rounds {
        let problems = c.round(round, round + 1 == rounds);
        if !problems.is_empty() {
            let keep = std::env::var_os("STRATAFS_CRASH_KEEP").is_some();
            let root = c.stack.root().to_path_buf();
            if keep {
                std::mem::forget(c);
            }
            panic!(
                "crash: {} (STRATAFS_CRASH_ROUNDS={rounds}), round {round}: {} problem(s){}:\n{}",
                format_args!("STRATAFS_CRASH_SEED={seed:#x}"),
                problems.len(),
                if keep {
                    format!(", layers kept in {root:?}")
                } else {
                    String::new()
                },
                problems.join("\n")
            );
        }
    }
    let problems = c.final_checks();
    assert!(
        problems.is_empty(),
        "crash: STRATAFS_CRASH_SEED={seed:#x}: {}",
        problems.join("\n")
    );
    let s = &c.stats;
    let verified: u64 = s.in_flight.values().flatten().sum();
    let by_op: Vec<String> = s
        .in_flight
        .iter()
        .map(|(n, [o, nw, p])| format!("{n} {o}/{nw}/{p}"))
        .collect();
    let done: Vec<String> = s
        .done_by_op
        .iter()
        .map(|(n, k)| format!("{n} {k}"))
        .collect();
    let mut ms = s.worker_ms.clone();
    ms.sort_unstable();
    eprintln!(
        "crash: in flight at the kill, per op (old/new/prefix state seen): {}\n\
         crash: completed: {}\n\
         crash: {} ops completed ({} fsync'ed) and checked, \
         W/work leftovers cleared in {} rounds ({} entries), {} resets of big/ and {} of dirs/dw, \
         {:.0} MiB of content compared, median worker run {} ms, {:.1} s",
        by_op.join(", "),
        done.join(", "),
        s.ops_done,
        s.ops_done_fsync,
        s.rounds_with_work_leftovers,
        s.work_leftovers,
        s.big_resets,
        s.wide_resets,
        s.content_bytes_checked as f64 / MIB as f64,
        ms.get(ms.len() / 2).copied().unwrap_or(0),
        t0.elapsed().as_secs_f64()
    );
    eprintln!(
        "crash: {} kills, {verified} ops in flight verified, 0 failures",
        s.kills
    );
}
