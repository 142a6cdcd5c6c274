//! Differential test: random layer stacks and random operation sequences run
//! on stratafs and on the kernel overlay; every result, the merged view, the
//! normalised upper layer and the view after a stratafs remount must agree.
//!
//! Environment:
//! * `STRATAFS_DIFF_CASES` – number of sequences (default 300).
//! * `STRATAFS_DIFF_SEED`  – base seed (default 0x5742_4146); case `i` uses
//!   seed `base + i`, so a failing case is reproduced with
//!   `STRATAFS_DIFF_SEED=<case seed> STRATAFS_DIFF_CASES=1`.
//! * `STRATAFS_DIFF_OPS`   – operations per sequence (default 40, min 30).
//! * Every odd case (as root) mounts both sides with `redirect_dir=on`,
//!   so that renames of directories with lower content are compared too;
//!   every other of those (seed % 4 == 3) with `metacopy=on`, so that
//!   metadata-only copy-ups are compared too.
//! * `STRATAFS_DIFF_SUBJECT=kernel` – run the kernel overlay on both sides
//!   (self-check of the harness: must report zero divergences).
//!
//! Rootless, the oracle is the kernel in the user namespace, which refuses
//! `redirect_dir=on` and `metacopy=on`. For those options a rootless run
//! compares stratafs with results the kernel gave as root
//! (`oracle_redirect`, `oracle_metacopy`; "Rootless against root results"
//! at the end of this file, and docs/HARNESS.md):
//! * `STRATAFS_DIFF_ORACLE=DIR` – where the results are; the ignored tests
//!   `oracle_record_*` write them as root, and scripts/test-rootless.sh
//!   runs those (as root) before it drops to the test user. Without
//!   complete results the rootless tests are reported skipped.
//! * `STRATAFS_DIFF_ORACLE_CASES` – how many cases (default
//!   `STRATAFS_DIFF_CASES`): the first that many odd seeds from
//!   `STRATAFS_DIFF_SEED`, with the options the root run gives those seeds,
//!   generated with the rootless restrictions (owner 0 only, hard links in
//!   the upper layer only). A failing case is replayed with
//!   `STRATAFS_DIFF_SEED=<case seed> STRATAFS_DIFF_ORACLE_CASES=1 bash
//!   scripts/test-rootless.sh differential::oracle_` as root.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;
use stratafs::api::ItemKind;

// ---------------------------------------------------------------------------
// Accepted divergences
// ---------------------------------------------------------------------------

/// Divergences from the kernel overlay that stratafs makes on purpose. They
/// are described in docs/COMPAT.md. The generator never produces inputs that
/// reach them; the list is kept here so the comparison code has one place to
/// consult and so new entries get reviewed together with COMPAT.md.
struct KnownDivergence {
    id: &'static str,
    /// Section in docs/COMPAT.md.
    doc: &'static str,
    what: &'static str,
}

const KNOWN_DIVERGENCES: &[KnownDivergence] = &[
    KnownDivergence {
        id: "wh-prefixed-names",
        doc: "docs/COMPAT.md (names beginning with .wh.)",
        what: "names beginning with `.wh.` cannot be created through stratafs (EINVAL) and never appear",
    },
    KnownDivergence {
        id: "lower-hard-links-rootless",
        doc: "docs/COMPAT.md (hard links in lower layers)",
        what: "hard links in lower layers stay one file after copy-up also rootless, where the kernel \
               cannot keep an inode index; rootless the generator makes hard links in the upper layer only",
    },
    KnownDivergence {
        id: "private-xattrs",
        doc: "docs/COMPAT.md (hidden xattrs)",
        what: "xattrs trusted.overlay.*, user.overlay.* and user.fuseoverlayfs.* are hidden (the kernel hides only its own namespace)",
    },
];

fn known_divergence_for_name(name: &str) -> Option<&'static KnownDivergence> {
    if name.split('/').any(|c| c.starts_with(".wh.")) {
        return KNOWN_DIVERGENCES
            .iter()
            .find(|k| k.id == "wh-prefixed-names");
    }
    if name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name.starts_with("user.fuseoverlayfs.")
    {
        return KNOWN_DIVERGENCES.iter().find(|k| k.id == "private-xattrs");
    }
    None
}

// ---------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------

/// Small alphabet so that operations collide with existing entries often.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const FILE_MODES: [u32; 8] = [0o644, 0o600, 0o755, 0o444, 0o4755, 0o2755, 0o640, 0o6711];
const DIR_MODES: [u32; 5] = [0o755, 0o700, 0o1777, 0o2775, 0o555];
const XATTR_NAMES: [&str; 3] = ["user.k1", "user.k2", "user.long.name"];
const SYMLINK_TARGETS: [&str; 7] = ["a", "b", "c/d", "d/a", "x", "a/x", "b/b/c"];

fn gen_path(rng: &mut Rng) -> String {
    let depth = match rng.below(10) {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    (0..depth)
        .map(|_| *rng.pick(&NAMES))
        .collect::<Vec<_>>()
        .join("/")
}

fn gen_ids(rng: &mut Rng, rootless: bool) -> (u32, u32) {
    let ids = test_ids_for(rootless);
    (*rng.pick(&ids), *rng.pick(&ids))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    File,
    Dir,
    Other,
}

/// `lower`: rootless, hard links are generated only in the upper layer,
/// see the `lower-hard-links-rootless` entry of [`KNOWN_DIVERGENCES`].
fn gen_layer(rng: &mut Rng, lower: bool, rootless: bool) -> Layer {
    let mut layer = Layer::new();
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    let mut files: Vec<String> = Vec::new();
    let n = 3 + rng.below(9);
    for _ in 0..n {
        let path = gen_path(rng);
        if slots.contains_key(&path) {
            continue;
        }
        // Parents must be (or become) directories of this layer.
        let comps: Vec<&str> = path.split('/').collect();
        let mut ok = true;
        for i in 1..comps.len() {
            let parent = comps[..i].join("/");
            match slots.get(&parent) {
                Some(Slot::Dir) => {}
                Some(_) => {
                    ok = false;
                    break;
                }
                None => {
                    slots.insert(parent.clone(), Slot::Dir);
                    layer = if rng.chance(15) {
                        layer.opaque(&parent)
                    } else {
                        layer.dir(&parent)
                    };
                    if rng.chance(20) {
                        layer = layer.mode(*rng.pick(&DIR_MODES));
                    }
                }
            }
        }
        if !ok {
            continue;
        }
        let roll = rng.below(100);
        let slot;
        match roll {
            0..=34 => {
                let content = rng.bytes(40);
                layer = layer.file(&path, content);
                if rng.chance(40) {
                    layer = layer.mode(*rng.pick(&FILE_MODES));
                }
                if rng.chance(25) {
                    let (u, g) = gen_ids(rng, rootless);
                    layer = layer.owner(u, g);
                }
                if rng.chance(25) {
                    let v = rng.bytes(8);
                    layer = layer.xattr(XATTR_NAMES[rng.below(XATTR_NAMES.len())], v);
                }
                files.push(path.clone());
                slot = Slot::File;
            }
            35..=54 => {
                layer = layer.dir(&path);
                if rng.chance(25) {
                    layer = layer.mode(*rng.pick(&DIR_MODES));
                }
                if rng.chance(20) {
                    let v = rng.bytes(8);
                    layer = layer.xattr(XATTR_NAMES[rng.below(XATTR_NAMES.len())], v);
                }
                slot = Slot::Dir;
            }
            55..=63 => {
                layer = layer.opaque(&path);
                slot = Slot::Dir;
            }
            64..=72 => {
                layer = layer.symlink(&path, SYMLINK_TARGETS[rng.below(SYMLINK_TARGETS.len())]);
                slot = Slot::Other;
            }
            73..=79 if !files.is_empty() && (!lower || !rootless) => {
                let to = rng.pick(&files).clone();
                layer = layer.hard_link(&path, &to);
                slot = Slot::File;
            }
            80..=84 => {
                layer = layer.fifo(&path);
                slot = Slot::Other;
            }
            _ => {
                layer = layer.whiteout(&path);
                slot = Slot::Other;
            }
        }
        slots.insert(path, slot);
    }
    layer
}

fn gen_stack(rng: &mut Rng, rootless: bool) -> TempStackBuilder {
    let nlowers = 2 + rng.below(3);
    let lowers: Vec<Layer> = (0..nlowers)
        .map(|_| gen_layer(rng, true, rootless))
        .collect();
    let upper = if rng.chance(25) {
        Layer::new()
    } else {
        gen_layer(rng, false, rootless)
    };
    let mut layers = vec![upper];
    layers.extend(lowers);
    drop_whiteouts_in_unmerged_dirs(&mut layers);
    let upper = layers.remove(0);
    stack(layers, upper)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir { opaque: bool },
    Whiteout,
    NonDir,
}

/// Layers that make up directory `path` in the merged view, top first
/// (empty when `path` is not a directory there). Index 0 is the upper.
fn dir_chain(layers: &[BTreeMap<String, Seen>], path: &str) -> Vec<usize> {
    let parent_chain: Vec<usize> = if path.is_empty() {
        return (0..layers.len()).collect();
    } else {
        dir_chain(layers, parent_of(path))
    };
    let mut chain = Vec::new();
    for i in parent_chain {
        match layers[i].get(path) {
            None => continue,
            Some(Seen::Whiteout) | Some(Seen::NonDir) => break,
            Some(Seen::Dir { opaque }) => {
                chain.push(i);
                if *opaque {
                    break;
                }
            }
        }
    }
    chain
}

/// The kernel overlay lists whiteouts found in a directory that is not
/// merged with any layer below (it never creates such whiteouts itself), so
/// the generator keeps whiteouts only where they sit in a merged directory.
/// `layers`: the upper first, then the lowers.
fn drop_whiteouts_in_unmerged_dirs(layers: &mut [Layer]) {
    loop {
        let seen: Vec<BTreeMap<String, Seen>> = layers
            .iter()
            .map(|l| {
                l.items()
                    .iter()
                    .map(|n| {
                        let seen = match n.kind() {
                            ItemKind::Dir => Seen::Dir { opaque: false },
                            ItemKind::Opaque(_) => Seen::Dir { opaque: true },
                            ItemKind::Whiteout(_) => Seen::Whiteout,
                            _ => Seen::NonDir,
                        };
                        (n.path().to_string(), seen)
                    })
                    .collect()
            })
            .collect();
        let mut doomed: Vec<(usize, String)> = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            for n in l.items() {
                if matches!(n.kind(), ItemKind::Whiteout(_)) {
                    let chain = dir_chain(&seen, parent_of(n.path()));
                    if !(chain.contains(&i) && chain.len() >= 2) {
                        doomed.push((i, n.path().to_string()));
                    }
                }
            }
        }
        if doomed.is_empty() {
            return;
        }
        for (i, path) in doomed {
            layers[i].retain(|n| !(n.path() == path && matches!(n.kind(), ItemKind::Whiteout(_))));
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        p: String,
        data: Vec<u8>,
        mode: u32,
    },
    CreateExcl {
        p: String,
        mode: u32,
    },
    Write {
        p: String,
        off: i64,
        data: Vec<u8>,
    },
    Append {
        p: String,
        data: Vec<u8>,
    },
    Truncate {
        p: String,
        len: i64,
    },
    Read {
        p: String,
    },
    Mkdir {
        p: String,
        mode: u32,
    },
    Rmdir {
        p: String,
    },
    Unlink {
        p: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        p: String,
    },
    Readlink {
        p: String,
    },
    Chmod {
        p: String,
        mode: u32,
    },
    Chown {
        p: String,
        uid: u32,
        gid: u32,
    },
    Utimes {
        p: String,
        atime: i64,
        mtime: i64,
    },
    SetXattr {
        p: String,
        name: String,
        value: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        p: String,
        name: String,
    },
    GetXattr {
        p: String,
        name: String,
    },
    ListXattr {
        p: String,
    },
    Mkfifo {
        p: String,
        mode: u32,
    },
    Stat {
        p: String,
    },
    Readdir {
        p: String,
    },
}

fn gen_op(rng: &mut Rng, rootless: bool) -> Op {
    let p = gen_path(rng);
    match rng.below(100) {
        0..=7 => Op::Create {
            p,
            data: rng.bytes(30),
            mode: *rng.pick(&[0o644, 0o600, 0o755]),
        },
        8..=9 => Op::CreateExcl {
            p,
            mode: *rng.pick(&[0o644, 0o640]),
        },
        10..=15 => Op::Write {
            p,
            off: rng.below(20) as i64,
            data: rng.bytes(20),
        },
        16..=19 => Op::Append {
            p,
            data: rng.bytes(20),
        },
        20..=23 => Op::Truncate {
            p,
            len: rng.below(50) as i64,
        },
        24..=27 => Op::Read { p },
        28..=33 => Op::Mkdir {
            p,
            mode: *rng.pick(&[0o755, 0o700, 0o777]),
        },
        34..=38 => Op::Rmdir { p },
        39..=45 => Op::Unlink { p },
        46..=57 => Op::Rename {
            from: p,
            to: gen_path(rng),
            flags: *rng.pick(&[0, 0, sys::RENAME_NOREPLACE, sys::RENAME_EXCHANGE]),
        },
        58..=61 => Op::Link {
            from: p,
            to: gen_path(rng),
        },
        62..=64 => Op::Symlink {
            target: rng.pick(&SYMLINK_TARGETS).to_string(),
            p,
        },
        65..=66 => Op::Readlink { p },
        67..=71 => Op::Chmod {
            p,
            mode: *rng.pick(&FILE_MODES),
        },
        72..=74 => {
            let (uid, gid) = gen_ids(rng, rootless);
            Op::Chown { p, uid, gid }
        }
        75..=78 => Op::Utimes {
            p,
            atime: 1_500_000_000 + rng.below(1000) as i64,
            mtime: 1_400_000_000 + rng.below(1000) as i64,
        },
        79..=83 => Op::SetXattr {
            p,
            name: rng.pick(&XATTR_NAMES).to_string(),
            value: rng.bytes(10),
            flags: *rng.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
        },
        84..=85 => Op::RemoveXattr {
            p,
            name: rng.pick(&XATTR_NAMES).to_string(),
        },
        86..=87 => Op::GetXattr {
            p,
            name: rng.pick(&XATTR_NAMES).to_string(),
        },
        88 => Op::ListXattr { p },
        89..=91 => Op::Mkfifo {
            p,
            mode: *rng.pick(&[0o644, 0o600]),
        },
        92..=95 => Op::Stat { p },
        _ => Op::Readdir {
            p: if rng.chance(30) { String::new() } else { p },
        },
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: &[u8]| String::from_utf8_lossy(d).into_owned();
        match self {
            Op::Create { p, data, mode } => {
                write!(f, "create {p:?} mode={mode:o} data={:?}", s(data))
            }
            Op::CreateExcl { p, mode } => write!(f, "create_excl {p:?} mode={mode:o}"),
            Op::Write { p, off, data } => write!(f, "write {p:?} off={off} data={:?}", s(data)),
            Op::Append { p, data } => write!(f, "append {p:?} data={:?}", s(data)),
            Op::Truncate { p, len } => write!(f, "truncate {p:?} {len}"),
            Op::Read { p } => write!(f, "read {p:?}"),
            Op::Mkdir { p, mode } => write!(f, "mkdir {p:?} mode={mode:o}"),
            Op::Rmdir { p } => write!(f, "rmdir {p:?}"),
            Op::Unlink { p } => write!(f, "unlink {p:?}"),
            Op::Rename { from, to, flags } => write!(f, "rename {from:?} -> {to:?} flags={flags}"),
            Op::Link { from, to } => write!(f, "link {from:?} -> {to:?}"),
            Op::Symlink { target, p } => write!(f, "symlink {p:?} -> {target:?}"),
            Op::Readlink { p } => write!(f, "readlink {p:?}"),
            Op::Chmod { p, mode } => write!(f, "chmod {p:?} {mode:o}"),
            Op::Chown { p, uid, gid } => write!(f, "lchown {p:?} {uid}:{gid}"),
            Op::Utimes { p, atime, mtime } => write!(f, "lutimes {p:?} a={atime} m={mtime}"),
            Op::SetXattr {
                p,
                name,
                value,
                flags,
            } => {
                write!(f, "lsetxattr {p:?} {name}={:?} flags={flags}", s(value))
            }
            Op::RemoveXattr { p, name } => write!(f, "lremovexattr {p:?} {name}"),
            Op::GetXattr { p, name } => write!(f, "lgetxattr {p:?} {name}"),
            Op::ListXattr { p } => write!(f, "llistxattr {p:?}"),
            Op::Mkfifo { p, mode } => write!(f, "mkfifo {p:?} mode={mode:o}"),
            Op::Stat { p } => write!(f, "lstat {p:?}"),
            Op::Readdir { p } => write!(f, "readdir {p:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Execution
// ---------------------------------------------------------------------------

type OpResult = Result<String, i32>;

fn fmt_result(r: &OpResult) -> String {
    match r {
        Ok(s) => format!("Ok({s})"),
        Err(e) => format!("Err({})", errno_name(*e)),
    }
}

fn describe_stat(st: &libc::stat) -> String {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFCHR => "chr",
        libc::S_IFBLK => "blk",
        _ => "other",
    };
    let size = if st.st_mode & libc::S_IFMT == libc::S_IFREG {
        format!(" size={}", st.st_size)
    } else {
        String::new()
    };
    format!(
        "{kind} {:04o} {}:{} nlink={}{size}",
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid,
        st.st_nlink
    )
}

/// Opens without blocking on fifos (no reader/writer on the other end).
fn open_nb(p: &Path, flags: i32, mode: u32) -> Result<std::os::fd::OwnedFd, i32> {
    sys::open(p, flags | libc::O_NONBLOCK, mode)
}

fn run_op(root: &Path, op: &Op) -> OpResult {
    let j = |rel: &str| join_rel(root, rel);
    match op {
        Op::Create { p, data, mode } => {
            let fd = open_nb(&j(p), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, *mode)?;
            let n = sys::write(&fd, data)?;
            Ok(format!("wrote {n}"))
        }
        Op::CreateExcl { p, mode } => {
            open_nb(&j(p), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, *mode)?;
            Ok(String::new())
        }
        Op::Write { p, off, data } => {
            let fd = open_nb(&j(p), libc::O_WRONLY, 0)?;
            let n = sys::pwrite(&fd, data, *off)?;
            Ok(format!("wrote {n}"))
        }
        Op::Append { p, data } => {
            let fd = open_nb(&j(p), libc::O_WRONLY | libc::O_APPEND, 0)?;
            let n = sys::write(&fd, data)?;
            let st = sys::fstat(&fd)?;
            Ok(format!("wrote {n} size={}", st.st_size))
        }
        Op::Truncate { p, len } => sys::truncate(&j(p), *len).map(|_| String::new()),
        Op::Read { p } => {
            let fd = open_nb(&j(p), libc::O_RDONLY, 0)?;
            let st = sys::fstat(&fd)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Ok(format!("opened {}", describe_stat(&st)));
            }
            let data = sys::read_fd_all(&fd)?;
            Ok(format!("{:?}", String::from_utf8_lossy(&data)))
        }
        Op::Mkdir { p, mode } => sys::mkdir(&j(p), *mode).map(|_| String::new()),
        Op::Rmdir { p } => sys::rmdir(&j(p)).map(|_| String::new()),
        Op::Unlink { p } => sys::unlink(&j(p)).map(|_| String::new()),
        Op::Rename { from, to, flags } => {
            sys::rename2(&j(from), &j(to), *flags).map(|_| String::new())
        }
        Op::Link { from, to } => {
            sys::link(&j(from), &j(to))?;
            Ok(describe_stat(&sys::lstat(&j(to))?))
        }
        Op::Symlink { target, p } => sys::symlink(target, &j(p)).map(|_| String::new()),
        Op::Readlink { p } => {
            sys::readlink(&j(p)).map(|t| String::from_utf8_lossy(&t).into_owned())
        }
        Op::Chmod { p, mode } => sys::chmod(&j(p), *mode).map(|_| String::new()),
        Op::Chown { p, uid, gid } => {
            sys::lchown(&j(p), *uid, *gid)?;
            Ok(describe_stat(&sys::lstat(&j(p))?))
        }
        Op::Utimes { p, atime, mtime } => {
            sys::lutimes(&j(p), (*atime, 0), (*mtime, 0)).map(|_| String::new())
        }
        Op::SetXattr {
            p,
            name,
            value,
            flags,
        } => sys::lsetxattr(&j(p), name, value, *flags).map(|_| String::new()),
        Op::RemoveXattr { p, name } => sys::lremovexattr(&j(p), name).map(|_| String::new()),
        Op::GetXattr { p, name } => {
            sys::lgetxattr(&j(p), name).map(|v| format!("{:?}", String::from_utf8_lossy(&v)))
        }
        Op::ListXattr { p } => sys::llistxattr(&j(p)).map(|v| v.join(",")),
        Op::Mkfifo { p, mode } => sys::mkfifo(&j(p), *mode).map(|_| String::new()),
        Op::Stat { p } => sys::lstat(&j(p)).map(|st| describe_stat(&st)),
        Op::Readdir { p } => {
            let rd = io_errno(std::fs::read_dir(j(p)))?;
            let mut names = Vec::new();
            for e in rd {
                let e = io_errno(e)?;
                let t = io_errno(e.file_type())?;
                let c = if t.is_dir() {
                    "/"
                } else if t.is_symlink() {
                    "@"
                } else if t.is_fifo_like() {
                    "|"
                } else {
                    ""
                };
                names.push(format!("{}{c}", e.file_name().to_string_lossy()));
            }
            names.sort();
            Ok(names.join(" "))
        }
    }
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

/// Tracks paths whose mtime was set explicitly and not disturbed since, so
/// only those mtimes are compared.
#[derive(Default)]
struct MtimeTracker {
    explicit: BTreeSet<String>,
}

impl MtimeTracker {
    fn forget_tree(&mut self, p: &str) {
        let prefix = format!("{p}/");
        self.explicit.retain(|k| k != p && !k.starts_with(&prefix));
    }
    fn forget_entry(&mut self, p: &str) {
        self.forget_tree(p);
        self.explicit.remove(parent_of(p));
    }
    /// Writes may reach any hard link or symlink alias of a file.
    fn forget_non_dirs(&mut self, snap_hint: &Snapshot) {
        self.explicit.retain(
            |k| matches!(snap_hint.get(k).and_then(|e| e.meta()), Some(m) if m.kind == Kind::Dir),
        );
    }
    fn after(&mut self, op: &Op, ok: bool, view: &dyn Fn() -> Snapshot) {
        match op {
            Op::Create { .. } | Op::CreateExcl { .. } => {
                // O_CREAT through a symlink may create anywhere.
                self.explicit.clear();
            }
            Op::Write { .. } | Op::Append { .. } | Op::Truncate { .. } if ok => {
                let v = view();
                self.forget_non_dirs(&v);
            }
            Op::Mkdir { p, .. }
            | Op::Rmdir { p }
            | Op::Unlink { p }
            | Op::Symlink { p, .. }
            | Op::Mkfifo { p, .. } => self.forget_entry(p),
            Op::Rename { from, to, .. } => {
                self.forget_entry(from);
                self.forget_entry(to);
            }
            Op::Link { to, .. } => self.forget_entry(to),
            Op::Utimes { p, .. } if ok => {
                self.explicit.insert(p.clone());
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// One case
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Subject {
    Stratafs,
    Kernel,
}

fn subject() -> Subject {
    match std::env::var("STRATAFS_DIFF_SUBJECT").as_deref() {
        Ok("kernel") => Subject::Kernel,
        _ => Subject::Stratafs,
    }
}

struct Case {
    seed: u64,
    spec: TempStackBuilder,
    ops: Vec<Op>,
    /// Both sides mounted with `redirect_dir=on`: renames of directories
    /// with lower content succeed (every other case as root; the kernel
    /// refuses the option rootless).
    redirect: bool,
    /// Both sides mounted with `metacopy=on` (which implies
    /// `redirect_dir=on`): metadata changes copy metadata only.
    metacopy: bool,
}

impl Case {
    /// The mount options the case adds on both sides.
    fn extra(&self) -> &'static str {
        if self.metacopy {
            "metacopy=on"
        } else if self.redirect {
            "redirect_dir=on"
        } else {
            ""
        }
    }

    /// The options of the remount: metadata copies need `metacopy=on`
    /// (without it they are refused, as on the kernel); redirects are
    /// followed by default.
    fn remount_extra(&self) -> &'static str {
        if self.metacopy {
            "metacopy=on"
        } else {
            ""
        }
    }
}

/// What the cases of a run may contain and how they are mounted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Profile {
    /// Only what a rootless run can build and compare: owners 0 (the one
    /// id `unshare -Ur` maps), hard links in the upper layer only.
    rootless: bool,
    /// Odd seeds mount with `redirect_dir=on`, those with seed % 4 == 3
    /// with `metacopy=on`.
    options: bool,
}

impl Profile {
    /// The cases of a run here, compared with the kernel overlay mounted
    /// here: rootless that is the kernel in the user namespace
    /// (`userxattr`), which refuses both options.
    fn here() -> Self {
        let rootless = is_rootless();
        Profile {
            rootless,
            options: !rootless,
        }
    }

    /// The cases a rootless run compares with results recorded as root
    /// (see "Rootless against root results" below).
    const ORACLE: Profile = Profile {
        rootless: true,
        options: true,
    };
}

fn gen_case(seed: u64, nops: usize, profile: Profile) -> Case {
    let mut rng = Rng::new(seed);
    let spec = gen_stack(&mut rng, profile.rootless);
    let no_open = no_open_everywhere();
    let ops = (0..nops)
        .map(|_| {
            let mut op = gen_op(&mut rng, profile.rootless);
            if let Op::Write { data, .. } | Op::Append { data, .. } = &mut op {
                if no_open && data.is_empty() {
                    // An open for writing that writes nothing copies up on
                    // the kernel overlay only with no_open (a write of no
                    // bytes sends no request): docs/COMPAT.md, item 6.
                    data.push(b'0');
                }
            }
            op
        })
        .collect();
    let redirect = seed % 2 == 1 && profile.options;
    let metacopy = redirect && seed % 4 == 3;
    let case = Case {
        seed,
        spec,
        ops,
        redirect,
        metacopy,
    };
    check_generator_avoids_known_divergences(&case);
    case
}

fn check_generator_avoids_known_divergences(case: &Case) {
    let mut names: Vec<String> = Vec::new();
    for layer in case
        .spec
        .lower_layers()
        .iter()
        .chain(case.spec.upper_layer())
    {
        for n in layer.items() {
            names.push(n.path().to_string());
            names.extend(n.xattrs().iter().map(|(k, _)| k.clone()));
        }
    }
    for op in &case.ops {
        names.push(op.to_string());
    }
    for n in names {
        for word in n.split([' ', '"', '=']) {
            if let Some(k) = known_divergence_for_name(word) {
                panic!(
                    "generator produced input hitting accepted divergence {} ({}): {n}",
                    k.id, k.doc
                );
            }
        }
    }
}

fn describe_case(case: &Case) -> String {
    let mut out = format!(
        "seed {} (0x{:x}) options {:?}\nstack (lowers[0] is the top lower):\n",
        case.seed,
        case.seed,
        case.extra()
    );
    let fmt_layer = |l: &Layer| {
        let mut s = String::new();
        for n in l.items() {
            s.push_str(&format!("    {:?} {:?}", n.path(), n.kind()));
            if let Some(m) = n.mode() {
                s.push_str(&format!(" mode={m:o}"));
            }
            if let Some((u, g)) = n.owner() {
                s.push_str(&format!(" owner={u}:{g}"));
            }
            for (k, v) in n.xattrs() {
                s.push_str(&format!(" {k}={:?}", String::from_utf8_lossy(v)));
            }
            s.push('\n');
        }
        s
    };
    for (i, l) in case.spec.lower_layers().iter().enumerate() {
        out.push_str(&format!("  lower{i}:\n{}", fmt_layer(l)));
    }
    if let Some(u) = case.spec.upper_layer() {
        out.push_str(&format!("  upper:\n{}", fmt_layer(u)));
    }
    out.push_str("ops:\n");
    for (i, op) in case.ops.iter().enumerate() {
        out.push_str(&format!("  #{i:02} {op}\n"));
    }
    out
}

/// What a case came to: `Err((stage, details))` at the first divergence.
type Outcome = Result<(), (String, String)>;

struct Divergence {
    seed: u64,
    stage: String,
    details: String,
}

fn mount_subject(stack: &Stack, subj: Subject, extra: &str) -> Mount {
    match (subj, extra) {
        (Subject::Stratafs, "") => stack.mount_strata(),
        (Subject::Stratafs, extra) => stack.mount_strata_with(extra),
        (Subject::Kernel, extra) => stack.mount_kernel_with(extra),
    }
}

fn view_opts(mt: &MtimeTracker) -> CmpOpts {
    CmpOpts {
        dir_nlink: true,
        mtime_paths: mt.explicit.clone(),
        all_mtimes: false,
    }
}

/// The kernel without an inode index may report different `st_ino` for the
/// names of one upper file when that file was copied up (the copied name
/// keeps its lower number, a later hard link shows the upper one), although
/// it agrees they are one file. Accept exactly that: every kernel group is a
/// subject group, and every other subject group is, in the kernel's view,
/// names with the same link count (> 1), type, size and contents.
/// (docs/COMPAT.md, "Inode numbers".)
fn kernel_split_link_group(
    sg: &BTreeSet<Vec<String>>,
    kg: &BTreeSet<Vec<String>>,
    kv: &Snapshot,
) -> bool {
    if !kg.is_subset(sg) {
        return false;
    }
    sg.difference(kg).all(|group| {
        let metas: Vec<&Meta> = group
            .iter()
            .filter_map(|p| match kv.get(p) {
                Some(Entry::Node(m)) => Some(m),
                _ => None,
            })
            .collect();
        metas.len() == group.len()
            && metas[0].nlink > 1
            && metas.iter().all(|m| {
                m.nlink == metas[0].nlink
                    && m.kind == metas[0].kind
                    && m.size == metas[0].size
                    && m.hash == metas[0].hash
            })
    })
}

fn compare_views(stage: &str, s: &Path, k: &Path, opts: &CmpOpts) -> Outcome {
    compare_snapshots(stage, &snapshot_view(s), &snapshot_view(k), opts)
}

/// Merged views: the subject's `sv`, the kernel's `kv` (with the kernel's
/// inode numbers, which say what the kernel holds for one file).
fn compare_snapshots(stage: &str, sv: &Snapshot, kv: &Snapshot, opts: &CmpOpts) -> Outcome {
    let mut d = diff_snapshots(sv, kv, opts);
    let (sg, kg) = (hardlink_groups(sv), hardlink_groups(kv));
    if sg != kg && !kernel_split_link_group(&sg, &kg, kv) {
        d.push(format!(
            "hard-link groups (same st_ino): subject {sg:?} != kernel {kg:?}"
        ));
    }
    if d.is_empty() {
        Ok(())
    } else {
        Err((
            stage.to_string(),
            format!(
                "{}\n--- subject view ---\n{}--- kernel view ---\n{}",
                d.join("\n"),
                fmt_snapshot(sv),
                fmt_snapshot(kv)
            ),
        ))
    }
}

/// The result of op `i` on the subject (`rs`) against the kernel's (`rk`);
/// `log` collects the kernel's results so far.
fn compare_op(i: usize, op: &Op, rs: &OpResult, rk: &OpResult, log: &mut String) -> Outcome {
    log.push_str(&format!("  #{i:02} {op}: {}\n", fmt_result(rk)));
    if rs == rk {
        return Ok(());
    }
    Err((
        format!("op #{i} ({op})"),
        format!(
            "subject: {}\nkernel:  {}\nresults so far (kernel):\n{log}",
            fmt_result(rs),
            fmt_result(rk)
        ),
    ))
}

/// Unmounts the subject; stratafs must exit cleanly and leave nothing in
/// `W/work` but whiteout templates (char 0/0).
fn unmount_subject(m: Mount, stack: &Stack, subj: Subject) -> Outcome {
    let (status, stderr) = m.unmount_with_stderr();
    if subj != Subject::Stratafs {
        return Ok(());
    }
    if let Some(st) = status {
        if !st.success() {
            return Err((
                "unmount".into(),
                format!("stratafs exited with {st}\n--- its stderr ---\n{stderr}"),
            ));
        }
    }
    let left = stack.work_leftovers();
    if !left.is_empty() {
        return Err((
            "work dir".into(),
            format!("stratafs left entries in W/work after unmount: {left:?}"),
        ));
    }
    Ok(())
}

/// Normalised upper layers: the subject's `su`, the kernel's `ku`.
fn compare_uppers(su: &Snapshot, ku: &Snapshot, opts: &CmpOpts, log: &str) -> Outcome {
    let d = diff_snapshots(su, ku, opts);
    if d.is_empty() {
        return Ok(());
    }
    Err((
        "upper layer".into(),
        format!(
            "{}\n--- subject upper ---\n{}--- kernel upper ---\n{}op results (kernel):\n{log}",
            d.join("\n"),
            fmt_snapshot(su),
            fmt_snapshot(ku)
        ),
    ))
}

fn run_case(case: &Case, subj: Subject) -> Outcome {
    let sformat = match subj {
        Subject::Stratafs => subject_markers(case),
        Subject::Kernel => Markers::Kernel,
    };
    let kstack = case.spec.build(Markers::Kernel);
    let sstack = case.spec.build(sformat);
    let km = kstack.mount_kernel_with(case.extra());
    let sm = mount_subject(&sstack, subj, case.extra());

    // The initial views must already agree.
    let mt = MtimeTracker::default();
    compare_views("initial view", &sstack.mnt, &kstack.mnt, &view_opts(&mt))?;

    let mut mt = mt;
    let mut log = String::new();
    for (i, op) in case.ops.iter().enumerate() {
        let rs = run_op(&sstack.mnt, op);
        let rk = run_op(&kstack.mnt, op);
        compare_op(i, op, &rs, &rk, &mut log)?;
        let kmnt = kstack.mnt.clone();
        mt.after(op, rk.is_ok(), &move || snapshot_view(&kmnt));
    }

    let opts = view_opts(&mt);
    compare_views("final view", &sstack.mnt, &kstack.mnt, &opts)
        .map_err(|(s, d)| (s, format!("{d}\nop results (kernel):\n{log}")))?;

    // Unmount the subject, then compare the upper layers.
    unmount_subject(sm, &sstack, subj)?;
    let mut su = snapshot_upper(sstack.upper());
    let mut ku = snapshot_upper(kstack.upper());
    normalise_upper(&mut su, sstack.lowers());
    normalise_upper(&mut ku, kstack.lowers());
    normalise_rootless_pair(&mut su, &ku);
    compare_uppers(&su, &ku, &opts, &log)?;

    // Remount the subject on the same dirs (without redirect_dir=on:
    // redirects are followed by default); the view must not change.
    let sm2 = mount_subject(&sstack, subj, case.remount_extra());
    compare_views("view after remount", &sstack.mnt, &kstack.mnt, &opts)?;
    drop(sm2);
    drop(km);
    Ok(())
}

/// The markers of the stratafs side's stack: every form stratafs reads,
/// drawn from the seed.
fn subject_markers(case: &Case) -> Markers {
    Markers::Mixed(case.seed.wrapping_mul(31).wrapping_add(7))
}

const PARTS: u64 = 4;

fn run_part(part: u64) {
    let cases = env_u64("STRATAFS_DIFF_CASES", 300);
    let base = env_u64("STRATAFS_DIFF_SEED", 0x5742_4146);
    let subj = subject();
    let seeds = (part..cases)
        .step_by(PARTS as usize)
        .map(|i| base.wrapping_add(i));
    run_seeds(
        &format!("differential part {part}"),
        &format!("against {subj:?}"),
        seeds,
        Profile::here(),
        "cargo test --test it differential::",
        &|case| run_case(case, subj),
    );
}

/// Runs the case of every seed with `run` and fails with a summary of
/// the divergences found (at most 10); each is printed with the case and
/// the command (`reproduce`, after the seed's environment) that replays it.
fn run_seeds(
    label: &str,
    against: &str,
    seeds: impl Iterator<Item = u64>,
    profile: Profile,
    reproduce: &str,
    run: &dyn Fn(&Case) -> Outcome,
) {
    let nops = env_u64("STRATAFS_DIFF_OPS", 40).max(30) as usize;
    let started = Instant::now();
    let mut divergences: Vec<Divergence> = Vec::new();
    let mut ran = 0;
    for seed in seeds {
        let case = gen_case(seed, nops, profile);
        ran += 1;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&case)));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err((stage, details))) => Some((stage, details)),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Some(("panic".to_string(), msg))
            }
        };
        if let Some((stage, details)) = failure {
            eprintln!(
                "DIVERGENCE seed={seed} stage={stage}\nreproduce: STRATAFS_DIFF_SEED={seed} STRATAFS_DIFF_CASES=1 {reproduce}\n{}{details}\n",
                describe_case(&case)
            );
            divergences.push(Divergence {
                seed,
                stage,
                details,
            });
            if divergences.len() >= 10 {
                eprintln!("stopping after 10 divergences");
                break;
            }
        }
    }
    eprintln!(
        "{label}: {ran} cases x {nops} ops {against} in {:.1}s, {} divergences",
        started.elapsed().as_secs_f64(),
        divergences.len()
    );
    if !divergences.is_empty() {
        let summary: Vec<String> = divergences
            .iter()
            .map(|d| {
                let first = d.details.lines().next().unwrap_or("");
                format!("  seed {} at {}: {first}", d.seed, d.stage)
            })
            .collect();
        panic!(
            "{} divergences from the kernel overlay (accepted ones are listed in KNOWN_DIVERGENCES / docs/COMPAT.md):\n{}",
            divergences.len(),
            summary.join("\n")
        );
    }
}

#[test]
fn differential_part0() {
    run_part(0);
}

#[test]
fn differential_part1() {
    run_part(1);
}

#[test]
fn differential_part2() {
    run_part(2);
}

#[test]
fn differential_part3() {
    run_part(3);
}

#[test]
fn generator_is_deterministic_and_avoids_accepted_divergences() {
    let a = gen_case(42, 40, Profile::here());
    let b = gen_case(42, 40, Profile::here());
    assert_eq!(a.spec, b.spec);
    assert_eq!(describe_case(&a), describe_case(&b));
    assert!(a.ops.len() >= 30);
    let c = gen_case(43, 40, Profile::here());
    assert_ne!(describe_case(&a), describe_case(&c));
    // Known divergences only apply to the documented names.
    assert!(known_divergence_for_name("x/.wh.y").is_some());
    assert!(known_divergence_for_name("user.overlay.opaque").is_some());
    assert!(known_divergence_for_name("user.k1").is_none());
    for k in KNOWN_DIVERGENCES {
        assert!(k.doc.starts_with("docs/COMPAT.md"), "{}: {}", k.id, k.what);
    }
}

#[test]
fn snapshot_metadata_is_read_through_lstat() {
    // Guards the harness: symlinks are not followed and modes keep the
    // special bits.
    let spec = read_only_stack(vec![Layer::new()
        .file("f", "x")
        .mode(0o4755)
        .symlink("l", "f")]);
    let st = spec.build(Markers::Kernel);
    let snap = snapshot_view(&st.lowers()[0]);
    assert_eq!(meta_of(&snap, "f").mode, 0o4755);
    assert_eq!(meta_of(&snap, "l").kind, Kind::Symlink);
    assert_eq!(meta_of(&snap, "l").target.as_deref(), Some("f"));
    let md = std::fs::symlink_metadata(st.l(0, "f")).unwrap();
    assert_eq!(meta_of(&snap, "f").ino, (md.dev(), md.ino()));
}

// ---------------------------------------------------------------------------
// Rootless against root results
// ---------------------------------------------------------------------------
//
// Rootless the oracle is the kernel in the user namespace, which refuses
// `redirect_dir=on` and `metacopy=on`; stratafs accepts both there and
// writes the kernel's records under `user.overlay.*`. So the kernel side of
// those cases is recorded as root (`oracle_record_*`, ignored tests that
// scripts/test-rootless.sh runs as root before it drops to the test user)
// and the rootless run (`oracle_*`) compares stratafs with the records.

/// The directory of the records (`STRATAFS_DIFF_ORACLE`).
const ORACLE_ENV: &str = "STRATAFS_DIFF_ORACLE";

/// What the kernel overlay (root, `index=on` and the case's options) did
/// in one case.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    /// [`describe_case`] of the case: the replay checks that it generates
    /// the same case.
    case: String,
    /// The merged view right after the mount.
    initial: Snapshot,
    /// The result of every op.
    results: Vec<OpResult>,
    /// The paths whose mtime the comparison includes ([`MtimeTracker`]).
    mtime_paths: BTreeSet<String>,
    /// The merged view after the ops (with the kernel's inode numbers).
    view: Snapshot,
    /// The upper layer after the unmount, origins by lower path.
    upper: Snapshot,
}

/// The two halves of the recorded cases: odd seeds, by their options.
#[derive(Clone, Copy, Debug)]
enum OraclePart {
    /// seed % 4 == 1: `redirect_dir=on`.
    Redirect,
    /// seed % 4 == 3: `metacopy=on`.
    Metacopy,
}

impl OraclePart {
    fn name(self) -> &'static str {
        match self {
            OraclePart::Redirect => "redirect",
            OraclePart::Metacopy => "metacopy",
        }
    }

    /// The seeds of this part among the first `STRATAFS_DIFF_ORACLE_CASES`
    /// odd seeds from `STRATAFS_DIFF_SEED` (default: as many as
    /// `STRATAFS_DIFF_CASES`): the cases the root run mounts with the same
    /// option, and as many again after them (generated here with the
    /// rootless restrictions).
    fn seeds(self) -> Vec<u64> {
        let cases = env_u64("STRATAFS_DIFF_CASES", 300);
        let cases = env_u64("STRATAFS_DIFF_ORACLE_CASES", cases);
        let base = env_u64("STRATAFS_DIFF_SEED", 0x5742_4146);
        let rem = match self {
            OraclePart::Redirect => 1,
            OraclePart::Metacopy => 3,
        };
        (0..)
            .map(|i| base.wrapping_add(i))
            .filter(|s| s % 2 == 1)
            .take(cases as usize)
            .filter(|s| s % 4 == rem)
            .collect()
    }

    /// Written once every case of the part is recorded.
    fn done_file(self, dir: &Path) -> std::path::PathBuf {
        dir.join(format!("{}.done", self.name()))
    }
}

fn record_file(dir: &Path, seed: u64) -> std::path::PathBuf {
    dir.join(format!("seed-{seed}.json"))
}

fn record_case(case: &Case) -> Record {
    let stack = case.spec.build(Markers::Kernel);
    let m = stack.mount_kernel_with(case.extra());
    let initial = snapshot_view(&stack.mnt);
    let mut mt = MtimeTracker::default();
    let mut results = Vec::new();
    // The ops run as a rootless caller would make them: without
    // CAP_FSETID, which the kernel checks in the initial user namespace
    // (not the caller's): a write or truncate of a set-user-id or
    // set-group-id file (group-executable) clears those bits for every
    // caller in a user namespace, and as root for none. Every other
    // capability the ops use is checked against the caller's namespace,
    // where the rootless caller is root over the whole stack. (The mount
    // and its copy-ups keep the mounter's capabilities.)
    sys::set_effective_cap(sys::CAP_FSETID, false).expect("drop CAP_FSETID");
    for op in &case.ops {
        let r = run_op(&stack.mnt, op);
        let mnt = stack.mnt.clone();
        mt.after(op, r.is_ok(), &move || snapshot_view(&mnt));
        results.push(r);
    }
    sys::set_effective_cap(sys::CAP_FSETID, true).expect("raise CAP_FSETID");
    let view = snapshot_view(&stack.mnt);
    m.unmount();
    let mut upper = snapshot_upper(stack.upper());
    normalise_origins(&mut upper, stack.lowers(), true);
    Record {
        case: describe_case(case),
        initial,
        results,
        mtime_paths: mt.explicit,
        view,
        upper,
    }
}

fn record_part(part: OraclePart) {
    let dir = std::env::var_os(ORACLE_ENV)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("{ORACLE_ENV}=DIR names where the records go"));
    assert!(
        !is_rootless(),
        "the records are the kernel overlay's results as root"
    );
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
    let nops = env_u64("STRATAFS_DIFF_OPS", 40).max(30) as usize;
    let started = Instant::now();
    let seeds = part.seeds();
    for &seed in &seeds {
        let record = record_case(&gen_case(seed, nops, Profile::ORACLE));
        let json = serde_json::to_vec(&record).expect("a record serialises");
        let file = record_file(&dir, seed);
        std::fs::write(&file, json).unwrap_or_else(|e| panic!("write {file:?}: {e}"));
    }
    let done = part.done_file(&dir);
    std::fs::write(&done, format!("{}\n", seeds.len()))
        .unwrap_or_else(|e| panic!("write {done:?}: {e}"));
    eprintln!(
        "oracle {}: recorded {} cases x {nops} ops in {dir:?} in {:.1}s",
        part.name(),
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The kernel's records in a recorded upper as stratafs writes them
/// rootless (docs/COMPAT.md):
/// * `trusted.overlay.X` becomes `user.overlay.X`, the kernel's layout with
///   `userxattr`;
/// * on anything but a regular file or a directory there are none: the
///   `user.` namespace holds xattrs of those two types only (for everyone;
///   the kernel with `userxattr` cannot write them either), so a copied-up
///   symlink or fifo has no `user.overlay.origin`.
///
/// Nothing else of an upper changes.
fn records_as_rootless(s: &Snapshot) -> Snapshot {
    let mut s = s.clone();
    for e in s.values_mut() {
        let Entry::Node(m) = e else {
            continue;
        };
        let user_ns = matches!(m.kind, Kind::File | Kind::Dir);
        m.xattrs = std::mem::take(&mut m.xattrs)
            .into_iter()
            .filter_map(|(n, v)| match n.strip_prefix("trusted.overlay.") {
                Some(rest) => user_ns.then(|| (format!("user.overlay.{rest}"), v)),
                None => Some((n, v)),
            })
            .collect();
    }
    s
}

/// One case on stratafs (here: rootless) against its record.
fn replay_case(case: &Case, rec: &Record) -> Outcome {
    if rec.case != describe_case(case) {
        return Err((
            "record".into(),
            format!(
                "the record is of another case (recorded by another build?):\n{}",
                rec.case
            ),
        ));
    }
    if rec.results.len() != case.ops.len() {
        return Err(("record".into(), "the record lacks op results".into()));
    }
    let stack = case.spec.build(subject_markers(case));
    let m = stack.mount_strata_with(case.extra());
    let initial = view_opts(&MtimeTracker::default());
    compare_snapshots(
        "initial view",
        &snapshot_view(&stack.mnt),
        &rec.initial,
        &initial,
    )?;

    let mut log = String::new();
    for (i, (op, rk)) in case.ops.iter().zip(&rec.results).enumerate() {
        let rs = run_op(&stack.mnt, op);
        compare_op(i, op, &rs, rk, &mut log)?;
    }

    let opts = CmpOpts {
        dir_nlink: true,
        mtime_paths: rec.mtime_paths.clone(),
        all_mtimes: false,
    };
    compare_snapshots("final view", &snapshot_view(&stack.mnt), &rec.view, &opts)
        .map_err(|(s, d)| (s, format!("{d}\nop results (kernel):\n{log}")))?;

    unmount_subject(m, &stack, Subject::Stratafs)?;
    let mut su = snapshot_upper(stack.upper());
    normalise_origins(&mut su, stack.lowers(), true);
    compare_uppers(&su, &records_as_rootless(&rec.upper), &opts, &log)?;

    let m2 = stack.mount_strata_with(case.remount_extra());
    compare_snapshots(
        "view after remount",
        &snapshot_view(&stack.mnt),
        &rec.view,
        &opts,
    )?;
    drop(m2);
    Ok(())
}

fn replay_part(test: &str, part: OraclePart) {
    if !is_rootless() {
        return skip(
            test,
            "compares a rootless stratafs with the kernel's results as root; as root \
             differential_part1 and differential_part3 compare with the kernel directly",
        );
    }
    let Some(dir) = std::env::var_os(ORACLE_ENV).map(std::path::PathBuf::from) else {
        return skip(
            test,
            &format!(
                "no root results ({ORACLE_ENV} unset): scripts/test-rootless.sh records them \
                 when started as root"
            ),
        );
    };
    if !part.done_file(&dir).exists() {
        return skip(
            test,
            &format!("no complete root results in {dir:?} (the recording failed or did not run)"),
        );
    }
    let records: BTreeMap<u64, Result<Record, String>> = part
        .seeds()
        .into_iter()
        .map(|seed| {
            let file = record_file(&dir, seed);
            let rec = std::fs::read(&file)
                .map_err(|e| format!("read {file:?}: {e}"))
                .and_then(|b| {
                    serde_json::from_slice(&b).map_err(|e| format!("parse {file:?}: {e}"))
                });
            (seed, rec)
        })
        .collect();
    run_seeds(
        &format!("oracle {}", part.name()),
        "against the kernel's results as root",
        records.keys().copied(),
        Profile::ORACLE,
        "STRATAFS_DIFF_ORACLE_CASES=1 bash scripts/test-rootless.sh differential::oracle_ (as root)",
        &|case| match &records[&case.seed] {
            Ok(rec) => replay_case(case, rec),
            Err(e) => Err(("record".into(), e.clone())),
        },
    );
}

#[test]
#[ignore = "run as root by scripts/test-rootless.sh with STRATAFS_DIFF_ORACLE=DIR"]
fn oracle_record_redirect() {
    record_part(OraclePart::Redirect);
}

#[test]
#[ignore = "run as root by scripts/test-rootless.sh with STRATAFS_DIFF_ORACLE=DIR"]
fn oracle_record_metacopy() {
    record_part(OraclePart::Metacopy);
}

#[test]
fn oracle_redirect() {
    replay_part("oracle_redirect", OraclePart::Redirect);
}

#[test]
fn oracle_metacopy() {
    replay_part("oracle_metacopy", OraclePart::Metacopy);
}
