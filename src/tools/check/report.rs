//! What a check reports: findings, their severity and repair outcome, as
//! one line of text each or as JSON (one finding per line).

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::repair;
use crate::error::{one_line, show_bytes};
use crate::format::upper::Formats;

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
    /// An origin record of earlier stratafs versions
    /// (`*.stratafs.origin`), which only stratafs reads.
    LegacyOrigin,
    /// A kernel overlay record (`overlay.origin`, `overlay.impure`,
    /// `overlay.nlink`) that is malformed or where it means nothing.
    OverlayRecord,
    /// An entry of the inode index (`WORKDIR/index`) that does not match
    /// its record, or that no name shows any more.
    IndexEntry,
    /// A redirect record (`overlay.redirect`) that is refused, names
    /// nothing, or that a kernel mount cannot follow.
    Redirect,
    /// A metadata copy (`overlay.metacopy`) whose marker is refused, whose
    /// data file the lower layers lack, or that a kernel mount cannot read.
    Metacopy,
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
            Kind::LegacyOrigin => "legacy-origin",
            Kind::OverlayRecord => "overlay-record",
            Kind::IndexEntry => "index-entry",
            Kind::Redirect => "redirect",
            Kind::Metacopy => "metacopy",
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

/// A finding as JSON.
#[derive(Serialize)]
struct FindingJson<'a> {
    severity: &'static str,
    layer: String,
    path: String,
    kind: &'static str,
    what: &'a str,
    repair: Option<&'a str>,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
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
            show_bytes(self.path.as_os_str().as_encoded_bytes()),
            one_line(&self.what),
            repair
        )
    }

    fn json(&self) -> String {
        let (outcome, error) = match &self.outcome {
            Outcome::NotAttempted => ("not-attempted", None),
            Outcome::Repaired => ("repaired", None),
            Outcome::Failed(e) => ("failed", Some(e.as_str())),
        };
        let j = FindingJson {
            severity: self.severity.as_str(),
            layer: self.area.to_string(),
            path: self.path.to_string_lossy().into_owned(),
            kind: self.kind.as_str(),
            what: &self.what,
            repair: self.repair.as_deref(),
            outcome,
            error,
        };
        json(&j)
    }
}

/// A value as compact JSON (serializing plain strings and numbers cannot
/// fail; an empty string would stand in if it did).
pub(crate) fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A finding before its repair outcome is known.
pub(crate) struct Problem {
    pub(crate) severity: Severity,
    pub(crate) area: Area,
    pub(crate) path: PathBuf,
    pub(crate) kind: Kind,
    pub(crate) what: String,
}

/// The findings of one pass, with the repairs run as they are found when
/// repairing.
pub(crate) struct Findings {
    repair: bool,
    formats: Formats,
    pub(crate) list: Vec<Finding>,
}

impl Findings {
    /// An empty collector; `repair` runs the fixes.
    pub(crate) fn new(repair: bool) -> Findings {
        Findings {
            repair,
            formats: Formats::assume(true),
            list: Vec::new(),
        }
    }

    /// Record a finding that has no repair.
    pub(crate) fn add(&mut self, p: Problem) {
        self.add_with(p, None);
    }

    fn add_with(&mut self, p: Problem, repair: Option<String>) -> usize {
        self.list.push(Finding {
            severity: p.severity,
            area: p.area,
            path: p.path,
            kind: p.kind,
            what: p.what,
            repair,
            outcome: Outcome::NotAttempted,
        });
        self.list.len() - 1
    }

    /// Record a finding with the repair described as `how`; when
    /// repairing, run `fix` and record its outcome.
    pub(crate) fn add_fix(
        &mut self,
        p: Problem,
        how: String,
        fix: impl FnOnce(&Formats) -> repair::Outcome,
    ) {
        let i = self.add_with(p, Some(how));
        if self.repair {
            self.list[i].outcome = match fix(&self.formats) {
                Ok(()) => Outcome::Repaired,
                Err(e) => Outcome::Failed(e),
            };
        }
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

    /// The report as one JSON object, one finding per line.
    pub fn to_json(&self, opts: &CheckOptions) -> String {
        let lowers: Vec<String> = opts
            .lowers
            .iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        let list = |v: &[Finding]| -> String {
            if v.is_empty() {
                return "[]".to_string();
            }
            let items: Vec<String> = v.iter().map(Finding::json).collect();
            format!("[\n  {}\n]", items.join(",\n  "))
        };
        format!(
            "{{\"upper\":{},\"work\":{},\"lowers\":{},\"repair\":{},\"findings\":{},\"remaining\":{},\"problems\":{},\"exit\":{}}}\n",
            json(&opts.upper.to_string_lossy()),
            json(&opts.work.to_string_lossy()),
            json(&lowers),
            self.repaired,
            list(&self.findings),
            list(&self.remaining),
            self.problems(),
            self.exit_code()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(path: &str, outcome: Outcome) -> Finding {
        Finding {
            severity: Severity::Warning,
            area: Area::Lower(2),
            path: PathBuf::from(path),
            kind: Kind::StrayMarker,
            what: "a \"quoted\"\nthing".into(),
            repair: Some("fix".into()),
            outcome,
        }
    }

    #[test]
    fn json_is_escaped_one_finding_per_line() -> Result<(), serde_json::Error> {
        let r = Report {
            findings: vec![
                finding("a\nb", Outcome::Failed("no\tway".into())),
                finding("c", Outcome::Repaired),
            ],
            repaired: true,
            remaining: Vec::new(),
        };
        let out = r.to_json(&CheckOptions::default());
        let v: serde_json::Value = serde_json::from_str(&out)?;
        assert_eq!(v["findings"][0]["path"], "a\nb");
        assert_eq!(v["findings"][0]["layer"], "lower2");
        assert_eq!(v["findings"][0]["outcome"], "failed");
        assert_eq!(v["findings"][0]["error"], "no\tway");
        assert!(v["findings"][1].get("error").is_none());
        assert_eq!(
            (v["problems"].as_u64(), v["exit"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(out.lines().filter(|l| l.contains("\"kind\":")).count(), 2);
        Ok(())
    }

    #[test]
    fn text_lines_carry_no_control_characters() {
        let line = finding("x\u{1b}y", Outcome::NotAttempted).line();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("warning lower2:x\\x1by: "), "{line}");
    }
}
