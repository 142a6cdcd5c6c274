//! Daemon lifecycle: open the layers, mount, report readiness, serve, and
//! unmount cleanly on SIGTERM/SIGINT/SIGHUP or when unmounted from outside.
//!
//! Without `-f` the process forks first (while it is still single-threaded);
//! the child does all the work and tells the parent through a pipe whether
//! the mount is live. The parent exits 0 only then, else prints the child's
//! one-line error and exits 1. The child closes its standard streams once
//! the mount is live.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config as FuserConfig, MountOption, Session, SessionACL};

use super::adapter::{FuseOverlay, Notify};
use crate::core::background;
use crate::core::overlay::{Config, Overlay};
use crate::error::SetupError;
use crate::setup::options::MountOptions;
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
    Overlay::new(stack, config).map_err(|e| {
        SetupError::new(format!(
            "cannot read the layer roots: {}",
            crate::error::describe(e)
        ))
    })
}

/// The fuser mount configuration for `opts`.
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
    if read_only || f.read_only {
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

/// The overlay for `opts`, its FUSE adapter and the mount configuration.
fn prepare(opts: &MountOptions) -> Result<(Arc<Overlay>, FuseOverlay, FuserConfig), SetupError> {
    let overlay = Arc::new(build(opts)?);
    let config = fuser_config(opts, !overlay.stack.has_upper);
    let fs = FuseOverlay {
        fs: overlay.clone(),
    };
    Ok((overlay, fs, config))
}

/// Mount and serve until unmounted. `ready` is told once the mount is live.
fn serve(opts: &MountOptions, ready: impl FnOnce()) -> Result<(), SetupError> {
    sys::ignore_sigpipe();
    rustix::process::umask(rustix::fs::Mode::empty());
    sys::raise_nofile_limit();
    let (overlay, fs, config) = prepare(opts)?;
    // Only the signal thread may receive the stop signals.
    sys::block_stop_signals();
    let mut session = Session::new(fs, &opts.mountpoint, &config)
        .map_err(|e| SetupError::path("cannot mount on", &opts.mountpoint, e))?;
    background::start(&overlay, Notify(session.notifier()));
    let mut unmounter = session.unmount_callable();
    std::thread::Builder::new()
        .name("stratafs-signals".into())
        .spawn(move || {
            let sig = sys::wait_stop_signal();
            log::info!("signal {sig}: unmounting");
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount failed: {e}");
            }
        })
        .map_err(|e| SetupError::new(format!("cannot start the signal thread: {e}")))?;
    ready();
    session
        .run()
        .map_err(|e| SetupError::new(format!("session ended with an error: {e}")))
}

/// Run the daemon for `opts`: in the foreground with `-f`, else detached.
/// Returns the process exit code.
pub(crate) fn run(opts: &MountOptions) -> i32 {
    for w in &opts.warnings {
        eprintln!("stratafs: warning: {w}");
    }
    if opts.foreground {
        return match serve(opts, || {}) {
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
    if msg == "ok" {
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
    let result = serve(opts, || {
        if let Some(mut p) = pipe.take() {
            let _ = p.write_all(b"ok");
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
}

impl BackgroundMount {
    /// Where the overlay is mounted.
    pub fn path(&self) -> &std::path::Path {
        &self.mountpoint
    }

    /// Unmount now and wait for the serving threads.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                log::warn!("unmount of {} failed: {e}", self.mountpoint.display());
            }
        }
    }
}

/// Mount the stack described by `opts` in this process, served by
/// background threads.
pub(crate) fn spawn_mount(opts: &MountOptions) -> Result<BackgroundMount, SetupError> {
    let (overlay, fs, config) = prepare(opts)?;
    let session = fuser::spawn_mount(fs, &opts.mountpoint, &config)
        .map_err(|e| SetupError::path("cannot mount on", &opts.mountpoint, e))?;
    background::start(&overlay, Notify(session.notifier()));
    Ok(BackgroundMount {
        session: Some(session),
        mountpoint: opts.mountpoint.clone(),
    })
}
