//! `stratafs check`: offline check (and safe repair) of an upper and a work
//! directory.
//!
//! While the overlay is not mounted, this walks the upper layer and reports
//! markers that readers disagree on or that have no effect:
//!
//! * a whiteout beside a real entry of the same name (`.wh.NAME` next to
//!   `NAME`): stratafs shows the entry, other readers may hide it;
//! * a `.wh.NAME` file beside a char 0/0 whiteout of the same name;
//! * `.wh.` files the kernel overlay does not read (it only reads char 0/0
//!   whiteouts and opaque xattrs), `.wh..wh..opq` among them, and `.wh.`
//!   names that hide nothing (`.wh.` alone, `.wh..wh.x`);
//! * whiteouts inside opaque directories (nothing below to hide);
//! * opaque xattrs with a value other than `y` (`x` only means something in
//!   a lower layer with xwhiteouts);
//! * malformed `*.override_stat` values (`UID:GID:OCTALMODE[:TYPE]`);
//! * leftovers in `WORKDIR/work`;
//! * with lower layers given: lower layers that do not exist, and whiteouts
//!   that hide nothing in any of them.
//!
//! `--repair` fixes what is safe: it clears `WORKDIR/work`, converts empty
//! `.wh.NAME` files into char 0/0 whiteouts where `mknod` is permitted,
//! removes whiteouts that sit beside a real entry (the entry wins, as
//! stratafs reads it) or beside a char whiteout of the same name, removes
//! whiteouts inside opaque directories, and turns `.wh..wh..opq` into an
//! opaque xattr. Nothing that can hold data (a `.wh.` file with content, a
//! `.wh.` directory) is ever removed.
//!
//! Every access below the given directories is relative to a directory
//! descriptor and never follows a symlink.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use clap::Parser;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::error::{describe, Errno, SetupError};
use crate::whiteout::{self, Formats, OPAQUE_FILE, OPAQUE_FO, OPAQUE_TRUSTED, OPAQUE_USER};
use crate::{layer, options, override_stat, util, xattr};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Harmless; reported for information (does not change the exit code).
    Info,
    /// Readers may disagree, or the mount may misbehave.
    Warning,
    /// Readers disagree, or the mount fails.
    Error,
}

impl Severity {
    /// Lower-case name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Which directory a finding is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// The upper directory.
    Upper,
    /// The work directory.
    Work,
    /// Lower directory number N (0 is the topmost).
    Lower(usize),
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Area::Upper => f.write_str("upper"),
            Area::Work => f.write_str("work"),
            Area::Lower(i) => write!(f, "lower{i}"),
        }
    }
}

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `.wh.NAME` beside a real entry `NAME`.
    WhiteoutBesideEntry,
    /// `.wh.NAME` beside a char 0/0 whiteout `NAME`.
    DuplicateWhiteout,
    /// A `.wh.NAME` whiteout file: read by stratafs and fuse-overlayfs, not
    /// by the kernel overlay.
    WhFileNotKernelReadable,
    /// A `.wh.` entry that is not an empty file (may be data).
    WhEntryWithData,
    /// A `.wh.` name that names nothing (`.wh.`, `.wh..wh.x`).
    StrayMarker,
    /// Opacity the kernel overlay does not read (`.wh..wh..opq`,
    /// `user.fuseoverlayfs.opaque`).
    OpaqueNotKernelReadable,
    /// An opaque marker on the upper root (no reader honours it).
    OpaqueOnRoot,
    /// A whiteout inside an opaque directory (or below one).
    WhiteoutInOpaqueDir,
    /// An opaque xattr whose value is not `y`.
    OpaqueValue,
    /// A malformed owner/mode override xattr.
    OverrideStat,
    /// Something left in `WORKDIR/work`.
    WorkLeftover,
    /// `WORKDIR/work` is not a usable directory.
    WorkUnusable,
    /// The work directory is on another filesystem than the upper.
    WorkOtherFilesystem,
    /// A whiteout that hides nothing in the given lower layers.
    WhiteoutHidesNothing,
    /// A lower layer that cannot be opened.
    MissingLower,
    /// Something in the upper could not be read.
    Unreadable,
}

impl Kind {
    /// Stable name, as printed in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::WhiteoutBesideEntry => "whiteout-beside-entry",
            Kind::DuplicateWhiteout => "duplicate-whiteout",
            Kind::WhFileNotKernelReadable => "wh-file-not-kernel-readable",
            Kind::WhEntryWithData => "wh-entry-with-data",
            Kind::StrayMarker => "stray-marker",
            Kind::OpaqueNotKernelReadable => "opaque-not-kernel-readable",
            Kind::OpaqueOnRoot => "opaque-on-root",
            Kind::WhiteoutInOpaqueDir => "whiteout-in-opaque-dir",
            Kind::OpaqueValue => "opaque-value",
            Kind::OverrideStat => "override-stat",
            Kind::WorkLeftover => "work-leftover",
            Kind::WorkUnusable => "work-unusable",
            Kind::WorkOtherFilesystem => "work-other-filesystem",
            Kind::WhiteoutHidesNothing => "whiteout-hides-nothing",
            Kind::MissingLower => "missing-lower",
            Kind::Unreadable => "unreadable",
        }
    }
}

/// What happened to a finding's repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not repaired (no `--repair`, or nothing safe to do).
    NotAttempted,
    /// Repaired.
    Repaired,
    /// The repair was tried and failed (or is not permitted here).
    Failed(String),
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// Which directory it is in.
    pub area: Area,
    /// Path relative to that directory (`.` for the directory itself).
    pub path: PathBuf,
    /// What kind of problem it is.
    pub kind: Kind,
    /// Human description.
    pub what: String,
    /// What `--repair` does about it, if anything.
    pub repair: Option<String>,
    /// What `--repair` did.
    pub outcome: Outcome,
}

impl Finding {
    /// A warning or error that was not repaired.
    pub fn is_problem(&self) -> bool {
        self.severity >= Severity::Warning && self.outcome != Outcome::Repaired
    }

    /// The finding as one line of text.
    pub fn line(&self) -> String {
        let repair = match (&self.repair, &self.outcome) {
            (None, _) => "no repair".to_string(),
            (Some(r), Outcome::NotAttempted) => format!("repair: {r}"),
            (Some(r), Outcome::Repaired) => format!("repaired: {r}"),
            (Some(r), Outcome::Failed(e)) => format!("not repaired ({}): {r}", one_line(e)),
        };
        format!(
            "{:<7} {}:{}: {} | {}",
            self.severity.as_str(),
            self.area,
            show_path(&self.path),
            one_line(&self.what),
            repair
        )
    }

    fn json(&self) -> String {
        let outcome = match &self.outcome {
            Outcome::NotAttempted => "\"not-attempted\"".to_string(),
            Outcome::Repaired => "\"repaired\"".to_string(),
            Outcome::Failed(e) => format!("\"failed\",\"error\":{}", json_str(e)),
        };
        format!(
            "{{\"severity\":\"{}\",\"layer\":\"{}\",\"path\":{},\"kind\":\"{}\",\"what\":{},\"repair\":{},\"outcome\":{}}}",
            self.severity.as_str(),
            self.area,
            json_str(&self.path.to_string_lossy()),
            self.kind.as_str(),
            json_str(&self.what),
            self.repair
                .as_deref()
                .map_or_else(|| "null".to_string(), json_str),
            outcome
        )
    }
}

/// What to check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// The upper directory.
    pub upper: PathBuf,
    /// The work directory (`workdir=` of the mount).
    pub work: PathBuf,
    /// Lower directories, top first (optional).
    pub lowers: Vec<PathBuf>,
    /// Fix what is safe to fix.
    pub repair: bool,
}

/// The result of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Everything found (with repair outcomes when `--repair` was given).
    pub findings: Vec<Finding>,
    /// Whether repairs were made.
    pub repaired: bool,
    /// After repairs: what a fresh check finds.
    pub remaining: Vec<Finding>,
}

impl Report {
    /// Findings of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.kind == kind)
    }

    /// Warnings and errors left: after `--repair`, those a fresh check
    /// still finds.
    pub fn problems(&self) -> usize {
        let list = if self.repaired {
            &self.remaining
        } else {
            &self.findings
        };
        list.iter().filter(|f| f.is_problem()).count()
    }

    /// 0 when no problems are left, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.problems() > 0)
    }

    /// One line per finding, then a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&f.line());
            out.push('\n');
        }
        if self.repaired {
            for f in self.remaining.iter().filter(|f| f.is_problem()) {
                out.push_str("remains ");
                out.push_str(&f.line());
                out.push('\n');
            }
        }
        let count = |s: Severity| self.findings.iter().filter(|f| f.severity == s).count();
        if self.findings.is_empty() {
            out.push_str("stratafs check: clean\n");
        } else {
            let mut summary = format!(
                "stratafs check: {} finding(s): {} error(s), {} warning(s), {} info",
                self.findings.len(),
                count(Severity::Error),
                count(Severity::Warning),
                count(Severity::Info)
            );
            if self.repaired {
                let fixed = self
                    .findings
                    .iter()
                    .filter(|f| f.outcome == Outcome::Repaired)
                    .count();
                summary.push_str(&format!("; {fixed} repaired"));
            }
            summary.push_str(&format!("; {} problem(s) left\n", self.problems()));
            out.push_str(&summary);
        }
        out
    }

    /// The report as one JSON object (one finding per line).
    pub fn to_json(&self, opts: &CheckOptions) -> String {
        let lowers: Vec<String> = opts
            .lowers
            .iter()
            .map(|l| json_str(&l.to_string_lossy()))
            .collect();
        let list = |v: &[Finding]| -> String {
            let items: Vec<String> = v.iter().map(|f| format!("\n  {}", f.json())).collect();
            if items.is_empty() {
                "[]".to_string()
            } else {
                format!("[{}\n]", items.join(","))
            }
        };
        format!(
            "{{\"upper\":{},\"work\":{},\"lowers\":[{}],\"repair\":{},\"findings\":{},\"remaining\":{},\"problems\":{},\"exit\":{}}}\n",
            json_str(&opts.upper.to_string_lossy()),
            json_str(&opts.work.to_string_lossy()),
            lowers.join(","),
            self.repaired,
            list(&self.findings),
            list(&self.remaining),
            self.problems(),
            self.exit_code()
        )
    }
}

/// Check (and with `opts.repair`, repair) the upper and work directory.
/// An error means the check could not run at all (exit status 2).
pub fn check(opts: &CheckOptions) -> Result<Report, SetupError> {
    let findings = Pass::run(opts, opts.repair)?;
    let remaining = if opts.repair {
        Pass::run(opts, false)?
    } else {
        Vec::new()
    };
    Ok(Report {
        findings,
        repaired: opts.repair,
        remaining,
    })
}

/// Offline check of an upper and work directory (run while unmounted).
///
/// Reports stray or conflicting whiteouts and opaque markers, markers the
/// kernel overlay does not read, malformed override_stat xattrs and
/// leftovers in WORKDIR/work, one finding per line: severity, layer:path
/// (relative to that directory), what, and what --repair does about it.
#[derive(Parser, Debug)]
#[command(
    name = "stratafs-check",
    bin_name = "stratafs check",
    after_help = "Exit status: 0 clean (info findings allowed), 1 problems found (with --repair: \
                  problems left after repairing), 2 the check could not run."
)]
struct CheckCli {
    /// The upper directory (upperdir= of the mount).
    #[arg(long, value_name = "DIR")]
    upper: PathBuf,

    /// The work directory (workdir= of the mount).
    #[arg(long, value_name = "DIR")]
    work: PathBuf,

    /// Lower directories, top first, separated by ':' (may repeat; '\'
    /// escapes ':' and '\'). Enables the check for missing lower layers and
    /// for whiteouts that hide nothing.
    #[arg(long, value_name = "DIR[:DIR...]", action = clap::ArgAction::Append)]
    lower: Vec<String>,

    /// Fix what is safe: clear WORKDIR/work; turn empty .wh.NAME files into
    /// char 0/0 whiteouts where mknod is permitted; remove whiteouts beside
    /// a real entry (the entry wins) or a char whiteout of the same name,
    /// and whiteouts inside opaque directories; turn .wh..wh..opq into an
    /// opaque xattr. Only while the overlay is not mounted.
    #[arg(long)]
    repair: bool,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Run `stratafs check` with `args` (`args[0]` is `check`); returns the exit
/// status.
pub fn run_cli(args: &[OsString]) -> i32 {
    let cli = match CheckCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let mut lowers = Vec::new();
    for l in &cli.lower {
        for part in options::split_raw(l, ':') {
            let p = options::unescape(&part);
            if p.is_empty() {
                let _ = writeln!(
                    std::io::stderr(),
                    "stratafs check: --lower {l}: empty directory in the list"
                );
                return 2;
            }
            lowers.push(PathBuf::from(p));
        }
    }
    let opts = CheckOptions {
        upper: cli.upper,
        work: cli.work,
        lowers,
        repair: cli.repair,
    };
    let report = match check(&opts) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "stratafs check: {e}");
            return 2;
        }
    };
    let text = if cli.json {
        report.to_json(&opts)
    } else {
        report.to_text()
    };
    // A closed stdout must not turn into a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    report.exit_code()
}

/// A directory of the upper still to be scanned.
struct Pending {
    parent: Rc<OwnedFd>,
    name: Vec<u8>,
    rel: PathBuf,
    /// Lower directories merged at this path (when lowers are known).
    chain: Option<Vec<Rc<OwnedFd>>>,
    /// An ancestor is opaque: nothing below can be hidden.
    below_opaque: bool,
}

/// One scan over the directories.
struct Pass {
    repair: bool,
    findings: Vec<Finding>,
    formats: Formats,
}

fn open_root(what: &str, path: &Path) -> Result<(OwnedFd, Stat), SetupError> {
    // The path the user gave is followed once (engines pass symlinks);
    // nothing below it is.
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        let msg = if e == Errno::NOTDIR {
            "is not a directory".to_string()
        } else {
            describe(e)
        };
        SetupError::path(what, path, msg)
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| SetupError::path(what, path, describe(e)))?;
    Ok((fd, st))
}

fn kind_name(st: &Stat) -> &'static str {
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

fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// A marker file that holds nothing: safe to remove or convert.
fn is_empty_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size == 0
}

fn bytes_path(b: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

fn join(rel: &Path, name: &[u8]) -> PathBuf {
    if rel.as_os_str().is_empty() || rel == Path::new(".") {
        bytes_path(name)
    } else {
        rel.join(std::ffi::OsStr::from_bytes(name))
    }
}

/// A path for one line of text: control characters escaped.
fn show_path(p: &Path) -> String {
    one_line(&String::from_utf8_lossy(p.as_os_str().as_bytes()))
}

fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quote(b: &[u8]) -> String {
    one_line(&String::from_utf8_lossy(b))
}

/// Whether `name` resolves to something visible in the lower directories
/// `chain` (top first), as stratafs resolves it.
fn visible_below(chain: &[Rc<OwnedFd>], name: &[u8]) -> bool {
    for l in chain {
        match rustix::fs::statat(&**l, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => return !whiteout::is_whiteout(&st),
            Err(Errno::NOENT) => {
                if whiteout::has_wh_file(&**l, name) {
                    return false;
                }
            }
            // Unknown: assume the whiteout is needed.
            Err(_) => return true,
        }
    }
    false
}

/// The lower directories that merge with directory `name` of a directory
/// merged from `chain`.
fn child_chain(chain: &[Rc<OwnedFd>], name: &[u8]) -> Vec<Rc<OwnedFd>> {
    let mut out = Vec::new();
    for l in chain {
        match rustix::fs::statat(&**l, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir(&st) => {
                let Ok(fd) = rustix::fs::openat(
                    &**l,
                    name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) else {
                    break;
                };
                let opaque = whiteout::is_opaque(&fd).unwrap_or(false);
                out.push(Rc::new(fd));
                if opaque {
                    break;
                }
            }
            // A whiteout or a non-directory ends the merge.
            Ok(_) => break,
            Err(Errno::NOENT) => {
                if whiteout::has_wh_file(&**l, name) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

/// The opaque xattrs of a directory and their values.
fn opaque_xattrs(dir: impl AsFd) -> Vec<(&'static [u8], Vec<u8>)> {
    let dir = dir.as_fd();
    let Ok(list) = xattr::list(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in xattr::names(&list) {
        for known in [OPAQUE_TRUSTED, OPAQUE_USER, OPAQUE_FO] {
            if n == known {
                if let Ok(v) = xattr::get(dir, known) {
                    out.push((known, v));
                }
            }
        }
    }
    out
}

/// The override_stat xattrs of `name` in `dir` (or of `dir` itself when
/// `name` is `None`) and their values.
fn override_xattrs(dir: impl AsFd, name: Option<&[u8]>) -> Vec<(&'static [u8], Vec<u8>)> {
    let dir = dir.as_fd();
    let list = match name {
        Some(n) => xattr::list_at(dir, n),
        None => xattr::list(dir),
    };
    let Ok(list) = list else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in xattr::names(&list) {
        for known in override_stat::NAMES {
            if n == known {
                let v = match name {
                    Some(obj) => xattr::get_at(dir, obj, known),
                    None => xattr::get(dir, known),
                };
                if let Ok(v) = v {
                    out.push((known, v));
                }
            }
        }
    }
    out
}

impl Pass {
    fn run(opts: &CheckOptions, repair: bool) -> Result<Vec<Finding>, SetupError> {
        let (upper, ust) = open_root("upperdir", &opts.upper)?;
        let (work, wst) = open_root("workdir", &opts.work)?;
        if repair {
            for (fd, what, path) in [
                (&upper, "upperdir", &opts.upper),
                (&work, "workdir", &opts.work),
            ] {
                rustix::fs::accessat(fd, ".", rustix::fs::Access::WRITE_OK, AtFlags::EACCESS)
                    .map_err(|e| {
                        SetupError::path(what, path, format!("not writable: {}", describe(e)))
                    })?;
            }
        }
        let mut pass = Pass {
            repair,
            findings: Vec::new(),
            formats: Formats {
                char_whiteout: true.into(),
                trusted_xattr: true.into(),
            },
        };
        if ust.st_dev != wst.st_dev {
            pass.add(
                Severity::Error,
                Area::Work,
                PathBuf::from("."),
                Kind::WorkOtherFilesystem,
                format!(
                    "work directory {} is not on the filesystem of the upper {}: the mount fails",
                    opts.work.display(),
                    opts.upper.display()
                ),
                None,
            );
        }
        let mut lowers = Vec::new();
        let mut all_lowers = true;
        for (i, l) in opts.lowers.iter().enumerate() {
            match open_root("lower layer", l) {
                Ok((fd, _)) => lowers.push(Rc::new(fd)),
                Err(e) => {
                    all_lowers = false;
                    pass.add(
                        Severity::Error,
                        Area::Lower(i),
                        PathBuf::from("."),
                        Kind::MissingLower,
                        format!("{e}: the mount fails"),
                        None,
                    );
                }
            }
        }
        // Whether a whiteout hides something can only be told with every
        // lower layer at hand.
        let chain = (!opts.lowers.is_empty() && all_lowers).then_some(lowers);
        pass.check_work(&work);
        pass.check_upper(upper, chain);
        Ok(pass.findings)
    }

    fn add(
        &mut self,
        severity: Severity,
        area: Area,
        path: PathBuf,
        kind: Kind,
        what: String,
        repair: Option<String>,
    ) -> usize {
        self.findings.push(Finding {
            severity,
            area,
            path,
            kind,
            what,
            repair,
            outcome: Outcome::NotAttempted,
        });
        self.findings.len() - 1
    }

    /// Add a finding and, when repairing, run `fix` for it.
    #[allow(clippy::too_many_arguments)]
    fn add_fix(
        &mut self,
        severity: Severity,
        area: Area,
        path: PathBuf,
        kind: Kind,
        what: String,
        repair: String,
        fix: impl FnOnce(&Formats) -> Result<(), String>,
    ) {
        let i = self.add(severity, area, path, kind, what, Some(repair));
        if self.repair {
            let outcome = match fix(&self.formats) {
                Ok(()) => Outcome::Repaired,
                Err(e) => Outcome::Failed(e),
            };
            self.findings[i].outcome = outcome;
        }
    }

    fn check_work(&mut self, wroot: &OwnedFd) {
        let sub = layer::WORK_SUBDIR;
        let rel = PathBuf::from(sub);
        let st = match rustix::fs::statat(wroot, sub, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return,
            Err(e) => {
                self.add(
                    Severity::Error,
                    Area::Work,
                    rel,
                    Kind::Unreadable,
                    format!("cannot stat: {}", describe(e)),
                    None,
                );
                return;
            }
        };
        if !is_dir(&st) {
            self.add_fix(
                Severity::Warning,
                Area::Work,
                rel,
                Kind::WorkUnusable,
                format!("is a {}, not a directory: the mount fails", kind_name(&st)),
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
                self.add_fix(
                    Severity::Warning,
                    Area::Work,
                    rel.clone(),
                    Kind::WorkUnusable,
                    format!("cannot be listed: {}", describe(e)),
                    "make it accessible (mode 0700) and clear it".to_string(),
                    |_| {
                        rustix::fs::chmodat(
                            wroot,
                            sub,
                            Mode::from_raw_mode(0o700),
                            AtFlags::empty(),
                        )
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
        let entries = match self.list(&wd, Area::Work, &rel) {
            Some(e) => e,
            None => return,
        };
        for (name, st) in entries {
            let path = join(&rel, &name);
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
            self.add_fix(
                severity,
                Area::Work,
                path,
                Kind::WorkLeftover,
                what,
                if dir {
                    "remove it with its contents".to_string()
                } else {
                    "remove it".to_string()
                },
                |_| layer::remove_tree(&wd, &name, dir).map_err(describe),
            );
        }
    }

    /// Names and stats of the entries of `dir` (no `.`, `..`); `None` (with
    /// a finding) when it cannot be read.
    fn list(&mut self, dir: &OwnedFd, area: Area, rel: &Path) -> Option<Vec<(Vec<u8>, Stat)>> {
        let res = (|| -> Result<Vec<(Vec<u8>, Stat)>, Errno> {
            let rd = util::open_dir_read(dir)?;
            let mut out = Vec::new();
            for ent in rustix::fs::Dir::new(rd)? {
                let ent = ent?;
                let n = ent.file_name().to_bytes();
                if n == b"." || n == b".." {
                    continue;
                }
                match rustix::fs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW) {
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
                self.add(
                    Severity::Error,
                    area,
                    rel.to_path_buf(),
                    Kind::Unreadable,
                    format!("cannot list the directory: {}", describe(e)),
                    None,
                );
                None
            }
        }
    }

    fn check_upper(&mut self, root: OwnedFd, chain: Option<Vec<Rc<OwnedFd>>>) {
        let root = Rc::new(root);
        self.scan_dir(&root, Path::new("."), chain.as_deref(), false, true)
            .into_iter()
            .for_each(|p| self.walk(p));
    }

    /// Depth-first over the pending directories (no recursion).
    fn walk(&mut self, first: Pending) {
        let mut stack = vec![first];
        while let Some(p) = stack.pop() {
            let fd = match rustix::fs::openat(
                &*p.parent,
                p.name.as_slice(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => Rc::new(fd),
                Err(e) => {
                    self.add(
                        Severity::Error,
                        Area::Upper,
                        p.rel,
                        Kind::Unreadable,
                        format!("cannot open the directory: {}", describe(e)),
                        None,
                    );
                    continue;
                }
            };
            let mut children =
                self.scan_dir(&fd, &p.rel, p.chain.as_deref(), p.below_opaque, false);
            children.reverse();
            stack.extend(children);
        }
    }

    /// Check one upper directory; returns its subdirectories to scan.
    fn scan_dir(
        &mut self,
        fd: &Rc<OwnedFd>,
        rel: &Path,
        chain: Option<&[Rc<OwnedFd>]>,
        below_opaque: bool,
        is_root: bool,
    ) -> Vec<Pending> {
        let Some(entries) = self.list(fd, Area::Upper, rel) else {
            return Vec::new();
        };
        let by_name: HashMap<&[u8], &Stat> =
            entries.iter().map(|(n, s)| (n.as_slice(), s)).collect();

        // The directory's own markers (overrides of the others are checked
        // as entries of their parent).
        if is_root {
            self.check_overrides(fd, None, rel);
        }
        let xattrs = opaque_xattrs(&**fd);
        let mut opaque_y = false;
        let mut kernel_opaque = false;
        for (name, value) in &xattrs {
            let shown = String::from_utf8_lossy(name).into_owned();
            if value.as_slice() == b"y" {
                opaque_y = true;
                kernel_opaque |= *name != OPAQUE_FO;
                continue;
            }
            let what = if value.as_slice() == b"x" {
                format!("{shown}=x marks a directory with xwhiteouts, which only means something in a lower layer; here it is not opaque")
            } else if value.first() == Some(&b'y') {
                format!(
                    "{shown}=\"{}\": stratafs reads the directory as opaque, the kernel overlay (which wants exactly \"y\") does not",
                    quote(value)
                )
            } else {
                format!(
                    "{shown}=\"{}\": not \"y\", so no reader treats the directory as opaque",
                    quote(value)
                )
            };
            self.add(
                Severity::Warning,
                Area::Upper,
                rel.to_path_buf(),
                Kind::OpaqueValue,
                what,
                None,
            );
        }
        let opq_file = by_name.get(OPAQUE_FILE).copied();
        let opaque = opaque_y || opq_file.is_some();
        if is_root && opaque {
            self.add(
                Severity::Info,
                Area::Upper,
                rel.to_path_buf(),
                Kind::OpaqueOnRoot,
                "opaque marker on the upper root: no reader honours it".to_string(),
                None,
            );
        } else if opaque && !kernel_opaque {
            let dirfd = fd.clone();
            match opq_file {
                Some(st) => {
                    let path = join(rel, OPAQUE_FILE);
                    if is_empty_file(st) {
                        self.add_fix(
                            Severity::Info,
                            Area::Upper,
                            path,
                            Kind::OpaqueNotKernelReadable,
                            "opaque marker file: stratafs and fuse-overlayfs read it, the kernel overlay does not".to_string(),
                            "mark the directory opaque by xattr (trusted.overlay.opaque=y, or user.overlay.opaque=y where trusted xattrs are not permitted) and remove the file".to_string(),
                            move |f| {
                                f.set_opaque(&*dirfd).map_err(describe)?;
                                rustix::fs::unlinkat(&*dirfd, OPAQUE_FILE, AtFlags::empty())
                                    .map_err(describe)
                            },
                        );
                    } else {
                        self.add(
                            Severity::Warning,
                            Area::Upper,
                            path,
                            Kind::WhEntryWithData,
                            format!("opaque marker that is a {} with data: stratafs reads it as opaque, the kernel overlay does not", kind_name(st)),
                            None,
                        );
                    }
                }
                None => self.add_fix(
                    Severity::Info,
                    Area::Upper,
                    rel.to_path_buf(),
                    Kind::OpaqueNotKernelReadable,
                    "opaque by user.fuseoverlayfs.opaque only: the kernel overlay does not read it".to_string(),
                    "add trusted.overlay.opaque=y (or user.overlay.opaque=y where trusted xattrs are not permitted)".to_string(),
                    move |f| f.set_opaque(&*dirfd).map_err(describe),
                ),
            }
        } else if let Some(st) = opq_file.filter(|_| kernel_opaque) {
            let dirfd = fd.clone();
            if is_empty_file(st) {
                self.add_fix(
                    Severity::Info,
                    Area::Upper,
                    join(rel, OPAQUE_FILE),
                    Kind::OpaqueNotKernelReadable,
                    "opaque marker file beside an opaque xattr (redundant; the kernel overlay does not read it)".to_string(),
                    "remove the file".to_string(),
                    move |_| {
                        rustix::fs::unlinkat(&*dirfd, OPAQUE_FILE, AtFlags::empty())
                            .map_err(describe)
                    },
                );
            }
        }
        // Nothing below this directory can be hidden by a whiteout in it.
        let redundant = below_opaque || (opaque && !is_root);

        let mut subdirs = Vec::new();
        for (name, st) in &entries {
            let path = join(rel, name);
            if name.as_slice() != OPAQUE_FILE {
                self.check_overrides(fd, Some(name), &path);
            }
            if let Some(target) = name.strip_prefix(whiteout::WH_PREFIX) {
                if name.as_slice() != OPAQUE_FILE {
                    self.check_wh_entry(fd, rel, name, target, st, &by_name, chain, redundant);
                }
                continue;
            }
            if whiteout::is_whiteout(st) {
                self.check_char_whiteout(fd, rel, name, chain, redundant, below_opaque);
                continue;
            }
            if is_dir(st) {
                let child_chain = match chain {
                    Some(c) if !redundant => Some(child_chain(c, name)),
                    _ => None,
                };
                subdirs.push(Pending {
                    parent: fd.clone(),
                    name: name.clone(),
                    rel: path,
                    chain: child_chain,
                    below_opaque: redundant,
                });
            }
        }
        subdirs
    }

    fn check_overrides(&mut self, dir: &Rc<OwnedFd>, name: Option<&[u8]>, path: &Path) {
        for (xname, value) in override_xattrs(&**dir, name) {
            let shown = String::from_utf8_lossy(xname).into_owned();
            let (severity, what) = match override_stat::Override::parse_checked(&value) {
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
            self.add(
                severity,
                Area::Upper,
                path.to_path_buf(),
                Kind::OverrideStat,
                what,
                None,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_wh_entry(
        &mut self,
        dir: &Rc<OwnedFd>,
        rel: &Path,
        name: &[u8],
        target: &[u8],
        st: &Stat,
        by_name: &HashMap<&[u8], &Stat>,
        chain: Option<&[Rc<OwnedFd>]>,
        redundant: bool,
    ) {
        let path = join(rel, name);
        let shown = quote(name);
        let remove = |dirfd: Rc<OwnedFd>, name: Vec<u8>| {
            move |_: &Formats| {
                rustix::fs::unlinkat(&*dirfd, name.as_slice(), AtFlags::empty()).map_err(describe)
            }
        };
        if !is_empty_file(st) {
            self.add(
                Severity::Warning,
                Area::Upper,
                path,
                Kind::WhEntryWithData,
                format!(
                    "{shown} is a {}{}: stratafs never shows it and reads it as a whiteout, the kernel overlay shows it as an entry",
                    kind_name(st),
                    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                        " with data"
                    } else {
                        ""
                    }
                ),
                None,
            );
            return;
        }
        if target.is_empty() || whiteout::is_marker_name(target) {
            self.add_fix(
                Severity::Warning,
                Area::Upper,
                path,
                Kind::StrayMarker,
                format!("{shown} is a whiteout file for no valid name: it hides nothing"),
                format!("remove {shown}"),
                remove(dir.clone(), name.to_vec()),
            );
            return;
        }
        let t = quote(target);
        match by_name.get(target) {
            Some(other) if whiteout::is_whiteout(other) => {
                self.add_fix(
                    Severity::Warning,
                    Area::Upper,
                    path,
                    Kind::DuplicateWhiteout,
                    format!("whiteout file beside the char 0/0 whiteout \"{t}\" (two markers for one name)"),
                    format!("remove {shown} (the char whiteout stays)"),
                    remove(dir.clone(), name.to_vec()),
                );
                return;
            }
            Some(other) => {
                self.add_fix(
                    Severity::Error,
                    Area::Upper,
                    path,
                    Kind::WhiteoutBesideEntry,
                    format!(
                        "whiteout file beside the real {} \"{t}\": stratafs shows the {}, fuse-overlayfs may hide it",
                        kind_name(other),
                        kind_name(other)
                    ),
                    format!("remove {shown} (the real entry wins, as stratafs reads it)"),
                    remove(dir.clone(), name.to_vec()),
                );
                return;
            }
            None => {}
        }
        if redundant {
            self.add_fix(
                Severity::Warning,
                Area::Upper,
                path,
                Kind::WhiteoutInOpaqueDir,
                format!("whiteout of \"{t}\" inside an opaque directory: nothing below can show, it hides nothing"),
                format!("remove {shown}"),
                remove(dir.clone(), name.to_vec()),
            );
            return;
        }
        if let Some(c) = chain {
            if !visible_below(c, target) {
                self.add(
                    Severity::Info,
                    Area::Upper,
                    path.clone(),
                    Kind::WhiteoutHidesNothing,
                    format!("whiteout of \"{t}\" hides nothing in the lower layers"),
                    None,
                );
            }
        }
        let dirfd = dir.clone();
        let wh = name.to_vec();
        let target = target.to_vec();
        self.add_fix(
            Severity::Info,
            Area::Upper,
            path,
            Kind::WhFileNotKernelReadable,
            format!("whiteout file for \"{t}\": stratafs and fuse-overlayfs read it, the kernel overlay only reads char 0/0 whiteouts"),
            format!("replace it by a char 0/0 whiteout \"{t}\" (where mknod is permitted)"),
            move |_| {
                rustix::fs::mknodat(
                    &*dirfd,
                    target.as_slice(),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    0,
                )
                .map_err(|e| format!("mknod: {}", describe(e)))?;
                rustix::fs::unlinkat(&*dirfd, wh.as_slice(), AtFlags::empty())
                    .map_err(describe)
            },
        );
    }

    fn check_char_whiteout(
        &mut self,
        dir: &Rc<OwnedFd>,
        rel: &Path,
        name: &[u8],
        chain: Option<&[Rc<OwnedFd>]>,
        redundant: bool,
        below_opaque: bool,
    ) {
        let path = join(rel, name);
        let shown = quote(name);
        if redundant {
            let dirfd = dir.clone();
            let n = name.to_vec();
            let whose = if below_opaque {
                "below an opaque directory"
            } else {
                "inside an opaque directory"
            };
            self.add_fix(
                Severity::Warning,
                Area::Upper,
                path,
                Kind::WhiteoutInOpaqueDir,
                format!("whiteout {whose}: nothing below can show, it hides nothing"),
                format!("remove the whiteout {shown}"),
                move |_| {
                    rustix::fs::unlinkat(&*dirfd, n.as_slice(), AtFlags::empty()).map_err(describe)
                },
            );
            return;
        }
        if let Some(c) = chain {
            if !visible_below(c, name) {
                self.add(
                    Severity::Info,
                    Area::Upper,
                    path,
                    Kind::WhiteoutHidesNothing,
                    "whiteout hides nothing in the lower layers".to_string(),
                    None,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_values() {
        for good in [
            &b"0:0:0755"[..],
            b"1000:1000:100644",
            b"1:2:0644:file",
            b"1:2:0600:char-1-3",
            b"1:2:0600:block-8-0",
            b"1:2:0755:dir",
        ] {
            assert!(
                override_stat::Override::parse_checked(good).is_ok(),
                "{good:?}"
            );
        }
        for bad in [
            &b"0:0"[..],
            b"x:0:0755",
            b"0:0:0999",
            b"0:0:0755:weird",
            b"0:0:0755:char-1",
            b"0:0:0755:filex",
            b"0:0:0755:file:extra",
            b"-1:0:0755",
            b"0:0:",
            b"\xff",
            b"0:0:7777777",
        ] {
            assert!(
                override_stat::Override::parse_checked(bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn text_is_one_line() {
        assert_eq!(one_line("a\nb"), "a\\x0ab");
        assert_eq!(json_str("a\"\\\n\u{1}"), "\"a\\\"\\\\\\n\\u0001\"");
    }
}
