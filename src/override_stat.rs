//! Ownership and mode overrides kept in xattrs (`xattr_permissions=`,
//! containers-storage `force_mask`).
//!
//! Where the real owner and mode cannot be stored (rootless, NFS), engines
//! keep them in an xattr `UID:GID:MODE[:TYPE]` on the object: MODE is octal
//! (it may carry the file-type bits), TYPE is `file`, `dir`, `symlink`,
//! `pipe`, `socket`, `block-MAJ-MIN` or `char-MAJ-MIN`. Which xattr a layer
//! uses is decided by its root directory: the first of
//! `security.fuseoverlayfs.override_stat`, `user.containers.override_stat`,
//! `user.fuseoverlayfs.override_stat` present there. The upper's is chosen by
//! `xattr_permissions=1` (security) or `2` (containers). Overrides apply to
//! regular files and directories on disk; chown and chmod on the upper then
//! rewrite the xattr instead of the inode.

use std::os::fd::AsFd;

use rustix::fs::{FileType, Stat};

use crate::xattr;

/// `xattr_permissions=1`.
pub const SECURITY: &[u8] = b"security.fuseoverlayfs.override_stat";
/// `xattr_permissions=2` (containers-storage).
pub const CONTAINERS: &[u8] = b"user.containers.override_stat";
/// Older fuse-overlayfs unprivileged mode.
pub const LEGACY_USER: &[u8] = b"user.fuseoverlayfs.override_stat";

/// Names in the order a layer root is probed.
pub const NAMES: [&[u8]; 3] = [SECURITY, CONTAINERS, LEGACY_USER];

/// The override xattr a layer root carries, if any.
pub fn probe_root(root: impl AsFd) -> Option<&'static [u8]> {
    let root = root.as_fd();
    NAMES.into_iter().find(|n| xattr::get(root, n).is_ok())
}

/// The xattr selected by `xattr_permissions=N`.
pub fn for_option(n: u8) -> Option<&'static [u8]> {
    match n {
        1 => Some(SECURITY),
        2 => Some(CONTAINERS),
        _ => None,
    }
}

/// A parsed override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits (with setuid/setgid/sticky).
    pub perm: u32,
    /// File type bits and device number, when the value names them.
    pub kind: Option<(u32, u64)>,
}

fn parse_type(t: &str) -> Option<(u32, u64)> {
    let dev = |rest: &str| -> Option<u64> {
        let (maj, min) = rest.split_once('-')?;
        Some(rustix::fs::makedev(maj.parse().ok()?, min.parse().ok()?))
    };
    if let Some(rest) = t.strip_prefix("block-") {
        return Some((libc::S_IFBLK, dev(rest)?));
    }
    if let Some(rest) = t.strip_prefix("char-") {
        return Some((libc::S_IFCHR, dev(rest)?));
    }
    let m = match t {
        t if t.starts_with("file") => libc::S_IFREG,
        t if t.starts_with("dir") => libc::S_IFDIR,
        t if t.starts_with("symlink") => libc::S_IFLNK,
        t if t.starts_with("pipe") => libc::S_IFIFO,
        t if t.starts_with("socket") => libc::S_IFSOCK,
        _ => return None,
    };
    Some((m, 0))
}

impl Override {
    /// Parse `UID:GID:MODE[:TYPE]`; `None` (with a logged warning) when the
    /// value is malformed, so the on-disk values apply.
    pub fn parse(v: &[u8]) -> Option<Override> {
        let s = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
        let mut it = s.split(':');
        let (uid, gid, mode) = (it.next()?, it.next()?, it.next()?);
        let ty = it.next();
        let parsed = (|| {
            let mode = u32::from_str_radix(mode, 8).ok()?;
            let kind = match ty {
                Some(t) => Some(parse_type(t)?),
                None if mode & libc::S_IFMT != 0 => Some((mode & libc::S_IFMT, 0)),
                None => None,
            };
            Some(Override {
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                perm: mode & 0o7777,
                kind,
            })
        })();
        if parsed.is_none() {
            log::warn!("ignoring malformed override_stat value {s:?}");
        }
        parsed
    }

    /// The value as written: `UID:GID:MODE[:TYPE]`.
    pub fn format(&self) -> String {
        let base = format!("{}:{}:{:04o}", self.uid, self.gid, self.perm);
        match self.kind {
            None => base,
            Some((t, rdev)) => {
                let name = match t {
                    libc::S_IFREG => "file".to_string(),
                    libc::S_IFDIR => "dir".to_string(),
                    libc::S_IFLNK => "symlink".to_string(),
                    libc::S_IFIFO => "pipe".to_string(),
                    libc::S_IFSOCK => "socket".to_string(),
                    libc::S_IFBLK => format!(
                        "block-{}-{}",
                        rustix::fs::major(rdev),
                        rustix::fs::minor(rdev)
                    ),
                    _ => format!(
                        "char-{}-{}",
                        rustix::fs::major(rdev),
                        rustix::fs::minor(rdev)
                    ),
                };
                format!("{base}:{name}")
            }
        }
    }

    /// The override matching an object's real stat.
    pub fn of_stat(st: &Stat) -> Override {
        Override {
            uid: st.st_uid,
            gid: st.st_gid,
            perm: st.st_mode & 0o7777,
            kind: None,
        }
    }

    /// Apply to a stat result.
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        let fmt = match self.kind {
            Some((t, rdev)) => {
                st.st_rdev = rdev;
                t
            }
            None => st.st_mode & libc::S_IFMT,
        };
        st.st_mode = fmt | self.perm;
    }
}

/// Whether overrides apply to an object of this on-disk type.
pub fn applies_to(st: &Stat) -> bool {
    matches!(
        FileType::from_raw_mode(st.st_mode),
        FileType::RegularFile | FileType::Directory
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let o = Override::parse(b"1000:1000:0755").unwrap_or(Override {
            uid: 1,
            gid: 1,
            perm: 0,
            kind: None,
        });
        assert_eq!((o.uid, o.gid, o.perm, o.kind), (1000, 1000, 0o755, None));
        assert_eq!(o.format(), "1000:1000:0755");
        let d = Override::parse(b"0:0:0660:char-1-3");
        assert_eq!(
            d.map(|d| d.kind),
            Some(Some((libc::S_IFCHR, rustix::fs::makedev(1, 3))))
        );
        let full = Override::parse(b"5:6:100644");
        assert_eq!(
            full.map(|f| (f.perm, f.kind)),
            Some((0o644, Some((libc::S_IFREG, 0))))
        );
        for bad in [
            &b"x:0:0755"[..],
            b"0:0",
            b"0:0:999",
            b"0:0:0755:weird",
            b"\xff",
        ] {
            assert_eq!(Override::parse(bad), None);
        }
    }
}
