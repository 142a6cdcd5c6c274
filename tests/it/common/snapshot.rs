//! Snapshots of a merged view or an upper layer (the upper normalised to
//! overlay semantics: whiteouts and opaque markers of any form alike), and
//! their comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::env::is_rootless;
use super::errno::errno_name;
use super::stacks::join_rel;
use super::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
    Unknown,
}

pub fn kind_of(m: &fs::Metadata) -> Kind {
    let ft = m.file_type();
    if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        Kind::Unknown
    }
}

/// Metadata of one entry as seen through lstat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits including suid/sgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size (regular files only).
    pub size: Option<u64>,
    /// FNV-1a of the contents (regular files only).
    pub hash: Option<u64>,
    pub target: Option<String>,
    pub nlink: u64,
    /// All listed xattrs (values included).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub rdev: Option<(u32, u32)>,
    pub mtime: (i64, i64),
    /// Opaque marker (upper snapshots only).
    pub opaque: bool,
    /// (st_dev, st_ino), not compared by [`diff_snapshots`].
    pub ino: (u64, u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Whiteout,
    Node(Meta),
}

impl Entry {
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Entry::Node(m) => Some(m),
            Entry::Whiteout => None,
        }
    }
}

/// Path ("" is the root, "a/b" below it) -> entry.
pub type Snapshot = BTreeMap<String, Entry>;

pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Overlay metadata: kernel overlayfs (`origin`, `impure`, ...),
/// fuse-overlayfs, and stratafs's own (`stratafs.origin`, the inode number
/// a copied-up object keeps).
pub fn is_private_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name.starts_with("user.fuseoverlayfs.")
        || name.starts_with("trusted.stratafs.")
        || name.starts_with("user.stratafs.")
}

fn is_opaque_xattr(name: &str) -> bool {
    matches!(
        name,
        "trusted.overlay.opaque" | "user.overlay.opaque" | "user.fuseoverlayfs.opaque"
    )
}

fn read_meta(p: &Path, md: &fs::Metadata) -> Meta {
    let kind = kind_of(md);
    let (size, hash) = if kind == Kind::File {
        let data = sys::read_all(p).unwrap_or_else(|e| panic!("read {p:?}: {}", errno_name(e)));
        (Some(md.size()), Some(fnv1a(&data)))
    } else {
        (None, None)
    };
    let target = if kind == Kind::Symlink {
        let t = sys::readlink(p).unwrap_or_else(|e| panic!("readlink {p:?}: {}", errno_name(e)));
        Some(String::from_utf8_lossy(&t).into_owned())
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    if let Ok(names) = sys::llistxattr(p) {
        for n in names {
            if let Ok(v) = sys::lgetxattr(p, &n) {
                xattrs.insert(n, v);
            } else {
                xattrs.insert(n, b"<unreadable>".to_vec());
            }
        }
    }
    let rdev = if matches!(kind, Kind::CharDev | Kind::BlockDev) {
        Some((sys::major(md.rdev()), sys::minor(md.rdev())))
    } else {
        None
    };
    Meta {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size,
        hash,
        target,
        nlink: md.nlink(),
        xattrs,
        rdev,
        mtime: (md.mtime(), md.mtime_nsec()),
        opaque: false,
        ino: (md.dev(), md.ino()),
    }
}

fn sorted_children(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {dir:?}: {e}"))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("readdir {dir:?}: {e}"))
                .file_name()
        })
        .collect();
    names.sort();
    names
}

fn rel_join(rel: &str, name: &OsStr) -> String {
    let n = name.to_string_lossy();
    if rel.is_empty() {
        n.into_owned()
    } else {
        format!("{rel}/{n}")
    }
}

/// Walks the merged tree (lstat, no symlink following).
pub fn snapshot_view(mnt: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    walk_view(mnt, "", &mut out);
    out
}

fn walk_view(base: &Path, rel: &str, out: &mut Snapshot) {
    let p = join_rel(base, rel);
    let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
    let meta = read_meta(&p, &md);
    let is_dir = meta.kind == Kind::Dir;
    out.insert(rel.to_string(), Entry::Node(meta));
    if is_dir {
        for name in sorted_children(&p) {
            walk_view(base, &rel_join(rel, &name), out);
        }
    }
}

/// The upper layer normalised to overlay semantics: whiteouts of either form
/// become [`Entry::Whiteout`] at the hidden name and opaque markers of any
/// form set `Meta::opaque`. Every other xattr is kept (the kernel's records
/// and any `stratafs.` name alike), except the overlay's random uuid.
pub fn snapshot_upper(upper: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    walk_upper(upper, "", &mut out);
    out
}

fn walk_upper(base: &Path, rel: &str, out: &mut Snapshot) {
    let p = join_rel(base, rel);
    let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
    let mut meta = read_meta(&p, &md);
    if meta.kind == Kind::CharDev && md.rdev() == 0 {
        // A whiteout is compared as a whiteout, not by its own metadata:
        // the kernel overlay (since 5.8) and stratafs both make whiteouts
        // as hard links to one shared device inode, so its link count says
        // how many whiteouts that mount made through the same template, and
        // its owner and times are the template's. Neither is part of what
        // the layer says.
        out.insert(rel.to_string(), Entry::Whiteout);
        return;
    }
    let is_dir = meta.kind == Kind::Dir;
    if is_dir {
        meta.opaque = meta
            .xattrs
            .iter()
            .any(|(n, v)| is_opaque_xattr(n) && v.as_slice() == b"y");
    }
    // The kernel's own records are compared too (they are what a kernel
    // mount of the upper reads); opaque markers are normalised above, the
    // overlay's uuid is random. Origins name lower inodes: see
    // `normalise_upper`.
    meta.xattrs
        .retain(|n, _| !is_opaque_xattr(n) && !n.ends_with(".overlay.uuid"));
    let mut children = Vec::new();
    if is_dir {
        for name in sorted_children(&p) {
            let b = name.as_bytes();
            if b == b".wh..wh..opq" {
                meta.opaque = true;
            } else if let Some(hidden) = b.strip_prefix(b".wh.") {
                let key = rel_join(rel, OsStr::from_bytes(hidden));
                let key = if out.contains_key(&key)
                    || children.iter().any(|c: &OsString| c.as_bytes() == hidden)
                {
                    format!("{key} (+.wh. whiteout)")
                } else {
                    key
                };
                out.insert(key, Entry::Whiteout);
            } else {
                children.push(name);
            }
        }
    }
    out.insert(rel.to_string(), Entry::Node(meta));
    for name in children {
        let key = rel_join(rel, &name);
        if out.get(&key) == Some(&Entry::Whiteout) {
            // A real entry beside a `.wh.` file for the same name.
            out.remove(&key);
            out.insert(format!("{key} (+.wh. whiteout)"), Entry::Whiteout);
        }
        walk_upper(base, &key, out);
    }
}

/// What [`diff_snapshots`] compares besides the always-compared fields.
#[derive(Clone, Debug, Default)]
pub struct CmpOpts {
    /// Compare st_nlink of directories.
    pub dir_nlink: bool,
    /// Compare mtimes of exactly these paths.
    pub mtime_paths: BTreeSet<String>,
    /// Compare mtimes of every entry.
    pub all_mtimes: bool,
}

impl CmpOpts {
    pub fn with_dir_nlink() -> Self {
        CmpOpts {
            dir_nlink: true,
            ..Default::default()
        }
    }
}

fn normalized(path: &str, e: &Entry, opts: &CmpOpts) -> Entry {
    match e {
        Entry::Whiteout => Entry::Whiteout,
        Entry::Node(m) => {
            let mut m = m.clone();
            m.ino = (0, 0);
            if m.kind == Kind::Dir && !opts.dir_nlink {
                m.nlink = 0;
            }
            if !(opts.all_mtimes || opts.mtime_paths.contains(path)) {
                m.mtime = (0, 0);
            }
            Entry::Node(m)
        }
    }
}

/// Human-readable differences between two snapshots (empty = equal).
/// `a` is labelled `left`, `b` `right`.
pub fn diff_snapshots(a: &Snapshot, b: &Snapshot, opts: &CmpOpts) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(format!("{k:?}: only left: {}", fmt_entry(x))),
            (None, Some(y)) => out.push(format!("{k:?}: only right: {}", fmt_entry(y))),
            (Some(x), Some(y)) => {
                let (nx, ny) = (normalized(k, x, opts), normalized(k, y, opts));
                if nx != ny {
                    out.push(format!(
                        "{k:?}: left {} != right {}",
                        fmt_entry(&nx),
                        fmt_entry(&ny)
                    ));
                }
            }
            (None, None) => unreachable!(),
        }
    }
    out
}

fn fmt_entry(e: &Entry) -> String {
    match e {
        Entry::Whiteout => "WHITEOUT".to_string(),
        Entry::Node(m) => format!("{m}"),
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:04o} {}:{} nlink={}",
            self.kind, self.mode, self.uid, self.gid, self.nlink
        )?;
        if let Some(s) = self.size {
            write!(f, " size={s}")?;
        }
        if let Some(h) = self.hash {
            write!(f, " hash={h:016x}")?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {t:?}")?;
        }
        if let Some((ma, mi)) = self.rdev {
            write!(f, " rdev={ma}:{mi}")?;
        }
        if self.opaque {
            write!(f, " OPAQUE")?;
        }
        if self.mtime != (0, 0) {
            write!(f, " mtime={}.{:09}", self.mtime.0, self.mtime.1)?;
        }
        if !self.xattrs.is_empty() {
            let xs: Vec<String> = self
                .xattrs
                .iter()
                .map(|(k, v)| format!("{k}={:?}", String::from_utf8_lossy(v)))
                .collect();
            write!(f, " xattrs[{}]", xs.join(", "))?;
        }
        Ok(())
    }
}

pub fn fmt_snapshot(s: &Snapshot) -> String {
    let mut out = String::new();
    for (k, v) in s {
        out.push_str(&format!("  {:?}: {}\n", k, fmt_entry(v)));
    }
    out
}

/// Groups of paths (non-directories) that share one (st_dev, st_ino),
/// only groups with more than one member.
pub fn hardlink_groups(s: &Snapshot) -> BTreeSet<Vec<String>> {
    let mut by_ino: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for (k, e) in s {
        if let Entry::Node(m) = e {
            if m.kind != Kind::Dir {
                by_ino.entry(m.ino).or_default().push(k.clone());
            }
        }
    }
    by_ino.into_values().filter(|v| v.len() > 1).collect()
}

/// A recursive listing of a plain directory tree (names, kinds, sizes) used to
/// check that a failed command created nothing.
pub fn tree_listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(p: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(md) = fs::symlink_metadata(p) else {
            return;
        };
        out.push(format!("{rel} {:?} {}", kind_of(&md), md.len()));
        if md.is_dir() {
            for name in sorted_children(p) {
                walk(&p.join(&name), &rel_join(rel, &name), out);
            }
        }
    }
    walk(root, "", &mut out);
    out
}

/// Returns `Meta` of `rel` in `snap` or panics with the snapshot.
pub fn meta_of<'a>(snap: &'a Snapshot, rel: &str) -> &'a Meta {
    match snap.get(rel) {
        Some(Entry::Node(m)) => m,
        other => panic!(
            "{rel:?}: expected a node, got {other:?}\n{}",
            fmt_snapshot(snap)
        ),
    }
}

/// An upper snapshot made comparable with one of another copy of the same
/// stack: an origin record (a file handle of a lower inode) becomes the
/// lower path it names (`<origin lowerN:path>`). Rootless, the kernel
/// overlay cannot read file handles: it records origins empty and falls
/// back from an inode index to none, while stratafs keeps both; then only
/// an origin's presence compares, and the marks that come with an index
/// are normalised (see `normalise_rootless_pair`).
pub fn normalise_upper(s: &mut Snapshot, lowers: &[std::path::PathBuf]) {
    normalise_origins(s, lowers, !is_rootless());
}

/// [`normalise_upper`]; `by_path`: origins become the lower path they name
/// also rootless (for an upper that stratafs wrote, which records handles
/// rootless too, compared with one the kernel wrote as root).
pub fn normalise_origins(s: &mut Snapshot, lowers: &[std::path::PathBuf], by_path: bool) {
    let mut by_handle = BTreeMap::new();
    for (i, l) in lowers.iter().enumerate() {
        handles_below(l, &format!("lower{i}:"), &mut by_handle);
    }
    for e in s.values_mut() {
        let Entry::Node(m) = e else {
            continue;
        };
        for (n, v) in m.xattrs.iter_mut() {
            if !n.ends_with(".overlay.origin") {
                continue;
            }
            *v = if !by_path {
                b"<origin>".to_vec()
            } else if v.is_empty() {
                b"<origin unknown>".to_vec()
            } else if v.len() > 21 && v[1] == 0xfb {
                match by_handle.get(&(v[4], v[21..].to_vec())) {
                    Some(path) => format!("<origin {path}>").into_bytes(),
                    None => format!("<origin of no lower object: {v:02x?}>").into_bytes(),
                }
            } else {
                format!("<origin malformed: {v:02x?}>").into_bytes()
            };
        }
    }
}

/// Every object below `dir` (and `dir` itself) by its file handle.
fn handles_below(dir: &Path, label: &str, out: &mut BTreeMap<(u8, Vec<u8>), String>) {
    if let Some(h) = sys::name_to_handle(dir) {
        out.insert(h, label.to_string());
    }
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<fs::DirEntry> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = format!(
            "{label}{}{}",
            if label.ends_with(':') { "" } else { "/" },
            e.file_name().to_string_lossy()
        );
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            handles_below(&p, &rel, out);
        } else if let Some(h) = sys::name_to_handle(&p) {
            out.entry(h).or_insert(rel);
        }
    }
}

/// Rootless, the kernel overlay cannot decode file handles: it falls back
/// from an inode index to none and records origins empty, while stratafs
/// keeps both (docs/COMPAT.md). Then it writes no origin on the upper root,
/// does not mark a new directory in a merged one opaque, and drops an
/// impure mark stratafs still needs (its entries keep their lower inode
/// numbers across a remount). Normalise exactly those marks where only the
/// subject `s` has them (a no-op as root): the kernel's own marks must
/// still be there.
pub fn normalise_rootless_pair(s: &mut Snapshot, k: &Snapshot) {
    if !is_rootless() {
        return;
    }
    for (rel, e) in s.iter_mut() {
        let (Entry::Node(m), Some(Entry::Node(km))) = (e, k.get(rel)) else {
            continue;
        };
        if m.opaque && !km.opaque {
            m.opaque = false;
        }
        m.xattrs.retain(|n, _| {
            let extra = n.ends_with(".overlay.impure")
                || (rel.is_empty() && n.ends_with(".overlay.origin"));
            !extra || km.xattrs.contains_key(n)
        });
    }
}
