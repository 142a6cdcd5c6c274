//! `stratafs inspect`: what a layer stack holds, per layer, and what each
//! layer hides from the layers below it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::SetupError;
use crate::store::StoreLayer;
use crate::whiteout::{OPAQUE_FILE, OPAQUE_FO, OPAQUE_TRUSTED, OPAQUE_USER, WH_PREFIX};

/// What one entry of a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Other,
    Whiteout,
}

/// The summary of one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerReport {
    /// Role: `upper` or `lower`.
    pub role: String,
    /// The directory.
    pub path: PathBuf,
    /// Layer id and short link, when from a store.
    pub id: Option<String>,
    /// Short link name.
    pub link: Option<String>,
    /// An `-init` layer.
    pub init: bool,
    /// Entries (files, dirs, links, ...; markers not counted).
    pub entries: u64,
    /// Bytes in regular files.
    pub bytes: u64,
    /// Whiteouts (both forms).
    pub whiteouts: u64,
    /// Opaque directories.
    pub opaque: u64,
    /// Names whiteouts here remove from the layers below.
    pub deletes: Vec<String>,
    /// Non-directories here that shadow entries below.
    pub overrides: Vec<String>,
    /// Opaque directories here that hide entries below.
    pub hidden_by_opaque: Vec<String>,
}

/// A whole stack.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Layers top to bottom (upper first if any).
    pub layers: Vec<LayerReport>,
    /// GraphDriver-style data.
    pub upper: Option<PathBuf>,
    /// Work directory.
    pub work: Option<PathBuf>,
    /// Where the stack is (or would be) mounted.
    pub merged: Option<PathBuf>,
}

struct Walked {
    kinds: BTreeMap<String, Kind>,
    opaque: BTreeSet<String>,
    entries: u64,
    bytes: u64,
    whiteouts: u64,
}

fn is_opaque_dir(p: &Path) -> bool {
    for name in [OPAQUE_TRUSTED, OPAQUE_USER, OPAQUE_FO] {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut buf = [0u8; 8];
        if let Ok(n) = rustix::fs::lgetxattr(p, name.as_str(), &mut buf[..]) {
            if n > 0 && buf[0] == b'y' {
                return true;
            }
        }
    }
    p.join(String::from_utf8_lossy(OPAQUE_FILE).as_ref())
        .symlink_metadata()
        .is_ok()
}

fn walk(root: &Path) -> Result<Walked, SetupError> {
    let mut w = Walked {
        kinds: BTreeMap::new(),
        opaque: BTreeSet::new(),
        entries: 0,
        bytes: 0,
        whiteouts: 0,
    };
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| SetupError::path("cannot read", &dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| SetupError::path("cannot read", &dir, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let rel_child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let md = match ent.path().symlink_metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if name.as_bytes() == OPAQUE_FILE {
                continue;
            }
            if let Some(target) =
                name.strip_prefix(std::str::from_utf8(WH_PREFIX).unwrap_or(".wh."))
            {
                let t = if rel.is_empty() {
                    target.to_string()
                } else {
                    format!("{rel}/{target}")
                };
                w.kinds.insert(t, Kind::Whiteout);
                w.whiteouts += 1;
                continue;
            }
            if md.file_type().is_char_device() && md.rdev() == 0 {
                w.kinds.insert(rel_child, Kind::Whiteout);
                w.whiteouts += 1;
                continue;
            }
            w.entries += 1;
            if md.is_dir() {
                if is_opaque_dir(&ent.path()) {
                    w.opaque.insert(rel_child.clone());
                }
                w.kinds.insert(rel_child.clone(), Kind::Dir);
                stack.push((ent.path(), rel_child));
            } else {
                if md.is_file() {
                    w.bytes += md.len();
                }
                w.kinds.insert(rel_child, Kind::Other);
            }
        }
    }
    Ok(w)
}

/// Inspect `layers` (top first; the first is the upper when `upper` is set).
pub fn inspect(layers: &[StoreLayer], upper: bool) -> Result<Vec<LayerReport>, SetupError> {
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
            role: if upper && i == 0 {
                "upper".into()
            } else {
                "lower".into()
            },
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
pub fn human(n: u64) -> String {
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
pub fn render_text(r: &Report) -> String {
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
            id.truncate(24);
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
        if !l.deletes.is_empty() {
            s.push_str(&format!(
                "      deletes {}: {}\n",
                l.deletes.len(),
                examples(&l.deletes)
            ));
        }
        if !l.overrides.is_empty() {
            s.push_str(&format!(
                "      overrides {}: {}\n",
                l.overrides.len(),
                examples(&l.overrides)
            ));
        }
        if !l.hidden_by_opaque.is_empty() {
            s.push_str(&format!(
                "      opaque over lower contents: {}\n",
                examples(&l.hidden_by_opaque)
            ));
        }
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",")
    )
}

fn json_opt(p: &Option<PathBuf>) -> String {
    match p {
        Some(p) => json_str(&p.to_string_lossy()),
        None => "null".into(),
    }
}

/// The report as JSON, with GraphDriver-style `LowerDir`, `UpperDir`,
/// `WorkDir`, `MergedDir`.
pub fn render_json(r: &Report) -> String {
    let lowers: Vec<String> = r
        .layers
        .iter()
        .filter(|l| l.role == "lower")
        .map(|l| l.path.to_string_lossy().into_owned())
        .collect();
    let layers: Vec<String> = r
        .layers
        .iter()
        .map(|l| {
            format!(
                "{{\"role\":{},\"path\":{},\"id\":{},\"link\":{},\"init\":{},\"entries\":{},\"bytes\":{},\"whiteouts\":{},\"opaque_dirs\":{},\"deletes\":{},\"overrides\":{},\"opaque_over\":{}}}",
                json_str(&l.role),
                json_str(&l.path.to_string_lossy()),
                l.id.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
                l.link.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
                l.init,
                l.entries,
                l.bytes,
                l.whiteouts,
                l.opaque,
                json_list(&l.deletes),
                json_list(&l.overrides),
                json_list(&l.hidden_by_opaque)
            )
        })
        .collect();
    format!(
        "{{\"GraphDriver\":{{\"Name\":\"overlay\",\"Data\":{{\"LowerDir\":{},\"UpperDir\":{},\"WorkDir\":{},\"MergedDir\":{}}}}},\"Layers\":[{}]}}\n",
        json_str(&lowers.join(":")),
        json_opt(&r.upper),
        json_opt(&r.work),
        json_opt(&r.merged),
        layers.join(",")
    )
}
