//! Command line and `-o` option parsing, compatible with fuse-overlayfs:
//! `stratafs [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W [SOURCE] MOUNTPOINT`.
//!
//! `-o` may repeat; options are separated by `,`; a backslash escapes the
//! next character (`\,` `\:` `\\`) and double quotes protect a value
//! (`context="a:b,c"`). `lowerdir` is split on unescaped `:`, leftmost on top.

use std::path::PathBuf;

use crate::error::SetupError;
use crate::idmap::IdMap;

/// Generic FUSE / VFS mount flags accepted on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FuseFlags {
    /// `allow_other`: let every user access the mount.
    pub allow_other: Option<bool>,
    /// `allow_root`: let root access the mount too.
    pub allow_root: bool,
    /// `default_permissions` (on unless `nodefault_permissions`).
    pub default_permissions: bool,
    /// `ro`: read-only mount even with an upper dir.
    pub read_only: bool,
    /// `suid`/`nosuid`.
    pub suid: Option<bool>,
    /// `dev`/`nodev`.
    pub dev: Option<bool>,
    /// `exec`/`noexec`.
    pub exec: Option<bool>,
    /// `atime`/`noatime` (noatime unless `atime`/`relatime`/`strictatime`).
    pub noatime: bool,
    /// `auto_unmount`: the kernel unmounts if the daemon dies.
    pub auto_unmount: bool,
    /// `fsname=`.
    pub fsname: Option<String>,
}

/// Everything the command line says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountOptions {
    /// Lower directories, top first.
    pub lowerdirs: Vec<PathBuf>,
    /// Writable upper directory; `None` gives a read-only mount.
    pub upperdir: Option<PathBuf>,
    /// Work directory on the upper's filesystem.
    pub workdir: Option<PathBuf>,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `-d` / `debug`: log every request.
    pub debug: bool,
    /// Kernel cache timeout for entries and attributes, seconds.
    pub timeout: Option<f64>,
    /// Number of request threads (`threads=`).
    pub threads: Option<usize>,
    /// Open descriptors the daemon aims to stay below (`max_fds=`).
    pub max_fds: Option<usize>,
    /// `xattr_permissions=1|2`: keep owner and mode in an xattr.
    pub xattr_permissions: u8,
    /// `fsync=0` disables fsync of copied-up data (and `volatile` too).
    pub fsync: bool,
    /// Generic mount flags.
    pub fuse: FuseFlags,
    /// Ownership presentation (`uidmapping=`, `squash_to_*`).
    pub ids: crate::idmap::Ids,
    /// Options that were accepted but not understood (warned about).
    pub warnings: Vec<String>,
}

/// Options that container engines pass and that have no effect here (yet).
const ACCEPTED_NOOPS: &[&str] = &[
    "private",
    "rw",
    "static_nlink",
    "noacl",
    "redirect_dir",
    "fast_ino",
    "writeback",
    "threaded",
    "noxattrs",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "max_write",
    "max_read",
    "userxattr",
    "index",
    "metacopy",
    "xino",
    "nfs_export",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "dirsync",
    "subtype",
    "blksize",
    "large_read",
    "kernel_cache",
    "auto_cache",
    "hard_remove",
    "use_ino",
    "plugins",
    "debug_fuse",
];

/// Split `s` at every unescaped, unquoted `sep`. Escapes and quotes are kept
/// so that a later split (of `lowerdir` on `:`) still sees them.
pub fn split_raw(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Remove escapes and quotes: `a\,b` -> `a,b`, `"x,y"` -> `x,y`.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '"' => {}
            c => out.push(c),
        }
    }
    out
}

fn parse_bool(key: &str, v: &str) -> Result<bool, SetupError> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(SetupError::new(format!(
            "option {key}={v}: expected 0 or 1"
        ))),
    }
}

fn parse_id(key: &str, v: &str) -> Result<u32, SetupError> {
    v.parse::<u32>()
        .ok()
        .filter(|i| *i != u32::MAX)
        .ok_or_else(|| SetupError::new(format!("option {key}={v}: not a user or group id")))
}

fn parse_dir_list(key: &str, raw: &str) -> Result<Vec<PathBuf>, SetupError> {
    let mut dirs = Vec::new();
    for part in split_raw(raw, ':') {
        let p = unescape(&part);
        if p.is_empty() {
            return Err(SetupError::new(format!(
                "option {key}={}: empty directory in the list",
                unescape(raw)
            )));
        }
        dirs.push(PathBuf::from(p));
    }
    Ok(dirs)
}

impl MountOptions {
    /// Apply one `-o` argument (a comma-separated list).
    pub fn apply_o(&mut self, arg: &str) -> Result<(), SetupError> {
        for tok in split_raw(arg, ',') {
            if tok.is_empty() {
                continue;
            }
            let (key, raw) = match tok.find('=') {
                Some(i) => (tok[..i].to_string(), Some(tok[i + 1..].to_string())),
                None => (tok.clone(), None),
            };
            let key = unescape(&key);
            let value = raw.as_deref().map(unescape);
            self.apply_one(&key, raw.as_deref(), value.as_deref())?;
        }
        Ok(())
    }

    fn apply_one(
        &mut self,
        key: &str,
        raw: Option<&str>,
        value: Option<&str>,
    ) -> Result<(), SetupError> {
        fn need<'v>(key: &str, v: Option<&'v str>) -> Result<&'v str, SetupError> {
            v.ok_or_else(|| SetupError::new(format!("option {key} needs a value ({key}=...)")))
        }
        match key {
            "lowerdir" => {
                let raw = need(key, raw)?;
                self.lowerdirs = parse_dir_list(key, raw)?;
            }
            "upperdir" => {
                let v = need(key, value)?;
                if v.is_empty() {
                    return Err(SetupError::new("option upperdir= is empty"));
                }
                self.upperdir = Some(PathBuf::from(v));
            }
            "workdir" => {
                let v = need(key, value)?;
                if v.is_empty() {
                    return Err(SetupError::new("option workdir= is empty"));
                }
                self.workdir = Some(PathBuf::from(v));
            }
            "timeout" => {
                let v = need(key, value)?;
                let t: f64 = v
                    .parse()
                    .ok()
                    .filter(|t: &f64| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| {
                        SetupError::new(format!("option timeout={v}: not a number of seconds"))
                    })?;
                self.timeout = Some(t);
            }
            "threads" => {
                let v = need(key, value)?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| {
                        SetupError::new(format!("option threads={v}: expected 1 to 1024"))
                    })?;
                self.threads = Some(n);
            }
            "max_fds" => {
                let v = need(key, value)?;
                let n: usize = v.parse().ok().filter(|n| *n >= 64).ok_or_else(|| {
                    SetupError::new(format!("option max_fds={v}: expected a number, 64 or more"))
                })?;
                self.max_fds = Some(n);
            }
            "uidmapping" => self.ids.uid.ranges = IdMap::parse(key, need(key, value)?)?,
            "gidmapping" => self.ids.gid.ranges = IdMap::parse(key, need(key, value)?)?,
            "squash_to_root" => {
                self.ids.uid.squash = Some(0);
                self.ids.gid.squash = Some(0);
            }
            "squash_to_uid" => self.ids.uid.squash = Some(parse_id(key, need(key, value)?)?),
            "squash_to_gid" => self.ids.gid.squash = Some(parse_id(key, need(key, value)?)?),
            "xattr_permissions" => {
                let v = need(key, value)?;
                self.xattr_permissions = match v {
                    "0" => 0,
                    "1" => 1,
                    "2" => 2,
                    _ => {
                        return Err(SetupError::new(format!(
                            "option xattr_permissions={v}: expected 0, 1 or 2"
                        )))
                    }
                };
            }
            "fsync" => self.fsync = parse_bool(key, need(key, value)?)?,
            "volatile" => self.fsync = false,
            "debug" => self.debug = true,
            "allow_other" => self.fuse.allow_other = Some(true),
            "allow_root" => self.fuse.allow_root = true,
            "default_permissions" => self.fuse.default_permissions = true,
            "ro" => self.fuse.read_only = true,
            "suid" => self.fuse.suid = Some(true),
            "nosuid" => self.fuse.suid = Some(false),
            "dev" => self.fuse.dev = Some(true),
            "nodev" => self.fuse.dev = Some(false),
            "exec" => self.fuse.exec = Some(true),
            "noexec" => self.fuse.exec = Some(false),
            "noatime" | "nodiratime" => self.fuse.noatime = true,
            "atime" | "relatime" | "strictatime" => self.fuse.noatime = false,
            "auto_unmount" => self.fuse.auto_unmount = true,
            "fsname" => self.fuse.fsname = Some(need(key, value)?.to_string()),
            k if ACCEPTED_NOOPS.contains(&k) => {}
            k => self.warnings.push(format!("unknown option {k} ignored")),
        }
        Ok(())
    }

    /// Check the combination of options (not the directories themselves).
    pub fn validate(&self) -> Result<(), SetupError> {
        if self.lowerdirs.is_empty() {
            return Err(SetupError::new(
                "no lower directory given: use -o lowerdir=DIR[:DIR...]",
            ));
        }
        match (&self.upperdir, &self.workdir) {
            (Some(_), None) => Err(SetupError::new("upperdir= needs workdir= as well")),
            (None, Some(_)) => Err(SetupError::new("workdir= needs upperdir= as well")),
            _ => Ok(()),
        }
    }
}

/// Defaults shared by every parse: fsync on, default_permissions, noatime.
pub fn defaults() -> MountOptions {
    MountOptions {
        fsync: true,
        fuse: FuseFlags {
            default_permissions: true,
            noatime: true,
            ..FuseFlags::default()
        },
        ..MountOptions::default()
    }
}

/// Parse the `-o` arguments and positional arguments of a mount command.
/// The last positional argument is the mount point; an earlier one (the
/// "source" of the mount(8) helper form) is ignored.
pub fn parse_mount_args(
    o_args: &[String],
    positional: &[String],
    foreground: bool,
    debug: bool,
) -> Result<MountOptions, SetupError> {
    let mut opts = defaults();
    opts.foreground = foreground;
    opts.debug = debug;
    for o in o_args {
        opts.apply_o(o)?;
    }
    let Some(mnt) = positional.last().filter(|m| !m.is_empty()) else {
        return Err(SetupError::new("no mount point given"));
    };
    if positional.len() > 2 {
        return Err(SetupError::new(format!(
            "too many arguments: {}",
            positional.join(" ")
        )));
    }
    opts.mountpoint = PathBuf::from(mnt);
    opts.validate()?;
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(o: &str) -> Result<MountOptions, SetupError> {
        parse_mount_args(&[o.to_string()], &["/mnt".to_string()], false, false)
    }

    #[test]
    fn lowerdir_order_and_escapes() -> Result<(), SetupError> {
        let o = parse(r"lowerdir=/a\:b:/c\,d:/e\\f,upperdir=/u,workdir=/w")?;
        assert_eq!(
            o.lowerdirs,
            vec![
                PathBuf::from("/a:b"),
                PathBuf::from("/c,d"),
                PathBuf::from(r"/e\f")
            ]
        );
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(o.workdir, Some(PathBuf::from("/w")));
        Ok(())
    }

    #[test]
    fn quoted_context_and_empty_options() -> Result<(), SetupError> {
        let o = parse(r#"lowerdir=/l,,context="system_u:object_r:c:s0:c1,c2",nodev"#)?;
        assert_eq!(o.lowerdirs, vec![PathBuf::from("/l")]);
        assert_eq!(o.fuse.dev, Some(false));
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        Ok(())
    }

    #[test]
    fn repeated_o_and_unknown_warns() -> Result<(), SetupError> {
        let o = parse_mount_args(
            &[
                "lowerdir=/l".into(),
                "frobnicate,upperdir=/u,workdir=/w".into(),
            ],
            &["src".into(), "/m".into()],
            true,
            false,
        )?;
        assert_eq!(o.mountpoint, PathBuf::from("/m"));
        assert_eq!(o.warnings.len(), 1);
        assert!(o.foreground);
        Ok(())
    }

    #[test]
    fn errors_are_one_line() {
        for bad in [
            "upperdir=/u,workdir=/w",
            "lowerdir=/a::/b",
            "lowerdir=/a,upperdir=/u",
            "lowerdir=/a,timeout=x",
            "lowerdir",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.to_string().contains('\n'));
            assert!(!e.to_string().is_empty());
        }
    }
}
