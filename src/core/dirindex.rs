//! The index of a lower directory: what it holds, read once with one
//! listing, so that lookups of names it lacks cost no system call.
//!
//! Only for directories that never change while mounted (lower layers, not
//! the upper). It keeps a sorted list of the hashes of every name and the
//! set of names its `.wh.NAME` files hide.

use std::collections::HashSet;
use std::os::fd::AsFd;

use super::names::name_hash;
use crate::error::Result;
use crate::format::whiteout::{marker, Marker};
use crate::sys::fd::open_dir_read;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct DirIndex {
    hidden: HashSet<Box<[u8]>>,
    hashes: Box<[u64]>,
}

impl DirIndex {
    /// Read `dir`'s entries.
    pub(crate) fn read(dir: impl AsFd) -> Result<DirIndex> {
        let rd = open_dir_read(dir)?;
        let mut hidden = HashSet::new();
        let mut hashes = Vec::new();
        for ent in rustix::fs::Dir::new(rd)? {
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            hashes.push(name_hash(name));
            if let Some(Marker::Hides(target)) = marker(name) {
                hidden.insert(Box::from(target));
            }
        }
        hashes.sort_unstable();
        hashes.dedup();
        Ok(DirIndex {
            hidden,
            hashes: hashes.into_boxed_slice(),
        })
    }

    /// Whether a `.wh.` file in this directory hides `name`.
    pub(crate) fn hides(&self, name: &[u8]) -> bool {
        self.hidden.contains(name)
    }

    /// Whether the directory certainly has no entry `name`.
    pub(crate) fn lacks(&self, name: &[u8]) -> bool {
        self.hashes.binary_search(&name_hash(name)).is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_knows_names_and_aufs_whiteouts() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        for n in ["a", ".wh.b", ".wh..wh..opq", ".wh..wh.c"] {
            std::fs::write(dir.path().join(n), "")?;
        }
        std::fs::create_dir(dir.path().join("sub"))?;
        let fd = rustix::fs::open(
            dir.path(),
            rustix::fs::OFlags::PATH,
            rustix::fs::Mode::empty(),
        )?;
        let idx = DirIndex::read(&fd)?;
        assert!(!idx.lacks(b"a") && !idx.lacks(b"sub") && !idx.lacks(b".wh.b"));
        assert!(idx.lacks(b"b") && idx.lacks(b"zzz"));
        assert!(idx.hides(b"b"));
        assert!(!idx.hides(b"a") && !idx.hides(b".wh.c") && !idx.hides(b""));
        Ok(())
    }
}
