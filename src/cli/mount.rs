//! Mounting: the plain command line and `stratafs mount --store`.

use std::ffi::OsString;

use clap::Parser;

use super::{fail, init_log};
use crate::fuse::daemon;
use crate::setup::options::parse_mount_args;
use crate::setup::store::Chain;

/// Rootless userspace overlay filesystem.
///
/// Mounts LOWERDIRs (leftmost on top) under a writable UPPERDIR at
/// MOUNTPOINT: `stratafs -o lowerdir=L1:L2,upperdir=U,workdir=W MOUNTPOINT`.
/// Without upperdir the mount is read-only. In -o values a backslash
/// escapes `,` `:` and `\`; double quotes protect a value.
///
/// Other commands: `stratafs mount --store DIR ID MOUNTPOINT` (a layer of a
/// Docker or containers-storage overlay store), `stratafs inspect`, `stratafs
/// check`, `stratafs ctl MOUNTPOINT ...` (fault rules, trace and metrics of a
/// live mount), `stratafs stats MOUNTPOINT`; each has its own --help.
#[derive(Parser, Debug)]
#[command(name = "stratafs", version, about, long_about)]
struct Cli {
    /// Mount options, comma separated; -o may repeat.
    /// Layers: lowerdir=DIR[:DIR...] (top first), upperdir=DIR, workdir=DIR
    /// (same filesystem as upperdir).
    /// Ownership: uidmapping=C:H:S[:C:H:S...] and gidmapping=... (show
    /// on-disk ids C.. as H.., map writes back; unmapped ids show as
    /// 65534), squash_to_root, squash_to_uid=N, squash_to_gid=N,
    /// xattr_permissions=0|1|2 (keep owner and mode in
    /// security.fuseoverlayfs.override_stat (1) or
    /// user.containers.override_stat (2)).
    /// Behaviour: timeout=SECONDS (kernel cache of entries and attributes,
    /// default 86400), threads=N, fsync=0|1 (fsync copied-up data, default
    /// 1), volatile (= fsync=0), max_fds=N (open descriptors to stay below:
    /// directories the kernel keeps are dropped from its cache beyond that;
    /// default 3/4 of the open-file limit, at most 65536), no_open[=0|1]
    /// (the kernel opens existing files without asking the daemon: no OPEN
    /// and RELEASE round trips, reads and writes are served by inode; a
    /// file opened for writing is copied up at its first write or
    /// truncate, not at the open as on the kernel overlay, so an open for
    /// writing that writes nothing leaves the upper unchanged; off by
    /// default, on by default for a read-only mount, where it changes
    /// nothing; ignored with faults=), passthrough[=0|1] (root outside a
    /// user namespace only: reads and writes of files whose data is in the
    /// upper layer go from the kernel to the upper file without a request,
    /// as fast as on the kernel overlay for large files, a little slower
    /// for many small new ones; off by default; ignored with no_open,
    /// faults= or trace=; on a read-only mount only with no_open=0, and
    /// then for every file),
    /// debug,
    /// redirect_dir=on|follow|nofollow|off (on: renaming a directory that
    /// has lower content works, recorded in overlay.redirect as the kernel
    /// overlay does; off (default) and follow: such records are followed,
    /// none written, the rename fails with EXDEV; nofollow: a record is
    /// refused with EPERM. A kernel mount reads records written as root
    /// with redirect_dir=on; rootless ones (user.overlay.redirect) only
    /// stratafs follows), metacopy=on|off (on: chown, chmod, utimes and
    /// setxattr of a lower file copy its metadata only, marked
    /// overlay.metacopy, and the data stays below until the first open for
    /// writing or truncate, as the kernel overlay does; use it where
    /// metadata of big lower trees changes, such as chown -R in container
    /// builds; implies redirect_dir=on and conflicts with another explicit
    /// value; default off, which refuses such files with EPERM as the
    /// kernel does. A kernel mount with metacopy=on reads such uppers
    /// written as root; rootless ones (user.overlay.metacopy) only
    /// stratafs reads).
    /// Test harness (docs/HARNESS.md): faults=FILE (fault rules, TOML
    /// [[rule]] tables with op, path, errno, delay_ms, short, corrupt,
    /// size/mode/mtime, noop, probability, seed, nth, after, times, pid,
    /// uid; SIGHUP rereads the file instead of unmounting), trace=FILE (a
    /// JSON line per request: op, path, result, ...), trace_ops=OP[:OP...]
    /// and trace_path=GLOB (what the trace keeps), metrics=0|1 (request
    /// counts and latencies, default 1), readdir_order=hash|sorted|reverse|
    /// shuffle[:SEED] (order of directory listings, default hash),
    /// control=off|PATH|@NAME (the control socket; default
    /// @stratafs/ctl/MAJOR:MINOR, found by `stratafs ctl MOUNTPOINT`).
    /// FUSE/VFS: ro, rw, allow_other, allow_root, suid/nosuid, dev/nodev,
    /// exec/noexec, noatime (default), atime, auto_unmount, fsname=NAME;
    /// default_permissions is always on (the kernel checks permissions).
    /// Accepted and ignored (container engines pass them): context=,
    /// private, static_nlink, noacl, noxattrs=, index=,
    /// xino=, userxattr, writeback=, fast_ino=, threaded=,
    /// max_write=, empty options. Unknown options: a warning.
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    options: Vec<String>,

    #[command(flatten)]
    run: RunFlags,

    /// [SOURCE] MOUNTPOINT (the source of the mount(8) helper form is ignored).
    #[arg(value_name = "MOUNTPOINT", required = true, num_args = 1..=2)]
    args: Vec<String>,
}

/// How the daemon runs (both mount forms).
#[derive(clap::Args, Debug)]
struct RunFlags {
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,

    /// Log every request (implies -f).
    #[arg(short = 'd')]
    debug: bool,
}

/// `stratafs mount --store DIR ID MOUNTPOINT`: mount a layer of a Docker or
/// containers-storage overlay store with its whole chain.
#[derive(Parser, Debug)]
#[command(name = "stratafs mount", version)]
struct MountCmd {
    /// The store directory (e.g. /var/lib/docker/overlay2).
    #[arg(long, value_name = "DIR")]
    store: std::path::PathBuf,
    /// Mount the chain and the layer's own diff read-only (no upper).
    #[arg(long)]
    read_only: bool,
    /// Extra mount options, as for the plain command line.
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    options: Vec<String>,
    #[command(flatten)]
    run: RunFlags,
    /// The layer id (its directory name in the store).
    id: String,
    /// Where to mount.
    mountpoint: String,
}

/// The plain command line.
pub(super) fn plain(argv: Vec<OsString>) -> i32 {
    let cli = Cli::parse_from(argv);
    let debug = cli.run.debug
        || cli
            .options
            .iter()
            .any(|o| o.split(',').any(|t| t == "debug"));
    init_log(debug);
    match parse_mount_args(
        &cli.options,
        &cli.args,
        cli.run.foreground || cli.run.debug,
        debug,
    ) {
        Ok(opts) => daemon::run(&opts),
        Err(e) => fail(e),
    }
}

/// `stratafs mount --store`.
pub(super) fn store(args: Vec<OsString>) -> i32 {
    let cmd = MountCmd::parse_from(args);
    init_log(cmd.run.debug);
    let opts = Chain::resolve(&cmd.store, &cmd.id)
        .and_then(|chain| chain.mount_options(cmd.read_only))
        .and_then(|o| {
            let mut all = vec![o];
            all.extend(cmd.options);
            parse_mount_args(
                &all,
                &[cmd.mountpoint],
                cmd.run.foreground || cmd.run.debug,
                cmd.run.debug,
            )
        });
    match opts {
        Ok(opts) => daemon::run(&opts),
        Err(e) => fail(e),
    }
}
