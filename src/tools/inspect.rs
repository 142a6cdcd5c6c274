//! `stratafs inspect`: what a layer stack holds, per layer, and what each
//! layer hides from the layers below it.
//!
//! Markers are read with the mount's own rules (`format`); every access
//! below a layer's root is relative to a directory descriptor and never
//! follows a symlink.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use serde::Serialize;

use crate::error::{describe, show_bytes, Errno, SetupError};
use crate::format::opaque;
use crate::format::whiteout::{self, marker, Marker};
use crate::setup::store::StoreLayer;
use crate::sys::fd;

/// What one entry of a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Other,
    Whiteout,
}

/// The summary of one layer.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct LayerReport {
    /// Role: `upper` or `lower`.
    pub(crate) role: &'static str,
    /// The directory.
    pub(crate) path: PathBuf,
    /// Layer id, when from a store.
    pub(crate) id: Option<String>,
    /// Short link name.
    pub(crate) link: Option<String>,
    /// An `-init` layer.
    pub(crate) init: bool,
    /// Entries (files, dirs, links, ...; markers not counted).
    pub(crate) entries: u64,
    /// Bytes in regular files.
    pub(crate) bytes: u64,
    /// Whiteouts (both forms).
    pub(crate) whiteouts: u64,
    /// Opaque directories.
    #[serde(rename = "opaque_dirs")]
    pub(crate) opaque: u64,
    /// Names whiteouts here remove from the layers below.
    pub(crate) deletes: Vec<String>,
    /// Non-directories here that shadow entries below.
    pub(crate) overrides: Vec<String>,
    /// Opaque directories here that hide entries below.
    #[serde(rename = "opaque_over")]
    pub(crate) hidden_by_opaque: Vec<String>,
}

/// A whole stack.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    /// Layers top to bottom (upper first if any).
    pub(crate) layers: Vec<LayerReport>,
    /// GraphDriver-style data.
    pub(crate) upper: Option<PathBuf>,
    /// Work directory.
    pub(crate) work: Option<PathBuf>,
    /// Where the stack is (or would be) mounted.
    pub(crate) merged: Option<PathBuf>,
}

#[derive(Default)]
struct Walked {
    kinds: BTreeMap<String, Kind>,
    opaque: BTreeSet<String>,
    entries: u64,
    bytes: u64,
    whiteouts: u64,
}

fn rel_name(rel: &str, name: &[u8]) -> String {
    let name = show_bytes(name);
    if rel.is_empty() {
        name
    } else {
        format!("{rel}/{name}")
    }
}

fn walk(root: &Path) -> Result<Walked, SetupError> {
    let fail = |p: &str, e: Errno| SetupError::path("cannot read", &root.join(p), describe(e));
    let top = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("", e))?;
    let mut w = Walked::default();
    let mut stack: Vec<(OwnedFd, String)> = vec![(top, String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = fd::open_dir_read(&dir).map_err(|e| fail(&rel, e))?;
        for ent in rustix::fs::Dir::new(rd).map_err(|e| fail(&rel, e))? {
            let ent = ent.map_err(|e| fail(&rel, e))?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(st) = fd::stat_at(&dir, name) else {
                continue;
            };
            match marker(name) {
                Some(Marker::Hides(target)) => {
                    w.kinds.insert(rel_name(&rel, target), Kind::Whiteout);
                    w.whiteouts += 1;
                    continue;
                }
                Some(Marker::Stray) => {
                    w.whiteouts += 1;
                    continue;
                }
                Some(Marker::Opaque) => continue,
                None => {}
            }
            let path = rel_name(&rel, name);
            if whiteout::is_whiteout(&st) {
                w.kinds.insert(path, Kind::Whiteout);
                w.whiteouts += 1;
                continue;
            }
            w.entries += 1;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let sub = rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| fail(&path, e))?;
                    if opaque::is_opaque(&sub).unwrap_or(false) {
                        w.opaque.insert(path.clone());
                    }
                    w.kinds.insert(path.clone(), Kind::Dir);
                    stack.push((sub, path));
                }
                kind => {
                    if kind == FileType::RegularFile {
                        w.bytes += st.st_size as u64;
                    }
                    w.kinds.insert(path, Kind::Other);
                }
            }
        }
    }
    Ok(w)
}

/// Inspect `layers` (top first; the first is the upper when `upper` is set).
pub(crate) fn inspect(layers: &[StoreLayer], upper: bool) -> Result<Vec<LayerReport>, SetupError> {
    let walked: Vec<Walked> = layers
        .iter()
        .map(|l| walk(&l.diff))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (i, (l, w)) in layers.iter().zip(&walked).enumerate() {
        let below = &walked[i + 1..];
        let present_below = |p: &str| {
            below
                .iter()
                .any(|b| matches!(b.kinds.get(p), Some(Kind::Dir | Kind::Other)))
        };
        let mut r = LayerReport {
            role: if upper && i == 0 { "upper" } else { "lower" },
            path: l.diff.clone(),
            id: l.id.clone(),
            link: l.link.clone(),
            init: l.init,
            entries: w.entries,
            bytes: w.bytes,
            whiteouts: w.whiteouts,
            opaque: w.opaque.len() as u64,
            ..LayerReport::default()
        };
        for (p, k) in &w.kinds {
            match k {
                Kind::Whiteout if present_below(p) => r.deletes.push(p.clone()),
                Kind::Other if present_below(p) => r.overrides.push(p.clone()),
                _ => {}
            }
        }
        for d in &w.opaque {
            let prefix = format!("{d}/");
            if below
                .iter()
                .any(|b| b.kinds.keys().any(|k| k.starts_with(&prefix)))
            {
                r.hidden_by_opaque.push(d.clone());
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Bytes for people: `1.5 MiB`.
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn examples(v: &[String]) -> String {
    let mut s = v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 3 {
        s.push_str(&format!(", ... (+{})", v.len() - 3));
    }
    s
}

/// The report as a table for people.
pub(crate) fn render_text(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<3} {:<6} {:<28} {:>8} {:>10} {:>9} {:>6}  PATH\n",
        "#", "ROLE", "ID / LINK", "ENTRIES", "SIZE", "WHITEOUTS", "OPAQUE"
    ));
    for (i, l) in r.layers.iter().enumerate() {
        let mut id =
            l.id.clone()
                .or_else(|| l.link.clone())
                .unwrap_or_else(|| "-".into());
        if id.len() > 24 {
            let cut = (0..=24)
                .rev()
                .find(|i| id.is_char_boundary(*i))
                .unwrap_or(0);
            id.truncate(cut);
            id.push('…');
        }
        if l.init {
            id.push_str(" (init)");
        }
        s.push_str(&format!(
            "{:<3} {:<6} {:<28} {:>8} {:>10} {:>9} {:>6}  {}\n",
            i,
            l.role,
            id,
            l.entries,
            human(l.bytes),
            l.whiteouts,
            l.opaque,
            l.path.display()
        ));
        for (what, v) in [
            ("deletes", &l.deletes),
            ("overrides", &l.overrides),
            ("opaque over lower contents", &l.hidden_by_opaque),
        ] {
            if !v.is_empty() {
                let n = if what.starts_with("opaque") {
                    String::new()
                } else {
                    format!(" {}", v.len())
                };
                s.push_str(&format!("      {what}{n}: {}\n", examples(v)));
            }
        }
    }
    s
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GraphData<'a> {
    lower_dir: String,
    upper_dir: Option<&'a Path>,
    work_dir: Option<&'a Path>,
    merged_dir: Option<&'a Path>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GraphDriver<'a> {
    name: &'static str,
    data: GraphData<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InspectJson<'a> {
    graph_driver: GraphDriver<'a>,
    layers: &'a [LayerReport],
}

/// The report as JSON, with GraphDriver-style `LowerDir`, `UpperDir`,
/// `WorkDir`, `MergedDir`.
pub(crate) fn render_json(r: &Report) -> String {
    let lowers: Vec<String> = r
        .layers
        .iter()
        .filter(|l| l.role == "lower")
        .map(|l| l.path.to_string_lossy().into_owned())
        .collect();
    let j = InspectJson {
        graph_driver: GraphDriver {
            name: "overlay",
            data: GraphData {
                lower_dir: lowers.join(":"),
                upper_dir: r.upper.as_deref(),
                work_dir: r.work.as_deref(),
                merged_dir: r.merged.as_deref(),
            },
        },
        layers: &r.layers,
    };
    let mut out = super::check::json_string(&j);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_report_deletes_overrides_and_opaque() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let (up, low) = (t.path().join("up"), t.path().join("low"));
        for d in ["up/o", "low/o", "low/d"] {
            std::fs::create_dir_all(t.path().join(d))?;
        }
        std::fs::write(low.join("f"), "12345")?;
        std::fs::write(low.join("o/x"), "")?;
        std::fs::write(low.join("gone"), "")?;
        std::fs::write(up.join("f"), "1")?;
        std::fs::write(up.join(".wh.gone"), "")?;
        std::fs::write(up.join("o/.wh..wh..opq"), "")?;
        // "yes" is not opaque (exactly "y" is).
        crate::sys::xattr::set(
            rustix::fs::open(low.join("d"), OFlags::RDONLY, Mode::empty())?,
            b"user.overlay.opaque",
            b"yes",
            rustix::fs::XattrFlags::empty(),
        )?;
        let layer = |p: &Path| StoreLayer {
            id: None,
            link: None,
            diff: p.to_path_buf(),
            init: false,
        };
        let r = inspect(&[layer(&up), layer(&low)], true).map_err(std::io::Error::other)?;
        assert_eq!(r[0].deletes, vec!["gone"]);
        assert_eq!(r[0].overrides, vec!["f"]);
        assert_eq!(r[0].hidden_by_opaque, vec!["o"]);
        assert_eq!((r[1].entries, r[1].bytes, r[1].opaque), (5, 5, 0));
        let json = render_json(&Report {
            layers: r,
            upper: Some(up.clone()),
            ..Report::default()
        });
        let v: serde_json::Value = serde_json::from_str(&json).map_err(std::io::Error::other)?;
        assert_eq!(
            v["GraphDriver"]["Data"]["LowerDir"],
            low.to_string_lossy().as_ref()
        );
        assert_eq!(v["Layers"][0]["opaque_over"][0], "o");
        assert!(v["GraphDriver"]["Data"]["WorkDir"].is_null());
        Ok(())
    }
}
