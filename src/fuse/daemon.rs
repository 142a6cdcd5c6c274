//! Daemon lifecycle: open the layers, mount, report readiness, serve, and
//! unmount cleanly on SIGTERM/SIGINT/SIGHUP or when unmounted from outside.
//! A mount with a faults file (`-o faults=FILE`) rereads it on SIGHUP
//! instead of unmounting; without one SIGHUP unmounts, as before.
//!
//! Without `-f` the process forks first (while it is still single-threaded);
//! the child does all the work and tells the parent through a pipe whether
//! the mount is live. The parent exits 0 only then, else prints the child's
//! one-line error and exits 1. The child closes its standard streams once
//! the mount is live.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config as FuserConfig, MountOption, Session, SessionACL};

use super::adapter::{FuseOverlay, Notify};
use super::passthrough::Passthrough;
use crate::core::background;
use crate::core::overlay::{Config, Overlay};
use crate::error::SetupError;
use crate::harness::rules::RuleSpec;
use crate::harness::{control, Harness};
use crate::setup::options::{ControlAt, HarnessOptions, MountOptions};
use crate::setup::stack::Stack;
use crate::sys::raw as sys;

/// Build the overlay for `opts` (layers opened, work dir prepared).
fn build(opts: &MountOptions) -> Result<Overlay, SetupError> {
    let stack = Stack::open(opts)?;
    let mut config = Config {
        ids: opts.ids.clone(),
        ..Config::default()
    };
    if let Some(t) = opts.timeout {
        config.ttl = Duration::from_secs_f64(t.min(1e9));
    }
    if let Some(n) = opts.max_fds {
        config.max_fds = n;
    }
    // A read-only mount copies nothing up, so without OPEN it behaves
    // exactly as with it: on unless asked otherwise.
    let read_only = read_only(opts, stack.has_upper);
    config.read_only = read_only;
    let no_open = opts.no_open.unwrap_or(read_only);
    if no_open && opts.harness.faults.is_some() {
        // Rules on reads and writes make their files direct I/O, which
        // only an OPEN's answer can.
        if opts.no_open == Some(true) {
            log::warn!("option no_open ignored: faults= needs the opens");
        }
    } else {
        config.no_open = no_open;
    }
    // Nor can a listing change there: directories are listed without
    // handles, unless the test harness orders listings per handle or has
    // fault rules (which may name opendir).
    config.no_opendir = read_only
        && opts.harness.faults.is_none()
        && opts.harness.order == crate::setup::options::ListOrder::Hash;
    Overlay::new(stack, config).map_err(|e| {
        SetupError::new(format!(
            "cannot read the layer roots: {}",
            crate::error::describe(e)
        ))
    })
}

/// Whether the mount passes the I/O of files through to the kernel
/// (`passthrough`, off unless given): where it may, for the kernel
/// registers backing files only for a daemon with `CAP_SYS_ADMIN` in the
/// initial user namespace, passthrough needs the opens `no_open` goes
/// without, and fault rules and traces are about the reads and writes it
/// would hide. A read-only mount keeps its default `no_open` unless
/// `no_open=0` is given: its reads of small files gain more from going
/// without OPEN and RELEASE than large ones from passthrough.
fn passthrough(opts: &MountOptions, config: &Config) -> bool {
    if opts.passthrough != Some(true) {
        return false;
    }
    if config.no_open && opts.no_open.is_none() {
        log::debug!("no passthrough on a read-only mount without no_open=0");
        return false;
    }
    let harness = opts.harness.faults.is_some() || opts.harness.trace.is_some();
    let may = !config.no_open && !harness && initial_namespace_root();
    if !may {
        log::warn!(
            "option passthrough ignored: it needs root outside a user namespace, \
             and no no_open, faults= or trace="
        );
    }
    may
}

/// Whether the daemon runs as root in the initial user namespace (its uid
/// map is the identity of all ids).
fn initial_namespace_root() -> bool {
    rustix::process::geteuid().is_root()
        && std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

/// Whether the mount is read-only: it has no upper layer, or `ro`.
fn read_only(opts: &MountOptions, has_upper: bool) -> bool {
    !has_upper || opts.fuse.read_only
}

/// The fuser mount configuration for `opts` (`read_only`: see `read_only`).
fn fuser_config(opts: &MountOptions, read_only: bool) -> FuserConfig {
    let f = &opts.fuse;
    let mut mo = vec![
        MountOption::FSName(f.fsname.clone().unwrap_or_else(|| "stratafs".into())),
        // As a kernel option, so that the direct mount(2) path records it
        // too (the mount shows as type fuse.stratafs).
        MountOption::CUSTOM("subtype=stratafs".into()),
    ];
    // Permissions are checked by the kernel from the attributes reported
    // (the daemon does not check them itself): always on.
    mo.push(MountOption::DefaultPermissions);
    if read_only {
        mo.push(MountOption::RO);
    }
    if f.noatime {
        mo.push(MountOption::NoAtime);
    }
    let root = rustix::process::geteuid().is_root();
    match f.suid.or(root.then_some(true)) {
        Some(true) => mo.push(MountOption::Suid),
        Some(false) => mo.push(MountOption::NoSuid),
        None => {}
    }
    match f.dev {
        Some(true) => mo.push(MountOption::Dev),
        Some(false) => mo.push(MountOption::NoDev),
        None => {}
    }
    match f.exec {
        Some(true) => mo.push(MountOption::Exec),
        Some(false) => mo.push(MountOption::NoExec),
        None => {}
    }
    let acl = if f.allow_other.unwrap_or(root) {
        SessionACL::All
    } else if f.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    if f.auto_unmount && acl != SessionACL::Owner {
        mo.push(MountOption::AutoUnmount);
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut c = FuserConfig::default();
    c.mount_options = mo;
    c.acl = acl;
    c.n_threads = Some(opts.threads.unwrap_or((cpus * 2).clamp(4, 16)));
    c.clone_fd = true;
    c
}

/// What a mount serves: the overlay, its harness, the FUSE adapter over
/// both, and the mount configuration.
struct Prepared {
    overlay: Arc<Overlay>,
    harness: Arc<Harness>,
    fs: FuseOverlay,
    config: FuserConfig,
    /// The mount point as the mount table will show it (resolved before
    /// mounting: afterwards resolving it would ask the mount itself).
    real_mountpoint: PathBuf,
}

/// Everything a mount of `opts` needs, with the fault rules `rules`.
fn prepare(opts: &MountOptions, rules: Vec<RuleSpec>) -> Result<Prepared, SetupError> {
    let overlay = Arc::new(build(opts)?);
    let harness = Arc::new(Harness::new(overlay.clone(), &opts.harness, rules)?);
    let config = fuser_config(opts, read_only(opts, overlay.stack.has_upper));
    let fs = FuseOverlay {
        fs: overlay.clone(),
        h: harness.clone(),
        pt: passthrough(opts, &overlay.config).then(Passthrough::default),
    };
    let real_mountpoint =
        std::fs::canonicalize(&opts.mountpoint).unwrap_or_else(|_| opts.mountpoint.clone());
    Ok(Prepared {
        overlay,
        harness,
        fs,
        config,
        real_mountpoint,
    })
}

/// Start the control socket of a live mount; a failure is a warning (the
/// mount works without it).
fn start_control(h: &Arc<Harness>, at: &ControlAt, mnt: &Path) -> Option<control::Server> {
    match control::start(h, at, mnt) {
        Ok(server) => server,
        Err(e) => {
            log::warn!("no control socket: {e}");
            None
        }
    }
}

/// Whether the mount uses the test harness (then the control socket is
/// announced at mount).
fn announces_control(h: &HarnessOptions, debug: bool) -> bool {
    debug
        || h.faults.is_some()
        || h.trace.is_some()
        || h.order != crate::setup::options::ListOrder::Hash
        || matches!(h.control, ControlAt::At(_))
}

/// The signal thread: SIGHUP rereads the faults file of a mount that has
/// one; any stop signal else unmounts.
fn on_signals(harness: Arc<Harness>, mut unmounter: impl FnMut() -> std::io::Result<()>) {
    loop {
        let sig = sys::wait_stop_signal();
        if sig == libc::SIGHUP && harness.faults_file().is_some() {
            match harness.reload() {
                Ok(n) => log::info!("SIGHUP: faults file reread, {n} rules"),
                Err(e) => log::warn!("SIGHUP: faults file not reread (rules unchanged): {e}"),
            }
            continue;
        }
        log::info!("signal {sig}: unmounting");
        if let Err(e) = unmounter() {
            log::warn!("unmount failed: {e}");
        }
        return;
    }
}

/// Mount and serve until unmounted. `ready` is told once the mount is
/// live, with a line to show the user (the control socket).
fn serve(opts: &MountOptions, ready: impl FnOnce(Option<String>)) -> Result<(), SetupError> {
    sys::ignore_sigpipe();
    rustix::process::umask(rustix::fs::Mode::empty());
    sys::raise_nofile_limit();
    let p = prepare(opts, Vec::new())?;
    // Only the signal thread may receive the stop signals.
    sys::block_stop_signals();
    let mut session = Session::new(p.fs, &opts.mountpoint, &p.config)
        .map_err(|e| SetupError::path("cannot mount on", &opts.mountpoint, e))?;
    background::start(&p.overlay, Notify(session.notifier()));
    let control = start_control(&p.harness, &opts.harness.control, &p.real_mountpoint);
    let mut unmounter = session.unmount_callable();
    let h = p.harness.clone();
    std::thread::Builder::new()
        .name("stratafs-signals".into())
        .spawn(move || on_signals(h, move || unmounter.unmount()))
        .map_err(|e| SetupError::new(format!("cannot start the signal thread: {e}")))?;
    let note = control
        .as_ref()
        .filter(|_| announces_control(&opts.harness, opts.debug))
        .map(|c| format!("control socket {} (stratafs ctl MOUNTPOINT ...)", c.name()));
    ready(note);
    let ran = session
        .run()
        .map_err(|e| SetupError::new(format!("session ended with an error: {e}")));
    drop(control);
    p.harness.shutdown();
    p.overlay.unmounted();
    ran
}

/// Run the daemon for `opts`: in the foreground with `-f`, else detached.
/// Returns the process exit code.
pub(crate) fn run(opts: &MountOptions) -> i32 {
    for w in &opts.warnings {
        eprintln!("stratafs: warning: {w}");
    }
    if opts.foreground {
        let ready = |note: Option<String>| {
            if let Some(n) = note {
                eprintln!("stratafs: {n}");
            }
        };
        return match serve(opts, ready) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("stratafs: {e}");
                1
            }
        };
    }
    let (rd, wr) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "stratafs: cannot create a pipe: {}",
                crate::error::describe(e)
            );
            return 1;
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("stratafs: cannot fork: {e}");
            1
        }
        Ok(sys::Fork::Parent) => {
            drop(wr);
            parent_wait(rd)
        }
        Ok(sys::Fork::Child) => {
            drop(rd);
            child_run(opts, wr)
        }
    }
}

fn parent_wait(rd: OwnedFd) -> i32 {
    let mut f = std::fs::File::from(rd);
    let mut msg = String::new();
    let _ = f.read_to_string(&mut msg);
    if let Some(note) = msg.strip_prefix("ok") {
        // The child's line for the user, if any (after a newline).
        let note = note.trim();
        if !note.is_empty() {
            eprintln!("stratafs: {note}");
        }
        0
    } else if msg.is_empty() {
        eprintln!("stratafs: the daemon exited before the mount was ready");
        1
    } else {
        eprintln!("stratafs: {}", msg.trim_end());
        1
    }
}

fn child_run(opts: &MountOptions, wr: OwnedFd) -> i32 {
    sys::setsid();
    let mut pipe = Some(std::fs::File::from(wr));
    let result = serve(opts, |note| {
        if let Some(mut p) = pipe.take() {
            let msg = match note {
                Some(n) => format!("ok\n{n}"),
                None => "ok".to_string(),
            };
            let _ = p.write_all(msg.as_bytes());
        }
        sys::stdio_to_devnull();
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            // Before the mount is live the parent shows the message; after,
            // stderr is /dev/null and the log is all we have.
            if let Some(mut p) = pipe {
                let _ = p.write_all(e.to_string().as_bytes());
            } else {
                log::error!("{e}");
            }
            1
        }
    }
}

/// A mount served by background threads of this process; unmounted when
/// dropped (also when a test panics).
#[derive(Debug)]
pub struct BackgroundMount {
    session: Option<fuser::BackgroundSession>,
    mountpoint: std::path::PathBuf,
    /// The mount's test harness (rules, trace, metrics).
    pub(crate) harness: Arc<Harness>,
    control: Option<control::Server>,
    overlay: Arc<Overlay>,
}

impl BackgroundMount {
    /// Where the overlay is mounted.
    pub fn path(&self) -> &std::path::Path {
        &self.mountpoint
    }

    /// The name of the mount's control socket (`@...` for an abstract
    /// one), if it has one: `stratafs ctl` reaches the mount through it.
    pub fn control_socket(&self) -> Option<&str> {
        self.control.as_ref().map(|c| c.name())
    }

    /// Unmount now and wait for the serving threads (a trace file is
    /// complete when this returns).
    pub fn unmount(mut self) -> std::io::Result<()> {
        // The socket goes first: its name is free for the next mount that
        // gets this device number.
        self.control = None;
        let r = match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        };
        self.harness.shutdown();
        self.overlay.unmounted();
        r
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        self.control = None;
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                // Busy (a file is still open): detached as `umount -l`
                // does, so that no mount is left behind; the connection
                // ends, and the serving threads with it, when the last
                // open file is closed. (No join: the thread dropping the
                // mount may be the one holding that file.)
                let detached =
                    rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
                match detached {
                    Ok(()) => log::warn!(
                        "{} was busy ({e}): detached, it goes when its last open file is closed",
                        self.mountpoint.display()
                    ),
                    Err(d) => log::warn!(
                        "unmount of {} failed: {e}; detaching it failed too: {d}",
                        self.mountpoint.display()
                    ),
                }
            }
        }
        self.harness.shutdown();
        self.overlay.unmounted();
    }
}

/// Mount the stack described by `opts` in this process, served by
/// background threads, with the fault rules `rules`.
pub(crate) fn spawn_mount(
    opts: &MountOptions,
    rules: Vec<RuleSpec>,
) -> Result<BackgroundMount, SetupError> {
    let p = prepare(opts, rules)?;
    let session = fuser::spawn_mount(p.fs, &opts.mountpoint, &p.config)
        .map_err(|e| SetupError::path("cannot mount on", &opts.mountpoint, e))?;
    background::start(&p.overlay, Notify(session.notifier()));
    let control = start_control(&p.harness, &opts.harness.control, &p.real_mountpoint);
    Ok(BackgroundMount {
        session: Some(session),
        mountpoint: opts.mountpoint.clone(),
        harness: p.harness,
        control,
        overlay: p.overlay,
    })
}
