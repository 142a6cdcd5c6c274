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
//! * opaque xattrs with a value other than exactly `y` (`x` only means
//!   something in a lower layer with xwhiteouts);
//! * malformed `*.override_stat` values (`UID:GID:OCTALMODE[:TYPE]`);
//! * kernel records that are malformed or mean nothing where they are
//!   (`overlay.origin` that is no record, `overlay.impure` on a file or not
//!   `y`, `overlay.nlink` that is no count);
//! * redirect records (`overlay.redirect`) the mount refuses (a value
//!   that could leave a layer root), that name no lower directory, that
//!   point at their own path, or that a kernel mount cannot follow
//!   (`user.overlay.redirect`); below a renamed directory the lower
//!   directories its record names are the ones checked against;
//! * origin records of earlier stratafs versions (`*.stratafs.origin`);
//! * the inode index (`WORKDIR/index`): names that are no record and
//!   entries without an origin (the kernel refuses to mount with
//!   `index=on`), entries whose origin is not their name, orphans;
//! * leftovers in `WORKDIR/work` and `WORKDIR/index`;
//! * with lower layers given: lower layers that do not exist, and whiteouts
//!   that hide nothing in any of them.
//!
//! `--repair` fixes what is safe: it clears `WORKDIR/work`, converts empty
//! `.wh.NAME` files into char 0/0 whiteouts where `mknod` is permitted,
//! removes whiteouts that sit beside a real entry (the entry wins, as
//! stratafs reads it) or beside a char whiteout of the same name, removes
//! whiteouts inside opaque directories, turns `.wh..wh..opq` into an
//! opaque xattr, removes origin records nobody can read and orphaned index
//! entries, and (with the lower layers given) converts earlier versions'
//! origin records to the kernel's where the lower object at the same path
//! is the one they name. Nothing the merged view shows and nothing that
//! may be data (a `.wh.` file with content, a `.wh.` directory) is ever
//! removed; an orphaned index entry is a copy no name shows any more (the
//! kernel overlay removes those at mount).
//!
//! Every on-disk rule comes from `format` and every resolution from
//! `core::resolve`, the same code the mount runs. Every access below the
//! given directories is relative to a directory descriptor and never
//! follows a symlink.
//!
//! Modules: `report` (findings and their text and JSON forms), `walk` (the
//! scan over the work and upper directories), `rules` (what is checked in
//! each upper directory), `repair` (the fixes).
mod repair;
mod report;
mod rules;
mod walk;

pub(crate) use report::json as json_string;
pub use report::{Area, CheckOptions, Finding, Kind, Outcome, Report, Severity};

use crate::error::SetupError;

/// Check (and with `opts.repair`, repair) the upper and work directory.
/// An error means the check could not run at all (exit status 2).
pub fn check(opts: &CheckOptions) -> Result<Report, SetupError> {
    let findings = walk::run(opts, opts.repair)?;
    let remaining = if opts.repair {
        walk::run(opts, false)?
    } else {
        Vec::new()
    };
    Ok(Report {
        findings,
        repaired: opts.repair,
        remaining,
    })
}
