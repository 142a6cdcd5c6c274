//! The scan: open the directories once, then the work directory's
//! leftovers and a depth-first walk over the upper (the rules applied in
//! each directory are in `rules`).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, Stat};

use super::repair;
use super::report::{Area, CheckOptions, Finding, Findings, Kind, Problem, Severity};
use super::rules::{self, is_dir, join, kind_name, LayerInfo, Pending, Place};
use crate::core::obj::LayerFd;
use crate::error::{describe, Errno, SetupError};
use crate::format::nlink::{self, Base};
use crate::format::origin::{self, Origin};
use crate::format::whiteout;
use crate::format::xattr_names::Ovl;
use crate::setup::stack::{open_root, INDEX_SUBDIR, WORK_SUBDIR};
use crate::sys::{fd, raw, xattr};

/// Run one pass; with `repair`, fix what is safe as it goes.
pub(crate) fn run(opts: &CheckOptions, repair: bool) -> Result<Vec<Finding>, SetupError> {
    let (upper, ust) = open_root("upperdir", &opts.upper)?;
    let (work, wst) = open_root("workdir", &opts.work)?;
    if repair {
        for (fd, what, path) in [
            (&upper, "upperdir", &opts.upper),
            (&work, "workdir", &opts.work),
        ] {
            rustix::fs::accessat(fd, ".", rustix::fs::Access::WRITE_OK, AtFlags::EACCESS).map_err(
                |e| SetupError::path(what, path, format!("not writable: {}", describe(e))),
            )?;
        }
    }
    let mut f = Findings::new(repair);
    if ust.st_dev != wst.st_dev {
        f.add(Problem {
            severity: Severity::Error,
            area: Area::Work,
            path: PathBuf::from("."),
            kind: Kind::WorkOtherFilesystem,
            what: format!(
                "work directory {} is not on the filesystem of the upper {}: the mount fails",
                opts.work.display(),
                opts.upper.display()
            ),
        });
    }
    let mut lowers = Vec::new();
    let mut all_lowers = true;
    let mut layers = LayerInfo {
        uuids: vec![raw::fs_uuid(upper.as_fd()).unwrap_or_default()],
        devs: vec![ust.st_dev],
        roots: Vec::new(),
    };
    for (i, l) in opts.lowers.iter().enumerate() {
        match open_root("lower layer", l) {
            Ok((fd, st)) => {
                layers
                    .uuids
                    .push(raw::fs_uuid(fd.as_fd()).unwrap_or_default());
                layers.devs.push(st.st_dev);
                lowers.push(LayerFd {
                    layer: i + 1,
                    fd: Arc::new(fd),
                    index: Some(Arc::default()),
                })
            }
            Err(e) => {
                all_lowers = false;
                f.add(Problem {
                    severity: Severity::Error,
                    area: Area::Lower(i),
                    path: PathBuf::from("."),
                    kind: Kind::MissingLower,
                    what: format!("{e}: the mount fails"),
                });
            }
        }
    }
    // Whether a whiteout hides something can only be told with every
    // lower layer at hand.
    let known = !opts.lowers.is_empty() && all_lowers;
    layers.roots = lowers.clone();
    let chain = known.then_some(lowers);
    check_work(&mut f, &work);
    check_index(&mut f, &work);
    check_upper(&mut f, upper, chain, known.then_some(&layers));
    Ok(f.list)
}

fn check_work(f: &mut Findings, wroot: &OwnedFd) {
    let sub = WORK_SUBDIR;
    let rel = PathBuf::from(sub);
    let problem = |severity, kind, what| Problem {
        severity,
        area: Area::Work,
        path: rel.clone(),
        kind,
        what,
    };
    let st = match fd::stat_at(wroot, sub.as_bytes()) {
        Ok(st) => st,
        Err(Errno::NOENT) => return,
        Err(e) => {
            let what = format!("cannot stat: {}", describe(e));
            f.add(problem(Severity::Error, Kind::Unreadable, what));
            return;
        }
    };
    if !is_dir(&st) {
        let what = format!("is a {}, not a directory: the mount fails", kind_name(&st));
        f.add_fix(
            problem(Severity::Warning, Kind::WorkUnusable, what),
            format!("remove the {}", kind_name(&st)),
            |_| rustix::fs::unlinkat(wroot, sub, AtFlags::empty()).map_err(describe),
        );
        return;
    }
    let open = || {
        rustix::fs::openat(
            wroot,
            sub,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let wd = match open() {
        Ok(fd) => fd,
        Err(e) => {
            let mut opened = None;
            f.add_fix(
                problem(
                    Severity::Warning,
                    Kind::WorkUnusable,
                    format!("cannot be listed: {}", describe(e)),
                ),
                "make it accessible (mode 0700) and clear it".to_string(),
                |_| {
                    rustix::fs::chmodat(wroot, sub, Mode::from_raw_mode(0o700), AtFlags::empty())
                        .and_then(|()| open())
                        .map(|fd| opened = Some(fd))
                        .map_err(describe)
                },
            );
            match opened {
                Some(fd) => fd,
                None => return,
            }
        }
    };
    let Some(entries) = rules::list(f, &wd, Area::Work, &rel) else {
        return;
    };
    for (name, st) in entries {
        leftover(f, &wd, &rel, &name, &st);
    }
}

/// A leftover `name` in the work directory `dir` (at `rel`): a whiteout
/// template the kernel overlay leaves, or what an interrupted operation
/// left.
fn leftover(f: &mut Findings, dir: &OwnedFd, rel: &Path, name: &[u8], st: &Stat) {
    let (severity, what) = if whiteout::is_whiteout(st) {
        (
            Severity::Info,
            "whiteout template left in the work directory (the kernel overlay leaves these)"
                .to_string(),
        )
    } else {
        (
            Severity::Warning,
            format!(
                "leftover {} in the work directory (an interrupted operation)",
                kind_name(st)
            ),
        )
    };
    let dir_kind = is_dir(st);
    let how = if dir_kind {
        "remove it with its contents"
    } else {
        "remove it"
    };
    let p = Problem {
        severity,
        area: Area::Work,
        path: join(rel, name),
        kind: Kind::WorkLeftover,
        what,
    };
    f.add_fix(p, how.to_string(), repair::remove_tree(dir, name, dir_kind));
}

fn check_upper(
    f: &mut Findings,
    root: OwnedFd,
    chain: Option<Vec<LayerFd>>,
    layers: Option<&LayerInfo>,
) {
    let root = Arc::new(root);
    let at = Place {
        chain: chain.as_deref(),
        below_opaque: false,
        is_root: true,
        layers,
    };
    let first = rules::scan_dir(f, &root, Path::new("."), at);
    // Depth-first over the pending directories (no recursion).
    let mut stack: Vec<Pending> = first.into_iter().rev().collect();
    while let Some(p) = stack.pop() {
        let fd = match rustix::fs::openat(
            &*p.parent,
            p.name.as_slice(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                f.add(Problem {
                    severity: Severity::Error,
                    area: Area::Upper,
                    path: p.rel,
                    kind: Kind::Unreadable,
                    what: format!("cannot open the directory: {}", describe(e)),
                });
                continue;
            }
        };
        let at = Place {
            chain: p.chain.as_deref(),
            below_opaque: p.below_opaque,
            is_root: false,
            layers,
        };
        let children = rules::scan_dir(f, &fd, &p.rel, at);
        stack.extend(children.into_iter().rev());
    }
}

/// The inode index (`WORKDIR/index`): each entry is named by the hex of
/// the origin record it carries. The kernel overlay (with `index=on`)
/// refuses to mount over an entry whose name is not a record or that has
/// no origin, and removes entries whose origin differs from their name and
/// orphans (no name shows them any more).
fn check_index(f: &mut Findings, wroot: &OwnedFd) {
    let rel = PathBuf::from(INDEX_SUBDIR);
    let idx = match rustix::fs::openat(
        wroot,
        INDEX_SUBDIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return,
        Err(e) => {
            f.add(Problem {
                severity: Severity::Error,
                area: Area::Work,
                path: rel,
                kind: Kind::Unreadable,
                what: format!("cannot open the index: {}", describe(e)),
            });
            return;
        }
    };
    let Some(entries) = rules::list(f, &idx, Area::Work, &rel) else {
        return;
    };
    for (name, st) in entries {
        let path = join(&rel, &name);
        let problem = |severity, kind, what: String| Problem {
            severity,
            area: Area::Work,
            path: path.clone(),
            kind,
            what,
        };
        if name.first() == Some(&b'#') {
            leftover(f, &idx, &rel, &name, &st);
            continue;
        }
        let Some(record) = unhex(&name).filter(|r| origin::decode(r) != Origin::Invalid) else {
            let what = "not an index entry (its name is not the hex of an origin record): the kernel overlay refuses to mount with index=on".to_string();
            f.add(problem(Severity::Error, Kind::IndexEntry, what));
            continue;
        };
        if whiteout::is_whiteout(&st) || is_dir(&st) {
            // Kept by the kernel for NFS export; stratafs does not use them.
            continue;
        }
        let obj = match fd::open_path(&idx, &name) {
            Ok(o) => o,
            Err(e) => {
                let what = format!("cannot open: {}", describe(e));
                f.add(problem(Severity::Error, Kind::Unreadable, what));
                continue;
            }
        };
        let read = |x: Ovl| {
            xattr::get(&obj, x.name(true))
                .or_else(|_| xattr::get(&obj, x.name(false)))
                .ok()
        };
        match read(Ovl::Origin) {
            None => {
                let what = "index entry without an origin record: the kernel overlay refuses to mount with index=on".to_string();
                f.add(problem(Severity::Error, Kind::IndexEntry, what));
                continue;
            }
            Some(o) if o != record => {
                let what = "index entry whose origin record is not the one its name says: the kernel overlay removes it at mount, stratafs does not use it".to_string();
                f.add(problem(Severity::Warning, Kind::IndexEntry, what));
                continue;
            }
            Some(_) => {}
        }
        // An orphan: no upper name links it and the merged count is 0.
        let merged = read(Ovl::Nlink).map(|v| nlink::decode(&v));
        let orphan = st.st_nlink == 1
            && match merged {
                None => true,
                Some(Some((Base::Upper, d))) => d < 0,
                Some(_) => false,
            };
        if orphan {
            let what =
                "orphan index entry: no name shows it any more (the kernel overlay removes it at mount)"
                    .to_string();
            f.add_fix(
                problem(Severity::Info, Kind::IndexEntry, what),
                "remove it".to_string(),
                repair::remove_tree(&idx, &name, false),
            );
        }
    }
}

/// The bytes an even-length hex name stands for.
fn unhex(name: &[u8]) -> Option<Vec<u8>> {
    if name.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    name.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}
