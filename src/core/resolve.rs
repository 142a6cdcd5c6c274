//! Top-down name resolution over the layers of a merged directory.
//!
//! For a name in a directory merged from layer dirs `D0..Dn` (top first):
//! the first layer that has the name decides. A whiteout (char 0/0 there,
//! or `.wh.NAME` beside it in a layer that lacks the name) ends the search
//! with "no such entry". A non-directory hides everything below; a
//! directory merges with same-named directories below until one of them is
//! opaque or a lower layer has a non-directory or a whiteout there.
//!
//! Pure functions over layer directories: no node, no lock.

use std::sync::Arc;

use rustix::fs::{FileType, Stat};

use super::dirindex::DirIndex;
use super::names::Name;
use super::obj::{LayerFd, LayerObj, Obj};
use crate::error::{show_bytes, Errno, Result};
use crate::format::redirect::{self, Redirect};
use crate::format::xattr_names::Ovl;
use crate::format::{opaque, whiteout};
use crate::setup::stack::Stack;
use crate::sys::{fd, xattr};

/// What a name resolves to.
#[derive(Debug)]
pub(crate) struct Found {
    /// Stat of the topmost object.
    pub(crate) stat: Stat,
    /// The topmost object (held open if it is a directory, else by name).
    pub(crate) top: LayerObj,
    /// For directories: the same-named directories merged below, top first.
    pub(crate) below: Vec<LayerFd>,
}

impl Found {
    /// File type of the result.
    pub(crate) fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    /// For a directory: every layer directory merged into it, top first.
    pub(crate) fn dir_layers(&self) -> Vec<LayerFd> {
        self.top
            .as_dir()
            .into_iter()
            .chain(self.below.iter().cloned())
            .collect()
    }
}

/// Resolve `name` over `layers` (top first), not following redirects.
pub(crate) fn resolve(layers: &[LayerFd], name: &[u8]) -> Result<Option<Found>> {
    resolve_in(layers, name, None)
}

/// Where the lower layers are searched for a directory's lower parts.
enum Target {
    /// This name in the parent's layer directories.
    Name(Vec<u8>),
    /// This path from the root of each layer below `after`.
    Path { parts: Vec<Vec<u8>>, after: usize },
}

/// What one layer holds at the target.
pub(crate) enum Hit {
    Missing,
    /// A whiteout, a non-directory below a directory, or an opaque
    /// ancestor on a path: nothing further down counts.
    End,
    Object(Stat, LayerObj),
    Dir(Stat, LayerFd),
}

/// Resolve `name` over `layers` (top first). With `stack`, a directory's
/// `overlay.redirect` (`redirect_dir=`) says where its lower parts are:
/// a relative one names them in the parent's lower directories, an
/// absolute one is a path from the root of every layer below the record.
/// Paths are walked one name at a time beneath the layer roots, never
/// following a symlink; a record that could leave a layer root is refused
/// (`EINVAL`, logged), and with `redirect_dir=nofollow` a redirect that
/// would be needed is refused (`EPERM`), as the kernel overlay does.
pub(crate) fn resolve_in(
    layers: &[LayerFd],
    name: &[u8],
    stack: Option<&Stack>,
) -> Result<Option<Found>> {
    let mut found: Option<Found> = None;
    let mut target = Target::Name(name.to_vec());
    let bottom = stack.map_or(0, |s| s.layers.len().saturating_sub(1));
    let mut next = 0;
    let mut stop_after = false;
    loop {
        let (hit, more_below, layer) = match &mut target {
            Target::Name(n) => {
                let Some(l) = layers.get(next) else { break };
                next += 1;
                let more = next < layers.len();
                (hit_in(l, n, more)?, more, l.layer)
            }
            Target::Path { parts, after } => {
                let (Some(s), layer) = (stack, *after + 1) else {
                    break;
                };
                if layer > bottom {
                    break;
                }
                *after = layer;
                let (hit, opaque_on_path) = walk(s, layer, parts)?;
                // An opaque directory on the path: no layer below counts,
                // unless the directory found redirects again.
                stop_after = opaque_on_path;
                (hit, layer < bottom && !opaque_on_path, layer)
            }
        };
        let (st, here) = match hit {
            Hit::Missing => continue,
            Hit::End => break,
            Hit::Object(st, obj) => {
                if found.is_none() {
                    found = Some(Found {
                        stat: st,
                        top: obj,
                        below: Vec::new(),
                    });
                }
                // A non-directory hides everything below it.
                break;
            }
            Hit::Dir(st, here) => (st, here),
        };
        let redirect = match stack {
            // Without following, a redirect matters (and is refused) only
            // where the parent has layers below, as on the kernel.
            Some(s) if layer < bottom && (more_below || s.redirect.follow()) => {
                read_redirect(s, &here, name)?
            }
            _ => None,
        };
        let absolute = matches!(redirect, Some(Redirect::Absolute(_)));
        let is_opaque = (more_below || absolute) && opaque::is_opaque(&*here.fd)?;
        match &mut found {
            None => {
                found = Some(Found {
                    stat: st,
                    top: LayerObj::from(here),
                    below: Vec::new(),
                })
            }
            Some(f) => f.below.push(here),
        }
        if is_opaque {
            break;
        }
        let Some((r, s)) = redirect.zip(stack) else {
            if stop_after {
                break;
            }
            continue;
        };
        if stop_after && !matches!(r, Redirect::Absolute(_)) {
            break;
        }
        if !s.redirect.follow() {
            log::warn!(
                "refusing to follow the redirect of directory {} (redirect_dir=nofollow)",
                show_bytes(name)
            );
            return Err(Errno::PERM);
        }
        target = match (r, &target) {
            (Redirect::Absolute(parts), _) => Target::Path {
                parts,
                after: layer,
            },
            (Redirect::Relative(n), Target::Name(_)) => Target::Name(n),
            (Redirect::Relative(n), Target::Path { parts, .. }) => {
                let mut parts = parts.clone();
                parts.pop();
                parts.push(n);
                Target::Path {
                    parts,
                    after: layer,
                }
            }
        };
    }
    Ok(found)
}

/// What the layer directory `l` holds at `name`; `more_below` when the
/// parent has layers below `l` (only then do `.wh.` files count).
pub(crate) fn hit_in(l: &LayerFd, name: &[u8], more_below: bool) -> Result<Hit> {
    let st = match stat_in(l, name) {
        Ok(st) => st,
        Err(Errno::NOENT) => {
            return Ok(if more_below && has_wh(l, name) {
                Hit::End
            } else {
                Hit::Missing
            })
        }
        Err(e) => return Err(e),
    };
    if whiteout::is_whiteout(&st) {
        return Ok(Hit::End);
    }
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        let obj = LayerObj {
            layer: l.layer,
            obj: Obj::At {
                dir: l.fd.clone(),
                name: Name::from(name),
            },
            index: None,
        };
        return Ok(Hit::Object(st, obj));
    }
    let dir = Arc::new(fd::open_dir_path(&*l.fd, name)?);
    Ok(Hit::Dir(
        st,
        LayerFd {
            layer: l.layer,
            fd: dir,
            index: Some(Arc::default()),
        },
    ))
}

/// Walk `parts` from the root of layer `layer`, one name at a time. A
/// missing name means the layer has nothing there; a whiteout (of either
/// form) or a non-directory on the way ends the search; a non-directory
/// at the end is the object found. Also says whether a directory on the
/// way is opaque (the walk goes on in this layer, as the kernel's does,
/// but no layer below counts).
pub(crate) fn walk(stack: &Stack, layer: usize, parts: &[Vec<u8>]) -> Result<(Hit, bool)> {
    let Some(root) = stack.layers.get(layer) else {
        return Ok((Hit::End, false));
    };
    let mut opaque_on_path = false;
    let mut dir = Arc::new(fd::dup_path(&root.root)?);
    let last = parts.len().saturating_sub(1);
    for (i, p) in parts.iter().enumerate() {
        let st = match fd::stat_at(&*dir, p) {
            Ok(st) => st,
            // A `.wh.` file is a whiteout too (in the bottom layer it
            // hides nothing, and nothing is searched below it anyway).
            Err(Errno::NOENT) if whiteout::has_wh_file(&*dir, p) => {
                return Ok((Hit::End, opaque_on_path))
            }
            Err(Errno::NOENT) => return Ok((Hit::Missing, opaque_on_path)),
            Err(e) => return Err(e),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            if i == last && !whiteout::is_whiteout(&st) {
                let obj = LayerObj {
                    layer,
                    obj: Obj::At {
                        dir,
                        name: Name::from(&p[..]),
                    },
                    index: None,
                };
                return Ok((Hit::Object(st, obj), opaque_on_path));
            }
            return Ok((Hit::End, opaque_on_path));
        }
        dir = Arc::new(fd::open_dir_path(&*dir, p)?);
        if i == last {
            let here = LayerFd {
                layer,
                fd: dir,
                index: Some(Arc::default()),
            };
            return Ok((Hit::Dir(st, here), opaque_on_path));
        }
        if !opaque_on_path && layer + 1 < stack.layers.len() && opaque::is_opaque(&*dir)? {
            opaque_on_path = true;
        }
    }
    Ok((Hit::Missing, opaque_on_path))
}

/// The redirect recorded on the directory `here` (named `name`), checked.
fn read_redirect(stack: &Stack, here: &LayerFd, name: &[u8]) -> Result<Option<Redirect>> {
    let v = match xattr::get(&*here.fd, stack.formats.ovl(Ovl::Redirect)) {
        Ok(v) => v,
        Err(Errno::NODATA) | Err(Errno::NOTSUP) => return Ok(None),
        Err(e) => return Err(e),
    };
    match redirect::parse(&v) {
        Ok(r) => Ok(Some(r)),
        Err(why) => {
            log::warn!(
                "invalid redirect {} on directory {} in layer {}: {why}; not followed",
                show_bytes(&v[..v.len().min(300)]),
                show_bytes(name),
                here.layer
            );
            Err(Errno::INVAL)
        }
    }
}

/// Whether `name` is visible in `layers`, without opening anything.
pub(crate) fn exists(layers: &[LayerFd], name: &[u8]) -> Result<bool> {
    let n = layers.len();
    for (i, l) in layers.iter().enumerate() {
        match stat_in(l, name) {
            Ok(st) => return Ok(!whiteout::is_whiteout(&st)),
            Err(Errno::NOENT) => {
                if i + 1 < n && has_wh(l, name) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The index of the lower directory `l`, read at its first use; `None` for
/// the upper (which changes) or when it cannot be read.
fn index(l: &LayerFd) -> Option<&DirIndex> {
    l.index
        .as_ref()?
        .get_or_init(|| DirIndex::read(&*l.fd).ok())
        .as_ref()
}

/// Whether the layer directory `l` (which lacks `name`) has an AUFS
/// whiteout for `name`.
fn has_wh(l: &LayerFd, name: &[u8]) -> bool {
    match index(l) {
        Some(index) => index.hides(name),
        None => whiteout::has_wh_file(&*l.fd, name),
    }
}

/// `lstat` of `name` in the layer directory `l`. A lower directory's index
/// is read at its first miss; from then on names it lacks cost no system
/// call.
fn stat_in(l: &LayerFd, name: &[u8]) -> Result<Stat> {
    let known = l
        .index
        .as_ref()
        .and_then(|c| c.get())
        .and_then(|i| i.as_ref());
    if known.is_some_and(|i| i.lacks(name)) {
        return Err(Errno::NOENT);
    }
    let r = fd::stat_at(&*l.fd, name);
    if matches!(r, Err(Errno::NOENT)) && known.is_none() {
        index(l);
    }
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// Layer directories `l0..ln` in a temporary directory, opened as a
    /// merged directory's layers (`l0` on top; it is the upper when
    /// `upper` is set, so it gets no index).
    pub(crate) fn layers(root: &Path, n: usize, upper: bool) -> Vec<LayerFd> {
        (0..n)
            .map(|i| {
                let p = root.join(format!("l{i}"));
                std::fs::create_dir_all(&p).ok();
                let fd = rustix::fs::open(&p, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty())
                    .map(Arc::new)
                    .unwrap_or_else(|e| panic!("open {p:?}: {e}"));
                LayerFd {
                    layer: i,
                    fd,
                    index: (i > 0 || !upper).then(Arc::default),
                }
            })
            .collect()
    }

    fn write(root: &Path, rel: &str, data: &str) {
        let p = root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).ok();
        }
        std::fs::write(&p, data).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    }

    fn content(f: &Found) -> String {
        let fd = f.top.obj.open(rustix::fs::OFlags::RDONLY).ok();
        let mut buf = vec![0u8; 64];
        let n = fd
            .and_then(|fd| rustix::io::read(&fd, &mut buf).ok())
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn top_layer_wins_and_non_directories_hide_below() -> Result<()> {
        let t = tempfile::tempdir().map_err(|_| Errno::IO)?;
        let ls = layers(t.path(), 3, true);
        write(t.path(), "l1/f", "middle");
        write(t.path(), "l2/f", "bottom");
        write(t.path(), "l2/only", "b");
        write(t.path(), "l0/d", "file hides dir");
        std::fs::create_dir_all(t.path().join("l1/d")).ok();
        let f = resolve(&ls, b"f")?.ok_or(Errno::NOENT)?;
        assert_eq!((f.top.layer, content(&f)), (1, "middle".to_string()));
        assert_eq!(resolve(&ls, b"only")?.map(|f| f.top.layer), Some(2));
        let d = resolve(&ls, b"d")?.ok_or(Errno::NOENT)?;
        assert_eq!((d.kind(), d.below.len()), (FileType::RegularFile, 0));
        assert!(resolve(&ls, b"missing")?.is_none());
        assert!(exists(&ls, b"f")? && !exists(&ls, b"missing")?);
        Ok(())
    }

    #[test]
    fn whiteouts_in_both_forms_end_the_search() -> Result<()> {
        let t = tempfile::tempdir().map_err(|_| Errno::IO)?;
        let ls = layers(t.path(), 3, true);
        write(t.path(), "l2/a", "a");
        write(t.path(), "l2/b", "b");
        write(t.path(), "l1/.wh.a", "");
        let made = rustix::fs::mknodat(
            &*ls[0].fd,
            "b",
            FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        );
        assert!(resolve(&ls, b"a")?.is_none(), ".wh.a hides a");
        assert!(!exists(&ls, b"a")?);
        if made.is_ok() {
            assert!(resolve(&ls, b"b")?.is_none(), "char 0/0 hides b");
        }
        // A .wh. file in the bottom layer hides nothing (nothing below).
        write(t.path(), "l2/.wh.c", "");
        write(t.path(), "l2/c", "c");
        assert!(resolve(&ls, b"c")?.is_some());
        Ok(())
    }

    #[test]
    fn directories_merge_until_opaque_or_non_directory() -> Result<()> {
        let t = tempfile::tempdir().map_err(|_| Errno::IO)?;
        let ls = layers(t.path(), 4, true);
        for l in ["l0/d", "l1/d", "l2/d"] {
            std::fs::create_dir_all(t.path().join(l)).ok();
        }
        write(t.path(), "l3/d", "a file ends the merge");
        let d = resolve(&ls, b"d")?.ok_or(Errno::NOENT)?;
        let got: Vec<usize> = d.dir_layers().iter().map(|l| l.layer).collect();
        assert_eq!(got, vec![0, 1, 2]);
        // Opaque in l1: l2 no longer merges.
        write(t.path(), "l1/d/.wh..wh..opq", "");
        let d = resolve(&ls, b"d")?.ok_or(Errno::NOENT)?;
        let got: Vec<usize> = d.dir_layers().iter().map(|l| l.layer).collect();
        assert_eq!(got, vec![0, 1]);
        Ok(())
    }

    #[test]
    fn lower_index_answers_misses_after_the_first() -> Result<()> {
        let t = tempfile::tempdir().map_err(|_| Errno::IO)?;
        let ls = layers(t.path(), 2, false);
        write(t.path(), "l1/x", "x");
        assert!(resolve(&ls, b"nope")?.is_none());
        assert!(ls[0].index.as_ref().is_some_and(|c| c.get().is_some()));
        // A name added behind the mount's back to an indexed lower layer is
        // not seen (lower layers must not change while mounted).
        write(t.path(), "l0/late", "late");
        assert!(resolve(&ls, b"late")?.is_none());
        assert!(resolve(&ls, b"x")?.is_some());
        Ok(())
    }
}
