//! The `stratafs` command: the fuse-overlayfs-compatible mount command line
//! and the subcommands `mount --store`, `inspect`, `check`, `ctl` and
//! `stats`, each with its own `--help`. `main.rs` only calls [`main`].

mod check;
mod ctl;
mod inspect;
mod mount;

use std::ffi::OsString;

/// Run the command with the process's arguments; returns the exit status.
pub fn main() -> i32 {
    // Subcommands; anything else is the fuse-overlayfs-compatible command
    // line (mount at ./mount or ./inspect by writing the path with a `/`).
    // Arguments are passed on as given (clap reports arguments that are not
    // UTF-8 where a string is needed; collecting them as `String`s here
    // would panic).
    let argv: Vec<OsString> = std::env::args_os().collect();
    let rest = || argv.get(1..).unwrap_or_default().to_vec();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("mount") => mount::store(rest()),
        Some("inspect") => inspect::run(rest()),
        Some("check") => check::run(rest()),
        Some("ctl") => ctl::run(rest()),
        Some("stats") => ctl::run_stats(rest()),
        _ => mount::plain(argv),
    }
}

/// Print a one-line error and give the exit status 1.
fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("stratafs: {e}");
    1
}

/// Write `text` to standard output; a closed stdout is not an error worth
/// a panic.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn init_log(debug: bool) {
    let level = if debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
}
