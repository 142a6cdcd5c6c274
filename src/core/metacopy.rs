//! Metadata-only copies (`metacopy=on`): an upper regular file marked
//! `overlay.metacopy` holds the metadata; its data is the lower file found
//! at its name in the parent's lower directories, or where its
//! `overlay.redirect` says (a relative name in the same parent, an
//! absolute path from the lower layers' roots), as the kernel overlay
//! finds it. The data file is the first regular file there that is not
//! itself a metadata copy (one passed on the way that has a redirect of its
//! own sends the search on from there); a whiteout, a directory, a missing
//! file or an
//! opaque directory on the path ends the search with `EIO` (logged). A
//! metadata copy in a lower layer (an earlier upper used as a lower) is
//! followed the same way, in the layers below its own, when the mount has
//! `metacopy=on` (the kernel checks every lower file's marker; with
//! `metacopy=off` stratafs does not, to save a system call per lower
//! file, and such a file shows its sparse content). Paths
//! are walked one name at a time beneath the lower layers' root
//! descriptors, never following a symlink, and only downwards through the
//! layers: a record cannot lead outside them or in a loop.

use rustix::fs::{FileType, Stat};

use super::obj::{LayerFd, LayerObj, Obj};
use super::resolve::{self, Hit};
use crate::error::{show_bytes, Errno, Result};
use crate::format::metacopy;
use crate::format::redirect::{self, Redirect};
use crate::format::xattr_names::Ovl;
use crate::setup::stack::Stack;

/// The record `x` of `obj`, in the namespace `ns` (trusted or not) where
/// that is known, else in the namespace written first, then the other;
/// `None` when it has none.
fn record(stack: &Stack, obj: &Obj, x: Ovl, ns: Option<bool>) -> Result<Option<Vec<u8>>> {
    let t = ns.unwrap_or_else(|| stack.formats.trusted());
    let both = [t, !t];
    for ns in &both[..if ns.is_some() { 1 } else { 2 }] {
        let ns = *ns;
        match obj.get_xattr(x.name(ns)) {
            Ok(v) => return Ok(Some(v)),
            Err(Errno::NODATA) | Err(Errno::NOTSUP) | Err(Errno::PERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Whether the regular file `obj` carries a metacopy marker (checked:
/// a value the kernel refuses is `EIO`, logged with `what`).
pub(crate) fn is_marked(stack: &Stack, obj: &Obj, what: &[u8]) -> Result<bool> {
    marked_in(stack, obj, what, None)
}

/// `is_marked`, looking in the namespace `ns` only where that is known.
fn marked_in(stack: &Stack, obj: &Obj, what: &[u8], ns: Option<bool>) -> Result<bool> {
    let Some(v) = record(stack, obj, Ovl::Metacopy, ns)? else {
        return Ok(false);
    };
    match metacopy::check(&v) {
        Ok(()) => Ok(true),
        Err(why) => {
            log::warn!(
                "invalid metacopy marker on {} ({} bytes): {why}",
                show_bytes(what),
                v.len()
            );
            Err(Errno::IO)
        }
    }
}

/// The redirect of the metadata copy `obj` (named `what`), in the
/// namespace `ns` where known; a refused one is `EIO` (logged).
fn redirect_in(
    stack: &Stack,
    obj: &Obj,
    what: &[u8],
    ns: Option<bool>,
) -> Result<Option<Redirect>> {
    let Some(v) = record(stack, obj, Ovl::Redirect, ns)? else {
        return Ok(None);
    };
    match redirect::parse(&v) {
        Ok(r) => Ok(Some(r)),
        Err(why) => {
            log::warn!(
                "invalid redirect {} on metacopy file {}: {why}; not followed",
                show_bytes(&v[..v.len().min(300)]),
                show_bytes(what)
            );
            Err(Errno::IO)
        }
    }
}

/// Where the data of the metadata copy `upper` (named `name` in a
/// directory whose lower directories are `lowers`) is searched.
enum Target {
    Name(Vec<u8>),
    Path(Vec<Vec<u8>>),
}

/// If the regular file `upper` at `name` is a metadata copy: its data file
/// and that file's attributes. `upper` is an upper file or a file of a
/// lower layer (an earlier upper); its data is searched in the layers from
/// `from` down: in `lowers`, the lower directories of its parent from that
/// layer on (top first), or from the layers' roots for an absolute
/// redirect. `ns` is the namespace of its records where known (one system
/// call for a file that is not a metadata copy). With `metacopy=off` a
/// metadata copy is refused (`EPERM`), as the kernel refuses to follow
/// one.
pub(crate) fn data_of(
    stack: &Stack,
    lowers: &[LayerFd],
    name: &[u8],
    upper: &Obj,
    ns: Option<bool>,
    from: usize,
) -> Result<Option<(Stat, LayerObj)>> {
    if !marked_in(stack, upper, name, ns)? {
        return Ok(None);
    }
    if !stack.metacopy {
        log::warn!(
            "refusing to follow the metacopy file {} (metacopy=off)",
            show_bytes(name)
        );
        return Err(Errno::PERM);
    }
    let target = match redirect_in(stack, upper, name, ns)? {
        None => Target::Name(name.to_vec()),
        Some(Redirect::Relative(n)) => Target::Name(n),
        Some(Redirect::Absolute(parts)) => Target::Path(parts),
    };
    let found = search(stack, lowers, target, from, name)?;
    if found.is_none() {
        log::warn!(
            "metacopy file {}: no lower data file found",
            show_bytes(name)
        );
        return Err(Errno::IO);
    }
    Ok(found)
}

/// What one layer's hit says: the data file, go on below (past a metadata
/// copy of a lower layer, given), or stop.
enum Step {
    Data(Stat, LayerObj),
    Below(Option<LayerObj>),
    Stop,
}

fn step(stack: &Stack, hit: Hit, what: &[u8]) -> Result<Step> {
    Ok(match hit {
        Hit::Missing => Step::Below(None),
        Hit::End | Hit::Dir(..) => Step::Stop,
        Hit::Object(st, obj) => {
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                log::warn!(
                    "metacopy file {}: the data source is not a regular file",
                    show_bytes(what)
                );
                return Ok(Step::Stop);
            }
            // A metadata copy in a lower layer (an earlier upper): its data
            // is further down (none below the bottom layer: no data found,
            // as on the kernel).
            if is_marked(stack, &obj.obj, what)? {
                Step::Below(Some(obj))
            } else {
                Step::Data(st, obj)
            }
        }
    })
}

/// The data file at `target`: a name in the lower directories `lowers`
/// (top first), or a path from the roots of the layers from `first` down.
/// A metadata copy passed on the way that has a redirect of its own sends
/// the search on where that says, in the layers below it, as the kernel
/// follows each layer's record.
fn search(
    stack: &Stack,
    lowers: &[LayerFd],
    mut target: Target,
    first: usize,
    what: &[u8],
) -> Result<Option<(Stat, LayerObj)>> {
    let bottom = stack.layers.len().saturating_sub(1);
    // The next entry of `lowers` (by name), the next layer (by path: after
    // a switch from names, the one below the record that switched).
    let (mut next, mut layer) = (0, first);
    loop {
        let (hit, opaque_on_path) = match &target {
            Target::Name(n) => {
                let Some(l) = lowers.get(next) else { break };
                next += 1;
                layer = l.layer + 1;
                (resolve::hit_in(l, n, next < lowers.len())?, false)
            }
            Target::Path(parts) => {
                if layer > bottom {
                    break;
                }
                layer += 1;
                resolve::walk(stack, layer - 1, parts)?
            }
        };
        let passed = match step(stack, hit, what)? {
            Step::Data(st, obj) => return Ok(Some((st, obj))),
            Step::Stop => break,
            Step::Below(passed) => passed,
        };
        let redirect = match &passed {
            Some(obj) => redirect_in(stack, &obj.obj, what, None)?,
            None => None,
        };
        target = match (redirect, target) {
            (Some(Redirect::Absolute(parts)), _) => Target::Path(parts),
            // An opaque directory on the path: nothing below counts.
            (_, Target::Path(_)) if opaque_on_path => break,
            (None, t) => t,
            (Some(Redirect::Relative(n)), Target::Name(_)) => Target::Name(n),
            (Some(Redirect::Relative(n)), Target::Path(mut parts)) => {
                parts.pop();
                parts.push(n);
                Target::Path(parts)
            }
        };
    }
    Ok(None)
}
