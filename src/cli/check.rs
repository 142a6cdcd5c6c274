//! `stratafs check`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::out;
use crate::setup::options;
use crate::tools::check::{check, CheckOptions};

/// Offline check of an upper and work directory (run while unmounted).
///
/// Reports stray or conflicting whiteouts and opaque markers, markers the
/// kernel overlay does not read, malformed override_stat xattrs and kernel
/// records (overlay.origin, impure, nlink, redirect: refused values,
/// targets that do not exist, records a kernel mount cannot follow),
/// origin records of earlier
/// stratafs versions, inode index entries (WORKDIR/index) the kernel would
/// refuse or remove, and leftovers in WORKDIR/work, one finding per line: severity, layer:path
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
    /// for whiteouts that hide nothing, and the conversion of earlier
    /// origin records.
    #[arg(long, value_name = "DIR[:DIR...]", action = clap::ArgAction::Append)]
    lower: Vec<String>,

    /// Fix what is safe: clear WORKDIR/work; turn empty .wh.NAME files into
    /// char 0/0 whiteouts where mknod is permitted; remove whiteouts beside
    /// a real entry (the entry wins) or a char whiteout of the same name,
    /// and whiteouts inside opaque directories; turn .wh..wh..opq into an
    /// opaque xattr; remove unreadable origin records and orphaned index
    /// entries; with --lower, convert earlier origin records to the
    /// kernel's. Only while the overlay is not mounted.
    #[arg(long)]
    repair: bool,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Run `stratafs check` with `args` (`args[0]` is `check`); returns the exit
/// status.
pub(super) fn run(args: Vec<OsString>) -> i32 {
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
                eprintln!("stratafs check: --lower {l}: empty directory in the list");
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
            eprintln!("stratafs check: {e}");
            return 2;
        }
    };
    out(&if cli.json {
        report.to_json(&opts)
    } else {
        report.to_text()
    });
    report.exit_code()
}
