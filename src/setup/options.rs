//! Command line and `-o` option parsing, compatible with fuse-overlayfs:
//! `stratafs [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W [SOURCE] MOUNTPOINT`.
//!
//! `-o` may repeat; options are separated by `,`; a backslash escapes the
//! next character (`\,` `\:` `\\`) and double quotes protect a value
//! (`context="a:b,c"`). `lowerdir` is split on unescaped `:`, leftmost on top.

use std::path::PathBuf;

use crate::error::SetupError;
use crate::format::idmap::IdMap;

/// Generic FUSE / VFS mount flags accepted on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FuseFlags {
    /// `allow_other`: let every user access the mount.
    pub(crate) allow_other: Option<bool>,
    /// `allow_root`: let root access the mount too.
    pub(crate) allow_root: bool,
    /// `ro`: read-only mount even with an upper dir.
    pub(crate) read_only: bool,
    /// `suid`/`nosuid`.
    pub(crate) suid: Option<bool>,
    /// `dev`/`nodev`.
    pub(crate) dev: Option<bool>,
    /// `exec`/`noexec`.
    pub(crate) exec: Option<bool>,
    /// `atime`/`noatime` (noatime unless `atime`/`relatime`/`strictatime`).
    pub(crate) noatime: bool,
    /// `auto_unmount`: the kernel unmounts if the daemon dies.
    pub(crate) auto_unmount: bool,
    /// `fsname=`.
    pub(crate) fsname: Option<String>,
}

/// The order of merged directory listings (`readdir_order=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum ListOrder {
    /// By name hash (the offsets' own order): the default.
    #[default]
    Hash,
    /// By name, byte by byte.
    Sorted,
    /// By name, backwards.
    Reverse,
    /// In an order drawn from the seed: the same for every listing of a
    /// directory under the same seed.
    Shuffle(u64),
}

/// Where the control socket of a mount is (`control=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ControlAt {
    /// The abstract socket named after the mount's device number, which
    /// `stratafs ctl MNT` finds.
    #[default]
    Default,
    /// No control socket (`control=off`).
    Off,
    /// This socket: a path, or `@NAME` for an abstract name.
    At(String),
}

/// Test-harness options: faults, trace, metrics, listing order, control.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HarnessOptions {
    /// `faults=FILE`: fault rules (TOML), reread on SIGHUP.
    pub(crate) faults: Option<PathBuf>,
    /// `trace=FILE`: one JSON line per request.
    pub(crate) trace: Option<PathBuf>,
    /// `trace_ops=OP[:OP...]`: only these operations in the trace.
    pub(crate) trace_ops: Option<String>,
    /// `trace_path=GLOB`: only requests on matching paths in the trace.
    pub(crate) trace_path: Option<String>,
    /// `readdir_order=`.
    pub(crate) order: ListOrder,
    /// `metrics=0`: no per-request counting and timing.
    pub(crate) no_metrics: bool,
    /// `control=`.
    pub(crate) control: ControlAt,
}

/// Everything the command line says.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MountOptions {
    /// Lower directories, top first.
    pub(crate) lowerdirs: Vec<PathBuf>,
    /// Writable upper directory; `None` gives a read-only mount.
    pub(crate) upperdir: Option<PathBuf>,
    /// Work directory on the upper's filesystem.
    pub(crate) workdir: Option<PathBuf>,
    /// Where to mount.
    pub(crate) mountpoint: PathBuf,
    /// `-f`: stay in the foreground.
    pub(crate) foreground: bool,
    /// `-d` / `debug`: log every request.
    pub(crate) debug: bool,
    /// Kernel cache timeout for entries and attributes, seconds.
    pub(crate) timeout: Option<f64>,
    /// Number of request threads (`threads=`).
    pub(crate) threads: Option<usize>,
    /// Open descriptors the daemon aims to stay below (`max_fds=`).
    pub(crate) max_fds: Option<usize>,
    /// `xattr_permissions=1|2`: keep owner and mode in an xattr.
    pub(crate) xattr_permissions: u8,
    /// `fsync=0` disables fsync of copied-up data (and `volatile` too).
    pub(crate) fsync: bool,
    /// `no_open`: no OPEN and RELEASE requests for existing files; a file
    /// opened for writing is copied up at its first write (see
    /// docs/COMPAT.md). `None` when not given: on for read-only mounts,
    /// where nothing is copied up and it changes nothing a client sees.
    pub(crate) no_open: Option<bool>,
    /// `passthrough[=0|1]`: reads and writes of files whose data is in the
    /// upper layer (every file of a read-only mount) go from the kernel to
    /// the file without a request (FUSE passthrough; root in the initial
    /// user namespace only, not with `no_open`, the default of a read-only
    /// mount, fault rules or a trace). Off unless given.
    pub(crate) passthrough: Option<bool>,
    /// Generic mount flags.
    pub(crate) fuse: FuseFlags,
    /// Ownership presentation (`uidmapping=`, `squash_to_*`).
    pub(crate) ids: crate::format::idmap::Ids,
    /// Test-harness options (`faults=`, `trace=`, `readdir_order=`, ...).
    pub(crate) harness: HarnessOptions,
    /// `redirect_dir=`: whether renamed directories record where their
    /// lower part is, and whether such records are followed.
    pub(crate) redirect_dir: RedirectDir,
    /// Whether `redirect_dir=` was given (`metacopy=on` conflicts with any
    /// value but `on`, as on the kernel).
    pub(crate) redirect_dir_given: bool,
    /// `metacopy=on`: a change of metadata only (chown, chmod, utimes,
    /// setxattr) copies a lower regular file's metadata up, not its data.
    pub(crate) metacopy: bool,
    /// Options that were accepted but not understood (warned about).
    pub(crate) warnings: Vec<String>,
}

/// `redirect_dir=`, with the kernel overlay's names and meanings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum RedirectDir {
    /// `off` (the default): redirects already on disk are followed, none
    /// is written; renaming a directory with lower parts gives `EXDEV`.
    #[default]
    Off,
    /// `follow`: the same as `off`.
    Follow,
    /// `nofollow`: redirects are neither written nor followed (a lookup
    /// that meets one fails with `EPERM`, as on the kernel).
    NoFollow,
    /// `on`: renaming a directory with lower parts records where they are
    /// (`overlay.redirect`) and redirects are followed.
    On,
}

impl RedirectDir {
    /// Whether redirects found on disk are followed.
    pub(crate) fn follow(self) -> bool {
        self != RedirectDir::NoFollow
    }

    /// Whether renames of directories with lower parts write redirects.
    pub(crate) fn write(self) -> bool {
        self == RedirectDir::On
    }
}

/// Options that container engines pass and that have no effect here (yet).
const ACCEPTED_NOOPS: &[&str] = &[
    "private",
    "rw",
    "static_nlink",
    "noacl",
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
pub(crate) fn split_raw(s: &str, sep: char) -> Vec<String> {
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

/// Escape a path for an option value (`\`, `,` and `:` get a `\`): the
/// inverse of [`split_raw`] + [`unescape`].
pub fn escape_path(p: &std::path::Path) -> String {
    let s = p.as_os_str().to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Remove escapes and quotes: `a\,b` -> `a,b`, `"x,y"` -> `x,y`.
pub(crate) fn unescape(s: &str) -> String {
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

/// A file named in an option, made absolute (the daemon rereads it later).
fn option_file(key: &str, v: &str) -> Result<PathBuf, SetupError> {
    if v.is_empty() {
        return Err(SetupError::new(format!("option {key}= is empty")));
    }
    let p = PathBuf::from(v);
    if p.is_absolute() {
        return Ok(p);
    }
    std::env::current_dir()
        .map(|d| d.join(&p))
        .map_err(|e| SetupError::new(format!("option {key}={v}: no current directory: {e}")))
}

fn parse_order(v: &str) -> Result<ListOrder, SetupError> {
    let bad = || {
        SetupError::new(format!(
            "option readdir_order={v}: expected hash, sorted, reverse or shuffle:SEED"
        ))
    };
    Ok(match v {
        "hash" => ListOrder::Hash,
        "sorted" => ListOrder::Sorted,
        "reverse" => ListOrder::Reverse,
        "shuffle" => {
            // No seed given: one from the clock, stable for this mount.
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            log::info!("readdir_order=shuffle:{seed}");
            ListOrder::Shuffle(seed)
        }
        _ => {
            let seed = v.strip_prefix("shuffle:").ok_or_else(bad)?;
            ListOrder::Shuffle(seed.parse().map_err(|_| bad())?)
        }
    })
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
    pub(crate) fn apply_o(&mut self, arg: &str) -> Result<(), SetupError> {
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
            "no_open" => {
                self.no_open = Some(match value {
                    None => true,
                    Some(v) => parse_bool(key, v)?,
                })
            }
            "passthrough" => {
                self.passthrough = Some(match value {
                    None => true,
                    Some(v) => parse_bool(key, v)?,
                })
            }
            "debug" => self.debug = true,
            "allow_other" => self.fuse.allow_other = Some(true),
            "allow_root" => self.fuse.allow_root = true,
            // Always on: permissions are checked by the kernel, from the
            // attributes stratafs reports (the daemon does not check them).
            "default_permissions" => {}
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
            "faults" => self.harness.faults = Some(option_file(key, need(key, value)?)?),
            "trace" => self.harness.trace = Some(option_file(key, need(key, value)?)?),
            "trace_ops" => self.harness.trace_ops = Some(need(key, value)?.to_string()),
            "trace_path" => self.harness.trace_path = Some(need(key, value)?.to_string()),
            "readdir_order" => self.harness.order = parse_order(need(key, value)?)?,
            "metrics" => self.harness.no_metrics = !parse_bool(key, need(key, value)?)?,
            "control" => {
                self.harness.control = match need(key, value)? {
                    "" => return Err(SetupError::new("option control= is empty")),
                    "off" | "0" | "none" => ControlAt::Off,
                    at => ControlAt::At(at.to_string()),
                }
            }
            "redirect_dir" => {
                self.redirect_dir = match need(key, value)? {
                    "on" => RedirectDir::On,
                    "follow" => RedirectDir::Follow,
                    "nofollow" => RedirectDir::NoFollow,
                    "off" => RedirectDir::Off,
                    v => {
                        return Err(SetupError::new(format!(
                            "bad value for redirect_dir: {v:?} (on, follow, nofollow or off)"
                        )))
                    }
                };
                self.redirect_dir_given = true;
            }
            "metacopy" => {
                self.metacopy = match need(key, value)? {
                    "on" => true,
                    "off" => false,
                    v => {
                        return Err(SetupError::new(format!(
                            "bad value for metacopy: {v:?} (on or off)"
                        )))
                    }
                }
            }
            k if ACCEPTED_NOOPS.contains(&k) => {}
            k => self.warnings.push(format!("unknown option {k} ignored")),
        }
        Ok(())
    }

    /// Check the combination of options (not the directories themselves).
    pub(crate) fn validate(&self) -> Result<(), SetupError> {
        // As the kernel: metacopy=on needs redirects (a renamed metadata
        // copy finds its data through one), so it turns redirect_dir=on,
        // and an explicit other value conflicts.
        if self.metacopy && self.redirect_dir_given && self.redirect_dir != RedirectDir::On {
            let v = match self.redirect_dir {
                RedirectDir::Off => "off",
                RedirectDir::Follow => "follow",
                RedirectDir::NoFollow => "nofollow",
                RedirectDir::On => "on",
            };
            return Err(SetupError::new(format!(
                "conflicting options: metacopy=on,redirect_dir={v}"
            )));
        }
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

/// Defaults shared by every parse: fsync on, noatime.
pub(crate) fn defaults() -> MountOptions {
    MountOptions {
        fsync: true,
        fuse: FuseFlags {
            noatime: true,
            ..FuseFlags::default()
        },
        ..MountOptions::default()
    }
}

/// Parse the `-o` arguments and positional arguments of a mount command.
/// The last positional argument is the mount point; an earlier one (the
/// "source" of the mount(8) helper form) is ignored.
pub(crate) fn parse_mount_args(
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
    if opts.metacopy {
        opts.redirect_dir = RedirectDir::On;
    }
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
    fn redirect_dir_values() -> Result<(), SetupError> {
        assert_eq!(parse("lowerdir=/l")?.redirect_dir, RedirectDir::Off);
        for (v, want, follow, write) in [
            ("on", RedirectDir::On, true, true),
            ("follow", RedirectDir::Follow, true, false),
            ("nofollow", RedirectDir::NoFollow, false, false),
            ("off", RedirectDir::Off, true, false),
        ] {
            let got = parse(&format!("lowerdir=/l,redirect_dir={v}"))?.redirect_dir;
            assert_eq!(
                (got, got.follow(), got.write()),
                (want, follow, write),
                "{v}"
            );
        }
        assert!(parse("lowerdir=/l,redirect_dir=yes").is_err());
        assert!(parse("lowerdir=/l,redirect_dir").is_err());
        let o = parse("lowerdir=/l,metacopy=off,userxattr")?;
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert!(!o.metacopy);
        Ok(())
    }

    #[test]
    fn no_open_values() -> Result<(), SetupError> {
        assert_eq!(parse("lowerdir=/l")?.no_open, None);
        assert_eq!(parse("lowerdir=/l,no_open")?.no_open, Some(true));
        assert_eq!(parse("lowerdir=/l,no_open=1")?.no_open, Some(true));
        assert_eq!(parse("lowerdir=/l,no_open,no_open=0")?.no_open, Some(false));
        assert!(parse("lowerdir=/l,no_open=maybe").is_err());
        assert!(parse("lowerdir=/l,no_open")?.warnings.is_empty());
        assert_eq!(parse("lowerdir=/l")?.passthrough, None);
        assert_eq!(parse("lowerdir=/l,passthrough")?.passthrough, Some(true));
        assert_eq!(parse("lowerdir=/l,passthrough=0")?.passthrough, Some(false));
        assert!(parse("lowerdir=/l,passthrough=perhaps").is_err());
        Ok(())
    }

    /// The kernel's rules: metacopy=on turns redirect_dir=on, in either
    /// order with an explicit `on`; any other explicit value conflicts.
    #[test]
    fn metacopy_implies_redirects_and_refuses_conflicts() -> Result<(), SetupError> {
        assert!(!parse("lowerdir=/l")?.metacopy);
        for o in [
            "lowerdir=/l,metacopy=on",
            "lowerdir=/l,metacopy=on,redirect_dir=on",
            "lowerdir=/l,redirect_dir=on,metacopy=on",
            "lowerdir=/l,metacopy=on,userxattr",
            "lowerdir=/l,redirect_dir=off,metacopy=off,metacopy=on,redirect_dir=on",
        ] {
            let got = parse(o)?;
            assert!(got.metacopy, "{o}");
            assert_eq!(got.redirect_dir, RedirectDir::On, "{o}");
        }
        for v in ["off", "follow", "nofollow"] {
            for o in [
                format!("lowerdir=/l,metacopy=on,redirect_dir={v}"),
                format!("lowerdir=/l,redirect_dir={v},metacopy=on"),
            ] {
                let e = parse(&o).err().map(|e| e.to_string());
                assert_eq!(
                    e.as_deref(),
                    Some(format!("conflicting options: metacopy=on,redirect_dir={v}").as_str()),
                    "{o}"
                );
            }
            let o = parse(&format!("lowerdir=/l,metacopy=off,redirect_dir={v}"))?;
            assert!(!o.metacopy);
        }
        assert!(parse("lowerdir=/l,metacopy=yes").is_err());
        assert!(parse("lowerdir=/l,metacopy").is_err());
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

    #[test]
    fn harness_options() -> Result<(), SetupError> {
        let o = parse(
            "lowerdir=/l,faults=/f.toml,trace=/t.jsonl,trace_ops=write:fsync,\
             trace_path=db/**,readdir_order=shuffle:42,metrics=0,control=off",
        )?;
        let h = &o.harness;
        assert_eq!(h.faults, Some(PathBuf::from("/f.toml")));
        assert_eq!(h.trace, Some(PathBuf::from("/t.jsonl")));
        assert_eq!(h.trace_ops.as_deref(), Some("write:fsync"));
        assert_eq!(h.trace_path.as_deref(), Some("db/**"));
        assert_eq!(h.order, ListOrder::Shuffle(42));
        assert!(h.no_metrics);
        assert_eq!(h.control, ControlAt::Off);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        for (v, want) in [
            ("sorted", ListOrder::Sorted),
            ("reverse", ListOrder::Reverse),
            ("hash", ListOrder::Hash),
        ] {
            assert_eq!(
                parse(&format!("lowerdir=/l,readdir_order={v}"))?
                    .harness
                    .order,
                want
            );
        }
        assert!(matches!(
            parse("lowerdir=/l,readdir_order=shuffle")?.harness.order,
            ListOrder::Shuffle(_)
        ));
        let rel = parse("lowerdir=/l,faults=rules.toml")?;
        assert!(rel.harness.faults.is_some_and(|p| p.is_absolute()));
        for bad in [
            "lowerdir=/l,readdir_order=random",
            "lowerdir=/l,readdir_order=shuffle:x",
            "lowerdir=/l,metrics=maybe",
            "lowerdir=/l,faults=",
            "lowerdir=/l,control=",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        Ok(())
    }

    #[test]
    fn default_permissions_is_always_on_and_its_negation_unknown() -> Result<(), SetupError> {
        let o = parse("lowerdir=/l,default_permissions")?;
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        let o = parse("lowerdir=/l,nodefault_permissions")?;
        assert_eq!(
            o.warnings,
            vec!["unknown option nodefault_permissions ignored".to_string()]
        );
        Ok(())
    }
}

/// Fuzzing of the parser (`-o` strings and argv shapes). The number of
/// cases scales with `STRATAFS_FUZZ_CASES` (a multiplier of the defaults,
/// which keep `cargo test --lib` fast; `scripts/test.sh` raises it).
#[cfg(test)]
mod fuzz {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    use super::{escape_path, parse_mount_args};

    fn cases(default: u32) -> u32 {
        let scale = std::env::var("STRATAFS_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        default.saturating_mul(scale)
    }

    const KNOWN_KEYS: &[&str] = &[
        "lowerdir",
        "upperdir",
        "workdir",
        "timeout",
        "threads",
        "uidmapping",
        "gidmapping",
        "squash_to_root",
        "squash_to_uid",
        "squash_to_gid",
        "xattr_permissions",
        "redirect_dir",
        "metacopy",
        "fsync",
        "volatile",
        "no_open",
        "passthrough",
        "debug",
        "allow_other",
        "allow_root",
        "default_permissions",
        "ro",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "noatime",
        "relatime",
        "auto_unmount",
        "fsname",
        "context",
        "userxattr",
        "max_write",
    ];

    /// Characters that mean something to the parser, and some that do not.
    const SPECIALS: &[char] = &[
        '\\',
        '"',
        ',',
        ':',
        '=',
        '/',
        ' ',
        '\n',
        '\r',
        '\t',
        '\0',
        '\u{1b}',
        'é',
        '日',
        '\u{1F600}',
        '\u{202E}',
        '0',
        '9',
    ];

    fn special_char() -> impl Strategy<Value = char> {
        prop_oneof![
            6 => proptest::sample::select(SPECIALS),
            3 => proptest::char::range('a', 'z'),
            1 => any::<char>(),
        ]
    }

    fn fuzz_string(max: usize) -> impl Strategy<Value = String> {
        prop_oneof![
            8 => proptest::collection::vec(special_char(), 0..max).prop_map(|v| v.into_iter().collect()),
            1 => Just(String::new()),
            // Very long values.
            1 => (special_char(), 1000usize..8_000).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
            1 => "[-0-9.eE+a-z]{0,12}",
        ]
    }

    /// One `-o` token: a known or unknown key, maybe with a value.
    fn token() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            6 => proptest::sample::select(KNOWN_KEYS).prop_map(str::to_string),
            2 => fuzz_string(12),
        ];
        (key, proptest::option::of(fuzz_string(40))).prop_map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
    }

    /// One `-o` argument: tokens joined by commas (sometimes doubled or
    /// leading/trailing commas).
    fn o_arg() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => (proptest::collection::vec(token(), 0..6), proptest::sample::select(&[",", ",", ",,", ", "][..]))
                .prop_map(|(t, sep)| t.join(sep)),
            1 => fuzz_string(80),
            1 => Just(String::new()),
        ]
    }

    fn argv() -> impl Strategy<Value = (Vec<String>, Vec<String>, bool, bool)> {
        (
            proptest::collection::vec(o_arg(), 0..4),
            proptest::collection::vec(fuzz_string(30), 0..4),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(mut o, mut pos, fg, dbg, plausible)| {
                // Half of the cases start from a valid command line, so that
                // the fuzzed parts also land in accepted ones.
                if plausible {
                    o.insert(0, "lowerdir=/l".to_string());
                    if pos.is_empty() {
                        pos.push("/mnt".to_string());
                    }
                }
                (o, pos, fg, dbg)
            })
    }

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// Never panics; errors are one non-empty line; successes are complete.
    #[test]
    fn parser_never_panics_and_errors_are_one_line() {
        let runs = AtomicUsize::new(0);
        let (oks, errs) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let start = Instant::now();
        let mut runner = TestRunner::new(config(cases(2_000)));
        let res = runner.run(&argv(), |(o, pos, fg, dbg)| {
            runs.fetch_add(1, Ordering::Relaxed);
            match parse_mount_args(&o, &pos, fg, dbg) {
                Ok(opts) => {
                    oks.fetch_add(1, Ordering::Relaxed);
                    prop_assert!(!opts.lowerdirs.is_empty(), "Ok without lowerdirs");
                    prop_assert!(
                        opts.lowerdirs.iter().all(|l| !l.as_os_str().is_empty()),
                        "empty lowerdir in {:?}",
                        opts.lowerdirs
                    );
                    prop_assert_eq!(Some(opts.mountpoint.clone()), pos.last().map(PathBuf::from));
                    prop_assert!(pos.len() <= 2);
                    prop_assert_eq!(opts.upperdir.is_some(), opts.workdir.is_some());
                    prop_assert!(opts.foreground == fg && (opts.debug || !dbg));
                }
                Err(e) => {
                    errs.fetch_add(1, Ordering::Relaxed);
                    let msg = e.to_string();
                    prop_assert!(!msg.trim().is_empty(), "empty error message");
                    prop_assert!(
                        !msg.contains('\n'),
                        "error message is not one line: {:?}",
                        msg
                    );
                }
            }
            Ok(())
        });
        eprintln!(
            "options fuzz: {} executions ({} ok, {} errors) in {:?}",
            runs.load(Ordering::Relaxed),
            oks.load(Ordering::Relaxed),
            errs.load(Ordering::Relaxed),
            start.elapsed()
        );
        if let Err(e) = res {
            panic!("{e}");
        }
        assert!(
            oks.load(Ordering::Relaxed) > 0,
            "the generator never produced a valid command line"
        );
    }

    /// A path for the round trip: never empty, any character the parser
    /// treats specially.
    fn path_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                3 => special_char().prop_map(|c| if c == '\0' { '@' } else { c }),
                1 => Just('\\'),
                1 => Just(':'),
                1 => Just(','),
            ],
            1..30,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    /// Escape a path for an `-o` value: `\`, `:` and `,` as documented, and `"`
    /// (which the parser also treats as quoting).
    fn escape(p: &str) -> String {
        let mut out = String::new();
        for c in p.chars() {
            if matches!(c, '\\' | ':' | ',' | '"') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn escaped_dir_lists_round_trip() {
        let runs = AtomicUsize::new(0);
        let start = Instant::now();
        let mut runner = TestRunner::new(config(cases(500)));
        let strategy = (
            proptest::collection::vec(path_strategy(), 1..6),
            proptest::option::of((path_strategy(), path_strategy())),
            path_strategy(),
            any::<bool>(),
        );
        let res = runner.run(&strategy, |(lowers, uw, mnt, split)| {
            runs.fetch_add(1, Ordering::Relaxed);
            let lower: Vec<String> = lowers.iter().map(|l| escape(l)).collect();
            let mut o = vec![format!("lowerdir={}", lower.join(":"))];
            if let Some((u, w)) = &uw {
                let rest = format!("upperdir={},workdir={}", escape(u), escape(w));
                // The same options in one -o or spread over two.
                if split {
                    o.push(rest);
                } else {
                    o[0] = format!("{},{rest}", o[0]);
                }
            }
            let opts = parse_mount_args(&o, std::slice::from_ref(&mnt), false, false)
                .map_err(|e| TestCaseError::fail(format!("{o:?}: {e}")))?;
            let want: Vec<PathBuf> = lowers.iter().map(PathBuf::from).collect();
            prop_assert_eq!(&opts.lowerdirs, &want, "-o {:?}", o);
            prop_assert_eq!(opts.upperdir, uw.as_ref().map(|(u, _)| PathBuf::from(u)));
            prop_assert_eq!(opts.workdir, uw.as_ref().map(|(_, w)| PathBuf::from(w)));
            prop_assert_eq!(opts.mountpoint, PathBuf::from(&mnt));
            prop_assert!(opts.warnings.is_empty(), "{:?}", opts.warnings);
            Ok(())
        });
        eprintln!(
            "options round trip: {} executions in {:?}",
            runs.load(Ordering::Relaxed),
            start.elapsed()
        );
        if let Err(e) = res {
            panic!("{e}");
        }
    }

    /// Control characters from option values must not reach the terminal
    /// either: a `\r` in an echoed value rewrites the line, an ESC starts a
    /// terminal escape sequence.
    #[test]
    fn error_messages_carry_no_control_characters() {
        let runs = AtomicUsize::new(0);
        let mut runner = TestRunner::new(config(cases(500)));
        let res = runner.run(&argv(), |(o, pos, fg, dbg)| {
            runs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = parse_mount_args(&o, &pos, fg, dbg) {
                let msg = e.to_string();
                prop_assert!(
                    !msg.chars().any(char::is_control),
                    "control character in error message: {:?}",
                    msg
                );
            }
            Ok(())
        });
        eprintln!(
            "control characters: {} executions",
            runs.load(Ordering::Relaxed)
        );
        if let Err(e) = res {
            panic!("{e}");
        }
    }

    /// An empty mount point is no mount point.
    #[test]
    fn empty_mount_point_is_rejected() {
        for pos in [vec![String::new()], vec!["src".to_string(), String::new()]] {
            let r = parse_mount_args(&["lowerdir=/l".to_string()], &pos, false, false);
            assert!(r.is_err(), "{pos:?} accepted: {r:?}");
        }
    }

    /// Escaping for option values round-trips through the parser.
    #[test]
    fn escape_path_round_trips() {
        let mut runner = TestRunner::new(config(cases(500)));
        let strategy = proptest::collection::vec(
            path_strategy().prop_filter("no quotes", |p| !p.contains('"')),
            1..5,
        );
        let res = runner.run(&strategy, |lowers| {
            let paths: Vec<PathBuf> = lowers.iter().map(PathBuf::from).collect();
            let esc: Vec<String> = paths.iter().map(|p| escape_path(p)).collect();
            let o = format!("lowerdir={}", esc.join(":"));
            let opts = parse_mount_args(
                std::slice::from_ref(&o),
                &["/mnt".to_string()],
                false,
                false,
            )
            .map_err(|e| TestCaseError::fail(format!("{o:?}: {e}")))?;
            prop_assert_eq!(&opts.lowerdirs, &paths);
            Ok(())
        });
        if let Err(e) = res {
            panic!("{e}");
        }
    }
}
