//! Layer stores of Docker (`/var/lib/docker/overlay2`) and
//! containers-storage (`.../storage/overlay`): each layer is `<store>/<ID>/`
//! with `diff/` (its files), `link` (a short id), `lower` (the chain
//! `l/SHORT1:l/SHORT2:...`, nearest parent first), `work/`, and
//! `<store>/l/SHORT -> ../<ID>/diff`. Container layers have an `<ID>-init`
//! parent (hosts, resolv.conf).

use std::path::{Path, PathBuf};

use crate::error::SetupError;

/// One layer of a resolved chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreLayer {
    /// The layer id (directory name in the store), when known.
    pub(crate) id: Option<String>,
    /// Its short link name (`l/SHORT`), when known.
    pub(crate) link: Option<String>,
    /// The layer's `diff` directory.
    pub(crate) diff: PathBuf,
    /// An `-init` layer (engine-written hosts files; left out of commits).
    pub(crate) init: bool,
}

/// A layer and its chain, as a mount needs them.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    /// The layer itself.
    pub(crate) top: StoreLayer,
    /// Its parents, nearest first.
    pub(crate) parents: Vec<StoreLayer>,
    /// `<ID>/work`.
    pub(crate) work: PathBuf,
    /// `<ID>/merged`, where engines mount it.
    pub(crate) merged: PathBuf,
}

fn read_trimmed(path: &Path) -> Result<Option<String>, SetupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SetupError::path("cannot read", path, e)),
    }
}

/// The id a `diff` directory belongs to (`<store>/<ID>/diff`).
fn id_of_diff(store: &Path, diff: &Path) -> Option<String> {
    let canon_store = std::fs::canonicalize(store).ok()?;
    let layer_dir = diff.parent()?;
    (layer_dir.parent()? == canon_store)
        .then(|| {
            layer_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .flatten()
}

impl Chain {
    /// Resolve layer `id` of the store at `store`.
    pub(crate) fn resolve(store: &Path, id: &str) -> Result<Chain, SetupError> {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." || id == "l" {
            return Err(SetupError::new(format!("not a layer id: {id:?}")));
        }
        let layer_dir = store.join(id);
        if !layer_dir.is_dir() {
            return Err(SetupError::path(
                "no layer",
                &layer_dir,
                "no such directory",
            ));
        }
        let diff = layer_dir.join("diff");
        if !diff.is_dir() {
            return Err(SetupError::path(
                "layer without diff/:",
                &diff,
                "no such directory",
            ));
        }
        let link = read_trimmed(&layer_dir.join("link"))?;
        let mut parents = Vec::new();
        if let Some(lower) = read_trimmed(&layer_dir.join("lower"))? {
            for entry in lower.split(':').filter(|e| !e.is_empty()) {
                let link_path = store.join(entry);
                let target = std::fs::canonicalize(&link_path).map_err(|_| {
                    SetupError::new(format!(
                        "dangling link {entry} (in {}): {} does not resolve",
                        layer_dir.join("lower").display(),
                        link_path.display()
                    ))
                })?;
                let pid = id_of_diff(store, &target);
                parents.push(StoreLayer {
                    init: pid.as_deref().is_some_and(|p| p.ends_with("-init")),
                    id: pid,
                    link: entry.strip_prefix("l/").map(str::to_string),
                    diff: target,
                });
            }
        }
        Ok(Chain {
            top: StoreLayer {
                id: Some(id.to_string()),
                link,
                diff,
                init: id.ends_with("-init"),
            },
            parents,
            work: layer_dir.join("work"),
            merged: layer_dir.join("merged"),
        })
    }

    /// `-o` options: the layer's diff as upper (or, read-only, as the top
    /// lower) over its parents.
    pub(crate) fn mount_options(&self, read_only: bool) -> Result<String, SetupError> {
        let mut lowers: Vec<&Path> = Vec::new();
        if read_only {
            lowers.push(&self.top.diff);
        }
        lowers.extend(self.parents.iter().map(|p| p.diff.as_path()));
        let empty = self.work.with_file_name("empty");
        if lowers.is_empty() {
            // A base layer: an empty lower, as containers-storage does.
            if !empty.is_dir() {
                std::fs::create_dir(&empty)
                    .map_err(|e| SetupError::path("cannot create", &empty, e))?;
            }
            lowers.push(&empty);
        }
        let esc: Vec<String> = lowers
            .iter()
            .map(|p| super::options::escape_path(p))
            .collect();
        let mut o = format!("lowerdir={}", esc.join(":"));
        if !read_only {
            if !self.work.is_dir() {
                std::fs::create_dir(&self.work)
                    .map_err(|e| SetupError::path("cannot create", &self.work, e))?;
            }
            o.push_str(&format!(
                ",upperdir={},workdir={}",
                super::options::escape_path(&self.top.diff),
                super::options::escape_path(&self.work)
            ));
        }
        Ok(o)
    }
}
