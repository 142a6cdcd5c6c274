//! The `stratafs` command.

use clap::Parser;

/// Rootless userspace overlay filesystem.
///
/// Mounts LOWERDIRs (leftmost on top) under a writable UPPERDIR at
/// MOUNTPOINT: `stratafs -o lowerdir=L1:L2,upperdir=U,workdir=W MOUNTPOINT`.
/// Without upperdir the mount is read-only. In -o values a backslash
/// escapes `,` `:` and `\`.
#[derive(Parser, Debug)]
#[command(name = "stratafs", version, about, long_about = None)]
struct Cli {
    /// Mount options, comma separated (may repeat): lowerdir=DIR[:DIR...],
    /// upperdir=DIR, workdir=DIR, timeout=SECONDS, threads=N, fsync=0|1,
    /// volatile, ro, allow_other, allow_root, default_permissions,
    /// suid/nosuid, dev/nodev, exec/noexec, noatime, auto_unmount, debug.
    /// Unknown options are ignored with a warning.
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

fn main() {
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
