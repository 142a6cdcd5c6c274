//! The `stratafs` command.

use clap::Parser;

/// Rootless userspace overlay filesystem.
///
/// Mounts LOWERDIRs (leftmost on top) under a writable UPPERDIR at
/// MOUNTPOINT: `stratafs -o lowerdir=L1:L2,upperdir=U,workdir=W MOUNTPOINT`.
/// Without upperdir the mount is read-only. In -o values a backslash
/// escapes `,` `:` and `\`; double quotes protect a value.
///
/// Other commands: `stratafs mount --store DIR ID MOUNTPOINT` (a layer of a
/// Docker or containers-storage overlay store), `stratafs inspect`, `stratafs
/// check`; each has its own --help.
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
    /// default 3/4 of the open-file limit, at most 65536), debug.
    /// FUSE/VFS: ro, rw, allow_other, allow_root, default_permissions
    /// (always on), suid/nosuid, dev/nodev, exec/noexec, noatime (default),
    /// atime, auto_unmount, fsname=NAME.
    /// Accepted and ignored (container engines pass them): context=,
    /// private, static_nlink, noacl, noxattrs=, redirect_dir=, index=,
    /// metacopy=, xino=, userxattr, writeback=, fast_ino=, threaded=,
    /// max_write=, empty options. Unknown options: a warning.
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    options: Vec<String>,

    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,

    /// Log every request (implies -f).
    #[arg(short = 'd')]
    debug: bool,

    /// [SOURCE] MOUNTPOINT (the source of the mount(8) helper form is ignored).
    #[arg(value_name = "MOUNTPOINT", required = true, num_args = 1..=2)]
    args: Vec<String>,
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
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Log every request (implies -f).
    #[arg(short = 'd')]
    debug: bool,
    /// The layer id (its directory name in the store).
    id: String,
    /// Where to mount.
    mountpoint: String,
}

/// `stratafs inspect`: the layers of a stack top to bottom, what each holds
/// and what it hides from the layers below.
#[derive(Parser, Debug)]
#[command(name = "stratafs inspect", version)]
struct InspectCmd {
    /// A store directory; give the layer id as argument.
    #[arg(long, value_name = "DIR", requires = "id")]
    store: Option<std::path::PathBuf>,
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

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("stratafs: {e}");
    std::process::exit(1);
}

fn init_log(debug: bool) {
    let level = if debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
}

fn mount_store(args: Vec<std::ffi::OsString>) -> ! {
    let cmd = MountCmd::parse_from(args);
    init_log(cmd.debug);
    let chain = stratafs::store::Chain::resolve(&cmd.store, &cmd.id).unwrap_or_else(|e| fail(e));
    let mut o = vec![chain
        .mount_options(cmd.read_only)
        .unwrap_or_else(|e| fail(e))];
    o.extend(cmd.options);
    let opts = stratafs::options::parse_mount_args(
        &o,
        &[cmd.mountpoint],
        cmd.foreground || cmd.debug,
        cmd.debug,
    )
    .unwrap_or_else(|e| fail(e));
    std::process::exit(stratafs::daemon::run(&opts));
}

fn inspect(args: Vec<std::ffi::OsString>) -> ! {
    use stratafs::store::StoreLayer;
    let cmd = InspectCmd::parse_from(args);
    init_log(false);
    let layer = |diff: &std::path::Path| StoreLayer {
        id: None,
        link: None,
        diff: diff.to_path_buf(),
        init: false,
    };
    let (layers, upper, work, merged) = match (&cmd.store, &cmd.id) {
        (Some(store), Some(id)) => {
            let c = stratafs::store::Chain::resolve(store, id).unwrap_or_else(|e| fail(e));
            let upper = (!c.parents.is_empty()).then(|| c.top.diff.clone());
            let mut layers = vec![c.top.clone()];
            layers.extend(c.parents.iter().cloned());
            (layers, upper, Some(c.work.clone()), Some(c.merged.clone()))
        }
        _ => {
            if cmd.options.is_empty() {
                fail("give --store DIR ID, or -o lowerdir=...[,upperdir=...]");
            }
            let mut o = stratafs::options::defaults();
            for arg in &cmd.options {
                o.apply_o(arg).unwrap_or_else(|e| fail(e));
            }
            if o.lowerdirs.is_empty() {
                fail("no lower directory given: use -o lowerdir=DIR[:DIR...]");
            }
            let mut layers: Vec<StoreLayer> = o.upperdir.iter().map(|u| layer(u)).collect();
            layers.extend(o.lowerdirs.iter().map(|l| layer(l)));
            (layers, o.upperdir.clone(), o.workdir.clone(), None)
        }
    };
    let report = stratafs::inspect::Report {
        layers: stratafs::inspect::inspect(&layers, upper.is_some()).unwrap_or_else(|e| fail(e)),
        upper,
        work,
        merged,
    };
    if cmd.json {
        print!("{}", stratafs::inspect::render_json(&report));
    } else {
        print!("{}", stratafs::inspect::render_text(&report));
    }
    std::process::exit(0);
}

fn main() {
    // Subcommands; anything else is the fuse-overlayfs-compatible command
    // line (mount at ./mount or ./inspect by writing the path with a `/`).
    // Arguments are passed on as given (clap reports arguments that are not
    // UTF-8 where a string is needed; collecting them as `String`s here
    // would panic).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("mount") => mount_store(argv[1..].to_vec()),
        Some("inspect") => inspect(argv[1..].to_vec()),
        Some("check") => std::process::exit(stratafs::check::run_cli(&argv[1..])),
        _ => {}
    }
    let cli = Cli::parse();
    let debug = cli.debug
        || cli
            .options
            .iter()
            .any(|o| o.split(',').any(|t| t == "debug"));
    let level = if debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let opts = match stratafs::options::parse_mount_args(
        &cli.options,
        &cli.args,
        cli.foreground || cli.debug,
        debug,
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("stratafs: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(stratafs::daemon::run(&opts));
}
