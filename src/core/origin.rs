//! Origins: tying a copied-up object to the lower object it came from, with
//! the kernel overlay's record (`format::origin`).
//!
//! Written at copy-up, from the lower object's file handle. Read back at
//! lookup and in listings, so that a copied-up object keeps showing its
//! lower original's inode number, also after a remount: the lower object at
//! the same name is the usual origin, and its handle confirms it; otherwise,
//! where permitted (root), the handle is opened directly. Records of
//! earlier stratafs versions (the merged view's inode number as text) are
//! still understood.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, Stat};

use super::obj::Obj;
use crate::format::origin::{self, legacy, Origin};
use crate::format::xattr_names::Ovl;
use crate::setup::stack::Stack;
use crate::sys::raw::{self, FileHandle};
use crate::sys::xattr;

/// Where an upper object came from, as far as its records tell.
#[derive(Debug)]
pub(crate) enum Source {
    /// This lower object (its attributes).
    Lower(Stat),
    /// The lower inode (device, inode number) the record's handle names,
    /// read from the handle where it could not be opened (rootless).
    Handle(u64, u64),
    /// An id recorded by an earlier version, in its numbering.
    LegacyId(u64),
    /// Nothing is known.
    Unknown,
}

/// The file handle of `obj` (the object itself, never a symlink's target).
pub(crate) fn handle_of(obj: &Obj) -> Option<FileHandle> {
    match obj {
        Obj::Fd(fd) => raw::name_to_handle(fd.as_fd(), b"").ok(),
        Obj::At { dir, name } => raw::name_to_handle(dir.as_fd(), name).ok(),
    }
}

/// The origin record for `obj`, an object of layer `layer`: the kernel's
/// bytes, or an empty record (origin unknown) where its filesystem gives no
/// handle.
pub(crate) fn record_of(stack: &Stack, layer: usize, obj: &Obj) -> Vec<u8> {
    let uuid = stack.layers.get(layer).map(|l| l.uuid).unwrap_or_default();
    handle_of(obj)
        .map(|h| origin::encode(&uuid, &h, 0))
        .unwrap_or_default()
}

/// Write `record` as the origin of the new copy `copy` (`open`: held open
/// for writing, not `O_PATH`). Best effort, as the kernel: a symlink or
/// device cannot carry a `user.` xattr.
pub(crate) fn write(stack: &Stack, copy: &OwnedFd, open: bool, record: &[u8]) {
    let name = stack.formats.ovl(Ovl::Origin);
    if let Err(e) = xattr::set_on(copy, open, name, record, rustix::fs::XattrFlags::empty()) {
        log::debug!("origin not recorded: {e}");
    }
}

/// The origin record of `obj` (either namespace), if it has one.
pub(crate) fn recorded(stack: &Stack, obj: &Obj) -> Option<Vec<u8>> {
    recorded_ns(stack, obj).map(|(v, _)| v)
}

/// `recorded`, and whether the record is in the trusted namespace.
fn recorded_ns(stack: &Stack, obj: &Obj) -> Option<(Vec<u8>, bool)> {
    let t = stack.formats.trusted();
    [t, !t]
        .into_iter()
        .find_map(|ns| obj.get_xattr(Ovl::Origin.name(ns)).ok().map(|v| (v, ns)))
}

/// Where the upper object `upper` came from. `candidates` are the lower
/// objects that may be its origin (the one at the same name), with their
/// layers; the first whose handle matches the record wins.
pub(crate) fn source(
    stack: &Stack,
    upper: &Obj,
    candidates: impl FnOnce() -> Vec<(usize, Obj)>,
) -> Source {
    source_ns(stack, upper, candidates).0
}

/// `source`, and the namespace its record was found in (trusted or not;
/// `None` without a record): the other records of a copy are written in
/// the same one.
pub(crate) fn source_ns(
    stack: &Stack,
    upper: &Obj,
    candidates: impl FnOnce() -> Vec<(usize, Obj)>,
) -> (Source, Option<bool>) {
    let Some((v, ns)) = recorded_ns(stack, upper) else {
        return (legacy_source(upper), None);
    };
    (source_of_record(stack, upper, &v, candidates), Some(ns))
}

fn source_of_record(
    stack: &Stack,
    upper: &Obj,
    v: &[u8],
    candidates: impl FnOnce() -> Vec<(usize, Obj)>,
) -> Source {
    let Origin::Known(r) = origin::decode(v) else {
        return legacy_source(upper);
    };
    for (layer, c) in candidates() {
        let same_fs = stack.layers.get(layer).is_some_and(|l| l.uuid == r.uuid);
        if same_fs && handle_of(&c).as_ref() == Some(&r.handle) {
            if let Ok(st) = c.stat() {
                return Source::Lower(st);
            }
        }
    }
    // Renamed since: open the handle itself (needs CAP_DAC_READ_SEARCH).
    for l in stack.lower_layers() {
        if l.uuid != r.uuid {
            continue;
        }
        match raw::open_by_handle(l.root.as_fd(), &r.handle) {
            Ok(fd) => {
                if let Ok(st) = rustix::fs::fstat(&fd) {
                    return Source::Lower(st);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => break,
            Err(_) => {}
        }
    }
    if !stack.open_handles {
        if let Some((dev, ino)) = handle_identity(stack, &r) {
            return Source::Handle(dev, ino);
        }
    }
    legacy_source(upper)
}

/// `FILEID_INO32_GEN` and `FILEID_INO32_GEN_PARENT`: the inode number and
/// generation first (then the parent's).
const FILEID_INO32_GEN: u8 = 1;
const FILEID_INO32_GEN_PARENT: u8 = 2;

/// The lower inode an origin record names, read from the handle itself:
/// where the lower layers of the record's filesystem write handles as
/// (inode number, generation) and share one device. Only for numbering (a
/// renamed copy keeps its lower original's number, as in the kernel
/// overlay, which opens the handle); the object is not reached so.
fn handle_identity(stack: &Stack, r: &origin::Record) -> Option<(u64, u64)> {
    if !matches!(r.handle.kind, FILEID_INO32_GEN | FILEID_INO32_GEN_PARENT) {
        return None;
    }
    let mut layers = stack.lower_layers().filter(|l| l.uuid == r.uuid);
    let first = layers.next()?;
    if !first.ino_handles || layers.any(|l| l.dev != first.dev || !l.ino_handles) {
        return None;
    }
    let ino = u32::from_ne_bytes(r.handle.bytes.get(..4)?.try_into().ok()?);
    Some((first.dev, u64::from(ino)))
}

/// Whether every origin record can be read without opening its handle
/// (`handle_identity`): all lower layers write inode-number handles.
fn handles_name_inodes(stack: &Stack) -> bool {
    stack.lower_layers().all(|l| l.ino_handles)
}

/// Whether a copy of stat `st` is numbered by its own inode although its
/// origin is known: where handles cannot be opened (rootless), only the
/// name that is also the lower object's can tell the origin of a copy, so
/// a file with several upper names (or an index entry) would get another
/// number through each of its other names. Every name gives the copy's own
/// inode number then. Not where the records can be read without opening
/// them (`handle_identity`): every name tells the same origin then.
pub(crate) fn numbered_by_copy(stack: &Stack, st: &Stat) -> bool {
    !stack.open_handles
        && !handles_name_inodes(stack)
        && FileType::from_raw_mode(st.st_mode) != FileType::Directory
        && st.st_nlink > 1
}

fn legacy_source(upper: &Obj) -> Source {
    legacy::NAMES
        .iter()
        .find_map(|n| upper.get_xattr(n).ok())
        .and_then(|v| legacy::decode(&v))
        .map_or(Source::Unknown, Source::LegacyId)
}
