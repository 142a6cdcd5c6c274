//! The scan: open the directories once, then the work directory's
//! leftovers and a depth-first walk over the upper (the rules applied in
//! each directory are in `rules`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};

use super::repair;
use super::report::{Area, CheckOptions, Finding, Findings, Kind, Problem, Severity};
use super::rules::{self, is_dir, join, kind_name, Pending};
use crate::core::obj::LayerFd;
use crate::error::{describe, Errno, SetupError};
use crate::format::whiteout;
use crate::setup::stack::{open_root, WORK_SUBDIR};
use crate::sys::fd;

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
    for (i, l) in opts.lowers.iter().enumerate() {
        match open_root("lower layer", l) {
            Ok((fd, _)) => lowers.push(LayerFd {
                layer: i + 1,
                fd: Arc::new(fd),
                index: Some(Arc::default()),
            }),
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
    let chain = (!opts.lowers.is_empty() && all_lowers).then_some(lowers);
    check_work(&mut f, &work);
    check_upper(&mut f, upper, chain);
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
        let (severity, what) = if whiteout::is_whiteout(&st) {
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
                    kind_name(&st)
                ),
            )
        };
        let dir = is_dir(&st);
        let how = if dir {
            "remove it with its contents"
        } else {
            "remove it"
        };
        let p = Problem {
            severity,
            area: Area::Work,
            path: join(&rel, &name),
            kind: Kind::WorkLeftover,
            what,
        };
        f.add_fix(p, how.to_string(), repair::remove_tree(&wd, &name, dir));
    }
}

fn check_upper(f: &mut Findings, root: OwnedFd, chain: Option<Vec<LayerFd>>) {
    let root = Arc::new(root);
    let first = rules::scan_dir(f, &root, Path::new("."), chain.as_deref(), false, true);
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
        let children = rules::scan_dir(f, &fd, &p.rel, p.chain.as_deref(), p.below_opaque, false);
        stack.extend(children.into_iter().rev());
    }
}
