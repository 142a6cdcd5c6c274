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
use crate::core::{origin as core_origin, resolve};
use crate::error::{describe, show_bytes, Errno};
use crate::format::metacopy;
use crate::format::nlink;
use crate::format::opaque::{self, OPAQUE_FILE, OPAQUE_FO};
use crate::format::origin::{self, legacy, Origin};
use crate::format::override_stat::{self, Override};
use crate::format::redirect::{self, Redirect};
use crate::format::whiteout::{self, Marker};
use crate::format::xattr_names::Ovl;
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

/// What is known of every layer when all lower layers are given.
pub(crate) struct LayerInfo {
    /// The uuid of each layer's filesystem, by layer number (0 = upper).
    pub(crate) uuids: Vec<[u8; 16]>,
    /// The device of each layer, by layer number.
    pub(crate) devs: Vec<u64>,
    /// The lower layers' roots, top first (where absolute redirects start).
    pub(crate) roots: Vec<LayerFd>,
}

/// Where in the upper a directory is.
#[derive(Clone, Copy)]
pub(crate) struct Place<'a> {
    /// The lower directories merged at its path (when lowers are known).
    pub(crate) chain: Option<&'a [LayerFd]>,
    /// An ancestor is opaque.
    pub(crate) below_opaque: bool,
    /// It is the upper root.
    pub(crate) is_root: bool,
    /// The layers (when all lowers are known).
    pub(crate) layers: Option<&'a LayerInfo>,
}

/// The directory being scanned.
struct Dir<'a> {
    fd: &'a Arc<OwnedFd>,
    rel: &'a Path,
    /// Its entries by name.
    by_name: HashMap<&'a [u8], &'a Stat>,
    at: Place<'a>,
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
        let chain = self.at.chain?;
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

/// The lower directories that merge with a directory whose redirect is
/// `r`, in a directory merged from `chain`, as the mount resolves them.
fn redirected_chain(chain: &[LayerFd], roots: &[LayerFd], r: &Redirect) -> Vec<LayerFd> {
    match r {
        Redirect::Relative(n) => child_chain(chain, n),
        Redirect::Absolute(parts) => parts.iter().fold(roots.to_vec(), |c, p| {
            if c.is_empty() {
                c
            } else {
                child_chain(&c, p)
            }
        }),
    }
}

/// The redirect record among `xattrs`, if any.
fn find_redirect(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Option<&(Vec<u8>, Vec<u8>)> {
    let x = Ovl::Redirect;
    xattrs
        .iter()
        .find(|(n, _)| n.as_slice() == x.name(true) || n.as_slice() == x.name(false))
}

/// A marker file that holds nothing: safe to remove or convert.
fn is_empty_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size == 0
}

/// The xattrs of `name` in `dir` (of `dir` itself when `name` is `None`)
/// that stratafs or the kernel overlay read, with their values.
fn known_xattrs(dir: &OwnedFd, name: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let list = match name {
        Some(n) => xattr::list_at(dir, n),
        None => xattr::list(dir),
    };
    let Ok(list) = list else {
        return Vec::new();
    };
    let known = |n: &[u8]| {
        override_stat::NAMES.contains(&n)
            || legacy::NAMES.contains(&n)
            || RECORDS
                .iter()
                .any(|x| x.name(true) == n || x.name(false) == n)
    };
    let mut out = Vec::new();
    for n in xattr::names(&list).filter(|n| known(n)) {
        let v = match name {
            Some(obj) => xattr::get_at(dir, obj, n),
            None => xattr::get(dir, n),
        };
        if let Ok(v) = v {
            out.push((n.to_vec(), v));
        }
    }
    out
}

/// The kernel records checked on upper entries.
const RECORDS: [Ovl; 5] = [
    Ovl::Origin,
    Ovl::Impure,
    Ovl::Nlink,
    Ovl::Redirect,
    Ovl::Metacopy,
];

/// Check one upper directory; returns its subdirectories to scan.
pub(crate) fn scan_dir(
    f: &mut Findings,
    fd: &Arc<OwnedFd>,
    rel: &Path,
    at: Place<'_>,
) -> Vec<Pending> {
    let Some(entries) = list(f, fd, Area::Upper, rel) else {
        return Vec::new();
    };
    let mut d = Dir {
        fd,
        rel,
        by_name: entries.iter().map(|(n, s)| (n.as_slice(), s)).collect(),
        at,
        redundant: false,
    };
    // The directory's own records (those of the others are checked as
    // entries of their parent).
    if at.is_root {
        let xattrs = known_xattrs(fd, None);
        check_overrides(f, &xattrs, rel);
        check_records(f, &d, None, true, &xattrs);
    }
    let opaque = check_opaque_markers(f, &d, at.is_root);
    d.redundant = at.below_opaque || (opaque && !at.is_root);

    let mut subdirs = Vec::new();
    for (name, st) in &entries {
        let path = join(rel, name);
        let mut redirect = None;
        if name.as_slice() != OPAQUE_FILE {
            let xattrs = known_xattrs(fd, Some(name));
            check_overrides(f, &xattrs, &path);
            if !whiteout::is_whiteout(st) && whiteout::marker(name).is_none() {
                check_records(f, &d, Some(name), is_dir(st), &xattrs);
            }
            redirect = find_redirect(&xattrs).and_then(|(_, v)| redirect::parse(v).ok());
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
            let child_chain = match (at.chain, &redirect, at.layers) {
                (Some(c), Some(r), Some(l)) if !d.redundant => {
                    Some(redirected_chain(c, &l.roots, r))
                }
                (Some(c), _, _) if !d.redundant => Some(child_chain(c, name)),
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

fn check_overrides(f: &mut Findings, xattrs: &[(Vec<u8>, Vec<u8>)], path: &Path) {
    for (xname, value) in xattrs {
        if !override_stat::NAMES.contains(&xname.as_slice()) {
            continue;
        }
        let shown = quote(xname);
        let (severity, what) = match Override::parse_checked(value) {
            Err(why) => (
                Severity::Error,
                format!(
                    "{shown}=\"{}\" is malformed ({why}): stratafs ignores it and shows the owner and mode on disk",
                    quote(value)
                ),
            ),
            Ok(_) if value.ends_with(&[0]) => (
                Severity::Warning,
                format!(
                    "{shown}=\"{}\" is not well-formed (it ends with a NUL byte): stratafs accepts it, other readers may not",
                    quote(value)
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

/// The kernel overlay's records of entry `name` of `d` (of `d` itself when
/// `None`) and origin records of earlier stratafs versions.
fn check_records(
    f: &mut Findings,
    d: &Dir<'_>,
    name: Option<&[u8]>,
    dir: bool,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) {
    let path = name.map_or_else(|| d.rel.to_path_buf(), |n| join(d.rel, n));
    let has = |x: Ovl| {
        xattrs
            .iter()
            .find(|(n, _)| n.as_slice() == x.name(true) || n.as_slice() == x.name(false))
    };
    let problem = |severity, kind, what| Problem {
        severity,
        area: Area::Upper,
        path: path.clone(),
        kind,
        what,
    };
    if let Some((xname, v)) = has(Ovl::Origin) {
        if origin::decode(v) == Origin::Invalid {
            let what = format!(
                "{}: not an origin record ({} bytes): stratafs and the kernel overlay ignore it (the kernel logs \"invalid origin\")",
                quote(xname),
                v.len()
            );
            let fix = repair::remove_xattr(d.fd.clone(), name.map(<[u8]>::to_vec), xname.clone());
            f.add_fix(
                problem(Severity::Warning, Kind::OverlayRecord, what),
                format!("remove {}", quote(xname)),
                fix,
            );
        }
    }
    if let Some((xname, v)) = has(Ovl::Impure) {
        let what = if !dir {
            Some("on a non-directory, where it means nothing")
        } else if v.as_slice() != b"y" {
            Some("not exactly \"y\": neither stratafs nor the kernel overlay reads it")
        } else {
            None
        };
        if let Some(what) = what {
            let what = format!("{}=\"{}\" {what}", quote(xname), quote(v));
            f.add(problem(Severity::Info, Kind::OverlayRecord, what));
        }
    }
    if let Some((xname, v)) = has(Ovl::Metacopy) {
        let redirect = has(Ovl::Redirect).map(|(_, r)| r.as_slice());
        for (severity, what) in metacopy_findings(d, name, dir, xname, v, redirect) {
            let what = format!("{} {what}", quote(xname));
            f.add(problem(severity, Kind::Metacopy, what));
        }
    }
    if let Some((xname, v)) = has(Ovl::Redirect).filter(|_| dir) {
        for (severity, what) in redirect_findings(d, name, xname, v) {
            let what = format!("{}=\"{}\" {what}", quote(xname), quote(v));
            f.add(problem(severity, Kind::Redirect, what));
        }
    }
    if let Some((xname, v)) = has(Ovl::Nlink) {
        let what = if dir {
            Some("on a directory, where it means nothing")
        } else if nlink::decode(v).is_none() {
            Some("is malformed: stratafs and the kernel overlay show the inode's own link count")
        } else {
            None
        };
        if let Some(what) = what {
            let what = format!("{}=\"{}\" {what}", quote(xname), quote(v));
            f.add(problem(Severity::Warning, Kind::OverlayRecord, what));
        }
    }
    let Some((lname, lv)) = xattrs
        .iter()
        .find(|(n, _)| legacy::NAMES.contains(&n.as_slice()))
    else {
        return;
    };
    if d.at.is_root && name.is_none() {
        return;
    }
    let shown = quote(lname);
    if has(Ovl::Origin).is_some() {
        let what = format!(
            "{shown}: origin record of an earlier stratafs beside the kernel's; stratafs reads the kernel's first"
        );
        f.add(problem(Severity::Info, Kind::LegacyOrigin, what));
        return;
    }
    let Some(name) = name else {
        return;
    };
    let converted = legacy_conversion(d, name, lv);
    let what = format!(
        "{shown}: origin record of an earlier stratafs, which only stratafs reads; the kernel overlay numbers this entry by its own inode"
    );
    match converted {
        Ok(record) => {
            let fix = repair::legacy_origin(d.fd.clone(), name.to_vec(), record);
            f.add_fix(
                problem(Severity::Info, Kind::LegacyOrigin, what),
                "write the kernel's origin record (overlay.origin) of the lower object it came from, and remove the old record".to_string(),
                fix,
            );
        }
        Err(why) => {
            let what = format!("{what} ({why})");
            f.add(problem(Severity::Info, Kind::LegacyOrigin, what));
        }
    }
}

/// The kernel origin record for an entry with the old record `value`: the
/// lower object at the same name, when it is the one the old record
/// names; else why there is none.
/// What is wrong with the metadata copy `name` in `d`, marked `xname`
/// with the value `v` and with the redirect record `redirect`: a marker
/// the mount refuses, one where it means nothing, a data file the lower
/// layers lack (searched as the mount searches, beneath the layer roots),
/// one a kernel mount cannot read.
fn metacopy_findings(
    d: &Dir<'_>,
    name: Option<&[u8]>,
    dir: bool,
    xname: &[u8],
    v: &[u8],
    redirect: Option<&[u8]>,
) -> Vec<(Severity, String)> {
    const FAILS: &str = "stratafs and the kernel overlay fail lookups of it (EIO)";
    let mut out = Vec::new();
    let Some(name) = name.filter(|_| !dir) else {
        out.push((
            Severity::Info,
            "on a directory, where it means nothing".to_string(),
        ));
        return out;
    };
    if let Err(why) = metacopy::check(v) {
        out.push((Severity::Warning, format!("is refused ({why}): {FAILS}")));
        return out;
    }
    let target = match redirect.map(redirect::parse) {
        None => Ok(None),
        Some(Ok(r)) => Ok(Some(r)),
        Some(Err(why)) => Err(why),
    };
    match (target, d.at.chain, d.at.layers) {
        (Err(why), _, _) => out.push((
            Severity::Warning,
            format!("with a refused redirect ({why}): {FAILS}"),
        )),
        (Ok(r), Some(chain), Some(layers)) => {
            let found = match &r {
                None => resolve::resolve(chain, name),
                Some(Redirect::Relative(n)) => resolve::resolve(chain, n),
                Some(Redirect::Absolute(parts)) => match parts.split_last() {
                    Some((last, dirs)) => {
                        let chain = dirs
                            .iter()
                            .fold(layers.roots.clone(), |c, p| child_chain(&c, p));
                        resolve::resolve(&chain, last)
                    }
                    None => Ok(None),
                },
            };
            match found {
                Ok(Some(f)) if f.kind() == FileType::RegularFile => {}
                Ok(Some(_)) => out.push((
                    Severity::Warning,
                    format!("its data source in the lower layers is not a regular file: {FAILS}"),
                )),
                _ => out.push((
                    Severity::Warning,
                    format!("its data file is missing from the lower layers: {FAILS}"),
                )),
            }
        }
        _ => {}
    }
    if xname == Ovl::Metacopy.name(false) {
        out.push((
            Severity::Info,
            "is read by stratafs only (with metacopy=on): a kernel overlay refuses metacopy=on with userxattr and such files without it (EPERM)"
                .to_string(),
        ));
    }
    out
}

/// What is wrong with the redirect record `v` (named `xname`) of the
/// directory `name` in `d`: a value the mount refuses, a target the lower
/// layers do not have, one that points at its own path, one a kernel
/// mount cannot follow. (A file's record is checked with its metadata
/// copy; a copied file keeps it, as on the kernel.)
fn redirect_findings(
    d: &Dir<'_>,
    name: Option<&[u8]>,
    xname: &[u8],
    v: &[u8],
) -> Vec<(Severity, String)> {
    let mut out = Vec::new();
    let r = match redirect::parse(v) {
        Err(why) => {
            out.push((
                Severity::Warning,
                format!("is refused ({why}): stratafs and the kernel overlay fail lookups of it (EINVAL)"),
            ));
            return out;
        }
        Ok(r) => r,
    };
    if let (Some(name), Some(chain), Some(layers)) = (name, d.at.chain, d.at.layers) {
        if redirected_chain(chain, &layers.roots, &r).is_empty() {
            out.push((
                Severity::Warning,
                "names no directory in the lower layers: only the upper part shows".to_string(),
            ));
        }
        let own: Vec<&[u8]> = d
            .rel
            .iter()
            .filter(|c| *c != ".")
            .map(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::as_bytes)
            .chain(std::iter::once(name))
            .collect();
        let same = match &r {
            Redirect::Relative(n) => n.as_slice() == name,
            Redirect::Absolute(p) => p.iter().map(Vec::as_slice).eq(own.iter().copied()),
        };
        if same {
            out.push((
                Severity::Info,
                "points at the directory's own path (as after a rename back): harmless".to_string(),
            ));
        }
    }
    if xname == Ovl::Redirect.name(false) {
        out.push((
            Severity::Info,
            "is followed by stratafs only: a kernel overlay mount with userxattr refuses redirects (EPERM)"
                .to_string(),
        ));
    }
    out
}

fn legacy_conversion(d: &Dir<'_>, name: &[u8], value: &[u8]) -> Result<Vec<u8>, &'static str> {
    let (Some(chain), Some(layers)) = (d.at.chain, d.at.layers) else {
        return Err("give the lower layers to convert it");
    };
    let id = legacy::decode(value).ok_or("not an id")?;
    let (dev, ino) = legacy::identity(id, &layers.devs).ok_or("an id of no layer")?;
    let found = match resolve::resolve(chain, name) {
        Ok(Some(found)) => found,
        _ => return Err("no lower object at this path; the old record stays"),
    };
    if (found.stat.st_dev, found.stat.st_ino) != (dev, ino) {
        return Err("the lower object at this path is not the one it names; the old record stays");
    }
    let handle = core_origin::handle_of(&found.top.obj)
        .ok_or("the lower filesystem gives no file handles; the old record stays")?;
    let uuid = layers
        .uuids
        .get(found.top.layer)
        .copied()
        .unwrap_or_default();
    Ok(origin::encode(&uuid, &handle, 0))
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
        let whose = if d.at.below_opaque {
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
