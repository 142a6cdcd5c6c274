//! `stratafs inspect`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::{fail, init_log, out};
use crate::error::SetupError;
use crate::setup::options;
use crate::setup::store::{Chain, StoreLayer};
use crate::tools::inspect::{inspect, render_json, render_text, Report};

/// `stratafs inspect`: the layers of a stack top to bottom, what each holds
/// and what it hides from the layers below.
#[derive(Parser, Debug)]
#[command(name = "stratafs inspect", version)]
struct InspectCmd {
    /// A store directory; give the layer id as argument.
    #[arg(long, value_name = "DIR", requires = "id")]
    store: Option<PathBuf>,
    /// Or a stack as mount options: lowerdir=...[,upperdir=...,workdir=...].
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append, conflicts_with = "store")]
    options: Vec<String>,
    /// Machine-readable output (with GraphDriver-style LowerDir, UpperDir,
    /// WorkDir, MergedDir).
    #[arg(long)]
    json: bool,
    /// The layer id (with --store).
    id: Option<String>,
}

fn layer(diff: &std::path::Path) -> StoreLayer {
    StoreLayer {
        id: None,
        link: None,
        diff: diff.to_path_buf(),
        init: false,
    }
}

fn report(cmd: &InspectCmd) -> Result<Report, SetupError> {
    let (layers, upper, work, merged) = match (&cmd.store, &cmd.id) {
        (Some(store), Some(id)) => {
            let c = Chain::resolve(store, id)?;
            let upper = (!c.parents.is_empty()).then(|| c.top.diff.clone());
            let mut layers = vec![c.top.clone()];
            layers.extend(c.parents.iter().cloned());
            (layers, upper, Some(c.work.clone()), Some(c.merged.clone()))
        }
        _ => {
            if cmd.options.is_empty() {
                return Err(SetupError::new(
                    "give --store DIR ID, or -o lowerdir=...[,upperdir=...]",
                ));
            }
            let mut o = options::defaults();
            for arg in &cmd.options {
                o.apply_o(arg)?;
            }
            if o.lowerdirs.is_empty() {
                return Err(SetupError::new(
                    "no lower directory given: use -o lowerdir=DIR[:DIR...]",
                ));
            }
            let mut layers: Vec<StoreLayer> = o.upperdir.iter().map(|u| layer(u)).collect();
            layers.extend(o.lowerdirs.iter().map(|l| layer(l)));
            (layers, o.upperdir.clone(), o.workdir.clone(), None)
        }
    };
    Ok(Report {
        layers: inspect(&layers, upper.is_some())?,
        upper,
        work,
        merged,
    })
}

/// Run `stratafs inspect` with `args` (`args[0]` is `inspect`).
pub(super) fn run(args: Vec<OsString>) -> i32 {
    let cmd = InspectCmd::parse_from(args);
    init_log(false);
    match report(&cmd) {
        Ok(r) if cmd.json => {
            out(&render_json(&r));
            0
        }
        Ok(r) => {
            out(&render_text(&r));
            0
        }
        Err(e) => fail(e),
    }
}
