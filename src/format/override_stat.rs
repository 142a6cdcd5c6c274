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

use crate::sys::xattr;

/// `xattr_permissions=1`.
const SECURITY: &[u8] = b"security.fuseoverlayfs.override_stat";
/// `xattr_permissions=2` (containers-storage).
pub(crate) const CONTAINERS: &[u8] = b"user.containers.override_stat";
/// Older fuse-overlayfs unprivileged mode.
const LEGACY_USER: &[u8] = b"user.fuseoverlayfs.override_stat";

/// Names in the order a layer root is probed.
pub(crate) const NAMES: [&[u8]; 3] = [SECURITY, CONTAINERS, LEGACY_USER];

/// The override xattr a layer root carries, if any.
pub(crate) fn probe_root(root: impl AsFd) -> Option<&'static [u8]> {
    let root = root.as_fd();
    NAMES.into_iter().find(|n| xattr::get(root, n).is_ok())
}

/// The xattr selected by `xattr_permissions=N`.
pub(crate) fn for_option(n: u8) -> Option<&'static [u8]> {
    match n {
        1 => Some(SECURITY),
        2 => Some(CONTAINERS),
        _ => None,
    }
}

/// A parsed override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Override {
    /// Owner.
    pub(crate) uid: u32,
    /// Group.
    pub(crate) gid: u32,
    /// Permission bits (with setuid/setgid/sticky).
    pub(crate) perm: u32,
    /// File type bits and device number, when the value names them.
    pub(crate) kind: Option<(u32, u64)>,
}

fn parse_type(t: &str) -> Result<(u32, u64), String> {
    let dev = |rest: &str| -> Option<u64> {
        let (maj, min) = rest.split_once('-')?;
        Some(rustix::fs::makedev(decimal(maj)?, decimal(min)?))
    };
    let bad = || {
        format!("type {t:?} is not file, dir, symlink, pipe, socket, block-MAJ-MIN or char-MAJ-MIN")
    };
    if let Some(rest) = t.strip_prefix("block-") {
        return Ok((libc::S_IFBLK, dev(rest).ok_or_else(bad)?));
    }
    if let Some(rest) = t.strip_prefix("char-") {
        return Ok((libc::S_IFCHR, dev(rest).ok_or_else(bad)?));
    }
    let m = match t {
        "file" => libc::S_IFREG,
        "dir" => libc::S_IFDIR,
        "symlink" => libc::S_IFLNK,
        "pipe" => libc::S_IFIFO,
        "socket" => libc::S_IFSOCK,
        _ => return Err(bad()),
    };
    Ok((m, 0))
}

/// A decimal number without sign or spaces.
fn decimal(f: &str) -> Option<u32> {
    if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    f.parse().ok()
}

/// File-type bits a MODE may carry.
const KNOWN_TYPES: [u32; 8] = [
    0,
    libc::S_IFREG,
    libc::S_IFDIR,
    libc::S_IFLNK,
    libc::S_IFIFO,
    libc::S_IFSOCK,
    libc::S_IFBLK,
    libc::S_IFCHR,
];

impl Override {
    /// Parse `UID:GID:MODE[:TYPE]`; `None` (with a logged warning) when the
    /// value is malformed, so the on-disk values apply.
    pub(crate) fn parse(v: &[u8]) -> Option<Override> {
        match Self::parse_checked(v) {
            Ok(o) => Some(o),
            Err(why) => {
                log::warn!(
                    "ignoring malformed override_stat value {:?}: {why}",
                    String::from_utf8_lossy(v)
                );
                None
            }
        }
    }

    /// Parse `UID:GID:MODE[:TYPE]` (trailing NULs of C writers allowed), or
    /// say what is wrong with the value. The one definition of a valid
    /// value, shared by the daemon and `stratafs check`.
    pub(crate) fn parse_checked(v: &[u8]) -> Result<Override, String> {
        let s = std::str::from_utf8(v)
            .map_err(|_| "not UTF-8".to_string())?
            .trim_end_matches('\0');
        let fields: Vec<&str> = s.split(':').collect();
        let [uid, gid, m, rest @ ..] = fields.as_slice() else {
            return Err(format!(
                "{} field(s), expected UID:GID:MODE[:TYPE]",
                fields.len()
            ));
        };
        if rest.len() > 1 {
            return Err(format!(
                "{} fields, expected UID:GID:MODE[:TYPE]",
                fields.len()
            ));
        }
        let uid = decimal(uid).ok_or_else(|| format!("uid {uid:?} is not a decimal number"))?;
        let gid = decimal(gid).ok_or_else(|| format!("gid {gid:?} is not a decimal number"))?;
        if m.is_empty() || !m.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!("mode {m:?} is not an octal number"));
        }
        let mode = u32::from_str_radix(m, 8)
            .ok()
            .filter(|&m| m <= 0o177_777)
            .ok_or_else(|| format!("mode {m:?} is out of range"))?;
        let fmt = mode & libc::S_IFMT;
        if !KNOWN_TYPES.contains(&fmt) {
            return Err(format!("mode {m:?} has unknown file type bits"));
        }
        let kind = match rest.first() {
            Some(t) => Some(parse_type(t)?),
            None if fmt != 0 => Some((fmt, 0)),
            None => None,
        };
        Ok(Override {
            uid,
            gid,
            perm: mode & 0o7777,
            kind,
        })
    }

    /// The value as written: `UID:GID:MODE[:TYPE]`.
    pub(crate) fn format(&self) -> String {
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
    pub(crate) fn of_stat(st: &Stat) -> Override {
        Override {
            uid: st.st_uid,
            gid: st.st_gid,
            perm: st.st_mode & 0o7777,
            kind: None,
        }
    }

    /// Apply to a stat result.
    pub(crate) fn apply(&self, st: &mut Stat) {
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
pub(crate) fn applies_to(st: &Stat) -> bool {
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
