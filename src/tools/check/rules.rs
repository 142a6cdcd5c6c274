//! What is checked in each upper directory: its own opaque markers, the
//! owner/mode overrides of its entries, and its whiteouts of both forms.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, Stat};

use super::repair;
use super::report::{Area, Findings, Kind, Problem, Severity};
use crate::core::obj::LayerFd;
use crate::core::resolve;
use crate::error::{describe, show_bytes, Errno};
use crate::format::opaque::{self, OPAQUE_FILE, OPAQUE_FO};
use crate::format::override_stat::{self, Override};
use crate::format::whiteout::{self, Marker};
use crate::sys::fd;
use crate::sys::xattr;

/// A word for the type of object `st` is.
pub(crate) fn kind_name(st: &Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice if whiteout::is_whiteout(st) => "whiteout (char 0/0)",
        FileType::CharacterDevice => "char device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "object",
    }
}

/// Whether `st` is a directory.
pub(crate) fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// `rel/name` (`name` alone at the top).
pub(crate) fn join(rel: &Path, name: &[u8]) -> PathBuf {
    let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
    if rel.as_os_str().is_empty() || rel == Path::new(".") {
        PathBuf::from(name)
    } else {
        rel.join(name)
    }
}

/// A name for messages.
fn quote(b: &[u8]) -> String {
    show_bytes(b)
}

/// Names and stats of the entries of `dir` (no `.`, `..`), sorted;
/// `None` (with a finding) when it cannot be read.
pub(crate) fn list(
    f: &mut Findings,
    dir: &OwnedFd,
    area: Area,
    rel: &Path,
) -> Option<Vec<(Vec<u8>, Stat)>> {
    let res = (|| -> Result<Vec<(Vec<u8>, Stat)>, Errno> {
        let rd = fd::open_dir_read(dir)?;
        let mut out = Vec::new();
        for ent in rustix::fs::Dir::new(rd)? {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            match fd::stat_at(dir, n) {
                Ok(st) => out.push((n.to_vec(), st)),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    })();
    match res {
        Ok(v) => Some(v),
        Err(e) => {
            f.add(Problem {
                severity: Severity::Error,
                area,
                path: rel.to_path_buf(),
                kind: Kind::Unreadable,
                what: format!("cannot list the directory: {}", describe(e)),
            });
            None
        }
    }
}

/// A directory of the upper still to be scanned.
pub(crate) struct Pending {
    pub(crate) parent: Arc<OwnedFd>,
    pub(crate) name: Vec<u8>,
    pub(crate) rel: PathBuf,
    /// Lower directories merged at this path (when lowers are known).
    pub(crate) chain: Option<Vec<LayerFd>>,
    /// An ancestor is opaque: nothing below can be hidden.
    pub(crate) below_opaque: bool,
}

/// The directory being scanned.
struct Dir<'a> {
    fd: &'a Arc<OwnedFd>,
    rel: &'a Path,
    /// Its entries by name.
    by_name: HashMap<&'a [u8], &'a Stat>,
    /// The lower directories merged at its path (when lowers are known).
    chain: Option<&'a [LayerFd]>,
    /// An ancestor is opaque.
    below_opaque: bool,
    /// Nothing below this directory can be hidden by a whiteout in it.
    redundant: bool,
}

impl Dir<'_> {
    fn problem(&self, severity: Severity, path: PathBuf, kind: Kind, what: String) -> Problem {
        Problem {
            severity,
            area: Area::Upper,
            path,
            kind,
            what,
        }
    }

    /// Whether `name` shows in the lower layers (unknown counts as yes: a
    /// whiteout is then assumed to be needed).
    fn visible_below(&self, name: &[u8]) -> Option<bool> {
        let chain = self.chain?;
        Some(resolve::exists(chain, name).unwrap_or(true))
    }
}

/// The lower directories that merge with directory `name` of a directory
/// merged from `chain`, as the mount resolves them.
fn child_chain(chain: &[LayerFd], name: &[u8]) -> Vec<LayerFd> {
    match resolve::resolve(chain, name) {
        Ok(Some(f)) if f.kind() == FileType::Directory => f.dir_layers(),
        _ => Vec::new(),
    }
}

/// A marker file that holds nothing: safe to remove or convert.
fn is_empty_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size == 0
}

/// The override_stat xattrs of `name` in `dir` (or of `dir` itself when
/// `name` is `None`) and their values.
fn override_xattrs(dir: &OwnedFd, name: Option<&[u8]>) -> Vec<(&'static [u8], Vec<u8>)> {
    let list = match name {
        Some(n) => xattr::list_at(dir, n),
        None => xattr::list(dir),
    };
    let Ok(list) = list else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in xattr::names(&list) {
        let Some(known) = override_stat::NAMES.into_iter().find(|k| *k == n) else {
            continue;
        };
        let v = match name {
            Some(obj) => xattr::get_at(dir, obj, known),
            None => xattr::get(dir, known),
        };
        if let Ok(v) = v {
            out.push((known, v));
        }
    }
    out
}

/// Check one upper directory; returns its subdirectories to scan.
pub(crate) fn scan_dir(
    f: &mut Findings,
    fd: &Arc<OwnedFd>,
    rel: &Path,
    chain: Option<&[LayerFd]>,
    below_opaque: bool,
    is_root: bool,
) -> Vec<Pending> {
    let Some(entries) = list(f, fd, Area::Upper, rel) else {
        return Vec::new();
    };
    // The directory's own markers (overrides of the others are checked
    // as entries of their parent).
    if is_root {
        check_overrides(f, fd, None, rel);
    }
    let mut d = Dir {
        fd,
        rel,
        by_name: entries.iter().map(|(n, s)| (n.as_slice(), s)).collect(),
        chain,
        below_opaque,
        redundant: false,
    };
    let opaque = check_opaque_markers(f, &d, is_root);
    d.redundant = below_opaque || (opaque && !is_root);

    let mut subdirs = Vec::new();
    for (name, st) in &entries {
        let path = join(rel, name);
        if name.as_slice() != OPAQUE_FILE {
            check_overrides(f, fd, Some(name), &path);
        }
        match whiteout::marker(name) {
            Some(Marker::Opaque) => continue,
            Some(m) => {
                check_wh_entry(f, &d, name, m, st);
                continue;
            }
            None => {}
        }
        if whiteout::is_whiteout(st) {
            check_char_whiteout(f, &d, name);
            continue;
        }
        if is_dir(st) {
            let child_chain = match chain {
                Some(c) if !d.redundant => Some(child_chain(c, name)),
                _ => None,
            };
            subdirs.push(Pending {
                parent: fd.clone(),
                name: name.clone(),
                rel: path,
                chain: child_chain,
                below_opaque: d.redundant,
            });
        }
    }
    subdirs
}

/// The directory's opaque markers; returns whether it is opaque.
fn check_opaque_markers(f: &mut Findings, d: &Dir<'_>, is_root: bool) -> bool {
    let xattrs = opaque::opaque_xattrs(&**d.fd).unwrap_or_default();
    let mut opaque_y = false;
    let mut kernel_opaque = false;
    for (name, value) in &xattrs {
        let shown = quote(name);
        if opaque::means_opaque(value) {
            opaque_y = true;
            kernel_opaque |= *name != OPAQUE_FO;
            continue;
        }
        let what = if value.as_slice() == b"x" {
            format!("{shown}=x marks a directory with xwhiteouts, which only means something in a lower layer; here it is not opaque")
        } else {
            format!(
                "{shown}=\"{}\": not exactly \"y\", so neither stratafs nor the kernel overlay treats the directory as opaque",
                quote(value)
            )
        };
        let p = d.problem(
            Severity::Warning,
            d.rel.to_path_buf(),
            Kind::OpaqueValue,
            what,
        );
        f.add(p);
    }
    let opq_file = d.by_name.get(OPAQUE_FILE).copied();
    let opaque = opaque_y || opq_file.is_some();
    if is_root && opaque {
        let what = "opaque marker on the upper root: no reader honours it".to_string();
        let p = d.problem(
            Severity::Info,
            d.rel.to_path_buf(),
            Kind::OpaqueOnRoot,
            what,
        );
        f.add(p);
    } else if opaque && !kernel_opaque {
        match opq_file {
            Some(st) if is_empty_file(st) => f.add_fix(
                d.problem(
                    Severity::Info,
                    join(d.rel, OPAQUE_FILE),
                    Kind::OpaqueNotKernelReadable,
                    "opaque marker file: stratafs and fuse-overlayfs read it, the kernel overlay does not".to_string(),
                ),
                "mark the directory opaque by xattr (trusted.overlay.opaque=y, or user.overlay.opaque=y where trusted xattrs are not permitted) and remove the file".to_string(),
                repair::opaque_file_to_xattr(d.fd.clone()),
            ),
            Some(st) => {
                f.add(d.problem(
                    Severity::Warning,
                    join(d.rel, OPAQUE_FILE),
                    Kind::WhEntryWithData,
                    format!("opaque marker that is a {} with data: stratafs reads it as opaque, the kernel overlay does not", kind_name(st)),
                ));
            }
            None => f.add_fix(
                d.problem(
                    Severity::Info,
                    d.rel.to_path_buf(),
                    Kind::OpaqueNotKernelReadable,
                    "opaque by user.fuseoverlayfs.opaque only: the kernel overlay does not read it".to_string(),
                ),
                "add trusted.overlay.opaque=y (or user.overlay.opaque=y where trusted xattrs are not permitted)".to_string(),
                repair::add_opaque_xattr(d.fd.clone()),
            ),
        };
    } else if opq_file.is_some_and(|st| kernel_opaque && is_empty_file(st)) {
        f.add_fix(
            d.problem(
                Severity::Info,
                join(d.rel, OPAQUE_FILE),
                Kind::OpaqueNotKernelReadable,
                "opaque marker file beside an opaque xattr (redundant; the kernel overlay does not read it)".to_string(),
            ),
            "remove the file".to_string(),
            repair::remove(d.fd.clone(), OPAQUE_FILE.to_vec()),
        );
    }
    opaque
}

fn check_overrides(f: &mut Findings, dir: &Arc<OwnedFd>, name: Option<&[u8]>, path: &Path) {
    for (xname, value) in override_xattrs(dir, name) {
        let shown = quote(xname);
        let (severity, what) = match Override::parse_checked(&value) {
            Err(why) => (
                Severity::Error,
                format!(
                    "{shown}=\"{}\" is malformed ({why}): stratafs ignores it and shows the owner and mode on disk",
                    quote(&value)
                ),
            ),
            Ok(_) if value.ends_with(&[0]) => (
                Severity::Warning,
                format!(
                    "{shown}=\"{}\" is not well-formed (it ends with a NUL byte): stratafs accepts it, other readers may not",
                    quote(&value)
                ),
            ),
            Ok(_) => continue,
        };
        f.add(Problem {
            severity,
            area: Area::Upper,
            path: path.to_path_buf(),
            kind: Kind::OverrideStat,
            what,
        });
    }
}

/// A `.wh.` entry (not the opaque marker).
fn check_wh_entry(f: &mut Findings, d: &Dir<'_>, name: &[u8], marker: Marker<'_>, st: &Stat) {
    let path = join(d.rel, name);
    let shown = quote(name);
    if !is_empty_file(st) {
        let data = if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
            " with data"
        } else {
            ""
        };
        let what = format!(
            "{shown} is a {}{data}: stratafs never shows it and reads it as a whiteout, the kernel overlay shows it as an entry",
            kind_name(st)
        );
        f.add(d.problem(Severity::Warning, path, Kind::WhEntryWithData, what));
        return;
    }
    let Marker::Hides(target) = marker else {
        f.add_fix(
            d.problem(
                Severity::Warning,
                path,
                Kind::StrayMarker,
                format!("{shown} is a whiteout file for no valid name: it hides nothing"),
            ),
            format!("remove {shown}"),
            repair::remove(d.fd.clone(), name.to_vec()),
        );
        return;
    };
    let t = quote(target);
    match d.by_name.get(target) {
        Some(other) if whiteout::is_whiteout(other) => {
            f.add_fix(
                d.problem(
                    Severity::Warning,
                    path,
                    Kind::DuplicateWhiteout,
                    format!("whiteout file beside the char 0/0 whiteout \"{t}\" (two markers for one name)"),
                ),
                format!("remove {shown} (the char whiteout stays)"),
                repair::remove(d.fd.clone(), name.to_vec()),
            );
            return;
        }
        Some(other) => {
            let k = kind_name(other);
            f.add_fix(
                d.problem(
                    Severity::Error,
                    path,
                    Kind::WhiteoutBesideEntry,
                    format!("whiteout file beside the real {k} \"{t}\": stratafs shows the {k}, fuse-overlayfs may hide it"),
                ),
                format!("remove {shown} (the real entry wins, as stratafs reads it)"),
                repair::remove(d.fd.clone(), name.to_vec()),
            );
            return;
        }
        None => {}
    }
    if d.redundant {
        f.add_fix(
            d.problem(
                Severity::Warning,
                path,
                Kind::WhiteoutInOpaqueDir,
                format!("whiteout of \"{t}\" inside an opaque directory: nothing below can show, it hides nothing"),
            ),
            format!("remove {shown}"),
            repair::remove(d.fd.clone(), name.to_vec()),
        );
        return;
    }
    if d.visible_below(target) == Some(false) {
        let what = format!("whiteout of \"{t}\" hides nothing in the lower layers");
        f.add(d.problem(
            Severity::Info,
            path.clone(),
            Kind::WhiteoutHidesNothing,
            what,
        ));
    }
    f.add_fix(
        d.problem(
            Severity::Info,
            path,
            Kind::WhFileNotKernelReadable,
            format!("whiteout file for \"{t}\": stratafs and fuse-overlayfs read it, the kernel overlay only reads char 0/0 whiteouts"),
        ),
        format!("replace it by a char 0/0 whiteout \"{t}\" (where mknod is permitted)"),
        repair::wh_file_to_char(d.fd.clone(), name.to_vec(), target.to_vec()),
    );
}

fn check_char_whiteout(f: &mut Findings, d: &Dir<'_>, name: &[u8]) {
    let path = join(d.rel, name);
    if d.redundant {
        let whose = if d.below_opaque {
            "below an opaque directory"
        } else {
            "inside an opaque directory"
        };
        f.add_fix(
            d.problem(
                Severity::Warning,
                path,
                Kind::WhiteoutInOpaqueDir,
                format!("whiteout {whose}: nothing below can show, it hides nothing"),
            ),
            format!("remove the whiteout {}", quote(name)),
            repair::remove(d.fd.clone(), name.to_vec()),
        );
        return;
    }
    if d.visible_below(name) == Some(false) {
        let what = "whiteout hides nothing in the lower layers".to_string();
        f.add(d.problem(Severity::Info, path, Kind::WhiteoutHidesNothing, what));
    }
}
